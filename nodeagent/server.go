package nodeagent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent/localapi"
)

// ServerInfo is what the local API reports besides the agent's own state.
type ServerInfo struct {
	Datapath   *bpf.Datapath
	AttachMode bpf.Mode
	Source     string
}

// LocalAPI is the root-only API podnicctl uses.
func (a *Agent) LocalAPI(info ServerInfo) http.Handler {
	mux := http.NewServeMux()
	d := info.Datapath
	mux.HandleFunc("GET "+localapi.PathStatus, func(w http.ResponseWriter, _ *http.Request) {
		st := localapi.Status{
			Agent: true, Node: a.opt.NodeName, Source: info.Source, BPFRoot: d.Root,
			AttachMode: string(info.AttachMode), AttachedAs: map[string]int{},
			Programs: localapi.Programs(d), Maps: localapi.MapFill(d, nil), KPR: localapi.KubeProxyReplacement(),
		}
		a.mu.Lock()
		st.Zone = a.zone
		a.mu.Unlock()
		s := a.Status()
		st.Services, st.Frontends = s.Services, s.Frontends
		if !s.Time.IsZero() {
			st.LastSync = &localapi.SyncInfo{
				Time: s.Time, Age: a.clock.Since(s.Time).Round(time.Millisecond).String(),
				Duration: s.Duration.String(), Full: s.Full, Error: s.Error, Writes: s.Writes.Total(), Syncs: s.Syncs,
			}
		}
		st.SocketLB, _ = bpf.SocketLBAttached(d.Root)
		if as, err := bpf.ListAttachments(d.Root); err == nil {
			localapi.CountAttachments(d, as, &st)
		}
		reply(w, st, nil)
	})
	mux.HandleFunc("GET "+localapi.PathServices, func(w http.ResponseWriter, _ *http.Request) {
		rows, err := localapi.ServiceRows(d, func(k bpf.ServiceKey) (string, string) {
			svc, port, kind, ok := a.ServiceOf(k)
			if !ok {
				return "", ""
			}
			if port != "" {
				return svc + ":" + port, kind
			}
			return svc, kind
		})
		reply(w, rows, err)
	})
	mux.HandleFunc("GET "+localapi.PathConntrack, func(w http.ResponseWriter, _ *http.Request) {
		rows, err := localapi.CTRows(d)
		reply(w, rows, err)
	})
	mux.HandleFunc("GET "+localapi.PathAttachments, func(w http.ResponseWriter, _ *http.Request) {
		as, err := bpf.ListAttachments(d.Root)
		if as == nil {
			as = []bpf.Attachment{}
		}
		reply(w, as, err)
	})
	return mux
}

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Healthy says whether the agent keeps the maps up to date: its sources
// are ready and its last sync succeeded.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	ready := a.ready
	a.mu.Unlock()
	if !ready {
		return fmt.Errorf("waiting for the sources' initial lists")
	}
	s := a.Status()
	switch {
	case s.Time.IsZero():
		return fmt.Errorf("no sync yet")
	case s.Error != "":
		return fmt.Errorf("last sync failed %s ago: %s", a.clock.Since(s.Time).Round(time.Second), s.Error)
	}
	return nil
}

// OpsHandler serves /healthz and /metrics.
func (a *Agent) OpsHandler(m *Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	}
	return mux
}

// Serve serves h on l until l is closed, logging why it stopped.
func Serve(l net.Listener, h http.Handler, log *slog.Logger) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
			log.Error("server stopped", "addr", l.Addr().String(), "error", err)
		}
	}()
	return srv
}
