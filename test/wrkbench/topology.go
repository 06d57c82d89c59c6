package wrkbench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/test/simnode"
)

// Addresses; see the plan in doc.go.
var (
	backendIPs = []netip.Addr{netip.MustParseAddr("10.244.1.11"), netip.MustParseAddr("10.244.1.12")}
	// serviceEndpoints are the endpoints of the benchmarked Services: the
	// one backend the direct case targets, so every path ends in the same
	// server process. With both backends behind the Service, two server
	// processes share the pinned server CPU and cost more per request than
	// the direct ceiling with one (measured: podnic keep-alive 0.83× direct
	// with two endpoints, 1.02× with one) — that compares CPUs, not paths.
	serviceEndpoints = backendIPs[:1]
	directIP         = netip.MustParseAddr("10.244.2.1")
	tcxIP            = netip.MustParseAddr("10.244.2.2")
	legacyIP         = netip.MustParseAddr("10.244.2.3")
	tcOnlyIP         = netip.MustParseAddr("10.244.2.4")
	socketPathIP     = netip.MustParseAddr("10.244.2.5")
	serviceCIDR      = netip.MustParsePrefix("10.96.0.0/12")
	benchVIP         = netip.MustParseAddr("10.96.0.10")
	fillVIPStart     = netip.MustParseAddr("10.96.100.0")
)

const (
	servicePort = 80
	backendPort = 8080
	benchSvcID  = 1
)

const (
	stopTimeout = 10 * time.Second // SIGTERM to SIGKILL
	cmdTimeout  = 30 * time.Second // one ip, nft or iptables command
)

// proc is a child process stopped by its own PID when the test ends.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startProc starts args[0] with args, output to dir/name.log; it is
// stopped (SIGTERM, then SIGKILL) at cleanup, and killed by the kernel if
// the test binary dies first.
func startProc(t testing.TB, dir, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatalf("creating log of %s: %v", name, err)
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.Env = env
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			t.Logf("%s (pid %d) had exited: %v; log %s:\n%s", name, p.cmd.Process.Pid, p.cmd.ProcessState, p.log, tailFile(p.log, 4<<10))
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s log (%s) ---\n%s", name, p.log, tailFile(p.log, 8<<10))
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// run runs a command with cmdTimeout and returns its combined output.
func run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// runAll runs the commands in order and stops at the first failure.
func runAll(cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := run(c...); err != nil {
			return err
		}
	}
	return nil
}

// testbed is the simulated node: backends, clients and their datapaths.
type testbed struct {
	node     *simnode.Node
	backends []*proc
	direct   *simnode.Pod
	tcx      *simnode.Pod
	legacy   *simnode.Pod
	tcOnly   *simnode.Pod // podnic by TCX with socket-level balancing off
	sockPath *simnode.Pod // podnic on the socket path: podnic_guard alone
	datapath *bpf.Datapath
}

