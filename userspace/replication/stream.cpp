/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Replication stream: sender queue/backpressure/ack tracking and the receiver's
 * authenticate-decode-apply-ack loop. One thread per direction, each with its
 * socket I/O on an io_uring of its own (see stream.h for the protocol and why).
 */
#include "replication/stream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <liburing.h>
#include <openssl/rand.h>

#include "core/le_bytes.h"
#include "core/log.h"
#include "replication/op_codec.h"

namespace sk::repl {

namespace {

const LogCategory kLog("repl.stream");

constexpr uint8_t kRoleSender = 1;
constexpr uint8_t kRoleReceiver = 2;
constexpr size_t kHelloSize = 28;
constexpr size_t kMaxErrorMessage = 512;
/* One frame holds a batch, or at least one maximal op. */
constexpr size_t kMaxFramePayload = kMaxStreamPayload;
/* The sender's bound for the receiver's hello (the receiver has Options::handshakeTimeout). */
constexpr std::chrono::milliseconds kHandshakeTimeout{ 10000 };
static_assert(kMaxEncodedOp < kMaxFramePayload);

uint64_t randomU64()
{
	uint64_t v = 0;
	while (v == 0) {
		if (RAND_bytes(reinterpret_cast<unsigned char *>(&v), sizeof(v)) != 1)
			v = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
	}
	return v;
}

/* Bounds blocking reads on fd (0: no bound, e.g. once the peer is authenticated). */
void setRecvTimeout(int fd, std::chrono::milliseconds timeout)
{
	long ms = static_cast<long>(timeout.count());
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/*
 * One thread's socket I/O on an io_uring of its own (DESIGN: replication sockets
 * on io_uring). Each call queues one request, a receive with a bound also a
 * linked timeout, and waits for its completion, so frames stay in order and the
 * caller's buffers are the kernel's only during the call, as with the plain
 * calls. Where a ring cannot be set up (no memory, a seccomp policy) the plain
 * syscalls do the same, with SO_RCVTIMEO for the bound.
 * shutdown(fd) from another thread ends a waiting request (EOF or an error).
 */
class SocketIo
{
public:
	explicit SocketIo(int fd) : fd_(fd) {}
	~SocketIo()
	{
		if (ring_)
			io_uring_queue_exit(ring_.get());
	}
	SocketIo(const SocketIo &) = delete;
	SocketIo &operator=(const SocketIo &) = delete;

	/* Bounds each receive (0: no bound, e.g. once the peer is authenticated).
	 * Any thread, before the owner's first call or from the owner. */
	void setRecvBound(std::chrono::milliseconds bound)
	{
		bound_ = bound;
		/* For the plain calls; a ring's requests do not look at it. */
		setRecvTimeout(fd_, bound);
	}

	/* Sends every byte of iov[0..count), which it consumes (IOV_MAX at a time). */
	int sendAll(struct iovec *iov, size_t count)
	{
		while (count > 0) {
			if (iov->iov_len == 0) {
				iov++;
				count--;
				continue;
			}
			struct msghdr msg = {};
			msg.msg_iov = iov;
			msg.msg_iovlen = std::min<size_t>(count, IOV_MAX);
			ssize_t n = once([&](io_uring_sqe *sqe) {
				io_uring_prep_sendmsg(sqe, fd_, &msg, MSG_NOSIGNAL | MSG_WAITALL);
			}, [&] { return sendmsg(fd_, &msg, MSG_NOSIGNAL); }, false);
			if (n == -EINTR)
				continue;
			if (n < 0)
				return static_cast<int>(n);
			size_t left = static_cast<size_t>(n);
			while (left > 0 && left >= iov->iov_len) {
				left -= iov->iov_len;
				iov++;
				count--;
			}
			if (left > 0) {
				iov->iov_base = static_cast<uint8_t *>(iov->iov_base) + left;
				iov->iov_len -= left;
			}
		}
		return 0;
	}

	/* Exactly size bytes: -ECONNRESET at EOF, -EAGAIN when the bound ran out. */
	int recvAll(uint8_t *data, size_t size)
	{
		while (size > 0) {
			ssize_t n = once([&](io_uring_sqe *sqe) { io_uring_prep_recv(sqe, fd_, data, size, MSG_WAITALL); },
					 [&] { return recv(fd_, data, size, 0); }, true);
			if (n == -EINTR)
				continue;
			if (n < 0)
				return static_cast<int>(n);
			if (n == 0)
				return -ECONNRESET;
			data += n;
			size -= static_cast<size_t>(n);
		}
		return 0;
	}

private:
	static constexpr uint64_t kRequest = 1;
	static constexpr uint64_t kTimeout = 2;

	/*
	 * Set up by the owner's first call, in its own thread: the ring is then that
	 * thread's alone (SINGLE_ISSUER) and its completions run only while it waits
	 * for them (DEFER_TASKRUN), never interrupting it elsewhere. Kernels before 6.1
	 * get a plain ring; no io_uring at all, the plain calls.
	 */
	bool ring()
	{
		if (ring_ || triedRing_)
			return ring_ != nullptr;
		triedRing_ = true;
		auto ring = std::make_unique<io_uring>();
		int ret = io_uring_queue_init(4, ring.get(), IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
		if (ret == -EINVAL)
			ret = io_uring_queue_init(4, ring.get(), 0);
		if (ret == 0) {
			ring_ = std::move(ring);
			return true;
		}
		static std::atomic<bool> warned{ false };
		if (!warned.exchange(true))
			logWarn(kLog, "io_uring unavailable for replication sockets ({}): using plain send/recv",
				strerror(-ret));
		return false;
	}

	/* One request: prep fills its sqe on the ring, plain makes the call without
	 * one. bounded: under the receive bound. The result, or a negative errno. */
	template<typename Prep, typename Plain>
	ssize_t once(Prep prep, Plain plain, bool bounded)
	{
		if (!ring()) {
			ssize_t n = plain();
			return n < 0 ? -errno : n;
		}
		/* Every earlier entry was reaped: a 4-entry ring has room for two. */
		io_uring_sqe *sqe = io_uring_get_sqe(ring_.get());
		prep(sqe);
		return complete(sqe, bounded ? bound_.load() : std::chrono::milliseconds(0));
	}

	/* Submits sqe (plus a linked timeout if bound > 0), waits for every completion,
	 * returns the request's result (-EAGAIN when the bound ran out). */
	ssize_t complete(io_uring_sqe *sqe, std::chrono::milliseconds bound)
	{
		io_uring_sqe_set_data64(sqe, kRequest);
		unsigned expected = 1;
		__kernel_timespec ts{};
		if (bound.count() > 0) {
			sqe->flags |= IOSQE_IO_LINK;
			ts.tv_sec = bound.count() / 1000;
			ts.tv_nsec = (bound.count() % 1000) * 1000000;
			io_uring_sqe *t = io_uring_get_sqe(ring_.get());
			io_uring_prep_link_timeout(t, &ts, 0);
			io_uring_sqe_set_data64(t, kTimeout);
			expected = 2;
		}
		int ret = io_uring_submit(ring_.get());
		if (ret < 0 || static_cast<unsigned>(ret) != expected) {
			/* Not all of it went in (no memory...): reap what did, then drop the
			 * ring, so the entries left in its queue, which point into this frame,
			 * are never submitted. This connection fails; later calls use plain
			 * syscalls. */
			reap(ret > 0 ? static_cast<unsigned>(ret) : 0);
			io_uring_queue_exit(ring_.get());
			ring_.reset();
			logWarn(kLog, "io_uring submit on a replication socket: {}",
				ret < 0 ? strerror(-ret) : "partial");
			return ret < 0 ? ret : -EIO;
		}
		return reap(expected);
	}

	/* Waits for n completions; the request's result (-EAGAIN if its timeout
	 * cancelled it). Never returns with a request in flight. */
	ssize_t reap(unsigned n)
	{
		ssize_t result = -EIO;
		bool timedOut = false;
		for (unsigned seen = 0; seen < n;) {
			io_uring_cqe *cqe;
			int ret = io_uring_wait_cqe(ring_.get(), &cqe);
			if (ret == -EINTR)
				continue;
			if (ret < 0) {
				/* Cannot happen on a live ring; the request may still hold the
				 * buffer, so never return with it in flight. */
				logError(kLog, "io_uring wait on a replication socket: {}", strerror(-ret));
				std::abort();
			}
			if (io_uring_cqe_get_data64(cqe) == kRequest)
				result = cqe->res;
			else
				timedOut = cqe->res == -ETIME;
			io_uring_cqe_seen(ring_.get(), cqe);
			seen++;
		}
		if (timedOut && result == -ECANCELED)
			return -EAGAIN;
		return result;
	}

	int fd_;
	std::unique_ptr<io_uring> ring_;
	bool triedRing_ = false;
	std::atomic<std::chrono::milliseconds> bound_{ std::chrono::milliseconds(0) };
};

/* One side of a connection: frame codec plus the sequence/nonce binding rules. */
class FrameIo
{
public:
	/* ways: Receive for a side that only reads (no sending key in its session). */
	FrameIo(int fd, std::unique_ptr<WireCodec> codec, const StreamConfig &cfg,
		WireCodec::Ways ways = WireCodec::Ways::Both)
		: io_(fd), codec_(std::move(codec)), cfg_(cfg), ways_(ways) {}

	/* See SocketIo::setRecvBound. */
	void setRecvBound(std::chrono::milliseconds bound) { io_.setRecvBound(bound); }

	int send(StreamFrame type, std::span<const uint8_t> payload) { return send(type, { &payload, 1 }); }

	/* The receiver's Ack: everything up to applied is applied, up to durable flushed. */
	int sendAck(uint64_t applied, uint64_t durable)
	{
		std::vector<uint8_t> ack;
		le::append<uint64_t>(&ack, applied);
		le::append<uint64_t>(&ack, durable);
		return send(StreamFrame::Ack, ack);
	}

	/*
	 * One frame whose payload is parts, concatenated: sent as they are (no copy).
	 * Hello frames carry our own nonce and sequence 0; all others the peer's nonce.
	 */
	int send(StreamFrame type, std::span<const std::span<const uint8_t>> parts)
	{
		FrameHeader h;
		h.type = static_cast<uint8_t>(type);
		h.sender = cfg_.localNode;
		h.module = cfg_.module;
		if (type == StreamFrame::Hello) {
			h.incarnation = myNonce;
			h.sequence = 0;
		} else {
			h.incarnation = peerNonce_;
			h.sequence = ++sendSeq_;
		}
		uint8_t header[kWireHeaderSize];
		uint8_t mac[kWireMacSize];
		int ret = codec_->seal(h, parts, header, mac, kMaxFramePayload);
		if (ret < 0)
			return ret;
		iov_.clear();
		iov_.push_back({ header, sizeof(header) });
		for (std::span<const uint8_t> part : parts)
			iov_.push_back({ const_cast<uint8_t *>(part.data()), part.size() });
		iov_.push_back({ mac, sizeof(mac) });
		return io_.sendAll(iov_.data(), iov_.size());
	}

	/*
	 * Reads one frame. Returns 0 with *type and payload() set, or a negative errno
	 * with *reason saying why the connection must close.
	 */
	int receive(StreamFrame *type, std::string *reason)
	{
		/* Grown, never shrunk: no zero-filling of every frame. */
		if (rbuf_.size() < kWireHeaderSize)
			rbuf_.resize(kWireHeaderSize);
		int ret = io_.recvAll(rbuf_.data(), kWireHeaderSize);
		if (ret < 0) {
			*reason = ret == -ECONNRESET ? "peer closed the connection" : fmt::format("recv: {}", strerror(-ret));
			return ret;
		}
		size_t size = 0;
		DropReason d = WireCodec::frameSize(rbuf_, &size, kMaxFramePayload);
		if (d != DropReason::None) {
			*reason = fmt::format("bad frame header: {}", dropReasonName(d));
			return -EBADMSG;
		}
		if (rbuf_.size() < size)
			rbuf_.resize(size);
		ret = io_.recvAll(rbuf_.data() + kWireHeaderSize, size - kWireHeaderSize);
		if (ret < 0) {
			*reason = fmt::format("connection lost inside a frame: {}", strerror(-ret));
			return ret;
		}
		DecodedFrame f;
		d = codec_->decode({ rbuf_.data(), size }, &f, kMaxFramePayload);
		if (d != DropReason::None) {
			*reason = fmt::format("frame refused: {}", dropReasonName(d));
			return -EBADMSG;
		}
		uint8_t t = f.header.type;
		if (t < static_cast<uint8_t>(StreamFrame::Hello) || t > static_cast<uint8_t>(StreamFrame::VerifyAsk)) {
			*reason = fmt::format("unexpected frame type {:#x}", t);
			return -EBADMSG;
		}
		if (f.header.module != cfg_.module) {
			*reason = fmt::format("frame for module '{}', expected '{}'", f.header.module, cfg_.module);
			return -EBADMSG;
		}
		if (cfg_.peerNode != 0 && f.header.sender != cfg_.peerNode) {
			*reason = fmt::format("frame from node {}, expected {}", f.header.sender, cfg_.peerNode);
			return -EBADMSG;
		}
		*type = static_cast<StreamFrame>(t);
		if (*type == StreamFrame::Hello) {
			if (gotHello_ || f.header.sequence != 0) {
				*reason = "unexpected hello";
				return -EBADMSG;
			}
			gotHello_ = true;
			if (setPeerNonce(f.header.incarnation) < 0) {
				*reason = "hello with our own nonce";
				return -EBADMSG;
			}
		} else if (!gotHello_ || f.header.incarnation != myNonce || f.header.sequence != recvSeq_ + 1) {
			*reason = fmt::format("frame not bound to this connection (nonce {:#x}, seq {}; expected {:#x}, {})",
					      f.header.incarnation, f.header.sequence, myNonce, recvSeq_ + 1);
			return -EBADMSG;
		} else {
			recvSeq_++;
		}
		payload_ = f.payload;
		return 0;
	}

	std::span<const uint8_t> payload() const { return payload_; }

	/* Both nonces known: later frames use this connection's session keys. */
	int setPeerNonce(uint64_t nonce)
	{
		peerNonce_ = nonce;
		return codec_->startSession(myNonce, peerNonce_, ways_);
	}
	uint64_t peerNonce() const { return peerNonce_; }

	uint64_t myNonce = randomU64();

private:
	SocketIo io_;
	std::unique_ptr<WireCodec> codec_;
	StreamConfig cfg_;
	WireCodec::Ways ways_;
	std::vector<struct iovec> iov_;
	std::vector<uint8_t> rbuf_;
	std::span<const uint8_t> payload_;
	uint64_t peerNonce_ = 0;
	uint64_t sendSeq_ = 0;
	uint64_t recvSeq_ = 0;
	bool gotHello_ = false;
};

struct Hello {
	uint8_t role = 0;
	uint64_t nonce = 0;
	uint64_t epoch = 0;
	uint64_t seq = 0;
};

std::vector<uint8_t> encodeHello(const Hello &h)
{
	std::vector<uint8_t> out;
	le::append<uint16_t>(&out, kStreamVersion);
	le::append<uint8_t>(&out, h.role);
	le::append<uint8_t>(&out, 0);
	le::append<uint64_t>(&out, h.nonce);
	le::append<uint64_t>(&out, h.epoch);
	le::append<uint64_t>(&out, h.seq);
	return out;
}

bool decodeHello(std::span<const uint8_t> in, uint8_t wantRole, uint64_t nonce, Hello *h, std::string *reason)
{
	if (in.size() != kHelloSize) {
		*reason = "malformed hello";
		return false;
	}
	uint64_t version = le::get<uint16_t>(in.data());
	if (version != kStreamVersion) {
		*reason = fmt::format("stream version {} not supported (we speak {})", version, kStreamVersion);
		return false;
	}
	h->role = in[2];
	h->nonce = le::get<uint64_t>(in.data() + 4);
	h->epoch = le::get<uint64_t>(in.data() + 12);
	h->seq = le::get<uint64_t>(in.data() + 20);
	if (h->role != wantRole || in[3] != 0 || h->nonce != nonce) {
		*reason = "malformed hello (role, reserved byte or nonce)";
		return false;
	}
	return true;
}

} /* namespace */

/* Detects a dead peer within seconds even when nothing is being sent. */
void tuneSocket(int fd)
{
	int one = 1, idle = 5, intvl = 1, cnt = 3;
	unsigned int userTimeoutMs = 10000;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &userTimeoutMs, sizeof(userTimeoutMs));
}

/* ---- Sender ---- */

struct ReplicationSender::Conn {
	int fd = -1;
	bool dead = false;
	bool streaming = false;
	bool verifyAsk = false;		/* a VerifyAsk for the writer to send */
	std::unique_ptr<FrameIo> out;	/* writer thread */
	std::unique_ptr<FrameIo> in;	/* reader thread */
	std::thread writer;
	std::thread reader;

