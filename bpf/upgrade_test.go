package bpf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// loadAt loads a datapath at root and unpins it when the test ends.
func loadAt(t *testing.T, root string) *Datapath {
	t.Helper()
	d, err := Load(root)
	if err != nil {
		t.Fatalf("loading datapath at %s: %v", root, err)
	}
	t.Cleanup(d.Close)
	t.Cleanup(func() { _ = Unpin(root) })
	return d
}

// programIDs names the datapath's tc programs by id.
func programIDs(t *testing.T, d *Datapath) map[ebpf.ProgramID]string {
	t.Helper()
	return map[ebpf.ProgramID]string{
		programID(t, d.Programs.FromPod): ProgFromPod, programID(t, d.Programs.ToPod): ProgToPod,
		programID(t, d.Programs.LoOut): ProgLoOut, programID(t, d.Programs.Guard): ProgGuard,
	}
}

// expectRunning checks that every attachment runs one of the programs in
// ids, under its own name.
func expectRunning(t *testing.T, what string, as []Attachment, ids map[ebpf.ProgramID]string) {
	t.Helper()
	if len(as) == 0 {
		t.Errorf("%s: no attachments", what)
	}
	for _, a := range as {
		if ids[a.ProgramID] != a.ProgramName {
			t.Errorf("%s: %s runs program %d, not this build's %s", what, a, a.ProgramID, a.ProgramName)
		}
	}
}

