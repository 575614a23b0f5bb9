#!/usr/bin/env bash
# Farm module in the namespace rig: 3 nodes, 2 client namespaces with several source
# addresses each. Many connections through the VIP, each answered by exactly one node;
# session affinity with hash ip; a crashed node's clients move to the survivors within
# timeout + 200 ms while the other clients are undisturbed, and only its share moves
# back when it returns; an admin stop loses no new connection; ARP answers carry the
# virtual MAC and the VIP is never on the farm interface.
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/farm.sh"

FARM_IPS_PER_CLIENT=${FARM_IPS_PER_CLIENT:-8}

# Three nodes UP with one agreed view; FARM_C1/FARM_C2 hold the clients' source addresses.
# _farm_up HASH [EXTRA_JSON [SETUP_CMD]]: extra module.json members; SETUP_CMD runs
# before skd starts.
_farm_up() {
	local hash=$1 node
	rig_setup 3 2
	rig_write_cluster
	farm_write_module web "$hash" "${2:-}"
	[ -z "${3:-}" ] || "$3"
	for node in n1 n2 n3; do rig_start_skd "$node"; done
	for node in n1 n2 n3; do rig_skctl "$node" start -m web >/dev/null; done
	for node in n1 n2 n3; do farm_wait_label "$node" web 'UP/running'; done
	farm_wait_agreed web "n1 n2 n3" n1 n2 n3
	FARM_C1=$(farm_client_ips 1 "$FARM_IPS_PER_CLIENT")
	FARM_C2=$(farm_client_ips 2 "$FARM_IPS_PER_CLIENT")
}

# _check_once FILE: every connection got exactly one answer, from a known node.
_check_once() {
	local file=$1 bad
	bad=$(jq -r '.results[] | select(.error != null or (.answer | test("^n[123]$") | not)) | "\(.src): \(.error // .answer)"' "$file" | head -5)
	[ -z "$bad" ] || rig_fail "connections without exactly one answer: $bad"
}

test_many_connections_each_served_once() {
	_farm_up ip_port
	farm_once c1 "$FARM_C1" 25 >"$RIG_DIR/c1.json" &
	local p1=$!
	farm_once c2 "$FARM_C2" 25 >"$RIG_DIR/c2.json"
	wait "$p1"
	_check_once "$RIG_DIR/c1.json"
	_check_once "$RIG_DIR/c2.json"
	local total per
	total=$(jq -s '[.[].results[]] | length' "$RIG_DIR/c1.json" "$RIG_DIR/c2.json")
	[ "$total" -eq $((2 * FARM_IPS_PER_CLIENT * 25)) ] || rig_fail "expected $((2 * FARM_IPS_PER_CLIENT * 25)) results, got $total"
	per=$(jq -s -r '[.[].results[].answer] | group_by(.) | map("\(.[0])=\(length)") | join(" ")' "$RIG_DIR/c1.json" "$RIG_DIR/c2.json")
	rig_log "connections per node: $per"
	for node in n1 n2 n3; do
		grep -q "$node=" <<<"$per" || rig_fail "$node served no connection ($per): the load is not shared"
	done
	# Every node dropped what it does not own.
	for node in n1 n2 n3; do
		[ "$(farm_xdp "$node" web drop_not_owned)" -gt 0 ] || rig_fail "$node dropped nothing"
	done
	# skctl state: a line per node with its share; this node's with its packet counts.
	local st
	st=$(rig_skctl n1 state -m web)
	for node in n1 n2 n3; do
		grep -Eq "^web +$node +UP/running +share [0-9]+/256 buckets" <<<"$st" || rig_fail "skctl state lacks $node's share:
$st"
	done
	rig_log "$st"
	grep -Eq "^web +n1 .*packets kept [1-9][0-9]* dropped [1-9]" <<<"$st" || rig_fail "skctl state lacks n1's counts:
$st"
}

test_affinity_keeps_a_client_ip_on_one_node() {
	_farm_up ip
	farm_once c1 "$FARM_C1" 6 >"$RIG_DIR/c1.json"
	_check_once "$RIG_DIR/c1.json"
	local split nodes
	split=$(jq -r '.results | group_by(.src)[] | select((map(.answer) | unique | length) > 1) | .[0].src' "$RIG_DIR/c1.json")
	[ -z "$split" ] || rig_fail "source addresses served by more than one node: $split"
	nodes=$(jq -r '[.results[].answer] | unique | length' "$RIG_DIR/c1.json")
	[ "$nodes" -ge 2 ] || rig_fail "$FARM_IPS_PER_CLIENT addresses all landed on one node"
}

