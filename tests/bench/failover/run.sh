#!/usr/bin/env bash
# Failover benchmark: client-observed VIP outage with SK and with keepalived
# (VRRP, the usual peer for VIP failover) in the same namespace rig, same run.
# Scenarios: crash (the serving daemon and its app are SIGKILLed, the node stays
# up), powercut (link down + SIGKILL), swap (planned move). Timings: default
# (SK 500/3000 ms, keepalived advert_int 1) and fast (SK 100/300 ms, keepalived
# VRRPv3 advert_int 0.1). A client probes the VIP every 10 ms.
# Every run starts from a verified clean state (both nodes up, n1 serving, the
# VIP on n1 only and answering from n1) and moves the service from n1 to n2; the
# old primary is then brought back and the service returned to n1.
# Usage: run.sh [RUNS] [OUT.json]   (as root; RUNS defaults to 20)
# Environment: SK_BIN_DIR=DIR uses the binaries already built there (no build);
# BENCH_TIMINGS="default fast", BENCH_SCENARIOS="crash powercut swap" and
# BENCH_SYSTEMS="sk keepalived" select a subset (all by default).
set -eu
cd "$(dirname "$0")/../../.."
RUNS=${1:-20}
OUT=${2:-build/bench/failover.json}
TIMINGS=${BENCH_TIMINGS:-default fast}
SCENARIOS=${BENCH_SCENARIOS:-crash powercut swap}
SYSTEMS=${BENCH_SYSTEMS:-sk keepalived}
mkdir -p "$(dirname "$OUT")"

./scripts/install-deps.sh >/dev/null
command -v keepalived >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived >/dev/null
if [ -n "${SK_BIN_DIR:-}" ]; then
	SK_BIN_DIR=$(cd "$SK_BIN_DIR" && pwd)
else
	./scripts/build.sh build >/dev/null
	SK_BIN_DIR=$PWD/build
fi
export SK_BIN_DIR
. tests/integration/lib/rig.sh
. tests/integration/lib/mirror.sh
RESULTS=$(mktemp)
trap 'rig_teardown; rm -f "$RESULTS"' EXIT
INVALID=0
record() { # system timing scenario ms
	printf '%s %s %s %s\n' "$@" >>"$RESULTS"
	printf '  %-10s %-7s %-8s run: %8.1f ms\n' "$@" >&2
}

# Processes this script started and killed leave the rig's pid list once they are
# gone (pids wrap here within minutes: the teardown must never signal a reused
# pid). Daemons it kills are disowned, so that bash reaps them without printing
# "Killed" and a zombie never answers for a dead one.
pid_forget() { local p; for p in "$@"; do [ -n "$p" ] && sed -i "/^$p /d" "$RIG_PIDS_FILE"; done; return 0; }
start_skd() { rig_start_skd "$1"; disown "$(rig_skd_pid "$1")"; }
stop_probe() { rig_stop_probe; pid_forget "$RIG_PROBE_PID"; }

# Every run starts from the same verified state (both nodes up, n1 serving, n2
# standing by, the VIP held by n1 only and answering from n1), fails n1 over to
# n2, and counts only if the client saw exactly n1 then n2 and nothing else.
# measure SYSTEM TIMING SCENARIO PROBE.json DIAG-FUNCTION
measure_done() {
	local system=$1 timing=$2 scenario=$3 probe=$4 diag=$5
	if jq -e '[.answers[][0]] == ["n1", "n2"]' "$probe" >/dev/null 2>&1; then
		record "$system" "$timing" "$scenario" "$(jq .longest_outage_ms "$probe")"
	else
		INVALID=$((INVALID + 1))
		echo "  $system $timing $scenario: INVALID run (client saw $(jq -c '[.answers[][0]]' "$probe" 2>/dev/null)); not counted" >&2
		$diag >&2
	fi
}

# ---- SK ----
sk_rig() { # interval timeout
	rig_setup 2 1
	rig_write_cluster
	RIG_HB_INTERVAL=$1 RIG_HB_TIMEOUT=$2 rig_write_mirror_module web
	start_skd n1
	start_skd n2
	rig_skctl n2 start -m web >/dev/null
	rig_skctl n1 prim -m web >/dev/null
	sk_ready
}

