package netdevice

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// AnnounceIPv6Addrs tells the fabric that addrs, IPv6 addresses on ifname
// in the pod netns at podNetns, now live behind its MAC, so that
// neighbours and switches forget the MAC they cached for them: an
// unsolicited neighbour advertisement with the override flag to ff02::1
// (RFC 4861 §7.2.6) per address, sent once. The link must be up and the
// addresses usable (ConfigureAddrs adds them with IFA_F_NODAD, so the
// kernel sends no advertisement itself). IPv4 addresses need no call:
// the kernel announces them as ConfigureAddrs sets the link up.
//
// The advertisements leave through a raw ICMPv6 socket, not a packet
// socket: closing a packet socket waits for an RCU grace period (10-15 ms
// on a busy node), closing this one does not. The kernel fills in the
// checksum.
func AnnounceIPv6Addrs(podNetns, ifname string, addrs []netip.Addr) error {
	for _, a := range addrs {
		if !a.Is6() || a.Is4In6() || a.IsMulticast() || a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("announcing addresses on %s: %v is not a unicast IPv6 address", ifname, a)
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	var (
		fd  = -1
		ifi *net.Interface
	)
	err := InNetns(podNetns, func() error {
		var err error
		if ifi, err = net.InterfaceByName(ifname); err != nil {
			return fmt.Errorf("looking up %s: %w", ifname, err)
		}
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return fmt.Errorf("opening ICMPv6 socket: %w", err)
		}
		return nil
	})
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if err != nil {
		return fmt.Errorf("announcing addresses on %s: %w", ifname, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("announcing addresses on %s: not an Ethernet device (MAC %q)", ifname, ifi.HardwareAddr)
	}
	if err := prepareNDSocket(fd); err != nil {
		return fmt.Errorf("announcing addresses on %s: %w", ifname, err)
	}

	allNodes := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(ifi.Index)}
	var errs []error
	for _, a := range addrs {
		// The source is the address itself, on this interface.
		oob := unix.PktInfo6(&unix.Inet6Pktinfo{Addr: a.As16(), Ifindex: uint32(ifi.Index)})
		if err := unix.Sendmsg(fd, neighbourAdvertisement(ifi.HardwareAddr, a), oob, allNodes, 0); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("announcing addresses on %s: %w", ifname, err)
	}
	return nil
}

// prepareNDSocket makes fd send neighbour discovery to a multicast group:
// hop limit 255 (receivers drop neighbour discovery with any other), no
// copy looped back to the pod, and nothing ever queued for reading.
func prepareNDSocket(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		return fmt.Errorf("setting multicast hop limit: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, 0); err != nil {
		return fmt.Errorf("disabling multicast loopback: %w", err)
	}
	blockAll := unix.ICMPv6Filter{Data: [8]uint32{^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0)}}
	if err := unix.SetsockoptICMPv6Filter(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &blockAll); err != nil {
		return fmt.Errorf("setting ICMPv6 filter: %w", err)
	}
	return nil
}

// neighbourAdvertisement is the ICMPv6 message of an unsolicited
// advertisement of ip at mac: override flag set, not router, not
// solicited, with the target link-layer address option. The checksum is
// left zero for the kernel.
func neighbourAdvertisement(mac net.HardwareAddr, ip netip.Addr) []byte {
	m := make([]byte, 24+8) // header and target, then the option
	m[0] = 136              // neighbour advertisement
	m[4] = 0x20             // flags: override
	target := ip.As16()
	copy(m[8:24], target[:])
	m[24], m[25] = 2, 1 // option: target link-layer address, 8 bytes
	copy(m[26:32], mac)
	return m
}
