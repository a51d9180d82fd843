"""The daemon's pure steps: readings, decisions, ceilings, due mails, status, sd_notify."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from bwbpf import config, daemon, periods, status
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.notify import CappedClass

NORMAL, EXEMPT = 0, 1
T0 = 1_000_000.0

CONFIG = """
[node]
interface = "lo"
node_cap = "100mbit"
tick = "1s"
state_dir = "{state_dir}"

[quota]
period = "1000s"

[defaults]
normal = {{ limit = "10MB", threshold = 0.8, max_rate = "1mbit", min_rate = "8bit" }}
exempt = {{ limit = "20MB", threshold = 0.5, max_rate = "1gbit", min_rate = "8bit" }}

{notify}

[[slice]]
name = "alice"
id = 5
match = {{ mark = 5 }}

[[slice]]
name = "bob"
id = 6
match = {{ mark = 6 }}
"""
NOTIFY = '[notify]\nsmtp = "127.0.0.1:2525"\noperator = "ops@example.org"'


@dataclass(frozen=True)
class U:
    bytes: int
    packets: int


def make_config(tmp_path: Path, notify: str = NOTIFY) -> config.Config:
    path = tmp_path / "bwbpf.toml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state", notify=notify))
    return config.load(path, check_interface=False)


def account(cfg: config.Config, ledger: Ledger, now: float, raw: dict) -> None:
    ledger.update(
        now,
        daemon.readings(cfg, raw),
        lambda _n, start: periods.current_period(cfg.period, now, start),
    )


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return make_config(tmp_path)


def test_readings_cover_every_configured_slice(cfg: config.Config) -> None:
    raw = {5: (U(100, 1), U(200, 2))}
    assert daemon.readings(cfg, raw) == {
        "default": {NORMAL: (0, 0), EXEMPT: (0, 0)},
        "alice": {NORMAL: (100, 1), EXEMPT: (200, 2)},
        "bob": {NORMAL: (0, 0), EXEMPT: (0, 0)},
    }


def capped_alice(cfg: config.Config) -> Ledger:
    """alice sent 9 MB normal (past the 8 MB threshold) 500 s into her period."""
    ledger = Ledger()
    account(cfg, ledger, T0, {})
    account(cfg, ledger, T0 + 500, {5: (U(9_000_000, 9000), U(0, 0))})
    return ledger


def test_decisions_and_ceilings(cfg: config.Config) -> None:
    ledger = capped_alice(cfg)
    decisions = daemon.decide_all(cfg, ledger, T0 + 500)
    assert set(decisions) == {"default", "alice", "bob"}
    # (10 MB - 9 MB) × 8 / 500 s
    assert decisions["alice"][NORMAL].ceil_bps == 16_000
    assert decisions["alice"][NORMAL].capped
    assert not decisions["alice"][EXEMPT].capped
    ceils = daemon.ceilings(cfg, decisions)
    assert ceils[(5, NORMAL)] == 16_000
    assert ceils[(5, EXEMPT)] == 1_000_000_000
    assert ceils[(6, NORMAL)] == 1_000_000
    assert ceils[(0, NORMAL)] == 1_000_000


def test_slice_unknown_to_the_ledger_gets_no_decision(cfg: config.Config) -> None:
    assert daemon.decide_all(cfg, Ledger(), T0) == {}
    assert daemon.ceilings(cfg, {}) == {}


def test_recorded_ceilings_come_from_the_ledger(cfg: config.Config) -> None:
    ledger = capped_alice(cfg)
    assert daemon.recorded_ceilings(cfg, ledger) == {}
    ledger.set_ceiling("alice", NORMAL, 16_000, True)
    assert daemon.recorded_ceilings(cfg, ledger) == {(5, NORMAL): 16_000}


def test_one_mail_per_slice_per_period(cfg: config.Config) -> None:
    ledger = capped_alice(cfg)
    decisions = daemon.decide_all(cfg, ledger, T0 + 500)
    due = daemon.due_notifications(cfg, ledger, decisions)
    assert due == [("alice", [CappedClass(NORMAL, 9_000_000, 16_000, 10_000_000)])]
    ledger.set_notified("alice")
    assert daemon.due_notifications(cfg, ledger, decisions) == []
    # The next period clears the flag; capped again, mailed again.
    account(cfg, ledger, T0 + 1001, {5: (U(9_000_000, 9000), U(0, 0))})
    account(cfg, ledger, T0 + 1500, {5: (U(18_000_000, 18000), U(0, 0))})
    decisions = daemon.decide_all(cfg, ledger, T0 + 1500)
    assert [name for name, _ in daemon.due_notifications(cfg, ledger, decisions)] == ["alice"]


def test_both_capped_classes_in_one_mail(cfg: config.Config) -> None:
    ledger = Ledger()
    account(cfg, ledger, T0, {})
    account(cfg, ledger, T0 + 500, {6: (U(9_000_000, 1), U(15_000_000, 1))})
    decisions = daemon.decide_all(cfg, ledger, T0 + 500)
    ((name, capped),) = daemon.due_notifications(cfg, ledger, decisions)
    assert name == "bob"
    assert [c.dclass for c in capped] == [NORMAL, EXEMPT]


def test_no_mail_without_notify_section(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, notify="")
    ledger = capped_alice(cfg)
    assert daemon.due_notifications(cfg, ledger, daemon.decide_all(cfg, ledger, T0 + 500)) == []


def test_status_document_round_trips_through_status_read(cfg: config.Config) -> None:
    ledger = capped_alice(cfg)
    decisions = daemon.decide_all(cfg, ledger, T0 + 500)
    slices = daemon.status_slices(cfg, ledger, decisions)
    assert slices["alice"]["classes"]["normal"] == {
        "bytes": 9_000_000,
        "counter_bytes": 9_000_000,
        "capped": True,
        "ceil_bps": 16_000,
    }
    assert slices["alice"]["period_end"] - slices["alice"]["period_start"] == 1000
    status.write(cfg, pid=os.getpid(), last_tick=T0 + 500, problems=["p"], slices=slices)
    back = status.read(cfg)
    assert back is not None
    assert (back.pid, back.last_tick, back.tick_s, back.policy) == (
        os.getpid(),
        T0 + 500,
        1,
        "smooth",
    )
    assert back.problems == ["p"]
    assert back.slices == slices
    assert [p.name for p in Path(cfg.state_dir).iterdir()] == ["lo.status.json"]


def test_status_write_failure_is_one_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    Path(cfg.state_dir).write_text("a file, not a directory")
    with pytest.raises(Error, match="cannot write status file"):
        status.write(cfg, pid=1, last_tick=T0, problems=[], slices={})


def test_sd_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.sd_notify("READY=1") is False


def test_sd_notify_sends_a_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert daemon.sd_notify("READY=1\nSTATUS=ok") is True
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_second_daemon_on_the_interface_is_refused(cfg: config.Config) -> None:
    first = daemon.Daemon(cfg, dry_run=True)
    first._take_lock()
    try:
        second = daemon.Daemon(cfg, dry_run=True)
        with pytest.raises(Error, match="another bwbpf daemon is already running on lo"):
            second._take_lock()
        second.stop()  # without the lock it must not write the state
        assert not Path(second.state_path).exists()
    finally:
        first.stop()
    assert Path(first.state_path).exists()
