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
import itertools
import json
import math
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from bwbpf import files
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


def journal_file(path: str) -> str:
    """The journal that goes with the state file ``path``."""
    return os.path.splitext(path)[0] + ".journal"


def save_state(
    path: str, interface: str, ledger: Ledger, now: float | None = None, journal: str = ""
) -> int:
    """Write the whole ledger atomically: readers see the old file or the new one, never
    half. ``journal`` names the journal entries that may follow it (StateFile); entries
    of another name are never applied to it. Returns the bytes written.

    Raises ``bwbpf.Error`` (one line) if it cannot; the previous file is then untouched.
    """
    saved_at = time.time() if now is None else now
    document: dict[str, Any] = {
        "version": STATE_VERSION,
        "interface": interface,
        "saved_at": saved_at,
        "ledger": {**ledger.top_dict(), "slices": _SLICES_HERE},
    }
    if journal:
        document["journal"] = journal
    try:
        return write_atomic(path, _encode_snapshot(document, ledger.slice_lines(), path))
    except OSError as exc:
        raise Error(f"cannot write state file {path}: {exc.strerror or exc}") from exc


# Stands for the slices while the rest of a snapshot is encoded; JSON escapes the NULs, so
# no other string of the document encodes the same.
_SLICES_HERE = "\0slices\0"
_ENCODE = json.JSONEncoder(sort_keys=True, allow_nan=False, separators=(",", ":")).encode


def _encode(document: dict[str, Any], path: str) -> bytes:
    """One line of compact JSON (a journal entry)."""
    try:
        # Compact: with indent= json uses its pure-Python encoder, 4x slower (0.2 s a tick
        # at 10,000 slices). `python3 -m json.tool` shows it indented.
        return (_ENCODE(document) + "\n").encode()
    except ValueError as exc:  # a NaN or infinite time slipped into the ledger
        raise Error(f"cannot write state file {path}: {exc}") from exc


# Slices encoded and written at once in a snapshot: pieces of ~100 kB, not one 3 MB string.
SNAPSHOT_CHUNK_SLICES = 300


def _encode_snapshot(document: dict[str, Any], lines: Iterable[str], path: str) -> Iterator[bytes]:
    """Compact JSON with each slice on a line of its own, ``"name":{...}`` at the start of
    the line (JSON strings hold no raw newline): a reader that wants a few slices finds
    them without parsing the other 10,000 (read_raw). Still one JSON document. Made and
    written a piece at a time (write_atomic takes them as they come): at 10,000 slices the
    slices' text at once, joined and encoded, was three copies of 3 MB, and the daemon's
    resident memory kept that high-water mark.

    Raises ``bwbpf.Error`` for a value JSON cannot hold (a NaN or infinite time that
    slipped into the ledger); write_atomic then leaves the previous file as it was."""
    try:
        before, after = _ENCODE(document).split(_ENCODE(_SLICES_HERE))
        pieces = iter(lines)
        chunk = list(itertools.islice(pieces, SNAPSHOT_CHUNK_SLICES))
        head = before + "{\n"
        while chunk:
            yield (head + ",\n".join(chunk)).encode()
            head = ",\n"
            chunk = list(itertools.islice(pieces, SNAPSHOT_CHUNK_SLICES))
    except ValueError as exc:
        raise Error(f"cannot write state file {path}: {exc}") from exc
    if head != ",\n":  # no slice at all
        yield head.encode()
    yield ("\n}" + after + "\n").encode()


