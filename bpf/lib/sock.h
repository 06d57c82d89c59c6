/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing for TCP and UDP.
 *
 * A pod's connect() to a Service is answered by rewriting the address the
 * socket connects to: the socket connects to the backend itself, so none
 * of the connection's packets needs translating, and conntrack never sees
 * it. That is the cheap path for short connections: one Service lookup per
 * connection instead of a conntrack lookup (and on state changes, two) per
 * packet in each direction. A UDP datagram sent to a Service from an
 * unconnected socket is sent to a backend the same way (sendmsg), and the
 * address a reply came from is named as the Service again (recvmsg), for
 * connected sockets too; see "UDP at the socket" below.
 *
 * The programs hang on the node's cgroup v2 root and so see every socket
 * call on the node; they act only in the network namespaces listed in
 * podnic_lbns_v1, which the CNI fills as it attaches a pod. Session
 * affinity is kept at the socket too: its key, the client address, is the
 * address the socket is bound to, or else the pod's own address of the
 * VIP's family (podnic_lbaddr_v1, also filled by the CNI). Everything they
 * leave alone goes on to the tc programs: other protocols, VIPs of an
 * address family the socket cannot reach, affinity where the pod's address
 * is not known, a Service whose only endpoints are on other nodes under
 * internalTrafficPolicy Local (dropped), a LoadBalancer IP whose
 * loadBalancerSourceRanges do not hold the client (dropped by tc, which sees
 * the packet's source), a VIP no Service has any more (the
 * tc path answers with a RST or an ICMP error), UDP to a Service without
 * endpoints (an ICMP error). A TCP connect() to a Service without endpoints
 * is refused at connect(). getpeername() answers with the Service, as it
 * would through kube-proxy, while PN_CFG_PEER_NAME is set
 * (podnic_lbpeer_v2, below). */
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

#define PN_AF_INET 2 /* the BPF headers carry no socket.h */

/* The pod's own addresses by netns cookie, for session affinity at
 * connect(): where the socket is not bound, its source address is the
 * pod's address of the destination's family. A zero address: none. */
struct pn_lb_addrs {
	struct pn_addr v4; /* v4-mapped */
	struct pn_addr v6;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_LB_NETNS_MAX);
	__type(key, __u64);
	__type(value, struct pn_lb_addrs);
} podnic_lbaddr_v1 SEC(".maps");

/* What a balanced socket connected to, for getpeername(): the Service, and
 * the backend the socket went to instead. The table is direct-mapped by
 * socket cookie: the slot of cookie c is c mod PN_LB_PEER_SLOTS, and holds
 * c itself to tell its socket from others of the same slot. Cookies are
 * handed out in increasing order, so a slot is written again only once
 * PN_LB_PEER_SLOTS more sockets on the node have a cookie; a socket that
 * old (and still asking) gets the backend as its peer name, never a wrong
 * Service. The name is also only given while the socket's peer is still
 * the backend it was balanced to.
 *
 * Nothing is allocated or freed per socket and nothing runs when a socket
 * closes: a connect() writes 48 bytes, a getpeername() reads them. Socket
 * storage, the obvious home for this, cost an accounted allocation per
 * socket and an RCU-deferred free (about 1-2 us per connection), and a
 * hash map by cookie cost a bucket miss per lookup and a program on every
 * socket's close (docs/datapath.md).
 *
 * Slots are written with plain stores, no lock: a lock's atomic waits for
 * the slot's cache line, which is cold in a table this size (about 0.2 us
 * per connection here), where a plain store leaves that to the store
 * buffer. Instead each slot carries a tag, a hash of its other fields; a
 * reader copies the slot and uses it only if the tag matches the copy, so
 * a slot another CPU is rewriting at that moment (half old, half new) is
 * taken for empty, on any memory ordering. */
struct pn_lb_peer {
	__u64 cookie;
	struct pn_addr svc;
	struct pn_addr be;
	__be16 svc_port;
	__be16 be_port;
	__u32 tag;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PN_LB_PEER_SLOTS);
	__type(key, __u32);
	__type(value, struct pn_lb_peer);
} podnic_lbpeer_v2 SEC(".maps");

static __always_inline __u32 pn_mix(__u32 h, __u32 w)
{
	h ^= w;
	h *= 0x9e3779b1;
	return h ^ (h >> 15);
}

