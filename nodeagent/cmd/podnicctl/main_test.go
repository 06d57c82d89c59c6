package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// ctl runs podnicctl with a test's own bpf root and returns its output.
func ctl(t *testing.T, root string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(append([]string{"--bpf-root", root}, args...), &out)
	return out.String(), err
}

func testRoot(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnicctl-test-%d-%s", os.Getpid(), t.Name()))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	return root
}

func TestServicesRoundTripThroughTheMaps(t *testing.T) {
	root := testRoot(t)
	if _, err := ctl(t, root, "load"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"service", "set", "--id", "1", "--vip", "10.96.0.10", "--port", "80", "--backend", "192.0.2.20:8080", "--backend", "192.0.2.21:8080"},
		{"service", "set", "--id", "2", "--vip", "fd00:96::10", "--port", "53", "--proto", "udp", "--backend", "[fd00::20]:5353", "--affinity", "3h"},
		{"service", "set", "--id", "3", "--vip", "10.96.0.12", "--port", "80", "--source-range", "192.0.2.7/24", "--source-range", "198.51.100.0/24"},
	} {
		if out, err := ctl(t, root, args...); err != nil {
			t.Fatalf("%v: %v (%s)", args, err, out)
		}
	}
	out, err := ctl(t, root, "-o", "json", "service", "list")
	if err != nil {
		t.Fatal(err)
	}
	var services []struct {
		VIP, Proto string
		Port       int
		ID         int
		Affinity   int64
		Backends   []struct{ Addr, State string }
	}
	if err := json.Unmarshal([]byte(out), &services); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	if len(services) != 3 {
		t.Fatalf("listed %d services, want 3: %s", len(services), out)
	}
	first := services[0]
	if first.VIP != "10.96.0.10" || first.Port != 80 || first.Proto != "TCP" || len(first.Backends) != 2 || first.Backends[1].Addr != "192.0.2.21:8080" || first.Backends[1].State != "active" {
		t.Errorf("first service listed as %+v", first)
	}
	if s := services[2]; s.VIP != "fd00:96::10" || s.Proto != "UDP" || s.Affinity == 0 {
		t.Errorf("IPv6 service listed as %+v", s)
	}

	table, err := ctl(t, root, "service", "list")
	if err != nil || !strings.Contains(table, "none: rejected") || !strings.Contains(table, "192.0.2.0/24,198.51.100.0/24") {
		t.Errorf("table without the rejecting service and its source ranges (%v):\n%s", err, table)
	}
	type mapRow struct {
		Name              string
		Entries, Capacity int
	}
	var st struct{ Maps []mapRow }
	if out, err := ctl(t, root, "-o", "json", "status"); err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Errorf("status: %v %s", err, out)
	}
	if !slices.Contains(st.Maps, mapRow{Name: "podnic_srcrange_v1", Entries: 2, Capacity: 65536}) {
		t.Errorf("status does not count the two source ranges: %+v", st.Maps)
	}
	if out, err := ctl(t, root, "service", "set", "--id", "4", "--vip", "10.96.0.13", "--port", "80", "--source-range", "fd00::/8"); err == nil {
		t.Errorf("an IPv6 source range on an IPv4 VIP was taken: %s", out)
	}
	if out, err := ctl(t, root, "service", "set", "--id", "4", "--vip", "10.96.0.13", "--port", "80", "--source-range", "nonsense"); err == nil || !strings.Contains(err.Error(), "want a CIDR") {
		t.Errorf("a source range that is no CIDR: %v %s", err, out)
	}
	if out, err := ctl(t, root, "service", "delete", "--vip", "10.96.0.12", "--port", "80"); err != nil || !strings.Contains(out, "no VIP any more") {
		t.Errorf("delete: %v %s", err, out)
	}
	if out, err := ctl(t, root, "-o", "json", "verdicts"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("verdicts before any traffic: %v %s", err, out)
	}
	if out, err := ctl(t, root, "-o", "json", "ct", "list"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("ct list before any traffic: %v %s", err, out)
	}
	if _, err := ctl(t, root, "unload"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("unload left %s: %v", root, err)
	}
}

func TestBadInputIsRefusedWithAClearError(t *testing.T) {
	root := testRoot(t)
	if _, err := ctl(t, root, "service", "list"); err == nil || !strings.Contains(err.Error(), "podnicctl load") {
		t.Errorf("service list before load: %v, want a hint to load", err)
	}
	if _, err := ctl(t, root, "load"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "set", "--id", "1", "--vip", "10.96.0.1", "--port", "80", "--backend", "nonsense"}, "want IP:PORT"},
		{[]string{"service", "set", "--id", "1", "--vip", "10.96.0.1", "--port", "70000"}, "want 1-65535"},
		{[]string{"service", "set", "--id", "1", "--vip", "10.96.0.1", "--port", "80", "--proto", "icmp"}, "want tcp, udp or sctp"},
		{[]string{"service", "set", "--vip", "10.96.0.1", "--port", "80"}, "--id"},
		{[]string{"service", "set", "--id", "1", "--vip", "10.96.0.1", "--port", "80", "--backend", "[fd00::1]:80"}, "another address family"},
		{[]string{"attach", "--owner", "x"}, "--netns"},
		{[]string{"-o", "yaml", "verdicts"}, "unknown output format"},
		{[]string{"frobnicate"}, "unknown command"},
	} {
		_, err := ctl(t, root, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error containing %q", c.args, err, c.want)
		}
	}
	// Nothing of the refused Services reached the maps.
	if out, _ := ctl(t, root, "-o", "json", "service", "list"); strings.TrimSpace(out) != "[]" {
		t.Errorf("refused input changed the maps: %s", out)
	}
}
