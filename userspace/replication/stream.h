/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The replication stream over one TCP connection: ReplicationSender (PRIMARY, an
 * OpSink) queues, batches and sends ops and tracks acks; ReplicationReceiver
 * (SECOND) authenticates, decodes and applies them in order and acks.
 */
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/key.h"
#include "cluster/wire.h"
#include "core/result.h"
#include "replication/apply.h"
#include "replication/op.h"

namespace sk::repl {

/*
 * Protocol (frames are cluster/wire.h frames, types in its replication range;
 * payload integers little-endian):
 *   Hello  (both sides, first frame)  u16 version, u8 role (1 sender, 2 receiver),
 *          u8 0, u64 nonce, u64 epoch, u64 seq.
 *          Sender: seq = oldest op it still holds. Receiver: epoch and seq = the
 *          stream epoch and last seq it applied (0, 0 when blank).
 *   Start  (sender)  u64 epoch, u64 startSeq: the receiver adopts the epoch and
 *          expects startSeq next.
 *   Ops    (sender)  encoded ops back to back (op_codec.h), consecutive seqs.
 *   Ack    (receiver, after each Ops frame)  u64 applied, u64 durable: every op up
 *          to `applied` is applied, every op up to `durable` is on stable storage
 *          (advanced by durable Barriers).
 *   Error  (receiver, then it closes)  u64 seq, i32 errno, u16 length, message: the
 *          op the target could not apply.
 *   VerifyAsk  (sender, any time after Start, no payload): the receiver's owner is
 *          asked to run an online verify (it dials the sender for it).
 * Connection binding: each side's Hello carries a random nonce (also in its header
 * incarnation, sequence 0). Every later frame carries the PEER's nonce as its
 * incarnation and a per-connection sequence 1, 2, 3...: a frame recorded from
 * another connection, reordered or replayed, is refused. Any frame that fails
 * authentication or these checks closes the connection with a logged reason; the
 * receiver also drops a connection that does not finish hello + start in time.
 * Resume: if the receiver's epoch is the sender's and the sender still holds the op
 * after the receiver's last applied seq, the stream resumes there (nothing is
 * applied twice, nothing lost). Otherwise the sender restarts from the oldest op
 * it holds and calls onResyncNeeded, unless this is a blank receiver and the
 * sender holds its whole epoch from the first op (a fresh pair).
 * Epoch: random per sender, renewed by endAlone().
 * I/O: two threads per connection (writer, ack reader) on the sender and one on
 * the receiver, each sending and receiving through an io_uring of its own (plain
 * syscalls where io_uring is disabled). Frames are authenticated;
 * with "tls" the fd handed to attach() is a tls_pipe.h plaintext end.
 */
enum class StreamFrame : uint8_t {
	Hello = 0x10,
	Start = 0x11,
	Ops = 0x12,
	Ack = 0x13,
	Error = 0x14,
	VerifyAsk = 0x15,
};
/* 2: GMAC session keys after the hellos, VerifyAsk. */
constexpr uint16_t kStreamVersion = 2;

struct StreamConfig {
	uint64_t clusterId = 0;		/* clusterIdFromName() */
	std::string module;
	NodeId localNode = 0;
	NodeId peerNode = 0;		/* 0: accept any sender id (tests) */
};

/* Upper bounds (us) of the barrier latency histogram buckets. */
inline constexpr std::array<uint64_t, 24> kBarrierBucketsUs = {
	50, 100, 150, 200, 300, 400, 500, 650, 800, 1000, 1500, 2000,
	3000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};
/* Counts by bucket, plus one for everything slower than the last bound. */
using BarrierLatencyHist = std::array<uint64_t, kBarrierBucketsUs.size() + 1>;
/* The q-quantile (0..1) of a barrierLatencyHist in us, interpolated within its bucket;
 * past the last bound it is that bound. 0 when empty. */
double barrierLatencyQuantileUs(const BarrierLatencyHist &hist, double q);

class ReplicationSender : public OpSink
{
public:
	struct Options {
		StreamConfig stream;
		/* Encoded bytes held (queued or sent, not yet acked) before submit() blocks. */
		size_t queueLimitBytes = 64u << 20;
		/* Target payload of one Ops frame: many small ops share a frame. */
		size_t batchBytes = 1u << 20;
		/* How long ops nobody waits for may be held back to share a frame with
		 * those that follow (a write, its times, then the fsync's barrier: one
		 * frame, one ack). A barrier, a wait on an unsent op or a full frame
		 * sends at once. 0: every op goes as soon as it is queued. */
		std::chrono::microseconds corkDelay{ 500 };
	};

