"""The ledger: counter deltas, restarts, periods, dead slices and its dict form."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from bwbpf.config import Period
from bwbpf.ledger import ClassRecord, Ledger, Reading, SliceRecord, _slice_dict, delta, slice_json
from bwbpf.periods import current_period

NORMAL, EXEMPT = 0, 1
DAY = 86400
P1000 = Period("rolling", 1000)


def tick(
    ledger: Ledger,
    now: float,
    readings: Mapping[str, Mapping[int, Reading]],
    period: Period = P1000,
) -> None:
    ledger.update(now, readings, lambda _name, start: current_period(period, now, start))


@pytest.mark.parametrize(
    ("last", "current", "expected"),
    [
        pytest.param((100, 10), (150, 13), (50, 3), id="grew"),
        pytest.param((100, 10), (100, 10), (0, 0), id="idle"),
        pytest.param((0, 0), (7, 1), (7, 1), id="from-zero"),
        pytest.param((5000, 50), (300, 3), (300, 3), id="restarted"),
        pytest.param((5000, 50), (6000, 3), (6000, 3), id="packets-back-means-restart"),
        pytest.param((5000, 50), (300, 60), (300, 60), id="bytes-back-means-restart"),
        pytest.param((5000, 50), (0, 0), (0, 0), id="restarted-idle"),
        pytest.param((2**64 - 10, 1), (2**64 - 1, 2), (9, 1), id="no-float-rounding"),
    ],
)
def test_delta(last: Reading, current: Reading, expected: Reading) -> None:
    assert delta(last, current) == expected


def test_first_reading_is_only_a_baseline() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (5000, 5), EXEMPT: (70, 1)}})
    assert (ledger.usage("alice", NORMAL), ledger.usage("alice", EXEMPT)) == (0, 0)
    tick(ledger, 10.0, {"alice": {NORMAL: (7000, 7), EXEMPT: (100, 2)}})
    assert (ledger.usage("alice", NORMAL), ledger.usage("alice", EXEMPT)) == (2000, 30)
    record = ledger.get("alice")
    assert record is not None
    assert record.classes[NORMAL] == ClassRecord(2000, 2, (7000, 7))
    assert record.classes[EXEMPT] == ClassRecord(30, 1, (100, 2))
    assert (record.period_start, record.period_end, record.read_at) == (0.0, 1000.0, 10.0)


def test_counter_going_back_is_a_restart_not_a_new_period() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (5000, 5)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (7000, 7)}})
    ledger.set_notified("alice")
    # The program was reloaded: the counter starts again from zero and is at 300.
    tick(ledger, 20.0, {"alice": {NORMAL: (300, 3)}})
    assert ledger.usage("alice", NORMAL) == 2300
    assert ledger.period("alice") == (0.0, 1000.0)
    record = ledger.get("alice")
    assert record is not None and record.notified
    tick(ledger, 30.0, {"alice": {NORMAL: (400, 4)}})
    assert ledger.usage("alice", NORMAL) == 2400


def test_reboot_with_saved_ledger_keeps_the_quota() -> None:
    """The reference reset a slice's quota on every reboot; this must not."""
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (1_000_000, 1000)}})
    tick(ledger, 100.0, {"alice": {NORMAL: (9_000_000, 9000)}})
    saved = ledger.to_dict()
    after_reboot = Ledger.from_dict(copy.deepcopy(saved))
    tick(after_reboot, 200.0, {"alice": {NORMAL: (50_000, 40)}})
    assert after_reboot.usage("alice", NORMAL) == 8_050_000
    assert after_reboot.period("alice") == (0.0, 1000.0)


