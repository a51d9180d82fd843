"""The state directory full, read-only or impossible: `bwbpf run` refuses to start with one
line before installing anything; a running daemon whose disk fills up keeps ticking and
accounting, logs it, and saves again once there is room (root: mounts, namespaces)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.faults.common import SLICE, UDP4_OVERHEAD, FaultEnv, fill
from tests.integration.test_daemon import read_json, wait_for

pytestmark = [pytest.mark.root, pytest.mark.faults]


def _refused(env: FaultEnv, reason: str) -> None:
    result = env.once()
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"state directory {env.state_dir}" in lines[0] and reason in lines[0], lines
    assert "Traceback" not in result.stderr
    assert not env.has_htb_root()  # refused before installing anything


def test_full_read_only_or_uncreatable_state_dir_refuses_to_start(env: FaultEnv) -> None:
    env.mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=env.state_dir)
    env.write_config()
    filler = fill(env.state_dir)
    _refused(env, "No space left on device")
    filler.unlink()

    ro = env.tmp / "ro"
    ro.mkdir()
    env.state_dir = env.tmp / "ro-state"
    env.mount("--bind", "-o", "ro", str(ro), target=env.state_dir)
    env.write_config()
    _refused(env, "Read-only file system")

    blocker = env.tmp / "a-file"
    blocker.write_text("")
    env.state_dir = blocker / "state"
    env.write_config()
    _refused(env, "cannot be created: Not a directory")


def _ledger_class(env: FaultEnv) -> dict:
    doc = json.loads(env.state_path.read_text())
    return doc["ledger"]["slices"][SLICE]["normal"]


def test_disk_filling_up_while_running(env: FaultEnv) -> None:
    env.mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=env.state_dir)
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    sent = 0

    filler = fill(env.state_dir)
    full_at = time.time()
    wait_for("the ENOSPC", lambda: "No space left on device" in env.daemon_log())
    env.topo.send(env.topo.dst_ip, 50, 1000, src=env.topo.limited_src_ip)
    sent += 50 * (1000 + UDP4_OVERHEAD)
    time.sleep(3)
    assert daemon.poll() is None
    # Still ticking: one line per file per tick (the state and the status), not per slice.
    lines = [line for line in env.daemon_log().splitlines() if "No space left on device" in line]
    assert len(lines) >= 4
    tick_lines = {line.split("cannot write ")[-1].split(" ")[0] for line in lines}
    assert tick_lines == {"state", "status"}, lines
    stale = read_json(env.status_path)
    assert stale is not None and stale["last_tick"] < full_at + 1.5

    env.topo.send(env.topo.dst_ip, 30, 500, src=env.topo.limited_src_ip)
    sent += 30 * (500 + UDP4_OVERHEAD)
    filler.unlink()
    freed_at = time.time()
    doc = env.wait_tick(daemon, freed_at)
    # Saved again, with every byte sent while the disk was full.
    wait_for(
        "the state saved", lambda: json.loads(env.state_path.read_text())["saved_at"] > freed_at
    )
    normal = _ledger_class(env)
    assert normal["used_bytes"] == sent == normal["last"][0]
    assert doc["slices"][SLICE]["classes"]["normal"]["bytes"] == sent
    assert doc["problems"] == []
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
