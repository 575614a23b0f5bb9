#!/usr/bin/env bash
# Application-module helpers for the rig: installs a shipped module (modules/<app>) on
# every node the way an operator would (copy, then edit the marked settings to the rig's
# per-node paths), crashes and brings back mirror nodes, runs the zero-loss database
# client.
# Needs rig.sh and mirror.sh sourced first.

# Debian's python: psycopg2 and pymysql come from Debian packages.
APPS_PY=/usr/bin/python3
APPS_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APPS_VIP=$RIG_VIP
# Database tests end with a clean shutdown of the server behind SK's back and then
# compare both data dirs: checkers that look every 10 s (instead of 1-2 s) cannot
# restart the server, and write on one node only, before both daemons are stopped.
APPS_SLOW_CHECKERS="for c in m['checkers']: c['interval_ms'] = 10000"

# apps_need FILE PACKAGE: skips the test when the application binary is missing.
apps_need() {
	[ -x "$1" ] || rig_skip "$1 missing (Debian package $2)"
}

# Commands run at teardown before rig_teardown (e.g. removing podman containers).
APPS_CLEANUP=()
apps_on_cleanup() { APPS_CLEANUP+=("$*"); }
_apps_cleanup() {
	local c
	for c in "${APPS_CLEANUP[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
	APPS_CLEANUP=()
}

# apps_edit_json FILE PYTHON: loads a module.json (comments stripped), runs PYTHON with the
# object as `m` (and `node`, `rig` from the environment), writes it back as plain JSON.
apps_edit_json() {
	APPS_FILE=$1 APPS_EDIT=$2 APPS_RIG=$RIG_DIR "$APPS_PY" - <<'PY'
import json, os
def strip(s):
    out, i, n, q = [], 0, len(s), False
    while i < n:
        c = s[i]
        if q:
            out.append(c)
            if c == "\\":
                out.append(s[i + 1]); i += 2; continue
            q = c != '"'
            i += 1
        elif c == '"':
            q = True; out.append(c); i += 1
        elif s.startswith("//", i):
            j = s.find("\n", i); i = n if j < 0 else j
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2); i = n if j < 0 else j + 2
        else:
            out.append(c); i += 1
    return "".join(out)
path = os.environ["APPS_FILE"]
m = json.loads(strip(open(path).read()))
node, rig = os.environ.get("APPS_NODE", ""), os.environ["APPS_RIG"]
exec(os.environ["APPS_EDIT"])
json.dump(m, open(path, "w"), indent=1)
PY
}

# apps_set_env FILE KEY VALUE: sets one setting of a module's app.env.
apps_set_env() {
	local file=$1 key=$2 value=$3
	grep -q "^$key=" "$file" || rig_fail "$file has no setting $key"
	KEY=$key VALUE=$value "$APPS_PY" - "$file" <<'PY'
import os, shlex, sys
path, key, value = sys.argv[1], os.environ["KEY"], os.environ["VALUE"]
lines = open(path).read().splitlines()
lines = [key + "=" + shlex.quote(value) if l.startswith(key + "=") else l for l in lines]
open(path, "w").write("\n".join(lines) + "\n")
PY
}

# apps_install APP NODE [PYTHON]: copies modules/APP to NODE's modules_dir; PYTHON edits
# module.json (see apps_edit_json). The rig's fast heartbeat is always set.
apps_install() {
	local app=$1 node=$2 edit=${3:-} dir="$RIG_DIR/$2/modules/$1"
	rm -rf "$dir"
	cp -a "$SK_SRC_DIR/modules/$app" "$dir"
	APPS_NODE=$node apps_edit_json "$dir/module.json" "
m['heartbeat'] = {'interval_ms': ${RIG_HB_INTERVAL:-100}, 'timeout_ms': ${RIG_HB_TIMEOUT:-500}}
$edit"
}

# apps_crash NODE MODULE: power cut of a mirror node: its link goes down, then skd and the
# app's process group (SK_STATE_DIR/app.pid, written by start_prim) get SIGKILL at once.
apps_crash() {
	local node=$1 pidfile="$RIG_DIR/$1/state/$2/app.pid" pgid="" skd
	skd=$(rig_skd_pid "$node")
	[ -f "$pidfile" ] && pgid=$(cat "$pidfile")
	rig_exec "$node" ip link set eth0 down
	[ -z "$pgid" ] || kill -KILL -- "-$pgid" 2>/dev/null || true
	kill -KILL "$skd" 2>/dev/null || true
	rig_stop_skd "$node" KILL
}

# apps_return NODE: the node's power comes back: link up, skd started (the admin's
# "start" is remembered, so the module rejoins by itself).
apps_return() {
	rig_exec "$1" ip link set eth0 up
	rig_start_skd "$1"
}

# ---- the zero-loss database client (lib/db_client.py) ----

# apps_client_start KIND PORT: runs the client in c1 through the VIP until apps_client_stop.
apps_client_start() {
	local kind=$1 port=$2
	APPS_ACKS=$RIG_DIR/acked.txt
	APPS_CLIENT_ARGS=(--kind "$kind" --host "$APPS_VIP" --port "$port" --ackfile "$APPS_ACKS")
	rm -f "$RIG_DIR/client.stop" "$RIG_DIR/client.ready"
	rig_exec c1 "$APPS_PY" "$APPS_LIB/db_client.py" run "${APPS_CLIENT_ARGS[@]}" \
		--stopfile "$RIG_DIR/client.stop" --readyfile "$RIG_DIR/client.ready" \
		>"$RIG_DIR/client.json" 2>"$RIG_DIR/client.err" &
	APPS_CLIENT_PID=$!
	echo "$APPS_CLIENT_PID db-client" >>"$RIG_PIDS_FILE"
	rig_wait_for 300 test -e "$RIG_DIR/client.ready" ||
		rig_fail "the client never committed through the VIP: $(cat "$RIG_DIR/client.err")"
}

