"""The quota daemon: every tick, counters → ledger → policy → HTB → state → mail → status.

The pure steps (readings by slice name, the decisions, the ceilings, which mails are due,
the status document) are module functions that unit tests call with plain data; ``Daemon``
only sequences them with the kernel, the clock, the disk and the mail server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol, TypeVar

from bwbpf import (
    classwork,
    config,
    datapath,
    heap,
    lifecycle,
    metrics,
    migrate,
    node,
    nodepage,
    notify,
    periods,
    policy,
    state,
    statserver,
    status,
)
from bwbpf.clock import AccountingClock, describe_offset
from bwbpf.errors import ConfigError, Error, one_line
from bwbpf.ledger import MAX_COUNT, Ledger, Reading, SliceRecord
from bwbpf.lifecycle import sd_notify
from bwbpf.limits import DCLASSES
from bwbpf.model import Config, Notify, Slice
from bwbpf.notify import CappedClass
from bwbpf.policy import Decision
from bwbpf.recorder import Recorder
from bwbpf.shaper import Shaper
from bwbpf.tree import ClassSpec, added, desired_tree, leaf

log = logging.getLogger(__name__)
T = TypeVar("T")

Decisions = dict[str, dict[int, Decision]]
"""``{slice name: {dclass: Decision}}`` for every configured slice the ledger knows."""

# How often the whole HTB tree is listed and compared with what it should be: a class
# someone else changed is put back within this time. (A full listing at 10,000 slices
# costs ~140 ms; between listings a tick sends only the ceilings that changed.)
VERIFY_S = 60.0


class _Usage(Protocol):
    bytes: int
    packets: int


# -- pure helpers ---------------------------------------------------------------------------


_NO_COUNTER = ((0, 0), (0, 0))


def readings(
    cfg: Config, raw: Mapping[int, tuple[_Usage, _Usage]]
) -> dict[str, tuple[Reading, ...]]:
    """Counter readings keyed by slice name, as ``Ledger.update`` takes them: a
    ``(bytes, packets)`` pair per dclass (``datapath.Usage`` is such a pair).

    Every configured slice is present (``(0, 0)`` if it has no counter yet): a slice absent
    from the readings would count as dead.
    """
    out: dict[str, tuple[Reading, ...]] = {}
    for s in cfg.all_slices():
        pair = raw.get(s.id, _NO_COUNTER)
        # Counters.read gives tuples already (no copy: 10,000 of them a tick).
        out[s.name] = (
            pair  # type: ignore[assignment]
            if isinstance(pair, tuple) and isinstance(pair[0], tuple)
            else tuple((u.bytes, u.packets) for u in pair)
        )
    return out


def decide_slice(cfg: Config, s: Slice, record: SliceRecord, now: float) -> dict[int, Decision]:
    """The policy's decision for both classes of one slice."""
    return {dclass: decide_class(cfg, s, record, dclass, now) for dclass in range(len(DCLASSES))}


def decide_class(cfg: Config, s: Slice, record: SliceRecord, dclass: int, now: float) -> Decision:
    """The policy's decision for one class of one slice."""
    return policy.decide(
        s.quota(dclass),
        cfg.policy,
        record.classes[dclass].used_bytes,
        record.period_start,
        record.period_end,
        now,
    )


def decide_all(cfg: Config, ledger: Ledger, now: float) -> Decisions:
    """The policy's decision for both classes of every configured slice in the ledger."""
    out: Decisions = {}
    for s in cfg.all_slices():
        record = ledger.get(s.name)
        if record is not None:
            out[s.name] = decide_slice(cfg, s, record, now)
    return out


class DecisionCache:
    """The decisions of every configured slice, taken again at a tick only where they can
    have changed: slices whose ledger record changed, and slices on the smooth policy's
    ramp, whose ceiling moves with time alone (``Decision.moves``). At 10,000 mostly idle
    slices that is a few instead of 20,000 policy calls a tick.

    Of a changed slice, a class's decision is kept when it cannot have changed either: in
    the same period, a decision that does not move with time, taken at the same usage (the
    class sent nothing) or once the class had used up its period's bytes
    (``policy.settled_bytes``: it stays as it is however much more the class sends). At 10,000
    slices all sending past their limits that is no policy call at all, and no new
    decision objects."""

    def __init__(self) -> None:
        self.decisions: Decisions = {}
        # Slices capped in at least one class (for systemd's status line).
        self.capped: set[str] = set()
        self._moving: set[str] = set()
        self._everything = True
        self._slices: dict[str, Slice] = {}
        # What each slice's decisions were taken at and hold for (_basis).
        self._basis: dict[str, tuple[Any, ...]] = {}

    def reset(self) -> None:
        """A new configuration: every decision is taken again at the next tick."""
        self._everything = True

    @property
    def slices(self) -> Mapping[str, Slice]:
        """The configured slices by name, as of the last update."""
        return self._slices

    def update(self, cfg: Config, ledger: Ledger, now: float) -> set[str]:
        """Bring the decisions up to ``now``; the names whose decisions were looked at
        again (taken again, or found to hold)."""
        # Equal decisions (and bases) made in one update are one object (both immutable):
        # 10,000 slices capped at one tick keep a few, not 20,000 and their reasons' text.
        shared: dict[Any, Any] = {}

        def share(value: T) -> T:
            return shared.setdefault(value, value)

        if self._everything:
            self._everything = False
            self._slices = {s.name: s for s in cfg.all_slices()}
            before = set(self.decisions)
            self.decisions = {
                name: {dclass: share(d) for dclass, d in by_class.items()}
                for name, by_class in decide_all(cfg, ledger, now).items()
            }
            self._basis = {
                name: share(_basis(cfg, self._slices[name], ledger.get(name)))
                for name in self.decisions
            }
            self._moving = {n for n, by in self.decisions.items() if _moves(by)}
            self.capped = {n for n, by in self.decisions.items() if _capped(by)}
            # Those that left the config too: what follows must forget them.
            return set(self.decisions) | before
        names = ledger.changed | self._moving
        for name in names:
            s, record = self._slices.get(name), ledger.get(name)
            if s is None or record is None:
                self.decisions.pop(name, None)
                self._basis.pop(name, None)
                self._moving.discard(name)
                self.capped.discard(name)
                continue
            old = self.decisions.get(name)
            by_class = _still(old, self._basis.get(name), record)
            if by_class is old:
                continue  # every class's decision holds: nor do the flags change
            self.decisions[name] = by_class = {
                dclass: d if d is not None else share(decide_class(cfg, s, record, dclass, now))
                for dclass, d in by_class.items()
            }
            self._basis[name] = share(_basis(cfg, s, record))
            for flag, members in (
                (_moves(by_class), self._moving),
                (_capped(by_class), self.capped),
            ):
                if flag:
                    members.add(name)
                else:
                    members.discard(name)
        return names


