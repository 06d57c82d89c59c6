package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// Frontend identifies one port of a Service.
type Frontend struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.VIP, f.Port), f.Proto)
}

// Key returns the services map key of the frontend.
func (f Frontend) Key() ServiceKey {
	return ServiceKey{Addr: AddrFrom(f.VIP), Port: PortFrom(f.Port), Proto: f.Proto, Scope: ScopeCluster}
}

func vipKey(vip netip.Addr) ServiceKey {
	return ServiceKey{Addr: AddrFrom(vip), Scope: ScopeCluster}
}

// BackendEntry is one backend of a Service, with its node-wide id.
type BackendEntry struct {
	ID    uint32
	Addr  netip.AddrPort
	State BackendState
}

// ServiceEntry is the full datapath state of one Service port.
type ServiceEntry struct {
	Frontend
	ID       uint32         // unique per frontend on the node, never 0
	Affinity time.Duration  // session affinity ClientIP timeout; 0 is none
	Backends []BackendEntry // the backends new flows may use, in slot order
	// NoLocal, with no Backends, says that the Service has endpoints but
	// none this node may use (internalTrafficPolicy Local): new flows are
	// dropped, as kube-proxy drops them, instead of rejected.
	NoLocal bool
	// SourceRanges, when not empty, are the only sources new flows are
	// taken from (a LoadBalancer ingress IP's loadBalancerSourceRanges of
	// the VIP's family); others are dropped.
	SourceRanges []netip.Prefix
}

// ErrInvalidService is returned for a ServiceEntry the datapath cannot hold.
var ErrInvalidService = errors.New("invalid service")

func (s ServiceEntry) validate() error {
	switch {
	case !s.VIP.IsValid():
		return fmt.Errorf("%w: no VIP", ErrInvalidService)
	case s.Proto != TCP && s.Proto != UDP && s.Proto != SCTP:
		return fmt.Errorf("%w %s: protocol %s is not supported", ErrInvalidService, s.Frontend, s.Proto)
	case s.Port == 0:
		return fmt.Errorf("%w %s: port 0", ErrInvalidService, s.Frontend)
	case s.ID == 0:
		return fmt.Errorf("%w %s: id 0 is reserved", ErrInvalidService, s.Frontend)
	case len(s.Backends) > 0xffff:
		return fmt.Errorf("%w %s: %d backends, at most 65535", ErrInvalidService, s.Frontend, len(s.Backends))
	case s.Affinity < 0 || s.Affinity > 24*time.Hour:
		return fmt.Errorf("%w %s: affinity timeout %s out of range (0 to 24h)", ErrInvalidService, s.Frontend, s.Affinity)
	case s.NoLocal && len(s.Backends) > 0:
		return fmt.Errorf("%w %s: no local endpoints, yet %d backends", ErrInvalidService, s.Frontend, len(s.Backends))
	}
	for _, p := range s.SourceRanges {
		if !p.IsValid() || p.Addr().Is4() != s.VIP.Is4() || p.Addr().Is4In6() {
			return fmt.Errorf("%w %s: source range %s is not a prefix of the VIP's family", ErrInvalidService, s.Frontend, p)
		}
	}
	for _, b := range s.Backends {
		if b.ID == 0 || !b.Addr.IsValid() || b.Addr.Port() == 0 {
			return fmt.Errorf("%w %s: backend %d %s is incomplete", ErrInvalidService, s.Frontend, b.ID, b.Addr)
		}
		if b.Addr.Addr().Is4() != s.VIP.Is4() {
			return fmt.Errorf("%w %s: backend %s is of another address family", ErrInvalidService, s.Frontend, b.Addr)
		}
	}
	return nil
}

