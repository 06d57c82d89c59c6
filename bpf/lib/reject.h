/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rejecting a connection to a Service without usable backends: the packet
 * is rewritten in place into a TCP RST, an SCTP ABORT or an ICMP port
 * unreachable from the VIP and redirected to the ingress of the device it
 * was leaving, so the client's stack sees the answer at once instead of
 * timing out. */
#pragma once

#include "nat.h"

#define PN_ICMP_QUOTE 8 /* bytes of the original L4 header quoted */

/* The frame in one of the structs below: all but the alignment bytes. */
#define PN_FRAME_LEN(out) (sizeof(out) - sizeof((out).align))

struct pn_ip4_rst {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
};

struct pn_ip6_rst {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct tcphdr tcp;
};

struct pn_ip4_unreach {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct iphdr ip;
	struct icmphdr icmp;
	struct iphdr orig;
	__u8 quote[PN_ICMP_QUOTE];
};

struct pn_ip6_unreach {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct icmp6hdr icmp;
	struct ipv6hdr orig;
	__u8 quote[PN_ICMP_QUOTE];
};

/* An SCTP packet of one ABORT chunk, RFC 9260 section 3.3.7. */
struct pn_sctp_abort {
	struct pn_sctphdr sh;
	__u8 type;
	__u8 flags; /* PN_SCTP_T: the tag is the receiver's own, reflected */
	__be16 len;
};

#define PN_SCTP_T 0x01

struct pn_ip4_abort {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct iphdr ip;
	struct pn_sctp_abort sctp;
};

struct pn_ip6_abort {
	__u8 align[2]; /* puts the IP header on a 4-byte boundary */
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct pn_sctp_abort sctp;
};

struct pn_pseudo6 {
	struct in6_addr saddr;
	struct in6_addr daddr;
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

/* pn_replace_frame makes the packet the len bytes at frame. */
static __always_inline int pn_replace_frame(struct __sk_buff *skb, const void *frame, __u32 len)
{
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, frame, len, 0);
}

/* pn_reply4 fills out, the IPv4 header of a reply from the VIP to the
 * sender of in carrying l4len bytes of proto, checksum included. */
static __always_inline void pn_reply4(struct iphdr *out, const struct iphdr *in, __u8 proto,
				      __u16 l4len)
{
	out->version = 4;
	out->ihl = 5;
	out->tot_len = bpf_htons(sizeof(*out) + l4len);
	out->frag_off = bpf_htons(0x4000); /* DF */
	out->ttl = 64;
	out->protocol = proto;
	out->saddr = in->daddr;
	out->daddr = in->saddr;
	out->check = pn_csum_fold(bpf_csum_diff(0, 0, (__be32 *)out, sizeof(*out), 0));
}

static __always_inline void pn_swap_eth(struct ethhdr *dst, const struct ethhdr *src)
{
	__builtin_memcpy(dst->h_dest, src->h_source, ETH_ALEN);
	__builtin_memcpy(dst->h_source, src->h_dest, ETH_ALEN);
	dst->h_proto = src->h_proto;
}

/* pn_rst_fill sets the RST's header from the offending segment, RFC 9293
 * section 3.10.7.1: answer an ACK with its ack number, anything else with
 * an ACK of everything the segment occupied. */
static __always_inline void pn_rst_fill(struct tcphdr *rst, const struct tcphdr *th, __u32 payload)
{
	__builtin_memset(rst, 0, sizeof(*rst));
	rst->source = th->dest;
	rst->dest = th->source;
	rst->doff = sizeof(*rst) / 4;
	rst->rst = 1;
	if (th->ack) {
		rst->seq = th->ack_seq;
	} else {
		rst->ack = 1;
		rst->ack_seq = bpf_htonl(bpf_ntohl(th->seq) + payload + th->syn + th->fin);
	}
}

/* pn_crc32c4 returns the CRC32c of the four words at w, as a
 * little-endian host reads SCTP's checksum field. */
static __always_inline __u32 pn_crc32c4(const __u32 *w)
{
	__u32 crc = ~0U;
	int i, j;

#pragma unroll
	for (i = 0; i < 4; i++) {
		crc ^= w[i];
#pragma clang loop unroll(disable)
		for (j = 0; j < 32; j++)
			crc = (crc >> 1) ^ (PN_CRC32C_POLY & -(crc & 1));
	}
	return ~crc;
}

/* pn_abort_fill answers the SCTP packet at p->l4off with an ABORT, as a
 * host with no association answers an out-of-the-blue packet (RFC 9260
 * section 8.4): to an INIT with the INIT's Initiate Tag, to anything else
 * with the packet's own tag and the T bit. An ABORT or a SHUTDOWN
 * COMPLETE gets no answer (-1), which ends a possible exchange of them. */
