// Package localapi is podnic-agent's local API: a root-only unix socket
// serving JSON over HTTP, and the types and client podnicctl uses. The
// rows are built here from the pinned maps, so podnicctl shows the same
// thing whether it asks the agent or reads the pins itself.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/bpf"
)

// DefaultSocket is where podnic-agent listens.
const DefaultSocket = "/run/podnic/agent.sock"

// Paths of the API.
const (
	PathStatus      = "/v1/status"
	PathServices    = "/v1/services"
	PathConntrack   = "/v1/conntrack"
	PathAttachments = "/v1/attachments"
)

// Status is podnicctl status: the agent's view of the node.
type Status struct {
	Agent       bool           `json:"agent"` // false: read from the pins, no agent
	Node        string         `json:"node,omitempty"`
	Zone        string         `json:"zone,omitempty"`
	Source      string         `json:"source,omitempty"`
	BPFRoot     string         `json:"bpfRoot"`
	AttachMode  string         `json:"attachMode"`           // configured: auto, tcx, legacy
	AttachedAs  map[string]int `json:"attachedAs"`           // attachments per mode in use
	Programs    []Program      `json:"programs"`             // pinned programs
	Maps        []MapInfo      `json:"maps"`                 // fill and capacity
	KPR         []Feature      `json:"kubeProxyReplacement"` // what is replaced
	Services    int            `json:"services"`             // Services proxied (agent) or frontends (pins)
	Frontends   int            `json:"frontends"`            // service entries
	LastSync    *SyncInfo      `json:"lastSync,omitempty"`   // nil without agent or before the first sync
	Attachments int            `json:"attachments"`          // attach points
	// StaleAttachments run an earlier build's program, not the one
	// pinned under the name (podnic-agent moves them at its start).
	StaleAttachments int      `json:"staleAttachments"`
	SocketLB         []string `json:"socketLB"` // socket-level programs on the cgroup root
}

// CountAttachments fills st's attachment counts from the attachments as
// recorded under d's root.
func CountAttachments(d *bpf.Datapath, as []bpf.Attachment, st *Status) {
	pinned := map[string]uint32{}
	for _, p := range Programs(d) {
		pinned[p.Name] = p.ID
	}
	st.Attachments = len(as)
	for _, a := range as {
		st.AttachedAs[string(a.Mode)]++
		if id, ok := pinned[a.ProgramName]; ok && id != uint32(a.ProgramID) {
			st.StaleAttachments++
		}
	}
}

// Program is one pinned program.
type Program struct {
	Name string `json:"name"`
	ID   uint32 `json:"id"`
	Tag  string `json:"tag"`
}

// Feature is one kube-proxy feature and whether podnic serves it.
type Feature struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

// SyncInfo is the agent's last sync.
type SyncInfo struct {
	Time     time.Time `json:"time"`
	Age      string    `json:"age"`
	Duration string    `json:"duration"`
	Full     bool      `json:"full"`
	Error    string    `json:"error,omitempty"`
	Writes   int       `json:"writes"`
	Syncs    int       `json:"syncs"`
}

// MapInfo is one pinned map's fill.
type MapInfo struct {
	Name     string `json:"name"`
	Entries  int    `json:"entries"` // -1: could not count
	Capacity int    `json:"capacity"`
}

// ServiceRow is one frontend with its backends, as podnicctl service list
// shows it: the maps' view (VIP, Port, Proto, ID, Affinity in
// nanoseconds, Backends, as podnicctl always printed it) and what the
// agent knows besides.
type ServiceRow struct {
	bpf.ServiceInfo
	Type    string `json:"type"`              // ClusterIP, External (an external VIP) or NodePort (the node's address)
	Service string `json:"service,omitempty"` // namespace/name:port, from the agent
}

// CTRow is one forward conntrack entry.
type CTRow struct {
	Proto     string `json:"proto"`
	Client    string `json:"client"`
	Frontend  string `json:"frontend"`
	Backend   string `json:"backend"`
	State     string `json:"state"`
	ExpiresIn string `json:"expiresIn"`
	ServiceID uint32 `json:"serviceID"`
}

// MapFill reports entries and capacity of the Service, conntrack,
// affinity, socket and source-range maps; known holds counts already
// known, by map name.
func MapFill(d *bpf.Datapath, known map[string]int) []MapInfo {
	var out []MapInfo
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{
		{"podnic_svc_v1", d.Maps.Services}, {"podnic_slot_v1", d.Maps.Slots}, {"podnic_be_v1", d.Maps.Backends},
		{"podnic_ct_v1", d.Maps.Conntrack}, {"podnic_aff_v1", d.Maps.Affinity},
		{"podnic_lbns_v1", d.Maps.LBNetns}, {"podnic_udpsk_v1", d.Maps.UDPSockets}, {"podnic_srcrange_v1", d.Maps.SourceRanges},
	} {
		if m.m == nil {
			continue // an older build's datapath, without it
		}
		n, ok := known[m.name]
		if !ok {
			n = CountEntries(m.m)
		}
		out = append(out, MapInfo{Name: m.name, Entries: n, Capacity: int(m.m.MaxEntries())})
	}
	return out
}

// CountEntries walks a map's keys; -1 when the walk fails.
func CountEntries(m *ebpf.Map) int {
	n := 0
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if it.Err() != nil {
		return -1
	}
	return n
}

