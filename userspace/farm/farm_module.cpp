/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm module driver. Invariants:
 *  - events reach the state machine one at a time, in order (feed() queues
 *    events raised while a step's actions are being carried out);
 *  - the VIP sits on lo (never on the farm interface) only while the XDP filter
 *    is loaded, so the kernel never sees a VIP flow the filter did not admit;
 *    the farm interface has arp_ignore=1 / arp_announce=2, so the kernel never
 *    answers ARP for it (IPv6 ND only answers for addresses on the receiving
 *    interface): only the responder node answers, with the virtual MAC;
 *  - the farm interface is promiscuous while the VIP is set up, so frames to
 *    the virtual MAC reach XDP, which rewrites owned ones to this node's MAC.
 */
#include "farm/farm_module.h"

#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "core/log.h"
#include "core/module_files.h"
#include "farm/buckets.h"
#include "farm/local_flows.h"

namespace sk {

namespace {

LogCategory kLog("farm");

constexpr size_t kKeepTransitions = 50;
constexpr const char *kBpfFsMount = "/sys/fs/bpf";

int64_t wallUs()
{
	return std::chrono::duration_cast<std::chrono::microseconds>(
		       std::chrono::system_clock::now().time_since_epoch())
		.count();
}

int64_t wallMs()
{
	return wallUs() / 1000;
}

uint64_t fnv1a64(std::string_view s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (unsigned char c : s) {
		h ^= c;
		h *= 0x100000001b3ull;
	}
	return h;
}

bool parseMac(const std::string &text, net::MacAddress *mac)
{
	unsigned b[6];
	char tail;
	if (sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
		return false;
	for (int i = 0; i < 6; i++) {
		if (b[i] > 0xff)
			return false;
		(*mac)[i] = static_cast<uint8_t>(b[i]);
	}
	return true;
}

bool bpffsMounted()
{
	std::ifstream in("/proc/mounts");
	std::string dev, dir, type;
	std::string rest;
	while (in >> dev >> dir >> type) {
		std::getline(in, rest);
		if (dir == kBpfFsMount && type == "bpf")
			return true;
	}
	return false;
}

/* The real kernel: ioctl for promiscuous mode, /proc/sys, XdpFilter, AF_PACKET. */
class SystemFarmHost : public FarmHost
{
public:
	explicit SystemFarmHost(EventLoop &loop) : loop_(loop) {}

	Status init()
	{
		auto sender = net::PacketSocketSender::open();
		if (!sender)
			return sender.error();
		sender_ = std::move(sender.value());
		announcer_ = std::make_unique<net::Announcer>(loop_, *sender_);
		ioctlFd_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (ioctlFd_ < 0)
			return makeError(-errno, errnoMessage("farm: control socket", -errno));
		return {};
	}

	~SystemFarmHost() override
	{
		responder_.reset();
		announcer_.reset();
		if (ioctlFd_ >= 0)
			close(ioctlFd_);
	}

	Result<int> interfaceIndex(const std::string &ifname) override { return net::interfaceIndex(ifname); }

	Result<net::MacAddress> interfaceMac(int ifindex) override { return sender_->hardwareAddress(ifindex); }

	Result<std::unique_ptr<FarmFilter>> loadFilter(const XdpFilterOptions &options) override
	{
		if (options.pinRoot.rfind(kBpfFsMount, 0) == 0 && !bpffsMounted()) {
			if (mount("bpf", kBpfFsMount, "bpf", 0, nullptr) < 0 && errno != EBUSY)
				return makeError(-errno, errnoMessage(std::string("cannot mount bpffs at ") + kBpfFsMount, -errno));
			logInfo(kLog, "mounted bpffs at {}", kBpfFsMount);
		}
		auto f = XdpFilter::create(options);
		if (!f)
			return f.error();
		return std::unique_ptr<FarmFilter>(std::move(f.value()));
	}

	Result<bool> setPromiscuous(const std::string &ifname, bool on) override
	{
		struct ifreq ifr {};
		if (ifname.size() >= IFNAMSIZ)
			return makeError(-EINVAL, "interface name too long: " + ifname);
		std::memcpy(ifr.ifr_name, ifname.c_str(), ifname.size());
		if (ioctl(ioctlFd_, SIOCGIFFLAGS, &ifr) < 0)
			return makeError(-errno, errnoMessage("SIOCGIFFLAGS " + ifname, -errno));
		bool was = ifr.ifr_flags & IFF_PROMISC;
		if (was == on)
			return was;
		if (on)
			ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_PROMISC);
		else
			ifr.ifr_flags = static_cast<short>(ifr.ifr_flags & ~IFF_PROMISC);
		if (ioctl(ioctlFd_, SIOCSIFFLAGS, &ifr) < 0)
			return makeError(-errno, errnoMessage("SIOCSIFFLAGS " + ifname, -errno));
		return was;
	}

	Result<std::string> readSysctl(const std::string &key) override
	{
		std::string path = "/proc/sys/" + key;
		std::ifstream in(path);
		std::string v;
		if (!in || !std::getline(in, v))
			return makeError(-ENOENT, "cannot read " + path);
		return v;
	}

	Status writeSysctl(const std::string &key, const std::string &value) override
	{
		std::string path = "/proc/sys/" + key;
		int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			return makeError(-errno, errnoMessage("cannot open " + path, -errno));
		ssize_t n = write(fd, value.data(), value.size());
		int err = errno;
		close(fd);
		if (n != static_cast<ssize_t>(value.size()))
			return makeError(-err, errnoMessage("cannot write " + path, -err));
		return {};
	}

	Status startResponder(int ifindex, const FarmResponderConfig &config) override
	{
		responder_.reset();
		auto r = ArpResponder::create(loop_, ifindex, config);
		if (!r)
			return r.error();
		responder_ = std::move(r.value());
		return {};
	}

	void stopResponder() override { responder_.reset(); }

	Status announce(int ifindex, const net::IpAddress &vip, const net::MacAddress &payloadMac) override
	{
		net::AnnounceOptions o;
		o.payloadMac = payloadMac;
		return announcer_->announce(ifindex, vip, o);
	}

	nlohmann::json responderStatus() const override
	{
		if (!responder_)
			return nullptr;
		const FarmResponderCounters &c = responder_->counters();
		return { { "received", c.received }, { "answered", c.answered }, { "send_errors", c.sendErrors },
			 { "announce_frames", announcer_->framesSent() } };
	}

private:
	EventLoop &loop_;
	std::unique_ptr<net::PacketSocketSender> sender_;
	std::unique_ptr<net::Announcer> announcer_;
	std::unique_ptr<ArpResponder> responder_;
	int ioctlFd_ = -1;
};

} /* namespace */

Result<std::unique_ptr<FarmHost>> makeSystemFarmHost(EventLoop &loop)
{
	auto h = std::make_unique<SystemFarmHost>(loop);
	Status s = h->init();
	if (!s)
		return s.error();
	return std::unique_ptr<FarmHost>(std::move(h));
}

net::MacAddress farmDerivedMac(const std::string &cluster, const std::string &module)
{
	uint64_t h = fnv1a64(cluster + "/" + module);
	net::MacAddress mac;
	mac[0] = 0x02;	/* locally administered, unicast */
	for (int i = 1; i < 6; i++)
		mac[i] = static_cast<uint8_t>(h >> (8 * (i - 1)));
	return mac;
}

uint32_t farmSeed(const FarmConfig &config, const std::string &cluster)
{
	uint64_t v = config.hasSeed ? config.seed : fnv1a64("sk-farm-seed/" + cluster);
	return static_cast<uint32_t>(v ^ (v >> 32));
}

FarmModule::FarmModule(const FarmContext &context, const ModuleConfig &config)
	: ctx_(context), config_(config), timeout_(config.heartbeat.timeoutMs)
{
}

Result<std::unique_ptr<FarmModule>> FarmModule::create(const FarmContext &context, const ModuleConfig &config)
{
	if (config.type != ModuleType::Farm)
		return makeError(-EINVAL, "module " + config.name + " is not a farm module");
	std::unique_ptr<FarmModule> m(new FarmModule(context, config));

	if (context.host) {
		m->host_ = context.host;
	} else {
		auto h = makeSystemFarmHost(*context.loop);
		if (!h)
			return makeError(h.error().code, "module " + config.name + ": " + h.error().message);
		m->ownHost_ = std::move(h.value());
		m->host_ = m->ownHost_.get();
	}

	FarmMachineConfig mc;
	mc.self = context.self->id;
	bool selfIn = false;
	for (const std::string &n : config.nodes) {
		const NodeConfig *node = context.cluster->findNode(n);
		if (!node)
			return makeError(-EINVAL, "module " + config.name + ": node " + n + " is not in the cluster");
		m->names_[node->id] = n;
		mc.weights[node->id] = config.farm.weightOf(n);
		selfIn |= node->id == context.self->id;
	}
	if (!selfIn)
		return makeError(-EINVAL, "module " + config.name + ": this node (" + context.self->name +
						  ") is not one of its nodes");
	mc.buckets = config.farm.buckets;
	mc.seed = farmSeed(config.farm, context.cluster->name);
	mc.leaveTimeoutMs = std::max<uint64_t>(config.heartbeat.timeoutMs, 1000);
	mc.drainMs = config.farm.drainMs;

	if (config.farm.virtualMac.empty())
		m->virtualMac_ = farmDerivedMac(context.cluster->name, config.name);
	else if (!parseMac(config.farm.virtualMac, &m->virtualMac_))
		return makeError(-EINVAL, "module " + config.name + ": bad virtual_mac " + config.farm.virtualMac);

	for (const VipConfig &v : config.vips) {
		auto a = net::parseIpAddress(v.address);
		if (!a)
			return makeError(-EINVAL, "module " + config.name + ": " + a.error().message);
		if (!v.interface.empty() && v.interface != config.farm.interface)
			return makeError(-ENOTSUP, "module " + config.name + ": VIP " + v.address + " is on " + v.interface +
							   "; a farm balances on one interface (" + config.farm.interface + ")");
		m->vips_.push_back(*a);
	}

	for (size_t i = 0; i < context.cluster->networks.size(); i++) {
		const std::string &net = context.cluster->networks[i];
		if (config.heartbeat.networks.empty() ||
		    std::find(config.heartbeat.networks.begin(), config.heartbeat.networks.end(), net) !=
			    config.heartbeat.networks.end())
			m->networks_.insert(i);
	}

	if (mkdir(context.stateDir.c_str(), 0700) < 0 && errno != EEXIST)
		return makeError(-errno, errnoMessage("cannot create " + context.stateDir, -errno));

	ScriptRunnerOptions so;
	so.module = config.name;
	so.scriptDir = context.moduleDir + "/scripts";
	so.logFile = context.logFile;
	so.timeout = std::chrono::milliseconds(config.scripts.timeoutMs);
	auto runner = ScriptRunner::create(*context.loop, so);
	if (!runner)
		return runner.error();
	m->scripts_ = std::move(runner.value());

	m->sm_ = std::make_unique<FarmStateMachine>(mc);

	auto checkers = ModuleCheckers::create(*context.loop, config, context.moduleDir, context.moduleState,
					      context.self ? context.self->name : std::string(), context.stateDir);
	if (!checkers)
		return checkers.error();
	m->checkers_ = std::move(checkers.value());
	FarmModule *checked = m.get();
	m->checkers_->setDecisionCallback([checked](const PolicyDecision &d) { checked->onCheckerDecision(d); });

	/* Not started yet: a VIP on lo is a crashed skd's leftover and would accept unfiltered flows. */
	m->teardownVip(true);

	int ret = context.heartbeat->addModule(config.name);
	if (ret < 0 && ret != -EEXIST)
		return makeError(ret, errnoMessage("heartbeat for module " + config.name, ret));
	m->publish();

	FarmModule *self = m.get();
	m->tickTimer_ = context.loop->addPeriodic(std::chrono::milliseconds(config.heartbeat.intervalMs),
						  [self] { self->onTick(); });

	logInfo(kLog, "{}: loaded, {} node(s), interface {}, {} buckets, hash {}, virtual MAC {}", config.name,
		config.nodes.size(), config.farm.interface, config.farm.buckets, configName(config.farm.hash),
		net::formatMac(m->virtualMac_));

	if (m->loadAdminIntent() == "start") {
		logInfo(kLog, "{}: resuming 'start' as before skd restarted", config.name);
		auto r = m->feedAdmin(FarmEventKind::AdminStart);
		if (!r)
			logWarn(kLog, "{}: could not resume: {}", config.name, r.error().message);
	}
	return m;
}

FarmModule::~FarmModule()
{
	if (checkers_)
		checkers_->stopAll();
	ctx_.loop->cancelTimer(tickTimer_);
	/* A load in flight finishes first; its posted result then finds alive_ cleared and is dropped. */
	*alive_ = false;
	if (loaderThread_.joinable())
		loaderThread_.join();
	/* Destroyed without shutdown(): never leave an unfiltered VIP behind. */
	if (filter_ || vipUp_) {
		host_->stopResponder();
		teardownVip(false);
		filter_.reset();
	}
	scripts_.reset();
	ctx_.heartbeat->removeModule(config_.name);
}

uint64_t FarmModule::nowMs() const
{
	return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
					     EventLoop::Clock::now().time_since_epoch())
					     .count());
}

