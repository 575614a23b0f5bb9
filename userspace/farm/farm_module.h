/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FarmModule: the driver of one farm module on this node. It feeds the pure
 * FarmStateMachine with heartbeats, peer loss, script results, admin commands
 * and ticks, and carries out its actions on the XDP filter, the VIP (on lo),
 * the farm interface, the ARP/ND responder and the hook scripts.
 */
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkers/module_checkers.h"
#include "cluster/heartbeat.h"
#include "core/config.h"
#include "core/event_loop.h"
#include "core/module_runtime.h"
#include "farm/arp_responder.h"
#include "farm/farm_state.h"
#include "farm/xdp_filter.h"
#include "net/announce.h"
#include "net/vip.h"
#include "net/vip_guard.h"
#include "scripts/runner.h"

namespace sk {

/*
 * Kernel-facing side of a farm module, replaceable in tests. The real one
 * (makeSystemFarmHost) works in the netns of the thread that created it.
 */
class FarmHost
{
public:
	virtual ~FarmHost() = default;

	virtual Result<int> interfaceIndex(const std::string &ifname) = 0;
	virtual Result<net::MacAddress> interfaceMac(int ifindex) = 0;
	/* Mounts bpffs when the pin root needs it, then XdpFilter::create. Called on a worker thread. */
	virtual Result<std::unique_ptr<FarmFilter>> loadFilter(const XdpFilterOptions &options) = 0;
	/* Returns the previous setting. */
	virtual Result<bool> setPromiscuous(const std::string &ifname, bool on) = 0;
	/* /proc/sys/<key>, key like "net/ipv4/conf/eth0/arp_ignore"; values without newline. */
	virtual Result<std::string> readSysctl(const std::string &key) = 0;
	virtual Status writeSysctl(const std::string &key, const std::string &value) = 0;
	virtual Status startResponder(int ifindex, const FarmResponderConfig &config) = 0;
	virtual void stopResponder() = 0;
	/* Gratuitous ARP / unsolicited NA with payloadMac in the payload, own MAC as source. */
	virtual Status announce(int ifindex, const net::IpAddress &vip, const net::MacAddress &payloadMac) = 0;
	virtual nlohmann::json responderStatus() const = 0;
};

Result<std::unique_ptr<FarmHost>> makeSystemFarmHost(EventLoop &loop);

/* Everything a farm module borrows from the daemon; all must outlive it. */
struct FarmContext {
	EventLoop *loop = nullptr;
	const ClusterConfig *cluster = nullptr;
	const NodeConfig *self = nullptr;
	Heartbeat *heartbeat = nullptr;
	net::AddressOps *addresses = nullptr;
	std::string moduleDir;		/* <modules_dir>/<name>: scripts/ lives here */
	std::string stateDir;		/* <state_dir>/<name> */
	std::string logFile;		/* <log_dir>/<name>.log */
	std::string pinRoot;		/* <bpf_pin_root>: maps go under <pinRoot>/<module> */
	/* Optional: removes the VIP from lo if skd dies, so a dead node stops accepting flows. */
	net::VipGuard *guard = nullptr;
	/* Optional: null = the real kernel (makeSystemFarmHost). Tests pass a fake. */
	FarmHost *host = nullptr;
	/* Another module's state on this node, for "module" checkers. */
	std::function<std::string(const std::string &module)> moduleState;
};

/* Locally administered unicast MAC (02:...) derived from cluster and module names. */
net::MacAddress farmDerivedMac(const std::string &cluster, const std::string &module);
/* The filter's 32-bit hash seed: FarmConfig.seed folded, or derived from the cluster name. */
uint32_t farmSeed(const FarmConfig &config, const std::string &cluster);

class FarmModule : public ModuleRuntime
{
public:
	static Result<std::unique_ptr<FarmModule>> create(const FarmContext &context, const ModuleConfig &config);
	~FarmModule() override;

	const std::string &name() const override { return config_.name; }
	void command(const std::string &cmd, const nlohmann::json &request, ControlResponder reply) override;
	nlohmann::json status() const override;
	void shutdown(std::function<void()> done) override;

	void onHeartbeat(NodeId peer, const PeerHeartbeat &hb, size_t network) override;
	void onPeerDead(NodeId peer, const std::string &why) override;
	bool serving() const override { return sm_->serving(); }
	bool running() const override { return sm_->state() != FarmState::Stop; }

