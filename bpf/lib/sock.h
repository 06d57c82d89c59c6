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
 * PN_CFG_PEER_NAME is set, from an LRU map by socket cookie
 * (podnic_lbrev_v1). */
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

/* What a balanced socket connected to, by socket cookie: the Service, and
 * the backend the socket went to instead. getpeername() names the Service
 * only while the socket's peer is still that backend. Cookies are never
 * reused, so entries of closed sockets are never found again; the LRU
 * drops them as new ones come (the oldest first, each CPU its own list).
 * An LRU entry costs one update per connect and nothing when the socket
 * goes, where socket storage cost an allocation and an RCU-deferred free
 * per socket. */
struct pn_lb_rev {
	struct pn_addr svc_addr;
	struct pn_addr be_addr;
	__be16 svc_port;
	__be16 be_port;
	__u32 svc_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, PN_LB_REV_MAX);
	__type(key, __u64);
	__type(value, struct pn_lb_rev);
} podnic_lbrev_v1 SEC(".maps");

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
		struct pn_lb_rev rev = {
			.svc_addr = *addr,
			.be_addr = be->addr,
			.svc_port = *port,
			.be_port = be->port,
			.svc_id = svc->id,
		};

		cookie = bpf_get_socket_cookie(ctx);
		if (bpf_map_update_elem(&podnic_lbrev_v1, &cookie, &rev, BPF_ANY))
			goto unchanged;
	}
	*addr = be->addr;
	*port = be->port;
	pn_count_sock(PN_SOCK_LB);
	return 1;

unchanged:
	/* An entry of an earlier try of this socket (a connect that failed,
	 * then one that is not balanced) no longer matches the socket's peer
	 * unless it goes straight to that same backend. */
	return 0;
}

/* pn_sock_peer returns what a balanced socket connected to, if its peer
 * (addr, port: what getpeername() is about to return) is the backend it
 * was balanced to. */
static __always_inline struct pn_lb_rev *pn_sock_peer(struct bpf_sock_addr *ctx,
						      const struct pn_addr *addr, __be16 port)
{
	struct pn_lb_rev *rev;
	__u64 cookie;

	if (ctx->protocol != IPPROTO_TCP)
		return NULL;
	cookie = bpf_get_socket_cookie(ctx);
	rev = bpf_map_lookup_elem(&podnic_lbrev_v1, &cookie);
	if (!rev || rev->be_port != port || !pn_addr_eq(&rev->be_addr, addr))
		return NULL;
	return rev;
}
