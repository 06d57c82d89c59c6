package cni_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"

	"github.com/podnic/podnic/bpf"
)

var versions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

type ipLink struct {
	Ifindex   int    `json:"ifindex"`
	Ifname    string `json:"ifname"`
	Address   string `json:"address"`
	MTU       int    `json:"mtu"`
	OperState string `json:"operstate"`
	Flags     []string
	AddrInfo  []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

// link describes an interface in a netns ("" for the host).
func link(t *testing.T, netnsName, ifname string) (ipLink, bool) {
	t.Helper()
	args := []string{"-j", "addr", "show", "dev", ifname}
	if netnsName != "" {
		args = append([]string{"-n", netnsName}, args...)
	}
	out, err := exec.Command("ip", args...).Output()
	if err != nil {
		return ipLink{}, false
	}
	var ls []ipLink
	if err := json.Unmarshal(out, &ls); err != nil || len(ls) != 1 {
		t.Fatalf("parsing ip output %s: %v", out, err)
	}
	return ls[0], true
}

func (l ipLink) addrs() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Scope == "global" {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	return out
}

func routes(t *testing.T, netnsName string, v6 bool) string {
	t.Helper()
	fam := "-4"
	if v6 {
		fam = "-6"
	}
	return sh(t, "ip", fam, "-n", netnsName, "route", "show")
}

// attachedPrograms lists the programs on an interface of a pod.
func attachedPrograms(t *testing.T, p pod, ifname string) []string {
	t.Helper()
	as, err := bpf.QueryInterface(p.netns, ifname)
	if err != nil {
		t.Fatalf("querying %s: %v", ifname, err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.Hook.String()+":"+a.ProgramName)
	}
	slices.Sort(out)
	return out
}

func (n *node) pins(t *testing.T) []bpf.Attachment {
	t.Helper()
	as, err := bpf.ListAttachments(n.root)
	if err != nil {
		t.Fatal(err)
	}
	return as
}

// expectBackOnHost checks the ENI is in the host netns as it was.
func expectBackOnHost(t *testing.T, e eni) {
	t.Helper()
	l, ok := link(t, "", e.name)
	if !ok {
		t.Fatalf("ENI %s is not back on the host", e.name)
	}
	if !strings.EqualFold(l.Address, e.mac.String()) || l.MTU != e.mtu {
		t.Errorf("ENI %s back with MAC %s MTU %d, want %s %d", e.name, l.Address, l.MTU, e.mac, e.mtu)
	}
}

// expectNoProgramsOnHost waits until no program is attached to the ENI in
// the host: DEL leaves the kernel to detach the pod's TCX links after it
// returns (they run a pass-through program meanwhile), which takes a few
// RCU grace periods.
func expectNoProgramsOnHost(t *testing.T, e eni) {
	t.Helper()
	var as []bpf.Attachment
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for {
		var err error
		if as, err = bpf.QueryInterface("", e.name); err != nil {
			t.Fatalf("querying %s: %v", e.name, err)
		}
		if len(as) == 0 {
			t.Logf("%s had no program left %v after DEL", e.name, time.Since(start).Round(time.Millisecond))
			return
		}
		for _, a := range as {
			if a.ProgramName != bpf.PassThroughProgram {
				t.Fatalf("%s runs %s on the host after DEL", e.name, a)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("programs still on %s 5s after DEL: %v", e.name, as)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAddGivesThePodItsNICAndDelReturnsIt(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			n := newNode(t)
			e := n.addENI(1)
			p := n.addPod("pod")
			l := n.list(n.conf(v, map[string]any{"deviceMAC": e.mac.String(), "mtu": 1400}))

			r, err := n.add(l, p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			// The result speaks the config's version.
			if r.CNIVersion != "1.1.0" && v != "0.3.1" && v != "0.4.0" {
				t.Errorf("result version %s", r.CNIVersion)
			}
			if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "eth0" || r.Interfaces[0].Sandbox != p.netns || !strings.EqualFold(r.Interfaces[0].Mac, e.mac.String()) {
				t.Errorf("result interfaces %+v", r.Interfaces)
			}
			if len(r.IPs) != 2 {
				t.Fatalf("result IPs %v, want one IPv4 and one IPv6", r.IPs)
			}

			in, ok := link(t, p.name, "eth0")
			if !ok {
				t.Fatal("eth0 missing from the pod")
			}
			if !strings.EqualFold(in.Address, e.mac.String()) || in.MTU != 1400 || !slices.Contains(in.Flags, "UP") {
				t.Errorf("pod eth0: MAC %s MTU %d flags %v", in.Address, in.MTU, in.Flags)
			}
			for _, ip := range r.IPs {
				if !slices.Contains(in.addrs(), ip.Address.String()) {
					t.Errorf("pod eth0 lacks %s (has %v)", ip.Address.String(), in.addrs())
				}
			}
			if _, ok := link(t, "", e.name); ok {
				t.Error("ENI still visible on the host")
			}
			r4, r6 := routes(t, p.name, false), routes(t, p.name, true)
			for _, want := range []string{"default via 10.1.0.1 dev eth0", "10.96.0.0/16 via 10.1.0.1 dev eth0"} {
				if !strings.Contains(r4, want) {
					t.Errorf("pod routes lack %q:\n%s", want, r4)
				}
			}
			for _, want := range []string{"default via fd00:1::1 dev eth0", "fd00:96::/108 via fd00:1::1 dev eth0"} {
				if !strings.Contains(r6, want) {
					t.Errorf("pod routes lack %q:\n%s", want, r6)
				}
			}
			if got := attachedPrograms(t, p, "eth0"); !slices.Equal(got, []string{"egress:podnic_from_pod", "ingress:podnic_to_pod"}) {
				t.Errorf("programs on eth0: %v", got)
			}
			if got := attachedPrograms(t, p, "lo"); !slices.Equal(got, []string{"egress:podnic_lo_out"}) {
				t.Errorf("programs on lo: %v", got)
			}
			// The NIC's TCX links were made in the host, before the move,
			// and moved with the device.
			for _, a := range n.pins(t) {
				if a.Ifname == "eth0" && (a.Mode != bpf.ModeTCX || a.Ifindex != in.Ifindex) {
					t.Errorf("pin %s: mode %s ifindex %d, want tcx on the pod's eth0 (%d)", a, a.Mode, a.Ifindex, in.Ifindex)
				}
			}
			if out := sh(t, "ip", "netns", "exec", p.name, "sysctl", "-n", "net.ipv4.conf.lo.accept_local"); strings.TrimSpace(out) != "1" {
				t.Errorf("lo accept_local = %s, want 1", out)
			}

			if err := n.cni.CheckNetworkList(t.Context(), l, p.rt()); err != nil && v != "0.3.1" {
				t.Errorf("CHECK after ADD: %v", err)
			}

			if err := n.del(l, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			expectBackOnHost(t, e)
			if as := n.pins(t); len(as) != 0 {
				t.Errorf("pins left after DEL: %+v", as)
			}
			if held := n.heldAddresses(); len(held) != 0 {
				t.Errorf("addresses still held after DEL: %v", held)
			}
			expectNoProgramsOnHost(t, e)
		})
	}
}

// The kernel detaches a deleted pod's TCX links after DEL returns. An ADD
// of the same device right after gets its own links, which run, and the
// old ones go without taking the new ones along.
func TestAddRightAfterDelOfTheSameDeviceRunsOnlyTheNewPodsPrograms(t *testing.T) {
	for _, mode := range []string{"auto", "tcx"} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			e := n.addENI(1)
			l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String(), "attachMode": mode}))
			first, second := n.addPod("first"), n.addPod("second")
			if _, err := n.add(l, first); err != nil {
				t.Fatalf("first ADD: %v", err)
			}
			if err := n.del(l, first); err != nil {
				t.Fatalf("first DEL: %v", err)
			}
			if _, err := n.add(l, second); err != nil {
				t.Fatalf("second ADD right after DEL: %v", err)
			}
			want := []string{"egress:podnic_from_pod", "ingress:podnic_to_pod"}
			// Until the kernel has detached them, the first pod's links
			// run the pass-through program before the second pod's.
			start := time.Now()
			deadline := start.Add(5 * time.Second)
			got := attachedPrograms(t, second, "eth0")
			t.Logf("programs on the second pod's eth0 right after ADD: %v", got)
			for ; !slices.Equal(got, want); got = attachedPrograms(t, second, "eth0") {
				for _, g := range got {
					if _, name, _ := strings.Cut(g, ":"); name != bpf.PassThroughProgram && !slices.Contains(want, g) {
						t.Fatalf("programs on the second pod's eth0: %v", got)
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("programs on the second pod's eth0 5s after ADD: %v, want %v", got, want)
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("only the second pod's programs on eth0 %v after ADD", time.Since(start).Round(time.Millisecond))
			as := n.pins(t)
			if len(as) != 3 {
				t.Fatalf("pins after the second ADD: %+v", as)
			}
			for _, a := range as {
				if a.Owner != as[0].Owner || a.ProgramName == bpf.PassThroughProgram {
					t.Errorf("pin after the second ADD: %s", a)
				}
			}
			if err := n.cni.CheckNetworkList(t.Context(), l, second.rt()); err != nil {
				t.Errorf("CHECK of the second pod: %v", err)
			}
			if err := n.del(l, second); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
			expectBackOnHost(t, e)
			expectNoProgramsOnHost(t, e)
			if as := n.pins(t); len(as) != 0 {
				t.Errorf("pins left after DEL: %+v", as)
			}
		})
	}
}

func TestResultIsPrintedInTheConfigVersion(t *testing.T) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	// The 0.4.0 result has no "mtu" field and "version" per IP; decode raw.
	net, err := libcni.NetworkPluginConfFromBytes(n.conf("0.4.0", map[string]any{"deviceMAC": e.mac.String()}))
	if err != nil {
		t.Fatal(err)
	}
	r, err := n.cni.AddNetwork(t.Context(), net, p.rt())
	if err != nil {
		t.Fatal(err)
	}
	defer n.cni.DelNetwork(t.Context(), net, p.rt())
	r040, ok := r.(*types040.Result)
	if !ok {
		t.Fatalf("result type %T, want 0.4.0", r)
	}
	if len(r040.IPs) != 2 || r040.IPs[0].Version != "4" {
		t.Errorf("0.4.0 IPs %+v", r040.IPs)
	}
}