	FarmState state() const { return sm_->state(); }
	FarmPhase phase() const { return sm_->phase(); }
	const FarmStateMachine &machine() const { return *sm_; }
	const net::MacAddress &virtualMac() const { return virtualMac_; }

private:
	FarmModule(const FarmContext &context, const ModuleConfig &config);

	uint64_t nowMs() const;
	void feed(const FarmEvent &event);
	Result<FarmStep> feedAdmin(FarmEventKind kind);
	void runStep(const FarmStep &step);
	void executeOne(const FarmAction &action);
	void publish();
	void onTick();
	void loadFilter();
	void onFilterLoaded(Result<std::unique_ptr<FarmFilter>> result);
	void setupVip();
	void teardownVip(bool quiet);
	void runScript(const std::string &script);
	void onCheckerDecision(const PolicyDecision &d);
	void updateCheckerRole();
	void checkAgreement();
	/* Handed over and draining out: this node's connections to the VIPs; else, or unknown, -1. */
	int64_t leavingFlows();
	void logTransition(const FarmTransition &t);
	void moduleLog(const std::string &line) const;
	void persistAdminIntent(const std::string &intent);
	std::string loadAdminIntent() const;
	ScriptContext scriptContext(const std::string &script) const;
	std::string nodeName(NodeId id) const;

	FarmContext ctx_;
	ModuleConfig config_;
	std::unique_ptr<FarmHost> ownHost_;
	FarmHost *host_ = nullptr;
	std::unique_ptr<FarmStateMachine> sm_;
	std::unique_ptr<ScriptRunner> scripts_;
	std::unique_ptr<ModuleCheckers> checkers_;
	/* A wait checker failed: out of the farm (STOP) until it clears; its checker
	 * keeps running meanwhile (reported to the policy as WAIT). */
	bool checkerHold_ = false;
	std::unique_ptr<FarmFilter> filter_;
	std::map<NodeId, std::string> names_;	/* module nodes */
	std::set<size_t> networks_;
	std::chrono::milliseconds timeout_;
	EventLoop::TimerId tickTimer_ = 0;
	net::MacAddress virtualMac_{};
	net::MacAddress ownMac_{};
	int ifindex_ = 0;
	std::vector<net::IpAddress> vips_;

	struct PeerTrack {
		std::optional<EventLoop::Clock::time_point> lastSeen;
		bool up = false;
		uint64_t incarnation = 0;
	};
	std::map<NodeId, PeerTrack> track_;
	std::set<uint64_t> deadIncarnations_;

	/* Undo records for SetupVip: restored on TeardownVip. */
	std::map<std::string, std::string> savedSysctls_;
	std::optional<bool> savedPromisc_;
	bool vipUp_ = false;
	bool responder_ = false;

	/* Asynchronous filter load (worker thread, result posted to the loop). */
	std::thread loaderThread_;
	bool loading_ = false;
	bool filterWanted_ = false;		/* LoadFilter seen, no UnloadFilter since */
	bool vipWanted_ = false;		/* SetupVip waits for the filter */
	std::optional<FarmAction> pendingOwners_;
	std::optional<FarmEvent> deferredStartDone_;
	std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

	bool feeding_ = false;
	std::deque<FarmEvent> pending_;
	std::string runningScript_;
	std::function<void()> shutdownDone_;

	/* View agreement: disagreement is logged once it outlasts a few heartbeats. */
	std::optional<EventLoop::Clock::time_point> disagreeSince_;
	bool disagreeLogged_ = false;
	uint64_t ownerUpdates_ = 0;
	/* The last owner tables put into the filter: wall ms and buckets here (when
	 * this node really started or stopped taking clients, for tests and status). */
	struct OwnerInstall {
		int64_t atUs;	/* wall clock once the table is active (tests order client attempts by it) */
		size_t mine;
	};
	std::deque<OwnerInstall> ownerInstalls_;
	bool flowCountFailed_ = false;	/* leavingFlows() logged its failure (once per streak) */
	static constexpr size_t kOwnerInstallsKept = 16;

	struct TransitionRecord {
		int64_t atMs;
		std::string from;
		std::string to;
		std::string cause;
	};
	std::deque<TransitionRecord> transitions_;
	std::string lastError_;
	uint64_t scriptFailures_ = 0;
};

} /* namespace sk */
