/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm state machine. Owner tables come from farmAssignBuckets over the sorted
 * UP set, so every node that sees the same UP set installs the same table.
 */
#include "farm/farm_state.h"

#include <algorithm>

#include <fmt/format.h>

#include "farm/buckets.h"

namespace sk {

namespace {

const char *const kStartScript = "start_both";
const char *const kStopScript = "stop_both";

bool contains(const std::vector<NodeId> &v, NodeId id)
{
	return std::find(v.begin(), v.end(), id) != v.end();
}

} /* namespace */

const char *farmStateName(FarmState state)
{
	switch (state) {
	case FarmState::Stop:
		return "STOP";
	case FarmState::Wait:
		return "WAIT";
	case FarmState::Up:
		return "UP";
	}
	return "?";
}

const char *farmPhaseName(FarmPhase phase)
{
	switch (phase) {
	case FarmPhase::Idle:
		return "idle";
	case FarmPhase::Starting:
		return "starting";
	case FarmPhase::Running:
		return "running";
	case FarmPhase::Leaving:
		return "leaving";
	case FarmPhase::Stopping:
		return "stopping";
	}
	return "?";
}

std::string farmStateLabel(FarmState state, FarmPhase phase)
{
	return fmt::format("{}/{}", farmStateName(state), farmPhaseName(phase));
}

const char *farmEventName(FarmEventKind kind)
{
	switch (kind) {
	case FarmEventKind::AdminStart:
		return "admin-start";
	case FarmEventKind::AdminStop:
		return "admin-stop";
	case FarmEventKind::AdminRestart:
		return "admin-restart";
	case FarmEventKind::PeerHeartbeat:
		return "peer-heartbeat";
	case FarmEventKind::PeerLost:
		return "peer-lost";
	case FarmEventKind::ScriptDone:
		return "script-done";
	case FarmEventKind::CheckerFailed:
		return "checker-failed";
	case FarmEventKind::Tick:
		return "tick";
	}
	return "?";
}

const char *farmActionName(FarmActionKind kind)
{
	switch (kind) {
	case FarmActionKind::RunScript:
		return "run-script";
	case FarmActionKind::LoadFilter:
		return "load-filter";
	case FarmActionKind::UnloadFilter:
		return "unload-filter";
	case FarmActionKind::SetupVip:
		return "setup-vip";
	case FarmActionKind::TeardownVip:
		return "teardown-vip";
	case FarmActionKind::SetOwners:
		return "set-owners";
	case FarmActionKind::BecomeResponder:
		return "become-responder";
	case FarmActionKind::StopResponder:
		return "stop-responder";
	case FarmActionKind::Announce:
		return "announce";
	case FarmActionKind::Publish:
		return "publish";
	}
	return "?";
}

std::string describeFarmAction(const FarmAction &a)
{
	switch (a.kind) {
	case FarmActionKind::RunScript:
		return fmt::format("run-script {}", a.script);
	case FarmActionKind::SetOwners:
		return fmt::format("set-owners up=[{}] digest={:016x}", fmt::join(a.upSet, ","), a.digest);
	default:
		return farmActionName(a.kind);
	}
}

FarmEvent FarmEvent::admin(FarmEventKind kind, uint64_t nowMs)
{
	FarmEvent e;
	e.kind = kind;
	e.nowMs = nowMs;
	return e;
}

FarmEvent FarmEvent::heartbeat(NodeId peer, const FarmPeerView &view, uint64_t nowMs)
{
	FarmEvent e;
	e.kind = FarmEventKind::PeerHeartbeat;
	e.nowMs = nowMs;
	e.peer = peer;
	e.view = view;
	return e;
}

FarmEvent FarmEvent::peerLost(NodeId peer, const std::string &why, uint64_t nowMs)
{
	FarmEvent e;
	e.kind = FarmEventKind::PeerLost;
	e.nowMs = nowMs;
	e.peer = peer;
	e.detail = why;
	return e;
}

FarmEvent FarmEvent::scriptDone(const std::string &script, bool ok, uint64_t nowMs)
{
	FarmEvent e;
	e.kind = FarmEventKind::ScriptDone;
	e.nowMs = nowMs;
	e.script = script;
	e.ok = ok;
	return e;
}

FarmEvent FarmEvent::checkerFailed(const std::string &name, uint64_t nowMs)
{
	FarmEvent e;
	e.kind = FarmEventKind::CheckerFailed;
	e.nowMs = nowMs;
	e.detail = name;
	return e;
}

FarmEvent FarmEvent::tick(uint64_t nowMs, int64_t localFlows)
{
	FarmEvent e;
	e.kind = FarmEventKind::Tick;
	e.nowMs = nowMs;
	e.localFlows = localFlows;
	return e;
}

FarmStateMachine::FarmStateMachine(FarmMachineConfig config) : config_(std::move(config))
{
	/* A view with nobody UP: every bucket unowned. */
	viewOwners_.assign(config_.buckets, 0);
	viewDigest_ = farmAssignmentDigest(viewOwners_);
}

std::vector<NodeId> FarmStateMachine::upSet(bool includeSelf) const
{
	std::vector<NodeId> up;
	if (includeSelf)
		up.push_back(config_.self);
	for (const auto &[id, v] : peers_)
		if (v.alive && v.state == FarmState::Up && id != config_.self)
			up.push_back(id);
	std::sort(up.begin(), up.end());
	return up;
}

std::vector<NodeId> FarmStateMachine::advertisedMembers() const
{
	return upSet(state_ == FarmState::Up);
}

Status FarmStateMachine::assign(const std::vector<NodeId> &up, std::vector<uint32_t> *owners) const
{
	std::vector<FarmNodeWeight> nodes;
	for (NodeId id : up) {
		auto w = config_.weights.find(id);
		nodes.push_back({ id, w == config_.weights.end() ? 1u : w->second });
	}
	auto r = farmAssignBuckets(config_.seed, config_.buckets, nodes);
	if (!r)
		return r.error();
	*owners = std::move(r.value());
	return {};
}

NodeId FarmStateMachine::responderNode() const
{
	auto up = advertisedMembers();
	return up.empty() ? 0 : up.front();
}

bool FarmStateMachine::viewsAgree() const
{
	if (state_ == FarmState::Stop)
		return true;
	for (const auto &[id, v] : peers_)
		if (v.alive && v.state != FarmState::Stop && v.digest != viewDigest_)
			return false;
	return true;
}

void FarmStateMachine::become(FarmState state, FarmPhase phase, const std::string &cause, bool loud)
{
	step_->transitions.push_back({ state_, phase_, state, phase, cause, loud });
	state_ = state;
	phase_ = phase;
	act(FarmActionKind::Publish);
}

void FarmStateMachine::act(FarmActionKind kind, const std::string &script)
{
	FarmAction a;
	a.kind = kind;
	a.script = script;
	step_->actions.push_back(std::move(a));
}

void FarmStateMachine::updateResponder()
{
	bool should = state_ == FarmState::Up && responderNode() == config_.self;
	if (should == responder_)
		return;
	responder_ = should;
	if (should) {
		act(FarmActionKind::BecomeResponder);
		act(FarmActionKind::Announce);
	} else {
		act(FarmActionKind::StopResponder);
	}
}

void FarmStateMachine::recompute()
{
	std::vector<NodeId> members = advertisedMembers();
	std::vector<uint32_t> owners;
	/* Config validation keeps ids and buckets valid, so assign() cannot fail here. */
	if (assign(members, &owners)) {
		uint64_t digest = farmAssignmentDigest(owners);
		if (digest != viewDigest_ || owners != viewOwners_) {
			viewOwners_ = std::move(owners);
			viewDigest_ = digest;
			act(FarmActionKind::Publish);
		}
	}
	if (filterLoaded_) {
		std::vector<NodeId> serving = upSet(state_ == FarmState::Up);
		std::vector<uint32_t> table;
		if (assign(serving, &table)) {
			/*
			 * Release at once, take only once no alive UP peer still claims the bucket
			 * (its advertised members say what it has installed). A handover is then a
			 * gap of one heartbeat, never an overlap: a SYN lost in a gap is retransmitted,
			 * while two nodes answering one flow reset it.
			 */
			for (const auto &[id, v] : peers_) {
				if (!v.alive || v.state != FarmState::Up || id == config_.self)
					continue;
				const std::vector<uint32_t> &theirs = claimedBy(id, v.members);
				if (theirs.size() != table.size())
					continue;
				for (size_t b = 0; b < table.size(); b++)
					if (table[b] == config_.self && theirs[b] == id)
						table[b] = 0;
			}
			std::vector<uint32_t> drain = drainTable(table);
			if (table != installed_ || drain != installedDrain_) {
				FarmAction a;
				a.kind = FarmActionKind::SetOwners;
				a.owners = table;
				a.digest = farmAssignmentDigest(table);
				a.upSet = std::move(serving);
				a.drainFrom = drain;
				step_->actions.push_back(std::move(a));
				installed_ = std::move(table);
				installedDrain_ = std::move(drain);
			}
		}
	}
	updateResponder();
}

const std::vector<uint32_t> &FarmStateMachine::claimedBy(NodeId peer, const std::vector<NodeId> &members)
{
	auto &entry = claims_[peer];
	if (entry.first != members || entry.second.empty()) {
		entry.first = members;
		entry.second.clear();
		/* A view we cannot evaluate (unknown ids) claims nothing. */
		if (!assign(members, &entry.second))
			entry.second.clear();
	}
	return entry.second;
}

void FarmStateMachine::startSequence()
{
	become(FarmState::Wait, FarmPhase::Starting, "admin start");
	act(FarmActionKind::LoadFilter);
	filterLoaded_ = true;
	installed_.clear();
	installedDrain_.clear();
	recompute();	/* installs the others' table: we own nothing until UP */
	act(FarmActionKind::SetupVip);
	vipSetUp_ = true;
	act(FarmActionKind::RunScript, kStartScript);
}

void FarmStateMachine::beginLeave(const std::string &cause)
{
	become(FarmState::Wait, FarmPhase::Leaving, cause);
	leaveDeadlineMs_ = nowMs_ + config_.leaveTimeoutMs;
	/* As long as its released buckets drain from it (drainTable), counted from now. */
	drainDeadlineMs_ = nowMs_ + config_.drainMs;
	handedOver_ = false;
	localFlows_ = -1;
	recompute();
	maybeFinishLeave(false);
}

void FarmStateMachine::maybeFinishLeave(bool timedOut)
{
	if (phase_ != FarmPhase::Leaving)
		return;
	if (!handedOver_) {
		std::vector<NodeId> waitingFor;
		for (const auto &[id, v] : peers_)
			if (v.alive && v.state == FarmState::Up && contains(v.members, config_.self))
				waitingFor.push_back(id);
		if (!waitingFor.empty() && !timedOut)
			return;
		handedOver_ = true;
		handoverLoud_ = !waitingFor.empty();
		handoverCause_ = waitingFor.empty()
					 ? std::string("every UP peer took this node's buckets")
					 : fmt::format("handover not confirmed by node(s) {} within {} ms",
						       fmt::join(waitingFor, ","), config_.leaveTimeoutMs);
	}
	/* Its connections keep going to it (the others' tables drain from it) until they close. */
	if (config_.drainMs > 0 && localFlows_ != 0 && nowMs_ < drainDeadlineMs_)
		return;
	std::string cause = handoverCause_;
	if (config_.drainMs > 0) {
		if (localFlows_ == 0)
			cause += "; its connections closed";
		else if (localFlows_ > 0)
			cause += fmt::format("; {} connection(s) still open after {} ms", localFlows_, config_.drainMs);
		else
			cause += fmt::format("; connections not counted within {} ms", config_.drainMs);
	}
	teardownAndStop(cause, handoverLoud_);
}

std::vector<uint32_t> FarmStateMachine::drainTable(const std::vector<uint32_t> &table)
{
	if (config_.drainMs == 0)
		return {};
	const size_t n = table.size();
	lastOwner_.resize(n, 0);
	drainFrom_.resize(n, 0);
	drainUntil_.resize(n, 0);
	const bool hadTable = installed_.size() == n;	/* the one this replaces (none after a load) */
	std::vector<uint32_t> out(n, 0);
	nextDrainEndMs_ = UINT64_MAX;
	bool any = false;
	for (size_t b = 0; b < n; b++) {
		const uint32_t cur = table[b];
		if (hadTable && cur != installed_[b]) {
			const uint32_t last = lastOwner_[b];
			if (cur == last) {
				/* Back with the node that had it (a release undone): nothing to drain. */
				drainFrom_[b] = 0;
			} else if (last != 0 && (drainSource(last) || drainFrom_[b] == 0)) {
				/* Released by last (cur 0: nobody has it yet) or taken from it. From a
				 * node gone meanwhile it keeps draining from the one before, if any. */
				drainFrom_[b] = last;
				drainUntil_[b] = nowMs_ + config_.drainMs;
			}
		}
		if (cur != 0)
			lastOwner_[b] = cur;
		const uint32_t from = drainFrom_[b];
		if (from == 0)
			continue;
		if (nowMs_ >= drainUntil_[b] || from == cur || !drainSource(from)) {
			drainFrom_[b] = 0;
			continue;
		}
		out[b] = from;
		any = true;
		nextDrainEndMs_ = std::min(nextDrainEndMs_, drainUntil_[b]);
	}
	if (!any)
		out.clear();
	return out;
}

bool FarmStateMachine::drainSource(NodeId id) const
{
	/* A node tearing down keeps nothing: its VIP is about to leave lo. */
	if (id == config_.self)
		return filterLoaded_ && phase_ != FarmPhase::Stopping;
	auto it = peers_.find(id);
	return it != peers_.end() && it->second.alive && it->second.state != FarmState::Stop &&
	       it->second.phase != FarmPhase::Stopping;
}

void FarmStateMachine::teardownAndStop(const std::string &cause, bool loud)
{
	become(FarmState::Wait, FarmPhase::Stopping, cause, loud);
	/* Drop every VIP packet first, then take the VIP off lo, then remove the filter: the VIP is
	 * never local without a filter in front of it (the mirror image of startSequence()). */
	if (filterLoaded_)
		recompute();
	updateResponder();
	if (vipSetUp_) {
		act(FarmActionKind::TeardownVip);
		vipSetUp_ = false;
	}
	if (filterLoaded_) {
		act(FarmActionKind::UnloadFilter);
		filterLoaded_ = false;
		installed_.clear();
		installedDrain_.clear();
		lastOwner_.clear();
		drainFrom_.clear();
		drainUntil_.clear();
		nextDrainEndMs_ = UINT64_MAX;
	}
	act(FarmActionKind::RunScript, kStopScript);
}

Result<FarmStep> FarmStateMachine::handle(const FarmEvent &e)
{
	FarmStep step;
	step_ = &step;
	nowMs_ = std::max(nowMs_, e.nowMs);
	std::string label = farmStateLabel(state_, phase_);

	switch (e.kind) {
	case FarmEventKind::AdminStart:
		if (state_ != FarmState::Stop) {
			step_ = nullptr;
			if (phase_ == FarmPhase::Leaving || phase_ == FarmPhase::Stopping)
				return makeError(-EINPROGRESS, "a stop is under way (" + label + "); start again once STOP, or use restart");
			return makeError(-EALREADY, "already started (" + label + ")");
		}
		startSequence();
		break;

	case FarmEventKind::AdminStop:
		if (state_ == FarmState::Stop) {
			step_ = nullptr;
			return makeError(-EALREADY, "already stopped");
		}
		restartPending_ = false;
		if (phase_ == FarmPhase::Leaving || phase_ == FarmPhase::Stopping) {
			step_ = nullptr;
			return makeError(-EINPROGRESS, "a stop is already under way (" + label + ")");
		}
		if (state_ == FarmState::Up)
			beginLeave("admin stop: handing buckets over");
		else
			teardownAndStop("admin stop while starting", false);
		break;

	case FarmEventKind::AdminRestart:
		if (state_ == FarmState::Stop) {
			startSequence();
			break;
		}
		restartPending_ = true;
		if (state_ == FarmState::Up)
			beginLeave("admin restart: handing buckets over");
		else if (phase_ == FarmPhase::Starting)
			teardownAndStop("admin restart while starting", false);
		break;

	case FarmEventKind::PeerHeartbeat: {
		if (e.peer == config_.self || e.peer == 0)
			break;
		FarmPeerView v = e.view;
		v.alive = true;
		std::sort(v.members.begin(), v.members.end());
		peers_[e.peer] = std::move(v);
		recompute();
		maybeFinishLeave(false);
		break;
	}

	case FarmEventKind::PeerLost: {
		auto it = peers_.find(e.peer);
		if (it == peers_.end() || !it->second.alive)
			break;
		it->second.alive = false;
		recompute();
		maybeFinishLeave(false);
		break;
	}

	case FarmEventKind::ScriptDone:
		if (e.script == kStartScript && phase_ == FarmPhase::Starting) {
			if (e.ok) {
				become(FarmState::Up, FarmPhase::Running, "start_both done");
				recompute();
			} else {
				restartPending_ = false;
				teardownAndStop("start_both failed", true);
			}
		} else if (e.script == kStopScript && phase_ == FarmPhase::Stopping) {
			become(FarmState::Stop, FarmPhase::Idle, e.ok ? "stop_both done" : "stop_both failed", !e.ok);
			if (restartPending_) {
				restartPending_ = false;
				startSequence();
			}
		}
		break;

	case FarmEventKind::CheckerFailed:
		if (state_ == FarmState::Up) {
			restartPending_ = true;
			beginLeave("checker " + e.detail + " failed: restarting");
		}
		break;

	case FarmEventKind::Tick:
		if (e.localFlows >= 0)
			localFlows_ = e.localFlows;
		if (filterLoaded_ && nowMs_ >= nextDrainEndMs_)
			recompute();
		if (phase_ == FarmPhase::Leaving)
			maybeFinishLeave(nowMs_ >= leaveDeadlineMs_);
		break;
	}
	step_ = nullptr;
	return step;
}

} /* namespace sk */
