"""HTB on the egress device through netlink: install the tree, change ceilings, remove
what bwbpf installed and nothing else.

Everything goes over one raw NETLINK_ROUTE socket (rtnl.py) with the messages of
htbmsg.py; classes, by the ten thousand, in batches (htbmsg.py has the measurements). A
class change resets every field it does not carry, so every request carries rate, ceil,
bursts and quantum.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from bwbpf import classid, heap, htbmsg
from bwbpf.errors import Error
from bwbpf.rtnl import Rtnl
from bwbpf.tree import ClassSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstalledClass:
    handle: int
    parent: int
    rate_bps: int
    ceil_bps: int
    quantum: int
    bytes: int
    packets: int


def _bytes_per_s(bps: int) -> int:
    # HTB's unit is bytes/s; its smallest rate is 1 byte/s (8 bit/s).
    return max(1, bps // 8)


def installed_rate(bps: int) -> int:
    """The rate in bit/s a class holds once set to bps (HTB keeps whole bytes/s)."""
    return _bytes_per_s(bps) * 8


# HTB keeps its buffers as transmission times in a u32 of psched ticks (64 per µs), which
# overflows past ~274 s: a 1 byte/s class cannot have tc's usual MTU-sized burst.
MAX_BURST_SECONDS = 200
MTU = 1600


def _burst(bytes_per_s: int) -> int:
    """tc's default burst (a timer tick's worth of bytes plus an MTU), bounded in time."""
    return max(1, min(bytes_per_s // 1000 + MTU, bytes_per_s * MAX_BURST_SECONDS))


def _tick_in_usec() -> float:
    try:
        with open("/proc/net/psched") as f:
            return htbmsg.ticks_per_usec(f.read())
    except (OSError, ValueError) as exc:
        raise Error(f"cannot read the packet scheduler clock /proc/net/psched: {exc}") from None


def same(spec: ClassSpec, installed: InstalledClass) -> bool:
    """Whether a class already is what spec asks for, at HTB's byte/s resolution."""
    return (
        installed.parent == spec.parent
        and installed.rate_bps == installed_rate(spec.rate_bps)
        and installed.ceil_bps == installed_rate(spec.ceil_bps)
        and installed.quantum == spec.quantum
    )


class Plan(NamedTuple):
    """What makes an interface's classes a tree: the classes to create or change (parents
    first), and the bwbpf-scheme classes under ``1:`` the tree has not (leaves first)."""

    put: list[ClassSpec]
    stale: list[tuple[int, int]]


def differing(specs: Iterable[ClassSpec], installed: dict[int, InstalledClass]) -> list[ClassSpec]:
    """The specs ``installed`` lacks or holds otherwise, in their order."""
    return [s for s in specs if (have := installed.get(s.handle)) is None or not same(s, have)]


def difference(specs: Sequence[ClassSpec], installed: dict[int, InstalledClass]) -> Plan:
    """The ``Plan`` from ``installed`` to ``specs`` (parents before children in specs)."""
    return Plan(differing(specs, installed), Shaper.stale({s.handle for s in specs}, installed))


# Up to this many classes are read one request each, more by a dump of every class: at
# 20,005 classes a dump costs as much as a few hundred single requests.
GET_MAX = 64


