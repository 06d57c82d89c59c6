package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/netdevice"
)

// Attachments are recorded in bpffs, one pin per attach point:
//
//	<root>/links/<owner>/<ifname>/<hook>_tcx     the pinned TCX link
//	<root>/links/<owner>/<ifname>/<hook>_legacy  the program of a clsact filter
//
// A pinned TCX link is the attachment itself: it outlives the CNI process,
// the pod's netns and even the device (it then stays as a defunct link
// until unpinned), so DetachPod must remove it. A legacy pin only records
// that podnic put a filter there; the filter lives and dies with the device.
// bpffs refuses dots in names, hence the underscores.

// Hook is the direction of a tc attach point.
type Hook uint8

// Hooks.
const (
	Ingress Hook = iota + 1
	Egress
)

func (h Hook) String() string {
	switch h {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

func (h Hook) tcxAttach() ebpf.AttachType {
	if h == Ingress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

// Mode says how programs are attached.
type Mode string

// Attach modes.
const (
	ModeAuto   Mode = "auto"   // TCX, or clsact where the kernel lacks TCX
	ModeTCX    Mode = "tcx"    // TCX links only (Linux >= 6.6)
	ModeLegacy Mode = "legacy" // clsact + cls_bpf direct-action filters
)

// ParseMode turns a configured mode into a Mode; empty is ModeAuto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return ModeAuto, nil
	case ModeAuto, ModeTCX, ModeLegacy:
		return m, nil
	}
	return "", fmt.Errorf("parsing attach mode %q: want %q, %q or %q", s, ModeAuto, ModeTCX, ModeLegacy)
}

// ServicePath is how a pod's Service traffic is served.
type ServicePath string

// Service paths.
const (
	// PathFull balances TCP and UDP at the socket where the node has the
	// socket-level programs, and attaches the tc programs to the pod's
	// NIC both ways and to its lo for the rest: every kube-proxy
	// behaviour, including moving a connected UDP socket off a backend
	// that left.
	PathFull ServicePath = "full"
	// PathSocket serves Service traffic at the socket only. The NIC gets
	// podnic_guard on egress, which refuses what the socket programs left
	// (a RST or an ICMP port unreachable); no program sees the pod's
	// incoming packets. A connected UDP socket whose backend left is
	// refused (ECONNREFUSED) instead of moved. It needs the socket-level
	// programs attached on the node (podnic-agent --socket-lb).
	PathSocket ServicePath = "socket"
)

// ParseServicePath turns a configured path into a ServicePath; empty is
// PathFull.
func ParseServicePath(s string) (ServicePath, error) {
	switch p := ServicePath(s); p {
	case "":
		return PathFull, nil
	case PathFull, PathSocket:
		return p, nil
	}
	return "", fmt.Errorf("parsing service path %q: want %q or %q", s, PathFull, PathSocket)
}

// Attachment is one program on one hook of one interface.
type Attachment struct {
	Owner       string // the caller's key (a container id); see QueryInterface
	Ifname      string
	Ifindex     int // in the pod's netns; 0 when unknown or the device is gone
	Hook        Hook
	Mode        Mode // ModeTCX or ModeLegacy
	ProgramID   ebpf.ProgramID
	ProgramName string
	Pin         string // the bpffs pin recording it; empty if podnic has none
}

func (a Attachment) String() string {
	return fmt.Sprintf("%s %s %s/%s %s id %d", a.Owner, a.Mode, a.Ifname, a.Hook, a.ProgramName, a.ProgramID)
}

// LegacyPriority is the tc filter priority of podnic's clsact filters
// ("PN"). podnic only ever replaces or deletes filters at this priority
// whose name starts with "podnic_".
const LegacyPriority = 0x504e

const (
	legacyHandle = 1
	loopback     = "lo"
	pinTCX       = "tcx"
	pinLegacy    = "legacy"
	progPrefix   = "podnic_"
	// OwnerPodnic marks podnic's programs in QueryInterface results, which
	// cannot know which caller attached them.
	OwnerPodnic = "podnic"
)

// ErrInvalidName is returned for an owner or interface name podnic cannot
// use as a bpffs path element.
var ErrInvalidName = errors.New("invalid name")

var safeName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func validateName(what, s string, max int) error {
	if len(s) == 0 || len(s) > max || !safeName.MatchString(s) {
		return fmt.Errorf("%w: %s %q must be 1 to %d characters of A-Z, a-z, 0-9, '_' and '-'", ErrInvalidName, what, s, max)
	}
	return nil
}

func validateOwner(owner string) error { return validateName("owner", owner, 128) }

// validateAttach checks the arguments every attach takes.
func validateAttach(owner, ifname string, mode Mode) error {
	if err := validateOwner(owner); err != nil {
		return err
	}
	if err := validateIfname(ifname); err != nil {
		return err
	}
	_, err := ParseMode(string(mode))
	return err
}

func validateIfname(ifname string) error {
	if err := validateName("interface", ifname, unix.IFNAMSIZ-1); err != nil {
		return err
	}
	if ifname == loopback {
		return fmt.Errorf("%w: interface %q is where podnic's own loopback program goes", ErrInvalidName, ifname)
	}
	return nil
}

func ownerDir(root, owner string) string { return filepath.Join(linksDir(root), owner) }

func pinPath(root, owner, ifname string, h Hook, kind string) string {
	return filepath.Join(ownerDir(root, owner), ifname, h.String()+"_"+kind)
}

// parsePinName splits "<hook>_<kind>".
func parsePinName(name string) (Hook, string, bool) {
	hook, kind, ok := strings.Cut(name, "_")
	if !ok || (kind != pinTCX && kind != pinLegacy) {
		return 0, "", false
	}
	switch hook {
	case Ingress.String():
		return Ingress, kind, true
	case Egress.String():
		return Egress, kind, true
	}
	return 0, "", false
}

// attachStep is one program to attach.
type attachStep struct {
	ifname string
	hook   Hook
	prog   *ebpf.Program
}

// AttachPod attaches the datapath to a pod: podnic_from_pod on ifname
// egress, podnic_to_pod on ifname ingress and podnic_lo_out on lo egress
// (in ModeAuto always with clsact: see below),
// all in the netns at netnsPath ("" is the current one), and registers the
// netns for socket-level balancing (used where AttachSocketLB ran). owner keys the
// pins (a container id). Attaching again is idempotent: existing links are
// updated to the current programs, so a reloaded datapath takes over
// without a gap. If a step fails, the attachments this call created are
// removed again; ones that existed before are left in place.
func (d *Datapath) AttachPod(netnsPath, ifname, owner string, mode Mode) ([]Attachment, error) {
	return d.AttachPodPath(netnsPath, ifname, owner, mode, PathFull)
}

// AttachPodPath is AttachPod for the given service path. On PathSocket it
// attaches podnic_guard alone, on ifname egress, after checking that the
// node has the socket-level programs; attachments of PathFull that the
// pod had (ingress, lo) are removed, and PathFull attaching over PathSocket
// adds them again.
func (d *Datapath) AttachPodPath(netnsPath, ifname, owner string, mode Mode, path ServicePath) ([]Attachment, error) {
	if err := validateAttach(owner, ifname, mode); err != nil {
		return nil, err
	}
	if mode == "" {
		mode = ModeAuto
	}
	steps, gone, err := d.podSteps(ifname, path)
	if err != nil {
		return nil, err
	}
	for _, s := range steps {
		if s.prog == nil {
			return nil, fmt.Errorf("attaching to %s %s: %w", s.ifname, s.hook, ErrNotLoaded)
		}
	}

	var out []Attachment
	err = netdevice.InNetns(netnsPath, func() error {
		var created []Attachment
		success := false
		defer func() {
			if success {
				return
			}
			for i := len(created) - 1; i >= 0; i-- {
				_ = removeAttachment(created[i])
			}
		}()

		for _, s := range steps {
			stepMode := mode
			if s.ifname == loopback && mode == ModeAuto {
				// lo is born and dies with the netns and never moves, so a
				// clsact filter there is as safe as a pinned TCX link, and
				// it costs no RCU grace period (~12-15 ms here) to attach
				// or to detach, as each TCX link does.
				stepMode = ModeLegacy
			}
			a, isNew, err := d.attachOne(s, owner, stepMode)
			if isNew {
				created = append(created, a)
			}
			if err != nil {
				return err
			}
			if a.Mode == ModeLegacy && stepMode != ModeLegacy {
				// Modes fall back together: the rest of the pod follows.
				mode = ModeLegacy
			}
			out = append(out, a)
		}
		// TCP and UDP in this netns are balanced at the socket where the
		// node has the socket-level programs (AttachSocketLB).
		if err := d.registerNetns(owner, ifname); err != nil {
			return err
		}
		// Only once the new egress program runs: a path's programs
		// that the other path does without.
		for _, g := range gone {
			if err := removeHook(d.Root, owner, g.ifname, g.hook); err != nil {
				return fmt.Errorf("attaching %s on the %s path: %w", owner, path, err)
			}
		}
		success = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// podSteps returns what a pod on path gets attached, and the hooks that
// path leaves without a program.
func (d *Datapath) podSteps(ifname string, path ServicePath) (steps, gone []attachStep, err error) {
	switch path {
	case PathFull, "":
		return []attachStep{
			{ifname, Egress, d.Programs.FromPod},
			{ifname, Ingress, d.Programs.ToPod},
			{loopback, Egress, d.Programs.LoOut},
		}, nil, nil
	case PathSocket:
		if err := socketPathReady(d); err != nil {
			return nil, nil, err
		}
		return []attachStep{{ifname, Egress, d.Programs.Guard}},
			[]attachStep{{ifname: ifname, hook: Ingress}, {ifname: loopback, hook: Egress}}, nil
	}
	return nil, nil, fmt.Errorf("attaching on service path %q: want %q or %q", path, PathFull, PathSocket)
}

// ErrNoSocketLB means the node does not balance at the socket: the
// socket-level programs are not attached (yet, or podnic-agent runs with
// --socket-lb=false).
var ErrNoSocketLB = errors.New("the node has no socket-level balancing (podnic-agent --socket-lb)")

// socketPathReady checks that the node balances TCP and UDP at the socket,
// which a pod on the socket path relies on for all its Service traffic.
func socketPathReady(d *Datapath) error {
	if d.Programs.Guard == nil || d.Maps.UDPSockets == nil {
		return fmt.Errorf("attaching on the socket path: the loaded datapath predates it (reload it with this podnic build): %w", ErrNotLoaded)
	}
	names, err := SocketLBAttached(d.Root)
	if err != nil {
		return fmt.Errorf("attaching on the socket path: %w", err)
	}
	for _, want := range []string{ProgConnect4, ProgConnect6, ProgSendmsg4, ProgSendmsg6, ProgRecvmsg4, ProgRecvmsg6} {
		if !slices.Contains(names, want) {
			return fmt.Errorf("attaching on the socket path: %s is not attached under %s: %w", want, cgroupLinksDir(d.Root), ErrNoSocketLB)
		}
	}
	return nil
}

// removeHook removes owner's program from the hook of ifname, TCX link or
// clsact filter, if it has one there. It runs in the pod's netns.
func removeHook(root, owner, ifname string, h Hook) error {
	if err := removePinnedLink(pinPath(root, owner, ifname, h, pinTCX)); err != nil {
		return err
	}
	legacy := pinPath(root, owner, ifname, h, pinLegacy)
	if _, err := os.Stat(legacy); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return removeLegacy(legacy, ifname, h)
}

// AttachNICBeforeMove attaches podnic_from_pod (egress) and podnic_to_pod
// (ingress) with pinned TCX links to the device at ifindex in the current
// netns, recorded as owner's interface ifname, for a device about to move
// into the pod as ifname. A TCX link stays on its device across netns
// moves (a clsact qdisc does not: dev_shutdown destroys it), and
// AttachPod after the move finds the links and keeps them, so this only
// moves the attaching earlier: CNI ADD does it while the device is down in
// the host, before the move.
//
// It reports false, attaching nothing, in ModeLegacy and, in ModeAuto, on
// a kernel without TCX: AttachPod after the move then attaches. If the
// second link fails, the first is removed again.
func (d *Datapath) AttachNICBeforeMove(ifindex int, ifname, owner string, mode Mode, path ServicePath) (bool, error) {
	if err := validateAttach(owner, ifname, mode); err != nil {
		return false, err
	}
	if mode == ModeLegacy {
		return false, nil
	}
	all, _, err := d.podSteps(ifname, path)
	if err != nil {
		return false, err
	}
	var steps []attachStep
	for _, s := range all {
		if s.ifname == ifname {
			steps = append(steps, s)
		}
	}
	var created []string
	success := false
	defer func() {
		if success {
			return
		}
		for i := len(created) - 1; i >= 0; i-- {
			_ = removePinnedLink(created[i])
		}
		dir := filepath.Join(ownerDir(d.Root, owner), ifname)
		_ = os.Remove(dir)
		_ = os.Remove(filepath.Dir(dir))
	}()
	for _, s := range steps {
		if s.prog == nil {
			return false, fmt.Errorf("attaching to %s %s: %w", s.ifname, s.hook, ErrNotLoaded)
		}
		what := fmt.Sprintf("attaching to device %d %s before its move", ifindex, s.hook)
		pin := pinPath(d.Root, owner, s.ifname, s.hook, pinTCX)
		if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
			return false, fmt.Errorf("%s: creating pin dir: %w", what, err)
		}
		isNew, err := attachTCX(s.prog, ifindex, s.hook, pin)
		if isNew {
			created = append(created, pin)
		}
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported) && mode == ModeAuto:
			return false, nil // the rollback above removes what is there
		case errors.Is(err, ebpf.ErrNotSupported):
			return false, fmt.Errorf("%s: TCX not supported, needs Linux >= 6.6 (use mode %q or %q): %w", what, ModeAuto, ModeLegacy, err)
		default:
			return false, fmt.Errorf("%s: %w", what, err)
		}
	}
	success = true
	return true, nil
}

// attachOne attaches one program, inside the pod's netns. It reports
// whether the attachment is new.
func (d *Datapath) attachOne(s attachStep, owner string, mode Mode) (_ Attachment, _ bool, retErr error) {
	id, name, err := programIdentity(s.prog)
	if err != nil {
		return Attachment{}, false, fmt.Errorf("attaching to %s %s: %w", s.ifname, s.hook, err)
	}
	what := fmt.Sprintf("attaching %s to %s %s", name, s.ifname, s.hook)
	l, err := netlink.LinkByName(s.ifname)
	if err != nil {
		return Attachment{}, false, fmt.Errorf("%s: finding interface: %w", what, err)
	}
	a := Attachment{
		Owner:       owner,
		Ifname:      s.ifname,
		Ifindex:     l.Attrs().Index,
		Hook:        s.hook,
		ProgramID:   id,
		ProgramName: name,
	}
	tcxPin := pinPath(d.Root, owner, s.ifname, s.hook, pinTCX)
	legacyPin := pinPath(d.Root, owner, s.ifname, s.hook, pinLegacy)
	if err := os.MkdirAll(filepath.Dir(tcxPin), 0o700); err != nil {
		return Attachment{}, false, fmt.Errorf("%s: creating pin dir: %w", what, err)
	}
	defer func() {
		if retErr != nil {
			// Leave no empty pin dirs behind a failed attach; Remove
			// refuses dirs that still hold other attachments.
			_ = os.Remove(filepath.Dir(tcxPin))
			_ = os.Remove(filepath.Dir(filepath.Dir(tcxPin)))
		}
	}()

	if mode != ModeLegacy {
		isNew, err := attachTCX(s.prog, a.Ifindex, s.hook, tcxPin)
		switch {
		case err == nil:
			a.Mode, a.Pin = ModeTCX, tcxPin
			// A filter left from an earlier legacy attach would run the
			// program a second time.
			if err := removeLegacy(legacyPin, s.ifname, s.hook); err != nil {
				return a, isNew, fmt.Errorf("%s: removing the earlier clsact filter: %w", what, err)
			}
			return a, isNew, nil
		case errors.Is(err, ebpf.ErrNotSupported) && mode == ModeAuto:
			// Probe on failure: only a kernel without TCX falls back.
		case errors.Is(err, ebpf.ErrNotSupported):
			return Attachment{}, false, fmt.Errorf("%s: TCX not supported, needs Linux >= 6.6 (use mode %q or %q): %w", what, ModeAuto, ModeLegacy, err)
		default:
			return Attachment{}, false, fmt.Errorf("%s: %w", what, err)
		}
	}

	isNew, err := attachLegacy(s.prog, name, a.Ifindex, s.hook, legacyPin)
	if err != nil {
		return Attachment{}, false, fmt.Errorf("%s with clsact: %w", what, err)
	}
	a.Mode, a.Pin = ModeLegacy, legacyPin
	if err := removePinnedLink(tcxPin); err != nil {
		return a, isNew, fmt.Errorf("%s: removing the earlier TCX link: %w", what, err)
	}
	return a, isNew, nil
}

// attachTCX creates or updates the pinned TCX link at pin. It must run in
// the device's netns: the kernel resolves the ifindex in the caller's.
func attachTCX(prog *ebpf.Program, ifindex int, h Hook, pin string) (bool, error) {
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex &&
			ebpf.AttachType(info.TCX().AttachType) == h.tcxAttach() {
			err := old.Update(prog)
			_ = old.Close()
			if err != nil {
				return false, fmt.Errorf("updating link %s: %w", pin, err)
			}
			return false, nil
		}
		// The link of a device that is gone (ifindex 0) or of another
		// device: drop it and attach anew.
		_ = old.Detach()
		uerr := old.Unpin()
		_ = old.Close()
		if uerr != nil {
			return false, fmt.Errorf("unpinning stale link %s: %w", pin, uerr)
		}
	case !errors.Is(err, os.ErrNotExist):
		return false, fmt.Errorf("loading pinned link %s: %w", pin, err)
	}

	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.tcxAttach()})
	if err != nil {
		return false, err
	}
	defer l.Close() // the pin keeps it attached
	if err := l.Pin(pin); err != nil {
		return false, fmt.Errorf("pinning link to %s: %w", pin, err)
	}
	return true, nil
}

