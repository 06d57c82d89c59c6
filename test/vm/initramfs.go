package vm

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
)

// Initramfs writes a newc cpio archive, the format the kernel unpacks into
// its rootfs. Parent directories are added before what they hold, since
// the kernel's unpacker does not create them.
type Initramfs struct {
	w     io.Writer
	ino   uint32
	added map[string]bool
	err   error
}

// NewInitramfs starts an archive on w; Close writes its trailer.
func NewInitramfs(w io.Writer) *Initramfs {
	return &Initramfs{w: w, ino: 1, added: map[string]bool{".": true, "/": true}}
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

func (a *Initramfs) entry(name string, mode uint32, data []byte) {
	if a.err != nil {
		return
	}
	name = path.Clean("/" + name)[1:]
	a.mkdirAll(path.Dir(name))
	if a.added[name] {
		return
	}
	a.added[name] = true
	a.ino++
	_, a.err = a.w.Write(newcRecord(a.ino, mode, name, data))
}

// newcRecord is one archive member: the magic and 13 eight-digit hex
// fields, then the name with its NUL and the data, each padded to four
// bytes.
func newcRecord(ino, mode uint32, name string, data []byte) []byte {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = pad4(append(buf, 0))
	return pad4(append(buf, data...))
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (a *Initramfs) mkdirAll(dir string) {
	if dir == "" || a.added[dir] {
		return
	}
	a.mkdirAll(path.Dir(dir))
	a.entry(dir, modeDir|0o755, nil)
}

// Dir adds a directory.
func (a *Initramfs) Dir(name string) { a.mkdirAll(path.Clean("/" + name)[1:]) }

// File adds a regular file.
func (a *Initramfs) File(name string, perm os.FileMode, data []byte) {
	a.entry(name, modeFile|uint32(perm.Perm()), data)
}

// Symlink adds name pointing at target.
func (a *Initramfs) Symlink(name, target string) {
	a.entry(name, modeSymlink|0o777, []byte(target))
}

// HostFile copies a host file, following symlinks, to name.
func (a *Initramfs) HostFile(name, hostPath string) {
	if a.err != nil {
		return
	}
	data, err := os.ReadFile(hostPath)
	if err != nil {
		a.err = fmt.Errorf("adding %s: %w", hostPath, err)
		return
	}
	fi, err := os.Stat(hostPath)
	if err != nil {
		a.err = fmt.Errorf("adding %s: %w", hostPath, err)
		return
	}
	a.File(name, fi.Mode(), data)
}

// HostExecutable copies a host executable to the same path in the guest,
// with its ELF interpreter and every shared library it needs, found where
// the host's loader would find them on Debian.
func (a *Initramfs) HostExecutable(hostPath string) {
	if a.err != nil {
		return
	}
	files, err := elfClosure(hostPath)
	if err != nil {
		a.err = fmt.Errorf("adding %s: %w", hostPath, err)
		return
	}
	for _, f := range files {
		a.HostFile(f, f)
	}
}

// libDirs are where bookworm's loader looks for libraries on amd64.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// LibraryPath is the LD_LIBRARY_PATH under which HostExecutable's
// libraries are found in the guest, which has no ld.so.cache.
var LibraryPath = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"

// elfClosure returns the executable, its interpreter and its libraries.
func elfClosure(exe string) ([]string, error) {
	out := []string{exe}
	queue := []string{exe}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		f, err := elf.Open(p)
		if err != nil {
			return nil, err
		}
		needed, err := f.ImportedLibraries()
		var interp string
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, prog.Filesz)
				if _, rerr := prog.ReadAt(b, 0); rerr == nil {
					interp = string(b[:len(b)-1]) // NUL-terminated
				}
			}
		}
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading libraries of %s: %w", p, err)
		}
		var found []string
		if interp != "" {
			found = append(found, interp)
		}
		for _, lib := range needed {
			l, err := findLibrary(lib)
			if err != nil {
				return nil, fmt.Errorf("%s needs %s: %w", p, lib, err)
			}
			found = append(found, l)
		}
		for _, l := range found {
			if !slices.Contains(out, l) {
				out = append(out, l)
				queue = append(queue, l)
			}
		}
	}
	return out, nil
}

func findLibrary(name string) (string, error) {
	for _, d := range libDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %v", libDirs)
}

// Close writes the trailer and reports the first error of any step.
func (a *Initramfs) Close() error {
	if a.err != nil {
		return a.err
	}
	_, err := a.w.Write(newcRecord(0, 0, "TRAILER!!!", nil))
	return err
}
