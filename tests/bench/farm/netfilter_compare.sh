#!/usr/bin/env bash
# Farm filter vs netfilter, same job, same traffic, at equal CPU. One node, one client, a
# direct veth pair between them. The client's traffic generator is an XDP program run with
# BPF_PROG_RUN in live-frame mode: it transmits UDP frames to the VIP from 256 client
# addresses in turn (XDP_TX into the veth), a few tens of ns per frame, so the node's work
# dominates what is measured. The node keeps the clients it owns and drops the rest, either
# with the farm XDP filter (rendezvous table, hash by client IP; native XDP: the frames are
# XDP frames, as from a NIC driver) or with netfilter (iptables -m cluster when iptables and
# xt_cluster are there, else nft `jhash ip saddr mod 3` at raw prerouting) behind an XDP
# program that passes everything (on a veth, frames sent by XDP arrive only where a native
# XDP program is attached; it stands in for the NIC driver building the skbs).
#
# Everything runs on CPU 0 (the generator is pinned there and a veth receives on the CPU
# that sent), busy all the time, so 1/pps is the CPU time per packet. The floor, an XDP
# program that drops everything, is the generator plus the least any filter must pay to
# see a packet; a filter's cost is its ns/packet minus the floor's in the same round, and
# 1e9 / cost the packets/s one full core could filter. Two shares: "third" (the node keeps
# its third of the clients; the job) and "none" (every client belongs to another node: the
# filtering alone, no delivery). Medians of rounds; JSON with every round.
# Not part of the test suite. Root. Usage:
#   tests/bench/farm/netfilter_compare.sh BUILD_DIR [--seconds N] [--rounds N] [--out FILE]
set -eu

build=${1:?usage: $0 BUILD_DIR [--seconds N] [--rounds N] [--out FILE]}
shift
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/../../.." && pwd)
seconds=2
rounds=5
out=netfilter_compare.json
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) seconds=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, XDP)" >&2; exit 1; }
[ -f "$build/bpf/vmlinux.h" ] || { echo "no $build/bpf/vmlinux.h: build first" >&2; exit 1; }

SK_BIN_DIR=$build
. "$src/tests/integration/lib/rig.sh"

VIP=198.18.0.100
SEED=0x5eed1234
work=""

