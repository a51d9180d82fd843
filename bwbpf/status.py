"""The daemon's status, for ``stat`` to read: its status file (pid, last tick, problems),
written atomically each tick, and each slice's usage, period and ceiling at that tick
from the ledger's state file (state.read_state), which the daemon saves just before.

Read-only here. A missing or unreadable file means "no daemon state yet", never an error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from bwbpf import state
from bwbpf.errors import Error
from bwbpf.ledger import SliceRecord, slice_record
from bwbpf.limits import DCLASSES
from bwbpf.model import Config

VERSION = 1


def path_for(cfg: Config) -> str:
    return os.path.join(cfg.state_dir, f"{cfg.interface}.status.json")


@dataclass
class DaemonStatus:
    pid: int
    last_tick: float
    tick_s: int
    policy: str
    problems: list[str] = field(default_factory=list)
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Bytes the device sent while bwbpf's classifier was found missing, since the daemon
    # started: traffic no slice was charged for (node.Watch).
    uncounted_bytes: int = 0

    @property
    def running(self) -> bool:
        # /proc, not psutil: stat should not pay for importing psutil (~5 ms of its run).
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return b"bwbpf" in f.read()
        except OSError:
            return False  # gone, or not ours to see (a zombie's cmdline is empty)

    def summary(self, running: bool | None = None) -> dict[str, Any]:
        """What ``stat`` shows of the daemon; ``running`` as the caller knows it (the
        daemon itself), else as /proc says."""
        return {
            "pid": self.pid,
            "running": self.running if running is None else running,
            "last_tick": self.last_tick,
            "tick_s": self.tick_s,
            "policy": self.policy,
            "problems": self.problems,
            "uncounted_bytes": self.uncounted_bytes,
        }


def read(cfg: Config, names: Collection[str] | None = None) -> DaemonStatus | None:
    """The daemon's last tick, its slices (the configured ones the ledger holds, or those of
    them in ``names``) included."""
    saved = None
    for _ in range(5):
        doc = _read_doc(cfg)
        if doc is None:
            return None
        saved = state.read_raw(state.state_file(cfg.state_dir, cfg.interface), cfg.interface, names)
        # The ledger is saved a moment before the status file: a ledger newer than the
        # status is the next tick's, whose status is about to follow.
        if saved is None or saved[1] is None or saved[1] <= doc.last_tick:
            break
        time.sleep(0.02)
    if saved is not None:
        doc.slices = slices(cfg, saved[0], names)
    return doc


def slices(
    cfg: Config, saved: dict[str, Any], names: Collection[str] | None = None
) -> dict[str, dict[str, Any]]:
    """What stat shows of each configured slice the ledger holds (or of those in ``names``),
    from the saved slices (state.read_raw); an entry of the wrong shape is left out, as if
    not yet saved."""
    out: dict[str, dict[str, Any]] = {}
    for s in cfg.all_slices():
        if (names and s.name not in names) or s.name not in saved:
            continue
        try:
            view = slice_view(slice_record(s.name, saved[s.name]))
        except ValueError:
            continue
        if view is not None:
            out[s.name] = view
    return out


def slice_view(record: SliceRecord) -> dict[str, Any] | None:
    """What stat shows of a ledger record (report.slice_entry reads it); None for a dead
    slice. The daemon's answer (statserver) and the files' (``slices``) both make it here."""
    if not record.live:
        return None
    return {
        "period_start": record.period_start,
        "period_end": record.period_end,
        "notified": record.notified,
        "classes": {
            name: {
                "bytes": c.used_bytes,
                "counter_bytes": 0 if c.last is None else c.last[0],
                "capped": c.capped,
                "ceil_bps": c.ceil_bps,
            }
            for name, c in zip(DCLASSES, record.classes, strict=True)
        },
    }


def _read_doc(cfg: Config) -> DaemonStatus | None:
    try:
        with open(path_for(cfg)) as f:
            doc = json.load(f)
        if doc.get("version") != VERSION or doc.get("interface") != cfg.interface:
            return None
        return DaemonStatus(
            pid=int(doc["pid"]),
            last_tick=float(doc["last_tick"]),
            tick_s=int(doc["tick_s"]),
            policy=str(doc["policy"]),
            problems=list(doc.get("problems", [])),
            uncounted_bytes=int(doc.get("uncounted_bytes", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(
    cfg: Config,
    *,
    pid: int,
    last_tick: float,
    problems: list[str],
    uncounted_bytes: int = 0,
) -> None:
    """Publish the daemon's last tick for ``stat``, atomically (readers never see half).

    Raises ``bwbpf.Error`` with one line if it cannot.
    """
    # One atomic writer for every file the daemon keeps (temp file, fsync, rename).
    from bwbpf.state import write_atomic

    doc = {
        "version": VERSION,
        "pid": pid,
        "interface": cfg.interface,
        "last_tick": last_tick,
        "tick_s": cfg.tick_s,
        "policy": cfg.policy,
        "problems": problems,
        "uncounted_bytes": uncounted_bytes,
    }
    path = path_for(cfg)
    try:
        # Compact for speed, as the state file (state.save_state).
        text = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
        write_atomic(path, text.encode())
    except OSError as exc:
        raise Error(f"cannot write status file {path}: {exc.strerror or exc}") from exc
