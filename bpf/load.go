package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultRoot is where podnic pins its programs, maps and links.
const DefaultRoot = "/sys/fs/bpf/podnic"

// Program names, as bpftool and tc show them.
const (
	ProgFromPod = "podnic_from_pod"
	ProgToPod   = "podnic_to_pod"
	ProgLoOut   = "podnic_lo_out"
	// ProgGuard alone serves the egress of a pod on the socket path
	// (PathSocket).
	ProgGuard = "podnic_guard"

	// Socket-level load balancing, on the node's cgroup v2 root.
	ProgConnect4 = "podnic_connect4"
	ProgConnect6 = "podnic_connect6"
	ProgGetPeer4 = "podnic_getpeer4"
	ProgGetPeer6 = "podnic_getpeer6"
	ProgSendmsg4 = "podnic_sendmsg4"
	ProgSendmsg6 = "podnic_sendmsg6"
	ProgRecvmsg4 = "podnic_recvmsg4"
	ProgRecvmsg6 = "podnic_recvmsg6"
)

// ErrNotLoaded means the datapath has not been loaded and pinned yet.
var ErrNotLoaded = errors.New("podnic datapath is not loaded")

// Maps are the datapath's pinned maps, shared by every pod on the node.
type Maps struct {
	Services  *ebpf.Map
	Slots     *ebpf.Map
	Backends  *ebpf.Map
	Conntrack *ebpf.Map
	Affinity  *ebpf.Map
	Counters  *ebpf.Map
	Events    *ebpf.Map
	// ServiceCIDRs holds the cluster's Service CIDRs (LPM trie).
	ServiceCIDRs *ebpf.Map
	// LBNetns lists the network namespaces (by cookie) where TCP
	// connect() is balanced at the socket; LBPeers remembers, by socket
	// cookie, the Service and backend of a balanced socket for
	// getpeername() (a direct-mapped table, lib/sock.h).
	LBNetns *ebpf.Map
	LBPeers *ebpf.Map
	// LBAddrs holds each registered netns's own addresses, the client
	// address of session affinity at connect(). A CNI plugin newer than
	// the loaded datapath may find it missing: affinity then stays on tc.
	LBAddrs *ebpf.Map
	// Frags holds, per datagram, the translation its first IP fragment
	// got, for its later fragments (lib/frag.h).
	Frags *ebpf.Map
	// UDPSockets keeps, per UDP socket balanced at the socket, the
	// backend of each Service it sends to and the Service of each backend
	// (lib/sock.h, "UDP at the socket"). Like LBAddrs, it may be missing
	// under a datapath loaded by an older build.
	UDPSockets *ebpf.Map
	// Config holds the Service CIDRs of the egress fast path; Live, per
	// protocol, when the last tc-translated flow can expire (lib/fast.h).
	Config *ebpf.Map
	Live   *ebpf.Map
	// NodeAddrs holds the node's addresses while some Service has a
	// NodePort (SetNodePortAddrs). It may be missing under a datapath
	// loaded by an older build.
	NodeAddrs *ebpf.Map
	// SourceRanges holds, by frontend id, the sources a LoadBalancer
	// ingress IP with loadBalancerSourceRanges takes new flows from
	// (LPM trie). It may be missing under a datapath loaded by an older
	// build.
	SourceRanges *ebpf.Map
}

// Programs are the datapath's pinned programs.
type Programs struct {
	FromPod *ebpf.Program
	ToPod   *ebpf.Program
	LoOut   *ebpf.Program
	Guard   *ebpf.Program

	Connect4 *ebpf.Program
	Connect6 *ebpf.Program
	GetPeer4 *ebpf.Program
	GetPeer6 *ebpf.Program
	Sendmsg4 *ebpf.Program
	Sendmsg6 *ebpf.Program
	Recvmsg4 *ebpf.Program
	Recvmsg6 *ebpf.Program
}

// Datapath is a loaded (or opened) podnic object.
type Datapath struct {
	Root     string
	Maps     Maps
	Programs Programs
}

func mapsDir(root string) string  { return filepath.Join(root, "maps") }
func progsDir(root string) string { return filepath.Join(root, "progs") }
func linksDir(root string) string { return filepath.Join(root, "links") }

