package bpf

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// A LoadBalancer ingress IP whose Service lists loadBalancerSourceRanges
// takes new flows only from those sources, as kube-proxy's firewall chain
// lets them through; others are dropped (not refused), endpoints or not.
// Flows already open keep going when the ranges change, as kube-proxy
// judges only new connections. Both paths' egress programs judge alike.
func TestLoadBalancerSourceRangesDropNewFlowsFromOtherSources(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			lb := fam.router // outside the Service CIDR
			setFamilyCIDR(t, d, fam)
			if err := d.Maps.SetExternalVIPs(true); err != nil {
				t.Fatal(err)
			}
			bits := 24
			if fam.vip.Is6() {
				bits = 64
			}
			clientNet := netip.PrefixFrom(fam.client, bits).Masked()
			elsewhere := netip.PrefixFrom(lb, bits).Masked()
			f := Frontend{VIP: lb, Port: servicePort, Proto: TCP}
			upsert := func(ranges []netip.Prefix, backends ...netip.Addr) {
				t.Helper()
				s := ServiceEntry{Frontend: f, ID: 7, SourceRanges: ranges}
				for i, b := range backends {
					s.Backends = append(s.Backends, BackendEntry{ID: 700 + uint32(i), Addr: ap(b, backendPort)})
				}
				if err := d.Maps.UpsertService(s); err != nil {
					t.Fatal(err)
				}
			}
			dropped := func(p pkt) {
				t.Helper()
				for _, prog := range []struct {
					name string
					run  func() (uint32, []byte)
				}{
					{"podnic_from_pod", func() (uint32, []byte) { return run(t, d.Programs.FromPod, p.bytes(t)) }},
					{"podnic_guard", func() (uint32, []byte) { return run(t, d.Programs.Guard, p.bytes(t)) }},
				} {
					before, err := d.Maps.Verdicts(DirFromPod, DropSourceRange)
					if err != nil {
						t.Fatal(err)
					}
					if ret, _ := prog.run(); ret != actShot {
						t.Errorf("%s: %s from %s: verdict %d, want a drop", prog.name, p.flags, p.src, ret)
					}
					if after, _ := d.Maps.Verdicts(DirFromPod, DropSourceRange); after != before+1 {
						t.Errorf("%s: drop-source-range counted %d times, want once", prog.name, after-before)
					}
				}
			}

			client, vip, backend := ap(fam.client, clientPort), ap(lb, servicePort), ap(fam.backends[0], backendPort)
			syn := pkt{src: client, dst: vip, proto: TCP, flags: "S"}
			upsert([]netip.Prefix{elsewhere}, fam.backends[0])
			dropped(syn)
			if got := sourceRangesOf(t, d, 7); !slices.Equal(got, []netip.Prefix{elsewhere}) {
				t.Errorf("source ranges of service 7: %v, want %v", got, []netip.Prefix{elsewhere})
			}

			// The client's range added: translated, both ways.
			upsert([]netip.Prefix{elsewhere, netip.PrefixFrom(fam.client, bits)}, fam.backends[0])
			expectTranslatedBothWays(t, d, syn, backend)
			list, err := d.Maps.ListServices()
			if err != nil || len(list) != 1 || !slices.Equal(list[0].SourceRanges, sortedPrefixes(elsewhere, clientNet)) {
				t.Errorf("ListServices() = %+v, %v; want the two ranges", list, err)
			}

			// The client's range gone: the open flow goes on, a new one
			// from the same client is dropped.
			upsert([]netip.Prefix{elsewhere}, fam.backends[0])
			ack := syn
			ack.flags = "A"
			if got := dnatTarget(t, d, ack); got != backend {
				t.Errorf("established flow went to %s after its range left, want %s", got, backend)
			}
			dropped(syn.with(ap(fam.client, clientPort+1), vip))

			// Without endpoints: dropped when not allowed (the firewall
			// comes first), refused when allowed.
			upsert([]netip.Prefix{elsewhere})
			dropped(syn.with(ap(fam.client, clientPort+2), vip))
			upsert([]netip.Prefix{clientNet})
			other := syn.with(ap(fam.client, clientPort+3), vip)
			if ret, got := run(t, d.Programs.FromPod, other.bytes(t)); ret != actRedirect {
				t.Errorf("allowed SYN to a Service without endpoints: verdict %d, want a RST", ret)
			} else {
				expectPacket(t, "RST", got, rstFor(t, other))
			}

			// No ranges: any source again, and the trie holds nothing
			// of the frontend.
			upsert(nil, fam.backends[0])
			if got := dnatTarget(t, d, syn.with(ap(fam.client, clientPort+4), vip)); got != backend {
				t.Errorf("without ranges: SYN went to %s, want %s", got, backend)
			}
			if got := sourceRangesOf(t, d, 7); len(got) != 0 {
				t.Errorf("ranges left in the trie without ranges: %v", got)
			}

			// Deleting the frontend removes its ranges.
			upsert([]netip.Prefix{clientNet}, fam.backends[0])
			if err := d.Maps.DeleteService(f); err != nil {
				t.Fatal(err)
			}
			if got := sourceRangesOf(t, d, 7); len(got) != 0 {
				t.Errorf("ranges left after DeleteService: %v", got)
			}
		})
	}
}

