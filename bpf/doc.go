// Package bpf owns podnic's eBPF datapath: the C programs in this folder,
// their generated Go bindings, the Go layouts of every map key and value,
// loading and pinning the one object, and attaching its programs to a pod's
// interfaces (TCX, with a clsact fallback for kernels before 6.6).
//
// It knows nothing about Kubernetes or CNI: callers say which netns and
// interface, and which Services and backends the maps should hold.
package bpf