def test_counters_restarted_counts_every_reading_from_zero() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (5000, 5)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (7000, 7)}})
    # Maps recreated, and the new counter already passed the old value: going backwards
    # cannot show it, the daemon has to say so.
    ledger.counters_restarted()
    tick(ledger, 20.0, {"alice": {NORMAL: (9000, 9)}, "bob": {EXEMPT: (400, 4)}})
    assert ledger.usage("alice", NORMAL) == 2000 + 9000
    assert ledger.usage("bob", EXEMPT) == 400
    # Only the next update is affected.
    tick(ledger, 30.0, {"alice": {NORMAL: (9500, 10)}, "bob": {EXEMPT: (500, 5)}})
    assert (ledger.usage("alice", NORMAL), ledger.usage("bob", EXEMPT)) == (11_500, 500)


def test_period_end_resets_usage_and_flags_but_keeps_ceilings() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0), EXEMPT: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (5000, 5), EXEMPT: (10, 1)}})
    ledger.set_ceiling("alice", NORMAL, 8000, True)
    ledger.set_notified("alice")
    # 100 000 bytes between t=10 and t=1010; the period turned at t=1000, so the new one
    # is charged its 10 s of the 1000 s gap.
    tick(ledger, 1010.0, {"alice": {NORMAL: (105_000, 105), EXEMPT: (10, 1)}})
    record = ledger.get("alice")
    assert record is not None
    assert (record.period_start, record.period_end) == (1000.0, 2000.0)
    assert not record.notified
    assert record.classes[NORMAL] == ClassRecord(1000, 1, (105_000, 105), False, 8000)
    assert record.classes[EXEMPT] == ClassRecord(0, 0, (10, 1), False, None)


def test_rollover_exactly_at_boundary_charges_the_old_period() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 1000.0, {"alice": {NORMAL: (5000, 5)}})
    assert ledger.period("alice") == (1000.0, 2000.0)
    assert ledger.usage("alice", NORMAL) == 0


def test_daemon_down_for_days_charges_only_the_new_periods_share() -> None:
    ledger = Ledger()
    day = Period("rolling", DAY)
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}}, day)
    # Down for three and a half days; 7 MB sent meanwhile. The slice is in its fourth
    # period, which began 43200 s ago: 43200/302400 of the gap, i.e. 1 MB, is charged.
    now = 3 * DAY + DAY / 2
    tick(ledger, now, {"alice": {NORMAL: (7_000_000, 7000)}}, day)
    assert ledger.period("alice") == (3 * DAY, 4 * DAY)
    assert ledger.usage("alice", NORMAL) == 1_000_000
    record = ledger.get("alice")
    assert record is not None and record.classes[NORMAL].used_packets == 1000


def test_period_length_reconfigured_keeps_usage() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (3000, 3)}})
    tick(ledger, 20.0, {"alice": {NORMAL: (4000, 4)}}, Period("rolling", 5000))
    assert ledger.period("alice") == (0.0, 5000.0)
    assert ledger.usage("alice", NORMAL) == 4000


def test_idle_slices_cost_nothing_and_are_not_changed() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}, "bob": {NORMAL: (0, 0)}})
    assert ledger.changed == {"alice", "bob"}
    tick(ledger, 10.0, {"alice": {NORMAL: (500, 1)}, "bob": {NORMAL: (0, 0)}})
    assert ledger.changed == {"alice"}
    idle = ledger.get("bob")
    tick(ledger, 20.0, {"alice": {NORMAL: (500, 1)}, "bob": {NORMAL: (0, 0)}})
    assert ledger.changed == set()
    assert ledger.get("bob") is idle  # not even rebuilt
    assert ledger.read_at == ledger.last_read_at() == 20.0


def test_rollover_after_idle_ticks_splits_over_the_last_tick_only() -> None:
    """An idle slice's record is not rewritten, but it was read at every tick: traffic
    that shows at the first tick after a rollover was sent since the previous tick."""
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (100, 1)}})
    for now in (500.0, 990.0):
        tick(ledger, now, {"alice": {NORMAL: (100, 1)}})
    tick(ledger, 1010.0, {"alice": {NORMAL: (300, 3)}})  # the period rolled at 1000
    # 200 bytes between 990 and 1010: half of them in the new period (not 10/1000).
    assert ledger.period("alice") == (1000.0, 2000.0)
    assert ledger.usage("alice", NORMAL) == 100