func TestDelIsIdempotentAndSurvivesAMissingNetnsOrDevice(t *testing.T) {
	for _, v := range versions {
		for _, c := range []string{"twice", "netns-gone", "device-gone", "never-added"} {
			t.Run(v+"/"+c, func(t *testing.T) { delCase(t, v, c) })
		}
	}
}

func delCase(t *testing.T, v, c string) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	l := n.list(n.conf(v, map[string]any{"deviceMAC": e.mac.String()}))
	if c != "never-added" {
		if _, err := n.add(l, p); err != nil {
			t.Fatal(err)
		}
	}
	switch c {
	case "netns-gone":
		// A veth end dies with its netns; a physical ENI would come
		// back to the host. Either way DEL must succeed.
		sh(t, "ip", "netns", "del", p.name)
	case "device-gone":
		sh(t, "ip", "-n", p.name, "link", "del", "eth0")
	}
	for i := range 2 {
		if err := n.del(l, p); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if as := n.pins(t); len(as) != 0 {
		t.Errorf("pins left: %+v", as)
	}
	if c == "twice" {
		expectBackOnHost(t, e)
	}
	if held := n.heldAddresses(); len(held) != 0 {
		t.Errorf("addresses still held: %v", held)
	}
	// The next pod, on another ENI, gets its addresses.
	e2 := n.addENI(2)
	p2 := n.addPod("pod2")
	l2 := n.list(n.conf(v, map[string]any{"deviceMAC": e2.mac.String()}))
	if _, err := n.add(l2, p2); err != nil {
		t.Fatal(err)
	}
	_ = n.del(l2, p2)
}

