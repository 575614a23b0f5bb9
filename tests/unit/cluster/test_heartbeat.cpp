/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Heartbeat layer over loopback (127.0.0.1 / .2 / .3, no namespace needed): two nodes
 * see each other, loss after the timeout and not before, immediate announcements,
 * probes (alive, refused by a closed port, silent), and forged/replayed input counted.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <optional>
#include <vector>

#include "cluster/heartbeat.h"

using namespace sk;
using namespace std::chrono_literals;
using Clock = EventLoop::Clock;

namespace {

const std::string kHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const std::string kOtherHex = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const char *kCluster = "test-cluster";

ClusterKey testKey(const std::string &hex = kHex)
{
	auto key = ClusterKey::parse(hex);
	REQUIRE(key.ok());
	return std::move(key.value());
}

struct UdpSocket {
	int fd = -1;
	uint16_t port = 0;
	explicit UdpSocket(const char *addr, uint16_t wantPort = 0)
	{
		fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		REQUIRE(fd >= 0);
		struct sockaddr_in sin = {};
		sin.sin_family = AF_INET;
		sin.sin_port = htons(wantPort);
		REQUIRE(inet_pton(AF_INET, addr, &sin.sin_addr) == 1);
		REQUIRE(bind(fd, reinterpret_cast<struct sockaddr *>(&sin), sizeof(sin)) == 0);
		socklen_t len = sizeof(sin);
		REQUIRE(getsockname(fd, reinterpret_cast<struct sockaddr *>(&sin), &len) == 0);
		port = ntohs(sin.sin_port);
	}
	~UdpSocket() { close(fd); }
	void sendTo(const char *addr, uint16_t to, const std::vector<uint8_t> &data)
	{
		struct sockaddr_in sin = {};
		sin.sin_family = AF_INET;
		sin.sin_port = htons(to);
		REQUIRE(inet_pton(AF_INET, addr, &sin.sin_addr) == 1);
		REQUIRE(sendto(fd, data.data(), data.size(), 0, reinterpret_cast<struct sockaddr *>(&sin),
			       sizeof(sin)) == static_cast<ssize_t>(data.size()));
	}
};

/* A port free on addr right now (bound then released; loopback, so the race is benign). */
uint16_t freePort(const char *addr)
{
	UdpSocket s(addr);
	return s.port;
}

HeartbeatConfig makeConfig(NodeId self, const char *local, uint16_t localPort, NodeId peer, const char *peerAddr,
			   uint16_t peerPort, std::chrono::milliseconds interval = 50ms,
			   std::chrono::milliseconds timeout = 200ms)
{
	HeartbeatConfig c;
	c.nodeId = self;
	c.clusterId = clusterIdFromName(kCluster);
	c.interval = interval;
	c.timeout = timeout;
	c.modules = { "m1" };
	HeartbeatNetwork net;
	net.name = "lo";
	net.localAddress = local;
	net.localPort = localPort;
	net.peers.push_back({ peer, peerAddr, peerPort });
	c.networks.push_back(net);
	return c;
}

/* Runs the loop until pred() holds (true) or limit passes (false). */
bool runUntil(EventLoop &loop, const std::function<bool()> &pred, std::chrono::milliseconds limit)
{
	bool met = pred();
	if (met)
		return true;
	Clock::time_point deadline = Clock::now() + limit;
	EventLoop::TimerId t = loop.addPeriodic(2ms, [&] {
		if (pred()) {
			met = true;
			loop.stop();
		} else if (Clock::now() > deadline) {
			loop.stop();
		}
	});
	REQUIRE(loop.run() == 0);
	loop.cancelTimer(t);
	return met;
}

std::unique_ptr<EventLoop> makeLoop()
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	return std::move(loop.value());
}

struct Recorder {
	int seen = 0;
	std::optional<PeerHeartbeat> last;
	std::optional<Clock::time_point> lostAt;
	int lost = 0;
	int netUp = 0;
	int netDown = 0;

