package bpf

// Per-packet benchmarks on the real kernel through BPF_PROG_TEST_RUN.
//
// BPF_PROG_TEST_RUN with a repeat count runs the program again and again on
// the same skb, which the first run already rewrote. A naive benchmark of
// the DNAT path therefore measures the pass-through path from the second
// run on. These benchmarks build state so every run takes the path named:
//
//   - established: the flow client -> VIP is tracked to backend B, and a
//     second tracked flow client -> B leads back to the VIP, so the packet
//     ping-pongs between two conntrack hits, each a full rewrite.
//   - new flow: two Services point at each other's VIP and the packet
//     carries SYN and FIN. Every run finds a closing entry, which a SYN may
//     not reuse, so each run chooses a backend, writes both conntrack
//     entries and rewrites: the new-flow path of a reused client port,
//     whose entries are overwritten in place. A first-time port inserts
//     into the LRU instead (about 150 ns more here).
//
// Each benchmark first checks with single runs that the counters say the
// path ran (DNAT_CT or DNAT_NEW), then measures. Filler Services take VIPs
// from 198.18.0.0/15 (RFC 2544 benchmarking range), nothing is sent.

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

var benchSizes = []int{1, 1000, 10000, 100000}

// fillServices adds n Services with one backend each, beside those a
// benchmark uses.
func fillServices(b *testing.B, d *Datapath, n int) {
	b.Helper()
	base := netip.MustParseAddr("198.18.0.0").As4()
	for i := range n {
		a := base
		a[1] += byte(i >> 16)
		a[2] = byte(i >> 8)
		a[3] = byte(i)
		vip := netip.AddrFrom4(a)
		s := ServiceEntry{
			Frontend: Frontend{VIP: vip, Port: 80, Proto: TCP},
			ID:       uint32(1000 + i),
			Backends: []BackendEntry{{ID: uint32(1000 + i), Addr: netip.AddrPortFrom(vip, 8080)}},
		}
		if err := d.Maps.UpsertService(s); err != nil {
			b.Fatalf("filling service %d: %v", i, err)
		}
	}
}

func noopProgram(b *testing.B) *ebpf.Program {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "podnic_floor",
		Type:    ebpf.SchedCLS,
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, -1),
			asm.Return(),
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	return p
}

// measure runs prog on in b.N times in the kernel and reports ns per packet.
func measure(b *testing.B, prog *ebpf.Program, in []byte) {
	b.Helper()
	b.ResetTimer()
	_, per, err := prog.Benchmark(in, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
}

func BenchmarkEmptyProgram(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	in := pkt{src: ap(families[0].client, clientPort), dst: ap(families[0].vip, servicePort), proto: TCP, flags: "A"}.bytes(b)
	measure(b, noopProgram(b), in)
}

func BenchmarkEstablishedFlow(b *testing.B) {
	for _, fam := range families {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/services=%d", fam.name, n), func(b *testing.B) {
				d, in := establishedFlow(b, fam, n, TCP, 64)
				measure(b, d.Programs.FromPod, in)
			})
		}
	}
}

// BenchmarkEstablishedFlowByProtocol compares the conntrack path of TCP,
// UDP and SCTP, each with a port change (80 -> 8080), at two payload
// sizes: SCTP's CRC32c update (bpf/lib/sctp.h) costs the same whatever the
// packet's length.
func BenchmarkEstablishedFlowByProtocol(b *testing.B) {
	for _, fam := range families {
		for _, proto := range []Proto{TCP, UDP, SCTP} {
			for _, size := range []int{64, 1400} {
				b.Run(fmt.Sprintf("%s/%s/payload=%d", fam.name, proto, size), func(b *testing.B) {
					d, in := establishedFlow(b, fam, 1, proto, size)
					measure(b, d.Programs.FromPod, in)
				})
			}
		}
	}
}

// establishedFlow sets up a flow of proto from the client to a VIP whose
// packet, payload bytes long, takes the conntrack path on every run (see
// the top of this file), beside n filler Services, and returns that packet.
func establishedFlow(b *testing.B, fam family, n int, proto Proto, payload int) (*Datapath, []byte) {
	b.Helper()
	d := loadTest(b)
	fillServices(b, d, n)
	client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
	service(b, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: proto}, 1, backendPort, fam.backends[0])
	syn := pkt{src: client, dst: vip, proto: proto, flags: firstFlags(proto)}
	run(b, d.Programs.FromPod, syn.bytes(b))
	// The way back: client -> backend is tracked to the VIP, with the
	// Service's backend as its backend (a UDP flow leaves a backend that
	// is gone).
	k := CTKey{Src: AddrFrom(fam.client), Dst: AddrFrom(backend.Addr()), Sport: PortFrom(clientPort), Dport: PortFrom(backendPort), Proto: proto, Dir: CTForward}
	e := CTEntry{Addr: AddrFrom(fam.vip), Port: PortFrom(servicePort), Flags: CTEstablished, ServiceID: 1, BackendID: 100, Expires: monotonicNow(b) + 3600e9}
	if err := d.Maps.Conntrack.Put(&k, &e); err != nil {
		b.Fatal(err)
	}
	if err := d.Maps.raiseLiveUntil(); err != nil {
		b.Fatal(err)
	}
	ack := pkt{src: client, dst: vip, proto: proto, flags: "A", payload: make([]byte, payload)}
	if proto == UDP {
		ack.flags = ""
	}
	in := ack.bytes(b)
	before := counted(b, d, DirFromPod, ReasonDNATCT)
	_, out := run(b, d.Programs.FromPod, in)
	if string(out) != string(ack.with(client, backend).bytes(b)) {
		b.Fatal("first run did not translate to the backend")
	}
	_, back := run(b, d.Programs.FromPod, out)
	if string(back) != string(in) {
		b.Fatal("second run did not translate back to the VIP")
	}
	if got := counted(b, d, DirFromPod, ReasonDNATCT); got != before+2 {
		b.Fatalf("conntrack path ran %d times, want 2", got-before)
	}
	return d, in
}

