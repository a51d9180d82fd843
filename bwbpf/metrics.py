"""Prometheus metrics: what the daemon knew at its last tick, served over HTTP and/or written
as a node_exporter textfile.

No kernel calls here. The daemon builds a ``Snapshot`` from what its tick already has (the
ledger with the raw counter readings, the policy's decisions, the datapath error counters)
and hands it to the ``Exporter``, which renders it once into the text exposition format
(version 0.0.4); scrapes and the textfile get those bytes, so a scrape never waits for a
tick or sees half of one (one reference swap, atomic under the GIL), and costs nothing.

Rendered here rather than by prometheus_client, whose per-sample formatting took 1.8 s
for the 220,000 samples of 10,000 slices (here ~0.2 s), once per tick and again for every
scrape. The HTTP server is the standard library's.

Units follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): bytes
and seconds, so a ceiling is in bytes per second (``ceil_bps / 8``), and times are Unix
timestamps in seconds. Every series carries ``interface``: a node with two daemons (two
interfaces) writing textfiles into one node_exporter directory must not collide.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, overload

from bwbpf import __version__, heap, policy
from bwbpf.config import Config, Slice
from bwbpf.config import Metrics as MetricsSettings
from bwbpf.errors import Error
from bwbpf.ledger import Ledger, SliceRecord
from bwbpf.limits import DCLASSES
from bwbpf.policy import Decision

PREFIX = "bwbpf"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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
    "bwbpf_tick_duration_seconds": (
        "How long the last completed tick took, all of it (counters, policy, HTB, state,"
        " mail, metrics, status)."
    ),
    "bwbpf_tick_cpu_seconds": "CPU time the last completed tick used (all threads).",
    "bwbpf_tick_written_bytes": (
        "Bytes the last completed tick wrote to files (state, status, metrics textfile)."
    ),
    "bwbpf_last_tick_timestamp_seconds": "When the last completed tick ran.",
    "bwbpf_tick_interval_seconds": "The configured tick; a last tick older than a few is stale.",
    "bwbpf_problems": "Problems the daemon reports (as `bwbpf stat` shows them); 0 when healthy.",
    "bwbpf_uncounted_bytes_total": (
        "Bytes the device sent while bwbpf's classifier was found missing (removed or"
        " replaced), kept in the state file across restarts: traffic no slice was charged"
        " for."
    ),
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
    classes: Sequence[ClassSample] = ()
    tick_cpu_s: float = 0.0
    tick_written_bytes: int = 0
    # Datapath error counters by reason (limits.ERROR_REASONS).
    errors: Mapping[str, int] = field(default_factory=dict)
    problems: int = 0
    uncounted_bytes: int = 0


def snapshot(
    cfg: Config,
    ledger: Ledger,
    decisions: Mapping[str, Mapping[int, Decision]],
    errors: Mapping[str, int],
    *,
    now: float,
    tick_duration_s: float,
    tick_cpu_s: float = 0.0,
    tick_written_bytes: int = 0,
    problems: int = 0,
    uncounted_bytes: int = 0,
) -> Snapshot:
    """The snapshot of a tick, from what the daemon has after deciding (pure)."""
    classes = []
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is not None and s.name in decisions:
            classes += slice_samples(cfg, s, record, decisions[s.name])
    return Snapshot(
        interface=cfg.interface,
        tick_s=cfg.tick_s,
        last_tick=now,
        tick_duration_s=tick_duration_s,
        tick_cpu_s=tick_cpu_s,
        tick_written_bytes=tick_written_bytes,
        classes=tuple(classes),
        errors=dict(errors),
        problems=problems,
        uncounted_bytes=uncounted_bytes,
    )


def slice_samples(
    cfg: Config, s: Slice, record: SliceRecord, decisions: Mapping[int, Decision]
) -> list[ClassSample]:
    """The samples of one slice's classes."""
    out = []
    for dclass, c in enumerate(record.classes):
        d = decisions[dclass]
        quota = s.quota(dclass)
        start, end = record.period_start, record.period_end
        limit = policy.byte_limit(quota, cfg.policy, start, end)
        threshold = policy.threshold_bytes(quota, cfg.policy, start, end)
        out.append(
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
    return out


class Samples(Sequence[ClassSample]):
    """Every slice's samples as of one tick, made when first read (by a scrape or the
    textfile) rather than at the tick: at 10,000 slices all sending they cost ~40 ms, and
    most ticks are never scraped. Made from what the tick hands over, which later ticks
    do not change (ledger records and decisions are replaced, never modified; the mappings
    are copies), so a scrape in the server's thread sees one tick, whole."""

    def __init__(
        self,
        cfg: Config,
        slices: Mapping[str, Slice],
        records: Mapping[str, SliceRecord],
        decisions: Mapping[str, Mapping[int, Decision]],
    ) -> None:
        self._source: tuple[Any, ...] | None = (cfg, slices, records, decisions)
        self._made: tuple[ClassSample, ...] = ()
        self._lock = threading.Lock()

    def _all(self) -> tuple[ClassSample, ...]:
        with self._lock:
            if self._source is not None:
                cfg, slices, records, decisions = self._source
                out: list[ClassSample] = []
                for s in cfg.all_slices():
                    record, by_class = records.get(s.name), decisions.get(s.name)
                    if record is not None and by_class is not None and s.name in slices:
                        out += slice_samples(cfg, s, record, by_class)
                self._made, self._source = tuple(out), None
            return self._made

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> ClassSample: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ClassSample]: ...
    def __getitem__(self, index: int | slice) -> ClassSample | Sequence[ClassSample]:
        return self._all()[index]

    def __iter__(self) -> Iterator[ClassSample]:
        return iter(self._all())