// Load loads the object, reusing compatible pinned maps so live state
// (conntrack, Services) survives, pins new maps and the programs under
// root, and returns the loaded datapath. Pinned maps whose layout differs
// from this build are refused, never replaced. Concurrent loaders on one
// node are serialised by a lock on root.
func Load(root string) (*Datapath, error) {
	if root == "" {
		root = DefaultRoot
	}
	if err := ensureBPFFS(root); err != nil {
		return nil, err
	}
	unlock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	defer unlock()

	spec, err := loadPodnic()
	if err != nil {
		return nil, fmt.Errorf("loading object spec: %w", err)
	}
	if err := setCRC32cShifts(spec); err != nil {
		return nil, err
	}
	for name, m := range spec.Maps {
		// Only the datapath's own maps are shared state; .bss only
		// carries the type anchors that give Go the C enums.
		if strings.HasPrefix(name, "podnic_") {
			m.Pinning = ebpf.PinByName
		}
	}
	if err := os.MkdirAll(mapsDir(root), 0o700); err != nil {
		return nil, fmt.Errorf("creating map pin dir: %w", err)
	}
	for _, name := range retiredMaps {
		if err := os.Remove(filepath.Join(mapsDir(root), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing the retired map %s: %w", name, err)
		}
	}
	var objs podnicObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: mapsDir(root)},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("loading datapath: a pinned map in %s has another layout than this podnic build (remove it only if losing live connections is acceptable): %w", mapsDir(root), err)
	}
	if err != nil {
		return nil, fmt.Errorf("loading datapath: %w", err)
	}

	d := &Datapath{
		Root: root,
		Maps: Maps{
			Services:     objs.PodnicSvcV1,
			Slots:        objs.PodnicSlotV1,
			Backends:     objs.PodnicBeV1,
			Conntrack:    objs.PodnicCtV1,
			Affinity:     objs.PodnicAffV1,
			Counters:     objs.PodnicCntV1,
			Events:       objs.PodnicEvV1,
			ServiceCIDRs: objs.PodnicCidrV1,
			LBNetns:      objs.PodnicLbnsV1,
			LBPeers:      objs.PodnicLbpeerV2,
			LBAddrs:      objs.PodnicLbaddrV1,
			Frags:        objs.PodnicFragV1,
			UDPSockets:   objs.PodnicUdpskV1,
			Config:       objs.PodnicCfgV1,
			Live:         objs.PodnicLiveV1,
			NodeAddrs:    objs.PodnicNodeipV1,
			SourceRanges: objs.PodnicSrcrangeV1,
		},
		Programs: Programs{
			FromPod:  objs.PodnicFromPod,
			ToPod:    objs.PodnicToPod,
			LoOut:    objs.PodnicLoOut,
			Guard:    objs.PodnicGuard,
			Connect4: objs.PodnicConnect4,
			Connect6: objs.PodnicConnect6,
			GetPeer4: objs.PodnicGetpeer4,
			GetPeer6: objs.PodnicGetpeer6,
			Sendmsg4: objs.PodnicSendmsg4,
			Sendmsg6: objs.PodnicSendmsg6,
			Recvmsg4: objs.PodnicRecvmsg4,
			Recvmsg6: objs.PodnicRecvmsg6,
		},
	}
	// Replies of flows tracked before this load (an upgrade) must still
	// be looked up by the new programs.
	if err := d.Maps.raiseLiveUntil(); err != nil {
		d.Close()
		return nil, err
	}
	for name, p := range d.programsByName() {
		if err := pinReplace(p, filepath.Join(progsDir(root), name)); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// retiredMaps are maps earlier podnic builds pinned that this one no longer
// uses. Load removes their pins; programs still attached from the earlier
// build keep the maps alive until they are replaced.
var retiredMaps = []string{
	"podnic_lbsk_v1",   // socket storage for getpeername(), now podnic_lbpeer_v2
	"podnic_lbpeer_v1", // getpeername() slots with a lock, now tagged (v2)
}

// OpenPinned opens the pinned maps and programs under root without loading
// anything: no verifier run, so it is cheap enough for every CNI ADD.
func OpenPinned(root string) (*Datapath, error) {
	if root == "" {
		root = DefaultRoot
	}
	d := &Datapath{Root: root}
	for name, dst := range d.mapSlots() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), name), nil)
		if errors.Is(err, os.ErrNotExist) && optionalMaps[name] {
			continue
		}
		if err != nil {
			d.Close()
			return nil, notLoaded(fmt.Errorf("opening pinned map %s: %w", name, err))
		}
		*dst = m
	}
	for name, dst := range d.programSlots() {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(progsDir(root), name), nil)
		if errors.Is(err, os.ErrNotExist) && optionalPrograms[name] {
			continue
		}
		if err != nil {
			d.Close()
			return nil, notLoaded(fmt.Errorf("opening pinned program %s: %w", name, err))
		}
		*dst = p
	}
	return d, nil
}

func notLoaded(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrNotLoaded, err)
	}
	return err
}

