/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Pure tests of net/: ARP and NA frame bytes (checksum from an independent
 * computation), address parsing, LinkTable change filtering, and Announcer
 * bursts on a real EventLoop with a fake FrameSender (no root needed).
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/rtnetlink.h>

#include <libmnl/libmnl.h>

#include <string>
#include <vector>

#include "net/announce.h"
#include "net/link_monitor.h"
#include "net/vip.h"

using namespace std::chrono_literals;
using namespace sk::net;

namespace {

using Bytes = std::vector<uint8_t>;

const MacAddress kMac = { 0x02, 0x5c, 0x00, 0x00, 0x00, 0x01 };
const MacAddress kVirtualMac = { 0x02, 0x5c, 0xee, 0x00, 0x00, 0x07 };
const Ipv4Bytes kVip4 = { 198, 18, 0, 10 };

std::string hex(const Bytes &b)
{
	std::string s;
	char buf[4];
	for (uint8_t c : b) {
		snprintf(buf, sizeof(buf), "%02x", c);
		s += buf;
	}
	return s;
}

Bytes fromHex(std::string s)
{
	std::erase(s, ' ');
	Bytes b;
	for (size_t i = 0; i + 1 < s.size(); i += 2)
		b.push_back(static_cast<uint8_t>(std::stoul(s.substr(i, 2), nullptr, 16)));
	return b;
}

const std::string kPad18 = std::string(36, '0');

} /* namespace */

TEST_CASE("gratuitous ARP request: broadcast, sender = target = VIP, zero target MAC, padded to 60")
{
	Bytes got = buildGratuitousArp(ArpOp::Request, kMac, kVip4);
	Bytes expected = fromHex("ffffffffffff 025c00000001 0806"
				 "0001 0800 06 04 0001"
				 "025c00000001 c612000a"
				 "000000000000 c612000a" +
				 kPad18);
	CHECK(got.size() == kMinEthernetFrame);
	CHECK(hex(got) == hex(expected));
}

TEST_CASE("gratuitous ARP reply carries broadcast target MAC and op 2")
{
	Bytes got = buildGratuitousArp(ArpOp::Reply, kMac, kVip4);
	Bytes expected = fromHex("ffffffffffff 025c00000001 0806"
				 "0001 0800 06 04 0002"
				 "025c00000001 c612000a"
				 "ffffffffffff c612000a" +
				 kPad18);
	CHECK(hex(got) == hex(expected));
}

TEST_CASE("farm ARP reply: frame source is the real MAC, payload sender the virtual MAC")
{
	const MacAddress client = { 0x02, 0x5c, 0xcc, 0x00, 0x00, 0x02 };
	const Ipv4Bytes clientIp = { 198, 18, 0, 50 };
	Bytes got = buildArpReply(kMac, kVirtualMac, kVip4, client, clientIp);
	Bytes expected = fromHex("025ccc000002 025c00000001 0806"
				 "0001 0800 06 04 0002"
				 "025cee000007 c612000a"
				 "025ccc000002 c6120032" +
				 kPad18);
	CHECK(hex(got) == hex(expected));
}

TEST_CASE("unsolicited NA: exact bytes, checksum matches an independent computation")
{
	auto vip = parseIpAddress("fd00:5c::10");
	REQUIRE(vip.ok());
	Bytes got = buildUnsolicitedNa(kMac, vip->bytes);
	/* Checksum 0x5969 computed separately (Python, RFC 4443 pseudo-header sum). */
	Bytes expected = fromHex("333300000001 025c00000001 86dd"
				 "60000000 0020 3a ff"
				 "fd00005c000000000000000000000010"
				 "ff020000000000000000000000000001"
				 "88 00 5969 20000000"
				 "fd00005c000000000000000000000010"
				 "02 01 025c00000001");
	CHECK(got.size() == 86);
	CHECK(hex(got) == hex(expected));
}

TEST_CASE("farm NA answer: frame from the real MAC, TLLA = virtual MAC, Solicited + Override")
{
	const MacAddress client = { 0x02, 0x5c, 0xcc, 0x00, 0x00, 0x02 };
	NaFrame f;
	f.ethDst = client;
	f.ethSrc = kMac;
	f.ipSrc = parseIpAddress("fd00:5c::10").value().bytes;
	f.ipDst = parseIpAddress("fd00:5c::50").value().bytes;
	f.flags = kNaFlagSolicited | kNaFlagOverride;
	f.target = f.ipSrc;
	f.targetMac = kVirtualMac;
	/* Checksum 0x2cb9 computed separately (Python). */
	Bytes expected = fromHex("025ccc000002 025c00000001 86dd"
				 "60000000 0020 3a ff"
				 "fd00005c000000000000000000000010"
				 "fd00005c000000000000000000000050"
				 "88 00 2cb9 60000000"
				 "fd00005c000000000000000000000010"
				 "02 01 025cee000007");
	CHECK(hex(buildNeighbourAdvert(f)) == hex(expected));
}

