#!/usr/bin/env bash
# setup-nodebox.sh installs what the node in a box (test/nodebox) needs on
# top of scripts/setup.sh: containerd 1.6 and runc from Debian, a static
# busybox for the client image, and crictl v1.36.0 built from the wrapper
# module in test/nodebox/build/crictl (`go install` of cri-tools does not
# resolve on its own), cached by that module's go.sum like k8s-binaries.sh:
#
#   ${PODNIC_CACHE:-/var/cache/podnic}/crictl-<first 16 hex of sha256(go.sum)>/crictl
#
# It never starts containerd and never writes /etc/cni or /opt/cni; the box
# runs its own containerd with everything in temporary directories.
# Idempotent. Run as root. The crictl path is the last line on stdout.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "setup-nodebox.sh: must run as root (it installs packages)" >&2
	exit 1
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(containerd runc busybox-static util-linux iproute2)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "setup-nodebox.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Debian's containerd enables a systemd unit; where systemd runs, keep
	# it from starting a node-wide containerd the box does not use.
	policy=/usr/sbin/policy-rc.d
	made_policy=
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		made_policy=1
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	if [[ -n $made_policy ]]; then rm -f "$policy"; fi
fi

mod="$root/test/nodebox/build/crictl"
hash="$(sha256sum <"$mod/go.sum" | cut -c1-16)"
dir="${PODNIC_CACHE:-/var/cache/podnic}/crictl-$hash"
if [[ ! -x $dir/crictl ]]; then
	echo "setup-nodebox.sh: building crictl v1.36.0 (about 1-2 minutes)" >&2
	mkdir -p "$dir"
	(
		cd "$mod"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="-trimpath -mod=readonly" \
			go build -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v1.36.0" \
			-o "$dir/.crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl
	)
	mv -f "$dir/.crictl.tmp" "$dir/crictl"
fi
echo "$dir/crictl"
