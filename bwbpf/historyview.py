"""The history as ``bwbpf history`` shows it: one document (pure data, the ``--json``
output and the node page's ``/api/history.json``), and its text and CSV renderings.

The document::

    {"interface": "eth0", "resolution": "days", "timezone": "UTC",
     "since": "2026-11-03T00:00:00+00:00", "since_epoch": 1793664000,
     "until": ..., "until_epoch": ...,
     "slices": [{"name": "alice", "rows": [ROW, ...], "total": TOTALS,
                 "period": PERIOD or null}, ...],
     "top": [{"rank": 1, "name": "alice", **TOTALS}, ...] or null}

ROW is TOTALS plus ``start``, ``start_epoch``, ``end``, ``end_epoch`` (the bucket, or for
``periods`` the quota period). TOTALS: ``normal_bytes``, ``exempt_bytes``, ``total_bytes``,
``normal_packets``, ``exempt_packets``, ``packets``. PERIOD is the slice's current quota
period as the history holds it, with the configured limit and threshold of each class:
``{"start", "end", "start_epoch", "end_epoch", "normal": {"bytes", "limit_bytes",
"threshold_bytes"}, "exempt": {...}}`` (null for a slice no longer configured).
Times are ISO 8601 in the history's time zone.

The node page's document also has ``"node": {"rows": [ROW, ...], "total": TOTALS}``: the
sums over every slice, a row for every bucket of the range, traffic or not (null for
``periods``); its ``slices`` then hold only the slices it asked for, or the top N.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bwbpf import history, policy
from bwbpf.errors import Error
from bwbpf.history import DAY, FIVE_MIN, HOUR, MONTH, YEAR, Store
from bwbpf.limits import DCLASSES
from bwbpf.model import Config
from bwbpf.units import format_bytes

PERIODS = "periods"  # the resolution of quota periods (the period table)
CHOICES = (*history.RESOLUTIONS, PERIODS)
FIELDS = (
    "normal_bytes",
    "exempt_bytes",
    "total_bytes",
    "normal_packets",
    "exempt_packets",
    "packets",
)
CSV_FIELDS = ("slice", "start", "start_epoch", "end", "end_epoch", *FIELDS)
# What a resolution shows when --since is not given: vnStat's defaults (24 5-minute rows,
# 24 hours, 30 days, 12 months, every year), and the periods of the last 30 days.
_DEFAULT_BUCKETS = {FIVE_MIN: 24, HOUR: 24, DAY: 30, MONTH: 12}
_LABELS = {
    FIVE_MIN: "%Y-%m-%d %H:%M",
    HOUR: "%Y-%m-%d %H:00",
    DAY: "%Y-%m-%d",
    MONTH: "%Y-%m",
    YEAR: "%Y",
}
_HEADINGS = {FIVE_MIN: "time", HOUR: "hour", DAY: "day", MONTH: "month", YEAR: "year"}
# The node's rows cover every bucket of the range: at most this many (a year of hours).
MAX_NODE_ROWS = 10_000
# Each resolution's shortest bucket (a day or a month may lose an hour to summer time),
# for an upper bound of the buckets in a range.
_SHORTEST_S = {
    FIVE_MIN: 300,
    HOUR: 3600,
    DAY: 23 * 3600,
    MONTH: 28 * 86400 - 3600,
    YEAR: 365 * 86400 - 3600,
}
_AGO = re.compile(r"(\d+)\s*(m|min|h|d|w)")
_AGO_S = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, tz: ZoneInfo, now: float, option: str) -> float:
    """``2026-12-01``, ``2026-12-01 13:00`` or ``2026-12-01T13:00`` (in the history's time
    zone unless it carries an offset), or an age: ``90m``, ``6h``, ``7d``, ``2w`` before now."""
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago:
        return now - int(ago.group(1)) * _AGO_S[ago.group(2)]
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise Error(
            f"{option} {text!r}: not a time (2026-12-01, '2026-12-01 13:00', or an age: 6h, 7d)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    return t.timestamp()


def resolution(name: str) -> int | str:
    """The index of a history resolution, or PERIODS."""
    return PERIODS if name == PERIODS else history.RESOLUTIONS.index(name)


def document(
    store: Store,
    cfg: Config,
    res_name: str,
    *,
    now: float,
    since: float | None = None,
    until: float | None = None,
    names: Sequence[str] | None = (),
    top: int | None = None,
    node: bool = False,
) -> dict[str, Any]:
    """The history of ``names`` (every slice the history knows when empty, none when None)
    over ``[since, until)``; ``top`` keeps the N slices that sent the most, largest first.
    With ``node``, the document also holds the node's totals (``"node"``): every bucket
    of the range, summed over all slices by the database, whichever slices are shown."""
    tz = ZoneInfo(cfg.history.timezone)
    res = resolution(res_name)
    until = now if until is None else until
    if since is None:
        since = _default_since(res, until, tz)
    if since >= until:
        raise Error(f"--since ({_iso(since, tz)}) must be before --until ({_iso(until, tz)})")
    node_doc = _node(store, res, since, until, tz) if node else None
    if top is not None and not names and names is not None:
        # The ranking is the database's: only the winners' rows are read, not every
        # slice's (10,000 of them on a large node).
        if res == PERIODS:
            names = store.top_period_names(since, until, top)
        else:
            assert isinstance(res, int)
            first = history.bucket_starts(since, tz)[res]
            names = store.top_names(res, first, until, top)
        if not names:
            names = None  # nobody sent anything: no slice, rather than every slice
    by_name: dict[str, dict[int, dict[str, Any]]] = {}
    if names is None:
        pass
    elif res == PERIODS:
        for p in store.periods(since, until, names):
            row = by_name.setdefault(p.name, {}).setdefault(
                int(p.start * 1000), _row(p.start, p.end, tz)
            )
            _add(row, p.dclass, p.bytes, p.packets)
    else:
        assert isinstance(res, int)
        first = history.bucket_starts(since, tz)[res]
        for u in store.usage(res, first, until, names):
            row = by_name.setdefault(u.name, {}).get(u.start)
            if row is None:
                row = by_name[u.name][u.start] = _row(
                    u.start, history.next_start(res, u.start, tz), tz
                )
            _add(row, u.dclass, u.bytes, u.packets)
    configured = {s.name: s for s in cfg.all_slices()}
    current = store.latest_periods(by_name) if by_name else {}
    slices = []
    for name in sorted(by_name):
        rows = [by_name[name][k] for k in sorted(by_name[name])]
        total = {f: sum(r[f] for r in rows) for f in FIELDS}
        slices.append(
            {
                "name": name,
                "rows": rows,
                "total": total,
                "period": _period(cfg, configured.get(name), current, name, tz),
            }
        )
    ranked = None
    if top is not None:
        slices.sort(key=lambda s: (-s["total"]["total_bytes"], s["name"]))
        slices = slices[:top]
        ranked = [{"rank": n, "name": s["name"], **s["total"]} for n, s in enumerate(slices, 1)]
    doc: dict[str, Any] = {
        "interface": cfg.interface,
        "resolution": res_name,
        "timezone": cfg.history.timezone,
        "since": _iso(since, tz),
        "since_epoch": since,
        "until": _iso(until, tz),
        "until_epoch": until,
        "slices": slices,
        "top": ranked,
    }
    if node:
        doc["node"] = node_doc
    return doc


def _node(
    store: Store, res: int | str, since: float, until: float, tz: ZoneInfo
) -> dict[str, Any] | None:
    """The node's rows, one for every bucket of ``[since, until)`` (those without traffic
    too, so that a chart has every bar), and their total; None for ``periods``, which
    each slice has of its own."""
    if res == PERIODS:
        return None
    assert isinstance(res, int)
    first = history.bucket_starts(since, tz)[res]
    most = int((until - first) // _SHORTEST_S[res]) + 1
    if most > MAX_NODE_ROWS:
        raise Error(
            f"since {_iso(since, tz)}: up to {most:,} {history.RESOLUTIONS[res]} rows"
            f" until {_iso(until, tz)}, more than {MAX_NODE_ROWS:,}"
        )
    rows = {
        start: _row(start, history.next_start(res, start, tz), tz)
        for start in history.iter_starts(res, first, until, tz)
    }
    for start, dclass, nbytes, packets in store.totals(res, first, until):
        row = rows.get(start)
        if row is not None:
            _add(row, dclass, nbytes, packets)
    listed = list(rows.values())
    return {"rows": listed, "total": {f: sum(r[f] for r in listed) for f in FIELDS}}


def _default_since(res: int | str, until: float, tz: ZoneInfo) -> float:
    if res == PERIODS:
        return until - 30 * 86400
    assert isinstance(res, int)
    if res == YEAR:
        return 0.0
    start = history.bucket_starts(until, tz)[res]
    for _ in range(_DEFAULT_BUCKETS[res] - 1):
        start = history.bucket_starts(start - 1, tz)[res]
    return float(start)


def _row(start: float, end: float, tz: ZoneInfo) -> dict[str, Any]:
    row: dict[str, Any] = {
        "start": _iso(start, tz),
        "start_epoch": start,
        "end": _iso(end, tz),
        "end_epoch": end,
    }
    row.update(dict.fromkeys(FIELDS, 0))
    return row


def _add(row: dict[str, Any], dclass: int, nbytes: int, packets: int) -> None:
    name = DCLASSES[dclass]
    row[f"{name}_bytes"] += nbytes
    row[f"{name}_packets"] += packets
    row["total_bytes"] += nbytes
    row["packets"] += packets


def _period(
    cfg: Config,
    s: Any,
    current: dict[tuple[str, int], history.PeriodRow],
    name: str,
    tz: ZoneInfo,
) -> dict[str, Any] | None:
    rows = [current.get((name, d)) for d in range(len(DCLASSES))]
    known = [r for r in rows if r is not None]
    if s is None or not known:
        return None
    start, end = known[0].start, known[0].end
    doc: dict[str, Any] = {
        "start": _iso(start, tz),
        "end": _iso(end, tz),
        "start_epoch": start,
        "end_epoch": end,
    }
    for d, dname in enumerate(DCLASSES):
        quota = s.quota(d)
        r = rows[d]
        doc[dname] = {
            "bytes": r.bytes if r is not None and r.start == start else 0,
            "limit_bytes": policy.byte_limit(quota, cfg.policy, start, end),
            "threshold_bytes": policy.threshold_bytes(quota, cfg.policy, start, end),
        }
    return doc


def _iso(t: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# -- renderings ---------------------------------------------------------------------------


def render_text(doc: dict[str, Any]) -> str:
    """Tables like ``vnstat -d``: one per slice (or one of the top slices), with totals."""
    tz = ZoneInfo(doc["timezone"])
    res = resolution(doc["resolution"])
    head = (
        f"{doc['interface']}: {doc['resolution']} from {doc['since'][:16]} to"
        f" {doc['until'][:16]} ({doc['timezone']})"
    )
    if not doc["slices"]:
        return f"{head}\n  no traffic recorded"
    out = [head]
    if doc["top"] is not None:
        out.append("")
        out.append(_line("  #", "slice", ("normal", "exempt", "total", "packets"), 24))
        for t in doc["top"]:
            out.append(_line(f"{t['rank']:>3}", t["name"], _cells(t), 24))
        return "\n".join(out)
    label = _HEADINGS.get(res, "period") if isinstance(res, int) else "period"
    for s in doc["slices"]:
        out.append("")
        out.append(f" {s['name']}")
        width = 33 if res == PERIODS else 16
        out.append(_line("", label, ("normal", "exempt", "total", "packets"), width))
        for r in s["rows"]:
            out.append(_line("", _label(r, res, tz), _cells(r), width))
        out.append(_line("", "-" * width, ("-" * 10,) * 4, width))
        out.append(_line("", "total", _cells(s["total"]), width))
    return "\n".join(out)


def _label(row: dict[str, Any], res: int | str, tz: ZoneInfo) -> str:
    if isinstance(res, int):
        return datetime.fromtimestamp(row["start_epoch"], tz).strftime(_LABELS[res])
    start = datetime.fromtimestamp(row["start_epoch"], tz).strftime("%Y-%m-%d %H:%M")
    end = datetime.fromtimestamp(row["end_epoch"], tz).strftime("%Y-%m-%d %H:%M")
    return f"{start} - {end}"


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        format_bytes(r["normal_bytes"]),
        format_bytes(r["exempt_bytes"]),
        format_bytes(r["total_bytes"]),
        str(r["packets"]),
    )


def _line(lead: str, first: str, cells: Sequence[str], width: int) -> str:
    return f"{lead} {first:<{width}}" + "".join(f" {c:>10}" for c in cells)


def render_csv(doc: dict[str, Any]) -> str:
    """One line per slice and row, CSV_FIELDS, with a header."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in doc["slices"]:
        for r in s["rows"]:
            w.writerow([s["name"], *(r[f] for f in CSV_FIELDS[1:])])
    return buf.getvalue()
