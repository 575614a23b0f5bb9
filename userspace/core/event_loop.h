/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Single-threaded event loop on io_uring: fd readiness (multishot poll),
 * timers (the ring wait carries the nearest deadline), signals (signalfd) and
 * cross-thread posts (eventfd). Every callback runs on the loop thread.
 */
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/result.h"

struct io_uring;

namespace sk {

class EventLoop
{
public:
	using Clock = std::chrono::steady_clock;
	using Callback = std::function<void()>;
	using FdCallback = std::function<void(uint32_t revents)>;
	using TimerId = uint64_t;
	using WatchId = uint64_t;

	static Result<std::unique_ptr<EventLoop>> create();
	~EventLoop();

	EventLoop(const EventLoop &) = delete;
	EventLoop &operator=(const EventLoop &) = delete;

	/* One-shot timer; returns an id for cancelTimer(). */
	TimerId addTimer(std::chrono::milliseconds delay, Callback cb);
	/* Calls cb every interval until cancelled. */
	TimerId addPeriodic(std::chrono::milliseconds interval, Callback cb);
	void cancelTimer(TimerId id);

	/* Calls cb whenever fd is ready for events (POLLIN/POLLOUT...); level triggered. */
	WatchId watchFd(int fd, uint32_t events, FdCallback cb);
	/* Stops watching; safe to call from inside the watch's own callback. */
	void unwatch(WatchId id);

	/* Routes signo through a signalfd; the signal is blocked for the process. */
	int watchSignal(int signo, Callback cb);

	/* Thread-safe: runs cb on the loop thread soon. */
	void post(Callback cb);

	/* Runs until stop(); returns 0 or -errno on a fatal ring error. */
	int run();
	void stop() { running_ = false; }

	Clock::time_point now() const { return Clock::now(); }

private:
	EventLoop() = default;

	struct Watch {
		int fd;
		uint32_t events;
		FdCallback cb;
		bool active;
	};
	struct Timer {
		Clock::time_point deadline;
		std::chrono::milliseconds period;	/* 0: one-shot */
		Callback cb;
	};

	void armPoll(WatchId id, const Watch &w);
	void submitRemove(WatchId id);
	void runDueTimers();
	void drainPosts();
	void handleCompletion(uint64_t userData, int res, uint32_t flags);

	std::unique_ptr<struct io_uring> ring_;
	bool running_ = false;

	uint64_t nextId_ = 1;
	std::unordered_map<WatchId, Watch> watches_;
	std::map<TimerId, Timer> timers_;
	std::multimap<Clock::time_point, TimerId> deadlines_;

	int postFd_ = -1;
	std::mutex postLock_;
	std::vector<Callback> posted_;

	std::unordered_map<int, Callback> signals_;
	int signalFd_ = -1;
	WatchId signalWatch_ = 0;
};

} /* namespace sk */
