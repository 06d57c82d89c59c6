package nodeagent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	netutils "k8s.io/utils/net"

	"github.com/podnic/podnic/bpf"
)

// Labels and annotations podnic reads, as kube-proxy does.
const (
	// LabelServiceProxyName marks a Service another proxy implements.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of a headless Service.
	LabelHeadless = v1.IsHeadlessService
	// LabelZone is the Node label topology hints are matched against.
	LabelZone = v1.LabelTopologyZone
)

// ServiceName is a Service's namespace/name.
type ServiceName = types.NamespacedName

// servicePort is one port of a Service as the datapath can serve it.
type servicePort struct {
	Name     string
	Port     uint16
	Proto    bpf.Proto
	NodePort uint16 // 0: none
}

// serviceInfo is what the agent keeps of a Service: validated once, typed.
type serviceInfo struct {
	Type v1.ServiceType
	VIPs []netip.Addr // every ClusterIP, in spec.clusterIPs order
	// ExternalVIPs are spec.externalIPs and the LoadBalancer's ingress
	// IPs (unless its ipMode is Proxy): kube-proxy sends a pod's traffic
	// to them straight to the Service's endpoints, and so does podnic.
	ExternalVIPs []netip.Addr
	// LoadBalancerVIPs are the ExternalVIPs that are the LoadBalancer's
	// ingress IPs: those SourceRanges apply to.
	LoadBalancerVIPs []netip.Addr
	// SourceRanges are spec.loadBalancerSourceRanges, masked, without
	// repeats; a LoadBalancer ingress IP takes new flows only from those
	// of its family, as kube-proxy's firewall lets them through.
	SourceRanges []netip.Prefix
	Ports        []servicePort
	Affinity     time.Duration // ClientIP timeout; 0 without affinity
	Policy       TrafficPolicy
	Rejected     []string // what of the Service the datapath cannot serve, with the reason
}

func (a *serviceInfo) equal(b *serviceInfo) bool {
	return a.Type == b.Type && slices.Equal(a.VIPs, b.VIPs) && slices.Equal(a.ExternalVIPs, b.ExternalVIPs) &&
		slices.Equal(a.LoadBalancerVIPs, b.LoadBalancerVIPs) && slices.Equal(a.SourceRanges, b.SourceRanges) && slices.Equal(a.Ports, b.Ports) &&
		a.Affinity == b.Affinity && a.Policy == b.Policy && slices.Equal(a.Rejected, b.Rejected)
}

// parseService turns a Service into what the datapath serves. A nil
// result with a reason means the Service is not podnic's to proxy.
func parseService(svc *v1.Service) (*serviceInfo, string) {
	if name, ok := svc.Labels[LabelServiceProxyName]; ok {
		return nil, fmt.Sprintf("label %s=%s: another proxy serves it", LabelServiceProxyName, name)
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, "type ExternalName: DNS serves it"
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil, "headless: DNS serves it"
	}
	info := &serviceInfo{Type: svc.Spec.Type}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Sprintf("clusterIP %q: %v", s, err)
		}
		info.VIPs = append(info.VIPs, a.Unmap())
	}
	info.ExternalVIPs, info.LoadBalancerVIPs = externalVIPs(svc, info.VIPs)
	info.SourceRanges, info.Rejected = sourceRanges(svc)
	for _, p := range svc.Spec.Ports {
		sp := servicePort{Name: p.Name, Port: uint16(p.Port)}
		switch p.Protocol {
		case v1.ProtocolTCP, "":
			sp.Proto = bpf.TCP
		case v1.ProtocolUDP:
			sp.Proto = bpf.UDP
		case v1.ProtocolSCTP:
			sp.Proto = bpf.SCTP
		default:
			info.Rejected = append(info.Rejected, fmt.Sprintf("port %s %d/%s: the datapath does not translate %s yet", p.Name, p.Port, p.Protocol, p.Protocol))
			continue
		}
		if p.Port <= 0 || p.Port > 65535 {
			info.Rejected = append(info.Rejected, fmt.Sprintf("port %s %d: out of range", p.Name, p.Port))
			continue
		}
		if (svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer) && p.NodePort > 0 && p.NodePort <= 65535 {
			sp.NodePort = uint16(p.NodePort)
		}
		info.Ports = append(info.Ports, sp)
	}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		// The API server defaults the timeout; be safe without it.
		secs := int32(v1.DefaultClientIPServiceAffinitySeconds)
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs = *c.ClientIP.TimeoutSeconds
		}
		info.Affinity = time.Duration(secs) * time.Second
	}
	info.Policy = TrafficPolicy{
		InternalLocal: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
		ExternalLocal: svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
		External:      svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(svc.Spec.ExternalIPs) > 0,
	}
	return info, ""
}

