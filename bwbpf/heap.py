"""The daemon's heap at 10,000 slices: what the garbage collector need not walk, and
memory given back to the kernel after a tick's large, short-lived allocations."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
from collections.abc import Callable
from typing import TypeVar

from bwbpf.errors import Error, one_line

T = TypeVar("T")

# Worth a malloc_trim: a tick that wrote this much made and dropped as much in strings.
TRIM_AFTER_BYTES = 1 << 20


def freeze() -> None:
    """Leave what exists now (config, ledger, imported modules: ~10^6 objects at 10,000
    slices) out of every later garbage collection. Without this each full collection
    walks all of it, several times a tick at 10,000 slices. What an earlier freeze kept
    is looked at again first: after a reload some of it is garbage."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim()  # the start's or reload's garbage: the parsed TOML, the state file's JSON


def packed(make: Callable[[], T]) -> T:
    """What ``make()`` returns, made again in one go (a pickle round trip in memory) after
    the original is freed. A parse leaves the objects it keeps strewn among the garbage it
    made (at 10,000 slices the TOML's tables, ~25 MB at once), so after it every one of
    pymalloc's 1 MiB arenas it used holds a few of them and none goes back to the kernel;
    the copy packs them into few arenas and the parse's are given back. At 10,000 slices
    the config held 25 arenas parsed, 15 packed (10 MB less resident), for ~30 ms."""
    data = pickle.dumps(make(), protocol=pickle.HIGHEST_PROTOCOL)  # the original goes here
    return pickle.loads(data)  # our own bytes, made just above


def isolated(make: Callable[[], T], what: str = "the child process") -> T:
    """What ``make()`` returns (or raises), made in a forked child and handed back pickled:
    the daemon's heap sees only the result, never what making it took. A reload's TOML
    parse peaks at ~19 MB at 10,000 slices; in the daemon's own heap it left pymalloc
    arenas pinned by the few objects allocated among its garbage, ~5 MB more resident
    after each of the first reloads (measured: 41 arenas after 6 reloads, 36 this way).
    Without fork (or if it fails) ``make()`` runs here. ``what`` names the child in the
    error raised when it dies without an answer."""
    try:
        r, w = os.pipe()
    except OSError:
        return make()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return make()
    if pid == 0:  # the child: no return from here, whatever happens
        status = 1
        try:
            os.close(r)
            _default_signals()
            try:
                data = pickle.dumps((True, make()), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                data = _pickled_failure(exc)
            with os.fdopen(w, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    if not data:
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        raise Error(f"{what} ended with {how}")
    ok, value = pickle.loads(data)  # our own child's bytes
    del data
    if not ok:
        raise value
    result: T = value
    return result


def _default_signals() -> None:
    """In the child: a stop or reload signal ends it rather than run the daemon's handler,
    which would only wake the daemon's loop and leave the child running."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # ValueError: not the main thread, where nothing of the daemon's is installed.
        with contextlib.suppress(ValueError):
            signal.signal(signum, signal.SIG_DFL)


def _pickled_failure(exc: Exception) -> bytes:
    try:
        return pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle: its one line
        return pickle.dumps((False, Error(one_line(exc))), protocol=pickle.HIGHEST_PROTOCOL)


def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (AttributeError, OSError):
        return None


_TRIM = _malloc_trim()


def trim() -> None:
    """Return the free parts of the C heap to the kernel (glibc's malloc_trim). Freed
    memory otherwise stays resident: at 10,000 slices each tick that writes the state
    snapshot (3 MB of JSON and the strings it was made of) left ~12 MB more resident;
    malloc_trim(0) gave it back in ~1 ms."""
    if _TRIM is not None:
        _TRIM(0)


# mallopt(3) parameters.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
# What glibc starts with; fixed, it no longer rises (see tune_malloc).
MMAP_THRESHOLD = 128 * 1024


def tune_malloc() -> None:
    """Two glibc malloc settings for a long-running daemon (nothing elsewhere):

    - Every thread allocates from the main arena. The daemon's threads (the metrics and
      stat servers) would otherwise each get an arena of their own, where what a large
      answer freed stays resident: ``trim`` gives back far less of those. The threads
      allocate little and seldom; sharing costs nothing measurable.
    - Blocks of 128 KiB and more always get mappings of their own, given back when freed.
      By default glibc raises that threshold to the size of each such block freed (up to
      32 MiB): after the first 3 MB state snapshot or 6 MB stat answer, the next ones came
      from the heap, where freed memory stays resident until a ``trim``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl has none
    except (AttributeError, OSError):
        return
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
