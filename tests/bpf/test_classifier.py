"""The real classifier, loaded into the running kernel, fed hand-built packets through
BPF_PROG_TEST_RUN: each lands in the expected (slice, dclass) counter and HTB class."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import bpfsys, classid, config, datapath, limits
from tests.conftest import unique

pytestmark = pytest.mark.root

CGROUP_SLICE, UID_SLICE, MARK_SLICE, SRC_SLICE = 30, 40, 50, 60


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """An Ethernet frame; ``vlans`` are the TPIDs of its tags, outermost first."""
    head = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    tags = b"".join(struct.pack("!HH", tpid, 100) for tpid in vlans)
    return head + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, payload: bytes = b"x" * 22) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6(src: str, dst: str, payload: bytes = b"y" * 10) -> bytes:
    hdr = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        17,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return hdr + payload


def ctx(mark: int = 0) -> bytes:
    """The head of struct __sk_buff that BPF_PROG_TEST_RUN accepts: mark at 8, cb at 48."""
    buf = bytearray(80)
    struct.pack_into("I", buf, 8, mark)
    return bytes(buf)


class Loaded:
    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.bpf, self.fd, self.tables = datapath.load(cfg, ["-DBWBPF_CB_CLASSID"])
        self.counters = datapath.Counters(cfg.pin_dir)

    def run(self, packet: bytes, mark: int = 0, repeat: int = 1) -> int:
        """Send one packet (``repeat`` times, with one dummy socket: its later runs find
        the slice it remembered); returns the classid the program chose."""
        result = bpfsys.prog_test_run(self.fd, packet, ctx(mark), repeat)
        assert result.retval == 0  # TC_ACT_OK: never dropped
        return struct.unpack_from("I", result.ctx_out, 48)[0]

    def usage(self) -> dict[tuple[int, int], tuple[int, int]]:
        out = {}
        for sid, pair in self.counters.read(s.id for s in self.cfg.all_slices()).items():
            for dclass, u in enumerate(pair):
                out[(sid, dclass)] = (u.bytes, u.packets)
        return out


@pytest.fixture(scope="module")
def cgroup_dir() -> Iterator[Path]:
    mount = Path(datapath.cgroup2_mount())
    path = mount / unique("bwbpftest-") / "tenant"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        for d in (path, path.parent):
            d.rmdir()


@pytest.fixture(scope="module")
def loaded(cgroup_dir: Path) -> Iterator[Loaded]:
    bpffs = f"/sys/fs/bpf/{unique('bwbpftest-')}"
    os.mkdir(bpffs)
    text = f"""
        [node]
        interface = "lo"
        bpffs = "{bpffs}"
        [exempt]
        prefixes = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
        [[slice]]
        name = "by-cgroup"
        id = {CGROUP_SLICE}
        match = {{ cgroup = "{cgroup_dir.parent}" }}
        [[slice]]
        name = "by-uid"
        id = {UID_SLICE}
        match = {{ uid = 0 }}
        [[slice]]
        name = "by-mark"
        id = {MARK_SLICE}
        match = {{ mark = 7 }}
        [[slice]]
        name = "by-src"
        id = {SRC_SLICE}
        match = {{ src = ["10.1.0.0/16", "fd00:1::/64"] }}
        [[slice]]
        name = "top"
        id = {limits.MAX_SLICE_ID}
        match = {{ mark = 70000 }}
    """
    cfg = config.parse(text)
    loaded = Loaded(cfg)
    # The uid slice would catch every test-run packet (their dummy socket has uid 0): keep
    # it out of the way except in the test about uids.
    loaded.bpf["slice_by_uid"].clear()
    try:
        yield loaded
    finally:
        loaded.counters.close()
        datapath.remove_pins(cfg.pin_dir)
        shutil.rmtree(bpffs, ignore_errors=True)


def delta(
    loaded: Loaded, packet: bytes, mark: int = 0, times: int = 1, repeat: int = 1
) -> tuple[int, dict[tuple[int, int], tuple[int, int]]]:
    before = loaded.usage()
    chosen = {loaded.run(packet, mark, repeat) for _ in range(times)}
    assert len(chosen) == 1
    after = loaded.usage()
    changed = {
        k: (after[k][0] - before[k][0], after[k][1] - before[k][1])
        for k in after
        if after[k] != before[k]
    }
    return chosen.pop(), changed


NORMAL, EXEMPT = limits.DCLASS_NORMAL, limits.DCLASS_EXEMPT
CASES = [
    pytest.param(eth(0x0800, ipv4("10.9.0.1", "203.0.113.5")), 0, (0, NORMAL), id="ipv4-default"),
    pytest.param(eth(0x0800, ipv4("10.9.0.1", "192.0.2.77")), 0, (0, EXEMPT), id="ipv4-exempt"),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "198.51.100.7")), 0, (0, EXEMPT), id="ipv4-exempt-host-prefix"
    ),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "198.51.100.8")), 0, (0, NORMAL), id="ipv4-next-to-host-prefix"
    ),
    pytest.param(eth(0x86DD, ipv6("fd00:9::1", "2001:db8:5::1")), 0, (0, EXEMPT), id="ipv6-exempt"),
    pytest.param(eth(0x86DD, ipv6("fd00:9::1", "2001:db9::1")), 0, (0, NORMAL), id="ipv6-normal"),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "192.0.2.1")), 7, (MARK_SLICE, EXEMPT), id="mark-exempt"
    ),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "203.0.113.1")), 7, (MARK_SLICE, NORMAL), id="mark-normal"
    ),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "203.0.113.1")), 8, (0, NORMAL), id="unknown-mark-default"
    ),
    pytest.param(
        eth(0x0800, ipv4("10.1.200.3", "203.0.113.1")), 0, (SRC_SLICE, NORMAL), id="src4-prefix"
    ),
    pytest.param(
        eth(0x86DD, ipv6("fd00:1::42", "2001:db8::1")),
        0,
        (SRC_SLICE, EXEMPT),
        id="src6-prefix-exempt",
    ),
    pytest.param(
        eth(0x0800, ipv4("10.1.200.3", "203.0.113.1")),
        7,
        (MARK_SLICE, NORMAL),
        id="mark-wins-over-src",
    ),
    pytest.param(
        eth(0x0800, ipv4("10.9.0.1", "192.0.2.9")),
        70000,  # above the largest slice id: the hash, not the array
        (limits.MAX_SLICE_ID, EXEMPT),
        id="highest-slice-id-large-mark",
    ),
    pytest.param(
        eth(0x0800, ipv4("10.1.0.1", "192.0.2.9"), vlans=(0x8100,)),
        0,
        (SRC_SLICE, EXEMPT),
        id="vlan-tagged",
    ),
    pytest.param(
        eth(0x86DD, ipv6("fd00:1::1", "2001:db8::9"), vlans=(0x88A8, 0x8100)),
        0,
        (SRC_SLICE, EXEMPT),
        id="qinq-tagged-ipv6",
    ),
    pytest.param(eth(0x0806, b"\x00" * 28), 0, (0, NORMAL), id="arp-non-ip"),
]


@pytest.mark.parametrize(("packet", "mark", "expected"), CASES)
def test_packet_lands_in_its_counter_and_class(
    loaded: Loaded, packet: bytes, mark: int, expected: tuple[int, int]
) -> None:
    errors_before = loaded.counters.errors()
    # A prime number of packets, so that no other count can pass for it.
    chosen, changed = delta(loaded, packet, mark, times=7)
    assert changed == {expected: (7 * len(packet), 7)}
    assert chosen == classid.slice_class(*expected)
    assert loaded.counters.errors() == errors_before


@pytest.mark.parametrize(
    "packet",
    [
        # BPF_PROG_TEST_RUN refuses an untagged IP packet with a short header, so the cut
        # comes behind a VLAN tag: once inside the IPv4 header, once inside the tag itself.
        pytest.param(eth(0x0800, ipv4("10.1.0.1", "192.0.2.1")[:9], vlans=(0x8100,)), id="ipv4"),
        pytest.param(
            eth(0x86DD, ipv6("fd00:1::1", "2001:db8::1")[:30], vlans=(0x8100,)), id="ipv6"
        ),
        pytest.param(eth(0x0800, b"", vlans=(0x8100,))[:16], id="vlan-tag"),
    ],
)
def test_truncated_header_fails_open_and_is_counted(loaded: Loaded, packet: bytes) -> None:
    before = loaded.counters.errors()
    chosen, changed = delta(loaded, packet, times=3)
    assert changed == {(0, NORMAL): (3 * len(packet), 3)}
    assert chosen == classid.slice_class(0, NORMAL)
    after = loaded.counters.errors()
    assert after["truncated"] - before["truncated"] == 3
    assert {k: after[k] - before[k] for k in after if k != "truncated"} == {
        "counter_lookup": 0,
        "slice_out_of_range": 0,
    }


def test_mark_pointing_past_the_last_slice_is_an_error(loaded: Loaded) -> None:
    # Marks above the largest slice id are looked up in the hash (smaller ones in an array).
    table = loaded.bpf["slice_by_mark"]
    mark = limits.MAX_SLICE_ID + 12345
    table[ctypes.c_uint32(mark)] = ctypes.c_uint32(limits.MAX_SLICE_ID + 1)
    try:
        before = loaded.counters.errors()
        chosen, changed = delta(loaded, eth(0x0800, ipv4("10.9.0.1", "203.0.113.1")), mark)
        assert chosen == classid.slice_class(0, NORMAL)
        assert list(changed) == [(0, NORMAL)]
        assert loaded.counters.errors()["slice_out_of_range"] == before["slice_out_of_range"] + 1
    finally:
        del table[ctypes.c_uint32(mark)]


@contextlib.contextmanager
def dummy_socket_is_uid_slice(loaded: Loaded) -> Iterator[None]:
    """BPF_PROG_TEST_RUN gives its packets a dummy socket owned by uid 0: map that uid to
    UID_SLICE for the block (the fixture keeps the uid map empty otherwise)."""
    table = loaded.bpf["slice_by_uid"]
    table[ctypes.c_uint32(0)] = ctypes.c_uint32(UID_SLICE)
    try:
        yield
    finally:
        table.clear()


def test_socket_uid(loaded: Loaded) -> None:
    with dummy_socket_is_uid_slice(loaded):
        chosen, changed = delta(loaded, eth(0x0800, ipv4("10.9.0.1", "192.0.2.3")), times=5)
        assert changed == {(UID_SLICE, EXEMPT): (5 * 56, 5)}
        assert chosen == classid.slice_class(UID_SLICE, EXEMPT)
        # A mark match comes first.
        chosen, _ = delta(loaded, eth(0x0800, ipv4("10.9.0.1", "192.0.2.3")), mark=7)
        assert chosen == classid.slice_class(MARK_SLICE, EXEMPT)


def test_a_sockets_later_packets_take_the_slice_it_remembered(loaded: Loaded) -> None:
    """One test run repeated is one socket's packets: the first works the slice out, the
    others read it from the socket; a socket that matched nothing still goes on to the
    source prefix, and a mark still comes first, on every packet."""
    with dummy_socket_is_uid_slice(loaded):
        chosen, changed = delta(loaded, eth(0x0800, ipv4("10.9.0.1", "203.0.113.9")), repeat=40)
        assert changed == {(UID_SLICE, NORMAL): (40 * 56, 40)}
        assert chosen == classid.slice_class(UID_SLICE, NORMAL)
        chosen, changed = delta(loaded, eth(0x0800, ipv4("10.9.0.1", "203.0.113.9")), 7, 1, 30)
        assert changed == {(MARK_SLICE, NORMAL): (30 * 56, 30)}
    chosen, changed = delta(loaded, eth(0x0800, ipv4("10.1.7.7", "203.0.113.9")), repeat=25)
    assert changed == {(SRC_SLICE, NORMAL): (25 * 56, 25)}
    assert chosen == classid.slice_class(SRC_SLICE, NORMAL)


def test_cgroup_subtree(loaded: Loaded, cgroup_dir: Path) -> None:
    """The dummy socket belongs to the calling task's cgroup: move this process into a
    child of the configured cgroup, and its packets belong to that slice."""
    own = Path("/proc/self/cgroup").read_text()
    original = next(line.split(":", 2)[2] for line in own.splitlines() if line.startswith("0::"))
    mount = Path(datapath.cgroup2_mount())
    (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))
    try:
        chosen, changed = delta(loaded, eth(0x86DD, ipv6("fd00:9::1", "2001:db9::1")), times=3)
    finally:
        (mount / original.strip().lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
    assert changed == {(CGROUP_SLICE, NORMAL): (3 * 64, 3)}
    assert chosen == classid.slice_class(CGROUP_SLICE, NORMAL)
    # Back in the original cgroup, the same packet is the default slice's again.
    chosen, _ = delta(loaded, eth(0x86DD, ipv6("fd00:9::1", "2001:db9::1")))
    assert chosen == classid.slice_class(0, NORMAL)


def test_reload_reuses_pinned_counters(loaded: Loaded) -> None:
    packet = eth(0x0800, ipv4("10.9.0.1", "203.0.113.1"))
    loaded.run(packet, 7)
    before = loaded.usage()[(MARK_SLICE, NORMAL)]
    again = Loaded(loaded.cfg)  # a second program, as `bwbpf up` does
    try:
        assert again.usage()[(MARK_SLICE, NORMAL)] == before
        again.run(packet, 7)
        assert loaded.usage()[(MARK_SLICE, NORMAL)] == (before[0] + len(packet), before[1] + 1)
    finally:
        again.counters.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run on")
def test_destination_cache_is_right_on_every_cpu(loaded: Loaded) -> None:
    """The per-CPU destination cache: an entry made on one CPU has zero in every other CPU's
    slot, which must read as "unknown" there, not as "normal"."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    packet = eth(0x0800, ipv4("10.9.0.1", "192.0.2.250"))  # exempt, not yet cached
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            chosen, changed = delta(loaded, packet)
            assert (cpu, chosen, changed) == (
                cpu,
                classid.slice_class(0, EXEMPT),
                {(0, EXEMPT): (len(packet), 1)},
            )
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