def test_reconfigured_period_reaches_idle_slices_after_periods_changed() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (3000, 3)}})
    ledger.periods_changed()
    tick(ledger, 20.0, {"alice": {NORMAL: (3000, 3)}}, Period("rolling", 5000))
    assert ledger.period("alice") == (0.0, 5000.0)
    assert ledger.usage("alice", NORMAL) == 3000 and ledger.changed == {"alice"}


def test_read_at_is_kept_in_the_dict() -> None:
    ledger = _sample()
    assert Ledger.from_dict(copy.deepcopy(ledger.to_dict())).read_at == 20.5
    older = copy.deepcopy(SAMPLE_DICT)
    del older["read_at"]  # from before the field: the latest slice's reading
    assert Ledger.from_dict(older).read_at == 20.5
    with pytest.raises(ValueError, match=r"ledger\.read_at: must be a finite number"):
        Ledger.from_dict({**SAMPLE_DICT, "read_at": "noon"})


def test_clock_going_back_keeps_period_and_usage() -> None:
    ledger = Ledger()
    tick(ledger, 500.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 600.0, {"alice": {NORMAL: (3000, 3)}})
    tick(ledger, 450.0, {"alice": {NORMAL: (3500, 4)}})
    assert ledger.period("alice") == (500.0, 1500.0)
    assert ledger.usage("alice", NORMAL) == 3500


def test_dead_slice_is_remembered_and_comes_back_with_its_usage() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}, "bob": {NORMAL: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (10, 1)}, "bob": {NORMAL: (9000, 9)}})
    ledger.set_notified("bob")
    # bob leaves the config.
    tick(ledger, 20.0, {"alice": {NORMAL: (20, 2)}})
    assert ledger.slices() == ("alice",)
    assert ledger.slices(include_dead=True) == ("alice", "bob")
    bob = ledger.get("bob")
    assert bob is not None
    assert (bob.live, bob.notified, bob.classes[NORMAL].used_bytes) == (False, True, 9000)
    assert bob.classes[NORMAL].last is None
    # bob is recreated (perhaps with another id); his new counter sets a baseline only.
    tick(ledger, 500.0, {"alice": {NORMAL: (30, 3)}, "bob": {NORMAL: (123_456, 99)}})
    assert ledger.slices() == ("alice", "bob")
    assert ledger.usage("bob", NORMAL) == 9000
    bob = ledger.get("bob")
    assert bob is not None and bob.notified and bob.live
    tick(ledger, 510.0, {"alice": {NORMAL: (30, 3)}, "bob": {NORMAL: (124_456, 100)}})
    assert ledger.usage("bob", NORMAL) == 10_000


def test_dead_slice_is_forgotten_when_its_period_ends() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}, "bob": {NORMAL: (0, 0)}})
    tick(ledger, 10.0, {"alice": {NORMAL: (0, 0)}, "bob": {NORMAL: (9000, 9)}})
    tick(ledger, 20.0, {"alice": {NORMAL: (0, 0)}})
    tick(ledger, 999.0, {"alice": {NORMAL: (0, 0)}})
    assert "bob" in ledger
    tick(ledger, 1000.0, {"alice": {NORMAL: (0, 0)}})
    assert "bob" not in ledger
    assert ledger.slices(include_dead=True) == ("alice",)
    # Back after its period: a new slice with a new period and no usage.
    tick(ledger, 1100.0, {"alice": {NORMAL: (0, 0)}, "bob": {NORMAL: (50_000, 50)}})
    assert ledger.usage("bob", NORMAL) == 0
    assert ledger.period("bob") == (1100.0, 2100.0)


