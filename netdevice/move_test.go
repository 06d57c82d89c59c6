package netdevice

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestSelectorNeedsExactlyOneWay(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		name string
		sel  Selector
		want string // "" for valid
	}{
		{"MAC", Selector{MAC: mac}, ""},
		{"name", Selector{Name: "eth1"}, ""},
		{"PCI address", Selector{PCIAddress: "0000:3b:02.1"}, ""},
		{"PF and VF index", Selector{PFName: "ens1f0", VFIndex: 0, HasVFIndex: true}, ""},
		{"none", Selector{}, "none set"},
		{"two", Selector{MAC: mac, Name: "eth1"}, "MAC, name all set; want exactly one"},
		{"PF without index", Selector{PFName: "ens1f0"}, "needs a VF index"},
		{"index without PF", Selector{VFIndex: 2, HasVFIndex: true}, "needs a PF name"},
		{"negative index", Selector{PFName: "ens1f0", VFIndex: -1, HasVFIndex: true}, "negative"},
		{"bad PCI", Selector{PCIAddress: "3b:02.1"}, "not of the form"},
		{"PCI path", Selector{PCIAddress: "../../0000:3b:02.1"}, "not of the form"},
		{"long name", Selector{Name: "a-very-long-ifname"}, "longer than 15"},
		{"slash in name", Selector{Name: "a/b"}, "contains"},
		{"zero MAC", Selector{MAC: make(net.HardwareAddr, 6)}, "all zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.sel.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFindFindsENIByMACAndByName(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)

	for _, sel := range []Selector{{MAC: eni.MAC}, {Name: eni.Name}} {
		dev, err := Find(sel)
		if err != nil {
			t.Fatalf("Find(%s): %v", sel, err)
		}
		if dev.Name != eni.Name || !bytes.Equal(dev.MAC, eni.MAC) || dev.MTU != eni.MTU || dev.Index == 0 {
			t.Errorf("Find(%s) = %+v, want %s %s MTU %d", sel, dev, eni.Name, eni.MAC, eni.MTU)
		}
		if dev.PCIAddress != "" || dev.VF != nil || dev.DPDK {
			t.Errorf("Find(%s) = %+v: a veth has no PCI device", sel, dev)
		}
	}
}

func TestFindReportsAMissingDeviceAsNotFound(t *testing.T) {
	needRoot(t)
	mac := testMAC()
	_, err := Find(Selector{MAC: mac})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if want := "finding device by MAC " + mac.String() + ": not found"; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	if _, err := Find(Selector{Name: testLinkName("x")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("by name: got %v, want ErrNotFound", err)
	}
}

func TestMoveInPutsTheDeviceIntoThePodRenamedAndUp(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}

	saved, err := MoveIn(dev, pod, "eth1", 9000)
	if err != nil {
		t.Fatal(err)
	}

	want := Saved{Name: eni.Name, MAC: eni.MAC, MTU: 1500, Up: false}
	if saved.Name != want.Name || !bytes.Equal(saved.MAC, want.MAC) || saved.MTU != want.MTU || saved.Up || saved.Alias != "" || saved.VF != nil {
		t.Errorf("saved %+v, want %+v", saved, want)
	}
	a := linkIn(t, pod, "eth1")
	if !bytes.Equal(a.HardwareAddr, eni.MAC) || a.MTU != 9000 || a.Flags&net.FlagUp == 0 {
		t.Errorf("in pod: MAC %s MTU %d flags %v, want %s 9000 up", a.HardwareAddr, a.MTU, a.Flags, eni.MAC)
	}
	if a.Alias != "podnic:"+eni.Name {
		t.Errorf("in pod: alias %q, want podnic:%s", a.Alias, eni.Name)
	}
	if !absentIn(t, "", eni.Name) {
		t.Errorf("%s is still in the host", eni.Name)
	}
	if _, err := Find(Selector{MAC: eni.MAC}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Find after MoveIn: got %v, want ErrNotFound", err)
	}
}

func TestMoveOutRestoresNameMACMTUAndState(t *testing.T) {
	needRoot(t)
	for _, up := range []bool{false, true} {
		name := map[bool]string{false: "found down", true: "found up"}[up]
		t.Run(name, func(t *testing.T) {
			eni := newENI(t, newNetns(t, "fabric"), up)
			pod := newNetns(t, "pod")
			dev, err := Find(Selector{Name: eni.Name})
			if err != nil {
				t.Fatal(err)
			}
			saved, err := MoveIn(dev, pod, "eth0", 1400)
			if err != nil {
				t.Fatal(err)
			}
			// The pod changes its MAC and MTU; MoveOut puts them back.
			withLink(t, pod, "eth0", func(r *netnsRef, l netlink.Link) {
				if err := r.nl.LinkSetHardwareAddr(l, testMAC()); err != nil {
					t.Fatal(err)
				}
				if err := r.nl.LinkSetMTU(l, 1280); err != nil {
					t.Fatal(err)
				}
			})

			before := snapshotResources(t)
			if err := MoveOut(pod, "eth0", saved); err != nil {
				t.Fatal(err)
			}
			if after := snapshotResources(t); !after.equal(before) {
				t.Errorf("MoveOut leaked: before %+v, after %+v", before, after)
			}
			a := linkIn(t, "", eni.Name)
			if !bytes.Equal(a.HardwareAddr, eni.MAC) || a.MTU != eni.MTU || a.Alias != "" || (a.Flags&net.FlagUp != 0) != up {
				t.Errorf("in host: MAC %s MTU %d alias %q flags %v, want %s %d no alias up=%v", a.HardwareAddr, a.MTU, a.Alias, a.Flags, eni.MAC, eni.MTU, up)
			}
			if !absentIn(t, pod, "eth0") {
				t.Error("eth0 is still in the pod")
			}

			// Twice is fine and changes nothing.
			if err := MoveOut(pod, "eth0", saved); err != nil {
				t.Fatalf("second MoveOut: %v", err)
			}
			if b := linkIn(t, "", eni.Name); b.Index != a.Index || b.Flags != a.Flags {
				t.Errorf("second MoveOut changed the device: %+v, was %+v", b, a)
			}
			// And the device can be taken again.
			if _, err := Find(Selector{MAC: eni.MAC}); err != nil {
				t.Errorf("Find after MoveOut: %v", err)
			}
		})
	}
}

// A veth end, unlike a physical NIC, is destroyed with its netns (and its
// peer with it): MoveOut then has nothing to return and succeeds.
func TestMoveOutSucceedsWhenTheVethDiedWithThePodNetns(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := MoveIn(dev, pod, "eth1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runIP("netns", "del", filepath.Base(pod)); err != nil {
		t.Fatalf("deleting pod netns: %v: %s", err, out)
	}
	eventually(t, "the fabric end dies with the pod's veth end", func() bool {
		return absentIn(t, eni.Fabric, eni.Peer)
	})

	if err := MoveOut(pod, "eth1", saved); err != nil {
		t.Fatalf("MoveOut with the netns and the device gone: %v", err)
	}
	if !absentIn(t, "", eni.Name) || !absentIn(t, "", "eth1") {
		t.Error("a device appeared in the host")
	}
}

// The kernel moves a physical device of a dying netns back to the initial
// netns under its in-pod name. A veth cannot show this, so the test leaves
// the device in the host as the kernel would: in-pod name, podnic alias,
// the pod's MAC and MTU.
func TestMoveOutRestoresADeviceTheKernelReturnedToTheHost(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	inPod := testLinkName("p")
	podMAC := testMAC()
	withLink(t, "", eni.Name, func(r *netnsRef, l netlink.Link) {
		for _, err := range []error{
			r.nl.LinkSetAlias(l, "podnic:"+eni.Name),
			r.nl.LinkSetHardwareAddr(l, podMAC),
			r.nl.LinkSetMTU(l, 1400),
			r.nl.LinkSetName(l, inPod),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	if _, err := Find(Selector{MAC: podMAC}); !errors.Is(err, ErrBusy) {
		t.Errorf("Find of a device waiting for MoveOut: got %v, want ErrBusy", err)
	}
	saved := &Saved{Name: eni.Name, MAC: eni.MAC, MTU: eni.MTU}

	notMounted := filepath.Join(t.TempDir(), "netns") // a mount point left behind
	if err := os.WriteFile(notMounted, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"/run/netns/podnic-nd-never-existed", notMounted} {
		if err := MoveOut(gone, inPod, saved); err != nil {
			t.Fatalf("MoveOut(%s): %v", gone, err)
		}
		a := linkIn(t, "", eni.Name)
		if !bytes.Equal(a.HardwareAddr, eni.MAC) || a.MTU != eni.MTU || a.Alias != "" || a.Flags&net.FlagUp != 0 {
			t.Errorf("in host: MAC %s MTU %d alias %q flags %v, want %s %d no alias down", a.HardwareAddr, a.MTU, a.Alias, a.Flags, eni.MAC, eni.MTU)
		}
		if !absentIn(t, "", inPod) {
			t.Errorf("%s still in the host", inPod)
		}
	}
}

func TestFailedMoveInLeavesTheDeviceOnTheHostUnchanged(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name       string
		ifname     string
		mtu        int
		setup      func(t *testing.T, pod string)
		podMissing bool
		want       string
	}{
		{
			name: "name taken in the pod", ifname: "eth1",
			setup: func(t *testing.T, pod string) {
				r, err := openNetns(pod)
				if err != nil {
					t.Fatal(err)
				}
				defer r.close()
				if err := r.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}}); err != nil {
					t.Fatal(err)
				}
			},
			want: "to eth1: file exists",
		},
		{name: "MTU out of range", ifname: "eth1", mtu: 1 << 20, want: "setting MTU"},
		{name: "pod netns missing", ifname: "eth1", podMissing: true, want: "opening netns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eni := newENI(t, newNetns(t, "fabric"), true)
			pod := newNetns(t, "pod")
			if tc.setup != nil {
				tc.setup(t, pod)
			}
			if tc.podMissing {
				pod = "/run/netns/podnic-nd-never-existed"
			}
			dev, err := Find(Selector{MAC: eni.MAC})
			if err != nil {
				t.Fatal(err)
			}
			orig := linkIn(t, "", eni.Name)
			before := snapshotResources(t)

			_, err = MoveIn(dev, pod, tc.ifname, tc.mtu)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			t.Log(err)

			if after := snapshotResources(t); !after.equal(before) {
				t.Errorf("failed MoveIn leaked: before %+v, after %+v", before, after)
			}
			a := linkIn(t, "", eni.Name)
			if !bytes.Equal(a.HardwareAddr, eni.MAC) || a.MTU != orig.MTU || a.Alias != "" || a.Flags&net.FlagUp == 0 {
				t.Errorf("in host: MAC %s MTU %d alias %q flags %v, want %s %d no alias up", a.HardwareAddr, a.MTU, a.Alias, a.Flags, eni.MAC, orig.MTU)
			}
			if _, err := Find(Selector{MAC: eni.MAC}); err != nil {
				t.Errorf("Find after a failed MoveIn: %v", err)
			}
		})
	}
}

