package netdevice

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// fakePF stands in for SR-IOV PFs, which the test machine lacks: it keeps
// each VF's settings and can be told to fail one kind of setting.
type fakePF struct {
	vfs    map[string]VFSaved // "pf/index"
	failOn string             // "mac", "vlan", "spoofchk" or "trust"
	sets   []string
}

func vfKey(pf string, vf int) string { return fmt.Sprintf("%s/%d", pf, vf) }

// useFakePF swaps hostPF for f until the test ends.
func useFakePF(t *testing.T, f *fakePF) {
	prev := hostPF
	hostPF = f
	t.Cleanup(func() { hostPF = prev })
}

func (f *fakePF) readVF(pf string, vf int) (VFSaved, error) {
	s, ok := f.vfs[vfKey(pf, vf)]
	if !ok {
		return VFSaved{}, fmt.Errorf("looking up PF %s: %w", pf, netlink.LinkNotFoundError{})
	}
	s.MAC = append(net.HardwareAddr(nil), s.MAC...)
	return s, nil
}

func (f *fakePF) set(kind, pf string, vf int, apply func(*VFSaved)) error {
	f.sets = append(f.sets, kind)
	if kind == f.failOn {
		return errors.New("operation not supported")
	}
	s := f.vfs[vfKey(pf, vf)]
	apply(&s)
	f.vfs[vfKey(pf, vf)] = s
	return nil
}

func (f *fakePF) setVFMAC(pf string, vf int, mac net.HardwareAddr) error {
	return f.set("mac", pf, vf, func(s *VFSaved) { s.MAC = mac })
}

func (f *fakePF) setVFVLAN(pf string, vf, vlan, qos int) error {
	return f.set("vlan", pf, vf, func(s *VFSaved) { s.VLAN, s.QoS = vlan, qos })
}

func (f *fakePF) setVFSpoofChk(pf string, vf int, on bool) error {
	return f.set("spoofchk", pf, vf, func(s *VFSaved) { s.SpoofChk = on })
}

func (f *fakePF) setVFTrust(pf string, vf int, on bool) error {
	return f.set("trust", pf, vf, func(s *VFSaved) { s.Trust = on })
}

var vf0Orig = VFSaved{PF: "ens1f0", Index: 0, MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, QoS: 1, SpoofChk: true}

func newFakePF() *fakePF {
	return &fakePF{vfs: map[string]VFSaved{vfKey("ens1f0", 0): vf0Orig}}
}

func vfDevice() *Device {
	return &Device{Name: "eth9", PCIAddress: vf0PCI, Driver: "iavf", VF: &VFInfo{PF: "ens1f0", PFPCIAddress: pfPCI, Index: 0}}
}

func ptr[T any](v T) *T { return &v }

