"""The daemon end to end: real traffic crosses a slice's threshold, the ceiling drops to the
predicted value in HTB, one mail reaches a real SMTP server, and a `kill -9` loses no byte."""

from __future__ import annotations

import mailbox
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bwbpf import classid, config, limits, state, status
from bwbpf.shaper import Shaper, installed_rate
from tests.helpers import read_json, stop, wait_for
from tests.integration.netns import FIRST_TICK_S, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICE, SLICE_ID = "limited", 9
NORMAL = limits.DCLASS_NORMAL
LIMIT_BYTES = 300_000
THRESHOLD_BYTES = 150_000
# Ethernet 14 + IPv4 20 + UDP 8 around every datagram (see test_datapath.py).
UDP4_OVERHEAD = 42
# 160 × 1042 = 166,720 bytes: past the threshold, short of the limit.
BURST_COUNT, BURST_SIZE = 160, 1000
# Sent while the daemon is dead: 7 × 542 = 3,794 bytes.
EXTRA_COUNT, EXTRA_SIZE = 7, 500


def write_config(path: Path, topo: Topology, smtp_port: int) -> Path:
    path.write_text(f"""
[node]
interface = "{topo.veth_a}"
line_rate = "1gbit"
node_cap = "500mbit"
tick = "1s"
state_dir = "{path.parent / "state"}"

[quota]
period = "2m"

[notify]
smtp = "127.0.0.1:{smtp_port}"
from = "bwbpf@example.org"
operator = "ops@example.org"
slice_address = "{{slice}}@example.org"

[[slice]]
name = "{SLICE}"
id = {SLICE_ID}
match = {{ src = ["{topo.limited_src_ip}/32"] }}
normal = {{ limit = "300kB", threshold = 0.5, max_rate = "100mbit", min_rate = "8bit" }}
""")
    return path


def with_slices(doc: dict, config_path: Path) -> dict:
    """A status file's document with each slice's usage at that tick (status.read)."""
    cfg = config.load(config_path, check_interface=False)
    st = status.read(cfg)
    return {**doc, "slices": {} if st is None else st.slices}


class Env:
    def __init__(self, tmp: Path) -> None:
        self.topo = Topology()
        self.tmp = tmp
        self.port = random.randint(20000, 60000)
        self.maildir = tmp / "maildir"
        self.config = write_config(tmp / "bwbpf.toml", self.topo, self.port)
        self.state_dir = tmp / "state"
        self.status_path = self.state_dir / f"{self.topo.veth_a}.status.json"
        self.smtp: subprocess.Popen[bytes] | None = None

    def start_smtp(self) -> None:
        # Inside the source namespace, where the daemon's 127.0.0.1 is.
        self.smtp = subprocess.Popen(
            self.topo.in_src(
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(self.maildir),
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "smtp.log", "wb"),  # noqa: SIM115 - closed with the process
        )

    def mails(self) -> list[Any]:
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(str(self.maildir), create=False))

    def start_daemon(self) -> subprocess.Popen[bytes]:
        return self.topo.run_daemon(
            self.config, log=self.tmp / f"daemon{len(self.topo.processes)}.log"
        )

    def wait_tick(self, proc: subprocess.Popen[bytes], after: float) -> dict:
        """The status file of proc's first tick after time ``after``, with its slices
        (from the ledger's state file, as `bwbpf stat` reads them)."""

        def ticked() -> dict | None:
            assert proc.poll() is None, f"daemon exited: {self.daemon_log()}"
            doc = read_json(self.status_path)
            if doc and doc["pid"] == proc.pid and doc["last_tick"] > after:
                return with_slices(doc, self.config)
            return None

        # Generous: a daemon's start compiles the classifier, slow under software emulation.
        return wait_for("a daemon tick", ticked, timeout=FIRST_TICK_S)

    def daemon_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("daemon*.log")))

    def send(self, count: int, size: int) -> None:
        self.topo.send(self.topo.dst_ip, count, size, src=self.topo.limited_src_ip)

    def cleanup(self) -> None:
        stop(self.smtp)
        self.topo.teardown()
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter is not installed")
    e = Env(tmp_path)
    try:
        e.topo.setup()
        e.start_smtp()
        yield e
    finally:
        e.cleanup()