cleanup() {
	[ -n "${loader_pid:-}" ] && kill -TERM "$loader_pid" 2>/dev/null || true
	rig_teardown || true
	[ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

work=$(mktemp -d /tmp/sk-nfbench.XXXXXX)
bpfcc() { clang -O2 -g -target bpf -mcpu=v3 -I"$build/bpf" -c "$1" -o "$2"; }

# ---- the generator: XDP program + its BPF_PROG_RUN driver ----
cat >"$work/gen.bpf.c" <<'C'
/* Live-frame traffic generator: gives each frame the next of 256 client addresses (and
 * its header checksum) and transmits it out of the interface it runs on. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

__u32 turn;

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	__u8 *p = (void *)(long)ctx->data;
	if ((void *)(p + 34) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__u32 n = turn++;
	p[29] = (__u8)(n % 254 + 1);	/* last byte of the source address */
	p[24] = p[25] = 0;
	__u32 s = 0;
	for (int i = 14; i < 34; i += 2)
		s += (__u32)p[i] << 8 | p[i + 1];
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = ~s & 0xffff;
	p[24] = (__u8)(s >> 8);
	p[25] = (__u8)s;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
C
cat >"$work/gen.c" <<'C'
/* Runs gen.bpf.o in live-frame mode on IF for SECONDS; prints "frames seconds". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void mac(const char *s, unsigned char *m)
{
	sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: gen OBJ IF DSTMAC SRCMAC VIP SECONDS\n");
		return 2;
	}
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "gen: cannot load %s\n", argv[1]);
		return 1;
	}
	int fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "gen"));
	unsigned char f[60] = { 0 };
	mac(argv[3], f);
	mac(argv[4], f + 6);
	f[12] = 0x08;
	unsigned char *ip = f + 14;
	ip[0] = 0x45;
	ip[3] = 46;			/* total length: 20 + 8 + 18 payload */
	ip[8] = 64;
	ip[9] = 17;
	inet_pton(AF_INET, "198.18.2.1", ip + 12);
	inet_pton(AF_INET, argv[5], ip + 16);
	unsigned char *udp = ip + 20;
	udp[0] = 0x9c;
	udp[1] = 0x40;			/* 40000 */
	udp[2] = 0x23;
	udp[3] = 0x28;			/* 9000 */
	udp[5] = 26;
	struct xdp_md ctx = { .data_end = sizeof(f), .ingress_ifindex = if_nametoindex(argv[2]) };
	const unsigned per_call = 1u << 18;
	double secs = atof(argv[6]), el = 0;
	unsigned long frames = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (el < secs) {
		LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = f, .data_size_in = sizeof(f), .ctx_in = &ctx,
			    .ctx_size_in = sizeof(ctx), .repeat = per_call, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
			    .batch_size = 64);
		int err = bpf_prog_test_run_opts(fd, &o);
		if (err) {
			fprintf(stderr, "gen: BPF_PROG_RUN live frames: %s\n", strerror(-err));
			return 1;
		}
		frames += per_call;
		clock_gettime(CLOCK_MONOTONIC, &t);
		el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
	}
	printf("%lu %.6f\n", frames, el);
	return 0;
}
C
cat >"$work/fixed.bpf.c" <<'C'
/* The floor (drop everything) and the driver stand-in for netfilter (pass everything). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
SEC("xdp") int drop_all(struct xdp_md *ctx) { return XDP_DROP; }
SEC("xdp") int pass_all(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] SEC("license") = "GPL";
C
bpfcc "$work/gen.bpf.c" "$work/gen.bpf.o"
bpfcc "$work/fixed.bpf.c" "$work/fixed.bpf.o"
cc -O2 -Wall -o "$work/gen" "$work/gen.c" $(pkg-config --libs libbpf 2>/dev/null || echo -lbpf)

# ---- the XDP loader: the real XdpFilter with a 3-node table, node 1 local ----
cat >"$work/farm_load.cpp" <<'CPP'
// Attaches the farm filter like skd does (rendezvous table of nodes 1-3 or 2-3, this node = 1), waits for
// SIGTERM, prints the verdict counters as JSON.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <net/if.h>
#include <unistd.h>
#include "farm/buckets.h"
#include "farm/xdp_filter.h"
using namespace sk;
int main(int argc, char **argv)
{
	if (argc != 5) { fprintf(stderr, "usage: farm_load IF VIP SEED third|none\n"); return 2; }
	XdpFilterOptions o;
	o.mode = XdpMode::Native;	/* live frames reach a veth only through its native XDP */
	o.module = "bench";
	o.pinRoot = "";
	o.ifindex = static_cast<int>(if_nametoindex(argv[1]));
	o.hashMode = FarmHashMode::Ip;
	o.seed = static_cast<uint32_t>(std::stoul(argv[3], nullptr, 0));
	o.nodeId = 1;
	std::ifstream m(std::string("/sys/class/net/") + argv[1] + "/address");
	std::string mac; m >> mac;
	for (int i = 0; i < 6; i++) o.mac[i] = static_cast<uint8_t>(std::stoul(mac.substr(i * 3, 2), nullptr, 16));
	auto f = XdpFilter::create(o);
	if (!f) { fprintf(stderr, "farm_load: %s\n", f.error().message.c_str()); return 1; }
	auto a = FarmAddress::parse(argv[2]);
	if (!a) return 1;
	FarmVipSet set; set.vips.push_back({ *a, {} });
	if (!(*f)->setVips(set)) return 1;
	/* third: node 1 of 3 owns its share; none: nodes 2 and 3 own every bucket */
	std::vector<FarmNodeWeight> nodes = { { 2, 1 }, { 3, 1 } };
	if (std::string(argv[4]) == "third")
		nodes.insert(nodes.begin(), { 1, 1 });
	auto owners = farmAssignBuckets(o.seed, o.buckets, nodes);
	if (!owners || !(*f)->setOwners(*owners)) return 1;
	sigset_t ss; sigemptyset(&ss); sigaddset(&ss, SIGTERM); sigaddset(&ss, SIGINT);
	sigprocmask(SIG_BLOCK, &ss, nullptr);
	printf("ready %s\n", (*f)->nativeMode() ? "native" : "generic"); fflush(stdout);
	int sig; sigwait(&ss, &sig);
	auto c = (*f)->counters();
	if (!c) return 1;
	printf("{\"owned\": %llu, \"dropped\": %llu}\n", (unsigned long long)c->verdicts[SK_FARM_PASS_OWNED],
	       (unsigned long long)c->verdicts[SK_FARM_DROP_NOT_OWNED]);
	return 0;
}
CPP
cflags=$(python3 - "$build/compile_commands.json" <<'PY'
import json, shlex, sys
for e in json.load(open(sys.argv[1])):
    if e["file"].endswith("farm/xdp_filter.cpp"):
        args = shlex.split(e["command"])
        keep = [a for a in args if a.startswith(("-I", "-D", "-std"))]
        print(" ".join("-I" + (a[2:] if a[2:].startswith("/") else e["directory"] + "/" + a[2:]) if a.startswith("-I") else a for a in keep))
        break
PY
)
# shellcheck disable=SC2086
g++ -O2 $cflags -o "$work/farm_load" "$work/farm_load.cpp" "$build/userspace/libsk.a" \
	$(pkg-config --libs libbpf liburing fmt fuse3 libmnl openssl libxxhash 2>/dev/null || echo "-lbpf -luring -lfmt -lfuse3 -lmnl -lssl -lcrypto -lxxhash") -lpthread