	bool isOwnThread() const
	{
		auto self = std::this_thread::get_id();
		return writer.get_id() == self || reader.get_id() == self;
	}

	/* Called without mutex_: the threads need it to finish. */
	void join()
	{
		if (fd >= 0)
			shutdown(fd, SHUT_RDWR);
		if (writer.joinable())
			writer.join();
		if (reader.joinable())
			reader.join();
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
};

Result<std::unique_ptr<ReplicationSender>> ReplicationSender::create(const ClusterKey &key, const Options &options)
{
	auto copy = ClusterKey::fromBytes(key.bytes());
	if (!copy)
		return copy.error();
	if (options.stream.module.size() > kMaxModuleName)
		return makeError(-EINVAL, "module name too long for the wire format");
	return std::unique_ptr<ReplicationSender>(new ReplicationSender(std::move(copy.value()), options));
}

ReplicationSender::ReplicationSender(ClusterKey key, const Options &options)
	: key_(std::move(key)), options_(options), epoch_(randomU64())
{
	/* A batch plus one maximal op must fit a frame (the first op of a batch always goes). */
	options_.batchBytes = std::clamp<size_t>(options_.batchBytes, 1, kMaxFramePayload - kMaxEncodedOp);
}

void ReplicationSender::notifyAll()
{
	sendCv_.notify_all();
	ackCv_.notify_all();
}

ReplicationSender::~ReplicationSender()
{
	std::unique_ptr<Conn> conn;
	std::vector<std::unique_ptr<Conn>> graveyard;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		stopping_ = true;
		conn = std::move(conn_);
		graveyard.swap(retired_);
	}
	notifyAll();
	if (conn)
		conn->join();
	for (auto &c : graveyard)
		c->join();
}

void ReplicationSender::setOnOpWhileAlone(std::function<void(const Op &)> cb)
{
	std::lock_guard<std::mutex> lock(mutex_);
	onOpWhileAlone_ = std::move(cb);
}

void ReplicationSender::setOnDisconnected(std::function<void(const std::string &)> cb)
{
	std::lock_guard<std::mutex> lock(mutex_);
	onDisconnected_ = std::move(cb);
}

void ReplicationSender::setOnResyncNeeded(std::function<void(uint64_t, uint64_t)> cb)
{
	std::lock_guard<std::mutex> lock(mutex_);
	onResyncNeeded_ = std::move(cb);
}

void ReplicationSender::setOnPeerError(std::function<void(uint64_t, int, const std::string &)> cb)
{
	std::lock_guard<std::mutex> lock(mutex_);
	onPeerError_ = std::move(cb);
}

double barrierLatencyQuantileUs(const BarrierLatencyHist &hist, double q)
{
	uint64_t total = 0;
	for (uint64_t n : hist)
		total += n;
	if (total == 0)
		return 0;
	double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(total);
	double below = 0;
	for (size_t i = 0; i < hist.size(); i++) {
		double n = static_cast<double>(hist[i]);
		if (i == kBarrierBucketsUs.size())
			return static_cast<double>(kBarrierBucketsUs.back());
		if (below + n >= rank && n > 0) {
			double lo = i ? static_cast<double>(kBarrierBucketsUs[i - 1]) : 0.0;
			double hi = static_cast<double>(kBarrierBucketsUs[i]);
			return lo + (hi - lo) * (rank - below) / n;
		}
		below += n;
	}
	return static_cast<double>(kBarrierBucketsUs.back());
}

std::shared_ptr<std::vector<uint8_t>> ReplicationSender::takeBuffer()
{
	{
		std::lock_guard<std::mutex> lock(spareMutex_);
		if (!spare_.empty()) {
			auto b = std::move(spare_.back());
			spare_.pop_back();
			reused_++;
			return b;
		}
	}
	return std::make_shared<std::vector<uint8_t>>();
}

uint64_t ReplicationSender::enqueue(Op &&op, bool durableBarrier, const std::string_view *writeData)
{
	/* Encode outside the lock with a placeholder seq, patch the real one in below. */
	op.seq = 1;
	std::string_view data = writeData ? *writeData : std::string_view(op.data);
	auto bytes = data.size() >= kSpareMinCapacity / 2 ? takeBuffer() : std::make_shared<std::vector<uint8_t>>();
	if (encodeOp(op, data, bytes.get()) < 0) {
		std::lock_guard<std::mutex> lock(mutex_);
		counters_.refusedOps++;
		logError(kLog, "module {}: refusing invalid {} op on '{}'", options_.stream.module,
			 opTypeName(op.type), op.path);
		return 0;
	}

	std::function<void(const Op &)> aloneHook;
	uint64_t seq;
	bool wake = false;
	{
		std::unique_lock<std::mutex> lock(mutex_);
		bool counted = false;
		while (!alone_ && !stopping_ && !queue_.empty() &&
		       queuedBytes_ + bytes->size() > options_.queueLimitBytes) {
			if (!counted) {
				counters_.blockedSubmits++;
				counted = true;
			}
			ackCv_.wait(lock);
		}
		seq = nextSeq_++;
		counters_.ops++;
		counters_.bytes += bytes->size();
		if (alone_ || stopping_) {
			counters_.opsWhileAlone++;
			aloneHook = onOpWhileAlone_;
		} else {
			for (int i = 0; i < 8; i++)
				(*bytes)[4 + i] = static_cast<uint8_t>(seq >> (8 * i));
			auto now = std::chrono::steady_clock::now();
			queuedBytes_ += bytes->size();
			enqueuedBytes_ += bytes->size();
			queue_.push_back({ seq, std::move(bytes), enqueuedBytes_, now });
			if (op.type == OpType::Barrier) {
				counters_.barriers++;
				pendingBarriers_[seq] = { durableBarrier, now };
				urgentSeq_ = seq;
			}
			/* The writer needs waking when this may go now, or to time the cork
			 * when it is the first op waiting; else it is already timing it. */
			wake = sendCursor_ >= seq || uncorkedLocked();
		}
	}
	if (aloneHook) {
		op.seq = seq;
		if (writeData)
			op.data.assign(*writeData);
		aloneHook(op);
	} else if (wake) {
		sendCv_.notify_all();
	}
	return seq;
}

uint64_t ReplicationSender::submit(Op &&op)
{
	if (op.type == OpType::Barrier)
		return submitBarrier(op.durable);
	if (op.type != OpType::Write || op.data.size() <= kMaxWriteData)
		return enqueue(std::move(op), false);
	std::vector<Op> parts;
	splitOp(std::move(op), &parts);
	uint64_t seq = 0;
	for (Op &part : parts) {
		seq = enqueue(std::move(part), false);
		if (seq == 0)
			return 0;
	}
	return seq;
}

uint64_t ReplicationSender::submitWrite(Op &&op, std::string_view data)
{
	if (op.type != OpType::Write || data.size() > kMaxWriteData)
		return OpSink::submitWrite(std::move(op), data);
	return enqueue(std::move(op), false, &data);
}

uint64_t ReplicationSender::submitBarrier(bool durable)
{
	Op op;
	op.type = OpType::Barrier;
	op.durable = durable;
	return enqueue(std::move(op), durable);
}

bool ReplicationSender::uncorkedLocked(std::chrono::steady_clock::time_point *until) const
{
	if (queue_.empty() || sendCursor_ > queue_.back().seq)
		return false;
	if (options_.corkDelay.count() <= 0 || urgentSeq_ >= sendCursor_)
		return true;
	const Entry &first = queue_[std::max(sendCursor_, queue_.front().seq) - queue_.front().seq];
	if (queue_.back().cumBytes - first.cumBytes + first.bytes->size() >= options_.batchBytes)
		return true;
	auto deadline = first.queued + options_.corkDelay;
	if (until)
		*until = deadline;
	return std::chrono::steady_clock::now() >= deadline;
}

void ReplicationSender::urgeLocked(uint64_t seq)
{
	if (auto it = pendingBarriers_.find(seq); it != pendingBarriers_.end())
		it->second.waited = true;
	if (seq <= urgentSeq_)
		return;
	urgentSeq_ = seq;
	if (seq >= sendCursor_)
		sendCv_.notify_all();
}

bool ReplicationSender::ackedLocked(uint64_t seq) const
{
	if (durableAck_ >= seq)
		return true;
	if (appliedAck_ < seq)
		return false;
	auto it = pendingBarriers_.find(seq);
	return it == pendingBarriers_.end() || !it->second.durable;
}

int ReplicationSender::waitAckedFor(uint64_t seq, std::chrono::milliseconds timeout)
{
	auto deadline = std::chrono::steady_clock::now() + timeout;
	std::unique_lock<std::mutex> lock(mutex_);
	if (seq >= nextSeq_)
		return -EINVAL;
	urgeLocked(seq);
	/* Never acknowledge silently: only an ack, ALONE or shutdown ends the wait. */
	while (!alone_ && !ackedLocked(seq)) {
		if (stopping_)
			return -ESHUTDOWN;
		if (ackCv_.wait_until(lock, deadline) == std::cv_status::timeout && !alone_ && !ackedLocked(seq))
			return stopping_ ? -ESHUTDOWN : -ETIMEDOUT;
	}
	return 0;
}

int ReplicationSender::waitAcked(uint64_t seq)
{
	std::unique_lock<std::mutex> lock(mutex_);
	if (seq >= nextSeq_)
		return -EINVAL;
	urgeLocked(seq);
	ackCv_.wait(lock, [&] { return alone_ || stopping_ || ackedLocked(seq); });
	if (alone_ || ackedLocked(seq))
		return 0;
	return -ESHUTDOWN;
}

void ReplicationSender::goneAlone()
{
	std::unique_ptr<Conn> conn;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (alone_)
			return;
		alone_ = true;
		logInfo(kLog, "module {}: ALONE: releasing waiters, {} unacked ops ({} bytes) left to dirty tracking",
			options_.stream.module, queue_.size(), queuedBytes_);
		queue_.clear();
		queuedBytes_ = 0;
		/* Waits end here: the stall their callers saw counts too. */
		auto now = std::chrono::steady_clock::now();
		for (const auto &[seq, barrier] : pendingBarriers_) {
			if (!barrier.waited)
				continue;
			counters_.barriersReleasedAlone++;
			recordBarrierLocked(barrier.submitted, now);
		}
		pendingBarriers_.clear();
		if (conn_)
			conn_->dead = true;
		conn = std::move(conn_);
	}
	notifyAll();
	retire(std::move(conn));
}

void ReplicationSender::endAlone()
{
	std::lock_guard<std::mutex> lock(mutex_);
	if (!alone_)
		return;
	alone_ = false;
	epoch_ = randomU64();
	epochStart_ = nextSeq_;
	sendCursor_ = nextSeq_;
	appliedAck_ = durableAck_ = nextSeq_ - 1;
	logInfo(kLog, "module {}: leaving ALONE, new stream epoch {:#x} from seq {}", options_.stream.module,
		epoch_, epochStart_);
}

bool ReplicationSender::alone() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return alone_;
}

