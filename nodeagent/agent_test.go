package nodeagent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnic/podnic/bpf"
)

// Address plan: ClusterIPs 10.96.0.0/16 and fd00:96::/108 as the test API
// server hands out; endpoints in TEST-NET-1 192.0.2.0/24 and 2001:db8::/32.

type svcOpt func(*v1.Service)

func service(name string, ips []string, opts ...svcOpt) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: ips[0], ClusterIPs: ips,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withPorts(ps ...v1.ServicePort) svcOpt { return func(s *v1.Service) { s.Spec.Ports = ps } }

func withAffinity(secs int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &secs}}
	}
}

type sliceEP struct {
	addr                        string
	node                        string
	ready, serving, terminating bool
}

func up(addr string) sliceEP { return sliceEP{addr: addr, ready: true, serving: true} }

func slice(svc, name string, ipv6 bool, port int32, eps ...sliceEP) *discovery.EndpointSlice {
	at := discovery.AddressTypeIPv4
	if ipv6 {
		at = discovery.AddressTypeIPv6
	}
	pn, proto := "http", v1.ProtocolTCP
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: &pn, Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		r, sv, t := e.ready, e.serving, e.terminating
		ep := discovery.Endpoint{Addresses: []string{e.addr},
			Conditions: discovery.EndpointConditions{Ready: &r, Serving: &sv, Terminating: &t}}
		if e.node != "" {
			ep.NodeName = &e.node
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	return s
}

func testAgent(t testing.TB, m ServiceMaps) *Agent {
	t.Helper()
	a, err := NewAgent(m, Options{NodeName: "node-a", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustSync(t testing.TB, a *Agent) WriteStats {
	t.Helper()
	if err := a.SyncNow(); err != nil {
		t.Fatal(err)
	}
	return a.Status().Writes
}

// programmed renders the fake maps as "frontend -> backends" lines, the
// way a packet would resolve them.
func programmed(f *fakeMaps) []string {
	var out []string
	for k, v := range f.st.Services {
		if k.Proto == 0 {
			if !slices.ContainsFunc(slices.Collect(mapKeys(f.st.Services)), func(o bpf.ServiceKey) bool { return o.Addr == k.Addr && o.Proto != 0 }) {
				out = append(out, fmt.Sprintf("%s: marker without ports", k))
			}
			continue
		}
		if _, ok := f.st.Services[bpf.ServiceKey{Addr: k.Addr}]; !ok {
			out = append(out, fmt.Sprintf("%s: no VIP marker", k))
		}
		var bs []string
		for i := uint32(1); i <= uint32(v.Count); i++ {
			b := f.st.Backends[f.st.Slots[bpf.SlotKey{ServiceID: v.ID, Slot: i}]]
			s := netip.AddrPortFrom(b.Addr.IP(), b.Port.Host()).String()
			if b.State == bpf.BackendTerminating {
				s += "(terminating)"
			}
			bs = append(bs, s)
		}
		slices.Sort(bs)
		line := fmt.Sprintf("%s -> %s", k, strings.Join(bs, " "))
		if v.Flags&bpf.ServiceAffinity != 0 {
			line += fmt.Sprintf(" affinity %ds", v.AffinitySeconds)
		}
		if v.Flags&bpf.ServiceDrop != 0 {
			line += "drop"
		}
		if v.Flags&bpf.ServiceSourceRanges != 0 {
			rs := slices.Clone(f.st.SourceRanges[v.ID])
			slices.SortFunc(rs, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
			line += fmt.Sprintf(" from %v", rs)
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return out
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func expectProgrammed(t *testing.T, f *fakeMaps, want ...string) {
	t.Helper()
	got := programmed(f)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("maps hold\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if len(f.violations) > 0 {
		t.Errorf("a packet could have seen a service with missing slots or backends:\n  %s", strings.Join(f.violations, "\n  "))
	}
	used := map[uint32]bool{}
	for _, id := range f.st.Slots {
		used[id] = true
	}
	for id := range f.st.Backends {
		if !used[id] {
			t.Errorf("backend %d is in no slot", id)
		}
	}
}

func TestNothingIsWrittenBeforeTheSourcesAreReady(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.OnService(service("web", []string{"10.96.0.10"}))
	mustSync(t, a)
	if len(f.ops) != 0 {
		t.Fatalf("wrote before ready: %q", f.ops)
	}
	a.SetReady()
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> ")
}

func TestServiceLifecycleWritesOnlyTheDifferenceInSafeOrder(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	dual := []string{"10.96.0.10", "fd00:96::10"}
	a.OnService(service("web", dual, withPorts(
		v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
		v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})))
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2"), up("192.0.2.3")))
	a.OnEndpointSlice(slice("web", "web-v6", true, 8080, up("2001:db8::1")))
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080 192.0.2.3:8080",
		"10.96.0.10:53/UDP -> ", // the slices have no "dns" port: rejected
		"[fd00:96::10]:80/TCP -> [2001:db8::1]:8080",
		"[fd00:96::10]:53/UDP -> ")

	// Scale down by one: one slot moves, the entry shrinks, one slot and
	// one backend go.
	f.ops = nil
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.3")))
	w := mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.1:8080 192.0.2.3:8080",
		"10.96.0.10:53/UDP -> ",
		"[fd00:96::10]:80/TCP -> [2001:db8::1]:8080",
		"[fd00:96::10]:53/UDP -> ")
	if w.Total() != 4 || w.Slots != 1 || w.Services != 1 || w.Removed != 2 {
		t.Errorf("scale down: %+v (%q), want 1 slot, 1 service entry, 2 removals", w, f.ops)
	}

	// Rolling update: the new pod is not ready yet, the old ones are
	// terminating but serving: ready ones only, while there are any.
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080,
		sliceEP{addr: "192.0.2.1", serving: true, terminating: true}, up("192.0.2.3"), sliceEP{addr: "192.0.2.4"}))
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.3:8080",
		"10.96.0.10:53/UDP -> ",
		"[fd00:96::10]:80/TCP -> [2001:db8::1]:8080",
		"[fd00:96::10]:53/UDP -> ")
	// No ready endpoint left: the serving, terminating ones take over.
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080,
		sliceEP{addr: "192.0.2.1", serving: true, terminating: true}, sliceEP{addr: "192.0.2.3", serving: true, terminating: true}))
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.1:8080(terminating) 192.0.2.3:8080(terminating)",
		"10.96.0.10:53/UDP -> ",
		"[fd00:96::10]:80/TCP -> [2001:db8::1]:8080",
		"[fd00:96::10]:53/UDP -> ")

	// Affinity and a single stack.
	a.OnService(service("web", dual[:1], withAffinity(600)))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080(terminating) 192.0.2.3:8080(terminating) affinity 600s")

	a.OnServiceDelete("default", "web")
	mustSync(t, a)
	expectProgrammed(t, f)
	if len(f.st.Slots)+len(f.st.Backends) != 0 {
		t.Errorf("left behind: %d slots, %d backends", len(f.st.Slots), len(f.st.Backends))
	}
}

