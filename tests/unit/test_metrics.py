"""Metrics: snapshots from the daemon's data, their exposition (checked by promtool), the
HTTP server and textfile, and the alert rules and dashboard in deploy/prometheus."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bwbpf import __version__, config, daemon, metrics, periods
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.limits import ERROR_REASONS
from tests.exposition import samples
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"
NORMAL, EXEMPT = 0, 1
T0 = 1_000_000.0

CONFIG = """
[node]
interface = "lo"
tick = "5s"
state_dir = "{state_dir}"

[quota]
policy = "{policy}"
period = "1000s"

[defaults]
normal = {{ limit = "10MB", threshold = 0.8, max_rate = "1mbit", avg_rate = "40kbit" }}
exempt = {{ limit = "20MB", threshold = 0.5, max_rate = "1gbit", min_rate = "8bit" }}

{metrics}

[[slice]]
name = "alice"
id = 5
match = {{ mark = 5 }}
"""


@dataclass(frozen=True)
class U:
    bytes: int
    packets: int


class FakeCounters:
    """Stands in for datapath.Counters: the daemon's kernel calls, without a kernel."""

    generation = "fake"

    def __init__(self) -> None:
        self.raw: dict[int, tuple[U, U]] = {}
        self.errs = dict.fromkeys(ERROR_REASONS, 0)

    def read(self, slice_ids: object) -> dict[int, tuple[U, U]]:
        return dict(self.raw)

    def errors(self) -> dict[str, int]:
        return dict(self.errs)

    def close(self) -> None:
        pass


def make_config(
    tmp_path: Path, policy: str = "smooth", metrics_toml: str = '[metrics]\nlisten = ""'
) -> config.Config:
    path = tmp_path / "bwbpf.toml"
    path.write_text(
        CONFIG.format(state_dir=tmp_path / "state", policy=policy, metrics=metrics_toml)
    )
    return config.load(path, check_interface=False)


def account(cfg: config.Config, ledger: Ledger, now: float, raw: dict) -> None:
    ledger.update(
        now,
        daemon.readings(cfg, raw),
        lambda _n, start: periods.current_period(cfg.period, now, start),
    )


def ticked(cfg: config.Config) -> tuple[Ledger, daemon.Decisions]:
    """alice past her normal threshold (capped), nothing exempt; the default slice idle."""
    ledger = Ledger()
    ledger.counters_restarted()  # new maps: the first readings are all new traffic
    account(cfg, ledger, T0, {5: (U(9_000_000, 6001), U(1500, 3))})
    return ledger, daemon.decide_all(cfg, ledger, T0)


def labels(slice_name: str, dclass: str) -> frozenset:
    return frozenset({"interface": "lo", "slice": slice_name, "dclass": dclass}.items())


