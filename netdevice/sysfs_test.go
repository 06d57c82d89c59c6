package netdevice

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSysfs is a sysfs tree in t.TempDir() laid out as the kernel lays out
// an SR-IOV NIC: PCI device directories under devices/, the bus/pci and
// class/net views as relative symlinks into them, driver, physfn and
// virtfnN links. There is no SR-IOV hardware where the tests run; this
// tree stands in for it, mounted over /sys for the lookups (see find).
type fakeSysfs struct {
	t    *testing.T
	root string
}

func newFakeSysfs(t *testing.T) *fakeSysfs {
	return &fakeSysfs{t: t, root: t.TempDir()}
}

// find runs Find on a thread of its own whose private mount namespace has
// the fake tree bind-mounted over /sys, so that sriovnet and podnic read it
// as they read the kernel's. The thread stays locked and exits with its
// mount namespace; no other thread sees the fake tree.
func (f *fakeSysfs) find(sel Selector) (*Device, error) {
	f.t.Helper()
	needRoot(f.t) // unshare and mount
	type result struct {
		dev      *Device
		err      error
		setupErr error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{setupErr: fmt.Errorf("unsharing the mount namespace: %w", err)}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{setupErr: fmt.Errorf("making mounts private: %w", err)}
			return
		}
		if err := unix.Mount(f.root, "/sys", "", unix.MS_BIND, ""); err != nil {
			done <- result{setupErr: fmt.Errorf("mounting the fake sysfs: %w", err)}
			return
		}
		dev, err := Find(sel)
		done <- result{dev: dev, err: err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		f.t.Fatalf("Find(%s) has not returned after 10 s", sel) // its thread is left behind
	}
	if r.setupErr != nil {
		f.t.Fatal(r.setupErr)
	}
	return r.dev, r.err
}

func (f *fakeSysfs) pciDir(pci string) string {
	return filepath.Join(f.root, "devices", "pci0000:3a", "0000:3a:00.0", pci)
}

