// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* podnic's datapath inside an exclusive-NIC pod. One object, loaded once by
 * the agent and pinned; every pod attaches the same programs:
 *
 *   podnic_from_pod  NIC egress: Service lookup, backend choice, DNAT,
 *                    conntrack, reject, self-access redirect to lo.
 *   podnic_to_pod    NIC ingress: reverse DNAT of replies and ICMP errors.
 *   podnic_lo_out    lo egress: reverse DNAT of self-access replies.
 *   podnic_guard     NIC egress of a pod on the socket path, alone:
 *                    refuses Service traffic the socket left.
 *   podnic_connect4/6, podnic_getpeer4/6, podnic_sendmsg4/6,
 *   podnic_recvmsg4/6
 *                    cgroup v2 root: TCP and UDP to a Service go
 *                    straight to a backend (lib/sock.h).
 *
 * Each entry is a short dispatcher with one exit that counts the verdict,
 * but for pass (below). */

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/nat.h"
#include "lib/ct.h"
#include "lib/frag.h"
#include "lib/fast.h"
#include "lib/sock.h"
#include "lib/lb.h"
#include "lib/icmp.h"
#include "lib/reject.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline void pn_emit(struct __sk_buff *skb, const struct pn_pkt *p, __u8 dir,
				    int reason)
{
	struct pn_event ev = {
		.ts = bpf_ktime_get_ns(),
		.reason = reason,
		.ifindex = skb->ifindex,
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.dir = dir,
	};

	bpf_ringbuf_output(&podnic_ev_v1, &ev, sizeof(ev), 0);
}

/* pn_finish counts and reports what podnic did to a packet. A pass (no
 * Service traffic, left alone) is not counted: it is nearly every packet a
 * pod sends or gets, and its counter, a cache line written per packet
 * that other work evicts between a connection's packets, was about a
 * quarter of the programs' cost in live traffic (docs/datapath.md). */
static __always_inline int pn_finish(struct __sk_buff *skb, const struct pn_pkt *p, __u8 dir,
				     int reason, int verdict)
{
	if (reason != PN_PASS)
		pn_count(skb, dir, reason);
	if (reason < 0 || reason == PN_REJECT || reason == PN_UNBALANCED)
		pn_emit(skb, p, dir, reason);
	return verdict;
}

/* Self access: the backend is the client itself. The packet must not leave
 * the NIC; it enters the pod's stack again through lo. The destination MAC
 * is zeroed because lo drops frames not addressed to it as
 * PACKET_OTHERHOST, and BPF_F_INGRESS is required: a plain redirect to lo
 * transmits into nowhere. The IPv4 stack then needs lo accept_local=1. */
static __always_inline int pn_redirect_self(struct __sk_buff *skb)
{
	__u8 zero[ETH_ALEN] = {};

	if (bpf_skb_store_bytes(skb, 0, zero, ETH_ALEN, 0) < 0)
		return -1;
	return bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS);
}

/* A datagram a pod sent to a backend's own address (a UDP socket balanced
 * at the socket whose backend left) and that now goes to another backend:
 * its frame is addressed to the old backend's MAC where the pods share a
 * subnet, so the kernel looks the next hop up again for the new address
 * and sends it from the same device. The frame passes this device's
 * egress program once more, as any packet to a pod. */
static __always_inline int pn_redirect_neigh(struct __sk_buff *skb)
{
	return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}

/* pn_live_flow keeps the reply fast path looking up a flow's replies: on
 * this NIC, and on lo for self access. */
static __always_inline void pn_live_flow(struct __sk_buff *skb, __u8 proto, __u64 expires,
					 __u8 flags)
{
	pn_live_until(skb->ifindex, proto, expires);
	if (flags & PN_CT_SELF)
		pn_live_until(LOOPBACK_IFINDEX, proto, expires);
}

