/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SCTP: the CRC32c of a packet whose port was rewritten.
 *
 * SCTP's checksum is a CRC32c over the SCTP packet alone (common header
 * and chunks, the checksum field as zero): no pseudo-header, so a new
 * address changes nothing in it, but a new port does. The CRC is affine:
 * for two packets A and B of one length, crc(A) ^ crc(B) is the plain CRC
 * (no initial value, no final xor) of A ^ B, which here is zero but for
 * the first four bytes. That CRC is those bytes, read as a little-endian
 * word, times x^(8 * length) modulo the CRC32c polynomial: one or two
 * table lookups and multiplications in GF(2)[x] / P, whatever the length,
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
 * reflected, for an a whose low bits - bits is 16 or 32 - are zero: one
 * step per bit of a that may be set, branch-free, so the verifier walks
 * one path per iteration. */
static __always_inline __u32 pn_crc32c_mul(__u32 a, __u32 b, int bits)
{
	__u32 p = 0;
	int i;

#pragma clang loop unroll(disable)
	for (i = 0; i < bits && i < 32; i++) {
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
 * source (dst == 0) or destination port going from `from` to `to`. The
 * changed bytes, read little-endian as the CRC register reads them, are
 * (from ^ to) << 16 at offset 2 for the destination; the source's, at
 * offset 0, are the same word times x^16, so it takes the length plus 2
 * bytes: either way a 16-step multiplication, and a second one only for a
 * packet of 256 bytes or more. */
static __always_inline int pn_sctp_port_csum(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					     __be16 from, __be16 to)
{
	__u32 len, crc, delta, lo, hi;

	if (bpf_skb_load_bytes(skb, p->l4off + 8, &crc, sizeof(crc)) < 0)
		return -1;
	if (crc == 0)
		return 0; /* computed later, over the new port */
	len = pn_sctp_len(skb, p);
	if (len < 12 || len > 0xffff - 2)
		return -1;
	if (!dst)
		len += 2;
	lo = len;
	hi = len >> 8;
	/* Mask after a barrier, so that the verifier sees each index masked:
	 * the compiler would otherwise fold the masks into bounds it cannot
	 * prove. */
	asm volatile("" : "+r"(lo), "+r"(hi));
	lo &= 0xff;
	hi &= 0xff;
	delta = pn_crc32c_mul((__u32)(__u16)(from ^ to) << 16, pn_crc32c_x8[lo], 16);
	if (hi)
		delta = pn_crc32c_mul(delta, pn_crc32c_x8[256 + hi], 32);
	crc ^= delta;
	return bpf_skb_store_bytes(skb, p->l4off + 8, &crc, sizeof(crc), 0);
}
