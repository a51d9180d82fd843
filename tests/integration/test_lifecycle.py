"""`bwbpf up` is idempotent, counters outlive the process that loaded them, and `bwbpf down`
leaves the device and bpffs exactly as they were."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import classid, limits
from bwbpf.shaper import Shaper
from tests.integration.netns import FIRST_TICK_S, Topology, sh

pytestmark = [pytest.mark.root, pytest.mark.integration]


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    t = Topology()
    try:
        t.setup()
        cfg = tmp_path / "bwbpf.toml"
        cfg.write_text(f"""
[node]
interface = "{t.veth_a}"
state_dir = "{tmp_path / "state"}"
[exempt]
prefixes = ["{t.exempt_prefix}"]
[[slice]]
name = "marked"
id = 3
match = {{ mark = 3 }}
""")
        yield t, cfg
    finally:
        t.bwbpf("down", "-c", str(tmp_path / "bwbpf.toml"), check=False)
        t.teardown()


def device_state(t: Topology) -> tuple[str, str, str]:
    """qdiscs, classes and filters; the program id is left out, since every `up` loads a
    fresh program (same tag) in place of the old one."""

    def show(*what: str) -> str:
        return re.sub(r" id \d+", "", sh(*t.in_src("tc", *what, "show", "dev", t.veth_a)).stdout)

    return show("qdisc"), show("class"), show("filter")


def test_up_twice_then_down_leaves_nothing(topo: tuple[Topology, Path]) -> None:
    t, cfg = topo
    before = device_state(t)
    bpffs_before = sorted(os.listdir("/sys/fs/bpf"))
    t.bwbpf("up", "-c", str(cfg))
    first = device_state(t)
    second_run = t.bwbpf("up", "-c", str(cfg)).stdout
    assert "0 class changes, 0 removed" in second_run
    assert device_state(t) == first  # nothing moved on the second run
    assert "htb 1:" in first[0] and "bwbpf_egress" in first[2]
    out = t.bwbpf("down", "-c", str(cfg)).stdout
    assert "HTB root qdisc" in out
    assert device_state(t) == before
    assert sorted(os.listdir("/sys/fs/bpf")) == bpffs_before
    # A second down finds nothing and says so.
    assert "nothing of bwbpf's was installed" in t.bwbpf("down", "-c", str(cfg)).stdout


def test_counters_survive_the_loader_and_a_second_up(topo: tuple[Topology, Path]) -> None:
    t, cfg = topo
    t.bwbpf("up", "-c", str(cfg))  # this process exits; the pinned counters stay
    t.send(t.dst_ip, 5, 958, mark=3)  # 1000 bytes on the wire each
    first = _marked(t, cfg)
    assert first == (5000, 5)
    t.bwbpf("up", "-c", str(cfg))  # a new program replaces the old one, same counters
    t.send(t.exempt_dst_ip, 2, 458, mark=3)
    assert _marked(t, cfg) == (5000, 5)
    doc = t.stat(cfg)
    exempt = next(s for s in doc["slices"] if s["name"] == "marked")["classes"]["exempt"]
    assert (exempt["bytes"], exempt["packets"]) == (1000, 2)


def _marked(t: Topology, cfg: Path) -> tuple[int, int]:
    doc = t.stat(cfg)
    normal = next(s for s in doc["slices"] if s["name"] == "marked")["classes"]["normal"]
    return normal["bytes"], normal["packets"]


def test_rates_above_34_gbit(topo: tuple[Topology, Path]) -> None:
    """HTB's 32-bit rate field ends at ~34.4 Gbit/s; beyond it the 64-bit attributes carry
    the rate. Read back what the kernel holds."""
    t, cfg = topo
    text = cfg.read_text().replace(
        "[node]\n", '[node]\nline_rate = "100gbit"\nnode_cap = "40gbit"\n'
    )
    text += 'exempt = { max_rate = "75.5gbit", min_rate = "20gbit" }\n'
    cfg.write_text(text)
    t.bwbpf("up", "-c", str(cfg))
    exempt_handle = classid.slice_class(3, limits.DCLASS_EXEMPT)
    absent = classid.slice_class(4, limits.DCLASS_NORMAL)
    with Shaper(t.veth_a, netns=t.src_ns) as shaper:
        classes = shaper.classes()
        # What stat reads: every ceiling in one dump, or a few classes one request each.
        every = shaper.ceilings()
        some = shaper.ceilings({exempt_handle, classid.ROOT_CLASS, absent})
    assert every == {h: c.ceil_bps for h, c in classes.items()}
    assert some == {h: classes[h].ceil_bps for h in (exempt_handle, classid.ROOT_CLASS)}
    assert classes[classid.ROOT_CLASS].ceil_bps == 100 * 10**9
    assert classes[classid.parent_class(limits.DCLASS_NORMAL)].ceil_bps == 40 * 10**9
    exempt = classes[classid.slice_class(3, limits.DCLASS_EXEMPT)]
    assert (exempt.rate_bps, exempt.ceil_bps) == (20 * 10**9, 75_500_000_000)
    # A second `up` sees nothing to change: the 64-bit values read back equal.
    assert "0 class changes" in t.bwbpf("up", "-c", str(cfg)).stdout


def test_up_removes_classes_of_slices_that_left(topo: tuple[Topology, Path]) -> None:
    t, cfg = topo
    t.bwbpf("up", "-c", str(cfg))
    text = cfg.read_text()
    cfg.write_text(text[: text.index("[[slice]]")])  # the "marked" slice leaves the config
    out = t.bwbpf("up", "-c", str(cfg), check=False)
    assert "2 removed" in out.stdout, out.stderr
    with Shaper(t.veth_a, netns=t.src_ns) as shaper:
        classes = shaper.classes()
    assert classid.slice_class(3, limits.DCLASS_NORMAL) not in classes
    assert classid.slice_class(3, limits.DCLASS_EXEMPT) not in classes
    assert classid.slice_class(0, limits.DCLASS_NORMAL) in classes


# A daemon's start (qdisc, classes, filter) and its tick (the checks of root, filter, pins
# and the device's counters), then stat, in one process: what modules did they need?
NO_PYROUTE2 = """
import sys
from bwbpf.cli import main
for argv in (["run", "--once", "-c", sys.argv[1]], ["stat", "-c", sys.argv[1]]):
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, exc.code
print(sorted({m.split(".")[0] for m in sys.modules} & {"pyroute2", "bcc", "matplotlib"}))
"""


def test_the_daemon_and_stat_go_without_pyroute2(topo: tuple[Topology, Path]) -> None:
    """pyroute2 costs the daemon 11 MB of resident memory and a socket for each check; the
    raw rtnetlink messages of htbmsg do all of it. matplotlib is for history pictures only."""
    t, cfg = topo
    # A start compiles the classifier: tens of seconds under software emulation.
    out = sh(
        *t.in_src(sys.executable, "-c", NO_PYROUTE2, str(cfg)), timeout=2 * FIRST_TICK_S
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    assert "htb 1:" in device_state(t)[0]  # it did install the tree
