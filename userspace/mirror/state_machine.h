/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The mirror module's state machine: pure and deterministic (etcd-raft style).
 * Events in, actions + transitions out; no I/O, no clock, no logging. The
 * driver executes the actions, feeds back the results and logs the transitions.
 */
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/result.h"
#include "mirror/generation.h"

namespace sk {

enum class MirrorState : uint8_t { Stop, Wait, Alone, Prim, Second };

/*
 * Sub-state. Each phase belongs to exactly one state (see phaseBelongsTo()),
 * except Starting/Running/Stopping which are shared by ALONE and PRIM: ALONE
 * vs PRIM says whether the peer is in sync, the phase says where the app is.
 */
enum class MirrorPhase : uint8_t {
	Idle,		/* STOP */
	WaitPeer,	/* WAIT: started, waiting for the peer's heartbeat (or the startup timeout) */
	WaitWitness,	/* WAIT: peer lost, witness probe in flight */
	NotCurrent,	/* WAIT: data not known to be current: needs the peer, or primforce */
	Isolated,	/* WAIT: peer lost and witness unreachable: maybe this node is cut off */
	SplitBrain,	/* WAIT: divergent data; waiting for the policy's winner or an admin */
	Failed,		/* WAIT: start_prim/checker failures exhausted the retries */
	Starting,	/* ALONE/PRIM: VIP added, start_prim running */
	Running,	/* ALONE/PRIM: app up */
	Stopping,	/* ALONE/PRIM: stop_prim running, VIP still held */
	Resyncing,	/* SECOND: catching up (data inconsistent until ResyncDone) */
	InSync,		/* SECOND: has every write the primary acknowledged */
	Disconnected,	/* SECOND: stream dropped while in sync; still current until the peer moves on */
	Handover,	/* SECOND: swap in progress, app stopped here, waiting for the peer to start it */
	Held,		/* WAIT: a checker with action wait failed; resumes when it clears (last: the
			 * values travel in heartbeats) */
};

const char *stateName(MirrorState state);	/* "STOP", "WAIT", ... */
const char *phaseName(MirrorPhase phase);	/* "idle", "wait-peer", ... */
/* "PRIM/running", the form used in status output, logs and transcripts. */
std::string stateLabel(MirrorState state, MirrorPhase phase);
bool isServing(MirrorState state);		/* ALONE or PRIM: may hold the VIP */
bool phaseBelongsTo(MirrorPhase phase, MirrorState state);

/* What each node tells the other in its heartbeats (the driver serialises it). */
struct PeerInfo {
	MirrorState state = MirrorState::Stop;
	MirrorPhase phase = MirrorPhase::Idle;
	Generation generation;
	uint64_t incarnation = 0;	/* changes each time the peer's skd starts */
	int resyncPercent = 0;		/* meaningful while SECOND/resyncing */
	uint64_t servingMs = 0;		/* how long it has been serving; 0 when not serving */
	bool swapRequested = false;	/* an admin ran `swap` on the SECOND */
	bool secondOnly = false;	/* started with `second`: never serves on its own */
};

struct MirrorConfig {
	std::string node;		/* this node's name */
	std::string peer;		/* the other node's name */
	bool witness = false;		/* a split-brain witness is configured */
	SplitBrainPolicy splitBrain = SplitBrainPolicy::Manual;
	std::string defaultPrim;	/* preferred node; empty: none */
	bool autoSwapBack = false;	/* swap back to defaultPrim once it is in sync */
	uint32_t startRetries = 2;	/* start_prim / checker restarts before giving up */
	uint64_t startupWaitMs = 30000;	/* after start, wait this long for the peer before deciding alone */
	uint64_t replRetryMs = 2000;	/* min delay between replication target (re)starts */
	/*
	 * With a witness: after a successful probe, wait this long before taking over,
	 * so a primary that lost us at the same moment has had the time to find the
	 * witness unreachable and drop the VIP (witness timeout + 2 heartbeat intervals).
	 */
	uint64_t fenceMs = 0;

