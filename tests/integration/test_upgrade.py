"""An upgrade that changes the counters map's layout never resets a quota: a bwbpf built for
another number of slots (tests/integration/oldbwbpf.py) counts real traffic, then this one
moves its map aside, adds what it counted since the last tick to the ledger, and goes on
in a new map; exactly, also across a second start and a `kill -9` between the accounting
and the unpin. A map it cannot read stops it in one line, the ledger untouched."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import config, datapath, state
from tests.helpers import pin_old_map, pinned_shape, stop, stop_cleanly, wait_for
from tests.integration.netns import BWBPF, FIRST_TICK_S, REPO, DaemonEnv, wait_status

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICE_ID = 12
WIRE = 1000  # bytes on the wire of each 958-byte datagram
OLD_SLOTS = 1024  # the old version's counters map; this one has limits.MAX_SLICE_ID + 1
HOLD_US = 120_000_000  # how long strace holds the unlink of the old map's pin


@pytest.fixture
def env(tmp_path: Path) -> Iterator[DaemonEnv]:
    e = DaemonEnv(tmp_path, "bwmg")
    e.config.write_text(f"""
[node]
interface = "{e.topo.veth_a}"
tick = "1s"
state_dir = "{e.state_dir}"
[quota]
period = "1h"
[[slice]]
name = "tenant"
id = {SLICE_ID}
match = {{ src = ["{e.topo.limited_src_ip}/32"] }}
normal = {{ limit = "10MB", max_rate = "100mbit" }}
""")
    with e.made():
        try:
            yield e
        finally:
            e.topo.bwbpf("down", "-c", str(e.config), check=False)


def start(env: DaemonEnv, log: Path) -> subprocess.Popen[bytes]:
    """This version's daemon, once it has ticked: its start (and any accounting of an old
    map) is over. (Its ledger's usage shows in the state file before that.)"""
    proc = env.topo.run_daemon(env.config, log=log)
    env.wait_tick(proc.pid, 0)  # nsenter runs the daemon in its own process
    return proc


def pin_dir(env: DaemonEnv) -> str:
    return config.load(env.config, check_interface=False).pin_dir


def send(env: DaemonEnv, count: int) -> None:
    env.topo.send(env.topo.dst_ip, count, WIRE - 42, src=env.topo.limited_src_ip)


def run_old(env: DaemonEnv, log: Path) -> subprocess.Popen[bytes]:
    """The old version's daemon, until it has ticked once."""
    old = [sys.executable, "-m", "tests.integration.oldbwbpf", str(OLD_SLOTS)]
    proc = env.topo.background([*old, "-v", "run", "-c", str(env.config)], log=log, cwd=REPO)
    wait_status(env.config, "tenant", 0)
    return proc


def counted_by_old(env: DaemonEnv, packets: int) -> int:
    """The old daemon counts ``packets`` datagrams, then stops; returns its map's id."""
    old = run_old(env, env.tmp / "old.log")
    send(env, packets)
    wait_status(env.config, "tenant", packets * WIRE)
    stop_cleanly(old, timeout=15)
    with datapath.RetiredCounters(os.path.join(pin_dir(env), "counters")) as m:
        assert m.slots == OLD_SLOTS  # the old layout, which this bwbpf cannot read in place
        return m.map_id


def saved_usage(env: DaemonEnv) -> int:
    """The tenant's normal bytes in the daemon's state file (read-only)."""
    found = state.read_raw(state.state_file(str(env.state_dir), env.topo.veth_a), env.topo.veth_a)
    return int(found[0]["tenant"]["normal"]["used_bytes"]) if found else -1


def stat_usage(env: DaemonEnv) -> int:
    doc = env.topo.stat(env.config)
    return next(s for s in doc["slices"] if s["name"] == "tenant")["classes"]["normal"]["bytes"]


def counters_shape(env: DaemonEnv) -> tuple[int, int, int, int]:
    return pinned_shape(os.path.join(pin_dir(env), "counters"))


def test_an_upgrade_carries_what_the_old_maps_counted(env: DaemonEnv) -> None:
    old_id = counted_by_old(env, 30)
    send(env, 11)  # after the old daemon's last tick, into the old map
    d = start(env, env.log)
    wait_status(env.config, "tenant", 41 * WIRE)
    assert datapath.retired_pins(pin_dir(env)) == []
    assert counters_shape(env) == datapath.PINNED_MAPS["counters"]
    log = env.log.read_text()
    assert f"accounted the counters map {old_id} of another bwbpf layout" in log
    # The tenant's 11 datagrams, and whatever the default slice sent meanwhile.
    carried = re.search(r"(\d+) bytes since the last reading added to the usage of 2 slices", log)
    assert carried is not None and int(carried[1]) >= 11 * WIRE
    send(env, 7)  # into the new map, from zero
    wait_status(env.config, "tenant", 48 * WIRE)
    assert stat_usage(env) == 48 * WIRE
    stop_cleanly(d, timeout=15)
    # A second start: nothing is accounted again.
    d = start(env, env.tmp / "second.log")
    send(env, 2)
    wait_status(env.config, "tenant", 50 * WIRE)
    assert stat_usage(env) == 50 * WIRE
    assert "accounted the counters map" not in (env.tmp / "second.log").read_text()
    stop_cleanly(d, timeout=15)


def test_up_by_hand_leaves_the_old_map_to_the_daemon(env: DaemonEnv) -> None:
    old = run_old(env, env.tmp / "old.log")
    send(env, 30)
    wait_status(env.config, "tenant", 30 * WIRE)
    # While the old daemon runs, this version's `up` would pull its map from under it.
    refused = env.topo.bwbpf("up", "-c", str(env.config), check=False)
    assert refused.returncode == 1
    assert "restart it" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert counters_shape(env)[3] == OLD_SLOTS  # nothing changed
    stop_cleanly(old, timeout=15)
    send(env, 3)  # into the old map
    up = env.topo.bwbpf("up", "-c", str(env.config))
    (retired,) = datapath.retired_pins(pin_dir(env))
    assert f"wait in {retired}" in up.stdout
    send(env, 5)  # into the new map
    assert stat_usage(env) >= 30 * WIRE  # stat works while the old map waits
    d = start(env, env.log)
    wait_status(env.config, "tenant", 38 * WIRE)
    assert datapath.retired_pins(pin_dir(env)) == []
    stop_cleanly(d, timeout=15)


def daemon_of(tracer: subprocess.Popen[bytes]) -> int:
    """The pid of the daemon strace started (its one child)."""
    path = f"/proc/{tracer.pid}/task/{tracer.pid}/children"

    def child() -> int | None:
        if tracer.poll() is not None:  # (e.g. no strace): fail now, not at the timeout
            raise AssertionError(f"strace ended with {tracer.returncode} before its child")
        with open(path) as f:
            pids = f.read().split()
        return int(pids[0]) if pids else None

    return int(wait_for("strace's child", child))


def test_a_kill_between_accounting_and_unpinning_counts_once(env: DaemonEnv) -> None:
    """strace holds the daemon's unlink of the old map's pin (a delay injected at that one
    syscall, nothing else changed): the state is saved, the pin still there. Killed then,
    the next daemon reads the old map again, at the generation and baselines saved."""
    old_id = counted_by_old(env, 30)
    send(env, 11)
    retired = datapath.retired_pin(pin_dir(env), old_id)
    hold = [
        *("strace", "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-P", retired),
        *("-e", "trace=unlink,unlinkat", "-e", f"inject=unlink,unlinkat:delay_enter={HOLD_US}"),
    ]
    tracer = env.topo.background([*hold, BWBPF, "-v", "run", "-c", str(env.config)], log=env.log)
    pid = daemon_of(tracer)
    try:
        wait_for("the accounting saved", lambda: saved_usage(env) == 41 * WIRE, FIRST_TICK_S)
        assert os.path.exists(retired)  # the unlink is being held
    finally:
        os.kill(pid, signal.SIGKILL)
        stop(tracer)  # strace ends with its tracee
    assert os.path.exists(retired)
    d = start(env, env.tmp / "again.log")
    wait_status(env.config, "tenant", 41 * WIRE)
    assert not os.path.exists(retired)
    assert "0 bytes since the last reading" in (env.tmp / "again.log").read_text()
    send(env, 7)
    wait_status(env.config, "tenant", 48 * WIRE)
    assert saved_usage(env) == 48 * WIRE
    stop_cleanly(d, timeout=15)


def test_a_map_bwbpf_cannot_read_stops_it_in_one_line(env: DaemonEnv) -> None:
    d = start(env, env.log)
    send(env, 30)
    wait_status(env.config, "tenant", 30 * WIRE)
    stop_cleanly(d, timeout=15)
    counters = os.path.join(pin_dir(env), "counters")
    os.unlink(counters)  # (its counts, all in the ledger now, go with it)
    types = "struct other { u64 w[4]; };"
    pin_old_map(counters, 64, "struct other", kind="hash", types=types)
    failed = env.topo.bwbpf("run", "-c", str(env.config), check=False)
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert counters in line and "`bwbpf down` removes it" in line
    assert saved_usage(env) == 30 * WIRE  # nothing of the ledger lost
    env.topo.bwbpf("down", "-c", str(env.config))
    d = start(env, env.tmp / "after.log")
    wait_status(env.config, "tenant", 30 * WIRE)
    send(env, 4)
    wait_status(env.config, "tenant", 34 * WIRE)
    stop_cleanly(d, timeout=15)
