// Package netdevice owns the pod's network devices: finding a device (an
// ENI by MAC or name, a VF by PCI address), moving it into and out of a
// pod's network namespace, and restoring its original name, MAC, MTU and VF
// settings. It is the only package that talks netlink and sysfs, except for
// package bpf's tc attach. It never chooses addresses or programs.
package netdevice
