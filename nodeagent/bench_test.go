package nodeagent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"

	"github.com/podnic/podnic/bpf"
)

// Scale plan: Service i has ClusterIP 10.96.x.y (i+1 spread over two
// octets) and 10 endpoints in 10.128.0.0/9, all on port 8080.

func scaleObjects(a *Agent, services, endpoints int, gen int) {
	for i := range services {
		ip := netip.AddrFrom4([4]byte{10, 96, byte((i + 1) >> 8), byte(i + 1)})
		a.OnService(service(fmt.Sprintf("svc-%d", i), []string{ip.String()}))
		a.OnEndpointSlice(scaleSlice(i, endpoints, gen))
	}
}

func scaleSlice(i, endpoints, gen int) *discovery.EndpointSlice {
	var eps []sliceEP
	for j := range endpoints {
		n := i*endpoints + j + gen
		eps = append(eps, up(netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}).String()))
	}
	return slice(fmt.Sprintf("svc-%d", i), fmt.Sprintf("svc-%d-v4", i), false, 8080, eps...)
}

func rssMiB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkSync10kServices programs 10,000 Services × 10 endpoints into
// the real maps (full sync from the caches), then one endpoint change at a
// time (event to map write), and reports both, with the process's RSS.
func BenchmarkSync10kServices(b *testing.B) {
	if os.Getuid() != 0 {
		b.Skip("needs root to load BPF maps")
	}
	const services, endpoints, changes = 10000, 10, 500
	for b.Loop() {
		root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-agent-bench-%d", os.Getpid()))
		d, err := bpf.Load(root)
		if err != nil {
			b.Fatal(err)
		}
		a := testAgent(b, &d.Maps)
		scaleObjects(a, services, endpoints, 0)
		a.SetReady()
		start := time.Now()
		mustSync(b, a)
		full := time.Since(start)
		st := a.Status()

		// One change: one Service's slice gets a new endpoint set.
		var lat []time.Duration
		for c := range changes {
			i := (c * 7919) % services
			start := time.Now()
			a.OnEndpointSlice(scaleSlice(i, endpoints, 1+c%2))
			mustSync(b, a)
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		b.ReportMetric(full.Seconds(), "full-sync-s")
		b.ReportMetric(float64(st.Writes.Total()), "full-sync-writes")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "change-p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "change-p99-ms")
		b.ReportMetric(rssMiB(), "rss-MiB")
		b.Logf("full sync of %d Services × %d endpoints: %s, %d map writes; one change p50 %s p99 %s; RSS %.0f MiB",
			services, endpoints, full, st.Writes.Total(), lat[len(lat)/2], lat[len(lat)*99/100], rssMiB())

		// Restart: a new agent reads the maps back and finds nothing to do.
		r := testAgent(b, &d.Maps)
		scaleObjects(r, services, endpoints, 0)
		for c := range changes {
			i := (c * 7919) % services
			r.OnEndpointSlice(scaleSlice(i, endpoints, 1+c%2))
		}
		r.SetReady()
		start = time.Now()
		mustSync(b, r)
		b.ReportMetric(time.Since(start).Seconds(), "restart-sync-s")
		b.Logf("restart sync (read maps, diff, %d writes): %s", r.Status().Writes.Total(), time.Since(start))
		d.Close()
		if err := bpf.Unpin(root); err != nil {
			b.Fatal(err)
		}
	}
}
