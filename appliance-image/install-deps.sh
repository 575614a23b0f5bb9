#!/usr/bin/env bash
# Installs the host packages that only the appliance image build and its boot test need
# (kept out of scripts/install-deps.sh so the rest of the suite stays light). Idempotent.
set -eu

PKGS=(
  debootstrap debian-archive-keyring e2fsprogs dosfstools mtools fdisk
  systemd-boot-efi binutils zstd
  qemu-system-x86 qemu-utils ovmf
  curl python3
)

if [ "$(id -u)" -ne 0 ]; then
	echo "appliance install-deps: must run as root (installs Debian packages)" >&2
	exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "appliance install-deps: all ${#PKGS[@]} packages present"
	exit 0
fi

echo "appliance install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "appliance install-deps: done"
