/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CaptureFs: libfuse3 low-level passthrough over a directory fd opened before the
 * over-mount (modelled on libfuse's passthrough_hp), submitting every mutation
 * that took effect locally to the OpSink, in the order it took effect.
 *
 * Inodes: FUSE node ids are Inode pointers (root = FUSE_ROOT_ID); each Inode
 * holds an O_PATH fd, the kernel's lookup count and its known names (aliases:
 * parent Inode + name), from which the op path is rebuilt. An Inode stays in the
 * table while the kernel references it OR another Inode names it as a parent
 * (a handle-only Inode whose object was replaced under the same inode number
 * leaves the table earlier, see retireLocked()).
 *
 * Open file limit: every Inode costs an fd and the kernel decides how long it
 * keeps inodes referenced (its dentry cache can hold millions). Past half the
 * soft RLIMIT_NOFILE (counted over all mounts of the process) a pruner thread
 * asks the kernel to drop the least recently looked-up entries
 * (fuse_lowlevel_notify_inval_entry, what memory pressure would do); the
 * kernel's FORGETs then close their fds. Files only (invalidating a directory
 * entry detaches mounts below it). readdirplus stops returning attributes (which make
 * inodes) while over the limit. Open files and cwds keep their inodes. A lookup
 * past three quarters of the limit (faster than the pruner) or finding no fd
 * free makes a handle-only Inode: a file handle, opened per request
 * (open_by_handle_at).
 *
 * Lock order: orderMutex_ -> Inode::writeMutex -> tableMutex_.
 *  - orderMutex_ (shared_mutex) makes "apply locally + submit" atomic: namespace
 *    ops, setattr, xattrs and truncating opens hold it exclusively; write and
 *    fallocate hold it shared plus the inode's writeMutex (same-file order);
 *    lookups hold it shared so an alias is never added from a stale lookup.
 *  - Consequence: OpSink::submit() may block for backpressure while these locks
 *    are held, so a full stream stalls every mutation and lookup of this mount
 *    (reads and getattr of known inodes continue). That is the intended
 *    flow control: the app cannot run ahead of the replication stream.
 * Durability waits (waitAcked) never hold a lock.
 *
 * Op conventions: the root itself is named "." (e.g. chmod of the root); a
 * UTIME_NOW is sent as the time actually set (kSetAtime/kSetMtime), so both
 * sides end identical; with the writeback cache the kernel also sends its own
 * time-only Setattrs (mtime) when it flushes. Moving an object between an
 * excluded and a replicated path is sent as a copy (Mkdir/Create/Write...) or a
 * removal of the subtree, since the peer never saw the excluded side.
 *
 * syncfs(2): libfuse 3.14 has no syncfs operation (FUSE_SYNCFS arrived in later
 * libfuse); the kernel flushes dirty pages as FUSE_WRITEs but sends no fsync, so
 * syncfs() on the mount is NOT a replication durability point. Apps must fsync.
 */
#define FUSE_USE_VERSION 312

#include "replication/fuse/capture_fs.h"
#include "core/log.h"
#include "replication/dirty_log.h"
#include "replication/op_codec.h"
#include "replication/write_behind.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <linux/capability.h>
#include <map>
#include <mutex>
#include <optional>
#include <sched.h>
#include <shared_mutex>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <thread>
#include <unordered_map>
#include <unistd.h>

#include <fuse_lowlevel.h>
#include <linux/fuse.h>

namespace sk::repl {

namespace {

LogCategory kLog("capture");

/* Single writer on the primary: the kernel may trust its caches for long. */
constexpr double kCacheTimeout = 60.0;
constexpr unsigned kMaxWrite = 1u << 20;
constexpr long kFuseSuperMagic = 0x65735546;
constexpr long kFusectlSuperMagic = 0x65735543;
constexpr const char *kFusectlDir = "/sys/fs/fuse/connections";
/* Time given to the kernel to flush dirty pages and drop the connection after
 * the lazy unmount before the connection is aborted (apps still holding files). */
constexpr auto kUnmountGrace = std::chrono::seconds(5);
constexpr int kMaxDepth = 4096;

struct Inode;

struct Alias {
	Inode *parent;
	std::string name;
};

/* O_PATH fds held by the Inodes of every CaptureFs in this process. */
std::atomic<uint64_t> gInodeFds{ 0 };

struct Inode {
	explicit Inode(int pathFd) : fd(pathFd) { gInodeFds++; }
	explicit Inode(std::vector<unsigned char> &&fileHandle) : fd(-1), handle(std::move(fileHandle)) {}
	~Inode()
	{
		if (fd >= 0) {
			close(fd);
			gInodeFds--;
		}
	}
	Inode(const Inode &) = delete;
	Inode &operator=(const Inode &) = delete;

	/* O_PATH, owned; -1 for an Inode made while the process had no fd to spare,
	 * which keeps a file handle instead (struct file_handle bytes, see PathFd). */
	const int fd;
	const std::vector<unsigned char> handle;
	dev_t dev = 0;
	ino_t ino = 0;
	bool dir = false;
	uint64_t nlookup = 0;	/* kernel references */
	uint32_t children = 0;	/* aliases in other inodes naming this as parent */
	std::atomic<uint64_t> lastLookup{ 0 };	/* Impl::lookupClock_ at the last lookup */
	uint64_t invalidatedAt = 0;	/* lastLookup when the pruner last asked the kernel to drop it */
	std::vector<Alias> aliases;
	std::mutex writeMutex;
	/* Guarded by writeMutex. The backing cache only duplicates the FUSE cache,
	 * which keeps the application's view (keep_cache). */
	WriteBehind writeBehind;
	/* Its first failed kick since the last fsync, which reports it (no lock). */
	std::atomic<int> kickError{ 0 };
};

/* An Inode's O_PATH fd for the length of one request: its own, or one opened
 * from its file handle (closed at scope exit). */
class PathFd
{
public:
	PathFd(int fd, bool owned) : fd_(fd), owned_(owned) {}
	~PathFd()
	{
		if (owned_ && fd_ >= 0)
			close(fd_);
	}
	PathFd(const PathFd &) = delete;
	PathFd &operator=(const PathFd &) = delete;

	int get() const { return fd_; }
	explicit operator bool() const { return fd_ >= 0; }

private:
	int fd_;
	bool owned_;
};

/*
 * The lookup of parent/name when no fd is left: its file handle (of the same
 * object as the attributes: the handle is taken again after the stat and must
 * not have changed) and attributes. 0 or an errno.
 */
int lookupHandle(int dirFd, const char *name, std::vector<unsigned char> &handle, struct stat *st, int *mountId)
{
	struct Buf {
		file_handle fh;
		unsigned char bytes[MAX_HANDLE_SZ];
	} first, again;
	for (int attempt = 0; attempt < 3; attempt++) {
		int againMount;
		first.fh.handle_bytes = MAX_HANDLE_SZ;
		again.fh.handle_bytes = MAX_HANDLE_SZ;
		if (name_to_handle_at(dirFd, name, &first.fh, mountId, 0) < 0 ||
		    fstatat(dirFd, name, st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    name_to_handle_at(dirFd, name, &again.fh, &againMount, 0) < 0)
			return errno;
		if (againMount != *mountId)
			continue;
		size_t len = sizeof(file_handle) + first.fh.handle_bytes;
		if (first.fh.handle_bytes == again.fh.handle_bytes && first.fh.handle_type == again.fh.handle_type &&
		    std::memcmp(&first, &again, len) == 0) {
			const auto *p = reinterpret_cast<const unsigned char *>(&first);
			handle.assign(p, p + len);
			return 0;
		}
	}
	return EAGAIN;
}

/* The file handle of what fd names, as lookupHandle() stores it, and its mount id;
 * empty if the fs has none. */
std::vector<unsigned char> handleOfFd(int fd, int *mountId = nullptr)
{
	struct Buf {
		file_handle fh;
		unsigned char bytes[MAX_HANDLE_SZ];
	} b;
	b.fh.handle_bytes = MAX_HANDLE_SZ;
	int mount;
	if (name_to_handle_at(fd, "", &b.fh, mountId ? mountId : &mount, AT_EMPTY_PATH) < 0)
		return {};
	const auto *p = reinterpret_cast<const unsigned char *>(&b);
	return std::vector<unsigned char>(p, p + sizeof(file_handle) + b.fh.handle_bytes);
}

/* The fd budget of all Inodes: half the soft open file limit, so the app's own
 * file handles (one backing fd each) and skd keep the rest. */
uint64_t inodeFdBudget()
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 1u << 20;
	return std::max<uint64_t>(rl.rlim_cur / 2, 16);
}

struct FileHandle {
	int fd = -1;
	bool syncWrites = false;	/* O_SYNC / O_DSYNC / O_DIRECT: each direct write is a durability point */
	bool localSync = false;		/* O_SYNC / O_DSYNC on the backing fd: each write is durable here */
};

struct DirHandle {
	DIR *dp = nullptr;
	off_t offset = 0;
	struct dirent *entry = nullptr;
	std::mutex mutex;
};

std::string procPath(int fd)
{
	return "/proc/self/fd/" + std::to_string(fd);
}

/*
 * Request flags libfuse 3.14 does not pass on, taken from the raw request by the
 * session's read hook (ioRead) on the worker thread that then serves it: libfuse
 * reads and dispatches each request on one thread.
 *
 * Kill flags (WRITE's FUSE_WRITE_KILL_SUIDGID, SETATTR's FATTR_KILL_SUIDGID,
 * OPEN's FUSE_OPEN_KILL_SUIDGID): the kernel asks the server to strip suid/sgid
 * for a caller without CAP_FSETID. It does so on direct-I/O writes always (no
 * file_remove_privs on that path: ignoring it let an unprivileged O_DIRECT write
 * keep a setuid file setuid), and on every write, truncate and O_TRUNC open
 * once FUSE_HANDLE_KILLPRIV_V2 is negotiated.
 *
 * FUSE_HANDLE_KILLPRIV_V2 (libfuse 3.14 cannot ask for it: the write hook adds
 * it to the INIT reply when the kernel offers it) lets the kernel cache "no
 * suid/sgid/capability" per inode (S_NOSEC). Without it every write() of the
 * application first costs a GETXATTR security.capability round trip to us.
 * Under it we strip: on flagged writes, truncates and O_TRUNC opens (before the
 * change), on fallocate by a caller other than root (the kernel flags nothing
 * there), and we replicate the mode the backing fs changed by itself (chown as
 * root strips suid; an O_TRUNC create runs as the caller). Capabilities: the
 * backing fs removes security.capability on our writes, on both nodes.
 *
 * Invariant: set only by ioRead (libfuse 3.14 reads and serves a request on one
 * worker thread); the handlers that use it read and clear it at their start.
 */
thread_local bool tKillSuidgid = false;

/* Impl's INIT bookkeeping for the hooks (defined after Impl). */
void noteInitOffer(void *impl, uint64_t unique);
bool takeInitOffer(void *impl, uint64_t unique);

/* The uint32_t at offset `at` of the request body, if the request holds it. */
bool bodyU32(const void *buf, ssize_t n, size_t at, uint32_t *v)
{
	if (n < 0 || static_cast<size_t>(n) < sizeof(fuse_in_header) + at + sizeof(*v))
		return false;
	memcpy(v, static_cast<const char *>(buf) + sizeof(fuse_in_header) + at, sizeof(*v));
	return true;
}

ssize_t ioRead(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);
	int saved = errno;
	tKillSuidgid = false;
	if (n >= static_cast<ssize_t>(sizeof(fuse_in_header))) {
		fuse_in_header h;
		memcpy(&h, buf, sizeof(h));
		uint32_t v = 0;
		switch (h.opcode) {
		case FUSE_WRITE:
			tKillSuidgid = bodyU32(buf, n, offsetof(fuse_write_in, write_flags), &v) &&
				       (v & FUSE_WRITE_KILL_SUIDGID);
			break;
		case FUSE_SETATTR:
			tKillSuidgid = bodyU32(buf, n, offsetof(fuse_setattr_in, valid), &v) && (v & FATTR_KILL_SUIDGID);
			break;
		case FUSE_OPEN:
			tKillSuidgid = bodyU32(buf, n, offsetof(fuse_open_in, open_flags), &v) &&
				       (v & FUSE_OPEN_KILL_SUIDGID);
			break;
		case FUSE_INIT:
			if (bodyU32(buf, n, offsetof(fuse_init_in, flags), &v) && (v & FUSE_HANDLE_KILLPRIV_V2))
				noteInitOffer(userdata, h.unique);
			break;
		default:
			break;
		}
	}
	errno = saved; /* libfuse reads it after the hook */
	return n;
}

ssize_t ioWritev(int fd, struct iovec *iov, int count, void *userdata)
{
	/* The INIT reply: header, then fuse_init_out. */
	fuse_out_header h;
	if (count >= 2 && iov[0].iov_len == sizeof(h) &&
	    iov[1].iov_len >= offsetof(fuse_init_out, flags) + sizeof(uint32_t)) {
		memcpy(&h, iov[0].iov_base, sizeof(h));
		if (h.error == 0 && takeInitOffer(userdata, h.unique)) {
			uint32_t flags;
			char *at = static_cast<char *>(iov[1].iov_base) + offsetof(fuse_init_out, flags);
			memcpy(&flags, at, sizeof(flags));
			flags |= FUSE_HANDLE_KILLPRIV_V2;
			memcpy(at, &flags, sizeof(flags));
		}
	}
	return writev(fd, iov, count);
}

ssize_t ioSpliceSend(int fdIn, off_t *offIn, int fdOut, off_t *offOut, size_t len, unsigned int flags, void *)
{
	return splice(fdIn, offIn, fdOut, offOut, len, flags);
}

/* Whether the request's caller is in group gid (primary or supplementary). */
bool callerInGroup(fuse_req_t req, gid_t gid)
{
	if (fuse_req_ctx(req)->gid == gid)
		return true;
	std::vector<gid_t> groups(64);
	int n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
	if (n > static_cast<int>(groups.size())) {
		groups.resize(static_cast<size_t>(n));
		n = fuse_req_getgroups(req, n, groups.data());
	}
	for (int i = 0; i < n && i < static_cast<int>(groups.size()); i++)
		if (groups[static_cast<size_t>(i)] == gid)
			return true;
	return false;
}

/* Whether the caller holds CAP_FSETID, read from its effective set (it waits in
 * its syscall, so its thread id still names it). Capabilities in another user
 * namespace (a rootless container) are not ours to judge: taken as lacking it,
 * so the bits go (the safe side). A caller our pid namespace cannot see is
 * taken to hold it when root, as most such callers do. */
bool callerHasFsetid(fuse_req_t req)
{
	const fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->pid > 0) {
		std::string proc = "/proc/" + std::to_string(ctx->pid);
		struct stat mine, theirs;
		if (stat("/proc/self/ns/user", &mine) == 0 && stat((proc + "/ns/user").c_str(), &theirs) == 0 &&
		    mine.st_ino != theirs.st_ino)
			return false;
		std::string path = proc + "/status";
		if (FILE *f = fopen(path.c_str(), "re")) {
			char line[256];
			unsigned long long caps = 0;
			bool found = false;
			while (!found && fgets(line, sizeof(line), f))
				found = sscanf(line, "CapEff: %llx", &caps) == 1;
			fclose(f);
			if (found)
				return caps & (1ull << CAP_FSETID);
		}
	}
	return ctx->uid == 0;
}

