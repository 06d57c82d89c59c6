package wrkbench

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
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
	return pairedSpread(a, b, f).med
}

// spread is the median, smallest and largest of f over the rounds where
// both a and b have a sample; n is how many rounds that is.
type spread struct {
	med, min, max float64
	n             int
}

func pairedSpread(a, b []Sample, f func(a, b Sample) float64) spread {
	sp := spread{med: math.NaN(), min: math.Inf(1), max: math.Inf(-1)}
	var v []float64
	for i := range a {
		if i < len(b) {
			x := f(a[i], b[i])
			if math.IsNaN(x) || math.IsInf(x, 0) {
				continue
			}
			v = append(v, x)
			sp.min, sp.max = math.Min(sp.min, x), math.Max(sp.max, x)
		}
	}
	sp.n = len(v)
	if sp.n > 0 {
		sp.med = median(v)
	}
	return sp
}

func (sp spread) String(format string) string {
	if sp.n == 0 {
		return "–"
	}
	if sp.n == 1 {
		return fmt.Sprintf(format, sp.med)
	}
	return fmt.Sprintf(format+" ("+format+" … "+format+")", sp.med, sp.min, sp.max)
}

// Targets podnic is held to (the wrk issue): extra CPU per new connection,
// short-connection req/s against kube-proxy at the most Services, and
// keep-alive against direct.
const (
	targetDeltaCPU = 1.0  // µs per new connection, at every Service count
	targetOverNFT  = 1.15 // × kube-proxy nftables, short, most Services
	targetOverIPT  = 2.5  // × kube-proxy iptables-legacy, short, most Services
	keepAliveNoise = 0.02 // |1 - ratio| taken as noise even if no round crossed 1
)

// targetCandidates are the podnic paths held to the targets: the full path
// (every kube-proxy behaviour) and the socket path.
var targetCandidates = []string{TargetPodnicTCX, TargetPodnicSocket}

// verdict words a target's outcome.
func verdict(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// writeTargets writes how each podnic path fared against its targets,
// each as the median of the rounds' paired figures with their range.
func (r *Results) writeTargets(w io.Writer) {
	for _, c := range targetCandidates {
		r.writeTargetsOf(w, c)
	}
}

func (r *Results) writeTargetsOf(w io.Writer, targetCandidate string) {
	if len(r.Phases) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## %s against its targets\n\n", targetCandidate)
	fmt.Fprintln(w, "Each figure is paired within a round and given as median (smallest … largest round). "+
		"A target is met when the median meets it; keep-alive is within noise when the rounds' ratios to direct fall on both sides of 1, or the median is within 2 % of it.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Services | target | measured | |")
	fmt.Fprintln(w, "|---:|---|---|---|")
	most := r.Phases[0]
	for _, ph := range r.Phases {
		if ph.Services > most.Services {
			most = ph
		}
	}
	for _, ph := range r.Phases {
		find := func(name string, short bool) []Sample {
			return ph.Samples[Case{&Target{Name: name}, short}.String()]
		}
		pn, direct := find(targetCandidate, true), find(TargetDirect, true)
		if len(pn) == 0 || len(direct) == 0 {
			continue
		}
		d := pairedSpread(pn, direct, func(a, b Sample) float64 { return a.CPUPerRequest() - b.CPUPerRequest() })
		fmt.Fprintf(w, "| %d | extra CPU per new connection < %.0f µs (short, ΔCPU vs direct) | %s µs | %s |\n",
			ph.Services, targetDeltaCPU, d.String("%+.1f"), verdict(d.med < targetDeltaCPU, "met", "missed"))
		rps := func(a, b Sample) float64 { return a.RPS() / b.RPS() }
		if ph == most {
			for _, kp := range []struct {
				name   string
				target float64
			}{{TargetKubeProxyNFT, targetOverNFT}, {TargetKubeProxyIPT, targetOverIPT}} {
				k := find(kp.name, true)
				if len(k) == 0 {
					fmt.Fprintf(w, "| %d | short req/s ≥ %.2f× %s | not run | |\n", ph.Services, kp.target, kp.name)
					continue
				}
				x := pairedSpread(pn, k, rps)
				fmt.Fprintf(w, "| %d | short req/s ≥ %.2f× %s | %s× | %s |\n",
					ph.Services, kp.target, kp.name, x.String("%.2f"), verdict(x.med >= kp.target, "met", "missed"))
			}
		}
		ka := pairedSpread(find(targetCandidate, false), find(TargetDirect, false), rps)
		if ka.n > 0 {
			noise := (ka.min <= 1 && ka.max >= 1) || math.Abs(ka.med-1) <= keepAliveNoise
			fmt.Fprintf(w, "| %d | keep-alive req/s within noise of direct | %s× | %s |\n",
				ph.Services, ka.String("%.2f"), verdict(noise, "met", "missed"))
		}
	}
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
	took := r.Elapsed.Round(time.Second).String()
	if c.Budget > 0 {
		took += fmt.Sprintf(" (budget %v)", c.Budget)
		if r.Elapsed > c.Budget {
			took += fmt.Sprintf(", over the budget: setup and the first %d rounds of each phase did not fit in it", MinRounds)
		}
	}
	fmt.Fprintf(w, "- %d rounds, interleaved; wrk -t1 -c%d -d%v pinned to CPU %s, servers to CPU %s; suite took %s\n",
		c.Rounds, c.Conns, c.Duration, cpuClient, cpuServer, took)
	for _, ph := range r.Phases {
		if ph.BudgetNote != "" {
			fmt.Fprintf(w, "- %d Services: %s\n", ph.Services, ph.BudgetNote)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Medians over rounds. \"× direct\", \"× via node\", \"× nft\", \"× ipt\": this row's req/s over that row's, same round, median. "+
		"ΔCPU: CPU µs per request (wrk + servers + ksoftirqd) minus direct's, same round, median (smallest … largest round); with short connections that is the extra cost of a new connection. "+
		"SYN retrans: SYNs the client sent again, over all rounds — each a connect stalled for a second, which lowers req/s without showing in the latency columns (wrk times request to response).\n")
	r.writeTargets(w)
	for _, ph := range r.Phases {
		if ph.Setup > 1e9 {
			fmt.Fprintf(w, "\n(%d Services: filling and kube-proxy sync took %v)\n", ph.Services, ph.Setup.Round(1e9))
		}
		if len(ph.IPTPositions) > 0 && ph.Services > 1 {
			pos := make([]string, len(ph.IPTPositions))
			for i, p := range ph.IPTPositions {
				pos[i] = fmt.Sprint(p)
			}
			fmt.Fprintf(w, "\n(%d Services: kube-proxy iptables-legacy had the bench Service's rule at position %s of about %d in KUBE-SERVICES, round by round. "+
				"Every new connection walks the chain up to it, so its cost follows the position. kube-proxy writes the chain in a new random order at each sync; "+
				"each round after the first adds a Service, so that the order is drawn again and the phase is not one draw)\n",
				ph.Services, strings.Join(pos, ", "), ph.IPTRules)
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
					pairedSpread(s, direct, func(a, b Sample) float64 { return a.CPUPerRequest() - b.CPUPerRequest() }).String("%+.1f"),
					fmtNum(paired(s, direct, ratio), "%.2f"),
					fmtNum(paired(s, via, ratio), "%.2f"),
					fmtNum(paired(s, nft, ratio), "%.2f"),
					fmtNum(paired(s, ipt, ratio), "%.2f"),
					errs, syn)
			}
		}
		ph.writeProfile(w, r.Config.ProfileRuns)
	}
}

