"""The Python mirrors of bpf/bwbpf.h match the C, as bcc compiles it."""

from __future__ import annotations

import ctypes
import re
import shutil

import pytest

from bwbpf import config, datapath, layout, limits
from tests.conftest import unique

HEADER = (datapath.bpf_source_dir() / "bwbpf.h").read_text()


def test_error_reasons_follow_the_enum() -> None:
    found = re.findall(r"BWBPF_ERR_(\w+) = (\d+)", HEADER)
    assert [(name.lower(), int(n)) for name, n in found] == [
        (reason, i) for i, reason in enumerate(limits.ERROR_REASONS)
    ]


def test_flags_follow_the_enum() -> None:
    found = dict(re.findall(r"BWBPF_F_(\w+) = 1 << (\d+)", HEADER))
    assert {name: 1 << int(bit) for name, bit in found.items()} == {
        name[2:]: getattr(layout, name) for name in dir(layout) if name.startswith("F_")
    }


def _fields(t: type) -> list[tuple[str, int, int]]:
    return [(name, getattr(t, name).offset, getattr(t, name).size) for name, _ in t._fields_]


@pytest.mark.root
def test_structs_match_what_bcc_builds() -> None:
    bpffs = f"/sys/fs/bpf/{unique('bwbpftest-')}"
    cfg = config.parse(f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n')
    bpf = datapath.compile_program(cfg.pin_dir)
    try:
        pairs = [
            (bpf["counters"].sLeaf, layout.SliceCounters),  # one CPU's value
            (bpf["dclass_cache"].sLeaf, layout.DclassSlot),
            (bpf["settings"].Leaf, layout.Settings),
            (bpf["exempt4"].Key, layout.Lpm4),
            (bpf["exempt6"].Key, layout.Lpm6),
        ]
        for from_c, mirror in pairs:
            assert ctypes.sizeof(from_c) == ctypes.sizeof(mirror), mirror.__name__
            assert _fields(from_c) == _fields(mirror), mirror.__name__
        shapes = {name: (bpf[name].Key, bpf[name].sLeaf) for name in ("counters", "errors")}
        for name, (_type, key_size, value_size, entries) in datapath.PINNED_MAPS.items():
            key, leaf = shapes[name]
            assert (ctypes.sizeof(key), ctypes.sizeof(leaf)) == (key_size, value_size)
            assert bpf[name].max_entries == entries
    finally:
        bpf.cleanup()
        datapath.remove_pins(cfg.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)
