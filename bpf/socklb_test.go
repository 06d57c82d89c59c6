package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/test/simnode"
)

// socketLB attaches the socket-level programs to the node's cgroup v2 root
// for the test's datapath; they see every connect() on this machine but
// act only in the netns AttachPod registered with this datapath.
func socketLB(t *testing.T, d *Datapath) {
	t.Helper()
	if err := d.AttachSocketLB(testCgroup2(t), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DetachSocketLB(d.Root); err != nil {
			t.Error(err)
		}
	})
}

// testCgroup2 is the cgroup v2 directory the socket-level programs attach
// to in tests.
func testCgroup2(t *testing.T) string { return simnode.CgroupV2(t, CgroupV2Mount) }

// lbAddrsOf returns the registered pods' addresses, one entry per netns.
func lbAddrsOf(t *testing.T, d *Datapath) []lbAddrs {
	t.Helper()
	var (
		k   uint64
		v   lbAddrs
		out []lbAddrs
	)
	it := d.Maps.LBAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func lbNetnsCount(t *testing.T, d *Datapath) int {
	t.Helper()
	var (
		k uint64
		v podnicPnLbNetns
		n int
	)
	it := d.Maps.LBNetns.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// A TCP connect() to a Service from a registered pod goes to a backend
// directly: the socket-level program counts it, the tc programs translate
// nothing, the backend sees the client's address, and getpeername (which
// Go's net.Dial reads for RemoteAddr) still names the Service.
func TestSocketLBConnectsStraightToTheBackend(t *testing.T) {
	d := loadTest(t)
	client, _ := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)
	if n := lbNetnsCount(t, d); n != 1 {
		t.Fatalf("%d netns registered for socket LB, want 1", n)
	}

	for _, tc := range []struct {
		name     string
		vip, src netip.Addr
		want     string
	}{
		{"v4", simVIPv4, client.IPv4, "server"},
		{"v6", simVIPv6, client.IPv6, "server"},
		{"v4/self", simSelfV4, client.IPv4, client.Name},
		{"v6/self", simSelfV6, client.IPv6, client.Name},
	} {
		t.Run(tc.name, func(t *testing.T) {
			delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB),
				verdict(DirFromPod, ReasonDNATNew), verdict(DirFromPod, ReasonSelf))
			vip := netip.AddrPortFrom(tc.vip, simServicePort)
			body, err := client.HTTPGet("http://"+vip.String()+"/", simTimeout)
			if err != nil {
				t.Fatalf("%v (verdicts: %v)", err, delta())
			}
			if name, from := answeredBy(body); name != tc.want || from != tc.src {
				t.Errorf("answer %q, want %s answering %s", body, tc.want, tc.src)
			}
			if got := delta(); got[0] != 1 || got[1] != 0 || got[2] != 0 {
				t.Errorf("counted socket-lb %d, tc dnat-new %d, tc self-access %d; want 1, 0, 0", got[0], got[1], got[2])
			}

			conn, err := client.Dial("tcp", vip, simTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.RemoteAddr().String(); got != vip.String() {
				t.Errorf("getpeername says %s, want the Service %s", got, vip)
			}
		})
	}
}