/* Runs create-like syscalls as the caller so ownership, setgid directories
 * and permission checks on the backing fs match a local call. setfsuid/setfsgid
 * are per thread. */
class FsIdGuard
{
public:
	explicit FsIdGuard(fuse_req_t req)
	{
		const fuse_ctx *ctx = fuse_req_ctx(req);
		oldGid_ = setfsgid(ctx->gid);
		oldUid_ = setfsuid(ctx->uid);
	}
	~FsIdGuard()
	{
		setfsuid(oldUid_);
		setfsgid(oldGid_);
	}

private:
	int oldUid_;
	int oldGid_;
};

/* The kernel already applied the caller's umask (no FUSE_CAP_DONT_MASK): give
 * each worker thread a private fs context with umask 0 so skd's own umask does
 * not strip the mode a second time. */
void ensureThreadUmask()
{
	thread_local bool done = false;
	if (done)
		return;
	done = true;
	if (unshare(CLONE_FS) < 0) {
		logWarn(kLog, "unshare(CLONE_FS) failed: {}; modes may be masked twice", strerror(errno));
		return;
	}
	umask(0);
}

bool matchesAnyPrefix(const std::vector<std::string> &patterns, const std::string &path)
{
	if (patterns.empty())
		return false;
	for (size_t pos = 0;;) {
		size_t slash = path.find('/', pos);
		std::string prefix = slash == std::string::npos ? path : path.substr(0, slash);
		for (const std::string &p : patterns)
			if (fnmatch(p.c_str(), prefix.c_str(), 0) == 0)
				return true;
		if (slash == std::string::npos)
			return false;
		pos = slash + 1;
	}
}

} /* namespace */

bool captureExcluded(const std::vector<std::string> &exclude,
		     const std::vector<std::string> &include, const std::string &relPath)
{
	if (exclude.empty() || relPath.empty() || relPath == ".")
		return false;
	return matchesAnyPrefix(exclude, relPath) && !matchesAnyPrefix(include, relPath);
}

class CaptureFs::Impl
{
public:
	explicit Impl(const CaptureOptions &options) : options_(options) {}
	~Impl();

	Status start();
	Status stop();

	CaptureOptions options_;
	Inode *root_ = nullptr;
	std::map<std::pair<dev_t, ino_t>, std::unique_ptr<Inode>> inodes_;
	/* Out of inodes_ (another object has their number now), alive while the kernel
	 * still references them: see retireLocked(). */
	std::unordered_map<Inode *, std::unique_ptr<Inode>> retired_;
	std::mutex tableMutex_;
	std::shared_mutex orderMutex_;

	fuse_session *se_ = nullptr;
	std::thread loop_;
	std::mutex loopMutex_;
	std::condition_variable loopCv_;
	bool loopDone_ = false;
	dev_t connDev_ = 0;
	bool mounted_ = false;

	std::array<std::atomic<uint64_t>, 16> opsByType_{};
	std::atomic<uint64_t> barriers_{ 0 };
	std::atomic<uint64_t> barrierWaitNs_{ 0 };
	std::atomic<uint64_t> barrierFailures_{ 0 };
	std::atomic<uint64_t> skipped_{ 0 };
	std::atomic<uint64_t> writeBehindDropped_{ 0 };
	std::atomic<uint64_t> getxattrs_{ 0 };
	std::atomic<uint64_t> flushes_{ 0 };
	/* The kernel's INIT offered FUSE_HANDLE_KILLPRIV_V2 (its request's unique, 0:
	 * none pending), and whether our reply took it. */
	std::atomic<uint64_t> initOfferUnique_{ 0 };
	std::atomic<bool> killprivV2_{ false };

	/* --- fd pruning (see the top of this file) --- */
	std::atomic<uint64_t> lookupClock_{ 0 };
	std::atomic<uint64_t> pruned_{ 0 };
	uint64_t fdBudget_ = 0;		/* prune above this */
	uint64_t fdCap_ = 0;		/* handle-only Inodes above this */
	int mountFd_ = -1;		/* the backing fs, for open_by_handle_at (which refuses O_PATH) */
	int rootMountId_ = -1;		/* its mount id; -1: no file handles there */
	std::thread pruner_;
	std::mutex prunerMutex_;
	std::condition_variable prunerCv_;
	bool prunerStop_ = false;
	bool overBudget() const { return gInodeFds.load(std::memory_order_relaxed) > fdBudget_; }
	std::atomic<uint64_t> handleOnly_{ 0 };
	PathFd pathFd(Inode *inode)
	{
		if (inode->fd >= 0)
			return PathFd(inode->fd, false);
		/* Needs CAP_DAC_READ_SEARCH, which skd has as root. */
		auto *fh = reinterpret_cast<file_handle *>(const_cast<unsigned char *>(inode->handle.data()));
		return PathFd(open_by_handle_at(mountFd_, fh, O_PATH | O_CLOEXEC), true);
	}
	PathFd pathFd(fuse_ino_t ino) { return pathFd(inodeOf(ino)); }
	/*
	 * A handle-only Inode holds no fd, so its object can be deleted and its inode
	 * number given to a new one while the kernel still references the Inode (its
	 * FORGET comes later). The handles tell them apart (they carry a generation):
	 * true when handle (of the object just looked up; empty: unknown) differs.
	 */
	static bool replacedLocked(const Inode *inode, const std::vector<unsigned char> &handle)
	{
		return inode->fd < 0 && !inode->handle.empty() && !handle.empty() && inode->handle != handle;
	}
	void retireLocked(Inode *inode);
	void wakePruner()
	{
		std::lock_guard lock(prunerMutex_);
		prunerCv_.notify_one();
	}
	void prunerLoop();
	size_t pruneOnce();

	/* --- inode table --- */
	Inode *inodeOf(fuse_ino_t ino)
	{
		return ino == FUSE_ROOT_ID ? root_ : reinterpret_cast<Inode *>(ino);
	}
	fuse_ino_t idOf(Inode *inode)
	{
		return inode == root_ ? FUSE_ROOT_ID : reinterpret_cast<fuse_ino_t>(inode);
	}
	Inode *findLocked(dev_t dev, ino_t ino)
	{
		auto it = inodes_.find({ dev, ino });
		return it == inodes_.end() ? nullptr : it->second.get();
	}
	/* Takes a new Inode of the object st describes into the table. */
	Inode *insertLocked(std::unique_ptr<Inode> owned, const struct stat &st)
	{
		owned->dev = st.st_dev;
		owned->ino = st.st_ino;
		owned->dir = S_ISDIR(st.st_mode);
		Inode *inode = owned.get();
		inodes_[{ inode->dev, inode->ino }] = std::move(owned);
		return inode;
	}
	void addAliasLocked(Inode *inode, Inode *parent, const std::string &name);
	void removeAliasLocked(Inode *inode, Inode *parent, const std::string &name);
	void maybeEraseLocked(Inode *inode);
	void dropAliasesLocked(Inode *inode);
	void forgetOne(fuse_ino_t ino, uint64_t n);
	void recoverAlias(Inode *inode);
	bool findName(int dirFd, dev_t dev, ino_t ino, std::vector<std::string> &path, uint64_t &budget);
	int doLookup(Inode *parent, const char *name, fuse_entry_param *e);
	std::optional<std::string> pathLocked(Inode *inode);
	std::optional<std::string> pathOf(Inode *inode)
	{
		std::lock_guard lock(tableMutex_);
		return pathLocked(inode);
	}
	std::optional<std::string> childPath(Inode *parent, const char *name)
	{
		auto p = pathOf(parent);
		if (!p)
			return std::nullopt;
		return *p == "." ? std::string(name) : *p + "/" + name;
	}

