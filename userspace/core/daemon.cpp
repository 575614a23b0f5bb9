/* SPDX-License-Identifier: Apache-2.0 */
/*
 * skd's body: configuration, control socket, signals, the heartbeat layer and
 * the module runtimes, and the status document. Everything runs on one loop.
 * Teardown order (reverse of build): modules, announcer, addresses, heartbeat.
 */
#include "core/daemon.h"
#include "core/log.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cluster/key.h"
#include "cluster/peer_link.h"
#include "cluster/wire.h"
#include "mirror/mirror_module.h"
#include "farm/farm_module.h"
#include "net/announce.h"
#include "net/vip.h"
#include "net/vip_guard.h"
#include "replication/mirror_replication.h"

namespace sk {

namespace {

LogCategory kLog("daemon");

int64_t unixSeconds(std::chrono::system_clock::time_point t)
{
	return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

/* mkdir -p with mode for the last component; existing directories are fine. */
Status makeDirs(const std::string &path, mode_t mode)
{
	size_t pos = 0;
	while (pos != std::string::npos) {
		pos = path.find('/', pos + 1);
		std::string partial = path.substr(0, pos);
		if (partial.empty())
			continue;
		if (mkdir(partial.c_str(), pos == std::string::npos ? mode : 0755) < 0 && errno != EEXIST)
			return makeError(-errno, errnoMessage("cannot create directory " + partial, errno));
	}
	return {};
}

bool moduleHasNode(const ModuleConfig &m, const std::string &node)
{
	return std::find(m.nodes.begin(), m.nodes.end(), node) != m.nodes.end();
}

} /* namespace */

std::string Daemon::fileDigest(const std::string &file) const
{
	std::ifstream in(file, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	std::string text = ss.str();
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr);
	std::string out;
	for (unsigned i = 0; i < len; i++)
		out += fmt::format("{:02x}", md[i]);
	return out;
}

Result<NodeConfiguration> Daemon::loadConfiguration(std::vector<ConfigError> *errors) const
{
	auto cfg = loadNodeConfiguration(options_.configFile, errors);
	if (!cfg)
		return cfg;

	PathsConfig &p = cfg->cluster.paths;
	if (!options_.stateDir.empty())
		p.stateDir = options_.stateDir;
	if (!options_.runDir.empty())
		p.runDir = options_.runDir;
	if (!options_.bpfPinRoot.empty())
		p.bpfPinRoot = options_.bpfPinRoot;
	if (!options_.logDir.empty())
		p.logDir = options_.logDir;
	return cfg;
}

Result<std::unique_ptr<Daemon>> Daemon::create(const DaemonOptions &options, std::vector<ConfigError> *errors)
{
	std::unique_ptr<Daemon> d(new Daemon());
	d->options_ = options;
	auto cfg = d->loadConfiguration(errors);
	if (!cfg)
		return cfg.error();
	d->config_ = std::move(cfg.value());

	std::string nodeName = options.nodeName;
	if (nodeName.empty()) {
		char host[HOST_NAME_MAX + 1] = "";
		gethostname(host, sizeof(host));
		nodeName = host;
	}
	d->self_ = d->config_.cluster.findNode(nodeName);
	if (!d->self_)
		return makeError(-ENOENT, "this node '" + nodeName + "' is not among the nodes of " +
						  options.configFile + "; pass --node NAME");

	const PathsConfig &p = d->config_.cluster.paths;
	for (const std::string &dir : { p.runDir, p.stateDir, p.logDir }) {
		Status s = makeDirs(dir, 0700);
		if (!s)
			return s.error();
	}

	/* Forked now, while skd has no thread: it removes our VIPs if skd dies. */
	auto guard = net::VipGuard::start(p.runDir + "/held-vips");
	if (!guard)
		return guard.error();
	d->guard_ = std::move(guard.value());

	auto inc = nextIncarnation(p.stateDir + "/incarnation");
	if (!inc)
		return inc.error();
	d->incarnation_ = inc.value();

	auto loop = EventLoop::create();
	if (!loop)
		return loop.error();
	d->loop_ = std::move(loop.value());

	std::string sock = options.socketPath.empty() ? p.runDir + "/skd.sock" : options.socketPath;
	auto control = ControlServer::create(d->loop_.get(), sock);
	if (!control)
		return control.error();
	d->control_ = std::move(control.value());

	Status rt = d->buildRuntime();
	if (!rt)
		return rt.error();

	d->startedAt_ = d->loadedAt_ = std::chrono::system_clock::now();
	d->registerHandlers();
	return d;
}

Daemon::~Daemon()
{
	teardownRuntime();
}

Status Daemon::buildRuntime()
{
	const ClusterConfig &c = config_.cluster;
	clusterDigest_ = fileDigest(c.file.empty() ? options_.configFile : c.file);
	moduleDigests_.clear();
	for (const ModuleConfig &m : config_.modules)
		moduleDigests_[m.file] = fileDigest(m.file);

	auto key = ClusterKey::load(c.keyFile);
	if (!key)
		return key.error();

	/* One heartbeat layer for the node; each module judges its peer by its own timeout. */
	HeartbeatConfig hc;
	hc.nodeId = self_->id;
	hc.clusterId = clusterIdFromName(c.name);
	hc.incarnation = incarnation_;
	hc.port = c.ports.heartbeat;
	uint32_t interval = 0;
	std::set<std::string> peers;
	for (const ModuleConfig &m : config_.modules) {
		if (!moduleHasNode(m, self_->name))
			continue;
		hc.modules.push_back(m.name);
		interval = interval ? std::min(interval, m.heartbeat.intervalMs) : m.heartbeat.intervalMs;
		for (const std::string &n : m.nodes)
			if (n != self_->name)
				peers.insert(n);
	}
	hc.interval = std::chrono::milliseconds(interval ? interval : 500);
	/* The layer's own loss report is not used for decisions; keep it lenient. */
	hc.timeout = hc.interval * 6;
	for (const std::string &net : c.networks) {
		HeartbeatNetwork hn;
		hn.name = net;
		auto it = self_->addresses.find(net);
		if (it == self_->addresses.end())
			continue;
		hn.localAddress = it->second;
		for (const NodeConfig &n : c.nodes) {
			if (!peers.count(n.name))
				continue;
			auto a = n.addresses.find(net);
			if (a != n.addresses.end())
				hn.peers.push_back({ n.id, a->second, 0 });
		}
		hc.networks.push_back(hn);
	}

	Heartbeat::Callbacks cb;
	cb.peerSeen = [this](const std::string &module, NodeId peer, const PeerHeartbeat &hb, size_t network) {
		auto it = byName_.find(module);
		if (it != byName_.end())
			it->second->onHeartbeat(peer, hb, network);
	};
	cb.peerLost = [](const std::string &, NodeId) {};
	cb.networkDown = [this](size_t net) {
		logWarn(kLog, "heartbeat network {} is down (no peer heard on it)", heartbeat_->networkName(net));
	};
	cb.networkUp = [this](size_t net) {
		logInfo(kLog, "heartbeat network {} is up", heartbeat_->networkName(net));
	};
	auto hb = Heartbeat::create(*loop_, key.value(), hc, cb);
	if (!hb)
		return hb.error();
	heartbeat_ = std::move(hb.value());

	/* Instant detection of a peer skd that died on a live kernel. */
	PeerLinkConfig pl;
	pl.port = c.ports.heartbeat;
	for (const std::string &net : c.networks) {
		auto it = self_->addresses.find(net);
		if (it != self_->addresses.end())
			pl.localAddresses.push_back(it->second);
	}
	for (const NodeConfig &n : c.nodes) {
		if (!peers.count(n.name))
			continue;
		PeerLinkConfig::Peer peer;
		peer.id = n.id;
		for (const std::string &net : c.networks) {
			auto a = n.addresses.find(net);
			if (a != n.addresses.end())
				peer.addresses.push_back(a->second);
		}
		pl.peers.push_back(peer);
	}
	auto link = PeerLink::create(*loop_, pl, [this](NodeId peer, const std::string &why) { onLinkBroken(peer, why); });
	if (!link)
		return link.error();
	peerLink_ = std::move(link.value());

	auto addrs = net::NetlinkAddressOps::open();
	if (!addrs)
		return addrs.error();
	addresses_ = std::move(addrs.value());
	auto frames = net::PacketSocketSender::open();
	if (!frames)
		return frames.error();
	frames_ = std::move(frames.value());
	announcer_ = std::make_unique<net::Announcer>(*loop_, *frames_);

	for (const ModuleConfig &m : config_.modules) {
		if (moduleHasNode(m, self_->name) && m.type == ModuleType::Farm) {
			FarmContext fc;
			fc.loop = loop_.get();
			fc.cluster = &config_.cluster;
			fc.self = self_;
			fc.heartbeat = heartbeat_.get();
			fc.addresses = addresses_.get();
			fc.guard = guard_.get();	/* removes the VIP from lo if skd dies */
			fc.moduleDir = c.paths.modulesDir + "/" + m.name;
			fc.stateDir = c.paths.stateDir + "/" + m.name;
			fc.logFile = c.paths.logDir + "/" + m.name + ".log";
			fc.pinRoot = c.paths.bpfPinRoot;
			fc.moduleState = [this](const std::string &name) { return moduleStateOf(name); };
			auto fm = FarmModule::create(fc, m);
			if (!fm)
				return fm.error();
			byName_[m.name] = fm.value().get();
			modules_.push_back(std::move(fm.value()));
			continue;
		}
		if (!moduleHasNode(m, self_->name) || m.type != ModuleType::Mirror) {
			modules_.push_back(nullptr);
			continue;
		}
		MirrorContext mc;
		mc.loop = loop_.get();
		mc.cluster = &config_.cluster;
		mc.self = self_;
		mc.heartbeat = heartbeat_.get();
		mc.addresses = addresses_.get();
		mc.announcer = announcer_.get();
		mc.guard = guard_.get();
		mc.moduleState = [this](const std::string &name) { return moduleStateOf(name); };
		mc.moduleDir = c.paths.modulesDir + "/" + m.name;
		mc.stateDir = c.paths.stateDir + "/" + m.name;
		mc.logFile = c.paths.logDir + "/" + m.name + ".log";
		std::unique_ptr<MirrorReplication> repl;
		if (m.replication.dirs.empty()) {
			repl = makeNoDataReplication(*loop_);
		} else {
			SyncReplicationContext rc;
			rc.loop = loop_.get();
			rc.cluster = &config_.cluster;
			rc.self = self_;
			for (const std::string &n : m.nodes)
				if (n != self_->name)
					rc.peer = c.findNode(n);
			rc.module = &m;
			rc.stateDir = mc.stateDir;
			auto r = makeSyncReplication(rc);
			if (!r)
				return makeError(r.error().code, "module " + m.name + ": " + r.error().message);
			repl = std::move(r.value());
		}
		auto mod = MirrorModule::create(mc, m, std::move(repl));
		if (!mod)
			return mod.error();
		mirrors_[m.name] = mod.value().get();
		byName_[m.name] = mod.value().get();
		modules_.push_back(std::move(mod.value()));
	}
	return {};
}

void Daemon::teardownRuntime()
{
	mirrors_.clear();
	byName_.clear();
	while (!modules_.empty())
		modules_.pop_back();
	announcer_.reset();
	frames_.reset();
	addresses_.reset();
	peerLink_.reset();
	heartbeat_.reset();
}

void Daemon::onLinkBroken(NodeId peer, const std::string &why)
{
	/*
	 * Confirm before acting: a refused probe on every network means the peer's
	 * kernel is up and nothing listens, i.e. its skd is gone. Anything else
	 * (an answer, or silence) leaves the decision to the heartbeat timeout.
	 */
	int ret = heartbeat_->probe(peer, std::chrono::milliseconds(300), [this, peer, why](const ProbeOutcome &o) {
		logInfo(kLog, "probe of node {} after link loss ({}): {}", peer, why, probeResultName(o.result));
		if (o.result != ProbeResult::Refused)
			return;
		for (auto &[name, m] : byName_)
			m->onPeerDead(peer, "skd on the peer died (" + why + ", heartbeat port unreachable)");
	});
	if (ret < 0)
		logWarn(kLog, "cannot probe node {}: {}", peer, strerror(-ret));
}

bool Daemon::anyModuleRunning() const
{
	for (const auto &[name, m] : byName_)
		if (m->running())
			return true;
	return false;
}

void Daemon::registerHandlers()
{
	control_->handle("status", [this](const nlohmann::json &, ControlResponder reply) { reply(status()); });
	control_->handle("version", [](const nlohmann::json &, ControlResponder reply) {
		reply(nlohmann::json{ { "version", SK_VERSION } });
	});
	control_->handle("reload", [this](const nlohmann::json &, ControlResponder reply) {
		Status s = reload();
		if (s)
			reply(nlohmann::json{ { "reloaded", true }, { "reloads", reloads_ } });
		else
			reply(s.error());
	});
	control_->handle("module", [this](const nlohmann::json &req, ControlResponder reply) {
		moduleCommand(req, std::move(reply));
	});
}

void Daemon::moduleCommand(const nlohmann::json &req, ControlResponder reply)
{
	using nlohmann::json;
	auto action = req.find("action");
	if (action == req.end() || !action->is_string()) {
		reply(makeError(-EINVAL, "module request without a string \"action\""));
		return;
	}
	std::string name;
	if (req.contains("module")) {
		if (!req["module"].is_string()) {
			reply(makeError(-EINVAL, "\"module\" must be a string"));
			return;
		}
		name = req["module"].get<std::string>();
	}
	if (stopping_) {
		reply(makeError(-ESHUTDOWN, "skd is shutting down"));
		return;
	}

	std::vector<ModuleRuntime *> targets;
	for (size_t i = 0; i < config_.modules.size(); i++) {
		const ModuleConfig &m = config_.modules[i];
		if (!name.empty() && m.name != name)
			continue;
		if (!modules_[i]) {
			if (!name.empty()) {
				reply(makeError(-ENOTSUP, moduleHasNode(m, self_->name)
								  ? "module " + name + ": " + configName(m.type) +
									    " modules are not supported by this build yet"
								  : "module " + name + " does not run on node " + self_->name));
				return;
			}
			continue;
		}
		targets.push_back(modules_[i].get());
	}
	if (targets.empty()) {
		reply(makeError(-ENOENT, name.empty() ? "no module runs on this node"
						      : "no module named '" + name + "' (see skctl status)"));
		return;
	}

	/* Collect one result per module; the reply goes out when all have answered. */
	struct Gather {
		json results = json::array();
		std::vector<std::string> errors;
		size_t left;
		ControlResponder reply;
	};
	auto g = std::make_shared<Gather>();
	g->left = targets.size();
	g->reply = std::move(reply);
	std::string act = action->get<std::string>();
	logInfo(kLog, "admin {} on {} from {}", act, name.empty() ? "every module" : name,
		req.value("origin", "skctl (control socket)"));
	for (ModuleRuntime *t : targets) {
		t->command(act, req, [g](Result<json> r) {
			if (r)
				g->results.push_back(std::move(r.value()));
			else
				g->errors.push_back(r.error().message);
			if (--g->left > 0)
				return;
			if (!g->errors.empty()) {
				std::string msg;
				for (const std::string &e : g->errors)
					msg += (msg.empty() ? "" : "\n") + e;
				g->reply(makeError(-EINVAL, msg));
			} else {
				g->reply(g->results);
			}
		});
	}
}

std::optional<bool> Daemon::moduleServing(const std::string &name) const
{
	auto it = byName_.find(name);
	if (it == byName_.end())
		return std::nullopt;
	return it->second->serving();
}

Status Daemon::reload()
{
	std::vector<ConfigError> errors;
	auto cfg = loadConfiguration(&errors);
	if (!cfg) {
		lastReloadErrors_.clear();
		std::string text = "reload rejected, the running configuration stays:";
		for (const ConfigError &e : errors) {
			lastReloadErrors_.push_back(formatConfigError(e));
			logError(kLog, "reload: {}", formatConfigError(e));
			text += "\n  " + formatConfigError(e);
		}
		if (errors.empty())
			text += "\n  " + cfg.error().message;
		return makeError(-EINVAL, text);
	}
	if (!cfg->cluster.findNode(self_->name))
		return makeError(-EINVAL, "reload rejected: node '" + self_->name +
						  "' is no longer in the cluster configuration");

	/* Did anything change that the running modules depend on? */
	bool changed = fileDigest(options_.configFile) != clusterDigest_ ||
		       cfg->modules.size() != config_.modules.size();
	for (const ModuleConfig &m : cfg->modules) {
		auto it = moduleDigests_.find(m.file);
		if (it == moduleDigests_.end() || it->second != fileDigest(m.file))
			changed = true;
	}
	if (changed && anyModuleRunning()) {
		std::string msg = "reload rejected: the configuration changed while modules are running; "
				  "stop them first (skctl stop), then reload";
		lastReloadErrors_ = { msg };
		logError(kLog, "{}", msg);
		return makeError(-EBUSY, msg);
	}

	std::string selfName = self_->name;
	if (changed) {
		teardownRuntime();
		config_ = std::move(cfg.value());
		self_ = config_.cluster.findNode(selfName);
		Status s = buildRuntime();
		if (!s) {
			logError(kLog, "reload: cannot start the new configuration: {}", s.error().message);
			lastReloadErrors_ = { s.error().message };
			return s;
		}
	}
	lastReloadErrors_.clear();
	reloads_++;
	loadedAt_ = std::chrono::system_clock::now();
	logInfo(kLog, "configuration reloaded ({} modules{})", config_.modules.size(),
		changed ? ", runtime rebuilt" : ", unchanged");
	return {};
}

namespace {

std::string firstNetworkAddress(const ClusterConfig &c, const NodeConfig &n)
{
	if (c.networks.empty())
		return {};
	auto a = n.addresses.find(c.networks.front());
	return a == n.addresses.end() ? std::string() : a->second;
}

} /* namespace */

std::string Daemon::selfAddress() const
{
	return self_ ? firstNetworkAddress(config_.cluster, *self_) : std::string();
}

nlohmann::json Daemon::status() const
{
	using nlohmann::json;
	auto now = std::chrono::system_clock::now();
	json modules = json::array();
	for (size_t i = 0; i < config_.modules.size(); i++) {
		const ModuleConfig &m = config_.modules[i];
		if (modules_.size() > i && modules_[i]) {
			modules.push_back(modules_[i]->status());
			continue;
		}
		json vips = json::array();
		for (const VipConfig &v : m.vips)
			vips.push_back(v.address + "/" + std::to_string(v.prefixLen));
		modules.push_back({
			{ "name", m.name },
			{ "type", configName(m.type) },
			{ "state", "STOP" },
			{ "label", "STOP" },
			{ "nodes", m.nodes },
			{ "vips", vips },
			{ "note", moduleHasNode(m, self_->name) ? "not supported by this build yet"
								 : "does not run on this node" },
		});
	}
	/* Where the console finds every node's status (the first network's address). */
	json clusterNodes = json::array();
	/* Every node serves as this one does (one cluster.json): TLS or not. */
	const char *scheme = config_.cluster.http.tlsCert.empty() ? "http" : "https";
	for (const NodeConfig &n : config_.cluster.nodes) {
		std::string addr = firstNetworkAddress(config_.cluster, n);
		std::string host = addr.find(':') != std::string::npos ? "[" + addr + "]" : addr;
		clusterNodes.push_back({ { "name", n.name },
					 { "id", n.id },
					 { "http_url", host.empty() ? "" : fmt::format("{}://{}:{}", scheme, host,
										       config_.cluster.ports.http) } });
	}
	json hb = nullptr;
	if (heartbeat_) {
		const HeartbeatCounters &c = heartbeat_->counters();
		json nets = json::array();
		for (size_t n = 0; n < heartbeat_->networkCount(); n++)
			nets.push_back({ { "name", heartbeat_->networkName(n) }, { "up", heartbeat_->networkIsUp(n) } });
		hb = { { "networks", nets },
		       { "sent", c.sent },
		       { "received", c.received },
		       { "dropped", c.dropped.total() },
		       { "incarnation", heartbeat_->incarnation() } };
	}
	return {
		{ "schema", "sk.status/1" },
		{ "version", SK_VERSION },
		{ "cluster", config_.cluster.name },
		{ "node", { { "name", self_->name }, { "id", self_->id } } },
		{ "pid", getpid() },
		{ "started_at", unixSeconds(startedAt_) },
		{ "uptime_s", unixSeconds(now) - unixSeconds(startedAt_) },
		{ "config",
		  { { "file", options_.configFile },
		    { "loaded_at", unixSeconds(loadedAt_) },
		    { "reloads", reloads_ },
		    { "last_reload_errors", lastReloadErrors_ } } },
		{ "heartbeat", hb },
		{ "cluster_nodes", clusterNodes },
		{ "modules", modules },
	};
}

void Daemon::beginShutdown()
{
	if (stopping_)
		return;
	stopping_ = true;
	/* Stop every module (scripts, VIPs) before the loop ends; bounded by the script timeouts. */
	auto left = std::make_shared<size_t>(0);
	for (auto &m : modules_)
		if (m)
			(*left)++;
	if (*left == 0) {
		loop_->stop();
		return;
	}
	for (auto &m : modules_) {
		if (!m)
			continue;
		m->shutdown([this, left] {
			if (--*left == 0)
				loop_->post([this] { loop_->stop(); });
		});
	}
}

int Daemon::run()
{
	loop_->watchSignal(SIGTERM, [this] {
		logInfo(kLog, "SIGTERM: stopping the modules, then skd");
		beginShutdown();
	});
	loop_->watchSignal(SIGINT, [this] {
		logInfo(kLog, "SIGINT: stopping the modules, then skd");
		beginShutdown();
	});
	loop_->watchSignal(SIGHUP, [this] {
		logInfo(kLog, "SIGHUP: reloading {}", options_.configFile);
		Status s = reload();
		if (!s)
			logError(kLog, "{}", s.error().message);
	});
	signal(SIGPIPE, SIG_IGN);

	logInfo(kLog, "skd {} running as node {} (id {}) of cluster {}, {} module(s), control socket {}",
		SK_VERSION, self_->name, self_->id, config_.cluster.name, config_.modules.size(),
		control_->path());
	int ret = loop_->run();
	logInfo(kLog, "stopped");
	return ret < 0 ? 1 : exitCode_;
}

} /* namespace sk */