bool ReplicationSender::streaming() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return conn_ && conn_->streaming && !conn_->dead;
}

int ReplicationSender::requestVerify()
{
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (!conn_ || !conn_->streaming || conn_->dead || alone_)
			return -ENOTCONN;
		conn_->verifyAsk = true;
	}
	sendCv_.notify_all();
	return 0;
}

uint64_t ReplicationSender::epoch() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return epoch_;
}

ReplicationSender::Counters ReplicationSender::counters() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	Counters c = counters_;
	c.appliedSeq = appliedAck_;
	c.durableSeq = durableAck_;
	c.lagOps = queue_.size();
	c.lagBytes = queuedBytes_;
	std::lock_guard<std::mutex> spare(spareMutex_);
	c.reusedBuffers = reused_;
	return c;
}

int ReplicationSender::attach(int fd)
{
	/* One attach at a time: callers on several threads (the source's connections). */
	std::lock_guard<std::mutex> serial(attachMutex_);
	std::unique_ptr<Conn> old;
	std::vector<std::unique_ptr<Conn>> graveyard;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (stopping_ || alone_ || (conn_ && !conn_->dead)) {
			close(fd);
			return stopping_ ? -ESHUTDOWN : alone_ ? -EPERM : -EBUSY;
		}
		old = std::move(conn_);
		graveyard.swap(retired_);
	}
	if (old)
		retire(std::move(old));
	for (auto &c : graveyard)
		c->join();

	auto out = WireCodec::create(key_, options_.stream.clusterId);
	auto in = WireCodec::create(key_, options_.stream.clusterId);
	if (!out || !in) {
		close(fd);
		return -EIO;
	}
	tuneSocket(fd);
	auto conn = std::make_unique<Conn>();
	conn->fd = fd;
	conn->out = std::make_unique<FrameIo>(fd, std::move(out.value()), options_.stream);
	conn->in = std::make_unique<FrameIo>(fd, std::move(in.value()), options_.stream, WireCodec::Ways::Receive);
	/* Until the peer's hello is in (readerMain lifts it): a client that connects and
	 * says nothing does not hold the one connection slot. */
	conn->in->setRecvBound(kHandshakeTimeout);
	/* Both directions share the connection's nonces. */
	conn->in->myNonce = conn->out->myNonce;

	std::lock_guard<std::mutex> lock(mutex_);
	if (stopping_ || alone_) {
		close(fd);
		return stopping_ ? -ESHUTDOWN : -EPERM;
	}
	counters_.connections++;
	Conn *c = conn.get();
	conn_ = std::move(conn);
	c->writer = std::thread([this, c] { writerMain(c); });
	c->reader = std::thread([this, c] { readerMain(c); });
	return 0;
}

