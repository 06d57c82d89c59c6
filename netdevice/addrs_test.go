package netdevice

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// podWithENI moves a fresh ENI into a fresh pod netns as eth1 and returns
// the ENI and the pod netns path.
func podWithENI(t *testing.T) (testENI, string) {
	t.Helper()
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MoveIn(dev, pod, "eth1", 0); err != nil {
		t.Fatal(err)
	}
	return eni, pod
}

func TestConfigureAddrsAddsAddressesAndRoutesThroughOnLinkGateways(t *testing.T) {
	needRoot(t)
	_, pod := podWithENI(t)
	addrs := []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128")}
	routes := []Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("192.0.2.1"), OnLink: true},
		{Dst: netip.MustParsePrefix("198.51.100.0/24"), GW: netip.MustParseAddr("192.0.2.1"), OnLink: true},
		{Dst: netip.MustParsePrefix("::/0"), GW: netip.MustParseAddr("2001:db8::1"), OnLink: true},
	}
	for range 2 { // the second run replaces and must not fail
		if err := ConfigureAddrs(pod, "eth1", addrs, routes); err != nil {
			t.Fatal(err)
		}
	}

	withLink(t, pod, "eth1", func(r *netnsRef, l netlink.Link) {
		got := map[string]int{}
		as, err := r.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			got[a.IPNet.String()] = a.Flags
		}
		if _, ok := got["192.0.2.10/32"]; !ok {
			t.Errorf("addresses %v lack 192.0.2.10/32", got)
		}
		if f, ok := got["2001:db8::10/128"]; !ok || f&unix.IFA_F_NODAD == 0 || f&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("2001:db8::10/128 flags %#x (present %v), want NODAD and not tentative", f, ok)
		}

		rs, err := r.nl.RouteList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, rt := range rs {
			dst := "default"
			if rt.Dst != nil && (!rt.Dst.IP.IsUnspecified() || ones(rt.Dst) != 0) {
				dst = rt.Dst.String()
			}
			line := dst
			if rt.Gw != nil {
				line += " via " + rt.Gw.String()
			}
			if rt.Scope == netlink.SCOPE_LINK {
				line += " scope link"
			}
			lines = append(lines, line)
		}
		for _, want := range []string{
			"192.0.2.1/32 scope link",
			"default via 192.0.2.1",
			"198.51.100.0/24 via 192.0.2.1",
			"2001:db8::1/128", // IPv6 routes carry no scope
			"default via 2001:db8::1",
		} {
			if !slices.Contains(lines, want) {
				t.Errorf("routes %q lack %q", lines, want)
			}
		}
	})
}

func ones(n *net.IPNet) int { o, _ := n.Mask.Size(); return o }

func TestConfigureAddrsRejectsARouteWhoseGatewayIsOfTheOtherFamily(t *testing.T) {
	err := ConfigureAddrs("/run/netns/unused", "eth1", nil, []Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("2001:db8::1")},
	})
	if err == nil || !strings.Contains(err.Error(), "other address family") {
		t.Errorf("got %v, want a family error", err)
	}
}

func TestPodSysctlsRaiseLoopbackAndAcceptLocalInThePodOnly(t *testing.T) {
	needRoot(t)
	pod := newNetns(t, "pod")
	const knob = "/proc/sys/net/ipv4/conf/lo/accept_local"
	hostBefore, err := os.ReadFile(knob)
	if err != nil {
		t.Fatal(err)
	}

	if err := PodSysctls(pod); err != nil {
		t.Fatal(err)
	}

	if a := linkIn(t, pod, "lo"); a.Flags&net.FlagUp == 0 {
		t.Error("lo is down in the pod")
	}
	var inPod []byte
	if err := InNetns(pod, func() error {
		var err error
		inPod, err = os.ReadFile(knob)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(inPod)) != "1" {
		t.Errorf("accept_local in the pod is %q, want 1", inPod)
	}
	if hostAfter, _ := os.ReadFile(knob); string(hostAfter) != string(hostBefore) {
		t.Errorf("accept_local in the host changed from %q to %q", hostBefore, hostAfter)
	}
}

// SourceAddrs gives the pod's first global address of each family, not a
// link-local one, and none of a family the pod lacks.
func TestSourceAddrsGivesTheFirstGlobalAddressOfEachFamily(t *testing.T) {
	needRoot(t)
	_, pod := podWithENI(t)
	addrs := []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("192.0.2.11/32"), netip.MustParsePrefix("2001:db8::10/128")}
	if err := ConfigureAddrs(pod, "eth1", addrs, nil); err != nil {
		t.Fatal(err)
	}
	var v4, v6 netip.Addr
	err := InNetns(pod, func() error {
		var err error
		v4, v6, err = SourceAddrs("eth1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if v4 != addrs[0].Addr() || v6 != addrs[2].Addr() {
		t.Errorf("SourceAddrs = %v, %v; want %v, %v", v4, v6, addrs[0].Addr(), addrs[2].Addr())
	}

	err = InNetns(pod, func() error {
		var err error
		v4, v6, err = SourceAddrs("lo")
		return err
	})
	if err != nil || v4.IsValid() || v6.IsValid() {
		t.Errorf("SourceAddrs(lo) = %v, %v, %v; want no global address and no error", v4, v6, err)
	}
	if err := InNetns(pod, func() error { _, _, err := SourceAddrs("missing0"); return err }); err == nil {
		t.Error("SourceAddrs of a missing interface did not fail")
	}
}