test_crash_moves_only_the_dead_nodes_clients() {
	_farm_up ip
	local all="$FARM_C1 $FARM_C2" victim="" node before after
	before=$(farm_map c1 "$FARM_C1"; farm_map c2 "$FARM_C2")
	# The responder (n1) if it serves someone, so ARP takeover is exercised too.
	for node in n1 n2 n3; do
		if grep -q "=$node\$" <<<"$before"; then victim=$node; break; fi
	done
	[ -n "$victim" ] || rig_fail "no node serves any client: $before"
	local survivors; survivors=$(printf '%s\n' n1 n2 n3 | grep -v "^$victim\$" | tr '\n' ' ')
	survivors=${survivors% }
	rig_log "crashing $victim; mapping before: $(tr '\n' ' ' <<<"$before")"

	# The victim's clients probe with a short connect timeout (to time their move); the
	# others with 1 s: shorter than the first SYN retransmission, so any dropped SYN or
	# reset counts as a disturbance, while a slow fork of the app on this busy box does not.
	local moving="" staying="" ip was c
	for c in 1 2; do
		for ip in $(eval "echo \$FARM_C$c"); do
			was=$(grep "^$ip=" <<<"$before" | cut -d= -f2)
			if [ "$was" = "$victim" ]; then eval "moving_c$c+=' $ip'"; else eval "staying_c$c+=' $ip'"; fi
		done
	done
	for c in 1 2; do
		moving=$(eval "echo \${moving_c$c:-}")
		staying=$(eval "echo \${staying_c$c:-}")
		[ -z "$moving" ] || farm_start_probe "m$c" "c$c" "$moving" "$RIG_DIR/m$c.json" 0.1
		[ -z "$staying" ] || farm_start_probe "s$c" "c$c" "$staying" "$RIG_DIR/s$c.json" 1
	done
	sleep 0.3
	farm_crash_node "$victim" web
	# shellcheck disable=SC2086
	farm_wait_agreed web "$survivors" $survivors
	sleep 0.5
	for c in m1 m2 s1 s2; do farm_stop_probe "$c"; done

	local limit=$((${RIG_HB_TIMEOUT:-500} + 200 + 100)) stats
	for ip in $all; do
		was=$(grep "^$ip=" <<<"$before" | cut -d= -f2)
		stats=$(cat "$RIG_DIR"/[ms][12].json 2>/dev/null | jq -c --arg ip "$ip" '.ips[$ip] // empty')
		[ -n "$stats" ] || rig_fail "no probe result for $ip"
		if [ "$was" = "$victim" ]; then
			jq -e --arg v "$victim" '(.runs | first) == $v and (.runs | last) != $v' <<<"$stats" >/dev/null ||
				rig_fail "$ip (on $victim) did not move to a survivor: $stats"
			jq -e --argjson l "$limit" '.gap_ms <= $l' <<<"$stats" >/dev/null ||
				rig_fail "$ip was without service longer than $limit ms: $stats"
			rig_log "$ip moved $victim -> $(jq -r '.runs | last' <<<"$stats") in $(jq .gap_ms <<<"$stats") ms"
		else
			jq -e --arg w "$was" '.failures == 0 and .runs == [$w]' <<<"$stats" >/dev/null ||
				rig_fail "$ip (on $was) was disturbed by the crash of $victim: $stats"
		fi
	done

	# The node returns (skd resumes the module): only its share moves back.
	local mid; mid=$(farm_map c1 "$FARM_C1"; farm_map c2 "$FARM_C2")
	rig_start_skd "$victim"
	rig_skctl "$victim" start -m web >/dev/null 2>&1 || true	# refused when already resumed
	farm_wait_label "$victim" web 'UP/running'
	farm_wait_agreed web "n1 n2 n3" n1 n2 n3
	after=$(farm_map c1 "$FARM_C1"; farm_map c2 "$FARM_C2")
	[ "$after" = "$before" ] || rig_fail "mapping after return differs from before the crash:
before: $(tr '\n' ' ' <<<"$before")
after:  $(tr '\n' ' ' <<<"$after")"
	local line
	while read -r line; do
		ip=${line%%=*}
		if [ "$(grep "^$ip=" <<<"$after")" != "$line" ] && [ "$(grep "^$ip=" <<<"$after" | cut -d= -f2)" != "$victim" ]; then
			rig_fail "$ip moved to a node other than the returning $victim"
		fi
	done <<<"$mid"
}

