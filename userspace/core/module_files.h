/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Files every module runtime keeps: its log (transitions, script output,
 * decisions; read by `skctl log`) and the admin's last start/stop intent, so
 * a restarted skd resumes what the admin asked.
 */
#pragma once

#include <string>

namespace sk {

/* Appends "<time> [<node>] <line>" to the module log; failures are logged at debug. */
void appendModuleLog(const std::string &file, const std::string &node, const std::string &line);

/* Atomically and durably records the intent ("start", "second", "stop") in <stateDir>/admin. */
bool saveAdminIntent(const std::string &stateDir, const std::string &intent);

/* The recorded intent, or "" when none. */
std::string loadAdminIntent(const std::string &stateDir);

} /* namespace sk */
