package nodeagent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent"
	"github.com/podnic/podnic/test/k8s"
	"github.com/podnic/podnic/test/simnode"
)

// Address plan: Services get ClusterIPs from the API server (10.96.0.0/16);
// endpoints are 10.128.0.0/9 (the cluster CIDR given to kube-proxy), 10
// per Service; the kube-proxy namespaces hold 192.0.2.100 (nftables) and
// 192.0.2.101 (iptables) and reach the API server through a forwarder on
// their own 127.0.0.1.

// TestCompareProgrammingOneServiceWithKubeProxy measures, in one run
// against one API server holding PODNIC_COMPARE_SERVICES Services (10,000)
// × 10 endpoints, how long a new Service with its EndpointSlice takes to
// be programmed by kube-proxy v1.36 in nftables mode, in iptables mode
// with the legacy backend, and by podnic-agent. Each kube-proxy runs in a
// network namespace of its own. It takes minutes:
//
//	PODNIC_COMPARE_KUBEPROXY=1 go test -run CompareProgramming -v -timeout 60m ./nodeagent/
func TestCompareProgrammingOneServiceWithKubeProxy(t *testing.T) {
	if os.Getenv("PODNIC_COMPARE_KUBEPROXY") != "1" {
		t.Skip("set PODNIC_COMPARE_KUBEPROXY=1 to compare with kube-proxy (takes minutes)")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root for BPF and network namespaces")
	}
	services := envInt(t, "PODNIC_COMPARE_SERVICES", 10000)
	samples := envInt(t, "PODNIC_COMPARE_SAMPLES", 3)
	modes := strings.Fields(envString("PODNIC_COMPARE_MODES", "nftables iptables-legacy podnic"))

	c := k8s.Start(t)
	kubeProxy := filepath.Join(c.BinDir, "kube-proxy")
	if _, err := os.Stat(kubeProxy); err != nil {
		t.Fatalf("kube-proxy: %v (build it: scripts/k8s-binaries.sh kube-proxy)", err)
	}
	c.Apply(t, agentRBAC(t)+"---"+nodeYAML("zone-a")+kubeProxyRBAC)
	admin := clientFor(t, c.AdminKubeconfig())

	start := time.Now()
	populate(t, admin, services)
	t.Logf("created %d Services and EndpointSlices in %s", services, time.Since(start).Round(time.Second))
	lastVIP := serviceVIP(t, admin, fmt.Sprintf("svc-%05d", services-1))

	n := simnode.New(t)
	results := map[string][]measure{}
	for i, mode := range modes {
		var p programmer
		switch mode {
		case "nftables", "iptables-legacy":
			p = startKubeProxy(t, c, n, kubeProxy, mode, i)
		case "podnic":
			p = startPodnic(t, c)
		default:
			t.Fatalf("PODNIC_COMPARE_MODES: unknown mode %q", mode)
		}
		start := time.Now()
		waitFor(t, mode+" initial sync", 15*time.Minute, func() bool { return p.programmed(lastVIP) })
		t.Logf("%s: initial sync of %d Services visible after %s", mode, services, time.Since(start).Round(100*time.Millisecond))
		time.Sleep(3 * time.Second) // let the initial syncs settle
		for s := range samples {
			m := measureOne(t, admin, p, fmt.Sprintf("new-%s-%d", mode, s), services+1+i*samples+s)
			t.Logf("%s sample %d: create → visible %s (event → visible %s)%s", mode, s, m.wall.Round(time.Millisecond), m.event.Round(time.Millisecond), p.detail())
			results[mode] = append(results[mode], m)
			time.Sleep(2 * time.Second)
		}
		p.stop()
	}
	for _, mode := range modes {
		var w, e []string
		for _, m := range results[mode] {
			w = append(w, m.wall.Round(time.Millisecond).String())
			e = append(e, m.event.Round(time.Millisecond).String())
		}
		t.Logf("RESULT %-16s one new Service at %d Services: create → programmed %s; watch event → programmed %s",
			mode, services, strings.Join(w, " "), strings.Join(e, " "))
	}
}

// kubeProxyRBAC is kube-proxy's identity: a ServiceAccount bound to the
// bootstrap role system:node-proxier (list/watch Services, EndpointSlices,
// Nodes; create events), and its Nodes.
const kubeProxyRBAC = `
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kube-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}
subjects: [{kind: ServiceAccount, name: kube-proxy, namespace: kube-system}]
---
apiVersion: v1
kind: Node
metadata: {name: kp-nftables}
---
apiVersion: v1
kind: Node
metadata: {name: kp-iptables-legacy}
`

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func envString(name, def string) string {
	if s := os.Getenv(name); s != "" {
		return s
	}
	return def
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 2000, 2000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func compareService(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP}}},
	}
}