// removePinnedLink detaches and unpins the link (TCX or cgroup) at pin, if
// any.
func removePinnedLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	defer l.Close()
	// Detach even if someone else holds the link open; a link whose
	// device is gone detaches as a no-op.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detaching link %s: %w", pin, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpinning link %s: %w", pin, err)
	}
	return nil
}

// removeAttachment undoes one attachment; legacy ones need the netns.
func removeAttachment(a Attachment) error {
	if a.Mode == ModeLegacy {
		return removeLegacy(a.Pin, a.Ifname, a.Hook)
	}
	return removePinnedLink(a.Pin)
}

// DetachPod removes every attachment recorded for owner: it detaches and
// unpins its TCX links (which would otherwise outlive the pod), deletes its
// clsact filters in the netns at netnsPath, and removes the owner's pins.
// It is idempotent. A netns or interface that is gone is not an error: the
// filters went with it. An empty netnsPath means the netns is gone.
//
// Each TCX link detached here waits for an RCU grace period while holding
// rtnl; DetachPodDeferred does not.
func DetachPod(root, owner, netnsPath string) error {
	if root == "" {
		root = DefaultRoot
	}
	release, err := detachPod(root, owner, netnsPath, false)
	if err != nil {
		return err
	}
	return release()
}

// DetachPodDeferred is DetachPod for a caller that moves the pod's device
// out next (CNI DEL) and wants neither step to wait for the other's RCU
// grace periods. Detaching a TCX link waits for one under rtnl
// (tcx_link_release: tcx_entry_sync is synchronize_rcu, 10-20 ms on a
// small VM), and a device move then waits behind it for rtnl.
//
// So DetachPodDeferred detaches nothing itself: it replaces the program of
// each of owner's TCX links with a pass-through one (a link update swaps
// the program in place, no grace period), deletes the clsact filters as
// DetachPod does, and returns release, which removes the pins once the
// caller has moved the device. Unlinking the last pin of a link drops its
// last reference from an RCU callback, so the kernel detaches the link
// from a workqueue (bpf_link_put defers bpf_link_free): release returns at
// once, and the programs are off the device a few grace periods later. No
// file descriptor of the links stays open here: closing the last one would
// detach synchronously. Until the kernel has detached them the links run
// only the pass-through program, which hands every packet to the next
// program on the hook (TCX_NEXT), so a device back in the host, or already
// in the next pod, sees no podnic program of this pod.
//
// If release is never called, the pins stay, and DetachPod or a second
// DetachPodDeferred finds them.
func DetachPodDeferred(root, owner, netnsPath string) (release func() error, err error) {
	if root == "" {
		root = DefaultRoot
	}
	return detachPod(root, owner, netnsPath, true)
}