	Heartbeat::Callbacks callbacks()
	{
		Heartbeat::Callbacks cb;
		cb.peerSeen = [this](const std::string &, NodeId, const PeerHeartbeat &hb, size_t) {
			seen++;
			last = hb;
		};
		cb.peerLost = [this](const std::string &, NodeId) {
			lost++;
			lostAt = Clock::now();
		};
		cb.networkUp = [this](size_t) { netUp++; };
		cb.networkDown = [this](size_t) { netDown++; };
		return cb;
	}
};

} /* namespace */

TEST_CASE("two nodes see each other; peerLost fires after the timeout once one stops")
{
	auto loop = makeLoop();
	uint16_t pa = freePort("127.0.0.1");
	uint16_t pb = freePort("127.0.0.2");
	ClusterKey key = testKey();
	Recorder ra, rb;
	auto a = Heartbeat::create(*loop, key, makeConfig(1, "127.0.0.1", pa, 2, "127.0.0.2", pb), ra.callbacks());
	REQUIRE_MESSAGE(a.ok(), (a.ok() ? "" : a.error().message));
	auto b = Heartbeat::create(*loop, key, makeConfig(2, "127.0.0.2", pb, 1, "127.0.0.1", pa), rb.callbacks());
	REQUIRE_MESSAGE(b.ok(), (b.ok() ? "" : b.error().message));
	Heartbeat &ha = **a;

	HeartbeatPayload st;
	st.state = 3;
	st.inSync = true;
	st.generation[0] = 0x42;
	st.members = { { 1, 3 }, { 2, 1 } };
	REQUIRE(ha.setModuleState("m1", st) == 0);
	CHECK(ha.setModuleState("nope", st) == -ENOENT);

	/* Several heartbeats each way, so RTT echoes have come back too. */
	REQUIRE(runUntil(*loop, [&] { return ra.seen >= 4 && rb.seen >= 4 && rb.last && rb.last->payload.state == 3; },
			 3000ms));
	CHECK(rb.last->payload.inSync);
	CHECK(rb.last->payload.generation[0] == 0x42);
	CHECK(rb.last->payload.members == st.members);
	CHECK(rb.last->incarnation == ha.incarnation());
	CHECK_FALSE(rb.last->restarted);
	CHECK(ha.peerAlive("m1", 2));
	CHECK(ha.networkIsUp(0));
	CHECK(ra.netUp == 1);
	CHECK(ra.lost == 0);
	CHECK(ha.counters().received >= 4);
	CHECK(ha.counters().dropped.total() == 0);
	PeerStats ps = ha.peerStats(2);
	CHECK(ps.received >= 4);
	CHECK(ps.rttLastUs >= 0);
	CHECK(ps.rttAvgUs >= 0);
	REQUIRE(ps.lastSeen.size() == 1);
	CHECK(ps.lastSeen[0].has_value());

	/* Stop B: A must keep it alive for the timeout after its last heartbeat, then lose it once. */
	b.value().reset();
	auto lastHeard = ha.lastSeen("m1", 2, 0);
	REQUIRE(lastHeard.has_value());
	REQUIRE(runUntil(*loop, [&] { return ra.lost > 0; }, 5000ms));
	auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(*ra.lostAt - *lastHeard);
	CAPTURE(waited.count());
	CHECK(waited >= ha.config().timeout);
	CHECK(ra.lost == 1);
	CHECK_FALSE(ha.peerAlive("m1", 2));
	CHECK(ra.netDown == 1);
	CHECK_FALSE(ha.networkIsUp(0));

	/* Still reported once only while silence continues. */
	loop->addTimer(300ms, [&] { loop->stop(); });
	REQUIRE(loop->run() == 0);
	CHECK(ra.lost == 1);

	/* B restarts (new, larger incarnation): seen again, flagged as restarted. */
	Recorder rb2;
	auto b2 = Heartbeat::create(*loop, key, makeConfig(2, "127.0.0.2", pb, 1, "127.0.0.1", pa), rb2.callbacks());
	REQUIRE_MESSAGE(b2.ok(), (b2.ok() ? "" : b2.error().message));
	int seenBefore = ra.seen;
	REQUIRE(runUntil(*loop, [&] { return ra.seen > seenBefore; }, 3000ms));
	CHECK(ra.last->restarted);
	CHECK(ra.last->incarnation == (*b2)->incarnation());
	CHECK(ha.peerAlive("m1", 2));
}

