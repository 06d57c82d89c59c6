package nodebox

import (
	"github.com/podnic/podnic/test/k8s"

	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podnic/podnic/netdevice"
)

// Addresses and names of the box.
const (
	NodeName   = "nodebox"
	NodeIP     = "10.1.0.2"
	GatewayV4  = "10.1.0.1"
	ServiceV4  = "10.96.0.0/16"
	ServiceV6  = "fd00:96::/108"
	APIServer  = "https://127.0.0.1:6443"
	PauseImage = "podnic.test/pause:v1"
	EchoImage  = "podnic.test/echo:v1"
	BPFRoot    = "/sys/fs/bpf/podnic" // inside the node's mount namespace

	// SocketPathClass is the RuntimeClass (and containerd runtime
	// handler) whose pods get podnic's socket path: containerd runs the
	// CNI config of its own folder for them, the same as the default
	// one but with "servicePath": "socket" (docs/cni.md).
	SocketPathClass = "podnic-socket"
	stateFile       = "state.json"

	// upstreamPlugins is the containernetworking/plugins release whose
	// loopback plugin containerd runs (as cni/ tests use).
	upstreamPlugins = "v1.9.1"
)

// Timeouts bound every step.
const (
	readyTimeout = 60 * time.Second // one component to become ready
	stopTimeout  = 10 * time.Second // SIGTERM to SIGKILL
	cmdTimeout   = 60 * time.Second // one command
)

// Options say how to build the box.
type Options struct {
	Repo     string // repository root (builds the podnic binaries)
	K8sBin   string // directory of the Kubernetes binaries and etcd
	Crictl   string // crictl binary
	Dir      string // working directory; a new one under os.TempDir() if empty
	ENIs     int    // ENIs waiting in the node; 4 if 0
	Detached bool   // processes outlive the caller (for `nodebox up`)
	NoAgent  bool   // do not run podnic-agent: the caller fills the maps
	// AgentDaemonSet runs podnic-agent as the DaemonSet of the chart
	// deploy/helm/podnic, from an image of deploy/Dockerfile's layout,
	// instead of as a process of the box: the agent installs the CNI
	// plugin and config, and the node becomes Ready only then
	// (daemonset.go).
	AgentDaemonSet bool
	Helm           string // helm binary, for AgentDaemonSet (scripts/helm-binary.sh)
	Logf           func(format string, args ...any)
}

// proc is a process of the box, known by PID and start time so a recycled
// PID is never signalled.
type proc struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // field 22 of /proc/PID/stat
	Log   string `json:"log"`

	done chan struct{} // closed when reaped (children of this process only)
}

// Box is a running node in a box.
type Box struct {
	agentRBAC string // the ClusterRole podnic ships, bound to the agent's user

	Dir     string   `json:"dir"`
	ID      string   `json:"id"`
	Cgroup  string   `json:"cgroup"` // kubelet's cgroupRoot
	K8sBin  string   `json:"k8sBin"`
	Bin     string   `json:"bin"` // podnic binaries
	Crictl  string   `json:"crictl"`
	ENIs    []string `json:"enis"` // MACs
	Node    *proc    `json:"node"`
	Fabric  *proc    `json:"fabric"`
	Procs   []*proc  `json:"procs"` // in start order
	Watcher *proc    `json:"watcher,omitempty"`
	// AgentDaemonSet: podnic-agent runs as a DaemonSet (Options).
	AgentDaemonSet bool `json:"agentDaemonSet,omitempty"`

	detached bool
	helm     string // helm binary (Options.Helm)
	logf     func(string, ...any)
	watchFD  *os.File // write end of the watchdog's pipe
}

// NodeNetns is the path of the node's network namespace.
func (b *Box) NodeNetns() string { return fmt.Sprintf("/proc/%d/ns/net", b.Node.PID) }

// FabricNetns is the path of the fabric's network namespace.
func (b *Box) FabricNetns() string { return fmt.Sprintf("/proc/%d/ns/net", b.Fabric.PID) }

