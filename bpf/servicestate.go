package bpf

import (
	"errors"
	"fmt"

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
}

// ReadServiceState reads the services, slots and backends maps whole.
func (m *Maps) ReadServiceState() (ServiceState, error) {
	st := ServiceState{
		Services: map[ServiceKey]ServiceValue{},
		Slots:    map[SlotKey]uint32{},
		Backends: map[uint32]Backend{},
	}
	if err := readAll(m.Services, st.Services); err != nil {
		return st, fmt.Errorf("reading services: %w", err)
	}
	if err := readAll(m.Slots, st.Slots); err != nil {
		return st, fmt.Errorf("reading slots: %w", err)
	}
	if err := readAll(m.Backends, st.Backends); err != nil {
		return st, fmt.Errorf("reading backends: %w", err)
	}
	return st, nil
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