TEST_CASE("a state change is announced at once, not at the next tick")
{
	auto loop = makeLoop();
	uint16_t pa = freePort("127.0.0.1");
	uint16_t pb = freePort("127.0.0.2");
	ClusterKey key = testKey();
	Recorder ra, rb;
	/* Ticks 60 s apart: anything B sees after the first tick came from the announcement. */
	auto a = Heartbeat::create(*loop, key, makeConfig(1, "127.0.0.1", pa, 2, "127.0.0.2", pb, 60s, 120s),
				   ra.callbacks());
	REQUIRE(a.ok());
	auto b = Heartbeat::create(*loop, key, makeConfig(2, "127.0.0.2", pb, 1, "127.0.0.1", pa, 60s, 120s),
				   rb.callbacks());
	REQUIRE(b.ok());
	/* A's first tick went out before B's socket existed; B's reached A. */
	REQUIRE(runUntil(*loop, [&] { return ra.seen >= 1; }, 3000ms));
	CHECK(rb.seen == 0);

	HeartbeatPayload st;
	st.state = 5;
	REQUIRE((*a)->setModuleState("m1", st) == 0);
	REQUIRE(runUntil(*loop, [&] { return rb.seen >= 1; }, 3000ms));
	CHECK(rb.last->payload.state == 5);
	/* Same state again: nothing new is sent. */
	uint64_t sent = (*a)->counters().sent;
	REQUIRE((*a)->setModuleState("m1", st) == 0);
	CHECK((*a)->counters().sent == sent);
	REQUIRE((*a)->sendNow("m1") == 0);
	CHECK((*a)->counters().sent == sent + 1);
	REQUIRE(runUntil(*loop, [&] { return rb.seen >= 2; }, 3000ms));
}

TEST_CASE("probe: alive peer answers, a closed port is refused early, a silent one times out")
{
	auto loop = makeLoop();
	uint16_t pa = freePort("127.0.0.1");
	uint16_t pb = freePort("127.0.0.2");
	ClusterKey key = testKey();
	Recorder ra, rb;
	auto a = Heartbeat::create(*loop, key, makeConfig(1, "127.0.0.1", pa, 2, "127.0.0.2", pb), ra.callbacks());
	REQUIRE(a.ok());
	auto b = Heartbeat::create(*loop, key, makeConfig(2, "127.0.0.2", pb, 1, "127.0.0.1", pa), rb.callbacks());
	REQUIRE(b.ok());
	Heartbeat &ha = **a;

	CHECK(ha.probe(99, 100ms, [](const ProbeOutcome &) {}) == -ENOENT);

	std::optional<ProbeOutcome> alive;
	REQUIRE(ha.probe(2, 2000ms, [&](const ProbeOutcome &o) { alive = o; }) == 0);
	REQUIRE(runUntil(*loop, [&] { return alive.has_value(); }, 3000ms));
	CHECK(probeResultName(alive->result) == std::string("alive"));
	CHECK(alive->peer == 2);
	CHECK(alive->network == 0);
	CHECK(alive->rtt.count() >= 0);
	CHECK((*b)->counters().probesAnswered == 1);

	/* skd dies, the host lives: the kernel answers ICMP port unreachable. */
	b.value().reset();
	const auto probeTimeout = 5000ms;
	std::optional<ProbeOutcome> refused;
	Clock::time_point start = Clock::now();
	std::optional<Clock::time_point> doneAt;
	REQUIRE(ha.probe(2, probeTimeout, [&](const ProbeOutcome &o) {
		refused = o;
		doneAt = Clock::now();
	}) == 0);
	REQUIRE(runUntil(*loop, [&] { return refused.has_value(); }, 8000ms));
	CHECK(probeResultName(refused->result) == std::string("refused"));
	/* Decided by the ICMP error, not by the timeout (which would take probeTimeout). */
	auto took = std::chrono::duration_cast<std::chrono::milliseconds>(*doneAt - start);
	CAPTURE(took.count());
	CHECK(took < probeTimeout);
	CHECK(ha.counters().probeRefused == 1);

	/* A peer whose port is open but never answers (a hung skd): NoAnswer at the timeout. */
	UdpSocket hung("127.0.0.3");
	Recorder rc;
	uint16_t pc = freePort("127.0.0.1");
	auto c = Heartbeat::create(*loop, key, makeConfig(1, "127.0.0.1", pc, 3, "127.0.0.3", hung.port),
				   rc.callbacks());
	REQUIRE(c.ok());
	std::optional<ProbeOutcome> silent;
	start = Clock::now();
	REQUIRE((*c)->probe(3, 150ms, [&](const ProbeOutcome &o) {
		silent = o;
		doneAt = Clock::now();
	}) == 0);
	REQUIRE(runUntil(*loop, [&] { return silent.has_value(); }, 3000ms));
	CHECK(probeResultName(silent->result) == std::string("no-answer"));
	CHECK(*doneAt - start >= 150ms);
}

