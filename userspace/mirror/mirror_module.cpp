/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Mirror module driver. Invariants:
 *  - events reach the state machine one at a time, in order (feed() queues
 *    events raised while a step's actions are being carried out);
 *  - actions run in the order given; the asynchronous ones (scripts, witness
 *    probe, resync) report back later as events;
 *  - the VIP is on this node only while the machine is serving (ALONE/PRIM),
 *    and any VIP found at start (a crashed skd's leftover) is removed.
 */
#include "mirror/mirror_module.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "checkers/probe.h"
#include "core/le_bytes.h"
#include "core/log.h"
#include "core/module_files.h"

namespace sk {

namespace {

LogCategory kLog("mirror");

constexpr size_t kKeepTransitions = 50;
constexpr uint8_t kPeerInfoVersion = 1;

uint64_t randomUuid()
{
	uint64_t v = 0;
	while (v == 0) {
		if (getrandom(&v, sizeof(v), 0) != sizeof(v))
			v = static_cast<uint64_t>(EventLoop::Clock::now().time_since_epoch().count()) | 1;
	}
	return v;
}

int64_t wallMs()
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(
		       std::chrono::system_clock::now().time_since_epoch())
		.count();
}

/* A module without replicated directories: nothing to copy, so nothing to wait for. */
class NoDataReplication : public MirrorReplication
{
public:
	explicit NoDataReplication(EventLoop &loop) : loop_(loop) {}
	~NoDataReplication() override { *alive_ = false; }

	void setCallbacks(Callbacks callbacks) override { cb_ = std::move(callbacks); }
	void startSource() override {}
	void startTarget(ResyncMode, bool) override
	{
		auto alive = alive_;
		loop_.addTimer(std::chrono::milliseconds(0), [this, alive] {
			if (*alive && cb_.resyncDone)
				cb_.resyncDone();
		});
	}
	void stop() override {}
	void startDirtyTracking(const Generation &) override {}
	void stopDirtyTracking() override {}
	nlohmann::json status() const override
	{
		return { { "mode", "none" }, { "dirs", nlohmann::json::array() } };
	}

private:
	EventLoop &loop_;
	Callbacks cb_;
	std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} /* namespace */

std::unique_ptr<MirrorReplication> makeNoDataReplication(EventLoop &loop)
{
	return std::make_unique<NoDataReplication>(loop);
}

/*
 * PeerInfo on the wire (little-endian), inside the heartbeat's module data:
 *   0 1 version   1 1 state   2 1 phase   3 1 flags (0 in_sync, 1 was_primary,
 *   2 swap_requested, 3 second_only)   4 1 resync percent   5 1 history count (<= 8)
 *   6 2 reserved (0)   8 8 serving ms   16 8 current UUID   24 8*n history
 */
std::vector<uint8_t> encodePeerInfo(const PeerInfo &info)
{
	std::vector<uint8_t> out;
	size_t hist = std::min(info.generation.history.size(), Generation::kHistorySize);
	out.push_back(kPeerInfoVersion);
	out.push_back(static_cast<uint8_t>(info.state));
	out.push_back(static_cast<uint8_t>(info.phase));
	out.push_back(static_cast<uint8_t>((info.generation.inSync ? 1 : 0) |
					   (info.generation.wasPrimary ? 2 : 0) |
					   (info.swapRequested ? 4 : 0) | (info.secondOnly ? 8 : 0)));
	out.push_back(static_cast<uint8_t>(std::clamp(info.resyncPercent, 0, 100)));
	out.push_back(static_cast<uint8_t>(hist));
	out.push_back(0);
	out.push_back(0);
	le::append<uint64_t>(&out, info.servingMs);
	le::append<uint64_t>(&out, info.generation.current);
	for (size_t i = 0; i < hist; i++)
		le::append<uint64_t>(&out, info.generation.history[i]);
	return out;
}

bool decodePeerInfo(std::span<const uint8_t> in, PeerInfo *info)
{
	if (in.size() < 24 || in[0] != kPeerInfoVersion)
		return false;
	size_t hist = in[5];
	if (hist > Generation::kHistorySize || in.size() != 24 + 8 * hist)
		return false;
	if (in[1] > static_cast<uint8_t>(MirrorState::Second) ||
	    in[2] > static_cast<uint8_t>(MirrorPhase::Held) || (in[3] & ~0x0f) || in[4] > 100 ||
	    in[6] || in[7])
		return false;
	PeerInfo p;
	p.state = static_cast<MirrorState>(in[1]);
	p.phase = static_cast<MirrorPhase>(in[2]);
	p.generation.inSync = in[3] & 1;
	p.generation.wasPrimary = in[3] & 2;
	p.swapRequested = in[3] & 4;
	p.secondOnly = in[3] & 8;
	p.resyncPercent = in[4];
	p.servingMs = le::get<uint64_t>(in.data() + 8);
	p.generation.current = le::get<uint64_t>(in.data() + 16);
	for (size_t i = 0; i < hist; i++)
		p.generation.history.push_back(le::get<uint64_t>(in.data() + 24 + 8 * i));
	*info = std::move(p);
	return true;
}

MirrorModule::MirrorModule(const MirrorContext &context, const ModuleConfig &config)
	: ctx_(context), config_(config), timeout_(config.heartbeat.timeoutMs)
{
}

Result<std::unique_ptr<MirrorModule>> MirrorModule::create(const MirrorContext &context,
							   const ModuleConfig &config,
							   std::unique_ptr<MirrorReplication> replication)
{
	std::unique_ptr<MirrorModule> m(new MirrorModule(context, config));
	auto mc = MirrorConfig::fromModule(config, context.self->name);
	if (!mc)
		return mc.error();

	const NodeConfig *peer = context.cluster->findNode(mc->peer);
	if (!peer)
		return makeError(-EINVAL, "module " + config.name + ": peer node " + mc->peer + " is not in the cluster");
	m->peerId_ = peer->id;

	for (size_t i = 0; i < context.cluster->networks.size(); i++) {
		const std::string &net = context.cluster->networks[i];
		if (std::find(config.heartbeat.networks.begin(), config.heartbeat.networks.end(), net) !=
		    config.heartbeat.networks.end())
			m->networks_.insert(i);
	}

	if (mkdir(context.stateDir.c_str(), 0700) < 0 && errno != EEXIST)
		return makeError(-errno, errnoMessage("cannot create " + context.stateDir, errno));
	m->store_ = std::make_unique<GenerationStore>(context.stateDir);
	auto gen = m->store_->load();
	if (!gen)
		return makeError(gen.error().code, "module " + config.name + ": " + gen.error().message +
							   " (refusing to guess whether this node's data is current; "
							   "inspect or remove " + m->store_->path() + ")");

	ScriptRunnerOptions so;
	so.module = config.name;
	so.scriptDir = context.moduleDir + "/scripts";
	so.logFile = context.logFile;
	so.timeout = std::chrono::milliseconds(config.scripts.timeoutMs);
	auto runner = ScriptRunner::create(*context.loop, so);
	if (!runner)
		return runner.error();
	m->scripts_ = std::move(runner.value());

	auto checkers = ModuleCheckers::create(*context.loop, config, context.moduleDir, context.moduleState,
					      context.self ? context.self->name : std::string(), context.stateDir);
	if (!checkers)
		return checkers.error();
	m->checkers_ = std::move(checkers.value());

	m->replication_ = std::move(replication);
	MirrorModule *self = m.get();
	m->replication_->setCallbacks({
		[self](int percent) {
			MirrorEvent e = MirrorEvent::simple(MirrorEventKind::ResyncProgress, self->nowMs());
			e.percent = percent;
			self->feed(e);
		},
		[self] { self->feed(MirrorEvent::simple(MirrorEventKind::ResyncDone, self->nowMs())); },
		[self](const std::string &why) {
			self->feed(MirrorEvent::simple(MirrorEventKind::ResyncFailed, self->nowMs(), why));
		},
		[self](const std::string &why) {
			self->feed(MirrorEvent::simple(MirrorEventKind::ReplicationLost, self->nowMs(), why));
		},
	});

	m->sm_ = std::make_unique<MirrorStateMachine>(*mc, gen.value(), context.heartbeat->incarnation(),
						      randomUuid);
	m->checkers_->setDecisionCallback([self](const PolicyDecision &d) { self->onCheckerDecision(d); });

	/* Not serving yet: a VIP still here is a crashed skd's leftover. */
	m->removeVips(true);

	int ret = context.heartbeat->addModule(config.name);
	if (ret < 0 && ret != -EEXIST)
		return makeError(ret, errnoMessage("heartbeat for module " + config.name, ret));
	m->publish();

	m->tickTimer_ = context.loop->addPeriodic(std::chrono::milliseconds(config.heartbeat.intervalMs),
						  [self] { self->onTick(); });

	logInfo(kLog, "{}: loaded, peer {} (id {}), data {}", config.name, mc->peer, m->peerId_,
		formatGeneration(gen.value()));

	/* Resume what the admin asked last (a node that reboots rejoins on its own). */
	std::string intent = m->loadAdminIntent();
	if (intent == "start" || intent == "second") {
		logInfo(kLog, "{}: resuming '{}' as before skd restarted", config.name, intent);
		auto r = m->feedAdmin(intent == "start" ? MirrorEventKind::AdminStart : MirrorEventKind::AdminSecond);
		if (!r)
			logWarn(kLog, "{}: could not resume: {}", config.name, r.error().message);
	}
	return m;
}

MirrorModule::~MirrorModule()
{
	*alive_ = false;
	if (checkers_)
		checkers_->stopAll();
	ctx_.loop->cancelTimer(tickTimer_);
	ctx_.heartbeat->removeModule(config_.name);
}

uint64_t MirrorModule::nowMs() const
{
	return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
					     EventLoop::Clock::now().time_since_epoch())
					     .count());
}

void MirrorModule::feed(const MirrorEvent &event)
{
	pending_.push_back(event);
	if (feeding_)
		return;
	feeding_ = true;
	while (!pending_.empty()) {
		MirrorEvent e = std::move(pending_.front());
		pending_.pop_front();
		auto step = sm_->handle(e);
		if (!step) {
			logWarn(kLog, "{}: {} refused: {}", config_.name, eventName(e.kind), step.error().message);
			continue;
		}
		for (const MirrorTransition &t : step->transitions)
			logTransition(t);
		execute(step->actions);
	}
	feeding_ = false;
	publish();
	updateCheckers();
	if (shutdownDone_ && sm_->state() == MirrorState::Stop && !scripts_->busy()) {
		auto done = std::move(shutdownDone_);
		shutdownDone_ = nullptr;
		done();
	}
}

Result<MirrorStep> MirrorModule::feedAdmin(MirrorEventKind kind)
{
	/* Admin commands are answered synchronously, so they bypass the queue only when idle. */
	if (feeding_)
		return makeError(-EBUSY, "module is busy handling another event; try again");
	feeding_ = true;
	auto step = sm_->handle(MirrorEvent::admin(kind, nowMs()));
	if (step) {
		for (const MirrorTransition &t : step->transitions)
			logTransition(t);
		execute(step->actions);
	}
	feeding_ = false;
	/* Drain whatever the actions queued. */
	if (!pending_.empty()) {
		MirrorEvent next = std::move(pending_.front());
		pending_.pop_front();
		feed(next);
	} else {
		publish();
		updateCheckers();
	}
	return step;
}

void MirrorModule::updateCheckers()
{
	ModuleRole role = ModuleRole::Stop;
	switch (sm_->state()) {
	case MirrorState::Stop: role = ModuleRole::Stop; break;
	case MirrorState::Wait: role = ModuleRole::Wait; break;
	case MirrorState::Alone: role = ModuleRole::Alone; break;
	case MirrorState::Prim: role = ModuleRole::Prim; break;
	case MirrorState::Second: role = ModuleRole::Second; break;
	}
	/* While start/stop scripts run the app is not up: its own downtime is no failure. */
	bool appUp = sm_->phase() == MirrorPhase::Running || sm_->state() == MirrorState::Second;
	checkers_->setRole(role, appUp);
}

void MirrorModule::onCheckerDecision(const PolicyDecision &d)
{
	moduleLog("checker " + d.checker + ": " + d.cause);
	auto action = d.action();
	MirrorEvent e;
	if (d.kind == PolicyDecisionKind::Resume) {
		e = MirrorEvent::simple(MirrorEventKind::CheckerCleared, nowMs(), d.checker);
	} else if (action) {
		e = MirrorEvent::simple(MirrorEventKind::CheckerFailed, nowMs(), d.checker);
		e.checker = *action;
	} else {
		return;	/* report only */
	}
	/* Posted: decisions may arrive from inside setRole(), i.e. while feeding. */
	auto alive = alive_;
	ctx_.loop->post([this, alive, e] {
		if (*alive)
			feed(e);
	});
}

void MirrorModule::execute(const std::vector<MirrorAction> &actions)
{
	for (const MirrorAction &a : actions)
		executeOne(a);
}

void MirrorModule::executeOne(const MirrorAction &a)
{
	logDebug(kLog, "{}: action {}", config_.name, describeAction(a));
	switch (a.kind) {
	case MirrorActionKind::PersistGeneration: {
		Status s = store_->save(a.generation);
		if (!s) {
			lastError_ = "cannot persist data generation: " + s.error().message;
			logError(kLog, "{}: {}; stopping the module (acting on an unsaved generation is unsafe)",
				 config_.name, lastError_);
			pending_.push_back(MirrorEvent::admin(MirrorEventKind::AdminStop, nowMs()));
		}
		break;
	}
	case MirrorActionKind::StartDirtyTracking:
		replication_->startDirtyTracking(a.generation);
		break;
	case MirrorActionKind::StopDirtyTracking:
		replication_->stopDirtyTracking();
		break;
	case MirrorActionKind::StartReplicationSource:
		replication_->startSource();
		break;
	case MirrorActionKind::StartReplicationTarget:
		replication_->startTarget(a.resync, a.quarantine);
		break;
	case MirrorActionKind::StopReplication:
		replication_->stop();
		break;
	case MirrorActionKind::AddVip:
		addVips();
		break;
	case MirrorActionKind::RemoveVip:
		removeVips(false);
		break;
	case MirrorActionKind::RunScript:
		runScript(a.script);
		break;
	case MirrorActionKind::ProbeWitness:
		probeWitness();
		break;
	case MirrorActionKind::SendHeartbeat:
		publish();
		ctx_.heartbeat->sendNow(config_.name);
		break;
	case MirrorActionKind::ReportSplitBrain:
		splitBrain_ = a.details + (a.winner.empty() ? std::string(" (policy: manual; run `skctl prim` on the node whose data to keep)")
							    : " (data kept: " + a.winner + ")");
		logError(kLog, "{}: SPLIT BRAIN: {}", config_.name, *splitBrain_);
		moduleLog("SPLIT BRAIN: " + *splitBrain_);
		break;
	}
}

void MirrorModule::addVips()
{
	/* The guard learns of a VIP before it exists, so a crash in between is covered. */
	if (ctx_.guard) {
		std::vector<std::string> held;
		for (const VipConfig &v : config_.vips)
			held.push_back(fmt::format("{} {}/{}", v.interface, v.address, v.prefixLen));
		Status g = ctx_.guard->setHeld(config_.name, held);
		if (!g)
			logWarn(kLog, "{}: VIP guard not updated: {}", config_.name, g.error().message);
	}
	for (const VipConfig &v : config_.vips) {
		auto prefix = net::parseIpPrefix(v.address + "/" + std::to_string(v.prefixLen));
		auto ifindex = net::interfaceIndex(v.interface);
		Status s = !prefix ? Status(prefix.error())
				   : !ifindex ? Status(ifindex.error())
					      : ctx_.addresses->add(*ifindex, *prefix);
		if (!s) {
			lastError_ = fmt::format("cannot add VIP {}/{} on {}: {}", v.address, v.prefixLen, v.interface,
						 s.error().message);
			logError(kLog, "{}: {}", config_.name, lastError_);
			MirrorEvent e = MirrorEvent::simple(MirrorEventKind::CheckerFailed, nowMs(), "vip");
			e.checker = CheckerAction::StopStart;
			pending_.push_back(e);
			continue;
		}
		Status an = ctx_.announcer->announce(*ifindex, prefix->address);
		if (!an)
			logWarn(kLog, "{}: VIP {} added but not announced: {}", config_.name, v.address,
				an.error().message);
		logInfo(kLog, "{}: VIP {}/{} added on {}", config_.name, v.address, v.prefixLen, v.interface);
	}
	vipsHeld_ = true;
	vipMoves_++;
}

void MirrorModule::removeVips(bool quiet)
{
	for (const VipConfig &v : config_.vips) {
		auto addr = net::parseIpAddress(v.address);
		auto ifindex = net::interfaceIndex(v.interface);
		if (!addr || !ifindex)
			continue;
		ctx_.announcer->cancel(*ifindex, *addr);
		auto has = ctx_.addresses->has(*ifindex, *addr);
		if (has && !*has)
			continue;
		Status s = ctx_.addresses->remove(*ifindex, *addr);
		if (!s)
			logError(kLog, "{}: cannot remove VIP {} from {}: {}", config_.name, v.address, v.interface,
				 s.error().message);
		else if (quiet)
			logWarn(kLog, "{}: removed VIP {} left on {} by an earlier run", config_.name, v.address,
				v.interface);
		else
			logInfo(kLog, "{}: VIP {} removed from {}", config_.name, v.address, v.interface);
	}
	vipsHeld_ = false;
	if (ctx_.guard)
		(void)ctx_.guard->setHeld(config_.name, {});
}

ScriptContext MirrorModule::scriptContext(const std::string &script) const
{
	ScriptContext c;
	c.node = ctx_.self->name;
	c.role = stateName(sm_->state());
	c.peer = sm_->config().peer;
	c.peerState = sm_->peer() ? stateName(sm_->peer()->state) : "UNKNOWN";
	c.stateDir = ctx_.stateDir;
	for (const VipConfig &v : config_.vips)
		c.vips.push_back(v.address);
	c.extra.push_back({ "SK_SCRIPT", script });
	c.extra.push_back({ "SK_CLUSTER", ctx_.cluster->name });
	return c;
}

void MirrorModule::runScript(const std::string &script)
{
	runningScript_ = script;
	auto timeout = std::chrono::milliseconds(config_.scripts.timeoutFor(script));
	scripts_->setOutputCallback([this](const std::string &s, std::string_view line) {
		logInfo(kLog, "{}: {}: {}", config_.name, s, line);
	});
	scripts_->run(script, scriptContext(script), [this](const ScriptResult &r) {
		runningScript_.clear();
		bool ok = r.ok();
		if (!ok) {
			scriptFailures_++;
			lastError_ = fmt::format("script {} failed: {}", r.script,
						 r.timedOut ? "timed out" : !r.status.ok() ? r.status.error().message
						 : r.termSignal ? fmt::format("killed by signal {}", r.termSignal)
						 : fmt::format("exit code {}", r.exitCode));
			logError(kLog, "{}: {}", config_.name, lastError_);
			moduleLog(lastError_);
		} else {
			logInfo(kLog, "{}: script {} done in {} ms{}", config_.name, r.script, r.durationMs,
				r.missing ? " (not provided)" : "");
		}
		feed(MirrorEvent::scriptDone(r.script, ok, nowMs()));
	}, timeout);
}

void MirrorModule::probeWitness()
{
	const WitnessConfig &w = config_.witness;
	auto timeout = std::chrono::milliseconds(w.timeoutMs);
	auto done = [this](const ProbeReport &r) {
		logInfo(kLog, "{}: witness {} {} ({})", config_.name, config_.witness.address,
			r.reachable ? "reachable" : "unreachable", r.detail);
		feed(MirrorEvent::witness(r.reachable, nowMs()));
	};
	static_assert(std::is_move_constructible_v<std::unique_ptr<Probe>>);
	/* The probe lives until it reports; witnessProbe_ keeps it. */
	auto probe = w.type == WitnessType::Tcp ? Probe::tcp(*ctx_.loop, w.address, w.port, timeout, done)
						: Probe::icmp(*ctx_.loop, w.address, timeout, done);
	witnessProbe_ = std::move(probe);
}

void MirrorModule::publish()
{
	PeerInfo info = sm_->localInfo(nowMs());
	HeartbeatPayload p;
	p.state = static_cast<uint8_t>(info.state);
	p.subState = static_cast<uint8_t>(info.phase);
	p.inSync = info.generation.inSync;
	for (int i = 0; i < 8; i++)
		p.generation[i] = static_cast<uint8_t>(info.generation.current >> (8 * i));
	p.moduleData = encodePeerInfo(info);
	ctx_.heartbeat->setModuleState(config_.name, p);
}

void MirrorModule::onHeartbeat(NodeId peer, const PeerHeartbeat &hb, size_t network)
{
	if (peer != peerId_ || !networks_.count(network))
		return;
	if (deadIncarnations_.count(hb.incarnation))
		return;	/* sent before that skd died, delivered late */
	PeerInfo info;
	if (hb.payload.moduleData.empty())
		return;	/* the peer's module has not published its state yet */
	if (!decodePeerInfo(hb.payload.moduleData, &info)) {
		logWarn(kLog, "{}: heartbeat from node {} with malformed mirror data, ignored", config_.name, peer);
		return;
	}
	info.incarnation = hb.incarnation;
	peerLastSeen_ = EventLoop::Clock::now();
	if (!peerUp_)
		logInfo(kLog, "{}: peer {} is up ({})", config_.name, sm_->config().peer,
			stateLabel(info.state, info.phase));
	peerUp_ = true;
	peerIncarnation_ = hb.incarnation;
	bool changed = !lastPeerInfo_ || lastPeerInfo_->state != info.state ||
		       lastPeerInfo_->phase != info.phase || !(lastPeerInfo_->generation == info.generation) ||
		       lastPeerInfo_->swapRequested != info.swapRequested ||
		       lastPeerInfo_->incarnation != info.incarnation ||
		       lastPeerInfo_->resyncPercent != info.resyncPercent;
	lastPeerInfo_ = info;
	/* Every heartbeat is an event; unchanged ones are cheap for the machine. */
	(void)changed;
	feed(MirrorEvent::heartbeat(info, nowMs()));
}

void MirrorModule::onPeerDead(NodeId peer, const std::string &why)
{
	if (peer != peerId_ || !peerUp_)
		return;
	deadIncarnations_.insert(peerIncarnation_);
	peerUp_ = false;
	logWarn(kLog, "{}: peer {} lost at once: {}", config_.name, sm_->config().peer, why);
	feed(MirrorEvent::simple(MirrorEventKind::PeerLost, nowMs(), why));
}

void MirrorModule::onTick()
{
	if (peerUp_ && peerLastSeen_ && EventLoop::Clock::now() - *peerLastSeen_ > timeout_) {
		peerUp_ = false;
		logWarn(kLog, "{}: peer {} lost: no heartbeat for {} ms on any network", config_.name,
			sm_->config().peer, timeout_.count());
		feed(MirrorEvent::simple(MirrorEventKind::PeerLost, nowMs(),
					 fmt::format("no heartbeat for {} ms", timeout_.count())));
	}
	feed(MirrorEvent::simple(MirrorEventKind::Tick, nowMs()));
}

void MirrorModule::moduleLog(const std::string &line) const
{
	appendModuleLog(ctx_.logFile, ctx_.self->name, line);
}

void MirrorModule::logTransition(const MirrorTransition &t)
{
	std::string from = stateLabel(t.fromState, t.fromPhase);
	std::string to = stateLabel(t.toState, t.toPhase);
	if (t.loud)
		logWarn(kLog, "{}: {} -> {}: {}", config_.name, from, to, t.cause);
	else
		logInfo(kLog, "{}: {} -> {}: {}", config_.name, from, to, t.cause);
	moduleLog(fmt::format("{} -> {}: {}", from, to, t.cause));
	transitions_.push_back({ wallMs(), from, to, t.cause });
	while (transitions_.size() > kKeepTransitions)
		transitions_.pop_front();
}

void MirrorModule::persistAdminIntent(const std::string &intent)
{
	if (!saveAdminIntent(ctx_.stateDir, intent))
		logError(kLog, "{}: cannot record admin intent: {}", config_.name, strerror(errno));
}

std::string MirrorModule::loadAdminIntent() const
{
	return sk::loadAdminIntent(ctx_.stateDir);
}

void MirrorModule::command(const std::string &cmd, const nlohmann::json &, ControlResponder reply)
{
	static const std::map<std::string, MirrorEventKind> kinds = {
		{ "start", MirrorEventKind::AdminStart },   { "stop", MirrorEventKind::AdminStop },
		{ "prim", MirrorEventKind::AdminPrim },     { "second", MirrorEventKind::AdminSecond },
		{ "swap", MirrorEventKind::AdminSwap },     { "primforce", MirrorEventKind::AdminPrimforce },
		{ "restart", MirrorEventKind::AdminRestart },
	};
	if (cmd == "state") {
		reply(status());
		return;
	}
	if (cmd == "verify") {
		if (sm_->state() != MirrorState::Second && sm_->state() != MirrorState::Prim) {
			reply(makeError(-EINVAL, config_.name + ": verify compares a primary with its secondary (this "
							 "node is " + stateLabel(sm_->state(), sm_->phase()) + ")"));
			return;
		}
		moduleLog("admin: verify started");
		replication_->verify([this, reply](Result<nlohmann::json> r) {
			if (r)
				moduleLog(fmt::format("admin: verify done: {}",
						      r->value("identical", false) ? "identical" : "DIFFERENCES found"));
			else
				moduleLog("admin: verify failed: " + r.error().message);
			reply(std::move(r));
		});
		return;
	}
	auto it = kinds.find(cmd);
	if (it == kinds.end()) {
		reply(makeError(-EINVAL, "mirror modules do not know the command '" + cmd + "'"));
		return;
	}
	std::string before = stateLabel(sm_->state(), sm_->phase());
	auto step = feedAdmin(it->second);
	if (!step) {
		reply(makeError(step.error().code, config_.name + ": " + cmd + " refused: " + step.error().message));
		return;
	}
	if (cmd == "start" || cmd == "prim" || cmd == "primforce")
		persistAdminIntent("start");
	else if (cmd == "second")
		persistAdminIntent("second");
	else if (cmd == "stop")
		persistAdminIntent("stop");
	moduleLog(fmt::format("admin: {} ({} -> {})", cmd, before, stateLabel(sm_->state(), sm_->phase())));
	if (cmd == "primforce")
		logWarn(kLog, "{}: PRIMFORCE by the admin: this node serves whatever its data is", config_.name);
	reply(nlohmann::json{ { "module", config_.name },
			      { "command", cmd },
			      { "before", before },
			      { "after", stateLabel(sm_->state(), sm_->phase()) } });
}

nlohmann::json MirrorModule::status() const
{
	using nlohmann::json;
	json vips = json::array();
	for (const VipConfig &v : config_.vips)
		vips.push_back(fmt::format("{}/{}", v.address, v.prefixLen));
	json transitions = json::array();
	for (const TransitionRecord &t : transitions_)
		transitions.push_back({ { "at_ms", t.atMs }, { "from", t.from }, { "to", t.to }, { "cause", t.cause } });
	const Generation &g = sm_->generation();
	json peer = { { "name", sm_->config().peer }, { "id", peerId_ }, { "up", peerUp_ } };
	if (lastPeerInfo_) {
		peer["state"] = stateName(lastPeerInfo_->state);
		peer["label"] = stateLabel(lastPeerInfo_->state, lastPeerInfo_->phase);
		peer["in_sync"] = lastPeerInfo_->generation.inSync;
	}
	if (peerLastSeen_)
		peer["last_heard_ms_ago"] = std::chrono::duration_cast<std::chrono::milliseconds>(
						    EventLoop::Clock::now() - *peerLastSeen_)
						    .count();
	PeerStats ps = ctx_.heartbeat->peerStats(peerId_);
	peer["rtt_us"] = ps.rttAvgUs;
	return {
		{ "name", config_.name },
		{ "type", "mirror" },
		{ "state", stateName(sm_->state()) },
		{ "phase", phaseName(sm_->phase()) },
		{ "label", stateLabel(sm_->state(), sm_->phase()) },
		{ "nodes", config_.nodes },
		{ "vips", vips },
		{ "vips_held", vipsHeld_ },
		{ "peer", peer },
		{ "generation",
		  { { "current", fmt::format("{:016x}", g.current) },
		    { "in_sync", g.inSync },
		    { "was_primary", g.wasPrimary } } },
		{ "resync_percent", sm_->resyncPercent() },
		{ "replication", replication_->status() },
		{ "script_running", runningScript_ },
		{ "script_failures", scriptFailures_ },
		{ "split_brain", splitBrain_ ? json(*splitBrain_) : json(nullptr) },
		{ "last_error", lastError_ },
		{ "transitions", transitions },
		{ "log_file", ctx_.logFile },
		{ "checkers", checkers_->status() },
	};
}

void MirrorModule::shutdown(std::function<void()> done)
{
	if (sm_->state() == MirrorState::Stop && !scripts_->busy()) {
		done();
		return;
	}
	shutdownDone_ = std::move(done);
	/* Not persisted: skd stopping is not the admin stopping the module. */
	auto step = feedAdmin(MirrorEventKind::AdminStop);
	if (!step)
		logWarn(kLog, "{}: stop at shutdown refused: {}", config_.name, step.error().message);
	if (shutdownDone_ && sm_->state() == MirrorState::Stop && !scripts_->busy()) {
		auto cb = std::move(shutdownDone_);
		shutdownDone_ = nullptr;
		cb();
	}
}

} /* namespace sk */
