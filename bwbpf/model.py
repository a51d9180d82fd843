"""The domain types: a validated configuration, its slices, their quotas and matches, the
quota period, mail and metrics settings. Frozen, and built only by ``config.parse`` (which
validates every value first); nothing here imports the rest of bwbpf, so every module can
use these types without the TOML parser.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A slice name becomes a mail address's local part (a dot-atom: no leading, trailing or
# doubled dot), a header, a Prometheus label and a Message-ID: 1-63 characters, dot-separated
# words of letters, digits, '_' and '-', each word starting with a letter or digit and not
# ending in '-'.
_NAME_WORD = r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
SLICE_NAME = re.compile(rf"^(?=.{{1,63}}$){_NAME_WORD}(?:\.{_NAME_WORD})*$")


@dataclass(frozen=True, slots=True)
class ClassQuota:
    """One slice's budget for one destination class (normal or exempt)."""

    limit_bytes: int
    threshold_bytes: int
    min_rate_bps: int
    max_rate_bps: int
    avg_rate_bps: int


@dataclass(frozen=True, slots=True)
class Match:
    """The ways a packet is recognised as a slice's; any one of them is enough. A field per
    match kind (bwbpf/matchkinds.py: Kind.match_field)."""

    marks: tuple[int, ...] = ()
    uids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    src: tuple[Network, ...] = ()

    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class Slice:
    name: str
    id: int
    match: Match
    share: int
    normal: ClassQuota
    exempt: ClassQuota

    def quota(self, dclass: int) -> ClassQuota:
        """The quota of destination class ``dclass``, in the order of limits.DCLASSES (0
        normal, 1 exempt)."""
        return (self.normal, self.exempt)[dclass]


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Metrics:
    """Prometheus metrics: served over HTTP at listen_host:listen_port (None: not served)
    and/or written atomically to a node_exporter textfile."""

    listen_host: str | None
    listen_port: int
    textfile: str | None
    # The textfile is rewritten at most this often (seconds): at 10,000 slices it is
    # ~19 MB, and a scraper reads it at its own interval anyway.
    textfile_interval_s: int = 60


@dataclass(frozen=True, slots=True)
class History:
    """Usage history in SQLite (bwbpf/history.py): bytes and packets per slice and destination
    class in 5-minute, hourly, daily, monthly and yearly rows, and each quota period's total.
    ``keep``: how many of each resolution's units are kept (vnStat's defaults: 48 hours of
    5-minute rows, 4 days of hours, 62 days of days, 25 months, every year); -1 keeps all,
    0 keeps none."""

    enabled: bool = True
    # None: history-<interface>.sqlite in the state directory.
    file: str | None = None
    # Written at most this often (seconds), and whenever a 5-minute row is complete.
    write_interval_s: int = 300
    fiveminute_hours: int = 48
    hourly_days: int = 4
    daily_days: int = 62
    monthly_months: int = 25
    yearly_years: int = -1
    # Where days, months and years begin (the quota's time zone unless set).
    timezone: str = "UTC"

    def keep(self) -> tuple[int, int, int, int, int]:
        """Retention per resolution, finest first (history.RESOLUTIONS)."""
        return (
            self.fiveminute_hours,
            self.hourly_days,
            self.daily_days,
            self.monthly_months,
            self.yearly_years,
        )


@dataclass(frozen=True, slots=True)
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
    history: History = field(default_factory=History)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # The files it was read from besides ``path`` (exempt files), for configcache.
    sources: tuple[str, ...] = field(default=(), compare=False)
    # SHA-256 (hex) of the text it was parsed from: whether two processes hold the same.
    digest: str = field(default="", compare=False)

    @property
    def pin_dir(self) -> str:
        """Where this interface's maps are pinned: they outlive the process that loaded them.
        (config.parse refused an interface name that is not one path component.)"""
        base = os.path.join(self.bpffs_dir, "bwbpf")
        full = os.path.normpath(os.path.join(base, self.interface))
        if os.path.dirname(full) != os.path.normpath(base):
            raise ValueError(f"{self.path}: node.interface: {self.interface!r} would leave {base}")
        return full

    @property
    def history_path(self) -> str:
        """The history database: [history] file, else one per interface in state_dir."""
        return self.history.file or os.path.join(self.state_dir, f"history-{self.interface}.sqlite")

    def all_slices(self) -> tuple[Slice, ...]:
        """The default slice first, then the configured ones."""
        return (self.default_slice, *self.slices)
