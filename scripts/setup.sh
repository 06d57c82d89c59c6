#!/usr/bin/env bash
# setup.sh installs everything podnic needs to build, test and demo on a
# fresh Debian bookworm machine. Run it as root. It is idempotent.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "setup.sh: must run as root (it installs packages and mounts bpffs)" >&2
	exit 1
fi

packages=(
	clang-19 llvm-19 clang-format-19 libbpf-dev bpftool
	iproute2 iptables nftables curl wrk
	make gcc libc6-dev ca-certificates procps
	linux-perf # the wrk suite's profile of where a connection's CPU goes
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs is where podnic pins its programs, maps and links.
if ! mount -t bpf | grep -q ' /sys/fs/bpf '; then
	echo "setup.sh: mounting bpffs at /sys/fs/bpf"
	mkdir -p /sys/fs/bpf
	mount -t bpf bpffs /sys/fs/bpf
fi

# golangci-lint is a Go tool; install a pinned version into GOBIN.
GOLANGCI_VERSION=${GOLANGCI_VERSION:-v2.15.0}
gobin=$(go env GOPATH)/bin
if ! "$gobin/golangci-lint" version 2>/dev/null | grep -q "${GOLANGCI_VERSION#v}"; then
	echo "setup.sh: installing golangci-lint $GOLANGCI_VERSION"
	GOFLAGS= go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_VERSION"
fi

# The VM tests boot Debian's 6.1 kernel (no TCX) under qemu.
"$(dirname "$0")/setup-vm.sh"

# The node in a box runs containerd, runc and crictl.
"$(dirname "$0")/setup-nodebox.sh" >/dev/null

echo "setup.sh: done"
