package bpf

// Tests that run only in test/vm's guest, Debian's Linux 6.1, which has no
// TCX: the 6.1 verifier accepts the datapath, ModeAuto falls back to
// clsact, ModeTCX says what it needs, and Service traffic flows through
// the cls_bpf filters. `go test ./test/vm/` boots the guest and runs them
// there with PODNIC_IN_VM=1; anywhere else they skip. They build their
// namespaces with netlink alone, so they need no ip binary.
//
// Address plan (inside the tests' own namespaces only): the two pods'
// eth0 are the ends of one veth pair, and each pod routes the Service
// range through the other, so a VIP answers only when the programs
// translate it.
//
//	client pod   192.0.2.10/24    fd00:10::10/64   (TEST-NET-1, ULA)
//	server pod   192.0.2.20/24    fd00:10::20/64
//	Service VIP  10.96.0.10:80    [fd00:96::10]:80  -> server :8080

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/netdevice"
)

// InVMEnv marks a run inside test/vm's guest.
const InVMEnv = "PODNIC_IN_VM"

var (
	vmClientV4 = netip.MustParsePrefix("192.0.2.10/24")
	vmClientV6 = netip.MustParsePrefix("fd00:10::10/64")
	vmServerV4 = netip.MustParsePrefix("192.0.2.20/24")
	vmServerV6 = netip.MustParsePrefix("fd00:10::20/64")
	vmVIPv4    = netip.MustParseAddr("10.96.0.10")
	vmVIPv6    = netip.MustParseAddr("fd00:96::10")
	vmRoutes   = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/64")}
)

const vmOwner = "vm-test"

// inVM skips the test outside the guest, and fails it in a guest whose
// kernel is not older than 6.6: these tests are about a kernel without
// TCX.
func inVM(t *testing.T) {
	t.Helper()
	if os.Getenv(InVMEnv) != "1" {
		t.Skipf("runs only in test/vm's Linux 6.1 guest (%s=1); `go test ./test/vm/` boots it", InVMEnv)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	major, rest, _ := strings.Cut(rel, ".")
	minor, _, _ := strings.Cut(rest, ".")
	maj, _ := strconv.Atoi(major)
	mnr, _ := strconv.Atoi(minor)
	if maj > 6 || (maj == 6 && mnr >= 6) {
		t.Fatalf("kernel %s has TCX; these tests need one older than 6.6", rel)
	}
}

var vmNetnsSeq atomic.Uint32

// vmPod is a network namespace named by the test, with eth0 once wired.
type vmPod struct {
	name, path string
	v4, v6     netip.Prefix
}

// newVMNetns creates a named network namespace under /run/netns without
// the ip binary, and deletes it when the test ends.
func newVMNetns(t *testing.T, role string) *vmPod {
	t.Helper()
	name := fmt.Sprintf("pnvm%d-%d-%s", os.Getpid(), vmNetnsSeq.Add(1), role)
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace; if
		// it cannot come back, the thread stays locked and dies with
		// this goroutine.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have unshared before failing.
			if serr := netns.Set(orig); serr == nil {
				runtime.UnlockOSThread()
			}
			errc <- err
			return
		}
		_ = ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restoring netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})
	return &vmPod{name: name, path: filepath.Join("/run/netns", name)}
}

// vmPair builds the address plan: a client and a server namespace joined
// by a veth pair named eth0 at both ends, lo up in each.
func vmPair(t *testing.T) (client, server *vmPod) {
	t.Helper()
	client, server = newVMNetns(t, "client"), newVMNetns(t, "server")
	client.v4, client.v6 = vmClientV4, vmClientV6
	server.v4, server.v6 = vmServerV4, vmServerV6
	serverNs, err := unix.Open(server.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(serverNs)
	err = netdevice.InNetns(client.path, func() error {
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "eth0"},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(serverNs),
		})
	})
	if err != nil {
		t.Fatalf("adding veth pair: %v", err)
	}
	vmWire(t, client, server)
	return client, server
}