// UpsertService writes one Service port in an order that never lets a
// packet see a service entry pointing at a missing slot or backend:
// backends, then slots, then the service entry, then the VIP marker; slots
// beyond a shrunk count are removed only after the entry shrank.
func (m *Maps) UpsertService(s ServiceEntry) error {
	if err := s.validate(); err != nil {
		return err
	}
	key := s.Key()
	var old ServiceValue
	oldCount := 0
	if err := m.Services.Lookup(&key, &old); err == nil {
		oldCount = int(old.Count)
		if old.ID != s.ID {
			return fmt.Errorf("%w %s: already present with id %d, not %d", ErrInvalidService, s.Frontend, old.ID, s.ID)
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("looking up service %s: %w", s.Frontend, err)
	}

	for _, b := range s.Backends {
		v := Backend{Addr: AddrFrom(b.Addr.Addr()), Port: PortFrom(b.Addr.Port()), State: b.State}
		if err := m.Backends.Put(b.ID, &v); err != nil {
			return fmt.Errorf("writing backend %d: %w", b.ID, err)
		}
	}
	for i, b := range s.Backends {
		k := SlotKey{ServiceID: s.ID, Slot: uint32(i + 1)}
		if err := m.Slots.Put(&k, b.ID); err != nil {
			return fmt.Errorf("writing slot %d of service %s: %w", i+1, s.Frontend, err)
		}
	}
	oldRanges, err := m.readSourceRanges()
	if err != nil {
		return err
	}
	for _, p := range s.SourceRanges {
		if err := m.WriteSourceRange(s.ID, p); err != nil {
			return err
		}
	}
	v := ServiceValue{ID: s.ID, Count: uint16(len(s.Backends))}
	if s.Affinity > 0 {
		v.Flags |= ServiceAffinity
		v.AffinitySeconds = uint32((s.Affinity + time.Second - 1) / time.Second)
	}
	if s.NoLocal {
		v.Flags |= ServiceDrop
	}
	if len(s.SourceRanges) > 0 {
		v.Flags |= ServiceSourceRanges
	}
	if err := m.Services.Put(&key, &v); err != nil {
		return fmt.Errorf("writing service %s: %w", s.Frontend, err)
	}
	for _, p := range oldRanges[s.ID] {
		if !slices.ContainsFunc(s.SourceRanges, func(q netip.Prefix) bool { return q.Masked() == p }) {
			if err := m.RemoveSourceRange(s.ID, p); err != nil {
				return err
			}
		}
	}
	vk := vipKey(s.VIP)
	if err := m.Services.Put(&vk, &ServiceValue{}); err != nil {
		return fmt.Errorf("writing VIP marker %s: %w", s.VIP, err)
	}
	for i := len(s.Backends) + 1; i <= oldCount; i++ {
		k := SlotKey{ServiceID: s.ID, Slot: uint32(i)}
		if err := m.Slots.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing slot %d of service %s: %w", i, s.Frontend, err)
		}
	}
	return nil
}

// DeleteService removes one Service port and its slots. The VIP marker
// stays until DeleteVIP, since other ports may share the VIP; backends
// stay, since other Services may share them.
func (m *Maps) DeleteService(f Frontend) error {
	key := f.Key()
	var v ServiceValue
	if err := m.Services.Lookup(&key, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("looking up service %s: %w", f, err)
	}
	if err := m.Services.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing service %s: %w", f, err)
	}
	for i := 1; i <= int(v.Count); i++ {
		k := SlotKey{ServiceID: v.ID, Slot: uint32(i)}
		if err := m.Slots.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing slot %d of service %s: %w", i, f, err)
		}
	}
	ranges, err := m.readSourceRanges()
	if err != nil {
		return err
	}
	for _, p := range ranges[v.ID] {
		if err := m.RemoveSourceRange(v.ID, p); err != nil {
			return err
		}
	}
	return nil
}

// DeleteVIP removes the VIP marker: the VIP is no longer a Service's, and
// traffic to it passes untouched.
func (m *Maps) DeleteVIP(vip netip.Addr) error {
	k := vipKey(vip)
	if err := m.Services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing VIP marker %s: %w", vip, err)
	}
	return nil
}

// DeleteBackend removes a backend no Service uses any more.
func (m *Maps) DeleteBackend(id uint32) error {
	if err := m.Backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing backend %d: %w", id, err)
	}
	return nil
}

// VerdictCount is the sum over CPUs of one counter slot.
type VerdictCount struct {
	Dir     Dir
	Reason  Reason
	Packets uint64
	Bytes   uint64
}

