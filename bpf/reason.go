package bpf

import "fmt"

// Reason is a verdict of the datapath: positive codes for packets that go
// on, negative codes for drops. The values come from enum pn_reason in
// lib/common.h through bpf2go, so C and Go cannot disagree.
type Reason int32

// Verdicts. ReasonPass, a packet that is no Service traffic and left
// alone, is not counted: counting nearly every packet a pod sends and gets
// cost about a quarter of the tc programs' time in live traffic. Older
// builds counted it, so a node upgraded in place can still show a total.
const (
	ReasonPass       = Reason(podnicPnReasonPN_PASS)
	ReasonDNATNew    = Reason(podnicPnReasonPN_DNAT_NEW)
	ReasonDNATCT     = Reason(podnicPnReasonPN_DNAT_CT)
	ReasonRevNAT     = Reason(podnicPnReasonPN_REVNAT)
	ReasonSelf       = Reason(podnicPnReasonPN_SELF)
	ReasonReject     = Reason(podnicPnReasonPN_REJECT)
	ReasonICMPRevNAT = Reason(podnicPnReasonPN_ICMP_REVNAT)
	ReasonICMPDNAT   = Reason(podnicPnReasonPN_ICMP_DNAT)
	ReasonSocketLB   = Reason(podnicPnReasonPN_SOCK_LB)
	// ReasonUnbalanced: on the socket path, Service traffic the socket
	// programs left, refused with a RST or an ICMP port unreachable.
	ReasonUnbalanced = Reason(podnicPnReasonPN_UNBALANCED)

	DropInvalid     = Reason(podnicPnReasonPN_DROP_INVALID)
	DropUnknownPort = Reason(podnicPnReasonPN_DROP_UNKNOWN_PORT)
	DropNoBackend   = Reason(podnicPnReasonPN_DROP_NO_BACKEND)
	DropFragment    = Reason(podnicPnReasonPN_DROP_FRAGMENT)
	DropProto       = Reason(podnicPnReasonPN_DROP_PROTO)
	DropCTCreate    = Reason(podnicPnReasonPN_DROP_CT_CREATE)
	DropNAT         = Reason(podnicPnReasonPN_DROP_NAT)
	DropReject      = Reason(podnicPnReasonPN_DROP_REJECT)
	DropNoLocal     = Reason(podnicPnReasonPN_DROP_NO_LOCAL)
	// DropSourceRange: a new flow to a LoadBalancer IP from a source
	// outside the Service's loadBalancerSourceRanges, dropped as
	// kube-proxy's firewall drops it.
	DropSourceRange = Reason(podnicPnReasonPN_DROP_SOURCE_RANGE)
)

var reasonNames = map[Reason]string{
	ReasonPass:       "pass",
	ReasonDNATNew:    "dnat-new",
	ReasonDNATCT:     "dnat-established",
	ReasonRevNAT:     "reverse-nat",
	ReasonSelf:       "self-access",
	ReasonReject:     "reject",
	ReasonICMPRevNAT: "icmp-reverse-nat",
	ReasonICMPDNAT:   "icmp-dnat",
	ReasonSocketLB:   "socket-lb",
	ReasonUnbalanced: "refuse-unbalanced",
	DropInvalid:      "drop-invalid-packet",
	DropUnknownPort:  "drop-unknown-port",
	DropNoBackend:    "drop-missing-backend",
	DropFragment:     "drop-fragment",
	DropProto:        "drop-unsupported-protocol",
	DropCTCreate:     "drop-conntrack-full",
	DropNAT:          "drop-rewrite-failed",
	DropReject:       "drop-reject-failed",
	DropNoLocal:      "drop-no-local-endpoints",
	DropSourceRange:  "drop-source-range",
}

// Reasons lists every verdict the datapath can give.
func Reasons() []Reason {
	rs := make([]Reason, 0, len(reasonNames))
	for r := range reasonNames {
		rs = append(rs, r)
	}
	return rs
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason(%d)", int32(r))
}

// IsDrop reports whether the verdict drops the packet.
func (r Reason) IsDrop() bool { return r < 0 }

// Dir is the attach point a verdict was counted at.
type Dir uint8

// Attach points of the counters.
const (
	DirFromPod = Dir(podnicPnDirPN_DIR_FROM_POD)
	DirToPod   = Dir(podnicPnDirPN_DIR_TO_POD)
	DirLo      = Dir(podnicPnDirPN_DIR_LO)
	DirSocket  = Dir(podnicPnDirPN_DIR_SOCK)
	dirMax     = Dir(podnicPnDirPN_DIR_MAX)
)

func (d Dir) String() string {
	switch d {
	case DirFromPod:
		return "from-pod"
	case DirToPod:
		return "to-pod"
	case DirLo:
		return "lo"
	case DirSocket:
		return "connect"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// Counter slots, as pn_counter_index in lib/common.h computes them.
const (
	reasonSlots = 32
	dropBase    = 16
)

func counterIndex(d Dir, r Reason) uint32 {
	idx := uint32(r)
	if r < 0 {
		idx = uint32(dropBase - int32(r))
	}
	return uint32(d)*reasonSlots + idx%reasonSlots
}

// MarshalText writes the verdict by name.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// MarshalText writes the attach point by name.
func (d Dir) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
