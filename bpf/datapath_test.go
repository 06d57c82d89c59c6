package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

const (
	clientPort  = 40000
	servicePort = 80
	backendPort = 8080
)

var protos = []Proto{TCP, UDP, SCTP}

// firstFlags is the TCP flags of a flow's first packet (an SCTP INIT).
func firstFlags(proto Proto) string {
	if proto != UDP {
		return "S"
	}
	return ""
}

// forEach runs f for every address family and protocol.
func forEach(t *testing.T, f func(t *testing.T, fam family, proto Proto)) {
	for _, fam := range families {
		for _, proto := range protos {
			t.Run(fam.name+"/"+proto.String(), func(t *testing.T) { f(t, fam, proto) })
		}
	}
}

func TestServiceFlowIsTranslatedBothWays(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, proto Proto) {
		d := loadTest(t)
		f := Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}
		service(t, d, f, 1, backendPort, fam.backends[0])
		client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)

		// The first packet chooses the backend and is DNATed to it.
		out := pkt{src: client, dst: vip, proto: proto, flags: firstFlags(proto), seq: 1000, payload: []byte("hello")}
		before := counted(t, d, DirFromPod, ReasonDNATNew)
		ret, got := run(t, d.Programs.FromPod, out.bytes(t))
		if ret != actUnspec {
			t.Fatalf("verdict %d, want TC_ACT_UNSPEC", ret)
		}
		expectPacket(t, "first packet", got, out.with(client, backend).bytes(t))
		expectCounted(t, d, DirFromPod, ReasonDNATNew, before)

		// The reply is translated back to the Service.
		reply := pkt{src: backend, dst: client, proto: proto, flags: "SA", seq: 5000, ack: 1001, payload: []byte("world"), srcMAC: gwMAC, dstMAC: podMAC}
		if proto == UDP {
			reply.flags = ""
		}
		before = counted(t, d, DirToPod, ReasonRevNAT)
		ret, got = run(t, d.Programs.ToPod, reply.bytes(t))
		if ret != actUnspec {
			t.Fatalf("reply verdict %d, want TC_ACT_UNSPEC", ret)
		}
		expectPacket(t, "reply", got, reply.with(vip, client).bytes(t))
		expectCounted(t, d, DirToPod, ReasonRevNAT, before)

		// Later packets of the flow follow conntrack.
		next := out
		next.flags, next.seq, next.ack = "A", 1001, 5001
		if proto == UDP {
			next.flags = ""
		}
		before = counted(t, d, DirFromPod, ReasonDNATCT)
		_, got = run(t, d.Programs.FromPod, next.bytes(t))
		expectPacket(t, "established packet", got, next.with(client, backend).bytes(t))
		expectCounted(t, d, DirFromPod, ReasonDNATCT, before)
	})
}

func TestTrafficNotForAServicePassesUntouched(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, proto Proto) {
		d := loadTest(t)
		service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort, fam.backends[0])
		in := pkt{src: ap(fam.client, clientPort), dst: ap(fam.router, servicePort), proto: proto, flags: firstFlags(proto)}.bytes(t)
		before := counted(t, d, DirFromPod, ReasonPass)
		ret, got := run(t, d.Programs.FromPod, in)
		if ret != actUnspec {
			t.Errorf("egress verdict %d, want TC_ACT_UNSPEC so later programs run", ret)
		}
		expectPacket(t, "egress", got, in)
		expectNotCounted(t, d, DirFromPod, ReasonPass, before)

		in = pkt{src: ap(fam.router, servicePort), dst: ap(fam.client, clientPort), proto: proto, flags: "SA"}.bytes(t)
		ret, got = run(t, d.Programs.ToPod, in)
		if ret != actUnspec {
			t.Errorf("ingress verdict %d, want TC_ACT_UNSPEC", ret)
		}
		expectPacket(t, "ingress", got, in)
	})
}

func TestKnownVIPOnUnknownPortIsDropped(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, proto Proto) {
		d := loadTest(t)
		service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort, fam.backends[0])
		before := counted(t, d, DirFromPod, DropUnknownPort)
		ret, _ := run(t, d.Programs.FromPod, pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, 81), proto: proto, flags: firstFlags(proto)}.bytes(t))
		if ret != actShot {
			t.Errorf("verdict %d, want TC_ACT_SHOT", ret)
		}
		expectCounted(t, d, DirFromPod, DropUnknownPort, before)
	})
}

// A later fragment whose first never passed (TestFragmentedDatagrams...)
// and other protocols than TCP and UDP to a VIP are dropped.
func TestOrphanFragmentsAndOtherProtocolsToAVIPAreDropped(t *testing.T) {
	d := loadTest(t)
	fam := families[0]
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: UDP}, 1, backendPort, fam.backends[0])
	frag := fragments(t, ap(fam.client, clientPort), ap(fam.vip, servicePort), make([]byte, 64), 7, 32)[1]
	before := counted(t, d, DirFromPod, DropFragment)
	if ret, _ := run(t, d.Programs.FromPod, frag); ret != actShot {
		t.Errorf("fragment verdict %d, want TC_ACT_SHOT", ret)
	}
	expectCounted(t, d, DirFromPod, DropFragment, before)

	echo := serialize(t,
		&layers.Ethernet{SrcMAC: podMAC, DstMAC: gwMAC, EthernetType: layers.EthernetTypeIPv4},
		ipLayer(fam.client, fam.vip, layers.IPProtocolICMPv4, false),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1})
	before = counted(t, d, DirFromPod, DropProto)
	if ret, _ := run(t, d.Programs.FromPod, echo); ret != actShot {
		t.Errorf("ICMP echo to VIP verdict %d, want TC_ACT_SHOT", ret)
	}
	expectCounted(t, d, DirFromPod, DropProto, before)

	// The same echo to an address that is no VIP passes.
	other := serialize(t,
		&layers.Ethernet{SrcMAC: podMAC, DstMAC: gwMAC, EthernetType: layers.EthernetTypeIPv4},
		ipLayer(fam.client, fam.router, layers.IPProtocolICMPv4, false),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1})
	if ret, got := run(t, d.Programs.FromPod, other); ret != actUnspec {
		t.Errorf("ICMP echo elsewhere verdict %d, want TC_ACT_UNSPEC", ret)
	} else {
		expectPacket(t, "ICMP echo elsewhere", got, other)
	}
}

// rstFor builds the RST podnic must answer a TCP segment with.
func rstFor(t *testing.T, seg pkt) []byte {
	t.Helper()
	rst := pkt{src: seg.dst, dst: seg.src, proto: TCP, srcMAC: gwMAC, dstMAC: podMAC}
	if seg.flags == "A" || seg.flags == "PA" {
		rst.flags, rst.seq = "R", seg.ack
	} else {
		rst.flags, rst.ack = "RA", seg.seq+uint32(len(seg.payload))+1
	}
	b := rst.bytes(t)
	// podnic's RST carries a zero window, no options.
	hdr := 14 + 20
	if seg.src.Addr().Is6() {
		hdr = 14 + 40
	}
	b[hdr+14], b[hdr+15] = 0, 0
	return fixTCPChecksum(t, b, hdr)
}