TEST_CASE("a peer never heard from is lost once after the timeout; its network is down")
{
	auto loop = makeLoop();
	UdpSocket nobody("127.0.0.2");
	Recorder ra;
	Clock::time_point start = Clock::now();
	auto a = Heartbeat::create(*loop, testKey(),
				   makeConfig(1, "127.0.0.1", freePort("127.0.0.1"), 2, "127.0.0.2", nobody.port),
				   ra.callbacks());
	REQUIRE(a.ok());
	REQUIRE(runUntil(*loop, [&] { return ra.lost > 0 && ra.netDown > 0; }, 3000ms));
	CHECK(*ra.lostAt - start >= 200ms);
	loop->addTimer(300ms, [&] { loop->stop(); });
	REQUIRE(loop->run() == 0);
	CHECK(ra.lost == 1);
	CHECK(ra.netDown == 1);
	CHECK(ra.netUp == 0);
	CHECK((*a)->counters().sent >= 5);
}

TEST_CASE("forged, replayed, foreign and malformed datagrams are dropped and counted")
{
	auto loop = makeLoop();
	UdpSocket peer("127.0.0.2");	/* plays node 2 by hand */
	UdpSocket stranger("127.0.0.3");
	uint16_t pa = freePort("127.0.0.1");
	Recorder ra;
	auto a = Heartbeat::create(*loop, testKey(),
				   makeConfig(1, "127.0.0.1", pa, 2, "127.0.0.2", peer.port, 50ms, 5000ms),
				   ra.callbacks());
	REQUIRE(a.ok());
	Heartbeat &ha = **a;

	ClusterKey key = testKey();
	auto codec = WireCodec::create(key, clusterIdFromName(kCluster));
	REQUIRE(codec.ok());
	ClusterKey otherKey = testKey(kOtherHex);
	auto forger = WireCodec::create(otherKey, clusterIdFromName(kCluster));
	REQUIRE(forger.ok());
	auto foreign = WireCodec::create(key, clusterIdFromName("other-cluster"));
	REQUIRE(foreign.ok());

	auto frame = [&](WireCodec &c, NodeId sender, uint64_t inc, uint64_t seq, const std::string &module) {
		HeartbeatPayload p;
		p.state = 7;
		std::vector<uint8_t> payload;
		REQUIRE(p.encode(&payload) == 0);
		FrameHeader h;
		h.type = static_cast<uint8_t>(FrameType::Heartbeat);
		h.sender = sender;
		h.incarnation = inc;
		h.sequence = seq;
		h.module = module;
		std::vector<uint8_t> out;
		REQUIRE(c.encode(h, payload, &out) == 0);
		return out;
	};
	auto dropped = [&](DropReason r) { return ha.counters().dropped[r]; };
	auto expectDrop = [&](DropReason r, UdpSocket &from, const std::vector<uint8_t> &data) {
		uint64_t before = dropped(r);
		int seenBefore = ra.seen;
		from.sendTo("127.0.0.1", pa, data);
		CHECK_MESSAGE(runUntil(*loop, [&] { return dropped(r) > before; }, 2000ms),
			      "expected a drop counted as ", dropReasonName(r));
		CHECK(ra.seen == seenBefore);
	};

	auto good = frame(**codec, 2, 1000, 10, "m1");
	peer.sendTo("127.0.0.1", pa, good);
	REQUIRE(runUntil(*loop, [&] { return ra.seen == 1; }, 2000ms));
	CHECK(ra.last->payload.state == 7);

	expectDrop(DropReason::Replayed, peer, good);
	expectDrop(DropReason::BadHmac, peer, frame(**forger, 2, 1000, 11, "m1"));
	expectDrop(DropReason::WrongCluster, peer, frame(**foreign, 2, 1000, 12, "m1"));
	expectDrop(DropReason::OldIncarnation, peer, frame(**codec, 2, 999, 13, "m1"));
	expectDrop(DropReason::UnknownPeer, peer, frame(**codec, 3, 1000, 14, "m1"));
	expectDrop(DropReason::UnknownPeer, stranger, frame(**codec, 2, 1000, 15, "m1"));
	expectDrop(DropReason::UnknownModule, peer, frame(**codec, 2, 1000, 16, "nope"));
	expectDrop(DropReason::Truncated, peer, std::vector<uint8_t>(good.begin(), good.begin() + 50));
	expectDrop(DropReason::Oversized, peer, std::vector<uint8_t>(kMaxDatagram + 100, 0));
	expectDrop(DropReason::BadMagic, peer, std::vector<uint8_t>(200, 0x55));

	/* Still accepts the genuine next one. */
	peer.sendTo("127.0.0.1", pa, frame(**codec, 2, 1000, 17, "m1"));
	REQUIRE(runUntil(*loop, [&] { return ra.seen == 2; }, 2000ms));
	CHECK(ha.counters().received == 2);

	/* A's own heartbeats reached the fake peer and authenticate with the shared key. */
	uint8_t buf[2048];
	ssize_t n = recv(peer.fd, buf, sizeof(buf), 0);
	REQUIRE(n > 0);
	DecodedFrame d;
	REQUIRE((*codec)->decode({ buf, static_cast<size_t>(n) }, &d) == DropReason::None);
	CHECK(d.header.sender == 1);
	CHECK(d.header.module == "m1");
	CHECK(d.header.incarnation == ha.incarnation());
}

