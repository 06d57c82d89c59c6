#!/usr/bin/env bash
# run.sh boots Debian's Linux 6.1 (no TCX) under qemu and runs podnic's bpf
# tests in it, streaming the guest's console. scripts/setup-vm.sh (as
# root, once) provides qemu, busybox and the kernel; no root needed here.
#
#   test/vm/run.sh               every bpf test that does not need TCX
#   test/vm/run.sh 'TestVM'      only tests matching a -test.run pattern
#
# `go test ./test/vm/` runs the same, as part of `go test ./...`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PODNIC_VM_RUN=${1:-} PODNIC_VM_CONSOLE=1 exec go test -count=1 -v -run '^TestBPFPackageOnLinux61WithoutTCX$' ./test/vm/
