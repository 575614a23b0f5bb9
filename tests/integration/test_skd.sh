#!/usr/bin/env bash
# skd basics in the namespace rig: two nodes answer status, bad configs are
# refused with their errors, SIGHUP reload keeps the running config when the
# new one is invalid, SIGTERM stops cleanly, skctl reports a missing daemon.
. "$(dirname "$0")/lib/rig.sh"

test_two_nodes_answer_status() {
	rig_setup 2 0
	rig_write_cluster
	rig_start_skd n1
	rig_start_skd n2
	local s1 s2
	s1=$(rig_skctl n1 status --json)
	s2=$(rig_skctl n2 status --json)
	[ "$(jq -r .node.name <<<"$s1")" = n1 ] || rig_fail "n1 status names node $(jq -r .node.name <<<"$s1")"
	[ "$(jq -r .node.name <<<"$s2")" = n2 ] || rig_fail "n2 status names node $(jq -r .node.name <<<"$s2")"
	[ "$(jq -r .cluster <<<"$s1")" = rig ] || rig_fail "cluster name: $(jq -r .cluster <<<"$s1")"
	[ "$(jq -r .schema <<<"$s1")" = sk.status/1 ] || rig_fail "schema: $(jq -r .schema <<<"$s1")"
	rig_skctl n1 status | grep -q '^node n1 (id 1) of cluster rig' || rig_fail "human status of n1"
	# The control socket is private to root.
	[ "$(stat -c %a "$RIG_DIR/n1/run/skd.sock")" = 600 ] || rig_fail "socket mode $(stat -c %a "$RIG_DIR/n1/run/skd.sock")"
}

test_invalid_config_refused_with_all_errors() {
	rig_setup 1 0
	rig_write_cluster
	# Two problems: a typo'd key and a bad address.
	sed -i 's/"cluster": "rig"/"clustr": "rig"/; s/"198.18.0.11"/"198.18.0.311"/' "$RIG_DIR/n1/cluster.json"
	local out rc=0
	out=$(rig_exec n1 "$SKD" --config "$RIG_DIR/n1/cluster.json" --node n1 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || rig_fail "skd exit code $rc, expected 2"
	grep -q '/clustr' <<<"$out" || rig_fail "no error for the unknown key: $out"
	grep -q '198.18.0.311' <<<"$out" || rig_fail "no error for the bad address: $out"
	# The renamed key also leaves "cluster" missing: three errors, all reported.
	grep -q '/cluster: missing required key' <<<"$out" || rig_fail "no error for the missing key: $out"
	grep -q '3 configuration error' <<<"$out" || rig_fail "error count missing: $out"
}

test_unknown_node_refused() {
	rig_setup 1 0
	rig_write_cluster
	local out rc=0
	out=$(rig_exec n1 "$SKD" --config "$RIG_DIR/n1/cluster.json" --node nosuch 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || rig_fail "skd exit code $rc, expected 2"
	grep -q "'nosuch' is not among the nodes" <<<"$out" || rig_fail "message: $out"
}

test_sighup_reload_keeps_running_config_when_invalid() {
	rig_setup 1 0
	rig_write_cluster
	rig_start_skd n1
	local pid; pid=$(rig_skd_pid n1)
	cp "$RIG_DIR/n1/cluster.json" "$RIG_DIR/n1/cluster.good"
	sed -i 's/"id": 1/"id": "one"/' "$RIG_DIR/n1/cluster.json"
	kill -HUP "$pid"
	rig_wait_for 30 grep -q 'reload rejected' "$RIG_DIR/n1/skd.log" || rig_fail "no rejection logged"
	kill -0 "$pid" || rig_fail "skd died on an invalid reload"
	local s; s=$(rig_skctl n1 status --json)
	[ "$(jq -r .config.reloads <<<"$s")" = 0 ] || rig_fail "reload counted though rejected"
	[ "$(jq -r '.config.last_reload_errors | length' <<<"$s")" -ge 1 ] || rig_fail "reload errors not in status"
	# skctl reload reports the errors and exits 1.
	local out rc=0
	out=$(rig_skctl n1 reload 2>&1) || rc=$?
	[ "$rc" -eq 1 ] || rig_fail "skctl reload exit $rc, expected 1"
	grep -q '/nodes/0/id' <<<"$out" || rig_fail "skctl reload output: $out"
	# A valid config reloads.
	cp "$RIG_DIR/n1/cluster.good" "$RIG_DIR/n1/cluster.json"
	rig_skctl n1 reload | grep -q 'configuration reloaded' || rig_fail "valid reload"
	[ "$(rig_skctl n1 status --json | jq -r .config.reloads)" = 1 ] || rig_fail "reload not counted"
}

test_sigterm_stops_cleanly_and_skctl_reports_missing_daemon() {
	rig_setup 1 0
	rig_write_cluster
	rig_start_skd n1
	local pid rc=0 out
	pid=$(rig_skd_pid n1)
	kill -TERM "$pid"
	rig_wait_for 50 _rig_gone "$pid" || rig_fail "skd did not stop on SIGTERM"
	wait "$pid" || rig_fail "skd exit status $? after SIGTERM"
	[ ! -e "$RIG_DIR/n1/run/skd.sock" ] || rig_fail "control socket left behind"
	out=$(rig_skctl n1 status 2>&1) || rc=$?
	[ "$rc" -eq 3 ] || rig_fail "skctl exit $rc without skd, expected 3"
	grep -q 'skd is not running' <<<"$out" || rig_fail "skctl message: $out"
}

test_malformed_control_requests_do_not_crash() {
	rig_setup 1 0
	rig_write_cluster
	rig_start_skd n1
	local sock="$RIG_DIR/n1/run/skd.sock" r
	r=$(printf 'garbage\n' | socat -t2 - "UNIX-CONNECT:$sock")
	grep -q 'malformed request' <<<"$r" || rig_fail "garbage reply: $r"
	r=$(printf '{"cmd":"nope"}\n' | socat -t2 - "UNIX-CONNECT:$sock")
	grep -q 'unknown command' <<<"$r" || rig_fail "unknown cmd reply: $r"
	head -c 100000 /dev/zero | tr "\0" a | socat -t2 - "UNIX-CONNECT:$sock" >/dev/null 2>&1 || true
	rig_skctl n1 status >/dev/null || rig_fail "skd stopped answering after bad input"
}

rig_main "$@"
