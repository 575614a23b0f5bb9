#!/usr/bin/env bash
# Checkers in a real two-node mirror cluster: a tcp checker on the app's port
# restarts the app locally, escalates to failover once maxloop restarts are used,
# and with action none only reports; a ping checker with action wait holds the
# node while its router is unreachable; an interface checker fails over when the
# client link goes down; custom checker scripts restart the app by exit status,
# and one that hangs is killed at its timeout without stalling the heartbeats.
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/mirror.sh"

# _checker_cluster MODULE_JSON: n1 PRIM, n2 SECOND in sync, module web with these
# extra keys (its checkers).
_checker_cluster() {
	_checker_config "$1"
	_checker_start
}

# _checker_config MODULE_JSON [NETWORKS]: the rig and every node's configs, nothing started.
_checker_config() {
	rig_setup 2 1 "${2:-1}"
	rig_write_cluster
	rig_write_mirror_module web "$1"
}

# _checker_script NAME BODY: scripts/NAME of module web on every node (a custom checker's).
_checker_script() {
	local node f
	for node in "${RIG_NODES[@]}"; do
		f="$RIG_DIR/$node/modules/web/scripts/$1"
		printf '#!/bin/bash\n%s\n' "$2" >"$f"
		chmod 755 "$f"
	done
}

# _module_edit JQ_FILTER: rewrites module web's module.json on every node (before skd starts).
_module_edit() {
	local node f
	for node in "${RIG_NODES[@]}"; do
		f="$RIG_DIR/$node/modules/web/module.json"
		jq "$1" "$f" >"$f.new"
		mv "$f.new" "$f"
	done
}

# _checker_start: n1 PRIM, n2 SECOND in sync.
_checker_start() {
	rig_start_pair web
}

# _checker_pair ACTION MAXLOOP: n1 PRIM, n2 SECOND, tcp checker "app" on the VIP service.
_checker_pair() {
	local action=$1 maxloop=$2
	_checker_cluster "\"checkers\": [ { \"name\": \"app\", \"type\": \"tcp\", \"address\": \"$RIG_VIP\",
      \"port\": $RIG_VIP_PORT, \"interval_ms\": 200, \"timeout_ms\": 200, \"when\": \"prim\", \"action\": \"$action\" } ],
  \"failover\": { \"maxloop\": $maxloop, \"loop_interval_s\": 3600 }"
	[ "$(rig_vip_answer)" = n1 ] || rig_fail "client got '$(rig_vip_answer)' from the VIP, expected n1"
	_wait_checker n1 app ok
}

# _checker_json NODE CHECKER: the checker's status object ("" if absent).
_checker_json() {
	rig_skctl "$1" status --json 2>/dev/null |
		jq -c --arg c "$2" '.modules[] | select(.name == "web") | (.checkers.checkers? // .checkers // [])[] | select(.name == $c)' 2>/dev/null || true
}

# _wait_checker NODE CHECKER STATE [TRIES]
_wait_checker() {
	local node=$1 checker=$2 want=$3 tries=${4:-50} got="" i
	for ((i = 0; i < tries; i++)); do
		got=$(_checker_json "$node" "$checker" | jq -r '.state' 2>/dev/null || true)
		[ "$got" = "$want" ] && return 0
		sleep 0.1
	done
	rig_fail "$node: checker $checker is '$got', expected '$want'"
}

# How many times NODE ran SCRIPT (from the shared script log).
_runs() { grep -c "^$1 $2 " "$RIG_DIR/scripts.log" || true; }
_runs_is() { [ "$(_runs "$1" "$2")" = "$3" ]; }

# Kills the app on NODE (its whole process group), as a crash of the service would.
_kill_app() {
	local pidfile="$RIG_DIR/$1/state/web/app.pid" pid
	pid=$(cat "$pidfile" 2>/dev/null || true)
	[ -n "$pid" ] || rig_fail "no app pid on $1"
	kill -KILL -- "-$pid" 2>/dev/null || true
}

