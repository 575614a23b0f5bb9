#!/usr/bin/env bash
# SK's namespace rig: a "switch" namespace holding a bridge per network, N node
# namespaces and client namespaces joined to it by veth pairs, per-node paths,
# and teardown that removes everything it made (and checks that it did).
# Addresses: 198.18.<net>.0/24 per network (node i = .(10+i), client j = .(100+j)),
# fd00:5c:<net>::/64 for IPv6. Nothing is ever added to the root namespace.
#
# Test files source this, define test_* functions, and end with `rig_main "$@"`.
# Output is TAP, one line per test function.

set -eu

RIG_TAG="skt$$"
RIG_DIR=""
RIG_NODES=()
RIG_CLIENTS=()
RIG_NETS=1
RIG_PIDS_FILE=""
SK_BIN_DIR="${SK_BIN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/build}"
SK_SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
SKD="$SK_BIN_DIR/userspace/skd"
SKCTL="$SK_BIN_DIR/cli/skctl"

rig_log() { printf '# %s\n' "$*" >&2; }
rig_fail() { printf '# FAIL: %s\n' "$*" >&2; return 1; }

rig_ns() { printf '%s-%s' "$RIG_TAG" "$1"; }
rig_node_ip() { # node-index [net]
	printf '198.18.%d.%d' "${2:-0}" $((10 + $1))
}
rig_client_ip() { printf '198.18.%d.%d' "${2:-0}" $((100 + $1)); }
rig_exec() { # name cmd...
	local ns; ns=$(rig_ns "$1"); shift
	ip netns exec "$ns" "$@"
}

# rig_setup NODES CLIENTS [NETWORKS]
rig_setup() {
	local nodes=$1 clients=$2 nets=${3:-1} i n
	RIG_NETS=$nets
	RIG_DIR=$(mktemp -d /tmp/sk-rig.XXXXXX)
	RIG_PIDS_FILE=$RIG_DIR/pids
	: >"$RIG_PIDS_FILE"
	ip netns add "$(rig_ns sw)"
	rig_exec sw ip link set lo up
	for ((n = 0; n < nets; n++)); do
		rig_exec sw ip link add "br$n" type bridge
		rig_exec sw ip link set "br$n" up
	done
	for ((i = 1; i <= nodes; i++)); do
		RIG_NODES+=("n$i")
		_rig_host "n$i" "$(rig_node_ip "$i")" "$((10 + i))"
		mkdir -p "$RIG_DIR/n$i"/{modules,state,run,log}
	done
	for ((i = 1; i <= clients; i++)); do
		RIG_CLIENTS+=("c$i")
		_rig_host "c$i" "$(rig_client_ip "$i")" "$((100 + i))"
	done
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RIG_DIR/cluster.key"
	chmod 600 "$RIG_DIR/cluster.key"
}

# A host namespace with one interface ethN per network, joined to brN.
_rig_host() {
	local name=$1 ns n host=$3 peer
	ns=$(rig_ns "$name")
	ip netns add "$ns"
	rig_exec "$name" ip link set lo up
	for ((n = 0; n < RIG_NETS; n++)); do
		peer="${name}e$n"
		ip link add "eth$n" netns "$ns" type veth peer name "$peer" netns "$(rig_ns sw)"
		rig_exec sw ip link set "$peer" master "br$n" up
		rig_exec "$name" ip addr add "198.18.$n.$host/24" dev "eth$n"
		rig_exec "$name" ip -6 addr add "fd00:5c:$n::$host/64" dev "eth$n" nodad
		rig_exec "$name" ip link set "eth$n" up
	done
}

