"""Per-period usage of every slice and class, worked out from raw kernel counters.

The datapath's counters only ever go up (docs/conventions.md, rule 2); user space never
clears them. The ledger remembers, per slice name and destination class, the last raw
reading and what the class used this period, and adds the difference at every tick.

Rules, each fixing something the reference bwmon got wrong:

* **A counter that goes backwards restarted** (program reloaded, map recreated, reboot).
  The new reading counted from zero, so it is all new traffic (``delta`` returns it whole)
  and the period's usage *continues*. It is not a new period: the reference treated it as
  one and so every reboot handed out a fresh quota. A counter that restarted and already
  grew past its old value cannot be recognised this way; a daemon that knows the maps are
  new (it created them, the boot id changed) says so with ``counters_restarted()``.
* **The first reading of a counter the ledger has no baseline for charges nothing**: it
  only sets the baseline. Such a counter may hold traffic from before this period (a lost
  state file, a slice id reused by a new slice), and the ledger cannot tell how much; the
  cost is at most one tick of a brand-new slice's traffic going unbilled.
* **Periods** come from the ``periods`` callable (``periods.current_period``). When a
  slice's period start changes, its usage, ``notified`` and ``capped`` flags reset (the
  last ceilings are kept: they are what HTB still has). A change of period *end* alone (the
  period length was reconfigured) keeps the usage. Traffic between the last reading and a
  rollover is split in proportion to time: a daemon that was down for three days charges
  the new period only for its share of the gap, not for all of it.
* **Dead slices**: a slice missing from a tick's readings (removed from the config, or its
  counters gone) is remembered, usage and all, until its period ends, so deleting and
  recreating a slice does not reset its quota; after that it is forgotten. Its raw
  baselines are dropped when it dies, because the counter it comes back with (perhaps under
  another slice id) is not the one it left.

Readings come keyed by slice name, then ``dclass`` (0 normal, 1 exempt, ``limits.DCLASSES``),
as ``(bytes, packets)``. Pass ``(0, 0)`` for a configured slice that has no counter yet:
a slice absent from the readings is dead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring_ascii as encode_json_string
from types import MappingProxyType
from typing import Any, NamedTuple

from bwbpf.limits import DCLASSES

# Bounds on what a saved ledger may hold (from_dict): a counter or a ceiling fits a signed
# 64-bit integer; a time is after 2000-01-01 and at most 400 days from now.
MAX_COUNT = 2**63 - 1
EARLIEST_TIME = 946684800.0  # 2000-01-01T00:00:00Z
FUTURE_SLACK_S = 400 * 86400.0
PERIODS_AHEAD = 3

Reading = tuple[int, int]
"""A raw counter reading, or a difference of two: ``(bytes, packets)``."""

PeriodFn = Callable[[str, float | None], tuple[float, float]]
"""``periods(slice_name, recorded_start) -> (period_start, period_end)``; see periods.py."""


def delta(last: Reading, current: Reading) -> Reading:
    """What a counter pair grew by since ``last``.

    If either number went backwards the counters restarted (they are only ever added to,
    and bytes and packets live in one map value, so they restart together): the current
    reading counted from zero and all of it is new.
    """
    if current[0] < last[0] or current[1] < last[1]:
        return current
    return current[0] - last[0], current[1] - last[1]


class ClassRecord(NamedTuple):
    """One destination class of one slice. (Records are named tuples, not frozen
    dataclasses: at 10,000 slices sending, 30,000 are made a tick, at a third the cost.)"""

    used_bytes: int = 0
    used_packets: int = 0
    # The last raw counter reading; None when there is no baseline (see the module doc).
    last: Reading | None = None
    capped: bool = False
    # The ceiling last applied to the class, None before the daemon set one.
    ceil_bps: int | None = None


# A class that has sent nothing and has no baseline yet (shared: records are immutable).
_NO_USAGE = ClassRecord()


class SliceRecord(NamedTuple):
    """Everything the ledger knows about a slice; ``classes`` is indexed by dclass."""

    name: str
    period_start: float
    period_end: float
    live: bool
    notified: bool
    read_at: float | None
    classes: tuple[ClassRecord, ...]


class Ledger:
    """Usage per slice and class in the current period. Not thread-safe."""

    def __init__(self) -> None:
        self._slices: dict[str, SliceRecord] = {}
        self._restarted = False
        # Every period recomputed at the next update (the config's period changed).
        self._recheck = False
        # When the last update read the counters: every live slice was read then.
        self.read_at: float | None = None
        # Names whose record the last update changed (new usage, a new period, born or
        # died): what the rest of a tick needs to look at again.
        self.changed: set[str] = set()
        # Names changed in any way since the last ``changes()``: what the next journal
        # entry must carry.
        self._dirty: set[str] = set()
        # Which kernel maps the baselines were read from (see datapath.Counters.generation).
        self.counters_generation: str | None = None
        # Bytes the device sent while bwbpf's classifier was missing (node.Watch): kept
        # with the ledger, so the total an operator reconciles against survives restarts.
        self.uncounted_bytes = 0

    def __len__(self) -> int:
        return len(self._slices)

    def __contains__(self, name: object) -> bool:
        return name in self._slices

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ledger):
            return NotImplemented
        return (self._slices, self.counters_generation, self.uncounted_bytes) == (
            other._slices,
            other.counters_generation,
            other.uncounted_bytes,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Ledger({len(self._slices)} slices)"

    # -- the tick ---------------------------------------------------------------------

    def update(
        self,
        now: float,
        readings: Mapping[str, Mapping[int, Reading] | Sequence[Reading]],
        periods: PeriodFn,
    ) -> None:
        """Account one tick: roll periods, add counter deltas, bury and forget dead slices.

        A slice's readings are ``{dclass: reading}``, or a sequence indexed by dclass.
        Raises ValueError for a malformed reading (a caller bug); nothing is changed then.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, not {now!r}")
        restarted, self._restarted = self._restarted, False
        recheck, self._recheck = self._recheck, False
        quick = not (restarted or recheck)
        slices = self._slices
        todo = []
        for name, by_class in readings.items():
            record = slices.get(name)
            # The common case at scale: an idle slice in the same period, its readings
            # what the ledger already holds (and so already checked). Nothing to do.
            if quick and record is not None and record.live and now < record.period_end:
                c = record.classes
                if isinstance(by_class, tuple | list) and len(by_class) == 2 == len(c):
                    if c[0].last == by_class[0] and c[1].last == by_class[1]:
                        continue
                elif all(c[d].last == r for d, r in _by_class(by_class)):
                    continue
            pairs = _by_class(by_class)
            for dclass, reading in pairs:
                _check_reading(name, dclass, reading)
            todo.append((name, record, pairs))
        previous, self.read_at = self.read_at, now
        changed: set[str] = set()
        for name, record, pairs in todo:
            slices[name] = self._account(record, name, pairs, now, periods, restarted, previous)
            changed.add(name)
        if len(slices) != len(readings):  # some remembered slice was not read
            for name in slices.keys() - readings.keys():
                record = slices[name]
                if now >= record.period_end:
                    del slices[name]
                    changed.add(name)
                elif record.live:
                    classes = tuple(c._replace(last=None) for c in record.classes)
                    slices[name] = record._replace(live=False, classes=classes)
                    changed.add(name)
        self.changed = changed
        self._dirty |= changed

    def counters_restarted(self) -> None:
        """The kernel counters were recreated: at the next ``update`` every reading counts
        from zero, for slices with or without a baseline."""
        self._restarted = True

    def periods_changed(self) -> None:
        """The configured period changed (a reload): the next ``update`` works out every
        slice's period again, not only those whose period ended."""
        self._recheck = True

    def _account(
        self,
        record: SliceRecord | None,
        name: str,
        by_class: list[tuple[int, Reading]],
        now: float,
        periods: PeriodFn,
        restarted: bool,
        previous: float | None,
    ) -> SliceRecord:
        # The part of the time since the last reading that lies in this period; None when
        # all of it does (the common case: no rollover since the last reading).
        share: tuple[float, float] | None = None
        # Records are made with their constructors, not replaced field by field: at 10,000
        # slices sending, dataclasses.replace() took more than half of the ledger's tick.
        if record is None:
            start, end = periods(name, None)
            notified = False
            classes = [_NO_USAGE] * len(DCLASSES)
        else:
            start, end = periods(name, record.period_start)
            notified = record.notified
            classes = list(record.classes)
            if start != record.period_start:
                # Bytes since the last reading were sent partly before the new period began;
                # without a finer clock, assume a steady rate and charge the new period only
                # its part of the gap.
                # A live slice was last read at the previous update, whether or not its
                # record changed then.
                read = previous if record.live and previous is not None else record.read_at
                if read is not None and read < start <= now:
                    share = (now - start, now - read)
                classes = [ClassRecord(0, 0, c.last, False, c.ceil_bps) for c in classes]
                notified = False
        for dclass, reading in by_class:
            old = classes[dclass]
            if not restarted and old.last == reading:
                # Nothing sent: the class's record stays, the same object (at 10,000 slices
                # sending in one class only, 10,000 fewer made and kept a tick).
                continue
            # A tuple is kept as it is (immutable); a list is copied.
            current = reading if isinstance(reading, tuple) else (reading[0], reading[1])
            base = (0, 0) if restarted else old.last
            grown = (0, 0) if base is None else delta(base, current)
            if share is None:
                used_bytes, used_packets = old.used_bytes + grown[0], old.used_packets + grown[1]
            else:
                used_bytes = old.used_bytes + _part(grown[0], share)
                used_packets = old.used_packets + _part(grown[1], share)
            classes[dclass] = ClassRecord(
                used_bytes, used_packets, current, old.capped, old.ceil_bps
            )
        return SliceRecord(name, start, end, True, notified, now, tuple(classes))

    # -- what the daemon reads and records --------------------------------------------

    def slices(self, include_dead: bool = False) -> tuple[str, ...]:
        """Names of the slices in the last readings (and the dead ones still remembered)."""
        return tuple(sorted(n for n, r in self._slices.items() if include_dead or r.live))

    def records(self) -> dict[str, SliceRecord]:
        """Every slice's record, as of now: a copy, which later updates do not change."""
        return dict(self._slices)

    def live_records(self) -> Mapping[str, SliceRecord]:
        """Every slice's record, read-only, following the ledger: a lookup finds the record
        of the last update that touched the slice. Holds no record the ledger let go of
        (unlike ``records``); safe to look up from another thread, whose lookups see each
        record whole (records are replaced, never changed)."""
        return MappingProxyType(self._slices)

    def get(self, name: str) -> SliceRecord | None:
        """A slice's record (immutable), or None if the ledger does not know it."""
        return self._slices.get(name)

    def usage(self, name: str, dclass: int) -> int:
        """Bytes the class sent this period; 0 for a slice the ledger does not know."""
        record = self._slices.get(name)
        return 0 if record is None else record.classes[_dclass(dclass)].used_bytes

    def last_read_at(self) -> float | None:
        """The latest time any counter was accounted at: the accounting clock never starts
        before it (clock.AccountingClock)."""
        if self.read_at is not None:
            return self.read_at
        times = [r.read_at for r in self._slices.values() if r.read_at is not None]
        return max(times) if times else None

    def period(self, name: str) -> tuple[float, float]:
        """``(period_start, period_end)`` of a known slice; KeyError otherwise."""
        record = self._slices[name]
        return record.period_start, record.period_end

    def set_ceiling(self, name: str, dclass: int, ceil_bps: int, capped: bool) -> None:
        """Record the ceiling now in force for a class, and whether the quota capped it."""
        if isinstance(ceil_bps, bool) or not isinstance(ceil_bps, int) or ceil_bps < 1:
            raise ValueError(f"ceil_bps must be a positive integer, not {ceil_bps!r}")
        r = self._slices[name]
        classes = list(r.classes)
        c = classes[_dclass(dclass)]
        classes[dclass] = ClassRecord(c.used_bytes, c.used_packets, c.last, capped, ceil_bps)
        self._slices[name] = SliceRecord(
            r.name, r.period_start, r.period_end, r.live, r.notified, r.read_at, tuple(classes)
        )
        self._dirty.add(name)

    def set_notified(self, name: str, notified: bool = True) -> None:
        """Record that the slice was mailed this period (cleared when the period rolls)."""
        self._slices[name] = self._slices[name]._replace(notified=notified)
        self._dirty.add(name)

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict; ``from_dict`` reads it back."""
        return {
            **self.top_dict(),
            "slices": dict(self.slice_dicts()),
        }

    def slice_dicts(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each slice as ``to_dict`` writes it, by name, made one at a time."""
        for name, record in sorted(self._slices.items()):
            yield name, _slice_dict(record)

    def slice_lines(self) -> Iterator[str]:
        """Each slice as the member ``"name":{...}`` of the ``slices`` object of
        ``to_dict``, in compact JSON with sorted keys (``slice_json``), by name."""
        for name, record in sorted(self._slices.items()):
            yield f"{encode_json_string(name)}:{slice_json(record)}"

    def top_dict(self) -> dict[str, Any]:
        """The ledger's own fields, without the slices (a journal entry carries them)."""
        return {
            "counters_generation": self.counters_generation,
            "read_at": self.read_at,
            "uncounted_bytes": self.uncounted_bytes,
        }

    def pending(self) -> int:
        """How many slices changed (or were forgotten) since the last ``changes``."""
        return len(self._dirty)

    def changes(self, dicts: bool = True) -> tuple[dict[str, Any], list[str]]:
        """What changed since the last call (or since the ledger was made or loaded): the
        changed slices as ``to_dict`` writes them (without ``dicts``: None for each, when
        only the names are wanted), and the names of slices forgotten. What a journal
        entry records (state.StateFile)."""
        dirty, self._dirty = self._dirty, set()
        changed = {
            n: _slice_dict(self._slices[n]) if dicts else None
            for n in sorted(dirty)
            if n in self._slices
        }
        return changed, sorted(n for n in dirty if n not in self._slices)

    def unsaved(self, names: Iterable[str]) -> None:
        """These slices' changes did not reach the disk: ``changes`` returns them again."""
        self._dirty.update(names)

    @classmethod
    def from_dict(
        cls, data: object, now: float | None = None, saved_at: float | None = None
    ) -> Ledger:
        """Rebuild a ledger from ``to_dict()`` output; ValueError naming the bad key.

        Values are bounded as config values are: counts 0..2**63-1; times finite and, when
        ``now`` is known, within [2000-01-01, now + 400 days]; a period ends after it starts
        and, when ``saved_at`` (when the ledger was written) is known, at most
        ``PERIODS_AHEAD`` period lengths after it. (After ``saved_at``, not ``now``: a clock
        set back must not throw the period away.) A state file claiming more (1e30 bytes
        used, a period ending in the year 10**292) would otherwise cap a slice for the rest
        of its period.
        """
        if not isinstance(data, dict):
            raise ValueError(f"ledger: must be an object, not {_kind(data)}")
        if "slices" not in data:
            raise ValueError("ledger: missing slices")
        ledger = cls()
        ledger.apply(
            {k: v for k, v in data.items() if k != "slices"},
            data.get("slices"),
            [],
            now=now,
            saved_at=saved_at,
            where="ledger",
        )
        if "read_at" not in data or data["read_at"] is None:
            # A file from before the field: every live slice was read at the latest time.
            ledger.read_at = ledger.last_read_at()
        ledger._dirty = set()
        return ledger

    def apply(
        self,
        top: object,
        slices: object,
        gone: object,
        *,
        now: float | None = None,
        saved_at: float | None = None,
        where: str = "ledger",
    ) -> None:
        """Apply a journal entry (or a whole ledger): the ledger's own fields, slices as
        ``to_dict`` writes them, and forgotten names; ValueError naming the bad key, with
        nothing changed then. Values are checked as ``from_dict`` says."""
        # counters_generation, read_at and uncounted_bytes came later: a ledger without
        # them is still read.
        if isinstance(top, dict):
            top = {"counters_generation": None, "read_at": None, "uncounted_bytes": 0, **top}
        t = _table(top, where, {"counters_generation", "read_at", "uncounted_bytes"})
        generation = t["counters_generation"]
        if generation is not None and not isinstance(generation, str):
            raise ValueError(
                f"{where}.counters_generation: must be a string, not {_kind(generation)}"
            )
        uncounted = _int(t["uncounted_bytes"], f"{where}.uncounted_bytes")
        read_at = t["read_at"]
        read_at = None if read_at is None else _time(read_at, f"{where}.read_at", now)
        if not isinstance(slices, dict):
            raise ValueError(f"{where}.slices: must be an object, not {_kind(slices)}")
        if not isinstance(gone, list) or not all(isinstance(n, str) for n in gone):
            raise ValueError(f"{where}.gone: must be a list of slice names")
        records = {
            name: _slice_record(name, raw, f"{where}.slices.{name!r}", now, saved_at)
            for name, raw in slices.items()
        }
        self.counters_generation = generation
        self.uncounted_bytes = uncounted
        if read_at is not None:
            self.read_at = read_at
        self._slices.update(records)
        for name in gone:
            self._slices.pop(name, None)
        self._dirty.update(records, gone)