// PinnedRoot is BPFRoot as seen from outside the node's mount namespace,
// for bpf.OpenPinned.
func (b *Box) PinnedRoot() string { return fmt.Sprintf("/proc/%d/root%s", b.Node.PID, BPFRoot) }

// Kubeconfig is the admin kubeconfig; use it inside the node's netns.
func (b *Box) Kubeconfig() string { return filepath.Join(b.Dir, "kubeconfig-admin") }

// CAFile is the API server's certificate, which the kubeconfigs trust.
func (b *Box) CAFile() string { return b.caFile() }

// AgentSocket is podnic-agent's local API socket.
func (b *Box) AgentSocket() string {
	if b.AgentDaemonSet {
		return filepath.Join(b.runPodnic(), "agent.sock")
	}
	return filepath.Join(b.Dir, "agent.sock")
}

// Up builds and starts a box. On error everything it made is gone.
func Up(ctx context.Context, o Options) (b *Box, err error) {
	if o.ENIs == 0 {
		o.ENIs = 4
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	start := time.Now()
	b = &Box{K8sBin: o.K8sBin, Crictl: o.Crictl, AgentDaemonSet: o.AgentDaemonSet, detached: o.Detached, logf: o.Logf}
	b.ID = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	b.Dir = o.Dir
	if b.Dir != "" {
		if _, err := os.Stat(filepath.Join(b.Dir, stateFile)); err == nil {
			return nil, fmt.Errorf("a box is up in %s already", b.Dir)
		}
	} else {
		if b.Dir, err = os.MkdirTemp("", "podnic-nodebox-"); err != nil {
			return nil, err
		}
	}
	b.Cgroup = "/podnic-nodebox-" + b.ID
	b.Bin = filepath.Join(b.Dir, "bin")
	success := false
	defer func() {
		if !success {
			if derr := b.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("tearing down: %w", derr))
			}
		}
	}()
	for _, d := range []string{"bin", "logs", "cni/bin", "cni/net.d", "cni/net.d-socket", "run-podnic", "cni/state", "cni/ipam", "sysctl",
		"containerd", "kubelet/root", "kubelet/pod-logs", "kubelet/volume-plugins", "pki", "images"} {
		if err := os.MkdirAll(filepath.Join(b.Dir, d), 0o755); err != nil {
			return b, err
		}
	}
	if err := b.saveState(); err != nil {
		return b, err
	}
	// Builds first: the podnic binaries (static) and the images.
	t0 := time.Now()
	if err := buildBinaries(ctx, o.Repo, b.Bin); err != nil {
		return b, err
	}
	if b.agentRBAC, err = k8s.AgentRBAC(o.Repo, "podnic-agent"); err != nil {
		return b, err
	}
	if !o.Detached {
		if err := b.runWatcher(); err != nil {
			return b, fmt.Errorf("starting watchdog: %w", err)
		}
	}
	cniPlugins := []string{"podnic", "loopback"}
	if o.AgentDaemonSet {
		cniPlugins = cniPlugins[1:] // the agent installs podnic
	}
	for _, f := range cniPlugins {
		if err := os.Link(filepath.Join(b.Bin, f), filepath.Join(b.Dir, "cni/bin", f)); err != nil {
			return b, err
		}
	}
	if err := b.writeImages(); err != nil {
		return b, fmt.Errorf("building images: %w", err)
	}
	o.Logf("nodebox: built podnic binaries and images in %v", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if err := b.makeNamespaces(ctx, o.ENIs); err != nil {
		return b, err
	}
	if err := b.makeCgroups(); err != nil {
		return b, err
	}
	if err := b.writeConfigs(); err != nil {
		return b, err
	}
	o.Logf("nodebox: namespaces, %d ENIs and cgroups ready in %v", o.ENIs, time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if err := b.startControlPlane(ctx); err != nil {
		return b, err
	}
	o.Logf("nodebox: etcd, kube-apiserver, controller-manager and scheduler ready in %v", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if err := b.startRuntime(ctx); err != nil {
		return b, err
	}
	o.Logf("nodebox: containerd ready, images imported in %v", time.Since(t0).Round(time.Millisecond))

	switch {
	case o.AgentDaemonSet:
		t0 = time.Now()
		if err := b.startKubelet(ctx, false); err != nil {
			return b, err
		}
		o.Logf("nodebox: kubelet started, node %s registered in %v", NodeName, time.Since(t0).Round(time.Millisecond))
		t0 = time.Now()
		if err := b.deployAgent(ctx, o.Repo, o.Helm); err != nil {
			return b, err
		}
		if err := b.waitNodeReady(ctx, b.kubelet()); err != nil {
			return b, err
		}
		o.Logf("nodebox: podnic-agent DaemonSet applied, CNI config installed, node %s Ready in %v", NodeName, time.Since(t0).Round(time.Millisecond))
	case !o.NoAgent:
		t0 = time.Now()
		if err := b.startAgent(ctx); err != nil {
			return b, err
		}
		o.Logf("nodebox: podnic-agent ready (datapath loaded) in %v", time.Since(t0).Round(time.Millisecond))
	default:
		if err := b.loadDatapath(ctx); err != nil {
			return b, err
		}
	}

	if !o.AgentDaemonSet {
		t0 = time.Now()
		if err := b.startKubelet(ctx, true); err != nil {
			return b, err
		}
		o.Logf("nodebox: kubelet started, node %s Ready in %v", NodeName, time.Since(t0).Round(time.Millisecond))
	}
	if err := b.waitDefaultServiceAccount(ctx); err != nil {
		return b, err
	}
	o.Logf("nodebox: up in %v (dir %s)", time.Since(start).Round(time.Millisecond), b.Dir)
	success = true
	return b, b.saveState()
}

func buildBinaries(ctx context.Context, repo, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", dir+"/",
		"./cni/cmd/podnic", "./test/cmd/podnic-pause", "./test/cmd/podnic-echo", "./test/cmd/podnic-get",
		"./nodeagent/cmd/podnic-agent", "./nodeagent/cmd/podnicctl", "./test/nodebox/cmd/nodebox")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building podnic binaries: %w\n%s", err, out)
	}
	// containerd's CRI always runs the loopback plugin as well.
	cmd = exec.CommandContext(ctx, "go", "install", "github.com/containernetworking/plugins/plugins/main/loopback@"+upstreamPlugins)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("installing the loopback CNI plugin: %w\n%s", err, out)
	}
	return nil
}