func fixTCPChecksum(t *testing.T, b []byte, l4 int) []byte {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	nl := p.NetworkLayer()
	if err := tcp.SetNetworkLayerForChecksum(nl); err != nil {
		t.Fatal(err)
	}
	var ip gopacket.SerializableLayer
	switch l := nl.(type) {
	case *layers.IPv4:
		ip = l
	case *layers.IPv6:
		ip = l
	}
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	// gopacket pads short frames to 60 bytes; podnic's RST is not padded.
	return serialize(t, eth, ip, tcp)[:l4+20]
}

// unreachableFor builds the ICMP port unreachable podnic must answer a UDP
// datagram with: from the VIP, quoting the IP header and 8 bytes.
func unreachableFor(t *testing.T, dgram []byte, fam family) []byte {
	t.Helper()
	if fam.client.Is4() {
		quote := dgram[14 : 14+20+8]
		return serialize(t,
			&layers.Ethernet{SrcMAC: gwMAC, DstMAC: podMAC, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: fam.vip.AsSlice(), DstIP: fam.client.AsSlice()},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
			gopacket.Payload(quote))
	}
	quote := append([]byte{0, 0, 0, 0}, dgram[14:14+40+8]...)
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: fam.vip.AsSlice(), DstIP: fam.client.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: gwMAC, DstMAC: podMAC, EthernetType: layers.EthernetTypeIPv6},
		ip, icmp, gopacket.Payload(quote))
}

func TestServiceWithoutBackendsIsRejected(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name+"/TCP-SYN", func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort)
			syn := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S", seq: 777}
			before := counted(t, d, DirFromPod, ReasonReject)
			ret, got := run(t, d.Programs.FromPod, syn.bytes(t))
			if ret != actRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT back into the pod", ret)
			}
			expectPacket(t, "RST", got, rstFor(t, syn))
			expectCounted(t, d, DirFromPod, ReasonReject, before)
		})
		t.Run(fam.name+"/TCP-ACK", func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort)
			seg := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "PA", seq: 10, ack: 99, payload: []byte("GET /")}
			ret, got := run(t, d.Programs.FromPod, seg.bytes(t))
			if ret != actRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT", ret)
			}
			expectPacket(t, "RST", got, rstFor(t, seg))
		})
		// UDP: an ICMP port unreachable (SCTP gets an ABORT:
		// TestSCTPToAServiceWithoutEndpointsIsAborted).
		for _, proto := range []Proto{UDP} {
			t.Run(fam.name+"/"+proto.String(), func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort)
				dgram := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: proto, flags: firstFlags(proto), payload: []byte("query payload longer than eight bytes")}.bytes(t)
				ret, got := run(t, d.Programs.FromPod, dgram)
				if ret != actRedirect {
					t.Errorf("verdict %d, want TC_ACT_REDIRECT", ret)
				}
				expectPacket(t, "ICMP port unreachable", got, unreachableFor(t, dgram, fam))
			})
		}
	}
}

// An IPv4 packet with IP options to a Service without endpoints is refused
// as the packet without them: the RST and the ABORT answer its L4 header
// wherever it starts, and the ICMP quote leaves the options out, so that
// the client's stack finds the socket by its ports.
func TestRejectBehindIPv4Options(t *testing.T) {
	fam := families[0]
	for _, proto := range protos {
		t.Run(proto.String(), func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort)
			plain := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: proto, flags: firstFlags(proto), seq: 7, payload: []byte("query payload longer than eight bytes")}
			ret, got := run(t, d.Programs.FromPod, withIPv4Options(plain.bytes(t)))
			if ret != actRedirect {
				t.Fatalf("verdict %d, want TC_ACT_REDIRECT back into the pod", ret)
			}
			expectRefusal(t, got, plain, fam)
		})
	}
}

// expectRefusal checks that got is podnic's refusal of sent, built as for
// sent without IP options or extension headers: a TCP RST, an SCTP ABORT,
// or an ICMP port unreachable.
func expectRefusal(t *testing.T, got []byte, sent pkt, fam family) {
	t.Helper()
	switch sent.proto {
	case TCP:
		expectPacket(t, "RST", got, rstFor(t, sent))
	case SCTP:
		expectPacket(t, "ABORT", got, abortFor(t, sent))
	default:
		expectPacket(t, "ICMP port unreachable", got, unreachableFor(t, sent.bytes(t), fam))
	}
}

// internalTrafficPolicy Local with endpoints on other nodes only: kube-proxy
// drops new flows (it rejects only when there are no endpoints at all).
// The entry says so; ListServices reads it back; and an entry that claims
// both backends and no local endpoints is refused.
func TestServiceWithNoLocalEndpointsDropsNewFlows(t *testing.T) {
	for _, fam := range families {
		for _, proto := range protos {
			t.Run(fam.name+"/"+proto.String(), func(t *testing.T) {
				d := loadTest(t)
				f := Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}
				if err := d.Maps.UpsertService(ServiceEntry{Frontend: f, ID: 1, NoLocal: true}); err != nil {
					t.Fatal(err)
				}
				p := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: proto, payload: []byte("hello")}
				if proto == TCP {
					p.flags, p.seq = "S", 777
				}
				before := counted(t, d, DirFromPod, DropNoLocal)
				if ret, got := run(t, d.Programs.FromPod, p.bytes(t)); ret != actShot {
					t.Errorf("verdict %d (packet %x), want TC_ACT_SHOT", ret, got)
				}
				expectCounted(t, d, DirFromPod, DropNoLocal, before)

				svcs, err := d.Maps.ListServices()
				if err != nil {
					t.Fatal(err)
				}
				if len(svcs) != 1 || !svcs[0].NoLocal {
					t.Errorf("ListServices = %+v, want one entry with NoLocal", svcs)
				}
				bad := ServiceEntry{Frontend: f, ID: 1, NoLocal: true, Backends: []BackendEntry{{ID: 1, Addr: ap(fam.backends[0], backendPort)}}}
				if err := d.Maps.UpsertService(bad); !errors.Is(err, ErrInvalidService) {
					t.Errorf("NoLocal with backends: got %v, want ErrInvalidService", err)
				}
			})
		}
	}
}