def _basis(cfg: Config, s: Slice, record: SliceRecord | None) -> tuple[Any, ...]:
    """What a slice's decisions are taken at, and so hold for: ``(period_start,
    period_end, lo, hi, lo, hi, ...)``, per class the used bytes from ``lo`` to ``hi``
    (None: no end). That is the usage the decision was taken at, or from what the period
    allows on (``policy.settled_bytes``). A flat tuple of numbers: slices with equal ones
    share it (DecisionCache.update), and the garbage collector stops tracking it."""
    assert record is not None
    start, end = record.period_start, record.period_end
    out: list[Any] = [start, end]
    for dclass, c in enumerate(record.classes):
        used = c.used_bytes
        settled = policy.settled_bytes(s.quota(dclass), cfg.policy, start, end)
        out += (settled, None) if used >= settled else (used, used)
    return tuple(out)


def _still(
    old: Mapping[int, Decision] | None, basis: tuple[Any, ...] | None, record: SliceRecord
) -> Mapping[int, Decision | None]:
    """``old`` itself when each of its decisions still holds for ``record``; else the
    decisions that hold and None for each class to decide again."""
    if (
        old is None
        or basis is None
        or basis[0] != record.period_start
        or basis[1] != record.period_end
    ):
        return dict.fromkeys(range(len(DCLASSES)))
    out: dict[int, Decision | None] = {}
    holds = True
    for dclass, c in enumerate(record.classes):
        d = old[dclass]
        lo, hi = basis[2 + 2 * dclass], basis[3 + 2 * dclass]
        used = c.used_bytes
        if d.moves or used < lo or (hi is not None and used > hi):
            out[dclass] = None
            holds = False
        else:
            out[dclass] = d
    return old if holds else out


def _moves(by_class: Mapping[int, Decision]) -> bool:
    return any(d.moves for d in by_class.values())


def _capped(by_class: Mapping[int, Decision]) -> bool:
    return any(d.capped for d in by_class.values())


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
    cfg: Config, ledger: Ledger, decisions: Decisions, names: set[str] | None = None
) -> list[tuple[str, list[CappedClass]]]:
    """Slices to mail now: capped in at least one class and not yet told this period.

    One entry per slice with all its capped classes (one message for both). Empty without a
    ``[notify]`` section. ``names``: only these slices (those whose decision changed).
    """
    if cfg.notify is None:
        return []
    due = []
    for s in cfg.all_slices():
        if names is not None and s.name not in names:
            continue
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


@dataclass(frozen=True)
class TickCost:
    """What one tick took, for the metrics: wall and CPU seconds (all threads), and the
    bytes it wrote to files (state, status, textfile; state.written_bytes)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    written_bytes: int = 0


class TickMeter:
    """Started at the beginning of a tick; ``done()`` at its very end."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self._written = state.written_bytes()

    def written_bytes(self) -> int:
        """Bytes written to files since the tick began."""
        return state.written_bytes() - self._written

    def done(self) -> TickCost:
        return TickCost(
            time.monotonic() - self._wall, time.process_time() - self._cpu, self.written_bytes()
        )


# -- the daemon -----------------------------------------------------------------------------


def _watchdog_alive() -> None:
    sd_notify("WATCHDOG=1")


class RetiredPending(Error):
    """A counters map of another layout is still to be accounted (Daemon._account_retired)."""


