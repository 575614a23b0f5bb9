/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Heartbeat layer. One UDP socket per network (bound to this node's address and the
 * heartbeat port) sends heartbeats, receives everything and answers probes. Probes go
 * out on one *connected* UDP socket per (network, peer): on a connected socket the
 * kernel reports an ICMP port unreachable as ECONNREFUSED on the next recv, which tells
 * "host up, skd dead" within one round trip instead of a timeout (Linux does not rate
 * limit ICMP on loopback; elsewhere a burst of a few per second per peer is allowed,
 * plenty for probes).
 *
 * Liveness bookkeeping never arms a timer per datagram: receptions only move
 * timestamps; one check timer is armed for the earliest deadline and re-armed after
 * each scan. Everything runs on the loop thread.
 */
#include "cluster/heartbeat.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <openssl/rand.h>

namespace sk {

namespace {

LogCategory kLog("heartbeat");

/* Datagrams handled per readiness callback, so one flooded socket cannot starve the loop. */
constexpr int kRecvBatch = 64;
/* DSCP CS6 (network control): heartbeats must not queue behind replication traffic. */
constexpr int kTos = 0xc0;

Result<struct sockaddr_storage> parseAddress(const std::string &text, uint16_t port, socklen_t *len)
{
	struct addrinfo hints = {};
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_family = AF_UNSPEC;
	struct addrinfo *res = nullptr;
	std::string service = std::to_string(port);
	int ret = getaddrinfo(text.c_str(), service.c_str(), &hints, &res);
	if (ret != 0 || !res)
		return makeError(-EINVAL, "'" + text + "' is not an IPv4 or IPv6 address: " + gai_strerror(ret));
	struct sockaddr_storage ss = {};
	memcpy(&ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return ss;
}

std::string addressText(const struct sockaddr_storage &ss)
{
	char host[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;
	if (ss.ss_family == AF_INET) {
		auto *sin = reinterpret_cast<const struct sockaddr_in *>(&ss);
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		return fmt::format("{}:{}", host, port);
	}
	auto *sin6 = reinterpret_cast<const struct sockaddr_in6 *>(&ss);
	inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
	port = ntohs(sin6->sin6_port);
	return fmt::format("[{}]:{}", host, port);
}

/*
 * A UDP socket bound to addr. If the address is not (yet) on this host - an interface
 * still coming up - bind with FREEBIND so the network starts working when it appears
 * rather than failing skd's start; a warning says so.
 */
Result<int> boundSocket(const struct sockaddr_storage &addr, socklen_t len)
{
	int family = addr.ss_family;
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
	if (fd < 0)
		return makeError(-errno, errnoMessage("socket", errno));
	int one = 1;
	if (family == AF_INET6) {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &kTos, sizeof(kTos));
	} else {
		setsockopt(fd, IPPROTO_IP, IP_TOS, &kTos, sizeof(kTos));
	}
	if (bind(fd, reinterpret_cast<const struct sockaddr *>(&addr), len) < 0) {
		int err = errno;
		if (err == EADDRNOTAVAIL) {
			if (family == AF_INET6)
				setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
			else
				setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
			if (bind(fd, reinterpret_cast<const struct sockaddr *>(&addr), len) == 0) {
				logWarn(kLog, "{} is not an address of this host yet; listening anyway",
					addressText(addr));
				return fd;
			}
			err = errno;
		}
		close(fd);
		return makeError(-err, errnoMessage("cannot bind heartbeat socket to " + addressText(addr), err));
	}
	return fd;
}

uint16_t portOf(const struct sockaddr_storage &ss)
{
	if (ss.ss_family == AF_INET)
		return ntohs(reinterpret_cast<const struct sockaddr_in *>(&ss)->sin_port);
	return ntohs(reinterpret_cast<const struct sockaddr_in6 *>(&ss)->sin6_port);
}

void setPort(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		reinterpret_cast<struct sockaddr_in *>(ss)->sin_port = htons(port);
	else
		reinterpret_cast<struct sockaddr_in6 *>(ss)->sin6_port = htons(port);
}

/* Heartbeat state equality ignoring the timestamps filled at send time. */
bool sameAnnouncement(HeartbeatPayload a, HeartbeatPayload b)
{
	a.sendTimeNs = b.sendTimeNs = 0;
	a.echoTimeNs = b.echoTimeNs = 0;
	a.echoDelayNs = b.echoDelayNs = 0;
	return a == b;
}

} /* namespace */

const char *probeResultName(ProbeResult r)
{
	switch (r) {
	case ProbeResult::Alive:
		return "alive";
	case ProbeResult::Refused:
		return "refused";
	case ProbeResult::NoAnswer:
		return "no-answer";
	}
	return "?";
}

Heartbeat::Heartbeat(EventLoop &loop, HeartbeatConfig config, Callbacks callbacks)
	: loop_(loop), config_(std::move(config)), callbacks_(std::move(callbacks))
{
}

Result<std::unique_ptr<Heartbeat>> Heartbeat::create(EventLoop &loop, const ClusterKey &key,
						     HeartbeatConfig config, Callbacks callbacks)
{
	if (config.interval.count() <= 0 || config.timeout <= config.interval)
		return makeError(-EINVAL, fmt::format("heartbeat timeout ({} ms) must be longer than the "
						      "interval ({} ms)",
						      config.timeout.count(), config.interval.count()));
	if (config.networks.empty())
		return makeError(-EINVAL, "no heartbeat network configured");
	for (const std::string &m : config.modules)
		if (m.empty() || m.size() > kMaxModuleName)
			return makeError(-EINVAL, fmt::format("module name '{}' must be 1 to {} bytes", m,
							      kMaxModuleName));
	if (config.incarnation == 0) {
		auto inc = nextIncarnation("");
		if (!inc.ok())
			return inc.error();
		config.incarnation = *inc;
	}

	std::unique_ptr<Heartbeat> hb(new Heartbeat(loop, std::move(config), std::move(callbacks)));
	Status st = hb->setup(key);
	if (!st.ok())
		return st.error();
	return hb;
}

Status Heartbeat::setup(const ClusterKey &key)
{
	auto codec = WireCodec::create(key, config_.clusterId);
	if (!codec.ok())
		return codec.error();
	codec_ = std::move(codec.value());

	uint64_t nonce = 0;
	/* Random nonces: a reply recorded during an earlier run can never match a new probe. */
	if (RAND_bytes(reinterpret_cast<unsigned char *>(&nonce), sizeof(nonce)) != 1)
		return makeError(-EIO, "OpenSSL RAND_bytes failed");
	nextNonce_ = nonce | 1;

	start_ = loop_.now();
	nets_.resize(config_.networks.size());
	for (size_t n = 0; n < config_.networks.size(); n++) {
		const HeartbeatNetwork &cfg = config_.networks[n];
		Net &net = nets_[n];
		uint16_t port = cfg.localPort ? cfg.localPort : config_.port;
		socklen_t len = 0;
		auto local = parseAddress(cfg.localAddress, port, &len);
		if (!local.ok())
			return makeError(-EINVAL, "heartbeat network " + cfg.name + ": " + local.error().message);
		auto fd = boundSocket(*local, len);
		if (!fd.ok())
			return makeError(fd.code(), "heartbeat network " + cfg.name + ": " + fd.error().message);
		net.fd = *fd;
		struct sockaddr_storage bound = {};
		socklen_t blen = sizeof(bound);
		getsockname(net.fd, reinterpret_cast<struct sockaddr *>(&bound), &blen);
		net.port = portOf(bound);

		for (const HeartbeatPeerAddress &p : cfg.peers) {
			if (p.node == config_.nodeId)
				return makeError(-EINVAL, fmt::format("heartbeat network {}: node {} is this node",
								      cfg.name, p.node));
			PeerOnNet peer;
			peer.node = p.node;
			auto addr = parseAddress(p.address, p.port ? p.port : config_.port, &peer.addr.len);
			if (!addr.ok())
				return makeError(-EINVAL, "heartbeat network " + cfg.name + ": " + addr.error().message);
			peer.addr.ss = *addr;
			if (peer.addr.ss.ss_family != local->ss_family)
				return makeError(-EINVAL, fmt::format("heartbeat network {}: peer {} ({}) and "
								      "local address {} are of different families",
								      cfg.name, p.node, p.address, cfg.localAddress));

			/* The probe socket: same local address, any port, connected to the peer. */
			struct sockaddr_storage probeLocal = *local;
			setPort(&probeLocal, 0);
			auto pfd = boundSocket(probeLocal, len);
			if (!pfd.ok())
				return makeError(pfd.code(), "heartbeat network " + cfg.name + ": " + pfd.error().message);
			peer.probeFd = *pfd;
			if (connect(peer.probeFd, reinterpret_cast<const struct sockaddr *>(&peer.addr.ss),
				    peer.addr.len) < 0)
				return makeError(-errno, errnoMessage("heartbeat network " + cfg.name +
									      ": cannot connect probe socket to " +
									      addressText(peer.addr.ss),
								      errno));
			net.peers.push_back(std::move(peer));
			peers_[p.node].stats.lastSeen.resize(nets_.size());
		}
	}

	for (size_t n = 0; n < nets_.size(); n++) {
		nets_[n].watch = loop_.watchFd(nets_[n].fd, POLLIN, [this, n](uint32_t) { onReadable(n); });
		for (size_t i = 0; i < nets_[n].peers.size(); i++)
			nets_[n].peers[i].probeWatch = loop_.watchFd(
				nets_[n].peers[i].probeFd, POLLIN, [this, n, i](uint32_t) { onProbeReadable(n, i); });
	}
	for (const std::string &m : config_.modules)
		modules_.emplace(m, newModule());

	logInfo(kLog, "node {} incarnation {}: {} network(s), {} peer(s), {} module(s), every {} ms, "
		      "lost after {} ms",
		config_.nodeId, config_.incarnation, nets_.size(), peers_.size(), modules_.size(),
		config_.interval.count(), config_.timeout.count());

	tickTimer_ = loop_.addPeriodic(config_.interval, [this] { tick(); });
	tick();
	armCheck();
	return {};
}

Heartbeat::~Heartbeat()
{
	if (tickTimer_)
		loop_.cancelTimer(tickTimer_);
	if (checkTimer_)
		loop_.cancelTimer(checkTimer_);
	for (auto &p : probes_)
		loop_.cancelTimer(p.second.timer);
	for (Net &net : nets_) {
		for (PeerOnNet &peer : net.peers) {
			if (peer.probeWatch)
				loop_.unwatch(peer.probeWatch);
			if (peer.probeFd >= 0)
				close(peer.probeFd);
		}
		if (net.watch)
			loop_.unwatch(net.watch);
		if (net.fd >= 0)
			close(net.fd);
	}
}

Heartbeat::Module Heartbeat::newModule() const
{
	Module m;
	for (const auto &p : peers_) {
		Link &link = m.links[p.first];
		link.lastSeen.resize(nets_.size());
		link.since = loop_.now();
	}
	return m;
}

/* ---- Sending ---- */

int Heartbeat::sendFrame(int fd, const Address &to, FrameType type, const std::string &module,
			 std::span<const uint8_t> payload, bool connected)
{
	FrameHeader h;
	h.type = static_cast<uint8_t>(type);
	h.sender = config_.nodeId;
	h.incarnation = config_.incarnation;
	h.sequence = nextSequence_++;
	h.module = module;
	frameBuf_.clear();
	int ret = codec_->encode(h, payload, &frameBuf_);
	if (ret < 0) {
		counters_.sendErrors++;
		return ret;
	}
	ssize_t n = connected ? send(fd, frameBuf_.data(), frameBuf_.size(), 0)
			      : sendto(fd, frameBuf_.data(), frameBuf_.size(), 0,
				       reinterpret_cast<const struct sockaddr *>(&to.ss), to.len);
	if (n < 0) {
		counters_.sendErrors++;
		return -errno;
	}
	counters_.sent++;
	return 0;
}

void Heartbeat::sendModule(const std::string &name, Module &m)
{
	uint64_t now = monotonicNs();
	for (size_t n = 0; n < nets_.size(); n++) {
		for (PeerOnNet &peer : nets_[n].peers) {
			HeartbeatPayload p = m.state;
			p.sendTimeNs = now;
			p.echoTimeNs = peer.echoTimeNs;
			p.echoDelayNs = peer.echoTimeNs ? now - peer.echoReceivedNs : 0;
			payloadBuf_.clear();
			if (p.encode(&payloadBuf_) < 0) {
				logError(kLog, "module {}: heartbeat has too many members ({})", name,
					 p.members.size());
				counters_.sendErrors++;
				return;
			}
			int ret = sendFrame(nets_[n].fd, peer.addr, FrameType::Heartbeat, name, payloadBuf_, false);
			if (ret < 0 && ret != -EAGAIN)
				logDebug(kLog, "heartbeat to node {} on {} failed: {}", peer.node,
					 config_.networks[n].name, strerror(-ret));
		}
	}
}

void Heartbeat::tick()
{
	for (auto &[name, m] : modules_)
		sendModule(name, m);
}

int Heartbeat::setModuleState(const std::string &module, const HeartbeatPayload &state)
{
	auto it = modules_.find(module);
	if (it == modules_.end())
		return -ENOENT;
	if (state.members.size() > HeartbeatPayload::kMaxMembers)
		return -EMSGSIZE;
	bool changed = !sameAnnouncement(it->second.state, state);
	it->second.state = state;
	if (changed)
		sendModule(module, it->second);
	return 0;
}

int Heartbeat::sendNow(const std::string &module)
{
	auto it = modules_.find(module);
	if (it == modules_.end())
		return -ENOENT;
	sendModule(module, it->second);
	return 0;
}

int Heartbeat::addModule(const std::string &module)
{
	if (module.empty() || module.size() > kMaxModuleName)
		return -EINVAL;
	if (modules_.count(module))
		return -EEXIST;
	/* newModule() starts the clock: its peers get a full timeout from now. */
	Module m = newModule();
	auto it = modules_.emplace(module, std::move(m)).first;
	sendModule(module, it->second);
	armCheck();
	return 0;
}

int Heartbeat::removeModule(const std::string &module)
{
	return modules_.erase(module) ? 0 : -ENOENT;
}

/* ---- Receiving ---- */

Heartbeat::PeerOnNet *Heartbeat::findPeer(size_t net, NodeId node)
{
	for (PeerOnNet &p : nets_[net].peers)
		if (p.node == node)
			return &p;
	return nullptr;
}

bool Heartbeat::sameHost(const Address &a, const Address &b)
{
	if (a.ss.ss_family != b.ss.ss_family)
		return false;
	if (a.ss.ss_family == AF_INET)
		return reinterpret_cast<const struct sockaddr_in *>(&a.ss)->sin_addr.s_addr ==
		       reinterpret_cast<const struct sockaddr_in *>(&b.ss)->sin_addr.s_addr;
	return memcmp(&reinterpret_cast<const struct sockaddr_in6 *>(&a.ss)->sin6_addr,
		      &reinterpret_cast<const struct sockaddr_in6 *>(&b.ss)->sin6_addr,
		      sizeof(struct in6_addr)) == 0;
}

void Heartbeat::onReadable(size_t net)
{
	uint8_t buf[kMaxDatagram + 1];
	for (int i = 0; i < kRecvBatch; i++) {
		Address from;
		from.len = sizeof(from.ss);
		/* MSG_TRUNC: the real length comes back, so an oversized datagram is counted as such. */
		ssize_t n = recvfrom(nets_[net].fd, buf, sizeof(buf), MSG_TRUNC,
				     reinterpret_cast<struct sockaddr *>(&from.ss), &from.len);
		if (n < 0) {
			/* ICMP errors for heartbeats (peer's skd down) are expected: liveness covers them. */
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNREFUSED || errno == EHOSTUNREACH ||
			    errno == ENETUNREACH)
				continue;
			logWarn(kLog, "receive on {} failed: {}", config_.networks[net].name, strerror(errno));
			return;
		}
		if (static_cast<size_t>(n) > kMaxDatagram) {
			counters_.dropped.add(DropReason::Oversized);
			continue;
		}
		handleDatagram(net, { buf, static_cast<size_t>(n) }, from);
	}
}

void Heartbeat::handleDatagram(size_t net, std::span<const uint8_t> data, const Address &from)
{
	DecodedFrame f;
	DropReason r = codec_->decode(data, &f);
	if (r != DropReason::None) {
		counters_.dropped.add(r);
		logDebug(kLog, "dropped datagram from {} on {}: {}", addressText(from.ss),
			 config_.networks[net].name, dropReasonName(r));
		return;
	}
	/* Authentic; the sender must also be a peer configured on this network, at its address. */
	PeerOnNet *peer = findPeer(net, f.header.sender);
	if (!peer || !sameHost(peer->addr, from)) {
		counters_.dropped.add(DropReason::UnknownPeer);
		logDebug(kLog, "dropped {} from node {} at {} on {}: not a peer there",
			 frameTypeName(f.header.type), f.header.sender, addressText(from.ss),
			 config_.networks[net].name);
		return;
	}
	switch (static_cast<FrameType>(f.header.type)) {
	case FrameType::Heartbeat:
		handleHeartbeat(net, *peer, f);
		break;
	case FrameType::Probe:
		handleProbe(net, f, from);
		break;
	case FrameType::ProbeReply:
		handleProbeReply(net, f);
		break;
	default:
		/* Replication frames belong on the replication stream, never on this socket. */
		counters_.dropped.add(DropReason::UnknownType);
		break;
	}
}

void Heartbeat::handleHeartbeat(size_t net, PeerOnNet &peer, const DecodedFrame &f)
{
	auto mit = modules_.find(f.header.module);
	if (mit == modules_.end()) {
		counters_.dropped.add(DropReason::UnknownModule);
		return;
	}
	PeerHeartbeat hb;
	DropReason r = HeartbeatPayload::decode(f.payload, &hb.payload);
	if (r != DropReason::None) {
		counters_.dropped.add(r);
		return;
	}
	Link &link = mit->second.links[peer.node];
	link.lastSeen.resize(nets_.size());
	bool hadIncarnation = link.guard.seenAny();
	uint64_t oldIncarnation = link.guard.incarnation();
	r = link.guard.check(f.header.incarnation, f.header.sequence);
	if (r != DropReason::None) {
		counters_.dropped.add(r);
		if (r == DropReason::OldIncarnation)
			logWarn(kLog, "module {}: node {} sent incarnation {} older than {} (replay, or its "
				      "clock went back without a persisted incarnation)",
				f.header.module, peer.node, f.header.incarnation, oldIncarnation);
		return;
	}

	Clock::time_point now = loop_.now();
	uint64_t nowNs = monotonicNs();
	counters_.received++;
	PeerInfo &info = peers_[peer.node];
	info.stats.received++;
	info.stats.lastSeen.resize(nets_.size());
	info.stats.lastSeen[net] = now;
	peer.echoTimeNs = hb.payload.sendTimeNs;
	peer.echoReceivedNs = nowNs;
	if (hb.payload.echoTimeNs && hb.payload.echoTimeNs <= nowNs) {
		uint64_t elapsed = nowNs - hb.payload.echoTimeNs;
		if (hb.payload.echoDelayNs <= elapsed)
			noteRtt(info, static_cast<int64_t>(elapsed - hb.payload.echoDelayNs));
	}
	markNetworkRx(net, now);

	hb.incarnation = f.header.incarnation;
	hb.sequence = f.header.sequence;
	hb.restarted = hadIncarnation && f.header.incarnation != oldIncarnation;
	link.lastSeen[net] = now;
	link.lastAny = now;
	if (!link.alive) {
		link.alive = true;
		link.reported = true;
		logInfo(kLog, "module {}: node {} seen on {} (incarnation {})", f.header.module, peer.node,
			config_.networks[net].name, f.header.incarnation);
		armCheck();
	} else if (hb.restarted) {
		logInfo(kLog, "module {}: node {} restarted (incarnation {})", f.header.module, peer.node,
			f.header.incarnation);
	}
	if (callbacks_.peerSeen)
		callbacks_.peerSeen(f.header.module, peer.node, hb, net);
}

void Heartbeat::handleProbe(size_t net, const DecodedFrame &f, const Address &from)
{
	ProbePayload p;
	DropReason r = ProbePayload::decode(f.payload, &p);
	if (r == DropReason::None)
		r = peers_[f.header.sender].probeGuard.check(f.header.incarnation, f.header.sequence);
	if (r != DropReason::None) {
		counters_.dropped.add(r);
		return;
	}
	markNetworkRx(net, loop_.now());
	payloadBuf_.clear();
	p.encode(&payloadBuf_);
	/* Back to the prober's own (connected, ephemeral-port) probe socket. */
	if (sendFrame(nets_[net].fd, from, FrameType::ProbeReply, "", payloadBuf_, false) == 0)
		counters_.probesAnswered++;
}

void Heartbeat::handleProbeReply(size_t net, const DecodedFrame &f)
{
	ProbePayload p;
	DropReason r = ProbePayload::decode(f.payload, &p);
	if (r == DropReason::None)
		r = peers_[f.header.sender].probeGuard.check(f.header.incarnation, f.header.sequence);
	if (r != DropReason::None) {
		counters_.dropped.add(r);
		return;
	}
	markNetworkRx(net, loop_.now());
	auto it = probes_.find(p.nonce);
	/* Late (already decided) or not ours: authentic, so harmless; not a drop either. */
	if (it == probes_.end() || it->second.peer != f.header.sender)
		return;
	uint64_t nowNs = monotonicNs();
	int64_t rtt = p.sendTimeNs <= nowNs ? static_cast<int64_t>(nowNs - p.sendTimeNs) : 0;
	noteRtt(peers_[f.header.sender], rtt);
	ProbeOutcome out;
	out.peer = f.header.sender;
	out.result = ProbeResult::Alive;
	out.rtt = std::chrono::microseconds(rtt / 1000);
	out.network = net;
	finishProbe(p.nonce, out);
}

void Heartbeat::onProbeReadable(size_t net, size_t peerIndex)
{
	uint8_t buf[kMaxDatagram + 1];
	for (int i = 0; i < kRecvBatch; i++) {
		PeerOnNet &peer = nets_[net].peers[peerIndex];
		ssize_t n = recv(peer.probeFd, buf, sizeof(buf), MSG_TRUNC);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR)
				continue;
			/*
			 * ECONNREFUSED = ICMP port unreachable: the peer's kernel answered for a
			 * port nobody listens on. Every pending probe to this peer learns it.
			 */
			int err = errno;
			NodeId node = peer.node;
			std::vector<uint64_t> done;
			for (auto &[nonce, pp] : probes_) {
				if (pp.peer != node)
					continue;
				if (err == ECONNREFUSED)
					pp.refused[net] = true;
				bool all = true;
				for (size_t k = 0; k < pp.applies.size(); k++)
					if (pp.applies[k] && !pp.refused[k])
						all = false;
				if (all)
					done.push_back(nonce);
			}
			if (err != ECONNREFUSED)
				logDebug(kLog, "probe socket to node {} on {}: {}", node,
					 config_.networks[net].name, strerror(err));
			for (uint64_t nonce : done) {
				ProbeOutcome out;
				out.peer = node;
				out.result = ProbeResult::Refused;
				finishProbe(nonce, out);
			}
			continue;
		}
		if (static_cast<size_t>(n) > kMaxDatagram) {
			counters_.dropped.add(DropReason::Oversized);
			continue;
		}
		/* Connected socket: the kernel only delivers datagrams from the peer's address. */
		handleDatagram(net, { buf, static_cast<size_t>(n) }, peer.addr);
	}
}

