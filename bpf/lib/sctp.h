/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SCTP: the CRC32c of a packet whose port was rewritten.
 *
 * SCTP's checksum is a CRC32c over the SCTP packet alone (common header
 * and chunks, the checksum field as zero): no pseudo-header, so a new
 * address changes nothing in it, but a new port does. The CRC is affine:
 * for two packets A and B of one length, crc(A) ^ crc(B) is the plain CRC
 * (no initial value, no final xor) of A ^ B, which here is zero but for
 * the first four bytes. That CRC is those bytes, read as a little-endian
 * word, times x^(8 * length) modulo the CRC32c polynomial: two table
 * lookups and two multiplications in GF(2)[x] / P, whatever the length,
 * instead of a pass over the whole packet.
 *
 * A packet from the local stack to a device that computes the CRC
 * (CHECKSUM_PARTIAL, veth among them), or one segmented later (GSO),
 * carries a zero field, which the device's or the stack's pass computes
 * over the final bytes; it must stay zero. A computed CRC that happens to
 * be zero (one packet in 2^32) is left alone with it, and dropped by the
 * receiver as corrupt. */
#pragma once

#include "parse.h"

#define PN_CRC32C_POLY 0x82f63b78 /* reflected: bit 31 is x^0 */

/* pn_crc32c_x8 holds x^(8i) (entries 0-255) and x^(8 * 256i) (entries
 * 256-511) modulo the CRC32c polynomial, reflected. The loader writes it
 * before loading (bpf/sctp.go): computed in Go, checked there against
 * hash/crc32. */
const volatile __u32 pn_crc32c_x8[512];

/* pn_crc32c_mul returns a * b modulo the CRC32c polynomial, both
 * reflected; branch-free, so the verifier walks one path per iteration. */
static __always_inline __u32 pn_crc32c_mul(__u32 a, __u32 b)
{
	__u32 p = 0;
	int i;

#pragma clang loop unroll(disable)
	for (i = 0; i < 32; i++) {
		p ^= b & -((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (PN_CRC32C_POLY & -(b & 1));
	}
	return p;
}

/* pn_sctp_len returns the length of the SCTP packet at p->l4off, from the
 * IP header (the skb may carry an Ethernet pad), or 0 when it is not
 * known: a first fragment, whose CRC covers the whole datagram. */
static __always_inline __u32 pn_sctp_len(struct __sk_buff *skb, const struct pn_pkt *p)
{
	__be16 len;
	__u32 hdrs;

	if (p->fragment)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l3off + (p->v6 ? 4 : 2), &len, sizeof(len)) < 0)
		return 0;
	hdrs = p->l4off - p->l3off;
	if (p->v6) {
		/* The payload length counts the extension headers. */
		hdrs -= sizeof(struct ipv6hdr);
	}
	if (bpf_ntohs(len) <= hdrs)
		return 0;
	return bpf_ntohs(len) - hdrs;
}

/* pn_sctp_port_csum updates the CRC of the SCTP packet at p->l4off for its
 * source (dst == 0) or destination port going from `from` to `to`. */
static __always_inline int pn_sctp_port_csum(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					     __be16 from, __be16 to)
{
	__u32 len, crc, delta, x;

	if (bpf_skb_load_bytes(skb, p->l4off + 8, &crc, sizeof(crc)) < 0)
		return -1;
	if (crc == 0)
		return 0; /* computed later, over the new port */
	len = pn_sctp_len(skb, p);
	if (len < 12)
		return -1;
	delta = (__u32)(__u16)(from ^ to);
	if (dst)
		delta <<= 16;
	x = pn_crc32c_mul(pn_crc32c_x8[len & 0xff], pn_crc32c_x8[256 + ((len >> 8) & 0xff)]);
	crc ^= pn_crc32c_mul(delta, x);
	return bpf_skb_store_bytes(skb, p->l4off + 8, &crc, sizeof(crc), 0);
}