TEST_CASE("two networks (IPv4 and IPv6): one going silent is reported, the peer stays alive")
{
	auto loop = makeLoop();
	uint16_t pa4 = freePort("127.0.0.1");
	uint16_t pb4 = freePort("127.0.0.2");
	/* IPv6 ports: ask the kernel through a Heartbeat-free socket on ::1. */
	auto freePort6 = [] {
		int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		REQUIRE(fd >= 0);
		struct sockaddr_in6 sin6 = {};
		sin6.sin6_family = AF_INET6;
		sin6.sin6_addr = in6addr_loopback;
		REQUIRE(bind(fd, reinterpret_cast<struct sockaddr *>(&sin6), sizeof(sin6)) == 0);
		socklen_t len = sizeof(sin6);
		REQUIRE(getsockname(fd, reinterpret_cast<struct sockaddr *>(&sin6), &len) == 0);
		close(fd);
		return ntohs(sin6.sin6_port);
	};
	uint16_t pa6 = freePort6();
	uint16_t pb6 = freePort6();

	auto config = [&](NodeId self, bool withV6) {
		bool isA = self == 1;
		HeartbeatConfig c = makeConfig(self, isA ? "127.0.0.1" : "127.0.0.2", isA ? pa4 : pb4, isA ? 2 : 1,
					       isA ? "127.0.0.2" : "127.0.0.1", isA ? pb4 : pa4);
		if (withV6) {
			HeartbeatNetwork v6;
			v6.name = "lo6";
			v6.localAddress = "::1";
			v6.localPort = isA ? pa6 : pb6;
			v6.peers.push_back({ isA ? NodeId{ 2 } : NodeId{ 1 }, "::1", isA ? pb6 : pa6 });
			c.networks.push_back(v6);
		}
		return c;
	};

	ClusterKey key = testKey();
	Recorder ra, rb;
	std::vector<size_t> down;
	Heartbeat::Callbacks cba = ra.callbacks();
	cba.networkDown = [&](size_t n) { down.push_back(n); };
	auto a = Heartbeat::create(*loop, key, config(1, true), cba);
	REQUIRE_MESSAGE(a.ok(), (a.ok() ? "" : a.error().message));
	auto b = Heartbeat::create(*loop, key, config(2, true), rb.callbacks());
	REQUIRE_MESSAGE(b.ok(), (b.ok() ? "" : b.error().message));
	Heartbeat &ha = **a;
	REQUIRE(ha.networkCount() == 2);
	CHECK(ha.networkName(1) == "lo6");

	REQUIRE(runUntil(*loop, [&] { return ha.networkIsUp(0) && ha.networkIsUp(1) && ra.seen >= 6; }, 3000ms));
	CHECK(ha.lastSeen("m1", 2, 0).has_value());
	CHECK(ha.lastSeen("m1", 2, 1).has_value());
	/* Each copy has its own sequence number; copies overtaking each other are not replays. */
	CHECK(ha.counters().dropped.total() == 0);

	/* B comes back on IPv4 only: lo6 goes down, the peer is never lost. */
	b.value().reset();
	auto b2 = Heartbeat::create(*loop, key, config(2, false), rb.callbacks());
	REQUIRE_MESSAGE(b2.ok(), (b2.ok() ? "" : b2.error().message));
	REQUIRE(runUntil(*loop, [&] { return !down.empty(); }, 3000ms));
	CHECK(down == std::vector<size_t>{ 1 });
	loop->addTimer(300ms, [&] { loop->stop(); });
	REQUIRE(loop->run() == 0);
	CHECK(ra.lost == 0);
	CHECK(ha.peerAlive("m1", 2));
	CHECK(ha.networkIsUp(0));
	CHECK_FALSE(ha.networkIsUp(1));
}

