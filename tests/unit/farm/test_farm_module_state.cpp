/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm state machine (pure, tick time): start/stop sequences and their action
 * order, refusals per state, a 3-node simulation exchanging views (ownership
 * agreement, peer loss moving only the lost node's buckets, responder choice),
 * and handovers (join, admin stop) that never let two nodes own one bucket.
 */
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "farm/buckets.h"
#include "farm/farm_state.h"

using namespace sk;

namespace {

constexpr uint32_t kBuckets = 256;
constexpr uint32_t kSeed = 0x5eed;

FarmMachineConfig machineConfig(NodeId self, std::map<NodeId, uint32_t> weights = { { 1, 1 }, { 2, 1 }, { 3, 1 } })
{
	FarmMachineConfig c;
	c.self = self;
	c.weights = std::move(weights);
	c.buckets = kBuckets;
	c.seed = kSeed;
	c.leaveTimeoutMs = 3000;
	return c;
}

std::vector<FarmActionKind> kinds(const FarmStep &s)
{
	std::vector<FarmActionKind> k;
	for (const FarmAction &a : s.actions)
		if (a.kind != FarmActionKind::Publish)
			k.push_back(a.kind);
	return k;
}

std::string names(const std::vector<FarmActionKind> &k)
{
	std::string s;
	for (FarmActionKind a : k)
		s += std::string(s.empty() ? "" : " ") + farmActionName(a);
	return s;
}

std::string names(const FarmStep &s)
{
	return names(kinds(s));
}

const FarmAction *find(const FarmStep &s, FarmActionKind k)
{
	for (const FarmAction &a : s.actions)
		if (a.kind == k)
			return &a;
	return nullptr;
}

size_t indexOf(const FarmStep &s, FarmActionKind k)
{
	auto ks = kinds(s);
	return static_cast<size_t>(std::find(ks.begin(), ks.end(), k) - ks.begin());
}

std::string label(const FarmStateMachine &m)
{
	return farmStateLabel(m.state(), m.phase());
}

FarmStep must(Result<FarmStep> r)
{
	REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
	return std::move(r.value());
}

FarmPeerView viewOf(const FarmStateMachine &m)
{
	FarmPeerView v;
	v.state = m.state();
	v.phase = m.phase();
	v.members = m.advertisedMembers();
	v.digest = m.viewDigest();
	v.alive = true;
	return v;
}

std::vector<uint32_t> expectedOwners(std::vector<FarmNodeWeight> nodes)
{
	auto r = farmAssignBuckets(kSeed, kBuckets, nodes);
	REQUIRE(r.ok());
	return r.value();
}

/*
 * Several machines and a "network" that delivers each node's view to every other
 * alive node. Script completions are delivered explicitly, so tests control order.
 */
struct Sim {
	std::map<NodeId, std::unique_ptr<FarmStateMachine>> nodes;
	std::map<NodeId, bool> alive;
	uint64_t now = 1000;
	/* The latest installed table per node: no two alive nodes may own one bucket. */
	std::map<NodeId, std::vector<uint32_t>> installed;
	std::vector<std::string> overlaps;

	explicit Sim(std::map<NodeId, uint32_t> weights = { { 1, 1 }, { 2, 1 }, { 3, 1 } })
	{
		for (const auto &[id, w] : weights) {
			nodes[id] = std::make_unique<FarmStateMachine>(machineConfig(id, weights));
			alive[id] = true;
		}
	}
	FarmStateMachine &operator[](NodeId id) { return *nodes.at(id); }

	FarmStep feed(NodeId id, const FarmEvent &e)
	{
		FarmStep s = must(nodes.at(id)->handle(e));
		for (const FarmAction &a : s.actions) {
			if (a.kind == FarmActionKind::SetOwners)
				installed[id] = a.owners;
			if (a.kind == FarmActionKind::UnloadFilter)
				installed.erase(id);
		}
		checkOverlap(id, e);
		return s;
	}
	void checkOverlap(NodeId id, const FarmEvent &e)
	{
		for (uint32_t b = 0; b < kBuckets; b++) {
			int owners = 0;
			for (auto &[n, t] : installed)
				owners += alive[n] && t.size() == kBuckets && t[b] == n;
			if (owners > 1)
				overlaps.push_back("bucket " + std::to_string(b) + " after node " + std::to_string(id) +
						   " handled " + farmEventName(e.kind));
		}
	}
	size_t unowned() const
	{
		size_t n = 0;
		for (uint32_t b = 0; b < kBuckets; b++) {
			bool owned = false;
			for (auto &[id, t] : installed)
				owned |= alive.at(id) && t.size() == kBuckets && t[b] == id;
			n += !owned;
		}
		return n;
	}
	/* One round: every alive node's current view to every other alive node. */
	void exchange()
	{
		for (int round = 0; round < 4; round++)
			for (auto &[from, m] : nodes) {
				if (!alive[from])
					continue;
				FarmPeerView v = viewOf(*m);
				for (auto &[to, other] : nodes)
					if (to != from && alive[to])
						feed(to, FarmEvent::heartbeat(from, v, now));
			}
	}
	void start(NodeId id)
	{
		feed(id, FarmEvent::admin(FarmEventKind::AdminStart, now));
		exchange();
		feed(id, FarmEvent::scriptDone("start_both", true, now));
		exchange();
	}
};

} /* namespace */

TEST_CASE("start: filter before VIP, script last; UP after start_both with every bucket here when alone")
{
	FarmStateMachine m(machineConfig(1));
	CHECK(label(m) == "STOP/idle");
	FarmStep s = must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 10)));
	CHECK(label(m) == "WAIT/starting");
	CHECK(names(s) == "load-filter set-owners setup-vip run-script");
	REQUIRE(find(s, FarmActionKind::RunScript));
	CHECK(find(s, FarmActionKind::RunScript)->script == "start_both");
	/* Nobody UP yet: this node owns nothing while its app starts. */
	const FarmAction *owners = find(s, FarmActionKind::SetOwners);
	REQUIRE(owners);
	CHECK(std::count(owners->owners.begin(), owners->owners.end(), 1u) == 0);
	REQUIRE(s.transitions.size() == 1);
	CHECK(s.transitions[0].cause == "admin start");
	CHECK_FALSE(m.serving());

	s = must(m.handle(FarmEvent::scriptDone("start_both", true, 20)));
	CHECK(label(m) == "UP/running");
	CHECK(names(s) == "set-owners become-responder announce");
	owners = find(s, FarmActionKind::SetOwners);
	REQUIRE(owners);
	CHECK(owners->owners == std::vector<uint32_t>(kBuckets, 1));
	CHECK(m.advertisedMembers() == std::vector<NodeId>{ 1 });
	CHECK(m.viewDigest() == farmAssignmentDigest(owners->owners));
	CHECK(m.responder());
	CHECK(m.serving());
}

