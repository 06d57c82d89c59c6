package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/netdevice"
)

// Socket-level load balancing (lib/sock.h): programs on the node's cgroup
// v2 root turn a TCP or UDP connect() to a Service into a connect() to a
// backend, and a UDP datagram to a Service into one to a backend (naming
// the Service as the source of its replies), in the network namespaces
// AttachPod registers. They are node-wide, so
// they are attached once (by the agent), as pinned links:
//
//	<root>/cgroup/<program>   the pinned cgroup link
//
// Without them, or for what they leave alone, the tc programs translate.

// CgroupMount is where podnic mounts cgroup v2 when the node has no
// cgroup v2 mount of its own (a cgroup v1 host still has the hierarchy).
const CgroupMount = "/run/podnic/cgroupv2"

func cgroupLinksDir(root string) string { return filepath.Join(root, "cgroup") }

// socketLBHooks pairs each socket-level program with its cgroup hook.
func (d *Datapath) socketLBHooks() []struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	return []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{ProgConnect4, d.Programs.Connect4, ebpf.AttachCGroupInet4Connect},
		{ProgConnect6, d.Programs.Connect6, ebpf.AttachCGroupInet6Connect},
		{ProgGetPeer4, d.Programs.GetPeer4, ebpf.AttachCgroupInet4GetPeername},
		{ProgGetPeer6, d.Programs.GetPeer6, ebpf.AttachCgroupInet6GetPeername},
		{ProgSendmsg4, d.Programs.Sendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{ProgSendmsg6, d.Programs.Sendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{ProgRecvmsg4, d.Programs.Recvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{ProgRecvmsg6, d.Programs.Recvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
	}
}

// AttachSocketLB attaches the socket-level programs to the cgroup v2
// directory at cgroupPath (the root of the hierarchy, so that every pod is
// below it) and pins the links under root. With peerName, getpeername() of
// a balanced socket answers with the Service (about 1 µs more per
// connection); without, with the backend. Attaching again updates the
// links to this datapath's programs without a gap. On failure nothing this
// call attached stays.
func (d *Datapath) AttachSocketLB(cgroupPath string, peerName bool) (retErr error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupPath, &st); err != nil {
		return fmt.Errorf("attaching socket load balancing: checking %s: %w", cgroupPath, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("attaching socket load balancing: %s is not a cgroup v2 mount", cgroupPath)
	}
	dir := cgroupLinksDir(d.Root)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("attaching socket load balancing: creating %s: %w", dir, err)
	}
	var created []string
	defer func() {
		if retErr != nil {
			for _, pin := range created {
				_ = removePinnedLink(pin)
			}
		}
	}()
	// Remember Services before getpeername can ask, forget them after it
	// stopped asking.
	if peerName {
		if err := d.Maps.setPeerName(true); err != nil {
			return fmt.Errorf("attaching socket load balancing: %w", err)
		}
	}
	for _, h := range d.socketLBHooks() {
		if h.prog == nil {
			return fmt.Errorf("attaching %s: %w", h.name, ErrNotLoaded)
		}
		pin := filepath.Join(dir, h.name)
		if !peerName && (h.name == ProgGetPeer4 || h.name == ProgGetPeer6) {
			if err := removePinnedLink(pin); err != nil {
				return fmt.Errorf("detaching %s: %w", h.name, err)
			}
			continue
		}
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := old.Update(h.prog)
			_ = old.Close()
			if err == nil {
				continue
			}
			// A link that cannot take the program (its cgroup is gone):
			// replace it.
			if err := removePinnedLink(pin); err != nil {
				return fmt.Errorf("attaching %s: %w", h.name, err)
			}
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: h.prog})
		if err != nil {
			return fmt.Errorf("attaching %s to cgroup %s: %w", h.name, cgroupPath, err)
		}
		err = l.Pin(pin)
		_ = l.Close()
		if err != nil {
			return fmt.Errorf("pinning %s link to %s: %w", h.name, pin, err)
		}
		created = append(created, pin)
	}
	if !peerName {
		if err := d.Maps.setPeerName(false); err != nil {
			return fmt.Errorf("attaching socket load balancing: %w", err)
		}
	}
	return nil
}

