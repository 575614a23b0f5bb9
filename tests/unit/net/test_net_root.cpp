/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Root tests of net/ in private network namespaces: VIP add/remove checked by
 * RTM_GETADDR and `ip -j addr`, announcements received on a veth peer, and link
 * events. Each namespace is held by a forked child that dies with us (PDEATHSIG),
 * so nothing survives the test even on a crash; the test thread setns()es in.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "net/announce.h"
#include "net/link_monitor.h"
#include "net/vip.h"

using namespace std::chrono_literals;
using namespace sk::net;

namespace {

/* A network namespace kept alive by a child process that only waits to be killed. */
class NetnsChild
{
public:
	NetnsChild()
	{
		int ready[2];
		if (pipe2(ready, O_CLOEXEC) != 0)
			return;
		pid_t parent = getpid();
		pid_ = fork();
		if (pid_ == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(1);
			char ok = unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
			if (write(ready[1], &ok, 1) != 1)
				_exit(1);
			for (;;)
				pause();
		}
		close(ready[1]);
		char ok = 'n';
		if (pid_ > 0 && read(ready[0], &ok, 1) == 1 && ok == 'y') {
			path_ = "/proc/" + std::to_string(pid_) + "/ns/net";
			fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
		}
		close(ready[0]);
	}
	~NetnsChild()
	{
		if (fd_ >= 0)
			close(fd_);
		if (pid_ > 0) {
			kill(pid_, SIGKILL);
			waitpid(pid_, nullptr, 0);
		}
	}
	bool ok() const { return fd_ >= 0; }
	int fd() const { return fd_; }
	pid_t pid() const { return pid_; }
	const std::string &path() const { return path_; }

private:
	pid_t pid_ = -1;
	int fd_ = -1;
	std::string path_;
};

/* Test links are veth pairs with both ends here: this kernel has no dummy driver. */

/* Moves the calling thread into a netns for its scope (setns is per thread). */
class InNetns
{
public:
	explicit InNetns(const NetnsChild &ns)
	{
		orig_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		entered_ = orig_ >= 0 && setns(ns.fd(), CLONE_NEWNET) == 0;
	}
	~InNetns()
	{
		if (entered_ && setns(orig_, CLONE_NEWNET) != 0)
			abort();	/* never run later tests in the wrong namespace */
		if (orig_ >= 0)
			close(orig_);
	}
	bool ok() const { return entered_; }

private:
	int orig_ = -1;
	bool entered_ = false;
};

/* Runs a shell command in the calling thread's netns (fork inherits it); returns its output. */
std::string run(const std::string &cmd, int *status = nullptr)
{
	std::string out;
	FILE *p = popen(("( " + cmd + " ) 2>&1").c_str(), "r");
	if (!p)
		return out;
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
		out.append(buf, n);
	int st = pclose(p);
	if (status)
		*status = st;
	return out;
}

bool runOk(const std::string &cmd)
{
	int st = -1;
	std::string out = run(cmd, &st);
	if (st != 0)
		MESSAGE("command failed: " << cmd << ": " << out);
	return st == 0;
}

bool haveRoot()
{
	if (geteuid() == 0)
		return true;
	MESSAGE("skipped: needs root (suite 'root')");
	return false;
}

/* `ip -j addr show dev X` entries of addr_info. */
nlohmann::json ipAddrInfo(const std::string &dev)
{
	std::string out = run("ip -j addr show dev " + dev);
	auto j = nlohmann::json::parse(out, nullptr, false);
	if (j.is_discarded() || !j.is_array() || j.empty())
		return nlohmann::json::array();
	return j[0].value("addr_info", nlohmann::json::array());
}

const nlohmann::json *findIpAddr(const nlohmann::json &info, const std::string &local)
{
	for (const auto &a : info)
		if (a.value("local", "") == local)
			return &a;
	return nullptr;
}

size_t countIn(const std::vector<InterfaceAddress> &addrs, const IpAddress &a)
{
	size_t n = 0;
	for (const auto &x : addrs)
		n += x.prefix.address == a;
	return n;
}

IpAddress ip(const char *text)
{
	auto a = parseIpAddress(text);
	REQUIRE(a.ok());
	return *a;
}

IpPrefix prefix(const char *text)
{
	auto p = parseIpPrefix(text);
	REQUIRE(p.ok());
	return *p;
}

} /* namespace */