def _slice_dict(r: SliceRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "period_start": r.period_start,
        "period_end": r.period_end,
        "live": r.live,
        "notified": r.notified,
        "read_at": r.read_at,
    }
    for dname, c in zip(DCLASSES, r.classes, strict=True):
        out[dname] = {
            "used_bytes": c.used_bytes,
            "used_packets": c.used_packets,
            "last": None if c.last is None else list(c.last),
            "capped": c.capped,
            "ceil_bps": c.ceil_bps,
        }
    return out


# _slice_dict as JSON text, made directly (slice_json). Keys in sorted order, as
# json.dumps(sort_keys=True) writes them; the classes' keys are sorted as written here.
_CLASS_JSON = '{"capped":%s,"ceil_bps":%s,"last":%s,"used_bytes":%d,"used_packets":%d}'
_SLICE_FIELDS = ("period_start", "period_end", "live", "notified", "read_at", *DCLASSES)
_SLICE_ORDER = sorted(_SLICE_FIELDS)
_SLICE_JSON = "{" + ",".join(f"{encode_json_string(k)}:%s" for k in _SLICE_ORDER) + "}"
# From the order slice_json lists the values in to the sorted order of the keys.
_SORTED = operator.itemgetter(*(_SLICE_FIELDS.index(k) for k in _SLICE_ORDER))
_JSON_BOOL = {True: "true", False: "false"}
_FLOAT_REPR = float.__repr__


