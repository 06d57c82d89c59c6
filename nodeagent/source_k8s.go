package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeClient builds a client from a kubeconfig, or from the in-cluster
// config when kubeconfig is empty.
func KubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("loading Kubernetes client config: %w", err)
	}
	cfg.UserAgent = "podnic-agent"
	// Informers list 10k Services at start; do not let the default
	// 5 qps limit the relists.
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

// KubeSource feeds the agent from the API server: informers on Services
// (without the service-proxy-name label) and EndpointSlices (without the
// headless label), as kube-proxy sets them up, and this Node, read with
// get every NodeInterval (the agent may only get its Node).
type KubeSource struct {
	Client       kubernetes.Interface
	NodeName     string
	Resync       time.Duration // informer resync; 0: none
	NodeInterval time.Duration // 0: 30s
}

// Run starts the informers, marks the agent ready once their caches are
// synced, and returns when ctx ends.
func (s KubeSource) Run(ctx context.Context, a *Agent) error {
	svcFactory := informers.NewSharedInformerFactoryWithOptions(s.Client, s.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "!" + LabelServiceProxyName }))
	epFactory := informers.NewSharedInformerFactoryWithOptions(s.Client, s.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "!" + LabelHeadless }))

	svcInf := svcFactory.Core().V1().Services().Informer()
	if _, err := svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { onService(a, o) },
		UpdateFunc: func(_, o any) { onService(a, o) },
		DeleteFunc: func(o any) {
			if m, ok := meta(o); ok {
				a.OnServiceDelete(m.GetNamespace(), m.GetName())
			}
		},
	}); err != nil {
		return fmt.Errorf("watching services: %w", err)
	}
	epInf := epFactory.Discovery().V1().EndpointSlices().Informer()
	if _, err := epInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { onSlice(a, o) },
		UpdateFunc: func(_, o any) { onSlice(a, o) },
		DeleteFunc: func(o any) {
			if m, ok := meta(o); ok {
				a.OnEndpointSliceDelete(m.GetNamespace(), m.GetName())
			}
		},
	}); err != nil {
		return fmt.Errorf("watching endpointslices: %w", err)
	}

	// The zone comes before the first sync, so the first sync already
	// honours topology hints.
	found := s.readNode(ctx, a)
	svcFactory.Start(ctx.Done())
	epFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, epInf.HasSynced) {
		return fmt.Errorf("waiting for the informers: %w", ctx.Err())
	}
	a.log.Info("kubernetes sources synced", "services", len(svcInf.GetStore().ListKeys()), "endpointslices", len(epInf.GetStore().ListKeys()))
	a.SetReady()

	// Until the Node is registered (the agent may start before kubelet
	// on a new node), it is read every second.
	every := s.NodeInterval
	if every == 0 {
		every = 30 * time.Second
	}
	t := time.NewTimer(s.nodeWait(found, every))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			svcFactory.Shutdown()
			epFactory.Shutdown()
			return nil
		case <-t.C:
			found = s.readNode(ctx, a)
			t.Reset(s.nodeWait(found, every))
		}
	}
}

// nodeWait is the time until the Node is read again.
func (s KubeSource) nodeWait(found bool, every time.Duration) time.Duration {
	if !found && s.NodeName != "" {
		return min(time.Second, every)
	}
	return every
}

// readNode reads this Node's zone and addresses into a; it reports
// whether the Node exists (an error reading it counts as existing: the
// regular interval retries).
func (s KubeSource) readNode(ctx context.Context, a *Agent) bool {
	if s.NodeName == "" {
		return false
	}
	n, err := s.Client.CoreV1().Nodes().Get(ctx, s.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		a.OnNode(nil)
		a.OnNodeIPs(nil)
		return false
	}
	if err != nil {
		a.log.Warn("reading this node's labels and addresses", "node", s.NodeName, "error", err)
		return true
	}
	a.OnNode(n.Labels)
	a.OnNodeIPs(nodeIPs(n))
	return true
}

// nodeIPs returns a Node's InternalIP addresses: kube-proxy's primary node
// IPs, where it serves NodePorts to the node's pods.
func nodeIPs(n *v1.Node) []netip.Addr {
	var out []netip.Addr
	for _, na := range n.Status.Addresses {
		if na.Type != v1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(na.Address); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func onService(a *Agent, o any) {
	if svc, ok := o.(*v1.Service); ok {
		a.OnService(svc)
	}
}

func onSlice(a *Agent, o any) {
	if s, ok := o.(*discovery.EndpointSlice); ok {
		a.OnEndpointSlice(s)
	}
}

func meta(o any) (metav1.Object, bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	m, ok := o.(metav1.Object)
	return m, ok
}