func TestSelfAccessIsRedirectedToLoopback(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.client)
			client, vip, self := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.client, backendPort)

			syn := pkt{src: client, dst: vip, proto: TCP, flags: "S", seq: 1}
			before := counted(t, d, DirFromPod, ReasonSelf)
			ret, got := run(t, d.Programs.FromPod, syn.bytes(t))
			if ret != actRedirect {
				t.Fatalf("verdict %d, want TC_ACT_REDIRECT to lo", ret)
			}
			want := syn.with(client, self)
			want.dstMAC = make([]byte, 6) // lo drops frames not for it
			expectPacket(t, "SYN to self", got, want.bytes(t))
			expectCounted(t, d, DirFromPod, ReasonSelf, before)

			// The pod's own stack answers through lo; lo egress translates.
			synack := pkt{src: self, dst: client, proto: TCP, flags: "SA", seq: 9, ack: 2, srcMAC: make([]byte, 6), dstMAC: make([]byte, 6)}
			before = counted(t, d, DirLo, ReasonRevNAT)
			ret, got = run(t, d.Programs.LoOut, synack.bytes(t))
			if ret != actUnspec {
				t.Fatalf("lo verdict %d, want TC_ACT_UNSPEC", ret)
			}
			expectPacket(t, "SYN-ACK on lo", got, synack.with(vip, client).bytes(t))
			expectCounted(t, d, DirLo, ReasonRevNAT, before)

			// The client's ACK follows conntrack back to lo.
			ack := pkt{src: client, dst: vip, proto: TCP, flags: "A", seq: 2, ack: 10}
			before = counted(t, d, DirFromPod, ReasonSelf)
			if ret, _ := run(t, d.Programs.FromPod, ack.bytes(t)); ret != actRedirect {
				t.Errorf("ACK verdict %d, want TC_ACT_REDIRECT", ret)
			}
			expectCounted(t, d, DirFromPod, ReasonSelf, before)
		})
	}
}

// selfAccessAlive opens a tc-translated self-access flow of the pod
// (fam.client reaching itself through fam.vip), which lights lo's slot of
// podnic_live_v1.
func selfAccessAlive(t testing.TB, d *Datapath, fam family) {
	t.Helper()
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.client)
	syn := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S", seq: 1}
	if ret, _ := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actRedirect {
		t.Fatalf("self-access SYN: verdict %d, want TC_ACT_REDIRECT to lo", ret)
	}
}

// Localhost traffic on lo (127.0.0.0/8, ::1) passes untouched while a
// self-access flow is alive, and so does a packet between the pod's own
// addresses that no flow owns; the flow's own reply is still translated.
func TestLoopbackTrafficPassesWhileSelfAccessIsAlive(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			selfAccessAlive(t, d, fam)
			zero := make([]byte, 6)
			for name, p := range map[string]pkt{
				"localhost":   {src: ap(fam.loopback, clientPort), dst: ap(fam.loopback, backendPort), proto: TCP, flags: "A"},
				"pod address": {src: ap(fam.client, clientPort+1), dst: ap(fam.client, backendPort), proto: TCP, flags: "A"},
			} {
				p.srcMAC, p.dstMAC = zero, zero
				if ret, got := run(t, d.Programs.LoOut, p.bytes(t)); ret != actUnspec || !equalPacket(got, p.bytes(t)) {
					t.Errorf("%s on lo changed (verdict %d)", name, ret)
				}
			}
			synack := pkt{src: ap(fam.client, backendPort), dst: ap(fam.client, clientPort), proto: TCP, flags: "SA", seq: 9, ack: 2, srcMAC: zero, dstMAC: zero}
			if ret, got := run(t, d.Programs.LoOut, synack.bytes(t)); ret != actUnspec || !equalPacket(got, synack.with(ap(fam.vip, servicePort), synack.dst).bytes(t)) {
				t.Errorf("the self-access reply on lo was not translated (verdict %d)", ret)
			}
		})
	}
}

// dnatTarget runs one packet of a flow and returns the backend it went to.
func dnatTarget(t *testing.T, d *Datapath, p pkt) netip.AddrPort {
	t.Helper()
	ret, out := run(t, d.Programs.FromPod, p.bytes(t))
	if ret != actUnspec {
		t.Fatalf("verdict %d, want TC_ACT_UNSPEC", ret)
	}
	pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	var dst netip.Addr
	switch ip := pk.NetworkLayer().(type) {
	case *layers.IPv4:
		dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
	case *layers.IPv6:
		dst, _ = netip.AddrFromSlice(ip.DstIP)
	}
	var port uint16
	switch l := pk.TransportLayer().(type) {
	case *layers.TCP:
		port = uint16(l.DstPort)
	case *layers.UDP:
		port = uint16(l.DstPort)
	}
	if l, ok := pk.Layer(layers.LayerTypeSCTP).(*layers.SCTP); ok {
		port = uint16(l.DstPort)
	}
	return ap(dst, port)
}

// expectTranslatedBothWays checks that syn (a TCP SYN or an SCTP INIT),
// from the pod to a frontend, goes to backend, that the backend's answer
// (SYN-ACK, INIT ACK) comes back from the frontend, and that the flow's
// next packet (ACK, DATA) goes to backend too.
func expectTranslatedBothWays(t *testing.T, d *Datapath, syn pkt, backend netip.AddrPort) {
	t.Helper()
	if got := dnatTarget(t, d, syn); got != backend {
		t.Fatalf("SYN to %s went to %s, want %s", syn.dst, got, backend)
	}
	reply := pkt{src: backend, dst: syn.src, proto: syn.proto, flags: "SA"}
	ret, got := run(t, d.Programs.ToPod, reply.bytes(t))
	if want := reply.with(syn.dst, syn.src).bytes(t); ret != actUnspec || !equalPacket(got, want) {
		t.Errorf("reply from %s not translated back to %s (verdict %d)", backend, syn.dst, ret)
	}
	// The flow's next segment is no SYN: the egress fast path, which
	// passes such segments to addresses that cannot be a Service's, must
	// not take it.
	ack := syn
	ack.flags = "A"
	if got := dnatTarget(t, d, ack); got != backend {
		t.Errorf("ACK to %s went to %s, want %s", syn.dst, got, backend)
	}
}

func TestEstablishedFlowKeepsItsBackendWhenBackendsChange(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, proto Proto) {
		d := loadTest(t)
		f := Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}
		service(t, d, f, 1, backendPort, fam.backends[0])
		first := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: proto, flags: firstFlags(proto)}
		if got := dnatTarget(t, d, first); got != ap(fam.backends[0], backendPort) {
			t.Fatalf("first packet went to %s", got)
		}
		service(t, d, f, 1, backendPort, fam.backends[1])

		next := first
		if proto == TCP {
			next.flags = "A"
		}
		if got := dnatTarget(t, d, next); got != ap(fam.backends[0], backendPort) {
			t.Errorf("established flow moved to %s after the backend set changed", got)
		}
		// A retransmitted SYN of a live flow keeps its backend too.
		if got := dnatTarget(t, d, first); got != ap(fam.backends[0], backendPort) {
			t.Errorf("retransmitted first packet moved to %s", got)
		}
		other := first.with(ap(fam.client, clientPort+1), first.dst)
		if got := dnatTarget(t, d, other); got != ap(fam.backends[1], backendPort) {
			t.Errorf("new flow went to %s, want the new backend", got)
		}
	})
}

