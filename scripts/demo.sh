#!/usr/bin/env bash
# SK's main job on one machine, as root: installs the dependencies, builds, and
# runs a two-node mirror cluster in network namespaces with a small service
# behind its virtual IP. A client in its own namespace keeps calling the VIP
# while the primary crashes; the demo prints the states and the outage the
# client saw, brings the old primary back, swaps back, and tears it all down.
set -eu
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/build.sh build >/dev/null

export SK_BIN_DIR=$PWD/build
. tests/integration/lib/rig.sh
. tests/integration/lib/mirror.sh

trap 'rig_teardown' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
state() {
	local n
	for n in n1 n2; do rig_skctl "$n" state -m web | sed 1d | head -1; done
	printf 'VIP %s is on: %s; the client gets: %s\n' "$RIG_VIP" "$(rig_vip_holders)" "$(rig_vip_answer)"
}

say "two nodes (n1, n2) and a client (c1) on one bridge, 198.18.0.0/24; module 'web' with VIP $RIG_VIP"
rig_setup 2 1
rig_write_cluster
RIG_HB_INTERVAL=500 RIG_HB_TIMEOUT=3000 rig_write_mirror_module web
for n in n1 n2; do
	rig_start_skd "$n"
	echo "skd running on $n (pid $(rig_skd_pid "$n"))"
done

say "first start: 'skctl start' on n2, 'skctl prim' on n1 (n1's data is the reference)"
rig_skctl n2 start -m web
rig_skctl n1 prim -m web
rig_wait_label n1 web 'PRIM/running' 200
rig_wait_label n2 web 'SECOND/in-sync' 200
state

say "the client calls the VIP every 10 ms; now n1's skd and app crash (SIGKILL)"
rig_start_probe c1 "$RIG_DIR/probe.json" --duration 60
sleep 0.5
rig_crash_node n1 web
rig_wait_label n2 web 'ALONE/running' 100
rig_wait_for 50 rig_vip_answer_is n2
sleep 0.5
rig_stop_probe
state
printf 'outage seen by the client: %s ms (skd crash detected through the broken peer link)\n' \
	"$(jq .longest_outage_ms "$RIG_DIR/probe.json")"

say "n1 comes back: it rejoins as secondary on its own"
rig_start_skd n1
rig_wait_label n1 web 'SECOND/in-sync' 200
rig_wait_label n2 web 'PRIM/running' 200
state

say "power cut of n2 (link down + SIGKILL): n1 takes over after the 3 s heartbeat timeout"
rig_start_probe c1 "$RIG_DIR/probe2.json" --duration 60
sleep 0.5
rig_exec n2 ip link set eth0 down
rig_crash_node n2 web
rig_wait_label n1 web 'ALONE/running' 100
rig_wait_for 50 rig_vip_answer_is n1
rig_stop_probe
state
printf 'outage seen by the client: %s ms (timeout 3000 ms)\n' "$(jq .longest_outage_ms "$RIG_DIR/probe2.json")"

say "the module log of n1"
cat "$RIG_DIR/n1/log/web.log"

say "tearing down"
