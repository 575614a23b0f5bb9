/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm XDP filter under BPF_PROG_RUN (root): a fixture table of packets with
 * their expected verdict and output, a property test over three nodes, and the
 * loader's pin/attach lifecycle. Each fixture owns exactly the expected bucket
 * (or everything but it), so a packet hashed anywhere else fails the test.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <linux/if_link.h>
#include <linux/magic.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <random>
#include <set>

#include <bpf/libbpf.h>

#include "farm/buckets.h"
#include "farm_fixture.h"
#include "packet_builder.h"

using namespace sk;
using namespace sk::test;

namespace {

constexpr uint32_t kSeed = 0x5eed1234;
constexpr uint32_t kBuckets = 1024;
constexpr uint32_t kThisNode = 1;
constexpr uint32_t kOtherNode = 2;
constexpr uint8_t kTcp = 6, kUdp = 17, kIcmp = 1, kIcmp6 = 58;
const Mac kOwnMac{ 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
const Mac kVirtualMac{ 0x02, 0x5c, 0x00, 0x00, 0x00, 0xaa };
const Mac kClientMac{ 0x02, 0x00, 0x00, 0x00, 0x00, 0xcc };
const Mac kBroadcast{ 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

const char *kVip4 = "198.18.0.100";
const char *kVip6 = "fd00:5c::100";
const char *kVip4Ports = "198.18.0.101";	/* tcp 80, udp 53 */
const char *kVip6Ports = "fd00:5c::101";	/* tcp 443 */
const char *kClient4 = "198.18.1.7";
const char *kClient6 = "fd00:5c::1:7";
const char *kRouter4 = "198.18.0.1";
const char *kRouter6 = "fd00:5c::1";

FarmAddress addr(const char *text)
{
	auto a = FarmAddress::parse(text);
	REQUIRE_MESSAGE(a.ok(), text);
	return *a;
}

FarmVipSet testVips()
{
	FarmVipSet s;
	s.vips.push_back({ addr(kVip4), {} });
	s.vips.push_back({ addr(kVip6), {} });
	s.vips.push_back({ addr(kVip4Ports), { { kTcp, 80 }, { kUdp, 53 } } });
	s.vips.push_back({ addr(kVip6Ports), { { kTcp, 443 } } });
	return s;
}

std::unique_ptr<XdpFilter> makeFilter(FarmHashMode mode, uint32_t node = kThisNode,
				      const std::string &pinRoot = "", const std::string &module = "t")
{
	REQUIRE_MESSAGE(geteuid() == 0, "BPF tests need root (suite 'bpf')");
	XdpFilterOptions o;
	o.module = module;
	o.pinRoot = pinRoot;
	o.hashMode = mode;
	o.buckets = kBuckets;
	o.seed = kSeed;
	o.nodeId = node;
	o.mac = kOwnMac;
	auto f = XdpFilter::create(o);
	REQUIRE_MESSAGE(f.ok(), f.error().message);
	REQUIRE(f.value()->setVips(testVips()).ok());
	return std::move(f.value());
}

PacketBuilder toVip() { return PacketBuilder().eth(kVirtualMac, kClientMac); }

std::vector<uint8_t> tcp4(const char *src, const char *dst, uint16_t sport, uint16_t dport)
{
	return toVip().ipv4(ip4(src), ip4(dst), kTcp).tcp(sport, dport).payload(20).bytes();
}

std::vector<uint8_t> tcp6(const char *src, const char *dst, uint16_t sport, uint16_t dport)
{
	return toVip().ipv6(ip6(src), ip6(dst), kTcp).tcp(sport, dport).payload(20).bytes();
}

struct Fixture {
	const char *what;
	FarmHashMode mode;
	std::vector<uint8_t> packet;
	sk_farm_verdict verdict;
	FlowKey key;	/* for balanced verdicts */
	std::vector<uint8_t> expectOut;	/* empty: computed (MAC rewritten if owned, else untouched) */
};

const char *verdictName(uint32_t v)
{
	static const char *const names[] = { "PASS_NOT_VIP", "PASS_OWNED", "DROP_NOT_OWNED",
					     "PASS_MALFORMED", "PASS_PORT_UNLISTED", "PASS_FLOW_HERE",
					     "DROP_FLOW_ELSEWHERE" };
	return v < SK_FARM_VERDICT_MAX ? names[v] : "?";
}

FlowKey key(const char *a, int port = -1) { return { addr(a), port }; }

std::vector<Fixture> fixtures()
{
	using M = FarmHashMode;
	std::vector<Fixture> t;
	auto both = [&](const char *what, std::vector<uint8_t> p, FlowKey ipKey, FlowKey portKey) {
		t.push_back({ what, M::Ip, p, SK_FARM_PASS_OWNED, ipKey, {} });
		t.push_back({ what, M::Ip, p, SK_FARM_DROP_NOT_OWNED, ipKey, {} });
		t.push_back({ what, M::IpPort, p, SK_FARM_PASS_OWNED, portKey, {} });
		t.push_back({ what, M::IpPort, p, SK_FARM_DROP_NOT_OWNED, portKey, {} });
	};
	auto pass = [&](const char *what, std::vector<uint8_t> p, sk_farm_verdict v) {
		t.push_back({ what, M::Ip, p, v, {}, {} });
		t.push_back({ what, M::IpPort, p, v, {}, {} });
	};

	/* Plain IPv4 / IPv6, TCP / UDP. */
	both("IPv4 TCP to VIP", tcp4(kClient4, kVip4, 40000, 80), key(kClient4), key(kClient4, 40000));
	both("IPv4 UDP to VIP", toVip().ipv4(ip4(kClient4), ip4(kVip4), kUdp).udp(5353, 53).bytes(),
	     key(kClient4), key(kClient4, 5353));
	both("IPv6 TCP to VIP", tcp6(kClient6, kVip6, 50000, 443), key(kClient6), key(kClient6, 50000));
	both("IPv6 UDP to VIP", toVip().ipv6(ip6(kClient6), ip6(kVip6), kUdp).udp(1234, 53).payload(4).bytes(),
	     key(kClient6), key(kClient6, 1234));

	/* VLAN tags. */
	both("802.1Q IPv4 TCP", toVip().vlan(0x8100, 10).ipv4(ip4(kClient4), ip4(kVip4), kTcp).tcp(40001, 80).bytes(),
	     key(kClient4), key(kClient4, 40001));
	both("QinQ (802.1ad + 802.1Q) IPv6 UDP",
	     toVip().vlan(0x88a8, 100).vlan(0x8100, 10).ipv6(ip6(kClient6), ip6(kVip6), kUdp).udp(999, 53).bytes(),
	     key(kClient6), key(kClient6, 999));
	pass("three VLAN tags: not parsed, passes",
	     toVip().vlan(0x88a8, 1).vlan(0x8100, 2).vlan(0x8100, 3).ipv4(ip4(kClient4), ip4(kVip4), kTcp).tcp(1, 80).bytes(),
	     SK_FARM_PASS_NOT_VIP);

	/* IPv4 options. */
	both("IPv4 with router-alert option",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kTcp, { 0x94, 0x04, 0x00, 0x00 }).tcp(40002, 80).bytes(),
	     key(kClient4), key(kClient4, 40002));
	both("IPv4 with 40 bytes of options (IHL 15)",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kTcp, std::vector<uint8_t>(40, 0x01)).tcp(40003, 80).bytes(),
	     key(kClient4), key(kClient4, 40003));

	/* IPv6 extension headers. */
	both("IPv6 hop-by-hop + destination options + routing",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6), 0).ipv6Ext(60).ipv6Ext(43, 2).ipv6Ext(kTcp, 1).tcp(50001, 443).bytes(),
	     key(kClient6), key(kClient6, 50001));
	{
		/* AH: length in 4-byte units minus 2. */
		auto p = toVip().ipv6(ip6(kClient6), ip6(kVip6), 51)
				 .raw({ kUdp, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 })
				 .udp(7000, 53).bytes();
		both("IPv6 AH", p, key(kClient6), key(kClient6, 7000));
	}
	{
		PacketBuilder b = toVip().ipv6(ip6(kClient6), ip6(kVip6), 60);
		for (int i = 0; i < SK_FARM_MAX_IPV6_EXT; i++)
			b.ipv6Ext(60);
		b.ipv6Ext(kTcp).tcp(50002, 443);
		both("IPv6 with more extension headers than the bound: balanced on IP only",
		     b.bytes(), key(kClient6), key(kClient6));
	}

	/* Fragments: every fragment, the first included, hashes on the client IP only. */
	both("IPv4 first fragment (MF, offset 0)",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kUdp, {}, 0x2000).udp(6000, 53).payload(64).bytes(),
	     key(kClient4), key(kClient4));
	both("IPv4 middle fragment (MF, offset 9)",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kUdp, {}, 0x2000 | 9).payload(72).bytes(),
	     key(kClient4), key(kClient4));
	both("IPv4 last fragment (offset 18)",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kUdp, {}, 18).payload(30).bytes(),
	     key(kClient4), key(kClient4));
	both("IPv4 DF set is not a fragment",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kTcp, {}, 0x4000).tcp(40004, 80).bytes(),
	     key(kClient4), key(kClient4, 40004));
	both("IPv6 first fragment",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6), 44).ipv6Frag(kUdp, 0, true).udp(6001, 53).payload(64).bytes(),
	     key(kClient6), key(kClient6));
	both("IPv6 non-first fragment",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6), 0).ipv6Ext(44).ipv6Frag(kUdp, 9, false).payload(40).bytes(),
	     key(kClient6), key(kClient6));
	both("IPv6 atomic fragment (offset 0, no M) keeps ports",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6), 44).ipv6Frag(kTcp, 0, false).tcp(50003, 443).bytes(),
	     key(kClient6), key(kClient6, 50003));

	/* ICMP errors about our replies (VIP -> client) follow the client's flow. */
	both("ICMPv4 frag-needed quoting VIP:80 -> client:40000",
	     toVip().ipv4(ip4(kRouter4), ip4(kVip4), kIcmp).icmp(3, 4, 1400)
		     .ipv4(ip4(kVip4), ip4(kClient4), kTcp).tcp(80, 40000).bytes(),
	     key(kClient4), key(kClient4, 40000));
	both("ICMPv4 time exceeded quoting a packet with IP options",
	     toVip().ipv4(ip4(kRouter4), ip4(kVip4), kIcmp).icmp(11, 0)
		     .ipv4(ip4(kVip4), ip4(kClient4), kUdp, { 1, 1, 1, 0 }).udp(53, 5353).bytes(),
	     key(kClient4), key(kClient4, 5353));
	both("ICMPv4 error with a truncated quote: outer source, no port",
	     truncated(toVip().ipv4(ip4(kRouter4), ip4(kVip4), kIcmp).icmp(3, 4, 1400)
			       .ipv4(ip4(kVip4), ip4(kClient4), kTcp).tcp(80, 40000).bytes(), 14 + 20 + 8 + 12),
	     key(kRouter4), key(kRouter4));
	both("ICMPv4 echo request to VIP: client IP, no port",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4), kIcmp).icmp(8, 0, 0x00010001).payload(56).bytes(),
	     key(kClient4), key(kClient4));
	both("ICMPv6 packet too big quoting VIP:443 -> client:50000",
	     toVip().ipv6(ip6(kRouter6), ip6(kVip6), kIcmp6).icmp(2, 0, 1280)
		     .ipv6(ip6(kVip6), ip6(kClient6), kTcp).tcp(443, 50000).bytes(),
	     key(kClient6), key(kClient6, 50000));
	both("ICMPv6 unreachable quoting a packet with a destination options header: client IP only",
	     toVip().ipv6(ip6(kRouter6), ip6(kVip6), kIcmp6).icmp(1, 4)
		     .ipv6(ip6(kVip6), ip6(kClient6), 60).ipv6Ext(kUdp).udp(53, 1234).bytes(),
	     key(kClient6), key(kClient6));
	both("ICMPv6 packet too big quoting a UDP reply",
	     toVip().ipv6(ip6(kRouter6), ip6(kVip6), kIcmp6).icmp(2, 0, 1280)
		     .ipv6(ip6(kVip6), ip6(kClient6), kUdp).udp(53, 1235).payload(100).bytes(),
	     key(kClient6), key(kClient6, 1235));

	/* ARP / ND and other traffic pass untouched. */
	pass("ARP request for the VIP",
	     PacketBuilder().eth(kBroadcast, kClientMac).ethertype(0x0806)
		     .raw({ 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0xcc, 198, 18, 1, 7, 0, 0, 0, 0, 0, 0, 198, 18, 0, 100 })
		     .bytes(),
	     SK_FARM_PASS_NOT_VIP);
	pass("ND neighbour solicitation to the VIP (unicast NUD)",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6), kIcmp6).icmp(135, 0).raw(std::vector<uint8_t>(16, 0)).bytes(),
	     SK_FARM_PASS_NOT_VIP);
	pass("ND neighbour solicitation to the solicited-node address",
	     toVip().ipv6(ip6(kClient6), ip6("ff02::1:ff00:100"), kIcmp6).icmp(135, 0).raw(std::vector<uint8_t>(16, 0)).bytes(),
	     SK_FARM_PASS_NOT_VIP);
	pass("IPv4 TCP to a non-VIP address", tcp4(kClient4, "198.18.0.200", 40000, 80), SK_FARM_PASS_NOT_VIP);
	pass("IPv4 TCP from the VIP (reply direction)", tcp4(kVip4, kClient4, 80, 40000), SK_FARM_PASS_NOT_VIP);
	pass("IPv6 TCP to a non-VIP address", tcp6(kClient6, "fd00:5c::200", 50000, 443), SK_FARM_PASS_NOT_VIP);
	pass("LLDP", PacketBuilder().eth(kBroadcast, kClientMac).ethertype(0x88cc).payload(40).bytes(),
	     SK_FARM_PASS_NOT_VIP);

	/* Malformed L2/L3: left to the kernel. */
	pass("truncated VLAN tag", truncated(toVip().vlan(0x8100, 5).ipv4(ip4(kClient4), ip4(kVip4), kTcp).bytes(), 16),
	     SK_FARM_PASS_MALFORMED);
	pass("truncated IPv4 header", truncated(tcp4(kClient4, kVip4, 1, 80), 14 + 12), SK_FARM_PASS_MALFORMED);
	pass("truncated IPv4 options",
	     truncated(toVip().ipv4(ip4(kClient4), ip4(kVip4), kTcp, std::vector<uint8_t>(40, 1)).bytes(), 14 + 40),
	     SK_FARM_PASS_MALFORMED);
	{
		auto p = tcp4(kClient4, kVip4, 1, 80);
		p[14] = 0x44;	/* IHL 4 */
		pass("IPv4 IHL below 5", p, SK_FARM_PASS_MALFORMED);
		p[14] = 0x65;	/* version 6 inside an IPv4 ethertype */
		pass("IPv4 ethertype with version 6", p, SK_FARM_PASS_MALFORMED);
		p[14] = 0x35;	/* version 3: below the version/IHL range check */
		pass("IPv4 ethertype with version 3", p, SK_FARM_PASS_MALFORMED);
	}
	pass("truncated IPv6 header", truncated(tcp6(kClient6, kVip6, 1, 443), 14 + 30), SK_FARM_PASS_MALFORMED);
	pass("truncated IPv6 extension header",
	     truncated(toVip().ipv6(ip6(kClient6), ip6(kVip6), 0).ipv6Ext(kTcp, 3).tcp(1, 443).bytes(), 14 + 40 + 16),
	     SK_FARM_PASS_MALFORMED);
	pass("truncated IPv6 fragment header",
	     truncated(toVip().ipv6(ip6(kClient6), ip6(kVip6), 44).ipv6Frag(kUdp, 0, true).bytes(), 14 + 40 + 4),
	     SK_FARM_PASS_MALFORMED);
	/* Truncated L4 to a VIP: still decided, on the IP only (every node must agree). */
	both("IPv4 TCP to VIP with a 2-byte L4 header",
	     truncated(tcp4(kClient4, kVip4, 40005, 80), 14 + 20 + 2), key(kClient4), key(kClient4));

	/* Port rules: VIP4P balances tcp/80 and udp/53 only; VIP6P tcp/443 only. */
	both("port rule: tcp/80 listed", tcp4(kClient4, kVip4Ports, 40006, 80), key(kClient4), key(kClient4, 40006));
	both("port rule: udp/53 listed",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4Ports), kUdp).udp(40007, 53).bytes(),
	     key(kClient4), key(kClient4, 40007));
	pass("port rule: tcp/22 unlisted", tcp4(kClient4, kVip4Ports, 40008, 22), SK_FARM_PASS_PORT_UNLISTED);
	pass("port rule: udp/80 unlisted (protocol differs)",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4Ports), kUdp).udp(40009, 80).bytes(), SK_FARM_PASS_PORT_UNLISTED);
	both("port rule: fragments are balanced on IP",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4Ports), kUdp, {}, 0x2000).udp(40010, 9999).payload(64).bytes(),
	     key(kClient4), key(kClient4));
	both("port rule: ICMP echo is balanced on IP",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4Ports), kIcmp).icmp(8, 0).bytes(), key(kClient4), key(kClient4));
	both("port rule: IPv6 tcp/443 listed", tcp6(kClient6, kVip6Ports, 50004, 443), key(kClient6),
	     key(kClient6, 50004));
	pass("port rule: IPv6 tcp/80 unlisted", tcp6(kClient6, kVip6Ports, 50005, 80), SK_FARM_PASS_PORT_UNLISTED);
	pass("port rule of another VIP does not leak: VIP6P tcp/53",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6Ports), kTcp).tcp(50006, 53).bytes(), SK_FARM_PASS_PORT_UNLISTED);
	/* The same rules on the general path (VLAN tag, IPv4 options, extension headers), not the fast one. */
	both("port rule, 802.1Q: tcp/80 listed",
	     toVip().vlan(0x8100, 7).ipv4(ip4(kClient4), ip4(kVip4Ports), kTcp).tcp(40011, 80).bytes(),
	     key(kClient4), key(kClient4, 40011));
	pass("port rule, 802.1Q: tcp/22 unlisted",
	     toVip().vlan(0x8100, 7).ipv4(ip4(kClient4), ip4(kVip4Ports), kTcp).tcp(40012, 22).bytes(),
	     SK_FARM_PASS_PORT_UNLISTED);
	pass("port rule, IPv4 options: udp/54 unlisted",
	     toVip().ipv4(ip4(kClient4), ip4(kVip4Ports), kUdp, { 1, 1, 1, 0 }).udp(40013, 54).bytes(),
	     SK_FARM_PASS_PORT_UNLISTED);
	both("port rule, IPv6 destination options: tcp/443 listed",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6Ports), 60).ipv6Ext(kTcp).tcp(50007, 443).bytes(),
	     key(kClient6), key(kClient6, 50007));
	pass("port rule, IPv6 destination options: tcp/80 unlisted",
	     toVip().ipv6(ip6(kClient6), ip6(kVip6Ports), 60).ipv6Ext(kTcp).tcp(50008, 80).bytes(),
	     SK_FARM_PASS_PORT_UNLISTED);
	return t;
}

