package netdevice

// Test address plan (RFC 5737 and RFC 3849 documentation ranges):
//
//	192.0.2.10/32     the pod's IPv4 address; 192.0.2.1 its on-link gateway
//	198.51.100.0/24   a destination routed through that gateway
//	2001:db8::10/128  the pod's IPv6 address; 2001:db8::1 its gateway
//
// Every namespace and link a test creates carries this process's id:
// netns "podnic-nd-<pid>-<n>-<role>", links "nd<pid hex><role><n>", MACs
// 02:70:6e:<pid>:<n> (locally administered). An "ENI" is one end of a veth
// pair, left in the host netns with its own MAC, whose peer sits in a
// "fabric" netns, as the design (§6, a simulated node) describes. Deleting the fabric
// netns destroys the pair wherever its other end is.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var testSeq atomic.Uint32

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to create network namespaces and links")
	}
}

// newNetns creates a named netns that t.Cleanup deletes and returns its
// path.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("podnic-nd-%d-%d-%s", os.Getpid(), testSeq.Add(1), role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating netns %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// testLinkName returns a unique link name of at most 15 bytes.
func testLinkName(role string) string {
	return fmt.Sprintf("nd%x%s%d", os.Getpid(), role, testSeq.Add(1))
}

func testMAC() net.HardwareAddr {
	pid, n := os.Getpid(), testSeq.Add(1)
	return net.HardwareAddr{0x02, 0x70, 0x6e, byte(pid >> 8), byte(pid), byte(n)}
}

// testENI is a veth end waiting in the host netns, as a cloud-attached ENI
// would, with its peer (the fabric side) up in the fabric netns.
type testENI struct {
	Name   string
	MAC    net.HardwareAddr
	MTU    int
	Fabric string // fabric netns path
	Peer   string // the peer's name in the fabric netns
}

func newENI(t *testing.T, fabric string, up bool) testENI {
	t.Helper()
	e := testENI{Name: testLinkName("e"), MAC: testMAC(), MTU: 1500, Fabric: fabric, Peer: testLinkName("f")}
	fns, err := netns.GetFromPath(fabric)
	if err != nil {
		t.Fatal(err)
	}
	defer fns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: e.Name, HardwareAddr: e.MAC, MTU: e.MTU},
		PeerName:      e.Peer,
		PeerNamespace: netlink.NsFd(int(fns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth %s: %v", e.Name, err)
	}
	t.Cleanup(func() {
		// Normally gone with the fabric netns; this catches a test that
		// failed with the end in the host under another name.
		if l, err := netlink.LinkByName(e.Name); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	withLink(t, fabric, e.Peer, func(r *netnsRef, l netlink.Link) {
		if err := r.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	})
	if up {
		l, err := netlink.LinkByName(e.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// withLink looks up name in the netns at path ("" for the host) and calls
// fn with it; the test fails if the link is not there.
func withLink(t *testing.T, path, name string, fn func(*netnsRef, netlink.Link)) {
	t.Helper()
	l, r, err := lookupLink(path, name)
	if err != nil {
		t.Fatalf("looking up %s in %q: %v", name, path, err)
	}
	defer r.close()
	fn(r, l)
}

func lookupLink(path, name string) (netlink.Link, *netnsRef, error) {
	var r *netnsRef
	var err error
	if path == "" {
		r, err = currentNetns()
	} else {
		r, err = openNetns(path)
	}
	if err != nil {
		return nil, nil, err
	}
	l, err := r.nl.LinkByName(name)
	if err != nil {
		r.close()
		return nil, nil, err
	}
	return l, r, nil
}

// linkIn returns the link's attributes as the netns at path sees them.
func linkIn(t *testing.T, path, name string) *netlink.LinkAttrs {
	t.Helper()
	var a *netlink.LinkAttrs
	withLink(t, path, name, func(_ *netnsRef, l netlink.Link) { a = l.Attrs() })
	return a
}

// absentIn reports whether the netns at path has no link called name.
func absentIn(t *testing.T, path, name string) bool {
	t.Helper()
	_, r, err := lookupLink(path, name)
	if err == nil {
		r.close()
		return false
	}
	if !isLinkNotFound(err) {
		t.Fatalf("looking up %s in %q: %v", name, path, err)
	}
	return true
}

// eventually polls cond for up to five seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting: %s", what)
}

// nsResources is what a move could leak: open netns and socket fds of
// this process and names under /run/netns.
type nsResources struct {
	netnsFDs, sockets int
	named             []string
}

func snapshotResources(t *testing.T) nsResources {
	t.Helper()
	var r nsResources
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err != nil {
			continue // the directory's own fd, already closed
		}
		switch {
		case strings.HasPrefix(target, "net:["):
			r.netnsFDs++
		case strings.HasPrefix(target, "socket:["):
			r.sockets++
		}
	}
	// Other test suites may add and delete namespaces meanwhile: only
	// podnic's names count.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "podnic") {
			r.named = append(r.named, e.Name())
		}
	}
	slices.Sort(r.named)
	return r
}

func (r nsResources) equal(o nsResources) bool {
	return r.netnsFDs == o.netnsFDs && r.sockets == o.sockets && slices.Equal(r.named, o.named)
}

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
