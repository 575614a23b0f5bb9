/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Heartbeat layer of one node: authenticated UDP heartbeats per module to every peer on
 * every heartbeat network, per-network liveness, peer loss after silence on all of them,
 * and fast probes (request/reply, ICMP port unreachable) to confirm a suspected death.
 */
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/socket.h>

#include "cluster/key.h"
#include "cluster/wire.h"
#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

/* Plain configuration (the daemon maps cluster.json onto it). */
struct HeartbeatPeerAddress {
	NodeId node = 0;
	std::string address;	/* IPv4 or IPv6 literal; "fe80::1%eth0" for link-local */
	uint16_t port = 0;	/* 0: HeartbeatConfig::port (tests give each node its own) */
};

struct HeartbeatNetwork {
	std::string name;
	std::string localAddress;	/* this node's address on that network */
	uint16_t localPort = 0;		/* 0: HeartbeatConfig::port */
	std::vector<HeartbeatPeerAddress> peers;
};

struct HeartbeatConfig {
	static constexpr uint16_t kDefaultPort = 5409;

	NodeId nodeId = 0;
	uint64_t clusterId = 0;
	/* 0: taken from nextIncarnation("") (wall clock). Must grow across restarts. */
	uint64_t incarnation = 0;
	uint16_t port = kDefaultPort;
	std::chrono::milliseconds interval{ 500 };
	std::chrono::milliseconds timeout{ 3000 };
	std::vector<HeartbeatNetwork> networks;
	std::vector<std::string> modules;
};

/* What peerSeen() reports: the peer's heartbeat and who sent it. */
struct PeerHeartbeat {
	HeartbeatPayload payload;
	uint64_t incarnation = 0;
	uint64_t sequence = 0;
	/* The peer's incarnation differs from the last one seen for this module: it restarted. */
	bool restarted = false;
};

enum class ProbeResult {
	Alive,		/* an authenticated reply came back on some network */
	Refused,	/* ICMP port unreachable: the peer's host is up, its skd is not */
	NoAnswer,	/* nothing before the probe timeout */
};
const char *probeResultName(ProbeResult r);

struct ProbeOutcome {
	NodeId peer = 0;
	ProbeResult result = ProbeResult::NoAnswer;
	std::chrono::microseconds rtt{ 0 };	/* Alive only */
	size_t network = 0;			/* the network that answered (Alive) */
};

struct HeartbeatCounters {
	uint64_t sent = 0;
	uint64_t sendErrors = 0;
	uint64_t received = 0;	/* accepted (authenticated, fresh, known peer and module) */
	DropCounters dropped;
	uint64_t probesSent = 0;
	uint64_t probesAnswered = 0;	/* probe requests from peers we replied to */
	uint64_t probeAlive = 0;
	uint64_t probeRefused = 0;
	uint64_t probeNoAnswer = 0;
};

struct PeerStats {
	uint64_t received = 0;
	/* RTT from heartbeat echoes and probes; -1 until measured. */
	int64_t rttLastUs = -1;
	int64_t rttAvgUs = -1;
	/* Per network: the last accepted frame from this peer (any module), if any. */
	std::vector<std::optional<EventLoop::Clock::time_point>> lastSeen;
};

class Heartbeat
{
public:
	using Clock = EventLoop::Clock;

	/*
	 * Callbacks run on the loop thread. They may call any method of this object but must
	 * not destroy it. peerSeen fires for every accepted heartbeat. peerLost fires once per
	 * (module, peer) when nothing was accepted from it on any network for timeout - also
	 * for a peer never heard from since start. networkDown/Up track "any peer heard on this
	 * network within timeout" the same way (Down once at start if nobody is heard).
	 */
	struct Callbacks {
		std::function<void(const std::string &module, NodeId peer, const PeerHeartbeat &hb,
				   size_t network)>
			peerSeen;
		std::function<void(const std::string &module, NodeId peer)> peerLost;
		std::function<void(size_t network)> networkDown;
		std::function<void(size_t network)> networkUp;
	};
	using ProbeCallback = std::function<void(const ProbeOutcome &)>;

	/* Binds every socket and starts sending; the key is only used here (codec made). */
	static Result<std::unique_ptr<Heartbeat>> create(EventLoop &loop, const ClusterKey &key,
							 HeartbeatConfig config, Callbacks callbacks);
	~Heartbeat();
	Heartbeat(const Heartbeat &) = delete;
	Heartbeat &operator=(const Heartbeat &) = delete;

	/*
	 * Sets what this node announces for a module. A change (ignoring timestamps) is sent
	 * at once on every network, not at the next tick. -ENOENT: unknown module.
	 */
	int setModuleState(const std::string &module, const HeartbeatPayload &state);
	/* Sends the module's current state now. -ENOENT: unknown module. */
	int sendNow(const std::string &module);
	int addModule(const std::string &module);
	int removeModule(const std::string &module);