/* pn_pass lets a packet that is no Service traffic go on. A SYN the pod
 * sends straight to a backend (a connection balanced at the socket) shares
 * its wire tuple with any earlier flow tc translated from the same client
 * port to that backend: that flow's reply entry, still alive while it
 * closes, would rewrite the new connection's replies to the old Service.
 * Forget it. A UDP datagram straight to a backend forgets the whole
 * earlier flow: a UDP flow has no end tc could see, so its entries live
 * out their 60 s after the socket closed, and a new socket on the same
 * port (a balanced one, or one talking to the pod's address) would get its
 * answers rewritten; and a forward entry left without its reply entry
 * would translate a later datagram whose answer nothing translates back. Not the flow of a socket
 * tc moved off a backend that left, whose datagrams pass here once more after bpf_redirect_neigh:
 * its reply entry names the old backend, to which that very socket is connected. Only while a
 * tc-translated flow of the protocol replying here can be alive: an interface that never had one
 * skips the clock, and one whose last one expired (or that shares the slot with one that did) skips
 * the conntrack map. */
static __always_inline int pn_pass(struct __sk_buff *skb, const struct pn_pkt *p)
{
	__u64 until;

	if (p->fragment)
		return TC_ACT_UNSPEC;
	if (pn_ct_stateful(p->proto) && (p->tcp_flags & (PN_TCP_SYN | PN_TCP_ACK)) == PN_TCP_SYN) {
		/* SCTP's INIT as TCP's SYN: straight to a pod it may reuse a
		 * translated association's client port. */
		until = pn_live_time(skb->ifindex, p->proto);
		if (until != 0 && bpf_ktime_get_ns() < until)
			pn_ct_forget_reply(p);
	} else if (p->proto == IPPROTO_UDP) {
		struct pn_ct_entry *re;

		until = pn_live_time(skb->ifindex, IPPROTO_UDP);
		if (until == 0 || bpf_ktime_get_ns() >= until)
			return TC_ACT_UNSPEC;
		re = pn_ct_reply_of(p);
		if (!re)
			return TC_ACT_UNSPEC;
		if ((re->flags & PN_CT_NEIGH) &&
		    pn_udp_reverse(bpf_get_socket_cookie(skb), &re->addr, re->port))
			return TC_ACT_UNSPEC;
		pn_ct_forget_flow(p, re);
	}
	return TC_ACT_UNSPEC;
}

/* pn_outside_vip reports whether a destination outside the Service CIDRs
 * may still be a Service's: the node's own address while NodePorts exist
 * (a few compares), or an external VIP (externalIPs, LoadBalancer ingress;
 * a hash lookup, only while some exists). */
static __always_inline int pn_outside_vip(const struct pn_pkt *p)
{
	return (pn_cfg_flag(PN_CFG_NODEPORT) && pn_is_node_addr(&p->daddr)) ||
	       (pn_cfg_flag(PN_CFG_EXTERNAL) && pn_is_vip(p));
}

/* pn_tcp_pass is the egress fast path: a TCP packet to an address outside
 * the Service CIDRs, while no VIP lies outside them, passes on its headers
 * alone, with no parse into a pn_pkt: nearly every packet of a pod whose
 * connections are balanced at the socket, since they go to backends. With
 * any_flags the IP header decides (the guard: nothing it passes is ever
 * translated); without, only a packet that is no fragment and no SYN
 * passes here, since pn_pass may have a closing flow's reply entry to
 * forget for a SYN. UDP needs its ports: a moved socket's datagrams are to
 * a pod address. */
static __always_inline int pn_tcp_pass(struct __sk_buff *skb, int any_flags)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct tcphdr *th;
	struct pn_cfg *cfg;
	struct pn_addr a;
	__u32 zero = 0;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
			return 0;
		if (!any_flags && (ip->version != 4 || ip->ihl != 5 ||
				   (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))))
			return 0;
		th = (void *)(ip + 1);
		pn_addr_v4(&a, ip->daddr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return 0;
		th = (void *)(ip6 + 1);
		__builtin_memcpy(&a, &ip6->daddr, sizeof(a));
	} else {
		return 0;
	}
	if (!any_flags && ((void *)(th + 1) > end || (th->syn && !th->ack)))
		return 0;
	cfg = bpf_map_lookup_elem(&podnic_cfg_v1, &zero);
	return cfg && !(cfg->flags & PN_CFG_EXTERNAL) && pn_outside_cidrs(cfg, &a) &&
	       !((cfg->flags & PN_CFG_NODEPORT) && pn_is_node_addr(&a));
}

