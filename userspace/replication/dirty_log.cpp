/* SPDX-License-Identifier: Apache-2.0 */
/*
 * DirtyLog file format (little-endian):
 *   header, 64 bytes: "SKDIRTY1", u32 version (1), u32 flags (1 covers, 2 resyncing),
 *                     u32 block size, u32 extent blocks, u64 epoch, u64 salt,
 *                     zero padding, u32 XXH32(bytes 0..59, seed 0) at 60
 *   records, 24 bytes: u64 inode, u32 first extent, u32 extent count, u32 epoch,
 *                      u32 XXH32(bytes 0..19, seed = salt)
 * The salt is new for every file written, so bytes of an older file can never pass
 * as records of this one.
 */
#include "replication/dirty_log.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/le_bytes.h"
#include "core/log.h"

namespace sk::repl {

namespace {

const LogCategory kLog("dirty-log");

constexpr char kMagic[8] = { 'S', 'K', 'D', 'I', 'R', 'T', 'Y', '1' };
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFlagCovers = 1;
constexpr uint32_t kFlagResyncing = 2;
constexpr size_t kHeaderSize = 64;
constexpr size_t kRecordSize = 24;

int writeAll(int fd, const uint8_t *data, size_t len, uint64_t offset)
{
	while (len) {
		ssize_t n = pwrite(fd, data, len, static_cast<off_t>(offset));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += n;
		len -= static_cast<size_t>(n);
		offset += static_cast<uint64_t>(n);
	}
	return 0;
}

int fsyncParent(const std::string &file)
{
	size_t slash = file.rfind('/');
	std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : file.substr(0, slash));
	int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

uint64_t newSalt()
{
	std::random_device rd;
	return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

} /* namespace */

DirtyLog::Guard::Guard(DirtyLog *log) : log_(log)
{
	std::unique_lock<std::mutex> l(log_->writersMutex_);
	log_->writersCv_.wait(l, [this] { return !log_->switching_; });
	log_->writers_++;
}

DirtyLog::Guard &DirtyLog::Guard::operator=(Guard &&other) noexcept
{
	if (this != &other) {
		this->~Guard();
		log_ = std::exchange(other.log_, nullptr);
	}
	return *this;
}

DirtyLog::Guard::~Guard()
{
	if (!log_)
		return;
	std::lock_guard<std::mutex> l(log_->writersMutex_);
	if (--log_->writers_ == 0)
		log_->writersCv_.notify_all();
	log_ = nullptr;
}

void DirtyLog::lockSwitch()
{
	std::unique_lock<std::mutex> l(writersMutex_);
	writersCv_.wait(l, [this] { return !switching_; });
	switching_ = true;
	writersCv_.wait(l, [this] { return writers_ == 0; });
}

void DirtyLog::unlockSwitch()
{
	std::lock_guard<std::mutex> l(writersMutex_);
	switching_ = false;
	writersCv_.notify_all();
}

DirtyLog::DirtyLog(std::string file, int fd, uint32_t blockSize)
	: file_(std::move(file)), fd_(fd), blockSize_(blockSize)
{
}

DirtyLog::~DirtyLog()
{
	if (fd_ >= 0)
		close(fd_);
}

Result<std::unique_ptr<DirtyLog>> DirtyLog::open(const std::string &file, uint32_t blockSize)
{
	if (blockSize == 0)
		return makeError(-EINVAL, "dirty log: block size must not be 0");
	int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
	bool created = false;
	if (fd < 0 && errno == ENOENT) {
		fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		created = true;
	}
	if (fd < 0)
		return makeError(-errno, fmt::format("cannot open dirty log {}: {}", file, strerror(errno)));
	std::unique_ptr<DirtyLog> log(new DirtyLog(file, fd, blockSize));
	if (created) {
		std::lock_guard<std::mutex> l(log->mutex_);
		if (Status s = log->rewrite({}, false, false, 1); !s)
			return s.error();
		log->holeEpoch_ = 1;
		log->problem_ = "new dirty log: no record of earlier writes";
	} else if (Status s = log->load(); !s) {
		return s.error();
	}
	return log;
}

/* Reads the file; anything unusable degrades to covers = false, never an error. */
Status DirtyLog::load()
{
	std::lock_guard<std::mutex> l(mutex_);
	struct stat st;
	if (fstat(fd_, &st) < 0)
		return makeError(-errno, fmt::format("dirty log {}: {}", file_, strerror(errno)));
	std::vector<uint8_t> data(static_cast<size_t>(st.st_size));
	size_t got = 0;
	while (got < data.size()) {
		ssize_t n = pread(fd_, data.data() + got, data.size() - got, static_cast<off_t>(got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += static_cast<size_t>(n);
	}
	data.resize(got);
	std::string problem;
	uint64_t salt = 0;
	if (data.size() < kHeaderSize || memcmp(data.data(), kMagic, sizeof(kMagic)) != 0 ||
	    le::get<uint32_t>(data.data() + 60) != XXH32(data.data(), 60, 0) || le::get<uint32_t>(data.data() + 8) != kVersion) {
		problem = "damaged dirty log header";
	} else if (le::get<uint32_t>(data.data() + 16) != blockSize_ || le::get<uint32_t>(data.data() + 20) != kExtentBlocks) {
		problem = fmt::format("dirty log written for block size {}, now {}", le::get<uint32_t>(data.data() + 16),
				      blockSize_);
	}
	if (!problem.empty()) {
		/* Keep nothing from a file we cannot trust; start a new one. */
		Status s = rewrite({}, false, false, 1);
		holeEpoch_ = 1;
		problem_ = problem;
		logWarn(kLog, "{}: {}; the next resync compares everything", file_, problem);
		return s;
	}
	uint32_t flags = le::get<uint32_t>(data.data() + 12);
	covers_ = flags & kFlagCovers;
	resyncing_ = flags & kFlagResyncing;
	epoch_ = le::get<uint64_t>(data.data() + 24);
	salt = le::get<uint64_t>(data.data() + 32);
	salt_ = salt;
	size_t off = kHeaderSize;
	size_t goodEnd = off;
	bool damaged = false;
	for (; off + kRecordSize <= data.size(); off += kRecordSize) {
		const uint8_t *p = data.data() + off;
		if (le::get<uint32_t>(p + 20) != XXH32(p, 20, salt)) {
			damaged = true;
			continue;
		}
		if (damaged) {
			/* A bad record with good ones after it is not a torn append. */
			problem = "damaged record in the dirty log";
		}
		Record r{ le::get<uint64_t>(p), le::get<uint32_t>(p + 8), le::get<uint32_t>(p + 12), le::get<uint32_t>(p + 16) };
		records_.push_back(r);
		for (uint32_t i = 0; i < r.count; i++)
			logged_[{ r.ino, r.extent + i }] = 0;
		goodEnd = off + kRecordSize;
	}
	fileSize_ = goodEnd;
	if (goodEnd != data.size() && ftruncate(fd_, static_cast<off_t>(goodEnd)) < 0)
		return makeError(-errno, fmt::format("dirty log {}: {}", file_, strerror(errno)));
	if (!problem.empty()) {
		lostCoverage(problem);
	} else if (!covers_) {
		holeEpoch_ = epoch_;
		problem_ = "dirty log does not cover every write since the peer was last in sync";
	}
	return {};
}

void DirtyLog::lostCoverage(const std::string &why)
{
	/* mutex_ held. Persisting the flag is best effort: a later open of a damaged
	 * file finds covers false anyway. */
	if (covers_)
		logWarn(kLog, "{}: {}; the next resync compares everything", file_, why);
	problem_ = why;
	covers_ = false;
	holeEpoch_ = epoch_;
	if (fd_ >= 0 && fileSize_ >= kHeaderSize)
		(void)writeHeader();
}

/* mutex_ held. */
Status DirtyLog::writeHeader()
{
	uint8_t h[kHeaderSize] = {};
	int rf = pread(fd_, h, kHeaderSize, 0) == static_cast<ssize_t>(kHeaderSize) ? 0 : -EIO;
	if (rf < 0)
		return makeError(rf, fmt::format("dirty log {}: cannot read header", file_));
	le::put<uint32_t>(h + 12, (covers_ ? kFlagCovers : 0) | (resyncing_ ? kFlagResyncing : 0));
	le::put<uint64_t>(h + 24, epoch_);
	le::put<uint32_t>(h + 60, XXH32(h, 60, 0));
	if (int r = writeAll(fd_, h, kHeaderSize, 0); r < 0)
		return makeError(r, fmt::format("dirty log {}: {}", file_, strerror(-r)));
	if (fdatasync(fd_) < 0)
		return makeError(-errno, fmt::format("dirty log {}: {}", file_, strerror(errno)));
	return {};
}

/* mutex_ held. Writes a new file with these records and flags and swaps it in. */
Status DirtyLog::rewrite(const std::vector<Record> &keep, bool covers, bool resyncing, uint64_t epoch)
{
	std::string tmp = file_ + ".new";
	int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return makeError(-errno, fmt::format("cannot write {}: {}", tmp, strerror(errno)));
	uint64_t salt = newSalt();
	std::vector<uint8_t> buf(kHeaderSize + keep.size() * kRecordSize, 0);
	memcpy(buf.data(), kMagic, sizeof(kMagic));
	le::put<uint32_t>(buf.data() + 8, kVersion);
	le::put<uint32_t>(buf.data() + 12, (covers ? kFlagCovers : 0) | (resyncing ? kFlagResyncing : 0));
	le::put<uint32_t>(buf.data() + 16, blockSize_);
	le::put<uint32_t>(buf.data() + 20, kExtentBlocks);
	le::put<uint64_t>(buf.data() + 24, epoch);
	le::put<uint64_t>(buf.data() + 32, salt);
	le::put<uint32_t>(buf.data() + 60, XXH32(buf.data(), 60, 0));
	for (size_t i = 0; i < keep.size(); i++) {
		uint8_t *p = buf.data() + kHeaderSize + i * kRecordSize;
		le::put<uint64_t>(p, keep[i].ino);
		le::put<uint32_t>(p + 8, keep[i].extent);
		le::put<uint32_t>(p + 12, keep[i].count);
		le::put<uint32_t>(p + 16, keep[i].epoch);
		le::put<uint32_t>(p + 20, XXH32(p, 20, salt));
	}
	int r = writeAll(fd, buf.data(), buf.size(), 0);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp.c_str(), file_.c_str()) < 0)
		r = -errno;
	if (r == 0)
		r = fsyncParent(file_);
	if (r < 0) {
		close(fd);
		unlink(tmp.c_str());
		return makeError(r, fmt::format("cannot write dirty log {}: {}", file_, strerror(-r)));
	}
	if (fd_ >= 0)
		close(fd_);
	fd_ = fd;
	fileSize_ = buf.size();
	records_ = keep;
	covers_ = covers;
	resyncing_ = resyncing;
	epoch_ = epoch;
	salt_ = salt;
	return {};
}

void DirtyLog::mark(uint64_t ino, uint64_t offset, uint64_t length, int fd)
{
	const uint64_t extentBytes = static_cast<uint64_t>(blockSize_) * kExtentBlocks;
	uint64_t first = offset / extentBytes;
	uint64_t last = (offset + std::max<uint64_t>(length, 1) - 1) / extentBytes;
	if (last > UINT32_MAX)
		last = UINT32_MAX;
	std::unique_lock<std::mutex> l(mutex_);
	if (fd >= 0 && !logged_.count({ ino, static_cast<uint32_t>(last) })) {
		/* A new extent anyway: if this write reaches EOF (an append), record ahead. */
		struct stat st;
		if (fstat(fd, &st) == 0 && offset + length >= static_cast<uint64_t>(st.st_size))
			last = std::min<uint64_t>(last + kAppendAhead, UINT32_MAX);
	}
	uint64_t need = 0;
	Record run{ ino, 0, 0, static_cast<uint32_t>(epoch_) };
	auto closeRun = [&] {
		if (run.count)
			pending_.push_back(run);
		run.count = 0;
	};
	for (uint64_t e = first; e <= last; e++) {
		auto key = std::make_pair(ino, static_cast<uint32_t>(e));
		auto it = logged_.find(key);
		if (it != logged_.end()) {
			need = std::max(need, it->second);
			closeRun();
			continue;
		}
		logged_.emplace(key, nextTicket_);
		need = nextTicket_;
		if (run.count && run.extent + run.count == e) {
			run.count++;
		} else {
			closeRun();
			run.extent = static_cast<uint32_t>(e);
			run.count = 1;
		}
	}
	closeRun();
	/* Group commit: whoever finds no flush running writes every pending record. */
	while (durableTicket_ < need) {
		if (flushing_) {
			flushed_.wait(l);
			continue;
		}
		flushing_ = true;
		std::vector<Record> batch = std::move(pending_);
		pending_.clear();
		uint64_t ticket = nextTicket_++;
		uint64_t at = fileSize_;
		uint64_t salt = salt_;
		int fd = fd_;
		fileSize_ += batch.size() * kRecordSize;
		l.unlock();
		std::vector<uint8_t> buf(batch.size() * kRecordSize);
		for (size_t i = 0; i < batch.size(); i++) {
			uint8_t *p = buf.data() + i * kRecordSize;
			le::put<uint64_t>(p, batch[i].ino);
			le::put<uint32_t>(p + 8, batch[i].extent);
			le::put<uint32_t>(p + 12, batch[i].count);
			le::put<uint32_t>(p + 16, batch[i].epoch);
			le::put<uint32_t>(p + 20, XXH32(p, 20, salt));
		}
		int r = writeAll(fd, buf.data(), buf.size(), at);
		if (r == 0 && fdatasync(fd) < 0)
			r = -errno;
		l.lock();
		records_.insert(records_.end(), batch.begin(), batch.end());
		if (r < 0)
			lostCoverage(fmt::format("dirty log write failed: {}", strerror(-r)));
		durableTicket_ = ticket;
		flushing_ = false;
		flushed_.notify_all();
	}
}

BlockSelection DirtyLog::selection() const
{
	std::lock_guard<std::mutex> l(mutex_);
	/* Records come in time order: sort each inode's extents once, then merge. */
	std::unordered_map<uint64_t, std::vector<std::pair<uint32_t, uint32_t>>> byIno;
	for (const auto &r : records_)
		byIno[r.ino].emplace_back(r.extent, r.count);
	BlockSelection sel;
	for (auto &[ino, extents] : byIno) {
		std::sort(extents.begin(), extents.end());
		BlockRanges &ranges = sel.byIno[ino];
		for (const auto &[extent, count] : extents)
			ranges.add(static_cast<uint64_t>(extent) * kExtentBlocks, static_cast<uint64_t>(count) * kExtentBlocks);
	}
	return sel;
}

DirtyLogState DirtyLog::state() const
{
	std::lock_guard<std::mutex> l(mutex_);
	DirtyLogState s;
	s.covers = covers_;
	s.resyncing = resyncing_;
	s.epoch = epoch_;
	s.records = records_.size();
	s.problem = problem_;
	return s;
}

uint64_t DirtyLog::switchEpoch()
{
	lockSwitch();
	uint64_t epoch;
	{
		/* Every writer of the old epoch finished (no Guard alive), so no flush runs
		 * and nothing is pending. */
		std::lock_guard<std::mutex> l(mutex_);
		epoch = ++epoch_;
		logged_.clear();
	}
	unlockSwitch();
	return epoch;
}

Status DirtyLog::dropBefore(uint64_t epoch)
{
	std::unique_lock<std::mutex> l(mutex_);
	while (flushing_)
		flushed_.wait(l);
	/* Flush what is pending first so the rewrite keeps it. */
	std::vector<Record> keep;
	for (const auto &r : records_)
		if (r.epoch >= static_cast<uint32_t>(epoch))
			keep.push_back(r);
	for (const auto &r : pending_)
		if (r.epoch >= static_cast<uint32_t>(epoch))
			keep.push_back(r);
	/* The peer holds everything written before the epoch: holes older than it no
	 * longer matter, and the tree equals the peer's (no resync in progress). */
	bool covers = holeEpoch_ < epoch;
	Status s = rewrite(keep, covers, false, epoch_);
	if (!s)
		return s;
	/* Pending records are in the new file already. */
	pending_.clear();
	durableTicket_ = nextTicket_++;
	flushed_.notify_all();
	if (covers)
		problem_.clear();
	return {};
}

Status DirtyLog::setResyncing(bool resyncing)
{
	std::lock_guard<std::mutex> l(mutex_);
	if (resyncing_ == resyncing)
		return {};
	resyncing_ = resyncing;
	return writeHeader();
}

Status DirtyLog::resetAfterResync()
{
	lockSwitch();
	struct Unlock {
		DirtyLog *log;
		~Unlock() { log->unlockSwitch(); }
	} unlock{ this };
	std::unique_lock<std::mutex> l(mutex_);
	while (flushing_)
		flushed_.wait(l);
	pending_.clear();
	logged_.clear();
	durableTicket_ = nextTicket_++;
	flushed_.notify_all();
	Status s = rewrite({}, true, false, epoch_ + 1);
	if (s) {
		problem_.clear();
		holeEpoch_ = 0;
	}
	return s;
}

} /* namespace sk::repl */
