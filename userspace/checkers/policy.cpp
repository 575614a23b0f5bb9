/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CheckerPolicy: role gating, restart accounting with maxloop escalation,
 * wait/resume. Pure: time comes in with every call, decisions go out as values.
 */
#include "checkers/policy.h"

#include <fmt/format.h>

namespace sk {

const char *roleName(ModuleRole role)
{
	switch (role) {
	case ModuleRole::Stop: return "STOP";
	case ModuleRole::Wait: return "WAIT";
	case ModuleRole::Alone: return "ALONE";
	case ModuleRole::Prim: return "PRIM";
	case ModuleRole::Second: return "SECOND";
	case ModuleRole::Up: return "UP";
	}
	return "?";
}

std::optional<ModuleRole> parseModuleRole(const std::string &name)
{
	for (ModuleRole r : { ModuleRole::Stop, ModuleRole::Wait, ModuleRole::Alone, ModuleRole::Prim,
			      ModuleRole::Second, ModuleRole::Up })
		if (name == roleName(r))
			return r;
	return std::nullopt;
}

bool roleServes(ModuleRole role)
{
	return role == ModuleRole::Prim || role == ModuleRole::Alone || role == ModuleRole::Up;
}

bool checkerActive(CheckerWhen when, ModuleRole role, bool appUp)
{
	bool serving = roleServes(role) && appUp;
	switch (when) {
	case CheckerWhen::Prim: return serving;
	case CheckerWhen::Both: return serving || role == ModuleRole::Second;
	case CheckerWhen::Always: return role != ModuleRole::Stop;
	}
	return false;
}

const char *decisionName(PolicyDecisionKind kind)
{
	switch (kind) {
	case PolicyDecisionKind::Restart: return "restart";
	case PolicyDecisionKind::StopStart: return "stopstart";
	case PolicyDecisionKind::Wait: return "wait";
	case PolicyDecisionKind::Resume: return "resume";
	case PolicyDecisionKind::Report: return "report";
	}
	return "?";
}

std::optional<CheckerAction> PolicyDecision::action() const
{
	switch (kind) {
	case PolicyDecisionKind::Restart: return CheckerAction::Restart;
	case PolicyDecisionKind::StopStart: return CheckerAction::StopStart;
	case PolicyDecisionKind::Wait: return CheckerAction::Wait;
	default: return std::nullopt;
	}
}

PolicyConfig PolicyConfig::fromFailover(const FailoverConfig &failover)
{
	PolicyConfig c;
	c.maxLoop = failover.maxLoop;
	c.loopIntervalMs = uint64_t(failover.loopIntervalS) * 1000;
	return c;
}

CheckerPolicy::CheckerPolicy(PolicyConfig config) : config_(config) {}

void CheckerPolicy::addChecker(const std::string &name, CheckerWhen when, CheckerAction action)
{
	Entry &e = checkers_[name];
	e.when = when;
	e.action = action;
}

PolicyDecision CheckerPolicy::make(PolicyDecisionKind kind, const std::string &checker, std::string cause,
				   uint64_t nowMs)
{
	PolicyDecision d;
	d.kind = kind;
	d.checker = checker;
	d.cause = std::move(cause);
	d.nowMs = nowMs;
	last_ = d;
	return d;
}

bool CheckerPolicy::servingNow() const
{
	return roleServes(role_) && appUp_;
}

std::string CheckerPolicy::notServing(const std::string &head) const
{
	/* Nothing runs here to restart or fail over; setRole() acts if it is still failed then. */
	return fmt::format("{}; module is {}{}: nothing to restart or give up until it serves", head,
			   roleName(role_), appUp_ ? "" : " (app not up)");
}

PolicyDecision CheckerPolicy::decide(const std::string &name, Entry &e, const std::string &why, uint64_t nowMs)
{
	lastFailureMs_ = nowMs;
	std::string head = fmt::format("checker {} failed ({})", name, why);
	switch (e.action) {
	case CheckerAction::None:
		return make(PolicyDecisionKind::Report, name, head + "; action none: reporting only", nowMs);
	case CheckerAction::StopStart:
		if (!servingNow())
			return make(PolicyDecisionKind::Report, name, notServing(head), nowMs);
		return make(PolicyDecisionKind::StopStart, name,
			    head + "; action stopstart: giving up serving on this node", nowMs);
	case CheckerAction::Wait:
		waitHolders_.insert(name);
		return make(PolicyDecisionKind::Wait, name,
			    head + "; action wait: the module waits until the checker is ok again", nowMs);
	case CheckerAction::Restart:
		if (!servingNow())
			return make(PolicyDecisionKind::Report, name, notServing(head), nowMs);
		break;
	}
	if (windowStartMs_ && nowMs - *windowStartMs_ >= config_.loopIntervalMs) {
		restarts_ = 0;
		windowStartMs_.reset();
	}
	if (restarts_ < config_.maxLoop) {
		if (restarts_ == 0)
			windowStartMs_ = nowMs;
		restarts_++;
		return make(PolicyDecisionKind::Restart, name,
			    fmt::format("{}; action restart: local restart {} of {} within {} s", head, restarts_,
					config_.maxLoop, config_.loopIntervalMs / 1000),
			    nowMs);
	}
	return make(PolicyDecisionKind::StopStart, name,
		    fmt::format("{}; {} local restart(s) already used within {} s (maxloop): escalating to "
				"stopstart (failover)",
				head, restarts_, config_.loopIntervalMs / 1000),
		    nowMs);
}

std::vector<PolicyDecision> CheckerPolicy::onFailed(const std::string &checker, const std::string &detail,
						    uint64_t nowMs)
{
	auto it = checkers_.find(checker);
	if (it == checkers_.end())
		return { make(PolicyDecisionKind::Report, checker,
			      fmt::format("unknown checker {} failed ({}): ignored", checker, detail), nowMs) };
	Entry &e = it->second;
	e.failed = true;
	e.detail = detail;
	if (!checkerActive(e.when, role_, appUp_) && !waitHolders_.count(checker))
		return { make(PolicyDecisionKind::Report, checker,
			      fmt::format("checker {} failed ({}) while {}{} (when {}): ignored", checker, detail,
					  roleName(role_), appUp_ ? "" : ", app not up", configName(e.when)),
			      nowMs) };
	if (waitHolders_.count(checker))
		return {};	/* already holding the module in WAIT */
	return { decide(checker, e, detail, nowMs) };
}

std::vector<PolicyDecision> CheckerPolicy::onCleared(const std::string &checker, uint64_t nowMs)
{
	auto it = checkers_.find(checker);
	if (it == checkers_.end())
		return {};
	bool wasFailed = it->second.failed;
	it->second.failed = false;
	it->second.detail.clear();
	if (waitHolders_.erase(checker)) {
		if (waitHolders_.empty())
			return { make(PolicyDecisionKind::Resume, checker,
				      fmt::format("checker {} is ok again: condition cleared, the module may resume",
						  checker),
				      nowMs) };
		return { make(PolicyDecisionKind::Report, checker,
			      fmt::format("checker {} is ok again; still waiting on {}", checker,
					  fmt::join(waitHolders_, ", ")),
			      nowMs) };
	}
	if (!wasFailed)
		return {};
	return { make(PolicyDecisionKind::Report, checker, fmt::format("checker {} is ok again", checker), nowMs) };
}

void CheckerPolicy::onStopped(const std::string &checker)
{
	auto it = checkers_.find(checker);
	if (it == checkers_.end())
		return;
	it->second.failed = false;
	it->second.detail.clear();
	waitHolders_.erase(checker);
}

std::vector<PolicyDecision> CheckerPolicy::setRole(ModuleRole role, bool appUp, uint64_t nowMs)
{
	std::vector<PolicyDecision> out;
	bool wasServing = roleServes(role_) && appUp_;
	role_ = role;
	appUp_ = appUp;
	if (role == ModuleRole::Stop && !waitHolders_.empty()) {
		out.push_back(make(PolicyDecisionKind::Report, "",
				   fmt::format("module stopped: no longer waiting on {}", fmt::join(waitHolders_, ", ")),
				   nowMs));
		waitHolders_.clear();
	}
	if (!roleServes(role) || !appUp || wasServing)
		return out;
	/* Starting to serve with a checker already failed (both/always): act on it now. */
	for (auto &[name, e] : checkers_) {
		if (!e.failed || e.action == CheckerAction::None || !checkerActive(e.when, role, appUp))
			continue;
		out.push_back(decide(name, e, fmt::format("still failing as the module becomes {}: {}",
							  roleName(role), e.detail),
				     nowMs));
	}
	return out;
}

std::vector<PolicyDecision> CheckerPolicy::tick(uint64_t nowMs)
{
	if (restarts_ == 0 || !lastFailureMs_ || nowMs - *lastFailureMs_ < config_.loopIntervalMs)
		return {};
	uint32_t was = restarts_;
	restarts_ = 0;
	windowStartMs_.reset();
	return { make(PolicyDecisionKind::Report, "",
		      fmt::format("no checker failure for {} s: restart count reset (was {} of {})",
				  config_.loopIntervalMs / 1000, was, config_.maxLoop),
		      nowMs) };
}

bool CheckerPolicy::shouldRun(const std::string &checker) const
{
	auto it = checkers_.find(checker);
	if (it == checkers_.end())
		return false;
	return checkerActive(it->second.when, role_, appUp_) ||
	       (waitHolders_.count(checker) && role_ != ModuleRole::Stop);
}

nlohmann::json CheckerPolicy::status() const
{
	nlohmann::json j = {
		{ "role", roleName(role_) },
		{ "app_up", appUp_ },
		{ "restarts_used", restarts_ },
		{ "max_loop", config_.maxLoop },
		{ "loop_interval_ms", config_.loopIntervalMs },
		{ "window_start_ms", windowStartMs_ ? nlohmann::json(*windowStartMs_) : nlohmann::json(nullptr) },
		{ "last_failure_ms", lastFailureMs_ ? nlohmann::json(*lastFailureMs_) : nlohmann::json(nullptr) },
		{ "waiting_on", nlohmann::json(std::vector<std::string>(waitHolders_.begin(), waitHolders_.end())) },
	};
	if (last_)
		j["last_decision"] = { { "kind", decisionName(last_->kind) }, { "checker", last_->checker },
				       { "cause", last_->cause }, { "at_ms", last_->nowMs } };
	else
		j["last_decision"] = nullptr;
	return j;
}

} /* namespace sk */
