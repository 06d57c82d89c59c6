package bpf

// Namespace tests: the pinned programs attached to a simulated node's pods
// on the real kernel, then real TCP and UDP through them.
//
// Address plan (inside the test's own namespaces only; every test builds
// its own fabric, so parallel runs never see each other's packets):
//
//	client pod     192.0.2.10/32     fd00:10::10/128   (TEST-NET-1, ULA)
//	server pod     192.0.2.20/32     fd00:10::20/128
//	Service VIP    10.96.0.10:80     [fd00:96::10]:80  -> server :8080
//	self VIP       10.96.0.11:80     [fd00:96::11]:80  -> client :8080
//	gateway        169.254.1.1       fe80::1           (simnode's fabric)
//
// The fabric has no route to any VIP, so a VIP answers only when the
// programs translate it; the verdict counters confirm they did.

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/test/simnode"
)

var (
	simClientV4 = netip.MustParsePrefix("192.0.2.10/32")
	simClientV6 = netip.MustParsePrefix("fd00:10::10/128")
	simServerV4 = netip.MustParsePrefix("192.0.2.20/32")
	simServerV6 = netip.MustParsePrefix("fd00:10::20/128")
	simVIPv4    = netip.MustParseAddr("10.96.0.10")
	simVIPv6    = netip.MustParseAddr("fd00:96::10")
	simSelfV4   = netip.MustParseAddr("10.96.0.11")
	simSelfV6   = netip.MustParseAddr("fd00:96::11")
)

const (
	simOwner       = "c0ffee-test_1"
	simServicePort = 80
	simBackendPort = 8080
	simTimeout     = 5 * time.Second
)

var attachModes = []Mode{ModeTCX, ModeLegacy}

// simPod builds a node with one pod, the client.
func simPod(t *testing.T) (*simnode.Node, *simnode.Pod) {
	t.Helper()
	n := simnode.New(t)
	return n, n.AddPod("client", simClientV4, simClientV6)
}

func attachPod(t *testing.T, d *Datapath, p *simnode.Pod, mode Mode) []Attachment {
	t.Helper()
	as, err := d.AttachPod(p.NetnsPath, p.Ifname, simOwner, mode)
	if err != nil {
		t.Fatalf("attaching in %s mode: %v", mode, err)
	}
	return as
}

func podIfindex(t *testing.T, p *simnode.Pod, ifname string) int {
	t.Helper()
	var idx int
	err := p.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	})
	if err != nil {
		t.Fatalf("finding %s in pod %s: %v", ifname, p.Name, err)
	}
	return idx
}

func programID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	id, _, err := programIdentity(p)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// attachSummary renders attachments as "owner mode ifname/hook name@ifindex".
func attachSummary(as []Attachment) []string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s %s %s/%s %s@%d", a.Owner, a.Mode, a.Ifname, a.Hook, a.ProgramName, a.Ifindex))
	}
	return out
}

func expectAttachments(t *testing.T, what string, got []Attachment, want ...string) {
	t.Helper()
	g := attachSummary(got)
	if !slices.Equal(g, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, g, want)
	}
}

func queryInterface(t *testing.T, p *simnode.Pod, ifname string) []Attachment {
	t.Helper()
	as, err := QueryInterface(p.NetnsPath, ifname)
	if err != nil {
		t.Fatalf("querying %s: %v", ifname, err)
	}
	return as
}

func listAttachments(t *testing.T, root string) []Attachment {
	t.Helper()
	as, err := ListAttachments(root)
	if err != nil {
		t.Fatalf("listing attachments: %v", err)
	}
	return as
}