	/*
	 * Asks the peer, on every network at once, to answer now. cb runs exactly once
	 * (unless this object is destroyed first): Alive on the first reply; Refused as soon
	 * as every network reported port unreachable (the peer's kernel is up but nothing
	 * listens: skd is dead - typically within a millisecond); at timeout Refused if some
	 * network refused, else NoAnswer. Returns -ENOENT for an unknown peer.
	 */
	int probe(NodeId peer, std::chrono::milliseconds timeout, ProbeCallback cb);

	const HeartbeatCounters &counters() const { return counters_; }
	/* Per peer; an empty PeerStats for an unknown peer. */
	PeerStats peerStats(NodeId peer) const;
	/* Last accepted heartbeat for (module, peer) on a network. */
	std::optional<Clock::time_point> lastSeen(const std::string &module, NodeId peer, size_t network) const;
	bool peerAlive(const std::string &module, NodeId peer) const;
	bool networkIsUp(size_t network) const;
	size_t networkCount() const { return nets_.size(); }
	const std::string &networkName(size_t network) const { return config_.networks[network].name; }
	/* The bound local port of a network (useful when configured as 0 in tests). */
	uint16_t localPort(size_t network) const;
	uint64_t incarnation() const { return config_.incarnation; }
	const HeartbeatConfig &config() const { return config_; }

private:
	struct Address {
		struct sockaddr_storage ss {};
		socklen_t len = 0;
	};
	struct PeerOnNet {
		NodeId node = 0;
		Address addr;
		int probeFd = -1;
		EventLoop::WatchId probeWatch = 0;
		/* RTT echo: the peer's latest send time on this network and when it arrived. */
		uint64_t echoTimeNs = 0;
		uint64_t echoReceivedNs = 0;
	};
	struct Net {
		int fd = -1;
		EventLoop::WatchId watch = 0;
		uint16_t port = 0;
		std::vector<PeerOnNet> peers;
		std::optional<Clock::time_point> lastRx;
		bool up = false;
		bool reported = false;	/* Up or Down was reported at least once */
	};
	/* One (module, peer) pair. */
	struct Link {
		ReplayGuard guard{ ReplayGuard::kMaxWindow };
		std::vector<std::optional<Clock::time_point>> lastSeen;	/* per network */
		std::optional<Clock::time_point> lastAny;
		/* When tracking began: a never-seen peer is lost at since + timeout. */
		Clock::time_point since;
		bool alive = false;
		bool reported = false;
	};
	struct Module {
		HeartbeatPayload state;
		std::map<NodeId, Link> links;
	};
	struct PeerInfo {
		PeerStats stats;
		ReplayGuard probeGuard{ ReplayGuard::kMaxWindow };
	};
	struct PendingProbe {
		NodeId peer = 0;
		ProbeCallback cb;
		Clock::time_point start;
		EventLoop::TimerId timer = 0;
		std::vector<bool> refused;	/* per network where the peer is configured */
		std::vector<bool> applies;
	};

	Heartbeat(EventLoop &loop, HeartbeatConfig config, Callbacks callbacks);
	Status setup(const ClusterKey &key);
	Module newModule() const;

	void tick();
	void sendModule(const std::string &name, Module &m);
	int sendFrame(int fd, const Address &to, FrameType type, const std::string &module,
		      std::span<const uint8_t> payload, bool connected);
	void onReadable(size_t net);
	void onProbeReadable(size_t net, size_t peerIndex);
	void handleDatagram(size_t net, std::span<const uint8_t> data, const Address &from);
	void handleHeartbeat(size_t net, PeerOnNet &peer, const DecodedFrame &f);
	void handleProbe(size_t net, const DecodedFrame &f, const Address &from);
	void handleProbeReply(size_t net, const DecodedFrame &f);
	void finishProbe(uint64_t nonce, ProbeOutcome outcome);
	void probeTimedOut(uint64_t nonce);
	void noteRtt(PeerInfo &peer, int64_t rttNs);
	void markNetworkRx(size_t net, Clock::time_point now);

	void armCheck();
	void check();

	PeerOnNet *findPeer(size_t net, NodeId node);
	static bool sameHost(const Address &a, const Address &b);

	EventLoop &loop_;
	HeartbeatConfig config_;
	Callbacks callbacks_;
	std::unique_ptr<WireCodec> codec_;
	std::vector<Net> nets_;
	std::map<std::string, Module> modules_;
	std::map<NodeId, PeerInfo> peers_;
	std::map<uint64_t, PendingProbe> probes_;
	HeartbeatCounters counters_;
	uint64_t nextSequence_ = 1;
	uint64_t nextNonce_ = 1;
	Clock::time_point start_;
	EventLoop::TimerId tickTimer_ = 0;
	EventLoop::TimerId checkTimer_ = 0;
	Clock::time_point checkAt_;
	std::vector<uint8_t> payloadBuf_;
	std::vector<uint8_t> frameBuf_;
};

} /* namespace sk */