static __always_inline int pn_from_pod(struct __sk_buff *skb, struct pn_pkt *p, int *reason)
{
	struct pn_ct_entry *fe;
	struct pn_svc_val *svc;
	struct pn_backend *be;
	struct pn_ct_key fk;
	struct pn_addr stale_svc;
	__be16 stale_port = 0;
	__u32 backend_id;
	__u64 now;
	__u8 flags;
	int outside, ret, stale = 0;

	switch (pn_parse(skb, p)) {
	case PN_PARSE_OK:
		break;
	case PN_PARSE_BAD:
		*reason = PN_DROP_INVALID;
		return TC_ACT_SHOT;
	default:
		return TC_ACT_UNSPEC;
	}

	if (!p->fragment && (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6)) {
		/* An error about a reply the pod got goes to the backend. */
		int self = 0;

		ret = pn_icmp_xlate(skb, p, bpf_ktime_get_ns(), 1, &self);
		if (ret < 0) {
			*reason = ret;
			return TC_ACT_SHOT;
		}
		if (ret > 0) {
			*reason = PN_ICMP_DNAT;
			return self ? pn_redirect_self(skb) : TC_ACT_UNSPEC;
		}
	}
	/* A UDP socket balanced at the socket whose backend left: its
	 * datagrams move to another backend of its Service here (lib/sock.h,
	 * "UDP at the socket"). */
	if (p->proto == IPPROTO_UDP && !p->frag_later) {
		struct pn_udp_val *r = pn_udp_moved(skb, &p->daddr, p->dport);

		if (r) {
			stale = 1;
			stale_svc = r->addr;
			stale_port = r->port;
		}
	}
	/* Not for any Service: pod-to-pod traffic, socket-balanced flows.
	 * Outside the Service CIDRs only an external VIP (externalIPs,
	 * LoadBalancer ingress) and the node's address on a NodePort are
	 * translated, as kube-proxy translates a pod's traffic to them;
	 * anything else to such an address, another port, ICMP, goes on
	 * untouched. A later fragment is looked up below: its first may
	 * have been translated (a stale socket's). */
	outside = pn_outside_service_cidrs(&p->daddr);
	if (!stale && outside && !p->frag_later && !pn_outside_vip(p))
		return pn_pass(skb, p);
	if (!pn_translated(p->proto)) {
		if (outside || !pn_is_vip(p))
			return TC_ACT_UNSPEC;
		*reason = p->fragment ? PN_DROP_FRAGMENT : PN_DROP_PROTO;
		return TC_ACT_SHOT;
	}

	now = bpf_ktime_get_ns();
	if (p->frag_later) {
		/* No ports: the first fragment's translation (lib/frag.h). */
		struct pn_frag_val *fv = pn_frag_lookup(p, PN_FRAG_OUT, now);
		struct pn_addr addr;
		__u8 fflags;

		if (!fv) {
			if (outside || !pn_is_vip(p))
				return TC_ACT_UNSPEC;
			*reason = PN_DROP_FRAGMENT;
			return TC_ACT_SHOT;
		}
		addr = fv->addr;
		fflags = fv->flags;
		if (pn_rewrite_l3(skb, p, 1, &p->daddr, &addr) < 0) {
			*reason = PN_DROP_NAT;
			return TC_ACT_SHOT;
		}
		if (fflags & PN_CT_SELF) {
			*reason = PN_SELF;
			return pn_redirect_self(skb);
		}
		*reason = PN_DNAT_CT;
		return fflags & PN_CT_NEIGH ? pn_redirect_neigh(skb) : TC_ACT_UNSPEC;
	}

	pn_ct_key_of(&fk, p, PN_CT_FORWARD);
	fe = bpf_map_lookup_elem(&podnic_ct_v1, &fk);
	if (fe && pn_ct_forward_hit(&fk, fe, p->tcp_flags, now) &&
	    pn_ct_backend_alive(&fk, fe, p->tcp_flags)) {
		struct pn_addr addr = fe->addr;

		pn_live_flow(skb, p->proto, fe->expires, fe->flags);
		pn_frag_record(p, PN_FRAG_OUT, &addr, fe->flags, now);

		if (pn_rewrite(skb, p, 1, &p->daddr, p->dport, &addr, fe->port) < 0) {
			*reason = PN_DROP_NAT;
			return TC_ACT_SHOT;
		}
		if (fe->flags & PN_CT_SELF) {
			*reason = PN_SELF;
			return pn_redirect_self(skb);
		}
		*reason = PN_DNAT_CT;
		return fe->flags & PN_CT_NEIGH ? pn_redirect_neigh(skb) : TC_ACT_UNSPEC;
	}

	if (stale) {
		struct pn_svc_key k = {
			.addr = stale_svc,
			.port = stale_port,
			.proto = IPPROTO_UDP,
			.scope = PN_SCOPE_CLUSTER,
		};

		/* The Service is gone too: refused, from the old backend. */
		svc = bpf_map_lookup_elem(&podnic_svc_v1, &k);
		if (!svc)
			return pn_reject(skb, p, reason);
	} else {
		svc = pn_svc_lookup(p, p->dport, p->proto);
	}
	if (!svc) {
		if (outside)
			return pn_pass(skb, p);
		if (pn_is_vip(p)) {
			*reason = PN_DROP_UNKNOWN_PORT;
			return TC_ACT_SHOT;
		}
		/* No Service has this address (any more): refuse at once. */
		if (pn_in_service_cidr(p))
			return pn_reject(skb, p, reason);
		return pn_pass(skb, p);
	}
	/* Before the endpoints, as kube-proxy's firewall comes before its
	 * reject: a source not allowed is dropped, endpoints or not. */
	if (!pn_source_allowed(svc, &p->saddr)) {
		*reason = PN_DROP_SOURCE_RANGE;
		return TC_ACT_SHOT;
	}
	if (svc->count == 0) {
		if (svc->flags & PN_SVC_DROP) {
			*reason = PN_DROP_NO_LOCAL;
			return TC_ACT_SHOT;
		}
		return pn_reject(skb, p, reason);
	}

	ret = pn_select_backend(&p->saddr, svc, now, &backend_id, &be);
	if (ret < 0) {
		*reason = ret;
		return TC_ACT_SHOT;
	}
	flags = pn_addr_eq(&be->addr, &p->saddr) ? PN_CT_SELF : 0;
	if (stale)
		flags |= PN_CT_NEIGH;
	if (pn_ct_create(&fk, fe, be, svc->id, backend_id, flags, p->tcp_flags, now) < 0) {
		*reason = PN_DROP_CT_CREATE;
		return TC_ACT_SHOT;
	}
	pn_live_flow(
		skb, p->proto,
		now + pn_ct_lifetime(p->proto, pn_ct_next_flags(p->proto, flags, p->tcp_flags)),
		flags);
	{
		struct pn_addr addr = be->addr;

		pn_frag_record(p, PN_FRAG_OUT, &addr, flags, now);

		if (pn_rewrite(skb, p, 1, &p->daddr, p->dport, &addr, be->port) < 0) {
			*reason = PN_DROP_NAT;
			return TC_ACT_SHOT;
		}
	}
	if (flags & PN_CT_SELF) {
		*reason = PN_SELF;
		return pn_redirect_self(skb);
	}
	*reason = PN_DNAT_NEW;
	return stale ? pn_redirect_neigh(skb) : TC_ACT_UNSPEC;
}