void ReplicationSender::detach()
{
	std::unique_ptr<Conn> conn;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (conn_)
			conn_->dead = true;
		conn = std::move(conn_);
	}
	notifyAll();
	if (conn) {
		logInfo(kLog, "module {}: replication connection detached", options_.stream.module);
		retire(std::move(conn));
	}
}

void ReplicationSender::retire(std::unique_ptr<Conn> conn)
{
	if (!conn)
		return;
	if (!conn->isOwnThread()) {
		conn->join();
		return;
	}
	/* Called from a hook on one of the connection's own threads: it cannot join
	 * itself, so the connection is joined by the next attach() or the destructor. */
	shutdown(conn->fd, SHUT_RDWR);
	std::lock_guard<std::mutex> lock(mutex_);
	retired_.push_back(std::move(conn));
}

void ReplicationSender::connDead(Conn *conn, const std::string &reason)
{
	std::function<void(const std::string &)> hook;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (conn->dead)
			return;
		conn->dead = true;
		conn->streaming = false;
		hook = onDisconnected_;
		logWarn(kLog, "module {}: replication connection closed: {} ({} ops unacked, waiters keep waiting)",
			options_.stream.module, reason, queue_.size());
	}
	shutdown(conn->fd, SHUT_RDWR);
	notifyAll();
	if (hook)
		hook(reason);
}

