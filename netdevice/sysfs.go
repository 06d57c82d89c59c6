package netdevice

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/k8snetworkplumbingwg/sriovnet"
)

// PCI and SR-IOV facts come from sysfs, read through sriovnet
// (github.com/k8snetworkplumbingwg/sriovnet, the maintained continuation
// of Mellanox/sriovnet) where it has a call for the lookup:
//
//	sriovnet.GetNetDevicesFromPci    PCI device -> its netdevs in this netns
//	sriovnet.GetPfPciFromVfPci       VF -> its PF's PCI address (physfn)
//	sriovnet.GetVfIndexByPciAddress  VF -> its index on the PF (physfn/virtfnN)
//
// and directly where it has no call (without netlink access to the PF) or
// a wrong one: the bound driver's name (sriovnet only answers "is it
// vfio-pci"), PF netdev + VF index -> the VF's PCI address
// (<pf>/device/virtfnN), and netdev -> PCI device (see pciAddressOfNetdev).
// Whether a link exists is checked here first, so that "not a VF" or "no
// netdev" is an answer and not sriovnet's error string.
//
// There is no SR-IOV hardware where podnic's tests run: they mount a fake
// sysfs tree over /sys in a private mount namespace and run these lookups
// against it.

// linkBase returns the base name of what the symlink at path resolves to,
// or "" when there is no such link.
func linkBase(path string) (string, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("reading sysfs link: %w", err)
	}
	return filepath.Base(target), nil
}

// exists reports whether path exists in sysfs (following links).
func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading sysfs: %w", err)
	}
	return true, nil
}

func pciPath(pci string, elem ...string) string {
	return filepath.Join(append([]string{sriovnet.PciSysDir, pci}, elem...)...)
}

// pciAddressOfNetdev returns the PCI address behind netdev name, or "" for
// a virtual device or one on another bus (vmbus). A virtio-net device's
// "device" link names the virtio device (virtioN), whose parent is the PCI
// device.
//
// Not sriovnet.GetPciFromNetDevice: it walks up the relative target of
// /sys/class/net/<name> until it reaches "/", which a relative path never
// does, so for a netdev that is not a PCI device (netvsc on VMBus) it loops
// forever (sriovnet v1.3.0; TestFindReportsNoPCIDeviceForAVMBusNIC).
func pciAddressOfNetdev(name string) (string, error) {
	target, err := filepath.EvalSymlinks(filepath.Join(sriovnet.NetSysDir, name, "device"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil // a virtual device: veth, macvlan, ...
		}
		return "", fmt.Errorf("reading sysfs: %w", err)
	}
	if strings.HasPrefix(filepath.Base(target), "virtio") {
		target = filepath.Dir(target)
	}
	if pci := filepath.Base(target); pciAddressPattern.MatchString(pci) {
		return pci, nil
	}
	return "", nil // another bus, such as vmbus
}

// driver returns the name of the driver bound to the PCI device, or "".
func driver(pci string) (string, error) {
	return linkBase(pciPath(pci, "driver"))
}

// netdevsOfPCI lists the PCI device's netdevs that are in the netns sysfs
// was mounted from, sorted.
func netdevsOfPCI(pci string) ([]string, error) {
	ok, err := exists(pciPath(pci, "net"))
	if err != nil || !ok {
		return nil, err
	}
	names, err := sriovnet.GetNetDevicesFromPci(pci)
	if err != nil {
		return nil, fmt.Errorf("listing the netdevs of %s: %w", pci, err)
	}
	sort.Strings(names)
	return names, nil
}

// vfPCIAddress resolves PF netdev pf and VF index vf to the VF's PCI
// address through /sys/class/net/<pf>/device/virtfn<vf>.
func vfPCIAddress(pf string, vf int) (string, error) {
	pfDev := filepath.Join(sriovnet.NetSysDir, pf, "device")
	ok, err := exists(pfDev)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("PF %s: %w", pf, ErrNotFound)
	}
	pci, err := linkBase(filepath.Join(pfDev, "virtfn"+strconv.Itoa(vf)))
	if err != nil {
		return "", err
	}
	if pci == "" {
		return "", fmt.Errorf("PF %s has no VF %d (see %s/sriov_numvfs): %w", pf, vf, pfDev, ErrNotFound)
	}
	return pci, nil
}

// vfInfo returns which PF the PCI device pci is a VF of, or nil when it is
// not a VF.
func vfInfo(pci string) (*VFInfo, error) {
	ok, err := exists(pciPath(pci, "physfn"))
	if err != nil || !ok {
		return nil, err
	}
	pfPCI, err := sriovnet.GetPfPciFromVfPci(pci)
	if err != nil {
		return nil, fmt.Errorf("finding the PF of VF %s: %w", pci, err)
	}
	index, err := sriovnet.GetVfIndexByPciAddress(pci)
	if err != nil {
		return nil, fmt.Errorf("VF %s: its PF %s does not list it among its virtfn links: %w", pci, pfPCI, err)
	}
	pf, err := pfNetdev(pfPCI)
	if err != nil {
		return nil, err
	}
	return &VFInfo{PF: pf, PFPCIAddress: pfPCI, Index: index}, nil
}

// representorPortName matches the phys_port_name of a switchdev VF or SF
// representor ("pf0vf3", "c1pf0sf7"), which shares the PF's PCI device.
var representorPortName = regexp.MustCompile(`^(c\d+)?pf\d+(vf|sf)\d+$`)

// pfNetdev returns the PF's netdev name, skipping switchdev representors
// that share its PCI device, or "" when the PF has no netdev in this netns.
func pfNetdev(pfPCI string) (string, error) {
	names, err := netdevsOfPCI(pfPCI)
	if err != nil {
		return "", err
	}
	for _, n := range names {
		port, err := os.ReadFile(pciPath(pfPCI, "net", n, "phys_port_name"))
		if err == nil && representorPortName.Match(bytes.TrimSpace(port)) {
			continue
		}
		return n, nil
	}
	return "", nil
}