// Programs lists the datapath's pinned programs.
func Programs(d *bpf.Datapath) []Program {
	var out []Program
	for name, p := range map[string]*ebpf.Program{
		bpf.ProgFromPod: d.Programs.FromPod, bpf.ProgToPod: d.Programs.ToPod, bpf.ProgLoOut: d.Programs.LoOut,
		bpf.ProgGuard:    d.Programs.Guard,
		bpf.ProgConnect4: d.Programs.Connect4, bpf.ProgConnect6: d.Programs.Connect6,
		bpf.ProgGetPeer4: d.Programs.GetPeer4, bpf.ProgGetPeer6: d.Programs.GetPeer6,
		bpf.ProgSendmsg4: d.Programs.Sendmsg4, bpf.ProgSendmsg6: d.Programs.Sendmsg6,
		bpf.ProgRecvmsg4: d.Programs.Recvmsg4, bpf.ProgRecvmsg6: d.Programs.Recvmsg6,
	} {
		if p == nil {
			continue // an older build's datapath, without it
		}
		pr := Program{Name: name}
		if info, err := p.Info(); err == nil {
			pr.Tag = info.Tag
			if id, ok := info.ID(); ok {
				pr.ID = uint32(id)
			}
		}
		out = append(out, pr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// KubeProxyReplacement says which of kube-proxy's features podnic serves.
func KubeProxyReplacement() []Feature {
	return []Feature{
		{"ClusterIP", "enabled", "TCP, UDP, SCTP; IPv4, IPv6; every ClusterIP of dual-stack Services"},
		{"SocketLB", "enabled", "TCP connect(), UDP connect() and datagrams balanced at the socket where the agent attached it (--socket-lb)"},
		{"SessionAffinity", "enabled", "ClientIP with timeout; kept at the socket, by tc where the pod's address is not known"},
		{"InternalTrafficPolicy", "enabled", "Local: only this node's endpoints"},
		{"TopologyAwareRouting", "enabled", "hints: PreferSameNode, PreferSameZone"},
		{"TerminatingEndpoints", "enabled", "serving-terminating fallback"},
		{"SCTP", "enabled", "translated by tc (full path only; not at the socket), port changes with the CRC32c updated; single-homed through the VIP (address parameters hidden)"},
		{"NodePort", "enabled", "a pod's traffic to its node's InternalIPs on a NodePort, straight to the endpoints; traffic from outside: later issue"},
		{"ExternalIPs", "enabled", "a pod's traffic to spec.externalIPs, straight to the endpoints; traffic from outside: later issue"},
		{"LoadBalancer", "enabled", "a pod's traffic to the ingress IPs (not ipMode Proxy), straight to the endpoints; traffic from outside: later issue"},
		{"LoadBalancerSourceRanges", "enabled", "a pod's new flows to the ingress IPs only from the ranges of their family; others dropped"},
	}
}

// ServiceRows reads every frontend from the maps; name, when not nil,
// names the Service a frontend belongs to and its type ("" is ClusterIP).
func ServiceRows(d *bpf.Datapath, name func(bpf.ServiceKey) (service, typ string)) ([]ServiceRow, error) {
	services, err := d.Maps.ListServices()
	if err != nil {
		return nil, err
	}
	rows := make([]ServiceRow, 0, len(services))
	for _, s := range services {
		if s.Backends == nil {
			s.Backends = []bpf.BackendInfo{}
		}
		r := ServiceRow{ServiceInfo: s, Type: "ClusterIP"}
		if name != nil {
			var typ string
			if r.Service, typ = name(s.Key()); typ != "" {
				r.Type = typ
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// CTRows reads the live forward conntrack entries.
func CTRows(d *bpf.Datapath) ([]CTRow, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("reading the monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())
	rows := []CTRow{}
	var k bpf.CTKey
	var e bpf.CTEntry
	it := d.Maps.Conntrack.Iterate()
	for it.Next(&k, &e) {
		if k.Dir != bpf.CTForward || e.Expires <= now {
			continue
		}
		rows = append(rows, CTRow{
			Proto:     k.Proto.String(),
			Client:    netip.AddrPortFrom(k.Src.IP(), k.Sport.Host()).String(),
			Frontend:  netip.AddrPortFrom(k.Dst.IP(), k.Dport.Host()).String(),
			Backend:   netip.AddrPortFrom(e.Addr.IP(), e.Port.Host()).String(),
			State:     ctState(k.Proto, e.Flags),
			ExpiresIn: (time.Duration(e.Expires-now) / time.Second * time.Second).String(),
			ServiceID: e.ServiceID,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading conntrack: %w", err)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Client < rows[j].Client })
	return rows, nil
}

func ctState(p bpf.Proto, flags uint8) string {
	var s []string
	switch {
	case p != bpf.TCP && p != bpf.SCTP:
		s = append(s, "active")
	case flags&bpf.CTClosing != 0:
		s = append(s, "closing")
	case flags&bpf.CTEstablished != 0:
		s = append(s, "established")
	default:
		s = append(s, "syn-sent")
	}
	if flags&bpf.CTSelf != 0 {
		s = append(s, "self")
	}
	if flags&bpf.CTNeigh != 0 {
		s = append(s, "moved")
	}
	return strings.Join(s, ",")
}

// Listen opens the socket at path for root only: the directory is 0700,
// the socket 0600, and a stale socket from a previous run is replaced.
func Listen(path string) (net.Listener, error) {
	// A directory that exists is left as it is (it may be shared, as
	// /run is): the socket's own mode, set through the umask before it
	// exists, is what keeps other users out.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	return l, nil
}

// Client talks to the agent over its socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the agent at socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Available reports whether an agent socket exists at the path.
func (c *Client) Available() bool {
	st, err := os.Stat(c.Socket)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// Get decodes the answer to path into v.
func (c *Client) Get(path string, v any) error {
	resp, err := c.http.Get("http://podnic-agent" + path)
	if err != nil {
		return fmt.Errorf("asking podnic-agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading podnic-agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("podnic-agent %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decoding podnic-agent's answer: %w", err)
	}
	return nil
}
