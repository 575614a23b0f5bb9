#!/usr/bin/env bash
# Failover benchmark: client-observed VIP outage with SK and with keepalived
# (VRRP, the usual peer for VIP failover) in the same namespace rig, same run.
# Scenarios: crash (the serving daemon and its app are SIGKILLed, the node stays
# up), powercut (link down + SIGKILL), swap (planned move). Timings: default
# (SK 500/3000 ms, keepalived advert_int 1) and fast (SK 100/300 ms, keepalived
# VRRPv3 advert_int 0.1). A client probes the VIP every 10 ms.
# Usage: run.sh [RUNS] [OUT.json]   (as root; RUNS defaults to 20)
set -eu
cd "$(dirname "$0")/../../.."
RUNS=${1:-20}
OUT=${2:-build/bench/failover.json}
mkdir -p "$(dirname "$OUT")"

./scripts/install-deps.sh >/dev/null
command -v keepalived >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived >/dev/null
./scripts/build.sh build >/dev/null

export SK_BIN_DIR=$PWD/build
. tests/integration/lib/rig.sh
. tests/integration/lib/mirror.sh
trap 'rig_teardown' EXIT

RESULTS=$(mktemp)
record() { # system timing scenario ms
	printf '%s %s %s %s\n' "$@" >>"$RESULTS"
	printf '  %-10s %-7s %-8s run: %8.1f ms\n' "$@" >&2
}

# ---- SK ----
sk_rig() { # interval timeout
	rig_setup 2 1
	rig_write_cluster
	RIG_HB_INTERVAL=$1 RIG_HB_TIMEOUT=$2 rig_write_mirror_module web
	rig_start_skd n1
	rig_start_skd n2
	rig_skctl n2 start -m web >/dev/null
	rig_skctl n1 prim -m web >/dev/null
	rig_wait_label n1 web 'PRIM/running' 200
	rig_wait_label n2 web 'SECOND/in-sync' 200
}

sk_serving() { # prints the serving node
	local n
	for n in n1 n2; do
		[[ "$(rig_mirror_label "$n" web 2>/dev/null)" =~ ^(PRIM|ALONE)/running$ ]] && { echo "$n"; return; }
	done
}

sk_measure() { # timing scenario
	local timing=$1 scenario=$2 prim other
	prim=$(sk_serving)
	[ "$prim" = n1 ] && other=n2 || other=n1
	rig_start_probe c1 "$RIG_DIR/p.json" --duration 60
	sleep 0.3
	case $scenario in
	crash) rig_crash_node "$prim" web ;;
	powercut) rig_exec "$prim" ip link set eth0 down; rig_crash_node "$prim" web ;;
	swap) rig_skctl "$other" swap -m web >/dev/null ;;
	esac
	rig_wait_for 200 rig_vip_answer_is "$other"
	sleep 0.2
	rig_stop_probe
	record sk "$timing" "$scenario" "$(jq .longest_outage_ms "$RIG_DIR/p.json")"
	# Bring the old primary back as secondary.
	if [ "$scenario" != swap ]; then
		rig_exec "$prim" ip link set eth0 up
		rig_start_skd "$prim"
	fi
	rig_wait_label "$prim" web 'SECOND/in-sync' 200
	rig_wait_label "$other" web 'PRIM/running' 200
}

# ---- keepalived ----
ka_conf() { # node prio advert version
	local node=$1 other
	[ "$node" = n1 ] && other=2 || other=1
	cat <<CONF
global_defs {
  router_id sk-bench-$node
  script_user root
  enable_script_security
}
vrrp_instance web {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority $2
  advert_int $3
  version $4
  nopreempt
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

ka_start() { # node advert version
	local node=$1 pid
	ka_conf "$node" 100 "$2" "$3" >"$RIG_DIR/$node/keepalived.conf"
	ip netns exec "$(rig_ns "$node")" keepalived --dont-fork --vrrp --log-console \
		--use-file "$RIG_DIR/$node/keepalived.conf" --pid "$RIG_DIR/$node/ka.pid" \
		--vrrp_pid "$RIG_DIR/$node/ka-vrrp.pid" >>"$RIG_DIR/$node/ka.log" 2>&1 &
	pid=$!
	echo "$pid keepalived-$node" >>"$RIG_PIDS_FILE"
	eval "KA_PID_$node=$pid"
}

ka_app() { # node: the same service as SK's, listening on every address
	local node=$1
	ip netns exec "$(rig_ns "$node")" setsid socat TCP-LISTEN:$RIG_VIP_PORT,fork,reuseaddr \
		SYSTEM:"echo $node" </dev/null >/dev/null 2>&1 &
	echo "$! app-$node" >>"$RIG_PIDS_FILE"
	eval "APP_PID_$node=$!"
}

ka_kill() { # node: keepalived (both processes) and the app
	local node=$1 p
	for p in $(cat "$RIG_DIR/$node/ka.pid" "$RIG_DIR/$node/ka-vrrp.pid" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
	eval "p=\$KA_PID_$node"; kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
	eval "p=\$APP_PID_$node"; kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
}

ka_rig() { # advert version
	rig_setup 2 1
	ka_app n1
	ka_app n2
	ka_start n1 "$1" "$2"
	rig_wait_for 100 rig_vip_holders_are n1 || true
	ka_start n2 "$1" "$2"
	rig_wait_for 100 rig_vip_answers
}

ka_measure() { # timing scenario advert version
	local timing=$1 scenario=$2 prim other p
	# The node that answers the client is the master (a killed keepalived may have
	# left a stale VIP behind on the other one).
	rig_wait_for 100 rig_vip_answers || true
	prim=$(rig_vip_answer)
	[ "$prim" = n1 ] && other=n2 || other=n1
	rig_start_probe c1 "$RIG_DIR/p.json" --duration 60
	sleep 0.3
	case $scenario in
	crash) ka_kill "$prim" ;;
	powercut) rig_exec "$prim" ip link set eth0 down; ka_kill "$prim" ;;
	swap) eval "p=\$KA_PID_$prim"; kill -TERM "$p"; wait "$p" 2>/dev/null || true ;;
	esac
	rig_wait_for 200 rig_vip_answer_is "$other" || echo "  keepalived: $other never answered" >&2
	sleep 0.2
	rig_stop_probe
	record keepalived "$timing" "$scenario" "$(jq .longest_outage_ms "$RIG_DIR/p.json")"
	# Back to a healthy pair; a SIGKILLed keepalived left its VIP behind: clean it.
	rig_exec "$prim" ip addr del "$RIG_VIP/24" dev eth0 2>/dev/null || true
	rig_exec "$prim" ip link set eth0 up
	eval "p=\$APP_PID_$prim"
	kill -0 "$p" 2>/dev/null || ka_app "$prim"
	ka_start "$prim" "$3" "$4"
	sleep 1
}

for timing in default fast; do
	if [ $timing = default ]; then sk_t="500 3000"; ka_t="1 2"; else sk_t="100 300"; ka_t="0.1 3"; fi
	for scenario in crash powercut swap; do
		echo "SK $timing $scenario x$RUNS" >&2
		sk_rig $sk_t
		for ((run = 0; run < RUNS; run++)); do sk_measure $timing $scenario; done
		rig_teardown
		echo "keepalived $timing $scenario x$RUNS" >&2
		ka_rig $ka_t
		for ((run = 0; run < RUNS; run++)); do ka_measure $timing $scenario $ka_t; done
		rig_teardown
	done
done

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