	/* Fills the fields from a module's config; `node` must be one of module.nodes. */
	static Result<MirrorConfig> fromModule(const ModuleConfig &module, const std::string &node);
};

enum class MirrorEventKind : uint8_t {
	AdminStart, AdminStop, AdminPrim, AdminSecond, AdminSwap, AdminPrimforce, AdminRestart,
	PeerHeartbeat,		/* peer */
	PeerLost,		/* all heartbeats lost */
	ScriptDone,		/* script, ok */
	ResyncProgress,		/* percent */
	ResyncDone,
	ResyncFailed,		/* reason */
	ReplicationLost,	/* reason */
	WitnessResult,		/* ok = reachable */
	CheckerFailed,		/* checker, reason = checker name */
	CheckerCleared,		/* reason = checker name: every wait checker is ok again */
	Tick,
};

const char *eventName(MirrorEventKind kind);

struct MirrorEvent {
	MirrorEventKind kind = MirrorEventKind::Tick;
	uint64_t nowMs = 0;		/* monotonic; every event carries it */
	PeerInfo peer;
	std::string script;
	bool ok = false;
	int percent = 0;
	CheckerAction checker = CheckerAction::Restart;
	std::string reason;

	static MirrorEvent admin(MirrorEventKind kind, uint64_t nowMs);
	static MirrorEvent heartbeat(const PeerInfo &peer, uint64_t nowMs);
	static MirrorEvent scriptDone(const std::string &script, bool ok, uint64_t nowMs);
	static MirrorEvent witness(bool reachable, uint64_t nowMs);
	static MirrorEvent simple(MirrorEventKind kind, uint64_t nowMs, std::string reason = {});
};

/*
 * What the driver must do for each action, in the order given (an action may
 * rely on the previous ones having completed), and what it feeds back:
 *
 *  PersistGeneration      GenerationStore::save(generation) before executing any later
 *                         action. If it fails the driver must stop the module
 *                         (AdminStop): acting on an unpersisted generation is unsafe.
 *  StartDirtyTracking     record every change from now on (per-file dirty ranges and
 *                         namespace ops, crash-safe) against generation.current, keeping
 *                         what is already recorded: a later peer resyncs from it.
 *  StopDirtyTracking      the peer is in sync: the dirty log may be cleared.
 *  StartReplicationSource serve the replicated dirs as source: accept the peer's target
 *                         (again after each drop), resync it, stream live ops. Report
 *                         ReplicationLost when an established stream drops. Durable writes
 *                         blocked on the lost peer are released only after the driver has
 *                         executed the actions of the resulting step: a new generation with
 *                         dirty tracking, or (witness configured) nothing until the
 *                         WitnessResult step decides between ALONE and stopping.
 *  StartReplicationTarget connect to the peer as target and resync (resync: Partial =
 *                         dirty ranges since our generation plus our own dirty log, Full =
 *                         whole-tree compare; quarantine = keep our differing files in the
 *                         quarantine folder first: split brain loser). Feed ResyncProgress,
 *                         then ResyncDone once caught up (live stream continues), or
 *                         ResyncFailed / ReplicationLost. It does not reconnect by itself:
 *                         the machine issues a new StartReplicationTarget when it should.
 *  StopReplication        stop source or target (and the over-mount's forwarding).
 *  AddVip / RemoveVip     add/remove the module's VIPs (+ gratuitous ARP / NA on add).
 *  RunScript              run the hook script; feed ScriptDone{script, ok} when it exits
 *                         (timeout = failure). Exactly one script runs at a time.
 *  ProbeWitness           probe the witness; feed WitnessResult{ok = reachable}.
 *  SendHeartbeat          send localInfo() to the peer now (state changed).
 *  ReportSplitBrain       log at error level, raise the module's split-brain alert
 *                         (status, metrics) with details; winner = node whose data is kept
 *                         (empty: manual policy, an admin must choose).
 *
 * Witness: a reachability probe (ping/TCP). It is assumed to sit on the heartbeat path,
 * so at most one side of a partition reaches it; if both do, both serve and the split
 * brain is detected and reported when they meet again. The side that stops (isolated)
 * removes its VIP only after stop_prim: give the witness timeout on the taking-over side
 * enough margin.
 *
 * The driver also feeds: PeerHeartbeat for every authenticated heartbeat (also while
 * STOP, so a start decides on fresh data), PeerLost once all heartbeats have been silent
 * for the configured time (reason: free text), Tick about every heartbeat interval,
 * CheckerFailed{checker = the checker's configured action, reason = its name}, and the
 * Admin* commands from skctl. Each transition is logged by the driver with its cause
 * (logWarn when loud) under the module's "mirror" category. An accepted admin command
 * may produce no transition (stop queued behind start_prim, swap request on the SECOND).
 */
enum class MirrorActionKind : uint8_t {
	PersistGeneration, StartDirtyTracking, StopDirtyTracking, StartReplicationSource,
	StartReplicationTarget, StopReplication, AddVip, RemoveVip, RunScript, ProbeWitness,
	SendHeartbeat, ReportSplitBrain,
};

enum class ResyncMode : uint8_t { Partial, Full };

const char *actionName(MirrorActionKind kind);

struct MirrorAction {
	MirrorActionKind kind = MirrorActionKind::SendHeartbeat;
	std::string script;		/* RunScript */
	Generation generation;		/* PersistGeneration, StartDirtyTracking */
	ResyncMode resync = ResyncMode::Partial;	/* StartReplicationTarget */
	bool quarantine = false;	/* StartReplicationTarget */
	std::string winner;		/* ReportSplitBrain */
	std::string details;		/* ReportSplitBrain */
};

/* One-line rendering of an action, e.g. "run-script start_prim" (logs, transcripts). */
std::string describeAction(const MirrorAction &action);

struct MirrorTransition {
	MirrorState fromState;
	MirrorPhase fromPhase;
	MirrorState toState;
	MirrorPhase toPhase;
	std::string cause;
	bool loud = false;	/* log at warning/error level: forced or dangerous */
};

struct MirrorStep {
	std::vector<MirrorAction> actions;
	/* Usually zero or one; several when one event causes a chain (peer restarted, ...). */
	std::vector<MirrorTransition> transitions;
};

/* Hook scripts the machine runs. */
inline constexpr const char *kStartPrimScript = "start_prim";
inline constexpr const char *kStopPrimScript = "stop_prim";

class MirrorStateMachine
{
public:
	/* Returns fresh random 64-bit values (getrandom in the driver, a counter in tests). */
	using UuidSource = std::function<uint64_t()>;