func (f *fakeSysfs) mkdir(dir string) {
	f.t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// symlink makes link point to target with a relative path, as sysfs does.
func (f *fakeSysfs) symlink(target, link string) {
	f.t.Helper()
	f.mkdir(filepath.Dir(link))
	rel, err := filepath.Rel(filepath.Dir(link), target)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(rel, link); err != nil {
		f.t.Fatal(err)
	}
}

// addPCI adds a PCI device bound to driver ("" for none) with netdevs.
func (f *fakeSysfs) addPCI(pci, driver string, netdevs ...string) {
	f.t.Helper()
	dir := f.pciDir(pci)
	f.mkdir(dir)
	f.symlink(dir, filepath.Join(f.root, "bus", "pci", "devices", pci))
	if driver != "" {
		drv := filepath.Join(f.root, "bus", "pci", "drivers", driver)
		f.mkdir(drv)
		f.symlink(drv, filepath.Join(dir, "driver"))
	}
	for _, n := range netdevs {
		f.addNetdev(pci, n)
	}
}

func (f *fakeSysfs) addNetdev(pci, name string) {
	f.t.Helper()
	f.addNetdevBelow(f.pciDir(pci), name)
}

// addNetdevBelow adds netdev name below the device directory parent (a PCI,
// virtioN or VMBus device), with its device link as the kernel writes it
// (../../../<parent>, not ../..) and its class/net entry.
func (f *fakeSysfs) addNetdevBelow(parent, name string) {
	f.t.Helper()
	nd := filepath.Join(parent, "net", name)
	f.mkdir(nd)
	if err := os.Symlink(filepath.Join("..", "..", "..", filepath.Base(parent)), filepath.Join(nd, "device")); err != nil {
		f.t.Fatal(err)
	}
	f.symlink(nd, filepath.Join(f.root, "class", "net", name))
}

// addVF links VF vfPCI to its PF pfPCI as virtfn<index>.
func (f *fakeSysfs) addVF(pfPCI, vfPCI string, index int) {
	f.t.Helper()
	f.symlink(f.pciDir(vfPCI), filepath.Join(f.pciDir(pfPCI), "virtfn"+strconv.Itoa(index)))
	f.symlink(f.pciDir(pfPCI), filepath.Join(f.pciDir(vfPCI), "physfn"))
}

// A NIC with PF 0000:3b:00.0 (ens1f0, ice; a switchdev representor sorts
// before it) and four VFs: 0 and 3 with a netdev (iavf), 1 bound to
// vfio-pci for DPDK, 2 with its netdev in some pod.
const (
	pfPCI  = "0000:3b:00.0"
	vf0PCI = "0000:3b:02.0"
	vf1PCI = "0000:3b:02.1"
	vf2PCI = "0000:3b:02.2"
	vf3PCI = "0000:3b:02.3"
)

func newFakeNIC(t *testing.T, vf0Netdev string) *fakeSysfs {
	f := newFakeSysfs(t)
	f.addPCI(pfPCI, "ice", "ens1f0", "aaa_rep0")
	if err := os.WriteFile(filepath.Join(f.pciDir(pfPCI), "net", "aaa_rep0", "phys_port_name"), []byte("pf0vf0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.addPCI(vf0PCI, "iavf", vf0Netdev)
	f.addPCI(vf1PCI, "vfio-pci")
	f.addPCI(vf2PCI, "iavf")
	f.addPCI(vf3PCI, "")
	for i, vf := range []string{vf0PCI, vf1PCI, vf2PCI, vf3PCI} {
		f.addVF(pfPCI, vf, i)
	}
	return f
}

func TestFindResolvesAVFNetdevThroughSysfs(t *testing.T) {
	needRoot(t) // the VF's netdev is a real veth end
	eni := newENI(t, newNetns(t, "fabric"), false)
	f := newFakeNIC(t, eni.Name)

	for _, sel := range []Selector{
		{PCIAddress: vf0PCI},
		{PFName: "ens1f0", VFIndex: 0, HasVFIndex: true},
		{MAC: eni.MAC},
		{Name: eni.Name},
	} {
		dev, err := f.find(sel)
		if err != nil {
			t.Fatalf("Find(%s): %v", sel, err)
		}
		if dev.Name != eni.Name || !bytes.Equal(dev.MAC, eni.MAC) || dev.PCIAddress != vf0PCI || dev.Driver != "iavf" || dev.DPDK {
			t.Errorf("Find(%s) = %+v", sel, dev)
		}
		if want := (VFInfo{PF: "ens1f0", PFPCIAddress: pfPCI, Index: 0}); dev.VF == nil || *dev.VF != want {
			t.Errorf("Find(%s).VF = %+v, want %+v", sel, dev.VF, want)
		}
	}
}

func TestFindReportsADPDKBoundVFWithoutNetdev(t *testing.T) {
	f := newFakeNIC(t, "unused0")
	for _, sel := range []Selector{{PCIAddress: vf1PCI}, {PFName: "ens1f0", VFIndex: 1, HasVFIndex: true}} {
		dev, err := f.find(sel)
		if err != nil {
			t.Fatalf("Find(%s): %v", sel, err)
		}
		want := Device{PCIAddress: vf1PCI, Driver: "vfio-pci", DPDK: true}
		if dev.Name != "" || dev.Index != 0 || dev.MAC != nil || dev.PCIAddress != want.PCIAddress || dev.Driver != want.Driver || !dev.DPDK {
			t.Errorf("Find(%s) = %+v, want %+v", sel, dev, want)
		}
		if dev.VF == nil || dev.VF.Index != 1 || dev.VF.PF != "ens1f0" {
			t.Errorf("Find(%s).VF = %+v, want VF 1 of ens1f0", sel, dev.VF)
		}
	}
}

func TestFindReportsAVFWhoseNetdevIsElsewhereAsBusy(t *testing.T) {
	f := newFakeNIC(t, "unused0")
	_, err := f.find(Selector{PFName: "ens1f0", VFIndex: 2, HasVFIndex: true})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "device busy") {
		t.Errorf("got %v, want ErrBusy", err)
	}
}

func TestFindExplainsWhatIsMissing(t *testing.T) {
	f := newFakeNIC(t, "unused0")
	for _, tc := range []struct {
		sel      Selector
		notFound bool
		want     string
	}{
		{Selector{PFName: "ens1f0", VFIndex: 7, HasVFIndex: true}, true, "finding device by PF ens1f0 VF 7: PF ens1f0 has no VF 7"},
		{Selector{PFName: "ens9f0", VFIndex: 0, HasVFIndex: true}, true, "finding device by PF ens9f0 VF 0: PF ens9f0: not found"},
		{Selector{PCIAddress: "0000:3b:05.0"}, true, "finding device by PCI address 0000:3b:05.0: not found"},
		{Selector{PCIAddress: vf3PCI}, false, "has no driver bound and no netdev"},
	} {
		_, err := f.find(tc.sel)
		if err == nil || errors.Is(err, ErrNotFound) != tc.notFound || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Find(%s): got %v, want %q (ErrNotFound: %v)", tc.sel, err, tc.want, tc.notFound)
		}
	}
}

// A virtio-net NIC (an ENI on some clouds) hangs below a virtioN device
// whose parent is the PCI device.
func TestFindNamesThePCIDeviceOfAVirtioNIC(t *testing.T) {
	needRoot(t) // the netdev is a real veth end
	eni := newENI(t, newNetns(t, "fabric"), false)
	f := newFakeSysfs(t)
	const pci = "0000:00:05.0"
	f.addPCI(pci, "virtio-pci")
	f.addNetdevBelow(filepath.Join(f.pciDir(pci), "virtio3"), eni.Name)

	dev, err := f.find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	if dev.PCIAddress != pci || dev.Driver != "virtio-pci" || dev.VF != nil || dev.DPDK {
		t.Errorf("got %+v, want PCI %s, driver virtio-pci, not a VF", dev, pci)
	}
}

// A netvsc NIC (Azure) hangs below a VMBus device: it has a device link
// but no PCI device, and Find reports none rather than an error.
func TestFindReportsNoPCIDeviceForAVMBusNIC(t *testing.T) {
	needRoot(t) // the netdev is a real veth end
	eni := newENI(t, newNetns(t, "fabric"), false)
	f := newFakeSysfs(t)
	f.addNetdevBelow(filepath.Join(f.root, "devices", "LNXSYSTM:00", "VMBUS:00", "000d3a6e-4548-000d-3a6e-4548000d3a6e"), eni.Name)

	dev, err := f.find(Selector{Name: eni.Name})
	if err != nil {
		t.Fatal(err)
	}
	if dev.PCIAddress != "" || dev.Driver != "" || dev.VF != nil {
		t.Errorf("got %+v, want no PCI device, driver or VF", dev)
	}
}