TEST_CASE("refusals per state")
{
	FarmStateMachine m(machineConfig(1));
	auto r = m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 1));
	CHECK(r.code() == -EALREADY);

	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 2)));
	r = m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 3));
	CHECK(r.code() == -EALREADY);
	CHECK(label(m) == "WAIT/starting");

	must(m.handle(FarmEvent::scriptDone("start_both", true, 4)));
	r = m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 5));
	CHECK(r.code() == -EALREADY);

	/* A peer UP that still lists us keeps the leave pending. */
	FarmPeerView v;
	v.state = FarmState::Up;
	v.phase = FarmPhase::Running;
	v.members = { 1, 2 };
	must(m.handle(FarmEvent::heartbeat(2, v, 6)));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 7)));
	CHECK(label(m) == "WAIT/leaving");
	r = m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 8));
	CHECK(r.code() == -EINPROGRESS);
	r = m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 9));
	CHECK(r.code() == -EINPROGRESS);
	CHECK(label(m) == "WAIT/leaving");
}

TEST_CASE("three nodes agree on one assignment; the lowest UP id answers ARP")
{
	Sim sim;
	sim.start(1);
	sim.start(2);
	sim.start(3);
	auto want = expectedOwners({ { 1, 1 }, { 2, 1 }, { 3, 1 } });
	for (NodeId id : { 1u, 2u, 3u }) {
		CAPTURE(id);
		CHECK(label(sim[id]) == "UP/running");
		CHECK(sim[id].advertisedMembers() == std::vector<NodeId>{ 1, 2, 3 });
		CHECK(sim[id].installedOwners() == want);
		CHECK(sim[id].viewDigest() == farmAssignmentDigest(want));
		CHECK(sim[id].viewsAgree());
		CHECK(sim[id].responderNode() == 1u);
	}
	CHECK(sim[1].responder());
	CHECK_FALSE(sim[2].responder());
	CHECK_FALSE(sim[3].responder());
	for (NodeId id : { 1u, 2u, 3u }) {
		auto n = std::count(want.begin(), want.end(), id);
		CAPTURE(id);
		CHECK(n > 50);	/* about a third of 256 each */
	}
	CHECK(sim.overlaps.empty());
	CHECK(sim.unowned() == 0);
}

