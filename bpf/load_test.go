package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// testRoot returns a fresh pin root on bpffs, removed when the test ends.
func testRoot(t testing.TB) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("podnic-test-%d-%s", os.Getpid(), sanitize(t.Name())))
	t.Cleanup(func() {
		if err := Unpin(root); err != nil {
			t.Errorf("cleaning up pins: %v", err)
		}
	})
	return root
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '/' || c == ' ' {
			b[i] = '_'
		}
	}
	return string(b)
}

// loadTest loads the datapath into a fresh root.
func loadTest(t testing.TB) *Datapath {
	t.Helper()
	d, err := Load(testRoot(t))
	if err != nil {
		t.Fatalf("loading datapath: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestLoadPinsProgramsAndMaps(t *testing.T) {
	d := loadTest(t)
	for _, name := range []string{ProgFromPod, ProgToPod, ProgLoOut} {
		if _, err := os.Stat(filepath.Join(d.Root, "progs", name)); err != nil {
			t.Errorf("program %s not pinned: %v", name, err)
		}
	}
	info, err := d.Programs.FromPod.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != ProgFromPod {
		t.Errorf("program name %q, want %q", info.Name, ProgFromPod)
	}
	// OpenPinned and Close know every map Load pins, and only those.
	ents, err := os.ReadDir(filepath.Join(d.Root, "maps"))
	if err != nil {
		t.Fatal(err)
	}
	slots := d.mapSlots()
	for _, e := range ents {
		if _, ok := slots[e.Name()]; !ok {
			t.Errorf("pinned map %s is not in mapSlots", e.Name())
		}
	}
	if len(ents) != len(slots) {
		t.Errorf("%d maps pinned, mapSlots names %d", len(ents), len(slots))
	}
}

func TestReloadKeepsLiveMapState(t *testing.T) {
	d := loadTest(t)
	k := CTKey{Proto: TCP, Dir: CTForward}
	k.Src[15] = 1
	e := CTEntry{Expires: 42}
	if err := d.Maps.Conntrack.Put(&k, &e); err != nil {
		t.Fatal(err)
	}
	d2, err := Load(d.Root)
	if err != nil {
		t.Fatalf("reloading: %v", err)
	}
	defer d2.Close()
	// The reloaded programs must still look up that flow's replies.
	for _, slot := range []uint32{0, 1, 1023} {
		var live podnicPnLive
		if err := d2.Maps.Live.Lookup(slot, &live); err != nil || live.Until[0] < 42+uint64(time.Second) {
			t.Errorf("tc flows on slot %d live until %v (%v), want past the entry's expiry", slot, live.Until, err)
		}
	}
	var got CTEntry
	if err := d2.Maps.Conntrack.Lookup(&k, &got); err != nil {
		t.Fatalf("conntrack entry lost across reload: %v", err)
	}
	if got.Expires != 42 {
		t.Errorf("entry changed across reload: %+v", got)
	}
}

func TestLoadRefusesIncompatiblePinnedMap(t *testing.T) {
	root := testRoot(t)
	if err := os.MkdirAll(filepath.Join(root, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A map of the same name with another value size, as an older or newer
	// build with the same map version would leave behind.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "podnic_ct_v1", Type: ebpf.LRUHash, KeySize: 40, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(root, "maps", "podnic_ct_v1")); err != nil {
		t.Fatal(err)
	}
	_, err = Load(root)
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("Load with an incompatible pinned map: got %v, want ErrMapIncompatible", err)
	}
	// The live map is untouched.
	live, err := ebpf.LoadPinnedMap(filepath.Join(root, "maps", "podnic_ct_v1"), nil)
	if err != nil {
		t.Fatalf("incompatible pinned map was removed: %v", err)
	}
	_ = live.Close()
}

// A map an earlier build pinned and this one retired is unpinned by Load.
func TestLoadRemovesRetiredMaps(t *testing.T) {
	root := testRoot(t)
	if err := os.MkdirAll(filepath.Join(root, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range retiredMaps {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(root, "maps", name)); err != nil {
			t.Fatal(err)
		}
		_ = m.Close()
	}
	d, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, name := range retiredMaps {
		if _, err := os.Stat(filepath.Join(root, "maps", name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("retired map %s still pinned (%v)", name, err)
		}
	}
}

func TestOpenPinnedWithoutLoadSaysNotLoaded(t *testing.T) {
	root := testRoot(t)
	_, err := OpenPinned(root)
	if !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("OpenPinned on an empty root: got %v, want ErrNotLoaded", err)
	}
}

func TestOpenPinnedSharesMapsWithLoader(t *testing.T) {
	d := loadTest(t)
	o, err := OpenPinned(d.Root)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	a, _ := d.Maps.Services.Info()
	b, _ := o.Maps.Services.Info()
	ida, _ := a.ID()
	idb, _ := b.ID()
	if ida != idb {
		t.Errorf("OpenPinned opened map id %d, loader has %d", idb, ida)
	}
}
