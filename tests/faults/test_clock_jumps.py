"""Wall clock jumps under a running daemon, through libfaketime on its process only.

The system clock is never touched: libfaketime (Debian's faketime) is preloaded into the
daemon alone, reading its offset from a file the test rewrites. Its monotonic and
boot-time clocks stay real (FAKETIME_DONT_FAKE_MONOTONIC), as they do when an operator
or NTP steps a real wall clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.integration.netns import BWBPF, Topology, wait_status

pytestmark = [pytest.mark.root, pytest.mark.faults]

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
WIRE = 1000  # bytes on the wire of each 958-byte datagram
DAY = 86400


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Topology, Path, Path]]:
    require_root()
    if not os.path.exists(LIBFAKETIME):
        pytest.skip(f"libfaketime is not installed ({LIBFAKETIME}; Debian package faketime)")
    topo = Topology()
    cfg = tmp_path / "bwbpf.toml"
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    try:
        topo.setup()
        cfg.write_text(f"""
[node]
interface = "{topo.veth_a}"
tick = "1s"
state_dir = "{tmp_path / "state"}"
[quota]
period = "1h"
[[slice]]
name = "tenant"
id = 21
match = {{ src = ["{topo.limited_src_ip}/32"] }}
normal = {{ limit = "1MB", threshold = 0.5, max_rate = "100mbit" }}
""")
        yield topo, cfg, offset
    finally:
        topo.bwbpf("down", "-c", str(cfg), check=False)
        topo.teardown()


def faked_daemon(topo: Topology, cfg: Path, offset: Path, log: Path) -> subprocess.Popen[bytes]:
    env = [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME_TIMESTAMP_FILE={offset}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]
    return topo.background([*env, BWBPF, "-v", "run", "-c", str(cfg)], log=log)


def jump(offset: Path, text: str, cfg: Path, ticks_after: float) -> None:
    """Set the daemon's wall clock offset and let a few of its ticks see it."""
    offset.write_text(text + "\n")
    time.sleep(ticks_after)


def stop(d: subprocess.Popen[bytes]) -> None:
    os.kill(d.pid, signal.SIGTERM)
    assert d.wait(timeout=30) == 0


def test_forward_and_back_keeps_the_period_and_its_usage(node: tuple, tmp_path: Path) -> None:
    topo, cfg, offset = node
    d = faked_daemon(topo, cfg, offset, tmp_path / "daemon.log")
    wait_status(cfg, "tenant", 0)
    topo.send(topo.dst_ip, 30, WIRE - 42, src=topo.limited_src_ip)
    before = wait_status(cfg, "tenant", 30 * WIRE)
    period = before.slices["tenant"]["period_start"], before.slices["tenant"]["period_end"]

    jump(offset, "+40d", cfg, 3)  # forty days forward: 960 periods of an hour
    topo.send(topo.dst_ip, 20, WIRE - 42, src=topo.limited_src_ip)
    ahead = wait_status(cfg, "tenant", 50 * WIRE)  # usage went on: no reset
    assert (ahead.slices["tenant"]["period_start"], ahead.slices["tenant"]["period_end"]) == period
    assert any("wall clock jumped" in p and "ahead" in p for p in ahead.problems), ahead.problems
    assert ahead.last_tick < period[1]  # the accounting clock did not jump with it

    jump(offset, "+0", cfg, 3)  # and back again
    topo.send(topo.dst_ip, 10, WIRE - 42, src=topo.limited_src_ip)
    back = wait_status(cfg, "tenant", 60 * WIRE)
    assert (back.slices["tenant"]["period_start"], back.slices["tenant"]["period_end"]) == period
    assert not any("wall clock" in p for p in back.problems), back.problems

    jump(offset, "-2d", cfg, 3)  # two days back: still the same period, same usage
    topo.send(topo.dst_ip, 5, WIRE - 42, src=topo.limited_src_ip)
    behind = wait_status(cfg, "tenant", 65 * WIRE)
    assert (
        behind.slices["tenant"]["period_start"],
        behind.slices["tenant"]["period_end"],
    ) == period
    assert any("behind" in p for p in behind.problems), behind.problems
    stop(d)
    assert d.returncode == 0


def test_a_clock_set_back_across_a_restart_reopens_nothing(node: tuple, tmp_path: Path) -> None:
    topo, cfg, offset = node
    d = faked_daemon(topo, cfg, offset, tmp_path / "daemon1.log")
    wait_status(cfg, "tenant", 0)
    topo.send(topo.dst_ip, 40, WIRE - 42, src=topo.limited_src_ip)
    first = wait_status(cfg, "tenant", 40 * WIRE)
    period = first.slices["tenant"]["period_start"], first.slices["tenant"]["period_end"]
    stop(d)

    offset.write_text("-40d\n")  # the node comes back with its clock 40 days behind
    d = faked_daemon(topo, cfg, offset, tmp_path / "daemon2.log")
    topo.send(topo.dst_ip, 7, WIRE - 42, src=topo.limited_src_ip)
    again = wait_status(cfg, "tenant", 47 * WIRE)
    assert (again.slices["tenant"]["period_start"], again.slices["tenant"]["period_end"]) == period
    assert again.last_tick >= first.last_tick  # never before what was already accounted
    assert any("behind" in p for p in again.problems), again.problems
    stop(d)
    log = (tmp_path / "daemon2.log").read_text()
    assert "Traceback" not in log