def slice_json(r: SliceRecord) -> str:
    """``_slice_dict(r)`` as compact JSON with sorted keys, the text json.dumps(...,
    sort_keys=True, separators=(",", ":"), allow_nan=False) makes of it, written without
    the dict: at 10,000 slices the dicts and json's encoder took 70 ms a snapshot, this
    28 ms. ValueError for a time that is not finite, as json says it."""
    return _SLICE_JSON % _SORTED(
        (
            _json_time(r.period_start),
            _json_time(r.period_end),
            _JSON_BOOL[r.live],
            _JSON_BOOL[r.notified],
            _json_time(r.read_at),
            *map(_class_json, r.classes),
        )
    )


def _class_json(c: ClassRecord) -> str:
    last, ceil = c.last, c.ceil_bps
    return _CLASS_JSON % (
        _JSON_BOOL[c.capped],
        "null" if ceil is None else f"{ceil:d}",
        "null" if last is None else f"[{last[0]:d},{last[1]:d}]",
        c.used_bytes,
        c.used_packets,
    )


def _json_time(seconds: float | None) -> str:
    if seconds is None:
        return "null"
    if not -math.inf < seconds < math.inf:  # NaN compares false too
        raise ValueError(f"Out of range float values are not JSON compliant: {seconds!r}")
    # json writes a float as its repr, an int as an int.
    return _FLOAT_REPR(seconds) if isinstance(seconds, float) else f"{seconds:d}"


