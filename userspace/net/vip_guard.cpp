/* SPDX-License-Identifier: Apache-2.0 */
/* The VIP guard process: wait for skd's pipe to break, then remove held VIPs. */
#include "net/vip_guard.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <linux/close_range.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "net/vip.h"

namespace sk::net {

namespace {

LogCategory kLog("vipguard");

} /* namespace */

int removeListedVips(const std::string &file)
{
	std::ifstream in(file);
	std::string ifname, prefix;
	int failures = 0;
	while (in >> ifname >> prefix) {
		auto p = parseIpPrefix(prefix);
		if (!p) {
			failures++;
			continue;
		}
		Status s = removeVip(ifname, p->address);
		if (!s) {
			failures++;
			logError(kLog, "cannot remove VIP {} from {}: {}", prefix, ifname, s.error().message);
		} else {
			logWarn(kLog, "skd is gone: removed VIP {} from {}", prefix, ifname);
		}
	}
	return failures;
}

Result<std::unique_ptr<VipGuard>> VipGuard::start(const std::string &stateFile)
{
	std::unique_ptr<VipGuard> g(new VipGuard());
	g->file_ = stateFile;
	Status s = g->write();
	if (!s)
		return s.error();

	int fds[2];
	if (pipe2(fds, O_CLOEXEC) < 0)
		return makeError(-errno, errnoMessage("vip guard pipe", errno));
	pid_t pid = fork();
	if (pid < 0) {
		int err = errno;
		close(fds[0]);
		close(fds[1]);
		return makeError(-err, errnoMessage("vip guard fork", err));
	}
	if (pid == 0) {
		/* Child: only the read end stays open; signals aimed at the group are ignored. */
		prctl(PR_SET_NAME, "skd-vip-guard");
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		if (dup2(fds[0], 3) < 0)
			_exit(1);
		syscall(SYS_close_range, 4, ~0u, 0);
		char c;
		while (read(3, &c, 1) != 0) {
			if (errno != EINTR)
				break;
		}
		_exit(removeListedVips(stateFile) ? 1 : 0);
	}
	close(fds[0]);
	g->pipeFd_ = fds[1];
	g->pid_ = pid;
	return g;
}

VipGuard::~VipGuard()
{
	/* A clean stop: the file lists what is still held (normally nothing). */
	if (pipeFd_ >= 0)
		close(pipeFd_);
	if (pid_ > 0) {
		int status;
		while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
		}
	}
	unlink(file_.c_str());
}

Status VipGuard::setHeld(const std::string &owner, std::vector<std::string> entries)
{
	if (entries.empty())
		held_.erase(owner);
	else
		held_[owner] = std::move(entries);
	return write();
}

Status VipGuard::write() const
{
	/* Written before a VIP is added and after it is removed: the list is a superset. */
	std::string tmp = file_ + ".tmp";
	int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return makeError(-errno, errnoMessage("cannot write " + tmp, errno));
	std::string text;
	for (const auto &[owner, entries] : held_)
		for (const std::string &e : entries)
			text += e + "\n";
	bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
	close(fd);
	if (!ok || rename(tmp.c_str(), file_.c_str()) < 0)
		return makeError(-EIO, errnoMessage("cannot write " + file_, errno));
	return {};
}

} /* namespace sk::net */
