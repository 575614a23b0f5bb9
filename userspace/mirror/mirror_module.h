/* SPDX-License-Identifier: Apache-2.0 */
/*
 * MirrorModule: the driver of one mirror module on this node. It feeds the
 * pure MirrorStateMachine with heartbeats, timers, script results, witness
 * probes and admin commands, and carries out its actions (generation store,
 * VIPs, hook scripts, replication). All of it runs on the daemon's loop thread.
 */
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkers/module_checkers.h"
#include "cluster/heartbeat.h"
#include "core/config.h"
#include "core/event_loop.h"
#include "core/module_runtime.h"
#include "mirror/generation.h"
#include "mirror/state_machine.h"
#include "net/announce.h"
#include "net/vip.h"
#include "net/vip_guard.h"
#include "scripts/runner.h"

namespace sk {

/*
 * The replication side of a mirror module, as the driver sees it. The driver
 * forwards the state machine's replication actions here; the implementation
 * reports back through the callbacks. A module without replicated directories
 * uses the trivial implementation (nothing to copy: resync completes at once).
 */
class MirrorReplication
{
public:
	struct Callbacks {
		std::function<void(int percent)> progress;
		std::function<void()> resyncDone;
		std::function<void(const std::string &reason)> resyncFailed;
		std::function<void(const std::string &reason)> replicationLost;
	};

	virtual ~MirrorReplication() = default;
	virtual void setCallbacks(Callbacks callbacks) = 0;
	virtual void startSource() = 0;
	virtual void startTarget(ResyncMode mode, bool quarantine) = 0;
	virtual void stop() = 0;
	virtual void startDirtyTracking(const Generation &generation) = 0;
	virtual void stopDirtyTracking() = 0;
	virtual nlohmann::json status() const = 0;
	/*
	 * Online verify (skctl verify), on the in-sync secondary: both sides hash their
	 * copy, compared at a barrier; done runs on the loop thread with the report.
	 */
	virtual void verify(std::function<void(Result<nlohmann::json>)> done)
	{
		done(makeError(-ENOTSUP, "this module replicates no directory: nothing to verify"));
	}
};

/* For modules that replicate no directory: every resync is complete at once. */
std::unique_ptr<MirrorReplication> makeNoDataReplication(EventLoop &loop);

/* Everything a mirror module borrows from the daemon; all must outlive it. */
struct MirrorContext {
	EventLoop *loop = nullptr;
	const ClusterConfig *cluster = nullptr;
	const NodeConfig *self = nullptr;
	Heartbeat *heartbeat = nullptr;
	net::AddressOps *addresses = nullptr;
	net::Announcer *announcer = nullptr;
	net::VipGuard *guard = nullptr;		/* removes our VIPs if skd dies */
	/* Another module's state on this node, for "module" checkers. */
	std::function<std::string(const std::string &module)> moduleState;
	std::string moduleDir;		/* <modules_dir>/<name>: scripts/ lives here */
	std::string stateDir;		/* <state_dir>/<name> */
	std::string logFile;		/* <log_dir>/<name>.log */
};

/* The mirror part of a heartbeat: PeerInfo in a compact, bounded encoding. */
std::vector<uint8_t> encodePeerInfo(const PeerInfo &info);
/* Returns false on malformed input (wrong size or version, bad enum values). */
bool decodePeerInfo(std::span<const uint8_t> data, PeerInfo *info);

class MirrorModule : public ModuleRuntime
{
public:
	static Result<std::unique_ptr<MirrorModule>> create(const MirrorContext &context,
							    const ModuleConfig &config,
							    std::unique_ptr<MirrorReplication> replication);
	~MirrorModule() override;

	const std::string &name() const override { return config_.name; }
	void command(const std::string &cmd, const nlohmann::json &request, ControlResponder reply) override;
	nlohmann::json status() const override;
	void shutdown(std::function<void()> done) override;

	void onHeartbeat(NodeId peer, const PeerHeartbeat &hb, size_t network) override;
	void onPeerDead(NodeId peer, const std::string &why) override;
	bool serving() const override { return sm_->serving(); }
	bool running() const override { return sm_->state() != MirrorState::Stop; }

	NodeId peerId() const { return peerId_; }
	MirrorState state() const { return sm_->state(); }

private:
	MirrorModule(const MirrorContext &context, const ModuleConfig &config);

	uint64_t nowMs() const;
	void feed(const MirrorEvent &event);
	Result<MirrorStep> feedAdmin(MirrorEventKind kind);
	void execute(const std::vector<MirrorAction> &actions);
	void executeOne(const MirrorAction &action);
	void publish();
	void onTick();
	void addVips();
	void removeVips(bool quiet);
	void runScript(const std::string &script);
	void probeWitness();
	void logTransition(const MirrorTransition &t);
	void moduleLog(const std::string &line) const;
	void persistAdminIntent(const std::string &intent);
	std::string loadAdminIntent() const;
	ScriptContext scriptContext(const std::string &script) const;

	MirrorContext ctx_;
	ModuleConfig config_;
	std::unique_ptr<MirrorStateMachine> sm_;
	std::unique_ptr<GenerationStore> store_;
	std::unique_ptr<ScriptRunner> scripts_;
	std::unique_ptr<MirrorReplication> replication_;
	std::unique_ptr<ModuleCheckers> checkers_;
	/* Cleared on destruction: callbacks posted to the loop check it first. */
	std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
	void updateCheckers();
	void onCheckerDecision(const PolicyDecision &decision);
	NodeId peerId_ = 0;
	std::set<size_t> networks_;		/* heartbeat network indexes this module listens on */
	std::chrono::milliseconds timeout_;
	EventLoop::TimerId tickTimer_ = 0;

	/* Peer liveness, judged by this module's own timeout over its own networks. */
	std::optional<EventLoop::Clock::time_point> peerLastSeen_;
	bool peerUp_ = false;
	uint64_t peerIncarnation_ = 0;
	std::set<uint64_t> deadIncarnations_;	/* confirmed dead: their late heartbeats are ignored */
	std::optional<PeerInfo> lastPeerInfo_;

	bool feeding_ = false;
	std::deque<MirrorEvent> pending_;
	bool vipsHeld_ = false;
	std::string runningScript_;
	std::function<void()> shutdownDone_;
	std::unique_ptr<class Probe> witnessProbe_;

	struct TransitionRecord {
		int64_t atMs;		/* wall clock, ms since the epoch */
		std::string from;
		std::string to;
		std::string cause;
	};
	std::deque<TransitionRecord> transitions_;
	std::optional<std::string> splitBrain_;
	std::string lastError_;
	uint64_t scriptFailures_ = 0;
	uint64_t vipMoves_ = 0;
};

} /* namespace sk */