test_checker_restarts_app_locally() {
	_checker_pair restart 2
	[ "$(_runs n1 start_prim)" = 1 ] || rig_fail "start_prim ran $(_runs n1 start_prim) times before the fault"
	_kill_app n1
	rig_wait_for 100 _runs_is n1 start_prim 2 || rig_fail "the app was not restarted on n1"
	rig_wait_label n1 web 'PRIM/running'
	rig_wait_for 50 rig_vip_answer_is n1 || rig_fail "client does not reach n1 after the restart"
	_wait_checker n1 app ok
	[ "$(_runs n2 start_prim)" = 0 ] || rig_fail "n2 started the app: a local restart must not fail over"
	_checker_json n1 app | jq -e '.fail_count >= 2' >/dev/null || rig_fail "fail_count not counted: $(_checker_json n1 app)"
	grep -q 'restart' "$RIG_DIR/n1/skd.log" || rig_fail "no restart decision in n1's log"
}

test_checker_escalates_to_failover_after_maxloop() {
	_checker_pair restart 1
	_kill_app n1
	rig_wait_for 100 _runs_is n1 start_prim 2 || rig_fail "the app was not restarted on n1"
	rig_wait_label n1 web 'PRIM/running'
	_wait_checker n1 app ok
	# Second failure within loop_interval: maxloop (1) is used up, so n2 takes over.
	_kill_app n1
	rig_wait_label n2 web '(PRIM|ALONE)/running' 100
	rig_wait_for 50 rig_vip_answer_is n2 || rig_fail "client does not reach n2 after the failover"
	[ "$(rig_vip_holders)" = n2 ] || rig_fail "VIP holders after failover: '$(rig_vip_holders)'"
	grep -q 'escalating to stopstart' "$RIG_DIR/n1/skd.log" || rig_fail "no escalation logged on n1"
}

test_checker_action_none_only_reports() {
	_checker_pair none 3
	_kill_app n1
	_wait_checker n1 app failed
	sleep 1
	[ "$(_runs n1 start_prim)" = 1 ] || rig_fail "action none restarted the app"
	rig_wait_label n1 web 'PRIM/.*' 5
	[ "$(_runs n2 start_prim)" = 0 ] || rig_fail "action none failed over"
	_checker_json n1 app | jq -e '.last_failure.detail | test("tcp")' >/dev/null ||
		rig_fail "last failure not shown: $(_checker_json n1 app)"
}

# A ping checker on a router (the client's address) with action wait: cut the route
# from n1 only. n1 stops its app and holds (WAIT/checker-hold), the in-sync n2 takes
# over, n1 rejoins it as SECOND (the held checker keeps running there); with the
# route back the checker clears and nothing holds n1 any more.
test_checker_wait_holds_while_the_router_is_unreachable() {
	local router; router=$(rig_client_ip 1)
	_checker_cluster "\"checkers\": [ { \"name\": \"router\", \"type\": \"ping\", \"address\": \"$router\",
      \"interval_ms\": 200, \"timeout_ms\": 300, \"when\": \"prim\", \"action\": \"wait\" } ]"
	_wait_checker n1 router ok
	rig_exec n1 ip route add blackhole "$router/32"
	rig_wait_label n2 web '(ALONE|PRIM)/running' 100
	grep -q 'WAIT/checker-hold' "$RIG_DIR/n1/skd.log" || rig_fail "n1 did not hold in WAIT/checker-hold"
	rig_wait_for 50 rig_vip_answer_is n2 || rig_fail "client does not reach n2 after n1 held"
	[ "$(rig_vip_holders)" = n2 ] || rig_fail "VIP holders while n1 holds: '$(rig_vip_holders)'"
	rig_wait_label n1 web 'SECOND/in-sync' 100
	_checker_json n1 router | jq -e '.state == "failed"' >/dev/null ||
		rig_fail "n1's router checker should still fail: $(_checker_json n1 router)"
	rig_exec n1 ip route del blackhole "$router/32"
	# Cleared: it stops holding (and, when prim, stops running on a SECOND).
	rig_wait_for 100 grep -q 'resume: checker router is ok again' "$RIG_DIR/n1/skd.log" ||
		rig_fail "n1 logged no resume once the router answered"
	rig_skctl n1 status --json | jq -e '.modules[] | select(.name == "web") | (.checkers.waiting_on // []) | length == 0' >/dev/null ||
		rig_fail "n1 still waits on a checker: $(rig_skctl n1 status --json | jq -c '.modules[0].checkers')"
	rig_wait_label n1 web 'SECOND/in-sync' 10
}

