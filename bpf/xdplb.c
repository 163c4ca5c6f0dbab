// SPDX-License-Identifier: GPL-2.0
/*
 * xdplb data plane: L4 load balancing with Direct Server Return.
 *
 * A frame to a VIP (address, port, tcp|udp) is sent to a real server chosen
 * by the connection table, else by the VIP's Maglev ring. Only the Ethernet
 * addresses change (dst = real, src = LB); the frame leaves with XDP_TX and
 * the real answers the client directly. Everything else is XDP_PASS,
 * byte-for-byte unchanged.
 *
 * Compiled by BCC from xdplbd/kernel/loader.py, which passes the map sizes and the
 * pin directory as -D flags (see the defaults below). Struct layouts are
 * mirrored in xdplbd/core/schema.py: change both together.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/xdplb"
#endif
#ifndef MAX_VIPS
#define MAX_VIPS 512
#endif
#ifndef MAX_REALS
#define MAX_REALS 4096
#endif
#ifndef CT_SIZE
#define CT_SIZE 4194304
#endif
#ifndef RING_SIZE
#define RING_SIZE 65537
#endif

/* Ring slots are u16 backend ids packed four to a u64 array value: array
 * values occupy 8-byte slots, so this quarters the memory of a u32 ring. */
#define RING_LANES 4
#define RING_VALUES ((RING_SIZE + RING_LANES - 1) / RING_LANES)

/* vip_index: VIP_INDEX_PER_VIP slots per VIP slot of `vips`, so that most
 * VIPs have a slot to themselves (see struct vip_slot). */
#define VIP_INDEX_PER_VIP 8
#define VIP_INDEX_SLOTS (VIP_INDEX_PER_VIP * MAX_VIPS)
#define VIP_INDEX_MULT 0x9e3779b1U /* Knuth's multiplicative hash */

#define MAX_VLAN_TAGS 2
#define FAMILY_V4 4
#define FAMILY_V6 6
#define BACKEND_ACTIVE 1

#define IP_MF_FLAG 0x2000
#define IP_OFFSET_MASK 0x1fff
#define IPV6_NEXTHDR_FRAGMENT 44
#define ICMP_DEST_UNREACH_T 3
#define ICMP_FRAG_NEEDED_C 4
#define ICMPV6_PKT_TOOBIG_T 2
#define L4_PORTS_LEN 8 /* ICMP errors quote at least 8 bytes of L4 header */

/* Counters. A forwarded packet counts on its real (backend_stats); a packet
 * that does not hit the connection table also counts on the path it took
 * (`path_stats`), and a drop for want of a real on its VIP (vip_stats). A hit, the
 * bulk of the traffic, so pays for one counter where counting VIP, real,
 * path and outcome cost four (3 ns a packet, measured). The tools derive
 * the rest, and sums of counters that only grow only grow:
 *   tx        the sum of all per-real counters (the control plane never
 *             zeroes them; a new real's count starts from a recorded base)
 *   ct_hit    tx minus the other forwarding paths
 *   per VIP   its reals' counts since they joined it, plus those of reals
 *             that left it, plus its drops (xdplbd/core/ledger.py)
 * and the outcome names operators read (pass, drop, ct_miss, ...) as sums of
 * paths (xdplbd/core/schema.py, outcomes_from_paths). */
enum pkt_path {
	PKT_CT_NEW = 0,  /* untracked: a real from the ring, tracked, forwarded */
	PKT_NO_REAL,     /* untracked, and the VIP has no usable real: dropped */
	PKT_ICMP_ROUTED, /* ICMP error about a VIP flow, forwarded to its real */
	PKT_PASS,        /* not for a VIP: passed */
	PKT_FRAGMENT,    /* a fragment: passed (see the fragment policy) */
	PKT_MALFORMED,   /* truncated or bad headers: passed */
	PKT_OTHER_MAC,   /* for a VIP, but not addressed to this LB's MACs: passed */
	PKT_PATHS,
};

/* path_stats has room for paths to come: a map that grows needs a new pin. */
#define PATH_SLOTS 16
_Static_assert(PKT_PATHS <= PATH_SLOTS, "path_stats holds every path");

/* forward()'s path for a conntrack hit, which counts on no path. */
#define PKT_HIT PKT_PATHS

