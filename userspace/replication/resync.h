/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Resync: bring a target tree up to date through the ordered op stream while live
 * writes keep flowing. The target describes its tree (a manifest with XXH3-128 block
 * hashes); the source sends only what differs, gated against live ops (see GatedSink).
 */
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "cluster/key.h"
#include "cluster/wire.h"
#include "core/result.h"
#include "replication/dirty_log.h"
#include "replication/op.h"

namespace sk::repl {

struct Hash128 {
	uint64_t lo = 0;
	uint64_t hi = 0;
	bool operator==(const Hash128 &) const = default;
};

Hash128 hashBlock(std::span<const uint8_t> data);

/*
 * Sub-block hashes (ScanOptions::subBlocks): where the dirty logs name blocks, the
 * target also hashes each kSubBlockSize piece of them, and the source sends only the
 * pieces of a differing block that differ (a 4 KiB write costs 4 KiB, not a whole
 * block). At most kMaxSubBlocks of them per scan (64 MiB of hashes for 16 GiB named;
 * a resync runs several scans: by the logs, files changed outside them, renamed
 * paths and deferred blocks); past that, files are compared by whole blocks.
 */
constexpr uint32_t kSubBlockSize = 4096;
constexpr uint64_t kMaxSubBlocks = 4u << 20;
/* Whether blocks of blockSize split into several whole pieces. */
constexpr bool hasPieces(uint32_t blockSize)
{
	return blockSize > kSubBlockSize && blockSize % kSubBlockSize == 0;
}

enum class EntryType : uint8_t { File = 1, Dir = 2, Symlink = 3, Other = 4 };

/*
 * Which blocks of a File entry carry hashes. All: blocks[i] for every block i. Some:
 * blocks[k] hashes block blockIndex[k] (strictly increasing); the other blocks are
 * equal on both sides according to both dirty logs. None: no block differs
 * according to both logs (a size or mtime difference then asks for All).
 */
enum class Coverage : uint8_t { All = 0, Some = 1, None = 2 };

/* One path of a tree as the resync compares it. */
struct ManifestEntry {
	std::string path;		/* relative to the root, never "." */
	EntryType type = EntryType::File;
	uint32_t mode = 0;		/* full st_mode */
	uint32_t uid = 0;
	uint32_t gid = 0;
	uint64_t size = 0;
	Timespec mtime;
	uint64_t rdev = 0;
	std::string target;		/* Symlink */
	std::vector<Hash128> blocks;	/* File, when hashed: see Coverage */
	Coverage coverage = Coverage::All;
	std::vector<uint64_t> blockIndex;	/* Some */
	/* With ScanOptions::subBlocks: blockSize / kSubBlockSize hashes per hashed block,
	 * in order (pieces past the end of the data hash as empty); or none. */
	std::vector<Hash128> subBlocks;
	bool operator==(const ManifestEntry &) const = default;
};

struct ScanOptions {
	uint32_t blockSize = 65536;
	bool hashes = true;
	/* With hashes: null hashes every block; else only the selected blocks of a file
	 * (by inode or path; a path with no ranges means the whole file) are hashed. */
	const BlockSelection *select = nullptr;
	/* With select: also the sub-block hashes of what it names. */
	bool subBlocks = false;
	/* Called for every regular file listed, with its inode (maps dirty logs to paths). */
	std::function<void(const std::string &path, uint64_t ino)> onFile;
	std::vector<std::string> include;	/* capture patterns (captureExcluded) */
	std::vector<std::string> exclude;
	const std::atomic<bool> *stop = nullptr;	/* set: the scan ends with -ECANCELED */
};

/* Walks the tree under rootFd (pre-order: a directory before its entries). Excluded
 * non-directories are left out; directories are always listed (included paths may
 * live below an excluded one). */
Result<std::vector<ManifestEntry>> scanTree(int rootFd, const ScanOptions &options);

/* A selection by path (Want / HashRequest frames): path, ranges; no ranges = whole file.
 * A receiver refuses more than kMaxSelectionPaths paths (a sender compares all instead). */
constexpr size_t kMaxSelectionPaths = size_t(1) << 22;
void encodePathSelection(const std::string &path, const BlockRanges &ranges, std::vector<uint8_t> *out);
bool decodePathSelection(std::span<const uint8_t> in, BlockSelection *out);

/* Source side: target files whose hashes must be asked for (Coverage::None yet size or
 * mtime differ: changed outside both dirty logs, e.g. while SK was not running). */
std::vector<std::string> unexplainedFiles(const std::vector<ManifestEntry> &source,
					  const std::vector<ManifestEntry> &target);
/* Replaces the entries of base with the same path as an entry of update. */
void mergeManifest(std::vector<ManifestEntry> *base, std::vector<ManifestEntry> &&update);

/* Appends one entry's encoding (little-endian, bounded) to *out. */
void encodeManifestEntry(const ManifestEntry &entry, std::vector<uint8_t> *out);
/* One chunk of it (at most ~1 MiB), from block *first on, which it advances: true
 * while chunks remain. A frame may end between chunks (a file's hashes can exceed
 * one frame: 16 GiB of 64 KiB blocks). */
bool encodeManifestChunk(const ManifestEntry &entry, size_t *first, std::vector<uint8_t> *out);
/* Decodes entries back to back; false on malformed input or an entry cut short. */
bool decodeManifestEntries(std::span<const uint8_t> in, std::vector<ManifestEntry> *out);
/* The same over several inputs (frames): *continuing, false at the start, says
 * whether out->back() continues in the next one. */
bool decodeManifestEntries(std::span<const uint8_t> in, std::vector<ManifestEntry> *out, bool *continuing);

/*
 * The OpSink capture writes into on the source, in front of the stream. Live
 * submits and resync steps are serialised by one gate: a resync step (read the
 * source + submit what it read) holds the gate, so a live op whose local effect
 * happened after the read is sequenced after the step's ops. It also remembers the
 * seq of the last Rename, the one live op a per-path resync cannot absorb, and
 * (while tracking) the paths renames touched, so that a round raced by renames
 * compares only those again; the rename fence holds new renames back meanwhile.
 */
class GatedSink : public OpSink
{
public:
	explicit GatedSink(OpSink *inner) : inner_(inner) {}