std::string FarmModule::nodeName(NodeId id) const
{
	auto it = names_.find(id);
	return it == names_.end() ? fmt::format("node{}", id) : it->second;
}

void FarmModule::feed(const FarmEvent &event)
{
	pending_.push_back(event);
	if (feeding_)
		return;
	feeding_ = true;
	while (!pending_.empty()) {
		FarmEvent e = std::move(pending_.front());
		pending_.pop_front();
		auto step = sm_->handle(e);
		if (!step) {
			logWarn(kLog, "{}: {} refused: {}", config_.name, farmEventName(e.kind), step.error().message);
			continue;
		}
		runStep(*step);
	}
	feeding_ = false;
	if (shutdownDone_ && sm_->state() == FarmState::Stop && !scripts_->busy()) {
		auto done = std::move(shutdownDone_);
		shutdownDone_ = nullptr;
		done();
	}
}

Result<FarmStep> FarmModule::feedAdmin(FarmEventKind kind)
{
	if (feeding_)
		return makeError(-EBUSY, "module is busy handling another event; try again");
	feeding_ = true;
	auto step = sm_->handle(FarmEvent::admin(kind, nowMs()));
	if (step)
		runStep(*step);
	feeding_ = false;
	if (!pending_.empty()) {
		FarmEvent next = std::move(pending_.front());
		pending_.pop_front();
		feed(next);
	}
	return step;
}

