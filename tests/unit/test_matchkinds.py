"""The match-kind contract is complete and agrees with the C's source text and the model:
a new kind cannot be half added."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bwbpf import config, datapath, limits, loader, matchkinds, model
from bwbpf.errors import ConfigError, Error
from bwbpf.matchkinds import Flag

EGRESS = (datapath.bpf_source_dir() / "egress.c").read_text()
HEADER = (datapath.bpf_source_dir() / "bwbpf.h").read_text()
# name -> size argument of each map egress.c declares with bcc's macros
DECLARED = dict(
    re.findall(r"\bBPF_(?:HASH|ARRAY|LPM_TRIE)\((\w+),[^;]*?,\s*(\w+)\);", EGRESS, re.S)
)
ALL_MAPS = (*matchkinds.MAPS, *matchkinds.EXEMPT_MAPS)


def test_flags_are_distinct_bits() -> None:
    values = [flag.value for flag in Flag]
    assert all(v and v & (v - 1) == 0 for v in values)
    assert len(set(values)) == len(values)


def test_each_kind_has_flags_of_its_own() -> None:
    owner: dict[Flag, str] = {}
    for kind in matchkinds.KINDS:
        for m in kind.maps:
            assert owner.setdefault(m.flag, kind.key) == kind.key, m.name
    for m in matchkinds.EXEMPT_MAPS:
        assert m.flag not in owner, m.name


def test_every_map_is_declared_in_egress_c_with_its_size() -> None:
    for m in ALL_MAPS:
        assert DECLARED.get(m.name) == m.size_macro, m.name


def test_every_slice_map_in_egress_c_belongs_to_a_kind() -> None:
    slice_maps = {name for name in DECLARED if name.startswith("slice_by_")}
    assert slice_maps == {m.name for m in matchkinds.MAPS}


def test_the_c_uses_the_flags_python_defines_and_numbers_none() -> None:
    used = set(re.findall(r"\bBWBPF_F_(\w+)", EGRESS))
    assert used == {flag.name for flag in Flag}
    assert not re.search(r"BWBPF_F_\w+\s*=", HEADER + EGRESS)
    flags = {f: v for f, v in (d[2:].split("=") for d in datapath.cflags()) if "_F_" in f}
    assert flags == {f"BWBPF_F_{flag.name}": str(flag.value) for flag in Flag}


def test_every_match_field_is_a_kind() -> None:
    fields = [f.name for f in dataclasses.fields(model.Match)]
    assert sorted(fields) == sorted(kind.match_field for kind in matchkinds.KINDS)
    keys = [kind.key for kind in matchkinds.KINDS]
    assert len(set(keys)) == len(keys)


def test_the_pinned_maps_keep_their_names() -> None:
    # Pins are shared with running daemons: a rename would orphan theirs.
    assert datapath.MATCH_MAPS == (
        "settings",
        "slice_by_small_mark",
        "slice_by_mark",
        "slice_by_uid",
        "slice_by_cgroup",
        "slice_by_src4",
        "slice_by_src6",
        "exempt4",
        "exempt6",
    )


def test_marks_split_between_the_array_and_the_hash() -> None:
    cfg = config.parse(
        '[node]\ninterface = "lo"\n[[slice]]\nname = "a"\nid = 3\n'
        f"match = {{ mark = [{limits.MAX_SLICE_ID}, {limits.MAX_SLICE_ID + 1}] }}\n"
    )
    tables = datapath.match_tables(cfg)
    assert tables.entries["slice_by_small_mark"] == {limits.MAX_SLICE_ID: 3}
    assert tables.entries["slice_by_mark"] == {limits.MAX_SLICE_ID + 1: 3}
    assert tables.flags == Flag.MARK


def test_tables_of_every_kind_and_their_request() -> None:
    cfg = config.parse(
        '[node]\ninterface = "lo"\n[exempt]\nprefixes = ["2001:db8::/32"]\n'
        '[[slice]]\nname = "a"\nid = 3\nmatch = { mark = 70000, uid = 1000,'
        ' src = ["10.1.0.0/16"], cgroup = ["/a", "/gone"] }\n'
    )

    def lookup(path: str) -> matchkinds.CgroupRef:
        if path == "/gone":
            raise Error("no such cgroup")
        return matchkinds.CgroupRef(99, 2)

    tables = datapath.match_tables(cfg, lookup, no_l2=True)
    assert set(tables.entries) == {m.name for m in matchkinds.MAPS}
    assert tables.entries["slice_by_cgroup"] == {99: 3}
    assert tables.cgroup_levels == 1 << 2
    assert tables.problems == ("slice a: no such cgroup",)
    assert tables.flags == (
        Flag.MARK | Flag.UID | Flag.CGROUP | Flag.SRC4 | Flag.EXEMPT6 | Flag.NO_L2
    )
    _, decoded, _ = loader.decode(loader.encode("/x", tables))
    assert decoded == dataclasses.replace(tables, problems=())


def test_counts_are_per_map() -> None:
    n = limits.MAX_MATCHES + 1
    marks = ", ".join(str(70000 + i) for i in range(n))
    text = (
        f'[node]\ninterface = "lo"\n[[slice]]\nname = "a"\nid = 3\nmatch = {{ mark = [{marks}] }}\n'
    )
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "bw.toml")
    assert exc.value.problems == [f"bw.toml: slice: {n} mark matches; at most {n - 1}"]