TEST_CASE("bad configurations are refused with a reason")
{
	auto loop = makeLoop();
	ClusterKey key = testKey();
	HeartbeatConfig c = makeConfig(1, "127.0.0.1", 0, 2, "127.0.0.2", 0);
	c.timeout = c.interval;
	auto r1 = Heartbeat::create(*loop, key, c, {});
	REQUIRE_FALSE(r1.ok());
	CHECK(r1.error().message.find("timeout") != std::string::npos);

	c = makeConfig(1, "127.0.0.1", 0, 2, "not-an-address", 0);
	auto r2 = Heartbeat::create(*loop, key, c, {});
	REQUIRE_FALSE(r2.ok());
	CHECK(r2.error().message.find("not-an-address") != std::string::npos);

	c = makeConfig(1, "127.0.0.1", 0, 2, "::1", 0);
	auto r3 = Heartbeat::create(*loop, key, c, {});
	REQUIRE_FALSE(r3.ok());
	CHECK(r3.error().message.find("different families") != std::string::npos);

	c = makeConfig(1, "127.0.0.1", 0, 2, "127.0.0.2", 0);
	c.modules = { std::string(kMaxModuleName + 1, 'm') };
	CHECK_FALSE(Heartbeat::create(*loop, key, c, {}).ok());

	c = makeConfig(1, "127.0.0.1", 0, 1, "127.0.0.2", 0);
	CHECK_FALSE(Heartbeat::create(*loop, key, c, {}).ok());
}
