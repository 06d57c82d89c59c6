// Package nodeagent holds podnic-agent, which turns Services and
// EndpointSlices into the shared BPF maps, and podnicctl (cmd/podnicctl).
// The agent never enters a pod's network namespace on its sync path.
package nodeagent
