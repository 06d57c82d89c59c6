package bpf

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/test/simnode"
)

// udpSocket opens an unconnected UDP socket in the pod, of the family of
// v6, bounded by simTimeout.
func udpSocket(t *testing.T, p *simnode.Pod, v6 bool) *net.UDPConn {
	t.Helper()
	network, addr := "udp4", "0.0.0.0:0"
	if v6 {
		network, addr = "udp6", "[::]:0"
	}
	var pc net.PacketConn
	err := p.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	_ = pc.SetDeadline(time.Now().Add(simTimeout))
	return pc.(*net.UDPConn)
}

// udpConnect connects a UDP socket in the pod to addr.
func udpConnect(t *testing.T, p *simnode.Pod, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := p.Dial("udp", addr, simTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.UDPConn)
}

// udpAsk sends msg (to addr, unless the socket is connected) and returns
// the echo server's answer (its pod's name) and where the answer came from
// as the socket's recvfrom() names it.
func udpAsk(c *net.UDPConn, addr netip.AddrPort, msg string) (name string, from netip.AddrPort, err error) {
	if addr.IsValid() {
		_, err = c.WriteToUDPAddrPort([]byte(msg), addr)
	} else {
		_, err = c.Write([]byte(msg))
	}
	if err != nil {
		return "", from, err
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", from, err
	}
	name, rest, _ := strings.Cut(string(buf[:n]), " ")
	if rest != msg {
		return "", from, errors.New("answer " + string(buf[:n]) + " does not echo " + msg)
	}
	return name, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

// UDP to a Service is balanced at the socket: a connected socket at
// connect(), an unconnected one at its first datagram to the Service, which
// later datagrams follow. No packet is translated by tc, and the socket
// sees the Service as its peer and as the source of every answer, as it
// would through kube-proxy.
func TestSocketLBBalancesUDP(t *testing.T) {
	d := loadTest(t)
	client, _ := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)

	for _, tc := range []struct {
		name string
		vip  netip.Addr
		want string
	}{
		{"v4", simVIPv4, "server"},
		{"v6", simVIPv6, "server"},
		{"v4/self", simSelfV4, client.Name},
		{"v6/self", simSelfV6, client.Name},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vip := netip.AddrPortFrom(tc.vip, simServicePort)
			// A connected socket is balanced at connect(), an unconnected
			// one at its first datagram to the Service; the others follow.
			for _, connected := range []bool{true, false} {
				name := map[bool]string{true: "connected", false: "unconnected"}[connected]
				t.Run(name, func(t *testing.T) {
					delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB),
						verdict(DirFromPod, ReasonDNATNew), verdict(DirFromPod, ReasonSelf))
					var c *net.UDPConn
					to := vip
					if connected {
						c, to = udpConnect(t, client, vip), netip.AddrPort{}
						if got := c.RemoteAddr().String(); got != vip.String() {
							t.Errorf("getpeername says %s, want the Service %s", got, vip)
						}
					} else {
						c = udpSocket(t, client, tc.vip.Is6())
					}
					for i := range 3 {
						name, from, err := udpAsk(c, to, "ping")
						if err != nil {
							t.Fatalf("datagram %d: %v (verdicts %v)", i, err, delta())
						}
						if name != tc.want || from != vip {
							t.Errorf("datagram %d: answered by %s from %s, want %s from %s", i, name, from, tc.want, vip)
						}
					}
					if got := delta(); got[0] != 1 || got[1] != 0 || got[2] != 0 {
						t.Errorf("counted socket-lb %d, tc dnat-new %d, tc self-access %d; want 1, 0, 0", got[0], got[1], got[2])
					}
				})
			}
		})
	}
}

// A UDP socket stays on its backend only while the backend serves the
// Service, as kube-proxy's conntrack entry does: an unconnected socket's
// next datagram goes to a backend still there, and a connected socket's
// datagrams to the backend that left are moved by tc, their answers still
// named as the Service. When the Service itself is gone, the connected
// socket is refused (ICMP port unreachable: ECONNREFUSED).
func TestSocketLBMovesUDPOffABackendThatLeft(t *testing.T) {
	d := loadTest(t)
	n := simnode.New(t)
	client := n.AddPod("client", simClientV4, simClientV6)
	server := n.AddPod("server", simServerV4, simServerV6)
	other := n.AddPod("other", netip.MustParsePrefix("192.0.2.30/32"), netip.MustParsePrefix("fd00:10::30/128"))
	for _, p := range []*simnode.Pod{client, server, other} {
		p.ServeUDPEcho(t, simBackendPort)
	}
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)

	for i, tc := range []struct {
		name string
		vip  netip.Addr
		to   *simnode.Pod // the backend left after the server leaves
		v6   bool
		tc   [2]int // the verdict that counts the moved datagrams
	}{
		{"v4", netip.MustParseAddr("10.96.0.60"), other, false, verdict(DirFromPod, ReasonDNATCT)},
		{"v6", netip.MustParseAddr("fd00:96::60"), other, true, verdict(DirFromPod, ReasonDNATCT)},
		{"v4/self", netip.MustParseAddr("10.96.0.61"), client, false, verdict(DirFromPod, ReasonSelf)},
		{"v6/self", netip.MustParseAddr("fd00:96::61"), client, true, verdict(DirFromPod, ReasonSelf)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := uint32(200 + 10*i)
			vip := netip.AddrPortFrom(tc.vip, simServicePort)
			front := Frontend{VIP: tc.vip, Port: simServicePort, Proto: UDP}
			err := d.Maps.UpsertService(ServiceEntry{
				Frontend: front,
				ID:       id,
				Backends: []BackendEntry{{ID: id, Addr: netip.AddrPortFrom(server.Addr(tc.v6), simBackendPort)}},
			})
			if err != nil {
				t.Fatal(err)
			}
			connected := udpConnect(t, client, vip)
			unconnected := udpSocket(t, client, tc.v6)
			ask := func(what string, c *net.UDPConn, to netip.AddrPort, want string) {
				t.Helper()
				name, from, err := udpAsk(c, to, "ping")
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if name != want || from != vip {
					t.Errorf("%s: answered by %s from %s, want %s from %s", what, name, from, want, vip)
				}
			}
			ask("connected, before", connected, netip.AddrPort{}, server.Name)
			ask("unconnected, before", unconnected, vip, server.Name)

			// The server leaves: the other pod is the one backend.
			err = d.Maps.UpsertService(ServiceEntry{
				Frontend: front,
				ID:       id,
				Backends: []BackendEntry{{ID: id + 1, Addr: netip.AddrPortFrom(tc.to.Addr(tc.v6), simBackendPort)}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Maps.DeleteBackend(id); err != nil { // as the agent does when no Service has it
				t.Fatal(err)
			}
			delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), tc.tc)
			for range 2 {
				ask("connected, after", connected, netip.AddrPort{}, tc.to.Name)
				ask("unconnected, after", unconnected, vip, tc.to.Name)
			}
			// The unconnected socket moved at the socket, once; the
			// connected one's datagrams are moved by tc.
			if got := delta(); got[0] != 1 || got[1] < 1 {
				t.Errorf("counted socket-lb %d, tc %d; want 1, at least 1", got[0], got[1])
			}

			if err := d.Maps.DeleteService(front); err != nil {
				t.Fatal(err)
			}
			if err := d.Maps.DeleteBackend(id + 1); err != nil {
				t.Fatal(err)
			}
			if _, _, err := udpAsk(connected, netip.AddrPort{}, "ping"); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("connected, Service deleted: %v, want connection refused", err)
			}
		})
	}
}
