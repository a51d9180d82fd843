"""What a long-running daemon needs around its work: the interface's lock file, a check that
the state directory can be written before anything is installed, signals delivered
through a self-pipe (docs/conventions.md, rule 3), and its messages to systemd.

Every failure here is one line (``bwbpf.Error``), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import select
import signal
import socket
import stat
from collections.abc import Iterable
from typing import Any

from bwbpf.errors import Error

log = logging.getLogger(__name__)

# Bytes the start-up probe writes: a page, as the filesystem allocates them. A state
# directory with less room than that cannot hold a state file either.
PROBE_BYTES = 4096


# -- the state directory --------------------------------------------------------------------


def probe_state_dir(directory: str) -> None:
    """Create ``directory`` if needed and write, sync and remove a temporary file in it, so a
    read-only, full or uncreatable state directory stops the daemon before it installs
    anything. Raises ``bwbpf.Error`` naming the directory and the reason."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise Error(
            f"state directory {directory} cannot be created: {exc.strerror or exc}"
        ) from None
    if not os.path.isdir(directory):
        raise Error(f"state directory {directory} is not a directory")
    probe = os.path.join(directory, f".bwbpf-probe.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(
            probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise Error(f"state directory {directory} is not writable: {exc.strerror or exc}") from None
    try:
        data = b"\0" * PROBE_BYTES
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except OSError as exc:
        raise Error(f"state directory {directory} is not writable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


# -- the lock -------------------------------------------------------------------------------


def take_lock(path: str, interface: str) -> int:
    """Lock the interface for this process: an flock on ``path``, holding our pid. Returns
    the fd (close it to let go). The lock file is never opened through a symbolic link: one
    planted in the state directory would make us write our pid into another file."""
    if os.path.islink(path):
        raise Error(f"refusing lock file {path}: it is a symbolic link")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Error(f"refusing lock file {path}: it is a symbolic link") from None
        raise Error(f"cannot open lock file {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Error(f"refusing lock file {path}: not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Error(
                f"another bwbpf daemon is already running on {interface} (it holds {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_path(state_dir: str, interface: str) -> str:
    """Where the daemon of ``interface`` holds its lock."""
    return os.path.join(state_dir, f"{interface}.lock")


def lock_holder(path: str) -> int | None:
    """The pid of the daemon holding the lock at ``path`` (0 if it wrote none), or None if
    no process holds it. Opens nothing through a symbolic link and creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or not one we would use): no daemon holds it
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- signals --------------------------------------------------------------------------------


class SignalPipe:
    """Signals as a list and a wake-up byte: the handler only appends the signal number to a
    plain list and writes one byte to a non-blocking pipe (no lock, unlike
    ``queue.Queue.put``); ``wait`` sleeps on the pipe and returns what arrived."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._r: int | None = None
        self._w: int | None = None
        self._old: dict[int, Any] = {}

    def install(self, signums: Iterable[int]) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in signums:
            self._old[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)
        self.wake()

    def wake(self) -> None:
        """End a ``wait`` early (with no signal, if none came): safe from any thread."""
        if self._w is not None:
            # A full pipe already holds a wake-up.
            with contextlib.suppress(OSError):
                os.write(self._w, b"\0")

    def wait(self, timeout: float) -> list[int]:
        """The signals that arrived, in order, waiting up to ``timeout`` s for one."""
        if not self.pending and self._r is not None:
            select.select([self._r], [], [], max(0.0, timeout))
        if self._r is not None:
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
        # A handler running in between appends to the list taken here: nothing is lost.
        arrived, self.pending = self.pending, []
        return arrived

    def close(self) -> None:
        """Restore the previous handlers and close the pipe."""
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}
        fds, self._r, self._w = (self._r, self._w), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)


# -- systemd --------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``) to systemd, as
    sd_notify(3) does; without ``$NOTIFY_SOCKET`` (not under systemd) do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify %s: %s", address, exc)
        return False
    return True