sk_diag() {
	local n
	for n in n1 n2; do
		echo "  # $n: $(rig_mirror_label "$n" web 2>/dev/null || echo '(skd not answering)')"
		tail -5 "$RIG_DIR/$n/skd.log" | sed 's/^/  #   /'
	done
	echo "  # VIP held by: '$(rig_vip_holders)', answers: '$(rig_vip_answer)'"
}

# n1 PRIM/running, n2 SECOND/in-sync, the VIP on n1 only and answering from n1.
sk_ready() {
	rig_wait_label n1 web 'PRIM/running' 200 &&
		rig_wait_label n2 web 'SECOND/in-sync' 200 &&
		rig_wait_for 100 rig_vip_holders_are n1 &&
		rig_wait_for 100 rig_vip_answer_is n1 ||
		{ echo "SK: no clean start state (n1 serving, n2 in sync)" >&2; sk_diag >&2; exit 1; }
}

sk_measure() { # timing scenario
	local timing=$1 scenario=$2 old
	old=$(rig_skd_pid n1)
	rig_start_probe c1 "$RIG_DIR/p.json" --duration 60
	sleep 0.3
	case $scenario in
	crash) rig_crash_node n1 web; pid_forget "$old" ;;
	powercut) rig_exec n1 ip link set eth0 down; rig_crash_node n1 web; pid_forget "$old" ;;
	swap) rig_skctl n2 swap -m web >/dev/null ;;
	esac
	rig_wait_for 200 rig_vip_answer_is n2 || true
	sleep 0.2
	stop_probe
	measure_done sk "$timing" "$scenario" "$RIG_DIR/p.json" sk_diag
	# Bring n1 back as secondary, then move the service back to it.
	if [ "$scenario" != swap ]; then
		rig_exec n1 ip link set eth0 up
		start_skd n1
	fi
	rig_wait_label n1 web 'SECOND/in-sync' 200 && rig_wait_label n2 web 'PRIM/running' 200 ||
		{ echo "SK: n1 did not come back in sync" >&2; sk_diag >&2; exit 1; }
	rig_skctl n1 swap -m web >/dev/null
	sk_ready
}

# ---- keepalived ----
# n1 is the preferred master (higher priority, starts as MASTER, preempts when it
# comes back), n2 the backup. The backup's detection (3 adverts + skew of its own
# priority) and its takeover are what every run measures.
ka_conf() { # node prio advert version
	local node=$1 other state=BACKUP
	[ "$node" = n1 ] && other=2 || other=1
	[ "$node" = n1 ] && state=MASTER
	cat <<CONF
global_defs {
  router_id sk-bench-$node
  script_user root
  enable_script_security
}
vrrp_instance web {
  state $state
  interface eth0
  virtual_router_id 51
  priority $2
  advert_int $3
  version $4
  unicast_src_ip $(rig_node_ip "${node#n}")
  unicast_peer {
    $(rig_node_ip "$other")
  }
  virtual_ipaddress {
    $RIG_VIP/24 dev eth0
  }
}
CONF
}

# Alive and not a zombie (an orphan killed here stays a zombie until init reaps it).
_ka_alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$st" ] && [[ "$st" != Z* ]]; }
_ka_dead() { ! _ka_alive "$1"; }