class Daemon:
    """One interface's quota daemon. ``start()``, then ``tick(now)`` as often as wanted,
    then ``stop()``; or ``run()`` for all of it with signals."""

    def __init__(
        self,
        cfg: Config,
        dry_run: bool = False,
        clock: AccountingClock | None = None,
        take_over: bool = False,
        counters: Callable[[str], datapath.Counters] = datapath.Counters,
        mailer: Callable[[EmailMessage, Notify], None] = notify.send_from_child,
        shaper: Callable[[str], Shaper] = Shaper,
        class_work: Callable[..., classwork.ClassWork] = classwork.ClassWork,
        node_up: Callable[..., node.UpReport] = node.up,
    ) -> None:
        """The kernel and SMTP, unless a test gives others: ``counters`` opens the counters
        pinned in a directory, ``mailer`` sends one mail, ``shaper`` opens an interface's
        HTB tree, ``class_work`` starts a job of class creations and deletions
        (``classwork.ClassWork``'s arguments) and ``node_up`` installs a config
        (``node.up``'s)."""
        self.cfg = cfg
        self.dry_run = dry_run
        self._open_counters = counters
        self._send_mail = mailer
        self._open_shaper = shaper
        self._class_work = class_work
        self._node_up = node_up
        # Replace another bwbpf's classifier at the first install (only then).
        self._take_over = take_over
        # Set while another bwbpf owns the interface: this daemon then shapes nothing.
        self.foreign_owner: str | None = None
        # Tick times: the wall clock at start, then elapsed time only (bwbpf/clock.py).
        self.clock = clock or AccountingClock()
        self._jump_logged: float | None = None
        self.ledger = Ledger()
        self.state_path = state.state_file(cfg.state_dir, cfg.interface)
        self._state = state.StateFile(self.state_path, cfg.interface)
        self.lock_path = lifecycle.lock_path(cfg.state_dir, cfg.interface)
        self.hostname = socket.gethostname()
        # Problems that hold until the daemon restarts (an unusable state file).
        self.lasting_problems: list[str] = []
        self.tick_problems: list[str] = []
        # The last reload's failure, shown in stat until a reload succeeds.
        self.reload_problems: list[str] = []
        self.decisions: Decisions = {}
        self._decider = DecisionCache()
        # Slices a mail about could not be sent: tried again at every tick.
        self._mail_retry: set[str] = set()
        # The HTB classes are compared with what they should be, in full, at the first
        # tick and then every VERIFY_S seconds; in between only changed ceilings are sent.
        self._verify_at = 0.0
        self._shaper: Shaper | None = None
        self._textfile_at = 0.0  # when the metrics textfile is next written
        # The last completed tick: wall seconds, CPU seconds, bytes written (metrics).
        self.tick_cost = TickCost()
        self.signals = lifecycle.SignalPipe()
        self._lock: int | None = None
        self._counters: datapath.Counters | None = None
        # The attached classifier, kept for its match maps and for restores without a
        # compile; released when a new one replaces it (node.up).
        self._program: datapath.Program | None = None
        self.watch = node.Watch()
        self.stat_server = statserver.StatServer()
        # The node page beside the metrics: the stat socket's answer, and the config in
        # force (read at each request: a reload replaces it).
        site = nodepage.Site(self.stat_server.document, lambda: self.cfg)
        self.exporter = metrics.Exporter(cfg.interface, site)
        # HTB classes being created or deleted off the loop (classwork.py), one job at a
        # time; the config a reload read waits in _adopting for the classes it adds.
        self._work: classwork.ClassWork | None = None
        self._adopting: Config | None = None
        self._reload_due = False  # a SIGHUP not yet acted on
        self._cleanup_due = False  # classes no configured slice owns may be installed
        self.cleanup_problems: list[str] = []
        self._freeze_due = False  # heap.freeze after the next tick: a reload made garbage
        # The usage history's writer ([history]); None when off or when it cannot be opened.
        self.history: Recorder | None = None
        self.history_problems: list[str] = []

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Check the state directory can be written, take the interface's lock, load the
        state, install the tree and classifier."""
        lifecycle.probe_state_dir(self.cfg.state_dir)
        self._take_lock()
        for warning in self.cfg.warnings:
            log.warning("%s", warning)
        self.ledger, problem = state.load_state(self.state_path, self.cfg.interface)
        if problem:
            log.error("%s", problem)
            self.lasting_problems.append(problem)
        self.clock.start(self.ledger.last_read_at())
        if self.clock.start_note:
            log.warning("%s: %s", self.cfg.interface, self.clock.start_note)
        self._open_history()
        if self.dry_run:
            log.info("dry run: no HTB class will change and no mail will be sent")
        else:
            self._install(recorded_ceilings(self.cfg, self.ledger), remove=True)
            # stat asks here first (its document from the last tick, not the files).
            self.stat_server.serve(self.cfg)
        self._serve_metrics()

    def stop(self) -> None:
        """Save the state and let go of everything; shaping stays as it is."""
        try:
            # Without the lock the state file is another daemon's: never write it.
            if self._lock is not None:
                now = self.clock.now() if self.clock.started else time.time()
                self._state.save(self.ledger, now, whole=True)
        finally:
            self._close_history()
            self._end_work()
            self.exporter.close()
            self.stat_server.close()
            self._shaper_close()
            if self._counters is not None:
                self._counters.close()
                self._counters = None
            if self._program is not None:
                self._program.close()  # it stays attached
                self._program = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _take_lock(self) -> None:
        # The state directory exists: start() probed it (lifecycle.probe_state_dir).
        self._lock = lifecycle.take_lock(self.lock_path, self.cfg.interface)

    def _install(self, ceils: Mapping[tuple[int, int], int], remove: bool = False) -> None:
        """node.up: tree, classifier, match maps. Classes of unconfigured slices are removed
        here with ``remove``, else by a ClassWork after this (``_cleanup_due``)."""
        if self._counters is not None:
            # Pins removed under us: pin the maps we hold again before node.up, which would
            # otherwise make new ones (and count from zero).
            self._counters.repin()
        pinned = os.path.exists(os.path.join(self.cfg.pin_dir, "counters"))
        # The kept program is attached again when its maps still fit (no compile), else
        # replaced and released: fds and memory stay flat across reloads.
        report = self._node_up(
            self.cfg,
            ceils,
            current=self._program,
            keep=True,
            take_over=self._take_over,
            remove=remove,
            # Tens of seconds in the kernel at 10,000 slices on a new qdisc (a restore after
            # someone deleted it): alive all along, so the watchdog must not kill it.
            progress=_watchdog_alive,
        )
        self._cleanup_due = not remove
        self._take_over = False
        self.foreign_owner = None
        self._program = report.program
        self._verify_at = 0.0  # the next tick compares every class
        self._shaper_close()
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
        # A counters map of another layout not accounted yet is not fatal: the daemon shapes
        # by the usage it has, and the tick that follows tries again (``_account``),
        # logging why and showing it in stat until it works.
        with contextlib.suppress(RetiredPending):
            self._reopen_counters(self.clock.now())

    def _reopen_counters(self, now: float) -> None:
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        # Before the ledger moves on to the map pinned now, which may be new: what an older
        # layout's map counted until the new program replaced its own.
        self._account_retired(now)
        self._counters = self._open_counters(self.cfg.pin_dir)
        generation = self._counters.generation
        if self.ledger.counters_generation != generation:
            # Maps this ledger never read from (made by `bwbpf up` after a reboot, say, or
            # before this daemon's first start): all they counted is new traffic, whatever
            # the old baselines were.
            log.info("%s: counters were recreated; counting them from zero", self.cfg.interface)
            self.ledger.counters_restarted()
        self.ledger.counters_generation = generation

    def _account_retired(self, now: float) -> None:
        """Account each counters map of another layout that the loader moved aside
        (datapath.retire_pin), then unpin it.

        The map is read as the generation it was while it was ``counters``: for the map the
        previous version's daemon read, the one the ledger last saw, so a tick's update
        takes exactly what it counted since the last reading. The state is saved before the
        pin goes: a daemon killed in between reads the map again at the same generation and
        baselines, which adds nothing. Raises RetiredPending while a map cannot be
        accounted: the ledger must not move to another map before, or the old one would
        later count from zero a second time."""
        pin_dir = self.cfg.pin_dir
        with contextlib.ExitStack() as stack:
            found = []
            for path in datapath.retired_pins(pin_dir):
                try:
                    found.append(stack.enter_context(datapath.RetiredCounters(path)))
                except Error as exc:
                    raise RetiredPending(f"{self.cfg.interface}: {exc}") from exc
            # The map the ledger read first; any other was made after it (a `bwbpf up` of
            # yet another version before this daemon started), and counts from zero.
            found.sort(key=lambda r: (r.generation != self.ledger.counters_generation, r.map_id))
            for retired in found:
                try:
                    self._account_one_retired(retired, now)
                except (Error, OSError) as exc:
                    raise RetiredPending(
                        f"{self.cfg.interface}: the counters map {retired.map_id} of another"
                        f" bwbpf layout ({retired.path}) is not accounted yet, so the new"
                        f" map's counts wait: {one_line(exc)}"
                    ) from exc

    def _account_one_retired(self, retired: datapath.RetiredCounters, now: float) -> None:
        cfg = self.cfg
        if retired.also_current(cfg.pin_dir):
            # Pinned again as `counters` by whoever held it: it is still the map in use.
            retired.unpin()
            log.info("%s: %s is the counters map in use; unpinned", cfg.interface, retired.path)
            return
        if retired.in_use(cfg.interface):
            raise Error(
                "the attached classifier still counts into it (the program loaded in its"
                " place was not attached); `bwbpf up` attaches one"
            )
        carried = migrate.carry(retired.read(), (s.id for s in cfg.all_slices()))
        before = self.ledger.records()
        if self.ledger.counters_generation != retired.generation:
            self.ledger.counters_restarted()  # a map this ledger never read: all of it is new
        self.ledger.counters_generation = retired.generation
        self._update_ledger(now, carried.raw)
        self._state.save(self.ledger, now)
        if self.history is not None:
            self._guard(self.history.observe, self.ledger, self.ledger.changed, now)
        partial, line = migrate.summary(
            cfg.interface,
            retired.map_id,
            retired.slots,
            retired.dclasses,
            migrate.carried_bytes(before, self.ledger.records()),
            carried,
        )
        retired.unpin()
        log.log(logging.WARNING if partial else logging.INFO, "%s", line)

    # -- the tick -------------------------------------------------------------------------

    def tick(self, now: float) -> Decisions:
        """One round of accounting, policy, shaping, state, mail and status."""
        cfg = self.cfg
        meter = TickMeter()
        self.tick_problems = []
        self._note_clock()
        if not self.dry_run and self._program is not None and self._counters is not None:
            # Before reading: pins, qdisc or classifier removed under us are back first.
            self._guard(self._watch_datapath)
        # Counters that cannot be read: the usage stays as it was, and the policy still runs.
        self._guard(self._account, now)
        redecided = self._decider.update(cfg, self.ledger, now)
        decisions = self.decisions = self._decider.decisions
        if not self.dry_run and self.foreign_owner is None:
            self._guard(self._shape, decisions, redecided)
        elif self.dry_run:
            # Nothing applied, but stat shows what would be, as the ledger records it.
            self._record_ceilings(self._moved(decisions, redecided))
        self._guard(self._save, now)
        if self.history is not None:
            self._guard(self.history.observe, self.ledger, self.ledger.changed, now)
        if not self.dry_run:
            self._guard(self._notify, decisions, now, redecided | self._mail_retry)
        # Metrics before status: a textfile that cannot be written shows in `bwbpf stat`.
        self._guard(self._export, now, decisions)
        if meter.written_bytes() >= heap.TRIM_AFTER_BYTES:
            # Before the status file, which tells readers the tick is done: the heap it
            # leaves is the one they see.
            heap.trim()
        self._guard(self._publish, now, decisions)
        capped = sorted(self._decider.capped)
        sd_notify(
            f"WATCHDOG=1\nSTATUS={len(decisions)} slices, {len(capped)} capped"
            + (f": {', '.join(capped[:5])}" if capped else "")
        )
        self.tick_cost = meter.done()
        return dict(decisions)

    def _account(self, now: float) -> None:
        cfg = self.cfg
        if self._counters is None:
            self._reopen_counters(now)
        assert self._counters is not None
        self._update_ledger(now, self._counters.read(s.id for s in cfg.all_slices()))

    def _update_ledger(self, now: float, raw: Mapping[int, Any]) -> None:
        """The ledger's update from counters read by slice id."""
        cfg = self.cfg
        # Most slices share their period: work each distinct one out once per tick.
        known: dict[float | None, tuple[float, float]] = {}

        def period(_name: str, start: float | None) -> tuple[float, float]:
            found = known.get(start)
            if found is None:
                found = known[start] = periods.current_period(cfg.period, now, start)
            return found

        self.ledger.update(now, readings(cfg, raw), period)

    def _watch_datapath(self) -> None:
        """Restore within this tick what someone removed (pins, root qdisc, classifier),
        follow configured cgroups that appeared or were made again, and report the bytes
        that passed uncounted while the classifier was missing."""
        assert self._counters is not None and self._program is not None
        try:
            missing = self.watch.check(self.cfg, self._counters, self._program)
        except Error as exc:
            # Another bwbpf took the interface (--take-over): shaping it too would fight
            # over the same classes. Keep accounting our maps (they no longer grow).
            self.foreign_owner = str(exc)
            raise
        self.foreign_owner = None
        lost = [m for m in missing if m != "pins"]  # pins gone: counting went on
        if lost:
            log.warning("%s: bwbpf's %s missing; restoring", self.cfg.interface, " and ".join(lost))
            self._install(recorded_ceilings(self.cfg, self.ledger))
        assert self._counters is not None and self._program is not None
        self.watch.refresh_cgroups(self.cfg, self._program)
        gap = self.watch.account(self.cfg, self._counters, bool(lost))
        self.ledger.uncounted_bytes = min(self.ledger.uncounted_bytes + gap, MAX_COUNT)
        if lost:
            problem = (
                f"{self.cfg.interface}: the {' and '.join(lost)} was missing;"
                f" {gap} bytes passed uncounted ({self.uncounted_bytes} in all)"
            )
            log.warning("%s", problem)
            self.tick_problems.append(problem)

    def _guard(self, step: Any, *args: Any) -> None:
        """Run one step; a bwbpf.Error, or any unexpected exception, is logged as one line
        and shown in stat, and the tick goes on. A problem already seen this tick (a full
        disk at every save) is not logged again."""
        try:
            step(*args)
        except Exception as exc:
            problem = one_line(exc)
            if not isinstance(exc, Error):
                problem = f"{getattr(step, '__name__', 'step').lstrip('_')}: {problem}"
            if problem not in self.tick_problems:
                log.error("%s", problem)
                self.tick_problems.append(problem)

    def _shape(self, decisions: Decisions, redecided: set[str]) -> None:
        """Send HTB the ceilings that changed. Every VERIFY_S seconds (and at the first
        tick) the whole tree is listed and compared instead, which also puts back a class
        someone else changed; the root qdisc and the classifier are checked every tick
        (``_watch_datapath``)."""
        full = time.monotonic() >= self._verify_at
        try:
            shaper = self._shaper_open()
            if full:
                ceils = ceilings(self.cfg, decisions)
                if not (shaper.root_is_ours() and datapath.attached(self.cfg.interface)):
                    log.warning(
                        "%s: bwbpf's HTB root or classifier is missing; restoring",
                        self.cfg.interface,
                    )
                    self._install(ceils)
                    shaper = self._shaper_open()
                changes = shaper.put(shaper.plan(lambda: desired_tree(self.cfg, ceils)).put)
                self._verify_at = time.monotonic() + VERIFY_S
                self._cleanup_due |= bool(self.cleanup_problems)  # a failed one, again
                names: Iterable[str] = decisions
            else:
                changes = 0
                names = redecided
            moved = self._moved(decisions, names)
            if not full:
                by_name = self._decider.slices
                changes = shaper.put(
                    leaf(self.cfg, by_name[name], dclass, d.ceil_bps) for name, dclass, d in moved
                )
        except BaseException:
            self._shaper_close()  # a new socket (and ifindex) at the next tick
            raise
        if full and changes > len(moved):
            log.warning(
                "%s: %d HTB classes were not as bwbpf set them; put back",
                self.cfg.interface,
                changes - len(moved),
            )
        self._record_ceilings(moved)

    def _moved(self, decisions: Decisions, names: Iterable[str]) -> list[tuple[str, int, Decision]]:
        """(slice, dclass, decision) whose ceiling or capped flag differs from the ledger's
        record of what is in force."""
        out = []
        for name in names:
            record = self.ledger.get(name)
            by_class = decisions.get(name)
            if record is None or by_class is None:
                continue
            for dclass, d in by_class.items():
                c = record.classes[dclass]
                if c.ceil_bps != d.ceil_bps or c.capped != d.capped:
                    out.append((name, dclass, d))
        return out

    def _record_ceilings(self, moved: list[tuple[str, int, Decision]]) -> None:
        """Record what is now in force. A class capped or released is worth an operator's
        look (INFO); a capped ceiling moving along the smooth ramp at every tick is not."""
        for name, dclass, d in moved:
            was = self.ledger.get(name)
            assert was is not None
            level = logging.INFO if was.classes[dclass].capped != d.capped else logging.DEBUG
            if level == logging.INFO or log.isEnabledFor(logging.DEBUG):
                what = "capped" if d.capped else "released" if level == logging.INFO else "ceiling"
                log.log(
                    level,
                    "slice %s %s: %s, ceiling %d bit/s (%s)",
                    name,
                    DCLASSES[dclass],
                    what,
                    d.ceil_bps,
                    d.reason,
                )
            self.ledger.set_ceiling(name, dclass, d.ceil_bps, d.capped)

    def _shaper_open(self) -> Shaper:
        if self._shaper is None:
            self._shaper = self._open_shaper(self.cfg.interface)
        return self._shaper

    def _shaper_close(self) -> None:
        shaper, self._shaper = self._shaper, None
        if shaper is not None:
            with contextlib.suppress(Exception):
                shaper.close()

    def _open_history(self) -> None:
        """Start writing the history [history] asks for, after adding what the ledger has
        and the history does not. A database that cannot be opened is a problem shown in
        stat until a reload opens it; the quotas are kept meanwhile."""
        if not self.cfg.history.enabled or self._lock is None:
            return
        now = self.clock.now()
        try:
            recorder = Recorder(self.cfg, now)
            try:
                recorder.catch_up(self.ledger, now)
            except BaseException:
                with contextlib.suppress(Exception):
                    recorder.close(now)
                raise
        except Error as exc:
            problem = f"{exc}; no history is written until a reload"
            log.error("%s", problem)
            self.history_problems = [problem]
            return
        self.history = recorder
        self.history_problems = [recorder.problem] if recorder.problem else []

    def _close_history(self) -> None:
        recorder, self.history = self.history, None
        if recorder is not None:
            now = self.clock.now() if self.clock.started else time.time()
            try:
                recorder.close(now)
            except Error as exc:
                log.error("%s", exc)

    def _save(self, now: float) -> None:
        self._state.save(self.ledger, now)

    def _notify(self, decisions: Decisions, now: float, names: set[str]) -> None:
        notify_cfg = self.cfg.notify
        due = due_notifications(self.cfg, self.ledger, decisions, names)
        self._mail_retry &= {name for name, _ in due}  # no longer due: nothing to retry
        for name, capped in due:
            assert notify_cfg is not None  # due_notifications is empty without [notify]
            start, end = self.ledger.period(name)
            try:
                if not notify.recipients(notify_cfg, name):
                    continue  # the default slice with no operator: nobody to tell
                message = notify.compose(notify_cfg, name, self.hostname, capped, start, end, now)
                self._send_mail(message, notify_cfg)
            except Error as exc:
                log.error("mail about slice %s: %s; trying again next tick", name, exc)
                self.tick_problems.append(f"mail about slice {name}: {exc}")
                self._mail_retry.add(name)
                continue
            self._mail_retry.discard(name)
            self.ledger.set_notified(name)
            log.info("slice %s: mailed %s", name, message["To"])
            # Record it at once: a crash before the next tick must not mail twice.
            self._guard(self._save, now)

    @property
    def uncounted_bytes(self) -> int:
        """Bytes the device sent while bwbpf's classifier was found missing (node.Watch),
        in all: the ledger keeps the total across restarts."""
        return self.ledger.uncounted_bytes

    def _note_clock(self) -> None:
        """A wall clock jump is shown in stat every tick it lasts and logged once."""
        if not self.clock.jumped:
            if self._jump_logged is not None:
                log.info("%s: the wall clock agrees with accounting again", self.cfg.interface)
            self._jump_logged = None
            return
        problem = describe_offset(self.clock.offset_s)
        self.tick_problems.append(problem)
        if self._jump_logged is None or abs(self.clock.offset_s - self._jump_logged) > 60:
            log.warning("%s: %s", self.cfg.interface, problem)
            self._jump_logged = self.clock.offset_s

    def _publish(self, now: float, decisions: Decisions) -> None:
        problems = self._problems()
        status.write(
            self.cfg,
            pid=os.getpid(),
            last_tick=now,
            problems=problems,
            uncounted_bytes=self.uncounted_bytes,
        )
        summary = status.DaemonStatus(
            pid=os.getpid(),
            last_tick=now,
            tick_s=self.cfg.tick_s,
            policy=self.cfg.policy,
            problems=problems,
            uncounted_bytes=self.uncounted_bytes,
        ).summary(running=True)
        # The ledger's own records, not a copy: a copy would keep this tick's records
        # alive through the next tick's update (~9 MB at 10,000 slices all sending).
        self.stat_server.update(statserver.TickView(self.cfg, self.ledger.live_records(), summary))

    def _problems(self) -> list[str]:
        return (
            self.lasting_problems
            + self.history_problems
            + self.reload_problems
            + self.cleanup_problems
            + self.exporter.problems
            + self.tick_problems
        )

    def _serve_metrics(self) -> None:
        """Serve metrics as [metrics] says. An address in use is a problem shown in stat, not
        a reason to stop enforcing quotas; a reload tries again."""
        try:
            self.exporter.serve(self.cfg.metrics)
        except Error as exc:
            log.error("%s", exc)

    def _export(self, now: float, decisions: Decisions) -> None:
        """Hand this tick's snapshot to the metrics exporter; write the textfile when
        ``textfile_interval`` has passed since it was last written."""
        settings = self.cfg.metrics
        if settings is None or self._counters is None:
            return
        try:
            errors = self._counters.errors()
        except OSError as exc:
            raise Error(f"cannot read the datapath error counters: {exc.strerror}") from None
        # Made when a scrape or the textfile asks, from copies of what this tick knows.
        classes = metrics.Samples(
            self.cfg, self._decider.slices, self.ledger.records(), dict(decisions)
        )
        snap = metrics.Snapshot(
            interface=self.cfg.interface,
            tick_s=self.cfg.tick_s,
            last_tick=now,
            tick_duration_s=self.tick_cost.wall_s,
            classes=classes,
            tick_cpu_s=self.tick_cost.cpu_s,
            tick_written_bytes=self.tick_cost.written_bytes,
            errors=errors,
            problems=len(self._problems()),
            uncounted_bytes=self.uncounted_bytes,
        )
        textfile = None
        # On the accounting clock (monotonic underneath): a wall clock jump neither floods
        # nor starves the textfile.
        if settings.textfile is not None and now >= self._textfile_at:
            textfile = settings.textfile
            self._textfile_at = now + settings.textfile_interval_s
        # Kept for scrapes only when there is a server to scrape.
        self.exporter.update(snap, textfile, keep=self.exporter.serving)

    # -- reload and the loop --------------------------------------------------------------

    def reload(self) -> bool:
        """Read the config file again and put it in force before returning (the loop does
        the same without waiting: ``begin_reload``); keep the old one if the new one is not
        usable. Never raises (see ``_reload_failed``). Returns whether it is in force."""
        self._end_work()
        self._reload_due = True
        self.advance(background=False)
        return not self.reload_problems

    def begin_reload(self, background: bool = True) -> None:
        """Read the config file again. A usable one is put in force (``_adopt``) once the
        HTB classes it adds exist: a ClassWork makes them, in a thread unless not
        ``background``, and the old config stays in force meanwhile; ``advance`` takes
        it from there. None to make: in force at once."""
        try:
            new, missing = self._read_config()
        except Exception as exc:
            self._reload_failed(exc)
            return
        if not missing:
            self._adopt(new)
            return
        log.info(
            "%s: making %d HTB classes for the new configuration; the one in use stays in"
            " force until they exist",
            new.interface,
            len(missing),
        )
        self._adopting = new
        self._run_work(
            self._class_work(new.interface, create=missing, wake=self.signals.wake), background
        )

    def advance(self, background: bool = True) -> None:
        """Take a finished ClassWork's result (a reload put in force or failed, classes
        removed or not), then begin what is due: a reload, else removing the classes no
        configured slice owns. Returns at once while a ClassWork runs in its thread."""
        while True:
            work = self._work
            if work is not None:
                if not work.finished:
                    return
                self._work = None
                self._work_done(work)
            if self._reload_due:
                self._reload_due = False
                self.begin_reload(background)
            elif self._cleanup_due and not self.dry_run:
                self._cleanup_due = False
                self._begin_cleanup(background)
            else:
                return
            if background:
                return

    def _run_work(self, work: classwork.ClassWork, background: bool) -> None:
        self._work = work
        if background:
            work.start()
        else:
            work.run()

    def _end_work(self) -> None:
        """Stop a ClassWork that runs (a reload waiting for it is dropped: the old config
        stays in force, and its classes are removed by the next install)."""
        work, self._work = self._work, None
        if work is not None:
            work.cancel()
            work.join()
            if self._adopting is not None:
                log.info("%s: reload abandoned half-way", self.cfg.interface)
            self._adopting = None

    def _work_done(self, work: classwork.ClassWork) -> None:
        new, self._adopting = self._adopting, None
        if new is not None:
            if work.error is None and not work.cancelled:
                self._adopt(new)
            else:
                self._reload_failed(Error(work.error or "abandoned"))
                self._cleanup_due = True  # the classes it made before failing
        elif work.cancelled:
            self._cleanup_due = True  # for a reload that came: done again after it
        elif work.error is not None:
            problem = f"{self.cfg.interface}: removing unconfigured slices' classes: {work.error}"
            log.error("%s; trying again at the next full comparison", problem)
            self.cleanup_problems = [problem]
        else:
            self.cleanup_problems = []

    def _read_config(self) -> tuple[Config, list[ClassSpec]]:
        """The config file read anew, and the classes its tree has and the tree in force
        has not (parents first; none in a dry run): those a reload must create. Both are
        worked out in a forked child: the parse's garbage and the two trees (~6 MB at
        10,000 slices) never enter the daemon's heap, and no class is listed (~0.15 s at
        20,000): one missing for another reason (removed by someone) is made again by
        node.up when the new config is put in force."""
        old, dry_run = self.cfg, self.dry_run

        def read() -> tuple[Config, list[ClassSpec]]:
            new = config.load(old.path, pack=False)
            return new, [] if dry_run else added(old, new)

        # Unpickled here, which packs it as config.load would.
        new, missing = heap.isolated(read, "the process reading the configuration")
        for key in ("interface", "state_dir", "bpffs_dir"):
            if getattr(new, key) != getattr(old, key):
                raise Error(
                    f"{key} changed from {getattr(old, key)!r} to {getattr(new, key)!r},"
                    " which needs a restart"
                )
        return new, missing

    def _begin_cleanup(self, background: bool) -> None:
        try:
            with self._open_shaper(self.cfg.interface) as shaper:
                stale = shaper.plan(lambda: desired_tree(self.cfg)).stale
        except Exception as exc:
            self.cleanup_problems = [f"{self.cfg.interface}: listing HTB classes: {one_line(exc)}"]
            log.error("%s", self.cleanup_problems[0])
            return
        if stale:
            self._run_work(
                self._class_work(self.cfg.interface, delete=stale, wake=self.signals.wake),
                background,
            )
        else:
            self.cleanup_problems = []

    def _adopt(self, new: Config) -> None:
        """Put a config that was read in force; if installing it fails half-way, the one in
        use is installed again (``_restore``)."""
        old = self.cfg
        try:
            for warning in new.warnings:
                log.warning("%s", warning)
            self.cfg = new
            self._decider.reset()
            self._textfile_at = 0.0
            self.ledger.periods_changed()
            self._adopt_history(old, new)
            if not self.dry_run:
                # New slices and matches need new match maps, not only new classes.
                self._install(recorded_ceilings(new, self.ledger))
            self._serve_metrics()  # a changed [metrics] listen takes effect now
        except Exception as exc:
            adopted, self.cfg = self.cfg is not old, old
            self._reload_failed(exc)
            if adopted:
                self._restore()
            return
        log.info("reloaded %s: %d slices", new.path, len(new.slices))
        self.reload_problems = []
        self._freeze_due = True
        sd_notify("READY=1")

    def _adopt_history(self, old: Config, new: Config) -> None:
        """A reload: the recorder follows the new slices; new [history] settings (or a
        database that could not be opened before) mean closing and opening again."""
        same = (old.history, old.history_path) == (new.history, new.history_path)
        if self.history is not None and same:
            self._guard(self.history.adopt, new, self.ledger, self.clock.now())
            return
        self._close_history()
        self.history_problems = []
        self._open_history()

    def _reload_failed(self, exc: Exception) -> None:
        """Whatever went wrong (an invalid file, any unexpected exception, an install
        failing half-way) is one log line, shown in stat until a reload succeeds; the
        configuration in use stays in force."""
        why = "; ".join(exc.problems) if isinstance(exc, ConfigError) else None
        problem = f"reload: keeping the configuration in use: {why or one_line(exc)}"
        log.error("%s", problem)
        self.reload_problems = [problem]
        sd_notify("READY=1")

    def _restore(self) -> None:
        """After a reload failed half-way: the configuration in use, installed again."""
        try:
            if not self.dry_run:
                self._install(recorded_ceilings(self.cfg, self.ledger))
            self._serve_metrics()
        except Exception as exc:
            problem = f"reload: restoring the configuration in use: {one_line(exc)}"
            log.error("%s", problem)
            self.reload_problems.append(problem)

    def run(self, once: bool = False) -> None:
        """Start, tick every ``tick_s`` until SIGTERM or SIGINT, stop. HUP reloads (several
        pending HUPs are one reload). An unexpected exception at start is one line
        (``bwbpf.Error``); after that, nothing but a signal ends the loop."""
        self.signals.install((signal.SIGHUP, signal.SIGTERM, signal.SIGINT))
        heap.tune_malloc()  # before the server threads start
        try:
            try:
                self.start()
            except Error:
                raise
            except Exception as exc:
                raise Error(f"cannot start on {self.cfg.interface}: {one_line(exc)}") from exc
            self.tick(self.clock.now())
            if once:
                return
            heap.freeze()
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
                # Woken by a signal or by a ClassWork that ended.
                arrived = self.signals.wait(next_tick - time.monotonic())
                stopping = [s for s in arrived if s != signal.SIGHUP]
                if stopping:
                    log.info("%s: saving state and exiting", signal.Signals(stopping[0]).name)
                    sd_notify("STOPPING=1")
                    return
                if arrived:
                    sd_notify("RELOADING=1")  # READY=1 once it is in force or has failed
                    self._reload_due = True
                    if self._work is not None and self._adopting is None:
                        self._work.cancel()  # a cleanup, done again after the reload
                self.advance()
                # Due even while signals keep coming: a HUP storm never starves the ticks.
                if time.monotonic() >= next_tick:
                    try:
                        self.tick(self.clock.now())
                    except Exception as exc:  # each step is guarded; this is the last resort
                        log.error("tick: %s", one_line(exc))
                    # Never a burst of catch-up ticks after a stall (a suspend, a slow mail).
                    next_tick = max(next_tick + self.cfg.tick_s, time.monotonic())
                    if self._freeze_due:  # after the tick: a HUP storm pays it once
                        heap.freeze()
                        self._freeze_due = False
        finally:
            try:
                self.stop()
            finally:
                self.signals.close()
