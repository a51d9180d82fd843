"""Metrics end to end: a daemon in a test namespace serves them on 127.0.0.1 there and writes
a textfile; after known traffic both show the slice's byte counter to the byte."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bwbpf import __version__
from tests.exposition import samples
from tests.helpers import stop, wait_for
from tests.integration.netns import FIRST_TICK_S, REPO, Topology, sh
from tests.integration.test_daemon import UDP4_OVERHEAD

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICE, SLICE_ID = "metered", 11
# Primes, so that no other count of packets or bytes can match by accident.
COUNT, SIZE = 101, 997
SENT_BYTES = COUNT * (SIZE + UDP4_OVERHEAD)
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"


def write_config(path: Path, topo: Topology, port: int, textfile: Path, limit: str = "1GB") -> Path:
    path.write_text(f"""
[node]
interface = "{topo.veth_a}"
line_rate = "1gbit"
node_cap = "500mbit"
tick = "1s"
state_dir = "{path.parent / "state"}"

[metrics]
listen = "127.0.0.1:{port}"
textfile = "{textfile}"
textfile_interval = "1s"

[[slice]]
name = "{SLICE}"
id = {SLICE_ID}
match = {{ src = ["{topo.limited_src_ip}/32"] }}
normal = {{ limit = "{limit}", threshold = 0.5, max_rate = "100mbit" }}
""")
    return path


class Env:
    def __init__(self, tmp: Path, limit: str = "1GB") -> None:
        self.topo = Topology()
        self.tmp = tmp
        # A fresh namespace: any port is free in it.
        self.port = random.randint(20000, 60000)
        self.textfile = tmp / "textfile" / "bwbpf.prom"
        self.config = write_config(tmp / "bwbpf.toml", self.topo, self.port, self.textfile, limit)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    def start_daemon(self) -> None:
        self.textfile.parent.mkdir()
        self.daemon = self.topo.run_daemon(self.config, log=self.log)

    def get(self, url: str) -> str | None:
        """The body of an HTTP GET from inside the daemon's namespace (its 127.0.0.1)."""
        code = (
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"{url!r}, timeout=5).read().decode())"
        )
        result = sh(*self.topo.in_src(sys.executable, "-c", code), check=False, timeout=15)
        return result.stdout if result.returncode == 0 else None

    def scrape(self) -> str | None:
        """GET /metrics from the daemon."""
        assert self.daemon is not None and self.daemon.poll() is None, self.log.read_text()
        return self.get(f"http://127.0.0.1:{self.port}/metrics")

    def read_textfile(self) -> str | None:
        try:
            return self.textfile.read_text()
        except OSError:
            return None

    def cleanup(self) -> None:
        self.topo.teardown()