// A new connection (SYN) or association (SCTP INIT) on the client port of
// a closed one chooses a backend anew. SCTP closes with ABORT (flags "R")
// or SHUTDOWN COMPLETE ("FA"), the chunks conntrack reads as RST and FIN.
func TestReusedClientPortAfterCloseChoosesAnew(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []Proto{TCP, SCTP} {
			for _, closer := range []string{"client-FIN", "client-RST", "backend-RST"} {
				t.Run(fam.name+"/"+proto.String()+"/"+closer, func(t *testing.T) {
					d := loadTest(t)
					f := Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}
					service(t, d, f, 1, backendPort, fam.backends[0])
					client, vip := ap(fam.client, clientPort), ap(fam.vip, servicePort)
					syn := pkt{src: client, dst: vip, proto: proto, flags: "S"}
					dnatTarget(t, d, syn)
					dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "A"})
					switch closer {
					case "client-FIN":
						dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "FA"})
					case "client-RST":
						dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "R"})
					case "backend-RST":
						rst := pkt{src: ap(fam.backends[0], backendPort), dst: client, proto: proto, flags: "R"}
						if _, got := run(t, d.Programs.ToPod, rst.bytes(t)); !equalPacket(got, rst.with(vip, client).bytes(t)) {
							t.Fatalf("backend RST not reverse-translated")
						}
					}
					service(t, d, f, 1, backendPort, fam.backends[1])
					if got := dnatTarget(t, d, syn); got != ap(fam.backends[1], backendPort) {
						t.Errorf("SYN on a closed flow's port went to %s, want a new choice", got)
					}
				})
			}
		}
	}
}

func equalPacket(a, b []byte) bool { return string(a) == string(b) }

// A connection balanced at the socket reuses the client port of a flow tc
// translated to the same backend, which is still closing: its SYN, sent
// straight to the backend, makes the egress program forget the old flow's
// reply entry, so the new connection's SYN-ACK reaches the pod as the
// backend sent it, not rewritten to the old Service.
func TestDirectSYNForgetsAClosingFlowsReplyEntry(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []Proto{TCP, SCTP} { // SCTP: INIT for SYN
			t.Run(fam.name+"/"+proto.String(), func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort, fam.backends[0])
				client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
				dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "S"})
				dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "A"})
				dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: "FA"})

				synAck := pkt{src: backend, dst: client, proto: proto, flags: "SA"}
				if _, got := run(t, d.Programs.ToPod, synAck.bytes(t)); equalPacket(got, synAck.bytes(t)) {
					t.Fatal("the closing flow's reply entry did not translate: the test does not test")
				}
				direct := pkt{src: client, dst: backend, proto: proto, flags: "S"}
				if ret, got := run(t, d.Programs.FromPod, direct.bytes(t)); ret != actUnspec || !equalPacket(got, direct.bytes(t)) {
					t.Fatalf("direct SYN changed (verdict %d)", ret)
				}
				if ret, got := run(t, d.Programs.ToPod, synAck.bytes(t)); ret != actUnspec || !equalPacket(got, synAck.bytes(t)) {
					t.Errorf("the new connection's SYN-ACK was rewritten (verdict %d)", ret)
				}
			})
		}
	}
}

// An SCTP INIT on the entry of an established association starts a new
// one (the old one ended unseen): it chooses a backend anew. A
// retransmitted INIT, before the association is up, keeps its backend
// while the backend is there, and chooses anew once it left.
func TestSCTPInitChoosesAnewUnlessRetransmitted(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: SCTP}
			service(t, d, f, 1, backendPort, fam.backends[0])
			client, vip := ap(fam.client, clientPort), ap(fam.vip, servicePort)
			b0, b1 := ap(fam.backends[0], backendPort), ap(fam.backends[1], backendPort)
			init := pkt{src: client, dst: vip, proto: SCTP, flags: "S"}
			if got := dnatTarget(t, d, init); got != b0 {
				t.Fatalf("INIT went to %s, want %s", got, b0)
			}
			// The backend set grows: a retransmitted INIT stays.
			service(t, d, f, 1, backendPort, fam.backends[0], fam.backends[1])
			for range 8 {
				if got := dnatTarget(t, d, init); got != b0 {
					t.Fatalf("retransmitted INIT went to %s, want %s still", got, b0)
				}
			}
			// Its backend leaves: the next retransmission goes elsewhere.
			if err := d.Maps.UpsertService(ServiceEntry{Frontend: f, ID: 1, Backends: []BackendEntry{{ID: 101, Addr: b1}}}); err != nil {
				t.Fatal(err)
			}
			if err := d.Maps.DeleteBackend(100); err != nil {
				t.Fatal(err)
			}
			if got := dnatTarget(t, d, init); got != b1 {
				t.Fatalf("INIT retransmitted after its backend left went to %s, want %s", got, b1)
			}
			// Established on b1; the Service moves back to b0 only; a new
			// INIT from the same port goes there, DATA stays.
			dnatTarget(t, d, pkt{src: client, dst: vip, proto: SCTP, flags: "A"})
			service(t, d, f, 1, backendPort, fam.backends[0])
			if got := dnatTarget(t, d, pkt{src: client, dst: vip, proto: SCTP, flags: "A"}); got != b1 {
				t.Fatalf("DATA of the established association went to %s, want %s", got, b1)
			}
			if got := dnatTarget(t, d, init); got != b0 {
				t.Errorf("a new INIT on the established entry went to %s, want a new choice (%s)", got, b0)
			}
		})
	}
}

// A UDP flow tc translated has no end tc can see: its reply entry lives on
// after the socket closed. A datagram a new socket sends straight to the
// backend from the same port (balanced at the socket, or to the pod's
// address) makes the egress program forget that entry, so the answer
// reaches the socket as the backend sent it.
func TestDirectDatagramForgetsAnEarlierFlowsReplyEntry(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: UDP}, 1, backendPort, fam.backends[0])
			client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
			dnatTarget(t, d, pkt{src: client, dst: vip, proto: UDP})

			answer := pkt{src: backend, dst: client, proto: UDP}
			if _, got := run(t, d.Programs.ToPod, answer.bytes(t)); equalPacket(got, answer.bytes(t)) {
				t.Fatal("the earlier flow's reply entry did not translate: the test does not test")
			}
			direct := pkt{src: client, dst: backend, proto: UDP}
			if ret, got := run(t, d.Programs.FromPod, direct.bytes(t)); ret != actUnspec || !equalPacket(got, direct.bytes(t)) {
				t.Fatalf("direct datagram changed (verdict %d)", ret)
			}
			if ret, got := run(t, d.Programs.ToPod, answer.bytes(t)); ret != actUnspec || !equalPacket(got, answer.bytes(t)) {
				t.Errorf("the new socket's answer was rewritten (verdict %d)", ret)
			}
		})
	}
}

// Once no tc-translated TCP flow can be alive any more, a SYN straight to
// a backend leaves conntrack alone: the forget above costs a map update,
// which a pod whose connections are all balanced at the socket should not
// pay for a flow long gone.
func TestDirectSYNLeavesConntrackAloneOnceNoFlowCanBeAlive(t *testing.T) {
	fam := families[0]
	d := loadTest(t)
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
	client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
	dnatTarget(t, d, pkt{src: client, dst: vip, proto: TCP, flags: "S"})
	reply := CTKey{Src: AddrFrom(fam.backends[0]), Dst: AddrFrom(fam.client), Sport: PortFrom(backendPort), Dport: PortFrom(clientPort), Proto: TCP, Dir: CTReply}
	var e CTEntry
	if err := d.Maps.Conntrack.Lookup(&reply, &e); err != nil {
		t.Fatalf("no reply entry for the translated flow: %v", err)
	}
	// Every slot says the last flow expired a moment after boot.
	for slot := uint32(0); slot < d.Maps.Live.MaxEntries(); slot++ {
		if err := d.Maps.Live.Put(slot, podnicPnLive{Until: [2]uint64{1, 1}}); err != nil {
			t.Fatal(err)
		}
	}
	direct := pkt{src: client, dst: backend, proto: TCP, flags: "S"}
	if ret, got := run(t, d.Programs.FromPod, direct.bytes(t)); ret != actUnspec || !equalPacket(got, direct.bytes(t)) {
		t.Fatalf("direct SYN changed (verdict %d)", ret)
	}
	if err := d.Maps.Conntrack.Lookup(&reply, &e); err != nil {
		t.Errorf("the SYN touched conntrack although no translated flow can be alive: %v", err)
	}
}