	struct Counters {
		uint64_t ops = 0;		/* submitted, incl. barriers */
		uint64_t bytes = 0;		/* encoded op bytes submitted */
		uint64_t frames = 0;		/* Ops frames sent */
		uint64_t acks = 0;
		uint64_t appliedSeq = 0;
		uint64_t durableSeq = 0;
		uint64_t lagOps = 0;		/* submitted while streaming, not yet acked */
		uint64_t lagBytes = 0;
		uint64_t barriers = 0;
		uint64_t barriersAcked = 0;
		uint64_t barrierLatencyNsSum = 0;
		uint64_t barrierLatencyNsMax = 0;
		uint64_t barriersReleasedAlone = 0;	/* waits ended by ALONE, not by an ack */
		/* Completed barriers (acked or released by ALONE) by latency: [i] counts
		 * those <= kBarrierBucketsUs[i] (not cumulative); the last one counts
		 * everything slower. The sum and max cover the same barriers. */
		BarrierLatencyHist barrierLatencyHist{};
		uint64_t opsWhileAlone = 0;
		uint64_t blockedSubmits = 0;	/* submits that had to wait for queue space */
		uint64_t refusedOps = 0;	/* invalid ops (submit returned 0) */
		uint64_t reusedBuffers = 0;	/* ops encoded into a recycled buffer (takeBuffer) */
		uint64_t connections = 0;
		uint64_t rejectedFrames = 0;
	};

	static Result<std::unique_ptr<ReplicationSender>> create(const ClusterKey &key, const Options &options);
	~ReplicationSender() override;
	ReplicationSender(const ReplicationSender &) = delete;
	ReplicationSender &operator=(const ReplicationSender &) = delete;

	/*
	 * OpSink. submit() returns the op's seq (the last one when a large Write is
	 * split), or 0 when the op is invalid (bad path...): it was not queued and the
	 * caller must treat it as an error. Blocks while the queue is full, unless ALONE.
	 */
	uint64_t submit(Op &&op) override;
	uint64_t submitWrite(Op &&op, std::string_view data) override;
	uint64_t submitBarrier(bool durable) override;
	/* 0 when acked (durably for a durable barrier) or ALONE; -ESHUTDOWN when destroyed. */
	int waitAcked(uint64_t seq) override;
	/* Same with a bound: -ETIMEDOUT when it ran out (tests, diagnostics). */
	int waitAckedFor(uint64_t seq, std::chrono::milliseconds timeout);

	/*
	 * Takes ownership of a connected socket (closed on failure too) and starts the
	 * handshake on it. -EBUSY while another connection is live, -EPERM while ALONE
	 * (endAlone() first). Dialing and retrying belong to the caller.
	 */
	int attach(int fd);
	/* Breaks the current connection (peer unreachable); waiters keep waiting. */
	void detach();
	bool streaming() const;
	/* Sends VerifyAsk on the live stream (soon, by the writer thread); -ENOTCONN
	 * while not streaming. */
	int requestVerify();

	/*
	 * The node went ALONE: pending and future waits complete with 0, the queue is
	 * dropped, and ops are only counted and handed to onOpWhileAlone (the dirty
	 * tracker). Safe to call more than once.
	 */
	void goneAlone();
	/* Leaves ALONE: a new epoch starts with the next op (the peer needs a resync first). */
	void endAlone();
	bool alone() const;

