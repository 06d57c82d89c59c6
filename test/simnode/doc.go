// Package simnode builds a simulated node out of network namespaces for
// tests on the real kernel: a "fabric" namespace that stands in for the VPC
// and routes between pods, and pod namespaces whose eth0 is a veth with its
// peer in the fabric, as an exclusive NIC would be.
//
// Addressing: each pod's addresses are given by the test; the fabric routes
// each pod's addresses (/32, /128) to the pod's port. Pods reach everything
// through a gateway with a resolvable next hop, never through an on-link
// default route, because with an on-link route the pod ARPs for a Service
// VIP and the packet never reaches tc:
//
//	IPv4  169.254.1.1/32 dev eth0 scope link; default via 169.254.1.1.
//	      The fabric holds 169.254.1.1 on its lo, so it answers ARP for it
//	      on every port (arp_ignore=0); ports also have proxy_arp=1
//	      and proxy_delay=0, so on-link routes to other pods work too.
//	IPv6  default via fe80::1 dev eth0; every fabric port has fe80::1, so
//	      it answers neighbour solicitations for it. DAD is off on both
//	      ends. No NDP proxy is needed: pods send everything to the gateway.
//
// The pod's lo is up with net.ipv4.conf.lo.accept_local=1, as podnic's self
// access needs. Namespaces are named with a prefix unique to the process
// and node, so parallel test binaries never collide, and everything is
// deleted by name at test cleanup. simnode never loads or attaches
// programs: it is the network, not the datapath.
package simnode
