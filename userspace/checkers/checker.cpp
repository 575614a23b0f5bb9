/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Checker base: scheduling (one check in flight at most), the consecutive-failure
 * threshold, counters and status; the factory that picks the type's class; the
 * /proc matching used by process checkers.
 */
#include "checkers/checker.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include "checkers/checker_types.h"
#include "core/log.h"

namespace sk {

namespace {

const LogCategory kLog("checker");

} /* namespace */

const char *checkerStateName(CheckerState state)
{
	switch (state) {
	case CheckerState::Unknown: return "unknown";
	case CheckerState::Ok: return "ok";
	case CheckerState::Failed: return "failed";
	}
	return "?";
}

Checker::Checker(EventLoop &loop, CheckerConfig config, uint32_t failuresToDeclare)
	: loop_(loop), config_(std::move(config)), threshold_(std::max<uint32_t>(1, failuresToDeclare))
{
}

void Checker::start()
{
	if (running_)
		return;
	running_ = true;
	consecutive_ = 0;
	if (!polled()) {
		startWatching();
		return;
	}
	/* Deferred so that no callback ever runs from inside start(). */
	firstTimer_ = loop_.addTimer(std::chrono::milliseconds(0), [this] {
		firstTimer_ = 0;
		tick();
	});
	periodic_ = loop_.addPeriodic(std::chrono::milliseconds(config_.intervalMs), [this] { tick(); });
}

void Checker::stop()
{
	if (!running_)
		return;
	running_ = false;
	if (firstTimer_)
		loop_.cancelTimer(firstTimer_);
	if (periodic_)
		loop_.cancelTimer(periodic_);
	firstTimer_ = periodic_ = 0;
	if (inFlight_)
		cancelCheck();
	inFlight_ = false;
	if (!polled())
		stopWatching();
	/* A stopped checker knows nothing: the next start must earn its state again. */
	state_ = CheckerState::Unknown;
	consecutive_ = 0;
}

void Checker::tick()
{
	if (!running_)
		return;
	if (inFlight_) {
		logDebug(kLog, "{}/{}: previous check still running, skipping this interval", config_.name,
			 configName(config_.type));
		return;
	}
	inFlight_ = true;
	lastCheckTime_ = Clock::now();
	beginCheck();
}

void Checker::finishCheck(bool ok, const std::string &detail)
{
	if (!inFlight_)
		return;	/* cancelled, or a stray second completion */
	inFlight_ = false;
	record(ok, detail);
}

void Checker::injectResult(bool ok, const std::string &detail)
{
	if (inFlight_) {
		cancelCheck();
		inFlight_ = false;
	}
	record(ok, detail);
}

void Checker::record(bool ok, const std::string &detail)
{
	if (!running_)
		return;
	lastCheckTime_ = Clock::now();
	lastOk_ = ok;
	lastDetail_ = detail;
	if (ok) {
		okCount_++;
		consecutive_ = 0;
		if (state_ != CheckerState::Ok)
			setState(CheckerState::Ok);
		return;
	}
	failCount_++;
	consecutive_++;
	lastFailure_ = detail;
	lastFailureTime_ = lastCheckTime_;
	if (state_ != CheckerState::Failed && consecutive_ >= threshold_) {
		setState(CheckerState::Failed);
		return;
	}
	if (state_ != CheckerState::Failed)
		logDebug(kLog, "{}/{}: check failed ({} of {} before declaring): {}", config_.name,
			 configName(config_.type), consecutive_, threshold_, detail);
}

void Checker::setState(CheckerState to)
{
	CheckerState from = state_;
	state_ = to;
	if (to == CheckerState::Failed)
		logWarn(kLog, "{}/{}: {} -> failed after {} failed check(s): {}", config_.name,
			configName(config_.type), checkerStateName(from), consecutive_, lastFailure_);
	else
		logInfo(kLog, "{}/{}: {} -> {}{}{}", config_.name, configName(config_.type),
			checkerStateName(from), checkerStateName(to), lastDetail_.empty() ? "" : ": ",
			lastDetail_);
	/* Last statement: the callback may stop this checker. */
	if (onState_)
		onState_(*this, from, to);
}

nlohmann::json Checker::status() const
{
	auto ageMs = [](Clock::time_point t) -> nlohmann::json {
		if (t == Clock::time_point{})
			return nullptr;
		return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
	};
	nlohmann::json j = {
		{ "name", config_.name },
		{ "type", configName(config_.type) },
		{ "when", configName(config_.when) },
		{ "action", configName(config_.action) },
		{ "running", running_ },
		{ "state", checkerStateName(state_) },
		{ "ok_count", okCount_ },
		{ "fail_count", failCount_ },
		{ "consecutive_failures", consecutive_ },
		{ "failures_to_declare", threshold_ },
	};
	if (lastCheckTime_ != Clock::time_point{})
		j["last_result"] = { { "ok", lastOk_ }, { "detail", lastDetail_ }, { "age_ms", ageMs(lastCheckTime_) } };
	else
		j["last_result"] = nullptr;
	if (!lastFailure_.empty())
		j["last_failure"] = { { "detail", lastFailure_ }, { "age_ms", ageMs(lastFailureTime_) } };
	else
		j["last_failure"] = nullptr;
	return j;
}

Result<std::unique_ptr<Checker>> createChecker(EventLoop &loop, const CheckerConfig &config,
					       const CheckerEnv &env)
{
	uint32_t polledN = env.failuresToDeclare ? env.failuresToDeclare : kPolledFailuresToDeclare;
	auto bad = [&](const std::string &what) {
		return makeError(-EINVAL, fmt::format("checker {}: {}", config.name, what));
	};
	switch (config.type) {
	case CheckerType::Process: {
		auto it = env.pidFiles.find(config.name);
		if (config.processName.empty() && it == env.pidFiles.end())
			return bad("a process checker needs a process name or a pid file");
		return makeProcessChecker(loop, config, polledN,
					  it == env.pidFiles.end() ? std::string() : it->second);
	}
	case CheckerType::Tcp:
		if (config.address.empty() || config.port == 0)
			return bad("a tcp checker needs an address and a port");
		return makeTcpChecker(loop, config, polledN);
	case CheckerType::Ping:
		if (config.address.empty())
			return bad("a ping checker needs an address");
		return makePingChecker(loop, config, polledN);
	case CheckerType::Interface:
		if (config.interface.empty())
			return bad("an interface checker needs an interface name");
		return makeInterfaceChecker(loop, config,
					    env.failuresToDeclare ? env.failuresToDeclare : kEventFailuresToDeclare);
	case CheckerType::Custom:
		if (config.script.empty())
			return bad("a custom checker needs a script");
		if (config.script[0] != '/' && env.scriptDir.empty())
			return bad("a custom checker with a relative script needs the module's scripts directory");
		return makeCustomChecker(loop, config, polledN, env);
	case CheckerType::Module:
		if (config.module.empty() || config.states.empty())
			return bad("a module checker needs a module and accepted states");
		if (!env.moduleState)
			return bad("no module state source given for a module checker");
		return makeModuleChecker(loop, config, polledN, env.moduleState);
	}
	return bad("unknown checker type");
}

/* ---- /proc ---- */

namespace {

/* Whole small file (comm, stat, cmdline); "" when unreadable (the process may be gone). */
std::string readSmallFile(const std::string &path, size_t max = 4096)
{
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return {};
	std::string out;
	char buf[1024];
	while (out.size() < max) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		out.append(buf, static_cast<size_t>(n));
	}
	close(fd);
	return out;
}

std::string basenameOf(const std::string &path)
{
	size_t slash = path.rfind('/');
	return slash == std::string::npos ? path : path.substr(slash + 1);
}

} /* namespace */

