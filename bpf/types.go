package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Map key and value layouts. They mirror the structs in lib/common.h byte
// for byte; TestMapLayoutsMatchObject checks them against the object's BTF.
// Addresses are 16 bytes in network order, IPv4 as ::ffff:a.b.c.d; ports
// are in network order.

// Addr is an address as the datapath stores it.
type Addr [16]byte

// AddrFrom converts a netip address to the datapath form.
func AddrFrom(a netip.Addr) Addr { return Addr(a.As16()) }

// IP returns the address, unmapped when it is IPv4.
func (a Addr) IP() netip.Addr { return netip.AddrFrom16(a).Unmap() }

// lbAddrs is a pod's own addresses for session affinity at connect()
// (struct pn_lb_addrs); a zero address: none of that family.
type lbAddrs struct {
	V4 Addr
	V6 Addr
}

// nodeAddrs is the node's own addresses for NodePorts (struct
// pn_node_addrs); Count 0: no NodePort frontend.
type nodeAddrs struct {
	Count uint32
	Pad   uint32
	Addr  [MaxNodeAddrs]Addr
}

// MaxNodeAddrs is how many node addresses NodePorts are served on.
const MaxNodeAddrs = 4

// Port is a port in network byte order.
type Port [2]byte

// PortFrom converts a host-order port.
func PortFrom(p uint16) Port {
	var b Port
	binary.BigEndian.PutUint16(b[:], p)
	return b
}

// Host returns the port in host order.
func (p Port) Host() uint16 { return binary.BigEndian.Uint16(p[:]) }

// Proto is an IP protocol number.
type Proto uint8

// Protocols the datapath translates.
const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	case 0:
		return "ANY"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Scope says from where a Service frontend is reached.
type Scope uint8

// Scopes of a Service frontend.
const (
	ScopeCluster  Scope = 0 // ClusterIP from inside the cluster
	ScopeExternal Scope = 1 // reserved for NodePort, ExternalIP, LoadBalancer
)

// ServiceKey is the key of the services map.
type ServiceKey struct {
	Addr  Addr
	Port  Port // zero with Proto zero: the VIP marker
	Proto Proto
	Scope Scope
}

// Service flags.
const (
	ServiceAffinity = uint16(podnicPnSvcFlagsPN_SVC_AFFINITY)
	ServiceDrop     = uint16(podnicPnSvcFlagsPN_SVC_DROP) // with count 0: drop, not reject
	// ServiceSourceRanges: new flows only from the frontend's source
	// ranges (loadBalancerSourceRanges), others are dropped.
	ServiceSourceRanges = uint16(podnicPnSvcFlagsPN_SVC_SRC_RANGES)
)

// ServiceValue is the value of the services map.
type ServiceValue struct {
	ID              uint32 // prefix of its slots, and reverse NAT id
	Count           uint16 // slots 1..Count; zero rejects
	Flags           uint16
	AffinitySeconds uint32
}

// SlotKey is the key of the slots map; its value is a backend id.
type SlotKey struct {
	ServiceID uint32
	Slot      uint32 // 1-based
}

// BackendState says whether a backend takes new affinity sessions.
type BackendState uint8

// Backend states.
const (
	BackendActive      = BackendState(podnicPnBackendStatePN_BACKEND_ACTIVE)
	BackendTerminating = BackendState(podnicPnBackendStatePN_BACKEND_TERMINATING)
)

func (s BackendState) String() string {
	switch s {
	case BackendActive:
		return "active"
	case BackendTerminating:
		return "terminating"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Backend is the value of the backends map, keyed by backend id.
type Backend struct {
	Addr  Addr
	Port  Port
	State BackendState
	_     uint8
}

// Conntrack directions.
const (
	CTForward uint8 = 0
	CTReply   uint8 = 1
)

// Conntrack flags.
const (
	CTSelf        = uint8(podnicPnCtFlagsPN_CT_SELF)
	CTEstablished = uint8(podnicPnCtFlagsPN_CT_ESTABLISHED)
	CTClosing     = uint8(podnicPnCtFlagsPN_CT_CLOSING)
	// CTNeigh marks a flow a pod sent to a backend's own address (a UDP
	// socket whose backend left), moved to another backend.
	CTNeigh = uint8(podnicPnCtFlagsPN_CT_NEIGH)
)

// CTKey is the key of the conntrack map.
type CTKey struct {
	Src   Addr
	Dst   Addr
	Sport Port
	Dport Port
	Proto Proto
	Dir   uint8
	_     uint16
}

// CTEntry is a conntrack entry: forward entries hold the backend, reply
// entries the Service frontend.
type CTEntry struct {
	Addr      Addr
	Port      Port
	Flags     uint8
	_         uint8
	ServiceID uint32
	BackendID uint32
	_         uint32
	Expires   uint64 // CLOCK_MONOTONIC nanoseconds
}

// AffinityKey is the key of the session affinity map.
type AffinityKey struct {
	Client    Addr
	ServiceID uint32
}

// AffinityValue is the value of the session affinity map.
type AffinityValue struct {
	BackendID uint32
	Slot      uint32 // the Service's slot that held BackendID; 0: not recorded
	LastUsed  uint64 // CLOCK_MONOTONIC nanoseconds
}

// Counter is one per-CPU slot of the verdict counters.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Event is a drop or reject reported through the ring buffer.
type Event struct {
	Time    uint64 // CLOCK_MONOTONIC nanoseconds
	Reason  Reason
	Ifindex uint32
	Src     Addr
	Dst     Addr
	Sport   Port
	Dport   Port
	Proto   Proto
	Dir     Dir
	_       uint16
}

// MarshalText writes the protocol by name.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// MarshalText writes the state by name.
func (s BackendState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// CIDRKey is the key of the Service CIDR trie: a prefix of the 128-bit
// datapath address, IPv4 prefixes mapped under ::ffff:0:0/96.
type CIDRKey struct {
	PrefixLen uint32
	Addr      Addr
}

// SourceRangeKey is the key of the source-range trie: a frontend's id,
// then a prefix of the 128-bit datapath address; PrefixLen counts the id's
// 32 bits too.
type SourceRangeKey struct {
	PrefixLen uint32
	ServiceID uint32
	Addr      Addr
}

// SourceRangeKeyFrom converts a frontend's source range to the trie's key.
func SourceRangeKeyFrom(serviceID uint32, p netip.Prefix) SourceRangeKey {
	k := CIDRKeyFrom(p)
	return SourceRangeKey{PrefixLen: 32 + k.PrefixLen, ServiceID: serviceID, Addr: k.Addr}
}

// Prefix returns the source range the key holds.
func (k SourceRangeKey) Prefix() netip.Prefix {
	bits := int(k.PrefixLen) - 32
	a := netip.AddrFrom16(k.Addr)
	if a.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), bits-96)
	}
	return netip.PrefixFrom(a, bits)
}

// CIDRKeyFrom converts a prefix to the trie's key.
func CIDRKeyFrom(p netip.Prefix) CIDRKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return CIDRKey{PrefixLen: uint32(bits), Addr: AddrFrom(p.Addr())}
}
