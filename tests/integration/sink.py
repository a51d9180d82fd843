"""A traffic receiver for the tests: UDP datagrams to one port, on IPv4 and IPv6, each one
recorded as a line of a file. Run inside the destination namespace with nsenter:

    python -m tests.integration.sink --out FILE --ready FILE --port 9

Every datagram appends "<IP version> <payload bytes>" (``4 1000``) to --out, written with
one write(2) on an O_APPEND file, so a reader sees whole lines plus at most one partial
last one (which it ignores). --ready is created once both sockets are bound: whatever is
sent after it exists reaches a socket, none of it answered with ICMP port unreachable.
SIGTERM or SIGINT ends it with status 0.

With --tcp it accepts TCP connections on the port (IPv4) instead, and appends "tcp <bytes>"
for each read.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
from types import FrameType

# setsockopt(SO_RCVBUFFORCE) (root) passes net.core.rmem_max, which would otherwise cut a
# large SO_RCVBUF down to a few hundred kilobytes: a burst must wait in the socket, not
# be dropped while this process is not scheduled. Python's socket module lacks the name.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 64 << 20


def _socket(family: socket.AddressFamily, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if family == socket.AF_INET6:
        # Its own port space for IPv6: the IPv4 socket holds the same port number.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", port))
    else:
        sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _ready(path: str) -> None:
    # Made by a rename, so it appears complete, and only after the binds succeeded.
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(path + ".tmp", path)


def _tcp(port: int, ready: str, out: int) -> int:
    """Accept connections one at a time and record what each read got, until stopped."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen()
        _ready(ready)
        try:
            while True:
                conn, _ = listener.accept()
                with conn:
                    while data := conn.recv(65536):
                        os.write(out, f"tcp {len(data)}\n".encode())
        finally:
            os.close(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="file each datagram's line is appended to")
    p.add_argument("--ready", required=True, help="file made once the sockets are bound")
    p.add_argument("--port", type=int, default=9)
    p.add_argument("--no-ipv6", action="store_true", help="bind IPv4 only")
    p.add_argument("--tcp", action="store_true", help="accept TCP connections instead")
    args = p.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    out = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if args.tcp:
        return _tcp(args.port, args.ready, out)
    socks = {4: _socket(socket.AF_INET, args.port)}
    if not args.no_ipv6 and socket.has_ipv6:
        socks[6] = _socket(socket.AF_INET6, args.port)
    sel = selectors.DefaultSelector()
    for version, sock in socks.items():
        sel.register(sock, selectors.EVENT_READ, version)
    _ready(args.ready)
    try:
        while True:
            for key, _events in sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                # Drain what is queued: one line a datagram, whatever its size (64 KiB is
                # the largest UDP payload).
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    os.write(out, f"{key.data} {len(data)}\n".encode())
    finally:
        os.close(out)
        for sock in socks.values():
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
