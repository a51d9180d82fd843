"""Kernel state that changes under bwbpf: reloads that must not leak, a netns without
bpffs, pins and filters removed by someone else, cgroups that come and go."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import bpfsys, datapath, limits
from tests.conftest import unique
from tests.faults.common import FaultEnv
from tests.helpers import read_json, stop, wait_for
from tests.integration.netns import BWBPF, sh

pytestmark = [pytest.mark.root, pytest.mark.faults]


def _slices(first_id: int, count: int, octet: int) -> str:
    """count slices matched by mark, one with a source prefix so the match maps differ."""
    out = []
    for i in range(count):
        sid = first_id + i
        out.append(f'[[slice]]\nname = "s{sid}"\nid = {sid}\nmatch = {{ mark = {sid} }}\n')
    return "\n".join(out)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


RELOADS = 50


def test_reloads_do_not_leak(env: FaultEnv) -> None:
    """SIGHUP 50 times, alternating between two sets of 1,000 slices (each reload replaces
    every slice's HTB classes and match entries): fds flat, RSS bounded."""
    octet = env.topo.octet
    set_a = _slices(100, 1000, octet)
    set_b = _slices(2000, 1000, octet)
    env.write_config(set_a, tick="30s")
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)

    def reload(n: int, slices: str) -> None:
        env.write_config(slices, tick="30s")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(
            f"reload {n}",
            lambda: env.daemon_log().count("reloaded ") >= n and daemon.poll() is None,
            timeout=60,
        )

    def settled() -> tuple[int, int]:
        """(fds, RSS) once a tick has run since the last reload: a reload closes the
        daemon's kept netlink socket for HTB (an epoll and four sockets) and the next
        tick opens it again, so a count taken in between is five fds short."""
        env.wait_tick(daemon, time.time(), timeout=90)
        return _fds(daemon.pid), _rss_kib(daemon.pid)

    reload(1, set_b)
    fds_first, rss_first = settled()
    for n in range(2, RELOADS + 1):
        reload(n, set_a if n % 2 == 0 else set_b)
    fds_last, rss_last = settled()
    print(f"fds {fds_first} -> {fds_last}; RSS {rss_first} -> {rss_last} KiB")
    assert fds_last <= fds_first + 2, (fds_first, fds_last)
    assert rss_last - rss_first < 20 * 1024, (rss_first, rss_last)
    assert stop(daemon) == 0, env.daemon_log()


def test_up_in_ip_netns_exec_mounts_bpffs(env: FaultEnv) -> None:
    """`ip netns exec` shows a fresh sysfs whose /sys/fs/bpf is no bpffs: up mounts one
    (one line on stderr), and down removes what up installed."""
    env.write_config("")
    ns = env.topo.src_ns
    up = sh("ip", "netns", "exec", ns, BWBPF, "up", "-c", str(env.config), check=False)
    assert up.returncode == 0, up.stderr
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1 and "mounted one there" in lines[0], up.stderr
    assert "classifier attached" in up.stdout
    qdiscs = sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", env.topo.veth_a).stdout
    assert "htb 1:" in qdiscs
    assert (
        "bwbpf_egress"
        in sh("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", env.topo.veth_a).stdout
    )
    down = sh("ip", "netns", "exec", ns, BWBPF, "down", "-c", str(env.config), check=False)
    assert down.returncode == 0, down.stderr
    qdiscs = sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", env.topo.veth_a).stdout
    assert "htb" not in qdiscs


SLICE = "tenant"
SLICE_ID = 7


def _slice_bytes(env: FaultEnv, name: str = SLICE) -> int:
    doc = env.topo.stat(env.config)
    s = {x["name"]: x for x in doc["slices"]}[name]
    return int(s["classes"]["normal"]["bytes"])


def _wait_charged(env: FaultEnv, expected: int, what: str) -> None:
    """Until the slice's usage is ``expected``; its last value in the failure."""
    seen: list[int] = []
    try:
        wait_for(what, lambda: seen.append(_slice_bytes(env)) or seen[-1] == expected)
    except AssertionError:
        raise AssertionError(f"{what}: the slice was charged {seen[-1:]}, not {expected}") from None


@contextlib.contextmanager
def _paused(env: FaultEnv, daemon: subprocess.Popen[bytes]) -> Iterator[None]:
    """The daemon stopped (SIGSTOP, by its pid) just after a tick, and continued after:
    the classifier removed inside stays missing until the test's traffic has passed,
    however slowly the sender starts, instead of being restored by a tick in between.
    (Stopped inside a tick, between its datapath check and its counter reading, the gap
    would be taken for counted traffic: a tick in progress cannot see what it has
    already checked.)"""
    env.wait_tick(daemon, time.time())
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(daemon.pid, signal.SIGCONT)