/* Owns exactly `bucket` (owned fixtures), or everything but it (unowned), or everything. */
std::vector<uint32_t> ownersFor(const Fixture &f, uint32_t bucket)
{
	const bool balanced = f.verdict == SK_FARM_PASS_OWNED || f.verdict == SK_FARM_DROP_NOT_OWNED;
	if (!balanced)
		return std::vector<uint32_t>(kBuckets, kThisNode);
	const bool owned = f.verdict == SK_FARM_PASS_OWNED;
	std::vector<uint32_t> owners(kBuckets, owned ? kOtherNode : kThisNode);
	owners[bucket] = owned ? kThisNode : kOtherNode;
	return owners;
}

void checkFixture(XdpFilter &filter, const Fixture &f)
{
	const bool balanced = f.verdict == SK_FARM_PASS_OWNED || f.verdict == SK_FARM_DROP_NOT_OWNED;
	const uint32_t bucket = balanced ? expectedBucket(f.key, f.mode, kSeed, kBuckets) : 0;
	REQUIRE(filter.setOwners(ownersFor(f, bucket)).ok());
	auto before = filter.counters();
	REQUIRE(before.ok());

	XdpRun r = runXdp(filter.programFd(), f.packet);
	REQUIRE(r.err == 0);

	auto after = filter.counters();
	REQUIRE(after.ok());
	uint32_t gotVerdict = SK_FARM_VERDICT_MAX;
	for (uint32_t v = 0; v < SK_FARM_VERDICT_MAX; v++) {
		const uint64_t d = after->verdicts[v] - before->verdicts[v];
		if (d == 1 && gotVerdict == SK_FARM_VERDICT_MAX)
			gotVerdict = v;
		else
			CHECK_MESSAGE(d == 0, "verdict ", verdictName(v), " counted ", d, " times");
	}
	CHECK_MESSAGE(std::string(verdictName(gotVerdict)) == verdictName(f.verdict), "verdict counter");

	const uint32_t expectAction = f.verdict == SK_FARM_DROP_NOT_OWNED ? XDP_DROP : XDP_PASS;
	CHECK_MESSAGE(r.action == expectAction, "XDP action expected ", expectAction, " got ", r.action);
	if (balanced) {
		CHECK_MESSAGE(after->bucketPackets[bucket] - before->bucketPackets[bucket] == 1,
			      "bucket ", bucket, " not counted");
	}
	if (expectAction == XDP_PASS) {
		std::vector<uint8_t> expect = f.expectOut;
		if (expect.empty())
			expect = f.verdict == SK_FARM_PASS_OWNED ? withDestMac(f.packet, kOwnMac) : f.packet;
		CHECK_MESSAGE(r.out == expect, "output packet\nexpected:\n", hex(expect), "\ngot:\n", hex(r.out));
	}
}