void FarmModule::runStep(const FarmStep &step)
{
	for (const FarmTransition &t : step.transitions)
		logTransition(t);
	bool publishNeeded = false;
	for (const FarmAction &a : step.actions) {
		if (a.kind == FarmActionKind::Publish)
			publishNeeded = true;
		else
			executeOne(a);
	}
	/* Once per step, after the data plane changed: peers learn our view only when it is installed. */
	if (publishNeeded)
		publish();
	if (!step.transitions.empty())
		updateCheckerRole();
}

/* UP serves (prim checkers run) once start_both is done; a checker hold reads as WAIT. */
void FarmModule::updateCheckerRole()
{
	ModuleRole role = ModuleRole::Stop;
	switch (sm_->state()) {
	case FarmState::Stop: role = checkerHold_ ? ModuleRole::Wait : ModuleRole::Stop; break;
	case FarmState::Wait: role = ModuleRole::Wait; break;
	case FarmState::Up: role = ModuleRole::Up; break;
	}
	checkers_->setRole(role, sm_->phase() == FarmPhase::Running);
}

/*
 * restart and stopstart: leave the farm (buckets handed to the others), stop and
 * start the app, rejoin; the policy escalates repeated restarts to stopstart,
 * which for a farm is the same trip out and back. wait: leave and stay out until
 * the checker clears (not persisted: the admin's intent stays "start").
 */
