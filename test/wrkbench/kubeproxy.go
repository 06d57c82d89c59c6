package wrkbench

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podnic/podnic/test/k8s"
	"github.com/podnic/podnic/test/simnode"
)

// apiClient creates objects in the test API server as the admin user.
type apiClient struct {
	server string
	token  string
	http   *http.Client
}

func newAPIClient(t *testing.T, c *k8s.Cluster) *apiClient {
	t.Helper()
	// test/k8s trusts the serving chain the API server wrote to its
	// cert dir; so do we.
	ca, err := os.ReadFile(filepath.Join(c.Dir, "pki", "apiserver.crt"))
	if err != nil {
		t.Fatalf("reading the API server's certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no certificate in the API server's cert file")
	}
	return &apiClient{
		server: c.Server,
		token:  c.Token(k8s.AdminUser),
		http: &http.Client{
			Timeout: cmdTimeout,
			Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: pool},
				MaxIdleConnsPerHost: 64,
			},
		},
	}
}

// create POSTs obj to path; an object that exists already is fine.
func (a *apiClient) create(path string, obj any) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encoding object for %s: %w", path, err)
	}
	req, err := http.NewRequest(http.MethodPost, a.server+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("creating in %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusConflict {
		return fmt.Errorf("creating in %s: %s: %s", path, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

type obj = map[string]any

func serviceObject(name string, vip netip.Addr) obj {
	return obj{
		"apiVersion": "v1", "kind": "Service",
		"metadata": obj{"name": name, "namespace": "default"},
		"spec": obj{
			"clusterIP": vip.String(),
			"ports":     []obj{{"port": servicePort, "targetPort": backendPort, "protocol": "TCP"}},
		},
	}
}

func endpointSliceObject(service string) obj {
	var eps []obj
	for _, ip := range serviceEndpoints {
		eps = append(eps, obj{"addresses": []string{ip.String()}, "conditions": obj{"ready": true}})
	}
	return obj{
		"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
		"metadata": obj{
			"name": service + "-1", "namespace": "default",
			"labels": obj{
				"kubernetes.io/service-name":             service,
				"endpointslice.kubernetes.io/managed-by": "wrkbench",
			},
		},
		"addressType": "IPv4",
		"ports":       []obj{{"name": "", "port": backendPort, "protocol": "TCP"}},
		"endpoints":   eps,
	}
}

// createService creates a Service and its EndpointSlice (both backends).
func (a *apiClient) createService(name string, vip netip.Addr) error {
	if err := a.create("/api/v1/namespaces/default/services", serviceObject(name, vip)); err != nil {
		return err
	}
	return a.create("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", endpointSliceObject(name))
}

// fillServices creates the extra Services so that n are present, with
// workers parallel requests.
func (a *apiClient) fillServices(n, workers int) error {
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := a.createService(fmt.Sprintf("fill-%05d", i), fillVIP(i)); err != nil {
					errs <- err
					for range jobs {
					}
					return
				}
			}
		}()
	}
	for i := 0; i < n-1; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	return <-errs
}

// kubeProxyMode is a kube-proxy --proxy-mode with how to count the Services
// it has written.
type kubeProxyMode struct {
	name string // nftables, iptables
	// count returns how many Services with endpoints have rules in the
	// node's namespace.
	count func(netns string) (int, error)
}

var (
	modeNFT = kubeProxyMode{name: "nftables", count: func(netns string) (int, error) {
		out, err := run("ip", "netns", "exec", netns, "nft", "list", "table", "ip", "kube-proxy")
		if err != nil {
			return 0, err
		}
		return countLines(out, "chain service-"), nil
	}}
	modeIPT = kubeProxyMode{name: "iptables", count: func(netns string) (int, error) {
		out, err := run("ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "nat")
		if err != nil {
			return 0, err
		}
		return countLines(out, ":KUBE-SVC-"), nil
	}}
)

// iptablesPosition returns where the rule of the Service with vip sits in
// kube-proxy's KUBE-SERVICES chain in netns, 1-based, and how many rules
// the chain has. iptables walks the chain rule by rule for every new
// connection, so a Service's cost grows with its position, which
// kube-proxy's own ordering decides.
func iptablesPosition(netns string, vip netip.Addr) (pos, total int, err error) {
	out, err := run("ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "nat")
	if err != nil {
		return 0, 0, err
	}
	match := "-d " + vip.String() + "/32"
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "-A KUBE-SERVICES ") {
			continue
		}
		total++
		if pos == 0 && strings.Contains(l, match) {
			pos = total
		}
	}
	if pos == 0 {
		return 0, total, fmt.Errorf("no rule for %s in KUBE-SERVICES (%d rules)", vip, total)
	}
	return pos, total, nil
}