@contextlib.contextmanager
def made_env(tmp: Path, tools: tuple[str, ...], limit: str = "1GB") -> Iterator[Env]:
    """An Env with its namespaces up, removed afterwards; skips where a tool is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    e = Env(tmp, limit)
    try:
        e.topo.setup()
        yield e
    finally:
        e.cleanup()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with made_env(tmp_path, ("nsenter",)) as e:
        yield e


def tick_after(text: str | None, interface: str, t: float) -> dict | None:
    """The samples of an exposition whose last tick began after ``t``, else None."""
    if not text:
        return None
    got = samples(text)
    last = got.get(("bwbpf_last_tick_timestamp_seconds", frozenset({("interface", interface)})))
    return got if last is not None and last > t else None


def test_scrape_and_textfile_count_every_byte(env: Env) -> None:
    iface = env.topo.veth_a
    env.start_daemon()
    started = time.time()
    wait_for(
        "the first scrape",
        lambda: tick_after(env.scrape(), iface, started - 5),
        timeout=FIRST_TICK_S,
    )

    env.topo.send(env.topo.dst_ip, COUNT, SIZE, src=env.topo.limited_src_ip)
    # Counted at enqueue, in the sending process: after it exits, the counters are final.
    sent_at = time.time()

    key = frozenset({"interface": iface, "slice": SLICE, "dclass": "normal"}.items())
    scraped = wait_for("a tick after the traffic", lambda: tick_after(env.scrape(), iface, sent_at))
    assert scraped[("bwbpf_slice_bytes_total", key)] == SENT_BYTES, env.log.read_text()
    assert scraped[("bwbpf_slice_packets_total", key)] == COUNT
    assert scraped[("bwbpf_slice_period_bytes", key)] == SENT_BYTES
    assert scraped[("bwbpf_slice_capped", key)] == 0
    assert scraped[("bwbpf_slice_limit_bytes", key)] == 1_000_000_000
    assert scraped[("bwbpf_slice_ceiling_bytes_per_second", key)] == 100_000_000 / 8
    node = frozenset({("interface", iface)})
    assert scraped[("bwbpf_problems", node)] == 0
    assert scraped[("bwbpf_tick_interval_seconds", node)] == 1
    assert 0 < scraped[("bwbpf_tick_duration_seconds", node)] < 1
    build = frozenset({"interface": iface, "version": __version__}.items())
    assert scraped[("bwbpf_build_info", build)] == 1
    errors = {k: v for k, v in scraped.items() if k[0] == "bwbpf_datapath_errors_total"}
    assert errors and set(errors.values()) == {0}

    written = wait_for(
        "a textfile after the traffic", lambda: tick_after(env.read_textfile(), iface, sent_at)
    )
    assert written[("bwbpf_slice_bytes_total", key)] == SENT_BYTES
    assert written[("bwbpf_slice_packets_total", key)] == COUNT
    # Only the file itself: the temporary one was renamed over it.
    assert [p.name for p in env.textfile.parent.iterdir()] == ["bwbpf.prom"]

    promtool = shutil.which("promtool")
    if promtool is not None:
        text = env.scrape()
        assert text is not None
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

    # SIGTERM: clean exit, and the endpoint goes away with the daemon.
    assert stop(env.daemon) == 0, env.log.read_text()
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{env.port}/')"
    assert sh(*env.topo.in_src(sys.executable, "-c", code), check=False).returncode != 0


def short_alerts(tmp: Path) -> Path:
    """The shipped alerts.yml with BwbpfSliceCapped's `for: 1m` cut to 5 s, to spare every
    run a minute. When it fires after its `for` is Prometheus's business, and
    alerts_test.yml checks it with the file as shipped (`promtool test rules`)."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    (capped,) = [r for r in rules if r.get("alert") == "BwbpfSliceCapped"]
    capped["for"] = "5s"
    path = tmp / "alerts.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def prometheus_config(tmp: Path, target: str) -> Path:
    """The shipped scrape.yml with the shipped alerts.yml, its fleet job pointed at one test
    node through a file_sd targets file, as an inventory would write it. Only the intervals
    are shortened (and the alert's `for`, see short_alerts)."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "scrape.yml").read_text())
    doc["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(short_alerts(tmp))]
    # Only the fleet job: the static one lists example hosts, unreachable from here.
    fleet = next(job for job in doc["scrape_configs"] if job["job_name"] == "bwbpf-fleet")
    targets = tmp / "targets"
    targets.mkdir()
    (targets / "test-site.yml").write_text(
        yaml.safe_dump([{"targets": [target], "labels": {"site": "test-site"}}])
    )
    fleet["file_sd_configs"][0]["files"] = [str(targets / "*.yml")]
    doc["scrape_configs"] = [fleet]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def firing(env: Env, api: str, alertname: str) -> list[dict]:
    body = env.get(f"{api}/api/v1/alerts")
    if body is None:
        return []
    alerts = json.loads(body)["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@pytest.fixture
def capped_env(tmp_path: Path) -> Iterator[Env]:
    # A 150 kB limit: its 75 kB threshold is below the 105 kB the test sends.
    with made_env(tmp_path, ("nsenter", "prometheus"), limit="150kB") as e:
        yield e


def test_prometheus_alerts_when_a_slice_is_capped(capped_env: Env, tmp_path: Path) -> None:
    """A real Prometheus with the shipped scrape config and alert rules scrapes a daemon whose
    slice passes its threshold: BwbpfSliceCapped fires for that slice, and nothing else."""
    env = capped_env
    env.start_daemon()
    started = time.time()
    wait_for(
        "the first scrape",
        lambda: tick_after(env.scrape(), env.topo.veth_a, started - 5),
        timeout=FIRST_TICK_S,
    )
    api_port = env.port + 1
    api = f"http://127.0.0.1:{api_port}"
    config = prometheus_config(tmp_path, f"127.0.0.1:{env.port}")
    check = sh("promtool", "check", "config", str(config), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    prom_log = tmp_path / "prometheus.log"
    env.topo.background(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
        ],
        log=prom_log,
    )

    # 101 × 1039 bytes = 104,939: past the 75 kB threshold of the 150 kB limit.
    env.topo.send(env.topo.dst_ip, COUNT, SIZE, src=env.topo.limited_src_ip)
    # Pending for the rule's `for` after the first scrape that shows the cap, then firing.
    alerts = wait_for(
        "BwbpfSliceCapped to fire", lambda: firing(env, api, "BwbpfSliceCapped"), timeout=90
    )
    assert [a["labels"]["slice"] for a in alerts] == [SLICE], alerts
    labels = alerts[0]["labels"]
    assert labels["dclass"] == "normal"
    assert labels["severity"] == "info"
    assert labels["instance"] == "127.0.0.1"  # the relabelling drops the port
    assert labels["job"] == "bwbpf-fleet" and labels["site"] == "test-site"
    assert f"Slice {SLICE} is capped on 127.0.0.1" == alerts[0]["annotations"]["summary"]
    # A healthy daemon raises nothing else.
    body = env.get(f"{api}/api/v1/alerts")
    assert body is not None
    others = [a["labels"]["alertname"] for a in json.loads(body)["data"]["alerts"]]
    assert set(others) == {"BwbpfSliceCapped"}, (others, prom_log.read_text()[-2000:])
