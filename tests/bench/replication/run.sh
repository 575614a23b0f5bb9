#!/usr/bin/env bash
# End-to-end replication benchmark: two real skd nodes in network namespaces (the
# integration rig), SK sync replication (ack=durable, ack=applied, durable over TLS) against the
# bare directory and lsyncd (asynchronous, rsync daemon in the peer namespace, no
# ssh), all in one run, with ratios (the machines are noisy, absolute numbers drift).
#
# Usage (root): tests/bench/replication/run.sh BUILD_DIR [--quick] [--out FILE]
#                 [--tree-mb N] [--loss-rounds N] [--sections "S ..."]
#                 [--systems "S ..."]
#   BUILD_DIR   a configured build dir; skd and skctl are built in it if missing
#   --quick     small sizes (2-3 minutes): 256 MiB sequential, 1000 fsyncs,
#               500 small files, 2 crash rounds per system, 300 MiB resync tree
#               (default: 1 GiB, 5000 fsyncs, 3000 files, 5 rounds, 4 GiB tree)
#   --out FILE  JSON result (default BUILD_DIR/bench/replication.json); the table
#               goes to stdout, progress to stderr; on failure the skd and module
#               logs are copied to DIR(FILE)/replication-logs/
#   --tree-mb N size of the resync tree
#   --loss-rounds N  crash rounds per system
#   --sections  subset, in order, of: link sk lsyncd loss-lsyncd loss-sk resync
#   --systems   subset of the sk section's systems: sk-durable sk-applied sk-tls
# Needs: fio lsyncd rsync iperf3 (installed here when missing), socat jq python3.
#
# What it measures (data under /var/tmp, the real disk, never tmpfs):
#  link    iperf3 TCP throughput n1 -> n2 and ping RTT median between the namespaces;
#          the disk's own sequential write speed (fio, 1 MiB O_DIRECT writes)
#  bare    every workload below also runs on a bare directory of the same disk, for
#          each system: right before it (seq) or interleaved with it in chunks of
#          50 ops by one process (lat, small), so ratios compare runs under the same load
#  seq     fio: 1 MiB writes, fsync at the end (--end_fsync=1); bare = local disk
#  lat     4 KiB append + fsync, per-op latency (workload.py: fio reports write and
#          fsync latencies only as separate distributions, and cannot interleave)
#  small   create + write 4 KiB + fsync + close per file
#  loss    a writer appends fsync'ed records and logs each acknowledged one; the
#          primary gets a power cut (link down + SIGKILL) while it writes; count the
#          acknowledged records missing on the peer
#  resync  tree on /var/tmp, peer down, 1% changed (random 4 KiB blocks, a few new and
#          deleted files), peer back: time to SECOND/in-sync and bytes sent, vs
#          rsync -a --inplace --delete of the same change between the namespaces
# Both nodes share this machine's disk and CPUs: SK's primary and replica write the
# same disk, so the table also shows the shared-disk bound (disk / 2).
set -eu

usage() { sed -n '7,21p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD=$(cd "$1" && pwd) || usage
shift
QUICK=0
OUT=""
TREE_MB=""
LOSS_ROUNDS=""
SECTIONS="link sk lsyncd loss-lsyncd loss-sk resync"
SK_SYSTEMS="sk-durable sk-applied sk-tls"
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1 ;;
	--out) OUT=$2; shift ;;
	--tree-mb) TREE_MB=$2; shift ;;
	--loss-rounds) LOSS_ROUNDS=$2; shift ;;
	--sections) SECTIONS=$2; shift ;;
	--systems) SK_SYSTEMS=$2; shift ;;
	*) usage ;;
	esac
	shift
done
if [ "$QUICK" = 1 ]; then
	SEQ_MB=256 LAT_OPS=1000 SMALL_FILES=500 TREE_MB=${TREE_MB:-300} LOSS_ROUNDS=${LOSS_ROUNDS:-2}
else
	SEQ_MB=1024 LAT_OPS=5000 SMALL_FILES=3000 TREE_MB=${TREE_MB:-4096} LOSS_ROUNDS=${LOSS_ROUNDS:-5}
