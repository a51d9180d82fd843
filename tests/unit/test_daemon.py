"""The daemon's pure steps: readings, decisions, ceilings, due mails, status, sd_notify."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bwbpf import classid, config, daemon, lifecycle, metrics, node, periods, state, status
from bwbpf.datapath import Usage
from bwbpf.errors import ConfigError, Error
from bwbpf.ledger import Ledger
from bwbpf.notify import CappedClass
from bwbpf.shaper import InstalledClass, Plan, difference
from bwbpf.tree import ClassSpec

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
    # Indexed by dclass (NORMAL 0, EXEMPT 1).
    assert daemon.readings(cfg, raw) == {
        "default": ((0, 0), (0, 0)),
        "alice": ((100, 1), (200, 2)),
        "bob": ((0, 0), (0, 0)),
    }
    # The kernel's readings (datapath.Usage, a pair) are taken as they are.
    kernel = {5: (Usage(100, 1), Usage(200, 2))}
    assert daemon.readings(cfg, kernel)["alice"] is kernel[5]


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


def test_decision_cache_agrees_with_deciding_everything(tmp_path: Path) -> None:
    """The incremental decisions equal a full decide_all at every tick: random traffic
    across thresholds, limits and period rollovers, idle ticks, slices leaving the config
    and a reload."""
    import random

    rng = random.Random(7)
    cfg = make_config(tmp_path)
    ledger, cache = Ledger(), daemon.DecisionCache()
    counters = {5: [0, 0], 6: [0, 0]}
    previous: tuple[metrics.Samples, metrics.Snapshot] | None = None
    now = T0
    for step in range(400):
        now += rng.choice((1.0, 1.0, 7.0, 250.0))
        for sid in counters:
            if rng.random() < 0.3:  # most slices idle at most ticks
                counters[sid][rng.randrange(2)] += rng.choice((1_000, 500_000, 3_000_000))
        raw = {sid: (U(b, 1), U(x, 1)) for sid, (b, x) in counters.items()}
        if step == 200:  # bob leaves the config (a reload)
            cfg = config.parse(
                (tmp_path / "bwbpf.toml").read_text().split('[[slice]]\nname = "bob"')[0],
                str(tmp_path / "bwbpf.toml"),
                check_interface=False,
            )
            cache.reset()
            ledger.periods_changed()
        account(cfg, ledger, now, raw)
        redecided = cache.update(cfg, ledger, now)
        assert cache.decisions == daemon.decide_all(cfg, ledger, now), step
        capped = {n for n, by in cache.decisions.items() if any(d.capped for d in by.values())}
        assert cache.capped == capped, step
        assert ledger.changed <= redecided | set(ledger.slices(include_dead=True)), step
        # And the metrics' samples, made when first read from what the tick handed over:
        # read one tick later, they still equal a snapshot of their own tick from scratch.
        if previous is not None:
            got, full = previous
            assert tuple(got) == full.classes, step
        previous = (
            metrics.Samples(cfg, cache.slices, ledger.records(), dict(cache.decisions)),
            metrics.snapshot(cfg, ledger, cache.decisions, {}, now=now, tick_duration_s=0),
        )


def test_decisions_that_hold_are_kept_not_taken_again(cfg: config.Config) -> None:
    """alice past her normal limit keeps sending: her decisions stay the same objects (no
    policy call), yet she is among the names looked at; bob's traffic below the threshold
    is decided again; a new period decides alice again."""
    ledger, cache = Ledger(), daemon.DecisionCache()
    account(cfg, ledger, T0, {})
    cache.update(cfg, ledger, T0)
    account(cfg, ledger, T0 + 10, {5: (U(11_000_000, 11), U(0, 0))})
    cache.update(cfg, ledger, T0 + 10)
    alice, bob = cache.decisions["alice"], cache.decisions["bob"]
    assert alice[NORMAL].capped and alice[NORMAL].ceil_bps == 8
    for i, now in enumerate((T0 + 11, T0 + 12, T0 + 500), 1):
        account(cfg, ledger, now, {5: (U(11_000_000 + i, 11 + i), U(0, 0)), 6: (U(i, i), U(0, 0))})
        assert cache.update(cfg, ledger, now) == {"alice", "bob"}
        assert cache.decisions["alice"] is alice
        assert cache.decisions["bob"] is not bob
        bob = cache.decisions["bob"]
        assert cache.decisions == daemon.decide_all(cfg, ledger, now)
    account(cfg, ledger, T0 + 1001, {5: (U(11_000_100, 20), U(0, 0))})  # the period rolled
    cache.update(cfg, ledger, T0 + 1001)
    assert not cache.decisions["alice"][NORMAL].capped
    assert cache.decisions == daemon.decide_all(cfg, ledger, T0 + 1001)
    assert cache.capped == set()


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
    """The status file and the ledger's state file together are what stat reads."""
    ledger = capped_alice(cfg)
    decisions = daemon.decide_all(cfg, ledger, T0 + 500)
    ledger.set_ceiling("alice", NORMAL, decisions["alice"][NORMAL].ceil_bps, True)
    ledger.set_notified("alice")
    saved = state.StateFile(state.state_file(cfg.state_dir, cfg.interface), cfg.interface)
    saved.save(ledger, T0 + 500)
    status.write(cfg, pid=os.getpid(), last_tick=T0 + 500, problems=["p"])
    back = status.read(cfg)
    assert back is not None
    assert (back.pid, back.last_tick, back.tick_s, back.policy) == (
        os.getpid(),
        T0 + 500,
        1,
        "smooth",
    )
    assert back.problems == ["p"]
    assert back.slices["alice"]["classes"]["normal"] == {
        "bytes": 9_000_000,
        "counter_bytes": 9_000_000,
        "capped": True,
        "ceil_bps": 16_000,
    }
    assert back.slices["alice"]["period_end"] - back.slices["alice"]["period_start"] == 1000
    assert back.slices["alice"]["notified"] and not back.slices["bob"]["notified"]
    assert set(back.slices) == {"default", "alice", "bob"}
    # A saved slice of the wrong shape is shown as not saved yet, never a traceback.
    raw = {"alice": {"live": True, "normal": {"used_bytes": "lots"}}, "bob": []}
    assert status.slices(cfg, raw) == {}
    assert sorted(p.name for p in Path(cfg.state_dir).iterdir()) == [
        "ledger-lo.json",
        "lo.status.json",
    ]


