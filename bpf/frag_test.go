package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// fragments builds a UDP datagram from src to dst and splits it, as the
// stack does before tc sees it, into IP fragments carrying at most chunk
// bytes of it each (a multiple of 8), with identification id.
func fragments(t *testing.T, src, dst netip.AddrPort, payload []byte, id uint32, chunk int) [][]byte {
	t.Helper()
	whole := pkt{src: src, dst: dst, proto: UDP, payload: payload}.bytes(t)
	hdr := 20
	ethType := layers.EthernetTypeIPv4
	if src.Addr().Is6() {
		hdr, ethType = 40, layers.EthernetTypeIPv6
	}
	l4 := whole[14+hdr:]
	var out [][]byte
	for off := 0; off < len(l4); off += chunk {
		part := l4[off:min(off+chunk, len(l4))]
		more := off+chunk < len(l4)
		eth := &layers.Ethernet{SrcMAC: podMAC, DstMAC: gwMAC, EthernetType: ethType}
		if src.Addr().Is4() {
			ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
				SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), Id: uint16(id), FragOffset: uint16(off / 8)}
			if more {
				ip.Flags = layers.IPv4MoreFragments
			}
			out = append(out, serialize(t, eth, ip, gopacket.Payload(part)))
			continue
		}
		fh := make([]byte, 8, 8+len(part))
		fh[0] = byte(layers.IPProtocolUDP)
		fo := uint16(off)
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		out = append(out, serialize(t, eth, ip, gopacket.Payload(append(fh, part...))))
	}
	return out
}

// reassemble puts fragments back together as the receiving stack would,
// checking that they agree on their addresses (and, for IPv4, that each
// header checksum holds), and returns the addresses and the UDP datagram.
func reassemble(t *testing.T, frags [][]byte) (src, dst netip.Addr, l4 []byte) {
	t.Helper()
	for i, b := range frags {
		var s, d netip.Addr
		var off int
		var data []byte
		if binary.BigEndian.Uint16(b[12:]) == uint16(layers.EthernetTypeIPv4) {
			ihl := int(b[14]&0xf) * 4
			total := int(binary.BigEndian.Uint16(b[16:]))
			if sum := checksum(b[14 : 14+ihl]); sum != 0xffff {
				t.Fatalf("fragment %d: IPv4 header checksum does not hold (%#x)", i, sum)
			}
			s, d = netip.AddrFrom4([4]byte(b[26:30])), netip.AddrFrom4([4]byte(b[30:34]))
			off = int(binary.BigEndian.Uint16(b[20:])&0x1fff) * 8
			data = b[14+ihl : 14+total]
		} else {
			plen := int(binary.BigEndian.Uint16(b[18:]))
			s, d = netip.AddrFrom16([16]byte(b[22:38])), netip.AddrFrom16([16]byte(b[38:54]))
			off = int(binary.BigEndian.Uint16(b[56:]) &^ 7)
			data = b[62 : 54+plen]
		}
		if i == 0 {
			src, dst = s, d
		} else if s != src || d != dst {
			t.Fatalf("fragment %d goes %s → %s, the first %s → %s", i, s, d, src, dst)
		}
		if off != len(l4) {
			t.Fatalf("fragment %d at offset %d, want %d", i, off, len(l4))
		}
		l4 = append(l4, data...)
	}
	return src, dst, l4
}

// checksum is the ones' complement sum of b, folded (0xffff: it holds).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// udpHolds checks a reassembled UDP datagram's checksum against the
// addresses it travels between.
func udpHolds(src, dst netip.Addr, l4 []byte) bool {
	var ph []byte
	if src.Is4() {
		ph = append(append(src.AsSlice(), dst.AsSlice()...), 0, 17, byte(len(l4)>>8), byte(len(l4)))
	} else {
		ph = append(append(src.AsSlice(), dst.AsSlice()...), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, 17)
	}
	return checksum(append(ph, l4...)) == 0xffff
}

// A UDP datagram bigger than the MTU crosses a ClusterIP in fragments,
// both ways: the first fragment goes through conntrack and the later ones
// follow its translation, so the pod gets a whole datagram from the VIP
// and the backend one addressed to itself, checksums intact. A later
// fragment whose first never came cannot be placed: dropped to a VIP,
// left alone on the way in.
func TestFragmentedDatagramsCrossAClusterIPBothWays(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: UDP}, 1, backendPort, fam.backends[0])
			client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
			payload := bytes.Repeat([]byte("podnic fragments "), 180) // 3,060 bytes

			var out [][]byte
			for i, f := range fragments(t, client, vip, payload, 0x1234, 1448) {
				ret, got := run(t, d.Programs.FromPod, f)
				if ret != actUnspec {
					t.Fatalf("egress fragment %d: verdict %d, want TC_ACT_UNSPEC", i, ret)
				}
				out = append(out, got)
			}
			if len(out) != 3 {
				t.Fatalf("%d fragments, want 3", len(out))
			}
			src, dst, l4 := reassemble(t, out)
			if src != fam.client || dst != fam.backends[0] {
				t.Errorf("datagram goes %s → %s, want %s → %s", src, dst, fam.client, fam.backends[0])
			}
			if port := binary.BigEndian.Uint16(l4[2:]); port != backendPort {
				t.Errorf("destination port %d, want %d", port, backendPort)
			}
			if !udpHolds(src, dst, l4) {
				t.Error("the translated datagram's UDP checksum does not hold")
			}
			if !bytes.Equal(l4[8:], payload) {
				t.Error("the payload changed")
			}

			out = nil
			before := counted(t, d, DirToPod, ReasonRevNAT)
			for i, f := range fragments(t, backend, client, payload, 0xabcd, 1448) {
				ret, got := run(t, d.Programs.ToPod, f)
				if ret != actUnspec {
					t.Fatalf("ingress fragment %d: verdict %d, want TC_ACT_UNSPEC", i, ret)
				}
				out = append(out, got)
			}
			if got := counted(t, d, DirToPod, ReasonRevNAT) - before; got != 3 {
				t.Errorf("%d fragments counted reverse-nat, want 3", got)
			}
			src, dst, l4 = reassemble(t, out)
			if src != fam.vip || dst != fam.client {
				t.Errorf("reply goes %s → %s, want %s → %s", src, dst, fam.vip, fam.client)
			}
			if port := binary.BigEndian.Uint16(l4[0:]); port != servicePort {
				t.Errorf("reply source port %d, want %d", port, servicePort)
			}
			if !udpHolds(src, dst, l4) {
				t.Error("the reply's UDP checksum does not hold")
			}

			// Later fragments of datagrams whose first fragment podnic
			// never saw.
			lost := fragments(t, client, vip, payload, 0x5678, 1448)[1]
			before = counted(t, d, DirFromPod, DropFragment)
			if ret, _ := run(t, d.Programs.FromPod, lost); ret != actShot {
				t.Errorf("orphan fragment to the VIP: verdict %d, want TC_ACT_SHOT", ret)
			}
			expectCounted(t, d, DirFromPod, DropFragment, before)
			lostReply := fragments(t, backend, client, payload, 0x9abc, 1448)[1]
			if ret, got := run(t, d.Programs.ToPod, lostReply); ret != actUnspec || !bytes.Equal(got, lostReply) {
				t.Errorf("orphan fragment from the backend: verdict %d, changed %v; want it untouched", ret, !bytes.Equal(got, lostReply))
			}
		})
	}
}
