"""What `bwbpf stat` shows of one class: the ledger's usage plus what the kernel counted
since, and the limit and threshold the policy itself works with."""

from __future__ import annotations

from bwbpf import metrics, policy, report
from bwbpf.config import ClassQuota
from bwbpf.datapath import Usage

DAY = (1_700_000_000.0, 1_700_086_400.0)
QUOTA = ClassQuota(
    limit_bytes=10_000_000,
    threshold_bytes=8_000_000,
    min_rate_bps=8,
    max_rate_bps=100_000_000,
    avg_rate_bps=400,  # 400 bit/s over a day: a budget of 4,320,000 bytes
)


def test_usage_is_the_saved_one_plus_what_the_kernel_counted_since() -> None:
    saved = {"bytes": 5_000, "counter_bytes": 7_000, "capped": True}
    c = report.class_view("smooth", QUOTA, Usage(9_500, 12), saved, DAY, 64_000, "1:4005")
    assert (c["bytes"], c["counter_bytes"], c["packets"]) == (7_500, 9_500, 12)
    assert c["capped"] and c["ceil_bps"] == 64_000 and c["classid"] == "1:4005"
    # Counters that went backwards (recreated): nothing counted since, never negative.
    assert report.class_view("smooth", QUOTA, Usage(10, 1), saved, DAY, None, "x")["bytes"] == 5_000
    # Without daemon state: the counter's total, not capped.
    alone = report.class_view("smooth", QUOTA, Usage(9_500, 12), None, DAY, None, "x")
    assert (alone["bytes"], alone["capped"]) == (9_500, False)


def test_limit_and_threshold_are_the_policys() -> None:
    smooth = report.class_view("smooth", QUOTA, Usage(1_000_000, 1), None, DAY, None, "x")
    assert (smooth["limit_bytes"], smooth["threshold_bytes"]) == (10_000_000, 8_000_000)
    assert smooth["percent_used"] == 10.0
    # Under average the budget follows the period's length, and the ceiling drops at the
    # budget itself: that is the threshold too, as in the metrics.
    average = report.class_view("average", QUOTA, Usage(1_080_000, 1), None, DAY, None, "x")
    assert average["limit_bytes"] == average["threshold_bytes"] == 4_320_000
    assert average["percent_used"] == 25.0
    assert average["limit_bytes"] == policy.byte_limit(QUOTA, "average", *DAY)
    assert policy.threshold_bytes(QUOTA, "smooth", *DAY) == QUOTA.threshold_bytes


def test_stat_and_the_metrics_agree_on_limit_and_threshold() -> None:
    from bwbpf.ledger import ClassRecord, SliceRecord

    record = SliceRecord("a", *DAY, True, False, DAY[0], (ClassRecord(), ClassRecord()))
    for name in policy.POLICIES:
        view = report.class_view(name, QUOTA, Usage(0, 0), None, DAY, None, "x")
        decided = {d: policy.decide(QUOTA, name, 0, *DAY, DAY[0]) for d in (0, 1)}
        cfg = type("Cfg", (), {"policy": name})()
        s = type("S", (), {"name": "a", "quota": lambda self, d: QUOTA})()
        sample = metrics.slice_samples(cfg, s, record, decided)[0]  # type: ignore[arg-type]
        assert (sample.limit_bytes, sample.threshold_bytes) == (
            view["limit_bytes"],
            view["threshold_bytes"],
        ), name
