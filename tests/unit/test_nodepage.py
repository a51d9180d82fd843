"""The node page's pure parts (routing, the history query, the Host check, the page's
policy), its answers from a fake stat document and a real history file, and the daemon's
listener serving them beside the exposition, over HTTP on loopback."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bwbpf import config, daemon, metrics, nodepage, statserver
from bwbpf.history import Added, PeriodRow, Store
from bwbpf.nodepage import HistoryQuery, QueryError, parse_history_query, route
from tests.helpers import free_port
from tests.unit.test_metrics import FakeCounters, U

# 2026-12-01T00:00:00Z
T0 = 1796083200.0
NOW = T0 + 86400 + 1800

CONFIG = """
[node]
interface = "lo"
tick = "5s"
state_dir = "{tmp}/state"
[metrics]
listen = "{listen}"
{history}
[[slice]]
name = "alice"
id = 5
match = {{ mark = 5 }}
normal = {{ limit = "10MB", threshold = 0.8 }}
[[slice]]
name = "bob"
id = 6
match = {{ mark = 6 }}
"""


def make_config(
    tmp: Path, listen: str = "127.0.0.1:9877", history: str = '[history]\nwrite_interval = "1m"'
) -> config.Config:
    path = tmp / "bwbpf.toml"
    path.write_text(CONFIG.format(tmp=tmp, listen=listen, history=history))
    return config.load(path, check_interface=False)


def fill_history(cfg: config.Config) -> None:
    store, _ = Store.open(cfg.history_path, cfg.interface)
    store.write(
        [
            Added("alice", 0, T0 + 100, 3_000_000, 3000),
            Added("alice", 1, T0 + 86400 + 100, 1_000, 1),
            Added("bob", 0, T0 + 86400 + 200, 9_000, 9),
            Added("gone", 0, T0 + 200, 7, 1),
        ],
        [
            PeriodRow("alice", 0, T0 + 86400, T0 + 2 * 86400, 0, 0),
            PeriodRow("alice", 1, T0 + 86400, T0 + 2 * 86400, 1_000, 1),
        ],
        ZoneInfo("UTC"),
        cfg.history.keep(),
    )
    store.close()


def site_for(cfg: config.Config, status: bytes | None = b'{"slices": []}') -> nodepage.Site:
    return nodepage.Site(lambda _now: status, lambda: cfg)


def get(site: nodepage.Site, target: str, host: str | None = "127.0.0.1:9877") -> nodepage.Response:
    response = site.get(target, host, NOW)
    assert response is not None, target
    return response


def body(response: nodepage.Response) -> dict:
    doc = json.loads(response.body)
    assert isinstance(doc, dict)
    return doc


# -- routing and the query -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "")),
        ("/?from=bookmark", ("/", "from=bookmark")),
        ("/api/status.json", ("/api/status.json", "")),
        ("/api/status.json?t=1", ("/api/status.json", "t=1")),
        ("/api/history.json?res=days&slice=a", ("/api/history.json", "res=days&slice=a")),
        ("http://node:9877/api/history.json?top=3", ("/api/history.json", "top=3")),
        ("/api", ("", "")),
        ("/api/", ("", "")),
        ("/api/status", ("", "")),
        ("/api/status.json/", ("", "")),
        ("/favicon.ico", ("", "")),
        # The exposition's, as every other path always was.
        ("/metrics", None),
        ("/metrics?x=1", None),
        ("/index.html", None),
        ("/apix", None),
        ("*", None),
    ],
)
def test_route(target: str, expected: tuple[str, str] | None) -> None:
    assert route(target) == expected


def test_history_query_defaults_and_values() -> None:
    assert parse_history_query("") == HistoryQuery("hours", None, None, (), None)
    q = parse_history_query("res=days&since=7d&until=2026-12-01&slice=alice&slice=b.c&top=10")
    assert q == HistoryQuery("days", "7d", "2026-12-01", ("alice", "b.c"), 10)
    # A slice named twice is asked for once.
    assert parse_history_query("slice=a&slice=a").slices == ("a",)
    for res in ("5min", "hours", "days", "months", "years", "periods"):
        assert parse_history_query(f"res={res}").res == res


@pytest.mark.parametrize(
    ("query", "parameter", "message"),
    [
        ("res=weeks", "res", r"res 'weeks': not one of 5min, hours, days, months, years"),
        ("res=", "res", "not one of"),
        ("res=hours&res=days", "res", "given more than once"),
        ("top=0", "top", "not a number from 1 to 1000"),
        ("top=1001", "top", "from 1 to 1000"),
        ("top=-3", "top", "not a number"),
        ("top=%EF%BC%91", "top", "not a number"),  # a fullwidth digit, which int() reads
        ("top=1e3", "top", "not a number"),
        ("slice=", "slice", "not a slice name"),
        ("slice=a%20b", "slice", "not a slice name"),
        ("slice=" + "a" * 64, "slice", "not a slice name"),
        ("slice=%FF", "slice", "not a slice name"),
        ("since=", "since", "empty or too long"),
        ("until=" + "1" * 65, "until", "empty or too long"),
        ("sort=name", "sort", r"'sort': no such parameter \(res, since, until, slice, top\)"),
        ("&".join(f"slice=s{i}" for i in range(101)), "slice", "more than 100 slices"),
        ("&".join(["res=hours"] * 201), "query", "more than 200 parameters"),
    ],
)
def test_bad_history_queries_name_the_parameter(query: str, parameter: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as raised:
        parse_history_query(query)
    assert raised.value.parameter == parameter
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "listen", "allowed"),
    [
        ("127.0.0.1:9877", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("localhost:9877", "127.0.0.1", True),
        ("LOCALHOST", "127.0.0.1", True),
        ("node.localhost:1", "127.0.0.1", True),
        ("[::1]:9877", "::1", True),
        ("[::1]:9877", "127.0.0.1", True),
        ("10.1.2.3:9877", "127.0.0.1", True),
        # DNS rebinding: another name pointed at loopback.
        ("evil.example:9877", "127.0.0.1", False),
        ("evil.example", "::1", False),
        ("localhost.evil.example", "localhost", False),
        ("[::1", "127.0.0.1", False),
        ("", "127.0.0.1", False),
        (None, "127.0.0.1", False),
        # A listener on another address is for whoever reaches it.
        ("node7.example.net:9877", "10.1.2.3", True),
        ("node7.example.net:9877", "0.0.0.0", True),
        (None, "10.1.2.3", True),
        ("anything", None, True),
    ],
)
def test_host_check(host: str | None, listen: str | None, allowed: bool) -> None:
    assert nodepage.host_allowed(host, listen) is allowed


def test_the_page_is_allowed_exactly_its_own_style_and_script() -> None:
    page, policy = nodepage._PAGE.get()
    text = page.decode()
    for tag in ("style", "script"):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    # Nothing from elsewhere: no URL on the page but its own API's.
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert re.findall(r"https?://[^\"' )]+", text) == ["http://www.w3.org/2000/svg"]
    # Values a test (or a script) reads carry stable ids and data attributes.
    for name in ("count-slices", "count-capped", "chart-hours", "chart-days", "slices"):
        assert f'id="{name}"' in text


# -- the site's answers --------------------------------------------------------------------


def test_page_status_and_not_found(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    site = site_for(cfg, b'{"the": "document"}')
    page = get(site, "/")
    assert page.status == 200 and page.content_type == nodepage.HTML_TYPE
    assert page.body.startswith(b"<!DOCTYPE html>")
    assert dict(page.headers)["Content-Security-Policy"].startswith("default-src 'none'")
    status = get(site, "/api/status.json")
    # The stat document's bytes as they are, made by no one else.
    assert (status.status, status.body) == (200, b'{"the": "document"}')
    assert dict(status.headers)["Cache-Control"] == "no-store"
    missing = get(site, "/api/nothing")
    assert missing.status == 404 and body(missing) == {"error": "/api/nothing: no such page"}
    assert site.get("/metrics", "127.0.0.1", NOW) is None
    assert site.get("/", "evil.example", NOW) is not None
    assert get(site, "/", "evil.example").status == 403
    assert get(site, "/api/status.json", None).status == 403


def test_status_before_the_first_tick_or_without_counters(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    early = get(site_for(cfg, None), "/api/status.json")
    assert early.status == 503 and "first tick" in body(early)["error"]

    def broken(_now: float) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", "/sys/fs/bpf/bwbpf/lo/counters")

    failed = get(nodepage.Site(broken, lambda: cfg), "/api/status.json")
    assert failed.status == 503
    assert body(failed)["error"] == (
        "no status: No such file or directory: /sys/fs/bpf/bwbpf/lo/counters"
    )


def test_history_node_totals_slice_and_top(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill_history(cfg)
    site = site_for(cfg)
    default = get(site, "/api/history.json")
    assert default.status == 200
    doc = body(default)
    # The node's totals by default, and no slice's rows.
    assert doc["resolution"] == "hours" and doc["slices"] == [] and doc["top"] is None
    assert len(doc["node"]["rows"]) == 24
    assert doc["node"]["total"]["total_bytes"] == 10_000
    days = body(get(site, "/api/history.json?res=days"))
    assert [r["total_bytes"] for r in days["node"]["rows"][-2:]] == [3_000_007, 10_000]
    alice = body(get(site, "/api/history.json?res=days&slice=alice"))
    assert [s["name"] for s in alice["slices"]] == ["alice"]
    assert alice["slices"][0]["total"]["total_bytes"] == 3_001_000
    assert alice["node"] == days["node"]
    # A slice no longer configured keeps its history.
    assert body(get(site, "/api/history.json?res=days&slice=gone"))["slices"][0]["name"] == "gone"
    top = body(get(site, "/api/history.json?res=days&top=2"))
    assert [t["name"] for t in top["top"]] == ["alice", "bob"]
    since = body(get(site, "/api/history.json?res=hours&since=2026-12-01&until=2026-12-01T01:00"))
    assert [r["total_bytes"] for r in since["node"]["rows"]] == [3_000_007]


@pytest.mark.parametrize(
    ("query", "status", "parameter", "message"),
    [
        ("res=weeks", 400, "res", "not one of"),
        ("since=yesterday", 400, "since", "since 'yesterday': not a time"),
        ("until=soon", 400, "until", "until 'soon': not a time"),
        ("since=2026-12-03&until=2026-12-02", 400, "since", "must be before until"),
        ("since=1h&until=2d", 400, "since", "must be before until"),
        ("res=5min&since=60d", 400, "since", "more than 10,000"),
        ("slice=nobody", 404, None, "slice 'nobody': neither configured nor in the history"),
    ],
)
def test_bad_history_requests(
    tmp_path: Path, query: str, status: int, parameter: str | None, message: str
) -> None:
    cfg = make_config(tmp_path)
    fill_history(cfg)
    response = get(site_for(cfg), f"/api/history.json?{query}")
    assert response.status == status
    doc = body(response)
    assert message in doc["error"]
    assert doc.get("parameter") == parameter
    assert response.body.count(b"\n") == 1  # one line


def test_history_off_or_missing(tmp_path: Path) -> None:
    off = make_config(tmp_path, history="[history]\nenabled = false")
    response = get(site_for(off), "/api/history.json")
    assert response.status == 404
    assert body(response) == {"error": "history is off ([history] enabled = false)"}
    missing = make_config(tmp_path)
    response = get(site_for(missing), "/api/history.json")
    assert response.status == 503
    assert "no such file (the daemon writes it)" in body(response)["error"]
    Path(missing.history_path).parent.mkdir()
    Path(missing.history_path).write_bytes(b"\x01" * 5000)
    response = get(site_for(missing), "/api/history.json")
    assert response.status == 503 and "file is not a database" in body(response)["error"]


def test_an_unexpected_failure_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)

    def bug(_now: float) -> bytes:
        raise KeyError("slices")

    response = get(nodepage.Site(bug, lambda: cfg), "/api/status.json")
    assert response.status == 500 and body(response) == {"error": "KeyError: 'slices'"}


# -- over HTTP -----------------------------------------------------------------------------


def request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, config.Config]]:
    """One listener for the module's requests (stopping one takes half a second)."""
    port = free_port()
    cfg = make_config(tmp_path_factory.mktemp("served"), listen=f"127.0.0.1:{port}")
    fill_history(cfg)
    big = json.dumps({"slices": [{"name": f"s{i}"} for i in range(2000)]}).encode()
    with metrics.Exporter("lo", site_for(cfg, big)) as exporter:
        exporter.serve(cfg.metrics)
        yield port, cfg


