/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared helpers of the CaptureFs tests: a RecordingSink (acks now, later or
 * only when told), temp dirs removed on scope exit, a mounted fixture that
 * always unmounts, and a tree comparison.
 */
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <csignal>
#include <ftw.h>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include "replication/fuse/capture_fs.h"
#include "replication/op.h"

namespace sk::repl::test {

inline const char *typeName(OpType t)
{
	static const char *const kNames[] = { "?", "Create", "Mkdir", "Symlink", "Link", "Unlink", "Rmdir",
		"Rename", "Setattr", "Setxattr", "Removexattr", "Write", "Fallocate", "Mknod", "Barrier" };
	auto i = static_cast<size_t>(t);
	return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "?";
}

/* "Create a.txt", "Rename a -> b": compact form for expected-vs-got checks. */
inline std::string describe(const Op &op)
{
	std::string s = typeName(op.type);
	if (op.type == OpType::Barrier)
		return s + (op.durable ? " durable" : "");
	s += " " + op.path;
	if (!op.path2.empty())
		s += " -> " + op.path2;
	return s;
}

class RecordingSink : public OpSink
{
public:
	enum class Mode { Immediate, Delay, Never, Fail };

	explicit RecordingSink(Mode mode = Mode::Immediate) : mode_(mode) {}

	uint64_t submit(Op &&op) override
	{
		std::lock_guard lock(mutex_);
		op.seq = ++seq_;
		ops_.push_back(std::move(op));
		return seq_;
	}
	uint64_t submitBarrier(bool durable) override
	{
		Op op;
		op.type = OpType::Barrier;
		op.durable = durable;
		return submit(std::move(op));
	}
	int waitAcked(uint64_t seq) override
	{
		waiting_++;
		std::unique_lock lock(mutex_);
		int ret = 0;
		switch (mode_) {
		case Mode::Immediate:
			break;
		case Mode::Delay:
			lock.unlock();
			std::this_thread::sleep_for(delay_);
			lock.lock();
			break;
		case Mode::Fail:
			ret = -EIO;
			break;
		case Mode::Never:
			/* Bounded: a test that forgets to release fails instead of hanging. */
			if (!cv_.wait_for(lock, std::chrono::seconds(20), [&] { return acked_ >= seq; }))
				ret = -ETIMEDOUT;
			break;
		}
		waiting_--;
		return ret;
	}

