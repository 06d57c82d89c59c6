/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types, maps and verdict codes shared by every podnic program. The Go side
 * reads these layouts through bpf2go's generated types, so a change here is a
 * change of the pinned map format: bump the map's _v suffix. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define LOOPBACK_IFINDEX 1

/* Verdicts. Positive codes are outcomes of a packet that goes on; negative
 * codes are drops. The Go package bpf mirrors them as Reason and a test
 * keeps both in step; codes are stable, never renumber. */
enum pn_reason {
	PN_PASS = 1,	    /* not Service traffic: left to the next program */
	PN_DNAT_NEW = 2,    /* new flow: backend chosen, destination rewritten */
	PN_DNAT_CT = 3,	    /* established flow rewritten from conntrack */
	PN_REVNAT = 4,	    /* reply source rewritten back to the Service */
	PN_SELF = 5,	    /* self access: rewritten and redirected to lo */
	PN_REJECT = 6,	    /* no usable backend: TCP RST or ICMP unreachable */
	PN_ICMP_REVNAT = 7, /* ICMP error about a flow translated back */
	PN_ICMP_DNAT = 8,   /* ICMP error from the pod sent on to the backend */
	PN_SOCK_LB = 9,	    /* connect() to a Service sent straight to a backend */
	PN_UNBALANCED = 10, /* socket path: Service traffic the socket left, refused */

	PN_DROP_INVALID = -1,	    /* truncated or malformed headers */
	PN_DROP_UNKNOWN_PORT = -2,  /* known Service VIP, unknown port */
	PN_DROP_NO_BACKEND = -3,    /* slot or backend entry missing */
	PN_DROP_FRAGMENT = -4,	    /* IP fragment to a Service VIP */
	PN_DROP_PROTO = -5,	    /* protocol other than TCP/UDP/SCTP to a VIP */
	PN_DROP_CT_CREATE = -6,	    /* conntrack entry could not be written */
	PN_DROP_NAT = -7,	    /* header rewrite failed */
	PN_DROP_REJECT = -8,	    /* building the reject reply failed */
	PN_DROP_NO_LOCAL = -9,	    /* internalTrafficPolicy Local, no local endpoint */
	PN_DROP_SOURCE_RANGE = -10, /* loadBalancerSourceRanges: source not allowed */
};

/* Counter slots: direction * PN_REASON_SLOTS + index, where index is the
 * code for verdicts and PN_DROP_BASE - code for drops. */
#define PN_REASON_SLOTS 32
#define PN_DROP_BASE	16

enum pn_dir {
	PN_DIR_FROM_POD = 0, /* pod NIC egress */
	PN_DIR_TO_POD = 1,   /* pod NIC ingress */
	PN_DIR_LO = 2,	     /* pod lo egress (self-access replies) */
	PN_DIR_SOCK = 3,     /* connect() of a pod's socket (socket-level LB) */
	PN_DIR_MAX = 4,
};

/* An address: IPv6, or IPv4 stored as ::ffff:a.b.c.d. */
struct pn_addr {
	__u32 w[4];
};

enum pn_scope {
	PN_SCOPE_CLUSTER = 0,  /* ClusterIP as seen from inside the cluster */
	PN_SCOPE_EXTERNAL = 1, /* reserved: NodePort, ExternalIP, LoadBalancer */
};

struct pn_svc_key {
	struct pn_addr addr;
	__be16 port; /* 0 with proto 0: the VIP marker entry */
	__u8 proto;
	__u8 scope;
};

enum pn_svc_flags {
	PN_SVC_AFFINITY = 1 << 0, /* session affinity ClientIP */
	/* With count 0: endpoints exist, none this node may use
	 * (internalTrafficPolicy Local): drop, as kube-proxy does, rather
	 * than reject. */
	PN_SVC_DROP = 1 << 1,
	/* A LoadBalancer ingress IP with loadBalancerSourceRanges: new flows
	 * only from a source in podnic_srcrange_v1 under this frontend's id,
	 * others are dropped, as kube-proxy's firewall chain drops them. */
	PN_SVC_SRC_RANGES = 1 << 2,
};

struct pn_svc_val {
	__u32 id;    /* service id: slot key prefix, reverse NAT id */
	__u16 count; /* number of slots 1..count; 0 means reject (or drop) */
	__u16 flags;
	__u32 affinity_timeout; /* seconds */
};

struct pn_slot_key {
	__u32 svc_id;
	__u32 slot; /* 1-based */
};

enum pn_backend_state {
	PN_BACKEND_ACTIVE = 0,
	PN_BACKEND_TERMINATING = 1,
};

struct pn_backend {
	struct pn_addr addr;
	__be16 port;
	__u8 state;
	__u8 pad;
};

enum pn_ct_dir {
	PN_CT_FORWARD = 0, /* client -> VIP, as the pod sends it */
	PN_CT_REPLY = 1,   /* backend -> client, as the pod receives it */
};

