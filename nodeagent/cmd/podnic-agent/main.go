// Command podnic-agent programs podnic's shared Service maps on this node
// from Kubernetes Services and EndpointSlices (or from a file), with
// kube-proxy's endpoint semantics, and serves health, metrics and the
// local API podnicctl uses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/cni"
	"github.com/podnic/podnic/nodeagent"
	"github.com/podnic/podnic/nodeagent/localapi"
)

type config struct {
	configFile   string
	kubeconfig   string
	servicesFile string
	nodeName     string
	zone         string
	bpfRoot      string
	attachMode   string
	socket       string
	opsAddress   string
	minSync      time.Duration
	maxSync      time.Duration
	retry        time.Duration
	resync       time.Duration
	logLevel     string
	logFormat    string
	serviceCIDRs string
	socketLB     bool
	socketLBPeer bool
	cgroupRoot   string
	cni          cni.Installation
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "podnic-agent:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var c config
	host, _ := os.Hostname()
	node := os.Getenv("NODE_NAME")
	if node == "" {
		node = host
	}
	fs := flag.NewFlagSet("podnic-agent", flag.ContinueOnError)
	fs.StringVar(&c.configFile, "config", "", "YAML file of flag values (flag name: value); flags on the command line win")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of the API server; empty: in-cluster config")
	fs.StringVar(&c.servicesFile, "services-file", "", "read Services and EndpointSlices from this multi-document YAML instead of the API server")
	fs.StringVar(&c.nodeName, "node-name", node, "this Node's name (default $NODE_NAME, else the hostname)")
	fs.StringVar(&c.zone, "zone", "", "this node's zone, with --services-file (from the Node's label otherwise)")
	fs.StringVar(&c.bpfRoot, "bpf-root", bpf.DefaultRoot, "bpffs directory of podnic's pins")
	fs.StringVar(&c.attachMode, "attach-mode", "auto", "attach mode reported to podnicctl: auto, tcx or legacy")
	fs.StringVar(&c.socket, "socket", localapi.DefaultSocket, "unix socket of the local API (root only)")
	fs.StringVar(&c.opsAddress, "ops-address", "127.0.0.1:10266", "address serving /healthz and /metrics; empty: off")
	fs.DurationVar(&c.minSync, "min-sync-interval", 0, "least time between the end of a sync and the start of the next")
	fs.DurationVar(&c.maxSync, "sync-interval", time.Hour, "longest time between syncs")
	fs.DurationVar(&c.retry, "retry-interval", time.Second, "time before a failed sync is retried")
	fs.DurationVar(&c.resync, "informer-resync", 0, "informer resync period; 0: none")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&c.socketLB, "socket-lb", true, "balance TCP and UDP of podnic's pods to Services at the socket (programs on the node's cgroup v2 root); off: tc translates every packet")
	fs.BoolVar(&c.socketLBPeer, "socket-lb-peer-name", true, "getpeername() of a balanced socket names the Service, as through kube-proxy (costs about 0.25 µs of CPU per connection)")
	fs.StringVar(&c.cgroupRoot, "cgroup-root", "", "cgroup v2 directory for --socket-lb; empty: the node's cgroup v2 mount, mounted at "+bpf.CgroupMount+" if there is none")
	fs.StringVar(&c.cni.Plugin, "install-cni-plugin", "", "podnic CNI plugin binary to copy into --cni-bin-dir once the first sync succeeded (a DaemonSet's image holds it); empty: none")
	fs.StringVar(&c.cni.Config, "install-cni-config", "", "CNI config list file (.conflist) to check and copy into --cni-conf-dir after the plugin: the node's runtime then reports its network ready; empty: none")
	fs.StringVar(&c.cni.BinDir, "cni-bin-dir", "/opt/cni/bin", "the container runtime's CNI plugin directory, for --install-cni-plugin")
	fs.StringVar(&c.cni.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI config directory, for --install-cni-config")
	fs.StringVar(&c.serviceCIDRs, "service-cidr", "", "the cluster's Service CIDRs, comma-separated (kube-apiserver's --service-cluster-ip-range); traffic to an address in them that no Service has is rejected at once")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.configFile != "" {
		if err := applyConfigFile(fs, c.configFile); err != nil {
			return c, err
		}
	}
	return c, c.validate()
}

// applyConfigFile sets every flag the file names and the command line
// did not set.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		return fmt.Errorf("parsing config file %s: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range values {
		if name == "config" || fs.Lookup(name) == nil {
			return fmt.Errorf("config file %s: unknown setting %q", path, name)
		}
		if set[name] {
			continue
		}
		if err := fs.Set(name, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, name, err)
		}
	}
	return nil
}

