// Package wrkbench is the wrk comparison suite behind `make bench-wrk`:
// HTTP requests per second and latency through podnic's ClusterIP
// translation, against the direct pod IP (the ceiling) and against a real
// kube-proxy v1.36.3 in nftables and iptables-legacy mode, at 1 and 10,000
// Services, with keep-alive and with one connection per request.
//
// Every case runs against the same two backend pods (podnic-echo, each in
// its own netns with a veth NIC whose peer is on the fabric of a
// test/simnode node). Cases are interleaved round by round (ABAB…), wrk is
// pinned to CPU 0 and the servers to CPU 1, and the report gives medians
// over rounds and ratios paired within each round. docs/bench.md says how
// to run it and read the table.
//
// Address plan (all inside namespaces the suite creates):
//
//	10.244.1.11, .12   backend pods (podnic-echo on :8080)
//	10.244.2.1         client "direct": no programs, wrk to a backend IP
//	10.244.2.2, .3     clients with podnic attached: TCX, legacy tc
//	10.244.3.1, .2     "node" namespaces running kube-proxy (nft, iptables)
//	10.245.N.2/24      a client behind node N (node side 10.245.N.1)
//	10.96.0.10:80      the benchmarked Service (targetPort 8080)
//	10.96.100.0 + i    the other Services of the 10,000-Service phase
//
// The suite runs as a Go test because it builds on test/simnode and
// test/k8s; TestWrkComparison runs only with -wrkbench.
package wrkbench
