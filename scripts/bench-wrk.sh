#!/usr/bin/env bash
# bench-wrk.sh runs the wrk comparison (test/wrkbench, docs/bench.md):
# direct pod IP, podnic (TCX and legacy tc) and a real kube-proxy v1.36.3
# (nftables, iptables-legacy), at 1 and 10,000 Services, keep-alive and
# short connections, interleaved and CPU-pinned. The report goes to
# bench-results/wrk-<date>-<time>.md and is printed at the end.
#
# Usage (as root): scripts/bench-wrk.sh [-quick] [-wrkbench.FLAG=VALUE ...]
#   -quick                   about two minutes: 2 rounds of 3 s, 1 Service
#   -wrkbench.rounds=N       interleaved rounds per phase (default 8)
#   -wrkbench.budget=20m     bound on the whole suite (the last phase runs
#                            fewer rounds, at least 3; negative: none)
#   -wrkbench.duration=4s    each wrk run
#   -wrkbench.services=1,10000
#   -wrkbench.kube-proxy-at-scale=false   no kube-proxy at 10,000 Services
#   -wrkbench.kube-proxy=false            podnic and direct only
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "bench-wrk.sh: run as root (it creates network namespaces and loads BPF)" >&2
	exit 1
fi

args=()
for a in "$@"; do
	case $a in
	-quick | --quick) args+=(-wrkbench.quick) ;;
	*) args+=("$a") ;;
	esac
done

# Keep the runner's own go test quiet: the report is the output.
exec go test -count=1 -timeout 40m -run '^TestWrkComparison$' -v ./test/wrkbench/ \
	-args -wrkbench -wrkbench.out="$PWD/bench-results" "${args[@]}"
