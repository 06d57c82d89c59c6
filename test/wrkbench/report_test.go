package wrkbench

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// sample makes a wrk sample of one second with rps requests and cpu µs of
// CPU per request.
func sample(rps, cpu float64) Sample {
	return Sample{Requests: int64(rps), DurationUS: 1e6, CPUUS: cpu * rps}
}

// phase builds a phase from per-round (req/s, CPU µs per request) pairs of
// each case.
func phase(services int, samples map[Case][][2]float64) *Phase {
	ph := &Phase{Services: services, Samples: map[string][]Sample{}}
	for c, rounds := range samples {
		ph.Cases = append(ph.Cases, c)
		for _, r := range rounds {
			ph.Samples[c.String()] = append(ph.Samples[c.String()], sample(r[0], r[1]))
		}
	}
	return ph
}

func short(name string) Case     { return Case{&Target{Name: name}, true} }
func keepAlive(name string) Case { return Case{&Target{Name: name}, false} }

// The report judges podnic against each target from the rounds' paired
// figures: the median decides, the range is shown beside it.
func TestReportJudgesTheTargetsFromPairedRounds(t *testing.T) {
	res := &Results{Config: QuickConfig(), Phases: []*Phase{
		phase(1, map[Case][][2]float64{
			short(TargetDirect):        {{1000, 60}, {1100, 62}, {900, 61}},
			short(TargetPodnicTCX):     {{950, 60.5}, {1000, 62.9}, {850, 61.2}}, // +0.5, +0.9, +0.2
			keepAlive(TargetDirect):    {{5000, 10}, {5200, 10}, {4800, 10}},
			keepAlive(TargetPodnicTCX): {{4900, 10}, {5300, 10}, {4700, 10}}, // 0.98, 1.02, 0.98
		}),
		phase(10000, map[Case][][2]float64{
			short(TargetDirect):           {{1000, 60}, {1000, 60}, {1000, 60}},
			short(TargetPodnicTCX):        {{900, 62}, {900, 61.5}, {900, 63}}, // +2, +1.5, +3
			short(TargetKubeProxyNFT):     {{800, 70}, {760, 70}, {700, 70}},   // 1.125, 1.18, 1.29
			short(TargetKubeProxyIPT):     {{400, 90}, {300, 90}, {380, 90}},   // 2.25, 3, 2.37
			keepAlive(TargetDirect):       {{5000, 10}, {5000, 10}, {5000, 10}},
			keepAlive(TargetPodnicTCX):    {{4500, 10}, {4600, 10}, {4700, 10}}, // 0.9, 0.92, 0.94
			keepAlive(TargetKubeProxyNFT): {{4000, 10}, {4000, 10}, {4000, 10}},
		}),
	}}
	out := reportHas(t, res,
		"| 1 | extra CPU per new connection < 1 µs (short, ΔCPU vs direct) | +0.5 (+0.2 … +0.9) µs | met |",
		"| 1 | keep-alive req/s within noise of direct | 0.98 (0.98 … 1.02)× | met |",
		"| 10000 | extra CPU per new connection < 1 µs (short, ΔCPU vs direct) | +2.0 (+1.5 … +3.0) µs | missed |",
		"| 10000 | short req/s ≥ 1.15× kube-proxy nftables | 1.18 (1.12 … 1.29)× | met |",
		"| 10000 | short req/s ≥ 2.50× kube-proxy iptables-legacy | 2.37 (2.25 … 3.00)× | missed |",
		"| 10000 | keep-alive req/s within noise of direct | 0.92 (0.90 … 0.94)× | missed |",
	)
	// Only the phase with the most Services is judged against kube-proxy.
	if strings.Contains(out, "| 1 | short req/s ≥") {
		t.Error("the 1-Service phase is judged against kube-proxy")
	}
	if t.Failed() {
		t.Log("\n" + out)
	}
}