bool bpffsMounted(const char *path)
{
	struct statfs st {};
	return statfs(path, &st) == 0 && st.f_type == BPF_FS_MAGIC;
}

} /* namespace */

TEST_CASE("fixture table: verdict, counters and output packet")
{
	auto ip = makeFilter(FarmHashMode::Ip);
	auto ipPort = makeFilter(FarmHashMode::IpPort);
	const auto table = fixtures();
	for (const Fixture &f : table) {
		CAPTURE(f.what);
		INFO("mode ", f.mode == FarmHashMode::Ip ? "ip" : "ip+port", ", expected ", verdictName(f.verdict));
		checkFixture(f.mode == FarmHashMode::Ip ? *ip : *ipPort, f);
	}
}

TEST_CASE("global port rules apply to every VIP, unioned with its own")
{
	auto f = makeFilter(FarmHashMode::IpPort);
	FarmVipSet s = testVips();
	s.globalPorts = { { kTcp, 8080 } };
	REQUIRE(f->setVips(s).ok());
	std::vector<Fixture> t{
		{ "global tcp/8080 on a VIP without own rules", FarmHashMode::IpPort,
		  tcp4(kClient4, kVip4, 41000, 8080), SK_FARM_PASS_OWNED, key(kClient4, 41000), {} },
		{ "tcp/80 on a VIP without own rules, global rules only", FarmHashMode::IpPort,
		  tcp4(kClient4, kVip4, 41001, 80), SK_FARM_PASS_PORT_UNLISTED, {}, {} },
		{ "global tcp/8080 on a VIP with own rules", FarmHashMode::IpPort,
		  tcp4(kClient4, kVip4Ports, 41002, 8080), SK_FARM_DROP_NOT_OWNED, key(kClient4, 41002), {} },
		{ "own tcp/80 still listed", FarmHashMode::IpPort, tcp4(kClient4, kVip4Ports, 41003, 80),
		  SK_FARM_PASS_OWNED, key(kClient4, 41003), {} },
		{ "tcp/22 in neither list", FarmHashMode::IpPort, tcp4(kClient4, kVip4Ports, 41004, 22),
		  SK_FARM_PASS_PORT_UNLISTED, {}, {} },
	};
	for (const Fixture &fx : t) {
		CAPTURE(fx.what);
		checkFixture(*f, fx);
	}

	/* Bitmap edges: port 0/63/64 words, the last TCP word and the UDP half. */
	s.globalPorts = { { kTcp, 63 }, { kTcp, 64 }, { kTcp, 65535 }, { kUdp, 1 } };
	REQUIRE(f->setVips(s).ok());
	std::vector<Fixture> edges{
		{ "global tcp/63", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41010, 63), SK_FARM_PASS_OWNED,
		  key(kClient4, 41010), {} },
		{ "global tcp/64", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41011, 64), SK_FARM_DROP_NOT_OWNED,
		  key(kClient4, 41011), {} },
		{ "global tcp/65535", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41012, 65535), SK_FARM_PASS_OWNED,
		  key(kClient4, 41012), {} },
		{ "tcp/62 next to listed ports", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41013, 62),
		  SK_FARM_PASS_PORT_UNLISTED, {}, {} },
		{ "tcp/65534 next to a listed port", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41014, 65534),
		  SK_FARM_PASS_PORT_UNLISTED, {}, {} },
		{ "tcp/1: only udp/1 is listed", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41015, 1),
		  SK_FARM_PASS_PORT_UNLISTED, {}, {} },
		{ "global udp/1", FarmHashMode::IpPort,
		  toVip().ipv4(ip4(kClient4), ip4(kVip4), kUdp).udp(41016, 1).bytes(), SK_FARM_PASS_OWNED,
		  key(kClient4, 41016), {} },
		{ "the old global tcp/8080 is gone", FarmHashMode::IpPort, tcp4(kClient4, kVip4, 41017, 8080),
		  SK_FARM_PASS_PORT_UNLISTED, {}, {} },
		{ "IPv6 VIP: global rules apply too", FarmHashMode::IpPort, tcp6(kClient6, kVip6, 41018, 64),
		  SK_FARM_PASS_OWNED, key(kClient6, 41018), {} },
	};
	for (const Fixture &fx : edges) {
		CAPTURE(fx.what);
		checkFixture(*f, fx);
	}

	/* Removing a VIP and the global rules takes effect: back to untouched / all ports. */
	FarmVipSet smaller;
	smaller.vips.push_back({ addr(kVip4), {} });
	REQUIRE(f->setVips(smaller).ok());
	Fixture gone{ "removed VIP passes untouched", FarmHashMode::IpPort, tcp6(kClient6, kVip6, 1, 443),
		      SK_FARM_PASS_NOT_VIP, {}, {} };
	checkFixture(*f, gone);
	Fixture allPorts{ "without rules every port is balanced", FarmHashMode::IpPort,
			  tcp4(kClient4, kVip4, 41005, 22), SK_FARM_PASS_OWNED, key(kClient4, 41005), {} };
	checkFixture(*f, allPorts);
}

