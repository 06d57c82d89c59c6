package bpf

// Live-traffic tests beyond plain request/response: rejects as the client's
// stack sees them, and bulk transfers whose segments the local stack hands
// to tc as CHECKSUM_PARTIAL (BPF_PROG_TEST_RUN only ever sees
// CHECKSUM_NONE). Address plan as in attach_test.go, plus:
//
//	no-backend VIP   10.96.0.12:80     [fd00:96::12]:80
//	bulk VIP         10.96.0.13:90     [fd00:96::13]:90  -> server :9090

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	simNoneV4 = netip.MustParseAddr("10.96.0.12")
	simNoneV6 = netip.MustParseAddr("fd00:96::12")
	simBulkV4 = netip.MustParseAddr("10.96.0.13")
	simBulkV6 = netip.MustParseAddr("fd00:96::13")
)

const (
	simBulkPort    = 90
	simBulkBackend = 9090
)

func TestRejectedConnectionsFailAtOnce(t *testing.T) {
	d := loadTest(t)
	client, _ := trafficPods(t, d)
	for i, vip := range []netip.Addr{simNoneV4, simNoneV6} {
		for j, proto := range []Proto{TCP, UDP} {
			s := ServiceEntry{Frontend: Frontend{VIP: vip, Port: simServicePort, Proto: proto}, ID: uint32(100 + 2*i + j)}
			if err := d.Maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	attachPod(t, d, client, ModeTCX)

	for _, vip := range []netip.Addr{simNoneV4, simNoneV6} {
		addr := netip.AddrPortFrom(vip, simServicePort)
		t.Run(addr.String()+"/TCP", func(t *testing.T) {
			start := time.Now()
			c, err := client.Dial("tcp", addr, simTimeout)
			if err == nil {
				c.Close()
				t.Fatal("connection to a Service without backends succeeded")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial error %v, want connection refused", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("refusal took %s: the SYN was not answered at once", took)
			}
		})
		t.Run(addr.String()+"/UDP", func(t *testing.T) {
			c, err := client.Dial("udp", addr, simTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("anyone?")); err != nil {
				t.Fatal(err)
			}
			// A connected UDP socket reports the ICMP port unreachable
			// as ECONNREFUSED on the next read.
			_, err = c.Read(make([]byte, 64))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("read error %v, want connection refused from the ICMP error", err)
			}
		})
	}
}

func TestBulkTransferKeepsChecksumsRight(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			client, server := trafficPods(t, d)
			server.ServeTCPEcho(t, simBulkBackend)
			for i, s := range []struct{ vip, backend netip.Addr }{{simBulkV4, server.IPv4}, {simBulkV6, server.IPv6}} {
				err := d.Maps.UpsertService(ServiceEntry{
					Frontend: Frontend{VIP: s.vip, Port: simBulkPort, Proto: TCP},
					ID:       uint32(200 + i),
					Backends: []BackendEntry{{ID: uint32(200 + i), Addr: netip.AddrPortFrom(s.backend, simBulkBackend)}},
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			attachPod(t, d, client, mode)
			// 4 MiB each way: GSO super-packets with offloaded checksums
			// leave the client, and the server's come back through
			// ingress; a wrong checksum stalls the transfer.
			msg := strings.Repeat("0123456789abcdef", 256<<10)
			for _, vip := range []netip.Addr{simBulkV4, simBulkV6} {
				addr := netip.AddrPortFrom(vip, simBulkPort)
				got, err := client.TCPEcho(addr, msg, simTimeout)
				if err != nil {
					t.Fatalf("%s: %v", addr, err)
				}
				if got != server.Name+" "+msg {
					t.Fatalf("%s: answer of %d bytes differs from the %d bytes sent", addr, len(got), len(msg))
				}
			}
		})
	}
}

// UDP datagrams bigger than the MTU cross a ClusterIP, and self access,
// in IP fragments both ways: the connected socket only takes the echo if
// every fragment came back from the VIP. kube-proxy's conntrack
// reassembles them; podnic translates each (lib/frag.h).
func TestDatagramsOverTheMTUCrossAClusterIP(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	msg := strings.Repeat("over the MTU ", 400) // 5,200 bytes: 4 fragments each way
	for _, c := range []struct {
		name string
		vip  netip.Addr
		want string
	}{
		{"v4", simVIPv4, server.Name},
		{"v6", simVIPv6, server.Name},
		{"v4/self", simSelfV4, client.Name},
		{"v6/self", simSelfV6, client.Name},
	} {
		t.Run(c.name, func(t *testing.T) {
			delta := verdictDelta(t, d, verdict(DirFromPod, ReasonDNATNew), verdict(DirFromPod, ReasonSelf), verdict(DirFromPod, DropFragment))
			got, err := client.UDPEcho(netip.AddrPortFrom(c.vip, simServicePort), msg, simTimeout)
			if err != nil {
				t.Fatalf("%v (verdicts dnat-new, self-access, drop-fragment: %v)", err, delta())
			}
			if got != c.want+" "+msg {
				t.Errorf("echo of %d bytes came back as %d bytes from %q", len(msg), len(got), strings.SplitN(got, " ", 2)[0])
			}
			// dnat-new counts a new flow, self-access every packet
			// (here, every fragment).
			got4 := delta()
			if c.want == client.Name && (got4[0] != 0 || got4[1] < 4) || c.want != client.Name && got4[0] != 1 || got4[2] != 0 {
				t.Errorf("counted dnat-new %d, self-access %d, drop-fragment %d", got4[0], got4[1], got4[2])
			}
		})
	}
}
