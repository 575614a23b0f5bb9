#!/usr/bin/env bash
# Farm filter vs netfilter, same job, same traffic: in the veth rig (1 node, 1 client),
# a raw AF_PACKET sendmmsg sender in the client blasts UDP to the VIP from 256 source
# addresses; the node keeps the 1/3 of clients it owns and drops the rest, either with
# the farm XDP filter (3-node rendezvous table, hash by client IP) or with netfilter
# (iptables -m cluster --cluster-total-nodes 3 --cluster-local-node 1 when iptables and
# xt_cluster are there; else nft `jhash ip saddr mod 3` at the raw prerouting hook).
# Reports packets/s processed by each (median of rounds), the ratio, and JSON.
# Not part of the test suite. Root. Usage:
#   tests/bench/farm/netfilter_compare.sh BUILD_DIR [--seconds N] [--rounds N] [--out FILE]
set -eu

build=${1:?usage: $0 BUILD_DIR [--seconds N] [--rounds N] [--out FILE]}
shift
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/../../.." && pwd)
seconds=3
rounds=3
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

# ---- the sender: raw frames, sendmmsg batches, 256 client addresses ----
cat >"$work/sender.c" <<'C'
/* UDP flood for the benchmark: prebuilt Ethernet frames from 256 source IPs, sendmmsg on AF_PACKET. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NSRC 256
#define BATCH 256
#define LEN 60

static void mac(const char *s, uint8_t *m)
{
	sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
}

static uint16_t csum(const uint8_t *p, int n)
{
	uint32_t s = 0;
	for (int i = 0; i < n; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: sender IF DSTMAC SRCMAC VIP SRCBASE(a.b.c.) SECONDS\n");
		return 2;
	}
	int ifindex = (int)if_nametoindex(argv[1]);
	double secs = atof(argv[6]);
	static uint8_t frames[NSRC][LEN];
	for (int i = 0; i < NSRC; i++) {
		uint8_t *f = frames[i];
		memset(f, 0, LEN);
		mac(argv[2], f);
		mac(argv[3], f + 6);
		f[12] = 0x08;
		uint8_t *ip = f + 14;
		ip[0] = 0x45;
		ip[3] = 46;		/* total length: 20 + 8 + 18 payload */
		ip[8] = 64;
		ip[9] = 17;
		char src[32];
		snprintf(src, sizeof(src), "%s%d", argv[5], i < 254 ? i + 1 : (i % 200) + 1);
		inet_pton(AF_INET, src, ip + 12);
		inet_pton(AF_INET, argv[4], ip + 16);
		uint16_t c = csum(ip, 20);
		ip[10] = (uint8_t)(c >> 8);
		ip[11] = (uint8_t)c;
		uint8_t *udp = ip + 20;
		udp[0] = 0x9c;
		udp[1] = 0x40;		/* 40000 */
		udp[2] = 0x23;
		udp[3] = 0x28;		/* 9000 */
		udp[5] = 26;		/* 8 + 18 */
	}
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	int one = 1;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6 };
	memcpy(to.sll_addr, frames[0], 6);
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	unsigned long sent = 0, k = 0;
	for (;;) {
		for (int i = 0; i < BATCH; i++, k++) {
			iov[i].iov_base = frames[k % NSRC];
			iov[i].iov_len = LEN;
			memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
			msgs[i].msg_hdr.msg_name = &to;
			msgs[i].msg_hdr.msg_namelen = sizeof(to);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		int n = sendmmsg(fd, msgs, BATCH, 0);
		if (n > 0)
			sent += (unsigned long)n;
		clock_gettime(CLOCK_MONOTONIC, &t);
		double el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
		if (el >= secs) {
			printf("%lu %.6f\n", sent, el);
			return 0;
		}
	}
}
C
cc -O2 -Wall -o "$work/sender" "$work/sender.c"

# ---- the XDP loader: the real XdpFilter with a 3-node table, node 1 local ----
cat >"$work/farm_load.cpp" <<'CPP'
// Attaches the farm filter like skd does (3-node rendezvous table, this node = 1), waits for
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
	if (argc != 4) { fprintf(stderr, "usage: farm_load IF VIP SEED\n"); return 2; }
	XdpFilterOptions o;
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
	std::vector<FarmNodeWeight> nodes = { { 1, 1 }, { 2, 1 }, { 3, 1 } };
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

# ---- the rig: one node, one client; VIP on the node's lo, client resolves it to the node ----
rig_setup 1 1
rig_exec n1 ip addr add "$VIP/32" dev lo
rig_exec n1 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
node_mac=$(rig_exec n1 cat /sys/class/net/eth0/address)
client_mac=$(rig_exec c1 cat /sys/class/net/eth0/address)
# A UDP sink that never reads: owned packets end in a full socket buffer, not in ICMP errors.
rig_exec n1 python3 -c 'import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096); s.bind(("0.0.0.0",9000)); time.sleep(86400)' &
echo "$! sink" >>"$RIG_PIDS_FILE"

