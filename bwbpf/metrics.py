"""Prometheus metrics: what the daemon knew at its last tick, served over HTTP and/or written
as a node_exporter textfile.

No kernel calls here. The daemon builds a ``Snapshot`` from what its tick already has (the
ledger with the raw counter readings, the policy's decisions, the datapath error counters)
and hands it to the ``Exporter``; scrapes read whichever snapshot is current, so a scrape
never waits for a tick or sees half of one (one reference swap, atomic under the GIL).

Units follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): bytes
and seconds, so a ceiling is in bytes per second (``ceil_bps / 8``), and times are Unix
timestamps in seconds. Every series carries ``interface``: a node with two daemons (two
interfaces) writing textfiles into one node_exporter directory must not collide.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import write_to_textfile
from prometheus_client.registry import Collector

from bwbpf import __version__, policy
from bwbpf.config import Config
from bwbpf.config import Metrics as MetricsSettings
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.limits import DCLASSES
from bwbpf.policy import Decision

PREFIX = "bwbpf"
SLICE_LABELS = ("interface", "slice", "dclass")

# Every metric family this module can expose, by its name in the exposition (counters with
# their ``_total``, info with its ``_info``), and its help text. The dashboard and alert tests
# check their expressions against this list.
FAMILIES = {
    "bwbpf_build_info": "bwbpf's version; always 1.",
    "bwbpf_slice_bytes_total": (
        "Wire bytes the datapath counted for the slice and destination class (the raw kernel"
        " counter: it restarts from 0 only when the BPF maps are recreated)."
    ),
    "bwbpf_slice_packets_total": "Packets the datapath counted (GSO segments count singly).",
    "bwbpf_slice_period_bytes": "Bytes charged to the slice and class in its current period.",
    "bwbpf_slice_period_packets": "Packets charged to the slice and class in its current period.",
    "bwbpf_slice_limit_bytes": (
        "The bytes the class may send this period (for the average policy: its average budget)."
    ),
    "bwbpf_slice_threshold_bytes": (
        "The usage from which the policy lowers the class's ceiling (for the average policy:"
        " the average budget)."
    ),
    "bwbpf_slice_ceiling_bytes_per_second": "The HTB ceiling the daemon set for the class.",
    "bwbpf_slice_max_rate_bytes_per_second": "The class's max_rate: its ceiling when not capped.",
    "bwbpf_slice_capped": "1 if the quota holds the class's ceiling below its max_rate, else 0.",
    "bwbpf_slice_period_start_timestamp_seconds": "When the slice's current period began.",
    "bwbpf_slice_period_end_timestamp_seconds": "When the slice's current period ends.",
    "bwbpf_datapath_errors_total": (
        "Packets the classifier could not handle normally, by reason (each still sent to a"
        " real HTB class: the datapath fails open)."
    ),
    "bwbpf_tick_duration_seconds": "How long the last tick took (counters, policy, HTB, state).",
    "bwbpf_last_tick_timestamp_seconds": "When the last completed tick ran.",
    "bwbpf_tick_interval_seconds": "The configured tick; a last tick older than a few is stale.",
    "bwbpf_problems": "Problems the daemon reports (as `bwbpf stat` shows them); 0 when healthy.",
}


@dataclass(frozen=True)
class ClassSample:
    """One destination class of one slice at a tick."""

    slice: str
    dclass: str
    # The raw kernel counters; None when the ledger holds no reading (no baseline).
    counter_bytes: int | None
    counter_packets: int | None
    used_bytes: int
    used_packets: int
    limit_bytes: int
    threshold_bytes: int
    ceil_bps: int
    max_rate_bps: int
    capped: bool
    period_start: float
    period_end: float


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, as of one tick."""

    interface: str
    tick_s: int
    last_tick: float
    tick_duration_s: float
    classes: tuple[ClassSample, ...] = ()
    # Datapath error counters by reason (limits.ERROR_REASONS).
    errors: Mapping[str, int] = field(default_factory=dict)
    problems: int = 0


def snapshot(
    cfg: Config,
    ledger: Ledger,
    decisions: Mapping[str, Mapping[int, Decision]],
    errors: Mapping[str, int],
    *,
    now: float,
    tick_duration_s: float,
    problems: int = 0,
) -> Snapshot:
    """The snapshot of a tick, from what the daemon has after deciding (pure)."""
    classes = []
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is None or s.name not in decisions:
            continue
        for dclass, c in enumerate(record.classes):
            d = decisions[s.name][dclass]
            quota = s.quota(dclass)
            limit = policy.byte_limit(quota, cfg.policy, record.period_start, record.period_end)
            # For average, the ceiling drops at the budget itself: that is its threshold.
            threshold = quota.threshold_bytes if cfg.policy == "smooth" else limit
            classes.append(
                ClassSample(
                    slice=s.name,
                    dclass=DCLASSES[dclass],
                    counter_bytes=None if c.last is None else c.last[0],
                    counter_packets=None if c.last is None else c.last[1],
                    used_bytes=c.used_bytes,
                    used_packets=c.used_packets,
                    limit_bytes=limit,
                    threshold_bytes=threshold,
                    ceil_bps=d.ceil_bps,
                    max_rate_bps=quota.max_rate_bps,
                    capped=d.capped,
                    period_start=record.period_start,
                    period_end=record.period_end,
                )
            )
    return Snapshot(
        interface=cfg.interface,
        tick_s=cfg.tick_s,
        last_tick=now,
        tick_duration_s=tick_duration_s,
        classes=tuple(classes),
        errors=dict(errors),
        problems=problems,
    )