// What the socket-level programs leave alone still works through tc: UDP
// to a Service without endpoints (tc answers the datagram with an ICMP
// error: connect() of a UDP socket sends nothing to refuse), and every
// connect() of a pod that was never registered.
func TestSocketLBLeavesTheRestToTC(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)

	vip4 := netip.AddrPortFrom(simVIPv4, simServicePort)
	t.Run("udp-without-endpoints", func(t *testing.T) {
		empty := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.61"), simServicePort)
		err := d.Maps.UpsertService(ServiceEntry{
			Frontend: Frontend{VIP: empty.Addr(), Port: empty.Port(), Proto: UDP},
			ID:       61,
		})
		if err != nil {
			t.Fatal(err)
		}
		delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), verdict(DirFromPod, ReasonReject))
		if _, err := client.UDPEcho(empty, "ping", simTimeout); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("got %v, want connection refused", err)
		}
		if got := delta(); got[0] != 0 || got[1] != 1 {
			t.Errorf("counted socket-lb %d, tc reject %d; want 0, 1", got[0], got[1])
		}
	})

	t.Run("unregistered-pod", func(t *testing.T) {
		// The server pod has no podnic: its connect() is not touched and
		// the VIP means nothing there (it leaves by the default route and
		// the fabric drops it), so a short timeout is expected.
		delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB))
		if _, err := server.Dial("tcp", vip4, 300*time.Millisecond); err == nil {
			t.Errorf("an unregistered pod reached the Service")
		}
		if got := delta(); got[0] != 0 {
			t.Errorf("counted socket-lb %d for an unregistered pod", got[0])
		}
	})
}

// A connect() to a Service without endpoints is refused at once by the
// socket program, as kube-proxy's reject refuses it: ECONNREFUSED, and no
// SYN for tc to answer. A VIP no Service has any more is still refused by
// tc (a RST), which knows the Service CIDRs.
func TestSocketLBRefusesAServiceWithoutEndpoints(t *testing.T) {
	d := loadTest(t)
	client, _ := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)
	if err := d.Maps.SetServiceCIDRs([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/64")}); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name      string
		vip, gone netip.Addr
	}{
		{"v4", netip.MustParseAddr("10.96.0.51"), netip.MustParseAddr("10.96.0.52")},
		{"v6", netip.MustParseAddr("fd00:96::51"), netip.MustParseAddr("fd00:96::52")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.Maps.UpsertService(ServiceEntry{
				Frontend: Frontend{VIP: tc.vip, Port: simServicePort, Proto: TCP},
				ID:       uint32(101 + i),
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				what        string
				vip         netip.Addr
				socket, rst uint64
			}{
				{"without endpoints", tc.vip, 1, 0},
				{"deleted", tc.gone, 0, 1},
			} {
				delta := verdictDelta(t, d, verdict(DirSocket, ReasonReject), verdict(DirFromPod, ReasonReject))
				start := time.Now()
				_, err = client.Dial("tcp", netip.AddrPortFrom(c.vip, simServicePort), simTimeout)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("%s: dial: %v, want connection refused", c.what, err)
				}
				if el := time.Since(start); el > time.Second {
					t.Errorf("%s: refused after %v, want at once", c.what, el)
				}
				if got := delta(); got[0] != c.socket || got[1] != c.rst {
					t.Errorf("%s: refused at connect %d, by a RST from tc %d; want %d, %d", c.what, got[0], got[1], c.socket, c.rst)
				}
			}
		})
	}
}

