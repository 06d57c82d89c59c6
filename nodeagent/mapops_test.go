package nodeagent

import (
	"fmt"
	"strings"
	"testing"
)

// opCounts sorts map operations by kind, as fakeMaps records them.
func opCounts(ops []string) string {
	var backends, slots, services, markers, removed int
	for _, op := range ops {
		switch {
		case strings.HasPrefix(op, "delete "):
			removed++
		case strings.HasPrefix(op, "backend "):
			backends++
		case strings.HasPrefix(op, "slot "):
			slots++
		case strings.HasPrefix(op, "service ") && strings.Contains(op, "/"):
			services++
		case strings.HasPrefix(op, "service "):
			markers++
		}
	}
	return fmt.Sprintf("backends %d, slots %d, service entries %d, VIP markers %d, removals %d = %d",
		backends, slots, services, markers, removed, len(ops))
}

// TestMapOperationCountOfAServiceLifecycle pins the cost of each step of
// one Service's life in map operations, like kube-proxy's rule-count
// tests: a change here changes the work every node does per Service
// change, and a reviewer should see it.
func TestMapOperationCountOfAServiceLifecycle(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	a.SetReady()
	for _, step := range []struct {
		name   string
		change func()
		want   string
	}{
		{"create with 3 endpoints", func() {
			a.OnService(service("web", []string{"10.96.0.10"}))
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2"), up("192.0.2.3")))
		}, "backends 3, slots 3, service entries 1, VIP markers 1, removals 0 = 8"},
		{"scale to 4", func() {
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2"), up("192.0.2.3"), up("192.0.2.4")))
		}, "backends 1, slots 1, service entries 1, VIP markers 0, removals 0 = 3"},
		{"scale to 2", func() {
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.2")))
		}, "backends 0, slots 0, service entries 1, VIP markers 0, removals 4 = 5"},
		{"replace one endpoint", func() {
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.5")))
		}, "backends 1, slots 1, service entries 0, VIP markers 0, removals 1 = 3"},
		{"resync, nothing changed", func() {
			a.OnService(service("web", []string{"10.96.0.10"}))
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1"), up("192.0.2.5")))
		}, "backends 0, slots 0, service entries 0, VIP markers 0, removals 0 = 0"},
		{"delete", func() {
			a.OnServiceDelete("default", "web")
			a.OnEndpointSliceDelete("default", "web-v4")
		}, "backends 0, slots 0, service entries 0, VIP markers 0, removals 6 = 6"},
	} {
		f.ops = nil
		step.change()
		w := mustSync(t, a)
		if got := opCounts(f.ops); got != step.want {
			t.Errorf("%s: %s\n  want %s\n  ops: %q", step.name, got, step.want, f.ops)
		}
		if w.Total() != len(f.ops) {
			t.Errorf("%s: the sync reports %d writes, the maps saw %d", step.name, w.Total(), len(f.ops))
		}
	}
	expectProgrammed(t, f)
}
