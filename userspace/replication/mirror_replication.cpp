/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SyncReplication: per replicated dir, a source pipeline (capture -> gate -> sender,
 * accept + resync threads) or a target pipeline (read-only capture, control + receiver
 * threads). Threads report to the state machine through loop->post only.
 */
#include "replication/mirror_replication.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <list>
#include <mutex>
#include <optional>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "cluster/key.h"
#include "core/le_bytes.h"
#include "core/log.h"
#include "replication/apply.h"
#include "replication/dirty_log.h"
#include "replication/fuse/capture_fs.h"
#include "replication/resync.h"
#include "replication/stream.h"
#include "replication/tls_pipe.h"
#include "replication/verify.h"

namespace sk {

namespace {

const LogCategory kLog("mirror-repl");

using namespace std::chrono_literals;
using repl::ControlChannel;
using repl::ControlFrame;

static_assert(static_cast<uint8_t>(repl::StreamFrame::Hello) == repl::kStreamHello);

constexpr int kConnectAttempts = 5;
constexpr int kMaxRounds = 5;
/* Accepted connections of one dir still in their TLS handshake or first frame. */
constexpr size_t kMaxHandshakes = 16;
/* How often an in-sync source rotates its dirty log (drops acked records). */
constexpr auto kRotateInterval = 5s;

/* Publishes a live control channel in *slot (under mutex) until scope exit, so
 * stop() can shut it down from another thread. */
class PublishedChannel
{
public:
	PublishedChannel(std::mutex &mutex, ControlChannel **slot, ControlChannel *channel)
		: mutex_(mutex), slot_(slot)
	{
		std::lock_guard<std::mutex> g(mutex_);
		*slot_ = channel;
	}
	~PublishedChannel()
	{
		std::lock_guard<std::mutex> g(mutex_);
		*slot_ = nullptr;
	}
	PublishedChannel(const PublishedChannel &) = delete;
	PublishedChannel &operator=(const PublishedChannel &) = delete;

private:
	std::mutex &mutex_;
	ControlChannel **slot_;
};

uint64_t nowMs()
{
	return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
					     std::chrono::steady_clock::now().time_since_epoch())
					     .count());
}

/* The real directory under a (possibly dead) over-mount, opened before mounting. */
Result<int> openRealDir(const std::string &path)
{
	int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 && errno == ENOTCONN) {
		umount2(path.c_str(), MNT_DETACH);
		fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	if (fd < 0)
		return makeError(-errno, fmt::format("cannot open replicated dir {}: {}", path, strerror(errno)));
	return fd;
}

