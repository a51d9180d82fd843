"""The HTB tree bwbpf wants for a config, as plain data (no netlink; see shaper.py).

Classid scheme in classid.py. Rates are bit/s here; the shaper converts to HTB's bytes/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bwbpf import classid, limits
from bwbpf.model import Config, Slice

# The reference's bwlimit: quantum = share × 1600, about one MTU-sized packet per share, so
# that HTB's deficit round robin splits spare bandwidth by share.
QUANTUM_PER_SHARE = 1600


@dataclass(frozen=True, slots=True)
class ClassSpec:
    handle: int
    parent: int
    rate_bps: int  # guaranteed
    ceil_bps: int  # ceiling now in force
    quantum: int  # bytes per DRR round


def leaf(cfg: Config, s: Slice, dclass: int, ceil_bps: int | None = None) -> ClassSpec:
    """One slice's class for one destination class, with the ceiling the policy wants
    (``None``: the slice's max rate), kept within its parent and above its guarantee."""
    q = s.quota(dclass)
    parent_ceil = cfg.node_cap_bps if dclass == limits.DCLASS_NORMAL else cfg.line_rate_bps
    ceil = q.max_rate_bps if ceil_bps is None else ceil_bps
    # HTB needs ceil >= rate; the guarantee wins over a lower quota ceiling.
    ceil = max(min(ceil, parent_ceil), q.min_rate_bps)
    return ClassSpec(
        classid.slice_class(s.id, dclass),
        classid.parent_class(dclass),
        q.min_rate_bps,
        ceil,
        s.share * QUANTUM_PER_SHARE,
    )


def desired_tree(
    cfg: Config, ceilings: Mapping[tuple[int, int], int] | None = None
) -> list[ClassSpec]:
    """Parents first, then every slice's two classes. ``ceilings`` maps (slice id, dclass)
    to the ceiling the policy wants; a missing entry means the slice's max rate."""
    ceilings = ceilings or {}
    parent_ceil = {limits.DCLASS_NORMAL: cfg.node_cap_bps, limits.DCLASS_EXEMPT: cfg.line_rate_bps}
    leaves: list[ClassSpec] = []
    guaranteed = dict.fromkeys(parent_ceil, 0)
    for s in cfg.all_slices():
        for dclass in (limits.DCLASS_NORMAL, limits.DCLASS_EXEMPT):
            guaranteed[dclass] += s.quota(dclass).min_rate_bps
            leaves.append(leaf(cfg, s, dclass, ceilings.get((s.id, dclass))))
    # A parent guarantees what its children are guaranteed, within its own ceiling.
    parents = [
        ClassSpec(
            classid.ROOT_CLASS,
            classid.QDISC_HANDLE,
            cfg.line_rate_bps,
            cfg.line_rate_bps,
            QUANTUM_PER_SHARE,
        ),
    ]
    for dclass, ceil in parent_ceil.items():
        rate = max(8, min(guaranteed[dclass], ceil))
        parents.append(
            ClassSpec(
                classid.parent_class(dclass), classid.ROOT_CLASS, rate, ceil, QUANTUM_PER_SHARE
            )
        )
    return parents + leaves


def handles(cfg: Config) -> set[int]:
    """The handle of every class of cfg's tree (what is bwbpf's to keep on the interface),
    without making the tree."""
    dclasses = (limits.DCLASS_NORMAL, limits.DCLASS_EXEMPT)
    return {
        classid.ROOT_CLASS,
        *(classid.parent_class(d) for d in dclasses),
        *(classid.slice_class(s.id, d) for s in cfg.all_slices() for d in dclasses),
    }


def added(old: Config, new: Config) -> list[ClassSpec]:
    """The classes of new's tree that old's has not, parents first (what a reload from old
    to new must create)."""
    known = handles(old)
    return [spec for spec in desired_tree(new) if spec.handle not in known]