def test_missing_class_in_a_tick_is_left_alone() -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0), EXEMPT: (0, 0)}})
    tick(ledger, 10.0, {"alice": {EXEMPT: (70, 1)}})
    tick(ledger, 20.0, {"alice": {NORMAL: (100, 1), EXEMPT: (90, 2)}})
    assert (ledger.usage("alice", NORMAL), ledger.usage("alice", EXEMPT)) == (100, 90)


def test_queries_and_records() -> None:
    ledger = Ledger()
    assert ledger.usage("nobody", NORMAL) == 0
    assert ledger.get("nobody") is None
    assert len(ledger) == 0
    with pytest.raises(KeyError):
        ledger.period("nobody")
    with pytest.raises(KeyError):
        ledger.set_notified("nobody")
    with pytest.raises(KeyError):
        ledger.set_ceiling("nobody", NORMAL, 8, False)
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    with pytest.raises(ValueError, match="dclass"):
        ledger.usage("alice", 2)
    with pytest.raises(ValueError, match="ceil_bps"):
        ledger.set_ceiling("alice", EXEMPT, 0, True)
    ledger.set_ceiling("alice", EXEMPT, 1_500_000, True)
    record = ledger.get("alice")
    assert record is not None
    assert record.classes[EXEMPT] == ClassRecord(ceil_bps=1_500_000, capped=True)
    assert record.classes[NORMAL] == ClassRecord(last=(0, 0))


@pytest.mark.parametrize(
    ("readings", "message"),
    [
        pytest.param({"a": {2: (0, 0)}}, "dclass must be 0..1", id="unknown-dclass"),
        pytest.param({"a": {True: (0, 0)}}, "dclass must be an int", id="bool-dclass"),
        pytest.param({"a": {0: (-1, 0)}}, "bytes, packets", id="negative"),
        pytest.param({"a": {0: (1.5, 0)}}, "bytes, packets", id="float"),
        pytest.param({"a": {0: (1, 2, 3)}}, "bytes, packets", id="triple"),
        pytest.param({"a": {0: 5}}, "bytes, packets", id="not-a-pair"),
        pytest.param({1: {0: (0, 0)}}, "slice names are strings", id="int-name"),
    ],
)
def test_update_rejects_bad_readings_and_changes_nothing(readings: Any, message: str) -> None:
    ledger = Ledger()
    tick(ledger, 0.0, {"alice": {NORMAL: (0, 0)}})
    before = ledger.to_dict()
    with pytest.raises(ValueError, match=message):
        tick(ledger, 10.0, {"alice": {NORMAL: (500, 5)}, **readings})
    assert ledger.to_dict() == before


def _sample() -> Ledger:
    ledger = Ledger()
    tick(ledger, 0.5, {"alice": {NORMAL: (0, 0), EXEMPT: (0, 0)}, "bob": {NORMAL: (0, 0)}})
    tick(ledger, 10.5, {"alice": {NORMAL: (5000, 5), EXEMPT: (70, 1)}, "bob": {NORMAL: (9, 1)}})
    ledger.set_ceiling("alice", NORMAL, 8000, True)
    ledger.set_notified("alice")
    tick(ledger, 20.5, {"alice": {NORMAL: (6000, 6), EXEMPT: (70, 1)}})
    ledger.counters_generation = "boot-1/42"
    ledger.uncounted_bytes = 1042
    return ledger


