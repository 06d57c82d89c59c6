package nodeagent_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent"
	"github.com/podnic/podnic/nodeagent/localapi"
	"github.com/podnic/podnic/test/simnode"
)

// Address plan: as k8s_integration_test.go: the Service at 10.96.100.10:80,
// the client pod 192.0.2.10, server1 192.0.2.20 serving HTTP on 8080.

// liveNode is a running agent fed in-process, on real pinned maps, with a
// client pod attached to the datapath and one server behind the Service.
type liveNode struct {
	d       *bpf.Datapath
	a       *nodeagent.Agent
	metrics *nodeagent.Metrics
	client  *simnode.Pod
}

func startLiveNode(t *testing.T) *liveNode {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root for BPF and network namespaces")
	}
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-ops-test-%d-%s", os.Getpid(), t.Name()))
	t.Cleanup(func() { _ = bpf.Unpin(root) })
	d, err := bpf.Load(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	n := simnode.New(t)
	client := n.AddPod("client", netip.MustParsePrefix("192.0.2.10/32"), netip.Prefix{})
	n.AddPod("server1", netip.MustParsePrefix("192.0.2.20/32"), netip.Prefix{}).ServeHTTP(t, 8080)
	if _, err := d.AttachPod(client.NetnsPath, client.Ifname, "client", bpf.ModeAuto); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.DetachPod(d.Root, "client", client.NetnsPath) })

	m := nodeagent.NewMetrics(d)
	a, err := nodeagent.NewAgent(&d.Maps, nodeagent.Options{
		NodeName: "node-a", Metrics: m, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(stop)
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return &liveNode{d: d, a: a, metrics: m, client: client}
}

// program feeds the web Service and its slice, the slice carrying a
// change trigger time as the EndpointSlice controller writes it.
func (n *liveNode) program(t *testing.T) {
	t.Helper()
	port, proto, ready := int32(8080), v1.ProtocolTCP, true
	name := "http"
	n.a.OnService(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: vip4.String(), ClusterIPs: []string{vip4.String()},
			Ports: []v1.ServicePort{{Name: name, Port: 80, Protocol: proto}},
		},
	})
	n.a.OnEndpointSlice(&discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "web-v4",
			Labels:      map[string]string{discovery.LabelServiceName: "web"},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{"192.0.2.20"},
			Conditions: discovery.EndpointConditions{Ready: &ready}}},
	})
	n.a.SetReady()
	eventually(t, "agent healthy", n.a.Healthy)
	if _, err := n.client.HTTPGet("http://"+netip.AddrPortFrom(vip4, 80).String()+"/", 5*time.Second); err != nil {
		t.Fatalf("GET through the Service: %v", err)
	}
}

// scrape reads a Prometheus text exposition into series → value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestHealthzAndMetricsReportSyncsMapsAndVerdicts(t *testing.T) {
	n := startLiveNode(t)
	srv := httptest.NewServer(n.a.OpsHandler(n.metrics))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "waiting") {
		t.Errorf("/healthz before the sources are ready: %s %q, want 503 waiting", resp.Status, body)
	}

	n.program(t)
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("/healthz once synced: %s %q", resp.Status, body)
	}

	m := scrape(t, srv.URL+"/metrics")
	between := func(series string, lo, hi float64) {
		t.Helper()
		v, ok := m[series]
		switch {
		case !ok:
			t.Errorf("no series %s", series)
		case v < lo || v > hi:
			t.Errorf("%s = %g, want %g..%g", series, v, lo, hi)
		}
	}
	between(`podnic_agent_sync_duration_seconds_count{kind="full"}`, 1, 1)
	between(`podnic_agent_sync_duration_seconds_sum{kind="full"}`, 1e-7, 1)
	// From the slice's trigger time, set just before, to the map write.
	between(`podnic_agent_network_programming_duration_seconds_count{ip_family="IPv4"}`, 1, 1)
	between(`podnic_agent_network_programming_duration_seconds_sum{ip_family="IPv4"}`, 1e-7, 5)
	between(`podnic_agent_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"}`, 1, 1)
	between(`podnic_agent_syncs_total{result="success"}`, 1, 100)
	between(`podnic_agent_map_operations_total{op="write_backend"}`, 1, 1)
	between(`podnic_agent_map_operations_total{op="write_slot"}`, 1, 1)
	between(`podnic_agent_map_operations_total{op="write_service"}`, 1, 1)
	between(`podnic_agent_map_operations_total{op="write_vip_marker"}`, 1, 1)
	between(`podnic_agent_services`, 1, 1)
	between(`podnic_agent_frontends`, 1, 1)
	between(`podnic_agent_last_sync_timestamp_seconds`, float64(time.Now().Add(-time.Minute).Unix()), float64(time.Now().Unix()+1))
	between(`podnic_map_entries{map="podnic_svc_v1"}`, 2, 2) // entry and VIP marker
	between(`podnic_map_entries{map="podnic_slot_v1"}`, 1, 1)
	between(`podnic_map_entries{map="podnic_be_v1"}`, 1, 1)
	between(`podnic_map_entries{map="podnic_ct_v1"}`, 1, 16) // the GET's connection, both directions
	between(`podnic_map_capacity{map="podnic_svc_v1"}`, 1024, 1<<24)
	between(`podnic_map_capacity{map="podnic_ct_v1"}`, 1024, 1<<24)
	between(`podnic_attachments{mode="tcx"}`, 0, 3)
	between(`podnic_attachments{mode="legacy"}`, 0, 3)
	between(`podnic_attachments_stale`, 0, 0)
	if m[`podnic_attachments{mode="tcx"}`]+m[`podnic_attachments{mode="legacy"}`] != 3 {
		t.Errorf("podnic_attachments counts %g TCX and %g legacy attach points, want the client's 3", m[`podnic_attachments{mode="tcx"}`], m[`podnic_attachments{mode="legacy"}`])
	}
	between(`go_goroutines`, 1, 10000)
	var verdicts float64
	for s, v := range m {
		if strings.HasPrefix(s, "podnic_datapath_verdict_packets_total{") {
			verdicts += v
		}
	}
	if verdicts < 2 {
		t.Errorf("verdict counters count %g packets after an HTTP exchange through the Service", verdicts)
	}
}