// optionalMaps may be missing under a root pinned by an older build, which
// OpenPinned then leaves nil: a CNI plugin updated before the agent still
// attaches pods.
var optionalMaps = map[string]bool{"podnic_lbaddr_v1": true, "podnic_frag_v1": true, "podnic_udpsk_v1": true, "podnic_nodeip_v1": true, "podnic_srcrange_v1": true}

// optionalPrograms may likewise be missing under a root an older build
// pinned; OpenPinned leaves them nil.
var optionalPrograms = map[string]bool{ProgGuard: true, ProgSendmsg4: true, ProgSendmsg6: true, ProgRecvmsg4: true, ProgRecvmsg6: true}

// mapSlots names every map of the datapath with where it is kept.
func (d *Datapath) mapSlots() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		"podnic_svc_v1":      &d.Maps.Services,
		"podnic_slot_v1":     &d.Maps.Slots,
		"podnic_be_v1":       &d.Maps.Backends,
		"podnic_ct_v1":       &d.Maps.Conntrack,
		"podnic_aff_v1":      &d.Maps.Affinity,
		"podnic_cnt_v1":      &d.Maps.Counters,
		"podnic_ev_v1":       &d.Maps.Events,
		"podnic_cidr_v1":     &d.Maps.ServiceCIDRs,
		"podnic_lbns_v1":     &d.Maps.LBNetns,
		"podnic_lbpeer_v2":   &d.Maps.LBPeers,
		"podnic_lbaddr_v1":   &d.Maps.LBAddrs,
		"podnic_frag_v1":     &d.Maps.Frags,
		"podnic_udpsk_v1":    &d.Maps.UDPSockets,
		"podnic_cfg_v1":      &d.Maps.Config,
		"podnic_live_v1":     &d.Maps.Live,
		"podnic_nodeip_v1":   &d.Maps.NodeAddrs,
		"podnic_srcrange_v1": &d.Maps.SourceRanges,
	}
}

// programSlots names every program of the datapath with where it is kept.
func (d *Datapath) programSlots() map[string]**ebpf.Program {
	return map[string]**ebpf.Program{
		ProgFromPod:  &d.Programs.FromPod,
		ProgToPod:    &d.Programs.ToPod,
		ProgLoOut:    &d.Programs.LoOut,
		ProgGuard:    &d.Programs.Guard,
		ProgConnect4: &d.Programs.Connect4,
		ProgConnect6: &d.Programs.Connect6,
		ProgGetPeer4: &d.Programs.GetPeer4,
		ProgGetPeer6: &d.Programs.GetPeer6,
		ProgSendmsg4: &d.Programs.Sendmsg4,
		ProgSendmsg6: &d.Programs.Sendmsg6,
		ProgRecvmsg4: &d.Programs.Recvmsg4,
		ProgRecvmsg6: &d.Programs.Recvmsg6,
	}
}

func (d *Datapath) programsByName() map[string]*ebpf.Program {
	out := make(map[string]*ebpf.Program)
	for name, p := range d.programSlots() {
		out[name] = *p
	}
	return out
}

// Close releases the file descriptors; pins stay.
func (d *Datapath) Close() {
	for _, m := range d.mapSlots() {
		if *m != nil {
			_ = (*m).Close()
		}
	}
	for _, p := range d.programsByName() {
		if p != nil {
			_ = p.Close()
		}
	}
}

// Unpin removes every pin under root: programs, maps and links. Attached
// TCX links are detached by it; live connections lose their state.
func Unpin(root string) error {
	if root == "" {
		root = DefaultRoot
	}
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("removing pins under %s: %w", root, err)
	}
	return nil
}

// pinReplace pins p at path, replacing an older pin atomically: pin to a
// temporary name, then rename over the old one, so a concurrent CNI ADD
// never finds the path missing.
func pinReplace(p *ebpf.Program, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating pin dir: %w", err)
	}
	tmp := path + "_new" // bpffs refuses dots in names
	_ = os.Remove(tmp)
	if err := p.Pin(tmp); err != nil {
		return fmt.Errorf("pinning program to %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("renaming pin to %s: %w", path, err)
	}
	return nil
}

func ensureBPFFS(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("creating bpffs root %s: %w", root, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("checking filesystem of %s: %w", root, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("checking filesystem of %s: not on bpffs (mount it: mount -t bpf bpffs /sys/fs/bpf)", root)
	}
	return nil
}

// lockRoot takes an exclusive flock on the root directory.
func lockRoot(root string) (func(), error) {
	f, err := os.Open(root)
	if err != nil {
		return nil, fmt.Errorf("opening %s for locking: %w", root, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locking %s: %w", root, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		_ = f.Close()
	}, nil
}
