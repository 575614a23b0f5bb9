/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PeerLink: one idle TCP connection from this node to each peer's skd, kept
 * only to learn at once when that skd dies while its kernel lives (crash, OOM
 * kill): the peer's kernel closes the socket, we see EOF/RST within a round
 * trip. The daemon then confirms with a heartbeat probe (ICMP port
 * unreachable) before declaring the peer lost. Silence (power cut, partition)
 * does not break the link: the heartbeat timeout covers that.
 * Nothing read from these connections is trusted: inbound bytes are discarded
 * and only the break of our own outbound connection is a signal.
 */
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/socket.h>

#include "cluster/wire.h"
#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

struct PeerLinkConfig {
	uint16_t port = 0;
	std::vector<std::string> localAddresses;	/* one listener per address */
	struct Peer {
		NodeId id = 0;
		std::vector<std::string> addresses;	/* tried in order */
		uint16_t port = 0;			/* 0: PeerLinkConfig::port */
	};
	std::vector<Peer> peers;
	std::chrono::milliseconds retry{ 500 };
};

class PeerLink
{
public:
	using BrokenCallback = std::function<void(NodeId peer, const std::string &why)>;

	static Result<std::unique_ptr<PeerLink>> create(EventLoop &loop, PeerLinkConfig config,
							BrokenCallback broken);
	~PeerLink();

	bool connected(NodeId peer) const;

private:
	struct Outbound {
		PeerLinkConfig::Peer peer;
		int fd = -1;
		bool established = false;
		size_t nextAddress = 0;
		EventLoop::WatchId watch = 0;
		EventLoop::TimerId retryTimer = 0;
	};
	struct Inbound {
		int fd = -1;
		EventLoop::WatchId watch = 0;
	};

	PeerLink(EventLoop &loop, PeerLinkConfig config, BrokenCallback broken);
	void connect(Outbound &o);
	void onOutbound(Outbound &o, uint32_t events);
	void closeOutbound(Outbound &o, bool scheduleRetry);
	void onAccept(int listenFd);
	void dropInbound(uint64_t id);

	EventLoop &loop_;
	PeerLinkConfig config_;
	BrokenCallback broken_;
	std::vector<std::pair<int, EventLoop::WatchId>> listeners_;
	std::vector<std::unique_ptr<Outbound>> outbound_;
	std::map<uint64_t, Inbound> inbound_;
	uint64_t nextInbound_ = 1;
};

} /* namespace sk */
