/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Translation of ICMP errors about translated flows, both ways.
 *
 * Into the pod: an error about a flow to a backend (port unreachable from
 * the backend, fragmentation needed or packet too big from a router on the
 * way) quotes the packet the pod sent after DNAT: pod -> backend. The pod's
 * stack matches errors to sockets by the quoted tuple, so the quote must
 * say pod -> VIP again, and the outer source too when it is the backend
 * itself. Without this, path MTU discovery through a ClusterIP breaks.
 *
 * Out of the pod: an error the pod sends about a reply it received (say,
 * port unreachable because the client socket is gone) quotes VIP -> pod and
 * is addressed to the VIP. It must reach the backend as backend -> pod,
 * addressed to the backend, as the kernel's conntrack would have it.
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

/* pn_icmp_xlate translates an ICMP error about a tracked flow: coming in
 * (egress == 0), the quoted destination and a matching outer source go
 * back to the frontend; going out (egress == 1), the quoted source and a
 * matching outer destination go to the backend. It returns 1 when it
 * translated, 0 when the error is not about a tracked flow, and a negative
 * reason on failure. *self is set for an outgoing error about a
 * self-access flow, which must take the lo path too. */
static __always_inline int pn_icmp_xlate(struct __sk_buff *skb, const struct pn_pkt *p, __u64 now,
					 int egress, int *self)
{
	void *data, *end;
	struct pn_ct_key k = {};
	struct pn_ct_entry *e;
	__u32 l4off = p->l4off, in_l3, in_l4, icmp_csum;
	__be16 in_ports[2];
	__u8 type;

	/* A bound the verifier can see, whatever the compiler spills:
	 * Ethernet + IPv4 with options, or + IPv6. */
	if (l4off > sizeof(struct ethhdr) + 60)
		return 0;
	icmp_csum = l4off + 2;
	if (pn_ensure(skb, l4off + 8 + sizeof(struct ipv6hdr) + 4) < 0 &&
	    pn_ensure(skb, l4off + 8 + sizeof(struct iphdr) + 4) < 0)
		return 0;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	in_l3 = l4off + 8;

	/* The key swaps the quoted tuple: the quote is the packet that went
	 * the other way. */
	if (!p->v6) {
		struct icmphdr *ic = data + l4off;
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
		k.proto = in->protocol;
		pn_addr_v4(&k.saddr, in->daddr);
		pn_addr_v4(&k.daddr, in->saddr);
	} else {
		struct icmp6hdr *ic = data + l4off;
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
		k.proto = in->nexthdr;
		__builtin_memcpy(&k.saddr, &in->daddr, 16);
		__builtin_memcpy(&k.daddr, &in->saddr, 16);
	}
	if (!pn_translated(k.proto))
		return 0;
	if (bpf_skb_load_bytes(skb, in_l4, in_ports, sizeof(in_ports)) < 0)
		return 0;
	k.sport = in_ports[1];
	k.dport = in_ports[0];
	k.dir = egress ? PN_CT_FORWARD : PN_CT_REPLY;

	e = bpf_map_lookup_elem(&podnic_ct_v1, &k);
	if (!e || e->expires <= now)
		return 0;
	*self = egress && (e->flags & PN_CT_SELF);

	{
		/* Coming in, the quoted destination (the backend) becomes the
		 * frontend; going out, the quoted source (the frontend) becomes
		 * the backend. The outer address facing the same peer follows. */
		struct pn_addr to = e->addr, from = egress ? k.daddr : k.saddr;
		__be16 to_port = e->port, from_port = egress ? k.dport : k.sport;
		__u32 in_addr4 = in_l3 + (egress ? 12 : 16), in_addr6 = in_l3 + (egress ? 8 : 24);
		__u32 out_addr4 = p->l3off + (egress ? 16 : 12),
		      out_addr6 = p->l3off + (egress ? 24 : 8);
		const struct pn_addr *outer = egress ? &p->daddr : &p->saddr;

		/* Quoted port: covered by the ICMP checksum. */
		if (bpf_l4_csum_replace(skb, icmp_csum, from_port, to_port, sizeof(to_port)) < 0 ||
		    bpf_skb_store_bytes(skb, in_l4 + (egress ? 0 : 2), &to_port, sizeof(to_port),
					0) < 0)
			return PN_DROP_NAT;

		if (!p->v6) {
			__be32 f = from.w[3], t = to.w[3];

			/* The quoted IPv4 header's own checksum absorbs the
			 * address change, so the ICMP checksum needs no more. */
			if (bpf_l3_csum_replace(skb, in_l3 + 10, f, t, sizeof(t)) < 0 ||
			    bpf_skb_store_bytes(skb, in_addr4, &t, sizeof(t), 0) < 0)
				return PN_DROP_NAT;
			if (pn_addr_eq(outer, &from) &&
			    (bpf_l3_csum_replace(skb, p->l3off + 10, f, t, sizeof(t)) < 0 ||
			     bpf_skb_store_bytes(skb, out_addr4, &t, sizeof(t), 0) < 0))
				return PN_DROP_NAT;
		} else {
			__s64 diff = bpf_csum_diff(from.w, 16, to.w, 16, 0);

			if (bpf_l4_csum_replace(skb, icmp_csum, 0, diff, 0) < 0 ||
			    bpf_skb_store_bytes(skb, in_addr6, &to, 16, 0) < 0)
				return PN_DROP_NAT;
			/* ICMPv6 sums the pseudo-header: the outer address too. */
			if (pn_addr_eq(outer, &from) &&
			    (bpf_l4_csum_replace(skb, icmp_csum, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
			     bpf_skb_store_bytes(skb, out_addr6, &to, 16, 0) < 0))
				return PN_DROP_NAT;
		}
	}
	return 1;
}