func TestMoveOutKeepsTheDeviceInThePodWhenItsHostNameIsTaken(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := MoveIn(dev, pod, "eth1", 0)
	if err != nil {
		t.Fatal(err)
	}
	squatter := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: eni.Name}}
	if err := netlink.LinkAdd(squatter); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(squatter) })
	before := snapshotResources(t)

	err = MoveOut(pod, "eth1", saved)
	if err == nil {
		t.Fatal("MoveOut succeeded although the host name is taken")
	}
	t.Log(err)
	if after := snapshotResources(t); !after.equal(before) {
		t.Errorf("failed MoveOut leaked: before %+v, after %+v", before, after)
	}
	a := linkIn(t, pod, "eth1")
	if !bytes.Equal(a.HardwareAddr, eni.MAC) || a.Flags&net.FlagUp == 0 || a.Alias != "podnic:"+eni.Name {
		t.Errorf("in pod: MAC %s flags %v alias %q, want it as MoveIn left it", a.HardwareAddr, a.Flags, a.Alias)
	}

	if err := netlink.LinkDel(squatter); err != nil {
		t.Fatal(err)
	}
	if err := MoveOut(pod, "eth1", saved); err != nil {
		t.Fatalf("retried MoveOut: %v", err)
	}
	if a := linkIn(t, "", eni.Name); !bytes.Equal(a.HardwareAddr, eni.MAC) {
		t.Errorf("in host: MAC %s, want %s", a.HardwareAddr, eni.MAC)
	}
}

