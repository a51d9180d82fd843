"""HTB on the egress device through netlink: install the tree, change ceilings, remove
what bwbpf installed and nothing else.

The qdisc and links go through pyroute2. Classes, by the ten thousand, go through a raw
NETLINK_ROUTE socket with the messages of htbmsg.py, in batches (htbmsg.py has the
measurements). A class change resets every field it does not carry, so every request
carries rate, ceil, bursts and quantum.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bwbpf import classid, htbmsg
from bwbpf.errors import Error
from bwbpf.tree import ClassSpec

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
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


# Not in Python 3.11's socket module (include/uapi/linux/netlink.h, sched.h).
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
CLONE_NEWNET = 0x40000000
# Up to this many classes are read one request each, more by a dump of every class: at
# 20,005 classes a dump costs as much as a few hundred single requests.
GET_MAX = 64


def _route_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket, made in the named network namespace if one is given (a socket
    stays in the namespace it was made in; only this thread enters it, and comes back)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        raise Error(f"no such network namespace: {netns} ({exc.strerror})") from None
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise Error(
                f"cannot enter network namespace {netns}: {os.strerror(ctypes.get_errno())}"
            )
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original namespace")
    finally:
        os.close(there)
        os.close(here)


class _ClassChannel:
    """HTB class requests and dumps over one raw NETLINK_ROUTE socket."""

    # Requests per sendmsg. Each acknowledgement is its own skb of ~1 kB truesize in the
    # receive buffer (212 kB by default, net.core.rmem_default); past it the kernel drops
    # them and recv fails with ENOBUFS (seen with 500).
    BATCH = 64

    def __init__(self, netns: str | None) -> None:
        self.sock = _route_socket(netns)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 18)

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> Iterable[htbmsg.Message]:
        n = self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
        if n > len(self.buf):
            raise Error(f"netlink message of {n} bytes exceeds the {len(self.buf)}-byte buffer")
        return htbmsg.messages(memoryview(self.buf)[:n])

    def run(self, requests: Sequence[tuple[Callable[[int], bytes], str]]) -> None:
        """Send the requests (each a message built for a sequence number, and what it does
        for an error message) in batches; raise the first failure once its batch is done.
        The kernel handles the requests of a batch one after the other, in order."""
        for start in range(0, len(requests), self.BATCH):
            pending: dict[int, str] = {}
            out = bytearray()
            for build, doing in requests[start : start + self.BATCH]:
                self.seq += 1
                pending[self.seq] = doing
                out += build(self.seq)
            self.sock.send(out)
            failure = None
            while pending:
                for msg in self._recv():
                    if msg.type != htbmsg.NLMSG_ERROR or msg.seq not in pending:
                        continue
                    doing = pending.pop(msg.seq)
                    err, text = htbmsg.parse_error(msg.payload, msg.flags)
                    if err and failure is None:
                        failure = f"cannot {doing}: {os.strerror(err)}" + (
                            f" ({text})" if text else ""
                        )
                    elif text:
                        log.debug("%s: kernel says: %s", doing, text)
            if failure is not None:
                raise Error(failure)

    def dump(self, ifindex: int, stats: bool = True) -> list[htbmsg.HtbClass]:
        return self._dump(
            htbmsg.dump_classes(self.seq + 1, ifindex),
            htbmsg.RTM_NEWTCLASS,
            lambda payload: htbmsg.parse_class(payload, stats),
            "list HTB classes",
        )

    def bpf_filters(self, ifindex: int, parent: int) -> list[tuple[str, int | None]]:
        """(name, program id) of each cls_bpf filter on a qdisc."""
        return self._dump(
            htbmsg.dump_filters(self.seq + 1, ifindex, parent),
            htbmsg.RTM_NEWTFILTER,
            htbmsg.parse_bpf_filter,
            "list tc filters",
            absent=(errno.ENOENT, errno.EINVAL),  # no such qdisc: no filter on it
        )

    def _dump(
        self,
        request: bytes,
        msg_type: int,
        parse: Callable[[memoryview], T | None],
        doing: str,
        absent: tuple[int, ...] = (),
    ) -> list[T]:
        self.seq += 1
        seq = self.seq
        self.sock.send(request)
        out = []
        while True:
            for msg in self._recv():
                if msg.seq != seq:
                    continue
                if msg.type in (htbmsg.NLMSG_DONE, htbmsg.NLMSG_ERROR):
                    err, text = htbmsg.parse_error(msg.payload, msg.flags)
                    if err in absent:
                        return []
                    if err:
                        raise Error(f"cannot {doing}: {os.strerror(err)} {text}".strip())
                    return out
                if msg.type == msg_type:
                    item = parse(msg.payload)
                    if item is not None:
                        out.append(item)

    def get(self, ifindex: int, handles: Sequence[int]) -> list[htbmsg.HtbClass]:
        """The classes of ``handles`` that exist, one request each (no counters)."""
        out = []
        for start in range(0, len(handles), self.BATCH):
            pending: set[int] = set()
            batch = bytearray()
            for handle in handles[start : start + self.BATCH]:
                self.seq += 1
                pending.add(self.seq)
                batch += htbmsg.get_class(self.seq, ifindex, handle)
            self.sock.send(batch)
            while pending:
                for msg in self._recv():
                    if msg.seq not in pending:
                        continue
                    if msg.type == htbmsg.RTM_NEWTCLASS:
                        cls = htbmsg.parse_class(msg.payload, stats=False)
                        if cls is not None:
                            out.append(cls)
                    elif msg.type == htbmsg.NLMSG_ERROR:
                        pending.discard(msg.seq)
                        err, text = htbmsg.parse_error(msg.payload, msg.flags)
                        if err and err != errno.ENOENT:
                            raise Error(
                                f"cannot read an HTB class: {os.strerror(err)} {text}".strip()
                            )
        return out


def bpf_filters(ifindex: int, parent: int) -> list[tuple[str, int | None]]:
    """(name, program id) of each cls_bpf filter on a qdisc of this namespace."""
    channel = _ClassChannel(None)
    try:
        return channel.bpf_filters(ifindex, parent)
    finally:
        channel.close()


class Shaper:
    """The HTB tree on one interface. Use as a context manager (it holds netlink sockets)."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname = ifname
        self._netns = netns
        # pyroute2 (the qdisc) is imported and opened on first use: listing and changing
        # classes, all `bwbpf stat` and most ticks need, go without it (its import alone is
        # ~0.1 s here and seconds under software emulation).
        self._pyroute: Any = None
        if netns is None:
            try:
                self.ifindex: int = socket.if_nametoindex(ifname)
            except OSError:
                raise Error(f"no such network interface: {ifname}") from None
        else:
            found = self._ipr.link_lookup(ifname=ifname)
            if not found:
                self.close()
                raise Error(f"no such network interface: {ifname}")
            self.ifindex = found[0]
        try:
            self._classes = _ClassChannel(netns)
        except BaseException:
            self.close()
            raise
        self._tick_in_usec = _tick_in_usec()

    @property
    def _ipr(self) -> Any:
        if self._pyroute is None:
            from pyroute2 import IPRoute

            self._pyroute = IPRoute(netns=self._netns) if self._netns else IPRoute()
        return self._pyroute

    def close(self) -> None:
        if getattr(self, "_classes", None) is not None:
            self._classes.close()
            self._classes = None  # type: ignore[assignment]
        if self._pyroute is not None:
            self._pyroute.close()
            self._pyroute = None

    def __enter__(self) -> Shaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tc(self, command: str, kind: str | None, handle: int, **kwarg: Any) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.tc(command, kind, self.ifindex, handle, **kwarg)
        except NetlinkError as exc:
            what = classid.format_handle(handle)
            raise Error(f"{self.ifname}: tc {command} {what}: {exc.args[-1]}") from None

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
        for q in self._ipr.get_qdiscs(index=self.ifindex):
            if q["parent"] == 0xFFFFFFFF:
                return bool(q.get_attr("TCA_KIND") == "htb" and q["handle"] == classid.QDISC_HANDLE)
        return False

    def ensure_qdisc(self) -> bool:
        """Make HTB ``1:`` the root qdisc, its default the default slice's normal class.
        Returns True when it had to be created (replacing whatever root qdisc was there)."""
        if self.root_is_ours():
            return False
        default_minor = classid.slice_class(0, 0) & 0xFFFF
        self._tc("replace", "htb", classid.QDISC_HANDLE, parent=0xFFFFFFFF, default=default_minor)
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
            for c in self._classes.dump(self.ifindex)
        }

    def ceilings(self, handles: Collection[int] | None = None) -> dict[int, int]:
        """The ceiling in force (bit/s) of each HTB class, or of those of ``handles`` that
        exist: a few are asked for one by one, more by one dump without counters."""
        if handles is not None and len(handles) <= GET_MAX:
            found = self._classes.get(self.ifindex, sorted(handles))
        else:
            found = self._classes.dump(self.ifindex, stats=False)
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
        return self.put(
            spec
            for spec in specs
            if (have := installed.get(spec.handle)) is None or not same(spec, have)
        )

    def put(self, specs: Iterable[ClassSpec]) -> int:
        """Create or change these classes as they are, without listing what is installed
        (the caller knows what it set); returns how many. Parents before children."""
        requests = [self._put_request(spec) for spec in specs]
        self._classes.run(requests)
        return len(requests)

    def remove_others(
        self, keep: Iterable[int], installed: dict[int, InstalledClass] | None = None
    ) -> list[int]:
        """Delete bwbpf-scheme classes under ``1:`` that are not in keep (slices that left
        the config); returns their handles. Leaves go before the parents they hang from."""
        if installed is None:
            installed = self.classes()
        wanted = set(keep)
        stale = [h for h in installed if h >> 16 == classid.HTB_MAJOR and h not in wanted]
        # Children first: a class with children cannot be deleted.
        depth = {h: _depth(h, installed) for h in stale}
        stale.sort(key=lambda h: -depth[h])
        self._classes.run([self._delete_request(h, installed[h].parent) for h in stale])
        for h in stale:
            log.info(
                "%s: removed class %s, which belongs to no configured slice",
                self.ifname,
                classid.format_handle(h),
            )
        return stale

    def remove(self) -> bool:
        """Delete bwbpf's root qdisc (and with it every class and the filter). The kernel
        puts the device's default qdisc back. Returns False when there was nothing of ours."""
        if not self.root_is_ours():
            return False
        self._tc("del", "htb", classid.QDISC_HANDLE, parent=0xFFFFFFFF)
        return True


def _depth(handle: int, installed: dict[int, InstalledClass]) -> int:
    d = 0
    while handle in installed and d < 8:
        handle = installed[handle].parent
        d += 1
    return d
