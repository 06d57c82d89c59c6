// Package ipam is podnic's own address management, used in-process by the
// CNI plugin when its configuration says "ipam": {"type": "podnic", ...}.
//
// ParseConfig validates the configuration once: a list of range sets, like
// host-local's, each handing out one address (one IPv4 set and one IPv6 set
// give a dual-stack pod one of each), excluded addresses and prefixes, and
// routes. A range's gateway is never handed out, nor its subnet's network
// address, nor the broadcast address of an IPv4 subnet.
//
// A Store keeps what is handed out in DataDir/<network>, one file per
// address, claimed with O_EXCL under a flock, so separate plugin processes
// never hand out one address twice, and a crash never loses one: a file a
// crash left empty is held by nobody until GC frees it. See Store for the
// format. The package never touches devices.
//
// ENI-provided addresses (a pool filled by the cloud, not by CIDR ranges)
// are to come.
package ipam
