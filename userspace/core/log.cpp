/* SPDX-License-Identifier: Apache-2.0 */
/* Log sink: one line per message, "<level> <category>: <text>", to stderr. */
#include "core/log.h"
#include "core/result.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>

#include <sys/time.h>

namespace sk {

namespace {

std::atomic<int> gLevel{ static_cast<int>(LogLevel::Info) };
std::atomic<bool> gTimestamps{ false };
std::mutex gWriteLock;

constexpr const char *kLevelNames[] = { "DEBUG", "INFO", "WARN", "ERROR" };

} /* namespace */

void setLogLevel(LogLevel level)
{
	gLevel = static_cast<int>(level);
}

LogLevel logLevel()
{
	return static_cast<LogLevel>(gLevel.load());
}

void setLogTimestamps(bool on)
{
	gTimestamps = on;
}

bool parseLogLevel(std::string_view text, LogLevel *level)
{
	static constexpr std::string_view names[] = { "debug", "info", "warn", "error" };
	for (size_t i = 0; i < std::size(names); i++) {
		if (text == names[i]) {
			*level = static_cast<LogLevel>(i);
			return true;
		}
	}
	return false;
}

void logMessage(const LogCategory &category, LogLevel level, std::string_view message)
{
	char stamp[40] = "";
	if (gTimestamps) {
		struct timeval tv;
		gettimeofday(&tv, nullptr);
		struct tm tm;
		localtime_r(&tv.tv_sec, &tm);
		size_t n = strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
		snprintf(stamp + n, sizeof(stamp) - n, ".%03ld ", static_cast<long>(tv.tv_usec / 1000));
	}
	std::lock_guard<std::mutex> lock(gWriteLock);
	fprintf(stderr, "%s%s %s: %.*s\n", stamp, kLevelNames[static_cast<int>(level)],
		category.name(), static_cast<int>(message.size()), message.data());
	fflush(stderr);
}

std::string errnoMessage(const std::string &what, int code)
{
	return what + ": " + strerror(code < 0 ? -code : code);
}

} /* namespace sk */