void ReplicationSender::writerMain(Conn *conn)
{
	FrameIo &io = *conn->out;
	Hello hello;
	hello.role = kRoleSender;
	hello.nonce = io.myNonce;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		hello.epoch = epoch_;
		hello.seq = queue_.empty() ? nextSeq_ : queue_.front().seq;
	}
	int ret = io.send(StreamFrame::Hello, encodeHello(hello));
	if (ret < 0) {
		connDead(conn, fmt::format("sending hello: {}", strerror(-ret)));
		return;
	}

	uint64_t startSeq, epoch, peerNonce;
	{
		std::unique_lock<std::mutex> lock(mutex_);
		sendCv_.wait(lock, [&] { return conn->streaming || conn->dead || stopping_; });
		if (conn->dead || stopping_)
			return;
		peerNonce = conn->in->peerNonce();
		startSeq = sendCursor_;
		epoch = epoch_;
	}
	if (io.setPeerNonce(peerNonce) < 0) {
		connDead(conn, "cannot start the session keys");
		return;
	}
	std::vector<uint8_t> start;
	le::append<uint64_t>(&start, epoch);
	le::append<uint64_t>(&start, startSeq);
	ret = io.send(StreamFrame::Start, start);
	if (ret < 0) {
		connDead(conn, fmt::format("sending start: {}", strerror(-ret)));
		return;
	}

	std::vector<std::shared_ptr<const std::vector<uint8_t>>> batch;
	std::vector<std::span<const uint8_t>> parts;
	bool verifyAsk = false;
	for (;;) {
		batch.clear();
		{
			std::unique_lock<std::mutex> lock(mutex_);
			for (;;) {
				if (conn->dead || stopping_ || alone_ || conn->verifyAsk)
					break;
				auto until = std::chrono::steady_clock::time_point::max();
				if (uncorkedLocked(&until))
					break;
				if (until == std::chrono::steady_clock::time_point::max())
					sendCv_.wait(lock);
				else
					sendCv_.wait_until(lock, until);
			}
			if (conn->dead || stopping_ || alone_)
				return;
			verifyAsk = std::exchange(conn->verifyAsk, false);
			/* Acks only remove sent entries, so the cursor is never before the front. */
			if (!queue_.empty()) {
				sendCursor_ = std::max(sendCursor_, queue_.front().seq);
				size_t idx = sendCursor_ - queue_.front().seq;
				size_t bytes = 0;
				while (idx < queue_.size() &&
				       (batch.empty() || bytes + queue_[idx].bytes->size() <= options_.batchBytes)) {
					bytes += queue_[idx].bytes->size();
					batch.push_back(queue_[idx].bytes);
					idx++;
				}
				sendCursor_ += batch.size();
				counters_.frames += batch.empty() ? 0 : 1;
			}
		}
		if (verifyAsk && (ret = io.send(StreamFrame::VerifyAsk, std::span<const uint8_t>{})) < 0) {
			connDead(conn, fmt::format("sending a verify request: {}", strerror(-ret)));
			return;
		}
		if (batch.empty())
			continue;
		parts.clear();
		for (const auto &b : batch)
			parts.emplace_back(*b);
		ret = io.send(StreamFrame::Ops, parts);
		if (ret < 0) {
			connDead(conn, fmt::format("sending ops: {}", strerror(-ret)));
			return;
		}
	}
}

