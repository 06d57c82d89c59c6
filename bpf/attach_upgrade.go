package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
//     replaced inside its pod's netns. Its record does not say which netns
//     that is, so the netns the runtime named (/run/netns) and those the
//     node's processes hold (/proc/*/ns/net) are searched for podnic's
//     filters that run an earlier program of this datapath: one that uses
//     this root's maps (every build shares them). Another datapath's
//     filters use other maps and are never touched. The replace keeps the
//     filter's priority and handle, so the hook is never empty either.
//
// Maps are shared by both builds (Load reuses compatible pins), so flows
// and affinities live on across the move.

// UpgradeReport says what UpdateAttachments did.
type UpgradeReport struct {
	Links   int // TCX links moved to this build's programs
	Filters int // clsact filters moved
	// Defunct counts TCX links whose device is gone (a pod gone without
	// its DEL): nothing runs them; the pod's DEL or the CNI's GC removes
	// them.
	Defunct int
	// Missing counts clsact filters recorded under the root, on an
	// earlier program, for which no filter was found in any netns the
	// agent can see (a pod gone without its DEL, or a netns hidden from
	// it); an estimate, since records cannot be told apart by netns.
	Missing int
}

// netnsDirs are where container runtimes name pods' network namespaces.
var netnsDirs = []string{"/run/netns", "/var/run/netns"}

// UpdateAttachments moves every attachment of this datapath that runs an
// earlier build's program to this build's program of the same name (see
// above), and updates the records of clsact filters. Attachments already
// current, links parked on the pass-through program while their pod is
// deleted, and attachments a concurrent DEL removes are left alone.
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
	var records []Attachment // clsact filters on an earlier program
	for _, a := range as {
		want, ok := currentID[a.ProgramName]
		if !ok || a.ProgramID == want {
			continue
		}
		if a.Mode == ModeLegacy {
			records = append(records, a)
			continue
		}
		switch err := updateLink(a.Pin, current[a.ProgramName]); {
		case err == nil:
			rep.Links++
		case errors.Is(err, os.ErrNotExist):
			// Removed by a DEL since the listing.
		case errors.Is(err, unix.ENOLINK):
			rep.Defunct++
		default:
			return rep, err
		}
	}
	if len(records) == 0 {
		return rep, nil
	}

	owner, err := d.ownsProgram()
	if err != nil {
		return rep, err
	}
	for _, ns := range nodeNetns() {
		err := inPodNetns(ns, func() error {
			n, err := replaceStaleFilters(current, currentID, owner)
			rep.Filters += n
			return err
		})
		if err != nil {
			return rep, fmt.Errorf("updating filters in netns %s: %w", ns, err)
		}
	}
	rep.Missing = max(0, len(records)-rep.Filters)
	for _, a := range records {
		if err := repinRecord(current[a.ProgramName], a.Pin); err != nil {
			return rep, fmt.Errorf("recording the new program of %s: %w", a, err)
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

// repinRecord records prog at the pin of a clsact filter, unless a DEL
// removed the pod's records meanwhile (a record is never made anew here).
func repinRecord(prog *ebpf.Program, pin string) error {
	if _, err := os.Stat(filepath.Dir(pin)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := pinProgramCopy(prog, pin)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ownsProgram returns a test of whether a program is one of this
// datapath's, of any build: it uses one of this root's maps.
func (d *Datapath) ownsProgram() (func(ebpf.ProgramID) bool, error) {
	maps := map[ebpf.MapID]bool{}
	for _, m := range []*ebpf.Map{d.Maps.Services, d.Maps.Conntrack, d.Maps.Counters} {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("reading map info: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("reading map info: %w", ebpf.ErrNotSupported)
		}
		maps[id] = true
	}
	known := map[ebpf.ProgramID]bool{}
	return func(id ebpf.ProgramID) bool {
		owned, ok := known[id]
		if ok {
			return owned
		}
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			if info, err := p.Info(); err == nil {
				ids, _ := info.MapIDs()
				owned = slices.ContainsFunc(ids, func(m ebpf.MapID) bool { return maps[m] })
			}
			_ = p.Close()
		}
		known[id] = owned
		return owned
	}, nil
}

// replaceStaleFilters replaces, on every interface of the current netns,
// podnic's filters that run an earlier program of this datapath (owner)
// with the current program of the same name. It returns how many it
// replaced.
func replaceStaleFilters(current map[string]*ebpf.Program, currentID map[string]ebpf.ProgramID, owner func(ebpf.ProgramID) bool) (int, error) {
	links, err := dumpRetry(netlink.LinkList)
	if err != nil {
		return 0, fmt.Errorf("listing interfaces: %w", err)
	}
	n := 0
	for _, l := range links {
		for _, h := range []Hook{Ingress, Egress} {
			filters, err := dumpRetry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, h.clsactParent()) })
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
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
				prog, want := current[bf.Name], currentID[bf.Name]
				if prog == nil || ebpf.ProgramID(bf.Id) == want || !owner(ebpf.ProgramID(bf.Id)) {
					continue
				}
				nf := *bf
				nf.Fd = prog.FD()
				nf.Id = 0
				if err := netlink.FilterReplace(&nf); err != nil {
					return n, fmt.Errorf("replacing filter %s on %s/%s: %w", bf.Name, l.Attrs().Name, h, err)
				}
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
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
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
