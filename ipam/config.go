package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
)

// Type is the value of "ipam.type" that selects podnic's own IPAM.
const Type = "podnic"

// DefaultDataDir holds one directory per network when "dataDir" is unset.
const DefaultDataDir = "/var/lib/cni/podnic-ipam"

// ErrInvalidConfig marks every configuration error.
var ErrInvalidConfig = errors.New("invalid podnic ipam config")

// Config is a validated IPAM configuration. Build it with ParseConfig.
type Config struct {
	// Network is the CNI network name; the store keeps one directory per
	// network under DataDir.
	Network string
	DataDir string
	// RangeSets hand out one address each: one IPv4 set and one IPv6 set
	// give a pod one address of each family.
	RangeSets []RangeSet
	// Exclude lists addresses (as /32 or /128) and prefixes never handed out.
	Exclude []netip.Prefix
	Routes  []Route

	// Compiled by compile: every address or prefix never handed out
	// (Exclude plus gateways), single addresses in a map for speed.
	reservedAddrs map[netip.Addr]struct{}
	reservedNets  []netip.Prefix
}

// RangeSet is a list of ranges of one family; an allocation takes one
// address from the first range with room, searching round-robin.
type RangeSet []Range

// Range is a span of a subnet to hand out. Start and End are inclusive and
// never the subnet's network address, nor its broadcast address for IPv4.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr
	End     netip.Addr
	Gateway netip.Addr // never handed out; zero only for hand-built configs
}

// Route is a route the plugin installs with the addresses.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr // zero: use the range's gateway, as CNI results do
}

// The JSON shape of the network configuration, only the parts IPAM reads.
type netConfJSON struct {
	Name string          `json:"name"`
	IPAM json.RawMessage `json:"ipam"`
}

type ipamJSON struct {
	Type    string        `json:"type"`
	Ranges  [][]rangeJSON `json:"ranges"`
	Exclude []string      `json:"exclude"`
	Routes  []routeJSON   `json:"routes"`
	DataDir string        `json:"dataDir"`
}

type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

type routeJSON struct {
	Dst string `json:"dst"`
	GW  string `json:"gw"`
}

// networkName is the CNI specification's rule for network names; it also
// keeps the store directory inside DataDir.
var networkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// ParseConfig validates the IPAM part of a CNI network configuration, the
// whole document as the runtime passes it ({"name": ..., "ipam": {...}}),
// and turns it into typed values. Unset fields get host-local's defaults:
// rangeStart is the subnet's first address after the network address,
// rangeEnd its last (before the broadcast address for IPv4), gateway the
// first address. Unknown fields in the ipam section are errors, so a typo
// never silently widens a pool.
func ParseConfig(raw []byte) (*Config, error) {
	var n netConfJSON
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, invalid("parsing JSON: %v", err)
	}
	if n.Name == "" {
		return nil, invalid("name is missing (pass the whole network configuration, not only its ipam section)")
	}
	if !networkName.MatchString(n.Name) {
		return nil, invalid("name %q: want letters, digits, '_', '.' and '-', starting with a letter or digit", n.Name)
	}
	if len(n.IPAM) == 0 || string(n.IPAM) == "null" {
		return nil, invalid("ipam is missing")
	}
	var j ipamJSON
	dec := json.NewDecoder(bytes.NewReader(n.IPAM))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, invalid("parsing ipam: %v", err)
	}
	if j.Type != Type {
		return nil, invalid("ipam.type is %q, want %q", j.Type, Type)
	}

	c := &Config{Network: n.Name, DataDir: j.DataDir}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return nil, invalid("dataDir %q is not an absolute path", j.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)

	if len(j.Ranges) == 0 {
		return nil, invalid("ranges is empty: give at least one set, e.g. [[{\"subnet\": \"10.1.0.0/24\"}]]")
	}
	for i, set := range j.Ranges {
		if len(set) == 0 {
			return nil, invalid("ranges[%d] is an empty set", i)
		}
		var rs RangeSet
		for k, rj := range set {
			r, err := parseRange(rj)
			if err != nil {
				return nil, invalid("ranges[%d][%d]: %v", i, k, err)
			}
			rs = append(rs, r)
		}
		c.RangeSets = append(c.RangeSets, rs)
	}
	for _, s := range j.Exclude {
		p, err := parseAddrOrPrefix("exclude", s)
		if err != nil {
			return nil, invalid("%v", err)
		}
		c.Exclude = append(c.Exclude, p)
	}
	for i, rj := range j.Routes {
		r, err := parseRoute(rj)
		if err != nil {
			return nil, invalid("routes[%d]: %v", i, err)
		}
		c.Routes = append(c.Routes, r)
	}
	if err := c.compile(); err != nil {
		return nil, err
	}
	return c, nil
}