TEST_CASE("a lost node's buckets move to the survivors, nothing else moves; its return moves only its share back")
{
	Sim sim;
	for (NodeId id : { 1u, 2u, 3u })
		sim.start(id);
	auto before = sim[1].installedOwners();

	sim.alive[1] = false;
	FarmStep s2 = sim.feed(2, FarmEvent::peerLost(1, "no heartbeat for 3000 ms", sim.now));
	FarmStep s3 = sim.feed(3, FarmEvent::peerLost(1, "no heartbeat for 3000 ms", sim.now));
	auto after = sim[2].installedOwners();
	CHECK(after == sim[3].installedOwners());
	CHECK(after == expectedOwners({ { 2, 1 }, { 3, 1 } }));
	for (uint32_t b = 0; b < kBuckets; b++) {
		CAPTURE(b);
		if (before[b] != 1)
			CHECK(after[b] == before[b]);
		else
			CHECK(after[b] != 1u);
	}
	/* Node 1 was the responder: node 2 (now lowest) takes over and announces. */
	CHECK(names(s2) == "set-owners become-responder announce");
	CHECK(names(s3) == "set-owners");
	CHECK(sim[2].responder());

	/* Node 1 returns (restarted): owners go back to exactly the three-node table. */
	sim.alive[1] = true;
	sim.nodes[1] = std::make_unique<FarmStateMachine>(machineConfig(1));
	sim.installed.erase(1);
	sim.start(1);
	CHECK(sim[2].installedOwners() == before);
	CHECK(sim[1].installedOwners() == before);
	CHECK(sim[1].responder());
	CHECK_FALSE(sim[2].responder());
}

TEST_CASE("admin stop releases at once, stops only once the others took over: never two owners")
{
	Sim sim;
	for (NodeId id : { 1u, 2u, 3u })
		sim.start(id);

	FarmStep s = sim.feed(1, FarmEvent::admin(FarmEventKind::AdminStop, sim.now));
	CHECK(label(sim[1]) == "WAIT/leaving");
	/* Owns nothing now, but VIP, filter and app stay until the peers confirm. */
	CHECK(names(s) == "set-owners stop-responder");
	CHECK(std::count(sim[1].installedOwners().begin(), sim[1].installedOwners().end(), 1u) == 0);
	CHECK(sim[1].advertisedMembers() == std::vector<NodeId>{ 2, 3 });
	CHECK(sim[1].filterLoaded());

	/* Peers learn it and take its buckets; once both confirm, node 1 stops. */
	sim.exchange();
	CHECK(label(sim[1]) == "WAIT/stopping");
	CHECK(sim[2].installedOwners() == expectedOwners({ { 2, 1 }, { 3, 1 } }));
	CHECK(sim[3].installedOwners() == expectedOwners({ { 2, 1 }, { 3, 1 } }));
	CHECK(sim[2].responder());
	CHECK_FALSE(sim[1].filterLoaded());
	CHECK(sim.unowned() == 0);
	CHECK(sim.overlaps.empty());

	FarmStep done = sim.feed(1, FarmEvent::scriptDone("stop_both", true, sim.now));
	CHECK(label(sim[1]) == "STOP/idle");
	CHECK(kinds(done).empty());
}

