package nodeagent

import (
	"net/netip"
	"slices"
)

// Endpoint is one address:port of a Service port as the EndpointSlices
// describe it, with the conditions kube-proxy reads.
type Endpoint struct {
	Addr        netip.AddrPort
	Local       bool // on this node (the slice's nodeName is this node's)
	Ready       bool // ready and not terminating, or publishNotReadyAddresses
	Serving     bool // ready, terminating or not
	Terminating bool
	ZoneHints   []string // hints.forZones, set by the EndpointSlice controller
	NodeHints   []string // hints.forNodes (trafficDistribution PreferSameNode)
}

func (e Endpoint) String() string { return e.Addr.String() }

// TrafficPolicy is what decides, per Service port, which endpoints it uses.
type TrafficPolicy struct {
	InternalLocal bool // internalTrafficPolicy: Local
	ExternalLocal bool // externalTrafficPolicy: Local
	// External says the port is reachable from outside the cluster
	// (NodePort, ExternalIPs, LoadBalancer): the external scope, which a
	// later issue programs.
	External bool
}

// UsesClusterEndpoints is kube-proxy's ServicePort.UsesClusterEndpoints:
// the port needs Cluster-policy endpoints for internal traffic, or for
// short-circuiting external traffic.
func (p TrafficPolicy) UsesClusterEndpoints() bool { return !p.InternalLocal || p.External }

// UsesLocalEndpoints is kube-proxy's ServicePort.UsesLocalEndpoints.
func (p TrafficPolicy) UsesLocalEndpoints() bool {
	return p.InternalLocal || (p.ExternalLocal && p.External)
}

// Topology is this node as endpoint selection sees it.
type Topology struct {
	Node string // the Node's name, matched against nodeName and hints.forNodes
	Zone string // its topology.kubernetes.io/zone label
}

// Topology modes, as kube-proxy names them.
const (
	topologyNone           = ""
	topologyPreferSameZone = "PreferSameZone"
	topologyPreferSameNode = "PreferSameNode"
)

// CategorizeEndpoints follows the semantics of kube-proxy v1.36's proxy.CategorizeEndpoints
// (pkg/proxy/topology.go), with the PreferSameTrafficDistribution gate at
// its locked GA value. It returns the usable Cluster-policy endpoints (nil
// if the port never uses them), the usable Local-policy endpoints (nil if
// it never uses them), their union, and whether the Service has usable
// endpoints anywhere in the cluster. "Usable" is Ready, falling back to
// Serving-and-Terminating, independently for Cluster and Local, when no
// endpoint is Ready.
func CategorizeEndpoints(endpoints []Endpoint, policy TrafficPolicy, node Topology) (cluster, local, all []Endpoint, hasAny bool) {
	if len(endpoints) == 0 {
		return
	}
	var mode string
	if policy.UsesClusterEndpoints() {
		mode = topologyModeFromHints(endpoints, node)
		cluster = filterEndpoints(endpoints, func(ep Endpoint) bool {
			return ep.Ready && availableForTopology(ep, mode, node)
		})
		// No ready endpoint for the chosen topology means no ready
		// endpoint at all (the mode would have been dropped otherwise):
		// fall back to serving, terminating ones.
		if len(cluster) == 0 {
			cluster = filterEndpoints(endpoints, func(ep Endpoint) bool { return ep.Serving && ep.Terminating })
		}
		if len(cluster) > 0 {
			hasAny = true
		}
	}
	if !policy.UsesLocalEndpoints() {
		all = cluster
		return
	}

	var localReady, localServingTerminating, useServingTerminating bool
	for _, ep := range endpoints {
		if ep.Ready {
			hasAny = true
			localReady = localReady || ep.Local
		} else if ep.Serving && ep.Terminating {
			hasAny = true
			localServingTerminating = localServingTerminating || ep.Local
		}
	}
	if localReady {
		local = filterEndpoints(endpoints, func(ep Endpoint) bool { return ep.Local && ep.Ready })
	} else if localServingTerminating {
		useServingTerminating = true
		local = filterEndpoints(endpoints, func(ep Endpoint) bool { return ep.Local && ep.Serving && ep.Terminating })
	}
	if !policy.UsesClusterEndpoints() {
		all = local
		return
	}
	if mode == topologyNone && !useServingTerminating {
		// cluster holds every ready endpoint, local only ready ones.
		all = cluster
		return
	}
	// Merge: cluster may hold remote endpoints local lacks, local may hold
	// terminating or topologically unavailable ones cluster lacks.
	seen := make(map[netip.AddrPort]bool, len(cluster)+len(local))
	all = make([]Endpoint, 0, len(cluster)+len(local))
	for _, ep := range slices.Concat(cluster, local) {
		if !seen[ep.Addr] {
			seen[ep.Addr] = true
			all = append(all, ep)
		}
	}
	return
}

// topologyModeFromHints is PreferSameNode when every ready endpoint has a
// node hint and one is for this node, else PreferSameZone when every ready
// endpoint has a zone hint and one is for this node's zone, else none.
func topologyModeFromHints(endpoints []Endpoint, node Topology) string {
	var ready, forNode, forZone bool
	allNodeHints, allZoneHints := true, true
	for _, ep := range endpoints {
		if !ep.Ready {
			continue
		}
		ready = true
		if len(ep.NodeHints) == 0 {
			allNodeHints = false
		} else if slices.Contains(ep.NodeHints, node.Node) {
			forNode = true
		}
		if len(ep.ZoneHints) == 0 {
			allZoneHints = false
		} else if slices.Contains(ep.ZoneHints, node.Zone) {
			forZone = true
		}
	}
	switch {
	case !ready:
		return topologyNone
	case allNodeHints && forNode:
		return topologyPreferSameNode
	case allZoneHints && forZone:
		return topologyPreferSameZone
	}
	return topologyNone
}

func availableForTopology(ep Endpoint, mode string, node Topology) bool {
	switch mode {
	case topologyNone:
		return true
	case topologyPreferSameNode:
		return slices.Contains(ep.NodeHints, node.Node)
	case topologyPreferSameZone:
		return slices.Contains(ep.ZoneHints, node.Zone)
	}
	return false
}

func filterEndpoints(endpoints []Endpoint, keep func(Endpoint) bool) []Endpoint {
	out := make([]Endpoint, 0, len(endpoints))
	for _, ep := range endpoints {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
