// Package vm boots a kernel other than the host's under qemu and runs a
// static Go test binary in it, for the kernel features the host cannot
// show: the legacy tc (clsact + cls_bpf) fallback on a kernel without TCX,
// and the 6.1 verifier. The kernel is Debian's linux-image-6.1, unpacked by
// scripts/setup-vm.sh into /var/cache/podnic/vm/kernel; qemu runs with
// -accel tcg, since KVM here cannot boot a stock kernel.
//
// The guest is an initramfs built on the fly: busybox as /init's shell, the
// kernel modules setup-vm.sh kept, the test binary, and host tools copied
// with their shared libraries (ip and tc, which test/simnode runs). Its
// /init mounts proc, sys, devtmpfs, bpffs and tmpfs on /run and /tmp, loads
// the modules, sets lo up, runs the binary and reports its exit status on
// the serial console, which is all the host reads. The package never
// touches the host's kernel, network or bpffs.
package vm
