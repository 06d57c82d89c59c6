package nodeagent

import (
	"net/netip"
	"slices"
	"testing"
)

// The cases are kube-proxy v1.36.3's TestCategorizeEndpoints
// (pkg/proxy/topology_test.go), one for one and in its order, with its
// addresses. nodePort: 8080 there is External: true here. The case "PreferSameNode
// falls back to same-zone when feature gate disabled" is left out: the
// gate is GA and locked on in v1.36. Three cases of podnic's own follow.

type epOpt func(*Endpoint)

var (
	ready       epOpt = func(e *Endpoint) { e.Ready = true }
	serving     epOpt = func(e *Endpoint) { e.Serving = true }
	terminating epOpt = func(e *Endpoint) { e.Terminating = true }
	local       epOpt = func(e *Endpoint) { e.Local = true }
)

func zones(z ...string) epOpt { return func(e *Endpoint) { e.ZoneHints = z } }
func nodes(n ...string) epOpt { return func(e *Endpoint) { e.NodeHints = n } }

func ep(addr string, opts ...epOpt) Endpoint {
	e := Endpoint{Addr: netip.MustParseAddrPort(addr)}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// set is nil for "does not use this kind of endpoints" and empty for
// "uses them, has none", as in kube-proxy's table.
func set(addrs ...string) []string {
	if addrs == nil {
		return []string{}
	}
	return addrs
}

func TestEndpointSelectionMatchesKubeProxy(t *testing.T) {
	zoneA := Topology{Zone: "zone-a"}
	for _, tc := range []struct {
		name      string
		node      Topology
		policy    TrafficPolicy
		endpoints []Endpoint
		cluster   []string
		local     []string
		all       []string // when both cluster and local are non-empty
		// onlyRemote: hasAny although all is empty.
		onlyRemote bool
	}{{
		name: "should use topology since all endpoints have hints, node has a zone label and there are endpoints for the node's zone",
		node: zoneA,
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), ready), ep("10.1.2.4:80", zones("zone-b"), ready),
			ep("10.1.2.5:80", zones("zone-c"), ready), ep("10.1.2.6:80", zones("zone-a"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.6:80"),
	}, {
		name:   "externalTrafficPolicy: Local, topology ignored for Local endpoints",
		node:   zoneA,
		policy: TrafficPolicy{ExternalLocal: true, External: true},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), ready, local), ep("10.1.2.4:80", zones("zone-b"), ready, local),
			ep("10.1.2.5:80", zones("zone-c"), ready), ep("10.1.2.6:80", zones("zone-a"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.6:80"),
		local:   set("10.1.2.3:80", "10.1.2.4:80"),
		all:     set("10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"),
	}, {
		name:   "internalTrafficPolicy: Local, topology ignored for Local endpoints",
		node:   zoneA,
		policy: TrafficPolicy{InternalLocal: true, External: true},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), ready, local), ep("10.1.2.4:80", zones("zone-b"), ready, local),
			ep("10.1.2.5:80", zones("zone-c"), ready), ep("10.1.2.6:80", zones("zone-a"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.6:80"),
		local:   set("10.1.2.3:80", "10.1.2.4:80"),
		all:     set("10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"),
	}, {
		name:      "empty node labels",
		endpoints: []Endpoint{ep("10.1.2.3:80", zones("zone-a"), ready)},
		cluster:   set("10.1.2.3:80"),
	}, {
		name:      "empty zone label",
		node:      Topology{Zone: ""},
		endpoints: []Endpoint{ep("10.1.2.3:80", zones("zone-a"), ready)},
		cluster:   set("10.1.2.3:80"),
	}, {
		name:      "node in different zone, no endpoint filtering",
		node:      Topology{Zone: "zone-b"},
		endpoints: []Endpoint{ep("10.1.2.3:80", zones("zone-a"), ready)},
		cluster:   set("10.1.2.3:80"),
	}, {
		name: "unready endpoint",
		node: zoneA,
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), ready), ep("10.1.2.4:80", zones("zone-b"), ready),
			ep("10.1.2.5:80", zones("zone-c"), ready), ep("10.1.2.6:80", zones("zone-a")),
		},
		cluster: set("10.1.2.3:80"),
	}, {
		name: "only unready endpoints in same zone (should not filter)",
		node: zoneA,
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a")), ep("10.1.2.4:80", zones("zone-b"), ready),
			ep("10.1.2.5:80", zones("zone-c"), ready), ep("10.1.2.6:80", zones("zone-a")),
		},
		cluster: set("10.1.2.4:80", "10.1.2.5:80"),
	}, {
		name: "missing hints, no filtering applied",
		node: zoneA,
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), ready), ep("10.1.2.4:80", zones("zone-b"), ready),
			ep("10.1.2.5:80", ready), ep("10.1.2.6:80", zones("zone-a"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"),
	}, {
		name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
		node: Topology{Zone: "zone-c"},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a", "zone-b", "zone-c"), ready), ep("10.1.2.4:80", zones("zone-b", "zone-c"), ready),
			ep("10.1.2.5:80", zones("zone-b", "zone-d"), ready), ep("10.1.2.6:80", zones("zone-c"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"),
	}, {
		name: "PreferSameNode available",
		node: Topology{Node: "node-1", Zone: "zone-a"},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), nodes("node-1"), ready), ep("10.1.2.4:80", zones("zone-b"), nodes("node-2"), ready),
			ep("10.1.2.5:80", zones("zone-c"), nodes("node-3"), ready), ep("10.1.2.6:80", zones("zone-a"), nodes("node-4"), ready),
		},
		cluster: set("10.1.2.3:80"),
	}, {
		name: "PreferSameNode ignored if some endpoints unhinted",
		node: Topology{Node: "node-1", Zone: "zone-a"},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), nodes("node-1"), ready), ep("10.1.2.4:80", ready),
			ep("10.1.2.5:80", zones("zone-c"), nodes("node-3"), ready), ep("10.1.2.6:80", zones("zone-a"), nodes("node-4"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"),
	}, {
		name: "PreferSameNode falls back to PreferSameZone if no endpoint for node",
		node: Topology{Node: "node-0", Zone: "zone-a"},
		endpoints: []Endpoint{
			ep("10.1.2.3:80", zones("zone-a"), nodes("node-1"), ready), ep("10.1.2.4:80", zones("zone-b"), nodes("node-2"), ready),
			ep("10.1.2.5:80", zones("zone-c"), nodes("node-3"), ready), ep("10.1.2.6:80", zones("zone-a"), nodes("node-4"), ready),
		},
		cluster: set("10.1.2.3:80", "10.1.2.6:80"),
	}, {
		name:   "conflicting topology and localness require merging allEndpoints",
		node:   zoneA,
		policy: TrafficPolicy{ExternalLocal: true, External: true},
		endpoints: []Endpoint{
			ep("10.0.0.0:80", zones("zone-a"), ready, local), ep("10.0.0.1:80", zones("zone-b"), ready, local),
			ep("10.0.0.2:80", zones("zone-a"), ready), ep("10.0.0.3:80", zones("zone-b"), ready),
		},
		cluster: set("10.0.0.0:80", "10.0.0.2:80"),
		local:   set("10.0.0.0:80", "10.0.0.1:80"),
		all:     set("10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"),
	}, {
		name:      "internalTrafficPolicy: Local, with empty endpoints",
		policy:    TrafficPolicy{InternalLocal: true},
		endpoints: []Endpoint{},
		local:     set(),
	}, {
		name:       "internalTrafficPolicy: Local, but all endpoints are remote",
		policy:     TrafficPolicy{InternalLocal: true},
		endpoints:  []Endpoint{ep("10.0.0.0:80", ready), ep("10.0.0.1:80", ready)},
		local:      set(),
		onlyRemote: true,
	}, {
		name:      "internalTrafficPolicy: Local, all endpoints are local",
		policy:    TrafficPolicy{InternalLocal: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready, local), ep("10.0.0.1:80", ready, local)},
		local:     set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "internalTrafficPolicy: Local, some endpoints are local",
		policy:    TrafficPolicy{InternalLocal: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready, local), ep("10.0.0.1:80", ready)},
		local:     set("10.0.0.0:80"),
	}, {
		name:      "Cluster traffic policy, endpoints not Ready",
		endpoints: []Endpoint{ep("10.0.0.0:80"), ep("10.0.0.1:80")},
		cluster:   set(),
	}, {
		name:      "Cluster traffic policy, some endpoints are Ready",
		endpoints: []Endpoint{ep("10.0.0.0:80"), ep("10.0.0.1:80", ready)},
		cluster:   set("10.0.0.1:80"),
	}, {
		name: "Cluster traffic policy, all endpoints are terminating",
		endpoints: []Endpoint{
			ep("10.0.0.0:80", serving, terminating, local), ep("10.0.0.1:80", serving, terminating),
		},
		cluster: set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "iTP: Local, eTP: Cluster, some endpoints local",
		policy:    TrafficPolicy{InternalLocal: true, External: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready, local), ep("10.0.0.1:80", ready)},
		cluster:   set("10.0.0.0:80", "10.0.0.1:80"),
		local:     set("10.0.0.0:80"),
		all:       set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "iTP: Cluster, eTP: Local, some endpoints local",
		policy:    TrafficPolicy{ExternalLocal: true, External: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready, local), ep("10.0.0.1:80", ready)},
		cluster:   set("10.0.0.0:80", "10.0.0.1:80"),
		local:     set("10.0.0.0:80"),
		all:       set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "iTP: Local, eTP: Local, some endpoints local",
		policy:    TrafficPolicy{InternalLocal: true, ExternalLocal: true, External: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready, local), ep("10.0.0.1:80", ready)},
		cluster:   set("10.0.0.0:80", "10.0.0.1:80"),
		local:     set("10.0.0.0:80"),
		all:       set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "iTP: Local, eTP: Local, all endpoints remote",
		policy:    TrafficPolicy{InternalLocal: true, ExternalLocal: true, External: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready), ep("10.0.0.1:80", ready)},
		cluster:   set("10.0.0.0:80", "10.0.0.1:80"),
		local:     set(),
		all:       set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:   "iTP: Local, eTP: Local, all endpoints remote and terminating",
		policy: TrafficPolicy{InternalLocal: true, ExternalLocal: true, External: true},
		endpoints: []Endpoint{
			ep("10.0.0.0:80", serving, terminating), ep("10.0.0.1:80", serving, terminating),
		},
		cluster:    set("10.0.0.0:80", "10.0.0.1:80"),
		local:      set(),
		all:        set("10.0.0.0:80", "10.0.0.1:80"),
		onlyRemote: true,
	}, {
		name:   "iTP: Cluster, eTP: Local, with terminating endpoints",
		policy: TrafficPolicy{ExternalLocal: true, External: true},
		endpoints: []Endpoint{
			ep("10.0.0.0:80", ready), ep("10.0.0.1:80", local),
			ep("10.0.0.2:80", serving, terminating, local), ep("10.0.0.3:80", serving, terminating),
		},
		cluster: set("10.0.0.0:80"),
		local:   set("10.0.0.2:80"),
		all:     set("10.0.0.0:80", "10.0.0.2:80"),
	}, {
		name:      "externalTrafficPolicy ignored if not externally accessible",
		policy:    TrafficPolicy{ExternalLocal: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready), ep("10.0.0.1:80", ready, local)},
		cluster:   set("10.0.0.0:80", "10.0.0.1:80"),
		all:       set("10.0.0.0:80", "10.0.0.1:80"),
	}, {
		name:      "no cluster endpoints for iTP:Local internal-only service",
		policy:    TrafficPolicy{InternalLocal: true},
		endpoints: []Endpoint{ep("10.0.0.0:80", ready), ep("10.0.0.1:80", ready, local)},
		local:     set("10.0.0.1:80"),
		all:       set("10.0.0.1:80"),
	}, {
		name: "empty endpoints when no service endpoints exist",
	}, {
		name:      "single endpoint not ready, not serving, not terminating",
		node:      zoneA,
		endpoints: []Endpoint{ep("10.0.0.0:80")},
		cluster:   set(),
	}, {
		// podnic: ready ones win over serving-terminating ones, which
		// are only a fallback (a rolling update's old pods).
		name: "podnic: terminating endpoints are not used while one is ready",
		endpoints: []Endpoint{
			ep("10.0.0.0:80", serving, terminating), ep("10.0.0.1:80", ready, serving),
		},
		cluster: set("10.0.0.1:80"),
	}, {
		// podnic: publishNotReadyAddresses is the EndpointSlice
		// controller's business: it writes ready: true for every pod, and
		// kube-proxy (and podnic) trust the ready condition.
		name:      "podnic: publishNotReadyAddresses endpoint (ready, not serving) is used",
		endpoints: []Endpoint{ep("10.0.0.0:80", ready)},
		cluster:   set("10.0.0.0:80"),
	}, {
		name: "podnic: non-serving terminating endpoints are never used",
		endpoints: []Endpoint{
			ep("10.0.0.0:80", terminating), ep("10.0.0.1:80", serving, terminating),
		},
		cluster: set("10.0.0.1:80"),
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cluster, local, all, hasAny := CategorizeEndpoints(tc.endpoints, tc.policy, tc.node)
			expectEndpoints(t, "cluster", cluster, tc.cluster)
			expectEndpoints(t, "local", local, tc.local)
			wantAll := tc.all
			switch {
			case len(tc.cluster) != 0 && len(tc.local) == 0:
				wantAll = tc.cluster
			case len(tc.local) != 0 && len(tc.cluster) == 0:
				wantAll = tc.local
			}
			expectEndpoints(t, "all", all, wantAll)
			if want := len(wantAll) > 0 || tc.onlyRemote; hasAny != want {
				t.Errorf("hasAnyEndpoints = %v, want %v", hasAny, want)
			}
		})
	}
}

// expectEndpoints compares as kube-proxy's checkExpectedEndpoints does: as
// sets, with an empty want matching nil or empty.
func expectEndpoints(t *testing.T, what string, got []Endpoint, want []string) {
	t.Helper()
	var g []string
	for _, e := range got {
		g = append(g, e.String())
	}
	slices.Sort(g)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("%s endpoints = %v, want %v", what, g, w)
	}
}
