"""The node page at 10,000 slices: a real ``bwbpf run`` (as bench/daemon.py runs it: its own
network namespace, tick 1 s, 1 % of the slices sending) with its listener on, over a
history of a day of hourly and 30 days of daily rows for every slice.

Measured from a client in the daemon's namespace (bench/pageclient.py), each request to
its last byte: ``/`` and ``/api/status.json`` together (the page's load), the first after
10 s without a request (the daemon has let its kept slice texts go) and the ones after,
gzipped as a browser asks and plain; ``/api/history.json`` for the node's totals, a slice
and the top 10. Then, if Chromium is installed, the page's own first render from the
navigation (DevTools protocol: bench/browser.py), and the daemon's resident memory after
half a minute of an open page polling.

Baselines, measured alongside: the stat socket's answer of the same document (the work the
endpoint shares), and the history document with every slice's rows (what the endpoint does
not build unless asked).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench import procfs
from bench.browser import Browser, available
from bench.configs import slice_name
from bench.daemon import (
    SENDING_SHARE,
    START_TIMEOUT_S,
    TICK,
    WARMUP_TICKS,
    Setup,
    _environ,
    sender_report,
)
from bench.daemonproc import Processes
from bench.results import Result
from bench.topology import namespaces
from bwbpf import config, history

PORT = 9877
CLIENT = Path(__file__).resolve().parent / "pageclient.py"
HOURS, DAYS = 24, 30
ROUNDS = 5
BROWSER_RUNS = 3
# Targets of the node page.
LOAD_MAX_MS = 1000.0
RSS_MAX_MB = 64.0


def say(text: str) -> None:
    print(f"bench: page: {text}", flush=True)


def fill_history(cfg: config.Config, now: float, seed: int = 5) -> int:
    """Every slice sending every hour of the last day and every day of the 30 before: the
    largest history the page's charts read. Rows of the resolutions the page does not
    read are not made (5-minute rows, hours before yesterday). Returns the rows added."""
    rng = random.Random(seed)
    tz = ZoneInfo(cfg.history.timezone)
    store, _ = history.Store.open(cfg.history_path, cfg.interface, now)
    names = [s.name for s in cfg.all_slices()]
    rows = 0
    try:
        hourly = [
            history.Added(n, 0, now - h * 3600, rng.randrange(1, 10**7), 10)
            for h in range(HOURS)
            for n in names
        ]
        # Hours, days, months and years: no 5-minute rows.
        store.write(hourly, [], tz, (0, *cfg.history.keep()[1:]))
        rows += 4 * len(hourly)
        daily = [
            history.Added(n, 0, now - d * 86400, rng.randrange(1, 10**9), 1000)
            for d in range(1, DAYS)
            for n in names
        ]
        store.write(daily, [], tz, (0, 0, *cfg.history.keep()[2:]))
        rows += 3 * len(daily)
    finally:
        store.close()
    return rows


def bench_page(slices: int, results: list[Result]) -> None:
    """The figures of this module, appended to ``results`` as they come."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bwbpfbench-")))
        bpffs = f"/sys/fs/bpf/bwbpfbench-{uuid.uuid4().hex[:8]}"
        Path(bpffs).mkdir()
        stack.callback(shutil.rmtree, bpffs, ignore_errors=True)
        ns = stack.enter_context(namespaces())
        stack.enter_context(_environ("BWBPF_CACHE_DIR", str(tmp / "config-cache")))
        processes = Processes()
        stack.callback(processes.stop_all)
        s = Setup(ns, processes, tmp, bpffs, slices)
        cfg_path = s.config("bwbpf.toml", slices, tick=TICK, listen=f"127.0.0.1:{PORT}")
        cfg = config.load(cfg_path, check_interface=False)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        say(f"a history of {HOURS} hours and {DAYS} days for {slices:,} slices")
        t = time.monotonic()
        rows = fill_history(cfg, time.time())
        say(f"{rows:,} rows in {time.monotonic() - t:.0f} s")

        say(f"starting the daemon at {slices:,} slices")
        d = s.daemon(cfg_path, "daemon.log")
        d.start()
        d.wait_ticks(1, START_TIMEOUT_S, f"at {slices:,} slices")
        per_second = max(1, round(slices * SENDING_SHARE))
        sender = s.sender(per_second, "sender.log")
        d.wait_ticks(WARMUP_TICKS, 60 + 20 * WARMUP_TICKS, "warming up")
        rss_before = procfs.rss_mb(d.pid)

        say("the client: an idle daemon's first page load, then rounds and polling")
        one = slice_name(max(1, slices // 2))
        client = ns.in_src(sys.executable, str(CLIENT), "--port", str(PORT))
        client += ["--config", str(cfg_path), "--slice", one, "--rounds", str(ROUNDS)]
        done = subprocess.run(client, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"the page client failed: {done.stderr.strip()[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        d.check_alive()
        rss_polled = procfs.rss_mb(d.pid)

        renders: list[float] = []
        cold_render: float | None = None
        if available():
            say(f"Chromium: {BROWSER_RUNS + 1} page loads")
            url = f"http://127.0.0.1:{PORT}/"
            ready = "document.body && document.body.dataset.firstRenderMs"
            with Browser(ns.in_src(), tmp / "chromium") as browser:
                time.sleep(12)  # the kept texts let go: as a page opened on an idle daemon
                cold_render = float(browser.load(url, ready))
                for _ in range(BROWSER_RUNS):
                    renders.append(float(browser.load(url, ready)))
        else:
            say("no chromium: the browser's figure is left out")
        rss_after = procfs.rss_mb(d.pid)
        sent = sender_report(sender, tmp / "sender.log")
        d.stop()
        s.bwbpf("down", "-c", str(cfg_path))

    results += _results(slices, measured, rss_before, rss_polled, rss_after, renders, cold_render)
    results[-1].extra["sender"] = sent


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _results(
    slices: int,
    m: dict[str, Any],
    rss_before: float,
    rss_polled: float,
    rss_after: float,
    renders: list[float],
    cold_render: float | None,
) -> list[Result]:
    r = m["rounds"]
    loads = [a + b for a, b in zip(r["page"], r["status_gzip"], strict=True)]
    socket = _median(r["socket"])
    socket_base = "the stat socket's answer of the same document (statsocket.ask), same client"
    every = _median(r["every_slice_days"])
    every_base = "the history document with every slice's 30 days (historyview, in the client)"
    sizes = m["bytes"]
    out = [
        Result(
            f"GET / + /api/status.json (gzip), {slices:,} slices",
            _median(loads),
            "ms",
            socket_base,
            socket,
            target=f"value <= {LOAD_MAX_MS:g} ms",
            met=_median(loads) <= LOAD_MAX_MS,
            extra={
                "min": round(min(loads), 1),
                "runs": len(loads),
                "page_ms": round(_median(r["page"]), 2),
                "page_bytes": sizes["page"],
                "status_wire_bytes": sizes["status_gzip"],
                "status_bytes": sizes["status_plain"],
            },
        ),
        Result(
            f"GET / + /api/status.json (gzip), {slices:,} slices, the first after 10 s idle",
            m["cold"]["page_ms"] + m["cold"]["status_ms"],
            "ms",
            socket_base,
            socket,
            target=f"value <= {LOAD_MAX_MS:g} ms",
            met=m["cold"]["page_ms"] + m["cold"]["status_ms"] <= LOAD_MAX_MS,
        ),
        Result(
            f"GET /api/status.json without gzip, {slices:,} slices",
            _median(r["status_plain"]),
            "ms",
            socket_base,
            socket,
            extra={"min": round(min(r["status_plain"]), 1)},
        ),
    ]
    for key, what in (
        ("hours", "res=hours (the node's 24 hours)"),
        ("days", "res=days (the node's 30 days)"),
        ("slice", "res=days&slice=NAME (one slice and the node)"),
        ("top", "res=days&top=10"),
    ):
        out.append(
            Result(
                f"GET /api/history.json?{what}, {slices:,} slices",
                _median(r[key]),
                "ms",
                every_base,
                every,
                extra={"min": round(min(r[key]), 1), "wire_bytes": sizes[key]},
            )
        )
    if renders and cold_render is not None:
        server = _median(loads)
        out.append(
            Result(
                f"the page in Chromium: navigation to first render, {slices:,} slices",
                _median(renders),
                "ms",
                "GET / + /api/status.json (gzip) alone, the client above",
                server,
                target=f"value <= {LOAD_MAX_MS:g} ms",
                met=_median(renders) <= LOAD_MAX_MS,
                extra={"min": round(min(renders), 1), "first_after_idle_ms": cold_render},
            )
        )
    out.append(
        Result(
            f"daemon RSS (VmRSS) after the page's requests, {slices:,} slices",
            max(rss_polled, rss_after),
            "MB",
            "the same daemon before any request",
            rss_before,
            target=f"value <= {RSS_MAX_MB:g} MB",
            met=max(rss_polled, rss_after) <= RSS_MAX_MB,
            extra={
                "after_polling_mb": round(rss_polled, 1),
                "after_browser_mb": round(rss_after, 1),
                "polled_s": m["polled"],
            },
        )
    )
    return out
