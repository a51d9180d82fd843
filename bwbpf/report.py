"""What ``bwbpf stat`` shows: the contract document (docs/conventions.md, rule 4), and its table.

Sources, freshest first: the pinned kernel counters (live), the daemon's status file (the
period, the usage up to its last tick, the ceilings it decided) and the installed HTB
classes (the ceiling actually in force). Without a daemon, ``bytes`` are the counters'
totals since the maps were created and the period fields are null. A running daemon
makes the same document itself from its last tick (bwbpf/statserver.py), ``document``
being the one place either is put together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bwbpf import classid, datapath, limits, periods, policy, status
from bwbpf.errors import Error
from bwbpf.model import ClassQuota, Config, Slice
from bwbpf.units import format_bytes, format_rate


def build(cfg: Config, names: list[str] | None = None, now: float | None = None) -> dict:
    """The document from the files and the kernel (what ``stat`` does without a daemon to
    ask, and for a few slices)."""
    now = time.time() if now is None else now
    wanted = set(names or ())
    slices = [s for s in cfg.all_slices() if not wanted or s.name in wanted]
    with datapath.Counters(cfg.pin_dir) as counters:
        live = counters.read(s.id for s in slices)
        errors = counters.errors()
    installed = _installed_ceilings(
        cfg.interface,
        {classid.slice_class(s.id, d) for s in slices for d in range(len(limits.DCLASSES))}
        if names
        else None,
    )
    daemon = status.read(cfg, names)
    return document(
        cfg,
        slices,
        live,
        daemon.slices if daemon else {},
        installed.get,
        daemon=daemon.summary() if daemon else None,
        errors=errors,
        attached=datapath.attached(cfg.interface),
        now=now,
    )


def document(
    cfg: Config,
    slices: Sequence[Slice],
    live: Mapping[int, tuple[datapath.Usage, datapath.Usage]],
    saved: Mapping[str, dict[str, Any]],
    ceiling: Callable[[int], int | None],
    *,
    daemon: dict[str, Any] | None,
    errors: Mapping[str, int],
    attached: bool,
    now: float,
) -> dict:
    """The ``stat --json`` document (pure): ``live`` counters by slice id, ``saved`` what
    the daemon recorded per slice at its last tick (``status.slices``' shape), ``ceiling``
    the ceiling in force of a class handle."""
    # The period a slice without daemon state would be in (for the average policy's
    # budget, which follows the period's length).
    unsaved = periods.current_period(cfg.period, now, None)
    entries = [
        slice_entry(cfg.policy, s, live[s.id], saved.get(s.name), ceiling, unsaved) for s in slices
    ]
    return {
        "interface": cfg.interface,
        "time": now,
        "daemon": daemon,
        "datapath_errors": dict(errors),
        "classifier_attached": attached,
        "slices": entries,
    }


def slice_entry(
    policy_name: str,
    s: Slice,
    live: tuple[datapath.Usage, datapath.Usage],
    st: dict[str, Any] | None,
    ceiling: Callable[[int], int | None],
    unsaved: tuple[float, float],
) -> dict[str, Any]:
    """One slice of the document (pure); ``unsaved`` is the period it is in when the
    daemon saved nothing of it."""
    start, end = (st["period_start"], st["period_end"]) if st else unsaved
    classes = {}
    for dclass, dname in enumerate(limits.DCLASSES):
        handle = classid.slice_class(s.id, dclass)
        classes[dname] = class_view(
            policy_name,
            s.quota(dclass),
            live[dclass],
            st["classes"][dname] if st is not None else None,
            (start, end),
            ceiling(handle),
            classid.format_handle(handle),
        )
    return {
        "name": s.name,
        "id": s.id,
        "period_start": st["period_start"] if st else None,
        "period_end": st["period_end"] if st else None,
        "capped": any(c["capped"] for c in classes.values()),
        # Whether this period's mail about the slice was sent (once a period, at its cap).
        "notified": bool(st.get("notified", False)) if st else False,
        "classes": classes,
    }


def class_view(
    policy_name: str,
    quota: ClassQuota,
    usage: datapath.Usage,
    saved: dict | None,
    period: tuple[float, float],
    ceil_bps: int | None,
    handle: str,
) -> dict:
    """One class of one slice as ``stat --json`` shows it (pure): the usage the daemon
    saved plus what the kernel counted since (``saved`` None: no daemon state, the
    counter's total), and the limit and threshold the policy works with."""
    if saved is not None:
        # The usage at the daemon's last tick plus what the kernel counted since.
        used = saved["bytes"] + max(0, usage.bytes - saved["counter_bytes"])
        capped = bool(saved["capped"])
    else:
        used, capped = usage.bytes, False
    limit = policy.byte_limit(quota, policy_name, *period)
    return {
        "bytes": used,
        "packets": usage.packets,
        "counter_bytes": usage.bytes,
        "limit_bytes": limit,
        "threshold_bytes": policy.threshold_bytes(quota, policy_name, *period),
        "percent_used": round(100 * used / limit, 2) if limit > 0 else 0.0,
        "ceil_bps": ceil_bps,
        "max_rate_bps": quota.max_rate_bps,
        "min_rate_bps": quota.min_rate_bps,
        "classid": handle,
        "capped": capped,
    }


def _installed_ceilings(ifname: str, handles: set[int] | None) -> dict[int, int]:
    from bwbpf.shaper import Shaper

    try:
        with Shaper(ifname) as shaper:
            return shaper.ceilings(handles)
    except Error:
        return {}


def _time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def render(doc: dict) -> str:
    """A table a person reads: one line per slice and class."""
    lines = []
    d = doc["daemon"]
    if d is None:
        lines.append(
            f"{doc['interface']}: no daemon state yet (start `bwbpf run`); bytes are"
            " the counters' totals since `bwbpf up` first ran"
        )
    else:
        alive = "running" if d["running"] else "NOT RUNNING (last tick shown)"
        lines.append(
            f"{doc['interface']}: daemon {alive}, pid {d['pid']}, last tick"
            f" {_time(d['last_tick'])}, policy {d['policy']}"
        )
        for problem in d.get("problems", []):
            lines.append(f"  PROBLEM: {problem}")
        if d.get("uncounted_bytes"):
            lines.append(
                f"  UNCOUNTED: {d['uncounted_bytes']} bytes left the device while the"
                " classifier was missing (charged to no slice)"
            )
    if not doc["classifier_attached"]:
        lines.append("  WARNING: the classifier is not attached (run `bwbpf up`)")
    head = (
        f"{'SLICE':<16} {'ID':>5} {'CLASS':<6} {'CLASSID':<8} {'USED':>10} {'LIMIT':>10}"
        f" {'%':>6} {'THRESH':>10} {'CEIL':>10} {'CAP':<3} PERIOD END"
    )
    lines.append(head)
    for s in doc["slices"]:
        for dname, c in s["classes"].items():
            ceil = format_rate(c["ceil_bps"]) if c["ceil_bps"] is not None else "-"
            lines.append(
                f"{s['name']:<16} {s['id']:>5} {dname:<6} {c['classid']:<8}"
                f" {format_bytes(c['bytes']):>10} {format_bytes(c['limit_bytes']):>10}"
                f" {c['percent_used']:>6.1f} {format_bytes(c['threshold_bytes']):>10}"
                f" {ceil:>10} {'yes' if c['capped'] else 'no':<3} {_time(s['period_end'])}"
            )
    errs = doc["datapath_errors"]
    lines.append("datapath errors: " + ", ".join(f"{k} {v}" for k, v in errs.items()))
    return "\n".join(lines)
