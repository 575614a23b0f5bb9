#!/usr/bin/env bash
# Mirror-module helpers for the rig: a module with a small TCP service behind
# its VIP (answers the serving node's name), hook scripts that log their order,
# and waits on states as seen by skctl.
# Needs rig.sh sourced first.

RIG_VIP=198.18.0.100
RIG_VIP_PORT=8080

# rig_write_mirror_module NAME [extra JSON members]: module.json + scripts on every node.
rig_write_mirror_module() {
	local name=$1 extra=${2:-} node dir
	for node in "${RIG_NODES[@]}"; do
		dir="$RIG_DIR/$node/modules/$name"
		mkdir -p "$dir/scripts"
		cat >"$dir/module.json" <<JSON
{
  "name": "$name",
  "type": "mirror",
  "nodes": ["n1", "n2"],
  "heartbeat": { "interval_ms": ${RIG_HB_INTERVAL:-100}, "timeout_ms": ${RIG_HB_TIMEOUT:-500} },
  "vips": [ { "address": "$RIG_VIP/24", "interface": "eth0" } ],
  "scripts": { "timeout_ms": 5000 }${extra:+,
  $extra}
}
JSON
		_rig_script "$dir" start_prim "
setsid socat TCP-LISTEN:$RIG_VIP_PORT,bind=$RIG_VIP,fork,reuseaddr SYSTEM:'echo \$SK_NODE' </dev/null >/dev/null 2>&1 &
echo \$! > \"\$SK_STATE_DIR/app.pid\"
for i in \$(seq 50); do ss -ltn | grep -q '$RIG_VIP:$RIG_VIP_PORT' && break; sleep 0.02; done"
		_rig_script "$dir" stop_prim "
if [ -f \"\$SK_STATE_DIR/app.pid\" ]; then
	kill -TERM -- -\$(cat \"\$SK_STATE_DIR/app.pid\") 2>/dev/null || true
	rm -f \"\$SK_STATE_DIR/app.pid\"
fi"
		for s in prestart start_second stop_second poststop; do _rig_script "$dir" "$s" ""; done
	done
}

# Every script logs "<node> <script> <role> <monotonic ns>" to the shared script log.
_rig_script() {
	local dir=$1 script=$2 body=$3
	cat >"$dir/scripts/$script" <<SH
#!/bin/bash
set -eu
echo "\$SK_NODE $script \$SK_ROLE \$(date +%s%N)" >> "$RIG_DIR/scripts.log"
$body
SH
	chmod 755 "$dir/scripts/$script"
}

# rig_mirror_label NODE MODULE: "PRIM/running", ... as that node sees itself.
rig_mirror_label() {
	rig_skctl "$1" status --json | jq -r --arg m "$2" '.modules[] | select(.name == $m) | .label'
}

# rig_wait_label NODE MODULE LABEL-REGEX [TRIES]
# rig_start_pair MODULE [PRIM_TRIES [SECOND_TRIES]]: starts skd on n1 and n2, the
# module on n2 and as primary on n1; waits for n1 PRIM/running, n2 SECOND/in-sync.
rig_start_pair() {
	local module=$1
	rig_start_skd n1
	rig_start_skd n2
	rig_skctl n2 start -m "$module" >/dev/null
	rig_skctl n1 prim -m "$module" >/dev/null
	rig_wait_label n1 "$module" 'PRIM/running' "${2:-100}"
	rig_wait_label n2 "$module" 'SECOND/in-sync' "${3:-200}"
}

rig_wait_label() {
	local node=$1 module=$2 want=$3 tries=${4:-100} got="" i
	for ((i = 0; i < tries; i++)); do
		got=$(rig_mirror_label "$node" "$module" 2>/dev/null || true)
		if [[ "$got" =~ ^($want)$ ]]; then return 0; fi
		sleep 0.1
	done
	rig_fail "$node: $module is '$got', expected '$want' (after $tries tries)"
}

# Nodes whose eth0 holds the VIP right now.
rig_vip_holders() {
	local node out=""
	for node in "${RIG_NODES[@]}"; do
		if rig_exec "$node" ip -4 -o addr show dev eth0 2>/dev/null | grep -q " $RIG_VIP/"; then
			out+="$node "
		fi
	done
	printf '%s' "${out% }"
}

# What a client gets from the VIP service now ("" when nothing answers).
rig_vip_answer() {
	rig_exec "${1:-c1}" socat -T1 - "TCP:$RIG_VIP:$RIG_VIP_PORT,connect-timeout=0.5" 2>/dev/null </dev/null || true
}

# rig_start_probe CLIENT OUTFILE [args]: the VIP prober in the background.
rig_start_probe() {
	local client=$1 out=$2 pid; shift 2
	rm -f "$RIG_DIR/probe.stop" "$RIG_DIR/probe.ready"
	ip netns exec "$(rig_ns "$client")" python3 "$(dirname "${BASH_SOURCE[0]}")/vip_probe.py" \
		"$RIG_VIP" "$RIG_VIP_PORT" --stop-file "$RIG_DIR/probe.stop" \
		--ready-file "$RIG_DIR/probe.ready" "$@" >"$out" &
	pid=$!
	echo "$pid probe" >>"$RIG_PIDS_FILE"
	RIG_PROBE_PID=$pid
	rig_wait_for 50 test -e "$RIG_DIR/probe.ready" || rig_fail "the VIP never answered the prober"
}

rig_stop_probe() {
	touch "$RIG_DIR/probe.stop"
	wait "$RIG_PROBE_PID" 2>/dev/null || true
}

# Does NODE's eth0 hold the VIP right now?
_rig_holds() { rig_exec "$1" ip -4 -o addr show dev eth0 2>/dev/null | grep -q " $RIG_VIP/"; }

# Starts the VIP sampler until stopped. Reading two nodes takes a few ms, so a
# handover between the two reads would look like an overlap: reads go n1, n2,
# n1, n2 and a line says "n1 n2" only when one node held the VIP before AND
# after the other was seen holding it, i.e. both held it at the same moment.
rig_start_vip_sampler() {
	local out=$1
	(
		while [ ! -e "$RIG_DIR/sampler.stop" ]; do
			a=0; b=0; c=0; d=0
			_rig_holds n1 && a=1
			_rig_holds n2 && b=1
			_rig_holds n1 && c=1
			_rig_holds n2 && d=1
			if [ $a$b$c = 111 ] || [ $b$c$d = 111 ]; then echo "n1 n2"
			elif [ $b = 1 ]; then echo n2
			elif [ $a = 1 ] || [ $c = 1 ]; then echo n1
			else echo; fi
			sleep 0.01
		done
	) >"$out" &
	echo "$! sampler" >>"$RIG_PIDS_FILE"
	RIG_SAMPLER_PID=$!
}

rig_stop_vip_sampler() {
	touch "$RIG_DIR/sampler.stop"
	wait "$RIG_SAMPLER_PID" 2>/dev/null || true
}

# Kills skd on NODE with SIGKILL and the app's process group (a crash).
rig_crash_node() {
	local node=$1 pidfile
	pidfile="$RIG_DIR/$1/state/$2/app.pid"
	rig_stop_skd "$node" KILL
	if [ -f "$pidfile" ]; then kill -KILL -- "-$(cat "$pidfile")" 2>/dev/null || true; fi
}

# Predicates for rig_wait_for (which retries a command: its arguments are
# expanded once, so the command itself must look again each time).
rig_vip_answer_is() { [ "$(rig_vip_answer)" = "$1" ]; }
rig_vip_holders_are() { [ "$(rig_vip_holders)" = "$1" ]; }
rig_vip_answers() { [ -n "$(rig_vip_answer)" ]; }

# rig_add_replicated_dir MODULE: each node replicates its own $RIG_DIR/<node>/data
# (same role, per-node path, so nodes on one machine never share files).
rig_add_replicated_dir() {
	local module=$1 node
	for node in "${RIG_NODES[@]}"; do
		mkdir -p "$RIG_DIR/$node/data"
		python3 - "$RIG_DIR/$node/modules/$module/module.json" "$RIG_DIR/$node/data" <<'PY'
import json, sys
path, data = sys.argv[1], sys.argv[2]
m = json.load(open(path))
m["replication"] = {"dirs": [{"path": data}]}
json.dump(m, open(path, "w"), indent=1)
PY
	done
}

# rig_in_skd NODE cmd...: runs cmd in skd's mount namespace (where its FUSE
# over-mounts are), i.e. as the protected application sees the files.
rig_in_skd() {
	local node=$1 pid; shift
	pid=$(rig_skd_pid "$node")
	nsenter -t "$pid" -m -n "$@"
}

# A tree's entries, sorted: relative path, type, mode, and size (not of directories: on
# ext4 a directory keeps the size of the most entries it ever held, which a resync that
# sends only the final names does not reproduce).
rig_tree_list() {
	(cd "$1" && { find . -mindepth 1 ! -type d -printf '%P %y %m %s\n'; find . -mindepth 1 -type d -printf '%P %y %m\n'; } | sort)
}

# Independent hash of a tree: its entries (rig_tree_list) and the content of its files.
rig_tree_hash() {
	(rig_tree_list "$1" && cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) |
		sha256sum | cut -d' ' -f1
}
