package cni_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/netdevice"
	"github.com/podnic/podnic/test/simnode"
)

// serve answers every TCP connection on port inside the pod with the pod's
// name, until the test ends.
func serve(t *testing.T, p pod, port int) {
	t.Helper()
	var ln net.Listener
	err := netdevice.InNetns(p.netns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening in %s: %v", p.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", p.name)
			c.Close()
		}
	}()
}

// clusterIPsAnswer adds, per family, a TCP Service on port 80 whose backend
// is the server pod and one whose backend is the client itself (port 8080,
// where serve answers), and checks that the client reaches each through
// its ClusterIP. addrsOf holds each pod's addresses in CIDR notation.
func clusterIPsAnswer(t *testing.T, n *node, client, server pod, addrsOf map[string][]string) {
	t.Helper()
	id := uint32(1)
	for _, v6 := range []bool{false, true} {
		vip, self := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11")
		if v6 {
			vip, self = netip.MustParseAddr("fd00:96::10"), netip.MustParseAddr("fd00:96::11")
		}
		for _, s := range []struct {
			vip     netip.Addr
			backend pod
		}{{vip, server}, {self, client}} {
			b := netip.AddrPortFrom(podAddr(t, addrsOf[s.backend.name], v6), 8080)
			err := n.dp.Maps.UpsertService(bpf.ServiceEntry{
				Frontend: bpf.Frontend{VIP: s.vip, Port: 80, Proto: bpf.TCP}, ID: id,
				Backends: []bpf.BackendEntry{{ID: id, Addr: b}},
			})
			if err != nil {
				t.Fatal(err)
			}
			id++
			got, err := ask(t, client, netip.AddrPortFrom(s.vip, 80))
			if err != nil {
				t.Fatalf("connecting to %s from pod %s: %v", s.vip, client.name, err)
			}
			if got != s.backend.name {
				t.Errorf("%s answered by %q, want %s", s.vip, got, s.backend.name)
			}
		}
	}
}

// ask connects from inside the pod and returns the first line answered.
func ask(t *testing.T, p pod, addr netip.AddrPort) (string, error) {
	t.Helper()
	var c net.Conn
	err := netdevice.InNetns(p.netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func podAddr(t *testing.T, ips []string, v6 bool) netip.Addr {
	t.Helper()
	for _, s := range ips {
		p := netip.MustParsePrefix(s)
		if p.Addr().Is6() == v6 {
			return p.Addr()
		}
	}
	t.Fatalf("no %v address in %v", v6, ips)
	return netip.Addr{}
}

func TestClusterIPAndSelfAccessWorkFromAPluginPod(t *testing.T) {
	n := newNode(t)
	client, server := n.addPod("client"), n.addPod("server")
	addrsOf := map[string][]string{}
	for i, p := range []pod{client, server} {
		e := n.addENI(i + 1)
		l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String()}))
		r, err := n.add(l, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.del(l, p) })
		for _, ip := range r.IPs {
			addrsOf[p.name] = append(addrsOf[p.name], ip.Address.String())
		}
		serve(t, p, 8080)
	}
	clusterIPsAnswer(t, n, client, server, addrsOf)
	// The translation really ran in the pod's programs.
	for _, r := range []bpf.Reason{bpf.ReasonDNATNew, bpf.ReasonSelf} {
		if c, _ := n.dp.Maps.Verdicts(bpf.DirFromPod, r); c == 0 {
			t.Errorf("no %s verdict counted", r)
		}
	}
}

func TestChainedAfterHostDeviceAttachesAndDetaches(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) { chainedCase(t, v) })
	}
}