fi
OUT=${OUT:-$BUILD/bench/replication.json}
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")

[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (namespaces, FUSE)" >&2; exit 2; }
# Benchmark-only tools (Debian packages of the same names), installed when missing
# like tests/bench/failover installs keepalived.
missing=()
for tool in fio lsyncd rsync iperf3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
	echo "run.sh: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in fio lsyncd rsync iperf3 socat jq python3 ping nsenter; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool missing (scripts/install-deps.sh)" >&2; exit 2; }
done

HERE=$(cd "$(dirname "$0")" && pwd)
WL="python3 $HERE/workload.py"
[ -x "$BUILD/userspace/skd" ] && [ -x "$BUILD/cli/skctl" ] || nice ninja -C "$BUILD" userspace/skd cli/skctl >/dev/null
export SK_BIN_DIR=$BUILD
. "$HERE/../../integration/lib/rig.sh"
. "$HERE/../../integration/lib/mirror.sh"

BD=$(mktemp -d /var/tmp/sk-replbench.XXXXXX)	# data: the real disk
# Peak use: 5 copies of the resync tree (SK x2, rsync source and 2 targets), or the
# kept sequential files (9 runs), plus a margin.
need=$((TREE_MB * 5 > SEQ_MB * 9 ? TREE_MB * 5 : SEQ_MB * 9))
avail=$(($(df --output=avail -k "$BD" | tail -1) / 1024))
if [ "$avail" -lt $((need + 2048)) ]; then
	echo "run.sh: $avail MiB free under /var/tmp, need $((need + 2048)) (use --tree-mb)" >&2
	rmdir "$BD"
	exit 2
fi
RES=$BD/results.jsonl
: >"$RES"
N2IP=$(rig_node_ip 2)
MOD=web

since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
# result JSON-OBJECT: one measurement line
result() { printf '%s\n' "$1" >>"$RES"; }