struct vip_key {
	__u8 addr[16]; /* IPv4 uses the first 4 bytes, the rest is zero */
	__be16 port;
	__u8 proto;
	__u8 family;
};

struct vip_info {
	__u32 vip_id; /* index into rings and vip_stats */
	__u32 flags;
	__u64 ring_digest; /* which ring is live; control plane bookkeeping */
};

/* One slot of vip_index, a direct-mapped front of the `vips` hash kept by
 * the control plane: EMPTY, no VIP folds here (not a VIP: pass without
 * hashing); EXACT, exactly one VIP does and it is `key` with `vip_id`;
 * SHARED, ask `vips`. The control plane changes `key` and `vip_id` only
 * while the slot is not EXACT, and enters or leaves EXACT by a write that
 * changes `state` alone, so a packet never sees a half-written EXACT slot. */
enum vip_slot_state {
	VIP_SLOT_EMPTY = 0,
	VIP_SLOT_SHARED = 1,
	VIP_SLOT_EXACT = 2,
};

struct vip_slot {
	__u32 state;
	__u32 vip_id;
	struct vip_key key;
};

struct backend {
	__u8 mac[ETH_ALEN];
	__u8 family;
	__u8 flags; /* BACKEND_ACTIVE, else the slot is free */
	__u32 vip_id; /* the only VIP this backend may serve */
	__u32 weight; /* control plane bookkeeping */
	__u8 addr[16];
};

struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

#define FLOW_KEY_QWORDS (sizeof(struct flow_key) / sizeof(__u64))

/* The last word of a flow key, built in a register (see set_flow). */
union flow_tail {
	struct {
		__be16 sport;
		__be16 dport;
		__u8 proto;
		__u8 family;
		__u8 pad[2];
	};
	__u64 word;
};

/* An address as two 64-bit words, in memory order; IPv4 fills the first
 * four bytes and leaves the rest zero, as the maps' keys do. */
struct addr_words {
	__u64 lo;
	__u64 hi;
};

/* The connection table: an array of CT_BUCKETS buckets of CT_WAYS entries
 * (64 bytes, a cache line), the bucket picked by the flow hash. A lookup is
 * an inlined array access and a few compares, where a hash map keyed by the
 * 5-tuple cost a jhash of 40 bytes and a memcmp (28 -> 19 ns a hit; a new
 * flow in a full 1M-entry table 790 -> ~100 ns, measured). An entry is one u64,
 * written and read whole, so CPUs never see a torn entry and need no lock:
 *   bits  0-31  tag: the low half of the flow hash, never 0 (0 = empty way)
 *   bits 32-47  backend id
 *   bits 48-63  last seen, in ticks of 2^tick_shift jiffies (about a
 *               second, struct settings), mod 2^16
 * The bucket comes from the high half of the 64-bit hash, so an entry
 * matches a flow only if 32 + log2(CT_BUCKETS) bits agree. A new flow takes
 * an empty way, else the least recently seen. xdplbd/core/conntrack.py mirrors
 * this layout. */
#define CT_WAYS 8
#define CT_BUCKETS ((CT_SIZE + CT_WAYS - 1) / CT_WAYS)
_Static_assert((CT_WAYS & (CT_WAYS - 1)) == 0, "a way index is masked with CT_WAYS - 1");
#define CT_TAG_MASK 0xffffffffULL
#define CT_ID_SHIFT 32
#define CT_ID_MASK 0xffffULL
#define CT_SEEN_SHIFT 48
#define CT_TICK_MASK 0xffffU

