/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CheckerPolicy (pure, tick-driven, no I/O, no clock): turns checker failures of
 * one module into decisions for the module's driver, applying each checker's
 * `when` (role gating) and `action` (restart with maxloop escalation, stopstart,
 * wait/resume, none). Every decision carries its cause as text for the log.
 */
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"

namespace sk {

/* The module's state as the policy sees it (mirror and farm states). */
enum class ModuleRole : uint8_t { Stop, Wait, Alone, Prim, Second, Up };
const char *roleName(ModuleRole role);	/* "STOP", "WAIT", ... as in status */
/* "STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP"; nullopt otherwise. */
std::optional<ModuleRole> parseModuleRole(const std::string &name);

/*
 * prim: serving (PRIM/ALONE/UP) with the app up; both: that, or SECOND; always: any
 * state but STOP. appUp = false while the driver (re)starts or stops the app on a
 * serving node: prim/both checkers pause so a restart is not counted twice.
 */
bool checkerActive(CheckerWhen when, ModuleRole role, bool appUp = true);
bool roleServes(ModuleRole role);	/* PRIM, ALONE, UP */

enum class PolicyDecisionKind : uint8_t {
	Restart,	/* restart the app locally: MirrorEventKind::CheckerFailed{Restart} */
	StopStart,	/* give up serving here (failover): CheckerFailed{StopStart} */
	Wait,		/* go WAIT until Resume: CheckerFailed{Wait} */
	Resume,		/* every wait condition cleared: the module may serve again */
	Report,		/* log only (action none, ignored failures, counter resets, ...) */
};
const char *decisionName(PolicyDecisionKind kind);	/* "restart", "stopstart", ... */

struct PolicyDecision {
	PolicyDecisionKind kind = PolicyDecisionKind::Report;
	std::string checker;	/* the checker that caused it ("" for a counter reset) */
	std::string cause;	/* one line for the log and status */
	uint64_t nowMs = 0;

	/* For MirrorEventKind::CheckerFailed{checker = action}: set for Restart/StopStart/Wait. */
	std::optional<CheckerAction> action() const;
};

struct PolicyConfig {
	uint32_t maxLoop = 3;			/* local restarts per window before escalating */
	uint64_t loopIntervalMs = 86400000;	/* window, and the quiet time that resets the count */

	static PolicyConfig fromFailover(const FailoverConfig &failover);
};

/*
 * Restart accounting: the first counted restart opens a window of loopInterval;
 * at most maxLoop restarts happen in it, the next failure escalates to stopstart.
 * A window that has expired when a failure comes starts afresh, and tick() resets
 * the count once loopInterval has passed with no failure (the "stable period").
 *
 * Wait: a wait checker's failure (while active) asks for WAIT and holds it until
 * that checker reports ok; when the last holder clears, Resume. The owner must
 * keep a holding checker running although its `when` no longer applies in WAIT
 * (shouldRun() says so), or the condition could never clear.
 *
 * Failures of a checker that is not active in the current role are reported and
 * otherwise ignored. Restart/stopstart of an active checker while the module does
 * not serve (a `both` checker on the SECOND) are reported only: there is nothing to
 * restart, and they must not use up the restart budget. A checker still failed when the module starts serving gets
 * its action again (a `both`/`always` checker that failed on the SECOND must not
 * let the node serve with it failed).
 */
class CheckerPolicy
{
public:
	explicit CheckerPolicy(PolicyConfig config = {});

	void addChecker(const std::string &name, CheckerWhen when, CheckerAction action);

	std::vector<PolicyDecision> onFailed(const std::string &checker, const std::string &detail, uint64_t nowMs);
	std::vector<PolicyDecision> onCleared(const std::string &checker, uint64_t nowMs);
	/* The checker was stopped (role gating): whatever it said no longer holds. */
	void onStopped(const std::string &checker);
	std::vector<PolicyDecision> setRole(ModuleRole role, bool appUp, uint64_t nowMs);
	std::vector<PolicyDecision> tick(uint64_t nowMs);

	/* Should the owner run this checker now: active for the role, or holding a wait. */
	bool shouldRun(const std::string &checker) const;

	ModuleRole role() const { return role_; }
	bool appUp() const { return appUp_; }
	uint32_t restartsUsed() const { return restarts_; }
	bool waiting() const { return !waitHolders_.empty(); }
	const std::set<std::string> &waitHolders() const { return waitHolders_; }
	const std::optional<PolicyDecision> &lastDecision() const { return last_; }

	/* role, restarts_used, max_loop, loop_interval_ms, window_start_ms, waiting_on, last_decision. */
	nlohmann::json status() const;

private:
	struct Entry {
		CheckerWhen when = CheckerWhen::Prim;
		CheckerAction action = CheckerAction::Restart;
		bool failed = false;
		std::string detail;
	};

	bool servingNow() const;
	std::string notServing(const std::string &head) const;
	PolicyDecision decide(const std::string &name, Entry &e, const std::string &why, uint64_t nowMs);
	PolicyDecision make(PolicyDecisionKind kind, const std::string &checker, std::string cause, uint64_t nowMs);

	PolicyConfig config_;
	ModuleRole role_ = ModuleRole::Stop;
	bool appUp_ = true;
	std::map<std::string, Entry> checkers_;
	uint32_t restarts_ = 0;
	std::optional<uint64_t> windowStartMs_;
	std::optional<uint64_t> lastFailureMs_;
	std::set<std::string> waitHolders_;
	std::optional<PolicyDecision> last_;
};

} /* namespace sk */
