"""Hostile frames on a real device: whatever the classifier cannot parse still counts.

Malformed, truncated, tagged, fragmented and non-IP frames go out of bwbpf's device through
a packet socket (so through the qdisc and the classifier, as a tenant's raw socket would).
Nothing may be lost: the growth of all counters together equals the bytes the device sent
and the bytes its peer in the far namespace received, and every frame a header of which is
cut short adds to the truncated-header error count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bwbpf import config, datapath
from tests import packets as pk
from tests.faults.common import FaultEnv
from tests.integration.netns import REPO

pytestmark = [pytest.mark.root, pytest.mark.faults]

SLICE_ID = 31
REPEAT = 7  # a prime count of every frame: a stray packet cannot make the sums agree


@pytest.fixture
def node(env: FaultEnv) -> FaultEnv:
    """The classifier installed (`bwbpf up`, no daemon) with an exempt prefix and one slice
    matched by an IPv4 and an IPv6 source address."""
    topo = env.topo
    env.write_config(
        f'[[slice]]\nname = "tenant"\nid = {SLICE_ID}\n'
        f'match = {{ src = ["{topo.limited_src_ip}/32", "{topo.src_ip6}/128"] }}\n',
        extra=f'[exempt]\nprefixes = ["{topo.exempt_prefix}"]\n',
    )
    topo.bwbpf("up", "-c", str(env.config))
    return env


def counted(cfg_path: Path) -> tuple[int, dict[int, tuple[int, int]], dict[str, int]]:
    """(all bytes, {slice id: (normal, exempt) bytes}, error counts) from the pinned maps."""
    cfg = config.load(cfg_path, check_interface=False)
    with datapath.Counters(cfg.pin_dir) as counters:
        raw = counters.read(s.id for s in cfg.all_slices())
        errors = counters.errors()
    by_id = {sid: (pair[0].bytes, pair[1].bytes) for sid, pair in raw.items()}
    return sum(n + e for n, e in by_id.values()), by_id, errors


def test_every_hostile_frame_is_counted(node: FaultEnv) -> None:
    env, topo, cfg = node, node.topo, node.config
    me, other, exempt = topo.limited_src_ip, topo.dst_ip, topo.exempt_dst_ip
    tenant_v6 = topo.src_ip6
    tenant_frames = [
        pk.eth(pk.ETH_P_IP, pk.ipv4(me, other), vlans=(pk.ETH_P_8021Q,)),
        pk.eth(pk.ETH_P_IP, pk.ipv4(me, other), vlans=(pk.ETH_P_8021AD, pk.ETH_P_8021Q)),
        pk.eth(pk.ETH_P_IP, pk.ipv4(me, other, more_fragments=True)),
        pk.eth(pk.ETH_P_IP, pk.ipv4(me, other, b"z" * 1400, fragment_offset=185)),
        pk.eth(
            pk.ETH_P_IPV6,
            pk.ipv6(
                tenant_v6,
                topo.dst_ip6,
                extensions=(pk.IPV6_HOPOPTS, pk.IPV6_DSTOPTS, pk.IPV6_ROUTING, pk.IPV6_FRAGMENT),
            ),
        ),
    ]
    tenant_exempt = [pk.eth(pk.ETH_P_IP, pk.ipv4(me, exempt, b"e" * 100))]
    truncated = [
        pk.eth(pk.ETH_P_IP, b"\x45\x00"),  # an IPv4 header cut after 2 bytes
        pk.eth(pk.ETH_P_IP, b""),  # nothing after the Ethernet header
        pk.eth(pk.ETH_P_IPV6, pk.ipv6(tenant_v6, topo.dst_ip6)[:30]),
        pk.eth(pk.ETH_P_8021Q, b"\x00"),  # a VLAN tag cut short
    ]
    other_frames = [
        pk.eth(pk.ETH_P_ARP, b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20),
        pk.eth(0x88B5, b"\xab" * 1400),  # a local experimental ethertype
        # Three tags: the classifier reads two, so this is "not IP" (default slice), not lost.
        pk.eth(
            pk.ETH_P_IP,
            pk.ipv4(me, other),
            vlans=(pk.ETH_P_8021AD, pk.ETH_P_8021Q, pk.ETH_P_8021Q),
        ),
        pk.eth(pk.ETH_P_IP, pk.ipv4("0.0.0.0", "255.255.255.255")),
    ]
    frames = tenant_frames + tenant_exempt + truncated + other_frames
    path = env.tmp / "frames.hex"
    path.write_text("".join(f.hex() + "\n" for f in frames))

    total0, by_id0, errors0 = counted(cfg)
    tx0, rx0 = env.tx_bytes(), env.peer_rx_bytes()
    send = [sys.executable, "-m", "tests.integration.traffic", "--frames", str(path)]
    send += ["--ifname", topo.veth_a, "--count", str(REPEAT)]
    subprocess.run(topo.in_src(*send), check=True, cwd=REPO, timeout=60)
    total1, by_id1, errors1 = counted(cfg)
    tx1, rx1 = env.tx_bytes(), env.peer_rx_bytes()

    # Nothing lost: every byte the device sent, and its peer received, is in some slice's
    # counter. (No frame here is addressed to the peer's MAC address, so none reaches a
    # socket there: the peer device's receive counter is what the far end got.)
    assert (total1 - total0, tx1 - tx0) == (rx1 - rx0, rx1 - rx0)
    assert rx1 - rx0 >= REPEAT * sum(len(f) for f in frames)
    # What parsed as the tenant's went to the tenant, split by destination class.
    grown = tuple(by_id1[SLICE_ID][i] - by_id0[SLICE_ID][i] for i in (0, 1))
    assert grown == (
        REPEAT * sum(len(f) for f in tenant_frames),
        REPEAT * sum(len(f) for f in tenant_exempt),
    )
    # Every cut-short frame was counted as such (the fail-open path), not dropped.
    assert errors1["truncated"] - errors0["truncated"] == REPEAT * len(truncated)
