package nodeagent

import (
	"fmt"
	"log/slog"
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

	mu          sync.Mutex
	zone        string
	zoneChanged bool
	ready       bool // every source has delivered its initial list

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
			a.log.Warn("service port rejected", "service", key, "reason", r)
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

// SyncNow runs one sync in the caller's goroutine (for tests and
// benchmarks that do not run the loop).
func (a *Agent) SyncNow() error { return a.sync() }

func (a *Agent) sync() error {
	a.mu.Lock()
	ready, zoneChanged := a.ready, a.zoneChanged
	a.node.Zone, a.zoneChanged = a.zone, false
	a.mu.Unlock()
	if !ready {
		return nil
	}
	start := a.clock.Now()
	svcChanges := a.services.Take()
	sliceChanges := a.slices.Take()

	full := !a.syncer.Loaded() || zoneChanged
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
				delete(a.desired, k)
			}
			keys = append(keys, k)
		}
		delete(a.frontendsOf, name)
		svc := a.svcs[name]
		if svc == nil {
			continue
		}
		ds := desiredFrontends(name, svc, a.slicesOf[name], a.node)
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
// Service has an external VIP and off when none has, writing only on a
// change (and on every full sync).
func (a *Agent) syncExternalFlag(full bool) error {
	want := a.externals > 0
	if !full && a.externalOn != nil && *a.externalOn == want {
		return nil
	}
	a.externalOn = nil
	if err := a.syncer.maps.SetExternalVIPs(want); err != nil {
		return fmt.Errorf("setting the external-VIP lookup: %w", err)
	}
	a.externalOn = &want
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

// ServiceOf names the Service and port a frontend belongs to, and says
// whether its VIP is one of the Service's external addresses.
func (a *Agent) ServiceOf(k bpf.ServiceKey) (service, port string, external, ok bool) {
	a.desiredMu.RLock()
	defer a.desiredMu.RUnlock()
	d := a.desired[k]
	if d == nil {
		return "", "", false, false
	}
	return d.Service.String(), d.PortName, d.External, true
}
