"""Reading a counters map of another layout: which layouts can be read, how their slots
and destination classes map onto this bwbpf's, what the ledger makes of them, and the
line that says so."""

from __future__ import annotations

import pytest

from bwbpf import bpfsys, datapath, limits, migrate
from bwbpf.config import Period
from bwbpf.ledger import ClassRecord, Ledger, Reading, SliceRecord
from bwbpf.periods import current_period

ARRAY = bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY
HASH = 1  # BPF_MAP_TYPE_HASH
P1000 = Period("rolling", 1000)


@pytest.mark.parametrize(
    ("map_type", "key_size", "value_size", "expected"),
    [
        pytest.param(ARRAY, 4, 32, 2, id="this-layout"),
        pytest.param(ARRAY, 4, 16, 1, id="one-dclass"),
        pytest.param(ARRAY, 4, 48, 3, id="three-dclasses"),
        pytest.param(ARRAY, 4, 24, None, id="half-a-pair"),
        pytest.param(ARRAY, 4, 8, None, id="errors-map"),
        pytest.param(ARRAY, 4, 0, None, id="empty-value"),
        pytest.param(ARRAY, 8, 32, None, id="u64-key"),
        pytest.param(HASH, 4, 32, None, id="hash"),
    ],
)
def test_dclasses_of(map_type: int, key_size: int, value_size: int, expected: int | None) -> None:
    assert migrate.dclasses_of(map_type, key_size, value_size) == expected


def test_carry_keeps_the_configured_slices_and_names_the_rest() -> None:
    values = [
        ((10, 1), (20, 2)),  # slot 0: the default slice
        ((5, 1), (0, 0)),  # slot 1: no configured slice
        ((300, 3), (400, 4)),  # slot 2
        ((0, 0), (0, 0)),  # slot 3: none, and idle
        ((0, 0), (9, 1)),  # slot 4: none
    ]
    found = migrate.carry(values, [0, 2, 9])
    # Slice 9 is beyond the old map: no entry (daemon.readings reads it as (0, 0)).
    assert found.raw == {0: ((10, 1), (20, 2)), 2: ((300, 3), (400, 4))}
    assert found.other_slots == {1: 5, 4: 9}
    assert found.other_dclass_bytes == 0


def test_carry_maps_other_dclass_counts() -> None:
    three = [((1, 1), (2, 1), (30, 3)), ((4, 1), (5, 1), (60, 6))]
    found = migrate.carry(three, [0, 1])
    assert found.raw == {0: ((1, 1), (2, 1)), 1: ((4, 1), (5, 1))}
    assert found.other_dclass_bytes == 90  # the third class: nowhere to put it
    one = [((7, 1),), ((8, 2),)]
    found = migrate.carry(one, [1])
    assert found.raw == {1: ((8, 2), (0, 0))}  # the exempt class had no counter then
    assert found.other_slots == {0: 7}


def test_percpu_columns_sum_each_field_over_the_cpus() -> None:
    # Two slots, two CPUs, two words a value: slot-major, then CPU.
    words = [1, 2, 10, 20, 3, 4, 30, 40]
    assert datapath.percpu_columns(words, 2, 2) == [[11, 33], [22, 44]]
    assert datapath.percpu_columns(memoryview(bytes(16)).cast("Q"), 2, 1) == [[0], [0]]


def _tick(ledger: Ledger, now: float, readings: dict[str, tuple[Reading, ...]]) -> None:
    ledger.update(now, readings, lambda _name, start: current_period(P1000, now, start))


def test_a_retired_map_read_twice_is_charged_once() -> None:
    """The daemon's steps on a ledger: the old map read as the generation it last saw
    (a tick's delta), then, after a crash before the unpin, read again."""
    ledger = Ledger()
    ledger.counters_generation = "boot/41"
    _tick(ledger, 0.0, {"a": ((1000, 10), (0, 0))})  # the old daemon's last tick
    _tick(ledger, 10.0, {"a": ((1500, 15), (0, 0))})
    assert ledger.usage("a", 0) == 500
    retired = [((0, 0), (0, 0)), ((4000, 40), (70, 1))]  # slot 1 is slice "a"
    raw = migrate.carry(retired, [1]).raw
    before = ledger.records()
    _tick(ledger, 20.0, {"a": raw[1]})  # generation "boot/41" still: a delta
    assert (ledger.usage("a", 0), ledger.usage("a", 1)) == (3000, 70)
    assert migrate.carried_bytes(before, ledger.records()) == 2500 + 70
    _tick(ledger, 30.0, {"a": raw[1]})  # again, after a restart: nothing more
    assert (ledger.usage("a", 0), ledger.usage("a", 1)) == (3000, 70)


def _record(start: float, *used: int) -> SliceRecord:
    classes = tuple(ClassRecord(u, 0, (u, 0)) for u in used)
    return SliceRecord("s", start, start + 1000, True, False, start, classes)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param({"s": _record(0, 100, 5)}, {"s": _record(0, 150, 25)}, 70, id="grew"),
        pytest.param({}, {"s": _record(0, 10, 5)}, 15, id="new-slice"),
        pytest.param({"s": _record(0, 900, 0)}, {"s": _record(1000, 40, 0)}, 40, id="new-period"),
        pytest.param({"s": _record(0, 100, 0)}, {"s": _record(0, 100, 0)}, 0, id="idle"),
    ],
)
def test_carried_bytes(
    before: dict[str, SliceRecord], after: dict[str, SliceRecord], expected: int
) -> None:
    assert migrate.carried_bytes(before, after) == expected


def test_summary_says_what_was_left_out() -> None:
    full = migrate.Carried({1: ((5, 1), (0, 0))}, {}, 0)
    partial, line = migrate.summary("eth0", 41, 1024, 2, 5, full)
    assert not partial
    assert line.startswith("eth0: accounted the counters map 41 of another bwbpf layout")
    assert f"(1024 slots, 2 destination classes; this bwbpf has {limits.MAX_SLICE_ID + 1}" in line
    assert "5 bytes since the last reading added to the usage of 1 slices" in line
    assert "not carried" not in line
    others = {slot: 10 for slot in (3, 4, 5, 6, 7, 20000, 20001)}
    partial, line = migrate.summary("eth0", 41, 30000, 3, 5, migrate.Carried({}, others, 8))
    assert partial
    assert "70 bytes in slots 3, 4, 5, 6, 7 and 2 more, which no configured slice has" in line
    assert "8 bytes in destination classes this bwbpf does not have" in line
    assert "\n" not in line