// vmWire brings up lo and eth0 of both pods, gives eth0 the pod's
// addresses, and routes the Service range through the other pod.
func vmWire(t *testing.T, client, server *vmPod) {
	t.Helper()
	for _, p := range []struct{ self, peer *vmPod }{{client, server}, {server, client}} {
		err := netdevice.InNetns(p.self.path, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(lo); err != nil {
				return err
			}
			eth0, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			for _, a := range []netip.Prefix{p.self.v4, p.self.v6} {
				addr := &netlink.Addr{IPNet: vmIPNet(a)}
				if a.Addr().Is6() {
					addr.Flags = unix.IFA_F_NODAD
				}
				if err := netlink.AddrAdd(eth0, addr); err != nil {
					return fmt.Errorf("adding %s: %w", a, err)
				}
			}
			if err := netlink.LinkSetUp(eth0); err != nil {
				return err
			}
			for _, r := range vmRoutes {
				gw := p.peer.v4.Addr()
				if r.Addr().Is6() {
					gw = p.peer.v6.Addr()
				}
				route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: vmIPNet(r), Gw: net.IP(gw.AsSlice())}
				if err := netlink.RouteAdd(route); err != nil {
					return fmt.Errorf("adding route %s via %s: %w", r, gw, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("wiring %s: %v", p.self.name, err)
		}
	}
}

func vmIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func vmIfindex(t *testing.T, p *vmPod, ifname string) int {
	t.Helper()
	var idx int
	err := netdevice.InNetns(p.path, func() error {
		l, err := netlink.LinkByName(ifname)
		if err == nil {
			idx = l.Attrs().Index
		}
		return err
	})
	if err != nil {
		t.Fatalf("finding %s in %s: %v", ifname, p.name, err)
	}
	return idx
}

func vmQuery(t *testing.T, p *vmPod, ifname string) []Attachment {
	t.Helper()
	as, err := QueryInterface(p.path, ifname)
	if err != nil {
		t.Fatalf("querying %s in %s: %v", ifname, p.name, err)
	}
	return as
}

// vmExpectNothingAttached asserts that no pin and no program of podnic's
// is left on the pod.
func vmExpectNothingAttached(t *testing.T, d *Datapath, p *vmPod) {
	t.Helper()
	if as := listAttachments(t, d.Root); len(as) != 0 {
		t.Errorf("attachments recorded: %q", attachSummary(as))
	}
	if _, err := os.Stat(filepath.Join(d.Root, "links", vmOwner)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("owner pin dir: %v", err)
	}
	for _, ifname := range []string{"eth0", "lo"} {
		if as := vmQuery(t, p, ifname); len(as) != 0 {
			t.Errorf("programs on %s: %q", ifname, attachSummary(as))
		}
	}
}

// The whole object goes through this kernel's verifier. On a rejection
// the full verifier log is printed, not cilium/ebpf's summary of it.
func TestVMDatapathPassesTheVerifierOfThisKernel(t *testing.T) {
	inVM(t)
	d, err := Load(testRoot(t))
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("loading datapath: the verifier refused a program: %v\nfull verifier log (%d lines):\n%s",
				err, len(ve.Log), strings.Join(ve.Log, "\n"))
		}
		t.Fatalf("loading datapath: %v", err)
	}
	defer d.Close()
	for name, p := range d.programsByName() {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		t.Logf("%s: verified, %d instructions processed (reported: %v)", name, n, ok)
	}
}

func TestVMAutoModeFallsBackToClsactWithoutTCX(t *testing.T) {
	inVM(t)
	d := loadTest(t)
	client, _ := vmPair(t)
	eth0, lo := vmIfindex(t, client, "eth0"), vmIfindex(t, client, "lo")

	got, err := d.AttachPod(client.path, "eth0", vmOwner, ModeAuto)
	if err != nil {
		t.Fatalf("attaching in auto mode: %v", err)
	}
	expectAttachments(t, "AttachPod auto", got,
		fmt.Sprintf("%s legacy eth0/egress podnic_from_pod@%d", vmOwner, eth0),
		fmt.Sprintf("%s legacy eth0/ingress podnic_to_pod@%d", vmOwner, eth0),
		fmt.Sprintf("%s legacy lo/egress podnic_lo_out@%d", vmOwner, lo))
	for _, a := range got {
		want := filepath.Join(d.Root, "links", vmOwner, a.Ifname, a.Hook.String()+"_legacy")
		if a.Pin != want {
			t.Errorf("%s pinned at %s, want %s", a, a.Pin, want)
		}
	}
	// The kernel's view: cls_bpf filters on clsact, podnic's by name and
	// priority, running the programs just loaded.
	q := vmQuery(t, client, "eth0")
	expectAttachments(t, "QueryInterface eth0", q,
		fmt.Sprintf("podnic legacy eth0/ingress podnic_to_pod@%d", eth0),
		fmt.Sprintf("podnic legacy eth0/egress podnic_from_pod@%d", eth0))
	expectAttachments(t, "QueryInterface lo", vmQuery(t, client, "lo"),
		fmt.Sprintf("podnic legacy lo/egress podnic_lo_out@%d", lo))
	if len(q) == 2 {
		if want := programID(t, d.Programs.ToPod); q[0].ProgramID != want {
			t.Errorf("eth0 ingress filter runs program %d, want podnic_to_pod %d", q[0].ProgramID, want)
		}
		if want := programID(t, d.Programs.FromPod); q[1].ProgramID != want {
			t.Errorf("eth0 egress filter runs program %d, want podnic_from_pod %d", q[1].ProgramID, want)
		}
	}
	expectAttachments(t, "ListAttachments", listAttachments(t, d.Root),
		fmt.Sprintf("%s legacy eth0/ingress podnic_to_pod@0", vmOwner),
		fmt.Sprintf("%s legacy eth0/egress podnic_from_pod@0", vmOwner),
		fmt.Sprintf("%s legacy lo/egress podnic_lo_out@0", vmOwner))

	// Auto mode again is idempotent and stays on clsact.
	again, err := d.AttachPod(client.path, "eth0", vmOwner, ModeAuto)
	if err != nil {
		t.Fatalf("attaching again: %v", err)
	}
	expectAttachments(t, "AttachPod auto again", again, attachSummary(got)...)
	expectAttachments(t, "QueryInterface eth0 after attaching again", vmQuery(t, client, "eth0"), attachSummary(q)...)

	if err := DetachPod(d.Root, vmOwner, client.path); err != nil {
		t.Fatalf("detaching: %v", err)
	}
	vmExpectNothingAttached(t, d, client)
}