func TestAttachedProgramsAreListedAndQueried(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			eth0, lo := podIfindex(t, p, "eth0"), podIfindex(t, p, "lo")

			got := attachPod(t, d, p, mode)
			expectAttachments(t, "AttachPod", got,
				fmt.Sprintf("%s %s eth0/egress podnic_from_pod@%d", simOwner, mode, eth0),
				fmt.Sprintf("%s %s eth0/ingress podnic_to_pod@%d", simOwner, mode, eth0),
				fmt.Sprintf("%s %s lo/egress podnic_lo_out@%d", simOwner, mode, lo))
			for _, a := range got {
				wantPin := filepath.Join(d.Root, "links", simOwner, a.Ifname, a.Hook.String()+"_"+string(mode))
				if a.Pin != wantPin {
					t.Errorf("%s pinned at %s, want %s", a, a.Pin, wantPin)
				}
				if _, err := os.Stat(a.Pin); err != nil {
					t.Errorf("pin of %s: %v", a, err)
				}
			}
			if got[0].ProgramID != programID(t, d.Programs.FromPod) {
				t.Errorf("egress program id %d, want the loaded podnic_from_pod %d", got[0].ProgramID, programID(t, d.Programs.FromPod))
			}

			// Legacy pins do not record the ifindex; TCX links know it.
			idx := func(i int) int {
				if mode == ModeLegacy {
					return 0
				}
				return i
			}
			expectAttachments(t, "ListAttachments", listAttachments(t, d.Root),
				fmt.Sprintf("%s %s eth0/ingress podnic_to_pod@%d", simOwner, mode, idx(eth0)),
				fmt.Sprintf("%s %s eth0/egress podnic_from_pod@%d", simOwner, mode, idx(eth0)),
				fmt.Sprintf("%s %s lo/egress podnic_lo_out@%d", simOwner, mode, idx(lo)))

			expectAttachments(t, "QueryInterface eth0", queryInterface(t, p, "eth0"),
				fmt.Sprintf("podnic %s eth0/ingress podnic_to_pod@%d", mode, eth0),
				fmt.Sprintf("podnic %s eth0/egress podnic_from_pod@%d", mode, eth0))
			expectAttachments(t, "QueryInterface lo", queryInterface(t, p, "lo"),
				fmt.Sprintf("podnic %s lo/egress podnic_lo_out@%d", mode, lo))

			if mode == ModeLegacy {
				out, err := p.Run("tc", "filter", "show", "dev", "eth0", "egress")
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out, "podnic_from_pod") || !strings.Contains(out, fmt.Sprintf("pref %d", LegacyPriority)) {
					t.Errorf("tc filter show does not name podnic's filter:\n%s", out)
				}
			}
		})
	}
}

// ModeAuto falls back to clsact only when TCX attach fails with
// ErrNotSupported; on a kernel with TCX (>= 6.6) it must pick TCX for the
// NIC. lo always gets clsact in auto mode: it never moves, and a TCX link
// costs an RCU grace period to attach and to detach. Switching a pod
// attached before (lo by TCX) leaves one program on lo.
func TestAutoModeAttachesWithTCXWhenTheKernelHasIt(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	attachPod(t, d, p, ModeTCX)
	for _, a := range attachPod(t, d, p, ModeAuto) {
		want := ModeTCX
		if a.Ifname == loopback {
			want = ModeLegacy
		}
		if a.Mode != want {
			t.Errorf("%s: auto mode chose %s, want %s", a, a.Mode, want)
		}
	}
	if got := queryInterface(t, p, loopback); len(got) != 1 || got[0].Mode != ModeLegacy {
		t.Errorf("lo carries %q, want podnic_lo_out once, by clsact", attachSummary(got))
	}
	expectAttachments(t, "listed", listAttachments(t, d.Root),
		fmt.Sprintf("%s tcx %s/ingress podnic_to_pod@%d", simOwner, p.Ifname, podIfindex(t, p, p.Ifname)),
		fmt.Sprintf("%s tcx %s/egress podnic_from_pod@%d", simOwner, p.Ifname, podIfindex(t, p, p.Ifname)),
		fmt.Sprintf("%s legacy lo/egress podnic_lo_out@0", simOwner))
}

