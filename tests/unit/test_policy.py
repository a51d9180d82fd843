"""The quota policies as tables: usage and time in, ceiling out."""

from __future__ import annotations

import pytest

from bwbpf.config import ClassQuota
from bwbpf.policy import Decision, byte_limit, decide, settled_bytes

HOUR = 3600
# A 1000 s period from 0 to 1000 keeps the arithmetic readable.
START, END = 0.0, 1000.0
MAX = 1_000_000
# limit 10 MB, threshold 8 MB, min 8 bit/s, max 1 Mbit/s, average 80 kbit/s (= 10 MB/1000 s)
Q = ClassQuota(
    limit_bytes=10_000_000,
    threshold_bytes=8_000_000,
    min_rate_bps=8,
    max_rate_bps=MAX,
    avg_rate_bps=80_000,
)
Q_MIN = ClassQuota(10_000_000, 8_000_000, 100_000, MAX, 80_000)
Q_AVG_ABOVE_MAX = ClassQuota(10_000_000, 8_000_000, 8, MAX, 2_000_000)
Q_THRESHOLD_IS_LIMIT = ClassQuota(10_000_000, 10_000_000, 8, MAX, 80_000)
Q_ZERO_MIN = ClassQuota(10_000_000, 8_000_000, 0, MAX, 80_000)


@pytest.mark.parametrize(
    ("quota", "used", "now", "ceil", "capped"),
    [
        pytest.param(Q, 0, 0.0, MAX, False, id="fresh"),
        pytest.param(Q, 7_999_999, 500.0, MAX, False, id="one-byte-below-threshold"),
        # (10 MB - 8 MB) × 8 / 500 s
        pytest.param(Q, 8_000_000, 500.0, 32_000, True, id="threshold-crossed-midway"),
        pytest.param(Q, 8_000_000, 0.0, 16_000, True, id="threshold-crossed-at-start"),
        # 16 Mbit over the last 10 s would be 1.6 Mbit/s: held at max, so not capped.
        pytest.param(Q, 8_000_000, 990.0, MAX, False, id="threshold-crossed-rate-above-max"),
        # 8 bit over 1000 s = 0.008 bit/s: never below min_rate.
        pytest.param(Q, 9_999_999, 0.0, 8, True, id="clamped-to-min"),
        pytest.param(Q_MIN, 9_000_000, 0.0, 100_000, True, id="clamped-to-configured-min"),
        pytest.param(Q, 10_000_000, 500.0, 8, True, id="limit-reached"),
        pytest.param(Q, 25_000_000, 500.0, 8, True, id="limit-passed"),
        pytest.param(Q_MIN, 25_000_000, 500.0, 100_000, True, id="limit-passed-min-rate"),
        pytest.param(Q_THRESHOLD_IS_LIMIT, 10_000_000, 0.0, 8, True, id="threshold-equals-limit"),
        pytest.param(Q_ZERO_MIN, 25_000_000, 500.0, 8, True, id="zero-min-floored-to-htb-min"),
        # 10 kB left: 80 kbit over the last 2 s.
        pytest.param(Q, 9_990_000, 998.0, 40_000, True, id="period-end-near"),
        # Half a second left counts as one second: no blow-up near the end.
        pytest.param(Q, 9_990_000, 999.5, 80_000, True, id="half-second-left-floored"),
        pytest.param(Q, 9_990_000, 1000.0, 80_000, True, id="exactly-at-period-end"),
        pytest.param(Q, 9_990_000, 1000.0 + 5 * HOUR, 80_000, True, id="clock-jumped-hours-ahead"),
        pytest.param(Q, 9_000_000, 1000.0 + 5 * HOUR, MAX, False, id="clock-ahead-rate-above-max"),
        # Before the period start: no time has elapsed, 8 Mbit over the full 1000 s.
        pytest.param(Q, 9_000_000, -5.0 * HOUR, 8_000, True, id="clock-jumped-hours-back"),
        pytest.param(Q, 9_000_000, 0.0, 8_000, True, id="same-as-at-start"),
    ],
)
def test_smooth(quota: ClassQuota, used: int, now: float, ceil: int, capped: bool) -> None:
    decision = decide(quota, "smooth", used, START, END, now)
    assert (decision.ceil_bps, decision.capped) == (ceil, capped)
    assert isinstance(decision.ceil_bps, int)