# ---- the rig: one node, one client, a direct veth pair gen0 (client) - eth1 (node);
# the VIP on the node's lo ----
rig_setup 1 1
ip link add gen0 netns "$(rig_ns c1)" type veth peer name eth1 netns "$(rig_ns n1)"
rig_exec c1 ip link set gen0 up
rig_exec n1 ip addr add 198.18.3.1/24 dev eth1
rig_exec n1 ip link set eth1 up
rig_exec n1 ip addr add "$VIP/32" dev lo
rig_exec n1 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth1.rp_filter=0
node_mac=$(rig_exec n1 cat /sys/class/net/eth1/address)
client_mac=$(rig_exec c1 cat /sys/class/net/gen0/address)
# A UDP sink that never reads: owned packets end in a full socket buffer, not in ICMP errors.
rig_exec n1 python3 -c 'import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096); s.bind(("0.0.0.0",9000)); time.sleep(86400)' &
echo "$! sink" >>"$RIG_PIDS_FILE"

# run_gen [SECONDS] -> packets/s; the generator and the node's receive work both on CPU 0
run_gen() {
	local sent secs
	read -r sent secs < <(rig_exec c1 taskset -c 0 "$work/gen" "$work/gen.bpf.o" gen0 "$node_mac" "$client_mac" \
		"$VIP" "${1:-$seconds}")
	awk -v p="$sent" -v s="$secs" 'BEGIN { printf "%.0f", p / s }'
}
# farm_run SHARE [SECONDS] -> "pps owned dropped": the farm filter attached for one run
farm_run() {
	local p
	ip netns exec "$(rig_ns n1)" "$work/farm_load" eth1 "$VIP" "$SEED" "$1" >"$work/loader.out" &
	loader_pid=$!
	rig_wait_for 100 grep -q '^ready' "$work/loader.out" || { echo "XDP loader failed" >&2; exit 1; }
	p=$(run_gen "${2:-}")
	kill -TERM "$loader_pid"
	wait "$loader_pid" || true
	loader_pid=""
	echo "$p $(grep '^{' "$work/loader.out" | jq -r '"\(.owned) \(.dropped)"')"
}
# cost_ns PPS FLOOR_PPS -> ns per packet above the floor
cost_ns() { awk -v p="$1" -v f="$2" 'BEGIN { printf "%.0f", 1e9 / p - 1e9 / f }'; }
fixed_on() { rig_exec n1 ip link set dev eth1 xdpdrv obj "$work/fixed.bpf.o" sec xdp program "$1"; }
fixed_off() { rig_exec n1 ip link set dev eth1 xdpdrv off; }

