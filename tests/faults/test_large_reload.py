"""A reload that adds or removes thousands of slices: the kernel takes seconds to create or
delete their HTB classes, and the daemon ticks on meanwhile (bwbpf/classwork.py), keeps
the old configuration in force until the new one's classes exist, and stops at once on a
SIGTERM in the middle."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from bwbpf import tree
from bwbpf.shaper import Shaper
from tests.faults.common import SLICE, FaultEnv
from tests.helpers import read_json, stop, wait_for
from tests.integration.netns import sh

pytestmark = [pytest.mark.root, pytest.mark.faults]

# 12,000 classes: ~5-10 s of kernel time to create here, several ticks of 1 s.
MANY = 6000
WORK_S = 300  # the longest a test waits for a class job, on a slow machine


def _many(first_id: int = 100) -> str:
    return "".join(
        f'[[slice]]\nname = "m{sid}"\nid = {sid}\nmatch = {{ mark = {sid} }}\n'
        for sid in range(first_id, first_id + MANY)
    )


def _classes(env: FaultEnv) -> set[int]:
    with Shaper(env.topo.veth_a, netns=env.topo.src_ns) as shaper:
        return set(shaper.classes())


def _wanted(env: FaultEnv) -> set[int]:
    assert env.cfg is not None
    return {spec.handle for spec in tree.desired_tree(env.cfg, {})}


def _ticks_until(env: FaultEnv, done: Callable[[], bool], what: str) -> set[float]:
    """The daemon's tick times seen in its status file until done(): the ticks it ran
    while ``what`` was under way."""
    seen: set[float] = set()
    give_up = time.monotonic() + WORK_S
    while not done():
        assert time.monotonic() < give_up, f"{what}: not done after {WORK_S} s"
        seen.add(read_json(env.status_path)["last_tick"])
        time.sleep(0.1)
    return seen


def test_ticks_go_on_while_a_large_reload_makes_and_removes_classes(env: FaultEnv) -> None:
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    small = _wanted(env)
    env.write_config(more_slices=_many())
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the class job", lambda: "for the new configuration" in env.daemon_log(), timeout=60)
    # Traffic while the classes are made: charged to its slice under the old config.
    sent = env.send(50, 1000)
    ticks = _ticks_until(env, lambda: "reloaded " in env.daemon_log(), "making classes")
    assert len(ticks) >= 3, f"{len(ticks)} ticks while {2 * MANY} classes were made"
    env.wait_counted(sent)
    assert f"making {2 * MANY} HTB classes for the new configuration" in env.daemon_log()
    assert _classes(env) == _wanted(env)

    # And back: the classes of the 6,000 slices go, with ticks in between.
    removed_at = env.daemon_log().count("classes that belong to no configured slice")
    env.write_config()
    os.kill(daemon.pid, signal.SIGHUP)

    def removed() -> bool:
        return env.daemon_log().count("classes that belong to no configured slice") > removed_at

    ticks = _ticks_until(env, removed, "removing classes")
    assert len(ticks) >= 3, f"{len(ticks)} ticks while {2 * MANY} classes were removed"
    assert f"removed {2 * MANY} classes" in env.daemon_log()
    assert _classes(env) == small
    sent += env.send(20, 1000)
    env.wait_counted(sent)
    assert daemon.poll() is None
    assert stop(daemon) == 0, env.daemon_log()


def test_sigterm_in_the_middle_of_a_large_reload_stops_at_once(env: FaultEnv) -> None:
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    small = _wanted(env)
    sent = env.send(30, 1000)
    env.wait_counted(sent)
    env.write_config(more_slices=_many())
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the class job", lambda: "for the new configuration" in env.daemon_log(), timeout=60)
    time.sleep(1)
    asked = time.monotonic()
    assert stop(daemon) == 0, env.daemon_log()
    took = time.monotonic() - asked
    assert took < 15, f"SIGTERM took {took:.1f} s during the class job"
    log = env.daemon_log()
    assert "reload abandoned half-way" in log and "reloaded " not in log
    # The old config was in force to the end and its usage was saved.
    ledger = env.ledger()
    assert ledger is not None and ledger.get(SLICE) is not None
    assert ledger.get(SLICE).classes[0].used_bytes == sent  # type: ignore[union-attr]
    assert len(ledger.records()) <= 2  # no slice of the reload that did not happen

    # A start with the small config removes what the abandoned reload made.
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, time.time())
    assert _classes(env) == small
    assert stop(daemon) == 0, env.daemon_log()


def test_root_qdisc_removed_while_a_reload_makes_classes(env: FaultEnv) -> None:
    """The class job loses its parents. Either it fails (the reload is refused with the
    reason, the tick restores the old tree and removes what the job made) or, if the tick
    restored the root before the job noticed, it goes on and the reload completes: in
    both cases the tree ends as the configuration in force wants it, and counting goes on."""
    env.write_config()
    daemon = env.start_daemon()
    env.wait_tick(daemon, 0)
    small = _wanted(env)
    env.write_config(more_slices=_many())
    large = _wanted(env)
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the class job", lambda: "for the new configuration" in env.daemon_log(), timeout=60)
    sh("ip", "netns", "exec", env.topo.src_ns, "tc", "qdisc", "del", "dev", env.topo.veth_a, "root")
    refused = "reload: keeping the configuration in use: cannot set HTB class"
    wait_for(
        "the reload to end",
        lambda: refused in env.daemon_log() or "reloaded " in env.daemon_log(),
        timeout=WORK_S,
    )
    failed = refused in env.daemon_log()
    print("the class job", "failed" if failed else "went on")
    wanted = small if failed else large
    wait_for("the tree of the config in force", lambda: _classes(env) == wanted, timeout=WORK_S)
    status = env.wait_tick(daemon, time.time())
    assert any(refused[8:] in p for p in status["problems"]) == failed, status["problems"]
    sent = env.send(30, 1000)
    env.wait_counted(sent)
    assert stop(daemon) == 0, env.daemon_log()
