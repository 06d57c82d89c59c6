/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The pass-through fast path: most packets a pod sends and receives are
 * not Service traffic (pod-to-pod, and every connection the socket-level
 * programs balanced), and should cost next to nothing.
 *
 * Egress: a packet to an address outside the cluster's Service CIDRs
 * cannot be for a Service. The agent copies the CIDRs (--service-cidr)
 * into podnic_cfg_v1, an array the verifier turns into a direct load; a
 * family without CIDRs there takes the full path.
 *
 * Ingress: a reply needs reverse translation only while some flow of its
 * protocol translated by tc, whose replies arrive on this interface, is
 * alive. podnic_live_v1 holds, per interface slot and protocol, a time after
 * which no such conntrack entry can be alive; the egress program pushes it
 * past every expiry it writes, at most about once a second, so the line
 * stays shared between CPUs. While no flow of either protocol can be alive
 * there, the ingress programs return before parsing the packet.
 *
 * What a pass costs in live traffic is mostly cache misses and the call
 * itself, not instructions (6-9 ns over an empty program when hot under
 * BPF_PROG_TEST_RUN): so the path touches as few cache lines as it can,
 * and counts nothing. */
#pragma once

#include "common.h"

#define PN_CFG_CIDRS	  4
#define PN_LIVE_MARGIN_NS 1000000000ULL

struct pn_cidr4 {
	__be32 net;
	__be32 mask;
};

struct pn_cidr6 {
	__u32 net[4];
	__u32 mask[4];
};

enum pn_cfg_flags {
	PN_CFG_PEER_NAME = 1 << 0, /* socket LB remembers the Service for getpeername() */
	/* Some VIPs lie outside the Service CIDRs (a Service's externalIPs,
	 * its LoadBalancer ingress IPs): a packet to another address is
	 * looked up as a VIP before it passes. */
	PN_CFG_EXTERNAL = 1 << 1,
	/* Some Service has a NodePort: a packet to one of the node's
	 * addresses (podnic_nodeip_v1) is looked up before it passes. */
	PN_CFG_NODEPORT = 1 << 2,
};

struct pn_cfg {
	__u32 v4_count; /* Service CIDRs of the family; 0: not known */
	__u32 v6_count;
	__u32 flags;
	__u32 pad;
	struct pn_cidr4 v4[PN_CFG_CIDRS];
	struct pn_cidr6 v6[PN_CFG_CIDRS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pn_cfg);
} podnic_cfg_v1 SEC(".maps");

const enum pn_cfg_flags *pn_unused_cfg_flags __attribute__((unused));

/* Indexed by the ifindex the reply arrives on (the pod's NIC, or lo for
 * self access) modulo PN_LIVE_SLOTS: one pod's tc-translated flows do not
 * make every other pod look its replies up. Colliding ifindexes only cost
 * lookups. */
#define PN_LIVE_SLOTS 1024

struct pn_live {
	__u64 until[2]; /* [0] TCP and SCTP, [1] UDP: CLOCK_MONOTONIC ns */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PN_LIVE_SLOTS);
	__type(key, __u32);
	__type(value, struct pn_live);
} podnic_live_v1 SEC(".maps");

/* The node's own addresses (its Node's InternalIPs), while some Service
 * has a NodePort (PN_CFG_NODEPORT): a pod reaching its node's address on a
 * NodePort is translated, as kube-proxy translates it for pods on the
 * node. Checked only for a packet outside the Service CIDRs, against a
 * handful of addresses on one array line, so that the common NodePort
 * Service costs the fast path next to nothing (an external VIP costs a
 * hash lookup); without NodePorts the line is not even read. */
#define PN_NODE_ADDRS 4

struct pn_node_addrs {
	__u32 count; /* 0: no NodePort frontend */
	__u32 pad;
	struct pn_addr addr[PN_NODE_ADDRS]; /* IPv4 v4-mapped */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pn_node_addrs);
} podnic_nodeip_v1 SEC(".maps");

/* pn_is_node_addr reports whether a is one of the node's addresses while
 * some Service has a NodePort. */
