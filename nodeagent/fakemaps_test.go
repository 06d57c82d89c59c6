package nodeagent

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/podnic/podnic/bpf"
)

// fakeMaps is the Service maps in memory. After every write it checks
// what a packet could see: every service entry's slots exist and point at
// existing backends. A violation is recorded, not returned, so a test sees
// exactly which operation broke the order.
type fakeMaps struct {
	st         bpf.ServiceState
	ops        []string
	violations []string
	failAfter  int // fail the n-th write from now; 0: never
	check      bool
	external   bool         // SetExternalVIPs
	nodeAddrs  []netip.Addr // SetNodePortAddrs
}

func newFakeMaps() *fakeMaps {
	return &fakeMaps{check: true, st: bpf.ServiceState{
		Services:     map[bpf.ServiceKey]bpf.ServiceValue{},
		Slots:        map[bpf.SlotKey]uint32{},
		Backends:     map[uint32]bpf.Backend{},
		SourceRanges: map[uint32][]netip.Prefix{},
	}}
}

var errInjected = errors.New("injected failure")

func (f *fakeMaps) op(format string, args ...any) error {
	if f.failAfter > 0 {
		f.failAfter--
		if f.failAfter == 0 {
			return errInjected
		}
	}
	f.ops = append(f.ops, fmt.Sprintf(format, args...))
	return nil
}

func (f *fakeMaps) verify() {
	if !f.check {
		return
	}
	for k, v := range f.st.Services {
		if k.Proto == 0 {
			continue
		}
		if v.Flags&bpf.ServiceSourceRanges != 0 && len(f.st.SourceRanges[v.ID]) == 0 {
			f.violations = append(f.violations, fmt.Sprintf("after %q: %s takes source ranges and has none", f.ops[len(f.ops)-1], k))
		}
		for i := uint32(1); i <= uint32(v.Count); i++ {
			id, ok := f.st.Slots[bpf.SlotKey{ServiceID: v.ID, Slot: i}]
			if !ok {
				f.violations = append(f.violations, fmt.Sprintf("after %q: %s slot %d missing", f.ops[len(f.ops)-1], k, i))
				continue
			}
			if _, ok := f.st.Backends[id]; !ok {
				f.violations = append(f.violations, fmt.Sprintf("after %q: %s slot %d points at missing backend %d", f.ops[len(f.ops)-1], k, i, id))
			}
		}
	}
}

func (f *fakeMaps) ReadServiceState() (bpf.ServiceState, error) {
	return bpf.ServiceState{
		Services:     maps.Clone(f.st.Services),
		Slots:        maps.Clone(f.st.Slots),
		Backends:     maps.Clone(f.st.Backends),
		SourceRanges: maps.Clone(f.st.SourceRanges),
	}, nil
}

func (f *fakeMaps) WriteSourceRange(id uint32, p netip.Prefix) error {
	if err := f.op("source range %d %s", id, p); err != nil {
		return err
	}
	if !slices.Contains(f.st.SourceRanges[id], p) {
		f.st.SourceRanges[id] = append(slices.Clone(f.st.SourceRanges[id]), p)
	}
	f.verify()
	return nil
}

func (f *fakeMaps) RemoveSourceRange(id uint32, p netip.Prefix) error {
	if err := f.op("delete source range %d %s", id, p); err != nil {
		return err
	}
	f.st.SourceRanges[id] = slices.DeleteFunc(slices.Clone(f.st.SourceRanges[id]), func(q netip.Prefix) bool { return q == p })
	if len(f.st.SourceRanges[id]) == 0 {
		delete(f.st.SourceRanges, id)
	}
	f.verify()
	return nil
}

func (f *fakeMaps) WriteBackend(id uint32, b bpf.Backend) error {
	if err := f.op("backend %d = %s:%d %s", id, b.Addr.IP(), b.Port.Host(), b.State); err != nil {
		return err
	}
	f.st.Backends[id] = b
	f.verify()
	return nil
}

func (f *fakeMaps) DeleteBackend(id uint32) error {
	if err := f.op("delete backend %d", id); err != nil {
		return err
	}
	delete(f.st.Backends, id)
	f.verify()
	return nil
}

func (f *fakeMaps) WriteSlot(k bpf.SlotKey, id uint32) error {
	if err := f.op("slot %d/%d = %d", k.ServiceID, k.Slot, id); err != nil {
		return err
	}
	f.st.Slots[k] = id
	f.verify()
	return nil
}

func (f *fakeMaps) RemoveSlot(k bpf.SlotKey) error {
	if err := f.op("delete slot %d/%d", k.ServiceID, k.Slot); err != nil {
		return err
	}
	delete(f.st.Slots, k)
	f.verify()
	return nil
}

func (f *fakeMaps) WriteServiceEntry(k bpf.ServiceKey, v bpf.ServiceValue) error {
	if err := f.op("service %s = id %d count %d", k, v.ID, v.Count); err != nil {
		return err
	}
	f.st.Services[k] = v
	f.verify()
	return nil
}

func (f *fakeMaps) RemoveServiceEntry(k bpf.ServiceKey) error {
	if err := f.op("delete service %s", k); err != nil {
		return err
	}
	delete(f.st.Services, k)
	f.verify()
	return nil
}

// SetExternalVIPs records the flag; it is a setting, not one of the
// Service map writes the op log counts.
func (f *fakeMaps) SetExternalVIPs(on bool) error {
	f.external = on
	return nil
}

// SetNodePortAddrs records the addresses, a setting like the flag.
func (f *fakeMaps) SetNodePortAddrs(addrs []netip.Addr) error {
	f.nodeAddrs = slices.Clone(addrs)
	return nil
}