func TestUnchangedObjectsWriteNothing(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	a.OnService(service("web", []string{"10.96.0.10"}))
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1")))
	mustSync(t, a)
	f.ops = nil
	// A→B→A on both kinds coalesces to no change at all.
	a.OnService(service("web", []string{"10.96.0.10"}, withAffinity(10)))
	a.OnService(service("web", []string{"10.96.0.10"}))
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.2")))
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1")))
	if n := a.services.Pending() + a.slices.Pending(); n != 0 {
		t.Errorf("%d changes pending after A→B→A", n)
	}
	// A resync from the informers (same objects) writes nothing either.
	a.OnService(service("web", []string{"10.96.0.10"}))
	mustSync(t, a)
	if len(f.ops) != 0 {
		t.Errorf("wrote %q for no change", f.ops)
	}
}

// An SCTP port is programmed as kube-proxy serves it: its endpoints are
// the slices' port of its name and protocol, on another port number too.
func TestSCTPPortsAreProgrammed(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	a.OnService(service("sig", []string{"10.96.0.13"}, withPorts(
		v1.ServicePort{Name: "s1ap", Port: 36412, Protocol: v1.ProtocolSCTP},
		v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolTCP})))
	es := slice("sig", "sig-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2"))
	name, proto, port := "s1ap", v1.ProtocolSCTP, int32(38412)
	es.Ports = append(es.Ports, discovery.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	a.OnEndpointSlice(es)
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.13:36412/SCTP -> 192.0.2.1:38412 192.0.2.2:38412",
		"10.96.0.13:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080")
}