struct ct_bucket {
	__u64 way[CT_WAYS];
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Written by the control plane (xdplbd/kernel/dataplane.py set_settings). */
struct settings {
	__u8 lb_mac[ETH_ALEN];
	/* The conntrack clock ticks every 2^tick_shift jiffies (about a
	 * second): bpf_jiffies64() is one load once the verifier inlines it,
	 * where bpf_ktime_get_coarse_ns() is a helper call. */
	__u8 tick_shift;
	__u8 pad;
	__u32 udp_timeout_ticks;
	/* For the tools (xdplbd/core/conntrack.py Clock), not read here. */
	__u64 udp_timeout_ns;
	__u64 jiffy_ns;
	__u64 clock_offset_ns;
};

/* MACs besides the interface's that this LB answers to (a VRRP virtual MAC,
 * say), from the config's "extra_macs". Written by the control plane
 * (set_settings), read only for a frame to a VIP not addressed to lb_mac. */
#define MAX_EXTRA_MACS 8

struct mac_slot {
	__u8 addr[ETH_ALEN];
	__u16 pad;
};

struct extra_macs {
	__u32 count;
	__u32 pad;
	struct mac_slot mac[MAX_EXTRA_MACS];
};

struct ring_value {
	__u16 ids[RING_LANES];
};

/* Inner-map template for `rings`: one array of this shape per VIP. */
BPF_ARRAY(ring_template, struct ring_value, RING_VALUES);

BPF_TABLE_PINNED("hash", struct vip_key, struct vip_info, vips, MAX_VIPS, PIN_DIR "/vips");
BPF_TABLE_PINNED("array_of_maps$ring_template", int, int, rings, MAX_VIPS, PIN_DIR "/rings");
BPF_TABLE_PINNED("array", u32, struct backend, backends, MAX_REALS, PIN_DIR "/backends");
BPF_TABLE_PINNED("array", u32, struct ct_bucket, conntrack, CT_BUCKETS,
		 PIN_DIR "/conntrack");
BPF_TABLE_PINNED("percpu_array", u32, struct counter, vip_stats, MAX_VIPS, PIN_DIR "/vip_stats");
BPF_TABLE_PINNED("percpu_array", u32, struct counter, backend_stats, MAX_REALS,
		 PIN_DIR "/backend_stats");
/* Control plane only: whose backend_stats are whose (xdplbd/core/ledger.py). */
struct real_ledger {
	__u32 vip_id;
	__u32 state; /* free, active or retired */
	struct counter base; /* backend_stats when this real took the slot */
	struct counter final; /* ... and when it left */
	__u32 retire_gen; /* its VIP's generation when it left */
	__u32 pad;
};

struct vip_ledger {
	struct counter departed; /* the counts of the VIP's reals that left */
	__u32 generation; /* changes with `departed`: readers re-read */
	__u32 pad;
};

BPF_TABLE_PINNED("array", u32, struct real_ledger, real_ledger, MAX_REALS,
		 PIN_DIR "/real_ledger");
BPF_TABLE_PINNED("array", u32, struct vip_ledger, vip_ledger, MAX_VIPS, PIN_DIR "/vip_ledger");
BPF_TABLE_PINNED("percpu_array", u32, struct counter, path_stats, PATH_SLOTS,
		 PIN_DIR "/path_stats");
BPF_TABLE_PINNED("array", u32, struct settings, lb_settings, 1, PIN_DIR "/lb_settings");
BPF_TABLE_PINNED("array", u32, struct extra_macs, lb_macs, 1, PIN_DIR "/lb_macs");
BPF_TABLE_PINNED("array", u32, struct vip_slot, vip_index, VIP_INDEX_SLOTS,
		 PIN_DIR "/vip_index");

struct packet {
	void *data;
	void *data_end;
	__u64 len;
	struct flow_key flow;
	__u8 tcp_flags_syn_only; /* SYN set, ACK clear: a new connection */
};

static __always_inline void count(enum pkt_path p, __u64 bytes)
{
	u32 key = p;
	struct counter *c = path_stats.lookup(&key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* XDP_PASS, counted on the path that led there. */
static __always_inline int pass_as(enum pkt_path path, __u64 bytes)
{
	count(path, bytes);
	return XDP_PASS;
}

static __always_inline int pass(__u64 bytes)
{
	return pass_as(PKT_PASS, bytes);
}

/* The flow hash: the flow key's five 64-bit words (host order) in a
 * multiply-add sum, then the MurmurHash3 64-bit finalizer. The products are
 * independent, so it costs about one multiply chain, not ten. The low half
 * picks the ring slot and is the conntrack tag; the high half picks the
 * conntrack bucket. xdplbd/core/flowhash.py computes the same values. */
#define FLOW_HASH_SEED 0x9747b28cULL

static const __u64 flow_hash_primes[FLOW_KEY_QWORDS] = {
	0x9e3779b185ebca87ULL, 0xc2b2ae3d27d4eb4fULL, 0x165667b19e3779f9ULL,
	0x85ebca77c2b2ae63ULL, 0x27d4eb2f165667c5ULL,
};

static __always_inline __u64 flow_hash(const struct flow_key *key)
{
	const __u64 *w = (const __u64 *)key;
	__u64 h = FLOW_HASH_SEED;

#pragma unroll
	for (int i = 0; i < FLOW_KEY_QWORDS; i++)
		h += w[i] * flow_hash_primes[i];
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* Skip up to two 802.1Q/802.1ad tags; returns the inner EtherType or 0. */
static __always_inline __be16 parse_eth(void *data, void *data_end, __u32 *l3_off)
{
	struct ethhdr *eth = data;
	__be16 proto;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > data_end)
		return 0;
	/* h_proto as one 16-bit load: struct ethhdr is packed, so the field
	 * would be read a byte at a time. */
	proto = *(__be16 *)&eth->h_proto;
	if (proto == htons(ETH_P_IP)) {
		*l3_off = off;
		return proto;
	}

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_tag {
			__be16 tci;
			__be16 proto;
		} *tag = data + off;

		if (proto != htons(ETH_P_8021Q) && proto != htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 1) > data_end)
			return 0;
		proto = tag->proto;
		off += sizeof(*tag);
	}
	*l3_off = off;
	return proto;
}

/* Result of the L3/L4 parsers. */
enum parse_result {
	PARSE_OK,         /* a TCP/UDP flow key was filled in */
	PARSE_ICMP_ERROR, /* frag-needed / packet-too-big: route by inner header */
	PARSE_FRAGMENT,   /* an IP fragment: never balanced (docs/dataplane.md) */
	PARSE_OTHER,      /* well-formed, not ours */
	PARSE_MALFORMED,  /* truncated or inconsistent headers */
};

/* Write the whole flow key as five 64-bit stores. The hashes (flow_hash,
 * the kernel's jhash and memcmp of the conntrack key) read it back a word at
 * a time, and a load that spans several narrower, recent stores cannot be
 * forwarded from them: filled field by field, the key cost a store-forwarding
 * stall on every read, which was most of the cost of a conntrack hit. */
static __always_inline void set_flow(struct flow_key *flow, struct addr_words src,
				     struct addr_words dst, __be16 sport, __be16 dport,
				     __u8 proto, __u8 family)
{
	__u64 *w = (__u64 *)flow;
	union flow_tail tail = {
		.sport = sport, .dport = dport, .proto = proto, .family = family,
	};

	w[0] = src.lo;
	w[1] = src.hi;
	w[2] = dst.lo;
	w[3] = dst.hi;
	w[4] = tail.word;
}

static __always_inline struct addr_words v4_words(__be32 addr)
{
	struct addr_words a = {};

	__builtin_memcpy(&a.lo, &addr, sizeof(addr));
	return a;
}

static __always_inline struct addr_words v6_words(const struct in6_addr *addr)
{
	struct addr_words a;

	__builtin_memcpy(&a, addr, sizeof(a));
	return a;
}

/* Ports in header order (source, destination) of a TCP or UDP header. */
struct l4_ports {
	__be16 src;
	__be16 dst;
};

static __always_inline int parse_ports(struct packet *pkt, void *l4, __u8 proto,
				       struct l4_ports *ports)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > pkt->data_end)
			return PARSE_MALFORMED;
		ports->src = tcp->source;
		ports->dst = tcp->dest;
		pkt->tcp_flags_syn_only = tcp->syn && !tcp->ack;
		return PARSE_OK;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > pkt->data_end)
			return PARSE_MALFORMED;
		ports->src = udp->source;
		ports->dst = udp->dest;
		return PARSE_OK;
	}
	return PARSE_OTHER;
}

