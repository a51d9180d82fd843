"""The kernel half: compile and load bpf/egress.c with bcc, fill its maps from the config,
attach it to the HTB root qdisc, and read the pinned counters back.

Compiling takes bcc and LLVM (~140 MB resident), so it happens in a short-lived loader
process (bwbpf/loader.py) that pins what it made and exits; ``Program`` works from those
pins through raw bpf(2) calls (bwbpf/bpfsys.py), and nothing else here imports bcc.

Pins, in ``<bpffs>/bwbpf/<interface>/``:

- ``counters``, ``errors``: reused by every later load, so no count is lost when a
  program is replaced or its loader exits.
- ``prog``: the attached program. Replaced with rename(2), so it is never missing.
- ``<map>@<program id>`` for each of the program's match and exempt maps (MATCH_MAPS).
  They belong to one program: a new program gets fresh ones, filled before it replaces
  the old one in a single netlink request (``tc filter replace``), so there is no moment
  when packets go unclassified or half-configured. The id in the name ties each map to
  its program: the new set is pinned beside the old one, ``prog`` is renamed onto the new
  program, and only then the old set goes, so ``prog`` and the maps it names always
  belong together. (bpffs refuses names with a dot.)
- ``counters-retired@<map id>``: a counters map of another layout (another bwbpf
  version's), moved aside by the loader so that bcc makes one of this layout
  (``_check_pins``). Nothing writes it once the new program is attached; it waits for the
  daemon, which accounts it as the reading its ledger last saw and then unpins it
  (``RetiredCounters``, bwbpf/migrate.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import operator
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from bwbpf import bpfsys, classid, config, htbmsg, layout, limits, matchkinds, migrate
from bwbpf.errors import Error, one_line
from bwbpf.ledger import Reading
from bwbpf.matchkinds import CgroupLookup, CgroupRef, Flag
from bwbpf.model import Config, Network

log = logging.getLogger(__name__)

PROGRAM_NAME = "bwbpf_egress"
# The filter's place on the HTB root qdisc: one filter, always at this priority and handle.
FILTER_PRIO = 1
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003
COUNTER_SLOTS = limits.MAX_SLICE_ID + 1
PINNED_MAPS = {
    # name: (type, key size, value size, max entries) as bpf/egress.c declares them
    "counters": (
        bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        ctypes.sizeof(layout.SliceCounters),
        COUNTER_SLOTS,
    ),
    "errors": (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, limits.ERROR_SLOTS),
}
PROGRAM_PIN = "prog"
# The maps of one program that user space fills or updates, pinned as <name>@<program id>:
# the settings, every match kind's maps and the exempt tries. (dclass_cache is the
# program's own scratch space: nothing outside reads it.)
MATCH_MAPS = (
    "settings",
    *(m.name for m in matchkinds.MAPS),
    *(m.name for m in matchkinds.EXEMPT_MAPS),
)
_GENERATION_PIN = re.compile(rf"({'|'.join((PROGRAM_PIN, *MATCH_MAPS))})@([0-9]+)")
# A counters map of another layout, waiting for the daemon to account it; named by its
# map id. Not a generation pin: ``publish`` must leave it.
RETIRED_COUNTERS = "counters-retired"
_RETIRED_PIN = re.compile(rf"{RETIRED_COUNTERS}@([0-9]+)")
BPF_FS_MAGIC = 0xCAFE4A11  # include/uapi/linux/magic.h

_libc = ctypes.CDLL(None, use_errno=True)


# Where ``make install`` puts the C sources (PREFIX /usr/local by default, or /usr).
SHARED_BPF_DIRS = (Path("/usr/local/share/bwbpf/bpf"), Path("/usr/share/bwbpf/bpf"))
# The running kernel's own headers (CONFIG_IKHEADERS), which bcc takes when it finds no others.
KHEADERS = "/sys/kernel/kheaders.tar.xz"


def install_prefix(package_dir: Path) -> Path | None:
    """The prefix a package directory is installed under: /usr for Debian's
    /usr/lib/python3/dist-packages/bwbpf, /opt/bwbpf for a venv's
    lib/python3.11/site-packages/bwbpf; None when no ``lib`` is above it."""
    for parent in package_dir.parents:
        if parent.name == "lib":
            return parent.parent
    return None


def bpf_source_dirs(package_dir: Path | None = None) -> list[Path]:
    """Where the C sources may be, in the order looked at: bpf/ beside the package in a
    source tree; <prefix>/share/bwbpf/bpf of the prefix the package is installed under, so
    that the Debian package's code compiles the Debian package's C even where a ``make
    install`` left other sources in /usr/local; then where ``make install`` puts them."""
    here = package_dir or Path(__file__).resolve().parent
    dirs = [here.parent / "bpf"]
    prefix = install_prefix(here)
    if prefix is not None:
        dirs.append(prefix / "share" / "bwbpf" / "bpf")
    dirs += [d for d in SHARED_BPF_DIRS if d not in dirs]
    return dirs


def bpf_source_dir(package_dir: Path | None = None) -> Path:
    """The first of ``bpf_source_dirs`` that holds egress.c."""
    dirs = bpf_source_dirs(package_dir)
    for candidate in dirs:
        if (candidate / "egress.c").is_file():
            return candidate
    raise Error(f"cannot find bpf/egress.c (looked in {', '.join(map(str, dirs))})")


def kernel_headers_problem(release: str | None = None) -> str | None:
    """Why bcc cannot find kernel headers, naming the package to install; None if it can.

    bcc compiles against ``$BCC_KERNEL_SOURCE``, else /lib/modules/<release>/build, and
    takes it only if it has an include/ directory; failing that, the kernel's own
    /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS). Without any, its compile fails with a
    message that names no package, on stdout, which the loader does not pass on."""
    release = release or os.uname().release
    build = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(build, "include")):
        return None
    if os.path.exists(KHEADERS):
        return None
    return f"no kernel headers for bcc in {build}: {headers_advice(release)}"


def headers_advice(release: str) -> str:
    """What to install for a kernel's headers. Debian's kernels are <version>-<abi>-<flavour>
    (6.1.0-28-amd64, 6.1.0-28-cloud-amd64), and linux-headers-<flavour> follows the newest
    kernel of that flavour, which is the running one only after an upgrade and a reboot."""
    own = f"apt-get install linux-headers-{release}"
    debian = re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-([a-z0-9-]+)", release)
    if debian:
        return (
            f"{own} (or linux-headers-{debian.group(1)}, which follows the newest "
            "kernel: then boot that kernel)"
        )
    return f"{own}, or your kernel's development package"


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on unified hosts,
    /sys/fs/cgroup/unified on hybrid ones. Read from /proc/mounts, never assumed."""
    mount = config.cgroup2_mount()
    if mount is None:
        raise Error("no cgroup v2 hierarchy is mounted; cgroup matches need one")
    return mount


