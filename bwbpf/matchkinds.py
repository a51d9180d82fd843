"""The match kinds (how a packet is recognised as a slice's), each defined once: its key in
``[slice.match]`` and ``model.Match`` field, how one config value is checked, the BPF maps
it fills (name, key type, flag, size) and the resolver that turns the slices into those
maps' entries. Also here, listed apart because they are not match kinds: the exempt maps
and the bits of ``settings.flags``.

The config (``config._match`` and its duplicate and count checks), the match tables, the
loader's request and the C's flags and map sizes (``datapath.cflags``) all follow from
``KINDS``; what stays hand-written per kind is its lookup step in bpf/egress.c.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bwbpf import layout, limits
from bwbpf.errors import Error
from bwbpf.model import Network, Slice

# The uid the kernel reports for a packet without a local socket (bpf_get_socket_uid).
OVERFLOW_UID = 65534


class Flag(enum.IntFlag):
    """The bits of ``settings.flags``, given to the C as ``-D BWBPF_F_<name>``. The program
    looks into a kind's maps only when their bit is set, so a node matching only by mark
    pays for one lookup. A bit keeps its number for good: the daemon changes the settings
    of a live program in place (``Program.set_cgroups``)."""

    MARK = 1 << 0
    CGROUP = 1 << 1
    UID = 1 << 2
    SRC4 = 1 << 3
    SRC6 = 1 << 4
    EXEMPT4 = 1 << 5
    EXEMPT6 = 1 << 6
    NO_L2 = 1 << 7  # an option, not a map: the device has no link-layer header (tun, wireguard)


@dataclass(frozen=True)
class MatchMap:
    """One BPF map, as bpf/egress.c declares it: ``max_entries`` reaches the C as
    ``BWBPF_<NAME>_ENTRIES``. ``what`` names its entries in the config's count problem."""

    name: str
    key_type: type[ctypes._SimpleCData[Any]] | type[ctypes.Structure]
    flag: Flag
    max_entries: int
    what: str

    @property
    def prefixes(self) -> bool:
        """Whether its keys are prefixes (an LPM trie), else integers."""
        return self.key_type in (layout.Lpm4, layout.Lpm6)

    @property
    def size_macro(self) -> str:
        return f"BWBPF_{self.name.upper()}_ENTRIES"

    def c_key(self, key: Any) -> Any:
        """``key`` (an int, or a Network for a trie) as the map's C key."""
        if not self.prefixes:
            return self.key_type(key)
        lpm: Any = self.key_type()
        lpm.prefixlen = key.prefixlen
        ctypes.memmove(lpm.addr, key.network_address.packed, len(key.network_address.packed))
        return lpm


class Checker(Protocol):
    """The part of config's checker a kind's ``check`` uses: each method reports a problem
    under ``key`` (one line naming key and value) and returns None, or the value."""

    def fail(self, key: str, message: str) -> None: ...

    def integer(self, key: str, value: object, lo: int, hi: int) -> int | None: ...

    def abspath(self, key: str, value: object, what: str = ...) -> str | None: ...

    def prefix(self, key: str, value: object) -> Network | None: ...


@dataclass(frozen=True)
class CgroupRef:
    """A configured cgroup resolved to what the classifier sees: its id (the directory's
    inode number) and its level below the root (bpf_skb_ancestor_cgroup_id)."""

    id: int
    level: int


# What a resolver may ask of the machine, passed in so that resolving stays pure here: a
# cgroup path to its CgroupRef (an Error when it does not resolve).
CgroupLookup = Callable[[str], CgroupRef]


@dataclass
class Resolved:
    """What kinds put into the program: {map name: {key: slice id}}, the cgroup levels in
    use (``settings.cgroup_levels``) and {(slice, value): problem} for configured values
    the machine does not have (yet), which are left out."""

    entries: dict[str, dict[Any, int]] = field(default_factory=dict)
    cgroup_levels: int = 0
    missing: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """One way a packet is recognised as a slice's."""

    key: str  # in [slice.match]
    match_field: str  # of model.Match: the checked values, a tuple
    maps: tuple[MatchMap, ...]
    # One config value under key, checked and normalised; None once a problem is reported.
    check: Callable[[Checker, str, object], Any]
    # Which of ``maps`` a configured value goes to (the config counts them per map).
    map_for: Callable[[Any], str]
    # The entries of ``maps`` for the slices; None: each value is its own key, in the map
    # ``map_for`` names.
    resolver: Callable[[Kind, Sequence[Slice], CgroupLookup], Resolved] | None = None

    def values(self, s: Slice) -> tuple[Any, ...]:
        values: tuple[Any, ...] = getattr(s.match, self.match_field)
        return values

    def resolve(self, slices: Sequence[Slice], cgroup: CgroupLookup) -> Resolved:
        if self.resolver is not None:
            return self.resolver(self, slices, cgroup)
        out = Resolved({m.name: {} for m in self.maps})
        for s in slices:
            for value in self.values(s):
                out.entries[self.map_for(value)][value] = s.id
        return out


