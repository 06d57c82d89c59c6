package netdevice

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The fabric netns holds stale neighbour entries with a wrong MAC for the
// pod's addresses, as after the addresses moved from another device. With
// no packet socket in the pod, ConfigureAddrs on a device that MoveInDown
// left down makes the pod's kernel send the gratuitous ARP (as the link
// comes up, with arp_notify), and AnnounceIPv6Addrs sends the unsolicited
// NA through a raw ICMPv6 socket. A packet socket in the fabric must see
// both, and the fabric's kernel must accept them: it updates both entries
// to the pod's MAC (an NA without the override flag, or with a bad
// checksum, would leave the IPv6 entry alone).
func TestThePodsAddressesAreAnnouncedToTheFabricWithoutAPacketSocket(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MoveInDown(dev, pod, "eth1", 0); err != nil {
		t.Fatal(err)
	}
	if a := linkIn(t, pod, "eth1"); a.Flags&net.FlagUp != 0 {
		t.Fatalf("MoveInDown left eth1 up (flags %v)", a.Flags)
	}
	v4, v6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	wrongMAC := testMAC()
	withLink(t, eni.Fabric, eni.Peer, func(r *netnsRef, l netlink.Link) {
		// The fabric side is the pod's gateway. Without an address the
		// fabric netns has no local table, and the kernel does not
		// take the ARP for a gratuitous one.
		gw := &netlink.Addr{IPNet: prefixIPNet(netip.MustParsePrefix("192.0.2.1/24"))}
		if err := r.nl.AddrAdd(l, gw); err != nil {
			t.Fatal(err)
		}
		for _, ip := range []netip.Addr{v4, v6} {
			n := &netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_STALE, IP: ip.AsSlice(), HardwareAddr: wrongMAC}
			if err := r.nl.NeighSet(n); err != nil {
				t.Fatalf("setting neighbour %s: %v", ip, err)
			}
		}
	})
	capture := openCapture(t, eni.Fabric, eni.Peer)

	if err := ConfigureAddrs(pod, "eth1", []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}, nil); err != nil {
		t.Fatal(err)
	}
	if a := linkIn(t, pod, "eth1"); a.Flags&net.FlagUp == 0 {
		t.Errorf("ConfigureAddrs left eth1 down (flags %v)", a.Flags)
	}
	// The fabric's end got its carrier only now, with the pod's link; until
	// its kernel has processed that, it has no ff00::/8 route on the link
	// and drops the NA as unroutable. A real fabric is up all along.
	eventually(t, "the fabric routes IPv6 multicast on its end", func() bool {
		return fabricRoutesMulticast(t, eni)
	})
	if err := AnnounceIPv6Addrs(pod, "eth1", []netip.Addr{v6}); err != nil {
		t.Fatal(err)
	}

	var sawARP, sawNA bool
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(3 * time.Second); (!sawARP || !sawNA) && time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(capture, buf, 0)
		if err != nil {
			continue // the receive timeout
		}
		f := buf[:n]
		if !bytes.Equal(f[6:12], eni.MAC) {
			continue
		}
		switch binary.BigEndian.Uint16(f[12:14]) {
		case unix.ETH_P_ARP:
			arp := f[14:]
			if bytes.Equal(arp[14:18], v4.AsSlice()) {
				sawARP = true
				if !bytes.Equal(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) || binary.BigEndian.Uint16(arp[6:8]) != 1 ||
					!bytes.Equal(arp[8:14], eni.MAC) || !bytes.Equal(arp[24:28], v4.AsSlice()) {
					t.Errorf("ARP announcement malformed: % x", f)
				}
			}
		case unix.ETH_P_IPV6:
			ip6, icmp := f[14:54], f[54:]
			if ip6[6] != unix.IPPROTO_ICMPV6 || icmp[0] != 136 || !bytes.Equal(icmp[8:24], v6.AsSlice()) {
				continue
			}
			sawNA = true
			var src, dst [16]byte
			copy(src[:], ip6[8:24])
			copy(dst[:], ip6[24:40])
			msg := append([]byte(nil), icmp[:binary.BigEndian.Uint16(ip6[4:6])]...)
			sum := binary.BigEndian.Uint16(msg[2:4])
			msg[2], msg[3] = 0, 0
			if ip6[7] != 255 || netip.AddrFrom16(dst) != netip.MustParseAddr("ff02::1") || icmp[4] != 0x20 ||
				sum != icmpv6Checksum(src, dst, msg) || !bytes.Equal(icmp[26:32], eni.MAC) {
				t.Errorf("neighbour advertisement malformed: % x", f)
			}
		}
	}
	if !sawARP || !sawNA {
		t.Fatalf("fabric saw ARP %v, NA %v; want both", sawARP, sawNA)
	}

	for _, ip := range []netip.Addr{v4, v6} {
		eventually(t, "the fabric learns "+ip.String()+" at the pod's MAC", func() bool {
			return bytes.Equal(fabricNeighbour(t, eni, ip), eni.MAC)
		})
	}
}

// openCapture opens a packet socket on link in the netns at path that sees
// every frame, with a short receive timeout; t.Cleanup closes it.
func openCapture(t *testing.T, path, link string) int {
	t.Helper()
	fd := -1
	err := InNetns(path, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

func fabricRoutesMulticast(t *testing.T, eni testENI) bool {
	found := false
	withLink(t, eni.Fabric, eni.Peer, func(r *netnsRef, l netlink.Link) {
		filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: l.Attrs().Index}
		rs, err := r.nl.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			t.Fatal(err)
		}
		for _, rt := range rs {
			if rt.Dst != nil && rt.Dst.String() == "ff00::/8" {
				found = true
			}
		}
	})
	return found
}

func fabricNeighbour(t *testing.T, eni testENI, ip netip.Addr) net.HardwareAddr {
	var mac net.HardwareAddr
	withLink(t, eni.Fabric, eni.Peer, func(r *netnsRef, l netlink.Link) {
		family := netlink.FAMILY_V6
		if ip.Is4() {
			family = netlink.FAMILY_V4
		}
		ns, err := r.nl.NeighList(l.Attrs().Index, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.IP.Equal(ip.AsSlice()) {
				mac = n.HardwareAddr
			}
		}
	})
	return mac
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// icmpv6Checksum is the ICMPv6 checksum of msg (checksum field zero) with
// the IPv6 pseudo-header of src and dst.
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	var pseudo [8]byte
	binary.BigEndian.PutUint32(pseudo[0:4], uint32(len(msg)))
	pseudo[7] = unix.IPPROTO_ICMPV6
	add(pseudo[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestAnnounceIPv6AddrsRejectsAnythingButUnicastIPv6(t *testing.T) {
	needRoot(t)
	_, pod := podWithENI(t)
	for _, a := range []string{"ff02::1", "192.0.2.10", "::ffff:192.0.2.10", "::"} {
		if err := AnnounceIPv6Addrs(pod, "eth1", []netip.Addr{netip.MustParseAddr(a)}); err == nil {
			t.Errorf("AnnounceIPv6Addrs accepted %s", a)
		}
	}
}
