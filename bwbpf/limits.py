"""Sizes and limits shared by the daemon and the BPF programs, defined here once.

The C in ``bpf/`` receives them as ``-D`` flags (``datapath.cflags()``); nothing in ``bpf/``
repeats a number that is defined here.
"""

from __future__ import annotations

# Slice ids are 14 bits so that both of a slice's HTB minors fit in 16 bits (see classid.py).
MAX_SLICE_ID = 0x3FFF
DEFAULT_SLICE_ID = 0
DEFAULT_SLICE_NAME = "default"
# Configured slices, not counting the default slice.
MAX_SLICES = MAX_SLICE_ID
# Entries per family in the exempt and source-prefix LPM tries.
MAX_PREFIXES = 16384
# Entries in each of the mark, uid and cgroup match maps.
MAX_MATCHES = 16384
# cgroup v2 ancestors the classifier walks, deepest first (bpf_skb_ancestor_cgroup_id).
MAX_CGROUP_DEPTH = 16
# Destinations remembered per CPU in front of the exempt LPM tries.
DCLASS_CACHE_ENTRIES = 4096

DCLASSES = ("normal", "exempt")
DCLASS_NORMAL = 0
DCLASS_EXEMPT = 1

# Datapath error reasons by number: enum bwbpf_error in bpf/bwbpf.h has the same numbers
# (checked by a test). A reason keeps its number for good; a new one takes the next.
ERROR_REASONS = ("truncated", "counter_lookup", "slice_out_of_range")
# Slots of the pinned errors map, which outlives programs and upgrades: room for reasons
# to come without another map layout.
ERROR_SLOTS = 16
