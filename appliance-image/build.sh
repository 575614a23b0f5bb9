#!/usr/bin/env bash
# Builds the SK appliance: a UEFI-bootable GPT raw disk image (optionally qcow2) holding
# Debian 12 minbase, skd/skctl from this tree's meson build, and the units in rootfs/.
# No loop devices and no mounts of the image: ext4 from a folder (mkfs.ext4 -d), the ESP
# with mkfs.vfat -C + mtools, partitions written into an sfdisk-made GPT with dd.
#
#   appliance-image/build.sh [--build-dir DIR] [--out DIR] [--qcow2] [--no-compress]
#
# Output (never committed): OUT/sk-appliance.raw (+ .raw.zst, + .qcow2), OUT/build-info.txt.
# The provisioned Debian base is cached in OUT/cache/ keyed by its package list.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
BUILD=${SK_BUILD_DIR:-$TOP/build}
OUT=${SK_APPLIANCE_OUT:-$HERE/out}
QCOW2=0
COMPRESS=1
MIRROR=${SK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SK_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm

while [ $# -gt 0 ]; do
	case $1 in
	--build-dir) BUILD=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--qcow2) QCOW2=1; shift ;;
	--no-compress) COMPRESS=0; shift ;;
	-h | --help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done

# The boot chain, the libraries skd/skctl are expected to need (the ones they link are
# added from ldd below), and the few tools the units use. openssh-server stays disabled
# unless keys are configured.
IMAGE_PKGS=(
	systemd-sysv udev dbus kmod initramfs-tools linux-image-cloud-amd64
	libbpf1 liburing2 libfmt9 libfuse3-3 fuse3 libmnl0 libssl3 libxxhash0
	iproute2 openssh-server
)
# Fixed GPT identities: the kernel command line names the root by PARTUUID, and the
# type GUIDs follow the discoverable-partitions spec (ESP, x86-64 root).
ROOT_PARTUUID=5b1c0e2a-8d3f-4a57-9c61-5e0e1f2a7b01
ESP_PARTUUID=5b1c0e2a-8d3f-4a57-9c61-5e0e1f2a7b00
ESP_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
CMDLINE="root=PARTUUID=$ROOT_PARTUUID rw console=tty0 console=ttyS0,115200n8"

log() { echo "appliance: [$(($(date +%s) - t0)) s] $*"; }
die() { echo "appliance: error: $*" >&2; exit 1; }

t0=$(date +%s)
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, file ownership in mkfs -d)"
"$HERE/install-deps.sh"

# ---- skd and skctl from this tree ----
if [ ! -f "$BUILD/build.ninja" ]; then
	log "configuring meson in $BUILD"
	meson setup "$BUILD" "$TOP" >/dev/null
fi
ninja -C "$BUILD" -j 2 userspace/skd cli/skctl >/dev/null
SKD_BIN=$BUILD/userspace/skd
SKCTL_BIN=$BUILD/cli/skctl
[ -x "$SKD_BIN" ] && [ -x "$SKCTL_BIN" ] || die "skd/skctl not built in $BUILD"

# The Debian packages of every shared library skd and skctl link, so a library another
# area adds reaches the image without editing this list (the base cache key follows).
lib_pkgs=()
while read -r lib; do
	owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
		dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null) ||
		die "no Debian package owns $lib (linked by skd or skctl)"
	lib_pkgs+=("${owner%%:*}")
done < <(ldd "$SKD_BIN" "$SKCTL_BIN" | awk '/=> \//{print $3}' | sort -u)
mapfile -t IMAGE_PKGS < <(printf '%s\n' "${IMAGE_PKGS[@]}" "${lib_pkgs[@]}" | sort -u)

mkdir -p "$OUT/cache"
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs

# ---- Debian base, provisioned once per package list ----
base_key=$(printf '%s\n' "$SUITE" "$MIRROR" "${IMAGE_PKGS[@]}" "base-v2" | sha256sum | cut -c1-16)
BASE_TAR=$OUT/cache/base-$base_key.tar.zst

# chroot_run CMD...: runs in ROOTFS with /proc, /sys and /dev present, inside a private
# mount namespace so nothing stays mounted on the host even if the build dies.
chroot_run() {
	unshare --mount --propagation private bash -c '
		set -e
		r=$1; shift
		mount -t proc proc "$r/proc"
		mount -t sysfs sys "$r/sys"
		mount --bind /dev "$r/dev"
		mount -t devpts devpts "$r/dev/pts" -o newinstance,ptmxmode=0666 2>/dev/null || true
		mount -t tmpfs tmpfs "$r/run"
		exec chroot "$r" "$@"' chroot_run "$ROOTFS" "$@"
}