func TestReattachIsIdempotentAndFollowsReload(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			attachPod(t, d, p, mode)
			first := queryInterface(t, p, "eth0")
			attachPod(t, d, p, mode)
			expectAttachments(t, "after a second attach", queryInterface(t, p, "eth0"), attachSummary(first)...)

			// A reload brings new programs; attaching again moves the pod
			// to them (TCX: link update in place) and leaves no old copy.
			d2, err := Load(d.Root)
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			attachPod(t, d2, p, mode)
			got := queryInterface(t, p, "eth0")
			if len(got) != 2 {
				t.Fatalf("after attaching the reloaded programs: %q", attachSummary(got))
			}
			if want := programID(t, d2.Programs.FromPod); got[1].ProgramID != want {
				t.Errorf("egress runs program %d, want the reloaded %d", got[1].ProgramID, want)
			}
			if len(listAttachments(t, d.Root)) != 3 {
				t.Errorf("ListAttachments: %q", attachSummary(listAttachments(t, d.Root)))
			}
		})
	}
}

func TestSwitchingAttachModeLeavesOneProgramPerHook(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	eth0 := podIfindex(t, p, "eth0")
	attachPod(t, d, p, ModeLegacy)
	attachPod(t, d, p, ModeTCX)
	expectAttachments(t, "legacy then TCX", queryInterface(t, p, "eth0"),
		fmt.Sprintf("podnic tcx eth0/ingress podnic_to_pod@%d", eth0),
		fmt.Sprintf("podnic tcx eth0/egress podnic_from_pod@%d", eth0))
	attachPod(t, d, p, ModeLegacy)
	expectAttachments(t, "TCX then legacy", queryInterface(t, p, "eth0"),
		fmt.Sprintf("podnic legacy eth0/ingress podnic_to_pod@%d", eth0),
		fmt.Sprintf("podnic legacy eth0/egress podnic_from_pod@%d", eth0))
	if n := len(listAttachments(t, d.Root)); n != 3 {
		t.Errorf("%d attachments recorded, want 3", n)
	}
}

func TestAttachRefusesUnsafeNames(t *testing.T) {
	d := loadTest(t)
	for _, c := range []struct{ ifname, owner string }{
		{"eth0", "../x"}, {"eth0", "a.b"}, {"eth0", ""}, {"eth0", strings.Repeat("a", 129)},
		{"eth0.1", "ok"}, {"a/b", "ok"}, {"lo", "ok"}, {"averyveryverylongname", "ok"},
	} {
		if _, err := d.AttachPod("", c.ifname, c.owner, ModeTCX); !errors.Is(err, ErrInvalidName) {
			t.Errorf("AttachPod(%q, %q): got %v, want ErrInvalidName", c.ifname, c.owner, err)
		}
	}
	if _, err := d.AttachPod("", "eth0", "ok", Mode("fast")); err == nil {
		t.Error("AttachPod accepted mode \"fast\"")
	}
}

// expectDetached asserts that nothing of podnic's is left: no pins, no
// programs on the pod's interfaces.
func expectDetached(t *testing.T, d *Datapath, p *simnode.Pod) {
	t.Helper()
	if as := listAttachments(t, d.Root); len(as) != 0 {
		t.Errorf("attachments left: %q", attachSummary(as))
	}
	if _, err := os.Stat(filepath.Join(d.Root, "links", simOwner)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("owner pin dir left: %v", err)
	}
	if p != nil {
		for _, ifname := range []string{"eth0", "lo"} {
			if as := queryInterface(t, p, ifname); len(as) != 0 {
				t.Errorf("programs left on %s: %q", ifname, attachSummary(as))
			}
		}
	}
}

func TestDetachRemovesPinsAndProgramsAndIsIdempotent(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			attachPod(t, d, p, mode)
			if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
				t.Fatalf("detaching: %v", err)
			}
			expectDetached(t, d, p)
			if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
				t.Errorf("detaching again: %v", err)
			}
			if err := DetachPod(d.Root, "never-attached", p.NetnsPath); err != nil {
				t.Errorf("detaching an unknown owner: %v", err)
			}
		})
	}
}

