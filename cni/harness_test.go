package cni_test

// The plugin is tested as a container runtime uses it: built to a binary
// and invoked through libcni, on a simulated node.
//
// Simulated node (inside namespaces the tests create; nothing leaves them):
//
//	fabric netns   bridge br0 10.1.0.1/24, fd00:1::1/64, forwarding — the VPC
//	ENI n          veth: "pnN-eni" waits in the host netns with MAC
//	               02:00:0a:01:NN:NN, its peer sits on br0
//	pod netns      created per pod, empty until ADD
//	pool           podnic IPAM 10.1.0.10-10.1.0.250, fd00:1::10-fd00:1::ff
//	Service VIPs   10.96.0.0/16 and fd00:96::/108, routed via the gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnic/podnic/bpf"
)

// upstreamPlugins is the containernetworking/plugins release tests use.
const upstreamPlugins = "v1.9.1"

// binDir holds the podnic plugin and the upstream plugins tests use.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Getuid() != 0 {
			fmt.Println("cni tests need root: skipping")
			return 0
		}
		dir, err := os.MkdirTemp("", "podnic-cni-bin-")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		if out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/podnic/podnic/cni/cmd/podnic").CombinedOutput(); err != nil {
			fmt.Printf("building the podnic plugin: %v\n%s", err, out)
			return 1
		}
		// The upstream plugins, from the Go module proxy with their own
		// go.mod, as a node would install them.
		for _, pkg := range []string{"ipam/host-local", "ipam/static", "main/host-device", "main/bridge", "main/macvlan"} {
			cmd := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/"+pkg+"@"+upstreamPlugins)
			cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Printf("installing %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

var seq atomic.Int32

// node is a simulated node: a fabric with a bridge, a datapath loaded into
// a root of its own, and a state and IPAM dir of its own.
type node struct {
	t        testing.TB
	prefix   string
	fabric   string
	root     string
	stateDir string
	ipamDir  string
	dp       *bpf.Datapath
	cni      *libcni.CNIConfig
}

func sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newNode(t testing.TB) *node {
	t.Helper()
	n := &node{t: t, prefix: fmt.Sprintf("pn%d%c", os.Getpid()%10000, 'a'+rune(seq.Add(1)%26))}
	n.fabric = n.prefix + "-fab"
	n.root = filepath.Join("/sys/fs/bpf", n.prefix)
	n.stateDir = t.TempDir()
	n.ipamDir = t.TempDir()
	sh(t, "ip", "netns", "add", n.fabric)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.fabric).Run() })
	sh(t, "ip", "-n", n.fabric, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", n.fabric, "addr", "add", "10.1.0.1/24", "dev", "br0")
	sh(t, "ip", "-n", n.fabric, "addr", "add", "fd00:1::1/64", "dev", "br0", "nodad")
	sh(t, "ip", "-n", n.fabric, "link", "set", "br0", "up")
	sh(t, "ip", "-n", n.fabric, "link", "set", "lo", "up")
	// The VPC routes: a DNATed packet leaves the pod towards the gateway's
	// MAC with a backend's address, and the fabric forwards it on.
	sh(t, "ip", "netns", "exec", n.fabric, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	dp, err := bpf.Load(n.root)
	if err != nil {
		t.Fatalf("loading datapath: %v", err)
	}
	n.dp = dp
	t.Cleanup(func() {
		dp.Close()
		_ = bpf.Unpin(n.root)
	})
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
	return n
}

// eni is a NIC attached to the node, waiting in the host netns.
type eni struct {
	name string
	mac  net.HardwareAddr
	mtu  int
}

// addENI stands an ENI in: a veth end in the host netns with its own MAC,
// its peer on the fabric bridge.
func (n *node) addENI(i int) eni {
	t := n.t
	t.Helper()
	e := eni{name: fmt.Sprintf("%s-e%d", n.prefix, i), mac: net.HardwareAddr{2, 0, 0x0a, 1, byte(seq.Load()), byte(i)}, mtu: 1500}
	peer := fmt.Sprintf("f%d", i)
	sh(t, "ip", "link", "add", e.name, "address", e.mac.String(), "type", "veth", "peer", "name", peer, "netns", n.fabric)
	sh(t, "ip", "-n", n.fabric, "link", "set", peer, "master", "br0", "up")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", e.name).Run() })
	return e
}

// pod is a pod sandbox: an empty netns the runtime would create.
type pod struct {
	id    string
	netns string
	name  string
}

func (n *node) addPod(name string) pod {
	t := n.t
	t.Helper()
	ns := n.prefix + "-" + name
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	return pod{id: fmt.Sprintf("%s%032x", name, seq.Add(1)), netns: "/run/netns/" + ns, name: ns}
}

// conf is the plugin config for a test, as JSON, with overrides.
func (n *node) conf(version string, over map[string]any) []byte {
	c := map[string]any{
		"cniVersion":   version,
		"name":         "eni-pool",
		"type":         "podnic",
		"bpfRoot":      n.root,
		"stateDir":     n.stateDir,
		"serviceCIDRs": []string{"10.96.0.0/16", "fd00:96::/108"},
		"ipam": map[string]any{
			"type":    "podnic",
			"dataDir": n.ipamDir,
			"ranges": [][]map[string]string{
				{{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.250", "gateway": "10.1.0.1"}},
				{{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10", "rangeEnd": "fd00:1::ff", "gateway": "fd00:1::1"}},
			},
		},
	}
	for k, v := range over {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

// list wraps one plugin config into a conflist, as runtimes load them.
func (n *node) list(confs ...[]byte) *libcni.NetworkConfigList {
	n.t.Helper()
	var plugins []json.RawMessage
	var version, name any
	for _, c := range confs {
		var m map[string]any
		if err := json.Unmarshal(c, &m); err != nil {
			n.t.Fatal(err)
		}
		if version == nil {
			version, name = m["cniVersion"], m["name"]
		}
		delete(m, "cniVersion")
		delete(m, "name")
		b, _ := json.Marshal(m)
		plugins = append(plugins, b)
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": version, "name": name, "plugins": plugins})
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		n.t.Fatalf("parsing conflist: %v\n%s", err, b)
	}
	return l
}

// heldAddresses lists the addresses podnic's IPAM holds on the node.
func (n *node) heldAddresses() []string {
	n.t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.ipamDir, "eni-pool"))
	if err != nil && !os.IsNotExist(err) {
		n.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func (p pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.id, NetNS: p.netns, IfName: "eth0"}
}

func (n *node) add(l *libcni.NetworkConfigList, p pod) (*types100.Result, error) {
	n.t.Helper()
	return addVia(n.t, n.cni, l, p.rt())
}

// addVia runs ADD through c and converts the result to the current
// version's.
func addVia(t testing.TB, c *libcni.CNIConfig, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*types100.Result, error) {
	t.Helper()
	r, err := c.AddNetworkList(context.Background(), l, rt)
	if err != nil {
		return nil, err
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		t.Fatalf("converting result: %v", err)
	}
	return res, nil
}

func (n *node) del(l *libcni.NetworkConfigList, p pod) error {
	n.t.Helper()
	return n.cni.DelNetworkList(context.Background(), l, p.rt())
}

// cniCode returns the CNI error code of err, or 0.
func cniCode(err error) uint {
	var te *types.Error
	if !errors.As(err, &te) {
		return 0
	}
	return te.Code
}