int Heartbeat::probe(NodeId peer, std::chrono::milliseconds timeout, ProbeCallback cb)
{
	if (!peers_.count(peer))
		return -ENOENT;
	uint64_t nonce = nextNonce_++;
	PendingProbe pp;
	pp.peer = peer;
	pp.cb = std::move(cb);
	pp.start = loop_.now();
	pp.refused.assign(nets_.size(), false);
	pp.applies.assign(nets_.size(), false);
	pp.timer = loop_.addTimer(timeout, [this, nonce] { probeTimedOut(nonce); });
	probes_.emplace(nonce, std::move(pp));

	ProbePayload p{ nonce, monotonicNs() };
	for (size_t n = 0; n < nets_.size(); n++) {
		PeerOnNet *on = findPeer(n, peer);
		if (!on)
			continue;
		probes_[nonce].applies[n] = true;
		payloadBuf_.clear();
		p.encode(&payloadBuf_);
		int ret = sendFrame(on->probeFd, on->addr, FrameType::Probe, "", payloadBuf_, true);
		if (ret == -ECONNREFUSED) {
			/* An earlier probe's ICMP error surfaced on this send: still a refusal. */
			probes_[nonce].refused[n] = true;
			ret = sendFrame(on->probeFd, on->addr, FrameType::Probe, "", payloadBuf_, true);
		}
		if (ret == 0)
			counters_.probesSent++;
		else if (ret != -ECONNREFUSED)
			logDebug(kLog, "probe to node {} on {} failed: {}", peer, config_.networks[n].name,
				 strerror(-ret));
	}
	return 0;
}