	/* --- op emission (caller holds orderMutex_) --- */
	bool capturing() const { return options_.sink != nullptr; }
	/* Before a local data change: the dirty log record (durable), and its Guard. */
	DirtyLog::Guard recordWrite(Inode *inode, uint64_t offset, uint64_t length, int fd)
	{
		DirtyLog *log = options_.dirtyLog;
		if (!log || options_.readOnly)
			return {};
		DirtyLog::Guard g = log->guard();
		log->mark(inode->ino, offset, length, fd);
		return g;
	}
	bool excluded(const std::string &path) const
	{
		return captureExcluded(options_.exclude, options_.include, path);
	}
	/* A replicated path longer than any op carries (kMaxOpPath): a change there
	 * is refused with ENAMETOOLONG before it is made, or the peer would lack it. */
	bool overlong(const std::optional<std::string> &path) const
	{
		return capturing() && path && path->size() > kMaxOpPath && !excluded(*path);
	}
	/* Before changing inode (under orderMutex_ for the path to hold): *path =
	 * its path when capturing, for the op; ENAMETOOLONG when no op could carry
	 * it, else 0. */
	int changePath(Inode *inode, std::optional<std::string> *path)
	{
		if (capturing())
			*path = pathOf(inode);
		return overlong(*path) ? ENAMETOOLONG : 0;
	}
	void submitRaw(Op &&op);
	/* A Write with its bytes in the FUSE request buffer (see OpSink::submitWrite). */
	void submitRawWrite(Op &&op, std::string_view data);
	void submit(Op &&op);
	void emitTree(int dirFd, const std::string &name, const std::string &peerPath, int depth);
	void emitRemoveTree(int dirFd, const std::string &name, const std::string &peerPath, int depth);
	/* Whether every replicated path of the tree dirFd/name, placed at peerPath,
	 * fits in an op (see overlong): checked before a move that emits the tree. */
	bool treeFits(int dirFd, const std::string &name, const std::string &peerPath, int depth);
	/*
	 * Barrier + wait for the peer, overlapped with local(fd). While the sink acks
	 * locally (resync) the local flush is the only durability there is: with no
	 * local function, fd (if any) is then fdatasync'ed.
	 */
	int durabilityPoint(bool durable, int (*local)(int), int fd);
	void fillEntryTimeouts(fuse_entry_param *e) const
	{
		double t = options_.readOnly ? 0.0 : kCacheTimeout;
		e->attr_timeout = t;
		e->entry_timeout = t;
	}
	double attrTimeout() const { return options_.readOnly ? 0.0 : kCacheTimeout; }
};

namespace {

void noteInitOffer(void *impl, uint64_t unique)
{
	static_cast<CaptureFs::Impl *>(impl)->initOfferUnique_ = unique;
}

bool takeInitOffer(void *impl, uint64_t unique)
{
	auto *fs = static_cast<CaptureFs::Impl *>(impl);
	uint64_t expected = unique;
	if (unique == 0 || !fs->initOfferUnique_.compare_exchange_strong(expected, 0))
		return false;
	fs->killprivV2_ = true;
	return true;
}

} /* namespace */

/* ------------------------------------------------------------------ table */

void CaptureFs::Impl::addAliasLocked(Inode *inode, Inode *parent, const std::string &name)
{
	for (const Alias &a : inode->aliases)
		if (a.parent == parent && a.name == name)
			return;
	inode->aliases.push_back({ parent, name });
	parent->children++;
}

void CaptureFs::Impl::removeAliasLocked(Inode *inode, Inode *parent, const std::string &name)
{
	for (auto it = inode->aliases.begin(); it != inode->aliases.end(); ++it) {
		if (it->parent == parent && it->name == name) {
			inode->aliases.erase(it);
			parent->children--;
			maybeEraseLocked(parent);
			return;
		}
	}
}

void CaptureFs::Impl::maybeEraseLocked(Inode *inode)
{
	if (inode == root_ || inode->nlookup > 0 || inode->children > 0)
		return;
	std::unique_ptr<Inode> owned;
	auto it = inodes_.find({ inode->dev, inode->ino });
	if (it != inodes_.end() && it->second.get() == inode) {
		owned = std::move(it->second);
		inodes_.erase(it);
	} else if (auto r = retired_.find(inode); r != retired_.end()) {
		owned = std::move(r->second);
		retired_.erase(r);
	} else {
		return;
	}
	dropAliasesLocked(owned.get());
}

/* Forgets inode's names; parents no other name keeps go too. */
void CaptureFs::Impl::dropAliasesLocked(Inode *inode)
{
	std::vector<Alias> aliases = std::move(inode->aliases);
	for (Alias &a : aliases) {
		a.parent->children--;
		maybeEraseLocked(a.parent);
	}
}

/* A replaced Inode (replacedLocked) leaves the table: its number and its names belong
 * to the new object. Requests the kernel still sends for it fail with ESTALE. */
void CaptureFs::Impl::retireLocked(Inode *inode)
{
	auto it = inodes_.find({ inode->dev, inode->ino });
	if (it == inodes_.end() || it->second.get() != inode)
		return;
	retired_[inode] = std::move(it->second);
	inodes_.erase(it);
	dropAliasesLocked(inode);
	maybeEraseLocked(inode);
}

void CaptureFs::Impl::forgetOne(fuse_ino_t ino, uint64_t n)
{
	Inode *inode = inodeOf(ino);
	std::lock_guard lock(tableMutex_);
	if (inode == root_)
		return;
	inode->nlookup = n > inode->nlookup ? 0 : inode->nlookup - n;
	maybeEraseLocked(inode);
}

int CaptureFs::Impl::doLookup(Inode *parent, const char *name, fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	fillEntryTimeouts(e);
	PathFd parentFd = pathFd(parent);
	if (!parentFd)
		return errno;
	std::vector<unsigned char> handle;
	/* Past the cap (lookups faster than the pruner) an Inode costs no fd: the
	 * rest of the limit stays for the files the app opens. */
	bool capped = gInodeFds.load(std::memory_order_relaxed) >= fdCap_;
	int fd = capped ? -1 : openat(parentFd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && !capped && errno != EMFILE && errno != ENFILE)
		return errno;
	if (fd < 0) {
		/* A handle-only Inode, on the root's fs; where the fs has no handles,
		 * an fd after all. */
		wakePruner();
		/* Same mount as the root (not only the same fs: a bind mount below may be
		 * read-only), since open_by_handle_at goes through the root's mount. */
		int mountId = -1;
		int err = rootMountId_ < 0 ? EOPNOTSUPP
					   : lookupHandle(parentFd.get(), name, handle, &e->attr, &mountId);
		if (!err && mountId != rootMountId_)
			err = EXDEV;
		if (err && err != EOPNOTSUPP && err != EXDEV && err != EAGAIN && err != EOVERFLOW)
			return err;
		if (err) {
			handle.clear();
			fd = openat(parentFd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0)
				return errno;
		}
	}
	if (fd >= 0 && fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		int err = errno;
		close(fd);
		return err;
	}
	bool added = false;
	{
		std::unique_lock lock(tableMutex_);
		Inode *inode = findLocked(e->attr.st_dev, e->attr.st_ino);
		if (inode && inode->fd < 0 && handle.empty() && fd >= 0) {
			/* Found handle-only while we hold an fd: the handle of what the fd names
			 * (no fd needed, and not under the table lock). */
			lock.unlock();
			handle = handleOfFd(fd);
			lock.lock();
			inode = findLocked(e->attr.st_dev, e->attr.st_ino);
		}
		if (inode && replacedLocked(inode, handle)) {
			retireLocked(inode);
			inode = nullptr;
		}
		if (inode) {
			if (fd >= 0)
				close(fd);
		} else {
			handleOnly_ += fd < 0;
			inode = insertLocked(fd >= 0 ? std::make_unique<Inode>(fd) : std::make_unique<Inode>(std::move(handle)),
					     e->attr);
			added = true;
		}
		inode->nlookup++;
		inode->lastLookup.store(++lookupClock_, std::memory_order_relaxed);
		if (std::strcmp(name, ".") != 0 && std::strcmp(name, "..") != 0)
			addAliasLocked(inode, parent, name);
		e->ino = idOf(inode);
	}
	if (added && overBudget())
		wakePruner();
	return 0;
}

/*
 * Picks this mount's share of the excess (least recently looked up files that
 * nothing else in the table names) and asks the kernel to drop their dentries. Never from a request thread: the kernel takes
 * the parent directory's lock, which a request under way may hold.
 */
size_t CaptureFs::Impl::pruneOnce()
{
	uint64_t total = gInodeFds.load();
	uint64_t low = fdBudget_ - fdBudget_ / 4;
	if (total <= fdBudget_)
		return 0;
	struct Candidate {
		fuse_ino_t parent;
		std::string name;
	};
	std::vector<Candidate> picked;
	{
		std::lock_guard lock(tableMutex_);
		uint64_t mine = inodes_.size();
		/* This mount's share of the excess, rounded up. */
		uint64_t want = (mine * (total - low) + total - 1) / total;
		/*
		 * Non-directories only: invalidating a directory entry detaches mounts below
		 * it (d_invalidate), which memory pressure never does. Entries asked for
		 * before and not looked up since are skipped: the kernel keeps those it
		 * cannot drop (open files, cwds), and asking again would pick them for ever.
		 */
		std::vector<Inode *> all;
		all.reserve(mine);
		for (auto &[key, inode] : inodes_) {
			uint64_t last = inode->lastLookup.load(std::memory_order_relaxed);
			if (inode.get() == root_ || inode->dir || inode->fd < 0 || inode->nlookup == 0 ||
			    inode->children > 0 || inode->aliases.empty() || inode->invalidatedAt == last)
				continue;
			all.push_back(inode.get());
		}
		want = std::min<uint64_t>(want, all.size());
		std::nth_element(all.begin(), all.begin() + want, all.end(), [](const Inode *a, const Inode *b) {
			return a->lastLookup.load(std::memory_order_relaxed) < b->lastLookup.load(std::memory_order_relaxed);
		});
		for (size_t i = 0; i < want; i++) {
			Inode *inode = all[i];
			inode->invalidatedAt = inode->lastLookup.load(std::memory_order_relaxed);
			for (const Alias &a : inode->aliases)
				picked.push_back({ idOf(a.parent), a.name });
		}
	}
	size_t sent = 0;
	for (const Candidate &c : picked) {
		int r = fuse_lowlevel_notify_inval_entry(se_, c.parent, c.name.c_str(), c.name.size());
		if (r == 0)
			sent++;
		else if (r != -ENOENT)
			logDebug(kLog, "{}: invalidate entry {}: {}", options_.mountpoint, c.name, strerror(-r));
	}
	pruned_ += sent;
	return sent;
}

void CaptureFs::Impl::prunerLoop()
{
	bool warned = false;
	std::unique_lock lock(prunerMutex_);
	while (!prunerStop_) {
		prunerCv_.wait_for(lock, std::chrono::seconds(1), [this] { return prunerStop_ || overBudget(); });
		if (prunerStop_)
			break;
		if (!overBudget())
			continue;
		lock.unlock();
		uint64_t cached = gInodeFds.load();
		size_t sent = pruneOnce();
		if (!warned && sent) {
			logInfo(kLog, "{}: {} cached files over the fd budget of {}: asking the kernel to drop "
				"the least recently used", options_.mountpoint, cached, fdBudget_);
			warned = true;
		}
		/* Let the kernel's FORGETs arrive before counting again. */
		std::this_thread::sleep_for(std::chrono::milliseconds(sent ? 2 : 100));
		lock.lock();
	}
}

std::optional<std::string> CaptureFs::Impl::pathLocked(Inode *inode)
{
	if (inode == root_)
		return std::string(".");
	std::vector<const std::string *> parts;
	for (Inode *cur = inode; cur != root_; cur = cur->aliases.front().parent) {
		if (cur->aliases.empty() || parts.size() > kMaxDepth)
			return std::nullopt;
		parts.push_back(&cur->aliases.front().name);
	}
	std::string path;
	for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
		if (!path.empty())
			path += '/';
		path += **it;
	}
	return path;
}

/*
 * A hard-linked file lost the only name we knew while other names remain (they
 * predate the mount and were never looked up): find one by walking the tree so
 * its later writes still name a path. Rare, hence a plain bounded walk. Caller
 * holds orderMutex_ exclusively (the tree cannot change under the walk).
 */
