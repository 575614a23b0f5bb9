/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Mirror state machine: the rules deciding which of the two nodes serves, from
 * heartbeats, data generations, the witness and admin commands. Pure: see the header.
 */
#include "mirror/state_machine.h"

#include <algorithm>
#include <cassert>
#include <tuple>

#include <fmt/format.h>

namespace sk {

namespace {

/* The peer serves and is not on its way out: a node may resync from it. */
bool isSource(const PeerInfo &p)
{
	return isServing(p.state) && p.phase != MirrorPhase::Stopping;
}

} /* namespace */

const char *stateName(MirrorState state)
{
	switch (state) {
	case MirrorState::Stop: return "STOP";
	case MirrorState::Wait: return "WAIT";
	case MirrorState::Alone: return "ALONE";
	case MirrorState::Prim: return "PRIM";
	case MirrorState::Second: return "SECOND";
	}
	return "?";
}

const char *phaseName(MirrorPhase phase)
{
	switch (phase) {
	case MirrorPhase::Idle: return "idle";
	case MirrorPhase::WaitPeer: return "wait-peer";
	case MirrorPhase::WaitWitness: return "wait-witness";
	case MirrorPhase::NotCurrent: return "not-current";
	case MirrorPhase::Isolated: return "isolated";
	case MirrorPhase::SplitBrain: return "split-brain";
	case MirrorPhase::Failed: return "failed";
	case MirrorPhase::Held: return "checker-hold";
	case MirrorPhase::Starting: return "starting";
	case MirrorPhase::Running: return "running";
	case MirrorPhase::Stopping: return "stopping";
	case MirrorPhase::Resyncing: return "resyncing";
	case MirrorPhase::InSync: return "in-sync";
	case MirrorPhase::Disconnected: return "disconnected";
	case MirrorPhase::Handover: return "handover";
	}
	return "?";
}

std::string stateLabel(MirrorState state, MirrorPhase phase)
{
	return fmt::format("{}/{}", stateName(state), phaseName(phase));
}

bool isServing(MirrorState state)
{
	return state == MirrorState::Alone || state == MirrorState::Prim;
}

bool phaseBelongsTo(MirrorPhase phase, MirrorState state)
{
	switch (phase) {
	case MirrorPhase::Idle:
		return state == MirrorState::Stop;
	case MirrorPhase::WaitPeer:
	case MirrorPhase::WaitWitness:
	case MirrorPhase::NotCurrent:
	case MirrorPhase::Isolated:
	case MirrorPhase::SplitBrain:
	case MirrorPhase::Failed:
	case MirrorPhase::Held:
		return state == MirrorState::Wait;
	case MirrorPhase::Starting:
	case MirrorPhase::Running:
	case MirrorPhase::Stopping:
		return isServing(state);
	case MirrorPhase::Resyncing:
	case MirrorPhase::InSync:
	case MirrorPhase::Disconnected:
	case MirrorPhase::Handover:
		return state == MirrorState::Second;
	}
	return false;
}

const char *eventName(MirrorEventKind kind)
{
	switch (kind) {
	case MirrorEventKind::AdminStart: return "admin-start";
	case MirrorEventKind::AdminStop: return "admin-stop";
	case MirrorEventKind::AdminPrim: return "admin-prim";
	case MirrorEventKind::AdminSecond: return "admin-second";
	case MirrorEventKind::AdminSwap: return "admin-swap";
	case MirrorEventKind::AdminPrimforce: return "admin-primforce";
	case MirrorEventKind::AdminRestart: return "admin-restart";
	case MirrorEventKind::PeerHeartbeat: return "peer-heartbeat";
	case MirrorEventKind::PeerLost: return "peer-lost";
	case MirrorEventKind::ScriptDone: return "script-done";
	case MirrorEventKind::ResyncProgress: return "resync-progress";
	case MirrorEventKind::ResyncDone: return "resync-done";
	case MirrorEventKind::ResyncFailed: return "resync-failed";
	case MirrorEventKind::ReplicationLost: return "replication-lost";
	case MirrorEventKind::WitnessResult: return "witness-result";
	case MirrorEventKind::CheckerFailed: return "checker-failed";
	case MirrorEventKind::CheckerCleared: return "checker-cleared";
	case MirrorEventKind::Tick: return "tick";
	}
	return "?";
}

const char *actionName(MirrorActionKind kind)
{
	switch (kind) {
	case MirrorActionKind::PersistGeneration: return "persist";
	case MirrorActionKind::StartDirtyTracking: return "start-dirty-tracking";
	case MirrorActionKind::StopDirtyTracking: return "stop-dirty-tracking";
	case MirrorActionKind::StartReplicationSource: return "start-replication-source";
	case MirrorActionKind::StartReplicationTarget: return "start-replication-target";
	case MirrorActionKind::StopReplication: return "stop-replication";
	case MirrorActionKind::AddVip: return "add-vip";
	case MirrorActionKind::RemoveVip: return "remove-vip";
	case MirrorActionKind::RunScript: return "run-script";
	case MirrorActionKind::ProbeWitness: return "probe-witness";
	case MirrorActionKind::SendHeartbeat: return "send-heartbeat";
	case MirrorActionKind::ReportSplitBrain: return "report-split-brain";
	}
	return "?";
}

std::string describeAction(const MirrorAction &a)
{
	switch (a.kind) {
	case MirrorActionKind::PersistGeneration:
		return fmt::format("persist {}", formatGeneration(a.generation));
	case MirrorActionKind::StartDirtyTracking:
		return fmt::format("start-dirty-tracking since={:x}", a.generation.current);
	case MirrorActionKind::StartReplicationTarget:
		return fmt::format("start-replication-target {}{}",
			a.resync == ResyncMode::Full ? "full" : "partial", a.quarantine ? " quarantine" : "");
	case MirrorActionKind::RunScript:
		return fmt::format("run-script {}", a.script);
	case MirrorActionKind::ReportSplitBrain:
		return fmt::format("report-split-brain winner={}: {}",
			a.winner.empty() ? "none" : a.winner, a.details);
	default:
		return actionName(a.kind);
	}
}

Result<MirrorConfig> MirrorConfig::fromModule(const ModuleConfig &module, const std::string &node)
{
	if (module.type != ModuleType::Mirror)
		return makeError(-EINVAL, fmt::format("module {} is not a mirror module", module.name));
	if (module.nodes.size() != 2)
		return makeError(-EINVAL, fmt::format("mirror module {} needs exactly 2 nodes, has {}",
			module.name, module.nodes.size()));
	auto it = std::find(module.nodes.begin(), module.nodes.end(), node);
	if (it == module.nodes.end())
		return makeError(-EINVAL, fmt::format("node {} is not a node of module {}", node, module.name));
	MirrorConfig c;
	c.node = node;
	c.peer = module.nodes[it == module.nodes.begin() ? 1 : 0];
	c.witness = module.witness.enabled;
	c.splitBrain = module.failover.splitBrain;
	c.defaultPrim = module.failover.defaultPrim;
	c.autoSwapBack = module.failover.autoSwapBack;
	c.startRetries = module.failover.maxLoop;
	/* Give a rebooting peer the time to come back: 10 heartbeat timeouts. */
	c.startupWaitMs = uint64_t{ module.heartbeat.timeoutMs } * 10;
	if (module.witness.enabled)
		c.fenceMs = uint64_t{ module.witness.timeoutMs } + 2 * uint64_t{ module.heartbeat.intervalMs };
	return c;
}

MirrorEvent MirrorEvent::admin(MirrorEventKind kind, uint64_t nowMs)
{
	MirrorEvent e;
	e.kind = kind;
	e.nowMs = nowMs;
	return e;
}

MirrorEvent MirrorEvent::heartbeat(const PeerInfo &peer, uint64_t nowMs)
{
	MirrorEvent e = admin(MirrorEventKind::PeerHeartbeat, nowMs);
	e.peer = peer;
	return e;
}

MirrorEvent MirrorEvent::scriptDone(const std::string &script, bool ok, uint64_t nowMs)
{
	MirrorEvent e = admin(MirrorEventKind::ScriptDone, nowMs);
	e.script = script;
	e.ok = ok;
	return e;
}

MirrorEvent MirrorEvent::witness(bool reachable, uint64_t nowMs)
{
	MirrorEvent e = admin(MirrorEventKind::WitnessResult, nowMs);
	e.ok = reachable;
	return e;
}

MirrorEvent MirrorEvent::simple(MirrorEventKind kind, uint64_t nowMs, std::string reason)
{
	MirrorEvent e = admin(kind, nowMs);
	e.reason = std::move(reason);
	return e;
}

MirrorStateMachine::MirrorStateMachine(MirrorConfig config, Generation persisted,
				       uint64_t incarnation, UuidSource uuids)
	: config_(std::move(config)), gen_(std::move(persisted)), incarnation_(incarnation),
	  uuids_(std::move(uuids))
{
}

PeerInfo MirrorStateMachine::localInfo(uint64_t nowMs) const
{
	PeerInfo p;
	p.state = state_;
	p.phase = phase_;
	p.generation = gen_;
	p.incarnation = incarnation_;
	p.resyncPercent = percent_;
	p.servingMs = serving() && nowMs > servingSinceMs_ ? nowMs - servingSinceMs_ : 0;
	p.swapRequested = swapRequested_;
	p.secondOnly = noAutoPrim_;
	return p;
}

Result<MirrorStep> MirrorStateMachine::handle(const MirrorEvent &event)
{
	MirrorStep step;
	step_ = &step;
	/* Time never goes back, even if a driver feeds events slightly out of order. */
	nowMs_ = std::max(nowMs_, event.nowMs);

	switch (event.kind) {
	case MirrorEventKind::AdminStart:
	case MirrorEventKind::AdminStop:
	case MirrorEventKind::AdminPrim:
	case MirrorEventKind::AdminSecond:
	case MirrorEventKind::AdminSwap:
	case MirrorEventKind::AdminPrimforce:
	case MirrorEventKind::AdminRestart: {
		Result<MirrorStep> r = handleAdmin(event);
		if (!r.ok()) {
			step_ = nullptr;
			return r;
		}
		break;
	}
	case MirrorEventKind::PeerHeartbeat:
		onHeartbeat(event.peer);
		break;
	case MirrorEventKind::PeerLost:
		onPeerLost(event.reason.empty() ? fmt::format("peer {} lost", config_.peer) :
			fmt::format("peer {} lost ({})", config_.peer, event.reason));
		break;
	case MirrorEventKind::ScriptDone:
		onScriptDone(event.script, event.ok);
		break;
	case MirrorEventKind::ResyncProgress:
		if (state_ == MirrorState::Second && phase_ == MirrorPhase::Resyncing)
			percent_ = std::clamp(event.percent, 0, 99);
		break;
	case MirrorEventKind::ResyncDone:
		onResyncDone();
		break;
	case MirrorEventKind::ResyncFailed:
		onResyncFailed(event.reason);
		break;
	case MirrorEventKind::ReplicationLost:
		onReplicationLost(event.reason);
		break;
	case MirrorEventKind::WitnessResult:
		onWitness(event.ok);
		break;
	case MirrorEventKind::CheckerFailed:
		onChecker(event.checker, event.reason);
		break;
	case MirrorEventKind::CheckerCleared:
		onCheckerCleared(event.reason);
		break;
	case MirrorEventKind::Tick:
		onTick();
		break;
	}

	/* The peer decides from our heartbeat: tell it at once when the state moved. */
	if (!step.transitions.empty())
		if (std::none_of(step.actions.begin(), step.actions.end(), [](const MirrorAction &a) {
			    return a.kind == MirrorActionKind::SendHeartbeat;
		    }))
			emit(MirrorActionKind::SendHeartbeat);
	step_ = nullptr;
	return step;
}

/* ---------------------------------------------------------------- helpers */

void MirrorStateMachine::become(MirrorState state, MirrorPhase phase, std::string cause, bool loud)
{
	assert(phaseBelongsTo(phase, state));
	if (state == state_ && phase == phase_)
		return;
	step_->transitions.push_back({ state_, phase_, state, phase, std::move(cause), loud });
	if (isServing(state) && !isServing(state_))
		servingSinceMs_ = nowMs_;
	if (state == MirrorState::Wait && phase == MirrorPhase::WaitPeer)
		waitSinceMs_ = nowMs_;
	if (phase != MirrorPhase::InSync)
		swapRequested_ = false;
	if (phase != MirrorPhase::WaitWitness)
		fenceUntilMs_ = 0;
	state_ = state;
	phase_ = phase;
}

void MirrorStateMachine::emit(MirrorAction action)
{
	step_->actions.push_back(std::move(action));
}

void MirrorStateMachine::emit(MirrorActionKind kind)
{
	MirrorAction a;
	a.kind = kind;
	emit(std::move(a));
}

void MirrorStateMachine::persist()
{
	MirrorAction a;
	a.kind = MirrorActionKind::PersistGeneration;
	a.generation = gen_;
	emit(std::move(a));
}

void MirrorStateMachine::runScript(const char *name)
{
	pendingScript_ = name;
	MirrorAction a;
	a.kind = MirrorActionKind::RunScript;
	a.script = name;
	emit(std::move(a));
}

uint64_t MirrorStateMachine::freshUuid()
{
	/* 0 means "no data"; a reused UUID would make divergent data look identical. */
	for (;;) {
		uint64_t u = uuids_();
		if (u != 0 && u != gen_.current && !gen_.inHistory(u))
			return u;
	}
}

std::string MirrorStateMachine::peerLabel(const PeerInfo &peer) const
{
	return fmt::format("{} ({}, {})", config_.peer, stateLabel(peer.state, peer.phase),
		formatGeneration(peer.generation));
}

bool MirrorStateMachine::canStartTarget() const
{
	return !targetStarted_ || nowMs_ >= targetStartMs_ + config_.replRetryMs;
}

/*
 * Every path to serving goes through here: a fresh generation (the peer cannot
 * have it, so anything it holds is provably older or divergent), dirty tracking
 * from that generation, capture before the app starts, VIP before start_prim.
 */
void MirrorStateMachine::startServing(std::string cause, bool loud)
{
	if (repl_ != Repl::None)
		emit(MirrorActionKind::StopReplication);
	gen_.rotate(freshUuid());
	gen_.inSync = true;
	gen_.wasPrimary = true;
	targetActive_ = false;
	noAutoPrim_ = false;
	probe_ = ProbeIntent::None;
	stopIntent_ = StopIntent::None;
	queuedStop_ = StopIntent::None;
	startAttempts_ = 1;
	checkerRestarts_ = 0;
	percent_ = 0;
	become(MirrorState::Alone, MirrorPhase::Starting, std::move(cause), loud);
	persist();
	MirrorAction track;
	track.kind = MirrorActionKind::StartDirtyTracking;
	track.generation = gen_;
	emit(std::move(track));
	emit(MirrorActionKind::StartReplicationSource);
	repl_ = Repl::Source;
	emit(MirrorActionKind::AddVip);
	runScript(kStartPrimScript);
}

/* PRIM loses its in-sync peer: the peer keeps the old UUID, we move on. */
void MirrorStateMachine::rotateToAlone(std::string cause)
{
	gen_.rotate(freshUuid());
	gen_.inSync = true;
	gen_.wasPrimary = true;
	become(MirrorState::Alone, phase_, std::move(cause));
	persist();
	MirrorAction track;
	track.kind = MirrorActionKind::StartDirtyTracking;
	track.generation = gen_;
	emit(std::move(track));
}

void MirrorStateMachine::beginStop(StopIntent intent, std::string cause, bool loud)
{
	if (phase_ == MirrorPhase::Starting && !pendingScript_.empty()) {
		/* One script at a time: stop once start_prim has returned. Stop wins over the rest. */
		if (queuedStop_ != StopIntent::Stop) {
			queuedStop_ = intent;
			queuedCause_ = std::move(cause);
		}
		return;
	}
	if (phase_ == MirrorPhase::Stopping) {
		if (intent == StopIntent::Stop)
			stopIntent_ = StopIntent::Stop;
		return;
	}
	stopIntent_ = intent;
	become(state_, MirrorPhase::Stopping, std::move(cause), loud);
	/* Cut off from the witness: the peer may take over soon, so the VIP goes first. */
	if (intent == StopIntent::Isolated)
		emit(MirrorActionKind::RemoveVip);
	runScript(kStopPrimScript);
}

void MirrorStateMachine::finishStop(bool scriptOk)
{
	StopIntent intent = stopIntent_;
	stopIntent_ = StopIntent::None;
	std::string note = scriptOk ? "" : " (stop_prim failed)";

	if (intent == StopIntent::Restart) {
		become(state_, MirrorPhase::Starting,
			fmt::format("app restart: stop_prim done{}, running start_prim (attempt {})",
				note, startAttempts_));
		runScript(kStartPrimScript);
		return;
	}

	bool peerInSync = state_ == MirrorState::Prim;
	emit(MirrorActionKind::RemoveVip);
	if (intent == StopIntent::SplitBrainLoser) {
		becomeTarget(ResyncMode::Full, true, fmt::format("split brain: app stopped here{}; "
			"resyncing everything from {}, local changes kept in quarantine", note, config_.peer));
		return;
	}
	if (repl_ != Repl::None)
		emit(MirrorActionKind::StopReplication);
	repl_ = Repl::None;

	switch (intent) {
	case StopIntent::Swap:
		/* Our data equals the peer's only if it was in sync: else keep the claim. */
		if (peerInSync) {
			gen_.wasPrimary = false;
			persist();
		}
		become(MirrorState::Second, MirrorPhase::Handover, fmt::format(
			"swap: app stopped{} and VIP removed here; waiting for {} to start it", note, config_.peer));
		break;
	case StopIntent::GiveUp:
	case StopIntent::Hold:
		/* The in-sync peer may take over: this node must not claim to be current. */
		if (peerInSync) {
			gen_.wasPrimary = false;
			persist();
		}
		if (intent == StopIntent::GiveUp)
			become(MirrorState::Wait, MirrorPhase::Failed, fmt::format(
				"gave up the primary role{}{}", note, peerInSync ?
				fmt::format("; in-sync peer {} may take over", config_.peer) :
				std::string("; no in-sync peer: the module is down until an admin acts")), true);
		else
			become(MirrorState::Wait, MirrorPhase::Held, fmt::format(
				"app stopped{}; waiting until the checker is ok again{}", note, peerInSync ?
				fmt::format(" (in-sync peer {} may take over meanwhile)", config_.peer) :
				std::string(", then this node serves again")), true);
		break;
	case StopIntent::Isolated:
		become(MirrorState::Wait, MirrorPhase::Isolated, fmt::format(
			"stopped serving{}: peer {} lost and witness unreachable", note, config_.peer), true);
		break;
	case StopIntent::Stop:
	default:
		if (peerInSync) {
			/* The in-sync peer takes over: this node alone must not claim to be current. */
			gen_.wasPrimary = false;
			persist();
		}
		become(MirrorState::Stop, MirrorPhase::Idle, fmt::format("admin stop: app stopped{}, "
			"VIP removed{}", note, peerInSync ?
			fmt::format("; in-sync peer {} takes over", config_.peer) : std::string()));
		break;
	}
}

/* Data becomes inconsistent from the first resync write: say so on disk first. */
void MirrorStateMachine::becomeTarget(ResyncMode mode, bool quarantine, std::string cause)
{
	if (repl_ != Repl::None)
		emit(MirrorActionKind::StopReplication);
	gen_.inSync = false;
	gen_.wasPrimary = false;
	persist();
	resyncSource_ = peer_ ? peer_->generation.current : 0;
	percent_ = 0;
	targetActive_ = true;
	targetStarted_ = true;
	targetStartMs_ = nowMs_;
	repl_ = Repl::Target;
	probe_ = ProbeIntent::None;
	/* Quarantine means split brain: log it loudly. Re-issuing in Resyncing logs nothing. */
	become(MirrorState::Second, MirrorPhase::Resyncing, std::move(cause), quarantine);
	MirrorAction a;
	a.kind = MirrorActionKind::StartReplicationTarget;
	a.resync = mode;
	a.quarantine = quarantine;
	emit(std::move(a));
}

void MirrorStateMachine::probeWitness(ProbeIntent intent, MirrorState state, MirrorPhase phase,
				      std::string cause)
{
	probe_ = intent;
	become(state, phase, std::move(cause));
	emit(MirrorActionKind::ProbeWitness);
}

/*
 * Who should serve when neither does and both hold the same generation. Both
 * nodes evaluate the same total order from the same facts, so exactly one wins.
 */
bool MirrorStateMachine::preferredOver(const PeerInfo &peer) const
{
	auto rank = [this](bool canServe, const Generation &g, const std::string &name) {
		return std::make_tuple(canServe, g.inSync || g.wasPrimary, g.wasPrimary,
			!config_.defaultPrim.empty() && config_.defaultPrim == name,
			/* smaller name wins the last tie */ name < (name == config_.node ? config_.peer : config_.node));
	};
	bool peerCanServe = (peer.state == MirrorState::Wait || peer.state == MirrorState::Second) &&
		peer.phase != MirrorPhase::Failed && peer.phase != MirrorPhase::Held && !peer.secondOnly;
	bool meCanServe = phase_ != MirrorPhase::Failed && phase_ != MirrorPhase::Held && !noAutoPrim_;
	return rank(meCanServe, gen_, config_.node) > rank(peerCanServe, peer.generation, config_.peer);
}

/* nullopt: no automatic winner (manual policy). */
std::optional<bool> MirrorStateMachine::splitBrainWinner(const PeerInfo &peer) const
{
	switch (config_.splitBrain) {
	case SplitBrainPolicy::Manual:
		return std::nullopt;
	case SplitBrainPolicy::DefaultPrim:
		if (config_.defaultPrim.empty())
			return std::nullopt;
		return config_.defaultPrim == config_.node;
	case SplitBrainPolicy::KeepPrim: {
		bool me = serving();
		bool him = isServing(peer.state);
		if (me != him)
			return me;
		if (me) {
			/* The one that kept serving through the partition has served longer. */
			uint64_t mine = nowMs_ - servingSinceMs_;
			constexpr uint64_t kMarginMs = 1000;
			if (mine + kMarginMs < peer.servingMs)
				return false;
			if (peer.servingMs + kMarginMs < mine)
				return true;
		}
		return config_.node < config_.peer;
	}
	}
	return std::nullopt;
}

void MirrorStateMachine::onDivergence(const PeerInfo &peer)
{
	divergenceSeen_ = true;
	std::optional<bool> win = noAutoPrim_ ? std::optional<bool>(false) : splitBrainWinner(peer);
	if (!splitBrain_) {
		splitBrain_ = true;
		MirrorAction a;
		a.kind = MirrorActionKind::ReportSplitBrain;
		a.winner = !win ? "" : *win ? config_.node : config_.peer;
		a.details = fmt::format("{} ({}, {}) and {} ({}, {}) changed data independently; policy {}",
			config_.node, stateLabel(state_, phase_), formatGeneration(gen_),
			config_.peer, stateLabel(peer.state, peer.phase), formatGeneration(peer.generation),
			noAutoPrim_ ? "admin second" : configName(config_.splitBrain));
		emit(std::move(a));
	}

	if (!win) {
		if (!serving())
			become(MirrorState::Wait, MirrorPhase::SplitBrain, fmt::format(
				"split brain with {}: policy manual, run `skctl second` on the node whose "
				"changes must go to quarantine", config_.peer), true);
		return;
	}
	if (*win) {
		if (serving())
			return;
		if (!isServing(peer.state)) {
			startServing(fmt::format("split brain with {}: policy {} keeps this node's data",
				config_.peer, configName(config_.splitBrain)), true);
			return;
		}
		become(MirrorState::Wait, MirrorPhase::SplitBrain, fmt::format(
			"split brain: policy keeps this node's data; waiting for {} to stop serving",
			config_.peer), true);
		return;
	}
	if (serving()) {
		beginStop(StopIntent::SplitBrainLoser, fmt::format("split brain: {}'s data is kept; "
			"stopping the app here, local changes go to quarantine", config_.peer), true);
		return;
	}
	if (isSource(peer)) {
		if (canStartTarget())
			becomeTarget(ResyncMode::Full, true, fmt::format("split brain: {}'s data is kept; "
				"resyncing everything from it, local changes kept in quarantine", config_.peer));
		return;
	}
	become(MirrorState::Wait, MirrorPhase::SplitBrain, fmt::format(
		"split brain: {}'s data is kept; waiting for it to serve", config_.peer), true);
}

/* ------------------------------------------------------------------ admin */

Result<MirrorStep> MirrorStateMachine::handleAdmin(const MirrorEvent &event)
{
	Status st;
	switch (event.kind) {
	case MirrorEventKind::AdminStart: st = adminStart(false); break;
	case MirrorEventKind::AdminStop: st = adminStop(); break;
	case MirrorEventKind::AdminPrim: st = adminPrim(false); break;
	case MirrorEventKind::AdminPrimforce: st = adminPrim(true); break;
	case MirrorEventKind::AdminSecond: st = adminSecond(); break;
	case MirrorEventKind::AdminSwap: st = adminSwap(); break;
	case MirrorEventKind::AdminRestart: st = adminRestart(); break;
	default: break;
	}
	if (!st.ok())
		return st.error();
	return MirrorStep{};
}

Status MirrorStateMachine::adminStart(bool second)
{
	if (state_ != MirrorState::Stop)
		return makeError(-EBUSY, fmt::format("already started ({})", stateLabel(state_, phase_)));
	noAutoPrim_ = second;
	targetStarted_ = false;		/* pacing is for retries, not for a fresh start */
	become(MirrorState::Wait, MirrorPhase::WaitPeer, second ?
		fmt::format("admin second: started, will only join a serving {} as SECOND", config_.peer) :
		fmt::format("admin start: waiting up to {} ms for peer {}", config_.startupWaitMs, config_.peer));
	if (peer_)
		reconcile(*peer_);
	return Status::success();
}

Status MirrorStateMachine::adminStop()
{
	if (state_ == MirrorState::Stop)
		return makeError(-EINVAL, "already stopped");
	if (serving()) {
		if ((phase_ == MirrorPhase::Stopping && stopIntent_ == StopIntent::Stop) ||
		    (phase_ == MirrorPhase::Starting && queuedStop_ == StopIntent::Stop))
			return makeError(-EBUSY, "stop already in progress");
		beginStop(StopIntent::Stop, "admin stop: stopping the app");
		return Status::success();
	}
	if (repl_ != Repl::None)
		emit(MirrorActionKind::StopReplication);
	repl_ = Repl::None;
	targetActive_ = false;
	probe_ = ProbeIntent::None;
	become(MirrorState::Stop, MirrorPhase::Idle, "admin stop");
	return Status::success();
}

Status MirrorStateMachine::adminPrim(bool force)
{
	if (serving())
		return makeError(-EINVAL, fmt::format("already serving ({})", stateLabel(state_, phase_)));
	if (force) {
		startServing(fmt::format("PRIMFORCE by admin: serving this node's data without proof "
			"that it is current ({}, was {})", formatGeneration(gen_),
			stateLabel(state_, phase_)), true);
		return Status::success();
	}
	if (state_ == MirrorState::Second)
		return makeError(-EBUSY, fmt::format("this node is SECOND of {}: use `skctl swap` to "
			"move the app here", config_.peer));
	std::string why;
	if (peer_) {
		const PeerInfo &p = *peer_;
		if (isServing(p.state))
			return makeError(-EBUSY, fmt::format("peer {} is serving ({}): use `skctl swap`",
				config_.peer, stateLabel(p.state, p.phase)));
		GenerationRelation rel = compareGenerations(gen_, p.generation);
		if (rel == GenerationRelation::LocalBehind)
			return makeError(-EBUSY, fmt::format("data not current: peer {} has newer data "
				"({} vs local {}); start the module on {} or use primforce", config_.peer,
				formatGeneration(p.generation), formatGeneration(gen_), config_.peer));
		if ((rel == GenerationRelation::Same || rel == GenerationRelation::PeerBehind) &&
		    !consistent())
			return makeError(-EBUSY, "local data is inconsistent (resync was interrupted): "
				"use primforce to serve it anyway");
		why = fmt::format("relation to {}: {}", config_.peer, generationRelationName(rel));
	} else if (!gen_.empty() && !gen_.wasPrimary) {
		return makeError(-EBUSY, fmt::format("data may not be current: this node was not the "
			"last primary and peer {} is not reachable; start {} or use primforce",
			config_.peer, config_.peer));
	} else {
		why = gen_.empty() ? "first start: no data generation yet" : "this node was the last primary";
	}
	startServing(fmt::format("admin prim ({})", why));
	return Status::success();
}

Status MirrorStateMachine::adminSecond()
{
	if (state_ == MirrorState::Stop)
		return adminStart(true);
	if (state_ == MirrorState::Second)
		return makeError(-EINVAL, fmt::format("already SECOND ({})", phaseName(phase_)));
	if (serving()) {
		if (!splitBrain_)
			return makeError(-EBUSY, fmt::format("this node is serving ({}): use `skctl swap` "
				"to move the app to {}", stateLabel(state_, phase_), config_.peer));
		if (phase_ != MirrorPhase::Running)
			return makeError(-EBUSY, fmt::format("cannot step down now: {} in progress",
				phaseName(phase_)));
		noAutoPrim_ = true;
		beginStop(StopIntent::SplitBrainLoser, fmt::format("admin second during split brain: "
			"stopping the app here, local changes go to quarantine, {}'s data is kept",
			config_.peer), true);
		return Status::success();
	}
	noAutoPrim_ = true;
	if (peer_ && isSource(*peer_)) {
		GenerationRelation rel = compareGenerations(gen_, peer_->generation);
		if (rel == GenerationRelation::Diverged || rel == GenerationRelation::PeerBehind)
			becomeTarget(ResyncMode::Full, true, fmt::format("admin second: local divergent "
				"changes go to quarantine; resyncing everything from {}", config_.peer));
		else
			becomeTarget(gen_.empty() ? ResyncMode::Full : ResyncMode::Partial, false,
				fmt::format("admin second: resyncing from {}", config_.peer));
		return Status::success();
	}
	become(MirrorState::Wait, MirrorPhase::WaitPeer, fmt::format(
		"admin second: waiting for {} to serve", config_.peer));
	return Status::success();
}

Status MirrorStateMachine::adminSwap()
{
	switch (state_) {
	case MirrorState::Stop:
		return makeError(-EINVAL, "cannot swap: the module is stopped");
	case MirrorState::Wait:
		return makeError(-EBUSY, fmt::format("cannot swap: no node serves from here ({})",
			stateLabel(state_, phase_)));
	case MirrorState::Second:
		switch (phase_) {
		case MirrorPhase::InSync:
			if (!peer_ || peer_->state != MirrorState::Prim)
				return makeError(-EBUSY, fmt::format("cannot swap: peer {} is not PRIM", config_.peer));
			/* The PRIM sees the flag in our heartbeat and hands over. */
			swapRequested_ = true;
			emit(MirrorActionKind::SendHeartbeat);
			return Status::success();
		case MirrorPhase::Resyncing:
			return makeError(-EBUSY, fmt::format("cannot swap: this node is resyncing ({}%)", percent_));
		case MirrorPhase::Handover:
			return makeError(-EBUSY, "cannot swap: a swap is already in progress");
		default:
			return makeError(-EBUSY, fmt::format("cannot swap: replication from {} is disconnected",
				config_.peer));
		}
	default:
		break;
	}
	if (phase_ != MirrorPhase::Running)
		return makeError(-EBUSY, fmt::format("cannot swap: {} in progress", phaseName(phase_)));
	if (!peer_)
		return makeError(-EBUSY, fmt::format("cannot swap: peer {} is not connected", config_.peer));
	if (peer_->state == MirrorState::Second && peer_->phase == MirrorPhase::Resyncing)
		return makeError(-EBUSY, fmt::format("cannot swap: peer {} is resyncing ({}%)",
			config_.peer, peer_->resyncPercent));
	if (state_ != MirrorState::Prim)
		return makeError(-EBUSY, fmt::format("cannot swap: peer {} is not in sync ({})",
			config_.peer, stateLabel(peer_->state, peer_->phase)));
	beginStop(StopIntent::Swap, fmt::format("admin swap: stopping the app here so {} can take over",
		config_.peer));
	return Status::success();
}

Status MirrorStateMachine::adminRestart()
{
	if (!serving())
		return makeError(-EINVAL, fmt::format("restart applies to the serving node; this node is {}",
			stateLabel(state_, phase_)));
	if (phase_ != MirrorPhase::Running)
		return makeError(-EBUSY, fmt::format("cannot restart: {} in progress", phaseName(phase_)));
	startAttempts_ = 1;
	beginStop(StopIntent::Restart, "admin restart: stop_prim then start_prim");
	return Status::success();
}

/* ----------------------------------------------------------------- events */

void MirrorStateMachine::onHeartbeat(const PeerInfo &peer)
{
	if (peer_ && peer.incarnation != lastPeerIncarnation_)
		onPeerLost(fmt::format("peer {} restarted", config_.peer));
	lastPeerIncarnation_ = peer.incarnation;
	peer_ = peer;
	if (state_ == MirrorState::Stop)
		return;
	reconcile(peer);
}

void MirrorStateMachine::reconcile(const PeerInfo &peer)
{
	GenerationRelation rel = compareGenerations(gen_, peer.generation);
	divergenceSeen_ = false;
	/* The peer is talking to us: a pending witness answer no longer matters. */
	if (probe_ != ProbeIntent::None) {
		probe_ = ProbeIntent::None;
		if (state_ == MirrorState::Wait && phase_ == MirrorPhase::WaitWitness)
			become(MirrorState::Wait, MirrorPhase::WaitPeer,
				fmt::format("peer {} is back before the witness answered", config_.peer));
	}
	switch (state_) {
	case MirrorState::Wait:
		reconcileWaiting(peer, rel);
		break;
	case MirrorState::Second:
		reconcileSecond(peer, rel);
		break;
	case MirrorState::Alone:
	case MirrorState::Prim:
		reconcileServing(peer, rel);
		break;
	case MirrorState::Stop:
		break;
	}
	/* Report again only after the two nodes agreed once (resolved, then diverged anew). */
	if (!divergenceSeen_ && rel != GenerationRelation::Diverged)
		splitBrain_ = false;
}

void MirrorStateMachine::reconcileWaiting(const PeerInfo &peer, GenerationRelation rel)
{
	if (isSource(peer)) {
		switch (rel) {
		case GenerationRelation::Same:
		case GenerationRelation::LocalBehind:
			if (canStartTarget())
				becomeTarget(gen_.empty() ? ResyncMode::Full : ResyncMode::Partial, false,
					fmt::format("peer {} serves; local data is {}: resyncing from it",
						peerLabel(peer), rel == GenerationRelation::Same ?
						"the same generation" : "older"));
			return;
		case GenerationRelation::PeerBehind:
		case GenerationRelation::Diverged:
			/* It serves data we do not descend from or that we already superseded. */
			onDivergence(peer);
			return;
		case GenerationRelation::BothEmpty:
			return;
		}
		return;
	}
	if (isServing(peer.state))
		return;		/* stopping: wait until it has released the VIP */
	if (rel == GenerationRelation::Diverged) {
		onDivergence(peer);
		return;
	}
	if (phase_ == MirrorPhase::Failed || phase_ == MirrorPhase::Held || phase_ == MirrorPhase::SplitBrain ||
	    noAutoPrim_)
		return;
	if (peer.state == MirrorState::Second && peer.phase == MirrorPhase::Handover)
		return;		/* it will take the app back when it sees we do not */

	switch (rel) {
	case GenerationRelation::BothEmpty:
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("neither {} nor {} has "
			"a data generation: run `skctl prim` on the node whose data is authoritative",
			config_.node, config_.peer));
		return;
	case GenerationRelation::LocalBehind:
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("peer {} has newer "
			"data; waiting for it to serve", peerLabel(peer)));
		return;
	case GenerationRelation::PeerBehind:
		if (consistent())
			startServing(fmt::format("peer {} has older data: this node is current", peerLabel(peer)));
		else
			become(MirrorState::Wait, MirrorPhase::NotCurrent, "local data is inconsistent "
				"(resync was interrupted): waiting for an admin (primforce)");
		return;
	case GenerationRelation::Same:
		if (!consistent()) {
			become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("local data is "
				"inconsistent (resync was interrupted); waiting for {} to serve", config_.peer));
		} else if (preferredOver(peer)) {
			startServing(fmt::format("same data as peer {}; this node is preferred to serve",
				peerLabel(peer)));
		} else if (phase_ != MirrorPhase::WaitPeer) {
			become(MirrorState::Wait, MirrorPhase::WaitPeer, fmt::format("same data as peer {}; "
				"it is preferred to serve", peerLabel(peer)));
		}
		return;
	case GenerationRelation::Diverged:
		return;		/* handled above */
	}
}

