"""bwbpf.clock: the accounting clock against a wall clock that jumps."""

from __future__ import annotations

import pytest

from bwbpf.clock import AccountingClock, describe_offset
from bwbpf.config import Period
from bwbpf.ledger import Ledger
from bwbpf.periods import current_period

DAY = 86400.0
T0 = 1_790_000_000.0


class FakeClocks:
    """A wall clock an operator can set, and a boot-time clock that only moves forward."""

    def __init__(self, wall: float = T0) -> None:
        self.wall = wall
        self.boot = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds

    def clock(self, tolerance_s: float = 5.0) -> AccountingClock:
        return AccountingClock(lambda: self.wall, lambda: self.boot, tolerance_s)


def test_follows_the_wall_clock_on_a_calm_day() -> None:
    c = FakeClocks()
    clock = c.clock()
    assert clock.start() == T0
    for _ in range(10):
        c.advance(10)
        assert clock.now() == c.wall
    assert not clock.jumped


@pytest.mark.parametrize(
    "jump_s",
    [
        pytest.param(40 * DAY, id="forward-40-days"),
        pytest.param(-40 * DAY, id="back-40-days"),
        pytest.param(3 * 3600, id="forward-3-hours"),
        pytest.param(-3 * 3600, id="back-3-hours"),
        pytest.param(14 * DAY, id="forward-2-weeks"),
        pytest.param(-6, id="back-just-over-tolerance"),
    ],
)
def test_a_jump_is_reported_not_followed(jump_s: float) -> None:
    c = FakeClocks()
    clock = c.clock()
    clock.start()
    c.advance(10)
    before = clock.now()
    c.wall += jump_s
    c.advance(10)
    assert clock.now() == before + 10  # elapsed time only
    assert clock.jumped and clock.offset_s == pytest.approx(jump_s)
    assert ("ahead of" if jump_s > 0 else "behind") in describe_offset(clock.offset_s)


def test_jump_and_back_again_is_as_if_nothing_happened() -> None:
    c = FakeClocks()
    clock = c.clock()
    clock.start()
    c.wall += 40 * DAY
    c.advance(10)
    clock.now()
    c.wall -= 40 * DAY
    c.advance(10)
    assert clock.now() == c.wall == T0 + 20
    assert not clock.jumped


def test_small_corrections_are_followed_forward_never_backward() -> None:
    c = FakeClocks()
    clock = c.clock()
    clock.start()
    c.wall += 2  # NTP steps it 2 s forward
    assert clock.now() == T0 + 2
    c.wall -= 3  # and 3 s back: the tick time stays where it was
    assert clock.now() == T0 + 2
    assert not clock.jumped


def test_a_start_behind_the_accounted_time_starts_from_it() -> None:
    c = FakeClocks()
    floor = T0 + 40 * DAY  # the state file was written while the clock was 40 days ahead
    clock = c.clock()
    assert clock.start(floor) == floor
    assert clock.start_note is not None and "40d 0h behind" in clock.start_note
    c.advance(60)
    assert clock.now() == floor + 60


def test_a_start_ahead_of_the_accounted_time_takes_the_wall_clock() -> None:
    # Downtime and a forward jump across a restart cannot be told apart: that is a restart
    # accepting the wall clock (documented).
    c = FakeClocks()
    clock = c.clock()
    assert clock.start(T0 - 3 * DAY) == T0
    assert clock.start_note is None


def test_infinite_wall_clock_is_refused() -> None:
    clock = AccountingClock(lambda: float("inf"), lambda: 0.0)
    with pytest.raises(ValueError, match="wall clock"):
        clock.start()


@pytest.mark.parametrize(
    "jumps",
    [
        pytest.param([40 * DAY, -40 * DAY], id="forward-then-back"),
        pytest.param([-40 * DAY, 40 * DAY], id="back-then-forward"),
        pytest.param([DAY / 2, -DAY / 2, DAY / 2], id="half-days-across-a-boundary"),
        pytest.param([7 * DAY], id="a-week-forward"),
        pytest.param([-7 * DAY], id="a-week-back"),
    ],
)
def test_ledger_on_the_accounting_clock_keeps_earned_usage(jumps: list[float]) -> None:
    """The end-to-end property: with the ledger fed by the accounting clock, no sequence of
    wall clock jumps within a period resets its usage or double-resets it."""
    c = FakeClocks()
    clock = c.clock()
    clock.start()
    period = Period("rolling", int(DAY))
    ledger = Ledger()

    def periods(_name: str, start: float | None) -> tuple[float, float]:
        return current_period(period, now, start)

    sent = 0
    now = clock.now()
    ledger.update(now, {"alice": {0: (0, 0), 1: (0, 0)}}, periods)
    for jump in jumps:
        c.wall += jump
        c.advance(60)
        sent += 1_000_000
        now = clock.now()
        ledger.update(now, {"alice": {0: (sent, sent // 1000), 1: (0, 0)}}, periods)
    assert ledger.usage("alice", 0) == sent
    start, end = ledger.period("alice")
    assert (start, end) == (T0, T0 + DAY)