func TestExpiredFlowChoosesAnew(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, proto Proto) {
		d := loadTest(t)
		f := Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}
		service(t, d, f, 1, backendPort, fam.backends[0])
		p := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: proto, flags: firstFlags(proto)}
		dnatTarget(t, d, p)

		// Age the flow past its lifetime, as time would.
		k := CTKey{Src: AddrFrom(fam.client), Dst: AddrFrom(fam.vip), Sport: PortFrom(clientPort), Dport: PortFrom(servicePort), Proto: proto, Dir: CTForward}
		var e CTEntry
		if err := d.Maps.Conntrack.Lookup(&k, &e); err != nil {
			t.Fatalf("forward conntrack entry missing: %v", err)
		}
		if proto == UDP {
			if life := time.Duration(e.Expires - monotonicNow(t)); life < 50*time.Second || life > 61*time.Second {
				t.Errorf("UDP entry lifetime %s, want about 60s", life)
			}
		}
		e.Expires = monotonicNow(t) - 1
		if err := d.Maps.Conntrack.Put(&k, &e); err != nil {
			t.Fatal(err)
		}
		service(t, d, f, 1, backendPort, fam.backends[1])
		if got := dnatTarget(t, d, p); got != ap(fam.backends[1], backendPort) {
			t.Errorf("expired flow went to %s, want a new choice", got)
		}
	})
}

// A TCP flow, and an SCTP association (INIT, then DATA, then SHUTDOWN
// COMPLETE), live as long as their state allows.
func TestTCPLifetimeFollowsState(t *testing.T) {
	for _, proto := range []Proto{TCP, SCTP} {
		t.Run(proto.String(), func(t *testing.T) { testLifetimeFollowsState(t, proto) })
	}
}

func testLifetimeFollowsState(t *testing.T, proto Proto) {
	d := loadTest(t)
	fam := families[0]
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort, fam.backends[0])
	client, vip := ap(fam.client, clientPort), ap(fam.vip, servicePort)
	k := CTKey{Src: AddrFrom(fam.client), Dst: AddrFrom(fam.vip), Sport: PortFrom(clientPort), Dport: PortFrom(servicePort), Proto: proto, Dir: CTForward}
	lifetime := func() (time.Duration, uint8) {
		var e CTEntry
		if err := d.Maps.Conntrack.Lookup(&k, &e); err != nil {
			t.Fatal(err)
		}
		return time.Duration(e.Expires - monotonicNow(t)), e.Flags
	}
	for _, step := range []struct {
		flags    string
		min, max time.Duration
		state    uint8
	}{
		{"S", 55 * time.Second, 61 * time.Second, 0},
		{"A", 5 * time.Hour, 6*time.Hour + time.Second, CTEstablished},
		{"FA", 5 * time.Second, 11 * time.Second, CTEstablished | CTClosing},
	} {
		dnatTarget(t, d, pkt{src: client, dst: vip, proto: proto, flags: step.flags})
		life, flags := lifetime()
		if life < step.min || life > step.max || flags != step.state {
			t.Errorf("after %q: lifetime %s flags %#x, want %s..%s flags %#x", step.flags, life, flags, step.min, step.max, step.state)
		}
	}
}

// expectSticky sends 32 new flows from the client, from source ports
// first on, to the VIP's Service port, and fails unless all go to one
// backend. Over 2 backends without affinity that happens with probability
// 2^-31.
func expectSticky(t *testing.T, d *Datapath, fam family, first int) {
	t.Helper()
	var to netip.AddrPort
	for i := range 32 {
		got := dnatTarget(t, d, pkt{src: ap(fam.client, uint16(first+i)), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S"})
		if i == 0 {
			to = got
		} else if got != to {
			t.Fatalf("flow %d went to %s, affinity said %s", i, got, to)
		}
	}
}

func TestSessionAffinityKeepsClientOnOneBackend(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}
			s := ServiceEntry{Frontend: f, ID: 7, Affinity: 3 * time.Hour, Backends: []BackendEntry{
				{ID: 1, Addr: ap(fam.backends[0], backendPort)},
				{ID: 2, Addr: ap(fam.backends[1], backendPort)},
			}}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			expectSticky(t, d, fam, clientPort)
			// Without affinity, 32 flows over 2 backends all landing on one
			// happens with probability 2^-31.
			s.Affinity = 0
			s.ID = 8
			s.Port = servicePort + 1
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			seen := map[netip.AddrPort]bool{}
			for i := range 32 {
				seen[dnatTarget(t, d, pkt{src: ap(fam.client, uint16(clientPort+100+i)), dst: ap(fam.vip, servicePort+1), proto: TCP, flags: "S"})] = true
			}
			if len(seen) != 2 {
				t.Errorf("without affinity flows used %d backends, want 2", len(seen))
			}
		})
	}
}

func TestSessionAffinityExpiresAndSkipsTerminatingBackends(t *testing.T) {
	fam := families[0]
	for _, c := range []string{"expired", "terminating"} {
		t.Run(c, func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}
			// The client's affinity says backend 1; the Service's slots
			// hold only backend 2.
			s := ServiceEntry{Frontend: f, ID: 7, Affinity: 10 * time.Second, Backends: []BackendEntry{{ID: 2, Addr: ap(fam.backends[1], backendPort)}}}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			b1 := Backend{Addr: AddrFrom(fam.backends[0]), Port: PortFrom(backendPort)}
			last := monotonicNow(t)
			if c == "expired" {
				last -= uint64(11 * time.Second)
			} else {
				b1.State = BackendTerminating
			}
			if err := d.Maps.Backends.Put(uint32(1), &b1); err != nil {
				t.Fatal(err)
			}
			ak := AffinityKey{Client: AddrFrom(fam.client), ServiceID: 7}
			if err := d.Maps.Affinity.Put(&ak, &AffinityValue{BackendID: 1, LastUsed: last}); err != nil {
				t.Fatal(err)
			}
			got := dnatTarget(t, d, pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S"})
			if got != ap(fam.backends[1], backendPort) {
				t.Errorf("new flow went to %s, want %s", got, ap(fam.backends[1], backendPort))
			}
			var av AffinityValue
			if err := d.Maps.Affinity.Lookup(&ak, &av); err != nil || av.BackendID != 2 {
				t.Errorf("affinity now %+v (%v), want backend 2", av, err)
			}
		})
	}
	t.Run("fresh", func(t *testing.T) {
		d := loadTest(t)
		s := ServiceEntry{Frontend: Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, ID: 7, Affinity: 10 * time.Second, Backends: []BackendEntry{{ID: 2, Addr: ap(fam.backends[1], backendPort)}}}
		if err := d.Maps.UpsertService(s); err != nil {
			t.Fatal(err)
		}
		b1 := Backend{Addr: AddrFrom(fam.backends[0]), Port: PortFrom(backendPort)}
		if err := d.Maps.Backends.Put(uint32(1), &b1); err != nil {
			t.Fatal(err)
		}
		ak := AffinityKey{Client: AddrFrom(fam.client), ServiceID: 7}
		if err := d.Maps.Affinity.Put(&ak, &AffinityValue{BackendID: 1, LastUsed: monotonicNow(t)}); err != nil {
			t.Fatal(err)
		}
		got := dnatTarget(t, d, pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S"})
		if got != ap(fam.backends[0], backendPort) {
			t.Errorf("fresh affinity ignored: flow went to %s", got)
		}
	})
}

