package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Entry-level access to the Service maps, for a caller that keeps its own
// mirror of them and writes only what changed (podnic-agent). Unlike
// UpsertService these write one entry each: the caller owns the order
// (backends, slots, service entry, VIP marker; the reverse on shrink).

// ServiceState is everything the Service maps hold.
type ServiceState struct {
	Services map[ServiceKey]ServiceValue // VIP markers included (Proto 0)
	Slots    map[SlotKey]uint32
	Backends map[uint32]Backend
	// SourceRanges are the frontends' source ranges by frontend id,
	// sorted; empty when the map is missing (an older build's).
	SourceRanges map[uint32][]netip.Prefix
}

// ReadServiceState reads the services, slots and backends maps whole.
func (m *Maps) ReadServiceState() (ServiceState, error) {
	st := ServiceState{
		Services: map[ServiceKey]ServiceValue{},
		Slots:    map[SlotKey]uint32{},
		Backends: map[uint32]Backend{},
	}
	var err error
	if err := readAll(m.Services, st.Services); err != nil {
		return st, fmt.Errorf("reading services: %w", err)
	}
	if err := readAll(m.Slots, st.Slots); err != nil {
		return st, fmt.Errorf("reading slots: %w", err)
	}
	if err := readAll(m.Backends, st.Backends); err != nil {
		return st, fmt.Errorf("reading backends: %w", err)
	}
	if st.SourceRanges, err = m.readSourceRanges(); err != nil {
		return st, err
	}
	return st, nil
}

// readSourceRanges reads the source-range trie by frontend id, each
// frontend's ranges sorted.
func (m *Maps) readSourceRanges() (map[uint32][]netip.Prefix, error) {
	out := map[uint32][]netip.Prefix{}
	if m.SourceRanges == nil {
		return out, nil
	}
	var k SourceRangeKey
	var v uint8
	it := m.SourceRanges.Iterate()
	for it.Next(&k, &v) {
		out[k.ServiceID] = append(out[k.ServiceID], k.Prefix())
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading source ranges: %w", err)
	}
	for _, ps := range out {
		slices.SortFunc(ps, comparePrefix)
	}
	return out, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// WriteSourceRange lets the frontend with id take new flows from p, once
// its service entry carries ServiceSourceRanges.
func (m *Maps) WriteSourceRange(id uint32, p netip.Prefix) error {
	if m.SourceRanges == nil {
		return fmt.Errorf("writing source range %s of service %d: %w", p, id, ErrNotLoaded)
	}
	k := SourceRangeKeyFrom(id, p)
	if err := m.SourceRanges.Put(&k, uint8(1)); err != nil {
		return fmt.Errorf("writing source range %s of service %d: %w", p, id, err)
	}
	return nil
}

// RemoveSourceRange removes a source range of a frontend; a missing one
// is not an error.
func (m *Maps) RemoveSourceRange(id uint32, p netip.Prefix) error {
	if m.SourceRanges == nil {
		return nil
	}
	k := SourceRangeKeyFrom(id, p)
	if err := m.SourceRanges.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing source range %s of service %d: %w", p, id, err)
	}
	return nil
}

func readAll[K comparable, V any](m *ebpf.Map, into map[K]V) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		into[k] = v
	}
	return it.Err()
}

// WriteBackend creates or replaces a backend.
func (m *Maps) WriteBackend(id uint32, b Backend) error {
	if err := m.Backends.Put(id, &b); err != nil {
		return fmt.Errorf("writing backend %d: %w", id, err)
	}
	return nil
}

// WriteSlot points a slot of a Service at a backend.
func (m *Maps) WriteSlot(k SlotKey, backendID uint32) error {
	if err := m.Slots.Put(&k, backendID); err != nil {
		return fmt.Errorf("writing slot %d of service %d: %w", k.Slot, k.ServiceID, err)
	}
	return nil
}

// RemoveSlot removes a slot; a missing one is not an error.
func (m *Maps) RemoveSlot(k SlotKey) error {
	if err := m.Slots.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing slot %d of service %d: %w", k.Slot, k.ServiceID, err)
	}
	return nil
}

// WriteServiceEntry creates or replaces a service entry or VIP marker.
func (m *Maps) WriteServiceEntry(k ServiceKey, v ServiceValue) error {
	if err := m.Services.Put(&k, &v); err != nil {
		return fmt.Errorf("writing service %s: %w", k, err)
	}
	return nil
}

// RemoveServiceEntry removes a service entry or VIP marker; a missing one
// is not an error.
func (m *Maps) RemoveServiceEntry(k ServiceKey) error {
	if err := m.Services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing service %s: %w", k, err)
	}
	return nil
}

func (k ServiceKey) String() string {
	if k.Proto == 0 {
		return fmt.Sprintf("VIP %s", k.Addr.IP())
	}
	s := Frontend{VIP: k.Addr.IP(), Port: k.Port.Host(), Proto: k.Proto}.String()
	if k.Scope != ScopeCluster {
		s += fmt.Sprintf(" scope %d", k.Scope)
	}
	return s
}