TEST_CASE("a joining node takes its share only after the current owners released it")
{
	Sim sim;
	sim.start(1);
	CHECK(sim[1].installedOwners() == std::vector<uint32_t>(kBuckets, 1));
	sim.feed(2, FarmEvent::admin(FarmEventKind::AdminStart, sim.now));
	sim.exchange();
	FarmStep up = sim.feed(2, FarmEvent::scriptDone("start_both", true, sim.now));
	CHECK(label(sim[2]) == "UP/running");
	/* Node 1 still claims everything: node 2 takes nothing yet. */
	CHECK(std::count(sim[2].installedOwners().begin(), sim[2].installedOwners().end(), 2u) == 0);
	CHECK(sim.overlaps.empty());
	/* Node 1 learns, releases node 2's share; node 2 sees that and takes it. */
	FarmPeerView v = viewOf(sim[2]);
	sim.feed(1, FarmEvent::heartbeat(2, v, sim.now));
	auto two = expectedOwners({ { 1, 1 }, { 2, 1 } });
	CHECK(sim[1].installedOwners() == two);
	sim.feed(2, FarmEvent::heartbeat(1, viewOf(sim[1]), sim.now));
	CHECK(sim[2].installedOwners() == two);
	CHECK(sim.overlaps.empty());
	CHECK(sim.unowned() == 0);
	(void)up;
}

TEST_CASE("teardown order: drop everything, then VIP off lo, then unload, then stop_both")
{
	FarmStateMachine m(machineConfig(1));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 2)));
	/* Alone: nobody to hand over to, so the stop proceeds at once. */
	FarmStep s = must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 3)));
	CHECK(label(m) == "WAIT/stopping");
	CHECK(names(s) == "set-owners stop-responder teardown-vip unload-filter run-script");
	const FarmAction *o = find(s, FarmActionKind::SetOwners);
	REQUIRE(o);
	CHECK(o->owners == std::vector<uint32_t>(kBuckets, 0));
	CHECK(indexOf(s, FarmActionKind::SetOwners) < indexOf(s, FarmActionKind::TeardownVip));
	CHECK(indexOf(s, FarmActionKind::TeardownVip) < indexOf(s, FarmActionKind::UnloadFilter));
	CHECK(find(s, FarmActionKind::RunScript)->script == "stop_both");
	must(m.handle(FarmEvent::scriptDone("stop_both", true, 4)));
	CHECK(label(m) == "STOP/idle");
}

/* Node 1 (config c) UP at 1000, with node 2 UP too (as seen by node 1). */
FarmStateMachine upWithPeer2(const FarmMachineConfig &c)
{
	FarmStateMachine m(c);
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1000)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 1000)));
	FarmPeerView v;
	v.state = FarmState::Up;
	v.phase = FarmPhase::Running;
	v.members = { 1, 2 };
	must(m.handle(FarmEvent::heartbeat(2, v, 1000)));
	return m;
}

TEST_CASE("leave is bounded: a peer that never confirms is given up on at the deadline (tick time)")
{
	FarmStateMachine m = upWithPeer2(machineConfig(1));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 1000)));
	CHECK(label(m) == "WAIT/leaving");

	FarmStep s = must(m.handle(FarmEvent::tick(3999)));
	CHECK(label(m) == "WAIT/leaving");
	CHECK(kinds(s).empty());

	s = must(m.handle(FarmEvent::tick(4000)));
	CHECK(label(m) == "WAIT/stopping");
	REQUIRE(s.transitions.size() == 1);
	CHECK(s.transitions[0].loud);
	CHECK(s.transitions[0].cause.find("not confirmed") != std::string::npos);
}

TEST_CASE("a peer lost while leaving no longer holds the leave up")
{
	FarmStateMachine m(machineConfig(1));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 1)));
	FarmPeerView v;
	v.state = FarmState::Up;
	v.members = { 1, 2 };
	must(m.handle(FarmEvent::heartbeat(2, v, 1)));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, 2)));
	CHECK(label(m) == "WAIT/leaving");
	must(m.handle(FarmEvent::peerLost(2, "dead", 3)));
	CHECK(label(m) == "WAIT/stopping");
}