void Heartbeat::probeTimedOut(uint64_t nonce)
{
	auto it = probes_.find(nonce);
	if (it == probes_.end())
		return;
	it->second.timer = 0;
	ProbeOutcome out;
	out.peer = it->second.peer;
	bool anyRefused = std::find(it->second.refused.begin(), it->second.refused.end(), true) !=
			  it->second.refused.end();
	out.result = anyRefused ? ProbeResult::Refused : ProbeResult::NoAnswer;
	finishProbe(nonce, out);
}

void Heartbeat::finishProbe(uint64_t nonce, ProbeOutcome outcome)
{
	auto it = probes_.find(nonce);
	if (it == probes_.end())
		return;
	PendingProbe pp = std::move(it->second);
	probes_.erase(it);
	if (pp.timer)
		loop_.cancelTimer(pp.timer);
	switch (outcome.result) {
	case ProbeResult::Alive:
		counters_.probeAlive++;
		break;
	case ProbeResult::Refused:
		counters_.probeRefused++;
		break;
	case ProbeResult::NoAnswer:
		counters_.probeNoAnswer++;
		break;
	}
	auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(loop_.now() - pp.start);
	logInfo(kLog, "probe of node {}: {} after {} us", pp.peer, probeResultName(outcome.result),
		elapsed.count());
	if (pp.cb)
		pp.cb(outcome);
}