func chainedCase(t *testing.T, v string) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	first := []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"eni-pool","type":"host-device","device":%q,
		"ipam":{"type":"static","addresses":[{"address":"10.1.0.77/24","gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]}}`, v, e.name))
	// "chained" may be left out, as in docs/cni.md's example: no device
	// and no ipam after another plugin say it. Both ways are tested.
	chained := map[string]any{"ipam": nil, "chained": true}
	if v == "1.1.0" {
		delete(chained, "chained")
	}
	second := n.conf(v, chained)
	l := n.list(first, second)
	r, err := n.add(l, p)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.1.0.77/24" {
		t.Errorf("chained result lost the earlier plugin's address: %+v", r.IPs)
	}
	if got := attachedPrograms(t, p, "eth0"); !slices.Equal(got, []string{"egress:podnic_from_pod", "ingress:podnic_to_pod"}) {
		t.Errorf("programs on eth0: %v", got)
	}
	if err := n.cni.CheckNetworkList(t.Context(), l, p.rt()); err != nil && v != "0.3.1" {
		t.Errorf("CHECK: %v", err)
	}
	if err := n.del(l, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if as := n.pins(t); len(as) != 0 {
		t.Errorf("pins left: %+v", as)
	}
	if _, ok := link(t, "", e.name); !ok {
		t.Fatal("host-device did not return the ENI")
	}
	expectNoProgramsOnHost(t, e)
}

func TestChainedWithoutPrevResultIsRefused(t *testing.T) {
	n := newNode(t)
	p := n.addPod("pod")
	_, err := n.add(n.list(n.conf("1.1.0", map[string]any{"ipam": nil, "chained": true})), p)
	if err == nil || !strings.Contains(err.Error(), "prevResult") {
		t.Errorf("chained ADD without an earlier plugin: %v", err)
	}
}

func TestUpstreamIPAMPluginsServeThePod(t *testing.T) {
	for _, c := range []struct {
		name string
		ipam map[string]any
		want string
	}{
		{"host-local", map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.120", "gateway": "10.1.0.1"}}}}, "10.1.0.100/24"},
		{"static", map[string]any{"type": "static", "addresses": []map[string]string{{"address": "10.1.0.88/24", "gateway": "10.1.0.1"}}}, "10.1.0.88/24"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			if c.name == "host-local" {
				c.ipam["dataDir"] = t.TempDir()
			}
			e := n.addENI(1)
			p := n.addPod("pod")
			l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String(), "ipam": c.ipam}))
			r, err := n.add(l, p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if len(r.IPs) != 1 || r.IPs[0].Address.String() != c.want {
				t.Errorf("IPs %+v, want %s", r.IPs, c.want)
			}
			in, _ := link(t, p.name, "eth0")
			if !slices.Contains(in.addrs(), c.want) {
				t.Errorf("pod eth0 has %v, want %s", in.addrs(), c.want)
			}
			if !strings.Contains(routes(t, p.name, false), "default via 10.1.0.1 dev eth0") {
				t.Errorf("no default route via the gateway:\n%s", routes(t, p.name, false))
			}
			if err := n.del(l, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			expectBackOnHost(t, e)
			if c.name == "host-local" {
				// host-local released the address: ADD again gets it again.
				p2 := n.addPod("again")
				r2, err := n.add(l, p2)
				if err != nil {
					t.Fatal(err)
				}
				if r2.IPs[0].Address.String() != c.want && r2.IPs[0].Address.String() != "10.1.0.101/24" {
					t.Errorf("second ADD got %s", r2.IPs[0].Address.String())
				}
				_ = n.del(l, p2)
			}
		})
	}
}

// BenchmarkAddDel runs ADD then DEL through libcni, as a runtime does, and
// reports the p50 and p99 latency of each. Run with -benchtime 200x.
func BenchmarkAddDel(b *testing.B) {
	n := newNode(b)
	e := n.addENI(1)
	mode := os.Getenv("PODNIC_BENCH_ATTACH_MODE") // e.g. legacy, to compare
	if mode == "" {
		mode = "auto"
	}
	l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String(), "attachMode": mode}))
	var adds, dels []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		p := n.addPod(fmt.Sprintf("b%d", i))
		b.StartTimer()
		start := time.Now()
		if _, err := n.cni.AddNetworkList(b.Context(), l, p.rt()); err != nil {
			b.Fatal(err)
		}
		adds = append(adds, time.Since(start))
		start = time.Now()
		if err := n.cni.DelNetworkList(b.Context(), l, p.rt()); err != nil {
			b.Fatal(err)
		}
		dels = append(dels, time.Since(start))
		b.StopTimer()
		sh(b, "ip", "netns", "del", p.name)
		b.StartTimer()
	}
	b.ReportMetric(pct(adds, 50), "add-p50-ms")
	b.ReportMetric(pct(adds, 99), "add-p99-ms")
	b.ReportMetric(pct(dels, 50), "del-p50-ms")
	b.ReportMetric(pct(dels, 99), "del-p99-ms")
}

func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return float64(s[i].Microseconds()) / 1000
}