struct pn_ct_key {
	struct pn_addr saddr;
	struct pn_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

enum pn_ct_flags {
	PN_CT_SELF = 1 << 0,	    /* backend is the client itself */
	PN_CT_ESTABLISHED = 1 << 1, /* TCP handshake completed */
	PN_CT_CLOSING = 1 << 2,	    /* TCP FIN or RST seen */
	PN_CT_NEIGH = 1 << 3,	    /* sent to a pod, not a VIP: next hop looked up */
};

/* A conntrack entry. Forward entries hold the backend; reply entries hold
 * the Service frontend (VIP and port), so replies survive a Service's
 * deletion and cost one lookup. */
struct pn_ct_entry {
	struct pn_addr addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
	__u32 svc_id;
	__u32 backend_id;
	__u32 pad2;
	__u64 expires; /* CLOCK_MONOTONIC ns */
};

struct pn_affinity_key {
	struct pn_addr client;
	__u32 svc_id;
};

struct pn_affinity_val {
	__u32 backend_id;
	/* The Service's slot that held backend_id when the entry was written;
	 * 0 in entries from before slots were recorded. */
	__u32 slot;
	__u64 last_used; /* CLOCK_MONOTONIC ns */
};

struct pn_counter {
	__u64 packets;
	__u64 bytes;
};

/* A drop or reject, for podnicctl and later tracing tools. */
struct pn_event {
	__u64 ts;
	__s32 reason;
	__u32 ifindex;
	struct pn_addr saddr;
	struct pn_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* Map sizes: docs/maps.md explains each and what fills it. */
#define PN_SVC_MAX	 262144
#define PN_BACKEND_MAX	 262144
#define PN_SLOT_MAX	 1048576
#define PN_CT_MAX	 262144
#define PN_AFFINITY_MAX	 65536
#define PN_EVENTS_BYTES	 (256 * 1024)
#define PN_CIDR_MAX	 64
#define PN_LB_NETNS_MAX	 16384
#define PN_LB_PEER_SLOTS 262144 /* a power of two */
#define PN_UDP_SK_MAX	 65536
#define PN_SRCRANGE_MAX	 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_SVC_MAX);
	__type(key, struct pn_svc_key);
	__type(value, struct pn_svc_val);
} podnic_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_SLOT_MAX);
	__type(key, struct pn_slot_key);
	__type(value, __u32);
} podnic_slot_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_BACKEND_MAX);
	__type(key, __u32);
	__type(value, struct pn_backend);
} podnic_be_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PN_CT_MAX);
	__type(key, struct pn_ct_key);
	__type(value, struct pn_ct_entry);
} podnic_ct_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PN_AFFINITY_MAX);
	__type(key, struct pn_affinity_key);
	__type(value, struct pn_affinity_val);
} podnic_aff_v1 SEC(".maps");

/* The cluster's Service CIDRs: a TCP or UDP packet to an address in them
 * that is no VIP (a deleted Service, a typo) is rejected at once instead of
 * wandering to the gateway. */
struct pn_cidr_key {
	__u32 prefixlen; /* of the 128-bit address, IPv4 mapped as ::ffff:0:0/96 */
	struct pn_addr addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_CIDR_MAX);
	__type(key, struct pn_cidr_key);
	__type(value, __u8);
} podnic_cidr_v1 SEC(".maps");

/* The sources a frontend flagged PN_SVC_SRC_RANGES takes new flows from:
 * its Service's loadBalancerSourceRanges of the frontend's family, keyed by
 * the frontend's id. prefixlen counts svc_id's 32 bits and then the
 * address's, IPv4 mapped as ::ffff:0:0/96. */
struct pn_srcrange_key {
	__u32 prefixlen;
	__u32 svc_id;
	struct pn_addr addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PN_SRCRANGE_MAX);
	__type(key, struct pn_srcrange_key);
	__type(value, __u8);
} podnic_srcrange_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PN_DIR_MAX *PN_REASON_SLOTS);
	__type(key, __u32);
	__type(value, struct pn_counter);
} podnic_cnt_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PN_EVENTS_BYTES);
} podnic_ev_v1 SEC(".maps");

/* Force bpf2go to emit Go types for the enums and event layout. */
const enum pn_reason *pn_unused_reason __attribute__((unused));
const enum pn_dir *pn_unused_dir __attribute__((unused));
const enum pn_ct_flags *pn_unused_ct_flags __attribute__((unused));
const enum pn_svc_flags *pn_unused_svc_flags __attribute__((unused));
const enum pn_backend_state *pn_unused_state __attribute__((unused));
const enum pn_scope *pn_unused_scope __attribute__((unused));
const enum pn_ct_dir *pn_unused_ct_dir __attribute__((unused));
const struct pn_event *pn_unused_event __attribute__((unused));

static __always_inline __u32 pn_counter_index(__u8 dir, int reason)
{
	__u32 idx = reason > 0 ? (__u32)reason : (__u32)(PN_DROP_BASE - reason);

	return (__u32)dir * PN_REASON_SLOTS + (idx & (PN_REASON_SLOTS - 1));
}

static __always_inline void pn_count(struct __sk_buff *skb, __u8 dir, int reason)
{
	__u32 key = pn_counter_index(dir, reason);
	struct pn_counter *c = bpf_map_lookup_elem(&podnic_cnt_v1, &key);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
}

static __always_inline int pn_addr_eq(const struct pn_addr *a, const struct pn_addr *b)
{
	return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) |
		(a->w[3] ^ b->w[3])) == 0;
}

static __always_inline void pn_addr_v4(struct pn_addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}