ka_start() { # node advert version
	local node=$1 pid child dir=$RIG_DIR/$1 prio=100
	[ "$node" = n1 ] && prio=150
	eval "pid=\${KA_PID_$node:-}"
	if [ -n "$pid" ] && _ka_alive "$pid"; then echo "keepalived on $node still running ($pid)" >&2; exit 1; fi
	ka_conf "$node" $prio "$2" "$3" >"$dir/keepalived.conf"
	# Its pid files name processes that are gone (or zombies): a stale one makes the
	# new keepalived exit at once with "daemon is already running".
	rm -f "$dir/ka.pid" "$dir/ka-vrrp.pid"
	[ -f "$dir/ka.log" ] && cat "$dir/ka.log" >>"$dir/ka-old.log"
	: >"$dir/ka.log"
	ip netns exec "$(rig_ns "$node")" keepalived --dont-fork --vrrp --log-console \
		--use-file "$dir/keepalived.conf" --pid "$dir/ka.pid" \
		--vrrp_pid "$dir/ka-vrrp.pid" >>"$dir/ka.log" 2>&1 &
	pid=$!
	disown "$pid"
	echo "$pid keepalived-$node" >>"$RIG_PIDS_FILE"
	eval "KA_PID_$node=$pid"
	# The VRRP child: a process of ours (forked by the keepalived just started).
	rig_wait_for 50 _ka_child "$pid" "$node" >/dev/null || { echo "keepalived on $node did not start" >&2; ka_diag >&2; exit 1; }
	child=$(_ka_child "$pid" "$node")
	eval "KA_VRRP_PID_$node=$child"
}
_ka_child() { # parent node: prints its VRRP child once it runs and wrote its pid file
	local c
	_ka_alive "$1" || return 1
	c=$(ps -o pid= --ppid "$1" | tr -d ' ' | head -1)
	[ -n "$c" ] && _ka_alive "$c" && [ "$(cat "$RIG_DIR/$2/ka-vrrp.pid" 2>/dev/null)" = "$c" ] && echo "$c"
}

ka_app() { # node: the same service as SK's, listening on every address
	local node=$1
	ip netns exec "$(rig_ns "$node")" setsid socat TCP-LISTEN:$RIG_VIP_PORT,fork,reuseaddr \
		SYSTEM:"echo $node" </dev/null >/dev/null 2>&1 &
	disown $!
	echo "$! app-$node" >>"$RIG_PIDS_FILE"
	eval "APP_PID_$node=$!"
}

ka_kill() { # node SIGNAL: stops keepalived (both processes; KILL: and the app)
	local node=$1 sig=$2 p c a
	eval "p=\$KA_PID_$node c=\$KA_VRRP_PID_$node a=\$APP_PID_$node"
	if [ "$sig" = KILL ]; then
		# The VRRP child first: it must not see its parent die first (it would then
		# shut down cleanly, which is not a crash).
		kill -KILL "$c" "$p" "$a" 2>/dev/null || true
	else
		kill "-$sig" "$p" 2>/dev/null || true
	fi
}

ka_reap() { # node [app]: after ka_kill, waits (bounded) until keepalived (and the app) are gone
	local node=$1 p c a=""
	eval "p=\$KA_PID_$node c=\$KA_VRRP_PID_$node"
	[ -n "${2:-}" ] && eval "a=\$APP_PID_$node"
	rig_wait_for 100 _ka_dead "$c" && rig_wait_for 50 _ka_dead "$p" && rig_wait_for 50 _ka_dead "${a:-0}" ||
		{ echo "keepalived on $node did not stop" >&2; ka_diag >&2; exit 1; }
	pid_forget "$p" "$a"
	eval "KA_PID_$node= KA_VRRP_PID_$node="
}

ka_state() { grep -o 'Entering [A-Z]* STATE' "$RIG_DIR/$1/ka.log" 2>/dev/null | tail -1 | awk '{print $2}'; }

ka_diag() {
	local n p c
	for n in n1 n2; do
		eval "p=\${KA_PID_$n:-} c=\${KA_VRRP_PID_$n:-}"
		echo "  # $n: keepalived $p/$c alive: $(_ka_alive "${p:-0}" && echo y || echo n)/$(_ka_alive "${c:-0}" && echo y || echo n), state: $(ka_state "$n")"
		tail -4 "$RIG_DIR/$n/ka.log" 2>/dev/null | sed 's/^/  #   /'
	done
	echo "  # VIP held by: '$(rig_vip_holders)', answers: '$(rig_vip_answer)'"
}

_ka_clean() {
	_ka_alive "$KA_PID_n1" && _ka_alive "$KA_VRRP_PID_n1" &&
		_ka_alive "$KA_PID_n2" && _ka_alive "$KA_VRRP_PID_n2" &&
		[ "$(ka_state n1)" = MASTER ] && [ "$(ka_state n2)" = BACKUP ] &&
		rig_vip_holders_are n1 && rig_vip_answer_is n1
}