	/* persisted: GenerationStore::load(); incarnation: unique per skd start. */
	MirrorStateMachine(MirrorConfig config, Generation persisted, uint64_t incarnation,
			   UuidSource uuids);

	/*
	 * Admin events refused in the current state return an Error (-EBUSY: not now,
	 * -EINVAL: never in this state) with a reason a user can act on, and change nothing.
	 * Other events always succeed (stale ones, e.g. a ScriptDone nobody waits for, are
	 * ignored).
	 */
	Result<MirrorStep> handle(const MirrorEvent &event);

	MirrorState state() const { return state_; }
	MirrorPhase phase() const { return phase_; }
	bool serving() const { return isServing(state_); }
	const Generation &generation() const { return gen_; }
	const MirrorConfig &config() const { return config_; }
	int resyncPercent() const { return percent_; }
	bool splitBrainDetected() const { return splitBrain_; }
	/* The heartbeat payload to send now. */
	PeerInfo localInfo(uint64_t nowMs) const;
	/* Last heartbeat from the peer, if it is currently up. */
	const std::optional<PeerInfo> &peer() const { return peer_; }

private:
	enum class StopIntent : uint8_t { None, Stop, Swap, GiveUp, Hold, SplitBrainLoser, Isolated, Restart };
	enum class ProbeIntent : uint8_t { None, TakeOver, KeepServing, Startup };