def promtool(
    *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """promtool with args, run in deploy/prometheus/ (skips the test where it is missing)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; make setup)")
    return subprocess.run(
        [path, *args], cwd=DEPLOY, input=stdin, capture_output=True, text=True, timeout=timeout
    )


# -- snapshots and their exposition ----------------------------------------------------------


def test_snapshot_from_ledger_and_decisions(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ledger, decisions = ticked(cfg)
    snap = metrics.snapshot(
        cfg, ledger, decisions, {"truncated": 2}, now=T0, tick_duration_s=0.25, problems=1
    )
    assert snap.interface == "lo" and snap.tick_s == 5 and snap.last_tick == T0
    by = {(c.slice, c.dclass): c for c in snap.classes}
    assert set(by) == {
        ("default", "normal"),
        ("default", "exempt"),
        ("alice", "normal"),
        ("alice", "exempt"),
    }
    alice = by[("alice", "normal")]
    assert (alice.counter_bytes, alice.counter_packets) == (9_000_000, 6001)
    assert (alice.used_bytes, alice.used_packets) == (9_000_000, 6001)
    assert (alice.limit_bytes, alice.threshold_bytes) == (10_000_000, 8_000_000)
    assert alice.capped and alice.ceil_bps == decisions["alice"][NORMAL].ceil_bps
    assert alice.ceil_bps < alice.max_rate_bps == 1_000_000
    start, end = ledger.period("alice")
    assert (alice.period_start, alice.period_end) == (start, end) and end - start == 1000
    exempt = by[("alice", "exempt")]
    assert (exempt.counter_bytes, exempt.used_bytes, exempt.capped) == (1500, 1500, False)
    assert (exempt.limit_bytes, exempt.threshold_bytes) == (20_000_000, 10_000_000)


def test_average_policy_reports_its_budget_as_limit_and_threshold(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, policy="average")
    ledger, decisions = ticked(cfg)
    snap = metrics.snapshot(cfg, ledger, decisions, {}, now=T0, tick_duration_s=0.0)
    alice = next(c for c in snap.classes if (c.slice, c.dclass) == ("alice", "normal"))
    # 40 kbit/s × 1000 s / 8 = 5 MB, which alice passed.
    assert alice.limit_bytes == alice.threshold_bytes == 5_000_000
    assert alice.capped and alice.ceil_bps == 40_000


def test_exposition_has_exact_values_and_labels(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ledger, decisions = ticked(cfg)
    errors = {"truncated": 0, "counter_lookup": 7, "slice_out_of_range": 0}
    exporter = metrics.Exporter("lo")
    exporter.update(
        metrics.snapshot(
            cfg,
            ledger,
            decisions,
            errors,
            now=T0 + 0.5,
            tick_duration_s=0.125,
            tick_cpu_s=0.0625,
            tick_written_bytes=4096,
            problems=2,
            uncounted_bytes=17714,
        )
    )
    text = exporter.render().decode()
    got = samples(text)
    ceil_bps = decisions["alice"][NORMAL].ceil_bps
    start, end = ledger.period("alice")
    alice, alice_x = labels("alice", "normal"), labels("alice", "exempt")
    expected = {
        ("bwbpf_build_info", frozenset({"interface": "lo", "version": __version__}.items())): 1,
        ("bwbpf_slice_bytes_total", alice): 9_000_000,
        ("bwbpf_slice_packets_total", alice): 6001,
        ("bwbpf_slice_bytes_total", alice_x): 1500,
        ("bwbpf_slice_packets_total", alice_x): 3,
        ("bwbpf_slice_period_bytes", alice): 9_000_000,
        ("bwbpf_slice_period_packets", alice): 6001,
        ("bwbpf_slice_limit_bytes", alice): 10_000_000,
        ("bwbpf_slice_threshold_bytes", alice): 8_000_000,
        ("bwbpf_slice_ceiling_bytes_per_second", alice): ceil_bps / 8,
        ("bwbpf_slice_max_rate_bytes_per_second", alice): 125_000,
        ("bwbpf_slice_capped", alice): 1,
        ("bwbpf_slice_capped", alice_x): 0,
        ("bwbpf_slice_ceiling_bytes_per_second", alice_x): 125_000_000,
        ("bwbpf_slice_period_start_timestamp_seconds", alice): start,
        ("bwbpf_slice_period_end_timestamp_seconds", alice): end,
        ("bwbpf_slice_bytes_total", labels("default", "normal")): 0,
        ("bwbpf_slice_capped", labels("default", "exempt")): 0,
        ("bwbpf_tick_duration_seconds", frozenset({("interface", "lo")})): 0.125,
        ("bwbpf_tick_cpu_seconds", frozenset({("interface", "lo")})): 0.0625,
        ("bwbpf_tick_written_bytes", frozenset({("interface", "lo")})): 4096,
        ("bwbpf_last_tick_timestamp_seconds", frozenset({("interface", "lo")})): T0 + 0.5,
        ("bwbpf_tick_interval_seconds", frozenset({("interface", "lo")})): 5,
        ("bwbpf_problems", frozenset({("interface", "lo")})): 2,
        ("bwbpf_uncounted_bytes_total", frozenset({("interface", "lo")})): 17714,
    }
    for reason, count in errors.items():
        key = frozenset({"interface": "lo", "reason": reason}.items())
        expected[("bwbpf_datapath_errors_total", key)] = count
    for key, value in expected.items():
        assert got.get(key) == value, key
    # Four classes × (2 counters + 9 gauges), 3 error reasons, build info, 6 daemon gauges
    # and the uncounted bytes.
    assert len(got) == 4 * 11 + 3 + 1 + 6 + 1
    # The literal lines a scraper sees, labels sorted, types declared.
    assert 'bwbpf_slice_bytes_total{dclass="normal",interface="lo",slice="alice"} 9000000' in text
    assert "# TYPE bwbpf_slice_bytes_total counter" in text
    assert "# TYPE bwbpf_slice_capped gauge" in text
    assert 'bwbpf_datapath_errors_total{interface="lo",reason="counter_lookup"} 7' in text
    # Every family the module declares is exposed, and nothing else.
    assert {name for name, _ in got} == set(metrics.FAMILIES)


def test_large_counters_survive_the_text_format_exactly() -> None:
    # Floats hold integers exactly up to 2**53 bytes (9 PB): far beyond any counter here.
    big = 2**53 - 1
    sample = metrics.ClassSample("s", "normal", big, 3, big, 3, 10, 8, 8, 8, False, 0.0, 1.0)
    exporter = metrics.Exporter("eth0")
    exporter.update(metrics.Snapshot("eth0", 10, 1.0, 0.0, (sample,)))
    got = samples(exporter.render().decode())
    key = frozenset({"interface": "eth0", "slice": "s", "dclass": "normal"}.items())
    assert int(got[("bwbpf_slice_bytes_total", key)]) == big


def test_before_the_first_tick_only_build_info() -> None:
    text = metrics.Exporter("eth0").render().decode()
    assert [name for name, _ in samples(text)] == ["bwbpf_build_info"]


def test_class_without_a_counter_reading_has_no_counter_sample() -> None:
    sample = metrics.ClassSample("s", "exempt", None, None, 0, 0, 10, 8, 8, 8, False, 0.0, 1.0)
    exporter = metrics.Exporter("eth0")
    exporter.update(metrics.Snapshot("eth0", 10, 1.0, 0.0, (sample,)))
    names = {name for name, _ in samples(exporter.render().decode())}
    assert "bwbpf_slice_bytes_total" not in names
    assert "bwbpf_slice_period_bytes" in names


def test_promtool_check_metrics_accepts_the_exposition(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ledger, decisions = ticked(cfg)
    exporter = metrics.Exporter("lo")
    exporter.update(
        metrics.snapshot(
            cfg, ledger, decisions, dict.fromkeys(ERROR_REASONS, 0), now=T0, tick_duration_s=0.1
        )
    )
    result = promtool("check", "metrics", stdin=exporter.render().decode())
    # promtool exits non-zero on both errors and lint problems, and prints them.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


# -- textfile and HTTP ------------------------------------------------------------------------


def test_textfile_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "bwbpf-lo.prom"
    path.parent.mkdir()
    exporter = metrics.Exporter("lo")
    snap = metrics.Snapshot("lo", 10, T0, 0.0)
    exporter.update(snap, str(path))
    first = path.read_text()
    assert first == exporter.render().decode()
    inode = path.stat().st_ino
    exporter.update(metrics.Snapshot("lo", 10, T0 + 10, 0.0), str(path))
    # A new file renamed over the old one (readers never see a half-written file).
    assert path.stat().st_ino != inode
    assert 'bwbpf_last_tick_timestamp_seconds{interface="lo"} 1000010.0' in path.read_text()
    assert os.listdir(path.parent) == ["bwbpf-lo.prom"]  # no temporary file left behind


def test_many_slices_are_rendered_and_written_in_pieces(tmp_path: Path) -> None:
    """Thousands of samples come in chunks of CHUNK_LINES lines (never all at once); the
    pieces make the same exposition, the textfile gets it whole, and with a server the
    gzipped form is made on the way and served from then on."""
    snap = metrics.Snapshot(
        "lo",
        10,
        T0,
        0.0,
        tuple(
            metrics.ClassSample(f"s{i}", d, i, 1, i, 1, 10, 8, 8, 8, i % 2 == 0, 0.0, 1.0)
            for i in range(3000)
            for d in ("normal", "exempt")
        ),
    )
    pieces = list(metrics.render_chunks(snap, "lo"))
    text = b"".join(pieces)
    assert max(piece.count(b"\n") for piece in pieces) <= metrics.CHUNK_LINES + 2
    assert len(pieces) > 11  # more than one piece per family
    got = samples(text.decode())
    assert len(got) == 11 * 6000 + 1 + 7  # 11 families per class, build info, node gauges
    assert got[("bwbpf_slice_capped", labels("s2", "exempt"))] == 1.0
    path = tmp_path / "bwbpf-lo.prom"
    with metrics.Exporter("lo") as exporter:
        exporter.serve(config.Metrics("127.0.0.1", free_port(), None))
        exporter.update(snap, str(path))
        assert path.read_bytes() == text
        kept = exporter.gzipped()
        assert gzip.decompress(kept) == text
        assert exporter.gzipped() is kept  # made once for the tick, not for each scrape
        assert exporter.render() == text


def test_a_snapshot_not_kept_is_written_then_dropped(tmp_path: Path) -> None:
    """A daemon that serves no scrapes keeps no snapshot (nor the ledger records in it)
    after writing the textfile."""
    snap = metrics.Snapshot("lo", 10, T0, 0.0, problems=3)
    path = tmp_path / "bwbpf-lo.prom"
    exporter = metrics.Exporter("lo")
    assert not exporter.serving
    exporter.update(snap, str(path), keep=False)
    assert path.read_bytes() == metrics.render(snap, "lo")
    assert exporter.render() == metrics.render(None, "lo")
    with metrics.Exporter("lo") as served:
        served.serve(config.Metrics("127.0.0.1", free_port(), None))
        assert served.serving


def test_textfile_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    exporter = metrics.Exporter("lo")
    with pytest.raises(Error, match=r"metrics: cannot write .*missing/bwbpf.prom"):
        exporter.update(metrics.Snapshot("lo", 10, T0, 0.0), str(tmp_path / "missing/bwbpf.prom"))
    assert os.listdir(tmp_path) == []


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_http_server_serves_the_current_snapshot_and_stops() -> None:
    port = free_port()
    settings = config.Metrics("127.0.0.1", port, None)
    with metrics.Exporter("lo") as exporter:
        exporter.serve(settings)
        assert exporter.address == ("127.0.0.1", port)
        exporter.serve(settings)  # the same address again: nothing to do
        assert "bwbpf_build_info" in scrape(port)
        exporter.update(metrics.Snapshot("lo", 10, T0, 0.0, problems=3))
        assert 'bwbpf_problems{interface="lo"} 3' in scrape(port)
        # A reload that moves the server.
        other = free_port()
        exporter.serve(config.Metrics("127.0.0.1", other, None))
        assert "bwbpf_problems" in scrape(other)
        with pytest.raises(OSError):
            scrape(port)
        exporter.serve(None)
        assert exporter.address is None
        with pytest.raises(OSError):
            scrape(other)


def test_gzip_for_scrapers_that_ask_and_ipv6() -> None:
    snap = metrics.Snapshot("lo", 10, T0, 0.0, problems=4)
    host = "::1" if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6") else "127.0.0.1"
    port = free_port()
    with metrics.Exporter("lo") as exporter:
        exporter.serve(config.Metrics(host, port, None))
        exporter.update(snap)
        url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/"
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Type"] == metrics.CONTENT_TYPE
            body = gzip.decompress(response.read())
        assert body == exporter.render() == metrics.render(snap, "lo")
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Encoding"] is None
            assert response.read() == body


def test_label_values_are_escaped() -> None:
    odd = 'a"b\\c\nd'
    sample = metrics.ClassSample(odd, "normal", 1, 1, 1, 1, 10, 8, 8, 8, False, 0.0, 1.0)
    got = samples(
        metrics.render(metrics.Snapshot("e\\0", 10, 1.0, 0.0, (sample,)), "e\\0").decode()
    )
    key = frozenset({"interface": "e\\0", "slice": odd, "dclass": "normal"}.items())
    assert got[("bwbpf_slice_bytes_total", key)] == 1


def test_address_in_use_is_a_problem_not_a_crash() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with metrics.Exporter("lo") as exporter:
            with pytest.raises(Error, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
                exporter.serve(config.Metrics("127.0.0.1", port, None))
            assert exporter.problems and exporter.address is None
            # listen = "" (not served) clears the problem.
            exporter.serve(config.Metrics(None, 0, None))
            assert exporter.problems == []


def test_daemon_publishes_each_tick(tmp_path: Path) -> None:
    """The daemon's tick (dry run, fake counters: no kernel) feeds HTTP and the textfile."""
    port = free_port()
    textfile = tmp_path / "node_exporter" / "bwbpf-lo.prom"
    textfile.parent.mkdir()
    cfg = make_config(
        tmp_path, metrics_toml=f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"'
    )
    counters = FakeCounters()
    d = daemon.Daemon(cfg, dry_run=True, counters=lambda _pin_dir: counters)  # type: ignore[arg-type,return-value]
    try:
        d.start()
        counters.raw = {5: (U(4242, 7), U(0, 0))}
        counters.errs["truncated"] = 11
        d.tick(T0)
        first = textfile.read_text()
        counters.raw = {5: (U(5000, 9), U(0, 0))}
        d.tick(T0 + 5)
        # Scrapes see every tick; the textfile is rewritten once textfile_interval (60 s
        # by default) has passed since it was written.
        assert textfile.read_text() == first
        assert 'slice="alice"} 5000' in scrape(port)
        d.tick(T0 + 60)
        assert textfile.read_text() != first
        for text in (scrape(port), textfile.read_text()):
            got = samples(text)
            assert got[("bwbpf_slice_bytes_total", labels("alice", "normal"))] == 5000
            assert got[("bwbpf_slice_period_packets", labels("alice", "normal"))] == 9
            key = frozenset({"interface": "lo", "reason": "truncated"}.items())
            assert got[("bwbpf_datapath_errors_total", key)] == 11
            assert got[("bwbpf_last_tick_timestamp_seconds", frozenset({("interface", "lo")}))] == (
                T0 + 60
            )
            assert got[("bwbpf_problems", frozenset({("interface", "lo")}))] == 0
        assert d.tick_problems == []
    finally:
        d.stop()
    with pytest.raises(OSError):
        scrape(port)


def test_daemon_without_metrics_section_serves_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, metrics_toml="")
    assert cfg.metrics is None
    d = daemon.Daemon(cfg, dry_run=True, counters=lambda _pin_dir: FakeCounters())  # type: ignore[arg-type,return-value]
    try:
        d.start()
        d.tick(T0)
        assert d.exporter.address is None
        assert d.exporter.render() == metrics.render(None, "lo")  # no tick published
    finally:
        d.stop()


