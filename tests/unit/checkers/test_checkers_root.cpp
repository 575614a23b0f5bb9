/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Interface checker in a private network namespace (needs root: suite 'root'):
 * a veth set down and up again, its carrier lost through the peer, a missing
 * interface. The namespace is held by a child that dies with us (PDEATHSIG).
 */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "checker_test_util.h"

using namespace sk;
using namespace sk::test;
using namespace std::chrono_literals;

namespace {

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
		if (pid_ > 0 && read(ready[0], &ok, 1) == 1 && ok == 'y')
			fd_ = open(("/proc/" + std::to_string(pid_) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
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

private:
	pid_t pid_ = -1;
	int fd_ = -1;
};

/* setns is per thread: the test thread enters for its scope, and must come back. */
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
			abort();
		if (orig_ >= 0)
			close(orig_);
	}
	bool ok() const { return entered_; }

private:
	int orig_ = -1;
	bool entered_ = false;
};

/* Runs in the calling thread's netns (children inherit it). */
bool sh(const std::string &cmd)
{
	int st = system(("( " + cmd + " ) >/dev/null 2>&1").c_str());
	if (st != 0)
		MESSAGE("command failed: " << cmd);
	return st == 0;
}

} /* namespace */

TEST_CASE("interface checker: veth down/up, carrier loss via the peer, missing interface")
{
	if (geteuid() != 0) {
		MESSAGE("skipped: needs root (suite 'root')");
		return;
	}
	NetnsChild ns;
	REQUIRE(ns.ok());
	InNetns in(ns);
	REQUIRE(in.ok());
	REQUIRE(sh("ip link add sk-c0 type veth peer name sk-c0p && ip link set sk-c0p up && ip link set sk-c0 up"));
	/* A new veth passes through lowerlayerdown: start from a settled link. */
	REQUIRE(sh("for i in $(seq 100); do ip -o link show sk-c0 | grep -q 'state UP' && exit 0; sleep 0.05; done; exit 1"));

	auto l = EventLoop::create();
	REQUIRE(l.ok());
	EventLoop &loop = **l;
	CheckerConfig c = baseConfig("nic", CheckerType::Interface);
	c.interface = "sk-c0";
	auto r = createChecker(loop, c, CheckerEnv{});
	REQUIRE(r.ok());
	Checker &ch = **r;
	CHECK(ch.failuresToDeclare() == kEventFailuresToDeclare);
	Transitions t;
	t.attach(ch);
	ch.start();
	REQUIRE_MESSAGE(runUntil(loop, [&] { return ch.state() == CheckerState::Ok; }, 5s),
			"last: " << ch.lastDetail());

	REQUIRE(sh("ip link set sk-c0 down"));
	REQUIRE(runUntil(loop, [&] { return ch.state() == CheckerState::Failed; }, 5s));
	CHECK(ch.lastFailure() == "interface sk-c0 is administratively down");
	REQUIRE(sh("ip link set sk-c0 up"));
	REQUIRE(runUntil(loop, [&] { return ch.state() == CheckerState::Ok; }, 5s));

	REQUIRE(sh("ip link set sk-c0p down"));
	REQUIRE(runUntil(loop, [&] { return ch.state() == CheckerState::Failed; }, 5s));
	CHECK(ch.lastFailure() == "interface sk-c0 has no carrier");
	REQUIRE(sh("ip link set sk-c0p up"));
	REQUIRE(runUntil(loop, [&] { return ch.state() == CheckerState::Ok; }, 5s));

	REQUIRE(sh("ip link del sk-c0"));
	/* Deletion may first be seen as admin down, then as gone. */
	REQUIRE(runUntil(loop, [&] { return ch.lastFailure() == "interface sk-c0 not present"; }, 5s));
	CHECK(ch.state() == CheckerState::Failed);
	CHECK(t.seen == "unknown->ok ok->failed failed->ok ok->failed failed->ok ok->failed");
	/* Event driven: one result per changed verdict, no periodic samples in between. */
	CHECK(ch.okCount() == 3);
	CHECK(ch.failCount() >= 3);
	CHECK(ch.failCount() <= 6);
	ch.stop();

	/* An interface that never existed fails once the first dump is complete. */
	CheckerConfig m = baseConfig("ghost", CheckerType::Interface);
	m.interface = "sk-none";
	auto g = createChecker(loop, m, CheckerEnv{});
	REQUIRE(g.ok());
	(*g)->start();
	REQUIRE(runUntil(loop, [&] { return (*g)->state() == CheckerState::Failed; }, 5s));
	CHECK((*g)->lastFailure() == "interface sk-none not present");
	(*g)->stop();
}

TEST_CASE("ping checker: fails while the namespace's loopback is down, ok once it is up")
{
	if (geteuid() != 0) {
		MESSAGE("skipped: needs root (suite 'root')");
		return;
	}
	NetnsChild ns;
	REQUIRE(ns.ok());
	InNetns in(ns);
	REQUIRE(in.ok());
	auto l = EventLoop::create();
	REQUIRE(l.ok());
	EventLoop &loop = **l;
	CheckerConfig c = baseConfig("lo", CheckerType::Ping);
	c.address = "127.0.0.1";
	auto r = createChecker(loop, c, CheckerEnv{});
	REQUIRE(r.ok());
	Checker &ch = **r;
	Transitions t;
	t.attach(ch);
	/* A new namespace's lo is down: nothing answers. */
	ch.start();
	REQUIRE_MESSAGE(runUntil(loop, [&] { return ch.state() == CheckerState::Failed; }, 5s),
			"last: " << ch.lastDetail());
	CHECK(ch.failCount() >= kPolledFailuresToDeclare);
	CHECK(ch.lastFailure().find("ping 127.0.0.1") != std::string::npos);
	REQUIRE(sh("ip link set lo up"));
	REQUIRE_MESSAGE(runUntil(loop, [&] { return ch.state() == CheckerState::Ok; }, 5s),
			"last: " << ch.lastDetail());
	CHECK(t.seen == "unknown->failed failed->ok");
	ch.stop();
}