	uint64_t submit(Op &&op) override;
	uint64_t submitWrite(Op &&op, std::string_view data) override;
	uint64_t submitBarrier(bool durable) override;
	/* See setLocalAcks(). */
	int waitAcked(uint64_t seq) override { return localAcks_ ? 0 : inner_->waitAcked(seq); }

	/*
	 * While the target is being resynced it cannot be promoted and holds no complete
	 * copy, so waiting for its ack protects nothing, yet each durability call would
	 * queue behind the resync data (minutes for a large resync). With local acks on,
	 * a durability call returns once the local effect is durable, as when ALONE; the
	 * dirty log (not rotated before the target is in sync) names those writes.
	 */
	void setLocalAcks(bool on) { localAcks_ = on; }
	bool acksLocal() const override { return localAcks_; }

	/* Resync side: hold the gate across read + submitLocked(). */
	std::unique_lock<std::mutex> hold() { return std::unique_lock<std::mutex>(gate_); }
	/* writeData: a Write's bytes apart from op (submitWrite), or null. */
	uint64_t submitLocked(Op &&op, const std::string_view *writeData = nullptr);
	uint64_t lastRenameSeq() const { return lastRenameSeq_.load(); }
	/* Highest seq handed out so far (0: none). */
	uint64_t lastSeq() const { return lastSeq_.load(); }
	OpSink *inner() const { return inner_; }

	/* Paths (both names) of the renames submitted since trackRenames(true); past
	 * kMaxTrackedRenames paths only `overflow` is kept. Call with the gate held. */
	struct Renamed {
		std::set<std::string> paths;
		bool overflow = false;
	};
	static constexpr size_t kMaxTrackedRenames = 65536;
	void trackRenames(bool on);
	Renamed takeRenamed();