void MirrorStateMachine::reconcileSecond(const PeerInfo &peer, GenerationRelation rel)
{
	if (phase_ == MirrorPhase::Handover) {
		if (isSource(peer)) {
			if (rel == GenerationRelation::Same || rel == GenerationRelation::LocalBehind)
				becomeTarget(ResyncMode::Partial, false, fmt::format("swap: {} now serves; "
					"this node becomes its replica", peerLabel(peer)));
			else
				onDivergence(peer);
			return;
		}
		if (isServing(peer.state) || peer.state == MirrorState::Second)
			return;		/* still stopping, or about to take over */
		startServing(fmt::format("swap aborted: {} did not take over; serving again",
			peerLabel(peer)), true);
		return;
	}

	if (isSource(peer)) {
		if (phase_ == MirrorPhase::Resyncing && targetActive_) {
			/*
			 * The stream is unbroken (a break would have been ReplicationLost),
			 * so we end up with whatever the source now calls current; our view
			 * at target start may have been one heartbeat old.
			 */
			resyncSource_ = peer.generation.current;
			return;
		}
		if (rel == GenerationRelation::Same && phase_ == MirrorPhase::InSync)
			return;
		if (rel == GenerationRelation::PeerBehind || rel == GenerationRelation::Diverged) {
			onDivergence(peer);
			return;
		}
		/* Outdated, disconnected or failed target: (re)connect, paced. */
		if (!canStartTarget())
			return;
		becomeTarget(gen_.empty() ? ResyncMode::Full : ResyncMode::Partial, false,
			fmt::format("{}: resyncing from {}", phase_ == MirrorPhase::Disconnected ?
				"replication disconnected" : "peer moved on", peerLabel(peer)));
		return;
	}
	if (isServing(peer.state))
		return;		/* stopping: take over once it has released the VIP */

	if (phase_ == MirrorPhase::Resyncing) {
		emit(MirrorActionKind::StopReplication);
		repl_ = Repl::None;
		targetActive_ = false;
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("source {} stopped "
			"serving before resync completed ({}%): data not current", peerLabel(peer), percent_), true);
		return;
	}
	/* InSync or Disconnected: we hold everything the peer acknowledged. */
	if (rel == GenerationRelation::Diverged) {
		onDivergence(peer);
		return;
	}
	if (rel != GenerationRelation::Same) {
		emit(MirrorActionKind::StopReplication);
		repl_ = Repl::None;
		targetActive_ = false;
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("peer {} has newer data "
			"and does not serve: waiting for it", peerLabel(peer)));
		return;
	}
	if (peer.state == MirrorState::Second && peer.phase == MirrorPhase::Handover) {
		startServing(fmt::format("swap: {} handed over; starting the app here", config_.peer));
		return;
	}
	if (peer.state == MirrorState::Second) {
		if (preferredOver(peer))
			startServing(fmt::format("both nodes SECOND with the same data; this node is "
				"preferred to serve ({})", peerLabel(peer)));
		return;
	}
	startServing(fmt::format("peer {} stopped serving; this node is in sync: taking over",
		peerLabel(peer)));
}