void ReplicationSender::onAck(uint64_t applied, uint64_t durable)
{
	auto now = std::chrono::steady_clock::now();
	std::lock_guard<std::mutex> lock(mutex_);
	counters_.acks++;
	appliedAck_ = std::max(appliedAck_, applied);
	durableAck_ = std::max(durableAck_, durable);
	std::vector<std::shared_ptr<std::vector<uint8_t>>> reusable;
	while (!queue_.empty() && queue_.front().seq <= appliedAck_) {
		auto &bytes = queue_.front().bytes;
		queuedBytes_ -= bytes->size();
		/* Only when no batch being sent still holds it. */
		if (bytes.use_count() == 1 && bytes->capacity() >= kSpareMinCapacity &&
		    reusable.size() < kSpareBuffers)
			reusable.push_back(std::const_pointer_cast<std::vector<uint8_t>>(std::move(bytes)));
		queue_.pop_front();
	}
	if (!reusable.empty()) {
		/* Pairs with the release of the last other owner's decrement (a writer's
		 * batch): its reads of the bytes happen before our reuse. */
		std::atomic_thread_fence(std::memory_order_acquire);
		std::lock_guard<std::mutex> spare(spareMutex_);
		for (auto &b : reusable) {
			if (spare_.size() >= kSpareBuffers)
				break;
			b->clear();
			spare_.push_back(std::move(b));
		}
	}
	if (sendCursor_ <= appliedAck_)
		sendCursor_ = appliedAck_ + 1;
	for (auto it = pendingBarriers_.begin(); it != pendingBarriers_.end();) {
		if (it->first > appliedAck_)
			break;
		bool done = it->second.durable ? durableAck_ >= it->first : true;
		if (!done) {
			++it;
			continue;
		}
		counters_.barriersAcked++;
		recordBarrierLocked(it->second.submitted, now);
		it = pendingBarriers_.erase(it);
	}
}

void ReplicationSender::recordBarrierLocked(std::chrono::steady_clock::time_point submitted,
					    std::chrono::steady_clock::time_point now)
{
	uint64_t ns = static_cast<uint64_t>(
		std::chrono::duration_cast<std::chrono::nanoseconds>(now - submitted).count());
	counters_.barrierLatencyNsSum += ns;
	counters_.barrierLatencyNsMax = std::max(counters_.barrierLatencyNsMax, ns);
	auto bucket = std::lower_bound(kBarrierBucketsUs.begin(), kBarrierBucketsUs.end(), (ns + 999) / 1000);
	counters_.barrierLatencyHist[static_cast<size_t>(bucket - kBarrierBucketsUs.begin())]++;
}