// linkIDs returns the ids of the TCX links pinned for simOwner.
func linkIDs(t *testing.T, as []Attachment) []link.ID {
	t.Helper()
	var ids []link.ID
	for _, a := range as {
		if a.Mode != ModeTCX {
			continue
		}
		l, err := link.LoadPinnedLink(a.Pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		_ = l.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	return ids
}

func linkExists(t *testing.T, id link.ID) bool {
	t.Helper()
	l, err := link.NewFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatalf("opening link %d: %v", id, err)
	}
	_ = l.Close()
	return true
}

// Observed on 6.18: deleting the pod's netns destroys its veth and lo, which
// detaches the TCX programs, but the pinned links stay, defunct (Info
// reports ifindex 0), until DetachPod unpins them. Nothing but the pin
// holds them: no process keeps the netns alive.
func TestPinnedTCXLinkOutlivesNetnsUntilDetach(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	ids := linkIDs(t, attachPod(t, d, p, ModeTCX))
	if len(ids) != 3 {
		t.Fatalf("got %d TCX links, want 3", len(ids))
	}
	if err := p.DeleteNetns(); err != nil {
		t.Fatal(err)
	}
	// The netns is torn down asynchronously once its last user is gone.
	deadline := time.Now().Add(simTimeout)
	var as []Attachment
	for {
		as = listAttachments(t, d.Root)
		defunct := len(as) == 3
		for _, a := range as {
			defunct = defunct && a.Ifindex == 0
		}
		if defunct || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(as) != 3 {
		t.Fatalf("pins after netns deletion: %q", attachSummary(as))
	}
	for _, a := range as {
		if a.Ifindex != 0 {
			t.Errorf("%s still reports ifindex %d after its netns was deleted", a, a.Ifindex)
		}
	}
	for _, id := range ids {
		if !linkExists(t, id) {
			t.Errorf("link %d is gone before DetachPod; the leak this test guards against did not happen", id)
		}
	}
	if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
		t.Fatalf("detaching after netns deletion: %v", err)
	}
	expectDetached(t, d, nil)
	for _, id := range ids {
		if linkExists(t, id) {
			t.Errorf("link %d outlived DetachPod", id)
		}
	}
}

// kernelHasTCX reports whether this kernel has TCX links (Linux >= 6.6),
// probing with an interface that does not exist.
func kernelHasTCX(t *testing.T) bool {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		_ = l.Close()
		t.Fatal("attached a TCX link to an interface that does not exist")
	}
	return !errors.Is(err, ebpf.ErrNotSupported)
}

// AttachNICBeforeMove makes the NIC's TCX links ahead of AttachPod, which
// then keeps them (in auto mode where the kernel has TCX); in legacy mode
// it leaves everything to AttachPod.
func TestLinksAttachedBeforeTheMoveAreKeptByAttachPod(t *testing.T) {
	for _, mode := range []Mode{ModeAuto, ModeTCX, ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			var attached bool
			err := p.Do(func() error {
				l, err := netlink.LinkByName(p.Ifname)
				if err != nil {
					return err
				}
				attached, err = d.AttachNICBeforeMove(l.Attrs().Index, p.Ifname, simOwner, mode, PathFull)
				return err
			})
			if err != nil {
				t.Fatalf("attaching before the move: %v", err)
			}
			before := listAttachments(t, d.Root)
			want := mode == ModeTCX || mode == ModeAuto && kernelHasTCX(t)
			if attached != want || len(before) != map[bool]int{true: 2}[attached] {
				t.Fatalf("attached %v, pins %q", attached, attachSummary(before))
			}
			ids := linkIDs(t, before)
			as := attachPod(t, d, p, mode)
			for _, id := range ids {
				if !slices.Contains(linkIDs(t, as), id) {
					t.Errorf("AttachPod replaced link %d made before the move: %q", id, attachSummary(as))
				}
			}
			if n := len(queryInterface(t, p, p.Ifname)); n != 2 {
				t.Errorf("%d programs on %s, want 2", n, p.Ifname)
			}
			if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
				t.Fatal(err)
			}
			expectDetached(t, d, p)
		})
	}
}

