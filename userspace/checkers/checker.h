/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Checkers: one class per checker type (process, tcp, ping, interface, custom,
 * module) behind one interface, all on the EventLoop and never blocking it.
 * A checker only says ok/failed; what to do about it is CheckerPolicy's job.
 */
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/event_loop.h"

namespace sk {

/* Unknown: stopped, or not enough results yet to declare either state. */
enum class CheckerState : uint8_t { Unknown, Ok, Failed };
const char *checkerStateName(CheckerState state);	/* "unknown", "ok", "failed" */

/*
 * Consecutive failed checks before a polled checker (process, tcp, ping, custom,
 * module) is declared failed: one lost probe is not worth a restart. Interface
 * checkers are event driven (a link event is a fact, not a sample): 1. One
 * success clears a failure. The config has no key for it on purpose.
 */
constexpr uint32_t kPolledFailuresToDeclare = 2;
constexpr uint32_t kEventFailuresToDeclare = 1;

/* What a module gives its checkers. */
struct CheckerEnv {
	std::string module;		/* for logs and SK_MODULE */
	std::string scriptDir;		/* custom checkers: <module dir>/scripts */
	std::string node;		/* custom checkers: SK_NODE */
	std::string stateDir;		/* custom checkers: SK_STATE_DIR */
	/* module checkers: the state name ("STOP", "PRIM", ...) of another module on this node. */
	std::function<std::string(const std::string &module)> moduleState;
	/* process checkers (by checker name): also count the pid in this file (not in module.json yet). */
	std::map<std::string, std::string> pidFiles;
	/* 0: the defaults above; tests and future config may override. */
	uint32_t failuresToDeclare = 0;
	/* custom checkers: SIGTERM -> SIGKILL delay after the timeout. */
	std::chrono::milliseconds scriptKillGrace{ 200 };
};

class Checker
{
public:
	/* Called on the loop thread after every state change (also to/from Unknown). */
	using StateCallback = std::function<void(Checker &checker, CheckerState from, CheckerState to)>;
	using Clock = EventLoop::Clock;

	virtual ~Checker() = default;
	Checker(const Checker &) = delete;
	Checker &operator=(const Checker &) = delete;

	const CheckerConfig &config() const { return config_; }
	const std::string &name() const { return config_.name; }

	void setStateCallback(StateCallback cb) { onState_ = std::move(cb); }

	/*
	 * Starts checking: the first check runs soon after (never inside start()), then
	 * every interval (a check still in flight makes the next one skip). Idempotent.
	 */
	void start();
	/* Cancels any check in flight (its result is dropped); state becomes Unknown, no callback. */
	void stop();
	bool running() const { return running_; }

	CheckerState state() const { return state_; }
	bool lastOk() const { return lastOk_; }
	const std::string &lastDetail() const { return lastDetail_; }	/* detail of the last check */
	const std::string &lastFailure() const { return lastFailure_; }	/* "" if it never failed */
	Clock::time_point lastFailureTime() const { return lastFailureTime_; }
	Clock::time_point lastCheckTime() const { return lastCheckTime_; }
	uint64_t okCount() const { return okCount_; }
	uint64_t failCount() const { return failCount_; }
	uint32_t consecutiveFailures() const { return consecutive_; }
	uint32_t failuresToDeclare() const { return threshold_; }
	bool checkInFlight() const { return inFlight_; }

	/* name, type, state, last result, last failure (+ age), counters. */
	nlohmann::json status() const;

	/*
	 * Test hook: feeds one check result as if a check had finished (counts,
	 * thresholds and callbacks apply). Does nothing while stopped.
	 */
	void injectResult(bool ok, const std::string &detail);

protected:
	Checker(EventLoop &loop, CheckerConfig config, uint32_t failuresToDeclare);

	/*
	 * Begins one check; it ends in exactly one finishCheck(), from inside (a cheap
	 * synchronous check: process, module) or later from a loop callback; never blocks.
	 */
	virtual void beginCheck() = 0;
	/* Drops the check in flight (its finishCheck must not come). */
	virtual void cancelCheck() = 0;
	/* Event-driven checkers start/stop their source here instead of being polled. */
	virtual bool polled() const { return true; }
	virtual void startWatching() {}
	virtual void stopWatching() {}

	/* Ends the check begun by beginCheck(). */
	void finishCheck(bool ok, const std::string &detail);
	/* For event-driven checkers: one result, whenever the source says so. */
	void record(bool ok, const std::string &detail);

	EventLoop &loop_;
	CheckerConfig config_;

private:
	void tick();
	void setState(CheckerState to);

	StateCallback onState_;
	uint32_t threshold_;
	bool running_ = false;
	bool inFlight_ = false;
	EventLoop::TimerId firstTimer_ = 0;
	EventLoop::TimerId periodic_ = 0;

	CheckerState state_ = CheckerState::Unknown;
	bool lastOk_ = false;
	std::string lastDetail_;
	std::string lastFailure_;
	Clock::time_point lastFailureTime_{};
	Clock::time_point lastCheckTime_{};
	uint64_t okCount_ = 0;
	uint64_t failCount_ = 0;
	uint32_t consecutive_ = 0;
};

/*
 * Makes the checker for config.type. Fails with -EINVAL for a config missing what
 * its type needs (a module checker without env.moduleState, ...). Not started.
 */
Result<std::unique_ptr<Checker>> createChecker(EventLoop &loop, const CheckerConfig &config,
					       const CheckerEnv &env);

/* ---- pure helpers, exposed for tests ---- */

/*
 * Does a process match `name`? Exactly equal to its comm (the kernel cuts comm to
 * 15 characters: a longer name matches a comm equal to its first 15 characters only
 * if argv[0] agrees), or to the basename of argv[0].
 */
bool processMatches(const std::string &name, const std::string &comm, const std::string &argv0);

/* Live (not zombie) processes matching name under procRoot ("/proc"), sorted. */
std::vector<int> findProcesses(const std::string &name, const std::string &procRoot = "/proc");

} /* namespace sk */
