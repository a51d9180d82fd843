"""Per-packet cost of bpf/egress.c through BPF_PROG_TEST_RUN (the kernel reports the
average ns per run) with 10,000 slices matched by mark and 10,000 exempt prefixes per
family, against an empty tc program: the common path, the default slice, an exempt
destination, IPv6, and the worst case (every match kind configured and missing, destination
not in the dclass cache)."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import statistics
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cgroups import CGROUP_LEVELS, cgroup_chains
from bench.configs import SLICES, slice_toml, toml_config
from bench.prefixes import V4_LENGTHS, V6_LENGTHS, PrefixSet
from bench.results import Result
from bench.testrun import Loaded, frame, load_empty, test_run
from bwbpf import bpfsys, config, datapath, layout, limits

EXEMPT_PREFIXES = 10_000  # per family
# A plain hash + LPM classifier measured 5.8x the empty program; the target is well below.
COMMON_PATH_MAX_RATIO = 2.5
# A socket matched by cgroup or uid, after its first packet (the per-socket slice cache).
SOCKET_PATH_MAX_RATIO = 3.0
# uids of the worst case's slices start here; BPF_PROG_TEST_RUN's dummy socket has uid 0.
UID_BASE = 100_000
MARK_SLICE = 4242  # the slice the common path's packets belong to
SRC = {4: "10.9.0.1", 6: "fd00:9::1"}
HIT_SET = 1000  # destinations in the cache-hit reference set (well under the cache size)
MISS_FACTOR = 3  # the cache-miss set cycles through this many times the cache size
MISS_ROUNDS = 3  # alternations of the cached and the cycling set


@dataclass
class Case:
    name: str
    fd: int
    packet: bytes
    mark: int
    baseline: str
    # Run before each of the case's runs, untimed: sets what the case needs (a match epoch,
    # the cgroup of this process, which BPF_PROG_TEST_RUN's dummy socket takes).
    prepare: Callable[[], None] | None = None
    samples: list[int] = field(default_factory=list)


def run_cases(cases: Sequence[Case], repeat: int, runs: int) -> None:
    """Every case once per round, rounds interleaved so that drift hits all cases alike,
    after an uncounted warm-up run of each (which also fills the dclass cache)."""
    for case in cases:
        if case.prepare:
            case.prepare()
        test_run(case.fd, case.packet, case.mark, 1000)
    for _ in range(runs):
        for case in cases:
            if case.prepare:
                case.prepare()
            case.samples.append(test_run(case.fd, case.packet, case.mark, repeat))


def epoch_setter(bpf: Any, epoch: int, cgroup: Path | None) -> Callable[[], None]:
    """Sets the program's match epoch (0: no socket cache, so every run of a repeat pays
    what a socket's first packet pays) and moves this process to ``cgroup``."""
    table = bpf["settings"]

    def prepare() -> None:
        settings = table[ctypes.c_int(0)]
        settings.match_epoch = epoch
        table[ctypes.c_int(0)] = settings
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return prepare


def per_packet(
    fd: int, packets: Sequence[bytes], cached: Callable[[int], bool], passes: int = 2
) -> list[tuple[int, bool]]:
    """Single runs (repeat=1) of each packet, ``passes`` times over the list: the durations
    of the last pass, each with whether its destination was cached just before it ran."""
    out: list[tuple[int, bool]] = []
    for p in range(passes):
        last = p == passes - 1
        for i, packet in enumerate(packets):
            known = cached(i) if last else False
            d = test_run(fd, packet, 0, 1)
            if last:
                out.append((d, known))
    return out