def _pinned_map_id(path: Path) -> int:
    fd = bpfsys.obj_get(str(path))
    try:
        return int(bpfsys.map_info(fd).id)
    finally:
        os.close(fd)


def _filter_shown(env: FaultEnv) -> bool:
    out = sh(*env.topo.in_src("tc", "filter", "show", "dev", env.topo.veth_a)).stdout
    return "bwbpf_egress" in out


def _uncounted_logged(env: FaultEnv) -> list[int]:
    """Every gap the daemon logged, in bytes."""
    return [int(n) for n in re.findall(r"(\d+) bytes passed uncounted", env.daemon_log())]


def _stray_bytes(env: FaultEnv, rx0: int, wire0: int) -> int:
    """Bytes the far end received since (rx0, wire0) that were no datagram of the test's:
    frames the device sent besides them (none expected: see netns.py)."""
    return (env.peer_rx_bytes() - rx0) - (env.received_wire() - wire0)


def _nothing_lost(env: FaultEnv, rx0: int, wire0: int) -> int:
    """Every byte the receiver got is charged to the slice or reported as uncounted; the
    uncounted total. Stray frames the device sent during a gap (none expected) would be in
    the uncounted total without reaching the receiver's socket: the far end's own counter
    bounds them."""
    charged, uncounted = _slice_bytes(env), env.topo.stat(env.config)["daemon"]["uncounted_bytes"]
    received = env.received_wire() - wire0
    strays = _stray_bytes(env, rx0, wire0)
    assert received <= charged + uncounted <= received + strays, (
        f"charged {charged} + uncounted {uncounted}, received {received} (+ {strays} stray)"
    )
    return int(uncounted)


def test_pins_and_filter_removed_under_the_daemon(env: FaultEnv) -> None:
    topo = env.topo
    env.write_config(
        f'[[slice]]\nname = "{SLICE}"\nid = {SLICE_ID}\n'
        f'match = {{ src = ["{topo.limited_src_ip}/32"] }}\n',
        tick="2s",
    )
    rx0, wire0 = env.peer_rx_bytes(), env.received_wire()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    sent = env.send(11, 1000)
    env.wait_counted(sent, SLICE)
    counters_id = _pinned_map_id(env.pin_dir / "counters")

    # Someone removes the pins: back within two ticks, the same maps, counting on.
    for pin in env.pin_dir.iterdir():
        pin.unlink()
    removed_at = time.time()
    env.wait_tick(daemon, removed_at)
    env.wait_tick(daemon, time.time())
    assert (env.pin_dir / "counters").exists(), env.daemon_log()
    assert _pinned_map_id(env.pin_dir / "counters") == counters_id
    assert (env.pin_dir / "errors").exists()
    sent += env.send(13, 1000)
    env.wait_counted(sent, SLICE)
    assert "pinned the maps again" in env.daemon_log()

    # Someone deletes the filter, and traffic passes while it is gone: restored at the next
    # tick, the gap reported as uncounted bytes (the device counted it, bwbpf did not).
    # The receiver got the gap's datagrams; the slice is not charged for them.
    with _paused(env, daemon):
        sh(*topo.in_src("tc", "filter", "del", "dev", topo.veth_a, "parent", "1:"))
        gap = env.send(17, 1000)
        assert env.wait_received(sent + gap) == sent + gap
    resumed_at = time.time()
    wait_for("the filter restored", lambda: _filter_shown(env), timeout=10)
    env.wait_tick(daemon, resumed_at)
    found = _uncounted_logged(env)
    assert len(found) == 1, env.daemon_log()
    # The gap's frames, plus whatever else the device sent meanwhile (none expected).
    strays = _stray_bytes(env, rx0, wire0)
    assert gap <= found[0] <= gap + strays, (found, gap, strays)
    # And shown where operators look: `bwbpf stat` (and the metrics, from the same number).
    shown = topo.stat(env.config)["daemon"]
    assert shown["uncounted_bytes"] == found[0], shown
    assert f"UNCOUNTED: {found[0]}" in topo.bwbpf("stat", "-c", str(env.config)).stdout
    # Counting goes on after the restore, the gap not in the slice's usage: what the slice
    # was charged and what passed uncounted are what the receiver got.
    sent += env.send(5, 1000)
    assert env.wait_received(sent + gap) == sent + gap
    _wait_charged(env, sent, "the third burst counted")
    assert _nothing_lost(env, rx0, wire0) == found[0]

    # The root qdisc replaced by another (the filter goes with it): restored too, and
    # reported; the receiver got the datagrams sent in between, and they are in the
    # uncounted total.
    with _paused(env, daemon):
        sh(*topo.in_src("tc", "qdisc", "replace", "dev", topo.veth_a, "root", "pfifo"))
        second = env.send(3, 1000)
        assert env.wait_received(sent + gap + second) == sent + gap + second
    gap += second
    wait_for("the filter restored", lambda: _filter_shown(env), timeout=10)
    wait_for("the second gap reported", lambda: len(_uncounted_logged(env)) >= 2)
    found = _uncounted_logged(env)
    assert len(found) == 2, env.daemon_log()
    strays = _stray_bytes(env, rx0, wire0)
    assert second <= found[1] <= second + strays, (found, second, strays)
    sent += env.send(2, 1000)
    assert env.wait_received(sent + gap) == sent + gap
    _wait_charged(env, sent, "the fourth burst counted")
    uncounted = _nothing_lost(env, rx0, wire0)
    assert uncounted == sum(found), (uncounted, found)

    # The uncounted total is kept in the state file: a restart reports the same total.
    assert stop(daemon) == 0, env.daemon_log()
    saved = env.ledger()
    assert saved is not None and saved.uncounted_bytes == uncounted
    daemon = env.start_daemon()
    env.wait_tick(daemon, time.time())
    after = topo.stat(env.config)
    assert after["daemon"]["uncounted_bytes"] == uncounted, after["daemon"]
    assert "UNCOUNTED: " in topo.bwbpf("stat", "-c", str(env.config)).stdout
    # And the restarted daemon charges on from where the first one stopped.
    sent += env.send(7, 1000)
    assert env.wait_received(sent + gap) == sent + gap
    _wait_charged(env, sent, "the burst after the restart counted")
    assert _nothing_lost(env, rx0, wire0) == uncounted
    assert stop(daemon) == 0, env.daemon_log()


