/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for translated flows.
 *
 * Each flow has two entries in one LRU map: the forward entry, keyed by the
 * tuple the client sends (client -> VIP), holds the backend; the reply
 * entry, keyed by the tuple the backend answers with (backend -> client),
 * holds the frontend. LRU eviction means a full table never wedges new
 * flows; an evicted flow is picked anew on its next packet.
 *
 * Lifetimes follow TCP state as the pod sends it: a flow is "SYN" until
 * the client ACKs without SYN, "established" after, "closing" once a FIN or
 * RST goes either way. A SYN on a closing or expired entry starts a new
 * flow, so a reused client port chooses a backend anew. Entries are
 * refreshed at most once per PN_CT_REFRESH_NS, so an established flow
 * writes its cache line about once a second, not per packet. */
#pragma once

#include "parse.h"

#define PN_NS		   1000000000ULL
#define PN_CT_TCP_SYN_NS   (60 * PN_NS)
#define PN_CT_TCP_EST_NS   (21600 * PN_NS)
#define PN_CT_TCP_CLOSE_NS (10 * PN_NS)
#define PN_CT_UDP_NS	   (60 * PN_NS)
#define PN_CT_REFRESH_NS   (1 * PN_NS)

/* pn_ct_stateful says whether flows of proto open and close: TCP, and SCTP,
 * whose first chunk parses into TCP flags (pn_sctp_flags). They share the
 * lifetimes: an SCTP association sends a HEARTBEAT every 30 s when idle. */
static __always_inline int pn_ct_stateful(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_SCTP;
}

static __always_inline __u64 pn_ct_lifetime(__u8 proto, __u8 flags)
{
	if (!pn_ct_stateful(proto))
		return PN_CT_UDP_NS;
	if (flags & PN_CT_CLOSING)
		return PN_CT_TCP_CLOSE_NS;
	if (flags & PN_CT_ESTABLISHED)
		return PN_CT_TCP_EST_NS;
	return PN_CT_TCP_SYN_NS;
}

static __always_inline __u8 pn_ct_next_flags(__u8 proto, __u8 flags, __u8 tcp_flags)
{
	if (!pn_ct_stateful(proto))
		return flags;
	if (tcp_flags & (PN_TCP_FIN | PN_TCP_RST))
		return flags | PN_CT_CLOSING;
	if ((tcp_flags & (PN_TCP_ACK | PN_TCP_SYN)) == PN_TCP_ACK)
		return flags | PN_CT_ESTABLISHED;
	return flags;
}

static __always_inline void pn_ct_key_of(struct pn_ct_key *k, const struct pn_pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

/* The reply key of a flow from its forward key and entry. */
static __always_inline void pn_ct_reply_key(struct pn_ct_key *rk, const struct pn_ct_key *fk,
					    const struct pn_ct_entry *fe)
{
	rk->saddr = fe->addr;
	rk->daddr = fk->saddr;
	rk->sport = fe->port;
	rk->dport = fk->sport;
	rk->proto = fk->proto;
	rk->dir = PN_CT_REPLY;
	rk->pad = 0;
}

/* The forward key of a flow from its reply key and entry. */
static __always_inline void pn_ct_forward_key(struct pn_ct_key *fk, const struct pn_ct_key *rk,
					      const struct pn_ct_entry *re)
{
	fk->saddr = rk->daddr;
	fk->daddr = re->addr;
	fk->sport = rk->dport;
	fk->dport = re->port;
	fk->proto = rk->proto;
	fk->dir = PN_CT_FORWARD;
	fk->pad = 0;
}

static __always_inline int pn_ct_stale(const struct pn_ct_entry *e, __u8 flags, __u64 expires)
{
	return flags != e->flags || expires > e->expires + PN_CT_REFRESH_NS;
}

/* pn_ct_forward_hit decides whether a forward entry still serves the
 * packet and advances its state. It returns 0 when the flow must choose a
 * backend anew (expired, or a new SYN on a closing flow). */
static __always_inline int pn_ct_forward_hit(const struct pn_ct_key *fk, struct pn_ct_entry *fe,
					     __u8 tcp_flags, __u64 now)
{
	struct pn_ct_entry *re;
	struct pn_ct_key rk;
	__u64 expires;
	__u8 flags;

	if (fe->expires <= now)
		return 0;
	if (pn_ct_stateful(fk->proto) && (tcp_flags & (PN_TCP_SYN | PN_TCP_ACK)) == PN_TCP_SYN &&
	    (fe->flags & PN_CT_CLOSING))
		return 0;
	/* An SCTP INIT on an established association's entry starts a new
	 * association from the same port (the old one ended unseen: a lost
	 * ABORT, one bundled behind other chunks): it chooses anew. A
	 * retransmitted INIT finds its entry not yet established. */
	if (fk->proto == IPPROTO_SCTP && (tcp_flags & (PN_TCP_SYN | PN_TCP_ACK)) == PN_TCP_SYN &&
	    (fe->flags & PN_CT_ESTABLISHED))
		return 0;

	flags = pn_ct_next_flags(fk->proto, fe->flags, tcp_flags);
	expires = now + pn_ct_lifetime(fk->proto, flags);
	if (!pn_ct_stale(fe, flags, expires))
		return 1;
	fe->flags = flags;
	fe->expires = expires;
	pn_ct_reply_key(&rk, fk, fe);
	re = bpf_map_lookup_elem(&podnic_ct_v1, &rk);
	if (re) {
		re->flags = flags;
		re->expires = expires;
	}
	return 1;
}

/* pn_ct_backend_alive says whether a UDP flow may stay on its backend: only
 * while the backend is still in the backends map. A UDP flow that keeps
 * sending would otherwise renew its entry forever and never leave a pod
 * that is gone; kube-proxy deletes such conntrack entries for the same
 * reason. The agent never reuses backend ids, so a missing id means the
 * backend was removed. TCP flows and SCTP associations stay: they end with
 * the connection (an association to a gone pod fails its heartbeats); an
 * SCTP INIT does not. */
static __always_inline int pn_ct_backend_alive(const struct pn_ct_key *fk,
					       const struct pn_ct_entry *fe, __u8 tcp_flags)
{
	__u32 id = fe->backend_id;

	/* An SCTP INIT (retransmitted: see pn_ct_forward_hit) opens the
	 * association; it does not wait on a backend that left. */
	if (fk->proto == IPPROTO_TCP ||
	    (fk->proto == IPPROTO_SCTP && (tcp_flags & (PN_TCP_SYN | PN_TCP_ACK)) != PN_TCP_SYN))
		return 1;
	return bpf_map_lookup_elem(&podnic_be_v1, &id) != NULL;
}

/* pn_ct_reply_hit checks a reply entry and advances the flow's state from
 * the reply direction (a FIN or RST from the backend). */
static __always_inline int pn_ct_reply_hit(const struct pn_ct_key *rk, struct pn_ct_entry *re,
					   __u8 tcp_flags, __u64 now)
{
	struct pn_ct_entry *fe;
	struct pn_ct_key fk;
	__u64 expires;
	__u8 flags;

	if (re->expires <= now)
		return 0;
	flags = re->flags;
	if (pn_ct_stateful(rk->proto) && (tcp_flags & (PN_TCP_FIN | PN_TCP_RST)))
		flags |= PN_CT_CLOSING;
	expires = now + pn_ct_lifetime(rk->proto, flags);
	if (!pn_ct_stale(re, flags, expires))
		return 1;
	re->flags = flags;
	re->expires = expires;
	pn_ct_forward_key(&fk, rk, re);
	fe = bpf_map_lookup_elem(&podnic_ct_v1, &fk);
	if (fe) {
		fe->flags |= flags;
		fe->expires = now + pn_ct_lifetime(rk->proto, fe->flags);
	}
	return 1;
}

/* pn_ct_reply_key_of sets rk to the key of the reply entry that replies to
 * a packet the pod sends would be translated by. A packet to a VIP never
 * has one (reply entries are keyed by the backend's address). */
static __always_inline void pn_ct_reply_key_of(struct pn_ct_key *rk, const struct pn_pkt *p)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	rk->saddr = p->daddr;
	rk->daddr = p->saddr;
	rk->sport = p->dport;
	rk->dport = p->sport;
	rk->proto = p->proto;
	rk->dir = PN_CT_REPLY;
}

