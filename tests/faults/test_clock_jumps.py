"""Wall clock jumps under a running daemon, through libfaketime on its process only.

The system clock is never touched: libfaketime (Debian's faketime) is preloaded into the
daemon alone, reading its offset from a file the test rewrites. Its monotonic and
boot-time clocks stay real (FAKETIME_DONT_FAKE_MONOTONIC), as they do when an operator
or NTP steps a real wall clock. Whatever the clock does, the ledger charges the slice what
the receiver got.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf.status import DaemonStatus
from tests.faults.common import SLICE, FaultEnv, faked_daemon
from tests.helpers import stop_cleanly

pytestmark = [pytest.mark.root, pytest.mark.faults]

PAYLOAD = 958  # 1,000 bytes on the wire


@pytest.fixture
def offset(env: FaultEnv, sleep_shim: Path) -> Iterator[Path]:
    """The faked wall clock's offset file (starting at +0), and the config: the one slice
    with a 1 MB limit in periods of an hour, so a jump of days crosses many period ends."""
    path = env.tmp / "faketime"
    path.write_text("+0\n")
    env.write_config(limit="1MB", period="1h", tick="1s")
    yield path


def jump(offset: Path, text: str, ticks_after: float) -> None:
    """Set the daemon's wall clock offset and let a few of its ticks see it."""
    offset.write_text(text + "\n")
    time.sleep(ticks_after)


def period_of(st: DaemonStatus) -> tuple[float, float]:
    return st.slices[SLICE]["period_start"], st.slices[SLICE]["period_end"]


def test_forward_and_back_keeps_the_period_and_its_usage(
    env: FaultEnv, offset: Path, sleep_shim: Path
) -> None:
    d = faked_daemon(env, offset, sleep_shim)
    env.wait_counted(0)
    sent = env.send(30, PAYLOAD)
    before = env.wait_counted(sent)
    period = period_of(before)

    jump(offset, "+40d", 3)  # forty days forward: 960 periods of an hour
    sent += env.send(20, PAYLOAD)
    ahead = env.wait_counted(sent)  # usage went on: no reset
    assert period_of(ahead) == period
    assert any("wall clock jumped" in p and "ahead" in p for p in ahead.problems), ahead.problems
    assert ahead.last_tick < period[1]  # the accounting clock did not jump with it

    jump(offset, "+0", 3)  # and back again
    sent += env.send(10, PAYLOAD)
    back = env.wait_counted(sent)
    assert period_of(back) == period
    assert not any("wall clock" in p for p in back.problems), back.problems

    jump(offset, "-2d", 3)  # two days back: still the same period, same usage
    sent += env.send(5, PAYLOAD)
    behind = env.wait_counted(sent)
    assert period_of(behind) == period
    assert any("behind" in p for p in behind.problems), behind.problems
    stop_cleanly(d)
    # The history followed the ledger through the jumps: one period, all of it.
    args = ("history", "-c", str(env.config), "--periods", "--json", "--since", "60d")
    doc = json.loads(env.topo.bwbpf(*args).stdout)
    (web,) = [s for s in doc["slices"] if s["name"] == SLICE]
    assert [(r["start_epoch"], r["normal_bytes"]) for r in web["rows"]] == [(period[0], sent)]


def test_a_clock_set_back_across_a_restart_reopens_nothing(
    env: FaultEnv, offset: Path, sleep_shim: Path
) -> None:
    d = faked_daemon(env, offset, sleep_shim)
    env.wait_counted(0)
    sent = env.send(40, PAYLOAD)
    first = env.wait_counted(sent)
    period = period_of(first)
    stop_cleanly(d)

    offset.write_text("-40d\n")  # the node comes back with its clock 40 days behind
    d = faked_daemon(env, offset, sleep_shim)
    sent += env.send(7, PAYLOAD)
    again = env.wait_counted(sent)
    assert period_of(again) == period
    assert again.last_tick >= first.last_tick  # never before what was already accounted
    assert any("behind" in p for p in again.problems), again.problems
    stop_cleanly(d)
    assert "Traceback" not in env.daemon_log()