def _check_uid(c: Checker, key: str, value: object) -> int | None:
    uid = c.integer(key, value, 0, 2**32 - 2)
    if uid == OVERFLOW_UID:
        c.fail(
            key,
            f"{OVERFLOW_UID} is the kernel's uid for packets without a"
            " local socket and cannot name a slice",
        )
        return None
    return uid


def _resolve_cgroups(kind: Kind, slices: Sequence[Slice], cgroup: CgroupLookup) -> Resolved:
    """Each configured path looked up now (one os.stat, cheap enough for every tick: the
    daemon follows a cgroup made after start or made again, with a new id, in place)."""
    (table,) = kind.maps
    out = Resolved({table.name: {}})
    for s in slices:
        for path in kind.values(s):
            try:
                ref = cgroup(path)
            except Error as exc:
                out.missing[(s.name, path)] = f"slice {s.name}: {exc}"
                continue
            out.entries[table.name][ref.id] = s.id
            out.cgroup_levels |= 1 << ref.level
    return out


def _trie(name: str, version: int, flag: Flag, what: str) -> MatchMap:
    key = layout.Lpm4 if version == 4 else layout.Lpm6
    return MatchMap(name, key, flag, limits.MAX_PREFIXES, what)


_U32, _U64 = ctypes.c_uint32, ctypes.c_uint64
# Marks up to MAX_SLICE_ID (the usual mark = slice id) index an array, the others a hash;
# the C makes the same split (egress.c: find_slice).
MARK = Kind(
    "mark",
    "marks",
    (
        MatchMap("slice_by_small_mark", _U32, Flag.MARK, limits.MAX_SLICE_ID + 1, "small marks"),
        MatchMap("slice_by_mark", _U32, Flag.MARK, limits.MAX_MATCHES, "mark matches"),
    ),
    lambda c, key, v: c.integer(key, v, 1, 2**32 - 1),
    lambda mark: "slice_by_small_mark" if mark <= limits.MAX_SLICE_ID else "slice_by_mark",
)
UID = Kind(
    "uid",
    "uids",
    (MatchMap("slice_by_uid", _U32, Flag.UID, limits.MAX_MATCHES, "uid matches"),),
    _check_uid,
    lambda uid: "slice_by_uid",
)
CGROUP = Kind(
    "cgroup",
    "cgroups",
    (MatchMap("slice_by_cgroup", _U64, Flag.CGROUP, limits.MAX_MATCHES, "cgroup matches"),),
    lambda c, key, v: c.abspath(key, v, "an absolute path in the cgroup v2 tree"),
    lambda path: "slice_by_cgroup",
    _resolve_cgroups,
)
SRC = Kind(
    "src",
    "src",
    (
        _trie("slice_by_src4", 4, Flag.SRC4, "IPv4 source prefixes"),
        _trie("slice_by_src6", 6, Flag.SRC6, "IPv6 source prefixes"),
    ),
    lambda c, key, v: c.prefix(key, v),
    lambda net: f"slice_by_src{net.version}",
)
# In the order the config reports them; the C's order of lookups is its own (egress.c).
KINDS = (MARK, UID, CGROUP, SRC)
MAPS = tuple(m for kind in KINDS for m in kind.maps)

# Not match kinds: the destination prefixes of the exempt class, one trie per family.
EXEMPT_MAPS = (
    _trie("exempt4", 4, Flag.EXEMPT4, "exempt IPv4 prefixes"),
    _trie("exempt6", 6, Flag.EXEMPT6, "exempt IPv6 prefixes"),
)


def resolve(slices: Sequence[Slice], cgroup: CgroupLookup) -> Resolved:
    """Every kind's entries for the slices, with every map of every kind present."""
    out = Resolved()
    for kind in KINDS:
        part = kind.resolve(slices, cgroup)
        out.entries.update(part.entries)
        out.cgroup_levels |= part.cgroup_levels
        out.missing.update(part.missing)
    return out


def exempt_entries(prefixes: Iterable[Network]) -> dict[str, dict[Network, int]]:
    out: dict[str, dict[Network, int]] = {m.name: {} for m in EXEMPT_MAPS}
    for net in prefixes:
        out[f"exempt{net.version}"][net] = 1
    return out


def flags(entries: Mapping[str, Mapping[Any, int]]) -> Flag:
    """The flags of the maps that hold something."""
    out = Flag(0)
    for m in (*MAPS, *EXEMPT_MAPS):
        if entries.get(m.name):
            out |= m.flag
    return out
