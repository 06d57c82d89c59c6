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
// the getpeername hook for accept() as well) and closes. Three cases:
//
//   - pod-ip: straight to the pod's own address; connect4 runs and leaves
//     the socket alone (the floor).
//   - service: balanced at the socket, getpeername() names the backend.
//   - peer-names: balanced, getpeername() names the Service.
//
// The cases take turns in chunks of connections (the programs are switched
// between chunks, outside the measurement), so that drift over the run
// falls on all three alike. Per case it reports the wall time and the
// process's CPU time per connection (client and server are both in this
// process; the kernel's work for them is charged to it), and the two
// differences that matter: balancing (service - pod-ip) and peer names
// (peer-names - service). Connections are closed with a reset, so no port
// waits in TIME_WAIT.
func BenchmarkSocketLBConnect(b *testing.B) {
	d := loadTest(b)
	n := simnode.New(b)
	pod := n.AddPod("client", simClientV4, simClientV6)
	if _, err := d.AttachPod(pod.NetnsPath, pod.Ifname, simOwner, ModeAuto); err != nil {
		b.Fatal(err)
	}
	self := netip.AddrPortFrom(pod.IPv4, simBackendPort)
	vip := netip.AddrPortFrom(simSelfV4, simServicePort)
	if err := d.Maps.UpsertService(ServiceEntry{
		Frontend: Frontend{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP},
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

	cases := []struct {
		name      string
		to        netip.AddrPort
		peerNames bool
		peer      netip.AddrPort // what getpeername must say
		wall, cpu time.Duration
	}{
		{name: "pod-ip", to: self, peer: self},
		{name: "service", to: vip, peer: self},
		{name: "peer-names", to: vip, peerNames: true, peer: vip},
	}
	const chunk = 500
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		count := min(chunk, b.N-done)
		for i := range cases {
			c := &cases[i]
			b.StopTimer()
			if err := d.AttachSocketLB(cg, c.peerNames); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			cpu0 := processCPU()
			t0 := time.Now()
			peer, err := connectClose(pod, c.to, count)
			c.wall += time.Since(t0)
			c.cpu += processCPU() - cpu0
			if err != nil {
				b.Fatal(err)
			}
			if peer != c.peer {
				b.Fatalf("%s: getpeername says %s, want %s", c.name, peer, c.peer)
			}
		}
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	for _, c := range cases {
		b.ReportMetric(per(c.wall), c.name+"-ns/conn")
		b.ReportMetric(per(c.cpu), c.name+"-cpu-ns/conn")
	}
	b.ReportMetric(per(cases[1].cpu-cases[0].cpu), "balancing-cost-cpu-ns/conn")
	b.ReportMetric(per(cases[2].cpu-cases[1].cpu), "peer-names-cost-cpu-ns/conn")
	b.ReportMetric(0, "ns/op") // three cases per op: see the cases' own figures
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