/* Fill `flow` from an IPv4 header and the first 8 bytes of its L4 header,
 * reversed: an ICMP error quotes the real's reply (VIP -> client), and the
 * flow we need is client -> VIP. */
static __always_inline int parse_inner_ipv4(struct packet *pkt, void *l3)
{
	struct iphdr *ip = l3;
	struct l4_ports *ports;
	__u32 ihl_len;

	if ((void *)(ip + 1) > pkt->data_end)
		return PARSE_MALFORMED;
	ihl_len = ip->ihl * 4;
	if (ip->version != 4 || ihl_len < sizeof(*ip))
		return PARSE_MALFORMED;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_OTHER;
	ports = l3 + ihl_len;
	if ((void *)ports + L4_PORTS_LEN > pkt->data_end)
		return PARSE_MALFORMED;
	set_flow(&pkt->flow, v4_words(ip->daddr), v4_words(ip->saddr), ports->dst, ports->src,
		 ip->protocol, FAMILY_V4);
	return PARSE_ICMP_ERROR;
}

static __always_inline int parse_inner_ipv6(struct packet *pkt, void *l3)
{
	struct ipv6hdr *ip6 = l3;
	struct l4_ports *ports = (void *)(ip6 + 1);

	if ((void *)ports + L4_PORTS_LEN > pkt->data_end)
		return PARSE_MALFORMED;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return PARSE_OTHER;
	set_flow(&pkt->flow, v6_words(&ip6->daddr), v6_words(&ip6->saddr), ports->dst,
		 ports->src, ip6->nexthdr, FAMILY_V6);
	return PARSE_ICMP_ERROR;
}

