package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Moving running pods to a new build's programs.
//
// Load pins the programs it loaded, so every pod attached from then on runs
// them; pods attached before keep the earlier build's programs until they
// are moved. UpdateAttachments moves them:
//
//   - a pinned TCX link (the NIC's hooks on Linux >= 6.6) is updated in
//     place: the kernel swaps the program atomically, no packet sees the
//     hook empty, and no netns needs entering;
//   - a clsact filter (lo's hook always, the NIC's on older kernels) is
//     replaced inside its pod's netns. Its pin does not say which netns
//     that is, so the netns held by the node's processes (/proc/*/ns/net)
//     and the runtime's named ones (/run/netns) are searched for podnic's
//     filters that run exactly the stale programs this root's pins record:
//     another root's filters (another datapath on the node) run other
//     programs and are never touched. The replace keeps the filter's
//     priority and handle, so the hook is never empty either.
//
// Maps are shared by both builds (Load reuses compatible pins), so flows
// and affinities live on across the move.

// UpgradeReport says what UpdateAttachments did.
type UpgradeReport struct {
	Links   int // TCX links moved to this build's programs
	Filters int // clsact filters moved
	// Missing counts clsact filters recorded under the root that were
	// not found in any netns (no process holds it and the runtime did
	// not name it: a pod gone without its DEL, or hidden from the agent).
	Missing int
	// Stale are the records of the earlier programs whose filters were
	// not all found: they stay as they were, since the records of one
	// program cannot be told apart by netns (the filters that were found
	// run this build's program all the same). Attaching the pod again,
	// or its DEL, settles them.
	Stale []Attachment
}

// netnsDirs are where container runtimes name pods' network namespaces.
var netnsDirs = []string{"/run/netns", "/var/run/netns"}

// UpdateAttachments moves every attachment recorded under the datapath's
// root that runs an earlier build's program to this build's program of the
// same name (see above). Attachments already current, and links parked on
// the pass-through program while their pod is deleted, are left alone.
func (d *Datapath) UpdateAttachments() (UpgradeReport, error) {
	var rep UpgradeReport
	current := map[string]*ebpf.Program{
		ProgFromPod: d.Programs.FromPod, ProgToPod: d.Programs.ToPod,
		ProgLoOut: d.Programs.LoOut, ProgGuard: d.Programs.Guard,
	}
	currentID := map[string]ebpf.ProgramID{}
	for name, p := range current {
		if p == nil {
			return rep, fmt.Errorf("updating attachments: program %s: %w", name, ErrNotLoaded)
		}
		id, _, err := programIdentity(p)
		if err != nil {
			return rep, fmt.Errorf("updating attachments: %w", err)
		}
		currentID[name] = id
	}
	as, err := ListAttachments(d.Root)
	if err != nil {
		return rep, err
	}
	stale := map[ebpf.ProgramID][]Attachment{} // clsact filters, by the program they run
	for _, a := range as {
		want, ok := currentID[a.ProgramName]
		if !ok || a.ProgramID == want {
			continue
		}
		if a.Mode == ModeLegacy {
			stale[a.ProgramID] = append(stale[a.ProgramID], a)
			continue
		}
		if err := updateLink(a.Pin, current[a.ProgramName]); err != nil {
			return rep, err
		}
		rep.Links++
	}
	if len(stale) == 0 {
		return rep, nil
	}

	moved := map[ebpf.ProgramID]int{}
	for _, ns := range nodeNetns() {
		err := inPodNetns(ns, func() error {
			n, err := replaceStaleFilters(stale, current, moved)
			rep.Filters += n
			return err
		})
		if err != nil {
			return rep, fmt.Errorf("updating filters in netns %s: %w", ns, err)
		}
	}
	// A pin records what its filter runs: it follows once every filter
	// of its stale program has moved (the pins of one program cannot be
	// told apart by netns).
	for id, pins := range stale {
		if moved[id] < len(pins) {
			rep.Missing += len(pins) - moved[id]
			rep.Stale = append(rep.Stale, pins...)
			continue
		}
		for _, a := range pins {
			if err := pinProgramCopy(current[a.ProgramName], a.Pin); err != nil {
				return rep, fmt.Errorf("recording the new program of %s: %w", a, err)
			}
		}
	}
	return rep, nil
}

// updateLink swaps the program of the pinned TCX link at pin.
func updateLink(pin string, prog *ebpf.Program) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Update(prog); err != nil {
		return fmt.Errorf("updating link %s: %w", pin, err)
	}
	return nil
}

// replaceStaleFilters replaces, on every interface of the current netns,
// podnic's filters that run a program in stale with the current program of
// the same name, counting them in moved by the program they ran.
func replaceStaleFilters(stale map[ebpf.ProgramID][]Attachment, current map[string]*ebpf.Program, moved map[ebpf.ProgramID]int) (int, error) {
	links, err := dumpRetry(netlink.LinkList)
	if err != nil {
		return 0, fmt.Errorf("listing interfaces: %w", err)
	}
	n := 0
	for _, l := range links {
		for _, h := range []Hook{Ingress, Egress} {
			filters, err := dumpRetry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, h.clsactParent()) })
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
				continue // no clsact on this interface
			}
			if err != nil {
				return n, fmt.Errorf("listing filters of %s: %w", l.Attrs().Name, err)
			}
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || !isPodnicFilter(bf) || bf.Handle != legacyHandle {
					continue
				}
				old := ebpf.ProgramID(bf.Id)
				pins := stale[old]
				if len(pins) == 0 {
					continue
				}
				prog := current[pins[0].ProgramName]
				nf := *bf
				nf.Fd = prog.FD()
				nf.Id = 0
				if err := netlink.FilterReplace(&nf); err != nil {
					return n, fmt.Errorf("replacing filter %s on %s/%s: %w", bf.Name, l.Attrs().Name, h, err)
				}
				moved[old]++
				n++
			}
		}
	}
	return n, nil
}

// nodeNetns lists the network namespaces on the node a pod may live in,
// each once: those of the node's processes and the runtime's named ones.
func nodeNetns() []string {
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	var out []string
	add := func(path string) {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return // gone, or not ours to see
		}
		k := key{uint64(st.Dev), st.Ino}
		if seen[k] {
			return
		}
		seen[k] = true
		out = append(out, path)
	}
	for _, dir := range netnsDirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			add(filepath.Join(dir, e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		add(p)
	}
	return out
}