// An affinity entry holds only while its backend is still in the slot it
// recorded: a backend that left the Service stays in the backends map,
// active, when another Service still has it, and must not take this
// Service's flows. Among terminating endpoints (the Service's fallback when
// none is ready) affinity holds, as kube-proxy's does.
func TestSessionAffinityFollowsTheServicesSlots(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name+"/backend left the Service", func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}
			backends := []BackendEntry{{ID: 1, Addr: ap(fam.backends[0], backendPort)}, {ID: 2, Addr: ap(fam.backends[1], backendPort)}}
			s := ServiceEntry{Frontend: f, ID: 7, Affinity: time.Hour, Backends: backends}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			flow := func(i int) netip.AddrPort {
				return dnatTarget(t, d, pkt{src: ap(fam.client, uint16(clientPort+i)), dst: ap(fam.vip, servicePort), proto: TCP, flags: "S"})
			}
			first := flow(0)
			ak := AffinityKey{Client: AddrFrom(fam.client), ServiceID: 7}
			var av AffinityValue
			if err := d.Maps.Affinity.Lookup(&ak, &av); err != nil || av.Slot == 0 || backends[av.BackendID-1].Addr != first {
				t.Fatalf("affinity after the first flow (to %s): %+v (%v), want its backend and slot", first, av, err)
			}
			// The chosen backend leaves the Service; its entry stays, active.
			other := backends[2-av.BackendID]
			s.Backends = []BackendEntry{other}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 8; i++ {
				if got := flow(i); got != other.Addr {
					t.Fatalf("flow %d went to %s, which left the Service; want %s", i, got, other.Addr)
				}
			}
		})
		t.Run(fam.name+"/all terminating", func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}
			s := ServiceEntry{Frontend: f, ID: 7, Affinity: time.Hour, Backends: []BackendEntry{
				{ID: 1, Addr: ap(fam.backends[0], backendPort), State: BackendTerminating},
				{ID: 2, Addr: ap(fam.backends[1], backendPort), State: BackendTerminating},
			}}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
			expectSticky(t, d, fam, clientPort)
		})
	}
}

// icmpError builds an ICMP error from src about the quoted packet.
func icmpError(t *testing.T, src, dst netip.Addr, v6Type, v6Code, v4Type, v4Code uint8, quoted []byte) []byte {
	t.Helper()
	if src.Is4() {
		return serialize(t,
			&layers.Ethernet{SrcMAC: gwMAC, DstMAC: podMAC, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(v4Type, v4Code), Seq: 1400},
			gopacket.Payload(quoted))
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(v6Type, v6Code)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: gwMAC, DstMAC: podMAC, EthernetType: layers.EthernetTypeIPv6},
		ip, icmp, gopacket.Payload(append([]byte{0, 0, 0x05, 0x78}, quoted...)))
}

// quote returns the L3 header and the first 8 L4 bytes of a frame, with the
// destination rewritten as given but the L4 checksum left as it was (podnic
// does not touch the quoted L4 checksum).
func quote(t *testing.T, frame []byte, dst netip.AddrPort) []byte {
	t.Helper()
	return quoteRewritten(t, frame, dst, false)
}

// quoteSrc is quote with the source rewritten instead of the destination.
func quoteSrc(t *testing.T, frame []byte, src netip.AddrPort) []byte {
	t.Helper()
	return quoteRewritten(t, frame, src, true)
}

func quoteRewritten(t *testing.T, frame []byte, to netip.AddrPort, src bool) []byte {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var ip []byte
	switch l := p.NetworkLayer().(type) {
	case *layers.IPv4:
		c := *l
		if src {
			c.SrcIP = to.Addr().AsSlice()
		} else {
			c.DstIP = to.Addr().AsSlice()
		}
		ip = serialize(t, &c)[:20]
	case *layers.IPv6:
		c := *l
		if src {
			c.SrcIP = to.Addr().AsSlice()
		} else {
			c.DstIP = to.Addr().AsSlice()
		}
		ip = serialize(t, &c)[:40]
	}
	l4 := append([]byte(nil), p.NetworkLayer().LayerPayload()[:8]...)
	off := 2
	if src {
		off = 0
	}
	l4[off], l4[off+1] = byte(to.Port()>>8), byte(to.Port())
	return append(ip, l4...)
}

func TestICMPErrorsAboutAFlowAreReverseTranslated(t *testing.T) {
	for _, fam := range families {
		for _, c := range []struct {
			name  string
			proto Proto
			from  func(fam family) netip.Addr
			// ICMP type/code for v6 and v4
			t6, c6, t4, c4 uint8
		}{
			{"frag-needed-from-router", TCP, func(f family) netip.Addr { return f.router }, layers.ICMPv6TypePacketTooBig, 0, layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded},
			{"port-unreachable-from-backend", UDP, func(f family) netip.Addr { return f.backends[0] }, layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable, layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort},
			{"sctp-frag-needed-from-router", SCTP, func(f family) netip.Addr { return f.router }, layers.ICMPv6TypePacketTooBig, 0, layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded},
		} {
			t.Run(fam.name+"/"+c.name, func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: c.proto}, 1, backendPort, fam.backends[0])
				client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
				out := pkt{src: client, dst: vip, proto: c.proto, flags: firstFlags(c.proto), payload: []byte("a payload")}
				_, sent := run(t, d.Programs.FromPod, out.bytes(t))

				from := c.from(fam)
				in := icmpError(t, from, fam.client, c.t6, c.c6, c.t4, c.c4, quote(t, sent, backend))
				wantFrom := from
				if from == fam.backends[0] {
					wantFrom = fam.vip
				}
				want := icmpError(t, wantFrom, fam.client, c.t6, c.c6, c.t4, c.c4, quote(t, sent, vip))
				before := counted(t, d, DirToPod, ReasonICMPRevNAT)
				ret, got := run(t, d.Programs.ToPod, in)
				if ret != actUnspec {
					t.Errorf("verdict %d, want TC_ACT_UNSPEC", ret)
				}
				expectPacket(t, "ICMP error", got, want)
				expectCounted(t, d, DirToPod, ReasonICMPRevNAT, before)

				// Once no tc-translated flow replying on the interface
				// can be alive, the reply hook returns before parsing:
				// errors included.
				forgetLiveFlows(t, d)
				if ret, got := run(t, d.Programs.ToPod, in); ret != actUnspec || !equalPacket(got, in) {
					t.Errorf("with no flow alive, the ICMP error was changed (verdict %d)", ret)
				}
			})
		}
	}
}