// DetachPodDeferred leaves each TCX link in place running a pass-through
// program, and its release unpins them: the kernel then detaches them on
// its own, from a workqueue, with nothing of podnic's left.
func TestDeferredDetachParksLinksThenTheKernelDetachesThem(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeAuto, ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			ids := linkIDs(t, attachPod(t, d, p, mode))
			release, err := DetachPodDeferred(d.Root, simOwner, p.NetnsPath)
			if err != nil {
				t.Fatalf("detaching: %v", err)
			}
			// Parked: the same links, still pinned, run the pass-through
			// program; the clsact filters are gone, their pins not yet.
			for _, a := range listAttachments(t, d.Root) {
				if a.Mode == ModeTCX && a.ProgramName != PassThroughProgram {
					t.Errorf("before release: %s", a)
				}
			}
			for _, ifname := range []string{"eth0", "lo"} {
				for _, a := range queryInterface(t, p, ifname) {
					if a.Mode != ModeTCX || a.ProgramName != PassThroughProgram {
						t.Errorf("before release, %s runs %s", ifname, a)
					}
				}
			}
			for _, id := range ids {
				if !linkExists(t, id) {
					t.Errorf("link %d detached before release", id)
				}
			}
			if err := release(); err != nil {
				t.Fatalf("releasing: %v", err)
			}
			if as := listAttachments(t, d.Root); len(as) != 0 {
				t.Errorf("attachments left after release: %q", attachSummary(as))
			}
			waitDetached(t, p, ids)
			expectDetached(t, d, p)
			release, err = DetachPodDeferred(d.Root, simOwner, p.NetnsPath)
			if err != nil {
				t.Fatalf("detaching again: %v", err)
			}
			if err := release(); err != nil {
				t.Errorf("releasing again: %v", err)
			}
		})
	}
}

// A pod attached to the interface while an earlier pod's links wait for
// the kernel runs behind their pass-through program, and keeps its own
// links when the kernel detaches the earlier ones.
func TestNewLinksRunBehindParkedOnesAndOutliveThem(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	old := linkIDs(t, attachPod(t, d, p, ModeTCX))
	release, err := DetachPodDeferred(d.Root, simOwner, p.NetnsPath)
	if err != nil {
		t.Fatalf("detaching: %v", err)
	}
	const next = "next-pod"
	as, err := d.AttachPod(p.NetnsPath, p.Ifname, next, ModeTCX)
	if err != nil {
		t.Fatalf("attaching the next pod while the old links are parked: %v", err)
	}
	hookPrograms := func() map[Hook][]string {
		out := map[Hook][]string{}
		for _, a := range queryInterface(t, p, p.Ifname) {
			out[a.Hook] = append(out[a.Hook], a.ProgramName)
		}
		return out
	}
	// TCX runs a hook's programs in this order; TCX_NEXT hands on.
	got := hookPrograms()
	if want := []string{PassThroughProgram, ProgToPod}; !slices.Equal(got[Ingress], want) {
		t.Errorf("ingress runs %v, want %v", got[Ingress], want)
	}
	if want := []string{PassThroughProgram, ProgFromPod}; !slices.Equal(got[Egress], want) {
		t.Errorf("egress runs %v, want %v", got[Egress], want)
	}
	if err := release(); err != nil {
		t.Fatalf("releasing: %v", err)
	}
	waitDetached(t, nil, old)
	deadline := time.Now().Add(simTimeout)
	for got = hookPrograms(); !slices.Equal(got[Ingress], []string{ProgToPod}) || !slices.Equal(got[Egress], []string{ProgFromPod}); got = hookPrograms() {
		if time.Now().After(deadline) {
			t.Fatalf("%v after the old links' pins went, want only the next pod's programs", got)
		}
		time.Sleep(time.Millisecond)
	}
	for _, id := range linkIDs(t, as) {
		if !linkExists(t, id) {
			t.Errorf("the next pod's link %d went with the old ones", id)
		}
	}
	if err := DetachPod(d.Root, next, p.NetnsPath); err != nil {
		t.Fatal(err)
	}
}