// externalVIPs returns the Service's external addresses a pod may reach
// it at, as kube-proxy serves them to pods: spec.externalIPs, and for a
// LoadBalancer its status' ingress IPs, except those with ipMode Proxy
// (the load balancer must see that traffic). Unparsable addresses and
// ClusterIPs are skipped; the order is the spec's, without repeats. lb
// lists those of them that are ingress IPs.
func externalVIPs(svc *v1.Service, clusterIPs []netip.Addr) (out, lb []netip.Addr) {
	add := func(s string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(s)
		if err != nil || slices.Contains(clusterIPs, a.Unmap()) {
			return netip.Addr{}, false
		}
		if !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
		return a.Unmap(), true
	}
	for _, s := range svc.Spec.ExternalIPs {
		add(s)
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP == "" || (in.IPMode != nil && *in.IPMode == v1.LoadBalancerIPModeProxy) {
				continue
			}
			if a, ok := add(in.IP); ok && !slices.Contains(lb, a) {
				lb = append(lb, a)
			}
		}
	}
	return out, lb
}

// sourceRanges reads spec.loadBalancerSourceRanges as kube-proxy does:
// entries trimmed of spaces, masked, sorted, without repeats; one that is
// no CIDR is ignored, with a reason added to rejected.
func sourceRanges(svc *v1.Service) (out []netip.Prefix, rejected []string) {
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		// Sloppy, as kube-proxy: leading zeros (010.0.0.0/8), which
		// the API server allowed once, still parse.
		_, n, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			rejected = append(rejected, fmt.Sprintf("loadBalancerSourceRanges %q: not a CIDR, ignored", s))
			continue
		}
		addr, _ := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		if addr.Is4In6() && ones >= 96 {
			addr, ones = addr.Unmap(), ones-96
		}
		p := netip.PrefixFrom(addr, ones).Masked()
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, rejected
}

// rangesFor returns the source ranges of vip's family that apply to it
// (an ingress IP of a LoadBalancer); none when the family has none, or
// allows every address (a /0), as kube-proxy reads them.
func rangesFor(svc *serviceInfo, vip netip.Addr) []netip.Prefix {
	if !slices.Contains(svc.LoadBalancerVIPs, vip) {
		return nil
	}
	var out []netip.Prefix
	for _, p := range svc.SourceRanges {
		if p.Addr().Is4() != vip.Is4() {
			continue
		}
		if p.Bits() == 0 {
			return nil
		}
		out = append(out, p)
	}
	return out
}

// sliceInfo is what the agent keeps of an EndpointSlice.
type sliceInfo struct {
	Service   ServiceName
	IPv6      bool
	Ports     []servicePort // Name and Proto match the Service's port
	Endpoints []sliceEndpoint
	// Trigger is the endpoints.kubernetes.io/last-change-trigger-time
	// annotation: when the change this slice carries began. Not compared.
	Trigger time.Time
}

type sliceEndpoint struct {
	Addr        netip.Addr
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
	Zones       []string
	Nodes       []string
}