func TestBadConfigIsRefusedAndChangesNothing(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) { badConfigCases(t, v) })
	}
}

func badConfigCases(t *testing.T, v string) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	for _, c := range []struct {
		name string
		over map[string]any
		code uint
		want string
	}{
		{"no device", map[string]any{}, types.ErrInvalidNetworkConfig, "no device"},
		{"two devices", map[string]any{"deviceMAC": e.mac.String(), "deviceName": e.name}, types.ErrInvalidNetworkConfig, "one way"},
		{"bad MAC", map[string]any{"deviceMAC": "02:zz"}, types.ErrInvalidNetworkConfig, "not an Ethernet MAC"},
		{"bad PCI", map[string]any{"pciAddress": "03:00.2"}, types.ErrInvalidNetworkConfig, "PCI address"},
		{"vf half", map[string]any{"pfName": "ens1"}, types.ErrInvalidNetworkConfig, "go together"},
		{"bad mtu", map[string]any{"deviceMAC": e.mac.String(), "mtu": 100}, types.ErrInvalidNetworkConfig, "mtu"},
		{"bad mode", map[string]any{"deviceMAC": e.mac.String(), "mode": "bridge"}, types.ErrInvalidNetworkConfig, "mode"},
		{"bad attach", map[string]any{"deviceMAC": e.mac.String(), "attachMode": "xdp"}, types.ErrInvalidNetworkConfig, "attach"},
		{"bad service path", map[string]any{"deviceMAC": e.mac.String(), "servicePath": "xdp"}, types.ErrInvalidNetworkConfig, "servicePath"},
		{"socket path, no socket LB", map[string]any{"deviceMAC": e.mac.String(), "servicePath": "socket"}, types.ErrTryAgainLater, "--socket-lb"},
		{"bad cidr", map[string]any{"deviceMAC": e.mac.String(), "serviceCIDRs": []string{"10.96.0.0"}}, types.ErrInvalidNetworkConfig, "not a CIDR"},
		{"no ipam", map[string]any{"deviceMAC": e.mac.String(), "ipam": nil}, types.ErrInvalidNetworkConfig, "ipam is missing"},
		{"unknown device", map[string]any{"deviceMAC": "02:99:99:99:99:99"}, 100, "not found"},
		{"datapath not loaded", map[string]any{"deviceMAC": e.mac.String(), "bpfRoot": "/sys/fs/bpf/podnic-nowhere"}, types.ErrTryAgainLater, "not ready"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := n.add(n.list(n.conf(v, c.over)), p)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if code := cniCode(err); code != c.code || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(c.want)) {
				t.Errorf("error %q (code %d), want code %d containing %q", err, code, c.code, c.want)
			}
			expectBackOnHost(t, e)
			if _, ok := link(t, p.name, "eth0"); ok {
				t.Error("the pod got an eth0 anyway")
			}
			if as := n.pins(t); len(as) != 0 {
				t.Errorf("pins left: %+v", as)
			}
		})
	}
}

