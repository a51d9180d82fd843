"""`kill -9` at any moment — during a state write, a tick, a reload — loses no byte.

The daemon is killed many times at moments spread over its tick (so some kills land while
it writes its state file); after each kill the state file must parse, and once the last
daemon has ticked, the ledger's usage must equal every byte sent, counted once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import config, state
from tests.conftest import require_root
from tests.integration.netns import Topology, wait_status

pytestmark = [pytest.mark.root, pytest.mark.faults]

WIRE = 1000  # bytes on the wire of each 958-byte datagram
KILLS = 13


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    require_root()
    topo = Topology()
    cfg = tmp_path / "bwbpf.toml"
    # Many slices make each state write long enough for a kill to land inside it.
    others = "".join(
        f'[[slice]]\nname = "s{i}"\nid = {100 + i}\nmatch = {{ mark = {100 + i} }}\n'
        for i in range(300)
    )
    try:
        topo.setup()
        cfg.write_text(f"""
[node]
interface = "{topo.veth_a}"
tick = "1s"
state_dir = "{tmp_path / "state"}"
[[slice]]
name = "tenant"
id = 41
match = {{ src = ["{topo.limited_src_ip}/32"] }}
{others}""")
        yield topo, cfg
    finally:
        topo.bwbpf("down", "-c", str(cfg), check=False)
        topo.teardown()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


def state_parses(cfg_path: Path) -> None:
    cfg = config.load(cfg_path, check_interface=False)
    path = state.state_file(cfg.state_dir, cfg.interface)
    if not os.path.exists(path):
        return  # killed before its first save: nothing written, nothing to lose
    _ledger, problem = state.load_state(path, cfg.interface)
    assert problem is None, problem
    leftovers = [n for n in os.listdir(cfg.state_dir) if "corrupt" in n]
    assert not leftovers, leftovers


def test_kill_9_during_ticks_and_state_writes(node: tuple, tmp_path: Path) -> None:
    topo, cfg = node
    rng = random.Random(1789)
    d = topo.run_daemon(cfg, log=tmp_path / "daemon.log")
    wait_status(cfg, "tenant", 0)
    sent = 0
    for i in range(KILLS):
        topo.send(topo.dst_ip, 11, WIRE - 42, src=topo.limited_src_ip)
        sent += 11 * WIRE
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere in a 1 s tick, its save included
        kill9(d)
        state_parses(cfg)
        d = topo.run_daemon(cfg, log=tmp_path / f"daemon{i}.log")
    wait_status(cfg, "tenant", sent)


def test_kill_9_in_the_middle_of_a_reload(node: tuple, tmp_path: Path) -> None:
    topo, cfg = node
    d = topo.run_daemon(cfg, log=tmp_path / "daemon.log")
    wait_status(cfg, "tenant", 0)
    sent = 0
    for i, delay in enumerate((0.0, 0.05, 0.2, 0.5)):
        topo.send(topo.dst_ip, 7, WIRE - 42, src=topo.limited_src_ip)
        sent += 7 * WIRE
        wait_status(cfg, "tenant", sent)
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(delay)
        kill9(d)
        state_parses(cfg)
        d = topo.run_daemon(cfg, log=tmp_path / f"daemon{i}.log")
    topo.send(topo.dst_ip, 5, WIRE - 42, src=topo.limited_src_ip)
    wait_status(cfg, "tenant", sent + 5 * WIRE)