func TestMoveInRefusesADPDKDevice(t *testing.T) {
	dev := &Device{PCIAddress: "0000:3b:02.1", Driver: "vfio-pci", DPDK: true}
	if _, err := MoveIn(dev, "/run/netns/x", "eth1", 0); err == nil || !strings.Contains(err.Error(), "DPDK") {
		t.Errorf("got %v, want a DPDK error", err)
	}
}

func TestSavedRoundTripsThroughJSON(t *testing.T) {
	in := Saved{
		Name: "ens5", MAC: net.HardwareAddr{2, 0x70, 0x6e, 0, 0, 1}, MTU: 9001, Up: true, Alias: "uplink",
		VF: &VFSaved{PF: "ens1f0", Index: 3, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, VLAN: 100, QoS: 2, SpoofChk: true},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"mac":"02:70:6e:00:00:01"`, `"mac":"02:00:00:00:00:03"`, `"name":"ens5"`, `"vlan":100`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	var out Saved
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Name != in.Name || !bytes.Equal(out.MAC, in.MAC) || out.MTU != in.MTU || !out.Up || out.Alias != in.Alias ||
		out.VF == nil || !reflect.DeepEqual(*out.VF, *in.VF) {
		t.Errorf("round trip: got %+v (VF %+v), want %+v (VF %+v)", out, out.VF, in, in.VF)
	}
}

func runIP(args ...string) ([]byte, error) {
	return execCommand("ip", args...)
}

// When the pod already has a link with the device's host name, the device
// cannot enter the pod under it: it goes through a temporary netns, is
// renamed there, and enters the pod under its pod name. Both directions
// still restore everything.
func TestMoveGoesThroughATemporaryNetnsWhenTheHostNameIsTakenInThePod(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), true)
	pod := newNetns(t, "pod")
	r, err := openNetns(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: eni.Name}}); err != nil {
		r.close()
		t.Fatal(err)
	}
	r.close()
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := MoveIn(dev, pod, "eth1", 0)
	if err != nil {
		t.Fatalf("MoveIn with the host name taken in the pod: %v", err)
	}
	if a := linkIn(t, pod, "eth1"); !bytes.Equal(a.HardwareAddr, eni.MAC) || a.Flags&net.FlagUp == 0 {
		t.Errorf("in pod: MAC %s flags %v", a.HardwareAddr, a.Flags)
	}
	if err := MoveOut(pod, "eth1", saved); err != nil {
		t.Fatalf("MoveOut: %v", err)
	}
	if absentIn(t, "", eni.Name) {
		t.Errorf("%s is not back in the host", eni.Name)
	}
}

// MoveInDownAfter hands prepare the device while it is down in the host,
// before the move; a failing prepare leaves the device where it was, up.
func TestMoveInDownAfterPreparesTheDeviceDownInTheHostBeforeItMoves(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), true)
	pod := newNetns(t, "pod")
	dev, err := Find(Selector{MAC: eni.MAC})
	if err != nil {
		t.Fatal(err)
	}
	hostIndex := linkIn(t, "", eni.Name).Index

	errPrepareFailed := errors.New("prepare failed")
	_, err = MoveInDownAfter(dev, pod, "eth1", 0, func(ifindex int, saved *Saved) error {
		if saved.Name != eni.Name || !bytes.Equal(saved.MAC, eni.MAC) || !saved.Up {
			t.Errorf("prepare got %+v, want %s %s up", saved, eni.Name, eni.MAC)
		}
		if ifindex != hostIndex {
			t.Errorf("prepare got ifindex %d, want %d", ifindex, hostIndex)
		}
		if a := linkIn(t, "", eni.Name); a.Flags&net.FlagUp != 0 {
			t.Errorf("%s is up in the host during prepare", eni.Name)
		}
		return errPrepareFailed
	})
	if !errors.Is(err, errPrepareFailed) || err.Error() != errPrepareFailed.Error() {
		t.Fatalf("got %v, want prepare's error as it is", err)
	}
	if a := linkIn(t, "", eni.Name); a.Flags&net.FlagUp == 0 || a.Alias != "" {
		t.Errorf("after a failed prepare: flags %v alias %q, want up, no alias", a.Flags, a.Alias)
	}

	prepared := false
	saved, err := MoveInDownAfter(dev, pod, "eth1", 0, func(int, *Saved) error {
		prepared = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !prepared || !saved.Up {
		t.Errorf("prepared %v, saved %+v", prepared, saved)
	}
	if a := linkIn(t, pod, "eth1"); a.Flags&net.FlagUp != 0 {
		t.Errorf("eth1 is up in the pod after MoveInDownAfter")
	}
	if err := MoveOut(pod, "eth1", saved); err != nil {
		t.Fatal(err)
	}
}
