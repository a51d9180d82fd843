"""The TOML configuration, validated into the frozen types of bwbpf/model.py.

Validation collects every problem before failing, each as ``FILE: KEY: what is wrong``, so
that ``bwbpf check`` can list them all at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import ipaddress
import os
import re
import socket
import stat
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bwbpf import files, heap, limits, matchkinds
from bwbpf.errors import ConfigError, one_line
from bwbpf.model import (
    SLICE_NAME,
    ClassQuota,
    Config,
    History,
    Match,
    Metrics,
    Network,
    Notify,
    Period,
    Slice,
)
from bwbpf.units import (
    MAX_SIZE_BYTES,
    UnitError,
    parse_duration,
    parse_rate,
    parse_size,
)
from bwbpf.units import shown as _shown

T = TypeVar("T")
# An interface name as the kernel allows it (dev_valid_name: at most IFNAMSIZ - 1 = 15
# bytes, no '/', no whitespace) and narrower: it names files under node.state_dir and
# directories under node.bpffs, so no '..' either.
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
# Configured tick: at least a second (the ledger and the policy count whole seconds), at
# most a day.
MIN_TICK_S = 1
MAX_TICK_S = 86400
# Files the config reads (itself, exempt lists) must be regular files of at most this size;
# a FIFO, device or directory is refused before it is opened for reading.
MAX_FILE_BYTES = 16 * 2**20
MAX_EXEMPT_FILES = 64
# Problems listed per exempt file, and problems (and warnings) listed in all, before the
# rest are summed up in one "... and N more" line.
MAX_FILE_PROBLEMS = 5
MAX_PROBLEMS = 100
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PERIOD_KINDS = ("daily", "weekly", "monthly")


_NODE_KEYS = {"interface", "line_rate", "node_cap", "tick", "state_dir", "bpffs"}
_QUOTA_KEYS = {"policy", "period", "at", "weekday", "day", "timezone"}
_CLASS_KEYS = {"limit", "threshold", "min_rate", "max_rate", "avg_rate"}
_DEFAULTS_KEYS = {"share", "normal", "exempt"}
_SLICE_KEYS = {"name", "id", "match", "share", "normal", "exempt"}
_MATCH_KEYS = {kind.key for kind in matchkinds.KINDS}
_MATCH_NAMES = ", ".join(k.key for k in matchkinds.KINDS[:-1]) + f" or {matchkinds.KINDS[-1].key}"
_EXEMPT_KEYS = {"prefixes", "files"}
_NOTIFY_KEYS = {
    "smtp",
    "starttls",
    "username",
    "password",
    "sendmail",
    "from",
    "operator",
    "slice_address",
}
_METRICS_KEYS = {"listen", "textfile", "textfile_interval"}
# Retention keys of [history] (vnStat's names), in history.RESOLUTIONS order, with their
# largest values (a century of each).
_HISTORY_KEEP = {
    "fiveminute_hours": 876_000,
    "hourly_days": 36_500,
    "daily_days": 36_500,
    "monthly_months": 1_200,
    "yearly_years": 100,
}
_HISTORY_KEYS = {"enabled", "file", "write_interval", "timezone", *_HISTORY_KEEP}
_TOP_KEYS = {
    "node",
    "quota",
    "defaults",
    "exempt",
    "notify",
    "metrics",
    "history",
    "slice",
    "default_slice",
}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9877"

# The reference bwmon's defaults: 5.4 GB/day normal, 16.4 GB/day exempt, 80 % thresholds.
_BUILTIN_CLASS = {
    "normal": {"limit": "5.4GB", "threshold": 0.8, "min_rate": "8bit", "avg_rate": "500kbit"},
    "exempt": {"limit": "16.4GB", "threshold": 0.8, "min_rate": "8bit", "avg_rate": "1.5mbit"},
}
_PORT = re.compile(r"[0-9]{1,5}")
# What a prefix can be made of: anything else is refused without asking ipaddress, which
# keeps a file of a million lines of garbage fast.
_PREFIX_CHARS = re.compile(
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)(?:/[0-9]{1,3})?"
)
# The longest period of each calendar kind (with an hour for a DST change).
_CALENDAR_SECONDS = {"daily": 25 * 3600, "weekly": 7 * 86400 + 3600, "monthly": 31 * 86400 + 3600}


class FileProblem(Exception):
    """Why a file the config names cannot be used (one line, without the path)."""


def read_text_file(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file's text, or FileProblem. The file is stat'ed before it is opened, and
    opened non-blocking, so a FIFO or a device never blocks the caller; at most ``limit``
    bytes are read; the text must be UTF-8."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror}") from None
    except ValueError as exc:  # an embedded NUL
        raise FileProblem(f"cannot read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(f"is {files.kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise FileProblem(f"is {st.st_size} bytes; at most {limit} are read")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file opened may not be the one stat'ed
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(f"is {files.kind(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(2**20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem(f"is more than {limit} bytes; at most {limit} are read")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"not UTF-8 text (at byte {exc.start})") from None


class _Checker:
    """Collects problems, each prefixed with the file and the dotted key."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # Beyond MAX_PROBLEMS only a hash of each message is kept, to count the rest once.
        self._more: dict[str, set[int]] = {"problems": set(), "warnings": set()}
        self._seen: set[str] = set()
        # The files read besides the config itself (exempt files).
        self.sources: list[str] = []
        # Equal immutable values, made once (shared).
        self._shared: dict[Any, Any] = {}

    def shared(self, value: T) -> T:
        """``value``, or an equal one made before: 10,000 slices inheriting [defaults] then
        hold two ClassQuota objects, not 20,000 with 100,000 ints (~5 MB of the daemon's
        resident memory)."""
        return self._shared.setdefault(value, value)

    def _add(self, kind: str, text: str) -> None:
        listed: list[str] = getattr(self, kind)
        if text in self._seen:
            return
        if len(listed) < MAX_PROBLEMS:
            listed.append(text)
            self._seen.add(text)
        else:
            self._more[kind].add(hash(text))

    def fail(self, key: str, message: str) -> None:
        self._add("problems", f"{self.path}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self._add("warnings", f"{self.path}: {key}: {message}")

    def listed(self, kind: str) -> list[str]:
        """Every problem (or warning) to show, the ones beyond MAX_PROBLEMS as one line."""
        more = len(self._more[kind])
        listed: list[str] = getattr(self, kind)
        return listed + ([f"{self.path}: ... and {more} more {kind}"] if more else [])

    def table(self, value: object, key: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a table, not {type(value).__name__}")
            return {}
        for unknown in sorted(set(value) - allowed):
            self.fail(f"{key}.{unknown}" if key else unknown, "unknown key")
        return value

    def convert(self, key: str, value: object, parse: Callable[[object], T]) -> T | None:
        try:
            return parse(value)
        except (UnitError, ValueError, TypeError) as exc:
            self.fail(key, str(exc))
            return None

    def integer(self, key: str, value: object, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, not {_shown(value)}")
            return None
        if not lo <= value <= hi:
            self.fail(key, f"{_shown(value)} is outside {lo}..{hi}")
            return None
        return value

    def string(self, key: str, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, not {_shown(value)}")
            return None
        if "\0" in value:
            self.fail(key, f"must not contain a NUL character: {_shown(value)}")
            return None
        return value

    def abspath(self, key: str, value: object, what: str = "an absolute path") -> str | None:
        """An absolute path (normalised), or None with the problem reported."""
        text = self.string(key, value)
        if text is None:
            return None
        if not os.path.isabs(text):
            self.fail(key, f"must be {what}, not {_shown(text)}")
            return None
        return os.path.normpath(text)

    def output_path(self, key: str, value: object) -> str | None:
        """An absolute path bwbpf will replace with a file of its own: none yet, a regular
        file, or a symbolic link (replaced, its target left alone). Anything else there (a
        device such as /dev/null, a FIFO, a directory) is refused: renaming over it would
        put a file in place of the node, and a database "set aside" would move the node."""
        path = self.abspath(key, value)
        if path is None:
            return None
        node = files.foreign_node(path)
        if node is not None:
            self.fail(key, f"{path} is {node}, not a file bwbpf can own")
            return None
        return path

    def prefix(self, key: str, value: object) -> Network | None:
        return self.convert(key, value, _network)


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _network(text: object) -> Network:
    if not isinstance(text, str):
        raise ValueError(f"{_shown(text)} is not a prefix string")
    stripped = text.strip()
    if len(stripped) > 64 or not _PREFIX_CHARS.fullmatch(stripped):
        # What ipaddress would say, without the cost of asking it.
        raise ValueError(
            f"invalid prefix {_shown(text)}: {_shown(stripped)} does not appear to be"
            " an IPv4 or IPv6 network"
        )
    try:
        return ipaddress.ip_network(stripped, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid prefix {text!r}: {exc}") from None


def _class_quota(
    c: _Checker,
    key: str,
    merged: dict[str, Any],
    max_rate_default: int,
    origin: dict[str, str] | None = None,
    period_s: int = 86400,
) -> ClassQuota | None:
    """Validate one class's merged settings; a value inherited from [defaults] is reported
    under its own key there (once), not under every slice that inherits it."""
    origin = origin or {}

    def where(k: str) -> str:
        return f"{origin.get(k, key)}.{k}"

    limit = c.convert(where("limit"), merged["limit"], parse_size)
    min_rate = c.convert(where("min_rate"), merged["min_rate"], parse_rate)
    avg_rate = c.convert(where("avg_rate"), merged["avg_rate"], parse_rate)
    max_rate = (
        c.convert(where("max_rate"), merged["max_rate"], parse_rate)
        if "max_rate" in merged
        else max_rate_default
    )
    threshold_value = merged["threshold"]
    threshold: int | None = None
    if isinstance(threshold_value, float | int) and not isinstance(threshold_value, bool):
        if not 0 < threshold_value <= 1:
            c.fail(where("threshold"), f"a fraction must be in (0, 1], not {threshold_value}")
        elif limit is not None:
            threshold = int(limit * threshold_value)
    else:
        threshold = c.convert(where("threshold"), threshold_value, parse_size)
    if None in (limit, min_rate, avg_rate, max_rate, threshold):
        return None
    assert limit is not None and min_rate is not None and avg_rate is not None
    assert max_rate is not None and threshold is not None
    ok = True
    if limit <= 0:
        c.fail(f"{key}.limit", "must be above 0")
        ok = False
    if threshold > limit:
        c.fail(f"{key}.threshold", f"{threshold} bytes is above the limit of {limit} bytes")
        ok = False
    if min_rate < 8:
        c.fail(f"{key}.min_rate", "must be at least 8bit (HTB's smallest rate is 1 byte/s)")
        ok = False
    if max_rate < 8:
        c.fail(f"{key}.max_rate", "must be at least 8bit")
        ok = False
    if min_rate > max_rate:
        c.fail(f"{key}.min_rate", f"{min_rate} bit/s is above max_rate {max_rate} bit/s")
        ok = False
    if avg_rate <= 0:
        c.fail(f"{key}.avg_rate", "must be above 0")
        ok = False
    elif avg_rate * period_s // 8 > MAX_SIZE_BYTES:
        # The average policy's budget, avg_rate × period / 8, is a size like any other.
        c.fail(
            where("avg_rate"),
            f"{avg_rate} bit/s over a {period_s} s period is more than {MAX_SIZE_BYTES} bytes",
        )
        ok = False
    if not ok:
        return None
    return ClassQuota(limit, threshold, min_rate, max_rate, avg_rate)


def _timezone(c: _Checker, key: str, tz: object) -> str:
    """A time zone name zoneinfo knows; UTC after a problem (reported)."""
    if not isinstance(tz, str):
        c.fail(key, f"must be a string, not {_shown(tz)}")
        return "UTC"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except Exception:
        c.fail(key, f"unknown time zone {_shown(tz)}")
        return "UTC"
    return tz


def _period(c: _Checker, quota: dict[str, Any]) -> Period:
    text = quota.get("period", "1d")
    tz = _timezone(c, "quota.timezone", quota.get("timezone", "UTC"))
    at_minutes = 0
    at = quota.get("at", "00:00")
    m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", at) if isinstance(at, str) else None
    if m is None:
        c.fail("quota.at", f"must be HH:MM, not {_shown(at)}")
    else:
        at_minutes = int(m.group(1)) * 60 + int(m.group(2))
    if text in PERIOD_KINDS:
        weekday = quota.get("weekday", "mon")
        if weekday not in WEEKDAYS:
            c.fail("quota.weekday", f"must be one of {', '.join(WEEKDAYS)}, not {_shown(weekday)}")
            weekday = "mon"
        day = c.integer("quota.day", quota.get("day", 1), 1, 28) or 1
        return Period(text, 0, at_minutes, WEEKDAYS.index(weekday), day, tz)
    for key in ("weekday", "day"):
        if key in quota:
            c.fail(f"quota.{key}", "only applies to a weekly or monthly period")
    seconds = c.convert("quota.period", text, parse_duration)
    if seconds is not None and seconds < 1:
        c.fail("quota.period", "must be at least 1s")
        seconds = None
    return Period("rolling", seconds or 86400, at_minutes, 0, 1, tz)


def _notify(c: _Checker, raw: object) -> Notify | None:
    if raw is None:
        return None
    n = c.table(raw, "notify", _NOTIFY_KEYS)
    host: str | None = None
    port = 25
    if "smtp" in n and "sendmail" in n:
        c.fail("notify", "set smtp or sendmail, not both")
    if "smtp" in n:
        smtp = c.string("notify.smtp", n["smtp"]) or ""
        host, _, port_text = smtp.rpartition(":") if ":" in smtp else (smtp, "", "25")
        if len(host) > 253 or not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            c.fail("notify.smtp", f"must be HOST or HOST:PORT, not {_shown(smtp)}")
        else:
            port = int(port_text)
    sendmail = c.string("notify.sendmail", n["sendmail"]) if "sendmail" in n else None
    if host is None and sendmail is None:
        sendmail = "/usr/sbin/sendmail"
    # The same test the mail is put through: what check accepts, notify can send.
    from bwbpf.notify import ADDRESS

    def address(text: object) -> bool:
        return isinstance(text, str) and len(text) <= 254 and bool(ADDRESS.fullmatch(text))

    for key in ("from", "operator"):
        if key in n and not address(n[key]):
            c.fail(f"notify.{key}", f"is not a mail address: {_shown(n[key])}")
    slice_address = n.get("slice_address", "{slice}@localhost")
    if not isinstance(slice_address, str) or not address(slice_address.replace("{slice}", "x")):
        c.fail(
            "notify.slice_address",
            f"must be an address with {{slice}}, not {_shown(slice_address)}",
        )
        slice_address = "{slice}@localhost"
    for key in ("starttls",):
        if key in n and not isinstance(n[key], bool):
            c.fail(f"notify.{key}", "must be true or false")
    for key in ("username", "password"):
        if key in n:
            c.string(f"notify.{key}", n[key])
    return Notify(
        smtp_host=host or None,
        smtp_port=port,
        starttls=bool(n.get("starttls", False)),
        username=n.get("username"),
        password=n.get("password"),
        sendmail=sendmail,
        sender=n.get("from", "bwbpf@localhost"),
        operator=n.get("operator"),
        slice_address=slice_address,
    )


def _metrics(c: _Checker, raw: object) -> Metrics | None:
    if raw is None:
        return None
    m = c.table(raw, "metrics", _METRICS_KEYS)
    listen = m.get("listen", DEFAULT_METRICS_LISTEN)
    host: str | None = None
    port = 0
    if not isinstance(listen, str):
        c.fail("metrics.listen", f'must be HOST:PORT or "" (not served), not {_shown(listen)}')
    elif listen:
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            c.fail("metrics.listen", f"must be HOST:PORT, not {_shown(listen)}")
            host = None
        else:
            port = int(port_text)
    textfile = m.get("textfile")
    if textfile is not None:
        textfile = c.output_path("metrics.textfile", textfile)
    interval = c.convert(
        "metrics.textfile_interval", m.get("textfile_interval", "60s"), parse_duration
    )
    if interval is not None and not 1 <= interval <= MAX_TICK_S:
        c.fail("metrics.textfile_interval", f"must be at least 1s and at most {MAX_TICK_S}s")
        interval = None
    return Metrics(host, port, textfile, 60 if interval is None else interval)


def _history(c: _Checker, raw: object, quota_tz: str) -> History:
    h = c.table(raw, "history", _HISTORY_KEYS)
    enabled = h.get("enabled", True)
    if not isinstance(enabled, bool):
        c.fail("history.enabled", f"must be true or false, not {_shown(enabled)}")
        enabled = True
    file = h.get("file")
    if file is not None:
        file = c.output_path("history.file", file)
    interval = c.convert("history.write_interval", h.get("write_interval", "5m"), parse_duration)
    if interval is not None and not 1 <= interval <= 300:
        c.fail("history.write_interval", "must be at least 1s and at most 5m")
        interval = None
    keep = {}
    defaults = History()
    for key, most in _HISTORY_KEEP.items():
        checked = c.integer(f"history.{key}", h.get(key, getattr(defaults, key)), -1, most)
        keep[key] = getattr(defaults, key) if checked is None else checked
    tz = _timezone(c, "history.timezone", h.get("timezone", quota_tz))
    return History(enabled, file, interval or 300, timezone=tz, **keep)


def _match(c: _Checker, key: str, raw: object) -> Match:
    m = c.table(raw, key, _MATCH_KEYS)
    values: dict[str, tuple[Any, ...]] = {}
    for kind in matchkinds.KINDS:
        checked = (kind.check(c, f"{key}.{kind.key}", v) for v in _as_list(m.get(kind.key)))
        values[kind.match_field] = tuple(v for v in checked if v is not None)
    return Match(**values)


def _merged_class(defaults: dict[str, Any], override: dict[str, Any], dclass: str) -> dict:
    merged = dict(_BUILTIN_CLASS[dclass])
    merged.update(defaults.get(dclass) or {})
    merged.update(override)
    return merged


def _exempt(c: _Checker, raw: object, base: Path) -> list[Network]:
    e = c.table(raw, "exempt", _EXEMPT_KEYS)
    prefixes: list[Network] = []
    seen: dict[Network, str] = {}
    counts = {4: 0, 6: 0}

    def add(text: object, where: str) -> str | None:
        """Add one prefix; the problem with it, if any (with its key, but not the file)."""
        try:
            net = _network(text)
        except ValueError as exc:
            return f"{where}: {exc}"
        if net in seen:
            return f"{where}: duplicate prefix {net} (also {seen[net]})"
        counts[net.version] += 1
        if counts[net.version] > limits.MAX_PREFIXES:
            return None  # refused below, as one problem; no need to keep a million
        seen[net] = where
        prefixes.append(net)
        return None

    def report(problem: str) -> None:
        key, _, message = problem.partition(": ")
        c.fail(key, message)

    for i, text in enumerate(_as_list(e.get("prefixes"))):
        problem = add(text, f"exempt.prefixes[{i}]")
        if problem:
            report(problem)
    files = _as_list(e.get("files"))
    if len(files) > MAX_EXEMPT_FILES:
        c.fail("exempt.files", f"{len(files)} files; at most {MAX_EXEMPT_FILES}")
        files = files[:MAX_EXEMPT_FILES]
    for i, name in enumerate(files):
        name = c.string(f"exempt.files[{i}]", name)
        if name is None:
            continue
        path = base / name
        shown = str(path) if len(str(path)) <= 200 else str(path)[:197] + "..."
        try:
            text = read_text_file(str(path))
        except FileProblem as exc:
            c.fail(f"exempt.files[{i}]", f"{shown}: {exc}")
            continue
        c.sources.append(str(path))
        # The first few problems of a file are listed, the rest counted in one line.
        more = 0
        for lineno, line in enumerate(io.StringIO(text), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            problem = add(entry, f"exempt.files[{i}] ({shown}:{lineno})")
            if problem is None:
                continue
            if more < MAX_FILE_PROBLEMS:
                report(problem)
            more += 1
        if more > MAX_FILE_PROBLEMS:
            c.fail(
                f"exempt.files[{i}]",
                f"... and {more - MAX_FILE_PROBLEMS} more problems in {shown}",
            )
    for family in (4, 6):
        if counts[family] > limits.MAX_PREFIXES:
            c.fail(
                "exempt", f"{counts[family]} IPv{family} prefixes; at most {limits.MAX_PREFIXES}"
            )
    return prefixes


def _slice(
    c: _Checker,
    key: str,
    raw: dict[str, Any],
    defaults: dict[str, Any],
    max_rates: dict[str, int],
    name: str,
    slice_id: int,
    period_s: int,
) -> Slice | None:
    share_key = f"{key}.share" if "share" in raw else "defaults.share"
    share = c.integer(share_key, raw.get("share", defaults.get("share", 1)), 1, 10000)
    quotas: dict[str, ClassQuota | None] = {}
    for dclass in limits.DCLASSES:
        override = c.table(raw.get(dclass), f"{key}.{dclass}", _CLASS_KEYS)
        merged = _merged_class(defaults, override, dclass)
        inherited = set(defaults.get(dclass) or {}) - set(override)
        origin = {k: f"defaults.{dclass}" for k in inherited}
        quota = _class_quota(c, f"{key}.{dclass}", merged, max_rates[dclass], origin, period_s)
        quotas[dclass] = None if quota is None else c.shared(quota)
    match = _match(c, f"{key}.match", raw.get("match")) if "match" in raw else Match()
    normal, exempt = quotas["normal"], quotas["exempt"]
    if share is None or normal is None or exempt is None:
        return None
    return Slice(name, slice_id, match, share, normal, exempt)


def _check_node_caps(c: _Checker, s: Slice, key: str, node_cap: int, line_rate: int) -> Slice:
    """Clamp each min rate to 25 % of its parent's ceiling, as the reference did, with a
    warning: the sum of guarantees must not starve the node."""
    parents = {"normal": node_cap, "exempt": line_rate}
    changed = {}
    for dclass in limits.DCLASSES:
        q: ClassQuota = getattr(s, dclass)
        ceiling = parents[dclass] // 4
        if q.min_rate_bps > ceiling:
            c.warn(
                f"{key}.{dclass}.min_rate",
                f"{q.min_rate_bps} bit/s clamped to 25% of the parent's ceiling: {ceiling} bit/s",
            )
            changed[dclass] = c.shared(
                ClassQuota(
                    q.limit_bytes,
                    q.threshold_bytes,
                    ceiling,
                    max(q.max_rate_bps, ceiling),
                    q.avg_rate_bps,
                )
            )
        if q.max_rate_bps > parents[dclass]:
            c.fail(
                f"{key}.{dclass}.max_rate",
                f"{q.max_rate_bps} bit/s is above its parent's ceiling {parents[dclass]} bit/s",
            )
    if not changed:
        return s
    return Slice(
        s.name,
        s.id,
        s.match,
        s.share,
        changed.get("normal", s.normal),
        changed.get("exempt", s.exempt),
    )


def _node_rate(c: _Checker, key: str, value: object) -> int | None:
    """A node rate; 0 or anything below HTB's 1 byte/s is refused, never taken as unset."""
    rate = c.convert(key, value, parse_rate)
    if rate is not None and rate < 8:
        c.fail(key, "must be at least 8bit (HTB's smallest rate is 1 byte/s)")
        return None
    return rate


def text_digest(text: str) -> str:
    """``Config.digest`` of a config parsed from ``text``: whether two processes, or the
    cache and the file, hold the same text."""
    return hashlib.sha256(text.encode()).hexdigest()


def parse(
    text: str, path: str = "<config>", check_interface: bool = True, environment: bool = True
) -> Config:
    """Validate a config document; raise ConfigError with every problem found.

    Without ``environment`` only the text (and the exempt files it names) is checked, not
    the machine: whether the interface exists and which cgroups do (check_environment)."""
    c = _Checker(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: not valid TOML: nested too deeply"]) from None
    except MemoryError:
        raise
    except Exception as exc:  # e.g. ValueError: an integer of more than 4300 digits
        raise ConfigError([f"{path}: not valid TOML: {one_line(str(exc), 200)}"]) from None
    c.table(doc, "", _TOP_KEYS)
    node = c.table(doc.get("node"), "node", _NODE_KEYS)
    quota = c.table(doc.get("quota"), "quota", _QUOTA_KEYS)
    defaults = dict(c.table(doc.get("defaults"), "defaults", _DEFAULTS_KEYS))
    for dclass in limits.DCLASSES:
        # A [defaults] class that is not a table is reported once, then taken as empty.
        defaults[dclass] = c.table(defaults.get(dclass), f"defaults.{dclass}", _CLASS_KEYS)

    interface = c.string("node.interface", node.get("interface")) or ""
    if interface and (not INTERFACE_NAME.fullmatch(interface) or ".." in interface):
        c.fail(
            "node.interface",
            "must be an interface name: 1-15 letters, digits, '_', '-' or '.', not starting"
            f" with '.' or '-', without '..': {_shown(interface)}",
        )
        interface = ""
    elif interface and check_interface and environment:
        _interface_exists(c, interface)
    line_rate = _node_rate(c, "node.line_rate", node.get("line_rate", "1gbit"))
    node_cap = _node_rate(c, "node.node_cap", node.get("node_cap", "100mbit"))
    if line_rate and node_cap and node_cap > line_rate:
        c.fail("node.node_cap", f"{node_cap} bit/s is above line_rate {line_rate} bit/s")
    tick = c.convert("node.tick", node.get("tick", "10s"), parse_duration)
    if tick is not None and not MIN_TICK_S <= tick <= MAX_TICK_S:
        c.fail("node.tick", f"must be at least {MIN_TICK_S}s and at most {MAX_TICK_S}s")
        tick = None
    state_dir = c.abspath("node.state_dir", node.get("state_dir", "/var/lib/bwbpf")) or ""
    bpffs = c.abspath("node.bpffs", node.get("bpffs", "/sys/fs/bpf")) or ""

    policy = quota.get("policy", "smooth")
    if policy not in ("smooth", "average"):
        c.fail("quota.policy", f"must be 'smooth' or 'average', not {_shown(policy)}")
    period = _period(c, quota)
    period_s = _CALENDAR_SECONDS.get(period.kind, period.seconds)

    # After a bad value (already reported) go on with the default, not with cascades of it.
    line_rate = line_rate or 10**9
    node_cap = node_cap or min(10**8, line_rate)
    tick = tick or 10
    max_rates = {"normal": node_cap, "exempt": line_rate}
    base = Path(path).parent
    exempt = _exempt(c, doc.get("exempt"), base)
    default_raw = c.table(
        doc.get("default_slice"), "default_slice", _SLICE_KEYS - {"id", "name", "match"}
    )
    default_slice = _slice(
        c,
        "default_slice",
        default_raw,
        defaults,
        max_rates,
        limits.DEFAULT_SLICE_NAME,
        limits.DEFAULT_SLICE_ID,
        period_s,
    )
    if default_slice is not None:
        default_slice = _check_node_caps(c, default_slice, "default_slice", node_cap, line_rate)

    raw_slices = doc.get("slice", [])
    if not isinstance(raw_slices, list):
        c.fail("slice", "must be an array of tables: [[slice]]")
        raw_slices = []
    if len(raw_slices) > limits.MAX_SLICES:
        c.fail("slice", f"{len(raw_slices)} slices; at most {limits.MAX_SLICES} are supported")
    slices: list[Slice] = []
    names: dict[str, str] = {limits.DEFAULT_SLICE_NAME: "the default slice"}
    ids: dict[int, str] = {limits.DEFAULT_SLICE_ID: "the default slice"}
    owners: dict[tuple[str, object], str] = {}
    for i, raw in enumerate(raw_slices):
        key = f"slice[{i}]"
        raw = c.table(raw, key, _SLICE_KEYS)
        name = raw.get("name")
        if not isinstance(name, str) or not SLICE_NAME.fullmatch(name):
            c.fail(
                f"{key}.name",
                "must be 1-63 letters, digits, '_', '-' and single dots, starting with a"
                f" letter or digit, not ending in '.' or '-': {_shown(name)}",
            )
            name = None
        elif name in names:
            c.fail(f"{key}.name", f"duplicate slice name {_shown(name)} (also {names[name]})")
        else:
            names[name] = key
        sid = c.integer(f"{key}.id", raw.get("id"), 1, limits.MAX_SLICE_ID)
        if sid is not None and sid in ids:
            c.fail(f"{key}.id", f"duplicate slice id {sid} (also {ids[sid]})")
        elif sid is not None:
            ids[sid] = key
        if "match" not in raw:
            c.fail(f"{key}.match", f"missing: say how packets are recognised ({_MATCH_NAMES})")
        s = _slice(c, key, raw, defaults, max_rates, name or "?", sid or 0, period_s)
        if s is None or name is None or sid is None:
            continue
        if "match" in raw and s.match.empty():
            c.fail(f"{key}.match", "is empty")
        for kind in matchkinds.KINDS:
            for v in kind.values(s):
                if (kind.key, v) in owners:
                    c.fail(
                        f"{key}.match.{kind.key}", f"{v} already matches {owners[(kind.key, v)]}"
                    )
                owners[(kind.key, v)] = f"{key} ({name})"
        slices.append(_check_node_caps(c, s, key, node_cap, line_rate))
    _check_match_counts(c, slices)
    keys = {s.name: f"slice[{i}]" for i, s in enumerate(slices)}
    _src_overlaps(c, slices, keys)
    _check_cgroups(c, slices, keys, environment)

    notify = _notify(c, doc.get("notify"))
    if notify is not None:
        from bwbpf.notify import ADDRESS

        for s in slices:
            address = notify.slice_address.replace("{slice}", s.name)
            if len(address) > 254 or not ADDRESS.fullmatch(address):
                c.fail(
                    f"{keys[s.name]}.name",
                    f"makes notify.slice_address {_shown(address)}, not a mail address",
                )
    metrics = _metrics(c, doc.get("metrics"))
    history = _history(c, doc.get("history"), period.timezone)
    if history.file is not None:
        from bwbpf.state import journal_file, state_file

        ledger_file = state_file(state_dir, interface)
        if history.file in (ledger_file, journal_file(ledger_file)):
            c.fail("history.file", f"must not be the state file {_shown(history.file)}")
    if c.problems:
        raise ConfigError(c.listed("problems"))
    assert default_slice is not None
    return Config(
        path=path,
        interface=interface,
        line_rate_bps=line_rate,
        node_cap_bps=node_cap,
        tick_s=tick,
        state_dir=state_dir,
        bpffs_dir=bpffs,
        policy=policy,
        period=period,
        exempt_prefixes=tuple(exempt),
        default_slice=default_slice,
        slices=tuple(slices),
        notify=notify,
        metrics=metrics,
        history=history,
        warnings=tuple(c.listed("warnings")),
        sources=tuple(c.sources),
        digest=text_digest(text),
    )


def _check_match_counts(c: _Checker, slices: list[Slice]) -> None:
    """Refuse more values than a match map holds."""
    counts = Counter(
        kind.map_for(v) for kind in matchkinds.KINDS for s in slices for v in kind.values(s)
    )
    for m in matchkinds.MAPS:
        if counts[m.name] > m.max_entries:
            c.fail("slice", f"{counts[m.name]} {m.what}; at most {m.max_entries}")


def _interface_exists(c: _Checker, interface: str) -> None:
    try:
        socket.if_nametoindex(interface)
    except OSError:
        c.fail("node.interface", f"no such network interface: {_shown(interface)}")


def check_environment(cfg: Config, check_interface: bool = True) -> Config:
    """What ``parse`` checks of the machine, for a Config parsed without ``environment``:
    the interface exists (ConfigError if not), and a warning for each cgroup that does not
    exist yet."""
    c = _Checker(cfg.path)
    if check_interface:
        _interface_exists(c, cfg.interface)
    _check_cgroups(c, list(cfg.slices), {s.name: f"slice[{i}]" for i, s in enumerate(cfg.slices)})
    if c.problems:
        raise ConfigError(c.listed("problems"))
    if not c.warnings:
        return cfg
    return dataclasses.replace(cfg, warnings=cfg.warnings + tuple(c.listed("warnings")))


def _src_overlaps(c: _Checker, slices: list[Slice], keys: dict[str, str]) -> None:
    """Warn when one slice's source prefix contains another's: the LPM trie gives a packet
    to the longest (most specific) prefix, so the wider one does not get those addresses.
    Each prefix is looked up at the prefix lengths in use, not compared with every other."""
    owner: dict[tuple[int, int, int], Slice] = {}
    lengths: dict[int, set[int]] = {4: set(), 6: set()}
    for s in slices:
        for net in s.match.src:
            owner[(net.version, net.prefixlen, int(net.network_address))] = s
            lengths[net.version].add(net.prefixlen)
    for s in slices:
        for net in s.match.src:
            bits = net.max_prefixlen
            address = int(net.network_address)
            for length in sorted(lengths[net.version]):
                if length >= net.prefixlen:
                    break
                mask = ((1 << length) - 1) << (bits - length)
                wider = owner.get((net.version, length, address & mask))
                if wider is None or wider is s:
                    continue
                outer = ipaddress.ip_network((address & mask, length))
                c.warn(
                    f"{keys[s.name]}.match.src",
                    f"{net} ({s.name}) is inside {outer} of {keys[wider.name]} ({wider.name}):"
                    f" the longer prefix wins, so traffic from {net} counts to {s.name}",
                )


def cgroup2_mount() -> str | None:
    """The cgroup v2 mount point from /proc/mounts, or None if there is none. Here, not in
    the datapath, so that validating a config loads nothing of the datapath."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        return None
    return None


def cgroup_full_path(path: str, mount: str) -> str:
    """A configured cgroup as a path: one under the cgroup v2 mount as it is, any other
    relative to the mount (``/system.slice/x``)."""
    if path == mount or path.startswith(mount.rstrip("/") + "/"):
        return path
    return os.path.join(mount, path.lstrip("/"))


def _check_cgroups(
    c: _Checker, slices: list[Slice], keys: dict[str, str], environment: bool = True
) -> None:
    """Refuse a cgroup deeper than the classifier walks; with ``environment``, warn about
    one that does not exist (yet): until it does its traffic counts to the default slice
    (the daemon looks the configured paths up again every tick)."""
    if not any(s.match.cgroups for s in slices):
        return
    mount = cgroup2_mount()
    for s in slices:
        for path in s.match.cgroups:
            key = f"{keys[s.name]}.match.cgroup"
            relative = path
            if mount and (path == mount or path.startswith(mount.rstrip("/") + "/")):
                relative = "/" + os.path.relpath(path, mount)
            depth = len([part for part in relative.split("/") if part not in ("", ".")])
            if len(path) >= 4096 or depth > limits.MAX_CGROUP_DEPTH:
                c.fail(
                    key,
                    f"{_shown(path)} is {depth} levels deep; the classifier walks at most"
                    f" {limits.MAX_CGROUP_DEPTH}",
                )
                continue
            if not environment:
                continue
            if mount is None:
                c.warn(
                    key,
                    f"{_shown(path)}: no cgroup v2 hierarchy is mounted;"
                    " its traffic will go to the default slice",
                )
                continue
            full = cgroup_full_path(path, mount)
            if not os.path.isdir(full):
                c.warn(
                    key,
                    f"{path} does not exist yet ({full}): its traffic will go to the default"
                    " slice until it exists; a running daemon matches it from the tick after"
                    " it appears (without a daemon, at the next bwbpf up)",
                )


def load(path: str | os.PathLike[str], check_interface: bool = True, pack: bool = True) -> Config:
    """Read and validate a config file (read_config). What it returns is packed into few
    pages (heap.packed), unless not ``pack``: the daemon keeps it for as long as it runs.
    (A process that hands the config on pickled, heap.isolated's child, need not pack.)"""
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if not pack:
        return parse(read_config(p), p, check_interface)
    return heap.packed(lambda: parse(read_config(p), p, check_interface))


def read_config(path: str) -> str:
    """A config file's text: a regular file of at most MAX_FILE_BYTES of UTF-8 (a FIFO,
    device or directory is refused without blocking); ConfigError naming the file."""
    try:
        return read_text_file(path)
    except FileProblem as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
