/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Custom checker: a user script run every interval through its own ScriptRunner
 * (own process group, killed as a group at the checker's timeout, output bounded).
 * Exit 0 = ok; anything else, a timeout or a missing script = failed.
 */
#include <fmt/format.h>

#include "checkers/checker_types.h"
#include "core/log.h"
#include "scripts/runner.h"

namespace sk {

namespace {

const LogCategory kLog("checker");

class CustomChecker : public Checker
{
public:
	CustomChecker(EventLoop &loop, const CheckerConfig &config, uint32_t n, const CheckerEnv &env)
		: Checker(loop, config, n), module_(env.module), node_(env.node), stateDir_(env.stateDir),
		  killGrace_(env.scriptKillGrace)
	{
		/* ScriptRunner runs names inside one directory: split an absolute path. */
		if (config.script[0] == '/') {
			size_t slash = config.script.rfind('/');
			dir_ = slash == 0 ? "/" : config.script.substr(0, slash);
			script_ = config.script.substr(slash + 1);
		} else {
			dir_ = env.scriptDir;
			script_ = config.script;
		}
	}

	~CustomChecker() override
	{
		if (failTimer_)
			loop_.cancelTimer(failTimer_);
	}

protected:
	void beginCheck() override
	{
		if (!runner_) {
			ScriptRunnerOptions o;
			o.module = module_.empty() ? config_.name : module_ + "/" + config_.name;
			o.scriptDir = dir_;
			o.timeout = std::chrono::milliseconds(config_.timeoutMs);
			o.killGrace = killGrace_;
			o.keepLines = 3;
			o.keepBytes = 1024;
			auto r = ScriptRunner::create(loop_, o);
			if (!r.ok()) {
				std::string why = "cannot run checker scripts: " + r.error().message;
				logError(kLog, "{}/custom: {}", config_.name, why);
				failTimer_ = loop_.addTimer(std::chrono::milliseconds(0), [this, why] {
					failTimer_ = 0;
					finishCheck(false, why);
				});
				return;
			}
			runner_ = std::move(r.value());
		}
		ScriptContext ctx;
		ctx.node = node_;
		ctx.stateDir = stateDir_;
		ctx.extra.emplace_back("SK_CHECKER", config_.name);
		uint64_t seq = seq_;
		runner_->run(script_, std::move(ctx), [this, seq](const ScriptResult &r) {
			/* A result from a cancelled run must not end the check after it. */
			if (seq == seq_)
				onDone(r);
		}, std::chrono::milliseconds(config_.timeoutMs));
	}

	void cancelCheck() override
	{
		seq_++;
		if (failTimer_)
			loop_.cancelTimer(failTimer_);
		failTimer_ = 0;
		if (runner_)
			runner_->cancel();
	}

private:
	void onDone(const ScriptResult &r)
	{
		seq_++;
		std::string path = dir_ + (dir_ == "/" ? "" : "/") + script_;
		std::string tail = r.lastLines.empty() ? "" : ": " + r.lastLines.back();
		if (r.missing) {
			finishCheck(false, fmt::format("script {} not found", path));
			return;
		}
		if (!r.status.ok()) {
			finishCheck(false, r.status.error().message);
			return;
		}
		if (r.timedOut) {
			finishCheck(false, fmt::format("script {} timed out after {} ms (process group killed)",
						       path, config_.timeoutMs));
			return;
		}
		if (r.termSignal) {
			finishCheck(false, fmt::format("script {} killed by signal {}{}", path, r.termSignal, tail));
			return;
		}
		if (r.exitCode != 0) {
			finishCheck(false, fmt::format("script {} exited {}{}", path, r.exitCode, tail));
			return;
		}
		finishCheck(true, fmt::format("script {} exited 0 in {} ms", path, r.durationMs));
	}

	std::string module_;
	std::string node_;
	std::string stateDir_;
	std::chrono::milliseconds killGrace_;
	std::string dir_;
	std::string script_;
	uint64_t seq_ = 0;
	EventLoop::TimerId failTimer_ = 0;
	/* Last member: destroyed first, killing a running script before the rest goes. */
	std::unique_ptr<ScriptRunner> runner_;
};

} /* namespace */

std::unique_ptr<Checker> makeCustomChecker(EventLoop &loop, const CheckerConfig &config,
					   uint32_t failuresToDeclare, const CheckerEnv &env)
{
	return std::make_unique<CustomChecker>(loop, config, failuresToDeclare, env);
}

} /* namespace sk */