static __always_inline int pn_abort_fill(struct __sk_buff *skb, const struct pn_pkt *p,
					 struct pn_sctp_abort *a)
{
	struct pn_sctp_abort in;
	__be32 init_tag;

	if (bpf_skb_load_bytes(skb, p->l4off, &in, sizeof(in)) < 0)
		return -1;
	if (in.type == PN_SCTP_ABORT || in.type == PN_SCTP_SHUTDOWN_COMPLETE)
		return -1;
	a->sh.source = in.sh.dest;
	a->sh.dest = in.sh.source;
	a->sh.vtag = in.sh.vtag;
	a->flags = PN_SCTP_T;
	if (in.type == PN_SCTP_INIT) {
		if (bpf_skb_load_bytes(skb, p->l4off + sizeof(in), &init_tag, sizeof(init_tag)) < 0)
			return -1;
		a->sh.vtag = init_tag;
		a->flags = 0;
	}
	a->type = PN_SCTP_ABORT;
	a->len = bpf_htons(sizeof(*a) - sizeof(a->sh));
	a->sh.checksum = 0;
	a->sh.checksum = pn_crc32c4((const __u32 *)a);
	return 0;
}

static __always_inline int pn_reject4(struct __sk_buff *skb, const struct pn_pkt *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	/* IP options (lib/parse.h) sit between ip and the L4 header, which
	 * is copied out: its offset varies (bounded again here, as p lives
	 * on the stack). */
	__u32 l4off = p->l4off, opts;
	__s64 sum;

	if ((void *)(ip + 1) > end)
		return -1;
	if (l4off < sizeof(*eth) + sizeof(*ip) || l4off > sizeof(*eth) + 60)
		return -1;
	opts = l4off - sizeof(*eth) - sizeof(*ip);

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr tcp, *th = &tcp;
		struct pn_ip4_rst out = {};
		struct {
			__be32 saddr, daddr;
			__u8 zero, proto;
			__be16 len;
		} ph = {};
		__u32 payload;

		if (bpf_skb_load_bytes(skb, l4off, &tcp, sizeof(tcp)) < 0)
			return -1;
		payload = bpf_ntohs(ip->tot_len) - sizeof(*ip) - opts - th->doff * 4;
		pn_swap_eth(&out.eth, eth);
		pn_reply4(&out.ip, ip, IPPROTO_TCP, sizeof(out.tcp));
		pn_rst_fill(&out.tcp, th, payload);

		ph.saddr = out.ip.saddr;
		ph.daddr = out.ip.daddr;
		ph.proto = IPPROTO_TCP;
		ph.len = bpf_htons(sizeof(out.tcp));
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&out.tcp, sizeof(out.tcp), sum);
		out.tcp.check = pn_csum_fold(sum);

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	} else if (p->proto == IPPROTO_SCTP) {
		struct pn_ip4_abort out = {};

		if (pn_abort_fill(skb, p, &out.sctp) < 0)
			return -1;
		pn_swap_eth(&out.eth, eth);
		pn_reply4(&out.ip, ip, IPPROTO_SCTP, sizeof(out.sctp));

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	} else {
		struct pn_ip4_unreach out = {};

		if (bpf_skb_load_bytes(skb, l4off, out.quote, PN_ICMP_QUOTE) < 0)
			return -1;
		pn_swap_eth(&out.eth, eth);
		/* The quote holds the header without its options, as IPv6's
		 * leaves the extension headers out: the error goes to the pod's
		 * own stack, which needs the ports to find the socket. */
		out.orig = *ip;
		if (opts) {
			out.orig.ihl = 5;
			out.orig.tot_len = bpf_htons(bpf_ntohs(ip->tot_len) - opts);
			out.orig.check = 0;
			sum = bpf_csum_diff(0, 0, (__be32 *)&out.orig, sizeof(out.orig), 0);
			out.orig.check = pn_csum_fold(sum);
		}
		out.ip.version = 4;
		out.ip.ihl = 5;
		out.ip.tot_len = bpf_htons(PN_FRAME_LEN(out) - sizeof(out.eth));
		out.ip.ttl = 64;
		out.ip.protocol = IPPROTO_ICMP;
		out.ip.saddr = ip->daddr;
		out.ip.daddr = ip->saddr;
		out.icmp.type = ICMP_DEST_UNREACH;
		out.icmp.code = ICMP_PORT_UNREACH;

		sum = bpf_csum_diff(0, 0, (__be32 *)&out.icmp,
				    PN_FRAME_LEN(out) - sizeof(out.eth) - sizeof(out.ip), 0);
		out.icmp.checksum = pn_csum_fold(sum);
		sum = bpf_csum_diff(0, 0, (__be32 *)&out.ip, sizeof(out.ip), 0);
		out.ip.check = pn_csum_fold(sum);

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	}
}