func TestServicesThatAreNotPodnicsAreSkipped(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	headless := service("headless", []string{"None"})
	extName := service("ext", []string{"10.96.0.11"})
	extName.Spec.Type = v1.ServiceTypeExternalName
	other := service("other", []string{"10.96.0.12"})
	other.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
	for _, s := range []*v1.Service{headless, extName, other} {
		a.OnService(s)
	}
	mustSync(t, a)
	expectProgrammed(t, f)
	// A Service that gains the proxy-name label leaves the maps.
	a.OnService(service("mine", []string{"10.96.0.14"}))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.14:80/TCP -> ")
	mine := service("mine", []string{"10.96.0.14"})
	mine.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
	a.OnService(mine)
	mustSync(t, a)
	expectProgrammed(t, f)
}

func TestInternalTrafficPolicyLocalUsesOnlyThisNodesEndpoints(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	local := v1.ServiceInternalTrafficPolicyLocal
	s := service("web", []string{"10.96.0.10"})
	s.Spec.InternalTrafficPolicy = &local
	a.OnService(s)
	e1, e2 := up("192.0.2.1"), up("192.0.2.2")
	e1.node, e2.node = "node-a", "node-b"
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e1, e2))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080")

	// Only remote endpoints left: kube-proxy drops; with none at all it
	// rejects.
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e2))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> drop")
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> ")
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e2))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> drop")
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e1, e2))
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080")
}

// A pod's traffic to a Service's externalIPs and LoadBalancer ingress IPs
// goes straight to the Service's endpoints, as through kube-proxy, and
// with the Cluster set whatever the traffic policies; an ingress IP with
// ipMode Proxy is left to the load balancer. The datapath's external-VIP
// lookup is on exactly while some Service has one.
func TestExternalIPsAndLoadBalancerIPsServePods(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	local := v1.ServiceInternalTrafficPolicyLocal
	proxy := v1.LoadBalancerIPModeProxy
	s := service("web", []string{"10.96.0.10"})
	s.Spec.Type = v1.ServiceTypeLoadBalancer
	s.Spec.InternalTrafficPolicy = &local
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	s.Spec.ExternalIPs = []string{"203.0.113.7", "10.96.0.10", "bogus"}
	s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}, {IP: "198.51.100.10", IPMode: &proxy}, {Hostname: "lb.example"}}
	a.OnService(s)
	e1, e2 := up("192.0.2.1"), up("192.0.2.2")
	e1.node, e2.node = "node-a", "node-b"
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e1, e2))
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.1:8080",
		"198.51.100.9:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080",
		"203.0.113.7:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080")
	if !f.external {
		t.Error("the external-VIP lookup is off with external VIPs programmed")
	}

	s = s.DeepCopy()
	s.Spec.Type = v1.ServiceTypeClusterIP
	s.Spec.ExternalIPs = nil
	a.OnService(s)
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080")
	if f.external {
		t.Error("the external-VIP lookup is still on with no external VIP left")
	}
}

