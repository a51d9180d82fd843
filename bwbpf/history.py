"""The usage history: bytes and packets per slice and destination class, in SQLite.

One database per interface (``Config.history_path``), in WAL mode so that ``bwbpf history``
and the node page read while the daemon writes. Tables:

``slice(id, name)``
    Every slice name ever written, once; a slice removed from the config keeps its rows.
``usage(res, start, slice, dclass, bytes, packets)``
    One row per bucket: ``res`` indexes RESOLUTIONS (5-minute, hour, day, month, year) and
    ``start`` is the bucket's first second. Days, months and years begin at local midnight
    in ``[history] timezone``. Only buckets in which a slice sent something have a row.
``period(slice, dclass, start, end, bytes, packets)``
    Each quota period's usage as the ledger had it at the last write: the totals a bill is
    made from, equal to the ledger's byte for byte.

The recorder (bwbpf/recorder.py) decides what to write; this module stores and reads.
Errors reach callers as ``history.Error`` with one line naming the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from typing import NamedTuple
from urllib.parse import quote
from zoneinfo import ZoneInfo

from bwbpf import files, heap
from bwbpf.errors import Error

RESOLUTIONS = ("5min", "hours", "days", "months", "years")
FIVE_MIN, HOUR, DAY, MONTH, YEAR = range(5)
# "bwbf": a database of another program is recognised as foreign, not read as ours.
APPLICATION_ID = 0x62776266
SCHEMA_VERSION = 1
# Up to this many names are bound into a query; more are filtered after it.
_FEW_NAMES = 500
# SQLite's primary result codes for a file that is not (or no longer) a database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
CACHE_KIB = 512
# A write of at least this many rows is followed by heap.trim (what it was given is freed).
TRIM_AFTER_ROWS = 2000

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE slice (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE usage (
    res INTEGER NOT NULL, start INTEGER NOT NULL, slice INTEGER NOT NULL,
    dclass INTEGER NOT NULL, bytes INTEGER NOT NULL, packets INTEGER NOT NULL,
    PRIMARY KEY (res, start, slice, dclass)
) WITHOUT ROWID;
CREATE TABLE period (
    slice INTEGER NOT NULL, dclass INTEGER NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    bytes INTEGER NOT NULL, packets INTEGER NOT NULL,
    PRIMARY KEY (slice, dclass, start)
) WITHOUT ROWID;
"""

_ADD_USAGE = """
INSERT INTO usage (res, start, slice, dclass, bytes, packets) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (res, start, slice, dclass)
DO UPDATE SET bytes = bytes + excluded.bytes, packets = packets + excluded.packets
"""
_SET_PERIOD = """
INSERT INTO period (slice, dclass, start, end, bytes, packets) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (slice, dclass, start)
DO UPDATE SET end = excluded.end, bytes = excluded.bytes, packets = excluded.packets
"""
# Names looked up per statement (SQLite allows 32,766 parameters).
_NAMES_PER_SELECT = 500
_SELECT_IDS = f"SELECT name, id FROM slice WHERE name IN ({', '.join('?' * _NAMES_PER_SELECT)})"


class Added(NamedTuple):
    """Traffic to add to the buckets containing ``at``."""

    name: str
    dclass: int
    at: float
    bytes: int
    packets: int


class PeriodRow(NamedTuple):
    """A quota period's usage of one slice and class, as the ledger has it."""

    name: str
    dclass: int
    start: float
    end: float
    bytes: int
    packets: int


class UsageRow(NamedTuple):
    name: str
    start: int
    dclass: int
    bytes: int
    packets: int


# -- buckets ------------------------------------------------------------------------------


