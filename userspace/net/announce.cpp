/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Gratuitous ARP / unsolicited NA: byte-exact frame builders and a timer-driven
 * burst sender over AF_PACKET (full frames, so the source MAC is ours to choose).
 */
#include "net/announce.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "core/log.h"

namespace sk::net {

namespace {

LogCategory kLog("announce");

constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeArp = 0x0806;
constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
constexpr uint8_t kIpProtoIcmpv6 = 58;
constexpr uint8_t kNdHopLimit = 255;	/* RFC 4861: receivers drop ND with any other value */
constexpr uint8_t kIcmpv6NeighbourAdvert = 136;
constexpr uint8_t kNdOptTargetLinkAddr = 2;
constexpr size_t kEthHeader = 14;
constexpr size_t kIpv6Header = 40;
constexpr size_t kNaLength = 4 + 4 + 16 + 8;	/* header, flags, target, TLLA option */
constexpr Ipv6Bytes kAllNodes = { 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01 };
constexpr MacAddress kAllNodesMac = { 0x33, 0x33, 0x00, 0x00, 0x00, 0x01 };

class Writer
{
public:
	explicit Writer(std::vector<uint8_t> &out) : out_(out) {}
	template<size_t N>
	void bytes(const std::array<uint8_t, N> &a) { out_.insert(out_.end(), a.begin(), a.end()); }
	void u8(uint8_t v) { out_.push_back(v); }
	void be16(uint16_t v)
	{
		out_.push_back(static_cast<uint8_t>(v >> 8));
		out_.push_back(static_cast<uint8_t>(v));
	}
	void be32(uint32_t v)
	{
		be16(static_cast<uint16_t>(v >> 16));
		be16(static_cast<uint16_t>(v));
	}

private:
	std::vector<uint8_t> &out_;
};

void padFrame(std::vector<uint8_t> &frame)
{
	if (frame.size() < kMinEthernetFrame)
		frame.resize(kMinEthernetFrame, 0);
}

uint32_t sumBe16(uint32_t sum, std::span<const uint8_t> data)
{
	size_t i = 0;
	for (; i + 1 < data.size(); i += 2)
		sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
	if (i < data.size())
		sum += static_cast<uint32_t>(data[i] << 8);
	return sum;
}

} /* namespace */

std::string formatMac(const MacAddress &mac)
{
	return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2],
			   mac[3], mac[4], mac[5]);
}

std::vector<uint8_t> buildArpFrame(const ArpFrame &f)
{
	std::vector<uint8_t> out;
	out.reserve(kMinEthernetFrame);
	Writer w(out);
	w.bytes(f.ethDst);
	w.bytes(f.ethSrc);
	w.be16(kEtherTypeArp);
	w.be16(ARPHRD_ETHER);
	w.be16(kEtherTypeIpv4);
	w.u8(6);
	w.u8(4);
	w.be16(static_cast<uint16_t>(f.op));
	w.bytes(f.senderMac);
	w.bytes(f.senderIp);
	w.bytes(f.targetMac);
	w.bytes(f.targetIp);
	padFrame(out);
	return out;
}

std::vector<uint8_t> buildGratuitousArp(ArpOp op, const MacAddress &mac, const Ipv4Bytes &vip)
{
	ArpFrame f;
	f.ethDst = kBroadcastMac;
	f.ethSrc = mac;
	f.op = op;
	f.senderMac = mac;
	f.senderIp = vip;
	f.targetMac = op == ArpOp::Request ? kZeroMac : kBroadcastMac;
	f.targetIp = vip;
	return buildArpFrame(f);
}

std::vector<uint8_t> buildArpReply(const MacAddress &frameSource, const MacAddress &payloadSender,
				   const Ipv4Bytes &senderIp, const MacAddress &targetMac,
				   const Ipv4Bytes &targetIp)
{
	ArpFrame f;
	f.ethDst = targetMac;
	f.ethSrc = frameSource;
	f.op = ArpOp::Reply;
	f.senderMac = payloadSender;
	f.senderIp = senderIp;
	f.targetMac = targetMac;
	f.targetIp = targetIp;
	return buildArpFrame(f);
}