static __always_inline int parse_ipv4(struct packet *pkt, void *l3)
{
	struct iphdr *ip = l3;
	struct l4_ports ports;
	__u32 ihl_len;
	void *l4;
	int res;

	if ((void *)(ip + 1) > pkt->data_end)
		return PARSE_MALFORMED;
	ihl_len = ip->ihl * 4;
	if (ip->version != 4 || ihl_len < sizeof(*ip))
		return PARSE_MALFORMED;
	l4 = l3 + ihl_len;
	if (l4 > pkt->data_end)
		return PARSE_MALFORMED;
	if (ip->frag_off & htons(IP_MF_FLAG | IP_OFFSET_MASK))
		return PARSE_FRAGMENT;

	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) > pkt->data_end)
			return PARSE_MALFORMED;
		if (icmp->type != ICMP_DEST_UNREACH_T || icmp->code != ICMP_FRAG_NEEDED_C)
			return PARSE_OTHER;
		return parse_inner_ipv4(pkt, icmp + 1);
	}
	res = parse_ports(pkt, l4, ip->protocol, &ports);
	if (res == PARSE_OK)
		set_flow(&pkt->flow, v4_words(ip->saddr), v4_words(ip->daddr), ports.src,
			 ports.dst, ip->protocol, FAMILY_V4);
	return res;
}

static __always_inline int parse_ipv6(struct packet *pkt, void *l3)
{
	struct ipv6hdr *ip6 = l3;
	void *l4 = (void *)(ip6 + 1);
	struct l4_ports ports;
	int res;

	if (l4 > pkt->data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	if (ip6->nexthdr == IPV6_NEXTHDR_FRAGMENT)
		return PARSE_FRAGMENT;

	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		struct icmp6hdr *icmp6 = l4;

		if ((void *)(icmp6 + 1) > pkt->data_end)
			return PARSE_MALFORMED;
		if (icmp6->icmp6_type != ICMPV6_PKT_TOOBIG_T)
			return PARSE_OTHER;
		return parse_inner_ipv6(pkt, icmp6 + 1);
	}
	res = parse_ports(pkt, l4, ip6->nexthdr, &ports);
	if (res == PARSE_OK)
		set_flow(&pkt->flow, v6_words(&ip6->saddr), v6_words(&ip6->daddr), ports.src,
			 ports.dst, ip6->nexthdr, FAMILY_V6);
	return res;
}

/* The backend behind this flow's slot of the VIP's ring, or 0. */
static __always_inline __u32 ring_pick(__u32 vip_id, __u64 hash)
{
	void *ring = rings.lookup(&vip_id);
	/* hash * M / 2^32 spreads the hash's low half over the M slots like
	 * hash % M, with a multiply instead of a divide. */
	__u32 slot = ((__u64)(__u32)hash * RING_SIZE) >> 32;
	__u32 value_idx = slot / RING_LANES;
	struct ring_value *v;

	if (!ring)
		return 0;
	v = bpf_map_lookup_elem(ring, &value_idx);
	if (!v)
		return 0;
	return v->ids[slot % RING_LANES];
}

/* A backend that is live and belongs to this VIP; stale ids (a removed real,
 * or a slot reused by another VIP) yield NULL so the flow is re-hashed. */
