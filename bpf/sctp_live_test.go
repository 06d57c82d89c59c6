package bpf

// SCTP associations through a Service, between pods of a simulated node.
// The host kernel has no SCTP (no modules here), so this runs in the Linux
// 6.1 VM (test/vm), which loads Debian's sctp module; on a kernel without
// SCTP sockets it skips. Address plan as in attach_test.go, plus:
//
//	SCTP VIP   10.96.0.14:36412   [fd00:96::14]:36412  -> server :38412
//	no-backend 10.96.0.15:36412   [fd00:96::15]:36412
//	self       10.96.0.16:36412   [fd00:96::16]:36412  -> client :38412

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/podnic/podnic/test/simnode"
	"golang.org/x/sys/unix"
)

var (
	simSCTPV4     = netip.MustParseAddr("10.96.0.14")
	simSCTPV6     = netip.MustParseAddr("fd00:96::14")
	simSCTPNoneV4 = netip.MustParseAddr("10.96.0.15")
	simSCTPNoneV6 = netip.MustParseAddr("fd00:96::15")
	simSCTPSelfV4 = netip.MustParseAddr("10.96.0.16")
	simSCTPSelfV6 = netip.MustParseAddr("fd00:96::16")
)

const (
	simSCTPPort    = 36412
	simSCTPBackend = 38412
)

