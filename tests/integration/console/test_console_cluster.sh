#!/usr/bin/env bash
# The web console end to end against a real two-node mirror cluster in the namespace
# rig: each skd serves HTTP on its node's address, headless Chromium runs inside n1's
# namespace, loads n1's console (which finds n2 through cluster_nodes), checks n1
# PRIM and n2 SECOND, clicks swap, confirms, and waits until the console shows the
# roles exchanged; skctl and the VIP agree. Screenshots (before, dialog, after) go
# to $SK_BIN_DIR/console-test. Skipped when Chromium, chromedriver or
# python3-selenium are missing (SK_CHROMIUM, SK_CHROMEDRIVER name other binaries).
# TAP output. Standalone:
#   SK_BIN_DIR=<build dir> tests/integration/console/test_console_cluster.sh
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/rig.sh"
. "$HERE/../lib/mirror.sh"

PY=/usr/bin/python3
CHROMIUM=${SK_CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${SK_CHROMEDRIVER:-/usr/bin/chromedriver}
HTTP_PORT=7480
# The browser takes both cores while it starts: heartbeats slack enough that no
# failover happens by accident (this test is about the console, not detection).
RIG_HB_INTERVAL=200
RIG_HB_TIMEOUT=3000

# On failure: the end of both nodes' skd logs (the driver's output is already shown).
_console_on_failure() {
	local node
	for node in "${RIG_NODES[@]}"; do
		[ -f "$RIG_DIR/$node/skd.log" ] && tail -15 "$RIG_DIR/$node/skd.log" | sed "s/^/# $node: /" >&2
	done
	return 0
}
RIG_ON_FAILURE=_console_on_failure

_console_need() {
	[ -x "$CHROMIUM" ] || rig_skip "$CHROMIUM missing (Debian package chromium)"
	[ -x "$CHROMEDRIVER" ] || rig_skip "$CHROMEDRIVER missing (Debian package chromium-driver)"
	"$PY" -c 'import selenium' 2>/dev/null || rig_skip "python3-selenium missing (Debian package python3-selenium)"
}

# _console_http_config: every node's cluster.json gets the same http section: listen
# "self" (each node's own cluster address, where cluster_nodes' http_url points), one
# shared admin token.
_console_http_config() {
	local i f
	head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RIG_DIR/http.token"
	chmod 600 "$RIG_DIR/http.token"
	for ((i = 1; i <= ${#RIG_NODES[@]}; i++)); do
		f="$RIG_DIR/n$i/cluster.json"
		sed -i "s|^  \"cluster\": \"rig\",\$|&\n  \"ports\": { \"http\": $HTTP_PORT },\n  \"http\": { \"listen\": \"self\", \"token_file\": \"$RIG_DIR/http.token\" },|" "$f"
		grep -q '"token_file"' "$f" || rig_fail "no http section written to $f"
	done
}

# _console_http_up FROM ADDR: the status answers on ADDR, asked from FROM's namespace.
_console_http_up() {
	local from=$1 ip=$2
	rig_exec "$from" curl -sf --max-time 5 -o /dev/null "http://$ip:$HTTP_PORT/api/v1/status"
}

# Chromium or chromedriver processes in NODE's namespace: none may be left once the
# driver script returns (it waits for them, the teardown is only a safety net).
_console_strays() {
	local pid exe out=""
	for pid in $(ip netns pids "$(rig_ns "$1")" 2>/dev/null); do
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
		case "$exe" in
		*chrom*) out+=" $pid($exe)" ;;
		esac
	done
	printf '%s' "${out# }"
}

test_console_swap_moves_the_primary() {
	_console_need
	rig_setup 2 1
	rig_write_cluster
	_console_http_config
	rig_write_mirror_module web
	rig_start_pair web 200 200
	[ "$(rig_vip_answer)" = n1 ] || rig_fail "client got '$(rig_vip_answer)' from the VIP, expected n1"
	rig_wait_for 100 _console_http_up n1 "$(rig_node_ip 2)" || rig_fail "n2's HTTP API not reachable from n1"
	rig_wait_for 100 _console_http_up n1 "$(rig_node_ip 1)" || rig_fail "n1's HTTP API not reachable"
	rig_exec n1 curl -sf --max-time 5 "http://$(rig_node_ip 1):$HTTP_PORT/api/v1/status" |
		jq -e --arg u "http://$(rig_node_ip 2):$HTTP_PORT" '.cluster_nodes[] | select(.name == "n2") | .http_url == $u' \
			>/dev/null || rig_fail "n1's cluster_nodes does not point at n2's HTTP address"

	local out work t0 t1 rc=0 pid
	out="$(cd "$SK_BIN_DIR" && pwd)/console-test"
	work="$RIG_DIR/console"
	mkdir -p "$out" "$work"
	rm -f "$out"/console-cluster-*.png
	t0=$(date +%s%N)
	# Chromium in n1's namespace (it reaches both nodes there, and nothing else), niced
	# so that skd keeps its heartbeats while the browser starts.
	ip netns exec "$(rig_ns n1)" nice -n 10 "$PY" "$HERE/console_swap_driver.py" \
		--url "http://$(rig_node_ip 1):$HTTP_PORT" --token-file "$RIG_DIR/http.token" \
		--module web --local n1 --peer n2 --out "$out" --work "$work" \
		--pids-file "$RIG_PIDS_FILE" --wait 60 --chromium "$CHROMIUM" --chromedriver "$CHROMEDRIVER" \
		>"$work/driver.out" 2>"$work/driver.err" &
	pid=$!
	echo "$pid console-driver" >>"$RIG_PIDS_FILE"
	# Bounded: 7 waits of 60 s at most on the page, plus the browser's start and quit.
	rig_wait_for 5000 _rig_gone "$pid" || {
		rig_log "the console driver did not finish in 500 s"
		kill -TERM "$pid" 2>/dev/null || true
		rig_wait_for 100 _rig_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
	}
	wait "$pid" || rc=$?
	t1=$(date +%s%N)
	sed 's/^/# /' "$work/driver.out" >&2
	[ ! -s "$work/driver.err" ] || sed 's/^/# stderr: /' "$work/driver.err" | tail -30 >&2
	rig_log "console driver took $(((t1 - t0) / 1000000)) ms; screenshots in $out"
	[ "$rc" -eq 0 ] || { tail -20 "$work/chromedriver.log" 2>/dev/null | sed 's/^/# chromedriver: /' >&2
		rig_fail "console checks failed (driver exit $rc)"; }

	# What the console showed is what the nodes say.
	rig_wait_label n2 web 'PRIM/running' 50
	rig_wait_label n1 web 'SECOND/in-sync' 50
	local state
	state=$(rig_skctl n1 state)
	rig_log "skctl state on n1: $(tr '\n' ';' <<<"$state")"
	grep -Eq '^web +n1 +SECOND/in-sync( |$)' <<<"$state" && grep -Eq '^web +n2 +PRIM/running( |$)' <<<"$state" ||
		rig_fail "skctl state on n1: '$state', expected web n1 SECOND/in-sync and web n2 PRIM/running"
	[ "$(rig_vip_answer)" = n2 ] || rig_fail "client got '$(rig_vip_answer)' from the VIP, expected n2"
	# The swap came in through n1's HTTP API, from the browser in n1's namespace.
	grep -q "swap web requested from $(rig_node_ip 1):" "$RIG_DIR/n1/skd.log" ||
		rig_fail "n1's log has no 'swap web requested from $(rig_node_ip 1):...'"
	for f in before dialog after; do
		[ -s "$out/console-cluster-$f.png" ] || rig_fail "screenshot $out/console-cluster-$f.png missing"
	done
	# The browser and its driver are gone, not just left to the teardown.
	local strays
	strays=$(_console_strays n1)
	[ -z "$strays" ] || rig_fail "browser processes left in n1's namespace: $strays"
}

rig_main "$@"