// ReadVerdicts returns every non-zero verdict counter.
func (m *Maps) ReadVerdicts() ([]VerdictCount, error) {
	var out []VerdictCount
	for d := Dir(0); d < dirMax; d++ {
		for _, r := range Reasons() {
			var per []Counter
			if err := m.Counters.Lookup(counterIndex(d, r), &per); err != nil {
				return nil, fmt.Errorf("reading counter %s/%s: %w", d, r, err)
			}
			c := VerdictCount{Dir: d, Reason: r}
			for _, p := range per {
				c.Packets += p.Packets
				c.Bytes += p.Bytes
			}
			if c.Packets > 0 {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Verdicts sums the packets counted for one verdict at one attach point.
func (m *Maps) Verdicts(d Dir, r Reason) (uint64, error) {
	var per []Counter
	if err := m.Counters.Lookup(counterIndex(d, r), &per); err != nil {
		return 0, fmt.Errorf("reading counter %s/%s: %w", d, r, err)
	}
	var n uint64
	for _, p := range per {
		n += p.Packets
	}
	return n, nil
}

// ServiceInfo is a Service port as the maps hold it.
type ServiceInfo struct {
	Frontend
	ID       uint32
	Affinity time.Duration
	NoLocal  bool // no backend this node may use: new flows are dropped
	// SourceRanges: new flows only from these sources
	// (loadBalancerSourceRanges); empty: from any.
	SourceRanges []netip.Prefix `json:",omitempty"`
	Backends     []BackendInfo
}

// BackendInfo is one backend of a listed Service.
type BackendInfo struct {
	ID    uint32
	Addr  netip.AddrPort
	State BackendState
}

// ListServices reads every Service port with its backends, sorted by
// frontend. A slot whose backend is missing is listed with a zero address.
func (m *Maps) ListServices() ([]ServiceInfo, error) {
	var out []ServiceInfo
	var k ServiceKey
	var v ServiceValue
	ranges, err := m.readSourceRanges()
	if err != nil {
		return nil, err
	}
	it := m.Services.Iterate()
	for it.Next(&k, &v) {
		if k.Proto == 0 {
			continue // VIP marker
		}
		s := ServiceInfo{
			Frontend: Frontend{VIP: k.Addr.IP(), Port: k.Port.Host(), Proto: k.Proto},
			ID:       v.ID,
		}
		if v.Flags&ServiceAffinity != 0 {
			s.Affinity = time.Duration(v.AffinitySeconds) * time.Second
		}
		s.NoLocal = v.Flags&ServiceDrop != 0
		if v.Flags&ServiceSourceRanges != 0 {
			s.SourceRanges = ranges[v.ID]
		}
		for i := 1; i <= int(v.Count); i++ {
			var id uint32
			if err := m.Slots.Lookup(&SlotKey{ServiceID: v.ID, Slot: uint32(i)}, &id); err != nil {
				return nil, fmt.Errorf("reading slot %d of service %s: %w", i, s.Frontend, err)
			}
			bi := BackendInfo{ID: id}
			var b Backend
			if err := m.Backends.Lookup(id, &b); err == nil {
				bi.Addr = netip.AddrPortFrom(b.Addr.IP(), b.Port.Host())
				bi.State = b.State
			}
			s.Backends = append(s.Backends, bi)
		}
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading services: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if c := a.VIP.Compare(b.VIP); c != 0 {
			return c < 0
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Proto < b.Proto
	})
	return out, nil
}

// SetServiceCIDRs makes the datapath reject TCP and UDP to any address in
// these prefixes that no Service has (a deleted Service, a mistyped VIP),
// instead of letting the packet wander to the gateway. It replaces the
// previous set: new prefixes are added before old ones go.
func (m *Maps) SetServiceCIDRs(prefixes []netip.Prefix) error {
	if m.ServiceCIDRs == nil {
		return fmt.Errorf("setting Service CIDRs: %w", ErrNotLoaded)
	}
	if len(prefixes) > 64 {
		return fmt.Errorf("setting Service CIDRs: %d prefixes, at most 64", len(prefixes))
	}
	want := map[CIDRKey]bool{}
	for _, p := range prefixes {
		if !p.IsValid() {
			return fmt.Errorf("setting Service CIDRs: invalid prefix %v", p)
		}
		want[CIDRKeyFrom(p)] = true
	}
	var have []CIDRKey
	var k CIDRKey
	var v uint8
	it := m.ServiceCIDRs.Iterate()
	for it.Next(&k, &v) {
		have = append(have, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading Service CIDRs: %w", err)
	}
	for k := range want {
		if err := m.ServiceCIDRs.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("writing Service CIDR: %w", err)
		}
	}
	for _, k := range have {
		if !want[k] {
			if err := m.ServiceCIDRs.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("removing Service CIDR: %w", err)
			}
		}
	}
	return m.setFastPathCIDRs(prefixes)
}

// setFastPathCIDRs copies the Service CIDRs into podnic_cfg_v1, where the
// egress program passes packets to any other address at once. A family
// with more CIDRs than the array holds is left out (every packet of it
// takes the full path).
func (m *Maps) setFastPathCIDRs(prefixes []netip.Prefix) error {
	if m.Config == nil {
		return fmt.Errorf("setting Service CIDRs: %w", ErrNotLoaded)
	}
	cfg, err := m.readConfig()
	if err != nil {
		return err
	}
	cfg.V4Count, cfg.V6Count = 0, 0
	var v4, v6 []netip.Prefix
	for _, p := range prefixes {
		if p.Addr().Unmap().Is4() {
			v4 = append(v4, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), 32)).Masked())
		} else {
			v6 = append(v6, p.Masked())
		}
	}
	if len(v4) <= len(cfg.V4) {
		cfg.V4Count = uint32(len(v4))
		for i, p := range v4 {
			a := p.Addr().As4()
			mask := net.CIDRMask(p.Bits(), 32)
			cfg.V4[i].Net = binary.NativeEndian.Uint32(a[:])
			cfg.V4[i].Mask = binary.NativeEndian.Uint32(mask)
		}
	}
	if len(v6) <= len(cfg.V6) {
		cfg.V6Count = uint32(len(v6))
		for i, p := range v6 {
			a := p.Addr().As16()
			mask := net.CIDRMask(p.Bits(), 128)
			for w := 0; w < 4; w++ {
				cfg.V6[i].Net[w] = binary.NativeEndian.Uint32(a[4*w:])
				cfg.V6[i].Mask[w] = binary.NativeEndian.Uint32(mask[4*w:])
			}
		}
	}
	if err := m.Config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("writing fast-path Service CIDRs: %w", err)
	}
	return nil
}

