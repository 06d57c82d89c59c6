package nodebox

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// kubeletSysctls are the global sysctls kubelet sets unless they already
// hold these values (pkg/kubelet/cm setupKernelTunables). The box binds
// files holding them over /proc/sys in its mount namespace.
var kubeletSysctls = [][2]string{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// hiddenDirs are the machine's directories that containerd, the CNI library
// and kubelet use whatever their configuration says; the box mounts a tmpfs
// on each in its mount namespace.
var hiddenDirs = []string{"/run/netns", "/run/containerd", "/var/lib/cni", "/var/log/containers"}

// users of the API server, with their groups.
var users = [][2]string{
	{"admin", "system:masters"},
	{"kubelet", "system:masters,system:nodes"},
	{"kube-controller-manager", "system:masters"},
	{"kube-scheduler", "system:masters"},
	{"podnic-agent", ""},
}

func (b *Box) makeNamespaces(ctx context.Context, enis int) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range hiddenDirs {
		fmt.Fprintf(&script, "mkdir -p %[1]s; mount -t tmpfs -o mode=755 nodebox %[1]s\n", d)
	}
	script.WriteString("mount -t bpf bpffs /sys/fs/bpf\n")
	for _, s := range kubeletSysctls {
		f := filepath.Join(b.Dir, "sysctl", strings.ReplaceAll(s[0], "/", "."))
		if err := os.WriteFile(f, []byte(s[1]+"\n"), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&script, "mount --bind %s /proc/sys/%s\n", f, s[0])
	}
	fmt.Fprintf(&script, "ip link set lo up\ntouch %s\nexec sleep infinity\n", filepath.Join(b.Dir, "node.ready"))
	var err error
	b.Node, err = b.start("node", false, "unshare", "--mount", "--propagation", "slave", "--net", "--", "sh", "-c", script.String())
	if err != nil {
		return err
	}
	if err := b.saveState(); err != nil {
		return err
	}
	fabric := fmt.Sprintf(`set -e
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0
ip link add br0 type bridge
ip addr add %s/24 dev br0
ip addr add fd00:1::1/64 dev br0 nodad
ip link set br0 up
touch %s
exec sleep infinity
`, GatewayV4, filepath.Join(b.Dir, "fabric.ready"))
	if b.Fabric, err = b.start("fabric", false, "unshare", "--net", "--", "sh", "-c", fabric); err != nil {
		return err
	}
	if err := b.saveState(); err != nil {
		return err
	}
	for _, h := range []*proc{b.Node, b.Fabric} {
		ready := filepath.Join(b.Dir, h.Name+".ready")
		if err := waitFor(ctx, h, h.Name+" namespaces", 10*time.Second, func() error {
			_, err := os.Stat(ready)
			return err
		}); err != nil {
			return err
		}
	}

	// The node's primary NIC, then the ENIs waiting in the node.
	var links strings.Builder
	links.WriteString("set -e\n")
	fmt.Fprintf(&links, "ip link add node0 type veth peer name eth0 netns %d\nip link set node0 master br0 up\n", b.Node.PID)
	b.ENIs = nil
	for i := 1; i <= enis; i++ {
		mac := fmt.Sprintf("02:00:0a:01:00:%02x", i)
		b.ENIs = append(b.ENIs, mac)
		fmt.Fprintf(&links, "ip link add f%d type veth peer name eni%d address %s netns %d\nip link set f%d master br0 up\n",
			i, i, mac, b.Node.PID, i)
	}
	if out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(b.Fabric.PID), "-n", "sh", "-c", links.String()).CombinedOutput(); err != nil {
		return fmt.Errorf("making ENIs: %w\n%s", err, out)
	}
	node := fmt.Sprintf("set -e\nip addr add %s/24 dev eth0\nip link set eth0 up\nip route add default via %s\n", NodeIP, GatewayV4)
	if out, err := b.nsenter(ctx, false, "sh", "-c", node).CombinedOutput(); err != nil {
		return fmt.Errorf("configuring the node's eth0: %w\n%s", err, out)
	}
	return b.saveState()
}

