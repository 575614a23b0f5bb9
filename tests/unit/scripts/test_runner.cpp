/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ScriptRunner with real /bin/sh scripts in a temporary module dir: results,
 * environment, output capture, timeout and cancel (checked by pid), queue order.
 * Every loop run is bounded by a deadline timer.
 */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/event_loop.h"
#include "scripts/runner.h"

/* So that failed CHECKs on line lists print expected and got. */
namespace doctest {
template<>
struct StringMaker<std::vector<std::string>> {
	static String convert(const std::vector<std::string> &lines)
	{
		std::string text = "{";
		for (size_t i = 0; i < lines.size(); i++)
			text += (i ? ", \"" : "\"") + lines[i] + "\"";
		text += "}";
		return String(text.c_str());
	}
};
template<>
struct StringMaker<std::vector<std::pair<std::string, std::string>>> {
	static String convert(const std::vector<std::pair<std::string, std::string>> &lines)
	{
		std::string text = "{";
		for (size_t i = 0; i < lines.size(); i++)
			text += (i ? ", " : "") + lines[i].first + ":\"" + lines[i].second + "\"";
		text += "}";
		return String(text.c_str());
	}
};
} /* namespace doctest */

using namespace std::chrono_literals;
using sk::EventLoop;
using sk::ScriptContext;
using sk::ScriptResult;
using sk::ScriptRunner;
using sk::ScriptRunnerOptions;