def cache_probe(
    bpf: Any, fd: int, packets: Sequence[bytes], addresses: Sequence[str]
) -> Callable[[int], bool]:
    """Whether addresses[i] (the destination of packets[i]) is in the program's dclass
    cache on this CPU (the benchmark is pinned to one), read through the syscall.

    The cache is direct-mapped: an address can only ever sit in one slot. Rather than
    restate the program's hash here, each address's slot is learnt from the program
    itself: run its packet into an emptied cache and see which slot it filled (batches of
    addresses at a time; those that collided in a batch go again in the next one).
    """
    (cpu,) = os.sched_getaffinity(0)
    map_fd = bpf["dclass_cache"].map_fd
    ncpus = bpfsys.possible_cpus()
    entries = limits.DCLASS_CACHE_ENTRIES
    stride = ctypes.sizeof(layout.DclassSlot)
    assert stride % 8 == 0, "per-CPU values are padded to 8 bytes"

    def key(family: int, addr: bytes) -> tuple[int, bytes]:
        return (family, addr[:4] if family == 4 else addr)

    wanted = [
        key(ipaddress.ip_address(a).version, ipaddress.ip_address(a).packed) for a in addresses
    ]
    empty = (layout.DclassSlot * ncpus)()
    slot_of: dict[int, int] = {}
    pending = list(range(len(addresses)))
    batch = entries // 8  # few collisions per batch: about batch² / (2 × entries)
    while pending:
        for slot in range(entries):
            bpfsys.map_update(map_fd, ctypes.c_uint32(slot), empty)
        for i in pending[:batch]:
            test_run(fd, packets[i], 0, 1)
        raw = bpfsys.percpu_array_read(map_fd, entries, stride, ncpus)
        filled = {}
        for slot in range(entries):
            v = layout.DclassSlot.from_buffer_copy(raw, (slot * ncpus + cpu) * stride)
            if v.family:
                filled[key(v.family, bytes(v.addr))] = slot
        learnt = [i for i in pending[:batch] if wanted[i] in filled]
        if not learnt:
            raise RuntimeError("the dclass cache kept none of the addresses run into it")
        for i in learnt:
            slot_of[i] = filled[wanted[i]]
        pending = [i for i in pending if i not in slot_of]
    for slot in range(entries):
        bpfsys.map_update(map_fd, ctypes.c_uint32(slot), empty)

    value = (layout.DclassSlot * ncpus)()

    def cached(i: int) -> bool:
        bpfsys.map_lookup(map_fd, ctypes.c_uint32(slot_of[i]), value)
        v = value[cpu]
        return key(v.family, bytes(v.addr)) == wanted[i]

    return cached


def first_packet(fd: int, packet: bytes, bpf: Any, cgroup: Path) -> Result:
    """What a socket's first packet costs with the socket cache on (its storage is made
    and filled) against the cache off: one run per packet, each with a new dummy socket."""
    on = epoch_setter(bpf, layout.FIRST_MATCH_EPOCH, cgroup)
    off = epoch_setter(bpf, 0, cgroup)
    medians: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(MISS_ROUNDS):
        for cache, prepare in ((True, on), (False, off)):
            prepare()
            medians[cache].append(
                statistics.median(test_run(fd, packet, 0, 1) for _ in range(HIT_SET))
            )
    return Result(
        f"socket traffic: cgroup match at level 1 of {CGROUP_LEVELS}, a socket's first packet"
        " with the socket cache (its storage made), one run per packet",
        statistics.median(medians[True]),
        "ns/packet",
        "the same with the socket cache off (match epoch 0)",
        statistics.median(medians[False]),
        extra={"method": "median over rounds of each round's median", "rounds": MISS_ROUNDS},
    )


@dataclass(frozen=True)
class MarkProgram:
    """The classifier with SLICES slices matched by mark and EXEMPT_PREFIXES exempt
    prefixes per family: the common path's program, and the one bench/counters.py reads."""

    loaded: Loaded
    exempt: dict[int, PrefixSet]


def load_marks(bpffs: str, rng: random.Random, stack: contextlib.ExitStack) -> MarkProgram:
    """Loads (and pins under ``bpffs``) the mark program; ``stack`` unloads it."""
    exempt = {4: PrefixSet(4), 6: PrefixSet(6)}
    exempt[4].add_random(rng, EXEMPT_PREFIXES, V4_LENGTHS)
    exempt[6].add_random(rng, EXEMPT_PREFIXES, V6_LENGTHS)
    marks = [slice_toml(i, f"mark = {i}") for i in range(1, SLICES + 1)]
    cfg = config.parse(toml_config(bpffs, exempt[4].nets + exempt[6].nets, marks))
    stack.callback(datapath.remove_pins, cfg.pin_dir)
    bpf, fd, _ = datapath.load(cfg)
    stack.callback(bpf.cleanup)
    return MarkProgram(Loaded(bpf, fd, cfg.pin_dir), exempt)


