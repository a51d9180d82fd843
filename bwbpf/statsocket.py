"""``bwbpf stat``'s short way, the asking side (bwbpf/statserver.py is the daemon's): the
socket's place and the one request. Standard library only, so that a ``stat`` answered
by the daemon imports next to nothing of bwbpf.
"""

from __future__ import annotations

import os
import socket
import time

from bwbpf.model import Config

# sun_path is 108 bytes with its NUL: a longer path cannot be bound.
MAX_SOCKET_PATH = 107
# How long stat waits for the whole answer before reading the files instead.
ASK_TIMEOUT_S = 3.0


def socket_path(cfg: Config) -> str:
    return os.path.join(cfg.state_dir, f"{cfg.interface}.stat.sock")


def ask(cfg: Config, timeout: float = ASK_TIMEOUT_S) -> bytes | None:
    """The running daemon's stat document for cfg, or None (no daemon, not this config,
    no whole answer in time): then the caller reads the files."""
    path = socket_path(cfg)
    if not cfg.digest or len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(f"stat {cfg.digest}\n".encode())
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
    except OSError:
        return None
    reply = b"".join(chunks)
    # A whole document ends its object; anything else was cut short.
    return reply if reply.startswith(b"{") and reply.endswith(b"}") else None
