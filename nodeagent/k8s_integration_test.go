package nodeagent_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent"
	"github.com/podnic/podnic/test/k8s"
	"github.com/podnic/podnic/test/simnode"
)

// Address plan: the Service's ClusterIPs are fixed inside the test API
// server's ranges (10.96.0.0/16, fd00:96::/108); pods use TEST-NET-1
// 192.0.2.0/24 and the documentation prefix 2001:db8::/32: the client
// .10/::10, server1 .20/::20, server2 .21/::21. HTTP on 8080 behind port
// 80, TCP echo on 7000 behind 7000.

var (
	vip4 = netip.MustParseAddr("10.96.100.10")
	vip6 = netip.MustParseAddr("fd00:96::1:10")
)

// agentRBAC is the ClusterRole podnic ships, bound to the test's agent user.
func agentRBAC(t testing.TB) string {
	t.Helper()
	r, err := k8s.AgentRBAC("..", k8s.AgentUser)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func nodeYAML(zone string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: %s}
`, zone)
}

func serviceYAML(extra string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: %s
  clusterIPs: [%s, "%s"]
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: echo, port: 7000, targetPort: 7000, protocol: TCP}
%s`, vip4, vip4, vip6, extra)
}

type ep struct {
	pod                         string // server1 or server2
	node                        string
	ready, serving, terminating bool
	zone                        string
}

func slicesYAML(eps ...ep) string {
	var b strings.Builder
	for _, fam := range []string{"IPv4", "IPv6"} {
		fmt.Fprintf(&b, `
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-%s
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: %s
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: echo, port: 7000, protocol: TCP}
endpoints:
`, strings.ToLower(fam), fam)
		if len(eps) == 0 {
			b.WriteString("  []\n")
		}
		for _, e := range eps {
			addr := map[string]string{"server1": "192.0.2.20", "server2": "192.0.2.21"}[e.pod]
			if fam == "IPv6" {
				addr = `"` + map[string]string{"server1": "2001:db8::20", "server2": "2001:db8::21"}[e.pod] + `"`
			}
			fmt.Fprintf(&b, "- addresses: [%s]\n  conditions: {ready: %v, serving: %v, terminating: %v}\n", addr, e.ready, e.serving, e.terminating)
			if e.node != "" {
				fmt.Fprintf(&b, "  nodeName: %s\n", e.node)
			}
			if e.zone != "" {
				fmt.Fprintf(&b, "  hints: {forZones: [{name: %s}]}\n", e.zone)
			}
		}
	}
	return b.String()
}

func up(pod string) ep { return ep{pod: pod, ready: true, serving: true} }

type agentRun struct {
	a    *nodeagent.Agent
	stop context.CancelFunc
	done chan struct{}
}

