/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to checkers/: one factory per checker type, called by createChecker()
 * once the config has what the type needs. Not for use outside checkers/.
 */
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "checkers/checker.h"

namespace sk {

std::unique_ptr<Checker> makeProcessChecker(EventLoop &loop, const CheckerConfig &config,
					    uint32_t failuresToDeclare, const std::string &pidFile);
std::unique_ptr<Checker> makeTcpChecker(EventLoop &loop, const CheckerConfig &config,
					uint32_t failuresToDeclare);
std::unique_ptr<Checker> makePingChecker(EventLoop &loop, const CheckerConfig &config,
					 uint32_t failuresToDeclare);
std::unique_ptr<Checker> makeInterfaceChecker(EventLoop &loop, const CheckerConfig &config,
					      uint32_t failuresToDeclare);
std::unique_ptr<Checker> makeCustomChecker(EventLoop &loop, const CheckerConfig &config,
					   uint32_t failuresToDeclare, const CheckerEnv &env);
std::unique_ptr<Checker> makeModuleChecker(EventLoop &loop, const CheckerConfig &config,
					   uint32_t failuresToDeclare,
					   std::function<std::string(const std::string &)> moduleState);

} /* namespace sk */
