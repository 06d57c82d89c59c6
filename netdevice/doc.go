// Package netdevice owns the pod's network devices: finding a device (an
// ENI by MAC or name, a VF by PCI address or by PF name and VF index),
// moving it into and out of a pod's network namespace, and restoring its
// original name, MAC, MTU and VF settings; it also puts the pod's
// addresses and routes on the device, prepares the pod netns (lo up,
// accept_local) and announces the addresses to the fabric. It is the only
// package that talks netlink and sysfs, except for package bpf's tc
// attach. It never chooses addresses or programs.
//
// # Lifecycle
//
// CNI ADD: Find → ConfigureVF for a VF → MoveInDown, or MoveInDownAfter
// to act on the device while it is down in the host (keep the returned
// Saved, e.g. as JSON) → ConfigureAddrs (IPv4 addresses, link up, which
// makes the kernel send the gratuitous ARPs, IPv6 addresses, routes) →
// PodSysctls → AnnounceIPv6Addrs.
// CNI DEL: MoveOut with the Saved from ADD. MoveOut is idempotent and
// succeeds when the pod netns or the device is gone.
//
// Devices are renamed inside the pod netns, or, when a name is taken
// there, in a temporary, anonymous netns they pass through; never in the
// host (renaming in place races with udev). Their alias
// carries "podnic:<original name>" while a pod holds them.
//
// # When the pod netns dies first
//
// The kernel returns a physical device (ENI, VF netdev) of a dying netns
// to the initial netns under its in-pod name ("devN" if that name is
// taken); MoveOut finds it there by its alias or MAC and restores it, and
// Find reports it as ErrBusy until then. A veth end is destroyed with its
// netns instead, and its peer with it: MoveOut then returns nil. Note the
// initial netns, not the caller's: if podnic runs in a netns of its own,
// a returned physical device does not land there.
//
// # What is tested where
//
// On the real kernel (root, namespaces the tests create): finding by MAC
// and name, the moves and every failure path on veth pairs standing in
// for ENIs, addresses, routes, sysctls, and the announcements, which the
// fabric's kernel must accept. There is no SR-IOV hardware there: the
// sysfs lookups (sriovnet's and podnic's) run against a fake sysfs tree in
// t.TempDir(), bind-mounted over /sys in a private mount namespace, and
// the PF's VF settings (the pfLinks interface) against a fake PF. A VF's
// netdev moves by the same code as any netdev.
package netdevice