uint16_t icmpv6Checksum(const Ipv6Bytes &src, const Ipv6Bytes &dst, std::span<const uint8_t> icmp)
{
	uint32_t sum = 0;
	sum = sumBe16(sum, src);
	sum = sumBe16(sum, dst);
	const uint32_t len = static_cast<uint32_t>(icmp.size());
	sum += len >> 16;
	sum += len & 0xffff;
	sum += kIpProtoIcmpv6;
	sum = sumBe16(sum, icmp);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return static_cast<uint16_t>(~sum & 0xffff);
}

std::vector<uint8_t> buildNeighbourAdvert(const NaFrame &f)
{
	std::vector<uint8_t> out;
	out.reserve(kEthHeader + kIpv6Header + kNaLength);
	Writer w(out);
	w.bytes(f.ethDst);
	w.bytes(f.ethSrc);
	w.be16(kEtherTypeIpv6);

	w.be32(0x60000000);	/* version 6, traffic class 0, flow label 0 */
	w.be16(static_cast<uint16_t>(kNaLength));
	w.u8(kIpProtoIcmpv6);
	w.u8(kNdHopLimit);
	w.bytes(f.ipSrc);
	w.bytes(f.ipDst);

	const size_t icmpStart = out.size();
	w.u8(kIcmpv6NeighbourAdvert);
	w.u8(0);
	w.be16(0);	/* checksum, filled below */
	w.be32(f.flags & (kNaFlagRouter | kNaFlagSolicited | kNaFlagOverride));
	w.bytes(f.target);
	w.u8(kNdOptTargetLinkAddr);
	w.u8(1);	/* option length in units of 8 bytes */
	w.bytes(f.targetMac);

	uint16_t csum = icmpv6Checksum(f.ipSrc, f.ipDst,
				       std::span<const uint8_t>(out.data() + icmpStart, kNaLength));
	out[icmpStart + 2] = static_cast<uint8_t>(csum >> 8);
	out[icmpStart + 3] = static_cast<uint8_t>(csum);
	return out;
}

std::vector<uint8_t> buildUnsolicitedNa(const MacAddress &mac, const Ipv6Bytes &vip)
{
	/* Solicited must be clear when sent to all-nodes (RFC 4861 7.2.4). */
	NaFrame f;
	f.ethDst = kAllNodesMac;
	f.ethSrc = mac;
	f.ipSrc = vip;
	f.ipDst = kAllNodes;
	f.flags = kNaFlagOverride;
	f.target = vip;
	f.targetMac = mac;
	return buildNeighbourAdvert(f);
}

Result<std::unique_ptr<PacketSocketSender>> PacketSocketSender::open()
{
	std::unique_ptr<PacketSocketSender> s(new PacketSocketSender());
	/* Protocol 0: a send-only socket, so no frames queue up on it. */
	s->fd_ = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd_ < 0) {
		int err = errno;
		std::string msg = errnoMessage("AF_PACKET socket", err);
		if (err == EPERM || err == EACCES)
			msg += ": needs root or CAP_NET_RAW";
		return makeError(-err, msg);
	}
	return s;
}

PacketSocketSender::~PacketSocketSender()
{
	if (fd_ >= 0)
		close(fd_);
}

Result<MacAddress> PacketSocketSender::hardwareAddress(int ifindex)
{
	/* ioctls on our socket resolve in its netns, whatever thread calls. */
	struct ifreq ifr = {};
	ifr.ifr_ifindex = ifindex;
	if (ioctl(fd_, SIOCGIFNAME, &ifr) < 0)
		return makeError(-ENODEV, "no such interface (index " + std::to_string(ifindex) + ")");
	std::string name = ifr.ifr_name;
	if (ioctl(fd_, SIOCGIFHWADDR, &ifr) < 0)
		return makeError(-errno, errnoMessage("reading the MAC of " + name, errno));
	if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		return makeError(-EOPNOTSUPP, name + " is not an Ethernet interface: cannot announce on it");
	MacAddress mac;
	memcpy(mac.data(), ifr.ifr_hwaddr.sa_data, mac.size());
	return mac;
}

int PacketSocketSender::send(int ifindex, std::span<const uint8_t> frame)
{
	if (frame.size() < kEthHeader)
		return -EINVAL;
	struct sockaddr_ll sll = {};
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = ifindex;
	sll.sll_protocol = htons(static_cast<uint16_t>(frame[12] << 8 | frame[13]));
	sll.sll_halen = ETH_ALEN;
	memcpy(sll.sll_addr, frame.data(), ETH_ALEN);
	ssize_t n = sendto(fd_, frame.data(), frame.size(), MSG_DONTWAIT,
			   reinterpret_cast<struct sockaddr *>(&sll), sizeof(sll));
	if (n < 0)
		return -errno;
	return 0;
}