	/*
	 * Hooks, called from the stream's threads (or the submitting thread for
	 * onOpWhileAlone) without its lock held: keep them short. They may call
	 * goneAlone()/detach() but must not wait for acks.
	 */
	void setOnOpWhileAlone(std::function<void(const Op &)> cb);
	void setOnDisconnected(std::function<void(const std::string &reason)> cb);
	void setOnResyncNeeded(std::function<void(uint64_t peerEpoch, uint64_t peerLastApplied)> cb);
	void setOnPeerError(std::function<void(uint64_t seq, int error, const std::string &message)> cb);

	Counters counters() const;
	uint64_t epoch() const;

private:
	struct Entry {
		uint64_t seq;
		std::shared_ptr<const std::vector<uint8_t>> bytes;
		uint64_t cumBytes;	/* enqueuedBytes_ with this entry */
		std::chrono::steady_clock::time_point queued;
	};
	struct Conn;

	ReplicationSender(ClusterKey key, const Options &options);
	/* writeData: a Write's bytes apart from op (submitWrite), or null. */
	uint64_t enqueue(Op &&op, bool durableBarrier, const std::string_view *writeData = nullptr);
	/* Encode buffers of acked ops, reused: a fresh 1 MiB buffer per write means
	 * fresh pages (faults and zeroing) whenever the allocator trims its heap. */
	std::shared_ptr<std::vector<uint8_t>> takeBuffer();
	static constexpr size_t kSpareBuffers = 16;
	static constexpr size_t kSpareMinCapacity = 64u << 10;
	/* Lock order: mutex_, then spareMutex_. */
	mutable std::mutex spareMutex_;
	std::vector<std::shared_ptr<std::vector<uint8_t>>> spare_;	/* spareMutex_ */
	uint64_t reused_ = 0;	/* spareMutex_ */
	bool ackedLocked(uint64_t seq) const;
	/* The writer may send now (see Options::corkDelay); else *until (if asked)
	 * is when it may, left alone when nothing waits to be sent. */
	bool uncorkedLocked(std::chrono::steady_clock::time_point *until = nullptr) const;
	/* A caller waits for seq: have it sent without the cork's delay. */
	void urgeLocked(uint64_t seq);
	/* A barrier's wait from submitted to now, into the latency counters. */
	void recordBarrierLocked(std::chrono::steady_clock::time_point submitted,
				 std::chrono::steady_clock::time_point now);
	void writerMain(Conn *conn);
	void readerMain(Conn *conn);
	void connDead(Conn *conn, const std::string &reason);
	void onAck(uint64_t applied, uint64_t durable);
	void retire(std::unique_ptr<Conn> conn);

	ClusterKey key_;
	Options options_;

	/* Lock order: attachMutex_ (serialises attach()), then mutex_; hooks are called
	 * with mutex_ released. */
	std::mutex attachMutex_;
	mutable std::mutex mutex_;
	/* Two conditions on mutex_, so nobody is woken for what is not theirs: the
	 * writer waits on sendCv_ (ops to send, an urged wait, a verify request, the
	 * connection's state); submitters waiting for queue space and callers waiting
	 * for acks wait on ackCv_. Changes of stopping_, alone_ or the connection
	 * notify both (notifyAll()). */
	std::condition_variable sendCv_;
	std::condition_variable ackCv_;
	void notifyAll();
	bool stopping_ = false;
	bool alone_ = false;
	uint64_t epoch_ = 0;
	uint64_t epochStart_ = 1;	/* first seq of this epoch */
	uint64_t nextSeq_ = 1;
	uint64_t appliedAck_ = 0;
	uint64_t durableAck_ = 0;
	uint64_t sendCursor_ = 1;	/* next seq the writer sends */
	std::deque<Entry> queue_;	/* consecutive seqs, oldest unacked first */
	size_t queuedBytes_ = 0;
	uint64_t enqueuedBytes_ = 0;	/* all time, for Entry::cumBytes */
	uint64_t urgentSeq_ = 0;	/* send up to here without corking */
	struct PendingBarrier {
		bool durable;
		std::chrono::steady_clock::time_point submitted;
		bool waited = false;	/* somebody waited for it (urgeLocked) */
	};
	/* Barriers not acked yet, by seq. */
	std::map<uint64_t, PendingBarrier> pendingBarriers_;
	Counters counters_;
	std::unique_ptr<Conn> conn_;
	/* Connections dropped from their own thread (a hook), joined later. */
	std::vector<std::unique_ptr<Conn>> retired_;

