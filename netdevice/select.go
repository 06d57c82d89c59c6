package netdevice

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
)

// ErrNotFound says that no device matches a selector. It is always wrapped,
// as in "finding device by MAC 02:00:00:00:00:01: not found".
var ErrNotFound = errors.New("not found")

// ErrBusy says that the device exists but is not free to take: its netdev
// is not in the host netns (another pod holds it), or it came back from a
// dead pod and still waits for MoveOut to restore it.
var ErrBusy = errors.New("device busy")

// Selector names one device, in exactly one way: by MAC, by name (both for
// an ENI or any netdev), by PCI address, or by PF name and VF index (both
// for an SR-IOV VF).
type Selector struct {
	MAC        net.HardwareAddr
	Name       string
	PCIAddress string
	PFName     string
	VFIndex    int
	HasVFIndex bool
}

// pciAddressPattern is a full PCI address, domain:bus:device.function, as
// sysfs spells it (VMD domains have more than four digits).
var pciAddressPattern = regexp.MustCompile(`^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// Validate checks that exactly one way of selecting is set and well formed.
func (s Selector) Validate() error {
	var set []string
	if s.MAC != nil {
		set = append(set, "MAC")
	}
	if s.Name != "" {
		set = append(set, "name")
	}
	if s.PCIAddress != "" {
		set = append(set, "PCI address")
	}
	if s.PFName != "" || s.HasVFIndex {
		set = append(set, "PF name and VF index")
	}
	switch len(set) {
	case 0:
		return errors.New("device selector: none set; want one of MAC, name, PCI address, or PF name with VF index")
	case 1:
	default:
		return fmt.Errorf("device selector: %s all set; want exactly one", strings.Join(set, ", "))
	}
	switch {
	case s.MAC != nil:
		if len(s.MAC) == 0 || bytes.Equal(s.MAC, make([]byte, len(s.MAC))) {
			return fmt.Errorf("device selector: MAC %q is empty or all zero", s.MAC)
		}
	case s.Name != "":
		if err := validIfname(s.Name); err != nil {
			return fmt.Errorf("device selector: %w", err)
		}
	case s.PCIAddress != "":
		if !pciAddressPattern.MatchString(s.PCIAddress) {
			return fmt.Errorf("device selector: PCI address %q is not of the form 0000:3b:02.1", s.PCIAddress)
		}
	default:
		if s.PFName == "" {
			return fmt.Errorf("device selector: VF index %d needs a PF name", s.VFIndex)
		}
		if !s.HasVFIndex {
			return fmt.Errorf("device selector: PF name %q needs a VF index", s.PFName)
		}
		if err := validIfname(s.PFName); err != nil {
			return fmt.Errorf("device selector: PF: %w", err)
		}
		if s.VFIndex < 0 {
			return fmt.Errorf("device selector: VF index %d is negative", s.VFIndex)
		}
	}
	return nil
}

// String says how s selects, for messages: "MAC 02:..", "name eth1",
// "PCI address 0000:3b:02.1", "PF ens1f0 VF 3".
func (s Selector) String() string {
	switch {
	case s.MAC != nil:
		return "MAC " + s.MAC.String()
	case s.Name != "":
		return "name " + s.Name
	case s.PCIAddress != "":
		return "PCI address " + s.PCIAddress
	default:
		return fmt.Sprintf("PF %s VF %d", s.PFName, s.VFIndex)
	}
}

// validIfname checks a Linux interface name: 1 to 15 bytes, no slash,
// colon or white space, not "." or "..".
func validIfname(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// Device is a device as found in the host netns.
type Device struct {
	Name  string // netdev name; empty when DPDK is set
	Index int    // ifindex in the host netns; it may change on every move
	MAC   net.HardwareAddr
	MTU   int
	// PCIAddress is set for a PCI device (an ENI on a PCI NIC, a VF); a
	// veth or other virtual device has none.
	PCIAddress string
	VF         *VFInfo // set for an SR-IOV VF
	Driver     string  // the PCI driver bound, e.g. "iavf", "vfio-pci"
	// DPDK is set when the device is bound to a userspace I/O driver
	// (vfio-pci, uio_pci_generic, igb_uio): it has no netdev to move.
	DPDK bool
}

// VFInfo says which PF a VF belongs to.
type VFInfo struct {
	PF           string // the PF's netdev name in the host netns
	PFPCIAddress string
	Index        int // the VF's index on its PF (virtfnN)
}

// dpdkDrivers are the userspace I/O drivers: a device bound to one has no
// netdev, and a DPDK application in the pod opens it through /dev/vfio or
// /dev/uioN instead.
var dpdkDrivers = map[string]bool{"vfio-pci": true, "uio_pci_generic": true, "igb_uio": true}

// aliasPrefix marks a device that MoveIn claimed; the rest of the alias is
// the device's original name in the host.
const aliasPrefix = "podnic:"

// Find finds the device sel names in the current (host) netns, reading
// /sys (through sriovnet) for PCI addresses, drivers and VFs.
//
// An ENI or any netdev is found by MAC or name through netlink. A VF is
// found by PCI address, or by PF name and VF index (the PF's virtfnN link),
// and its netdev through the PCI device's net/ directory, as sriovnet does;
// that directory lists only netdevs in the netns sysfs was mounted from, so
// a VF whose netdev sits in a pod reports ErrBusy. A VF bound to a DPDK
// driver is returned with DPDK set and no netdev.
//
// A device that MoveIn claimed and that came back from a dead pod (its
// alias starts with "podnic:") is ErrBusy until MoveOut restores it.
func Find(sel Selector) (*Device, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	dev, err := find(sel)
	if err != nil {
		return nil, fmt.Errorf("finding device by %s: %w", sel, err)
	}
	return dev, nil
}

func find(sel Selector) (*Device, error) {
	switch {
	case sel.MAC != nil:
		links, err := dumpRetry(netlink.LinkList)
		if err != nil {
			return nil, fmt.Errorf("listing links: %w", err)
		}
		var found []netlink.Link
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, sel.MAC) {
				found = append(found, l)
			}
		}
		switch len(found) {
		case 0:
			return nil, ErrNotFound
		case 1:
			return fromLink(found[0])
		default:
			names := make([]string, len(found))
			for i, l := range found {
				names[i] = l.Attrs().Name
			}
			return nil, fmt.Errorf("ambiguous: %s all have this MAC", strings.Join(names, ", "))
		}
	case sel.Name != "":
		l, err := netlink.LinkByName(sel.Name)
		if err != nil {
			if isLinkNotFound(err) {
				return nil, ErrNotFound
			}
			return nil, err
		}
		return fromLink(l)
	case sel.PCIAddress != "":
		return fromPCI(sel.PCIAddress)
	default:
		pci, err := vfPCIAddress(sel.PFName, sel.VFIndex)
		if err != nil {
			return nil, err
		}
		return fromPCI(pci)
	}
}

// fromLink builds a Device from a link found in the host netns and adds
// what sysfs knows about its PCI device.
func fromLink(l netlink.Link) (*Device, error) {
	a := l.Attrs()
	if strings.HasPrefix(a.Alias, aliasPrefix) {
		return nil, fmt.Errorf("%w: %s came back from a pod (alias %q) and waits for MoveOut", ErrBusy, a.Name, a.Alias)
	}
	dev := &Device{
		Name:  a.Name,
		Index: a.Index,
		MAC:   append(net.HardwareAddr(nil), a.HardwareAddr...),
		MTU:   a.MTU,
	}
	pci, err := pciAddressOfNetdev(a.Name)
	if err != nil {
		return nil, err
	}
	if pci == "" {
		return dev, nil // a virtual device: veth, macvlan, ...
	}
	dev.PCIAddress = pci
	if dev.Driver, err = driver(pci); err != nil {
		return nil, err
	}
	if dev.VF, err = vfInfo(pci); err != nil {
		return nil, err
	}
	return dev, nil
}

// fromPCI builds a Device from a PCI address: its driver, its VF identity
// and, unless it is bound to a DPDK driver, its netdev in the host netns.
func fromPCI(pci string) (*Device, error) {
	ok, err := exists(pciPath(pci))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	dev := &Device{PCIAddress: pci}
	if dev.Driver, err = driver(pci); err != nil {
		return nil, err
	}
	if dev.VF, err = vfInfo(pci); err != nil {
		return nil, err
	}
	if dpdkDrivers[dev.Driver] {
		dev.DPDK = true
		return dev, nil
	}
	names, err := netdevsOfPCI(pci)
	if err != nil {
		return nil, err
	}
	switch {
	case len(names) == 0 && dev.Driver == "":
		return nil, fmt.Errorf("PCI device %s has no driver bound and no netdev", pci)
	case len(names) == 0:
		return nil, fmt.Errorf("%w: %s (driver %s) has no netdev in the host netns; a pod may hold it", ErrBusy, pci, dev.Driver)
	case len(names) > 1:
		return nil, fmt.Errorf("PCI device %s has several netdevs (%s); select one by name", pci, strings.Join(names, ", "))
	}
	l, err := netlink.LinkByName(names[0])
	if err != nil {
		if isLinkNotFound(err) {
			// sysfs listed it a moment ago: it is being moved.
			return nil, fmt.Errorf("%w: %s netdev %s left the host netns", ErrBusy, pci, names[0])
		}
		return nil, fmt.Errorf("looking up %s: %w", names[0], err)
	}
	a := l.Attrs()
	if strings.HasPrefix(a.Alias, aliasPrefix) {
		return nil, fmt.Errorf("%w: %s came back from a pod (alias %q) and waits for MoveOut", ErrBusy, a.Name, a.Alias)
	}
	dev.Name = a.Name
	dev.Index = a.Index
	dev.MAC = append(net.HardwareAddr(nil), a.HardwareAddr...)
	dev.MTU = a.MTU
	return dev, nil
}