func TestDropsAndRejectsAreReportedAsEvents(t *testing.T) {
	d := loadTest(t)
	fam := families[0]
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
	r, err := NewEventReader(d.Maps.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	run(t, d.Programs.FromPod, pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, 443), proto: TCP, flags: "S"}.bytes(t))
	ev, err := r.Read(time.Second)
	if err != nil {
		t.Fatalf("reading event: %v", err)
	}
	if ev.Reason != DropUnknownPort || ev.Dir != DirFromPod || ev.Dst.IP() != fam.vip || ev.Dport.Host() != 443 || ev.Proto != TCP {
		t.Errorf("event %+v does not describe the dropped packet", ev)
	}
}

func TestEveryReasonHasAName(t *testing.T) {
	for _, r := range Reasons() {
		if r.String() == fmt.Sprintf("reason(%d)", int32(r)) {
			t.Errorf("reason %d has no name", r)
		}
	}
	if len(Reasons()) != len(podnicPnReasonValues()) {
		t.Errorf("Go knows %d reasons, C defines %d", len(Reasons()), len(podnicPnReasonValues()))
	}
}

func TestICMPErrorsThePodSendsAboutARepliedFlowReachTheBackend(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: UDP}, 1, backendPort, fam.backends[0])
			client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
			run(t, d.Programs.FromPod, pkt{src: client, dst: vip, proto: UDP, payload: []byte("query")}.bytes(t))
			// The reply, as the pod received it after reverse NAT.
			reply := pkt{src: vip, dst: client, proto: UDP, payload: []byte("answer"), srcMAC: gwMAC, dstMAC: podMAC}.bytes(t)

			t6, c6 := uint8(layers.ICMPv6TypeDestinationUnreachable), uint8(layers.ICMPv6CodePortUnreachable)
			t4, c4 := uint8(layers.ICMPv4TypeDestinationUnreachable), uint8(layers.ICMPv4CodePort)
			in := icmpError(t, fam.client, fam.vip, t6, c6, t4, c4, quoteSrc(t, reply, vip))
			want := icmpError(t, fam.client, fam.backends[0], t6, c6, t4, c4, quoteSrc(t, reply, backend))
			before := counted(t, d, DirFromPod, ReasonICMPDNAT)
			ret, got := run(t, d.Programs.FromPod, in)
			if ret != actUnspec {
				t.Errorf("verdict %d, want TC_ACT_UNSPEC", ret)
			}
			expectPacket(t, "ICMP error to the backend", got, want)
			expectCounted(t, d, DirFromPod, ReasonICMPDNAT, before)
		})
	}
}

func TestUDPFlowLeavesARemovedBackend(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			f := Frontend{VIP: fam.vip, Port: servicePort, Proto: UDP}
			upsert := func(id uint32, b netip.Addr) {
				s := ServiceEntry{Frontend: f, ID: 1, Backends: []BackendEntry{{ID: id, Addr: ap(b, backendPort)}}}
				if err := d.Maps.UpsertService(s); err != nil {
					t.Fatal(err)
				}
			}
			upsert(100, fam.backends[0])
			p := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: UDP, payload: []byte("x")}
			if got := dnatTarget(t, d, p); got != ap(fam.backends[0], backendPort) {
				t.Fatalf("first datagram went to %s", got)
			}
			// The pod goes away: the agent drops it from the Service and,
			// no Service using it any more, from the backends map.
			upsert(101, fam.backends[1])
			if got := dnatTarget(t, d, p); got != ap(fam.backends[0], backendPort) {
				t.Fatalf("flow left a backend that still exists: went to %s", got)
			}
			if err := d.Maps.DeleteBackend(100); err != nil {
				t.Fatal(err)
			}
			if got := dnatTarget(t, d, p); got != ap(fam.backends[1], backendPort) {
				t.Errorf("UDP flow stayed on a removed backend: went to %s", got)
			}
		})
	}
}

func TestAddressInAServiceCIDRWithoutAServiceIsRejected(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
			setFamilyCIDR(t, d, fam)
			gone := fam.vip.Next().Next().Next() // in the CIDR, no Service
			syn := pkt{src: ap(fam.client, clientPort), dst: ap(gone, servicePort), proto: TCP, flags: "S", seq: 5}
			ret, got := run(t, d.Programs.FromPod, syn.bytes(t))
			if ret != actRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT with a RST", ret)
			}
			expectPacket(t, "RST", got, rstFor(t, syn))

			// Outside the CIDRs traffic passes untouched.
			out := pkt{src: ap(fam.client, clientPort), dst: ap(fam.router, servicePort), proto: TCP, flags: "S"}.bytes(t)
			if ret, got := run(t, d.Programs.FromPod, out); ret != actUnspec || !equalPacket(got, out) {
				t.Errorf("traffic outside the Service CIDRs changed (verdict %d)", ret)
			}
			// Replacing the set removes the old prefix.
			if err := d.Maps.SetServiceCIDRs(nil); err != nil {
				t.Fatal(err)
			}
			if ret, _ := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actUnspec {
				t.Errorf("verdict %d after the CIDRs were cleared, want TC_ACT_UNSPEC", ret)
			}
		})
	}
}

// The fast paths (lib/fast.h): with the Service CIDRs known, a packet to
// any other address passes without a lookup — even to a VIP that lies
// outside them, which the agent's --service-cidr must therefore cover —
// and a reply passes unlooked-at while no tc-translated flow of its
// protocol is alive, yet is translated as soon as one is.
func TestFastPathsPassOnlyWhatCannotBeServiceTraffic(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
			client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
			reply := pkt{src: backend, dst: client, proto: TCP, flags: "SA"}
			fromBackend := reply.bytes(t)
			if ret, got := run(t, d.Programs.ToPod, fromBackend); ret != actUnspec || !equalPacket(got, fromBackend) {
				t.Errorf("reply with no live flow changed (verdict %d)", ret)
			}

			// A CIDR that leaves the VIP out: its traffic passes untouched.
			other := netip.MustParseAddr("10.96.0.0")
			if fam.vip.Is6() {
				other = netip.MustParseAddr("fd00:96::")
			}
			if err := d.Maps.SetServiceCIDRs([]netip.Prefix{netip.PrefixFrom(other, 16)}); err != nil {
				t.Fatal(err)
			}
			syn := pkt{src: client, dst: vip, proto: TCP, flags: "S"}
			if ret, got := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actUnspec || !equalPacket(got, syn.bytes(t)) {
				t.Errorf("SYN to a VIP outside the configured CIDRs changed (verdict %d)", ret)
			}

			// With the VIP inside, the flow is translated and its reply too.
			bits := 64
			if fam.vip.Is4() {
				bits = 24
			}
			if err := d.Maps.SetServiceCIDRs([]netip.Prefix{netip.PrefixFrom(other, 16), netip.PrefixFrom(fam.vip, bits).Masked()}); err != nil {
				t.Fatal(err)
			}
			expectTranslatedBothWays(t, d, syn, backend)
		})
	}
}