TEST_CASE("ICMPv6 checksum verifies to zero over the finished message")
{
	auto vip = parseIpAddress("fd00:5c::abcd");
	REQUIRE(vip.ok());
	Bytes frame = buildUnsolicitedNa(kVirtualMac, vip->bytes);
	Ipv6Bytes src, dst;
	std::copy_n(frame.begin() + 22, 16, src.begin());
	std::copy_n(frame.begin() + 38, 16, dst.begin());
	/* The complement of a sum that includes its own checksum is zero. */
	CHECK(icmpv6Checksum(src, dst, std::span<const uint8_t>(frame.data() + 54, 32)) == 0);
	/* And it changes when a byte does (odd-length input exercises the tail path). */
	Bytes odd = { 1, 2, 3 };
	CHECK(icmpv6Checksum(src, dst, odd) != icmpv6Checksum(src, dst, Bytes{ 1, 2, 4 }));
}

TEST_CASE("address and prefix parsing")
{
	auto p = parseIpPrefix("198.18.0.10/24");
	REQUIRE(p.ok());
	CHECK(p->address.family == AF_INET);
	CHECK(p->prefixLen == 24);
	CHECK(formatIpPrefix(*p) == "198.18.0.10/24");

	auto host = parseIpPrefix("fd00:5c::1");
	REQUIRE(host.ok());
	CHECK(host->prefixLen == 128);
	CHECK(formatIpPrefix(*host) == "fd00:5c::1/128");

	CHECK(parseIpPrefix("198.18.0.10/33").code() == -EINVAL);
	CHECK(parseIpPrefix("198.18.0.10/").code() == -EINVAL);
	CHECK(parseIpPrefix("198.18.0.10/2x").code() == -EINVAL);
	CHECK(parseIpPrefix("fd00:5c::1/129").code() == -EINVAL);
	CHECK(parseIpAddress("not-an-ip").code() == -EINVAL);
	CHECK(parseIpAddress("198.18.0.1").value() == parseIpAddress("198.18.0.1").value());
	CHECK_FALSE(parseIpAddress("198.18.0.1").value() == parseIpAddress("198.18.0.2").value());
	CHECK(formatMac(kMac) == "02:5c:00:00:00:01");
}

namespace {

Bytes linkMessage(uint16_t type, int index, const char *name, unsigned flags, uint8_t oper)
{
	Bytes buf(MNL_SOCKET_BUFFER_SIZE);
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf.data());
	nlh->nlmsg_type = type;
	auto *ifi = static_cast<struct ifinfomsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifinfomsg)));
	ifi->ifi_index = index;
	ifi->ifi_flags = flags;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	mnl_attr_put_u8(nlh, IFLA_OPERSTATE, oper);
	buf.resize(nlh->nlmsg_len);
	return buf;
}

LinkState parsed(const Bytes &msg)
{
	auto s = parseLinkMessage(reinterpret_cast<const struct nlmsghdr *>(msg.data()));
	REQUIRE(s.has_value());
	return *s;
}

} /* namespace */

TEST_CASE("link messages parse and LinkTable reports only relevant changes")
{
	const unsigned up = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
	LinkState s = parsed(linkMessage(RTM_NEWLINK, 7, "veth0", up, IF_OPER_UP));
	CHECK(s.ifindex == 7);
	CHECK(s.name == "veth0");
	CHECK(s.usable());
	CHECK(std::string(operStateName(s.operState)) == "up");

	LinkTable table;
	CHECK(table.apply(s));	/* first sight */
	CHECK_FALSE(table.apply(s));	/* identical */
	CHECK_FALSE(table.apply(parsed(linkMessage(RTM_NEWLINK, 7, "veth0", up | IFF_PROMISC, IF_OPER_UP))));

	LinkState down = parsed(linkMessage(RTM_NEWLINK, 7, "veth0", IFF_UP, IF_OPER_LOWERLAYERDOWN));
	CHECK_FALSE(down.usable());
	CHECK(table.apply(down));
	REQUIRE(table.find("veth0") != nullptr);
	CHECK(table.find("veth0")->operState == IF_OPER_LOWERLAYERDOWN);

	/* dummy interfaces never leave operstate UNKNOWN yet carry traffic */
	CHECK(parsed(linkMessage(RTM_NEWLINK, 8, "dummy0", up, IF_OPER_UNKNOWN)).usable());

	LinkState gone = parsed(linkMessage(RTM_DELLINK, 7, "veth0", 0, IF_OPER_DOWN));
	CHECK(gone.removed);
	CHECK(table.apply(gone));
	CHECK(table.find(7) == nullptr);
	CHECK_FALSE(table.apply(gone));

	Bytes other = linkMessage(RTM_NEWADDR, 7, "veth0", 0, 0);
	CHECK_FALSE(parseLinkMessage(reinterpret_cast<const struct nlmsghdr *>(other.data())).has_value());
}