func (a *sliceInfo) equal(b *sliceInfo) bool {
	if a.Service != b.Service || a.IPv6 != b.IPv6 || !slices.Equal(a.Ports, b.Ports) || len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for i := range a.Endpoints {
		x, y := a.Endpoints[i], b.Endpoints[i]
		if x.Addr != y.Addr || x.NodeName != y.NodeName || x.Ready != y.Ready || x.Serving != y.Serving ||
			x.Terminating != y.Terminating || !slices.Equal(x.Zones, y.Zones) || !slices.Equal(x.Nodes, y.Nodes) {
			return false
		}
	}
	return true
}

// parseSlice reads an EndpointSlice as kube-proxy's EndpointSliceCache
// does: nil conditions are ready and serving, not terminating; only the
// first address of an endpoint counts; ports without a number are skipped.
// A nil result with a reason means the slice is not one podnic uses.
func parseSlice(s *discovery.EndpointSlice) (*sliceInfo, string) {
	svc := s.Labels[discovery.LabelServiceName]
	if svc == "" {
		return nil, "no " + discovery.LabelServiceName + " label"
	}
	info := &sliceInfo{Service: ServiceName{Namespace: s.Namespace, Name: svc}}
	switch s.AddressType {
	case discovery.AddressTypeIPv4:
	case discovery.AddressTypeIPv6:
		info.IPv6 = true
	default:
		return nil, fmt.Sprintf("addressType %s", s.AddressType)
	}
	if t, err := time.Parse(time.RFC3339Nano, s.Annotations[v1.EndpointsLastChangeTriggerTime]); err == nil {
		info.Trigger = t
	}
	for _, p := range s.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		sp := servicePort{Port: uint16(*p.Port), Proto: bpf.TCP}
		if p.Name != nil {
			sp.Name = *p.Name
		}
		if p.Protocol != nil {
			switch *p.Protocol {
			case v1.ProtocolTCP:
			case v1.ProtocolUDP:
				sp.Proto = bpf.UDP
			case v1.ProtocolSCTP:
				sp.Proto = bpf.SCTP
			default:
				continue
			}
		}
		info.Ports = append(info.Ports, sp)
	}
	for _, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		a, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || a.Unmap().Is6() != info.IPv6 {
			continue
		}
		c := e.Conditions
		ep := sliceEndpoint{
			Addr:        a.Unmap(),
			Ready:       c.Ready == nil || *c.Ready,
			Serving:     c.Serving == nil || *c.Serving,
			Terminating: c.Terminating != nil && *c.Terminating,
		}
		if e.NodeName != nil {
			ep.NodeName = *e.NodeName
		}
		if e.Hints != nil {
			for _, z := range e.Hints.ForZones {
				ep.Zones = append(ep.Zones, z.Name)
			}
			for _, n := range e.Hints.ForNodes {
				ep.Nodes = append(ep.Nodes, n.Name)
			}
		}
		info.Endpoints = append(info.Endpoints, ep)
	}
	return info, ""
}

// desiredService is one frontend as the maps should hold it.
type desiredService struct {
	Key      bpf.ServiceKey
	Service  ServiceName
	PortName string
	Affinity time.Duration
	Backends []desiredBackend // sorted by address
	// NoLocal: no backend this node may use, endpoints elsewhere
	// (internalTrafficPolicy Local): the datapath drops, not rejects.
	NoLocal bool
	// External: the VIP is an external address of the Service, outside
	// the Service CIDRs.
	External bool
	// NodePort: the VIP is one of the node's addresses and the port a
	// NodePort, outside the Service CIDRs too.
	NodePort bool
	// SourceRanges, when not empty: new flows only from these sources
	// (a LoadBalancer ingress IP's loadBalancerSourceRanges).
	SourceRanges []netip.Prefix
}

// Kind names what kind of frontend d is, as podnicctl shows it.
func (d *desiredService) Kind() string {
	switch {
	case d.NodePort:
		return "NodePort"
	case d.External:
		return "External"
	}
	return "ClusterIP"
}

type desiredBackend struct {
	Addr  netip.AddrPort
	State bpf.BackendState
}