class SnapshotCollector(Collector):
    """A prometheus_client collector that renders the current snapshot (or, before the
    first tick, only the build info)."""

    def __init__(self, interface: str, version: str = __version__) -> None:
        self.interface = interface
        self.version = version
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(
            "bwbpf_build", FAMILIES["bwbpf_build_info"], labels=("interface", "version")
        )
        info.add_metric((self.interface, self.version), {})
        yield info
        snap = self.snapshot  # one read: the daemon may swap it meanwhile
        if snap is None:
            return
        yield from _slice_families(snap)
        errors = _counter("bwbpf_datapath_errors_total", ("interface", "reason"))
        for reason, count in snap.errors.items():
            errors.add_metric((snap.interface, reason), count)
        yield errors
        for name, value in (
            ("bwbpf_tick_duration_seconds", snap.tick_duration_s),
            ("bwbpf_last_tick_timestamp_seconds", snap.last_tick),
            ("bwbpf_tick_interval_seconds", snap.tick_s),
            ("bwbpf_problems", snap.problems),
        ):
            g = _gauge(name, ("interface",))
            g.add_metric((snap.interface,), value)
            yield g


def _counter(name: str, labels: tuple[str, ...]) -> CounterMetricFamily:
    # CounterMetricFamily takes the name without _total and adds it to the sample.
    return CounterMetricFamily(name.removesuffix("_total"), FAMILIES[name], labels=labels)


def _gauge(name: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, FAMILIES[name], labels=labels)


def _slice_families(snap: Snapshot) -> Iterator[Metric]:
    counters = {
        name: _counter(name, SLICE_LABELS)
        for name in ("bwbpf_slice_bytes_total", "bwbpf_slice_packets_total")
    }
    gauges = {
        name: _gauge(name, SLICE_LABELS)
        for name in FAMILIES
        if name.startswith("bwbpf_slice_") and name not in counters
    }
    for c in snap.classes:
        labels = (snap.interface, c.slice, c.dclass)
        if c.counter_bytes is not None and c.counter_packets is not None:
            counters["bwbpf_slice_bytes_total"].add_metric(labels, c.counter_bytes)
            counters["bwbpf_slice_packets_total"].add_metric(labels, c.counter_packets)
        values: dict[str, float] = {
            "bwbpf_slice_period_bytes": c.used_bytes,
            "bwbpf_slice_period_packets": c.used_packets,
            "bwbpf_slice_limit_bytes": c.limit_bytes,
            "bwbpf_slice_threshold_bytes": c.threshold_bytes,
            "bwbpf_slice_ceiling_bytes_per_second": c.ceil_bps / 8,
            "bwbpf_slice_max_rate_bytes_per_second": c.max_rate_bps / 8,
            "bwbpf_slice_capped": 1 if c.capped else 0,
            "bwbpf_slice_period_start_timestamp_seconds": c.period_start,
            "bwbpf_slice_period_end_timestamp_seconds": c.period_end,
        }
        for name, value in values.items():
            gauges[name].add_metric(labels, value)
    yield from counters.values()
    yield from gauges.values()


class Exporter:
    """One daemon's metrics: its own registry (never the process-wide default one), the HTTP
    server if one is configured, and the textfile."""

    def __init__(self, interface: str) -> None:
        self.collector = SnapshotCollector(interface)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.address: tuple[str, int] | None = None
        # What went wrong the last time the server was (re)started, for `bwbpf stat`.
        self.problems: list[str] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, settings: MetricsSettings | None) -> None:
        """Serve on the configured address, or stop serving; restarts the server only if
        the address changed (a reload). Raises bwbpf.Error if the address is unusable."""
        want = None
        if settings is not None and settings.listen_host is not None:
            want = (settings.listen_host, settings.listen_port)
        if self._server is not None and want == self.address:
            return
        self.close()
        if want is None:
            return
        host, port = want
        try:
            # Returns (server, thread) since prometheus-client 0.20 (client_python#999);
            # without them the server could not be stopped on a reload or at exit.
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            problem = f"metrics: cannot listen on {_hostport(host, port)}: {exc.strerror or exc}"
            self.problems = [problem]
            raise Error(problem) from None
        self.address = want

    def close(self) -> None:
        """Stop the HTTP server, if any."""
        self.problems = []
        self.address = None
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def update(self, snap: Snapshot, textfile: str | None = None) -> None:
        """Publish a tick's snapshot; rewrite the textfile (atomically: a temporary file in
        the same directory, then rename) if one is configured."""
        self.collector.snapshot = snap
        if textfile is not None:
            try:
                write_to_textfile(textfile, self.registry)
            except OSError as exc:
                raise Error(f"metrics: cannot write {textfile}: {exc.strerror or exc}") from None

    def render(self) -> bytes:
        """The text exposition a scrape gets now."""
        return generate_latest(self.registry)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