func startAgent(t *testing.T, c *k8s.Cluster, d *bpf.Datapath) *agentRun {
	t.Helper()
	client, err := nodeagent.KubeClient(c.Kubeconfig(k8s.AgentUser))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := nodeagent.NewAgent(&d.Maps, nodeagent.Options{NodeName: "node-a", Log: log, RetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{a: a, stop: cancel, done: make(chan struct{})}
	go a.Run(ctx.Done())
	go func() {
		defer close(r.done)
		src := nodeagent.KubeSource{Client: client, NodeName: "node-a", NodeInterval: 200 * time.Millisecond}
		if err := src.Run(ctx, a); err != nil {
			t.Errorf("kubernetes source: %v", err)
		}
	}()
	t.Cleanup(func() { r.Stop() })
	return r
}

func (r *agentRun) Stop() {
	r.stop()
	<-r.done
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// programmed renders the real pinned maps: "frontend id: backends".
func programmed(t *testing.T, d *bpf.Datapath) map[string]string {
	t.Helper()
	ss, err := d.Maps.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range ss {
		if s.VIP != vip4 && s.VIP != vip6 {
			continue // the API server's own "kubernetes" Service
		}
		var bs []string
		for _, b := range s.Backends {
			x := b.Addr.String()
			if b.State == bpf.BackendTerminating {
				x += "(terminating)"
			}
			bs = append(bs, x)
		}
		slices.Sort(bs)
		v := strings.Join(bs, " ")
		if s.Affinity > 0 {
			v += fmt.Sprintf(" affinity %s", s.Affinity)
		}
		if s.NoLocal {
			v += "drop"
		}
		out[s.String()] = v
	}
	return out
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func expectMaps(t *testing.T, d *bpf.Datapath, what string, want map[string]string) {
	t.Helper()
	eventually(t, what, func() error {
		got := programmed(t, d)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("maps hold %v, want %v", got, want)
		}
		return nil
	})
}

// answers sends n requests to the Service and counts who answered.
func answers(t *testing.T, client *simnode.Pod, vip netip.Addr, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		body, err := client.HTTPGet("http://"+netip.AddrPortFrom(vip, 80).String()+"/", 5*time.Second)
		if err != nil {
			t.Fatalf("GET %s: %v", vip, err)
		}
		name, _, _ := strings.Cut(body, " ")
		got[name]++
	}
	return got
}

func testRoot(t *testing.T) string {
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-agent-test-%d", os.Getpid()))
	t.Cleanup(func() { _ = bpf.Unpin(root) })
	return root
}

func TestAgentProgramsServicesFromTheAPIServer(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for BPF and network namespaces")
	}
	c := k8s.Start(t)
	c.Apply(t, agentRBAC(t)+"---"+nodeYAML("zone-a"))
	d, err := bpf.Load(testRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)

	n := simnode.New(t)
	client := n.AddPod("client", netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128"))
	servers := map[string]*simnode.Pod{
		"server1": n.AddPod("server1", netip.MustParsePrefix("192.0.2.20/32"), netip.MustParsePrefix("2001:db8::20/128")),
		"server2": n.AddPod("server2", netip.MustParsePrefix("192.0.2.21/32"), netip.MustParsePrefix("2001:db8::21/128")),
	}
	for _, s := range servers {
		s.ServeHTTP(t, 8080)
		s.ServeTCPEcho(t, 7000)
	}
	if _, err := d.AttachPod(client.NetnsPath, client.Ifname, "client", bpf.ModeAuto); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.DetachPod(d.Root, "client", client.NetnsPath) })

	outer := t // the agent outlives the subtest that restarts it
	agent := startAgent(t, c, d)
	eventually(t, "agent healthy", agent.a.Healthy)

	both := func(v4, v6 string) map[string]string {
		return map[string]string{
			"10.96.100.10:80/TCP": strings.ReplaceAll(v4, "$p", "8080"), "10.96.100.10:7000/TCP": strings.ReplaceAll(v4, "$p", "7000"),
			"[fd00:96::1:10]:80/TCP": strings.ReplaceAll(v6, "$p", "8080"), "[fd00:96::1:10]:7000/TCP": strings.ReplaceAll(v6, "$p", "7000"),
		}
	}

	t.Run("create", func(t *testing.T) {
		c.Apply(t, serviceYAML("")+slicesYAML(up("server1")))
		expectMaps(t, d, "service created", both("192.0.2.20:$p", "[2001:db8::20]:$p"))
		if got := answers(t, client, vip4, 2); got["server1"] != 2 {
			t.Errorf("IPv4 answers %v", got)
		}
		if got := answers(t, client, vip6, 2); got["server1"] != 2 {
			t.Errorf("IPv6 answers %v", got)
		}
	})
	t.Run("scale", func(t *testing.T) {
		c.Apply(t, slicesYAML(up("server1"), up("server2")))
		expectMaps(t, d, "scaled up", both("192.0.2.20:$p 192.0.2.21:$p", "[2001:db8::20]:$p [2001:db8::21]:$p"))
		if got := answers(t, client, vip4, 30); got["server1"] == 0 || got["server2"] == 0 {
			t.Errorf("30 requests answered %v, want both servers", got)
		}
	})
	t.Run("rolling update", func(t *testing.T) {
		old := ep{pod: "server1", serving: true, terminating: true}
		c.Apply(t, slicesYAML(old, up("server2")))
		expectMaps(t, d, "terminating endpoint dropped", both("192.0.2.21:$p", "[2001:db8::21]:$p"))
		if got := answers(t, client, vip4, 5); got["server2"] != 5 {
			t.Errorf("answers %v, want server2 only", got)
		}
		c.Apply(t, slicesYAML(old, ep{pod: "server2", serving: true, terminating: true}))
		expectMaps(t, d, "serving-terminating fallback",
			both("192.0.2.20:$p(terminating) 192.0.2.21:$p(terminating)", "[2001:db8::20]:$p(terminating) [2001:db8::21]:$p(terminating)"))
		c.Apply(t, slicesYAML(up("server1"), up("server2")))
		expectMaps(t, d, "rolled", both("192.0.2.20:$p 192.0.2.21:$p", "[2001:db8::20]:$p [2001:db8::21]:$p"))
	})
	t.Run("affinity", func(t *testing.T) {
		c.Apply(t, serviceYAML("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"))
		expectMaps(t, d, "affinity", both("192.0.2.20:$p 192.0.2.21:$p affinity 1m0s", "[2001:db8::20]:$p [2001:db8::21]:$p affinity 1m0s"))
		if got := answers(t, client, vip4, 10); len(got) != 1 {
			t.Errorf("with ClientIP affinity, 10 requests answered by %v", got)
		}
		c.Apply(t, serviceYAML(""))
	})
	t.Run("external IPs", func(t *testing.T) {
		ext := netip.MustParseAddr("203.0.113.10")
		hasExt := func(want bool) func() error {
			return func() error {
				ss, err := d.Maps.ListServices()
				if err != nil {
					return err
				}
				has := slices.ContainsFunc(ss, func(s bpf.ServiceInfo) bool { return s.VIP == ext && s.Port == 80 && len(s.Backends) > 0 })
				if has != want {
					return fmt.Errorf("%s:80 in the maps: %v, want %v", ext, has, want)
				}
				return nil
			}
		}
		c.Apply(t, serviceYAML("  externalIPs: [203.0.113.10]\n"))
		eventually(t, "external IP programmed", hasExt(true))
		n := 0
		for _, k := range answers(t, client, ext, 5) {
			n += k
		}
		if n != 5 {
			t.Errorf("%d of 5 requests to the external IP answered", n)
		}
		c.Apply(t, serviceYAML(""))
		eventually(t, "external IP removed", hasExt(false))
	})
	t.Run("internal traffic policy local", func(t *testing.T) {
		c.Apply(t, serviceYAML("  internalTrafficPolicy: Local\n")+slicesYAML(
			ep{pod: "server1", node: "node-a", ready: true, serving: true}, ep{pod: "server2", node: "node-b", ready: true, serving: true}))
		expectMaps(t, d, "local endpoints only", both("192.0.2.20:$p", "[2001:db8::20]:$p"))
		if got := answers(t, client, vip4, 5); got["server1"] != 5 {
			t.Errorf("answers %v, want server1 only", got)
		}
		// Endpoints only on another node: dropped, as kube-proxy drops
		// them (no refusal; the connection attempt times out).
		c.Apply(t, slicesYAML(ep{pod: "server2", node: "node-b", ready: true, serving: true}))
		expectMaps(t, d, "no local endpoints", both("drop", "drop"))
		conn, err := client.Dial("tcp", netip.AddrPortFrom(vip4, 80), 500*time.Millisecond)
		if err == nil {
			conn.Close()
			t.Error("connected to a Service without local endpoints")
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial: %v, want a timeout (dropped), not a refusal", err)
		}
		c.Apply(t, serviceYAML("")+slicesYAML(up("server1"), up("server2")))
	})
	t.Run("topology hints", func(t *testing.T) {
		c.Apply(t, slicesYAML(
			ep{pod: "server1", ready: true, serving: true, zone: "zone-a"}, ep{pod: "server2", ready: true, serving: true, zone: "zone-b"}))
		expectMaps(t, d, "same zone (zone-a)", both("192.0.2.20:$p", "[2001:db8::20]:$p"))
		c.Apply(t, nodeYAML("zone-b"))
		expectMaps(t, d, "the node moved to zone-b", both("192.0.2.21:$p", "[2001:db8::21]:$p"))
		if got := answers(t, client, vip4, 5); got["server2"] != 5 {
			t.Errorf("answers %v, want server2 only", got)
		}
		c.Apply(t, nodeYAML("zone-a")+"---"+slicesYAML(up("server1"), up("server2")))
		expectMaps(t, d, "hints gone", both("192.0.2.20:$p 192.0.2.21:$p", "[2001:db8::20]:$p [2001:db8::21]:$p"))
	})
	t.Run("restart under load", func(t *testing.T) {
		ids := map[string]uint32{}
		ss, _ := d.Maps.ListServices()
		for _, s := range ss {
			ids[s.String()] = s.ID
		}
		// A connection open across the restart, and requests all along.
		conn, err := client.Dial("tcp", netip.AddrPortFrom(vip4, 7000), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		echo := func(msg string) (string, error) {
			if _, err := fmt.Fprintln(conn, msg); err != nil {
				return "", err
			}
			return r.ReadString('\n')
		}
		first, err := echo("before")
		if err != nil {
			t.Fatal(err)
		}
		var ok, failed atomic.Int32
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := client.HTTPGet("http://"+netip.AddrPortFrom(vip4, 80).String()+"/", 5*time.Second); err != nil {
					failed.Add(1)
					t.Logf("request during restart: %v", err)
				} else {
					ok.Add(1)
				}
			}
		})
		agent.Stop()
		agent = startAgent(outer, c, d)
		eventually(t, "restarted agent healthy", agent.a.Healthy)
		if w := agent.a.Status().Writes.Total(); w != 0 {
			t.Errorf("the restarted agent wrote %d entries to maps that were up to date", w)
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		if failed.Load() != 0 || ok.Load() == 0 {
			t.Errorf("during the restart %d requests failed, %d succeeded", failed.Load(), ok.Load())
		}
		second, err := echo("after")
		if err != nil {
			t.Fatalf("the connection opened before the restart broke: %v", err)
		}
		if strings.Fields(first)[0] != strings.Fields(second)[0] {
			t.Errorf("the connection moved from %q to %q", first, second)
		}
		ss, _ = d.Maps.ListServices()
		for _, s := range ss {
			if ids[s.String()] != s.ID {
				t.Errorf("%s: id %d after the restart, was %d", s.Frontend, s.ID, ids[s.String()])
			}
		}
		t.Logf("%d requests during the restart, none failed", ok.Load())
	})
	t.Run("delete", func(t *testing.T) {
		if out, err := c.Kubectl(k8s.AdminUser, "", "delete", "service", "web", "-n", "default"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		expectMaps(t, d, "service deleted", map[string]string{})
		st, err := d.Maps.ReadServiceState()
		if err != nil {
			t.Fatal(err)
		}
		// What stays is the API server's "kubernetes" Service, which has
		// no endpoints here: its entry and its VIP marker.
		for k := range st.Services {
			if ip := k.Addr.IP(); ip == vip4 || ip == vip6 {
				t.Errorf("left in the maps: %s", k)
			}
		}
		if len(st.Services) != 2 || len(st.Slots)+len(st.Backends) != 0 {
			t.Errorf("left in the maps: %d services, %d slots, %d backends", len(st.Services), len(st.Slots), len(st.Backends))
		}
	})
}