void ReplicationSender::readerMain(Conn *conn)
{
	FrameIo &io = *conn->in;
	StreamFrame type;
	std::string reason;
	if (io.receive(&type, &reason) < 0 || type != StreamFrame::Hello) {
		if (reason.empty())
			reason = "first frame is not a hello";
		std::lock_guard<std::mutex> lock(mutex_);
		counters_.rejectedFrames += reason.rfind("peer closed", 0) == 0 ? 0 : 1;
	}
	Hello peer;
	if (!reason.empty() || !decodeHello(io.payload(), kRoleReceiver, io.peerNonce(), &peer, &reason)) {
		connDead(conn, reason);
		return;
	}
	/* Authenticated: an idle stream is normal from here on (keepalive finds dead peers). */
	io.setRecvBound(std::chrono::milliseconds(0));

	bool resync = false;
	uint64_t start;
	std::function<void(uint64_t, uint64_t)> resyncHook;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		uint64_t oldest = queue_.empty() ? nextSeq_ : queue_.front().seq;
		if (peer.epoch == epoch_ && peer.seq + 1 >= oldest && peer.seq < nextSeq_) {
			start = peer.seq + 1;
		} else {
			start = oldest;
			/* A blank peer that gets this whole epoch from its first op needs nothing else. */
			resync = !(peer.epoch == 0 && peer.seq == 0 && oldest == epochStart_ && appliedAck_ < epochStart_);
		}
		sendCursor_ = start;
		conn->streaming = true;
		resyncHook = onResyncNeeded_;
		logInfo(kLog, "module {}: replication stream up, epoch {:#x}, from seq {} (peer had epoch {:#x} seq {}){}",
			options_.stream.module, epoch_, start, peer.epoch, peer.seq, resync ? ", resync needed" : "");
	}
	/* The peer's hello acks what it applied: a barrier whose ack the last
	 * connection lost is released here, so the wake comes after it. */
	if (start > 1)
		onAck(start - 1, 0);
	notifyAll();
	if (resync && resyncHook)
		resyncHook(peer.epoch, peer.seq);

	for (;;) {
		if (io.receive(&type, &reason) < 0) {
			if (reason.rfind("peer closed", 0) != 0 && reason.rfind("recv", 0) != 0) {
				std::lock_guard<std::mutex> lock(mutex_);
				counters_.rejectedFrames++;
			}
			connDead(conn, reason);
			return;
		}
		std::span<const uint8_t> p = io.payload();
		if (type == StreamFrame::Ack && p.size() == 16) {
			uint64_t applied = le::get<uint64_t>(p.data()), durable = le::get<uint64_t>(p.data() + 8);
			bool bad;
			{
				std::lock_guard<std::mutex> lock(mutex_);
				bad = applied >= sendCursor_ || durable > applied;
			}
			if (bad) {
				connDead(conn, fmt::format("ack beyond what was sent (applied {}, durable {})", applied, durable));
				return;
			}
			onAck(applied, durable);
			ackCv_.notify_all();
		} else if (type == StreamFrame::Error && p.size() >= 14 &&
			   p.size() == 14 + size_t(le::get<uint16_t>(p.data() + 12))) {
			uint64_t seq = le::get<uint64_t>(p.data());
			int err = static_cast<int>(static_cast<int32_t>(le::get<uint32_t>(p.data() + 8)));
			std::string msg(reinterpret_cast<const char *>(p.data() + 14), p.size() - 14);
			std::function<void(uint64_t, int, const std::string &)> hook;
			{
				std::lock_guard<std::mutex> lock(mutex_);
				hook = onPeerError_;
			}
			logError(kLog, "module {}: peer could not apply op {}: {}", options_.stream.module, seq, msg);
			connDead(conn, fmt::format("peer failed to apply op {}", seq));
			if (hook)
				hook(seq, err, msg);
			return;
		} else {
			{
				std::lock_guard<std::mutex> lock(mutex_);
				counters_.rejectedFrames++;
			}
			connDead(conn, "malformed frame from the receiver");
			return;
		}
	}
}

/* ---- Receiver ---- */

Result<std::unique_ptr<ReplicationReceiver>> ReplicationReceiver::create(const ClusterKey &key, const Options &options,
									  std::unique_ptr<Applier> applier)
{
	if (!applier)
		return makeError(-EINVAL, "replication receiver needs an applier");
	auto copy = ClusterKey::fromBytes(key.bytes());
	if (!copy)
		return copy.error();
	return std::unique_ptr<ReplicationReceiver>(
		new ReplicationReceiver(std::move(copy.value()), options, std::move(applier)));
}

ReplicationReceiver::ReplicationReceiver(ClusterKey key, const Options &options, std::unique_ptr<Applier> applier)
	: key_(std::move(key)), options_(options), applier_(std::move(applier))
{
}

ReplicationReceiver::~ReplicationReceiver()
{
	stop();
}

int ReplicationReceiver::start(int listenFd)
{
	std::lock_guard<std::mutex> lock(mutex_);
	if (thread_.joinable())
		return -EBUSY;
	wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (wakeFd_ < 0)
		return -errno;
	stopping_ = false;
	thread_ = std::thread([this, listenFd] { acceptMain(listenFd); });
	return 0;
}

void ReplicationReceiver::stop()
{
	{
		std::lock_guard<std::mutex> lock(mutex_);
		stopping_ = true;
		if (liveFd_ >= 0)
			shutdown(liveFd_, SHUT_RDWR);
		if (wakeFd_ >= 0) {
			uint64_t one = 1;
			if (write(wakeFd_, &one, sizeof(one)) < 0) {
				/* Counter overflow only: the loop is awake anyway. */
			}
		}
	}
	if (thread_.joinable())
		thread_.join();
	std::lock_guard<std::mutex> lock(mutex_);
	if (wakeFd_ >= 0)
		close(wakeFd_);
	wakeFd_ = -1;
}

void ReplicationReceiver::acceptMain(int listenFd)
{
	for (;;) {
		struct pollfd fds[2] = { { listenFd, POLLIN, 0 }, { wakeFd_, POLLIN, 0 } };
		int n = poll(fds, 2, -1);
		{
			std::lock_guard<std::mutex> lock(mutex_);
			if (stopping_)
				return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			logError(kLog, "module {}: poll on the replication listener: {}", options_.stream.module,
				 strerror(errno));
			return;
		}
		if (!(fds[0].revents & POLLIN))
			continue;
		int fd = accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(fd);
	}
}

void ReplicationReceiver::serve(int fd)
{
	{
		std::lock_guard<std::mutex> lock(mutex_);
		if (stopping_) {
			close(fd);
			return;
		}
		liveFd_ = fd;
		counters_.connections++;
	}
	tuneSocket(fd);
	std::string reason = serveConn(fd);
	logInfo(kLog, "module {}: replication connection closed: {}", options_.stream.module, reason);
	std::lock_guard<std::mutex> lock(mutex_);
	liveFd_ = -1;
	lastCloseReason_ = reason;
	close(fd);
}

