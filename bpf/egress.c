/* bwbpf egress classifier: a cls_bpf program in direct-action mode on the HTB root qdisc.
 *
 * For every packet: find its slice (fwmark, cgroup v2 subtree, socket uid, source prefix,
 * else the default slice), its destination class (exempt prefix or normal), add its wire
 * bytes and GSO segments to the per-CPU counters of (slice, dclass), and send it to that
 * pair's HTB class. It never drops and never returns classid 0: that would be HTB's
 * unshaped direct queue. Everything that goes wrong is counted in `errors` and the packet
 * continues on the fail-open path (default slice, normal class).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "bwbpf.h"

/* Only these two outlive a reload: the pinned copies are reused, so counts carry over. */
BPF_TABLE_PINNED("percpu_array", __u32, struct bwbpf_slice_counters, counters, BWBPF_COUNTER_SLOTS,
		 BWBPF_PIN_DIR "/counters");
_Static_assert(BWBPF_NUM_ERRORS <= BWBPF_ERROR_SLOTS, "more error reasons than error slots");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, errors, BWBPF_ERROR_SLOTS,
		 BWBPF_PIN_DIR "/errors");

/* The match and exempt maps are filled from the config before the program goes live, so a
 * new program starts fully configured and replaces the old one in a single step. Each is a
 * map of bwbpf/matchkinds.py, which gives its size as BWBPF_<NAME>_ENTRIES. */
BPF_ARRAY(settings, struct bwbpf_settings, 1);
/* Marks up to BWBPF_MAX_SLICE_ID (the usual mark = slice id) index an array: an inlined load
 * instead of a hash (~17 ns less per packet, bench/run.py); other marks go to the hash. A
 * value of 0 means no slice: the default slice is never matched by mark. The mark kind's
 * resolver splits the marks at the same bound. */
_Static_assert(BWBPF_SLICE_BY_SMALL_MARK_ENTRIES == BWBPF_MAX_SLICE_ID + 1,
	       "every mark up to BWBPF_MAX_SLICE_ID indexes the small-mark array");
BPF_ARRAY(slice_by_small_mark, __u32, BWBPF_SLICE_BY_SMALL_MARK_ENTRIES);
BPF_HASH(slice_by_mark, __u32, __u32, BWBPF_SLICE_BY_MARK_ENTRIES);
BPF_HASH(slice_by_uid, __u32, __u32, BWBPF_SLICE_BY_UID_ENTRIES);
BPF_HASH(slice_by_cgroup, __u64, __u32, BWBPF_SLICE_BY_CGROUP_ENTRIES);
BPF_LPM_TRIE(slice_by_src4, struct bwbpf_lpm4, __u32, BWBPF_SLICE_BY_SRC4_ENTRIES);
BPF_LPM_TRIE(slice_by_src6, struct bwbpf_lpm6, __u32, BWBPF_SLICE_BY_SRC6_ENTRIES);
BPF_LPM_TRIE(exempt4, struct bwbpf_lpm4, __u32, BWBPF_EXEMPT4_ENTRIES);
BPF_LPM_TRIE(exempt6, struct bwbpf_lpm6, __u32, BWBPF_EXEMPT6_ENTRIES);
/* Recent destinations and their class, per CPU, direct-mapped: a hit is an inlined array
 * load and a compare (~1 ns) where an LRU hash lookup cost ~33 ns, as much as the 10,000-prefix
 * trie walk it saves (bench/run.py). Never stale: it lives and dies with this program and its
 * tries. Each CPU's slots start zeroed (family 0: empty), so no CPU reads another's entries. */
_Static_assert((BWBPF_DCLASS_CACHE_ENTRIES & (BWBPF_DCLASS_CACHE_ENTRIES - 1)) == 0 &&
		       BWBPF_DCLASS_CACHE_ENTRIES <= 65536,
	       "the dclass cache size must be a power of two, at most 65536");
BPF_PERCPU_ARRAY(dclass_cache, struct bwbpf_dclass_slot, BWBPF_DCLASS_CACHE_ENTRIES);
/* Each socket's slice by cgroup or uid (BWBPF_SK_WORD), worked out at its first packet: a
 * socket's cgroup and uid are fixed when it is made, so its later packets skip the walk up
 * to BWBPF_MAX_CGROUP_DEPTH ancestors and the uid lookup for one local-storage lookup. The
 * kernel frees an entry with its socket; user space never reads this map. */
BPF_SK_STORAGE(sk_slice, __u64);