	/*
	 * Rename fence: beginRename() blocks while it is up. raiseRenameFence() raises
	 * it and waits (up to timeout) until no rename is between beginRename() and
	 * endRename(): after it returns true every rename's op is submitted and no new
	 * one starts until lowerRenameFence().
	 */
	void beginRename() override;
	void endRename() override;
	bool raiseRenameFence(std::chrono::milliseconds timeout);
	void lowerRenameFence();

private:
	OpSink *inner_;
	std::mutex gate_;
	bool tracking_ = false;		/* gate_ */
	Renamed renamed_;		/* gate_ */
	std::mutex fenceMutex_;
	std::condition_variable fenceCv_;
	bool fenced_ = false;		/* fenceMutex_ */
	unsigned renaming_ = 0;		/* fenceMutex_ */
	std::atomic<uint64_t> lastRenameSeq_{ 0 };
	std::atomic<uint64_t> lastSeq_{ 0 };
	std::atomic<bool> localAcks_{ false };
};

struct ResyncStats {
	uint64_t files = 0;
	uint64_t dirs = 0;
	uint64_t bytesTotal = 0;	/* source regular file bytes to compare */
	uint64_t bytesDone = 0;
	uint64_t bytesRead = 0;		/* source bytes read and hashed */
	uint64_t bytesSent = 0;		/* Write payload submitted */
	uint64_t blocksSent = 0;	/* Write ops: whole blocks, or runs of differing pieces */
	uint64_t blocksSkipped = 0;	/* hash matched the target's */
	uint64_t piecesSkipped = 0;	/* sub-blocks of sent blocks that matched (not sent) */
	uint64_t blocksDeferred = 0;	/* differing, left to a piece compare (runResyncRound's deferred) */
	uint64_t ops = 0;
	uint64_t removed = 0;		/* target paths absent (or of another type) on the source */
	uint64_t lastSeq = 0;		/* seq of the last op submitted (0: none) */
};

using ResyncProgressFn = std::function<void(uint64_t bytesDone, uint64_t bytesTotal)>;

/*
 * One resync round of one directory on the source. Namespace pass, under one gate
 * hold (atStart runs first inside it: the caller leaves ALONE there, so no live op
 * reaches the new stream before the pass): remove what the target has and the source
 * does not, then Mkdir/Symlink/Mknod, and Create for files the target lacks. Data
 * pass, per block under the gate: Link for extra hard link names, Write for blocks
 * whose hash differs from the target's, Setattr (mode, owner, size, mtime). The caller then submits a durable
 * barrier; the target equals the source once it is acked, provided no Rename was
 * submitted after the target's manifest was taken (GatedSink::lastRenameSeq():
 * otherwise run another round with a fresh manifest).
 * sendUnhashed (by source inode, may be filled by atStart): blocks sent without a
 * compare where the target hashed none - what the source changed after its dirty
 * log selection went to the target and before live ops reach it.
 * deferred (by path; null: never): blocks that differ from a target hash that came
 * without piece hashes (a full compare, or blocks named past the target's piece
 * budget), and sendUnhashed blocks inside the target's file past the first
 * max(8 MiB, 4 KiB per target entry) of them, are not sent but named here, up to
 * kMaxSubBlocks pieces' worth; the caller then asks the target for their piece
 * hashes (a fresh manifest of that selection) and runs another round, which sends
 * only the pieces that differ. The target is not equal to the source until then.
 */
Result<ResyncStats> runResyncRound(int rootFd, uint16_t dirIndex, const ScanOptions &options,
				   const std::vector<ManifestEntry> &target, GatedSink *sink,
				   const ResyncProgressFn &progress, const std::function<Status()> &atStart = nullptr,
				   const BlockSelection *sendUnhashed = nullptr, BlockSelection *deferred = nullptr);

/*
 * Resync control connection (authenticated wire frames, replication type range),
 * opened by the target before its stream connection:
 *   target -> source  Hello     u64 nonce
 *   source -> target  Challenge u64 nonce
 *   source -> target  Want      path selections (any number), WantEnd u8 full
 *   target -> source  Manifest  entries (any number of frames), ManifestEnd u64 lastApplied
 *                     (hashes: everything if full or the target's log is unusable, else
 *                     the wanted blocks plus those the target's own dirty log names)
 *   source -> target  HashRequest paths (any number), HashRequestEnd u8 all (1: every file)
 *   target -> source  Manifest  whole-file hashes of those paths, ManifestEnd
 *   source -> target  Progress  u64 done, u64 total;  Done  u64 bytesSent
 *   source -> target  Rescan, then Want*, WantEnd u8 full: renames raced the round,
 *                     or blocks wait for their piece hashes (runResyncRound's
 *                     deferred); the paths and blocks to hash again (or all)
 *   target -> source  Manifest  a fresh one (whole namespace), ManifestEnd
 *   either            Fail      message
 * An online verify (skctl verify) opens the same connection with VerifyHello instead:
 *   target -> source  HashRequest paths, HashRequestEnd u8 all   (pass 1: all; pass 2:
 *                     the paths that differed, possibly none)
 *   source -> target  Manifest  those entries hashed whole, ManifestEnd u64 barrier: the
 *                     seq of a barrier submitted after the scan; the target compares once
 *                     it applied it
 * After the hellos each frame carries the receiving side's nonce as incarnation and a
 * per-direction sequence 1, 2, ...: a frame recorded from another connection is refused.
 */
/* 2: session keys, sub-block hashes, VerifyReport (1: no version in the hello). */
constexpr uint16_t kControlVersion = 2;

enum class ControlFrame : uint8_t {
	Hello = 0x20,
	Challenge = 0x21,
	Manifest = 0x22,
	ManifestEnd = 0x23,
	Progress = 0x24,
	Rescan = 0x25,
	Done = 0x26,
	Fail = 0x27,
	Want = 0x28,		/* source -> target: paths + block ranges to hash */
	WantEnd = 0x29,		/* u8: 1 = hash every block of every file */
	HashRequest = 0x2a,	/* source -> target: paths to hash whole */
	HashRequestEnd = 0x2b,
	VerifyHello = 0x2c,	/* target -> source: an online verify instead of a resync */
	VerifyReport = 0x2d,	/* target -> source, last: the verify's JSON report */
};

class ControlChannel
{
public:
	/* Takes ownership of fd. */
	static Result<std::unique_ptr<ControlChannel>> create(int fd, const ClusterKey &key, uint64_t clusterId,
							      const std::string &module, NodeId self);
	~ControlChannel();