def slice_record(name: str, raw: object) -> SliceRecord:
    """One slice of ``to_dict()['slices']`` as a record; ValueError naming what is wrong.
    (``from_dict`` also bounds the times by the clock; a reader of one slice cannot.)"""
    return _slice_record(name, raw, f"slices.{name}", None, None)


def _slice_record(
    name: object, raw: object, where: str, now: float | None, saved_at: float | None
) -> SliceRecord:
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ValueError(f"{where}: not a usable slice name")
    s = _table(
        raw,
        where,
        {"period_start", "period_end", "live", "notified", "read_at", *DCLASSES},
    )
    start = _time(s["period_start"], f"{where}.period_start", now)
    end = _time(s["period_end"], f"{where}.period_end", now)
    if not end > start:
        raise ValueError(f"{where}.period_end: {end} is not after period_start {start}")
    if saved_at is not None and end - saved_at > PERIODS_AHEAD * (end - start):
        raise ValueError(
            f"{where}.period_end: {end:.10g} is more than {PERIODS_AHEAD} periods"
            f" of {end - start:.10g} s after saved_at ({saved_at:.10g})"
        )
    read_at = s["read_at"]
    return SliceRecord(
        name=name,
        period_start=start,
        period_end=end,
        live=_bool(s["live"], f"{where}.live"),
        notified=_bool(s["notified"], f"{where}.notified"),
        read_at=None if read_at is None else _time(read_at, f"{where}.read_at", now),
        classes=tuple(_class_record(s[d], f"{where}.{d}") for d in DCLASSES),
    )