// writeProfile writes the phase's perf attribution: where the CPU of a
// short connection goes, direct against each podnic path profiled.
func (ph *Phase) writeProfile(w io.Writer, runs int) {
	if ph.Profiles == nil && ph.ProfileNote == "" {
		return
	}
	fmt.Fprintf(w, "\n## %d Service(s), short connections: where the CPU goes (perf)\n\n", ph.Services)
	if ph.Profiles == nil {
		fmt.Fprintf(w, "Not profiled: %s.\n", ph.ProfileNote)
		return
	}
	direct := ph.Profiles[TargetDirect].PerRequest()
	fmt.Fprintf(w, "`perf record -a -F %d` over %d alternated runs of each client, µs of CPU per request by symbol group, all CPUs. "+
		"Samples are shares of one run's CPU, so other load on the machine moves these far less than the ΔCPU above; "+
		"the hooks are inlined into `__dev_queue_xmit` and `__netif_receive_skb_core`, so only their difference is the hooks'. "+
		"podnic's own cost per connection is about the programs' row plus the two hook differences.\n\n", profileHz, max(runs, 1))
	var paths []string
	head, rule := "| symbols | "+TargetDirect+" |", "|---|---:|"
	for _, c := range targetCandidates {
		if ph.Profiles[c] != nil {
			paths = append(paths, c)
			head += " " + c + " | difference |"
			rule += "---:|---:|"
		}
	}
	fmt.Fprintf(w, "%s\n%s\n", head, rule)
	for _, g := range ProfileGroups {
		fmt.Fprintf(w, "| %s | %.2f |", g, direct[g])
		for _, c := range paths {
			pn := ph.Profiles[c].PerRequest()
			fmt.Fprintf(w, " %.2f | %+.2f |", pn[g], hundredths(pn[g]-direct[g]))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, c := range paths {
		pn := ph.Profiles[c].PerRequest()
		own := pn[GroupPrograms] - direct[GroupPrograms] + pn[GroupEgress] - direct[GroupEgress] + pn[GroupIngress] - direct[GroupIngress]
		fmt.Fprintf(w, "%s: podnic's programs and hooks: %+.2f µs per short connection.\n", c, hundredths(own))
	}
}

// hundredths rounds x to two decimals, a rounding error of zero to +0
// (sums over map order differ in their last bits).
func hundredths(x float64) float64 { return math.Round(x*100)/100 + 0 }

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
