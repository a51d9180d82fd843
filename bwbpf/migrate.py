"""What a pinned counters map of another layout (another bwbpf version's) still tells this
one, so that an upgrade accounts what the old map counted instead of resetting a quota.

The loader moves such a map aside (datapath.retire_pin) and the daemon accounts it once,
as the reading of the generation its ledger last saw (Daemon._account_retired). This module
is the pure part: which layouts can be read, how one maps onto this bwbpf's slices and
destination classes, and the line that says what was carried. No kernel, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from bwbpf import bpfsys, limits
from bwbpf.ledger import Reading, SliceRecord

# struct bwbpf_counter in bpf/bwbpf.h: a u64 byte count, then a u64 packet count.
PAIR_BYTES = 16
# Slot ids named in a message, at most.
MAX_NAMED_SLOTS = 5


def dclasses_of(map_type: int, key_size: int, value_size: int) -> int | None:
    """How many destination classes a counters map's values hold, when bwbpf can read it:
    a per-CPU array with a u32 key (the slice id) whose value is k >= 1 (bytes, packets)
    u64 pairs, one per destination class in enum order, as every bwbpf so far has laid
    it out. None for any other map: its numbers could not be told apart."""
    if map_type != bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY or key_size != 4:
        return None
    if value_size < PAIR_BYTES or value_size % PAIR_BYTES:
        return None
    return value_size // PAIR_BYTES


class Carried(NamedTuple):
    """What of an old map the ledger can take, and what it cannot."""

    # Configured slice id -> one reading per destination class of this bwbpf (those the
    # old map did not have read (0, 0), as a counter not used yet does).
    raw: dict[int, tuple[Reading, ...]]
    # Slot -> bytes, for the slots no configured slice has (a slice removed from the
    # config, or an id beyond this bwbpf's slots): no ledger record to put them in.
    other_slots: dict[int, int]
    # Bytes the configured slices sent in destination classes this bwbpf does not have.
    other_dclass_bytes: int


def carry(
    values: Sequence[Sequence[Reading]],
    slice_ids: Iterable[int],
    dclasses: int = len(limits.DCLASSES),
) -> Carried:
    """Map an old counters map's ``values`` (per slot, a reading per old destination class,
    summed over the CPUs) onto the configured ``slice_ids`` and this bwbpf's ``dclasses``
    classes. A configured slice beyond the old map's slots has no entry: it had no counter
    then (``daemon.readings`` reads it as (0, 0))."""
    ids = set(slice_ids)
    raw: dict[int, tuple[Reading, ...]] = {}
    other_slots: dict[int, int] = {}
    other_dclass_bytes = 0
    for slot, readings in enumerate(values):
        if slot not in ids:
            sent = sum(r[0] for r in readings)
            if sent:
                other_slots[slot] = sent
            continue
        kept = tuple(readings[:dclasses])
        raw[slot] = kept + ((0, 0),) * (dclasses - len(kept))
        other_dclass_bytes += sum(r[0] for r in readings[dclasses:])
    return Carried(raw, other_slots, other_dclass_bytes)


def carried_bytes(before: Mapping[str, SliceRecord], after: Mapping[str, SliceRecord]) -> int:
    """Bytes an update added to the slices' usage: the growth of each slice's usage, or all
    of it where the slice is new or its period began in between."""
    total = 0
    for name, record in after.items():
        now = sum(c.used_bytes for c in record.classes)
        old = before.get(name)
        if old is None or old.period_start != record.period_start:
            total += now
        else:
            total += max(0, now - sum(c.used_bytes for c in old.classes))
    return total


def summary(
    interface: str,
    map_id: int,
    slots: int,
    dclasses: int,
    added_bytes: int,
    found: Carried,
) -> tuple[bool, str]:
    """(Whether anything was left out, the one line the daemon logs) for a retired map it
    accounted."""
    line = (
        f"{interface}: accounted the counters map {map_id} of another bwbpf layout ({slots}"
        f" slots, {dclasses} destination classes; this bwbpf has {limits.MAX_SLICE_ID + 1},"
        f" {len(limits.DCLASSES)}): {added_bytes} bytes since the last reading added to the"
        f" usage of {len(found.raw)} slices; it is removed, counting goes on in the new map"
    )
    left = []
    if found.other_slots:
        named = sorted(found.other_slots)
        ids = ", ".join(map(str, named[:MAX_NAMED_SLOTS]))
        more = f" and {len(named) - MAX_NAMED_SLOTS} more" if len(named) > MAX_NAMED_SLOTS else ""
        left.append(
            f"{sum(found.other_slots.values())} bytes in slots {ids}{more}, which no"
            " configured slice has"
        )
    if found.other_dclass_bytes:
        left.append(
            f"{found.other_dclass_bytes} bytes in destination classes this bwbpf does not have"
        )
    if left:
        line += f"; not carried (counted since that map was made): {'; '.join(left)}"
    return bool(left), line
