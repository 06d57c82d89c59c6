package nodebox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Down takes the box down and removes everything it made: pods (so the
// CNI returns their ENIs), processes by PID and start time, whatever is
// left in its cgroups and mount namespace, its namespaces with their links,
// its cgroups and its directory. It is safe to call more than once and on a
// box that came up halfway.
func (b *Box) Down() error {
	start := time.Now()
	var errs []error
	byName := map[string]*proc{}
	for _, p := range b.Procs {
		byName[p.Name] = p
	}
	if p := byName["kubelet"]; p != nil {
		p.stop(stopTimeout)
	}
	if p := byName["containerd"]; p.alive() && b.Crictl != "" {
		// Pods first, through the runtime, so every ENI goes back to the
		// node by CNI DEL as it would on a real node.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, b.Crictl, "--runtime-endpoint", "unix://"+b.containerdSocket(),
			"--timeout", "20s", "rmp", "--force", "--all").CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("removing pods: %w: %s", err, strings.TrimSpace(string(out))))
		}
	}
	for i := len(b.Procs) - 1; i >= 0; i-- {
		b.Procs[i].stop(stopTimeout)
	}
	// containerd's shims and the containers outlive containerd by design.
	var mntNS string
	if b.Node.alive() {
		mntNS, _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", b.Node.PID))
	}
	for round := 0; round < 50; round++ {
		left := b.leftovers(mntNS)
		if len(left) == 0 {
			break
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
		if round == 49 {
			errs = append(errs, fmt.Errorf("processes %v of the box survive SIGKILL", left))
		}
	}
	// The namespaces go with their holders, and every link in them.
	b.Node.stop(stopTimeout)
	b.Fabric.stop(stopTimeout)
	if err := b.removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	if b.Dir != "" {
		_ = os.Remove(filepath.Join(b.Dir, stateFile))
	}
	if b.watchFD != nil {
		b.watchFD.Close()
		b.watchFD = nil
	}
	if b.Dir != "" {
		if err := os.RemoveAll(b.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if b.logf != nil {
		b.logf("nodebox: down in %v", time.Since(start).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

// leftovers lists the processes in the box's cgroups or in its mount
// namespace (mntNS, "mnt:[inode]"), but not the node's holder.
func (b *Box) leftovers(mntNS string) []int {
	seen := map[int]bool{}
	if b.Cgroup != "" {
		for _, h := range cgroupHierarchies() {
			root := filepath.Join("/sys/fs/cgroup", h, b.Cgroup)
			_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				data, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
				for _, f := range strings.Fields(string(data)) {
					if pid, err := strconv.Atoi(f); err == nil {
						seen[pid] = true
					}
				}
				return nil
			})
		}
	}
	if mntNS != "" {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == mntNS {
				seen[pid] = true
			}
		}
	}
	if b.Node != nil {
		delete(seen, b.Node.PID)
	}
	var out []int
	for pid := range seen {
		if _, state := statOf(pid); state != "" && state != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// removeCgroups removes the box's cgroups, deepest first.
func (b *Box) removeCgroups() error {
	if b.Cgroup == "" {
		return nil
	}
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join("/sys/fs/cgroup", h, b.Cgroup)
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for try := 0; try < 20; try++ {
				// A cgroup whose last task just died may be busy a moment.
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Watch is the watchdog: it waits for stdin to close (the process that
// started the box is gone) and takes the box down if its state file is
// still there.
func Watch(dir string) error {
	buf := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			break
		}
	}
	b, err := Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // taken down already
	}
	if err != nil {
		return err
	}
	b.Watcher = nil
	b.SetLogf(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	fmt.Fprintf(os.Stderr, "nodebox watch: the process that started %s is gone; taking the box down\n", dir)
	return b.Down()
}