func TestFailedAddAtEveryStepLeavesNothingBehind(t *testing.T) {
	for _, step := range []string{"vf", "attach_nic", "move", "ipam", "addrs", "sysctls", "attach", "state"} {
		t.Run(step, func(t *testing.T) {
			n := newNode(t)
			e := n.addENI(1)
			p := n.addPod("pod")
			l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String()}))
			t.Setenv("PODNIC_FAILPOINT", step)
			_, err := n.add(l, p)
			os.Unsetenv("PODNIC_FAILPOINT")
			if step == "vf" {
				// No VF here: the step does not run and ADD succeeds.
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				_ = n.del(l, p)
			} else if err == nil {
				t.Fatalf("ADD succeeded despite the failure at %s", step)
			}
			expectBackOnHost(t, e)
			if as := n.pins(t); len(as) != 0 {
				t.Errorf("pins left: %+v", as)
			}
			if held := n.heldAddresses(); len(held) != 0 {
				t.Errorf("addresses still held after the failed ADD: %v", held)
			}
			// And the ENI serves the next pod.
			p2 := n.addPod("again")
			if _, err := n.add(l, p2); err != nil {
				t.Fatalf("ADD after the failure: %v", err)
			}
			_ = n.del(l, p2)
		})
	}
}

func TestGCReleasesOnlyWhatIsNotValid(t *testing.T) {
	n := newNode(t)
	var pods []pod
	var enis []eni
	for i := range 3 {
		enis = append(enis, n.addENI(i+1))
		pods = append(pods, n.addPod(fmt.Sprintf("p%d", i)))
	}
	lists := make([]*libcni.NetworkConfigList, 3)
	for i := range 3 {
		lists[i] = n.list(n.conf("1.1.0", map[string]any{"deviceMAC": enis[i].mac.String()}))
		if _, err := n.add(lists[i], pods[i]); err != nil {
			t.Fatal(err)
		}
	}
	err := n.cni.GCNetworkList(t.Context(), lists[0], &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: pods[1].id, IfName: "eth0"}}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	expectBackOnHost(t, enis[0])
	expectBackOnHost(t, enis[2])
	if _, ok := link(t, pods[1].name, "eth0"); !ok {
		t.Error("GC removed the valid pod's NIC")
	}
	as := n.pins(t)
	if len(as) != 3 || !strings.HasPrefix(as[0].Owner, pods[1].id) {
		t.Errorf("pins after GC: %+v, want the valid pod's three", as)
	}
	if err := n.del(lists[1], pods[1]); err != nil {
		t.Fatal(err)
	}
}