func parseRange(rj rangeJSON) (Range, error) {
	if rj.Subnet == "" {
		return Range{}, errors.New("subnet is missing")
	}
	subnet, err := parsePrefix("subnet", rj.Subnet)
	if err != nil {
		return Range{}, err
	}
	r := Range{Subnet: subnet}
	first, last, ok := usableSpan(subnet)
	if !ok {
		if subnet.Addr().Is4() {
			return Range{}, fmt.Errorf("subnet %s is too small: IPv4 needs /30 or shorter (network and broadcast addresses are never handed out)", subnet)
		}
		return Range{}, fmt.Errorf("subnet %s is too small: IPv6 needs /127 or shorter (the network address is never handed out)", subnet)
	}
	r.Start, r.End, r.Gateway = first, last, first
	// inSubnet checks an address given for field and refuses the addresses
	// that are never handed out.
	inSubnet := func(field, s string) (netip.Addr, error) {
		a, err := parseAddr(field, s)
		if err != nil {
			return a, err
		}
		switch {
		case a.Is4() != subnet.Addr().Is4():
			return a, fmt.Errorf("%s %s is not of the family of subnet %s", field, a, subnet)
		case !subnet.Contains(a):
			return a, fmt.Errorf("%s %s is outside subnet %s", field, a, subnet)
		case a == subnet.Addr():
			return a, fmt.Errorf("%s %s is the network address of subnet %s", field, a, subnet)
		case a.Is4() && a == lastAddr(subnet):
			return a, fmt.Errorf("%s %s is the broadcast address of subnet %s", field, a, subnet)
		}
		return a, nil
	}
	if rj.RangeStart != "" {
		if r.Start, err = inSubnet("rangeStart", rj.RangeStart); err != nil {
			return Range{}, err
		}
	}
	if rj.RangeEnd != "" {
		if r.End, err = inSubnet("rangeEnd", rj.RangeEnd); err != nil {
			return Range{}, err
		}
	}
	if r.Start.Compare(r.End) > 0 {
		return Range{}, fmt.Errorf("rangeStart %s is after rangeEnd %s", r.Start, r.End)
	}
	if rj.Gateway != "" {
		g, err := parseAddr("gateway", rj.Gateway)
		if err != nil {
			return Range{}, err
		}
		// An IPv6 router is often known only by its link-local address
		// (cloud VPCs announce it that way), so that is accepted too.
		linkLocal := g.Is6() && subnet.Addr().Is6() && g.IsLinkLocalUnicast()
		if !linkLocal {
			if g, err = inSubnet("gateway", rj.Gateway); err != nil {
				return Range{}, err
			}
		}
		r.Gateway = g
	}
	return r, nil
}

func parseRoute(rj routeJSON) (Route, error) {
	if rj.Dst == "" {
		return Route{}, errors.New("dst is missing")
	}
	dst, err := parsePrefix("dst", rj.Dst)
	if err != nil {
		return Route{}, err
	}
	r := Route{Dst: dst}
	if rj.GW != "" {
		if r.GW, err = parseAddr("gw", rj.GW); err != nil {
			return Route{}, err
		}
		if r.GW.Is4() != dst.Addr().Is4() {
			return Route{}, fmt.Errorf("gw %s is not of the family of dst %s", r.GW, dst)
		}
	}
	return r, nil
}

func parsePrefix(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%s %q is not a CIDR", field, s)
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("%s %q is IPv4-mapped IPv6; write it as plain IPv4", field, s)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("%s %s has host bits set; did you mean %s?", field, s, p.Masked())
	}
	return p, nil
}

func parseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", field, s)
	}
	if a.Is4In6() {
		return a, fmt.Errorf("%s %q is IPv4-mapped IPv6; write it as plain IPv4", field, s)
	}
	return a, nil
}

