"""One raw NETLINK_ROUTE socket: batched requests, gets and dumps of htbmsg's messages
(the HTB tree, bwbpf's filter, one device's link), optionally made in another network
namespace. Everything bwbpf asks the kernel over rtnetlink goes through here."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar

from bwbpf import htbmsg
from bwbpf.errors import Error

T = TypeVar("T")
log = logging.getLogger(__name__)

# Not in Python 3.11's socket module (include/uapi/linux/netlink.h, sched.h).
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
CLONE_NEWNET = 0x40000000


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


class Rtnl:
    """Requests and dumps over one raw NETLINK_ROUTE socket. A context manager."""

    # Requests per sendmsg. Each acknowledgement is its own skb of ~1 kB truesize in the
    # receive buffer (212 kB by default, net.core.rmem_default); past it the kernel drops
    # them and recv fails with ENOBUFS (seen with 500).
    BATCH = 64

    def __init__(self, netns: str | None, progress: Callable[[], None] | None = None) -> None:
        # Called after each batch of run(): a caller that must show it is alive while the
        # kernel takes tens of seconds over thousands of class creations (the watchdog).
        self.progress = progress
        self.sock = _route_socket(netns)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 18)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> Iterable[htbmsg.Message]:
        n = self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
        if n > len(self.buf):
            raise Error(f"netlink message of {n} bytes exceeds the {len(self.buf)}-byte buffer")
        return htbmsg.messages(memoryview(self.buf)[:n])

    def run(
        self, requests: Sequence[tuple[Callable[[int], bytes], str]], ignore: Collection[int] = ()
    ) -> None:
        """Send the requests (each a message built for a sequence number, and what it does
        for an error message) in batches; raise the first failure once its batch is done,
        leaving out the errnos in ``ignore``. The kernel handles the requests of a batch one
        after the other, in order."""
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
                    if err and err not in ignore and failure is None:
                        failure = f"cannot {doing}: {os.strerror(err)}" + (
                            f" ({text})" if text else ""
                        )
                    elif text:
                        log.debug("%s: kernel says: %s", doing, text)
            if failure is not None:
                raise Error(failure)
            if self.progress is not None:
                self.progress()

    def classes(self, ifindex: int, stats: bool = True) -> list[htbmsg.HtbClass]:
        """Every HTB class of the device (with its counters, unless not ``stats``)."""
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

    def ask(
        self,
        builds: Sequence[Callable[[int], bytes]],
        msg_type: int,
        parse: Callable[[memoryview], T | None],
        doing: str,
        absent: tuple[int, ...] = (errno.ENOENT,),
    ) -> list[T]:
        """Send requests that each get one answer of ``msg_type`` and then an ack (or only an
        error: one of ``absent`` means there is nothing to answer), in batches."""
        out = []
        for start in range(0, len(builds), self.BATCH):
            pending: set[int] = set()
            batch = bytearray()
            for build in builds[start : start + self.BATCH]:
                self.seq += 1
                pending.add(self.seq)
                batch += build(self.seq)
            self.sock.send(batch)
            while pending:
                for msg in self._recv():
                    if msg.seq not in pending:
                        continue
                    if msg.type == msg_type:
                        item = parse(msg.payload)
                        if item is not None:
                            out.append(item)
                    elif msg.type == htbmsg.NLMSG_ERROR:
                        pending.discard(msg.seq)
                        err, text = htbmsg.parse_error(msg.payload, msg.flags)
                        if err and err not in absent:
                            raise Error(f"cannot {doing}: {os.strerror(err)} {text}".strip())
        return out

    def get_classes(self, ifindex: int, handles: Sequence[int]) -> list[htbmsg.HtbClass]:
        """The classes of ``handles`` that exist, one request each (no counters)."""

        def request(handle: int) -> Callable[[int], bytes]:
            return lambda seq: htbmsg.get_class(seq, ifindex, handle)

        return self.ask(
            [request(h) for h in handles],
            htbmsg.RTM_NEWTCLASS,
            lambda payload: htbmsg.parse_class(payload, stats=False),
            "read an HTB class",
        )

    def root_qdisc(self, ifindex: int) -> tuple[int, str] | None:
        """(handle, kind) of the device's root qdisc; None if it has none (or is gone)."""
        for index, handle, parent, kind in self._dump(
            htbmsg.dump_qdiscs(self.seq + 1),
            htbmsg.RTM_NEWQDISC,
            htbmsg.parse_qdisc,
            "list qdiscs",
        ):
            if index == ifindex and parent == htbmsg.TC_H_ROOT:
                return handle, kind
        return None

    def link(self, ifindex: int = 0, name: str | None = None) -> htbmsg.Link | None:
        """A device, by index or name; None when there is no such device."""
        found = self.ask(
            [lambda seq: htbmsg.get_link(seq, ifindex, name)],
            htbmsg.RTM_NEWLINK,
            htbmsg.parse_link,
            "read the network device",
            absent=(errno.ENODEV, errno.ENOENT),
        )
        return found[0] if found else None


def bpf_filters(ifindex: int, parent: int) -> list[tuple[str, int | None]]:
    """(name, program id) of each cls_bpf filter on a qdisc of this namespace."""
    with Rtnl(None) as rtnl:
        return rtnl.bpf_filters(ifindex, parent)