// An SCTP association reaches a Service's backend on another port and
// carries data both ways, in both families, with the NIC's CRC offload on
// (the local stack leaves the CRC to the device: CHECKSUM_PARTIAL, the
// field zero) and off (the stack computes it, the programs update it for
// the new port, and the receiving stack checks it: a wrong CRC drops the
// INIT, and the association never comes up). A Service without endpoints
// refuses the association at once (the programs' ABORT).
func TestSCTPAssociationThroughAService(t *testing.T) {
	for _, mode := range attachModes {
		t.Run(string(mode), func(t *testing.T) {
			if !haveSCTP() {
				t.Skip("this kernel has no SCTP sockets (the VM test runs this with Debian's sctp module)")
			}
			d := loadTest(t)
			client, server := trafficPods(t, d)
			for i, s := range []struct{ vip, backend netip.Addr }{{simSCTPV4, server.IPv4}, {simSCTPV6, server.IPv6}, {simSCTPSelfV4, client.IPv4}, {simSCTPSelfV6, client.IPv6}} {
				err := d.Maps.UpsertService(ServiceEntry{
					Frontend: Frontend{VIP: s.vip, Port: simSCTPPort, Proto: SCTP},
					ID:       uint32(300 + i),
					Backends: []BackendEntry{{ID: uint32(300 + i), Addr: netip.AddrPortFrom(s.backend, simSCTPBackend)}},
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			for i, vip := range []netip.Addr{simSCTPNoneV4, simSCTPNoneV6} {
				if err := d.Maps.UpsertService(ServiceEntry{Frontend: Frontend{VIP: vip, Port: simSCTPPort, Proto: SCTP}, ID: uint32(310 + i)}); err != nil {
					t.Fatal(err)
				}
			}
			attachPod(t, d, client, mode)
			for _, vip := range []netip.Addr{simSCTPNoneV4, simSCTPNoneV6} {
				addr := netip.AddrPortFrom(vip, simSCTPPort)
				t.Run(addr.String()+"/no-endpoints", func(t *testing.T) {
					start := time.Now()
					err := client.Do(func() error {
						fd, err := sctpSocket(vip)
						if err != nil {
							return err
						}
						defer unix.Close(fd)
						return unix.Connect(fd, sockaddr(addr))
					})
					if !errors.Is(err, syscall.ECONNREFUSED) {
						t.Fatalf("connect: %v, want connection refused", err)
					}
					if took := time.Since(start); took > time.Second {
						t.Errorf("refusal took %s: the INIT was not answered at once", took)
					}
				})
			}
			for _, offload := range []bool{true, false} {
				for _, p := range []*simnode.Pod{client, server} {
					if err := p.Do(func() error { return setTxChecksum(p.Ifname, offload) }); err != nil {
						t.Fatal(err)
					}
				}
				for _, vip := range []netip.Addr{simSCTPV4, simSCTPV6} {
					addr := netip.AddrPortFrom(vip, simSCTPPort)
					t.Run(fmt.Sprintf("%s/offload=%v", addr, offload), func(t *testing.T) {
						delta := verdictDelta(t, d, verdict(DirFromPod, ReasonDNATNew), verdict(DirToPod, ReasonRevNAT))
						got, err := sctpEcho(t, client, server, addr, netip.AddrPortFrom(server.Addr(vip.Is6()), simSCTPBackend), 0, "hello over SCTP")
						if err != nil {
							t.Fatalf("%v (verdicts dnat-new, rev-nat: %v)", err, delta())
						}
						if got[0] != "echo: hello over SCTP" {
							t.Fatalf("answer %q", got[0])
						}
						if n := delta(); n[0] != 1 || n[1] == 0 {
							t.Errorf("verdicts dnat-new %d, rev-nat %d; want one new flow translated, and its replies", n[0], n[1])
						}
					})
				}
			}
			// Self access: the client's association to a Service whose
			// backend is itself, over lo.
			for _, vip := range []netip.Addr{simSCTPSelfV4, simSCTPSelfV6} {
				addr := netip.AddrPortFrom(vip, simSCTPPort)
				t.Run(addr.String()+"/self", func(t *testing.T) {
					delta := verdictDelta(t, d, verdict(DirFromPod, ReasonSelf))
					got, err := sctpEcho(t, client, client, addr, netip.AddrPortFrom(client.Addr(vip.Is6()), simSCTPBackend), 0, "to myself")
					if err != nil {
						t.Fatalf("%v (self-access verdicts: %v)", err, delta())
					}
					if got[0] != "echo: to myself" {
						t.Fatalf("answer %q", got[0])
					}
					if n := delta(); n[0] == 0 {
						t.Error("no packet went the self-access way")
					}
				})
			}
			// A dual-stack server on [::] lists both its addresses in its
			// INIT ACK. Were they to reach the client, it would confirm
			// those paths with HEARTBEATs straight to the server on the
			// Service port, where no association is, and take the ABORT
			// that answers them (within a few seconds): the association
			// must outlive that.
			for _, vip := range []netip.Addr{simSCTPV4, simSCTPV6} {
				addr := netip.AddrPortFrom(vip, simSCTPPort)
				t.Run(addr.String()+"/server-on-any", func(t *testing.T) {
					got, err := sctpEcho(t, client, server, addr, netip.AddrPortFrom(netip.IPv6Unspecified(), simSCTPBackend), 8*time.Second, "first", "eight seconds later")
					if err != nil {
						t.Fatal(err)
					}
					if got[1] != "echo: eight seconds later" {
						t.Fatalf("answers %q", got)
					}
				})
			}
		})
	}
}

// haveSCTP reports whether this kernel makes SCTP sockets.
func haveSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// sctpEcho listens on listen in server's netns, connects from client's to
// addr, sends each of msgs, pause apart, on one association, and returns
// what the server answered to each ("echo: " + msg). Every wait is bounded
// by simTimeout.
func sctpEcho(t *testing.T, client, server *simnode.Pod, addr, listen netip.AddrPort, pause time.Duration, msgs ...string) ([]string, error) {
	t.Helper()
	var ln int
	if err := server.Do(func() error {
		var err error
		ln, err = sctpSocket(listen.Addr())
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(ln, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fmt.Errorf("SO_REUSEADDR: %w", err)
		}
		if listen.Addr().Is6() {
			// [::] takes both families, as a dual-stack server does.
			if err := unix.SetsockoptInt(ln, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return fmt.Errorf("IPV6_V6ONLY: %w", err)
			}
		}
		if err := unix.Bind(ln, sockaddr(listen)); err != nil {
			return fmt.Errorf("binding %s: %w", listen, err)
		}
		return unix.Listen(ln, 4)
	}); err != nil {
		return nil, fmt.Errorf("listening on %s: %w", listen, err)
	}
	defer unix.Close(ln)
	served := make(chan error, 1)
	go func() {
		c, _, err := unix.Accept(ln)
		if err != nil {
			served <- fmt.Errorf("accepting: %w", err)
			return
		}
		defer unix.Close(c)
		if err := setTimeouts(c, pause); err != nil {
			served <- err
			return
		}
		buf := make([]byte, 256)
		for range msgs {
			n, err := unix.Read(c, buf)
			if err != nil {
				served <- fmt.Errorf("server reading: %w", err)
				return
			}
			if _, err := unix.Write(c, append([]byte("echo: "), buf[:n]...)); err != nil {
				served <- fmt.Errorf("server writing: %w", err)
				return
			}
		}
		served <- nil
	}()

	var answers []string
	err := client.Do(func() error {
		fd, err := sctpSocket(addr.Addr())
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sockaddr(addr)); err != nil {
			return fmt.Errorf("connecting to %s: %w", addr, err)
		}
		buf := make([]byte, 256)
		for i, msg := range msgs {
			if i > 0 {
				time.Sleep(pause)
			}
			if _, err := unix.Write(fd, []byte(msg)); err != nil {
				return fmt.Errorf("sending message %d: %w", i+1, err)
			}
			n, err := unix.Read(fd, buf)
			if err != nil {
				return fmt.Errorf("client reading answer %d: %w", i+1, err)
			}
			answers = append(answers, string(buf[:n]))
		}
		return nil
	})
	if err != nil {
		_ = unix.Shutdown(ln, unix.SHUT_RDWR) // ends a waiting accept
		<-served
		return nil, err
	}
	select {
	case err := <-served:
		if err != nil {
			return nil, err
		}
	case <-time.After(simTimeout + pause):
		return nil, errors.New("the server never finished")
	}
	return answers, nil
}

// sctpSocket makes a one-to-one style SCTP socket of a's family whose
// connect, accept and reads give up after simTimeout.
func sctpSocket(a netip.Addr) (int, error) {
	family := unix.AF_INET
	if a.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return -1, fmt.Errorf("making an SCTP socket: %w", err)
	}
	if err := setTimeouts(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setTimeouts bounds fd's connect, accept, reads and writes by
// simTimeout, plus extra.
func setTimeouts(fd int, extra ...time.Duration) error {
	d := simTimeout
	for _, e := range extra {
		d += e
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return fmt.Errorf("setting socket timeouts: %w", err)
		}
	}
	return nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// setTxChecksum turns the transmit checksum offloads of ifname, SCTP's
// CRC32c among them, on or off (ETHTOOL_STXCSUM, `ethtool -K ifname tx`),
// in the calling thread's netns.
func setTxChecksum(ifname string, on bool) error {
	const ethtoolSTXCSUM = 0x17
	val := struct{ cmd, data uint32 }{cmd: ethtoolSTXCSUM}
	if on {
		val.data = 1
	}
	// struct ifreq with ifr_data: a pointer the garbage collector sees.
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&val)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return fmt.Errorf("setting tx checksum offload of %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("setting tx checksum offload of %s: %w", ifname, syscall.Errno(errno))
	}
	return nil
}
