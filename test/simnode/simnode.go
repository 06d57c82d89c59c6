package simnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/netdevice"
)

// Gateway addresses every pod routes through.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	GatewayV6 = netip.MustParseAddr("fe80::1")
)

// PodIfname is the name of a pod's NIC.
const PodIfname = "eth0"

// Timeout bounds every command and network operation of the helpers.
const Timeout = 10 * time.Second

const (
	netnsDir = "/run/netns"
)

var nodeSeq atomic.Uint32

// netnsMu serialises `ip netns add` within the process: the first call
// after boot sets up the /run/netns mount, and two racing first calls
// could stack mounts and hide each other's namespaces.
var netnsMu sync.Mutex

// Node is a simulated node: a fabric namespace and the pods attached to it.
type Node struct {
	t           testing.TB
	Prefix      string // prefix of every namespace of this node
	FabricNetns string // name of the fabric namespace
	FabricPath  string // its path, for netdevice.InNetns

	mu   sync.Mutex
	pods map[string]*Pod
	port int
}

// Pod is a pod namespace with eth0 attached to the fabric.
type Pod struct {
	node      *Node
	Name      string
	Netns     string // namespace name, for `ip netns exec`
	NetnsPath string
	Ifname    string // eth0
	Peer      string // the fabric end of the pod's veth
	IPv4      netip.Addr
	IPv6      netip.Addr

	mu      sync.Mutex
	deleted bool
}

// New builds an empty node and deletes it when the test ends. It skips
// the test when not run as root.
func New(t testing.TB) *Node {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("simnode needs root to create network namespaces")
	}
	prefix := fmt.Sprintf("pnsim%d-%d", os.Getpid(), nodeSeq.Add(1))
	n := &Node{t: t, Prefix: prefix, FabricNetns: prefix + "-fabric", pods: map[string]*Pod{}}
	n.FabricPath = filepath.Join(netnsDir, n.FabricNetns)
	if err := addNetns(n.FabricNetns); err != nil {
		t.Fatalf("creating fabric netns: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNetns(n.FabricNetns); err != nil {
			t.Errorf("deleting fabric netns %s: %v", n.FabricNetns, err)
		}
	})
	err := netdevice.InNetns(n.FabricPath, func() error {
		for _, s := range [][2]string{
			{"net/ipv4/ip_forward", "1"},
			{"net/ipv6/conf/all/forwarding", "1"},
			{"net/ipv4/conf/all/rp_filter", "0"},
			{"net/ipv4/conf/default/rp_filter", "0"},
			{"net/ipv4/conf/all/arp_ignore", "0"},
		} {
			if err := sysctl(s[0], s[1]); err != nil {
				return err
			}
		}
		if err := linkUp("lo"); err != nil {
			return err
		}
		// The gateway address is local to the fabric, so every port
		// answers ARP for it (arp_ignore=0). lo holds it: this kernel
		// has no dummy driver.
		return addAddr("lo", netip.PrefixFrom(GatewayV4, 32))
	})
	if err != nil {
		t.Fatalf("setting up fabric: %v", err)
	}
	return n
}

// AddPod creates a pod namespace named after name, with eth0 holding v4
// and v6 (either may be the zero Prefix), and routes to and from it. Use
// single-address prefixes (/32, /128) to send all traffic through the
// gateway. The pod is deleted when the test ends.
func (n *Node) AddPod(name string, v4, v6 netip.Prefix) *Pod {
	t := n.t
	t.Helper()
	n.mu.Lock()
	if _, ok := n.pods[name]; ok {
		n.mu.Unlock()
		t.Fatalf("pod %s exists", name)
	}
	n.port++
	p := &Pod{
		node:   n,
		Name:   name,
		Netns:  n.Prefix + "-" + name,
		Ifname: PodIfname,
		Peer:   fmt.Sprintf("pod%d", n.port),
		IPv4:   v4.Addr(),
		IPv6:   v6.Addr(),
	}
	p.NetnsPath = filepath.Join(netnsDir, p.Netns)
	n.pods[name] = p
	n.mu.Unlock()

	if err := addNetns(p.Netns); err != nil {
		t.Fatalf("creating netns of pod %s: %v", name, err)
	}
	t.Cleanup(func() {
		// The fabric end first, by name: deleting it deletes the pair.
		err := netdevice.InNetns(n.FabricPath, func() error {
			l, err := netlink.LinkByName(p.Peer)
			if errors.As(err, &netlink.LinkNotFoundError{}) {
				return nil
			}
			if err != nil {
				return err
			}
			// The kernel may be removing the pair already (its pod end's
			// netns went away): gone is what we want.
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return err
			}
			return nil
		})
		if err != nil {
			t.Errorf("deleting link %s of pod %s: %v", p.Peer, name, err)
		}
		if err := p.DeleteNetns(); err != nil {
			t.Errorf("deleting pod %s: %v", name, err)
		}
	})

	if err := n.wirePod(p, v4, v6); err != nil {
		t.Fatalf("wiring pod %s: %v", name, err)
	}
	return p
}

