package bpf

// Packet-level tests: every program runs under BPF_PROG_TEST_RUN on the real
// kernel with packets built in Go, and whole output packets are compared
// byte for byte, checksums included.
//
// Test address plan (nothing is sent; RFC 5737 and RFC 3849 ranges):
//
//	client pod     192.0.2.10        2001:db8::10
//	backends       192.0.2.20-29     2001:db8::20-29
//	Service VIPs   198.51.100.0/24   2001:db8:96::/64
//	routers        203.0.113.1       2001:db8:ff::1

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// tc verdicts as BPF_PROG_TEST_RUN returns them.
const (
	actUnspec   = 0xffffffff // TC_ACT_UNSPEC (-1)
	actShot     = 2
	actRedirect = 7
)

var (
	podMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	gwMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
)

// family is one address family's part of the address plan.
type family struct {
	name     string
	client   netip.Addr
	backends []netip.Addr
	vip      netip.Addr
	vip2     netip.Addr
	router   netip.Addr
	loopback netip.Addr
}

var families = []family{
	{
		name:     "v4",
		client:   netip.MustParseAddr("192.0.2.10"),
		backends: []netip.Addr{netip.MustParseAddr("192.0.2.20"), netip.MustParseAddr("192.0.2.21")},
		vip:      netip.MustParseAddr("198.51.100.10"),
		vip2:     netip.MustParseAddr("198.51.100.11"),
		router:   netip.MustParseAddr("203.0.113.1"),
		loopback: netip.MustParseAddr("127.0.0.1"),
	},
	{
		name:     "v6",
		client:   netip.MustParseAddr("2001:db8::10"),
		backends: []netip.Addr{netip.MustParseAddr("2001:db8::20"), netip.MustParseAddr("2001:db8::21")},
		vip:      netip.MustParseAddr("2001:db8:96::10"),
		vip2:     netip.MustParseAddr("2001:db8:96::11"),
		router:   netip.MustParseAddr("2001:db8:ff::1"),
		loopback: netip.IPv6Loopback(),
	},
}

// setFamilyCIDR gives the datapath the Service CIDR of fam's VIPs (a /24,
// or a /64), so that fam's router and pod addresses lie outside it.
func setFamilyCIDR(t *testing.T, d *Datapath, fam family) {
	t.Helper()
	bits := 24
	if fam.vip.Is6() {
		bits = 64
	}
	if err := d.Maps.SetServiceCIDRs([]netip.Prefix{netip.PrefixFrom(fam.vip, bits).Masked()}); err != nil {
		t.Fatal(err)
	}
}

// pkt describes a TCP, UDP or SCTP packet to build.
type pkt struct {
	src, dst netip.AddrPort
	proto    Proto
	flags    string // TCP flags: any of "SAFRP"
	seq, ack uint32
	payload  []byte
	srcMAC   net.HardwareAddr
	dstMAC   net.HardwareAddr
}

func ipLayer(src, dst netip.Addr, next layers.IPProtocol, df bool) gopacket.SerializableLayer {
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: next, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if df {
			ip.Flags = layers.IPv4DontFragment
		}
		return ip
	}
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("building packet: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func (p pkt) bytes(t testing.TB) []byte {
	t.Helper()
	srcMAC, dstMAC := p.srcMAC, p.dstMAC
	if srcMAC == nil {
		srcMAC = podMAC
	}
	if dstMAC == nil {
		dstMAC = gwMAC
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	if p.src.Addr().Is6() {
		eth.EthernetType = layers.EthernetTypeIPv6
	}
	var next layers.IPProtocol
	var l4 gopacket.SerializableLayer
	switch p.proto {
	case TCP:
		next = layers.IPProtocolTCP
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()), Seq: p.seq, Ack: p.ack, Window: 64240}
		for _, f := range p.flags {
			switch f {
			case 'S':
				tcp.SYN = true
			case 'A':
				tcp.ACK = true
			case 'F':
				tcp.FIN = true
			case 'R':
				tcp.RST = true
			case 'P':
				tcp.PSH = true
			}
		}
		l4 = tcp
	case UDP:
		next = layers.IPProtocolUDP
		l4 = &layers.UDP{SrcPort: layers.UDPPort(p.src.Port()), DstPort: layers.UDPPort(p.dst.Port())}
	case SCTP:
		// The common header (its CRC32c computed by gopacket) and one
		// chunk standing for the flags, the payload its value.
		ip := ipLayer(p.src.Addr(), p.dst.Addr(), layers.IPProtocolSCTP, true)
		sh := &layers.SCTP{SrcPort: layers.SCTPPort(p.src.Port()), DstPort: layers.SCTPPort(p.dst.Port()), VerificationTag: p.seq}
		return serialize(t, eth, ip, sh, gopacket.Payload(sctpChunk(p.flags, p.payload)))
	default:
		t.Fatalf("unsupported protocol %s", p.proto)
	}
	ip := ipLayer(p.src.Addr(), p.dst.Addr(), next, true)
	l4.(interface {
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}).SetNetworkLayerForChecksum(ip.(gopacket.NetworkLayer))
	return serialize(t, eth, ip, l4, gopacket.Payload(p.payload))
}

