/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Checker unit tests against real things on loopback, no root needed: a TCP
 * listener that is then closed, child processes started and killed by pid,
 * scripts that exit 0/1 or hang (the loop must keep running on time), ping to
 * 127.0.0.1, a module checker with a fake state source, and ModuleCheckers.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>

#include "checker_test_util.h"
#include "checkers/module_checkers.h"

using namespace sk;
using namespace sk::test;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<EventLoop> makeLoop()
{
	auto l = EventLoop::create();
	REQUIRE(l.ok());
	return std::move(l.value());
}

std::unique_ptr<Checker> make(EventLoop &loop, const CheckerConfig &c, const CheckerEnv &env = {})
{
	auto r = createChecker(loop, c, env);
	if (!r.ok())
		FAIL("createChecker: " << r.error().message);
	return std::move(r.value());
}

/* A child that only waits to be killed, with comm = name (prctl) or argv[0] = argv0 (exec sleep). */
pid_t spawnNamed(const std::string &comm, const std::string &argv0 = {})
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		if (!argv0.empty()) {
			execl("/bin/sleep", argv0.c_str(), "60", static_cast<char *>(nullptr));
			_exit(127);
		}
		prctl(PR_SET_NAME, comm.c_str());
		for (;;)
			pause();
	}
	REQUIRE(pid > 0);
	return pid;
}

void killAndReap(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, nullptr, 0);
}

char procState(pid_t pid)
{
	std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
	std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
	size_t close = s.rfind(')');
	return close == std::string::npos || close + 2 >= s.size() ? '\0' : s[close + 2];
}

/* A temporary directory removed with its contents. */
struct TempDir {
	std::string path;
	TempDir()
	{
		char tmpl[] = "/tmp/sk-checker-test-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		path = tmpl;
	}
	~TempDir() { [[maybe_unused]] int rc = system(("rm -rf '" + path + "'").c_str()); }
	std::string write(const std::string &name, const std::string &body, mode_t mode = 0755)
	{
		std::string p = path + "/" + name;
		std::ofstream(p) << body;
		chmod(p.c_str(), mode);
		return p;
	}
};

} /* namespace */

TEST_CASE("tcp checker: ok against a listener, failed after it closes")
{
	auto loop = makeLoop();
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(fd >= 0);
	sockaddr_in a = {};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
	REQUIRE(listen(fd, 16) == 0);
	socklen_t len = sizeof(a);
	REQUIRE(getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0);

	CheckerConfig c = baseConfig("web", CheckerType::Tcp);
	c.address = "127.0.0.1";
	c.port = ntohs(a.sin_port);
	auto ch = make(*loop, c);
	Transitions t;
	t.attach(*ch);
	ch->start();
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s));
	CHECK(ch->okCount() >= 1);
	CHECK(ch->lastOk());

	close(fd);
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Failed; }, 5s));
	CHECK(ch->failCount() >= 2);
	CHECK(ch->consecutiveFailures() >= kPolledFailuresToDeclare);
	CHECK(ch->lastFailure().find("refused") != std::string::npos);
	CHECK(t.seen == "unknown->ok ok->failed");
	auto s = ch->status();
	CHECK(s["state"] == "failed");
	CHECK(s["type"] == "tcp");
	CHECK(s["last_failure"]["detail"] == ch->lastFailure());
	ch->stop();
	CHECK(ch->state() == CheckerState::Unknown);
}

TEST_CASE("process name matching")
{
	CHECK(processMatches("postgres", "postgres", ""));
	CHECK(processMatches("postgres", "other", "/usr/lib/postgresql/15/bin/postgres"));
	CHECK_FALSE(processMatches("postgres", "postgres: wal", "/usr/bin/postgres:"));
	CHECK_FALSE(processMatches("post", "postgres", "/usr/bin/postgres"));
	/* comm is cut at 15 characters: a long name needs argv[0] to agree. */
	CHECK_FALSE(processMatches("a-very-long-daemon", "a-very-long-dae", "/bin/sh"));
	CHECK(processMatches("a-very-long-daemon", "a-very-long-dae", "/opt/x/a-very-long-daemon"));
	CHECK_FALSE(processMatches("", "", ""));
}

