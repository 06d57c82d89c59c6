package wrkbench

import (
	"bytes"
	"strings"
	"testing"
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
	var buf bytes.Buffer
	res.WriteMarkdown(&buf)
	out := buf.String()
	for _, want := range []string{
		"| 1 | extra CPU per new connection < 1 µs (short, ΔCPU vs direct) | +0.5 (+0.2 … +0.9) µs | met |",
		"| 1 | keep-alive req/s within noise of direct | 0.98 (0.98 … 1.02)× | met |",
		"| 10000 | extra CPU per new connection < 1 µs (short, ΔCPU vs direct) | +2.0 (+1.5 … +3.0) µs | missed |",
		"| 10000 | short req/s ≥ 1.15× kube-proxy nftables | 1.18 (1.12 … 1.29)× | met |",
		"| 10000 | short req/s ≥ 2.50× kube-proxy iptables-legacy | 2.37 (2.25 … 3.00)× | missed |",
		"| 10000 | keep-alive req/s within noise of direct | 0.92 (0.90 … 0.94)× | missed |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Only the phase with the most Services is judged against kube-proxy.
	if strings.Contains(out, "| 1 | short req/s ≥") {
		t.Error("the 1-Service phase is judged against kube-proxy")
	}
	if t.Failed() {
		t.Log("\n" + out)
	}
}