// cgroupHierarchies are the cgroup v1 hierarchies kubelet uses.
func cgroupHierarchies() []string {
	var out []string
	for _, h := range []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb", "systemd", "unified"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", h, "cgroup.procs")); err == nil {
			out = append(out, h)
		}
	}
	return out
}

func (b *Box) makeCgroups() error {
	for _, h := range cgroupHierarchies() {
		if h == "unified" {
			continue // runc makes its own there
		}
		dir := filepath.Join("/sys/fs/cgroup", h, b.Cgroup)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		if h == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuset", f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("setting %s of %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

func (b *Box) writeConfigs() error {
	pki := filepath.Join(b.Dir, "pki")
	if err := writeServiceAccountKeys(pki); err != nil {
		return err
	}
	var tokens strings.Builder
	for _, u := range users {
		tok := make([]byte, 16)
		if _, err := rand.Read(tok); err != nil {
			return err
		}
		t := hex.EncodeToString(tok)
		fmt.Fprintf(&tokens, "%s,%s,%s-uid,\"%s\"\n", t, u[0], u[0], u[1])
		if err := os.WriteFile(filepath.Join(b.Dir, "kubeconfig-"+u[0]), []byte(kubeconfig(b.caFile(), u[0], t)), 0o600); err != nil {
			return err
		}
	}
	files := map[string]string{
		filepath.Join(pki, "tokens.csv"):                  tokens.String(),
		filepath.Join(b.Dir, "containerd", "config.toml"): b.containerdConfig(),
		filepath.Join(b.Dir, "kubelet", "config.yaml"):    b.kubeletConfig(),
		filepath.Join(b.Dir, "kubelet", "resolv.conf"):    "nameserver 127.0.0.1\n",
	}
	if !b.AgentDaemonSet { // the DaemonSet's agent installs its own
		files[filepath.Join(b.Dir, "cni", "net.d", "10-podnic.conflist")] = b.conflist("full")
		files[filepath.Join(b.Dir, "cni", "net.d-socket", "10-podnic.conflist")] = b.conflist("socket")
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (b *Box) caFile() string { return filepath.Join(b.Dir, "pki", "apiserver", "apiserver.crt") }

func (b *Box) token(user string) (string, error) {
	data, err := os.ReadFile(filepath.Join(b.Dir, "pki", "tokens.csv"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 2 && f[1] == user {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("no token for %s", user)
}

func (b *Box) startControlPlane(ctx context.Context) error {
	pki := filepath.Join(b.Dir, "pki")
	etcd, err := b.startDaemon("etcd", filepath.Join(b.K8sBin, "etcd"),
		"--name=nodebox", "--data-dir="+filepath.Join(b.Dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=nodebox=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, etcd, "etcd", readyTimeout, func() error { return b.getOK("http://127.0.0.1:2379/health", nil) }); err != nil {
		return err
	}
	api, err := b.startDaemon("kube-apiserver", filepath.Join(b.K8sBin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=6443",
		"--cert-dir="+filepath.Join(pki, "apiserver"),
		"--token-auth-file="+filepath.Join(pki, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+ServiceV4+","+ServiceV6,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true", "--profiling=false")
	if err != nil {
		return err
	}
	admin, err := b.token("admin")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, api, "kube-apiserver", readyTimeout, func() error {
		return b.getOK(APIServer+"/readyz", http.Header{"Authorization": {"Bearer " + admin}})
	}); err != nil {
		return err
	}
	for _, c := range []struct{ name, port string }{{"kube-controller-manager", "10257"}, {"kube-scheduler", "10259"}} {
		kc := filepath.Join(b.Dir, "kubeconfig-"+c.name)
		args := []string{filepath.Join(b.K8sBin, c.name),
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=" + c.port,
			"--cert-dir=" + filepath.Join(pki, c.name)}
		if c.name == "kube-controller-manager" {
			args = append(args, "--service-account-private-key-file="+filepath.Join(pki, "sa.key"),
				"--root-ca-file="+b.caFile(), "--cluster-name=nodebox")
		}
		if _, err := b.startDaemon(c.name, args...); err != nil {
			return err
		}
	}
	if b.AgentDaemonSet {
		return nil // the chart brings the agent's RBAC
	}
	if out, err := b.Kubectl(ctx, b.agentRBAC, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("granting podnic-agent its role: %w\n%s", err, out)
	}
	return nil
}

func (b *Box) containerdSocket() string { return filepath.Join(b.Dir, "containerd", "containerd.sock") }

func (b *Box) startRuntime(ctx context.Context) error {
	ctrd, err := b.startDaemon("containerd", "containerd", "--config", filepath.Join(b.Dir, "containerd", "config.toml"))
	if err != nil {
		return err
	}
	if err := waitFor(ctx, ctrd, "containerd", readyTimeout, func() error {
		return exec.CommandContext(ctx, "ctr", "--address", b.containerdSocket(), "version").Run()
	}); err != nil {
		return err
	}
	for _, img := range []string{"pause.tar", "echo.tar"} {
		cctx, cancel := context.WithTimeout(ctx, cmdTimeout)
		out, err := exec.CommandContext(cctx, "ctr", "--address", b.containerdSocket(), "-n", "k8s.io",
			"images", "import", filepath.Join(b.Dir, "images", img)).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("importing %s: %w\n%s", img, err, out)
		}
	}
	return nil
}

func (b *Box) startAgent(ctx context.Context) error {
	agent, err := b.startDaemon("podnic-agent", filepath.Join(b.Bin, "podnic-agent"),
		"--kubeconfig="+filepath.Join(b.Dir, "kubeconfig-podnic-agent"),
		"--node-name="+NodeName, "--bpf-root="+BPFRoot, "--socket="+b.AgentSocket(),
		"--ops-address=127.0.0.1:10266", "--service-cidr="+ServiceV4+","+ServiceV6)
	if err != nil {
		return err
	}
	return waitFor(ctx, agent, "podnic-agent", readyTimeout, func() error {
		if _, err := os.Stat(b.AgentSocket()); err != nil {
			return err
		}
		return b.getOK("http://127.0.0.1:10266/healthz", nil)
	})
}

// loadDatapath loads and pins podnic's programs and maps without an agent.
func (b *Box) loadDatapath(ctx context.Context) error {
	_, err := b.InNode(ctx, filepath.Join(b.Bin, "podnicctl"), "-bpf-root", BPFRoot, "-socket", "", "load")
	return err
}

// startKubelet starts kubelet and waits until its Node is Ready or, with
// ready false, registered.
func (b *Box) startKubelet(ctx context.Context, ready bool) error {
	kubelet, err := b.startDaemon("kubelet", filepath.Join(b.K8sBin, "kubelet"),
		"--config="+filepath.Join(b.Dir, "kubelet", "config.yaml"),
		"--kubeconfig="+filepath.Join(b.Dir, "kubeconfig-kubelet"),
		"--root-dir="+filepath.Join(b.Dir, "kubelet", "root"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP)
	if err != nil {
		return err
	}
	if !ready {
		return waitFor(ctx, kubelet, "node "+NodeName+" registered", readyTimeout, func() error {
			var node struct{}
			return b.apiGet("/api/v1/nodes/"+NodeName, &node)
		})
	}
	return b.waitNodeReady(ctx, kubelet)
}

// kubelet returns kubelet's process.
func (b *Box) kubelet() *proc {
	for _, p := range b.Procs {
		if p.Name == "kubelet" {
			return p
		}
	}
	return nil
}

// waitNodeReady waits until the Node is Ready, or kubelet exits.
func (b *Box) waitNodeReady(ctx context.Context, kubelet *proc) error {
	return waitFor(ctx, kubelet, "node "+NodeName+" Ready", readyTimeout, func() error {
		var node struct {
			Status struct {
				Conditions []struct{ Type, Status, Message string }
			}
		}
		if err := b.apiGet("/api/v1/nodes/"+NodeName, &node); err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == "Ready" {
				if c.Status == "True" {
					return nil
				}
				return fmt.Errorf("node not Ready (%s): %s", c.Status, c.Message)
			}
		}
		return errors.New("no Ready condition yet")
	})
}

func (b *Box) waitDefaultServiceAccount(ctx context.Context) error {
	return waitFor(ctx, nil, "ServiceAccount default/default", readyTimeout, func() error {
		var sa struct{}
		return b.apiGet("/api/v1/namespaces/default/serviceaccounts/default", &sa)
	})
}

// apiGet GETs path from the API server as admin and decodes the JSON.
func (b *Box) apiGet(path string, v any) error {
	admin, err := b.token("admin")
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, APIServer+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := b.httpInNode().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func writeServiceAccountKeys(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
}

func kubeconfig(ca, user, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: nodebox
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %s
  user: {token: %s}
contexts:
- name: %s
  context: {cluster: nodebox, user: %s}
current-context: %s
`, APIServer, ca, user, token, user, user, user)
}

func (b *Box) containerdConfig() string {
	d := filepath.Join(b.Dir, "containerd")
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # This VM denies a negative oom_score_adj even to root; without this
  # every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
%[9]s  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, filepath.Join(d, "root"), filepath.Join(d, "state"), b.containerdSocket(), b.containerdSocket()+".ttrpc",
		filepath.Join(d, "opt"), PauseImage, filepath.Join(b.Dir, "cni", "bin"), filepath.Join(b.Dir, "cni", "net.d"),
		b.socketPathRuntime())
}

// socketPathRuntime is containerd's runtime handler for RuntimeClass
// podnic-socket: the same runc, the CNI config of its own folder (podnic's
// socket path). A DaemonSet agent installs one config: no such handler.
func (b *Box) socketPathRuntime() string {
	if b.AgentDaemonSet {
		return ""
	}
	return fmt.Sprintf(`    # RuntimeClass podnic-socket: the same runc, the CNI config of its own
    # folder (podnic's socket path).
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s]
      runtime_type = "io.containerd.runc.v2"
      cni_conf_dir = %q
      cni_max_conf_num = 1
`, SocketPathClass, filepath.Join(b.Dir, "cni", "net.d-socket"))
}

func (b *Box) kubeletConfig() string {
	k := filepath.Join(b.Dir, "kubelet")
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host is cgroup v1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
podLogsDir: %[3]s
volumePluginDir: %[4]s
resolvConf: %[5]s
address: %[6]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# The global sysctls kubelet wants are bound over /proc/sys already holding
# its values; never write the machine's.
protectKernelDefaults: true
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
serializeImagePulls: false
`, b.Cgroup, b.containerdSocket(), filepath.Join(k, "pod-logs"), filepath.Join(k, "volume-plugins"),
		filepath.Join(k, "resolv.conf"), NodeIP)
}

// conflist is the node's CNI config for pods on servicePath path. Both
// share the network name, the ENI pool, podnic's state and its IPAM store.
func (b *Box) conflist(path string) string {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "podnic",
		"plugins": []any{map[string]any{
			"type":         "podnic",
			"servicePath":  path,
			"devicePool":   map[string]any{"macs": b.ENIs},
			"bpfRoot":      BPFRoot,
			"stateDir":     filepath.Join(b.Dir, "cni", "state"),
			"serviceCIDRs": []string{ServiceV4, ServiceV6},
			"ipam": map[string]any{
				"type":    "podnic",
				"dataDir": filepath.Join(b.Dir, "cni", "ipam"),
				"ranges": [][]map[string]string{
					{{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.250", "gateway": GatewayV4}},
					{{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10", "rangeEnd": "fd00:1::ff", "gateway": "fd00:1::1"}},
				},
			},
		}},
	}
	data, _ := json.MarshalIndent(conf, "", "  ")
	return string(data)
}
