/* SPDX-License-Identifier: Apache-2.0 */
/*
 * io_uring event loop. user_data packs the operation in the top byte and a
 * watch id below it, so completions are routed without allocations:
 *   kOpPoll   | id : multishot poll on a watched fd
 *   kOpRemove | id : completion of a poll removal (ignored)
 * Timers are not ring operations: the wait for completions carries the nearest
 * deadline as its timeout (IORING_ENTER_EXT_ARG), which keeps cancel trivial.
 */
#include "core/event_loop.h"
#include "core/log.h"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <liburing.h>

namespace sk {

namespace {

LogCategory kLog("loop");

constexpr uint64_t kOpShift = 56;
constexpr uint64_t kIdMask = (uint64_t{ 1 } << kOpShift) - 1;
enum Op : uint64_t { kOpPoll = 1, kOpRemove = 2 };

uint64_t pack(Op op, uint64_t id)
{
	return (static_cast<uint64_t>(op) << kOpShift) | (id & kIdMask);
}

} /* namespace */

Result<std::unique_ptr<EventLoop>> EventLoop::create()
{
	std::unique_ptr<EventLoop> loop(new EventLoop());
	loop->ring_ = std::make_unique<struct io_uring>();

	/*
	 * 256 entries: the loop only holds one poll per watched fd, a few dozen
	 * at most. No SQPOLL: skd is mostly idle and must not burn a core.
	 * COOP_TASKRUN: completions are processed when we enter the ring, not by
	 * interrupting the thread; otherwise pending task work looks like a signal
	 * and long syscalls on the loop thread (the BPF verifier) fail with EAGAIN.
	 * Older kernels refuse the flag: retry without it.
	 */
#ifdef IORING_SETUP_COOP_TASKRUN
	int ret = io_uring_queue_init(256, loop->ring_.get(), IORING_SETUP_COOP_TASKRUN);
	if (ret == -EINVAL)
		ret = io_uring_queue_init(256, loop->ring_.get(), 0);
#else
	int ret = io_uring_queue_init(256, loop->ring_.get(), 0);
#endif
	if (ret < 0) {
		loop->ring_.reset();
		return makeError(ret, errnoMessage("io_uring_queue_init", ret));
	}

	loop->postFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (loop->postFd_ < 0)
		return makeError(-errno, errnoMessage("eventfd", errno));

	EventLoop *self = loop.get();
	loop->watchFd(loop->postFd_, POLLIN, [self](uint32_t) {
		uint64_t v;
		while (read(self->postFd_, &v, sizeof(v)) == sizeof(v)) {
		}
		self->drainPosts();
	});
	return loop;
}

EventLoop::~EventLoop()
{
	if (ring_)
		io_uring_queue_exit(ring_.get());
	if (postFd_ >= 0)
		close(postFd_);
	if (signalFd_ >= 0)
		close(signalFd_);
}

EventLoop::TimerId EventLoop::addTimer(std::chrono::milliseconds delay, Callback cb)
{
	TimerId id = nextId_++;
	Clock::time_point deadline = Clock::now() + delay;
	timers_.emplace(id, Timer{ deadline, std::chrono::milliseconds(0), std::move(cb) });
	deadlines_.emplace(deadline, id);
	return id;
}

EventLoop::TimerId EventLoop::addPeriodic(std::chrono::milliseconds interval, Callback cb)
{
	if (interval.count() <= 0)
		interval = std::chrono::milliseconds(1);
	TimerId id = nextId_++;
	Clock::time_point deadline = Clock::now() + interval;
	timers_.emplace(id, Timer{ deadline, interval, std::move(cb) });
	deadlines_.emplace(deadline, id);
	return id;
}

void EventLoop::cancelTimer(TimerId id)
{
	/* The deadline entry stays; runDueTimers() skips ids no longer in timers_. */
	timers_.erase(id);
}

EventLoop::WatchId EventLoop::watchFd(int fd, uint32_t events, FdCallback cb)
{
	WatchId id = nextId_++;
	auto [it, inserted] = watches_.emplace(id, Watch{ fd, events, std::move(cb), true });
	(void)inserted;
	armPoll(id, it->second);
	return id;
}

void EventLoop::armPoll(WatchId id, const Watch &w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring_.get());
	if (!sqe) {
		io_uring_submit(ring_.get());
		sqe = io_uring_get_sqe(ring_.get());
	}
	/* Multishot: one submission keeps reporting readiness until removed. */
	io_uring_prep_poll_multishot(sqe, w.fd, w.events);
	io_uring_sqe_set_data64(sqe, pack(kOpPoll, id));
	io_uring_submit(ring_.get());
}

void EventLoop::submitRemove(WatchId id)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring_.get());
	if (!sqe) {
		io_uring_submit(ring_.get());
		sqe = io_uring_get_sqe(ring_.get());
	}
	io_uring_prep_poll_remove(sqe, pack(kOpPoll, id));
	io_uring_sqe_set_data64(sqe, pack(kOpRemove, id));
	io_uring_submit(ring_.get());
}