def test_status_write_failure_is_one_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    Path(cfg.state_dir).write_text("a file, not a directory")
    with pytest.raises(Error, match="cannot write status file"):
        status.write(cfg, pid=1, last_tick=T0, problems=[])


def test_sd_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert lifecycle.sd_notify("READY=1") is False


def test_sd_notify_sends_a_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert lifecycle.sd_notify("READY=1\nSTATUS=ok") is True
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_an_install_tells_the_watchdog_at_every_batch(
    cfg: config.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node.up calls ``progress`` after each batch of netlink requests; the daemon's sends
    WATCHDOG=1, so tens of seconds of class creations in its loop are not a hang."""
    calls: list[Any] = []

    def up(c: config.Config, _ceils: Any, **kw: Any) -> node.UpReport:
        progress = kw["progress"]
        progress()
        progress()
        calls.append(progress)
        return node.UpReport(True, 0, [], ())

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        d = daemon.Daemon(cfg, node_up=up, counters=fake_counters)
        d._install({})
        sock.settimeout(1)
        assert [sock.recv(100), sock.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    assert len(calls) == 1


def test_second_daemon_on_the_interface_is_refused(cfg: config.Config) -> None:
    first = daemon.Daemon(cfg, dry_run=True)
    lifecycle.probe_state_dir(cfg.state_dir)  # as start() does before it takes the lock
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


# -- lifecycle: the lock, the state directory probe, signals ---------------------------------


def test_lock_file_is_never_opened_through_a_symlink(cfg: config.Config, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    Path(cfg.state_dir).mkdir()
    d = daemon.Daemon(cfg, dry_run=True)
    Path(d.lock_path).symlink_to(victim)
    with pytest.raises(Error, match=r"refusing lock file .*lo\.lock: it is a symbolic link$"):
        d._take_lock()
    d.stop()
    assert victim.read_text() == "precious\n"


def test_uncreatable_state_dir_is_one_line(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    Path(cfg.state_dir).write_text("a file, not a directory")
    cfg2 = make_config(tmp_path)
    object.__setattr__(cfg2, "state_dir", os.path.join(cfg.state_dir, "sub"))
    with pytest.raises(Error, match=r"^state directory .*/state/sub cannot be created: Not a dir"):
        lifecycle.probe_state_dir(cfg2.state_dir)


def test_unwritable_state_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if len(data) == lifecycle.PROBE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(lifecycle.os, "write", full)
    with pytest.raises(Error, match=r"^state directory .* is not writable: No space left on dev"):
        lifecycle.probe_state_dir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # the probe is removed


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_signal_pipe_records_and_wakes() -> None:
    before = _fds()
    pipe = lifecycle.SignalPipe()
    old = signal.getsignal(signal.SIGHUP)
    pipe.install([signal.SIGHUP])
    try:
        assert pipe.wait(0) == []
        for _ in range(100):
            os.kill(os.getpid(), signal.SIGHUP)
        started = time.monotonic()
        assert pipe.wait(5) == [signal.SIGHUP] * 100
        assert time.monotonic() - started < 1
        started = time.monotonic()
        assert pipe.wait(0.2) == []  # drained: the next wait sleeps its timeout
        assert time.monotonic() - started >= 0.19
    finally:
        pipe.close()
    assert signal.getsignal(signal.SIGHUP) == old
    assert _fds() == before


class LoopSpy:
    """A Daemon whose start, tick, reload and stop only count, for ``run``'s loop."""

    def __init__(self, cfg: config.Config, on_tick: Any = None, on_reload: Any = None) -> None:
        self.d = daemon.Daemon(cfg, dry_run=True)
        self.ticks = self.reloads = self.stops = 0
        self.on_tick, self.on_reload = on_tick, on_reload
        self.d.start = lambda: None  # type: ignore[method-assign]
        self.d.tick = self._tick  # type: ignore[method-assign]
        self.d.begin_reload = self._reload  # type: ignore[method-assign]
        self.d.stop = self._stop  # type: ignore[method-assign]

    def _tick(self, _now: float) -> dict:
        self.ticks += 1
        if self.on_tick:
            self.on_tick(self)
        return {}

    def _reload(self, background: bool = True) -> None:
        self.reloads += 1
        if self.on_reload:
            self.on_reload(self)

    def _stop(self) -> None:
        self.stops += 1


def test_many_hups_are_one_reload_and_term_stops(cfg: config.Config) -> None:
    before = _fds()
    # What SIGHUP did before (SIG_IGN under nohup): run() must leave it so.
    old_hup = signal.getsignal(signal.SIGHUP)

    def hups(spy: LoopSpy) -> None:
        if spy.ticks == 1:
            for _ in range(100):
                os.kill(os.getpid(), signal.SIGHUP)

    def term(_spy: LoopSpy) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    spy = LoopSpy(cfg, on_tick=hups, on_reload=term)
    spy.d.run()
    assert (spy.ticks, spy.reloads, spy.stops) == (1, 1, 1)
    assert signal.getsignal(signal.SIGHUP) == old_hup
    assert _fds() == before  # the pipe is closed


def test_a_hup_storm_does_not_starve_the_ticks(cfg: config.Config) -> None:
    give_up = time.monotonic() + 5

    def again(spy: LoopSpy) -> None:
        # Each reload brings the next HUP; after the second tick (1 s later), TERM.
        done = spy.ticks >= 2 or time.monotonic() > give_up
        os.kill(os.getpid(), signal.SIGTERM if done else signal.SIGHUP)

    spy = LoopSpy(cfg, on_tick=lambda s: os.kill(os.getpid(), signal.SIGHUP), on_reload=again)
    spy.d.run()
    assert spy.ticks >= 2
    assert spy.reloads > 10


def test_unexpected_exception_at_start_is_one_error(cfg: config.Config) -> None:
    d = daemon.Daemon(cfg, dry_run=True)

    def boom() -> None:
        raise struct.error("argument out of range")

    d.start = boom  # type: ignore[method-assign]
    with pytest.raises(Error, match=r"^cannot start on lo: error: argument out of range$"):
        d.run(once=True)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# -- reload never ends the daemon -------------------------------------------------------------


def _raise(exc: BaseException) -> Any:
    def load(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return load


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        pytest.param(
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
            id="unicode",
        ),
        pytest.param(
            RecursionError("maximum recursion depth exceeded"), "RecursionError", id="rec"
        ),
        pytest.param(struct.error("argument out of range"), "error: argument out", id="struct"),
        pytest.param(OSError(errno.EIO, "Input/output error"), "Input/output error", id="oserror"),
        pytest.param(ValueError("a\nb"), "ValueError: a b", id="multi-line"),
        pytest.param(
            ConfigError(["f.toml: node.tick: bad", "f.toml: quota: bad"]),
            "f.toml: node.tick: bad; f.toml: quota: bad",
            id="config",
        ),
    ],
)
def test_a_failed_reload_is_one_line_and_keeps_the_config(
    cfg: config.Config,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    exc: BaseException,
    why: str,
) -> None:
    d = daemon.Daemon(cfg, dry_run=True)
    monkeypatch.setattr(daemon.config, "load", _raise(exc))
    with caplog.at_level(logging.INFO, logger="bwbpf.daemon"):
        assert d.reload() is False
    assert d.cfg is cfg
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("reload: keeping the configuration in use: ")
    assert why in errors[0]
    # Shown by stat until a reload succeeds.
    d._publish(T0, {})
    got = status.read(cfg)
    assert got is not None and got.problems == errors
    monkeypatch.setattr(daemon.config, "load", lambda _p, **_kw: cfg)
    assert d.reload() is True
    d._publish(T0, {})
    got = status.read(cfg)
    assert got is not None and got.problems == []


