"""The state directory full, read-only or impossible: `bwbpf run` refuses to start with one
line before installing anything; a running daemon whose disk fills up keeps ticking and
accounting, logs it, and saves again once there is room (root: mounts, namespaces)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bwbpf import limits
from tests.faults.common import SLICE, FaultEnv, fill
from tests.helpers import read_json, wait_for

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


def _saved_normal(env: FaultEnv) -> tuple[int, int | None]:
    """(usage, last counter reading) of the slice's normal class, as saved."""
    ledger = env.ledger()
    record = None if ledger is None else ledger.get(SLICE)
    assert record is not None, f"no {SLICE} in the saved ledger"
    normal = record.classes[limits.DCLASS_NORMAL]
    return normal.used_bytes, None if normal.last is None else normal.last[0]


def test_disk_filling_up_while_running(env: FaultEnv) -> None:
    # Room for the state, the status and the history database (with its WAL and 32 kB
    # shared-memory index) until the test fills it.
    env.mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", target=env.state_dir)
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    sent = 0

    filler = fill(env.state_dir)
    full_at = time.time()
    wait_for("the ENOSPC", lambda: "No space left on device" in env.daemon_log())
    sent += env.send(50, 1000)
    time.sleep(3)
    assert daemon.poll() is None
    # Still ticking: one line per file per tick (the state and the status), not per slice.
    lines = [line for line in env.daemon_log().splitlines() if "No space left on device" in line]
    assert len(lines) >= 4
    tick_lines = {line.split("cannot write ")[-1].split(" ")[0] for line in lines}
    assert tick_lines == {"state", "status"}, lines
    stale = read_json(env.status_path)
    assert stale is not None and stale["last_tick"] < full_at + 1.5

    sent += env.send(30, 500)
    # Everything sent while the disk was full arrived: the receiver's total is what the
    # ledger must hold once the state can be saved again.
    received = env.wait_received(sent)
    assert received == sent
    filler.unlink()
    freed_at = time.time()
    doc = env.wait_tick(daemon, freed_at)
    # Saved again, with every byte received while the disk was full.
    wait_for("the state saved", lambda: env.saved_at() > freed_at)
    assert _saved_normal(env) == (received, received)
    assert doc["slices"][SLICE]["classes"]["normal"]["bytes"] == received
    assert env.received_wire() == received  # and nothing more arrived meanwhile
    assert doc["problems"] == []
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