if [ ! -f "$BASE_TAR" ]; then
	log "provisioning the Debian base (cached as $(basename "$BASE_TAR"))"
	tb=$(date +%s)
	debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
	# An appliance carries no documentation, manuals or translations; dpkg keeps them out
	# of later installs too.
	cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-sk-appliance" <<EOF
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
	find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
	rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/*
	find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
	cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
	cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
	# No daemon may start inside the build chroot.
	printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
	chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
	chroot_run /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -c "
		apt-get update -qq &&
		apt-get -y -qq -o Dpkg::Use-Pty=0 full-upgrade &&
		apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends ${IMAGE_PKGS[*]} &&
		apt-get clean" >"$WORK/apt.log" 2>&1 ||
		{ tail -n 30 "$WORK/apt.log" >&2; die "package installation in the image failed (log above)"; }
	rm -f "$ROOTFS/usr/sbin/policy-rc.d" "$ROOTFS/etc/resolv.conf"
	rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
	tar --numeric-owner --xattrs --acls -C "$ROOTFS" -cf - . | zstd -q -T2 -3 -o "$BASE_TAR.tmp"
	mv "$BASE_TAR.tmp" "$BASE_TAR"
	# Older bases (other package lists) are dead weight now.
	find "$OUT/cache" -name 'base-*.tar.zst' ! -name "$(basename "$BASE_TAR")" -delete
	log "base provisioned in $(($(date +%s) - tb)) s"
	rm -rf "$ROOTFS"
fi
mkdir -p "$ROOTFS"
zstd -q -d -c "$BASE_TAR" | tar --numeric-owner --xattrs --acls -C "$ROOTFS" -xf -

# ---- SK files ----
log "installing skd, skctl and the overlay"
# Whatever the meson build installs (binaries, schemas, templates, the web console), at
# the paths compiled into skd; /usr/sbin/skd and /usr/bin/skctl always name them.
meson install -C "$BUILD" --no-rebuild --strip --destdir "$ROOTFS" >"$WORK/meson-install.log" 2>&1 ||
	{ tail -n 20 "$WORK/meson-install.log" >&2; die "meson install into the image failed"; }
skd_path=$(cd "$ROOTFS" && find usr -path '*/sbin/skd' -type f | head -n1)
skctl_path=$(cd "$ROOTFS" && find usr -path '*/bin/skctl' -type f | head -n1)
[ -n "$skd_path" ] && [ -n "$skctl_path" ] || die "meson install put no skd/skctl under /usr"
[ "$skd_path" = usr/sbin/skd ] || ln -sfn "/$skd_path" "$ROOTFS/usr/sbin/skd"
[ "$skctl_path" = usr/bin/skctl ] || ln -sfn "/$skctl_path" "$ROOTFS/usr/bin/skctl"
install -D -m 0644 "$HERE/README.md" "$ROOTFS/usr/share/doc/sk/README.appliance"
# Overlay: units, first-boot and readiness scripts, network and sshd settings. Modes are
# set here rather than trusted from the checkout.
(cd "$HERE/rootfs" && find . -type f) | while read -r f; do
	mode=0644
	case $f in ./usr/lib/sk/*) mode=0755 ;; esac
	install -D -m "$mode" "$HERE/rootfs/$f" "$ROOTFS/$f"
done

# Every library skd and skctl link must resolve inside the image.
missing=$(chroot "$ROOTFS" ldd /usr/sbin/skd /usr/bin/skctl | grep 'not found' || true)
[ -z "$missing" ] || die "libraries missing in the image: $missing"
chroot "$ROOTFS" /usr/sbin/skd --version >/dev/null || die "skd does not run inside the image"

# ---- system configuration ----
log "configuring the system"
echo sk-appliance >"$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsk-appliance\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
	>"$ROOTFS/etc/hosts"
printf 'PARTUUID=%s / ext4 errors=remount-ro 0 1\n' "$ROOT_PARTUUID" >"$ROOTFS/etc/fstab"
# Empty machine-id: each instance makes its own on first boot (and systemd applies presets).
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
# No password anywhere: root is locked; admin access is an SSH key from the config partition.
chroot "$ROOTFS" passwd -l root >/dev/null
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
chroot "$ROOTFS" systemctl enable sk-firstboot.service skd.service sk-selftest.service \
	systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1
# sshd is enabled but conditional on root's authorized_keys (drop-in); never socket-activated.
chroot "$ROOTFS" systemctl enable ssh.service >/dev/null 2>&1
chroot "$ROOTFS" systemctl disable ssh.socket >/dev/null 2>&1 || true
chroot "$ROOTFS" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
[ ! -e "$ROOTFS/root/.ssh/authorized_keys" ] || die "the image must not carry root's authorized_keys"
git_rev=$(git -C "$TOP" rev-parse --short HEAD 2>/dev/null || echo unknown)
cat >"$ROOTFS/etc/sk-appliance-release" <<EOF
SK_VERSION=$("$SKD_BIN" --version | awk '{print $2}')
SK_GIT=$git_rev
BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF

# ---- ESP: systemd-boot, kernel, initrd, loader entry, /sk config folder ----
log "making the ESP"
kver=$(basename "$(ls -d "$ROOTFS"/lib/modules/* | sort -V | tail -n1)")
KERNEL=$ROOTFS/boot/vmlinuz-$kver
INITRD=$ROOTFS/boot/initrd.img-$kver
[ -f "$KERNEL" ] && [ -f "$INITRD" ] || die "kernel or initrd for $kver missing in the image"
SDBOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
mib() { echo $((($(stat -c %s "$1") + 1048575) / 1048576)); }
ESP_MIB=$(($(mib "$KERNEL") + $(mib "$INITRD") + 24))
[ "$ESP_MIB" -ge 64 ] || ESP_MIB=64
ESP=$WORK/esp.img
mkfs.vfat -C -F 32 -n SKESP "$ESP" $((ESP_MIB * 1024)) >/dev/null
mmd -i "$ESP" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/sk
mcopy -i "$ESP" "$SDBOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$ESP" "$SDBOOT" ::/EFI/systemd/systemd-bootx64.efi
mcopy -i "$ESP" "$KERNEL" ::/vmlinuz
mcopy -i "$ESP" "$INITRD" ::/initrd.img
printf 'default sk.conf\ntimeout 0\nconsole-mode keep\neditor no\n' >"$WORK/loader.conf"
printf 'title SK appliance (%s)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
	"$kver" "$CMDLINE" >"$WORK/sk.conf"
cat >"$WORK/README.txt" <<'EOF'
SK appliance configuration folder. Put here (or on a FAT/ext4 file system labelled
SKCONFIG, which wins) and boot: cluster.json (its key_file must be /etc/sk/cluster.key),
cluster.key, modules/<name>/module.json, node (this node's name), authorized_keys (root
SSH keys; sshd runs only when this file is present). Applied at every boot.
EOF
mcopy -i "$ESP" "$WORK/loader.conf" ::/loader/loader.conf
mcopy -i "$ESP" "$WORK/sk.conf" ::/loader/entries/sk.conf
mcopy -i "$ESP" "$WORK/README.txt" ::/sk/README.txt

# ---- root file system from the folder ----
log "making the root file system"
root_used=$(du -sm --apparent-size "$ROOTFS" | cut -f1)
ROOT_MIB=$((root_used * 5 / 4 + 256))
ROOTIMG=$WORK/root.img
mkfs.ext4 -q -F -L sk-root -d "$ROOTFS" -E root_owner=0:0 "$ROOTIMG" "${ROOT_MIB}M"

# ---- GPT disk ----
log "assembling the disk"
IMG=$OUT/sk-appliance.raw
rm -f "$IMG" "$IMG.zst" "$OUT/sk-appliance.qcow2"
TOTAL_MIB=$((1 + ESP_MIB + ROOT_MIB + 1))
truncate -s "${TOTAL_MIB}M" "$IMG.tmp"
sfdisk -q "$IMG.tmp" <<EOF
label: gpt
unit: sectors
start=2048, size=$((ESP_MIB * 2048)), type=$ESP_TYPE, uuid=$ESP_PARTUUID, name=sk-esp
start=$(((1 + ESP_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=$ROOT_TYPE, uuid=$ROOT_PARTUUID, name=sk-root
EOF
dd if="$ESP" of="$IMG.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$ROOTIMG" of="$IMG.tmp" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc,sparse status=none
mv "$IMG.tmp" "$IMG"

log "disk assembled"
if [ "$QCOW2" -eq 1 ]; then
	qemu-img convert -f raw -O qcow2 -c "$IMG" "$OUT/sk-appliance.qcow2"
fi
zsize=""
if [ "$COMPRESS" -eq 1 ]; then
	zstd -q -T2 -10 -f "$IMG" -o "$IMG.zst"
	zsize=$(stat -c %s "$IMG.zst")
fi
build_s=$(($(date +%s) - t0))
{
	echo "image=$IMG"
	echo "kernel=$kver"
	echo "raw_bytes=$(stat -c %s "$IMG")"
	echo "raw_allocated_bytes=$(($(stat -c %b "$IMG") * $(stat -c %B "$IMG")))"
	[ -z "$zsize" ] || echo "zst_bytes=$zsize"
	[ "$QCOW2" -eq 0 ] || echo "qcow2_bytes=$(stat -c %s "$OUT/sk-appliance.qcow2")"
	echo "root_mib=$ROOT_MIB esp_mib=$ESP_MIB"
	echo "build_seconds=$build_s"
} >"$OUT/build-info.txt"
log "built $IMG in $build_s s:"
sed 's/^/  /' "$OUT/build-info.txt"
