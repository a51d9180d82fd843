/* Structs and constants shared by every bwbpf program and read by the daemon.
 *
 * Sizes come from bwbpf/limits.py and bwbpf/matchkinds.py as -D flags (one definition:
 * docs/conventions.md, rule 1);
 * the daemon reads these layouts through bcc's ctypes (table.Key/table.Leaf) or through
 * the mirror in bwbpf/layout.py, which a test compares with the structs below.
 */
#ifndef BWBPF_H
#define BWBPF_H

#include <linux/types.h>

#ifndef BWBPF_MAX_SLICE_ID
#error "sizes come from bwbpf/limits.py: compile through bwbpf.datapath"
#endif

/* Counters are indexed by slice id: one per-CPU array slot holds both destination classes,
 * so that reading every slice is one element per slice (BPF_MAP_LOOKUP_BATCH costs ~0.24 us
 * per element). */
#define BWBPF_NUM_DCLASSES 2
#define BWBPF_COUNTER_SLOTS (BWBPF_MAX_SLICE_ID + 1)

enum bwbpf_dclass {
	BWBPF_DCLASS_NORMAL = 0, /* everything not in the exempt prefix set */
	BWBPF_DCLASS_EXEMPT = 1, /* destination inside an exempt prefix */
};

/* Why a packet took the fail-open path: fixed numbers, those of limits.ERROR_REASONS; a new
 * reason takes the next number (the pinned errors map has BWBPF_ERROR_SLOTS of them). */
enum bwbpf_error {
	BWBPF_ERR_TRUNCATED = 0,          /* an L2/L3 header ends past data_end */
	BWBPF_ERR_COUNTER_LOOKUP = 1,     /* a per-CPU array lookup returned NULL */
	BWBPF_ERR_SLICE_OUT_OF_RANGE = 2, /* a match map held a slice id above the max */
};

/* Which match kinds and options are in use (settings.flags): the program skips the lookups
 * of unused kinds, so a node matching only by mark pays for one lookup. The bits are
 * numbered once, in bwbpf/matchkinds.py (Flag), and come as -D BWBPF_F_<name> flags; a
 * flag used here and not given there is an undeclared identifier. */
#ifndef BWBPF_F_MARK
#error "flags come from bwbpf/matchkinds.py: compile through bwbpf.datapath"
#endif

/* Value of the per-CPU counters array: what HTB counts, per (slice, dclass). */
struct bwbpf_counter {
	__u64 bytes;   /* sum of skb->wire_len: equals HTB's class byte counter */
	__u64 packets; /* sum of max(gso_segs, 1): equals HTB's packet counter */
};

struct bwbpf_slice_counters {
	struct bwbpf_counter dclass[BWBPF_NUM_DCLASSES]; /* by enum bwbpf_dclass */
};

/* The one-entry settings array. */
struct bwbpf_settings {
	__u32 flags;         /* BWBPF_F_* bits */
	__u32 cgroup_levels; /* bit L set: some configured cgroup sits at cgroup v2 level L */
	__u32 match_epoch;   /* changed whenever the socket-owned matches (cgroup, uid) change */
};

/* A socket's cached slice (BPF_MAP_TYPE_SK_STORAGE value): the slice its cgroup or uid
 * matched, or BWBPF_SK_NO_SLICE, in the low word, and the match_epoch it was worked out
 * under in the high word. One 64-bit word, so a CPU never reads one half of another's
 * update. A new storage is zero, and epoch 0 is never current. */
#define BWBPF_SK_NO_SLICE 0xffffffffu
#define BWBPF_SK_WORD(epoch, slice) (((__u64)(epoch) << 32) | (__u32)(slice))

/* LPM trie keys: prefixlen first, as BPF_MAP_TYPE_LPM_TRIE requires (struct bpf_lpm_trie_key). */
struct bwbpf_lpm4 {
	__u32 prefixlen;
	__u8 addr[4]; /* network byte order */
};

struct bwbpf_lpm6 {
	__u32 prefixlen;
	__u8 addr[16]; /* network byte order */
};

/* A slot of the per-CPU direct-mapped cache of destination classes in front of the exempt
 * tries. A slot is used by one CPU only; family 0 marks it empty. */
struct bwbpf_dclass_slot {
	__u32 family; /* 0 (empty), 4 or 6 */
	__u32 dclass; /* enum bwbpf_dclass */
	__u32 addr[4]; /* network byte order; IPv4 uses addr[0] */
};

#endif /* BWBPF_H */