void FarmModule::onCheckerDecision(const PolicyDecision &d)
{
	if (d.kind == PolicyDecisionKind::Report)
		return;
	moduleLog("checker " + d.checker + ": " + d.cause);
	auto alive = alive_;
	/* Posted: decisions may arrive from inside setRole(), i.e. while feeding. */
	ctx_.loop->post([this, alive, d] {
		if (!*alive)
			return;
		switch (d.kind) {
		case PolicyDecisionKind::Restart:
		case PolicyDecisionKind::StopStart:
			feed(FarmEvent::checkerFailed(d.checker, nowMs()));
			break;
		case PolicyDecisionKind::Wait:
			if (sm_->state() == FarmState::Stop || checkerHold_)
				break;
			checkerHold_ = true;
			if (auto step = feedAdmin(FarmEventKind::AdminStop); !step)
				logWarn(kLog, "{}: checker hold: {}", config_.name, step.error().message);
			updateCheckerRole();
			break;
		case PolicyDecisionKind::Resume:
			if (!checkerHold_)
				break;
			checkerHold_ = false;
			updateCheckerRole();
			if (loadAdminIntent() == "stop" || shutdownDone_)
				break;
			if (auto step = feedAdmin(FarmEventKind::AdminStart); !step)
				logWarn(kLog, "{}: rejoining after the checker hold: {}", config_.name,
					step.error().message);
			break;
		case PolicyDecisionKind::Report:
			break;
		}
	});
}

void FarmModule::executeOne(const FarmAction &a)
{
	logDebug(kLog, "{}: action {}", config_.name, describeFarmAction(a));
	switch (a.kind) {
	case FarmActionKind::LoadFilter:
		filterWanted_ = true;
		loadFilter();
		break;
	case FarmActionKind::UnloadFilter:
		filterWanted_ = false;
		pendingOwners_.reset();
		if (filter_) {
			filter_.reset();
			logInfo(kLog, "{}: XDP filter removed from {}", config_.name, config_.farm.interface);
		}
		break;
	case FarmActionKind::SetOwners: {
		if (!filter_) {
			if (loading_)
				pendingOwners_ = a;	/* installed as soon as the filter is there */
			break;
		}
		Status s = filter_->setOwnerTable(a.owners, a.drainFrom);
		if (!s) {
			lastError_ = "cannot install the owner table: " + s.error().message;
			logError(kLog, "{}: {}", config_.name, lastError_);
			break;
		}
		ownerUpdates_++;
		ownerInstalls_.push_back({ wallUs(), static_cast<size_t>(std::count(a.owners.begin(), a.owners.end(),
										      ctx_.self->id)) });
		if (ownerInstalls_.size() > kOwnerInstallsKept)
			ownerInstalls_.pop_front();
		std::vector<std::string> up;
		for (NodeId id : a.upSet)
			up.push_back(nodeName(id));
		size_t mine = static_cast<size_t>(std::count(a.owners.begin(), a.owners.end(), ctx_.self->id));
		logInfo(kLog, "{}: owners installed: UP set [{}], {} of {} buckets here, digest {:016x}", config_.name,
			fmt::join(up, ","), mine, a.owners.size(), a.digest);
		break;
	}
	case FarmActionKind::SetupVip:
		/* Never local before the filter is in front of it. */
		if (loading_)
			vipWanted_ = true;
		else
			setupVip();
		break;
	case FarmActionKind::TeardownVip:
		vipWanted_ = false;
		teardownVip(false);
		break;
	case FarmActionKind::BecomeResponder: {
		FarmResponderConfig rc{ ownMac_, virtualMac_, vips_ };
		Status s = ifindex_ ? host_->startResponder(ifindex_, rc)
				    : Status(makeError(-ENODEV, "farm interface not resolved"));
		if (!s) {
			lastError_ = "cannot answer ARP/ND for the VIP: " + s.error().message;
			logError(kLog, "{}: {}", config_.name, lastError_);
			break;
		}
		responder_ = true;
		logInfo(kLog, "{}: this node now answers ARP/ND for the VIP(s)", config_.name);
		moduleLog("ARP/ND responder: this node");
		break;
	}
	case FarmActionKind::StopResponder:
		host_->stopResponder();
		if (responder_)
			logInfo(kLog, "{}: no longer answering ARP/ND", config_.name);
		responder_ = false;
		break;
	case FarmActionKind::Announce:
		for (const net::IpAddress &v : vips_) {
			Status s = host_->announce(ifindex_, v, virtualMac_);
			if (!s)
				logWarn(kLog, "{}: VIP {} not announced: {}", config_.name, net::formatIpAddress(v),
					s.error().message);
		}
		break;
	case FarmActionKind::RunScript:
		runScript(a.script);
		break;
	case FarmActionKind::Publish:
		publish();
		break;
	}
}

