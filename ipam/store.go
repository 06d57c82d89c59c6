package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrExhausted is returned, wrapped with the range set, when a set has no
// free address.
var ErrExhausted = errors.New("no free address")

// Owner is who holds an allocation: one interface of one container.
type Owner struct {
	ContainerID string
	Ifname      string
}

func (o Owner) validate() error {
	bad := func(s string) bool {
		return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
	}
	switch {
	case len(o.ContainerID)+len(o.Ifname)+2 > maxOwnerFile:
		return fmt.Errorf("owner %.40q... is longer than %d bytes", o.ContainerID, maxOwnerFile-2)
	case o.ContainerID == "":
		return errors.New("owner has no container ID")
	case o.Ifname == "":
		return fmt.Errorf("owner %q has no interface name", o.ContainerID)
	case bad(o.ContainerID) || bad(o.Ifname):
		return fmt.Errorf("owner %q/%q holds control characters", o.ContainerID, o.Ifname)
	}
	return nil
}

// Allocation is one address handed out.
type Allocation struct {
	Addr    netip.Prefix // the address with its subnet's length
	Gateway netip.Addr   // the range's gateway; zero when no range knows the address
}

// Store hands out addresses from a Config's ranges and remembers them on
// disk, so separate plugin processes share one pool.
//
// On disk, under DataDir/Network:
//
//	lock                 flock'd around every operation (shared for Lookup)
//	<address>            one file per address handed out, e.g. 10.1.0.10 or
//	                     fd00:1::a; created with O_EXCL, content
//	                     "containerID\nifname\n", fsync'd, directory fsync'd
//	last_reserved_ip.<n> the last address set n handed out: a round-robin
//	                     hint, ignored when unreadable
//
// A file is owned only when its content is complete: the final newline
// commits it. An empty or partial file, left by a crash between claim and
// write, still holds its address (it is never handed out) but belongs to
// nobody: Lookup and Release skip it and GC removes it.
type Store struct {
	cfg *Config
	dir string

	mu   sync.Mutex // flock does not exclude goroutines sharing one fd
	lock *os.File   // nil once closed
}

const (
	lockName     = "lock"
	cursorPrefix = "last_reserved_ip."
)

var errClosed = errors.New("ipam store is closed")

// Open opens, creating if needed, the store of cfg's network. The Store
// holds no lock between calls; Close it when done.
func Open(cfg *Config) (*Store, error) {
	if cfg == nil {
		return nil, invalid("no config")
	}
	c := *cfg
	if !networkName.MatchString(c.Network) {
		return nil, invalid("network name %q: want letters, digits, '_', '.' and '-', starting with a letter or digit", c.Network)
	}
	if !filepath.IsAbs(c.DataDir) {
		return nil, invalid("dataDir %q is not an absolute path", c.DataDir)
	}
	if len(c.RangeSets) == 0 {
		return nil, invalid("ranges is empty")
	}
	if err := c.compile(); err != nil {
		return nil, err
	}
	dir := filepath.Join(c.DataDir, c.Network)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create store %s: %w", dir, err)
		}
		// Make the new directories themselves durable before anything in
		// them is trusted to be.
		for _, d := range []string{c.DataDir, filepath.Dir(c.DataDir)} {
			if err := syncDir(d); err != nil {
				return nil, fmt.Errorf("create store %s: %w", dir, err)
			}
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open store lock: %w", err)
	}
	return &Store{cfg: &c, dir: dir, lock: f}, nil
}

// Close releases the store's file descriptor.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

// Dir is the store's directory, for operators and tests.
func (s *Store) Dir() string { return s.dir }

