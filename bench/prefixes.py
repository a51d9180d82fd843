"""Random IPv4/IPv6 prefixes of which none contains another, as exempt lists and source
matches, with a membership test for drawing addresses inside or outside them."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

from bwbpf.config import Network

# Prefix lengths drawn for random prefixes, weighted roughly like a routing table.
V4_LENGTHS = (16, 18, 20, 22, 23, 24, 24, 24, 24, 24, 28, 32)
V6_LENGTHS = (29, 32, 36, 40, 44, 48, 48, 48, 48, 56, 64, 128)


class PrefixSet:
    """Random prefixes of which none contains another, and a membership test."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.bits = 32 if version == 4 else 128
        self.chosen: set[tuple[int, int]] = set()  # (prefixlen, top prefixlen bits)
        self.covered: set[tuple[int, int]] = set()  # every proper supernet of a chosen one
        self.lengths: set[int] = set()
        self.nets: list[Network] = []

    def _contains(self, length: int, top: int) -> bool:
        """Whether a chosen prefix contains (or is) the prefix length/top."""
        return any((n, top >> (length - n)) in self.chosen for n in self.lengths if n <= length)

    def add_random(self, rng: random.Random, count: int, lengths: Sequence[int]) -> None:
        goal = len(self.nets) + count
        while len(self.nets) < goal:
            length = rng.choice(lengths)
            top = rng.getrandbits(length)
            if (length, top) in self.covered or self._contains(length, top):
                continue
            self.chosen.add((length, top))
            self.lengths.add(length)
            for n in range(length):
                self.covered.add((n, top >> (length - n)))
            address = top << (self.bits - length)
            self.nets.append(ipaddress.ip_network((address, length)))

    def covers(self, address: str) -> bool:
        value = int(ipaddress.ip_address(address))
        return self._contains(self.bits, value)

    def address_inside(self, rng: random.Random) -> str:
        """A random address inside a random one of the prefixes."""
        net = rng.choice(self.nets)
        host_bits = self.bits - net.prefixlen
        return str(ipaddress.ip_address(int(net.network_address) + rng.getrandbits(host_bits)))

    def address_outside(self, rng: random.Random) -> str:
        while True:
            value = rng.getrandbits(self.bits)
            if not self._contains(self.bits, value):
                return str(ipaddress.ip_address(value))