void MirrorStateMachine::reconcileServing(const PeerInfo &peer, GenerationRelation rel)
{
	if (phase_ == MirrorPhase::Stopping)
		return;
	if (isServing(peer.state)) {
		/* Two nodes serving: split brain whatever the UUIDs say. Our writes no longer reach it. */
		if (state_ == MirrorState::Prim)
			rotateToAlone(fmt::format("peer {} serves too", peerLabel(peer)));
		onDivergence(peer);
		return;
	}
	if (peer.state == MirrorState::Second) {
		bool peerInSync = peer.phase == MirrorPhase::InSync &&
			peer.generation.current == gen_.current;
		if (state_ == MirrorState::Alone && peerInSync) {
			become(MirrorState::Prim, phase_, fmt::format("peer {} in sync", config_.peer));
			emit(MirrorActionKind::StopDirtyTracking);
		} else if (state_ == MirrorState::Prim && !peerInSync) {
			rotateToAlone(fmt::format("peer {} no longer in sync", peerLabel(peer)));
		}
		if (state_ == MirrorState::Prim && phase_ == MirrorPhase::Running) {
			if (peer.swapRequested)
				beginStop(StopIntent::Swap, fmt::format("swap requested on {}: stopping the "
					"app here so it can take over", config_.peer));
			else if (config_.autoSwapBack && config_.defaultPrim == config_.peer)
				beginStop(StopIntent::Swap, fmt::format("automatic swap back to the "
					"preferred node {}", config_.peer));
		}
		return;
	}
	if (state_ == MirrorState::Prim)
		rotateToAlone(fmt::format("peer {} left", peerLabel(peer)));
	if (rel == GenerationRelation::Diverged && peer.state == MirrorState::Wait)
		onDivergence(peer);
}