// Session affinity is kept at connect(): every connection of the pod goes
// to one backend, keyed by the pod's own address as tc keys it; when that
// backend leaves the Service the next connection goes to another. A pod
// whose address is not known falls back to tc, which keeps affinity too.
func TestSocketLBKeepsSessionAffinity(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)

	for i, tc := range []struct {
		name             string
		vip, self, other netip.Addr
	}{
		{"v4", netip.MustParseAddr("10.96.0.50"), client.IPv4, server.IPv4},
		{"v6", netip.MustParseAddr("fd00:96::50"), client.IPv6, server.IPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := uint32(100 + 10*i)
			entry := ServiceEntry{
				Frontend: Frontend{VIP: tc.vip, Port: simServicePort, Proto: TCP},
				ID:       id,
				Affinity: time.Minute,
				Backends: []BackendEntry{
					{ID: id, Addr: netip.AddrPortFrom(tc.other, simBackendPort)},
					{ID: id + 1, Addr: netip.AddrPortFrom(tc.self, simBackendPort)},
				},
			}
			if err := d.Maps.UpsertService(entry); err != nil {
				t.Fatal(err)
			}
			url := "http://" + netip.AddrPortFrom(tc.vip, simServicePort).String() + "/"
			get := func() string {
				t.Helper()
				body, err := client.HTTPGet(url, simTimeout)
				if err != nil {
					t.Fatal(err)
				}
				name, _ := answeredBy(body)
				return name
			}

			delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), verdict(DirFromPod, ReasonDNATNew))
			first := get()
			for range 7 {
				if got := get(); got != first {
					t.Fatalf("answered by %s after %s: affinity not kept", got, first)
				}
			}
			if got := delta(); got[0] != 8 || got[1] != 0 {
				t.Errorf("counted socket-lb %d, tc dnat-new %d; want 8, 0", got[0], got[1])
			}
			var v AffinityValue
			if err := d.Maps.Affinity.Lookup(AffinityKey{Client: AddrFrom(tc.self), ServiceID: id}, &v); err != nil {
				t.Errorf("no affinity entry for the pod's address %s: %v", tc.self, err)
			}

			// The chosen backend leaves the Service: the next
			// connection goes to the one left.
			left := entry
			left.Backends = nil
			want := client.Name
			for _, b := range entry.Backends {
				if (b.Addr.Addr() == tc.self) == (first == client.Name) {
					continue
				}
				left.Backends = append(left.Backends, b)
				if b.Addr.Addr() == tc.other {
					want = server.Name
				}
			}
			if err := d.Maps.UpsertService(left); err != nil {
				t.Fatal(err)
			}
			if got := get(); got != want {
				t.Errorf("answered by %s after %s left the Service, want %s", got, first, want)
			}
			if err := d.Maps.UpsertService(entry); err != nil {
				t.Fatal(err)
			}

			// Without the pod's addresses, tc balances and keeps it.
			var cookie uint64
			var addrs lbAddrs
			it := d.Maps.LBAddrs.Iterate()
			for it.Next(&cookie, &addrs) {
				if err := d.Maps.LBAddrs.Delete(cookie); err != nil {
					t.Fatal(err)
				}
			}
			delta = verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB),
				verdict(DirFromPod, ReasonDNATNew), verdict(DirFromPod, ReasonSelf))
			first = get()
			for range 3 {
				if got := get(); got != first {
					t.Fatalf("through tc: answered by %s after %s", got, first)
				}
			}
			// dnat-new counts new flows, self-access every packet.
			if got := delta(); got[0] != 0 || got[1]+got[2] < 4 {
				t.Errorf("without addresses: counted socket-lb %d, tc dnat-new %d and self-access %d; want 0 and at least 4 from tc", got[0], got[1], got[2])
			}
			attachPod(t, d, client, ModeAuto) // registers the addresses again
		})
	}
}

