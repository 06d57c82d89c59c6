package wrkbench

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	flagRun      = flag.Bool("wrkbench", false, "run the wrk comparison (TestWrkComparison); see docs/bench.md")
	flagQuick    = flag.Bool("wrkbench.quick", false, "quick mode: 2 rounds of 3 s, 1 Service (about two minutes)")
	flagRounds   = flag.Int("wrkbench.rounds", 0, "interleaved rounds per phase (0: the mode's)")
	flagDuration = flag.Duration("wrkbench.duration", 0, "length of each wrk run (0: the mode's)")
	flagConns    = flag.Int("wrkbench.conns", 0, "wrk connections (0: the mode's)")
	flagServices = flag.String("wrkbench.services", "", "comma-separated Service counts, one phase each (default: 1,10000; quick: 1)")
	flagKP       = flag.Bool("wrkbench.kube-proxy", true, "run the kube-proxy cases (starts etcd, kube-apiserver, two kube-proxies)")
	flagKPScale  = flag.Bool("wrkbench.kube-proxy-at-scale", true, "keep the kube-proxy cases in phases above 1 Service (creates the Services in the API server)")
	flagNoPeer   = flag.Bool("wrkbench.no-peer-names", false, "run podnic with --socket-lb-peer-name=false (getpeername names the backend; no getpeername slot per connect)")
	flagNetHTTP  = flag.Bool("wrkbench.net-http", false, "serve with podnic-echo's net/http server instead of its minimal one")
	flagBudget   = flag.Duration("wrkbench.budget", 0, "bound on the whole suite: the last phase runs fewer rounds (at least 3) rather than end after it (0: the mode's, 20m in full mode; negative: none)")
	flagOut      = flag.String("wrkbench.out", "../../bench-results", "directory for the markdown report")
	flagProfile  = flag.Bool("wrkbench.profile", false, "after each phase, profile direct and podnic TCX short connections with perf (default: on in full mode, off in quick mode)")
)

func configFromFlags(t *testing.T) Config {
	t.Helper()
	cfg := FullConfig()
	if *flagQuick {
		cfg = QuickConfig()
	}
	if *flagRounds > 0 {
		cfg.Rounds = *flagRounds
	}
	if *flagDuration > 0 {
		cfg.Duration = *flagDuration
	}
	if *flagConns > 0 {
		cfg.Conns = *flagConns
	}
	if *flagBudget != 0 {
		cfg.Budget = max(*flagBudget, 0)
	}
	if *flagServices != "" {
		cfg.Services = nil
		for _, s := range strings.Split(*flagServices, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 || n > maxFillServices {
				t.Fatalf("-wrkbench.services: %q is not a count from 1 to %d", s, maxFillServices)
			}
			cfg.Services = append(cfg.Services, n)
		}
	}
	cfg.KubeProxy, cfg.KubeProxyAtScale = *flagKP, *flagKPScale
	cfg.NoPeerNames = *flagNoPeer
	cfg.NetHTTP = *flagNetHTTP
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "wrkbench.profile" {
			cfg.Profile = *flagProfile
			cfg.ProfileRuns = max(cfg.ProfileRuns, 3)
		}
	})
	return cfg
}

// TestWrkComparison is `make bench-wrk`: the whole comparison, its report
// written to -wrkbench.out.
func TestWrkComparison(t *testing.T) {
	if !*flagRun {
		t.Skip("run with -wrkbench (make bench-wrk)")
	}
	cfg := configFromFlags(t)
	res := Run(t, cfg)
	var buf bytes.Buffer
	res.WriteMarkdown(&buf)
	if err := os.MkdirAll(*flagOut, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(*flagOut, "wrk-"+res.Started.Format("20060102-150405")+".md")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	png := strings.TrimSuffix(out, ".md") + ".png"
	if err := res.WritePNG(png); err != nil {
		t.Error(err)
	}
	abs, _ := filepath.Abs(out)
	t.Logf("report written to %s (chart %s)\n\n%s", abs, png, buf.String())
	checkEveryCaseServed(t, res)
}

// TestQuickSuiteServesEveryCase runs the suite at its smallest — one
// Service, one round of two seconds per case — and fails if any path,
// podnic's or kube-proxy's, answers no request or any with an error.
func TestQuickSuiteServesEveryCase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver and runs wrk for about a minute")
	}
	cfg := QuickConfig()
	cfg.Rounds, cfg.Duration, cfg.Conns = 1, 2*time.Second, 8
	res := Run(t, cfg)
	var buf bytes.Buffer
	res.WriteMarkdown(&buf)
	t.Log("\n" + buf.String())
	checkEveryCaseServed(t, res)
	png := filepath.Join(t.TempDir(), "chart.png")
	if err := res.WritePNG(png); err != nil {
		t.Error(err)
	} else if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Errorf("chart %s not written (%v)", png, err)
	}
	if got, want := len(res.Phases[0].Cases), 16; got != want {
		t.Errorf("ran %d cases, want %d (8 paths × keep-alive, short)", got, want)
	}
}

func checkEveryCaseServed(t *testing.T, res *Results) {
	t.Helper()
	for _, ph := range res.Phases {
		for _, c := range ph.Cases {
			for i, s := range ph.Samples[c.String()] {
				if s.Requests == 0 || s.Errors() > 0 {
					t.Errorf("%d Services, round %d, %s: %d requests, %d errors (connect %d, read %d, write %d, status %d, timeout %d)",
						ph.Services, i+1, c, s.Requests, s.Errors(), s.Connect, s.Read, s.Write, s.Status, s.Timeout)
				}
			}
		}
	}
}