// A LoadBalancer's ingress IPs take new flows only from the Service's
// loadBalancerSourceRanges of their family, as kube-proxy's firewall:
// ranges trimmed and masked, repeats and non-CIDRs dropped, a /0 allowing
// every source of its family; ClusterIPs and externalIPs are not limited.
// A change writes the new ranges before it removes the old ones, and a
// restart rewrites nothing.
func TestLoadBalancerSourceRangesLimitTheIngressIPs(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	s := service("web", []string{"10.96.0.10", "fd00:96::10"})
	s.Spec.Type = v1.ServiceTypeLoadBalancer
	s.Spec.ExternalIPs = []string{"203.0.113.7"}
	s.Spec.LoadBalancerSourceRanges = []string{" 192.0.2.0/24 ", "10.1.0.5/32", "10.1.0.5/32", "bogus", "2001:db8:1::/48"}
	s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}, {IP: "2001:db8:1b::9"}}
	objs := func(a *Agent, s *v1.Service) {
		a.OnService(s)
		a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1")))
		a.OnEndpointSlice(slice("web", "web-v6", true, 8080, up("2001:db8::1")))
	}
	objs(a, s)
	mustSync(t, a)
	clusterIPs := []string{
		"10.96.0.10:80/TCP -> 192.0.2.1:8080",
		"[fd00:96::10]:80/TCP -> [2001:db8::1]:8080",
		"203.0.113.7:80/TCP -> 192.0.2.1:8080",
	}
	expectProgrammed(t, f, append(clusterIPs,
		"198.51.100.9:80/TCP -> 192.0.2.1:8080 from [10.1.0.5/32 192.0.2.0/24]",
		"[2001:db8:1b::9]:80/TCP -> [2001:db8::1]:8080 from [2001:db8:1::/48]")...)
	if info, _ := parseService(s); !slices.ContainsFunc(info.Rejected, func(r string) bool { return strings.Contains(r, `"bogus"`) }) {
		t.Errorf("the range that is no CIDR is not reported: %q", info.Rejected)
	}

	// A range replaced: the new one is written before the old one goes,
	// and nothing else is.
	s = s.DeepCopy()
	s.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24", "10.1.0.77/24", "2001:db8:1::/48"}
	f.ops = nil
	objs(a, s)
	if w := mustSync(t, a); w.Ranges != 1 || w.Removed != 1 || w.Total() != 2 {
		t.Errorf("replacing a range wrote %+v: %q", w, f.ops)
	}
	if len(f.ops) != 2 || !strings.HasPrefix(f.ops[0], "source range") || !strings.HasSuffix(f.ops[0], "10.1.0.0/24") ||
		!strings.HasPrefix(f.ops[1], "delete source range") {
		t.Errorf("ops %q, want the new range written, then the old one removed", f.ops)
	}
	expectProgrammed(t, f, append(clusterIPs,
		"198.51.100.9:80/TCP -> 192.0.2.1:8080 from [10.1.0.0/24 192.0.2.0/24]",
		"[2001:db8:1b::9]:80/TCP -> [2001:db8::1]:8080 from [2001:db8:1::/48]")...)

	// A restart on the same maps writes nothing but the removal of a
	// range no frontend has (an agent stopped between the two writes).
	f.st.SourceRanges[9999] = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	f.ops = nil
	b := testAgent(t, f)
	objs(b, s)
	b.SetReady()
	if w := mustSync(t, b); w.Total() != 1 || len(f.ops) != 1 || f.ops[0] != "delete source range 9999 10.9.0.0/16" {
		t.Errorf("restart wrote %+v: %q", w, f.ops)
	}

	// 0.0.0.0/0 lets every IPv4 source in: that frontend is no longer
	// limited, and its ranges go once its entry says so.
	s = s.DeepCopy()
	s.Spec.LoadBalancerSourceRanges = append(s.Spec.LoadBalancerSourceRanges, "0.0.0.0/0")
	objs(b, s)
	mustSync(t, b)
	expectProgrammed(t, f, append(clusterIPs,
		"198.51.100.9:80/TCP -> 192.0.2.1:8080",
		"[2001:db8:1b::9]:80/TCP -> [2001:db8::1]:8080 from [2001:db8:1::/48]")...)

	// The Service gone: no range is left behind.
	b.OnServiceDelete("default", "web")
	mustSync(t, b)
	expectProgrammed(t, f)
	if len(f.st.SourceRanges) != 0 {
		t.Errorf("source ranges left: %v", f.st.SourceRanges)
	}
}

// Source ranges parse as kube-proxy parses them: sloppily (leading zeros),
// IPv4-mapped prefixes as IPv4, masked, sorted, once each.
func TestSourceRangesParseAsKubeProxy(t *testing.T) {
	s := service("web", []string{"10.96.0.10"})
	s.Spec.LoadBalancerSourceRanges = []string{"010.2.0.0/16", "::ffff:10.3.0.7/112", "10.2.1.0/16", "bogus", "", "2001:db8::1/32"}
	got, rejected := sourceRanges(s)
	want := []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("10.3.0.0/16"), netip.MustParsePrefix("2001:db8::/32")}
	if !slices.Equal(got, want) || len(rejected) != 1 {
		t.Errorf("sourceRanges = %v, rejected %q; want %v and one rejected", got, rejected, want)
	}
}

