/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address and port rewriting with incremental checksum updates.
 *
 * The checksum helpers keep CHECKSUM_PARTIAL skbs from the local stack
 * right: with BPF_F_PSEUDO_HDR they update the pseudo-header sum that the
 * device (or the software fallback) completes later, and leave the field
 * alone for port changes, which the final checksum covers anyway. */
#pragma once

#include "parse.h"
#include "sctp.h"

static __always_inline int pn_l4_csum_off(const struct pn_pkt *p, __u32 *off, __u64 *flags)
{
	switch (p->proto) {
	case IPPROTO_TCP:
		*off = p->l4off + 16;
		*flags = 0;
		return 0;
	case IPPROTO_UDP:
		*off = p->l4off + 6;
		/* IPv4 UDP may carry no checksum (0): keep it that way. */
		*flags = p->v6 ? 0 : BPF_F_MARK_MANGLED_0;
		return 0;
	}
	return -1;
}

static __always_inline int pn_rewrite_l3(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					 const struct pn_addr *from, const struct pn_addr *to);

/* pn_rewrite_sctp is pn_rewrite for SCTP, whose checksum covers no
 * address (lib/sctp.h). */
static __always_inline int pn_rewrite_sctp(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					   const struct pn_addr *from, __be16 from_port,
					   const struct pn_addr *to, __be16 to_port)
{
	if (pn_rewrite_l3(skb, p, dst, from, to) < 0)
		return -1;
	if (pn_sctp_single_home(skb, p) < 0)
		return -1;
	if (from_port == to_port)
		return 0;
	if (pn_sctp_port_csum(skb, p, dst, from_port, to_port) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4off + (dst ? 2 : 0), &to_port, sizeof(to_port), 0);
}

/* pn_rewrite changes the destination (dst != 0) or the source address and
 * port of a TCP, UDP or SCTP packet from one endpoint to another. */
static __always_inline int pn_rewrite(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
				      const struct pn_addr *from, __be16 from_port,
				      const struct pn_addr *to, __be16 to_port)
{
	__u32 csum_off;
	__u64 flags;

	if (p->proto == IPPROTO_SCTP)
		return pn_rewrite_sctp(skb, p, dst, from, from_port, to, to_port);
	if (pn_l4_csum_off(p, &csum_off, &flags) < 0)
		return -1;

	if (!p->v6) {
		__be32 f = from->w[3], t = to->w[3];

		if (f != t) {
			if (bpf_l4_csum_replace(skb, csum_off, f, t,
						flags | BPF_F_PSEUDO_HDR | sizeof(t)) < 0)
				return -1;
			if (bpf_l3_csum_replace(skb, p->l3off + 10, f, t, sizeof(t)) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, p->l3off + (dst ? 16 : 12), &t, sizeof(t), 0) <
			    0)
				return -1;
		}
	} else if (!pn_addr_eq(from, to)) {
		struct pn_addr t = *to;
		__s64 diff = bpf_csum_diff((__be32 *)from->w, 16, t.w, 16, 0);

		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, p->l3off + (dst ? 24 : 8), &t, sizeof(t), 0) < 0)
			return -1;
	}

	if (from_port != to_port) {
		if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port,
					flags | sizeof(to_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, p->l4off + (dst ? 2 : 0), &to_port, sizeof(to_port),
					0) < 0)
			return -1;
	}
	return 0;
}

/* pn_rewrite_l3 changes the destination (dst != 0) or the source address
 * of a later fragment, which has no L4 header: the datagram's checksum
 * travels in the first fragment, rewritten with it. */
static __always_inline int pn_rewrite_l3(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					 const struct pn_addr *from, const struct pn_addr *to)
{
	struct pn_addr t = *to;

	if (!p->v6) {
		if (from->w[3] == t.w[3])
			return 0;
		if (bpf_l3_csum_replace(skb, p->l3off + 10, from->w[3], t.w[3], sizeof(t.w[3])) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, p->l3off + (dst ? 16 : 12), &t.w[3], sizeof(t.w[3]),
					   0);
	}
	return bpf_skb_store_bytes(skb, p->l3off + (dst ? 24 : 8), &t, sizeof(t), 0);
}

static __always_inline __u16 pn_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}