namespace {

constexpr auto kDeadline = 15s;

std::string readFile(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

std::vector<std::string> splitLines(const std::string &text)
{
	std::vector<std::string> lines;
	std::stringstream ss(text);
	std::string line;
	while (std::getline(ss, line))
		lines.push_back(line);
	return lines;
}

/* A process is gone once /proc has no entry for it or it is a zombie of someone else's. */
bool pidGone(pid_t pid)
{
	std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
	if (stat.empty())
		return true;
	size_t paren = stat.rfind(')');
	if (paren == std::string::npos || paren + 2 >= stat.size())
		return true;
	char state = stat[paren + 2];
	return state == 'Z' || state == 'X';
}

/* Bounded wait: SIGKILLed processes vanish quickly, but not synchronously. */
bool waitPidGone(pid_t pid)
{
	for (int i = 0; i < 250; i++) {
		if (pidGone(pid))
			return true;
		std::this_thread::sleep_for(20ms);
	}
	return false;
}

pid_t readPid(const std::string &path)
{
	std::string text = readFile(path);
	return text.empty() ? 0 : static_cast<pid_t>(std::stol(text));
}

struct Fixture {
	std::string dir;
	std::string scripts;
	std::unique_ptr<EventLoop> loop;
	std::unique_ptr<ScriptRunner> runner;
	std::vector<ScriptResult> results;
	std::vector<std::pair<std::string, std::string>> output;
	size_t wanted = 0;

	explicit Fixture(ScriptRunnerOptions options = {})
	{
		char tmpl[] = "/tmp/sk-scripts-test-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		dir = tmpl;
		scripts = dir + "/scripts";
		REQUIRE(mkdir(scripts.c_str(), 0755) == 0);
		auto l = EventLoop::create();
		REQUIRE(l.ok());
		loop = std::move(l).value();
		if (options.module.empty())
			options.module = "mod1";
		options.scriptDir = scripts;
		auto r = ScriptRunner::create(*loop, std::move(options));
		REQUIRE(r.ok());
		runner = std::move(r).value();
		runner->setOutputCallback([this](const std::string &script, std::string_view line) {
			output.emplace_back(script, std::string(line));
		});
	}

	~Fixture()
	{
		runner.reset();
		std::error_code ec;
		std::filesystem::remove_all(dir, ec);
	}

	void writeScript(const std::string &name, const std::string &body, mode_t mode = 0755)
	{
		std::string path = scripts + "/" + name;
		{
			std::ofstream out(path);
			out << "#!/bin/sh\n" << body << "\n";
		}
		REQUIRE(chmod(path.c_str(), mode) == 0);
	}

	void run(const std::string &script, ScriptContext context = {},
		 std::chrono::milliseconds timeout = 0ms)
	{
		runner->run(script, std::move(context), [this](const ScriptResult &r) {
			results.push_back(r);
			if (results.size() >= wanted)
				loop->stop();
		}, timeout);
	}

	/* Runs the loop until count results arrived; false on deadline. */
	bool waitResults(size_t count)
	{
		wanted = count;
		if (results.size() >= wanted)
			return true;
		bool expired = false;
		auto timer = loop->addTimer(kDeadline, [&] {
			expired = true;
			loop->stop();
		});
		CHECK(loop->run() == 0);
		loop->cancelTimer(timer);
		return !expired && results.size() >= count;
	}

	/* Runs the loop until pred() holds; false on deadline. */
	template<typename Pred>
	bool runUntil(Pred pred)
	{
		bool expired = false;
		auto deadline = loop->addTimer(kDeadline, [&] {
			expired = true;
			loop->stop();
		});
		auto check = loop->addPeriodic(5ms, [&] {
			if (pred())
				loop->stop();
		});
		CHECK(loop->run() == 0);
		loop->cancelTimer(deadline);
		loop->cancelTimer(check);
		return !expired;
	}
};

} /* namespace */

TEST_CASE("a script that exits 0 succeeds")
{
	Fixture f;
	f.writeScript("start_prim", "echo hello");
	f.run("start_prim");
	REQUIRE(f.waitResults(1));
	const ScriptResult &r = f.results[0];
	CHECK(r.script == "start_prim");
	CHECK(r.status.ok());
	CHECK(r.exitCode == 0);
	CHECK(r.termSignal == 0);
	CHECK_FALSE(r.timedOut);
	CHECK_FALSE(r.missing);
	CHECK(r.ok());
	CHECK(r.lastLines == std::vector<std::string>{ "hello" });
	CHECK_FALSE(f.runner->busy());
}

TEST_CASE("a failing script reports its exit code")
{
	Fixture f;
	f.writeScript("stop_prim", "echo failing >&2\nexit 3");
	f.run("stop_prim");
	REQUIRE(f.waitResults(1));
	const ScriptResult &r = f.results[0];
	CHECK(r.status.ok());
	CHECK(r.exitCode == 3);
	CHECK_FALSE(r.ok());
	/* stderr is captured too. */
	CHECK(r.lastLines == std::vector<std::string>{ "failing" });
}

TEST_CASE("the environment is clean and carries the module context")
{
	Fixture f;
	REQUIRE(setenv("SK_TEST_LEAK", "leaked", 1) == 0);
	f.writeScript("prestart", "env | sort");
	ScriptContext c;
	c.node = "node-a";
	c.role = "PRIM";
	c.peer = "node-b";
	c.peerState = "SECOND";
	c.stateDir = "/var/lib/sk/mod1";
	c.vips = { "198.18.0.10", "198.18.0.11" };
	c.extra = { { "SK_REASON", "failover" }, { "SK_ROLE", "ALONE" }, { "BAD=NAME", "x" } };
	f.run("prestart", c);
	REQUIRE(f.waitResults(1));
	unsetenv("SK_TEST_LEAK");
	REQUIRE(f.results[0].ok());

	std::vector<std::string> env;
	for (const auto &[script, line] : f.output)
		env.push_back(line);
	/* sh itself may add PWD, SHLVL, _ and OLDPWD: everything else must be ours. */
	std::vector<std::string> ours;
	for (const std::string &e : env) {
		std::string name = e.substr(0, e.find('='));
		if (name != "PWD" && name != "SHLVL" && name != "_" && name != "OLDPWD")
			ours.push_back(e);
	}
	std::vector<std::string> expected = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"SK_MODULE=mod1",
		"SK_NODE=node-a",
		"SK_PEER=node-b",
		"SK_PEER_STATE=SECOND",
		"SK_REASON=failover",
		"SK_ROLE=ALONE",
		"SK_SCRIPT=prestart",
		"SK_STATE_DIR=/var/lib/sk/mod1",
		"SK_VIPS=198.18.0.10 198.18.0.11",
	};
	CHECK(ours == expected);
}