/* pn_refuse_unbalanced refuses, as pn_reject does, Service traffic the
 * socket programs left, and counts it as such. */
static __always_inline int pn_refuse_unbalanced(struct __sk_buff *skb, const struct pn_pkt *p,
						int *reason)
{
	int verdict = pn_reject(skb, p, reason);

	if (*reason == PN_REJECT)
		*reason = PN_UNBALANCED;
	return verdict;
}

/* pn_guard serves the egress of a pod on the socket path (docs/datapath.md,
 * "The socket path"): its Service traffic is balanced at the socket, and no
 * program sees its incoming packets, so nothing may be translated here: a
 * reply could not be translated back. What reaches a Service anyway (the
 * socket programs left it, or the Service is gone, or has no endpoints) is
 * refused with a TCP RST or an ICMP port unreachable; a UDP socket's
 * datagrams to a backend that left are refused the same way, where the
 * full path would move them. Everything else passes after one Service-CIDR
 * check. */
static __always_inline int pn_guard(struct __sk_buff *skb, struct pn_pkt *p, int *reason)
{
	struct pn_svc_val *svc;
	int outside;

	if (pn_tcp_pass(skb, 1))
		return TC_ACT_UNSPEC;
	switch (pn_parse(skb, p)) {
	case PN_PARSE_OK:
		break;
	case PN_PARSE_BAD:
		*reason = PN_DROP_INVALID;
		return TC_ACT_SHOT;
	default:
		return TC_ACT_UNSPEC;
	}
	if (p->proto == IPPROTO_UDP && !p->frag_later && pn_udp_moved(skb, &p->daddr, p->dport))
		return pn_refuse_unbalanced(skb, p, reason);
	outside = pn_outside_service_cidrs(&p->daddr);
	if (outside && !pn_outside_vip(p))
		return TC_ACT_UNSPEC;
	if (!pn_translated(p->proto)) {
		if (outside || !pn_is_vip(p))
			return TC_ACT_UNSPEC;
		*reason = p->fragment ? PN_DROP_FRAGMENT : PN_DROP_PROTO;
		return TC_ACT_SHOT;
	}
	if (p->frag_later) {
		if (outside || !pn_is_vip(p))
			return TC_ACT_UNSPEC;
		*reason = PN_DROP_FRAGMENT;
		return TC_ACT_SHOT;
	}
	svc = pn_svc_lookup(p, p->dport, p->proto);
	if (!svc) {
		if (outside)
			return TC_ACT_UNSPEC;
		if (pn_is_vip(p)) {
			*reason = PN_DROP_UNKNOWN_PORT;
			return TC_ACT_SHOT;
		}
		if (pn_in_service_cidr(p))
			return pn_reject(skb, p, reason);
		return TC_ACT_UNSPEC;
	}
	if (!pn_source_allowed(svc, &p->saddr)) {
		*reason = PN_DROP_SOURCE_RANGE;
		return TC_ACT_SHOT;
	}
	if (svc->count == 0 && (svc->flags & PN_SVC_DROP)) {
		*reason = PN_DROP_NO_LOCAL;
		return TC_ACT_SHOT;
	}
	if (svc->count == 0)
		return pn_reject(skb, p, reason);
	return pn_refuse_unbalanced(skb, p, reason);
}