void CaptureFs::Impl::recoverAlias(Inode *inode)
{
	struct stat st;
	PathFd inodeFd = pathFd(inode);
	if (!inodeFd || fstatat(inodeFd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 || st.st_nlink == 0 ||
	    S_ISDIR(st.st_mode))
		return;
	{
		std::lock_guard lock(tableMutex_);
		if (!inode->aliases.empty())
			return;
	}
	std::vector<std::string> path;
	uint64_t budget = 1'000'000;
	if (!findName(root_->fd, inode->dev, inode->ino, path, budget) || path.empty()) {
		logWarn(kLog, "{}: no name found for inode {} (nlink {}): its writes will not replicate",
			options_.mountpoint, static_cast<uint64_t>(inode->ino), static_cast<uint64_t>(st.st_nlink));
		return;
	}
	std::lock_guard lock(tableMutex_);
	Inode *cur = root_;
	for (size_t i = 0; i + 1 < path.size(); i++) {
		PathFd curFd = pathFd(cur);
		int fd = curFd ? openat(curFd.get(), path[i].c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC) : -1;
		struct stat dst;
		if (fd < 0 || fstat(fd, &dst) < 0) {
			if (fd >= 0)
				close(fd);
			return;
		}
		Inode *dir = findLocked(dst.st_dev, dst.st_ino);
		if (dir) {
			close(fd);
		} else {
			/* nlookup 0: kept alive only by the child alias below. */
			dir = insertLocked(std::make_unique<Inode>(fd), dst);
		}
		addAliasLocked(dir, cur, path[i]);
		cur = dir;
	}
	addAliasLocked(inode, cur, path.back());
}

bool CaptureFs::Impl::findName(int dirFd, dev_t dev, ino_t ino, std::vector<std::string> &path, uint64_t &budget)
{
	int fd = openat(dirFd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dp = fd >= 0 ? fdopendir(fd) : nullptr;
	if (!dp) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	std::vector<std::string> subdirs;
	bool found = false;
	while (struct dirent *ent = readdir(dp)) {
		if (budget-- == 0)
			break;
		if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
			continue;
		struct stat st;
		bool isDir = ent->d_type == DT_DIR;
		if (ent->d_type == DT_UNKNOWN && fstatat(dirfd(dp), ent->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			isDir = S_ISDIR(st.st_mode);
		if (isDir) {
			subdirs.push_back(ent->d_name);
			continue;
		}
		if (ent->d_ino == ino && fstatat(dirfd(dp), ent->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_dev == dev && st.st_ino == ino) {
			path.push_back(ent->d_name);
			found = true;
			break;
		}
	}
	for (size_t i = 0; !found && i < subdirs.size() && budget > 0 && path.size() < kMaxDepth; i++) {
		int sub = openat(dirfd(dp), subdirs[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			continue;
		path.push_back(subdirs[i]);
		found = findName(sub, dev, ino, path, budget);
		if (!found)
			path.pop_back();
		close(sub);
	}
	closedir(dp);
	if (found && path.size() > 0)
		return true;
	return false;
}

/* ------------------------------------------------------------------ ops */

void CaptureFs::Impl::submitRaw(Op &&op)
{
	op.dir = options_.dirIndex;
	opsByType_[static_cast<uint8_t>(op.type) & 15]++;
	options_.sink->submit(std::move(op));
}

void CaptureFs::Impl::submitRawWrite(Op &&op, std::string_view data)
{
	op.dir = options_.dirIndex;
	opsByType_[static_cast<uint8_t>(op.type) & 15]++;
	options_.sink->submitWrite(std::move(op), data);
}

void CaptureFs::Impl::submit(Op &&op)
{
	if (!capturing())
		return;
	if (excluded(op.path) || (!op.path2.empty() && excluded(op.path2))) {
		skipped_++;
		return;
	}
	submitRaw(std::move(op));
}

/* fn(dirfd, child name, child's path at the peer) for each replicated entry of
 * the directory dirFd/name; false when it cannot be read. */
template<typename F>
bool forEachChild(const CaptureFs::Impl *fs, int dirFd, const std::string &name, const std::string &peerPath, F fn)
{
	int fd = openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *dp = fd >= 0 ? fdopendir(fd) : nullptr;
	if (!dp) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	while (struct dirent *ent = readdir(dp)) {
		std::string child = ent->d_name;
		if (child == "." || child == "..")
			continue;
		std::string childPeer = peerPath + "/" + child;
		if (!fs->excluded(childPeer) && !fn(dirfd(dp), child, childPeer))
			break;
	}
	closedir(dp);
	return true;
}

bool CaptureFs::Impl::treeFits(int dirFd, const std::string &name, const std::string &peerPath, int depth)
{
	if (peerPath.size() > kMaxOpPath)
		return false;
	struct stat st;
	if (depth > kMaxDepth || fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
		return true;
	bool fits = true;
	forEachChild(this, dirFd, name, peerPath, [&](int fd, const std::string &child, const std::string &childPeer) {
		fits = treeFits(fd, child, childPeer, depth + 1);
		return fits;
	});
	return fits;
}

/* Ops recreating on the peer, at peerPath, what is now dirFd/name locally: used
 * when an object moves from an excluded path into a replicated one. */
void CaptureFs::Impl::emitTree(int dirFd, const std::string &name, const std::string &peerPath, int depth)
{
	struct stat st;
	if (depth > kMaxDepth || fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
		return;
	Op op;
	op.path = peerPath;
	op.uid = st.st_uid;
	op.gid = st.st_gid;
	if (S_ISDIR(st.st_mode)) {
		op.type = OpType::Mkdir;
		op.mode = st.st_mode & 07777;
		submitRaw(std::move(op));
		forEachChild(this, dirFd, name, peerPath, [&](int fd, const std::string &child, const std::string &childPeer) {
			emitTree(fd, child, childPeer, depth + 1);
			return true;
		});
	} else if (S_ISREG(st.st_mode)) {
		op.type = OpType::Create;
		op.mode = st.st_mode & 07777;
		submitRaw(std::move(op));
		int fd = openat(dirFd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return;
		std::string buf(kMaxWrite, '\0');
		for (uint64_t off = 0;;) {
			ssize_t n = pread(fd, buf.data(), buf.size(), off);
			if (n <= 0)
				break;
			Op w;
			w.type = OpType::Write;
			w.path = peerPath;
			w.offset = off;
			w.data.assign(buf.data(), n);
			submitRaw(std::move(w));
			off += n;
		}
		close(fd);
		Op s;
		s.type = OpType::Setattr;
		s.path = peerPath;
		s.valid = kSetSize;
		s.size = st.st_size;
		submitRaw(std::move(s));
	} else if (S_ISLNK(st.st_mode)) {
		std::string target(PATH_MAX, '\0');
		ssize_t n = readlinkat(dirFd, name.c_str(), target.data(), target.size());
		if (n < 0)
			return;
		target.resize(n);
		op.type = OpType::Symlink;
		op.target = std::move(target);
		submitRaw(std::move(op));
	} else {
		op.type = OpType::Mknod;
		op.mode = st.st_mode;
		op.rdev = st.st_rdev;
		submitRaw(std::move(op));
	}
}

/* Ops removing from the peer, at peerPath, the tree that is now dirFd/name
 * locally (it moved to an excluded path). */
void CaptureFs::Impl::emitRemoveTree(int dirFd, const std::string &name, const std::string &peerPath, int depth)
{
	struct stat st;
	if (depth > kMaxDepth || fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
		return;
	Op op;
	op.path = peerPath;
	if (S_ISDIR(st.st_mode)) {
		forEachChild(this, dirFd, name, peerPath, [&](int fd, const std::string &child, const std::string &childPeer) {
			emitRemoveTree(fd, child, childPeer, depth + 1);
			return true;
		});
		op.type = OpType::Rmdir;
	} else {
		op.type = OpType::Unlink;
	}
	submitRaw(std::move(op));
}

int CaptureFs::Impl::durabilityPoint(bool durable, int (*local)(int), int fd)
{
	if (!local && fd >= 0 && options_.sink->acksLocal())
		local = fdatasync;
	/*
	 * Whichever side is slower starts first. With ack = applied the local flush
	 * is: the disk starts on the data (the kick) while the barrier is handed to
	 * the stream's writer, which takes this CPU a while on small machines, and
	 * the flush then mostly waits for it and the journal. With ack = durable the
	 * peer's flush comes after a round trip: the barrier goes first. The kick
	 * does not consume a recorded writeback error (local() still reports it); an
	 * error it returns itself is this durability point's (see kickWriteback).
	 * Measured on the bench VM (4 KiB append+fsync, over bare, median of 6 runs):
	 * applied 144 us with the kick after the barrier, 130 before it; durable 254
	 * after, 262 without a kick.
	 */
	bool peerFlushes = durable && options_.ackDurable;
	bool kick = local && fd >= 0;
	int err = 0;
	if (kick && !peerFlushes)
		err = kickWriteback(fd, 0, 0);
	uint64_t seq = options_.sink->submitBarrier(peerFlushes);
	if (kick && peerFlushes)
		err = kickWriteback(fd, 0, 0);
	barriers_++;
	if (local && local(fd) < 0 && !err)
		err = errno;
	auto t0 = std::chrono::steady_clock::now();
	int ret = options_.sink->waitAcked(seq);
	barrierWaitNs_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
		std::chrono::steady_clock::now() - t0).count();
	if (err)
		return err;
	if (ret < 0) {
		barrierFailures_++;
		logWarn(kLog, "{}: peer could not acknowledge barrier {}: {}", options_.mountpoint, seq,
			strerror(-ret));
		return EIO;
	}
	return 0;
}

/* ------------------------------------------------------------------ handlers */

namespace {

using Impl = CaptureFs::Impl;

Impl *self(fuse_req_t req)
{
	return static_cast<Impl *>(fuse_req_userdata(req));
}

FileHandle *fhOf(fuse_file_info *fi)
{
	return reinterpret_cast<FileHandle *>(fi->fh);
}

DirHandle *dhOf(fuse_file_info *fi)
{
	return reinterpret_cast<DirHandle *>(fi->fh);
}

void opInit(void *userdata, fuse_conn_info *conn)
{
	Impl *fs = static_cast<Impl *>(userdata);
	/* Not v1: it would make us strip on every write, chown and truncate. v2 is
	 * added to the INIT reply by ioWritev (see tKillSuidgid for who strips what). */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	if (fs->options_.writebackCache && !fs->options_.readOnly && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	else
		conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* Replies may splice from the backing file; requests are read into memory
	 * because each write's bytes go into an op anyway. */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | (conn->capable & FUSE_CAP_SPLICE_MOVE);
	conn->want &= ~FUSE_CAP_SPLICE_READ;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* The SECOND's tree changes underneath us (the applier): revalidate. */
	if (fs->options_.readOnly && (conn->capable & FUSE_CAP_AUTO_INVAL_DATA))
		conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
	conn->max_write = kMaxWrite;
}

void opLookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	Impl *fs = self(req);
	fuse_entry_param e;
	int err;
	{
		std::shared_lock order(fs->orderMutex_);
		err = fs->doLookup(fs->inodeOf(parent), name, &e);
	}
	if (err == ENOENT) {
		/* Negative entry: cached like positive ones. */
		e.ino = 0;
		fuse_reply_entry(req, &e);
	} else if (err) {
		fuse_reply_err(req, err);
	} else {
		fuse_reply_entry(req, &e);
	}
}

void opForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	self(req)->forgetOne(ino, nlookup);
	fuse_reply_none(req);
}

void opForgetMulti(fuse_req_t req, size_t count, fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		self(req)->forgetOne(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

void opGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info *)
{
	Impl *fs = self(req);
	struct stat st;
	PathFd inodeFd = fs->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	if (fstatat(inodeFd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_attr(req, &st, fs->attrTimeout());
}

/* A Setattr of inode's mode (kSetMode) or its truncation to 0 (kSetSize). */
void submitAttr(Impl *fs, Inode *inode, uint32_t valid, mode_t mode = 0)
{
	if (!fs->capturing())
		return;
	auto path = fs->pathOf(inode);
	if (!path) {
		fs->skipped_++;
		return;
	}
	Op op;
	op.type = OpType::Setattr;
	op.path = std::move(*path);
	op.valid = valid;
	op.mode = mode;
	op.size = 0;
	fs->submit(std::move(op));
}

void submitTruncate(Impl *fs, Inode *inode)
{
	submitAttr(fs, inode, kSetSize);
}

/*
 * The mode left once suid/sgid are stripped as the kernel strips them for a
 * caller without CAP_FSETID (see tKillSuidgid): suid always; sgid when
 * group-executable or the caller is not in the file's group.
 */
mode_t strippedMode(fuse_req_t req, const struct stat &st)
{
	mode_t mode = st.st_mode & 07777 & ~S_ISUID;
	if ((st.st_mode & S_ISGID) && ((st.st_mode & S_IXGRP) || !callerInGroup(req, st.st_gid)))
		mode &= ~S_ISGID;
	return mode;
}

/* Strips fd's file (see strippedMode) and replicates the mode change, before
 * the write or truncate that asked for it. 0 or an errno (the request must then
 * fail: never write with the bits left). */
int killSuidgid(Impl *fs, fuse_req_t req, Inode *inode, int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return errno;
	mode_t mode = strippedMode(req, st);
	if (mode == (st.st_mode & 07777))
		return 0;
	if (fchmod(fd, mode) < 0)
		return errno;
	/* The reply to a write or an open carries no attributes: have the kernel
	 * fetch the new mode (attributes only: takes no inode lock). */
	fuse_lowlevel_notify_inval_inode(fs->se_, fs->idOf(inode), -1, 0);
	submitAttr(fs, inode, kSetMode, mode);
	return 0;
}

void opSetattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid, fuse_file_info *fi)
{
	Impl *fs = self(req);
	bool kill = std::exchange(tKillSuidgid, false);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *inode = fs->inodeOf(ino);
	PathFd inodeFd = fs->pathFd(inode);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	int fd = fi ? fhOf(fi)->fd : -1;
	std::string proc = procPath(inodeFd.get());
	DirtyLog::Guard logged;
	if (valid & FUSE_SET_ATTR_SIZE) {
		/* Extending exposes zeros between the sizes; shrinking cuts the block at
		 * the new size: both ranges may differ from the peer afterwards. */
		struct stat before;
		uint64_t size = static_cast<uint64_t>(attr->st_size), from = size, to = size + 1;
		if (fstatat(inodeFd.get(), "", &before, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0) {
			uint64_t old = static_cast<uint64_t>(before.st_size);
			from = std::min(size, old);
			to = std::max(size + 1, old);
		}
		logged = fs->recordWrite(inode, from, to - from, -1);
	}
	std::unique_lock order(fs->orderMutex_);
	std::optional<std::string> path;
	if (int err = fs->changePath(inode, &path))
		return (void)fuse_reply_err(req, err);
	Op op;
	op.type = OpType::Setattr;
	int err = 0;
	/* The mode before, to replicate what a chown or a flagged truncate changes in
	 * it implicitly (the backing fs strips suid/sgid on chown by itself). Not for
	 * the times-only setattr the kernel sends at every fsync. */
	struct stat pre;
	bool havePre = !(valid & FUSE_SET_ATTR_MODE) &&
		       (kill || (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) &&
		       fstatat(inodeFd.get(), "", &pre, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0;
	if (kill && (valid & FUSE_SET_ATTR_SIZE) && !(valid & FUSE_SET_ATTR_MODE)) {
		/* FATTR_KILL_SUIDGID with a truncate (see tKillSuidgid): strip first, as
		 * the VFS does, and never truncate with the bits left. */
		if (!havePre)
			return (void)fuse_reply_err(req, errno ? errno : EIO);
		mode_t mode = strippedMode(req, pre);
		if (S_ISREG(pre.st_mode) && mode != (pre.st_mode & 07777) &&
		    (fd >= 0 ? fchmod(fd, mode) : chmod(proc.c_str(), mode)) < 0)
			return (void)fuse_reply_err(req, errno);
	}
	if (valid & FUSE_SET_ATTR_MODE) {
		int r = fd >= 0 ? fchmod(fd, attr->st_mode) : chmod(proc.c_str(), attr->st_mode);
		if (r < 0)
			err = errno;
		else {
			op.valid |= kSetMode;
			op.mode = attr->st_mode & 07777;
		}
	}
	if (!err && (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : static_cast<uid_t>(-1);
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : static_cast<gid_t>(-1);
		if (fchownat(inodeFd.get(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			err = errno;
		else {
			if (valid & FUSE_SET_ATTR_UID) {
				op.valid |= kSetUid;
				op.uid = uid;
			}
			if (valid & FUSE_SET_ATTR_GID) {
				op.valid |= kSetGid;
				op.gid = gid;
			}
		}
	}
	if (!err && (valid & FUSE_SET_ATTR_SIZE)) {
		int r = fd >= 0 ? ftruncate(fd, attr->st_size) : truncate(proc.c_str(), attr->st_size);
		if (r < 0)
			err = errno;
		else {
			op.valid |= kSetSize;
			op.size = attr->st_size;
		}
	}
	struct stat now;
	if (!err && havePre && fstatat(inodeFd.get(), "", &now, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 &&
	    (now.st_mode & 07777) != (pre.st_mode & 07777)) {
		op.valid |= kSetMode;
		op.mode = now.st_mode & 07777;
	}
	if (!err && (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec tv[2];
		tv[0].tv_sec = tv[1].tv_sec = 0;
		tv[0].tv_nsec = tv[1].tv_nsec = UTIME_OMIT;
		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		int r = fd >= 0 ? futimens(fd, tv) : utimensat(AT_FDCWD, proc.c_str(), tv, 0);
		if (r < 0) {
			err = errno;
		} else {
			/* UTIME_NOW is resolved here and sent as the time we set, so both
			 * sides end with identical timestamps. */
			struct stat now;
			if (fstatat(inodeFd.get(), "", &now, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0) {
				if (valid & FUSE_SET_ATTR_ATIME) {
					op.valid |= kSetAtime;
					op.atime = { now.st_atim.tv_sec, static_cast<uint32_t>(now.st_atim.tv_nsec) };
				}
				if (valid & FUSE_SET_ATTR_MTIME) {
					op.valid |= kSetMtime;
					op.mtime = { now.st_mtim.tv_sec, static_cast<uint32_t>(now.st_mtim.tv_nsec) };
				}
			}
		}
	}
	if (op.valid && fs->capturing()) {
		if (path) {
			op.path = std::move(*path);
			fs->submit(std::move(op));
		} else {
			fs->skipped_++;
		}
	}
	order.unlock();
	if (err)
		return (void)fuse_reply_err(req, err);
	struct stat st;
	if (fstatat(inodeFd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_attr(req, &st, fs->attrTimeout());
}

void opReadlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	PathFd inodeFd = self(req)->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	ssize_t n = readlinkat(inodeFd.get(), "", buf, sizeof(buf));
	if (n < 0)
		return (void)fuse_reply_err(req, errno);
	if (n == sizeof(buf))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

/* Shared tail of mknod/mkdir/symlink: look the new entry up, submit its op. */
void replyCreated(fuse_req_t req, Impl *fs, Inode *parent, const char *name, Op &&op)
{
	fuse_entry_param e;
	int err = fs->doLookup(parent, name, &e);
	if (fs->capturing()) {
		if (auto path = fs->childPath(parent, name)) {
			op.path = std::move(*path);
			if (!err) {
				op.uid = e.attr.st_uid;
				op.gid = e.attr.st_gid;
				if (op.type == OpType::Mknod)
					op.mode = e.attr.st_mode;
				else if (op.type != OpType::Symlink)
					op.mode = e.attr.st_mode & 07777;
			}
			fs->submit(std::move(op));
		}
	}
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

void opMknod(fuse_req_t req, fuse_ino_t parentIno, const char *name, mode_t mode, dev_t rdev)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	ensureThreadUmask();
	Inode *parent = fs->inodeOf(parentIno);
	PathFd parentFd = fs->pathFd(parent);
	if (!parentFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	if (fs->overlong(fs->childPath(parent, name)))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	int r;
	{
		FsIdGuard ids(req);
		r = mknodat(parentFd.get(), name, mode, rdev);
	}
	if (r < 0)
		return (void)fuse_reply_err(req, errno);
	Op op;
	op.type = S_ISREG(mode) ? OpType::Create : OpType::Mknod;
	op.mode = mode;
	op.rdev = rdev;
	replyCreated(req, fs, parent, name, std::move(op));
}

void opMkdir(fuse_req_t req, fuse_ino_t parentIno, const char *name, mode_t mode)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	ensureThreadUmask();
	Inode *parent = fs->inodeOf(parentIno);
	PathFd parentFd = fs->pathFd(parent);
	if (!parentFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	if (fs->overlong(fs->childPath(parent, name)))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	int r;
	{
		FsIdGuard ids(req);
		r = mkdirat(parentFd.get(), name, mode);
	}
	if (r < 0)
		return (void)fuse_reply_err(req, errno);
	Op op;
	op.type = OpType::Mkdir;
	op.mode = mode & 07777;
	replyCreated(req, fs, parent, name, std::move(op));
}

void opSymlink(fuse_req_t req, const char *link, fuse_ino_t parentIno, const char *name)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *parent = fs->inodeOf(parentIno);
	PathFd parentFd = fs->pathFd(parent);
	if (!parentFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	if (fs->overlong(fs->childPath(parent, name)))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	int r;
	{
		FsIdGuard ids(req);
		r = symlinkat(link, parentFd.get(), name);
	}
	if (r < 0)
		return (void)fuse_reply_err(req, errno);
	Op op;
	op.type = OpType::Symlink;
	op.target = link;
	replyCreated(req, fs, parent, name, std::move(op));
}

void opLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newParentIno, const char *newName)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *inode = fs->inodeOf(ino);
	PathFd inodeFd = fs->pathFd(inode);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	Inode *newParent = fs->inodeOf(newParentIno);
	PathFd newParentFd = fs->pathFd(newParent);
	if (!newParentFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	std::optional<std::string> src = fs->pathOf(inode);
	if (fs->overlong(src) || fs->overlong(fs->childPath(newParent, newName)))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	if (linkat(inodeFd.get(), "", newParentFd.get(), newName, AT_EMPTY_PATH) < 0) {
		int err = errno;
		/* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link works without. */
		if (err != ENOENT && err != EPERM)
			return (void)fuse_reply_err(req, err);
		if (linkat(AT_FDCWD, procPath(inodeFd.get()).c_str(), newParentFd.get(), newName, AT_SYMLINK_FOLLOW) < 0)
			return (void)fuse_reply_err(req, errno);
	}
	fuse_entry_param e;
	int err = fs->doLookup(newParent, newName, &e);
	if (fs->capturing()) {
		std::optional<std::string> dst = fs->childPath(newParent, newName);
		if (dst && !fs->excluded(*dst)) {
			if (src && *src != *dst && !fs->excluded(*src)) {
				Op op;
				op.type = OpType::Link;
				op.path = *src;
				op.path2 = *dst;
				fs->submit(std::move(op));
			} else {
				/* The peer has no copy of the source: send the file itself. */
				fs->emitTree(newParentFd.get(), newName, *dst, 0);
			}
		} else {
			fs->skipped_++;
		}
	}
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

void removeEntry(fuse_req_t req, fuse_ino_t parentIno, const char *name, bool dir)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *parent = fs->inodeOf(parentIno);
	PathFd parentFd = fs->pathFd(parent);
	if (!parentFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	struct stat st;
	bool existed = fstatat(parentFd.get(), name, &st, AT_SYMLINK_NOFOLLOW) == 0;
	std::optional<std::string> path = fs->childPath(parent, name);
	if (fs->overlong(path))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	if (unlinkat(parentFd.get(), name, dir ? AT_REMOVEDIR : 0) < 0)
		return (void)fuse_reply_err(req, errno);
	Inode *victim = nullptr;
	if (existed) {
		std::lock_guard lock(fs->tableMutex_);
		victim = fs->findLocked(st.st_dev, st.st_ino);
		if (victim) {
			fs->removeAliasLocked(victim, parent, name);
			if (!victim->aliases.empty() || st.st_nlink < 2)
				victim = nullptr;
		}
	}
	/* Still in the table (the kernel holds it for the unlink) with other names. */
	if (victim && fs->capturing())
		fs->recoverAlias(victim);
	if (path && fs->capturing()) {
		Op op;
		op.type = dir ? OpType::Rmdir : OpType::Unlink;
		op.path = std::move(*path);
		fs->submit(std::move(op));
	}
	fuse_reply_err(req, 0);
}

void opUnlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	removeEntry(req, parent, name, false);
}

void opRmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	removeEntry(req, parent, name, true);
}

/*
 * Whether every path a rename leaves to replicate fits in an op: the entries
 * below a directory moved deeper, a tree moved in from an excluded path (sent
 * whole) and one moved out to an excluded path (removed one by one). Only a
 * move that lengthens a replicated tree's paths walks it.
 */
bool renameFits(Impl *fs, int parentFd, const char *name, const std::optional<std::string> &srcPath,
		int newParentFd, const char *newName, const std::optional<std::string> &dstPath, unsigned flags)
{
	if (!fs->capturing() || !srcPath || !dstPath)
		return true;
	bool srcEx = fs->excluded(*srcPath), dstEx = fs->excluded(*dstPath);
	/* One entry, now at fd/entry, leaving from's path for to's. */
	auto fits = [&](int fd, const char *entry, const std::string &from, bool fromEx, const std::string &to,
			bool toEx) {
		if (!toEx)
			return (!fromEx && to.size() <= from.size()) || fs->treeFits(fd, entry, to, 0);
		return fromEx || fs->treeFits(fd, entry, from, 0);
	};
	if (!fits(parentFd, name, *srcPath, srcEx, *dstPath, dstEx))
		return false;
	return !(flags & RENAME_EXCHANGE) || fits(newParentFd, newName, *dstPath, dstEx, *srcPath, srcEx);
}

void opRename(fuse_req_t req, fuse_ino_t parentIno, const char *name, fuse_ino_t newParentIno,
	      const char *newName, unsigned int flags)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return (void)fuse_reply_err(req, EINVAL);
	Inode *parent = fs->inodeOf(parentIno);
	Inode *newParent = fs->inodeOf(newParentIno);
	PathFd parentFd = fs->pathFd(parent);
	PathFd newParentFd = fs->pathFd(newParent);
	if (!parentFd || !newParentFd)
		return (void)fuse_reply_err(req, errno);
	/* Before any lock: the sink may hold renames back (a resync's rename fence). */
	struct RenameScope {
		OpSink *sink;
		explicit RenameScope(OpSink *s) : sink(s)
		{
			if (sink)
				sink->beginRename();
		}
		~RenameScope()
		{
			if (sink)
				sink->endRename();
		}
	} scope(fs->options_.sink);
	std::unique_lock order(fs->orderMutex_);
	struct stat srcSt, dstSt;
	bool srcExisted = fstatat(parentFd.get(), name, &srcSt, AT_SYMLINK_NOFOLLOW) == 0;
	bool dstExisted = fstatat(newParentFd.get(), newName, &dstSt, AT_SYMLINK_NOFOLLOW) == 0;
	std::optional<std::string> srcPath = fs->childPath(parent, name);
	std::optional<std::string> dstPath = fs->childPath(newParent, newName);
	if (fs->overlong(srcPath) || fs->overlong(dstPath) ||
	    !renameFits(fs, parentFd.get(), name, srcPath, newParentFd.get(), newName, dstPath, flags))
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	if (renameat2(parentFd.get(), name, newParentFd.get(), newName, flags) < 0)
		return (void)fuse_reply_err(req, errno);
	Inode *replaced = nullptr;	/* overwritten, but other names of it remain */
	{
		/* Inodes are found again under the lock: a pointer taken before could
		 * have been forgotten meanwhile. */
		std::lock_guard lock(fs->tableMutex_);
		Inode *src = srcExisted ? fs->findLocked(srcSt.st_dev, srcSt.st_ino) : nullptr;
		Inode *dst = dstExisted ? fs->findLocked(dstSt.st_dev, dstSt.st_ino) : nullptr;
		if (flags & RENAME_EXCHANGE) {
			if (src && src != dst)
				fs->removeAliasLocked(src, parent, name);
			if (dst && src != dst)
				fs->removeAliasLocked(dst, newParent, newName);
			if (src && src != dst)
				fs->addAliasLocked(src, newParent, newName);
			if (dst && src != dst)
				fs->addAliasLocked(dst, parent, name);
		} else if (src != dst || !src) {
			/* Add before removing so a parent kept alive only by this alias stays. */
			if (dst)
				fs->removeAliasLocked(dst, newParent, newName);
			if (src) {
				fs->addAliasLocked(src, newParent, newName);
				fs->removeAliasLocked(src, parent, name);
			}
			if (dst && dst != src && dst->aliases.empty() && dstSt.st_nlink >= 2)
				replaced = dst;
		}
	}
	if (replaced && fs->capturing())
		fs->recoverAlias(replaced);
	if (fs->capturing() && srcPath && dstPath) {
		bool srcEx = fs->excluded(*srcPath), dstEx = fs->excluded(*dstPath);
		if (!srcEx && !dstEx) {
			Op op;
			op.type = OpType::Rename;
			op.path = *srcPath;
			op.path2 = *dstPath;
			op.flags = flags;
			fs->submitRaw(std::move(op));
		} else if (srcEx && dstEx) {
			fs->skipped_++;
		} else if (flags & RENAME_EXCHANGE) {
			/* The replicated side's old content now lives at the excluded side. */
			if (!srcEx) {
				fs->emitRemoveTree(newParentFd.get(), newName, *srcPath, 0);
				fs->emitTree(parentFd.get(), name, *srcPath, 0);
			} else {
				fs->emitRemoveTree(parentFd.get(), name, *dstPath, 0);
				fs->emitTree(newParentFd.get(), newName, *dstPath, 0);
			}
		} else if (!srcEx) {
			fs->emitRemoveTree(newParentFd.get(), newName, *srcPath, 0);
		} else {
			if (dstExisted) {
				Op op;
				op.type = S_ISDIR(dstSt.st_mode) ? OpType::Rmdir : OpType::Unlink;
				op.path = *dstPath;
				fs->submitRaw(std::move(op));
			}
			fs->emitTree(newParentFd.get(), newName, *dstPath, 0);
		}
	}
	fuse_reply_err(req, 0);
}

/* Flags for the backing open: the kernel owns O_APPEND positioning (we write at
 * the offsets it gives), and O_DIRECT would need aligned buffers. */
int backingFlags(const Impl *fs, int flags)
{
	/* O_NOFOLLOW: the kernel already refused a symlink before asking us, and our
	 * path is /proc/self/fd/N, itself a symlink O_NOFOLLOW would refuse (ELOOP:
	 * MariaDB's Aria engine opens its files with it). */
	flags &= ~(O_APPEND | O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT | O_NOFOLLOW);
	/* With the writeback cache the kernel may read to fill partial pages. */
	if (fs->options_.writebackCache && !fs->options_.perWrite && (flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags | O_CLOEXEC;
}

void setupFileInfo(const Impl *fs, fuse_file_info *fi, FileHandle *fh)
{
	fh->syncWrites = (fi->flags & (O_SYNC | O_DSYNC | O_DIRECT)) != 0;
	fh->localSync = (fi->flags & (O_SYNC | O_DSYNC)) != 0;
	if (fi->flags & O_DIRECT)
		fi->direct_io = 1;
	else if (!fs->options_.readOnly)
		fi->keep_cache = 1;
	fi->fh = reinterpret_cast<uint64_t>(fh);
}

void opCreate(fuse_req_t req, fuse_ino_t parentIno, const char *name, mode_t mode, fuse_file_info *fi)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	ensureThreadUmask();
	Inode *parent = fs->inodeOf(parentIno);
	PathFd parentFd = fs->pathFd(parent);
	if (!parentFd)
		return (void)fuse_reply_err(req, errno);
	int flags = backingFlags(fs, fi->flags);
	std::unique_lock order(fs->orderMutex_);
	bool overlong = fs->overlong(fs->childPath(parent, name));
	bool created = true;
	int fd;
	/* An existing file opened with O_TRUNC is truncated as the caller, so the
	 * backing fs strips suid/sgid as for a local call: replicate that. */
	struct stat pre;
	bool havePre = (fi->flags & O_TRUNC) &&
		       fstatat(parentFd.get(), name, &pre, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(pre.st_mode);
	{
		FsIdGuard ids(req);
		if (overlong) {
			/* It may exist (made before the mount): opened for reading, never
			 * created or written (the writeback cache would accept writes that
			 * no op can carry). */
			created = false;
			fd = openat(parentFd.get(), name, flags, mode);
			if (fd >= 0 && ((fi->flags & (O_EXCL | O_TRUNC)) || (fi->flags & O_ACCMODE) != O_RDONLY)) {
				close(fd);
				fd = -1;
				errno = (fi->flags & O_EXCL) ? EEXIST : ENAMETOOLONG;
			} else if (fd < 0 && errno == ENOENT) {
				errno = ENAMETOOLONG;
			}
		} else {
			fd = openat(parentFd.get(), name, flags | O_CREAT | O_EXCL, mode);
			if (fd < 0 && errno == EEXIST && !(fi->flags & O_EXCL)) {
				created = false;
				fd = openat(parentFd.get(), name, flags, mode);
			}
		}
	}
	if (fd < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_entry_param e;
	int err = fs->doLookup(parent, name, &e);
	if (err) {
		close(fd);
		return (void)fuse_reply_err(req, err);
	}
	Inode *inode = fs->inodeOf(e.ino);
	if (created && fs->capturing()) {
		if (auto path = fs->childPath(parent, name)) {
			Op op;
			op.type = OpType::Create;
			op.path = std::move(*path);
			op.mode = e.attr.st_mode & 07777;
			op.uid = e.attr.st_uid;
			op.gid = e.attr.st_gid;
			fs->submit(std::move(op));
		}
	} else if (!created && (fi->flags & O_TRUNC)) {
		if (havePre && (e.attr.st_mode & 07777) != (pre.st_mode & 07777))
			submitAttr(fs, inode, kSetMode, e.attr.st_mode & 07777);
		submitTruncate(fs, inode);
	}
	order.unlock();
	auto *fh = new FileHandle{ fd, false };
	setupFileInfo(fs, fi, fh);
	if (fuse_reply_create(req, &e, fi) != 0) {
		close(fd);
		delete fh;
	}
}

void opOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi)
{
	Impl *fs = self(req);
	bool kill = std::exchange(tKillSuidgid, false);
	Inode *inode = fs->inodeOf(ino);
	PathFd inodeFd = fs->pathFd(inode);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	bool trunc = (fi->flags & O_TRUNC) != 0;
	if (fs->options_.readOnly && ((fi->flags & O_ACCMODE) != O_RDONLY || trunc))
		return (void)fuse_reply_err(req, EROFS);
	int flags = backingFlags(fs, fi->flags);
	std::unique_lock<std::shared_mutex> order;
	if (trunc)
		order = std::unique_lock(fs->orderMutex_);
	/* Writes through the writeback cache could not be refused in time. Without
	 * the order lock a rename may still push it over the limit afterwards: its
	 * writes are then refused one by one. */
	std::optional<std::string> path;
	if (trunc || (fi->flags & O_ACCMODE) != O_RDONLY) {
		if (int err = fs->changePath(inode, &path))
			return (void)fuse_reply_err(req, err);
	}
	if (kill && trunc) {
		/* FUSE_OPEN_KILL_SUIDGID (see tKillSuidgid): strip before truncating. */
		int rfd = open(procPath(inodeFd.get()).c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		int err = rfd < 0 ? errno : killSuidgid(fs, req, inode, rfd);
		if (rfd >= 0)
			close(rfd);
		if (err)
			return (void)fuse_reply_err(req, err);
	}
	int fd = open(procPath(inodeFd.get()).c_str(), flags);
	if (fd < 0)
		return (void)fuse_reply_err(req, errno);
	if (trunc) {
		submitTruncate(fs, inode);
		order.unlock();
	}
	auto *fh = new FileHandle{ fd, false };
	setupFileInfo(fs, fi, fh);
	if (fuse_reply_open(req, fi) != 0) {
		close(fd);
		delete fh;
	}
}

void opRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info *fi)
{
	fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
	buf.buf[0].fd = fhOf(fi)->fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

void opWrite(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off, fuse_file_info *fi)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	bool kill = std::exchange(tKillSuidgid, false);
	Inode *inode = fs->inodeOf(ino);
	FileHandle *fh = fhOf(fi);
	ssize_t n = 0;
	bool replicated = false;
	/* Every reply after the scope: once one is sent, the inode (and the mutex
	 * held here) may be forgotten and freed. */
	int err = 0;
	{
		DirtyLog::Guard logged = fs->recordWrite(inode, off, size, fh->fd);
		std::shared_lock order(fs->orderMutex_);
		std::lock_guard same(inode->writeMutex);
		std::optional<std::string> path;
		err = fs->changePath(inode, &path);
		if (!err && kill)
			err = killSuidgid(fs, req, inode, fh->fd);
		if (!err) {
			n = pwrite(fh->fd, data, size, off);
			if (n < 0)
				err = errno;
		}
		if (!err && fs->capturing() && n > 0) {
			if (path && !fs->excluded(*path)) {
				Op op;
				op.type = OpType::Write;
				op.path = std::move(*path);
				op.offset = off;
				fs->submitRawWrite(std::move(op), std::string_view(data, static_cast<size_t>(n)));
				replicated = true;
			} else {
				fs->skipped_++;
			}
		}
		if (!err) {
			/* Never blocks, never consumes a writeback error (see WriteBehind). */
			uint64_t before = inode->writeBehind.droppedBytes();
			if (int kicked = inode->writeBehind.wrote(fh->fd, static_cast<uint64_t>(off),
								  static_cast<uint64_t>(n))) {
				int none = 0;
				inode->kickError.compare_exchange_strong(none, kicked);
			}
			fs->writeBehindDropped_ += inode->writeBehind.droppedBytes() - before;
		}
	}
	if (err)
		return (void)fuse_reply_err(req, err);
	/* A page-cache writeback (fi->writepage) is not the app's write: an O_SYNC
	 * app write with the writeback cache reaches us as FUSE_FSYNC instead. */
	bool syncWrite = fh->syncWrites && !fi->writepage;
	if (replicated && (fs->options_.perWrite || syncWrite)) {
		/* O_SYNC/O_DSYNC writes are durable here already: no fd to flush. */
		if (int synced = fs->durabilityPoint(syncWrite, nullptr, fh->localSync ? -1 : fh->fd))
			return (void)fuse_reply_err(req, synced);
	}
	fuse_reply_write(req, n);
}

void opFlush(fuse_req_t req, fuse_ino_t, fuse_file_info *)
{
	/* Locks are kernel-local (no lock ops), and the kernel writes dirty pages
	 * before FUSE_FLUSH whether we take it or not: nothing to do, and ENOSYS
	 * tells the kernel never to send it again, a round trip less per close().
	 * close() is not a durability point. */
	self(req)->flushes_++;
	fuse_reply_err(req, ENOSYS);
}

void opRelease(fuse_req_t req, fuse_ino_t, fuse_file_info *fi)
{
	FileHandle *fh = fhOf(fi);
	close(fh->fd);
	delete fh;
	fuse_reply_err(req, 0);
}

int syncData(int fd)
{
	return fdatasync(fd);
}

int syncAll(int fd)
{
	return fsync(fd);
}

/* Barrier first so the local flush and the peer's round trip overlap. Excluded
 * and unlinked files need no peer ack. */
int syncPoint(Impl *fs, Inode *inode, int fd, bool datasync)
{
	int (*local)(int) = datasync ? syncData : syncAll;
	bool replicated = false;
	if (fs->capturing() && !fs->options_.readOnly) {
		auto path = fs->pathOf(inode);
		replicated = path && !fs->excluded(*path);
	}
	int err = replicated ? fs->durabilityPoint(true, local, fd) : (local(fd) < 0 ? errno : 0);
	/* A write-behind kick that failed since the last sync (see WriteBehind). */
	int kicked = inode->kickError.exchange(0);
	return err ? err : kicked;
}

void opFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info *fi)
{
	Impl *fs = self(req);
	Inode *inode = fs->inodeOf(ino);
	int fd = fi ? fhOf(fi)->fd : -1;
	if (!fi) {
		PathFd inodeFd = fs->pathFd(inode);
		if (!inodeFd)
			return (void)fuse_reply_err(req, errno);
		fd = open(procPath(inodeFd.get()).c_str(), O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		return (void)fuse_reply_err(req, errno);
	int err = syncPoint(fs, inode, fd, datasync);
	if (!fi)
		close(fd);
	fuse_reply_err(req, err);
}

void opOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi)
{
	Impl *fs = self(req);
	PathFd inodeFd = fs->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	int fd = openat(inodeFd.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return (void)fuse_reply_err(req, errno);
	auto *dh = new DirHandle;
	dh->dp = fdopendir(fd);
	if (!dh->dp) {
		int err = errno;
		close(fd);
		delete dh;
		return (void)fuse_reply_err(req, err);
	}
	fi->fh = reinterpret_cast<uint64_t>(dh);
	if (fuse_reply_open(req, fi) != 0) {
		closedir(dh->dp);
		delete dh;
	}
}

void doReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info *fi, bool plus)
{
	Impl *fs = self(req);
	DirHandle *dh = dhOf(fi);
	Inode *dir = fs->inodeOf(ino);
	std::vector<char> buf(size);
	size_t used = 0;
	int err = 0;
	/* Unlocked before the reply: once it is sent, a RELEASEDIR may free dh. */
	std::unique_lock lock(dh->mutex);
	if (offset != dh->offset) {
		seekdir(dh->dp, offset);
		dh->entry = nullptr;
		dh->offset = offset;
	}
	for (;;) {
		if (!dh->entry) {
			errno = 0;
			dh->entry = readdir(dh->dp);
			if (!dh->entry) {
				err = errno;
				break;
			}
		}
		struct dirent *ent = dh->entry;
		off_t next = ent->d_off;
		bool dot = std::strcmp(ent->d_name, ".") == 0 || std::strcmp(ent->d_name, "..") == 0;
		size_t n;
		if (plus) {
			fuse_entry_param e;
			/* Over the fd budget: names and types only, the kernel looks up later. */
			if (dot || fs->overBudget()) {
				memset(&e, 0, sizeof(e));
				e.attr.st_ino = ent->d_ino;
				e.attr.st_mode = DTTOIF(ent->d_type);
			} else {
				std::shared_lock order(fs->orderMutex_);
				err = fs->doLookup(dir, ent->d_name, &e);
				if (err == ENOENT) {
					/* Raced with an unlink: skip the entry. */
					err = 0;
					dh->entry = nullptr;
					dh->offset = next;
					continue;
				}
				if (err)
					break;
			}
			n = fuse_add_direntry_plus(req, buf.data() + used, size - used, ent->d_name, &e, next);
			if (n > size - used) {
				if (e.ino != 0)
					fs->forgetOne(e.ino, 1);
				break;
			}
		} else {
			struct stat st;
			memset(&st, 0, sizeof(st));
			st.st_ino = ent->d_ino;
			st.st_mode = DTTOIF(ent->d_type);
			n = fuse_add_direntry(req, buf.data() + used, size - used, ent->d_name, &st, next);
			if (n > size - used)
				break;
		}
		used += n;
		dh->entry = nullptr;
		dh->offset = next;
	}
	lock.unlock();
	/* An error after some entries: return those; the next call reports it. */
	if (err && used == 0)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf.data(), used);
}

void opReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info *fi)
{
	doReaddir(req, ino, size, offset, fi, false);
}

void opReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info *fi)
{
	doReaddir(req, ino, size, offset, fi, true);
}

void opReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info *fi)
{
	DirHandle *dh = dhOf(fi);
	closedir(dh->dp);
	delete dh;
	fuse_reply_err(req, 0);
}

void opFsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info *fi)
{
	Impl *fs = self(req);
	int fd = fi ? dirfd(dhOf(fi)->dp) : -1;
	if (fd < 0)
		return (void)fuse_reply_err(req, EBADF);
	fuse_reply_err(req, syncPoint(fs, fs->inodeOf(ino), fd, datasync));
}

void opStatfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	PathFd inodeFd = self(req)->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	if (fstatvfs(inodeFd.get(), &sv) < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_statfs(req, &sv);
}

void opSetxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *inode = fs->inodeOf(ino);
	PathFd inodeFd = fs->pathFd(inode);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	std::optional<std::string> path;
	if (int err = fs->changePath(inode, &path))
		return (void)fuse_reply_err(req, err);
	if (setxattr(procPath(inodeFd.get()).c_str(), name, value, size, flags) < 0)
		return (void)fuse_reply_err(req, errno);
	if (fs->capturing()) {
		if (path) {
			Op op;
			op.type = OpType::Setxattr;
			op.path = std::move(*path);
			op.name = name;
			op.data.assign(value, size);
			op.flags = flags;
			fs->submit(std::move(op));
		}
	}
	fuse_reply_err(req, 0);
}

void opGetxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	self(req)->getxattrs_++;
	PathFd inodeFd = self(req)->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	std::string proc = procPath(inodeFd.get());
	if (size == 0) {
		ssize_t n = getxattr(proc.c_str(), name, nullptr, 0);
		if (n < 0)
			return (void)fuse_reply_err(req, errno);
		return (void)fuse_reply_xattr(req, n);
	}
	std::vector<char> buf(size);
	ssize_t n = getxattr(proc.c_str(), name, buf.data(), size);
	if (n < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_buf(req, buf.data(), n);
}

void opListxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	PathFd inodeFd = self(req)->pathFd(ino);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	std::string proc = procPath(inodeFd.get());
	if (size == 0) {
		ssize_t n = listxattr(proc.c_str(), nullptr, 0);
		if (n < 0)
			return (void)fuse_reply_err(req, errno);
		return (void)fuse_reply_xattr(req, n);
	}
	std::vector<char> buf(size);
	ssize_t n = listxattr(proc.c_str(), buf.data(), size);
	if (n < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_buf(req, buf.data(), n);
}

void opRemovexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *inode = fs->inodeOf(ino);
	PathFd inodeFd = fs->pathFd(inode);
	if (!inodeFd)
		return (void)fuse_reply_err(req, errno);
	std::unique_lock order(fs->orderMutex_);
	std::optional<std::string> path;
	if (int err = fs->changePath(inode, &path))
		return (void)fuse_reply_err(req, err);
	if (removexattr(procPath(inodeFd.get()).c_str(), name) < 0)
		return (void)fuse_reply_err(req, errno);
	if (fs->capturing()) {
		if (path) {
			Op op;
			op.type = OpType::Removexattr;
			op.path = std::move(*path);
			op.name = name;
			fs->submit(std::move(op));
		}
	}
	fuse_reply_err(req, 0);
}

/* The fallocate of opFallocate, under the locks it needs: 0 or an errno. */
int fallocateLocked(Impl *fs, fuse_req_t req, Inode *inode, int mode, off_t offset, off_t length, int fd)
{
	std::shared_lock order(fs->orderMutex_);
	std::lock_guard same(inode->writeMutex);
	std::optional<std::string> path;
	if (int err = fs->changePath(inode, &path))
		return err;
	/* Under KILLPRIV_V2 the kernel neither strips before a fallocate nor flags
	 * it: strip as the VFS does for a caller without CAP_FSETID. */
	struct stat st;
	if (fs->killprivV2_ && fstat(fd, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID)) && !callerHasFsetid(req)) {
		if (int err = killSuidgid(fs, req, inode, fd))
			return err;
	}
	if (fallocate(fd, mode, offset, length) < 0)
		return errno;
	if (fs->capturing()) {
		if (path) {
			Op op;
			op.type = OpType::Fallocate;
			op.path = std::move(*path);
			op.flags = mode;
			op.offset = offset;
			op.length = length;
			fs->submit(std::move(op));
		} else {
			fs->skipped_++;
		}
	}
	return 0;
}

void opFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info *fi)
{
	Impl *fs = self(req);
	if (fs->options_.readOnly)
		return (void)fuse_reply_err(req, EROFS);
	Inode *inode = fs->inodeOf(ino);
	int err;
	{
		DirtyLog::Guard logged = fs->recordWrite(inode, offset, length, -1);
		/* Replied once unlocked: after the reply the inode may be freed. */
		err = fallocateLocked(fs, req, inode, mode, offset, length, fhOf(fi)->fd);
	}
	fuse_reply_err(req, err);
}

void opLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info *fi)
{
	off_t res = lseek(fhOf(fi)->fd, off, whence);
	if (res < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_lseek(req, res);
}

/*
 * Not implemented on purpose:
 *  - getlk/setlk/flock: the kernel then handles POSIX and BSD locks locally on
 *    the mount, which is right for a single-node writer.
 *  - access: mounted with default_permissions, the kernel checks permissions
 *    from our attributes and never sends FUSE_ACCESS.
 *  - copy_file_range: ENOSYS makes the kernel fall back to read/write, which
 *    replicates as ordinary Write ops.
 *  - ioctl, poll, bmap, retrieve_reply: not needed by a passthrough.
 */
const fuse_lowlevel_ops kOps = [] {
	fuse_lowlevel_ops ops;
	memset(&ops, 0, sizeof(ops));
	ops.init = opInit;
	ops.lookup = opLookup;
	ops.forget = opForget;
	ops.forget_multi = opForgetMulti;
	ops.getattr = opGetattr;
	ops.setattr = opSetattr;
	ops.readlink = opReadlink;
	ops.mknod = opMknod;
	ops.mkdir = opMkdir;
	ops.unlink = opUnlink;
	ops.rmdir = opRmdir;
	ops.symlink = opSymlink;
	ops.rename = opRename;
	ops.link = opLink;
	ops.open = opOpen;
	ops.read = opRead;
	ops.write = opWrite;
	ops.flush = opFlush;
	ops.release = opRelease;
	ops.fsync = opFsync;
	ops.opendir = opOpendir;
	ops.readdir = opReaddir;
	ops.readdirplus = opReaddirplus;
	ops.releasedir = opReleasedir;
	ops.fsyncdir = opFsyncdir;
	ops.statfs = opStatfs;
	ops.setxattr = opSetxattr;
	ops.getxattr = opGetxattr;
	ops.listxattr = opListxattr;
	ops.removexattr = opRemovexattr;
	ops.create = opCreate;
	ops.fallocate = opFallocate;
	ops.lseek = opLseek;
	return ops;
}();

} /* namespace */

/* ------------------------------------------------------------------ lifecycle */

namespace {

/* The abort file of a wedged connection lives in fusectl, which a fresh machine
 * without systemd may not have mounted (like bpffs). */
void ensureFusectl()
{
	struct statfs sfs;
	if (statfs(kFusectlDir, &sfs) == 0 && sfs.f_type == kFusectlSuperMagic)
		return;
	if (mount("fusectl", kFusectlDir, "fusectl", 0, nullptr) < 0)
		logWarn(kLog, "cannot mount fusectl on {}: {}; wedged mounts cannot be aborted", kFusectlDir,
			strerror(errno));
	else
		logInfo(kLog, "mounted fusectl on {}", kFusectlDir);
}

} /* namespace */

Status CaptureFs::Impl::start()
{
	const std::string &mp = options_.mountpoint;
	struct statfs sfs;
	if (statfs(mp.c_str(), &sfs) < 0) {
		if (errno != ENOTCONN)
			return makeError(-errno, errnoMessage("capture: " + mp, -errno));
		/* Dead mount of a killed skd: detach it, the real directory is below. */
		logWarn(kLog, "{}: detaching a dead FUSE mount (ENOTCONN)", mp);
		if (umount2(mp.c_str(), MNT_DETACH) < 0)
			return makeError(-errno, errnoMessage("capture: detach dead mount " + mp, -errno));
		if (statfs(mp.c_str(), &sfs) < 0)
			return makeError(-errno, errnoMessage("capture: " + mp, -errno));
	}
	if (sfs.f_type == kFuseSuperMagic)
		return makeError(-EBUSY, "capture: " + mp + " is already a FUSE mount (another skd running?)");

	int fd = open(mp.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return makeError(-errno, errnoMessage("capture: open " + mp, -errno));
	auto root = std::make_unique<Inode>(fd);
	struct stat st;
	if (fstat(fd, &st) < 0)
		return makeError(-errno, errnoMessage("capture: stat " + mp, -errno));
	root->nlookup = 1;
	root_ = insertLocked(std::move(root), st);	/* no request yet: nothing to lock against */

	fdBudget_ = options_.inodeFdBudget ? options_.inodeFdBudget : inodeFdBudget();
	fdCap_ = fdBudget_ + fdBudget_ / 2;
	mountFd_ = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (mountFd_ < 0)
		return makeError(-errno, errnoMessage("capture: open " + mp, -errno));
	if (handleOfFd(fd, &rootMountId_).empty())
		rootMountId_ = -1;

	fuse_args args = FUSE_ARGS_INIT(0, nullptr);
	/* default_permissions: the kernel checks access from our attributes (we run
	 * as root); allow_other: the app is usually another user. */
	const char *argv[] = { "skd-capture", "-o", "default_permissions,allow_other,fsname=sk-capture,subtype=sk" };
	for (const char *a : argv) {
		if (fuse_opt_add_arg(&args, a) != 0) {
			fuse_opt_free_args(&args);
			return makeError(-ENOMEM, "capture: fuse_opt_add_arg failed");
		}
	}
	se_ = fuse_session_new(&args, &kOps, sizeof(kOps), this);
	fuse_opt_free_args(&args);
	if (!se_)
		return makeError(-EIO, "capture: fuse_session_new failed (see stderr)");
	if (fuse_session_mount(se_, mp.c_str()) != 0) {
		fuse_session_destroy(se_);
		se_ = nullptr;
		return makeError(-EIO, "capture: mounting FUSE on " + mp + " failed (root and /dev/fuse needed)");
	}
	mounted_ = true;
	/* Our own read/write of /dev/fuse (same fd, plain syscalls) to see the raw
	 * request flags: see tKillSuidgid. */
	static const fuse_custom_io kIo = { ioWritev, ioRead, nullptr, ioSpliceSend };
	if (int r = fuse_session_custom_io(se_, &kIo, fuse_session_fd(se_)); r < 0) {
		fuse_session_unmount(se_);
		fuse_session_destroy(se_);
		se_ = nullptr;
		mounted_ = false;
		return makeError(r, "capture: installing the FUSE request hooks on " + mp + " failed");
	}
	ensureFusectl();

	loop_ = std::thread([this] {
		fuse_loop_config *cfg = fuse_loop_cfg_create();
		unsigned n = options_.threads ? options_.threads : 1;
		fuse_loop_cfg_set_max_threads(cfg, n);
		fuse_loop_cfg_set_idle_threads(cfg, n);
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		int r = fuse_session_loop_mt(se_, cfg);
		fuse_loop_cfg_destroy(cfg);
		if (r < 0)
			logWarn(kLog, "{}: FUSE loop ended: {}", options_.mountpoint, strerror(-r));
		std::lock_guard lock(loopMutex_);
		loopDone_ = true;
		loopCv_.notify_all();
	});

	pruner_ = std::thread([this] { prunerLoop(); });

	/* The connection id (for an abort at shutdown) is the mount's minor number;
	 * this stat is also the first request, so mount() returns a working fs. */
	struct stat mst;
	if (stat(mp.c_str(), &mst) == 0)
		connDev_ = mst.st_dev;
	logInfo(kLog, "{}: capture mounted (dir {}, sink {}, writeback {}, per_write {}, read_only {})", mp,
		options_.dirIndex, options_.sink ? "yes" : "none", options_.writebackCache, options_.perWrite,
		options_.readOnly);
	return Status::success();
}

Status CaptureFs::Impl::stop()
{
	if (!se_)
		return Status::success();
	Status status;
	const std::string &mp = options_.mountpoint;
	/* Stopped now, joined after the unmount: a notification it has under way may
	 * wait for a directory lock that a stuck request holds until the abort. */
	{
		std::lock_guard lock(prunerMutex_);
		prunerStop_ = true;
		prunerCv_.notify_all();
	}
	fuse_session_exit(se_);
	if (mounted_) {
		/* Lazy: files the app still holds keep working until closed; with none
		 * the superblock goes at once and the workers see ENODEV. */
		if (umount2(mp.c_str(), MNT_DETACH) < 0) {
			status = makeError(-errno, errnoMessage("capture: unmount " + mp, -errno));
			logWarn(kLog, "{}", status.error().message);
		}
		mounted_ = false;
	}
	{
		std::unique_lock lock(loopMutex_);
		if (!loopCv_.wait_for(lock, kUnmountGrace, [this] { return loopDone_; }) && connDev_) {
			logWarn(kLog, "{}: files still open after unmount, aborting the FUSE connection", mp);
			std::string abort = "/sys/fs/fuse/connections/" + std::to_string(minor(connDev_)) + "/abort";
			int fd = open(abort.c_str(), O_WRONLY | O_CLOEXEC);
			if (fd >= 0) {
				if (write(fd, "1", 1) < 0)
					logWarn(kLog, "{}: abort failed: {}", mp, strerror(errno));
				close(fd);
			}
		}
	}
	if (loop_.joinable())
		loop_.join();
	if (pruner_.joinable())
		pruner_.join();
	fuse_session_destroy(se_);
	se_ = nullptr;
	logInfo(kLog, "{}: capture unmounted", mp);
	return status;
}

CaptureFs::Impl::~Impl()
{
	(void)stop();
	/* Drop children before parents is not needed: Inode holds no pointers it owns. */
	inodes_.clear();
	retired_.clear();
	if (mountFd_ >= 0)
		close(mountFd_);
}

Result<std::unique_ptr<CaptureFs>> CaptureFs::mount(const CaptureOptions &options)
{
	if (options.mountpoint.empty())
		return makeError(-EINVAL, "capture: empty mountpoint");
	auto impl = std::make_unique<Impl>(options);
	Status st = impl->start();
	if (!st)
		return st.error();
	return std::unique_ptr<CaptureFs>(new CaptureFs(std::move(impl)));
}

CaptureFs::CaptureFs(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CaptureFs::~CaptureFs()
{
	(void)unmount();
}

Status CaptureFs::unmount()
{
	return impl_->stop();
}

CaptureCounters CaptureFs::counters() const
{
	CaptureCounters c;
	for (size_t i = 0; i < c.opsByType.size(); i++)
		c.opsByType[i] = impl_->opsByType_[i].load();
	c.barriers = impl_->barriers_.load();
	c.barrierWaitNs = impl_->barrierWaitNs_.load();
	c.barrierFailures = impl_->barrierFailures_.load();
	c.skipped = impl_->skipped_.load();
	c.prunedEntries = impl_->pruned_.load();
	c.cachedInodes = gInodeFds.load();
	c.handleOnlyInodes = impl_->handleOnly_.load();
	c.writeBehindDropped = impl_->writeBehindDropped_.load();
	c.getxattrRequests = impl_->getxattrs_.load();
	c.flushRequests = impl_->flushes_.load();
	c.killprivV2 = impl_->killprivV2_.load();
	return c;
}

const std::string &CaptureFs::mountpoint() const
{
	return impl_->options_.mountpoint;
}

} /* namespace sk::repl */