// A new build's Load moves no pod by itself: pods attached before keep the
// earlier programs. UpdateAttachments moves them all, TCX links in place
// and clsact filters (lo's, and the NIC's in legacy mode) inside their
// netns, records the move in the pins, and traffic goes on; a second call
// has nothing to do. Another datapath's filters on the node (another root)
// are left alone.
func TestUpdateAttachmentsMovesPodsToTheNewBuild(t *testing.T) {
	for _, mode := range append([]Mode{ModeAuto}, attachModes...) {
		t.Run(string(mode), func(t *testing.T) {
			old := loadTest(t)
			client, server := trafficPods(t, old)
			attachPod(t, old, client, mode)
			other := loadAt(t, filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-test-%d-other", os.Getpid())))
			if _, err := other.AttachPod(server.NetnsPath, server.Ifname, "other-owner", ModeLegacy); err != nil {
				t.Fatal(err)
			}
			otherIDs := programIDs(t, other)

			fresh, err := Load(old.Root)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(fresh.Close)
			freshIDs := programIDs(t, fresh)
			wantLinks, wantFilters := 0, 0
			for _, a := range listAttachments(t, old.Root) {
				if freshIDs[a.ProgramID] != "" {
					t.Fatalf("%s already runs the new build's program before UpdateAttachments", a)
				}
				if a.Mode == ModeTCX {
					wantLinks++
				} else {
					wantFilters++
				}
			}
			if mode == ModeLegacy && wantLinks != 0 || wantLinks+wantFilters != 3 {
				t.Fatalf("attached %d TCX links and %d filters in mode %s", wantLinks, wantFilters, mode)
			}

			rep, err := fresh.UpdateAttachments()
			if err != nil {
				t.Fatal(err)
			}
			if rep != (UpgradeReport{Links: wantLinks, Filters: wantFilters}) {
				t.Errorf("UpdateAttachments() = %+v, want %d links and %d filters moved, nothing else", rep, wantLinks, wantFilters)
			}
			expectRunning(t, "pins", listAttachments(t, old.Root), freshIDs)
			for _, ifname := range []string{client.Ifname, "lo"} {
				expectRunning(t, "kernel, "+ifname, queryInterface(t, client, ifname), freshIDs)
			}
			expectRunning(t, "other root's pins", listAttachments(t, other.Root), otherIDs)
			for _, ifname := range []string{server.Ifname, "lo"} {
				expectRunning(t, "other root's pod, "+ifname, queryInterface(t, server, ifname), otherIDs)
			}

			vip := netip.AddrPortFrom(simVIPv4, simServicePort)
			body, err := client.HTTPGet("http://"+vip.String()+"/", simTimeout)
			if err != nil {
				t.Fatalf("after the move: %v", err)
			}
			if name, _ := answeredBy(body); name != "server" {
				t.Errorf("after the move: answer %q, want the server's", body)
			}
			self := netip.AddrPortFrom(simSelfV4, simServicePort)
			if _, err := client.HTTPGet("http://"+self.String()+"/", simTimeout); err != nil {
				t.Errorf("self access after the move: %v", err)
			}

			if rep, err := fresh.UpdateAttachments(); err != nil || rep != (UpgradeReport{}) {
				t.Errorf("second UpdateAttachments() = %+v, %v; want nothing to do", rep, err)
			}
		})
	}
}

// A clsact filter recorded under the root whose netns is nowhere to be
// found (a pod gone without its DEL) is counted missing, and does not keep
// the filters that were found from moving, then or at the next upgrade.
func TestUpdateAttachmentsCountsFiltersOfPodsGoneWithoutTheirDel(t *testing.T) {
	old := loadTest(t)
	client, _ := trafficPods(t, old)
	attachPod(t, old, client, ModeLegacy)
	ghost := pinPath(old.Root, "ghost-owner", "lo", Egress, pinLegacy)
	if err := os.MkdirAll(filepath.Dir(ghost), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := pinProgramCopy(old.Programs.LoOut, ghost); err != nil {
		t.Fatal(err)
	}
	// The client's 3 filters move; the ghost's 1 is missing.
	upgradeTwice(t, old.Root, UpgradeReport{Filters: 3, Missing: 1}, func(what string, fresh *Datapath) {
		for _, ifname := range []string{client.Ifname, "lo"} {
			expectRunning(t, what+", "+ifname, queryInterface(t, client, ifname), programIDs(t, fresh))
		}
	})
}

// A TCX link whose device is gone (a pod whose NIC was deleted without its
// DEL) is counted defunct, not an error, and does not keep the pod's lo
// filter from moving, then or at the next upgrade. TCX only: on older
// kernels the NIC's filters die with the device and leave nothing behind.
func TestUpdateAttachmentsCountsDefunctLinks(t *testing.T) {
	old := loadTest(t)
	_, server := trafficPods(t, old)
	if _, err := old.AttachPod(server.NetnsPath, server.Ifname, "gone-owner", ModeTCX); err != nil {
		t.Fatal(err)
	}
	if err := server.Do(func() error {
		l, err := netlink.LinkByName(server.Ifname)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	// The NIC's 2 links are defunct; the lo link (lo stays with the
	// netns) moves.
	upgradeTwice(t, old.Root, UpgradeReport{Links: 1, Defunct: 2}, func(what string, fresh *Datapath) {
		expectRunning(t, what+", lo", queryInterface(t, server, "lo"), programIDs(t, fresh))
	})
}

// upgradeTwice loads a new datapath over root's pins twice, as two agent
// upgrades in a row, and checks that each UpdateAttachments reports want,
// then runs check on what the upgrade left.
func upgradeTwice(t *testing.T, root string, want UpgradeReport, check func(what string, fresh *Datapath)) {
	t.Helper()
	for i := range 2 {
		fresh := reload(t, root)
		rep, err := fresh.UpdateAttachments()
		if err != nil {
			t.Fatalf("upgrade %d: %v", i+1, err)
		}
		if rep != want {
			t.Errorf("upgrade %d: UpdateAttachments() = %+v, want %+v", i+1, rep, want)
		}
		check(fmt.Sprintf("upgrade %d", i+1), fresh)
	}
}

// reload loads a new datapath over root's pins, as a new agent's start
// does, and closes it when the test ends.
func reload(t *testing.T, root string) *Datapath {
	t.Helper()
	d, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}