// DetachPod unregisters the pod's netns, also when the netns is gone; the
// node-wide links come and go with AttachSocketLB / DetachSocketLB, and
// attaching again is idempotent.
func TestSocketLBRegistrationFollowsThePod(t *testing.T) {
	d := loadTest(t)
	n := simnode.New(t)
	a := n.AddPod("a", simClientV4, simClientV6)
	b := n.AddPod("b", simServerV4, simServerV6)
	for _, p := range []*simnode.Pod{a, b} {
		if _, err := d.AttachPod(p.NetnsPath, p.Ifname, p.Netns, ModeAuto); err != nil {
			t.Fatal(err)
		}
	}
	socketLB(t, d)
	socketLB(t, d) // again: updates the links in place

	names, err := SocketLBAttached(d.Root)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	want := []string{ProgConnect4, ProgConnect6, ProgGetPeer4, ProgGetPeer6, ProgRecvmsg4, ProgRecvmsg6, ProgSendmsg4, ProgSendmsg6}
	if len(names) != len(want) {
		t.Fatalf("socket LB links %q, want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("socket LB links %q, want %q", names, want)
		}
	}
	if got := lbNetnsCount(t, d); got != 2 {
		t.Fatalf("%d netns registered, want 2", got)
	}
	addrs := lbAddrsOf(t, d)
	if len(addrs) != 2 {
		t.Fatalf("addresses of %d netns registered, want 2", len(addrs))
	}
	for _, p := range []*simnode.Pod{a, b} {
		found := false
		for _, x := range addrs {
			found = found || (x.V4.IP() == p.IPv4 && x.V6.IP() == p.IPv6)
		}
		if !found {
			t.Errorf("pod %s's addresses %s, %s not registered: %v", p.Name, p.IPv4, p.IPv6, addrs)
		}
	}

	if err := DetachPod(d.Root, a.Netns, a.NetnsPath); err != nil {
		t.Fatal(err)
	}
	if got := lbNetnsCount(t, d); got != 1 {
		t.Errorf("%d netns registered after detaching a, want 1", got)
	}
	if err := b.DeleteNetns(); err != nil {
		t.Fatal(err)
	}
	if err := DetachPod(d.Root, b.Netns, ""); err != nil {
		t.Fatal(err)
	}
	if got := lbNetnsCount(t, d); got != 0 {
		t.Errorf("%d netns registered after detaching b with its netns gone, want 0", got)
	}
	if got := lbAddrsOf(t, d); len(got) != 0 {
		t.Errorf("addresses left registered after both pods left: %v", got)
	}

	if err := DetachSocketLB(d.Root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.Root, "cgroup")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup link pins left: %v", err)
	}
	if err := DetachSocketLB(d.Root); err != nil {
		t.Errorf("detaching twice: %v", err)
	}
}

func TestAttachSocketLBRefusesANonCgroupPath(t *testing.T) {
	d := loadTest(t)
	err := d.AttachSocketLB(t.TempDir(), true)
	if err == nil {
		t.Fatal("attached to a plain directory")
	}
	if names, _ := SocketLBAttached(d.Root); len(names) != 0 {
		t.Errorf("links pinned after a refused attach: %q", names)
	}
}

func TestFindCgroup2Mount(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	body := "22 1 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
		"30 22 0:26 /sub /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n" +
		"31 22 0:26 / /run/my\\040cg rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := findCgroup2Mount(f)
	if err != nil || got != "/run/my cg" {
		t.Errorf("found %q, %v; want the root mount %q", got, err, "/run/my cg")
	}
	if err := os.WriteFile(f, []byte(body[:len(body)-len("31 22 0:26 / /run/my\\040cg rw,nosuid shared:9 - cgroup2 cgroup2 rw\n")]), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := findCgroup2Mount(f); err != nil || got != "" {
		t.Errorf("found %q, %v; want none", got, err)
	}
}

// A container on a cgroup v2 node has a cgroup namespace of its own: a
// cgroup v2 mount there shows its own cgroup as the root, so the node's
// root must be given explicitly. CgroupV2Root refuses rather than attach
// where no pod's socket is.
func TestCgroupV2RootRefusesInACgroupNamespaceOfItsOwn(t *testing.T) {
	if err := inInitialCgroupNamespace("/proc/thread-self/ns/cgroup"); err != nil {
		t.Fatalf("the test runs in the initial cgroup namespace: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		// This thread never goes back: it exits with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		_, err := CgroupV2Root()
		errc <- err
	}()
	if err := <-errc; !errors.Is(err, ErrCgroupNamespace) {
		t.Errorf("CgroupV2Root in a new cgroup namespace: %v, want ErrCgroupNamespace", err)
	}
}

// Without peer names (--socket-lb-peer-name=false) nothing is stored per
// socket and getpeername() names the backend the socket really talks to;
// the getpeername programs are not attached at all.
func TestSocketLBWithoutPeerNames(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	cg := testCgroup2(t)
	if err := d.AttachSocketLB(cg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DetachSocketLB(d.Root); err != nil {
			t.Error(err)
		}
	})
	if err := d.AttachSocketLB(cg, false); err != nil { // switched off in place
		t.Fatal(err)
	}
	names, err := SocketLBAttached(d.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n == ProgGetPeer4 || n == ProgGetPeer6 {
			t.Errorf("%s still attached", n)
		}
	}
	delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB))
	conn, err := client.Dial("tcp", netip.AddrPortFrom(simVIPv4, simServicePort), simTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, want := conn.RemoteAddr().String(), netip.AddrPortFrom(server.IPv4, simBackendPort).String(); got != want {
		t.Errorf("getpeername says %s, want the backend %s", got, want)
	}
	if got := delta(); got[0] != 1 {
		t.Errorf("counted socket-lb %d, want 1", got[0])
	}
}