func TestVersionListsEverySupportedVersion(t *testing.T) {
	n := newNode(t)
	info, err := n.cni.GetVersionInfo(t.Context(), "podnic")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.SupportedVersions(); !slices.Equal(got, versions) {
		t.Errorf("VERSION says %v, want %v", got, versions)
	}
}

func TestDeviceIsFoundByName(t *testing.T) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	l := n.list(n.conf("1.1.0", map[string]any{"deviceName": e.name}))
	if _, err := n.add(l, p); err != nil {
		t.Fatal(err)
	}
	if in, ok := link(t, p.name, "eth0"); !ok || !strings.EqualFold(in.Address, e.mac.String()) {
		t.Errorf("eth0 in the pod: %+v", in)
	}
	if err := n.del(l, p); err != nil {
		t.Fatal(err)
	}
	expectBackOnHost(t, e)
}

func TestStatusIsReadyOnlyWithTheDatapathLoaded(t *testing.T) {
	n := newNode(t)
	l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": "02:00:00:00:00:01"}))
	if err := n.cni.GetStatusNetworkList(t.Context(), l); err != nil {
		t.Errorf("STATUS with the datapath loaded: %v", err)
	}
	l = n.list(n.conf("1.1.0", map[string]any{"deviceMAC": "02:00:00:00:00:01", "bpfRoot": "/sys/fs/bpf/podnic-nowhere"}))
	err := n.cni.GetStatusNetworkList(t.Context(), l)
	if code := cniCode(err); code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without the datapath: %v (code %d), want code %d", err, code, types.ErrPluginNotAvailable)
	}
}

func TestCheckNoticesAMissingAddress(t *testing.T) {
	n := newNode(t)
	e := n.addENI(1)
	p := n.addPod("pod")
	l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String()}))
	r, err := n.add(l, p)
	if err != nil {
		t.Fatal(err)
	}
	defer n.del(l, p)
	sh(t, "ip", "-n", p.name, "addr", "del", r.IPs[0].Address.String(), "dev", "eth0")
	if err := n.cni.CheckNetworkList(t.Context(), l, p.rt()); err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Errorf("CHECK with an address removed: %v", err)
	}
}

