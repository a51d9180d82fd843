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

    def all_slices(self) -> tuple[Slice, ...]:
        """The default slice first, then the configured ones."""
        return (self.default_slice, *self.slices)