func TestVMTCXModeSaysItNeedsLinux66(t *testing.T) {
	inVM(t)
	d := loadTest(t)
	client, _ := vmPair(t)
	_, err := d.AttachPod(client.path, "eth0", vmOwner, ModeTCX)
	if err == nil {
		t.Fatal("attaching in TCX mode succeeded on a kernel without TCX")
	}
	t.Logf("ModeTCX: %v", err)
	if !strings.Contains(err.Error(), "needs Linux >= 6.6") {
		t.Errorf("error %q does not say TCX needs Linux >= 6.6", err)
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("error %q is not ebpf.ErrNotSupported", err)
	}
	// The failed first step leaves no filter and no pin behind.
	if as := listAttachments(t, d.Root); len(as) != 0 {
		t.Errorf("attachments recorded: %q", attachSummary(as))
	}
	for _, ifname := range []string{"eth0", "lo"} {
		if as := vmQuery(t, client, ifname); len(as) != 0 {
			t.Errorf("programs on %s: %q", ifname, attachSummary(as))
		}
	}
	// Nor an empty pin dir.
	if _, err := os.Stat(filepath.Join(d.Root, "links", vmOwner)); err == nil {
		t.Errorf("the failed attach left %s behind", filepath.Join(d.Root, "links", vmOwner))
	}
	vmExpectNothingAttached(t, d, client)
}

// vmServe answers TCP lines and UDP datagrams on port in p with
// "<name> <client address> <payload>", until the test ends.
func vmServe(t *testing.T, p *vmPod, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := netdevice.InNetns(p.path, func() error {
		var err error
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening in %s: %v", p.name, err)
	}
	t.Cleanup(func() { _ = ln.Close(); _ = pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(simTimeout))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				_, _ = fmt.Fprintf(c, "%s %s %s", name, from, line)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s %s\n", name, src, buf[:n])), from)
		}
	}()
}

// vmExchange sends one line to addr from inside p and returns the answer.
func vmExchange(p *vmPod, network string, addr netip.AddrPort, msg string) (string, error) {
	var c net.Conn
	err := netdevice.InNetns(p.path, func() error {
		var err error
		c, err = net.DialTimeout(network, addr.String(), simTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(simTimeout))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	// The answer's source must be the VIP: the connected socket drops
	// anything else, so an untranslated reply reads as a timeout.
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func TestVMServiceTrafficFlowsThroughClsactFilters(t *testing.T) {
	inVM(t)
	d := loadTest(t)
	client, server := vmPair(t)
	vmServe(t, server, "server", simBackendPort)
	singleBackendServices(t, d,
		[2]netip.Addr{vmVIPv4, server.v4.Addr()}, [2]netip.Addr{vmVIPv6, server.v6.Addr()})
	as, err := d.AttachPod(client.path, "eth0", vmOwner, ModeAuto)
	if err != nil {
		t.Fatalf("attaching: %v", err)
	}
	for _, a := range as {
		if a.Mode != ModeLegacy {
			t.Fatalf("%s: auto mode chose %s on a kernel without TCX", a, a.Mode)
		}
	}
	t.Cleanup(func() {
		if err := DetachPod(d.Root, vmOwner, client.path); err != nil {
			t.Errorf("detaching: %v", err)
		}
	})

	for _, proto := range []Proto{UDP, TCP} {
		for _, fam := range []struct {
			name     string
			vip, src netip.Addr
		}{{"v4", vmVIPv4, client.v4.Addr()}, {"v6", vmVIPv6, client.v6.Addr()}} {
			t.Run(fam.name+"/"+proto.String(), func(t *testing.T) {
				delta := verdictDelta(t, d, verdict(DirFromPod, ReasonDNATNew), verdict(DirToPod, ReasonRevNAT))
				network := strings.ToLower(proto.String())
				vip := netip.AddrPortFrom(fam.vip, simServicePort)
				got, err := vmExchange(client, network, vip, "ping")
				if err != nil {
					t.Fatalf("%s %s: %v (dnat-new, reverse-nat counted: %v)", network, vip, err, delta())
				}
				// The backend saw the client's own address: DNAT only.
				if want := fmt.Sprintf("server %s ping", fam.src); got != want {
					t.Errorf("answer %q, want %q", got, want)
				}
				n := delta()
				if n[0] != 1 || n[1] == 0 {
					t.Errorf("counted dnat-new %d and reverse-nat %d, want 1 and at least 1", n[0], n[1])
				}
			})
		}
	}
}