TEST_CASE("start_both failure stops the module; a late start_both after a stop is ignored")
{
	FarmStateMachine m(machineConfig(1));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
	FarmStep s = must(m.handle(FarmEvent::scriptDone("start_both", false, 2)));
	CHECK(label(m) == "WAIT/stopping");
	REQUIRE(s.transitions.size() == 1);
	CHECK(s.transitions[0].loud);
	/* Its table (nobody UP) already drops everything: no new SetOwners. */
	CHECK(names(s) == "teardown-vip unload-filter run-script");
	must(m.handle(FarmEvent::scriptDone("stop_both", true, 3)));
	CHECK(label(m) == "STOP/idle");

	FarmStateMachine n(machineConfig(1));
	must(n.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
	must(n.handle(FarmEvent::admin(FarmEventKind::AdminStop, 2)));
	CHECK(label(n) == "WAIT/stopping");
	s = must(n.handle(FarmEvent::scriptDone("start_both", true, 3)));
	CHECK(label(n) == "WAIT/stopping");
	CHECK(kinds(s).empty());
	must(n.handle(FarmEvent::scriptDone("stop_both", true, 4)));
	CHECK(label(n) == "STOP/idle");
	CHECK_FALSE(n.responder());
}

TEST_CASE("restart and checker failure: leave, stop, start again")
{
	for (bool checker : { false, true }) {
		CAPTURE(checker);
		FarmStateMachine m(machineConfig(1));
		must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
		must(m.handle(FarmEvent::scriptDone("start_both", true, 2)));
		if (checker)
			must(m.handle(FarmEvent::checkerFailed("http", 3)));
		else
			must(m.handle(FarmEvent::admin(FarmEventKind::AdminRestart, 3)));
		CHECK(label(m) == "WAIT/stopping");
		CHECK(m.restartPending());
		FarmStep s = must(m.handle(FarmEvent::scriptDone("stop_both", true, 4)));
		CHECK(label(m) == "WAIT/starting");
		CHECK(names(s) == "load-filter set-owners setup-vip run-script");
		must(m.handle(FarmEvent::scriptDone("start_both", true, 5)));
		CHECK(label(m) == "UP/running");
	}
	/* A checker failing outside UP changes nothing. */
	FarmStateMachine idle(machineConfig(1));
	FarmStep s = must(idle.handle(FarmEvent::checkerFailed("http", 1)));
	CHECK(label(idle) == "STOP/idle");
	CHECK(s.actions.empty());
}

TEST_CASE("weights: a node of weight 2 owns about twice the buckets")
{
	Sim sim({ { 1, 1 }, { 2, 2 }, { 3, 1 } });
	for (NodeId id : { 1u, 2u, 3u })
		sim.start(id);
	auto t = sim[3].installedOwners();
	auto n1 = std::count(t.begin(), t.end(), 1u);
	auto n2 = std::count(t.begin(), t.end(), 2u);
	CAPTURE(n1);
	CAPTURE(n2);
	CHECK(n2 > n1 * 3 / 2);
	CHECK(t == expectedOwners({ { 1, 1 }, { 2, 2 }, { 3, 1 } }));
}

TEST_CASE("views: disagreement is visible until the peer catches up; STOP peers do not count")
{
	FarmStateMachine m(machineConfig(1));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 1)));
	FarmPeerView stale;
	stale.state = FarmState::Up;
	stale.members = { 2 };
	stale.digest = 0x1234;
	must(m.handle(FarmEvent::heartbeat(2, stale, 2)));
	CHECK_FALSE(m.viewsAgree());

	FarmPeerView good = stale;
	good.members = { 1, 2 };
	good.digest = m.viewDigest();
	must(m.handle(FarmEvent::heartbeat(2, good, 3)));
	CHECK(m.viewsAgree());

	FarmPeerView stopped;
	stopped.state = FarmState::Stop;
	stopped.digest = 99;
	must(m.handle(FarmEvent::heartbeat(3, stopped, 4)));
	CHECK(m.viewsAgree());
	CHECK(m.advertisedMembers() == std::vector<NodeId>{ 1, 2 });
}

