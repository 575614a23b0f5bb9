#!/usr/bin/env bash
# HTTP API end to end over loopback against a stand-in node (http_fake_node, the
# real HttpServer + EventLoop with a fixed status): status + CORS, metrics parsed
# by prometheus_client, health codes, bearer token, limits, and the console in
# headless Chromium. TAP output. Standalone:
#   SK_BIN_DIR=<build dir> tests/integration/test_http.sh
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
SK_BIN_DIR=${SK_BIN_DIR:-$SRC/build}
FAKE="$SK_BIN_DIR/tests/unit/api/http_fake_node"
TESTDATA="$SRC/tests/unit/api/testdata"
CONSOLE="$SRC/userspace/api/console"
PY=/usr/bin/python3
TOKEN=http-test-token-0123456789abcdef

WORK=$(mktemp -d /tmp/sk-http-XXXXXX)
NODE_PID=
PORT=
cleanup() {
	if [ -n "$NODE_PID" ]; then
		kill "$NODE_PID" 2>/dev/null || true
		wait "$NODE_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '# %s\n' "$*" >&2; }
fail() { printf '# FAIL: %s\n' "$*" >&2; return 1; }

start_node() {
	printf '%s\n' "$TOKEN" >"$WORK/token"
	chmod 600 "$WORK/token"
	rm -f "$WORK/port" "$WORK/actions.jsonl"
	"$FAKE" --status "$TESTDATA/node1-status.json" --listen 127.0.0.1 --port 0 --port-file "$WORK/port" \
		--token-file "$WORK/token" --console "$CONSOLE" --actions-log "$WORK/actions.jsonl" \
		>"$WORK/node.log" 2>&1 &
	NODE_PID=$!
	local i
	for i in $(seq 100); do
		[ -s "$WORK/port" ] && break
		kill -0 "$NODE_PID" 2>/dev/null || fail "fake node died: $(cat "$WORK/node.log")"
		sleep 0.1
	done
	PORT=$(cat "$WORK/port")
	[ -n "$PORT" ] || fail "fake node did not report its port"
	URL="http://127.0.0.1:$PORT"
}

code() { # curl args... -> HTTP status code
	curl -s -o "$WORK/body" -w '%{http_code}' --max-time 10 "$@"
}

test_status_with_cors() {
	local c
	c=$(code -D "$WORK/headers" "$URL/api/v1/status")
	[ "$c" = 200 ] || fail "status: HTTP $c"
	[ "$(jq -r .schema "$WORK/body")" = sk.status/1 ] || fail "schema: $(jq -r .schema "$WORK/body")"
	[ "$(jq -r '.modules | length' "$WORK/body")" = 3 ] || fail "modules: $(jq -c .modules "$WORK/body")"
	grep -qi '^Access-Control-Allow-Origin: \*' "$WORK/headers" || fail "no CORS header on status"
	code -D "$WORK/headers" "$URL/metrics" >/dev/null
	! grep -qi '^Access-Control-Allow-Origin' "$WORK/headers" || fail "CORS header on /metrics"
}

test_metrics_parse() {
	local c
	c=$(code -D "$WORK/headers" "$URL/metrics")
	[ "$c" = 200 ] || fail "metrics: HTTP $c"
	grep -qi '^Content-Type: text/plain; version=0.0.4' "$WORK/headers" || fail "content type: $(grep -i content-type "$WORK/headers")"
	"$PY" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
cur = [s.labels["state"] for s in fams["sk_module_state"].samples if s.labels["module"] == "pgsql" and s.value == 1]
assert cur == ["PRIM"], "pgsql state: expected [PRIM], got %r" % cur
assert fams["sk_heartbeat_received"].type == "counter", fams["sk_heartbeat_received"].type
print("# %d families parsed" % len(fams))
' "$WORK/body" >&2 || fail "prometheus_client could not parse /metrics"
}

test_health_codes() {
	local c
	c=$(code "$URL/health/pgsql"); [ "$c" = 200 ] || fail "PRIM module: HTTP $c"
	[ "$(cat "$WORK/body")" = serving ] || fail "body: $(cat "$WORK/body")"
	c=$(code "$URL/health/web"); [ "$c" = 200 ] || fail "UP farm module: HTTP $c"
	c=$(code "$URL/health/batch"); [ "$c" = 503 ] || fail "STOP module: HTTP $c"
	c=$(code "$URL/health/nosuch"); [ "$c" = 404 ] || fail "unknown module: HTTP $c"
}

test_actions_need_token() {
	local c
	c=$(code -X POST "$URL/api/v1/modules/pgsql/swap"); [ "$c" = 401 ] || fail "no token: HTTP $c"
	c=$(code -X POST -H "Authorization: Bearer wrong-$TOKEN" "$URL/api/v1/modules/pgsql/swap")
	[ "$c" = 401 ] || fail "wrong token: HTTP $c"
	[ ! -s "$WORK/actions.jsonl" ] || fail "an action ran without the token: $(cat "$WORK/actions.jsonl")"
	c=$(code -X POST -H "Authorization: Bearer $TOKEN" "$URL/api/v1/modules/pgsql/swap")
	[ "$c" = 200 ] || fail "right token: HTTP $c $(cat "$WORK/body")"
	[ "$(jq -r .action "$WORK/actions.jsonl")" = swap ] || fail "actions: $(cat "$WORK/actions.jsonl")"
	grep -q 'swap pgsql requested from 127.0.0.1:' "$WORK/node.log" || fail "action not logged with its origin"
}

test_limits_and_errors() {
	local c
	head -c 65536 /dev/zero | tr '\0' x >"$WORK/big"
	c=$(code -X POST -H "Authorization: Bearer $TOKEN" --data-binary @"$WORK/big" "$URL/api/v1/modules/pgsql/stop")
	[ "$c" = 413 ] || fail "oversized body: HTTP $c"
	[ "$(wc -l <"$WORK/actions.jsonl")" = 1 ] || fail "oversized request ran an action"
	c=$(code "$URL/no/such/path"); [ "$c" = 404 ] || fail "unknown path: HTTP $c"
	local reply
	reply=$(exec 3<>"/dev/tcp/127.0.0.1/$PORT"; printf 'NOT HTTP AT ALL\r\n\r\n' >&3; timeout 10 head -c 12 <&3)
	[ "$reply" = "HTTP/1.1 400" ] || fail "malformed request: got '$reply'"
}

test_console_in_chromium() {
	if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
		echo "skip"
		return 0
	fi
	"$PY" "$HERE/console/test_console.py" --fake-node "$FAKE" --console "$CONSOLE" --testdata "$TESTDATA" \
		--out "$SK_BIN_DIR/console-test" >"$WORK/console.out" 2>&1 || {
		sed 's/^/# /' "$WORK/console.out" >&2
		fail "console test"
	}
	grep -c '^ok' "$WORK/console.out" | sed 's/^/# console checks passed: /' >&2
}

main() {
	if [ ! -x "$FAKE" ]; then
		echo "1..0 # SKIP $FAKE not built (ninja -C \$SK_BIN_DIR tests/unit/api/http_fake_node)"
		exit 0
	fi
	local tests=(test_status_with_cors test_metrics_parse test_health_codes test_actions_need_token
		test_limits_and_errors test_console_in_chromium)
	echo "1..${#tests[@]}"
	start_node
	local n=0 failed=0 t out
	for t in "${tests[@]}"; do
		n=$((n + 1))
		if out=$("$t"); then
			if [ "$out" = skip ]; then echo "ok $n - $t # SKIP chromium not installed"; else echo "ok $n - $t"; fi
		else
			echo "not ok $n - $t"
			failed=$((failed + 1))
		fi
	done
	[ "$failed" -eq 0 ]
}

main "$@"
