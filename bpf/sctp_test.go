package bpf

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// sctpCRC is an SCTP packet's checksum as RFC 9260 appendix A computes it:
// CRC32c over the packet with the checksum field zero.
func sctpCRC(sctp []byte) uint32 {
	c := append([]byte(nil), sctp...)
	clear(c[8:12])
	return crc32.Checksum(c, crc32.MakeTable(crc32.Castagnoli))
}

// crc32cPortDelta mirrors pn_sctp_port_csum: what an SCTP packet of n
// bytes XORs into its CRC when its source (dst false) or destination port
// goes from `from` to `to` (raw network-order values, read as a
// little-endian host reads them).
func crc32cPortDelta(tab *[512]uint32, n int, dst bool, from, to uint16) uint32 {
	if !dst {
		n += 2
	}
	d := crc32cMul(uint32(from^to)<<16, tab[n&0xff], 16)
	if hi := (n >> 8) & 0xff; hi != 0 {
		d = crc32cMul(d, tab[256+hi], 32)
	}
	return d
}

// The table and multiplication the programs use give the CRC a full pass
// over the packet gives, for either port and lengths across both halves
// of the table. Go mirrors the C (pn_sctp_port_csum); the packet-level
// tests below run the C itself.
func TestCRC32cShiftsUpdateAPortAsAFullPass(t *testing.T) {
	tab := crc32cShifts()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{12, 16, 253, 254, 255, 256, 257, 1500, 4096, 9000, 65533} {
		for _, dst := range []bool{false, true} {
			sctp := make([]byte, n)
			for i := range sctp {
				sctp[i] = byte(rng.Uint32())
			}
			binary.LittleEndian.PutUint32(sctp[8:], sctpCRC(sctp))
			off := 0
			if dst {
				off = 2
			}
			from := binary.LittleEndian.Uint16(sctp[off:])
			to := from ^ uint16(rng.Uint32()|1)
			binary.LittleEndian.PutUint16(sctp[off:], to)
			got := binary.LittleEndian.Uint32(sctp[8:]) ^ crc32cPortDelta(&tab, n, dst, from, to)
			if want := sctpCRC(sctp); got != want {
				t.Errorf("length %d, dst %v: updated CRC %#08x, a full pass gives %#08x", n, dst, got, want)
			}
		}
	}
}

// The programs keep an SCTP packet's CRC right when they rewrite its port,
// whatever its length, with an Ethernet pad after it (the length comes
// from the IP header); and they leave a zero field alone: the local
// stack's packet to a device that computes the CRC (CHECKSUM_PARTIAL) or
// segments later (GSO), computed over the translated bytes.
func TestSCTPPortRewriteKeepsTheCRC(t *testing.T) {
	for _, fam := range families {
		d := loadTest(t)
		f := Frontend{VIP: fam.vip, Port: servicePort, Proto: SCTP}
		service(t, d, f, 1, backendPort, fam.backends[0])
		client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
		for _, size := range []int{0, 4, 300, 1400, 3300} { // BPF_PROG_TEST_RUN takes a page at most
			for _, pad := range []int{0, 10} {
				for _, partial := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/%dB/pad%d/partial=%v", fam.name, size, pad, partial), func(t *testing.T) {
						payload := make([]byte, size)
						for i := range payload {
							payload[i] = byte(i * 7)
						}
						out := pkt{src: client, dst: vip, proto: SCTP, flags: "A", seq: 0x1234, payload: payload}
						in, want := out.bytes(t), out.with(client, backend).bytes(t)
						reply := pkt{src: backend, dst: client, proto: SCTP, flags: "A", seq: 0x4321, payload: payload, srcMAC: gwMAC, dstMAC: podMAC}
						rin, rwant := reply.bytes(t), reply.with(vip, client).bytes(t)
						if partial {
							for _, b := range [][]byte{in, want, rin, rwant} {
								clear(b[sctpOffset(b):][8:12])
							}
						}
						in, want = append(in, make([]byte, pad)...), append(want, make([]byte, pad)...)
						rin, rwant = append(rin, make([]byte, pad)...), append(rwant, make([]byte, pad)...)

						if ret, got := run(t, d.Programs.FromPod, in); ret != actUnspec {
							t.Errorf("verdict %d, want TC_ACT_UNSPEC", ret)
						} else {
							expectPacket(t, "to the backend", got, want)
						}
						if ret, got := run(t, d.Programs.ToPod, rin); ret != actUnspec {
							t.Errorf("reply verdict %d, want TC_ACT_UNSPEC", ret)
						} else {
							expectPacket(t, "reply", got, rwant)
						}
					})
				}
			}
		}
	}
}

// sctpOffset returns where the SCTP header starts in an Ethernet frame
// pkt.bytes built (no IP options or extension headers).
func sctpOffset(frame []byte) int {
	if binary.BigEndian.Uint16(frame[12:]) == 0x86dd {
		return 14 + 40
	}
	return 14 + 20
}