void Heartbeat::noteRtt(PeerInfo &peer, int64_t rttNs)
{
	int64_t us = rttNs / 1000;
	peer.stats.rttLastUs = us;
	/* EWMA with gain 1/8, as TCP's SRTT. */
	peer.stats.rttAvgUs = peer.stats.rttAvgUs < 0 ? us : peer.stats.rttAvgUs + (us - peer.stats.rttAvgUs) / 8;
}

void Heartbeat::markNetworkRx(size_t net, Clock::time_point now)
{
	Net &n = nets_[net];
	n.lastRx = now;
	if (!n.up) {
		n.up = true;
		n.reported = true;
		logInfo(kLog, "network {} up", config_.networks[net].name);
		armCheck();
		if (callbacks_.networkUp)
			callbacks_.networkUp(net);
	}
}

/* ---- Liveness ---- */

void Heartbeat::armCheck()
{
	/* The earliest moment some (module, peer) or network can expire. */
	std::optional<Clock::time_point> next;
	auto consider = [&](bool pending, std::optional<Clock::time_point> last, Clock::time_point since) {
		if (!pending)
			return;
		Clock::time_point t = (last ? *last : since) + config_.timeout;
		if (!next || t < *next)
			next = t;
	};
	for (auto &[name, m] : modules_)
		for (auto &[node, link] : m.links)
			consider(link.alive || !link.reported, link.lastAny, link.since);
	for (Net &n : nets_)
		consider(!n.peers.empty() && (n.up || !n.reported), n.lastRx, start_);

	if (!next)
		return;
	if (checkTimer_ && checkAt_ <= *next)
		return;
	if (checkTimer_)
		loop_.cancelTimer(checkTimer_);
	checkAt_ = *next;
	auto delay = std::chrono::ceil<std::chrono::milliseconds>(*next - loop_.now());
	if (delay.count() < 0)
		delay = std::chrono::milliseconds(0);
	checkTimer_ = loop_.addTimer(delay, [this] {
		checkTimer_ = 0;
		check();
	});
}

