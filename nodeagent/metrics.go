package nodeagent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent/localapi"
)

// Metrics are the agent's Prometheus metrics, in their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	syncDuration *prometheus.HistogramVec
	programming  *prometheus.HistogramVec
	syncs        *prometheus.CounterVec
	writes       *prometheus.CounterVec
	lastSync     prometheus.Gauge
	services     prometheus.Gauge
	frontends    prometheus.Gauge
	pending      *prometheus.GaugeVec
}

// NewMetrics registers the agent's metrics; d, when not nil, adds the
// datapath's: map fill and capacity, and the verdict counters.
func NewMetrics(d *bpf.Datapath) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "sync_duration_seconds",
			Help:    "Time of one sync: compute the desired frontends of what changed, write the difference to the maps.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18), // 100µs .. 13s
		}, []string{"kind"}),
		// Same definition and buckets as kube-proxy's
		// kubeproxy_network_programming_duration_seconds.
		programming: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "network_programming_duration_seconds",
			Help: "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to the map write that programs it.",
			Buckets: append(append(append(
				[]float64{0.25, 0.5},
				prometheus.LinearBuckets(1, 1, 59)...),
				prometheus.LinearBuckets(60, 5, 12)...),
				prometheus.LinearBuckets(120, 30, 7)...),
		}, []string{"ip_family"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "syncs_total",
			Help: "Syncs by result.",
		}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "map_operations_total",
			Help: "Map entries written or removed by syncs.",
		}, []string{"op"}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "last_sync_timestamp_seconds",
			Help: "When the last successful sync ended.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "services",
			Help: "Services proxied.",
		}),
		frontends: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "frontends",
			Help: "Service frontends (ClusterIP × port) programmed.",
		}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "podnic", Subsystem: "agent", Name: "pending_changes",
			Help: "Objects changed since the last sync began.",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(m.syncDuration, m.programming, m.syncs, m.writes, m.lastSync, m.services, m.frontends, m.pending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if d != nil {
		m.Registry.MustRegister(&datapathCollector{d: d})
	}
	return m
}

func (m *Metrics) observeSync(st SyncStatus, err error) {
	kind := "partial"
	if st.Full {
		kind = "full"
	}
	m.syncDuration.WithLabelValues(kind).Observe(st.Duration.Seconds())
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
	} else {
		m.syncs.WithLabelValues("success").Inc()
		m.lastSync.Set(float64(st.Time.UnixNano()) / 1e9)
	}
	w := st.Writes
	m.writes.WithLabelValues("write_backend").Add(float64(w.Backends))
	m.writes.WithLabelValues("write_slot").Add(float64(w.Slots))
	m.writes.WithLabelValues("write_service").Add(float64(w.Services))
	m.writes.WithLabelValues("write_vip_marker").Add(float64(w.Markers))
	m.writes.WithLabelValues("write_source_range").Add(float64(w.Ranges))
	m.writes.WithLabelValues("remove").Add(float64(w.Removed))
	m.services.Set(float64(st.Services))
	m.frontends.Set(float64(st.Frontends))
}

func (m *Metrics) observeProgramming(d time.Duration, ipv6 bool) {
	fam := "IPv4"
	if ipv6 {
		fam = "IPv6"
	}
	m.programming.WithLabelValues(fam).Observe(d.Seconds())
}

var (
	descEntries  = prometheus.NewDesc("podnic_map_entries", "Entries in a pinned map (LRU maps are counted at most every 10s).", []string{"map"}, nil)
	descCapacity = prometheus.NewDesc("podnic_map_capacity", "Maximum entries of a pinned map.", []string{"map"}, nil)
	descPackets  = prometheus.NewDesc("podnic_datapath_verdict_packets_total", "Packets by datapath verdict and attach point.", []string{"hook", "verdict"}, nil)
	descBytes    = prometheus.NewDesc("podnic_datapath_verdict_bytes_total", "Bytes by datapath verdict and attach point.", []string{"hook", "verdict"}, nil)
	descAttached = prometheus.NewDesc("podnic_attachments", "Attach points of pods' programs recorded under the root, by attach mode.", []string{"mode"}, nil)
	descStale    = prometheus.NewDesc("podnic_attachments_stale", "Attach points running an earlier build's program, not the one pinned under its name.", nil, nil)
)

// datapathCollector reads the maps at scrape time.
type datapathCollector struct {
	d *bpf.Datapath

	mu      sync.Mutex
	counted time.Time
	lru     map[string]int
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEntries
	ch <- descCapacity
	ch <- descPackets
	ch <- descBytes
	ch <- descAttached
	ch <- descStale
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range localapi.MapFill(c.d, c.lruCounts()) {
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(f.Capacity), f.Name)
	}
	if as, err := bpf.ListAttachments(c.d.Root); err == nil {
		st := localapi.Status{AttachedAs: map[string]int{string(bpf.ModeTCX): 0, string(bpf.ModeLegacy): 0}}
		localapi.CountAttachments(c.d, as, &st)
		for mode, n := range st.AttachedAs {
			ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, float64(n), mode)
		}
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, float64(st.StaleAttachments))
	}
	vs, err := c.d.Maps.ReadVerdicts()
	if err != nil {
		return
	}
	for _, v := range vs {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v.Packets), v.Dir.String(), v.Reason.String())
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v.Bytes), v.Dir.String(), v.Reason.String())
	}
}

// lruCounts counts the conntrack and affinity entries, which the datapath
// fills: a walk over up to 262,144 keys, so at most every 10 seconds.
func (c *datapathCollector) lruCounts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru == nil || time.Since(c.counted) > 10*time.Second {
		c.lru = map[string]int{
			"podnic_ct_v1":  localapi.CountEntries(c.d.Maps.Conntrack),
			"podnic_aff_v1": localapi.CountEntries(c.d.Maps.Affinity),
		}
		c.counted = time.Now()
	}
	return c.lru
}
