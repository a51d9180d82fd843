"""Counters recreated behind the daemon's back, and the monitor-only mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import classid, limits
from bwbpf.shaper import Shaper
from tests.helpers import stop_cleanly
from tests.integration.netns import Topology, wait_status

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICE_ID = 12
WIRE = 1000  # bytes on the wire of each 958-byte datagram


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topo = Topology()
    cfg = tmp_path / "bwbpf.toml"
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
id = {SLICE_ID}
match = {{ src = ["{topo.limited_src_ip}/32"] }}
normal = {{ limit = "100kB", threshold = 0.5, max_rate = "100mbit" }}
""")
        yield topo, cfg
    finally:
        topo.bwbpf("down", "-c", str(cfg), check=False)
        topo.teardown()


def usage(topo: Topology, cfg: Path) -> tuple[int, bool]:
    doc = topo.stat(cfg)
    entry = next(s for s in doc["slices"] if s["name"] == "tenant")
    return entry["classes"]["normal"]["bytes"], entry["capped"]


def wait_ledger(cfg_path: Path, expected: int) -> None:
    wait_status(cfg_path, "tenant", expected)


def test_recreated_counters_count_from_zero(node: tuple) -> None:
    """`bwbpf down` and `up` while the daemon is stopped make new maps; by the time the
    daemon is back they have counted past its last reading. Nothing may be lost."""
    topo, cfg = node
    d = topo.run_daemon(cfg)
    wait_ledger(cfg, 0)  # its first tick: the classifier is in place
    topo.send(topo.dst_ip, 30, WIRE - 42, src=topo.limited_src_ip)
    wait_ledger(cfg, 30 * WIRE)
    stop_cleanly(d, timeout=15)
    assert usage(topo, cfg)[0] == 30 * WIRE
    topo.bwbpf("down", "-c", str(cfg))
    topo.bwbpf("up", "-c", str(cfg))
    topo.send(topo.dst_ip, 41, WIRE - 42, src=topo.limited_src_ip)  # past 30,000 already
    topo.run_daemon(cfg)
    wait_ledger(cfg, 71 * WIRE)
    assert usage(topo, cfg)[0] == 71 * WIRE


def test_dry_run_decides_but_changes_nothing(node: tuple) -> None:
    topo, cfg = node
    topo.bwbpf("up", "-c", str(cfg))
    topo.send(topo.dst_ip, 70, WIRE - 42, src=topo.limited_src_ip)  # past the 50 kB threshold
    d = topo.run_daemon(cfg, "--dry-run")
    deadline = time.monotonic() + 10
    while not usage(topo, cfg)[1]:
        assert time.monotonic() < deadline, "the dry run never decided to cap"
        time.sleep(0.3)
    assert usage(topo, cfg)[0] == 70 * WIRE
    with Shaper(topo.veth_a, netns=topo.src_ns) as shaper:
        ceil = shaper.classes()[classid.slice_class(SLICE_ID, limits.DCLASS_NORMAL)].ceil_bps
    assert ceil == 100_000_000  # decided, not applied
    stop_cleanly(d, timeout=15)
