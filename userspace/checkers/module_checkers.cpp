/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ModuleCheckers: wires checker state changes into CheckerPolicy and the
 * policy's decisions out to the driver; starts/stops checkers as the role changes.
 */
#include "checkers/module_checkers.h"

#include "core/log.h"

namespace sk {

namespace {

const LogCategory kLog("checker-policy");

} /* namespace */

ModuleCheckers::ModuleCheckers(EventLoop &loop, ModuleCheckersOptions options)
	: loop_(loop), options_(std::move(options)), policy_(options_.policy), epoch_(loop.now())
{
}

Result<std::unique_ptr<ModuleCheckers>> ModuleCheckers::create(EventLoop &loop,
							       const std::vector<CheckerConfig> &checkers,
							       ModuleCheckersOptions options)
{
	std::unique_ptr<ModuleCheckers> mc(new ModuleCheckers(loop, std::move(options)));
	for (const CheckerConfig &c : checkers) {
		auto checker = createChecker(loop, c, mc->options_.env);
		if (!checker.ok())
			return checker.error();
		ModuleCheckers *self = mc.get();
		(*checker)->setStateCallback([self](Checker &ch, CheckerState from, CheckerState to) {
			self->onState(ch, from, to);
		});
		mc->policy_.addChecker(c.name, c.when, c.action);
		mc->checkers_.push_back(std::move(checker.value()));
	}
	if (mc->options_.tickInterval.count() > 0) {
		ModuleCheckers *self = mc.get();
		mc->tick_ = loop.addPeriodic(mc->options_.tickInterval, [self] { self->tickNow(); });
	}
	return mc;
}

Result<std::unique_ptr<ModuleCheckers>> ModuleCheckers::create(EventLoop &loop, const ModuleConfig &module,
							       const std::string &moduleDir,
							       std::function<std::string(const std::string &)> moduleState,
							       const std::string &node, const std::string &stateDir)
{
	ModuleCheckersOptions o;
	o.env.module = module.name;
	o.env.scriptDir = moduleDir + "/scripts";
	o.env.node = node;
	o.env.stateDir = stateDir;
	o.env.moduleState = moduleState ? std::move(moduleState) : [](const std::string &) { return std::string(); };
	o.policy = PolicyConfig::fromFailover(module.failover);
	auto r = create(loop, module.checkers, std::move(o));
	if (!r)
		return makeError(r.error().code, "module " + module.name + ": " + r.error().message);
	return r;
}

ModuleCheckers::~ModuleCheckers()
{
	onDecision_ = nullptr;
	if (tick_)
		loop_.cancelTimer(tick_);
	for (auto &c : checkers_)
		c->stop();
}

uint64_t ModuleCheckers::nowMs() const
{
	return static_cast<uint64_t>(
		std::chrono::duration_cast<std::chrono::milliseconds>(loop_.now() - epoch_).count());
}

void ModuleCheckers::setRole(ModuleRole role, bool appUp)
{
	if (role != policy_.role() || appUp != policy_.appUp())
		logDebug(kLog, "{}: role {}{}", options_.env.module, roleName(role), appUp ? "" : " (app not up)");
	emit(policy_.setRole(role, appUp, nowMs()));
	apply();
}

void ModuleCheckers::apply()
{
	for (auto &c : checkers_) {
		bool run = policy_.shouldRun(c->name());
		if (run && !c->running()) {
			logInfo(kLog, "{}: starting checker {} ({}, when {}) in {}", options_.env.module, c->name(),
				configName(c->config().type), configName(c->config().when), roleName(policy_.role()));
			c->start();
		} else if (!run && c->running()) {
			logInfo(kLog, "{}: stopping checker {} (when {}) in {}", options_.env.module, c->name(),
				configName(c->config().when), roleName(policy_.role()));
			c->stop();
			policy_.onStopped(c->name());
		}
	}
}

void ModuleCheckers::onState(Checker &checker, CheckerState from, CheckerState to)
{
	if (to == CheckerState::Failed)
		emit(policy_.onFailed(checker.name(), checker.lastFailure(), nowMs()));
	else if (to == CheckerState::Ok && from == CheckerState::Failed)
		emit(policy_.onCleared(checker.name(), nowMs()));
	else
		return;
	/* A cleared wait holder may no longer belong to this role. */
	apply();
}

void ModuleCheckers::emit(std::vector<PolicyDecision> decisions)
{
	for (const PolicyDecision &d : decisions) {
		if (d.kind == PolicyDecisionKind::Report || d.kind == PolicyDecisionKind::Resume)
			logInfo(kLog, "{}: {}: {}", options_.env.module, decisionName(d.kind), d.cause);
		else
			logWarn(kLog, "{}: {}: {}", options_.env.module, decisionName(d.kind), d.cause);
		recent_.push_back(d);
		if (recent_.size() > kRecentDecisions)
			recent_.pop_front();
		if (onDecision_)
			onDecision_(d);
	}
}

void ModuleCheckers::tickNow()
{
	emit(policy_.tick(nowMs()));
}

Checker *ModuleCheckers::find(const std::string &name)
{
	for (auto &c : checkers_)
		if (c->name() == name)
			return c.get();
	return nullptr;
}

int ModuleCheckers::injectResult(const std::string &name, bool ok, const std::string &detail)
{
	Checker *c = find(name);
	if (!c)
		return -ENOENT;
	if (!c->running())
		return -EAGAIN;
	c->injectResult(ok, detail);
	return 0;
}

nlohmann::json ModuleCheckers::status() const
{
	nlohmann::json list = nlohmann::json::array();
	for (const auto &c : checkers_)
		list.push_back(c->status());
	nlohmann::json policy = policy_.status();
	nlohmann::json recent = nlohmann::json::array();
	for (const PolicyDecision &d : recent_)
		recent.push_back({ { "kind", decisionName(d.kind) }, { "checker", d.checker }, { "cause", d.cause },
				   { "at_ms", d.nowMs } });
	policy["recent_decisions"] = std::move(recent);
	return { { "checkers", list }, { "policy", policy } };
}

} /* namespace sk */
