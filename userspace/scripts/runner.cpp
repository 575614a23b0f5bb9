/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ScriptRunner: posix_spawn into a fresh process group with a clean environment,
 * a pidfd and the output pipe watched by the EventLoop, timeout = SIGTERM to
 * the group then SIGKILL after a grace period.
 *
 * Invariant that makes kill(-pgid) safe: the script's leader is reaped only
 * after the last kill(-pgid) we send. While the leader is an unreaped zombie
 * its pid (= the pgid) cannot be reused, so a signal never reaches a stranger.
 */
#include "scripts/runner.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>

#include <fmt/format.h>

#include "core/log.h"

namespace sk {

namespace {

LogCategory kLog("script");

/* Bytes read from a pipe per loop wake-up, so a chatty script cannot starve skd. */
constexpr size_t kReadBudget = 64 * 1024;
/* What is left in the pipe after exit is read up to this much; the rest is dropped. */
constexpr size_t kFinalReadBudget = 256 * 1024;
/* Destructor: how long to wait for a SIGKILLed leader before leaving it to init. */
constexpr int kReapWaitMs = 1000;
constexpr std::string_view kTruncated = " [truncated]";
/* How often a timed-out group whose leader has exited is checked for stragglers. */
constexpr std::chrono::milliseconds kGroupCheckInterval{ 50 };

bool validScriptName(const std::string &name)
{
	if (name.empty() || name == "." || name == "..")
		return false;
	return name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

bool validEnvName(const std::string &name)
{
	return !name.empty() && name.find('=') == std::string::npos &&
	       name.find('\0') == std::string::npos;
}

int64_t elapsedMs(EventLoop::Clock::time_point since)
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(EventLoop::Clock::now() - since)
		.count();
}

/* Moves fd above stdio: a daemon started with fd 0-2 closed would get pipe fds there. */
int aboveStdio(int fd)
{
	if (fd > 2)
		return fd;
	int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	int err = errno;
	close(fd);
	if (moved < 0)
		errno = err;
	return moved;
}

/*
 * True while a process other than a zombie is in process group pgid. Zombies
 * (the unreaped leader among them) are skipped: they are dead already. Only
 * used during a timeout's grace period, so a /proc scan is cheap enough.
 */
bool groupHasLiveMembers(pid_t pgid)
{
	DIR *proc = opendir("/proc");
	if (!proc)
		return true;	/* cannot tell: let the grace period run out */
	bool found = false;
	while (struct dirent *entry = readdir(proc)) {
		if (entry->d_name[0] < '1' || entry->d_name[0] > '9')
			continue;
		std::string path = std::string(entry->d_name) + "/stat";
		int fd = openat(dirfd(proc), path.c_str(), O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		char buf[512];
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		/* "pid (comm) state ppid pgrp ...": comm may hold spaces and ')'. */
		const char *paren = strrchr(buf, ')');
		char state;
		int ppid, pgrp;
		if (!paren || sscanf(paren + 1, " %c %d %d", &state, &ppid, &pgrp) != 3)
			continue;
		if (pgrp == pgid && state != 'Z' && state != 'X') {
			found = true;
			break;
		}
	}
	closedir(proc);
	return found;
}

} /* namespace */

Result<std::unique_ptr<ScriptRunner>> ScriptRunner::create(EventLoop &loop, ScriptRunnerOptions options)
{
	if (options.module.empty())
		return makeError(-EINVAL, "script runner: module name is empty");
	if (options.scriptDir.empty())
		return makeError(-EINVAL, "script runner: script directory is empty");
	if (options.maxLineLength == 0)
		options.maxLineLength = 1;
	/* Absolute: the child chdirs into scriptDir before exec resolves the path. */
	std::error_code ec;
	std::filesystem::path dir = std::filesystem::absolute(options.scriptDir, ec);
	if (ec)
		return makeError(-ec.value(), errnoMessage("script directory " + options.scriptDir, ec.value()));
	options.scriptDir = dir.lexically_normal().string();
	while (options.scriptDir.size() > 1 && options.scriptDir.back() == '/')
		options.scriptDir.pop_back();

	std::unique_ptr<ScriptRunner> runner(new ScriptRunner(loop, std::move(options)));
	if (!runner->options_.logFile.empty()) {
		runner->logFd_ = open(runner->options_.logFile.c_str(),
				      O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (runner->logFd_ < 0) {
			int err = errno;
			return makeError(-err, errnoMessage("open script log " + runner->options_.logFile, -err));
		}
	}
	return runner;
}

ScriptRunner::ScriptRunner(EventLoop &loop, ScriptRunnerOptions options)
	: loop_(loop), options_(std::move(options)), alive_(std::make_shared<bool>(true))
{
}

ScriptRunner::~ScriptRunner()
{
	*alive_ = false;
	if (pumpTimer_)
		loop_.cancelTimer(pumpTimer_);
	if (child_.pid > 0) {
		logInfo(kLog, "{}: killing running script {} (pid {}) on shutdown", options_.module,
			child_.request.script, child_.pid);
		killGroup(SIGKILL);
		/*
		 * Bounded: a process stuck in D state (e.g. on a dead FUSE mount)
		 * cannot be waited for; init reaps it once skd has exited.
		 */
		struct pollfd pfd = { child_.pidFd, POLLIN, 0 };
		if (poll(&pfd, 1, kReapWaitMs) > 0) {
			siginfo_t info = {};
			waitid(P_PIDFD, static_cast<id_t>(child_.pidFd), &info, WEXITED | WNOHANG);
		} else {
			logWarn(kLog, "{}: script pid {} did not die within {} ms", options_.module,
				child_.pid, kReapWaitMs);
		}
		releaseChild();
	}
	if (logFd_ >= 0)
		close(logFd_);
}

void ScriptRunner::run(const std::string &script, ScriptContext context, DoneCallback done,
		       std::chrono::milliseconds timeout)
{
	if (timeout.count() <= 0)
		timeout = options_.timeout;
	queue_.push_back(Request{ script, std::move(context), std::move(done), timeout });
	schedulePump();
}

void ScriptRunner::cancel()
{
	if (child_.pid > 0 && !child_.cancelled) {
		logInfo(kLog, "{}: cancelling script {} (pid {})", options_.module,
			child_.request.script, child_.pid);
		child_.cancelled = true;
		killGroup(SIGKILL);
		if (child_.timeoutTimer)
			loop_.cancelTimer(child_.timeoutTimer);
		child_.timeoutTimer = 0;
		if (child_.killTimer)
			loop_.cancelTimer(child_.killTimer);
		child_.killTimer = 0;
		if (child_.groupCheckTimer)
			loop_.cancelTimer(child_.groupCheckTimer);
		child_.groupCheckTimer = 0;
		if (child_.leaderExited) {
			/* Was waiting out the grace period; finish from the loop, not here. */
			child_.killTimer = loop_.addTimer(std::chrono::milliseconds(0), [this] {
				child_.killTimer = 0;
				finish();
			});
		}
	}
	while (!queue_.empty()) {
		Request request = std::move(queue_.front());
		queue_.pop_front();
		logInfo(kLog, "{}: dropping queued script {}", options_.module, request.script);
		ScriptResult result;
		result.cancelled = true;
		result.status = makeError(-ECANCELED, "script " + request.script + " cancelled before it started");
		result.script = request.script;
		/* Reported after the running script's result, keeping results in FIFO order. */
		if (child_.pid > 0)
			dropped_.emplace_back(std::move(result), std::move(request.done));
		else
			finishWithoutRun(std::move(request), std::move(result));
	}
}

void ScriptRunner::schedulePump()
{
	/* A zero timer, not a direct call: callbacks never run inside run()/cancel(). */
	if (pumpTimer_)
		return;
	pumpTimer_ = loop_.addTimer(std::chrono::milliseconds(0), [this] { pump(); });
}

void ScriptRunner::pump()
{
	pumpTimer_ = 0;
	std::shared_ptr<bool> alive = alive_;
	while (!reports_.empty()) {
		auto [result, done] = std::move(reports_.front());
		reports_.pop_front();
		if (done)
			done(result);
		if (!*alive)
			return;
	}
	startNext();
}

void ScriptRunner::finishWithoutRun(Request &&request, ScriptResult result)
{
	result.script = request.script;
	reports_.emplace_back(std::move(result), std::move(request.done));
	schedulePump();
}

void ScriptRunner::startNext()
{
	while (child_.pid == 0 && !queue_.empty()) {
		Request request = std::move(queue_.front());
		queue_.pop_front();
		ScriptResult result;

		if (!validScriptName(request.script)) {
			result.status = makeError(-EINVAL, fmt::format("invalid script name '{}'", request.script));
			logError(kLog, "{}: {}", options_.module, result.status.error().message);
			finishWithoutRun(std::move(request), std::move(result));
			continue;
		}
		std::string path = options_.scriptDir + "/" + request.script;
		struct stat st;
		if (stat(path.c_str(), &st) < 0) {
			int err = errno;
			if (err == ENOENT || err == ENOTDIR) {
				/* A module need not provide every hook. */
				logDebug(kLog, "{}: no {} script, nothing to run", options_.module, request.script);
				result.missing = true;
				result.exitCode = 0;
			} else {
				result.status = makeError(-err, errnoMessage("script " + path, -err));
				logError(kLog, "{}: {}", options_.module, result.status.error().message);
			}
			finishWithoutRun(std::move(request), std::move(result));
			continue;
		}
		if (!S_ISREG(st.st_mode) || access(path.c_str(), X_OK) < 0) {
			result.status = makeError(-EACCES,
				fmt::format("script {} is not an executable file (chmod +x it)", path));
			logError(kLog, "{}: {}", options_.module, result.status.error().message);
			writeLog(request.script, result.status.error().message);
			finishWithoutRun(std::move(request), std::move(result));
			continue;
		}
		spawn(std::move(request), path);
	}
}

std::vector<std::string> ScriptRunner::buildEnv(const Request &request) const
{
	const ScriptContext &c = request.context;
	std::string vips;
	for (const std::string &vip : c.vips) {
		if (!vips.empty())
			vips += ' ';
		vips += vip;
	}
	std::vector<std::pair<std::string, std::string>> vars = {
		{ "PATH", options_.path },
		{ "SK_MODULE", options_.module },
		{ "SK_NODE", c.node },
		{ "SK_ROLE", c.role },
		{ "SK_PEER", c.peer },
		{ "SK_PEER_STATE", c.peerState },
		{ "SK_SCRIPT", request.script },
		{ "SK_STATE_DIR", c.stateDir },
		{ "SK_VIPS", vips },
	};
	for (const auto &[name, value] : c.extra) {
		if (!validEnvName(name)) {
			logWarn(kLog, "{}: ignoring invalid environment variable name '{}'", options_.module, name);
			continue;
		}
		bool replaced = false;
		for (auto &var : vars) {
			if (var.first == name) {
				var.second = value;
				replaced = true;
			}
		}
		if (!replaced)
			vars.emplace_back(name, value);
	}
	std::vector<std::string> env;
	env.reserve(vars.size());
	for (const auto &[name, value] : vars)
		env.push_back(name + "=" + value);
	return env;
}

void ScriptRunner::spawn(Request &&request, const std::string &path)
{
	ScriptResult failed;
	auto fail = [&](int code, const std::string &message) {
		failed.status = makeError(code, message);
		logError(kLog, "{}: {}", options_.module, message);
		writeLog(request.script, message);
		finishWithoutRun(std::move(request), std::move(failed));
	};

	int fds[2];
	/* Both ends CLOEXEC: other threads' children must not inherit them. */
	if (pipe2(fds, O_CLOEXEC) < 0) {
		int err = errno;
		return fail(-err, errnoMessage("pipe2", -err));
	}
	int readFd = aboveStdio(fds[0]);
	int writeFd = aboveStdio(fds[1]);
	if (readFd < 0 || writeFd < 0) {
		int err = errno;
		if (readFd >= 0)
			close(readFd);
		if (writeFd >= 0)
			close(writeFd);
		return fail(-err, errnoMessage("pipe fd", -err));
	}
	/* Only our end is non-blocking: the script's stdout must stay blocking. */
	fcntl(readFd, F_SETFL, fcntl(readFd, F_GETFL) | O_NONBLOCK);

	std::vector<std::string> env = buildEnv(request);
	std::vector<char *> envp;
	for (std::string &e : env)
		envp.push_back(e.data());
	envp.push_back(nullptr);
	std::string argv0 = path;
	char *argv[] = { argv0.data(), nullptr };

	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&actions, writeFd, 1);
	posix_spawn_file_actions_adddup2(&actions, writeFd, 2);
	posix_spawn_file_actions_addclosefrom_np(&actions, 3);
	posix_spawn_file_actions_addchdir_np(&actions, options_.scriptDir.c_str());

	posix_spawnattr_t attr;
	posix_spawnattr_init(&attr);
	/*
	 * Own process group, so a timeout reaches the script's children too.
	 * skd blocks signals for its signalfd and ignores SIGPIPE: undo both, or
	 * the script could not be stopped with SIGTERM and would misbehave.
	 */
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
					POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&attr, 0);
	sigset_t none;
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&attr, &none);
	sigset_t all;
	sigfillset(&all);
	posix_spawnattr_setsigdefault(&attr, &all);

