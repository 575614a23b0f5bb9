/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Daemon: what skd is once its flags are parsed. Loads the node configuration,
 * owns the event loop, the control socket and the module runtimes, handles
 * SIGTERM (clean stop) and SIGHUP (reload: an invalid new config is rejected
 * with its errors and the running one stays).
 */
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/control.h"
#include "cluster/heartbeat.h"
#include "core/config.h"
#include "core/module_runtime.h"
#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

class MirrorModule;
namespace net {
class NetlinkAddressOps;
class PacketSocketSender;
class Announcer;
class VipGuard;
}

struct DaemonOptions {
	std::string configFile = "/etc/sk/cluster.json";
	std::string nodeName;		/* empty: the node whose name is the host name */
	/* Overrides of cluster.json paths (tests run many nodes on one machine). */
	std::string socketPath;		/* default: <run_dir>/skd.sock */
	std::string stateDir;
	std::string runDir;
	std::string bpfPinRoot;
	std::string logDir;
};

class Daemon
{
public:
	/* Loads and checks the configuration; errors lists every problem found. */
	static Result<std::unique_ptr<Daemon>> create(const DaemonOptions &options,
						      std::vector<ConfigError> *errors);
	~Daemon();

	/* Runs until SIGTERM/SIGINT or a "shutdown" request; returns the exit code. */
	int run();

	/* The status document shared by `skctl status --json` and GET /api/v1/status. */
	nlohmann::json status() const;

	/* Re-reads the configuration; keeps the running one when the new one is invalid. */
	Status reload();

	/* For the HTTP front end (skd's main); all of these run on the loop thread. */
	EventLoop &loop() { return *loop_; }
	const ClusterConfig &cluster() const { return config_.cluster; }
	/* This node's address on the cluster's first network ("" if none). */
	std::string selfAddress() const;
	/* {"action": ..., "module": ... (optional), "origin": ...}; see skctl's module commands. */
	void moduleCommand(const nlohmann::json &request, ControlResponder reply);
	/* nullopt: no such module on this node. */
	std::optional<bool> moduleServing(const std::string &name) const;

private:
	Daemon() = default;

	Result<NodeConfiguration> loadConfiguration(std::vector<ConfigError> *errors) const;
	void registerHandlers();
	/* Heartbeat layer and module runtimes for config_; teardown in reverse. */
	Status buildRuntime();
	void teardownRuntime();
	bool anyModuleRunning() const;
	void beginShutdown();
	std::string fileDigest(const std::string &file) const;
	void onLinkBroken(NodeId peer, const std::string &why);

	DaemonOptions options_;
	NodeConfiguration config_;
	const NodeConfig *self_ = nullptr;
	std::unique_ptr<EventLoop> loop_;
	std::unique_ptr<ControlServer> control_;
	std::unique_ptr<Heartbeat> heartbeat_;
	std::unique_ptr<class PeerLink> peerLink_;
	std::unique_ptr<net::NetlinkAddressOps> addresses_;
	std::unique_ptr<net::PacketSocketSender> frames_;
	std::unique_ptr<net::Announcer> announcer_;
	std::unique_ptr<net::VipGuard> guard_;
	/* In config_.modules order; null for modules this node is not part of. */
	std::vector<std::unique_ptr<ModuleRuntime>> modules_;
	std::map<std::string, MirrorModule *> mirrors_;
	std::map<std::string, ModuleRuntime *> byName_;	/* every running module runtime */
	/* A module's state on this node ("STOP" when unknown), for "module" checkers. */
	std::string moduleStateOf(const std::string &name) const
	{
		auto it = byName_.find(name);
		return it == byName_.end() ? std::string("STOP") : it->second->status().value("state", "STOP");
	}
	std::map<std::string, std::string> moduleDigests_;	/* file -> content digest */
	std::string clusterDigest_;
	uint64_t incarnation_ = 0;
	bool stopping_ = false;
	std::chrono::system_clock::time_point startedAt_;
	std::chrono::system_clock::time_point loadedAt_;
	unsigned reloads_ = 0;
	std::vector<std::string> lastReloadErrors_;
	int exitCode_ = 0;
};

} /* namespace sk */
