package netdevice

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a route through the pod's device. Without GW the destination is
// reached directly on the link. OnLink says the gateway is outside every
// subnet of the device's addresses (an ENI's /32, say): a scope-link host
// route to it is added first.
type Route struct {
	Dst    netip.Prefix
	GW     netip.Addr
	OnLink bool
}

func (r Route) validate() error {
	if !validPrefix(r.Dst) {
		return fmt.Errorf("route to %v: destination is not an IPv4 or IPv6 prefix", r.Dst)
	}
	if !r.GW.IsValid() {
		if r.OnLink {
			return fmt.Errorf("route to %s: on-link needs a gateway", r.Dst)
		}
		return nil
	}
	if r.GW.Is4In6() {
		return fmt.Errorf("route to %s: write gateway %s in IPv4 form", r.Dst, r.GW)
	}
	if r.GW.Is4() != r.Dst.Addr().Is4() {
		return fmt.Errorf("route to %s: gateway %s is of the other address family", r.Dst, r.GW)
	}
	return nil
}

// prefixIPNet converts p, which validPrefix accepted.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// validPrefix accepts IPv4 prefixes in their 4-byte form only, so that the
// family the kernel sees is the one written.
func validPrefix(p netip.Prefix) bool {
	return p.IsValid() && !p.Addr().Is4In6() && p.Addr().Zone() == ""
}

// ConfigureAddrs adds addrs to ifname in the pod netns at podNetns, sets
// the link up if it is down, then adds routes. IPv4 addresses go on
// before the link comes up, with net.ipv4.conf.<ifname>.arp_notify=1, so
// that the kernel sends a gratuitous ARP (an ARP announcement) per address
// as it comes up: no packet socket is needed, whose close would wait for
// an RCU grace period (10-15 ms). On a link that is up already no ARP is
// sent. A device whose carrier comes up only later (a real NIC still
// negotiating) may drop it; a lost announcement only costs the first peer
// an ARP round trip. IPv6 addresses go on once the link is up, with
// IFA_F_NODAD: the device is the pod's own and its addresses are
// allocated, so they are usable at once; AnnounceIPv6Addrs announces
// them. Addresses and routes are replaced, so running it again is
// harmless.
func ConfigureAddrs(podNetns, ifname string, addrs []netip.Prefix, routes []Route) error {
	if err := validIfname(ifname); err != nil {
		return fmt.Errorf("configuring addresses: %w", err)
	}
	var v4, v6 []netip.Prefix
	for _, p := range addrs {
		if !validPrefix(p) {
			return fmt.Errorf("configuring addresses on %s: %v is not an IPv4 or IPv6 address with a prefix length", ifname, p)
		}
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	for _, r := range routes {
		if err := r.validate(); err != nil {
			return fmt.Errorf("configuring routes on %s: %w", ifname, err)
		}
	}
	pod, err := openNetns(podNetns)
	if err != nil {
		return fmt.Errorf("configuring addresses on %s: %w", ifname, err)
	}
	defer pod.close()
	link, err := pod.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("configuring addresses on %s in %s: %w", ifname, podNetns, err)
	}
	if len(v4) > 0 {
		// /proc/sys/net resolves to the netns of the thread that opens it.
		err = inNetnsHandle(podNetns, pod.ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/"+ifname+"/arp_notify", []byte("1"), 0)
		})
		if err != nil {
			return fmt.Errorf("configuring addresses on %s in %s: setting net.ipv4.conf.%s.arp_notify: %w", ifname, podNetns, ifname, err)
		}
	}
	for _, p := range v4 {
		if err := pod.nl.AddrReplace(link, &netlink.Addr{IPNet: prefixIPNet(p)}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, ifname, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := pod.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", ifname, err)
		}
	}
	for _, p := range v6 {
		if err := pod.nl.AddrReplace(link, &netlink.Addr{IPNet: prefixIPNet(p), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, ifname, err)
		}
	}
	idx := link.Attrs().Index
	for _, r := range routes {
		if r.OnLink {
			gw := r.GW
			host := &netlink.Route{LinkIndex: idx, Dst: prefixIPNet(netip.PrefixFrom(gw, gw.BitLen())), Scope: netlink.SCOPE_LINK}
			if err := pod.nl.RouteReplace(host); err != nil {
				return fmt.Errorf("adding on-link route to gateway %s on %s: %w", gw, ifname, err)
			}
		}
		nr := &netlink.Route{LinkIndex: idx, Dst: prefixIPNet(r.Dst.Masked())}
		if r.GW.IsValid() {
			nr.Gw = r.GW.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := pod.nl.RouteReplace(nr); err != nil {
			return fmt.Errorf("adding route to %s via %v on %s: %w", r.Dst, r.GW, ifname, err)
		}
	}
	return nil
}

// PodSysctls prepares the pod netns at podNetns for podnic's datapath: it
// sets lo up and net.ipv4.conf.lo.accept_local=1, without which a packet
// that the in-pod program redirects to lo for self access (a Service
// backend that is the pod itself) is dropped as a martian.
func PodSysctls(podNetns string) error {
	pod, err := openNetns(podNetns)
	if err != nil {
		return fmt.Errorf("preparing pod netns: %w", err)
	}
	defer pod.close()
	lo, err := pod.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("preparing pod netns %s: looking up lo: %w", podNetns, err)
	}
	if err := pod.nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("preparing pod netns %s: setting lo up: %w", podNetns, err)
	}
	// /proc/sys/net resolves to the netns of the thread that opens it.
	err = inNetnsHandle(podNetns, pod.ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lo/accept_local", []byte("1"), 0)
	})
	if err != nil {
		return fmt.Errorf("preparing pod netns %s: setting net.ipv4.conf.lo.accept_local: %w", podNetns, err)
	}
	return nil
}

// SourceAddrs returns the first global IPv4 and IPv6 address of ifname in
// the calling thread's netns: the ones an unbound socket's connect() comes
// from. A family without one is the zero Addr. A tentative address (DAD
// still running) counts; one that failed DAD or is deprecated does not.
func SourceAddrs(ifname string) (v4, v6 netip.Addr, err error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return v4, v6, fmt.Errorf("reading the addresses of %s: %w", ifname, err)
	}
	list, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return v4, v6, fmt.Errorf("reading the addresses of %s: %w", ifname, err)
	}
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !ip.IsGlobalUnicast() || a.Flags&(unix.IFA_F_DADFAILED|unix.IFA_F_DEPRECATED) != 0 {
			continue
		}
		switch ip = ip.Unmap(); {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	return v4, v6, nil
}
