/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm ARP/ND responder: on the responder node only, answers ARP requests and
 * IPv6 neighbour solicitations for the VIPs with the farm's virtual MAC in the
 * payload and the node's own MAC as Ethernet source (the virtual MAC is never a
 * frame source, so switches keep flooding it to every node).
 */
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/event_loop.h"
#include "core/result.h"
#include "net/announce.h"
#include "net/vip.h"

namespace sk {

struct FarmResponderConfig {
	net::MacAddress ownMac{};	/* Ethernet source of every answer */
	net::MacAddress virtualMac{};	/* what clients learn */
	std::vector<net::IpAddress> vips;
};

/*
 * Pure: the answer to one received Ethernet frame, or nothing (not an ARP
 * request / NS for a VIP, malformed, or sent by a virtual-MAC source).
 * IPv4: ARP reply to the requester. IPv6: solicited NA (Solicited+Override)
 * to the solicitor, or to ff02::1 without Solicited for a DAD probe (source ::).
 */
std::optional<std::vector<uint8_t>> farmNeighbourAnswer(std::span<const uint8_t> frame,
							 const FarmResponderConfig &config);

struct FarmResponderCounters {
	uint64_t received = 0;	/* frames past the socket filter */
	uint64_t answered = 0;
	uint64_t sendErrors = 0;
};

/*
 * AF_PACKET socket on the farm interface with a classic BPF filter (ARP, and
 * ICMPv6 NS without extension headers); runs on the loop thread. The socket
 * belongs to the netns of the thread that created it.
 */
class ArpResponder
{
public:
	static Result<std::unique_ptr<ArpResponder>> create(EventLoop &loop, int ifindex,
							    const FarmResponderConfig &config);
	~ArpResponder();

	ArpResponder(const ArpResponder &) = delete;
	ArpResponder &operator=(const ArpResponder &) = delete;

	const FarmResponderCounters &counters() const { return counters_; }

private:
	ArpResponder(EventLoop &loop, int ifindex, const FarmResponderConfig &config)
		: loop_(loop), ifindex_(ifindex), config_(config)
	{
	}
	void onReadable();

	EventLoop &loop_;
	int ifindex_;
	FarmResponderConfig config_;
	int fd_ = -1;
	EventLoop::WatchId watch_ = 0;
	FarmResponderCounters counters_;
};

} /* namespace sk */
