#!/usr/bin/env bash
# Checkers in a real two-node mirror cluster: a tcp checker on the app's port
# restarts the app locally, escalates to failover once maxloop restarts are used,
# and with action none only reports; a ping checker with action wait holds the
# node while its router is unreachable.
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/mirror.sh"

# _checker_cluster MODULE_JSON: n1 PRIM, n2 SECOND in sync, module web with these
# extra keys (its checkers).
_checker_cluster() {
	rig_setup 2 1
	rig_write_cluster
	rig_write_mirror_module web "$1"
	rig_start_skd n1
	rig_start_skd n2
	rig_skctl n2 start -m web >/dev/null
	rig_skctl n1 prim -m web >/dev/null
	rig_wait_label n1 web 'PRIM/running'
	rig_wait_label n2 web 'SECOND/in-sync'
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

rig_main "$@"