	void setMode(Mode mode) { std::lock_guard lock(mutex_); mode_ = mode; }
	void setDelay(std::chrono::milliseconds d) { delay_ = d; }
	void ackAll()
	{
		std::lock_guard lock(mutex_);
		acked_ = seq_;
		cv_.notify_all();
	}
	int waiting() const { return waiting_.load(); }
	std::vector<Op> ops()
	{
		std::lock_guard lock(mutex_);
		return ops_;
	}
	/* Ops described, by default without barriers and without the time-only
	 * Setattrs the kernel sends on its own schedule with the writeback cache. */
	std::vector<std::string> described(bool withBarriers = false, bool withTimes = false)
	{
		std::vector<std::string> out;
		for (const Op &op : ops()) {
			if (!withBarriers && op.type == OpType::Barrier)
				continue;
			if (!withTimes && isTimeOnly(op))
				continue;
			out.push_back(describe(op));
		}
		return out;
	}
	static bool isTimeOnly(const Op &op)
	{
		return op.type == OpType::Setattr && op.valid &&
			(op.valid & ~(kSetAtime | kSetMtime | kSetAtimeNow | kSetMtimeNow)) == 0;
	}
	std::vector<Op> opsNoTimes()
	{
		std::vector<Op> out;
		for (const Op &op : ops())
			if (!isTimeOnly(op))
				out.push_back(op);
		return out;
	}
	void clear()
	{
		std::lock_guard lock(mutex_);
		ops_.clear();
	}

private:
	std::mutex mutex_;
	std::condition_variable cv_;
	Mode mode_;
	std::chrono::milliseconds delay_{ 50 };
	uint64_t seq_ = 0;
	uint64_t acked_ = 0;
	std::vector<Op> ops_;
	std::atomic<int> waiting_{ 0 };
};

inline int rmEntry(const char *path, const struct stat *, int, struct FTW *)
{
	return remove(path);
}

class TempDir
{
public:
	explicit TempDir(const char *tag = "cap")
	{
		std::string tmpl = std::string("/tmp/sk-t-") + tag + "-XXXXXX";
		std::vector<char> buf(tmpl.begin(), tmpl.end());
		buf.push_back('\0');
		REQUIRE(mkdtemp(buf.data()) != nullptr);
		path_ = buf.data();
		chmod(path_.c_str(), 0755);
	}
	~TempDir() { nftw(path_.c_str(), rmEntry, 16, FTW_DEPTH | FTW_PHYS); }
	const std::string &path() const { return path_; }
	std::string operator/(const std::string &rel) const { return path_ + "/" + rel; }

private:
	std::string path_;
};

/*
 * The test process is both the FUSE server and its client: if it dies (a
 * crash, a timeout's SIGTERM) while a thread waits on the mount, exit blocks
 * forever. On such signals abort our connections first, then die normally.
 */
inline std::atomic<unsigned> gLiveConns[16];

inline void abortConnsAndDie(int sig)
{
	for (auto &c : gLiveConns) {
		unsigned minor = c.load();
		if (!minor)
			continue;
		char path[64] = "/sys/fs/fuse/connections/";
		char num[16];
		int n = 0;
		do
			num[n++] = static_cast<char>('0' + minor % 10);
		while ((minor /= 10) && n < 15);
		size_t len = strlen(path);
		while (n)
			path[len++] = num[--n];
		memcpy(path + len, "/abort", 7);
		int fd = open(path, O_WRONLY);
		if (fd >= 0) {
			(void)!write(fd, "1", 1);
			close(fd);
		}
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

inline void installAbortOnDeath()
{
	static std::once_flag once;
	std::call_once(once, [] {
		for (int sig : { SIGSEGV, SIGBUS, SIGABRT, SIGTERM, SIGINT, SIGFPE })
			signal(sig, abortConnsAndDie);
	});
}

inline bool canMount()
{
	return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0;
}

/* A mount over a fresh temp dir: `mnt / "x"` goes through FUSE, `back / "x"`
 * is the backing file reached below the mount (through a pre-mount fd). */
struct Mounted {
	TempDir dir;
	RecordingSink sink;
	std::unique_ptr<CaptureFs> fs;
	int backFd = -1;
	std::atomic<unsigned> *conn = nullptr;	/* our slot in gLiveConns */

	explicit Mounted(CaptureOptions opts = {}, bool withSink = true)
	{
		backFd = open(dir.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
		REQUIRE(backFd >= 0);
		opts.mountpoint = dir.path();
		opts.sink = withSink ? &sink : nullptr;
		auto r = CaptureFs::mount(opts);
		if (!r)
			FAIL("mount failed: " << r.error().message);
		fs = std::move(r.value());
		installAbortOnDeath();
		struct stat st;
		if (stat(dir.path().c_str(), &st) == 0) {
			for (auto &c : gLiveConns) {
				unsigned expected = 0;
				if (c.compare_exchange_strong(expected, minor(st.st_dev))) {
					conn = &c;
					break;
				}
			}
		}
	}
	~Mounted()
	{
		if (conn)
			conn->store(0);
		sink.ackAll();
		if (fs)
			(void)fs->unmount();
		fs.reset();
		if (backFd >= 0)
			close(backFd);
	}
	std::string mnt(const std::string &rel) const { return dir / rel; }
	/* Backing path via /proc: bypasses the mount. */
	std::string back(const std::string &rel) const
	{
		return "/proc/self/fd/" + std::to_string(backFd) + "/" + rel;
	}
};

inline std::string readAll(const std::string &path)
{
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return "<" + std::string(strerror(errno)) + ">";
	std::string out;
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		out.append(buf, n);
	close(fd);
	return out;
}

inline bool writeAll(const std::string &path, const std::string &data, int flags = O_WRONLY | O_CREAT | O_TRUNC)
{
	int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
	if (fd < 0)
		return false;
	bool ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
	return close(fd) == 0 && ok;
}

/* errno of a call that must fail, 0 when it succeeded. */
template<typename F>
int errOf(F &&f)
{
	errno = 0;
	return f() < 0 ? errno : 0;
}

/* Recursive listing "path type mode size content-hash/target" for comparison;
 * a difference shows as a readable line diff. */
inline void listTree(int dirFd, const std::string &prefix, std::map<std::string, std::string> &out,
		     bool withMode = true)
{
	int fd = openat(dirFd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dp = fd >= 0 ? fdopendir(fd) : nullptr;
	if (!dp)
		return;
	std::vector<std::string> names;
	while (struct dirent *e = readdir(dp))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			names.push_back(e->d_name);
	for (const std::string &n : names) {
		struct stat st;
		if (fstatat(dirfd(dp), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		std::string rel = prefix.empty() ? n : prefix + "/" + n;
		std::string desc;
		if (withMode)
			desc = "mode=" + std::to_string(st.st_mode & 07777) + " ";
		if (S_ISDIR(st.st_mode)) {
			out[rel] = desc + "dir";
			int sub = openat(dirfd(dp), n.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0) {
				listTree(sub, rel, out, withMode);
				close(sub);
			}
		} else if (S_ISREG(st.st_mode)) {
			int f = openat(dirfd(dp), n.c_str(), O_RDONLY | O_CLOEXEC);
			std::string content;
			char buf[65536];
			ssize_t r;
			while (f >= 0 && (r = read(f, buf, sizeof(buf))) > 0)
				content.append(buf, r);
			if (f >= 0)
				close(f);
			out[rel] = desc + "file size=" + std::to_string(st.st_size) + " hash=" +
				std::to_string(std::hash<std::string>{}(content));
		} else if (S_ISLNK(st.st_mode)) {
			char buf[4096];
			ssize_t r = readlinkat(dirfd(dp), n.c_str(), buf, sizeof(buf));
			out[rel] = "link " + std::string(buf, r > 0 ? r : 0);
		} else {
			out[rel] = desc + "special " + std::to_string(st.st_mode & S_IFMT);
		}
	}
	closedir(dp);
}

inline std::string treeOf(const std::string &dir, bool withMode = true)
{
	std::map<std::string, std::string> m;
	int fd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return "<cannot open " + dir + ">";
	listTree(fd, "", m, withMode);
	close(fd);
	std::string s;
	for (auto &[k, v] : m)
		s += k + ": " + v + "\n";
	return s;
}

inline std::string treeOfFd(int dirFd, bool withMode = true)
{
	std::map<std::string, std::string> m;
	listTree(dirFd, "", m, withMode);
	std::string s;
	for (auto &[k, v] : m)
		s += k + ": " + v + "\n";
	return s;
}

} /* namespace sk::repl::test */
