#!/usr/bin/env bash
# Appliance boot test: boots the built image unchanged (-snapshot) in QEMU (TCG, OVMF, serial
# console to a log, restricted user networking) with a SKCONFIG disk holding a one-node test
# configuration, waits for "skd ready", checks skctl inside the VM (via the sk-selftest hook)
# and GET /api/v1/status through a forwarded loopback port, powers off. TAP output.
#
#   tests/appliance/boot_test.sh [IMAGE]     (root; builds the image when none is given;
#                                            IMAGE may be the .raw or the .qcow2)
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
IMG=${1:-${SK_APPLIANCE_IMAGE:-}}
# The raw image, or the qcow2 copy (build.sh --qcow2): QEMU is told which.
case "$IMG" in
*.qcow2) IMG_FORMAT=qcow2 ;;
*) IMG_FORMAT=raw ;;
esac
BUILD=${SK_BIN_DIR:-$TOP/build}
OUT=${SK_APPLIANCE_OUT:-$BUILD/appliance}
READY_TIMEOUT=${SK_APPLIANCE_READY_TIMEOUT:-300}
REPORT_TIMEOUT=120
POWEROFF_TIMEOUT=90
# Hard cap on the VM's life whatever happens to this script.
QEMU_TIMEOUT=$((READY_TIMEOUT + REPORT_TIMEOUT + POWEROFF_TIMEOUT + 60))
OVMF_CODE=/usr/share/OVMF/OVMF_CODE.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS.fd
MIRROR=${SK_DEBIAN_MIRROR:-http://deb.debian.org/debian}

TMP=""
QEMU_PID=""
n=0
failed=0
PLAN=12

# Only the QEMU this script started (by its pid: the timeout wrapper, which passes it on).
cleanup_vm() {
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$QEMU_PID" 2>/dev/null
		wait "$QEMU_PID" 2>/dev/null
	fi
	QEMU_PID=""
}
cleanup() {
	cleanup_vm
	[ -z "$TMP" ] || rm -rf "$TMP"
}
trap cleanup EXIT

skip_all() { echo "1..0 # SKIP $*"; exit 0; }
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "#   $l"; done; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
diag() { echo "# $*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

[ "$(id -u)" -eq 0 ] || skip_all "needs root (image build: debootstrap, chroot)"

# ---- host tools (installed here: CI starts from a clean Debian 12) ----
if ! "$TOP/appliance-image/install-deps.sh" >"${TMPDIR:-/tmp}/sk-appliance-deps.$$.log" 2>&1; then
	reason=$(tail -n 1 "${TMPDIR:-/tmp}/sk-appliance-deps.$$.log")
	rm -f "${TMPDIR:-/tmp}/sk-appliance-deps.$$.log"
	skip_all "cannot install the image build/boot packages (no Debian mirror?): $reason"
fi
rm -f "${TMPDIR:-/tmp}/sk-appliance-deps.$$.log"
for f in "$OVMF_CODE" "$OVMF_VARS"; do
	[ -f "$f" ] || skip_all "OVMF firmware $f missing after installing ovmf"
done
command -v qemu-system-x86_64 >/dev/null || skip_all "qemu-system-x86_64 missing after installing qemu-system-x86"

TMP=$(mktemp -d /tmp/sk-appliance-test.XXXXXX)
echo "1..$PLAN"

# ---- 1: the image ----
build_s=""
if [ -z "$IMG" ]; then
	if ! ls "$OUT"/cache/base-*.tar.zst >/dev/null 2>&1 &&
		! curl -sf --max-time 20 -o /dev/null "$MIRROR/dists/bookworm/Release"; then
		echo "1..0 # SKIP Debian mirror $MIRROR not reachable and no cached base: cannot build the image"
		exit 0
	fi
	t=$(date +%s)
	if "$TOP/appliance-image/build.sh" --build-dir "$BUILD" --out "$OUT" >"$TMP/build.log" 2>&1; then
		build_s=$(($(date +%s) - t))
		IMG=$OUT/sk-appliance.raw
		ok "image built ($IMG)"
	else
		not_ok "image build failed" "$(tail -n 15 "$TMP/build.log" | tr '\n' '|')"
		sed 's/^/#   build: /' "$TMP/build.log" | tail -n 40
		echo "# appliance: 1 failed; remaining checks not run"
		exit 1
	fi
else
	[ -f "$IMG" ] && ok "image given ($IMG)" || { not_ok "image $IMG does not exist"; exit 1; }
fi
raw_bytes=$(stat -c %s "$IMG")
alloc_bytes=$(($(stat -c %b "$IMG") * $(stat -c %B "$IMG")))
if [ -f "$IMG.zst" ] && [ "$IMG.zst" -nt "$IMG" ]; then
	zst_bytes=$(stat -c %s "$IMG.zst")
else
	zst_bytes=$(zstd -q -T2 -10 -c "$IMG" | wc -c)
fi

# ---- the test configuration, on its own SKCONFIG disk ----
# One node: its address is the one QEMU's DHCP hands out on the 198.18.0.0/24 user network.
mkdir -p "$TMP/cfg"
cat >"$TMP/cfg/cluster.json" <<'EOF'
// SK appliance boot test: one node on QEMU's restricted user network.
{
  "cluster": "appliance-test",
  "key_file": "/etc/sk/cluster.key",
  "networks": [ "lan" ],
  "nodes": [ { "name": "n1", "id": 1, "addresses": { "lan": "198.18.0.15" } } ],
  "http": { "listen": "0.0.0.0" }
}
EOF
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/cfg/cluster.key"
echo n1 >"$TMP/cfg/node"
if command -v ssh-keygen >/dev/null; then
	ssh-keygen -q -t ed25519 -N '' -C sk-boot-test -f "$TMP/id_test" && cp "$TMP/id_test.pub" "$TMP/cfg/authorized_keys"
else
	echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBt9dXWj3WJ1L8Yv3k0o9p7cQ1Qyq0m8c1l0s5c2k7Zf sk-boot-test" >"$TMP/cfg/authorized_keys"
fi
echo "run the checks and report on the console" >"$TMP/cfg/selftest"
# config_disk IMG DIR: a small FAT disk labelled SKCONFIG holding DIR's files in /sk.
config_disk() {
	mkfs.vfat -C -n SKCONFIG "$1" 8192 >/dev/null
	mmd -i "$1" ::/sk
	mcopy -i "$1" "$2"/* ::/sk/
}
config_disk "$TMP/config.img" "$TMP/cfg"
# The bare image's check: only the selftest marker, no configuration at all.
mkdir -p "$TMP/bare"
cp "$TMP/cfg/selftest" "$TMP/bare/"
config_disk "$TMP/bare.img" "$TMP/bare"

# vm_start CONFIG_IMG NAME: boots the image unchanged (snapshot=on) with CONFIG_IMG as a
# second disk; sets QEMU_PID, LOG, PORT, t_boot.
vm_start() {
	PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	cp "$OVMF_VARS" "$TMP/vars.fd"
	LOG=$TMP/serial-$2.log
	: >"$LOG"
	rm -f "$TMP/monitor.sock"
	# restrict=on: the guest reaches nothing outside QEMU; only the forwarded port comes in.
	timeout --kill-after=10 "$QEMU_TIMEOUT" qemu-system-x86_64 \
		-accel tcg -machine q35 -m 1024 -smp 1 -no-reboot \
		-drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
		-drive if=pflash,format=raw,unit=1,file="$TMP/vars.fd" \
		-drive if=virtio,format="$IMG_FORMAT",file="$IMG",snapshot=on \
		-drive if=virtio,format=raw,file="$1" \
		-netdev "user,id=n0,net=198.18.0.0/24,host=198.18.0.2,dhcpstart=198.18.0.15,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:7480" \
		-device virtio-net-pci,netdev=n0 \
		-display none -serial "file:$LOG" \
		-monitor "unix:$TMP/monitor.sock,server=on,wait=off" \
		>"$TMP/qemu.log" 2>&1 &
	QEMU_PID=$!
	t_boot=$(date +%s.%N)
}

# wait_log PATTERN SECONDS: 0 when the serial log matches, 1 on timeout, 2 if QEMU exited.
wait_log() {
	local deadline=$(($(date +%s) + $2))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		grep -aq -- "$1" "$LOG" && return 0
		kill -0 "$QEMU_PID" 2>/dev/null || { grep -aq -- "$1" "$LOG" && return 0; return 2; }
		sleep 0.5
	done
	return 1
}
monitor() { python3 - "$TMP/monitor.sock" "$1" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
time.sleep(0.5)
s.close()
EOF
}
serial_tail() { tr -d '\r' <"$LOG" | tail -n "${1:-25}" | sed 's/^/#   console: /'; }
# vm_poweroff DESC: ACPI power button, bounded wait for QEMU to exit; one TAP line.
vm_poweroff() {
	if ! kill -0 "$QEMU_PID" 2>/dev/null; then
		not_ok "$1" "expected: QEMU running until asked to power off" "got: it had already exited"
		QEMU_PID=""
		return
	fi
	monitor system_powerdown >/dev/null 2>&1
	local deadline=$(($(date +%s) + POWEROFF_TIMEOUT)) qrc
	while kill -0 "$QEMU_PID" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
	if kill -0 "$QEMU_PID" 2>/dev/null; then
		not_ok "$1" "expected: QEMU exits within $POWEROFF_TIMEOUT s" "got: still running"
		serial_tail 15
		cleanup_vm
		return
	fi
	wait "$QEMU_PID"
	qrc=$?
	QEMU_PID=""
	if [ "$qrc" -eq 0 ]; then
		ok "$1"
	else
		not_ok "$1" "expected: QEMU exit 0" "got: $qrc ($(tr '\n' ' ' <"$TMP/qemu.log"))"
	fi
}
# read_report: the sk-selftest lines of the current boot, into $TMP/report.txt.
read_report() { tr -d '\r' <"$LOG" | sed -n 's/^.*SKT| //p' >"$TMP/report.txt"; }

vm_start "$TMP/config.img" configured

# ---- 2: skd ready ----
wait_log 'skd ready' "$READY_TIMEOUT"
rc=$?
ready_s=$(awk -v a="$t_boot" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$rc" -eq 0 ]; then
	ok "skd ready after ${ready_s} s ($(grep -a -m1 -o 'skd ready.*' "$LOG" | tr -d '\r'))"
else
	case $rc in 1) why="no 'skd ready' on the console within $READY_TIMEOUT s" ;;
	*) why="QEMU exited before 'skd ready' ($(tr '\n' ' ' <"$TMP/qemu.log"))" ;; esac
	not_ok "skd ready" "expected: 'skd ready' on the serial console" "got: $why"
	serial_tail 40
fi

# ---- the in-VM report (sk-selftest.service, after skd is ready) ----
wait_log 'SKT| === END' "$REPORT_TIMEOUT"
report_rc=$?
read_report
# section NAME: the output lines of one check; its rc in the global $sec_rc.
section() {
	awk -v name="$1" '
		index($0, "--- " name " rc=") == 1 { on = 1; next }
		/^--- / || /^=== / { on = 0 }
		on' "$TMP/report.txt"
}
section_rc() { grep -a -m1 "^--- $1 rc=" "$TMP/report.txt" | sed 's/.* rc=//'; }

if [ "$report_rc" -ne 0 ]; then
	for d in "skctl status inside the VM" "skctl status --json inside the VM" \
		"bpffs, FUSE, root locked" "only skd and sshd listen" "sshd enabled by authorized_keys"; do
		not_ok "$d" "expected: the sk-selftest report on the console" "got: no '=== END' within $REPORT_TIMEOUT s"
	done
	serial_tail 40
else
	# ---- 3: skctl status ----
	got=$(section "skctl status")
	if [ "$(section_rc "skctl status")" = 0 ] && grep -q '^node n1 (id 1) of cluster appliance-test' <<<"$got"; then
		ok "skctl status inside the VM: $(head -n1 <<<"$got")"
	else
		not_ok "skctl status inside the VM" "expected: rc=0 and 'node n1 (id 1) of cluster appliance-test'" \
			"got: rc=$(section_rc "skctl status") $(tr '\n' '|' <<<"$got")"
	fi
	# ---- 4: skctl status --json ----
	json=$(section "skctl status --json")
	summary=$(python3 -c 'import json, sys; d = json.loads(sys.stdin.read()); print(d["schema"], d["node"]["name"], d["cluster"])' <<<"$json" 2>&1)
	if [ "$summary" = "sk.status/1 n1 appliance-test" ]; then
		ok "skctl status --json inside the VM: schema sk.status/1, node n1"
	else
		not_ok "skctl status --json inside the VM" "expected: sk.status/1 n1 appliance-test" "got: $summary"
	fi
	# ---- 5: kernel facilities and no password ----
	bpffs=$(section bpffs); fuse=$(section fuse); pw=$(section "root password")
	if [ "$bpffs" = bpf ] && [ "$fuse" = "character special file" ] && [ "$(awk '{print $2}' <<<"$pw")" = L ]; then
		ok "bpffs at /sys/fs/bpf, /dev/fuse present, root password locked"
	else
		not_ok "bpffs, FUSE, root locked" "expected: bpf | character special file | root L" \
			"got: $bpffs | $fuse | $pw"
	fi
	# ---- 6: listeners ----
	# Every listening socket must belong to skd or (keys were given) sshd; networkd's DHCP
	# client socket (udp 68, or 546 for DHCPv6) only receives lease replies.
	listeners=$(section "listener processes")
	others=$(grep -v -e 'users:(("skd"' -e 'users:(("sshd"' <<<"$listeners" |
		grep -v -E '^udp .*:(68|546) .*users:\(\("systemd-network"' | grep -v '^$' || true)
	if [ -z "$others" ] && [ -n "$listeners" ]; then
		ok "only skd and sshd listen ($(awk '{print $1 " " $5}' <<<"$listeners" | sort -u | tr '\n' ',' | sed 's/,$//'))"
	else
		not_ok "only skd and sshd listen" "expected: no listener but skd's and sshd's" \
			"got: $(tr '\n' '|' <<<"${others:-no listeners at all}")"
	fi
	# ---- 8 (checked here, numbered after HTTP below) ----
fi

# ---- 7: HTTP status through the forwarded loopback port ----
if [ "$report_rc" -eq 0 ] && ! section "listeners" | awk '{print $5}' | grep -q ':7480$'; then
	skip "GET /api/v1/status through 127.0.0.1:$PORT" "HTTP endpoint not available in this build (skd listens on no port 7480 in the VM)"
else
	body=$(curl -s --max-time 20 "http://127.0.0.1:$PORT/api/v1/status" 2>&1)
	hsum=$(python3 -c 'import json, sys; d = json.loads(sys.stdin.read()); print(d["schema"], d["node"]["name"])' <<<"$body" 2>&1)
	if [ "$hsum" = "sk.status/1 n1" ]; then
		ok "GET /api/v1/status through 127.0.0.1:$PORT: schema sk.status/1, node n1"
	else
		not_ok "GET /api/v1/status through 127.0.0.1:$PORT" "expected: a status document for n1" \
			"got: $(head -c 300 <<<"$body")"
	fi
fi

if [ "$report_rc" -eq 0 ]; then
	# ---- 8: sshd only because keys were given ----
	ssh_active=$(section "ssh active"); ak=$(section "authorized_keys")
	if [ "$ssh_active" = active ] && [ "$ak" = 600 ]; then
		ok "sshd enabled by authorized_keys (installed 0600)"
	else
		not_ok "sshd enabled by authorized_keys" "expected: active, 600" "got: $ssh_active, $ak"
	fi
fi

# ---- 9: clean poweroff (ACPI power button) ----
vm_poweroff "guest powered off on the ACPI power button"
mkdir -p "$OUT" && cp "$LOG" "$OUT/last-boot-serial.log" && diag "serial console log: $OUT/last-boot-serial.log"

# ---- 10-11: the bare image, no configuration: skd and sshd stay off, nothing listens ----
vm_start "$TMP/bare.img" bare
if wait_log 'SKT| === END' "$READY_TIMEOUT"; then
	read_report
	skd_state="$(section "skd active") / $(section "ssh active")"
	if [ "$skd_state" = "inactive / inactive" ]; then
		ok "bare image: skd and sshd not running without a configuration"
	else
		not_ok "bare image: skd and sshd not running without a configuration" \
			"expected: inactive / inactive" "got: $skd_state"
	fi
	listeners=$(section "listener processes")
	others=$(grep -v -E '^udp .*:(68|546) .*users:\(\("systemd-network"' <<<"$listeners" | grep -v '^$' || true)
	if [ -z "$others" ]; then
		ok "bare image: nothing listens (DHCP client only)"
	else
		not_ok "bare image: nothing listens (DHCP client only)" "expected: no listener" \
			"got: $(tr '\n' '|' <<<"$others")"
	fi
else
	for d in "bare image: skd and sshd not running without a configuration" "bare image: nothing listens (DHCP client only)"; do
		not_ok "$d" "expected: the sk-selftest report on the console" "got: none within $READY_TIMEOUT s"
	done
	serial_tail 30
fi
vm_poweroff "bare image powered off on the ACPI power button"
cp "$LOG" "$OUT/last-boot-bare-serial.log"

diag "image $IMG_FORMAT size: $(mib "$raw_bytes") ($(mib "$alloc_bytes") allocated), zstd -10: $(mib "$zst_bytes")"
[ -z "$build_s" ] || diag "image build time: ${build_s} s"
diag "boot to 'skd ready' (QEMU start, TCG): ${ready_s} s"
[ "$n" -eq "$PLAN" ] || { echo "# plan was $PLAN, ran $n"; failed=$((failed + 1)); }
[ "$failed" -eq 0 ]
