// SPDX-License-Identifier: GPL-2.0
/*
 * The floor: the least an established-flow balancer can do per packet, to
 * put the data plane's figures in proportion. `make bench` measures it in
 * the same run as bpf/xdplb.c and the trivial MAC-swap program.
 *
 * It does what bpf/xdplb.c does on an established IPv4 TCP flow, with the
 * same map shapes: a direct-mapped VIP slot, a 64-byte conntrack bucket of
 * eight tagged entries, a backend record, the MAC rewrite and one per-CPU
 * counter (the real's, from which xdplb's tools derive the rest). It leaves
 * out what the real program must also do: VLAN tags, IPv6, UDP and its idle
 * timeout, ICMP errors, the SYN rule, the conntrack clock and LRU refresh,
 * the settings read and a 16-byte VIP key compare. On a miss it files the
 * flow under backend 1, so the first run learns the flow and every later
 * one hits.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

#define VIP_SLOTS 4096 /* xdplb's vip_index at the default max_vips */
#define VIP_SLOT_EXACT 2
#define VIP_INDEX_MULT 0x9e3779b1U
#define FAMILY_V4 4
#define CT_WAYS 8
#define CT_BUCKETS 524288
#define CT_BUCKET_SHIFT 45 /* 64 - log2(CT_BUCKETS) */
#define CT_ID_SHIFT 32
#define CT_ID_MASK 0xffffULL
#define BACKEND_ACTIVE 1
#define IP_FRAG_MASK 0x3fff /* MF flag and fragment offset */

struct vip_slot {
	__u32 state;
	__u32 vip_id;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct backend {
	__u8 mac[ETH_ALEN];
	__u8 family;
	__u8 flags;
	__u32 vip_id;
	__u32 weight;
	__u8 addr[16];
};

struct ct_bucket {
	__u64 way[CT_WAYS];
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

BPF_ARRAY(vip_index, struct vip_slot, VIP_SLOTS);
BPF_ARRAY(backends, struct backend, 4096);
BPF_ARRAY(conntrack, struct ct_bucket, CT_BUCKETS);
BPF_PERCPU_ARRAY(backend_stats, struct counter, 4096);

static __always_inline void count(struct counter *c, __u64 bytes)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* xdplb's vip_slot_of for an IPv4 TCP key, so bench/dataplane.py files the
 * VIP with schema.vip_slot. */
static __always_inline __u32 vip_slot_of(__be32 daddr, __be16 dport)
{
	__u32 x = daddr ^ dport ^ (IPPROTO_TCP << 16) ^ (FAMILY_V4 << 24);

	x ^= x >> 16;
	x *= VIP_INDEX_MULT;
	return ((__u64)x * VIP_SLOTS) >> 32;
}

static __always_inline __u64 flow_hash(__be32 saddr, __be32 daddr, __u32 ports)
{
	__u64 h = 0x9747b28cULL + saddr * 0x9e3779b185ebca87ULL +
		  daddr * 0x165667b19e3779f9ULL +
		  (((__u64)ports << 8) | IPPROTO_TCP) * 0x27d4eb2f165667c5ULL;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	return h ^ (h >> 33);
}

int xdp_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u64 len = data_end - data;
	struct ct_bucket *bucket;
	struct vip_slot *vs;
	struct backend *b;
	struct tcphdr *tcp;
	__u32 slot, idx, tag, id = 0, vip_id, ports;
	__u64 hash;

	if ((void *)(ip + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol != IPPROTO_TCP || (ip->frag_off & htons(IP_FRAG_MASK)))
		return XDP_PASS;
	tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return XDP_PASS;
	ports = *(__u32 *)tcp;

	slot = vip_slot_of(ip->daddr, tcp->dest);
	vs = vip_index.lookup(&slot);
	if (!vs || vs->state != VIP_SLOT_EXACT || vs->addr != ip->daddr || vs->port != tcp->dest)
		return XDP_PASS;
	vip_id = vs->vip_id;

	hash = flow_hash(ip->saddr, ip->daddr, ports);
	idx = hash >> CT_BUCKET_SHIFT;
	tag = (__u32)hash | 1;
	bucket = conntrack.lookup(&idx);
	if (!bucket)
		return XDP_PASS;
#pragma unroll
	for (int i = 0; i < CT_WAYS; i++) {
		if ((__u32)bucket->way[i] == tag) {
			id = (bucket->way[i] >> CT_ID_SHIFT) & CT_ID_MASK;
			break;
		}
	}
	if (!id) { /* learn: only the first run gets here */
		id = 1;
		bucket->way[0] = tag | ((__u64)id << CT_ID_SHIFT);
	}
	b = backends.lookup(&id);
	if (!b || !(b->flags & BACKEND_ACTIVE) || b->vip_id != vip_id)
		return XDP_PASS;

	__builtin_memcpy(eth->h_dest, b->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, b->mac, ETH_ALEN);
	count(backend_stats.lookup(&id), len);
	return XDP_TX;
}
