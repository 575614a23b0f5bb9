/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The farm module's state machine: pure and deterministic (etcd-raft style).
 * Events in (admin, peer heartbeats, peer loss, scripts, checkers, ticks),
 * actions + transitions out; no I/O, no clock, no logging.
 */
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "cluster/wire.h"
#include "core/result.h"

namespace sk {

/* Values go on the wire (HeartbeatPayload.state / subState): never renumber. */
enum class FarmState : uint8_t { Stop = 0, Wait = 1, Up = 2 };

enum class FarmPhase : uint8_t {
	Idle = 0,	/* STOP */
	Starting = 1,	/* WAIT: filter loaded (dropping), VIP local, start_both running */
	Running = 2,	/* UP: owns its share of buckets */
	Leaving = 3,	/* WAIT: admin stop; buckets released, app up until the others took them */
	Stopping = 4,	/* WAIT: filter gone, stop_both running */
};

const char *farmStateName(FarmState state);	/* "STOP", "WAIT", "UP" */
const char *farmPhaseName(FarmPhase phase);	/* "idle", "starting", ... */
std::string farmStateLabel(FarmState state, FarmPhase phase);	/* "WAIT/leaving" */

struct FarmMachineConfig {
	NodeId self = 0;
	std::map<NodeId, uint32_t> weights;	/* every node of the module; absent ids weigh 1 */
	uint32_t buckets = 1024;
	uint32_t seed = 0;
	/* Bound on the admin-stop handover: after it the node leaves even without confirmation. */
	uint64_t leaveTimeoutMs = 3000;
	/*
	 * How long a bucket that moved between two live nodes keeps its TCP connections on
	 * the node that had it (struct sk_farm_owner), and how long a leaving node waits at
	 * most for its connections to close after the handover. 0: no draining.
	 */
	uint64_t drainMs = 0;
};

/* What a peer last said about itself and its view. */
struct FarmPeerView {
	FarmState state = FarmState::Stop;
	FarmPhase phase = FarmPhase::Idle;
	std::vector<NodeId> members;	/* the UP set it sees (sorted) */
	uint64_t digest = 0;		/* digest of its owner table */
	bool alive = false;
};

enum class FarmEventKind {
	AdminStart,
	AdminStop,
	AdminRestart,
	PeerHeartbeat,
	PeerLost,
	ScriptDone,
	CheckerFailed,
	Tick,
};
const char *farmEventName(FarmEventKind kind);

struct FarmEvent {
	FarmEventKind kind = FarmEventKind::Tick;
	uint64_t nowMs = 0;
	NodeId peer = 0;		/* PeerHeartbeat, PeerLost */
	FarmPeerView view;		/* PeerHeartbeat (alive is implied) */
	std::string script;		/* ScriptDone */
	bool ok = true;			/* ScriptDone */
	std::string detail;		/* PeerLost reason, CheckerFailed name */
	int64_t localFlows = -1;	/* Tick: this node's open TCP connections to a VIP; -1: not counted */

	static FarmEvent admin(FarmEventKind kind, uint64_t nowMs);
	static FarmEvent heartbeat(NodeId peer, const FarmPeerView &view, uint64_t nowMs);
	static FarmEvent peerLost(NodeId peer, const std::string &why, uint64_t nowMs);
	static FarmEvent scriptDone(const std::string &script, bool ok, uint64_t nowMs);
	static FarmEvent checkerFailed(const std::string &name, uint64_t nowMs);
	static FarmEvent tick(uint64_t nowMs, int64_t localFlows = -1);
};

enum class FarmActionKind {
	RunScript,		/* script: start_both / stop_both; reports back with ScriptDone */
	LoadFilter,		/* XDP filter attached; until SetOwners it drops all VIP traffic */
	UnloadFilter,		/* detach, remove pins */
	SetupVip,		/* VIP on lo, arp_ignore/arp_announce, promiscuous farm interface */
	TeardownVip,		/* undo SetupVip */
	SetOwners,		/* owners + digest: install atomically */
	BecomeResponder,	/* answer ARP/ND for the VIP with the virtual MAC */
	StopResponder,
	Announce,		/* gratuitous ARP / unsolicited NA with the virtual MAC */
	Publish,		/* heartbeat content changed: send now */
};
const char *farmActionName(FarmActionKind kind);

struct FarmAction {
	FarmActionKind kind;
	std::string script;
	std::vector<uint32_t> owners;
	uint64_t digest = 0;
	std::vector<NodeId> upSet;
	/* SetOwners: per bucket, the node whose connections drain (0: none); empty: none at all. */
	std::vector<uint32_t> drainFrom;
};
std::string describeFarmAction(const FarmAction &action);

struct FarmTransition {
	FarmState fromState;
	FarmPhase fromPhase;
	FarmState toState;
	FarmPhase toPhase;
	std::string cause;
	bool loud = false;
};

struct FarmStep {
	std::vector<FarmAction> actions;
	std::vector<FarmTransition> transitions;
};

/*
 * Invariants:
 *  - the UP set is this node (when UP) plus every alive peer whose last heartbeat said UP;
 *    owners are farmAssignBuckets(seed, buckets, sorted UP set with weights), recomputed
 *    (and a SetOwners emitted) whenever the UP set changes while the filter is loaded;
 *  - the installed table is that assignment, except that this node takes a bucket only
 *    once no alive UP peer claims it any more (by that peer's advertised view): buckets
 *    are released at once and taken one heartbeat later, so two nodes never serve one
 *    bucket (a gap costs a SYN retransmission; an overlap resets connections);
 *  - Leaving (admin stop/restart) releases every bucket at once and advertises WAIT; the
 *    VIP, filter and app stay until every alive UP peer's view excludes this node (they
 *    have taken over), or leaveTimeoutMs passed; then, with drainMs, until this node's
 *    connections to the VIP closed (Tick's localFlows is 0) or drainMs passed since the
 *    release (as long as its own table drains them from it);
 *  - a bucket that moves from a node that stays alive and started (this one included)
 *    drains for drainMs: the installed table names that node in drainFrom, so its TCP
 *    connections keep going to it; it stops draining early when that node stops, tears
 *    down or dies (moved on from a node gone meanwhile, it keeps its earlier drain);
 *  - the responder is the lowest id of the UP set, and only ever a node that is UP.
 */
class FarmStateMachine
{
public:
	explicit FarmStateMachine(FarmMachineConfig config);