// Slots and source ranges left by an agent stopped between two writes
// hold their ids: a new frontend gets another id, so the cleanup of the
// leftovers does not take its ranges (which would drop every source).
func TestLeftoverEntriesKeepTheirIDs(t *testing.T) {
	f := newFakeMaps()
	f.st.SourceRanges[1] = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	f.st.SourceRanges[2] = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	f.st.Slots[bpf.SlotKey{ServiceID: 3, Slot: 1}] = 77
	a := testAgent(t, f)
	a.SetReady()
	s := service("web", []string{"10.96.0.10"})
	s.Spec.Type = v1.ServiceTypeLoadBalancer
	s.Spec.LoadBalancerSourceRanges = []string{"10.1.0.0/24"}
	s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}
	a.OnService(s)
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1")))
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.96.0.10:80/TCP -> 192.0.2.1:8080",
		"198.51.100.9:80/TCP -> 192.0.2.1:8080 from [10.1.0.0/24]")
	for k, v := range f.st.Services {
		if k.Proto != 0 && v.ID <= 3 {
			t.Errorf("%s got id %d, a leftover's", k, v.ID)
		}
	}
	if len(f.st.Slots) != 2 || len(f.st.SourceRanges) != 1 {
		t.Errorf("leftovers not removed: slots %v, ranges %v", f.st.Slots, f.st.SourceRanges)
	}
}

// A pod's traffic to its node's address on a NodePort goes to the
// Service's endpoints (the Cluster set, whatever the traffic policies), as
// kube-proxy serves it to pods on the node: a frontend per node address of
// a family the Service has × NodePort. The node's addresses reach the
// datapath exactly while some frontend is a NodePort, and follow the Node.
func TestNodePortsServePodsOnTheNodesAddresses(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	local := v1.ServiceInternalTrafficPolicyLocal
	s := service("web", []string{"10.96.0.10"})
	s.Spec.Type = v1.ServiceTypeNodePort
	s.Spec.InternalTrafficPolicy = &local
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	s.Spec.Ports[0].NodePort = 30080
	a.OnService(s)
	e1, e2 := up("192.0.2.1"), up("192.0.2.2")
	e1.node, e2.node = "node-a", "node-b"
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, e1, e2))
	mustSync(t, a)
	// No node address known yet: the ClusterIP alone.
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080")
	if len(f.nodeAddrs) != 0 {
		t.Errorf("node addresses %v written without a NodePort frontend", f.nodeAddrs)
	}

	// The IPv6 address: no frontend (web is IPv4 only); a repeat and
	// v4-mapped form count once.
	a.OnNodeIPs([]netip.Addr{netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("::ffff:10.0.0.2")})
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.0.0.2:30080/TCP -> 192.0.2.1:8080 192.0.2.2:8080",
		"10.96.0.10:80/TCP -> 192.0.2.1:8080")
	if want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}; !slices.Equal(f.nodeAddrs, want) {
		t.Errorf("node addresses %v, want %v", f.nodeAddrs, want)
	}
	if f.external {
		t.Error("the external-VIP lookup is on for a NodePort")
	}
	k := bpf.ServiceKey{Addr: bpf.AddrFrom(netip.MustParseAddr("10.0.0.2")), Port: bpf.PortFrom(30080), Proto: bpf.TCP}
	if svc, port, kind, ok := a.ServiceOf(k); !ok || svc != "default/web" || port != "http" || kind != "NodePort" {
		t.Errorf("ServiceOf(%v) = %q %q %q %v", k, svc, port, kind, ok)
	}

	// The Node's address changes: the frontend moves.
	a.OnNodeIPs([]netip.Addr{netip.MustParseAddr("10.0.0.3")})
	mustSync(t, a)
	expectProgrammed(t, f,
		"10.0.0.3:30080/TCP -> 192.0.2.1:8080 192.0.2.2:8080",
		"10.96.0.10:80/TCP -> 192.0.2.1:8080")

	// A ClusterIP Service again: no NodePort frontend, no node address.
	s = s.DeepCopy()
	s.Spec.Type = v1.ServiceTypeClusterIP
	s.Spec.Ports[0].NodePort = 0
	a.OnService(s)
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080")
	if len(f.nodeAddrs) != 0 {
		t.Errorf("node addresses %v left with no NodePort frontend", f.nodeAddrs)
	}
}

func TestTopologyHintsFollowTheNodesZone(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	a.OnService(service("web", []string{"10.96.0.10"}))
	s := slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2"))
	s.Endpoints[0].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}}
	s.Endpoints[1].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-b"}}}
	a.OnEndpointSlice(s)
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080")
	a.OnNode(map[string]string{LabelZone: "zone-b"})
	mustSync(t, a)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.2:8080")
}

