package bpf

import (
	"encoding/binary"
	"testing"
)

// IPv6 extension header types, as next-header values.
const (
	extHopByHop = 0
	extRouting  = 43
	extDestOpts = 60
)

// ext6 is an IPv6 extension header to insert: its type and its bytes after
// the next-header and length bytes (so that, with them, a multiple of 8).
type ext6 struct {
	kind byte
	body []byte
}

// padN is an options header (hop-by-hop, destination) holding one PadN.
func padN(kind byte) ext6 { return ext6{kind, []byte{1, 4, 0, 0, 0, 0}} }

// routing is a routing header (type 4, segment routing) with segmentsLeft.
func routing(segmentsLeft byte) ext6 { return ext6{extRouting, []byte{4, segmentsLeft, 0, 0, 0, 0}} }

// withExt6 returns the IPv6 frame b with hdrs inserted after its fixed
// header, in order; the upper-layer header and its checksum are unchanged.
func withExt6(t *testing.T, b []byte, hdrs ...ext6) []byte {
	t.Helper()
	const fixed = 14 + 40
	if binary.BigEndian.Uint16(b[12:14]) != 0x86dd {
		t.Fatal("withExt6: not an IPv6 frame")
	}
	out := append([]byte(nil), b[:fixed]...)
	upper := b[6+14]
	total := 0
	for i, h := range hdrs {
		if (len(h.body)+2)%8 != 0 {
			t.Fatalf("extension header %d: %d bytes, want a multiple of 8", i, len(h.body)+2)
		}
		next := upper
		if i+1 < len(hdrs) {
			next = hdrs[i+1].kind
		}
		out = append(out, next, byte((len(h.body)+2)/8-1))
		out = append(out, h.body...)
		total += len(h.body) + 2
	}
	out[14+6] = hdrs[0].kind
	binary.BigEndian.PutUint16(out[14+4:], binary.BigEndian.Uint16(b[14+4:])+uint16(total))
	return append(out, b[fixed:]...)
}

// An IPv6 packet may carry extension headers before its TCP or UDP header:
// hop-by-hop and destination options, a routing header with no segment
// left. The datapath walks them (up to 4) and translates the packet as
// without them, both ways; it refuses a Service without backends with an
// answer the client's stack can match. A routing header with segments
// left names a waypoint, not the destination: nothing is translated.
func TestIPv6ExtensionHeadersAreWalked(t *testing.T) {
	fam := families[1]
	client, vip, backend := ap(fam.client, clientPort), ap(fam.vip, servicePort), ap(fam.backends[0], backendPort)
	for _, c := range []struct {
		name  string
		proto Proto
		hdrs  []ext6
	}{
		{"hop-by-hop/TCP", TCP, []ext6{padN(extHopByHop)}},
		{"hop-by-hop+destination/UDP", UDP, []ext6{padN(extHopByHop), padN(extDestOpts)}},
		{"routing-done+destination/TCP", TCP, []ext6{routing(0), padN(extDestOpts)}},
		// SCTP's CRC update takes the packet's length from the payload
		// length, which counts the extension headers.
		{"hop-by-hop+destination/SCTP", SCTP, []ext6{padN(extHopByHop), padN(extDestOpts)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: c.proto}, 1, backendPort, fam.backends[0])
			out := pkt{src: client, dst: vip, proto: c.proto, flags: "S", payload: []byte("hello")}
			ret, got := run(t, d.Programs.FromPod, withExt6(t, out.bytes(t), c.hdrs...))
			if want := withExt6(t, out.with(client, backend).bytes(t), c.hdrs...); ret != actUnspec || !equalPacket(got, want) {
				t.Fatalf("to the Service: verdict %d, want it translated to %v with its extension headers", ret, backend)
			}
			back := pkt{src: backend, dst: client, proto: c.proto, flags: "SA", payload: []byte("hi")}
			ret, got = run(t, d.Programs.ToPod, withExt6(t, back.bytes(t), c.hdrs...))
			if want := withExt6(t, back.with(vip, client).bytes(t), c.hdrs...); ret != actUnspec || !equalPacket(got, want) {
				t.Errorf("reply: verdict %d, want it translated back to %v", ret, vip)
			}

			// No backend: refused, the answer as for the packet without
			// extension headers (the ICMP quote leaves them out, so that
			// the client's stack finds the socket by its ports).
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: c.proto}, 1, backendPort)
			plain := pkt{src: ap(fam.client, clientPort+1), dst: vip, proto: c.proto, flags: "S", seq: 7, payload: []byte("query payload longer than eight bytes")}
			ret, got = run(t, d.Programs.FromPod, withExt6(t, plain.bytes(t), c.hdrs...))
			if ret != actRedirect {
				t.Fatalf("without backends: verdict %d, want a refusal", ret)
			}
			expectRefusal(t, got, plain, fam)
		})
	}

	t.Run("routing-with-segments-left", func(t *testing.T) {
		d := loadTest(t)
		service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
		in := withExt6(t, pkt{src: client, dst: vip, proto: TCP, flags: "S"}.bytes(t), routing(1))
		if ret, got := run(t, d.Programs.FromPod, in); ret == actUnspec && !equalPacket(got, in) {
			t.Errorf("a packet to a waypoint was translated")
		}
	})
}