void MirrorStateMachine::onPeerLost(const std::string &cause)
{
	std::optional<PeerInfo> last = std::move(peer_);
	peer_.reset();
	switch (state_) {
	case MirrorState::Stop:
	case MirrorState::Wait:
		return;
	case MirrorState::Prim:
	case MirrorState::Alone: {
		/* Could the peer take over now? Then one of us may be the isolated one. */
		bool peerCouldServe = state_ == MirrorState::Prim ||
			(last && last->state == MirrorState::Second &&
			 (last->phase == MirrorPhase::InSync || last->phase == MirrorPhase::Disconnected ||
			  last->phase == MirrorPhase::Handover));
		if (config_.witness && peerCouldServe && phase_ != MirrorPhase::Stopping) {
			/* Keep serving while asking: if we are the isolated one we stop on the answer. */
			if (probe_ != ProbeIntent::KeepServing) {
				probe_ = ProbeIntent::KeepServing;
				emit(MirrorActionKind::ProbeWitness);
			}
			return;
		}
		if (state_ == MirrorState::Prim)
			rotateToAlone(cause + "; serving alone");
		return;
	}
	case MirrorState::Second:
		break;
	}
	if (repl_ != Repl::None)
		emit(MirrorActionKind::StopReplication);
	repl_ = Repl::None;
	targetActive_ = false;
	if (phase_ == MirrorPhase::Resyncing) {
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("{} while resyncing ({}%): "
			"data not current, not taking over (primforce overrides)", cause, percent_), true);
		return;
	}
	/* InSync, Disconnected, Handover: every write the peer acknowledged is here. */
	if (config_.witness)
		probeWitness(ProbeIntent::TakeOver, MirrorState::Wait, MirrorPhase::WaitWitness,
			cause + "; this node was in sync: probing the witness before taking over");
	else
		startServing(cause + "; this node was in sync: taking over");
}

