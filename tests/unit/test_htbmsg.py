"""htbmsg's hand-made rtnetlink messages, checked against pyroute2's encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from pyroute2.netlink.rtnl import RTM_NEWTCLASS
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.tcmsg import common, tcmsg
from pyroute2.netlink.rtnl.tcmsg.sched_htb import get_class_parameters

from bwbpf import htbmsg

# /proc/net/psched of a kernel with a 1 GHz clock (every kernel since hrtimers): 64 ns ticks.
PSCHED = "000003e8 00000040 000f4240 3b9aca00\n"
TICK = htbmsg.ticks_per_usec(PSCHED)


def decoded(raw: bytes) -> tcmsg:
    msg = tcmsg(raw)
    msg.decode()
    return msg


def test_psched_ticks_are_64_ns() -> None:
    assert pytest.approx(1000 / 64) == TICK


@pytest.mark.parametrize(
    ("rate", "ceil"),
    [(1, 12_500_000), (125_000, 125_000), (1, (1 << 32) - 1), (1 << 32, 5_000_000_000)],
    ids=["8bit-100mbit", "1mbit-both", "largest-32-bit", "64-bit-rates"],
)
def test_put_class_is_what_pyroute2_reads(rate: int, ceil: int) -> None:
    # As shaper.py bounds them: at most 200 s of sending, which fits the u32 of ticks.
    burst, cburst = (min(r // 1000 + 1600, r * 200) for r in (rate, ceil))
    raw = htbmsg.put_class(
        7, 3, 0x14005, 0x10010, rate=rate, ceil=ceil, burst=burst, cburst=cburst,
        quantum=1600, tick_in_usec=TICK,
    )  # fmt: skip
    msg = decoded(raw)
    assert msg["header"]["type"] == RTM_NEWTCLASS
    assert msg["header"]["sequence_number"] == 7
    assert msg["header"]["flags"] == 0x405 | 0x100  # REQUEST, ACK, CREATE, REPLACE
    assert msg["header"]["length"] == len(raw)
    assert (msg["index"], msg["handle"], msg["parent"]) == (3, 0x14005, 0x10010)
    assert msg.get_attr("TCA_KIND") == "htb"
    opts = msg.get_attr("TCA_OPTIONS")
    parms = opts.get_attr("TCA_HTB_PARMS")
    assert parms["rate"] == min(rate, 0xFFFFFFFF)
    assert parms["ceil"] == min(ceil, 0xFFFFFFFF)
    assert parms["quantum"] == 1600
    assert (parms["level"], parms["prio"]) == (0, 0)
    assert opts.get_attr("TCA_HTB_RATE64") == (rate if rate >= 1 << 32 else None)
    assert opts.get_attr("TCA_HTB_CEIL64") == (ceil if ceil >= 1 << 32 else None)
    # The bursts as times, computed as pyroute2 (after tc) computes them on this machine.
    reference = get_class_parameters(
        {"rate": rate, "ceil": ceil, "burst": burst, "cburst": cburst, "quantum": 1600}
    )["attrs"][0][1]
    scale = TICK / common.tick_in_usec if common.tick_in_usec else 1
    assert parms["buffer"] == pytest.approx(reference["buffer"] * scale, abs=1)
    assert parms["cbuffer"] == pytest.approx(reference["cbuffer"] * scale, abs=1)
    assert not opts.get_attr("TCA_HTB_RTAB") and not opts.get_attr("TCA_HTB_CTAB")


def test_delete_and_dump_requests() -> None:
    msg = decoded(htbmsg.delete_class(9, 4, 0x18001, 0x10020))
    assert msg["header"]["type"] == htbmsg.RTM_DELTCLASS
    assert msg["header"]["flags"] == 0x5
    assert (msg["index"], msg["handle"], msg["parent"]) == (4, 0x18001, 0x10020)
    dump = decoded(htbmsg.dump_classes(10, 4))
    assert dump["header"]["type"] == htbmsg.RTM_GETTCLASS
    assert dump["header"]["flags"] == 0x301
    assert dump["index"] == 4
    one = decoded(htbmsg.get_class(11, 4, 0x14005))
    assert one["header"]["type"] == htbmsg.RTM_GETTCLASS
    assert one["header"]["flags"] == 0xD  # a request with an ack and an echo, not a dump
    assert (one["index"], one["handle"], one["parent"]) == (4, 0x14005, 0)


def class_message(seq: int, handle: int, kind: str, options: list, stats: list) -> bytes:
    msg = tcmsg()
    msg["header"]["type"] = RTM_NEWTCLASS
    msg["header"]["sequence_number"] = seq
    msg["index"], msg["handle"], msg["parent"] = 3, handle, 0x10010
    msg["attrs"] = [["TCA_KIND", kind]]
    if options:
        msg["attrs"].append(["TCA_OPTIONS", {"attrs": options}])
    if stats:
        msg["attrs"].append(["TCA_STATS2", {"attrs": stats}])
    msg.encode()
    return bytes(msg.data)


def test_dump_messages_parse_like_pyroute2_wrote_them() -> None:
    parms = {"rate": 1, "ceil": 0xFFFFFFFF, "quantum": 3200, "buffer": 5, "cbuffer": 6}
    basic = [["TCA_STATS_BASIC", {"bytes": 123_456_789_012, "packets": 4242}]]
    datagram = (
        class_message(1, 0x14005, "htb", [["TCA_HTB_PARMS", parms]], basic)
        + class_message(
            2,
            0x18005,
            "htb",
            [["TCA_HTB_PARMS", parms], ["TCA_HTB_CEIL64", 5_000_000_000]],
            [],
        )
        + class_message(3, 0x20001, "fq_codel", [], [])
    )
    parsed = [htbmsg.parse_class(m.payload) for m in htbmsg.messages(datagram)]
    assert parsed == [
        htbmsg.HtbClass(0x14005, 0x10010, 1, 0xFFFFFFFF, 3200, 123_456_789_012, 4242),
        htbmsg.HtbClass(0x18005, 0x10010, 1, 5_000_000_000, 3200, 0, 0),
        None,
    ]
    # Without stats the counters are not decoded; the parameters are the same.
    first = next(htbmsg.messages(datagram))
    assert htbmsg.parse_class(first.payload, stats=False) == htbmsg.HtbClass(
        0x14005, 0x10010, 1, 0xFFFFFFFF, 3200, 0, 0
    )


def test_errors_and_extended_acks() -> None:
    request = htbmsg.delete_class(5, 1, 0x14001, 0x10010)
    echoed = request[: htbmsg.NLMSGHDR.size]
    text = b"Class doesn't exist\0"
    tlv = struct.pack("=HH", 4 + len(text), htbmsg.NLMSGERR_ATTR_MSG) + text.ljust(20, b"\0")
    payload = struct.pack("=i", -2) + echoed + tlv
    flags = htbmsg.NLM_F_CAPPED | htbmsg.NLM_F_ACK_TLVS
    assert htbmsg.parse_error(memoryview(payload), flags) == (2, "Class doesn't exist")
    # A plain acknowledgement, the whole request echoed (no NETLINK_CAP_ACK).
    ack = memoryview(struct.pack("=i", 0) + request)
    assert htbmsg.parse_error(ack, 0) == (0, "")


def test_truncated_datagram_is_an_error() -> None:
    raw = htbmsg.dump_classes(1, 1)
    with pytest.raises(ValueError, match="truncated"):
        list(htbmsg.messages(raw[:-4]))


def test_bwbpfs_filter_is_found_by_name_and_program_id() -> None:
    def filter_message(kind: bytes, options: bytes | None) -> bytes:
        body = htbmsg.TCMSG.pack(0, 3, 0, 0x10000, 0) + htbmsg._attr(htbmsg.TCA_KIND, kind)
        if options is not None:
            body += htbmsg._attr(htbmsg.TCA_OPTIONS, options)
        return htbmsg._message(htbmsg.RTM_NEWTFILTER, 2, 1, body)

    ours = htbmsg._attr(htbmsg.TCA_BPF_NAME, b"bwbpf_egress:/var/lib/bwbpf\0") + htbmsg._attr(
        htbmsg.TCA_BPF_ID, struct.pack("=I", 4711)
    )
    datagram = (
        filter_message(b"bpf\0", None)  # the chain's header: no options
        + filter_message(b"bpf\0", ours)
        + filter_message(b"u32\0", b"")
        + filter_message(b"bpf\0", htbmsg._attr(htbmsg.TCA_BPF_ID, struct.pack("=I", 5)))
    )
    parsed = [htbmsg.parse_bpf_filter(m.payload) for m in htbmsg.messages(datagram)]
    assert parsed == [None, ("bwbpf_egress:/var/lib/bwbpf", 4711), None, None]
    dump = decoded(htbmsg.dump_filters(12, 3, 0x10000))
    assert dump["header"]["type"] == htbmsg.RTM_GETTFILTER
    assert (dump["header"]["flags"], dump["index"], dump["parent"]) == (0x301, 3, 0x10000)


def test_root_qdisc_and_filter_requests_are_what_pyroute2_reads() -> None:
    root = decoded(htbmsg.put_htb_root(1, 4, 0x10000, 0x4000))
    assert root["header"]["type"] == htbmsg.RTM_NEWQDISC
    assert root["header"]["flags"] == 0x505  # request, ack, create, replace
    assert (root["index"], root["handle"], root["parent"]) == (4, 0x10000, 0xFFFFFFFF)
    assert root.get_attr("TCA_KIND") == "htb"
    glob = root.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")
    assert (glob["version"], glob["rate2quantum"], glob["defcls"]) == (3, 10, 0x4000)

    gone = decoded(htbmsg.delete_root_qdisc(2, 4, 0x10000))
    assert gone["header"]["type"] == htbmsg.RTM_DELQDISC
    assert (gone["index"], gone["handle"], gone["parent"]) == (4, 0x10000, 0xFFFFFFFF)

    f = decoded(
        htbmsg.put_filter(
            3,
            4,
            parent=0x10000,
            handle=1,
            prio=1,
            protocol=3,
            fd=17,
            name="bwbpf_egress:/x",
            classid=0x10000,
        )
    )
    assert f["header"]["type"] == htbmsg.RTM_NEWTFILTER
    assert (f["index"], f["handle"], f["parent"]) == (4, 1, 0x10000)
    assert f["info"] == (1 << 16) | 0x0300  # priority 1, ETH_P_ALL in network order
    opts = f.get_attr("TCA_OPTIONS")
    assert f.get_attr("TCA_KIND") == "bpf"
    assert opts.get_attr("TCA_BPF_FD") == 17
    assert opts.get_attr("TCA_BPF_NAME") == "bwbpf_egress:/x"
    assert opts.get_attr("TCA_BPF_FLAGS") == 1  # direct action
    assert opts.get_attr("TCA_BPF_CLASSID") == 0x10000


def test_qdiscs_and_links_parse_like_pyroute2_wrote_them() -> None:
    q = tcmsg()
    q["header"]["type"] = htbmsg.RTM_NEWQDISC
    q["index"], q["handle"], q["parent"] = 7, 0x10000, 0xFFFFFFFF
    q["attrs"] = [["TCA_KIND", "htb"]]
    q.encode()
    [msg] = htbmsg.messages(bytes(q.data))
    assert htbmsg.parse_qdisc(msg.payload) == (7, 0x10000, 0xFFFFFFFF, "htb")

    link = ifinfmsg()
    link["header"]["type"] = htbmsg.RTM_NEWLINK
    link["index"], link["ifi_type"] = 9, 0xFFFE
    link["attrs"] = [["IFLA_IFNAME", "wg0"], ["IFLA_STATS64", {"tx_bytes": 123_456_789_012}]]
    link.encode()
    [msg] = htbmsg.messages(bytes(link.data))
    assert htbmsg.parse_link(msg.payload) == (9, 0xFFFE, 123_456_789_012)

    ask = ifinfmsg(htbmsg.get_link(4, name="veth0"))
    ask.decode()
    assert ask["header"]["type"] == htbmsg.RTM_GETLINK
    assert ask["header"]["flags"] == 0x5
    assert ask.get_attr("IFLA_IFNAME") == "veth0"