nf_kind=""
if command -v iptables >/dev/null 2>&1 &&
	rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -m cluster --cluster-total-nodes 3 \
		--cluster-local-node 1 --cluster-hash-seed "$SEED" -j ACCEPT 2>/dev/null; then
	rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -j DROP
	nf_kind="iptables -m cluster (xt_cluster, mangle PREROUTING, needs conntrack)"
	rig_exec n1 iptables -t mangle -F
else
	nf_kind="nft jhash ip saddr mod 3 (raw prerouting, no conntrack)"
fi

nf_on() { # third|none
	# none: a node number no client hashes to (mod 3 is never 3; 32 nodes keep about 1/32)
	local total=3 local_node=$nf_node nft_node=$((nf_node - 1))
	[ "$1" = none ] && { total=32; local_node=32; nft_node=3; }
	if [[ $nf_kind == iptables* ]]; then
		rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -m cluster --cluster-total-nodes "$total" \
			--cluster-local-node "$local_node" --cluster-hash-seed "$SEED" -j ACCEPT
		rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -j DROP
	else
		rig_exec n1 nft -f - <<NFT
table ip skbench {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		ip daddr $VIP jhash ip saddr mod 3 seed $SEED == $nft_node counter accept
		ip daddr $VIP counter drop
	}
}
NFT
	fi
}
# nf_counts -> "accepted dropped"
nf_counts() {
	if [[ $nf_kind == iptables* ]]; then
		rig_exec n1 iptables -t mangle -L PREROUTING -v -x -n | awk '/ACCEPT/ { a = $1 } /DROP/ { d = $1 } END { print a + 0, d + 0 }'
	else
		rig_exec n1 nft list table ip skbench | awk '/counter/ { for (i = 1; i <= NF; i++) if ($i == "packets") v[n++] = $(i + 1) } END { print v[0] + 0, v[1] + 0 }'
	fi
}
nf_off() {
	if [[ $nf_kind == iptables* ]]; then rig_exec n1 iptables -t mangle -F; else rig_exec n1 nft delete table ip skbench; fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ns() { awk -v p="$1" 'BEGIN { printf "%.0f", 1e9 / p }'; }

# The hash functions differ, so which third of the clients node 1 keeps differs too: let
# netfilter play the node (1, 2 or 3 of 3) whose share of these 254 clients is closest to the
# farm filter's, so that both deliver about as many packets to the stack.
share_of() { awk -v a="$1" -v d="$2" 'BEGIN { printf "%.3f", a / (a + d + 0.000001) }'; }
read -r _ acc drop < <(farm_run third 0.3)
xdp_share=$(share_of "$acc" "$drop")
best=""
fixed_on pass_all
for nf_node in 1 2 3; do
	nf_on third
	run_gen 0.3 >/dev/null
	read -r acc drop < <(nf_counts)
	nf_off
	d=$(awk -v a="$(share_of "$acc" "$drop")" -v x="$xdp_share" 'BEGIN { d = a - x; print (d < 0 ? -d : d) }')
	if [ -z "$best" ] || awk -v d="$d" -v b="$best_d" 'BEGIN { exit !(d < b) }'; then best=$nf_node; best_d=$d; fi
done
fixed_off
nf_node=$best
echo "netfilter plays node $nf_node of 3 (its share of the clients is closest to the farm filter's)" >&2

declare -A pps cost kept
shares=(third none)
for ((r = 1; r <= rounds; r++)); do
	fixed_on drop_all
	floor=$(run_gen)
	fixed_off
	pps[floor]+="$floor "
	line="round $r: floor $floor pps"
	for share in "${shares[@]}"; do
		# farm XDP
		read -r p acc drop < <(farm_run "$share")
		pps[xdp-$share]+="$p "
		cost[xdp-$share]+="$(cost_ns "$p" "$floor") "
		kept[xdp-$share]=$(share_of "$acc" "$drop")

		# netfilter behind the pass-all XDP program
		fixed_on pass_all
		nf_on "$share"
		p=$(run_gen)
		read -r acc drop < <(nf_counts)
		nf_off
		fixed_off
		pps[nf-$share]+="$p "
		cost[nf-$share]+="$(cost_ns "$p" "$floor") "
		kept[nf-$share]=$(share_of "$acc" "$drop")
		line+=", $share: xdp $(awk '{ print $NF }' <<<"${pps[xdp-$share]}") nf $(awk '{ print $NF }' <<<"${pps[nf-$share]}")"
	done
	echo "$line" >&2
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
floor_pps=$(med "${pps[floor]}")
printf '%-46s %6s %10s %10s %10s %14s\n' "one CPU: generator + node" "kept" "pps" "ns/packet" "filter ns" "filter pps/core"
printf '%-46s %6s %10s %10s %10s %14s\n' "floor: XDP drop all (native)" "0" "$floor_pps" "$(ns "$floor_pps")" - -
json_rows=()
for share in "${shares[@]}"; do
	for f in xdp nf; do
		k=$f-$share
		if [ "$f" = xdp ]; then name="farm XDP (native)"; else name="${nf_kind%% (*}"; fi
		c=$(med "${cost[$k]}")
		printf '%-46s %6s %10s %10s %10s %14s\n' "$name, share $share" "${kept[$k]}" "$(med "${pps[$k]}")" \
			"$(ns "$(med "${pps[$k]}")")" "$c" "$(awk -v c="$c" 'BEGIN { if (c > 0) printf "%.0f", 1e9 / c; else print "-" }')"
		json_rows+=("$(jq -n --arg k "$k" --arg name "$name" --argjson kept "${kept[$k]}" \
			--argjson pps "[$(tr ' ' '\n' <<<"${pps[$k]}" | grep . | paste -sd,)]" \
			--argjson cost "[$(tr ' ' '\n' <<<"${cost[$k]}" | grep . | paste -sd,)]" \
			--argjson c "$c" '{key: $k, filter: $name, kept: $kept, pps_rounds: $pps, filter_ns_rounds: $cost, filter_ns: $c}')")
	done
	x=$(med "${cost[xdp-$share]}")
	n=$(med "${cost[nf-$share]}")
	# A farm filter cost at or below 0 is within the noise of the floor (a few ns against
	# ~300): no ratio then, only its lower bound against the spread of the floor's rounds.
	if awk -v x="$x" 'BEGIN { exit !(x > 0) }'; then
		ratio=$(awk -v x="$x" -v n="$n" 'BEGIN { printf "%.2f", n / x }')
		json_rows+=("$(jq -n --arg s "$share" --argjson r "$ratio" '{share: $s, ratio_filter_cost: $r}')")
		printf 'share %s: filter cost netfilter / XDP = %s  (packets/s per core at equal CPU; target: at least 3)\n' \
			"$share" "$ratio"
	else
		spread=$(tr ' ' '\n' <<<"${pps[floor]}" | grep . | awk '{ ns = 1e9 / $1; if (NR == 1 || ns < lo) lo = ns; if (NR == 1 || ns > hi) hi = ns }
			END { printf "%.0f", hi - lo }')
		json_rows+=("$(jq -n --arg s "$share" --argjson spread "$spread" '{share: $s, ratio_filter_cost: null,
			xdp_cost_within_noise_ns: $spread}')")
		printf 'share %s: the farm filter'"'"'s cost is within the noise of the floor (its rounds spread over %s ns);' \
			"$share" "$spread"
		printf ' netfilter / XDP is at least %s\n' "$(awk -v n="$n" -v s="$spread" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
	fi
done
printf '(median of %d rounds of %s s; filter cost = ns/packet minus the floor'"'"'s in the same round)\n' "$rounds" "$seconds"
printf '%s\n' "${json_rows[@]}" | jq -s --arg nf "$nf_kind" --argjson f "[$(tr ' ' '\n' <<<"${pps[floor]}" | grep . | paste -sd,)]" \
	--argjson rounds "$rounds" --argjson secs "$seconds" \
	'{benchmark: "farm-netfilter-compare", netfilter: $nf, floor_pps_rounds: $f, rounds: $rounds, seconds: $secs, results: .}' >"$out"
echo "wrote $out" >&2