// A source range of another family than the VIP is refused and writes
// nothing.
func TestSourceRangeOfAnotherFamilyIsRefused(t *testing.T) {
	d := loadTest(t)
	f := Frontend{VIP: families[0].router, Port: servicePort, Proto: TCP}
	err := d.Maps.UpsertService(ServiceEntry{Frontend: f, ID: 3, SourceRanges: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}})
	if !errors.Is(err, ErrInvalidService) {
		t.Fatalf("UpsertService with an IPv6 range on an IPv4 VIP: %v, want ErrInvalidService", err)
	}
	if list, _ := d.Maps.ListServices(); len(list) != 0 {
		t.Errorf("the refused frontend was written: %+v", list)
	}
	if got := sourceRangesOf(t, d, 3); len(got) != 0 {
		t.Errorf("the refused ranges were written: %v", got)
	}
}

func sourceRangesOf(t *testing.T, d *Datapath, id uint32) []netip.Prefix {
	t.Helper()
	st, err := d.Maps.ReadServiceState()
	if err != nil {
		t.Fatal(err)
	}
	return st.SourceRanges[id]
}

func sortedPrefixes(ps ...netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefix)
	return ps
}

// Live traffic from a pod with socket-level balancing: connect() to a
// LoadBalancer IP with source ranges is balanced at the socket when the
// pod's address is in them; otherwise the socket leaves it and tc drops
// it, so the connection times out as through kube-proxy. TCP and UDP.
func TestSocketLBHonoursSourceRanges(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)
	if err := d.Maps.SetExternalVIPs(true); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name             string
		lb, backend      netip.Addr
		allowed, notHere netip.Prefix
	}{
		{"v4", netip.MustParseAddr("203.0.113.80"), server.IPv4, simClientV4, netip.MustParsePrefix("198.51.100.0/24")},
		{"v6", netip.MustParseAddr("2001:db8:ff::80"), server.IPv6, simClientV6, netip.MustParsePrefix("2001:db8:1::/48")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vip := netip.AddrPortFrom(tc.lb, simServicePort)
			upsert := func(r netip.Prefix) {
				t.Helper()
				for j, proto := range []Proto{TCP, UDP} {
					id := uint32(200 + 10*i + j)
					err := d.Maps.UpsertService(ServiceEntry{
						Frontend:     Frontend{VIP: tc.lb, Port: simServicePort, Proto: proto},
						ID:           id,
						Backends:     []BackendEntry{{ID: id, Addr: netip.AddrPortFrom(tc.backend, simBackendPort)}},
						SourceRanges: []netip.Prefix{r},
					})
					if err != nil {
						t.Fatal(err)
					}
				}
			}

			upsert(tc.allowed)
			delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), verdict(DirFromPod, ReasonDNATNew),
				verdict(DirFromPod, DropSourceRange))
			body, err := client.HTTPGet("http://"+vip.String()+"/", simTimeout)
			if err != nil {
				t.Fatalf("allowed: %v (verdicts: %v)", err, delta())
			}
			if name, _ := answeredBy(body); name != "server" {
				t.Errorf("allowed: answer %q, want the server's", body)
			}
			if got, err := client.UDPEcho(vip, "ping", simTimeout); err != nil || got != "server ping" {
				t.Errorf("allowed: UDP echo %q, %v", got, err)
			}
			if got := delta(); got[0] != 2 || got[1] != 0 || got[2] != 0 {
				t.Errorf("allowed: counted socket-lb %d, tc dnat-new %d, drop-source-range %d; want 2, 0, 0", got[0], got[1], got[2])
			}

			upsert(tc.notHere)
			delta = verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), verdict(DirFromPod, ReasonDNATNew),
				verdict(DirFromPod, DropSourceRange))
			if c, err := client.Dial("tcp", vip, 300*time.Millisecond); err == nil {
				c.Close()
				t.Errorf("not allowed: TCP connected")
			}
			if got, err := client.UDPEcho(vip, "ping", 300*time.Millisecond); err == nil {
				t.Errorf("not allowed: UDP echo answered %q", got)
			}
			if got := delta(); got[0] != 0 || got[1] != 0 || got[2] < 2 {
				t.Errorf("not allowed: counted socket-lb %d, tc dnat-new %d, drop-source-range %d; want 0, 0, at least 2", got[0], got[1], got[2])
			}
		})
	}
}