def bench_datapath(
    prog: MarkProgram,
    bpffs: str,
    rng: random.Random,
    repeat: int,
    runs: int,
    stack: contextlib.ExitStack,
) -> list[Result]:
    """The per-packet results: the mark program's paths and the worst case's, each against
    the empty program."""
    exempt = prog.exempt
    fd = prog.loaded.fd
    # Destinations of the cached cases: one outside every exempt prefix, one inside.
    normal_dst = {f: exempt[f].address_outside(rng) for f in (4, 6)}
    exempt_dst = exempt[4].address_inside(rng)
    exempt_nets = exempt[4].nets + exempt[6].nets
    empty_bpf, empty_fd = load_empty()
    stack.callback(empty_bpf.cleanup)

    # The worst case: every slice also matches a uid and a source prefix per family, and
    # CGROUP_LEVELS more slices match cgroups at every level; the packet matches nothing.
    src = {4: PrefixSet(4), 6: PrefixSet(6)}
    src[4].add_random(rng, SLICES, V4_LENGTHS)
    src[6].add_random(rng, SLICES, V6_LENGTHS)
    worst_src = {f: src[f].address_outside(rng) for f in (4, 6)}
    worst_slices = [
        slice_toml(
            i,
            f'mark = {i}, uid = {UID_BASE + i}, src = ["{src[4].nets[i - 1]}",'
            f' "{src[6].nets[i - 1]}"]',
        )
        for i in range(1, SLICES + 1)
    ]
    chains = stack.enter_context(cgroup_chains(f"bwbpfbench-{uuid.uuid4().hex[:8]}"))
    levels = CGROUP_LEVELS if chains is not None else 0
    if chains is not None:
        worst_slices += [
            slice_toml(SLICES + level, f'cgroup = "{path}"')
            for level, path in enumerate(chains.configured, 1)
        ]
        worst_slices.append(slice_toml(SLICES + levels + 1, f'cgroup = "{chains.shallow[0]}"'))
    no_match = f"mark, uid, {levels} cgroup levels, src prefix all miss"
    worst_cfg = config.parse(toml_config(bpffs, exempt_nets, worst_slices))
    worst_bpf, worst_fd, worst_tables = datapath.load(worst_cfg)
    stack.callback(worst_bpf.cleanup)
    if worst_tables.problems:
        raise RuntimeError("; ".join(worst_tables.problems))

    v4 = frame(SRC[4], normal_dst[4])
    v6 = frame(SRC[6], normal_dst[6])
    empty = {4: "empty tc program, IPv4 frame", 6: "empty tc program, IPv6 frame"}
    # The no-match cases as a socket's first packet pays them (epoch 0: no socket cache)
    # and as its later packets do; this process at the bottom of the unconfigured chain.
    here = chains.other[-1] if chains is not None else None
    first = epoch_setter(worst_bpf, 0, here)
    later = epoch_setter(worst_bpf, layout.FIRST_MATCH_EPOCH, here)
    socket_cases = []
    if chains is not None:
        # At the bottom of the shallow chain: the walk finds its slice at the last level.
        inside = chains.shallow[-1]
        socket_cases = [
            Case(
                f"socket traffic: cgroup match at level 1 of {levels}, a socket's later packets,"
                " IPv4, cached destination",
                worst_fd,
                frame(worst_src[4], normal_dst[4]),
                0,
                empty[4],
                epoch_setter(worst_bpf, layout.FIRST_MATCH_EPOCH, inside),
            ),
            Case(
                f"socket traffic: cgroup match at level 1 of {levels}, socket cache off,"
                " IPv4, cached destination",
                worst_fd,
                frame(worst_src[4], normal_dst[4]),
                0,
                empty[4],
                epoch_setter(worst_bpf, 0, inside),
            ),
        ]
    cases = [
        Case(empty[4], empty_fd, v4, MARK_SLICE, ""),
        Case(empty[6], empty_fd, v6, MARK_SLICE, ""),
        Case("common path: mark match, IPv4, cached destination", fd, v4, MARK_SLICE, empty[4]),
        Case("default slice: no mark, IPv4, cached destination", fd, v4, 0, empty[4]),
        Case(
            "exempt destination: mark match, IPv4, cached",
            fd,
            frame(SRC[4], exempt_dst),
            MARK_SLICE,
            empty[4],
        ),
        Case("IPv6: mark match, cached destination", fd, v6, MARK_SLICE, empty[6]),
        Case(
            f"no match ({no_match}), IPv4, cached destination",
            worst_fd,
            frame(worst_src[4], normal_dst[4]),
            0,
            empty[4],
            first,
        ),
        Case(
            f"no match ({no_match}), IPv6, cached destination",
            worst_fd,
            frame(worst_src[6], normal_dst[6]),
            0,
            empty[6],
            first,
        ),
        Case(
            f"no match ({no_match}), a socket's later packets, IPv4, cached destination",
            worst_fd,
            frame(worst_src[4], normal_dst[4]),
            0,
            empty[4],
            later,
        ),
        *socket_cases,
    ]
    try:
        run_cases(cases, repeat, runs)
    finally:
        first()  # epoch 0 and back at the bottom of the other chain, for what follows
    by_name = {c.name: c for c in cases}
    results = []
    for case in cases:
        if not case.baseline:
            continue
        base = by_name[case.baseline]
        common = case.name.startswith("common path")
        socket_later = case.name.startswith("socket traffic") and "later packets" in case.name
        result = Result(
            case.name,
            statistics.median(case.samples),
            "ns/packet",
            case.baseline,
            statistics.median(base.samples),
            extra={
                "min": min(case.samples),
                "baseline_min": min(base.samples),
                "samples": case.samples,
                "baseline_samples": base.samples,
                "repeat": repeat,
            },
        )
        if common:
            result.target = f"ratio <= {COMMON_PATH_MAX_RATIO}"
            result.met = result.ratio <= COMMON_PATH_MAX_RATIO
        elif socket_later:
            result.target = f"ratio <= {SOCKET_PATH_MAX_RATIO}"
            result.met = result.ratio <= SOCKET_PATH_MAX_RATIO
        results.append(result)

    if chains is not None:
        results.append(first_packet(worst_fd, socket_cases[0].packet, worst_bpf, inside))
        first()

    # Destination-cache misses cannot be repeated by BPF_PROG_TEST_RUN (its second run of a
    # packet hits), so they are timed one run per packet, cycling through MISS_FACTOR times
    # the cache size, against cached destinations timed the same way: the difference is
    # what a miss adds, free of the per-call timer overhead both share.
    miss_n = MISS_FACTOR * limits.DCLASS_CACHE_ENTRIES
    worst = []
    for family in (4, 6):
        dsts = [
            exempt[family].address_inside(rng) if i % 2 else exempt[family].address_outside(rng)
            for i in range(miss_n)
        ]
        packets = [frame(worst_src[family], d) for d in dsts]
        probe = cache_probe(worst_bpf, worst_fd, packets, dsts)
        hit_medians: list[float] = []
        miss_medians: list[float] = []
        empty_medians: list[float] = []
        left_out = [0, 0]
        # Rounds alternate the sets so that both see the same load on the machine; the
        # cached set is refilled (one untimed pass) after each cycling pass evicted it.
        # Runs whose destination was not in the state its set stands for are left out.
        for _ in range(MISS_ROUNDS):
            runs = per_packet(worst_fd, packets[:HIT_SET], probe, 2)
            hit_medians.append(statistics.median(d for d, c in runs if c))
            left_out[0] += sum(not c for _, c in runs)
            runs = per_packet(worst_fd, packets, probe, 2)
            miss_medians.append(statistics.median(d for d, c in runs if not c))
            left_out[1] += sum(c for _, c in runs)
            empty_medians.append(
                statistics.median(test_run(empty_fd, pk, 0, 1) for pk in packets[:HIT_SET])
            )
        hit_ns, miss_ns = statistics.median(hit_medians), statistics.median(miss_medians)
        results.append(
            Result(
                f"dclass cache miss, IPv{family}, no match (one run per packet)",
                miss_ns,
                "ns/packet",
                "same program, cached destinations (one run per packet)",
                hit_ns,
                extra={
                    "min": min(miss_medians),
                    "baseline_min": min(hit_medians),
                    "method": "median over rounds of each round's median",
                    "rounds": MISS_ROUNDS,
                    "cached_set": HIT_SET,
                    "cached_set_misses_left_out": left_out[0],
                    "cycling_set": miss_n,
                    "cycling_set_hits_left_out": left_out[1],
                    "cache_entries": limits.DCLASS_CACHE_ENTRIES,
                    "exempt_fraction": 0.5,
                    "empty_program_one_run_ns": statistics.median(empty_medians),
                },
            )
        )
        cached = by_name[f"no match ({no_match}), IPv{family}, cached destination"]
        worst.append((family, miss_ns - hit_ns, cached))
    family, extra_ns, cached = max(worst, key=lambda w: statistics.median(w[2].samples) + w[1])
    base = by_name[cached.baseline]
    results.append(
        Result(
            f"WORST: IPv{family}, no match ({no_match}), destination not cached",
            statistics.median(cached.samples) + extra_ns,
            "ns/packet",
            cached.baseline,
            statistics.median(base.samples),
            extra={
                "min": min(cached.samples) + extra_ns,
                "method": "median of the cached worst case (repeat runs) plus the median"
                " cache-miss increment (one run per packet)",
                "miss_increment_ns": extra_ns,
                "cgroup_levels_walked": levels,
            },
        )
    )
    return results