def bucket_starts(t: float, tz: ZoneInfo) -> tuple[int, int, int, int, int]:
    """The first second of the 5-minute, hour, day, month and year buckets containing ``t``.

    Every zone's offset is a whole number of 5 minutes, so 5-minute buckets are the same
    everywhere and never straddle a local hour, day, month or year."""
    local = datetime.fromtimestamp(t, tz)
    hour = local.replace(minute=0, second=0, microsecond=0)
    return (
        int(t // 300 * 300),
        int(hour.timestamp()),
        _midnight(local.date(), tz),
        _midnight(date(local.year, local.month, 1), tz),
        _midnight(date(local.year, 1, 1), tz),
    )


def next_start(res: int, start: int, tz: ZoneInfo) -> int:
    """The start of the bucket after the one starting at ``start``."""
    if res == FIVE_MIN:
        return start + 300
    if res == HOUR:
        return bucket_starts(start + 3600, tz)[HOUR]
    day = datetime.fromtimestamp(start, tz).date()
    if res == DAY:
        return _midnight(date.fromordinal(day.toordinal() + 1), tz)
    if res == MONTH:
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return _midnight(date(year, month, 1), tz)
    return _midnight(date(day.year + 1, 1, 1), tz)


def keep_after(res: int, keep: int, now: float, tz: ZoneInfo) -> int | None:
    """The first bucket start a retention of ``keep`` units (hours of 5-minute rows, days of
    hours, days, months, years) keeps at ``now``; None: keep everything."""
    if keep < 0:
        return None
    starts = bucket_starts(now, tz)
    if res == FIVE_MIN:
        return starts[FIVE_MIN] - keep * 3600 + 300
    if res in (HOUR, DAY):
        return starts[res] - keep * 86400 + (3600 if res == HOUR else 86400)
    today = datetime.fromtimestamp(now, tz).date()
    if res == MONTH:
        months = today.year * 12 + today.month - 1 - keep + 1
        return _midnight(date(months // 12, months % 12 + 1, 1), tz)
    return _midnight(date(max(1, today.year - keep + 1), 1, 1), tz)


def _midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


# -- the store ----------------------------------------------------------------------------


class Store:
    """One history database, open for writing (``open``) or reading (``open_readonly``)."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        # The ids of the slice names written so far: only slices that sent are here, and a
        # write with ids costs two thirds of one that looks each name up in SQL.
        self._ids: dict[str, int] = {}

    @classmethod
    def open(cls, path: str, interface: str, now: float | None = None) -> tuple[Store, str | None]:
        """Open or create the database for writing. One that is corrupt, of another program
        or of another interface is moved aside and a new one made; the second value says so
        (None when nothing was wrong). Raises Error when no database can be made at all."""
        problem = None
        try:
            return cls._open(path, interface), None
        except _Unusable as exc:
            problem = _move_aside(path, str(exc), now)
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                raise Error(f"history {path}: {_reason(exc)}") from None
            problem = _move_aside(path, _reason(exc), now)
        try:
            return cls._open(path, interface), problem
        except (_Unusable, sqlite3.DatabaseError) as exc:
            raise Error(f"history {path}: {_reason(exc)}") from None

    @classmethod
    def _open(cls, path: str, interface: str) -> Store:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        node = files.foreign_node(path)
        if node is not None:  # not moved aside: it is not a database bwbpf made
            raise Error(f"history {path}: is {node}, not a database bwbpf can own")
        if os.path.lexists(path) and not os.path.isfile(path):
            raise _Unusable("a symbolic link to no regular file")
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            _check_or_create(conn, interface)
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL: a power cut may lose the last writes but never corrupts, and
            # the ledger has what they held (the recorder writes it again).
            conn.execute("PRAGMA synchronous = NORMAL")
            # 512 KiB of page cache instead of SQLite's 2 MiB: the daemon's resident memory
            # counts, and the pages it misses are in the kernel's page cache anyway.
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        os.chmod(path, 0o644)  # not secret; `bwbpf history` may run as another user
        return cls(path, conn)

    @classmethod
    def open_readonly(cls, path: str, interface: str) -> Store:
        """Open for reading; Error (one line, naming the file) when it is missing, foreign
        or unreadable."""
        if not os.path.lexists(path):
            raise Error(f"history {path}: no such file (the daemon writes it)")
        if not os.path.isfile(path):
            raise Error(f"history {path}: not a regular file")
        try:
            conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise Error(f"history {path}: {_reason(exc)}") from None
        try:
            _check(conn, interface)
        except (_Unusable, sqlite3.Error) as exc:
            conn.close()
            raise Error(f"history {path}: {_reason(exc)}") from None
        return cls(path, conn)

    def close(self) -> None:
        self._conn.close()

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        added: Sequence[Added],
        periods: Sequence[PeriodRow],
        tz: ZoneInfo,
        keep: Sequence[int],
    ) -> None:
        """Add ``added`` to every kept resolution's buckets and set ``periods``, in one
        transaction: all of it is written or none. Error on failure (disk full, corrupt)."""
        if not added and not periods:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                new_ids = self._new_ids({a.name for a in added} | {p.name for p in periods})
                ids = self._ids if not new_ids else {**self._ids, **new_ids}
                # Rows made as SQLite takes them: at 10,000 slices a list of them was 50,000
                # tuples (~8 MB) at once.
                self._conn.executemany(_ADD_USAGE, _usage_rows(added, ids, tz, keep))
                self._conn.executemany(
                    _SET_PERIOD,
                    ((ids[p.name], p.dclass, p.start, p.end, p.bytes, p.packets) for p in periods),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise WriteError(
                f"history {self.path}: cannot write: {_reason(exc)}", corrupt=_corrupt(exc)
            ) from None
        # Only once committed: a rolled-back insert's ids are not the slices'.
        self._ids.update(new_ids)
        if len(added) + len(periods) >= TRIM_AFTER_ROWS:
            heap.trim()

    def _new_ids(self, names: set[str]) -> dict[str, int]:
        """The ids of the names not looked up before, inserting those the database lacks
        (in the caller's transaction)."""
        missing = [n for n in names if n not in self._ids]
        if not missing:
            return {}
        self._conn.executemany(
            "INSERT OR IGNORE INTO slice (name) VALUES (?)", ((n,) for n in missing)
        )
        found: dict[str, int] = {}
        for i in range(0, len(missing), _NAMES_PER_SELECT):
            chunk = missing[i : i + _NAMES_PER_SELECT]
            # Always _NAMES_PER_SELECT marks (a short chunk repeats its last name; IN does
            # not mind): Python's sqlite3 keeps up to 128 prepared statements a connection,
            # and one per chunk length grew the daemon with every write that met another
            # number of new slices (measured: 128 lengths of 1 to 500 marks held 7 MB, and
            # 10,000 slices first seen 1 to 150 at a time 1.3 MB more than one length).
            chunk += [chunk[-1]] * (_NAMES_PER_SELECT - len(chunk))
            found.update(self._conn.execute(_SELECT_IDS, chunk))
        return found

    def prune(self, now: float, tz: ZoneInfo, keep: Sequence[int]) -> int:
        """Delete the rows older than each resolution keeps, and periods that ended before
        the monthly rows' start; returns the rows deleted."""
        deleted = 0
        try:
            with self._transaction():
                for res, units in enumerate(keep):
                    first = keep_after(res, units, now, tz)
                    if first is not None:
                        cur = self._conn.execute(
                            "DELETE FROM usage WHERE res = ? AND start < ?", (res, first)
                        )
                        deleted += cur.rowcount
                first = keep_after(MONTH, keep[MONTH], now, tz)
                if first is not None:
                    cur = self._conn.execute("DELETE FROM period WHERE end <= ?", (first,))
                    deleted += cur.rowcount
        except sqlite3.Error as exc:
            raise WriteError(
                f"history {self.path}: cannot prune: {_reason(exc)}", corrupt=_corrupt(exc)
            ) from None
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def latest_periods(
        self, names: Iterable[str] | None = None
    ) -> dict[tuple[str, int], PeriodRow]:
        """Each slice and class's latest period row: what the history holds of the period
        the ledger may still be in."""
        wanted = None if names is None else set(names)
        # A few names are looked up by the database (the node page asks for one slice of
        # 10,000); many are filtered here rather than bound as that many parameters.
        where, args = ("", ())
        if wanted is not None and len(wanted) <= _FEW_NAMES:
            where, args = _names_clause(sorted(wanted))
        rows = self._select(
            "SELECT s.name, p.dclass, p.start, p.end, p.bytes, p.packets FROM period p"
            " JOIN slice s ON s.id = p.slice"
            " WHERE p.start = (SELECT max(start) FROM period q"
            f" WHERE q.slice = p.slice AND q.dclass = p.dclass){where}",
            args,
        )
        return {(r[0], r[1]): PeriodRow(*r) for r in rows if wanted is None or r[0] in wanted}

    def totals(self, res: int, since: int, until: float) -> list[tuple[int, int, int, int]]:
        """``(start, dclass, bytes, packets)`` summed over every slice, per bucket of
        resolution ``res`` with ``since <= start < until``, by start: the node's usage,
        added up by the database (at 10,000 slices a day of hours is 480,000 rows)."""
        return self._select(
            "SELECT start, dclass, sum(bytes), sum(packets) FROM usage"
            " WHERE res = ? AND start >= ? AND start < ? GROUP BY start, dclass"
            " ORDER BY start, dclass",
            (res, since, until),
        )

    def top_names(self, res: int, since: int, until: float, n: int) -> list[str]:
        """The ``n`` slices that sent the most bytes in the buckets of ``res`` with
        ``since <= start < until``, most first (ties by name)."""
        rows = self._select(
            "SELECT s.name FROM usage u JOIN slice s ON s.id = u.slice"
            " WHERE u.res = ? AND u.start >= ? AND u.start < ?"
            " GROUP BY u.slice ORDER BY sum(u.bytes) DESC, s.name LIMIT ?",
            (res, since, until, n),
        )
        return [r[0] for r in rows]

    def top_period_names(self, since: float, until: float, n: int) -> list[str]:
        """The ``n`` slices whose quota periods overlapping ``[since, until)`` add up to the
        most bytes, most first (ties by name)."""
        rows = self._select(
            "SELECT s.name FROM period p JOIN slice s ON s.id = p.slice"
            " WHERE p.end > ? AND p.start < ?"
            " GROUP BY p.slice ORDER BY sum(p.bytes) DESC, s.name LIMIT ?",
            (since, until, n),
        )
        return [r[0] for r in rows]

    def usage(self, res: int, since: int, until: int, names: Sequence[str] = ()) -> list[UsageRow]:
        """Rows of resolution ``res`` with ``since <= start < until``, by name then start."""
        where, args = _names_clause(names)
        rows = self._select(
            "SELECT s.name, u.start, u.dclass, u.bytes, u.packets FROM usage u"
            " JOIN slice s ON s.id = u.slice WHERE u.res = ? AND u.start >= ? AND u.start < ?"
            f"{where} ORDER BY s.name, u.start, u.dclass",
            (res, since, until, *args),
        )
        return [UsageRow(*r) for r in rows]

    def periods(self, since: float, until: float, names: Sequence[str] = ()) -> list[PeriodRow]:
        """Period rows that overlap ``[since, until)``, by name then start."""
        where, args = _names_clause(names)
        rows = self._select(
            "SELECT s.name, p.dclass, p.start, p.end, p.bytes, p.packets FROM period p"
            " JOIN slice s ON s.id = p.slice WHERE p.end > ? AND p.start < ?"
            f"{where} ORDER BY s.name, p.start, p.dclass",
            (since, until, *args),
        )
        return [PeriodRow(*r) for r in rows]

    def names(self) -> list[str]:
        return [r[0] for r in self._select("SELECT name FROM slice ORDER BY name", ())]

    def _select(self, sql: str, args: tuple[object, ...]) -> list[tuple]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise Error(f"history {self.path}: cannot read: {_reason(exc)}") from None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


def _usage_rows(
    added: Iterable[Added], ids: dict[str, int], tz: ZoneInfo, keep: Sequence[int]
) -> Iterator[tuple[int, int, int, int, int, int]]:
    """The ``usage`` rows ``added`` adds to: one per kept resolution of each."""
    starts: dict[float, tuple[int, ...]] = {}
    for a in added:
        if not (a.bytes or a.packets):
            continue
        s = starts.get(a.at)
        if s is None:
            s = starts[a.at] = bucket_starts(a.at, tz)
        sid = ids[a.name]
        for res, start in enumerate(s):
            if keep[res] != 0:
                yield (res, start, sid, a.dclass, a.bytes, a.packets)


class WriteError(Error):
    """A write that did not happen; ``corrupt`` when the file is no database any more."""

    def __init__(self, message: str, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


class _Unusable(Exception):
    """A database that is not this interface's history."""


def _check_or_create(conn: sqlite3.Connection, interface: str) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and tables == 0:
        # Statement by statement: executescript would commit on its own, outside this one.
        with _Transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('interface', ?)", (interface,))
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    _check(conn, interface)


def _check(conn: sqlite3.Connection, interface: str) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise _Unusable("not a bwbpf history database")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise _Unusable(f"schema version {version}, this bwbpf reads {SCHEMA_VERSION}")
    row = conn.execute("SELECT value FROM meta WHERE key = 'interface'").fetchone()
    if row is None or row[0] != interface:
        raise _Unusable(f"the history of interface {row[0] if row else '?'}, not {interface}")


def _names_clause(names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    if not names:
        return "", ()
    return f" AND s.name IN ({', '.join('?' * len(names))})", tuple(names)


def _corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _move_aside(path: str, why: str, now: float | None) -> str:
    """Rename an unusable database (and its WAL) out of the way; what happened, one line."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}.corrupt-{stamp}.{n}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise Error(
            f"history {path} unusable ({why}) and could not be moved aside: {exc.strerror}"
        ) from None
    for suffix in ("-wal", "-shm"):
        # The WAL belongs to the file moved aside; the shared-memory index is rebuilt.
        if os.path.lexists(path + suffix):
            try:
                if suffix == "-wal":
                    os.rename(path + suffix, aside + suffix)
                else:
                    os.unlink(path + suffix)
            except OSError:
                pass
    return f"history {path} unusable ({why}); moved to {aside}, starting a new one"


def iter_starts(res: int, since: float, until: float, tz: ZoneInfo) -> Iterator[int]:
    """Every bucket start of ``res`` from the bucket containing ``since`` up to ``until``."""
    start = bucket_starts(since, tz)[res]
    while start < until:
        yield start
        start = next_start(res, start, tz)
