#!/usr/bin/env bash
# deploy-manifests.sh renders the chart deploy/helm/podnic with its default
# values (release podnic, namespace kube-system) into the plain manifests
# deploy/podnic-agent-rbac.yaml and deploy/podnic.yaml, or into the folder
# given as $1 (the test that keeps them current compares the two). helm
# comes from scripts/helm-binary.sh (cached; minutes to build the first
# time).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/deploy}"
helm="$("$root/scripts/helm-binary.sh" | tail -n1)"
render() { "$helm" template podnic "$root/deploy/helm/podnic" --namespace kube-system "$@"; }

{
	cat <<'HEADER'
# podnic-agent's ServiceAccount and RBAC, in kube-system. Generated from
# deploy/helm/podnic by `make deploy-manifests`: edit the chart.
HEADER
	render --show-only templates/rbac.yaml
} >"$out/podnic-agent-rbac.yaml"

{
	cat <<'HEADER'
# podnic for one node pool of exclusive-NIC nodes: ConfigMap podnic-config
# and DaemonSet podnic-agent. Generated from deploy/helm/podnic (its
# defaults) by `make deploy-manifests`: edit the chart, or install it with
# helm and your values (deploy/README.md).
#
# Apply podnic-agent-rbac.yaml first. Then set, for your cluster and pool:
#   - the image (built from deploy/Dockerfile);
#   - in podnic-config, agent.yaml's service-cidr (kube-apiserver's
#     --service-cluster-ip-range, every family; no cgroup-root line on
#     cgroup v1 nodes) and 10-podnic.conflist, the pool's CNI config
#     (docs/cni.md: devices, IPAM, the same Service CIDRs);
#   - the DaemonSet's nodeSelector, and its CNI hostPaths if the runtime's
#     folders are not /opt/cni/bin and /etc/cni/net.d;
#   - the API server's address in ConfigMap podnic-api-server, unless the
#     node serves the kubernetes Service's ClusterIP to its own processes
#     (the agent runs in the node's network namespace, where podnic
#     translates nothing).
HEADER
	render --show-only templates/configmap.yaml --show-only templates/daemonset.yaml
} >"$out/podnic.yaml"