void MirrorStateMachine::onWitness(bool reachable)
{
	ProbeIntent intent = probe_;
	probe_ = ProbeIntent::None;
	switch (intent) {
	case ProbeIntent::None:
		return;		/* stale answer */
	case ProbeIntent::TakeOver:
	case ProbeIntent::Startup:
		if (state_ != MirrorState::Wait || phase_ != MirrorPhase::WaitWitness)
			return;
		if (reachable) {
			std::string cause = intent == ProbeIntent::TakeOver ?
				fmt::format("witness reachable, peer {} lost while this node was in sync: "
					"taking over", config_.peer) :
				fmt::format("witness reachable, peer {} not seen: this node was the last "
					"primary", config_.peer);
			if (intent == ProbeIntent::TakeOver && config_.fenceMs > 0) {
				/* The next Tick past the fence takes over (unless the peer is back). */
				fenceUntilMs_ = nowMs_ + config_.fenceMs;
				fenceCause_ = fmt::format("{} after {} ms, by when an isolated peer has "
					"dropped the VIP", cause, config_.fenceMs);
				return;
			}
			startServing(cause);
		} else
			become(MirrorState::Wait, MirrorPhase::Isolated, fmt::format("peer {} lost and "
				"witness unreachable: this node may be isolated, not serving", config_.peer), true);
		return;
	case ProbeIntent::KeepServing:
		if (!serving() || phase_ == MirrorPhase::Stopping)
			return;
		if (reachable) {
			if (state_ == MirrorState::Prim)
				rotateToAlone(fmt::format("peer {} lost, witness reachable: serving alone",
					config_.peer));
		} else {
			beginStop(StopIntent::Isolated, fmt::format("peer {} lost and witness unreachable: "
				"this node may be isolated, stopping the app", config_.peer), true);
		}
		return;
	}
}