TEST_CASE("process checker: counts children by comm and argv[0], min_count, killed by pid")
{
	auto loop = makeLoop();
	std::string comm = "skc" + std::to_string(getpid() % 100000000);
	std::string argName = "skarg-" + std::to_string(getpid());
	pid_t p1 = spawnNamed(comm);
	pid_t p2 = spawnNamed(comm);
	pid_t p3 = spawnNamed({}, "/nonexistent/" + argName);

	CheckerConfig c = baseConfig("app", CheckerType::Process);
	c.processName = comm;
	c.minCount = 2;
	auto ch = make(*loop, c);
	CheckerConfig c2 = baseConfig("argv", CheckerType::Process);
	c2.processName = argName;
	auto byArgv = make(*loop, c2);
	Transitions t;
	t.attach(*ch);
	ch->start();
	byArgv->start();
	bool ok = runUntil(*loop, [&] {
		return ch->state() == CheckerState::Ok && byArgv->state() == CheckerState::Ok;
	}, 5s);
	CHECK_MESSAGE(ok, "comm checker: " << ch->lastDetail() << "; argv checker: " << byArgv->lastDetail());
	CHECK(findProcesses(comm) == std::vector<int>{ std::min(p1, p2), std::max(p1, p2) });

	killAndReap(p2);
	CHECK(runUntil(*loop, [&] { return ch->state() == CheckerState::Failed; }, 5s));
	CHECK(ch->lastFailure().find("1 process(es) '" + comm + "' running, expected at least 2") !=
	      std::string::npos);
	killAndReap(p3);
	CHECK(runUntil(*loop, [&] { return byArgv->state() == CheckerState::Failed; }, 5s));
	CHECK(t.seen == "unknown->ok ok->failed");
	killAndReap(p1);
}

TEST_CASE("process checker: a zombie does not count; a pid file does")
{
	std::string comm = "skz" + std::to_string(getpid() % 100000000);
	pid_t parent = getpid();
	pid_t z = fork();
	if (z == 0) {
		if (getppid() != parent)
			_exit(1);
		prctl(PR_SET_NAME, comm.c_str());
		_exit(0);
	}
	REQUIRE(z > 0);
	for (int i = 0; i < 500 && procState(z) != 'Z'; i++)
		usleep(10000);
	REQUIRE(procState(z) == 'Z');
	CHECK(findProcesses(comm).empty());
	waitpid(z, nullptr, 0);

	auto loop = makeLoop();
	TempDir dir;
	pid_t live = spawnNamed(comm);
	std::string pidFile = dir.write("app.pid", std::to_string(live) + "\n", 0644);
	CheckerConfig c = baseConfig("pidf", CheckerType::Process);
	CheckerEnv env;
	env.pidFiles["pidf"] = pidFile;
	auto ch = make(*loop, c, env);
	ch->start();
	CHECK(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s));
	killAndReap(live);
	CHECK(runUntil(*loop, [&] { return ch->state() == CheckerState::Failed; }, 5s));
	CHECK(ch->lastFailure().find("is not running") != std::string::npos);
}

TEST_CASE("custom checker: exit 0 is ok, exit 1 is failed, a missing script is failed")
{
	auto loop = makeLoop();
	TempDir dir;
	dir.write("ok.sh", "#!/bin/sh\ntest \"$SK_CHECKER\" = good || exit 3\n"
			   "test \"$SK_NODE $SK_STATE_DIR\" = 'n7 /var/lib/sk/m' || exit 4\nexit 0\n");
	std::string flag = dir.path + "/fail-now";
	dir.write("flip.sh", "#!/bin/sh\nif [ -e '" + flag + "' ]; then echo 'service is sick'; exit 1; fi\nexit 0\n");

	CheckerEnv env;
	env.module = "m";
	env.scriptDir = dir.path;
	env.node = "n7";
	env.stateDir = "/var/lib/sk/m";
	CheckerConfig good = baseConfig("good", CheckerType::Custom, 100, 2000);
	good.script = "ok.sh";
	CheckerConfig flip = baseConfig("flip", CheckerType::Custom, 100, 2000);
	flip.script = dir.path + "/flip.sh";	/* absolute path */
	CheckerConfig gone = baseConfig("gone", CheckerType::Custom, 100, 2000);
	gone.script = "no-such-script";
	auto g = make(*loop, good, env);
	auto f = make(*loop, flip, env);
	auto m = make(*loop, gone, env);
	g->start();
	f->start();
	m->start();
	bool settled = runUntil(*loop, [&] {
		return g->state() == CheckerState::Ok && f->state() == CheckerState::Ok &&
		       m->state() == CheckerState::Failed;
	}, 10s);
	CHECK_MESSAGE(settled, "good: " << g->lastDetail() << "; flip: " << f->lastDetail() << "; gone: "
					<< m->lastDetail());
	CHECK(m->lastFailure().find("not found") != std::string::npos);

	dir.write("fail-now", "", 0644);
	CHECK(runUntil(*loop, [&] { return f->state() == CheckerState::Failed; }, 10s));
	CHECK(f->lastFailure().find("exited 1: service is sick") != std::string::npos);
	unlink(flag.c_str());
	CHECK(runUntil(*loop, [&] { return f->state() == CheckerState::Ok; }, 10s));
	CHECK(g->state() == CheckerState::Ok);
}

