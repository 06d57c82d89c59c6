/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing into a flat description of the packet. */
#pragma once

#include <linux/icmpv6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

/* linux/icmp.h drags in libc's socket headers; the few ICMP definitions
 * podnic needs are here instead. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 un;
};

#define ICMP_DEST_UNREACH  3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_PORT_UNREACH  3

#define IP_MF	  0x2000
#define IP_OFFSET 0x1fff

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* TCP flag bits as in byte 13 of the TCP header. An SCTP packet's first
 * chunk maps onto them (pn_sctp_flags), so that conntrack follows an
 * association as it follows a connection. */
#define PN_TCP_FIN 0x01
#define PN_TCP_SYN 0x02
#define PN_TCP_RST 0x04
#define PN_TCP_ACK 0x10

struct pn_pkt {
	struct pn_addr saddr;
	struct pn_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 v6;
	__u8 tcp_flags;
	__u8 fragment;	 /* any IP fragment, first one included */
	__u8 frag_later; /* a fragment after the first: no L4 header */
	__u8 pad[3];
	__be32 frag_id; /* IPv4's 16-bit or IPv6's 32-bit identification */
	__u32 l3off;
	__u32 l4off;
};

#define PN_IPPROTO_HOPOPTS  0
#define PN_IPPROTO_ROUTING  43
#define PN_IPPROTO_FRAGMENT 44
#define PN_IPPROTO_DSTOPTS  60
/* IPv6 extension headers walked before the upper-layer header, and how far
 * into the packet that header may start. */
#define PN_EXT6_MAX	4
#define PN_EXT6_MAX_OFF 512

/* The first bytes of an IPv6 extension header: hop-by-hop and destination
 * options, routing (then segments_left). */
struct pn_ext6 {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units, not counting the first 8 bytes */
	__u8 type;   /* routing */
	__u8 segments_left;
};

/* The IPv6 fragment header. */
struct pn_frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, then 2 reserved bits and M */
	__be32 id;
};

/* The SCTP common header, RFC 9260 section 3.1. */
struct pn_sctphdr {
	__be16 source;
	__be16 dest;
	__be32 vtag;
	__le32 checksum;
};

#define PN_SCTP_INIT		  1
#define PN_SCTP_INIT_ACK	  2
#define PN_SCTP_ABORT		  6
#define PN_SCTP_SHUTDOWN_COMPLETE 14

/* pn_sctp_flags maps an SCTP packet's first chunk type onto TCP flags:
 * INIT opens (SYN), INIT ACK answers (SYN ACK), ABORT resets (RST),
 * SHUTDOWN COMPLETE ends (FIN); anything else belongs to an association
 * (ACK). */
static __always_inline __u8 pn_sctp_flags(__u8 chunk)
{
	switch (chunk) {
	case PN_SCTP_INIT:
		return PN_TCP_SYN;
	case PN_SCTP_INIT_ACK:
		return PN_TCP_SYN | PN_TCP_ACK;
	case PN_SCTP_ABORT:
		return PN_TCP_RST | PN_TCP_ACK;
	case PN_SCTP_SHUTDOWN_COMPLETE:
		return PN_TCP_FIN | PN_TCP_ACK;
	}
	return PN_TCP_ACK;
}

/* pn_translated says whether podnic translates proto: the protocols with
 * ports that kube-proxy serves. */
static __always_inline int pn_translated(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

enum pn_parse_result {
	PN_PARSE_OK = 0,
	PN_PARSE_SKIP = 1, /* not IP, or an L4 podnic does not handle */
	PN_PARSE_BAD = 2,  /* truncated or malformed */
};

/* Make at least len bytes linear; tc may see headers in paged data. */
static __always_inline int pn_ensure(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len)
		return -1;
	if (bpf_skb_pull_data(skb, len) < 0)
		return -1;
	return (void *)(long)skb->data + len <= (void *)(long)skb->data_end ? 0 : -1;
}

/* pn_parse_l4 reads the ports at l4off, which the caller passes in a
 * register: read back from p, a spilled offset loses its bounds and the
 * verifier rejects the packet access. */
