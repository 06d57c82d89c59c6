// Package ipam will hold podnic's own address management: node pools from
// CIDR ranges and ENI-provided addresses in a durable, locked store, with
// release and GC. It never touches devices.
package ipam
