package nodeagent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
)

// Address plan: as agent_test.go; the file's Services use 10.96.1.0/24.

const fileWeb = `
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.1.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [192.0.2.1]
`

const fileAPI = `
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  clusterIP: 10.96.1.20
  ports: [{name: grpc, port: 9090, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: prod
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: grpc, port: 9090, protocol: TCP}]
endpoints:
- addresses: [192.0.2.5]
  conditions: {ready: true}
- addresses: [192.0.2.6]
  conditions: {ready: false}
`

// fileSkipped holds what kube-proxy does not proxy: headless,
// ExternalName, another proxy's Service, a headless slice.
const fileSkipped = `
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata:
  name: other
  labels: {service.kubernetes.io/service-proxy-name: someone-else}
spec: {clusterIP: 10.96.1.30, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-1
  labels: {kubernetes.io/service-name: headless, service.kubernetes.io/headless: ""}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [192.0.2.9]}]
`

// syncedBuffer is a log sink the test may read while the source writes.
type syncedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeAtomically replaces path's content in one rename, as an operator's
// editor or a ConfigMap update does.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startFileSource runs a FileSource on path; the test drives the syncs.
func startFileSource(t *testing.T, path string) (*Agent, *fakeMaps, *syncedBuffer) {
	t.Helper()
	f := newFakeMaps()
	logs := &syncedBuffer{}
	a, err := NewAgent(f, Options{NodeName: "node-a", Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- FileSource{Path: path, Interval: 5 * time.Millisecond, Zone: "zone-a"}.Run(ctx, a) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("file source: %v", err)
		}
	})
	return a, f, logs
}

// eventuallyProgrammed syncs until the maps hold want.
func eventuallyProgrammed(t *testing.T, a *Agent, f *fakeMaps, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := a.SyncNow(); err != nil {
			t.Fatal(err)
		}
		got := programmed(f)
		if slices.Equal(got, want) {
			expectProgrammed(t, f, want...)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: maps hold\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFileSourceFollowsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	writeAtomically(t, path, fileWeb+fileSkipped)
	a, f, _ := startFileSource(t, path)
	eventuallyProgrammed(t, a, f, "initial load", "10.96.1.10:80/TCP -> 192.0.2.1:8080")
	if err := a.Healthy(); err != nil {
		t.Errorf("not healthy after the initial load: %v", err)
	}
	if a.Status().Services != 1 {
		t.Errorf("%d Services proxied, want 1 (the skipped ones are not)", a.Status().Services)
	}

	writeAtomically(t, path, strings.Replace(fileWeb, "- addresses: [192.0.2.1]", "- addresses: [192.0.2.1]\n- addresses: [192.0.2.2]", 1)+fileAPI)
	eventuallyProgrammed(t, a, f, "file changed",
		"10.96.1.10:80/TCP -> 192.0.2.1:8080 192.0.2.2:8080",
		"10.96.1.20:9090/TCP -> 192.0.2.5:9090")

	// Objects that leave the file leave the maps.
	writeAtomically(t, path, fileAPI)
	eventuallyProgrammed(t, a, f, "web removed from the file", "10.96.1.20:9090/TCP -> 192.0.2.5:9090")
}

func TestBrokenFileKeepsTheLastGoodState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	writeAtomically(t, path, fileWeb)
	a, f, logs := startFileSource(t, path)
	eventuallyProgrammed(t, a, f, "initial load", "10.96.1.10:80/TCP -> 192.0.2.1:8080")

	for _, bad := range []struct{ name, content string }{
		{"not YAML", fileWeb + "\n---\n: : [\n"},
		{"unknown kind", fileWeb + "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"},
		{"unknown field", strings.Replace(fileWeb, "clusterIP:", "clusterAddress:", 1)},
		{"empty endpoint list cut off", fileWeb[:strings.Index(fileWeb, "endpoints:")] + "endpoints: [\n"},
		{"loopback endpoint", strings.Replace(fileWeb, "192.0.2.1", "127.0.0.1", 1)},
	} {
		before := strings.Count(logs.String(), "does not parse")
		f.ops = nil
		writeAtomically(t, path, bad.content)
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(logs.String(), "does not parse") == before {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the source never logged the bad file:\n%s", bad.name, logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := a.SyncNow(); err != nil {
			t.Fatal(err)
		}
		if len(f.ops) != 0 {
			t.Errorf("%s: a bad file changed the maps: %q", bad.name, f.ops)
		}
		expectProgrammed(t, f, "10.96.1.10:80/TCP -> 192.0.2.1:8080")
		if err := a.Healthy(); err != nil {
			t.Errorf("%s: a bad file made the agent unhealthy: %v", bad.name, err)
		}
	}
	// Each bad content is reported once, not at every look.
	time.Sleep(50 * time.Millisecond)
	if n := strings.Count(logs.String(), "does not parse"); n != 5 {
		t.Errorf("5 bad files logged %d times", n)
	}
	// Fixed: followed again.
	writeAtomically(t, path, fileAPI)
	eventuallyProgrammed(t, a, f, "file fixed", "10.96.1.20:9090/TCP -> 192.0.2.5:9090")
}

func TestFileSourceWaitsForAMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	a, f, _ := startFileSource(t, path)
	time.Sleep(50 * time.Millisecond)
	if err := a.Healthy(); err == nil {
		t.Error("healthy without ever reading the file")
	}
	if err := a.SyncNow(); err != nil || len(f.ops) != 0 {
		t.Errorf("wrote %q (error %v) before the file existed", f.ops, err)
	}
	writeAtomically(t, path, fileWeb)
	eventuallyProgrammed(t, a, f, "file appeared", "10.96.1.10:80/TCP -> 192.0.2.1:8080")
}

func TestFileObjectsDefaultToTheDefaultNamespace(t *testing.T) {
	objs, err := parseObjectsFile([]byte(fileWeb + fileAPI))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range objs.services {
		keys = append(keys, k)
	}
	for k := range objs.slices {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"default/web", "default/web-1", "prod/api", "prod/api-1"}; !slices.Equal(keys, want) {
		t.Errorf("objects %q, want %q", keys, want)
	}
}

// Endpoint addresses the API server refuses are refused in the file too;
// FQDN slices are not checked.
func TestFileEndpointAddressesAreValidatedAsTheAPIServerDoes(t *testing.T) {
	for _, c := range []struct {
		typ   discovery.AddressType
		addr  string
		valid bool
	}{
		{discovery.AddressTypeIPv4, "192.0.2.1", true},
		{discovery.AddressTypeIPv6, "2001:db8::1", true},
		{discovery.AddressTypeIPv4, "127.0.0.1", false},
		{discovery.AddressTypeIPv4, "127.8.9.1", false},
		{discovery.AddressTypeIPv6, "::1", false},
		{discovery.AddressTypeIPv6, "::ffff:127.0.0.1", false},
		{discovery.AddressTypeIPv4, "0.0.0.0", false},
		{discovery.AddressTypeIPv6, "::", false},
		{discovery.AddressTypeIPv4, "169.254.1.1", false},
		{discovery.AddressTypeIPv6, "fe80::1", false},
		{discovery.AddressTypeIPv4, "224.0.0.5", false},
		{discovery.AddressTypeIPv6, "ff02::1", false},
		{discovery.AddressTypeIPv4, "192.0.2.300", false},
		{discovery.AddressTypeFQDN, "127.0.0.1", true},
	} {
		s := &discovery.EndpointSlice{AddressType: c.typ, Endpoints: []discovery.Endpoint{{Addresses: []string{c.addr}}}}
		if err := validateEndpointAddrs(s); (err == nil) != c.valid {
			t.Errorf("%s %s: error %v, want valid=%v", c.typ, c.addr, err, c.valid)
		}
	}
}