void EventLoop::unwatch(WatchId id)
{
	auto it = watches_.find(id);
	if (it == watches_.end() || !it->second.active)
		return;
	it->second.active = false;
	/* The entry is erased when the poll's final completion arrives. */
	submitRemove(id);
}

int EventLoop::watchSignal(int signo, Callback cb)
{
	sigset_t mask;
	sigemptyset(&mask);
	for (const auto &s : signals_)
		sigaddset(&mask, s.first);
	sigaddset(&mask, signo);
	if (sigprocmask(SIG_BLOCK, &mask, nullptr) < 0)
		return -errno;

	int fd = signalfd(signalFd_, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	signals_[signo] = std::move(cb);
	if (signalFd_ < 0) {
		signalFd_ = fd;
		signalWatch_ = watchFd(signalFd_, POLLIN, [this](uint32_t) {
			struct signalfd_siginfo si;
			while (read(signalFd_, &si, sizeof(si)) == sizeof(si)) {
				auto it = signals_.find(static_cast<int>(si.ssi_signo));
				if (it != signals_.end())
					it->second();
			}
		});
	}
	return 0;
}

void EventLoop::post(Callback cb)
{
	{
		std::lock_guard<std::mutex> lock(postLock_);
		posted_.push_back(std::move(cb));
	}
	uint64_t one = 1;
	if (write(postFd_, &one, sizeof(one)) < 0 && errno != EAGAIN)
		logError(kLog, "eventfd write failed: {}", strerror(errno));
}

void EventLoop::drainPosts()
{
	std::vector<Callback> batch;
	{
		std::lock_guard<std::mutex> lock(postLock_);
		batch.swap(posted_);
	}
	for (auto &cb : batch)
		cb();
}

void EventLoop::runDueTimers()
{
	Clock::time_point now = Clock::now();
	while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
		TimerId id = deadlines_.begin()->second;
		deadlines_.erase(deadlines_.begin());
		auto it = timers_.find(id);
		if (it == timers_.end())
			continue;	/* cancelled */
		Callback cb = it->second.cb;
		if (it->second.period.count() > 0) {
			it->second.deadline += it->second.period;
			/* A loop that fell behind skips missed periods rather than bursting. */
			if (it->second.deadline <= now)
				it->second.deadline = now + it->second.period;
			deadlines_.emplace(it->second.deadline, id);
		} else {
			timers_.erase(it);
		}
		cb();
	}
}

void EventLoop::handleCompletion(uint64_t userData, int res, uint32_t flags)
{
	Op op = static_cast<Op>(userData >> kOpShift);
	WatchId id = userData & kIdMask;
	if (op != kOpPoll)
		return;

	auto it = watches_.find(id);
	if (it == watches_.end())
		return;
	bool more = flags & IORING_CQE_F_MORE;
	if (!it->second.active) {
		if (!more)
			watches_.erase(it);
		return;
	}
	if (res < 0) {
		if (res == -ECANCELED && !more) {
			watches_.erase(it);
			return;
		}
		logWarn(kLog, "poll on fd {} failed: {}", it->second.fd, strerror(-res));
		it->second.cb(POLLERR);
	} else {
		/* Copy: the callback may unwatch (and a later one re-watch) this id. */
		FdCallback cb = it->second.cb;
		cb(static_cast<uint32_t>(res));
	}
	it = watches_.find(id);
	if (it == watches_.end())
		return;
	if (!more) {
		/* The kernel ended the multishot (e.g. overflow): re-arm if still wanted. */
		if (it->second.active)
			armPoll(id, it->second);
		else
			watches_.erase(it);
	}
}

int EventLoop::run()
{
	running_ = true;
	while (running_) {
		runDueTimers();
		drainPosts();
		if (!running_)
			break;

		struct __kernel_timespec ts;
		struct __kernel_timespec *tsp = nullptr;
		if (!deadlines_.empty()) {
			auto wait = deadlines_.begin()->first - Clock::now();
			auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
			if (ns < 0)
				ns = 0;
			ts.tv_sec = ns / 1000000000;
			ts.tv_nsec = ns % 1000000000;
			tsp = &ts;
		}

		struct io_uring_cqe *cqe;
		int ret = io_uring_wait_cqe_timeout(ring_.get(), &cqe, tsp);
		if (ret == -ETIME || ret == -EINTR)
			continue;
		if (ret < 0) {
			logError(kLog, "io_uring wait failed: {}", strerror(-ret));
			return ret;
		}

		/* Handle the whole batch, then advance the ring once. */
		unsigned head;
		unsigned count = 0;
		struct Done {
			uint64_t data;
			int res;
			uint32_t flags;
		};
		std::vector<Done> done;
		io_uring_for_each_cqe(ring_.get(), head, cqe)
		{
			done.push_back({ cqe->user_data, cqe->res, cqe->flags });
			count++;
		}
		io_uring_cq_advance(ring_.get(), count);
		for (const Done &d : done)
			handleCompletion(d.data, d.res, d.flags);
	}
	return 0;
}

} /* namespace sk */