def _by_class(by_class: Mapping[int, Reading] | Sequence[Reading]) -> list[tuple[int, Reading]]:
    if isinstance(by_class, Mapping):
        return list(by_class.items())
    return list(enumerate(by_class))


def _check_reading(name: object, dclass: object, reading: object) -> None:
    # The common case first, in a few operations: 20,000 readings a tick at 10,000 slices.
    if (
        type(name) is str
        and type(dclass) is int
        and 0 <= dclass < len(DCLASSES)
        and isinstance(reading, tuple)
        and len(reading) == 2
    ):
        b, p = reading
        if type(b) is int and type(p) is int and b >= 0 and p >= 0:
            return
    if not isinstance(name, str):
        raise ValueError(f"slice names are strings, not {name!r}")
    if isinstance(dclass, bool) or not isinstance(dclass, int):
        raise ValueError(f"{name}: dclass must be an int, not {dclass!r}")
    _dclass(dclass)
    if (
        not isinstance(reading, tuple | list)
        or len(reading) != 2
        or not all(_count(v) for v in reading)
    ):
        raise ValueError(f"{name}/{dclass}: a reading is (bytes, packets) >= 0, not {reading!r}")


def _part(count: int, share: tuple[float, float]) -> int:
    # Stay in integers when nothing is split: counters can exceed a float's 53 bits.
    part, whole = share
    return count if part >= whole else int(count * part / whole)