# -- the text exposition format ---------------------------------------------------------------


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    """``{a="x",b="y"}``, names sorted (as Prometheus prints them)."""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"


def _value(value: float) -> str:
    # Integers as integers: exact in the text (the scraper makes a float of it anyway).
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(name: str, samples: list[str]) -> Iterator[str]:
    kind = "counter" if name.endswith("_total") else "gauge"
    help_text = FAMILIES[name].replace("\\", "\\\\").replace("\n", "\\n")
    yield f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
    yield from samples


def render(snap: Snapshot | None, interface: str, version: str = __version__) -> bytes:
    """The exposition of a snapshot (before the first tick: the build info alone)."""
    out = list(
        _family(
            "bwbpf_build_info",
            [f"bwbpf_build_info{_labels(interface=interface, version=version)} 1\n"],
        )
    )
    if snap is not None:
        out += _slice_lines(snap)
        node = _labels(interface=snap.interface)
        out += _family(
            "bwbpf_datapath_errors_total",
            [
                f"bwbpf_datapath_errors_total{_labels(interface=snap.interface, reason=r)} {n}\n"
                for r, n in snap.errors.items()
            ],
        )
        for name, value in (
            ("bwbpf_tick_duration_seconds", snap.tick_duration_s),
            ("bwbpf_tick_cpu_seconds", snap.tick_cpu_s),
            ("bwbpf_tick_written_bytes", snap.tick_written_bytes),
            ("bwbpf_last_tick_timestamp_seconds", snap.last_tick),
            ("bwbpf_tick_interval_seconds", snap.tick_s),
            ("bwbpf_problems", snap.problems),
            ("bwbpf_uncounted_bytes_total", snap.uncounted_bytes),
        ):
            out += _family(name, [f"{name}{node} {_value(value)}\n"])
    return "".join(out).encode()


def _slice_lines(snap: Snapshot) -> Iterator[str]:
    names = [n for n in FAMILIES if n.startswith("bwbpf_slice_")]
    lines: dict[str, list[str]] = {n: [] for n in names}
    for c in snap.classes:
        labels = _labels(interface=snap.interface, slice=c.slice, dclass=c.dclass)
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
        if c.counter_bytes is not None and c.counter_packets is not None:
            values["bwbpf_slice_bytes_total"] = c.counter_bytes
            values["bwbpf_slice_packets_total"] = c.counter_packets
        for name, value in values.items():
            lines[name].append(f"{name}{labels} {_value(value)}\n")
    for name in names:
        yield from _family(name, lines[name])


# -- serving ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """GET of any path: the current exposition (gzipped if the scraper asks for it)."""

    server: _Server

    def do_GET(self) -> None:
        exporter = self.server.exporter
        body, encoding = exporter.rendered, None
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body, encoding = exporter.gzipped(), "gzip"
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Not every scrape in the journal."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, exporter: Exporter) -> None:
        # An IPv6 literal needs an AF_INET6 socket; the class attribute is read on bind.
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.exporter = exporter
        super().__init__((host, port), _Handler)


class Exporter:
    """One daemon's metrics: the current exposition, the HTTP server if one is configured,
    and the textfile."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        # The last tick's snapshot, rendered when a scrape (or the textfile) first asks:
        # a tick only swaps the reference. (snapshot, its exposition or None.)
        self._current: tuple[Snapshot | None, bytes | None] = (None, None)
        self._gzipped: tuple[bytes, bytes] | None = None  # (of these bytes, gzipped)
        self.address: tuple[str, int] | None = None
        # What went wrong the last time the server was (re)started, for `bwbpf stat`.
        self.problems: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def rendered(self) -> bytes:
        """The exposition of the current snapshot. Rendered outside any lock: a scrape
        never holds up a tick, and two scrapes at once at worst render it twice."""
        snap, body = self._current
        if body is None:
            body = render(snap, self.interface)
            if self._current[0] is snap:
                self._current = (snap, body)
            heap.trim()  # what the rendering made and dropped: ~20 MB at 10,000 slices
        return body

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
            server = _Server(host, port, self)
        except OSError as exc:
            problem = f"metrics: cannot listen on {_hostport(host, port)}: {exc.strerror or exc}"
            self.problems = [problem]
            raise Error(problem) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="bwbpf-metrics", daemon=True
        )
        self._thread.start()
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
        the same directory, then rename) if one is given."""
        self._current = (snap, None)
        if textfile is not None:
            from bwbpf.state import write_atomic

            # node_exporter's directory is the operator's to make (and to grant).
            if not os.path.isdir(os.path.dirname(textfile)):
                raise Error(f"metrics: cannot write {textfile}: no such directory")
            try:
                write_atomic(textfile, self.rendered)
            except OSError as exc:
                raise Error(f"metrics: cannot write {textfile}: {exc.strerror or exc}") from None

    def gzipped(self) -> bytes:
        """The current exposition, gzipped: once per tick, for the first scraper asking."""
        rendered, cached = self.rendered, self._gzipped
        if cached is None or cached[0] is not rendered:
            cached = (rendered, gzip.compress(rendered, compresslevel=1))
            self._gzipped = cached
        return cached[1]

    def render(self) -> bytes:
        """The text exposition a scrape gets now."""
        return self.rendered

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
