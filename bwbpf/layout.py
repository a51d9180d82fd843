"""ctypes mirrors of the structs in bpf/bwbpf.h, for code that reads pinned maps without
compiling (``stat``, the daemon). Each must match its C struct; tests/bpf/test_layout.py
compares sizes and offsets with the types bcc builds from the C."""

from __future__ import annotations

import ctypes


class Counter(ctypes.Structure):
    """Must match struct bwbpf_counter in bpf/bwbpf.h."""

    _fields_ = [("bytes", ctypes.c_uint64), ("packets", ctypes.c_uint64)]


class SliceCounters(ctypes.Structure):
    """Must match struct bwbpf_slice_counters in bpf/bwbpf.h: one counter per dclass."""

    _fields_ = [("dclass", Counter * 2)]


class DclassSlot(ctypes.Structure):
    """Must match struct bwbpf_dclass_slot in bpf/bwbpf.h."""

    _fields_ = [
        ("family", ctypes.c_uint32),
        ("dclass", ctypes.c_uint32),
        ("addr", ctypes.c_uint32 * 4),
    ]


class Settings(ctypes.Structure):
    """Must match struct bwbpf_settings in bpf/bwbpf.h."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("cgroup_levels", ctypes.c_uint32),
        ("match_epoch", ctypes.c_uint32),
    ]


# A program's first match epoch (settings.match_epoch); 0 turns its socket cache off.
FIRST_MATCH_EPOCH = 1


class Lpm4(ctypes.Structure):
    """Must match struct bwbpf_lpm4 in bpf/bwbpf.h."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class Lpm6(ctypes.Structure):
    """Must match struct bwbpf_lpm6 in bpf/bwbpf.h."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]
