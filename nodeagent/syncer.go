package nodeagent

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/podnic/podnic/bpf"
)

// ServiceMaps is the part of the datapath's maps the agent writes, entry
// by entry. *bpf.Maps implements it; tests use a fake.
type ServiceMaps interface {
	ReadServiceState() (bpf.ServiceState, error)
	WriteBackend(id uint32, b bpf.Backend) error
	DeleteBackend(id uint32) error
	WriteSlot(k bpf.SlotKey, backendID uint32) error
	RemoveSlot(k bpf.SlotKey) error
	WriteServiceEntry(k bpf.ServiceKey, v bpf.ServiceValue) error
	RemoveServiceEntry(k bpf.ServiceKey) error
	// SetExternalVIPs says whether some VIPs lie outside the Service
	// CIDRs (externalIPs, LoadBalancer ingress IPs).
	SetExternalVIPs(on bool) error
	// SetNodePortAddrs gives the node's addresses on which NodePorts
	// are translated; empty while no Service has one.
	SetNodePortAddrs(addrs []netip.Addr) error
	WriteSourceRange(serviceID uint32, p netip.Prefix) error
	RemoveSourceRange(serviceID uint32, p netip.Prefix) error
}

var _ ServiceMaps = (*bpf.Maps)(nil)

// appliedService is a service entry as the maps hold it.
type appliedService struct {
	Value  bpf.ServiceValue
	Slots  []uint32       // backend id of slot 1..n
	Ranges []netip.Prefix // source ranges, under Value.ID
}

type appliedBackend struct {
	Addr  netip.AddrPort
	State bpf.BackendState
	Refs  int // slots pointing at it
}

// WriteStats counts the map operations of one Apply.
type WriteStats struct {
	Backends, Slots, Services, Markers, Ranges int // written
	Removed                                    int // entries removed, all maps
}

// Total is the number of map operations.
func (w WriteStats) Total() int {
	return w.Backends + w.Slots + w.Services + w.Markers + w.Ranges + w.Removed
}

// Syncer keeps a mirror of the Service maps and writes the difference
// between it and a desired state. It never flushes: on start (and after a
// failed write) it reads the maps back and goes on from what they hold, so
// Service ids, backend ids and the connections that use them survive an
// agent restart. Not safe for concurrent use.
type Syncer struct {
	maps ServiceMaps

	loaded    bool
	services  map[bpf.ServiceKey]*appliedService
	markers   map[bpf.Addr]bool
	ports     map[bpf.Addr]int // service entries per VIP
	unused    map[uint32]bool  // backends that may have no slot left
	backends  map[uint32]*appliedBackend
	idByAddr  map[netip.AddrPort]uint32
	serviceID map[uint32]bool // ids in use
	orphans   []bpf.SlotKey   // slots no service entry reaches, found on load
	// orphanRanges are source ranges of ids no service entry has,
	// found on load.
	orphanRanges map[uint32][]netip.Prefix
	lastSvcID    uint32
	lastBeID     uint32
}

// NewSyncer returns a syncer writing to m; it reads m on the first Apply.
func NewSyncer(m ServiceMaps) *Syncer { return &Syncer{maps: m} }

// Loaded reports whether the mirror is known to match the maps; when not,
// the next Apply reads them back and must be a full one.
func (s *Syncer) Loaded() bool { return s.loaded }