	pid_t pid = 0;
	int ret = posix_spawn(&pid, path.c_str(), &actions, &attr, argv, envp.data());
	posix_spawn_file_actions_destroy(&actions);
	posix_spawnattr_destroy(&attr);
	close(writeFd);
	if (ret != 0) {
		close(readFd);
		std::string hint = ret == ENOEXEC ? " (missing #! line?)" : "";
		return fail(-ret, errnoMessage("exec " + path, -ret) + hint);
	}

	/* syscall(): glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++. */
	int pidFd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
	if (pidFd < 0) {
		/* Cannot watch it: do not leave it running unsupervised. */
		int err = errno;
		kill(-pid, SIGKILL);
		waitpid(pid, nullptr, 0);
		close(readFd);
		return fail(-err, errnoMessage("pidfd_open", -err));
	}

	child_ = Child{};
	child_.pid = pid;
	child_.pidFd = pidFd;
	child_.outFd = readFd;
	child_.started = EventLoop::Clock::now();
	child_.request = std::move(request);
	logInfo(kLog, "{}: running {} (pid {}, timeout {} ms)", options_.module, child_.request.script,
		pid, child_.request.timeout.count());
	writeLog(child_.request.script, fmt::format("started (pid {})", pid));

	child_.pidWatch = loop_.watchFd(pidFd, POLLIN, [this](uint32_t) { onExit(); });
	child_.outWatch = loop_.watchFd(readFd, POLLIN, [this](uint32_t) { readOutput(kReadBudget); });
	if (child_.request.timeout.count() > 0)
		child_.timeoutTimer = loop_.addTimer(child_.request.timeout, [this] { onTimeout(); });
}