# Two networks: heartbeats on net1 only, clients and the VIP on net0. An interface
# checker (stopstart) on n1's eth0: with that link down n1 gives up serving, the
# in-sync n2 takes over while the heartbeats on net1 still flow (a checker
# failover, not a lost peer), and n1 rejoins as SECOND.
test_checker_interface_down_fails_over() {
	_checker_config "\"checkers\": [ { \"name\": \"link\", \"type\": \"interface\", \"interface\": \"eth0\",
      \"when\": \"prim\", \"action\": \"stopstart\" } ]" 2
	_module_edit '.heartbeat.networks = ["net1"]'
	_checker_start
	_wait_checker n1 link ok
	rig_wait_for 50 rig_vip_answer_is n1 || rig_fail "client got '$(rig_vip_answer)' from the VIP, expected n1"
	rig_exec n1 ip link set eth0 down
	rig_wait_label n2 web '(PRIM|ALONE)/running' 100
	rig_wait_for 50 rig_vip_answer_is n2 || rig_fail "client does not reach n2 after the failover"
	[ "$(rig_vip_holders)" = n2 ] || rig_fail "VIP holders after failover: '$(rig_vip_holders)'"
	grep -qF 'checker link failed (interface eth0 is administratively down); action stopstart' \
		"$RIG_DIR/n1/skd.log" || rig_fail "no stopstart decision for the down link in n1's log"
	grep -q 'gave up the primary role' "$RIG_DIR/n1/skd.log" || rig_fail "n1 logged no giving up"
	[ "$(_runs n2 start_prim)" = 1 ] || rig_fail "start_prim ran $(_runs n2 start_prim) times on n2"
	# n1 still hears n2 on net1: it rejoins as the replica with its eth0 down, and
	# both stay so past the heartbeat timeout (500 ms).
	rig_wait_label n1 web 'SECOND/in-sync' 100
	rig_wait_label n2 web 'PRIM/running' 50
	sleep 1
	rig_wait_label n1 web 'SECOND/in-sync' 1
	rig_wait_label n2 web 'PRIM/running' 1
	! grep -q 'peer n1 lost' "$RIG_DIR/n2/skd.log" || rig_fail "n2 lost n1, yet the heartbeats on net1 flow"
	! grep -q 'peer n2 lost' "$RIG_DIR/n1/skd.log" || rig_fail "n1 lost n2, yet the heartbeats on net1 flow"
	_checker_json n1 link | jq -e '.running == false' >/dev/null ||
		rig_fail "the prim-only checker still runs on the SECOND: $(_checker_json n1 link)"
	rig_exec n1 ip link set eth0 up
	rig_wait_label n1 web 'SECOND/in-sync' 100
	rig_wait_label n2 web 'PRIM/running' 50
	[ "$(rig_vip_holders)" = n2 ] || rig_fail "VIP holders once eth0 is back: '$(rig_vip_holders)'"
	rig_wait_for 20 rig_vip_answer_is n2 || rig_fail "client got '$(rig_vip_answer)' from the VIP once eth0 is back, expected n2"
}