TEST_CASE("a node in WAIT/starting is not in anyone's UP set and owns nothing")
{
	Sim sim;
	sim.start(2);
	sim.feed(1, FarmEvent::admin(FarmEventKind::AdminStart, sim.now));
	sim.exchange();
	CHECK(label(sim[1]) == "WAIT/starting");
	CHECK(sim[2].advertisedMembers() == std::vector<NodeId>{ 2 });
	CHECK(sim[1].installedOwners() == std::vector<uint32_t>(kBuckets, 2));
	CHECK(sim[2].responder());
	CHECK_FALSE(sim[1].responder());
	CHECK(sim[1].viewsAgree());
}

constexpr uint64_t kT0 = 100000;

/* Two UP nodes (1 and 2, as seen by 1) with draining on, at kT0 with nothing draining. */
FarmStateMachine drainingPair(uint64_t drainMs)
{
	FarmMachineConfig c = machineConfig(1, { { 1, 1 }, { 2, 1 } });
	c.drainMs = drainMs;
	FarmStateMachine m = upWithPeer2(c);
	/* Node 1 had every bucket, so node 2's share drained from it: over by kT0. */
	REQUIRE(m.installedDrainFrom().empty() == (drainMs == 0));
	must(m.handle(FarmEvent::tick(kT0)));
	REQUIRE(m.installedDrainFrom().empty());
	return m;
}

FarmPeerView peerView(FarmState state, FarmPhase phase, std::vector<NodeId> members)
{
	FarmPeerView v;
	v.state = state;
	v.phase = phase;
	v.members = std::move(members);
	return v;
}

TEST_CASE("drain: buckets taken from a live node drain from it until drain_ms, then not")
{
	FarmStateMachine m = drainingPair(2000);
	auto two = expectedOwners({ { 1, 1 }, { 2, 1 } });
	REQUIRE(m.installedOwners() == two);
	CHECK(m.installedDrainFrom().empty());
	/* Node 2 leaves (admin stop): it advertises WAIT and no longer claims its buckets. */
	FarmStep s = must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Wait, FarmPhase::Leaving, { 1 }), kT0 + 1500)));
	const FarmAction *o = find(s, FarmActionKind::SetOwners);
	REQUIRE(o);
	CHECK(o->owners == std::vector<uint32_t>(kBuckets, 1));
	REQUIRE(o->drainFrom.size() == kBuckets);
	for (uint32_t b = 0; b < kBuckets; b++)
		CHECK(o->drainFrom[b] == (two[b] == 2 ? 2u : 0u));
	/* Heartbeats that change nothing do not restart the drain. */
	s = must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Wait, FarmPhase::Leaving, { 1 }), kT0 + 3000)));
	CHECK_FALSE(find(s, FarmActionKind::SetOwners));
	s = must(m.handle(FarmEvent::tick(kT0 + 3499)));
	CHECK_FALSE(find(s, FarmActionKind::SetOwners));
	s = must(m.handle(FarmEvent::tick(kT0 + 3500)));
	o = find(s, FarmActionKind::SetOwners);
	REQUIRE(o);
	CHECK(o->owners == std::vector<uint32_t>(kBuckets, 1));
	CHECK(o->drainFrom.empty());
	CHECK(m.installedDrainFrom().empty());
}

TEST_CASE("drain: ends at once when the old node stops or dies; a dead node's buckets never drain")
{
	SUBCASE("stops")
	{
		FarmStateMachine m = drainingPair(5000);
		must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Wait, FarmPhase::Leaving, { 1 }), kT0 + 1500)));
		REQUIRE_FALSE(m.installedDrainFrom().empty());
		FarmStep s = must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Stop, FarmPhase::Idle, { 1 }), kT0 + 1600)));
		const FarmAction *o = find(s, FarmActionKind::SetOwners);
		REQUIRE(o);
		CHECK(o->drainFrom.empty());
	}
	SUBCASE("dies while draining")
	{
		FarmStateMachine m = drainingPair(5000);
		must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Wait, FarmPhase::Leaving, { 1 }), kT0 + 1500)));
		REQUIRE_FALSE(m.installedDrainFrom().empty());
		must(m.handle(FarmEvent::peerLost(2, "dead", kT0 + 1600)));
		CHECK(m.installedDrainFrom().empty());
	}
	SUBCASE("dies UP: its clients go to the survivor at once, with nothing to drain")
	{
		FarmStateMachine m = drainingPair(5000);
		FarmStep s = must(m.handle(FarmEvent::peerLost(2, "dead", kT0 + 1500)));
		const FarmAction *o = find(s, FarmActionKind::SetOwners);
		REQUIRE(o);
		CHECK(o->owners == std::vector<uint32_t>(kBuckets, 1));
		CHECK(o->drainFrom.empty());
	}
}

