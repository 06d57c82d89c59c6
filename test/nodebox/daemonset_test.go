package nodebox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnic/podnic/test/nodebox"
)

// TestAgentAsDaemonSet installs podnic as a cluster admin would, from
// deploy/: the image of deploy/Dockerfile and `helm install` of the chart
// deploy/helm/podnic with the box's values (image, CNI config, Service
// CIDRs, folders); the chart's defaults are deploy/'s plain manifests.
// The agent, in-cluster with its ServiceAccount, installs the CNI plugin
// and config after its first sync, which is what makes the node Ready;
// pods then reach Services; and a `helm upgrade` that rolls the agent
// under load fails no request.
func TestAgentAsDaemonSet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	c := &cluster{box: upBoxWith(t, ctx, nodebox.Options{ENIs: 4, AgentDaemonSet: true}), ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.box.Kubectl(context.Background(), "", "-n", "kube-system", "logs", "ds/podnic-agent", "--tail=40")
			t.Logf("--- podnic-agent pod log (tail) ---\n%s", out)
		}
	})

	// The node is Ready: the agent installed what the DaemonSet's image
	// holds, the pool's config as the ConfigMap gives it.
	plugin, err := os.ReadFile(filepath.Join(c.box.Bin, "podnic"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(c.box.Dir, "cni", "bin", "podnic")); err != nil || !bytes.Equal(got, plugin) {
		t.Errorf("the podnic plugin in the node's CNI bin dir: %v (%d bytes, want %d)", err, len(got), len(plugin))
	}
	conf := c.kubectl(t, "", "-n", "kube-system", "get", "configmap", "podnic-config", "-o", "jsonpath={.data['10-podnic\\.conflist']}")
	if got, err := os.ReadFile(filepath.Join(c.box.Dir, "cni", "net.d", "10-podnic.conflist")); err != nil || string(got) != conf {
		t.Errorf("the CNI config in the node's conf dir: %v\n%s\nwant\n%s", err, got, conf)
	}
	var st struct {
		Agent    bool
		Source   string
		Node     string
		LastSync *struct{ Error string }
	}
	out := c.kubectl(t, "", "-n", "kube-system", "exec", "ds/podnic-agent", "--", "podnicctl", "-o", "json", "status")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("podnicctl status in the agent's pod: %v\n%s", err, out)
	}
	if !st.Agent || st.Source != "kubernetes" || st.Node != nodebox.NodeName || st.LastSync == nil || st.LastSync.Error != "" {
		t.Errorf("podnicctl status in the agent's pod: %s", out)
	}

	c.kubectl(t, echoWorkload, "apply", "-f", "-")
	c.kubectl(t, "", "rollout", "status", "deployment/echo", "--timeout=60s")
	c.kubectl(t, "", "wait", "--for=condition=Ready", "pod/client", "--timeout=60s")
	c.waitBackends(t, "echo", 2)
	c.checkClusterIPs(t, "client")
	c.checkProgramsByName(t)

	// An upgrade under load: `helm upgrade` with a new agent setting
	// changes the ConfigMap, whose digest rolls the DaemonSet's pod.
	vips := c.clusterIPs(t, "echo")
	l := c.startLoad(t, vips[len(vips)-1], false)
	time.Sleep(time.Second)
	before := c.kubectl(t, "", "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=podnic-agent", "-o", "jsonpath={.items[*].metadata.uid}")
	t0 := time.Now()
	if out, err := c.box.Helm(ctx, "upgrade", "podnic", nodebox.ChartDir(repoRoot(t)), "--namespace", "kube-system",
		"--reuse-values", "--set", "agentFlags.log-level=debug"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.kubectl(t, "", "-n", "kube-system", "rollout", "status", "daemonset/podnic-agent", "--timeout=60s")
	took := time.Since(t0)
	time.Sleep(time.Second)
	s := l.stop(t)
	after := c.kubectl(t, "", "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=podnic-agent", "-o", "jsonpath={.items[*].metadata.uid}")
	t.Logf("helm upgrade rolled the agent (pod %s → %s) in %v; load %s: %d requests, %d failed in %.1fs",
		before, after, took.Round(time.Millisecond), target(vips[len(vips)-1], false), s.Requests, s.Failures, s.Seconds)
	if agent := c.kubectl(t, "", "-n", "kube-system", "get", "configmap", "podnic-config", "-o", "jsonpath={.data.agent\\.yaml}"); !strings.Contains(agent, "log-level: debug") {
		t.Errorf("the upgrade did not reach the agent's flags:\n%s", agent)
	}
	if before == after || strings.Contains(after, " ") {
		t.Errorf("agent pods %q before the restart, %q after: want one new pod", before, after)
	}
	s.check(t, 2)
	c.noStaleAttachments(t)
	c.checkClusterIPs(t, "client")
}
