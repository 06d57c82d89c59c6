#!/usr/bin/env bash
# nodebox.sh brings the node in a box (test/nodebox) up and leaves it up,
# runs commands in it, and takes it down. Run as root.
#
#   scripts/nodebox.sh up                 build what is missing, start the box
#   scripts/nodebox.sh up -daemonset      the same, podnic installed from deploy/
#                                         (podnic-agent as a DaemonSet)
#   scripts/nodebox.sh down               stop it and remove everything it made
#   scripts/nodebox.sh kubectl ARGS...    kubectl as admin against the box
#   scripts/nodebox.sh podnicctl ARGS...  podnicctl against the box's agent
#   scripts/nodebox.sh exec CMD ARGS...   a command in the node's namespaces
#   scripts/nodebox.sh status             whether a box is up, and where
#
# The box lives in ${PODNIC_NODEBOX_DIR:-/run/podnic-nodebox}. The first `up`
# on a fresh machine installs containerd, runc and crictl
# (scripts/setup-nodebox.sh) and builds Kubernetes v1.36.3
# (scripts/k8s-binaries.sh): several minutes; later ones take about 10 s.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${PODNIC_NODEBOX_DIR:-/run/podnic-nodebox}"
nodebox="$root/bin/nodebox"

build_cmd() {
	mkdir -p "$root/bin"
	(cd "$root" && CGO_ENABLED=0 go build -o "$nodebox" ./test/nodebox/cmd/nodebox)
}

cmd="${1:-}"
shift || true
case "$cmd" in
up)
	if [[ -e $dir/state.json ]]; then
		echo "nodebox: a box is up in $dir already ('$0 down' first)" >&2
		exit 1
	fi
	crictl="$("$root/scripts/setup-nodebox.sh" | tail -n1)"
	echo "nodebox: Kubernetes v1.36.3 binaries (cached after the first build, which takes minutes)" >&2
	k8s_bin="$("$root/scripts/k8s-binaries.sh" kube-apiserver kubectl etcd kube-controller-manager kube-scheduler kubelet | tail -n1)"
	build_cmd
	helm=()
	if [[ " $* " == *" -daemonset "* ]]; then
		helm=(-helm "$("$root/scripts/helm-binary.sh" | tail -n1)")
	fi
	"$nodebox" up -repo "$root" -k8s-bin "$k8s_bin" -crictl "$crictl" -dir "$dir" "${helm[@]}" "$@" >/dev/null
	echo "nodebox: up in $dir; try '$0 kubectl get nodes -o wide'; '$0 down' removes it" >&2
	;;
down)
	if [[ ! -e $dir/state.json ]]; then
		echo "nodebox: no box in $dir" >&2
		exit 0
	fi
	[[ -x $nodebox ]] || build_cmd
	"$nodebox" down -dir "$dir"
	;;
kubectl | podnicctl | exec)
	[[ -x $nodebox ]] || build_cmd
	"$nodebox" "$cmd" -dir "$dir" -- "$@"
	;;
status)
	if [[ -e $dir/state.json ]]; then echo "nodebox: up in $dir"; else echo "nodebox: down"; fi
	;;
*)
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
