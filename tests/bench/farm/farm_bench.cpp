/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm XDP filter benchmark (on demand, root, never in the test suite): ns per
 * packet via BPF_PROG_RUN with repeat, for owned/unowned IPv4/IPv6 packets,
 * against an XDP_PASS-only baseline in the same run. Rounds visit the cases in
 * turn, so a burst of load on this shared machine hits every case alike;
 * each case reports the median and the minimum over rounds. Prints a table and
 * the ratios, writes JSON. Usage: farm_bench [--out FILE] [--repeat N] [--rounds N]
 */
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <nlohmann/json.hpp>

#include "farm/xdp_filter.h"
#include "farm_fixture.h"
#include "packet_builder.h"

using namespace sk;
using namespace sk::test;

namespace {

constexpr uint32_t kBuckets = SK_FARM_DEFAULT_BUCKETS;

/* r0 = XDP_PASS; exit. */
int loadBaseline()
{
	bpf_insn insns[2] = {};
	insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
	insns[0].dst_reg = BPF_REG_0;
	insns[0].imm = XDP_PASS;
	insns[1].code = BPF_JMP | BPF_EXIT;
	return bpf_prog_load(BPF_PROG_TYPE_XDP, "sk_bench_pass", "GPL", insns, 2, nullptr);
}

/* The kernel's average over `repeat` runs (opts.duration, ns); *action gets the XDP verdict. */
double nsPerPacket(int fd, const std::vector<uint8_t> &pkt, uint32_t repeat, uint32_t *action)
{
	std::vector<uint8_t> out(pkt.size() + 256);
	bpf_test_run_opts o{};
	o.sz = sizeof(o);
	o.data_in = pkt.data();
	o.data_size_in = static_cast<uint32_t>(pkt.size());
	o.data_out = out.data();
	o.data_size_out = static_cast<uint32_t>(out.size());
	o.repeat = repeat;
	if (bpf_prog_test_run_opts(fd, &o) < 0) {
		perror("bpf_prog_test_run_opts");
		exit(1);
	}
	*action = o.retval;
	return o.duration;
}

struct Case {
	std::string name;
	int fd;
	std::vector<uint8_t> packet;
	uint32_t expectAction;
};

} /* namespace */