/* pn_to_pod reverse-translates replies arriving at the pod, on the NIC or,
 * for self access, leaving through lo. */
static __always_inline int pn_to_pod(struct __sk_buff *skb, struct pn_pkt *p, int *reason)
{
	struct pn_ct_entry *re;
	struct pn_ct_key rk;
	__u64 now, until;

	switch (pn_parse(skb, p)) {
	case PN_PARSE_OK:
		break;
	case PN_PARSE_BAD:
		/* Not ours to judge on the way in: let the stack decide. */
		return TC_ACT_UNSPEC;
	default:
		return TC_ACT_UNSPEC;
	}
	if (p->fragment && !pn_translated(p->proto))
		return TC_ACT_UNSPEC;

	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		int self = 0;
		int ret = pn_icmp_xlate(skb, p, bpf_ktime_get_ns(), 0, &self);

		if (ret < 0) {
			*reason = ret;
			return TC_ACT_SHOT;
		}
		if (ret > 0)
			*reason = PN_ICMP_REVNAT;
		return TC_ACT_UNSPEC;
	}
	if (!pn_translated(p->proto))
		return TC_ACT_UNSPEC;
	/* No flow of this protocol translated by tc is alive: nothing to
	 * look up (the common case once connect() is balanced at the socket). */
	until = pn_live_time(skb->ifindex, p->proto);
	if (until == 0)
		return TC_ACT_UNSPEC;
	now = bpf_ktime_get_ns();
	if (now >= until)
		return TC_ACT_UNSPEC;

	if (p->frag_later) {
		struct pn_frag_val *fv = pn_frag_lookup(p, PN_FRAG_IN, now);
		struct pn_addr addr;

		if (!fv)
			return TC_ACT_UNSPEC;
		addr = fv->addr;
		if (pn_rewrite_l3(skb, p, 0, &p->saddr, &addr) < 0) {
			*reason = PN_DROP_NAT;
			return TC_ACT_SHOT;
		}
		*reason = PN_REVNAT;
		return TC_ACT_UNSPEC;
	}

	pn_ct_key_of(&rk, p, PN_CT_REPLY);
	re = bpf_map_lookup_elem(&podnic_ct_v1, &rk);
	if (!re || !pn_ct_reply_hit(&rk, re, p->tcp_flags, now))
		return TC_ACT_UNSPEC;
	pn_live_until(skb->ifindex, p->proto, re->expires);
	{
		struct pn_addr addr = re->addr;

		pn_frag_record(p, PN_FRAG_IN, &addr, 0, now);

		if (pn_rewrite(skb, p, 0, &p->saddr, p->sport, &addr, re->port) < 0) {
			*reason = PN_DROP_NAT;
			return TC_ACT_SHOT;
		}
	}
	*reason = PN_REVNAT;
	return TC_ACT_UNSPEC;
}