// Allocate gives owner one address from each range set, in set order. It is
// idempotent: addresses owner already holds are returned, and only the sets
// it holds nothing in get a new one. When a set is exhausted, the addresses
// this call took are released again and the error wraps ErrExhausted.
func (s *Store) Allocate(owner Owner) ([]Allocation, error) {
	if err := owner.validate(); err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
	var out []Allocation
	err := s.locked(unix.LOCK_EX, func() error {
		hs, err := s.scan()
		if err != nil {
			return err
		}
		n := len(s.cfg.RangeSets)
		result := make([]Allocation, n)
		have := make([]bool, n)
		used := make(map[netip.Addr]bool, len(hs))
		for _, h := range hs {
			used[h.addr] = true
			if h.owned && h.owner == owner {
				if set, _, ok := s.cfg.locate(h.addr); ok && !have[set] {
					result[set], have[set] = s.cfg.allocation(h.addr), true
				}
			}
		}

		var taken []netip.Addr
		success := false
		defer func() {
			if success || len(taken) == 0 {
				return
			}
			for _, a := range taken {
				_ = os.Remove(filepath.Join(s.dir, a.String()))
			}
			_ = syncDir(s.dir)
		}()
		for i := range n {
			if have[i] {
				continue
			}
			a, err := s.claim(i, owner, used)
			if err != nil {
				return err
			}
			taken = append(taken, a)
			result[i] = s.cfg.allocation(a)
		}
		if len(taken) > 0 {
			if err := syncDir(s.dir); err != nil {
				return fmt.Errorf("sync store: %w", err)
			}
		}
		success = true
		for i := range n {
			if !have[i] {
				s.writeCursor(i, result[i].Addr.Addr())
			}
		}
		out = result
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// claim takes the next free address of set for owner.
func (s *Store) claim(set int, owner Owner, used map[netip.Addr]bool) (netip.Addr, error) {
	cursor := s.readCursor(set)
	for {
		a, ok := s.cfg.nextFree(set, cursor, func(a netip.Addr) bool { return used[a] })
		if !ok {
			return netip.Addr{}, fmt.Errorf("allocate from range set %d (%s): %w", set, s.cfg.RangeSets[set], ErrExhausted)
		}
		used[a] = true
		err := writeClaim(filepath.Join(s.dir, a.String()), owner)
		if errors.Is(err, fs.ErrExist) {
			// Created behind the lock's back (by hand?): it is held.
			cursor = a
			continue
		}
		if err != nil {
			return netip.Addr{}, fmt.Errorf("claim %s: %w", a, err)
		}
		return a, nil
	}
}

// writeClaim creates the address file, failing if it exists, and makes its
// content durable. On failure nothing is left behind.
func writeClaim(path string, o Owner) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	if _, err = f.WriteString(o.ContainerID + "\n" + o.Ifname + "\n"); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// Release frees every address owner holds. Releasing nothing is no error.
func (s *Store) Release(owner Owner) error {
	if err := owner.validate(); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return s.locked(unix.LOCK_EX, func() error {
		hs, err := s.scan()
		if err != nil {
			return err
		}
		var gone []held
		for _, h := range hs {
			if h.owned && h.owner == owner {
				gone = append(gone, h)
			}
		}
		return s.remove(gone)
	})
}

// Lookup returns what owner holds, one allocation per range set it holds an
// address in, in set order; empty when it holds nothing. Addresses outside
// every configured subnet (from an older configuration) are left out, but
// Release still frees them.
func (s *Store) Lookup(owner Owner) ([]Allocation, error) {
	var out []Allocation
	err := s.locked(unix.LOCK_SH, func() error {
		hs, err := s.scan()
		if err != nil {
			return err
		}
		bySet := make([]netip.Addr, len(s.cfg.RangeSets))
		for _, h := range hs {
			if !h.owned || h.owner != owner {
				continue
			}
			if set, _, ok := s.cfg.locate(h.addr); ok && !bySet[set].IsValid() {
				bySet[set] = h.addr
			}
		}
		for _, a := range bySet {
			if a.IsValid() {
				out = append(out, s.cfg.allocation(a))
			}
		}
		return nil
	})
	return out, err
}

// GC frees every address whose owner is not in valid, and every address
// file a crash left empty or partial. It returns what it freed; an address
// no configured subnet knows comes back as a single-address prefix.
func (s *Store) GC(valid []Owner) ([]Allocation, error) {
	keep := make(map[Owner]bool, len(valid))
	for _, o := range valid {
		keep[o] = true
	}
	var out []Allocation
	err := s.locked(unix.LOCK_EX, func() error {
		hs, err := s.scan()
		if err != nil {
			return err
		}
		var gone []held
		for _, h := range hs {
			if !h.owned || !keep[h.owner] {
				gone = append(gone, h)
				out = append(out, s.cfg.allocation(h.addr))
			}
		}
		return s.remove(gone)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// held is one address file.
type held struct {
	addr  netip.Addr
	owner Owner
	owned bool // false: empty or partial, left by a crash
}

// scan reads every address file. The caller holds the lock.
func (s *Store) scan() ([]held, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read store: %w", err)
	}
	out := make([]held, 0, len(des))
	buf := make([]byte, maxOwnerFile+1)
	for _, de := range des {
		name := de.Name()
		a, err := netip.ParseAddr(name)
		if err != nil || a.String() != name || !de.Type().IsRegular() {
			continue // lock, cursors, anything else
		}
		b, err := readSmall(filepath.Join(s.dir, name), buf)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read store %s: %w", name, err)
		}
		o, ok := parseOwner(b)
		out = append(out, held{addr: a, owner: o, owned: ok})
	}
	return out, nil
}

// maxOwnerFile bounds what scan reads of an address file; longer content is
// no owner.
const maxOwnerFile = 4096

// readSmall reads up to len(buf) bytes of a file with three system calls
// where os.ReadFile needs six: scan reads every address file on every call,
// so this is most of its cost.
func readSmall(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

// parseOwner reads "containerID\nifname\n"; anything else, a prefix of it
// included, is no owner.
func parseOwner(b []byte) (Owner, bool) {
	s, ok := strings.CutSuffix(string(b), "\n")
	if !ok {
		return Owner{}, false
	}
	id, ifname, ok := strings.Cut(s, "\n")
	o := Owner{ContainerID: id, Ifname: ifname}
	if !ok || len(b) > maxOwnerFile || o.validate() != nil {
		return Owner{}, false
	}
	return o, true
}

// remove deletes address files and makes the deletion durable. The caller
// holds the lock.
func (s *Store) remove(hs []held) error {
	if len(hs) == 0 {
		return nil
	}
	for _, h := range hs {
		if err := os.Remove(filepath.Join(s.dir, h.addr.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release %s: %w", h.addr, err)
		}
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// locked runs fn under the store's file lock (how is LOCK_EX or LOCK_SH).
func (s *Store) locked(how int, fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return errClosed
	}
	fd := int(s.lock.Fd())
	for {
		err := unix.Flock(fd, how)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock store %s: %w", s.dir, err)
		}
	}
	defer func() { _ = unix.Flock(fd, unix.LOCK_UN) }()
	return fn()
}

func (s *Store) cursorPath(set int) string {
	return filepath.Join(s.dir, cursorPrefix+strconv.Itoa(set))
}

// readCursor returns the last address set handed out, or the zero Addr.
func (s *Store) readCursor(set int) netip.Addr {
	b, err := os.ReadFile(s.cursorPath(set))
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// writeCursor records the round-robin hint. It is not synced and its
// errors are ignored: a lost or torn cursor only restarts the search at the
// range's start, and the address files alone decide what is held.
func (s *Store) writeCursor(set int, a netip.Addr) {
	_ = os.WriteFile(s.cursorPath(set), []byte(a.String()), 0o644)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// String is the set's ranges as "start-end" joined by commas.
func (rs RangeSet) String() string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Start.String() + "-" + r.End.String()
	}
	return strings.Join(parts, ",")
}
