// Package demo checks that the README's first command, 'make demo', does
// what the README says.
package demo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDemoShowsServicesWorkingAndTearsDown(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the demo needs root")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./nodeagent/cmd/podnicctl")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building podnicctl: %v\n%s", err, out)
	}
	prefix := fmt.Sprintf("pndemo%d", os.Getpid()%100000)
	env := append(os.Environ(), "PODNIC_DEMO_PREFIX="+prefix, "PODNIC_BIN="+bin)
	demo := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("./scripts/demo-lite.sh", args...)
		cmd.Dir, cmd.Env = repo, env
		cmd.WaitDelay = time.Second
		timer := time.AfterFunc(2*time.Minute, func() { _ = cmd.Process.Kill() })
		defer timer.Stop()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("demo.sh %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { demo("down") })

	out := demo()
	for _, want := range []string{
		"hello from server-pod (10.244.0.20:8080), you are 10.244.0.10:",
		"hello from client-pod (10.244.0.10:8080), you are 10.244.0.10:",
		"Couldn't connect to server",
		"podnic_from_pod",
		"podnic_guard",
		"socket-lb",
		"dnat-new",
		"reverse-nat",
		"reject",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}

	demo("down")
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), prefix) {
		t.Errorf("namespaces left after demo down:\n%s", out)
	}
	if _, err := os.Stat("/sys/fs/bpf/" + prefix); !os.IsNotExist(err) {
		t.Errorf("pins left after demo down: %v", err)
	}
}

// TestNodeBoxDemoShowsClusterIPAndSelfAccess runs 'make demo”s script in a
// box directory of its own, so a demo the user left up is not touched.
func TestNodeBoxDemoShowsClusterIPAndSelfAccess(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the demo needs root")
	}
	if testing.Short() {
		t.Skip("the node in a box takes about 20 s")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// On a fresh machine the Kubernetes binaries are built first (a cold
	// build takes minutes, more on a busy machine): bounded on their own,
	// so that the demo's bound below is about the demo.
	prebuild := exec.Command("./scripts/k8s-binaries.sh", "kube-apiserver", "kubectl", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet")
	prebuild.Dir = repo
	timer := time.AfterFunc(20*time.Minute, func() { _ = prebuild.Process.Kill() })
	if out, err := prebuild.CombinedOutput(); err != nil {
		t.Fatalf("building the Kubernetes binaries: %v\n%s", err, out)
	}
	timer.Stop()
	env := append(os.Environ(), "PODNIC_NODEBOX_DIR="+filepath.Join(t.TempDir(), "box"))
	demo := func(args ...string) (string, error) {
		cmd := exec.Command("./scripts/demo.sh", args...)
		cmd.Dir, cmd.Env = repo, env
		// Cold, it also builds podnic and the images (2.5 min seen).
		timer := time.AfterFunc(8*time.Minute, func() { _ = cmd.Process.Kill() })
		defer timer.Stop()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := demo("down"); err != nil {
			t.Errorf("demo down: %v\n%s", err, out)
		}
	})
	out, err := demo()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"default/echo:http",
		"default/client-self:http",
		"podnic_from_pod",
		"hello from client (10.1.0.",
		"socket-lb",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "hello from echo-"); n != 4 {
		t.Errorf("%d answers from the echo pods through the ClusterIP, want 4:\n%s", n, out)
	}
}