def test_cap_mail_and_kill_9(env: Env) -> None:
    handle = classid.slice_class(SLICE_ID, NORMAL)
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)

    env.send(BURST_COUNT, BURST_SIZE)
    sent = BURST_COUNT * (BURST_SIZE + UDP4_OVERHEAD)
    assert THRESHOLD_BYTES < sent < LIMIT_BYTES

    # The ceiling drops to what is left of the limit spread over what is left of the period.
    # Mailed in the same tick, from a child process: compared below only once that is done.
    def capped() -> dict | None:
        doc = env.topo.stat(env.config)
        s = {x["name"]: x for x in doc["slices"]}[SLICE]
        low = s["classes"]["normal"]["ceil_bps"] < 1_000_000
        return doc if s["capped"] and low and s["notified"] else None

    doc = wait_for("the slice to be capped and mailed", capped)
    s = {x["name"]: x for x in doc["slices"]}[SLICE]
    assert s["classes"]["normal"]["bytes"] == sent
    assert s["period_end"] - s["period_start"] == 120
    assert not s["classes"]["exempt"]["capped"]
    # `stat SLICE` reads that slice alone (its classes one request each, its line of the
    # state file): the same entry as the whole listing's, but for the ceiling's ramp.
    [one] = env.topo.stat(env.config, SLICE)["slices"]
    for dname in ("normal", "exempt"):
        alone, listed = one["classes"][dname], s["classes"][dname]
        assert alone["ceil_bps"] == pytest.approx(listed["ceil_bps"], rel=0.05)
        assert {**alone, "ceil_bps": 0} == {**listed, "ceil_bps": 0}
    assert {**one, "classes": None} == {**s, "classes": None}
    # What the daemon decided at one tick, and what HTB holds: exactly that.
    tick, htb_ceil = env.topo.tick_in_force(env.config, SLICE)
    entry = tick["slices"][SLICE]
    normal = entry["classes"]["normal"]
    assert normal["bytes"] == sent and normal["capped"]
    predicted = (LIMIT_BYTES - sent) * 8 / (entry["period_end"] - tick["last_tick"])
    assert normal["ceil_bps"] == pytest.approx(predicted, rel=0.01), env.daemon_log()
    assert htb_ceil == installed_rate(normal["ceil_bps"])

    # Exactly one mail, and no second one a few ticks later.
    wait_for("the mail", env.mails)
    time.sleep(3)
    mails = env.mails()
    assert len(mails) == 1, [m["Subject"] for m in mails]
    mail = mails[0]
    assert mail["Subject"].startswith(f"bwbpf capped bandwidth of slice {SLICE}")
    assert f"{SLICE}@example.org" in mail["To"] and "ops@example.org" in mail["To"]
    assert f"The slice {SLICE} has transmitted" in mail.get_payload()

    # Someone removes the tree: it is back within a tick, the slice still capped.
    sh(*env.topo.in_src("tc", "qdisc", "del", "dev", env.topo.veth_a, "root"))
    env.wait_tick(daemon, time.time())
    with Shaper(env.topo.veth_a, netns=env.topo.src_ns) as shaper:
        assert shaper.root_is_ours()
        assert shaper.classes()[handle].ceil_bps < 1_000_000

    # SIGHUP with a broken config: every problem logged, the old config kept.
    good = env.config.read_text()
    env.config.write_text(good.replace('tick = "1s"', 'tick = "soon"'))
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload error", lambda: "reload: keeping" in env.daemon_log())
    env.config.write_text(good)
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded" in env.daemon_log(), timeout=FIRST_TICK_S)
    assert "node.tick" in env.daemon_log()
    env.wait_tick(daemon, time.time())

    # kill -9, traffic while nobody watches, restart: every byte counted exactly once.
    killed_at = time.time()
    stop(daemon, signal.SIGKILL)
    env.send(EXTRA_COUNT, EXTRA_SIZE)
    sent += EXTRA_COUNT * (EXTRA_SIZE + UDP4_OVERHEAD)
    daemon = env.start_daemon()
    status = env.wait_tick(daemon, killed_at)
    classes = status["slices"][SLICE]["classes"]["normal"]
    assert classes["bytes"] == sent, env.daemon_log()
    assert status["problems"] == []
    ledger = state.read_state(
        str(env.state_dir / f"ledger-{env.topo.veth_a}.json"), env.topo.veth_a
    )
    assert ledger is not None and ledger.usage(SLICE, NORMAL) == sent
    # Still one mail: the notified flag survived the kill.
    env.wait_tick(daemon, time.time() + 1)
    assert len(env.mails()) == 1

    # A second daemon on the same interface refuses with one line.
    second = env.topo.bwbpf("run", "-c", str(env.config), "--once", check=False)
    assert second.returncode == 1
    assert "another bwbpf daemon is already running" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr

    # SIGTERM: exit 0, shaping left in place.
    assert stop(daemon) == 0, env.daemon_log()
    with Shaper(env.topo.veth_a, netns=env.topo.src_ns) as shaper:
        assert shaper.classes()[handle].ceil_bps < 1_000_000
