/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service lookup and backend choice. */
#pragma once

#include "ct.h"

static __always_inline struct pn_svc_val *pn_svc_lookup(const struct pn_pkt *p, __be16 port,
							__u8 proto)
{
	struct pn_svc_key k = {
		.addr = p->daddr,
		.port = port,
		.proto = proto,
		.scope = PN_SCOPE_CLUSTER,
	};

	return bpf_map_lookup_elem(&podnic_svc_v1, &k);
}

/* pn_is_vip reports whether the packet's destination is a Service VIP: the
 * agent writes a marker entry (port 0, protocol 0) for every VIP. */
static __always_inline int pn_is_vip(const struct pn_pkt *p)
{
	return pn_svc_lookup(p, 0, 0) != NULL;
}

/* pn_in_service_cidr reports whether the destination lies in one of the
 * cluster's Service CIDRs. */
static __always_inline int pn_in_service_cidr(const struct pn_pkt *p)
{
	struct pn_cidr_key k = {
		.prefixlen = 128,
		.addr = p->daddr,
	};

	return bpf_map_lookup_elem(&podnic_cidr_v1, &k) != NULL;
}

/* pn_source_allowed reports whether client may open a new flow to the
 * frontend svc: any client, unless the frontend is a LoadBalancer ingress IP
 * whose Service lists loadBalancerSourceRanges of its family; then only one
 * in them. Flows already open are not judged again, as kube-proxy judges
 * only new connections. */
static __always_inline int pn_source_allowed(const struct pn_svc_val *svc,
					     const struct pn_addr *client)
{
	struct pn_srcrange_key k = {
		.prefixlen = 32 + 128,
		.svc_id = svc->id,
	};

	if (!(svc->flags & PN_SVC_SRC_RANGES))
		return 1;
	k.addr = *client;
	return bpf_map_lookup_elem(&podnic_srcrange_v1, &k) != NULL;
}

/* pn_random_backend picks one of the Service's slots at random, as
 * kube-proxy's iptables mode does, and returns its backend. */
static __always_inline struct pn_backend *pn_random_backend(const struct pn_svc_val *svc,
							    __u32 *backend_id, __u32 *slot)
{
	struct pn_slot_key sk = {
		.svc_id = svc->id,
		.slot = bpf_get_prandom_u32() % svc->count + 1,
	};
	__u32 *id = bpf_map_lookup_elem(&podnic_slot_v1, &sk);

	if (!id)
		return NULL;
	*backend_id = *id;
	*slot = sk.slot;
	return bpf_map_lookup_elem(&podnic_be_v1, id);
}

/* pn_affinity_usable reports whether the backend an affinity entry names
 * may still take the client's new flows: it is still in the slot the entry
 * recorded, so still one of the Service's endpoints for this node (a
 * backend is shared by every Service that has it: it may live on, active,
 * for another Service after leaving this one). A terminating backend in
 * the slots means the Service falls back to terminating endpoints, and
 * the affinity holds among them, as kube-proxy's does. An entry written
 * before slots were recorded (slot 0) holds while its backend is active. */
static __always_inline int pn_affinity_usable(const struct pn_svc_val *svc,
					      const struct pn_affinity_val *av,
					      const struct pn_backend *be)
{
	struct pn_slot_key sk = {
		.svc_id = svc->id,
		.slot = av->slot,
	};
	__u32 *id;

	if (av->slot == 0)
		return be->state == PN_BACKEND_ACTIVE;
	if (av->slot > svc->count)
		return 0;
	id = bpf_map_lookup_elem(&podnic_slot_v1, &sk);
	return id && *id == av->backend_id;
}

/* pn_select_backend picks the backend of a new flow from client: the
 * client's affinity backend while it is fresh and usable, otherwise a
 * random slot, as kube-proxy's iptables mode does. The affinity timeout
 * counts from the client's last new flow, as iptables' "recent" match
 * does. The tc path and connect() share the affinity entries. */
static __always_inline int pn_select_backend(const struct pn_addr *client,
					     const struct pn_svc_val *svc, __u64 now,
					     __u32 *backend_id, struct pn_backend **backend)
{
	struct pn_affinity_key ak = {};
	struct pn_backend *be;
	__u32 slot = 0;

	if (svc->flags & PN_SVC_AFFINITY) {
		struct pn_affinity_val *av;

		ak.client = *client;
		ak.svc_id = svc->id;
		av = bpf_map_lookup_elem(&podnic_aff_v1, &ak);
		if (av && now - av->last_used < (__u64)svc->affinity_timeout * PN_NS) {
			__u32 aid = av->backend_id;

			be = bpf_map_lookup_elem(&podnic_be_v1, &aid);
			if (be && pn_affinity_usable(svc, av, be)) {
				av->last_used = now;
				*backend_id = aid;
				*backend = be;
				return 0;
			}
		}
	}

	be = pn_random_backend(svc, backend_id, &slot);
	if (!be)
		return PN_DROP_NO_BACKEND;
	*backend = be;

	if (svc->flags & PN_SVC_AFFINITY) {
		struct pn_affinity_val av = {
			.backend_id = *backend_id,
			.slot = slot,
			.last_used = now,
		};

		bpf_map_update_elem(&podnic_aff_v1, &ak, &av, BPF_ANY);
	}
	return 0;
}
