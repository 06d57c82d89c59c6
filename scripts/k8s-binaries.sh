#!/usr/bin/env bash
# k8s-binaries.sh builds the Kubernetes v1.36.3 binaries and etcd that
# podnic's tests run, from the wrapper module in test/k8s/build, into a cache
# directory keyed by that module's go.sum:
#
#   ${PODNIC_CACHE:-/var/cache/podnic}/k8s-<first 16 hex of sha256(go.sum)>/bin
#
# A binary already in the cache is not built again. Progress goes to stderr;
# the bin directory is the last (and only) line on stdout.
#
# Usage: scripts/k8s-binaries.sh [binary...]
#   With no arguments it builds all of them, the ones tests need soonest
#   first: kube-apiserver kube-proxy kubectl etcd kube-controller-manager
#   kube-scheduler kubelet.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/k8s/build"

# Binary name -> package in the wrapper module.
declare -A pkg=(
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
	[etcd]=go.etcd.io/etcd/server/v3
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
	[kubelet]=k8s.io/kubernetes/cmd/kubelet
)
all=(kube-apiserver kube-proxy kubectl etcd kube-controller-manager kube-scheduler kubelet)

want=("$@")
if [ ${#want[@]} -eq 0 ]; then
	want=("${all[@]}")
fi
for b in "${want[@]}"; do
	if [ -z "${pkg[$b]:-}" ]; then
		echo "k8s-binaries: unknown binary $b (known: ${all[*]})" >&2
		exit 2
	fi
done

hash="$(cat "$mod/go.sum" | sha256sum | cut -c1-16)"
dir="${PODNIC_CACHE:-/var/cache/podnic}/k8s-$hash"
bin="$dir/bin"
mkdir -p "$bin"

# The version the binaries report; kubectl and the apiserver print it, and
# kubectl warns about skew when it is the default v0.0.0-master.
k8s_version=v1.36.3
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitMajor=1 -X $p.gitMinor=36"
	ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitTreeState=clean"
done

# Several test binaries may ask for the same cache at once; one builds, the
# others wait and then find the binaries there.
exec 9>"$dir/.lock"
if ! flock -n 9; then
	echo "k8s-binaries: waiting for another build in $dir" >&2
	flock 9
fi

cd "$mod"
export CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly"
for b in "${want[@]}"; do
	if [ -x "$bin/$b" ]; then
		echo "k8s-binaries: $b cached" >&2
		continue
	fi
	echo "k8s-binaries: building $b (${pkg[$b]}); a cold build takes minutes" >&2
	start=$SECONDS
	tmp="$bin/.$b.tmp"
	go build -ldflags "$ldflags" -o "$tmp" "${pkg[$b]}"
	mv -f "$tmp" "$bin/$b"
	echo "k8s-binaries: built $b in $((SECONDS - start))s" >&2
done

echo "$bin"
