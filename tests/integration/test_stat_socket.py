"""``bwbpf stat`` asks the running daemon, which answers on its socket from its last tick
(plus the live counters): the same document as made from the files and the kernel, and
the files again whenever the daemon cannot answer for this config."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import config, statsocket
from tests.helpers import stop, wait_for
from tests.integration.netns import FIRST_TICK_S, DaemonEnv, sh

pytestmark = [pytest.mark.root, pytest.mark.integration]

# Ask the way stat does, and make the document from the files, in the topology's namespace.
ASK = (
    "import sys; from bwbpf import config, statsocket;"
    " print(statsocket.ask(config.load(sys.argv[1])) is not None)"
)
FROM_FILES = (
    "import json, sys; from bwbpf import config, report;"
    " print(json.dumps(report.build(config.load(sys.argv[1])), sort_keys=True))"
)


class Env(DaemonEnv):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "bwss")

    def write_config(self, limit: str = "10MB") -> None:
        self.config.write_text(
            f'[node]\ninterface = "{self.topo.veth_a}"\ntick = "1s"\n'
            f'state_dir = "{self.state_dir}"\n'
            f'[[slice]]\nname = "alpha"\nid = 11\n'
            f'match = {{ src = ["{self.topo.alt_src_ip}/32"] }}\n'
            f'normal = {{ limit = "{limit}" }}\n'
            f'[[slice]]\nname = "beta"\nid = 12\nmatch = {{ mark = 12 }}\n'
        )

    def python(self, code: str) -> str:
        return sh(*self.topo.in_src(sys.executable, "-c", code, str(self.config))).stdout

    def answered(self) -> bool:
        return self.python(ASK).strip() == "True"

    @property
    def socket(self) -> Path:
        return self.state_dir / f"{self.topo.veth_a}.stat.sock"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    with e.made():
        e.write_config()
        yield e


def _normal(env: Env, name: str) -> dict:
    """One slice's normal class, as `bwbpf stat --json` shows it."""
    doc = env.topo.stat(env.config)
    return dict({s["name"]: s for s in doc["slices"]}[name]["classes"]["normal"])


def _comparable(doc: dict) -> dict:
    """The document without what differs between two reads a moment apart: the time,
    and the daemon's last tick."""
    doc = dict(doc)
    doc.pop("time")
    doc["daemon"] = {k: v for k, v in doc["daemon"].items() if k != "last_tick"}
    return doc


def test_the_daemon_answers_what_the_files_and_the_kernel_say(env: Env) -> None:
    daemon = env.topo.run_daemon(env.config, log=env.log)
    env.wait_tick(daemon.pid, 0)
    assert env.socket.exists() and (env.socket.stat().st_mode & 0o777) == 0o600
    env.topo.send(env.topo.dst_ip, 9, 700, src=env.topo.alt_src_ip)
    env.topo.send(env.topo.dst_ip, 4, 300, mark=12)
    wait_for("alpha's bytes in the ledger", lambda: _normal(env, "alpha")["bytes"] == 9 * 742)
    # Both ways, again until no packet of the kernel's own came in between. (Ticks may:
    # with no traffic they change nothing but the tick's time, which a slow machine, such
    # as software emulation, cannot keep from moving while two processes start.)
    for _ in range(20):
        asked = env.topo.stat(env.config)
        made = json.loads(env.python(FROM_FILES))
        if _comparable(asked) == _comparable(made):
            break
    assert _comparable(asked) == _comparable(made)
    assert env.answered()  # and so it was the daemon's answer that equals the files'
    assert asked["daemon"]["pid"] == daemon.pid and asked["daemon"]["running"]
    by_name = {s["name"]: s for s in asked["slices"]}
    assert by_name["alpha"]["classes"]["normal"]["bytes"] == 9 * 742
    assert by_name["beta"]["classes"]["normal"]["packets"] == 4
    # The table is made from the same answer.
    table = env.topo.bwbpf("stat", "-c", str(env.config)).stdout
    assert "alpha" in table and f"pid {daemon.pid}" in table

    # An edited file the daemon has not read: stat reads the files (and the new limit).
    env.write_config(limit="20MB")
    assert not env.answered()
    assert _normal(env, "alpha")["limit_bytes"] == 20 * 10**6
    reloaded_at = time.time()
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded " in env.log.read_text(), timeout=FIRST_TICK_S)
    env.wait_tick(daemon.pid, reloaded_at)
    wait_for("the daemon to answer for the new text", env.answered)

    # Stopped, the socket goes; stat reads the files and says the daemon is not running.
    assert stop(daemon) == 0, env.log.read_text()
    assert not env.socket.exists()
    doc = env.topo.stat(env.config)
    assert doc["daemon"]["running"] is False
    env.topo.bwbpf("down", "-c", str(env.config))


def test_a_killed_daemons_socket_and_junk_on_it_are_only_a_slower_stat(env: Env) -> None:
    daemon = env.topo.run_daemon(env.config, log=env.log)
    env.wait_tick(daemon.pid, 0)
    wait_for("an answer", env.answered)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=15)
    assert env.socket.exists()  # left behind: connecting is refused
    assert not env.answered()
    assert env.topo.stat(env.config)["daemon"]["running"] is False

    # A restart binds over the stale socket.
    again = env.topo.run_daemon(env.config, log=env.log)
    env.wait_tick(again.pid, time.time())
    wait_for("an answer from the restarted daemon", env.answered)
    # Removed under the daemon: made again at its next tick.
    env.socket.unlink()
    wait_for("the socket made again", env.answered, timeout=FIRST_TICK_S)
    # Requests that are not stat's get nothing, and the daemon goes on answering.
    cfg = config.load(env.config, check_interface=False)
    for junk in (b"", b"\x00" * 300, b"stat\n", b"stat 00\n", b"GET / HTTP/1.0\r\n\r\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(env.socket))
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"", junk
    assert statsocket.socket_path(cfg) == str(env.socket)
    assert env.answered()
    assert stop(again) == 0, env.log.read_text()
    env.topo.bwbpf("down", "-c", str(env.config))
