package cni_test

// podnic chained after the plugins that make a node's other data planes: a
// veth on a bridge (the bridge plugin) and a macvlan on the node's NIC (the
// macvlan plugin), both from containernetworking/plugins, invoked through
// libcni as a runtime invokes them. The same pinned maps serve them as
// serve exclusive NICs. ipvlan, which this kernel lacks, is exercised in
// the VM at the datapath level (bpf, TestIPVlanPodsReachClusterIPs).
//
// Address plan: the node's NIC is a veth whose peer is on the fabric
// bridge (10.1.0.1, fd00:1::1: the gateway, which routes a DNATed packet
// back to the backend); pods get 10.1.0.100-150 and fd00:1::100-150 from
// host-local, whose state lives in the test's own directory.

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/podnic/podnic/bpf"
)

func TestChainedServesClusterIPsOnOtherDataPlanes(t *testing.T) {
	for _, plane := range []string{"bridge", "macvlan"} {
		t.Run(plane, func(t *testing.T) { otherPlaneCase(t, plane) })
	}
}

func otherPlaneCase(t *testing.T, plane string) {
	n := newNode(t)
	uplink := n.addENI(1) // the node's NIC
	ipam := map[string]any{
		"type":    "host-local",
		"dataDir": t.TempDir(),
		"ranges": [][]map[string]string{
			{{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.150", "gateway": "10.1.0.1"}},
			{{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::100", "rangeEnd": "fd00:1::150", "gateway": "fd00:1::1"}},
		},
		"routes": []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
	}
	first := map[string]any{"cniVersion": "1.1.0", "name": "eni-pool", "type": plane, "ipam": ipam}
	bridge := n.prefix + "-br"
	switch plane {
	case "bridge":
		// The node's bridge, with its NIC as a port; the plugin adds a
		// veth per pod to it. No gateway on the node, no masquerade: the
		// plugin then leaves the node's forwarding and firewall alone.
		sh(t, "ip", "link", "add", bridge, "type", "bridge")
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
		sh(t, "ip", "link", "set", uplink.name, "master", bridge, "up")
		sh(t, "ip", "link", "set", bridge, "up")
		first["bridge"] = bridge
	case "macvlan":
		sh(t, "ip", "link", "set", uplink.name, "up")
		first["master"] = uplink.name
		first["mode"] = "bridge"
	}
	firstConf, err := json.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	l := n.list(firstConf, n.conf("1.1.0", map[string]any{"ipam": nil}))

	client, server := n.addPod("client"), n.addPod("server")
	addrsOf := map[string][]string{}
	for _, p := range []pod{client, server} {
		r, err := n.add(l, p)
		if err != nil {
			t.Fatalf("ADD of %s after %s: %v", p.name, plane, err)
		}
		t.Cleanup(func() { _ = n.del(l, p) })
		for _, ip := range r.IPs {
			addrsOf[p.name] = append(addrsOf[p.name], ip.Address.String())
		}
		if len(addrsOf[p.name]) != 2 {
			t.Fatalf("%s: the %s plugin's addresses are not in the chained result: %+v", p.name, plane, r.IPs)
		}
		if got := attachedPrograms(t, p, "eth0"); !slices.Equal(got, []string{"egress:podnic_from_pod", "ingress:podnic_to_pod"}) {
			t.Errorf("programs on %s's eth0: %v", p.name, got)
		}
		serve(t, p, 8080)
	}
	clusterIPsAnswer(t, n, client, server, addrsOf)
	for _, r := range []bpf.Reason{bpf.ReasonDNATNew, bpf.ReasonSelf} {
		if c, _ := n.dp.Maps.Verdicts(bpf.DirFromPod, r); c == 0 {
			t.Errorf("no %s verdict counted", r)
		}
	}

	for _, p := range []pod{client, server} {
		if err := n.del(l, p); err != nil {
			t.Fatalf("DEL of %s: %v", p.name, err)
		}
	}
	if as := n.pins(t); len(as) != 0 {
		t.Errorf("pins left: %+v", as)
	}
	if plane == "bridge" {
		// The plugin took its veths away again; the NIC stays a port.
		out := sh(t, "ip", "-o", "link", "show", "master", bridge)
		if ports := strings.Count(out, "\n"); ports != 1 || !strings.Contains(out, uplink.name+"@") {
			t.Errorf("ports of %s after DEL:\n%s", bridge, out)
		}
	}
	if _, ok := link(t, "", uplink.name); !ok {
		t.Fatalf("the node's NIC %s is gone", uplink.name)
	}
}