/* pn_from_pod_parsed is podnic_from_pod past its fast path: the pn_pkt
 * and its zeroing are paid only here. */
static __always_inline int pn_from_pod_parsed(struct __sk_buff *skb)
{
	struct pn_pkt p = {};
	int reason = PN_PASS;
	int verdict = pn_from_pod(skb, &p, &reason);

	return pn_finish(skb, &p, PN_DIR_FROM_POD, reason, verdict);
}

SEC("tc")
int podnic_from_pod(struct __sk_buff *skb)
{
	if (pn_tcp_pass(skb, 0))
		return TC_ACT_UNSPEC;
	return pn_from_pod_parsed(skb);
}

SEC("tc")
int podnic_guard(struct __sk_buff *skb)
{
	struct pn_pkt p = {};
	int reason = PN_PASS;
	int verdict = pn_guard(skb, &p, &reason);

	return pn_finish(skb, &p, PN_DIR_FROM_POD, reason, verdict);
}

/* The reply hooks first ask whether any tc-translated flow replying on
 * this interface can be alive: when none can (a pod whose connections are
 * all balanced at the socket), there is nothing to translate back, reply or
 * ICMP error, and the packet is not even parsed. */
SEC("tc")
int podnic_to_pod(struct __sk_buff *skb)
{
	struct pn_pkt p = {};
	int reason = PN_PASS;
	int verdict;

	if (pn_nothing_alive(skb->ifindex))
		return TC_ACT_UNSPEC;
	verdict = pn_to_pod(skb, &p, &reason);

	return pn_finish(skb, &p, PN_DIR_TO_POD, reason, verdict);
}

/* pn_to_loopback reports whether a packet on lo goes to a loopback
 * address (127.0.0.0/8, ::1): what a pod's processes exchange over
 * localhost, a sidecar and its app, and never a Service flow's reply (an
 * endpoint is never a loopback address). lo's slot of podnic_live_v1 is the
 * same in every pod, lo being ifindex 1 in each, so while any pod's
 * tc-translated self access is alive the slot says so everywhere; this
 * keeps every pod's localhost traffic off the lookup then. */
static __always_inline int pn_to_loopback(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		return (void *)(ip + 1) <= end &&
		       (ip->daddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		return (void *)(ip6 + 1) <= end && ip6->daddr.in6_u.u6_addr32[0] == 0 &&
		       ip6->daddr.in6_u.u6_addr32[1] == 0 && ip6->daddr.in6_u.u6_addr32[2] == 0 &&
		       ip6->daddr.in6_u.u6_addr32[3] == bpf_htonl(1);
	}
	return 0;
}

