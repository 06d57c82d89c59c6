package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultKernelDir is where scripts/setup-vm.sh puts the kernel.
const DefaultKernelDir = "/var/cache/podnic/vm/kernel"

// Kernel is a kernel image and the modules the guest loads, in order.
type Kernel struct {
	Dir     string
	Image   string // vmlinuz
	Release string // uname -r, e.g. 6.1.0-56-amd64
	Modules []string
}

// FindKernel reads a kernel directory laid out by scripts/setup-vm.sh:
// vmlinuz, release, modules/order and modules/<name>.ko.
func FindKernel(dir string) (*Kernel, error) {
	k := &Kernel{Dir: dir, Image: filepath.Join(dir, "vmlinuz")}
	if _, err := os.Stat(k.Image); err != nil {
		return nil, fmt.Errorf("finding kernel in %s: %w", dir, err)
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		return nil, fmt.Errorf("finding kernel in %s: %w", dir, err)
	}
	k.Release = strings.TrimSpace(string(rel))
	order, err := os.ReadFile(filepath.Join(dir, "modules", "order"))
	if err != nil {
		return nil, fmt.Errorf("finding kernel modules in %s: %w", dir, err)
	}
	for _, m := range strings.Fields(string(order)) {
		ko := filepath.Join(dir, "modules", m+".ko")
		if _, err := os.Stat(ko); err != nil {
			return nil, fmt.Errorf("finding kernel module %s: %w", m, err)
		}
		k.Modules = append(k.Modules, ko)
	}
	return k, nil
}

// Config says what to boot and what to run in the guest.
type Config struct {
	Kernel  *Kernel
	Qemu    string // qemu-system-x86_64, found in PATH when empty
	Busybox string // a static busybox; /bin/busybox when empty
	// Binary is a static executable, run in the guest as /podnic/<name>
	// with Args and Env, from /podnic.
	Binary string
	Args   []string
	Env    []string
	// Tools are host executables copied to the same paths in the guest
	// with their shared libraries, and found in its PATH.
	Tools   []string
	Memory  string        // qemu -m; 1G when empty
	CPUs    int           // qemu -smp; 1 when 0
	Timeout time.Duration // the whole run, boot included; 120 s when 0
	// Console, if set, receives the serial console as it arrives.
	Console io.Writer
}

// Result is what a run printed and how it ended.
type Result struct {
	Console  string        // the serial console, terminal escapes removed
	Exit     int           // the binary's exit status; -1 if it never ended
	Started  time.Duration // guest uptime when the binary started
	Finished time.Duration // guest uptime when it ended
	Elapsed  time.Duration // host time from starting qemu until it exited
}

// Markers /init writes to the console.
const (
	markStart = "podnic-vm: start"
	markExit  = "podnic-vm: exit"
)