# A new socket per datagram: a socket keeps the cgroup it was made in (sk_cgrp_data), so
# only sockets made after the move into the cgroup carry its id.
SENDER = """
import socket, sys, time
dst, size, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while True:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x" * size, (dst, 9))
    time.sleep(gap)
"""


def _move(pid: int, cgroup: Path) -> None:
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


def _own_cgroup(pid: int, mount: Path) -> Path:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return mount / line.strip()[3:].lstrip("/")
    raise AssertionError(f"process {pid} is in no cgroup v2")


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    mount = Path(datapath.cgroup2_mount())
    path = mount / unique("bwkcg")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()


def test_cgroup_made_after_start_and_remade(env: FaultEnv, cgroup_dir: Path) -> None:
    mount = Path(datapath.cgroup2_mount())
    topo = env.topo
    env.write_config(
        f'[[slice]]\nname = "{SLICE}"\nid = {SLICE_ID}\nmatch = {{ cgroup = "{cgroup_dir}" }}\n'
    )
    rx0, wire0 = env.peer_rx_bytes(), env.received_wire()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    assert _slice_bytes(env) == 0
    sender = topo.background(
        [sys.executable, "-c", SENDER, topo.dst_ip, "100", "0.02"], log=env.tmp / "sender.log"
    )
    home = _own_cgroup(sender.pid, mount)
    try:
        # The cgroup appears after the daemon started: its traffic counts within two ticks.
        cgroup_dir.mkdir()
        _move(sender.pid, cgroup_dir)
        moved_at = time.time()
        env.wait_tick(daemon, moved_at)
        env.wait_tick(daemon, time.time())
        first = wait_for("the cgroup's traffic counted", lambda: _slice_bytes(env), timeout=10)
        assert f"cgroup {cgroup_dir} exists now" in env.daemon_log()

        # Removed: logged once, not at every tick, and not an error.
        _move(sender.pid, home)
        cgroup_dir.rmdir()
        for _ in range(3):
            env.wait_tick(daemon, time.time())
        text = env.daemon_log()
        # Once when it went (the config's and up's warnings at start aside).
        assert text.count("counts to the default slice until it exists") == 1, text
        doc = read_json(env.status_path)
        assert doc is not None and doc["problems"] == [], doc

        # Made again (a new inode, so a new id): counted again.
        before = _slice_bytes(env)
        assert before >= first
        cgroup_dir.mkdir()
        _move(sender.pid, cgroup_dir)
        wait_for("the new cgroup's traffic counted", lambda: _slice_bytes(env) > before)
    finally:
        stop(sender)
    # Wherever the sender's cgroup was, each datagram the receiver got is charged once:
    # to the slice, or to the default slice while the cgroup was missing. Two ticks after
    # the sender stopped, the ledger has read the counters of its last datagram.
    env.wait_tick(daemon, time.time())
    env.wait_tick(daemon, time.time())
    charged = _slice_bytes(env) + _slice_bytes(env, limits.DEFAULT_SLICE_NAME)
    received, strays = env.received_wire() - wire0, _stray_bytes(env, rx0, wire0)
    assert received > first
    assert received <= charged <= received + strays, (charged, received, strays)
    assert stop(daemon) == 0, env.daemon_log()