@pytest.mark.parametrize(
    ("quota", "used", "now", "ceil", "capped"),
    [
        pytest.param(Q, 0, 0.0, MAX, False, id="fresh"),
        # The threshold is not part of this policy.
        pytest.param(Q, 9_000_000, 500.0, MAX, False, id="past-threshold-still-max"),
        pytest.param(Q, 9_999_999, 500.0, MAX, False, id="one-byte-below-budget"),
        pytest.param(Q, 10_000_000, 500.0, 80_000, True, id="budget-reached"),
        # Average never drops to min_rate: it holds the average until the period ends.
        pytest.param(Q, 50_000_000, 500.0, 80_000, True, id="far-past-budget"),
        pytest.param(Q, 10_000_000, 999.5, 80_000, True, id="period-end-near"),
        pytest.param(Q, 10_000_000, 1000.0, 80_000, True, id="exactly-at-period-end"),
        pytest.param(Q, 10_000_000, 1000.0 + 5 * HOUR, 80_000, True, id="clock-jumped-ahead"),
        pytest.param(Q, 10_000_000, -5.0 * HOUR, 80_000, True, id="clock-jumped-back"),
        # Budget 250 MB; the average rate is above max_rate, so max it stays.
        pytest.param(Q_AVG_ABOVE_MAX, 300_000_000, 500.0, MAX, False, id="clamped-to-max"),
        pytest.param(Q_MIN, 10_000_000, 500.0, 100_000, True, id="clamped-to-min"),
    ],
)
def test_average(quota: ClassQuota, used: int, now: float, ceil: int, capped: bool) -> None:
    decision = decide(quota, "average", used, START, END, now)
    assert (decision.ceil_bps, decision.capped) == (ceil, capped)
    assert isinstance(decision.ceil_bps, int)


@pytest.mark.parametrize(
    ("policy", "used", "now", "expected"),
    [
        pytest.param(
            "smooth", 100, 0.0, Decision(MAX, False, "100 bytes, below the threshold"), id="below"
        ),
        pytest.param(
            "smooth",
            9_990_000,
            998.0,
            Decision(40_000, True, "threshold passed: 10000 bytes left for 2 s", moves=True),
            id="threshold",
        ),
        pytest.param(
            "smooth",
            10_000_000,
            0.0,
            Decision(8, True, "limit of 10000000 bytes passed"),
            id="limit",
        ),
        pytest.param(
            "average",
            5,
            0.0,
            Decision(MAX, False, "5 of 10000000 bytes at the average rate"),
            id="average-below",
        ),
        pytest.param(
            "average",
            10_000_000,
            0.0,
            Decision(80_000, True, "average budget of 10000000 bytes used up"),
            id="average-capped",
        ),
    ],
)
def test_reasons(policy: str, used: int, now: float, expected: Decision) -> None:
    assert decide(Q, policy, used, START, END, now) == expected


def test_reference_defaults_smooth() -> None:
    """The reference's daily 5.4 GB normal budget: 4.4 GB used with 6 hours left leaves
    1 GB for 21600 s, i.e. 370370 bit/s."""
    quota = ClassQuota(5_400_000_000, 4_320_000_000, 8, 100_000_000, 500_000)
    decision = decide(quota, "smooth", 4_400_000_000, 0.0, 86400.0, 86400.0 - 21600)
    reason = "threshold passed: 1000000000 bytes left for 21600 s"
    assert decision == Decision(370_370, True, reason, moves=True)