void MirrorStateMachine::onScriptDone(const std::string &script, bool ok)
{
	if (pendingScript_.empty() || script != pendingScript_)
		return;		/* not the script we wait for: stale */
	pendingScript_.clear();

	if (script == kStopPrimScript) {
		if (phase_ == MirrorPhase::Stopping)
			finishStop(ok);
		return;
	}
	if (phase_ != MirrorPhase::Starting)
		return;
	if (queuedStop_ != StopIntent::None) {
		StopIntent intent = queuedStop_;
		queuedStop_ = StopIntent::None;
		beginStop(intent, fmt::format("{} (start_prim {})", queuedCause_, ok ? "done" : "failed"));
		return;
	}
	if (ok) {
		become(state_, MirrorPhase::Running, fmt::format("start_prim succeeded (attempt {})",
			startAttempts_));
		return;
	}
	uint32_t attempts = config_.startRetries + 1;
	if (startAttempts_ < attempts) {
		beginStop(StopIntent::Restart, fmt::format("start_prim failed (attempt {} of {}): "
			"stop_prim, then retry", startAttempts_, attempts));
		startAttempts_++;
		return;
	}
	beginStop(StopIntent::GiveUp, fmt::format("start_prim failed {} times: giving up the primary role",
		startAttempts_), true);
}

