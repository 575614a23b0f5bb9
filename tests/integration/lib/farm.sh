#!/usr/bin/env bash
# Farm-module helpers for the rig: a farm module whose app (socat on every node)
# answers the node's name, extra client source addresses, a many-connection
# client and a continuous per-address prober (python, one thread per source IP),
# and waits on farm states as seen by skctl. Needs rig.sh sourced first.

FARM_VIP=198.18.0.100
FARM_PORT=8080
# A second app port whose connections stay open: the node's name, then an echo of every line.
FARM_ECHO_PORT=8081

# farm_write_module NAME HASH [extra JSON members]: module.json + scripts on every node
# (FARM_DRAIN_MS: its farm.drain_ms, default 5000).
farm_write_module() {
	local name=$1 hash=$2 extra=${3:-} node dir nodes=""
	for node in "${RIG_NODES[@]}"; do nodes+="${nodes:+, }\"$node\""; done
	for node in "${RIG_NODES[@]}"; do
		dir="$RIG_DIR/$node/modules/$name"
		mkdir -p "$dir/scripts"
		cat >"$dir/module.json" <<JSON
{
  "name": "$name",
  "type": "farm",
  "nodes": [ $nodes ],
  "heartbeat": { "interval_ms": ${RIG_HB_INTERVAL:-100}, "timeout_ms": ${RIG_HB_TIMEOUT:-500} },
  "vips": [ { "address": "$FARM_VIP/24" } ],
  "farm": { "interface": "eth0", "hash": "$hash", "ports": [ $FARM_PORT, $FARM_ECHO_PORT ], "buckets": 256,
            "drain_ms": ${FARM_DRAIN_MS:-5000} },
  "scripts": { "timeout_ms": 5000 }${extra:+,
  $extra}
}
JSON
		# The app listens on every address: the VIP is local (on lo) only while the filter is up.
		_farm_script "$dir" start_both "
setsid bash -c \"socat TCP-LISTEN:$FARM_PORT,fork,reuseaddr,backlog=512 SYSTEM:'echo \$SK_NODE' &
socat TCP-LISTEN:$FARM_ECHO_PORT,fork,reuseaddr SYSTEM:'echo \$SK_NODE; cat' &
wait\" </dev/null >/dev/null 2>&1 &
echo \$! > \"\$SK_STATE_DIR/app.pid\"
for i in \$(seq 50); do ss -ltn | grep -q ':$FARM_PORT ' && ss -ltn | grep -q ':$FARM_ECHO_PORT ' && break; sleep 0.02; done"
		_farm_script "$dir" stop_both "
if [ -f \"\$SK_STATE_DIR/app.pid\" ]; then
	kill -TERM -- -\$(cat \"\$SK_STATE_DIR/app.pid\") 2>/dev/null || true
	rm -f \"\$SK_STATE_DIR/app.pid\"
fi"
	done
}

_farm_script() {
	local dir=$1 script=$2 body=$3
	cat >"$dir/scripts/$script" <<SH
#!/bin/bash
set -eu
echo "\$SK_NODE $script \$SK_ROLE \$(date +%s%N)" >> "$RIG_DIR/scripts.log"
$body
SH
	chmod 755 "$dir/scripts/$script"
}

# farm_json NODE MODULE: that module's status document on NODE.
farm_json() {
	rig_skctl "$1" status --json | jq --arg m "$2" '.modules[] | select(.name == $m)'
}

farm_label() { farm_json "$1" "$2" | jq -r .label; }

# farm_wait_label NODE MODULE LABEL-REGEX [TRIES]
farm_wait_label() {
	local node=$1 module=$2 want=$3 tries=${4:-100} got="" i
	for ((i = 0; i < tries; i++)); do
		got=$(farm_label "$node" "$module" 2>/dev/null || true)
		if [[ "$got" =~ ^($want)$ ]]; then return 0; fi
		sleep 0.1
	done
	rig_fail "$node: $module is '$got', expected '$want' (after $tries tries)"
}

# farm_wait_agreed MODULE UP-LIST NODES...: every listed node sees exactly UP-LIST
# (e.g. "n1 n2 n3") and all views agree.
farm_wait_agreed() {
	local module=$1 want=$2 node i ok got=""; shift 2
	for ((i = 0; i < 100; i++)); do
		ok=1
		for node in "$@"; do
			got=$(farm_json "$node" "$module" 2>/dev/null | jq -r '(.up | join(" ")) + " " + (.views_agree | tostring)' 2>/dev/null || true)
			[ "$got" = "$want true" ] || { ok=0; break; }
		done
		[ "$ok" -eq 1 ] && return 0
		sleep 0.1
	done
	rig_fail "$node sees '$got' for $module, expected '$want true'"
}

# farm_client_ips CLIENT-INDEX COUNT: adds COUNT extra /24 addresses to that client
# (198.18.0.(130 + 20*(index-1) + k)) and prints them, space separated.
farm_client_ips() {
	local idx=$1 count=$2 k a out=""
	for ((k = 0; k < count; k++)); do
		a="198.18.0.$((130 + 20 * (idx - 1) + k))"
		rig_exec "c$idx" ip addr add "$a/24" dev eth0 2>/dev/null || true
		out+="${out:+ }$a"
	done
	printf '%s' "$out"
}

# The client program. Modes:
#   once IPS PER_IP: PER_IP connections from each source IP (in parallel per IP);
#     prints {"results": [{"src", "answer", "error", "ms"}...]}.
#   probe IPS STOPFILE READYFILE CONNECT_TIMEOUT: one thread per source IP connects
#     again and again until STOPFILE exists; prints per IP the attempts, failures,
#     the answers in order (runs), the first errors with their start times (wall ms and µs),
#     and the longest gap between two successes (ms).
FARM_CLIENT_PY='
import json, os, socket, sys, threading, time

def one(src, vip, port, timeout):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.connect((vip, port))
        data = b""
        while True:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        text = data.decode(errors="replace").strip()
        lines = [l for l in text.splitlines() if l]
        if len(lines) != 1:
            return None, "got %d answers: %r" % (len(lines), text), t0
        return lines[0], None, t0
    except Exception as e:
        return None, type(e).__name__ + ": " + str(e), t0
    finally:
        s.close()

mode, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ips = sys.argv[4].split()
if mode == "once":
    per_ip = int(sys.argv[5])
    results, lock = [], threading.Lock()
    def run(ip):
        for _ in range(per_ip):
            a, err, t0 = one(ip, vip, port, 3.0)
            with lock:
                results.append({"src": ip, "answer": a, "error": err, "ms": round((time.monotonic() - t0) * 1000, 2)})
    ts = [threading.Thread(target=run, args=(ip,)) for ip in ips]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(json.dumps({"results": results}))
else:
    stop, ready, timeout = sys.argv[5], sys.argv[6], float(sys.argv[7])
    stats = {ip: {"attempts": 0, "failures": 0, "runs": [], "errors": [], "failed_at_ms": [], "failed_at_us": [], "gap_ms": 0.0, "gap_at": None} for ip in ips}
    answered = set()
    def run(ip):
        st, last_ok, signalled = stats[ip], None, False
        while not os.path.exists(stop):
            a, err, t0 = one(ip, vip, port, timeout)
            now = time.monotonic()
            st["attempts"] += 1
            if a is None:
                st["failures"] += 1
                if len(st["errors"]) < 5:
                    st["errors"].append(err)
                    # Wall clock of the attempt start, comparable with the transition times of skd.
                    start = time.time() - (now - t0)
                    st["failed_at_ms"].append(int(start * 1000))
                    st["failed_at_us"].append(int(start * 1000000))
                time.sleep(0.005)
                continue
            if last_ok is not None and (now - last_ok) * 1000 > st["gap_ms"]:
                st["gap_ms"] = round((now - last_ok) * 1000, 1)
                st["gap_at"] = now
            last_ok = now
            if not st["runs"] or st["runs"][-1] != a:
                st["runs"].append(a)
            if not signalled:
                signalled = True
                answered.add(ip)
            time.sleep(0.03)
    ts = [threading.Thread(target=run, args=(ip,), daemon=True) for ip in ips]
    [t.start() for t in ts]
    deadline = time.monotonic() + 10
    while len(answered) < len(ips) and time.monotonic() < deadline:
        time.sleep(0.01)
    if len(answered) == len(ips):
        open(ready, "w").close()
    [t.join() for t in ts]
    print(json.dumps({"ips": stats}))
'

# farm_once CLIENT "IPS" PER_IP: prints the JSON of a batch of connections.
farm_once() {
	rig_exec "$1" python3 -c "$FARM_CLIENT_PY" once "$FARM_VIP" "$FARM_PORT" "$2" "$3"
}

# Long connections to the echo port (mode "long"): one per source IP in IPS, each reads the node's name,
# then sends a numbered line every 100 ms and waits (5 s at most) for its echo, until
# STOPFILE exists; READYFILE once every connection has its node (or failed). Prints per
# connection ("IP#index") the node, lines sent and echoed, the first error, and when it
# closed (wall ms).
FARM_LONG_PY='
import json, os, socket, sys, threading, time

vip, port, ips, stop, ready = sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5], sys.argv[6]
res, started = {}, threading.Semaphore(0)

def run(k, ip):
    r = res["%s#%d" % (ip, k)] = {"node": None, "sent": 0, "echoed": 0, "error": None, "closed_ms": None}
    s = None
    try:
        s = socket.create_connection((vip, port), timeout=5, source_address=(ip, 0))
        f = s.makefile("rb", buffering=0)
        r["node"] = f.readline().decode().strip()
        started.release()
        i = 0
        while not os.path.exists(stop):
            msg = b"line %d\n" % i
            s.sendall(msg)
            r["sent"] += 1
            got = f.readline()
            if got != msg:
                raise RuntimeError("echo %r of %r" % (got, msg))
            r["echoed"] += 1
            i += 1
            time.sleep(0.1)
    except Exception as e:
        r["error"] = type(e).__name__ + ": " + str(e)
        if r["node"] is None:
            started.release()
    finally:
        if s is not None:
            s.close()
        r["closed_ms"] = int(time.time() * 1000)

ts = [threading.Thread(target=run, args=(k, ip), daemon=True) for k, ip in enumerate(ips)]
[t.start() for t in ts]
for _ in ts:
    started.acquire(timeout=10)
open(ready, "w").close()
[t.join(timeout=60) for t in ts]
print(json.dumps(res))
'

# _farm_bg_start KIND TAG CLIENT OUT TRIES WHY PROGRAM MODE PORT IPS [ARG...]: runs
# python3 -c PROGRAM MODE VIP PORT IPS STOPFILE READYFILE [ARG...] in CLIENT's namespace in
# the background, output to OUT, and waits (TRIES x 0.1 s) for READYFILE, else fails with WHY.
_farm_bg_start() {
	local kind=$1 tag=$2 client=$3 out=$4 tries=$5 why=$6 program=$7 mode=$8 port=$9 ips=${10} pid
	shift 10
	rm -f "$RIG_DIR/$kind.$tag.stop" "$RIG_DIR/$kind.$tag.ready"
	ip netns exec "$(rig_ns "$client")" python3 -c "$program" "$mode" "$FARM_VIP" "$port" "$ips" \
		"$RIG_DIR/$kind.$tag.stop" "$RIG_DIR/$kind.$tag.ready" "$@" >"$out" &
	pid=$!
	echo "$pid $kind-$tag" >>"$RIG_PIDS_FILE"
	eval "FARM_BG_${kind}_$tag=$pid"
	rig_wait_for "$tries" test -e "$RIG_DIR/$kind.$tag.ready" || rig_fail "$why"
}

# _farm_bg_stop KIND TAG: touches its STOPFILE and waits for it to end (its output is then complete).
_farm_bg_stop() {
	local pid
	touch "$RIG_DIR/$1.$2.stop"
	eval "pid=\${FARM_BG_$1_$2:-}"
	[ -n "$pid" ] && { rig_wait_for 150 _rig_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true; }
	wait "$pid" 2>/dev/null || true
}

# farm_start_long TAG CLIENT "IPS" OUT: long connections (FARM_LONG_PY) in the background.
farm_start_long() {
	_farm_bg_start flong "$1" "$2" "$4" 150 "long connections $1 on $2 never started" \
		"$FARM_LONG_PY" long "$FARM_ECHO_PORT" "$3"
}

farm_stop_long() { _farm_bg_stop flong "$1"; }

# farm_start_probe TAG CLIENT "IPS" OUT [CONNECT_TIMEOUT]: a prober in the background
# (TAG names it for farm_stop_probe; several may run in one client).
farm_start_probe() {
	_farm_bg_start fprobe "$1" "$2" "$4" 100 "prober $1 on $2 never got an answer" \
		"$FARM_CLIENT_PY" probe "$FARM_PORT" "$3" "${5:-0.1}"
}

farm_stop_probe() { _farm_bg_stop fprobe "$1"; }

# farm_map CLIENT "IPS": "ip=node" per line, one connection per address.
farm_map() {
	farm_once "$1" "$2" 1 | jq -r '.results[] | "\(.src)=\(.answer)"' | sort
}

# farm_crash_node NODE MODULE: SIGKILL skd and the app's process group.
farm_crash_node() {
	local pidfile="$RIG_DIR/$1/state/$2/app.pid"
	rig_stop_skd "$1" KILL
	if [ -f "$pidfile" ]; then kill -KILL -- "-$(cat "$pidfile")" 2>/dev/null || true; fi
}

# farm_xdp NODE MODULE COUNTER: one XDP verdict counter from the status document.
farm_xdp() { farm_json "$1" "$2" | jq -r ".xdp.$3 // 0"; }