TEST_CASE("VIP add/remove for IPv4 and IPv6, idempotent, checked by RTM_GETADDR and ip -j addr")
{
	if (!haveRoot())
		return;
	NetnsChild ns;
	REQUIRE(ns.ok());
	InNetns in(ns);
	REQUIRE(in.ok());
	REQUIRE(runOk("ip link add sk-d0 type veth peer name sk-d0p && ip link set sk-d0p up && ip link set sk-d0 up"));

	auto opened = NetlinkAddressOps::open();
	REQUIRE(opened.ok());
	NetlinkAddressOps &ops = **opened;
	auto index = ops.linkIndex("sk-d0");
	REQUIRE(index.ok());

	const IpPrefix v4 = prefix("198.18.0.10/24");
	const IpPrefix v6 = prefix("fd00:5c::10/64");

	auto s = ops.add(*index, v4);
	CHECK_MESSAGE(s.ok(), s.error().message);
	s = ops.add(*index, v6);
	CHECK_MESSAGE(s.ok(), s.error().message);

	/* Our own dump. */
	auto listed = ops.list(AF_UNSPEC, *index);
	REQUIRE(listed.ok());
	CHECK(countIn(*listed, v4.address) == 1);
	CHECK(countIn(*listed, v6.address) == 1);
	for (const auto &a : *listed) {
		if (a.prefix.address == v4.address) {
			CHECK(a.prefix.prefixLen == 24);
			CHECK(a.label == "sk-d0:sk");
		}
		if (a.prefix.address == v6.address) {
			CHECK(a.prefix.prefixLen == 64);
			CHECK((a.flags & IFA_F_NODAD) != 0);
			CHECK((a.flags & IFA_F_TENTATIVE) == 0);
		}
	}
	CHECK(ops.has(*index, v4.address).value());
	CHECK(ops.has(0, v6.address).value());

	/* An independent view: iproute2. */
	auto info = ipAddrInfo("sk-d0");
	const auto *j4 = findIpAddr(info, "198.18.0.10");
	REQUIRE_MESSAGE(j4 != nullptr, info.dump());
	CHECK(j4->value("prefixlen", 0) == 24);
	CHECK(j4->value("label", "") == "sk-d0:sk");
	const auto *j6 = findIpAddr(info, "fd00:5c::10");
	REQUIRE_MESSAGE(j6 != nullptr, info.dump());
	CHECK(j6->value("prefixlen", 0) == 64);
	CHECK_FALSE(j6->value("tentative", false));

	/* Idempotent add: still exactly one of each, even with another prefix length. */
	CHECK(ops.add(*index, v4).ok());
	CHECK(ops.add(*index, prefix("198.18.0.10/32")).ok());
	CHECK(ops.add(*index, v6).ok());
	listed = ops.list(AF_UNSPEC, *index);
	REQUIRE(listed.ok());
	CHECK(countIn(*listed, v4.address) == 1);
	CHECK(countIn(*listed, v6.address) == 1);

	/* Name-based wrappers act in this thread's namespace. */
	CHECK(hasVip("sk-d0", v4.address).value());

	s = ops.remove(*index, v4.address);
	CHECK_MESSAGE(s.ok(), s.error().message);
	s = removeVip("sk-d0", v6.address);
	CHECK_MESSAGE(s.ok(), s.error().message);
	CHECK_FALSE(ops.has(*index, v4.address).value());
	CHECK_FALSE(ops.has(*index, v6.address).value());
	info = ipAddrInfo("sk-d0");
	CHECK_MESSAGE(findIpAddr(info, "198.18.0.10") == nullptr, info.dump());
	CHECK_MESSAGE(findIpAddr(info, "fd00:5c::10") == nullptr, info.dump());

	/* Removing an absent address is success. */
	CHECK(ops.remove(*index, v4.address).ok());
	CHECK(ops.remove(*index, v6.address).ok());

	/* Add through the name wrapper too, and without a label. */
	CHECK(addVip("sk-d0", prefix("198.18.0.12/24"), AddOptions{ false }).ok());
	info = ipAddrInfo("sk-d0");
	const auto *j12 = findIpAddr(info, "198.18.0.12");
	REQUIRE_MESSAGE(j12 != nullptr, info.dump());
	CHECK(j12->value("label", "") == "sk-d0");
}

