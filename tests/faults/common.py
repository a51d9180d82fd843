"""What the fault tests share: a real `bwbpf run` on a veth in a network namespace of its
own (tests/integration/netns.py), its config, status and log, mounts made for a test, and
a receiver (tests/integration/sink.py) in the far namespace that records every datagram
it gets, so that what the ledger charged is compared with what actually arrived.

Every name starts with "bwfs" and a random suffix; ``cleanup`` stops the processes we
started (by pid), removes the namespaces and pins and unmounts what was mounted, even
after a failure.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from bwbpf import config, state, status
from bwbpf.config import Config
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from tests.conftest import unique
from tests.helpers import stop, wait_for
from tests.integration.netns import BWBPF, Topology, sh

SLICE, SLICE_ID = "web", 9
# Ethernet 14 + IPv4 20 + UDP 8 around every datagram.
UDP4_OVERHEAD = 42
# Ethernet 14 + IPv6 40 + UDP 8.
UDP6_OVERHEAD = 62
OVERHEAD = {4: UDP4_OVERHEAD, 6: UDP6_OVERHEAD}

CONFIG = """
[node]
interface = "{interface}"
line_rate = "1gbit"
node_cap = "500mbit"
tick = "{tick}"
state_dir = "{state_dir}"

[quota]
period = "{period}"
{extra}
{slices}
"""

# The slice most fault tests watch: matched by the topology's limited source address.
SLICE_TEMPLATE = """
[[slice]]
name = "{slice}"
id = {slice_id}
match = {{ src = ["{src}/32"] }}
normal = {{ limit = "{limit}", threshold = 0.5, max_rate = "{max_rate}", min_rate = "8bit" }}
"""


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

# libfaketime 0.9.10 (Debian 12) shifts the deadline of an absolute clock_nanosleep on
# CLOCK_MONOTONIC by the wall clock even when told not to fake that clock, and the kernel
# refuses the negative time: Python 3.11's time.sleep, which sleeps that way, always fails
# with EINVAL (so does subprocess.run with a timeout, as the daemon's classifier loader
# calls it). Preloaded in front of libfaketime, this sends sleeps on every clock but the
# wall clock's straight to the kernel, as they would go without libfaketime; wall clock
# sleeps still go through it.
SLEEP_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t id, int flags, const struct timespec *req,
                    struct timespec *rem) {
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (id != CLOCK_REALTIME && id != CLOCK_REALTIME_ALARM && id != CLOCK_TAI)
        return syscall(SYS_clock_nanosleep, id, flags, req, rem) == 0 ? 0 : errno;
    if (next == NULL)
        next = dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(id, flags, req, rem);
}
"""