// Load reads the maps into the mirror.
func (s *Syncer) Load() error {
	st, err := s.maps.ReadServiceState()
	if err != nil {
		return fmt.Errorf("reading pinned Service maps: %w", err)
	}
	s.services = map[bpf.ServiceKey]*appliedService{}
	s.markers = map[bpf.Addr]bool{}
	s.ports = map[bpf.Addr]int{}
	s.unused = map[uint32]bool{}
	s.backends = map[uint32]*appliedBackend{}
	s.idByAddr = map[netip.AddrPort]uint32{}
	s.serviceID = map[uint32]bool{}
	s.orphans = nil
	s.orphanRanges = maps.Clone(st.SourceRanges)
	s.lastSvcID, s.lastBeID = 0, 0
	for id, b := range st.Backends {
		ap := netip.AddrPortFrom(b.Addr.IP(), b.Port.Host())
		s.backends[id] = &appliedBackend{Addr: ap, State: b.State}
		// Two ids for one address (written by hand with podnicctl):
		// the lowest wins, the other goes once no slot uses it.
		if cur, ok := s.idByAddr[ap]; !ok || id < cur {
			s.idByAddr[ap] = id
		}
		s.lastBeID = max(s.lastBeID, id)
	}
	reached := map[bpf.SlotKey]bool{}
	for k, v := range st.Services {
		if k.Proto == 0 {
			s.markers[k.Addr] = true
			continue
		}
		a := &appliedService{Value: v, Slots: make([]uint32, v.Count), Ranges: st.SourceRanges[v.ID]}
		delete(s.orphanRanges, v.ID)
		for i := range a.Slots {
			sk := bpf.SlotKey{ServiceID: v.ID, Slot: uint32(i + 1)}
			id, ok := st.Slots[sk]
			if !ok {
				continue // 0: rewritten by the next Apply
			}
			reached[sk] = true
			a.Slots[i] = id
			if b := s.backends[id]; b != nil {
				b.Refs++
			}
		}
		s.services[k] = a
		s.ports[k.Addr]++
		s.serviceID[v.ID] = true
		s.lastSvcID = max(s.lastSvcID, v.ID)
	}
	for id, b := range s.backends {
		if b.Refs == 0 {
			s.unused[id] = true
		}
	}
	for k := range st.Slots {
		if !reached[k] {
			s.orphans = append(s.orphans, k)
		}
		// Ids only grow: a leftover's id is never handed out again, so
		// its cleanup cannot remove a new frontend's slots or ranges.
		s.lastSvcID = max(s.lastSvcID, k.ServiceID)
	}
	for id := range s.orphanRanges {
		s.lastSvcID = max(s.lastSvcID, id)
	}
	s.loaded = true
	return nil
}

// Apply makes the maps hold desired for the given keys (every key, desired
// or present, when full), writing only what differs: backends, then slots,
// then service entries, then VIP markers; on shrink the reverse: VIP
// markers, service entries, slots, backends. A packet never finds a
// service entry whose slots or backends are missing. On error the mirror
// is dropped: the next Apply must be full.
func (s *Syncer) Apply(desired map[bpf.ServiceKey]*desiredService, keys []bpf.ServiceKey, full bool) (WriteStats, error) {
	var st WriteStats
	if !s.loaded {
		if !full {
			return st, fmt.Errorf("applying a partial change without a mirror of the maps")
		}
		if err := s.Load(); err != nil {
			return st, err
		}
	}
	if full {
		set := make(map[bpf.ServiceKey]bool, len(desired)+len(s.services))
		for k := range desired {
			set[k] = true
		}
		for k := range s.services {
			set[k] = true
		}
		keys = slices.Collect(maps.Keys(set))
	}
	err := s.apply(desired, keys, full, &st)
	if err != nil {
		s.loaded = false
	}
	return st, err
}

type shrink struct {
	id       uint32
	from, to int // slots from+1..to go
	slots    []uint32
}