class Shaper:
    """The HTB tree on one interface. Use as a context manager (it holds a netlink socket)."""

    def __init__(
        self, ifname: str, netns: str | None = None, progress: Callable[[], None] | None = None
    ) -> None:
        """``progress`` is called after each batch of requests (``Rtnl.progress``)."""
        self.ifname = ifname
        self._netns = netns
        self._rtnl = Rtnl(netns, progress)
        try:
            index = self._interface_index(ifname, netns)
        except BaseException:
            self.close()
            raise
        if index is None:
            self.close()
            raise Error(f"no such network interface: {ifname}")
        self.ifindex: int = index
        self._tick_in_usec = _tick_in_usec()

    def _interface_index(self, ifname: str, netns: str | None) -> int | None:
        if netns is not None:  # if_nametoindex looks in our own namespace
            link = self._rtnl.link(name=ifname)
            return None if link is None else link.index
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            return None

    def close(self) -> None:
        self._rtnl.close()

    def __enter__(self) -> Shaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put_request(self, spec: ClassSpec) -> tuple[Callable[[int], bytes], str]:
        rate, ceil = _bytes_per_s(spec.rate_bps), _bytes_per_s(spec.ceil_bps)

        def build(seq: int) -> bytes:
            return htbmsg.put_class(
                seq,
                self.ifindex,
                spec.handle,
                spec.parent,
                rate=rate,
                ceil=ceil,
                burst=_burst(rate),
                cburst=_burst(ceil),
                quantum=spec.quantum,
                tick_in_usec=self._tick_in_usec,
            )

        return build, f"set HTB class {classid.format_handle(spec.handle)} on {self.ifname}"

    def _delete_request(self, handle: int, parent: int) -> tuple[Callable[[int], bytes], str]:
        def build(seq: int) -> bytes:
            return htbmsg.delete_class(seq, self.ifindex, handle, parent)

        return build, f"delete HTB class {classid.format_handle(handle)} on {self.ifname}"

    def root_is_ours(self) -> bool:
        """Whether the root qdisc is HTB with bwbpf's handle."""
        return self._rtnl.root_qdisc(self.ifindex) == (classid.QDISC_HANDLE, "htb")

    def ensure_qdisc(self) -> bool:
        """Make HTB ``1:`` the root qdisc, its default the default slice's normal class.
        Returns True when it had to be created (replacing whatever root qdisc was there)."""
        if self.root_is_ours():
            return False
        default_minor = classid.slice_class(0, 0) & 0xFFFF
        self._rtnl.run(
            [
                (
                    lambda seq: htbmsg.put_htb_root(
                        seq, self.ifindex, classid.QDISC_HANDLE, default_minor
                    ),
                    f"install the HTB root qdisc on {self.ifname}",
                )
            ]
        )
        log.info("%s: installed HTB root qdisc 1:", self.ifname)
        return True

    def classes(self) -> dict[int, InstalledClass]:
        """Every HTB class on the interface, with its counters."""
        return {
            c.handle: InstalledClass(
                handle=c.handle,
                # The kernel reports a class hanging from the qdisc itself as TC_H_ROOT.
                parent=classid.QDISC_HANDLE if c.parent == htbmsg.TC_H_ROOT else c.parent,
                rate_bps=c.rate * 8,
                ceil_bps=c.ceil * 8,
                quantum=c.quantum,
                bytes=c.bytes,
                packets=c.packets,
            )
            for c in self._rtnl.classes(self.ifindex)
        }

    def plan(self, tree: Callable[[], Sequence[ClassSpec]]) -> Plan:
        """The ``Plan`` to ``tree()``, worked out in a forked child (``heap.isolated``) that
        lists every class on a netlink socket of its own: at 20,005 classes the listing
        and the tree are ~11 MB of objects for a moment, which in the daemon's own heap
        left pymalloc arenas resident after every full comparison and reload."""
        return heap.isolated(
            lambda: self._plan_here(tree()), "the process comparing the HTB classes"
        )

    def _plan_here(self, specs: Sequence[ClassSpec]) -> Plan:
        with Shaper(self.ifname, self._netns) as own:
            return difference(specs, own.classes())

    def ceilings(self, handles: Collection[int] | None = None) -> dict[int, int]:
        """The ceiling in force (bit/s) of each HTB class, or of those of ``handles`` that
        exist: a few are asked for one by one, more by one dump without counters."""
        if handles is not None and len(handles) <= GET_MAX:
            found = self._rtnl.get_classes(self.ifindex, sorted(handles))
        else:
            found = self._rtnl.classes(self.ifindex, stats=False)
            if handles is not None:
                found = [c for c in found if c.handle in handles]
        return {c.handle: c.ceil * 8 for c in found}

    def apply(
        self, specs: Iterable[ClassSpec], installed: dict[int, InstalledClass] | None = None
    ) -> int:
        """Create missing classes and change the ones that differ, in one batch of netlink
        requests; returns the number of changes. Parents must come before their children."""
        if installed is None:
            installed = self.classes()
        return self.put(differing(specs, installed))

    def put(self, specs: Iterable[ClassSpec]) -> int:
        """Create or change these classes as they are, without listing what is installed
        (the caller knows what it set); returns how many. Parents before children."""
        requests = [self._put_request(spec) for spec in specs]
        self._rtnl.run(requests)
        return len(requests)

    def remove_stale(self, stale: Sequence[tuple[int, int]]) -> list[int]:
        """Delete the (handle, parent) classes of a ``Plan.stale`` (slices that left the
        config), saying so; returns their handles."""
        self.delete(stale)
        log_removed(self.ifname, stale)
        return [handle for handle, _ in stale]

    @staticmethod
    def stale(keep: Iterable[int], installed: dict[int, InstalledClass]) -> list[tuple[int, int]]:
        """(handle, parent) of the bwbpf-scheme classes under ``1:`` not in keep, leaves
        before the parents they hang from (a class with children cannot be deleted)."""
        wanted = set(keep)
        stale = [h for h in installed if h >> 16 == classid.HTB_MAJOR and h not in wanted]
        depth = {h: _depth(h, installed) for h in stale}
        stale.sort(key=lambda h: -depth[h])
        return [(h, installed[h].parent) for h in stale]

    def delete(self, classes: Sequence[tuple[int, int]]) -> None:
        """Delete these (handle, parent) classes, in order; one already gone is no error."""
        self._rtnl.run([self._delete_request(h, p) for h, p in classes], ignore=(errno.ENOENT,))

    def remove(self) -> bool:
        """Delete bwbpf's root qdisc (and with it every class and the filter). The kernel
        puts the device's default qdisc back. Returns False when there was nothing of ours."""
        if not self.root_is_ours():
            return False
        self._rtnl.run(
            [
                (
                    lambda seq: htbmsg.delete_root_qdisc(seq, self.ifindex, classid.QDISC_HANDLE),
                    f"delete the HTB root qdisc of {self.ifname}",
                )
            ]
        )
        return True


def log_removed(ifname: str, classes: Sequence[tuple[int, int]]) -> None:
    """One line for classes deleted because no configured slice owns them."""
    if classes:
        shown = ", ".join(classid.format_handle(h) for h, _ in classes[:8])
        more = f" and {len(classes) - 8} more" if len(classes) > 8 else ""
        log.info(
            "%s: removed %d classes that belong to no configured slice: %s%s",
            ifname,
            len(classes),
            shown,
            more,
        )


def _depth(handle: int, installed: dict[int, InstalledClass]) -> int:
    d = 0
    while handle in installed and d < 8:
        handle = installed[handle].parent
        d += 1
    return d