// newTestbed builds the fabric, the backends (serving, pinned to
// cpuServer) and the pod clients; the podnic clients get the datapath
// attached with TCX and with legacy tc, holding the bench Service, with
// connect() balanced at the socket (peerNames: getpeername() names the
// Service) except for the tc-only client; the socket-path client gets
// podnic_guard alone (bpf.PathSocket). minimal runs the backends with
// podnic-echo --minimal.
func newTestbed(t *testing.T, echo, dir string, peerNames, minimal bool) *testbed {
	t.Helper()
	tb := &testbed{node: simnode.New(t)}
	for i, ip := range backendIPs {
		name := fmt.Sprintf("backend%d", i+1)
		pod := tb.node.AddPod(name, netip.PrefixFrom(ip, 32), netip.Prefix{})
		args := []string{"ip", "netns", "exec", pod.Netns, "taskset", "-c", cpuServer,
			echo, "--name", name, "--listen", fmt.Sprintf(":%d", backendPort)}
		if minimal {
			args = append(args, "--minimal")
		}
		tb.backends = append(tb.backends, startProc(t, dir, name, nil, args...))
	}
	tb.direct = tb.node.AddPod("direct", netip.PrefixFrom(directIP, 32), netip.Prefix{})
	tb.tcx = tb.node.AddPod("tcx", netip.PrefixFrom(tcxIP, 32), netip.Prefix{})
	tb.legacy = tb.node.AddPod("legacy", netip.PrefixFrom(legacyIP, 32), netip.Prefix{})
	tb.tcOnly = tb.node.AddPod("tconly", netip.PrefixFrom(tcOnlyIP, 32), netip.Prefix{})
	tb.sockPath = tb.node.AddPod("sockpath", netip.PrefixFrom(socketPathIP, 32), netip.Prefix{})
	for _, p := range []*simnode.Pod{tb.direct, tb.tcx, tb.legacy, tb.tcOnly, tb.sockPath} {
		if err := tuneClient(p.Netns); err != nil {
			t.Fatal(err)
		}
	}

	root := fmt.Sprintf("/sys/fs/bpf/podnic-wrkbench-%d", os.Getpid())
	// Registered before Load: a build the verifier refuses leaves the
	// maps Load pinned before it loaded the programs.
	t.Cleanup(func() {
		if err := bpf.Unpin(root); err != nil {
			t.Errorf("unpinning podnic: %v", err)
		}
	})
	d, err := bpf.Load(root)
	if err != nil {
		t.Fatalf("loading podnic: %v", err)
	}
	tb.datapath = d
	t.Cleanup(func() {
		for _, p := range []*simnode.Pod{tb.tcx, tb.legacy, tb.tcOnly, tb.sockPath} {
			if err := bpf.DetachPod(root, p.Netns, p.NetnsPath); err != nil {
				t.Errorf("detaching podnic from %s: %v", p.Name, err)
			}
		}
		d.Close()
	})
	if err := d.Maps.UpsertService(serviceEntry(benchSvcID, benchVIP)); err != nil {
		t.Fatalf("adding the bench Service to podnic: %v", err)
	}
	// As podnic-agent runs: the Service CIDR known, connect() balanced
	// at the socket.
	if err := d.Maps.SetServiceCIDRs([]netip.Prefix{serviceCIDR}); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachSocketLB(simnode.CgroupV2(t, bpf.CgroupV2Mount), peerNames); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		pod  *simnode.Pod
		mode bpf.Mode
		path bpf.ServicePath
	}{
		{tb.tcx, bpf.ModeTCX, bpf.PathFull}, {tb.legacy, bpf.ModeLegacy, bpf.PathFull},
		{tb.tcOnly, bpf.ModeTCX, bpf.PathFull}, {tb.sockPath, bpf.ModeTCX, bpf.PathSocket},
	} {
		if _, err := d.AttachPodPath(a.pod.NetnsPath, simnode.PodIfname, a.pod.Netns, a.mode, a.path); err != nil {
			t.Fatalf("attaching podnic to %s: %v", a.pod.Name, err)
		}
	}
	if err := bpf.OptOutSocketLB(root, tb.tcOnly.Netns); err != nil {
		t.Fatal(err)
	}

	// The servers listen once they answer; this also proves the routes.
	deadline := time.Now().Add(20 * time.Second)
	for _, ip := range backendIPs {
		url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(ip, backendPort))
		for {
			_, err := tb.direct.HTTPGet(url, time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("backend %s does not answer: %v", ip, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return tb
}

// tuneClient widens the client's port range: short-connection runs open
// tens of thousands of connections.
func tuneClient(netns string) error {
	return runAll(
		[]string{"ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"},
		[]string{"ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"},
	)
}

func serviceEntry(id uint32, vip netip.Addr) bpf.ServiceEntry {
	s := bpf.ServiceEntry{
		Frontend: bpf.Frontend{VIP: vip, Port: servicePort, Proto: bpf.TCP},
		ID:       id,
	}
	for i, ip := range serviceEndpoints {
		s.Backends = append(s.Backends, bpf.BackendEntry{
			ID:    uint32(i + 1),
			Addr:  netip.AddrPortFrom(ip, backendPort),
			State: bpf.BackendActive,
		})
	}
	return s
}

// fillVIP is the VIP of the i-th extra Service (0-based).
// maxFillServices bounds the Services a phase may have (-wrkbench.services).
const maxFillServices = 30000

func fillVIP(i int) netip.Addr {
	a := fillVIPStart.As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += uint32(i)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// redrawVIP is the VIP of the Service added before round r to make
// kube-proxy sync again; it lies past every fill VIP.
func redrawVIP(r int) netip.Addr { return fillVIP(maxFillServices + r) }

// fillPodnic adds extra Services to podnic's maps, so that n are present.
func (tb *testbed) fillPodnic(n int) error {
	for i := 0; i < n-1; i++ {
		if err := tb.datapath.Maps.UpsertService(serviceEntry(uint32(benchSvcID+1+i), fillVIP(i))); err != nil {
			return fmt.Errorf("filling podnic with %d Services: %w", n, err)
		}
	}
	return nil
}

// proxyNode is a namespace that routes between client namespaces of its
// own and the fabric; kube-proxy runs in it.
type proxyNode struct {
	pod         *simnode.Pod // the node, a pod on the fabric
	idx         int
	clientNetns string
	clientIP    netip.Addr
}

// addProxyNode adds node number idx (1-based) at 10.244.3.idx with a
// client at 10.245.idx.2 behind it.
func (tb *testbed) addProxyNode(t *testing.T, name string, idx int) *proxyNode {
	t.Helper()
	nodeIP := netip.AddrFrom4([4]byte{10, 244, 3, byte(idx)})
	pn := &proxyNode{
		pod: tb.node.AddPod(name, netip.PrefixFrom(nodeIP, 32), netip.Prefix{}),
		idx: idx,
	}
	gw := pn.gateway()
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 245, byte(idx), 0}), 24)
	err := runAll(
		[]string{"ip", "netns", "exec", pn.pod.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		[]string{"ip", "netns", "exec", pn.pod.Netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"},
		[]string{"ip", "-n", tb.node.FabricNetns, "route", "add", subnet.String(), "via", nodeIP.String(), "dev", pn.pod.Peer},
	)
	if err != nil {
		t.Fatalf("wiring %s: %v", name, err)
	}
	pn.clientNetns, pn.clientIP = tb.addNodeClient(t, pn, name+"-client", 2, gw)
	return pn
}

// addNodeClient adds a client namespace at 10.245.idx.host behind the
// proxy node, on a link of its own, and returns it and its address.
// Clients of different paths must not share an address: the node's
// conntrack would hold a closing flow of one path (client:port to the
// backend) whose reply tuple a new connection of the other path (client:
// port to the VIP, translated to the same backend) cannot take — its SYN
// is dropped and sent again a second later.
func (tb *testbed) addNodeClient(t *testing.T, pn *proxyNode, netns string, host byte, gw netip.Addr) (string, netip.Addr) {
	t.Helper()
	netns = tb.node.Prefix + "-" + netns
	ip := netip.AddrFrom4([4]byte{10, 245, byte(pn.idx), host})
	if _, err := run("ip", "netns", "add", netns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := run("ip", "netns", "delete", netns); err != nil {
			t.Errorf("deleting %s: %v", netns, err)
		}
	})
	nd := pn.pod.Netns
	peer := fmt.Sprintf("client%d", host)
	args := [][]string{
		{"ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", peer, "netns", nd},
		{"ip", "-n", netns, "link", "set", "lo", "up"},
		{"ip", "-n", netns, "link", "set", "eth0", "up"},
		{"ip", "-n", netns, "addr", "add", netip.PrefixFrom(ip, 32).String(), "dev", "eth0"},
		{"ip", "-n", netns, "route", "add", gw.String(), "dev", "eth0", "scope", "link"},
		{"ip", "-n", netns, "route", "add", "default", "via", gw.String(), "dev", "eth0"},
		{"ip", "-n", nd, "link", "set", peer, "up"},
	}
	if host == 2 {
		// The first client brings the gateway address to the node.
		args = append(args, []string{"ip", "-n", nd, "addr", "add", netip.PrefixFrom(gw, 32).String(), "dev", peer})
	}
	args = append(args, []string{"ip", "-n", nd, "route", "add", ip.String(), "dev", peer, "src", gw.String()})
	if err := runAll(args...); err != nil {
		t.Fatalf("wiring %s: %v", netns, err)
	}
	if err := tuneClient(netns); err != nil {
		t.Fatal(err)
	}
	return netns, ip
}

// gateway is the node's address towards its clients.
func (pn *proxyNode) gateway() netip.Addr {
	return netip.AddrFrom4([4]byte{10, 245, byte(pn.idx), 1})
}
