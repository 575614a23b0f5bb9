/* SPDX-License-Identifier: Apache-2.0 */
/*
 * VipGuard: a tiny child process that outlives skd by a moment. skd writes the
 * VIPs it holds to a file; the guard blocks on a pipe from skd, and when the
 * pipe breaks (skd died: SIGKILL, OOM, crash) it removes those VIPs through
 * netlink and exits. So a dead skd never leaves its VIP behind for a second
 * node to duplicate (keepalived does). A clean stop removes the VIPs first and
 * empties the file, leaving the guard nothing to do.
 */
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/types.h>

#include "core/result.h"

namespace sk::net {

class VipGuard
{
public:
	/* Forks the guard; call before any thread exists. */
	static Result<std::unique_ptr<VipGuard>> start(const std::string &stateFile);
	~VipGuard();

	/* Replaces what `owner` holds: entries are "<ifname> <address>/<prefix>". */
	Status setHeld(const std::string &owner, std::vector<std::string> entries);

	pid_t pid() const { return pid_; }

private:
	VipGuard() = default;
	Status write() const;

	std::string file_;
	int pipeFd_ = -1;
	pid_t pid_ = -1;
	std::map<std::string, std::vector<std::string>> held_;
};

/* The guard's body (exposed for tests): removes every VIP listed in file. */
int removeListedVips(const std::string &file);

} /* namespace sk::net */
