"""HTB on the egress device through netlink (pyroute2): install the tree, change ceilings,
remove what bwbpf installed and nothing else.

pyroute2 pitfalls measured here (DESIGN.md): a bare integer rate is *bytes*/s; a class
change resets every field it does not carry, so every request carries rate, ceil and
quantum; rates of 2^32 bytes/s and more travel as TCA_HTB_RATE64/CEIL64 (pyroute2 adds them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bwbpf import classid
from bwbpf.errors import Error
from bwbpf.tree import ClassSpec

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


# HTB keeps its buffers as transmission times in a u32 of psched ticks (64 per µs), which
# overflows past ~274 s: a 1 byte/s class cannot have tc's usual MTU-sized burst.
MAX_BURST_SECONDS = 200
MTU = 1600


def _burst(bytes_per_s: int) -> int:
    """tc's default burst (a timer tick's worth of bytes plus an MTU), bounded in time."""
    return max(1, min(bytes_per_s // 1000 + MTU, bytes_per_s * MAX_BURST_SECONDS))


def _htb_options(spec: ClassSpec) -> dict[str, Any]:
    """TCA_OPTIONS of an HTB class, without the legacy rate tables: the kernel only uses
    them to guess the link layer (htb_change_class), pyroute2 spends a third of a class
    change computing them, and at 1 byte/s their entries overflow a u32."""
    from pyroute2.netlink.rtnl.tcmsg import sched_htb

    rate, ceil = _bytes_per_s(spec.rate_bps), _bytes_per_s(spec.ceil_bps)
    opts: dict[str, Any] = sched_htb.get_class_parameters(
        {
            "rate": rate,
            "ceil": ceil,
            "burst": _burst(rate),
            "cburst": _burst(ceil),
            "quantum": spec.quantum,
            "prio": 0,
        }
    )
    opts["attrs"] = [a for a in opts["attrs"] if a[0] not in ("TCA_HTB_RTAB", "TCA_HTB_CTAB")]
    return opts


def same(spec: ClassSpec, installed: InstalledClass) -> bool:
    """Whether a class already is what spec asks for, at HTB's byte/s resolution."""
    return (
        installed.parent == spec.parent
        and installed.rate_bps == _bytes_per_s(spec.rate_bps) * 8
        and installed.ceil_bps == _bytes_per_s(spec.ceil_bps) * 8
        and installed.quantum == spec.quantum
    )


class Shaper:
    """The HTB tree on one interface. Use as a context manager (one netlink socket)."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        from pyroute2 import IPRoute

        self.ifname = ifname
        self._ipr = IPRoute(netns=netns) if netns else IPRoute()
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            self._ipr.close()
            raise Error(f"no such network interface: {ifname}")
        self.ifindex: int = found[0]

    def close(self) -> None:
        self._ipr.close()

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

    def _class_request(
        self,
        msg_type: int,
        flags: int,
        handle: int,
        parent: int,
        attrs: list[list[Any]],
        doing: str,
    ) -> None:
        """One class request built by hand: pyroute2's tc("...-class") runs every request,
        deletes included, through its HTB parameter code (legacy rate tables and all)."""
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.rtnl.tcmsg import tcmsg

        msg = tcmsg()
        msg["index"] = self.ifindex
        msg["handle"] = handle
        msg["parent"] = parent
        msg["attrs"] = attrs
        # pyroute2 0.9.7's synchronous nlm_request reads a status key only its own callers
        # set; without it the request raises KeyError before being sent.
        self._ipr.status["nlm_generator"] = False
        try:
            self._ipr.nlm_request(
                msg, msg_type=msg_type, msg_flags=NLM_F_REQUEST | NLM_F_ACK | flags
            )
        except NetlinkError as exc:
            what = classid.format_handle(handle)
            raise Error(f"{self.ifname}: cannot {doing} HTB class {what}: {exc.args[-1]}") from None

    def put_class(self, spec: ClassSpec) -> None:
        """Create the class or change it to spec (NLM_F_CREATE | NLM_F_REPLACE)."""
        from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE
        from pyroute2.netlink.rtnl import RTM_NEWTCLASS

        attrs = [["TCA_KIND", "htb"], ["TCA_OPTIONS", _htb_options(spec)]]
        self._class_request(
            RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_REPLACE, spec.handle, spec.parent, attrs, "set"
        )

    def del_class(self, handle: int, parent: int) -> None:
        from pyroute2.netlink.rtnl import RTM_DELTCLASS

        self._class_request(RTM_DELTCLASS, 0, handle, parent, [["TCA_KIND", "htb"]], "delete")

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
        out: dict[int, InstalledClass] = {}
        for msg in self._ipr.get_classes(index=self.ifindex):
            if msg.get_attr("TCA_KIND") != "htb":
                continue
            opts = msg.get_attr("TCA_OPTIONS")
            parms = opts.get_attr("TCA_HTB_PARMS") if opts is not None else None
            if parms is None:
                continue
            rate = opts.get_attr("TCA_HTB_RATE64") or parms["rate"]
            ceil = opts.get_attr("TCA_HTB_CEIL64") or parms["ceil"]
            stats = msg.get_attr("TCA_STATS2")
            basic = stats.get_attr("TCA_STATS_BASIC") if stats is not None else None
            out[msg["handle"]] = InstalledClass(
                handle=msg["handle"],
                # The kernel reports a class hanging from the qdisc itself as TC_H_ROOT.
                parent=classid.QDISC_HANDLE if msg["parent"] == 0xFFFFFFFF else msg["parent"],
                rate_bps=rate * 8,
                ceil_bps=ceil * 8,
                quantum=parms["quantum"],
                bytes=basic["bytes"] if basic is not None else 0,
                packets=basic["packets"] if basic is not None else 0,
            )
        return out

    def apply(
        self, specs: Iterable[ClassSpec], installed: dict[int, InstalledClass] | None = None
    ) -> int:
        """Create missing classes and change the ones that differ; returns the number of
        netlink changes made. Parents must come before their children in specs."""
        if installed is None:
            installed = self.classes()
        changes = 0
        for spec in specs:
            have = installed.get(spec.handle)
            if have is None or not same(spec, have):
                self.put_class(spec)
                changes += 1
        return changes

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
        for h in stale:
            self.del_class(h, installed[h].parent)
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