test_admin_stop_fails_no_connection() {
	_farm_up ip_port
	# A real client's SYN retransmission is allowed (3 s connect timeout): a dropped SYN is
	# not a failure, a reset or an unanswered connection is.
	farm_start_probe p1 c1 "$FARM_C1" "$RIG_DIR/p1.json" 3
	farm_start_probe p2 c2 "$FARM_C2" "$RIG_DIR/p2.json" 3
	sleep 0.3
	rig_skctl n2 stop -m web >/dev/null
	farm_wait_label n2 web 'STOP/idle'
	farm_wait_agreed web "n1 n3" n1 n3
	sleep 0.3
	farm_stop_probe p1
	farm_stop_probe p2
	# No connection failed: new ones (begun once n2's filter held a table without its buckets)
	# went to the others, and the ones n2 had accepted kept going to n2 until they closed
	# (the others' tables drained those buckets from n2, and n2 waited for its connections
	# before taking the VIP down). A SYN dropped in the handover gap is retransmitted.
	local bad leaving released
	leaving=$(farm_json n2 web | jq '[.transitions[] | select(.to == "WAIT/leaving")] | last | .at_ms')
	[ "$leaving" != null ] || rig_fail "n2 never went through WAIT/leaving"
	released=$(farm_json n2 web | jq --argjson t "$leaving" \
		'[.owner_installs[] | select(.at_ms >= $t and .buckets_here == 0)] | first | .at_us')
	[ "$released" != null ] || rig_fail "n2 never installed a table without its buckets after WAIT/leaving"
	rig_log "n2 went WAIT/leaving at $leaving ms, its filter released its buckets $((released / 1000 - leaving)) ms later"
	bad=$(jq -r --argjson t "$released" '.ips | to_entries[] | select(.value.failures > 0) | "\(.key): \(.value.errors), begun \([.value.failed_at_us[] - $t]) µs after the release"' "$RIG_DIR/p1.json" "$RIG_DIR/p2.json")
	[ -z "$bad" ] || rig_fail "connections failed during the admin stop: $bad"
	grep -q 'its connections closed' "$RIG_DIR/n2/log/web.log" || rig_fail "n2 did not wait for its connections: $(grep -i 'took this node' "$RIG_DIR/n2/log/web.log")"
	grep -q 'took this node' "$RIG_DIR/n2/log/web.log" || rig_fail "n2 left without a confirmed handover"
	# And n2 serves nobody now.
	farm_once c1 "$FARM_C1" 3 >"$RIG_DIR/after.json"
	_check_once "$RIG_DIR/after.json"
	! jq -e '.results[] | select(.answer == "n2")' "$RIG_DIR/after.json" >/dev/null || rig_fail "n2 still answers after STOP"
	# Restored on n2: no VIP on lo, kernel ARP settings back, no filter.
	! rig_exec n2 ip -4 -o addr show dev lo | grep -q " $FARM_VIP/" || rig_fail "VIP still on n2's lo"
	[ "$(rig_exec n2 cat /proc/sys/net/ipv4/conf/eth0/arp_ignore)" = 0 ] || rig_fail "arp_ignore not restored on n2"
	! rig_exec n2 ip link show dev eth0 | grep -q xdp || rig_fail "XDP still attached on n2"
}

# _long_check FILE: every long connection got its node and an echo of every line it sent.
_long_check() {
	local bad
	bad=$(jq -r 'to_entries[] | select(.value.error != null or .value.node == null or .value.echoed != .value.sent or .value.echoed < 5) | "\(.key): \(.value)"' "$1" | head -5)
	[ -z "$bad" ] || rig_fail "long connections broken: $bad"
}

