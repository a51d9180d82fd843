"""The TOML configuration, validated into frozen dataclasses.

Validation collects every problem before failing, each as ``FILE: KEY: what is wrong``, so
that ``bwbpf check`` can list them all at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bwbpf import limits
from bwbpf.errors import ConfigError
from bwbpf.units import UnitError, parse_duration, parse_rate, parse_size

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

# A slice name becomes part of a mail address and a header; keep it to what is safe in both.
SLICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# The uid the kernel reports for a packet without a local socket (bpf_get_socket_uid).
OVERFLOW_UID = 65534
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PERIOD_KINDS = ("daily", "weekly", "monthly")


@dataclass(frozen=True)
class ClassQuota:
    """One slice's budget for one destination class (normal or exempt)."""

    limit_bytes: int
    threshold_bytes: int
    min_rate_bps: int
    max_rate_bps: int
    avg_rate_bps: int


@dataclass(frozen=True)
class Match:
    """The ways a packet is recognised as a slice's; any one of them is enough."""

    marks: tuple[int, ...] = ()
    uids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    src: tuple[Network, ...] = ()

    def empty(self) -> bool:
        return not (self.marks or self.uids or self.cgroups or self.src)


@dataclass(frozen=True)
class Slice:
    name: str
    id: int
    match: Match
    share: int
    normal: ClassQuota
    exempt: ClassQuota

    def quota(self, dclass: int) -> ClassQuota:
        return self.exempt if dclass == limits.DCLASS_EXEMPT else self.normal


@dataclass(frozen=True)
class Period:
    """``rolling``: ``seconds`` from each slice's own period start. The calendar kinds start
    at ``at`` (minutes after local midnight) in ``timezone``: every day, every ``weekday``
    (0 = Monday), or every month on ``day``."""

    kind: str = "rolling"
    seconds: int = 86400
    at_minutes: int = 0
    weekday: int = 0
    day: int = 1
    timezone: str = "UTC"


@dataclass(frozen=True)
class Notify:
    smtp_host: str | None
    smtp_port: int
    starttls: bool
    username: str | None
    password: str | None
    sendmail: str | None
    sender: str
    operator: str | None
    slice_address: str


@dataclass(frozen=True)
class Metrics:
    """Prometheus metrics: served over HTTP at listen_host:listen_port (None: not served)
    and/or written atomically to a node_exporter textfile."""

    listen_host: str | None
    listen_port: int
    textfile: str | None


@dataclass(frozen=True)
class Config:
    path: str
    interface: str
    line_rate_bps: int
    node_cap_bps: int
    tick_s: int
    state_dir: str
    bpffs_dir: str
    policy: str
    period: Period
    exempt_prefixes: tuple[Network, ...]
    default_slice: Slice
    slices: tuple[Slice, ...]
    notify: Notify | None = None
    metrics: Metrics | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def pin_dir(self) -> str:
        """Where this interface's maps are pinned: they outlive the process that loaded them."""
        return os.path.join(self.bpffs_dir, "bwbpf", self.interface)

    def all_slices(self) -> tuple[Slice, ...]:
        """The default slice first, then the configured ones."""
        return (self.default_slice, *self.slices)


_NODE_KEYS = {"interface", "line_rate", "node_cap", "tick", "state_dir", "bpffs"}
_QUOTA_KEYS = {"policy", "period", "at", "weekday", "day", "timezone"}
_CLASS_KEYS = {"limit", "threshold", "min_rate", "max_rate", "avg_rate"}
_DEFAULTS_KEYS = {"share", "normal", "exempt"}
_SLICE_KEYS = {"name", "id", "match", "share", "normal", "exempt"}
_MATCH_KEYS = {"mark", "uid", "cgroup", "src"}
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
_METRICS_KEYS = {"listen", "textfile"}
_TOP_KEYS = {
    "node",
    "quota",
    "defaults",
    "exempt",
    "notify",
    "metrics",
    "slice",
    "default_slice",
}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9877"

