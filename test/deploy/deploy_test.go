// Package deploy_test checks deploy/: that the plain manifests are the
// chart's defaults rendered, and that the chart's values reach what they
// name. The node in a box installs the chart for real
// (test/nodebox.TestAgentAsDaemonSet).
package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// helmBinary returns $PODNIC_HELM, or builds helm (cached) with
// scripts/helm-binary.sh.
func helmBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("building helm takes minutes the first time")
	}
	if h := os.Getenv("PODNIC_HELM"); h != "" {
		return h
	}
	out, err := exec.Command(filepath.Join(repoRoot(t), "scripts", "helm-binary.sh")).Output()
	if err != nil {
		t.Fatalf("scripts/helm-binary.sh (set PODNIC_HELM to skip it): %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func TestPlainManifestsAreTheChartsDefaults(t *testing.T) {
	h := helmBinary(t)
	root, dir := repoRoot(t), t.TempDir()
	cmd := exec.Command(filepath.Join(root, "scripts", "deploy-manifests.sh"), dir)
	cmd.Env = append(os.Environ(), "PODNIC_HELM="+h)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/deploy-manifests.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"podnic-agent-rbac.yaml", "podnic.yaml"} {
		want, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/%s is not the chart's defaults rendered: run `make deploy-manifests` and commit", f)
		}
	}
}

// render runs helm template on the chart with args.
func render(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(helmBinary(t), append([]string{"template", "pool-b", filepath.Join(repoRoot(t), "deploy", "helm", "podnic"), "--namespace", "podnic"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestChartValuesReachTheManifest(t *testing.T) {
	out := render(t,
		"--set", "apiServer.host=10.0.0.10", "--set", "apiServer.port=443",
		"--set", "cgroupRoot=", "--set", "rbac.create=false",
		"--set-json", `serviceCIDRs=["10.100.0.0/16","fd00:100::/108"]`,
		"--set", "cni.confDir=/var/lib/rancher/k3s/agent/etc/cni/net.d",
		// helm merges maps: the default device pool is removed with null.
		"--set-json", `cni.plugin={"devicePool":null,"deviceMAC":"02:00:00:00:00:07","servicePath":"socket","ipam":{"type":"host-local"}}`,
		"--set", "agentFlags.log-level=debug")
	for _, want := range []string{
		"name: pool-b-agent\n  namespace: podnic",
		"name: KUBERNETES_SERVICE_HOST\n          value: \"10.0.0.10\"",
		"name: KUBERNETES_SERVICE_PORT\n          value: \"443\"",
		"service-cidr: 10.100.0.0/16,fd00:100::/108",
		"log-level: debug",
		"path: /var/lib/rancher/k3s/agent/etc/cni/net.d",
		`"servicePath": "socket"`,
		`"deviceMAC": "02:00:00:00:00:07"`,
		`"fd00:100::/108"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered chart lacks %q", want)
		}
	}
	for _, unwanted := range []string{"cgroup-root:", "podnic-api-server", "kind: ClusterRole", "devicePool"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("rendered chart has %q", unwanted)
		}
	}
}

// The chart's schema stops malformed values before anything is rendered,
// naming the value: a mistyped key, a value out of its set or range, a
// relative path, a flag or plugin field the chart sets itself.
func TestChartRefusesMalformedValues(t *testing.T) {
	h := helmBinary(t)
	chart := filepath.Join(repoRoot(t), "deploy", "helm", "podnic")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "serviceCIDR=10.96.0.0/12"}, "additional properties 'serviceCIDR' not allowed"},
		{[]string{"--set", "image.pullPolicy=Sometimes"}, "at '/image/pullPolicy'"},
		{[]string{"--set-json", `serviceCIDRs=["10.96.0.0"]`}, "at '/serviceCIDRs/0'"},
		{[]string{"--set-json", `serviceCIDRs=[]`}, "at '/serviceCIDRs'"},
		{[]string{"--set", "apiServer.port=70000"}, "at '/apiServer/port'"},
		{[]string{"--set", "cgroupRoot=sys/fs/cgroup"}, "at '/cgroupRoot'"},
		{[]string{"--set", "agentFlags.service-cidr=10.0.0.0/8"}, "at '/agentFlags/service-cidr'"},
		{[]string{"--set", "agentFlags.Log_Level=debug"}, "additional properties 'Log_Level' not allowed"},
		{[]string{"--set", "rbac.create=maybe"}, "at '/rbac/create'"},
		{[]string{"--set", "cni.binDir=opt/cni/bin"}, "at '/cni/binDir'"},
		{[]string{"--set", "cni.confName=10-podnic.conf"}, "at '/cni/confName'"},
		{[]string{"--set", "cni.cniVersion=2.0.0"}, "at '/cni/cniVersion'"},
		{[]string{"--set-json", `cni.plugin={"type":"bridge"}`}, "at '/cni/plugin/type'"},
	} {
		cmd := exec.Command(h, append([]string{"template", "pool-b", chart}, tc.args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("helm template %v rendered", tc.args)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("helm template %v: error without %q:\n%s", tc.args, tc.want, out)
		}
	}
}