void ScriptRunner::onTimeout()
{
	child_.timeoutTimer = 0;
	if (child_.pid <= 0)
		return;
	child_.timedOut = true;
	logWarn(kLog, "{}: script {} (pid {}) timed out after {} ms, sending SIGTERM to its group",
		options_.module, child_.request.script, child_.pid, child_.request.timeout.count());
	writeLog(child_.request.script, "timed out: SIGTERM");
	killGroup(SIGTERM);
	child_.killTimer = loop_.addTimer(options_.killGrace, [this] {
		child_.killTimer = 0;
		if (child_.pid <= 0)
			return;
		logWarn(kLog, "{}: script {} (pid {}) still there after {} ms, sending SIGKILL",
			options_.module, child_.request.script, child_.pid, options_.killGrace.count());
		writeLog(child_.request.script, "timed out: SIGKILL");
		killGroup(SIGKILL);
		if (child_.leaderExited)
			finish();
	});
}

void ScriptRunner::onExit()
{
	if (child_.pid <= 0 || child_.leaderExited)
		return;
	if (child_.killTimer) {
		/*
		 * Leader gone after SIGTERM, but its group gets the full grace period
		 * before SIGKILL. The unreaped leader keeps the pgid from reuse.
		 */
		child_.leaderExited = true;
		loop_.unwatch(child_.pidWatch);
		child_.pidWatch = 0;
		/* No need to sit out the grace period once the whole group is gone. */
		child_.groupCheckTimer = loop_.addPeriodic(kGroupCheckInterval, [this] {
			if (groupHasLiveMembers(child_.pid))
				return;
			loop_.cancelTimer(child_.groupCheckTimer);
			child_.groupCheckTimer = 0;
			if (child_.killTimer)
				loop_.cancelTimer(child_.killTimer);
			child_.killTimer = 0;
			finish();
		});
		return;
	}
	finish();
}