TEST_CASE("output is captured line by line, including a last line without newline")
{
	ScriptRunnerOptions o;
	char logTmpl[] = "/tmp/sk-scripts-log-XXXXXX";
	int logFd = mkstemp(logTmpl);
	REQUIRE(logFd >= 0);
	close(logFd);
	o.logFile = logTmpl;
	{
		Fixture f(o);
		f.writeScript("start_both", "echo one\nprintf 'two\\n\\nfour\\nlast'");
		f.run("start_both");
		REQUIRE(f.waitResults(1));
		std::vector<std::pair<std::string, std::string>> expected = {
			{ "start_both", "one" },
			{ "start_both", "two" },
			{ "start_both", "" },
			{ "start_both", "four" },
			{ "start_both", "last" },
		};
		CHECK(f.output == expected);
		CHECK(f.results[0].lastLines == std::vector<std::string>{ "one", "two", "", "four", "last" });
	}
	/* The log file has one timestamped line per output line, plus start/finish. */
	std::vector<std::string> log = splitLines(readFile(logTmpl));
	unlink(logTmpl);
	REQUIRE(log.size() == 7);
	CHECK(log[1].find(" mod1 start_both: one") != std::string::npos);
	CHECK(log[5].find(" mod1 start_both: last") != std::string::npos);
	CHECK(log[6].find("finished: exit code 0") != std::string::npos);
	/* 2026-11-25T15:43:33.123Z */
	CHECK(log[1].size() > 24);
	CHECK(log[1][4] == '-');
	CHECK(log[1][10] == 'T');
	CHECK(log[1][23] == 'Z');
}

TEST_CASE("long lines are cut and kept output is bounded")
{
	ScriptRunnerOptions o;
	o.maxLineLength = 100;
	o.keepLines = 3;
	Fixture f(o);
	f.writeScript("start_prim",
		      "i=0; while [ $i -lt 10 ]; do echo line$i; i=$((i+1)); done\n"
		      "head -c 10000 /dev/zero | tr '\\0' x; echo; echo after");
	f.run("start_prim");
	REQUIRE(f.waitResults(1));
	REQUIRE(f.output.size() == 12);
	CHECK(f.output[10].second == std::string(100, 'x') + " [truncated]");
	CHECK(f.output[11].second == "after");
	CHECK(f.results[0].lastLines ==
	      std::vector<std::string>{ "line9", std::string(100, 'x') + " [truncated]", "after" });
}

TEST_CASE("a missing script is a success")
{
	Fixture f;
	f.run("stop_second");
	REQUIRE(f.waitResults(1));
	const ScriptResult &r = f.results[0];
	CHECK(r.missing);
	CHECK(r.ok());
	CHECK(r.exitCode == 0);
	CHECK(f.output.empty());
}

TEST_CASE("a script that is not executable is an error")
{
	Fixture f;
	f.writeScript("start_second", "exit 0", 0644);
	f.run("start_second");
	REQUIRE(f.waitResults(1));
	const ScriptResult &r = f.results[0];
	CHECK_FALSE(r.ok());
	CHECK_FALSE(r.missing);
	CHECK(r.status.code() == -EACCES);
	CHECK(r.status.error().message.find("not an executable") != std::string::npos);
}

TEST_CASE("a script without #! line and a bad name are errors")
{
	Fixture f;
	{
		std::ofstream out(f.scripts + "/poststop");
		out << "exit 0\n";
	}
	REQUIRE(chmod((f.scripts + "/poststop").c_str(), 0755) == 0);
	f.run("poststop");
	f.run("../escape");
	REQUIRE(f.waitResults(2));
	CHECK(f.results[0].status.code() == -ENOEXEC);
	CHECK(f.results[1].status.code() == -EINVAL);
}

TEST_CASE("scripts run one at a time in FIFO order")
{
	Fixture f;
	std::string trace = f.dir + "/trace";
	for (const char *name : { "a", "b", "c" })
		f.writeScript(name, std::string("echo ") + name + "-start >> " + trace +
					    "\nsleep 0.1\necho " + name + "-end >> " + trace);
	f.run("a");
	f.run("missing");
	f.run("b");
	f.run("c");
	CHECK(f.runner->queued() == 4);
	REQUIRE(f.waitResults(4));
	std::vector<std::string> scripts;
	for (const ScriptResult &r : f.results)
		scripts.push_back(r.script);
	CHECK(scripts == std::vector<std::string>{ "a", "missing", "b", "c" });
	CHECK(splitLines(readFile(trace)) ==
	      std::vector<std::string>{ "a-start", "a-end", "b-start", "b-end", "c-start", "c-end" });
}

