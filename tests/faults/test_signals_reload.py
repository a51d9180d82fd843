"""A real daemon under a storm of SIGHUPs and broken config files: alive, ticking, no fd
leaked, every failed reload shown in its status until a reload succeeds, and every byte
the receiver got charged (root)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.common import FaultEnv, fd_count
from tests.helpers import read_json, wait_for

pytestmark = [pytest.mark.root, pytest.mark.faults]


def test_hundred_hups_in_a_second(env: FaultEnv) -> None:
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    # A first reload opens whatever a reload opens; the fd count is taken after it.
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the first reload", lambda: "reloaded" in env.daemon_log(), timeout=60)
    env.wait_tick(daemon, time.time())
    before = fd_count(daemon.pid)

    reloads = env.daemon_log().count("reloaded")
    started = time.monotonic()
    for i in range(100):
        os.kill(daemon.pid, signal.SIGHUP)
        if i >= 50:  # half of them spread out, half in one burst
            time.sleep(0.005)
    assert time.monotonic() - started < 1.0
    sent_at = time.time()
    # Traffic while the storm's reloads run: every byte of it is charged.
    sent = env.send(40, 1000)

    # Alive and ticking, while and after the reloads run.
    env.wait_tick(daemon, sent_at)
    time.sleep(2)
    after_storm = time.time()
    env.wait_tick(daemon, after_storm)
    assert daemon.poll() is None
    # HUPs that arrive together are one reload: the burst is a few, not 50.
    reloads = env.daemon_log().count("reloaded") - reloads
    assert 1 <= reloads <= 70, reloads
    assert fd_count(daemon.pid) <= before + 2, os.listdir(f"/proc/{daemon.pid}/fd")
    assert "Traceback" not in env.daemon_log()
    env.wait_counted(sent)

    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0


def _reload_problems(env: FaultEnv) -> list[str]:
    doc = read_json(env.status_path) or {}
    return [p for p in doc.get("problems", []) if p.startswith("reload:")]


def test_broken_config_files_never_end_the_daemon(env: FaultEnv) -> None:
    good = env.config_text()
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    fifo = env.tmp / "exempt.fifo"
    os.mkfifo(fifo)
    cases = {
        "invalid-utf8": b"\xff\xfe\x80 not text " + good.encode(),
        "deep-nesting": b"x = " + b"[" * 100_000,
        "huge-rate": env.config_text(max_rate="1e35bit").encode(),
        "fifo-exempt": env.config_text(extra=f'\n[exempt]\nfiles = ["{fifo}"]\n').encode(),
    }
    sent = 0
    for name, content in cases.items():
        errors = env.daemon_log().count("reload: keeping")
        env.config.write_bytes(content)
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(
            f"{name}: the reload error",
            lambda n=errors: env.daemon_log().count("reload: keeping") > n,
        )
        line = env.daemon_log().split("reload: keeping")[-1].split("\n")[0]
        env.wait_tick(daemon, time.time())
        problems = _reload_problems(env)
        assert daemon.poll() is None, name
        assert len(problems) == 1 and problems[0].endswith(line), (name, problems, line)
        # The configuration in force still counts: what arrives is charged.
        sent += env.send(9, 700)
        env.wait_counted(sent)
    assert "Traceback" not in env.daemon_log()

    # The old configuration is in force all along; a good reload clears the problem.
    env.config.write_text(good)
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded" in env.daemon_log(), timeout=60)
    env.wait_tick(daemon, time.time())
    assert _reload_problems(env) == []
    sent += env.send(4, 300)
    env.wait_counted(sent)
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