bool Announcer::Key::operator<(const Key &other) const
{
	if (ifindex != other.ifindex)
		return ifindex < other.ifindex;
	if (address.family != other.address.family)
		return address.family < other.address.family;
	return std::lexicographical_compare(address.bytes.begin(), address.bytes.begin() + address.size(),
					    other.address.bytes.begin(),
					    other.address.bytes.begin() + other.address.size());
}

Announcer::~Announcer()
{
	for (auto &[key, burst] : bursts_)
		loop_.cancelTimer(burst.timer);
}

int Announcer::sendRound(int ifindex, const Burst &burst)
{
	int first = 0;
	for (const auto &frame : burst.frames) {
		int ret = sender_.send(ifindex, frame);
		if (ret == 0)
			framesSent_++;
		else if (first == 0)
			first = ret;
	}
	return first;
}

void Announcer::scheduleNext(const Key &key, std::chrono::milliseconds interval)
{
	auto it = bursts_.find(key);
	if (it == bursts_.end())
		return;
	it->second.timer = loop_.addTimer(interval, [this, key, interval] {
		auto found = bursts_.find(key);
		if (found == bursts_.end())
			return;
		int ret = sendRound(key.ifindex, found->second);
		if (ret < 0)
			logWarn(kLog, "announcing {} on interface index {}: {}",
				formatIpAddress(key.address), key.ifindex, errnoMessage("send", ret));
		if (--found->second.remaining == 0) {
			bursts_.erase(found);
			return;
		}
		scheduleNext(key, interval);
	});
}

Status Announcer::announce(int ifindex, const IpAddress &address, const AnnounceOptions &options)
{
	const std::string text = formatIpAddress(address);
	cancel(ifindex, address);
	if (options.count == 0)
		return {};
	auto mac = sender_.hardwareAddress(ifindex);
	if (!mac)
		return makeError(mac.code(), "cannot announce " + text + ": " + mac.error().message);

	const MacAddress payloadMac = options.payloadMac.value_or(*mac);
	Burst burst;
	if (address.family == AF_INET) {
		ArpFrame f;
		f.ethSrc = *mac;
		f.senderMac = payloadMac;
		std::copy_n(address.bytes.begin(), f.senderIp.size(), f.senderIp.begin());
		f.targetIp = f.senderIp;
		f.op = ArpOp::Request;
		f.targetMac = kZeroMac;
		burst.frames.push_back(buildArpFrame(f));
		if (options.arpReplyToo) {
			f.op = ArpOp::Reply;
			f.targetMac = kBroadcastMac;
			burst.frames.push_back(buildArpFrame(f));
		}
	} else if (address.family == AF_INET6) {
		NaFrame f;
		f.ethDst = kAllNodesMac;
		f.ethSrc = *mac;
		f.ipSrc = address.bytes;
		f.ipDst = kAllNodes;
		f.flags = kNaFlagOverride;
		f.target = address.bytes;
		f.targetMac = payloadMac;
		burst.frames.push_back(buildNeighbourAdvert(f));
	} else {
		return makeError(-EINVAL, "cannot announce an unset address");
	}

	int ret = sendRound(ifindex, burst);
	if (ret < 0) {
		std::string msg = errnoMessage("announcing " + text + " on interface index " +
						       std::to_string(ifindex), ret);
		if (ret == -ENETDOWN)
			msg += " (interface is down)";
		return makeError(ret, msg);
	}
	logInfo(kLog, "announced {} as {} (frames from {}) on interface index {} ({} rounds every {} ms)",
		text, formatMac(payloadMac), formatMac(*mac), ifindex, options.count,
		options.interval.count());
	if (options.count == 1)
		return {};

	Key key{ ifindex, address };
	burst.remaining = options.count - 1;
	bursts_.emplace(key, std::move(burst));
	scheduleNext(key, options.interval);
	return {};
}

void Announcer::cancel(int ifindex, const IpAddress &address)
{
	auto it = bursts_.find(Key{ ifindex, address });
	if (it == bursts_.end())
		return;
	loop_.cancelTimer(it->second.timer);
	bursts_.erase(it);
}

} /* namespace sk::net */
