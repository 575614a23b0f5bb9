/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FarmModule driver without root: two nodes on one event loop, real heartbeats
 * over loopback (127.0.0.1/.2), a fake kernel (FarmHost) and fake addresses.
 * Checks start -> UP on both with one agreed owner table, the VIP on lo, sysctls
 * and promiscuous mode set and restored, the responder on the lowest id, admin
 * stop handing buckets over, peer loss by timeout and by onPeerDead, status JSON.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "cluster/heartbeat.h"
#include "farm/buckets.h"
#include "farm/fake_farm_filter.h"
#include "farm/farm_module.h"

using namespace sk;
using namespace std::chrono_literals;
using Clock = EventLoop::Clock;

namespace {

const std::string kHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
constexpr uint32_t kBuckets = 64;

bool runUntil(EventLoop &loop, const std::function<bool()> &pred, std::chrono::milliseconds limit)
{
	if (pred())
		return true;
	bool met = false;
	Clock::time_point deadline = Clock::now() + limit;
	EventLoop::TimerId t = loop.addPeriodic(2ms, [&] {
		if (pred()) {
			met = true;
			loop.stop();
		} else if (Clock::now() > deadline) {
			loop.stop();
		}
	});
	REQUIRE(loop.run() == 0);
	loop.cancelTimer(t);
	return met;
}

uint16_t freePort(const char *addr)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	REQUIRE(fd >= 0);
	struct sockaddr_in sin = {};
	sin.sin_family = AF_INET;
	REQUIRE(inet_pton(AF_INET, addr, &sin.sin_addr) == 1);
	REQUIRE(bind(fd, reinterpret_cast<struct sockaddr *>(&sin), sizeof(sin)) == 0);
	socklen_t len = sizeof(sin);
	REQUIRE(getsockname(fd, reinterpret_cast<struct sockaddr *>(&sin), &len) == 0);
	close(fd);
	return ntohs(sin.sin_port);
}

class FakeAddresses : public net::AddressOps
{
public:
	Status add(int ifindex, const net::IpPrefix &prefix, const net::AddOptions &) override
	{
		held.insert({ ifindex, net::formatIpPrefix(prefix) });
		return {};
	}
	Status remove(int ifindex, const net::IpAddress &address) override
	{
		for (auto it = held.begin(); it != held.end();)
			if (it->first == ifindex && it->second.rfind(net::formatIpAddress(address) + "/", 0) == 0)
				it = held.erase(it);
			else
				++it;
		return {};
	}
	Result<std::vector<net::InterfaceAddress>> list(int, int ifindex) override
	{
		std::vector<net::InterfaceAddress> out;
		for (const auto &[idx, text] : held) {
			if (ifindex && idx != ifindex)
				continue;
			auto p = net::parseIpPrefix(text);
			REQUIRE(p.ok());
			out.push_back({ idx, *p, 0, "" });
		}
		return out;
	}
	std::set<std::pair<int, std::string>> held;
};

constexpr int kLo = 1;
constexpr int kEth = 7;

class FakeHost : public FarmHost
{
public:
	explicit FakeHost(uint8_t macByte) { mac = { 0x02, 0, 0, 0, 0, macByte }; }