def test_one_interface_one_owner(env: FaultEnv) -> None:
    """A second configuration with another state_dir, or another bpffs, on an interface
    whose classifier is the first one's: refused with one line, nothing changed."""
    topo = env.topo
    first = env.write_config("")
    other_state = env.tmp / "other-state"
    second = env.tmp / "second.toml"
    second.write_text(first.read_text().replace(str(env.state_dir), str(other_state)))
    bpffs = Path("/sys/fs/bpf") / unique("bwkfs")
    third = env.tmp / "third.toml"
    third.write_text(first.read_text().replace("[node]\n", f'[node]\nbpffs = "{bpffs}"\n', 1))
    try:
        assert topo.bwbpf("up", "-c", str(first)).returncode == 0
        assert topo.bwbpf("up", "-c", str(first)).returncode == 0  # idempotent
        attached = sh(*topo.in_src("tc", "filter", "show", "dev", topo.veth_a)).stdout
        for cfg in (second, third):
            refused = topo.bwbpf("up", "-c", str(cfg), check=False)
            assert refused.returncode == 1, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert "another bwbpf's" in refused.stderr
        daemon = topo.bwbpf("run", "-c", str(second), "--once", check=False)
        assert daemon.returncode == 1, daemon.stderr
        assert "another bwbpf's" in daemon.stderr
        assert len(daemon.stderr.strip().splitlines()) == 1, daemon.stderr
        # The first owner's classifier is the one still attached.
        assert sh(*topo.in_src("tc", "filter", "show", "dev", topo.veth_a)).stdout == attached
        assert topo.bwbpf("down", "-c", str(first)).returncode == 0
        assert topo.bwbpf("up", "-c", str(second)).returncode == 0  # free again
        assert topo.bwbpf("down", "-c", str(second)).returncode == 0
    finally:
        datapath.remove_pins(f"{bpffs}/bwbpf/{topo.veth_a}")
        with contextlib.suppress(OSError):
            bpffs.rmdir()
        shutil.rmtree(other_state, ignore_errors=True)


def test_take_over_leaves_the_first_daemon_hands_off(env: FaultEnv) -> None:
    """`up --take-over` from another configuration while the first one's daemon runs: the
    new classifier stays, and the old daemon neither restores its own nor shapes; it says
    so in stat."""
    topo = env.topo
    first = env.write_config("")
    other_state = env.tmp / "other-state"
    second = env.tmp / "second.toml"
    second.write_text(first.read_text().replace(str(env.state_dir), str(other_state)))
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    try:
        refused = topo.bwbpf("up", "-c", str(second), check=False)
        assert refused.returncode == 1 and "--take-over" in refused.stderr, refused.stderr
        assert topo.bwbpf("up", "-c", str(second), "--take-over").returncode == 0
        taken = sh(*topo.in_src("tc", "filter", "show", "dev", topo.veth_a)).stdout
        assert f"bwbpf_egress:{other_state}" in taken
        after = time.time()
        env.wait_tick(daemon, after)
        status = env.wait_tick(daemon, time.time())
        assert any("another bwbpf's" in p for p in status["problems"]), status["problems"]
        assert daemon.poll() is None, env.daemon_log()
        # Not fought over: the second owner's classifier is still the one attached.
        assert sh(*topo.in_src("tc", "filter", "show", "dev", topo.veth_a)).stdout == taken
        assert stop(daemon) == 0, env.daemon_log()
        assert topo.bwbpf("down", "-c", str(second)).returncode == 0
    finally:
        shutil.rmtree(other_state, ignore_errors=True)


def test_device_without_link_layer_seen_from_its_own_namespace(env: FaultEnv) -> None:
    """A tun device inside the test namespace, looked at under nsenter (whose /sys is the
    host's, where the device does not exist): bwbpf must still see it has no Ethernet
    header, or it would parse every packet 14 bytes off."""
    tun = unique("bwkT")
    sh("ip", "-n", env.topo.src_ns, "tuntap", "add", "dev", tun, "mode", "tun")
    assert not os.path.exists(f"/sys/class/net/{tun}")  # as nsenter's view shows it
    probe = "import sys; from bwbpf import datapath; print(datapath._has_l2(sys.argv[1]))"
    seen = sh(*env.topo.in_src(sys.executable, "-c", probe, tun)).stdout.split()
    veth = sh(*env.topo.in_src(sys.executable, "-c", probe, env.topo.veth_a)).stdout.split()
    assert (seen, veth) == (["False"], ["True"])
