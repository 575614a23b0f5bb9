/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ModuleCheckers: the checkers of one module plus its CheckerPolicy, on the
 * EventLoop. The driver tells it the module's role; it runs the checkers that
 * apply, and hands the driver decisions (restart / stopstart / wait / resume).
 */
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkers/checker.h"
#include "checkers/policy.h"
#include "core/config.h"
#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

struct ModuleCheckersOptions {
	CheckerEnv env;				/* module name, scripts dir, module state source */
	PolicyConfig policy;			/* usually PolicyConfig::fromFailover(module.failover) */
	std::chrono::milliseconds tickInterval{ 1000 };	/* policy ticks (stable-period reset) */
};

class ModuleCheckers
{
public:
	/*
	 * The decision is already logged (cause included) under the "checker-policy"
	 * category. Runs on the loop thread, never from inside a ModuleCheckers call
	 * except setRole() (decisions due to the role change itself). The callback may
	 * call setRole(), but must not destroy this object (post() that instead).
	 */
	using DecisionCallback = std::function<void(const PolicyDecision &decision)>;

	/* Builds every checker (none started: the module starts in STOP). */
	static Result<std::unique_ptr<ModuleCheckers>> create(EventLoop &loop,
							      const std::vector<CheckerConfig> &checkers,
							      ModuleCheckersOptions options);
	/* Convenience: checkers, failover settings and module name from the module's config
	 * (moduleState may be null: no other module known; errors name the module). */
	static Result<std::unique_ptr<ModuleCheckers>> create(EventLoop &loop, const ModuleConfig &module,
							      const std::string &moduleDir,
							      std::function<std::string(const std::string &)> moduleState,
							      const std::string &node = {}, const std::string &stateDir = {});
	~ModuleCheckers();

	ModuleCheckers(const ModuleCheckers &) = delete;
	ModuleCheckers &operator=(const ModuleCheckers &) = delete;

	void setDecisionCallback(DecisionCallback cb) { onDecision_ = std::move(cb); }

	/*
	 * The module's state, and whether its app is up (false while the driver starts,
	 * stops or restarts it). Starts/stops checkers per `when`; may emit decisions
	 * (a checker that failed on the SECOND as the node starts serving).
	 */
	void setRole(ModuleRole role, bool appUp = true);
	/* Stops every checker (module stopping or skd shutting down). Same as setRole(Stop). */
	void stopAll() { setRole(ModuleRole::Stop, false); }

	const CheckerPolicy &policy() const { return policy_; }
	/*
	 * {"checkers": [Checker::status()...], "policy": CheckerPolicy::status() +
	 * "recent_decisions": the last kRecentDecisions, oldest first}.
	 */
	nlohmann::json status() const;

	/* Test hooks. */
	Checker *find(const std::string &name);
	const std::vector<std::unique_ptr<Checker>> &checkers() const { return checkers_; }
	/* Feeds a result to a running checker (see Checker::injectResult); -ENOENT / -EAGAIN. */
	int injectResult(const std::string &name, bool ok, const std::string &detail);
	/* Runs the policy tick now (normally every options.tickInterval). */
	void tickNow();

private:
	ModuleCheckers(EventLoop &loop, ModuleCheckersOptions options);

	void onState(Checker &checker, CheckerState from, CheckerState to);
	void apply();
	void emit(std::vector<PolicyDecision> decisions);
	uint64_t nowMs() const;

	EventLoop &loop_;
	ModuleCheckersOptions options_;
	CheckerPolicy policy_;
	std::vector<std::unique_ptr<Checker>> checkers_;
	DecisionCallback onDecision_;
	EventLoop::TimerId tick_ = 0;
	EventLoop::Clock::time_point epoch_;
	std::deque<PolicyDecision> recent_;
	static constexpr size_t kRecentDecisions = 10;
};

} /* namespace sk */
