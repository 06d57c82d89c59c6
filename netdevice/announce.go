package netdevice

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// AnnounceAddrs tells the fabric that addrs now live behind ifname in the
// pod netns at podNetns, so that neighbours and switches forget the MAC
// they cached for them: a gratuitous ARP (an ARP announcement, RFC 5227)
// per IPv4 address and an unsolicited neighbour advertisement with the
// override flag to ff02::1 (RFC 4861 §7.2.6) per IPv6 address. Each is
// sent once, through a packet socket opened in the pod netns; the link
// must be up.
func AnnounceAddrs(podNetns, ifname string, addrs []netip.Addr) error {
	var (
		fd    = -1
		index int
		mac   net.HardwareAddr
	)
	err := InNetns(podNetns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("looking up %s: %w", ifname, err)
		}
		index, mac = ifi.Index, ifi.HardwareAddr
		// Protocol 0: the socket only sends and never queues packets.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("announcing addresses on %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	if len(mac) != 6 {
		return fmt.Errorf("announcing addresses on %s: not an Ethernet device (MAC %q)", ifname, mac)
	}

	var errs []error
	for _, a := range addrs {
		a = a.Unmap()
		var (
			frame []byte
			proto uint16
		)
		switch {
		case a.Is4():
			frame, proto = arpAnnouncement(mac, a), unix.ETH_P_ARP
		case a.Is6() && !a.IsMulticast() && !a.IsUnspecified():
			frame, proto = unsolicitedNA(mac, a), unix.ETH_P_IPV6
		default:
			errs = append(errs, fmt.Errorf("%v: not a unicast address", a))
			continue
		}
		sa := &unix.SockaddrLinklayer{Ifindex: index, Protocol: htons(proto), Halen: 6}
		copy(sa.Addr[:], frame[0:6])
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("announcing addresses on %s: %w", ifname, err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arpAnnouncement builds a broadcast ARP request whose sender and target
// address are both ip, padded to Ethernet's 60-byte minimum.
func arpAnnouncement(mac net.HardwareAddr, ip netip.Addr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_ARP)
	arp := f[14:]
	binary.BigEndian.PutUint16(arp[0:2], 1)             // hardware: Ethernet
	binary.BigEndian.PutUint16(arp[2:4], unix.ETH_P_IP) // protocol: IPv4
	arp[4], arp[5] = 6, 4                               // address lengths
	binary.BigEndian.PutUint16(arp[6:8], 1)             // request
	copy(arp[8:14], mac)                                // sender MAC
	ip4 := ip.As4()
	copy(arp[14:18], ip4[:]) // sender IP
	// target MAC stays zero
	copy(arp[24:28], ip4[:]) // target IP
	return f
}

// unsolicitedNA builds a neighbour advertisement for ip to all nodes
// (ff02::1), from ip itself, override flag set, with the target
// link-layer address option.
func unsolicitedNA(mac net.HardwareAddr, ip netip.Addr) []byte {
	const icmpLen = 24 + 8 // header and target, then the option
	allNodes := netip.MustParseAddr("ff02::1").As16()
	src := ip.As16()

	f := make([]byte, 14+40+icmpLen)
	copy(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}) // ff02::1's multicast MAC
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_IPV6)

	ip6 := f[14:54]
	ip6[0] = 6 << 4
	binary.BigEndian.PutUint16(ip6[4:6], icmpLen)
	ip6[6] = unix.IPPROTO_ICMPV6
	ip6[7] = 255 // receivers drop neighbour discovery with any other hop limit
	copy(ip6[8:24], src[:])
	copy(ip6[24:40], allNodes[:])

	icmp := f[54:]
	icmp[0] = 136  // neighbour advertisement
	icmp[4] = 0x20 // flags: override; not router, not solicited
	copy(icmp[8:24], src[:])
	icmp[24], icmp[25] = 2, 1 // option: target link-layer address, 8 bytes
	copy(icmp[26:32], mac)
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(src, allNodes, icmp))
	return f
}

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
