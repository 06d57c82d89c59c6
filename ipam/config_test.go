package ipam

// Test address plan: IPv4 from TEST-NET-1 and TEST-NET-2 (RFC 5737),
// 192.0.2.0/24 and 198.51.100.0/24; IPv6 from the documentation prefix
// 2001:db8::/32 (RFC 3849).

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// netConf wraps an ipam section into a network configuration.
func netConf(ipam string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"net1","type":"podnic","ipam":` + ipam + `}`)
}

func TestConfigParsesRangeSetsExclusionsAndRoutes(t *testing.T) {
	c, err := ParseConfig(netConf(`{"type":"podnic",
		"ranges":[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.10","rangeEnd":"192.0.2.200","gateway":"192.0.2.1"}],
		          [{"subnet":"2001:db8:1::/64","gateway":"2001:db8:1::1"}]],
		"exclude":["192.0.2.50","192.0.2.64/28"],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fe80::1"}],
		"dataDir":"/var/lib/x"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []RangeSet{
		{{Subnet: pfx("192.0.2.0/24"), Start: ip("192.0.2.10"), End: ip("192.0.2.200"), Gateway: ip("192.0.2.1")}},
		{{Subnet: pfx("2001:db8:1::/64"), Start: ip("2001:db8:1::1"), End: ip("2001:db8:1::ffff:ffff:ffff:ffff"), Gateway: ip("2001:db8:1::1")}},
	}
	if fmt.Sprint(c.RangeSets) != fmt.Sprint(want) {
		t.Errorf("range sets\n got %v\nwant %v", c.RangeSets, want)
	}
	if got := fmt.Sprint(c.Exclude); got != "[192.0.2.50/32 192.0.2.64/28]" {
		t.Errorf("exclude %s", got)
	}
	if got := fmt.Sprint(c.Routes); got != "[{0.0.0.0/0 invalid IP} {::/0 fe80::1}]" {
		t.Errorf("routes %s", got)
	}
	if c.Network != "net1" || c.DataDir != "/var/lib/x" {
		t.Errorf("network %q, dataDir %q", c.Network, c.DataDir)
	}
}

func TestConfigDefaultsFollowHostLocal(t *testing.T) {
	c, err := ParseConfig(netConf(`{"type":"podnic","ranges":[[{"subnet":"192.0.2.0/24"}],[{"subnet":"2001:db8::/120"}]]}`))
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := c.RangeSets[0][0], c.RangeSets[1][0]
	if v4.Start != ip("192.0.2.1") || v4.End != ip("192.0.2.254") || v4.Gateway != ip("192.0.2.1") {
		t.Errorf("IPv4 defaults: %+v", v4)
	}
	if v6.Start != ip("2001:db8::1") || v6.End != ip("2001:db8::ff") || v6.Gateway != ip("2001:db8::1") {
		t.Errorf("IPv6 defaults: %+v", v6)
	}
	if c.DataDir != DefaultDataDir {
		t.Errorf("dataDir %q", c.DataDir)
	}
}

