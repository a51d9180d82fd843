"""A pinned counters map of another bwbpf layout: moved aside by the loader, read back with
its own slots and destination classes, put back when the load fails; a shape bwbpf cannot
read is refused in one line and left as it was."""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterator

import pytest

from bwbpf import bpfsys, config, datapath
from bwbpf.errors import Error
from tests.conftest import unique
from tests.helpers import pin_old_map, pinned_id, pinned_shape

pytestmark = pytest.mark.root

NCPUS = bpfsys.possible_cpus()


@pytest.fixture
def cfg() -> Iterator[config.Config]:
    bpffs = f"/sys/fs/bpf/{unique('bwmg')}"
    c = config.parse(f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n')
    os.makedirs(c.pin_dir)
    try:
        yield c
    finally:
        datapath.remove_pins(c.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)


def old_counters(pin_dir: str, slots: int, dclasses: int, counts: dict[int, list[int]]) -> int:
    """Pin a counters map of ``slots`` slots of ``dclasses`` (bytes, packets) pairs, as
    another bwbpf would have, with ``counts[slot]``: its words for CPU 0, and one more of
    each on every other CPU. Returns its map id."""
    path = os.path.join(pin_dir, "counters")
    words = 2 * dclasses
    pin_old_map(path, slots, "struct old", types=f"struct old {{ u64 w[{words}]; }};")
    fd = bpfsys.obj_get(path)
    try:
        for slot, first in counts.items():
            per_cpu = [*first, *[1] * (words * (NCPUS - 1))]
            bpfsys.map_update(fd, ctypes.c_uint32(slot), (ctypes.c_uint64 * len(per_cpu))(*per_cpu))
        return int(bpfsys.map_info(fd).id)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("slots", "dclasses"),
    [
        pytest.param(1024, 2, id="fewer-slots"),
        pytest.param(20000, 2, id="more-slots"),
        pytest.param(64, 3, id="more-dclasses"),
        pytest.param(64, 1, id="one-dclass"),
    ],
)
def test_a_readable_layout_is_moved_aside_and_read_back(
    cfg: config.Config, slots: int, dclasses: int
) -> None:
    words = 2 * dclasses
    counts = {0: [7] * words, 12: list(range(100, 100 + words)), slots - 1: [3] * words}
    old_id = old_counters(cfg.pin_dir, slots, dclasses, counts)
    assert datapath.counters_layout_changes(cfg.pin_dir)
    bpf = datapath.compile_program(cfg.pin_dir)
    bpf.cleanup()
    retired = datapath.retired_pin(cfg.pin_dir, old_id)
    assert datapath.retired_pins(cfg.pin_dir) == [retired]
    assert pinned_id(retired) == old_id  # the same map, counts and all
    counters = os.path.join(cfg.pin_dir, "counters")
    assert pinned_shape(counters) == datapath.PINNED_MAPS["counters"]
    assert not datapath.counters_layout_changes(cfg.pin_dir)
    with datapath.RetiredCounters(retired) as old:
        assert (old.map_id, old.slots, old.dclasses) == (old_id, slots, dclasses)
        values = old.read()
    assert len(values) == slots
    extra = NCPUS - 1  # 1 a word on each other CPU
    for slot, first in counts.items():
        pairs = [(first[2 * d] + extra, first[2 * d + 1] + extra) for d in range(dclasses)]
        assert values[slot] == tuple(pairs)
    assert values[1] == ((0, 0),) * dclasses
    assert retired in datapath.remove_pins(cfg.pin_dir)  # `bwbpf down` removes it too


def test_a_load_that_fails_puts_the_old_map_back(cfg: config.Config) -> None:
    old_id = old_counters(cfg.pin_dir, 1024, 2, {5: [1000, 1, 0, 0]})
    counters = os.path.join(cfg.pin_dir, "counters")
    # Given twice, a size is a redefined macro: -Werror fails the compile.
    with pytest.raises(Error, match=r"cannot load bpf/egress\.c"):
        datapath.compile_program(cfg.pin_dir, ["-DBWBPF_MAX_SLICE_ID=7"])
    assert pinned_id(counters) == old_id
    assert datapath.retired_pins(cfg.pin_dir) == []

    # Failing after bcc made and pinned the new map: the old one is renamed over it.
    def refuse(_bpf: object, _fd: int) -> None:
        raise Error("cannot pin")

    tables = datapath.match_tables(cfg, no_l2=True)
    with pytest.raises(Error, match="cannot pin"):
        datapath.build(cfg.pin_dir, tables, pin=refuse)
    assert pinned_id(counters) == old_id
    assert datapath.retired_pins(cfg.pin_dir) == []


def test_the_loader_moves_it_aside_and_publish_keeps_it(cfg: config.Config) -> None:
    old_id = old_counters(cfg.pin_dir, 1024, 2, {5: [1000, 1, 0, 0]})
    program = datapath.Program.load(cfg)  # in a loader process, as the daemon does
    try:
        program.publish(cfg.pin_dir)  # removes other programs' pins, not this one
        assert datapath.retired_pins(cfg.pin_dir) == [datapath.retired_pin(cfg.pin_dir, old_id)]
        new_id = pinned_id(os.path.join(cfg.pin_dir, "counters"))
        assert new_id in bpfsys.prog_map_ids(program.fd)
        assert old_id not in bpfsys.prog_map_ids(program.fd)
    finally:
        program.close()


@pytest.mark.parametrize(
    ("kind", "key", "value_words"),
    [
        pytest.param("hash", "u32", 4, id="hash"),
        pytest.param("percpu_hash", "u64", 4, id="u64-key"),
        pytest.param("percpu_array", "u32", 3, id="half-a-pair"),
    ],
)
def test_an_unreadable_layout_is_refused_in_one_line(
    cfg: config.Config, kind: str, key: str, value_words: int
) -> None:
    path = os.path.join(cfg.pin_dir, "counters")
    types = f"struct other {{ u64 w[{value_words}]; }};"
    pin_old_map(path, 64, "struct other", kind=kind, key=key, types=types)
    old_id = pinned_id(path)
    assert not datapath.counters_layout_changes(cfg.pin_dir)
    with pytest.raises(Error) as refused:
        datapath.compile_program(cfg.pin_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert path in message and "`bwbpf down` removes it" in message
    assert pinned_id(path) == old_id  # left as it was, counts and all
    assert datapath.retired_pins(cfg.pin_dir) == []


def test_counters_of_another_layout_are_not_read_with_this_one(cfg: config.Config) -> None:
    """stat and the daemon open the pinned counters with this bwbpf's sizes: an old map
    (before the loader moved it aside) is a clear error, not values misread."""
    old_counters(cfg.pin_dir, 20000, 2, {})
    pin_old_map(os.path.join(cfg.pin_dir, "errors"), 16)
    with pytest.raises(Error, match=r"has layout .* another bwbpf version loaded it"):
        datapath.Counters(cfg.pin_dir)