static __always_inline int pn_parse_l4(struct __sk_buff *skb, struct pn_pkt *p, __u32 l4off)
{
	void *data, *end;

	if (p->frag_later) {
		/* Only the first fragment carries ports (lib/frag.h). */
		return PN_PARSE_OK;
	}
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th;

		if (pn_ensure(skb, l4off + sizeof(*th)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		th = data + l4off;
		if ((void *)(th + 1) > end)
			return PN_PARSE_BAD;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return PN_PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh;

		if (pn_ensure(skb, l4off + sizeof(*uh)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		uh = data + l4off;
		if ((void *)(uh + 1) > end)
			return PN_PARSE_BAD;
		p->sport = uh->source;
		p->dport = uh->dest;
		return PN_PARSE_OK;
	}
	case IPPROTO_SCTP: {
		struct pn_sctphdr *sh;
		__u8 chunk = 0;

		if (pn_ensure(skb, l4off + sizeof(*sh)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		sh = data + l4off;
		if ((void *)(sh + 1) > end)
			return PN_PARSE_BAD;
		p->sport = sh->source;
		p->dport = sh->dest;
		/* The first chunk's type; a packet without chunks counts as
		 * one of an association. */
		bpf_skb_load_bytes(skb, l4off + sizeof(*sh), &chunk, sizeof(chunk));
		p->tcp_flags = pn_sctp_flags(chunk);
		return PN_PARSE_OK;
	}
	default:
		return PN_PARSE_OK;
	}
}

/* pn_parse_ext6 walks the IPv6 extension headers after the fixed header,
 * whose next header is next: hop-by-hop and destination options, and a
 * routing header with no segment left (the destination is then the
 * final one), up to PN_EXT6_MAX of them, then a fragment header or the
 * upper-layer header. A routing header with segments left (the
 * destination is a waypoint; the Service address would be further in)
 * and whatever follows an unknown header (AH, ESP, ...) is left alone:
 * its proto is that header's, which podnic does not translate. */
static __always_inline int pn_parse_ext6(struct __sk_buff *skb, struct pn_pkt *p, __u8 next)
{
	__u32 off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
	void *data, *end;
	int i;

#pragma unroll
	for (i = 0; i < PN_EXT6_MAX; i++) {
		struct pn_ext6 *eh;

		if (next != PN_IPPROTO_HOPOPTS && next != PN_IPPROTO_DSTOPTS &&
		    next != PN_IPPROTO_ROUTING)
			break;
		if (pn_ensure(skb, off + sizeof(*eh)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		eh = data + off;
		if ((void *)(eh + 1) > end)
			return PN_PARSE_BAD;
		if (next == PN_IPPROTO_ROUTING && eh->segments_left != 0)
			break;
		next = eh->nexthdr;
		off += ((__u32)eh->hdrlen + 1) * 8;
		if (off > PN_EXT6_MAX_OFF)
			return PN_PARSE_SKIP;
	}
	p->proto = next;
	p->l4off = off;
	if (next == PN_IPPROTO_FRAGMENT) {
		struct pn_frag6 *fh;

		if (pn_ensure(skb, off + sizeof(*fh)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		fh = data + off;
		if ((void *)(fh + 1) > end)
			return PN_PARSE_BAD;
		p->proto = fh->nexthdr;
		p->fragment = 1;
		p->frag_later = (fh->frag_off & bpf_htons(0xfff8)) != 0;
		p->frag_id = fh->id;
		off += sizeof(*fh);
		p->l4off = off;
	}
	return pn_parse_l4(skb, p, off);
}

static __always_inline int pn_parse(struct __sk_buff *skb, struct pn_pkt *p)
{
	void *data, *end;
	struct ethhdr *eth;

	if (pn_ensure(skb, sizeof(*eth)) < 0)
		return PN_PARSE_SKIP;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return PN_PARSE_SKIP;
	p->l3off = sizeof(*eth);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;
		__u32 ihl;

		if (pn_ensure(skb, sizeof(*eth) + sizeof(*ip)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ip = data + sizeof(*eth);
		if ((void *)(ip + 1) > end)
			return PN_PARSE_BAD;
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip))
			return PN_PARSE_BAD;
		p->v6 = 0;
		p->proto = ip->protocol;
		p->fragment = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
		p->frag_later = (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
		p->frag_id = ip->id;
		pn_addr_v4(&p->saddr, ip->saddr);
		pn_addr_v4(&p->daddr, ip->daddr);
		p->l4off = sizeof(*eth) + ihl;
		return pn_parse_l4(skb, p, sizeof(*eth) + ihl);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;

		if (pn_ensure(skb, sizeof(*eth) + sizeof(*ip6)) < 0)
			return PN_PARSE_BAD;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ip6 = data + sizeof(*eth);
		if ((void *)(ip6 + 1) > end)
			return PN_PARSE_BAD;
		p->v6 = 1;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(&p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(&p->daddr, &ip6->daddr, 16);
		return pn_parse_ext6(skb, p, ip6->nexthdr);
	}
	return PN_PARSE_SKIP;
}