func TestRestartReadsTheMapsAndKeepsIDs(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	objs := func(a *Agent) {
		a.OnService(service("web", []string{"10.96.0.10", "fd00:96::10"}))
		a.OnService(service("api", []string{"10.96.0.20"}))
		a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2")))
		a.OnEndpointSlice(slice("web", "web-v6", true, 8080, up("2001:db8::1")))
		a.OnEndpointSlice(slice("api", "api-v4", false, 9090, up("192.0.2.1")))
	}
	objs(a)
	mustSync(t, a)
	before := newFakeMaps()
	before.st, _ = f.ReadServiceState()

	// A new agent on the same maps, fed the same objects: nothing to do.
	f.ops = nil
	b := testAgent(t, f)
	objs(b)
	b.SetReady()
	if w := mustSync(t, b); w.Total() != 0 {
		t.Errorf("restart wrote %+v: %q", w, f.ops)
	}
	if fmt.Sprint(before.st) != fmt.Sprint(f.st) {
		t.Errorf("restart changed the maps:\n%v\n%v", before.st, f.st)
	}

	// Changed while the agent was away: api gone, web scaled. Only the
	// difference is written; web keeps its id.
	c := testAgent(t, f)
	c.OnService(service("web", []string{"10.96.0.10", "fd00:96::10"}))
	c.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.2")))
	c.OnEndpointSlice(slice("web", "web-v6", true, 8080, up("2001:db8::1")))
	c.SetReady()
	mustSync(t, c)
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.2:8080", "[fd00:96::10]:80/TCP -> [2001:db8::1]:8080")
	k := bpf.ServiceKey{Addr: bpf.AddrFrom(netip.MustParseAddr("10.96.0.10")), Port: bpf.PortFrom(80), Proto: bpf.TCP}
	if got, want := f.st.Services[k].ID, before.st.Services[k].ID; got != want {
		t.Errorf("web's id changed across restarts: %d, was %d", got, want)
	}
}

func TestFailedWriteIsRetriedFromTheMaps(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	a.OnService(service("web", []string{"10.96.0.10"}))
	a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2")))
	f.failAfter = 3 // the second slot
	if err := a.SyncNow(); err == nil {
		t.Fatal("sync succeeded despite a failed write")
	}
	if a.Status().Error == "" {
		t.Error("status hides the failure")
	}
	mustSync(t, a)
	if !a.Status().Full {
		t.Error("the sync after a failure was not a full one")
	}
	expectProgrammed(t, f, "10.96.0.10:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080")
}

func TestTrackerCoalescesPerObject(t *testing.T) {
	tr := NewChangeTracker(func(a, b int) bool { return a == b }, func(v int) time.Time { return time.Unix(int64(v), 0) })
	tr.Set("a", 1)
	tr.Set("a", 2)
	tr.Set("b", 1)
	tr.Delete("b") // added and deleted before a sync: nothing
	got := tr.Take()
	if len(got) != 1 || got["a"].Value != 2 || len(got["a"].Triggers) != 2 {
		t.Fatalf("Take = %+v, want a=2 with 2 trigger times", got)
	}
	if tr.Set("a", 2) {
		t.Error("setting the applied value is a change")
	}
	tr.Set("a", 3)
	tr.Set("a", 2)
	if tr.Pending() != 0 {
		t.Error("A→B→A left a change")
	}
	tr.Delete("a")
	if ch := tr.Take()["a"]; ch == nil || !ch.Deleted {
		t.Errorf("delete: %+v", ch)
	}
}

func TestSlotAssignmentKeepsBackendsInPlace(t *testing.T) {
	for _, tc := range []struct{ old, want, got []uint32 }{
		{nil, []uint32{1, 2}, []uint32{1, 2}},
		{[]uint32{1, 2, 3}, []uint32{1, 3}, []uint32{1, 3}},
		{[]uint32{1, 2, 3}, []uint32{2, 3}, []uint32{3, 2}},
		{[]uint32{1, 2, 3}, []uint32{1, 2, 3, 4}, []uint32{1, 2, 3, 4}},
		{[]uint32{1, 2, 3}, []uint32{4, 2, 5}, []uint32{4, 2, 5}},
	} {
		if got := assignSlots(tc.old, tc.want); !slices.Equal(got, tc.got) {
			t.Errorf("assignSlots(%v, %v) = %v, want %v", tc.old, tc.want, got, tc.got)
		}
	}
}