	Result<int> interfaceIndex(const std::string &ifname) override
	{
		if (ifname == "lo")
			return kLo;
		if (ifname == "eth0")
			return kEth;
		return makeError(-ENODEV, "no interface " + ifname);
	}
	Result<net::MacAddress> interfaceMac(int) override { return mac; }
	/* Runs on the module's loader thread. */
	Result<std::unique_ptr<FarmFilter>> loadFilter(const XdpFilterOptions &o) override
	{
		if (loadDelay.count())
			std::this_thread::sleep_for(loadDelay);
		if (failLoad)
			return makeError(-EPERM, "fake: no XDP here");
		options = o;
		loads++;
		auto f = std::make_unique<FakeFarmFilter>(o.buckets);
		filter = f.get();
		return std::unique_ptr<FarmFilter>(std::move(f));
	}
	Result<bool> setPromiscuous(const std::string &, bool on) override
	{
		bool was = promisc;
		promisc = on;
		return was;
	}
	Result<std::string> readSysctl(const std::string &key) override
	{
		auto it = sysctls.find(key);
		return it == sysctls.end() ? std::string("0") : it->second;
	}
	Status writeSysctl(const std::string &key, const std::string &value) override
	{
		sysctls[key] = value;
		return {};
	}
	Status startResponder(int, const FarmResponderConfig &c) override
	{
		responding = true;
		responderConfig = c;
		return {};
	}
	void stopResponder() override { responding = false; }
	Status announce(int, const net::IpAddress &, const net::MacAddress &payload) override
	{
		announced.push_back(payload);
		return {};
	}
	nlohmann::json responderStatus() const override { return responding ? nlohmann::json("fake") : nlohmann::json(); }

	/* Valid while loaded: the module owns it. */
	FakeFarmFilter *filter = nullptr;
	std::chrono::milliseconds loadDelay{ 0 };
	bool failLoad = false;
	XdpFilterOptions options;
	int loads = 0;
	net::MacAddress mac;
	bool promisc = false;
	std::map<std::string, std::string> sysctls;
	bool responding = false;
	FarmResponderConfig responderConfig;
	std::vector<net::MacAddress> announced;
};

