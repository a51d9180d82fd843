"""The classifier remembers each socket's slice by cgroup or uid (a socket-local storage,
worked out at its first packet), and forgets it whenever those matches change: a socket
held open across the change moves with it. Real sockets, real traffic between namespaces.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import bpfsys, datapath, layout
from tests.conftest import unique
from tests.helpers import stop, wait_for
from tests.integration.netns import FIRST_TICK_S, REPO, DaemonEnv, Topology

pytestmark = [pytest.mark.root, pytest.mark.integration]

OWNER, OTHER, CONTAINED = 6, 5, 7
TEST_UID = 4343
UDP4_OVERHEAD = 42  # Ethernet 14 + IPv4 20 + UDP 8
TCP_PORT = 5299


class Held:
    """One socket in the source namespace, held by a traffic process (``--hold``)."""

    def __init__(self, topo: Topology, *opts: str) -> None:
        cmd = [sys.executable, "-m", "tests.integration.traffic", "--hold", *opts]
        self.proc = subprocess.Popen(
            topo.in_src(*cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
        )
        topo.processes.append(self.proc)

    def send(self, count: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n".encode())
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == f"sent {count}\n".encode()


class Env(DaemonEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "bwsk")
        self.cgroup = Path(datapath.cgroup2_mount()) / unique("bwbpftest-sk-")

    @property
    def pin_dir(self) -> str:
        return f"/sys/fs/bpf/bwbpf/{self.topo.veth_a}"

    def write_config(self, uid_slice: int) -> None:
        """Slices owner, other and contained; TEST_UID belongs to ``uid_slice``."""
        uids = {OWNER: "", OTHER: ""}
        uids[uid_slice] = f", uid = {TEST_UID}"
        self.config.write_text(f"""
[node]
interface = "{self.topo.veth_a}"
tick = "1s"
state_dir = "{self.state_dir}"

[[slice]]
name = "owner"
id = {OWNER}
match = {{ mark = 61{uids[OWNER]} }}

[[slice]]
name = "other"
id = {OTHER}
match = {{ mark = 62{uids[OTHER]} }}