bool processMatches(const std::string &name, const std::string &comm, const std::string &argv0)
{
	if (name.empty())
		return false;
	constexpr size_t kCommMax = 15;	/* TASK_COMM_LEN - 1 */
	if (!argv0.empty() && basenameOf(argv0) == name)
		return true;
	if (name.size() <= kCommMax)
		return comm == name;
	/* comm is cut: a 15-character prefix alone could match another program. */
	return comm == name.substr(0, kCommMax) && !argv0.empty() && basenameOf(argv0) == name;
}

std::vector<int> findProcesses(const std::string &name, const std::string &procRoot)
{
	std::vector<int> pids;
	DIR *dir = opendir(procRoot.c_str());
	if (!dir)
		return pids;
	while (struct dirent *e = readdir(dir)) {
		const char *p = e->d_name;
		if (*p < '1' || *p > '9')
			continue;
		char *end = nullptr;
		long pid = strtol(p, &end, 10);
		if (*end != '\0' || pid <= 0)
			continue;
		std::string base = procRoot + "/" + p;
		/* stat gives comm and run state in one read: "pid (comm) S ..."; comm may hold ')'. */
		std::string stat = readSmallFile(base + "/stat");
		size_t open = stat.find('('), close = stat.rfind(')');
		if (open == std::string::npos || close == std::string::npos || close < open ||
		    close + 2 >= stat.size())
			continue;
		char runState = stat[close + 2];
		if (runState == 'Z' || runState == 'X')
			continue;	/* dead, waiting to be reaped: the service is gone */
		std::string comm = stat.substr(open + 1, close - open - 1);
		std::string argv0;
		/* cmdline only when needed: reading it takes the target's mm lock. */
		if (comm != name) {
			std::string cmdline = readSmallFile(base + "/cmdline");
			argv0 = cmdline.substr(0, cmdline.find('\0'));
		}
		if (processMatches(name, comm, argv0))
			pids.push_back(static_cast<int>(pid));
	}
	closedir(dir);
	std::sort(pids.begin(), pids.end());
	return pids;
}

} /* namespace sk */
