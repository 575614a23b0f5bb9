#!/usr/bin/env bash
# Installs every build, test and demo dependency of SK from Debian packages.
# Idempotent: safe to run again; installs only what is missing.
set -eu

PKGS=(
  # build
  meson ninja-build pkg-config g++ clang llvm bpftool libbpf-dev
  liburing-dev libfmt-dev nlohmann-json3-dev libcli11-dev doctest-dev
  libfuse3-dev libmnl-dev libssl-dev libxxhash-dev libarchive-dev
  # run and test
  fuse3 iproute2 nftables iputils-ping jq python3 procps psmisc util-linux
  socat curl
  # HTTP API (header-only cpp-httplib), metrics parse test, console browser test
  libcpp-httplib-dev python3-prometheus-client chromium chromium-driver python3-selenium
  # application modules, tested with the real applications (tests/integration/test_apps.sh)
  postgresql python3-psycopg2 mariadb-server python3-pymysql nginx wrk podman busybox-static
  # benchmarks (tests/bench/replication)
  fio lsyncd rsync iperf3
)

# The application packages start their system-wide services; SK's tests and modules run
# their own instances, so the Debian ones are stopped and disabled after installing.
stop_app_services() {
  local s
  for s in postgresql mariadb nginx; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    else
      service "$s" stop >/dev/null 2>&1 || true
    fi
  done
}

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
stop_app_services
echo "install-deps: done"
