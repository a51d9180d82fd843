"""Hand-built frames for the tests: what the classifier must parse, or survive.

Shared by the BPF_PROG_TEST_RUN tier and the fault tier, which sends them on a real veth.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_UDP = 17
IPV6_HOPOPTS = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_DSTOPTS = 60


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """An Ethernet frame; ``vlans`` are the TPIDs of its tags, outermost first."""
    head = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    tags = b"".join(struct.pack("!HH", tpid, 100) for tpid in vlans)
    return head + tags + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str,
    dst: str,
    payload: bytes = b"x" * 22,
    *,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    proto: int = IPPROTO_UDP,
) -> bytes:
    """An IPv4 packet (no options); ``fragment_offset`` in 8-byte units."""
    total = 20 + len(payload)
    frag = (0x2000 if more_fragments else 0) | (fragment_offset & 0x1FFF)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6(
    src: str,
    dst: str,
    payload: bytes = b"y" * 10,
    *,
    extensions: tuple[int, ...] = (),
) -> bytes:
    """An IPv6 packet; ``extensions`` are extension header types (8 bytes each) in front of
    a UDP-numbered payload, e.g. ``(IPV6_HOPOPTS, IPV6_FRAGMENT)``."""
    chain = (*extensions, IPPROTO_UDP)
    body = b""
    for i, _ext in enumerate(extensions):
        # next header, length in 8-octet units beyond the first (0), then 6 bytes of padding
        body += struct.pack("!BB6s", chain[i + 1], 0, b"\x00" * 6)
    body += payload
    hdr = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        chain[0],
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return hdr + body