int main(int argc, char **argv)
{
	std::string outPath = "farm_bench.json";
	uint32_t repeat = 1000000;
	int rounds = 9;
	for (int i = 1; i < argc; i++) {
		std::string a = argv[i];
		if (a == "--out" && i + 1 < argc)
			outPath = argv[++i];
		else if (a == "--repeat" && i + 1 < argc)
			repeat = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
		else if (a == "--rounds" && i + 1 < argc)
			rounds = std::max(1, std::atoi(argv[++i]));
		else {
			fprintf(stderr, "usage: %s [--out FILE] [--repeat N] [--rounds N]\n", argv[0]);
			return 2;
		}
	}
	if (geteuid() != 0) {
		fprintf(stderr, "farm_bench needs root (BPF_PROG_RUN)\n");
		return 1;
	}

	XdpFilterOptions o;
	o.module = "bench";
	o.pinRoot = "";
	o.hashMode = FarmHashMode::IpPort;
	o.buckets = kBuckets;
	o.seed = 0x5eed;
	o.nodeId = 1;
	o.mac = { 2, 0, 0, 0, 0, 1 };
	auto owned = XdpFilter::create(o);
	o.nodeId = 2;
	auto unowned = XdpFilter::create(o);
	/* Node 1 again, with the farm module's usual port list (tcp and udp 80, 443). */
	o.nodeId = 1;
	auto ported = XdpFilter::create(o);
	/* Node 1 again, every bucket taken over from node 2 and draining (socket lookups). */
	auto draining = XdpFilter::create(o);
	if (!owned.ok() || !unowned.ok() || !ported.ok() || !draining.ok()) {
		fprintf(stderr, "load: %s\n",
			(!owned.ok()     ? owned
			 : !unowned.ok() ? unowned
			 : !ported.ok()  ? ported
					 : draining)
				.error()
				.message.c_str());
		return 1;
	}
	FarmVipSet vips;
	vips.vips.push_back({ *FarmAddress::parse("198.18.0.100"), {} });
	vips.vips.push_back({ *FarmAddress::parse("fd00:5c::100"), {} });
	FarmVipSet withPorts = vips;
	for (uint16_t port : { 80, 443 })
		for (uint8_t proto : { 6, 17 })
			withPorts.globalPorts.push_back({ proto, port });
	const std::vector<uint32_t> allOne(kBuckets, 1);
	for (auto *f : { owned->get(), unowned->get(), ported->get() }) {
		if (!f->setVips(f == ported->get() ? withPorts : vips).ok() || !f->setOwners(allOne).ok()) {
			fprintf(stderr, "cannot configure the filter\n");
			return 1;
		}
	}
	if (!(*draining)->setVips(vips).ok() ||
	    !(*draining)->setOwnerTable(allOne, std::vector<uint32_t>(kBuckets, 2)).ok()) {
		fprintf(stderr, "cannot configure the draining filter\n");
		return 1;
	}
	const int baseline = loadBaseline();
	if (baseline < 0) {
		perror("load baseline");
		return 1;
	}

	const Mac vmac{ 2, 0x5c, 0, 0, 0, 0xaa }, cmac{ 2, 0, 0, 0, 0, 0xcc };
	auto v4 = PacketBuilder().eth(vmac, cmac).ipv4(ip4("198.18.1.7"), ip4("198.18.0.100"), 6)
			  .tcp(40000, 80).payload(22).bytes();
	auto v6 = PacketBuilder().eth(vmac, cmac).ipv6(ip6("fd00:5c::1:7"), ip6("fd00:5c::100"), 6)
			  .tcp(40000, 443).payload(22).bytes();
	auto v6ext = PacketBuilder().eth(vmac, cmac).ipv6(ip6("fd00:5c::1:7"), ip6("fd00:5c::100"), 0)
			     .ipv6Ext(60).ipv6Ext(6).tcp(40000, 443).bytes();
	auto other = PacketBuilder().eth(vmac, cmac).ipv4(ip4("198.18.1.7"), ip4("198.18.0.200"), 6)
			     .tcp(40000, 80).payload(22).bytes();
	auto v4ack = PacketBuilder().eth(vmac, cmac).ipv4(ip4("198.18.1.7"), ip4("198.18.0.100"), 6)
			     .tcp(40000, 80, 0x10).payload(22).bytes();
	auto v6ack = PacketBuilder().eth(vmac, cmac).ipv6(ip6("fd00:5c::1:7"), ip6("fd00:5c::100"), 6)
			     .tcp(40000, 443, 0x10).payload(22).bytes();
	auto v4ssh = PacketBuilder().eth(vmac, cmac).ipv4(ip4("198.18.1.7"), ip4("198.18.0.100"), 6)
			     .tcp(40000, 22).payload(22).bytes();
	const int ownFd = (*owned)->programFd(), unownFd = (*unowned)->programFd();
	const int portFd = (*ported)->programFd(), drainFd = (*draining)->programFd();
	const std::vector<Case> cases{
		{ "baseline XDP_PASS", baseline, v4, XDP_PASS },
		{ "not a VIP (IPv4)", ownFd, other, XDP_PASS },
		{ "IPv4 owned", ownFd, v4, XDP_PASS },
		{ "IPv4 unowned", unownFd, v4, XDP_DROP },
		{ "IPv6 owned", ownFd, v6, XDP_PASS },
		{ "IPv6 unowned", unownFd, v6, XDP_DROP },
		{ "IPv6 + 2 ext headers owned", ownFd, v6ext, XDP_PASS },
		{ "IPv4 owned, port list", portFd, v4, XDP_PASS },
		{ "IPv4 unlisted port", portFd, v4ssh, XDP_PASS },
		/* A bucket moved within drain_ms: SYNs as before, other segments look their socket up. */
		{ "IPv4 draining, SYN", drainFd, v4, XDP_PASS },
		{ "IPv4 draining, ACK (lookup)", drainFd, v4ack, XDP_DROP },
		{ "IPv6 draining, ACK (lookup)", drainFd, v6ack, XDP_DROP },
	};

	std::vector<std::vector<double>> samples(cases.size());
	for (int r = 0; r < rounds; r++) {
		for (size_t i = 0; i < cases.size(); i++) {
			const Case &c = cases[i];
			uint32_t action = 0;
			samples[i].push_back(nsPerPacket(c.fd, c.packet, repeat, &action));
			if (action != c.expectAction) {
				fprintf(stderr, "%s: XDP action %u, expected %u\n", c.name.c_str(), action,
					c.expectAction);
				return 1;
			}
		}
	}
	close(baseline);

	nlohmann::json results = nlohmann::json::array();
	double base = 0;
	printf("%-30s %10s %8s %8s\n", "case", "ns/packet", "min", "ratio");
	for (size_t i = 0; i < cases.size(); i++) {
		std::vector<double> &v = samples[i];
		std::sort(v.begin(), v.end());
		const double ns = v[v.size() / 2];
		if (base == 0)
			base = std::max(ns, 1.0);
		printf("%-30s %10.1f %8.1f %8.2f\n", cases[i].name.c_str(), ns, v.front(), ns / base);
		results.push_back({ { "case", cases[i].name }, { "ns_per_packet", ns }, { "ns_per_packet_min", v.front() },
				    { "ratio_to_baseline", ns / base } });
	}

	nlohmann::json doc{ { "benchmark", "farm_xdp_prog_run" }, { "repeat", repeat }, { "rounds", rounds },
			    { "buckets", kBuckets }, { "hash_mode", "ip+port" }, { "results", results } };
	std::ofstream(outPath) << doc.dump(2) << "\n";
	printf("wrote %s\n", outPath.c_str());
	return 0;
}