func TestLocalAPIServesPodnicctlOverARootOnlySocket(t *testing.T) {
	n := startLiveNode(t)
	n.program(t)
	// A directory of its own, made 0700; the socket 0600.
	sock := filepath.Join(t.TempDir(), "run", "podnic", "agent.sock")
	l, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nodeagent.Serve(l, n.a.LocalAPI(nodeagent.ServerInfo{Datapath: n.d, AttachMode: bpf.ModeAuto, Source: "test"}), slog.Default())
	defer srv.Close()
	expectMode(t, filepath.Dir(sock), os.ModeDir|0o700)
	expectMode(t, sock, os.ModeSocket|0o600)

	// In a shared directory (left as it is), over a stale socket from a
	// crash: still 0600, and another user cannot connect.
	shared := t.TempDir()
	for _, dir := range []string{filepath.Dir(shared), shared} { // nobody may reach the socket, not open it
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stale := filepath.Join(shared, "agent.sock")
	if err := os.WriteFile(stale, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	l2, err := localapi.Listen(stale)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := nodeagent.Serve(l2, n.a.LocalAPI(nodeagent.ServerInfo{Datapath: n.d}), slog.Default())
	defer srv2.Close()
	expectMode(t, shared, os.ModeDir|0o755)
	expectMode(t, stale, os.ModeSocket|0o600)
	curl := func(creds ...string) (string, error) {
		args := append(creds, "curl", "-sS", "--max-time", "5", "--unix-socket", stale, "http://agent"+localapi.PathStatus)
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		return string(out), err
	}
	if out, err := curl("env"); err != nil || !strings.Contains(out, `"agent":true`) {
		t.Errorf("root over the socket: %v %s", err, out)
	}
	if out, err := curl("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"); err == nil || strings.Contains(out, `"agent":true`) {
		t.Errorf("user nobody over the socket: %v %s, want a refused connection", err, out)
	}

	c := localapi.NewClient(sock)
	if !c.Available() {
		t.Fatal("client does not see the socket")
	}
	var status localapi.Status
	if err := c.Get(localapi.PathStatus, &status); err != nil {
		t.Fatal(err)
	}
	if !status.Agent || status.Node != "node-a" || status.Source != "test" || status.Services != 1 || status.Frontends != 1 ||
		status.LastSync == nil || status.LastSync.Error != "" || status.Attachments == 0 || status.StaleAttachments != 0 || len(status.Maps) != 8 || len(status.Programs) != 12 {
		t.Errorf("status: %+v", status)
	}
	var rows []localapi.ServiceRow
	if err := c.Get(localapi.PathServices, &rows); err != nil {
		t.Fatal(err)
	}
	var web []string
	for _, r := range rows {
		if r.VIP == vip4 {
			web = append(web, fmt.Sprintf("%s %s %s %v", r.String(), r.Type, r.Service, r.Backends))
		}
	}
	if len(web) != 1 || !strings.Contains(web[0], "ClusterIP default/web:http") || !strings.Contains(web[0], "192.0.2.20:8080") {
		t.Errorf("service list: %q", web)
	}
	var ct []localapi.CTRow
	if err := c.Get(localapi.PathConntrack, &ct); err != nil {
		t.Fatal(err)
	}
	if len(ct) == 0 || ct[0].Frontend != "10.96.100.10:80" || ct[0].Backend != "192.0.2.20:8080" {
		t.Errorf("ct list: %+v", ct)
	}
	as, err := c.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	if len(as) == 0 || as[0].Owner != "client" {
		t.Errorf("attachments: %+v", as)
	}
	if err := c.Get("/v1/nothing", &status); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown path: %v, want a 404", err)
	}
}

func expectMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode() & (os.ModeType | os.ModePerm); got != want {
		t.Errorf("%s: mode %s, want %s", path, got, want)
	}
}
