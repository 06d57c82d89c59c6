/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reverse translation of ICMP errors about translated flows.
 *
 * An error about a flow to a backend (port unreachable from the backend,
 * fragmentation needed or packet too big from a router on the way) quotes
 * the packet the pod sent after DNAT: pod -> backend. The pod's stack
 * matches errors to sockets by the quoted tuple, so the quote must say
 * pod -> VIP again, and the outer source too when it is the backend itself.
 * Without this, path MTU discovery through a ClusterIP breaks.
 *
 * The quoted L4 checksum is left alone: the quote may be truncated and no
 * stack verifies it (Cilium does the same). */
#pragma once

#include "ct.h"

static __always_inline int pn_icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline int pn_icmp6_is_error(__u8 type)
{
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

/* pn_icmp_revnat returns 1 when it translated the error, 0 when the error
 * is not about a tracked flow, and a negative reason on failure. */
static __always_inline int pn_icmp_revnat(struct __sk_buff *skb, const struct pn_pkt *p, __u64 now)
{
	void *data, *end;
	struct pn_ct_key rk = {};
	struct pn_ct_entry *re;
	__u32 in_l3, in_l4, icmp_csum = p->l4off + 2;
	__be16 in_ports[2];
	__u8 type;

	if (pn_ensure(skb, p->l4off + 8 + sizeof(struct ipv6hdr) + 4) < 0 &&
	    pn_ensure(skb, p->l4off + 8 + sizeof(struct iphdr) + 4) < 0)
		return 0;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	in_l3 = p->l4off + 8;

	if (!p->v6) {
		struct icmphdr *ic = data + p->l4off;
		struct iphdr *in;

		if ((void *)(ic + 1) > end)
			return 0;
		type = ic->type;
		if (!pn_icmp4_is_error(type))
			return 0;
		in = data + in_l3;
		if ((void *)(in + 1) > end)
			return 0;
		in_l4 = in_l3 + in->ihl * 4;
		rk.proto = in->protocol;
		pn_addr_v4(&rk.saddr, in->daddr);
		pn_addr_v4(&rk.daddr, in->saddr);
	} else {
		struct icmp6hdr *ic = data + p->l4off;
		struct ipv6hdr *in;

		if ((void *)(ic + 1) > end)
			return 0;
		type = ic->icmp6_type;
		if (!pn_icmp6_is_error(type))
			return 0;
		in = data + in_l3;
		if ((void *)(in + 1) > end)
			return 0;
		in_l4 = in_l3 + sizeof(*in);
		rk.proto = in->nexthdr;
		__builtin_memcpy(&rk.saddr, &in->daddr, 16);
		__builtin_memcpy(&rk.daddr, &in->saddr, 16);
	}
	if (rk.proto != IPPROTO_TCP && rk.proto != IPPROTO_UDP)
		return 0;
	if (bpf_skb_load_bytes(skb, in_l4, in_ports, sizeof(in_ports)) < 0)
		return 0;
	rk.sport = in_ports[1];
	rk.dport = in_ports[0];
	rk.dir = PN_CT_REPLY;

	re = bpf_map_lookup_elem(&podnic_ct_v1, &rk);
	if (!re || re->expires <= now)
		return 0;

	{
		struct pn_addr vip = re->addr, backend = rk.saddr;
		__be16 vport = re->port;

		/* Quoted destination port: covered by the ICMP checksum. */
		if (bpf_l4_csum_replace(skb, icmp_csum, rk.sport, vport, sizeof(vport)) < 0 ||
		    bpf_skb_store_bytes(skb, in_l4 + 2, &vport, sizeof(vport), 0) < 0)
			return PN_DROP_NAT;

		if (!p->v6) {
			__be32 from = backend.w[3], to = vip.w[3];

			/* The quoted IPv4 header's own checksum absorbs the
			 * address change, so the ICMP checksum needs no more. */
			if (bpf_l3_csum_replace(skb, in_l3 + 10, from, to, sizeof(to)) < 0 ||
			    bpf_skb_store_bytes(skb, in_l3 + 16, &to, sizeof(to), 0) < 0)
				return PN_DROP_NAT;
			if (pn_addr_eq(&p->saddr, &backend) &&
			    (bpf_l3_csum_replace(skb, p->l3off + 10, from, to, sizeof(to)) < 0 ||
			     bpf_skb_store_bytes(skb, p->l3off + 12, &to, sizeof(to), 0) < 0))
				return PN_DROP_NAT;
		} else {
			__s64 diff = bpf_csum_diff(backend.w, 16, vip.w, 16, 0);

			if (bpf_l4_csum_replace(skb, icmp_csum, 0, diff, 0) < 0 ||
			    bpf_skb_store_bytes(skb, in_l3 + 24, &vip, 16, 0) < 0)
				return PN_DROP_NAT;
			/* ICMPv6 sums the pseudo-header: the outer source too. */
			if (pn_addr_eq(&p->saddr, &backend) &&
			    (bpf_l4_csum_replace(skb, icmp_csum, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
			     bpf_skb_store_bytes(skb, p->l3off + 8, &vip, 16, 0) < 0))
				return PN_DROP_NAT;
		}
	}
	return 1;
}