TEST_CASE("VIP errors: missing interface, address held by another interface; leftover cleanup")
{
	if (!haveRoot())
		return;
	NetnsChild ns;
	REQUIRE(ns.ok());
	InNetns in(ns);
	REQUIRE(in.ok());
	REQUIRE(runOk("ip link add sk-d0 type veth peer name sk-d0p && ip link set sk-d0p up && ip link set sk-d0 up && "
		      "ip link add sk-d1 type veth peer name sk-d1p && ip link set sk-d1p up && ip link set sk-d1 up"));
	auto opened = NetlinkAddressOps::open();
	REQUIRE(opened.ok());
	NetlinkAddressOps &ops = **opened;

	auto missing = ops.linkIndex("sk-nope");
	CHECK(missing.code() == -ENODEV);
	auto s = ops.add(4242, prefix("198.18.0.20/24"));
	CHECK(s.code() == -ENODEV);
	CHECK_MESSAGE(s.error().message.find("no such interface") != std::string::npos, s.error().message);
	CHECK(ops.remove(4242, ip("198.18.0.20")).code() == -ENODEV);
	s = addVip("sk-nope", prefix("198.18.0.20/24"));
	CHECK(s.code() == -ENODEV);
	CHECK_MESSAGE(s.error().message.find("sk-nope") != std::string::npos, s.error().message);
	CHECK(ops.add(ops.linkIndex("sk-d0").value(), IpPrefix{ ip("198.18.0.20"), 40 }).code() == -EINVAL);

	const int d0 = ops.linkIndex("sk-d0").value();
	const int d1 = ops.linkIndex("sk-d1").value();
	REQUIRE(ops.add(d0, prefix("198.18.0.21/24")).ok());
	s = ops.add(d1, prefix("198.18.0.21/24"));
	CHECK(s.code() == -EADDRINUSE);
	CHECK_MESSAGE(s.error().message.find("sk-d0") != std::string::npos, s.error().message);
	CHECK(findIpAddr(ipAddrInfo("sk-d1"), "198.18.0.21") == nullptr);

	/* Without CAP_NET_ADMIN (a child that became nobody): -EPERM and a hint. */
	const IpPrefix forbidden = prefix("198.18.0.22/24");
	pid_t child = fork();
	REQUIRE(child >= 0);
	if (child == 0) {
		if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
			_exit(2);
		auto unprivileged = NetlinkAddressOps::open();
		if (!unprivileged)
			_exit(3);
		auto st = (*unprivileged)->add(d0, forbidden);
		fprintf(stderr, "unprivileged add: %s\n", st.ok() ? "ok" : st.error().message.c_str());
		bool good = st.code() == -EPERM &&
			    st.error().message.find("CAP_NET_ADMIN") != std::string::npos;
		_exit(good ? 0 : 1);
	}
	int status = -1;
	REQUIRE(waitpid(child, &status, 0) == child);
	CHECK_MESSAGE(WIFEXITED(status), "status " << status);
	CHECK_MESSAGE(WEXITSTATUS(status) == 0, "child exit code " << WEXITSTATUS(status)
					      << " (1: wrong error, 2: setresuid, 3: socket)");
	CHECK_FALSE(ops.has(0, forbidden.address).value());

	/* A crashed skd left its VIP on both interfaces (placed there behind our back). */
	REQUIRE(runOk("ip addr add 198.18.0.21/24 dev sk-d1"));
	REQUIRE(runOk("ip addr add fd00:5c::21/64 dev sk-d1 nodad"));
	CHECK(ops.removeEverywhere(ip("198.18.0.21")).ok());
	CHECK(ops.removeEverywhere(ip("fd00:5c::21")).ok());
	CHECK_FALSE(ops.has(0, ip("198.18.0.21")).value());
	CHECK_FALSE(ops.has(0, ip("fd00:5c::21")).value());
	CHECK(findIpAddr(ipAddrInfo("sk-d0"), "198.18.0.21") == nullptr);
	CHECK(findIpAddr(ipAddrInfo("sk-d1"), "198.18.0.21") == nullptr);
}