func compareSlice(name string, i int, trigger time.Time) *discovery.EndpointSlice {
	port, proto, pn, ready := int32(8080), v1.ProtocolTCP, "http", true
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name + "-1", Labels: map[string]string{
			discovery.LabelServiceName: name, discovery.LabelManagedBy: "podnic-compare-test"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &pn, Port: &port, Protocol: &proto}},
	}
	if !trigger.IsZero() {
		s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
	}
	for j := range 10 {
		e := i*10 + j
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{netip.AddrFrom4([4]byte{10, byte(128 + e>>16), byte(e >> 8), byte(e)}).String()},
			Conditions: discovery.EndpointConditions{Ready: &ready},
		})
	}
	return s
}

// populate creates services Services and their slices, 16 at a time.
func populate(t *testing.T, cs kubernetes.Interface, services int) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= services {
					return
				}
				name := fmt.Sprintf("svc-%05d", i)
				if _, err := cs.CoreV1().Services("default").Create(ctx, compareService(name), metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
				if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, compareSlice(name, i, time.Time{}), metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("populating: %v", err)
	}
}

func serviceVIP(t *testing.T, cs kubernetes.Interface, name string) netip.Addr {
	s, err := cs.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(s.Spec.ClusterIP)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type measure struct {
	wall  time.Duration // from the Service's create call to the rule or entry visible
	event time.Duration // from the EndpointSlice's watch event in this process to visible
}

// programmer is one of the compared: it says whether a ClusterIP is
// programmed with endpoints.
type programmer interface {
	programmed(vip netip.Addr) bool
	// pollInterval keeps the polling from taking the CPU the
	// programmer needs: asking nft or iptables costs a process and a
	// read of a big table, asking a BPF map one syscall.
	pollInterval() time.Duration
	detail() string // what the programmer says about its last sync
	stop()
}

// measureOne creates Service name with its slice and times it until p
// programs it, polling every p.pollInterval (the figure is that much
// coarser).
func measureOne(t *testing.T, cs kubernetes.Interface, p programmer, name string, i int) measure {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w, err := cs.DiscoveryV1().EndpointSlices("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name + "-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	evt := make(chan time.Time, 1)
	go func() {
		for range w.ResultChan() {
			evt <- time.Now()
			return
		}
	}()
	start := time.Now()
	svc, err := cs.CoreV1().Services("default").Create(ctx, compareService(name), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, compareSlice(name, i, start), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	for !p.programmed(vip) {
		if ctx.Err() != nil {
			t.Fatalf("%s (%s) not programmed in 5 minutes", name, vip)
		}
		time.Sleep(p.pollInterval())
	}
	done := time.Now()
	m := measure{wall: done.Sub(start)}
	select {
	case at := <-evt:
		m.event = done.Sub(at)
	case <-time.After(10 * time.Second):
		t.Errorf("%s: no watch event", name)
	}
	return m
}

// kubeProxy is kube-proxy running in a network namespace of its own.
type kubeProxy struct {
	t    *testing.T
	mode string
	pod  *simnode.Pod
	cmd  *exec.Cmd
	log  string
	seen int64 // log bytes already reported by detail
}

func startKubeProxy(t *testing.T, c *k8s.Cluster, n *simnode.Node, bin, mode string, i int) *kubeProxy {
	node := "kp-" + mode
	pod := n.AddPod(node, netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/32", 100+i)), netip.Prefix{})
	// kube-proxy takes its node IP from the Node; without one it waits
	// 30 s before falling back.
	patch := fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":"%s"}]}}`, pod.IPv4)
	if out, err := c.Kubectl(k8s.AdminUser, "", "patch", "node", node, "--subresource=status", "--type=merge", "-p", patch); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	token, err := c.Kubectl(k8s.AdminUser, "", "create", "token", "kube-proxy", "-n", "kube-system", "--duration=2h")
	if err != nil {
		t.Fatalf("%v: %s", err, token)
	}
	kubeconfig := forwardAPIServer(t, c, pod, strings.TrimSpace(token), node)
	dir := t.TempDir()
	env := os.Environ()
	proxyMode := mode
	if mode == "iptables-legacy" {
		// kube-proxy runs whatever iptables, iptables-save and
		// iptables-restore are first in PATH (its image picks the backend
		// with a wrapper script): these are the legacy ones.
		proxyMode = "iptables"
		bindir := filepath.Join(dir, "bin")
		if err := os.Mkdir(bindir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			if err := os.Symlink("/usr/sbin/xtables-legacy-multi", filepath.Join(bindir, b)); err != nil {
				t.Fatal(err)
			}
		}
		env = append(env, "PATH="+bindir+":"+os.Getenv("PATH"))
	}
	k := &kubeProxy{t: t, mode: mode, pod: pod, log: filepath.Join(dir, "kube-proxy.log")}
	logFile, err := os.Create(k.log)
	if err != nil {
		t.Fatal(err)
	}
	k.cmd = exec.Command("nsenter", "--net="+pod.NetnsPath, bin,
		"--kubeconfig="+kubeconfig, "--hostname-override="+node, "--proxy-mode="+proxyMode,
		"--cluster-cidr=10.128.0.0/9", "--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=2")
	k.cmd.Env = env
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logFile.Close()
	t.Cleanup(k.stop)
	t.Logf("%s: kube-proxy started in netns %s", mode, pod.Netns)
	return k
}

func (k *kubeProxy) stop() {
	if k.cmd.Process == nil || k.cmd.ProcessState != nil {
		return
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = k.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-done
	}
	if k.t.Failed() {
		b, _ := os.ReadFile(k.log)
		if len(b) > 16<<10 {
			b = b[len(b)-16<<10:]
		}
		k.t.Logf("%s kube-proxy log tail:\n%s", k.mode, b)
	}
}

func (k *kubeProxy) pollInterval() time.Duration { return 250 * time.Millisecond }

func (k *kubeProxy) programmed(vip netip.Addr) bool {
	var args []string
	if k.mode == "nftables" {
		args = []string{"nft", "get", "element", "ip", "kube-proxy", "service-ips", "{ " + vip.String() + " . tcp . 80 }"}
	} else {
		args = []string{"xtables-legacy-multi", "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"}
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + k.pod.NetnsPath}, args...)...).Output()
	if err != nil {
		return false
	}
	if k.mode == "nftables" {
		return true
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "-d "+vip.String()+"/32") && strings.Contains(l, "-j KUBE-SVC-") {
			return true
		}
	}
	return false
}

var syncElapsed = regexp.MustCompile(`"SyncProxyRules complete" ipFamily="IPv4" elapsed="([^"]+)"`)

// detail reports kube-proxy's own IPv4 sync durations since the last call.
func (k *kubeProxy) detail() string {
	time.Sleep(100 * time.Millisecond)
	b, _ := os.ReadFile(k.log)
	if int64(len(b)) < k.seen {
		return ""
	}
	fresh := b[k.seen:]
	k.seen = int64(len(b))
	var syncs []string
	for _, m := range syncElapsed.FindAllSubmatch(fresh, -1) {
		syncs = append(syncs, string(m[1]))
	}
	return "; kube-proxy IPv4 syncs meanwhile: " + strings.Join(syncs, " ")
}

// forwardAPIServer serves the API server on the pod's own 127.0.0.1 (the
// name the server's certificate holds) and returns a kubeconfig for it.
func forwardAPIServer(t *testing.T, c *k8s.Cluster, pod *simnode.Pod, token, user string) string {
	var l net.Listener
	if err := pod.Do(func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	upstream := strings.TrimPrefix(c.Server, "https://")
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", upstream)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in); out.Close() }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	cfg, err := clientcmd.LoadFromFile(c.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + l.Addr().String()
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name].Token = token
	}
	path := filepath.Join(t.TempDir(), "kubeconfig-"+user)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// podnicRun is podnic-agent in this process, with the limited token, on
// real maps; it records when each service entry is written.
type podnicRun struct {
	d      *bpf.Datapath
	a      *nodeagent.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

func startPodnic(t *testing.T, c *k8s.Cluster) *podnicRun {
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-compare-%d", os.Getpid()))
	t.Cleanup(func() { _ = bpf.Unpin(root) })
	d, err := bpf.Load(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	client, err := nodeagent.KubeClient(c.Kubeconfig(k8s.AgentUser))
	if err != nil {
		t.Fatal(err)
	}
	a, err := nodeagent.NewAgent(&d.Maps, nodeagent.Options{NodeName: "node-a", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &podnicRun{d: d, a: a, cancel: cancel, done: make(chan struct{})}
	go a.Run(ctx.Done())
	go func() {
		defer close(p.done)
		if err := (nodeagent.KubeSource{Client: client, NodeName: "node-a"}).Run(ctx, a); err != nil {
			t.Errorf("kubernetes source: %v", err)
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *podnicRun) programmed(vip netip.Addr) bool {
	var v bpf.ServiceValue
	k := bpf.ServiceKey{Addr: bpf.AddrFrom(vip), Port: bpf.PortFrom(80), Proto: bpf.TCP, Scope: bpf.ScopeCluster}
	return p.d.Maps.Services.Lookup(&k, &v) == nil && v.Count == 10
}

func (p *podnicRun) pollInterval() time.Duration { return time.Millisecond }

func (p *podnicRun) detail() string {
	st := p.a.Status()
	return fmt.Sprintf("; podnic's last sync: %s, %d writes, full %v", st.Duration.Round(time.Microsecond), st.Writes.Total(), st.Full)
}

func (p *podnicRun) stop() {
	p.cancel()
	<-p.done
}
