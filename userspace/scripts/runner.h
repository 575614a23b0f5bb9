/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ScriptRunner: runs a module's hook scripts (prestart, start_prim, ...) one at
 * a time in FIFO order without ever blocking skd's event loop; bounds their run
 * time and their captured output, and leaves no process of theirs behind.
 */
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

/* What a script learns about its module, passed as SK_* environment variables. */
struct ScriptContext {
	std::string node;		/* SK_NODE */
	std::string role;		/* SK_ROLE (e.g. PRIM, SECOND, ALONE) */
	std::string peer;		/* SK_PEER */
	std::string peerState;		/* SK_PEER_STATE */
	std::string stateDir;		/* SK_STATE_DIR */
	std::vector<std::string> vips;	/* SK_VIPS, space separated */
	/* Added after the SK_* variables; a name given twice keeps the last value. */
	std::vector<std::pair<std::string, std::string>> extra;
};

struct ScriptResult {
	std::string script;
	/*
	 * Failure to run at all: -EACCES (not executable), -ENOEXEC (no #! line),
	 * -EINVAL (bad name), -ECANCELED (dropped from the queue by cancel()),
	 * or the errno of a failed pipe/spawn. exitCode/termSignal are then unset.
	 */
	Status status;
	int exitCode = -1;		/* set when the script exited normally */
	int termSignal = 0;		/* signal that ended the script, 0 if it exited */
	bool timedOut = false;		/* killed because it overran its timeout */
	bool cancelled = false;		/* killed or dropped by cancel() */
	bool missing = false;		/* no such hook: counts as success */
	int64_t durationMs = 0;
	std::vector<std::string> lastLines;	/* the last output lines, oldest first */

	bool ok() const
	{
		return status.ok() && !timedOut && !cancelled && termSignal == 0 && exitCode == 0;
	}
};

struct ScriptRunnerOptions {
	std::string module;		/* SK_MODULE, and the log prefix */
	std::string scriptDir;		/* <module dir>/scripts */
	std::string logFile;		/* optional: output appended here with timestamps */
	std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	std::chrono::milliseconds timeout{ 120000 };	/* default per script; 0: none */
	std::chrono::milliseconds killGrace{ 2000 };	/* SIGTERM -> SIGKILL delay */
	size_t maxLineLength = 4096;	/* longer lines are cut, marked " [truncated]" */
	size_t keepLines = 20;		/* lines kept for ScriptResult::lastLines */
	size_t keepBytes = 16384;	/* and at most this many bytes of them */
};

/*
 * One per module. Every callback runs on the loop thread and never from inside
 * run() or cancel(). The runner may be destroyed from inside its own callbacks.
 *
 * A script's process group is killed when it times out, on cancel() and on
 * destruction, but not after a normal exit: a start script may legitimately
 * leave a daemon running. Such a daemon must redirect its stdout/stderr, as the
 * output pipe is closed once the script itself has exited.
 */
class ScriptRunner
{
public:
	using OutputCallback = std::function<void(const std::string &script, std::string_view line)>;
	using DoneCallback = std::function<void(const ScriptResult &result)>;

	static Result<std::unique_ptr<ScriptRunner>> create(EventLoop &loop, ScriptRunnerOptions options);
	/*
	 * Kills the running script's group (SIGKILL) and waits up to 1 s for it;
	 * no further callbacks. Must run before the EventLoop is destroyed.
	 */
	~ScriptRunner();

	ScriptRunner(const ScriptRunner &) = delete;
	ScriptRunner &operator=(const ScriptRunner &) = delete;

	void setOutputCallback(OutputCallback cb) { onOutput_ = std::move(cb); }

	/*
	 * Queues <scriptDir>/<script>; done (may be empty) gets the result. The
	 * context is captured now. timeout 0 uses options.timeout. The script runs
	 * with cwd = scriptDir, stdin = /dev/null, stdout+stderr = the capture pipe,
	 * no other fd, an empty signal mask and default signal dispositions.
	 */
	void run(const std::string &script, ScriptContext context, DoneCallback done,
		 std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

	/*
	 * Kills the running script's group and drops the queued ones; each gets a
	 * result with cancelled set (the running one once it has been reaped).
	 */
	void cancel();

	bool busy() const { return child_.pid > 0 || !queue_.empty(); }
	size_t queued() const { return queue_.size(); }
	/* Pid (= process group id) of the running script, 0 if none. */
	pid_t runningPid() const { return child_.pid; }

private:
	struct Request {
		std::string script;
		ScriptContext context;
		DoneCallback done;
		std::chrono::milliseconds timeout;
	};
	struct Child {
		pid_t pid = 0;
		int pidFd = -1;
		int outFd = -1;
		EventLoop::WatchId pidWatch = 0;
		EventLoop::WatchId outWatch = 0;
		EventLoop::TimerId timeoutTimer = 0;
		EventLoop::TimerId killTimer = 0;
		EventLoop::TimerId drainTimer = 0;
		EventLoop::TimerId groupCheckTimer = 0;
		EventLoop::Clock::time_point started;
		Request request;
		bool timedOut = false;
		bool cancelled = false;
		bool leaderExited = false;	/* exited, unreaped, group in its grace */
		std::string partial;		/* current line, at most maxLineLength */
		bool discarding = false;	/* dropping the rest of a cut line */
		std::deque<std::string> lines;
		size_t linesBytes = 0;
	};

	ScriptRunner(EventLoop &loop, ScriptRunnerOptions options);

	void schedulePump();
	void pump();
	void startNext();
	void spawn(Request &&request, const std::string &path);
	void finishWithoutRun(Request &&request, ScriptResult result);
	void onTimeout();
	void onExit();
	void finish();
	void readOutput(size_t budget);
	/* These return false once an output callback has destroyed the runner. */
	bool appendBytes(const char *data, size_t len);
	bool emitLine(std::string line);
	void killGroup(int signo);
	void releaseChild();
	void writeLog(std::string_view script, std::string_view line);
	std::vector<std::string> buildEnv(const Request &request) const;

	EventLoop &loop_;
	ScriptRunnerOptions options_;
	OutputCallback onOutput_;
	int logFd_ = -1;

	std::deque<Request> queue_;
	Child child_;
	/* Results ready to be reported from pump(), in order. */
	std::deque<std::pair<ScriptResult, DoneCallback>> reports_;
	/* Queued scripts dropped by cancel(), reported after the running one. */
	std::deque<std::pair<ScriptResult, DoneCallback>> dropped_;
	EventLoop::TimerId pumpTimer_ = 0;
	/* Cleared by the destructor: lets a callback destroy its runner safely. */
	std::shared_ptr<bool> alive_;
};

} /* namespace sk */