def resolve_cgroup(path: str, mount: str) -> CgroupRef:
    """A path under the cgroup v2 mount, or one relative to it (``/system.slice/x``)."""
    full = config.cgroup_full_path(path, mount)
    try:
        ino = os.stat(full).st_ino
    except OSError as exc:
        raise Error(f"cgroup {path}: {exc.strerror} ({full})") from None
    rel = os.path.relpath(full, mount)
    level = 0 if rel == "." else len(Path(rel).parts)
    if level > limits.MAX_CGROUP_DEPTH:
        raise Error(f"cgroup {path} is {level} levels deep; at most {limits.MAX_CGROUP_DEPTH}")
    return CgroupRef(ino, level)


@dataclass(frozen=True)
class MatchTables:
    """What the config puts into the program's maps, computed without touching the kernel:
    the settings, {key: slice id} for each map of matchkinds.MAPS, the exempt prefixes,
    and the configured values left out because the machine does not have them (yet)."""

    flags: int
    cgroup_levels: int
    entries: dict[str, dict[Any, int]]
    exempt: tuple[Network, ...]
    problems: tuple[str, ...]


def _host_cgroups() -> CgroupLookup:
    """Configured cgroup paths resolved on this machine, the mount looked up once, when
    the first path needs it (no cgroup v2 mount: each path's problem)."""
    mount: str | None = None

    def lookup(path: str) -> CgroupRef:
        nonlocal mount
        mount = mount or cgroup2_mount()
        return resolve_cgroup(path, mount)

    return lookup


def cgroup_matches(
    cfg: Config, resolve: CgroupLookup | None = None
) -> tuple[dict[int, int], int, dict[tuple[str, str], str]]:
    """The cgroup match map's contents for a config: ({cgroup id: slice id}, the level
    bits of ``settings.cgroup_levels``, {(slice, path): why} for paths that do not resolve).
    Cheap enough for every tick: a cgroup made after ``up`` or recreated (a new inode, so
    a new id) is picked up without a reload."""
    found = matchkinds.CGROUP.resolve(cfg.slices, resolve or _host_cgroups())
    (table,) = matchkinds.CGROUP.maps
    return found.entries[table.name], found.cgroup_levels, found.missing


def match_tables(
    cfg: Config, resolve: CgroupLookup | None = None, no_l2: bool = False
) -> MatchTables:
    """Flags and map contents for a config. ``resolve`` maps a cgroup path to a CgroupRef;
    a cgroup that cannot be resolved is left out and reported in ``problems``."""
    found = matchkinds.resolve(cfg.slices, resolve or _host_cgroups())
    flags = matchkinds.flags({**found.entries, **matchkinds.exempt_entries(cfg.exempt_prefixes)})
    if no_l2:
        flags |= Flag.NO_L2
    return MatchTables(
        int(flags),
        found.cgroup_levels,
        found.entries,
        cfg.exempt_prefixes,
        tuple(found.missing.values()),
    )


class PinCheck(NamedTuple):
    """What ``_check_pins`` did to the pins before a compile."""

    # An older errors map's totals by reason number, for the new map (``_carry_errors``).
    carried_errors: list[int]
    # Where a counters map of another layout was moved (``retire_pin``), or None.
    retired: str | None