// endpointsFor collects a Service port's endpoints of one family from its
// slices, as kube-proxy's EndpointSliceCache does: matched by port name and
// protocol, one per address:port, a terminating duplicate losing to a
// running one.
func endpointsFor(sl map[string]*sliceInfo, port servicePort, ipv6 bool, node Topology) []Endpoint {
	byAddr := map[netip.AddrPort]int{}
	var out []Endpoint
	for _, s := range sl {
		if s.IPv6 != ipv6 {
			continue
		}
		for _, p := range s.Ports {
			if p.Name != port.Name || p.Proto != port.Proto {
				continue
			}
			for _, e := range s.Endpoints {
				ep := Endpoint{
					Addr:        netip.AddrPortFrom(e.Addr, p.Port),
					Local:       node.Node != "" && e.NodeName == node.Node,
					Ready:       e.Ready,
					Serving:     e.Serving,
					Terminating: e.Terminating,
					ZoneHints:   e.Zones,
					NodeHints:   e.Nodes,
				}
				if i, ok := byAddr[ep.Addr]; ok {
					if !ep.Terminating {
						out[i] = ep
					}
					continue
				}
				byAddr[ep.Addr] = len(out)
				out = append(out, ep)
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	return out
}

// desiredFrontends computes every frontend of a Service: each ClusterIP ×
// each port, with the endpoints kube-proxy would use for traffic from a
// pod on this node (Cluster scope): the Local set under
// internalTrafficPolicy Local, the Cluster set otherwise; each external
// VIP × each port, with the Cluster set, where kube-proxy sends a pod's
// traffic to an external destination of the Service whatever its policies;
// and, the same way, each of the node's addresses (nodeIPs) × each
// NodePort, in the families the Service has.
func desiredFrontends(name ServiceName, svc *serviceInfo, sl map[string]*sliceInfo, node Topology, nodeIPs []netip.Addr) []*desiredService {
	out := make([]*desiredService, 0, (len(svc.VIPs)+len(svc.ExternalVIPs))*len(svc.Ports))
	vips := append(slices.Clip(svc.VIPs), svc.ExternalVIPs...)
	firstNodeIP := len(vips)
	for _, ip := range nodeIPs {
		if slices.ContainsFunc(svc.VIPs, func(v netip.Addr) bool { return v.Is4() == ip.Is4() }) {
			vips = append(vips, ip)
		}
	}
	for i, vip := range vips {
		external, nodePort := i >= len(svc.VIPs) && i < firstNodeIP, i >= firstNodeIP
		for _, port := range svc.Ports {
			if nodePort && port.NodePort == 0 {
				continue
			}
			eps := endpointsFor(sl, port, vip.Is6(), node)
			cluster, local, _, hasAny := CategorizeEndpoints(eps, svc.Policy, node)
			use := cluster
			if svc.Policy.InternalLocal && !external && !nodePort {
				use = local
			}
			key := bpf.ServiceKey{Addr: bpf.AddrFrom(vip), Port: bpf.PortFrom(port.Port), Proto: port.Proto, Scope: bpf.ScopeCluster}
			if nodePort {
				key.Port = bpf.PortFrom(port.NodePort)
			}
			d := &desiredService{
				Key:      key,
				Service:  name,
				PortName: port.Name,
				Affinity: svc.Affinity,
				Backends: make([]desiredBackend, 0, len(use)),
				// kube-proxy: REJECT without endpoints anywhere, DROP
				// when only the internal traffic policy leaves none.
				NoLocal:  len(use) == 0 && hasAny,
				External: external,
				NodePort: nodePort,
			}
			if external {
				d.SourceRanges = rangesFor(svc, vip)
			}
			for _, ep := range use {
				st := bpf.BackendActive
				if ep.Terminating {
					st = bpf.BackendTerminating
				}
				d.Backends = append(d.Backends, desiredBackend{Addr: ep.Addr, State: st})
			}
			out = append(out, d)
		}
	}
	return out
}