func parseAddrOrPrefix(field, s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return parsePrefix(field, s)
	}
	a, err := parseAddr(field, s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// compile checks what spans fields and ranges and builds the lookup of
// addresses never handed out.
func (c *Config) compile() error {
	type located struct {
		where string
		r     Range
	}
	var all []located
	for i, rs := range c.RangeSets {
		if len(rs) == 0 {
			return invalid("ranges[%d] is an empty set", i)
		}
		for k, r := range rs {
			if !r.Subnet.IsValid() || !r.Start.IsValid() || !r.End.IsValid() {
				return invalid("ranges[%d][%d] is incomplete", i, k)
			}
			if r.Subnet.Addr().Is4() != rs[0].Subnet.Addr().Is4() {
				return invalid("ranges[%d][%d]: subnet %s is not of the family of the set's first subnet %s; a set hands out one address, so its ranges share a family",
					i, k, r.Subnet, rs[0].Subnet)
			}
			all = append(all, located{fmt.Sprintf("ranges[%d][%d]", i, k), r})
		}
	}
	for a := range all {
		for b := a + 1; b < len(all); b++ {
			x, y := all[a].r, all[b].r
			if x.Start.Compare(y.End) <= 0 && y.Start.Compare(x.End) <= 0 {
				return invalid("%s (%s-%s) overlaps %s (%s-%s)", all[a].where, x.Start, x.End, all[b].where, y.Start, y.End)
			}
		}
	}

	c.reservedAddrs = map[netip.Addr]struct{}{}
	c.reservedNets = nil
	for _, p := range c.Exclude {
		found := false
		for _, l := range all {
			if l.r.Subnet.Overlaps(p) {
				found = true
				break
			}
		}
		if !found {
			return invalid("exclude %s is in no range's subnet", p)
		}
		if p.IsSingleIP() {
			c.reservedAddrs[p.Addr()] = struct{}{}
		} else {
			c.reservedNets = append(c.reservedNets, p)
		}
	}
	for _, l := range all {
		if l.r.Gateway.IsValid() {
			c.reservedAddrs[l.r.Gateway] = struct{}{}
		}
	}
	for i := range c.RangeSets {
		if _, ok := c.nextFree(i, netip.Addr{}, func(netip.Addr) bool { return false }); !ok {
			return invalid("ranges[%d] has no address left to hand out after the gateway and exclusions", i)
		}
	}
	return nil
}

// usableSpan is the span of subnet that may be handed out: without the
// network address (for IPv6 the Subnet-Router anycast address, RFC 4291
// 2.6.1) and, for IPv4, without the broadcast address.
func usableSpan(subnet netip.Prefix) (first, last netip.Addr, ok bool) {
	first = subnet.Addr().Next()
	last = lastAddr(subnet)
	if subnet.Addr().Is4() {
		last = last.Prev()
	}
	if !first.IsValid() || !subnet.Contains(first) || first.Compare(last) > 0 {
		return first, last, false
	}
	return first, last, true
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As16()
	hostBits := p.Addr().BitLen() - p.Bits()
	for i := 15; hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		return a.Unmap()
	}
	return a
}

// reservedPrefix reports the excluded prefix that holds a, if any.
func (c *Config) reservedPrefix(a netip.Addr) (netip.Prefix, bool) {
	if _, ok := c.reservedAddrs[a]; ok {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	for _, p := range c.reservedNets {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// nextFree returns the first address after cursor, in the set's order and
// wrapping around, that is neither reserved nor used. Excluded prefixes are
// skipped whole, so even an IPv6 /64 costs one step per used address.
func (c *Config) nextFree(set int, cursor netip.Addr, used func(netip.Addr) bool) (netip.Addr, bool) {
	rs := c.RangeSets[set]
	type span struct{ from, to netip.Addr }
	var spans []span
	at := -1
	for i, r := range rs {
		if r.Start.Compare(cursor) <= 0 && cursor.Compare(r.End) <= 0 {
			at = i
			break
		}
	}
	if at < 0 {
		for _, r := range rs {
			spans = append(spans, span{r.Start, r.End})
		}
	} else {
		r := rs[at]
		if cursor != r.End {
			spans = append(spans, span{cursor.Next(), r.End})
		}
		for k := 1; k < len(rs); k++ {
			o := rs[(at+k)%len(rs)]
			spans = append(spans, span{o.Start, o.End})
		}
		spans = append(spans, span{r.Start, cursor})
	}
	for _, s := range spans {
		for a := s.from; a.IsValid() && a.Compare(s.to) <= 0; {
			if p, ok := c.reservedPrefix(a); ok {
				a = lastAddr(p).Next()
				continue
			}
			if !used(a) {
				return a, true
			}
			a = a.Next()
		}
	}
	return netip.Addr{}, false
}

// locate finds the set an address belongs to and the range that gives its
// prefix length and gateway: by the ranges' spans first, then, for an
// address handed out under an older configuration, by their subnets.
func (c *Config) locate(a netip.Addr) (set int, r Range, ok bool) {
	for i, rs := range c.RangeSets {
		for _, r := range rs {
			if r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0 {
				return i, r, true
			}
		}
	}
	for i, rs := range c.RangeSets {
		for _, r := range rs {
			if r.Subnet.Contains(a) {
				return i, r, true
			}
		}
	}
	return -1, Range{}, false
}

// allocation describes a held address: with its subnet's length and gateway
// when a range knows it, as a single address otherwise.
func (c *Config) allocation(a netip.Addr) Allocation {
	if _, r, ok := c.locate(a); ok {
		return Allocation{Addr: netip.PrefixFrom(a, r.Subnet.Bits()), Gateway: r.Gateway}
	}
	return Allocation{Addr: netip.PrefixFrom(a, a.BitLen())}
}