SEC("tc")
int podnic_lo_out(struct __sk_buff *skb)
{
	struct pn_pkt p = {};
	int reason = PN_PASS;
	int verdict;

	if (pn_to_loopback(skb) || pn_nothing_alive(skb->ifindex))
		return TC_ACT_UNSPEC;
	verdict = pn_to_pod(skb, &p, &reason);

	return pn_finish(skb, &p, PN_DIR_LO, reason, verdict);
}

/* pn_user6 reads the IPv6 address of a socket hook's call; pn_set_user6
 * writes an address and port back to it. */
static __always_inline void pn_user6(const struct bpf_sock_addr *ctx, struct pn_addr *a)
{
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void pn_set_user6(struct bpf_sock_addr *ctx, const struct pn_addr *a,
					 __be16 port)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
	ctx->user_port = port;
}

/* Socket-level load balancing (lib/sock.h): connect() of a TCP socket in a
 * pod to a Service goes straight to a backend; getpeername() still names
 * the Service. The return value 1 lets the call go on; 0 fails it with the
 * errno bpf_set_retval() chose. */
SEC("cgroup/connect4")
int podnic_connect4(struct bpf_sock_addr *ctx)
{
	struct pn_addr addr;
	__be16 port = (__be16)ctx->user_port;

	int ret;

	pn_addr_v4(&addr, ctx->user_ip4);
	ret = pn_sock_lb(ctx, &addr, &port, 1);
	if (ret == PN_SOCK_REFUSE)
		return 0;
	if (ret) {
		ctx->user_ip4 = addr.w[3];
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/connect6")
int podnic_connect6(struct bpf_sock_addr *ctx)
{
	struct pn_addr addr;
	__be16 port = (__be16)ctx->user_port;
	int ret;

	pn_user6(ctx, &addr);
	ret = pn_sock_lb(ctx, &addr, &port, 0);
	if (ret == PN_SOCK_REFUSE)
		return 0;
	if (ret)
		pn_set_user6(ctx, &addr, port);
	return 1;
}

SEC("cgroup/getpeername4")
int podnic_getpeer4(struct bpf_sock_addr *ctx)
{
	struct pn_addr peer, svc;
	__be16 svc_port;

	pn_addr_v4(&peer, ctx->user_ip4);
	if (pn_sock_peer(ctx, &peer, (__be16)ctx->user_port, &svc, &svc_port) &&
	    pn_addr_is_v4(&svc)) {
		ctx->user_ip4 = svc.w[3];
		ctx->user_port = svc_port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int podnic_getpeer6(struct bpf_sock_addr *ctx)
{
	struct pn_addr peer, svc;
	__be16 svc_port;

	pn_user6(ctx, &peer);
	if (pn_sock_peer(ctx, &peer, (__be16)ctx->user_port, &svc, &svc_port))
		pn_set_user6(ctx, &svc, svc_port);
	return 1;
}

/* UDP at the socket (lib/sock.h): a datagram an unconnected socket sends
 * to a Service goes to a backend, and a reply's source is named as the
 * Service again, for connected sockets too. */
SEC("cgroup/sendmsg4")
int podnic_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct pn_addr addr;
	__be16 port = (__be16)ctx->user_port;

	pn_addr_v4(&addr, ctx->user_ip4);
	if (pn_sock_sendmsg(ctx, &addr, &port, 1)) {
		ctx->user_ip4 = addr.w[3];
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/sendmsg6")
int podnic_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct pn_addr addr;
	__be16 port = (__be16)ctx->user_port;

	pn_user6(ctx, &addr);
	if (pn_sock_sendmsg(ctx, &addr, &port, 0))
		pn_set_user6(ctx, &addr, port);
	return 1;
}

SEC("cgroup/recvmsg4")
int podnic_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct pn_addr from;
	__be16 port = (__be16)ctx->user_port;

	pn_addr_v4(&from, ctx->user_ip4);
	if (pn_sock_recvmsg(ctx, &from, &port) && pn_addr_is_v4(&from)) {
		ctx->user_ip4 = from.w[3];
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/recvmsg6")
int podnic_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct pn_addr from;
	__be16 port = (__be16)ctx->user_port;

	pn_user6(ctx, &from);
	if (pn_sock_recvmsg(ctx, &from, &port))
		pn_set_user6(ctx, &from, port);
	return 1;
}