// detachPod does DetachPod up to the removal of the owner's pins, which the
// returned release does. With deferTCX set, TCX links are parked (see
// DetachPodDeferred) instead of detached.
func detachPod(root, owner, netnsPath string, deferTCX bool) (func() error, error) {
	if err := validateOwner(owner); err != nil {
		return nil, err
	}
	dir := ownerDir(root, owner)
	release := func() error {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("detaching %s: removing %s: %w", owner, dir, err)
		}
		return nil
	}
	ifdirs, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := unregisterNetns(root, owner); err != nil {
			return nil, err
		}
		return func() error { return nil }, nil
	}
	if err != nil {
		return nil, fmt.Errorf("detaching %s: reading %s: %w", owner, dir, err)
	}

	type legacyPin struct {
		pin, ifname string
		hook        Hook
	}
	var legacy []legacyPin
	var errs []error
	var pass *ebpf.Program // loaded on first use
	defer func() {
		if pass != nil {
			pass.Close()
		}
	}()
	for _, ifdir := range ifdirs {
		if !ifdir.IsDir() {
			continue
		}
		pins, err := os.ReadDir(filepath.Join(dir, ifdir.Name()))
		if err != nil {
			errs = append(errs, fmt.Errorf("detaching %s: reading pins: %w", owner, err))
			continue
		}
		for _, p := range pins {
			path := filepath.Join(dir, ifdir.Name(), p.Name())
			h, kind, ok := parsePinName(p.Name())
			switch {
			case !ok:
				// Not podnic's naming: the RemoveAll in release drops it.
			case kind == pinTCX && deferTCX:
				if pass == nil {
					if pass, err = loadPassThrough(); err != nil {
						errs = append(errs, fmt.Errorf("detaching %s: %w", owner, err))
						continue
					}
				}
				if err := parkPinnedLink(path, pass); err != nil {
					errs = append(errs, fmt.Errorf("detaching %s: %w", owner, err))
				}
			case kind == pinTCX:
				if err := removePinnedLink(path); err != nil {
					errs = append(errs, fmt.Errorf("detaching %s: %w", owner, err))
				}
			default:
				legacy = append(legacy, legacyPin{path, ifdir.Name(), h})
			}
		}
	}

	if len(legacy) > 0 {
		err := inPodNetns(netnsPath, func() error {
			for _, l := range legacy {
				if err := deleteLegacyFilters(l.ifname, l.hook); err != nil {
					return fmt.Errorf("deleting clsact filter on %s %s: %w", l.ifname, l.hook, err)
				}
			}
			return nil
		})
		if err != nil {
			// Keep the pins: a retry must still know about the filters.
			errs = append(errs, fmt.Errorf("detaching %s: %w", owner, err))
			return nil, errors.Join(errs...)
		}
	}
	if err := unregisterNetns(root, owner); err != nil {
		errs = append(errs, fmt.Errorf("detaching %s: %w", owner, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return release, nil
}

// PassThroughProgram is the name of the program DetachPodDeferred leaves
// on a TCX link until the kernel has detached it.
const PassThroughProgram = "podnic_leaving"

// loadPassThrough loads a tc program that returns TCX_NEXT: the packet
// goes on to the next program on the hook, or, after the last, as if no
// program were there.
func loadPassThrough() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: PassThroughProgram,
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, tcxNext),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("loading pass-through program: %w", err)
	}
	return p, nil
}