/* pn_peer_tag hashes a slot's fields but the tag (its Go twin, peerTag,
 * is in bpf/socklb_test.go). */
static __always_inline __u32 pn_peer_tag(const struct pn_lb_peer *p)
{
	__u32 h = 0x7064636b; /* "pdck" */
	int i;

	h = pn_mix(h, (__u32)p->cookie);
	h = pn_mix(h, (__u32)(p->cookie >> 32));
#pragma unroll
	for (i = 0; i < 4; i++) {
		h = pn_mix(h, p->svc.w[i]);
		h = pn_mix(h, p->be.w[i]);
	}
	h = pn_mix(h, (__u32)p->svc_port << 16 | p->be_port);
	return h | 1; /* never 0, the tag of a slot never written */
}

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

static __always_inline int pn_addr_is_zero(const struct pn_addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0;
}

/* pn_sock_client finds the client address of a connect() to vip from the
 * netns with cookie netns: the address the socket is bound to, else the
 * pod's own of vip's family. It returns 1 when it found one. */
static __always_inline int pn_sock_client(struct bpf_sock_addr *ctx, __u64 netns,
					  const struct pn_addr *vip, struct pn_addr *client)
{
	struct bpf_sock *sk = ctx->sk;
	struct pn_lb_addrs *a;

	if (!sk)
		return 0;
	if (sk->family == PN_AF_INET) {
		if (sk->src_ip4) {
			pn_addr_v4(client, sk->src_ip4);
			return 1;
		}
	} else {
		client->w[0] = sk->src_ip6[0];
		client->w[1] = sk->src_ip6[1];
		client->w[2] = sk->src_ip6[2];
		client->w[3] = sk->src_ip6[3];
		if (!pn_addr_is_zero(client))
			return pn_addr_is_v4(client) == pn_addr_is_v4(vip);
	}
	a = bpf_map_lookup_elem(&podnic_lbaddr_v1, &netns);
	if (!a)
		return 0;
	*client = pn_addr_is_v4(vip) ? a->v4 : a->v6;
	return !pn_addr_is_zero(client);
}

/* UDP at the socket. A UDP socket has no connection for conntrack to end,
 * and kube-proxy keeps a UDP flow on its backend while the flow is in use
 * and the backend serves; so does podnic, by socket:
 *
 *   forward  (socket, VIP, port) -> the backend an unconnected socket's
 *            datagrams to that Service go to, with when it was last used;
 *   reverse  (socket, backend, port) -> the Service, for the source of a
 *            reply (recvmsg), for getpeername() of a connected socket, and
 *            for tc to spot a socket whose backend left (below).
 *
 * An LRU map: a socket that closes leaves its entries to be pushed out by
 * newer ones. A forward entry is chosen again when it was idle for
 * PN_CT_UDP_NS or its backend left (the agent never reuses a backend id, so
 * a missing id means it left). A connected socket cannot be moved at the
 * socket once connected: when its backend leaves, podnic_from_pod sees its
 * datagrams to the old backend (the reverse entry names the socket's
 * Service and the backend's id) and translates them to a new backend with
 * conntrack, as kube-proxy's deleted conntrack entry lets its next datagram
 * be balanced again; the replies are named as the old backend again, so the
 * socket still takes them. */
enum pn_udp_dir {
	PN_UDP_FWD = 0,
	PN_UDP_REV = 1,
};

struct pn_udp_key {
	__u64 cookie; /* socket cookie */
	struct pn_addr addr;
	__be16 port;
	__u8 dir;
	__u8 pad[5];
};

struct pn_udp_val {
	struct pn_addr addr; /* forward: the backend; reverse: the Service */
	__be16 port;
	__u16 pad;
	__u32 backend_id;
	__u64 last_used; /* forward: ns, for the idle timeout */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PN_UDP_SK_MAX);
	__type(key, struct pn_udp_key);
	__type(value, struct pn_udp_val);
} podnic_udpsk_v1 SEC(".maps");

static __always_inline void pn_udp_key_of(struct pn_udp_key *k, __u64 cookie,
					  const struct pn_addr *addr, __be16 port, __u8 dir)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->cookie = cookie;
	k->addr = *addr;
	k->port = port;
	k->dir = dir;
}