TEST_CASE("custom checker: a hung script is killed as a group at its timeout; the loop never stalls")
{
	auto loop = makeLoop();
	TempDir dir;
	std::string childPid = dir.path + "/child.pid";
	dir.write("hang.sh", "#!/bin/sh\nsleep 60 &\necho $! > '" + childPid + "'\nwait\n");

	CheckerEnv env;
	env.scriptDir = dir.path;
	/* A loop that waited for the script would stall at least timeout_ms at a time. */
	CheckerConfig c = baseConfig("hang", CheckerType::Custom, 2000, 1500);
	c.script = "hang.sh";
	auto ch = make(*loop, c, env);

	auto last = EventLoop::Clock::now();
	std::chrono::milliseconds maxGap{ 0 };
	int ticks = 0;
	auto beat = loop->addPeriodic(20ms, [&] {
		auto now = EventLoop::Clock::now();
		maxGap = std::max(maxGap, std::chrono::duration_cast<std::chrono::milliseconds>(now - last));
		last = now;
		ticks++;
	});
	ch->start();
	last = EventLoop::Clock::now();
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Failed; }, 15s));
	loop->cancelTimer(beat);
	CHECK(ch->failCount() >= 2);
	CHECK(ch->okCount() == 0);
	CHECK(ch->lastFailure().find("timed out after 1500 ms") != std::string::npos);
	CHECK(ticks > 50);
	CHECK_MESSAGE(maxGap < 1000ms, "the loop stalled for " << maxGap.count() << " ms");

	/* The script's background child died with its group. */
	std::ifstream pf(childPid);
	pid_t child = 0;
	pf >> child;
	REQUIRE(child > 0);
	bool gone = runUntil(*loop, [&] {
		char s = procState(child);
		return s == '\0' || s == 'Z';
	}, 3s);
	CHECK_MESSAGE(gone, "pid " << child << " of the hung script's group still runs");
	ch->stop();
}

TEST_CASE("ping checker: 127.0.0.1 answers")
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (s < 0)
		s = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (s < 0) {
		MESSAGE("skipped: neither a ping socket (net.ipv4.ping_group_range) nor a raw socket "
			"(CAP_NET_RAW) is allowed here");
		return;
	}
	close(s);
	auto loop = makeLoop();
	CheckerConfig c = baseConfig("lo", CheckerType::Ping);
	c.address = "127.0.0.1";
	auto ch = make(*loop, c);
	ch->start();
	CHECK_MESSAGE(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s),
		      "last: " << ch->lastDetail());
	CHECK(ch->lastDetail().find("127.0.0.1 answered") != std::string::npos);
	ch->stop();
}

TEST_CASE("module checker: the other module's state must be in the accepted set")
{
	auto loop = makeLoop();
	std::map<std::string, std::string> states = { { "db", "PRIM" } };
	CheckerEnv env;
	env.moduleState = [&](const std::string &m) {
		auto it = states.find(m);
		return it == states.end() ? std::string() : it->second;
	};
	CheckerConfig c = baseConfig("dbup", CheckerType::Module);
	c.module = "db";
	c.states = { "PRIM", "ALONE" };
	auto ch = make(*loop, c, env);
	Transitions t;
	t.attach(*ch);
	ch->start();
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s));
	states["db"] = "ALONE";
	runFor(*loop, 300ms);
	CHECK(ch->state() == CheckerState::Ok);
	states["db"] = "WAIT";
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Failed; }, 5s));
	CHECK(ch->lastFailure() == "module db is WAIT, expected PRIM or ALONE");
	states.erase("db");
	runFor(*loop, 300ms);
	CHECK(ch->lastFailure() == "module db is not known on this node");
	states["db"] = "PRIM";
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s));
	CHECK(t.seen == "unknown->ok ok->failed failed->ok");

	/* Without a state source the config is refused. */
	auto bad = createChecker(*loop, c, CheckerEnv{});
	CHECK(bad.code() == -EINVAL);
}

