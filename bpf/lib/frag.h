/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IP fragments of translated flows.
 *
 * The stack fragments a datagram bigger than the path MTU before tc sees
 * it (ip_fragment, ip6_fragment) and reassembles after tc: every fragment
 * passes the programs on its own. Only the first carries the ports, so
 * only it can be looked up in conntrack; it records its translation by
 * IP identification, and the datagram's later fragments take it from
 * there. kube-proxy's conntrack reassembles instead (nf_defrag); for the
 * pod the result is the same. A later fragment that arrives before its
 * first (reordered on the way) finds nothing: dropped when it goes to a
 * VIP, passed untouched on the way in. */
#pragma once

#include "common.h"

#define PN_FRAG_MAX	    16384
#define PN_FRAG_LIFETIME_NS (30ULL * 1000000000ULL) /* ipfrag_time's default */

enum pn_frag_dir {
	PN_FRAG_OUT = 0, /* pod to VIP: the destination is rewritten */
	PN_FRAG_IN = 1,	 /* backend to pod: the source is rewritten */
};

struct pn_frag_key {
	struct pn_addr saddr;
	struct pn_addr daddr;
	__be32 id;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

struct pn_frag_val {
	struct pn_addr addr; /* the address the later fragments get */
	__u64 expires;	     /* CLOCK_MONOTONIC ns */
	__u8 flags;	     /* PN_CT_SELF: to lo; PN_CT_NEIGH: next hop again */
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PN_FRAG_MAX);
	__type(key, struct pn_frag_key);
	__type(value, struct pn_frag_val);
} podnic_frag_v1 SEC(".maps");

static __always_inline void pn_frag_key_of(struct pn_frag_key *k, const struct pn_pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = p->frag_id;
	k->proto = p->proto;
	k->dir = dir;
}

/* pn_frag_record remembers, for a first fragment, the address its
 * datagram's later fragments get. Other packets record nothing. */
static __always_inline void pn_frag_record(const struct pn_pkt *p, __u8 dir,
					   const struct pn_addr *to, __u8 flags, __u64 now)
{
	struct pn_frag_key k = {};
	struct pn_frag_val v = {
		.addr = *to,
		.expires = now + PN_FRAG_LIFETIME_NS,
		.flags = flags,
	};

	if (!p->fragment)
		return;
	pn_frag_key_of(&k, p, dir);
	bpf_map_update_elem(&podnic_frag_v1, &k, &v, BPF_ANY);
}

/* pn_frag_lookup finds what the first fragment of a later fragment's
 * datagram recorded, while it can still be reassembled. */
static __always_inline struct pn_frag_val *pn_frag_lookup(const struct pn_pkt *p, __u8 dir,
							  __u64 now)
{
	struct pn_frag_key k = {};
	struct pn_frag_val *v;

	pn_frag_key_of(&k, p, dir);
	v = bpf_map_lookup_elem(&podnic_frag_v1, &k);
	if (!v || now >= v->expires)
		return NULL;
	return v;
}
