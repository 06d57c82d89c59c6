package wrkbench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profileHz is perf's sampling rate: one sample is 1/profileHz s of CPU.
const profileHz = 7999

// Profile is where the CPU went during profiled short-connection runs of
// one target: perf samples over the whole machine, by symbol.
type Profile struct {
	Requests int64
	Samples  map[string]int64
}

// add pools another profiled run into p.
func (p *Profile) add(requests int64, samples map[string]int64) {
	if p.Samples == nil {
		p.Samples = map[string]int64{}
	}
	p.Requests += requests
	for s, n := range samples {
		p.Samples[s] += n
	}
}

// Symbol groups of the attribution, as the report names them.
const (
	GroupPrograms = "podnic's programs (tc and socket)"
	GroupEgress   = "egress hook (`__dev_queue_xmit`)"
	GroupIngress  = "ingress hook (`__netif_receive_skb_core`)"
	GroupRest     = "everything else (kernel and user)"
	GroupTotal    = "all CPU but idle"
)

// ProfileGroups are the report's rows, in order.
var ProfileGroups = []string{GroupPrograms, GroupEgress, GroupIngress, GroupRest, GroupTotal}

// group names the attribution group of a symbol; "" for idle.
func group(sym string) string {
	switch {
	case strings.Contains(sym, "safe_halt") || strings.HasPrefix(sym, "default_idle") ||
		strings.HasPrefix(sym, "cpuidle_") || strings.HasPrefix(sym, "intel_idle") ||
		sym == "poll_idle" || sym == "acpi_idle_do_entry":
		return ""
	case strings.HasPrefix(sym, "bpf_prog_") && strings.Contains(sym, "_podnic_"):
		return GroupPrograms
	case sym == "__dev_queue_xmit":
		return GroupEgress
	case strings.HasPrefix(sym, "__netif_receive_skb_core"):
		return GroupIngress
	}
	return GroupRest
}

// PerRequest returns µs of CPU per request in each group. The egress and
// ingress hooks are inlined into those two kernel functions, so their
// rows hold the functions' own work too: only the difference between
// two targets is the hooks'.
func (p *Profile) PerRequest() map[string]float64 {
	out := map[string]float64{}
	if p == nil || p.Requests == 0 {
		return out
	}
	us := 1e6 / profileHz / float64(p.Requests)
	for sym, n := range p.Samples {
		g := group(sym)
		if g == "" {
			continue
		}
		out[g] += float64(n) * us
		out[GroupTotal] += float64(n) * us
	}
	return out
}

var reportLine = regexp.MustCompile(`^\s+[0-9.]+%\s+(\d+)\s+\[[^\]]*\]\s+(\S+)`)

// parsePerfReport reads `perf report --sort sym -n --stdio`: samples by
// symbol.
func parsePerfReport(out string) (map[string]int64, error) {
	samples := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := reportLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing perf report line %q: %w", sc.Text(), err)
		}
		samples[m[2]] += n
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("perf report has no samples: %.200s", out)
	}
	return samples, nil
}

// profile runs one short-connection wrk run of tg while perf samples the
// whole machine, and returns the requests and samples by symbol.
func (w *wrkRunner) profile(dir string, tg *Target) (int64, map[string]int64, error) {
	data := filepath.Join(dir, "perf.data")
	defer os.Remove(data)
	secs := int(w.duration.Round(time.Second)/time.Second) + 1
	ctx, cancel := context.WithTimeout(context.Background(), w.duration+30*time.Second)
	defer cancel()
	perf := exec.CommandContext(ctx, "perf", "record", "-a", "-q", "-F", strconv.Itoa(profileHz), "-o", data, "--", "sleep", strconv.Itoa(secs))
	perf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var perfOut strings.Builder
	perf.Stdout, perf.Stderr = &perfOut, &perfOut
	if err := perf.Start(); err != nil {
		return 0, nil, fmt.Errorf("starting perf: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // perf opens its events
	s, err := w.run(tg.netns, tg.url, true)
	if werr := perf.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("perf record: %w: %s", werr, strings.TrimSpace(perfOut.String()))
	}
	if err != nil {
		return 0, nil, err
	}
	rep, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--sort", "sym", "-n", "--stdio").Output()
	if err != nil {
		return 0, nil, fmt.Errorf("perf report: %w", err)
	}
	samples, err := parsePerfReport(string(rep))
	if err != nil {
		return 0, nil, err
	}
	return s.Requests, samples, nil
}