TEST_CASE("failures must be consecutive; one success clears")
{
	auto loop = makeLoop();
	CheckerEnv env;
	env.moduleState = [](const std::string &) { return std::string("PRIM"); };
	CheckerConfig c = baseConfig("m", CheckerType::Module, 60000);
	c.module = "x";
	c.states = { "PRIM" };
	auto ch = make(*loop, c, env);
	ch->start();
	REQUIRE(runUntil(*loop, [&] { return ch->state() == CheckerState::Ok; }, 5s));
	ch->injectResult(false, "one");
	CHECK(ch->state() == CheckerState::Ok);
	ch->injectResult(true, "fine");
	ch->injectResult(false, "two");
	CHECK(ch->state() == CheckerState::Ok);
	ch->injectResult(false, "three");
	CHECK(ch->state() == CheckerState::Failed);
	CHECK(ch->lastFailure() == "three");
	ch->injectResult(true, "back");
	CHECK(ch->state() == CheckerState::Ok);
}

TEST_CASE("ModuleCheckers: when gating starts/stops checkers, decisions reach the driver, status")
{
	auto loop = makeLoop();
	std::string otherState = "PRIM";
	ModuleCheckersOptions o;
	o.env.module = "web";
	o.env.moduleState = [&](const std::string &) { return otherState; };
	o.policy.maxLoop = 1;
	o.policy.loopIntervalMs = 3600000;
	std::vector<CheckerConfig> cs;
	CheckerConfig a = baseConfig("dep", CheckerType::Module, 50);
	a.module = "db";
	a.states = { "PRIM" };
	a.when = CheckerWhen::Prim;
	a.action = CheckerAction::Restart;
	cs.push_back(a);
	CheckerConfig w = a;
	w.name = "gate";
	w.when = CheckerWhen::Always;
	w.action = CheckerAction::Wait;
	cs.push_back(w);
	auto r = ModuleCheckers::create(*loop, cs, o);
	REQUIRE(r.ok());
	ModuleCheckers &mc = **r;
	std::vector<std::string> decisions;
	mc.setDecisionCallback([&](const PolicyDecision &d) {
		decisions.push_back(std::string(decisionName(d.kind)) + ":" + d.checker);
	});
	CHECK_FALSE(mc.find("dep")->running());
	CHECK(mc.injectResult("dep", false, "x") == -EAGAIN);
	CHECK(mc.injectResult("nosuch", false, "x") == -ENOENT);

	mc.setRole(ModuleRole::Second);
	CHECK_FALSE(mc.find("dep")->running());
	CHECK(mc.find("gate")->running());
	mc.setRole(ModuleRole::Prim);
	CHECK(mc.find("dep")->running());
	REQUIRE(runUntil(*loop, [&] { return mc.find("dep")->state() == CheckerState::Ok; }, 5s));

	/* dep fails: one restart allowed, the next failure escalates. */
	REQUIRE(mc.injectResult("dep", false, "db down") == 0);
	REQUIRE(mc.injectResult("dep", false, "db down") == 0);
	CHECK(decisions == std::vector<std::string>{ "restart:dep" });
	REQUIRE(mc.injectResult("dep", true, "db up") == 0);
	REQUIRE(mc.injectResult("dep", false, "db down") == 0);
	REQUIRE(mc.injectResult("dep", false, "db down") == 0);
	CHECK(decisions == std::vector<std::string>{ "restart:dep", "report:dep", "stopstart:dep" });
	CHECK(mc.status()["policy"]["restarts_used"] == 1);

	/* gate: a real state change drives wait, then resume. */
	decisions.clear();
	otherState = "WAIT";
	REQUIRE(runUntil(*loop, [&] { return !decisions.empty() && decisions.back() == "wait:gate"; }, 5s));
	mc.setRole(ModuleRole::Wait);
	CHECK_FALSE(mc.find("dep")->running());
	CHECK(mc.find("gate")->running());
	otherState = "PRIM";
	REQUIRE(runUntil(*loop, [&] { return decisions.back() == "resume:gate"; }, 5s));

	auto s = mc.status();
	REQUIRE(s["checkers"].size() == 2);
	CHECK(s["checkers"][0]["name"] == "dep");
	CHECK(s["checkers"][0]["running"] == false);
	CHECK(s["checkers"][1]["state"] == "ok");
	CHECK(s["checkers"][1]["last_failure"]["detail"] == "module db is WAIT, expected PRIM");
	CHECK(s["policy"]["last_decision"]["kind"] == "resume");
	CHECK(s["policy"]["role"] == "WAIT");
	auto &recent = s["policy"]["recent_decisions"];
	REQUIRE(recent.size() >= 4);
	CHECK(recent[0]["kind"] == "restart");
	CHECK(recent.back()["kind"] == "resume");
	CHECK(recent.back()["cause"].get<std::string>().find("condition cleared") != std::string::npos);

	mc.stopAll();
	CHECK_FALSE(mc.find("gate")->running());
}