	std::function<void(const Op &)> onOpWhileAlone_;
	std::function<void(const std::string &)> onDisconnected_;
	std::function<void(uint64_t, uint64_t)> onResyncNeeded_;
	std::function<void(uint64_t, int, const std::string &)> onPeerError_;
};

class ReplicationReceiver
{
public:
	struct Options {
		StreamConfig stream;
		/* A connection that has not completed hello + start by then is dropped, so an
		 * unauthenticated client cannot hold the single connection slot. */
		std::chrono::milliseconds handshakeTimeout{ 10000 };
	};

	struct Counters {
		uint64_t ops = 0;
		uint64_t bytes = 0;		/* payload bytes received */
		uint64_t frames = 0;
		uint64_t acks = 0;
		uint64_t durableFlushes = 0;
		uint64_t connections = 0;
		uint64_t rejectedFrames = 0;	/* connections closed for a bad frame */
		uint64_t applyErrors = 0;
		uint64_t writeBehindDropped = 0;	/* Applier::Counters::writeBehindDropped */
	};

	static Result<std::unique_ptr<ReplicationReceiver>> create(const ClusterKey &key, const Options &options,
								    std::unique_ptr<Applier> applier);
	~ReplicationReceiver();
	ReplicationReceiver(const ReplicationReceiver &) = delete;
	ReplicationReceiver &operator=(const ReplicationReceiver &) = delete;

	/* Starts a thread that accepts connections on listenFd (not owned) one at a time. */
	int start(int listenFd);
	/* Stops the thread and closes the live connection. */
	void stop();
	/* Serves one connected socket (owned) in the calling thread until it closes. */
	void serve(int fd);

	uint64_t lastApplied() const;
	uint64_t epoch() const;
	/* Applier::setResyncing() (safe from any thread). */
	void setResyncing(bool on);
	/* Why the last connection was closed ("" while none was). */
	std::string lastCloseReason() const;
	Counters counters() const;
	/* Called on the serving thread for each VerifyAsk: must not block. Set before start(). */
	void setOnVerifyAsked(std::function<void()> cb) { onVerifyAsked_ = std::move(cb); }

private:
	ReplicationReceiver(ClusterKey key, const Options &options, std::unique_ptr<Applier> applier);
	void acceptMain(int listenFd);
	std::string serveConn(int fd);

	ClusterKey key_;
	Options options_;
	std::unique_ptr<Applier> applier_;

	mutable std::mutex mutex_;
	bool stopping_ = false;
	int liveFd_ = -1;
	int wakeFd_ = -1;	/* eventfd: wakes the accept loop on stop() */
	std::thread thread_;
	/* Written by the serving thread only; read by others under mutex_. */
	uint64_t epoch_ = 0;
	uint64_t lastApplied_ = 0;
	uint64_t durable_ = 0;
	std::string lastCloseReason_;
	Counters counters_;
	std::function<void()> onVerifyAsked_;
};

/* Loopback/test helpers: a listening TCP socket on addr:port (port 0 = any) and a dialer. */
Result<int> listenTcp(const std::string &addr, uint16_t port, uint16_t *boundPort);
Result<int> connectTcp(const std::string &addr, uint16_t port);
/* TCP_NODELAY plus keepalive and user timeout: a dead peer is noticed within seconds
 * even when nothing is being sent. */
void tuneSocket(int fd);

} /* namespace sk::repl */