func (s *Syncer) apply(desired map[bpf.ServiceKey]*desiredService, keys []bpf.ServiceKey, full bool, st *WriteStats) error {
	// Grow: backends first.
	wantIDs := make(map[bpf.ServiceKey][]uint32, len(keys))
	var gone []bpf.ServiceKey
	for _, k := range keys {
		d := desired[k]
		if d == nil {
			if s.services[k] != nil {
				gone = append(gone, k)
			}
			continue
		}
		n := min(len(d.Backends), 0xffff)
		ids := make([]uint32, n)
		for i, b := range d.Backends[:n] {
			id, err := s.ensureBackend(b, st)
			if err != nil {
				return err
			}
			ids[i] = id
		}
		wantIDs[k] = ids
	}

	// Then slots, each service's entry right after its slots, then the
	// VIP markers.
	var shrinks []shrink
	newVIPs := map[bpf.Addr]bool{}
	for _, k := range keys {
		ids, ok := wantIDs[k]
		if !ok {
			continue
		}
		d := desired[k]
		a := s.services[k]
		if a == nil {
			id, err := s.allocServiceID()
			if err != nil {
				return err
			}
			a = &appliedService{Value: bpf.ServiceValue{ID: id}}
		}
		slotIDs := assignSlots(a.Slots, ids)
		for i, id := range slotIDs {
			if i < len(a.Slots) && a.Slots[i] == id {
				continue
			}
			if err := s.maps.WriteSlot(bpf.SlotKey{ServiceID: a.Value.ID, Slot: uint32(i + 1)}, id); err != nil {
				return err
			}
			st.Slots++
			s.backends[id].Refs++
			if i < len(a.Slots) {
				s.unref(a.Slots[i])
			}
		}
		v := bpf.ServiceValue{ID: a.Value.ID, Count: uint16(len(slotIDs))}
		if d.Affinity > 0 {
			v.Flags |= bpf.ServiceAffinity
			v.AffinitySeconds = uint32((d.Affinity + time.Second - 1) / time.Second)
		}
		if d.NoLocal && len(slotIDs) == 0 {
			v.Flags |= bpf.ServiceDrop
		}
		// Source ranges: new ones before the entry that may turn them
		// on, old ones after it, so no allowed source is ever dropped.
		for _, p := range d.SourceRanges {
			if !slices.Contains(a.Ranges, p) {
				if err := s.maps.WriteSourceRange(v.ID, p); err != nil {
					return err
				}
				st.Ranges++
			}
		}
		if len(d.SourceRanges) > 0 {
			v.Flags |= bpf.ServiceSourceRanges
		}
		if s.services[k] == nil || a.Value != v {
			if err := s.maps.WriteServiceEntry(k, v); err != nil {
				return err
			}
			st.Services++
		}
		if err := s.removeRanges(v.ID, a.Ranges, d.SourceRanges, st); err != nil {
			return err
		}
		if len(a.Slots) > len(slotIDs) {
			shrinks = append(shrinks, shrink{id: v.ID, from: len(slotIDs), to: len(a.Slots), slots: a.Slots})
		}
		if s.services[k] == nil {
			s.ports[k.Addr]++
		}
		s.services[k] = &appliedService{Value: v, Slots: slotIDs, Ranges: slices.Clone(d.SourceRanges)}
		s.serviceID[v.ID] = true
		if !s.markers[k.Addr] {
			newVIPs[k.Addr] = true
		}
	}
	for vip := range newVIPs {
		if err := s.maps.WriteServiceEntry(bpf.ServiceKey{Addr: vip}, bpf.ServiceValue{}); err != nil {
			return err
		}
		s.markers[vip] = true
		st.Markers++
	}

	// Shrink: markers of VIPs with no port left, then service entries,
	// then slots, then unused backends.
	candidates := map[bpf.Addr]bool{}
	for _, k := range gone {
		s.ports[k.Addr]--
		candidates[k.Addr] = true
	}
	if full {
		maps.Copy(candidates, s.markers)
	}
	for vip := range candidates {
		if s.ports[vip] > 0 || !s.markers[vip] {
			continue
		}
		delete(s.ports, vip)
		if err := s.maps.RemoveServiceEntry(bpf.ServiceKey{Addr: vip}); err != nil {
			return err
		}
		delete(s.markers, vip)
		st.Removed++
	}
	for _, k := range gone {
		a := s.services[k]
		if err := s.maps.RemoveServiceEntry(k); err != nil {
			return err
		}
		st.Removed++
		if err := s.removeRanges(a.Value.ID, a.Ranges, nil, st); err != nil {
			return err
		}
		delete(s.services, k)
		delete(s.serviceID, a.Value.ID)
		shrinks = append(shrinks, shrink{id: a.Value.ID, from: 0, to: len(a.Slots), slots: a.Slots})
	}
	for _, sh := range shrinks {
		for i := sh.from; i < sh.to; i++ {
			if err := s.maps.RemoveSlot(bpf.SlotKey{ServiceID: sh.id, Slot: uint32(i + 1)}); err != nil {
				return err
			}
			st.Removed++
			s.unref(sh.slots[i])
		}
	}
	if full {
		for _, k := range s.orphans {
			if err := s.maps.RemoveSlot(k); err != nil {
				return err
			}
			st.Removed++
		}
		s.orphans = nil
		for id, ps := range s.orphanRanges {
			if err := s.removeRanges(id, ps, nil, st); err != nil {
				return err
			}
			delete(s.orphanRanges, id)
		}
	}
	for id := range s.unused {
		b := s.backends[id]
		if b == nil || b.Refs > 0 {
			delete(s.unused, id)
			continue
		}
		if err := s.maps.DeleteBackend(id); err != nil {
			return err
		}
		st.Removed++
		delete(s.backends, id)
		delete(s.unused, id)
		if s.idByAddr[b.Addr] == id {
			delete(s.idByAddr, b.Addr)
		}
	}
	return nil
}

