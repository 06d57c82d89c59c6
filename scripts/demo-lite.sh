#!/usr/bin/env bash
# demo.sh — podnic on a simulated node, in one minute.
#
# It builds a tiny node out of network namespaces: a "fabric" namespace
# stands in for the cloud network, and two pods each own a NIC (one end of
# a veth pair, as an ENI would be). It loads podnic's datapath, tells it
# about three Services, attaches it inside the client pod, and curls the
# Services from there. Everything lives in namespaces named podnic-demo-*
# and under /sys/fs/bpf/podnic-demo; 'make demo-down' removes all of it.
# Nothing is sent outside those namespaces.
#
#   ./scripts/demo-lite.sh        set up and run the demo (needs root)
#   ./scripts/demo-lite.sh down   tear it down
set -euo pipefail
cd "$(dirname "$0")/.."

# PODNIC_DEMO_PREFIX and PODNIC_BIN let tests run the demo beside a live one.
PREFIX=${PODNIC_DEMO_PREFIX:-podnic-demo}
BIN=${PODNIC_BIN:-./bin}
ROOT=/sys/fs/bpf/$PREFIX
RUN=/run/$PREFIX
NS_FABRIC=$PREFIX-fabric
NS_CLIENT=$PREFIX-client
NS_SERVER=$PREFIX-server
CLIENT_IP=10.244.0.10
SERVER_IP=10.244.0.20
GW=169.254.1.1
VIP_WEB=10.96.0.10   # backend: the server pod
VIP_SELF=10.96.0.11  # backend: the client pod itself (self access)
VIP_NONE=10.96.0.12  # no backends: rejected at once
VIP_AFF=10.96.0.13   # session affinity: kept at connect() too
CGROUP=$RUN/cgroupv2 # a cgroup v2 mount of the demo's own
CTL=("$BIN/podnicctl" --bpf-root "$ROOT")

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