void FarmModule::loadFilter()
{
	auto fail = [this](const std::string &why) {
		lastError_ = why;
		logError(kLog, "{}: {}; stopping the module", config_.name, why);
		moduleLog(why);
		pending_.push_back(FarmEvent::admin(FarmEventKind::AdminStop, nowMs()));
	};
	auto idx = host_->interfaceIndex(config_.farm.interface);
	if (!idx)
		return fail("farm interface: " + idx.error().message);
	ifindex_ = *idx;
	auto mac = host_->interfaceMac(ifindex_);
	if (!mac)
		return fail("farm interface MAC: " + mac.error().message);
	ownMac_ = *mac;

	XdpFilterOptions o;
	o.module = config_.name;
	o.pinRoot = ctx_.pinRoot;
	o.ifindex = ifindex_;
	/* skd holds its lock: a farm filter already there is a dead skd's. */
	o.replaceStale = true;
	o.hashMode = config_.farm.hash == FarmHash::IpPort ? FarmHashMode::IpPort : FarmHashMode::Ip;
	o.buckets = config_.farm.buckets;
	o.seed = sm_->config().seed;
	o.nodeId = ctx_.self->id;
	o.mac = ownMac_;
	switch (config_.farm.xdpMode) {
	case FarmXdpMode::Auto:
		o.mode = XdpMode::Auto;
		break;
	case FarmXdpMode::Native:
		o.mode = XdpMode::Native;
		break;
	case FarmXdpMode::Generic:
		o.mode = XdpMode::Generic;
		break;
	}

	/*
	 * Loaded on a worker thread: verification takes long enough on a busy host to stall
	 * every module's heartbeats, and on the loop thread io_uring task work raises
	 * TIF_NOTIFY_SIGNAL, which the verifier takes for a pending signal (-EAGAIN, and
	 * libbpf's retries hit it again). Threads share the netns: the attach lands here.
	 */
	if (loaderThread_.joinable())
		loaderThread_.join();
	loading_ = true;
	auto alive = alive_;
	FarmHost *host = host_;
	EventLoop *loop = ctx_.loop;
	loaderThread_ = std::thread([this, alive, host, loop, o] {
		auto result = std::make_shared<Result<std::unique_ptr<FarmFilter>>>(host->loadFilter(o));
		loop->post([this, alive, result] {
			if (*alive)
				onFilterLoaded(std::move(*result));
		});
	});
}

void FarmModule::onFilterLoaded(Result<std::unique_ptr<FarmFilter>> result)
{
	loading_ = false;
	if (loaderThread_.joinable())
		loaderThread_.join();
	auto deferred = std::move(deferredStartDone_);
	deferredStartDone_.reset();
	auto fail = [this, &deferred](const std::string &why) {
		lastError_ = why;
		logError(kLog, "{}: {}; stopping the module", config_.name, why);
		moduleLog(why);
		filter_.reset();
		vipWanted_ = false;
		pendingOwners_.reset();
		feed(FarmEvent::admin(FarmEventKind::AdminStop, nowMs()));
		if (deferred)
			feed(*deferred);
	};
	if (!filterWanted_) {
		/* Stopped while loading: the result (if any) detaches as it goes out of scope. */
		if (deferred)
			feed(*deferred);
		return;
	}
	if (!result)
		return fail("cannot load the XDP filter: " + result.error().message);
	filter_ = std::move(result.value());

	FarmVipSet set;
	for (const net::IpAddress &v : vips_) {
		FarmVip fv;
		fv.address.family = v.family == AF_INET ? 4 : 6;
		fv.address.bytes = v.bytes;
		set.vips.push_back(fv);
	}
	for (uint16_t p : config_.farm.ports) {
		set.globalPorts.push_back({ 6, p });
		set.globalPorts.push_back({ 17, p });
	}
	Status s = filter_->setVips(set);
	if (!s)
		return fail("cannot set the filter's VIPs: " + s.error().message);
	logInfo(kLog, "{}: XDP filter on {} ({} VIP(s), node MAC {})", config_.name, config_.farm.interface,
		vips_.size(), net::formatMac(ownMac_));
	if (pendingOwners_) {
		FarmAction a = std::move(*pendingOwners_);
		pendingOwners_.reset();
		executeOne(a);
	}
	if (vipWanted_) {
		vipWanted_ = false;
		setupVip();
	}
	/* UP only now: start_both finished while the filter was still loading. */
	if (deferred)
		feed(*deferred);
}

void FarmModule::setupVip()
{
	const std::string &ifname = config_.farm.interface;
	/* Kernel must not answer ARP for the VIP (it is on lo): reply only for addresses of the
	 * receiving interface, and never use the VIP as the source of our own ARP requests. */
	const std::pair<const char *, const char *> knobs[] = { { "arp_ignore", "1" }, { "arp_announce", "2" } };
	for (const auto &[knob, value] : knobs) {
		std::string key = fmt::format("net/ipv4/conf/{}/{}", ifname, knob);
		auto old = host_->readSysctl(key);
		if (old && !savedSysctls_.count(key))
			savedSysctls_[key] = *old;
		Status s = host_->writeSysctl(key, value);
		if (!s)
			logWarn(kLog, "{}: {} (the kernel may answer ARP for the VIP)", config_.name, s.error().message);
	}
	auto was = host_->setPromiscuous(ifname, true);
	if (!was)
		logWarn(kLog, "{}: cannot make {} promiscuous: {} (frames to the virtual MAC may be lost)",
			config_.name, ifname, was.error().message);
	else if (!savedPromisc_)
		savedPromisc_ = *was;

	auto lo = host_->interfaceIndex("lo");
	if (ctx_.guard) {
		std::vector<std::string> held;
		for (const net::IpAddress &v : vips_)
			held.push_back(fmt::format("lo {}/{}", net::formatIpAddress(v), v.family == AF_INET ? 32 : 128));
		Status g = ctx_.guard->setHeld(config_.name, held);
		if (!g)
			logWarn(kLog, "{}: VIP guard not updated: {}", config_.name, g.error().message);
	}
	for (const net::IpAddress &v : vips_) {
		net::IpPrefix p{ v, static_cast<uint8_t>(v.family == AF_INET ? 32 : 128) };
		Status s = !lo ? Status(lo.error()) : ctx_.addresses->add(*lo, p, net::AddOptions{ false });
		if (!s) {
			lastError_ = fmt::format("cannot add VIP {} on lo: {}", net::formatIpAddress(v), s.error().message);
			logError(kLog, "{}: {}", config_.name, lastError_);
			pending_.push_back(FarmEvent::admin(FarmEventKind::AdminStop, nowMs()));
			continue;
		}
		logInfo(kLog, "{}: VIP {} local (on lo)", config_.name, net::formatIpPrefix(p));
	}
	vipUp_ = true;
}