TEST_CASE("property: exactly one of three nodes keeps each VIP packet")
{
	for (FarmHashMode mode : { FarmHashMode::Ip, FarmHashMode::IpPort }) {
		CAPTURE(mode == FarmHashMode::Ip ? "ip" : "ip+port");
		std::vector<std::unique_ptr<XdpFilter>> nodes;
		const std::vector<FarmNodeWeight> up{ { 1, 1 }, { 2, 1 }, { 3, 2 } };
		auto owners = farmAssignBuckets(kSeed, kBuckets, up);
		REQUIRE(owners.ok());
		for (uint32_t id = 1; id <= 3; id++) {
			nodes.push_back(makeFilter(mode, id));
			REQUIRE(nodes.back()->setOwners(*owners).ok());
		}
		std::mt19937 rng(12345);
		std::array<int, 4> kept{};
		int failures = 0;
		for (int i = 0; i < 3000 && failures < 5; i++) {
			const bool v6 = rng() & 1;
			const bool udp = rng() & 1;
			const uint16_t sport = static_cast<uint16_t>(rng());
			FlowKey k;
			std::vector<uint8_t> p;
			if (v6) {
				k.addr.family = 6;
				k.addr.bytes = ip6("fd00:5c::");
				for (int j = 8; j < 16; j++)
					k.addr.bytes[j] = static_cast<uint8_t>(rng());
				auto b = toVip().ipv6(k.addr.bytes, ip6(kVip6), udp ? kUdp : kTcp);
				p = (udp ? b.udp(sport, 53) : b.tcp(sport, 443)).bytes();
			} else {
				k.addr.family = 4;
				const uint32_t a = 0xC6120000u | (rng() & 0x1ffff);	/* 198.18.0.0/15 */
				const uint32_t be = htonl(a);
				std::memcpy(k.addr.bytes.data(), &be, 4);
				std::array<uint8_t, 4> a4;
				std::memcpy(a4.data(), &be, 4);
				auto b = toVip().ipv4(a4, ip4(kVip4), udp ? kUdp : kTcp);
				p = (udp ? b.udp(sport, 53) : b.tcp(sport, 80)).bytes();
			}
			k.port = sport;
			const uint32_t expectOwner = (*owners)[expectedBucket(k, mode, kSeed, kBuckets)];
			int passes = 0;
			uint32_t passer = 0;
			/* The same packet with an 802.1Q tag takes the general path: same owner. */
			std::vector<uint8_t> tagged(p.begin(), p.begin() + 12);
			tagged.insert(tagged.end(), { 0x81, 0x00, 0x00, 0x05 });
			tagged.insert(tagged.end(), p.begin() + 12, p.end());
			for (uint32_t id = 1; id <= 3; id++) {
				XdpRun r = runXdp(nodes[id - 1]->programFd(), p);
				XdpRun t = runXdp(nodes[id - 1]->programFd(), tagged);
				REQUIRE(r.err == 0);
				REQUIRE(t.err == 0);
				if (r.action == XDP_PASS) {
					passes++;
					passer = id;
				}
				if (t.action != r.action) {
					failures++;
					FAIL_CHECK("tuple ", i, ": node ", id, " gave action ", r.action, " untagged but ",
						   t.action, " tagged\n", hex(p));
				}
			}
			if (passes != 1 || passer != expectOwner) {
				failures++;
				FAIL_CHECK("tuple ", i, ": ", passes, " nodes passed (expected 1), last passer ",
					   passer, ", expected owner ", expectOwner, "\n", hex(p));
			}
			kept[passer]++;
		}
		/* Weights 1:1:2 over 3000 packets: node 3 keeps clearly more (sanity, not a speed check). */
		INFO("kept per node: ", kept[1], " ", kept[2], " ", kept[3]);
		CHECK(kept[3] > kept[1]);
		CHECK(kept[3] > kept[2]);
		CHECK(kept[1] + kept[2] + kept[3] == 3000);
	}
}

/* Loopback socket address of family (127.0.0.1 or ::1) and port (host order). */
sockaddr_storage loopback(int family, uint16_t port, socklen_t *len)
{
	sockaddr_storage ss{};
	if (family == AF_INET) {
		auto *a = reinterpret_cast<sockaddr_in *>(&ss);
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a->sin_port = htons(port);
		*len = sizeof(*a);
	} else {
		auto *a = reinterpret_cast<sockaddr_in6 *>(&ss);
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		a->sin6_port = htons(port);
		*len = sizeof(*a);
	}
	return ss;
}

uint16_t localPort(int fd)
{
	sockaddr_storage ss{};
	socklen_t l = sizeof(ss);
	REQUIRE(getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &l) == 0);
	return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in *>(&ss)->sin_port
					     : reinterpret_cast<sockaddr_in6 *>(&ss)->sin6_port);
}