func TestConfigRejectsEveryBadField(t *testing.T) {
	r := func(ranges string) string { return `{"type":"podnic","ranges":` + ranges + `}` }
	one := func(rng string) string { return r(`[[` + rng + `]]`) }
	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"not JSON", []byte(`{`), "parsing JSON"},
		{"no name", []byte(`{"ipam":` + one(`{"subnet":"192.0.2.0/24"}`) + `}`), "name is missing"},
		{"bad name", []byte(`{"name":"../etc","ipam":` + one(`{"subnet":"192.0.2.0/24"}`) + `}`), `name "../etc"`},
		{"no ipam", []byte(`{"name":"n"}`), "ipam is missing"},
		{"wrong type", netConf(`{"type":"host-local","ranges":[[{"subnet":"192.0.2.0/24"}]]}`), `ipam.type is "host-local", want "podnic"`},
		{"unknown field", netConf(`{"type":"podnic","subnet":"192.0.2.0/24"}`), `unknown field "subnet"`},
		{"unknown range field", netConf(one(`{"subnet":"192.0.2.0/24","rangeBegin":"192.0.2.3"}`)), `unknown field "rangeBegin"`},
		{"relative dataDir", netConf(`{"type":"podnic","dataDir":"var/lib","ranges":[[{"subnet":"192.0.2.0/24"}]]}`), `dataDir "var/lib" is not an absolute path`},
		{"no ranges", netConf(`{"type":"podnic"}`), "ranges is empty"},
		{"empty ranges", netConf(r(`[]`)), "ranges is empty"},
		{"empty set", netConf(r(`[[{"subnet":"192.0.2.0/24"}],[]]`)), "ranges[1] is an empty set"},
		{"no subnet", netConf(one(`{"rangeStart":"192.0.2.3"}`)), "ranges[0][0]: subnet is missing"},
		{"unparsable subnet", netConf(one(`{"subnet":"192.0.2/24"}`)), `ranges[0][0]: subnet "192.0.2/24" is not a CIDR`},
		{"host bits", netConf(one(`{"subnet":"192.0.2.7/24"}`)), "subnet 192.0.2.7/24 has host bits set; did you mean 192.0.2.0/24?"},
		{"mapped", netConf(one(`{"subnet":"::ffff:192.0.2.0/120"}`)), "IPv4-mapped IPv6"},
		{"v4 too small", netConf(one(`{"subnet":"192.0.2.0/31"}`)), "subnet 192.0.2.0/31 is too small"},
		{"v6 too small", netConf(one(`{"subnet":"2001:db8::/128"}`)), "subnet 2001:db8::/128 is too small"},
		{"unparsable start", netConf(one(`{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.x"}`)), `rangeStart "192.0.2.x" is not an IP address`},
		{"start outside", netConf(one(`{"subnet":"192.0.2.0/24","rangeStart":"198.51.100.1"}`)), "rangeStart 198.51.100.1 is outside subnet 192.0.2.0/24"},
		{"start other family", netConf(one(`{"subnet":"192.0.2.0/24","rangeStart":"2001:db8::1"}`)), "rangeStart 2001:db8::1 is not of the family of subnet 192.0.2.0/24"},
		{"start network", netConf(one(`{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.0"}`)), "rangeStart 192.0.2.0 is the network address"},
		{"end outside", netConf(one(`{"subnet":"192.0.2.0/24","rangeEnd":"192.0.3.1"}`)), "rangeEnd 192.0.3.1 is outside subnet 192.0.2.0/24"},
		{"end broadcast", netConf(one(`{"subnet":"192.0.2.0/24","rangeEnd":"192.0.2.255"}`)), "rangeEnd 192.0.2.255 is the broadcast address"},
		{"start after end", netConf(one(`{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.100","rangeEnd":"192.0.2.10"}`)), "rangeStart 192.0.2.100 is after rangeEnd 192.0.2.10"},
		{"zoned gateway", netConf(one(`{"subnet":"192.0.2.0/24","gateway":"fe80::1%eth0"}`)), `gateway "fe80::1%eth0" is not an IP address`},
		{"gateway outside", netConf(one(`{"subnet":"192.0.2.0/24","gateway":"198.51.100.1"}`)), "gateway 198.51.100.1 is outside subnet 192.0.2.0/24"},
		{"gateway v6 outside", netConf(one(`{"subnet":"2001:db8::/64","gateway":"2001:db8:1::1"}`)), "gateway 2001:db8:1::1 is outside subnet 2001:db8::/64"},
		{"gateway broadcast", netConf(one(`{"subnet":"192.0.2.0/24","gateway":"192.0.2.255"}`)), "gateway 192.0.2.255 is the broadcast address"},
		{"mixed set", netConf(r(`[[{"subnet":"192.0.2.0/24"},{"subnet":"2001:db8::/64"}]]`)), "ranges[0][1]: subnet 2001:db8::/64 is not of the family of the set's first subnet 192.0.2.0/24"},
		{"overlap", netConf(r(`[[{"subnet":"192.0.2.0/24","rangeEnd":"192.0.2.100"}],[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.100"}]]`)), "ranges[0][0] (192.0.2.1-192.0.2.100) overlaps ranges[1][0] (192.0.2.100-192.0.2.254)"},
		{"bad exclude", netConf(`{"type":"podnic","exclude":["192.0.2.x"],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), `exclude "192.0.2.x" is not an IP address`},
		{"bad exclude prefix", netConf(`{"type":"podnic","exclude":["192.0.2.9/29"],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), "exclude 192.0.2.9/29 has host bits set"},
		{"exclude elsewhere", netConf(`{"type":"podnic","exclude":["198.51.100.7"],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), "exclude 198.51.100.7/32 is in no range's subnet"},
		{"all excluded", netConf(`{"type":"podnic","exclude":["192.0.2.0/29"],"ranges":[[{"subnet":"192.0.2.0/24","rangeEnd":"192.0.2.6"}]]}`), "ranges[0] has no address left to hand out"},
		{"only gateway", netConf(one(`{"subnet":"192.0.2.0/30","rangeEnd":"192.0.2.1"}`)), "ranges[0] has no address left to hand out"},
		{"route no dst", netConf(`{"type":"podnic","routes":[{"gw":"192.0.2.1"}],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), "routes[0]: dst is missing"},
		{"route bad dst", netConf(`{"type":"podnic","routes":[{"dst":"default"}],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), `routes[0]: dst "default" is not a CIDR`},
		{"route bad gw", netConf(`{"type":"podnic","routes":[{"dst":"0.0.0.0/0","gw":"x"}],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), `routes[0]: gw "x" is not an IP address`},
		{"route mixed", netConf(`{"type":"podnic","routes":[{"dst":"0.0.0.0/0","gw":"2001:db8::1"}],"ranges":[[{"subnet":"192.0.2.0/24"}]]}`), "routes[0]: gw 2001:db8::1 is not of the family of dst 0.0.0.0/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.raw)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestConfigAcceptsLinkLocalIPv6Gateway(t *testing.T) {
	c, err := ParseConfig(netConf(`{"type":"podnic","ranges":[[{"subnet":"2001:db8::/64","gateway":"fe80::1"}]]}`))
	if err != nil {
		t.Fatal(err)
	}
	if g := c.RangeSets[0][0].Gateway; g != ip("fe80::1") {
		t.Errorf("gateway %s", g)
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.0/24":    "192.0.2.255",
		"192.0.2.64/27":   "192.0.2.95",
		"0.0.0.0/0":       "255.255.255.255",
		"192.0.2.7/32":    "192.0.2.7",
		"2001:db8::/64":   "2001:db8::ffff:ffff:ffff:ffff",
		"2001:db8::/125":  "2001:db8::7",
		"2001:db8::8/128": "2001:db8::8",
	} {
		if got := lastAddr(pfx(in)); got != ip(want) {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