// A perf report is read into samples by symbol, grouped, and turned into
// µs per request; idle time counts nowhere.
func TestProfileAttributesSamplesPerRequest(t *testing.T) {
	const report = `# Total Lost Samples: 0
#
# Samples: 86K of event 'cpu-clock:ppp'
# Event count (approx.): 10753655400
#
# Overhead       Samples  Symbol
# ........  ............  .......................................
#
     4.85%          4170  [k] pv_native_safe_halt
     1.14%           980  [k] veth_xmit
     1.12%           964  [k] __dev_queue_xmit
     0.75%           648  [k] __netif_receive_skb_core.constprop.0
     0.26%           227  [k] bpf_prog_7d8c70549960c242_podnic_from_pod
     0.19%           163  [k] bpf_prog_51ee40d0dd620c8c_podnic_to_pod
     0.10%            85  [k] bpf_prog_fd2334d14ad558e0_podnic_connect4
     0.02%            20  [.] runtime.mallocgc
`
	samples, err := parsePerfReport(report)
	if err != nil {
		t.Fatal(err)
	}
	if samples["__netif_receive_skb_core.constprop.0"] != 648 || samples["runtime.mallocgc"] != 20 || len(samples) != 8 {
		t.Fatalf("parsed %v", samples)
	}
	var p Profile
	p.add(profileHz, samples)
	got := p.PerRequest()
	per := 1e6 / profileHz / profileHz // µs per sample per request
	for g, want := range map[string]float64{
		GroupPrograms: 475 * per,
		GroupEgress:   964 * per,
		GroupIngress:  648 * per,
		GroupRest:     1000 * per,
		GroupTotal:    3087 * per,
	} {
		if d := got[g] - want; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s: %g µs per request, want %g", g, got[g], want)
		}
	}
	if _, err := parsePerfReport("# nothing\n"); err == nil {
		t.Error("a report without samples parsed")
	}

	ph := &Phase{Services: 1, Profiles: map[string]*Profile{TargetDirect: &p, TargetPodnicTCX: &p}}
	var buf bytes.Buffer
	ph.writeProfile(&buf, 3)
	for _, want := range []string{"where the CPU goes (perf)", "| " + GroupPrograms + " |", "podnic's programs and hooks: +0.00 µs"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("profile section lacks %q:\n%s", want, buf.String())
		}
	}
	buf.Reset()
	(&Phase{Services: 1, ProfileNote: "perf is missing"}).writeProfile(&buf, 3)
	if !strings.Contains(buf.String(), "Not profiled: perf is missing.") {
		t.Errorf("no note without a profile:\n%s", buf.String())
	}
}

func TestHundredthsPrintsNoNegativeZero(t *testing.T) {
	for _, x := range []float64{-0.000001, 0.000001, -0.004} {
		if got := fmt.Sprintf("%+.2f", hundredths(x)); got != "+0.00" {
			t.Errorf("hundredths(%g) prints %s", x, got)
		}
	}
	if got := fmt.Sprintf("%+.2f", hundredths(-0.126)); got != "-0.13" {
		t.Errorf("hundredths(-0.126) prints %s", got)
	}
}

// The budget lets a round start only when it and the profile runs after it
// end within the bound; without a budget every round runs.
func TestRoundFitsTheBudget(t *testing.T) {
	const m = time.Minute
	for _, c := range []struct {
		elapsed, perRound, profile, budget time.Duration
		want                               bool
	}{
		{17 * m, m, m, 20 * m, true},
		{18 * m, m, m, 20 * m, true},
		{18*m + time.Second, m, m, 20 * m, false},
		{30 * m, m, m, 0, true},
	} {
		if got := roundFits(c.elapsed, c.perRound, c.profile, c.budget); got != c.want {
			t.Errorf("roundFits(%v, %v, %v, %v) = %v, want %v", c.elapsed, c.perRound, c.profile, c.budget, got, c.want)
		}
	}
}

// A phase the budget cut short says so in the report's header, and a
// suite over its budget is called that.
func TestReportSaysWhatTheBudgetCut(t *testing.T) {
	cfg := FullConfig()
	ph := phase(10000, map[Case][][2]float64{short(TargetDirect): {{1000, 60}, {1000, 60}, {1000, 60}}})
	ph.BudgetNote = "3 of 8 rounds: the budget"
	res := &Results{Config: cfg, Elapsed: 21 * time.Minute, Phases: []*Phase{ph}}
	reportHas(t, res,
		"- 10000 Services: 3 of 8 rounds: the budget\n",
		"suite took 21m0s (budget 20m0s), over the budget",
	)
}

// reportHas writes res's report and checks that it holds every line of
// wants; it returns the report.
func reportHas(t *testing.T, res *Results, wants ...string) string {
	t.Helper()
	var buf bytes.Buffer
	res.WriteMarkdown(&buf)
	out := buf.String()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	return out
}