def _dclass(dclass: int) -> int:
    if not 0 <= dclass < len(DCLASSES):
        raise ValueError(f"dclass must be 0..{len(DCLASSES) - 1}, not {dclass!r}")
    return dclass


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _table(value: object, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be an object, not {_kind(value)}")
    missing = sorted(keys - set(value))
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(str(k) for k in set(value) - keys)
    if unknown:
        raise ValueError(f"{where}: unknown key {', '.join(unknown)}")
    return value


def _time(value: object, where: str, now: float | None = None) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        seconds = float(value)  # OverflowError for an int beyond a float's range
    except (TypeError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ValueError(f"{where}: must be a finite number of seconds, not {_brief(value)}")
    check_time_bounds(seconds, where, now)
    return seconds


def check_time_bounds(seconds: float, where: str, now: float | None) -> None:
    """A time read back from disk: after 2000-01-01 and at most 400 days after ``now``
    (when known), else ValueError naming ``where``."""
    if now is not None and not EARLIEST_TIME <= seconds <= now + FUTURE_SLACK_S:
        raise ValueError(
            f"{where}: {seconds:.10g} is not between 2000-01-01 and 400 days from now ({now:.0f})"
        )


def _brief(value: object) -> str:
    """``repr(value)``, cut short for a message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: must be true or false, not {value!r}")
    return value


def _int(value: object, where: str) -> int:
    if not _count(value):
        raise ValueError(f"{where}: must be an integer >= 0, not {_brief(value)}")
    assert isinstance(value, int)
    if value > MAX_COUNT:
        raise ValueError(f"{where}: {value:.3g} is more than 2**63-1")
    return value


def _class_record(value: object, where: str) -> ClassRecord:
    c = _table(value, where, {"used_bytes", "used_packets", "last", "capped", "ceil_bps"})
    last = c["last"]
    if last is not None and not (isinstance(last, list) and len(last) == 2):
        raise ValueError(f"{where}.last: must be [bytes, packets] or null, not {last!r}")
    ceil = c["ceil_bps"]
    if ceil is not None and _int(ceil, f"{where}.ceil_bps") < 1:
        raise ValueError(f"{where}.ceil_bps: must be at least 1, not {ceil}")
    return ClassRecord(
        used_bytes=_int(c["used_bytes"], f"{where}.used_bytes"),
        used_packets=_int(c["used_packets"], f"{where}.used_packets"),
        last=None
        if last is None
        else (_int(last[0], f"{where}.last[0]"), _int(last[1], f"{where}.last[1]")),
        capped=_bool(c["capped"], f"{where}.capped"),
        ceil_bps=ceil,
    )