// sctpChunk returns an SCTP chunk for TCP-like flags, as the programs map
// chunks onto flags: INIT for "S", INIT ACK for "SA", ABORT for "R..",
// SHUTDOWN COMPLETE for "F..", DATA otherwise; value is its value, padded.
func sctpChunk(flags string, value []byte) []byte {
	typ := byte(0) // DATA
	switch {
	case flags == "S":
		typ = 1
	case flags == "SA":
		typ = 2
	case strings.Contains(flags, "R"):
		typ = 6
	case strings.Contains(flags, "F"):
		typ = 14
	}
	c := []byte{typ, 0, 0, 0}
	binary.BigEndian.PutUint16(c[2:], uint16(4+len(value)))
	c = append(c, value...)
	for len(c)%4 != 0 {
		c = append(c, 0)
	}
	return c
}

// with returns a copy of p with new endpoints.
func (p pkt) with(src, dst netip.AddrPort) pkt {
	p.src, p.dst = src, dst
	return p
}

// run runs prog on in and returns its verdict and output packet.
func run(t testing.TB, prog *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	ret, out, err := prog.Test(in)
	if err != nil {
		t.Fatalf("running program: %v", err)
	}
	return ret, out
}

func expectPacket(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: output packet differs\n got: %s\nwant: %s\n%s", what, hex.EncodeToString(got), hex.EncodeToString(want), describe(got))
	}
}

func describe(b []byte) string {
	return gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default).Dump()
}

// monotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonicNow(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// counted returns how often a verdict was counted so far.
func counted(t testing.TB, d *Datapath, dir Dir, r Reason) uint64 {
	t.Helper()
	n, err := d.Maps.Verdicts(dir, r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// expectCounted asserts that one packet was counted with the verdict.
func expectCounted(t testing.TB, d *Datapath, dir Dir, r Reason, before uint64) {
	t.Helper()
	if got := counted(t, d, dir, r); got != before+1 {
		t.Errorf("counter %s/%s = %d, want %d", dir, r, got, before+1)
	}
}

// expectNotCounted asserts that the verdict's counter did not move.
func expectNotCounted(t testing.TB, d *Datapath, dir Dir, r Reason, before uint64) {
	t.Helper()
	if got := counted(t, d, dir, r); got != before {
		t.Errorf("counter %s/%s = %d, want it left at %d", dir, r, got, before)
	}
}

// forgetLiveFlows makes every interface slot of podnic_live_v1 say that no
// tc-translated flow ever replied there.
func forgetLiveFlows(t testing.TB, d *Datapath) {
	t.Helper()
	for slot := uint32(0); slot < d.Maps.Live.MaxEntries(); slot++ {
		if err := d.Maps.Live.Put(slot, &podnicPnLive{}); err != nil {
			t.Fatal(err)
		}
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// service writes a Service with the given backends (ids 1.. in order).
func service(t testing.TB, d *Datapath, f Frontend, id uint32, port uint16, backends ...netip.Addr) {
	t.Helper()
	s := ServiceEntry{Frontend: f, ID: id}
	for i, b := range backends {
		s.Backends = append(s.Backends, BackendEntry{ID: id*100 + uint32(i), Addr: ap(b, port)})
	}
	if err := d.Maps.UpsertService(s); err != nil {
		t.Fatalf("writing service: %v", err)
	}
}