# A custom checker (restart) whose script fails while a flag file exists: the app
# restarts locally once; with the flag removed the checker is ok again and the
# restart stays the only one.
test_checker_custom_script_failure_restarts() {
	_checker_config "\"checkers\": [ { \"name\": \"health\", \"type\": \"custom\", \"script\": \"health\",
      \"interval_ms\": 1000, \"timeout_ms\": 2000, \"when\": \"prim\", \"action\": \"restart\" } ],
  \"failover\": { \"maxloop\": 3, \"loop_interval_s\": 3600 }"
	_checker_script health "if [ -e \"$RIG_DIR/\$SK_NODE/bad\" ]; then echo \"flag \$SK_NODE/bad present\"; exit 1; fi"
	_checker_start
	_wait_checker n1 health ok 50
	[ "$(_runs n1 start_prim)" = 1 ] || rig_fail "start_prim ran $(_runs n1 start_prim) times before the fault"
	touch "$RIG_DIR/n1/bad"
	# Two failed checks 1 s apart, then the restart: remove the flag as soon as
	# the app starts again, long before the restarted checker could fail twice.
	rig_wait_for 100 _runs_is n1 start_prim 2 || rig_fail "the app was not restarted on n1"
	rm -f "$RIG_DIR/n1/bad"
	rig_wait_label n1 web 'PRIM/running'
	_wait_checker n1 health ok 50
	rig_wait_for 50 rig_vip_answer_is n1 || rig_fail "client does not reach n1 after the restart"
	sleep 1.5
	[ "$(_runs n1 start_prim)" = 2 ] || rig_fail "start_prim ran $(_runs n1 start_prim) times on n1, expected 2"
	[ "$(_runs n2 start_prim)" = 0 ] || rig_fail "n2 started the app: a local restart must not fail over"
	rig_wait_label n2 web 'SECOND/in-sync' 5
	_checker_json n1 health | jq -e '.fail_count >= 2 and (.last_failure.detail | test("exited 1: flag n1/bad present"))' >/dev/null ||
		rig_fail "failure not shown: $(_checker_json n1 health)"
	rig_skctl n1 status --json | jq -e '.modules[] | select(.name == "web") | .checkers.policy.restarts_used == 1' >/dev/null ||
		rig_fail "restarts_used: $(rig_skctl n1 status --json | jq -c '.modules[0].checkers.policy')"
	grep -q 'action restart: local restart 1 of 3' "$RIG_DIR/n1/skd.log" || rig_fail "no restart decision in n1's log"
}

# Is PID a live process (not gone, not a zombie)?
_running() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat%% *}" != Z ]
}

# PIDs of `sleep 600` processes running in NODE's namespace.
_hung_sleeps() {
	local pid
	for pid in $(ip netns pids "$(rig_ns "$1")"); do
		[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "sleep 600 " ] && _running "$pid" && echo "$pid"
	done
	return 0
}

# Every hang script run on NODE recorded "<script pid> <sleep pid>". No process of
# a run but the last one runs any more, and the only `sleep 600` in the node's
# namespace (if any) is the last run's (called again by rig_wait_for: a run may
# start between the two looks).
_only_last_hang_runs() {
	local f="$RIG_DIR/$1/hang.pids" live last pid
	live=$(_hung_sleeps "$1")
	last=$(tail -n 1 "$f")
	for pid in $(head -n -1 "$f"); do
		if _running "$pid"; then rig_log "pid $pid of an earlier run still runs"; return 1; fi
	done
	for pid in $live; do
		[ "$pid" = "${last#* }" ] || { rig_log "sleep $pid is not the last run's (${last#* })"; return 1; }
	done
}

# Has FILE more than N lines?
_more_lines() { [ "$(wc -l <"$1")" -gt "$2" ]; }

# No process of any hang script run is left on NODE.
_no_hang_runs() {
	local pid
	for pid in $(<"$RIG_DIR/$1/hang.pids"); do
		if _running "$pid"; then return 1; fi
	done
	[ -z "$(_hung_sleeps "$1")" ]
}