var (
	reStart = regexp.MustCompile(markStart + ` uptime ([0-9.]+)`)
	reExit  = regexp.MustCompile(markExit + ` status (\d+) uptime ([0-9.]+)`)
	// CSI and charset escapes that SeaBIOS and the console write.
	reEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|c)`)
)

// ErrTimeout means the guest did not power off in time; qemu was killed.
var ErrTimeout = errors.New("vm timed out")

// Run builds the initramfs in a temporary directory, boots the kernel with
// it under qemu (TCG) and waits until the guest powers off or the timeout
// ends, when it kills qemu. It returns the console in either case; the
// error is nil only when the binary ran to its end.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Kernel == nil {
		return nil, errors.New("running vm: no kernel")
	}
	qemu := cfg.Qemu
	if qemu == "" {
		var err error
		if qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
			return nil, fmt.Errorf("running vm: %w", err)
		}
	}
	if cfg.Memory == "" {
		cfg.Memory = "1G"
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 120 * time.Second
	}

	dir, err := os.MkdirTemp("", "podnic-vm-")
	if err != nil {
		return nil, fmt.Errorf("running vm: %w", err)
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := writeInitramfs(initrd, cfg); err != nil {
		return nil, fmt.Errorf("building initramfs: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-accel", "tcg",
		"-nographic", "-no-reboot",
		"-nic", "none", // no network device: no iPXE ROM to wait for
		"-m", cfg.Memory,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-kernel", cfg.Kernel.Image,
		"-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet",
	)
	// On timeout CommandContext kills qemu, and only qemu, by its PID.
	cmd.WaitDelay = 5 * time.Second
	var console lockedBuffer
	var out io.Writer = &console
	if cfg.Console != nil {
		out = io.MultiWriter(&console, cfg.Console)
	}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	runErr := cmd.Run()
	res := parseConsole(console.String())
	res.Elapsed = time.Since(start)
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return res, fmt.Errorf("%w after %s (qemu killed)", ErrTimeout, cfg.Timeout)
	case runErr != nil:
		return res, fmt.Errorf("running qemu: %w", runErr)
	case res.Exit < 0:
		return res, errors.New("running vm: the guest powered off before the binary ended")
	}
	return res, nil
}

func parseConsole(s string) *Result {
	s = strings.ReplaceAll(reEscape.ReplaceAllString(s, ""), "\r\n", "\n")
	res := &Result{Console: s, Exit: -1}
	if m := reStart.FindStringSubmatch(s); m != nil {
		res.Started = uptime(m[1])
	}
	if m := reExit.FindStringSubmatch(s); m != nil {
		res.Exit, _ = strconv.Atoi(m[1])
		res.Finished = uptime(m[2])
	}
	return res
}

func uptime(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(f * float64(time.Second))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func writeInitramfs(file string, cfg Config) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	a := NewInitramfs(w)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "root", "podnic", "lib/modules"} {
		a.Dir(d)
	}
	a.Symlink("var/run", "../run")
	busybox := cfg.Busybox
	if busybox == "" {
		busybox = "/bin/busybox"
	}
	a.HostFile("bin/busybox", busybox)
	if files, err := elfClosure(busybox); err == nil {
		for _, lib := range files[1:] { // none for busybox-static
			a.HostFile(lib, lib)
		}
	}
	var modules []string
	for _, ko := range cfg.Kernel.Modules {
		name := path.Join("lib/modules", filepath.Base(ko))
		a.HostFile(name, ko)
		modules = append(modules, "/"+name)
	}
	for _, t := range cfg.Tools {
		a.HostExecutable(t)
	}
	bin := "/podnic/" + filepath.Base(cfg.Binary)
	a.HostFile(bin, cfg.Binary)
	a.File("init", 0o755, []byte(initScript(modules, bin, cfg.Args, cfg.Env)))
	if err := a.Close(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// initScript is the guest's /init. The binary's exit status and the
// uptimes around it go to the console; then the guest powers off (and if
// that failed, /init's exit panics the kernel, which with panic=-1 and
// qemu's -no-reboot ends qemu as well).
func initScript(modules []string, bin string, args, env []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=%s HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpffs /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
`, LibraryPath)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || echo 'podnic-vm: insmod %s failed'\n", m, path.Base(m))
	}
	b.WriteString("ip link set lo up\n")
	fmt.Fprintf(&b, "echo \"%s uptime $(cut -d' ' -f1 /proc/uptime) kernel $(uname -r)\"\n", markStart)
	fmt.Fprintf(&b, "cd %s\n", path.Dir(bin))
	for _, e := range env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(e))
	}
	b.WriteString(shellQuote(bin))
	for _, a := range args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\nstatus=$?\n")
	fmt.Fprintf(&b, "echo \"%s status $status uptime $(cut -d' ' -f1 /proc/uptime)\"\n", markExit)
	b.WriteString("poweroff -f\n")
	return b.String()
}

// shellQuote quotes s for sh; "export 'K=V'" exports K as V.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
