"""The classid scheme and the HTB tree a config asks for."""

from __future__ import annotations

import pytest

from bwbpf import classid, config, limits, tree
from bwbpf.shaper import InstalledClass, difference


@pytest.mark.parametrize(
    ("sid", "dclass", "text"),
    [
        pytest.param(0, limits.DCLASS_NORMAL, "1:4000", id="default-normal"),
        pytest.param(0, limits.DCLASS_EXEMPT, "1:8000", id="default-exempt"),
        pytest.param(5, limits.DCLASS_NORMAL, "1:4005", id="five-normal"),
        pytest.param(300, limits.DCLASS_EXEMPT, "1:812c", id="hex"),
        pytest.param(limits.MAX_SLICE_ID, limits.DCLASS_EXEMPT, "1:bfff", id="highest"),
    ],
)
def test_slice_classes(sid: int, dclass: int, text: str) -> None:
    h = classid.slice_class(sid, dclass)
    assert classid.format_handle(h) == text
    assert classid.parse_slice_class(h) == (sid, dclass)


def test_parents_are_not_slice_classes() -> None:
    for h in (
        classid.ROOT_CLASS,
        classid.parent_class(0),
        classid.parent_class(1),
        classid.QDISC_HANDLE,
        classid.handle(5, major=2),
    ):
        assert classid.parse_slice_class(h) is None


def test_out_of_range_slice_id() -> None:
    with pytest.raises(ValueError, match="outside"):
        classid.slice_class(limits.MAX_SLICE_ID + 1, 0)


CFG = """
[node]
interface = "lo"
line_rate = "10gbit"
node_cap = "100mbit"
[defaults]
normal = { min_rate = "1mbit", max_rate = "50mbit" }
[[slice]]
name = "a"
id = 7
share = 3
match = { mark = 1 }
exempt = { min_rate = "2mbit" }
"""


def test_desired_tree() -> None:
    cfg = config.parse(CFG)
    specs = {classid.format_handle(s.handle): s for s in tree.desired_tree(cfg, {(7, 0): 123})}
    assert list(specs)[:3] == ["1:1", "1:10", "1:20"]  # parents before children
    assert specs["1:1"].ceil_bps == 10 * 10**9
    assert specs["1:10"].ceil_bps == 100 * 10**6
    assert specs["1:10"].rate_bps == 2 * 10**6  # both slices' normal guarantees
    assert specs["1:20"].rate_bps == 2 * 10**6 + 8
    a = specs["1:4007"]
    # The policy asked for 123 bit/s, below the 1 Mbit/s guarantee: the guarantee wins.
    assert (a.parent, a.rate_bps, a.ceil_bps, a.quantum) == (
        classid.parent_class(0),
        10**6,
        10**6,
        3 * 1600,
    )
    assert specs["1:8007"].ceil_bps == 10 * 10**9
    assert specs["1:4000"].ceil_bps == 50 * 10**6


def _with_slice(text: str, name: str, slice_id: int) -> str:
    return text + f'[[slice]]\nname = "{name}"\nid = {slice_id}\nmatch = {{ mark = {slice_id} }}\n'


def test_handles_are_the_trees_without_making_it() -> None:
    cfg = config.parse(_with_slice(CFG, "b", 300))
    assert tree.handles(cfg) == {s.handle for s in tree.desired_tree(cfg)}
    assert len(tree.handles(cfg)) == 3 + 2 * 3  # root, two parents; a, b and the default


def test_added_is_what_a_reload_must_create_parents_first() -> None:
    old = config.parse(CFG)
    new = config.parse(_with_slice(CFG, "b", 300))
    assert [classid.format_handle(s.handle) for s in tree.added(old, new)] == ["1:412c", "1:812c"]
    assert tree.added(new, old) == []  # a removed slice's classes are not made
    assert tree.added(old, old) == []


def test_difference_puts_what_differs_and_finds_the_stale() -> None:
    cfg = config.parse(CFG)
    specs = tree.desired_tree(cfg)
    by = {s.handle: s for s in specs}
    a_normal = classid.slice_class(7, 0)
    installed = {
        h: InstalledClass(h, s.parent, s.rate_bps, s.ceil_bps, s.quantum, 0, 0)
        for h, s in by.items()
        if h != classid.slice_class(7, 1)  # missing: to create
    }
    s = by[a_normal]  # someone changed its ceiling
    installed[a_normal] = InstalledClass(a_normal, s.parent, s.rate_bps, 8000, s.quantum, 5, 1)
    gone = classid.slice_class(9, 0)  # a slice that left, and a class that is not bwbpf's
    installed[gone] = InstalledClass(gone, classid.parent_class(0), 8, 8, 1600, 0, 0)
    installed[0x20001] = InstalledClass(0x20001, 0x20000, 8, 8, 1600, 0, 0)
    plan = difference(specs, installed)
    assert [s.handle for s in plan.put] == [a_normal, classid.slice_class(7, 1)]
    assert plan.stale == [(gone, classid.parent_class(0))]
    assert difference(specs, {h: installed[h] for h in by if h in installed}).stale == []
