/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing for TCP.
 *
 * A pod's connect() to a Service is answered by rewriting the address the
 * socket connects to: the socket connects to the backend itself, so none
 * of the connection's packets needs translating, and conntrack never sees
 * it. That is the cheap path for short connections: one Service lookup per
 * connection instead of a conntrack lookup (and on state changes, two) per
 * packet in each direction.
 *
 * The programs hang on the node's cgroup v2 root and so see every connect()
 * on the node; they act only in the network namespaces listed in
 * podnic_lbns_v1, which the CNI fills as it attaches a pod. Everything they
 * leave alone goes on to the tc programs: UDP, Services with session
 * affinity (the affinity key is the client address, not known before the
 * socket is bound), Services without endpoints (the tc path answers with a
 * RST), VIPs of an address family the socket cannot reach. getpeername()
 * answers with the Service, as it would through kube-proxy, while
 * PN_CFG_PEER_NAME is set: remembering the Service in socket storage costs
 * about 2 µs per connection (allocation, and the free when the socket
 * goes), more than everything else here together. */
#pragma once

#include "common.h"
#include "fast.h"
#include "lb.h"

/* The network namespaces (by netns cookie) where connect() is balanced.
 * The value is the hash of the attachment's owner, so that a DEL whose
 * netns is gone can still find its entry. */
struct pn_lb_netns {
	__u64 owner_hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_LB_NETNS_MAX);
	__type(key, __u64);
	__type(value, struct pn_lb_netns);
} podnic_lbns_v1 SEC(".maps");

/* The Service a balanced socket connected to, kept with the socket and
 * freed with it. */
struct pn_lb_sock {
	struct pn_addr addr;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pn_lb_sock);
} podnic_lbsk_v1 SEC(".maps");

static __always_inline void pn_count_sock(int reason)
{
	__u32 key = pn_counter_index(PN_DIR_SOCK, reason);
	struct pn_counter *c = bpf_map_lookup_elem(&podnic_cnt_v1, &key);

	if (c)
		c->packets++;
}

static __always_inline int pn_addr_is_v4(const struct pn_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

/* pn_sock_lb chooses a backend for a TCP connect() to addr:port in a pod
 * podnic serves and rewrites addr and port to it. It returns 1 when it did,
 * 0 when the connect goes on unchanged. v4 says the socket can only reach
 * IPv4 addresses. */
static __always_inline int pn_sock_lb(struct bpf_sock_addr *ctx, struct pn_addr *addr, __be16 *port,
				      int v4)
{
	struct pn_svc_key k = {};
	struct pn_svc_val *svc;
	struct pn_backend *be;
	struct pn_lb_sock *s;
	__u64 cookie;
	__u32 id;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	cookie = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&podnic_lbns_v1, &cookie))
		return 0;

	k.addr = *addr;
	k.port = *port;
	k.proto = IPPROTO_TCP;
	k.scope = PN_SCOPE_CLUSTER;
	svc = bpf_map_lookup_elem(&podnic_svc_v1, &k);
	if (!svc || svc->count == 0 || (svc->flags & PN_SVC_AFFINITY))
		goto unchanged;

	be = pn_random_backend(svc, &id);
	if (!be || (v4 && !pn_addr_is_v4(&be->addr)))
		goto unchanged;

	if (pn_cfg_flag(PN_CFG_PEER_NAME)) {
		s = bpf_sk_storage_get(&podnic_lbsk_v1, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!s)
			goto unchanged;
		s->addr = *addr;
		s->port = *port;
		s->svc_id = svc->id;
	}
	*addr = be->addr;
	*port = be->port;
	pn_count_sock(PN_SOCK_LB);
	return 1;

unchanged:
	/* A socket connecting again (after a failed attempt) forgets the
	 * Service of its earlier try. */
	bpf_sk_storage_delete(&podnic_lbsk_v1, ctx->sk);
	return 0;
}

/* pn_sock_peer returns the Service a balanced socket connected to. */
static __always_inline struct pn_lb_sock *pn_sock_peer(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return NULL;
	return bpf_sk_storage_get(&podnic_lbsk_v1, ctx->sk, 0, 0);
}