[[slice]]
name = "contained"
id = {CONTAINED}
match = {{ cgroup = "{self.cgroup}" }}
""")

    def packets(self) -> dict[int, int]:
        """Normal-class packets counted per slice id, from ``bwbpf stat``."""
        doc = self.topo.stat(self.config)
        return {s["id"]: s["classes"]["normal"]["packets"] for s in doc["slices"]}

    def grew(self, before: dict[int, int], default: bool = False) -> dict[int, int]:
        """What grew since ``before``; the default slice only if asked (the kernel's own
        IPv6 multicast reports count to it, at times of the kernel's choosing)."""
        after = self.packets()
        return {
            k: after[k] - before.get(k, 0)
            for k in after
            if after[k] != before.get(k, 0) and (default or k != 0)
        }

    def pinned_map(self, name: str) -> int:
        prog_id = datapath.pinned_prog_id(self.pin_dir)
        assert prog_id is not None
        return bpfsys.obj_get(datapath.generation_pin(self.pin_dir, name, prog_id))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.cgroup.mkdir()
    try:
        with e.made():
            yield e
    finally:
        if e.cgroup.exists():  # a test may fail while it is removed and not yet made again
            e.cgroup.rmdir()


def _settings(fd: int) -> layout.Settings:
    settings = layout.Settings()
    assert bpfsys.map_lookup(fd, ctypes.c_uint32(0), settings)
    return settings


def test_a_socket_keeps_its_slice_until_the_match_epoch_changes(env: Env) -> None:
    """Changing the uid map alone moves new sockets only; a held one follows once the
    epoch changes, and with epoch 0 (cache off) at once."""
    env.write_config(OWNER)
    env.topo.bwbpf("up", "-c", str(env.config))
    held = Held(env.topo, "--dst", env.topo.dst_ip, "--uid", str(TEST_UID), "--size", "100")
    uids, settings = env.pinned_map("slice_by_uid"), env.pinned_map("settings")
    try:
        before = env.packets()
        held.send(4)
        assert env.grew(before) == {OWNER: 4}

        bpfsys.map_update(uids, ctypes.c_uint32(TEST_UID), ctypes.c_uint32(OTHER))
        before = env.packets()
        held.send(3)  # remembered: still the owner's
        env.topo.send(env.topo.dst_ip, 2, 100, uid=TEST_UID)  # a new socket: the map's
        assert env.grew(before) == {OWNER: 3, OTHER: 2}

        value = _settings(settings)
        assert value.match_epoch == layout.FIRST_MATCH_EPOCH
        value.match_epoch += 1
        bpfsys.map_update(settings, ctypes.c_uint32(0), value)
        before = env.packets()
        held.send(5)
        assert env.grew(before) == {OTHER: 5}

        value.match_epoch = 0  # no cache: every packet looks its uid up
        bpfsys.map_update(settings, ctypes.c_uint32(0), value)
        bpfsys.map_update(uids, ctypes.c_uint32(TEST_UID), ctypes.c_uint32(OWNER))
        before = env.packets()
        held.send(2)
        assert env.grew(before) == {OWNER: 2}
    finally:
        os.close(uids)
        os.close(settings)
        stop(held.proc)
        env.topo.bwbpf("down", "-c", str(env.config))


def _tcp_received(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(int(line.split()[1]) for line in path.read_text().splitlines() if line)


def test_a_reload_moves_an_established_connection_with_its_uid(env: Env) -> None:
    env.write_config(OWNER)
    received, ready = env.tmp / "tcp.out", env.tmp / "tcp.ready"
    env.topo.background_dst(
        [
            sys.executable,
            "-m",
            "tests.integration.sink",
            "--tcp",
            "--port",
            str(TCP_PORT),
            "--out",
            str(received),
            "--ready",
            str(ready),
        ]
    )
    wait_for("the TCP sink", ready.exists)
    daemon = env.topo.run_daemon(env.config, log=env.log)
    env.wait_tick(daemon.pid, 0)
    held = Held(
        env.topo,
        "--dst",
        env.topo.dst_ip,
        "--port",
        str(TCP_PORT),
        "--tcp",
        "--uid",
        str(TEST_UID),
        "--size",
        "1000",
    )
    held.send(50)
    wait_for("50 kB at the sink", lambda: _tcp_received(received) == 50_000)
    wait_for("the owner's segments counted", lambda: env.packets()[OWNER] > 0)

    env.write_config(OTHER)
    reloaded_at = time.time()
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded " in env.log.read_text(), timeout=FIRST_TICK_S)
    env.wait_tick(daemon.pid, reloaded_at)
    before = env.packets()
    held.send(80)
    wait_for("130 kB at the sink", lambda: _tcp_received(received) == 130_000)
    grew = env.grew(before)
    # The same connection: every segment after the reload is the uid's new slice's.
    assert OWNER not in grew, (grew, env.log.read_text())
    assert grew.get(OTHER, 0) > 0, (grew, env.log.read_text())
    stop(held.proc)
    assert stop(daemon) == 0, env.log.read_text()
    env.topo.bwbpf("down", "-c", str(env.config))


def test_a_cgroup_made_again_lets_its_old_sockets_go(env: Env) -> None:
    """A socket made in a cgroup keeps that cgroup (and its id) for life. When the cgroup
    is removed and made again, the daemon maps the new id at its next tick; the old
    socket then belongs to no configured cgroup, and its packets go to the default slice."""
    env.write_config(OWNER)
    daemon = env.topo.run_daemon(env.config, log=env.log)
    env.wait_tick(daemon.pid, 0)
    held = Held(env.topo, "--dst", env.topo.dst_ip, "--cgroup", str(env.cgroup), "--size", "64")
    before = env.packets()
    held.send(3)
    assert env.grew(before) == {CONTAINED: 3}

    # Out of the cgroup (its socket stays in it), which is removed and made again.
    root = Path(datapath.cgroup2_mount())
    (root / "cgroup.procs").write_text(str(held.proc.pid))
    env.cgroup.rmdir()
    env.cgroup.mkdir()
    new_id = env.cgroup.stat().st_ino
    cgroups = env.pinned_map("slice_by_cgroup")
    try:
        slice_id = ctypes.c_uint32()
        wait_for(
            "the daemon to map the cgroup's new id",
            lambda: bpfsys.map_lookup(cgroups, ctypes.c_uint64(new_id), slice_id),
            timeout=FIRST_TICK_S,
        )
    finally:
        os.close(cgroups)
    assert slice_id.value == CONTAINED
    # The map holds the new id before the epoch moves on: wait for a tick to pass.
    env.wait_tick(daemon.pid, time.time())
    before = env.packets()
    held.send(4)
    grew = env.grew(before, default=True)
    assert CONTAINED not in grew and grew.get(0, 0) >= 4, grew
    # A new socket in the cgroup made again is the slice's.
    before = env.packets()
    env.topo.send(env.topo.dst_ip, 2, 64, cgroup=env.cgroup)
    assert env.grew(before) == {CONTAINED: 2}
    stop(held.proc)
    assert stop(daemon) == 0, env.log.read_text()
    env.topo.bwbpf("down", "-c", str(env.config))
