package nodebox_test

// Address plan (see doc.go): fabric gateway 10.1.0.1 and fd00:1::1, node
// 10.1.0.2, pods 10.1.0.10-250 and fd00:1::10-ff from podnic IPAM,
// Services 10.96.0.0/16 and fd00:96::/108; ENIs eni1..eni10. 10.1.0.251 is
// a pod address no pod has: the endpoint "on another node".

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/test/nodebox"
)

// echoWorkload is a Deployment of podnic-echo whose pods terminate
// gracefully (preStop sleep, then SIGTERM: podnic-echo stops accepting and
// drains), a client pod that serves too, and Service echo over the
// Deployment, dual-stack, TCP and UDP.
const echoWorkload = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 10
      containers:
      - name: echo
        image: podnic.test/echo:v1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        lifecycle: {preStop: {sleep: {seconds: 2}}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: podnic.test/echo:v1
    imagePullPolicy: Never
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
`

// scenarioWorkload is what every scenario shares: echoWorkload, a client
// on the socket path, and more Services over them.
const scenarioWorkload = echoWorkload + `---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: podnic-socket}
handler: podnic-socket
---
apiVersion: v1
kind: Pod
metadata: {name: client-socket, labels: {app: client-socket}}
spec:
  runtimeClassName: podnic-socket
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: podnic.test/echo:v1
    imagePullPolicy: Never
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: client-socket-self}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: client-socket}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: client-self}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: client}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: echo-affinity}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-local}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-nodeport}
spec:
  type: NodePort
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: echo-lb}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: remote-only}
spec:
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: remote-only-1
  labels:
    kubernetes.io/service-name: remote-only
    endpointslice.kubernetes.io/managed-by: podnic-test
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.251]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: elsewhere
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: nobody}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