def test_only_the_smooth_ramp_moves_with_time() -> None:
    """What the daemon may skip at a tick when a class sent nothing: every decision but
    the smooth one between threshold and limit stays the same as time passes."""
    for policy, used in (("smooth", 0), ("smooth", 10_000_000), ("average", 10_000_000)):
        early, late = (decide(Q, policy, used, START, END, now) for now in (1.0, 900.0))
        assert early == late and not early.moves, (policy, used)
    early, late = (decide(Q, "smooth", 9_990_000, START, END, now) for now in (1.0, 900.0))
    assert early.moves and late.moves and early.ceil_bps < late.ceil_bps


Q_500K = ClassQuota(1, 1, 8, MAX, 500_000)


@pytest.mark.parametrize(
    ("quota", "policy", "start", "end", "expected"),
    [
        pytest.param(Q, "smooth", 0.0, 86400.0, 10_000_000, id="smooth-is-the-limit"),
        pytest.param(Q, "average", 0.0, 1000.0, 10_000_000, id="average-1000s"),
        # 500 kbit/s for a day: the reference's 5.4 GB.
        pytest.param(Q_500K, "average", 0.0, 86400.0, 5_400_000_000, id="average-day"),
        pytest.param(Q_500K, "average", 0.0, 25 * 3600.0, 5_625_000_000, id="average-25h-day"),
        pytest.param(
            Q_500K, "average", 0.1, 86400.1, 5_400_000_000, id="average-fractional-bounds"
        ),
    ],
)
def test_byte_limit(
    quota: ClassQuota, policy: str, start: float, end: float, expected: int
) -> None:
    assert byte_limit(quota, policy, start, end) == expected


@pytest.mark.parametrize(
    ("policy", "used", "start", "end", "message"),
    [
        pytest.param("greedy", 0, 0.0, 1.0, "unknown policy", id="unknown-policy"),
        pytest.param("smooth", -1, 0.0, 1.0, "must not be negative", id="negative-usage"),
        pytest.param("smooth", 0, 1.0, 1.0, "is not after", id="empty-period"),
        pytest.param("average", 0, 2.0, 1.0, "is not after", id="reversed-period"),
    ],
)
def test_invalid(policy: str, used: int, start: float, end: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(Q, policy, used, start, end, 0.0)


Q_THRESHOLD_ABOVE_LIMIT = ClassQuota(10_000_000, 12_000_000, 8, MAX, 80_000)


@pytest.mark.parametrize(
    ("quota", "policy", "expected"),
    [
        pytest.param(Q, "smooth", 10_000_000, id="smooth-limit"),
        pytest.param(Q_THRESHOLD_ABOVE_LIMIT, "smooth", 12_000_000, id="smooth-past-both"),
        pytest.param(Q, "average", 10_000_000, id="average-budget"),
        pytest.param(Q_AVG_ABOVE_MAX, "average", 250_000_000, id="average-budget-above"),
    ],
)
def test_settled_bytes(quota: ClassQuota, policy: str, expected: int) -> None:
    assert settled_bytes(quota, policy, START, END) == expected


@pytest.mark.parametrize("policy", ["smooth", "average"])
@pytest.mark.parametrize("quota", [Q, Q_MIN, Q_AVG_ABOVE_MAX, Q_THRESHOLD_ABOVE_LIMIT])
def test_a_settled_decision_holds_for_more_usage_at_any_time(
    quota: ClassQuota, policy: str
) -> None:
    """What DecisionCache relies on to keep a decision while the class keeps sending; one
    byte less is another decision."""
    used = settled_bytes(quota, policy, START, END)
    first = decide(quota, policy, used, START, END, 10.0)
    assert not first.moves
    assert decide(quota, policy, used - 1, START, END, 10.0) != first
    for more in (0, 1, 10**6, 10**12):
        for now in (-5.0 * HOUR, 0.0, 500.0, 999.5, 1000.0 + HOUR):
            assert decide(quota, policy, used + more, START, END, now) == first
