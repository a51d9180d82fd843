"""1,000 HTB ceiling changes with ``Shaper.apply`` against one ``tc -batch``, and listing
those classes with ``Shaper.classes`` against ``tc -s class show``."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.results import Result
from bench.topology import veth
from bwbpf import classid, limits, tree


def bench_netlink(changes: int, runs: int) -> list[Result]:
    """Changing the ceilings of ``changes`` classes (Shaper.apply, as a daemon tick does)
    and reading them back (Shaper.classes), each against iproute2's tc doing the same."""
    from bwbpf.shaper import Shaper

    parent = classid.parent_class(limits.DCLASS_NORMAL)
    ceilings = [10_000_000 + 8_000 * r for r in range(2 * runs + 1)]

    def leaves(ceil_bps: int) -> list[tree.ClassSpec]:
        return [
            tree.ClassSpec(classid.slice_class(i, limits.DCLASS_NORMAL), parent, 8, ceil_bps, 1600)
            for i in range(1, changes + 1)
        ]

    def check(shaper: Shaper, ceil_bps: int, who: str) -> None:
        last = shaper.classes()[classid.slice_class(changes, limits.DCLASS_NORMAL)]
        if last.ceil_bps != ceil_bps:
            raise RuntimeError(f"{who} did not apply: ceil {last.ceil_bps}, not {ceil_bps}")

    with veth() as ifname, Shaper(ifname) as shaper:
        shaper.ensure_qdisc()
        top = tree.ClassSpec(classid.ROOT_CLASS, classid.QDISC_HANDLE, 10**9, 10**9, 1600)
        shaper.apply([top, tree.ClassSpec(parent, classid.ROOT_CLASS, 10**8, 10**8, 1600)])
        shaper.apply(leaves(ceilings[0]))
        change_mine: list[float] = []
        change_tc: list[float] = []
        dump_mine: list[float] = []
        dump_tc: list[float] = []
        with tempfile.TemporaryDirectory(prefix="bwbpfbench-") as tmp:
            for r in range(runs):
                specs = leaves(ceilings[2 * r + 1])
                installed = shaper.classes()
                t = time.perf_counter_ns()
                shaper.apply(specs, installed)
                change_mine.append((time.perf_counter_ns() - t) / 1e6)
                check(shaper, ceilings[2 * r + 1], "Shaper.apply")
                # tc's rate unit is also bytes/s underneath; "bit" spells bits per second.
                batch = Path(tmp) / f"batch{r}"
                batch.write_text(
                    "".join(
                        f"class replace dev {ifname} parent {classid.format_handle(parent)}"
                        f" classid {classid.format_handle(s.handle)} htb rate 8bit"
                        f" ceil {ceilings[2 * r + 2]}bit quantum 1600\n"
                        for s in specs
                    )
                )
                t = time.perf_counter_ns()
                subprocess.run(["tc", "-batch", str(batch)], check=True)
                change_tc.append((time.perf_counter_ns() - t) / 1e6)
                check(shaper, ceilings[2 * r + 2], "tc -batch")

                t = time.perf_counter_ns()
                shaper.classes()
                dump_mine.append((time.perf_counter_ns() - t) / 1e6)
                t = time.perf_counter_ns()
                subprocess.run(
                    ["tc", "-s", "class", "show", "dev", ifname], check=True, capture_output=True
                )
                dump_tc.append((time.perf_counter_ns() - t) / 1e6)

    def result(name: str, mine: list[float], baseline: str, theirs: list[float]) -> Result:
        return Result(
            name,
            statistics.median(mine),
            "ms",
            baseline,
            statistics.median(theirs),
            extra={
                "min": round(min(mine), 3),
                "baseline_min": round(min(theirs), 3),
                "per_class_us": round(statistics.median(mine) * 1000 / changes, 2),
                "runs": runs,
            },
        )

    return [
        result(
            f"{changes:,} HTB class ceiling changes: Shaper.apply",
            change_mine,
            f"tc -batch of the same {changes:,} changes (process start included)",
            change_tc,
        ),
        result(
            f"list {changes + 3:,} HTB classes with their counters: Shaper.classes",
            dump_mine,
            "tc -s class show (process start included)",
            dump_tc,
        ),
    ]
