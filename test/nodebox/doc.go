// Package nodebox is the node in a box: a real single-node Kubernetes
// cluster, started and stopped by the harness, in which kubelet →
// containerd → the podnic CNI plugin is the real call path and
// podnic-agent, not kube-proxy, serves Services.
//
// What runs, and where (nothing listens outside namespaces the box makes):
//
//	node         a process holding a new network and mount namespace. In it:
//	             etcd, kube-apiserver, kube-controller-manager,
//	             kube-scheduler and kubelet v1.36.3 (scripts/k8s-binaries.sh),
//	             containerd 1.6 and runc from Debian, podnic-agent. All of
//	             them listen on the node's loopback (apiserver
//	             127.0.0.1:6443) or its primary NIC eth0 10.1.0.2/24
//	             (kubelet). tmpfs hides /run/containerd, /run/netns,
//	             /var/lib/cni and /var/log/containers of the machine; a
//	             bpffs of its own is mounted on /sys/fs/bpf, so podnic's pins
//	             go when the box goes; the global sysctls kubelet wants to
//	             set are files bound over /proc/sys, already holding its
//	             values (protectKernelDefaults on).
//	fabric       a network namespace standing in for the VPC: bridge br0
//	             10.1.0.1/24, fd00:1::1/64 (the gateway), forwarding on.
//	ENIs         veth pairs: "eniN" waits in the node namespace with MAC
//	             02:00:0a:01:00:NN, its peer sits on br0. Each pod gets one
//	             from podnic's devicePool (the first free MAC of the
//	             list); DEL returns it to the node.
//	pods         podnic IPAM 10.1.0.10-10.1.0.250 and fd00:1::10-fd00:1::ff;
//	             Services 10.96.0.0/16 and fd00:96::/108.
//	CNI          containerd runs the podnic plugin with cni/net.d's config
//	             (the full path); pods of RuntimeClass podnic-socket
//	             (SocketPathClass; a runtime handler of its own) get
//	             cni/net.d-socket's, the same with "servicePath": "socket".
//	cgroups      kubelet's cgroupRoot is /podnic-nodebox-<id> in every v1
//	             hierarchy (cgroupfs driver).
//
// Images cannot be pulled: the pause image (test/cmd/podnic-pause) and the
// workload image (test/cmd/podnic-echo, test/cmd/podnic-get as the HTTP
// client, and a static busybox for sh and friends; its wget crashes here) are built here as OCI image tarballs and imported with
// `ctr -n k8s.io images import`; pods use imagePullPolicy: Never.
//
// Everything the box made goes at Down: processes by their own PIDs (and
// start times), then what is left in its cgroups and mount namespace
// (containerd's shims, containers), the namespaces with their links, the
// cgroups and the directory. A watchdog process (`nodebox watch`) holds a
// pipe from the process that started the box and tears it down if that
// process dies without doing so (a test timeout, SIGKILL).
//
// The end-to-end scenarios of issue 5 are TestScenarios (scenarios_test.go,
// `make e2e`): one box, ten ENIs, Deployments, Services and kubectl;
// CoreDNS for its DNS scenario comes from scripts/coredns-binary.sh (the
// wrapper module test/coredns/build, cached by go.sum hash).
//
// With Options.AgentDaemonSet the box installs podnic as a cluster admin
// would (deploy/README.md): podnic-agent runs as deploy/podnic.yaml's
// DaemonSet, in-cluster, from an image built from deploy/Dockerfile's lines,
// and installs the CNI plugin and config itself; the box only sets the
// values an admin sets (image, CNI config, Service CIDRs, CNI folders,
// the API server's address). TestAgentAsDaemonSet runs it.
//
// Use Up and Down from Go (tests: Start), or the nodebox command
// (test/nodebox/cmd/nodebox, scripts/nodebox.sh) to bring a box up, leave it
// up and take it down later.
package nodebox
