"""rtnetlink messages for bwbpf's HTB tree, its tc filter and the device's counters,
encoded and decoded with struct (no kernel access).

Why not pyroute2 here: it decodes every attribute of every message into Python objects and
runs each request through an asyncio loop. Measured with 10,000 slices (20,005 classes):
one class dump took ~4 s (`tc class show`: 0.1 s) and `bwbpf up`'s 20,005 class changes
~55 s. bwbpf reads five fields of a class and writes one kind of request, so this module
encodes exactly those requests and decodes exactly those fields; shaper.py sends them in
batches, as `tc -batch` does. The root qdisc, the filter and the device's counters take a
few more messages of the same kind, so that the daemon never imports pyroute2 (11 MB of
its resident memory, and a new socket for each of its checks at every tick).

Layouts are the kernel's UAPI (include/uapi/linux/{netlink,rtnetlink,pkt_sched,
gen_stats}.h), all in host byte order. The unit tests check both directions against
pyroute2's own encoder and decoder.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

# netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the request was echoed as its header only
NLM_F_ACK_TLVS = 0x200  # in an ack: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# rtnetlink.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTCLASS = 40
RTM_DELTCLASS = 41
RTM_GETTCLASS = 42
RTM_NEWTFILTER = 44
RTM_GETTFILTER = 46
# if_link.h
IFLA_IFNAME = 3
IFLA_STATS64 = 23
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_STATS2 = 7
# pkt_cls.h
TCA_BPF_CLASSID = 3
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1
# pkt_sched.h
TCA_HTB_PARMS = 1
TCA_HTB_INIT = 2
TCA_HTB_RATE64 = 6
TCA_HTB_CEIL64 = 7
# gen_stats.h
TCA_STATS_BASIC = 1

TC_H_ROOT = 0xFFFFFFFF
U32_MAX = 0xFFFFFFFF

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSGERR = struct.Struct("=i")  # error (then the request's header, and maybe attributes)
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
# struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts (as tc sends it).
TC_HTB_GLOB = struct.Struct("=IIIII")
HTB_VERSION = 3
HTB_RATE2QUANTUM = 10
# struct rtnl_link_stats64 begins rx_packets, tx_packets, rx_bytes, tx_bytes (all u64).
LINK_STATS64_TX_BYTES = 24
NLATTR = struct.Struct("=HH")  # len, type
# struct tc_htb_opt: two struct tc_ratespec (cell_log, linklayer, overhead, cell_align,
# mpu, rate), then buffer, cbuffer, quantum, level, prio.
TC_HTB_OPT = struct.Struct("=BBHhHIBBHhHIIIIII")
GNET_STATS_BASIC = struct.Struct("=QI")  # bytes, packets (then 4 bytes of padding)
U64 = struct.Struct("=Q")

# tc's clock: HTB takes buffer times in psched ticks (include/net/pkt_sched.h: 64 ns).
TIME_UNITS_PER_SEC = 1_000_000


class HtbClass(NamedTuple):
    """What bwbpf needs of an installed HTB class. Rates in bytes per second."""

    handle: int
    parent: int
    rate: int
    ceil: int
    quantum: int
    bytes: int
    packets: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    return NLATTR.pack(NLATTR.size + len(payload), kind) + payload.ljust(
        _align(len(payload)), b"\0"
    )


def _message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def ticks_per_usec(psched: str) -> float:
    """psched ticks per microsecond from /proc/net/psched, as tc computes it."""
    t2us, us2t, clock_res, _ = (int(field, 16) for field in psched.split())
    return t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)


def xmit_ticks(rate: int, size: int, tick_in_usec: float) -> int:
    """The time to send size bytes at rate bytes/s, in psched ticks (tc_calc_xmittime)."""
    return int(int(TIME_UNITS_PER_SEC * (size / rate)) * tick_in_usec)


def put_class(
    seq: int,
    ifindex: int,
    handle: int,
    parent: int,
    *,
    rate: int,
    ceil: int,
    burst: int,
    cburst: int,
    quantum: int,
    tick_in_usec: float,
) -> bytes:
    """RTM_NEWTCLASS creating the class or replacing all of its parameters (rates in
    bytes/s, bursts in bytes). Rates of 2^32 bytes/s and more go as TCA_HTB_RATE64/CEIL64,
    with U32_MAX in the 32-bit field, as the kernel expects. No legacy rate tables: the
    kernel only uses them to guess the link layer, and at 1 byte/s their entries overflow."""
    parms = TC_HTB_OPT.pack(
        0, 0, 0, 0, 0, min(rate, U32_MAX),
        0, 0, 0, 0, 0, min(ceil, U32_MAX),
        xmit_ticks(rate, burst, tick_in_usec),
        xmit_ticks(ceil, cburst, tick_in_usec),
        quantum, 0, 0,
    )  # fmt: skip
    options = _attr(TCA_HTB_PARMS, parms)
    if rate >= 1 << 32:
        options += _attr(TCA_HTB_RATE64, struct.pack("=Q", rate))
    if ceil >= 1 << 32:
        options += _attr(TCA_HTB_CEIL64, struct.pack("=Q", ceil))
    body = (
        TCMSG.pack(0, ifindex, handle, parent, 0)
        + _attr(TCA_KIND, b"htb\0")
        + _attr(TCA_OPTIONS, options)  # nested, without NLA_F_NESTED (as tc sends it)
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _message(RTM_NEWTCLASS, flags, seq, body)


def delete_class(seq: int, ifindex: int, handle: int, parent: int) -> bytes:
    body = TCMSG.pack(0, ifindex, handle, parent, 0) + _attr(TCA_KIND, b"htb\0")
    return _message(RTM_DELTCLASS, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def get_class(seq: int, ifindex: int, handle: int) -> bytes:
    """RTM_GETTCLASS of one class: the kernel answers with its RTM_NEWTCLASS, then the ack
    (or only an error, ENOENT when there is no such class). The answer is a notification:
    recent kernels (6.18 here) send it to the asker only with NLM_F_ECHO."""
    body = TCMSG.pack(0, ifindex, handle, 0, 0)
    return _message(RTM_GETTCLASS, NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO, seq, body)


def dump_filters(seq: int, ifindex: int, parent: int) -> bytes:
    body = TCMSG.pack(0, ifindex, 0, parent, 0)
    return _message(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def parse_bpf_filter(payload: memoryview) -> tuple[str, int | None] | None:
    """(name, program id) of a cls_bpf filter's RTM_NEWTFILTER, or None for another kind
    (or for the header message of a filter chain, which has no options)."""
    top = attrs(payload[TCMSG.size :])
    kind, options = top.get(TCA_KIND), top.get(TCA_OPTIONS)
    if kind is None or _cstring(kind) != "bpf" or options is None:
        return None
    opts = attrs(options)
    name = opts.get(TCA_BPF_NAME)
    if name is None:
        return None
    prog = opts.get(TCA_BPF_ID)
    prog_id = struct.unpack_from("=I", prog)[0] if prog is not None and len(prog) >= 4 else None
    return _cstring(name), prog_id


def put_filter(
    seq: int,
    ifindex: int,
    *,
    parent: int,
    handle: int,
    prio: int,
    protocol: int,
    fd: int,
    name: str,
    classid: int,
) -> bytes:
    """RTM_NEWTFILTER creating a cls_bpf filter in direct-action mode, or replacing the
    one of that parent, priority, protocol and handle (as `tc filter replace`)."""
    options = (
        _attr(TCA_BPF_FD, struct.pack("=I", fd))
        + _attr(TCA_BPF_NAME, name.encode() + b"\0")
        + _attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT))
        + _attr(TCA_BPF_CLASSID, struct.pack("=I", classid))
    )
    info = (prio << 16) | socket.htons(protocol)
    body = (
        TCMSG.pack(0, ifindex, handle, parent, info)
        + _attr(TCA_KIND, b"bpf\0")
        + _attr(TCA_OPTIONS, options)
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _message(RTM_NEWTFILTER, flags, seq, body)


def put_htb_root(seq: int, ifindex: int, handle: int, default_minor: int) -> bytes:
    """RTM_NEWQDISC making HTB ``handle`` the root qdisc, replacing whatever root qdisc
    the device had; unclassified packets go to class ``default_minor``."""
    glob = TC_HTB_GLOB.pack(HTB_VERSION, HTB_RATE2QUANTUM, default_minor, 0, 0)
    body = (
        TCMSG.pack(0, ifindex, handle, TC_H_ROOT, 0)
        + _attr(TCA_KIND, b"htb\0")
        + _attr(TCA_OPTIONS, _attr(TCA_HTB_INIT, glob))
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _message(RTM_NEWQDISC, flags, seq, body)


def delete_root_qdisc(seq: int, ifindex: int, handle: int) -> bytes:
    body = TCMSG.pack(0, ifindex, handle, TC_H_ROOT, 0)
    return _message(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def dump_qdiscs(seq: int) -> bytes:
    """Every qdisc of every device (the kernel does not filter a qdisc dump by device)."""
    return _message(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, seq, TCMSG.pack(0, 0, 0, 0, 0))


def parse_qdisc(payload: memoryview) -> tuple[int, int, int, str]:
    """(ifindex, handle, parent, kind) of an RTM_NEWQDISC."""
    _, ifindex, handle, parent, _ = TCMSG.unpack_from(payload)
    kind = attrs(payload[TCMSG.size :]).get(TCA_KIND)
    return ifindex, handle, parent, "" if kind is None else _cstring(kind)


def get_link(seq: int, ifindex: int = 0, name: str | None = None) -> bytes:
    """RTM_GETLINK of one device, by index or by name: its RTM_NEWLINK, then the ack. The
    answer goes to the asker only (unlike a tc get, it is no notification)."""
    body = IFINFOMSG.pack(0, 0, ifindex, 0, 0)
    if name is not None:
        body += _attr(IFLA_IFNAME, name.encode() + b"\0")
    return _message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


class Link(NamedTuple):
    """What bwbpf needs of a network device."""

    index: int
    type: int  # ARPHRD_*
    tx_bytes: int | None  # its own transmitted-bytes counter (IFLA_STATS64)


def parse_link(payload: memoryview) -> Link:
    """The device of an RTM_NEWLINK."""
    _, kind, ifindex, _, _ = IFINFOMSG.unpack_from(payload)
    stats = attrs(payload[IFINFOMSG.size :]).get(IFLA_STATS64)
    tx = None
    if stats is not None and len(stats) >= LINK_STATS64_TX_BYTES + 8:
        (tx,) = U64.unpack_from(stats, LINK_STATS64_TX_BYTES)
    return Link(ifindex, kind, tx)


def dump_classes(seq: int, ifindex: int) -> bytes:
    return _message(RTM_GETTCLASS, NLM_F_REQUEST | NLM_F_DUMP, seq, TCMSG.pack(0, ifindex, 0, 0, 0))


class Message(NamedTuple):
    type: int
    flags: int
    seq: int
    payload: memoryview


def messages(buf: bytes | bytearray | memoryview) -> Iterator[Message]:
    """The netlink messages in one datagram."""
    view = memoryview(buf)
    offset = 0
    while offset + NLMSGHDR.size <= len(view):
        length, msg_type, flags, seq, _ = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size or offset + length > len(view):
            raise ValueError(f"truncated netlink message at offset {offset}")
        yield Message(msg_type, flags, seq, view[offset + NLMSGHDR.size : offset + length])
        offset += _align(length)


def _cstring(view: memoryview) -> str:
    """A NUL-terminated string attribute (a kind, a name, a kernel message)."""
    return bytes(view).split(b"\0", 1)[0].decode(errors="replace")


def attrs(view: memoryview) -> dict[int, memoryview]:
    """Attribute payloads by type (flags masked off); the last of a repeated type wins."""
    out = {}
    offset = 0
    while offset + NLATTR.size <= len(view):
        length, kind = NLATTR.unpack_from(view, offset)
        if length < NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = view[offset + NLATTR.size : offset + length]
        offset += _align(length)
    return out


def parse_error(payload: memoryview, flags: int) -> tuple[int, str]:
    """(errno, the kernel's extended-ack message or "") of an NLMSG_ERROR; errno 0 is an
    acknowledgement."""
    (error,) = NLMSGERR.unpack_from(payload)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # The request is echoed after the error: its header alone with NETLINK_CAP_ACK.
        (echoed_len,) = struct.unpack_from("=I", payload, NLMSGERR.size)
        skip = NLMSGERR.size + (NLMSGHDR.size if flags & NLM_F_CAPPED else _align(echoed_len))
        msg = attrs(payload[skip:]).get(NLMSGERR_ATTR_MSG)
        if msg is not None:
            text = _cstring(msg)
    return -error, text


def parse_class(payload: memoryview, stats: bool = True) -> HtbClass | None:
    """An RTM_NEWTCLASS of a dump, or None when it is not an HTB class; without ``stats``
    its byte and packet counters are left at 0 (not decoded).

    Attributes are read in place, by offset: at 20,005 classes a dump parsed through
    ``attrs`` (a dict and a memoryview per attribute) took about twice as long."""
    _, _, handle, parent, _ = TCMSG.unpack_from(payload)
    end = len(payload)
    kind_at = kind_end = options_at = options_end = stats_at = stats_end = -1
    offset = TCMSG.size
    unpack_attr = NLATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack_attr(payload, offset)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind == TCA_KIND:
            kind_at, kind_end = offset + 4, offset + length
        elif kind == TCA_OPTIONS:
            options_at, options_end = offset + 4, offset + length
        elif kind == TCA_STATS2:
            stats_at, stats_end = offset + 4, offset + length
        offset += (length + 3) & ~3
    if kind_at < 0 or options_at < 0 or payload[kind_at:kind_end] != b"htb\0":
        return None
    rate = ceil = quantum = -1
    offset = options_at
    while offset + 4 <= options_end:
        length, kind = unpack_attr(payload, offset)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind == TCA_HTB_PARMS and length >= 4 + TC_HTB_OPT.size:
            fields = TC_HTB_OPT.unpack_from(payload, offset + 4)
            rate = fields[5] if rate < 0 else rate
            ceil = fields[11] if ceil < 0 else ceil
            quantum = fields[14]
        elif kind == TCA_HTB_RATE64 and length >= 12:
            (rate,) = U64.unpack_from(payload, offset + 4)
        elif kind == TCA_HTB_CEIL64 and length >= 12:
            (ceil,) = U64.unpack_from(payload, offset + 4)
        offset += (length + 3) & ~3
    if quantum < 0:
        return None
    sent = packets = 0
    offset = stats_at
    while stats and offset >= 0 and offset + 4 <= stats_end:
        length, kind = unpack_attr(payload, offset)
        if length < 4:
            break
        if kind & NLA_TYPE_MASK == TCA_STATS_BASIC and length >= 4 + GNET_STATS_BASIC.size:
            sent, packets = GNET_STATS_BASIC.unpack_from(payload, offset + 4)
            break
        offset += (length + 3) & ~3
    return HtbClass(handle, parent, rate, ceil, quantum, sent, packets)
