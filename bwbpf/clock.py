"""The daemon's accounting clock: wall time that only moves as elapsed time does.

Quotas are per period of the calendar, so accounting needs wall time; but the wall clock
jumps (an operator's `date -s`, NTP stepping a clock that was wrong, a bad RTC at boot),
and a ledger that followed it would hand out quota nobody earned: forward 40 days, then
back, and the slice's period had rolled twice, its usage forgotten. So the daemon reads
the wall clock once, at start, and from then on adds elapsed time from the boot-time clock
(CLOCK_BOOTTIME: steady, never stepped, and unlike CLOCK_MONOTONIC it counts a suspend,
which the calendar does too).

* At start the clock never goes behind the latest time the ledger already accounted (the
  ``floor``): a clock set back across a restart cannot reopen a period or un-age one.
* While running, a wall clock that differs from the accounting clock by more than
  ``tolerance_s`` is a *jump*: it is reported (``offset_s``), never followed. Smaller
  differences are the clock being disciplined (NTP) and are followed, so the two agree
  within a few seconds on a healthy machine.
* A restart takes the wall clock as it is then (if it is not behind the floor): that is how
  an operator accepts a corrected clock.

Pure apart from the two clocks it is given, which tests replace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class AccountingClock:
    """``start(floor)`` once, then ``now()`` every tick."""

    def __init__(
        self,
        wall: Clock = time.time,
        elapsed: Clock = _boottime,
        tolerance_s: float = 5.0,
    ) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self.tolerance_s = tolerance_s
        self._base: float | None = None  # accounting time at elapsed == _base_elapsed
        self._base_elapsed = 0.0
        # wall − accounting time at the last reading, when that is a jump; else 0.
        self.offset_s = 0.0
        # Why the start did not take the wall clock, if it did not.
        self.start_note: str | None = None

    def start(self, floor: float | None = None) -> float:
        """Anchor the clock at the wall time, but never before ``floor`` (the latest time
        already accounted, from the state file)."""
        wall = self._wall()
        if not math.isfinite(wall):
            raise ValueError(f"the wall clock reads {wall!r}")
        begin = wall
        self.start_note = None
        if floor is not None and math.isfinite(floor) and floor > wall:
            begin = floor
            self.start_note = (
                f"the wall clock is {_span(floor - wall)} behind the time already accounted;"
                " accounting goes on from that time and gains only elapsed time"
            )
        self._base = begin
        self._base_elapsed = self._elapsed()
        self.offset_s = wall - begin
        return begin

    def now(self) -> float:
        """The accounting time: the start plus elapsed time, following the wall clock's
        small corrections but none of its jumps."""
        if self._base is None:
            return self.start()
        elapsed = self._elapsed()
        current = self._base + (elapsed - self._base_elapsed)
        wall = self._wall()
        offset = wall - current if math.isfinite(wall) else math.inf
        if abs(offset) <= self.tolerance_s:
            # A disciplined clock: follow it (re-anchor), so that the two never drift apart.
            # Never backwards, though: a tick's time is never before the previous one's.
            if wall >= current:
                self._base, self._base_elapsed = wall, elapsed
                current = wall
            self.offset_s = 0.0
        else:
            self.offset_s = offset
        return current

    @property
    def started(self) -> bool:
        return self._base is not None

    @property
    def jumped(self) -> bool:
        """Whether the wall clock is away from the accounting clock by a jump now."""
        return abs(self.offset_s) > self.tolerance_s


def _span(seconds: float) -> str:
    """A short human duration: ``40d 0h``, ``3h 12m``, ``42 s``."""
    s = abs(seconds)
    if s >= 86400:
        return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"
    if s >= 3600:
        return f"{int(s // 3600)}h {int(s % 3600 // 60)}m"
    return f"{s:.0f} s"


def describe_offset(offset_s: float) -> str:
    """One line for the log and ``stat`` about a wall clock jump."""
    way = "ahead of" if offset_s > 0 else "behind"
    return (
        f"the wall clock jumped: it is {_span(offset_s)} {way} the accounting clock;"
        " accounting follows elapsed time, not the jump (restart the daemon to accept the"
        " wall clock if it is right)"
    )