/* pn_udp_remember records that the socket with cookie sends to svc:port
 * through backend be (id): its reverse entry always, its forward entry
 * when fwd (an unconnected socket). It returns 0 when both were written. */
static __always_inline int pn_udp_remember(__u64 cookie, const struct pn_addr *svc, __be16 port,
					   const struct pn_backend *be, __u32 id, int fwd,
					   __u64 now)
{
	struct pn_udp_key k;
	struct pn_udp_val v = {
		.addr = *svc,
		.port = port,
		.backend_id = id,
	};

	/* The reverse entry first: a reply is named as the Service as soon
	 * as a datagram can have reached the backend. */
	pn_udp_key_of(&k, cookie, &be->addr, be->port, PN_UDP_REV);
	if (bpf_map_update_elem(&podnic_udpsk_v1, &k, &v, BPF_ANY) < 0)
		return -1;
	if (!fwd)
		return 0;
	pn_udp_key_of(&k, cookie, svc, port, PN_UDP_FWD);
	v.addr = be->addr;
	v.port = be->port;
	v.last_used = now;
	return bpf_map_update_elem(&podnic_udpsk_v1, &k, &v, BPF_ANY);
}

/* pn_udp_reverse looks up the Service a socket's datagrams to addr:port
 * were balanced from: its reverse entry, or NULL. */
static __always_inline struct pn_udp_val *pn_udp_reverse(__u64 cookie, const struct pn_addr *addr,
							 __be16 port)
{
	struct pn_udp_key k;

	if (!cookie)
		return NULL;
	pn_udp_key_of(&k, cookie, addr, port, PN_UDP_REV);
	return bpf_map_lookup_elem(&podnic_udpsk_v1, &k);
}

/* pn_udp_moved returns the reverse entry of a UDP datagram the pod sends
 * to a pod address (daddr:dport) from a socket balanced to that backend,
 * when the backend has left since: the socket must be moved (full path) or
 * refused (socket path). NULL otherwise. */
static __always_inline struct pn_udp_val *pn_udp_moved(struct __sk_buff *skb,
						       const struct pn_addr *daddr, __be16 dport)
{
	struct pn_udp_val *r = pn_udp_reverse(bpf_get_socket_cookie(skb), daddr, dport);
	__u32 id;

	if (!r)
		return NULL;
	id = r->backend_id;
	return bpf_map_lookup_elem(&podnic_be_v1, &id) ? NULL : r;
}

/* pn_sock_in_pod reports whether the socket call comes from a network
 * namespace podnic balances, and gives its cookie. */
static __always_inline int pn_sock_in_pod(struct bpf_sock_addr *ctx, __u64 *netns)
{
	*netns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&podnic_lbns_v1, netns) != NULL;
}

/* pn_sock_service looks up the Service addr:port/proto of a socket call
 * from a pod podnic balances; NULL when there is none, or the call is not
 * from such a pod. */
static __always_inline struct pn_svc_val *pn_sock_service(struct bpf_sock_addr *ctx,
							  const struct pn_addr *addr, __be16 port,
							  __u8 proto, __u64 *netns)
{
	struct pn_svc_key k = {};

	if (!pn_sock_in_pod(ctx, netns))
		return NULL;
	k.addr = *addr;
	k.port = port;
	k.proto = proto;
	k.scope = PN_SCOPE_CLUSTER;
	return bpf_map_lookup_elem(&podnic_svc_v1, &k);
}

#define PN_ECONNREFUSED 111

/* pn_sock_source_allowed reports whether the socket may be balanced to the
 * frontend svc at addr under its loadBalancerSourceRanges (lib/lb.h). Where
 * the client address is not known, or not allowed, the flow is left to tc,
 * which sees the packet's source: it drops what is not allowed, as
 * kube-proxy does, rather than failing the call here. */
static __always_inline int pn_sock_source_allowed(struct bpf_sock_addr *ctx, __u64 netns,
						  const struct pn_addr *addr,
						  const struct pn_svc_val *svc)
{
	struct pn_addr client;

	if (!(svc->flags & PN_SVC_SRC_RANGES))
		return 1;
	return pn_sock_client(ctx, netns, addr, &client) && pn_source_allowed(svc, &client);
}