func (n *Node) wirePod(p *Pod, v4, v6 netip.Prefix) error {
	podNs, err := unix.Open(p.NetnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", p.NetnsPath, err)
	}
	defer unix.Close(podNs)

	// The pod's end is made on the fabric and moved in, as a cloud NIC
	// comes from the host: it keeps an ifindex no other pod has (made
	// inside the pod's netns, every pod's NIC would be ifindex 2).
	tmp := p.Peer + "p"
	err = netdevice.InNetns(n.FabricPath, func() error {
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: p.Peer},
			PeerName:  tmp,
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth %s: %w", p.Peer, err)
		}
		end, err := netlink.LinkByName(tmp)
		if err != nil {
			return fmt.Errorf("finding veth end %s: %w", tmp, err)
		}
		if err := netlink.LinkSetNsFd(end, podNs); err != nil {
			return fmt.Errorf("moving veth end %s into the pod: %w", tmp, err)
		}
		for _, s := range [][2]string{
			{"net/ipv6/conf/" + p.Peer + "/accept_dad", "0"},
			{"net/ipv4/conf/" + p.Peer + "/proxy_arp", "1"},
			{"net/ipv4/neigh/" + p.Peer + "/proxy_delay", "0"},
			{"net/ipv4/conf/" + p.Peer + "/rp_filter", "0"},
		} {
			if err := sysctl(s[0], s[1]); err != nil {
				return err
			}
		}
		if err := addAddr(p.Peer, netip.PrefixFrom(GatewayV6, 64)); err != nil {
			return err
		}
		if err := linkUp(p.Peer); err != nil {
			return err
		}
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if a.IsValid() {
				if err := addRoute(p.Peer, netip.PrefixFrom(a, a.BitLen()), netip.Addr{}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fabric side: %w", err)
	}

	err = netdevice.InNetns(p.NetnsPath, func() error {
		end, err := netlink.LinkByName(tmp)
		if err != nil {
			return fmt.Errorf("finding veth end %s: %w", tmp, err)
		}
		if err := netlink.LinkSetName(end, p.Ifname); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", tmp, p.Ifname, err)
		}
		if err := linkUp("lo"); err != nil {
			return err
		}
		for _, s := range [][2]string{
			{"net/ipv4/conf/lo/accept_local", "1"},
			{"net/ipv6/conf/" + p.Ifname + "/accept_dad", "0"},
		} {
			if err := sysctl(s[0], s[1]); err != nil {
				return err
			}
		}
		for _, pfx := range []netip.Prefix{v4, v6} {
			if pfx.IsValid() {
				if err := addAddr(p.Ifname, pfx); err != nil {
					return err
				}
			}
		}
		if err := linkUp(p.Ifname); err != nil {
			return err
		}
		if v4.IsValid() {
			if err := addRoute(p.Ifname, netip.PrefixFrom(GatewayV4, 32), netip.Addr{}); err != nil {
				return err
			}
			if err := addRoute(p.Ifname, netip.MustParsePrefix("0.0.0.0/0"), GatewayV4); err != nil {
				return err
			}
		}
		if v6.IsValid() {
			if err := addRoute(p.Ifname, netip.MustParsePrefix("::/0"), GatewayV6); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pod side: %w", err)
	}
	return nil
}

// Pod returns the pod called name, or nil.
func (n *Node) Pod(name string) *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pods[name]
}

// DeleteNetns deletes the pod's namespace, as a container runtime does
// when the pod goes away; the namespace itself lives on while anything
// (a socket, a process) still holds it. Deleting twice is not an error.
func (p *Pod) DeleteNetns() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deleted {
		return nil
	}
	if err := deleteNetns(p.Netns); err != nil {
		return err
	}
	p.deleted = true
	return nil
}

// Do runs fn inside the pod's namespace.
func (p *Pod) Do(fn func() error) error { return netdevice.InNetns(p.NetnsPath, fn) }

// Run runs a command inside the pod's namespace and returns its combined
// output.
func (p *Pod) Run(args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", p.Netns}, args...)...)
}

// Run runs a command inside the fabric namespace.
func (n *Node) Run(args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", n.FabricNetns}, args...)...)
}

