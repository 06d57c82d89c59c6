#!/usr/bin/env bash
# demo.sh — podnic in a real single-node Kubernetes cluster, in one command.
#
# The node in a box (test/nodebox) runs etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubelet v1.36.3 with
# containerd, inside namespaces of its own. Every pod gets its own NIC (an
# ENI stood in by a veth end, its peer on a "fabric" bridge that plays the
# cloud network) through kubelet -> containerd -> the podnic CNI plugin.
# No kube-proxy runs: podnic-agent turns Services into BPF maps, and the
# programs on each pod's NIC translate ClusterIPs inside the pod.
#
#   ./scripts/demo.sh        bring the box up and show the demo (root)
#   ./scripts/demo.sh down   remove everything (same as 'make demo-down')
set -euo pipefail
cd "$(dirname "$0")/.."

box=./scripts/nodebox.sh
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
kubectl() { "$box" kubectl "$@"; }

if [[ ${1:-} == down ]]; then
	exec "$box" down
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "demo.sh: run as root (it creates namespaces, cgroups and loads BPF)" >&2
	exit 1
fi
if "$box" status | grep -q up; then
	echo "demo.sh: a node in a box is up already; removing it first"
	"$box" down
fi

say "Starting a node in a box (first run: installs containerd, builds Kubernetes v1.36.3 — about 6-8 minutes; later runs about 15 s)"
"$box" up

say "Deploying a sample app: 2 echo pods behind Service 'echo', and a client pod behind Service 'client-self'"
kubectl apply -f - <deploy/demo/app.yaml
kubectl wait --for=condition=Available --timeout=90s deployment/echo >/dev/null
kubectl wait --for=condition=Ready --timeout=90s pod/client >/dev/null

say "Every pod owns a NIC: their IPs come from podnic's IPAM, not from a bridge"
show "$box" kubectl get pods -o wide
show "$box" kubectl get services

say "podnic-agent replaced kube-proxy: it programmed the Services into the shared BPF maps"
show "$box" podnicctl status
show "$box" podnicctl service list

echo_ip=$(kubectl get service echo -o jsonpath='{.spec.clusterIP}')
self_ip=$(kubectl get service client-self -o jsonpath='{.spec.clusterIP}')

say "From inside the client pod, 4 requests to ClusterIP $echo_ip: each connect() goes straight to a backend (socket-level balancing)"
show "$box" kubectl exec client -- /podnic-get -n 4 "http://$echo_ip/"

say "Self access: the client reaches Service client-self ($self_ip), whose only backend is itself"
show "$box" kubectl exec client -- /podnic-get -n 2 "http://$self_ip/"

say "What runs on the client's NIC, and how podnic served each connection (socket-lb) or packet"
show "$box" podnicctl attachments
show "$box" podnicctl verdicts

say "Done. Explore with '$box kubectl ...' and '$box podnicctl ...'; remove everything with: make demo-down"