// tcxNext is TCX_NEXT from linux/bpf.h.
const tcxNext = -1

// parkPinnedLink points the pinned TCX link at pin to the pass-through
// program and closes it, leaving the pin as its only reference. A link
// whose device is gone is left as it is: it runs nothing. Links of other
// kinds are detached and unpinned at once.
func parkPinnedLink(pin string, pass *ebpf.Program) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return fmt.Errorf("reading link %s: %w", pin, err)
	}
	if info.TCX() == nil {
		l.Close()
		return removePinnedLink(pin)
	}
	err = l.Update(pass)
	l.Close()
	if err != nil && !errors.Is(err, unix.ENOLINK) {
		return fmt.Errorf("parking link %s: %w", pin, err)
	}
	return nil
}

// inPodNetns runs fn in the pod's netns, and not at all when the netns is
// gone: whatever fn would clean up went with it.
func inPodNetns(netnsPath string, fn func() error) error {
	if netnsPath == "" {
		return nil
	}
	if _, err := os.Stat(netnsPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := netdevice.InNetns(netnsPath, fn)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed between the check and the open
	}
	return err
}

// ListAttachments returns every attachment recorded under root, sorted by
// owner, interface and hook, with what the kernel says about it. The
// ifindex of a legacy attachment is not recorded and reads 0; a TCX link
// whose device is gone reads ifindex 0 too.
func ListAttachments(root string) ([]Attachment, error) {
	if root == "" {
		root = DefaultRoot
	}
	owners, err := os.ReadDir(linksDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing attachments: %w", err)
	}
	var out []Attachment
	for _, o := range owners {
		ifdirs, err := os.ReadDir(filepath.Join(linksDir(root), o.Name()))
		if err != nil {
			return nil, fmt.Errorf("listing attachments of %s: %w", o.Name(), err)
		}
		for _, ifdir := range ifdirs {
			pins, err := os.ReadDir(filepath.Join(linksDir(root), o.Name(), ifdir.Name()))
			if err != nil {
				return nil, fmt.Errorf("listing attachments of %s: %w", o.Name(), err)
			}
			for _, p := range pins {
				h, kind, ok := parsePinName(p.Name())
				if !ok {
					continue
				}
				a := Attachment{
					Owner:  o.Name(),
					Ifname: ifdir.Name(),
					Hook:   h,
					Pin:    filepath.Join(linksDir(root), o.Name(), ifdir.Name(), p.Name()),
				}
				if kind == pinTCX {
					err = describeTCXPin(&a)
				} else {
					err = describeLegacyPin(&a)
				}
				if errors.Is(err, os.ErrNotExist) {
					continue // removed while listing
				}
				if err != nil {
					return nil, fmt.Errorf("listing attachments: %w", err)
				}
				out = append(out, a)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Owner != b.Owner {
			return a.Owner < b.Owner
		}
		if a.Ifname != b.Ifname {
			return a.Ifname < b.Ifname
		}
		return a.Hook < b.Hook
	})
	return out, nil
}

func describeTCXPin(a *Attachment) error {
	l, err := link.LoadPinnedLink(a.Pin, nil)
	if err != nil {
		return fmt.Errorf("loading pinned link %s: %w", a.Pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("reading link %s: %w", a.Pin, err)
	}
	a.Mode = ModeTCX
	if tcx := info.TCX(); tcx != nil {
		a.Ifindex = int(tcx.Ifindex)
	}
	a.ProgramID = info.Program
	a.ProgramName, err = programName(info.Program)
	return err
}

func describeLegacyPin(a *Attachment) error {
	p, err := ebpf.LoadPinnedProgram(a.Pin, nil)
	if err != nil {
		return fmt.Errorf("loading pinned program %s: %w", a.Pin, err)
	}
	defer p.Close()
	a.Mode = ModeLegacy
	a.ProgramID, a.ProgramName, err = programIdentity(p)
	return err
}

// QueryInterface asks the kernel what runs on ifname in the netns at
// netnsPath: TCX programs, then cls_bpf filters on clsact (the order they
// run in), ingress before egress. It lists every owner's programs; those
// that are podnic's (named podnic_*, and for clsact at LegacyPriority) have
// Owner OwnerPodnic, the rest an empty Owner. No result has a Pin.
func QueryInterface(netnsPath, ifname string) ([]Attachment, error) {
	var out []Attachment
	err := netdevice.InNetns(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("querying %s: finding interface: %w", ifname, err)
		}
		ifindex := l.Attrs().Index
		for _, h := range []Hook{Ingress, Egress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcxAttach()})
			switch {
			case errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL):
				// No TCX on this kernel: nothing attached that way.
			case err != nil:
				return fmt.Errorf("querying %s %s TCX programs: %w", ifname, h, err)
			default:
				for _, p := range res.Programs {
					name, err := programName(p.ID)
					if errors.Is(err, os.ErrNotExist) {
						continue // detached while querying
					}
					if err != nil {
						return fmt.Errorf("querying %s %s: %w", ifname, h, err)
					}
					a := Attachment{Ifname: ifname, Ifindex: ifindex, Hook: h, Mode: ModeTCX, ProgramID: p.ID, ProgramName: name}
					if strings.HasPrefix(name, progPrefix) {
						a.Owner = OwnerPodnic
					}
					out = append(out, a)
				}
			}
			filters, err := listBPFFilters(l, h)
			if err != nil {
				return fmt.Errorf("querying %s %s clsact filters: %w", ifname, h, err)
			}
			for _, f := range filters {
				a := Attachment{Ifname: ifname, Ifindex: ifindex, Hook: h, Mode: ModeLegacy, ProgramID: ebpf.ProgramID(f.Id), ProgramName: f.Name}
				if isPodnicFilter(f) {
					a.Owner = OwnerPodnic
				}
				out = append(out, a)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func programIdentity(p *ebpf.Program) (ebpf.ProgramID, string, error) {
	info, err := p.Info()
	if err != nil {
		return 0, "", fmt.Errorf("reading program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, "", fmt.Errorf("reading program info: kernel reports no program id")
	}
	return id, info.Name, nil
}

func programName(id ebpf.ProgramID) (string, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", fmt.Errorf("opening program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", fmt.Errorf("reading program %d info: %w", id, err)
	}
	return info.Name, nil
}

// MarshalText writes the hook by name, for podnicctl -o json.
func (h Hook) MarshalText() ([]byte, error) { return []byte(h.String()), nil }
