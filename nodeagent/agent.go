package nodeagent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/clock"

	"github.com/podnic/podnic/bpf"
)

// Options are the agent's tunables, already validated.
type Options struct {
	NodeName string // this Node: endpoints on it are local
	// Sync bounds, as kube-proxy's --min-sync-period and --sync-period.
	MinSyncInterval time.Duration
	MaxSyncInterval time.Duration
	RetryInterval   time.Duration
	Clock           clock.Clock
	Log             *slog.Logger
	Metrics         *Metrics // nil: none
}

// Agent turns Services and EndpointSlices into the Service maps: sources
// feed change trackers, one bounded-frequency runner drives sync, and sync
// computes the desired frontends of the Services that changed, then lets
// the Syncer write the difference.
type Agent struct {
	opt      Options
	log      *slog.Logger
	clock    clock.Clock
	syncer   *Syncer
	services *ChangeTracker[*serviceInfo]
	slices   *ChangeTracker[*sliceInfo]
	runner   *BoundedFrequencyRunner
	start    time.Time

	mu             sync.Mutex
	zone           string
	zoneChanged    bool
	nodeIPs        []netip.Addr // this Node's InternalIPs, for NodePorts
	nodeIPsChanged bool
	ready          bool // every source has delivered its initial list

	// Owned by the sync goroutine.
	svcs        map[ServiceName]*serviceInfo
	slicesOf    map[ServiceName]map[string]*sliceInfo
	sliceOwner  map[string]ServiceName
	desiredMu   sync.RWMutex // desired is read by the local API
	desired     map[bpf.ServiceKey]*desiredService
	frontendsOf map[ServiceName][]bpf.ServiceKey
	node        Topology
	externals   int   // desired frontends with External set
	externalOn  *bool // the datapath's external-VIP flag as last written; nil: unknown
	nodeIPsUsed []netip.Addr
	nodePorts   int           // desired frontends with NodePort set
	nodeAddrsOn *[]netip.Addr // the datapath's node addresses as last written; nil: unknown

	statusMu sync.RWMutex
	status   SyncStatus
}

// SyncStatus is the outcome of the last sync.
type SyncStatus struct {
	Time      time.Time     // when it ended; zero before the first
	Duration  time.Duration // how long it took
	Full      bool          // whether it compared every frontend
	Error     string        // empty when it succeeded
	Writes    WriteStats
	Services  int // Services proxied
	Frontends int // service entries (VIP × port) desired
	Syncs     int // syncs so far
}

