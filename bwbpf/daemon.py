"""The quota daemon: every tick, counters → ledger → policy → HTB → state → mail → status.

The pure steps (readings by slice name, the decisions, the ceilings, which mails are due,
the status document) are module functions that unit tests call with plain data; ``Daemon``
only sequences them with the kernel, the clock, the disk and the mail server.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any, Protocol

from bwbpf import config, datapath, metrics, node, notify, periods, policy, state, status
from bwbpf.config import Config
from bwbpf.errors import ConfigError, Error
from bwbpf.ledger import Ledger, Reading
from bwbpf.limits import DCLASSES
from bwbpf.notify import CappedClass
from bwbpf.policy import Decision

log = logging.getLogger(__name__)

Decisions = dict[str, dict[int, Decision]]
"""``{slice name: {dclass: Decision}}`` for every configured slice the ledger knows."""


class _Usage(Protocol):
    bytes: int
    packets: int


# -- pure helpers ---------------------------------------------------------------------------


def readings(
    cfg: Config, raw: Mapping[int, tuple[_Usage, _Usage]]
) -> dict[str, dict[int, Reading]]:
    """Counter readings keyed by slice name, as ``Ledger.update`` takes them.

    Every configured slice is present (``(0, 0)`` if it has no counter yet): a slice absent
    from the readings would count as dead.
    """
    out: dict[str, dict[int, Reading]] = {}
    for s in cfg.all_slices():
        pair = raw.get(s.id)
        out[s.name] = {
            dclass: (0, 0) if pair is None else (pair[dclass].bytes, pair[dclass].packets)
            for dclass in range(len(DCLASSES))
        }
    return out


def decide_all(cfg: Config, ledger: Ledger, now: float) -> Decisions:
    """The policy's decision for both classes of every configured slice in the ledger."""
    out: Decisions = {}
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is None:
            continue
        out[s.name] = {
            dclass: policy.decide(
                s.quota(dclass),
                cfg.policy,
                record.classes[dclass].used_bytes,
                record.period_start,
                record.period_end,
                now,
            )
            for dclass in range(len(DCLASSES))
        }
    return out


def ceilings(cfg: Config, decisions: Decisions) -> dict[tuple[int, int], int]:
    """``{(slice id, dclass): ceil_bps}`` as ``tree.desired_tree`` and ``node.up`` take it."""
    ids = {s.name: s.id for s in cfg.all_slices()}
    return {
        (ids[name], dclass): d.ceil_bps
        for name, by_class in decisions.items()
        if name in ids
        for dclass, d in by_class.items()
    }


def recorded_ceilings(cfg: Config, ledger: Ledger) -> dict[tuple[int, int], int]:
    """The ceilings the ledger says were in force, for the tree installed at start-up: a
    restarted daemon must not hand a capped slice its max rate back until its first tick."""
    out = {}
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is None:
            continue
        for dclass, c in enumerate(record.classes):
            if c.ceil_bps is not None:
                out[(s.id, dclass)] = c.ceil_bps
    return out


def due_notifications(
    cfg: Config, ledger: Ledger, decisions: Decisions
) -> list[tuple[str, list[CappedClass]]]:
    """Slices to mail now: capped in at least one class and not yet told this period.

    One entry per slice with all its capped classes (one message for both). Empty without a
    ``[notify]`` section.
    """
    if cfg.notify is None:
        return []
    due = []
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is None or record.notified or s.name not in decisions:
            continue
        capped = [
            CappedClass(
                dclass,
                record.classes[dclass].used_bytes,
                d.ceil_bps,
                policy.byte_limit(
                    s.quota(dclass), cfg.policy, record.period_start, record.period_end
                ),
            )
            for dclass, d in sorted(decisions[s.name].items())
            if d.capped
        ]
        if capped:
            due.append((s.name, capped))
    return due


def status_slices(cfg: Config, ledger: Ledger, decisions: Decisions) -> dict[str, Any]:
    """The ``slices`` part of the status file (see status.py) for the configured slices."""
    out: dict[str, Any] = {}
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is None or s.name not in decisions:
            continue
        out[s.name] = {
            "period_start": record.period_start,
            "period_end": record.period_end,
            "classes": {
                DCLASSES[dclass]: {
                    "bytes": c.used_bytes,
                    "counter_bytes": 0 if c.last is None else c.last[0],
                    "capped": decisions[s.name][dclass].capped,
                    "ceil_bps": decisions[s.name][dclass].ceil_bps,
                }
                for dclass, c in enumerate(record.classes)
            },
        }
    return out