// An external VIP (a Service's externalIPs or LoadBalancer ingress IP) lies
// outside the Service CIDRs. With the external flag on, a pod's flow to it
// is translated and its reply translated back, as kube-proxy does for pod
// traffic; another port, ICMP and other addresses outside the CIDRs pass
// untouched. With the flag off, everything outside the CIDRs passes.
func TestExternalVIPsOutsideTheServiceCIDRsAreTranslated(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			ext := fam.router // outside the CIDR below
			service(t, d, Frontend{VIP: ext, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
			setFamilyCIDR(t, d, fam)
			client, vip, backend := ap(fam.client, clientPort), ap(ext, servicePort), ap(fam.backends[0], backendPort)
			syn := pkt{src: client, dst: vip, proto: TCP, flags: "S"}
			if ret, got := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actUnspec || !equalPacket(got, syn.bytes(t)) {
				t.Errorf("flag off: SYN to the external VIP changed (verdict %d)", ret)
			}

			if err := d.Maps.SetExternalVIPs(true); err != nil {
				t.Fatal(err)
			}
			if on, err := d.Maps.ExternalVIPs(); err != nil || !on {
				t.Fatalf("ExternalVIPs() = %v, %v after SetExternalVIPs(true)", on, err)
			}
			expectTranslatedBothWays(t, d, syn, backend)
			for name, b := range map[string][]byte{
				"another port":            pkt{src: client, dst: ap(ext, servicePort+1), proto: TCP, flags: "S"}.bytes(t),
				"UDP on the Service port": pkt{src: client, dst: vip, proto: UDP, payload: []byte("x")}.bytes(t),
				"another address":         pkt{src: client, dst: ap(ext.Next(), servicePort), proto: TCP, flags: "S"}.bytes(t),
			} {
				if ret, got := run(t, d.Programs.FromPod, b); ret != actUnspec || !equalPacket(got, b) {
					t.Errorf("%s of the external VIP changed (verdict %d)", name, ret)
				}
			}
		})
	}
}

// A pod reaching its node's own address on a NodePort is translated, as
// kube-proxy translates it for pods on the node, once the agent has given
// the node's addresses (SetNodePortAddrs); the external-VIP lookup stays
// off. Another port of the node, and other addresses, pass untouched; the
// socket path's guard refuses what the socket left and passes the rest.
func TestNodeAddressOnANodePortIsTranslated(t *testing.T) {
	const nodePort = 30080
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			node := fam.router.Next() // outside the CIDR below
			service(t, d, Frontend{VIP: node, Port: nodePort, Proto: TCP}, 1, backendPort, fam.backends[0])
			setFamilyCIDR(t, d, fam)
			client, vip, backend := ap(fam.client, clientPort), ap(node, nodePort), ap(fam.backends[0], backendPort)
			syn := pkt{src: client, dst: vip, proto: TCP, flags: "S"}
			if ret, got := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actUnspec || !equalPacket(got, syn.bytes(t)) {
				t.Errorf("node addresses unset: SYN to the NodePort changed (verdict %d)", ret)
			}

			if err := d.Maps.SetNodePortAddrs([]netip.Addr{fam.router, node}); err != nil {
				t.Fatal(err)
			}
			if got, err := d.Maps.NodePortAddrs(); err != nil || len(got) != 2 || got[1] != node {
				t.Fatalf("NodePortAddrs() = %v, %v", got, err)
			}
			if on, _ := d.Maps.ExternalVIPs(); on {
				t.Fatal("the external-VIP lookup is on")
			}
			nodePortFlag := func() bool {
				cfg, err := d.Maps.readConfig()
				if err != nil {
					t.Fatal(err)
				}
				return cfg.Flags&uint32(podnicPnCfgFlagsPN_CFG_NODEPORT) != 0
			}
			if !nodePortFlag() {
				t.Fatal("the node addresses are set, the NodePort flag is off")
			}
			expectTranslatedBothWays(t, d, syn, backend)
			other := map[string][]byte{
				"another port of the node": pkt{src: client, dst: ap(node, nodePort+1), proto: TCP, flags: "S"}.bytes(t),
				"UDP on the NodePort":      pkt{src: client, dst: vip, proto: UDP, payload: []byte("x")}.bytes(t),
				"another address":          pkt{src: client, dst: ap(node.Next(), nodePort), proto: TCP, flags: "S"}.bytes(t),
			}
			for name, b := range other {
				if ret, got := run(t, d.Programs.FromPod, b); ret != actUnspec || !equalPacket(got, b) {
					t.Errorf("%s changed (verdict %d)", name, ret)
				}
				if ret, got := run(t, d.Programs.Guard, b); ret != actUnspec || !equalPacket(got, b) {
					t.Errorf("guard: %s changed (verdict %d)", name, ret)
				}
			}
			// The socket path: the socket balances NodePorts; what it left
			// reaches the guard, which refuses it.
			if ret, got := run(t, d.Programs.Guard, syn.bytes(t)); ret != actRedirect {
				t.Errorf("guard: SYN to the NodePort: verdict %d, want a RST", ret)
			} else {
				expectPacket(t, "RST", got, rstFor(t, syn))
			}

			if err := d.Maps.SetNodePortAddrs(nil); err != nil {
				t.Fatal(err)
			}
			if nodePortFlag() {
				t.Error("the node addresses are cleared, the NodePort flag is on")
			}
			syn.src = ap(fam.client, clientPort+1) // a new flow
			if ret, got := run(t, d.Programs.FromPod, syn.bytes(t)); ret != actUnspec || !equalPacket(got, syn.bytes(t)) {
				t.Errorf("node addresses cleared: SYN to the NodePort changed (verdict %d)", ret)
			}
			if err := d.Maps.SetNodePortAddrs(make([]netip.Addr, MaxNodeAddrs+1)); err == nil {
				t.Error("five node addresses accepted")
			}
		})
	}
}

// An IPv4 header whose version is not 4 is dropped as invalid, and
// counted, even when its TCP segment to a pod address would take the
// headers-only fast path.
func TestBadIPVersionIsDroppedBeforeTheFastPath(t *testing.T) {
	fam := families[0]
	d := loadTest(t)
	setFamilyCIDR(t, d, fam)
	b := pkt{src: ap(fam.client, clientPort), dst: ap(fam.backends[0], backendPort), proto: TCP, flags: "A"}.bytes(t)
	b[14] = 0x05 // version 0, IHL 5
	before := counted(t, d, DirFromPod, DropInvalid)
	if ret, _ := run(t, d.Programs.FromPod, b); ret != actShot {
		t.Errorf("verdict %d, want TC_ACT_SHOT", ret)
	}
	expectCounted(t, d, DirFromPod, DropInvalid, before)
}
