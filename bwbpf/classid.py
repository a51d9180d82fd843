"""The HTB classid scheme, so that ``tc -s class show`` readers can follow it.

    1:      root qdisc, default class 1:4000 (the default slice's normal class)
    1:1     line rate; parent of everything
    1:10    node cap: parent of every slice's normal class
    1:20    exempt parent, at line rate
    1:4XXX  slice XXX's normal class   (minor 0x4000 | slice id, id in hex)
    1:8XXX  slice XXX's exempt class   (minor 0x8000 | slice id)

Slice ids are 14 bits (0..0x3fff): slice 5 is 1:4005 and 1:8005, slice 300 is 1:412c
and 1:812c. The default slice has id 0.
"""

from __future__ import annotations

from bwbpf.limits import DCLASS_EXEMPT, DCLASS_NORMAL, MAX_SLICE_ID

HTB_MAJOR = 1
ROOT_MINOR = 0x1
NORMAL_PARENT_MINOR = 0x10
EXEMPT_PARENT_MINOR = 0x20
MINOR_BASE = {DCLASS_NORMAL: 0x4000, DCLASS_EXEMPT: 0x8000}
PARENT_MINOR = {DCLASS_NORMAL: NORMAL_PARENT_MINOR, DCLASS_EXEMPT: EXEMPT_PARENT_MINOR}


def handle(minor: int, major: int = HTB_MAJOR) -> int:
    """The 32-bit tc handle ``major:minor``."""
    return (major << 16) | minor


QDISC_HANDLE = handle(0)
ROOT_CLASS = handle(ROOT_MINOR)


def slice_class(slice_id: int, dclass: int) -> int:
    """The handle of a slice's class for a destination class."""
    if not 0 <= slice_id <= MAX_SLICE_ID:
        raise ValueError(f"slice id {slice_id} outside 0..{MAX_SLICE_ID}")
    return handle(MINOR_BASE[dclass] | slice_id)


def parent_class(dclass: int) -> int:
    return handle(PARENT_MINOR[dclass])


def parse_slice_class(h: int) -> tuple[int, int] | None:
    """``(slice_id, dclass)`` of a slice class handle, or None for any other handle."""
    if h >> 16 != HTB_MAJOR:
        return None
    minor = h & 0xFFFF
    for dclass, base in MINOR_BASE.items():
        if minor & 0xC000 == base:
            return minor & MAX_SLICE_ID, dclass
    return None


def format_handle(h: int) -> str:
    """tc's notation: ``1:4005`` (hex, no leading zeros)."""
    return f"{h >> 16:x}:{h & 0xFFFF:x}"
