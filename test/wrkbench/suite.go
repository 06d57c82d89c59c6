package wrkbench

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podnic/podnic/test/k8s"
)

// Config says what the suite runs.
type Config struct {
	Rounds   int           // interleaved rounds per phase
	Duration time.Duration // of each wrk run
	Conns    int           // wrk connections
	Services []int         // phases: Services present (1, 10000)
	// KubeProxy runs the kube-proxy cases; KubeProxyAtScale keeps them in
	// phases with more than one Service (creating that many Services in
	// the API server and waiting for both kube-proxies to sync them).
	KubeProxy        bool
	KubeProxyAtScale bool
	Workers          int // parallel API requests while filling
	// NoPeerNames runs podnic as podnic-agent --socket-lb-peer-name=false:
	// getpeername() of a balanced socket names the backend, and connect()
	// writes no slot for it.
	NoPeerNames bool
	// NetHTTP serves with podnic-echo's net/http server instead of its
	// minimal one.
	NetHTTP bool
	// Profile runs, after each phase's rounds, short connections of the
	// direct and podnic TCX clients under `perf record -a`, alternated
	// ProfileRuns times each, and reports where their CPU went
	// (Phase.Profiles): a figure other load on the machine barely moves.
	Profile     bool
	ProfileRuns int
	// Budget bounds the whole suite: the last phase starts no round
	// (past its first MinRounds) that would, with its profile runs, end
	// after it. 0: no bound.
	Budget time.Duration
}

// MinRounds are the rounds every phase runs, whatever the budget: fewer
// give no median worth the name.
const MinRounds = 3

// QuickConfig is for development: about two minutes.
func QuickConfig() Config {
	return Config{Rounds: 2, Duration: 3 * time.Second, Conns: 32, Services: []int{1}, KubeProxy: true, KubeProxyAtScale: true, Workers: 16}
}

// FullConfig is what `make bench-wrk` runs: 18-19 minutes on the
// development VM, bounded at 20.
func FullConfig() Config {
	return Config{Rounds: 8, Duration: 3 * time.Second, Conns: 32, Services: []int{1, 10000}, KubeProxy: true, KubeProxyAtScale: true, Workers: 16, Profile: true, ProfileRuns: 3, Budget: 20 * time.Minute}
}

// roundFits reports whether one more round, taking perRound, and then
// the profile runs, taking profile, end within budget when elapsed has
// gone by since the suite started.
func roundFits(elapsed, perRound, profile, budget time.Duration) bool {
	return budget <= 0 || elapsed+perRound+profile <= budget
}

// Target is where one client sends its requests.
type Target struct {
	Name  string
	netns string
	url   string
	// kubeProxy is set for kube-proxy targets: they need its sync.
	kubeProxy *kubeProxy
}

// Case is a target with long (keep-alive) or short connections.
type Case struct {
	Target *Target
	Short  bool
}

func (c Case) String() string {
	if c.Short {
		return c.Target.Name + " short"
	}
	return c.Target.Name + " keep-alive"
}

// Phase is the results of the rounds at one number of Services.
type Phase struct {
	Services int
	Cases    []Case
	Samples  map[string][]Sample // by Case.String(), one per round
	Setup    time.Duration       // filling and syncing before the rounds
	// IPTPositions are where the bench Service's rule sat in kube-proxy
	// iptables' KUBE-SERVICES chain, one per round, of IPTRules rules
	// (none: not run).
	IPTPositions []int
	IPTRules     int
	// Profiles are the perf attribution of short connections by target
	// name (Config.Profile); ProfileNote says why there is none.
	Profiles    map[string]*Profile
	ProfileNote string
	// BudgetNote says how many rounds ran when the budget cut the phase
	// short; each case's Samples hold one per round run.
	BudgetNote string
}

// Results are the whole suite's.
type Results struct {
	Config  Config
	Started time.Time
	Elapsed time.Duration
	LoadBefore,
	LoadAfter string
	Phases []*Phase
}

// Names of the targets, as the report shows them.
const (
	TargetDirect       = "direct pod IP"
	TargetPodnicTCX    = "podnic TCX"
	TargetPodnicSocket = "podnic TCX, socket path"
	TargetPodnicLegacy = "podnic legacy tc"
	TargetPodnicTCOnly = "podnic TCX, tc only"
	TargetViaNode      = "direct pod IP via node"
	TargetKubeProxyNFT = "kube-proxy nftables"
	TargetKubeProxyIPT = "kube-proxy iptables-legacy"
)