TEST_CASE("drain: a node joining takes its share, whose connections stay on the node that had it")
{
	FarmMachineConfig c = machineConfig(1, { { 1, 1 }, { 2, 1 } });
	c.drainMs = 1000;
	FarmStateMachine m(c);
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1000)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 1000)));
	REQUIRE(m.installedOwners() == std::vector<uint32_t>(kBuckets, 1));
	/* Node 2 comes UP: node 1 releases node 2's share at once and drains it from itself. */
	FarmStep s = must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 1, 2 }), 2000)));
	auto two = expectedOwners({ { 1, 1 }, { 2, 1 } });
	const FarmAction *o = find(s, FarmActionKind::SetOwners);
	REQUIRE(o);
	CHECK(o->owners == two);
	REQUIRE(o->drainFrom.size() == kBuckets);
	for (uint32_t b = 0; b < kBuckets; b++)
		CHECK(o->drainFrom[b] == (two[b] == 2 ? 1u : 0u));

	/* And on node 2: its share arrives after a gap, draining from node 1 throughout. */
	FarmMachineConfig c2 = machineConfig(2, { { 1, 1 }, { 2, 1 } });
	c2.drainMs = 1000;
	FarmStateMachine n(c2);
	must(n.handle(FarmEvent::heartbeat(1, peerView(FarmState::Up, FarmPhase::Running, { 1 }), 1000)));
	must(n.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1000)));
	REQUIRE(n.installedOwners() == std::vector<uint32_t>(kBuckets, 1));
	must(n.handle(FarmEvent::scriptDone("start_both", true, 2000)));
	std::vector<uint32_t> gap = two;
	std::replace(gap.begin(), gap.end(), 2u, 0u);
	CHECK(n.installedOwners() == gap);
	for (uint32_t b = 0; b < kBuckets; b++)
		CHECK(n.installedDrainFrom()[b] == (two[b] == 2 ? 1u : 0u));
	must(n.handle(FarmEvent::heartbeat(1, peerView(FarmState::Up, FarmPhase::Running, { 1, 2 }), 2100)));
	CHECK(n.installedOwners() == two);
	for (uint32_t b = 0; b < kBuckets; b++)
		CHECK(n.installedDrainFrom()[b] == (two[b] == 2 ? 1u : 0u));
	must(n.handle(FarmEvent::tick(3100)));
	CHECK(n.installedDrainFrom().empty());
}

TEST_CASE("drain: an admin stop waits, after the handover, for its connections to close or drain_ms")
{
	SUBCASE("connections close")
	{
		FarmStateMachine m = drainingPair(4000);
		must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, kT0 + 2000)));
		REQUIRE(label(m) == "WAIT/leaving");
		CHECK_FALSE(m.drainingOut());
		/* Node 2 took everything: the handover is done, the VIP stays. */
		FarmStep s = must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 2 }), kT0 + 2100)));
		CHECK(label(m) == "WAIT/leaving");
		CHECK(m.drainingOut());
		CHECK_FALSE(find(s, FarmActionKind::TeardownVip));
		s = must(m.handle(FarmEvent::tick(kT0 + 2200, 3)));
		CHECK(label(m) == "WAIT/leaving");
		CHECK(m.localFlows() == 3);
		s = must(m.handle(FarmEvent::tick(kT0 + 2300, 0)));
		CHECK(label(m) == "WAIT/stopping");
		REQUIRE(s.transitions.size() == 1);
		CHECK_FALSE(s.transitions[0].loud);
		CHECK(s.transitions[0].cause.find("took this node's buckets; its connections closed") != std::string::npos);
		CHECK(find(s, FarmActionKind::TeardownVip));
		/* Tearing down drains nothing any more, before the VIP leaves lo. */
		const FarmAction *o = find(s, FarmActionKind::SetOwners);
		REQUIRE(o);
		CHECK(o->owners == std::vector<uint32_t>(kBuckets, 2));
		CHECK(o->drainFrom.empty());
		CHECK(indexOf(s, FarmActionKind::SetOwners) < indexOf(s, FarmActionKind::TeardownVip));
	}
	SUBCASE("drain_ms runs out")
	{
		FarmStateMachine m = drainingPair(4000);
		must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, kT0 + 2000)));
		must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 2 }), kT0 + 2100)));
		/* Counted from the release (kT0 + 2000), as its own table drains them. */
		must(m.handle(FarmEvent::tick(kT0 + 5999, 2)));
		CHECK(label(m) == "WAIT/leaving");
		REQUIRE_FALSE(m.installedDrainFrom().empty());
		FarmStep s = must(m.handle(FarmEvent::tick(kT0 + 6000, 2)));
		CHECK(label(m) == "WAIT/stopping");
		REQUIRE(s.transitions.size() == 1);
		CHECK(s.transitions[0].cause.find("2 connection(s) still open after 4000 ms") != std::string::npos);
	}
	SUBCASE("drain_ms 0: no wait")
	{
		FarmStateMachine m = drainingPair(0);
		must(m.handle(FarmEvent::admin(FarmEventKind::AdminStop, kT0 + 2000)));
		must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 2 }), kT0 + 2100)));
		CHECK(label(m) == "WAIT/stopping");
	}
}