void ScriptRunner::finish()
{
	if (child_.pid <= 0)
		return;
	std::shared_ptr<bool> alive = alive_;
	if (child_.timedOut || child_.cancelled)
		killGroup(SIGKILL);

	ScriptResult result;
	siginfo_t info = {};
	if (waitid(P_PIDFD, static_cast<id_t>(child_.pidFd), &info, WEXITED | WNOHANG) < 0) {
		int err = errno;
		result.status = makeError(-err, errnoMessage("waitid for script " + child_.request.script, -err));
	} else if (info.si_pid == 0) {
		/* Cannot happen: finish() runs only once the leader has exited. */
		result.status = makeError(-EAGAIN, "script " + child_.request.script + " not reaped");
	}
	if (info.si_pid != 0) {
		if (info.si_code == CLD_EXITED)
			result.exitCode = info.si_status;
		else
			result.termSignal = info.si_status;
	}

	/* What the script wrote just before exiting; a background child may keep writing. */
	if (child_.outFd >= 0) {
		readOutput(kFinalReadBudget);
		if (!*alive)
			return;
	}
	if (!child_.partial.empty() && !child_.discarding) {
		std::string last = std::move(child_.partial);
		child_.partial.clear();
		emitLine(std::move(last));
		if (!*alive)
			return;
	}

	result.script = child_.request.script;
	result.timedOut = child_.timedOut;
	result.cancelled = child_.cancelled;
	result.durationMs = elapsedMs(child_.started);
	result.lastLines.assign(std::make_move_iterator(child_.lines.begin()),
				std::make_move_iterator(child_.lines.end()));

	std::string how;
	if (!result.status.ok())
		how = result.status.error().message;
	else if (result.termSignal)
		how = fmt::format("killed by signal {} ({})", result.termSignal, strsignal(result.termSignal));
	else
		how = fmt::format("exit code {}", result.exitCode);
	if (result.timedOut)
		how += ", timed out";
	if (result.cancelled)
		how += ", cancelled";
	std::string summary = fmt::format("finished: {} after {} ms", how, result.durationMs);
	if (result.ok())
		logInfo(kLog, "{}: {} {}", options_.module, result.script, summary);
	else
		logWarn(kLog, "{}: {} {}", options_.module, result.script, summary);
	writeLog(result.script, summary);

	DoneCallback done = std::move(child_.request.done);
	releaseChild();
	reports_.emplace_back(std::move(result), std::move(done));
	while (!dropped_.empty()) {
		reports_.push_back(std::move(dropped_.front()));
		dropped_.pop_front();
	}
	schedulePump();
}

