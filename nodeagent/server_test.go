package nodeagent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthzFollowsReadinessAndTheLastSync(t *testing.T) {
	f := newFakeMaps()
	a := testAgent(t, f)
	srv := httptest.NewServer(a.OpsHandler(nil))
	defer srv.Close()
	health := func() (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	for _, step := range []struct {
		name   string
		do     func()
		code   int
		reason string
	}{
		{"sources not synced", func() {}, http.StatusServiceUnavailable, "waiting for the sources"},
		{"ready, no sync yet", func() { a.mu.Lock(); a.ready = true; a.mu.Unlock() }, http.StatusServiceUnavailable, "no sync yet"},
		{"synced", func() {
			a.OnService(service("web", []string{"10.96.0.10"}))
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.1")))
			mustSync(t, a)
		}, http.StatusOK, "ok"},
		{"a write failed", func() {
			a.OnEndpointSlice(slice("web", "web-v4", false, 8080, up("192.0.2.2")))
			f.failAfter = 1
			if err := a.SyncNow(); err == nil {
				t.Fatal("sync succeeded despite a failed write")
			}
		}, http.StatusServiceUnavailable, "last sync failed"},
		{"recovered", func() { mustSync(t, a) }, http.StatusOK, "ok"},
	} {
		step.do()
		code, body := health()
		if code != step.code || !strings.Contains(body, step.reason) {
			t.Errorf("%s: /healthz %d %q, want %d %q", step.name, code, body, step.code, step.reason)
		}
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics without metrics: %s, want 404", resp.Status)
	}
}