class StateFile:
    """The ledger on disk as the daemon keeps it: a whole snapshot (``save_state``) and,
    after it, a journal of one line per tick holding only the slices that changed.

    At 10,000 mostly idle slices a tick then writes kilobytes, not the 3 MB snapshot. The
    snapshot is written again (and the journal started afresh) when the journal has grown
    past the snapshot's size, when most slices changed, and after a failed write; each
    snapshot names its journal, so entries of an older one are never applied to it.

    A crash can cut the journal's last line short; ``load_state`` ignores such a line. What
    it held is not lost: the ledger's baselines are the counters' values it saw, so the
    next tick counts everything since the last line that did reach the disk.
    """

    def __init__(self, path: str, interface: str) -> None:
        self.path = path
        self.journal_path = journal_file(path)
        self.interface = interface
        self._journal = ""  # the current snapshot's journal name; "" before one is written
        self._snapshot_bytes = 0
        self._journal_bytes = 0

    def save(self, ledger: Ledger, now: float, whole: bool = False) -> None:
        """Record what changed in ``ledger`` since the last save (everything, when
        ``whole`` or when a snapshot is due). Raises ``bwbpf.Error`` with one line; what
        could not be written is written at the next save."""
        due = (
            whole
            or not self._journal
            or self._journal_bytes > max(self._snapshot_bytes, 1 << 16)
            or ledger.pending() > len(ledger) // 2
        )
        # A snapshot holds every slice: the changed ones need no entries of their own.
        changed, gone = ledger.changes(dicts=not due)
        try:
            if due:
                self._snapshot(ledger, now)
            else:
                # Every tick, even an idle one: the ledger's own fields (read_at, the
                # uncounted bytes) move without any slice changing, and a restart needs
                # them (read_at splits the traffic of a period rollover).
                self._append(ledger, now, changed, gone)
        except BaseException:
            ledger.unsaved([*changed, *gone])
            self._journal = ""  # a line may be half written: the next save starts afresh
            raise

    def _snapshot(self, ledger: Ledger, now: float) -> None:
        name = uuid.uuid4().hex[:16]
        self._snapshot_bytes = save_state(self.path, self.interface, ledger, now, name)
        self._journal, self._journal_bytes = name, 0
        # The old journal names the old snapshot: harmless if it stays, but only clutter.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)

    def _append(self, ledger: Ledger, now: float, changed: dict[str, Any], gone: list[str]) -> None:
        entry = {
            "journal": self._journal,
            "saved_at": now,
            "ledger": ledger.top_dict(),
            "slices": changed,
            "gone": gone,
        }
        data = _encode(entry, self.journal_path)
        try:
            fd = os.open(
                self.journal_path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise Error(
                f"cannot write state journal {self.journal_path}: {exc.strerror or exc}"
            ) from exc
        global _written
        _written += len(data)
        self._journal_bytes += len(data)


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
        raw = _read_file(path)
    except _Unusable as exc:
        return Ledger(), _set_aside(path, str(exc), now)
    if raw is None:
        return Ledger(), None
    try:
        ledger, journal = _parse(raw, interface, now)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        return Ledger(), _set_aside(path, str(exc), now)
    if journal:
        problem = _replay(journal_file(path), journal, ledger, now, set_aside=True)
        if problem:
            return ledger, problem
    return ledger, None


def read_state(path: str, interface: str) -> Ledger | None:
    """The ledger as saved (snapshot and journal), for readers such as ``bwbpf stat``:
    never moves anything aside or writes; None if there is no usable state file."""
    try:
        raw = _read_file(path)
        if raw is None:
            return None
        ledger, journal = _parse(raw, interface)
    except (_Unusable, ValueError, TypeError, OverflowError, RecursionError):
        return None
    if journal:
        _replay(journal_file(path), journal, ledger, None, set_aside=False)
    return ledger


def read_raw(
    path: str, interface: str, names: Collection[str] | None = None
) -> tuple[dict[str, Any], float | None] | None:
    """The saved slices as plain dicts (``Ledger.to_dict()["slices"]`` form, the journal
    applied) and the ledger's ``read_at``, unchecked: for ``bwbpf stat``, which must stay
    fast at 10,000 slices (checking every value as ``read_state`` does costs ~0.5 s) and
    treats what it cannot use as missing. With ``names``, only those slices (the others
    are not parsed). Never writes; None without a usable file."""
    try:
        raw = _read_file(path)
        if raw is None:
            return None
        found = _some_slices(raw, names) if names else None
        if found is not None:
            document, slices = found
        else:
            document = json.loads(raw)
            slices = None
        if document.get("interface") != interface or document.get("version") != STATE_VERSION:
            return None
        top = document["ledger"]
        if slices is None:
            slices = dict(top["slices"])
        read_at = top.get("read_at")
        journal = document.get("journal")
        if journal:
            for entry in _journal_entries(journal_file(path), journal, names):
                slices.update(entry["slices"])
                for name in entry["gone"]:
                    slices.pop(name, None)
                read_at = entry["ledger"].get("read_at", read_at)
        if names:  # the whole file was parsed, or journal lines named others too
            slices = {n: slices[n] for n in names if n in slices}
    except (_Unusable, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return slices, (read_at if isinstance(read_at, int | float) else None)


def _some_slices(
    raw: bytes, names: Collection[str]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The document without its slices, and the slices of ``names`` it holds, from a
    snapshot written a slice per line (_encode_snapshot); None for a file written otherwise."""
    first, last = raw.find(b"\n"), raw.rfind(b"\n", 0, len(raw) - 1)
    if first < 0 or last <= first:
        return None
    document = json.loads(raw[:first] + raw[last + 1 :])
    if not isinstance(document, dict) or document.get("ledger", {}).get("slices") != {}:
        return None
    slices = {}
    for name in names:
        key = b"\n" + _ENCODE(name).encode() + b":"
        at = raw.find(key, first, last + 1)
        if at < 0:
            continue
        end = raw.find(b"\n", at + 1)
        slices[name] = json.loads(raw[at + len(key) : end].rstrip(b","))
    return document, slices


class _Unusable(Exception):
    """Why a state or journal file cannot be read (one line, without the path)."""


def _read_file(path: str) -> bytes | None:
    """The bytes of the regular file at ``path``; None if there is none. A symbolic link is
    never followed, a FIFO never blocks (O_NONBLOCK: one planted at the path must not hang
    the daemon's start), and anything else unusable raises _Unusable saying why."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unusable("a symbolic link, not followed") from None
        raise _Unusable(f"cannot read: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _Unusable("not a regular file")
            return f.read()
    except OSError as exc:
        raise _Unusable(f"cannot read: {exc.strerror or exc}") from None


def _journal_entries(
    path: str, journal: str, names: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """The complete lines of the journal that belong to snapshot ``journal``, up to the
    first that is not an entry (unchecked; see read_raw). With ``names``, a line that
    mentions none of them is parsed only when it is the last (its ``read_at`` is the
    ledger's)."""
    try:
        raw = _read_file(path)
    except _Unusable:
        return []
    lines = (raw or b"").split(b"\n")[:-1]
    wanted = [_ENCODE(name).encode() for name in names] if names else None
    out = []
    for i, line in enumerate(lines):
        if wanted is not None and i < len(lines) - 1 and not any(w in line for w in wanted):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            break
        if not isinstance(entry, dict):
            break
        if entry.get("journal") == journal:
            out.append(entry)
    return out


def _replay(
    path: str, journal: str, ledger: Ledger, now: float | None, set_aside: bool
) -> str | None:
    """Apply the journal's entries for snapshot ``journal``; a problem, or None.

    A last line cut short (a crash in the middle of a write) is ignored. Anything else
    unreadable stops the replay there: the journal is moved aside (when ``set_aside``)
    and the ledger keeps the entries before it; the counters still hold what the rest
    would have added."""
    try:
        raw = _read_file(path)
    except _Unusable as exc:
        why = str(exc)
        return _set_aside(path, why, now, "the entries after the snapshot") if set_aside else why
    if raw is None:
        return None
    lines = raw.split(b"\n")
    # Complete lines end in a newline: what follows the last one is a cut-short write.
    for number, line in enumerate(lines[:-1], 1):
        try:
            entry = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
            if not isinstance(entry, dict):
                raise ValueError(f"not a journal entry: a JSON {type(entry).__name__}")
            if entry.get("journal") != journal:
                continue  # an older snapshot's entry
            unknown = sorted(set(entry) - {"journal", "saved_at", "ledger", "slices", "gone"})
            if unknown:
                raise ValueError(f"unknown key {', '.join(unknown)}")
            saved_at = entry.get("saved_at")
            if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
                raise ValueError(f"saved_at: must be a number, not {saved_at!r}")
            check_time_bounds(float(saved_at), "saved_at", now)
            ledger.apply(
                entry.get("ledger"),
                entry.get("slices"),
                entry.get("gone"),
                now=now,
                saved_at=float(saved_at),
                where=f"line {number}",
            )
        except (ValueError, TypeError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
            why = f"line {number}: {exc}"
            if not set_aside:
                return why
            return _set_aside(path, why, now, f"the entries from line {number} on")
    ledger.changes()  # as loaded: nothing new to save yet
    return None


def _parse(raw: bytes, interface: str, now: float | None = None) -> tuple[Ledger, str]:
    """The snapshot's ledger and the name of its journal ("" if none)."""
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
    unknown = sorted(set(document) - {"version", "interface", "saved_at", "ledger", "journal"})
    if unknown:
        raise ValueError(f"unknown key {', '.join(unknown)}")
    journal = document.get("journal", "")
    if not isinstance(journal, str):
        raise ValueError(f"journal: must be a string, not {journal!r}")
    ledger = Ledger.from_dict(document.get("ledger"), now=now, saved_at=float(saved_at))
    return ledger, journal


def _no_constant(name: str) -> None:
    raise ValueError(f"not valid JSON: {name} is not a number")


def _set_aside(path: str, why: str, now: float | None, lost: str = "") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.corrupt-{stamp}.{n}"
    # A journal's problem costs only its entries: the snapshot before them stands.
    outcome = f"using the state without {lost}" if lost else "starting with an empty ledger"
    try:
        os.rename(path, aside)
    except OSError as exc:
        return (
            f"state file {path} unusable ({why}) and could not be moved aside: "
            f"{exc.strerror or exc}; {outcome}"
        )
    return f"state file {path} unusable ({why}); moved to {aside}, {outcome}"


def write_atomic(path: str, data: bytes | Iterable[bytes]) -> int:
    """Replace ``path`` with ``data`` (bytes, or pieces of it written as they come): a new
    file, synced, renamed over it. Returns the bytes written.

    Raises OSError (EEXIST) when ``path`` is a directory, a device, a FIFO or a socket.
    Nothing is ever written through a symbolic link: tempfile.mkstemp creates the temporary
    file with O_EXCL | O_NOFOLLOW under a fresh random name (never an existing file), and
    rename(2) replaces a symbolic link at ``path`` by the file, leaving the link's target
    alone.
    """
    node = files.foreign_node(path)
    if node is not None:  # a rename would put a file in place of a device or a FIFO
        raise OSError(errno.EEXIST, f"{node} is there, and bwbpf replaces only files")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory as the target: rename(2) is atomic only within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            # Not secret, and `bwbpf stat` may read it without being root.
            os.fchmod(f.fileno(), 0o644)
            size = 0
            for piece in (data,) if isinstance(data, bytes) else data:
                f.write(piece)
                size += len(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        global _written
        _written += size
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
    return size