static __always_inline struct backend *backend_for(__u32 id, __u32 vip_id)
{
	struct backend *b;

	if (!id)
		return NULL;
	b = backends.lookup(&id);
	if (!b || !(b->flags & BACKEND_ACTIVE) || b->vip_id != vip_id)
		return NULL;
	return b;
}

static __always_inline void count_id(void *map_lookup_result, __u64 bytes)
{
	struct counter *c = map_lookup_result;

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline struct settings *get_settings(void)
{
	u32 zero = 0;

	return lb_settings.lookup(&zero);
}

/* A MAC address as a 4-byte and a 2-byte word. struct ethhdr is packed, so
 * a memcpy into it compiles to six byte loads and six byte stores a MAC; as
 * words it is two of each. The sources are aligned map values; the packet
 * side may be unaligned, which x86 and the verifier's packet access (no
 * strict alignment on such arches) accept. */
static __always_inline void set_mac(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

/* Off the established path: is `dst` one of the config's extra MACs? */
static __always_inline int extra_mac(const __u8 *dst)
{
	u32 zero = 0;
	struct extra_macs *m = lb_macs.lookup(&zero);

	if (!m)
		return 0;
#pragma unroll
	for (int i = 0; i < MAX_EXTRA_MACS; i++) {
		if (i >= m->count)
			break;
		if (mac_equal(dst, m->mac[i].addr))
			return 1;
	}
	return 0;
}

/* Is the frame addressed to this LB? A NIC in promiscuous mode, or a switch
 * flooding an unknown unicast, shows a node frames meant for another; two
 * nodes balancing one frame would send the real a duplicate. */
static __always_inline int for_us(const struct packet *pkt, const struct settings *s)
{
	const struct ethhdr *eth = pkt->data;

	if ((void *)(eth + 1) > pkt->data_end)
		return 0;
	return mac_equal(eth->h_dest, s->lb_mac) || extra_mac(eth->h_dest);
}

static __always_inline int forward(struct packet *pkt, const struct settings *s, __u32 id,
				   const struct backend *b, enum pkt_path path)
{
	struct ethhdr *eth = pkt->data;

	if ((void *)(eth + 1) > pkt->data_end)
		return pass(pkt->len);
	set_mac(eth->h_dest, b->mac);
	set_mac(eth->h_source, s->lb_mac);
	/* The path before the real: the tools read the reals first, so a
	 * packet between the two reads is missing from tx, never from its path,
	 * and the derived ct_hit never runs ahead (xdplbd/kernel/snapshot.py). */
	if (path != PKT_HIT)
		count(path, pkt->len);
	count_id(backend_stats.lookup(&id), pkt->len);
	return XDP_TX;
}

static __always_inline int no_real(struct packet *pkt, __u32 vip_id)
{
	/* A VIP without a usable real drops: passing would let the LB's own
	 * stack answer for a service it does not run. */
	count_id(vip_stats.lookup(&vip_id), pkt->len);
	count(PKT_NO_REAL, pkt->len);
	return XDP_DROP;
}

/* The vip_index slot of a flow's destination; xdplbd/core/schema.py mirrors it. */
static __always_inline __u32 vip_slot_of(const struct flow_key *flow)
{
	const __u32 *a = (const __u32 *)flow->dst;
	__u32 x = a[0] ^ a[1] ^ a[2] ^ a[3] ^ flow->dport ^ (flow->proto << 16) ^
		  (flow->family << 24);

	x ^= x >> 16;
	x *= VIP_INDEX_MULT;
	return ((__u64)x * VIP_INDEX_SLOTS) >> 32;
}

static __always_inline int vip_key_matches(const struct vip_key *key,
					   const struct flow_key *flow)
{
	const __u64 *a = (const __u64 *)key->addr, *b = (const __u64 *)flow->dst;

	return a[0] == b[0] && a[1] == b[1] && key->port == flow->dport &&
	       key->proto == flow->proto && key->family == flow->family;
}

/* Is the flow's destination a VIP? Sets *vip_id if so. */
static __always_inline int lookup_vip(const struct flow_key *flow, __u32 *vip_id)
{
	__u32 slot = vip_slot_of(flow);
	struct vip_slot *vs = vip_index.lookup(&slot);
	struct vip_key key = {};
	struct vip_info *vip;

	if (!vs || vs->state == VIP_SLOT_EMPTY)
		return 0;
	if (vs->state == VIP_SLOT_EXACT) {
		if (!vip_key_matches(&vs->key, flow))
			return 0;
		*vip_id = vs->vip_id;
		return 1;
	}
	__builtin_memcpy(key.addr, flow->dst, sizeof(key.addr));
	key.port = flow->dport;
	key.proto = flow->proto;
	key.family = flow->family;
	vip = vips.lookup(&key);
	if (!vip)
		return 0;
	*vip_id = vip->vip_id;
	return 1;
}

/* --- connection table (see struct ct_bucket) --- */

static __always_inline __u32 ct_tag(__u64 hash)
{
	return (__u32)hash | 1; /* never 0, which marks an empty way */
}

static __always_inline struct ct_bucket *ct_bucket_of(__u64 hash)
{
	__u32 idx = ((hash >> 32) * CT_BUCKETS) >> 32;

	return conntrack.lookup(&idx);
}

static __always_inline __u32 ct_backend(__u64 entry)
{
	return (entry >> CT_ID_SHIFT) & CT_ID_MASK;
}

static __always_inline __u32 ct_age(__u64 entry, __u32 now)
{
	return (now - (__u32)(entry >> CT_SEEN_SHIFT)) & CT_TICK_MASK;
}

static __always_inline __u64 ct_make(__u32 tag, __u32 id, __u32 now)
{
	return tag | ((__u64)id << CT_ID_SHIFT) | ((__u64)(now & CT_TICK_MASK) << CT_SEEN_SHIFT);
}

/* The current tick (see struct settings). bpf_ktime_get_coarse_ns() is a
 * helper call, 2 ns a packet; a per-CPU cache of it refreshed once a jiffy
 * cost 1 ns, and converting jiffies to nanoseconds 0.6 (measured). */
static __always_inline __u32 ct_now(const struct settings *s)
{
	return (bpf_jiffies64() >> s->tick_shift) & CT_TICK_MASK;
}

/* The way holding this flow's entry, or -1. */
static __always_inline int ct_find(const struct ct_bucket *bucket, __u32 tag)
{
#pragma unroll
	for (int i = 0; i < CT_WAYS; i++)
		if ((__u32)bucket->way[i] == tag)
			return i;
	return -1;
}

/* The way a new flow takes: an empty one, else the least recently seen. */
static __always_inline int ct_victim(const struct ct_bucket *bucket, __u32 now)
{
	__u32 oldest = 0;
	int victim = 0;

#pragma unroll
	for (int i = 0; i < CT_WAYS; i++) {
		__u64 e = bucket->way[i];
		__u32 age;

		if (!e)
			return i;
		age = ct_age(e, now);
		if (age > oldest) {
			oldest = age;
			victim = i;
		}
	}
	return victim;
}

/* ICMP frag-needed / packet-too-big about a VIP flow: the real's reply was
 * too big for the path. Send it to the real that owns the flow so its PMTU
 * discovery works; never create a conntrack entry for it. */
static __always_inline int route_icmp_error(struct packet *pkt)
{
	struct ct_bucket *bucket;
	struct backend *b = NULL;
	struct settings *s;
	__u32 vip_id, id = 0;
	__u64 hash;
	int way;

	if (!lookup_vip(&pkt->flow, &vip_id))
		return pass(pkt->len);
	s = get_settings();
	if (!s)
		return pass(pkt->len);
	if (!for_us(pkt, s))
		return pass_as(PKT_OTHER_MAC, pkt->len);
	hash = flow_hash(&pkt->flow);
	bucket = ct_bucket_of(hash);
	if (!bucket)
		return pass(pkt->len);
	way = ct_find(bucket, ct_tag(hash));
	if (way >= 0 && way < CT_WAYS) {
		id = ct_backend(bucket->way[way]);
		b = backend_for(id, vip_id);
	}
	if (!b) {
		id = ring_pick(vip_id, hash);
		b = backend_for(id, vip_id);
	}
	if (!b)
		return pass(pkt->len);
	return forward(pkt, s, id, b, PKT_ICMP_ROUTED);
}

/* `proto` is IPPROTO_TCP or IPPROTO_UDP, a constant at each call (see
 * balance_l4). */
static __always_inline int balance(struct packet *pkt, const __u8 proto)
{
	struct ct_bucket *bucket;
	struct backend *b = NULL;
	struct settings *s;
	__u32 vip_id, id, tag, now;
	__u64 hash, entry;
	int way;

	if (!lookup_vip(&pkt->flow, &vip_id))
		return pass(pkt->len);
	s = get_settings(); /* one read for the UDP timeout and the LB's MAC */
	if (!s)
		return pass(pkt->len);
	if (!for_us(pkt, s))
		return pass_as(PKT_OTHER_MAC, pkt->len);
	hash = flow_hash(&pkt->flow);
	tag = ct_tag(hash);
	now = ct_now(s);
	bucket = ct_bucket_of(hash);
	if (!bucket)
		return pass(pkt->len);

	way = ct_find(bucket, tag);
	/* A SYN always re-hashes, so a reused client port never follows a
	 * stale entry to a drained or removed real. */
	if (way >= 0 && way < CT_WAYS && !(proto == IPPROTO_TCP && pkt->tcp_flags_syn_only)) {
		entry = bucket->way[way];
		id = ct_backend(entry);
		b = backend_for(id, vip_id);
		if (b && proto == IPPROTO_UDP &&
		    ct_age(entry, now) > s->udp_timeout_ticks)
			b = NULL; /* idle too long: a new flow */
		if (b) {
			/* Refresh the entry's clock at most once a tick. */
			if ((entry >> CT_SEEN_SHIFT) != now)
				bucket->way[way] = ct_make(tag, id, now);
			return forward(pkt, s, id, b, PKT_HIT);
		}
	}

	/* Miss (including a TCP non-SYN, as after a restart or an LB failover):
	 * the ring gives the same real as long as the VIP's reals are unchanged. */
	id = ring_pick(vip_id, hash);
	b = backend_for(id, vip_id);
	if (!b)
		return no_real(pkt, vip_id);
	if (way < 0 || way >= CT_WAYS)
		way = ct_victim(bucket, now);
	/* Both give a way in [0, CT_WAYS); the mask shows the verifier. */
	bucket->way[way & (CT_WAYS - 1)] = ct_make(tag, id, now);
	return forward(pkt, s, id, b, PKT_CT_NEW);
}

/* balance() inlined once per L4 protocol, as it is once per address family
 * (xdplb_main): the TCP copy has no UDP timeout check and the UDP copy no
 * SYN rule (established 14.1 -> 13.8 ns, UDP 14.4 -> 13.5, measured). */
static __always_inline int balance_l4(struct packet *pkt)
{
	if (pkt->flow.proto == IPPROTO_TCP)
		return balance(pkt, IPPROTO_TCP);
	return balance(pkt, IPPROTO_UDP);
}

int xdplb_main(struct xdp_md *ctx)
{
	struct packet pkt = {};
	__u32 l3_off = 0;
	__be16 proto;
	int res;

	pkt.data = (void *)(long)ctx->data;
	pkt.data_end = (void *)(long)ctx->data_end;
	pkt.len = pkt.data_end - pkt.data;

	proto = parse_eth(pkt.data, pkt.data_end, &l3_off);
	/* balance() is inlined once per family, so that the IPv4 copy is
	 * compiled knowing the flow-key words an IPv4 address leaves zero: a
	 * three-word hash and a shorter VIP compare. With set_mac(), this took
	 * an established IPv4 packet from 20.8 to 17.9 ns (docs/dataplane.md). */
	if (proto == htons(ETH_P_IP)) {
		res = parse_ipv4(&pkt, pkt.data + l3_off);
		if (res == PARSE_OK)
			return balance_l4(&pkt);
	} else if (proto == htons(ETH_P_IPV6)) {
		res = parse_ipv6(&pkt, pkt.data + l3_off);
		if (res == PARSE_OK)
			return balance_l4(&pkt);
	} else {
		res = proto ? PARSE_OTHER : PARSE_MALFORMED;
	}

	switch (res) {
	case PARSE_ICMP_ERROR:
		return route_icmp_error(&pkt);
	case PARSE_FRAGMENT:
		return pass_as(PKT_FRAGMENT, pkt.len);
	case PARSE_MALFORMED:
		return pass_as(PKT_MALFORMED, pkt.len);
	default:
		return pass(pkt.len);
	}
}