# A custom checker whose script ignores SIGTERM and sleeps far past its 500 ms
# timeout: each run's process group is killed (SIGKILL after the grace), the
# checker fails with a timeout (action none: reported only), and skd's event loop
# never stalls: for several seconds n2 sees n1 PRIM and stays SECOND/in-sync.
test_checker_hanging_script_is_killed_and_heartbeats_flow() {
	local i bad n1_lines n2_lines runs
	_checker_config "\"checkers\": [ { \"name\": \"hang\", \"type\": \"custom\", \"script\": \"hang\",
      \"interval_ms\": 1000, \"timeout_ms\": 500, \"when\": \"prim\", \"action\": \"none\" } ]"
	_checker_script hang "trap '' TERM
sleep 600 &
echo \"\$\$ \$!\" >>\"$RIG_DIR/\$SK_NODE/hang.pids\"
wait"
	_checker_start
	# From here on neither side may change state (until the admin stops below).
	n1_lines=$(wc -l <"$RIG_DIR/n1/skd.log")
	n2_lines=$(wc -l <"$RIG_DIR/n2/skd.log")
	_wait_checker n1 hang failed 100
	_checker_json n1 hang | jq -e '.last_failure.detail | test("hang timed out after 500 ms \\(process group killed\\)")' >/dev/null ||
		rig_fail "last failure is not the timeout: $(_checker_json n1 hang)"
	grep -q 'script hang (pid [0-9]*) still there after [0-9]* ms, sending SIGKILL' "$RIG_DIR/n1/skd.log" ||
		rig_fail "n1 never escalated to SIGKILL for the hanging script"
	[ "$(wc -l <"$RIG_DIR/n1/hang.pids")" -ge 2 ] || rig_fail "hang ran $(wc -l <"$RIG_DIR/n1/hang.pids") times"
	# Watch for 5 s (about five hung runs): no transition on either side (the
	# logs below tell of any, however short; a few tries only ride out a slow skctl).
	for ((i = 0; i < 10; i++)); do
		rig_wait_label n1 web 'PRIM/running' 3
		rig_wait_label n2 web 'SECOND/in-sync' 3
		sleep 0.5
	done
	rig_wait_for 10 _only_last_hang_runs n1 || { _only_last_hang_runs n1 || true; rig_fail "a timed-out hang run survived"; }
	[ "$(wc -l <"$RIG_DIR/n1/hang.pids")" -ge 5 ] || rig_fail "hang ran only $(wc -l <"$RIG_DIR/n1/hang.pids") times"
	_checker_json n1 hang | jq -e '.state == "failed" and .fail_count >= 5' >/dev/null ||
		rig_fail "checker after the watch: $(_checker_json n1 hang)"
	bad=$(tail -n +"$((n2_lines + 1))" "$RIG_DIR/n2/skd.log" | grep -E 'peer n1 lost|mirror: web: .* -> ' || true)
	[ -z "$bad" ] || rig_fail "n2 saw a false failure of n1: $bad"
	bad=$(tail -n +"$((n1_lines + 1))" "$RIG_DIR/n1/skd.log" | grep -E 'peer n2 lost|mirror: web: .* -> ' || true)
	[ -z "$bad" ] || rig_fail "n1 saw a false failure of n2: $bad"
	[ "$(_runs n1 start_prim)" = 1 ] || rig_fail "action none restarted the app"
	[ "$(_runs n2 start_prim)" = 0 ] || rig_fail "action none failed over"
	# An admin stop while a run is in flight cancels it: nothing of it is left.
	rig_skctl n2 stop -m web >/dev/null
	rig_wait_label n1 web 'ALONE/running' 50
	runs=$(wc -l <"$RIG_DIR/n1/hang.pids")
	rig_wait_for 20 _more_lines "$RIG_DIR/n1/hang.pids" "$runs" || rig_fail "no hang run after $runs"
	rig_skctl n1 stop -m web >/dev/null
	rig_wait_label n1 web 'STOP/.*' 50
	rig_wait_for 20 _no_hang_runs n1 || rig_fail "hang processes left after the stop: $(_hung_sleeps n1)"
	grep -q 'cancelling script hang' "$RIG_DIR/n1/skd.log" || rig_fail "the stop cancelled no hang run"
}

rig_main "$@"
