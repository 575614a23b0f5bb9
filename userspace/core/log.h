/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Logging with one category per area (libcamera style). Messages go to stderr
 * (journald adds its own timestamps, so a plain prefix is enough) and can be
 * copied to a per-module log file that `skctl log` reads.
 */
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace sk {

enum class LogLevel { Debug = 0, Info, Warn, Error };

class LogCategory
{
public:
	explicit constexpr LogCategory(const char *name) : name_(name) {}
	const char *name() const { return name_; }

private:
	const char *name_;
};

void logMessage(const LogCategory &category, LogLevel level, std::string_view message);
void setLogLevel(LogLevel level);
LogLevel logLevel();
/* Parses "debug|info|warn|error"; returns false when unknown. */
bool parseLogLevel(std::string_view text, LogLevel *level);
/* Adds a timestamp prefix to stderr lines (for foreground runs and tests). */
void setLogTimestamps(bool on);

template<typename... Args>
void logAt(const LogCategory &c, LogLevel l, fmt::format_string<Args...> f, Args &&...args)
{
	if (l < logLevel())
		return;
	logMessage(c, l, fmt::format(f, std::forward<Args>(args)...));
}

template<typename... Args>
void logDebug(const LogCategory &c, fmt::format_string<Args...> f, Args &&...args)
{
	logAt(c, LogLevel::Debug, f, std::forward<Args>(args)...);
}

template<typename... Args>
void logInfo(const LogCategory &c, fmt::format_string<Args...> f, Args &&...args)
{
	logAt(c, LogLevel::Info, f, std::forward<Args>(args)...);
}

template<typename... Args>
void logWarn(const LogCategory &c, fmt::format_string<Args...> f, Args &&...args)
{
	logAt(c, LogLevel::Warn, f, std::forward<Args>(args)...);
}

template<typename... Args>
void logError(const LogCategory &c, fmt::format_string<Args...> f, Args &&...args)
{
	logAt(c, LogLevel::Error, f, std::forward<Args>(args)...);
}

} /* namespace sk */
