"""`kill -9` at any moment — during a state write, a tick, a reload — loses no byte.

The daemon is killed many times at moments spread over its tick (so some kills land while
it writes its state file); after each kill the state file must parse, and once the last
daemon has ticked, the ledger's usage must equal every byte the receiver got (and the
test sent), counted once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from bwbpf import state
from tests.faults.common import FaultEnv

pytestmark = [pytest.mark.root, pytest.mark.faults]

PAYLOAD = 958  # 1,000 bytes on the wire
KILLS = 13
# Many slices make each state write long enough for a kill to land inside it.
OTHERS = "".join(
    f'\n[[slice]]\nname = "s{i}"\nid = {100 + i}\nmatch = {{ mark = {100 + i} }}\n'
    for i in range(300)
)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


def state_parses(env: FaultEnv) -> None:
    if not env.state_path.exists():
        return  # killed before its first save: nothing written, nothing to lose
    _ledger, problem = state.load_state(str(env.state_path), env.topo.veth_a)
    assert problem is None, problem
    leftovers = [n for n in os.listdir(env.state_dir) if "corrupt" in n]
    assert not leftovers, leftovers


def test_kill_9_during_ticks_and_state_writes(env: FaultEnv) -> None:
    rng = random.Random(1789)
    env.write_config(more_slices=OTHERS)
    d = env.start_daemon()
    env.wait_counted(0)
    sent = 0
    for _ in range(KILLS):
        sent += env.send(11, PAYLOAD)
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere in a 1 s tick, its save included
        kill9(d)
        state_parses(env)
        d = env.start_daemon()
    env.wait_counted(sent)


def test_kill_9_in_the_middle_of_a_reload(env: FaultEnv) -> None:
    env.write_config(more_slices=OTHERS)
    d = env.start_daemon()
    env.wait_counted(0)
    sent = 0
    for delay in (0.0, 0.05, 0.2, 0.5):
        sent += env.send(7, PAYLOAD)
        env.wait_counted(sent)
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(delay)
        kill9(d)
        state_parses(env)
        d = env.start_daemon()
    sent += env.send(5, PAYLOAD)
    env.wait_counted(sent)
