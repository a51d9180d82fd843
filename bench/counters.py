"""Reading the counters of 10,000 slices with ``datapath.Counters`` against bcc's per-key
lookups of the same slots."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

from bench.configs import SLICES
from bench.datapath import SRC
from bench.results import Result
from bench.testrun import Loaded, frame, test_run
from bwbpf import datapath, limits

COUNTERS_MAX_MS = 15.0


def bench_counters(loaded: Loaded, runs: int) -> Result:
    """``runs`` reads of every counter of the mark program (bench/datapath.py), checked
    equal to what bcc reads."""
    ids = list(range(SLICES + 1))
    # One packet per slice, so that every counter holds something.
    packet = frame(SRC[4], "203.0.113.5")
    for sid in ids:
        test_run(loaded.fd, packet, sid, 1)

    def ours() -> dict[int, tuple[int, int, int, int]]:
        with datapath.Counters(loaded.pin_dir) as counters:
            usage = counters.read(ids)
        return {s: (n.bytes, n.packets, e.bytes, e.packets) for s, (n, e) in usage.items()}

    table = loaded.bpf["counters"]
    ndc = len(limits.DCLASSES)
    # One slot per (slice, dclass), or one per slice holding every dclass's counter.
    per_slice = "dclass" in {name for name, *_ in table.sLeaf._fields_}
    slots = len(ids) if per_slice else len(ids) * ndc

    def bcc_per_key() -> dict[int, tuple[int, int, int, int]]:
        out = {}
        for sid in ids:
            row = []
            if per_slice:
                cpus = table[table.Key(sid)]
                for dclass in range(ndc):
                    row += [
                        sum(c.dclass[dclass].bytes for c in cpus),
                        sum(c.dclass[dclass].packets for c in cpus),
                    ]
            else:
                for dclass in range(ndc):
                    cpus = table[table.Key(sid * ndc + dclass)]
                    row += [sum(c.bytes for c in cpus), sum(c.packets for c in cpus)]
            out[sid] = (row[0], row[1], row[2], row[3])
        return out

    def timed(fn: Callable[[], object], n: int) -> tuple[list[float], object]:
        samples, value = [], None
        for _ in range(n):
            t = time.perf_counter_ns()
            value = fn()
            samples.append((time.perf_counter_ns() - t) / 1e6)
        return samples, value

    gc.collect()  # what earlier benchmarks left behind is not this one's garbage
    mine, mine_value = timed(ours, runs)
    theirs, theirs_value = timed(bcc_per_key, max(3, runs // 4))
    if mine_value != theirs_value:
        raise RuntimeError("datapath.Counters and bcc read different counters")
    value = statistics.median(mine)
    return Result(
        f"read all counters of {SLICES:,} slices: datapath.Counters(pin_dir).read(ids)",
        value,
        "ms",
        f"bcc per-key lookups of the same {slots:,} slots",
        statistics.median(theirs),
        target=f"value <= {COUNTERS_MAX_MS} ms",
        met=value <= COUNTERS_MAX_MS,
        extra={
            "min": round(min(mine), 3),
            "baseline_min": round(min(theirs), 3),
            "runs": len(mine),
            "baseline_runs": len(theirs),
        },
    )