void FarmModule::teardownVip(bool quiet)
{
	auto lo = host_->interfaceIndex("lo");
	for (const net::IpAddress &v : vips_) {
		if (!lo)
			break;
		auto has = ctx_.addresses->has(*lo, v);
		if (has && !*has)
			continue;
		Status s = ctx_.addresses->remove(*lo, v);
		if (!s)
			logError(kLog, "{}: cannot remove VIP {} from lo: {}", config_.name, net::formatIpAddress(v),
				 s.error().message);
		else if (quiet)
			logWarn(kLog, "{}: removed VIP {} left on lo by an earlier run", config_.name, net::formatIpAddress(v));
		else
			logInfo(kLog, "{}: VIP {} removed from lo", config_.name, net::formatIpAddress(v));
	}
	if (ctx_.guard)
		(void)ctx_.guard->setHeld(config_.name, {});
	for (const auto &[key, value] : savedSysctls_) {
		Status s = host_->writeSysctl(key, value);
		if (!s)
			logWarn(kLog, "{}: cannot restore {}: {}", config_.name, key, s.error().message);
	}
	savedSysctls_.clear();
	if (savedPromisc_) {
		auto r = host_->setPromiscuous(config_.farm.interface, *savedPromisc_);
		if (!r)
			logWarn(kLog, "{}: cannot restore promiscuous mode of {}: {}", config_.name, config_.farm.interface,
				r.error().message);
		savedPromisc_.reset();
	}
	vipUp_ = false;
}

ScriptContext FarmModule::scriptContext(const std::string &script) const
{
	ScriptContext c;
	c.node = ctx_.self->name;
	c.role = farmStateName(sm_->state());
	std::vector<std::string> up;
	for (NodeId id : sm_->advertisedMembers())
		up.push_back(nodeName(id));
	c.peer = fmt::format("{}", fmt::join(up, " "));
	c.peerState = "";
	c.stateDir = ctx_.stateDir;
	for (const net::IpAddress &v : vips_)
		c.vips.push_back(net::formatIpAddress(v));
	c.extra.push_back({ "SK_SCRIPT", script });
	c.extra.push_back({ "SK_CLUSTER", ctx_.cluster->name });
	c.extra.push_back({ "SK_FARM_INTERFACE", config_.farm.interface });
	return c;
}

void FarmModule::runScript(const std::string &script)
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
		FarmEvent done = FarmEvent::scriptDone(r.script, ok, nowMs());
		if (loading_ && r.script == "start_both") {
			deferredStartDone_ = done;	/* UP waits for the filter */
			return;
		}
		feed(done);
	}, timeout);
}

void FarmModule::publish()
{
	HeartbeatPayload p;
	p.state = static_cast<uint8_t>(sm_->state());
	p.subState = static_cast<uint8_t>(sm_->phase());
	p.viewDigest = sm_->viewDigest();
	for (NodeId id : sm_->advertisedMembers())
		p.members.push_back({ id, static_cast<uint8_t>(FarmState::Up) });
	ctx_.heartbeat->setModuleState(config_.name, p);
}

void FarmModule::onHeartbeat(NodeId peer, const PeerHeartbeat &hb, size_t network)
{
	if (!names_.count(peer) || peer == ctx_.self->id || !networks_.count(network))
		return;
	if (deadIncarnations_.count(hb.incarnation))
		return;	/* sent before that skd died, delivered late */
	const HeartbeatPayload &p = hb.payload;
	if (p.state > static_cast<uint8_t>(FarmState::Up) || p.subState > static_cast<uint8_t>(FarmPhase::Stopping)) {
		logWarn(kLog, "{}: heartbeat from {} with unknown farm state {}/{}, ignored", config_.name,
			nodeName(peer), p.state, p.subState);
		return;
	}
	FarmPeerView v;
	v.state = static_cast<FarmState>(p.state);
	v.phase = static_cast<FarmPhase>(p.subState);
	v.digest = p.viewDigest;
	for (const MemberState &ms : p.members)
		if (ms.state == static_cast<uint8_t>(FarmState::Up))
			v.members.push_back(ms.node);
	PeerTrack &t = track_[peer];
	t.lastSeen = EventLoop::Clock::now();
	if (!t.up)
		logInfo(kLog, "{}: node {} heard ({})", config_.name, nodeName(peer), farmStateLabel(v.state, v.phase));
	t.up = true;
	t.incarnation = hb.incarnation;
	feed(FarmEvent::heartbeat(peer, v, nowMs()));
}

void FarmModule::onPeerDead(NodeId peer, const std::string &why)
{
	auto it = track_.find(peer);
	if (it == track_.end() || !it->second.up)
		return;
	deadIncarnations_.insert(it->second.incarnation);
	it->second.up = false;
	logWarn(kLog, "{}: node {} lost at once: {}", config_.name, nodeName(peer), why);
	moduleLog(fmt::format("node {} lost: {}", nodeName(peer), why));
	feed(FarmEvent::peerLost(peer, why, nowMs()));
}