// The pass-through program hands every packet on: TCX_NEXT.
func TestPassThroughProgramReturnsTCXNext(t *testing.T) {
	prog, err := loadPassThrough()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	ret, _, err := prog.Test(make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	if int32(ret) != tcxNext {
		t.Errorf("returned %d, want TCX_NEXT (%d)", int32(ret), tcxNext)
	}
}

func TestDeferredDetachAfterNetnsDeletionLeavesNothing(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	ids := linkIDs(t, attachPod(t, d, p, ModeTCX))
	if err := p.DeleteNetns(); err != nil {
		t.Fatal(err)
	}
	release, err := DetachPodDeferred(d.Root, simOwner, p.NetnsPath)
	if err != nil {
		t.Fatalf("detaching after netns deletion: %v", err)
	}
	if err := release(); err != nil {
		t.Fatalf("releasing: %v", err)
	}
	expectDetached(t, d, nil)
	waitDetached(t, nil, ids)
}

// waitDetached waits, bounded, until the kernel has freed the links and,
// with p, detached every program from p's eth0 and lo. The link's id goes
// first, the program a grace period later.
func waitDetached(t *testing.T, p *simnode.Pod, ids []link.ID) {
	t.Helper()
	start := time.Now()
	attached := func() []Attachment {
		if p == nil {
			return nil
		}
		return append(queryInterface(t, p, "eth0"), queryInterface(t, p, "lo")...)
	}
	for _, id := range ids {
		for linkExists(t, id) {
			if time.Since(start) > simTimeout {
				t.Fatalf("link %d still exists %v after its last pin went", id, simTimeout)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for as := attached(); len(as) > 0; as = attached() {
		for _, a := range as {
			if a.ProgramName != PassThroughProgram {
				t.Fatalf("%s runs after its pins went", a)
			}
		}
		if time.Since(start) > simTimeout {
			t.Fatalf("programs still attached %v after their pins went: %q", simTimeout, attachSummary(as))
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("the kernel detached %d links %v after their pins went", len(ids), time.Since(start).Round(time.Millisecond))
}

func TestDetachAfterNetnsDeletionLeavesNoPins(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			_, p := simPod(t)
			attachPod(t, d, p, mode)
			if err := p.DeleteNetns(); err != nil {
				t.Fatal(err)
			}
			if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
				t.Fatalf("detaching after netns deletion: %v", err)
			}
			expectDetached(t, d, nil)
			if err := DetachPod(d.Root, simOwner, ""); err != nil {
				t.Errorf("detaching again without a netns: %v", err)
			}
		})
	}
}

// foreignProgram is another owner's tc program: it passes everything on.
func foreignProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "foreign_prog",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, -1), // TC_ACT_UNSPEC: the next program runs
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("loading foreign program: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// addForeignFilter puts prog on the hook of eth0 in p as another owner's
// clsact filter would be.
func addForeignFilter(t *testing.T, p *simnode.Pod, prog *ebpf.Program, h Hook, prio uint16) {
	t.Helper()
	err := p.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := ensureClsact(l); err != nil {
			return err
		}
		return netlink.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: l.Attrs().Index, Parent: h.clsactParent(), Handle: 1,
				Priority: prio, Protocol: unix.ETH_P_ALL,
			},
			Fd: prog.FD(), Name: "foreign_prog", DirectAction: true,
		})
	})
	if err != nil {
		t.Fatalf("adding foreign filter: %v", err)
	}
}

