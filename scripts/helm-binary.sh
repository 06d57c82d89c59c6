#!/usr/bin/env bash
# helm-binary.sh builds helm (helm.sh/helm/v4, the version test/helm/build
# requires) for rendering and installing deploy/helm/podnic in tests, into a
# cache directory keyed by that module's go.sum:
#
#   ${PODNIC_CACHE:-/var/cache/podnic}/helm-<first 16 hex of sha256(go.sum)>/bin/helm
#
# A cached binary is not built again (a cold build takes a few minutes).
# Progress goes to stderr; the binary's path is the last (and only) line on
# stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/helm/build"
hash="$(sha256sum <"$mod/go.sum" | cut -c1-16)"
bin="${PODNIC_CACHE:-/var/cache/podnic}/helm-$hash/bin"
mkdir -p "$bin"

exec 9>"$bin/../.lock"
if ! flock -n 9; then
	echo "helm-binary: waiting for another build in $bin" >&2
	flock 9
fi
if [ -x "$bin/helm" ]; then
	echo "helm-binary: helm cached" >&2
else
	echo "helm-binary: building helm; a cold build takes minutes" >&2
	start=$SECONDS
	cd "$mod"
	CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly" \
		go build -ldflags "-s -w" -o "$bin/.helm.tmp" helm.sh/helm/v4/cmd/helm
	mv -f "$bin/.helm.tmp" "$bin/helm"
	echo "helm-binary: built helm in $((SECONDS - start))s" >&2
fi
echo "$bin/helm"