void MirrorStateMachine::onResyncDone()
{
	if (state_ != MirrorState::Second || phase_ != MirrorPhase::Resyncing || !targetActive_)
		return;
	gen_.adopt(resyncSource_);
	gen_.inSync = true;
	gen_.wasPrimary = false;
	noAutoPrim_ = false;
	percent_ = 100;
	persist();
	become(MirrorState::Second, MirrorPhase::InSync, fmt::format("resync from {} complete", config_.peer));
}

void MirrorStateMachine::onResyncFailed(const std::string &reason)
{
	if (state_ != MirrorState::Second || phase_ != MirrorPhase::Resyncing)
		return;
	emit(MirrorActionKind::StopReplication);
	repl_ = Repl::None;
	targetActive_ = false;
	become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("resync from {} failed ({}); "
		"retrying in {} ms", config_.peer, reason.empty() ? "no reason given" : reason,
		config_.replRetryMs), true);
}

void MirrorStateMachine::onReplicationLost(const std::string &reason)
{
	std::string why = reason.empty() ? "" : fmt::format(" ({})", reason);
	if (state_ == MirrorState::Prim) {
		if (config_.witness && phase_ != MirrorPhase::Stopping) {
			/*
			 * A partition cuts replication first. Rotating now would make our
			 * writes of the next seconds divergent if we turn out to be the
			 * isolated side; instead ask the witness while durable writes wait
			 * for the decision (heartbeats from the peer also settle it).
			 */
			if (probe_ != ProbeIntent::KeepServing) {
				probe_ = ProbeIntent::KeepServing;
				emit(MirrorActionKind::ProbeWitness);
			}
			return;
		}
		rotateToAlone(fmt::format("replication to {} lost{}", config_.peer, why));
		return;
	}
	if (state_ != MirrorState::Second || !targetActive_)
		return;
	targetActive_ = false;
	repl_ = Repl::None;
	/* Reconnect no sooner than replRetryMs: a crashed primary must first be seen as lost. */
	targetStartMs_ = nowMs_;
	if (phase_ == MirrorPhase::InSync)
		become(MirrorState::Second, MirrorPhase::Disconnected, fmt::format("replication from {} "
			"lost{}; this node still holds every acknowledged write", config_.peer, why));
}