SAMPLE_DICT: dict[str, Any] = {
    "counters_generation": "boot-1/42",
    "read_at": 20.5,
    "uncounted_bytes": 1042,
    "slices": {
        "alice": {
            "period_start": 0.5,
            "period_end": 1000.5,
            "live": True,
            "notified": True,
            "read_at": 20.5,
            "normal": {
                "used_bytes": 6000,
                "used_packets": 6,
                "last": [6000, 6],
                "capped": True,
                "ceil_bps": 8000,
            },
            "exempt": {
                "used_bytes": 70,
                "used_packets": 1,
                "last": [70, 1],
                "capped": False,
                "ceil_bps": None,
            },
        },
        "bob": {
            "period_start": 0.5,
            "period_end": 1000.5,
            "live": False,
            "notified": False,
            "read_at": 10.5,
            "normal": {
                "used_bytes": 9,
                "used_packets": 1,
                "last": None,
                "capped": False,
                "ceil_bps": None,
            },
            "exempt": {
                "used_bytes": 0,
                "used_packets": 0,
                "last": None,
                "capped": False,
                "ceil_bps": None,
            },
        },
    },
}


def test_to_dict() -> None:
    assert _sample().to_dict() == SAMPLE_DICT


def test_counters_generation() -> None:
    again = Ledger.from_dict(copy.deepcopy(SAMPLE_DICT))
    assert again.counters_generation == "boot-1/42"
    older = copy.deepcopy(SAMPLE_DICT)
    del older["counters_generation"]  # a state file from before the field existed
    assert Ledger.from_dict(older).counters_generation is None
    with pytest.raises(ValueError, match=r"ledger\.counters_generation: must be a string"):
        Ledger.from_dict({**SAMPLE_DICT, "counters_generation": 7})


def test_uncounted_bytes_kept_and_bounded() -> None:
    assert Ledger.from_dict(copy.deepcopy(SAMPLE_DICT)).uncounted_bytes == 1042
    older = copy.deepcopy(SAMPLE_DICT)
    del older["uncounted_bytes"]  # a state file from before the field existed
    assert Ledger.from_dict(older).uncounted_bytes == 0
    for bad, why in ((-1, "integer >= 0"), (2**63, "more than 2"), ("7", "integer"), (True, "")):
        with pytest.raises(ValueError, match=rf"ledger\.uncounted_bytes: .*{why}"):
            Ledger.from_dict({**SAMPLE_DICT, "uncounted_bytes": bad})


def test_from_dict_round_trip() -> None:
    ledger = _sample()
    again = Ledger.from_dict(copy.deepcopy(ledger.to_dict()))
    assert again == ledger
    assert again.get("alice") == SliceRecord(
        "alice",
        0.5,
        1000.5,
        True,
        True,
        20.5,
        (ClassRecord(6000, 6, (6000, 6), True, 8000), ClassRecord(70, 1, (70, 1))),
    )
    assert Ledger.from_dict({"slices": {}}) == Ledger()


DELETE = object()


