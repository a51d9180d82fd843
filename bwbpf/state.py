"""The ledger on disk: versioned JSON, written atomically, never pickled.

The file is ``{"version": 1, "interface": ..., "saved_at": ..., "ledger": {...}}``.
A file that cannot be used (not JSON, wrong types, another version, another interface) is
never a reason to stop and never silently dropped: it is renamed to
``<path>.corrupt-<UTC time>`` for a human to look at, and ``load_state`` returns an empty
ledger with a one-line problem for the daemon to log loudly and show in ``stat``. (The
reference bwmon reset its pickled state silently on any error.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
import time
from typing import Any

from bwbpf.errors import Error
from bwbpf.ledger import Ledger, check_time_bounds

STATE_VERSION = 1

# Bytes this process wrote with write_atomic (state, status, metrics textfile): the
# daemon reports them per tick.
_written = 0


def written_bytes() -> int:
    """Bytes written by write_atomic in this process so far."""
    return _written


def state_file(state_dir: str, interface: str) -> str:
    """Where the ledger of an interface is kept: one file per interface."""
    return os.path.join(state_dir, f"ledger-{interface}.json")


def save_state(path: str, interface: str, ledger: Ledger, now: float | None = None) -> None:
    """Write the ledger atomically: readers see the old file or the new one, never half.

    Raises ``bwbpf.Error`` (one line) if it cannot; the previous file is then untouched.
    """
    saved_at = time.time() if now is None else now
    document = {
        "version": STATE_VERSION,
        "interface": interface,
        "saved_at": saved_at,
        "ledger": ledger.to_dict(),
    }
    try:
        # Compact: with indent= json uses its pure-Python encoder, 4x slower (0.2 s a tick
        # at 10,000 slices). `python3 -m json.tool` shows it indented.
        data = json.dumps(document, sort_keys=True, allow_nan=False, separators=(",", ":"))
        data += "\n"
    except ValueError as exc:  # a NaN or infinite time slipped into the ledger
        raise Error(f"cannot write state file {path}: {exc}") from exc
    try:
        write_atomic(path, data.encode())
    except OSError as exc:
        raise Error(f"cannot write state file {path}: {exc.strerror or exc}") from exc


def load_state(path: str, interface: str, now: float | None = None) -> tuple[Ledger, str | None]:
    """The saved ledger and None; or an empty ledger and a one-line problem. Never raises.

    A missing file is not a problem (first run). Anything else unusable is moved aside to
    ``<path>.corrupt-<time>``; ``now`` (default: the clock) names it and bounds the times
    the file may hold (see ``Ledger.from_dict``). A symbolic link or anything but a regular
    file at ``path`` is never followed or read: the link itself is moved aside.
    """
    if now is None:
        now = time.time()
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the daemon's start.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return Ledger(), None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Ledger(), _set_aside(path, "a symbolic link, not followed", now)
        return Ledger(), _set_aside(path, f"cannot read: {exc.strerror or exc}", now)
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return Ledger(), _set_aside(path, "not a regular file", now)
            raw = f.read()
    except OSError as exc:
        return Ledger(), _set_aside(path, f"cannot read: {exc.strerror or exc}", now)
    try:
        ledger = _parse(raw, interface, now)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return Ledger(), _set_aside(path, str(exc), now)
    return ledger, None


def _parse(raw: bytes, interface: str, now: float | None = None) -> Ledger:
    try:
        # NaN and Infinity are not JSON; Python's json accepts them unless told not to.
        document = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"not a state document: a JSON {type(document).__name__}")
    version = document.get("version")
    if version != STATE_VERSION or isinstance(version, bool):
        raise ValueError(f"version {version!r}, this bwbpf reads version {STATE_VERSION}")
    if document.get("interface") != interface:
        raise ValueError(f"belongs to interface {document.get('interface')!r}, not {interface!r}")
    saved_at: Any = document.get("saved_at")
    if (
        isinstance(saved_at, bool)
        or not isinstance(saved_at, int | float)
        or not math.isfinite(saved_at)
    ):
        raise ValueError(f"saved_at: must be a number, not {saved_at!r}")
    check_time_bounds(float(saved_at), "saved_at", now)
    unknown = sorted(set(document) - {"version", "interface", "saved_at", "ledger"})
    if unknown:
        raise ValueError(f"unknown key {', '.join(unknown)}")
    return Ledger.from_dict(document.get("ledger"), now=now, saved_at=float(saved_at))


def _no_constant(name: str) -> None:
    raise ValueError(f"not valid JSON: {name} is not a number")


def _set_aside(path: str, why: str, now: float | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.corrupt-{stamp}.{n}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        return (
            f"state file {path} unusable ({why}) and could not be moved aside: "
            f"{exc.strerror or exc}; starting with an empty ledger"
        )
    return f"state file {path} unusable ({why}); moved to {aside}, starting with an empty ledger"


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: a new file, synced, renamed over it.

    Nothing is ever written through a symbolic link: tempfile.mkstemp creates the temporary
    file with O_EXCL | O_NOFOLLOW under a fresh random name (never an existing file), and
    rename(2) replaces a symbolic link at ``path`` by the file, leaving the link's target
    alone.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory as the target: rename(2) is atomic only within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            # Not secret, and `bwbpf stat` may read it without being root.
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        global _written
        _written += len(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename lives in the directory; without this a crash can still lose it (see
    # ext4's auto_da_alloc notes and LWN "ext4 and data loss", 2009).
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
