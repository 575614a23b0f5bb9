/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tell the LAN that a VIP moved here: gratuitous ARP (IPv4) and unsolicited
 * neighbour advertisements (IPv6), sent as full Ethernet frames on AF_PACKET.
 * Frame builders are pure so tests check bytes; bursts run on EventLoop timers.
 */
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/event_loop.h"
#include "core/result.h"
#include "net/vip.h"

namespace sk::net {

using MacAddress = std::array<uint8_t, 6>;
using Ipv4Bytes = std::array<uint8_t, 4>;
using Ipv6Bytes = std::array<uint8_t, 16>;

inline constexpr MacAddress kBroadcastMac = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
inline constexpr MacAddress kZeroMac = {};
/* Ethernet frames shorter than this are padded (with zeroes) by the builders. */
inline constexpr size_t kMinEthernetFrame = 60;

std::string formatMac(const MacAddress &mac);

enum class ArpOp : uint16_t { Request = 1, Reply = 2 };

/* Every field of an Ethernet + ARP (IPv4 over Ethernet) frame. */
struct ArpFrame {
	MacAddress ethDst = kBroadcastMac;
	MacAddress ethSrc{};
	ArpOp op = ArpOp::Request;
	MacAddress senderMac{};
	Ipv4Bytes senderIp{};
	MacAddress targetMac{};
	Ipv4Bytes targetIp{};
};

std::vector<uint8_t> buildArpFrame(const ArpFrame &frame);

/*
 * Gratuitous ARP to broadcast: sender = target = vip. Requests carry a zero
 * target MAC (RFC 5227 announcement), replies the broadcast MAC.
 */
std::vector<uint8_t> buildGratuitousArp(ArpOp op, const MacAddress &mac, const Ipv4Bytes &vip);

/*
 * ARP reply whose Ethernet source (the node's real MAC, so switches learn
 * nothing about the virtual MAC) differs from the payload sender (the farm's
 * virtual MAC, which clients put in their ARP cache).
 */
std::vector<uint8_t> buildArpReply(const MacAddress &frameSource, const MacAddress &payloadSender,
				   const Ipv4Bytes &senderIp, const MacAddress &targetMac,
				   const Ipv4Bytes &targetIp);

/* RFC 4443 checksum of an ICMPv6 message (its checksum field counted as zero). */
uint16_t icmpv6Checksum(const Ipv6Bytes &src, const Ipv6Bytes &dst, std::span<const uint8_t> icmp);

inline constexpr uint32_t kNaFlagRouter = 0x80000000;
inline constexpr uint32_t kNaFlagSolicited = 0x40000000;
inline constexpr uint32_t kNaFlagOverride = 0x20000000;

/* Every field of an Ethernet + IPv6 + ICMPv6 neighbour advertisement with a TLLA option. */
struct NaFrame {
	MacAddress ethDst{};
	MacAddress ethSrc{};
	Ipv6Bytes ipSrc{};
	Ipv6Bytes ipDst{};
	uint32_t flags = kNaFlagOverride;	/* kNaFlag* */
	Ipv6Bytes target{};
	MacAddress targetMac{};	/* target link-layer address option; the farm puts its virtual MAC here */
};

/* Hop limit 255 and the ICMPv6 checksum are always set (receivers drop anything else). */
std::vector<uint8_t> buildNeighbourAdvert(const NaFrame &frame);

/*
 * Unsolicited neighbour advertisement (RFC 4861 7.2.6) as a full frame:
 * 33:33:00:00:00:01 <- mac, IPv6 vip -> ff02::1, hop limit 255, ICMPv6 136 with
 * Override set, Solicited clear, target = vip, target link-layer option = mac.
 */
std::vector<uint8_t> buildUnsolicitedNa(const MacAddress &mac, const Ipv6Bytes &vip);

/* Kernel-facing side of announcements, replaceable in tests. */
class FrameSender
{
public:
	virtual ~FrameSender() = default;
	virtual Result<MacAddress> hardwareAddress(int ifindex) = 0;
	/* Returns 0 or -errno. */
	virtual int send(int ifindex, std::span<const uint8_t> frame) = 0;
};

/*
 * FrameSender on an AF_PACKET raw socket (protocol 0: it never receives).
 * The socket belongs to the netns of the thread that called open().
 */
class PacketSocketSender : public FrameSender
{
public:
	static Result<std::unique_ptr<PacketSocketSender>> open();
	~PacketSocketSender() override;

	PacketSocketSender(const PacketSocketSender &) = delete;
	PacketSocketSender &operator=(const PacketSocketSender &) = delete;

	Result<MacAddress> hardwareAddress(int ifindex) override;
	int send(int ifindex, std::span<const uint8_t> frame) override;

private:
	PacketSocketSender() = default;
	int fd_ = -1;
};

struct AnnounceOptions {
	/* Frames per burst; the first goes out at once, the rest every interval. */
	unsigned count = 3;
	std::chrono::milliseconds interval{ 500 };
	/* IPv4: send an ARP request and an ARP reply each round (hosts differ in which they honour). */
	bool arpReplyToo = true;
	/*
	 * Farm: the MAC clients should learn (ARP sender / NA target link-layer
	 * address) when it is not the interface's; frames still leave from the
	 * interface's own MAC.
	 */
	std::optional<MacAddress> payloadMac;
};

/*
 * Runs announcement bursts on the loop thread; never blocks. A new announce()
 * for the same (ifindex, address) restarts its burst. Destroying the Announcer
 * cancels pending repeats. Borrowed loop and sender must outlive it.
 */
class Announcer
{
public:
	Announcer(EventLoop &loop, FrameSender &sender) : loop_(loop), sender_(sender) {}
	~Announcer();

	Announcer(const Announcer &) = delete;
	Announcer &operator=(const Announcer &) = delete;

	/*
	 * Sends the first round now and schedules the rest. Fails (nothing
	 * scheduled) if the MAC cannot be read or the first send fails.
	 */
	Status announce(int ifindex, const IpAddress &address, const AnnounceOptions &options = {});
	/* Stops a pending burst (e.g. the VIP was removed again). */
	void cancel(int ifindex, const IpAddress &address);
	/* Bursts with repeats still pending. */
	size_t pending() const { return bursts_.size(); }
	/* Frames handed to the sender successfully since creation (for status/metrics). */
	uint64_t framesSent() const { return framesSent_; }

private:
	struct Key {
		int ifindex;
		IpAddress address;
		bool operator<(const Key &other) const;
	};
	struct Burst {
		std::vector<std::vector<uint8_t>> frames;
		unsigned remaining = 0;
		EventLoop::TimerId timer = 0;
	};

	int sendRound(int ifindex, const Burst &burst);
	void scheduleNext(const Key &key, std::chrono::milliseconds interval);

	EventLoop &loop_;
	FrameSender &sender_;
	std::map<Key, Burst> bursts_;
	uint64_t framesSent_ = 0;
};

} /* namespace sk::net */
