#!/usr/bin/env bash
# setup-vm.sh installs what test/vm needs to boot Debian's 6.1 kernel under
# qemu: qemu-system-x86 and busybox-static from apt, and the kernel itself,
# fetched with `apt-get download` and unpacked into a cache directory. The
# kernel is never installed as the host's kernel: only vmlinuz, its config
# and the few modules the tests load are kept. Run it as root. It is
# idempotent.
#
#   PODNIC_VM_CACHE       cache directory (default /var/cache/podnic/vm)
#   PODNIC_VM_KERNEL_PKG  kernel package (default: what linux-image-amd64
#                         depends on, e.g. linux-image-6.1.0-56-amd64)
#   PODNIC_VM_MODULES     modules to keep, dependencies added
#                         (default: veth sch_ingress cls_bpf ipvlan dummy
#                         crc32c_generic sctp; crc32c_generic is sctp's
#                         CRC, a soft dependency its modinfo does not name)
#
# Layout: $PODNIC_VM_CACHE/<package>/{vmlinuz,config,modules/*.ko,
# modules/order}, and $PODNIC_VM_CACHE/kernel, a symlink to the one in use.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "setup-vm.sh: must run as root (it installs packages)" >&2
	exit 1
fi

cache=${PODNIC_VM_CACHE:-/var/cache/podnic/vm}
modules=(${PODNIC_VM_MODULES:-veth sch_ingress cls_bpf ipvlan dummy crc32c_generic sctp})
export DEBIAN_FRONTEND=noninteractive

packages=(qemu-system-x86 busybox-static binutils)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=
if ((${#missing[@]})); then
	echo "setup-vm.sh: installing ${missing[*]}"
	apt-get update -qq
	updated=1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pkg=${PODNIC_VM_KERNEL_PKG:-}
if [[ -z $pkg ]]; then
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	if [[ -z $pkg && -z $updated ]]; then
		apt-get update -qq
		pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	fi
	if [[ -z $pkg ]]; then
		echo "setup-vm.sh: cannot find the kernel package linux-image-amd64 depends on" >&2
		exit 1
	fi
fi
case $pkg in
linux-image-6.1.*) ;;
*) echo "setup-vm.sh: warning: $pkg is not a 6.1 kernel; the VM tests expect one without TCX" >&2 ;;
esac

dir=$cache/$pkg
want="${modules[*]}"
if [[ -f $dir/vmlinuz && -f $dir/modules/order && $(cat "$dir/modules/wanted" 2>/dev/null) == "$want" ]]; then
	ln -sfn "$pkg" "$cache/kernel"
	echo "setup-vm.sh: $pkg already in $dir"
	echo "setup-vm.sh: done"
	exit 0
fi

echo "setup-vm.sh: fetching $pkg"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chown _apt "$tmp" 2>/dev/null || true # apt-get download drops to _apt
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
dpkg-deb -x "$tmp"/*.deb "$tmp/x"

kver=${pkg#linux-image-}
moddir=$tmp/x/lib/modules/$kver
if [[ ! -d $moddir ]]; then
	echo "setup-vm.sh: $pkg has no /lib/modules/$kver" >&2
	exit 1
fi

rm -rf "$dir.new"
mkdir -p "$dir.new/modules"
cp "$tmp/x/boot/vmlinuz-$kver" "$dir.new/vmlinuz"
cp "$tmp/x/boot/config-$kver" "$dir.new/config"
echo "$kver" >"$dir.new/release"

# The package has no modules.dep (depmod makes it at install time), so read
# each module's "depends=" from its .modinfo, and write a load order with
# dependencies first. Debian's 6.1 modules are uncompressed
# (CONFIG_MODULE_COMPRESS_NONE), so busybox insmod can load them as they are.
declare -A seen=()
order=()
add_module() {
	local name=$1 f deps d
	[[ -n ${seen[$name]:-} ]] && return
	seen[$name]=1
	if grep -qE "/${name//_/[_-]}\.ko\$" "$moddir/modules.builtin"; then
		return # built in
	fi
	f=$(find "$moddir/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -1)
	if [[ -z $f ]]; then
		echo "setup-vm.sh: module $name not found in $pkg" >&2
		exit 1
	fi
	deps=$(strings "$f" | sed -n 's/^depends=//p' | head -1)
	for d in ${deps//,/ }; do
		add_module "$d"
	done
	cp "$f" "$dir.new/modules/$name.ko"
	order+=("$name")
}
for m in "${modules[@]}"; do
	add_module "$m"
done
printf '%s\n' "${order[@]}" >"$dir.new/modules/order"
echo "$want" >"$dir.new/modules/wanted"

rm -rf "$dir"
mv "$dir.new" "$dir"
ln -sfn "$pkg" "$cache/kernel"
echo "setup-vm.sh: $pkg in $dir ($(du -sh "$dir" | cut -f1)), modules: ${order[*]}"
echo "setup-vm.sh: done"
