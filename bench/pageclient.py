"""The node page benchmark's client, run in the daemon's namespace (nsenter), where its
listener's 127.0.0.1 is: each request timed to its last byte, and the baselines measured
in the same process, interleaved with them so that both see the same load. Prints one
JSON document.

    python bench/pageclient.py --port 9877 --config bwbpf.toml --slice s5000

Phases: ``--idle`` seconds without a request (the daemon lets its kept slice texts go after
10 s), then the first page load; ``--rounds`` rounds a second apart, each the page, the
status document gzipped and plain, the stat socket's answer, and the history queries with
their in-process baselines; then ``--poll`` seconds of polling as an open page does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bwbpf import config, historyview, statsocket
from bwbpf.history import Store

GZIP = {"Accept-Encoding": "gzip"}


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, target: str, headers: dict[str, str] | None = None) -> tuple[float, int]:
        """Milliseconds to the answer's last byte, and its bytes on the wire; a status other
        than 200 is an error."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            t = time.perf_counter()
            conn.request("GET", target, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            ms = (time.perf_counter() - t) * 1000
        finally:
            conn.close()
        if response.status != 200:
            raise SystemExit(f"GET {target}: {response.status} {body[:300]!r}")
        return ms, len(body)


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def history_baseline(cfg: config.Config, res: str, names: list[str] | None, top: int | None) -> Any:
    """What the endpoint does, in this process, for ``names`` (None: the node alone)."""

    def run() -> None:
        store = Store.open_readonly(cfg.history_path, cfg.interface)
        try:
            doc = historyview.document(
                store, cfg, res, now=time.time(), names=names, top=top, node=True
            )
        finally:
            store.close()
        json.dumps(doc, separators=(",", ":"))

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--slice", required=True, help="the slice whose history is asked for")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle", type=float, default=12.0)
    p.add_argument("--poll", type=float, default=30.0)
    args = p.parse_args(argv)
    cfg = config.load(args.config, check_interface=False)
    client = Client(args.port)
    out: dict[str, Any] = {}

    time.sleep(args.idle)
    page_ms, _ = client.get("/", GZIP)
    status_ms, status_wire = client.get("/api/status.json", GZIP)
    out["cold"] = {"page_ms": page_ms, "status_ms": status_ms, "status_wire_bytes": status_wire}

    queries = {
        "hours": ("res=hours", "hours", None, None),
        "days": ("res=days", "days", None, None),
        "slice": (f"res=days&slice={args.slice}", "days", [args.slice], None),
        "top": ("res=days&top=10", "days", [], 10),
    }
    rounds: dict[str, list[float]] = {
        k: []
        for k in ("page", "status_gzip", "status_plain", "socket", *queries, "every_slice_days")
    }
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        started = time.monotonic()
        ms, sizes["page"] = client.get("/", GZIP)
        rounds["page"].append(ms)
        ms, sizes["status_gzip"] = client.get("/api/status.json", GZIP)
        rounds["status_gzip"].append(ms)
        ms, sizes["status_plain"] = client.get("/api/status.json")
        rounds["status_plain"].append(ms)
        t = time.perf_counter()
        answer = statsocket.ask(cfg, timeout=30)
        rounds["socket"].append((time.perf_counter() - t) * 1000)
        if answer is None:
            raise SystemExit("the stat socket did not answer")
        sizes["socket"] = len(answer)
        for key, (query, _res, _names, _top) in queries.items():
            ms, sizes[key] = client.get(f"/api/history.json?{query}", GZIP)
            rounds[key].append(ms)
        # What answering with every slice's rows would cost (what the endpoint avoids).
        rounds["every_slice_days"].append(timed(history_baseline(cfg, "days", [], None)))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    out["rounds"] = rounds
    out["bytes"] = sizes

    # An open page: the status every tick (1 s here), the two charts every 10 s.
    polled = 0
    deadline = time.monotonic() + args.poll
    while time.monotonic() < deadline:
        client.get("/api/status.json", GZIP)
        if polled % 10 == 0:
            client.get("/api/history.json?res=hours", GZIP)
            client.get("/api/history.json?res=days", GZIP)
        polled += 1
        time.sleep(1.0)
    out["polled"] = polled
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