func TestConfigureVFSetsWhatIsAskedAndRestoreVFUndoesIt(t *testing.T) {
	pf := newFakePF()
	useFakePF(t, pf)
	cfg := VFConfig{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, VLAN: ptr(100), SpoofChk: ptr(false), Trust: ptr(true)}

	prev, err := ConfigureVF(vfDevice(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*prev, vf0Orig) {
		t.Errorf("returned %+v, want the settings before: %+v", prev, vf0Orig)
	}
	got := pf.vfs[vfKey("ens1f0", 0)]
	want := VFSaved{PF: "ens1f0", Index: 0, MAC: cfg.MAC, VLAN: 100, QoS: 1, SpoofChk: false, Trust: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("VF now %+v, want %+v", got, want)
	}

	if err := RestoreVF(prev); err != nil {
		t.Fatal(err)
	}
	if got := pf.vfs[vfKey("ens1f0", 0)]; !reflect.DeepEqual(got, vf0Orig) {
		t.Errorf("VF after RestoreVF %+v, want %+v", got, vf0Orig)
	}
	pf.sets = nil
	if err := RestoreVF(prev); err != nil || len(pf.sets) != 0 {
		t.Errorf("second RestoreVF: %v, settings made %v; want none", err, pf.sets)
	}
}

func TestConfigureVFUndoesEarlierSettingsWhenOneFails(t *testing.T) {
	pf := newFakePF()
	pf.failOn = "trust"
	useFakePF(t, pf)
	_, err := ConfigureVF(vfDevice(), VFConfig{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, VLAN: ptr(7), Trust: ptr(true)})
	if err == nil || !strings.Contains(err.Error(), "setting trust on VF 0 of ens1f0") {
		t.Fatalf("got %v, want the trust error", err)
	}
	if got := pf.vfs[vfKey("ens1f0", 0)]; !reflect.DeepEqual(got, vf0Orig) {
		t.Errorf("VF after a failed ConfigureVF %+v, want %+v", got, vf0Orig)
	}
}

func TestConfigureVFRefusesWhatIsNotAVF(t *testing.T) {
	useFakePF(t, newFakePF())
	if _, err := ConfigureVF(&Device{Name: "eth1"}, VFConfig{}); err == nil {
		t.Error("ConfigureVF accepted a device that is not a VF")
	}
	if _, err := ConfigureVF(vfDevice(), VFConfig{VLAN: ptr(4095)}); err == nil {
		t.Error("ConfigureVF accepted VLAN 4095")
	}
}

func TestRestoreVFIgnoresAPFThatIsGone(t *testing.T) {
	useFakePF(t, newFakePF())
	if err := RestoreVF(&VFSaved{PF: "ens7f0", Index: 3}); err != nil {
		t.Errorf("got %v, want nil for a PF that is gone", err)
	}
}

// The move of a VF's netdev is the same code path as for any netdev: a
// real veth end plays the VF's netdev, found through a fake sysfs, and a
// fake PF records and restores the VF's settings.
func TestMoveInRecordsAVFsSettingsAndMoveOutRestoresThem(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	pf := newFakePF()
	useFakePF(t, pf)
	dev, err := newFakeNIC(t, eni.Name).find(Selector{PFName: "ens1f0", VFIndex: 0, HasVFIndex: true})
	if err != nil {
		t.Fatal(err)
	}

	saved, err := MoveIn(dev, pod, "net1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if saved.VF == nil || !reflect.DeepEqual(*saved.VF, vf0Orig) {
		t.Errorf("saved VF %+v, want %+v", saved.VF, vf0Orig)
	}
	if _, err := ConfigureVF(dev, VFConfig{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, VLAN: ptr(42)}); err != nil {
		t.Fatal(err)
	}

	if err := MoveOut(pod, "net1", saved); err != nil {
		t.Fatal(err)
	}
	if got := pf.vfs[vfKey("ens1f0", 0)]; !reflect.DeepEqual(got, vf0Orig) {
		t.Errorf("VF after MoveOut %+v, want %+v", got, vf0Orig)
	}
	if a := linkIn(t, "", eni.Name); !bytes.Equal(a.HardwareAddr, eni.MAC) {
		t.Errorf("netdev back with MAC %s, want %s", a.HardwareAddr, eni.MAC)
	}
}

// Against the kernel, without SR-IOV hardware, only this can be checked:
// a device with no VFs says so.
func TestNetlinkPFReportsADeviceWithoutVFs(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	_, err := netlinkPF{}.readVF(eni.Name, 0)
	if err == nil || !strings.Contains(err.Error(), "reports no VF 0") {
		t.Errorf("got %v, want an error saying there is no VF 0", err)
	}
	if _, err := (netlinkPF{}).readVF(testLinkName("x"), 0); !isLinkNotFound(err) {
		t.Errorf("missing PF: got %v, want a link-not-found error", err)
	}
}

// The CNI plugin configures the VF before the move: MoveOut then puts back
// the configured settings MoveIn saw, and RestoreVF the original ones.
func TestConfigureVFBeforeMoveInStillEndsAsFound(t *testing.T) {
	needRoot(t)
	eni := newENI(t, newNetns(t, "fabric"), false)
	pod := newNetns(t, "pod")
	pf := newFakePF()
	useFakePF(t, pf)
	dev, err := newFakeNIC(t, eni.Name).find(Selector{PCIAddress: vf0PCI})
	if err != nil {
		t.Fatal(err)
	}
	prev, err := ConfigureVF(dev, VFConfig{VLAN: ptr(42), Trust: ptr(true)})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := MoveIn(dev, pod, "net1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := MoveOut(pod, "net1", saved); err != nil {
		t.Fatal(err)
	}
	if err := RestoreVF(prev); err != nil {
		t.Fatal(err)
	}
	if got := pf.vfs[vfKey("ens1f0", 0)]; !reflect.DeepEqual(got, vf0Orig) {
		t.Errorf("VF at the end %+v, want %+v", got, vf0Orig)
	}
}