/*
 * The server end of a connection with no client end: an established socket made in
 * TCP_REPAIR mode (no packet sent), local port serverPort, peer port clientPort. A
 * lookup with the tuple the wrong way round finds nothing, so the test tells them apart.
 */
struct ServerOnlyFlow {
	int fd = -1;
	uint16_t serverPort = 0, clientPort = 0;

	explicit ServerOnlyFlow(int family)
	{
		fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(fd >= 0);
		int on = 1;
		REQUIRE_MESSAGE(setsockopt(fd, SOL_TCP, TCP_REPAIR, &on, sizeof(on)) == 0, "TCP_REPAIR: ", strerror(errno));
		socklen_t len;
		sockaddr_storage here = loopback(family, 0, &len);
		REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&here), len) == 0);
		serverPort = localPort(fd);
		clientPort = static_cast<uint16_t>(serverPort ^ 0x2000);
		sockaddr_storage peer = loopback(family, clientPort, &len);
		REQUIRE(connect(fd, reinterpret_cast<sockaddr *>(&peer), len) == 0);
	}
	~ServerOnlyFlow()
	{
		if (fd >= 0)
			close(fd);	/* still in repair mode: closes without a packet */
	}
};

/* A connection over loopback closed server first: the server end is left in TIME_WAIT. */
struct TimeWaitFlow {
	uint16_t serverPort = 0, clientPort = 0;

	explicit TimeWaitFlow(int family)
	{
		socklen_t len;
		sockaddr_storage any = loopback(family, 0, &len);
		int l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(l >= 0);
		REQUIRE(bind(l, reinterpret_cast<sockaddr *>(&any), len) == 0);
		REQUIRE(listen(l, 1) == 0);
		serverPort = localPort(l);
		sockaddr_storage to = loopback(family, serverPort, &len);
		int c = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(c >= 0);
		REQUIRE(connect(c, reinterpret_cast<sockaddr *>(&to), len) == 0);
		clientPort = localPort(c);
		int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
		REQUIRE(s >= 0);
		close(l);
		close(s);	/* FIN from the server first */
		char b;
		REQUIRE(read(c, &b, 1) == 0);	/* the client saw it */
		close(c);	/* its FIN: the server end goes TIME_WAIT */
		usleep(20000);
	}
};

/* The verdict the counters saw for one run of packet (asserting exactly one was counted). */
uint32_t runVerdict(XdpFilter &f, const std::vector<uint8_t> &packet, uint32_t *action, std::vector<uint8_t> *out)
{
	auto before = f.counters();
	REQUIRE(before.ok());
	XdpRun r = runXdp(f.programFd(), packet);
	REQUIRE(r.err == 0);
	auto after = f.counters();
	REQUIRE(after.ok());
	uint32_t got = SK_FARM_VERDICT_MAX, counted = 0;
	for (uint32_t v = 0; v < SK_FARM_VERDICT_MAX; v++) {
		uint64_t d = after->verdicts[v] - before->verdicts[v];
		counted += static_cast<uint32_t>(d);
		if (d)
			got = v;
	}
	CHECK_MESSAGE(counted == 1, counted, " verdicts counted for one packet");
	*action = r.action;
	*out = r.out;
	return got;
}

TEST_CASE("draining bucket: a TCP segment goes to the node holding its socket, SYNs and the rest to the owner")
{
	constexpr uint32_t kThirdNode = 3;
	for (int family : { AF_INET, AF_INET6 }) {
		const char *lo = family == AF_INET ? "127.0.0.1" : "::1";
		CAPTURE(lo);
		ServerOnlyFlow flow(family);
		TimeWaitFlow timeWait(family);
		for (FarmHashMode mode : { FarmHashMode::Ip, FarmHashMode::IpPort }) {
			CAPTURE(static_cast<int>(mode));
			auto f = makeFilter(mode);
			FarmVipSet vips;
			vips.vips.push_back({ addr(lo), {} });
			REQUIRE(f->setVips(vips).ok());
			auto segmentTo = [&](uint16_t sport, uint16_t dport, uint8_t flags) {
				PacketBuilder b = toVip();
				if (family == AF_INET)
					b.ipv4(ip4(lo), ip4(lo), kTcp);
				else
					b.ipv6(ip6(lo), ip6(lo), kTcp);
				return b.tcp(sport, dport, flags).payload(8).bytes();
			};
			auto segment = [&](uint16_t sport, uint8_t flags) { return segmentTo(sport, flow.serverPort, flags); };
			const uint16_t noSocket = static_cast<uint16_t>(flow.clientPort ^ 0x4000);
			/* Every bucket the same: whatever the hash mode, the packet's bucket is set. */
			auto table = [&](uint32_t owner, uint32_t from) {
				REQUIRE(f->setOwnerTable(std::vector<uint32_t>(kBuckets, owner),
							 std::vector<uint32_t>(kBuckets, from))
						.ok());
			};
			struct Case {
				const char *what;
				uint32_t owner, from;
				uint16_t sport;
				uint8_t flags;
				uint32_t verdict;
			};
			const Case cases[] = {
				/* This node handed the bucket over: it keeps its own connections only. */
				{ "old owner, ACK of its connection", kOtherNode, kThisNode, flow.clientPort, 0x10,
				  SK_FARM_PASS_FLOW_HERE },
				{ "old owner, data of its connection", kOtherNode, kThisNode, flow.clientPort, 0x18,
				  SK_FARM_PASS_FLOW_HERE },
				{ "old owner, FIN of its connection", kOtherNode, kThisNode, flow.clientPort, 0x11,
				  SK_FARM_PASS_FLOW_HERE },
				{ "old owner, ACK of no connection here", kOtherNode, kThisNode, noSocket, 0x10,
				  SK_FARM_DROP_NOT_OWNED },
				{ "old owner, SYN (a new client)", kOtherNode, kThisNode, noSocket, 0x02,
				  SK_FARM_DROP_NOT_OWNED },
				{ "old owner, gap (nobody owns it yet)", SK_FARM_NODE_NONE, kThisNode, flow.clientPort,
				  0x10, SK_FARM_PASS_FLOW_HERE },
				/* This node took the bucket: new clients, and connections it has. */
				{ "new owner, SYN", kThisNode, kOtherNode, noSocket, 0x02, SK_FARM_PASS_OWNED },
				{ "new owner, ACK of a connection it has", kThisNode, kOtherNode, flow.clientPort, 0x10,
				  SK_FARM_PASS_OWNED },
				{ "new owner, ACK of the old owner's connection", kThisNode, kOtherNode, noSocket, 0x10,
				  SK_FARM_DROP_FLOW_ELSEWHERE },
				{ "new owner, RST of no connection here", kThisNode, kOtherNode, noSocket, 0x04,
				  SK_FARM_DROP_FLOW_ELSEWHERE },
				/* A third node looks nothing up. */
				{ "bystander, ACK of a connection it has", kOtherNode, kThirdNode, flow.clientPort, 0x10,
				  SK_FARM_DROP_NOT_OWNED },
				/* No drain: the owner keeps everything, whatever sockets exist. */
				{ "owner, no drain, ACK of no connection", kThisNode, SK_FARM_NODE_NONE, noSocket, 0x10,
				  SK_FARM_PASS_OWNED },
				{ "not owner, no drain, ACK of its connection", kOtherNode, SK_FARM_NODE_NONE,
				  flow.clientPort, 0x10, SK_FARM_DROP_NOT_OWNED },
			};
			for (const Case &c : cases) {
				CAPTURE(c.what);
				table(c.owner, c.from);
				std::vector<uint8_t> in = segment(c.sport, c.flags), out;
				uint32_t action = 0;
				uint32_t v = runVerdict(*f, in, &action, &out);
				CHECK(std::string(verdictName(v)) == verdictName(c.verdict));
				const bool kept = c.verdict == SK_FARM_PASS_OWNED || c.verdict == SK_FARM_PASS_FLOW_HERE;
				CHECK(action == (kept ? XDP_PASS : XDP_DROP));
				if (kept)
					CHECK(out == withDestMac(in, kOwnMac));
			}
			/* A TIME_WAIT end is no connection: its 4-tuple may be a new client's. */
			{
				CAPTURE("TIME_WAIT");
				std::vector<uint8_t> out;
				uint32_t action = 0;
				table(kOtherNode, kThisNode);
				CHECK(runVerdict(*f, segmentTo(timeWait.clientPort, timeWait.serverPort, 0x10), &action,
						 &out) == SK_FARM_DROP_NOT_OWNED);
				table(kThisNode, kOtherNode);
				CHECK(runVerdict(*f, segmentTo(timeWait.clientPort, timeWait.serverPort, 0x10), &action,
						 &out) == SK_FARM_DROP_FLOW_ELSEWHERE);
			}
			/* UDP has no socket to follow: the owner takes it. */
			table(kThisNode, kOtherNode);
			PacketBuilder b = toVip();
			if (family == AF_INET)
				b.ipv4(ip4(lo), ip4(lo), kUdp);
			else
				b.ipv6(ip6(lo), ip6(lo), kUdp);
			std::vector<uint8_t> out;
			uint32_t action = 0;
			CHECK(runVerdict(*f, b.udp(noSocket, 53).payload(4).bytes(), &action, &out) == SK_FARM_PASS_OWNED);
		}
	}
}

