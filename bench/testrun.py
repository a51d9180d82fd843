"""Packets through a loaded tc program with BPF_PROG_TEST_RUN: frames, the skb context,
the empty program every per-packet figure is compared with."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from bwbpf import bpfsys

FRAME_BYTES = 64
EMPTY_PROGRAM = "int f(struct __sk_buff *skb) { return 0; }"


@dataclass(frozen=True)
class Loaded:
    """A classifier loaded (not attached) for test runs, and where its maps are pinned."""

    bpf: Any  # bcc.BPF
    fd: int
    pin_dir: str


def frame(src: str, dst: str, size: int = FRAME_BYTES) -> bytes:
    """An Ethernet frame of ``size`` bytes carrying a UDP-sized IPv4 or IPv6 packet."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    eth = bytes.fromhex("020000000002020000000001")
    if s.version == 4:
        payload = size - 14 - 20
        l3 = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + payload, 1, 0, 64, 17, 0, s.packed, d.packed
        )
        ethertype = 0x0800
    else:
        payload = size - 14 - 40
        l3 = struct.pack("!IHBB16s16s", 6 << 28, payload, 17, 64, s.packed, d.packed)
        ethertype = 0x86DD
    return eth + struct.pack("!H", ethertype) + l3 + b"x" * payload


def skb_ctx(mark: int = 0) -> bytes:
    """The head of struct __sk_buff that BPF_PROG_TEST_RUN accepts, with skb->mark at 8."""
    buf = bytearray(80)
    struct.pack_into("I", buf, 8, mark)
    return bytes(buf)


def load_empty() -> tuple[Any, int]:
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAM)
    return bpf, bpf.load_func("f", BPF.SCHED_CLS).fd


def test_run(fd: int, packet: bytes, mark: int, repeat: int) -> int:
    """Runs ``packet`` ``repeat`` times; the kernel's average ns per run."""
    result = bpfsys.prog_test_run(fd, packet, skb_ctx(mark), repeat)
    if result.retval != 0:
        raise RuntimeError(f"program returned {result.retval}, not TC_ACT_OK")
    return result.duration_ns
