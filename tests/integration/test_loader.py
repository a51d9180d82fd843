"""A real `bwbpf run` keeps no compiler: bcc and LLVM live only in the loader process, so
the daemon maps neither (nor OpenSSL) after its start nor after a reload that changes the
slices, its pins name one program's maps at a time, and its traffic is still counted
exactly."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import datapath
from tests.helpers import stop, wait_for
from tests.integration.netns import FIRST_TICK_S, DaemonEnv, sh

pytestmark = [pytest.mark.root, pytest.mark.integration]

# Ethernet 14 + IPv4 20 + UDP 8 around every datagram.
UDP4_OVERHEAD = 42
# bcc and LLVM belong to the loader process; OpenSSL to nobody (only a mail's child loads it).
COMPILER_LIBS = ("libbcc", "libLLVM", "libclang", "libcrypto")
# What the daemon may take with a few slices, bcc and LLVM (~140 MB) out of it.
RSS_LIMIT_KIB = 64 * 1024

ALPHA = '[[slice]]\nname = "alpha"\nid = 11\nmatch = {{ src = ["{src}/32"] }}\n'
BETA = '[[slice]]\nname = "beta"\nid = 12\nmatch = {{ src = ["{src}/32"] }}\n'


class Env(DaemonEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "bwld")

    @property
    def pin_dir(self) -> Path:
        return Path("/sys/fs/bpf/bwbpf") / self.topo.veth_a

    def write_config(self, *slices: str) -> None:
        self.config.write_text(
            f'[node]\ninterface = "{self.topo.veth_a}"\ntick = "1s"\n'
            f'state_dir = "{self.state_dir}"\n'
            + "".join(s.format(src=src) for s, src in self._sources(slices))
        )

    def _sources(self, slices: tuple[str, ...]) -> list[tuple[str, str]]:
        src = {ALPHA: self.topo.alt_src_ip, BETA: self.topo.limited_src_ip}
        return [(s, src[s]) for s in slices]

    def usage(self, name: str) -> int:
        doc = self.topo.stat(self.config)
        return int({s["name"]: s for s in doc["slices"]}[name]["classes"]["normal"]["bytes"])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    with e.made():
        yield e


def _compiler_libs(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/maps").read_text()
    return [lib for lib in COMPILER_LIBS if lib in text]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _pins(env: Env) -> tuple[int | None, set[str]]:
    """(the pinned program's id, the names in the pin directory)."""
    return datapath.pinned_prog_id(str(env.pin_dir)), set(os.listdir(env.pin_dir))


def _expected_pins(prog_id: int | None) -> set[str]:
    return {"counters", "errors", "prog", *(f"{m}@{prog_id}" for m in datapath.MATCH_MAPS)}


def _attached_id(env: Env) -> int | None:
    """The id of the program bwbpf's filter runs, read in the topology's namespace."""
    probe = (
        "import sys; from bwbpf import datapath;"
        " owner = datapath.attached_owner(sys.argv[1]); print(owner and owner.prog_id)"
    )
    out = sh(*env.topo.in_src(sys.executable, "-c", probe, env.topo.veth_a)).stdout.strip()
    return None if out == "None" else int(out)


def _send(env: Env, src: str, count: int, size: int) -> int:
    env.topo.send(env.topo.dst_ip, count, size, src=src)
    return count * (size + UDP4_OVERHEAD)


def test_daemon_maps_no_compiler_and_counts_across_a_reload(env: Env) -> None:
    topo = env.topo
    env.write_config(ALPHA)
    daemon = topo.run_daemon(env.config, log=env.log)
    # nsenter execs bwbpf: the pid is the daemon's once its command line says so.
    wait_for("bwbpf to exec", lambda: b"bwbpf" in Path(f"/proc/{daemon.pid}/cmdline").read_bytes())
    env.wait_tick(daemon.pid, 0)
    assert _compiler_libs(daemon.pid) == [], env.log.read_text()
    first_id, pins = _pins(env)
    assert pins == _expected_pins(first_id)
    assert _attached_id(env) == first_id
    alpha = _send(env, topo.alt_src_ip, 11, 1000)
    wait_for("alpha's first burst counted", lambda: env.usage("alpha") == alpha)
    fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))

    # A reload that changes the slices: a new program, compiled by a loader process.
    env.write_config(ALPHA, BETA)
    reloaded_at = time.time()
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded " in env.log.read_text(), timeout=FIRST_TICK_S)
    env.wait_tick(daemon.pid, reloaded_at)
    assert _compiler_libs(daemon.pid) == [], env.log.read_text()
    second_id, pins = _pins(env)
    assert second_id != first_id
    # Only the new program's maps are pinned beside the shared counters.
    assert pins == _expected_pins(second_id)
    assert _attached_id(env) == second_id
    beta = _send(env, topo.limited_src_ip, 13, 500)
    alpha += _send(env, topo.alt_src_ip, 7, 1000)
    wait_for("beta counted", lambda: env.usage("beta") == beta)
    wait_for("alpha counted on", lambda: env.usage("alpha") == alpha)
    # The old program's fds were closed.
    assert len(os.listdir(f"/proc/{daemon.pid}/fd")) <= fds + 1
    rss = _rss_kib(daemon.pid)
    assert rss <= RSS_LIMIT_KIB, f"daemon VmRSS {rss} KiB"

    assert stop(daemon) == 0, env.log.read_text()
    down = topo.bwbpf("down", "-c", str(env.config))
    assert str(env.pin_dir / "prog") in down.stdout
    assert not env.pin_dir.exists(), os.listdir(env.pin_dir)


def test_up_replaces_the_pins_and_down_removes_them(env: Env) -> None:
    env.write_config(ALPHA)
    env.topo.bwbpf("up", "-c", str(env.config))
    first_id, pins = _pins(env)
    assert pins == _expected_pins(first_id)
    env.write_config(ALPHA, BETA)
    env.topo.bwbpf("up", "-c", str(env.config))
    second_id, pins = _pins(env)
    assert second_id != first_id and pins == _expected_pins(second_id)
    assert _attached_id(env) == second_id
    beta = _send(env, env.topo.limited_src_ip, 5, 700)
    wait_for("beta counted", lambda: env.usage("beta") == beta)
    env.topo.bwbpf("down", "-c", str(env.config))
    assert not env.pin_dir.exists()
