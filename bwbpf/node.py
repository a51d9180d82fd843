"""What ``bwbpf up`` and ``bwbpf down`` do to a node: the HTB tree and the classifier
together, in the order that never leaves a packet without a real class."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from bwbpf import datapath, tree
from bwbpf.config import Config
from bwbpf.shaper import Shaper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpReport:
    qdisc_created: bool
    class_changes: int
    classes_removed: list[int]
    problems: tuple[str, ...]


def up(cfg: Config, ceilings: Mapping[tuple[int, int], int] | None = None) -> UpReport:
    """Install or refresh the tree and the classifier; idempotent.

    Classes first, then the program that sends packets to them, then the removal of classes
    no slice owns any more: a packet always finds its class (and if it did not, HTB's
    default is the default slice's class, not the unshaped direct queue).
    """
    specs = tree.desired_tree(cfg, ceilings)
    with Shaper(cfg.interface) as shaper:
        created = shaper.ensure_qdisc()
        installed = shaper.classes()
        changes = shaper.apply(specs, installed)
        _bpf, prog_fd, tables = datapath.load(cfg)
        datapath.attach(cfg, prog_fd)
        # The dump from before apply() serves: every class apply() added is one to keep.
        removed = shaper.remove_others({s.handle for s in specs}, installed)
    for problem in tables.problems:
        log.warning("%s", problem)
    return UpReport(created, changes, removed, tables.problems)


def down(cfg: Config) -> list[str]:
    """Remove the qdisc (with its classes and filter) and the pins; what was removed."""
    removed = []
    if datapath.interface_index_or_none(cfg.interface) is not None:
        with Shaper(cfg.interface) as shaper:
            if shaper.remove():
                removed.append(f"{cfg.interface}: HTB root qdisc 1: with its classes and filter")
    removed += datapath.remove_pins(cfg.pin_dir)
    return removed