	/* Refusals: -EALREADY (already started / stopped), -EINPROGRESS (stop under way). */
	Result<FarmStep> handle(const FarmEvent &event);

	FarmState state() const { return state_; }
	FarmPhase phase() const { return phase_; }
	bool serving() const { return state_ == FarmState::Up; }
	const FarmMachineConfig &config() const { return config_; }

	/* The UP set this node advertises (without itself while Leaving). */
	std::vector<NodeId> advertisedMembers() const;
	/* Owner table of the advertised view, and its digest (what heartbeats carry). */
	const std::vector<uint32_t> &viewOwners() const { return viewOwners_; }
	uint64_t viewDigest() const { return viewDigest_; }
	/* The table the data plane holds: the view, minus buckets a peer still claims. */
	const std::vector<uint32_t> &installedOwners() const { return installed_; }
	/* The drainFrom of the installed table (empty: none). */
	const std::vector<uint32_t> &installedDrainFrom() const { return installedDrain_; }
	/* Leaving, handed over, waiting for this node's connections to close. */
	bool drainingOut() const { return phase_ == FarmPhase::Leaving && handedOver_; }
	int64_t localFlows() const { return localFlows_; }
	bool filterLoaded() const { return filterLoaded_; }
	bool responder() const { return responder_; }
	/* Lowest id of the advertised UP set; 0 when empty. */
	NodeId responderNode() const;
	/* Every alive, started peer reports the same digest as this node. */
	bool viewsAgree() const;
	const std::map<NodeId, FarmPeerView> &peers() const { return peers_; }
	bool restartPending() const { return restartPending_; }

private:
	void become(FarmState state, FarmPhase phase, const std::string &cause, bool loud = false);
	void act(FarmActionKind kind, const std::string &script = {});
	void recompute();
	/* drainFrom for table, the one about to be installed (updates the drain bookkeeping). */
	std::vector<uint32_t> drainTable(const std::vector<uint32_t> &table);
	/* A node whose connections are worth draining: alive and started (this one: filter loaded). */
	bool drainSource(NodeId id) const;
	void startSequence();
	void beginLeave(const std::string &cause);
	void maybeFinishLeave(bool timedOut);
	void teardownAndStop(const std::string &cause, bool loud);
	void updateResponder();
	std::vector<NodeId> upSet(bool includeSelf) const;
	Status assign(const std::vector<NodeId> &up, std::vector<uint32_t> *owners) const;
	/* The table a peer has installed, per its advertised members (cached). */
	const std::vector<uint32_t> &claimedBy(NodeId peer, const std::vector<NodeId> &members);

	FarmMachineConfig config_;
	FarmState state_ = FarmState::Stop;
	FarmPhase phase_ = FarmPhase::Idle;
	std::map<NodeId, FarmPeerView> peers_;
	std::map<NodeId, std::pair<std::vector<NodeId>, std::vector<uint32_t>>> claims_;
	std::vector<uint32_t> viewOwners_;
	uint64_t viewDigest_ = 0;
	std::vector<uint32_t> installed_;
	/* Per bucket: the last node that owned it, the node it drains from and until when. */
	std::vector<uint32_t> lastOwner_;
	std::vector<uint32_t> drainFrom_;
	std::vector<uint64_t> drainUntil_;
	std::vector<uint32_t> installedDrain_;
	uint64_t nextDrainEndMs_ = UINT64_MAX;
	/* Leaving: handover done (or timed out), the cause, and the drain that follows. */
	bool handedOver_ = false;
	bool handoverLoud_ = false;
	std::string handoverCause_;
	uint64_t drainDeadlineMs_ = 0;
	int64_t localFlows_ = -1;
	bool filterLoaded_ = false;
	bool vipSetUp_ = false;
	bool responder_ = false;
	bool restartPending_ = false;
	uint64_t leaveDeadlineMs_ = 0;
	uint64_t nowMs_ = 0;
	FarmStep *step_ = nullptr;	/* the step being built by handle() */
};

} /* namespace sk */