static __always_inline int pn_reject6(struct __sk_buff *skb, const struct pn_pkt *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip = data + sizeof(*eth);
	struct pn_pseudo6 ph = {};
	/* Extension headers (lib/parse.h) sit between ip and the L4 header:
	 * ext bytes of them. Bounded again here, as p lives on the stack. */
	__u32 l4off = p->l4off, ext;
	__s64 sum;

	if ((void *)(ip + 1) > end)
		return -1;
	if (l4off < sizeof(*eth) + sizeof(*ip) || l4off > PN_EXT6_MAX_OFF + sizeof(struct pn_frag6))
		return -1;
	ext = l4off - sizeof(*eth) - sizeof(*ip);

	/* The L4 header is copied out: the verifier of older kernels (6.1)
	 * loses the range of a packet pointer at a variable offset. */
	if (p->proto == IPPROTO_TCP) {
		struct pn_ip6_rst out = {};
		struct tcphdr tcp, *th = &tcp;
		__u32 payload;

		if (bpf_skb_load_bytes(skb, l4off, &tcp, sizeof(tcp)) < 0)
			return -1;
		payload = bpf_ntohs(ip->payload_len) - ext - th->doff * 4;
		pn_swap_eth(&out.eth, eth);
		out.ip.version = 6;
		out.ip.payload_len = bpf_htons(sizeof(out.tcp));
		out.ip.nexthdr = IPPROTO_TCP;
		out.ip.hop_limit = 64;
		out.ip.saddr = ip->daddr;
		out.ip.daddr = ip->saddr;
		pn_rst_fill(&out.tcp, th, payload);

		ph.saddr = out.ip.saddr;
		ph.daddr = out.ip.daddr;
		ph.len = bpf_htonl(sizeof(out.tcp));
		ph.nexthdr = IPPROTO_TCP;
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&out.tcp, sizeof(out.tcp), sum);
		out.tcp.check = pn_csum_fold(sum);

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	} else if (p->proto == IPPROTO_SCTP) {
		struct pn_ip6_abort out = {};

		if (pn_abort_fill(skb, p, &out.sctp) < 0)
			return -1;
		pn_swap_eth(&out.eth, eth);
		out.ip.version = 6;
		out.ip.payload_len = bpf_htons(sizeof(out.sctp));
		out.ip.nexthdr = IPPROTO_SCTP;
		out.ip.hop_limit = 64;
		out.ip.saddr = ip->daddr;
		out.ip.daddr = ip->saddr;

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	} else {
		struct pn_ip6_unreach out = {};
		__u32 icmp_len = PN_FRAME_LEN(out) - sizeof(out.eth) - sizeof(out.ip);

		if (bpf_skb_load_bytes(skb, l4off, out.quote, PN_ICMP_QUOTE) < 0)
			return -1;
		pn_swap_eth(&out.eth, eth);
		/* The quote holds the fixed header and the L4 header's first
		 * bytes, without extension headers between them: the error goes
		 * to the pod's own stack, which needs the ports to find the
		 * socket. */
		out.orig = *ip;
		out.orig.nexthdr = p->proto;
		out.orig.payload_len = bpf_htons(bpf_ntohs(ip->payload_len) - ext);
		out.ip.version = 6;
		out.ip.payload_len = bpf_htons(icmp_len);
		out.ip.nexthdr = IPPROTO_ICMPV6;
		out.ip.hop_limit = 64;
		out.ip.saddr = ip->daddr;
		out.ip.daddr = ip->saddr;
		out.icmp.icmp6_type = ICMPV6_DEST_UNREACH;
		out.icmp.icmp6_code = ICMPV6_PORT_UNREACH;

		ph.saddr = out.ip.saddr;
		ph.daddr = out.ip.daddr;
		ph.len = bpf_htonl(icmp_len);
		ph.nexthdr = IPPROTO_ICMPV6;
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&out.icmp, icmp_len, sum);
		out.icmp.icmp6_cksum = pn_csum_fold(sum);

		return pn_replace_frame(skb, &out.eth, PN_FRAME_LEN(out));
	}
}

/* pn_reject answers the packet and returns the tc verdict to use. */
static __always_inline int pn_reject(struct __sk_buff *skb, const struct pn_pkt *p, int *reason)
{
	int err = p->v6 ? pn_reject6(skb, p) : pn_reject4(skb, p);

	if (err < 0) {
		*reason = PN_DROP_REJECT;
		return TC_ACT_SHOT;
	}
	*reason = PN_REJECT;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}
