/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Process checker: counts live processes by name in /proc (comm or argv[0]
 * basename), plus an optional pid file's pid. The scan is a few small /proc reads
 * per process, done inline on the loop: no syscall here can wait on the network.
 */
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

#include "checkers/checker_types.h"

namespace sk {

namespace {

/* The pid in a pid file (first line), or 0. */
int readPidFile(const std::string &path, std::string *why)
{
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		*why = fmt::format("pid file {}: {}", path, strerror(errno));
		return 0;
	}
	char buf[32] = {};
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	char *end = nullptr;
	long pid = n > 0 ? strtol(buf, &end, 10) : 0;
	if (pid <= 0 || pid > 4194304 || (end && *end != '\0' && *end != '\n')) {
		*why = fmt::format("pid file {} holds no pid", path);
		return 0;
	}
	return static_cast<int>(pid);
}

/* Alive = /proc/<pid> exists and is not a zombie. */
bool pidAlive(int pid)
{
	std::string path = fmt::format("/proc/{}/stat", pid);
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	char buf[512];
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	std::string stat(buf, static_cast<size_t>(n));
	size_t close = stat.rfind(')');
	return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z' &&
	       stat[close + 2] != 'X';
}

class ProcessChecker : public Checker
{
public:
	ProcessChecker(EventLoop &loop, const CheckerConfig &config, uint32_t n, std::string pidFile)
		: Checker(loop, config, n), pidFile_(std::move(pidFile))
	{
	}

protected:
	void beginCheck() override
	{
		std::vector<int> pids;
		if (!config_.processName.empty())
			pids = findProcesses(config_.processName);
		std::string why;
		if (!pidFile_.empty()) {
			int pid = readPidFile(pidFile_, &why);
			if (pid > 0 && !pidAlive(pid))
				why = fmt::format("pid {} from {} is not running", pid, pidFile_);
			else if (pid > 0 && std::find(pids.begin(), pids.end(), pid) == pids.end())
				pids.push_back(pid);
		}
		std::string what = config_.processName.empty() ? pidFile_ : "'" + config_.processName + "'";
		if (!why.empty()) {
			finishCheck(false, why);
			return;
		}
		if (pids.size() < config_.minCount) {
			finishCheck(false, fmt::format("{} process(es) {} running, expected at least {}",
						       pids.size(), what, config_.minCount));
			return;
		}
		finishCheck(true, fmt::format("{} process(es) {} running", pids.size(), what));
	}
	void cancelCheck() override {}

private:
	std::string pidFile_;
};

} /* namespace */

std::unique_ptr<Checker> makeProcessChecker(EventLoop &loop, const CheckerConfig &config,
					    uint32_t failuresToDeclare, const std::string &pidFile)
{
	return std::make_unique<ProcessChecker>(loop, config, failuresToDeclare, pidFile);
}

} /* namespace sk */