// A pod the plugin attaches on the socket path gets podnic_guard alone on
// its NIC, and reaches ClusterIPs, itself included, through the
// socket-level programs (UDP and what the guard refuses are tested in
// bpf).
func TestSocketPathPodReachesClusterIPs(t *testing.T) {
	n := newNode(t)
	if err := n.dp.AttachSocketLB(simnode.CgroupV2(t, bpf.CgroupV2Mount), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.DetachSocketLB(n.root) })
	client, server := n.addPod("client"), n.addPod("server")
	addrsOf := map[string][]string{}
	for i, p := range []pod{client, server} {
		e := n.addENI(i + 1)
		l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String(), "servicePath": "socket"}))
		r, err := n.add(l, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.del(l, p) })
		for _, ip := range r.IPs {
			addrsOf[p.name] = append(addrsOf[p.name], ip.Address.String())
		}
		as, err := bpf.QueryInterface(p.netns, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		lo, err := bpf.QueryInterface(p.netns, "lo")
		if err != nil {
			t.Fatal(err)
		}
		if len(as) != 1 || as[0].ProgramName != bpf.ProgGuard || as[0].Hook != bpf.Egress || len(lo) != 0 {
			t.Fatalf("pod %s: eth0 runs %v, lo %v; want %s on egress alone", p.name, as, lo, bpf.ProgGuard)
		}
		if err := n.cni.CheckNetworkList(t.Context(), l, p.rt()); err != nil {
			t.Errorf("CHECK of the socket-path pod %s: %v", p.name, err)
		}
		serve(t, p, 8080)
	}
	clusterIPsAnswer(t, n, client, server, addrsOf)
	if c, _ := n.dp.Maps.Verdicts(bpf.DirSocket, bpf.ReasonSocketLB); c != 4 {
		t.Errorf("%d connections balanced at the socket, want 4", c)
	}
	for _, r := range []bpf.Reason{bpf.ReasonDNATNew, bpf.ReasonSelf} {
		if c, _ := n.dp.Maps.Verdicts(bpf.DirFromPod, r); c != 0 {
			t.Errorf("%d %s verdicts on the socket path, want none", c, r)
		}
	}
}

// serveUDP answers every datagram on port inside the pod with the pod's
// name, until the test ends.
func serveUDP(t *testing.T, p pod, port int) {
	t.Helper()
	var pc net.PacketConn
	err := netdevice.InNetns(p.netns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening for UDP in %s: %v", p.name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(p.name), from)
		}
	}()
}

// A connected UDP socket balanced at the socket stays on its backend until
// the backend leaves; then its datagrams move to another backend, on the
// full path, even where the pods share a subnet and the socket's frames
// are addressed to the old backend's MAC (the bridged /24 here): the moved
// datagram's next hop is looked up again.
func TestConnectedUDPSocketMovesOffABackendThatLeftOnASharedSubnet(t *testing.T) {
	n := newNode(t)
	if err := n.dp.AttachSocketLB(simnode.CgroupV2(t, bpf.CgroupV2Mount), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.DetachSocketLB(n.root) })
	pods := []pod{n.addPod("client"), n.addPod("first"), n.addPod("second")}
	addr := map[string]netip.Addr{}
	for i, p := range pods {
		e := n.addENI(i + 1)
		l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String()}))
		r, err := n.add(l, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.del(l, p) })
		var ips []string
		for _, ip := range r.IPs {
			ips = append(ips, ip.Address.String())
		}
		addr[p.name] = podAddr(t, ips, false)
		serveUDP(t, p, 8080)
	}
	vip := netip.MustParseAddrPort("10.96.0.20:53")
	front := bpf.Frontend{VIP: vip.Addr(), Port: vip.Port(), Proto: bpf.UDP}
	upsert := func(id uint32, backend string) {
		t.Helper()
		err := n.dp.Maps.UpsertService(bpf.ServiceEntry{Frontend: front, ID: 1,
			Backends: []bpf.BackendEntry{{ID: id, Addr: netip.AddrPortFrom(addr[backend], 8080)}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	upsert(10, pods[1].name)

	var c net.Conn
	err := netdevice.InNetns(pods[0].netns, func() error {
		var err error
		c, err = net.Dial("udp", vip.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	askUDP := func() string {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		return string(buf[:k])
	}
	if got := askUDP(); got != pods[1].name {
		t.Fatalf("answered by %q, want %s", got, pods[1].name)
	}
	upsert(11, pods[2].name)
	if err := n.dp.Maps.DeleteBackend(10); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := askUDP(); got != pods[2].name {
			t.Fatalf("after the first backend left: answered by %q, want %s", got, pods[2].name)
		}
	}
}
