/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration model (cluster.json, modules/<name>/module.json) and its validation.
 * Every check collects all problems as ConfigError {file, JSON pointer, message} so a
 * user fixes a config in one pass; the loader applies the documented defaults.
 */
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace sk {

enum class ModuleType { Mirror, Farm };
enum class ReplicationMode { Sync, Async };
enum class AckLevel { Applied, Durable };
enum class CheckerType { Process, Tcp, Ping, Interface, Custom, Module };
/* When a checker runs: on the serving node(s) only, on PRIM and SECOND, or in every state. */
enum class CheckerWhen { Prim, Both, Always };
enum class CheckerAction { Restart, StopStart, Wait, None };
enum class SplitBrainPolicy { Manual, KeepPrim, DefaultPrim };
enum class WitnessType { Icmp, Tcp };
enum class FarmHash { Ip, IpPort };
/* How a farm's XDP filter attaches: see sk::XdpMode (auto picks per interface). */
enum class FarmXdpMode { Auto, Native, Generic };

/* The JSON spelling of each choice (same strings the loader accepts). Not named toString:
 * doctest finds toString() by ADL and would use it to print values. */
const char *configName(ModuleType v);
const char *configName(ReplicationMode v);
const char *configName(AckLevel v);
const char *configName(CheckerType v);
const char *configName(CheckerWhen v);
const char *configName(CheckerAction v);
const char *configName(SplitBrainPolicy v);
const char *configName(WitnessType v);
const char *configName(FarmHash v);
const char *configName(FarmXdpMode v);

/*
 * toString() spelling for callers that use it (daemon.cpp). It lives in a nested namespace
 * pulled in by a using-directive so that ordinary lookup inside sk finds it but argument
 * dependent lookup does not: doctest stringifies values with an ADL call to toString().
 */
namespace config_names {
template<typename E>
inline auto toString(E v) -> decltype(configName(v))
{
	return configName(v);
}
} /* namespace config_names */
using namespace config_names;

/* Hook scripts a module may ship in scripts/ (timeouts may be set per name). */
extern const std::vector<std::string> kScriptNames;

/* ---- cluster.json ---- */

struct NodeConfig {
	std::string name;
	uint32_t id = 0;				/* 1..255, unique: goes on the wire */
	std::map<std::string, std::string> addresses;	/* network -> canonical IP text */
};

struct PortsConfig {
	uint16_t heartbeat = 7400;
	uint16_t replication = 7401;
	uint16_t http = 7480;
};

/* http.listen value meaning "this node's address on the first cluster network": one
 * cluster.json for every node, and each node's console can reach the others. */
inline constexpr const char *kHttpListenSelf = "self";

struct HttpConfig {
	bool enabled = false;		/* true when the "http" section is present */
	std::string listen = "127.0.0.1";	/* an address, or kHttpListenSelf */
	std::string tlsCert;		/* both or neither */
	std::string tlsKey;
	std::string tokenFile;		/* empty: no bearer token */
};

struct PathsConfig {
	std::string modulesDir = "/etc/sk/modules";
	std::string stateDir = "/var/lib/sk";
	std::string runDir = "/run/sk";
	std::string bpfPinRoot = "/sys/fs/bpf/sk";
	std::string logDir = "/var/log/sk";
};

struct ClusterConfig {
	std::string file;		/* where it was loaded from */
	std::string name;
	std::string keyFile;
	std::vector<std::string> networks;
	std::vector<NodeConfig> nodes;
	PortsConfig ports;
	HttpConfig http;
	PathsConfig paths;

	const NodeConfig *findNode(std::string_view nodeName) const;
	bool hasNetwork(std::string_view network) const;
};

/* ---- module.json ---- */

/* Named apart from cluster/heartbeat.h's HeartbeatConfig (the runtime settings of the layer). */
struct ModuleHeartbeatConfig {
	std::vector<std::string> networks;	/* default: every cluster network */
	uint32_t intervalMs = 500;
	uint32_t timeoutMs = 3000;
};

struct VipConfig {
	std::string address;		/* canonical IP text, no prefix */
	int family = 0;			/* AF_INET or AF_INET6 */
	uint32_t prefixLen = 0;
	std::string interface;		/* farm: defaults to farm.interface */
};

struct ReplicatedDir {
	std::string path;		/* absolute, normalised, not "/" */
	std::vector<std::string> include;	/* glob patterns; empty: everything */
	std::vector<std::string> exclude;
};

struct ReplicationConfig {
	ReplicationMode mode = ReplicationMode::Sync;
	AckLevel ack = AckLevel::Durable;
	bool perWrite = false;
	uint32_t blockSize = 65536;
	bool tls = false;
	std::vector<ReplicatedDir> dirs;
};

struct CheckerConfig {
	std::string name;
	CheckerType type = CheckerType::Process;
	CheckerWhen when = CheckerWhen::Prim;
	CheckerAction action = CheckerAction::Restart;
	uint32_t intervalMs = 1000;
	uint32_t timeoutMs = 500;
	/* Type-specific; only the fields of `type` are set. */
	std::string processName;	/* process */
	uint32_t minCount = 1;		/* process */
	std::string address;		/* tcp, ping (canonical IP text) */
	uint16_t port = 0;		/* tcp */
	std::string interface;		/* interface */
	std::string script;		/* custom: name in scripts/ or absolute path */
	std::string module;		/* module */
	std::vector<std::string> states;	/* module: STOP WAIT ALONE PRIM SECOND UP */
};

struct ScriptsConfig {
	uint32_t timeoutMs = 30000;
	std::map<std::string, uint32_t> timeouts;	/* per script name, overrides timeoutMs */

	uint32_t timeoutFor(const std::string &script) const;
};

struct FailoverConfig {
	std::string defaultPrim;	/* mirror only; empty: none */
	bool autoSwapBack = false;	/* needs defaultPrim */
	uint32_t maxLoop = 3;
	uint32_t loopIntervalS = 86400;
	SplitBrainPolicy splitBrain = SplitBrainPolicy::Manual;
};

struct WitnessConfig {
	bool enabled = false;		/* true when the "witness" section is present */
	std::string address;
	WitnessType type = WitnessType::Icmp;
	uint16_t port = 0;		/* tcp only */
	uint32_t timeoutMs = 1000;
};

struct FarmConfig {
	std::string interface;
	FarmHash hash = FarmHash::Ip;
	std::vector<uint16_t> ports;	/* empty: every port */
	uint32_t buckets = 1024;
	std::map<std::string, uint32_t> weights;	/* node -> 1..1000; absent nodes weigh 1 */
	std::string virtualMac;		/* lower-case "02:..."; empty: derived by the farm driver */
	bool hasSeed = false;
	uint64_t seed = 0;
	FarmXdpMode xdpMode = FarmXdpMode::Auto;
	/* Connections of a bucket that moved between live nodes stay with their node this long. */
	uint32_t drainMs = 5000;

	uint32_t weightOf(const std::string &node) const;
};

struct ModuleConfig {
	std::string file;
	std::string name;
	ModuleType type = ModuleType::Mirror;
	std::vector<std::string> nodes;
	ModuleHeartbeatConfig heartbeat;
	std::vector<VipConfig> vips;
	ReplicationConfig replication;	/* mirror only */
	std::vector<CheckerConfig> checkers;
	ScriptsConfig scripts;
	FailoverConfig failover;
	WitnessConfig witness;
	FarmConfig farm;		/* farm only */
};

/* A node's whole configuration: the cluster plus every module in paths.modulesDir. */
struct NodeConfiguration {
	ClusterConfig cluster;
	std::vector<ModuleConfig> modules;
};

/* ---- loading and checking ---- */

struct ConfigError {
	std::string file;
	std::string path;		/* JSON pointer, e.g. /vips/0/address; "" for the whole document */
	std::string message;		/* "found X, expected Y" style */
	int line = 0;			/* set for JSON syntax errors (1-based) */
	int column = 0;
};

/* "FILE: /json/path: message", or "FILE:LINE:COL: message" for syntax errors. */
std::string formatConfigError(const ConfigError &e);

/*
 * Parse + structural + semantic checks; appends ALL problems to *errors (may be null).
 * On any problem the Result is an error (-EINVAL, or -errno when the file cannot be read)
 * whose message is the first problem and the count.
 */
Result<ClusterConfig> loadClusterConfig(const std::string &file, std::vector<ConfigError> *errors);
Result<ClusterConfig> parseClusterConfig(std::string_view text, const std::string &file,
					 std::vector<ConfigError> *errors);

/* cluster may be null: then cross-references (nodes, networks, node addresses) are not checked. */
Result<ModuleConfig> loadModuleConfig(const std::string &file, const ClusterConfig *cluster,
				      std::vector<ConfigError> *errors);
Result<ModuleConfig> parseModuleConfig(std::string_view text, const std::string &file,
				       const ClusterConfig *cluster, std::vector<ConfigError> *errors);

/*
 * Checks between the modules of one node: names unique, a replicated directory (or one
 * nested in it) in one module only, a VIP in one module only, module checkers name an
 * existing module (only when completeSet: the list is every module of the node).
 * Appends to *errors; returns the number of problems found.
 */
size_t checkModuleSet(const std::vector<ModuleConfig> &modules, std::vector<ConfigError> *errors,
		      bool completeSet = true);

/*
 * cluster.json + every <modules_dir>/<name>/module.json (directory name must equal the
 * module name), with cluster cross-references and checkModuleSet().
 */
Result<NodeConfiguration> loadNodeConfiguration(const std::string &clusterFile,
						std::vector<ConfigError> *errors);

/*
 * `skctl config check FILE...`: decides per file whether it is a module (has a "type"
 * key) or a cluster config, checks cluster files first and uses the cluster (when exactly
 * one is given) for the modules' cross-references; also checkModuleSet() over the modules.
 */
Status checkConfigFiles(const std::vector<std::string> &files, std::vector<ConfigError> *errors);

/* " (did you mean "x"?)" when word is plausibly a typo of one of candidates, else "". */
std::string didYouMean(std::string_view word, const std::vector<std::string> &candidates);

} /* namespace sk */
