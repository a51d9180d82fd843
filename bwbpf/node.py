"""What ``bwbpf up`` and ``bwbpf down`` do to a node: the HTB tree and the classifier
together, in the order that never leaves a packet without a real class."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bwbpf import classid, datapath, limits, tree
from bwbpf.model import Config
from bwbpf.shaper import Shaper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpReport:
    qdisc_created: bool
    class_changes: int
    classes_removed: list[int]
    problems: tuple[str, ...]
    # The attached program when up() was asked to keep it, else None (released).
    program: datapath.Program | None = None
    # Whether a program was compiled (False: the one passed as current serves unchanged).
    compiled: bool = True


def _same_maps(a: datapath.MatchTables, b: datapath.MatchTables) -> bool:
    return replace(a, problems=()) == replace(b, problems=())


def up(
    cfg: Config,
    ceilings: Mapping[tuple[int, int], int] | None = None,
    current: datapath.Program | None = None,
    keep: bool = False,
    take_over: bool = False,
    remove: bool = True,
    progress: Callable[[], None] | None = None,
) -> UpReport:
    """Install or refresh the tree and the classifier; idempotent.

    Classes first, then the program that sends packets to them, then the removal of classes
    no slice owns any more: a packet always finds its class (and if it did not, HTB's
    default is the default slice's class, not the unshaped direct queue).

    ``current``, the program the caller keeps attached, is attached again as it is when
    its match maps already hold what cfg asks for (nothing is compiled); otherwise a new
    program replaces it and ``current`` is released once the new one is attached. With
    ``keep`` the attached program is returned in the report for the next call; without,
    it is released (it stays attached).

    An interface whose classifier is another bwbpf's (datapath.check_owner) is refused
    before anything changes, unless ``take_over``. Without ``remove`` the classes no slice
    owns stay, for the caller to delete (the daemon does it in a thread: classwork.py).

    On a root qdisc made here (a first ``up``, or one someone deleted) no filter counts
    anything yet, and creating every slice's classes takes the kernel tens of seconds at
    10,000 slices. So the classifier goes on as soon as the parents and the default
    slice's classes exist, and the other classes follow: a packet of a slice whose class
    is not made yet goes to HTB's default, the default slice's class, and is counted to
    its own slice all the same. ``progress`` is called after each batch of netlink
    requests (the daemon tells systemd's watchdog it is alive).
    """
    tables = datapath.tables_for(cfg)
    if not take_over:
        datapath.check_owner(cfg, None if current is None else current.id)
    reuse = current is not None and _same_maps(current.tables, tables)
    with Shaper(cfg.interface, progress=progress) as shaper:
        created = shaper.ensure_qdisc()
        if created:  # nothing to compare with: every class is made
            first, later = _first_classes(cfg, tree.desired_tree(cfg, ceilings))
            stale: list[tuple[int, int]] = []
        else:
            first, stale = shaper.plan(lambda: tree.desired_tree(cfg, ceilings))
            later = []
        changes = shaper.put(first)
        program = current if reuse and current is not None else datapath.Program.load(cfg)
        if program is current:
            # Equal, but made of the new config's values: the old tables' 20,000 ints at
            # 10,000 slices would stay alive scattered among the 1 MiB pymalloc arenas of
            # the config the daemon just dropped, keeping those arenas resident.
            program.tables = tables
        try:
            datapath.attach(cfg, program.fd)
        except BaseException:
            if program is not current:
                program.discard(cfg.pin_dir)
            raise
        # Attached: now the pins name it (and the previous program's pins go).
        program.publish(cfg.pin_dir)
        changes += shaper.put(later)
        # The plan from before the puts serves: every class they added is one to keep.
        removed = shaper.remove_stale(stale) if remove else []
    if current is not None and program is not current:
        current.close()
    if not keep:
        program.close()
    for problem in tables.problems:
        log.warning("%s", problem)
    return UpReport(
        created, changes, removed, tables.problems, program if keep else None, not reuse
    )


def _first_classes(
    cfg: Config, specs: list[tree.ClassSpec]
) -> tuple[list[tree.ClassSpec], list[tree.ClassSpec]]:
    """(the parents and the default slice's classes, the others), each in specs' order."""
    default = cfg.default_slice.id
    dclasses = range(len(limits.DCLASSES))
    first_handles = {
        classid.ROOT_CLASS,
        *(classid.parent_class(d) for d in dclasses),
        *(classid.slice_class(default, d) for d in dclasses),
    }
    first = [s for s in specs if s.handle in first_handles]
    return first, [s for s in specs if s.handle not in first_handles]


class Watch:
    """What the daemon checks every tick: are the pins, the HTB root qdisc and the
    classifier still bwbpf's, do the configured cgroups still have the ids the match map
    holds, and how many bytes did the device send that no counter saw while the classifier
    was missing."""

    def __init__(self) -> None:
        # (counters map id, device tx bytes, bytes counted) at the last tick.
        self._last: tuple[int, int, int] | None = None
        # None until the first refresh: node.up has logged what was missing then.
        self._missing_cgroups: set[tuple[str, str]] | None = None

    def check(
        self,
        cfg: Config,
        counters: datapath.Counters,
        program: datapath.Program | None = None,
    ) -> list[str]:
        """What is missing: "pins" (re-pinned here at once, from the maps counters holds
        and the program, so counting goes on), "root qdisc", "classifier". The caller
        restores the last two (node.up with the program it keeps)."""
        missing = []
        restored = counters.repin()
        if program is not None:
            restored += program.repin(cfg.pin_dir)
        if restored:
            log.warning(
                "%s: pins were removed; pinned the maps again: %s",
                cfg.interface,
                ", ".join(restored),
            )
            missing.append("pins")
        with Shaper(cfg.interface) as shaper:
            root = shaper.root_is_ours()
        owner = datapath.attached_owner(cfg.interface) if root else None
        if not root:
            missing.append("root qdisc")
        elif owner is None:
            missing.append("classifier")
        elif program is not None and owner.prog_id not in (None, program.id):
            # Replaced: by `bwbpf up` on our pins (put ours back), or by another bwbpf,
            # which must not be fought over: both would account the same traffic.
            datapath.check_owner(cfg, program.id)
            missing.append("classifier")
        return missing

    def refresh_cgroups(self, cfg: Config, program: datapath.Program) -> None:
        """Resolve the configured cgroup paths again and bring the match map up to date:
        a cgroup made after start, or removed and made again (a new id), counts to its
        slice from this tick on. A missing one is logged once, when it goes."""
        cgroups, levels, missing = datapath.cgroup_matches(cfg)
        before = set(missing) if self._missing_cgroups is None else self._missing_cgroups
        for key, why in missing.items():
            if key not in before:
                log.warning("%s; its traffic counts to the default slice until it exists", why)
        for name, path in before - missing.keys():
            if any(s.name == name and path in s.match.cgroups for s in cfg.slices):
                log.info("slice %s: cgroup %s exists now; counting it", name, path)
        self._missing_cgroups = set(missing)
        program.set_cgroups(cgroups, levels)

    def account(self, cfg: Config, counters: datapath.Counters, classifier_missing: bool) -> int:
        """Compare the device's tx bytes with the counters' growth since the last tick; when
        the classifier was found missing, the shortfall is traffic nobody counted. Returns
        it (0 otherwise)."""
        tx = datapath.tx_bytes(cfg.interface)
        if tx is None:
            self._last = None
            return 0
        map_id = counters.map_id
        counted = counters.total_bytes()
        gap = 0
        if classifier_missing and self._last is not None and self._last[0] == map_id:
            gap = max(0, (tx - self._last[1]) - (counted - self._last[2]))
        self._last = (map_id, tx, counted)
        return gap


def down(cfg: Config) -> list[str]:
    """Remove the qdisc (with its classes and filter) and the pins; what was removed."""
    removed = []
    if datapath.interface_index_or_none(cfg.interface) is not None:
        with Shaper(cfg.interface) as shaper:
            if shaper.remove():
                removed.append(f"{cfg.interface}: HTB root qdisc 1: with its classes and filter")
    removed += datapath.remove_pins(cfg.pin_dir)
    return removed