// Load raises the reply fast path's clocks from the conntrack entries an
// earlier build left: SCTP's in TCP's slot, as the programs keep it
// (pn_live_proto), or an SCTP association's replies would skip the
// reverse translation after an upgrade.
func TestLoadRaisesTheLiveClocksOfEveryProtocol(t *testing.T) {
	d := loadTest(t)
	forgetLiveFlows(t, d)
	now := monotonicNow(t)
	expires := map[Proto]uint64{TCP: now + 10e9, UDP: now + 20e9, SCTP: now + 30e9}
	for proto, exp := range expires {
		k := CTKey{Src: AddrFrom(families[0].client), Dst: AddrFrom(families[0].vip), Sport: PortFrom(clientPort), Dport: PortFrom(servicePort), Proto: proto, Dir: CTForward}
		if err := d.Maps.Conntrack.Put(&k, &CTEntry{Expires: exp}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Maps.raiseLiveUntil(); err != nil {
		t.Fatal(err)
	}
	var live podnicPnLive
	if err := d.Maps.Live.Lookup(uint32(7), &live); err != nil {
		t.Fatal(err)
	}
	// raiseLiveUntil adds 2 s of margin.
	if live.Until[0] != expires[SCTP]+2e9 || live.Until[1] != expires[UDP]+2e9 {
		t.Errorf("live clocks %v, want TCP and SCTP's latest %d, UDP's %d, each plus 2 s", live.Until, expires[SCTP], expires[UDP])
	}
}

// abortFor is the ABORT podnic answers an SCTP packet to a Service without
// endpoints with: from the VIP, the INIT's Initiate Tag as tag (the first
// four bytes of the INIT's value), or for any other chunk the packet's own
// tag with the T bit.
func abortFor(t *testing.T, sent pkt) []byte {
	t.Helper()
	tag, flags := sent.seq, byte(1)
	if sent.flags == "S" {
		tag, flags = binary.BigEndian.Uint32(sent.payload), 0
	}
	eth := &layers.Ethernet{SrcMAC: gwMAC, DstMAC: podMAC, EthernetType: layers.EthernetTypeIPv4}
	if sent.src.Addr().Is6() {
		eth.EthernetType = layers.EthernetTypeIPv6
	}
	b := serialize(t, eth, ipLayer(sent.dst.Addr(), sent.src.Addr(), layers.IPProtocolSCTP, true),
		&layers.SCTP{SrcPort: layers.SCTPPort(sent.dst.Port()), DstPort: layers.SCTPPort(sent.src.Port()), VerificationTag: tag},
		gopacket.Payload([]byte{6, flags, 0, 4}))
	return b[:sctpOffset(b)+16] // gopacket pads the IPv4 frame to 60 bytes
}

// A Service without endpoints answers an SCTP INIT, or any other chunk,
// with an ABORT, as a host without the association does: the client's
// connect() fails at once (kube-proxy's ICMP port unreachable is only a
// soft error to Linux SCTP, which retries its INIT for minutes). An ABORT
// or SHUTDOWN COMPLETE gets no answer.
func TestSCTPToAServiceWithoutEndpointsIsAborted(t *testing.T) {
	for _, fam := range families {
		for _, c := range []struct {
			name   string
			flags  string
			answer bool
		}{
			{"INIT", "S", true},
			{"DATA", "A", true},
			{"ABORT", "R", false},
			{"SHUTDOWN-COMPLETE", "FA", false},
		} {
			t.Run(fam.name+"/"+c.name, func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: SCTP}, 1, backendPort)
				sent := pkt{src: ap(fam.client, clientPort), dst: ap(fam.vip, servicePort), proto: SCTP, flags: c.flags, seq: 0x5eed, payload: []byte{0xca, 0xfe, 0xf0, 0x0d, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 42}}
				before := counted(t, d, DirFromPod, ReasonReject)
				ret, got := run(t, d.Programs.FromPod, sent.bytes(t))
				if !c.answer {
					if ret != actShot {
						t.Errorf("verdict %d, want TC_ACT_SHOT: no answer to an %s", ret, c.name)
					}
					return
				}
				if ret != actRedirect {
					t.Fatalf("verdict %d, want TC_ACT_REDIRECT back into the pod", ret)
				}
				expectPacket(t, "ABORT", got, abortFor(t, sent))
				expectCounted(t, d, DirFromPod, ReasonReject, before)
			})
		}
	}
}

