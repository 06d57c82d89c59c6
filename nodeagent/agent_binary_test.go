package nodeagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent/localapi"
	"github.com/podnic/podnic/test/k8s"
	"github.com/podnic/podnic/test/simnode"
)

// buildCommands builds podnic-agent, podnicctl and the podnic CNI plugin
// into a temporary directory, as a release would, and returns it.
func buildCommands(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/podnic-agent", "./cmd/podnicctl", "../cni/cmd/podnic")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// TestAgentBinaryProgramsAndStopsCleanly runs the podnic-agent binary with
// the limited token against the API server, asks it through its socket
// with podnicctl, stops it with SIGTERM and checks that it exits cleanly
// and leaves the maps as they were.
func TestAgentBinaryProgramsAndStopsCleanly(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for BPF")
	}
	bin := buildCommands(t)
	c := k8s.Start(t)
	c.Apply(t, agentRBAC(t)+"---"+nodeYAML("zone-a"))
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-agent-binary-%d", os.Getpid()))
	t.Cleanup(func() { _ = bpf.Unpin(root) })
	d, err := bpf.Load(root) // the datapath is loaded and pinned before the agent starts
	if err != nil {
		t.Fatal(err)
	}
	// A pod attached by that build, and then another build pinned: the
	// pod runs programs that are no longer the pinned ones until the
	// agent, at its start, moves it.
	pod := simnode.New(t).AddPod("client", netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128"))
	if _, err := d.AttachPod(pod.NetnsPath, pod.Ifname, "pod-owner", bpf.ModeAuto); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if d, err = bpf.Load(root); err != nil {
		t.Fatal(err)
	}
	d.Close()

	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops := l.Addr().String()
	l.Close()
	logPath := filepath.Join(t.TempDir(), "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// The node's CNI dirs, which the agent fills after its first sync.
	node := newCNIDirs(t)
	agent := exec.Command(filepath.Join(bin, "podnic-agent"),
		"--kubeconfig="+c.Kubeconfig(k8s.AgentUser), "--node-name=node-a", "--bpf-root="+root,
		"--socket="+sock, "--ops-address="+ops, "--log-format=json",
		"--install-cni-plugin="+filepath.Join(bin, "podnic"), "--install-cni-config="+node.config,
		"--cni-bin-dir="+node.binDir, "--cni-conf-dir="+node.confDir)
	agent.Stdout, agent.Stderr = logFile, logFile
	agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		if agent.ProcessState == nil {
			_ = agent.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("podnic-agent log:\n%s", b)
		}
	})

	ctl := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "podnicctl"), append([]string{"--socket", sock, "--bpf-root", root, "-o", "json"}, args...)...)
		return cmd.Output()
	}
	status := func() localapi.Status {
		t.Helper()
		out, err := ctl("status")
		if err != nil {
			t.Fatal(err)
		}
		var st localapi.Status
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := status(); st.Agent || st.Attachments != 3 || st.StaleAttachments != 3 {
		t.Errorf("podnicctl status from the pins before the agent: %d attach points, %d stale; want 3 and 3", st.Attachments, st.StaleAttachments)
	}
	c.Apply(t, serviceYAML("")+slicesYAML(up("server1")))
	var rows []localapi.ServiceRow
	eventually(t, "podnicctl service list shows the Service", func() error {
		out, err := ctl("service", "list")
		if err != nil {
			return fmt.Errorf("podnicctl: %w", err)
		}
		rows = nil
		if err := json.Unmarshal(out, &rows); err != nil {
			return fmt.Errorf("decoding %s: %w", out, err)
		}
		var web []string
		for _, r := range rows {
			if r.Service == "default/web:http" && len(r.Backends) == 1 &&
				(r.Backends[0].Addr.String() == "192.0.2.20:8080" || r.Backends[0].Addr.String() == "[2001:db8::20]:8080") {
				web = append(web, r.VIP.String())
			}
		}
		if len(web) != 2 {
			return fmt.Errorf("web's http frontends with server1: %v, want IPv4 and IPv6 in %s", web, out)
		}
		return nil
	})

	if st := status(); !st.Agent || st.Source != "kubernetes" || st.Node != "node-a" || st.Zone != "zone-a" || st.LastSync == nil || st.LastSync.Error != "" || st.Services < 2 ||
		st.Attachments != 3 || st.StaleAttachments != 0 {
		t.Errorf("podnicctl status: %+v", st)
	}
	if out, err := ctl("ct", "list"); err != nil || strings.TrimSpace(string(out)) != "[]" {
		t.Errorf("podnicctl ct list: %v %s, want [] (no flow)", err, out)
	}
	if log, _ := os.ReadFile(logPath); !strings.Contains(string(log), `"msg":"pods moved to the programs just loaded"`) {
		t.Errorf("the agent's log does not say it moved the pod:\n%s", log)
	}
	eventually(t, "the CNI plugin and config installed", func() error {
		return node.installed(filepath.Join(bin, "podnic"))
	})
	resp, err := http.Get("http://" + ops + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}

	before := programmed(t, mustOpen(t, root))
	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("podnic-agent exited with %v after SIGTERM", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("podnic-agent still running 10s after SIGTERM")
	}
	if log, _ := os.ReadFile(logPath); !strings.Contains(string(log), "the maps stay as they are") {
		t.Errorf("no clean stop in the log:\n%s", log)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	after := programmed(t, mustOpen(t, root))
	if fmt.Sprint(after) != fmt.Sprint(before) || len(after) != 4 {
		t.Errorf("the maps changed when the agent stopped:\nbefore %v\nafter  %v", before, after)
	}
	// Without the agent, podnicctl reads the same from the pins.
	if out, err := ctl("service", "list"); err != nil || !strings.Contains(string(out), "192.0.2.20:8080") {
		t.Errorf("podnicctl from the pins after the agent stopped: %v %s", err, out)
	}
}

// cniDirs is a node's CNI bin and config dirs, empty, and a config for
// podnic-agent --install-cni-config.
type cniDirs struct {
	binDir, confDir, config string
}

const nodeConflist = `{"cniVersion": "1.0.0", "name": "eni-pool", "plugins": [
  {"type": "podnic", "devicePool": {"names": ["eth1"]},
   "ipam": {"type": "podnic", "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}]]}}]}`

func newCNIDirs(t *testing.T) cniDirs {
	t.Helper()
	d := t.TempDir()
	n := cniDirs{binDir: filepath.Join(d, "bin"), confDir: filepath.Join(d, "net.d"), config: filepath.Join(d, "10-podnic.conflist")}
	for _, dir := range []string{n.binDir, n.confDir} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.config, []byte(nodeConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// installed says whether the dirs hold plugin and the config.
func (n cniDirs) installed(plugin string) error {
	want, err := os.ReadFile(plugin)
	if err != nil {
		return err
	}
	if got, err := os.ReadFile(filepath.Join(n.binDir, "podnic")); err != nil || string(got) != string(want) {
		return fmt.Errorf("plugin not installed (%w)", err)
	}
	if got, err := os.ReadFile(filepath.Join(n.confDir, "10-podnic.conflist")); err != nil || string(got) != nodeConflist {
		return fmt.Errorf("config not installed (%w)", err)
	}
	return nil
}

// empty fails t unless both dirs are empty.
func (n cniDirs) empty(t *testing.T) {
	t.Helper()
	for _, dir := range []string{n.binDir, n.confDir} {
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("%s holds %v (%v), want nothing", dir, ents, err)
		}
	}
}

// TestAgentBinaryRefusesABadCNIConfigAndWritesNothing: a node's CNI config
// that the plugin would refuse stops the agent at start, before it loads
// anything or writes a file, with the reason.
func TestAgentBinaryRefusesABadCNIConfigAndWritesNothing(t *testing.T) {
	bin := buildCommands(t)
	node := newCNIDirs(t)
	if err := os.WriteFile(node.config, []byte(strings.Replace(nodeConflist, `"devicePool"`, `"servicePath": "fast", "devicePool"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"bad config", []string{"--install-cni-plugin=" + filepath.Join(bin, "podnic"), "--install-cni-config=" + node.config}, `invalid podnic config: servicePath`},
		{"plugin alone", []string{"--install-cni-plugin=" + filepath.Join(bin, "podnic")}, "go together"},
		{"missing plugin", []string{"--install-cni-plugin=" + filepath.Join(bin, "nope"), "--install-cni-config=" + filepath.Join(t.TempDir(), "x.conflist")}, "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"--bpf-root=" + filepath.Join(t.TempDir(), "pins"), "--services-file=/dev/null",
				"--cni-bin-dir=" + node.binDir, "--cni-conf-dir=" + node.confDir}, c.args...)
			out, err := exec.Command(filepath.Join(bin, "podnic-agent"), args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Errorf("podnic-agent %v: %v\n%s\nwant an error mentioning %q", c.args, err, out, c.want)
			}
			node.empty(t)
		})
	}
}

func mustOpen(t *testing.T, root string) *bpf.Datapath {
	t.Helper()
	d, err := bpf.OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// TestAgentBinaryInACgroupNamespaceNeedsTheNodesCgroupRoot runs the agent
// as a container on a cgroup v2 node runs it: in a cgroup namespace of its
// own. Without --cgroup-root it refuses to start, naming the flag, rather
// than balance only its own cgroup's sockets; with the node's cgroup v2
// root mounted in (deploy/podnic.yaml's /host/sys/fs/cgroup) it attaches
// the socket programs there.
func TestAgentBinaryInACgroupNamespaceNeedsTheNodesCgroupRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for BPF and cgroup namespaces")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	bin := buildCommands(t)
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-agent-cgroupns-%d", os.Getpid()))
	t.Cleanup(func() { _ = bpf.Unpin(root) })
	services := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(services, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	agent := func(ctx context.Context, extra ...string) *exec.Cmd {
		args := append([]string{"--cgroup", filepath.Join(bin, "podnic-agent"), "--bpf-root=" + root,
			"--services-file=" + services, "--socket=" + filepath.Join(t.TempDir(), "agent.sock"), "--ops-address="}, extra...)
		cmd := exec.CommandContext(ctx, "unshare", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := agent(ctx).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cgroup namespace of its own") || !strings.Contains(string(out), "--cgroup-root") {
		t.Errorf("podnic-agent in a cgroup namespace without --cgroup-root: %v\n%s\nwant a refusal naming --cgroup-root", err, out)
	}
	if names, _ := bpf.SocketLBAttached(root); len(names) != 0 {
		t.Errorf("socket programs attached after the refusal: %v", names)
	}

	// The node's root, mounted before the namespace (so it shows the whole
	// hierarchy), as a hostPath mount gives it to a container.
	cg := simnode.CgroupV2(t, bpf.CgroupV2Mount)
	var log bytes.Buffer
	cmd := agent(ctx, "--cgroup-root="+cg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	eventually(t, "socket programs attached to the node's cgroup root", func() error {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("podnic-agent exited: %w\n%s", err, log.String())
		default:
		}
		names, err := bpf.SocketLBAttached(root)
		if err != nil || len(names) == 0 {
			return fmt.Errorf("attached: %v, %w", names, err)
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Errorf("podnic-agent after SIGTERM: %v\n%s", err, log.String())
	}
}