TEST_CASE("a timeout kills a script that ignores SIGTERM, and its children")
{
	ScriptRunnerOptions o;
	o.killGrace = 300ms;
	Fixture f(o);
	std::string childPid = f.dir + "/child.pid";
	std::string selfPid = f.dir + "/self.pid";
	f.writeScript("start_prim", "trap '' TERM\necho $$ > " + selfPid + "\nsleep 30 &\necho $! > " +
					    childPid + "\necho waiting\nwait\necho not-reached");
	f.run("start_prim", {}, 300ms);
	REQUIRE(f.waitResults(1));
	const ScriptResult &r = f.results[0];
	CHECK(r.timedOut);
	CHECK(r.termSignal == SIGKILL);
	CHECK_FALSE(r.ok());
	CHECK(r.lastLines == std::vector<std::string>{ "waiting" });
	pid_t child = readPid(childPid);
	pid_t self = readPid(selfPid);
	REQUIRE(child > 0);
	REQUIRE(self > 0);
	CHECK(waitPidGone(child));
	CHECK(waitPidGone(self));
}

TEST_CASE("when the leader dies of SIGTERM, group members that ignore it get SIGKILL")
{
	ScriptRunnerOptions o;
	o.killGrace = 300ms;
	Fixture f(o);
	std::string childPid = f.dir + "/child.pid";
	f.writeScript("stop_prim", "sh -c 'trap \"\" TERM; echo $$ > " + childPid +
					   "; exec sleep 30' &\necho waiting\nwait");
	f.run("stop_prim", {}, 300ms);
	REQUIRE(f.waitResults(1));
	CHECK(f.results[0].timedOut);
	CHECK(f.results[0].termSignal == SIGTERM);
	pid_t child = readPid(childPid);
	REQUIRE(child > 0);
	CHECK(waitPidGone(child));
}

TEST_CASE("a timed-out script that honours SIGTERM dies of it, even when skd blocks SIGTERM")
{
	/* skd blocks SIGTERM for its signalfd; the child must not inherit the mask. */
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	REQUIRE(sigprocmask(SIG_BLOCK, &term, &old) == 0);
	ScriptRunnerOptions o;
	o.killGrace = 10s;
	Fixture f(o);
	/* exec: sleep keeps whatever mask it inherited (sh would reset its own). */
	f.writeScript("stop_both", "exec sleep 30");
	f.run("stop_both", {}, 200ms);
	bool done = f.waitResults(1);
	sigprocmask(SIG_SETMASK, &old, nullptr);
	REQUIRE(done);
	CHECK(f.results[0].timedOut);
	CHECK(f.results[0].termSignal == SIGTERM);
}

TEST_CASE("scripts start with no blocked and no ignored signals")
{
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	REQUIRE(sigprocmask(SIG_BLOCK, &term, &old) == 0);
	struct sigaction ignore = {}, oldPipe;
	ignore.sa_handler = SIG_IGN;
	REQUIRE(sigaction(SIGPIPE, &ignore, &oldPipe) == 0);
	Fixture f;
	f.writeScript("prestart", "exec grep -E '^Sig(Blk|Ign)' /proc/self/status");
	f.run("prestart");
	bool done = f.waitResults(1);
	sigprocmask(SIG_SETMASK, &old, nullptr);
	sigaction(SIGPIPE, &oldPipe, nullptr);
	REQUIRE(done);
	REQUIRE(f.results[0].lastLines.size() == 2);
	CHECK(f.results[0].lastLines[0] == "SigBlk:\t0000000000000000");
	/* glibc's posix_spawn ignores its two internal RT signals (32, 33) on purpose. */
	std::string ign = f.results[0].lastLines[1];
	REQUIRE(ign.rfind("SigIgn:\t", 0) == 0);
	unsigned long long mask = std::stoull(ign.substr(8), nullptr, 16);
	CHECK((mask & 0x7fffffffULL) == 0);	/* signals 1-31 */
}

