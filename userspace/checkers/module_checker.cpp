/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Module checker: another module on this node must be in one of the accepted
 * states. The state comes from the owner's function (an in-memory lookup), so
 * the check is synchronous and cheap.
 */
#include <algorithm>

#include <fmt/format.h>

#include "checkers/checker_types.h"

namespace sk {

namespace {

class ModuleChecker : public Checker
{
public:
	ModuleChecker(EventLoop &loop, const CheckerConfig &config, uint32_t n,
		      std::function<std::string(const std::string &)> moduleState)
		: Checker(loop, config, n), moduleState_(std::move(moduleState))
	{
	}

protected:
	void beginCheck() override
	{
		std::string state = moduleState_(config_.module);
		if (state.empty()) {
			finishCheck(false, fmt::format("module {} is not known on this node", config_.module));
			return;
		}
		const auto &accepted = config_.states;
		if (std::find(accepted.begin(), accepted.end(), state) != accepted.end()) {
			finishCheck(true, fmt::format("module {} is {}", config_.module, state));
			return;
		}
		finishCheck(false, fmt::format("module {} is {}, expected {}", config_.module, state,
					       fmt::join(accepted, " or ")));
	}
	void cancelCheck() override {}

private:
	std::function<std::string(const std::string &)> moduleState_;
};

} /* namespace */

std::unique_ptr<Checker> makeModuleChecker(EventLoop &loop, const CheckerConfig &config, uint32_t failuresToDeclare,
					   std::function<std::string(const std::string &)> moduleState)
{
	return std::make_unique<ModuleChecker>(loop, config, failuresToDeclare, std::move(moduleState));
}

} /* namespace sk */
