"""Accounting periods: where the one containing ``now`` starts and ends, in epoch seconds.

Two families, both pure functions of the configured ``Period``, ``now`` and the period start
the ledger recorded for a slice:

``rolling``
    Back-to-back periods of ``period.seconds`` anchored at the slice's recorded start (a new
    slice starts its first period at ``now``). When ``now`` has passed the end, the period
    rolls forward by as many *whole* periods as have gone by, so a daemon that was down for
    three days lands in the period the slice would be in had it never stopped, without
    replaying the ones in between.

``daily`` / ``weekly`` / ``monthly``
    Calendar periods that start at ``at_minutes`` after local midnight in
    ``period.timezone``: every day, every ``weekday`` (0 = Monday) or every month on ``day``
    (1..28, so that every month has one). Boundaries are computed from local wall-clock
    dates with :mod:`zoneinfo`, so a day is 23 or 25 hours long across a DST change. A
    boundary that falls in a skipped hour happens as if the clock had not jumped (02:30 on
    the night the clocks go from 02:00 to 03:00 is 03:30 new time); a boundary in a repeated
    hour happens at its first occurrence (PEP 495 ``fold=0``).

The wall clock going backwards (NTP stepping it, an operator fixing it) never produces
negative elapsed time. If ``now`` is before the recorded start by at most one period
length, the recorded period is kept unchanged: ``now - period_start`` is negative and the
policy treats the elapsed time as 0 (see ``policy.decide``); usage is not reset, so a step
back over a boundary cannot hand out a fresh quota. If ``now`` is before the recorded start
by more than a whole period, the recorded start came from a clock that was wrong (a bad RTC
at boot) and keeping it would freeze the slice in one period until the clock caught up: the
record is discarded and the period containing ``now`` is returned (rolling: one starting at
``now``).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bwbpf.model import Period

CALENDAR_KINDS = ("daily", "weekly", "monthly")


def current_period(period: Period, now: float, start: float | None) -> tuple[float, float]:
    """``(period_start, period_end)`` of the period containing ``now``, in epoch seconds.

    ``start`` is the period start the ledger recorded for the slice, or None for a slice
    seen for the first time. ``period_start <= now < period_end`` holds except after the
    clock went back by less than a period, when the recorded period is returned as it was.
    """
    if not math.isfinite(now) or (start is not None and not math.isfinite(start)):
        raise ValueError(f"times must be finite, not now={now!r} start={start!r}")
    if period.kind == "rolling":
        return _rolling(period.seconds, now, start)
    if period.kind in CALENDAR_KINDS:
        return _calendar_kept(period, now, start)
    raise ValueError(f"unknown period kind {period.kind!r}")


def _rolling(seconds: int, now: float, start: float | None) -> tuple[float, float]:
    if seconds < 1:
        raise ValueError(f"a rolling period must be at least 1 s, not {seconds}")
    if start is None or now < start - seconds:
        return now, now + seconds
    if now < start:
        return start, start + seconds
    # Skip whole periods at once: the slice's phase is kept (its periods still begin at the
    # same time of day for a 1d period) however long the daemon was away.
    whole = math.floor((now - start) / seconds)
    begin = start + whole * seconds
    # Float rounding can leave ``now`` a hair outside [begin, begin + seconds).
    while begin + seconds <= now:
        begin += seconds
    while begin > now:
        begin -= seconds
    return begin, begin + seconds


def _calendar_kept(period: Period, now: float, start: float | None) -> tuple[float, float]:
    tz = _zone(period.timezone)
    if start is not None and now < start:
        recorded = _calendar(period, tz, start)
        if now >= recorded[0] - (recorded[1] - recorded[0]):
            return recorded
    return _calendar(period, tz, now)


def _calendar(period: Period, tz: ZoneInfo, now: float) -> tuple[float, float]:
    if period.kind == "monthly" and not 1 <= period.day <= 28:
        raise ValueError(f"a monthly period starts on day 1..28, not {period.day}")
    if period.kind == "weekly" and not 0 <= period.weekday <= 6:
        raise ValueError(f"weekday must be 0 (Monday)..6, not {period.weekday}")
    if not 0 <= period.at_minutes < 24 * 60:
        raise ValueError(f"at_minutes must be 0..1439, not {period.at_minutes}")
    first = _anchor(period, datetime.fromtimestamp(now, tz).date())
    # The loops settle the rare boundary that a DST shift moves across local midnight.
    while _boundary(period, tz, first) > now:
        first = _step(period, first, -1)
    after = _step(period, first, 1)
    while _boundary(period, tz, after) <= now:
        first, after = after, _step(period, after, 1)
    return _boundary(period, tz, first), _boundary(period, tz, after)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _boundary(period: Period, tz: ZoneInfo, day: date) -> float:
    """The epoch time at which a period starting on local date ``day`` begins."""
    hour, minute = divmod(period.at_minutes, 60)
    # fold=0: first occurrence of a repeated time; a skipped time uses the offset before
    # the jump (PEP 495), i.e. it lands just after the gap.
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz, fold=0).timestamp()


def _anchor(period: Period, day: date) -> date:
    """The latest period-start date on or before local date ``day``."""
    if period.kind == "daily":
        return day
    if period.kind == "weekly":
        return day - timedelta(days=(day.weekday() - period.weekday) % 7)
    if day.day >= period.day:
        return day.replace(day=period.day)
    return _step(period, day.replace(day=period.day), -1)


def _step(period: Period, day: date, n: int) -> date:
    """The period-start date ``n`` periods after (or before) ``day``."""
    if period.kind == "daily":
        return day + timedelta(days=n)
    if period.kind == "weekly":
        return day + timedelta(days=7 * n)
    months = day.year * 12 + day.month - 1 + n
    return date(months // 12, months % 12 + 1, period.day)