// NewAgent returns an agent writing to m. Call Run to start syncing and
// SetReady once the sources have delivered their initial lists.
func NewAgent(m ServiceMaps, opt Options) (*Agent, error) {
	if opt.Clock == nil {
		opt.Clock = clock.RealClock{}
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.MaxSyncInterval == 0 {
		opt.MaxSyncInterval = time.Hour
	}
	if opt.RetryInterval == 0 {
		opt.RetryInterval = time.Second
	}
	a := &Agent{
		opt: opt, log: opt.Log, clock: opt.Clock, start: opt.Clock.Now(),
		syncer:      NewSyncer(m),
		services:    NewChangeTracker((*serviceInfo).equal, nil),
		slices:      NewChangeTracker((*sliceInfo).equal, func(s *sliceInfo) time.Time { return s.Trigger }),
		svcs:        map[ServiceName]*serviceInfo{},
		slicesOf:    map[ServiceName]map[string]*sliceInfo{},
		sliceOwner:  map[string]ServiceName{},
		desired:     map[bpf.ServiceKey]*desiredService{},
		frontendsOf: map[ServiceName][]bpf.ServiceKey{},
		node:        Topology{Node: opt.NodeName},
	}
	r, err := NewBoundedFrequencyRunner("sync", a.sync, opt.MinSyncInterval, opt.RetryInterval, opt.MaxSyncInterval, opt.Clock, opt.Log)
	if err != nil {
		return nil, err
	}
	a.runner = r
	return a, nil
}

// Run syncs until stop is closed.
func (a *Agent) Run(stop <-chan struct{}) { a.runner.Loop(stop) }

// SetReady says every source has delivered its initial state: until then
// the agent writes nothing, so a restart never removes a Service it has
// not heard of yet.
func (a *Agent) SetReady() {
	a.mu.Lock()
	a.ready = true
	a.mu.Unlock()
	a.runner.Run()
}

// OnService records a Service's new state.
func (a *Agent) OnService(svc *v1.Service) {
	key := svc.Namespace + "/" + svc.Name
	info, skip := parseService(svc)
	if info == nil {
		a.log.Debug("service not proxied", "service", key, "reason", skip)
		a.OnServiceDelete(svc.Namespace, svc.Name)
		return
	}
	if a.services.Set(key, info) {
		for _, r := range info.Rejected {
			a.log.Warn("part of service not served", "service", key, "reason", r)
		}
		a.runner.Run()
	}
}

// OnServiceDelete records that a Service is gone.
func (a *Agent) OnServiceDelete(namespace, name string) {
	if a.services.Delete(namespace + "/" + name) {
		a.runner.Run()
	}
}

// OnEndpointSlice records an EndpointSlice's new state.
func (a *Agent) OnEndpointSlice(s *discovery.EndpointSlice) {
	key := s.Namespace + "/" + s.Name
	info, skip := parseSlice(s)
	if info == nil {
		a.log.Debug("endpointslice ignored", "endpointslice", key, "reason", skip)
		a.OnEndpointSliceDelete(s.Namespace, s.Name)
		return
	}
	if a.slices.Set(key, info) {
		a.runner.Run()
	}
}

// OnEndpointSliceDelete records that an EndpointSlice is gone.
func (a *Agent) OnEndpointSliceDelete(namespace, name string) {
	if a.slices.Delete(namespace + "/" + name) {
		a.runner.Run()
	}
}

// OnNode records this Node's labels: its zone picks topology hints.
func (a *Agent) OnNode(labels map[string]string) {
	zone := labels[LabelZone]
	a.mu.Lock()
	changed := zone != a.zone
	if changed {
		a.zone, a.zoneChanged = zone, true
	}
	a.mu.Unlock()
	if changed {
		a.log.Info("node zone", "zone", zone)
		a.runner.Run()
	}
}

// OnNodeIPs records this Node's addresses (its InternalIPs): a pod's
// traffic to one of them on a NodePort is translated, as kube-proxy
// translates it for pods on the node. The datapath takes at most
// bpf.MaxNodeAddrs; more are left out with a warning.
func (a *Agent) OnNodeIPs(ips []netip.Addr) {
	ips = slices.Clone(ips)
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	slices.SortFunc(ips, func(x, y netip.Addr) int { return x.Compare(y) })
	ips = slices.Compact(ips)
	if len(ips) > bpf.MaxNodeAddrs {
		a.log.Warn("node has more addresses than NodePorts are served on", "addresses", ips, "served", ips[:bpf.MaxNodeAddrs])
		ips = ips[:bpf.MaxNodeAddrs]
	}
	a.mu.Lock()
	changed := !slices.Equal(ips, a.nodeIPs)
	if changed {
		a.nodeIPs, a.nodeIPsChanged = ips, true
	}
	a.mu.Unlock()
	if changed {
		a.log.Info("node addresses", "addresses", ips)
		a.runner.Run()
	}
}

// SyncNow runs one sync in the caller's goroutine (for tests and
// benchmarks that do not run the loop).
func (a *Agent) SyncNow() error { return a.sync() }

func (a *Agent) sync() error {
	a.mu.Lock()
	ready, zoneChanged, nodeIPsChanged := a.ready, a.zoneChanged, a.nodeIPsChanged
	a.node.Zone, a.zoneChanged = a.zone, false
	a.nodeIPsUsed, a.nodeIPsChanged = a.nodeIPs, false
	a.mu.Unlock()
	if !ready {
		return nil
	}
	start := a.clock.Now()
	svcChanges := a.services.Take()
	sliceChanges := a.slices.Take()

	full := !a.syncer.Loaded() || zoneChanged || nodeIPsChanged
	dirty := map[ServiceName]bool{}
	for key, ch := range svcChanges {
		name := splitKey(key)
		dirty[name] = true
		if ch.Deleted {
			delete(a.svcs, name)
		} else {
			a.svcs[name] = ch.Value
		}
	}
	var triggers []trigger
	for key, ch := range sliceChanges {
		if old, ok := a.sliceOwner[key]; ok {
			dirty[old] = true
			delete(a.slicesOf[old], key)
			if len(a.slicesOf[old]) == 0 {
				delete(a.slicesOf, old)
			}
			delete(a.sliceOwner, key)
		}
		if ch.Deleted {
			continue
		}
		owner := ch.Value.Service
		dirty[owner] = true
		if a.slicesOf[owner] == nil {
			a.slicesOf[owner] = map[string]*sliceInfo{}
		}
		a.slicesOf[owner][key] = ch.Value
		a.sliceOwner[key] = owner
		for _, t := range ch.Triggers {
			if t.After(a.start) {
				triggers = append(triggers, trigger{at: t, ipv6: ch.Value.IPv6})
			}
		}
	}
	if full {
		for name := range a.frontendsOf {
			dirty[name] = true
		}
		for name := range a.svcs {
			dirty[name] = true
		}
	}

	var keys []bpf.ServiceKey
	a.desiredMu.Lock()
	for name := range dirty {
		for _, k := range a.frontendsOf[name] {
			if d := a.desired[k]; d != nil && d.Service == name {
				if d.External {
					a.externals--
				}
				if d.NodePort {
					a.nodePorts--
				}
				delete(a.desired, k)
			}
			keys = append(keys, k)
		}
		delete(a.frontendsOf, name)
		svc := a.svcs[name]
		if svc == nil {
			continue
		}
		ds := desiredFrontends(name, svc, a.slicesOf[name], a.node, a.nodeIPsUsed)
		fs := make([]bpf.ServiceKey, 0, len(ds))
		for _, d := range ds {
			if other := a.desired[d.Key]; other != nil && other.Service != name {
				a.log.Warn("frontend claimed by two services", "frontend", d.Key.String(), "service", name.String(), "kept", other.Service.String())
				continue
			}
			a.desired[d.Key] = d
			if d.External {
				a.externals++
			}
			if d.NodePort {
				a.nodePorts++
			}
			fs = append(fs, d.Key)
			keys = append(keys, d.Key)
		}
		a.frontendsOf[name] = fs
	}
	a.desiredMu.Unlock()

	writes, err := a.syncer.Apply(a.desired, keys, full)
	if err == nil {
		err = a.syncExternalFlag(full)
	}
	if err == nil {
		err = a.syncNodePortAddrs(full)
	}
	end := a.clock.Now()
	st := SyncStatus{
		Time: end, Duration: end.Sub(start), Full: full, Writes: writes,
		Services: len(a.frontendsOf), Frontends: len(a.desired),
	}
	if err != nil {
		st.Error = err.Error()
		a.log.Error("sync failed; next sync re-reads the maps", "error", err, "writes", writes.Total())
	} else if writes.Total() > 0 || full {
		a.log.Info("synced", "full", full, "services", st.Services, "frontends", st.Frontends,
			"writes", writes.Total(), "duration", st.Duration)
	}
	a.statusMu.Lock()
	st.Syncs = a.status.Syncs + 1
	a.status = st
	a.statusMu.Unlock()
	if m := a.opt.Metrics; m != nil {
		m.observeSync(st, err)
		if err == nil {
			for _, t := range triggers {
				m.observeProgramming(end.Sub(t.at), t.ipv6)
			}
		}
		m.pending.WithLabelValues("service").Set(float64(a.services.Pending()))
		m.pending.WithLabelValues("endpointslice").Set(float64(a.slices.Pending()))
	}
	return err
}

// syncExternalFlag turns the datapath's external-VIP lookup on while some
// Service has an external VIP and off when none has.
func (a *Agent) syncExternalFlag(full bool) error {
	return syncSetting(full, &a.externalOn, a.externals > 0, func(x, y bool) bool { return x == y }, func(on bool) error {
		if err := a.syncer.maps.SetExternalVIPs(on); err != nil {
			return fmt.Errorf("setting the external-VIP lookup: %w", err)
		}
		return nil
	})
}

// syncNodePortAddrs gives the datapath the node's addresses while some
// frontend is a NodePort, and none otherwise (no packet then pays for the
// check).
func (a *Agent) syncNodePortAddrs(full bool) error {
	var want []netip.Addr
	if a.nodePorts > 0 {
		want = a.nodeIPsUsed
	}
	return syncSetting(full, &a.nodeAddrsOn, want, slices.Equal, func(addrs []netip.Addr) error {
		if err := a.syncer.maps.SetNodePortAddrs(addrs); err != nil {
			return fmt.Errorf("setting the node's NodePort addresses: %w", err)
		}
		return nil
	})
}

// syncSetting writes a datapath setting with write only when want differs
// from what *last says was written, or on a full sync. After a failed
// write nothing is known to be written.
func syncSetting[T any](full bool, last **T, want T, equal func(T, T) bool, write func(T) error) error {
	if !full && *last != nil && equal(**last, want) {
		return nil
	}
	*last = nil
	if err := write(want); err != nil {
		return err
	}
	*last = &want
	return nil
}

type trigger struct {
	at   time.Time
	ipv6 bool
}

func splitKey(key string) ServiceName {
	for i := range len(key) {
		if key[i] == '/' {
			return ServiceName{Namespace: key[:i], Name: key[i+1:]}
		}
	}
	return ServiceName{Name: key}
}

// Status is the last sync's outcome.
func (a *Agent) Status() SyncStatus {
	a.statusMu.RLock()
	defer a.statusMu.RUnlock()
	return a.status
}

// ServiceOf names the Service and port a frontend belongs to, and its
// kind: ClusterIP, External (an external address of the Service) or
// NodePort (one of the node's addresses).
func (a *Agent) ServiceOf(k bpf.ServiceKey) (service, port, kind string, ok bool) {
	a.desiredMu.RLock()
	defer a.desiredMu.RUnlock()
	d := a.desired[k]
	if d == nil {
		return "", "", "", false
	}
	return d.Service.String(), d.PortName, d.Kind(), true
}
