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
)

// Sysfs reads PCI and SR-IOV facts from a sysfs tree rooted at Root. The
// lookups are the few that sriovnet makes (sriovnet itself is not used):
//
//	<root>/bus/pci/devices/<pci>/net/<ifname>   the PCI device's netdevs
//	<root>/bus/pci/devices/<pci>/driver         -> .../drivers/<driver>
//	<root>/bus/pci/devices/<pci>/physfn         -> the PF's PCI dir (VFs only)
//	<root>/bus/pci/devices/<pci>/virtfn<N>      -> VF N's PCI dir (PFs only)
//	<root>/class/net/<ifname>/device            -> the netdev's PCI dir
//
// Only the base names of resolved symlinks and directory listings are
// read, so a fake tree of directories and symlinks behaves like the real
// one.
// There is no SR-IOV hardware where podnic's tests run: the VF paths are
// tested against such a fake tree in t.TempDir().
type Sysfs struct {
	Root string
}

// HostSysfs is the real sysfs, as Find uses it.
var HostSysfs = Sysfs{Root: "/sys"}

func (fs Sysfs) pciPath(pci string, elem ...string) string {
	return filepath.Join(append([]string{fs.Root, "bus", "pci", "devices", pci}, elem...)...)
}

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

func (fs Sysfs) pciDeviceExists(pci string) (bool, error) {
	_, err := os.Stat(fs.pciPath(pci))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading sysfs: %w", err)
	}
	return true, nil
}

// pciAddressOfNetdev returns the PCI address behind netdev name, or "" for
// a virtual device. A virtio-net device's "device" link names the virtio
// device (virtioN), whose parent is the PCI device.
func (fs Sysfs) pciAddressOfNetdev(name string) (string, error) {
	target, err := filepath.EvalSymlinks(filepath.Join(fs.Root, "class", "net", name, "device"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
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
func (fs Sysfs) driver(pci string) (string, error) {
	return linkBase(fs.pciPath(pci, "driver"))
}

// netdevsOfPCI lists the PCI device's netdevs that are in the netns sysfs
// was mounted from, sorted.
func (fs Sysfs) netdevsOfPCI(pci string) ([]string, error) {
	entries, err := os.ReadDir(fs.pciPath(pci, "net"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading sysfs: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// vfPCIAddress resolves PF netdev pf and VF index vf to the VF's PCI
// address through <root>/class/net/<pf>/device/virtfn<vf>.
func (fs Sysfs) vfPCIAddress(pf string, vf int) (string, error) {
	pfDev := filepath.Join(fs.Root, "class", "net", pf, "device")
	if _, err := os.Stat(pfDev); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("PF %s: %w", pf, ErrNotFound)
		}
		return "", fmt.Errorf("reading sysfs: %w", err)
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
func (fs Sysfs) vfInfo(pci string) (*VFInfo, error) {
	pfPCI, err := linkBase(fs.pciPath(pci, "physfn"))
	if err != nil || pfPCI == "" {
		return nil, err
	}
	links, err := filepath.Glob(fs.pciPath(pfPCI, "virtfn*"))
	if err != nil {
		return nil, fmt.Errorf("reading sysfs: %w", err)
	}
	index := -1
	for _, l := range links {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(l), "virtfn"))
		if err != nil {
			continue
		}
		if b, err := linkBase(l); err == nil && b == pci {
			index = n
			break
		}
	}
	if index < 0 {
		return nil, fmt.Errorf("VF %s: its PF %s does not list it among its virtfn links", pci, pfPCI)
	}
	pf, err := fs.pfNetdev(pfPCI)
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
func (fs Sysfs) pfNetdev(pfPCI string) (string, error) {
	names, err := fs.netdevsOfPCI(pfPCI)
	if err != nil {
		return "", err
	}
	for _, n := range names {
		port, err := os.ReadFile(fs.pciPath(pfPCI, "net", n, "phys_port_name"))
		if err == nil && representorPortName.Match(bytes.TrimSpace(port)) {
			continue
		}
		return n, nil
	}
	return "", nil
}