namespace {

struct Captured {
	std::vector<std::vector<uint8_t>> frames;
};

/* Drains a non-blocking AF_PACKET socket (bounded). */
void drain(int fd, Captured &cap)
{
	for (int i = 0; i < 1000; i++) {
		uint8_t buf[2048];
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n <= 0)
			return;
		cap.frames.emplace_back(buf, buf + n);
	}
}

/* Independent of announce.cpp: RFC 1071 sum over the pseudo-header and ICMPv6 message. */
bool icmpv6ChecksumValid(const std::vector<uint8_t> &f)
{
	if (f.size() < 54)
		return false;
	const size_t plen = static_cast<size_t>(f[18] << 8 | f[19]);
	if (f.size() < 54 + plen)
		return false;
	std::vector<uint8_t> d(f.begin() + 22, f.begin() + 54);	/* src + dst */
	d.push_back(0);
	d.push_back(0);
	d.push_back(static_cast<uint8_t>(plen >> 8));
	d.push_back(static_cast<uint8_t>(plen));
	d.insert(d.end(), { 0, 0, 0, 58 });
	d.insert(d.end(), f.begin() + 54, f.begin() + 54 + static_cast<long>(plen));
	if (d.size() % 2)
		d.push_back(0);
	uint64_t sum = 0;
	for (size_t i = 0; i < d.size(); i += 2)
		sum += static_cast<uint64_t>(d[i] << 8 | d[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

} /* namespace */

TEST_CASE("gratuitous ARP and unsolicited NA arrive on the veth peer")
{
	if (!haveRoot())
		return;
	NetnsChild a, b;
	REQUIRE(a.ok());
	REQUIRE(b.ok());

	int rx = -1;
	{
		InNetns inB(b);
		REQUIRE(inB.ok());
		/* Receive socket first, so it sees every frame. */
		rx = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
		REQUIRE(rx >= 0);
	}
	struct Closer {
		int fd;
		~Closer() { close(fd); }
	} closer{ rx };

	InNetns inA(a);
	REQUIRE(inA.ok());
	REQUIRE(runOk("ip link add sk-a type veth peer name sk-b netns " + std::to_string(b.pid()) +
		      " && ip link set sk-a address 02:5c:00:00:0a:01 && ip link set sk-a up"));
	REQUIRE(runOk("nsenter --net=" + b.path() + " ip link set sk-b up"));
	{
		InNetns inB(b);
		REQUIRE(inB.ok());
		auto bIndex = interfaceIndex("sk-b");
		REQUIRE(bIndex.ok());
		struct sockaddr_ll sll = {};
		sll.sll_family = AF_PACKET;
		sll.sll_protocol = htons(ETH_P_ALL);
		sll.sll_ifindex = *bIndex;
		REQUIRE(bind(rx, reinterpret_cast<struct sockaddr *>(&sll), sizeof(sll)) == 0);
	}
	auto aIndex = interfaceIndex("sk-a");
	REQUIRE(aIndex.ok());

	auto ops = NetlinkAddressOps::open();
	REQUIRE(ops.ok());
	const IpAddress v4 = ip("198.18.0.10");
	const IpAddress v6 = ip("fd00:5c::10");
	REQUIRE((*ops)->add(*aIndex, IpPrefix{ v4, 24 }).ok());
	REQUIRE((*ops)->add(*aIndex, IpPrefix{ v6, 64 }).ok());

	auto loop = sk::EventLoop::create();
	REQUIRE(loop.ok());
	auto sender = PacketSocketSender::open();
	REQUIRE(sender.ok());
	auto mac = (*sender)->hardwareAddress(*aIndex);
	REQUIRE(mac.ok());
	const MacAddress expectedMac = { 0x02, 0x5c, 0x00, 0x00, 0x0a, 0x01 };
	CHECK(formatMac(*mac) == formatMac(expectedMac));

	Announcer announcer(**loop, **sender);
	auto s = announcer.announce(*aIndex, v4, { 3, 20ms, true, {} });
	REQUIRE_MESSAGE(s.ok(), s.error().message);
	s = announcer.announce(*aIndex, v6, { 3, 20ms, true, {} });
	REQUIRE_MESSAGE(s.ok(), s.error().message);

	Captured cap;
	(*loop)->watchFd(rx, POLLIN, [&](uint32_t) { drain(rx, cap); });
	/* Bounded: well past the last repeat (40 ms), stop when all expected frames came. */
	(*loop)->addTimer(3000ms, [&] { (*loop)->stop(); });
	(*loop)->addPeriodic(10ms, [&] {
		if (announcer.pending() == 0)
			(*loop)->addTimer(50ms, [&] { (*loop)->stop(); });
	});
	CHECK((*loop)->run() == 0);
	drain(rx, cap);

	size_t arpRequests = 0, arpReplies = 0, nas = 0;
	for (const auto &f : cap.frames) {
		if (f.size() < 14)
			continue;
		const uint16_t type = static_cast<uint16_t>(f[12] << 8 | f[13]);
		if (type == ETH_P_ARP && f.size() >= 42) {
			CHECK(std::equal(f.begin(), f.begin() + 6, kBroadcastMac.begin()));
			CHECK(std::equal(f.begin() + 6, f.begin() + 12, expectedMac.begin()));
			CHECK(std::equal(f.begin() + 22, f.begin() + 28, expectedMac.begin()));	/* sender MAC */
			CHECK(std::equal(f.begin() + 28, f.begin() + 32, v4.bytes.begin()));	/* sender IP */
			CHECK(std::equal(f.begin() + 38, f.begin() + 42, v4.bytes.begin()));	/* target IP */
			const uint16_t op = static_cast<uint16_t>(f[20] << 8 | f[21]);
			arpRequests += op == 1;
			arpReplies += op == 2;
		} else if (type == ETH_P_IPV6 && f.size() >= 86 && f[20] == 58 && f[54] == 136) {
			/* Only our NA: the kernel's own ND traffic on sk-a comes from link-local sources. */
			if (!std::equal(f.begin() + 22, f.begin() + 38, v6.bytes.begin()))
				continue;
			nas++;
			CHECK(f[21] == 255);	/* hop limit */
			const uint8_t allNodes[16] = { 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
			CHECK(std::equal(f.begin() + 38, f.begin() + 54, allNodes));
			CHECK(f[58] == 0x20);	/* Override, not Solicited, not Router */
			CHECK(std::equal(f.begin() + 62, f.begin() + 78, v6.bytes.begin()));	/* target */
			CHECK(f[78] == 2);	/* target link-layer address option */
			CHECK(std::equal(f.begin() + 80, f.begin() + 86, expectedMac.begin()));
			CHECK(icmpv6ChecksumValid(f));
		}
	}
	CHECK(arpRequests == 3);
	CHECK(arpReplies == 3);
	CHECK(nas == 3);
}

TEST_CASE("link monitor: initial dump, then down/up, carrier loss and removal, within a bounded wait")
{
	if (!haveRoot())
		return;
	NetnsChild a, b;
	REQUIRE(a.ok());
	REQUIRE(b.ok());
	InNetns inA(a);
	REQUIRE(inA.ok());
	REQUIRE(runOk("ip link add sk-d0 type veth peer name sk-d0p && ip link set sk-d0p up && ip link set sk-d0 up && "
		      "ip link add sk-a type veth peer name sk-b netns " + std::to_string(b.pid()) +
		      " && ip link set sk-a up"));
	REQUIRE(runOk("nsenter --net=" + b.path() + " ip link set sk-b up"));

	auto loop = sk::EventLoop::create();
	REQUIRE(loop.ok());
	sk::EventLoop &l = **loop;
	std::vector<LinkState> events;
	auto monitor = LinkMonitor::create(l, [&](const LinkState &s) { events.push_back(s); });
	REQUIRE(monitor.ok());

	/*
	 * Steps run from the loop once the previous expectation holds; a 5 s
	 * deadline bounds the whole test. Each step's predicate looks at the
	 * monitor's table, filled only from netlink messages.
	 */
	struct Step {
		const char *what;
		std::function<bool(const LinkTable &)> done;
		std::string next;	/* command run when done (empty: finish) */
	};
	auto usable = [](const LinkTable &t, const char *name) {
		const LinkState *s = t.find(name);
		return s && s->usable();
	};
	std::vector<Step> steps = {
		{ "initial dump", [&](const LinkTable &t) {
			  return (*monitor)->synced() && t.find("lo") && usable(t, "sk-d0") && usable(t, "sk-a");
		  }, "ip link set sk-d0 down" },
		{ "sk-d0 admin down", [&](const LinkTable &t) {
			  const LinkState *s = t.find("sk-d0");
			  return s && !s->adminUp() && !s->usable();
		  }, "ip link set sk-d0 up" },
		{ "sk-d0 up again", [&](const LinkTable &t) { return usable(t, "sk-d0"); },
		  "nsenter --net=" + b.path() + " ip link set sk-b down" },
		{ "sk-a loses carrier", [&](const LinkTable &t) {
			  const LinkState *s = t.find("sk-a");
			  return s && s->adminUp() && !s->lowerUp() && !s->usable();
		  }, "nsenter --net=" + b.path() + " ip link set sk-b up" },
		{ "sk-a carrier back", [&](const LinkTable &t) { return usable(t, "sk-a"); },
		  "ip link del sk-d0" },
		{ "sk-d0 removed", [&](const LinkTable &t) { return t.find("sk-d0") == nullptr; }, "" },
	};
	size_t step = 0;
	bool timedOut = false;
	l.addTimer(5000ms, [&] {
		timedOut = true;
		l.stop();
	});
	/* Checking on a short tick keeps the steps simple; events themselves come without polling. */
	l.addPeriodic(5ms, [&] {
		while (step < steps.size() && steps[step].done((*monitor)->table())) {
			if (steps[step].next.empty()) {
				step++;
				l.stop();
				return;
			}
			int st = system(steps[step].next.c_str());
			CHECK_MESSAGE(st == 0, steps[step].next);
			step++;
		}
	});
	CHECK(l.run() == 0);
	CHECK_MESSAGE(!timedOut, "stuck at step: " << (step < steps.size() ? steps[step].what : "none"));
	CHECK(step == steps.size());

	/* The callback saw the transitions, not just the final table. */
	bool sawDown = false, sawRemoved = false, sawCarrierLoss = false;
	for (const auto &e : events) {
		sawDown |= e.name == "sk-d0" && !e.adminUp() && !e.removed;
		sawRemoved |= e.name == "sk-d0" && e.removed;
		sawCarrierLoss |= e.name == "sk-a" && e.adminUp() && !e.lowerUp();
	}
	CHECK(sawDown);
	CHECK(sawRemoved);
	CHECK(sawCarrierLoss);
}
