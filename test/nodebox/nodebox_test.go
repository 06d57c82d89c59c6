package nodebox_test

// Address plan (see doc.go): fabric gateway 10.1.0.1, node 10.1.0.2, pods
// 10.1.0.10-250 from podnic IPAM, Services 10.96.0.0/16; ENIs eni1..eni4
// with MACs 02:00:0a:01:00:01..04 wait in the node.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/test/nodebox"
)

const workload = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: podnic.test/echo:v1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: podnic.test/echo:v1
    imagePullPolicy: Never
    command: ["/bin/sleep", "3600"]
`

// TestPodsOwnENIsAndReachAClusterIP brings the node in a box up, runs a
// Deployment of podnic-echo and a client pod (each gets an ENI through
// kubelet → containerd → podnic), checks podnic-agent programs the
// Service's backends and that the client reaches both through the
// ClusterIP, then deletes the client and checks its ENI is back in the node.
func TestPodsOwnENIsAndReachAClusterIP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	box := upBox(t, ctx, 0)

	kubectl := func(stdin string, args ...string) string {
		t.Helper()
		out, err := box.Kubectl(ctx, stdin, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	t0 := time.Now()
	kubectl(workload, "apply", "-f", "-")
	kubectl("", "rollout", "status", "deployment/echo", "--timeout=60s")
	kubectl("", "wait", "--for=condition=Ready", "pod/client", "--timeout=60s")
	t.Logf("Deployment available and client Ready in %v", time.Since(t0).Round(time.Millisecond))

	// Every pod owns an ENI: three of the four left the node.
	pods := podIPs(t, kubectl("", "get", "pods", "-o", "json"))
	t.Logf("pods: %v", pods)
	if len(pods) != 3 {
		t.Fatalf("want 3 pods, have %v", pods)
	}
	pool := netip.MustParsePrefix("10.1.0.0/24")
	for name, ip := range pods {
		if !pool.Contains(ip) {
			t.Errorf("pod %s has %v, not an address of the ENI pool %v", name, ip, pool)
		}
	}
	if enis := nodeENIs(t, box); len(enis) != 1 {
		t.Fatalf("want 1 ENI left in the node, have %v", enis)
	}
	clientMAC := strings.TrimSpace(kubectl("", "exec", "client", "--", "cat", "/sys/class/net/eth0/address"))

	// The Service's backends reach the maps.
	vip, err := netip.ParseAddr(strings.TrimSpace(kubectl("", "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}")))
	if err != nil {
		t.Fatalf("ClusterIP of echo: %v", err)
	}
	var want []string
	for name, ip := range pods {
		if strings.HasPrefix(name, "echo-") {
			want = append(want, ip.String()+":8080")
		}
	}
	sort.Strings(want)
	waitUntil(t, ctx, fmt.Sprintf("backends of %v:80 in the maps", vip), func() error {
		have, err := mapBackends(box, vip, 80)
		if err != nil {
			return err
		}
		if strings.Join(have, ",") != strings.Join(want, ",") {
			return fmt.Errorf("have %v, want %v", have, want)
		}
		return nil
	})

	// The client reaches both backends through the ClusterIP, and they see
	// its own address (DNAT only).
	out := kubectl("", "exec", "client", "--", "/podnic-get", "-n", "20", fmt.Sprintf("http://%v/", vip))
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var name, local, remote string
		if _, err := fmt.Sscanf(line, "hello from %s %s you are %s", &name, &local, &remote); err != nil {
			t.Fatalf("unexpected answer %q: %v", line, err)
		}
		if !strings.HasPrefix(remote, pods["client"].String()+":") {
			t.Errorf("backend %s saw the client as %s, want %s", name, remote, pods["client"])
		}
		seen[name]++
	}
	t.Logf("20 GETs of http://%s/ from the client: %v", vip, seen)
	for name := range pods {
		if strings.HasPrefix(name, "echo-") && seen[name] == 0 {
			t.Errorf("backend %s never answered 20 requests to the ClusterIP (answers: %v)", name, seen)
		}
	}

	// Deleting the client returns its ENI to the node, as it was.
	t0 = time.Now()
	kubectl("", "delete", "pod", "client", "--wait=true", "--timeout=60s")
	waitUntil(t, ctx, "the client's ENI back in the node", func() error {
		enis := nodeENIs(t, box)
		if len(enis) != 2 {
			return fmt.Errorf("ENIs in the node: %v", enis)
		}
		for name, e := range enis {
			if e.mac == clientMAC {
				if e.up {
					return fmt.Errorf("%s (%s) is back but up", name, e.mac)
				}
				return nil
			}
		}
		return fmt.Errorf("%s not among %v", clientMAC, enis)
	})
	t.Logf("client deleted and its ENI %s back in the node in %v", clientMAC, time.Since(t0).Round(time.Millisecond))
}

// upBox brings a box with enis ENIs (4 if 0) up for t and takes it down
// when t ends, or at Ctrl-C or SIGTERM; a harder death leaves it to the
// watchdog. It skips t when not root or in -short mode.
func upBox(t *testing.T, ctx context.Context, enis int) *nodebox.Box {
	t.Helper()
	return upBoxWith(t, ctx, nodebox.Options{ENIs: enis})
}

// upBoxWith is upBox with more options (Repo, K8sBin, Crictl and Logf
// are set here).
func upBoxWith(t *testing.T, ctx context.Context, o nodebox.Options) *nodebox.Box {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("the node in a box needs root")
	}
	if testing.Short() {
		t.Skip("the node in a box takes about a minute")
	}
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/setup-nodebox.sh", tool)
		}
	}
	repo := repoRoot(t)
	k8sBin := scriptOutput(t, "PODNIC_K8S_BIN", filepath.Join(repo, "scripts", "k8s-binaries.sh"),
		"kube-apiserver", "kubectl", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet")
	crictl := scriptOutput(t, "PODNIC_CRICTL", filepath.Join(repo, "scripts", "setup-nodebox.sh"))

	start := time.Now()
	o.Repo, o.K8sBin, o.Crictl, o.Logf = repo, k8sBin, crictl, t.Logf
	if o.AgentDaemonSet {
		o.Helm = scriptOutput(t, "PODNIC_HELM", filepath.Join(repo, "scripts", "helm-binary.sh"))
	}
	box, err := nodebox.Up(ctx, o)
	if err != nil {
		t.Fatalf("bringing the box up: %v", err)
	}
	t.Logf("box up in %v", time.Since(start).Round(time.Millisecond))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	stopSigs := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "nodebox test: %v: taking the box down\n", s)
			_ = box.Down()
			os.Exit(1)
		case <-stopSigs:
		}
	}()
	t.Cleanup(func() {
		signal.Stop(sigs)
		close(stopSigs)
		if t.Failed() {
			for _, name := range []string{"kubelet", "containerd", "podnic-agent"} {
				t.Logf("--- %s log (tail) ---\n%s", name, nodebox.Tail(filepath.Join(box.Dir, "logs", name+".log"), 6<<10))
			}
		}
		cg := box.Cgroup
		if err := box.Down(); err != nil {
			t.Errorf("taking the box down: %v", err)
		}
		if left, _ := filepath.Glob("/sys/fs/cgroup/*" + cg); len(left) > 0 {
			t.Errorf("cgroups left after Down: %v", left)
		}
	})

	return box
}

// podIPs returns each pod's IPv4 address from `kubectl get pods -o json`.
func podIPs(t *testing.T, js string) map[string]netip.Addr {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct{ PodIPs []struct{ IP string } }
		}
	}
	if err := json.Unmarshal([]byte(js), &list); err != nil {
		t.Fatalf("parsing pods: %v", err)
	}
	out := map[string]netip.Addr{}
	for _, p := range list.Items {
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
				out[p.Metadata.Name] = a
			}
		}
	}
	return out
}

type link struct {
	mac string
	up  bool
}

// nodeENIs lists the ENIs (links named eniN) waiting in the node.
func nodeENIs(t *testing.T, box *nodebox.Box) map[string]link {
	t.Helper()
	out, err := box.InNode(context.Background(), "ip", "-j", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Ifname  string   `json:"ifname"`
		Address string   `json:"address"`
		Flags   []string `json:"flags"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("parsing ip -j link: %v\n%s", err, out)
	}
	enis := map[string]link{}
	for _, l := range links {
		if strings.HasPrefix(l.Ifname, "eni") {
			up := false
			for _, f := range l.Flags {
				up = up || f == "UP"
			}
			enis[l.Ifname] = link{mac: l.Address, up: up}
		}
	}
	return enis
}

// mapBackends returns the backends podnic's pinned maps hold for vip:port,
// read through the node's mount namespace, where the pins live.
func mapBackends(box *nodebox.Box, vip netip.Addr, port uint16) ([]string, error) {
	d, err := bpf.OpenPinned(box.PinnedRoot())
	if err != nil {
		return nil, err
	}
	defer d.Close()
	services, err := d.Maps.ListServices()
	if err != nil {
		return nil, err
	}
	for _, s := range services {
		if s.VIP == vip && s.Port == port {
			var out []string
			for _, b := range s.Backends {
				out = append(out, b.Addr.String())
			}
			sort.Strings(out)
			return out, nil
		}
	}
	return nil, fmt.Errorf("%v:%d not in the maps (%d Service ports there)", vip, port, len(services))
}

func waitUntil(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not within 30s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scriptOutput returns $env, or the last line script prints.
func scriptOutput(t *testing.T, env, script string, args ...string) string {
	t.Helper()
	out, err := runScript(env, script, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runScript returns $env, or the last line script prints.
func runScript(env, script string, args ...string) (string, error) {
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(script, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s (set %s to skip it): %w\n%s", script, env, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1], nil
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}