namespace {

class FakeSender : public FrameSender
{
public:
	sk::Result<MacAddress> hardwareAddress(int ifindex) override
	{
		if (ifindex != 3)
			return sk::makeError(-ENODEV, "no such interface");
		return kMac;
	}
	int send(int ifindex, std::span<const uint8_t> frame) override
	{
		sent.push_back({ ifindex, Bytes(frame.begin(), frame.end()) });
		return failWith;
	}
	std::vector<std::pair<int, Bytes>> sent;
	int failWith = 0;
};

} /* namespace */

TEST_CASE("Announcer sends a burst of N rounds on timers, then stops")
{
	auto loop = sk::EventLoop::create();
	REQUIRE(loop.ok());
	sk::EventLoop &l = **loop;
	FakeSender sender;
	Announcer announcer(l, sender);

	auto v4 = parseIpAddress("198.18.0.10");
	auto v6 = parseIpAddress("fd00:5c::10");
	REQUIRE(v4.ok());
	REQUIRE(v6.ok());
	REQUIRE(announcer.announce(3, *v4, { 3, 5ms, true, {} }).ok());
	REQUIRE(announcer.announce(3, *v6, { 2, 5ms, true, {} }).ok());
	/* The first round goes out synchronously. */
	CHECK(sender.sent.size() == 3);
	CHECK(announcer.pending() == 2);

	l.addTimer(200ms, [&] { l.stop(); });
	CHECK(l.run() == 0);
	/* IPv4: 3 rounds x (request + reply); IPv6: 2 rounds x 1 NA. */
	CHECK(sender.sent.size() == 8);
	CHECK(announcer.pending() == 0);
	CHECK(announcer.framesSent() == 8);
	size_t arp = 0, na = 0;
	for (auto &[index, frame] : sender.sent) {
		CHECK(index == 3);
		if (frame == buildGratuitousArp(ArpOp::Request, kMac, kVip4) ||
		    frame == buildGratuitousArp(ArpOp::Reply, kMac, kVip4))
			arp++;
		else if (frame == buildUnsolicitedNa(kMac, v6->bytes))
			na++;
	}
	CHECK(arp == 6);
	CHECK(na == 2);
}

TEST_CASE("Announcer with a payload MAC: frames from the interface MAC, payload names the virtual MAC")
{
	auto loop = sk::EventLoop::create();
	REQUIRE(loop.ok());
	FakeSender sender;
	Announcer announcer(**loop, sender);
	auto v4 = parseIpAddress("198.18.0.10");
	auto v6 = parseIpAddress("fd00:5c::10");
	AnnounceOptions options{ 1, 5ms, true, kVirtualMac };
	REQUIRE(announcer.announce(3, *v4, options).ok());
	REQUIRE(announcer.announce(3, *v6, options).ok());
	REQUIRE(sender.sent.size() == 3);

	ArpFrame request;
	request.ethSrc = kMac;
	request.senderMac = kVirtualMac;
	request.senderIp = kVip4;
	request.targetIp = kVip4;
	CHECK(hex(sender.sent[0].second) == hex(buildArpFrame(request)));
	ArpFrame reply = request;
	reply.op = ArpOp::Reply;
	reply.targetMac = kBroadcastMac;
	CHECK(hex(sender.sent[1].second) == hex(buildArpFrame(reply)));

	const Bytes &na = sender.sent[2].second;
	REQUIRE(na.size() == 86);
	CHECK(std::equal(na.begin() + 6, na.begin() + 12, kMac.begin()));
	CHECK(std::equal(na.begin() + 80, na.begin() + 86, kVirtualMac.begin()));
	CHECK(announcer.pending() == 0);
}

TEST_CASE("Announcer: cancel stops repeats, errors are reported, count 0 sends nothing")
{
	auto loop = sk::EventLoop::create();
	REQUIRE(loop.ok());
	sk::EventLoop &l = **loop;
	FakeSender sender;
	auto v4 = parseIpAddress("198.18.0.10");
	REQUIRE(v4.ok());
	{
		Announcer announcer(l, sender);
		CHECK(announcer.announce(9, *v4).code() == -ENODEV);
		CHECK(sender.sent.empty());

		REQUIRE(announcer.announce(3, *v4, { 5, 5ms, false, {} }).ok());
		CHECK(sender.sent.size() == 1);
		announcer.cancel(3, *v4);
		CHECK(announcer.pending() == 0);

		CHECK(announcer.announce(3, *v4, { 0, 5ms, false, {} }).ok());
		CHECK(sender.sent.size() == 1);

		sender.failWith = -ENETDOWN;
		auto s = announcer.announce(3, *v4, { 3, 5ms, false, {} });
		CHECK(s.code() == -ENETDOWN);
		CHECK(announcer.pending() == 0);
		sender.failWith = 0;

		/* Destroying the Announcer with a burst pending must cancel its timers. */
		REQUIRE(announcer.announce(3, *v4, { 5, 5ms, false, {} }).ok());
	}
	size_t before = sender.sent.size();
	l.addTimer(50ms, [&] { l.stop(); });
	CHECK(l.run() == 0);
	CHECK(sender.sent.size() == before);
}