# run_sender -> "sent seconds"
run_sender() {
	rig_exec c1 "$work/sender" eth0 "$node_mac" "$client_mac" "$VIP" 198.18.2. "$seconds"
}

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

nf_on() {
	if [[ $nf_kind == iptables* ]]; then
		rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -m cluster --cluster-total-nodes 3 \
			--cluster-local-node 1 --cluster-hash-seed "$SEED" -j ACCEPT
		rig_exec n1 iptables -t mangle -A PREROUTING -d "$VIP" -p udp -j DROP
	else
		rig_exec n1 nft -f - <<NFT
table ip skbench {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		ip daddr $VIP jhash ip saddr mod 3 seed $SEED == 0 counter accept
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

xdp_runs=()
nf_runs=()
xdp_sent=()
nf_sent=()
xdp_mode=""
for ((r = 1; r <= rounds; r++)); do
	# XDP
	: >"$work/loader.out"
	ip netns exec "$(rig_ns n1)" "$work/farm_load" eth0 "$VIP" "$SEED" >"$work/loader.out" &
	loader_pid=$!
	rig_wait_for 100 grep -q '^ready' "$work/loader.out" || { echo "XDP loader failed" >&2; exit 1; }
	xdp_mode=$(awk '/^ready/ { print $2 }' "$work/loader.out")
	read -r sent secs < <(run_sender)
	kill -TERM "$loader_pid"
	wait "$loader_pid" || true
	loader_pid=""
	counts=$(grep '^{' "$work/loader.out")
	processed=$(jq '.owned + .dropped' <<<"$counts")
	xdp_runs+=("$(awk -v p="$processed" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')")
	xdp_sent+=("$(awk -v p="$sent" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')")
	owned_share=$(jq '.owned / (.owned + .dropped + 0.000001)' <<<"$counts")

	# netfilter
	nf_on
	read -r sent secs < <(run_sender)
	read -r acc drop < <(nf_counts)
	nf_off
	nf_runs+=("$(awk -v a="$acc" -v d="$drop" -v s="$secs" 'BEGIN { printf "%.0f", (a + d) / s }')")
	nf_sent+=("$(awk -v p="$sent" -v s="$secs" 'BEGIN { printf "%.0f", p / s }')")
	nf_share=$(awk -v a="$acc" -v d="$drop" 'BEGIN { printf "%.3f", a / (a + d + 0.000001) }')
	echo "round $r: xdp ${xdp_runs[-1]} pps (offered ${xdp_sent[-1]}, kept $owned_share), netfilter ${nf_runs[-1]} pps (offered ${nf_sent[-1]}, kept $nf_share)" >&2
done

xdp_pps=$(printf '%s\n' "${xdp_runs[@]}" | median)
nf_pps=$(printf '%s\n' "${nf_runs[@]}" | median)
ratio=$(awk -v x="$xdp_pps" -v n="$nf_pps" 'BEGIN { printf "%.2f", (n > 0 ? x / n : 0) }')

printf '%-44s %14s %14s\n' "filter (node keeps 1 of 3 client shares)" "processed pps" "offered pps"
printf '%-44s %14s %14s\n' "farm XDP ($xdp_mode)" "$xdp_pps" "$(printf '%s\n' "${xdp_sent[@]}" | median)"
printf '%-44s %14s %14s\n' "${nf_kind%% (*}" "$nf_pps" "$(printf '%s\n' "${nf_sent[@]}" | median)"
printf 'ratio XDP / netfilter: %s (median of %d rounds of %s s; offered load is one sender core)\n' "$ratio" "$rounds" "$seconds"

jq -n --arg nf "$nf_kind" --arg mode "$xdp_mode" --argjson x "$xdp_pps" --argjson n "$nf_pps" \
	--argjson ratio "$ratio" --argjson rounds "$rounds" --argjson secs "$seconds" \
	--argjson xr "[$(IFS=,; echo "${xdp_runs[*]}")]" --argjson nr "[$(IFS=,; echo "${nf_runs[*]}")]" \
	--argjson xs "[$(IFS=,; echo "${xdp_sent[*]}")]" --argjson ns "[$(IFS=,; echo "${nf_sent[*]}")]" \
	'{benchmark: "farm-netfilter-compare", xdp: {mode: $mode, pps: $x, rounds: $xr, offered: $xs},
	  netfilter: {kind: $nf, pps: $n, rounds: $nr, offered: $ns}, ratio: $ratio,
	  rounds: $rounds, seconds: $secs}' >"$out"
echo "wrote $out" >&2