# -- deploy/prometheus ------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_alert_rule_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_scrape_config() -> None:
    result = promtool("check", "config", "scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr


METRIC_NAME = re.compile(r"\bbwbpf_[a-z_]+")


def dashboard_exprs() -> list[str]:
    doc = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_and_alerts_use_only_exposed_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    texts = [*exprs, (DEPLOY / "alerts.yml").read_text()]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used, "no bwbpf metric referenced"
    assert used <= set(metrics.FAMILIES), used - set(metrics.FAMILIES)
    # Every panel query carries a bwbpf metric.
    assert all(METRIC_NAME.search(e) for e in exprs)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    rules = []
    for i, expr in enumerate(e for e in dashboard_exprs() if not e.startswith("label_values")):
        query = (
            expr.replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$slice", ".*")
        )
        assert "$" not in query, query
        rules.append({"record": f"bwbpf:dashboard_query_{i}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _closed_by_server(conn: socket.socket) -> bool:
    conn.settimeout(0.01)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False  # held open by a thread of the server


def test_connections_past_the_limit_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many connections a client opens and leaves silent, the daemon holds at most
    MAX_CONNECTIONS of them (a thread and a descriptor each); the others it closes."""
    monkeypatch.setattr(metrics, "MAX_CONNECTIONS", 4, raising=False)
    monkeypatch.setattr(metrics._Handler, "timeout", 60.0)
    port = free_port()
    with metrics.Exporter("lo") as exporter:
        exporter.serve(config.Metrics("127.0.0.1", port, None))
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            wait_for(
                "16 connections closed by the server",
                lambda: sum(map(_closed_by_server, idle)) >= 16,
                timeout=20,
            )
            assert threading.active_count() <= threads + 4
        finally:
            for conn in idle:
                conn.close()
        # The held ones end with their clients: scrapes are served again.
        assert "bwbpf_build_info" in scrape(port)


def test_a_silent_connection_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 0 < metrics._Handler.timeout <= 30  # by default too, not only in this test
    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)
    port = free_port()
    with metrics.Exporter("lo") as exporter:
        exporter.serve(config.Metrics("127.0.0.1", port, None))
        with socket.create_connection(("127.0.0.1", port)) as conn:
            wait_for("the server to drop it", lambda: _closed_by_server(conn), timeout=10)
