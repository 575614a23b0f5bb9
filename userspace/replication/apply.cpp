/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The applier: one op at a time against the target root fd. Name operations go
 * through the parent directory's O_PATH fd and the last component (never a path
 * with a slash), so the kernel resolves nothing we did not check with openat2.
 */
#include "replication/apply.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "core/log.h"

namespace sk::repl {

namespace {

const LogCategory kLog("repl.apply");

constexpr uint64_t kResolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;

/* Owns an fd, or borrows one (the root) without closing it. */
class Fd
{
public:
	Fd() = default;
	Fd(int fd, bool owned) : fd_(fd), owned_(owned) {}
	Fd(Fd &&o) noexcept : fd_(o.fd_), owned_(o.owned_) { o.fd_ = -1; }
	Fd &operator=(Fd &&o) noexcept
	{
		reset();
		fd_ = o.fd_;
		owned_ = o.owned_;
		o.fd_ = -1;
		return *this;
	}
	~Fd() { reset(); }
	int get() const { return fd_; }
	bool valid() const { return fd_ >= 0; }

private:
	void reset()
	{
		if (fd_ >= 0 && owned_)
			::close(fd_);
		fd_ = -1;
	}
	int fd_ = -1;
	bool owned_ = true;
};

int openat2Raw(int dirFd, const char *path, uint64_t flags, uint64_t mode)
{
	struct open_how how;
	memset(&how, 0, sizeof(how));
	how.flags = flags;
	how.mode = mode;
	how.resolve = kResolve;
	for (;;) {
		long ret = syscall(SYS_openat2, dirFd, path, &how, sizeof(how));
		/* EAGAIN: a concurrent rename raced the lookup (RESOLVE_* are strict about it). */
		if (ret >= 0)
			return static_cast<int>(ret);
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
}

std::string parentOf(const std::string &path)
{
	size_t slash = path.rfind('/');
	return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool underOrEqual(const std::string &path, const std::string &prefix)
{
	return path == prefix ||
	       (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
		path[prefix.size()] == '/');
}

int statAt(int dirFd, const std::string &leaf, struct stat *st)
{
	return fstatat(dirFd, leaf.c_str(), st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

} /* namespace */

Result<std::unique_ptr<Applier>> Applier::create(int rootFd, const Options &options)
{
	struct stat st;
	if (fstat(rootFd, &st) < 0)
		return makeError(-errno, fmt::format("replication target: {}", strerror(errno)));
	if (!S_ISDIR(st.st_mode))
		return makeError(-ENOTDIR, "replication target is not a directory");
	int fd = fcntl(rootFd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return makeError(-errno, fmt::format("replication target: dup: {}", strerror(errno)));
	return std::unique_ptr<Applier>(new Applier(fd, options));
}

Applier::Applier(int rootFd, const Options &options) : rootFd_(rootFd), options_(options)
{
	if (options_.fdCacheSize == 0)
		options_.fdCacheSize = 1;
}

Applier::~Applier()
{
	for (CachedFd &c : lru_)
		::close(c.fd);
	::close(rootFd_);
}

int Applier::resolve(const std::string &path, uint64_t flags, uint32_t mode, int *err)
{
	int fd = openat2Raw(rootFd_, path.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		*err = fd;
		return -1;
	}
	return fd;
}

int Applier::openParent(const std::string &path, std::string *leaf, int *err)
{
	size_t slash = path.rfind('/');
	if (slash == std::string::npos) {
		*leaf = path;
		return rootFd_;
	}
	*leaf = path.substr(slash + 1);
	return resolve(path.substr(0, slash), O_PATH | O_DIRECTORY, 0, err);
}

int Applier::cachedFd(const std::string &path, int *err)
{
	CachedFd *entry = cachedEntry(path, err);
	return entry ? entry->fd : -1;
}

Applier::CachedFd *Applier::cachedEntry(const std::string &path, int *err)
{
	auto it = lruIndex_.find(path);
	if (it != lruIndex_.end()) {
		counters_.fdCacheHits++;
		lru_.splice(lru_.begin(), lru_, it->second);
		return &*it->second;
	}
	counters_.fdCacheMisses++;
	/* O_NONBLOCK: a FIFO in the way must fail or return at once, never block the stream. */
	int fd = resolve(path, O_WRONLY | O_NONBLOCK, 0, err);
	if (fd < 0)
		return nullptr;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		::close(fd);
		*err = -EINVAL;
		return nullptr;
	}
	if (lru_.size() >= options_.fdCacheSize) {
		lruIndex_.erase(lru_.back().path);
		::close(lru_.back().fd);
		lru_.pop_back();
	}
	lru_.push_front({ path, fd, {} });
	lruIndex_[path] = lru_.begin();
	return &lru_.front();
}

void Applier::invalidate(const std::string &path)
{
	for (auto it = lru_.begin(); it != lru_.end();) {
		if (underOrEqual(it->path, path)) {
			lruIndex_.erase(it->path);
			::close(it->fd);
			it = lru_.erase(it);
		} else {
			++it;
		}
	}
}

void Applier::markDirty(const std::string &path)
{
	if (options_.durability != Durability::FsyncDirty || dirtyOverflow_)
		return;
	if (dirty_.size() >= options_.maxDirty) {
		dirtyOverflow_ = true;
		dirty_.clear();
		return;
	}
	dirty_.insert(path);
}

void Applier::markParentDirty(const std::string &path)
{
	markDirty(parentOf(path));
}

int Applier::setOwner(int dirFd, const std::string &leaf, uint32_t uid, uint32_t gid)
{
	if (!options_.applyOwner)
		return 0;
	return fchownat(dirFd, leaf.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

int Applier::doCreate(const Op &op)
{
	invalidate(op.path);
	int err = 0;
	int fd = resolve(op.path, O_CREAT | O_WRONLY | O_TRUNC | O_NONBLOCK, op.mode & 07777, &err);
	if (fd < 0)
		return err;
	struct stat st;
	int ret = 0;
	if (fstat(fd, &st) < 0)
		ret = -errno;
	else if (!S_ISREG(st.st_mode))
		ret = -EEXIST;
	/* Owner before mode: chown clears set-id bits. */
	if (ret == 0 && options_.applyOwner && fchown(fd, op.uid, op.gid) < 0)
		ret = -errno;
	if (ret == 0 && fchmod(fd, op.mode & 07777) < 0)
		ret = -errno;
	if (ret < 0) {
		::close(fd);
		return ret;
	}
	/* A new file is usually written next: keep its fd. */
	if (lru_.size() >= options_.fdCacheSize) {
		lruIndex_.erase(lru_.back().path);
		::close(lru_.back().fd);
		lru_.pop_back();
	}
	lru_.push_front({ op.path, fd, {} });
	lruIndex_[op.path] = lru_.begin();
	markDirty(op.path);
	markParentDirty(op.path);
	return 0;
}

int Applier::doMkdir(const Op &op)
{
	int err = 0;
	std::string leaf;
	Fd parent(openParent(op.path, &leaf, &err), op.path.find('/') != std::string::npos);
	if (!parent.valid())
		return err;
	if (mkdirat(parent.get(), leaf.c_str(), op.mode & 07777) < 0) {
		if (errno != EEXIST)
			return -errno;
		struct stat st;
		if (statAt(parent.get(), leaf, &st) < 0 || !S_ISDIR(st.st_mode))
			return -EEXIST;
	}
	int ret = setOwner(parent.get(), leaf, op.uid, op.gid);
	if (ret == 0 && fchmodat(parent.get(), leaf.c_str(), op.mode & 07777, AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	markParentDirty(op.path);
	markDirty(op.path);
	return ret;
}

int Applier::doSymlink(const Op &op)
{
	invalidate(op.path);
	int err = 0;
	std::string leaf;
	Fd parent(openParent(op.path, &leaf, &err), op.path.find('/') != std::string::npos);
	if (!parent.valid())
		return err;
	for (int attempt = 0;; attempt++) {
		if (symlinkat(op.target.c_str(), parent.get(), leaf.c_str()) == 0)
			break;
		if (errno != EEXIST || attempt > 0)
			return -errno;
		struct stat st;
		if (statAt(parent.get(), leaf, &st) < 0)
			return -EEXIST;
		if (S_ISLNK(st.st_mode)) {
			std::vector<char> buf(op.target.size() + 2);
			ssize_t n = readlinkat(parent.get(), leaf.c_str(), buf.data(), buf.size());
			if (n >= 0 && std::string_view(buf.data(), n) == op.target)
				break;
		}
		if (S_ISDIR(st.st_mode))
			return -EEXIST;
		if (unlinkat(parent.get(), leaf.c_str(), 0) < 0)
			return -errno;
	}
	markParentDirty(op.path);
	return setOwner(parent.get(), leaf, op.uid, op.gid);
}

int Applier::doLink(const Op &op)
{
	invalidate(op.path2);
	int err = 0;
	std::string leaf1, leaf2;
	Fd p1(openParent(op.path, &leaf1, &err), op.path.find('/') != std::string::npos);
	if (!p1.valid())
		return err;
	Fd p2(openParent(op.path2, &leaf2, &err), op.path2.find('/') != std::string::npos);
	if (!p2.valid())
		return err;
	for (int attempt = 0;; attempt++) {
		/* flags 0: a symlink source is linked itself, never followed. */
		if (linkat(p1.get(), leaf1.c_str(), p2.get(), leaf2.c_str(), 0) == 0)
			break;
		if (errno != EEXIST || attempt > 0)
			return -errno;
		struct stat a, b;
		if (statAt(p1.get(), leaf1, &a) < 0 || statAt(p2.get(), leaf2, &b) < 0)
			return -EEXIST;
		if (a.st_ino == b.st_ino && a.st_dev == b.st_dev)
			break;
		if (S_ISDIR(b.st_mode))
			return -EEXIST;
		if (unlinkat(p2.get(), leaf2.c_str(), 0) < 0)
			return -errno;
	}
	markParentDirty(op.path2);
	return 0;
}

int Applier::doUnlink(const Op &op, bool dir)
{
	invalidate(op.path);
	dirty_.erase(op.path);
	int err = 0;
	std::string leaf;
	Fd parent(openParent(op.path, &leaf, &err), op.path.find('/') != std::string::npos);
	if (!parent.valid())
		return err == -ENOENT ? 0 : err;
	if (unlinkat(parent.get(), leaf.c_str(), dir ? AT_REMOVEDIR : 0) < 0 && errno != ENOENT)
		return -errno;
	markParentDirty(op.path);
	return 0;
}

int Applier::doRename(const Op &op)
{
	invalidate(op.path);
	invalidate(op.path2);
	int err = 0;
	std::string leaf1, leaf2;
	Fd p1(openParent(op.path, &leaf1, &err), op.path.find('/') != std::string::npos);
	if (!p1.valid())
		return err;
	Fd p2(openParent(op.path2, &leaf2, &err), op.path2.find('/') != std::string::npos);
	if (!p2.valid())
		return err;
	struct stat st;
	bool srcIsDir = statAt(p1.get(), leaf1, &st) == 0 && S_ISDIR(st.st_mode);
	if (renameat2(p1.get(), leaf1.c_str(), p2.get(), leaf2.c_str(), op.flags) < 0) {
		int e = errno;
		if (e == ENOENT && op.flags != RENAME_EXCHANGE && statAt(p1.get(), leaf1, &st) == -ENOENT &&
		    statAt(p2.get(), leaf2, &st) == 0)
			return 0;
		return -e;
	}
	markParentDirty(op.path);
	markParentDirty(op.path2);
	if (srcIsDir || op.flags == RENAME_EXCHANGE) {
		/* Dirty paths under the old names moved: only syncfs covers them now. */
		if (options_.durability == Durability::FsyncDirty)
			dirtyOverflow_ = true;
	} else if (dirty_.erase(op.path)) {
		markDirty(op.path2);
	}
	return 0;
}

int Applier::doSetattr(const Op &op)
{
	int err = 0;
	if (op.valid & kSetSize) {
		int fd = cachedFd(op.path, &err);
		if (fd < 0)
			return err;
		if (ftruncate(fd, static_cast<off_t>(op.size)) < 0)
			return -errno;
		markDirty(op.path);
	}
	std::string leaf;
	Fd parent(openParent(op.path, &leaf, &err), op.path.find('/') != std::string::npos);
	if (!parent.valid())
		return err;
	if ((op.valid & (kSetUid | kSetGid)) && options_.applyOwner) {
		uid_t uid = (op.valid & kSetUid) ? op.uid : static_cast<uid_t>(-1);
		gid_t gid = (op.valid & kSetGid) ? op.gid : static_cast<gid_t>(-1);
		if (fchownat(parent.get(), leaf.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if (op.valid & kSetMode) {
		/* EOPNOTSUPP: the path is a symlink, whose mode means nothing. */
		if (fchmodat(parent.get(), leaf.c_str(), op.mode & 07777, AT_SYMLINK_NOFOLLOW) < 0 &&
		    errno != EOPNOTSUPP)
			return -errno;
	}
	if (op.valid & (kSetAtime | kSetMtime | kSetAtimeNow | kSetMtimeNow)) {
		struct timespec ts[2];
		auto fill = [](struct timespec *t, bool set, bool now, const Timespec &v) {
			t->tv_sec = set ? v.sec : 0;
			t->tv_nsec = now ? UTIME_NOW : set ? static_cast<long>(v.nsec) : UTIME_OMIT;
		};
		fill(&ts[0], op.valid & kSetAtime, op.valid & kSetAtimeNow, op.atime);
		fill(&ts[1], op.valid & kSetMtime, op.valid & kSetMtimeNow, op.mtime);
		if (utimensat(parent.get(), leaf.c_str(), ts, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	markDirty(op.path);
	return 0;
}

namespace {

/*
 * An fd on which f*xattr works, for any file type: regular files, directories and
 * FIFOs open read-only (non-blocking); symlinks and sockets cannot be opened, so for
 * them *procPath is set to a /proc/self/fd path of an O_PATH fd.
 */
int xattrFd(int rootFd, const std::string &path, std::string *procPath, int *err)
{
	int fd = openat2Raw(rootFd, path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0);
	if (fd >= 0)
		return fd;
	if (fd != -ELOOP && fd != -ENXIO) {
		*err = fd;
		return -1;
	}
	fd = openat2Raw(rootFd, path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
	if (fd < 0) {
		*err = fd;
		return -1;
	}
	*procPath = fmt::format("/proc/self/fd/{}", fd);
	return fd;
}

} /* namespace */

int Applier::doSetxattr(const Op &op)
{
	int err = 0;
	std::string proc;
	Fd fd(xattrFd(rootFd_, op.path, &proc, &err), true);
	if (!fd.valid())
		return err;
	/* flags 0: the primary enforced CREATE/REPLACE; a replay must not fail on them. */
	int ret = proc.empty() ? fsetxattr(fd.get(), op.name.c_str(), op.data.data(), op.data.size(), 0)
			       : setxattr(proc.c_str(), op.name.c_str(), op.data.data(), op.data.size(), 0);
	if (ret < 0)
		return -errno;
	markDirty(op.path);
	return 0;
}

int Applier::doRemovexattr(const Op &op)
{
	int err = 0;
	std::string proc;
	Fd fd(xattrFd(rootFd_, op.path, &proc, &err), true);
	if (!fd.valid())
		return err;
	int ret = proc.empty() ? fremovexattr(fd.get(), op.name.c_str()) : removexattr(proc.c_str(), op.name.c_str());
	if (ret < 0 && errno != ENODATA)
		return -errno;
	markDirty(op.path);
	return 0;
}

int Applier::doWrite(const Op &op, std::string_view data)
{
	int err = 0;
	CachedFd *entry = cachedEntry(op.path, &err);
	if (!entry)
		return err;
	int fd = entry->fd;
	size_t done = 0;
	while (done < data.size()) {
		ssize_t n = pwrite(fd, data.data() + done, data.size() - done,
				   static_cast<off_t>(op.offset + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		done += static_cast<size_t>(n);
	}
	counters_.bytesWritten += done;
	markDirty(op.path);
	uint64_t before = entry->writeBehind.droppedBytes();
	if (int err = entry->writeBehind.wrote(fd, op.offset, done); err && !kickError_)
		kickError_ = err;
	counters_.writeBehindDropped += entry->writeBehind.droppedBytes() - before;
	return 0;
}

int Applier::doFallocate(const Op &op)
{
	int err = 0;
	int fd = cachedFd(op.path, &err);
	if (fd < 0)
		return err;
	if (fallocate(fd, static_cast<int>(op.flags), static_cast<off_t>(op.offset),
		      static_cast<off_t>(op.length)) < 0)
		return -errno;
	markDirty(op.path);
	return 0;
}

int Applier::doMknod(const Op &op)
{
	invalidate(op.path);
	int err = 0;
	std::string leaf;
	Fd parent(openParent(op.path, &leaf, &err), op.path.find('/') != std::string::npos);
	if (!parent.valid())
		return err;
	uint32_t type = op.mode & S_IFMT;
	/* Only FIFOs and sockets reach here (the codec refuses device nodes). */
	if (type != S_IFIFO && type != S_IFSOCK)
		return -EINVAL;
	if (mknodat(parent.get(), leaf.c_str(), type | (op.mode & 07777), 0) < 0) {
		if (errno != EEXIST)
			return -errno;
		struct stat st;
		if (statAt(parent.get(), leaf, &st) < 0 || (st.st_mode & S_IFMT) != type)
			return -EEXIST;
	}
	int ret = setOwner(parent.get(), leaf, op.uid, op.gid);
	if (ret == 0 && fchmodat(parent.get(), leaf.c_str(), op.mode & 07777, AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	markParentDirty(op.path);
	return ret;
}

Status Applier::flush()
{
	counters_.durableFlushes++;
	/* A write-behind kick that failed since the last flush: that data may be
	 * gone from the page cache without any fsync below seeing it. */
	if (int err = std::exchange(kickError_, 0))
		return makeError(-err, fmt::format("starting writeback of the replication target: {}", strerror(err)));
	if (options_.durability == Durability::Syncfs || dirtyOverflow_) {
		counters_.syncfsFlushes++;
		if (syncfs(rootFd_) < 0)
			return makeError(-errno, fmt::format("syncfs of the replication target: {}", strerror(errno)));
		dirtyOverflow_ = false;
		dirty_.clear();
		return {};
	}
	for (const std::string &path : dirty_) {
		auto it = lruIndex_.find(path);
		int ret = 0;
		if (it != lruIndex_.end()) {
			ret = fsync(it->second->fd) < 0 ? -errno : 0;
		} else {
			int fd = path == "." ? fcntl(rootFd_, F_DUPFD_CLOEXEC, 0)
					     : openat2Raw(rootFd_, path.c_str(),
							  O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0);
			/* Gone or not openable (symlink, socket): nothing of it to flush any more. */
			if (fd == -ENOENT || fd == -ELOOP || fd == -ENXIO || fd == -ENOTDIR)
				continue;
			if (fd < 0)
				ret = fd;
			else {
				ret = fsync(fd) < 0 ? -errno : 0;
				::close(fd);
			}
		}
		counters_.fsyncs++;
		if (ret < 0)
			return makeError(ret, fmt::format("fsync {}: {}", path, strerror(-ret)));
	}
	dirty_.clear();
	return {};
}

Status Applier::apply(const Op &op, std::string_view data)
{
	int ret = 0;
	switch (op.type) {
	case OpType::Create: ret = doCreate(op); break;
	case OpType::Mkdir: ret = doMkdir(op); break;
	case OpType::Symlink: ret = doSymlink(op); break;
	case OpType::Link: ret = doLink(op); break;
	case OpType::Unlink: ret = doUnlink(op, false); break;
	case OpType::Rmdir: ret = doUnlink(op, true); break;
	case OpType::Rename: ret = doRename(op); break;
	case OpType::Setattr: ret = doSetattr(op); break;
	case OpType::Setxattr: ret = doSetxattr(op); break;
	case OpType::Removexattr: ret = doRemovexattr(op); break;
	case OpType::Write: ret = doWrite(op, data); break;
	case OpType::Fallocate: ret = doFallocate(op); break;
	case OpType::Mknod: ret = doMknod(op); break;
	case OpType::Barrier:
		if (op.durable) {
			Status s = flush();
			if (!s)
				return s;
		}
		break;
	default:
		ret = -EINVAL;
		break;
	}
	if (ret == -ENOENT && resyncing_ &&
	    (op.type == OpType::Write || op.type == OpType::Setattr || op.type == OpType::Fallocate ||
	     op.type == OpType::Setxattr || op.type == OpType::Removexattr)) {
		counters_.missingSkipped++;
		ret = 0;
	}
	if (resyncing_ && op.type == OpType::Rename &&
	    (ret == -ENOENT || ret == -EEXIST || ret == -ENOTEMPTY || ret == -EISDIR || ret == -ENOTDIR)) {
		counters_.missingSkipped++;
		ret = 0;
	}
	if (ret < 0) {
		std::string msg = fmt::format("apply {} #{} {}{}{}: {}", opTypeName(op.type), op.seq, op.path,
					      op.path2.empty() ? "" : " -> ", op.path2, strerror(-ret));
		logDebug(kLog, "{}", msg);
		return makeError(ret, std::move(msg));
	}
	counters_.ops++;
	return {};
}

} /* namespace sk::repl */