func (c config) validate() error {
	if _, err := bpf.ParseMode(c.attachMode); err != nil {
		return err
	}
	switch {
	case c.nodeName == "":
		return errors.New("--node-name is empty and the hostname unknown")
	case c.maxSync < c.minSync:
		return fmt.Errorf("--sync-interval %s is below --min-sync-interval %s", c.maxSync, c.minSync)
	case c.retry <= 0:
		return errors.New("--retry-interval must be positive")
	case c.logFormat != "text" && c.logFormat != "json":
		return fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	case c.socket == "":
		return errors.New("--socket is required")
	case (c.cni.Plugin == "") != (c.cni.Config == ""):
		return errors.New("--install-cni-plugin and --install-cni-config go together")
	}
	if c.cni.Config != "" {
		// Checked now, so a bad config stops the agent before it writes
		// anything, with the reason in its log.
		data, err := os.ReadFile(c.cni.Config)
		if err != nil {
			return fmt.Errorf("--install-cni-config: %w", err)
		}
		if err := cni.ValidateConfigFile(filepath.Base(c.cni.Config), data); err != nil {
			return fmt.Errorf("--install-cni-config %s: %w", c.cni.Config, err)
		}
		if _, err := os.Stat(c.cni.Plugin); err != nil {
			return fmt.Errorf("--install-cni-plugin: %w", err)
		}
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	return nil
}

func (c config) logger() *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.logLevel))
	o := &slog.HandlerOptions{Level: l}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, o))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, o))
}

func run(args []string) error {
	c, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := c.logger()
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cidrs, err := parseCIDRs(c.serviceCIDRs)
	if err != nil {
		return err
	}
	d, err := bpf.Load(c.bpfRoot)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := bpf.SetupSocketLB(d, bpf.SocketLBOptions{On: c.socketLB, PeerName: c.socketLBPeer, CgroupPath: c.cgroupRoot}); err != nil {
		return err
	}
	log.Info("datapath loaded", "root", c.bpfRoot, "socketLB", c.socketLB)
	// Pods attached before this load (an upgrade, a restart) move to the
	// programs just loaded; the maps they share carry their flows over.
	rep, err := d.UpdateAttachments()
	if err != nil {
		return err
	}
	log.Info("pods moved to the programs just loaded", "tcxLinks", rep.Links, "clsactFilters", rep.Filters)
	if rep.Missing > 0 || rep.Defunct > 0 {
		log.Warn("attachments of pods gone without their DEL: their DEL or the CNI's GC removes them",
			"clsactFiltersNotFound", rep.Missing, "defunctTCXLinks", rep.Defunct)
	}
	if err := d.Maps.SetServiceCIDRs(cidrs); err != nil {
		return err
	}

	metrics := nodeagent.NewMetrics(d)
	a, err := nodeagent.NewAgent(&d.Maps, nodeagent.Options{
		NodeName: c.nodeName, MinSyncInterval: c.minSync, MaxSyncInterval: c.maxSync,
		RetryInterval: c.retry, Log: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	source := "kubernetes"
	if c.servicesFile != "" {
		source = "file " + c.servicesFile
	}
	l, err := localapi.Listen(c.socket)
	if err != nil {
		return err
	}
	defer os.Remove(c.socket)
	api := nodeagent.Serve(l, a.LocalAPI(nodeagent.ServerInfo{Datapath: d, AttachMode: bpf.Mode(c.attachMode), Source: source}), log)
	defer api.Close()
	if c.opsAddress != "" {
		ol, err := net.Listen("tcp", c.opsAddress)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", c.opsAddress, err)
		}
		ops := nodeagent.Serve(ol, a.OpsHandler(metrics), log)
		defer ops.Close()
	}

	done := make(chan struct{})
	go func() {
		a.Run(ctx.Done())
		close(done)
	}()
	log.Info("podnic-agent started", "node", c.nodeName, "source", source, "socket", c.socket, "ops", c.opsAddress)
	installed := make(chan error, 1)
	if c.cni.Plugin != "" {
		go func() {
			err := installCNI(ctx, a, c.cni, log)
			if err != nil {
				stop() // the agent stops with this error
			}
			installed <- err
		}()
	}
	if c.servicesFile != "" {
		err = nodeagent.FileSource{Path: c.servicesFile, Zone: c.zone}.Run(ctx, a)
	} else {
		kc, cerr := nodeagent.KubeClient(c.kubeconfig)
		if cerr != nil {
			return cerr
		}
		err = nodeagent.KubeSource{Client: kc, NodeName: c.nodeName, Resync: c.resync}.Run(ctx, a)
	}
	stop()
	<-done
	if err != nil && !strings.Contains(err.Error(), context.Canceled.Error()) {
		return err
	}
	if c.cni.Plugin != "" {
		if err := <-installed; err != nil {
			return err
		}
	}
	log.Info("podnic-agent stopped; the maps stay as they are")
	return nil
}

// installCNI waits for the first successful sync, then installs the
// podnic plugin and the node's CNI config: until the config is there the
// runtime reports the node's network not ready, so no pod starts before
// its Services are programmed. A failed install stops the agent (its
// DaemonSet restarts it).
func installCNI(ctx context.Context, a *nodeagent.Agent, in cni.Installation, log *slog.Logger) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for a.Healthy() != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	changed, err := cni.InstallNode(in)
	if err != nil {
		log.Error("installing the CNI plugin and config failed; stopping", "error", err)
		return err
	}
	log.Info("CNI plugin and config installed", "bin", in.BinDir, "conf", filepath.Join(in.ConfDir, filepath.Base(in.Config)), "written", changed)
	return nil
}

// parseCIDRs reads --service-cidr.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("parsing --service-cidr %q: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