	Result<MirrorStep> handleAdmin(const MirrorEvent &event);
	Status adminStart(bool second);
	Status adminStop();
	Status adminPrim(bool force);
	Status adminSecond();
	Status adminSwap();
	Status adminRestart();

	void onHeartbeat(const PeerInfo &peer);
	void onPeerLost(const std::string &cause);
	void onScriptDone(const std::string &script, bool ok);
	void onWitness(bool reachable);
	void onResyncDone();
	void onResyncFailed(const std::string &reason);
	void onReplicationLost(const std::string &reason);
	void onChecker(CheckerAction action, const std::string &name);
	void onCheckerCleared(const std::string &name);
	void onTick();

	void reconcile(const PeerInfo &peer);
	void reconcileWaiting(const PeerInfo &peer, GenerationRelation rel);
	void reconcileSecond(const PeerInfo &peer, GenerationRelation rel);
	void reconcileServing(const PeerInfo &peer, GenerationRelation rel);
	void onDivergence(const PeerInfo &peer);
	std::optional<bool> splitBrainWinner(const PeerInfo &peer) const;
	bool preferredOver(const PeerInfo &peer) const;
	bool consistent() const { return gen_.inSync || gen_.wasPrimary; }
	bool canStartTarget() const;

	void become(MirrorState state, MirrorPhase phase, std::string cause, bool loud = false);
	void emit(MirrorAction action);
	void emit(MirrorActionKind kind);
	void persist();
	void startServing(std::string cause, bool loud = false);
	void rotateToAlone(std::string cause);
	void beginStop(StopIntent intent, std::string cause, bool loud = false);
	void finishStop(bool scriptOk);
	void becomeTarget(ResyncMode mode, bool quarantine, std::string cause);
	void probeWitness(ProbeIntent intent, MirrorState state, MirrorPhase phase, std::string cause);
	void runScript(const char *name);
	uint64_t freshUuid();
	std::string peerLabel(const PeerInfo &peer) const;

	MirrorConfig config_;
	Generation gen_;
	uint64_t incarnation_;
	UuidSource uuids_;

	MirrorState state_ = MirrorState::Stop;
	MirrorPhase phase_ = MirrorPhase::Idle;
	std::optional<PeerInfo> peer_;		/* set while the peer is up */
	uint64_t lastPeerIncarnation_ = 0;
	uint64_t nowMs_ = 0;
	uint64_t waitSinceMs_ = 0;		/* WAIT/wait-peer: startup timeout base */
	uint64_t fenceUntilMs_ = 0;		/* WAIT/wait-witness: take over at this time (0: not fencing) */
	std::string fenceCause_;
	uint64_t servingSinceMs_ = 0;
	uint64_t targetStartMs_ = 0;
	bool targetStarted_ = false;		/* a target has ever been started (retry pacing) */
	bool targetActive_ = false;		/* replication target running (SECOND) */
	uint64_t resyncSource_ = 0;		/* peer UUID we are resyncing to */
	int percent_ = 0;
	bool noAutoPrim_ = false;		/* started with `second`: never serve on its own */
	bool swapRequested_ = false;
	bool splitBrain_ = false;		/* divergence seen and reported */
	bool divergenceSeen_ = false;		/* during the current reconcile() */
	std::string pendingScript_;
	uint32_t startAttempts_ = 0;
	uint32_t checkerRestarts_ = 0;
	StopIntent stopIntent_ = StopIntent::None;
	StopIntent queuedStop_ = StopIntent::None;	/* stop asked while start_prim runs */
	std::string queuedCause_;
	enum class Repl : uint8_t { None, Source, Target } repl_ = Repl::None;
	ProbeIntent probe_ = ProbeIntent::None;

	MirrorStep *step_ = nullptr;		/* the step being built by handle() */
};

} /* namespace sk */
