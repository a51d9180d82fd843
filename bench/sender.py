"""Traffic for the daemon benchmark: one UDP datagram per slice for ``--per-second`` slices
each second, each with SO_MARK = the slice's id, cycling through ids FIRST..LAST. Run in the
daemon's namespace (nsenter); stops on SIGTERM and prints what it sent as JSON.

    python bench/sender.py --dst 10.99.0.2 --first 1 --last 10000 --per-second 100

Standalone on purpose (no import of bench or bwbpf): it starts fast and its own cost stays
small next to the daemon's.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import sys
import time

# Sends are spread over the second in this many bursts, so that the daemon's ticks never
# all land just before (or just after) the whole second's traffic.
BURSTS = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=9)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--last", type=int, required=True)
    p.add_argument("--per-second", type=int, required=True)
    p.add_argument("--size", type=int, default=600, help="UDP payload bytes")
    args = p.parse_args(argv)

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # Non-blocking: a datagram the kernel cannot take now is counted as refused rather than
    # holding up the others.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    payload = b"\x5a" * args.size
    ids = range(args.first, args.last + 1)
    per_burst, extra = divmod(args.per_second, BURSTS)
    sent = refused = 0
    position = 0
    started = time.monotonic()
    burst = 0
    while not stop:
        count = per_burst + (1 if burst % BURSTS < extra else 0)
        for _ in range(count):
            mark = ids[position % len(ids)]
            position += 1
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            try:
                sock.sendto(payload, (args.dst, args.port))
                sent += 1
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                    raise
                refused += 1
        burst += 1
        # On a fixed schedule: a slow burst does not shift the ones after it.
        delay = started + burst / BURSTS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sock.close()
    seconds = time.monotonic() - started
    print(json.dumps({"sent": sent, "refused": refused, "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