func (m *Maps) readConfig() (podnicPnCfg, error) {
	var cfg podnicPnCfg
	if m.Config == nil {
		return cfg, fmt.Errorf("reading datapath settings: %w", ErrNotLoaded)
	}
	if err := m.Config.Lookup(uint32(0), &cfg); err != nil {
		return cfg, fmt.Errorf("reading datapath settings: %w", err)
	}
	return cfg, nil
}

// setPeerName says whether socket-level balancing remembers each socket's
// Service so that getpeername() answers with it.
func (m *Maps) setPeerName(on bool) error {
	return m.setConfigFlag(uint32(podnicPnCfgFlagsPN_CFG_PEER_NAME), on)
}

// SetExternalVIPs says whether some Service VIPs lie outside the Service
// CIDRs (externalIPs, LoadBalancer ingress IPs): while on, a pod's packet
// to any other address costs one more lookup on egress, so that one to
// such a VIP is translated. Off, they pass untranslated.
func (m *Maps) SetExternalVIPs(on bool) error {
	return m.setConfigFlag(uint32(podnicPnCfgFlagsPN_CFG_EXTERNAL), on)
}

// ExternalVIPs reports whether SetExternalVIPs is on.
func (m *Maps) ExternalVIPs() (bool, error) {
	cfg, err := m.readConfig()
	return cfg.Flags&uint32(podnicPnCfgFlagsPN_CFG_EXTERNAL) != 0, err
}