def _check_pins(pin_dir: str) -> PinCheck:
    """Make way for this bwbpf's pinned maps: bcc would reuse a pinned map of another
    shape blindly.

    An errors map of fewer or more slots (a bwbpf with other error reasons) is only
    diagnostics: it is unpinned, and its totals by reason number are returned for the new
    map. A counters map of another layout that bwbpf can still read (migrate.dclasses_of)
    is moved aside, counts and all, for the daemon to account: refusing it would keep an
    upgraded daemon from starting, and removing it would lose what it counted since the
    last tick. Any other shape is refused."""
    carried: list[int] = []
    retired = None
    for name, expected in PINNED_MAPS.items():
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        fd = bpfsys.obj_get(path)
        try:
            info = bpfsys.map_info(fd)
            found = info.shape
            if found != expected and name == "errors" and found[:3] == expected[:3]:
                carried = _error_totals(fd, info.max_entries)
                os.unlink(path)
                log.warning(
                    "%s: %d error slots, this bwbpf has %d; replaced, its counts carried over",
                    path,
                    info.max_entries,
                    limits.ERROR_SLOTS,
                )
                continue
            dclasses = migrate.dclasses_of(*found[:3])
            if found != expected and name == "counters" and dclasses is not None:
                retired = retire_pin(pin_dir, int(info.id))
                log.warning(
                    "%s: another bwbpf's layout (%d slots, %d destination classes); kept as"
                    " %s until the daemon accounts it",
                    path,
                    info.max_entries,
                    dclasses,
                    retired,
                )
                continue
        finally:
            os.close(fd)
        if found != expected:
            raise Error(
                f"pinned map {path} has layout {found}, this bwbpf needs {expected} and cannot"
                " read that one; `bwbpf down` removes it (and its counts)"
            )
    return PinCheck(carried, retired)


def retired_pin(pin_dir: str, map_id: int) -> str:
    """Where counters map ``map_id`` of another layout waits to be accounted."""
    return os.path.join(pin_dir, f"{RETIRED_COUNTERS}@{map_id}")


def retire_pin(pin_dir: str, map_id: int) -> str:
    """Move the ``counters`` pin (map ``map_id``) aside, to ``retired_pin``; returns where.
    A rename: the map is pinned throughout, under one name or the other."""
    retired = retired_pin(pin_dir, map_id)
    os.rename(os.path.join(pin_dir, "counters"), retired)
    return retired


def _unretire(pin_dir: str, retired: str | None) -> None:
    """Undo ``retire_pin`` after a load that failed: the old program stays attached and
    goes on counting into the old map, which must then be ``counters`` again. A rename
    over the new map's pin, if bcc made one: that map was never used."""
    if retired is not None:
        with contextlib.suppress(FileNotFoundError):
            os.rename(retired, os.path.join(pin_dir, "counters"))


def retired_pins(pin_dir: str) -> list[str]:
    """The counters maps of other layouts waiting in pin_dir, oldest map first."""
    try:
        entries = os.listdir(pin_dir)
    except FileNotFoundError:
        return []
    found = [(int(m[1]), e) for e in entries if (m := _RETIRED_PIN.fullmatch(e))]
    return [os.path.join(pin_dir, e) for _, e in sorted(found)]


def counters_layout_changes(pin_dir: str) -> bool:
    """Whether a load would move the pinned counters aside (``_check_pins``): they have
    another layout, one bwbpf can read."""
    found = _pinned_shape(os.path.join(pin_dir, "counters"))
    return (
        found is not None
        and found != PINNED_MAPS["counters"]
        and migrate.dclasses_of(*found[:3]) is not None
    )


def _pinned_shape(path: str) -> tuple[int, int, int, int] | None:
    """(type, key size, value size, max entries) of the map pinned at path; None if none."""
    try:
        fd = bpfsys.obj_get(path)
    except FileNotFoundError:
        return None
    try:
        info = bpfsys.map_info(fd)
    finally:
        os.close(fd)
    return info.shape


def _error_totals(fd: int, slots: int) -> list[int]:
    """Each slot of an errors map, summed over the CPUs."""
    ncpus = bpfsys.possible_cpus()
    words = bpfsys.percpu_array_read(fd, slots, 8, ncpus).cast("Q")
    return [sum(words[i * ncpus : (i + 1) * ncpus]) for i in range(slots)]


def _carry_errors(bpf: Any, totals: list[int]) -> None:
    """Put an older errors map's totals into the new one (on the first CPU's slots)."""
    fd = bpf["errors"].map_fd
    ncpus = bpfsys.possible_cpus()
    for reason, total in enumerate(totals[: limits.ERROR_SLOTS]):
        if total:
            value = (ctypes.c_uint64 * ncpus)(total)
            bpfsys.map_update(fd, ctypes.c_uint32(reason), value)


def compile_program(pin_dir: str, extra_cflags: Iterable[str] = ()) -> Any:
    """Compile bpf/egress.c with bcc; its counters reuse (or create and pin) pin_dir's maps.

    Only the loader process (bwbpf/loader.py) and tests call this: it maps bcc and LLVM
    into the process for good."""
    return _compile(pin_dir, extra_cflags)[0]


