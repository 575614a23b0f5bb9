/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm ARP/ND responder: a pure answer builder over the net/announce.h frame
 * builders, and the AF_PACKET socket that feeds it on the responder node.
 */
#include "farm/arp_responder.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.h"

namespace sk {

namespace {

const LogCategory kLog("farm.arp");

constexpr size_t kEth = 14;
constexpr size_t kArpLen = 28;
constexpr size_t kIpv6Len = 40;
constexpr size_t kNsMinLen = 24;	/* type, code, checksum, reserved, target */
constexpr uint8_t kIcmpv6Ns = 135;
constexpr net::Ipv6Bytes kAllNodes = { 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01 };
constexpr net::MacAddress kAllNodesMac = { 0x33, 0x33, 0x00, 0x00, 0x00, 0x01 };

uint16_t be16(std::span<const uint8_t> p, size_t off)
{
	return static_cast<uint16_t>(p[off] << 8 | p[off + 1]);
}

bool isVip(const FarmResponderConfig &c, int family, const uint8_t *bytes)
{
	size_t n = family == AF_INET ? 4 : 16;
	for (const net::IpAddress &v : c.vips)
		if (v.family == family && std::memcmp(v.bytes.data(), bytes, n) == 0)
			return true;
	return false;
}

std::optional<std::vector<uint8_t>> answerArp(std::span<const uint8_t> f, const FarmResponderConfig &c)
{
	if (f.size() < kEth + kArpLen)
		return std::nullopt;
	auto arp = f.subspan(kEth);
	if (be16(arp, 0) != 1 || be16(arp, 2) != ETH_P_IP || arp[4] != 6 || arp[5] != 4 ||
	    be16(arp, 6) != static_cast<uint16_t>(net::ArpOp::Request))
		return std::nullopt;
	if (!isVip(c, AF_INET, &arp[24]))
		return std::nullopt;
	net::MacAddress requester;
	net::Ipv4Bytes requesterIp, vip;
	std::copy_n(&arp[8], 6, requester.begin());
	std::copy_n(&arp[14], 4, requesterIp.begin());
	std::copy_n(&arp[24], 4, vip.begin());
	/* A gratuitous probe for the VIP itself (ours or another node's announcement): no answer. */
	if (requesterIp == vip)
		return std::nullopt;
	return net::buildArpReply(c.ownMac, c.virtualMac, vip, requester, requesterIp);
}

std::optional<std::vector<uint8_t>> answerNs(std::span<const uint8_t> f, const FarmResponderConfig &c)
{
	if (f.size() < kEth + kIpv6Len + kNsMinLen)
		return std::nullopt;
	auto ip = f.subspan(kEth);
	/* RFC 4861 7.1.1: hop limit 255, code 0; no extension headers accepted here. */
	if ((ip[0] >> 4) != 6 || ip[6] != IPPROTO_ICMPV6 || ip[7] != 255)
		return std::nullopt;
	auto icmp = ip.subspan(kIpv6Len);
	if (icmp[0] != kIcmpv6Ns || icmp[1] != 0 || !isVip(c, AF_INET6, &icmp[8]))
		return std::nullopt;
	net::NaFrame na;
	net::Ipv6Bytes src;
	std::copy_n(&ip[8], 16, src.begin());
	std::copy_n(&icmp[8], 16, na.target.begin());
	na.ethSrc = c.ownMac;
	na.ipSrc = na.target;
	na.targetMac = c.virtualMac;
	if (std::all_of(src.begin(), src.end(), [](uint8_t b) { return b == 0; })) {
		/* DAD probe: answer to all nodes, not solicited (RFC 4861 7.2.4). */
		na.ethDst = kAllNodesMac;
		na.ipDst = kAllNodes;
		na.flags = net::kNaFlagOverride;
	} else {
		std::copy_n(f.begin() + 6, 6, na.ethDst.begin());
		na.ipDst = src;
		na.flags = net::kNaFlagSolicited | net::kNaFlagOverride;
	}
	return net::buildNeighbourAdvert(na);
}

} /* namespace */

std::optional<std::vector<uint8_t>> farmNeighbourAnswer(std::span<const uint8_t> frame,
							 const FarmResponderConfig &config)
{
	if (frame.size() < kEth)
		return std::nullopt;
	/* Never answer ourselves or anything claiming the virtual MAC as its source. */
	if (std::equal(config.virtualMac.begin(), config.virtualMac.end(), frame.begin() + 6) ||
	    std::equal(config.ownMac.begin(), config.ownMac.end(), frame.begin() + 6))
		return std::nullopt;
	switch (be16(frame, 12)) {
	case ETH_P_ARP:
		return answerArp(frame, config);
	case ETH_P_IPV6:
		return answerNs(frame, config);
	default:
		return std::nullopt;
	}
}

Result<std::unique_ptr<ArpResponder>> ArpResponder::create(EventLoop &loop, int ifindex,
							   const FarmResponderConfig &config)
{
	std::unique_ptr<ArpResponder> r(new ArpResponder(loop, ifindex, config));
	r->fd_ = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (r->fd_ < 0)
		return makeError(-errno, errnoMessage("ARP responder: AF_PACKET socket (needs CAP_NET_RAW)", -errno));

	/* ARP, or IPv6 with next header ICMPv6 and ICMPv6 type NS: everything else stays in the kernel. */
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_ARP, 5, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 5),
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, kEth + 6),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_ICMPV6, 0, 3),
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, kEth + kIpv6Len),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kIcmpv6Ns, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = { static_cast<unsigned short>(std::size(code)), code };
	if (setsockopt(r->fd_, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0)
		return makeError(-errno, errnoMessage("ARP responder: socket filter", -errno));

	struct sockaddr_ll sll {};
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = ifindex;
	if (bind(r->fd_, reinterpret_cast<struct sockaddr *>(&sll), sizeof(sll)) < 0)
		return makeError(-errno, errnoMessage("ARP responder: bind to interface " + std::to_string(ifindex), -errno));

	ArpResponder *self = r.get();
	r->watch_ = loop.watchFd(r->fd_, POLLIN, [self](uint32_t) { self->onReadable(); });
	logInfo(kLog, "answering ARP/ND for {} VIP(s) on interface index {} as {} (frames from {})",
		config.vips.size(), ifindex, net::formatMac(config.virtualMac), net::formatMac(config.ownMac));
	return r;
}