/* Copies the tree under srcFd to dst (created). Regular files, dirs and symlinks. */
int copyTree(int srcFd, const std::string &rel, const std::string &dst, std::vector<std::string> *files)
{
	if (mkdir(dst.c_str(), 0700) < 0 && errno != EEXIST)
		return -errno;
	int dupFd = dup(srcFd);
	DIR *d = dupFd >= 0 ? fdopendir(dupFd) : nullptr;
	if (!d) {
		if (dupFd >= 0)
			close(dupFd);
		return -errno;
	}
	/* A dup shares the file offset with rootFd: an earlier walk left it at the end. */
	rewinddir(d);
	int ret = 0;
	while (dirent *de = readdir(d)) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		std::string name = de->d_name;
		std::string relPath = rel.empty() ? name : rel + "/" + name;
		std::string to = dst + "/" + name;
		struct stat s;
		if (fstatat(srcFd, name.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISDIR(s.st_mode)) {
			int sub = openat(srcFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				continue;
			ret = copyTree(sub, relPath, to, files);
			close(sub);
		} else if (S_ISLNK(s.st_mode)) {
			char buf[4097];
			ssize_t n = readlinkat(srcFd, name.c_str(), buf, sizeof(buf) - 1);
			if (n >= 0) {
				buf[n] = 0;
				if (symlink(buf, to.c_str()) == 0)
					files->push_back(relPath);
			}
		} else if (S_ISREG(s.st_mode)) {
			int in = openat(srcFd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			int out = in >= 0 ? open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
			if (in < 0 || out < 0) {
				ret = -errno;
			} else {
				char buf[1 << 16];
				ssize_t n;
				while ((n = read(in, buf, sizeof(buf))) > 0)
					if (write(out, buf, static_cast<size_t>(n)) != n) {
						ret = -EIO;
						break;
					}
				if (n < 0 || fsync(out) < 0)
					ret = -EIO;
				files->push_back(relPath);
			}
			if (in >= 0)
				close(in);
			if (out >= 0)
				close(out);
		}
		if (ret < 0)
			break;
	}
	closedir(d);
	return ret;
}

nlohmann::json logStatus(const repl::DirtyLog *log)
{
	if (!log)
		return { { "usable", false } };
	auto st = log->state();
	return { { "usable", true },	 { "covers", st.covers }, { "resyncing", st.resyncing },
		 { "records", st.records }, { "epoch", st.epoch },   { "problem", st.problem } };
}

/* Whole-content equality of two regular files or two symlinks. */
bool sameContent(int aDir, const std::string &aPath, int bDir, const std::string &bPath)
{
	struct stat sa, sb;
	if (fstatat(aDir, aPath.c_str(), &sa, AT_SYMLINK_NOFOLLOW) < 0 ||
	    fstatat(bDir, bPath.c_str(), &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
	    (sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT) || sa.st_size != sb.st_size)
		return false;
	if (S_ISLNK(sa.st_mode)) {
		char x[4097], y[4097];
		ssize_t n = readlinkat(aDir, aPath.c_str(), x, sizeof(x));
		ssize_t m = readlinkat(bDir, bPath.c_str(), y, sizeof(y));
		return n == m && n >= 0 && memcmp(x, y, static_cast<size_t>(n)) == 0;
	}
	int a = openat(aDir, aPath.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	int b = openat(bDir, bPath.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	bool same = a >= 0 && b >= 0;
	std::vector<char> x(1 << 16), y(1 << 16);
	while (same) {
		ssize_t n = read(a, x.data(), x.size());
		ssize_t m = read(b, y.data(), y.size());
		if (n != m || n < 0)
			same = false;
		else if (n == 0)
			break;
		else
			same = memcmp(x.data(), y.data(), static_cast<size_t>(n)) == 0;
	}
	if (a >= 0)
		close(a);
	if (b >= 0)
		close(b);
	return same;
}

class SyncReplication : public MirrorReplication
{
public:
	SyncReplication(const SyncReplicationContext &ctx, ClusterKey key, std::string address)
		: ctx_(ctx), key_(std::move(key)), address_(std::move(address)),
		  clusterId_(clusterIdFromName(ctx.cluster->name))
	{
	}
	~SyncReplication() override
	{
		*alive_ = false;
		stop();
	}

	void setCallbacks(Callbacks callbacks) override { cb_ = std::move(callbacks); }
	void startSource() override;
	void startTarget(ResyncMode mode, bool quarantine) override;
	void stop() override;
	void startDirtyTracking(const Generation &generation) override;
	void stopDirtyTracking() override;
	nlohmann::json status() const override;
	void verify(std::function<void(Result<nlohmann::json>)> done) override;

private:
	struct SourceDir {
		size_t index = 0;
		std::string path;
		int rootFd = -1;
		int listenFd = -1;
		int wakeFd = -1;
		std::unique_ptr<repl::DirtyLog> log;	/* null: unusable, every resync is full */
		std::unique_ptr<repl::ReplicationSender> sender;
		std::unique_ptr<repl::GatedSink> gate;
		std::unique_ptr<repl::CaptureFs> capture;
		std::thread acceptThread;
		std::thread resyncThread;
		std::thread rotateThread;
		std::thread verifyThread;
		std::atomic<bool> verifyBusy{ false };
		ControlChannel *verifyChannel = nullptr;	/* under chMutex */
		/* A verify asked for from here (on the PRIM): the target's report. */
		std::mutex askMutex;
		std::condition_variable askCv;
		bool askWaiting = false;	/* under askMutex, as the three below */
		bool askSessionStarted = false;
		int askSessions = 0;		/* authenticated verify sessions without a result yet */
		std::optional<Result<nlohmann::json>> askResult;
		std::mutex sessionMutex;	/* startSession(): busy flags and session threads */
		std::atomic<uint64_t> read{ 0 }, rotations{ 0 };
		std::atomic<bool> partial{ false };	/* last resync used the dirty logs */
		std::atomic<bool> resyncBusy{ false };
		std::atomic<bool> streamAllowed{ false };	/* this session's namespace pass began */
		std::mutex chMutex;
		ControlChannel *channel = nullptr;	/* live resync connection, under chMutex */
		std::atomic<bool> inSync{ false };
		/* Rotate now, not at the next interval: the target just came in sync (until the
		 * first rotation the log does not cover, and a crash would mean a full compare). */
		std::atomic<bool> rotateSoon{ false };
		std::atomic<uint64_t> done{ 0 }, total{ 0 }, sent{ 0 }, skipped{ 0 }, rounds{ 0 };
		std::atomic<uint64_t> resyncStartMs{ 0 }, resyncEndMs{ 0 };
	};
	struct TargetDir {
		size_t index = 0;
		std::string path;
		int rootFd = -1;
		std::unique_ptr<repl::DirtyLog> log;
		std::unique_ptr<repl::CaptureFs> capture;
		std::unique_ptr<repl::ReplicationReceiver> receiver;
		std::thread thread;
		std::mutex chMutex;
		ControlChannel *channel = nullptr;
		int streamFd = -1;		/* under chMutex, for shutdown */
		std::atomic<bool> done{ false };
		std::atomic<uint64_t> bytesDone{ 0 }, bytesTotal{ 0 };
	};

	uint16_t port(size_t index) const
	{
		return static_cast<uint16_t>(ctx_.cluster->ports.replication + index);
	}
	std::string peerAddress() const;
	/* With "tls": the connection wrapped in TLS 1.3 (tls_pipe.h); else fd itself. */
	Result<int> secure(int fd, bool server) const
	{
		if (!ctx_.module->replication.tls)
			return fd;
		return repl::tlsWrap(fd, key_, server, 5000ms);
	}
	void post(std::function<void(Callbacks &)> fn)
	{
		auto alive = alive_;
		ctx_.loop->post([this, alive, fn = std::move(fn)] {
			if (*alive)
				fn(cb_);
		});
	}
	void stopLocked();
	void acceptMain(SourceDir *d);
	/* One accepted connection: TLS, then by its first frame a resync, verify or stream. */
	void serveConnection(SourceDir *d, int fd);
	void resyncMain(SourceDir *d, int fd);
	Status resyncSession(SourceDir *d, ControlChannel *ch);
	void rotateMain(SourceDir *d);
	/* Runs session on a control connection accepted for d, published in *slot (under
	 * chMutex) for stop(); a failure is logged and sent to the peer as Fail. */
	void serveControl(SourceDir *d, int fd, ControlChannel **slot, const char *what,
			  const std::function<Status(ControlChannel *)> &session);
	Status verifySourceSession(SourceDir *d, ControlChannel *ch);
	Status verifySourcePasses(SourceDir *d, ControlChannel *ch);
	Result<nlohmann::json> verifyTargetDir(TargetDir *d);
	/* PRIM: asks the target of d for a verify over the stream, waits for its report. */
	Result<nlohmann::json> askPeerVerify(SourceDir *d);
	/* SECOND: a verify of dir index asked for by the source (event loop thread). */
	void startAskedVerify(size_t index);
	/* Runs steps (one per directory) on verifyThread_, then done on the event loop
	 * with {module, dirs, identical}; mutex_ held. */
	void launchVerify(std::vector<std::function<Result<nlohmann::json>()>> steps,
			  std::function<void(Result<nlohmann::json>)> done);
	/* A connection to the source's port of dir index (TLS-wrapped with "tls"), tried
	 * `attempts` times a second apart (fewer once stopping). */
	Result<int> dialSource(size_t index, int attempts);
	/* Runs fn on a new thread unless one of its kind is busy (then closes fd and
	 * says so); the previous thread of that kind is joined and claimed() runs first. */
	void startSession(SourceDir *d, std::atomic<bool> &busy, std::thread &thread, const char *what, int fd,
			  std::function<void()> fn, const std::function<void()> &claimed = nullptr);
	std::unique_ptr<repl::DirtyLog> openLog(size_t index);
	/* Block size, include/exclude of dir index; cancelled by stop(). */
	repl::ScanOptions scanOptions(size_t index) const
	{
		const auto &rc = ctx_.module->replication;
		repl::ScanOptions so;
		so.blockSize = rc.blockSize;
		so.include = rc.dirs[index].include;
		so.exclude = rc.dirs[index].exclude;
		so.stop = &stopping_;
		return so;
	}
	void onSourceDisconnected(SourceDir *d, const std::string &reason);
	void targetMain(TargetDir *d, ResyncMode mode, bool quarantine, std::string quarantineDir);
	Status targetSession(TargetDir *d, ResyncMode mode, bool quarantine, const std::string &quarantineDir);
	void targetFailed(const std::string &reason);
	void maybeReportDone();
	void reportTargetProgress();

	SyncReplicationContext ctx_;
	ClusterKey key_;
	std::string address_;		/* self, on the first cluster network */
	uint64_t clusterId_;
	Callbacks cb_;
	std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

	mutable std::mutex mutex_;	/* role changes; never held while calling out to a stream */
	enum class Role { None, Source, Target } role_ = Role::None;
	std::vector<std::unique_ptr<SourceDir>> sources_;
	std::vector<std::unique_ptr<TargetDir>> targets_;
	std::atomic<bool> stopping_{ false };
	std::atomic<bool> tracking_{ false };	/* the machine says we serve alone */
	std::atomic<bool> targetReported_{ false };	/* resyncFailed or resyncDone sent this session */
	std::atomic<bool> targetLost_{ false };		/* replicationLost sent this session */
	std::atomic<int> lastPercent_{ -1 };
	std::mutex rotateMutex_;
	std::condition_variable rotateWake_;
	Generation trackingGeneration_;
	std::string lastError_;
	/* Target side of an online verify (one at a time). */
	std::thread verifyThread_;
	std::atomic<bool> verifyBusy_{ false };
	std::vector<size_t> askedQueue_;	/* dir indices the primary asked for while busy; under mutex_ */
	std::mutex verifyMutex_;
	ControlChannel *verifyChannel_ = nullptr;	/* under verifyMutex_ */
};

std::string SyncReplication::peerAddress() const
{
	const auto &net = ctx_.cluster->networks.front();
	auto it = ctx_.peer->addresses.find(net);
	return it == ctx_.peer->addresses.end() ? std::string() : it->second;
}

/* <state_dir>/<module>/dirty-<i>.log; on failure the dir works without (full resyncs). */
std::unique_ptr<repl::DirtyLog> SyncReplication::openLog(size_t index)
{
	mkdir(ctx_.stateDir.c_str(), 0700);
	std::string file = fmt::format("{}/dirty-{}.log", ctx_.stateDir, index);
	auto log = repl::DirtyLog::open(file, ctx_.module->replication.blockSize);
	if (!log) {
		logWarn(kLog, "module {}: {}; resyncs of dir {} will compare everything", ctx_.module->name,
			log.error().message, index);
		return nullptr;
	}
	return std::move(*log);
}

void SyncReplication::startSource()
{
	std::lock_guard<std::mutex> lock(mutex_);
	if (role_ == Role::Source)
		return;
	stopLocked();
	stopping_ = false;
	const auto &rc = ctx_.module->replication;
	role_ = Role::Source;
	for (size_t i = 0; i < rc.dirs.size(); i++) {
		auto d = std::make_unique<SourceDir>();
		d->index = i;
		d->path = rc.dirs[i].path;
		repl::ReplicationSender::Options so;
		so.stream = { clusterId_, ctx_.module->name, ctx_.self->id, ctx_.peer->id };
		auto sender = repl::ReplicationSender::create(key_, so);
		auto fd = openRealDir(d->path);
		if (!sender || !fd) {
			lastError_ = !sender ? sender.error().message : fd.error().message;
			logError(kLog, "module {}: cannot start source on {}: {}", ctx_.module->name, d->path, lastError_);
			sources_.push_back(std::move(d));
			continue;
		}
		d->rootFd = *fd;
		d->log = openLog(i);
		d->sender = std::move(*sender);
		d->gate = std::make_unique<repl::GatedSink>(d->sender.get());
		SourceDir *raw = d.get();
		d->sender->setOnDisconnected([this, raw](const std::string &why) { onSourceDisconnected(raw, why); });
		if (tracking_)
			d->sender->goneAlone();
		repl::CaptureOptions co;
		co.mountpoint = d->path;
		co.dirIndex = static_cast<uint16_t>(i);
		co.sink = d->gate.get();
		co.writebackCache = !rc.perWrite;
		co.perWrite = rc.perWrite;
		co.ackDurable = rc.ack == AckLevel::Durable;
		co.exclude = rc.dirs[i].exclude;
		co.include = rc.dirs[i].include;
		co.dirtyLog = d->log.get();
		auto cap = repl::CaptureFs::mount(co);
		if (!cap) {
			lastError_ = cap.error().message;
			logError(kLog, "module {}: cannot mount capture on {}: {}", ctx_.module->name, d->path, lastError_);
			sources_.push_back(std::move(d));
			continue;
		}
		d->capture = std::move(*cap);
		/* The capture is mounted before we listen: every op from here on is in the
		 * sender's queue, so a resync started later misses nothing (resync.cpp). */
		auto l = repl::listenTcp(address_, port(i), nullptr);
		if (!l) {
			lastError_ = l.error().message;
			logError(kLog, "module {}: cannot listen on {}:{}: {}", ctx_.module->name, address_, port(i),
				 lastError_);
			sources_.push_back(std::move(d));
			continue;
		}
		d->listenFd = *l;
		d->wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		d->acceptThread = std::thread([this, raw] { acceptMain(raw); });
		if (d->log)
			d->rotateThread = std::thread([this, raw] { rotateMain(raw); });
		logInfo(kLog, "module {}: source for {} on {}:{}", ctx_.module->name, d->path, address_, port(i));
		sources_.push_back(std::move(d));
	}
}

void SyncReplication::onSourceDisconnected(SourceDir *d, const std::string &reason)
{
	if (stopping_)
		return;
	logWarn(kLog, "module {}: replication of {} lost: {}", ctx_.module->name, d->path, reason);
	bool wasInSync = d->inSync.exchange(false);
	{
		/* A verify needs the stream (its barriers): end one under way. */
		std::lock_guard<std::mutex> g(d->chMutex);
		if (d->verifyChannel)
			d->verifyChannel->shutdown();
	}
	if (tracking_) {
		/* The machine already serves alone (maybe we left ALONE only for this resync):
		 * release the waiters now, the dirty log covers what follows. */
		d->sender->goneAlone();
		return;
	}
	if (wasInSync) {
		/* Waiters stay blocked until the machine answers with StartDirtyTracking. */
		post([reason](Callbacks &cb) {
			if (cb.replicationLost)
				cb.replicationLost(reason);
		});
	}
}

/*
 * Accepts the target's connections. Each one's TLS handshake and first frame (up to
 * 5 s each) run on a thread of its own, a few at a time, so a client that connects
 * and says nothing never holds back the target's next connection.
 */
void SyncReplication::acceptMain(SourceDir *d)
{
	struct Pending {
		std::thread thread;
		std::atomic<bool> finished{ false };
	};
	std::list<Pending> pending;
	auto reap = [&](bool all) {
		for (auto it = pending.begin(); it != pending.end();) {
			if (all || it->finished) {
				it->thread.join();
				it = pending.erase(it);
			} else {
				++it;
			}
		}
	};
	for (;;) {
		pollfd fds[2] = { { d->listenFd, POLLIN, 0 }, { d->wakeFd, POLLIN, 0 } };
		int n = poll(fds, 2, pending.empty() ? -1 : 200);
		if (n < 0 && errno != EINTR)
			break;
		reap(false);
		if (stopping_ || (fds[1].revents & POLLIN))
			break;
		if (!(fds[0].revents & POLLIN))
			continue;
		int fd = accept4(d->listenFd, nullptr, nullptr, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		if (pending.size() >= kMaxHandshakes) {
			logWarn(kLog, "module {}: connection for {} refused: {} others still in their handshake",
				ctx_.module->name, d->path, pending.size());
			close(fd);
			continue;
		}
		repl::tuneSocket(fd);	/* keepalive: a peer that vanishes ends our reads */
		Pending &p = pending.emplace_back();
		try {
			p.thread = std::thread([this, d, fd, &p] {
				serveConnection(d, fd);
				p.finished = true;
			});
		} catch (const std::system_error &e) {
			logWarn(kLog, "module {}: connection for {} refused: {}", ctx_.module->name, d->path, e.what());
			close(fd);
			pending.pop_back();
		}
	}
	reap(true);
}

void SyncReplication::serveConnection(SourceDir *d, int fd)
{
	if (auto w = secure(fd, true); w) {
		fd = *w;
	} else {
		logWarn(kLog, "module {}: connection for {} refused: {}", ctx_.module->name, d->path, w.error().message);
		return;
	}
	uint8_t hello = repl::peekHello(fd, 5000ms);
	if (!hello) {
		logWarn(kLog, "module {}: connection for {} closed: no hello within 5 s", ctx_.module->name, d->path);
		close(fd);
		return;
	}
	if (hello == static_cast<uint8_t>(ControlFrame::VerifyHello)) {
		startSession(d, d->verifyBusy, d->verifyThread, "verify", fd, [this, d, fd] {
			serveControl(d, fd, &d->verifyChannel, "verify",
				     [&](ControlChannel *ch) { return verifySourceSession(d, ch); });
		});
		return;
	}
	if (hello == static_cast<uint8_t>(ControlFrame::Hello)) {
		/* Its stream waits for the namespace pass (see below). */
		startSession(d, d->resyncBusy, d->resyncThread, "resync", fd, [this, d, fd] { resyncMain(d, fd); },
			     [d] { d->streamAllowed = false; });
		return;
	}
	/* The target dials its stream right after its manifest: hold it until the
	 * resync's namespace pass has started (see resyncSession). Bounded: 20 s. */
	for (int i = 0; !d->streamAllowed && d->resyncBusy && !stopping_ && i < 400; i++)
		std::this_thread::sleep_for(50ms);
	int r = d->streamAllowed ? d->sender->attach(fd) : (close(fd), -EAGAIN);
	if (r < 0)
		logWarn(kLog, "module {}: stream connection for {} refused: {}", ctx_.module->name, d->path,
			strerror(-r));
}

void SyncReplication::startSession(SourceDir *d, std::atomic<bool> &busy, std::thread &thread, const char *what,
				   int fd, std::function<void()> fn, const std::function<void()> &claimed)
{
	/* Connections arrive on threads of their own: one of them at a time here. */
	std::lock_guard<std::mutex> serial(d->sessionMutex);
	if (busy.exchange(true)) {
		logWarn(kLog, "module {}: second {} connection for {} refused", ctx_.module->name, what, d->path);
		close(fd);
		return;
	}
	if (thread.joinable())
		thread.join();
	if (claimed)
		claimed();
	thread = std::thread([&busy, fn = std::move(fn)] {
		fn();
		busy = false;
	});
}

void SyncReplication::serveControl(SourceDir *d, int fd, ControlChannel **slot, const char *what,
				   const std::function<Status(ControlChannel *)> &session)
{
	auto ch = ControlChannel::create(fd, key_, clusterId_, ctx_.module->name, ctx_.self->id);
	if (!ch)
		return;
	PublishedChannel published(d->chMutex, slot, ch->get());
	/* stop() shuts down the channels it finds published: one published after it is ours to drop. */
	if (stopping_)
		return;
	Status s = session(ch->get());
	if (!s) {
		logWarn(kLog, "module {}: {} of {} failed: {}", ctx_.module->name, what, d->path, s.error().message);
		std::string msg = s.error().message;
		(void)(*ch)->send(ControlFrame::Fail, { reinterpret_cast<const uint8_t *>(msg.data()), msg.size() });
	}
}

void SyncReplication::resyncMain(SourceDir *d, int fd)
{
	serveControl(d, fd, &d->channel, "resync", [&](ControlChannel *ch) {
		d->inSync = false;
		d->resyncStartMs = nowMs();
		Status s = resyncSession(d, ch);
		d->resyncEndMs = nowMs();
		return s;
	});
}

Status SyncReplication::resyncSession(SourceDir *d, ControlChannel *ch)
{
	if (auto s = ch->handshakeSource(10000ms); !s)
		return s;
	/*
	 * Want: the blocks this node's dirty log names, by path (a walk maps its inodes).
	 * With no usable log the target hashes everything (full compare).
	 */
	repl::BlockSelection want;
	std::vector<repl::ManifestEntry> local;
	std::string fullWhy;
	if (!d->log) {
		fullWhy = "no dirty log";
	} else if (auto st = d->log->state(); !st.covers) {
		fullWhy = "dirty log here: " + (st.problem.empty() ? std::string("incomplete") : st.problem);
	} else if (st.resyncing) {
		fullWhy = "this node's copy was left half-way through a resync";
	} else {
		repl::BlockSelection mine = d->log->selection();
		repl::ScanOptions lo = scanOptions(d->index);
		lo.hashes = false;
		lo.onFile = [&](const std::string &path, uint64_t ino) {
			auto it = mine.byIno.find(ino);
			if (it != mine.byIno.end())
				want.byPath[path] = it->second;
		};
		auto l = repl::scanTree(d->rootFd, lo);
		if (!l)
			return l.error();
		local = std::move(*l);
	}
	if (fullWhy.empty() && want.byPath.size() > repl::kMaxSelectionPaths)
		fullWhy = fmt::format("the dirty log names more than {} files", repl::kMaxSelectionPaths);
	const bool full = !fullWhy.empty();
	if (full)
		want.byPath.clear();
	if (auto s = ch->sendSelection(ControlFrame::Want, ControlFrame::WantEnd, want, full); !s)
		return s;
	std::vector<repl::ManifestEntry> manifest;
	uint64_t targetApplied = 0;
	if (auto s = ch->recvManifest(&manifest, &targetApplied, 0ms); !s)
		return s;
	/* Files changed outside both logs (size or mtime differ): ask for their hashes. */
	repl::BlockSelection ask;
	if (!full)
		for (const auto &path : repl::unexplainedFiles(local, manifest))
			ask.byPath[path];
	/* Too many to name: the target hashes every file instead. */
	const bool askAll = ask.byPath.size() > repl::kMaxSelectionPaths;
	if (askAll)
		ask.byPath.clear();
	if (auto s = ch->sendSelection(ControlFrame::HashRequest, ControlFrame::HashRequestEnd, ask, askAll); !s)
		return s;
	std::vector<repl::ManifestEntry> hashed;
	uint64_t ignored = 0;
	if (auto s = ch->recvManifest(&hashed, &ignored, 0ms); !s)
		return s;
	repl::mergeManifest(&manifest, std::move(hashed));
	/* The target may compare everything on its own (its log is unusable): then every
	 * file it lists carries all its hashes. */
	d->partial = !full && std::any_of(manifest.begin(), manifest.end(), [](const repl::ManifestEntry &e) {
		return e.type == repl::EntryType::File && e.coverage != repl::Coverage::All;
	});
	if (full)
		logInfo(kLog, "module {}: resync of {} compares everything: {}", ctx_.module->name, d->path, fullWhy);
	else if (!d->partial)
		logInfo(kLog, "module {}: resync of {} compares everything (the target's choice)", ctx_.module->name,
			d->path);
	else
		logInfo(kLog, "module {}: resync of {} by dirty logs: {} file(s) named here, {} changed outside the logs",
			ctx_.module->name, d->path, want.byPath.size(), ask.byPath.size());
	if (stopping_)
		return makeError(-ECANCELED, "stopping");
	uint64_t base = 0;
	repl::BlockSelection late;
	/*
	 * Runs under the gate before the namespace pass, and the accept thread attaches
	 * the target's stream only after it: no live op reaches this target before the
	 * pass. Leave ALONE (new epoch, empty queue); if we were not alone, every op must
	 * already be acked - ops of a previous session would be replayed onto this
	 * target's unrelated tree - else the machine has to decide first (ALONE drops them).
	 */
	auto atStart = [d, &base, &late]() -> Status {
		if (d->sender->alone())
			d->sender->endAlone();
		else if (d->gate->lastSeq() && d->sender->waitAckedFor(d->gate->lastSeq(), 0ms) != 0)
			return makeError(-EBUSY, "the source still holds unacknowledged ops of the last session; "
						 "retry later");
		/* From here until in sync, durability calls do not wait for this target. */
		d->gate->setLocalAcks(true);
		/*
		 * Writes between the selection sent as Want and here reached neither the
		 * target's hashes nor the stream (ALONE dropped their ops), but every one of
		 * them is in the log by now: the round sends those blocks without a compare.
		 * Every later write submits its op after this (the gate) and streams.
		 */
		if (d->log)
			late = d->log->selection();
		/* Renames sequenced after this point were not seen by the manifest. */
		base = d->sender->counters().appliedSeq;
		d->gate->trackRenames(true);
		d->streamAllowed = true;
		return {};
	};
	/* Lowered on every way out; stops the tracking too. */
	struct Fence {
		repl::GatedSink *gate;
		bool raised = false;
		~Fence()
		{
			if (raised)
				gate->lowerRenameFence();
			auto g = gate->hold();
			gate->trackRenames(false);
		}
	} fence{ d->gate.get() };
	/* A durable barrier after everything submitted so far, acked by the target. */
	auto barrier = [this, d, ch]() -> Status {
		uint64_t seq = d->gate->submitBarrier(true);
		for (;;) {
			if (stopping_)
				return makeError(-ECANCELED, "stopping");
			int r = d->sender->waitAckedFor(seq, 200ms);
			if (d->sender->alone())
				return makeError(-ECONNRESET, "the stream to the target was lost");
			if (r == 0)
				return {};
			if (r != -ETIMEDOUT)
				return makeError(r, "waiting for the resync barrier failed");
			pollfd p{ ch->fd(), POLLIN | POLLRDHUP, 0 };
			if (poll(&p, 1, 0) > 0)
				return makeError(-ECONNRESET, "the target closed the resync connection");
		}
	};
	repl::ScanOptions so = scanOptions(d->index);
	uint64_t sentTotal = 0, readTotal = 0;
	/* A full compare's manifest has no piece hashes, nor has it any of the blocks
	 * written after the Want (late): those blocks wait for a round that asks for
	 * theirs, so that a 4 KiB change costs 4 KiB there too. */
	bool deferPieces = true;
	repl::BlockSelection deferred;
	/* Progress adds up over the rounds: what earlier rounds compared stays done. */
	uint64_t carriedDone = 0, carriedTotal = 0;
	for (int round = 1;; round++) {
		d->rounds = static_cast<uint64_t>(round);
		/*
		 * Progress counts what the target applied, not what was queued: each report
		 * first waits for the ops of the previous one (one report interval, 8 MiB,
		 * stays in flight), then publishes the previous point.
		 */
		uint64_t prevSeq = 0, prevDone = 0, roundTotal = 0;
		auto publish = [d, ch, carriedDone, carriedTotal](uint64_t done, uint64_t total) {
			d->done = carriedDone + done;
			d->total = carriedTotal + total;
			std::vector<uint8_t> p;
			le::append<uint64_t>(&p, carriedDone + done);
			le::append<uint64_t>(&p, carriedTotal + total);
			(void)ch->send(ControlFrame::Progress, p);
		};
		/* Bounded (30 s), and given up at once when stopping or the stream is lost. */
		auto waitApplied = [this, d](uint64_t seq) {
			for (int i = 0; i < 150 && !stopping_ && !d->sender->alone(); i++)
				if (d->sender->waitAckedFor(seq, 200ms) != -ETIMEDOUT)
					return;
		};
		auto progress = [&](uint64_t done, uint64_t total) {
			if (prevSeq)
				waitApplied(prevSeq);
			publish(std::min(prevDone, done), total);
			prevSeq = d->gate->lastSeq();
			prevDone = done;
			roundTotal = total;
		};
		deferred = {};
		auto stats = repl::runResyncRound(d->rootFd, static_cast<uint16_t>(d->index), so, manifest,
						  d->gate.get(), progress,
						  round == 1 ? std::function<Status()>(atStart) : std::function<Status()>(),
						  round == 1 ? &late : nullptr, deferPieces ? &deferred : nullptr);
		if (!stats)
			return stats.error();
		sentTotal += stats->bytesSent;
		readTotal += stats->bytesRead;
		d->sent = sentTotal;
		d->read = readTotal;
		d->skipped += stats->blocksSkipped;
		logInfo(kLog, "module {}: resync round {} of {}: {} files, {} bytes read, {} writes sent ({} bytes), "
			"{} blocks equal, {} equal 4 KiB pieces of differing blocks not sent, {} blocks left to "
			"a 4 KiB piece compare, {} removed",
			ctx_.module->name, round, d->path, stats->files, stats->bytesRead, stats->blocksSent,
			stats->bytesSent, stats->blocksSkipped, stats->piecesSkipped, stats->blocksDeferred,
			stats->removed);
		if (auto s = barrier(); !s)
			return s;
		publish(prevDone, roundTotal);
		carriedDone += prevDone;
		carriedTotal += roundTotal;
		const bool raced = d->gate->lastRenameSeq() > base;
		if (!raced && deferred.empty())
			break;
		if (round >= kMaxRounds)
			return makeError(-EAGAIN, fmt::format("the resync did not converge in {} rounds (renames kept "
							      "racing it); will retry", kMaxRounds));
		repl::BlockSelection again;
		bool all = false;
		if (!raced) {
			logInfo(kLog, "module {}: resync of {}: asking for the 4 KiB piece hashes of {} block(s) "
				"in {} file(s)", ctx_.module->name, d->path, stats->blocksDeferred,
				deferred.byPath.size());
		} else {
			/*
			 * A rename moved target files the manifest saw, so blocks skipped by its
			 * hashes may differ. Hold new renames back (they would race the next round
			 * too, for ever under a steady rename load), let those under way reach the
			 * target, then compare the renamed paths again from a fresh manifest. A
			 * renamed directory moved a whole subtree: then compare everything.
			 */
			if (!fence.raised) {
				if (!d->gate->raiseRenameFence(30000ms))
					return makeError(-EAGAIN, "a rename did not finish within 30 s; will retry");
				fence.raised = true;
			}
			if (auto s = barrier(); !s)
				return s;
			repl::GatedSink::Renamed renamed;
			{
				auto g = d->gate->hold();
				renamed = d->gate->takeRenamed();
			}
			all = renamed.overflow;
			for (const auto &path : renamed.paths) {
				struct stat st;
				if (fstatat(d->rootFd, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
				    S_ISDIR(st.st_mode))
					all = true;
				again.byPath[path];
			}
			logInfo(kLog, "module {}: resync round {} of {} raced renames: renames held back, comparing {} "
				"again{}", ctx_.module->name, round, d->path,
				all ? std::string("everything") : fmt::format("{} renamed path(s)", again.byPath.size()),
				deferred.empty() ? "" : " and some blocks by 4 KiB pieces");
		}
		/* The deferred blocks join the selection (a renamed path already asks for all of its file). */
		for (auto &[path, ranges] : deferred.byPath)
			if (!again.byPath.count(path))
				again.byPath[path] = std::move(ranges);
		if (again.byPath.size() > repl::kMaxSelectionPaths) {
			all = true;
			again.byPath.clear();
		}
		if (auto s = ch->send(ControlFrame::Rescan, {}); !s)
			return s;
		if (auto s = ch->sendSelection(ControlFrame::Want, ControlFrame::WantEnd, again, all); !s)
			return s;
		if (auto s = ch->recvManifest(&manifest, &targetApplied, 0ms); !s)
			return s;
		/*
		 * With the fence up no rename can have run since the manifest. Without it (a
		 * round for deferred pieces only) one may have, after this round's check and
		 * before the target took its manifest, moving a file with deferred blocks to a
		 * name the selection misses: keep the old base, so the next check sees it and
		 * a fenced round compares the renamed paths.
		 */
		if (fence.raised)
			base = targetApplied;
		/* Once: a later full manifest (renamed directories, too many paths) has no piece
		 * hashes either, but deferring again could go on for ever; it sends whole blocks. */
		deferPieces = false;
	}
	/*
	 * Durability calls wait for the target again. One more barrier: a call that
	 * returned on the local flush saw local acks before the switch, so its ops were
	 * submitted before this barrier, and once it is acked the target holds them.
	 */
	d->gate->setLocalAcks(false);
	if (auto s = barrier(); !s)
		return s;
	d->inSync = true;
	std::vector<uint8_t> p;
	le::append<uint64_t>(&p, sentTotal);
	if (auto s = ch->send(ControlFrame::Done, p); !s) {
		d->inSync = false;
		return s;
	}
	logInfo(kLog, "module {}: target in sync for {} ({} bytes sent)", ctx_.module->name, d->path, sentTotal);
	if (d->log) {
		std::lock_guard<std::mutex> l(rotateMutex_);
		d->rotateSoon = true;
		rotateWake_.notify_all();
	}
	return {};
}

/*
 * Activity-log rotation while in sync: new epoch (every earlier write submitted its
 * op), a durable barrier, and once the peer acked it the older records go.
 */
void SyncReplication::rotateMain(SourceDir *d)
{
	for (;;) {
		{
			std::unique_lock<std::mutex> l(rotateMutex_);
			rotateWake_.wait_for(l, kRotateInterval,
					     [this, d] { return stopping_.load() || d->rotateSoon.exchange(false); });
		}
		if (stopping_)
			return;
		if (!d->inSync || tracking_ || d->sender->alone())
			continue;
		uint64_t epoch = d->log->switchEpoch();
		uint64_t seq = d->gate->submitBarrier(true);
		int r = seq ? d->sender->waitAckedFor(seq, 30000ms) : -EIO;
		if (r != 0 || stopping_ || !d->inSync || d->sender->alone())
			continue;
		if (auto s = d->log->dropBefore(epoch); !s)
			logWarn(kLog, "module {}: dirty log rotation for {}: {}", ctx_.module->name, d->path,
				s.error().message);
		else
			d->rotations++;
	}
}

void SyncReplication::startTarget(ResyncMode mode, bool quarantine)
{
	std::lock_guard<std::mutex> lock(mutex_);
	stopLocked();
	stopping_ = false;
	targetReported_ = false;
	targetLost_ = false;
	lastPercent_ = -1;
	role_ = Role::Target;
	const auto &rc = ctx_.module->replication;
	std::string qdir;
	if (quarantine) {
		char stamp[32];
		time_t t = time(nullptr);
		struct tm tmv;
		gmtime_r(&t, &tmv);
		strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tmv);
		mkdir(ctx_.stateDir.c_str(), 0700);
		mkdir((ctx_.stateDir + "/quarantine").c_str(), 0700);
		qdir = ctx_.stateDir + "/quarantine/" + stamp;
		mkdir(qdir.c_str(), 0700);
	}
	for (size_t i = 0; i < rc.dirs.size(); i++) {
		auto d = std::make_unique<TargetDir>();
		d->index = i;
		d->path = rc.dirs[i].path;
		targets_.push_back(std::move(d));
	}
	for (auto &d : targets_) {
		auto fd = openRealDir(d->path);
		if (!fd) {
			targetFailed(fd.error().message);
			return;
		}
		d->rootFd = *fd;
		d->log = openLog(d->index);
		repl::CaptureOptions co;
		co.mountpoint = d->path;
		co.dirIndex = static_cast<uint16_t>(d->index);
		co.readOnly = true;
		auto cap = repl::CaptureFs::mount(co);
		if (!cap) {
			targetFailed("read-only mount of " + d->path + ": " + cap.error().message);
			return;
		}
		d->capture = std::move(*cap);
		repl::Applier::Options ao;
		ao.applyOwner = geteuid() == 0;
		auto applier = repl::Applier::create(d->rootFd, ao);
		if (!applier) {
			targetFailed(applier.error().message);
			return;
		}
		repl::ReplicationReceiver::Options ro;
		ro.stream = { clusterId_, ctx_.module->name, ctx_.self->id, ctx_.peer->id };
		auto rx = repl::ReplicationReceiver::create(key_, ro, std::move(*applier));
		if (!rx) {
			targetFailed(rx.error().message);
			return;
		}
		d->receiver = std::move(*rx);
		/* On the receiver thread: hand over to the event loop (it owns verifyThread_). */
		d->receiver->setOnVerifyAsked([this, index = d->index, alive = alive_] {
			ctx_.loop->post([this, index, alive] {
				if (*alive)
					startAskedVerify(index);
			});
		});
	}
	for (auto &d : targets_) {
		TargetDir *raw = d.get();
		std::string q = qdir.empty() ? qdir : qdir + "/" + std::to_string(d->index);
		d->thread = std::thread([this, raw, mode, quarantine, q] { targetMain(raw, mode, quarantine, q); });
	}
	logInfo(kLog, "module {}: target of {} dir(s) from {}, {} resync{}", ctx_.module->name, targets_.size(),
		peerAddress(), mode == ResyncMode::Full ? "full" : "partial", quarantine ? ", quarantine" : "");
}

void SyncReplication::targetFailed(const std::string &reason)
{
	lastError_ = reason;
	if (stopping_ || targetReported_.exchange(true))
		return;
	logWarn(kLog, "module {}: resync failed: {}", ctx_.module->name, reason);
	post([reason](Callbacks &cb) {
		if (cb.resyncFailed)
			cb.resyncFailed(reason);
	});
}

void SyncReplication::reportTargetProgress()
{
	uint64_t done = 0, total = 0;
	for (auto &t : targets_) {
		done += t->bytesDone;
		total += t->bytesTotal;
	}
	int pct = total ? static_cast<int>(done * 100 / total) : 0;
	if (pct >= 100)
		pct = 99;	/* 100 only with resyncDone */
	if (pct == lastPercent_.exchange(pct))
		return;
	post([pct](Callbacks &cb) {
		if (cb.progress)
			cb.progress(pct);
	});
}

void SyncReplication::targetMain(TargetDir *d, ResyncMode mode, bool quarantine, std::string quarantineDir)
{
	Status s = targetSession(d, mode, quarantine, quarantineDir);
	if (!s)
		targetFailed(s.error().message);
}

void SyncReplication::maybeReportDone()
{
	for (auto &t : targets_)
		if (!t->done)
			return;
	if (targetReported_.exchange(true))
		return;
	logInfo(kLog, "module {}: resync done, target in sync", ctx_.module->name);
	post([](Callbacks &cb) {
		if (cb.resyncDone)
			cb.resyncDone();
	});
}

Result<int> SyncReplication::dialSource(size_t index, int attempts)
{
	std::string peer = peerAddress();
	Error last{ -ECONNREFUSED, "no attempt" };
	for (int i = 0; i < attempts && !stopping_; i++) {
		if (i)
			std::this_thread::sleep_for(1000ms);
		auto c = repl::connectTcp(peer, port(index));
		if (c) {
			repl::tuneSocket(*c);	/* keepalive: a vanished source ends our reads */
			c = secure(*c, false);
		}
		if (c)
			return *c;
		last = c.error();
	}
	return makeError(last.code, fmt::format("cannot reach the source {}:{}: {}", peer, port(index), last.message));
}

Status SyncReplication::targetSession(TargetDir *d, ResyncMode mode, bool quarantine,
				      const std::string &quarantineDir)
{
	auto cfd = dialSource(d->index, kConnectAttempts);
	if (!cfd)
		return cfd.error();
	auto chr = ControlChannel::create(*cfd, key_, clusterId_, ctx_.module->name, ctx_.self->id);
	if (!chr)
		return chr.error();
	std::unique_ptr<ControlChannel> ch = std::move(*chr);
	PublishedChannel published(d->chMutex, &d->channel, ch.get());
	if (auto s = ch->handshakeTarget(10000ms); !s)
		return s;
	repl::BlockSelection want;
	bool sourceFull = true;
	if (auto s = ch->recvSelection(ControlFrame::Want, ControlFrame::WantEnd, &want, &sourceFull, 60000ms); !s)
		return s;
	/* Hash only what either log names, unless a log is unusable or the machine
	 * asked for a full compare (unknown or divergent generations). */
	std::string fullWhy = sourceFull ? "the source has no usable dirty log"
			      : mode == ResyncMode::Full ? "full resync requested"
			      : !d->log ? "no dirty log here"
			      : !d->log->state().covers ? "dirty log here: " + d->log->state().problem
							: "";
	repl::BlockSelection select;
	if (fullWhy.empty()) {
		select = d->log->selection();
		select.byPath = std::move(want.byPath);
	}
	if (d->log)
		if (auto s = d->log->setResyncing(true); !s)
			logWarn(kLog, "module {}: {}", ctx_.module->name, s.error().message);
	logInfo(kLog, "module {}: resync of {}: {}", ctx_.module->name, d->path,
		fullWhy.empty() ? fmt::format("by dirty logs ({} file(s) named by the source, {} inode(s) here)",
					      select.byPath.size(), select.byIno.size())
				: "full compare: " + fullWhy);

	std::vector<std::string> copied;
	if (quarantine) {
		/* Split-brain loser: keep our copy of everything before the winner's ops touch
		 * it; copies equal to the synced result are pruned once in sync. */
		int r = copyTree(d->rootFd, "", quarantineDir, &copied);
		if (r < 0)
			return makeError(r, fmt::format("quarantine copy to {} failed: {}", quarantineDir, strerror(-r)));
	}

	repl::ScanOptions so = scanOptions(d->index);
	so.select = fullWhy.empty() ? &select : nullptr;
	so.subBlocks = true;	/* for blocks the logs name: the source sends only changed pieces */
	auto manifest = repl::scanTree(d->rootFd, so);
	if (!manifest)
		return manifest.error();
	if (auto s = ch->sendManifest(*manifest, 0); !s)
		return s;
	/* The source may ask for whole-file hashes of files changed outside the logs. */
	{
		repl::BlockSelection ask;
		bool askAll = false;
		if (auto s = ch->recvSelection(ControlFrame::HashRequest, ControlFrame::HashRequestEnd, &ask,
					       &askAll, 0ms);
		    !s)
			return s;
		std::vector<repl::ManifestEntry> hashed;
		if (askAll || !ask.empty()) {
			repl::ScanOptions ho = so;
			ho.select = askAll ? nullptr : &ask;
			auto all = repl::scanTree(d->rootFd, ho);
			if (!all)
				return all.error();
			for (auto &e : *all)
				if (askAll || ask.byPath.count(e.path))
					hashed.push_back(std::move(e));
		}
		if (auto s = ch->sendManifest(hashed, 0); !s)
			return s;
	}

	auto sfd = dialSource(d->index, kConnectAttempts);
	if (!sfd)
		return sfd.error();
	{
		std::lock_guard<std::mutex> g(d->chMutex);
		d->streamFd = *sfd;
	}
	d->receiver->setResyncing(true);
	std::atomic<bool> streamEnded{ false };
	std::thread serve([d, fd = *sfd, &streamEnded] {
		d->receiver->serve(fd);
		streamEnded = true;
		/* A stream lost during the resync also ends the control connection, so both
		 * sides give up instead of waiting for each other. */
		std::lock_guard<std::mutex> g(d->chMutex);
		if (d->channel && !d->done)
			d->channel->shutdown();
	});
	struct Joiner {
		TargetDir *d;
		std::thread &t;
		~Joiner()
		{
			t.join();
			std::lock_guard<std::mutex> g(d->chMutex);
			d->streamFd = -1;
		}
	};
	auto stopStream = [d] {
		std::lock_guard<std::mutex> g(d->chMutex);
		if (d->streamFd >= 0)
			shutdown(d->streamFd, SHUT_RDWR);
	};

	Status result;
	{
		Joiner joiner{ d, serve };
		for (;;) {
			ControlFrame type;
			std::vector<uint8_t> payload;
			Status s = ch->recv(&type, &payload, 0ms);
			if (!s) {
				result = s;
				break;
			}
			if (type == ControlFrame::Progress) {
				if (payload.size() != 16) {
					result = makeError(-EPROTO, "malformed progress frame");
					break;
				}
				d->bytesDone = le::get<uint64_t>(payload.data());
				d->bytesTotal = le::get<uint64_t>(payload.data() + 8);
				reportTargetProgress();
			} else if (type == ControlFrame::Rescan) {
				/* The paths renames raced (or everything): hash those again. */
				repl::BlockSelection again;
				bool all = true;
				if (auto s2 = ch->recvSelection(ControlFrame::Want, ControlFrame::WantEnd, &again,
								&all, 60000ms);
				    !s2) {
					result = s2;
					break;
				}
				so.select = all ? nullptr : &again;
				uint64_t applied = d->receiver->lastApplied();
				auto m = repl::scanTree(d->rootFd, so);
				so.select = nullptr;
				if (!m) {
					result = m.error();
					break;
				}
				if (auto s2 = ch->sendManifest(*m, applied); !s2) {
					result = s2;
					break;
				}
			} else if (type == ControlFrame::Done) {
				d->done = true;
				/* Everything before the final barrier is applied: strict again. */
				d->receiver->setResyncing(false);
				/* Equal to the source now: our own records are moot. */
				if (d->log)
					if (auto s2 = d->log->resetAfterResync(); !s2)
						logWarn(kLog, "module {}: {}", ctx_.module->name, s2.error().message);
				break;
			} else {
				result = makeError(-EPROTO, "unexpected control frame");
				break;
			}
		}
		if (!result.ok() || !d->done) {
			if (streamEnded && !d->receiver->lastCloseReason().empty())
				result = makeError(-ECONNRESET, "stream: " + d->receiver->lastCloseReason() + " (" +
									(result.ok() ? "" : result.error().message) + ")");
			stopStream();
			return result.ok() ? makeError(-ECONNRESET, "resync ended early") : result;
		}
		ch.reset();
		{
			std::lock_guard<std::mutex> g(d->chMutex);
			d->channel = nullptr;
		}
		if (quarantine) {
			std::string report;
			size_t kept = 0;
			for (const auto &rel : copied) {
				if (sameContent(d->rootFd, rel, AT_FDCWD, quarantineDir + "/" + rel)) {
					unlink((quarantineDir + "/" + rel).c_str());
					continue;
				}
				kept++;
				report += rel + "\tdiffered from the peer's version (kept here)\n";
			}
			std::string rp = quarantineDir + "/REPORT.txt";
			int rf = open(rp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (rf >= 0) {
				std::string head = fmt::format("quarantine of {} (dir {}): {} file(s) kept\n", d->path,
							       d->index, kept);
				(void)!write(rf, head.data(), head.size());
				(void)!write(rf, report.data(), report.size());
				fsync(rf);
				close(rf);
			}
			logWarn(kLog, "module {}: quarantine kept {} differing file(s) in {}", ctx_.module->name, kept,
				quarantineDir);
		}
		/* Tell the machine (all dirs done) before we block on the live stream. */
		maybeReportDone();
		while (!streamEnded && !stopping_)
			std::this_thread::sleep_for(100ms);
	}
	if (stopping_)
		return {};
	std::string why = "stream: " + d->receiver->lastCloseReason();
	if (!targetLost_.exchange(true))
		post([why](Callbacks &cb) {
			if (cb.replicationLost)
				cb.replicationLost(why);
		});
	return {};
}

/* ------------------------------------------------------------------ online verify */

namespace {

/* Only the entries a selection names (a selective scan lists every entry). */
void keepSelected(std::vector<repl::ManifestEntry> *entries, const repl::BlockSelection &sel)
{
	std::erase_if(*entries, [&](const repl::ManifestEntry &e) { return !sel.byPath.count(e.path); });
}

} /* namespace */

/*
 * Source side of an online verify, two passes asked for by the target: hash what it
 * names (pass 1: everything), then submit a barrier into the live stream, so the
 * target compares its copy once everything up to the scan is applied there.
 */
Status SyncReplication::verifySourceSession(SourceDir *d, ControlChannel *ch)
{
	if (auto s = ch->handshakeSource(10000ms, ControlFrame::VerifyHello); !s)
		return s;
	{
		std::lock_guard<std::mutex> g(d->askMutex);
		d->askSessionStarted = true;
		d->askSessions++;
	}
	/* Then the target's report, whoever asked: a verify asked for here waits for it. */
	Result<nlohmann::json> report = makeError(-EPROTO, "no verify report");
	if (Status s = verifySourcePasses(d, ch); !s) {
		report = s.error();
	} else {
		ControlFrame type;
		std::vector<uint8_t> payload;
		if (Status r = ch->recv(&type, &payload, 0ms); !r) {
			report = r.error();
		} else if (type == ControlFrame::VerifyReport) {
			auto j = nlohmann::json::parse(payload.begin(), payload.end(), nullptr, false);
			if (j.is_object())
				report = std::move(j);
			else
				report = makeError(-EPROTO, "the verify report is not a JSON object");
		}
	}
	{
		std::lock_guard<std::mutex> g(d->askMutex);
		d->askSessions--;
		if (d->askWaiting && !d->askResult)
			d->askResult = report;
		d->askCv.notify_all();
	}
	if (!report)
		return report.error();
	return {};
}

/* After the handshake: the target's two passes. */
Status SyncReplication::verifySourcePasses(SourceDir *d, ControlChannel *ch)
{
	for (int pass = 0; pass < 2; pass++) {
		repl::BlockSelection sel;
		bool all = false;
		/* Pass 2 comes after the target's own scan: no bound but stop(). */
		if (auto s = ch->recvSelection(ControlFrame::HashRequest, ControlFrame::HashRequestEnd, &sel, &all, 0ms);
		    !s)
			return s;
		if (!d->inSync || d->resyncBusy || !d->sender->streaming())
			return makeError(-EAGAIN, "the peer is not in sync here (resync under way or stream down)");
		if (!all && sel.byPath.empty()) {
			if (auto s = ch->sendManifest({}, 0); !s)
				return s;
			continue;
		}
		repl::ScanOptions so = scanOptions(d->index);
		so.select = all ? nullptr : &sel;
		auto m = repl::scanTree(d->rootFd, so);
		if (!m)
			return m.error();
		if (!all)
			keepSelected(&*m, sel);
		uint64_t barrier = d->gate->submitBarrier(false);
		if (!barrier)
			return makeError(-EIO, "verify barrier refused by the stream");
		if (auto s = ch->sendManifest(*m, barrier); !s)
			return s;
	}
	return {};
}

/*
 * Target side, one directory: pass 1 compares everything at a barrier; the paths
 * that differed are hashed again on both sides at a second barrier, and only those
 * the source did not change in between and that still differ are reported
 * (repl::confirmDifferences): live writes in flight are not differences.
 */
Result<nlohmann::json> SyncReplication::verifyTargetDir(TargetDir *d)
{
	auto started = std::chrono::steady_clock::now();
	auto cfd = dialSource(d->index, 1);
	if (!cfd)
		return cfd.error();
	auto chr = ControlChannel::create(*cfd, key_, clusterId_, ctx_.module->name, ctx_.self->id);
	if (!chr)
		return chr.error();
	std::unique_ptr<ControlChannel> ch = std::move(*chr);
	PublishedChannel published(verifyMutex_, &verifyChannel_, ch.get());
	if (auto s = ch->handshakeTarget(10000ms, ControlFrame::VerifyHello); !s)
		return s.error();
	repl::ScanOptions so = scanOptions(d->index);
	auto pass = [&](const repl::BlockSelection &sel, bool all, std::vector<repl::ManifestEntry> *src,
			std::vector<repl::ManifestEntry> *tgt) -> Status {
		if (auto s = ch->sendSelection(ControlFrame::HashRequest, ControlFrame::HashRequestEnd, sel, all); !s)
			return s;
		uint64_t barrier = 0;
		if (auto s = ch->recvManifest(src, &barrier, 0ms); !s)
			return s;
		if (!all && sel.byPath.empty())
			return {};
		for (int i = 0; d->receiver->lastApplied() < barrier; i++) {
			if (stopping_)
				return makeError(-ECANCELED, "replication stopping");
			if (i >= 12000)
				return makeError(-ETIMEDOUT, "the verify barrier was not applied here within 120 s");
			std::this_thread::sleep_for(10ms);
		}
		so.select = all ? nullptr : &sel;
		auto t = repl::scanTree(d->rootFd, so);
		if (!t)
			return t.error();
		if (!all)
			keepSelected(&*t, sel);
		*tgt = std::move(*t);
		return {};
	};
	std::vector<repl::ManifestEntry> src1, tgt1, src2, tgt2;
	if (auto s = pass({}, true, &src1, &tgt1); !s)
		return s.error();
	repl::VerifyReport report = repl::compareManifests(src1, tgt1, so.blockSize);
	repl::BlockSelection again;
	for (const auto &diff : report.differences)
		if (again.byPath.size() < repl::kMaxSelectionPaths)
			again.byPath[diff.path];
	if (auto s = pass(again, false, &src2, &tgt2); !s)
		return s.error();
	if (!again.byPath.empty())
		report = repl::confirmDifferences(report, src1, src2, tgt2, so.blockSize);
	nlohmann::json j = report.toJson();
	j["dir"] = d->path;
	j["index"] = d->index;
	j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
	/* The source gets the report too (a verify asked for on the PRIM waits for it),
	 * cut to what one frame carries. */
	nlohmann::json sent = j;
	std::string text = sent.dump();
	while (text.size() > repl::kMaxVerifyReport) {
		auto &list = !sent["differences"].empty() ? sent["differences"] : sent["changing"];
		if (list.empty())
			break;
		sent["differences_total"] = j["differences"].size();
		sent["truncated"] = true;
		list.erase(list.begin() + static_cast<std::ptrdiff_t>(list.size() / 2), list.end());
		text = sent.dump();
	}
	if (auto s = ch->send(ControlFrame::VerifyReport, { reinterpret_cast<const uint8_t *>(text.data()), text.size() });
	    !s)
		logWarn(kLog, "module {}: verify report of {} not sent to the primary: {}", ctx_.module->name, d->path,
			s.error().message);
	return j;
}

Result<nlohmann::json> SyncReplication::askPeerVerify(SourceDir *d)
{
	{
		std::lock_guard<std::mutex> g(d->askMutex);
		d->askWaiting = true;
		/* A verify session under way (asked for on the secondary) answers too. */
		d->askSessionStarted = d->askSessions > 0;
		d->askResult.reset();
	}
	Result<nlohmann::json> out = makeError(-ECANCELED, "replication stopping");
	if (int r = d->sender->requestVerify(); r < 0) {
		out = makeError(r, "the stream to the secondary is down");
	} else {
		/*
		 * The target dials its verify connection at once: bound that part (a lost
		 * request); then the session's own bounds apply, and a lost stream (which
		 * also shuts the verify connection) ends the wait.
		 */
		auto asked = std::chrono::steady_clock::now();
		std::unique_lock<std::mutex> l(d->askMutex);
		while (!d->askResult && !stopping_) {
			if (!d->askSessionStarted && std::chrono::steady_clock::now() - asked > 30s) {
				d->askResult = makeError(-ETIMEDOUT, "the secondary did not start the verify within 30 s");
				break;
			}
			if (!d->sender->streaming() && d->askSessions == 0) {
				d->askResult = makeError(-ECONNRESET, "the stream to the secondary was lost");
				break;
			}
			d->askCv.wait_for(l, 200ms);
		}
		if (d->askResult)
			out = std::move(*d->askResult);
	}
	std::lock_guard<std::mutex> g(d->askMutex);
	d->askWaiting = false;
	d->askResult.reset();
	return out;
}

void SyncReplication::startAskedVerify(size_t index)
{
	std::lock_guard<std::mutex> lock(mutex_);
	if (role_ != Role::Target || stopping_)
		return;
	TargetDir *d = nullptr;
	for (auto &t : targets_)
		if (t->index == index && t->done)
			d = t.get();
	if (!d)
		return;
	if (verifyBusy_) {
		/* After the one running (the primary verifies its directories one by one). */
		if (std::find(askedQueue_.begin(), askedQueue_.end(), index) == askedQueue_.end())
			askedQueue_.push_back(index);
		return;
	}
	logInfo(kLog, "module {}: verify of {} asked for by the primary", ctx_.module->name, d->path);
	launchVerify({ [this, d] { return verifyTargetDir(d); } }, [this](Result<nlohmann::json> r) {
		if (!r)
			logWarn(kLog, "module {}: verify asked for by the primary failed: {}", ctx_.module->name,
				r.error().message);
	});
}

void SyncReplication::verify(std::function<void(Result<nlohmann::json>)> done)
{
	std::lock_guard<std::mutex> lock(mutex_);
	std::vector<std::function<Result<nlohmann::json>()>> steps;
	if (role_ == Role::Target) {
		for (auto &d : targets_) {
			if (!d->done)
				return done(makeError(-EAGAIN, "the resync of " + d->path + " is not finished: verify after it"));
			steps.push_back([this, d = d.get()] { return verifyTargetDir(d); });
		}
	} else if (role_ == Role::Source) {
		for (auto &d : sources_) {
			if (!d->inSync || !d->sender || !d->sender->streaming())
				return done(makeError(-EAGAIN, "the secondary is not in sync for " + d->path +
								       " (resync under way or peer away): verify after it"));
			steps.push_back([this, d = d.get()] { return askPeerVerify(d); });
		}
	} else {
		return done(makeError(-EINVAL, "replication is not running"));
	}
	if (verifyBusy_)
		return done(makeError(-EBUSY, "a verify of this module is already running"));
	launchVerify(std::move(steps), std::move(done));
}

void SyncReplication::launchVerify(std::vector<std::function<Result<nlohmann::json>()>> steps,
				   std::function<void(Result<nlohmann::json>)> done)
{
	verifyBusy_ = true;
	if (verifyThread_.joinable())
		verifyThread_.join();
	verifyThread_ = std::thread([this, steps = std::move(steps), done = std::move(done)]() mutable {
		Result<nlohmann::json> result = nlohmann::json{ { "module", ctx_.module->name } };
		nlohmann::json list = nlohmann::json::array();
		bool identical = true;
		for (auto &step : steps) {
			auto r = step();
			if (!r) {
				result = makeError(r.error().code, "verify: " + r.error().message);
				break;
			}
			identical = identical && r->value("identical", false);
			list.push_back(std::move(*r));
		}
		if (result) {
			(*result)["dirs"] = std::move(list);
			(*result)["identical"] = identical;
		}
		verifyBusy_ = false;
		auto alive = alive_;
		ctx_.loop->post([this, alive, done = std::move(done), result = std::move(result)]() mutable {
			if (!*alive)
				return;
			done(std::move(result));
			/* Then a verify the primary asked for meanwhile. */
			size_t next;
			{
				std::lock_guard<std::mutex> lock(mutex_);
				if (askedQueue_.empty())
					return;
				next = askedQueue_.front();
				askedQueue_.erase(askedQueue_.begin());
			}
			startAskedVerify(next);
		});
	});
}

void SyncReplication::stop()
{
	std::lock_guard<std::mutex> lock(mutex_);
	stopLocked();
}

/*
 * Teardown order matters: wake every thread that may block (accept, control recv,
 * stream), release capture workers waiting for acks (goneAlone: at stop the app is
 * down or the node is leaving the pair, and the dirty log covers the rest), then
 * unmount, join, and only then destroy the streams the captures point at.
 */
void SyncReplication::stopLocked()
{
	if (role_ == Role::None)
		return;
	stopping_ = true;
	{
		std::lock_guard<std::mutex> l(rotateMutex_);
		rotateWake_.notify_all();
	}
	for (auto &d : sources_) {
		if (d->wakeFd >= 0) {
			uint64_t one = 1;
			(void)!write(d->wakeFd, &one, sizeof(one));
		}
		{
			std::lock_guard<std::mutex> g(d->chMutex);
			if (d->channel)
				d->channel->shutdown();
			if (d->verifyChannel)
				d->verifyChannel->shutdown();
		}
		if (d->sender)
			d->sender->goneAlone();
		{
			std::lock_guard<std::mutex> g(d->askMutex);
			d->askCv.notify_all();
		}
		/* A rename held back by a resync must not keep the unmount below waiting. */
		if (d->gate)
			d->gate->lowerRenameFence();
	}
	for (auto &d : targets_) {
		std::lock_guard<std::mutex> g(d->chMutex);
		if (d->channel)
			d->channel->shutdown();
		if (d->streamFd >= 0)
			shutdown(d->streamFd, SHUT_RDWR);
	}
	{
		std::lock_guard<std::mutex> g(verifyMutex_);
		if (verifyChannel_)
			verifyChannel_->shutdown();
	}
	if (verifyThread_.joinable())
		verifyThread_.join();
	askedQueue_.clear();
	for (auto &d : sources_) {
		if (d->capture) {
			if (auto s = d->capture->unmount(); !s)
				logWarn(kLog, "module {}: unmount of {}: {}", ctx_.module->name, d->path, s.error().message);
		}
		if (d->acceptThread.joinable())
			d->acceptThread.join();
		if (d->resyncThread.joinable())
			d->resyncThread.join();
		if (d->verifyThread.joinable())
			d->verifyThread.join();
		if (d->rotateThread.joinable())
			d->rotateThread.join();
		if (d->sender)
			d->sender->detach();
		d->capture.reset();
		d->gate.reset();
		d->sender.reset();
		d->log.reset();
		for (int *fd : { &d->listenFd, &d->wakeFd, &d->rootFd })
			if (*fd >= 0) {
				close(*fd);
				*fd = -1;
			}
	}
	for (auto &d : targets_) {
		if (d->receiver)
			d->receiver->stop();
		if (d->thread.joinable())
			d->thread.join();
		if (d->capture) {
			if (auto s = d->capture->unmount(); !s)
				logWarn(kLog, "module {}: unmount of {}: {}", ctx_.module->name, d->path, s.error().message);
		}
		d->capture.reset();
		d->receiver.reset();
		d->log.reset();
		if (d->rootFd >= 0)
			close(d->rootFd);
		d->rootFd = -1;
	}
	sources_.clear();
	targets_.clear();
	role_ = Role::None;
	logInfo(kLog, "module {}: replication stopped", ctx_.module->name);
}

void SyncReplication::startDirtyTracking(const Generation &generation)
{
	std::lock_guard<std::mutex> lock(mutex_);
	trackingGeneration_ = generation;
	tracking_ = true;
	/* The machine now serves alone: waiters blocked on the lost peer are released. */
	for (auto &d : sources_)
		if (d->sender)
			d->sender->goneAlone();
}

void SyncReplication::stopDirtyTracking()
{
	tracking_ = false;
}

nlohmann::json SyncReplication::status() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	nlohmann::json j;
	const auto &rc = ctx_.module->replication;
	j["mode"] = role_ == Role::Source ? "source" : role_ == Role::Target ? "target" : "stopped";
	j["replication_mode"] = configName(rc.mode);
	j["ack"] = configName(rc.ack);
	j["per_write"] = rc.perWrite;
	j["block_size"] = rc.blockSize;
	j["dirty_tracking"] = tracking_.load();
	j["tls"] = rc.tls;
	if (rc.tls) {
		auto t = repl::tlsCounters();
		j["tls_handshakes"] = t.handshakes;
		j["tls_failures"] = t.failures;
	}
	if (!lastError_.empty())
		j["last_error"] = lastError_;
	nlohmann::json dirs = nlohmann::json::array();
	uint64_t now = nowMs();
	for (const auto &d : sources_) {
		nlohmann::json o;
		o["path"] = d->path;
		o["in_sync"] = d->inSync.load();
		if (d->sender) {
			auto c = d->sender->counters();
			o["connected"] = d->sender->streaming();
			o["alone"] = d->sender->alone();
			o["lag_ops"] = c.lagOps;
			o["lag_bytes"] = c.lagBytes;
			o["ops"] = c.ops;
			o["bytes"] = c.bytes;
			o["acked_seq"] = c.appliedSeq;
			o["durable_seq"] = c.durableSeq;
			o["ops_while_alone"] = c.opsWhileAlone;
			o["barriers"] = c.barriers;
			o["barriers_released_alone"] = c.barriersReleasedAlone;
			uint64_t completed = c.barriersAcked + c.barriersReleasedAlone;
			o["barrier_latency_us_avg"] = completed ? c.barrierLatencyNsSum / completed / 1000 : 0;
			o["barrier_latency_us_max"] = c.barrierLatencyNsMax / 1000;
			o["barrier_latency_us_p50"] = std::lround(repl::barrierLatencyQuantileUs(c.barrierLatencyHist, 0.5));
			o["barrier_latency_us_p99"] = std::lround(repl::barrierLatencyQuantileUs(c.barrierLatencyHist, 0.99));
			/* Prometheus-style: cumulative counts by upper bound in seconds. */
			nlohmann::json buckets = nlohmann::json::object();
			uint64_t cumulative = 0;
			for (size_t i = 0; i < repl::kBarrierBucketsUs.size(); i++) {
				cumulative += c.barrierLatencyHist[i];
				buckets[fmt::format("{}", static_cast<double>(repl::kBarrierBucketsUs[i]) / 1e6)] = cumulative;
			}
			o["barrier_latency"] = { { "buckets", buckets },
						 { "sum_s", static_cast<double>(c.barrierLatencyNsSum) / 1e9 },
						 { "count", completed } };
			o["connections"] = c.connections;
			o["rejected_frames"] = c.rejectedFrames;
			/* Ops the stream could not encode: the peer lacks their changes. The
			 * capture refuses over-long paths before making them, so this stays 0;
			 * non-zero is a divergence, and the log names each. */
			o["refused_ops"] = c.refusedOps;
		}
		if (d->capture) {
			auto cc = d->capture->counters();
			o["write_behind_dropped_bytes"] = cc.writeBehindDropped;
			/* What a durability call waited for the peer once its own flush was
			 * done: the part of replication its caller sees. */
			o["peer_wait_us_avg"] = cc.barriers ? cc.barrierWaitNs / cc.barriers / 1000 : 0;
		}
		uint64_t start = d->resyncStartMs, end = d->resyncEndMs;
		uint64_t done = d->done, total = d->total;
		uint64_t elapsed = (end >= start && end ? end : now) - start;
		double rate = elapsed ? static_cast<double>(done) * 1000.0 / static_cast<double>(elapsed) : 0.0;
		o["resync"] = { { "bytes_done", done },
				{ "bytes_total", total },
				{ "bytes_sent", d->sent.load() },
				{ "bytes_read", d->read.load() },
				{ "by_dirty_logs", d->partial.load() },
				{ "blocks_skipped", d->skipped.load() },
				{ "rounds", d->rounds.load() },
				{ "rate_bytes_per_s", static_cast<uint64_t>(rate) },
				{ "eta_s", rate > 0 && total > done ? static_cast<uint64_t>((total - done) / rate) : 0 },
				{ "running", d->resyncBusy.load() } };
		o["dirty_log"] = logStatus(d->log.get());
		o["dirty_log"]["rotations"] = d->rotations.load();
		dirs.push_back(o);
	}
	for (const auto &d : targets_) {
		nlohmann::json o;
		o["path"] = d->path;
		o["in_sync"] = d->done.load();
		if (d->receiver) {
			auto c = d->receiver->counters();
			o["connected"] = d->receiver->lastCloseReason().empty() && d->streamFd >= 0;
			o["applied_seq"] = d->receiver->lastApplied();
			o["ops"] = c.ops;
			o["bytes"] = c.bytes;
			o["durable_flushes"] = c.durableFlushes;
			o["apply_errors"] = c.applyErrors;
			o["write_behind_dropped_bytes"] = c.writeBehindDropped;
			o["last_close_reason"] = d->receiver->lastCloseReason();
		}
		o["resync"] = { { "bytes_done", d->bytesDone.load() }, { "bytes_total", d->bytesTotal.load() } };
		o["dirty_log"] = logStatus(d->log.get());
		dirs.push_back(o);
	}
	j["dirs"] = dirs;
	return j;
}

} /* namespace */

Result<std::unique_ptr<MirrorReplication>> makeSyncReplication(const SyncReplicationContext &ctx)
{
	if (!ctx.loop || !ctx.cluster || !ctx.self || !ctx.peer || !ctx.module)
		return makeError(-EINVAL, "sync replication needs loop, cluster, self, peer and module");
	if (ctx.module->replication.mode != ReplicationMode::Sync)
		return makeError(-ENOTSUP, "module " + ctx.module->name + ": only replication mode 'sync' is implemented");
	if (ctx.module->replication.dirs.empty())
		return makeError(-EINVAL, "module " + ctx.module->name + " replicates no directory");
	if (ctx.cluster->networks.empty())
		return makeError(-EINVAL, "the cluster has no network for replication");
	const auto &net = ctx.cluster->networks.front();
	auto self = ctx.self->addresses.find(net);
	if (self == ctx.self->addresses.end() || ctx.peer->addresses.find(net) == ctx.peer->addresses.end())
		return makeError(-EINVAL, "both nodes need an address on network " + net + " for replication");
	if (ctx.module->replication.blockSize == 0)
		return makeError(-EINVAL, "replication block size must not be 0");
	auto key = ClusterKey::load(ctx.cluster->keyFile);
	if (!key)
		return key.error();
	return std::unique_ptr<MirrorReplication>(new SyncReplication(ctx, std::move(*key), self->second));
}

} /* namespace sk */