std::string ReplicationReceiver::serveConn(int fd)
{
	auto codec = WireCodec::create(key_, options_.stream.clusterId);
	if (!codec)
		return "cannot create the frame codec: " + codec.error().message;
	FrameIo io(fd, std::move(codec.value()), options_.stream);
	auto reject = [&](const std::string &why) {
		std::lock_guard<std::mutex> lock(mutex_);
		counters_.rejectedFrames++;
		logWarn(kLog, "module {}: closing replication connection: {}", options_.stream.module, why);
		return why;
	};

	/* Until the peer has proven it holds the key, it may not hold the one connection
	 * slot for long: bound the handshake reads. */
	io.setRecvBound(std::max(options_.handshakeTimeout, std::chrono::milliseconds(1)));

	Hello mine;
	mine.role = kRoleReceiver;
	mine.nonce = io.myNonce;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		mine.epoch = epoch_;
		mine.seq = lastApplied_;
	}
	int ret = io.send(StreamFrame::Hello, encodeHello(mine));
	if (ret < 0)
		return fmt::format("sending hello: {}", strerror(-ret));

	StreamFrame type;
	std::string reason;
	Hello peer;
	if (io.receive(&type, &reason) < 0)
		return reason.rfind("peer closed", 0) == 0 ? reason : reject(reason);
	if (type != StreamFrame::Hello)
		return reject("first frame is not a hello");
	if (!decodeHello(io.payload(), kRoleSender, io.peerNonce(), &peer, &reason))
		return reject(reason);
	if (io.receive(&type, &reason) < 0)
		return reason.rfind("peer closed", 0) == 0 ? reason : reject(reason);
	if (type != StreamFrame::Start || io.payload().size() != 16)
		return reject("expected a start frame");
	uint64_t epoch = le::get<uint64_t>(io.payload().data());
	uint64_t startSeq = le::get<uint64_t>(io.payload().data() + 8);
	if (epoch == 0 || startSeq == 0 || epoch != peer.epoch)
		return reject("malformed start frame");
	/* Authenticated: an idle stream is normal from here on (keepalive finds dead peers). */
	io.setRecvBound(std::chrono::milliseconds(0));
	bool resumed;
	uint64_t resumeApplied, resumeDurable;
	{
		std::lock_guard<std::mutex> lock(mutex_);
		resumed = epoch == epoch_ && startSeq == lastApplied_ + 1;
		if (!resumed) {
			logInfo(kLog, "module {}: stream epoch {:#x} from seq {} (had epoch {:#x} seq {})",
				options_.stream.module, epoch, startSeq, epoch_, lastApplied_);
			epoch_ = epoch;
			lastApplied_ = startSeq - 1;
			durable_ = std::min(durable_, lastApplied_);
		}
		resumeApplied = lastApplied_;
		resumeDurable = durable_;
	}
	/*
	 * Resuming: the acks the last connection lost, durable ones included (our
	 * hello says only what was applied). The sender may hold nothing more to send,
	 * so no later ack would release a barrier waiting for them.
	 */
	if (resumed && resumeApplied > 0) {
		if (int ret = io.sendAck(resumeApplied, resumeDurable); ret < 0)
			return fmt::format("sending ack: {}", strerror(-ret));
	}

	for (;;) {
		if (io.receive(&type, &reason) < 0)
			return reason.rfind("peer closed", 0) == 0 || reason.rfind("recv", 0) == 0 ? reason : reject(reason);
		if (type == StreamFrame::VerifyAsk) {
			if (!io.payload().empty())
				return reject("verify request with a payload");
			if (onVerifyAsked_)
				onVerifyAsked_();
			continue;
		}
		if (type != StreamFrame::Ops)
			return reject(fmt::format("unexpected frame {:#x} from the sender", static_cast<unsigned>(type)));
		std::span<const uint8_t> rest = io.payload();
		if (rest.empty())
			return reject("empty ops frame");
		{
			std::lock_guard<std::mutex> lock(mutex_);
			counters_.frames++;
			counters_.bytes += rest.size();
		}
		uint64_t last, durable;
		{
			std::lock_guard<std::mutex> lock(mutex_);
			last = lastApplied_;
			durable = durable_;
		}
		while (!rest.empty()) {
			Op op;
			size_t used = 0;
			std::string_view data;
			OpDecodeError e = decodeOp(rest, &op, &used, &data);
			if (e != OpDecodeError::None)
				return reject(fmt::format("undecodable op after seq {}: {}", last, opDecodeErrorName(e)));
			if (op.seq != last + 1)
				return reject(fmt::format("op seq {} out of order (expected {})", op.seq, last + 1));
			rest = rest.subspan(used);
			Status s = applier_->apply(op, data);
			if (!s) {
				std::string msg = s.error().message.substr(0, kMaxErrorMessage);
				std::vector<uint8_t> p;
				le::append<uint64_t>(&p, op.seq);
				le::append<uint32_t>(&p, static_cast<uint32_t>(static_cast<int32_t>(s.code())));
				le::append<uint16_t>(&p, msg.size());
				p.insert(p.end(), msg.begin(), msg.end());
				{
					std::lock_guard<std::mutex> lock(mutex_);
					counters_.applyErrors++;
					lastApplied_ = last;
				}
				logError(kLog, "module {}: {}", options_.stream.module, msg);
				/* Ack what was applied before the failing op, then report it. */
				if (io.sendAck(last, durable) == 0)
					(void)io.send(StreamFrame::Error, p);
				return "apply failed: " + msg;
			}
			last = op.seq;
			if (op.type == OpType::Barrier && op.durable) {
				durable = op.seq;
				std::lock_guard<std::mutex> lock(mutex_);
				counters_.durableFlushes++;
			}
		}
		{
			std::lock_guard<std::mutex> lock(mutex_);
			counters_.ops = applier_->counters().ops;
			counters_.writeBehindDropped = applier_->counters().writeBehindDropped;
			lastApplied_ = last;
			durable_ = durable;
		}
		ret = io.sendAck(last, durable);
		if (ret < 0)
			return fmt::format("sending ack: {}", strerror(-ret));
		std::lock_guard<std::mutex> lock(mutex_);
		counters_.acks++;
	}
}

void ReplicationReceiver::setResyncing(bool on)
{
	applier_->setResyncing(on);
}

uint64_t ReplicationReceiver::lastApplied() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return lastApplied_;
}

uint64_t ReplicationReceiver::epoch() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return epoch_;
}

std::string ReplicationReceiver::lastCloseReason() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return lastCloseReason_;
}

ReplicationReceiver::Counters ReplicationReceiver::counters() const
{
	std::lock_guard<std::mutex> lock(mutex_);
	return counters_;
}

/* ---- Helpers ---- */

Result<int> listenTcp(const std::string &addr, uint16_t port, uint16_t *boundPort)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return makeError(-errno, fmt::format("socket: {}", strerror(errno)));
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = {};
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) {
		close(fd);
		return makeError(-EINVAL, fmt::format("'{}' is not an IPv4 address", addr));
	}
	if (bind(fd, reinterpret_cast<struct sockaddr *>(&sa), sizeof(sa)) < 0 || listen(fd, 4) < 0) {
		int e = errno;
		close(fd);
		return makeError(-e, fmt::format("listen on {}:{}: {}", addr, port, strerror(e)));
	}
	socklen_t len = sizeof(sa);
	if (boundPort && getsockname(fd, reinterpret_cast<struct sockaddr *>(&sa), &len) == 0)
		*boundPort = ntohs(sa.sin_port);
	return fd;
}

Result<int> connectTcp(const std::string &addr, uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return makeError(-errno, fmt::format("socket: {}", strerror(errno)));
	struct sockaddr_in sa = {};
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) {
		close(fd);
		return makeError(-EINVAL, fmt::format("'{}' is not an IPv4 address", addr));
	}
	if (connect(fd, reinterpret_cast<struct sockaddr *>(&sa), sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return makeError(-e, fmt::format("connect to {}:{}: {}", addr, port, strerror(e)));
	}
	return fd;
}

} /* namespace sk::repl */
