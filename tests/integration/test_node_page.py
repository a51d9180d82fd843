"""The node page end to end: a real daemon on a veth pair between two namespaces, real
traffic from one of them, and the daemon's listener (127.0.0.1 in the daemon's namespace)
asked for its documents, then a real browser (headless Chromium) showing them.

One daemon serves the module's tests: a slice past its limit (capped and mailed), one
sending within its quota and one idle. Every name made starts with "bwpg"."""

from __future__ import annotations

import html
import html.parser
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bwbpf.units import format_bytes, format_rate
from tests.helpers import wait_for
from tests.integration.netns import FIRST_TICK_S, DaemonEnv, sh
from tests.integration.test_daemon import UDP4_OVERHEAD

pytestmark = [pytest.mark.root, pytest.mark.integration]

# alpha goes past its 5 kB limit in one burst (capped, then mailed); beta sends within its
# quota; gamma sends nothing. Primes: no other count of bytes matches by accident.
ALPHA_COUNT, ALPHA_SIZE = 11, 701
BETA_COUNT, BETA_SIZE = 7, 293
ALPHA_BYTES = ALPHA_COUNT * (ALPHA_SIZE + UDP4_OVERHEAD)
BETA_BYTES = BETA_COUNT * (BETA_SIZE + UDP4_OVERHEAD)
ARTEFACTS = Path("/tmp/bwbpf-artefacts")
CHROMIUM = "chromium"

# An HTTP request from inside the daemon's namespace, where its 127.0.0.1 is: the answer's
# status, headers and body as one JSON line.
REQUEST = """
import http.client, json, sys
method, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
conn.request(method, target, headers={"Content-Length": "0"} if method != "GET" else {})
r = conn.getresponse()
print(json.dumps({"status": r.status, "headers": dict(r.getheaders()),
                  "body": r.read().decode("utf-8", "replace")}))
"""


