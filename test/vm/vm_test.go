package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Environment of the host-side test.
const (
	// envKernel overrides DefaultKernelDir.
	envKernel = "PODNIC_VM_KERNEL"
	// envOptional=1 skips the test when qemu or the kernel is missing;
	// by default that fails it, so CI cannot lose the coverage silently.
	envOptional = "PODNIC_VM_OPTIONAL"
	// envRun replaces the guest's -test.run pattern.
	envRun = "PODNIC_VM_RUN"
	// envConsole=1 streams the guest's console to stderr as it arrives.
	envConsole = "PODNIC_VM_CONSOLE"
)

// vmTimeout bounds one boot, tests included. The guest's bpf tests take
// 230-330 s under TCG on this 2-CPU machine (2026-12-06, with SCTP) and
// grow with the package; a busy machine stretches them, so the bound
// leaves room.
const vmTimeout = 600 * time.Second

// tcxOnly are the bpf tests that need TCX: they attach with ModeTCX or
// link.AttachTCX, or assert what a TCX kernel does. The guest runs every
// other test of the package, and the legacy subtest of each mode table.
var tcxOnly = []string{
	"TestAutoModeAttachesWithTCXWhenTheKernelHasIt",
	"TestSwitchingAttachModeLeavesOneProgramPerHook",
	"TestPinnedTCXLinkOutlivesNetnsUntilDetach",
	"TestForeignProgramsSurviveAttachAndDetach",
	"TestRejectedConnectionsFailAtOnce",
	"TestNewLinksRunBehindParkedOnesAndOutliveThem",
	"TestDeferredDetachAfterNetnsDeletionLeavesNothing",
	"TestUpdateAttachmentsCountsDefunctLinks",
}

// racyInGuest are tests left out of the guest run for races with the
// kernel on its one slow CPU. None now: simnode treats a link the kernel
// is already deleting (ENODEV) as gone.
var racyInGuest = []string{}

// mustPass are tests the guest run must report as passed, so that a
// pattern or gating mistake cannot turn the run into a vacuous PASS.
var mustPass = []string{
	"TestVMDatapathPassesTheVerifierOfThisKernel",
	"TestVMAutoModeFallsBackToClsactWithoutTCX",
	"TestVMTCXModeSaysItNeedsLinux66",
	"TestVMServiceTrafficFlowsThroughClsactFilters",
	"TestServiceTrafficIsTranslated/legacy",
	"TestSelfAccessWorksOverLoopback/legacy",
	"TestBulkTransferKeepsChecksumsRight/legacy",
	// SCTP sockets exist only in the guest (Debian's sctp module).
	"TestSCTPAssociationThroughAService/legacy",
	// ipvlan exists only in the guest.
	"TestIPVlanPodsReachClusterIPs",
	// Socket balancing with getpeername(): CO-RE in a cgroup program,
	// on the guest's older kernel.
	"TestSocketLBConnectsStraightToTheBackend",
	"TestGetPeerNameFollowsTheSocketsSlot",
}

// tools are the host executables the guest needs: test/simnode runs ip
// (`ip netns add`) and the attach tests run tc.
var tools = []string{"/usr/sbin/ip", "/usr/sbin/tc"}

func TestBPFPackageOnLinux61WithoutTCX(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a Linux 6.1 VM under qemu (about 30 s); not in -short")
	}
	dir := os.Getenv(envKernel)
	if dir == "" {
		dir = DefaultKernelDir
	}
	k, err := FindKernel(dir)
	if err == nil {
		_, err = exec.LookPath("qemu-system-x86_64")
	}
	if err == nil {
		_, err = os.Stat("/bin/busybox")
	}
	if err != nil {
		if os.Getenv(envOptional) == "1" {
			t.Skipf("no VM (%s=1): %v", envOptional, err)
		}
		t.Fatalf("the VM is not set up: %v\nrun scripts/setup-vm.sh as root, or set %s=1 to skip this test", err, envOptional)
	}
	if !strings.HasPrefix(k.Release, "6.1.") {
		t.Fatalf("kernel %s in %s: this test is about Linux 6.1, which has no TCX", k.Release, dir)
	}

	start := time.Now()
	bin := filepath.Join(t.TempDir(), "bpf.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "github.com/podnic/podnic/bpf")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the static bpf test binary: %v\n%s", err, out)
	}
	built := time.Since(start)

	run := os.Getenv(envRun)
	if run == "" {
		run = "."
	}
	skip := "^(" + strings.Join(append(tcxOnly, racyInGuest...), "|") + ")$|/^tcx$"
	cfg := Config{
		Kernel: k,
		Binary: bin,
		Args: []string{
			"-test.v",
			"-test.run", run,
			"-test.skip", skip,
			// Fail inside the guest, with goroutine dumps, before the
			// host kills qemu.
			"-test.timeout", (vmTimeout - 20*time.Second).String(),
		},
		Env:     []string{"PODNIC_IN_VM=1"},
		Tools:   tools,
		Timeout: vmTimeout,
	}
	if os.Getenv(envConsole) == "1" {
		cfg.Console = os.Stderr
	}
	res, err := Run(context.Background(), cfg)
	if res != nil {
		if cfg.Console == nil {
			t.Logf("guest console:\n%s", res.Console)
		}
		t.Logf("build %s; qemu %s: kernel %s booted in %s, tests ran %s",
			built.Round(100*time.Millisecond), res.Elapsed.Round(100*time.Millisecond), k.Release,
			res.Started.Round(100*time.Millisecond), (res.Finished - res.Started).Round(100*time.Millisecond))
	}
	if err != nil {
		t.Fatalf("running the bpf tests in the VM: %v", err)
	}
	checkGuestRun(t, res.Console, res.Exit, run == ".")
}

var (
	reFail = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)
	reSkip = regexp.MustCompile(`(?m)^\s*--- SKIP: (\S+)`)
)

// checkGuestRun fails t unless the guest's go test run passed as a whole,
// skipped nothing and, when it ran everything, passed mustPass.
func checkGuestRun(t *testing.T, console string, exit int, all bool) {
	t.Helper()
	for _, m := range reFail.FindAllStringSubmatch(console, -1) {
		t.Errorf("failed in the VM: %s", m[1])
	}
	// Everything the guest runs must run there: a skip means a test's
	// gating (root, PODNIC_IN_VM) went wrong.
	for _, m := range reSkip.FindAllStringSubmatch(console, -1) {
		t.Errorf("skipped in the VM: %s", m[1])
	}
	if all {
		for _, name := range mustPass {
			if !regexp.MustCompile(`(?m)^\s*--- PASS: ` + regexp.QuoteMeta(name) + ` `).MatchString(console) {
				t.Errorf("the VM did not report %s as passed", name)
			}
		}
	}
	if exit != 0 || !strings.Contains(console, "\nPASS\n") {
		t.Errorf("the bpf tests in the VM exited with status %d", exit)
	}
}
