package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The legacy path, for kernels without TCX: a clsact qdisc with cls_bpf
// direct-action filters at podnic's own priority, named after the program
// (so `tc filter show` says what runs). Everything here runs inside the
// pod's netns. podnic creates clsact when it is missing and never deletes
// it, since other owners' filters may hang off it; it only replaces or
// deletes filters at LegacyPriority named podnic_*.

func (h Hook) clsactParent() uint32 {
	if h == Ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// attachLegacy puts prog on the hook of ifindex and records it by pinning
// the program at pin. It reports whether the attachment is new.
func attachLegacy(prog *ebpf.Program, name string, ifindex int, h Hook, pin string) (bool, error) {
	_, statErr := os.Stat(pin)
	existed := statErr == nil

	dev := deviceAt(ifindex)
	if err := ensureClsact(dev); err != nil {
		return false, err
	}
	filters, err := dumpRetry(func() ([]netlink.Filter, error) { return netlink.FilterList(dev, h.clsactParent()) })
	if err != nil {
		return false, fmt.Errorf("listing filters: %w", err)
	}
	for _, f := range filters {
		attrs := f.Attrs()
		if attrs.Priority != LegacyPriority || attrs.Handle != legacyHandle {
			continue
		}
		if bf, ok := f.(*netlink.BpfFilter); !ok || !isPodnicFilter(bf) {
			return false, fmt.Errorf("filter priority %#x handle %d is taken by a %s filter podnic does not own", LegacyPriority, legacyHandle, f.Type())
		}
	}

	// Record first: a crash between the two steps leaves a pin that
	// DetachPod finds, never an unrecorded filter.
	if err := pinProgramCopy(prog, pin); err != nil {
		return false, err
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    h.clsactParent(),
			Handle:    legacyHandle,
			Priority:  LegacyPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		if !existed {
			_ = os.Remove(pin)
		}
		return false, fmt.Errorf("replacing filter: %w", err)
	}
	return !existed, nil
}

// pinProgramCopy pins prog at path without moving prog's own pin: Pin on a
// pinned *ebpf.Program renames its pin, so pin a clone.
func pinProgramCopy(prog *ebpf.Program, path string) error {
	c, err := prog.Clone()
	if err != nil {
		return fmt.Errorf("cloning program: %w", err)
	}
	defer c.Close()
	return pinReplace(c, path)
}

// removeLegacy deletes podnic's filter on the hook of ifname and its pin.
func removeLegacy(pin, ifname string, h Hook) error {
	if err := deleteLegacyFilters(ifname, h); err != nil {
		return err
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing pin %s: %w", pin, err)
	}
	return nil
}

// deleteLegacyFilters deletes podnic's filters on the hook of ifname. A
// missing interface or clsact is not an error: there is nothing to delete.
func deleteLegacyFilters(ifname string, h Hook) error {
	l, err := netlink.LinkByName(ifname)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding interface %s: %w", ifname, err)
	}
	filters, err := listBPFFilters(l, h)
	if err != nil {
		return err
	}
	for _, f := range filters {
		if !isPodnicFilter(f) {
			continue
		}
		del := &netlink.BpfFilter{FilterAttrs: f.FilterAttrs}
		if err := netlink.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting filter %s priority %#x: %w", f.Name, f.Priority, err)
		}
	}
	return nil
}

// listBPFFilters returns the cls_bpf filters on the hook of l, none when
// l has no clsact qdisc.
func listBPFFilters(l netlink.Link, h Hook) ([]*netlink.BpfFilter, error) {
	ok, err := hasClsact(l)
	if err != nil || !ok {
		return nil, err
	}
	filters, err := dumpRetry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, h.clsactParent()) })
	if err != nil {
		return nil, fmt.Errorf("listing filters: %w", err)
	}
	var out []*netlink.BpfFilter
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			out = append(out, bf)
		}
	}
	return out, nil
}

func isPodnicFilter(f *netlink.BpfFilter) bool {
	return f.Priority == LegacyPriority && strings.HasPrefix(f.Name, progPrefix)
}

func hasClsact(l netlink.Link) (bool, error) {
	qdiscs, err := dumpRetry(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return false, fmt.Errorf("listing qdiscs: %w", err)
	}
	for _, q := range qdiscs {
		if q.Attrs().LinkIndex == l.Attrs().Index && q.Type() == "clsact" {
			return true, nil
		}
	}
	return false, nil
}

// ensureClsact adds a clsact qdisc to l unless it has one.
func ensureClsact(l netlink.Link) error {
	ok, err := hasClsact(l)
	if err != nil || ok {
		return err
	}
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: l.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}}
	err = netlink.QdiscAdd(q)
	if errors.Is(err, unix.EEXIST) {
		// Someone added clsact meanwhile, or an ingress qdisc holds its
		// handle; only the second is a problem.
		if ok, herr := hasClsact(l); herr == nil && ok {
			return nil
		}
		return fmt.Errorf("adding clsact qdisc: another qdisc (ingress?) holds handle ffff: %w", err)
	}
	if err != nil {
		return fmt.Errorf("adding clsact qdisc: %w", err)
	}
	return nil
}

// deviceAt names a device by index for netlink calls that take a Link.
func deviceAt(ifindex int) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
}

// dumpRetry repeats a netlink dump that the kernel interrupted because the
// table changed meanwhile; its partial result is not to be trusted.
func dumpRetry[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var v []T
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return nil, err
}
