package wrkbench

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
)

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// paired applies f to this case's and another case's sample of the same
// round and returns the median over rounds.
func paired(a, b []Sample, f func(a, b Sample) float64) float64 {
	var v []float64
	for i := range a {
		if i < len(b) {
			v = append(v, f(a[i], b[i]))
		}
	}
	return median(v)
}

func of(s []Sample, f func(Sample) float64) float64 {
	v := make([]float64, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	return median(v)
}

func fmtNum(x float64, format string) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "–"
	}
	return fmt.Sprintf(format, x)
}

// WriteMarkdown writes the report: one table per phase and connection
// kind, medians over rounds, ratios paired within each round.
func (r *Results) WriteMarkdown(w io.Writer) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "# wrk comparison, %s\n\n", r.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- command: `%s`\n", strings.Join(os.Args, " "))
	fmt.Fprintf(w, "- machine: %s, Linux %s, %d CPUs (%s), %s\n", host, kernelRelease(), runtime.NumCPU(), cpuModel(), runtime.Version())
	fmt.Fprintf(w, "- load average before / after: %s / %s (other work on the machine adds noise)\n", r.LoadBefore, r.LoadAfter)
	c := r.Config
	peer := "getpeername() names the Service (podnic-agent's default)"
	if r.Config.NoPeerNames {
		peer = "getpeername() names the backend (--socket-lb-peer-name=false)"
	}
	backend := "podnic-echo --minimal (a fixed HTTP response, no per-request work: the datapath's cost is not hidden behind the server's)"
	if c.NetHTTP {
		backend = "podnic-echo on net/http (-wrkbench.net-http)"
	}
	fmt.Fprintf(w, "- backends: %s\n", backend)
	fmt.Fprintf(w, "- podnic as podnic-agent runs it: Service CIDR known, TCP connect() balanced at the socket, %s; the tc-only client has socket balancing off\n", peer)
	fmt.Fprintf(w, "- %d rounds, interleaved; wrk -t1 -c%d -d%v pinned to CPU %s, servers to CPU %s; suite took %v\n\n",
		c.Rounds, c.Conns, c.Duration, cpuClient, cpuServer, r.Elapsed.Round(1e9))
	fmt.Fprintf(w, "Medians over rounds. \"× direct\", \"× via node\", \"× nft\", \"× ipt\": this row's req/s over that row's, same round, median. "+
		"ΔCPU: CPU µs per request (wrk + servers + ksoftirqd) minus direct's, same round, median; with short connections that is the extra cost of a new connection. "+
		"SYN retrans: SYNs the client sent again, over all rounds — each a connect stalled for a second, which lowers req/s without showing in the latency columns (wrk times request to response).\n")
	for _, ph := range r.Phases {
		if ph.Setup > 1e9 {
			fmt.Fprintf(w, "\n(%d Services: filling and kube-proxy sync took %v)\n", ph.Services, ph.Setup.Round(1e9))
		}
		if ph.IPTPosition > 0 && ph.Services > 1 {
			fmt.Fprintf(w, "\n(%d Services: kube-proxy iptables-legacy has the bench Service's rule at position %d of %d in KUBE-SERVICES; "+
				"every new connection walks the chain up to it, so its cost depends on that position, which kube-proxy's ordering decides)\n",
				ph.Services, ph.IPTPosition, ph.IPTRules)
		}
		for _, short := range []bool{false, true} {
			kind := "keep-alive"
			if short {
				kind = "short connections (Connection: close)"
			}
			fmt.Fprintf(w, "\n## %d Service(s), %s\n\n", ph.Services, kind)
			fmt.Fprintln(w, "| path | req/s | p50 µs | p99 µs | CPU µs/req | ΔCPU µs/req | × direct | × via node | × nft | × ipt | errors | SYN retrans |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
			find := func(name string) []Sample {
				return ph.Samples[Case{&Target{Name: name}, short}.String()]
			}
			direct, via := find(TargetDirect), find(TargetViaNode)
			nft, ipt := find(TargetKubeProxyNFT), find(TargetKubeProxyIPT)
			ratio := func(a, b Sample) float64 { return a.RPS() / b.RPS() }
			for _, cs := range ph.Cases {
				if cs.Short != short {
					continue
				}
				s := ph.Samples[cs.String()]
				var errs, syn int64
				for _, x := range s {
					errs += x.Errors()
					syn += x.SynRetrans
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n",
					cs.Target.Name,
					fmtNum(of(s, Sample.RPS), "%.0f"),
					fmtNum(of(s, func(x Sample) float64 { return x.P50US }), "%.0f"),
					fmtNum(of(s, func(x Sample) float64 { return x.P99US }), "%.0f"),
					fmtNum(of(s, Sample.CPUPerRequest), "%.1f"),
					fmtNum(paired(s, direct, func(a, b Sample) float64 { return a.CPUPerRequest() - b.CPUPerRequest() }), "%+.1f"),
					fmtNum(paired(s, direct, ratio), "%.2f"),
					fmtNum(paired(s, via, ratio), "%.2f"),
					fmtNum(paired(s, nft, ratio), "%.2f"),
					fmtNum(paired(s, ipt, ratio), "%.2f"),
					errs, syn)
			}
		}
	}
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