void FarmModule::onTick()
{
	auto now = EventLoop::Clock::now();
	for (auto &[peer, t] : track_) {
		if (!t.up || !t.lastSeen || now - *t.lastSeen <= timeout_)
			continue;
		t.up = false;
		std::string why = fmt::format("no heartbeat for {} ms on any network", timeout_.count());
		logWarn(kLog, "{}: node {} lost: {}", config_.name, nodeName(peer), why);
		moduleLog(fmt::format("node {} lost: {}", nodeName(peer), why));
		feed(FarmEvent::peerLost(peer, why, nowMs()));
	}
	feed(FarmEvent::tick(nowMs(), leavingFlows()));
	checkAgreement();
}

int64_t FarmModule::leavingFlows()
{
	if (!sm_->drainingOut())
		return -1;
	auto n = farmCountLocalFlows(vips_);
	if (!n) {
		if (!flowCountFailed_)
			logWarn(kLog, "{}: cannot count the connections left to drain: {}", config_.name,
				n.error().message);
		flowCountFailed_ = true;
		return -1;
	}
	flowCountFailed_ = false;
	return static_cast<int64_t>(*n);
}

void FarmModule::checkAgreement()
{
	auto now = EventLoop::Clock::now();
	if (sm_->viewsAgree()) {
		if (disagreeLogged_)
			logInfo(kLog, "{}: all nodes agree on the bucket assignment again ({:016x})", config_.name,
				sm_->viewDigest());
		disagreeSince_.reset();
		disagreeLogged_ = false;
		return;
	}
	if (!disagreeSince_)
		disagreeSince_ = now;
	/* Views differ for up to one heartbeat after every change; only a lasting split matters. */
	if (!disagreeLogged_ && now - *disagreeSince_ >= 2 * std::chrono::milliseconds(config_.heartbeat.intervalMs)) {
		std::vector<std::string> views;
		for (const auto &[id, v] : sm_->peers())
			if (v.alive && v.state != FarmState::Stop)
				views.push_back(fmt::format("{}={:016x}", nodeName(id), v.digest));
		logWarn(kLog, "{}: bucket views disagree: here {:016x}, {}", config_.name, sm_->viewDigest(),
			fmt::join(views, " "));
		moduleLog("bucket views disagree");
		disagreeLogged_ = true;
	}
}

void FarmModule::moduleLog(const std::string &line) const
{
	appendModuleLog(ctx_.logFile, ctx_.self->name, line);
}

void FarmModule::logTransition(const FarmTransition &t)
{
	std::string from = farmStateLabel(t.fromState, t.fromPhase);
	std::string to = farmStateLabel(t.toState, t.toPhase);
	if (t.loud)
		logWarn(kLog, "{}: {} -> {}: {}", config_.name, from, to, t.cause);
	else
		logInfo(kLog, "{}: {} -> {}: {}", config_.name, from, to, t.cause);
	moduleLog(fmt::format("{} -> {}: {}", from, to, t.cause));
	transitions_.push_back({ wallMs(), from, to, t.cause });
	while (transitions_.size() > kKeepTransitions)
		transitions_.pop_front();
}

void FarmModule::persistAdminIntent(const std::string &intent)
{
	if (!saveAdminIntent(ctx_.stateDir, intent))
		logError(kLog, "{}: cannot record admin intent: {}", config_.name, strerror(errno));
}

std::string FarmModule::loadAdminIntent() const
{
	return sk::loadAdminIntent(ctx_.stateDir);
}

void FarmModule::command(const std::string &cmd, const nlohmann::json &, ControlResponder reply)
{
	static const std::map<std::string, FarmEventKind> kinds = {
		{ "start", FarmEventKind::AdminStart },
		{ "stop", FarmEventKind::AdminStop },
		{ "restart", FarmEventKind::AdminRestart },
	};
	if (cmd == "state") {
		reply(status());
		return;
	}
	auto it = kinds.find(cmd);
	if (it == kinds.end()) {
		reply(makeError(-EINVAL, "farm modules do not know the command '" + cmd +
						 "' (they know start, stop, restart, state)"));
		return;
	}
	std::string before = farmStateLabel(sm_->state(), sm_->phase());
	auto step = feedAdmin(it->second);
	if (!step) {
		reply(makeError(step.error().code, config_.name + ": " + cmd + " refused: " + step.error().message));
		return;
	}
	persistAdminIntent(cmd == "stop" ? "stop" : "start");
	std::string after = farmStateLabel(sm_->state(), sm_->phase());
	moduleLog(fmt::format("admin: {} ({} -> {})", cmd, before, after));
	reply(nlohmann::json{ { "module", config_.name }, { "command", cmd }, { "before", before }, { "after", after } });
}