// runWatcher starts `nodebox watch`, which tears the box down when the pipe
// it reads closes (this process died) while the state file is still there.
func (b *Box) runWatcher() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	logFile, err := os.Create(filepath.Join(b.Dir, "logs", "watch.log"))
	if err != nil {
		w.Close()
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(b.Bin, "nodebox"), "watch", "-dir", b.Dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	go func() { _ = cmd.Wait() }()
	b.watchFD = w
	b.Watcher = &proc{Name: "watch", PID: cmd.Process.Pid, Start: startTime(cmd.Process.Pid)}
	return b.saveState()
}

// nsenter returns the command that runs argv in the node's namespaces.
func (b *Box) nsenter(ctx context.Context, mount bool, argv ...string) *exec.Cmd {
	args := []string{"-t", strconv.Itoa(b.Node.PID), "-n"}
	if mount {
		args = append(args, "-m")
	}
	args = append(args, "--")
	cmd := exec.CommandContext(ctx, "nsenter", append(args, argv...)...)
	// A command must not outlive the caller (an interrupted test).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// InNode runs argv in the node's network and mount namespaces and returns
// its combined output.
func (b *Box) InNode(ctx context.Context, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := b.nsenter(ctx, true, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// KubectlCommand is kubectl as admin in the node's network namespace.
func (b *Box) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	return b.nsenter(ctx, false, append([]string{filepath.Join(b.K8sBin, "kubectl"), "--kubeconfig=" + b.Kubeconfig()}, args...)...)
}

// Kubectl runs kubectl as admin in the node's network namespace.
func (b *Box) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := b.KubectlCommand(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Podnicctl runs podnicctl in the node against the agent.
func (b *Box) Podnicctl(ctx context.Context, args ...string) (string, error) {
	return b.InNode(ctx, append([]string{filepath.Join(b.Bin, "podnicctl"), "-bpf-root", BPFRoot, "-socket", b.AgentSocket()}, args...)...)
}

// APIGet GETs path from the API server as admin and decodes the JSON into v.
func (b *Box) APIGet(path string, v any) error { return b.apiGet(path, v) }

// RunCrictl runs crictl against the box's containerd and returns its
// standard output (its warnings go to standard error).
func (b *Box) RunCrictl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := b.nsenter(ctx, true, append([]string{b.Crictl, "--runtime-endpoint", "unix://" + b.containerdSocket(), "--timeout", "10s"}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// start starts a process; inNode runs it in the node's namespaces.
func (b *Box) start(name string, inNode bool, argv ...string) (*proc, error) {
	p := &proc{Name: name, Log: filepath.Join(b.Dir, "logs", name+".log"), done: make(chan struct{})}
	// Appended to: a restarted process (StartAgent) keeps its earlier log.
	logFile, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if inNode {
		cmd = b.nsenter(context.Background(), true, argv...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !b.detached {
		// The watchdog tears down the rest; this makes the direct
		// children go at once if the caller dies.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p.PID = cmd.Process.Pid
	p.Start = startTime(p.PID)
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// startDaemon starts a long-running process in the node and records it.
func (b *Box) startDaemon(name string, argv ...string) (*proc, error) {
	p, err := b.start(name, true, argv...)
	if err != nil {
		return nil, err
	}
	b.Procs = append(b.Procs, p)
	return p, b.saveState()
}

// alive reports whether p still runs (a zombie does not).
func (p *proc) alive() bool {
	if p == nil || p.PID == 0 {
		return false
	}
	if p.done != nil {
		select {
		case <-p.done:
			return false
		default:
		}
	}
	st, state := statOf(p.PID)
	return st != 0 && st == p.Start && state != "Z"
}

// startTime returns the start time of pid (clock ticks after boot), or 0.
func startTime(pid int) uint64 {
	st, _ := statOf(pid)
	return st
}

func statOf(pid int) (uint64, string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, ""
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v, f[0]
}

// stop ends p: SIGTERM, then SIGKILL after timeout.
func (p *proc) stop(timeout time.Duration) {
	if !p.alive() {
		return
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	deadline := time.Now().Add(timeout)
	for p.alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if p.alive() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
		deadline = time.Now().Add(5 * time.Second)
		for p.alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// waitFor polls check until it returns nil, p dies or the timeout passes.
func waitFor(ctx context.Context, p *proc, what string, timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited while starting; log %s:\n%s", p.Name, p.Log, Tail(p.Log, 4<<10))
		}
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			msg := ""
			if p != nil {
				msg = fmt.Sprintf("; log %s:\n%s", p.Log, Tail(p.Log, 4<<10))
			}
			return fmt.Errorf("%s not ready after %v: %w%s", what, timeout, last, msg)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// httpInNode is an HTTP client whose connections are made in the node's
// network namespace.
func (b *Box) httpInNode() *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // readiness probes only
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := netdevice.InNetns(b.NodeNetns(), func() error {
					var err error
					c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

func (b *Box) getOK(url string, header http.Header) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header = header
	resp, err := b.httpInNode().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// saveState writes what Down needs to find everything the box made.
func (b *Box) saveState() error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(b.Dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(b.Dir, stateFile))
}

// Open returns the box whose directory is dir, as Up left it.
func Open(dir string) (*Box, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	b := &Box{logf: func(string, ...any) {}}
	if err := json.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, stateFile), err)
	}
	return b, nil
}

// SetLogf sets where Down reports progress.
func (b *Box) SetLogf(f func(string, ...any)) { b.logf = f }

// Tail returns at most the last n bytes of the file at path.
func Tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > n {
		_, _ = f.Seek(info.Size()-n, io.SeekStart)
	}
	data, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return err.Error()
	}
	return string(data)
}