def _compile(pin_dir: str, extra_cflags: Iterable[str]) -> tuple[Any, str | None]:
    """``compile_program``, and where it moved a counters map of another layout (None if
    it did not): the caller puts that back if it fails to load the program."""
    from bcc import BPF

    src = bpf_source_dir()
    os.makedirs(pin_dir, exist_ok=True)
    check = _check_pins(pin_dir)
    flags = [
        *cflags(),
        f'-DBWBPF_PIN_DIR="{pin_dir}"',
        f"-I{src}",
        "-Wall",
        "-Werror",
        *extra_cflags,
    ]
    try:
        bpf = BPF(src_file=str(src / "egress.c"), cflags=flags)
    except Exception as exc:  # bcc raises bare Exception on compile and load failures
        _unretire(pin_dir, check.retired)
        raise Error(kernel_headers_problem() or f"cannot load bpf/egress.c: {exc}") from None
    _carry_errors(bpf, check.carried_errors)
    return bpf, check.retired


def populate(bpf: Any, tables: MatchTables) -> None:
    """Fill a freshly compiled program's maps. Runs before the program is attached."""
    settings = bpf["settings"]
    leaf = settings.Leaf()
    leaf.flags = tables.flags
    leaf.cgroup_levels = tables.cgroup_levels
    leaf.match_epoch = layout.FIRST_MATCH_EPOCH
    settings[ctypes.c_int(0)] = leaf
    entries = {**tables.entries, **matchkinds.exempt_entries(tables.exempt)}
    for m in (*matchkinds.MAPS, *matchkinds.EXEMPT_MAPS):
        table = bpf[m.name]
        for key, value in entries[m.name].items():
            table[m.c_key(key)] = ctypes.c_uint32(value)


def tables_for(cfg: Config) -> MatchTables:
    """What a program for cfg would hold: compare with ``Program.tables`` to know whether a
    new one must be compiled."""
    interface_index(cfg.interface)  # a clear error before a 0.3 s compile
    return match_tables(cfg, no_l2=not _has_l2(cfg.interface))


def build(
    pin_dir: str,
    tables: MatchTables,
    extra_cflags: Iterable[str] = (),
    pin: Callable[[Any, int], None] | None = None,
) -> tuple[Any, int]:
    """Compile, fill and load a program in this process: (bcc object, program fd).
    ``pin(bpf, fd)``, when given, pins what the caller needs; if any step fails, a counters
    map of another layout moved aside for this load is put back."""
    from bcc import BPF

    bpf, retired = _compile(pin_dir, extra_cflags)
    try:
        populate(bpf, tables)
        fn = bpf.load_func(PROGRAM_NAME, BPF.SCHED_CLS)
    except Exception as exc:  # bcc raises bare Exception when the verifier refuses
        bpf.cleanup()
        _unretire(pin_dir, retired)
        raise Error(f"cannot load bpf/egress.c: {one_line(exc)}") from None
    try:
        if pin is not None:
            pin(bpf, fn.fd)
    except BaseException:
        bpf.cleanup()
        _unretire(pin_dir, retired)
        raise
    return bpf, fn.fd


def load(cfg: Config, extra_cflags: Iterable[str] = ()) -> tuple[Any, int, MatchTables]:
    """Compile and fill a program for cfg in this process, for tests and benchmarks that
    want the bcc object: (bcc object, program fd, what went in). The daemon and the CLI
    use ``Program.load``, which compiles in a loader process."""
    tables = tables_for(cfg)
    ensure_bpffs(cfg.bpffs_dir)
    bpf, fd = build(cfg.pin_dir, tables, extra_cflags)
    return bpf, fd, tables


def generation_pin(pin_dir: str, name: str, prog_id: int) -> str:
    """Where program ``prog_id``'s map ``name`` is pinned (``prog``: the program itself,
    until it is attached and renamed onto ``prog``)."""
    return os.path.join(pin_dir, f"{name}@{prog_id}")


def _open_pin(path: str) -> int:
    try:
        return bpfsys.obj_get(path)
    except OSError as exc:
        raise Error(f"cannot open pinned {path}: {exc.strerror}") from None