# The reference bwmon's defaults: 5.4 GB/day normal, 16.4 GB/day exempt, 80 % thresholds.
_BUILTIN_CLASS = {
    "normal": {"limit": "5.4GB", "threshold": 0.8, "min_rate": "8bit", "avg_rate": "500kbit"},
    "exempt": {"limit": "16.4GB", "threshold": 0.8, "min_rate": "8bit", "avg_rate": "1.5mbit"},
}
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")


class _Checker:
    """Collects problems, each prefixed with the file and the dotted key."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.path}: {key}: {message}")

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
            self.fail(key, f"must be an integer, not {value!r}")
            return None
        if not lo <= value <= hi:
            self.fail(key, f"{value} is outside {lo}..{hi}")
            return None
        return value

    def string(self, key: str, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, not {value!r}")
            return None
        return value


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _network(text: object) -> Network:
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a prefix string")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid prefix {text!r}: {exc}") from None


def _class_quota(
    c: _Checker,
    key: str,
    merged: dict[str, Any],
    max_rate_default: int,
    origin: dict[str, str] | None = None,
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
    if not ok:
        return None
    return ClassQuota(limit, threshold, min_rate, max_rate, avg_rate)


def _period(c: _Checker, quota: dict[str, Any]) -> Period:
    text = quota.get("period", "1d")
    tz = quota.get("timezone", "UTC")
    if not isinstance(tz, str):
        c.fail("quota.timezone", f"must be a string, not {tz!r}")
        tz = "UTC"
    else:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(tz)
        except Exception:
            c.fail("quota.timezone", f"unknown time zone {tz!r}")
    at_minutes = 0
    at = quota.get("at", "00:00")
    m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", at) if isinstance(at, str) else None
    if m is None:
        c.fail("quota.at", f"must be HH:MM, not {at!r}")
    else:
        at_minutes = int(m.group(1)) * 60 + int(m.group(2))
    if text in PERIOD_KINDS:
        weekday = quota.get("weekday", "mon")
        if weekday not in WEEKDAYS:
            c.fail("quota.weekday", f"must be one of {', '.join(WEEKDAYS)}, not {weekday!r}")
            weekday = "mon"
        day = c.integer("quota.day", quota.get("day", 1), 1, 28) or 1
        return Period(text, 0, at_minutes, WEEKDAYS.index(weekday), day, tz)
    for key in ("weekday", "day"):
        if key in quota:
            c.fail(f"quota.{key}", "only applies to a weekly or monthly period")
    seconds = c.convert("quota.period", text, parse_duration)
    if seconds is not None and seconds < 1:
        c.fail("quota.period", "must be at least 1s")
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
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            c.fail("notify.smtp", f"must be HOST or HOST:PORT, not {smtp!r}")
        else:
            port = int(port_text)
    sendmail = c.string("notify.sendmail", n["sendmail"]) if "sendmail" in n else None
    if host is None and sendmail is None:
        sendmail = "/usr/sbin/sendmail"
    for key in ("from", "operator"):
        if key in n and not (isinstance(n[key], str) and _ADDRESS.fullmatch(n[key])):
            c.fail(f"notify.{key}", f"is not a mail address: {n[key]!r}")
    slice_address = n.get("slice_address", "{slice}@localhost")
    if not isinstance(slice_address, str) or not _ADDRESS.fullmatch(
        slice_address.replace("{slice}", "x")
    ):
        c.fail("notify.slice_address", f"must be an address with {{slice}}, not {slice_address!r}")
    for key in ("starttls",):
        if key in n and not isinstance(n[key], bool):
            c.fail(f"notify.{key}", "must be true or false")
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
        c.fail("metrics.listen", f'must be HOST:PORT or "" (not served), not {listen!r}')
    elif listen:
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            c.fail("metrics.listen", f"must be HOST:PORT, not {listen!r}")
            host = None
        else:
            port = int(port_text)
    textfile = m.get("textfile")
    if textfile is not None and not (isinstance(textfile, str) and os.path.isabs(textfile)):
        c.fail("metrics.textfile", f"must be an absolute path, not {textfile!r}")
        textfile = None
    return Metrics(host, port, textfile)


def _match(c: _Checker, key: str, raw: object) -> Match:
    m = c.table(raw, key, _MATCH_KEYS)
    marks = [c.integer(f"{key}.mark", v, 1, 2**32 - 1) for v in _as_list(m.get("mark"))]
    uids = [c.integer(f"{key}.uid", v, 0, 2**32 - 2) for v in _as_list(m.get("uid"))]
    for uid in uids:
        if uid == OVERFLOW_UID:
            c.fail(
                f"{key}.uid",
                f"{OVERFLOW_UID} is the kernel's uid for packets without a"
                " local socket and cannot name a slice",
            )
    cgroups = [c.string(f"{key}.cgroup", v) for v in _as_list(m.get("cgroup"))]
    for path in cgroups:
        if path is not None and not os.path.isabs(path):
            c.fail(f"{key}.cgroup", f"must be an absolute path in the cgroup v2 tree: {path!r}")
    src = [c.convert(f"{key}.src", v, _network) for v in _as_list(m.get("src"))]
    return Match(
        marks=tuple(v for v in marks if v is not None),
        uids=tuple(v for v in uids if v is not None and v != OVERFLOW_UID),
        cgroups=tuple(os.path.normpath(v) for v in cgroups if v is not None),
        src=tuple(v for v in src if v is not None),
    )


def _merged_class(defaults: dict[str, Any], override: dict[str, Any], dclass: str) -> dict:
    merged = dict(_BUILTIN_CLASS[dclass])
    merged.update(defaults.get(dclass) or {})
    merged.update(override)
    return merged


def _exempt(c: _Checker, raw: object, base: Path) -> list[Network]:
    e = c.table(raw, "exempt", _EXEMPT_KEYS)
    prefixes: list[Network] = []
    seen: dict[Network, str] = {}

    def add(text: object, where: str) -> None:
        net = c.convert(where, text, _network)
        if net is None:
            return
        if net in seen:
            c.fail(where, f"duplicate prefix {net} (also {seen[net]})")
            return
        seen[net] = where
        prefixes.append(net)

    for i, text in enumerate(_as_list(e.get("prefixes"))):
        add(text, f"exempt.prefixes[{i}]")
    for i, name in enumerate(_as_list(e.get("files"))):
        if not isinstance(name, str):
            c.fail(f"exempt.files[{i}]", f"must be a path, not {name!r}")
            continue
        path = base / name
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            c.fail(f"exempt.files[{i}]", f"cannot read {path}: {exc.strerror}")
            continue
        for lineno, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if text:
                add(text, f"exempt.files[{i}] ({path}:{lineno})")
    for family in (4, 6):
        count = sum(1 for p in prefixes if p.version == family)
        if count > limits.MAX_PREFIXES:
            c.fail("exempt", f"{count} IPv{family} prefixes; at most {limits.MAX_PREFIXES}")
    return prefixes


def _slice(
    c: _Checker,
    key: str,
    raw: dict[str, Any],
    defaults: dict[str, Any],
    max_rates: dict[str, int],
    name: str,
    slice_id: int,
) -> Slice | None:
    share = c.integer(f"{key}.share", raw.get("share", defaults.get("share", 1)), 1, 10000)
    quotas: dict[str, ClassQuota | None] = {}
    for dclass in limits.DCLASSES:
        override = c.table(raw.get(dclass), f"{key}.{dclass}", _CLASS_KEYS)
        merged = _merged_class(defaults, override, dclass)
        inherited = set(defaults.get(dclass) or {}) - set(override)
        origin = {k: f"defaults.{dclass}" for k in inherited}
        quotas[dclass] = _class_quota(c, f"{key}.{dclass}", merged, max_rates[dclass], origin)
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
            changed[dclass] = ClassQuota(
                q.limit_bytes,
                q.threshold_bytes,
                ceiling,
                max(q.max_rate_bps, ceiling),
                q.avg_rate_bps,
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


def parse(text: str, path: str = "<config>", check_interface: bool = True) -> Config:
    """Validate a config document; raise ConfigError with every problem found."""
    c = _Checker(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    c.table(doc, "", _TOP_KEYS)
    node = c.table(doc.get("node"), "node", _NODE_KEYS)
    quota = c.table(doc.get("quota"), "quota", _QUOTA_KEYS)
    defaults = c.table(doc.get("defaults"), "defaults", _DEFAULTS_KEYS)
    for dclass in limits.DCLASSES:
        c.table(defaults.get(dclass), f"defaults.{dclass}", _CLASS_KEYS)

    interface = c.string("node.interface", node.get("interface")) or ""
    if interface and check_interface:
        try:
            socket.if_nametoindex(interface)
        except OSError:
            c.fail("node.interface", f"no such network interface: {interface!r}")
    line_rate = c.convert("node.line_rate", node.get("line_rate", "1gbit"), parse_rate) or 0
    node_cap = c.convert("node.node_cap", node.get("node_cap", "100mbit"), parse_rate) or 0
    if line_rate and node_cap and node_cap > line_rate:
        c.fail("node.node_cap", f"{node_cap} bit/s is above line_rate {line_rate} bit/s")
    tick = c.convert("node.tick", node.get("tick", "10s"), parse_duration) or 10
    if tick < 1:
        c.fail("node.tick", "must be at least 1s")
    state_dir = c.string("node.state_dir", node.get("state_dir", "/var/lib/bwbpf")) or ""
    bpffs = c.string("node.bpffs", node.get("bpffs", "/sys/fs/bpf")) or ""

    policy = quota.get("policy", "smooth")
    if policy not in ("smooth", "average"):
        c.fail("quota.policy", f"must be 'smooth' or 'average', not {policy!r}")
    period = _period(c, quota)

    # After a bad rate (already reported) go on with the default, not with cascades of it.
    line_rate = line_rate or 10**9
    node_cap = node_cap or min(10**8, line_rate)
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
            c.fail(f"{key}.name", f"must be 1-63 of letters, digits, '_', '.', '-': {name!r}")
            name = None
        elif name in names:
            c.fail(f"{key}.name", f"duplicate slice name {name!r} (also {names[name]})")
        else:
            names[name] = key
        sid = c.integer(f"{key}.id", raw.get("id"), 1, limits.MAX_SLICE_ID)
        if sid is not None and sid in ids:
            c.fail(f"{key}.id", f"duplicate slice id {sid} (also {ids[sid]})")
        elif sid is not None:
            ids[sid] = key
        if "match" not in raw:
            c.fail(
                f"{key}.match", "missing: say how packets are recognised (mark, uid, cgroup or src)"
            )
        s = _slice(c, key, raw, defaults, max_rates, name or "?", sid or 0)
        if s is None or name is None or sid is None:
            continue
        if "match" in raw and s.match.empty():
            c.fail(f"{key}.match", "is empty")
        for kind, values in (
            ("mark", s.match.marks),
            ("uid", s.match.uids),
            ("cgroup", s.match.cgroups),
            ("src", s.match.src),
        ):
            for v in values:
                if (kind, v) in owners:
                    c.fail(f"{key}.match.{kind}", f"{v} already matches {owners[(kind, v)]}")
                owners[(kind, v)] = f"{key} ({name})"
        slices.append(_check_node_caps(c, s, key, node_cap, line_rate))
    for family in (4, 6):
        count = sum(1 for s in slices for p in s.match.src if p.version == family)
        if count > limits.MAX_PREFIXES:
            c.fail("slice", f"{count} IPv{family} source prefixes; at most {limits.MAX_PREFIXES}")

    notify = _notify(c, doc.get("notify"))
    metrics = _metrics(c, doc.get("metrics"))
    if c.problems:
        raise ConfigError(list(dict.fromkeys(c.problems)))
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
        warnings=tuple(c.warnings),
    )


def load(path: str | os.PathLike[str], check_interface: bool = True) -> Config:
    """Read and validate a config file."""
    p = str(path)
    try:
        text = Path(p).read_text()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    return parse(text, p, check_interface)