// Addr returns the pod's IPv6 address if v6, else its IPv4 address.
func (p *Pod) Addr(v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

// ServeTCPEcho serves TCP on port, all addresses of both families, in the
// pod: every line a client sends is answered with "<pod name> <line>". It
// stops when the test ends.
func (p *Pod) ServeTCPEcho(t testing.TB, port uint16) {
	t.Helper()
	ln := p.listenTCP(t, port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(Timeout))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, p.Name+" "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// ServeHTTP serves HTTP on port in the pod, answering every request with
// "<pod name> <client address>". It stops when the test ends.
func (p *Pod) ServeHTTP(t testing.TB, port uint16) {
	t.Helper()
	ln := p.listenTCP(t, port)
	srv := &http.Server{
		ReadHeaderTimeout: Timeout,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s", p.Name, r.RemoteAddr)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

func (p *Pod) listenTCP(t testing.TB, port uint16) net.Listener {
	t.Helper()
	var ln net.Listener
	err := p.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening on tcp port %d in pod %s: %v", port, p.Name, err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// ServeUDPEcho serves UDP on port in the pod: every datagram is answered
// with "<pod name> <payload>". It stops when the test ends.
func (p *Pod) ServeUDPEcho(t testing.TB, port uint16) {
	t.Helper()
	var pc net.PacketConn
	err := p.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening on udp port %d in pod %s: %v", port, p.Name, err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte(p.Name+" "), buf[:n]...), from)
		}
	}()
}

// Dial connects from inside the pod ("tcp" or "udp"). The connection may
// be used from any goroutine; it is bounded by timeout as a whole.
func (p *Pod) Dial(network string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	return p.DialContext(context.Background(), network, addr.String(), timeout)
}

// DialContext connects from inside the pod to address (host:port).
func (p *Pod) DialContext(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from pod %s: %w", network, address, p.Name, err)
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	return c, nil
}

// TCPEcho sends msg as one line to a ServeTCPEcho server at addr and
// returns the answer line without its newline.
func (p *Pod) TCPEcho(addr netip.AddrPort, msg string, timeout time.Duration) (string, error) {
	c, err := p.Dial("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", fmt.Errorf("writing to %s: %w", addr, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading from %s: %w", addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// UDPEcho sends msg in one datagram from a connected socket and returns
// the answer, which must come from addr.
func (p *Pod) UDPEcho(addr netip.AddrPort, msg string, timeout time.Duration) (string, error) {
	c, err := p.Dial("udp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, msg); err != nil {
		return "", fmt.Errorf("writing to %s: %w", addr, err)
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("reading from %s: %w", addr, err)
	}
	return string(buf[:n]), nil
}

// HTTPGet fetches url from inside the pod and returns the body.
func (p *Pod) HTTPGet(url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			return p.DialContext(ctx, network, address, timeout)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return "", fmt.Errorf("fetching %s from pod %s: %w", url, p.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("fetching %s: %s", url, resp.Status)
	}
	return string(body), nil
}

func addNetns(name string) error {
	netnsMu.Lock()
	defer netnsMu.Unlock()
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	// A namespace file that is not nsfs means a racing first `ip netns
	// add` hid our mount; fail loudly instead of using the wrong netns.
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(netnsDir, name), &st); err != nil {
		return fmt.Errorf("checking netns %s: %w", name, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("checking netns %s: %s is not an nsfs mount", name, filepath.Join(netnsDir, name))
	}
	return nil
}

func deleteNetns(name string) error {
	_, err := run("ip", "netns", "delete", name)
	return err
}

func run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// sysctl writes a sysctl of the calling thread's namespace (key as a
// path below /proc/sys).
func sysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

func addAddr(dev string, p netip.Prefix) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s: %w", dev, err)
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding %s to %s: %w", p, dev, err)
	}
	return nil
}

// addRoute adds dst on dev, through gw when it is valid, on-link when not.
func addRoute(dev string, dst netip.Prefix, gw netip.Addr) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s: %w", dev, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst)}
	if gw.IsValid() {
		r.Gw = net.IP(gw.AsSlice())
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %s via %s dev %s: %w", dst, gw, dev, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// CgroupV2 returns the machine's cgroup v2 mount as find (bpf.CgroupV2Mount)
// reports it, or mounts the hierarchy in a temporary directory until the
// test ends: where podnic's socket-level programs attach.
func CgroupV2(t testing.TB, find func() (string, error)) string {
	t.Helper()
	if p, err := find(); err != nil || p != "" {
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	dir := t.TempDir()
	if err := unix.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mounting cgroup v2: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}