TEST_CASE("drain: a bucket moved on from a node that died keeps draining from the one before")
{
	/* Node 1 of three; node 3 leaves, its buckets go to 1 and 2 and drain from 3; then node 2
	 * dies: the buckets 3 had and 2 took come to 1, still draining from 3. */
	FarmMachineConfig c = machineConfig(1);
	c.drainMs = 5000;
	FarmStateMachine m(c);
	must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 2, 3 }), 1000)));
	must(m.handle(FarmEvent::heartbeat(3, peerView(FarmState::Up, FarmPhase::Running, { 2, 3 }), 1000)));
	must(m.handle(FarmEvent::admin(FarmEventKind::AdminStart, 1000)));
	must(m.handle(FarmEvent::scriptDone("start_both", true, 1000)));
	must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 1, 2, 3 }), 1100)));
	must(m.handle(FarmEvent::heartbeat(3, peerView(FarmState::Up, FarmPhase::Running, { 1, 2, 3 }), 1100)));
	must(m.handle(FarmEvent::tick(kT0)));
	auto three = expectedOwners({ { 1, 1 }, { 2, 1 }, { 3, 1 } });
	REQUIRE(m.installedOwners() == three);
	REQUIRE(m.installedDrainFrom().empty());

	must(m.handle(FarmEvent::heartbeat(3, peerView(FarmState::Wait, FarmPhase::Leaving, { 1, 2 }), kT0 + 100)));
	must(m.handle(FarmEvent::heartbeat(2, peerView(FarmState::Up, FarmPhase::Running, { 1, 2 }), kT0 + 100)));
	auto two = expectedOwners({ { 1, 1 }, { 2, 1 } });
	REQUIRE(m.installedOwners() == two);
	REQUIRE(m.installedDrainFrom().size() == kBuckets);
	size_t moved = 0;
	for (uint32_t b = 0; b < kBuckets; b++) {
		CHECK(m.installedDrainFrom()[b] == (three[b] == 3 ? 3u : 0u));
		moved += three[b] == 3 && two[b] == 2;
	}
	REQUIRE(moved > 0);

	must(m.handle(FarmEvent::peerLost(2, "dead", kT0 + 200)));
	CHECK(m.installedOwners() == std::vector<uint32_t>(kBuckets, 1));
	REQUIRE(m.installedDrainFrom().size() == kBuckets);
	for (uint32_t b = 0; b < kBuckets; b++)
		CHECK(m.installedDrainFrom()[b] == (three[b] == 3 ? 3u : 0u));
	/* Node 3 tearing down: nothing drains from it any more. */
	must(m.handle(FarmEvent::heartbeat(3, peerView(FarmState::Wait, FarmPhase::Stopping, { 1 }), kT0 + 300)));
	CHECK(m.installedDrainFrom().empty());
}
