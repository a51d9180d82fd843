"""Period arithmetic: rolling periods, calendar periods across DST, clock jumps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from bwbpf.config import Period
from bwbpf.periods import current_period

DAY = 86400
HOUR = 3600


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


ROLLING_DAY = Period("rolling", DAY)


@pytest.mark.parametrize(
    ("period", "now", "start", "expected"),
    [
        pytest.param(ROLLING_DAY, 1000.0, None, (1000.0, 1000.0 + DAY), id="new-slice"),
        pytest.param(ROLLING_DAY, 5000.0, 1000.0, (1000.0, 1000.0 + DAY), id="inside"),
        pytest.param(
            ROLLING_DAY, 1000.0 + DAY, 1000.0, (1000.0 + DAY, 1000.0 + 2 * DAY), id="exactly-at-end"
        ),
        pytest.param(
            ROLLING_DAY,
            1000.0 + 3 * DAY + 500,
            1000.0,
            (1000.0 + 3 * DAY, 1000.0 + 4 * DAY),
            id="daemon-down-3-days-skips-whole-periods",
        ),
        pytest.param(
            ROLLING_DAY,
            1000.25 + 2 * DAY,
            1000.25,
            (1000.25 + 2 * DAY, 1000.25 + 3 * DAY),
            id="fractional-start-keeps-phase",
        ),
        pytest.param(
            ROLLING_DAY, 99000.0, 100000.0, (100000.0, 100000.0 + DAY), id="clock-back-keeps-period"
        ),
        pytest.param(
            ROLLING_DAY,
            100000.0 - DAY,
            100000.0,
            (100000.0, 100000.0 + DAY),
            id="clock-back-one-whole-period-keeps-period",
        ),
        pytest.param(
            ROLLING_DAY,
            100000.0 - DAY - 1,
            100000.0,
            (100000.0 - DAY - 1, 100000.0 - 1),
            id="clock-back-beyond-a-period-restarts-at-now",
        ),
        pytest.param(
            Period("rolling", 3600),
            1000.0 + 7200 + 5,
            1000.0,
            (8200.0, 11800.0),
            id="length-reconfigured-keeps-anchor",
        ),
        pytest.param(Period("rolling", 10), 35.0, 0.0, (30.0, 40.0), id="short-period"),
    ],
)
def test_rolling(
    period: Period, now: float, start: float | None, expected: tuple[float, float]
) -> None:
    assert current_period(period, now, start) == expected


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        pytest.param(
            Period("daily"), utc(2024, 1, 5, 12), (utc(2024, 1, 5), utc(2024, 1, 6)), id="daily"
        ),
        pytest.param(
            Period("daily", at_minutes=6 * 60 + 30),
            utc(2024, 1, 5, 6, 29, 59),
            (utc(2024, 1, 4, 6, 30), utc(2024, 1, 5, 6, 30)),
            id="daily-before-today's-boundary",
        ),
        pytest.param(
            Period("daily", at_minutes=6 * 60 + 30),
            utc(2024, 1, 5, 6, 30),
            (utc(2024, 1, 5, 6, 30), utc(2024, 1, 6, 6, 30)),
            id="daily-exactly-at-boundary",
        ),
        pytest.param(
            Period("daily", at_minutes=30, timezone="Asia/Kolkata"),
            utc(2024, 1, 5, 12),
            (utc(2024, 1, 4, 19), utc(2024, 1, 5, 19)),
            id="daily-half-hour-offset-zone",
        ),
        pytest.param(
            Period("daily", timezone="Europe/Berlin"),
            utc(2024, 3, 31, 12),
            (utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)),
            id="daily-spring-forward-23h",
        ),
        pytest.param(
            Period("daily", timezone="Europe/Berlin"),
            utc(2024, 10, 27, 12),
            (utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
            id="daily-fall-back-25h",
        ),
        pytest.param(
            Period("daily", at_minutes=2 * 60 + 30, timezone="America/New_York"),
            utc(2024, 3, 10, 12),
            # 02:30 does not exist that night: the boundary is 03:30 EDT (07:30 UTC).
            (utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6, 30)),
            id="daily-boundary-in-skipped-hour",
        ),
        pytest.param(
            Period("daily", at_minutes=1 * 60 + 30, timezone="America/New_York"),
            utc(2024, 11, 3, 12),
            # 01:30 happens twice: the first one (EDT, 05:30 UTC) starts the period.
            (utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)),
            id="daily-boundary-in-repeated-hour",
        ),
        pytest.param(
            Period("weekly", weekday=0, at_minutes=9 * 60),
            utc(2024, 1, 10),  # a Wednesday
            (utc(2024, 1, 8, 9), utc(2024, 1, 15, 9)),
            id="weekly-midweek",
        ),
        pytest.param(
            Period("weekly", weekday=0, at_minutes=9 * 60),
            utc(2024, 1, 8, 8, 59),  # Monday, a minute before the boundary
            (utc(2024, 1, 1, 9), utc(2024, 1, 8, 9)),
            id="weekly-monday-before-boundary",
        ),
        pytest.param(
            Period("weekly", weekday=6, timezone="Asia/Tokyo"),
            utc(2024, 1, 10),  # Wednesday 09:00 in Tokyo
            (utc(2024, 1, 6, 15), utc(2024, 1, 13, 15)),
            id="weekly-sunday-tokyo",
        ),
        pytest.param(
            Period("monthly", day=15, timezone="Europe/Berlin"),
            utc(2024, 1, 10),
            (utc(2023, 12, 14, 23), utc(2024, 1, 14, 23)),
            id="monthly-across-new-year",
        ),
        pytest.param(
            Period("monthly", day=1),
            utc(2024, 2, 29, 12),
            (utc(2024, 2, 1), utc(2024, 3, 1)),
            id="monthly-leap-february",
        ),
        pytest.param(
            Period("monthly", day=28, at_minutes=23 * 60 + 59),
            utc(2024, 12, 28, 23, 59),
            (utc(2024, 12, 28, 23, 59), utc(2025, 1, 28, 23, 59)),
            id="monthly-exactly-at-boundary",
        ),
        pytest.param(
            Period("monthly", day=1, timezone="Europe/Berlin"),
            utc(2024, 3, 15),
            (utc(2024, 2, 29, 23), utc(2024, 3, 31, 22)),
            id="monthly-across-dst",
        ),
    ],
)
def test_calendar(period: Period, now: float, expected: tuple[float, float]) -> None:
    assert current_period(period, now, None) == expected
    # A recorded start in the past does not matter: the calendar decides.
    assert current_period(period, now, now - 40 * DAY) == expected


@pytest.mark.parametrize(
    ("now", "start", "expected"),
    [
        pytest.param(
            utc(2024, 1, 1, 23, 59, 50),
            utc(2024, 1, 2),
            (utc(2024, 1, 2), utc(2024, 1, 3)),
            id="ten-seconds-back-over-boundary-keeps-period",
        ),
        pytest.param(
            utc(2024, 1, 1, 0, 0, 0),
            utc(2024, 1, 2),
            (utc(2024, 1, 2), utc(2024, 1, 3)),
            id="one-whole-period-back-keeps-period",
        ),
        pytest.param(
            utc(2023, 12, 31, 23, 59, 59),
            utc(2024, 1, 2),
            (utc(2023, 12, 31), utc(2024, 1, 1)),
            id="more-than-a-period-back-follows-the-clock",
        ),
    ],
)
def test_calendar_clock_back(now: float, start: float, expected: tuple[float, float]) -> None:
    assert current_period(Period("daily"), now, start) == expected


def test_daily_periods_tile_a_dst_year() -> None:
    """Every hour of 2024 in Berlin, at a boundary time that is skipped once and repeated
    once: periods contain now, are 23, 24 or 25 hours long and follow on without gaps."""
    period = Period("daily", at_minutes=2 * 60 + 30, timezone="Europe/Berlin")
    now = utc(2024, 1, 1)
    seen: dict[float, float] = {}
    lengths: set[float] = set()
    while now < utc(2025, 1, 1):
        start, end = current_period(period, now, None)
        assert start <= now < end
        seen[start] = end
        lengths.add(end - start)
        now += HOUR
    assert lengths == {23 * HOUR, 24 * HOUR, 25 * HOUR}
    starts = sorted(seen)
    assert len(starts) == 367  # 2024 is a leap year; plus the period begun on 2023-12-31
    for a, b in itertools.pairwise(starts):
        assert seen[a] == b


def test_rolling_lands_on_the_period_containing_now_after_a_long_outage() -> None:
    start = 1_700_000_000.0
    now = start + 365 * DAY + 0.5
    assert current_period(ROLLING_DAY, now, start) == (start + 365 * DAY, start + 366 * DAY)


def test_fixture_dates_are_what_they_claim() -> None:
    assert datetime(2024, 1, 10).weekday() == 2
    assert datetime(2024, 1, 8).weekday() == 0
    assert datetime(2024, 1, 7).weekday() == 6


@pytest.mark.parametrize(
    ("period", "now", "start", "message"),
    [
        pytest.param(Period("hourly"), 0.0, None, "unknown period kind", id="unknown-kind"),
        pytest.param(Period("rolling", 0), 0.0, None, "at least 1 s", id="zero-seconds"),
        pytest.param(
            Period("daily", timezone="Mars/Olympus"), 0.0, None, "unknown time zone", id="bad-zone"
        ),
        pytest.param(Period("monthly", day=31), 0.0, None, "day 1..28", id="day-31"),
        pytest.param(ROLLING_DAY, float("nan"), None, "finite", id="nan-now"),
        pytest.param(ROLLING_DAY, 0.0, float("inf"), "finite", id="infinite-start"),
    ],
)
def test_invalid(period: Period, now: float, start: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        current_period(period, now, start)