void Heartbeat::check()
{
	Clock::time_point now = loop_.now();
	/* Collected first: callbacks may add or remove modules. */
	std::vector<std::pair<std::string, NodeId>> lost;
	for (auto &[name, m] : modules_) {
		for (auto &[node, link] : m.links) {
			if (!(link.alive || !link.reported))
				continue;
			Clock::time_point last = link.lastAny ? *link.lastAny : link.since;
			if (now - last < config_.timeout)
				continue;
			link.alive = false;
			link.reported = true;
			lost.emplace_back(name, node);
		}
	}
	std::vector<size_t> down;
	for (size_t i = 0; i < nets_.size(); i++) {
		Net &n = nets_[i];
		if (n.peers.empty() || !(n.up || !n.reported))
			continue;
		Clock::time_point last = n.lastRx ? *n.lastRx : start_;
		if (now - last < config_.timeout)
			continue;
		n.up = false;
		n.reported = true;
		down.push_back(i);
	}
	for (size_t i : down) {
		logWarn(kLog, "network {} down: nothing heard for {} ms", config_.networks[i].name,
			config_.timeout.count());
		if (callbacks_.networkDown)
			callbacks_.networkDown(i);
	}
	for (auto &[name, node] : lost) {
		logWarn(kLog, "module {}: node {} lost: silent on every network for {} ms", name, node,
			config_.timeout.count());
		if (callbacks_.peerLost)
			callbacks_.peerLost(name, node);
	}
	armCheck();
}

/* ---- Status ---- */

PeerStats Heartbeat::peerStats(NodeId peer) const
{
	auto it = peers_.find(peer);
	if (it == peers_.end())
		return {};
	return it->second.stats;
}

std::optional<Heartbeat::Clock::time_point> Heartbeat::lastSeen(const std::string &module, NodeId peer,
								size_t network) const
{
	auto mit = modules_.find(module);
	if (mit == modules_.end())
		return std::nullopt;
	auto lit = mit->second.links.find(peer);
	if (lit == mit->second.links.end() || network >= lit->second.lastSeen.size())
		return std::nullopt;
	return lit->second.lastSeen[network];
}

bool Heartbeat::peerAlive(const std::string &module, NodeId peer) const
{
	auto mit = modules_.find(module);
	if (mit == modules_.end())
		return false;
	auto lit = mit->second.links.find(peer);
	return lit != mit->second.links.end() && lit->second.alive;
}

bool Heartbeat::networkIsUp(size_t network) const
{
	return network < nets_.size() && nets_[network].up;
}

uint16_t Heartbeat::localPort(size_t network) const
{
	return network < nets_.size() ? nets_[network].port : 0;
}

} /* namespace sk */