// Run builds the testbed, runs every phase and returns the results;
// everything it made goes when t ends.
func Run(t *testing.T, cfg Config) *Results {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("the wrk suite needs root: it creates network namespaces and loads BPF")
	}
	for _, bin := range []string{"wrk", "taskset", "ip", "nft", "iptables-legacy-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (run scripts/setup.sh): %v", bin, err)
		}
	}
	res := &Results{Config: cfg, Started: time.Now(), LoadBefore: loadavg()}
	dir := t.TempDir()
	echo := buildEcho(t, dir)

	tb := newTestbed(t, echo, dir, !cfg.NoPeerNames, !cfg.NetHTTP)
	targets := []*Target{
		{Name: TargetDirect, netns: tb.direct.Netns, url: fmt.Sprintf("http://%s/", netip.AddrPortFrom(backendIPs[0], backendPort))},
		{Name: TargetPodnicTCX, netns: tb.tcx.Netns, url: serviceURL()},
		{Name: TargetPodnicSocket, netns: tb.sockPath.Netns, url: serviceURL()},
		{Name: TargetPodnicLegacy, netns: tb.legacy.Netns, url: serviceURL()},
		{Name: TargetPodnicTCOnly, netns: tb.tcOnly.Netns, url: serviceURL()},
	}

	var api *apiClient
	var proxies []*kubeProxy
	if cfg.KubeProxy {
		binDir := k8sBinDir(t)
		t.Setenv(k8s.EnvBinDir, binDir)
		cluster := k8s.Start(t)
		api = newAPIClient(t, cluster)
		if err := api.createService("bench", benchVIP); err != nil {
			t.Fatal(err)
		}
		for i, m := range []kubeProxyMode{modeNFT, modeIPT} {
			pn := tb.addProxyNode(t, "kp-"+m.name[:3], i+1)
			kp := startKubeProxy(t, binDir, dir, api, cluster, m, pn)
			proxies = append(proxies, kp)
			name := TargetKubeProxyNFT
			if m.name == modeIPT.name {
				name = TargetKubeProxyIPT
			}
			if m.name == modeNFT.name {
				// kube-proxy's clients cross the node's stack, one
				// forwarding hop more than a pod on the fabric: this is
				// the ceiling for them (it still passes the node's
				// nftables hooks).
				// Its own client address: see addNodeClient.
				viaNode, _ := tb.addNodeClient(t, pn, "kp-nft-direct", 3, pn.gateway())
				targets = append(targets, &Target{Name: TargetViaNode, netns: viaNode,
					url: fmt.Sprintf("http://%s/", netip.AddrPortFrom(backendIPs[0], backendPort)), kubeProxy: kp})
			}
			targets = append(targets, &Target{Name: name, netns: pn.clientNetns, url: serviceURL(), kubeProxy: kp})
		}
		for _, kp := range proxies {
			if err := kp.waitSynced(1, 60*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := run("ip", "netns", "exec", proxies[1].node.pod.Netns, "iptables-nft-save", "-t", "nat"); err == nil && strings.Contains(out, "KUBE-") {
			t.Fatalf("kube-proxy iptables wrote iptables-nft rules, not legacy ones:\n%s", out)
		}
	}

	ksoft, err := ksoftirqdPIDs(cpuClient, cpuServer)
	if err != nil {
		t.Fatal(err)
	}
	cpuPIDs := append([]int{}, ksoft...)
	for _, b := range tb.backends {
		cpuPIDs = append(cpuPIDs, b.pid())
	}
	wrk, err := newWrkRunner(dir, cfg.Conns, cfg.Duration, cpuPIDs)
	if err != nil {
		t.Fatal(err)
	}

	present := 1
	// profileTook is how long the last phase's profile runs took: the
	// estimate for the next phase's, which the budget must leave room for.
	var profileTook time.Duration
	if cfg.Profile {
		profileTook = time.Duration(cfg.ProfileRuns*3) * (cfg.Duration + 2*time.Second)
	}
	for pi, n := range cfg.Services {
		ph := &Phase{Services: n, Samples: map[string][]Sample{}}
		start := time.Now()
		if n > present {
			t.Logf("filling to %d Services", n)
			if err := tb.fillPodnic(n); err != nil {
				t.Fatal(err)
			}
			if cfg.KubeProxy && cfg.KubeProxyAtScale {
				if err := api.fillServices(n, cfg.Workers); err != nil {
					t.Fatal(err)
				}
				t.Logf("%d Services in the API server after %v; waiting for kube-proxy", n, time.Since(start).Round(time.Second))
				for _, kp := range proxies {
					if err := kp.waitSynced(n, 10*time.Minute); err != nil {
						t.Fatal(err)
					}
					t.Logf("kube-proxy %s has %d Services after %v", kp.mode.name, n, time.Since(start).Round(time.Second))
				}
			}
			present = n
		}
		if n > 1 {
			// Filling and syncing leave work behind; start quiet.
			if _, err := settle(busyIdle, 30*time.Second); err != nil {
				t.Logf("%d Services: %v", n, err)
			}
		}
		ph.Setup = time.Since(start)
		// kube-proxy iptables writes KUBE-SERVICES in Go map order, drawn
		// anew at each sync, and a new connection walks the chain up to
		// its Service's rule: one sync's order would make the whole phase
		// one draw. With more than one Service, each round after the first
		// adds a Service, so both kube-proxies sync and the order is drawn
		// again; the report lists the positions.
		var ipt *kubeProxy
		for _, kp := range proxies {
			if kp.mode.name == modeIPT.name && (n == 1 || cfg.KubeProxyAtScale) {
				ipt = kp
			}
		}
		redraw := func(r int) {
			if ipt == nil {
				return
			}
			if n > 1 && r > 0 {
				if err := api.createService(fmt.Sprintf("redraw-%d-%d", n, r), redrawVIP(r)); err != nil {
					t.Fatal(err)
				}
				for _, kp := range proxies {
					if err := kp.waitSynced(n+r, 2*time.Minute); err != nil {
						t.Fatal(err)
					}
				}
				// The sync's tail (the API server, etcd, kube-proxy's
				// cleanup) must not run during the round.
				if d, err := settle(busyIdle, 30*time.Second); err != nil {
					t.Logf("round %d: %v", r+1, err)
				} else {
					t.Logf("round %d: kube-proxy synced again; machine quiet after %v", r+1, d.Round(time.Second))
				}
			}
			pos, total, err := iptablesPosition(ipt.node.pod.Netns, benchVIP)
			if err != nil {
				t.Fatal(err)
			}
			ph.IPTPositions, ph.IPTRules = append(ph.IPTPositions, pos), total
		}
		for _, tg := range targets {
			if tg.kubeProxy != nil && n > 1 && !cfg.KubeProxyAtScale {
				continue
			}
			ph.Cases = append(ph.Cases, Case{tg, false}, Case{tg, true})
		}
		t.Logf("phase %d Services: %d cases × %d rounds × %v", n, len(ph.Cases), cfg.Rounds, cfg.Duration)
		last := pi == len(cfg.Services)-1
		roundsStart := time.Now()
		for r := 0; r < cfg.Rounds; r++ {
			if last && r >= MinRounds {
				perRound := time.Since(roundsStart) / time.Duration(r)
				if !roundFits(time.Since(res.Started), perRound, profileTook, cfg.Budget) {
					ph.BudgetNote = fmt.Sprintf("%d of %d rounds: one more (about %v) and the profile runs (about %v) would have taken the suite past its %v budget",
						r, cfg.Rounds, perRound.Round(time.Second), profileTook.Round(time.Second), cfg.Budget)
					t.Logf("%d Services: %s", n, ph.BudgetNote)
					break
				}
			}
			redraw(r)
			// Rotate the order each round, so no case always follows
			// the same one.
			for i := range ph.Cases {
				c := ph.Cases[(i+r)%len(ph.Cases)]
				s, err := wrk.run(c.Target.netns, c.Target.url, c.Short)
				if err != nil {
					t.Fatalf("%d Services, round %d, %s: %v", n, r+1, c, err)
				}
				ph.Samples[c.String()] = append(ph.Samples[c.String()], s)
				t.Logf("%5d svc r%d %-36s %9.0f req/s p50 %6.0fµs p99 %6.0fµs cpu %5.1fµs/req err %d syn-retrans %d",
					n, r+1, c, s.RPS(), s.P50US, s.P99US, s.CPUPerRequest(), s.Errors(), s.SynRetrans)
			}
		}
		if cfg.Profile {
			start := time.Now()
			profilePhase(t, cfg, wrk, dir, ph, targets[:3])
			profileTook = time.Since(start)
		}
		res.Phases = append(res.Phases, ph)
	}
	for _, b := range tb.backends {
		if b.exited() {
			t.Errorf("backend %s exited during the run", b.name)
		}
	}
	res.Elapsed = time.Since(res.Started)
	res.LoadAfter = loadavg()
	return res
}

func serviceURL() string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(benchVIP, servicePort))
}

