"""The devices the benchmarks run on: a veth pair in this namespace, or two network
namespaces joined by a veth pair for a real daemon and its traffic. Every name starts with
"bwbn" (or the prefix a part asks for) and a random suffix, and everything made is removed
on the way out, also after a failure."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "bwbn"
# Inside the namespaces only: these addresses never meet the host's.
SRC_IP = "10.99.0.1"
DST_IP = "10.99.0.2"


def unique(prefix: str = PREFIX) -> str:
    """A name no other run uses: interface names have 15 bytes, so a short suffix."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def veth() -> Iterator[str]:
    """A veth pair in this namespace; yields the first device's name."""
    from pyroute2 import IPRoute

    name = unique()
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
        try:
            yield name
        finally:
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])


@dataclass(frozen=True)
class Namespaces:
    """``src`` holds ``dev`` (bwbpf's egress device, SRC_IP); its peer in ``dst`` has
    DST_IP."""

    src: str
    dst: str
    dev: str
    peer: str

    def in_src(self, *cmd: str) -> list[str]:
        # nsenter switches only the network namespace (and, without --fork, execs in
        # place, so the pid is the command's): bpffs and /proc stay this process's.
        return ["nsenter", f"--net=/run/netns/{self.src}", *cmd]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@contextlib.contextmanager
def namespaces(prefix: str = PREFIX) -> Iterator[Namespaces]:
    """Two namespaces and the veth pair between them, removed (with everything in them)
    whatever happens inside the block. ``prefix`` (4 characters) starts their names: a run
    that goes on for an hour next to others can be told apart by it."""
    tag = unique(prefix)
    ns = Namespaces(src=f"{tag}s", dst=f"{tag}d", dev=f"{tag}a", peer=f"{tag}b")
    made: list[str] = []
    try:
        for name in (ns.src, ns.dst):
            _ip("netns", "add", name)
            made.append(name)
        # One request makes both ends in their namespaces: none is ever left in this one.
        pair = f"{ns.dev} netns {ns.src} type veth peer name {ns.peer} netns {ns.dst}"
        _ip("link", "add", *pair.split())
        for name, dev, addr in ((ns.src, ns.dev, SRC_IP), (ns.dst, ns.peer, DST_IP)):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        # A permanent neighbour: thousands of datagrams a second never wait on (or get
        # dropped from) an ARP resolution queue.
        peer = json.loads(_ip("-n", ns.dst, "-j", "link", "show", ns.peer).stdout)[0]
        mac = peer["address"]
        _ip(*f"-n {ns.src} neigh replace {DST_IP} lladdr {mac} dev {ns.dev} nud permanent".split())
        yield ns
    finally:
        # Deleting a namespace deletes its veth end, and with it the pair and its qdiscs.
        for name in reversed(made):
            done = _ip("netns", "del", name, check=False)
            if done.returncode:
                print(
                    f"bench: could not delete netns {name}: {done.stderr.strip()}", file=sys.stderr
                )