# Both keepalived up, n1 master, n2 backup, the VIP on n1 only and answering from n1.
ka_ready() {
	rig_wait_for 150 _ka_clean ||
		{ echo "keepalived: no clean start state (n1 master, n2 backup)" >&2; ka_diag >&2; exit 1; }
}

ka_rig() { # advert version
	rig_setup 2 1
	ka_app n1
	ka_app n2
	ka_start n1 "$1" "$2"
	rig_wait_for 100 rig_vip_holders_are n1 || true
	ka_start n2 "$1" "$2"
	ka_ready
}

ka_measure() { # timing scenario advert version
	local timing=$1 scenario=$2
	rig_start_probe c1 "$RIG_DIR/p.json" --duration 60
	sleep 0.3
	case $scenario in
	crash) ka_kill n1 KILL ;;
	powercut) rig_exec n1 ip link set eth0 down; ka_kill n1 KILL ;;
	swap) ka_kill n1 TERM ;;
	esac
	rig_wait_for 200 rig_vip_answer_is n2 || true
	sleep 0.2
	stop_probe
	measure_done keepalived "$timing" "$scenario" "$RIG_DIR/p.json" ka_diag
	# Back to the clean pair: n1's keepalived gone (a SIGKILLed one leaves its VIP
	# behind: remove it), app and link up, keepalived restarted; n1 preempts.
	if [ "$scenario" = swap ]; then ka_reap n1; else ka_reap n1 app; ka_app n1; fi
	rig_exec n1 ip addr del "$RIG_VIP/24" dev eth0 2>/dev/null || true
	rig_exec n1 ip link set eth0 up
	ka_start n1 "$3" "$4"
	ka_ready
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" >&2
for timing in $TIMINGS; do
	if [ $timing = default ]; then sk_t="500 3000"; ka_t="1 2"; else sk_t="100 300"; ka_t="0.1 3"; fi
	for scenario in $SCENARIOS; do
		if [[ " $SYSTEMS " == *" sk "* ]]; then
			echo "SK $timing $scenario x$RUNS" >&2
			sk_rig $sk_t
			for ((run = 0; run < RUNS; run++)); do sk_measure $timing $scenario; done
			rig_teardown
		fi
		if [[ " $SYSTEMS " == *" keepalived "* ]]; then
			echo "keepalived $timing $scenario x$RUNS" >&2
			ka_rig $ka_t
			for ((run = 0; run < RUNS; run++)); do ka_measure $timing $scenario $ka_t; done
			rig_teardown
		fi
	done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RESULTS" "$OUT" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
data = {}
for system, timing, scenario, ms in rows:
    data.setdefault((timing, scenario), {}).setdefault(system, []).append(float(ms))
def pct(v, p):
    v = sorted(v); k = max(0, min(len(v) - 1, int(round(p / 100 * (len(v) - 1)))))
    return v[k]
out = []
print(f"{'timing':<8} {'scenario':<9} {'system':<11} {'runs':>4} {'median':>8} {'p95':>8} {'max':>8}  ratio SK/ka (median)")
for (timing, scenario), systems in sorted(data.items()):
    for system, v in sorted(systems.items(), reverse=True):
        med = statistics.median(v)
        ratio = ""
        if system == "sk" and "keepalived" in systems:
            ratio = f"{med / statistics.median(systems['keepalived']):.2f}"
        print(f"{timing:<8} {scenario:<9} {system:<11} {len(v):>4} {med:>8.1f} {pct(v,95):>8.1f} {max(v):>8.1f}  {ratio}")
        out.append({"timing": timing, "scenario": scenario, "system": system, "runs": len(v),
                    "median_ms": med, "p95_ms": pct(v, 95), "max_ms": max(v), "samples_ms": v})
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"results: {sys.argv[2]}")
PY
rm -f "$RESULTS"
if [ "$INVALID" -gt 0 ]; then
	echo "$INVALID invalid run(s) not counted (see above)" >&2
	exit 1
fi