def _garbage(path: str, value: Any) -> dict[str, Any]:
    """SAMPLE_DICT with the value at a /-separated path replaced (or deleted if DELETE)."""
    data = copy.deepcopy(SAMPLE_DICT)
    *parents, leaf = path.split("/")
    node: Any = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param([], "ledger: must be an object, not list", id="not-an-object"),
        pytest.param(None, "ledger: must be an object, not null", id="null"),
        pytest.param({}, "ledger: missing slices", id="no-slices"),
        pytest.param({"slices": {}, "x": 1}, "ledger: unknown key x", id="unknown-top-key"),
        pytest.param({"slices": []}, "ledger.slices: must be an object", id="slices-list"),
        pytest.param(
            _garbage("slices/alice/normal/used_bytes", -5),
            r"ledger.slices.'alice'.normal.used_bytes: must be an integer >= 0, not -5",
            id="negative-usage",
        ),
        pytest.param(
            _garbage("slices/alice/normal/used_bytes", True),
            r"normal.used_bytes: must be an integer >= 0, not True",
            id="bool-usage",
        ),
        pytest.param(
            _garbage("slices/alice/exempt/used_packets", 1.5),
            r"exempt.used_packets: must be an integer >= 0",
            id="float-packets",
        ),
        pytest.param(
            _garbage("slices/alice/normal/used_bytes", "6000"),
            r"normal.used_bytes: must be an integer",
            id="string-usage",
        ),
        pytest.param(
            _garbage("slices/alice/period_end", 0.5),
            r"period_end: 0.5 is not after period_start 0.5",
            id="empty-period",
        ),
        pytest.param(
            _garbage("slices/alice/period_start", float("nan")),
            r"period_start: must be a finite number",
            id="nan-time",
        ),
        pytest.param(
            _garbage("slices/alice/period_start", 10**400),
            r"period_start: must be a finite number",
            id="huge-int-time",
        ),
        pytest.param(
            _garbage("slices/alice/read_at", "yesterday"),
            r"read_at: must be a finite number",
            id="string-time",
        ),
        pytest.param(
            _garbage("slices/alice/live", 1),
            r"'alice'.live: must be true or false, not 1",
            id="int-bool",
        ),
        pytest.param(
            _garbage("slices/alice/normal/last", [1, 2, 3]),
            r"normal.last: must be \[bytes, packets\] or null",
            id="last-triple",
        ),
        pytest.param(
            _garbage("slices/alice/normal/last", [1, -2]),
            r"normal.last\[1\]: must be an integer >= 0",
            id="last-negative",
        ),
        pytest.param(
            _garbage("slices/alice/normal/ceil_bps", 0),
            r"normal.ceil_bps: must be at least 1",
            id="zero-ceiling",
        ),
        pytest.param(
            _garbage("slices/alice/exempt", DELETE),
            r"'alice': missing exempt",
            id="missing-class",
        ),
        pytest.param(
            _garbage("slices/alice/normal/extra", 1),
            r"normal: unknown key extra",
            id="unknown-class-key",
        ),
        pytest.param(
            _garbage("slices/alice", "alice"),
            r"'alice': must be an object, not str",
            id="slice-not-an-object",
        ),
        pytest.param(
            _garbage("slices/", SAMPLE_DICT["slices"]["bob"]),
            r"not a usable slice name",
            id="empty-name",
        ),
        pytest.param(
            _garbage("slices/a\nb", SAMPLE_DICT["slices"]["bob"]),
            r"not a usable slice name",
            id="newline-in-name",
        ),
    ],
)
def test_from_dict_rejects_garbage(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ledger.from_dict(data)


_RECORDS = [
    SliceRecord(
        "alice",
        1704164645.0,
        1704251045.0,
        True,
        False,
        1704164700.25,
        (ClassRecord(4000, 4, (4100, 5), True, 8000), ClassRecord()),
    ),
    SliceRecord(
        "bob",
        1704164645,
        1704251045,
        False,
        True,
        None,
        (ClassRecord(2**63 - 1, 0, None, False, None), ClassRecord(1, 2, (3, 4), True, 1)),
    ),
    SliceRecord("carol", 1.5e-7, 1e300, True, True, 0.1, (ClassRecord(), ClassRecord())),
]


@pytest.mark.parametrize("record", _RECORDS, ids=lambda r: r.name)
def test_slice_json_is_what_json_makes_of_the_slice_dict(record: SliceRecord) -> None:
    expected = json.dumps(
        _slice_dict(record), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    assert slice_json(record) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_slice_json_refuses_what_json_cannot_hold(bad: float) -> None:
    record = _RECORDS[0]._replace(read_at=bad)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        slice_json(record)


def test_slice_lines_are_the_members_of_the_slices_object() -> None:
    ledger = Ledger()
    ledger.apply({}, {r.name: _slice_dict(r) for r in _RECORDS[::-1]}, [])
    ledger.apply({}, {'d\u00e9j\u00e0 "vu"': _slice_dict(_RECORDS[0])}, [])
    text = "{" + ",".join(ledger.slice_lines()) + "}"
    assert json.loads(text) == ledger.to_dict()["slices"]
    assert list(json.loads(text)) == sorted(ledger.to_dict()["slices"])
    assert text.isascii()
