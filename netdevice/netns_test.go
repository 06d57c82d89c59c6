package netdevice

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func netnsInode(t *testing.T) string {
	t.Helper()
	l, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestInNetnsRunsInsideAndLeavesCallerAlone(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	name := fmt.Sprintf("podnic-netdev-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating netns: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	path := "/run/netns/" + name

	outside := netnsInode(t)
	var inside string
	if err := InNetns(path, func() error {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		inside = l
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside == outside || !strings.HasPrefix(inside, "net:[") {
		t.Errorf("fn ran in %q, outside is %q", inside, outside)
	}
	if now := netnsInode(t); now != outside {
		t.Errorf("caller's netns changed from %s to %s", outside, now)
	}
}

func TestInNetnsReportsAMissingNamespace(t *testing.T) {
	err := InNetns("/run/netns/podnic-does-not-exist", func() error {
		t.Error("fn ran although the netns does not exist")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "opening netns") {
		t.Errorf("got %v, want an error naming the netns", err)
	}
}