namespace {

/*
 * Runs body in a child process in a fresh network namespace, after the shell command
 * setup there, and returns the child's exit code: body's result, 10 when unshare
 * failed, 11 when setup did. What the child made in its namespace goes with it.
 */
int inPrivateNetns(const char *setup, const std::function<int()> &body)
{
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		if (unshare(CLONE_NEWNET) < 0)
			_exit(10);
		if (system(setup) != 0)
			_exit(11);
		_exit(body());
	}
	int status = 0;
	REQUIRE(waitpid(pid, &status, 0) == pid);
	REQUIRE(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* The TCP checksum of segment (header + data) from src to dst (IPv4, network order). */
uint16_t tcpChecksum4(uint32_t src, uint32_t dst, const std::vector<uint8_t> &segment)
{
	uint32_t sum = 0;
	auto add16 = [&](uint16_t v) { sum += v; };
	add16(static_cast<uint16_t>(ntohl(src) >> 16));
	add16(static_cast<uint16_t>(ntohl(src)));
	add16(static_cast<uint16_t>(ntohl(dst) >> 16));
	add16(static_cast<uint16_t>(ntohl(dst)));
	add16(6);
	add16(static_cast<uint16_t>(segment.size()));
	for (size_t i = 0; i + 1 < segment.size(); i += 2)
		add16(static_cast<uint16_t>(segment[i] << 8 | segment[i + 1]));
	if (segment.size() % 2)
		add16(static_cast<uint16_t>(segment.back() << 8));
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return static_cast<uint16_t>(~sum);
}

/*
 * In the caller's (private) netns, with tcp_syncookies=2: sends a SYN from 127.0.0.1:cport
 * to the listener on 127.0.0.1:sport through a raw socket and returns the SYN-ACK's
 * sequence number, the cookie (0 on failure).
 */
uint32_t syncookieFor(uint16_t cport, uint16_t sport, uint32_t isn)
{
	int raw = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_TCP);
	if (raw < 0)
		return 0;
	timeval tv{ 1, 0 };
	setsockopt(raw, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	const uint32_t lo = htonl(INADDR_LOOPBACK);
	std::vector<uint8_t> syn = PacketBuilder().tcp(cport, sport, 0x02, isn, 0).bytes();
	const uint16_t sum = tcpChecksum4(lo, lo, syn);
	syn[16] = static_cast<uint8_t>(sum >> 8);
	syn[17] = static_cast<uint8_t>(sum);
	sockaddr_in to{};
	to.sin_family = AF_INET;
	to.sin_addr.s_addr = lo;
	uint32_t cookie = 0;
	if (sendto(raw, syn.data(), syn.size(), 0, reinterpret_cast<sockaddr *>(&to), sizeof(to)) ==
	    static_cast<ssize_t>(syn.size())) {
		/* The raw socket sees every TCP segment on lo: our SYN, then the SYN-ACK. */
		for (int i = 0; i < 8 && !cookie; i++) {
			uint8_t buf[256];
			ssize_t n = recv(raw, buf, sizeof(buf), 0);
			if (n < 0)
				break;
			const size_t ihl = (buf[0] & 0x0f) * 4u;
			if (static_cast<size_t>(n) < ihl + 20)
				continue;
			const uint8_t *t = buf + ihl;
			if ((t[0] << 8 | t[1]) == sport && (t[2] << 8 | t[3]) == cport && (t[13] & 0x12) == 0x12)
				cookie = static_cast<uint32_t>(t[4]) << 24 | t[5] << 16 | t[6] << 8 | t[7];
		}
	}
	close(raw);
	return cookie;
}

} /* namespace */

TEST_CASE("draining bucket: the ACK of a SYN cookie goes to the node whose listener issued it")
{
	REQUIRE_MESSAGE(geteuid() == 0, "needs root");
	/* A private netns: its own tcp_syncookies, set to 2 (always send cookies). */
	const int code = inPrivateNetns("ip link set lo up", [&] {
		FILE *sc = fopen("/proc/sys/net/ipv4/tcp_syncookies", "w");
		if (!sc || fputs("2", sc) < 0 || fclose(sc) != 0)
			return 12;
		int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		socklen_t len;
		sockaddr_storage any = loopback(AF_INET, 0, &len);
		if (l < 0 || bind(l, reinterpret_cast<sockaddr *>(&any), len) < 0 || listen(l, 8) < 0)
			return 13;
		const uint16_t sport = localPort(l);
		const uint16_t cport = static_cast<uint16_t>(sport ^ 0x1000);
		const uint32_t isn = 0x1000;
		const uint32_t cookie = syncookieFor(cport, sport, isn);
		if (!cookie)
			return 14;
		std::unique_ptr<XdpFilter> f = makeFilter(FarmHashMode::Ip, kThisNode, "", "cookie");
		FarmVipSet vips;
		vips.vips.push_back({ *FarmAddress::parse("127.0.0.1"), {} });
		if (!f->setVips(vips).ok() ||
		    !f->setOwnerTable(std::vector<uint32_t>(kBuckets, kThisNode), std::vector<uint32_t>(kBuckets, kOtherNode))
			     .ok())
			return 16;
		auto ack = [&](uint32_t ackSeq) {
			return toVip().ipv4(ip4("127.0.0.1"), ip4("127.0.0.1"), kTcp).tcp(cport, sport, 0x10, isn + 1, ackSeq).bytes();
		};
		auto verdict = [&](const std::vector<uint8_t> &p) -> uint32_t {
			auto before = f->counters();
			XdpRun r = runXdp(f->programFd(), p);
			auto after = f->counters();
			if (r.err || !before.ok() || !after.ok())
				return SK_FARM_VERDICT_MAX;
			for (uint32_t v = 0; v < SK_FARM_VERDICT_MAX; v++)
				if (after->verdicts[v] != before->verdicts[v])
					return v;
			return SK_FARM_VERDICT_MAX;
		};
		/* Its cookie: this node's listener issued it (the new owner, which took the SYN). */
		if (verdict(ack(cookie + 1)) != SK_FARM_PASS_OWNED)
			return 17;
		/* Another value (its time counter off by far) is no handshake of this node's: the old
		 * owner's connection. A nearby value could still pass: the low bits only pick the MSS. */
		if (verdict(ack((cookie ^ 0x5a000000u) + 1)) != SK_FARM_DROP_FLOW_ELSEWHERE)
			return 18;
		/* As the old owner, only its own cookie keeps a segment here. */
		if (!f->setOwnerTable(std::vector<uint32_t>(kBuckets, kOtherNode), std::vector<uint32_t>(kBuckets, kThisNode))
			     .ok())
			return 16;
		if (verdict(ack(cookie + 1)) != SK_FARM_PASS_FLOW_HERE)
			return 19;
		if (verdict(ack((cookie ^ 0x5a000000u) + 1)) != SK_FARM_DROP_NOT_OWNED)
			return 20;
		close(l);
		return 0;
	});
	/* 10 unshare, 11 lo up, 12 tcp_syncookies, 13 listener, 14 no SYN-ACK cookie, 16 tables, 17 the cookie's ACK not kept by the owner, 18 a wrong ACK kept by it,
	 * 19 the cookie's ACK not kept by the old owner, 20 a wrong ACK kept by it */
	CHECK_MESSAGE(code == 0, "child step failed, code ", code);
}

TEST_CASE("256 VIPs: colliding home slots are found by the out-of-line probe; sets replace each other")
{
	auto f = makeFilter(FarmHashMode::Ip);
	REQUIRE(f->setOwners(std::vector<uint32_t>(kBuckets, kThisNode)).ok());
	/* 128 random IPv4 VIPs in 198.18.4.0/22 and 128 random IPv6 VIPs in fd00:5c::4:0/112. */
	FarmVipSet big;
	std::vector<sk_farm_vip_slot> slots;
	std::mt19937 rng(777);
	std::set<std::string> seen;
	while (big.vips.size() < SK_FARM_MAX_VIPS) {
		char text[48];
		if (big.vips.size() % 2)
			snprintf(text, sizeof(text), "fd00:5c::4:%x", static_cast<unsigned>(rng() & 0xffff));
		else
			snprintf(text, sizeof(text), "198.18.%u.%u", 4 + static_cast<unsigned>(rng() % 4),
				 static_cast<unsigned>(rng() % 256));
		if (seen.insert(text).second)
			big.vips.push_back({ addr(text), {} });
	}
	for (const FarmVip &v : big.vips) {
		sk_farm_vip_slot slot{};
		slot.vip.family = v.address.family;
		std::memcpy(slot.vip.addr, v.address.bytes.data(), 16);
		slots.push_back(slot);
	}
	/* The loader lays them out like farmBuildVipTable: 256 in 1024 slots cannot all be at home. */
	auto layout = farmBuildVipTable(slots);
	REQUIRE(layout.ok());
	CHECK(layout->maxProbe > 1);
	REQUIRE(f->setVips(big).ok());
	int displaced = 0;
	for (const sk_farm_vip_slot &s : layout->slots) {
		if (!s.vip.family)
			continue;
		const uint32_t home = sk_farm_vip_home(layout->salt, s.vip.addr[0], s.vip.addr[1], s.vip.addr[2],
						       s.vip.addr[3], SK_FARM_VIP_SLOTS_LOG2);
		displaced += &s - layout->slots.data() != static_cast<ptrdiff_t>(home);
	}
	INFO(displaced, " VIPs away from their home slot");
	CHECK(displaced > 0);
	for (const FarmVip &v : big.vips) {
		const std::string a = v.address.str();
		CAPTURE(a);
		const auto p = v.address.family == 4 ? tcp4(kClient4, a.c_str(), 42000, 80)
						     : tcp6(kClient6, a.c_str(), 42000, 80);
		XdpRun r = runXdp(f->programFd(), p);
		REQUIRE(r.err == 0);
		CHECK_MESSAGE(r.action == XDP_PASS, "VIP not balanced");
		CHECK_MESSAGE(r.out == withDestMac(p, kOwnMac), "VIP not kept");
	}
	/* Other addresses of those ranges are not VIPs (their probes end at an empty slot or run out). */
	int others = 0;
	for (unsigned i = 0; i < 2048 && others < 200; i++) {
		char text[48];
		if (i % 2)
			snprintf(text, sizeof(text), "fd00:5c::4:%x", i * 31);
		else
			snprintf(text, sizeof(text), "198.18.%u.%u", 4 + i / 512, (i / 2) % 256);
		if (seen.count(text))
			continue;
		others++;
		const char *other = text;
		CAPTURE(other);
		const auto p = std::string(other).find(':') != std::string::npos ? tcp6(kClient6, other, 42000, 80)
										 : tcp4(kClient4, other, 42000, 80);
		XdpRun r = runXdp(f->programFd(), p);
		REQUIRE(r.err == 0);
		CHECK(r.action == XDP_PASS);
		CHECK(r.out == p);
	}
	CHECK(others == 200);
	/* A smaller set replaces the big one whole (the other table), and back. */
	for (int round = 0; round < 3; round++) {
		CAPTURE(round);
		REQUIRE(f->setVips(testVips()).ok());
		const std::string some = big.vips[0].address.str(), some6 = big.vips[1].address.str();
		XdpRun gone = runXdp(f->programFd(), tcp4(kClient4, some.c_str(), 42001, 80));
		CHECK(gone.out == tcp4(kClient4, some.c_str(), 42001, 80));
		XdpRun kept = runXdp(f->programFd(), tcp4(kClient4, kVip4, 42001, 80));
		CHECK(kept.out == withDestMac(tcp4(kClient4, kVip4, 42001, 80), kOwnMac));
		REQUIRE(f->setVips(big).ok());
		XdpRun back = runXdp(f->programFd(), tcp6(kClient6, some6.c_str(), 42001, 80));
		CHECK(back.out == withDestMac(tcp6(kClient6, some6.c_str(), 42001, 80), kOwnMac));
		XdpRun old = runXdp(f->programFd(), tcp4(kClient4, kVip4, 42001, 80));
		CHECK(old.out == tcp4(kClient4, kVip4, 42001, 80));
	}
	/* 257 VIPs are refused and the filter keeps the set it had. */
	FarmVipSet tooMany = big;
	tooMany.vips.push_back({ addr("198.18.9.1"), {} });
	CHECK(f->setVips(tooMany).code() == -E2BIG);
	const std::string some = big.vips[0].address.str();
	XdpRun still = runXdp(f->programFd(), tcp4(kClient4, some.c_str(), 42002, 80));
	CHECK(still.out == withDestMac(tcp4(kClient4, some.c_str(), 42002, 80), kOwnMac));
}

TEST_CASE("maps are pinned under <pin root>/<module> and removed on destroy")
{
	REQUIRE_MESSAGE(geteuid() == 0, "needs root");
	if (!bpffsMounted("/sys/fs/bpf")) {
		/* Left mounted afterwards: other users of bpffs may have appeared meanwhile. */
		mkdir("/sys/fs/bpf", 0755);
		REQUIRE_MESSAGE(mount("bpf", "/sys/fs/bpf", "bpf", 0, nullptr) == 0, "mount bpffs: ", strerror(errno));
	}
	const std::string root = "/sys/fs/bpf/sk-test-" + std::to_string(getpid());
	struct RemoveRoot {
		std::string path;
		~RemoveRoot() { rmdir(path.c_str()); }	/* only if empty: never someone else's pins */
	} removeRoot{ root };
	const std::string dir = root + "/farm1";
	const std::vector<std::string> names{ "farm_vips", "farm_ports", "farm_port_bits", "farm_owners",
					      "farm_config", "farm_verdicts", "farm_bkt_pkts" };
	{
		auto f = makeFilter(FarmHashMode::Ip, kThisNode, root, "farm1");
		CHECK(f->pinDir() == dir);
		for (const std::string &n : names) {
			const std::string path = dir + "/" + n;
			int fd = bpf_obj_get(path.c_str());
			CHECK_MESSAGE(fd >= 0, "pinned map ", path, " missing");
			if (fd >= 0)
				close(fd);
		}
		/* A second instance of the same module reuses the pinned maps (restart case). */
		std::vector<uint32_t> owners(kBuckets, 7);
		REQUIRE(f->setOwners(owners).ok());
		int fd = bpf_obj_get((dir + "/farm_config").c_str());
		REQUIRE(fd >= 0);
		sk_farm_config cfg{};
		uint32_t zero = 0;
		CHECK(bpf_map_lookup_elem(fd, &zero, &cfg) == 0);
		CHECK(cfg.active_table == 1);
		close(fd);
	}
	std::error_code ec;
	CHECK_MESSAGE(!std::filesystem::exists(dir, ec), dir, " still exists after destroy");
	rmdir(root.c_str());
	CHECK(!std::filesystem::exists(root, ec));
}

TEST_CASE("bad pin root and bad options are refused with a message")
{
	REQUIRE_MESSAGE(geteuid() == 0, "needs root");
	XdpFilterOptions o;
	o.module = "m";
	o.pinRoot = "/tmp/sk-not-bpffs-" + std::to_string(getpid());
	o.nodeId = 1;
	auto f = XdpFilter::create(o);
	CHECK(f.code() == -ENOTSUP);
	std::filesystem::remove_all(o.pinRoot);
	o.pinRoot = "";
	o.buckets = 1000;
	CHECK(XdpFilter::create(o).code() == -EINVAL);
	o.buckets = 1024;
	o.pinRoot = "/sys/fs/bpf";
	o.module = "../x";
	CHECK(XdpFilter::create(o).code() == -EINVAL);
}

TEST_CASE("attach to a veth in a private netns (native mode), detach on destroy, stale takeover")
{
	REQUIRE_MESSAGE(geteuid() == 0, "needs root");
	/* The child owns a fresh netns; its veth pair vanishes with it. */
	const int code = inPrivateNetns("ip link add skt0 type veth peer name skt1 && ip link set skt0 up && ip link set skt1 up", [&] {
		const int ifindex = static_cast<int>(if_nametoindex("skt0"));
		if (ifindex <= 0)
			return 12;
		XdpFilterOptions o;
		o.module = "attach";
		o.pinRoot = "";
		o.ifindex = ifindex;
		o.nodeId = 1;
		o.mode = XdpMode::Native;	/* auto would pick generic on a veth (next test) */
		{
			auto f = XdpFilter::create(o);
			if (!f.ok()) {
				fprintf(stderr, "%s\n", f.error().message.c_str());
				return 13;
			}
			if (!f.value()->nativeMode())
				return 14;
			uint32_t id = 0;
			if (bpf_xdp_query_id(ifindex, XDP_FLAGS_DRV_MODE, &id) < 0 || id == 0)
				return 15;
			/* A second filter must not replace the first. */
			if (XdpFilter::create(o).ok())
				return 16;
		}
		uint32_t id = 0;
		if (bpf_xdp_query_id(ifindex, 0, &id) < 0 || id != 0)
			return 17;

		/* A farm filter left attached by a dead skd: taken over only when asked. */
		XdpFilterOptions loadOnly = o;
		loadOnly.ifindex = 0;
		auto stale = XdpFilter::create(loadOnly);
		if (!stale.ok() || bpf_xdp_attach(ifindex, stale.value()->programFd(), XDP_FLAGS_DRV_MODE, nullptr) < 0)
			return 18;
		if (XdpFilter::create(o).ok())
			return 19;
		o.replaceStale = true;
		{
			auto f = XdpFilter::create(o);
			if (!f.ok()) {
				fprintf(stderr, "%s\n", f.error().message.c_str());
				return 20;
			}
			bpf_prog_info info{};
			uint32_t len = sizeof(info);
			if (bpf_xdp_query_id(ifindex, XDP_FLAGS_DRV_MODE, &id) < 0 ||
			    bpf_obj_get_info_by_fd(f.value()->programFd(), &info, &len) < 0 || info.id != id)
				return 21;
		}
		if (bpf_xdp_query_id(ifindex, 0, &id) < 0 || id != 0)
			return 22;

		/* Someone else's program is never replaced, even with replaceStale. */
		bpf_insn pass[2] = {};
		pass[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
		pass[0].imm = XDP_PASS;
		pass[1].code = BPF_JMP | BPF_EXIT;
		const int foreign = bpf_prog_load(BPF_PROG_TYPE_XDP, "not_farm", "GPL", pass, 2, nullptr);
		if (foreign < 0 || bpf_xdp_attach(ifindex, foreign, XDP_FLAGS_DRV_MODE, nullptr) < 0)
			return 23;
		if (XdpFilter::create(o).ok())
			return 24;
		return 0;
	});
	/* 10 unshare, 11 veth, 12 ifindex, 13 create, 14 not native, 15 not attached,
	 * 16 replaced an existing program, 17 still attached after destroy,
	 * 18 stale setup, 19 stale replaced without replaceStale, 20 stale not replaced,
	 * 21 wrong program attached, 22 still attached, 23 foreign setup,
	 * 24 foreign program replaced */
	CHECK_MESSAGE(code == 0, "child step failed, code ", code);
}

namespace {

/* The XDP program id attached to ifindex in mode (XDP_FLAGS_DRV_MODE / _SKB_MODE), 0 if none. */
uint32_t attachedId(int ifindex, uint32_t mode)
{
	uint32_t id = 0;
	return bpf_xdp_query_id(ifindex, static_cast<int>(mode), &id) < 0 ? 0 : id;
}

uint32_t progId(int fd)
{
	bpf_prog_info info{};
	uint32_t len = sizeof(info);
	return bpf_obj_get_info_by_fd(fd, &info, &len) < 0 ? 0 : info.id;
}

} /* namespace */

TEST_CASE("XDP modes on a veth: auto and generic attach in skb mode, stale takeover across modes")
{
	REQUIRE_MESSAGE(geteuid() == 0, "needs root");
	const int code = inPrivateNetns("ip link add skt0 type veth peer name skt1 && ip link set skt0 up && ip link set skt1 up", [&] {
		const int ifindex = static_cast<int>(if_nametoindex("skt0"));
		if (ifindex <= 0)
			return 12;
		XdpFilterOptions o;
		o.module = "modes";
		o.pinRoot = "";
		o.ifindex = ifindex;
		o.nodeId = 1;
		for (XdpMode mode : { XdpMode::Auto, XdpMode::Generic }) {
			o.mode = mode;
			auto f = XdpFilter::create(o);
			if (!f.ok()) {
				fprintf(stderr, "%s\n", f.error().message.c_str());
				return 13;
			}
			const uint32_t id = progId(f.value()->programFd());
			if (f.value()->nativeMode() || attachedId(ifindex, XDP_FLAGS_SKB_MODE) != id ||
			    attachedId(ifindex, XDP_FLAGS_DRV_MODE) != 0)
				return 14;
		}
		if (attachedId(ifindex, 0) != 0)
			return 15;

		/* A farm filter left in native mode by a dead skd; the new one wants generic. */
		XdpFilterOptions loadOnly = o;
		loadOnly.ifindex = 0;
		auto stale = XdpFilter::create(loadOnly);
		if (!stale.ok() || bpf_xdp_attach(ifindex, stale.value()->programFd(), XDP_FLAGS_DRV_MODE, nullptr) < 0)
			return 16;
		o.mode = XdpMode::Generic;
		if (XdpFilter::create(o).ok())	/* not without replaceStale */
			return 17;
		if (attachedId(ifindex, XDP_FLAGS_DRV_MODE) != progId(stale.value()->programFd()))
			return 18;
		o.replaceStale = true;
		{
			auto f = XdpFilter::create(o);
			if (!f.ok()) {
				fprintf(stderr, "%s\n", f.error().message.c_str());
				return 19;
			}
			if (attachedId(ifindex, XDP_FLAGS_SKB_MODE) != progId(f.value()->programFd()) ||
			    attachedId(ifindex, XDP_FLAGS_DRV_MODE) != 0)
				return 20;
		}
		if (attachedId(ifindex, 0) != 0)
			return 21;
		return 0;
	});
	/* 10 unshare, 11 veth, 12 ifindex, 13 create, 14 not attached in skb mode only,
	 * 15 still attached after destroy, 16 stale setup, 17 stale replaced without
	 * replaceStale, 18 stale gone, 19 takeover failed, 20 wrong program or mode
	 * after takeover, 21 still attached after destroy */
	CHECK_MESSAGE(code == 0, "child step failed, code ", code);
}
