#!/usr/bin/env bash
# tool-binary.sh NAME MODULE PACKAGE builds the main package PACKAGE of the
# wrapper module MODULE (a folder of this repository whose go.mod and go.sum
# pin the tool's version, e.g. test/helm/build) into a cache directory keyed
# by that go.sum:
#
#   ${PODNIC_CACHE:-/var/cache/podnic}/NAME-<first 16 hex of sha256(go.sum)>/bin/NAME
#
# A cached binary is not built again; concurrent callers wait for one
# build. Progress goes to stderr; the binary's path is the last (and only)
# line on stdout. coredns-binary.sh and helm-binary.sh call it.
set -euo pipefail

name="$1" module="$2" package="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/$module"
hash="$(sha256sum <"$mod/go.sum" | cut -c1-16)"
bin="${PODNIC_CACHE:-/var/cache/podnic}/$name-$hash/bin"
mkdir -p "$bin"

exec 9>"$bin/../.lock"
if ! flock -n 9; then
	echo "$name-binary: waiting for another build in $bin" >&2
	flock 9
fi
if [ -x "$bin/$name" ]; then
	echo "$name-binary: $name cached" >&2
else
	echo "$name-binary: building $name; a cold build takes minutes" >&2
	start=$SECONDS
	cd "$mod"
	CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -mod=readonly" \
		go build -ldflags "-s -w" -o "$bin/.$name.tmp" "$package"
	mv -f "$bin/.$name.tmp" "$bin/$name"
	echo "$name-binary: built $name in $((SECONDS - start))s" >&2
fi
echo "$bin/$name"