TEST_CASE("cancel kills the running script and drops the queued ones")
{
	Fixture f;
	std::string selfPid = f.dir + "/self.pid";
	std::string marker = f.dir + "/second-ran";
	f.writeScript("start_prim", "echo $$ > " + selfPid + "\necho started\nsleep 30");
	f.writeScript("start_second", "touch " + marker);
	f.run("start_prim");
	f.run("start_second");
	REQUIRE(f.runUntil([&] { return !f.output.empty(); }));
	pid_t pid = f.runner->runningPid();
	CHECK(pid == readPid(selfPid));
	f.runner->cancel();
	/* Callbacks never run inside cancel(). */
	CHECK(f.results.empty());
	REQUIRE(f.waitResults(2));
	CHECK(f.results[0].script == "start_prim");
	CHECK(f.results[0].cancelled);
	CHECK(f.results[0].termSignal == SIGKILL);
	CHECK(f.results[1].script == "start_second");
	CHECK(f.results[1].cancelled);
	CHECK(f.results[1].status.code() == -ECANCELED);
	CHECK(waitPidGone(pid));
	CHECK_FALSE(std::filesystem::exists(marker));
	CHECK_FALSE(f.runner->busy());

	/* The runner stays usable after a cancel. */
	f.run("start_second");
	REQUIRE(f.waitResults(3));
	CHECK(f.results[2].ok());
	CHECK(std::filesystem::exists(marker));
}

TEST_CASE("destroying the runner kills the running script's group")
{
	Fixture f;
	std::string childPid = f.dir + "/child.pid";
	f.writeScript("start_prim", "sleep 30 &\necho $! > " + childPid + "\necho started\nwait");
	f.run("start_prim");
	REQUIRE(f.runUntil([&] { return !f.output.empty(); }));
	pid_t pid = f.runner->runningPid();
	REQUIRE(pid > 0);
	pid_t child = readPid(childPid);
	REQUIRE(child > 0);
	f.runner.reset();
	CHECK(waitPidGone(pid));
	CHECK(waitPidGone(child));
	CHECK(f.results.empty());
}

TEST_CASE("a done callback may destroy the runner")
{
	Fixture f;
	f.writeScript("a", "exit 0");
	f.writeScript("b", "exit 0");
	int calls = 0;
	f.runner->run("a", {}, [&](const ScriptResult &) {
		calls++;
		f.runner.reset();
		f.loop->stop();
	});
	f.runner->run("b", {}, [&](const ScriptResult &) { calls++; });
	auto deadline = f.loop->addTimer(kDeadline, [&] { f.loop->stop(); });
	CHECK(f.loop->run() == 0);
	f.loop->cancelTimer(deadline);
	CHECK(calls == 1);
	CHECK(f.runner == nullptr);
}

TEST_CASE("no descriptor of skd leaks into a script")
{
	Fixture f;
	/* A descriptor without O_CLOEXEC, as a careless library might leave one. */
	int fd = dup2(STDERR_FILENO, 57);
	REQUIRE(fd == 57);
	f.writeScript("prestart", "if [ -e /proc/$$/fd/57 ]; then echo leaked; else echo clean; fi");
	f.run("prestart");
	bool done = f.waitResults(1);
	close(fd);
	REQUIRE(done);
	CHECK(f.results[0].lastLines == std::vector<std::string>{ "clean" });
}

TEST_CASE("a relative script directory works and scripts run inside it")
{
	Fixture f;
	f.writeScript("prestart", "pwd");
	char old[4096];
	REQUIRE(getcwd(old, sizeof(old)) != nullptr);
	REQUIRE(chdir(f.dir.c_str()) == 0);
	ScriptRunnerOptions o;
	o.module = "rel";
	o.scriptDir = "scripts/";
	auto r = ScriptRunner::create(*f.loop, o);
	REQUIRE(chdir(old) == 0);
	REQUIRE(r.ok());
	f.runner = std::move(r).value();
	f.run("prestart");
	REQUIRE(f.waitResults(1));
	CHECK(f.results[0].ok());
	CHECK(f.results[0].lastLines == std::vector<std::string>{ f.scripts });
}
