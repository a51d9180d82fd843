"""What the daemon writes to the usage history (bwbpf/history.py), worked out from the ledger.

The history follows the ledger, not the counters: after each tick the recorder compares each
changed slice's usage with what the history already holds of the same period and adds the
difference to the buckets of the tick. So the history of a period equals the ledger's usage
for it, byte for byte, whatever happened in between:

* Counter resets, clock jumps and reloads are the ledger's business; it has handled them
  (a counter that went backwards restarted) before the recorder looks.
* A ``kill -9`` between a tick and the next write loses nothing: at start the recorder
  compares the ledger, loaded from the state file, with the database's period rows and adds
  what is missing, in the buckets of the ledger's last reading of the slice.
* Nothing is added twice: what is added is the difference to what is held.
* A ledger behind the history (its state file was lost) adds nothing until it has grown
  past what it held; the period row then follows the ledger again.

Between writes the differences wait in flat arrays indexed by the slice's place in the
config (64 bytes a slice, whatever the traffic), all in one 5-minute bucket: they are
written when the bucket is complete, every ``write_interval``, at a reload and at stop, in
one transaction. A write that fails (a full disk) is tried again at the next tick, with
nothing lost; a database found corrupt is moved aside and a new one started.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from bwbpf import history
from bwbpf.errors import Error
from bwbpf.history import Added, PeriodRow
from bwbpf.ledger import Ledger
from bwbpf.model import Config

log = logging.getLogger("bwbpf.history")

PRUNE_EVERY_S = 3600.0
# Rows of failed writes kept for the next one; past this they are merged per slice, class
# and day (the totals stay exact, the 5-minute placement is lost).
MAX_BACKLOG = 100_000
_NONE = math.nan  # no period seen yet


class Recorder:
    """The history writer of one daemon. ``catch_up`` once after the ledger is loaded, then
    ``observe`` after every tick, ``adopt`` at a reload, ``close`` at stop."""

    def __init__(self, cfg: Config, now: float) -> None:
        self.settings = cfg.history
        self.path = cfg.history_path
        self._tz = ZoneInfo(self.settings.timezone)
        self._keep = self.settings.keep()
        self._interface = cfg.interface
        self.store: history.Store | None = None
        self.problem: str | None = None
        self._reopen(now)
        self._pending_at: float | None = None  # the first tick of the bucket waiting
        self._written_at = now
        self._prune_at = now
        self._closed: list[PeriodRow] = []  # periods that ended since the last write
        self._backlog: list[Added] = []
        self._index(cfg)

    # -- the slices ---------------------------------------------------------------------

    def _index(self, cfg: Config) -> None:
        names = [s.name for s in cfg.all_slices()]
        n = len(names)
        self._names = names
        self._pos = {name: i for i, name in enumerate(names)}
        # What the history holds of each slice's period (start, end; bytes and packets of
        # each class), and what waits to be added (bytes and packets of each class).
        self._start = array("d", [_NONE]) * n
        self._end = array("d", [_NONE]) * n
        self._held = array("q", [0]) * (4 * n)
        self._add = array("q", [0]) * (4 * n)
        self._touched = bytearray(n)
        self._touched_list: list[int] = []

    def _seed(self, ledger: Ledger) -> None:
        """What the history holds is what the ledger has (after ``catch_up`` wrote it)."""
        for i, name in enumerate(self._names):
            r = ledger.get(name)
            if r is None:
                continue
            self._start[i], self._end[i] = r.period_start, r.period_end
            j = 4 * i
            for d, c in enumerate(r.classes[:2]):
                self._held[j + 2 * d] = c.used_bytes
                self._held[j + 2 * d + 1] = c.used_packets

    # -- start, tick, reload, stop ------------------------------------------------------

    def catch_up(self, ledger: Ledger, now: float) -> None:
        """Add what the ledger has and the history does not (a write lost to a crash, or a
        history started mid-period), in the buckets of the slice's last reading."""
        store = self.store or self._reopen(now)
        held = store.latest_periods()
        added: list[Added] = []
        periods: list[PeriodRow] = []
        for name, r in ledger.records().items():
            at = r.read_at if r.read_at is not None else now
            for d, c in enumerate(r.classes[:2]):
                h = held.get((name, d))
                if h is None or r.period_start > h.start:
                    grown = (c.used_bytes, c.used_packets)
                elif r.period_start == h.start:
                    grown = (max(0, c.used_bytes - h.bytes), max(0, c.used_packets - h.packets))
                else:
                    grown = (0, 0)  # the ledger is in an older period: follow it from here
                if grown[0] or grown[1]:
                    added.append(Added(name, d, at, *grown))
                row = PeriodRow(name, d, r.period_start, r.period_end, c.used_bytes, c.used_packets)
                if h != row and (c.used_bytes or c.used_packets or h is not None):
                    periods.append(row)
        store.write(added, periods, self._tz, self._keep)
        if added:
            log.info(
                "history %s: added %d bytes the ledger had and the history did not",
                self.path,
                sum(a.bytes for a in added),
            )
        self._seed(ledger)

    def observe(self, ledger: Ledger, names: Iterable[str], now: float) -> None:
        """After a tick: take what the slices ``names`` (the ledger's changed ones) added,
        and write when a bucket is complete or ``write_interval`` has passed."""
        if self._pending_at is not None and self._pending_at // 300 != now // 300:
            self._bucket_done()
        pos, start, end, held, add = self._pos, self._start, self._end, self._held, self._add
        get = ledger.get
        for name in names:
            i = pos.get(name)
            r = None if i is None else get(name)
            if r is None:
                continue
            assert i is not None
            j = 4 * i
            (c0, c1) = r.classes[:2]
            if r.period_start != start[i]:
                if start[i] == start[i]:  # not NaN: a period the history holds ended
                    self._close(i)
                if start[i] == start[i] and r.period_start < start[i]:
                    grown = (0, 0, 0, 0)  # an older period than the history's: follow it
                else:
                    grown = (c0.used_bytes, c0.used_packets, c1.used_bytes, c1.used_packets)
                start[i], end[i] = r.period_start, r.period_end
            else:
                end[i] = r.period_end
                grown = (
                    c0.used_bytes - held[j],
                    c0.used_packets - held[j + 1],
                    c1.used_bytes - held[j + 2],
                    c1.used_packets - held[j + 3],
                )
            held[j] = c0.used_bytes
            held[j + 1] = c0.used_packets
            held[j + 2] = c1.used_bytes
            held[j + 3] = c1.used_packets
            for k, g in enumerate(grown):
                if g > 0:  # below 0: the ledger lost usage; the buckets keep what was seen
                    add[j + k] += g
            if not self._touched[i]:
                self._touched[i] = 1
                self._touched_list.append(i)
        if self._touched_list and self._pending_at is None:
            self._pending_at = now
        if now - self._written_at >= self.settings.write_interval_s:
            self.write(now)

    def adopt(self, cfg: Config, ledger: Ledger, now: float) -> None:
        """A reload: write what waits, then follow the new config's slices."""
        self._take_pending()
        self.write(now)
        self._index(cfg)
        self._seed(ledger)

    def close(self, now: float) -> None:
        try:
            self._take_pending()
            self.write(now)
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None

    # -- writing ------------------------------------------------------------------------

    def write(self, now: float) -> None:
        """Write what waits, in one transaction; Error when it cannot be (kept for the next
        write). Also deletes rows past their retention, hourly."""
        added = self._backlog + self._pending()
        periods = self._closed + self._touched_periods()
        try:
            self._write(added, periods)
        except history.WriteError as exc:
            raise Error(f"{exc}; kept for the next write") from None
        self._clear_pending()
        self._backlog = []
        self._closed = []
        self._written_at = now
        if now >= self._prune_at and self.store is not None:
            self._prune_at = now + PRUNE_EVERY_S
            self.store.prune(now, self._tz, self._keep)

    def _reopen(self, now: float | None = None) -> history.Store:
        """Open the database (moving an unusable one aside: ``problem`` says so)."""
        self.store, problem = history.Store.open(self.path, self._interface, now)
        if problem:
            log.error("%s", problem)
            self.problem = problem
        return self.store

    def _write(self, added: list[Added], periods: list[PeriodRow]) -> None:
        store = self.store or self._reopen()
        try:
            store.write(added, periods, self._tz, self._keep)
        except history.WriteError as exc:
            if not exc.corrupt:
                raise
            # Broken under us: a new database gets what waits and the ledger's periods.
            store.close()
            self.store = None
            self._reopen().write(added, periods + self._all_periods(), self._tz, self._keep)

    def _bucket_done(self) -> None:
        """The waiting bucket is complete: written, or kept aside if writing fails, so that
        the next bucket starts empty."""
        try:
            self.write(self._pending_at or 0.0)
        except Error as exc:
            log.error("%s", exc)
            self._take_pending()

    def _take_pending(self) -> None:
        """What waits in the arrays, moved to the backlog (period rows stay)."""
        self._backlog.extend(self._pending())
        self._closed.extend(self._touched_periods())
        self._clear_pending()
        if len(self._backlog) > MAX_BACKLOG:
            self._backlog = _merged(self._backlog, self._tz)

    def _pending(self) -> list[Added]:
        at = self._pending_at
        if at is None:
            return []
        add, names = self._add, self._names
        rows = []
        for i in self._touched_list:
            j = 4 * i
            for d in (0, 1):
                b, p = add[j + 2 * d], add[j + 2 * d + 1]
                if b or p:
                    rows.append(Added(names[i], d, at, b, p))
        return rows

    def _touched_periods(self) -> list[PeriodRow]:
        return [row for i in self._touched_list for row in self._period_rows(i)]

    def _all_periods(self) -> list[PeriodRow]:
        return [row for i in range(len(self._names)) for row in self._period_rows(i)]

    def _period_rows(self, i: int) -> list[PeriodRow]:
        if self._start[i] != self._start[i]:
            return []
        j = 4 * i
        return [
            PeriodRow(
                self._names[i],
                d,
                self._start[i],
                self._end[i],
                self._held[j + 2 * d],
                self._held[j + 2 * d + 1],
            )
            for d in (0, 1)
        ]

    def _close(self, i: int) -> None:
        self._closed.extend(self._period_rows(i))

    def _clear_pending(self) -> None:
        add, touched = self._add, self._touched
        for i in self._touched_list:
            j = 4 * i
            add[j] = add[j + 1] = add[j + 2] = add[j + 3] = 0
            touched[i] = 0
        self._touched_list = []
        self._pending_at = None


def _merged(rows: list[Added], tz: ZoneInfo) -> list[Added]:
    """Rows merged per slice, class and day (at the day's first row's time)."""
    merged: dict[tuple[str, int, int], list] = {}
    for a in rows:
        key = (a.name, a.dclass, history.bucket_starts(a.at, tz)[history.DAY])
        m = merged.get(key)
        if m is None:
            merged[key] = [a.at, a.bytes, a.packets]
        else:
            m[1] += a.bytes
            m[2] += a.packets
    return [Added(n, d, m[0], m[1], m[2]) for (n, d, _), m in merged.items()]