// lbPeer is a podnic_lbpeer_v2 slot as the test reads and writes it.
type lbPeer struct {
	Cookie          uint64
	Svc, Be         Addr
	SvcPort, BePort [2]byte // network order
	Tag             uint32
}

// peerTag is pn_peer_tag (lib/sock.h): the words are the fields as the
// program loads them, little-endian.
func peerTag(p lbPeer) uint32 {
	mix := func(h, w uint32) uint32 {
		h ^= w
		h *= 0x9e3779b1
		return h ^ h>>15
	}
	word := func(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
	h := uint32(0x7064636b)
	h = mix(h, uint32(p.Cookie))
	h = mix(h, uint32(p.Cookie>>32))
	for i := 0; i < 4; i++ {
		h = mix(h, word(p.Svc[4*i:]))
		h = mix(h, word(p.Be[4*i:]))
	}
	svcPort := uint32(binary.LittleEndian.Uint16(p.SvcPort[:]))
	bePort := uint32(binary.LittleEndian.Uint16(p.BePort[:]))
	h = mix(h, svcPort<<16|bePort)
	return h | 1
}

// tagged returns p with its tag set, as connect() writes it.
func tagged(p lbPeer) lbPeer {
	p.Tag = peerTag(p)
	return p
}

func portBytes(p uint16) [2]byte { return [2]byte{byte(p >> 8), byte(p)} }

// socketCookie reads a connected socket's cookie and returns a function
// asking the kernel for its peer (not Go's copy of it from connect time).
func socketCookie(t *testing.T, c net.Conn) (cookie uint64, peer func() netip.AddrPort) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sysErr error
	if err := raw.Control(func(fd uintptr) {
		cookie, sysErr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil || sysErr != nil {
		t.Fatalf("reading SO_COOKIE: %v %v", err, sysErr)
	}
	return cookie, func() netip.AddrPort {
		t.Helper()
		var sa unix.Sockaddr
		if err := raw.Control(func(fd uintptr) { sa, sysErr = unix.Getpeername(int(fd)) }); err != nil || sysErr != nil {
			t.Fatalf("getpeername: %v %v", err, sysErr)
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		}
		t.Fatalf("getpeername: %T", sa)
		return netip.AddrPort{}
	}
}

// getpeername() names the Service from the socket's slot in
// podnic_lbpeer_v2 only while the slot holds the socket's own cookie, the
// socket's peer is the backend the slot names, and the slot's tag matches
// its fields: a slot taken over by a newer socket, naming another backend,
// or caught half rewritten, changes nothing.
func TestGetPeerNameFollowsTheSocketsSlot(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)
	attachPod(t, d, client, ModeAuto)
	socketLB(t, d)
	vip := netip.AddrPortFrom(simVIPv4, simServicePort)
	backend := netip.AddrPortFrom(server.IPv4, simBackendPort)
	slots := uint64(d.Maps.LBPeers.MaxEntries())
	peerSlot := func(cookie uint64) uint32 { return uint32(cookie % slots) }
	slotOf := func(cookie uint64) lbPeer {
		t.Helper()
		var p lbPeer
		if err := d.Maps.LBPeers.Lookup(peerSlot(cookie), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	put := func(cookie uint64, p lbPeer) {
		t.Helper()
		if err := d.Maps.LBPeers.Put(peerSlot(cookie), p); err != nil {
			t.Fatal(err)
		}
	}

	balanced, err := client.Dial("tcp", vip, simTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer balanced.Close()
	cookie, peer := socketCookie(t, balanced)
	want := tagged(lbPeer{Cookie: cookie, Svc: AddrFrom(simVIPv4), Be: AddrFrom(server.IPv4),
		SvcPort: portBytes(simServicePort), BePort: portBytes(simBackendPort)})
	if got := slotOf(cookie); got != want {
		t.Errorf("slot of the balanced socket %d: %+v, want %+v", cookie, got, want)
	}
	if p := peer(); p != vip {
		t.Errorf("getpeername of the balanced socket: %s, want %s", p, vip)
	}
	// A newer socket whose cookie falls on the same slot takes it over.
	newer := want
	newer.Cookie = cookie + slots
	put(cookie, tagged(newer))
	if p := peer(); p != backend {
		t.Errorf("getpeername after the slot was taken over: %s, want the backend %s", p, backend)
	}

	direct, err := client.Dial("tcp", backend, simTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	cookie, peer = socketCookie(t, direct)
	if got := slotOf(cookie); got.Cookie == cookie {
		t.Errorf("a socket connected straight to the backend has a slot: %+v", got)
	}
	if p := peer(); p != backend {
		t.Errorf("getpeername without a slot: %s, want %s", p, backend)
	}
	other := want
	other.Cookie = cookie
	other.Be = AddrFrom(client.IPv4)
	put(cookie, tagged(other))
	if p := peer(); p != backend {
		t.Errorf("getpeername with a slot naming another backend: %s, want %s", p, backend)
	}
	mine := want
	mine.Cookie = cookie
	put(cookie, tagged(mine))
	if p := peer(); p != vip {
		t.Errorf("getpeername with a matching slot: %s, want %s", p, vip)
	}
	// Half rewritten by another CPU: the fields match, the tag does not.
	torn := tagged(mine)
	torn.Svc = AddrFrom(simSelfV4)
	put(cookie, torn)
	if p := peer(); p != backend {
		t.Errorf("getpeername with a torn slot: %s, want the backend %s", p, backend)
	}
}

// A CNI plugin newer than the loaded datapath finds no podnic_lbaddr_v1:
// it still attaches pods and lists them for socket-level balancing, and
// session affinity for them stays with tc.
func TestAttachWithoutTheAddressMapOfANewerBuild(t *testing.T) {
	d := loadTest(t)
	if err := os.Remove(filepath.Join(mapsDir(d.Root), "podnic_lbaddr_v1")); err != nil {
		t.Fatal(err)
	}
	old, err := OpenPinned(d.Root)
	if err != nil {
		t.Fatalf("opening a datapath without podnic_lbaddr_v1: %v", err)
	}
	defer old.Close()
	if old.Maps.LBAddrs != nil {
		t.Fatal("podnic_lbaddr_v1 opened though its pin is gone")
	}
	n := simnode.New(t)
	p := n.AddPod("a", simClientV4, simClientV6)
	if _, err := old.AttachPod(p.NetnsPath, p.Ifname, p.Netns, ModeAuto); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DetachPod(d.Root, p.Netns, p.NetnsPath) })
	if got := lbNetnsCount(t, d); got != 1 {
		t.Errorf("%d netns registered, want 1", got)
	}
	if got := lbAddrsOf(t, d); len(got) != 0 {
		t.Errorf("addresses registered in the unpinned map: %v", got)
	}
	if err := DetachPod(d.Root, p.Netns, p.NetnsPath); err != nil {
		t.Errorf("detaching without podnic_lbaddr_v1 pinned: %v", err)
	}
}