down() {
	for p in "$RUN"/*.pid; do
		[[ -e $p ]] || continue
		pid=$(cat "$p")
		kill "$pid" 2>/dev/null || true
		rm -f "$p"
	done
	if [[ -x $BIN/podnicctl && -d $ROOT ]]; then
		"${CTL[@]}" detach --owner "$NS_CLIENT" --netns "/run/netns/$NS_CLIENT" >/dev/null 2>&1 || true
		"${CTL[@]}" unload >/dev/null || true
	fi
	if mountpoint -q "$CGROUP"; then
		umount "$CGROUP"
	fi
	for ns in "$NS_CLIENT" "$NS_SERVER" "$NS_FABRIC"; do
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$RUN"
	echo "podnic demo removed"
}

# pod NAME IP: a pod whose eth0 is a veth end, peer in the fabric.
pod() {
	local ns=$1 ip=$2 peer=pd-${1#"$PREFIX"-}
	ip netns add "$ns"
	ip link add eth0 netns "$ns" type veth peer name "$peer" netns "$NS_FABRIC"
	ip -n "$ns" link set lo up
	ip -n "$ns" link set eth0 up
	ip -n "$ns" addr add "$ip/32" dev eth0
	# A gateway next hop, not an on-link default route: with on-link the
	# pod would ARP for the VIP and the packet would never reach tc.
	ip -n "$ns" route add "$GW" dev eth0 scope link
	ip -n "$ns" route add default via "$GW" dev eth0
	# Self access re-enters the pod through lo with the pod's own source.
	ip netns exec "$ns" sysctl -qw net.ipv4.conf.lo.accept_local=1
	ip -n "$NS_FABRIC" link set "$peer" up
	ip -n "$NS_FABRIC" addr add "$GW/32" dev "$peer"
	ip netns exec "$NS_FABRIC" sysctl -qw "net.ipv4.conf.$peer.proxy_arp=1"
	ip netns exec "$NS_FABRIC" sysctl -qw "net.ipv4.neigh.$peer.proxy_delay=0"
	ip -n "$NS_FABRIC" route add "$ip/32" dev "$peer"
}

up() {
	if [[ $(id -u) -ne 0 ]]; then
		echo "demo.sh: run as root (it creates network namespaces and loads BPF)" >&2
		exit 1
	fi
	if ip netns list | grep -q "^$PREFIX-"; then
		echo "demo.sh: an earlier demo is still up; removing it first"
		down
	fi
	mkdir -p "$RUN"
	go build -o "$BIN/" ./test/cmd/podnic-echo ./test/cmd/podnic-get

	say "A simulated node: a fabric namespace and two pods that own their NIC"
	ip netns add "$NS_FABRIC"
	ip netns exec "$NS_FABRIC" sysctl -qw net.ipv4.ip_forward=1
	pod "$NS_CLIENT" "$CLIENT_IP"
	pod "$NS_SERVER" "$SERVER_IP"
	show ip -n "$NS_CLIENT" -br addr show dev eth0
	show ip -n "$NS_CLIENT" route

	ip netns exec "$NS_SERVER" "$BIN/podnic-echo" --name server-pod >"$RUN/server.log" 2>&1 &
	echo $! >"$RUN/server.pid"
	ip netns exec "$NS_CLIENT" "$BIN/podnic-echo" --name client-pod >"$RUN/client.log" 2>&1 &
	echo $! >"$RUN/client.pid"

	say "Load podnic's datapath once and pin it (no verifier run per pod after this)"
	# The socket-level programs hang on a cgroup v2 root; the demo mounts
	# one of its own (podnic-agent uses the node's).
	mkdir -p "$CGROUP"
	mount -t cgroup2 cgroup2 "$CGROUP"
	show "${CTL[@]}" load --cgroup-root "$CGROUP" ${PODNIC_DEMO_LOAD_FLAGS:-}

	say "Four Services: one with a backend (TCP and UDP), one whose backend is the client itself, one with none, one with session affinity"
	show "${CTL[@]}" service set --id 1 --vip "$VIP_WEB" --port 80 --backend "$SERVER_IP:8080"
	show "${CTL[@]}" service set --id 5 --vip "$VIP_WEB" --port 80 --proto udp --backend "$SERVER_IP:8080"
	show "${CTL[@]}" service set --id 2 --vip "$VIP_SELF" --port 80 --backend "$CLIENT_IP:8080"
	show "${CTL[@]}" service set --id 3 --vip "$VIP_NONE" --port 80
	show "${CTL[@]}" service set --id 4 --vip "$VIP_AFF" --port 80 --affinity 1h --backend "$SERVER_IP:8080"
	show "${CTL[@]}" service list

	say "Attach the programs inside the client pod (TCX on this kernel)"
	show "${CTL[@]}" attach --netns "/run/netns/$NS_CLIENT" --ifname eth0 --owner "$NS_CLIENT"

	for _ in $(seq 50); do
		ip netns exec "$NS_SERVER" ss -ltn | grep -q ':8080' && ip netns exec "$NS_CLIENT" ss -ltn | grep -q ':8080' && break
		sleep 0.1
	done

	say "curl a ClusterIP from the pod: its connect() goes straight to a backend (socket LB)"
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_WEB/"
	say "Self access: the pod reaches a Service whose backend is itself"
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_SELF/"
	say "A Service without backends is refused at once: connect() fails with ECONNREFUSED, as through kube-proxy, and no packet leaves the pod"
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_NONE/" || true
	say "Session affinity is kept per client address at connect() too: the pod's address keys it, as kube-proxy's does"
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_AFF/"
	say "UDP too: a datagram to the ClusterIP goes straight to a backend, and the answer is named as the ClusterIP"
	show ip netns exec "$NS_CLIENT" "$BIN/podnic-get" -udp "$VIP_WEB:80"

	say "The socket path (CNI servicePath \"socket\"): Service traffic is served at the socket alone, the NIC keeps only podnic_guard on egress and no program sees the pod's incoming packets"
	show "${CTL[@]}" attach --netns "/run/netns/$NS_CLIENT" --ifname eth0 --owner "$NS_CLIENT" --service-path socket
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_WEB/"
	say "Back on the full path (the default): the reply programs are attached again"
	show "${CTL[@]}" attach --netns "/run/netns/$NS_CLIENT" --ifname eth0 --owner "$NS_CLIENT"

	say "Without socket balancing (podnic-agent --socket-lb=false) the NIC's programs translate every packet, and the replies back to the ClusterIP"
	show "${CTL[@]}" load --cgroup-root "$CGROUP" --socket-lb=false ${PODNIC_DEMO_LOAD_FLAGS:-}
	show ip netns exec "$NS_CLIENT" curl -sS --max-time 3 "http://$VIP_WEB/"
	show ip netns exec "$NS_CLIENT" "$BIN/podnic-get" -udp "$VIP_WEB:80"

	say "Connections tc translated (socket-balanced ones need no tracking), and every verdict"
	show "${CTL[@]}" ct list
	show "${CTL[@]}" verdicts

	say "Done. Inspect more with $BIN/podnicctl --bpf-root $ROOT ...; tear down with: make demo-down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*)
	echo "usage: $0 [up|down]" >&2
	exit 2
	;;
esac