#define ETH_P_8021Q_BE 0x0081  /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xa888 /* htons(0x88a8) */
#define ETH_P_IP_BE 0x0008     /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xdd86   /* htons(0x86dd) */

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct parsed {
	__u32 family; /* 0 = not IP, 4, 6 */
	__u8 src[16];
	__u8 dst[16];
};

static __always_inline void count_error(__u32 reason)
{
	__u64 *n = errors.lookup(&reason);

	if (n)
		*n += 1;
}

/* Fill p from the packet. Returns -1 when a header is cut short (counted by the caller). */
static __always_inline int parse(struct __sk_buff *skb, __u32 flags, struct parsed *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *l3 = data;
	__be16 proto = skb->protocol;

	if (!(flags & BWBPF_F_NO_L2)) {
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return -1;
		proto = eth->h_proto;
		l3 = eth + 1;
		/* Up to two tags in the packet (802.1ad outer + 802.1Q inner); an offloaded tag
		 * lives in skb->vlan_tci and is not in the data at all. */
#pragma unroll
		for (int i = 0; i < 2; i++) {
			if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
				break;
			struct vlan_tag *tag = l3;

			if ((void *)(tag + 1) > data_end)
				return -1;
			proto = tag->proto;
			l3 = tag + 1;
		}
	}

	if (proto == ETH_P_IP_BE) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > data_end)
			return -1;
		p->family = 4;
		__builtin_memcpy(p->src, &ip->saddr, 4);
		__builtin_memcpy(p->dst, &ip->daddr, 4);
	} else if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = 6;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
	}
	return 0;
}

/* The slice id of the deepest configured cgroup v2 ancestor of the packet's socket, or -1. */
static __always_inline int cgroup_slice(struct __sk_buff *skb, __u32 levels)
{
#pragma unroll
	for (int level = BWBPF_MAX_CGROUP_DEPTH; level >= 1; level--) {
		if (!(levels & (1u << level)))
			continue;
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);

		if (!id)
			continue;
		__u32 *slice = slice_by_cgroup.lookup(&id);

		if (slice)
			return *slice;
	}
	return -1;
}

/* The slice the packet's socket belongs to by cgroup, else by uid; BWBPF_SK_NO_SLICE if neither
 * matches. */
static __always_inline __u32 socket_slice(struct __sk_buff *skb, __u32 flags, __u32 levels)
{
	if (flags & BWBPF_F_CGROUP) {
		int s = cgroup_slice(skb, levels);

		if (s >= 0)
			return s;
	}
	if (flags & BWBPF_F_UID) {
		__u32 uid = bpf_get_socket_uid(skb);
		__u32 *slice = slice_by_uid.lookup(&uid);

		if (slice)
			return *slice;
	}
	return BWBPF_SK_NO_SLICE;
}

/* socket_slice, remembered in the socket under the current match epoch. Packets with no full
 * socket (forwarded, SYN-ACKs of a listener, time-wait) and a storage that cannot be made
 * take the uncached path; epoch 0 turns the cache off. */
static __always_inline __u32 cached_socket_slice(struct __sk_buff *skb, __u32 flags, __u32 levels,
						 __u32 epoch)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk || !epoch)
		return socket_slice(skb, flags, levels);
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return socket_slice(skb, flags, levels);
	__u64 *cached = sk_slice.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!cached)
		return socket_slice(skb, flags, levels);
	__u64 word = *cached;

	if ((__u32)(word >> 32) == epoch)
		return (__u32)word;
	__u32 slice = socket_slice(skb, flags, levels);

	*cached = BWBPF_SK_WORD(epoch, slice);
	return slice;
}

static __always_inline __u32 find_slice(struct __sk_buff *skb, struct bwbpf_settings *cfg,
					struct parsed *p)
{
	__u32 flags = cfg->flags;
	__u32 *slice;

	if (flags & BWBPF_F_MARK) {
		__u32 mark = skb->mark;

		if (mark <= BWBPF_MAX_SLICE_ID) {
			slice = slice_by_small_mark.lookup(&mark);
			if (slice && *slice)
				return *slice;
		} else {
			slice = slice_by_mark.lookup(&mark);
			if (slice)
				return *slice;
		}
	}
	if (flags & (BWBPF_F_CGROUP | BWBPF_F_UID)) {
		__u32 s = cached_socket_slice(skb, flags, cfg->cgroup_levels, cfg->match_epoch);

		if (s != BWBPF_SK_NO_SLICE)
			return s;
	}
	if (p->family == 4 && (flags & BWBPF_F_SRC4)) {
		struct bwbpf_lpm4 key = {.prefixlen = 32};

		__builtin_memcpy(key.addr, p->src, 4);
		slice = slice_by_src4.lookup(&key);
		if (slice)
			return *slice;
	} else if (p->family == 6 && (flags & BWBPF_F_SRC6)) {
		struct bwbpf_lpm6 key = {.prefixlen = 128};

		__builtin_memcpy(key.addr, p->src, 16);
		slice = slice_by_src6.lookup(&key);
		if (slice)
			return *slice;
	}
	return BWBPF_DEFAULT_SLICE_ID;
}

