"""A traffic source for the integration tests: UDP datagrams of a known size from a chosen
mark, uid, cgroup or source address. Run inside a test namespace with nsenter:

    python -m tests.integration.traffic --dst 10.250.7.2 --count 11 --size 1000 --mark 5

or raw frames, one hex string a line of a file, on an AF_PACKET socket:

    python -m tests.integration.traffic --frames FILE --ifname veth0

With --hold, one socket lives as long as the process: each line N read from stdin sends N
datagrams (or N times --size bytes on a --tcp connection) from it, then "sent N" goes to
stdout; end of input closes it. A test holds a socket that way across a change it makes.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dst")
    p.add_argument("--frames", help="file of hex frames to send as they are, one a line")
    p.add_argument("--ifname", help="the device to send --frames on")
    p.add_argument("--port", type=int, default=9)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help="UDP payload bytes")
    p.add_argument("--mark", type=int)
    p.add_argument("--uid", type=int)
    p.add_argument("--cgroup", help="cgroup v2 directory to join first")
    p.add_argument("--src", help="source address to bind")
    p.add_argument("--gap", type=float, default=0.0, help="seconds between datagrams")
    p.add_argument("--hold", action="store_true", help="one socket, sends as stdin says")
    p.add_argument("--tcp", action="store_true", help="with --hold: a TCP connection to --dst")
    args = p.parse_args(argv)
    if args.frames:
        return send_frames(args.frames, args.ifname, args.count)
    if not args.dst:
        p.error("--dst or --frames is required")

    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    kind = socket.SOCK_STREAM if args.tcp else socket.SOCK_DGRAM
    if args.uid is not None:
        if args.mark is not None:
            p.error("--mark needs root (CAP_NET_ADMIN): not with --uid")
        # The socket's owner is fixed when it is created: make it as that uid.
        os.setgid(args.uid)
        os.setuid(args.uid)
    sock = socket.socket(family, kind)
    if args.mark is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, args.mark)
    if args.src:
        sock.bind((args.src, 0))
    payload = b"\x5a" * args.size
    if args.hold:
        return hold(sock, args.dst, args.port, payload, args.tcp)
    # Unconnected sends: an ICMP port-unreachable from the far side does not fail them.
    for _ in range(args.count):
        sock.sendto(payload, (args.dst, args.port))
        if args.gap:
            time.sleep(args.gap)
    sock.close()
    return 0


def hold(sock: socket.socket, dst: str, port: int, payload: bytes, tcp: bool) -> int:
    """Send from one socket as stdin asks, until end of input."""
    if tcp:
        sock.connect((dst, port))
    for line in sys.stdin:
        count = int(line)
        if tcp:
            sock.sendall(payload * count)
        else:
            for _ in range(count):
                sock.sendto(payload, (dst, port))
        print(f"sent {count}", flush=True)
    sock.close()
    return 0


def send_frames(path: str, ifname: str, count: int) -> int:
    """Each frame of the file ``count`` times, as written (no checksum or length fixed)."""
    with open(path) as f:
        frames = [bytes.fromhex(line.strip()) for line in f if line.strip()]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for _ in range(count):
            for frame in frames:
                sock.send(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