// buildEcho builds the podnic-echo server into dir.
func buildEcho(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "podnic-echo")
	cmd := exec.Command("go", "build", "-o", out, "github.com/podnic/podnic/test/cmd/podnic-echo")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building podnic-echo: %v\n%s", err, b)
	}
	return out
}

// k8sBinDir returns $PODNIC_K8S_BIN or the cache scripts/k8s-binaries.sh
// fills (building what is missing: minutes when cold).
func k8sBinDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv(k8s.EnvBinDir); d != "" {
		if _, err := os.Stat(filepath.Join(d, "kube-proxy")); err != nil {
			t.Fatalf("%s=%s has no kube-proxy: %v", k8s.EnvBinDir, d, err)
		}
		return d
	}
	script, err := filepath.Abs("../../scripts/k8s-binaries.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, "kube-proxy", "kube-apiserver", "kubectl", "etcd")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// busyIdle is how much CPU time, over all CPUs, a second may use for the
// machine to count as quiet: the API server, etcd and two kube-proxies
// idle at a few percent; a sync takes a whole CPU.
const busyIdle = 250 * time.Millisecond

// settle waits until the machine used less than busy CPU time in one
// second, at most max, and says how long it waited.
func settle(busy, max time.Duration) (time.Duration, error) {
	start := time.Now()
	prev, err := machineBusy()
	if err != nil {
		return 0, err
	}
	for {
		time.Sleep(time.Second)
		cur, err := machineBusy()
		if err != nil {
			return 0, err
		}
		if cur-prev < busy {
			return time.Since(start), nil
		}
		if time.Since(start) > max {
			return time.Since(start), fmt.Errorf("the machine did not quiet down in %v (%v busy in the last second)", max, (cur - prev).Round(time.Millisecond))
		}
		prev = cur
	}
}

// clockTick is USER_HZ, the unit of /proc/stat; it is 100 on every Linux
// architecture podnic ships for.
const clockTick = 100

// machineBusy is the CPU time all CPUs spent not idle since boot, from
// /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("reading /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("reading /proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	// user nice system idle iowait irq softirq steal: all but idle, iowait.
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading /proc/stat: %w", err)
		}
		ticks += x
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// profilePhase profiles the short connections of targets (direct, podnic
// TCX, the socket path), alternated cfg.ProfileRuns times, into
// ph.Profiles.
func profilePhase(t *testing.T, cfg Config, wrk *wrkRunner, dir string, ph *Phase, targets []*Target) {
	t.Helper()
	if _, err := exec.LookPath("perf"); err != nil {
		ph.ProfileNote = "perf is missing (scripts/setup.sh installs linux-perf)"
		t.Log(ph.ProfileNote)
		return
	}
	ph.Profiles = map[string]*Profile{}
	for r := 0; r < max(cfg.ProfileRuns, 1); r++ {
		for _, tg := range targets {
			n, samples, err := wrk.profile(dir, tg)
			if err != nil {
				ph.Profiles, ph.ProfileNote = nil, fmt.Sprintf("profiling failed: %v", err)
				t.Log(ph.ProfileNote)
				return
			}
			if ph.Profiles[tg.Name] == nil {
				ph.Profiles[tg.Name] = &Profile{}
			}
			ph.Profiles[tg.Name].add(n, samples)
			t.Logf("%5d svc profiled %s short: %d requests", ph.Services, tg.Name, n)
		}
	}
}