apps_client_stop() {
	touch "$RIG_DIR/client.stop"
	rig_wait_for 150 _rig_gone "$APPS_CLIENT_PID" || kill -KILL "$APPS_CLIENT_PID" 2>/dev/null || true
	wait "$APPS_CLIENT_PID" 2>/dev/null || true
}

apps_acked() { wc -l <"$APPS_ACKS"; }
_apps_acked_over() { [ "$(apps_acked)" -ge "$1" ]; }

# apps_wait_acks N [TRIES]: waits until N more transactions were acknowledged.
apps_wait_acks() {
	local want=$(($(apps_acked) + $1))
	rig_wait_for "${2:-600}" _apps_acked_over "$want" ||
		rig_fail "the client is stuck at $(apps_acked) acknowledged transactions (wanted $want): $(tail -3 "$RIG_DIR/client.err")"
}

# apps_check_acked: every acknowledged id is in the table of the serving node (through
# the VIP); prints the check's JSON.
apps_check_acked() {
	local out
	out=$(rig_exec c1 "$APPS_PY" "$APPS_LIB/db_client.py" check "${APPS_CLIENT_ARGS[@]}" --wait 30)
	jq -e '.missing == 0' <<<"$out" >/dev/null || rig_fail "acknowledged transactions lost: $out"
	printf '%s' "$out"
}

# apps_failover_cycle MODULE VICTIM SURVIVOR: power cut of the primary VICTIM while the
# client commits; SURVIVOR must serve every acknowledged transaction; then VICTIM comes
# back, resyncs and is the in-sync SECOND again.
apps_failover_cycle() {
	local module=$1 victim=$2 survivor=$3 before t0 gap out
	apps_wait_acks 30
	before=$(apps_acked)
	t0=$(date +%s%3N)
	apps_crash "$victim" "$module"
	rig_wait_label "$survivor" "$module" 'ALONE/running' 900
	apps_wait_acks 10
	out=$(apps_check_acked)
	# Outage the client saw: the longest time without a commit around the crash.
	gap=$(awk -v t="$t0" '$2 <= t { prev = $2; next } prev { d = $2 - prev; if (d > max) max = d } { prev = $2 } END { print max + 0 }' "$APPS_ACKS")
	rig_log "$victim crashed after $before commits; $survivor serves all $(jq .acked <<<"$out") acknowledged ids ($(jq .rows <<<"$out") rows); no commit for $gap ms"
	apps_return "$victim"
	rig_wait_label "$victim" "$module" 'SECOND/in-sync' 900
	rig_wait_label "$survivor" "$module" 'PRIM/running' 100
}

# apps_quiesce_and_compare PRIM SECOND DIR-ON-PRIM DIR-ON-SECOND: the app on PRIM is
# already stopped cleanly; flush the mount (syncfs writes back dirty pages, an fsync of
# the directory waits until the peer acknowledged everything before it), stop both skd
# (SECOND first, so it cannot take over), then compare both trees by an independent hash.
apps_quiesce_and_compare() {
	local prim=$1 second=$2 dp=$3 ds=$4 hp hs
	rig_in_skd "$prim" sync -f "$dp"
	rig_in_skd "$prim" "$APPS_PY" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' "$dp"
	rig_stop_skd "$second" KILL
	rig_stop_skd "$prim" KILL
	hp=$(rig_tree_hash "$dp")
	hs=$(rig_tree_hash "$ds")
	[ "$hp" = "$hs" ] || {
		diff <(cd "$dp" && find . -type f -print0 | sort -z | xargs -0 sha256sum) \
			<(cd "$ds" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | head -10 >&2
		rig_fail "data dirs differ after the final stop: $prim $hp, $second $hs"
	}
	rig_log "both data dirs identical after the final stop: $hp ($(du -sh "$dp" | cut -f1))"
}

# ---- runner ----

# On failure: the end of every module log and skd log, as TAP comments.
_apps_dump() {
	local f
	[ -n "$RIG_DIR" ] || return 0
	for f in "$RIG_DIR"/n*/log/*.log "$RIG_DIR"/n*/skd.log; do
		[ -f "$f" ] || continue
		echo "# ---- ${f#"$RIG_DIR"/}" >&2
		tail -n "${APPS_DUMP_LINES:-25}" "$f" | sed 's/^/#   /' >&2
	done
	# A daemon that died: what it said last before dying.
	for f in "$RIG_DIR"/n*/skd.log; do
		grep -B 8 -E 'terminate called|what\(\)|Assertion|Sanitizer|panic' "$f" 2>/dev/null | sed "s|^|# ${f#"$RIG_DIR"/}: |" >&2 || true
	done
}

# rig_main runs the tests: diagnostics when one fails, our cleanup before its teardown.
RIG_ON_FAILURE=_apps_dump
RIG_BEFORE_TEARDOWN=_apps_cleanup