struct TempDir {
	std::string path;
	TempDir()
	{
		char tmpl[] = "/tmp/sk-farm-test-XXXXXX";
		REQUIRE(mkdtemp(tmpl));
		path = tmpl;
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

struct Node {
	NodeId id;
	std::string addr;
	uint16_t port = 0;
	std::unique_ptr<Heartbeat> hb;
	FakeHost host;
	FakeAddresses addresses;
	std::unique_ptr<FarmModule> module;
	Node(NodeId i, const char *a) : id(i), addr(a), host(static_cast<uint8_t>(i)) {}
};

struct Rig {
	std::unique_ptr<EventLoop> loop;
	TempDir dir;
	ClusterConfig cluster;
	ModuleConfig module;
	std::vector<std::unique_ptr<Node>> nodes;

	explicit Rig(FarmXdpMode xdpMode = FarmXdpMode::Auto)
	{
		auto l = EventLoop::create();
		REQUIRE(l.ok());
		loop = std::move(l.value());
		cluster.name = "farmtest";
		cluster.networks = { "lan" };
		module.name = "web";
		module.type = ModuleType::Farm;
		module.heartbeat.networks = { "lan" };
		module.heartbeat.intervalMs = 50;
		module.heartbeat.timeoutMs = 300;
		module.vips.push_back({ "198.18.0.100", AF_INET, 32, "eth0" });
		module.farm.interface = "eth0";
		module.farm.buckets = kBuckets;
		module.farm.hash = FarmHash::IpPort;
		module.farm.ports = { 80 };
		module.farm.xdpMode = xdpMode;
		const char *addrs[] = { "127.0.0.1", "127.0.0.2" };
		for (NodeId id = 1; id <= 2; id++) {
			auto n = std::make_unique<Node>(id, addrs[id - 1]);
			n->port = freePort(n->addr.c_str());
			NodeConfig nc;
			nc.name = "n" + std::to_string(id);
			nc.id = id;
			nc.addresses["lan"] = n->addr;
			cluster.nodes.push_back(nc);
			module.nodes.push_back(nc.name);
			nodes.push_back(std::move(n));
		}
		for (auto &n : nodes)
			startNode(*n);
	}
	~Rig()
	{
		for (auto &n : nodes) {
			n->module.reset();
			n->hb.reset();
		}
	}

	void startNode(Node &n)
	{
		auto key = ClusterKey::parse(kHex);
		REQUIRE(key.ok());
		HeartbeatConfig c;
		c.nodeId = n.id;
		c.clusterId = clusterIdFromName(cluster.name);
		c.interval = 50ms;
		c.timeout = 300ms;
		HeartbeatNetwork net;
		net.name = "lan";
		net.localAddress = n.addr;
		net.localPort = n.port;
		for (auto &p : nodes)
			if (p->id != n.id)
				net.peers.push_back({ p->id, p->addr, p->port });
		c.networks.push_back(net);
		Node *np = &n;
		Heartbeat::Callbacks cb;
		cb.peerSeen = [np](const std::string &, NodeId peer, const PeerHeartbeat &hb, size_t network) {
			if (np->module)
				np->module->onHeartbeat(peer, hb, network);
		};
		auto hb = Heartbeat::create(*loop, key.value(), c, cb);
		REQUIRE_MESSAGE(hb.ok(), (hb.ok() ? "" : hb.error().message));
		n.hb = std::move(hb.value());

		FarmContext ctx;
		ctx.loop = loop.get();
		ctx.cluster = &cluster;
		ctx.self = &cluster.nodes[n.id - 1];
		ctx.heartbeat = n.hb.get();
		ctx.addresses = &n.addresses;
		ctx.moduleDir = dir.path + "/modules/web";	/* no scripts/: hooks count as done */
		ctx.stateDir = dir.path + "/state-" + std::to_string(n.id);
		ctx.logFile = dir.path + "/web-" + std::to_string(n.id) + ".log";
		ctx.pinRoot = "";
		ctx.host = &n.host;
		auto m = FarmModule::create(ctx, module);
		REQUIRE_MESSAGE(m.ok(), (m.ok() ? "" : m.error().message));
		n.module = std::move(m.value());
	}

	Node &operator[](NodeId id) { return *nodes[id - 1]; }

	nlohmann::json command(NodeId id, const std::string &cmd)
	{
		nlohmann::json got;
		bool replied = false;
		(*this)[id].module->command(cmd, {}, [&](Result<nlohmann::json> r) {
			replied = true;
			got = r.ok() ? r.value() : nlohmann::json{ { "error", r.error().message }, { "code", r.error().code } };
		});
		REQUIRE(replied);
		return got;
	}
};

std::string label(const FarmModule &m)
{
	return farmStateLabel(m.state(), m.phase());
}

bool allUpAndAgreed(Rig &r)
{
	for (auto &n : r.nodes)
		if (!n->module || n->module->state() != FarmState::Up || !n->module->machine().viewsAgree() ||
		    n->module->machine().advertisedMembers().size() != r.nodes.size())
			return false;
	return true;
}

} /* namespace */

TEST_CASE("two farm nodes: start, agree, split the buckets; the VIP is on lo and the interface prepared")
{
	Rig r;
	CHECK(label(*r[1].module) == "STOP/idle");
	auto reply = r.command(1, "start");
	CHECK(reply.value("after", "") == "WAIT/starting");
	/* start_both (absent here: counts as done) reports back through the loop. */
	r.command(2, "start");
	REQUIRE(runUntil(*r.loop, [&] { return allUpAndAgreed(r); }, 5s));

	auto want = farmAssignBuckets(farmSeed(r.module.farm, r.cluster.name), kBuckets,
				      std::vector<FarmNodeWeight>{ { 1, 1 }, { 2, 1 } });
	REQUIRE(want.ok());
	for (NodeId id : { 1u, 2u }) {
		CAPTURE(id);
		Node &n = r[id];
		REQUIRE(n.host.filter);
		CHECK(n.host.filter->owners() == want.value());
		CHECK(n.host.options.nodeId == id);
		CHECK(n.host.options.buckets == kBuckets);
		CHECK(n.host.options.hashMode == FarmHashMode::IpPort);
		CHECK(n.host.options.module == "web");
		CHECK(n.host.options.replaceStale);
		CHECK(n.host.options.mode == XdpMode::Auto);
		REQUIRE(n.host.filter->vips().vips.size() == 1);
		CHECK(n.host.filter->vips().vips[0].address.str() == "198.18.0.100");
		CHECK(n.host.filter->vips().globalPorts.size() == 2);	/* tcp and udp 80 */
		CHECK(n.addresses.held == std::set<std::pair<int, std::string>>{ { kLo, "198.18.0.100/32" } });
		CHECK(n.host.sysctls["net/ipv4/conf/eth0/arp_ignore"] == "1");
		CHECK(n.host.sysctls["net/ipv4/conf/eth0/arp_announce"] == "2");
		CHECK(n.host.promisc);
	}
	/* The lowest id answers ARP, with the virtual MAC, from its own MAC. */
	CHECK(r[1].host.responding);
	CHECK_FALSE(r[2].host.responding);
	CHECK(net::formatMac(r[1].host.responderConfig.virtualMac) == net::formatMac(r[1].module->virtualMac()));
	CHECK(net::formatMac(r[1].host.responderConfig.ownMac) == net::formatMac(r[1].host.mac));
	REQUIRE_FALSE(r[1].host.announced.empty());
	CHECK(net::formatMac(r[1].host.announced.back()) == net::formatMac(r[1].module->virtualMac()));
	CHECK(net::formatMac(r[1].module->virtualMac()) == net::formatMac(farmDerivedMac("farmtest", "web")));

	auto st = r[2].module->status();
	CHECK(st["state"] == "UP");
	CHECK(st["views_agree"] == true);
	CHECK(st["responder"] == "n1");
	CHECK(st["up"] == nlohmann::json::array({ "n1", "n2" }));
	REQUIRE(st["nodes"].size() == 2);
	size_t total = 0;
	for (const auto &n : st["nodes"])
		total += n["buckets"].get<size_t>();
	CHECK(total == kBuckets);
	CHECK(st["nodes"][0]["state"] == "UP");
	CHECK(st["xdp"].is_object());
	CHECK(st["transitions"].size() >= 2);
}

TEST_CASE("admin stop on the responder: the other node takes every bucket first, then everything is restored")
{
	Rig r;
	r.command(1, "start");
	r.command(2, "start");
	REQUIRE(runUntil(*r.loop, [&] { return allUpAndAgreed(r); }, 5s));

	auto reply = r.command(1, "stop");
	CHECK(reply.value("before", "") == "UP/running");
	REQUIRE(runUntil(*r.loop, [&] { return r[1].module->state() == FarmState::Stop; }, 5s));
	/* Node 2 owns everything and answers ARP now. */
	CHECK(r[2].host.filter->owners() == std::vector<uint32_t>(kBuckets, 2));
	CHECK(r[2].host.responding);
	CHECK_FALSE(r[1].host.responding);
	/* The leave was confirmed, not timed out. */
	auto st = r[1].module->status();
	bool confirmed = false;
	for (const auto &t : st["transitions"])
		confirmed |= t["cause"].get<std::string>().find("took this node's buckets") != std::string::npos;
	CHECK(confirmed);
	/* Node 1 restored what it changed. */
	CHECK(r[1].addresses.held.empty());
	CHECK(r[1].host.sysctls["net/ipv4/conf/eth0/arp_ignore"] == "0");
	CHECK(r[1].host.sysctls["net/ipv4/conf/eth0/arp_announce"] == "0");
	CHECK_FALSE(r[1].host.promisc);
	CHECK(st["filter_loaded"] == false);
	CHECK(st["vip_local"] == false);

	/* Stopping a stopped module is refused with a reason. */
	auto again = r.command(1, "stop");
	CHECK(again.value("code", 0) == -EALREADY);
	auto bad = r.command(1, "swap");
	CHECK(bad.value("code", 0) == -EINVAL);
}

TEST_CASE("peer lost by heartbeat timeout and by onPeerDead; it comes back with its share")
{
	Rig r;
	r.command(1, "start");
	r.command(2, "start");
	REQUIRE(runUntil(*r.loop, [&] { return allUpAndAgreed(r); }, 5s));
	auto both = r[2].host.filter->owners();

	SUBCASE("timeout")
	{
		/* Silence node 1 without a clean stop: its heartbeat layer goes away. */
		r[1].module.reset();
		r[1].hb.reset();
		auto t0 = Clock::now();
		REQUIRE(runUntil(*r.loop, [&] { return r[2].host.filter->owners() == std::vector<uint32_t>(kBuckets, 2); }, 3s));
		auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
		CAPTURE(took.count());
		CHECK(took >= 250ms);	/* not before the 300 ms timeout (minus a tick) */
		CHECK(r[2].host.responding);

		r.startNode(r[1]);
		r.command(1, "start");
		REQUIRE(runUntil(*r.loop, [&] { return allUpAndAgreed(r); }, 5s));
		CHECK(r[2].host.filter->owners() == both);
	}
	SUBCASE("onPeerDead")
	{
		r[2].module->onPeerDead(1, "test: skd died");
		/* At once, not after the timeout. */
		CHECK(r[2].host.filter->owners() == std::vector<uint32_t>(kBuckets, 2));
		CHECK(r[2].host.responding);
	}
}

TEST_CASE("admin intent survives a restart of the module; a bad configuration is refused")
{
	Rig r;
	r.command(1, "start");
	REQUIRE(runUntil(*r.loop, [&] { return r[1].module->state() == FarmState::Up; }, 5s));
	r[1].module.reset();
	r[1].hb.reset();
	r.startNode(r[1]);
	REQUIRE(runUntil(*r.loop, [&] { return r[1].module->state() == FarmState::Up; }, 5s));
	CHECK(r[1].host.loads == 2);

	ModuleConfig bad = r.module;
	bad.farm.virtualMac = "zz:00:00:00:00:00";
	FarmContext ctx;
	ctx.loop = r.loop.get();
	ctx.cluster = &r.cluster;
	ctx.self = &r.cluster.nodes[0];
	ctx.heartbeat = r[1].hb.get();
	ctx.addresses = &r[1].addresses;
	ctx.host = &r[1].host;
	auto m = FarmModule::create(ctx, bad);
	CHECK(m.code() == -EINVAL);
}

TEST_CASE("a slow filter load holds UP and the VIP back; a failed one stops the module")
{
	Rig r;
	r[1].host.loadDelay = 300ms;
	r.command(1, "start");
	/* start_both (absent) is done long before the filter: still WAIT, VIP not local yet. */
	REQUIRE(runUntil(*r.loop, [&] { return false; }, 150ms) == false);
	CHECK(label(*r[1].module) == "WAIT/starting");
	CHECK(r[1].addresses.held.empty());
	REQUIRE(runUntil(*r.loop, [&] { return r[1].module->state() == FarmState::Up; }, 5s));
	CHECK(r[1].addresses.held.size() == 1);
	REQUIRE(r[1].host.filter);
	CHECK(r[1].host.filter->owners() == std::vector<uint32_t>(kBuckets, 1));

	r[2].host.failLoad = true;
	r.command(2, "start");
	REQUIRE(runUntil(*r.loop, [&] { return r[2].module->state() == FarmState::Stop; }, 5s));
	auto st = r[2].module->status();
	CHECK(st["last_error"].get<std::string>().find("cannot load the XDP filter") != std::string::npos);
	CHECK(r[2].addresses.held.empty());
	CHECK_FALSE(r[2].host.promisc);
}

TEST_CASE("farm.xdp_mode reaches the filter options; status shows it")
{
	for (auto [mode, want] : { std::pair{ FarmXdpMode::Generic, XdpMode::Generic },
				   std::pair{ FarmXdpMode::Native, XdpMode::Native } }) {
		Rig r(mode);
		CAPTURE(configName(mode));
		r.command(1, "start");
		r.command(2, "start");
		REQUIRE(runUntil(*r.loop, [&] { return allUpAndAgreed(r); }, 5s));
		for (NodeId id : { 1u, 2u }) {
			CAPTURE(id);
			CHECK(r[id].host.options.mode == want);
			CHECK(r[id].module->status().value("xdp_mode", "") == std::string(configName(mode)));
		}
	}
}