ArpResponder::~ArpResponder()
{
	if (watch_)
		loop_.unwatch(watch_);
	if (fd_ >= 0)
		close(fd_);
}

void ArpResponder::onReadable()
{
	uint8_t buf[2048];
	/* Bounded batch per wakeup so a flood cannot starve the loop. */
	for (int i = 0; i < 64; i++) {
		struct sockaddr_ll from {};
		socklen_t fromLen = sizeof(from);
		ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<struct sockaddr *>(&from), &fromLen);
		if (n < 0)
			return;
		if (from.sll_pkttype == PACKET_OUTGOING)
			continue;
		counters_.received++;
		auto answer = farmNeighbourAnswer(std::span<const uint8_t>(buf, static_cast<size_t>(n)), config_);
		if (!answer)
			continue;
		struct sockaddr_ll to {};
		to.sll_family = AF_PACKET;
		to.sll_ifindex = ifindex_;
		to.sll_halen = 6;
		std::copy_n(answer->begin(), 6, to.sll_addr);
		if (sendto(fd_, answer->data(), answer->size(), 0, reinterpret_cast<struct sockaddr *>(&to), sizeof(to)) < 0) {
			counters_.sendErrors++;
			logDebug(kLog, "answer not sent: {}", strerror(errno));
			continue;
		}
		counters_.answered++;
	}
}

} /* namespace sk */
