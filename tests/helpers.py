"""Helpers every test tier uses: waiting for a condition, reading a JSON file that may be
half written or absent, stopping a process the test started (by its pid), a free
loopback port, what map is pinned at a path, and a map pinned as another bwbpf version
would have left it. One copy, imported from here."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bwbpf import bpfsys

# The repository's root: where `python -m tests...` and `python -c` with bwbpf work from.
REPO = Path(__file__).resolve().parents[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``check()``'s first true result; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> int | None:
    """Signal one process we started, by its pid, and reap it (SIGKILL after 15 s)."""
    if proc is None:
        return None
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def stop_cleanly(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a daemon we started; it must save its state and exit 0 in time."""
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=timeout) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned_info(path: str) -> bpfsys.MapInfo:
    fd = bpfsys.obj_get(path)
    try:
        return bpfsys.map_info(fd)
    finally:
        os.close(fd)


def pinned_id(path: str) -> int:
    """The kernel id of the map pinned at path."""
    return int(_pinned_info(path).id)


def pinned_shape(path: str) -> tuple[int, int, int, int]:
    """(type, key size, value size, max entries) of the map pinned at path, as
    ``datapath.PINNED_MAPS`` gives them."""
    return _pinned_info(path).shape


def pin_old_map(
    path: str,
    entries: int,
    value: str = "u64",
    kind: str = "percpu_array",
    key: str = "u32",
    types: str = "",
) -> None:
    """A pinned map (a per-CPU array of ``entries`` slots unless ``kind`` says otherwise),
    as another bwbpf would have left it; ``types`` declares what ``value`` names."""
    from bcc import BPF

    # bpffs names have no dot: the C name is the pin's, with '-' and '@' made '_'.
    name = re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(path))
    old = BPF(
        text=f'{types}BPF_TABLE_PINNED("{kind}", {key}, {value}, {name}, {entries}, "{path}");'
        "int f(struct __sk_buff *skb) { return 0; }"
    )
    old.cleanup()
