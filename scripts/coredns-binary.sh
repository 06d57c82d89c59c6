#!/usr/bin/env bash
# coredns-binary.sh builds CoreDNS (github.com/coredns/coredns, the version
# test/coredns/build requires) for the node in a box's DNS scenario, into a
# cache directory keyed by that module's go.sum:
#
#   ${PODNIC_CACHE:-/var/cache/podnic}/coredns-<first 16 hex of sha256(go.sum)>/bin/coredns
#
# A cached binary is not built again (a cold build took about 7 minutes on
# 2 busy CPUs). Progress goes to stderr; the binary's path is the last (and
# only) line on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/coredns/build"
hash="$(sha256sum <"$mod/go.sum" | cut -c1-16)"
bin="${PODNIC_CACHE:-/var/cache/podnic}/coredns-$hash/bin"
mkdir -p "$bin"

exec 9>"$bin/../.lock"
if ! flock -n 9; then
	echo "coredns-binary: waiting for another build in $bin" >&2
	flock 9
fi
if [ -x "$bin/coredns" ]; then
	echo "coredns-binary: coredns cached" >&2
else
	echo "coredns-binary: building coredns; a cold build takes minutes" >&2
	start=$SECONDS
	cd "$mod"
	CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly" \
		go build -ldflags "-s -w" -o "$bin/.coredns.tmp" github.com/coredns/coredns
	mv -f "$bin/.coredns.tmp" "$bin/coredns"
	echo "coredns-binary: built coredns in $((SECONDS - start))s" >&2
fi
echo "$bin/coredns"