class Env(DaemonEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "bwpg")
        # Fresh namespaces: any port is free in them.
        self.port = random.randint(20000, 40000)
        self.smtp_port = self.port + 1
        self.maildir = tmp / "maildir"

    def write_config(self) -> None:
        topo = self.topo
        self.config.write_text(f"""
[node]
interface = "{topo.veth_a}"
tick = "1s"
state_dir = "{self.state_dir}"

[quota]
period = "1d"

[metrics]
listen = "127.0.0.1:{self.port}"

[history]
write_interval = "1s"

[notify]
smtp = "127.0.0.1:{self.smtp_port}"
from = "bwbpf@example.org"
operator = "ops@example.org"
slice_address = "{{slice}}@example.org"

[[slice]]
name = "alpha"
id = 11
match = {{ src = ["{topo.alt_src_ip}/32"] }}
normal = {{ limit = "5kB", threshold = 0.5, max_rate = "100mbit" }}

[[slice]]
name = "beta"
id = 12
match = {{ mark = 12 }}
normal = {{ limit = "1GB", max_rate = "50mbit" }}

[[slice]]
name = "gamma"
id = 13
match = {{ mark = 13 }}
""")

    def request(self, target: str, method: str = "GET") -> dict[str, Any]:
        done = sh(
            *self.topo.in_src(sys.executable, "-c", REQUEST, method, str(self.port), target),
            timeout=30,
        )
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def get_json(self, target: str) -> tuple[int, Any]:
        answer = self.request(target)
        assert answer["headers"]["Content-Type"] == "application/json", answer
        return answer["status"], json.loads(answer["body"])

    def stat(self) -> dict[str, Any]:
        """`bwbpf stat --json`, as an operator runs it (it asks the daemon's socket)."""
        return self.topo.stat(self.config)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in doc["slices"]}


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without what moves between two reads a tick apart."""
    doc = dict(doc)
    doc.pop("time")
    doc["daemon"] = {k: v for k, v in doc["daemon"].items() if k != "last_tick"}
    return doc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("node-page"))
    with e.made():
        e.write_config()
        e.topo.background(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{e.smtp_port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(e.maildir),
            ],
            log=e.tmp / "smtp.log",
        )
        daemon = e.topo.run_daemon(e.config, log=e.log)
        e.wait_tick(daemon.pid, 0)
        e.topo.send(e.topo.dst_ip, ALPHA_COUNT, ALPHA_SIZE, src=e.topo.alt_src_ip)
        e.topo.send(e.topo.dst_ip, BETA_COUNT, BETA_SIZE, mark=12)

        def settled() -> bool:
            assert daemon.poll() is None, e.log.read_text()
            slices = by_name(e.stat())
            alpha, beta = slices["alpha"], slices["beta"]
            return (
                alpha["classes"]["normal"]["bytes"] == ALPHA_BYTES
                and alpha["capped"]
                and alpha["notified"]
                and beta["classes"]["normal"]["bytes"] == BETA_BYTES
            )

        wait_for("alpha capped and mailed, beta's bytes counted", settled, timeout=FIRST_TICK_S)
        yield e


def test_the_status_document_is_stats(env: Env) -> None:
    # Both are the daemon's answer from its last tick: equal but for the time, and a tick
    # may come between the two reads (then read both again).
    for _ in range(20):
        asked = env.stat()
        status, served = env.get_json("/api/status.json")
        assert status == 200
        if comparable(served) == comparable(asked):
            break
    assert comparable(served) == comparable(asked)
    slices = by_name(served)
    assert set(slices) == {"default", "alpha", "beta", "gamma"}
    alpha = slices["alpha"]
    assert alpha["capped"] and alpha["notified"] and alpha["classes"]["normal"]["capped"]
    assert alpha["classes"]["normal"]["bytes"] == ALPHA_BYTES
    assert slices["beta"]["classes"]["normal"]["bytes"] == BETA_BYTES
    assert not slices["beta"]["capped"] and not slices["beta"]["notified"]
    assert slices["gamma"]["classes"]["normal"]["bytes"] == 0
    assert served["daemon"]["running"] and served["classifier_attached"]


def test_the_history_has_the_traffic(env: Env) -> None:
    def alpha_written() -> dict[str, Any] | None:
        status, doc = env.get_json("/api/history.json?res=hours&slice=alpha")
        assert status == 200, doc
        total = doc["slices"][0]["total"]["normal_bytes"] if doc["slices"] else 0
        return doc if total == ALPHA_BYTES else None

    doc = wait_for("alpha's bytes in the history", alpha_written, timeout=FIRST_TICK_S)
    (alpha,) = doc["slices"]
    assert alpha["period"]["normal"]["bytes"] == ALPHA_BYTES
    assert alpha["period"]["normal"]["limit_bytes"] == 5000
    # The node's totals: every hour of the last day, beta's bytes and the default slice's
    # (whatever the kernel sent itself) as well.
    assert len(doc["node"]["rows"]) == 24
    assert doc["node"]["total"]["normal_bytes"] >= ALPHA_BYTES + BETA_BYTES
    status, days = env.get_json("/api/history.json?res=days")
    assert status == 200 and days["slices"] == [] and len(days["node"]["rows"]) == 30
    assert days["node"]["total"]["normal_bytes"] >= ALPHA_BYTES + BETA_BYTES
    status, top = env.get_json("/api/history.json?res=days&top=3")
    assert status == 200
    ranked = {t["name"]: t for t in top["top"]}
    # The default slice may have some bytes of the kernel's own too.
    assert top["top"][0]["name"] == "alpha" and ranked["beta"]["normal_bytes"] == BETA_BYTES


@pytest.mark.parametrize(
    ("target", "status", "parameter"),
    [
        ("/api/history.json?res=weeks", 400, "res"),
        ("/api/history.json?top=0", 400, "top"),
        ("/api/history.json?since=tomorrow", 400, "since"),
        ("/api/history.json?slice=no%20such", 400, "slice"),
        ("/api/history.json?colour=red", 400, "colour"),
        ("/api/history.json?slice=nobody", 404, None),
        ("/api/nothing.json", 404, None),
    ],
)
def test_bad_requests(env: Env, target: str, status: int, parameter: str | None) -> None:
    got, doc = env.get_json(target)
    assert got == status and set(doc) <= {"error", "parameter"} and doc["error"]
    assert doc.get("parameter") == parameter


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("target", ["/", "/api/status.json", "/api/history.json", "/metrics"])
def test_nothing_changes_the_node(env: Env, method: str, target: str) -> None:
    answer = env.request(target, method)
    assert answer["status"] == 405 and answer["headers"]["Allow"] == "GET, HEAD"


def test_the_page_and_the_exposition_side_by_side(env: Env) -> None:
    page = env.request("/")
    assert page["status"] == 200 and page["headers"]["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page["headers"]["Content-Security-Policy"]
    assert "<title>bwbpf node</title>" in page["body"]
    scraped = env.request("/metrics")
    assert scraped["status"] == 200
    line = (
        f'bwbpf_slice_period_bytes{{dclass="normal",interface="{env.topo.veth_a}",'
        f'slice="alpha"}} {ALPHA_BYTES}\n'
    )
    assert line in scraped["body"]


# -- a browser -----------------------------------------------------------------------------


class Shown(html.parser.HTMLParser):
    """What a dumped DOM shows: for each slice row (``data-slice``) and for the elements
    with an id, every ``data-field``'s value and text, and the attributes of each."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                      "meta", "source", "track", "wbr"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, dict[str, Any]] = {}
        self._open: list[tuple[str, dict[str, str | None], list[str], str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        a = dict(attrs)
        row = a.get("data-slice") if tag == "tr" else None
        if row is None and self._open:
            row = self._open[-1][3]
        if tag == "tr" and row is not None:
            self.rows[row] = {"attrs": a, "fields": {}}
        self._open.append((tag, a, [], row))

    def handle_data(self, data: str) -> None:
        for _tag, _a, text, _row in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, a, text, row = self._open.pop()
            shown = {"value": a.get("data-value"), "text": " ".join("".join(text).split())}
            if a.get("id"):
                self.ids[str(a["id"])] = {**shown, "attrs": a}
            if a.get("data-field") and row is not None and row in self.rows:
                self.rows[row]["fields"][a["data-field"]] = shown
            if open_tag == tag:
                break


def chromium(env: Env, url: str, *args: str) -> str:
    """Headless Chromium in the daemon's namespace, on a profile of its own; its stdout."""
    profile = env.tmp / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(env.topo.in_src(*cmd), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def browser() -> None:
    # The VM tier (make vm-test) has no browser; make setup installs it on the host.
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs it on the host)")


def shown(env: Env, fragment: str = "") -> Shown:
    page = Shown()
    dom = chromium(env, f"http://127.0.0.1:{env.port}/{fragment}", "--dump-dom")
    page.feed(dom)
    page.close()
    assert page.ids["interface"]["text"] == env.topo.veth_a, dom[:2000]
    return page


@pytest.mark.usefixtures("browser")
def test_the_browser_shows_what_stat_says(env: Env, tmp_path: Path) -> None:
    for _ in range(5):
        before = env.stat()
        page = shown(env)
        after = env.stat()
        if comparable(before) == comparable(after):
            break
    doc = after
    assert page.ids["count-slices"]["value"] == str(len(doc["slices"]))
    capped = sum(1 for s in doc["slices"] if s["capped"])
    assert page.ids["count-capped"]["value"] == str(capped) == "1"
    assert page.ids["count-notified"]["value"] == "1"
    assert page.ids["daemon-pid"]["value"] == str(doc["daemon"]["pid"])
    assert page.ids["daemon-state"]["text"] == "running"
    # Capped first: alpha is the table's first row.
    assert next(iter(page.rows)) == "alpha"
    assert set(page.rows) == {s["name"] for s in doc["slices"]}
    for s in doc["slices"]:
        row = page.rows[s["name"]]
        assert row["attrs"]["data-capped"] == str(s["capped"]).lower(), s["name"]
        assert row["attrs"]["data-notified"] == str(s["notified"]).lower(), s["name"]
        fields = row["fields"]
        assert fields["name"]["text"] == s["name"]
        assert fields["capped"]["value"] == str(s["capped"]).lower()
        assert (fields["capped"]["text"] == "capped") == s["capped"]
        for dclass, c in s["classes"].items():
            for key in ("bytes", "limit_bytes"):
                shown_value = fields[f"{dclass}.{key}"]
                assert shown_value["value"] == str(c[key]), (s["name"], dclass, key)
                # As `bwbpf stat` prints it, to the character.
                assert shown_value["text"] == format_bytes(c[key]), (s["name"], dclass, key)
            assert fields[f"{dclass}.threshold_bytes"]["value"] == str(c["threshold_bytes"])
            assert fields[f"{dclass}.capped"]["value"] == str(c["capped"]).lower()
            ceil = fields[f"{dclass}.ceil_bps"]
            assert ceil["value"] == ("" if c["ceil_bps"] is None else str(c["ceil_bps"]))
            if c["ceil_bps"] is not None:
                assert ceil["text"] == format_rate(c["ceil_bps"])
        assert float(fields["period_end"]["value"]) == s["period_end"]
    alpha = page.rows["alpha"]["fields"]
    assert alpha["capped"]["text"] == "capped" and alpha["notified"]["text"] == "mailed"
    assert page.rows["beta"]["fields"]["notified"]["text"] == "–"

    # The charts: the node's hours and days, as the history says.
    status, hours = env.get_json("/api/history.json?res=hours")
    assert status == 200
    assert page.ids["chart-hours"]["attrs"]["data-total"] == str(
        hours["node"]["total"]["total_bytes"]
    )
    assert int(str(page.ids["chart-days"]["attrs"]["data-total"])) >= ALPHA_BYTES + BETA_BYTES

    # A screenshot for a person to look at.
    shot = tmp_path / "node-page.png"
    chromium(env, f"http://127.0.0.1:{env.port}/", f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.stat().st_size > 10_000
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / "node-page.png")


@pytest.mark.usefixtures("browser")
def test_the_browser_filters_and_shows_a_slices_own_charts(env: Env) -> None:
    page = shown(env, "#q=bet")
    assert set(page.rows) == {"beta"}
    assert page.ids["page-where"]["text"] == "1–1 of 1"
    page = shown(env, "#slice=alpha")
    assert page.ids["what-hours"]["text"] == "hourly · slice alpha"
    assert page.ids["chart-hours"]["attrs"]["data-total"] == str(ALPHA_BYTES)
    assert "selected" in str(page.rows["alpha"]["attrs"].get("class"))
    assert page.ids["show-node"]["attrs"].get("disabled") is None


# Values whose formatting rounds at a tie (1.25 kB, 0.0625 Mbit/s), or just off one, or
# crosses a unit: where JavaScript's toFixed and Python's format differ unless the page
# rounds as Python does.
BYTES = [0, 1, 999, 1000, 1049, 1050, 1150, 1250, 1350, 1750, 2250, 999_950, 999_999,
         10**6, 125_000, 5_400_000_000, 16_400_000_000, 12_345_678_901_234]  # fmt: skip
RATES = [8, 999, 1000, 1500, 62_500, 1_062_500, 1_000_500, 100_000_000, 1_234_567,
         10**9, 2_500_000_000, 10**12]  # fmt: skip


@pytest.mark.usefixtures("browser")
def test_the_page_prints_numbers_as_stat_does(tmp_path: Path) -> None:
    """The page's own formatting functions, run by the browser on values chosen to round at
    a tie, against bwbpf.units."""
    text = (Path(__file__).resolve().parents[2] / "bwbpf" / "web" / "index.html").read_text()
    start, end = text.index("function pyFixed("), text.index("function pad(")
    page = tmp_path / "numbers.html"
    page.write_text(
        "<!DOCTYPE html><html><body><pre id=out></pre><script>"
        + text[start:end]
        + f"document.getElementById('out').textContent = JSON.stringify("
        f"[{BYTES}.map(fmtBytes), {RATES}.map(fmtRate)]);</script></body></html>"
    )
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    cmd += ["--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run(
        [*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = html.unescape(done.stdout.split('<pre id="out">')[1].split("</pre>")[0])
    shown_bytes, shown_rates = json.loads(found)
    assert shown_bytes == [format_bytes(n) for n in BYTES]
    assert shown_rates == [format_rate(n) for n in RATES]