class FaultEnv:
    def __init__(self, tmp: Path) -> None:
        self.topo = Topology(
            src_ns=unique("bwfsS"),
            dst_ns=unique("bwfsD"),
            veth_a=unique("bwfsA"),
            veth_b=unique("bwfsB"),
        )
        self.tmp = tmp
        self.config = tmp / "bwbpf.toml"
        self.state_dir = tmp / "state"
        self.mounts: list[Path] = []
        self.logs = 0
        self.cfg: Config | None = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_dir = tmp / "sink"
        self.received_path = self.sink_dir / "received"

    def setup(self) -> None:
        """The namespaces and veths, then the receiver, bound before any test sends."""
        self.topo.setup()
        self.start_sink()

    def start_sink(self) -> None:
        """The receiver in the destination namespace, on the UDP port traffic.py sends to
        (9); returns once it is bound (its ready file exists)."""
        self.sink_dir.mkdir(exist_ok=True)
        ready = self.sink_dir / "ready"
        sink = self.sink = self.topo.background_dst(
            [
                sys.executable,
                "-m",
                "tests.integration.sink",
                "--out",
                str(self.received_path),
                "--ready",
                str(ready),
            ],
            log=self.sink_dir / "sink.log",
        )

        def bound() -> bool:
            log = (self.sink_dir / "sink.log").read_text()
            assert sink.poll() is None, f"the receiver exited {sink.returncode}: {log}"
            return ready.exists()

        wait_for("the receiver to bind", bound, timeout=30)

    def received(self) -> dict[int, tuple[int, int]]:
        """What the receiver got so far: {IP version: (datagrams, payload bytes)}. A last
        line still being written (no newline yet) is not counted."""
        got = {4: (0, 0), 6: (0, 0)}
        try:
            text = self.received_path.read_text()
        except FileNotFoundError:
            return got
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            version, size = (int(x) for x in line.split())
            count, total = got[version]
            got[version] = (count + 1, total + size)
        return got

    def received_wire(self) -> int:
        """Bytes on the wire of every datagram the receiver got: payload plus Ethernet, IP
        and UDP headers (what bwbpf's classifier counts on the sending device)."""
        return sum(total + count * OVERHEAD[v] for v, (count, total) in self.received().items())

    def udp_counters(self) -> dict[str, int]:
        """The destination namespace's UDP counters (/proc/net/snmp is per namespace):
        RcvbufErrors or NoPorts explain a datagram sent and not received."""
        rows = [
            line.split()
            for line in sh(*self.topo.in_dst("cat", "/proc/net/snmp")).stdout.splitlines()
            if line.startswith("Udp:")
        ]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=True)}

    def wait_received(self, expected: int, timeout: float = 30) -> int:
        """Until the receiver's wire total reaches ``expected``; returns that total (which
        the test compares: more than expected is returned too, not waited out)."""

        def reached() -> tuple[int] | None:
            # A one-element tuple: wait_for waits for a true value, and 0 bytes can be one.
            got = self.received_wire()
            return (got,) if got >= expected else None

        try:
            return int(wait_for(f"{expected} wire bytes received", reached, timeout=timeout)[0])
        except AssertionError:
            raise AssertionError(
                f"the receiver got {self.received_wire()} wire bytes, expected {expected};"
                f" {self.received()}; UDP counters there: {self.udp_counters()}"
            ) from None

    def daemon_status(self) -> status.DaemonStatus | None:
        """The daemon's last tick as `bwbpf stat` reads it (the status file, and the slices
        from the ledger's state file). Read with the configuration last written by
        write_config: a test may have broken the file since, on purpose."""
        cfg = self.cfg or config.load(self.config, check_interface=False)
        return status.read(cfg)

    def ledger(self) -> Ledger | None:
        """The ledger as saved (snapshot and journal), as the next start would read it."""
        return state.read_state(str(self.state_path), self.topo.veth_a)

    def saved_at(self) -> float:
        """When the daemon last wrote its state (the snapshot or a journal line); 0 if never."""
        paths = (self.state_path, Path(state.journal_file(str(self.state_path))))
        return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)

    def wait_counted(
        self, expected: int, slice_name: str = SLICE, timeout: float = 60
    ) -> status.DaemonStatus:
        """Until the receiver got exactly ``expected`` wire bytes and the daemon's ledger
        charges the slice (normal class) what the receiver got; that tick's status. The
        default timeout covers a first tick that compiles the classifier."""
        got = self.wait_received(expected)
        assert got == expected, f"the receiver got {got} wire bytes, the test sent {expected}"
        charged = None

        def charged_all() -> status.DaemonStatus | None:
            nonlocal charged
            st = self.daemon_status()
            if st is None or slice_name not in st.slices:
                return None
            charged = st.slices[slice_name]["classes"]["normal"]["bytes"]
            return st if charged == got else None

        try:
            return cast(
                status.DaemonStatus,
                wait_for(f"{slice_name} charged {got}", charged_all, timeout=timeout),
            )
        except AssertionError:
            raise AssertionError(
                f"{slice_name}: ledger usage {charged}, the receiver got {got} wire bytes"
            ) from None

    def send(self, count: int, size: int, dst: str | None = None, **opts: object) -> int:
        """``count`` datagrams of ``size`` payload bytes from the limited source address
        (the slice SLICE's) to the receiver; their bytes on the wire."""
        opts.setdefault("src", self.topo.limited_src_ip)
        self.topo.send(dst or self.topo.dst_ip, count, size, **opts)
        return count * (size + (UDP6_OVERHEAD if ":" in (dst or "") else UDP4_OVERHEAD))

    def config_text(
        self,
        slices: str | None = None,
        *,
        tick: str = "1s",
        period: str = "1h",
        extra: str = "",
        max_rate: str = "100mbit",
        limit: str = "100MB",
        more_slices: str = "",
    ) -> str:
        """The test's config: ``slices`` as given (TOML ``[[slice]]`` tables), or by default
        the one slice SLICE matched by the limited source address (normal class: ``limit``
        and ``max_rate``); ``more_slices`` after them."""
        if slices is None:
            slices = SLICE_TEMPLATE.format(
                slice=SLICE,
                slice_id=SLICE_ID,
                src=self.topo.limited_src_ip,
                max_rate=max_rate,
                limit=limit,
            )
        slices += more_slices
        return CONFIG.format(
            interface=self.topo.veth_a,
            state_dir=self.state_dir,
            tick=tick,
            period=period,
            extra=extra,
            slices=slices,
        )

    def write_config(self, slices: str | None = None, **kwargs: str) -> Path:
        self.config.write_text(self.config_text(slices, **kwargs))
        try:
            self.cfg = config.load(self.config, check_interface=False)
        except Error:
            self.cfg = None  # a config a test means to be refused
        return self.config

    @property
    def pin_dir(self) -> Path:
        return Path("/sys/fs/bpf/bwbpf") / self.topo.veth_a

    @property
    def status_path(self) -> Path:
        return self.state_dir / f"{self.topo.veth_a}.status.json"

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"ledger-{self.topo.veth_a}.json"

    def start_daemon(self, environ: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`bwbpf run -v` in the source namespace, with ``environ`` added to its
        environment (through env(1): the variables reach the daemon and nothing else)."""
        self.logs += 1
        cmd = [BWBPF, "-v", "run", "-c", str(self.config)]
        if environ:
            cmd = ["env", *(f"{k}={v}" for k, v in environ.items()), *cmd]
        proc = self.topo.background(cmd, log=self.tmp / f"daemon{self.logs}.log")

        # nsenter only switches the network namespace and execs, as env does: the pid is
        # bwbpf's once its interpreter runs. (nsenter's own argv names bwbpf too, so the
        # program name is what tells.)
        def execed() -> bool:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            return Path(os.fsdecode(argv[0])).name not in ("nsenter", "env")

        wait_for("bwbpf to exec", execed)
        return proc

    def daemon_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("daemon*.log")))

    def wait_tick(self, proc: subprocess.Popen[bytes], after: float, timeout: float = 60) -> dict:
        """The status of proc's first tick after time ``after``, with its slices (as
        DaemonStatus's fields)."""

        def ticked() -> dict | None:
            assert proc.poll() is None, f"daemon exited {proc.returncode}: {self.daemon_log()}"
            # One read for the tick and its slices: they belong to the same tick.
            st = self.daemon_status()
            if st is not None and st.pid == proc.pid and st.last_tick > after:
                return dataclasses.asdict(st)
            return None

        return wait_for("a daemon tick", ticked, timeout=timeout)

    def once(self) -> subprocess.CompletedProcess[str]:
        """`bwbpf run --once` in the source namespace."""
        return self.topo.bwbpf("run", "--once", "-c", str(self.config), check=False)

    def has_htb_root(self) -> bool:
        out = sh(*self.topo.in_src("tc", "qdisc", "show", "dev", self.topo.veth_a)).stdout
        return "htb" in out

    def mount(self, *args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        sh("mount", *args, str(target))
        self.mounts.append(target)

    def tx_bytes(self) -> int:
        """What bwbpf's device (veth A) has sent, by its own counter."""
        return int(self.topo.link_stats("src")["tx"]["bytes"])

    def peer_rx_bytes(self) -> int:
        """What the far end (veth B, in the destination namespace) has received."""
        return int(self.topo.link_stats("dst")["rx"]["bytes"])

    def cleanup(self) -> None:
        try:
            try:
                # Ours, by its pid, before the namespace it listens in goes (teardown would
                # stop it too, as one of the topology's processes).
                stop(self.sink)
            finally:
                self.topo.teardown()
        finally:
            for target in reversed(self.mounts):
                if sh("umount", str(target), check=False).returncode != 0:
                    sh("umount", "-l", str(target), check=False)
            shutil.rmtree(self.state_dir, ignore_errors=True)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; the file that does it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def faked_daemon(env: FaultEnv, offset: Path, shim: Path) -> subprocess.Popen[bytes]:
    """The daemon with libfaketime preloaded: its wall clock is offset by what the file
    ``offset`` says (rewritten by the test); its monotonic clock stays real."""
    return env.start_daemon(
        {
            "LD_PRELOAD": f"{shim}:{LIBFAKETIME}",
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