def test_a_reload_that_fails_half_way_restores_the_old_config(
    cfg: config.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = make_config(tmp_path, notify="")
    installed: list[config.Config] = []

    def up(c: config.Config, _ceils: Any, **_kw: Any) -> node.UpReport:
        installed.append(c)
        if c == new:  # a copy: the daemon reads configs in a child (heap.isolated)
            raise struct.error("'Q' format requires 0 <= number <= 18446744073709551615")
        return node.UpReport(False, 0, [], ())

    d = daemon.Daemon(cfg, node_up=up, counters=fake_counters)
    monkeypatch.setattr(daemon.config, "load", lambda _p, **_kw: new)
    assert d.reload() is False
    assert d.cfg is cfg
    assert installed == [new, cfg]  # the old one installed again
    assert len(d.reload_problems) == 1 and "format requires" in d.reload_problems[0]


def test_a_reload_needing_a_restart_is_refused(
    cfg: config.Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_config(tmp_path)
    object.__setattr__(other, "interface", "eth9")
    d = daemon.Daemon(cfg, dry_run=True)
    monkeypatch.setattr(daemon.config, "load", lambda _p, **_kw: other)
    assert d.reload() is False and d.cfg is cfg
    assert "interface changed from 'lo' to 'eth9', which needs a restart" in d.reload_problems[0]


# -- a tick survives its steps ----------------------------------------------------------------


class FakeCounters:
    generation = "fake"

    def read(self, ids: Any) -> dict:
        list(ids)
        return {5: (U(100, 1), U(0, 0))}

    def errors(self) -> Any:
        return {}

    def repin(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_unexpected_exception_in_a_tick_step_is_one_line(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon.Daemon(cfg, dry_run=True, counters=lambda _pin_dir: FakeCounters())  # type: ignore[arg-type,return-value]

    def denied(*_a: Any, **_k: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/x/lo.status.json")

    monkeypatch.setattr(daemon.status, "write", denied)
    with caplog.at_level(logging.ERROR, logger="bwbpf.daemon"):
        decisions = d.tick(T0)
        d.tick(T0 + 1)
    assert {"alice", "bob"} <= set(decisions)
    assert d.tick_problems == ["publish: Permission denied: /x/lo.status.json"]
    assert [r.getMessage() for r in caplog.records] == d.tick_problems * 2
    assert Path(d.state_path).exists()  # the save before it happened


def test_a_problem_is_logged_once_per_tick(
    cfg: config.Config, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk fails every save of a tick (after each mail too): one line a tick."""
    d = daemon.Daemon(cfg, dry_run=True)

    def full(_now: float) -> None:
        raise Error("cannot write state file /s/ledger-lo.json: No space left on device")

    with caplog.at_level(logging.ERROR, logger="bwbpf.daemon"):
        for _ in range(3):
            d._guard(full, T0)
    assert len(caplog.records) == 1
    assert d.tick_problems == [caplog.records[0].getMessage()]


# -- a reload whose classes are made off the loop ----------------------------------------------


class FakeWork:
    """A ClassWork that ends when the test says (``end``), and records what it was given."""

    def __init__(self, works: list[FakeWork], create: Any = (), delete: Any = ()) -> None:
        self.create, self.delete = list(create), list(delete)
        self.error: str | None = None
        self.started = self.finished = self.cancelled = False
        works.append(self)

    def start(self) -> None:
        self.started = True

    def run(self) -> None:
        self.finished = True

    def cancel(self) -> None:
        self.cancelled = self.finished = True

    def join(self) -> None:
        pass

    def end(self, error: str | None = None) -> None:
        self.error, self.finished = error, True


# A class of no configured slice, which the fake interface has.
STALE = classid.slice_class(99, NORMAL)


def fake_works(works: list[FakeWork]) -> Any:
    """A ``class_work`` for Daemon: each job a FakeWork, appended to ``works``."""
    return lambda _ifname, create=(), delete=(), wake=None: FakeWork(works, create, delete)


def fake_counters(_pin_dir: str) -> Any:
    return FakeCounters()


class FakeShaper:
    def __init__(self, _ifname: str) -> None:
        pass

    def __enter__(self) -> FakeShaper:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def classes(self) -> dict[int, InstalledClass]:
        return {STALE: InstalledClass(STALE, classid.parent_class(NORMAL), 8, 8, 1, 0, 0)}

    def plan(self, tree: Callable[[], list[ClassSpec]]) -> Plan:
        return difference(tree(), self.classes())


def _slice_toml(name: str, slice_id: int) -> str:
    return f'\n[[slice]]\nname = "{name}"\nid = {slice_id}\nmatch = {{ mark = {slice_id} }}\n'


def test_a_reload_is_in_force_once_its_classes_exist(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's reload: the old config serves while the new one's classes are made; a
    SIGHUP meanwhile is read after it; a job that fails keeps the config in use and its
    classes are removed; a cleanup cancelled by a SIGHUP is done again after the reload."""
    works: list[FakeWork] = []
    installed: list[list[str]] = []

    def up(c: config.Config, _ceils: Any, **_kw: Any) -> node.UpReport:
        installed.append([s.name for s in c.slices])
        return node.UpReport(False, 0, [], ())

    d = daemon.Daemon(
        cfg,
        class_work=fake_works(works),
        shaper=FakeShaper,  # type: ignore[arg-type]
        node_up=up,
        counters=fake_counters,
    )
    text = Path(cfg.path).read_text()
    Path(cfg.path).write_text(text + _slice_toml("carol", 7))
    d._reload_due = True
    d.advance()
    assert len(works) == 1 and works[0].started
    assert {spec.handle for spec in works[0].create} == {
        classid.slice_class(7, NORMAL),
        classid.slice_class(7, EXEMPT),
    }
    assert d.cfg is cfg and installed == []  # the old config in force meanwhile

    # A SIGHUP while the classes are made: read once they exist and carol is in force.
    Path(cfg.path).write_text(text + _slice_toml("carol", 7) + _slice_toml("dave", 8))
    d._reload_due = True
    d.advance()
    assert len(works) == 1 and d.cfg is cfg
    works[0].end()
    d.advance()
    assert installed == [["alice", "bob", "carol"]]
    assert len(works) == 2 and {spec.handle for spec in works[1].create} == {
        classid.slice_class(8, NORMAL),
        classid.slice_class(8, EXEMPT),
    }

    # The job fails: carol's config stays, the failure is shown, and a cleanup follows.
    works[1].end("cannot set HTB class 1:8: No such file or directory")
    d.advance()
    assert [s.name for s in d.cfg.slices] == ["alice", "bob", "carol"]
    assert d.reload_problems == [
        "reload: keeping the configuration in use:"
        " cannot set HTB class 1:8: No such file or directory"
    ]
    assert len(works) == 3 and works[2].delete == [(STALE, classid.parent_class(NORMAL))]

    # A SIGHUP cancels the cleanup (as the loop does); the reload, then the cleanup again.
    d._reload_due = True
    works[2].cancel()
    d.advance()
    assert len(works) == 4 and works[3].create
    works[3].end()
    d.advance()
    assert installed[-1] == ["alice", "bob", "carol", "dave"] and d.reload_problems == []
    assert len(works) == 5 and works[4].delete == works[2].delete
    works[4].end()
    d.advance()
    assert len(works) == 5 and d.cleanup_problems == []


def test_stop_abandons_a_reload_whose_classes_are_being_made(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    works: list[FakeWork] = []
    d = daemon.Daemon(cfg, class_work=fake_works(works))
    Path(cfg.path).write_text(Path(cfg.path).read_text() + _slice_toml("carol", 7))
    d.begin_reload()
    assert works[0].started and d._adopting is not None
    d.stop()
    assert works[0].cancelled and d._work is None and d._adopting is None and d.cfg is cfg
