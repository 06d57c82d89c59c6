package localapi

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podnic/podnic/bpf"
)

// The bpf types write their enums by name (MarshalText) and cannot read
// them back; the client reads the names here, so what the agent sends is
// what podnicctl decodes.

func parseProto(s string) (bpf.Proto, error) {
	for _, p := range []bpf.Proto{bpf.TCP, bpf.UDP, bpf.SCTP, 0} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

func parseBackendState(s string) (bpf.BackendState, error) {
	for _, st := range []bpf.BackendState{bpf.BackendActive, bpf.BackendTerminating} {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown backend state %q", s)
}

func parseHook(s string) (bpf.Hook, error) {
	for _, h := range []bpf.Hook{bpf.Ingress, bpf.Egress} {
		if h.String() == s {
			return h, nil
		}
	}
	return 0, fmt.Errorf("unknown hook %q", s)
}

// UnmarshalJSON reads a row as the agent writes it.
func (r *ServiceRow) UnmarshalJSON(b []byte) error {
	var w struct {
		VIP      netip.Addr
		Port     uint16
		Proto    string
		ID       uint32
		Affinity time.Duration
		NoLocal  bool
		// SourceRanges []netip.Prefix decodes as it is written.
		SourceRanges []netip.Prefix
		Backends     []struct {
			ID    uint32
			Addr  netip.AddrPort
			State string
		}
		Type    string `json:"type"`
		Service string `json:"service"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	proto, err := parseProto(w.Proto)
	if err != nil {
		return fmt.Errorf("decoding service %s: %w", w.VIP, err)
	}
	*r = ServiceRow{
		ServiceInfo: bpf.ServiceInfo{
			Frontend: bpf.Frontend{VIP: w.VIP, Port: w.Port, Proto: proto},
			ID:       w.ID, Affinity: w.Affinity, NoLocal: w.NoLocal, SourceRanges: w.SourceRanges,
			Backends: make([]bpf.BackendInfo, 0, len(w.Backends)),
		},
		Type: w.Type, Service: w.Service,
	}
	for _, be := range w.Backends {
		st, err := parseBackendState(be.State)
		if err != nil {
			return fmt.Errorf("decoding backend %s: %w", be.Addr, err)
		}
		r.Backends = append(r.Backends, bpf.BackendInfo{ID: be.ID, Addr: be.Addr, State: st})
	}
	return nil
}

// Attachments asks the agent what is attached where.
func (c *Client) Attachments() ([]bpf.Attachment, error) {
	var rows []struct {
		Owner       string
		Ifname      string
		Ifindex     int
		Hook        string
		Mode        bpf.Mode
		ProgramID   ebpf.ProgramID
		ProgramName string
		Pin         string
	}
	if err := c.Get(PathAttachments, &rows); err != nil {
		return nil, err
	}
	out := make([]bpf.Attachment, 0, len(rows))
	for _, r := range rows {
		h, err := parseHook(r.Hook)
		if err != nil {
			return nil, fmt.Errorf("decoding attachment of %s: %w", r.Owner, err)
		}
		out = append(out, bpf.Attachment{Owner: r.Owner, Ifname: r.Ifname, Ifindex: r.Ifindex, Hook: h, Mode: r.Mode,
			ProgramID: r.ProgramID, ProgramName: r.ProgramName, Pin: r.Pin})
	}
	return out, nil
}
