package wrkbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU numbers: the load generator on one, the servers on the other.
const (
	cpuClient = "0"
	cpuServer = "1"
)

// wrkScript makes wrk print its summary as one JSON line: no parsing of
// "1.23ms" or "12.3k". Latencies are in microseconds.
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
`

// Sample is one wrk run of one case.
type Sample struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"` // non-2xx/3xx answers
	Timeout    int64   `json:"timeout"`
	P50US      float64 `json:"p50_us"`
	P99US      float64 `json:"p99_us"`
	// CPU time of wrk, the two servers and the ksoftirqd threads during
	// the run, in microseconds.
	CPUUS float64 `json:"-"`
	// SynRetrans counts the SYNs the client sent again during the run: a
	// connect that stalled a second or more, which wrk's latency (request
	// to response) does not show but req/s does.
	SynRetrans int64 `json:"-"`
}

// RPS is requests per second.
func (s Sample) RPS() float64 {
	if s.DurationUS == 0 {
		return 0
	}
	return float64(s.Requests) / (float64(s.DurationUS) / 1e6)
}

// Errors is every failed request or connection wrk counted.
func (s Sample) Errors() int64 { return s.Connect + s.Read + s.Write + s.Status + s.Timeout }

// CPUPerRequest is the CPU time per request in microseconds.
func (s Sample) CPUPerRequest() float64 {
	if s.Requests == 0 {
		return 0
	}
	return s.CPUUS / float64(s.Requests)
}

// wrkRunner runs wrk in a client namespace, pinned to cpuClient.
type wrkRunner struct {
	script   string
	conns    int
	duration time.Duration
	// cpuPIDs are the processes whose CPU time counts besides wrk's own:
	// the servers and the ksoftirqd threads (softirq work deferred to them
	// is not charged to wrk or a server).
	cpuPIDs []int
}

func newWrkRunner(dir string, conns int, duration time.Duration, cpuPIDs []int) (*wrkRunner, error) {
	script := filepath.Join(dir, "summary.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return nil, fmt.Errorf("writing wrk script: %w", err)
	}
	return &wrkRunner{script: script, conns: conns, duration: duration, cpuPIDs: cpuPIDs}, nil
}

// run sends requests to url from the netns called netns for w.duration;
// closeEach adds "Connection: close", so each request opens a connection.
func (w *wrkRunner) run(netns, url string, closeEach bool) (Sample, error) {
	secs := int(w.duration.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	args := []string{"netns", "exec", netns, "taskset", "-c", cpuClient,
		"wrk", "-t1", "-c" + strconv.Itoa(w.conns), "-d" + strconv.Itoa(secs) + "s",
		"--timeout", "2s", "-s", w.script}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, url)

	ctx, cancel := context.WithTimeout(context.Background(), w.duration+20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	synBefore, err := synRetrans(netns)
	if err != nil {
		return Sample{}, err
	}
	before, err := cpuTimes(w.cpuPIDs)
	if err != nil {
		return Sample{}, err
	}
	// ip netns exec and taskset exec in place: wrk is the child itself,
	// and its rusage is wrk's CPU time.
	if err := cmd.Run(); err != nil {
		return Sample{}, fmt.Errorf("running wrk in %s: %w: %s", netns, err, strings.TrimSpace(out.String()))
	}
	after, err := cpuTimes(w.cpuPIDs)
	if err != nil {
		return Sample{}, err
	}
	synAfter, err := synRetrans(netns)
	if err != nil {
		return Sample{}, err
	}

	var s Sample
	_, line, ok := strings.Cut(out.String(), "WRKJSON ")
	if !ok {
		return Sample{}, fmt.Errorf("wrk in %s printed no summary: %s", netns, strings.TrimSpace(out.String()))
	}
	line, _, _ = strings.Cut(line, "\n")
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return Sample{}, fmt.Errorf("parsing wrk summary %q: %w", line, err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	s.CPUUS = float64(ru.Utime.Nano()+ru.Stime.Nano())/1e3 + (after - before)
	s.SynRetrans = synAfter - synBefore
	return s, nil
}

// synRetrans reads TcpExt TCPSynRetrans of the netns called netns.
func synRetrans(netns string) (int64, error) {
	out, err := run("ip", "netns", "exec", netns, "cat", "/proc/net/netstat")
	if err != nil {
		return 0, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "TCPSynRetrans" && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("reading SYN retransmits in %s: no TcpExt TCPSynRetrans", netns)
}

// cpuTimes sums the CPU time of the processes, all their threads, in
// microseconds. It reads the scheduler's runtime (/proc/<pid>/task/<tid>/
// schedstat, nanoseconds) rather than utime+stime, which come in 10 ms
// ticks: over a few seconds of wrk, a tick is a few tenths of a µs per
// request, as much as the differences the suite measures.
func cpuTimes(pids []int) (float64, error) {
	var total float64
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/task", pid)
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
		}
		for _, task := range tasks {
			b, err := os.ReadFile(filepath.Join(dir, task.Name(), "schedstat"))
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			if err != nil {
				return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
			}
			f := strings.Fields(string(b))
			if len(f) < 1 {
				return 0, fmt.Errorf("reading CPU time of pid %d: empty schedstat", pid)
			}
			ns, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
			}
			total += ns / 1e3
		}
	}
	return total, nil
}

// ksoftirqdPIDs returns the PIDs of the ksoftirqd threads of the CPUs.
func ksoftirqdPIDs(cpus ...string) ([]int, error) {
	want := map[string]bool{}
	for _, c := range cpus {
		want["ksoftirqd/"+c] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && want[strings.TrimSpace(string(comm))] {
			pids = append(pids, pid)
		}
	}
	if len(pids) != len(cpus) {
		return nil, fmt.Errorf("found %d ksoftirqd threads for CPUs %v", len(pids), cpus)
	}
	return pids, nil
}
