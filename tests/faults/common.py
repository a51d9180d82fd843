"""What the fault tests share: a real `bwbpf run` on a veth in a network namespace of its
own (tests/integration/netns.py), its config, status and log, and mounts made for a test.

Every name starts with "bwfs" and a random suffix; ``cleanup`` stops the daemons we
started (by pid), removes the namespaces and pins and unmounts what was mounted, even
after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import unique
from tests.integration.netns import Topology, sh
from tests.integration.test_daemon import read_json, wait_for

SLICE, SLICE_ID = "web", 9
# Ethernet 14 + IPv4 20 + UDP 8 around every datagram.
UDP4_OVERHEAD = 42

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
normal = {{ limit = "100MB", threshold = 0.5, max_rate = "{max_rate}", min_rate = "8bit" }}
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

    def config_text(
        self,
        slices: str | None = None,
        *,
        tick: str = "1s",
        period: str = "1h",
        extra: str = "",
        max_rate: str = "100mbit",
    ) -> str:
        """The test's config: ``slices`` as given (TOML ``[[slice]]`` tables), or by default
        the one slice SLICE matched by the limited source address."""
        if slices is None:
            slices = SLICE_TEMPLATE.format(
                slice=SLICE, slice_id=SLICE_ID, src=self.topo.limited_src_ip, max_rate=max_rate
            )
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

    def start_daemon(self) -> subprocess.Popen[bytes]:
        self.logs += 1
        proc = self.topo.run_daemon(self.config, log=self.tmp / f"daemon{self.logs}.log")
        # nsenter only switches the network namespace: it execs bwbpf, no child process.
        wait_for(
            "bwbpf to exec", lambda: b"bwbpf" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        )
        return proc

    def daemon_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("daemon*.log")))

    def wait_tick(self, proc: subprocess.Popen[bytes], after: float, timeout: float = 60) -> dict:
        """The status file of proc's first tick after time ``after``."""

        def ticked() -> dict | None:
            assert proc.poll() is None, f"daemon exited {proc.returncode}: {self.daemon_log()}"
            doc = read_json(self.status_path)
            if doc and doc["pid"] == proc.pid and doc["last_tick"] > after:
                return doc
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

    def cleanup(self) -> None:
        try:
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