// DetachSocketLB removes the socket-level programs pinned under root. It
// is idempotent. Balanced connections stay as they are: they talk to their
// backend directly.
func DetachSocketLB(root string) error {
	if root == "" {
		root = DefaultRoot
	}
	dir := cgroupLinksDir(root)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detaching socket load balancing: reading %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		if err := removePinnedLink(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detaching socket load balancing: removing %s: %w", dir, err)
	}
	return nil
}

// SocketLBAttached reports which socket-level programs have pinned links
// under root.
func SocketLBAttached(root string) ([]string, error) {
	if root == "" {
		root = DefaultRoot
	}
	ents, err := os.ReadDir(cgroupLinksDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing socket load balancing links: %w", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// CgroupV2Root returns the node's cgroup v2 mount point, mounting the
// hierarchy at CgroupMount when nothing has mounted it (a cgroup v1 or
// hybrid host). Processes not placed anywhere in cgroup v2 are in its root,
// so programs there see every socket on the node.
func CgroupV2Root() (string, error) {
	if err := inInitialCgroupNamespace("/proc/thread-self/ns/cgroup"); err != nil {
		return "", err
	}
	if p, err := CgroupV2Mount(); err != nil || p != "" {
		return p, err
	}
	if err := os.MkdirAll(CgroupMount, 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", CgroupMount, err)
	}
	if err := unix.Mount("cgroup2", CgroupMount, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("mounting cgroup v2 at %s: %w", CgroupMount, err)
	}
	return CgroupMount, nil
}

// ErrCgroupNamespace says the process is in a cgroup namespace of its own,
// as a container usually is on a cgroup v2 node: a cgroup v2 mount it
// finds or makes shows only its own cgroup, and socket programs attached
// there would see none of the pods' sockets.
var ErrCgroupNamespace = errors.New("this process has a cgroup namespace of its own (a container's), whose cgroup v2 mounts show only its own cgroup: give the node's cgroup v2 root explicitly (podnic-agent --cgroup-root, e.g. the node's /sys/fs/cgroup mounted into the container), or run in the node's cgroup namespace")

// initCgroupNamespaceInode is the inode of the initial cgroup namespace,
// the kernel's PROC_CGROUP_INIT_INO.
const initCgroupNamespaceInode = 0xEFFFFFFB

// inInitialCgroupNamespace returns ErrCgroupNamespace unless nsLink (a
// /proc/.../ns/cgroup) is the initial cgroup namespace. A kernel without
// cgroup namespaces has only that one.
func inInitialCgroupNamespace(nsLink string) error {
	var st unix.Stat_t
	if err := unix.Stat(nsLink, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("checking the cgroup namespace: %w", err)
	}
	if st.Ino != initCgroupNamespaceInode {
		return ErrCgroupNamespace
	}
	return nil
}

// CgroupV2Mount returns where cgroup v2 is mounted (its root), or "".
func CgroupV2Mount() (string, error) { return findCgroup2Mount("/proc/self/mountinfo") }

// findCgroup2Mount returns the first cgroup2 mount in a mountinfo file
// whose root is the hierarchy's root, or "".
func findCgroup2Mount(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 1 || tail[0] != "cgroup2" || fields[3] != "/" {
			continue
		}
		return unescapeMountPath(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	return "", nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownerHash keys a pod's socket-LB registration, so that DetachPod can find
// it when the netns is gone.
func ownerHash(owner string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(owner))
	return h.Sum64()
}

// currentNetnsCookie returns the cookie of the calling thread's netns.
// ok is false on kernels without SO_NETNS_COOKIE (Linux < 5.14), where
// socket-level balancing is not available.
func currentNetnsCookie() (cookie uint64, ok bool, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, false, fmt.Errorf("reading netns cookie: opening socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading netns cookie: %w", err)
	}
	return c, true, nil
}

// registerNetns lists the calling thread's netns for socket-level
// balancing under owner, with the addresses of ifname for session affinity
// at connect(). Call it inside the pod's netns.
func (d *Datapath) registerNetns(owner, ifname string) error {
	if d.Maps.LBNetns == nil {
		return fmt.Errorf("registering netns for socket load balancing: %w", ErrNotLoaded)
	}
	cookie, ok, err := currentNetnsCookie()
	if err != nil || !ok {
		return err
	}
	// The addresses first: a netns listed for balancing always has them
	// where they can be had.
	if d.Maps.LBAddrs != nil {
		addrs, err := podAddrs(ifname)
		if err != nil {
			return err
		}
		if err := d.Maps.LBAddrs.Update(cookie, &addrs, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("registering the pod's addresses for socket load balancing: %w", err)
		}
	}
	v := podnicPnLbNetns{OwnerHash: ownerHash(owner)}
	if err := d.Maps.LBNetns.Update(cookie, &v, ebpf.UpdateAny); err != nil {
		if d.Maps.LBAddrs != nil {
			_ = d.Maps.LBAddrs.Delete(cookie)
		}
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("registering netns for socket load balancing: table full (%d pod network namespaces): %w", d.Maps.LBNetns.MaxEntries(), err)
		}
		return fmt.Errorf("registering netns for socket load balancing: %w", err)
	}
	return nil
}

// podAddrs returns the pod's source addresses on ifname, as the datapath
// stores them; a family without one stays zero, and session affinity for
// it is then left to tc.
func podAddrs(ifname string) (lbAddrs, error) {
	var out lbAddrs
	v4, v6, err := netdevice.SourceAddrs(ifname)
	if err != nil {
		return out, fmt.Errorf("registering the pod's addresses for socket load balancing: %w", err)
	}
	if v4.IsValid() {
		out.V4 = AddrFrom(v4)
	}
	if v6.IsValid() {
		out.V6 = AddrFrom(v6)
	}
	return out, nil
}

// OptOutSocketLB takes owner's pod out of socket-level balancing: its
// connections are translated by tc, packet by packet. AttachPod opts a pod
// in again.
func OptOutSocketLB(root, owner string) error {
	if root == "" {
		root = DefaultRoot
	}
	return unregisterNetns(root, owner)
}

// unregisterNetns removes owner's netns entries, and their addresses, from
// the pinned maps under root. A missing map (a datapath that predates
// socket LB, or the addresses) is not an error.
func unregisterNetns(root, owner string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), "podnic_lbns_v1"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unregistering netns of %s: %w", owner, err)
	}
	defer m.Close()
	want := ownerHash(owner)
	var (
		cookie uint64
		v      podnicPnLbNetns
		stale  []uint64
	)
	it := m.Iterate()
	for it.Next(&cookie, &v) {
		if v.OwnerHash == want {
			stale = append(stale, cookie)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("unregistering netns of %s: %w", owner, err)
	}
	if err := deleteCookies(m, stale); err != nil {
		return fmt.Errorf("unregistering netns of %s: %w", owner, err)
	}
	addrs, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), "podnic_lbaddr_v1"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unregistering the addresses of %s: %w", owner, err)
	}
	defer addrs.Close()
	if err := deleteCookies(addrs, stale); err != nil {
		return fmt.Errorf("unregistering the addresses of %s: %w", owner, err)
	}
	return nil
}