void ScriptRunner::readOutput(size_t budget)
{
	char buf[16384];
	size_t total = 0;
	while (child_.outFd >= 0) {
		if (total >= budget) {
			/* More may be waiting; the poll may not fire again for it. */
			if (!child_.drainTimer && budget == kReadBudget)
				child_.drainTimer = loop_.addTimer(std::chrono::milliseconds(0), [this] {
					child_.drainTimer = 0;
					readOutput(kReadBudget);
				});
			return;
		}
		ssize_t n = read(child_.outFd, buf, sizeof(buf));
		if (n > 0) {
			total += static_cast<size_t>(n);
			if (!appendBytes(buf, static_cast<size_t>(n)))
				return;	/* runner destroyed by a callback */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* EOF (every writer gone) or an error: nothing more will come. */
		loop_.unwatch(child_.outWatch);
		child_.outWatch = 0;
		close(child_.outFd);
		child_.outFd = -1;
	}
}

bool ScriptRunner::appendBytes(const char *data, size_t len)
{
	while (len > 0) {
		const char *nl = static_cast<const char *>(memchr(data, '\n', len));
		size_t chunk = nl ? static_cast<size_t>(nl - data) : len;
		if (!child_.discarding) {
			size_t room = options_.maxLineLength - child_.partial.size();
			if (chunk <= room) {
				child_.partial.append(data, chunk);
			} else {
				child_.partial.append(data, room);
				child_.partial += kTruncated;
				std::string line = std::move(child_.partial);
				child_.partial.clear();
				child_.discarding = true;
				if (!emitLine(std::move(line)))
					return false;
			}
		}
		if (!nl)
			return true;
		if (child_.discarding) {
			child_.discarding = false;
		} else {
			std::string line = std::move(child_.partial);
			child_.partial.clear();
			if (!emitLine(std::move(line)))
				return false;
		}
		data += chunk + 1;
		len -= chunk + 1;
	}
	return true;
}

bool ScriptRunner::emitLine(std::string line)
{
	writeLog(child_.request.script, line);
	logDebug(kLog, "{}/{}: {}", options_.module, child_.request.script, line);

	/* Bounded: at most keepLines lines and keepBytes bytes are held. */
	child_.linesBytes += line.size();
	child_.lines.push_back(line);
	while (!child_.lines.empty() &&
	       (child_.lines.size() > options_.keepLines || child_.linesBytes > options_.keepBytes)) {
		child_.linesBytes -= child_.lines.front().size();
		child_.lines.pop_front();
	}

	if (!onOutput_)
		return true;
	std::shared_ptr<bool> alive = alive_;
	/* Copies: the callback may destroy this runner (and with it onOutput_). */
	OutputCallback cb = onOutput_;
	std::string script = child_.request.script;
	cb(script, line);
	return *alive;
}

void ScriptRunner::killGroup(int signo)
{
	if (child_.pid <= 0)
		return;
	if (kill(-child_.pid, signo) < 0 && errno != ESRCH)
		logWarn(kLog, "{}: kill(-{}, {}): {}", options_.module, child_.pid, signo, strerror(errno));
}

void ScriptRunner::releaseChild()
{
	if (child_.pidWatch)
		loop_.unwatch(child_.pidWatch);
	if (child_.outWatch)
		loop_.unwatch(child_.outWatch);
	if (child_.timeoutTimer)
		loop_.cancelTimer(child_.timeoutTimer);
	if (child_.killTimer)
		loop_.cancelTimer(child_.killTimer);
	if (child_.drainTimer)
		loop_.cancelTimer(child_.drainTimer);
	if (child_.groupCheckTimer)
		loop_.cancelTimer(child_.groupCheckTimer);
	if (child_.pidFd >= 0)
		close(child_.pidFd);
	if (child_.outFd >= 0)
		close(child_.outFd);
	child_ = Child{};
}

void ScriptRunner::writeLog(std::string_view script, std::string_view line)
{
	if (logFd_ < 0)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	std::string text = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}: {}\n",
				       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
				       tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, options_.module,
				       script, line);
	/* O_APPEND: one write() per line keeps lines whole even with other writers. */
	if (write(logFd_, text.data(), text.size()) < 0)
		logDebug(kLog, "{}: script log write failed: {}", options_.module, strerror(errno));
}

} /* namespace sk */