/* pn_sock_pick chooses the backend of a new flow from the socket to the
 * Service svc at addr: the client's affinity backend or a random one. It
 * returns NULL to leave the flow to tc: affinity without a known client
 * address, or a backend the socket cannot reach (v4: an IPv4 socket). */
static __always_inline struct pn_backend *pn_sock_pick(struct bpf_sock_addr *ctx, __u64 netns,
						       const struct pn_addr *addr,
						       const struct pn_svc_val *svc, __u32 *id,
						       int v4)
{
	struct pn_backend *be;
	__u32 slot;

	if (svc->flags & PN_SVC_AFFINITY) {
		struct pn_addr client;

		if (!pn_sock_client(ctx, netns, addr, &client) ||
		    pn_select_backend(&client, svc, bpf_ktime_get_ns(), id, &be) < 0)
			return NULL;
	} else {
		be = pn_random_backend(svc, id, &slot);
	}
	if (!be || (v4 && !pn_addr_is_v4(&be->addr)))
		return NULL;
	return be;
}

/* pn_sock_lb chooses a backend for a TCP or UDP connect() to addr:port in
 * a pod podnic serves and rewrites addr and port to it. It returns 1 when
 * it did, 0 when the connect goes on unchanged, and PN_SOCK_REFUSE when it
 * must fail with ECONNREFUSED: a TCP connect() to a Service without
 * endpoints is refused at once, as kube-proxy's reject refuses it, and no
 * SYN leaves the pod. (A UDP connect() sends nothing, so it goes on, and
 * tc answers its first datagram with an ICMP error, as kube-proxy does.
 * With endpoints only on other nodes under internalTrafficPolicy Local,
 * kube-proxy drops instead; that stays with tc.) v4 says the socket can
 * only reach IPv4 addresses. */
#define PN_SOCK_REFUSE (-1)
static __always_inline int pn_sock_lb(struct bpf_sock_addr *ctx, struct pn_addr *addr, __be16 *port,
				      int v4)
{
	struct pn_svc_val *svc;
	struct pn_backend *be;
	__u8 proto = ctx->protocol;
	__u64 cookie;
	__u32 id;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	svc = pn_sock_service(ctx, addr, *port, proto, &cookie);
	if (!svc || !pn_sock_source_allowed(ctx, cookie, addr, svc))
		goto unchanged;
	if (svc->count == 0) {
		if ((svc->flags & PN_SVC_DROP) || proto == IPPROTO_UDP)
			goto unchanged;
		bpf_set_retval(-PN_ECONNREFUSED);
		pn_count_sock(PN_REJECT);
		return PN_SOCK_REFUSE;
	}

	be = pn_sock_pick(ctx, cookie, addr, svc, &id, v4);
	if (!be)
		goto unchanged;

	if (proto == IPPROTO_UDP) {
		if (pn_udp_remember(bpf_get_socket_cookie(ctx), addr, *port, be, id, 0, 0) < 0)
			goto unchanged;
	} else if (pn_cfg_flag(PN_CFG_PEER_NAME)) {
		__u64 sk_cookie = bpf_get_socket_cookie(ctx);
		__u32 slot = (__u32)sk_cookie & (PN_LB_PEER_SLOTS - 1);
		struct pn_lb_peer *p = bpf_map_lookup_elem(&podnic_lbpeer_v2, &slot);
		struct pn_lb_peer v = {
			.cookie = sk_cookie,
			.svc = *addr,
			.be = be->addr,
			.svc_port = *port,
			.be_port = be->port,
		};

		if (!p)
			goto unchanged;
		v.tag = pn_peer_tag(&v);
		*p = v;
	}
	*addr = be->addr;
	*port = be->port;
	pn_count_sock(PN_SOCK_LB);
	return 1;

unchanged:
	/* A socket connecting again after a failed balanced connect() keeps
	 * its slot, which names the Service only if the socket's peer is
	 * that backend again. */
	return 0;
}

/* pn_sock_sendmsg sends a datagram of an unconnected UDP socket to a
 * Service on to a backend: the one the socket's datagrams to the Service
 * went to, while it serves and the socket used it within PN_CT_UDP_NS,
 * else a new one. It rewrites addr and port and returns 1 when it did. A
 * Service without endpoints is left to tc, which answers with an ICMP
 * error. */
