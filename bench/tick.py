"""``bwbpf up`` of 10,000 slices against ``tc -batch`` creating the same classes, the
daemon's tick in this process against the kernel reads it cannot avoid (every counter,
every class), the garbage collector's share of it, and a cProfile of one tick by step."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.configs import daemon_config
from bench.profiling import GcTime, TickProfile, profile_tick
from bench.results import Result
from bench.topology import veth
from bwbpf import classid, config, datapath, tree


def bench_tick(slices: int, ticks: int) -> tuple[list[Result], TickProfile]:
    """``bwbpf up`` and the daemon's tick with ``slices`` slices on a veth, each against the
    part of the job that is the kernel's: ``tc -batch`` creating the same classes on a
    second veth, and reading every counter plus listing every class (what any tick reads).
    Then one more tick under cProfile: where its time goes."""
    from bwbpf import node
    from bwbpf.daemon import Daemon
    from bwbpf.shaper import Shaper

    bpffs = f"/sys/fs/bpf/bwbpfbench-{uuid.uuid4().hex[:8]}"
    os.mkdir(bpffs)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bwbpfbench-") as tmp,
            veth() as ifname,
            veth() as other,
        ):
            cfg = config.parse(daemon_config(ifname, bpffs, tmp, slices))
            specs = tree.desired_tree(cfg)
            t = time.perf_counter()
            report = node.up(cfg)
            up_s = time.perf_counter() - t
            if report.class_changes != len(specs):
                raise RuntimeError(f"up made {report.class_changes} of {len(specs)} classes")
            batch = Path(tmp) / "batch"
            lines = [f"qdisc add dev {other} root handle 1: htb\n"]
            lines += [
                f"class add dev {other} parent {classid.format_handle(c.parent)}"
                f" classid {classid.format_handle(c.handle)} htb rate {c.rate_bps}bit"
                f" ceil {c.ceil_bps}bit quantum {c.quantum}\n"
                for c in specs
            ]
            batch.write_text("".join(lines))
            t = time.perf_counter()
            subprocess.run(["tc", "-batch", str(batch)], check=True)
            tc_s = time.perf_counter() - t

            d = Daemon(cfg)
            tick_s: list[float] = []
            gc_s: list[float] = []
            reads_s: list[float] = []
            try:
                d.start()
                for _ in range(ticks):
                    timer = GcTime()
                    with timer.measure():
                        t = time.perf_counter()
                        d.tick(time.time())
                        tick_s.append(time.perf_counter() - t)
                    gc_s.append(timer.seconds)
                    if d.tick_problems:
                        raise RuntimeError("; ".join(d.tick_problems))
                    t = time.perf_counter()
                    with datapath.Counters(cfg.pin_dir) as counters, Shaper(ifname) as shaper:
                        counters.read(s.id for s in cfg.all_slices())
                        shaper.classes()
                    reads_s.append(time.perf_counter() - t)
                profile = profile_tick(lambda: d.tick(time.time()))
            finally:
                d.stop()
                node.down(cfg)
    finally:
        shutil.rmtree(bpffs, ignore_errors=True)
    n = len(specs)
    return [
        Result(
            f"bwbpf up: {slices:,} slices, {n:,} HTB classes created",
            up_s * 1000,
            "ms",
            f"tc -batch creating the same {n:,} classes on another veth",
            tc_s * 1000,
            extra={"classes": n, "runs": 1},
        ),
        Result(
            f"daemon tick at {slices:,} slices (counters, policy, HTB, state, metrics textfile)",
            statistics.median(tick_s) * 1000,
            "ms",
            "reading every counter and listing every HTB class (the kernel reads of a tick)",
            statistics.median(reads_s) * 1000,
            extra={"min": round(min(tick_s) * 1000, 1), "ticks": ticks},
        ),
        Result(
            f"garbage collection in a daemon tick at {slices:,} slices (gc.callbacks)",
            statistics.median(gc_s) * 1000,
            "ms",
            "the same ticks' wall time",
            statistics.median(tick_s) * 1000,
            extra={"min": round(min(gc_s) * 1000, 1), "ticks": ticks},
        ),
    ], profile
