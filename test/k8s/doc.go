// Package k8s gives tests a real Kubernetes control plane: etcd and
// kube-apiserver v1.36.3, built from the Go module proxy by
// scripts/k8s-binaries.sh out of the wrapper module in test/k8s/build.
//
// Start runs etcd and kube-apiserver on loopback, on free ports, with their
// data, certificates and logs in the test's temporary directory, and stops
// them by their own PIDs at test cleanup. The API server authenticates with
// static bearer tokens and authorizes with RBAC; two users exist:
//
//	AdminUser  "admin", in system:masters: may do anything.
//	AgentUser  "podnic-agent", no groups but system:authenticated: may do
//	           only what the test grants with a ClusterRoleBinding.
//
// Service ClusterIPs come from 10.96.0.0/16 and fd00:96::/108 (dual-stack);
// the endpoint reconciler is off, so the default "kubernetes" Service has no
// endpoints to get in the way of the tests' own EndpointSlices.
//
// The binaries come from the directory in PODNIC_K8S_BIN, or else from
// scripts/k8s-binaries.sh, which reuses its cache or builds them; a cold
// build takes several minutes, so run such tests with -timeout 30m the first
// time. A failed build fails the test: CI must be able to build them.
//
// The package imports only the standard library, so the root module does not
// depend on k8s.io: it talks to the API server with net/http and a bearer
// token, and changes objects with the built kubectl.
package k8s