static __always_inline int pn_sock_sendmsg(struct bpf_sock_addr *ctx, struct pn_addr *addr,
					   __be16 *port, int v4)
{
	struct pn_svc_val *svc;
	struct pn_backend *be;
	struct pn_udp_key fk;
	struct pn_udp_val *f;
	__u64 netns, cookie, now;
	__u32 id;

	svc = pn_sock_service(ctx, addr, *port, IPPROTO_UDP, &netns);
	if (!svc || svc->count == 0 || !pn_sock_source_allowed(ctx, netns, addr, svc))
		return 0;

	cookie = bpf_get_socket_cookie(ctx);
	now = bpf_ktime_get_ns();
	pn_udp_key_of(&fk, cookie, addr, *port, PN_UDP_FWD);
	f = bpf_map_lookup_elem(&podnic_udpsk_v1, &fk);
	if (f && now - f->last_used < PN_CT_UDP_NS) {
		id = f->backend_id;
		be = bpf_map_lookup_elem(&podnic_be_v1, &id);
		if (be) {
			f->last_used = now;
			*addr = be->addr;
			*port = be->port;
			return 1;
		}
	}
	be = pn_sock_pick(ctx, netns, addr, svc, &id, v4);
	if (!be || pn_udp_remember(cookie, addr, *port, be, id, 1, now) < 0)
		return 0;
	*addr = be->addr;
	*port = be->port;
	pn_count_sock(PN_SOCK_LB);
	return 1;
}

/* pn_sock_recvmsg names the source of a datagram a pod's UDP socket
 * receives (from:port) as the Service the socket sent to, when it came
 * from a backend the socket was balanced to. It returns 1 when it did. */
static __always_inline int pn_sock_recvmsg(struct bpf_sock_addr *ctx, struct pn_addr *from,
					   __be16 *port)
{
	struct pn_udp_val *r;
	__u64 netns;

	if (!pn_sock_in_pod(ctx, &netns))
		return 0;
	r = pn_udp_reverse(bpf_get_socket_cookie(ctx), from, *port);
	if (!r)
		return 0;
	*from = r->addr;
	*port = r->port;
	return 1;
}

/* The kernel's struct sock_common, which every struct sock (and so every
 * struct tcp_sock) starts with: the one field podnic reads, placed by
 * CO-RE from the running kernel's BTF (the "___podnic" flavour is dropped
 * to match it). */
struct sock_common___podnic {
	struct {
		__s64 counter;
	} skc_cookie;
} __attribute__((preserve_access_index));

/* pn_sock_peer finds the Service a balanced socket connected to, given its
 * peer (peer, port: what getpeername() is about to return), and writes it
 * to svc and svc_port. It returns 1 when it did. A UDP socket's is in its
 * reverse entry. */
static __always_inline int pn_sock_peer(struct bpf_sock_addr *ctx, const struct pn_addr *peer,
					__be16 port, struct pn_addr *svc, __be16 *svc_port)
{
	struct sock_common___podnic *tp;
	struct pn_lb_peer *p, v;
	__u64 sk_cookie;
	__u32 slot;

	if (ctx->protocol == IPPROTO_UDP) {
		struct pn_udp_val *r;

		if (!pn_sock_in_pod(ctx, &sk_cookie))
			return 0;
		r = pn_udp_reverse(bpf_get_socket_cookie(ctx), peer, port);
		if (!r)
			return 0;
		*svc = r->addr;
		*svc_port = r->port;
		return 1;
	}
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	/* A socket without a cookie was never balanced: read the cookie
	 * without making one, so that accept(), which asks for every server
	 * socket, costs neither a cookie nor a slot's cache line. */
	tp = (struct sock_common___podnic *)bpf_skc_to_tcp_sock(ctx->sk);
	if (!tp || tp->skc_cookie.counter == 0)
		return 0;
	sk_cookie = bpf_get_socket_cookie(ctx);
	slot = (__u32)sk_cookie & (PN_LB_PEER_SLOTS - 1);
	p = bpf_map_lookup_elem(&podnic_lbpeer_v2, &slot);
	if (!p)
		return 0;
	v = *p;
	if (v.cookie != sk_cookie || v.be_port != port || !pn_addr_eq(&v.be, peer) ||
	    v.tag != pn_peer_tag(&v))
		return 0;
	*svc = v.svc;
	*svc_port = v.svc_port;
	return 1;
}