class Program:
    """A loaded classifier as its user holds it: fds of the program and of its match maps,
    opened from their pins (nothing is compiled in this process), and what the maps hold
    now. Closing it leaves it attached and pinned."""

    def __init__(self, fd: int, maps: dict[str, int], tables: MatchTables) -> None:
        self.fd = fd
        self.maps = maps
        self.tables = tables
        self.id = _prog_id(fd)

    @classmethod
    def load(cls, cfg: Config) -> Program:
        """Compile and load a program for cfg in a loader process, and open its pins."""
        from bwbpf import loader

        tables = tables_for(cfg)
        ensure_bpffs(cfg.bpffs_dir)
        prog_id = loader.run(cfg.pin_dir, tables)
        try:
            return cls.open(cfg.pin_dir, prog_id, tables)
        except BaseException:
            remove_generation(cfg.pin_dir, prog_id)
            raise

    @classmethod
    def open(cls, pin_dir: str, prog_id: int, tables: MatchTables) -> Program:
        """The program pinned as ``prog@<prog_id>`` and its match maps. Each map must be one
        the program itself uses: a set of pins can never pass off another program's map."""
        fds: list[int] = []
        try:
            fd = _open_pin(generation_pin(pin_dir, PROGRAM_PIN, prog_id))
            fds.append(fd)
            if _prog_id(fd) != prog_id:
                raise Error(f"{generation_pin(pin_dir, PROGRAM_PIN, prog_id)} is another program")
            own = set(bpfsys.prog_map_ids(fd))
            maps = {}
            for name in MATCH_MAPS:
                path = generation_pin(pin_dir, name, prog_id)
                maps[name] = _open_pin(path)
                fds.append(maps[name])
                if _map_id(maps[name]) not in own:
                    raise Error(f"{path} is not a map of program {prog_id}")
        except BaseException:
            for opened in fds:
                os.close(opened)
            raise
        return cls(fd, maps, tables)

    def publish(self, pin_dir: str) -> list[str]:
        """Make this (attached) program the pinned one: its maps' pins first, then ``prog``
        renamed onto it, then every other program's pins removed. Returns what it pinned."""
        try:
            pinned = self.repin(pin_dir)
            for entry in os.listdir(pin_dir):
                found = _GENERATION_PIN.fullmatch(entry)
                if found and int(found[2]) != self.id:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(pin_dir, entry))
        except OSError as exc:
            raise Error(f"cannot pin the classifier in {pin_dir}: {exc.strerror}") from None
        return pinned

    def repin(self, pin_dir: str) -> list[str]:
        """Pin the match maps and the program again where a pin is gone or names another
        object (someone removed the pins); returns the paths pinned."""
        os.makedirs(pin_dir, exist_ok=True)
        pinned = [
            path
            for path, fd in (
                (generation_pin(pin_dir, name, self.id), fd) for name, fd in self.maps.items()
            )
            if _pin_again(fd, path, _map_id)
        ]
        prog = os.path.join(pin_dir, PROGRAM_PIN)
        if _pinned_id(prog, _prog_id) != self.id:
            # Pinned beside it, then renamed over it: whoever looks finds a program there.
            staged = generation_pin(pin_dir, PROGRAM_PIN, self.id)
            _pin_again(self.fd, staged, _prog_id)
            os.rename(staged, prog)
            pinned.append(prog)
        return pinned

    def discard(self, pin_dir: str) -> None:
        """Close a program that was never attached, and remove its pins."""
        self.close()
        remove_generation(pin_dir, self.id)

    def close(self) -> None:
        for fd in (self.fd, *self.maps.values()):
            if fd >= 0:
                os.close(fd)
        self.fd = -1
        self.maps = {}

    def set_cgroups(self, cgroups: dict[int, int], levels: int) -> None:
        """Bring the cgroup match map to ``cgroups`` in place, on the live program.

        New and changed ids first, then the settings, then removals: a packet sees either
        the old or the new slice of its cgroup, never none of a cgroup that is in both.
        Last, a new match epoch: every socket works its slice out again at its next packet
        (one that did so meanwhile may have seen a removal still to come)."""
        (spec,) = matchkinds.CGROUP.maps
        before = self.tables.entries[spec.name]
        if cgroups == before and levels == self.tables.cgroup_levels:
            return
        table = self.maps[spec.name]
        for cgroup_id, slice_id in cgroups.items():
            if before.get(cgroup_id) != slice_id:
                bpfsys.map_update(table, spec.c_key(cgroup_id), ctypes.c_uint32(slice_id))
        flags = int((self.tables.flags & ~spec.flag) | (spec.flag if cgroups else 0))
        settings = self.settings()
        settings.flags, settings.cgroup_levels = flags, levels
        self._put_settings(settings)
        for cgroup_id in before.keys() - cgroups.keys():
            bpfsys.map_delete(table, spec.c_key(cgroup_id))
        # Skipping 0, which turns the cache off.
        settings.match_epoch = (settings.match_epoch + 1) & 0xFFFFFFFF or 1
        self._put_settings(settings)
        entries = {**self.tables.entries, spec.name: cgroups}
        self.tables = replace(self.tables, flags=flags, cgroup_levels=levels, entries=entries)

    def settings(self) -> layout.Settings:
        """What the program's settings map holds now."""
        settings = layout.Settings()
        if not bpfsys.map_lookup(self.maps["settings"], ctypes.c_uint32(0), settings):
            raise Error(f"program {self.id}: its settings map has no entry")
        return settings

    def _put_settings(self, settings: layout.Settings) -> None:
        bpfsys.map_update(self.maps["settings"], ctypes.c_uint32(0), settings)


def remove_generation(pin_dir: str, prog_id: int) -> None:
    """Remove one program's ``<name>@<id>`` pins (a load that was not attached)."""
    for name in (PROGRAM_PIN, *MATCH_MAPS):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(generation_pin(pin_dir, name, prog_id))


def is_bpffs(path: str) -> bool:
    """Whether path is in a bpffs (statfs f_type BPF_FS_MAGIC): its root or a directory
    made in it, as the configured bpffs may be."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type == BPF_FS_MAGIC


def ensure_bpffs(path: str) -> None:
    """Mount a bpffs at path when it is not in one, as tc and Cilium do: ``ip netns exec``
    mounts a fresh sysfs, in which /sys/fs/bpf is a plain empty directory.

    A bpffs mounted here is a new instance: its pins are not the host's."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise Error(f"bpffs directory {path} cannot be made: {exc.strerror}") from None
    if is_bpffs(path):
        return
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise Error(
            f"{path} is not a bpffs and mounting one there failed: {os.strerror(err)}"
            f" (mount -t bpf bpf {path})"
        )
    log.warning("%s was not a bpffs; mounted one there (mount -t bpf bpf %s)", path, path)


