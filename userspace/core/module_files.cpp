/* SPDX-License-Identifier: Apache-2.0 */
/* Module log and admin-intent files, shared by mirror and farm runtimes. */
#include "core/module_files.h"
#include "core/log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

namespace sk {

namespace {

LogCategory kLog("module");

} /* namespace */

void appendModuleLog(const std::string &file, const std::string &node, const std::string &line)
{
	/* Rare events: open-append-close is fine. */
	int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	auto now = std::chrono::system_clock::now();
	time_t t = std::chrono::system_clock::to_time_t(now);
	auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
	struct tm tm;
	localtime_r(&t, &tm);
	char stamp[32];
	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	std::string text = fmt::format("{}.{:03d} [{}] {}\n", stamp, static_cast<int>(ms), node, line);
	if (write(fd, text.data(), text.size()) < 0)
		logDebug(kLog, "module log {} write failed: {}", file, strerror(errno));
	close(fd);
}

bool saveAdminIntent(const std::string &stateDir, const std::string &intent)
{
	std::string path = stateDir + "/admin";
	std::string tmp = path + ".tmp";
	int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return false;
	std::string text = intent + "\n";
	bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
	close(fd);
	return ok && rename(tmp.c_str(), path.c_str()) == 0;
}

std::string loadAdminIntent(const std::string &stateDir)
{
	int fd = open((stateDir + "/admin").c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return "";
	char buf[32] = {};
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return "";
	std::string s(buf, static_cast<size_t>(n));
	while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
		s.pop_back();
	return s;
}

} /* namespace sk */