func countLines(out, prefix string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			n++
		}
	}
	return n
}

// kubeProxy is one kube-proxy serving a proxyNode.
type kubeProxy struct {
	mode kubeProxyMode
	node *proxyNode
	proc *proc
}

// legacyIPTablesPath returns a PATH whose iptables commands are the legacy
// backend. kube-proxy v1.36 runs plain `iptables`, `iptables-save` and
// `iptables-restore` from PATH and does no backend detection of its own
// (the kube-proxy image's iptables-wrapper does that); Debian's default
// iptables is iptables-nft.
func legacyIPTablesPath(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "iptables-legacy-bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(fam + "-legacy" + suffix)
			if err != nil {
				t.Fatalf("kube-proxy's iptables mode needs %s-legacy%s (Debian package iptables): %v", fam, suffix, err)
			}
			if err := os.Symlink(target, filepath.Join(bin, fam+suffix)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return bin + ":/usr/sbin:/usr/bin:/sbin:/bin"
}

// startKubeProxy runs kube-proxy in mode in the node's namespace.
func startKubeProxy(t *testing.T, binDir, dir string, api *apiClient, c *k8s.Cluster, mode kubeProxyMode, pn *proxyNode) *kubeProxy {
	t.Helper()
	nodeName := "wrk-" + mode.name
	err := api.create("/api/v1/nodes", obj{
		"apiVersion": "v1", "kind": "Node",
		"metadata": obj{"name": nodeName},
		"status": obj{"addresses": []obj{
			{"type": "InternalIP", "address": pn.pod.IPv4.String()},
			{"type": "Hostname", "address": nodeName},
		}},
	})
	if err != nil {
		t.Fatalf("creating node %s: %v", nodeName, err)
	}
	// Zero conntrack settings leave the kernel's alone (nf_conntrack_max
	// and the hash size are global); the long sync period keeps periodic
	// resyncs of 10,000 Services out of the measurements (a sync still
	// follows every change after minSyncPeriod).
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: %s
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 10m
  minSyncPeriod: 1s
nftables:
  syncPeriod: 10m
  minSyncPeriod: 1s
`, c.AdminKubeconfig(), nodeName, pn.pod.IPv4, mode.name)
	cfgFile := filepath.Join(dir, "kube-proxy-"+mode.name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relayAPIServer(t, c.Server, pn.pod)
	path := "/usr/sbin:/usr/bin:/sbin:/bin"
	if mode.name == modeIPT.name {
		path = legacyIPTablesPath(t, dir)
	}
	p := startProc(t, dir, "kube-proxy-"+mode.name, []string{"PATH=" + path},
		"ip", "netns", "exec", pn.pod.Netns, filepath.Join(binDir, "kube-proxy"), "--config="+cfgFile, "--v=1")
	return &kubeProxy{mode: mode, node: pn, proc: p}
}

// waitSynced waits until kube-proxy has rules for n Services.
func (k *kubeProxy) waitSynced(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	got := 0
	for {
		if k.proc.exited() {
			return fmt.Errorf("kube-proxy %s exited; log %s:\n%s", k.mode.name, k.proc.log, tailFile(k.proc.log, 4<<10))
		}
		var err error
		got, err = k.mode.count(k.node.pod.Netns)
		if err == nil && got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("kube-proxy %s has rules for %d of %d Services after %v", k.mode.name, got, n, timeout)
			if err != nil {
				return fmt.Errorf("%s: %w", msg, err)
			}
			return errors.New(msg)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// relayAPIServer makes the API server reachable inside the node's
// namespace at the same address, 127.0.0.1:<port>, so the admin kubeconfig
// (and the serving certificate, made for 127.0.0.1) work there unchanged:
// the test process listens inside the namespace and dials out from its
// own. Nothing is added to the host's addresses or routes.
func relayAPIServer(t *testing.T, server string, pod *simnode.Pod) {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("parsing API server address %q: %v", server, err)
	}
	var ln net.Listener
	err = pod.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", u.Host)
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", u.Host, pod.Netns, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			track(in, true)
			track(out, true)
			wg.Add(2)
			for _, p := range [][2]net.Conn{{in, out}, {out, in}} {
				go func() {
					defer wg.Done()
					_, _ = io.Copy(p[0], p[1])
					p[0].Close()
					p[1].Close()
					track(p[0], false)
				}()
			}
		}
	}()
}