func TestParallelAddsGetUniqueAddresses(t *testing.T) {
	n := newNode(t)
	const pods = 8
	enis := make([]eni, pods)
	ps := make([]pod, pods)
	lists := make([]*libcni.NetworkConfigList, pods)
	for i := range pods {
		enis[i] = n.addENI(i + 1)
		ps[i] = n.addPod(fmt.Sprintf("p%d", i))
		lists[i] = n.list(n.conf("1.1.0", map[string]any{"deviceMAC": enis[i].mac.String()}))
	}
	var wg sync.WaitGroup
	addrs := make([]string, pods)
	errs := make([]error, pods)
	for i := range pods {
		wg.Go(func() {
			r, err := n.add(lists[i], ps[i])
			errs[i] = err
			if err == nil {
				addrs[i] = r.IPs[0].Address.IP.String() + " " + r.IPs[1].Address.IP.String()
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range pods {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		for _, a := range strings.Fields(addrs[i]) {
			if seen[a] {
				t.Errorf("address %s handed out twice", a)
			}
			seen[a] = true
		}
	}
	for i := range pods {
		if err := n.del(lists[i], ps[i]); err != nil {
			t.Error(err)
		}
		expectBackOnHost(t, enis[i])
	}
}

func TestManyAddDelCyclesLeakNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("200 cycles")
	}
	n := newNode(t)
	e := n.addENI(1)
	l := n.list(n.conf("1.1.0", map[string]any{"deviceMAC": e.mac.String()}))
	fdsBefore := countFDs(t)
	ours := func() int { return strings.Count(sh(t, "ip", "netns", "list"), n.prefix) }
	nsBefore := ours()
	start := time.Now()
	const cycles = 200
	for i := range cycles {
		p := n.addPod(fmt.Sprintf("c%d", i))
		if _, err := n.add(l, p); err != nil {
			t.Fatalf("cycle %d ADD: %v", i, err)
		}
		if err := n.del(l, p); err != nil {
			t.Fatalf("cycle %d DEL: %v", i, err)
		}
		sh(t, "ip", "netns", "del", p.name)
		if time.Since(start) > 3*time.Minute {
			t.Fatalf("only %d cycles in 3 minutes", i)
		}
	}
	t.Logf("%d ADD/DEL cycles in %s (%s per cycle)", cycles, time.Since(start).Round(time.Millisecond), (time.Since(start) / cycles).Round(time.Microsecond))
	expectBackOnHost(t, e)
	if as := n.pins(t); len(as) != 0 {
		t.Errorf("pins left: %d", len(as))
	}
	if got := ours(); got != nsBefore {
		t.Errorf("this node's namespaces grew from %d to %d: leaked", nsBefore, got)
	}
	if got := countFDs(t); got > fdsBefore {
		t.Errorf("test process fds grew from %d to %d", fdsBefore, got)
	}
	entries, _ := os.ReadDir(n.stateDir + "/eni-pool")
	if len(entries) != 0 {
		t.Errorf("%d state files left", len(entries))
	}
}

func countFDs(t *testing.T) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

func TestDevicePoolGivesEachPodItsOwnENI(t *testing.T) {
	n := newNode(t)
	const pods = 4
	var macs []string
	var enis []eni
	for i := range pods {
		e := n.addENI(i + 1)
		enis = append(enis, e)
		macs = append(macs, e.mac.String())
	}
	// One static config for every pod, as a container runtime passes it.
	l := n.list(n.conf("1.1.0", map[string]any{"devicePool": map[string]any{"macs": macs}}))
	ps := make([]pod, pods+1)
	for i := range ps {
		ps[i] = n.addPod(fmt.Sprintf("p%d", i))
	}
	var wg sync.WaitGroup
	errs := make([]error, pods)
	for i := range pods {
		wg.Go(func() { _, errs[i] = n.add(l, ps[i]) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range pods {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		in, ok := link(t, ps[i].name, "eth0")
		if !ok {
			t.Fatalf("pod %d has no eth0", i)
		}
		if seen[in.Address] {
			t.Errorf("ENI %s given to two pods", in.Address)
		}
		seen[in.Address] = true
	}
	// The pool is empty now: the next pod gets a clear error.
	_, err := n.add(l, ps[pods])
	if code := cniCode(err); code != 100 || !strings.Contains(err.Error(), "every device is in use") {
		t.Errorf("ADD on an empty pool: %v (code %d)", err, code)
	}
	// A DEL frees a device for the next pod.
	if err := n.del(l, ps[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(l, ps[pods]); err != nil {
		t.Fatalf("ADD after a DEL freed a device: %v", err)
	}
	for i := 1; i <= pods; i++ {
		if err := n.del(l, ps[i]); err != nil {
			t.Error(err)
		}
	}
	for _, e := range enis {
		expectBackOnHost(t, e)
	}
}
