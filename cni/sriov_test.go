package cni_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podnic/podnic/cni"
)

// The VFs of the fake sysfs tree below: VF 0 with a netdev (a real veth
// end standing in for it), VF 1 bound to vfio-pci.
const (
	netdevVF = "0000:3b:02.0"
	dpdkVF   = "0000:3b:02.1"
)

// withFakeSysfs returns a libcni config whose podnic is the real plugin run
// by a wrapper in a private mount namespace with a fake sysfs tree over
// /sys (the node's bpffs bound into it): PF 0000:3b:00.0, netdev ens1f0,
// with VF 0 at netdevVF whose netdev is vf0 (iavf), and VF 1 at dpdkVF,
// bound to vfio-pci. The PF's netdev is not listed under its PCI device,
// so the plugin finds no PF to read VF settings through (there is none to
// read them from). There is no SR-IOV hardware here; the plugin reads
// this tree through sriovnet as it would read a node's.
func (n *node) withFakeSysfs(vf0 string) *libcni.CNIConfig {
	t := n.t
	root := filepath.Join(t.TempDir(), "sys")
	const pf = "0000:3b:00.0"
	dev := func(pci string) string { return filepath.Join(root, "devices", "pci0000:3a", pci) }
	link := func(target, name string) {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		rel, err := filepath.Rel(filepath.Dir(name), target)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(rel, name); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{dev(pf), dev(netdevVF), dev(dpdkVF), filepath.Join(root, "bus", "pci", "drivers", "vfio-pci"),
		filepath.Join(root, "bus", "pci", "drivers", "iavf"), filepath.Join(dev(netdevVF), "net", vf0), filepath.Join(root, "fs", "bpf")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// cilium/ebpf reads the CPU count to open the pinned per-CPU maps.
	for _, f := range []string{"possible", "online"} {
		b, err := os.ReadFile("/sys/devices/system/cpu/" + f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(root, "devices", "system", "cpu", f)
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	link(dev(pf), filepath.Join(root, "bus", "pci", "devices", pf))
	link(dev(pf), filepath.Join(root, "class", "net", "ens1f0", "device"))
	for i, vf := range []string{netdevVF, dpdkVF} {
		link(dev(vf), filepath.Join(root, "bus", "pci", "devices", vf))
		link(dev(pf), filepath.Join(dev(vf), "physfn"))
		link(dev(vf), filepath.Join(dev(pf), fmt.Sprintf("virtfn%d", i)))
	}
	link(filepath.Join(root, "bus", "pci", "drivers", "iavf"), filepath.Join(dev(netdevVF), "driver"))
	link(dev(netdevVF), filepath.Join(dev(netdevVF), "net", vf0, "device"))
	link(filepath.Join(dev(netdevVF), "net", vf0), filepath.Join(root, "class", "net", vf0))
	link(filepath.Join(root, "bus", "pci", "drivers", "vfio-pci"), filepath.Join(dev(dpdkVF), "driver"))

	wrapper := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\nexec unshare --mount --propagation private /bin/sh -c "+
		"'mount --rbind /sys/fs/bpf \"$1/fs/bpf\" && mount --rbind \"$1\" /sys && exec \"$2\"' sh %q %q\n",
		root, filepath.Join(binDir, "podnic"))
	if err := os.WriteFile(filepath.Join(wrapper, "podnic"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return libcni.NewCNIConfigWithCacheDir([]string{wrapper, binDir}, t.TempDir(), nil)
}

// A VF bound to a DPDK driver gets its addresses and no move; the result
// names it by PCI address. A second pod cannot take it while the first
// holds it, by pciAddress or by the device plugin's deviceID; DEL frees
// it.
func TestADPDKBoundVFGetsAddressesAndIsHeldUntilDel(t *testing.T) {
	n := newNode(t)
	c := n.withFakeSysfs("unused0")
	ctx := context.Background()
	for _, version := range []string{"0.4.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			byPCI := n.list(n.conf(version, map[string]any{"pciAddress": dpdkVF}))
			byDeviceID := n.list(n.conf(version, map[string]any{"capabilities": map[string]bool{"deviceID": true}}))
			v := strings.ReplaceAll(version, ".", "")
			first, second := n.addPod("dpdk1-"+v), n.addPod("dpdk2-"+v)

			res, err := addVia(t, c, byPCI, first.rt())
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			wantPCI := dpdkVF
			if version != "1.1.0" {
				wantPCI = "" // pciID came with CNI 1.1.0
			}
			if len(res.Interfaces) != 1 || res.Interfaces[0].PciID != wantPCI || res.Interfaces[0].Mac != "" || res.Interfaces[0].Name != "eth0" {
				t.Errorf("interfaces %+v, want eth0 with PCI ID %q and no MAC", res.Interfaces, wantPCI)
			}
			if len(res.IPs) != 2 || len(n.heldAddresses()) != 2 {
				t.Errorf("IPs %v, held %v: want one per family", res.IPs, n.heldAddresses())
			}
			if err := c.CheckNetworkList(ctx, byPCI, first.rt()); err != nil {
				t.Errorf("CHECK: %v", err)
			}

			rt := second.rt()
			rt.CapabilityArgs = map[string]any{"deviceID": dpdkVF}
			for name, l := range map[string]*libcni.NetworkConfigList{"pciAddress": byPCI, "deviceID": byDeviceID} {
				_, err := c.AddNetworkList(ctx, l, rt)
				if cniCode(err) != cni.ErrCodeDeviceBusy || !strings.Contains(err.Error(), "held by container "+first.id) {
					t.Errorf("second ADD by %s: got %v, want code %d naming the holder", name, err, cni.ErrCodeDeviceBusy)
				}
			}
			if held := n.heldAddresses(); len(held) != 2 {
				t.Errorf("a refused ADD changed the addresses held: %v", held)
			}

			for range 2 {
				if err := c.DelNetworkList(ctx, byPCI, first.rt()); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if held := n.heldAddresses(); len(held) != 0 {
				t.Errorf("addresses still held after DEL: %v", held)
			}
			if _, err := c.AddNetworkList(ctx, byDeviceID, rt); err != nil {
				t.Fatalf("ADD by deviceID after DEL: %v", err)
			}
			if err := c.DelNetworkList(ctx, byDeviceID, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if held := n.heldAddresses(); len(held) != 0 {
				t.Errorf("addresses still held after DEL: %v", held)
			}
		})
	}
}

// A VF with a netdev, selected by PCI address or by PF and VF index, moves
// into the pod and back as any NIC; while a pod holds it, another ADD of
// the same VF is refused as busy.
func TestAVFFoundThroughSysfsMovesIntoThePodAndBack(t *testing.T) {
	n := newNode(t)
	e := n.addENI(1) // VF 0's netdev
	c := n.withFakeSysfs(e.name)
	ctx := context.Background()
	for name, sel := range map[string]map[string]any{
		"pciAddress":     {"pciAddress": netdevVF},
		"pfName+vfIndex": {"pfName": "ens1f0", "vfIndex": 0},
	} {
		t.Run(name, func(t *testing.T) {
			l := n.list(n.conf("1.1.0", sel))
			first, second := n.addPod("vf1-"+name[:3]), n.addPod("vf2-"+name[:3])
			res, err := addVia(t, c, l, first.rt())
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if len(res.Interfaces) != 1 || res.Interfaces[0].PciID != netdevVF || !strings.EqualFold(res.Interfaces[0].Mac, e.mac.String()) {
				t.Errorf("interfaces %+v, want eth0 with PCI ID %s and MAC %s", res.Interfaces, netdevVF, e.mac)
			}
			if in, ok := link(t, first.name, "eth0"); !ok || !strings.EqualFold(in.Address, e.mac.String()) {
				t.Errorf("eth0 in the pod: %+v", in)
			}
			if _, err := c.AddNetworkList(ctx, l, second.rt()); cniCode(err) != cni.ErrCodeDeviceBusy {
				t.Errorf("second ADD of the VF: got %v, want code %d", err, cni.ErrCodeDeviceBusy)
			}
			if err := c.DelNetworkList(ctx, l, first.rt()); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			expectBackOnHost(t, e)
			if held := n.heldAddresses(); len(held) != 0 {
				t.Errorf("addresses still held after DEL: %v", held)
			}
		})
	}
}