def _has_l2(ifname: str) -> bool:
    """Ethernet-like devices carry a link-layer header at tc egress; tun/wireguard do not.
    The device type is read over netlink, in our network namespace: sysfs shows the
    namespace that mounted it (under nsenter, the host's), not necessarily ours."""
    link = _link(ifname)
    # ARPHRD_ETHER 1, ARPHRD_LOOPBACK 772 have Ethernet headers; ARPHRD_NONE 0xfffe does not.
    return link is None or link.type != 0xFFFE


def _link(ifname: str) -> htbmsg.Link | None:
    """The device, read over netlink in our network namespace (sysfs shows the namespace
    that mounted it: under nsenter, the host's); None if it is gone."""
    from bwbpf.rtnl import Rtnl

    index = interface_index_or_none(ifname)
    if index is None:
        return None
    with Rtnl(None) as rtnl:
        return rtnl.link(index)


def cflags() -> list[str]:
    """The -D flags that give the C its sizes (limits.py), the flags and map sizes of the
    match kinds (matchkinds.py) and the HTB classid scheme (classid.py)."""
    values = {
        "BWBPF_MAX_SLICE_ID": limits.MAX_SLICE_ID,
        "BWBPF_DEFAULT_SLICE_ID": limits.DEFAULT_SLICE_ID,
        "BWBPF_MAX_CGROUP_DEPTH": limits.MAX_CGROUP_DEPTH,
        "BWBPF_DCLASS_CACHE_ENTRIES": limits.DCLASS_CACHE_ENTRIES,
        "BWBPF_NUM_ERRORS": len(limits.ERROR_REASONS),
        "BWBPF_ERROR_SLOTS": limits.ERROR_SLOTS,
    }
    values.update(
        BWBPF_HTB_MAJOR=classid.HTB_MAJOR,
        BWBPF_MINOR_NORMAL_BASE=classid.MINOR_BASE[limits.DCLASS_NORMAL],
        BWBPF_MINOR_EXEMPT_BASE=classid.MINOR_BASE[limits.DCLASS_EXEMPT],
    )
    values.update({f"BWBPF_F_{flag.name}": flag.value for flag in Flag})
    values.update(
        {m.size_macro: m.max_entries for m in (*matchkinds.MAPS, *matchkinds.EXEMPT_MAPS)}
    )
    return [f"-D{k}={v}" for k, v in values.items()]


