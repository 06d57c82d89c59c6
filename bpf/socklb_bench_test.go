package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/test/simnode"
)

// BenchmarkSocketLBConnect measures what socket-level balancing costs per
// TCP connection, side by side in one run: a pod connects, over lo, to a
// Service whose backend is the pod itself, asks getpeername() (as Go's
// net.Dial does), and closes; the pod's server accepts (the kernel runs
// the getpeername hook for accept() as well) and closes.
//
//   - pod-ip: straight to the pod's own address; the hooks run and leave
//     the socket alone (the floor).
//   - service: balanced at the socket, getpeername() names the backend.
//   - service+peer-names: balanced, getpeername() names the Service.
//
// Besides ns/op (wall time of the sequential loop) it reports cpu-ns/op,
// the process's CPU time per connection (client and server are both in
// this process). The difference between the last two rows is what
// --socket-lb-peer-name costs. Connections are closed with a reset, so
// no port waits in TIME_WAIT.
func BenchmarkSocketLBConnect(b *testing.B) {
	d := loadTest(b)
	n := simnode.New(b)
	pod := n.AddPod("client", simClientV4, simClientV6)
	if _, err := d.AttachPod(pod.NetnsPath, pod.Ifname, simOwner, ModeAuto); err != nil {
		b.Fatal(err)
	}
	self := netip.AddrPortFrom(pod.IPv4, simBackendPort)
	if err := d.Maps.UpsertService(ServiceEntry{
		Frontend: Frontend{VIP: simSelfV4, Port: simServicePort, Proto: TCP},
		ID:       1,
		Backends: []BackendEntry{{ID: 1, Addr: self}},
	}); err != nil {
		b.Fatal(err)
	}
	cg := simnode.CgroupV2(b, CgroupV2Mount)
	b.Cleanup(func() {
		if err := DetachSocketLB(d.Root); err != nil {
			b.Error(err)
		}
	})
	stop := acceptAndClose(b, pod, simBackendPort)
	defer stop()

	for _, c := range []struct {
		name      string
		to        netip.AddrPort
		peerNames bool
		balanced  bool
	}{
		{"pod-ip", self, false, false},
		{"service", netip.AddrPortFrom(simSelfV4, simServicePort), false, true},
		{"service+peer-names", netip.AddrPortFrom(simSelfV4, simServicePort), true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			if err := d.AttachSocketLB(cg, c.peerNames); err != nil {
				b.Fatal(err)
			}
			// One connection first: it must go where the case says.
			peer, err := connectClose(pod, c.to, 1)
			if err != nil {
				b.Fatal(err)
			}
			want := self
			if c.balanced && c.peerNames {
				want = c.to
			}
			if peer != want {
				b.Fatalf("getpeername says %s, want %s", peer, want)
			}
			var before, after unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_SELF, &before)
			b.ResetTimer()
			if _, err := connectClose(pod, c.to, b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			_ = unix.Getrusage(unix.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// connectClose connects to addr from the pod count times, reading the
// peer name and closing with a reset each time; it returns the last peer
// name.
func connectClose(pod *simnode.Pod, addr netip.AddrPort, count int) (netip.AddrPort, error) {
	var peer netip.AddrPort
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	err := pod.Do(func() error {
		for range count {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("creating a socket: %w", err)
			}
			err = unix.Connect(fd, sa)
			if err == nil {
				var got unix.Sockaddr
				got, err = unix.Getpeername(fd)
				if in4, ok := got.(*unix.SockaddrInet4); ok {
					peer = netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
				}
			}
			if err == nil {
				err = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("connecting to %s: %w", addr, err)
			}
		}
		return nil
	})
	return peer, err
}

// acceptAndClose listens on port in the pod and closes every connection
// it accepts, on a thread of its own; stop ends it.
func acceptAndClose(b *testing.B, pod *simnode.Pod, port uint16) (stop func()) {
	b.Helper()
	var lfd int
	err := pod.Do(func() error {
		var err error
		lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: int(port)}); err != nil {
			return err
		}
		return unix.Listen(lfd, 1024)
	})
	if err != nil {
		b.Fatalf("listening in pod %s: %v", pod.Name, err)
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(done)
		for {
			fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			if err != nil {
				return // the listener was shut down
			}
			_ = unix.Close(fd)
		}
	}()
	return func() {
		_ = unix.Shutdown(lfd, unix.SHUT_RDWR)
		<-done
		_ = unix.Close(lfd)
	}
}
