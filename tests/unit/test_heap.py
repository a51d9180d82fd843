"""The daemon's heap: freed memory goes back to the kernel when asked."""

from __future__ import annotations

import gc

from bwbpf import heap


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_trim_gives_back_what_a_tick_made_and_dropped() -> None:
    # What a snapshot leaves: large blocks freed between small ones that live on, so that
    # free() alone cannot shrink the heap.
    kept, dropped = [], []
    for i in range(5000):
        dropped.append(bytearray(8192) + bytes([i % 256]))
        kept.append(bytearray(600))
    dropped.clear()
    gc.collect()
    before = rss_kb()
    heap.trim()
    after = rss_kb()
    assert before - after > 20_000, (before, after)  # of the ~40 MB freed
    assert len(kept) == 5000


def test_freeze_leaves_what_exists_out_of_collections() -> None:
    try:
        heap.freeze()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