# Connections that outlive a change of bucket owners keep going to their node: through an
# admin stop (the node waits for them to close before it takes the VIP down) and through a
# join (the node that had the bucket keeps its connections; new ones go to the new owner).
# Hashed by client IP, so the clients n2 serves are known in advance.
test_long_connections_survive_admin_stop_and_join() {
	FARM_DRAIN_MS=30000 _farm_up ip
	local on2="" stopped closed kept c ips
	for c in 1 2; do
		ips=$(eval "echo \$FARM_C$c")
		on2=$(farm_map "c$c" "$ips" | grep '=n2$' | cut -d= -f1 | tr '\n' ' ')
		on2=${on2% }
		[ -z "$on2" ] || break
	done
	[ -n "$on2" ] || rig_fail "no client hashes to n2: $(farm_map c1 "$FARM_C1" | tr '\n' ' ') $(farm_map c2 "$FARM_C2" | tr '\n' ' ')"
	farm_start_long a "c$c" "$ips" "$RIG_DIR/a.json"
	rig_skctl n2 stop -m web >/dev/null
	farm_wait_agreed web "n1 n3" n1 n3
	# n2 holds on: handed over, its connections still open.
	sleep 1
	[ "$(farm_label n2 web)" = WAIT/leaving ] || rig_fail "n2 did not wait for its connections: $(farm_label n2 web)"
	farm_json n2 web | jq -e '.connections_to_drain > 0' >/dev/null ||
		rig_fail "n2 counts no connection to drain: $(farm_json n2 web | jq -c '{label, connections_to_drain}')"
	farm_stop_long a
	farm_wait_label n2 web 'STOP/idle'
	_long_check "$RIG_DIR/a.json"
	[ "$(jq -r --arg ips " $on2 " '[to_entries[] | (.key | split("#")[0]) as $ip | select($ips | contains(" " + $ip + " ")) | .value.node] | unique | join(",")' "$RIG_DIR/a.json")" = n2 ] ||
		rig_fail "n2's clients were not all on n2: $(jq -c 'map_values(.node)' "$RIG_DIR/a.json")"
	closed=$(jq '[.[].closed_ms] | max' "$RIG_DIR/a.json")
	stopped=$(farm_json n2 web | jq '[.transitions[] | select(.to == "WAIT/stopping")] | last | .at_ms')
	[ "$stopped" -ge "$closed" ] || rig_fail "n2 took the VIP down at $stopped, before its connections closed at $closed"
	grep -q 'its connections closed' "$RIG_DIR/n2/log/web.log" || rig_fail "n2's stop does not say its connections closed"
	rig_log "n2's clients: $on2; it left $((stopped - closed)) ms after their connections closed"

	# Join: the same clients, now on n1/n3, keep their connections there while n2 takes their buckets.
	kept=$(( $(farm_xdp n1 web pass_flow_here) + $(farm_xdp n3 web pass_flow_here) ))
	farm_start_long b "c$c" "$on2" "$RIG_DIR/b.json"
	rig_skctl n2 start -m web >/dev/null
	farm_wait_label n2 web 'UP/running'
	farm_wait_agreed web "n1 n2 n3" n1 n2 n3
	[ "$(( $(farm_json n1 web | jq .buckets_draining) + $(farm_json n3 web | jq .buckets_draining) ))" -gt 0 ] ||
		rig_fail "neither n1 nor n3 drains a bucket after n2 joined"
	sleep 1
	farm_stop_long b
	_long_check "$RIG_DIR/b.json"
	[ "$(jq '[.[] | select(.node == "n2")] | length' "$RIG_DIR/b.json")" = 0 ] || rig_fail "a connection opened before n2 started landed on it"
	kept=$(( $(farm_xdp n1 web pass_flow_here) + $(farm_xdp n3 web pass_flow_here) - kept ))
	[ "$kept" -gt 0 ] || rig_fail "n1 and n3 kept no segment of a drained connection"
	rig_log "n1 and n3 kept $kept segments of their connections in buckets now n2's"
	# New connections from those clients reach n2.
	farm_once "c$c" "$on2" 2 >"$RIG_DIR/after.json"
	_check_once "$RIG_DIR/after.json"
	[ "$(jq -r '[.results[].answer] | unique | join(",")' "$RIG_DIR/after.json")" = n2 ] ||
		rig_fail "new connections of n2's clients did not reach n2: $(jq -c '[.results[].answer]' "$RIG_DIR/after.json")"
}

test_arp_answers_carry_the_virtual_mac() {
	_farm_up ip
	local vmac node own
	vmac=$(farm_json n1 web | jq -r .virtual_mac)
	[ "$(farm_json n3 web | jq -r .responder)" = n1 ] || rig_fail "responder is not n1"
	rig_exec c1 ip neigh flush dev eth0
	[ "$(farm_once c1 "$(rig_client_ip 1)" 1 | jq -r '.results[0].error')" = null ] || rig_fail "no answer after ARP flush"
	rig_exec c1 ip neigh show "$FARM_VIP" dev eth0 | grep -qi "lladdr $vmac" ||
		rig_fail "client resolved the VIP to '$(rig_exec c1 ip neigh show "$FARM_VIP" dev eth0)', expected $vmac"
	for node in n1 n2 n3; do
		rig_exec "$node" ip -4 -o addr show dev lo | grep -q " $FARM_VIP/32" || rig_fail "VIP not on $node's lo"
		! rig_exec "$node" ip -4 -o addr show dev eth0 | grep -q " $FARM_VIP/" || rig_fail "VIP on $node's eth0"
		[ "$(rig_exec "$node" cat /proc/sys/net/ipv4/conf/eth0/arp_ignore)" = 1 ] || rig_fail "arp_ignore on $node"
		rig_exec "$node" ip link show dev eth0 | grep -q PROMISC || rig_fail "$node eth0 not promiscuous"
	done
	# The switch never learned the virtual MAC as a source (so it floods it to every node).
	! rig_exec sw bridge fdb show br br0 | grep -qi "^$vmac " || rig_fail "the bridge learned the virtual MAC"
	own=$(rig_exec n1 cat /sys/class/net/eth0/address)
	rig_log "virtual MAC $vmac, answered from $own"
}

# Custom checker scripts of module web on every node: "app" fails while
# $RIG_DIR/<node>.app-bad exists, "gate" while <node>.gate-bad exists.
_farm_checker_scripts() {
	local node f
	for node in n1 n2 n3; do
		for f in app gate; do
			printf '#!/bin/bash\n[ ! -e "%s/$SK_NODE.%s-bad" ] || { echo "%s flag present"; exit 1; }\n' \
				"$RIG_DIR" "$f" "$f" >"$RIG_DIR/$node/modules/web/scripts/$f"
			chmod 755 "$RIG_DIR/$node/modules/web/scripts/$f"
		done
	done
}

_start_both_runs() { grep -c "^$1 start_both " "$RIG_DIR/scripts.log" || true; }
_start_both_runs_is() { [ "$(_start_both_runs "$1")" = "$2" ]; }

# Farm checkers: a restart checker takes the node out (its buckets to the others)
# and back in after a local stop + start; a wait checker keeps it out (STOP, its
# checker still running) until the condition clears, then it rejoins on its own.
test_farm_checkers_restart_and_hold_a_node() {
	_farm_up ip '"checkers": [
    { "name": "app", "type": "custom", "script": "app", "interval_ms": 300, "timeout_ms": 2000, "when": "prim", "action": "restart" },
    { "name": "gate", "type": "custom", "script": "gate", "interval_ms": 300, "timeout_ms": 2000, "when": "prim", "action": "wait" } ],
  "failover": { "maxloop": 3, "loop_interval_s": 3600 }' _farm_checker_scripts
	[ "$(_start_both_runs n2)" = 1 ] || rig_fail "start_both ran $(_start_both_runs n2) times on n2 before the fault"
	touch "$RIG_DIR/n2.app-bad"
	rig_wait_for 100 _start_both_runs_is n2 2 || rig_fail "the app was not restarted on n2"
	rm -f "$RIG_DIR/n2.app-bad"
	farm_wait_label n2 web 'UP/running'
	farm_wait_agreed web "n1 n2 n3" n1 n2 n3
	grep -q 'checker app' "$RIG_DIR/n2/log/web.log" || rig_fail "no checker decision in n2's module log"
	farm_json n2 web | jq -e '.checkers.policy.restarts_used == 1' >/dev/null ||
		rig_fail "restart not counted: $(farm_json n2 web | jq -c .checkers.policy)"
	[ "$(_start_both_runs n1)$(_start_both_runs n3)" = 11 ] || rig_fail "other nodes restarted their app"
	# wait: n2 leaves and stays out while the gate fails.
	touch "$RIG_DIR/n2.gate-bad"
	farm_wait_label n2 web 'STOP/idle'
	farm_wait_agreed web "n1 n3" n1 n3
	farm_json n2 web | jq -e '.checker_hold == true' >/dev/null || rig_fail "n2 is not held by its checker"
	farm_once c1 "$FARM_C1" 3 >"$RIG_DIR/held.json"
	_check_once "$RIG_DIR/held.json"
	! jq -e '.results[] | select(.answer == "n2")' "$RIG_DIR/held.json" >/dev/null || rig_fail "n2 answers while held"
	sleep 1
	farm_label n2 web | grep -qx 'STOP/idle' || rig_fail "n2 came back while its gate still fails"
	rm -f "$RIG_DIR/n2.gate-bad"
	farm_wait_label n2 web 'UP/running' 100
	farm_wait_agreed web "n1 n2 n3" n1 n2 n3
	farm_json n2 web | jq -e '.checker_hold == false' >/dev/null || rig_fail "hold not cleared"
}

rig_main "$@"
