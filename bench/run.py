"""Performance benchmarks: each figure is a ratio to a baseline measured in the same run.

    .venv/bin/python bench/run.py --out bench/results.json    (as root; ``make bench``)
    .venv/bin/python bench/run.py --only tick,daemon          (some parts; --help lists them)

The parts, one module each under bench/:

datapath  per-packet cost of bpf/egress.c through BPF_PROG_TEST_RUN with 10,000 slices
          matched by mark and 10,000 exempt prefixes per family, against an empty tc program
counters  reading the counters of 10,000 slices with ``datapath.Counters`` against bcc's
          per-key lookups
netlink   1,000 HTB ceiling changes with ``Shaper.apply`` against one ``tc -batch``, and
          listing those classes with ``Shaper.classes`` against ``tc -s class show``
tick      ``bwbpf up`` of 10,000 slices against ``tc -batch``; the daemon's tick in this
          process against the kernel reads it cannot avoid; its GC time; a tick profile
daemon    a real ``bwbpf run`` at 10,000 slices in a network namespace: CPU and bytes
          written per tick, memory, ``bwbpf stat``, a SIGHUP reload
page      the node page of such a daemon: ``/`` and ``/api/status.json`` against the stat
          socket's answer, ``/api/history.json`` against every slice's history, the page's
          first render in headless Chromium (when installed), the daemon's memory
soak      an hour (--minutes) of such a daemon with history on, 1 % sending and a SIGHUP
          every ~70 s: its memory, fds and ticks a minute, the history database's size;
          not in the default set, run it with --only soak

No figure is asserted anywhere: the results are written as JSON and summarised on stdout
(targets say met or MISSED). Everything created (bpffs directories, cgroups, veth pairs,
namespaces, processes) is removed on exit, also after a failure or SIGTERM. A part that
fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):
    # Run as a file (make bench): the repository, not bench/, is what imports resolve in.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.results import Result, machine, summary

PARTS = ("datapath", "counters", "netlink", "tick", "daemon", "page", "soak")
# An hour long: run only when asked for (--only soak).
DEFAULT_PARTS = tuple(p for p in PARTS if p != "soak")
T = TypeVar("T")


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second TERM must not cut the cleanup short
    raise SystemExit(128 + signum)  # unwinds through every cleanup below


def _parts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    chosen = [p.strip() for group in args.only or [] for p in group.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"--only: no part {', '.join(unknown)}; the parts: {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in chosen] if chosen else list(DEFAULT_PARTS)
    if args.no_netlink and "netlink" in parts:
        parts.remove("netlink")
    if not args.daemon_slices:
        parts = [p for p in parts if p not in ("tick", "daemon", "page", "soak")]
    return parts


class Attempts:
    """Runs each part; a failure is reported with its reason and the run goes on."""

    def __init__(self) -> None:
        self.failed: list[dict[str, str]] = []

    def __call__(self, name: str, fn: Callable[[], T]) -> T | None:
        print(f"bench: {name}", flush=True)
        try:
            return fn()
        except Exception as exc:
            from bench.daemonproc import DaemonFailed

            if not isinstance(exc, DaemonFailed | RuntimeError):
                traceback.print_exc()  # unexpected: where it happened matters
            print(f"bench: {name} FAILED: {exc}", file=sys.stderr, flush=True)
            self.failed.append({"part": name, "error": str(exc)})
            return None


def _program_parts(
    parts: Sequence[str], args: argparse.Namespace, attempt: Attempts
) -> list[Result]:
    """datapath and counters: both use the program with 10,000 slices matched by mark."""
    from bench.counters import bench_counters
    from bench.datapath import bench_datapath, load_marks

    rng = random.Random(args.seed)
    results: list[Result] = []
    bpffs = f"/sys/fs/bpf/bwbpfbench-{uuid.uuid4().hex[:8]}"
    os.mkdir(bpffs)
    try:
        with contextlib.ExitStack() as stack:
            prog = attempt("load the program", lambda: load_marks(bpffs, rng, stack))
            if prog is None:
                return results
            if "datapath" in parts:
                found = attempt(
                    "datapath",
                    lambda: bench_datapath(prog, bpffs, rng, args.repeat, args.runs, stack),
                )
                results += found or []
            if "counters" in parts:
                one = attempt("counters", lambda: bench_counters(prog.loaded, args.counter_runs))
                results += [one] if one else []
    finally:
        shutil.rmtree(bpffs, ignore_errors=True)
        if os.path.exists(bpffs):
            print(f"bench: could not remove {bpffs}", file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog=f"parts: {', '.join(PARTS)}",
    )
    parser.add_argument("--out", default="bench/results.json", help="JSON results file")
    parser.add_argument(
        "--only", action="append", metavar="PART[,PART]", help="run only these parts"
    )
    parser.add_argument("--repeat", type=int, default=1_000_000, help="runs per test-run call")
    parser.add_argument("--runs", type=int, default=5, help="test-run calls per case")
    parser.add_argument("--counter-runs", type=int, default=20)
    parser.add_argument("--class-changes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2, help="seed of the random prefixes")
    parser.add_argument("--no-netlink", action="store_true", help="skip the HTB benchmark")
    parser.add_argument(
        "--daemon-slices",
        type=int,
        default=10_000,
        help="slices of the tick, daemon and page parts (0: skip them)",
    )
    parser.add_argument("--ticks", type=int, default=20, help="daemon ticks measured per case")
    parser.add_argument("--stat-runs", type=int, default=5, help="runs of each bwbpf stat")
    parser.add_argument("--minutes", type=float, default=60, help="how long the soak runs")
    args = parser.parse_args(argv)
    parts = _parts(parser, args)

    if os.geteuid() != 0:
        print("bench: needs root (BPF, tc, cgroups, namespaces)", file=sys.stderr)
        return 1
    if not os.path.ismount("/sys/fs/bpf"):
        print("bench: bpffs is not mounted at /sys/fs/bpf (make host mounts it)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    # One CPU for the in-process parts: the dclass cache is per CPU, and a migration between
    # two test runs would turn hits into misses. The daemon part gets every CPU back: a real
    # daemon and its traffic are not pinned, and its children would inherit the pin.
    every_cpu = os.sched_getaffinity(0)
    cpu = max(every_cpu)
    os.sched_setaffinity(0, {cpu})
    started = time.monotonic()
    load_at_start = os.getloadavg()
    attempt = Attempts()
    results: list[Result] = []
    profile: Any = None
    if "datapath" in parts or "counters" in parts:
        results += _program_parts(parts, args, attempt)
    if "netlink" in parts:
        from bench.netlink import bench_netlink

        results += attempt("netlink", lambda: bench_netlink(args.class_changes, 3)) or []
    if "tick" in parts:
        from bench.tick import bench_tick

        ticked = attempt("tick", lambda: bench_tick(args.daemon_slices, 5))
        if ticked:
            results += ticked[0]
            profile = ticked[1]
    if "daemon" in parts:
        from bench.daemon import bench_daemon

        os.sched_setaffinity(0, every_cpu)
        measured: list[Result] = []
        attempt(
            "daemon",
            lambda: bench_daemon(args.daemon_slices, args.ticks, args.stat_runs, measured),
        )
        results += measured
    if "page" in parts:
        from bench.page import bench_page

        os.sched_setaffinity(0, every_cpu)
        shown: list[Result] = []
        attempt("page", lambda: bench_page(args.daemon_slices, shown))
        results += shown

    if "soak" in parts:
        from bench.soak import bench_soak

        os.sched_setaffinity(0, every_cpu)
        soaked: list[Result] = []
        attempt("soak", lambda: bench_soak(args.daemon_slices, args.minutes, soaked))
        results += soaked

    # Other work on the machine shifts every figure; the ratios less so.
    load = {"start": load_at_start, "end": os.getloadavg()}
    report: dict[str, Any] = {
        "machine": {**machine(cpu), "loadavg": load},
        "parts": parts,
        "results": [r.as_json() for r in results],
        "failed": attempt.failed,
    }
    if profile is not None:
        report["tick_profile"] = profile.as_json()
    report["seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if results:
        print(summary(results))
    if profile is not None:
        from bench.profiling import render

        print(render(profile, f"one daemon tick at {args.daemon_slices:,} slices, by step:"))
    for failure in attempt.failed:
        print(f"bench: FAILED {failure['part']}: {failure['error']}", file=sys.stderr)
    print(f"bench: {len(results)} results in {report['seconds']} s, written to {args.out}")
    return 1 if attempt.failed else 0


if __name__ == "__main__":
    sys.exit(main())
