"""The Python mirrors of bpf/bwbpf.h match the C, as bcc compiles it."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil

import pytest

from bwbpf import bpfsys, config, datapath, layout, limits, matchkinds
from bwbpf.errors import Error
from bwbpf.matchkinds import Flag
from tests.conftest import unique
from tests.helpers import pin_old_map

HEADER = (datapath.bpf_source_dir() / "bwbpf.h").read_text()


def test_error_reasons_follow_the_enum() -> None:
    found = re.findall(r"BWBPF_ERR_(\w+) = (\d+)", HEADER)
    assert [(name.lower(), int(n)) for name, n in found] == [
        (reason, i) for i, reason in enumerate(limits.ERROR_REASONS)
    ]


@pytest.mark.root
def test_the_c_compiles_with_the_contracts_flags() -> None:
    """What BWBPF_F_* are in C once bwbpf.h is included with datapath.cflags(): read back
    from a program that stores each into an array."""
    from bcc import BPF

    stores = "".join(
        f"i = {i}; v = BWBPF_F_{flag.name}; flags.update(&i, &v);" for i, flag in enumerate(Flag)
    )
    bpf = BPF(
        text=f"""#include <uapi/linux/bpf.h>
        #include "bwbpf.h"
        BPF_ARRAY(flags, __u32, {len(Flag)});
        int f(struct __sk_buff *skb) {{ __u32 i, v; {stores} return 0; }}""",
        cflags=[*datapath.cflags(), f"-I{datapath.bpf_source_dir()}", "-Wall", "-Werror"],
    )
    try:
        fn = bpf.load_func("f", BPF.SCHED_CLS)
        assert bpfsys.prog_test_run(fn.fd, bytes(64)).retval == 0
        compiled = {flag: bpf["flags"][ctypes.c_uint32(i)].value for i, flag in enumerate(Flag)}
        assert compiled == {flag: flag.value for flag in Flag}
    finally:
        bpf.cleanup()


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
        for m in (*matchkinds.MAPS, *matchkinds.EXEMPT_MAPS):
            assert ctypes.sizeof(bpf[m.name].Key) == ctypes.sizeof(m.key_type), m.name
            assert bpf[m.name].max_entries == m.max_entries, m.name
    finally:
        bpf.cleanup()
        datapath.remove_pins(cfg.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)


@pytest.mark.root
def test_an_errors_map_of_other_slots_is_replaced_with_its_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bpffs = f"/sys/fs/bpf/{unique('bwbpftest-')}"
    cfg = config.parse(f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n')
    os.makedirs(cfg.pin_dir)
    path = os.path.join(cfg.pin_dir, "errors")
    try:
        pin_old_map(path, 3)
        fd = bpfsys.obj_get(path)
        ncpus = bpfsys.possible_cpus()
        for reason, per_cpu in enumerate([(5, 1), (0, 0), (7, 2)]):
            value = (ctypes.c_uint64 * ncpus)(*per_cpu[:ncpus])
            bpfsys.map_update(fd, ctypes.c_uint32(reason), value)
        os.close(fd)
        with caplog.at_level(logging.WARNING):
            bpf = datapath.compile_program(cfg.pin_dir)
        bpf.cleanup()
        assert "3 error slots, this bwbpf has 16" in caplog.text
        with datapath.Counters(cfg.pin_dir) as counters:
            assert bpfsys.map_info(counters._errors).max_entries == limits.ERROR_SLOTS
            expected = {"truncated": 5 + (ncpus > 1), "counter_lookup": 0}
            expected["slice_out_of_range"] = 7 + 2 * (ncpus > 1)
            assert counters.errors() == expected
    finally:
        datapath.remove_pins(cfg.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)


@pytest.mark.root
def test_a_counters_map_of_another_layout_is_refused() -> None:
    bpffs = f"/sys/fs/bpf/{unique('bwbpftest-')}"
    cfg = config.parse(f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n')
    os.makedirs(cfg.pin_dir)
    try:
        pin_old_map(os.path.join(cfg.pin_dir, "counters"), 100)
        with pytest.raises(Error, match=r"counters has layout .* `bwbpf down` removes it"):
            datapath.compile_program(cfg.pin_dir)
        assert os.path.exists(os.path.join(cfg.pin_dir, "counters"))  # its counts kept
    finally:
        datapath.remove_pins(cfg.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)


def test_error_reasons_fit_their_slots() -> None:
    assert len(limits.ERROR_REASONS) <= limits.ERROR_SLOTS