void MirrorStateMachine::onChecker(CheckerAction action, const std::string &name)
{
	if (!serving() || phase_ != MirrorPhase::Running)
		return;
	switch (action) {
	case CheckerAction::None:
		return;
	case CheckerAction::Restart:
		if (checkerRestarts_ < config_.startRetries) {
			checkerRestarts_++;
			startAttempts_ = 1;
			beginStop(StopIntent::Restart, fmt::format("checker {} failed: restarting the app "
				"({} of {})", name, checkerRestarts_, config_.startRetries));
			return;
		}
		beginStop(StopIntent::GiveUp, fmt::format("checker {} failed after {} restarts: giving "
			"up the primary role", name, checkerRestarts_), true);
		return;
	case CheckerAction::StopStart:
		beginStop(StopIntent::GiveUp, fmt::format("checker {} failed: giving up the primary role",
			name), true);
		return;
	case CheckerAction::Wait:
		beginStop(StopIntent::Hold, fmt::format("checker {} failed (action wait): stopping the app "
			"until it is ok again", name), true);
		return;
	}
}

/* Every wait checker is ok again: a held node decides afresh, as after a start. */
void MirrorStateMachine::onCheckerCleared(const std::string &name)
{
	if (state_ != MirrorState::Wait || phase_ != MirrorPhase::Held)
		return;
	become(MirrorState::Wait, MirrorPhase::WaitPeer, fmt::format("checker {} is ok again: deciding "
		"afresh (waiting up to {} ms for peer {})", name, config_.startupWaitMs, config_.peer));
	if (peer_)
		reconcile(*peer_);
}

void MirrorStateMachine::onTick()
{
	if (fenceUntilMs_ && state_ == MirrorState::Wait && phase_ == MirrorPhase::WaitWitness) {
		if (peer_) {
			fenceUntilMs_ = 0;	/* the peer is back: its heartbeats decide */
		} else if (nowMs_ >= fenceUntilMs_) {
			fenceUntilMs_ = 0;
			startServing(std::move(fenceCause_));
			return;
		}
	}
	if (state_ != MirrorState::Wait || phase_ != MirrorPhase::WaitPeer || peer_ || noAutoPrim_)
		return;
	if (nowMs_ < waitSinceMs_ + config_.startupWaitMs)
		return;
	if (!gen_.wasPrimary) {
		become(MirrorState::Wait, MirrorPhase::NotCurrent, fmt::format("peer {} not seen for {} ms "
			"and this node was not the last primary: its data may be stale; start {} or run "
			"`skctl primforce`", config_.peer, config_.startupWaitMs, config_.peer));
		return;
	}
	if (config_.witness)
		probeWitness(ProbeIntent::Startup, MirrorState::Wait, MirrorPhase::WaitWitness,
			fmt::format("peer {} not seen for {} ms; this node was the last primary: probing the "
				"witness", config_.peer, config_.startupWaitMs));
	else
		startServing(fmt::format("peer {} not seen for {} ms; this node was the last primary",
			config_.peer, config_.startupWaitMs));
}

} /* namespace sk */