/* pn_ct_reply_of returns the reply entry replies to a packet the pod sends
 * would be translated by, or NULL (a lookup: cheaper than a delete, which
 * locks the bucket). */
static __always_inline struct pn_ct_entry *pn_ct_reply_of(const struct pn_pkt *p)
{
	struct pn_ct_key rk;

	pn_ct_reply_key_of(&rk, p);
	return bpf_map_lookup_elem(&podnic_ct_v1, &rk);
}

/* pn_ct_forget_flow deletes the flow whose reply entry is re, the one
 * pn_ct_reply_of found for p: both entries, so that a packet of that flow
 * still to come is translated anew, with a reply entry again, rather than
 * by a forward entry whose reply entry is gone. */
static __always_inline void pn_ct_forget_flow(const struct pn_pkt *p, const struct pn_ct_entry *re)
{
	struct pn_ct_key rk, fk;

	pn_ct_reply_key_of(&rk, p);
	pn_ct_forward_key(&fk, &rk, re);
	bpf_map_delete_elem(&podnic_ct_v1, &fk);
	bpf_map_delete_elem(&podnic_ct_v1, &rk);
}

/* pn_ct_forget_reply deletes that reply entry, if any. */
static __always_inline void pn_ct_forget_reply(const struct pn_pkt *p)
{
	struct pn_ct_key rk;

	pn_ct_reply_key_of(&rk, p);
	bpf_map_delete_elem(&podnic_ct_v1, &rk);
}

/* pn_ct_create writes both entries of a new flow, reply first so that no
 * reply can arrive before its entry exists. An entry that exists already (a
 * client port used again, the same backend chosen) is overwritten in place:
 * an LRU insert takes a node from the free lists and, once the map has
 * filled with closed flows, evicts under a lock, which short connections
 * would otherwise pay on every SYN. old is the flow's forward entry, if any. */
static __always_inline int pn_ct_create(const struct pn_ct_key *fk, struct pn_ct_entry *old,
					const struct pn_backend *be, __u32 svc_id, __u32 backend_id,
					__u8 flags, __u8 tcp_flags, __u64 now)
{
	struct pn_ct_entry fe = {}, re = {};
	struct pn_ct_entry *cur;
	struct pn_ct_key rk;

	flags = pn_ct_next_flags(fk->proto, flags, tcp_flags);
	fe.addr = be->addr;
	fe.port = be->port;
	fe.flags = flags;
	fe.svc_id = svc_id;
	fe.backend_id = backend_id;
	fe.expires = now + pn_ct_lifetime(fk->proto, flags);

	re = fe;
	re.addr = fk->daddr;
	re.port = fk->dport;

	pn_ct_reply_key(&rk, fk, &fe);
	cur = bpf_map_lookup_elem(&podnic_ct_v1, &rk);
	if (cur)
		*cur = re;
	else if (bpf_map_update_elem(&podnic_ct_v1, &rk, &re, BPF_ANY) < 0)
		return -1;
	if (old)
		*old = fe;
	else if (bpf_map_update_elem(&podnic_ct_v1, fk, &fe, BPF_ANY) < 0)
		return -1;
	return 0;
}