// SetNodePortAddrs gives the datapath the node's own addresses (its
// Node's InternalIPs), on which a pod's traffic to a Service's NodePort is
// translated, as kube-proxy translates it for pods on the node. Empty
// while no Service has a NodePort frontend: then no packet pays for the
// check. At most MaxNodeAddrs.
func (m *Maps) SetNodePortAddrs(addrs []netip.Addr) error {
	if m.NodeAddrs == nil {
		return fmt.Errorf("setting the node's addresses: %w", ErrNotLoaded)
	}
	if len(addrs) > MaxNodeAddrs {
		return fmt.Errorf("setting the node's addresses: %d addresses, at most %d", len(addrs), MaxNodeAddrs)
	}
	var n nodeAddrs
	for i, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("setting the node's addresses: invalid address %v", a)
		}
		n.Addr[i] = AddrFrom(a)
	}
	n.Count = uint32(len(addrs))
	// The flag that makes packets read the addresses goes on after them
	// and off before they go.
	flag := uint32(podnicPnCfgFlagsPN_CFG_NODEPORT)
	if n.Count == 0 {
		if err := m.setConfigFlag(flag, false); err != nil {
			return err
		}
	}
	if err := m.NodeAddrs.Put(uint32(0), &n); err != nil {
		return fmt.Errorf("writing the node's addresses: %w", err)
	}
	if n.Count > 0 {
		return m.setConfigFlag(flag, true)
	}
	return nil
}

// NodePortAddrs returns what SetNodePortAddrs set.
func (m *Maps) NodePortAddrs() ([]netip.Addr, error) {
	if m.NodeAddrs == nil {
		return nil, fmt.Errorf("reading the node's addresses: %w", ErrNotLoaded)
	}
	var n nodeAddrs
	if err := m.NodeAddrs.Lookup(uint32(0), &n); err != nil {
		return nil, fmt.Errorf("reading the node's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, n.Count)
	for i := 0; i < int(min(n.Count, MaxNodeAddrs)); i++ {
		out = append(out, n.Addr[i].IP())
	}
	return out, nil
}

func (m *Maps) setConfigFlag(flag uint32, on bool) error {
	cfg, err := m.readConfig()
	if err != nil {
		return err
	}
	cfg.Flags &^= flag
	if on {
		cfg.Flags |= flag
	}
	if err := m.Config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("writing datapath settings: %w", err)
	}
	return nil
}

// raiseLiveUntil makes podnic_live_v1 cover every conntrack entry in the
// map, so that replies of flows written by an earlier build (or by
// userspace) are still looked up. Load calls it.
func (m *Maps) raiseLiveUntil() error {
	if m.Live == nil || m.Conntrack == nil {
		return fmt.Errorf("reading conntrack lifetimes: %w", ErrNotLoaded)
	}
	var (
		k    CTKey
		e    CTEntry
		last [2]uint64
	)
	it := m.Conntrack.Iterate()
	for it.Next(&k, &e) {
		i := 1
		if k.Proto == TCP || k.Proto == SCTP { // pn_live_proto
			i = 0
		}
		last[i] = max(last[i], e.Expires)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading conntrack lifetimes: %w", err)
	}
	if last == [2]uint64{} {
		return nil
	}
	// Which interface a flow's replies arrive on is not in the entry:
	// raise every slot.
	for slot := uint32(0); slot < m.Live.MaxEntries(); slot++ {
		var live podnicPnLive
		if err := m.Live.Lookup(slot, &live); err != nil {
			return fmt.Errorf("reading conntrack lifetimes: %w", err)
		}
		changed := false
		for i := range last {
			if last[i] != 0 && live.Until[i] < last[i]+2*uint64(time.Second) {
				live.Until[i] = last[i] + 2*uint64(time.Second)
				changed = true
			}
		}
		if !changed {
			continue
		}
		if err := m.Live.Put(slot, &live); err != nil {
			return fmt.Errorf("writing conntrack lifetimes: %w", err)
		}
	}
	return nil
}