func BenchmarkNewFlow(b *testing.B) {
	for _, fam := range families {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/services=%d", fam.name, n), func(b *testing.B) {
				d := loadTest(b)
				fillServices(b, d, n)
				service(b, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, servicePort, fam.vip2)
				service(b, d, Frontend{VIP: fam.vip2, Port: servicePort, Proto: TCP}, 2, servicePort, fam.vip)
				synfin := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: TCP, flags: "SF"}
				in := synfin.bytes(b)
				before := counted(b, d, DirFromPod, ReasonDNATNew)
				_, out := run(b, d.Programs.FromPod, in)
				_, out = run(b, d.Programs.FromPod, out)
				_, out = run(b, d.Programs.FromPod, out)
				if got := counted(b, d, DirFromPod, ReasonDNATNew); got != before+3 {
					b.Fatalf("new-flow path ran %d times of 3", got-before)
				}
				if string(out) != string(synfin.with(synfin.src, ap(fam.vip2, servicePort)).bytes(b)) {
					b.Fatal("packet did not alternate between the VIPs")
				}
				measure(b, d.Programs.FromPod, in)
			})
		}
	}
}

// BenchmarkPassThrough is what every packet of a pod-to-pod flow, or of a
// connection balanced at the socket, pays: egress to an address outside
// the Service CIDR (known, as podnic-agent sets it), and ingress on an
// interface that never had a tc-translated flow.
func BenchmarkPassThrough(b *testing.B) {
	for _, fam := range families {
		bits := 24
		if fam.vip.Is6() {
			bits = 112
		}
		client, backend := ap(fam.client, clientPort), ap(fam.backends[0], backendPort)
		for _, dir := range []string{"egress", "egress-guard", "egress-nodeports", "egress-guard-nodeports", "ingress"} {
			b.Run(fam.name+"/"+dir, func(b *testing.B) {
				d := loadTest(b)
				if err := d.Maps.SetServiceCIDRs([]netip.Prefix{netip.PrefixFrom(fam.vip, bits).Masked()}); err != nil {
					b.Fatal(err)
				}
				if strings.HasSuffix(dir, "-nodeports") {
					// Some Service has a NodePort: the node's two
					// addresses are compared with every destination.
					if err := d.Maps.SetNodePortAddrs([]netip.Addr{fam.router, fam.router.Next()}); err != nil {
						b.Fatal(err)
					}
				}
				prog, p, reason := d.Programs.FromPod, pkt{src: client, dst: backend, proto: TCP, flags: "A", payload: make([]byte, 64)}, DirFromPod
				switch dir {
				case "egress-guard", "egress-guard-nodeports": // the socket path's egress program
					prog = d.Programs.Guard
				case "ingress":
					prog, p, reason = d.Programs.ToPod, pkt{src: backend, dst: client, proto: TCP, flags: "A", payload: make([]byte, 64)}, DirToPod
				}
				in := p.bytes(b)
				before := counted(b, d, reason, ReasonPass)
				if _, out := run(b, prog, in); string(out) != string(in) {
					b.Fatal("the packet was changed")
				}
				if got := counted(b, d, reason, ReasonPass); got != before {
					b.Fatalf("pass counted %d times, want none", got-before)
				}
				measure(b, prog, in)
			})
		}
	}
}

// BenchmarkLoopbackWhileSelfAccessIsAlive is what a pod's packets on lo
// pay while some pod's tc-translated self access is alive, which lights
// lo's live slot in every pod: localhost traffic (a sidecar and its app)
// and a packet between the pod's own addresses that no flow owns.
func BenchmarkLoopbackWhileSelfAccessIsAlive(b *testing.B) {
	for _, fam := range families {
		for _, c := range []struct {
			name     string
			src, dst netip.AddrPort
		}{
			{"localhost", ap(fam.loopback, clientPort), ap(fam.loopback, backendPort)},
			{"pod-address", ap(fam.client, clientPort+1), ap(fam.client, backendPort)},
		} {
			b.Run(fam.name+"/"+c.name, func(b *testing.B) {
				d := loadTest(b)
				selfAccessAlive(b, d, fam)
				in := pkt{src: c.src, dst: c.dst, proto: TCP, flags: "A", payload: make([]byte, 64), srcMAC: make([]byte, 6), dstMAC: make([]byte, 6)}.bytes(b)
				if _, out := run(b, d.Programs.LoOut, in); string(out) != string(in) {
					b.Fatal("the packet was changed")
				}
				measure(b, d.Programs.LoOut, in)
			})
		}
	}
}