// deleteCookies deletes the netns cookies from m; one already gone is no
// error.
func deleteCookies(m *ebpf.Map, cookies []uint64) error {
	for _, c := range cookies {
		if err := m.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting netns cookie %d: %w", c, err)
		}
	}
	return nil
}

// SocketLBOptions are the agent's and 'podnicctl load's socket-level
// balancing flags.
type SocketLBOptions struct {
	On         bool   // --socket-lb
	PeerName   bool   // --socket-lb-peer-name: getpeername() names the Service
	CgroupPath string // --cgroup-root; empty: the node's cgroup v2 mount
}

// SetupSocketLB attaches the socket-level programs as opt says, or, when
// off, removes links an earlier run left so that the setting holds.
func SetupSocketLB(d *Datapath, opt SocketLBOptions) error {
	if !opt.On {
		return DetachSocketLB(d.Root)
	}
	cgroupPath := opt.CgroupPath
	if cgroupPath == "" {
		p, err := CgroupV2Root()
		if err != nil {
			return fmt.Errorf("setting up socket load balancing (turn it off with --socket-lb=false): %w", err)
		}
		cgroupPath = p
	}
	if err := d.AttachSocketLB(cgroupPath, opt.PeerName); err != nil {
		return fmt.Errorf("setting up socket load balancing (turn it off with --socket-lb=false): %w", err)
	}
	return nil
}