def test_the_listener_serves_the_page_beside_the_exposition(
    served: tuple[int, config.Config],
) -> None:
    port, _ = served
    status, headers, page = request(port, "GET", "/")
    assert status == 200 and headers["Content-Type"] == nodepage.HTML_TYPE
    assert b"<title>bwbpf node</title>" in page
    for path in ("/metrics", "/other", "/index.html"):
        status, headers, text = request(port, "GET", path)
        assert status == 200 and headers["Content-Type"] == metrics.CONTENT_TYPE
        assert text.startswith(b"# HELP bwbpf_build_info")
    status, headers, doc = request(port, "GET", "/api/history.json?res=days")
    assert status == 200 and json.loads(doc)["node"]["total"]["total_bytes"] == 3_010_007
    status, _, doc = request(port, "GET", "/api/history.json?top=x")
    assert status == 400 and json.loads(doc)["parameter"] == "top"
    status, _, _ = request(port, "GET", "/api/none")
    assert status == 404
    # The document is gzipped for a browser (which asks), never for a client that does not.
    status, headers, packed = request(port, "GET", "/api/status.json", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    status, headers, plain = request(port, "GET", "/api/status.json")
    assert "Content-Encoding" not in headers and gzip.decompress(packed) == plain
    # HEAD: the headers alone.
    status, headers, nothing = request(port, "HEAD", "/api/status.json")
    assert status == 200 and nothing == b"" and int(headers["Content-Length"]) == len(plain)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FROB"])
@pytest.mark.parametrize("path", ["/", "/api/status.json", "/metrics"])
def test_nothing_but_get_and_head(
    served: tuple[int, config.Config], method: str, path: str
) -> None:
    port, _ = served
    status, headers, doc = request(port, method, path, {"Content-Length": "0"})
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert json.loads(doc) == {"error": f"{method}: this listener is read-only (GET, HEAD)"}


def test_a_host_not_of_this_listener_gets_no_page(served: tuple[int, config.Config]) -> None:
    port, _ = served
    for path in ("/", "/api/status.json", "/api/history.json"):
        status, _, doc = request(port, "GET", path, {"Host": f"rebound.example:{port}"})
        assert status == 403 and "this listener answers its address" in json.loads(doc)["error"]
        assert request(port, "GET", path, {"Host": f"localhost:{port}"})[0] == 200
    # Scrapers are answered as before, whatever name they use.
    assert request(port, "GET", "/metrics", {"Host": "rebound.example"})[0] == 200


# -- the daemon's page ---------------------------------------------------------------------


class _Pins:
    """datapath.Counters for the stat answer, with the daemon's fake counters."""

    def __init__(self, fake: FakeCounters) -> None:
        self.fake = fake

    def __call__(self, _pin_dir: str) -> _Pins:
        return self

    def __enter__(self) -> FakeCounters:
        return self.fake

    def __exit__(self, *exc: object) -> None:
        pass


def test_the_daemons_status_document_is_the_stat_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    cfg = make_config(tmp_path, listen=f"127.0.0.1:{port}", history="")
    counters = FakeCounters()
    monkeypatch.setattr(statserver.datapath, "Counters", _Pins(counters))
    monkeypatch.setattr(statserver.datapath, "attached", lambda _ifname: True)
    d = daemon.Daemon(cfg, dry_run=True, counters=lambda _pin_dir: counters)  # type: ignore[arg-type,return-value]
    try:
        d.start()
        status, _, doc = request(port, "GET", "/api/status.json")
        assert status == 503 and b"first tick" in doc
        counters.raw = {0: (U(0, 0), U(0, 0)), 5: (U(4242, 7), U(0, 0)), 6: (U(10, 1), U(20, 2))}
        d.tick(T0)
        status, _, doc = request(port, "GET", "/api/status.json")
        assert status == 200
        got = json.loads(doc)
        view = d.stat_server.view
        assert view is not None
        asked = json.loads(statserver.Answers().answer(view, got["time"]))
        assert got == asked
        alice = {s["name"]: s for s in got["slices"]}["alice"]
        assert alice["classes"]["normal"]["bytes"] == 4242 and alice["notified"] is False
        # A dry run serves no stat socket, but its page shows what it would do.
        assert d.stat_server.path is None
    finally:
        d.stop()