cleanup() {
	local rc=$? pid what n logs
	set +e
	if [ -n "$RIG_DIR" ] && [ -f "$RIG_PIDS_FILE" ]; then
		while read -r pid what; do kill -KILL "$pid" 2>/dev/null; done <"$RIG_PIDS_FILE"
	fi
	if [ "$rc" != 0 ] && [ -n "$RIG_DIR" ]; then
		logs=$(dirname "$OUT")/replication-logs
		rm -rf "$logs"
		mkdir -p "$logs"
		for n in n1 n2; do
			cp "$RIG_DIR/$n/skd.log" "$logs/$n-skd.log" 2>/dev/null
			cp "$RIG_DIR/$n/log/$MOD.log" "$logs/$n-$MOD.log" 2>/dev/null
		done
		cp "$BD"/*.log "$BD"/*.out "$logs/" 2>/dev/null
		echo "run.sh: failed (exit $rc); logs in $logs" >&2
	fi
	rig_teardown || rc=1
	# FUSE over-mounts live in skd's mount namespaces (gone with skd); check anyway.
	if awk -v d="$BD" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
		echo "run.sh: mounts left under $BD" >&2
		rc=1
	fi
	rm -rf "$BD"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bg NAME NODE|- cmd...: a background process (in NODE's namespace unless -),
# recorded for teardown; BG_PID is the command itself (exec'd, no subshell).
bg() {
	local name=$1 node=$2; shift 2
	if [ "$node" = - ]; then
		"$@" &
	else
		ip netns exec "$(rig_ns "$node")" "$@" &
	fi
	BG_PID=$!
	echo "$BG_PID $name" >>"$RIG_PIDS_FILE"
}

# ---------------------------------------------------------------- rig
rig_setup 2 0
rig_write_cluster
rig_write_mirror_module "$MOD"
for n in n1 n2; do cp "$RIG_DIR/$n/modules/$MOD/module.json" "$RIG_DIR/$n/module.json.orig"; done

# sk_config ACK [BLOCK_SIZE]: module.json with replication of $BD/<node>/data at ACK.
sk_config() {
	local n
	for n in n1 n2; do
		mkdir -p "$BD/$n/data"
		jq --arg p "$BD/$n/data" --arg ack "$1" --argjson bs "${2:-65536}" --argjson tls "${SK_TLS:-false}" \
			'.replication = {ack: $ack, block_size: $bs, tls: $tls, dirs: [{path: $p}]}' \
			"$RIG_DIR/$n/module.json.orig" >"$RIG_DIR/$n/modules/$MOD/module.json"
	done
}

# sk_up ACK [keep [BLOCK_SIZE]]: fresh state (first start, n1 is the reference), both in sync.
sk_up() {
	local n
	mkdir -p "$BD/trash"
	for n in n1 n2; do
		rm -rf "${RIG_DIR:?}/$n/state/"* "$RIG_DIR/$n/log/"*
		[ "${2:-}" = keep ] || [ ! -d "$BD/$n/data" ] || mv "$BD/$n/data" "$BD/trash/$n.data.$RANDOM$RANDOM"
	done
	sk_config "$1" "${3:-}"
	rig_start_skd n1
	rig_start_skd n2
	rig_skctl n2 start -m "$MOD" >/dev/null
	rig_skctl n1 prim -m "$MOD" >/dev/null
	rig_wait_label n1 "$MOD" 'PRIM/running' 600
	rig_wait_label n2 "$MOD" 'SECOND/in-sync' 36000
}

sk_down() {
	rig_stop_skd n2
	rig_stop_skd n1
}

sk_status() { rig_skctl "$1" status --json | jq -c --arg m "$MOD" '.modules[] | select(.name == $m)'; }

# ---------------------------------------------------------------- workloads
# Each runs its workload through RUNNER (a command prefix) on DIR and records a
# result; FOR (environment) names the system a bare run is paired with.
label() { if [ "$1" = bare ] && [ -n "${FOR:-}" ]; then echo "bare (before $FOR)"; else echo "$1"; fi; }

# The written file stays until the directory goes to $BD/trash: on this VM disk a
# write into blocks just freed by a delete runs 5-8x faster than into other blocks
# (measured: 256 MiB + fsync in 0.3 s instead of 2.5 s), so no run may follow a delete.
# cpu_now: "busy total n1 n2" CPU seconds so far (all CPUs from /proc/stat; each
# node's skd process; 0 for a node without one).
cpu_now() {
	local n pid hz
	hz=$(getconf CLK_TCK)
	awk -v hz="$hz" '$1 == "cpu" { printf "%.3f %.3f", ($2 + $3 + $4 + $7 + $8) / hz, ($2 + $3 + $4 + $5 + $6 + $7 + $8) / hz }' /proc/stat
	for n in n1 n2; do
		pid=$(rig_skd_pid "$n")
		if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
			awk -v hz="$hz" '{ sub(/^.*\) /, ""); printf " %.3f", ($12 + $13) / hz }' "/proc/$pid/stat"
		else
			printf ' 0'
		fi
	done
}

wl_seq() { # sys runner dir
	local sys=$1 run=$2 dir=$3 j c0 c1
	c0=$(cpu_now)
	j=$($run fio --name=seq --filename="$dir/seq.dat" --rw=write --bs=1M --size="${SEQ_MB}M" \
		--end_fsync=1 --ioengine=psync --output-format=json)
	c1=$(cpu_now)
	# CPU seconds used during the run: the machine's busy time and each skd's own.
	j=$(jq -c --arg s "$sys" --arg for "${FOR:-}" --arg c0 "$c0" --arg c1 "$c1" '
		($c0 | split(" ") | map(tonumber)) as $a | ($c1 | split(" ") | map(tonumber)) as $b |
		{k: "seq", sys: $s, for: $for, mib_s: (.jobs[0].write.bw_bytes / 1048576),
		bytes: .jobs[0].write.io_bytes, runtime_ms: .jobs[0].job_runtime,
		cpu: {busy_s: ($b[0] - $a[0]), all_s: ($b[1] - $a[1]), n1_skd_s: ($b[2] - $a[2]), n2_skd_s: ($b[3] - $a[3])}}' <<<"$j")
	result "$j"
	log "seq   $(label "$sys"): $(jq -r '.mib_s | floor' <<<"$j") MiB/s"
}

# wl_lat / wl_small: SYS's run and a bare run interleaved in chunks by one process
# (the disk's fsync latency moves 10x in phases of seconds here, see workload.py).
wl_lat() { # sys runner dir
	local sys=$1 run=$2 dir=$3 j bare=$BD/trash/bare-lat-$1
	mkdir -p "$bare"
	j=$($run $WL fsync-lat "$dir" --ops "$LAT_OPS" --keep --bare "$bare" --pair)
	result "$(jq -c --arg s "$sys" '.bare + {k: "lat", sys: "bare", for: $s}' <<<"$j")"
	result "$(jq -c --arg s "$sys" 'del(.bare) + {k: "lat", sys: $s}' <<<"$j")"
	log "lat   $sys: $(jq -r '"median \(.median_us | floor) us p99 \(.p99_us | floor) us \(.ops_per_s | floor) ops/s; bare interleaved: median \(.bare.median_us | floor) us p99 \(.bare.p99_us | floor) us"' <<<"$j")"
}

wl_small() { # sys runner dir
	local sys=$1 run=$2 dir=$3 j bare=$BD/trash/bare-small-$1
	mkdir -p "$bare"
	j=$($run $WL smallfiles "$dir" --files "$SMALL_FILES" --bare "$bare")
	result "$(jq -c --arg s "$sys" '.bare + {k: "small", sys: "bare", for: $s}' <<<"$j")"
	result "$(jq -c --arg s "$sys" 'del(.bare) + {k: "small", sys: $s}' <<<"$j")"
	log "small $sys: $(jq -r '"\(.ops_per_s | floor) files/s; bare interleaved: \(.bare.ops_per_s | floor) files/s"' <<<"$j")"
}

# pair WORKLOAD SYS RUNNER DIR [args]: the same workload on a bare directory of the
# same disk right before SYS, so each ratio compares runs made under the same load
# (other jobs share this machine: bare fsync latency moves 10x within minutes).
pair() {
	local wl=$1 sys=$2 run=$3 dir=$4; shift 4
	mkdir -p "$BD/bare" "$BD/trash"
	FOR=$sys "$wl" bare in_root "$BD/bare"
	mv "$BD/bare" "$BD/trash/bare.$sys.$wl"
	FOR=$sys "$wl" "$sys" "$run" "$dir" "$@"
}

in_n1_skd() { nsenter -t "$(rig_skd_pid n1)" -m -n "$@"; }
in_root() { "$@"; }

# ---------------------------------------------------------------- sections
section_link() {
	local j
	log "link: iperf3 n1 -> n2, ping RTT"
	bg iperf3 n2 iperf3 -s -1 -B "$N2IP" >"$BD/iperf3.log" 2>&1
	rig_wait_for 50 rig_exec n2 sh -c "ss -ltn | grep -q ':5201'"
	j=$(rig_exec n1 iperf3 -c "$N2IP" -t 3 -J)
	wait "$BG_PID" 2>/dev/null || true
	LINK=$(jq '.end.sum_received.bits_per_second / 8 / 1048576' <<<"$j")
	RTT=$(rig_exec n1 ping -c 200 -i 0.005 "$N2IP" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n |
		awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] * 1000 }')
	result "{\"k\": \"link\", \"mib_s\": $LINK, \"rtt_median_us\": $RTT}"
	log "link: $(printf '%.0f' "$LINK") MiB/s, RTT median $RTT us"
	# The disk itself: 1 MiB O_DIRECT writes, no page cache (a buffered run's speed
	# depends on the memory it lands in: 200-1800 MiB/s on this VM for one disk).
	mkdir -p "$BD/trash"
	j=$(fio --name=disk --filename="$BD/trash/disk.dat" --rw=write --bs=1M --size="${SEQ_MB}M" --direct=1 \
		--ioengine=psync --output-format=json)
	result "$(jq -c '{k: "disk", mib_s: (.jobs[0].write.bw_bytes / 1048576)}' <<<"$j")"
	log "disk: $(jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$j") MiB/s (O_DIRECT sequential writes)"
}

# sk-durable, sk-applied, and sk-tls (ack durable over TLS 1.3: its cost).
section_sk() {
	local sys ack
	for sys in $SK_SYSTEMS; do
		case $sys in sk-durable | sk-applied | sk-tls) ;; *) echo "run.sh: unknown system $sys" >&2; exit 2 ;; esac
		ack=${sys#sk-}
		SK_TLS=false
		[ "$sys" != sk-tls ] || { ack=durable; SK_TLS=true; }
		log "SK $sys (ack=$ack, tls $SK_TLS): starting the pair"
		sk_up "$ack"
		pair wl_seq "$sys" in_n1_skd "$BD/n1/data"
		wl_lat "$sys" in_n1_skd "$BD/n1/data"
		wl_small "$sys" in_n1_skd "$BD/n1/data"
		result "$(sk_status n1 | jq -c --arg s "$sys" '{k: "sk_counters", sys: $s,
			dir: .replication.dirs[0] | del(.resync)}')"
		sk_down
	done
	SK_TLS=false
}

rsyncd_start() {
	mkdir -p "$BD/n2/lsync" "$BD/rs/dst1" "$BD/rs/dst2"
	cat >"$BD/rsyncd.conf" <<CONF
use chroot = no
uid = root
gid = root
[lsync]
path = $BD/n2/lsync
read only = false
[dst1]
path = $BD/rs/dst1
read only = false
[dst2]
path = $BD/rs/dst2
read only = false
CONF
	bg rsyncd n2 rsync --daemon --no-detach --config="$BD/rsyncd.conf" --address="$N2IP" --port=873 \
		>>"$BD/rsyncd.log" 2>&1
	RSYNCD_PID=$BG_PID
	rig_wait_for 50 rig_exec n2 sh -c "ss -ltn | grep -q ':873 '" || rig_fail "rsync daemon did not start"
}

rsyncd_stop() {
	kill -TERM "$RSYNCD_PID" 2>/dev/null || true
	wait "$RSYNCD_PID" 2>/dev/null || true
}

lsyncd_start() {
	mkdir -p "$BD/n1/lsync"
	cat >"$BD/lsyncd.lua" <<LUA
settings { nodaemon = true, insist = true, logfile = "$BD/lsyncd.log", statusFile = "$BD/lsyncd.status" }
sync { default.rsync, source = "$BD/n1/lsync/", target = "$N2IP::lsync/", delay = 0,
       rsync = { archive = true } }
LUA
	bg lsyncd n1 lsyncd "$BD/lsyncd.lua" >>"$BD/lsyncd.out" 2>&1
	LSYNCD_PID=$BG_PID
	# lsyncd runs once its startup sync has carried a fresh probe file to the peer.
	rm -f "$BD/n1/lsync/.probe" "$BD/n2/lsync/.probe"
	date +%s%N >"$BD/n1/lsync/.probe"
	rig_wait_for 300 test -s "$BD/n2/lsync/.probe" || { tail "$BD/lsyncd.log" >&2; rig_fail "lsyncd never synced"; }
}

lsyncd_stop() {
	kill -TERM "$LSYNCD_PID" 2>/dev/null || true
	rig_wait_for 50 _rig_gone "$LSYNCD_PID" || kill -KILL "$LSYNCD_PID" 2>/dev/null || true
	wait "$LSYNCD_PID" 2>/dev/null || true
}

# catchup KIND TEST-CMD...: seconds until lsyncd's peer has it all (bounded, 600 s).
catchup() {
	local kind=$1 t0 i s; shift
	t0=$(date +%s%N)
	for ((i = 0; i < 6000; i++)); do
		"$@" && break
		sleep 0.1
	done
	s=$(since "$t0")
	"$@" || s=-1
	result "{\"k\": \"catchup\", \"sys\": \"lsyncd\", \"kind\": \"$kind\", \"seconds\": $s}"
	log "      lsyncd peer complete $s s after the app finished ($kind)"
}
peer_size_is() { [ "$(stat -c %s "$1" 2>/dev/null)" = "$2" ]; }
peer_count_is() { [ "$(find "$1" -type f 2>/dev/null | wc -l)" = "$2" ]; }

section_lsyncd() {
	log "lsyncd (delay 0, rsync daemon on n2)"
	rsyncd_start
	lsyncd_start
	pair wl_seq lsyncd in_root "$BD/n1/lsync"
	catchup seq peer_size_is "$BD/n2/lsync/seq.dat" $((SEQ_MB << 20))
	wl_lat lsyncd in_root "$BD/n1/lsync"
	catchup lat peer_size_is "$BD/n2/lsync/fsync-lat.dat" $(((LAT_OPS + 20) * 4096))
	wl_small lsyncd in_root "$BD/n1/lsync"
	catchup small peer_count_is "$BD/n2/lsync/smallfiles" "$SMALL_FILES"
	lsyncd_stop
	rsyncd_stop
	mv "$BD/n1/lsync" "$BD/trash/n1.lsync"
	mv "$BD/n2/lsync" "$BD/trash/n2.lsync"
}

# power_cut NODE PIDS...: link down and SIGKILL at once (processes we started).
power_cut() {
	local node=$1; shift
	rig_exec "$node" ip link set eth0 down
	kill -KILL "$@" 2>/dev/null || true
}

random_delay() { awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 1.5 + r / 32768 }'; }

section_loss_lsyncd() {
	local r w j
	log "crash loss: lsyncd, $LOSS_ROUNDS rounds"
	mkdir -p "$BD/acks"
	rsyncd_start
	for ((r = 1; r <= LOSS_ROUNDS; r++)); do
		lsyncd_start
		bg writer n1 $WL records "$BD/n1/lsync/rec$r.log" "$BD/acks/lsyncd$r" --seconds 60 \
			>>"$BD/writer.log" 2>&1
		w=$BG_PID
		sleep "$(random_delay)"
		# lsyncd's rsync children die with the node too: every process in n1 is ours.
		power_cut n1 "$w" "$LSYNCD_PID" $(ip netns pids "$(rig_ns n1)")
		wait "$w" "$LSYNCD_PID" 2>/dev/null || true
		sleep 0.5	# what was already on the wire lands
		j=$($WL check-records "$BD/n2/lsync/rec$r.log" "$BD/acks/lsyncd$r")
		result "$(jq -c --argjson r "$r" '. + {k: "loss", sys: "lsyncd", round: $r}' <<<"$j")"
		log "loss  lsyncd round $r: $(jq -r '"\(.missing) of \(.acked) acknowledged records missing on the peer"' <<<"$j")"
		rig_exec n1 ip link set eth0 up
	done
	rsyncd_stop
	rm -rf "$BD/n1/lsync" "$BD/n2/lsync"
}

section_loss_sk() {
	local r w j app prim=n1 other=n2 t
	log "crash loss: SK ack=durable, $LOSS_ROUNDS rounds (power cut of the primary)"
	mkdir -p "$BD/acks"
	sk_up durable
	for ((r = 1; r <= LOSS_ROUNDS; r++)); do
		bg writer - nsenter -t "$(rig_skd_pid $prim)" -m -n $WL records "$BD/$prim/data/rec$r.log" \
			"$BD/acks/sk$r" --seconds 60 >>"$BD/writer.log" 2>&1
		w=$BG_PID
		sleep "$(random_delay)"
		app=$(cat "$RIG_DIR/$prim/state/$MOD/app.pid" 2>/dev/null || true)
		power_cut "$prim" "$w" "$(rig_skd_pid $prim)"
		[ -z "$app" ] || kill -KILL -- "-$app" 2>/dev/null || true	# the VIP service
		wait "$w" 2>/dev/null || true
		rig_stop_skd "$prim" KILL
		rig_wait_label "$other" "$MOD" 'ALONE/running' 300
		j=$($WL check-records "$BD/$other/data/rec$r.log" "$BD/acks/sk$r")
		result "$(jq -c --argjson r "$r" '. + {k: "loss", sys: "sk-durable", round: $r}' <<<"$j")"
		log "loss  SK round $r: $(jq -r '"\(.missing) of \(.acked) acknowledged records missing on the peer"' <<<"$j")"
		rig_exec "$prim" ip link set eth0 up
		rig_start_skd "$prim"
		rig_wait_label "$prim" "$MOD" 'SECOND/in-sync' 3000
		rig_wait_label "$other" "$MOD" 'PRIM/running' 300
		t=$prim prim=$other other=$t
	done
	sk_down
}

nic_bytes() { # node: rx+tx bytes of its eth0
	rig_exec "$1" sh -c 'echo $(($(cat /sys/class/net/eth0/statistics/rx_bytes) + $(cat /sys/class/net/eth0/statistics/tx_bytes)))'
}

# rsync_run NAME MODULE opts...: the same change pushed from n1 to the daemon on n2.
rsync_run() {
	local name=$1 module=$2 t0 s w0 w1 out sent same; shift 2
	w0=$(nic_bytes n2)
	t0=$(date +%s%N)
	out=$(rig_exec n1 rsync -a --inplace --delete --stats "$@" "$BD/rs/src/" "rsync://$N2IP/$module/")
	s=$(since "$t0")
	w1=$(nic_bytes n2)
	sent=$(sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' <<<"$out" | tr -d ,)
	[ "$(rig_tree_hash "$BD/rs/src")" = "$(rig_tree_hash "$BD/rs/$module")" ] && same=true || same=false
	result "{\"k\": \"resync\", \"sys\": \"$name\", \"seconds\": $s, \"bytes_sent\": ${sent:-0}, \"wire_bytes\": $((w1 - w0)), \"identical\": $same}"
	log "resync $name: $s s, ${sent:-?} bytes sent, $((w1 - w0)) bytes on the wire, identical: $same"
}

# sk_resync NAME BLOCK_SIZE SEED [full]: first start over identical trees, peer down, the
# SEED change through the primary's mount, peer back: time and bytes to in-sync. With
# full, the peer's dirty log is deleted while it is down, so the resync compares everything
# (as after a lost log): block hashes of the whole tree, then piece hashes of what differs.
sk_resync() {
	local name=$1 bs=$2 seed=$3 how=${4:-} t0 s w0 w1 st sent logsent h1 h2 ch ch2
	t0=$(date +%s%N)
	sk_up durable keep "$bs"
	s=$(since "$t0")
	result "{\"k\": \"initial_compare\", \"sys\": \"$name\", \"seconds\": $s}"
	log "resync $name: first start over identical trees took $s s"
	# A peer in sync: the primary's dirty log covers once its first rotation behind a
	# durable barrier is acked (right after the sync), so the failback resyncs by the logs.
	local i
	for ((i = 0; i < 200; i++)); do
		[ "$(sk_status n1 | jq '.replication.dirs[0].dirty_log.covers')" = true ] && break
		sleep 0.1
	done
	[ "$i" -lt 200 ] || rig_fail "the dirty log of n1 does not cover after 20 s in sync"

	rig_stop_skd n2
	rig_wait_label n1 "$MOD" 'ALONE/running' 300
	if [ "$how" = full ]; then
		ls "$RIG_DIR/n2/state/$MOD"/dirty-*.log >/dev/null 2>&1 || rig_fail "no dirty log of n2 to delete"
		rm -f "$RIG_DIR/n2/state/$MOD"/dirty-*.log
	fi
	ch=$(in_n1_skd $WL change "$BD/n1/data" --seed "$seed")
	if [ "$seed" = "$RSYNC_SEED" ]; then
		ch2=$($WL change "$BD/rs/src" --seed "$seed")
		[ "$(jq -c 'del(.tree_bytes)' <<<"$ch")" = "$(jq -c 'del(.tree_bytes)' <<<"$ch2")" ] ||
			rig_fail "the change differs between SK's tree and rsync's source: $ch vs $ch2"
	fi
	result "$(jq -c --arg n "$name" '. + {k: "change", for: $n}' <<<"$ch")"
	log "change (seed $seed): $(jq -r '"\(.bytes_changed) bytes (\(.blocks_rewritten) blocks in \(.files_touched) files, \(.new_files) new, \(.deleted_files) deleted)"' <<<"$ch")"
	sync

	w0=$(nic_bytes n2)
	t0=$(date +%s%N)
	rig_start_skd n2
	rig_wait_label n2 "$MOD" 'SECOND/in-sync' 36000
	s=$(since "$t0")
	w1=$(nic_bytes n2)
	st=$(sk_status n1)
	sent=$(jq '.replication.dirs[0].resync.bytes_sent' <<<"$st")
	logsent=$(grep -ho 'target in sync for [^ ]* ([0-9]* bytes sent)' "$RIG_DIR/n1/log/$MOD.log" "$RIG_DIR/n1/skd.log" \
		2>/dev/null | tail -1 | sed 's/.*(\([0-9]*\) bytes sent)/\1/' || true)
	h1=$(rig_tree_hash "$BD/n1/data")
	h2=$(rig_tree_hash "$BD/n2/data")
	result "$(jq -c --arg n "$name" --argjson bs "$bs" --argjson s "$s" --argjson w "$((w1 - w0))" \
		--argjson same "$([ "$h1" = "$h2" ] && echo true || echo false)" --arg logsent "${logsent:-}" \
		'{k: "resync", sys: $n, block_size: $bs, seconds: $s, bytes_sent: .replication.dirs[0].resync.bytes_sent,
		  bytes_total: .replication.dirs[0].resync.bytes_total,
		  blocks_skipped: .replication.dirs[0].resync.blocks_skipped,
		  by_dirty_logs: .replication.dirs[0].resync.by_dirty_logs,
		  log_bytes_sent: $logsent, wire_bytes: $w, identical: $same}' <<<"$st")"
	log "resync $name: $s s, $sent bytes sent (module log: ${logsent:-none}), $((w1 - w0)) bytes on the wire, trees identical: $([ "$h1" = "$h2" ] && echo yes || echo NO)"
	sk_down
}

RSYNC_SEED=11
section_resync() {
	local j d
	log "resync: ${TREE_MB} MiB tree on $BD"
	rm -rf "$BD/n1/data" "$BD/n2/data" "$BD/rs" "$BD/trash"
	mkdir -p "$BD/n1/data" "$BD/n2" "$BD/rs"
	j=$($WL mktree "$BD/n1/data" --bytes $((TREE_MB << 20)) --seed 7)
	result "$(jq -c '. + {k: "tree"}' <<<"$j")"
	log "tree: $(jq -r '"\(.files) files, \(.bytes) bytes"' <<<"$j")"
	for d in "$BD/n2/data" "$BD/rs/src" "$BD/rs/dst1" "$BD/rs/dst2"; do cp -a "$BD/n1/data" "$d"; done
	sync
	# The default block size (64 KiB) on the change rsync also gets; then 4 KiB blocks
	# (the change's own granularity) on a second change of the same shape; then a full
	# compare (the peer lost its dirty log) on a third.
	sk_resync sk 65536 "$RSYNC_SEED"
	sk_resync sk-bs4k 4096 12
	sk_resync sk-full 65536 13 full
	rsyncd_start
	rsync_run rsync-delta dst1 --no-whole-file
	rsync_run rsync-whole dst2 --whole-file
	rsyncd_stop
	rm -rf "$BD/rs" "$BD/n1/data" "$BD/n2/data"
}

# ---------------------------------------------------------------- main
for s in $SECTIONS; do
	case $s in
	link) section_link ;;
	sk) section_sk ;;
	lsyncd) section_lsyncd ;;
	loss-lsyncd) section_loss_lsyncd ;;
	loss-sk) section_loss_sk ;;
	resync) section_resync ;;
	*) echo "run.sh: unknown section $s" >&2; exit 2 ;;
	esac
done

python3 "$HERE/report.py" "$RES" "$OUT" --quick "$QUICK" --load "$(cut -d' ' -f1-3 /proc/loadavg)"
