"""Two network namespaces joined by a veth pair, made and removed by the tests.

    <src ns>  veth A (bwbpf's egress device) ──── veth B  <dst ns>

Every name carries a random suffix; ``teardown`` removes what ``setup`` made even when the
test failed half-way. Traffic only ever goes between these two namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bwbpf import classid, config, datapath, limits, status
from bwbpf.shaper import Shaper, installed_rate
from tests.conftest import unique
from tests.helpers import read_json, wait_for

REPO = Path(__file__).resolve().parents[2]
BWBPF = str(Path(sys.executable).parent / "bwbpf")
# iperf3's UDP datagrams: it reports payload bits, while HTB shapes whole frames, 42 bytes
# more each (Ethernet 14, IPv4 20, UDP 8).
UDP_PAYLOAD = 1200
UDP_FRAME = UDP_PAYLOAD + 42
# How long a test waits for a daemon's first tick or a reload that changes the slices: both
# compile the classifier, which takes ~1 s here and tens of seconds under software emulation
# (make vm-test without KVM). A bound, not a timing: the wait ends when the event is seen.
FIRST_TICK_S = 90.0


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Topology:
    src_ns: str = field(default_factory=lambda: unique("bwtS"))
    dst_ns: str = field(default_factory=lambda: unique("bwtD"))
    veth_a: str = field(default_factory=lambda: unique("bwtA"))
    veth_b: str = field(default_factory=lambda: unique("bwtB"))
    octet: int = field(default_factory=lambda: random.randint(1, 254))
    made: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def src_ip(self) -> str:
        return f"10.250.{self.octet}.1"

    @property
    def alt_src_ip(self) -> str:
        """A second source address, for the source-prefix match."""
        return f"10.250.{self.octet}.10"

    @property
    def limited_src_ip(self) -> str:
        """A third source address, for the slice whose ceiling is measured."""
        return f"10.250.{self.octet}.20"

    @property
    def dst_ip(self) -> str:
        return f"10.250.{self.octet}.2"

    @property
    def exempt_dst_ip(self) -> str:
        """Inside the exempt prefix 10.250.<octet>.128/25."""
        return f"10.250.{self.octet}.200"

    @property
    def exempt_prefix(self) -> str:
        return f"10.250.{self.octet}.128/25"

    @property
    def src_ip6(self) -> str:
        return f"fd50:{self.octet:x}::1"

    @property
    def dst_ip6(self) -> str:
        return f"fd50:{self.octet:x}::2"

    def in_src(self, *cmd: str) -> list[str]:
        # nsenter switches only the network namespace: bpffs and the cgroup tree stay visible
        # (`ip netns exec` would remount /sys and hide both).
        return ["nsenter", f"--net=/run/netns/{self.src_ns}", *cmd]

    def in_dst(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.dst_ns}", *cmd]

    def setup(self) -> None:
        sh("ip", "netns", "add", self.src_ns)
        self.made.append("src")
        sh("ip", "netns", "add", self.dst_ns)
        self.made.append("dst")
        # No router solicitations from bwbpf's device: they would land in the default slice
        # seconds later, in the middle of a test's exact counts.
        for conf in ("all", "default"):
            sh(*self.in_src("sysctl", "-qw", f"net.ipv6.conf.{conf}.router_solicitations=0"))
        sh(
            "ip",
            "link",
            "add",
            self.veth_a,
            "netns",
            self.src_ns,
            "type",
            "veth",
            "peer",
            "name",
            self.veth_b,
            "netns",
            self.dst_ns,
        )
        a, b = self.octet, self.octet
        for ns, dev, addrs in (
            (
                self.src_ns,
                self.veth_a,
                [f"10.250.{a}.1/24", f"10.250.{a}.10/24", f"10.250.{a}.20/24", f"fd50:{a:x}::1/64"],
            ),
            (
                self.dst_ns,
                self.veth_b,
                [f"10.250.{b}.2/24", f"10.250.{b}.200/24", f"fd50:{b:x}::2/64"],
            ),
        ):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Permanent neighbours: no ARP or ND packet of bwbpf's device mixes with a test's
        # datagrams, and none of them waits in a resolution queue.
        # Both ways: the far side's ICMP errors would otherwise make bwbpf's side answer ARP.
        for ns, dev, peer_ns, peer_dev, ips in (
            (
                self.src_ns,
                self.veth_a,
                self.dst_ns,
                self.veth_b,
                (self.dst_ip, self.exempt_dst_ip, self.dst_ip6),
            ),
            (
                self.dst_ns,
                self.veth_b,
                self.src_ns,
                self.veth_a,
                (self.src_ip, self.alt_src_ip, self.limited_src_ip, f"fd50:{a:x}::1"),
            ),
        ):
            link = json.loads(sh("ip", "-n", peer_ns, "-j", "link", "show", peer_dev).stdout)
            for ip in ips:
                sh(
                    "ip",
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    link[0]["address"],
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                )

    def background(
        self, cmd: list[str], log: Path | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """A process in the source namespace (stdout and stderr to log), started in ``cwd``
        (REPO: so that ``python -m tests...`` works); teardown stops it by its pid if it
        is still running."""
        out = log.open("wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(self.in_src(*cmd), stdout=out, stderr=out, cwd=cwd)
        self.processes.append(proc)
        return proc

    def background_dst(self, cmd: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
        """A process in the destination namespace (a receiver), started from the
        repository (so ``python -m tests...`` works) and stopped by teardown like those of
        ``background``."""
        out = log.open("wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(self.in_dst(*cmd), stdout=out, stderr=out, cwd=REPO)
        self.processes.append(proc)
        return proc

    def link_stats(self, side: str = "src") -> dict:
        """The kernel's counters of veth A ("src") or veth B ("dst"), read in its own
        namespace: {"rx": {"bytes": ..., "packets": ...}, "tx": {...}}. (Under nsenter
        /sys/class/net is still the host's, which does not have these devices.)"""
        ns, dev = (self.src_ns, self.veth_a) if side == "src" else (self.dst_ns, self.veth_b)
        out = sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout
        return dict(json.loads(out)[0]["stats64"])

    def run_daemon(
        self, config: Path, *args: str, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`bwbpf run` in the source namespace, stopped by teardown."""
        return self.background([BWBPF, "-v", "run", "-c", str(config), *args], log=log)

    def teardown(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        if "src" in self.made:
            sh("ip", "netns", "del", self.src_ns, check=False)
        if "dst" in self.made:
            sh("ip", "netns", "del", self.dst_ns, check=False)
        # Pins a failed test may have left (bwbpf down removes them otherwise).
        datapath.remove_pins(f"/sys/fs/bpf/bwbpf/{self.veth_a}")

    def bwbpf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.in_src(BWBPF, *args), check=check)

    def stat(self, config: Path, *names: str) -> dict:
        return json.loads(self.bwbpf("stat", "--json", "-c", str(config), *names).stdout)

    def htb_ceil(self, slice_id: int, dclass: int = limits.DCLASS_NORMAL) -> int:
        with Shaper(self.veth_a, netns=self.src_ns) as shaper:
            return shaper.classes()[classid.slice_class(slice_id, dclass)].ceil_bps

    def tick_in_force(
        self, cfg_path: Path, slice_name: str, dclass: int = limits.DCLASS_NORMAL
    ) -> tuple[dict, int]:
        """(The daemon's status file of one tick, the ceiling HTB holds for one class of
        one slice) read with no tick in between, so the two can be compared exactly (at
        HTB's resolution: shaper.installed_rate).

        The ceiling moves at every tick, and on a slow machine (software emulation) more
        than one tick can pass between two reads. A tick shapes before it publishes its
        status, so HTB read between two reads of the same status holds that tick's ceiling
        unless the next tick has just shaped: then read again, for up to 20 s. After that
        the last pair is returned as it is, for the test's assertion to show.
        """
        cfg = config.load(cfg_path, check_interface=False)
        slice_id = next(s.id for s in cfg.all_slices() if s.name == slice_name)
        name = limits.DCLASSES[dclass]
        deadline = time.monotonic() + 20
        while True:
            before = status.read(cfg)
            ceil = self.htb_ceil(slice_id, dclass)
            after = status.read(cfg)
            assert after is not None, f"no status file from the daemon for {cfg.interface}"
            doc = {"last_tick": after.last_tick, "slices": after.slices}
            decided = after.slices[slice_name]["classes"][name]["ceil_bps"]
            same_tick = before is not None and before.last_tick == after.last_tick
            if (same_tick and ceil == installed_rate(decided)) or time.monotonic() > deadline:
                return doc, ceil
            time.sleep(0.1)

    def iperf3(
        self, src: str, seconds: int, udp_rate: str | None = None, port: int = 5201
    ) -> float:
        """Bits per second the far side received from an iperf3 client bound to src (TCP,
        or UDP offered at udp_rate). The server is bound to its address: an unbound UDP
        server would answer from the primary one."""
        server = subprocess.Popen(
            self.in_dst("iperf3", "-s", "-1", "-p", str(port), "-B", self.dst_ip),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        udp = ["-u", "-b", udp_rate, "-l", str(UDP_PAYLOAD)] if udp_rate else ["-O", "1"]
        try:
            time.sleep(0.4)
            out = sh(
                *self.in_src(
                    "iperf3",
                    "-c",
                    self.dst_ip,
                    "-p",
                    str(port),
                    "-t",
                    str(seconds),
                    "-J",
                    "-B",
                    src,
                    *udp,
                ),
                timeout=seconds + 30,
            )
        finally:
            if server.poll() is None:
                server.wait(timeout=20)
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"])

    def send(self, dst: str, count: int, size: int, **opts: object) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tests.integration.traffic",
            "--dst",
            dst,
            "--count",
            str(count),
            "--size",
            str(size),
        ]
        for key, value in opts.items():
            cmd += [f"--{key}", str(value)]
        subprocess.run(self.in_src(*cmd), check=True, cwd=REPO, timeout=60)


def wait_status(
    cfg_path: Path, slice_name: str, expected: int, timeout_s: float = FIRST_TICK_S
) -> status.DaemonStatus:
    """Until the daemon's status file (what its ledger read at a tick) shows ``expected``
    normal bytes for the slice; returns that status. The default timeout covers a first
    tick that compiles the classifier under software emulation."""
    cfg = config.load(cfg_path, check_interface=False)
    deadline = time.monotonic() + timeout_s
    got = None
    while True:
        st = status.read(cfg)
        if st is not None and slice_name in st.slices:
            got = st.slices[slice_name]["classes"]["normal"]["bytes"]
            if got == expected:
                return st
        assert time.monotonic() < deadline, f"{slice_name}: ledger usage {got}, expected {expected}"
        time.sleep(0.3)


def wait_tick(state_dir: Path, interface: str, pid: int, after: float) -> None:
    """Until the status file shows a tick of daemon ``pid`` later than ``after`` (epoch
    seconds; 0: its first), bounded like a first tick (it may compile)."""
    path = state_dir / f"{interface}.status.json"

    def ticked() -> bool:
        doc = read_json(path)
        return bool(doc and doc["pid"] == pid and doc["last_tick"] > after)

    wait_for("a daemon tick", ticked, timeout=FIRST_TICK_S)


class DaemonEnv:
    """A topology of its own (every name starting with ``prefix``) and the files of one
    daemon in a test's directory: its config, state directory and log."""

    def __init__(self, tmp: Path, prefix: str) -> None:
        self.topo = Topology(
            src_ns=unique(f"{prefix}S"),
            dst_ns=unique(f"{prefix}D"),
            veth_a=unique(f"{prefix}A"),
            veth_b=unique(f"{prefix}B"),
        )
        self.tmp = tmp
        self.config = tmp / "bwbpf.toml"
        self.state_dir = tmp / "state"
        self.log = tmp / "daemon.log"

    def wait_tick(self, pid: int, after: float) -> None:
        wait_tick(self.state_dir, self.topo.veth_a, pid, after)

    @contextlib.contextmanager
    def made(self) -> Iterator[None]:
        """The topology for the block, removed afterwards whatever happens (a test without
        nsenter is skipped: it runs everything in the topology's namespace)."""
        if shutil.which("nsenter") is None:
            pytest.skip("nsenter is not installed")
        try:
            self.topo.setup()
            yield
        finally:
            self.topo.teardown()