static __always_inline int pn_is_node_addr(const struct pn_addr *a)
{
	__u32 zero = 0;
	struct pn_node_addrs *n = bpf_map_lookup_elem(&podnic_nodeip_v1, &zero);
	int i;

	if (!n || n->count == 0)
		return 0;
#pragma unroll
	for (i = 0; i < PN_NODE_ADDRS; i++) {
		const struct pn_addr *x = &n->addr[i];

		if (i < n->count && x->w[0] == a->w[0] && x->w[1] == a->w[1] &&
		    x->w[2] == a->w[2] && x->w[3] == a->w[3])
			return 1;
	}
	return 0;
}

/* pn_outside_cidrs reports whether addr is known not to be in any of the
 * Service CIDRs of cfg. */
static __always_inline int pn_outside_cidrs(const struct pn_cfg *cfg, const struct pn_addr *a)
{
	int i;

	if (a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff)) {
		if (cfg->v4_count == 0)
			return 0;
#pragma unroll
		for (i = 0; i < PN_CFG_CIDRS; i++) {
			if (i < cfg->v4_count && (a->w[3] & cfg->v4[i].mask) == cfg->v4[i].net)
				return 0;
		}
		return 1;
	}
	if (cfg->v6_count == 0)
		return 0;
#pragma unroll
	for (i = 0; i < PN_CFG_CIDRS; i++) {
		const struct pn_cidr6 *c = &cfg->v6[i];

		if (i < cfg->v6_count && (a->w[0] & c->mask[0]) == c->net[0] &&
		    (a->w[1] & c->mask[1]) == c->net[1] && (a->w[2] & c->mask[2]) == c->net[2] &&
		    (a->w[3] & c->mask[3]) == c->net[3])
			return 0;
	}
	return 1;
}

/* pn_outside_service_cidrs reports whether addr is known not to be in any
 * Service CIDR. */
static __always_inline int pn_outside_service_cidrs(const struct pn_addr *a)
{
	__u32 zero = 0;
	struct pn_cfg *cfg = bpf_map_lookup_elem(&podnic_cfg_v1, &zero);

	return cfg && pn_outside_cidrs(cfg, a);
}

static __always_inline __u32 pn_live_proto(__u8 proto)
{
	/* SCTP with TCP: both live long once established. */
	return proto == IPPROTO_TCP || proto == IPPROTO_SCTP ? 0 : 1;
}

/* pn_live_slot returns the podnic_live_v1 slot of ifindex. */
static __always_inline struct pn_live *pn_live_slot(__u32 ifindex)
{
	__u32 slot = ifindex % PN_LIVE_SLOTS;

	return bpf_map_lookup_elem(&podnic_live_v1, &slot);
}

/* pn_live_time returns when the last tc-translated flow of proto whose
 * replies arrive on ifindex can expire: 0 when there never was one (the
 * common case of a pod whose connections are all balanced at the socket,
 * decided without reading the clock), and "always" when the slot cannot
 * be read. */
static __always_inline __u64 pn_live_time(__u32 ifindex, __u8 proto)
{
	struct pn_live *l = pn_live_slot(ifindex);

	return l ? l->until[pn_live_proto(proto) & 1] : ~0ULL;
}

/* pn_nothing_alive reports whether no tc-translated flow of any protocol
 * whose replies arrive on ifindex can be alive: one cache line, and the
 * clock only while some such flow was seen. */
static __always_inline int pn_nothing_alive(__u32 ifindex)
{
	struct pn_live *l = pn_live_slot(ifindex);
	__u64 until;

	if (!l)
		return 0;
	until = l->until[0] > l->until[1] ? l->until[0] : l->until[1];
	return until == 0 || bpf_ktime_get_ns() >= until;
}

static __always_inline int pn_cfg_flag(__u32 flag)
{
	__u32 zero = 0;
	struct pn_cfg *cfg = bpf_map_lookup_elem(&podnic_cfg_v1, &zero);

	return cfg && (cfg->flags & flag);
}

/* pn_live_until records that a flow of proto whose replies arrive on
 * ifindex lives until expires. The bump is an atomic add, so two CPUs
 * bumping at once can only push the time further out, never lose the
 * later one; it happens about once a second at most. */
static __always_inline void pn_live_until(__u32 ifindex, __u8 proto, __u64 expires)
{
	struct pn_live *l = pn_live_slot(ifindex);
	__u32 i = pn_live_proto(proto) & 1;
	__u64 cur;

	if (!l)
		return;
	cur = l->until[i];
	if (cur < expires + PN_LIVE_MARGIN_NS)
		__sync_fetch_and_add(&l->until[i], expires + 2 * PN_LIVE_MARGIN_NS - cur);
}