	/* Target side: send hello (Hello or VerifyHello), read Challenge. Source side:
	 * read that hello, send Challenge. */
	Status handshakeTarget(std::chrono::milliseconds timeout, ControlFrame hello = ControlFrame::Hello);
	Status handshakeSource(std::chrono::milliseconds timeout, ControlFrame hello = ControlFrame::Hello);

	Status send(ControlFrame type, std::span<const uint8_t> payload);
	/* Reads one frame; timeout 0 = wait forever (until shutdown()). */
	Status recv(ControlFrame *type, std::vector<uint8_t> *payload, std::chrono::milliseconds timeout);
	/* Manifest in frames of bounded size + ManifestEnd. */
	Status sendManifest(const std::vector<ManifestEntry> &entries, uint64_t lastApplied);
	/* Selection frames (Want or HashRequest) + their end frame carrying u8 full. */
	Status sendSelection(ControlFrame frame, ControlFrame end, const BlockSelection &selection, bool full);
	Status recvSelection(ControlFrame frame, ControlFrame end, BlockSelection *selection, bool *full,
			     std::chrono::milliseconds timeout);
	/* Reads Manifest frames up to ManifestEnd. */
	Status recvManifest(std::vector<ManifestEntry> *entries, uint64_t *lastApplied,
			    std::chrono::milliseconds timeout);
	/* Unblocks a recv() in another thread. */
	void shutdown();
	int fd() const { return fd_; }

private:
	ControlChannel() = default;
	Status readExact(uint8_t *buf, size_t len, std::chrono::milliseconds timeout);

	int fd_ = -1;
	/* One each way: send() and recv() may run in two threads. */
	std::unique_ptr<WireCodec> sendCodec_;
	std::unique_ptr<WireCodec> recvCodec_;
	std::mutex sendMutex_;
	std::string module_;
	NodeId self_ = 0;
	uint64_t localNonce_ = 0;
	uint64_t peerNonce_ = 0;
	uint64_t sendSeq_ = 0;
	uint64_t recvSeq_ = 0;
};

/* The type of the first frame waiting on fd (MSG_PEEK) when it opens a connection:
 * a control Hello or VerifyHello, or the stream's Hello (kStreamHello); 0 for
 * anything else or nothing in time. */
constexpr uint8_t kStreamHello = 0x10;	/* StreamFrame::Hello (stream.h) */
uint8_t peekHello(int fd, std::chrono::milliseconds timeout);

} /* namespace sk::repl */