// SCTP to the frontends outside the Service CIDRs, an external VIP
// (externalIPs, LoadBalancer ingress) and the node's address on a
// NodePort, is translated both ways as to a ClusterIP.
func TestSCTPToExternalVIPsAndNodePortsIsTranslated(t *testing.T) {
	const nodePort = 30080
	for _, fam := range families {
		for _, c := range []struct {
			name string
			addr netip.Addr
			port uint16
			on   func(d *Datapath) error
		}{
			{"external", fam.router, servicePort, func(d *Datapath) error { return d.Maps.SetExternalVIPs(true) }},
			{"nodeport", fam.router.Next(), nodePort, func(d *Datapath) error {
				return d.Maps.SetNodePortAddrs([]netip.Addr{fam.router.Next()})
			}},
		} {
			t.Run(fam.name+"/"+c.name, func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: c.addr, Port: c.port, Proto: SCTP}, 1, backendPort, fam.backends[0])
				setFamilyCIDR(t, d, fam)
				if err := c.on(d); err != nil {
					t.Fatal(err)
				}
				init := pkt{src: ap(fam.client, clientPort), dst: ap(c.addr, c.port), proto: SCTP, flags: "S", seq: 0x5eed}
				expectTranslatedBothWays(t, d, init, ap(fam.backends[0], backendPort))
			})
		}
	}
}

// initValue returns an INIT or INIT ACK chunk's value: the 16 fixed bytes,
// an IPv4 and an IPv6 address parameter of the given types (5 and 6 as an
// endpoint sends them), and a Supported Address Types parameter.
func initValue(v4Type, v6Type uint16) []byte {
	b := []byte{0xca, 0xfe, 0xf0, 0x0d, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1}
	b = binary.BigEndian.AppendUint16(b, v4Type)
	b = binary.BigEndian.AppendUint16(b, 8)
	b = append(b, 192, 0, 2, 99)
	b = binary.BigEndian.AppendUint16(b, v6Type)
	b = binary.BigEndian.AppendUint16(b, 20)
	b = append(b, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99)
	return append(b, 0, 12, 0, 8, 0, 5, 0, 6) // Supported Address Types: IPv4, IPv6
}

// An INIT and its INIT ACK crossing a Service have their address
// parameters hidden (retyped to a type the receiver skips), the CRC
// updated with them, so that neither end opens paths past the VIP; other
// parameters stay. With the CRC left to the device (a zero field) only the
// types change.
func TestSCTPInitAddressesAreHiddenAcrossAService(t *testing.T) {
	for _, fam := range families {
		for _, partial := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/partial=%v", fam.name, partial), func(t *testing.T) {
				d := loadTest(t)
				service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: SCTP}, 1, backendPort, fam.backends[0])
				client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
				zero := func(b []byte) []byte {
					if partial {
						clear(b[sctpOffset(b):][8:12])
					}
					return b
				}
				init := pkt{src: client, dst: vip, proto: SCTP, flags: "S", payload: initValue(5, 6)}
				want := init.with(client, backend)
				want.payload = initValue(0xbf05, 0xbf06)
				ret, got := run(t, d.Programs.FromPod, zero(init.bytes(t)))
				if ret != actUnspec {
					t.Fatalf("INIT verdict %d", ret)
				}
				expectPacket(t, "INIT", got, zero(want.bytes(t)))

				ack := pkt{src: backend, dst: client, proto: SCTP, flags: "SA", payload: initValue(5, 6), srcMAC: gwMAC, dstMAC: podMAC}
				wantAck := ack.with(vip, client)
				wantAck.payload = initValue(0xbf05, 0xbf06)
				ret, got = run(t, d.Programs.ToPod, zero(ack.bytes(t)))
				if ret != actUnspec {
					t.Fatalf("INIT ACK verdict %d", ret)
				}
				expectPacket(t, "INIT ACK", got, zero(wantAck.bytes(t)))

				// Later chunks are not parameters: a DATA chunk whose bytes
				// look like them is left alone.
				data := pkt{src: client, dst: vip, proto: SCTP, flags: "A", payload: initValue(5, 6)}
				_, got = run(t, d.Programs.FromPod, data.bytes(t))
				expectPacket(t, "DATA", got, data.with(client, backend).bytes(t))
			})
		}
	}
}

// withIPv4Options returns the IPv4 frame b with 4 bytes of NOP options
// after its header (IHL 6), lengths and header checksum fixed.
func withIPv4Options(b []byte) []byte {
	out := append(append(append([]byte(nil), b[:34]...), 1, 1, 1, 1), b[34:]...)
	out[14] = 0x46
	binary.BigEndian.PutUint16(out[16:], binary.BigEndian.Uint16(b[16:])+4)
	clear(out[24:26])
	binary.BigEndian.PutUint16(out[24:], ^checksum(out[14:38]))
	return out
}

// An IPv4 header with options moves the SCTP packet and shortens it
// against the IP total length: the CRC update finds the length from the
// header's IHL.
func TestSCTPPortRewriteBehindIPv4Options(t *testing.T) {
	fam := families[0]
	d := loadTest(t)
	service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: SCTP}, 1, backendPort, fam.backends[0])
	client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
	out := pkt{src: client, dst: vip, proto: SCTP, flags: "A", seq: 9, payload: make([]byte, 300)}
	ret, got := run(t, d.Programs.FromPod, withIPv4Options(out.bytes(t)))
	if ret != actUnspec {
		t.Fatalf("verdict %d", ret)
	}
	expectPacket(t, "to the backend", got, withIPv4Options(out.with(client, backend).bytes(t)))
}