# -- systemd --------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``) to systemd, as
    sd_notify(3) does; without ``$NOTIFY_SOCKET`` (not under systemd) do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify %s: %s", address, exc)
        return False
    return True


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """One interface's quota daemon. ``start()``, then ``tick(now)`` as often as wanted,
    then ``stop()``; or ``run()`` for all of it with signals."""

    def __init__(self, cfg: Config, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.ledger = Ledger()
        self.state_path = state.state_file(cfg.state_dir, cfg.interface)
        self.lock_path = os.path.join(cfg.state_dir, f"{cfg.interface}.lock")
        self.hostname = socket.gethostname()
        # Problems that hold until the daemon restarts (an unusable state file).
        self.lasting_problems: list[str] = []
        self.tick_problems: list[str] = []
        self.decisions: Decisions = {}
        self.signals: queue.Queue[int] = queue.Queue()
        self._lock: int | None = None
        self._counters: datapath.Counters | None = None
        self.exporter = metrics.Exporter(cfg.interface)

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Take the interface's lock, load the state, install the tree and classifier."""
        self._take_lock()
        for warning in self.cfg.warnings:
            log.warning("%s", warning)
        self.ledger, problem = state.load_state(self.state_path, self.cfg.interface)
        if problem:
            log.error("%s", problem)
            self.lasting_problems.append(problem)
        if self.dry_run:
            log.info("dry run: no HTB class will change and no mail will be sent")
        else:
            self._install(recorded_ceilings(self.cfg, self.ledger))
        self._serve_metrics()

    def stop(self) -> None:
        """Save the state and let go of everything; shaping stays as it is."""
        try:
            # Without the lock the state file is another daemon's: never write it.
            if self._lock is not None:
                state.save_state(self.state_path, self.cfg.interface, self.ledger)
        finally:
            self.exporter.close()
            if self._counters is not None:
                self._counters.close()
                self._counters = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _take_lock(self) -> None:
        os.makedirs(self.cfg.state_dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Error(
                f"another bwbpf daemon is already running on {self.cfg.interface}"
                f" (it holds {self.lock_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def _install(self, ceils: Mapping[tuple[int, int], int]) -> None:
        """node.up: tree, classifier, match maps; removes classes of unconfigured slices."""
        pinned = os.path.exists(os.path.join(self.cfg.pin_dir, "counters"))
        report = node.up(self.cfg, ceils)
        if not pinned:
            # New maps count from zero: every reading is new traffic, even for slices the
            # state file has a baseline for (a reboot, `bwbpf down`).
            self.ledger.counters_restarted()
        log.info(
            "%s: classifier and HTB tree installed (%d class changes, %d removed)",
            self.cfg.interface,
            report.class_changes,
            len(report.classes_removed),
        )
        self._reopen_counters()

    def _reopen_counters(self) -> None:
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        self._counters = datapath.Counters(self.cfg.pin_dir)
        generation = self._counters.generation
        if self.ledger.counters_generation != generation:
            # Maps this ledger never read from (made by `bwbpf up` after a reboot, say, or
            # before this daemon's first start): all they counted is new traffic, whatever
            # the old baselines were.
            log.info("%s: counters were recreated; counting them from zero", self.cfg.interface)
            self.ledger.counters_restarted()
        self.ledger.counters_generation = generation

    # -- the tick -------------------------------------------------------------------------

    def tick(self, now: float) -> Decisions:
        """One round of accounting, policy, shaping, state, mail and status."""
        cfg = self.cfg
        started = time.monotonic()
        self.tick_problems = []
        if self._counters is None:
            self._reopen_counters()
        assert self._counters is not None
        raw = self._counters.read(s.id for s in cfg.all_slices())
        self.ledger.update(
            now,
            readings(cfg, raw),
            lambda _name, start: periods.current_period(cfg.period, now, start),
        )
        decisions = decide_all(cfg, self.ledger, now)
        self.decisions = decisions
        if not self.dry_run:
            self._guard(self._shape, decisions)
        self._guard(self._save, now)
        if not self.dry_run:
            self._notify(decisions, now)
        # Metrics before status: a textfile that cannot be written shows in `bwbpf stat`.
        self._guard(self._export, now, decisions, time.monotonic() - started)
        self._guard(self._publish, now, decisions)
        capped = sorted(n for n, by in decisions.items() if any(d.capped for d in by.values()))
        sd_notify(
            f"WATCHDOG=1\nSTATUS={len(decisions)} slices, {len(capped)} capped"
            + (f": {', '.join(capped[:5])}" if capped else "")
        )
        return decisions

    def _guard(self, step: Any, *args: Any) -> None:
        """Run one step; a bwbpf.Error is logged and shown in stat, and the tick goes on."""
        try:
            step(*args)
        except Error as exc:
            log.error("%s", exc)
            self.tick_problems.append(str(exc))

    def _shape(self, decisions: Decisions) -> None:
        from bwbpf.shaper import Shaper
        from bwbpf.tree import desired_tree

        ceils = ceilings(self.cfg, decisions)
        with Shaper(self.cfg.interface) as shaper:
            intact = shaper.root_is_ours() and datapath.attached(self.cfg.interface)
            if intact:
                changes = shaper.apply(desired_tree(self.cfg, ceils))
                if changes:
                    log.info("%s: %d HTB classes changed", self.cfg.interface, changes)
        if not intact:
            log.warning(
                "%s: bwbpf's HTB root or classifier is missing; restoring", self.cfg.interface
            )
            self._install(ceils)
        for name, by_class in decisions.items():
            for dclass, d in by_class.items():
                record = self.ledger.get(name)
                if record is not None and record.classes[dclass].ceil_bps != d.ceil_bps:
                    log.info(
                        "slice %s %s: ceiling %d bit/s (%s)",
                        name,
                        DCLASSES[dclass],
                        d.ceil_bps,
                        d.reason,
                    )
                self.ledger.set_ceiling(name, dclass, d.ceil_bps, d.capped)

    def _save(self, now: float) -> None:
        state.save_state(self.state_path, self.cfg.interface, self.ledger, now)

    def _notify(self, decisions: Decisions, now: float) -> None:
        notify_cfg = self.cfg.notify
        for name, capped in due_notifications(self.cfg, self.ledger, decisions):
            assert notify_cfg is not None  # due_notifications is empty without [notify]
            start, end = self.ledger.period(name)
            try:
                if not notify.recipients(notify_cfg, name):
                    continue  # the default slice with no operator: nobody to tell
                message = notify.compose(notify_cfg, name, self.hostname, capped, start, end, now)
                notify.send(message, notify_cfg)
            except Error as exc:
                log.error("mail about slice %s: %s; trying again next tick", name, exc)
                self.tick_problems.append(f"mail about slice {name}: {exc}")
                continue
            self.ledger.set_notified(name)
            log.info("slice %s: mailed %s", name, message["To"])
            # Record it at once: a crash before the next tick must not mail twice.
            self._guard(self._save, now)

    def _publish(self, now: float, decisions: Decisions) -> None:
        status.write(
            self.cfg,
            pid=os.getpid(),
            last_tick=now,
            problems=self.lasting_problems + self.exporter.problems + self.tick_problems,
            slices=status_slices(self.cfg, self.ledger, decisions),
        )

    def _serve_metrics(self) -> None:
        """Serve metrics as [metrics] says. An address in use is a problem shown in stat, not
        a reason to stop enforcing quotas; a reload tries again."""
        try:
            self.exporter.serve(self.cfg.metrics)
        except Error as exc:
            log.error("%s", exc)

    def _export(self, now: float, decisions: Decisions, tick_duration_s: float) -> None:
        """Hand this tick's snapshot to the metrics exporter (and its textfile)."""
        if self.cfg.metrics is None or self._counters is None:
            return
        try:
            errors = self._counters.errors()
        except OSError as exc:
            raise Error(f"cannot read the datapath error counters: {exc.strerror}") from None
        problems = self.lasting_problems + self.exporter.problems + self.tick_problems
        snap = metrics.snapshot(
            self.cfg,
            self.ledger,
            decisions,
            errors,
            now=now,
            tick_duration_s=tick_duration_s,
            problems=len(problems),
        )
        self.exporter.update(snap, self.cfg.metrics.textfile)

    # -- reload and the loop --------------------------------------------------------------

    def reload(self) -> bool:
        """Read the config file again; keep the old one if the new one is not usable."""
        try:
            new = config.load(self.cfg.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload: keeping the configuration in use")
            return False
        for key in ("interface", "state_dir", "bpffs_dir"):
            if getattr(new, key) != getattr(self.cfg, key):
                log.error(
                    "reload: %s changed from %r to %r, which needs a restart;"
                    " keeping the configuration in use",
                    key,
                    getattr(self.cfg, key),
                    getattr(new, key),
                )
                return False
        for warning in new.warnings:
            log.warning("%s", warning)
        self.cfg = new
        if not self.dry_run:
            # New slices and matches need new match maps, not only new classes.
            self._install(recorded_ceilings(new, self.ledger))
        self._serve_metrics()  # a changed [metrics] listen takes effect now
        log.info("reloaded %s: %d slices", new.path, len(new.slices))
        return True

    def _handle_signal(self, signum: int, _frame: object) -> None:
        # Only enqueue: the loop does the work, outside the signal handler (STYLE.md #9).
        self.signals.put(signum)

    def run(self, once: bool = False) -> None:
        """Start, tick every ``tick_s`` until SIGTERM or SIGINT, stop. HUP reloads."""
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle_signal)
        try:
            self.start()
            self.tick(time.time())
            if once:
                return
            sd_notify("READY=1")
            log.info(
                "running on %s: %d slices, tick %d s%s",
                self.cfg.interface,
                len(self.cfg.slices),
                self.cfg.tick_s,
                " (dry run)" if self.dry_run else "",
            )
            next_tick = time.monotonic() + self.cfg.tick_s
            while True:
                try:
                    signum = self.signals.get(timeout=max(0.0, next_tick - time.monotonic()))
                except queue.Empty:
                    self.tick(time.time())
                    # Never a burst of catch-up ticks after a stall (a suspend, a slow mail).
                    next_tick = max(next_tick + self.cfg.tick_s, time.monotonic())
                    continue
                if signum == signal.SIGHUP:
                    sd_notify("RELOADING=1")
                    self._guard(self.reload)
                    sd_notify("READY=1")
                else:
                    log.info("%s: saving state and exiting", signal.Signals(signum).name)
                    sd_notify("STOPPING=1")
                    return
        finally:
            self.stop()