/* Fibonacci hashing of the (folded) address onto a cache slot. */
static __always_inline __u32 dclass_slot(__u32 folded)
{
	return ((folded * 0x9E3779B1u) >> 16) & (BWBPF_DCLASS_CACHE_ENTRIES - 1);
}

static __always_inline __u32 find_dclass(__u32 flags, struct parsed *p)
{
	struct bwbpf_dclass_slot *slot;
	__u32 dclass = BWBPF_DCLASS_NORMAL;
	__u32 a[4] = {};
	__u32 i;

	if (p->family == 4 && (flags & BWBPF_F_EXEMPT4)) {
		__builtin_memcpy(a, p->dst, 4);
		i = dclass_slot(a[0]);
		slot = dclass_cache.lookup(&i);
		if (slot && slot->family == 4 && slot->addr[0] == a[0])
			return slot->dclass;
		struct bwbpf_lpm4 key = {.prefixlen = 32};

		__builtin_memcpy(key.addr, p->dst, 4);
		if (exempt4.lookup(&key))
			dclass = BWBPF_DCLASS_EXEMPT;
	} else if (p->family == 6 && (flags & BWBPF_F_EXEMPT6)) {
		__builtin_memcpy(a, p->dst, 16);
		i = dclass_slot(a[0] ^ a[1] ^ a[2] ^ a[3]);
		slot = dclass_cache.lookup(&i);
		if (slot && slot->family == 6 && slot->addr[0] == a[0] && slot->addr[1] == a[1] &&
		    slot->addr[2] == a[2] && slot->addr[3] == a[3])
			return slot->dclass;
		struct bwbpf_lpm6 key = {.prefixlen = 128};

		__builtin_memcpy(key.addr, p->dst, 16);
		if (exempt6.lookup(&key))
			dclass = BWBPF_DCLASS_EXEMPT;
	} else {
		return BWBPF_DCLASS_NORMAL;
	}
	if (slot) {
		slot->family = p->family;
		slot->dclass = dclass;
		__builtin_memcpy(slot->addr, a, 16);
	}
	return dclass;
}

int bwbpf_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	/* A copy: user space may update the settings while this packet is in here. */
	struct bwbpf_settings *found = settings.lookup(&zero);
	struct bwbpf_settings cfg = {};
	struct parsed p = {};
	__u32 slice, dclass = BWBPF_DCLASS_NORMAL;

	if (found)
		cfg = *found;
	if (parse(skb, cfg.flags, &p) < 0) {
		count_error(BWBPF_ERR_TRUNCATED);
		p.family = 0;
	}
	slice = find_slice(skb, &cfg, &p);
	if (slice > BWBPF_MAX_SLICE_ID) {
		count_error(BWBPF_ERR_SLICE_OUT_OF_RANGE);
		slice = BWBPF_DEFAULT_SLICE_ID;
	}
	if (p.family)
		dclass = find_dclass(cfg.flags, &p);

	struct bwbpf_slice_counters *sc = counters.lookup(&slice);

	if (sc) {
		struct bwbpf_counter *c = &sc->dclass[dclass & 1];
		__u32 segs = skb->gso_segs;

		c->bytes += skb->wire_len;
		c->packets += segs ? segs : 1;
	} else {
		count_error(BWBPF_ERR_COUNTER_LOOKUP);
	}
	__u32 classid = (BWBPF_HTB_MAJOR << 16) |
			(dclass == BWBPF_DCLASS_EXEMPT ? BWBPF_MINOR_EXEMPT_BASE
						       : BWBPF_MINOR_NORMAL_BASE) |
			slice;

	/* Only the minor survives this store (qdisc_skb_cb's tc_classid is a __u16); the major
	 * comes from the filter's classid, set to the HTB qdisc's when it is attached. */
	skb->tc_classid = classid;
#ifdef BWBPF_CB_CLASSID
	/* Tests only: BPF_PROG_TEST_RUN copies cb[] back out, but not tc_classid. */
	skb->cb[0] = classid;
#endif
	return TC_ACT_OK;
}
