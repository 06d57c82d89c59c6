package bpf

// ipvlan, a data plane the host's kernel lacks: the test runs in test/vm's
// guest only (its setup keeps the ipvlan module). The pods' eth0 are L2
// slaves of one master, as ipvlan CNI plugins make them, and podnic's
// programs are attached inside the pod as on an exclusive NIC (or chained
// after an ipvlan plugin). Address plan as vmPair's, plus the self-access
// VIPs of attach_test.go (simSelfV4, simSelfV6); each pod routes the
// Service range through the other, so the translated packet is switched
// between the slaves inside ipvlan, and a VIP answers only when the
// programs translate it.

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/netdevice"
)

func TestIPVlanPodsReachClusterIPs(t *testing.T) {
	inVM(t)
	d := loadTest(t)
	client, server := vmIPVlanPair(t)
	vmServe(t, server, "server", simBackendPort)
	vmServe(t, client, "client", simBackendPort)
	singleBackendServices(t, d,
		[2]netip.Addr{vmVIPv4, server.v4.Addr()}, [2]netip.Addr{vmVIPv6, server.v6.Addr()},
		[2]netip.Addr{simSelfV4, client.v4.Addr()}, [2]netip.Addr{simSelfV6, client.v6.Addr()})
	if _, err := d.AttachPod(client.path, "eth0", vmOwner, ModeAuto); err != nil {
		t.Fatalf("attaching to the ipvlan slave: %v", err)
	}
	t.Cleanup(func() {
		if err := DetachPod(d.Root, vmOwner, client.path); err != nil {
			t.Errorf("detaching: %v", err)
		}
	})

	for _, proto := range []Proto{TCP, UDP} {
		network := strings.ToLower(proto.String())
		for _, c := range []struct {
			name, backend string
			vip, src      netip.Addr
		}{
			{"v4", "server", vmVIPv4, client.v4.Addr()},
			{"v6", "server", vmVIPv6, client.v6.Addr()},
			{"v4-self", "client", simSelfV4, client.v4.Addr()},
			{"v6-self", "client", simSelfV6, client.v6.Addr()},
		} {
			t.Run(c.name+"/"+proto.String(), func(t *testing.T) {
				vip := netip.AddrPortFrom(c.vip, simServicePort)
				got, err := vmExchange(client, network, vip, "ping")
				if err != nil {
					t.Fatalf("%s %s: %v", network, vip, err)
				}
				if want := fmt.Sprintf("%s %s ping", c.backend, c.src); got != want {
					t.Errorf("answer %q, want %q", got, want)
				}
			})
		}
	}
	for _, r := range []Reason{ReasonDNATNew, ReasonSelf} {
		if n, err := d.Maps.Verdicts(DirFromPod, r); err != nil || n == 0 {
			t.Errorf("%s counted %d times (%v)", r, n, err)
		}
	}
}

// vmIPVlanPair builds vmPair's address plan on ipvlan: a node namespace
// holds the master (a veth end, up, with its peer), and each pod's eth0 is
// an L2 slave of it made in the pod's namespace. The client's lo accepts
// local sources, as the CNI plugin sets it, for self access.
func vmIPVlanPair(t *testing.T) (client, server *vmPod) {
	t.Helper()
	node := newVMNetns(t, "node")
	client, server = newVMNetns(t, "client"), newVMNetns(t, "server")
	client.v4, client.v6 = vmClientV4, vmClientV6
	server.v4, server.v6 = vmServerV4, vmServerV6
	err := netdevice.InNetns(node.path, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "master"}, PeerName: "peer"}); err != nil {
			return fmt.Errorf("adding the master: %w", err)
		}
		var master netlink.Link
		for _, name := range []string{"peer", "master"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			master = l
		}
		for _, p := range []*vmPod{client, server} {
			fd, err := unix.Open(p.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = netlink.LinkAdd(&netlink.IPVlan{
				LinkAttrs: netlink.LinkAttrs{Name: "eth0", ParentIndex: master.Attrs().Index, Namespace: netlink.NsFd(fd)},
				Mode:      netlink.IPVLAN_MODE_L2,
			})
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("adding the ipvlan slave of %s: %w", p.name, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("building the ipvlan pods: %v", err)
	}
	vmWire(t, client, server)
	err = netdevice.InNetns(client.path, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lo/accept_local", []byte("1"), 0o644)
	})
	if err != nil {
		t.Fatalf("setting accept_local in %s: %v", client.name, err)
	}
	return client, server
}