// removeRanges removes the source ranges of service id in have but not
// in keep.
func (s *Syncer) removeRanges(id uint32, have, keep []netip.Prefix, st *WriteStats) error {
	for _, p := range have {
		if slices.Contains(keep, p) {
			continue
		}
		if err := s.maps.RemoveSourceRange(id, p); err != nil {
			return err
		}
		st.Removed++
	}
	return nil
}

// ensureBackend returns the id of the backend at b.Addr, writing it when it
// is new or its state changed.
func (s *Syncer) ensureBackend(b desiredBackend, st *WriteStats) (uint32, error) {
	id, ok := s.idByAddr[b.Addr]
	if ok && s.backends[id].State == b.State {
		return id, nil
	}
	if !ok {
		var err error
		if id, err = s.allocBackendID(); err != nil {
			return 0, err
		}
	}
	v := bpf.Backend{Addr: bpf.AddrFrom(b.Addr.Addr()), Port: bpf.PortFrom(b.Addr.Port()), State: b.State}
	if err := s.maps.WriteBackend(id, v); err != nil {
		return 0, err
	}
	st.Backends++
	if ok {
		s.backends[id].State = b.State
	} else {
		s.backends[id] = &appliedBackend{Addr: b.Addr, State: b.State}
		s.idByAddr[b.Addr] = id
	}
	return id, nil
}

func (s *Syncer) unref(id uint32) {
	if b := s.backends[id]; b != nil {
		if b.Refs--; b.Refs <= 0 {
			s.unused[id] = true
		}
	}
}

// Ids only grow (wrapping at 2^32 onto free ones), so a deleted Service's
// id is not handed to a new one while conntrack and affinity entries may
// still carry it.
func (s *Syncer) allocServiceID() (uint32, error) {
	for range 1 << 20 {
		s.lastSvcID++
		if s.lastSvcID != 0 && !s.serviceID[s.lastSvcID] {
			return s.lastSvcID, nil
		}
	}
	return 0, fmt.Errorf("allocating a service id: none free")
}

func (s *Syncer) allocBackendID() (uint32, error) {
	for range 1 << 20 {
		s.lastBeID++
		if s.lastBeID != 0 && s.backends[s.lastBeID] == nil {
			return s.lastBeID, nil
		}
	}
	return 0, fmt.Errorf("allocating a backend id: none free")
}

// assignSlots lays want out over slots, keeping every backend that stays
// in the slot it had when that slot still exists, so a change of one
// endpoint rewrites one slot.
func assignSlots(old, want []uint32) []uint32 {
	out := make([]uint32, len(want))
	wanted := make(map[uint32]bool, len(want))
	for _, id := range want {
		wanted[id] = true
	}
	placed := make(map[uint32]bool, len(want))
	for i, id := range old {
		if i < len(out) && wanted[id] && !placed[id] {
			out[i] = id
			placed[id] = true
		}
	}
	next := 0
	for _, id := range want {
		if placed[id] {
			continue
		}
		for out[next] != 0 {
			next++
		}
		out[next] = id
		placed[id] = true
	}
	return out
}

// Fill counts the entries the agent has in each Service map.
func (s *Syncer) Fill() (services, slots, backends int) {
	for _, a := range s.services {
		slots += len(a.Slots)
	}
	return len(s.services) + len(s.markers), slots, len(s.backends)
}