func TestForeignProgramsSurviveAttachAndDetach(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	eth0 := podIfindex(t, p, "eth0")
	prog := foreignProgram(t)
	addForeignFilter(t, p, prog, Egress, 1)
	var foreignLink link.Link
	err := p.Do(func() error {
		var err error
		foreignLink, err = link.AttachTCX(link.TCXOptions{Interface: eth0, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		t.Fatalf("attaching foreign TCX program: %v", err)
	}
	defer foreignLink.Close()

	for _, mode := range attachModes {
		attachPod(t, d, p, mode)
		if err := DetachPod(d.Root, simOwner, p.NetnsPath); err != nil {
			t.Fatalf("detaching %s: %v", mode, err)
		}
		expectAttachments(t, "after "+string(mode)+" attach and detach", queryInterface(t, p, "eth0"),
			fmt.Sprintf(" tcx eth0/ingress foreign_prog@%d", eth0),
			fmt.Sprintf(" legacy eth0/egress foreign_prog@%d", eth0))
	}
}

func TestFailedAttachUndoesEarlierStepsAndKeepsForeignFilter(t *testing.T) {
	d := loadTest(t)
	_, p := simPod(t)
	eth0 := podIfindex(t, p, "eth0")
	// Another owner's filter at podnic's priority on ingress: podnic must
	// not replace it, so the second step (ingress) fails after the first
	// (egress) succeeded.
	addForeignFilter(t, p, foreignProgram(t), Ingress, LegacyPriority)
	_, err := d.AttachPod(p.NetnsPath, "eth0", simOwner, ModeLegacy)
	if err == nil || !strings.Contains(err.Error(), "podnic does not own") {
		t.Fatalf("attaching over a foreign filter at podnic's priority: got %v", err)
	}
	expectAttachments(t, "after the failed attach", queryInterface(t, p, "eth0"),
		fmt.Sprintf(" legacy eth0/ingress foreign_prog@%d", eth0))
	if as := listAttachments(t, d.Root); len(as) != 0 {
		t.Errorf("pins left by the failed attach: %q", attachSummary(as))
	}
}

// trafficPods builds a node with a client and a server pod, the Services
// of the address plan, and servers on :8080 in both pods (HTTP and UDP
// echo).
func trafficPods(t *testing.T, d *Datapath) (client, server *simnode.Pod) {
	t.Helper()
	n := simnode.New(t)
	client = n.AddPod("client", simClientV4, simClientV6)
	server = n.AddPod("server", simServerV4, simServerV6)
	for _, p := range []*simnode.Pod{client, server} {
		p.ServeHTTP(t, simBackendPort)
		p.ServeUDPEcho(t, simBackendPort)
	}
	singleBackendServices(t, d,
		[2]netip.Addr{simVIPv4, server.IPv4}, [2]netip.Addr{simVIPv6, server.IPv6},
		[2]netip.Addr{simSelfV4, client.IPv4}, [2]netip.Addr{simSelfV6, client.IPv6})
	return client, server
}

// singleBackendServices adds, for each (VIP, backend) pair, a TCP and a
// UDP Service on simServicePort whose one backend listens on
// simBackendPort; ids count from 1.
func singleBackendServices(t *testing.T, d *Datapath, pairs ...[2]netip.Addr) {
	t.Helper()
	id := uint32(1)
	for _, pair := range pairs {
		for _, proto := range []Proto{TCP, UDP} {
			err := d.Maps.UpsertService(ServiceEntry{
				Frontend: Frontend{VIP: pair[0], Port: simServicePort, Proto: proto},
				ID:       id,
				Backends: []BackendEntry{{ID: id, Addr: netip.AddrPortFrom(pair[1], simBackendPort)}},
			})
			if err != nil {
				t.Fatal(err)
			}
			id++
		}
	}
}

// verdictDelta returns a function that reports how often each verdict was
// counted since verdictDelta was called.
func verdictDelta(t *testing.T, d *Datapath, vs ...[2]int) func() []uint64 {
	t.Helper()
	read := func() []uint64 {
		var out []uint64
		for _, v := range vs {
			n, err := d.Maps.Verdicts(Dir(v[0]), Reason(v[1]))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, n)
		}
		return out
	}
	before := read()
	return func() []uint64 {
		after := read()
		for i := range after {
			after[i] -= before[i]
		}
		return after
	}
}

// answeredBy splits simnode's HTTP answer "<pod> <client addr:port>".
func answeredBy(body string) (string, netip.Addr) {
	name, from, _ := strings.Cut(body, " ")
	ap, err := netip.ParseAddrPort(from)
	if err != nil {
		return name, netip.Addr{}
	}
	return name, ap.Addr().Unmap()
}

func verdict(dir Dir, r Reason) [2]int { return [2]int{int(dir), int(r)} }

// checkFlows sends UDP, then TCP (HTTP), from client to each VIP of
// family v4 and v6 and checks who answered and that the programs
// translated. UDP goes first: a finished TCP connection's last packets
// may still be counted after it returns, and UDP's counts are exact.
func checkFlows(t *testing.T, d *Datapath, client *simnode.Pod, vips map[string]netip.Addr, self bool) {
	// Where the first packet is counted, and where the reply is.
	out, back, wantName := verdict(DirFromPod, ReasonDNATNew), verdict(DirToPod, ReasonRevNAT), "server"
	if self {
		out, back, wantName = verdict(DirFromPod, ReasonSelf), verdict(DirLo, ReasonRevNAT), client.Name
	}
	for _, proto := range []Proto{UDP, TCP} {
		for _, fam := range []string{"v4", "v6"} {
			vip := netip.AddrPortFrom(vips[fam], simServicePort)
			src := client.IPv4
			if fam == "v6" {
				src = client.IPv6
			}
			t.Run(fam+"/"+proto.String(), func(t *testing.T) {
				delta := verdictDelta(t, d, out, back)
				if proto == UDP {
					got, err := client.UDPEcho(vip, "ping", simTimeout)
					if err != nil {
						t.Fatalf("%v (verdicts counted: %v)", err, delta())
					}
					if want := wantName + " ping"; got != want {
						t.Errorf("answer %q, want %q", got, want)
					}
					if got := delta(); got[0] != 1 || got[1] != 1 {
						t.Errorf("counted %s/%s %d and %s/%s %d, want 1 and 1",
							Dir(out[0]), Reason(out[1]), got[0], Dir(back[0]), Reason(back[1]), got[1])
					}
					return
				}
				body, err := client.HTTPGet("http://"+vip.String()+"/", simTimeout)
				if err != nil {
					t.Fatalf("%v (verdicts counted: %v)", err, delta())
				}
				// The backend saw the client's own address: DNAT only.
				if name, from := answeredBy(body); name != wantName || from != src {
					t.Errorf("answer %q, want %s answering %s", body, wantName, src)
				}
				// A new TCP flow is counted dnat-new once (its SYN); self
				// access counts every packet of the flow as self-access.
				got := delta()
				if (!self && got[0] != 1) || got[0] == 0 || got[1] == 0 {
					t.Errorf("counted %s/%s %d and %s/%s %d", Dir(out[0]), Reason(out[1]), got[0], Dir(back[0]), Reason(back[1]), got[1])
				}
			})
		}
	}
}

func TestServiceTrafficIsTranslated(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			client, _ := trafficPods(t, d)
			attachPod(t, d, client, mode)
			checkFlows(t, d, client, map[string]netip.Addr{"v4": simVIPv4, "v6": simVIPv6}, false)
		})
	}
}

// Self access: a Service whose only backend is the client itself. The
// egress program redirects the translated packet to lo; the reply leaves
// through lo, where podnic_lo_out translates it back. IPv6 needs nothing
// beyond what IPv4 needs (observed on 6.18: no sysctl, no extra route).
func TestSelfAccessWorksOverLoopback(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			d := loadTest(t)
			client, _ := trafficPods(t, d)
			attachPod(t, d, client, mode)
			checkFlows(t, d, client, map[string]netip.Addr{"v4": simSelfV4, "v6": simSelfV6}, true)
		})
	}
}
