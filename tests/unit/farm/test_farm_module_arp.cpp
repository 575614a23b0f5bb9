/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm ARP/ND answers (pure): the virtual MAC goes in the payload, the node's
 * own MAC is the frame source, and requests that are not for a VIP (or come
 * from the virtual MAC itself) get no answer. Also the derived virtual MAC.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <vector>

#include "farm/arp_responder.h"
#include "farm/farm_module.h"
#include "net/announce.h"

using namespace sk;

namespace {

const net::MacAddress kOwn = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
const net::MacAddress kVirtual = { 0x02, 0xfa, 0x12, 0x34, 0x56, 0x78 };
const net::MacAddress kClient = { 0x02, 0xcc, 0x00, 0x00, 0x00, 0x07 };

net::IpAddress ip(const char *text)
{
	auto a = net::parseIpAddress(text);
	REQUIRE(a.ok());
	return *a;
}

FarmResponderConfig config()
{
	return { kOwn, kVirtual, { ip("198.18.0.100"), ip("fd00:5c::100") } };
}

std::vector<uint8_t> arpRequest(const char *target, const char *sender = "198.18.1.7",
				const net::MacAddress &from = kClient)
{
	net::ArpFrame f;
	f.ethSrc = from;
	f.senderMac = from;
	auto s = ip(sender), t = ip(target);
	std::copy_n(s.bytes.begin(), 4, f.senderIp.begin());
	std::copy_n(t.bytes.begin(), 4, f.targetIp.begin());
	return net::buildArpFrame(f);
}

/* A neighbour solicitation built with the NA builder, then turned into type 135. */
std::vector<uint8_t> nsFrame(const char *target, const char *src)
{
	net::NaFrame f;
	f.ethDst = { 0x33, 0x33, 0xff, 0x00, 0x01, 0x00 };
	f.ethSrc = kClient;
	f.ipSrc = ip(src).bytes;
	f.ipDst = ip("ff02::1:ff00:100").bytes;
	f.target = ip(target).bytes;
	f.targetMac = kClient;
	auto frame = net::buildNeighbourAdvert(f);
	frame[14 + 40] = 135;	/* checksum not recomputed: the responder does not verify it (the kernel did) */
	return frame;
}

net::MacAddress macAt(const std::vector<uint8_t> &f, size_t off)
{
	net::MacAddress m;
	std::copy_n(f.begin() + static_cast<long>(off), 6, m.begin());
	return m;
}

} /* namespace */

TEST_CASE("ARP request for the VIP: reply from the own MAC, virtual MAC in the payload")
{
	auto answer = farmNeighbourAnswer(arpRequest("198.18.0.100"), config());
	REQUIRE(answer);
	const auto &f = *answer;
	CHECK(net::formatMac(macAt(f, 0)) == net::formatMac(kClient));	/* to the requester */
	CHECK(net::formatMac(macAt(f, 6)) == net::formatMac(kOwn));	/* never the virtual MAC */
	CHECK(f[12] == 0x08);
	CHECK(f[13] == 0x06);
	CHECK(f[21] == 2);	/* reply */
	CHECK(net::formatMac(macAt(f, 22)) == net::formatMac(kVirtual));
	CHECK(std::vector<uint8_t>(f.begin() + 28, f.begin() + 32) == std::vector<uint8_t>{ 198, 18, 0, 100 });
	CHECK(net::formatMac(macAt(f, 32)) == net::formatMac(kClient));
	CHECK(std::vector<uint8_t>(f.begin() + 38, f.begin() + 42) == std::vector<uint8_t>{ 198, 18, 1, 7 });
	/* Exactly what the shared builder makes. */
	auto vip = ip("198.18.0.100"), cl = ip("198.18.1.7");
	net::Ipv4Bytes v4, c4;
	std::copy_n(vip.bytes.begin(), 4, v4.begin());
	std::copy_n(cl.bytes.begin(), 4, c4.begin());
	CHECK(f == net::buildArpReply(kOwn, kVirtual, v4, kClient, c4));
}

TEST_CASE("no answer: other targets, replies, gratuitous probes, our own or virtual-MAC sources, truncation")
{
	CHECK_FALSE(farmNeighbourAnswer(arpRequest("198.18.0.101"), config()));
	CHECK_FALSE(farmNeighbourAnswer(arpRequest("198.18.0.100", "198.18.0.100"), config()));
	CHECK_FALSE(farmNeighbourAnswer(arpRequest("198.18.0.100", "198.18.1.7", kOwn), config()));
	CHECK_FALSE(farmNeighbourAnswer(arpRequest("198.18.0.100", "198.18.1.7", kVirtual), config()));
	auto reply = arpRequest("198.18.0.100");
	reply[21] = 2;
	CHECK_FALSE(farmNeighbourAnswer(reply, config()));
	auto shortFrame = arpRequest("198.18.0.100");
	shortFrame.resize(40);
	CHECK_FALSE(farmNeighbourAnswer(shortFrame, config()));
	CHECK_FALSE(farmNeighbourAnswer(std::vector<uint8_t>(10, 0), config()));
}

TEST_CASE("IPv6 NS for the VIP: solicited NA with the virtual MAC as target link-layer address")
{
	auto answer = farmNeighbourAnswer(nsFrame("fd00:5c::100", "fd00:5c::7"), config());
	REQUIRE(answer);
	const auto &f = *answer;
	CHECK(net::formatMac(macAt(f, 0)) == net::formatMac(kClient));
	CHECK(net::formatMac(macAt(f, 6)) == net::formatMac(kOwn));
	net::NaFrame want;
	want.ethDst = kClient;
	want.ethSrc = kOwn;
	want.ipSrc = ip("fd00:5c::100").bytes;
	want.ipDst = ip("fd00:5c::7").bytes;
	want.flags = net::kNaFlagSolicited | net::kNaFlagOverride;
	want.target = ip("fd00:5c::100").bytes;
	want.targetMac = kVirtual;
	CHECK(f == net::buildNeighbourAdvert(want));

	/* DAD probe (source ::): to all nodes, Solicited clear. */
	auto dad = farmNeighbourAnswer(nsFrame("fd00:5c::100", "::"), config());
	REQUIRE(dad);
	CHECK(net::formatMac(macAt(*dad, 0)) == "33:33:00:00:00:01");
	CHECK(net::formatMac(macAt(*dad, 6)) == net::formatMac(kOwn));

	CHECK_FALSE(farmNeighbourAnswer(nsFrame("fd00:5c::101", "fd00:5c::7"), config()));
	auto lowHop = nsFrame("fd00:5c::100", "fd00:5c::7");
	lowHop[14 + 7] = 64;
	CHECK_FALSE(farmNeighbourAnswer(lowHop, config()));
}

TEST_CASE("derived virtual MAC: locally administered unicast, stable, distinct per module")
{
	auto a = farmDerivedMac("prod", "web");
	CHECK(a[0] == 0x02);
	CHECK(net::formatMac(a) == net::formatMac(farmDerivedMac("prod", "web")));
	CHECK(net::formatMac(a) != net::formatMac(farmDerivedMac("prod", "api")));
	CHECK(net::formatMac(a) != net::formatMac(farmDerivedMac("test", "web")));

	FarmConfig fc;
	CHECK(farmSeed(fc, "prod") == farmSeed(fc, "prod"));
	CHECK(farmSeed(fc, "prod") != farmSeed(fc, "test"));
	fc.hasSeed = true;
	fc.seed = 42;
	CHECK(farmSeed(fc, "prod") == 42u);
}