# rig_write_cluster [extra-json-for-cluster-object]: cluster.json per node
# (identical but for the paths section, so nodes never share files).
rig_write_cluster() {
	local i name nets="" nodes="" addrs n
	for ((n = 0; n < RIG_NETS; n++)); do nets+="${nets:+, }\"net$n\""; done
	for ((i = 1; i <= ${#RIG_NODES[@]}; i++)); do
		addrs=""
		for ((n = 0; n < RIG_NETS; n++)); do
			addrs+="${addrs:+, }\"net$n\": \"$(rig_node_ip "$i" "$n")\""
		done
		nodes+="${nodes:+,
    }{ \"name\": \"n$i\", \"id\": $i, \"addresses\": { $addrs } }"
	done
	for name in "${RIG_NODES[@]}"; do
		cat >"$RIG_DIR/$name/cluster.json" <<JSON
// written by the SK test rig for node $name
{
  "cluster": "rig",
  "key_file": "$RIG_DIR/cluster.key",
  "networks": [ $nets ],
  "nodes": [
    $nodes
  ],
  "paths": {
    "modules_dir": "$RIG_DIR/$name/modules",
    "state_dir": "$RIG_DIR/$name/state",
    "run_dir": "$RIG_DIR/$name/run",
    "bpf_pin_root": "/sys/fs/bpf/$RIG_TAG/$name",
    "log_dir": "$RIG_DIR/$name/log"
  }
}
JSON
	done
}

# rig_start_skd NODE [extra skd args]: starts skd in the node's namespace.
rig_start_skd() {
	local name=$1 pid; shift
	# A plain command in the background (not a function): $! is then skd itself,
	# since `ip netns exec` execs it.
	ip netns exec "$(rig_ns "$name")" "$SKD" --config "$RIG_DIR/$name/cluster.json" \
		--node "$name" --log-timestamps --console-dir "$SK_SRC_DIR/userspace/api/console" "$@" \
		>>"$RIG_DIR/$name/skd.log" 2>&1 &
	pid=$!
	echo "$pid skd-$name" >>"$RIG_PIDS_FILE"
	eval "RIG_PID_$name=$pid"
	rig_wait_for 50 rig_skctl "$name" status >/dev/null ||
		{ tail -20 "$RIG_DIR/$name/skd.log" >&2; rig_fail "skd on $name did not answer"; }
}

rig_skd_pid() { eval "printf '%s' \"\${RIG_PID_$1:-}\""; }

rig_skctl() { # node args...
	local name=$1; shift
	rig_exec "$name" "$SKCTL" --socket "$RIG_DIR/$name/run/skd.sock" "$@"
}

# rig_stop_skd NODE [SIGNAL]: signals skd and waits (bounded) for it to exit.
rig_stop_skd() {
	local pid; pid=$(rig_skd_pid "$1")
	[ -n "$pid" ] || return 0
	kill "-${2:-TERM}" "$pid" 2>/dev/null || true
	rig_wait_for 100 _rig_gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; }
	wait "$pid" 2>/dev/null || true
	eval "RIG_PID_$1="
}
_rig_gone() { ! kill -0 "$1" 2>/dev/null; }

# rig_wait_for TRIES cmd...: retries every 0.1 s, at most TRIES times.
rig_wait_for() {
	local tries=$1 i; shift
	for ((i = 0; i < tries; i++)); do
		if "$@" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

rig_teardown() {
	local pid what ns mnt
	[ -n "$RIG_DIR" ] || return 0
	if [ -f "$RIG_PIDS_FILE" ]; then
		while read -r pid what; do
			kill -TERM "$pid" 2>/dev/null || true
		done <"$RIG_PIDS_FILE"
		while read -r pid what; do
			rig_wait_for 50 _rig_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
		done <"$RIG_PIDS_FILE"
	fi
	# Mounts made under the rig (FUSE over-mounts): detach, deepest first.
	for mnt in $(awk -v d="$RIG_DIR" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount -l "$mnt" 2>/dev/null || true
	done
	rm -rf "/sys/fs/bpf/$RIG_TAG" 2>/dev/null || true
	for ns in $(ip netns list | awk '{print $1}' | grep "^$RIG_TAG-" || true); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		ip netns del "$ns"
	done
	rig_check_clean
	rm -rf "$RIG_DIR"
	RIG_DIR=""
	RIG_NODES=()
	RIG_CLIENTS=()
}

# Fails when anything the rig made is still there.
rig_check_clean() {
	local left="" pid what
	left+=$(ip netns list | awk '{print $1}' | grep "^$RIG_TAG-" || true)
	left+=$(awk -v d="$RIG_DIR" 'index($2, d) == 1 { print " mount:" $2 }' /proc/self/mounts)
	[ -e "/sys/fs/bpf/$RIG_TAG" ] && left+=" pins:/sys/fs/bpf/$RIG_TAG"
	if [ -f "$RIG_PIDS_FILE" ]; then
		while read -r pid what; do
			kill -0 "$pid" 2>/dev/null && left+=" process:$pid($what)"
		done <"$RIG_PIDS_FILE"
	fi
	if [ -n "$left" ]; then
		rig_fail "left behind: $left"
		return 1
	fi
}

# rig_skip REASON: ends the current test as skipped (TAP "# SKIP REASON"), e.g. when
# the application a test drives is not installed. Never for a failure.
rig_skip() {
	printf '%s' "$1" >"$RIG_SKIP_FILE"
	exit 77
}

# Runs every test_* function (or those named on the command line) in a
# subshell with teardown in a trap; prints TAP. A test library may set
# RIG_ON_FAILURE (run when a test fails, before teardown: diagnostics) and
# RIG_BEFORE_TEARDOWN (run before every teardown: its own cleanup).
rig_main() {
	local tests=("$@") t n=0 failed=0 rc
	if [ ${#tests[@]} -eq 0 ]; then
		mapfile -t tests < <(declare -F | awk '{print $3}' | grep '^test_')
	fi
	[ "$(id -u)" -eq 0 ] || { echo "1..0 # SKIP needs root (network namespaces)"; return 0; }
	[ -x "$SKD" ] || { echo "Bail out! skd not built at $SKD"; return 1; }
	echo "1..${#tests[@]}"
	RIG_SKIP_FILE=$(mktemp /tmp/sk-rig-skip.XXXXXX)
	for t in "${tests[@]}"; do
		n=$((n + 1))
		: >"$RIG_SKIP_FILE"
		# Not inside an `if`: bash would disable set -e in the whole subshell.
		set +e
		(
			set -eu
			trap 'rc=$?
				[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || ${RIG_ON_FAILURE:-:}
				${RIG_BEFORE_TEARDOWN:-:}
				rig_teardown || rc=1
				exit $rc' EXIT
			"$t"
		)
		rc=$?
		set -e
		if [ "$rc" -eq 77 ] && [ -s "$RIG_SKIP_FILE" ]; then
			echo "ok $n - $t # SKIP $(cat "$RIG_SKIP_FILE")"
		elif [ "$rc" -eq 0 ]; then
			echo "ok $n - $t"
		else
			echo "not ok $n - $t"
			failed=$((failed + 1))
		fi
	done
	rm -f "$RIG_SKIP_FILE"
	[ "$failed" -eq 0 ]
}