// TestScenarios runs issue 5's end-to-end scenarios on one node in a box:
// ClusterIP over TCP and UDP for both families, self access, session
// affinity, internalTrafficPolicy Local, programs by name, scaling, a
// rolling update and an agent restart under load with no failed request, a
// deleted Service, DNS through CoreDNS (when PODNIC_COREDNS or
// scripts/coredns-binary.sh gives a binary) and an ENI back after a pod goes.
func TestScenarios(t *testing.T) {
	var coredns string
	// Built or found in the cache before the clock starts: a cold build
	// takes minutes.
	var corednsErr error
	if os.Getuid() == 0 && !testing.Short() {
		coredns, corednsErr = runScript("PODNIC_COREDNS", filepath.Join(repoRoot(t), "scripts", "coredns-binary.sh"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 230*time.Second)
	defer cancel()
	c := &cluster{box: upBox(t, ctx, 10), ctx: ctx}

	t0 := time.Now()
	c.kubectl(t, scenarioWorkload, "apply", "-f", "-")
	c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=60s")
	c.kubectl(t, "", "wait", "--for=condition=Ready", "pod/client", "pod/client-socket", "--timeout=60s")
	for _, svc := range []string{"echo", "client-self", "client-socket-self", "echo-affinity", "echo-local", "echo-nodeport", "echo-lb"} {
		want := 2
		if strings.HasSuffix(svc, "-self") {
			want = 1
		}
		c.waitBackends(t, svc, want)
	}
	t.Logf("workload Ready and programmed in %v", time.Since(t0).Round(time.Millisecond))

	t.Run("ClusterIPOverTCPAndUDPForBothFamilies", func(t *testing.T) {
		c.checkClusterIPs(t, "client")
	})

	t.Run("SelfAccessReachesTheClientItself", func(t *testing.T) {
		c.checkSelfAccess(t, "client", "client-self")
	})

	t.Run("SessionAffinityClientIPHolds", func(t *testing.T) {
		// Kept at connect(), keyed by the pod's address of each family,
		// which the CNI registered with the pod's netns.
		balanced := c.verdict(t, "connect", "socket-lb")
		vips := c.clusterIPs(t, "echo-affinity")
		for _, vip := range vips {
			answers, _ := c.ask(t, "client", vip, false, 20)
			t.Logf("%s: %v", target(vip, false), answers)
			if len(answers) != 1 {
				t.Errorf("%s: 20 requests went to %d backends, want 1: %v", target(vip, false), len(answers), answers)
			}
		}
		if got := c.verdict(t, "connect", "socket-lb") - balanced; got < uint64(20*len(vips)) {
			t.Errorf("%d connections to the affinity Service balanced at the socket, want %d", got, 20*len(vips))
		}
	})

	t.Run("InternalTrafficPolicyLocal", func(t *testing.T) {
		// One node: every endpoint of echo is local.
		echoes := c.podNames(t, "app=echo")
		for _, vip := range c.clusterIPs(t, "echo-local") {
			answers, _ := c.ask(t, "client", vip, false, 20)
			for _, name := range echoes {
				if answers[name] == 0 {
					t.Errorf("%s: local backend %s never answered (%v)", target(vip, false), name, answers)
				}
			}
		}
		// A second node cannot join the box; remote-only's EndpointSlice
		// is written by hand with nodeName "elsewhere". No local endpoint:
		// dropped, as kube-proxy drops it (a Service without endpoints
		// anywhere is refused instead; see DeletedServiceIsRejectedAtOnce).
		vip := c.clusterIPs(t, "remote-only")[0]
		c.waitProgrammed(t, "remote-only", vip, 0)
		took, err := c.failOnce(t, "client", vip, time.Second)
		t.Logf("%s (remote endpoints only, ITP Local): failed after %v: %v", target(vip, false), took, err)
		if strings.Contains(err.Error(), "connection refused") || took < 900*time.Millisecond {
			t.Errorf("want the request dropped (a timeout), have %v after %v", err, took)
		}
	})

	t.Run("ProgramsVisibleByNameForEveryPod", func(t *testing.T) {
		c.checkProgramsByName(t)
	})

	t.Run("NodePortOnTheNodesAddress", func(t *testing.T) {
		// A pod reaching its node's address on a NodePort reaches the
		// Service, as through kube-proxy: balanced at the socket, on both
		// paths. Nothing on the node listens on the NodePort.
		node := netip.MustParseAddr(nodebox.NodeIP)
		echoes := c.podNames(t, "app=echo")
		balanced := c.verdict(t, "connect", "socket-lb")
		for _, udp := range []bool{false, true} {
			port := "http"
			if udp {
				port = "udp"
			}
			np, err := strconv.Atoi(c.kubectl(t, "", "get", "service", "echo-nodeport", "-o", "jsonpath={.spec.ports[?(@.name==\""+port+"\")].nodePort}"))
			if err != nil {
				t.Fatal(err)
			}
			ap := netip.AddrPortFrom(node, uint16(np))
			c.waitFrontend(t, ap, "NodePort")
			for _, pod := range []string{"client", "client-socket"} {
				answers, _ := c.askAt(t, pod, ap, udp, 20)
				t.Logf("%s from %s: %v", targetAt(ap, udp), pod, answers)
				for _, name := range echoes {
					if answers[name] == 0 {
						t.Errorf("%s from %s: backend %s never answered 20 requests (%v)", targetAt(ap, udp), pod, name, answers)
					}
				}
			}
		}
		if got := c.verdict(t, "connect", "socket-lb") - balanced; got < 80 {
			t.Errorf("%d connections and sockets to the NodePorts balanced at the socket, want 80", got)
		}
	})

	t.Run("LoadBalancerSourceRanges", func(t *testing.T) {
		// No cloud here: the test writes the ingress IP into echo-lb's
		// status, as a cloud's controller would. Its
		// loadBalancerSourceRanges then let one pod in and not the
		// other: the allowed pod reaches the endpoints, the other's new
		// connection is dropped (a timeout), as by kube-proxy's firewall.
		// Then the other way round, so each path is tried both ways.
		lb := netip.MustParseAddr("203.0.113.50")
		c.kubectl(t, "", "patch", "service", "echo-lb", "--subresource=status", "--type=merge",
			"-p", `{"status":{"loadBalancer":{"ingress":[{"ip":"`+lb.String()+`"}]}}}`)
		ap := netip.AddrPortFrom(lb, 80)
		c.waitFrontend(t, ap, "External")
		pods := []string{"client", "client-socket"}
		for i, allowed := range pods {
			denied := pods[1-i]
			addrs := c.podAddrs(t, allowed)
			source := netip.PrefixFrom(addrs[slices.IndexFunc(addrs, netip.Addr.Is4)], 32)
			c.kubectl(t, "", "patch", "service", "echo-lb", "--type=merge",
				"-p", `{"spec":{"loadBalancerSourceRanges":["`+source.String()+`"]}}`)
			c.waitSourceRanges(t, ap, source)
			answers, _ := c.askAt(t, allowed, ap, false, 10)
			t.Logf("%s from %s (allowed): %v", targetAt(ap, false), allowed, answers)
			dropped := c.verdict(t, "from-pod", "drop-source-range")
			took, err := c.failOnce(t, denied, lb, time.Second)
			t.Logf("%s from %s (not allowed): failed after %v: %v", targetAt(ap, false), denied, took, err)
			if strings.Contains(err.Error(), "connection refused") || took < 900*time.Millisecond {
				t.Errorf("want %s's request dropped (a timeout), have %v after %v", denied, err, took)
			}
			if c.verdict(t, "from-pod", "drop-source-range") == dropped {
				t.Errorf("%s's SYNs were not counted as drop-source-range", denied)
			}
		}
	})

	t.Run("SocketPathPodOfItsRuntimeClass", func(t *testing.T) {
		// client-socket runs under RuntimeClass podnic-socket: containerd
		// calls podnic with the CNI config of that handler's folder,
		// "servicePath": "socket". Its NIC carries podnic_guard alone
		// (checked with every pod's programs above), and every Service
		// connection and datagram is balanced at the socket.
		c.checkClusterIPs(t, "client-socket")
		c.checkSelfAccess(t, "client-socket", "client-socket-self")
		// A Service without endpoints is refused at connect(); a deleted
		// one, whose VIP the socket programs leave alone, by the guard.
		atSocket, byGuard := c.verdict(t, "connect", "reject"), c.verdict(t, "from-pod", "reject")
		empty := c.emptyVIPs(t)
		c.refusedAtOnce(t, "client-socket", empty, "no endpoints")
		deleted := c.deletedService(t, "client-socket", "doomed-socket")
		c.refusedAtOnce(t, "client-socket", deleted, "deleted")
		if got := c.verdict(t, "connect", "reject") - atSocket; got < uint64(len(empty)) {
			t.Errorf("%d connections refused at the socket, want %d", got, len(empty))
		}
		if got := c.verdict(t, "from-pod", "reject") - byGuard; got < uint64(len(deleted)) {
			t.Errorf("%d connections refused by the guard, want %d", got, len(deleted))
		}
		// DEL on the socket path: the ENI back, the guard's link gone.
		sandbox := c.sandboxOf(t, "client-socket")
		c.deleteReturnsTheENI(t, "client-socket")
		for _, a := range c.attachments(t) {
			if strings.HasPrefix(a.Owner, sandbox+"--") {
				t.Errorf("client-socket deleted, its attachment is left: %+v", a)
			}
		}
	})

	t.Run("ScaleUpAndDownUnderLoad", func(t *testing.T) {
		vip := c.clusterIPs(t, "echo")[0]
		l := c.startLoad(t, vip, false)
		time.Sleep(time.Second)
		t0 := time.Now()
		c.kubectl(t, "", "scale", "deployment/echo", "--replicas=4")
		c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=60s")
		c.waitBackends(t, "echo", 4)
		up := time.Since(t0)
		time.Sleep(time.Second)
		t0 = time.Now()
		c.kubectl(t, "", "scale", "deployment/echo", "--replicas=1")
		c.waitBackends(t, "echo", 1)
		c.waitPods(t, "app=echo", 1)
		down := time.Since(t0)
		s := l.stop(t)
		t.Logf("2→4 in %v, 4→1 (pods gone) in %v; load: %d requests, %d failed in %.1fs, answers %v",
			up.Round(time.Millisecond), down.Round(time.Millisecond), s.Requests, s.Failures, s.Seconds, s.Answers)
		s.check(t, 4)
		c.kubectl(t, "", "scale", "deployment/echo", "--replicas=2")
		c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=60s")
		c.waitBackends(t, "echo", 2)
	})

	t.Run("RollingUpdateWithTerminatingEndpointsUnderLoad", func(t *testing.T) {
		vips := c.clusterIPs(t, "echo")
		tcp := c.startLoad(t, vips[0], false)
		udp := c.startLoad(t, vips[len(vips)-1], true)
		time.Sleep(time.Second)
		watch := c.watchTerminating(t, "echo")
		t0 := time.Now()
		c.kubectl(t, "", "rollout", "restart", "deployment/echo")
		c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=90s")
		c.waitPods(t, "app=echo", 2)
		took := time.Since(t0)
		maxTerminating := watch()
		ts, us := tcp.stop(t), udp.stop(t)
		t.Logf("rollout (old pods gone) in %v, at most %d serving-terminating endpoints at once", took.Round(time.Millisecond), maxTerminating)
		t.Logf("TCP load %s: %d requests, %d failed in %.1fs, answers %v", target(vips[0], false), ts.Requests, ts.Failures, ts.Seconds, ts.Answers)
		t.Logf("UDP load %s: %d requests, %d failed in %.1fs, answers %v", target(vips[len(vips)-1], true), us.Requests, us.Failures, us.Seconds, us.Answers)
		if maxTerminating == 0 {
			t.Error("no serving-terminating endpoint seen during the rollout")
		}
		ts.check(t, 4)
		us.check(t, 4)
		c.waitBackends(t, "echo", 2)
	})

	t.Run("UDPFlowLeavesARemovedBackend", func(t *testing.T) {
		// One socket, one flow, through a rollout that removes every
		// backend it may be on. The socket is connected, balanced at
		// connect(): when its backend leaves, tc moves its datagrams
		// (new flows from-pod) and looks the next hop up again, since
		// the pods share a subnet.
		vip := c.clusterIPs(t, "echo")[0]
		moved := c.verdict(t, "from-pod", "dnat-new")
		l := c.startLoad(t, vip, true, "-reuse")
		time.Sleep(time.Second)
		c.kubectl(t, "", "rollout", "restart", "deployment/echo")
		c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=90s")
		c.waitPods(t, "app=echo", 2)
		time.Sleep(3 * time.Second)
		s := l.stop(t)
		t.Logf("one UDP flow to %s through a rollout: %d requests, %d failed in %.1fs, answers %v, errors %v",
			target(vip, true), s.Requests, s.Failures, s.Seconds, s.Answers, s.Errors)
		if s.Failures != 0 {
			t.Errorf("%d of %d datagrams unanswered", s.Failures, s.Requests)
		}
		if got := c.verdict(t, "from-pod", "dnat-new") - moved; got == 0 {
			t.Errorf("the socket's datagrams were never moved by tc")
		}
		c.waitBackends(t, "echo", 2)
	})

	t.Run("AgentRestartUnderLoad", func(t *testing.T) {
		vips := c.clusterIPs(t, "echo")
		before := c.frontends(t)
		fresh := c.startLoad(t, vips[len(vips)-1], false)
		reused := c.startLoad(t, vips[0], false, "-reuse")
		time.Sleep(time.Second)
		pid, err := c.box.AgentPID()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.box.StopAgent(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the datapath alone
		t0 := time.Now()
		if err := c.box.StartAgent(c.ctx); err != nil {
			t.Fatal(err)
		}
		healthy := time.Since(t0)
		time.Sleep(time.Second)
		fs, rs := fresh.stop(t), reused.stop(t)
		npid, _ := c.box.AgentPID()
		t.Logf("podnic-agent pid %d SIGKILLed, 2 s without agent, pid %d healthy %v after start", pid, npid, healthy.Round(time.Millisecond))
		t.Logf("new-connection load %s: %d requests, %d failed in %.1fs", target(vips[len(vips)-1], false), fs.Requests, fs.Failures, fs.Seconds)
		t.Logf("keep-alive load %s: %d requests, %d failed in %.1fs", target(vips[0], false), rs.Requests, rs.Failures, rs.Seconds)
		fs.check(t, 2)
		rs.check(t, 1)
		if after := c.frontends(t); after != before {
			t.Errorf("the maps changed across the restart:\nbefore %s\nafter  %s", before, after)
		}
		c.noStaleAttachments(t)
	})

	t.Run("DeletedServiceIsRejectedAtOnce", func(t *testing.T) {
		// Known VIP, no endpoints: the datapath rejects (kube-proxy too).
		c.refusedAtOnce(t, "client", c.emptyVIPs(t), "no endpoints")
		vips := c.deletedService(t, "client", "doomed")
		before := c.fabricCounters(t)
		// The VIP is no Service's any more, but it lies in the Service
		// CIDRs the agent was given (--service-cidr): the datapath refuses
		// the connection at once, before the packet leaves the pod.
		// (kube-proxy v1.36 drops such traffic in nftables mode and routes
		// it in iptables mode; a VPC router then drops it: a timeout.)
		c.refusedAtOnce(t, "client", vips, "deleted")
		after := c.fabricCounters(t)
		if after["IpExtInNoRoutes"] != before["IpExtInNoRoutes"] || after["Ip6InNoRoutes"] != before["Ip6InNoRoutes"] {
			t.Errorf("packets to the deleted VIPs left the pod: gateway counters %v -> %v", before, after)
		}
	})

	t.Run("DNSThroughCoreDNS", func(t *testing.T) {
		if corednsErr != nil {
			t.Skipf("no CoreDNS binary: %v", corednsErr)
		}
		c.checkDNS(t, coredns)
	})

	t.Run("PodDeletionReturnsTheENI", func(t *testing.T) {
		c.deleteReturnsTheENI(t, "client")
	})
}

// doomed is a Service over echo that a scenario deletes.
const doomed = `apiVersion: v1
kind: Service
metadata: {name: %s}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

// deletedService makes a Service named name over echo, asks it once from
// pod, deletes it and waits until its ClusterIPs are gone from the maps;
// it returns them.
func (c *cluster) deletedService(t *testing.T, pod, name string) []netip.Addr {
	t.Helper()
	c.kubectl(t, fmt.Sprintf(doomed, name), "apply", "-f", "-")
	vips := c.clusterIPs(t, name)
	c.waitBackends(t, name, 2)
	for _, vip := range vips {
		c.ask(t, pod, vip, false, 1)
	}
	t0 := time.Now()
	c.kubectl(t, "", "delete", "service", name, "--wait=true")
	for _, vip := range vips {
		waitUntil(t, c.ctx, fmt.Sprintf("%v gone from the maps", vip), func() error {
			for _, line := range strings.Split(c.frontends(t), "\n") {
				if strings.HasPrefix(line, netip.AddrPortFrom(vip, 80).String()+"/") {
					return errors.New(line)
				}
			}
			return nil
		})
	}
	t.Logf("Service %s deleted and gone from the maps in %v", name, time.Since(t0).Round(time.Millisecond))
	return vips
}

// emptyVIPs returns the ClusterIPs of the Service without endpoints, once
// they are in the maps.
func (c *cluster) emptyVIPs(t *testing.T) []netip.Addr {
	t.Helper()
	vips := c.clusterIPs(t, "empty")
	for _, vip := range vips {
		c.waitProgrammed(t, "empty", vip, 0)
	}
	return vips
}

// refusedAtOnce checks that a GET from pod to each of vips is refused
// within a second; what says why it should be.
func (c *cluster) refusedAtOnce(t *testing.T, pod string, vips []netip.Addr, what string) {
	t.Helper()
	for _, vip := range vips {
		took, err := c.failOnce(t, pod, vip, 5*time.Second)
		t.Logf("%s (%s) from %s: failed after %v: %v", target(vip, false), what, pod, took, err)
		if !strings.Contains(err.Error(), "connection refused") || took > time.Second {
			t.Errorf("%s (%s) from %s: want connection refused at once, have %v after %v", target(vip, false), what, pod, err, took)
		}
	}
}

// cluster is the box as the scenarios use it: kubectl, kubectl exec in the
// client pod, the maps.
type cluster struct {
	box *nodebox.Box
	ctx context.Context
	n   int // loads started, for their stop files
}

func (c *cluster) kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := c.box.Kubectl(c.ctx, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkClusterIPs asks every ClusterIP of echo, over TCP and UDP, 20 times
// from pod: both backends must answer and see pod's own address. Every
// connection and socket must be balanced at the socket (podnic-agent's
// default), none translated by tc.
func (c *cluster) checkClusterIPs(t *testing.T, pod string) {
	t.Helper()
	client := c.podAddrs(t, pod)
	echoes := c.podNames(t, "app=echo")
	vips := c.clusterIPs(t, "echo")
	balanced, dnatNew := c.verdict(t, "connect", "socket-lb"), c.verdict(t, "from-pod", "dnat-new")
	for _, vip := range vips {
		for _, udp := range []bool{false, true} {
			answers, remotes := c.ask(t, pod, vip, udp, 20)
			t.Logf("%s from %s: %v", target(vip, udp), pod, answers)
			for _, name := range echoes {
				if answers[name] == 0 {
					t.Errorf("%s: backend %s never answered 20 requests (%v)", target(vip, udp), name, answers)
				}
			}
			for _, r := range remotes {
				if !slices.Contains(client, r) {
					t.Errorf("%s: a backend saw %s as %v, not one of its addresses %v", target(vip, udp), pod, r, client)
				}
			}
		}
	}
	if got := c.verdict(t, "connect", "socket-lb") - balanced; got < uint64(40*len(vips)) {
		t.Errorf("%d TCP connections and UDP sockets balanced at the socket, want at least %d", got, 40*len(vips))
	}
	if got := c.verdict(t, "from-pod", "dnat-new") - dnatNew; got != 0 {
		t.Errorf("%d new flows translated by tc, want none", got)
	}
}

// checkSelfAccess asks every ClusterIP of svc, whose one backend is pod,
// from pod, over TCP and UDP: pod itself must answer.
func (c *cluster) checkSelfAccess(t *testing.T, pod, svc string) {
	t.Helper()
	for _, vip := range c.clusterIPs(t, svc) {
		for _, udp := range []bool{false, true} {
			answers, _ := c.ask(t, pod, vip, udp, 5)
			if answers[pod] != 5 {
				t.Errorf("%s: want 5 answers from %s, have %v", target(vip, udp), pod, answers)
			}
		}
	}
}

// deleteReturnsTheENI deletes pod and waits until its ENI is back in the
// node, down.
func (c *cluster) deleteReturnsTheENI(t *testing.T, pod string) {
	t.Helper()
	mac := strings.TrimSpace(c.kubectl(t, "", "exec", pod, "--", "cat", "/sys/class/net/eth0/address"))
	t0 := time.Now()
	c.kubectl(t, "", "delete", "pod", pod, "--wait=true", "--timeout=60s")
	waitUntil(t, c.ctx, pod+"'s ENI back in the node", func() error {
		for name, e := range nodeENIs(t, c.box) {
			if e.mac == mac {
				if e.up {
					return fmt.Errorf("%s (%s) is back but up", name, e.mac)
				}
				return nil
			}
		}
		return fmt.Errorf("%s not back in the node", mac)
	})
	t.Logf("%s deleted and its ENI %s back in the node in %v", pod, mac, time.Since(t0).Round(time.Millisecond))
}

// clusterIPs returns the ClusterIPs of a Service, IPv4 first.
func (c *cluster) clusterIPs(t *testing.T, svc string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, s := range strings.Fields(c.kubectl(t, "", "get", "service", svc, "-o", "jsonpath={.spec.clusterIPs[*]}")) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("ClusterIP %q of %s: %v", s, svc, err)
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Is4() && !out[j].Is4() })
	return out
}

// podNames returns the names of the pods matching selector.
func (c *cluster) podNames(t *testing.T, selector string) []string {
	t.Helper()
	return strings.Fields(c.kubectl(t, "", "get", "pods", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"))
}

// podAddrs returns a pod's addresses.
func (c *cluster) podAddrs(t *testing.T, pod string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, s := range strings.Fields(c.kubectl(t, "", "get", "pod", pod, "-o", "jsonpath={.status.podIPs[*].ip}")) {
		out = append(out, netip.MustParseAddr(s))
	}
	if len(out) != 2 {
		t.Fatalf("pod %s has %v, want an IPv4 and an IPv6 address", pod, out)
	}
	return out
}

// waitPods waits until exactly n pods match selector, none terminating.
func (c *cluster) waitPods(t *testing.T, selector string, n int) {
	t.Helper()
	waitUntil(t, c.ctx, fmt.Sprintf("%d pods %s", n, selector), func() error {
		names := c.podNames(t, selector)
		if len(names) != n {
			return fmt.Errorf("pods: %v", names)
		}
		return nil
	})
}

// frontends returns the Service maps as text, one frontend a line with its
// backends and their states.
func (c *cluster) frontends(t *testing.T) string {
	t.Helper()
	d, err := bpf.OpenPinned(c.box.PinnedRoot())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	services, err := d.Maps.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range services {
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, fmt.Sprintf("%v#%d(%v)", b.Addr, b.ID, b.State))
		}
		sort.Strings(bs)
		lines = append(lines, fmt.Sprintf("%v affinity=%v %v", s.Frontend, s.Affinity, bs))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitProgrammed waits until every port of vip has n active backends in
// the maps.
func (c *cluster) waitProgrammed(t *testing.T, svc string, vip netip.Addr, n int) {
	t.Helper()
	waitUntil(t, c.ctx, fmt.Sprintf("%s %v with %d backends in the maps", svc, vip, n), func() error {
		d, err := bpf.OpenPinned(c.box.PinnedRoot())
		if err != nil {
			return err
		}
		defer d.Close()
		services, err := d.Maps.ListServices()
		if err != nil {
			return err
		}
		found := false
		for _, s := range services {
			if s.VIP != vip {
				continue
			}
			found = true
			active := 0
			for _, b := range s.Backends {
				if b.State == bpf.BackendActive {
					active++
				}
			}
			if active != n || len(s.Backends) != n {
				return fmt.Errorf("%v has %d backends, %d active", s.Frontend, len(s.Backends), active)
			}
		}
		if !found {
			return errors.New("not in the maps")
		}
		return nil
	})
}

// serviceRow is a row of podnicctl service list, as the tests read it.
type serviceRow struct {
	VIP          netip.Addr
	Port         uint16
	Type         string
	SourceRanges []netip.Prefix
}

// waitServiceRow waits until podnicctl service list has a row for ap that
// check accepts; what says what is awaited.
func (c *cluster) waitServiceRow(t *testing.T, ap netip.AddrPort, what string, check func(serviceRow) error) {
	t.Helper()
	waitUntil(t, c.ctx, fmt.Sprintf("%v %s in podnicctl service list", ap, what), func() error {
		out, err := c.box.Podnicctl(c.ctx, "-o", "json", "service", "list")
		if err != nil {
			return err
		}
		var rows []serviceRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return fmt.Errorf("parsing %s: %w", out, err)
		}
		for _, r := range rows {
			if r.VIP == ap.Addr() && r.Port == ap.Port() {
				return check(r)
			}
		}
		return errors.New("not listed")
	})
}

// waitFrontend waits until podnicctl service list shows ap as a frontend
// of type typ.
func (c *cluster) waitFrontend(t *testing.T, ap netip.AddrPort, typ string) {
	t.Helper()
	c.waitServiceRow(t, ap, "of type "+typ, func(r serviceRow) error {
		if r.Type != typ {
			return fmt.Errorf("%v is of type %q", ap, r.Type)
		}
		return nil
	})
}

// noStaleAttachments checks that every attach point runs the programs the
// agent pinned: a restarted agent moved the running pods to them.
func (c *cluster) noStaleAttachments(t *testing.T) {
	t.Helper()
	out, err := c.box.Podnicctl(c.ctx, "-o", "json", "status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Attachments, StaleAttachments int }
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("parsing podnicctl status: %v\n%s", err, out)
	}
	t.Logf("%d attach points, %d on an earlier build's programs", st.Attachments, st.StaleAttachments)
	if st.Attachments == 0 || st.StaleAttachments != 0 {
		t.Errorf("%d attach points, %d of them on an earlier build's programs; want some, none stale", st.Attachments, st.StaleAttachments)
	}
}

// waitSourceRanges waits until podnicctl service list shows ap taking new
// flows from want alone.
func (c *cluster) waitSourceRanges(t *testing.T, ap netip.AddrPort, want ...netip.Prefix) {
	t.Helper()
	c.waitServiceRow(t, ap, fmt.Sprintf("with source ranges %v", want), func(r serviceRow) error {
		if !slices.Equal(r.SourceRanges, want) {
			return fmt.Errorf("%v takes %v", ap, r.SourceRanges)
		}
		return nil
	})
}

// waitBackends waits until every ClusterIP of svc has n backends.
func (c *cluster) waitBackends(t *testing.T, svc string, n int) {
	t.Helper()
	for _, vip := range c.clusterIPs(t, svc) {
		c.waitProgrammed(t, svc, vip, n)
	}
}

// target is how podnic-get names vip's port 80.
func target(vip netip.Addr, udp bool) string { return targetAt(netip.AddrPortFrom(vip, 80), udp) }

// targetAt is how podnic-get names ap.
func targetAt(ap netip.AddrPort, udp bool) string {
	if udp {
		return ap.String()
	}
	return "http://" + ap.String() + "/"
}

var youAre = regexp.MustCompile(`you are (\S+)`)

// ask sends n requests from pod to vip:80, each on a new connection or
// socket, and returns the answers per backend and the client addresses the
// backends saw (HTTP only). Any failure fails t.
func (c *cluster) ask(t *testing.T, pod string, vip netip.Addr, udp bool, n int) (map[string]int, []netip.Addr) {
	t.Helper()
	return c.askAt(t, pod, netip.AddrPortFrom(vip, 80), udp, n)
}

// askAt is ask to ap.
func (c *cluster) askAt(t *testing.T, pod string, ap netip.AddrPort, udp bool, n int) (map[string]int, []netip.Addr) {
	t.Helper()
	args := []string{"exec", pod, "--", "/podnic-get", "-n", strconv.Itoa(n), "-timeout", "2s"}
	if udp {
		args = append(args, "-udp")
	}
	out := c.kubectl(t, "", append(args, targetAt(ap, udp))...)
	answers := map[string]int{}
	var remotes []netip.Addr
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimPrefix(line, "hello from "), " ")
		answers[strings.TrimSuffix(name, ":")]++
		if m := youAre.FindStringSubmatch(line); m != nil {
			ap, err := netip.ParseAddrPort(m[1])
			if err != nil {
				t.Fatalf("answer %q: %v", line, err)
			}
			remotes = append(remotes, ap.Addr())
		}
	}
	return answers, remotes
}

var after = regexp.MustCompile(`request 1 after (\S+): (.*)`)

// failOnce sends one GET to vip:80 from pod and returns how long it took
// to fail, as the client measured it, and its error. It fails t if the
// request succeeds.
func (c *cluster) failOnce(t *testing.T, pod string, vip netip.Addr, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	out, err := c.box.Kubectl(c.ctx, "", "exec", pod, "--", "/podnic-get", "-timeout", timeout.String(), target(vip, false))
	if err == nil {
		t.Fatalf("%s answered: %s", target(vip, false), out)
	}
	m := after.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: unexpected failure: %v", target(vip, false), err)
	}
	took, perr := time.ParseDuration(m[1])
	if perr != nil {
		t.Fatal(perr)
	}
	return took, errors.New(strings.TrimSpace(m[2]))
}

// load is podnic-get -load running in the client pod.
type load struct {
	stopFile string
	out      bytes.Buffer
	done     chan error
	c        *cluster
}

// summary is podnic-get -load's JSON.
type summary struct {
	Requests int
	Failures int
	Errors   []string
	Answers  map[string]int
	Seconds  float64
	Stopped  string
}

// startLoad starts a load loop from the client pod to vip:80: a new
// connection (or UDP socket) per request, one every 5 ms or so, at most
// 30,000 requests or 90 s.
func (c *cluster) startLoad(t *testing.T, vip netip.Addr, udp bool, extra ...string) *load {
	t.Helper()
	c.n++
	l := &load{stopFile: fmt.Sprintf("/stop-load-%d", c.n), done: make(chan error, 1), c: c}
	args := []string{"exec", "client", "--", "/podnic-get", "-load", "-n", "30000", "-for", "90s",
		"-interval", "5ms", "-timeout", "2s", "-stop-file", l.stopFile}
	if udp {
		// Each request from a port of its own, below the ephemeral range:
		// no flow repeats, whatever the kernel picks elsewhere.
		args = append(args, "-udp", "-n", "4000", "-src-port-base", strconv.Itoa(1024+4000*c.n))
	}
	args = append(append(args, extra...), target(vip, udp))
	cmd := c.box.KubectlCommand(c.ctx, args...)
	cmd.Stdout = &l.out
	cmd.Stderr = &l.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.done <- cmd.Wait() }()
	return l
}

// stop tells the loop to stop and returns its summary.
func (l *load) stop(t *testing.T) summary {
	t.Helper()
	l.c.kubectl(t, "", "exec", "client", "--", "sh", "-c", ": > "+l.stopFile)
	select {
	case err := <-l.done:
		if err != nil {
			t.Fatalf("load: %v\n%s", err, l.out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("load did not stop within 15s:\n%s", l.out.String())
	}
	var s summary
	if err := json.Unmarshal(l.out.Bytes(), &s); err != nil {
		t.Fatalf("load summary: %v\n%s", err, l.out.String())
	}
	return s
}

// check fails t unless no request failed, the loop ran until told to stop
// and at least backends backends answered.
func (s summary) check(t *testing.T, backends int) {
	t.Helper()
	if s.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v", s.Failures, s.Requests, s.Errors)
	}
	if s.Stopped != "stop-file" || s.Requests < 100 {
		t.Errorf("load stopped by %s after %d requests", s.Stopped, s.Requests)
	}
	if len(s.Answers) < backends {
		t.Errorf("%d backends answered, want at least %d: %v", len(s.Answers), backends, s.Answers)
	}
}

// watchTerminating polls svc's EndpointSlices every 200 ms for endpoints
// that are serving and terminating; the function it returns stops it and
// returns the most seen at once.
func (c *cluster) watchTerminating(t *testing.T, svc string) func() int {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	most := 0
	wg.Go(func() {
		for {
			var list struct {
				Items []struct {
					Endpoints []struct {
						Conditions struct{ Ready, Serving, Terminating *bool }
					}
				}
			}
			path := "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D" + svc
			if err := c.box.APIGet(path, &list); err == nil {
				n := 0
				for _, s := range list.Items {
					for _, e := range s.Endpoints {
						if is(e.Conditions.Serving) && is(e.Conditions.Terminating) {
							n++
						}
					}
				}
				most = max(most, n)
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	return func() int {
		close(stop)
		wg.Wait()
		return most
	}
}

func is(b *bool) bool { return b != nil && *b }

// verdict reads one of the datapath's verdict counters through podnicctl.
func (c *cluster) verdict(t *testing.T, hook, verdict string) uint64 {
	t.Helper()
	out, err := c.box.Podnicctl(c.ctx, "-o", "json", "verdicts")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Hook, Verdict string
		Packets       uint64
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("parsing podnicctl verdicts: %v\n%s", err, out)
	}
	for _, r := range rows {
		if r.Hook == hook && r.Verdict == verdict {
			return r.Packets
		}
	}
	return 0
}

// attachment is one row of `podnicctl attachments` (the agent's view).
type attachment struct{ Owner, Ifname, Hook, Mode, ProgramName string }

func (c *cluster) attachments(t *testing.T) []attachment {
	t.Helper()
	out, err := c.box.Podnicctl(c.ctx, "-o", "json", "attachments")
	if err != nil {
		t.Fatal(err)
	}
	var as []attachment
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		t.Fatalf("parsing podnicctl attachments: %v\n%s", err, out)
	}
	return as
}

// sandbox is a ready pod sandbox as crictl lists it.
type sandbox struct {
	ID             string
	RuntimeHandler string
	Metadata       struct{ Name string }
}

func (c *cluster) sandboxes(t *testing.T) []sandbox {
	t.Helper()
	out, err := c.box.RunCrictl(c.ctx, "pods", "--state", "ready", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var pods struct{ Items []sandbox }
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		t.Fatalf("parsing crictl pods: %v", err)
	}
	return pods.Items
}

// sandboxOf returns the id of pod's ready sandbox.
func (c *cluster) sandboxOf(t *testing.T, pod string) string {
	t.Helper()
	for _, s := range c.sandboxes(t) {
		if s.Metadata.Name == pod {
			return s.ID
		}
	}
	t.Fatalf("no ready sandbox of pod %s", pod)
	return ""
}

// checkProgramsByName checks that every pod's interface carries podnic's
// programs, named, through `podnicctl attachments` (the agent's view): on
// the full path a program on the NIC's ingress and egress (and lo's), on
// the socket path (RuntimeClass podnic-socket) podnic_guard alone on the
// NIC's egress.
func (c *cluster) checkProgramsByName(t *testing.T) {
	t.Helper()
	as := c.attachments(t)
	pods := c.sandboxes(t)
	if len(pods) == 0 {
		t.Fatal("no pods")
	}
	// Pods in the node's network namespace (podnic-agent's own) have no NIC.
	hostNetwork := strings.Fields(c.kubectl(t, "", "get", "pods", "-A", "-o",
		"jsonpath={range .items[?(@.spec.hostNetwork==true)]}{.metadata.name}{\" \"}{end}"))
	socketPods := 0
	for _, p := range pods {
		if slices.Contains(hostNetwork, p.Metadata.Name) {
			continue
		}
		var progs []string
		for _, a := range as {
			if strings.HasPrefix(a.Owner, p.ID+"--") && a.ProgramName != "" {
				progs = append(progs, fmt.Sprintf("%s/%s:%s(%s)", a.Ifname, a.Hook, a.ProgramName, a.Mode))
			}
		}
		sort.Strings(progs)
		t.Logf("%s (runtime handler %q): %v", p.Metadata.Name, p.RuntimeHandler, progs)
		if p.RuntimeHandler == nodebox.SocketPathClass {
			socketPods++
			if len(progs) != 1 || !strings.HasPrefix(progs[0], "eth0/egress:podnic_guard(") {
				t.Errorf("pod %s (sandbox %.12s) on the socket path: want podnic_guard alone on eth0's egress, have %v", p.Metadata.Name, p.ID, progs)
			}
			continue
		}
		if !slices.ContainsFunc(progs, func(s string) bool { return strings.Contains(s, "/ingress:") }) ||
			!slices.ContainsFunc(progs, func(s string) bool { return strings.Contains(s, "/egress:") }) {
			t.Errorf("pod %s (sandbox %.12s): want named programs on ingress and egress, have %v", p.Metadata.Name, p.ID, progs)
		}
	}
	if socketPods == 0 && !c.box.AgentDaemonSet {
		t.Errorf("no pod of runtime handler %s", nodebox.SocketPathClass)
	}
}

// fabricCounters returns the gateway's no-route and ICMP counters.
func (c *cluster) fabricCounters(t *testing.T) map[string]int {
	t.Helper()
	out, err := exec.CommandContext(c.ctx, "nsenter", "--net="+c.box.FabricNetns(), "nstat", "-asz",
		"IpExtInNoRoutes", "Ip6InNoRoutes", "IcmpOutDestUnreachs", "Icmp6OutDestUnreachs",
		"IcmpOutRateLimitHost", "Icmp6OutRateLimitHost", "IcmpOutRedirects", "Icmp6OutRedirects").Output()
	if err != nil {
		t.Fatalf("nstat in the fabric: %v", err)
	}
	n := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			n[f[0]], _ = strconv.Atoi(f[1])
		}
	}
	return n
}

// corednsWorkload runs CoreDNS with the kubernetes plugin in the node's
// network namespace (hostNetwork: the API server listens on the node's
// loopback only), reading the API as admin through the box's kubeconfig,
// behind a ClusterIP Service "dns" whose endpoint is the node, 10.1.0.2.
const corednsWorkload = `
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns}
data:
  Corefile: |
    .:1053 {
        errors
        kubernetes cluster.local {
            kubeconfig %[1]s admin
        }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns}
spec:
  replicas: 1
  selector: {matchLabels: {app: coredns}}
  template:
    metadata: {labels: {app: coredns}}
    spec:
      hostNetwork: true
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
      - name: coredns
        image: podnic.test/coredns:v1
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        readinessProbe: {tcpSocket: {port: 1053}, periodSeconds: 1}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns}
        - {name: kubeconfig, mountPath: %[1]s, readOnly: true}
        - {name: ca, mountPath: %[2]s, readOnly: true}
      volumes:
      - {name: config, configMap: {name: coredns}}
      - {name: kubeconfig, hostPath: {path: %[1]s, type: File}}
      - {name: ca, hostPath: {path: %[2]s, type: Directory}}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  selector: {app: coredns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
`

// checkDNS runs CoreDNS (scripts/coredns-binary.sh builds it from the Go
// module proxy, cached) and resolves the echo Service by name from the
// client, through the dns Service's ClusterIP, then GETs it.
func (c *cluster) checkDNS(t *testing.T, coredns string) {
	t0 := time.Now()
	if err := c.box.ImportImage(c.ctx, "podnic.test/coredns:v1", map[string]string{"coredns": coredns}, []string{"/coredns"}); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, fmt.Sprintf(corednsWorkload, c.box.Kubeconfig(), filepath.Dir(c.box.CAFile())), "apply", "-f", "-")
	c.kubectl(t, "", "rollout", "status", "deployment/coredns", "--timeout=60s")
	c.waitBackends(t, "dns", 1)
	t.Logf("CoreDNS imported, Ready and behind its ClusterIP in %v", time.Since(t0).Round(time.Millisecond))
	dns := c.clusterIPs(t, "dns")[0]
	out := c.kubectl(t, "", "exec", "client", "--", "/podnic-get", "-n", "3", "-dns-server", netip.AddrPortFrom(dns, 53).String(),
		"http://echo.default.svc.cluster.local/")
	t.Logf("GET http://echo.default.svc.cluster.local/ resolved through %v:53:\n%s", dns, strings.TrimSpace(out))
	if n := strings.Count(out, "hello from echo-"); n != 3 {
		t.Errorf("want 3 answers from echo pods, have %d", n)
	}
}
