"""Chains of cgroups as deep as the classifier walks, for the datapath's worst case and its
socket traffic."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bwbpf import datapath, limits

# Slices matched by cgroup in the worst case: one per cgroup v2 level the classifier walks.
CGROUP_LEVELS = limits.MAX_CGROUP_DEPTH


@dataclass
class CgroupChains:
    """Three chains of cgroups CGROUP_LEVELS deep: slices match every level of
    ``configured``; this process sits at the bottom of ``other``, so the classifier looks
    up (and misses) an ancestor at every level; a slice matches the top of ``shallow``
    only, so from its bottom the walk misses every level but the last."""

    configured: list[Path]
    other: list[Path]
    shallow: list[Path]
    original: Path


@contextlib.contextmanager
def cgroup_chains(tag: str) -> Iterator[CgroupChains | None]:
    try:
        mount = Path(datapath.cgroup2_mount())
    except Exception as exc:
        print(f"bench: no cgroup v2 hierarchy ({exc}); the worst case skips cgroups")
        yield None
        return
    own = Path("/proc/self/cgroup").read_text()
    original = mount / next(
        line.split(":", 2)[2].strip().lstrip("/")
        for line in own.splitlines()
        if line.startswith("0::")
    )
    chains: list[list[Path]] = []
    moved = False
    try:
        for side in ("a", "b", "c"):
            path = mount / f"{tag}-{side}"
            chain: list[Path] = []
            chains.append(chain)
            for level in range(1, CGROUP_LEVELS + 1):
                if level > 1:
                    path = path / f"l{level}"
                path.mkdir()
                chain.append(path)
        (chains[1][-1] / "cgroup.procs").write_text(str(os.getpid()))
        moved = True
        yield CgroupChains(chains[0], chains[1], chains[2], original)
    except OSError as exc:
        if moved:
            raise
        print(f"bench: cannot set up cgroups ({exc}); the worst case skips cgroups")
        yield None
    finally:
        if moved:
            (original / "cgroup.procs").write_text(str(os.getpid()))
        for chain in chains:
            for path in reversed(chain):
                with contextlib.suppress(FileNotFoundError):
                    path.rmdir()
