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
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, overload

from bwbpf import __version__, heap, nodepage, policy
from bwbpf.config import Config, Slice
from bwbpf.config import Metrics as MetricsSettings
from bwbpf.errors import Error
from bwbpf.ledger import Ledger, SliceRecord
from bwbpf.limits import DCLASSES
from bwbpf.policy import Decision

PREFIX = "bwbpf"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Connections served at once (Prometheus, a few browsers on the node page), and how long
# one may stay silent before it is dropped.
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 10.0

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
    return b"".join(render_chunks(snap, interface, version))


def render_chunks(
    snap: Snapshot | None, interface: str, version: str = __version__
) -> Iterator[bytes]:
    """The exposition in pieces of at most CHUNK_LINES lines, made as they are taken: the
    textfile and gzip consume them one by one, so the 220,000 lines of 10,000 slices
    never exist at once (they did, and the daemon's resident memory kept that peak)."""
    yield "".join(
        _family(
            "bwbpf_build_info",
            [f"bwbpf_build_info{_labels(interface=interface, version=version)} 1\n"],
        )
    ).encode()
    if snap is None:
        return
    for chunk in _slice_chunks(snap):
        yield chunk.encode()
    node = _labels(interface=snap.interface)
    out = list(
        _family(
            "bwbpf_datapath_errors_total",
            [
                f"bwbpf_datapath_errors_total{_labels(interface=snap.interface, reason=r)} {n}\n"
                for r, n in snap.errors.items()
            ],
        )
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
    yield "".join(out).encode()


CHUNK_LINES = 2000
# zlib's window bits for a gzip header and trailer (what HTTP's Content-Encoding: gzip is).
GZIP_WBITS = 31

# The per-slice families, each with its value of a sample (None: no sample).
_SLICE_VALUES: tuple[tuple[str, Callable[[ClassSample], float | None]], ...] = (
    ("bwbpf_slice_bytes_total", lambda c: c.counter_bytes if _counted(c) else None),
    ("bwbpf_slice_packets_total", lambda c: c.counter_packets if _counted(c) else None),
    ("bwbpf_slice_period_bytes", lambda c: c.used_bytes),
    ("bwbpf_slice_period_packets", lambda c: c.used_packets),
    ("bwbpf_slice_limit_bytes", lambda c: c.limit_bytes),
    ("bwbpf_slice_threshold_bytes", lambda c: c.threshold_bytes),
    ("bwbpf_slice_ceiling_bytes_per_second", lambda c: c.ceil_bps / 8),
    ("bwbpf_slice_max_rate_bytes_per_second", lambda c: c.max_rate_bps / 8),
    ("bwbpf_slice_capped", lambda c: 1 if c.capped else 0),
    ("bwbpf_slice_period_start_timestamp_seconds", lambda c: c.period_start),
    ("bwbpf_slice_period_end_timestamp_seconds", lambda c: c.period_end),
)


def _counted(c: ClassSample) -> bool:
    """The raw counters are shown only when the ledger holds a reading (a baseline)."""
    return c.counter_bytes is not None and c.counter_packets is not None


def _slice_chunks(snap: Snapshot) -> Iterator[str]:
    """Family by family (the format groups a family's samples), a chunk at a time; each
    sample's labels are made once for all families."""
    classes = list(snap.classes)
    labels = [_labels(interface=snap.interface, slice=c.slice, dclass=c.dclass) for c in classes]
    order = [n for n in FAMILIES if n.startswith("bwbpf_slice_")]
    values = dict(_SLICE_VALUES)
    for name in order:
        value_of = values[name]
        batch = list(_family(name, []))
        for c, label in zip(classes, labels, strict=True):
            value = value_of(c)
            if value is None:
                continue
            batch.append(f"{name}{label} {_value(value)}\n")
            if len(batch) >= CHUNK_LINES:
                yield "".join(batch)
                batch = []
        yield "".join(batch)


# -- serving ----------------------------------------------------------------------------------


# Node page answers larger than this are gzipped for a client that takes gzip: the stat
# document of 10,000 slices is 6.4 MB, 0.3 MB gzipped at level 1 (~35 ms), which matters
# through an SSH tunnel, the way to reach a listener on loopback from elsewhere.
GZIP_OVER = 4096


class _Handler(BaseHTTPRequestHandler):
    """GET (and HEAD) of the node page's paths (bwbpf/nodepage.py) when the exporter has a
    site; of any other path, the current exposition (gzipped if the scraper asks for it).
    Every other method: 405, for every path: nothing here changes anything."""

    server: _Server
    # A client that sends its request too slowly (or nothing) is dropped after this many
    # seconds of silence: it must not hold a thread and a file descriptor of the quota
    # daemon for ever. A scrape sends its request at once.
    timeout = IDLE_TIMEOUT_S

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler looks up do_<METHOD>: any method but GET and HEAD is
        # refused the same way, whatever its name (501 would say it might be one day).
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        # A body it sent is not read: the connection closes after the answer.
        self.close_connection = True
        self._send(nodepage.Site.not_allowed(self.command), head=False)

    def _get(self, head: bool) -> None:
        exporter = self.server.exporter
        site = exporter.site
        if site is not None:
            response = site.get(self.path, self.headers.get("Host"), time.time())
            if response is not None:
                self._send(response, head)
                if response.trim:
                    # What the answer was made of is garbage now (at 10,000 slices the
                    # stat document's 6.4 MB, as text and as bytes): given back to the
                    # kernel rather than left resident until the next large tick trims.
                    del response
                    heap.trim()
                return
        body, encoding = exporter.rendered, None
        if self._takes_gzip():
            body, encoding = exporter.gzipped(), "gzip"
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _takes_gzip(self) -> bool:
        return "gzip" in self.headers.get("Accept-Encoding", "")

    def _send(self, response: nodepage.Response, head: bool) -> None:
        body = response.body
        gzipped = len(body) > GZIP_OVER and self._takes_gzip()
        if gzipped:
            packer = zlib.compressobj(1, zlib.DEFLATED, GZIP_WBITS)
            body = packer.compress(body) + packer.flush()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Not every scrape in the journal."""


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: a connection past them is
    closed at once, so that however many a client opens, the daemon's threads and file
    descriptors (which its state writes and netlink need) stay bounded."""

    daemon_threads = True
    # socketserver's default backlog is 5: a burst of connections (a page's requests, two
    # Prometheus servers) overflowed it, and each connection past it waited 1 s for its SYN
    # to be sent again.
    request_queue_size = 64

    def __init__(self, host: str, port: int, exporter: Exporter) -> None:
        # An IPv6 literal needs an AF_INET6 socket; the class attribute is read on bind.
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.exporter = exporter
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Exporter:
    """One daemon's metrics: the current exposition, the HTTP server if one is configured,
    and the textfile."""

    def __init__(self, interface: str, site: nodepage.Site | None = None) -> None:
        self.interface = interface
        # The node page's endpoints; without a site every path is the exposition.
        self.site = site
        # The last tick's snapshot, rendered when a scrape (or the textfile) first asks:
        # a tick only swaps the reference. (snapshot, its exposition gzipped, or None.)
        # Only the gzipped form is kept between scrapes: at 10,000 slices the text is
        # 19 MB and gzipped 0.7 MB (36 ms at level 1), and every Prometheus asks for gzip.
        self._current: tuple[Snapshot | None, bytes | None] = (None, None)
        self.address: tuple[str, int] | None = None
        # What went wrong the last time the server was (re)started, for `bwbpf stat`.
        self.problems: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def rendered(self) -> bytes:
        """The exposition of the current snapshot. Rendered outside any lock: a scrape
        never holds up a tick, and two scrapes at once at worst render it twice."""
        snap, packed = self._current
        if packed is not None:
            return gzip.decompress(packed)
        return render(snap, self.interface)

    def gzipped(self) -> bytes:
        """The current exposition, gzipped: made once per tick, for the first scraper."""
        snap, packed = self._current
        if packed is None:
            packer = zlib.compressobj(1, zlib.DEFLATED, GZIP_WBITS)
            parts = [packer.compress(chunk) for chunk in render_chunks(snap, self.interface)]
            packed = b"".join([*parts, packer.flush()])
            self._keep(snap, packed)
            heap.trim()  # what the rendering made and dropped: ~20 MB at 10,000 slices
        return packed

    def _write_textfile(self, textfile: str) -> None:
        """The exposition into the textfile a piece at a time; gzipped on the way when
        scrapes will want it before the next tick."""
        from bwbpf.state import write_atomic

        snap, packed = self._current
        packer = None
        if packed is None and self._server is not None:
            packer = zlib.compressobj(1, zlib.DEFLATED, GZIP_WBITS)
        parts: list[bytes] = []

        def pieces() -> Iterator[bytes]:
            for chunk in render_chunks(snap, self.interface):
                if packer is not None:
                    parts.append(packer.compress(chunk))
                yield chunk

        write_atomic(textfile, pieces())
        if packer is not None:
            self._keep(snap, b"".join([*parts, packer.flush()]))

    def _keep(self, snap: Snapshot | None, packed: bytes) -> None:
        if self._current[0] is snap:  # not if a tick published a newer one meanwhile
            self._current = (snap, packed)

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

    @property
    def serving(self) -> bool:
        """Whether an HTTP server is up: then scrapes read the snapshot between ticks."""
        return self._server is not None

    def update(self, snap: Snapshot, textfile: str | None = None, keep: bool = True) -> None:
        """Publish a tick's snapshot; rewrite the textfile (atomically: a temporary file in
        the same directory, then rename) if one is given. Without ``keep`` the snapshot is
        dropped once the textfile is written (for a daemon that serves no scrapes: nothing
        else reads it), and with it the references to the tick's ledger records: at 10,000
        slices all sending, kept, they held a whole tick's records (~4 MB) alive next to
        the next tick's."""
        self._current = (snap, None)
        try:
            if textfile is not None:
                self._textfile(textfile)
        finally:
            if not keep:
                self._current = (None, None)

    def _textfile(self, textfile: str) -> None:
        # node_exporter's directory is the operator's to make (and to grant).
        if not os.path.isdir(os.path.dirname(textfile)):
            raise Error(f"metrics: cannot write {textfile}: no such directory")
        try:
            self._write_textfile(textfile)
        except OSError as exc:
            raise Error(f"metrics: cannot write {textfile}: {exc.strerror or exc}") from None
        finally:
            heap.trim()  # the text is gone: ~20 MB made and dropped at 10,000 slices

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