nlohmann::json FarmModule::status() const
{
	using nlohmann::json;
	json nodes = json::array();
	/* Shares of the agreed assignment; what this node's data plane holds right now is apart. */
	std::map<NodeId, size_t> share;
	for (uint32_t o : sm_->viewOwners())
		share[o]++;
	size_t installedHere = static_cast<size_t>(std::count(sm_->installedOwners().begin(),
							       sm_->installedOwners().end(), ctx_.self->id));
	for (const auto &[id, name] : names_) {
		json n = { { "name", name }, { "id", id }, { "weight", sm_->config().weights.at(id) },
			   { "buckets", share.count(id) ? share.at(id) : 0 } };
		if (id == ctx_.self->id) {
			n["self"] = true;
			n["state"] = farmStateName(sm_->state());
			n["label"] = farmStateLabel(sm_->state(), sm_->phase());
			n["view_digest"] = fmt::format("{:016x}", sm_->viewDigest());
		} else {
			auto p = sm_->peers().find(id);
			auto t = track_.find(id);
			bool alive = p != sm_->peers().end() && p->second.alive;
			n["alive"] = alive;
			n["state"] = alive ? farmStateName(p->second.state) : "UNKNOWN";
			if (p != sm_->peers().end()) {
				n["label"] = farmStateLabel(p->second.state, p->second.phase);
				n["view_digest"] = fmt::format("{:016x}", p->second.digest);
				std::vector<std::string> members;
				for (NodeId m : p->second.members)
					members.push_back(nodeName(m));
				n["members"] = members;
			}
			if (t != track_.end() && t->second.lastSeen)
				n["last_heard_ms_ago"] = std::chrono::duration_cast<std::chrono::milliseconds>(
								 EventLoop::Clock::now() - *t->second.lastSeen)
								 .count();
		}
		nodes.push_back(n);
	}
	std::vector<std::string> up;
	for (NodeId id : sm_->advertisedMembers())
		up.push_back(nodeName(id));
	json xdp = nullptr;
	if (filter_) {
		auto c = filter_->counters();
		if (c) {
			const auto &v = c->verdicts;
			xdp = { { "pass_not_vip", v[SK_FARM_PASS_NOT_VIP] },
				{ "pass_owned", v[SK_FARM_PASS_OWNED] },
				{ "drop_not_owned", v[SK_FARM_DROP_NOT_OWNED] },
				{ "pass_malformed", v[SK_FARM_PASS_MALFORMED] },
				{ "pass_port_unlisted", v[SK_FARM_PASS_PORT_UNLISTED] },
				{ "pass_flow_here", v[SK_FARM_PASS_FLOW_HERE] },
				{ "drop_flow_elsewhere", v[SK_FARM_DROP_FLOW_ELSEWHERE] } };
		}
	}
	json vips = json::array();
	for (const net::IpAddress &v : vips_)
		vips.push_back(net::formatIpAddress(v));
	json transitions = json::array();
	for (const TransitionRecord &t : transitions_)
		transitions.push_back({ { "at_ms", t.atMs }, { "from", t.from }, { "to", t.to }, { "cause", t.cause } });
	json installs = json::array();
	for (const OwnerInstall &i : ownerInstalls_)
		installs.push_back({ { "at_ms", i.atUs / 1000 }, { "at_us", i.atUs }, { "buckets_here", i.mine } });
	NodeId resp = sm_->responderNode();
	return {
		{ "name", config_.name },
		{ "type", "farm" },
		{ "state", farmStateName(sm_->state()) },
		{ "phase", farmPhaseName(sm_->phase()) },
		{ "label", farmStateLabel(sm_->state(), sm_->phase()) },
		{ "interface", config_.farm.interface },
		{ "hash", configName(config_.farm.hash) },
		{ "xdp_mode", configName(config_.farm.xdpMode) },
		{ "buckets", config_.farm.buckets },
		{ "virtual_mac", net::formatMac(virtualMac_) },
		{ "vips", vips },
		{ "vip_local", vipUp_ },
		{ "nodes", nodes },
		{ "up", up },
		{ "view_digest", fmt::format("{:016x}", sm_->viewDigest()) },
		{ "views_agree", sm_->viewsAgree() },
		{ "responder", resp ? json(nodeName(resp)) : json(nullptr) },
		{ "responder_here", responder_ },
		{ "responder_counters", host_->responderStatus() },
		{ "filter_loaded", filter_ != nullptr },
		{ "checkers", checkers_->status() },
		{ "checker_hold", checkerHold_ },
		{ "owner_updates", ownerUpdates_ },
		{ "owner_installs", installs },
		{ "buckets_installed_here", installedHere },
		{ "drain_ms", config_.farm.drainMs },
		{ "buckets_draining", std::count_if(sm_->installedDrainFrom().begin(), sm_->installedDrainFrom().end(),
						    [](uint32_t n) { return n != SK_FARM_NODE_NONE; }) },
		{ "connections_to_drain", sm_->drainingOut() ? json(sm_->localFlows()) : json(nullptr) },
		{ "xdp", xdp },
		{ "script_running", runningScript_ },
		{ "script_failures", scriptFailures_ },
		{ "last_error", lastError_ },
		{ "transitions", transitions },
		{ "log_file", ctx_.logFile },
	};
}

void FarmModule::shutdown(std::function<void()> done)
{
	if (sm_->state() == FarmState::Stop && !scripts_->busy()) {
		done();
		return;
	}
	shutdownDone_ = std::move(done);
	/* Not persisted: skd stopping is not the admin stopping the module. Graceful: hands buckets over. */
	if (sm_->phase() != FarmPhase::Leaving && sm_->phase() != FarmPhase::Stopping) {
		auto step = feedAdmin(FarmEventKind::AdminStop);
		if (!step)
			logWarn(kLog, "{}: stop at shutdown refused: {}", config_.name, step.error().message);
	}
	if (shutdownDone_ && sm_->state() == FarmState::Stop && !scripts_->busy()) {
		auto cb = std::move(shutdownDone_);
		shutdownDone_ = nullptr;
		cb();
	}
}

} /* namespace sk */
