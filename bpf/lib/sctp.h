/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SCTP: the CRC32c of a packet whose port was rewritten.
 *
 * SCTP's checksum is a CRC32c over the SCTP packet alone (common header
 * and chunks, the checksum field as zero): no pseudo-header, so a new
 * address changes nothing in it, but a new port does. The CRC is affine:
 * for two packets A and B of one length, crc(A) ^ crc(B) is the plain CRC
 * (no initial value, no final xor) of A ^ B, which here is zero but for
 * the two changed bytes. That CRC is those bytes, read as a little-endian
 * word, times x^(8 * the bytes after them) modulo the CRC32c polynomial
 * (pn_sctp_delta16): one or two table lookups and multiplications in
 * GF(2)[x] / P, whatever the length, instead of a pass over the whole
 * packet.
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
 * before loading (bpf/sctp.go), computed in Go; bpf/sctp_test.go checks
 * it against hash/crc32. */
const volatile __u32 pn_crc32c_x8[512];

/* pn_crc32c_mul returns a * b modulo the CRC32c polynomial, both
 * reflected, for an a whose low 32 - bits bits are zero (bits is 16 or
 * 32): one step per bit of a that may be set, branch-free, so the verifier
 * walks one path per iteration. */
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

/* pn_sctp_delta16 returns what a 16-bit change from `from` to `to` at
 * offset off of an SCTP packet of len bytes XORs into its CRC, given
 * n = len - off + 2. The changed bytes, read little-endian as the CRC
 * register reads them, are (from ^ to) << 16 in the word before
 * offset off + 2, which the rest of the packet multiplies by x^(8(len -
 * off - 2)); so the product is (from ^ to) << 16 times x^(8n) (a change
 * at offset 2 takes n = len; one at offset 0 takes the same word times
 * x^16, n = len + 2): a 16-step multiplication, and a second one from 256
 * bytes on. 0xffffffff when n is out of range. */
static __always_inline __u32 pn_sctp_delta16(__u32 n, __be16 from, __be16 to)
{
	__u32 delta, lo, hi;

	if (n < 4 || n > 0xffff)
		return 0xffffffff;
	lo = n;
	hi = n >> 8;
	/* Mask after a barrier, so that the verifier sees each index masked:
	 * the compiler would otherwise fold the masks into bounds it cannot
	 * prove. */
	asm volatile("" : "+r"(lo), "+r"(hi));
	lo &= 0xff;
	hi &= 0xff;
	delta = pn_crc32c_mul((__u32)(__u16)(from ^ to) << 16, pn_crc32c_x8[lo], 16);
	if (hi)
		delta = pn_crc32c_mul(delta, pn_crc32c_x8[256 + hi], 32);
	return delta;
}

/* pn_sctp_port_csum updates the CRC of the SCTP packet at p->l4off for its
 * source (dst == 0) or destination port going from `from` to `to`. */
static __always_inline int pn_sctp_port_csum(struct __sk_buff *skb, const struct pn_pkt *p, int dst,
					     __be16 from, __be16 to)
{
	__u32 len, crc, delta;

	if (bpf_skb_load_bytes(skb, p->l4off + 8, &crc, sizeof(crc)) < 0)
		return -1;
	if (crc == 0)
		return 0; /* computed later, over the new port */
	len = pn_sctp_len(skb, p);
	if (len < 12)
		return -1;
	delta = pn_sctp_delta16(dst ? len : len + 2, from, to);
	if (delta == 0xffffffff)
		return -1;
	crc ^= delta;
	return bpf_skb_store_bytes(skb, p->l4off + 8, &crc, sizeof(crc), 0);
}

/* The address parameters of INIT and INIT ACK (RFC 9260 section 3.3.2),
 * and the type podnic gives them: an unknown type whose top bits (10) tell
 * the receiver to skip it silently. */
#define PN_SCTP_PARAM_IPV4   5
#define PN_SCTP_PARAM_IPV6   6
#define PN_SCTP_PARAM_HIDDEN 0xbf00
/* INIT and INIT ACK carry 16 fixed bytes after the chunk header; podnic
 * looks at the first PN_SCTP_PARAMS_MAX parameters after them. */
#define PN_SCTP_INIT_FIXED 16
#define PN_SCTP_PARAMS_MAX 16

/* pn_sctp_hide_addrs hides the address parameters of the INIT or INIT
 * ACK of len bytes at l4off whose CRC field holds crc (0: computed later):
 * each one's type changes to PN_SCTP_PARAM_HIDDEN | type, the CRC with it;
 * the State Cookie and everything else stay. A global function, verified
 * once for every caller: its loops, inlined at each translation site,
 * took the verifier past its limit. Returns 0, or -1 when the packet could
 * not be changed. */
__attribute__((noinline)) int pn_sctp_hide_addrs(struct __sk_buff *skb, __u32 l4off, __u32 len,
						 __u32 crc)
{
	struct {
		__u8 type, flags;
		__be16 len;
	} ch;
	struct {
		__be16 type, len;
	} param;
	__u32 pos, end, delta;
	int i;

	if (!skb || len < 12 + 4 + PN_SCTP_INIT_FIXED || len > 0xffff || l4off > 0xffff)
		return -1;
	if (bpf_skb_load_bytes(skb, l4off + 12, &ch, sizeof(ch)) < 0)
		return -1;
	end = 12 + bpf_ntohs(ch.len);
	if (end > len)
		end = len;
	pos = 12 + 4 + PN_SCTP_INIT_FIXED;
#pragma clang loop unroll(disable)
	for (i = 0; i < PN_SCTP_PARAMS_MAX; i++) {
		__u16 type, plen;
		__be16 hidden;

		if (pos + sizeof(param) > end)
			break;
		if (bpf_skb_load_bytes(skb, l4off + pos, &param, sizeof(param)) < 0)
			break;
		type = bpf_ntohs(param.type);
		plen = bpf_ntohs(param.len);
		if (plen < sizeof(param))
			break;
		if (type == PN_SCTP_PARAM_IPV4 || type == PN_SCTP_PARAM_IPV6) {
			hidden = bpf_htons(PN_SCTP_PARAM_HIDDEN | type);
			if (crc != 0) {
				delta = pn_sctp_delta16(len - pos + 2, param.type, hidden);
				if (delta == 0xffffffff)
					return -1;
				crc ^= delta;
			}
			if (bpf_skb_store_bytes(skb, l4off + pos, &hidden, sizeof(hidden), 0) < 0)
				return -1;
		}
		pos += ((__u32)plen + 3) & ~3U;
	}
	return bpf_skb_store_bytes(skb, l4off + 8, &crc, sizeof(crc), 0) < 0 ? -1 : 0;
}

/* pn_sctp_single_home hides the address parameters of an INIT or INIT ACK
 * crossing a Service: the peer then knows its end by the packet's
 * addresses alone (the VIP, or the client's one address) and opens no
 * paths past the translation (docs/datapath.md, "SCTP"). A packet whose
 * CRC cannot be updated (an IP fragment) is left as it is. */
static __always_inline int pn_sctp_single_home(struct __sk_buff *skb, const struct pn_pkt *p)
{
	__u32 crc, len;

	if (!(p->tcp_flags & PN_TCP_SYN))
		return 0; /* neither INIT nor INIT ACK */
	if (bpf_skb_load_bytes(skb, p->l4off + 8, &crc, sizeof(crc)) < 0)
		return 0;
	len = pn_sctp_len(skb, p);
	if (len < 12 + 4 + PN_SCTP_INIT_FIXED)
		return 0;
	return pn_sctp_hide_addrs(skb, p->l4off, len, crc);
}