def interface_index(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise Error(f"no such network interface: {ifname}") from None


def interface_index_or_none(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def attach(cfg: Config, prog_fd: int) -> None:
    """Put the program on the HTB root qdisc, replacing the previous one in one request.
    The caller pins it then (``Program.publish``), so that tools (bpftool, the daemon's
    self-check) find it."""
    from bwbpf.rtnl import Rtnl

    ifindex = interface_index(cfg.interface)

    def request(seq: int) -> bytes:
        # The cb field behind skb->tc_classid is 16 bits: the program writes the minor, and
        # cls_bpf takes the major from the filter's own classid (cls_bpf_classify).
        return htbmsg.put_filter(
            seq,
            ifindex,
            parent=classid.QDISC_HANDLE,
            handle=FILTER_HANDLE,
            prio=FILTER_PRIO,
            protocol=ETH_P_ALL,
            fd=prog_fd,
            name=filter_name(cfg.state_dir),
            classid=classid.QDISC_HANDLE,
        )

    try:
        with Rtnl(None) as rtnl:
            rtnl.run([(request, "attach the classifier")])
    except Error as exc:
        raise Error(f"{cfg.interface}: {exc}") from None


def attached(ifname: str) -> bool:
    """Whether bwbpf's classifier sits on the interface's HTB root qdisc."""
    return attached_owner(ifname) is not None


class Owner(NamedTuple):
    """Whose classifier is attached: the program's id (TCA_BPF_ID), pinned in its owner's
    bpffs, and the owner's state_dir, from the filter's name (cls_bpf keeps the name it
    was given)."""

    prog_id: int | None
    state_dir: str | None  # None: attached by a bwbpf from before owners were named


def filter_name(state_dir: str) -> str:
    return f"{PROGRAM_NAME}:{state_dir}"


def attached_owner(ifname: str) -> Owner | None:
    """Whose classifier sits on the interface's HTB root qdisc, or None when bwbpf's is
    not there."""
    from bwbpf.rtnl import bpf_filters

    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        return None
    for name, prog_id in bpf_filters(ifindex, classid.QDISC_HANDLE):
        if name.startswith(PROGRAM_NAME):
            rest = name[len(PROGRAM_NAME) :]
            return Owner(prog_id, rest[1:] if rest.startswith(":") else None)
    return None


def _prog_id(fd: int) -> int:
    return int(bpfsys.prog_info(fd).id)


def _map_id(fd: int) -> int:
    return int(bpfsys.map_info(fd).id)


def _pinned_id(path: str, object_id: Any) -> int | None:
    """The kernel id (``object_id(fd)``) of what is pinned at ``path``; None if nothing is."""
    try:
        fd = bpfsys.obj_get(path)
    except FileNotFoundError:
        return None
    try:
        return int(object_id(fd))
    finally:
        os.close(fd)


def _pin_again(fd: int, path: str, object_id: Any) -> bool:
    """Pin ``fd`` at ``path`` unless that pin already names the same object (someone
    removed it, or pinned another there); True if it pinned."""
    pinned = _pinned_id(path, object_id)
    if pinned == object_id(fd):
        return False
    if pinned is not None:
        os.unlink(path)
    bpfsys.obj_pin(fd, path)
    return True


def pinned_prog_id(pin_dir: str) -> int | None:
    try:
        return _pinned_id(os.path.join(pin_dir, PROGRAM_PIN), _prog_id)
    except OSError:
        return None


def check_owner(cfg: Config, current_id: int | None = None) -> None:
    """Refuse an interface whose classifier is another bwbpf's: one with another state_dir,
    or whose program is not the one pinned in our bpffs (another bpffs, or pins lost).
    Two owners would both account the same traffic. ``current_id``: the program the
    caller holds, ours even when its pin is gone."""
    owner = attached_owner(cfg.interface)
    if owner is None or owner.state_dir is None or owner.prog_id is None:
        return
    ours = {current_id, pinned_prog_id(cfg.pin_dir)} - {None}
    if owner.state_dir == cfg.state_dir and owner.prog_id in ours:
        return
    raise Error(
        f"{cfg.interface}: the classifier there is another bwbpf's (program {owner.prog_id},"
        f" state_dir {owner.state_dir}), not the one pinned in {cfg.pin_dir};"
        " `bwbpf down` with that configuration removes it, or --take-over replaces it"
    )


def tx_bytes(ifname: str) -> int | None:
    """The device's own transmitted-bytes counter (IFLA_STATS64)."""
    link = _link(ifname)
    return None if link is None else link.tx_bytes


def remove_pins(pin_dir: str) -> list[str]:
    """Unpin what bwbpf pinned (maps and program, and counters maps of other layouts
    waiting to be accounted) and remove its directory; returns what was removed. Only
    bwbpf's own names are touched."""
    removed = []
    try:
        generations = [
            e
            for e in os.listdir(pin_dir)
            if _GENERATION_PIN.fullmatch(e) or _RETIRED_PIN.fullmatch(e)
        ]
    except FileNotFoundError:
        generations = []
    for name in (*PINNED_MAPS, PROGRAM_PIN, *sorted(generations)):
        path = os.path.join(pin_dir, name)
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    for d in (pin_dir, os.path.dirname(pin_dir)):
        try:
            os.rmdir(d)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
    return removed


class Usage(NamedTuple):
    bytes: int
    packets: int


class Counters:
    """Reads the pinned counters without compiling anything."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        self.ncpus = bpfsys.possible_cpus()
        self._error_slots: int | None = None
        path = os.path.join(pin_dir, "counters")
        try:
            self._counters = bpfsys.obj_get(path)
            self._errors = bpfsys.obj_get(os.path.join(pin_dir, "errors"))
        except OSError as exc:
            raise Error(
                f"no bwbpf counters pinned in {pin_dir} ({exc.strerror}); run `bwbpf up` first"
            ) from None
        info = bpfsys.map_info(self._counters)
        found = info.shape
        if found != PINNED_MAPS["counters"]:
            # Read with this bwbpf's sizes, its values would be misread, and a batch read
            # of larger values would overrun the buffer.
            self.close()
            raise Error(
                f"pinned map {path} has layout {found}, this bwbpf reads"
                f" {PINNED_MAPS['counters']}: another bwbpf version loaded it; `bwbpf up` or"
                " the daemon's start replaces it and accounts its counts"
            )

    @property
    def generation(self) -> str:
        """Names these maps: the boot and the kernel's id for the counters map. Another value
        than last time means the counters were recreated (a reboot, `down` then `up`) and
        count from zero, even when they have since passed the old readings."""
        return generation(self.map_id)

    @property
    def map_id(self) -> int:
        return _map_id(self._counters)

    def close(self) -> None:
        for fd in (self._counters, self._errors):
            os.close(fd)

    def repin(self) -> list[str]:
        """Pin the maps this reader holds again where a pin is missing or names another
        map (someone removed the pins): the counts go on, nothing restarts from zero.
        Returns the paths re-pinned."""
        os.makedirs(self.pin_dir, exist_ok=True)
        paths = (
            (os.path.join(self.pin_dir, name), fd)
            for name, fd in (("counters", self._counters), ("errors", self._errors))
        )
        return [path for path, fd in paths if _pin_again(fd, path, _map_id)]

    def total_bytes(self) -> int:
        """Bytes counted over every slot, slice and class: what passed the classifier."""
        raw = bpfsys.percpu_array_read(
            self._counters, COUNTER_SLOTS, ctypes.sizeof(layout.SliceCounters), self.ncpus
        )
        words = raw.cast("Q")
        per_value = ctypes.sizeof(layout.SliceCounters) // 8
        # (bytes, packets) per dclass in each value: the bytes are the even words.
        return sum(sum(words[f::per_value]) for f in range(0, per_value, 2))

    def __enter__(self) -> Counters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, slice_ids: Iterable[int]) -> dict[int, tuple[Usage, Usage]]:
        """(normal, exempt) usage of each slice id, summed over CPUs, in one batch read."""
        ids = sorted(set(slice_ids))
        if not ids:
            return {}
        raw = bpfsys.percpu_array_read(
            self._counters, ids[-1] + 1, ctypes.sizeof(layout.SliceCounters), self.ncpus
        )
        # Build the tuples without NamedTuple.__new__'s argument parsing: 10,000 slices in
        # ~9 ms rather than ~22 (bench/run.py).
        nb, np_, eb, ep = percpu_columns(raw.cast("Q"), 2 * len(limits.DCLASSES), self.ncpus)
        make = functools.partial(tuple.__new__, Usage)
        return {s: (make((nb[s], np_[s])), make((eb[s], ep[s]))) for s in ids}

    def errors(self) -> dict[str, int]:
        """Datapath errors by reason; a reason this bwbpf has no name for (a newer
        program's) shows as ``reason_<number>`` once it counted something."""
        if self._error_slots is None:
            self._error_slots = bpfsys.map_info(self._errors).max_entries
        totals = _error_totals(self._errors, self._error_slots)
        out = dict.fromkeys(limits.ERROR_REASONS, 0)
        for number, total in enumerate(totals):
            if number < len(limits.ERROR_REASONS):
                out[limits.ERROR_REASONS[number]] = total
            elif total:
                out[f"reason_{number}"] = total
        return out


def generation(map_id: int) -> str:
    """The name the ledger keeps of the counters map it reads (``Counters.generation``):
    this boot and the map's kernel id, which no other map gets until the next boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{boot}/{map_id}"


def percpu_columns(words: Sequence[int], fields: int, ncpus: int) -> list[list[int]]:
    """Per-CPU array values of ``fields`` u64 words each, as a batch read returns them
    (slot-major, then CPU), summed over the CPUs: one list per field, indexed by slot. Sums
    each column with whole-list operations (tens of thousands of slots a tick)."""
    stride = fields * ncpus

    def column(start: int) -> list[int]:
        part = words[start::stride]
        # A memoryview's tolist() is several times faster than iterating it.
        return part.tolist() if isinstance(part, memoryview) else list(part)

    cols = []
    for field in range(fields):
        total = column(field)
        for cpu in range(1, ncpus):
            total = list(map(operator.add, total, column(field + fields * cpu)))
        cols.append(total)
    return cols


class RetiredCounters:
    """A counters map of another layout that the loader moved aside (``retire_pin``),
    opened from its pin: read with its own slots and destination classes, then unpinned
    once the daemon accounted it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = _open_pin(path)
        info = bpfsys.map_info(self.fd)
        dclasses = migrate.dclasses_of(info.type, info.key_size, info.value_size)
        if dclasses is None:
            os.close(self.fd)
            raise Error(
                f"pinned map {path} has layout"
                f" {info.shape}, which"
                " bwbpf cannot read; `bwbpf down` removes it (and its counts)"
            )
        self.dclasses = dclasses
        self.slots = int(info.max_entries)
        self.map_id = int(info.id)

    @property
    def generation(self) -> str:
        """What ``Counters.generation`` was while this map was the pinned ``counters``."""
        return generation(self.map_id)

    def read(self) -> list[tuple[Reading, ...]]:
        """Every slot's (bytes, packets) per destination class of this map, summed over
        the CPUs."""
        ncpus = bpfsys.possible_cpus()
        raw = bpfsys.percpu_array_read(
            self.fd, self.slots, self.dclasses * migrate.PAIR_BYTES, ncpus
        )
        cols = percpu_columns(raw.cast("Q"), 2 * self.dclasses, ncpus)
        pairs = [list(zip(cols[2 * d], cols[2 * d + 1], strict=True)) for d in range(self.dclasses)]
        return list(zip(*pairs, strict=True))

    def in_use(self, ifname: str) -> bool:
        """Whether the classifier attached to ifname still counts into this map (the load
        that replaced the map's program was not attached)."""
        owner = attached_owner(ifname)
        if owner is None or owner.prog_id is None:
            return False
        try:
            fd = bpfsys.prog_get_fd_by_id(owner.prog_id)
        except FileNotFoundError:
            return False  # replaced since
        try:
            return self.map_id in bpfsys.prog_map_ids(fd)
        finally:
            os.close(fd)

    def also_current(self, pin_dir: str) -> bool:
        """Whether this map is the pinned ``counters`` too: pinned again under its old name
        (by a daemon that held it and saw its pin gone), so nothing was retired."""
        return _pinned_id(os.path.join(pin_dir, "counters"), _map_id) == self.map_id

    def unpin(self) -> None:
        """Remove the pin (the map goes once nothing holds it). A pin that names another
        map by now is left alone."""
        if _pinned_id(self.path, _map_id) == self.map_id:
            os.unlink(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RetiredCounters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
