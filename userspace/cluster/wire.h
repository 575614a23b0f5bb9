/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SK's one wire format: every datagram and stream frame between nodes is a fixed
 * little-endian header, a payload and an HMAC-SHA256 over both with the cluster key.
 * Also the heartbeat/probe payloads and the per-peer replay guard.
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/key.h"
#include "core/result.h"

struct evp_mac_ctx_st;
struct evp_cipher_ctx_st;

namespace sk {

using NodeId = uint32_t;

/*
 * Frame layout (all integers little-endian, offsets in bytes):
 *    0  4  magic "SKNW"
 *    4  1  version (kWireVersion)
 *    5  1  type (FrameType)
 *    6  1  module name length (0..kMaxModuleName; 0 = not module specific)
 *    7  1  reserved, must be 0
 *    8  8  cluster id (clusterIdFromName)
 *   16  4  sender node id
 *   20  4  payload length
 *   24  8  sender incarnation
 *   32  8  sequence number
 *   40 32  module name, zero padded (bytes past the length must be 0)
 *   72  n  payload
 * 72+n 32  HMAC-SHA256(key, bytes 0 .. 72+n)
 *
 * Stream connections switch to per-connection session keys once both sides' hellos
 * (sequence 0, always HMAC) are in: every later frame's MAC field is then
 * AES-256-GMAC(session key of its direction, IV = sequence, bytes 0 .. 72+n), 16
 * bytes, then 16 zero bytes. See WireCodec::startSession().
 */
constexpr std::array<uint8_t, 4> kWireMagic = { 'S', 'K', 'N', 'W' };
constexpr uint8_t kWireVersion = 1;
constexpr size_t kMaxModuleName = 32;
constexpr size_t kWireHeaderSize = 72;
constexpr size_t kWireMacSize = 32;
constexpr size_t kWireOverhead = kWireHeaderSize + kWireMacSize;
/* A datagram fits the IPv6 minimum MTU (1280 - 40 IPv6 - 8 UDP) so it is never fragmented. */
constexpr size_t kMaxDatagram = 1232;
constexpr size_t kMaxDatagramPayload = kMaxDatagram - kWireOverhead;
/* Stream frames (replication) may carry more; this is the hard cap of the format. */
constexpr size_t kMaxStreamPayload = 4u << 20;

enum class FrameType : uint8_t {
	Heartbeat = 1,
	Probe = 2,
	ProbeReply = 3,
	/* 0x10..0x3f belong to the replication stream; their payloads are defined there. */
	ReplicationFirst = 0x10,
	ReplicationLast = 0x3f,
};

bool isKnownFrameType(uint8_t type);
const char *frameTypeName(uint8_t type);

/* Why an input was dropped; indexes the drop counters. */
enum class DropReason : uint8_t {
	None = 0,
	Truncated,	/* shorter than its header or its announced length */
	Oversized,	/* announced or actual length over the limit, or trailing bytes */
	BadMagic,
	BadVersion,
	WrongCluster,
	BadHmac,
	UnknownType,	/* authentic, but a type this version does not know */
	Malformed,	/* authentic, but a field is out of range (module name, payload) */
	Replayed,	/* (incarnation, seq) already seen or too old */
	OldIncarnation, /* from an incarnation older than the peer's current one */
	UnknownPeer,	/* sender id / source address not configured on that network */
	UnknownModule,
	Count,
};
constexpr size_t kDropReasonCount = static_cast<size_t>(DropReason::Count);
const char *dropReasonName(DropReason reason);

struct DropCounters {
	std::array<uint64_t, kDropReasonCount> byReason{};

	void add(DropReason r) { byReason[static_cast<size_t>(r)]++; }
	uint64_t operator[](DropReason r) const { return byReason[static_cast<size_t>(r)]; }
	uint64_t total() const;
};

/* 64-bit id of a cluster: the first 8 bytes of SHA-256("sk-cluster:" + name), little-endian. */
uint64_t clusterIdFromName(std::string_view name);

struct FrameHeader {
	uint8_t type = 0;	/* a FrameType value; raw so decode can report unknown ones */
	NodeId sender = 0;
	uint64_t incarnation = 0;
	uint64_t sequence = 0;
	std::string module;	/* at most kMaxModuleName bytes */
};

struct DecodedFrame {
	FrameHeader header;
	/* Points into the decoded buffer: valid only as long as that buffer. */
	std::span<const uint8_t> payload;
};

/*
 * Encodes and authenticates frames for one cluster (key + cluster id). Holds an
 * initialised HMAC context, so it is not thread safe: one codec per thread.
 */
class WireCodec
{
public:
	static Result<std::unique_ptr<WireCodec>> create(const ClusterKey &key, uint64_t clusterId);
	~WireCodec();
	WireCodec(const WireCodec &) = delete;
	WireCodec &operator=(const WireCodec &) = delete;

	uint64_t clusterId() const { return clusterId_; }

	/*
	 * Appends one frame to *out. -EINVAL: module name too long, or in a session a
	 * sequence not above the last sealed; -EMSGSIZE: payload over maxPayload; -EIO:
	 * MAC failure (OpenSSL).
	 */
	int encode(const FrameHeader &header, std::span<const uint8_t> payload, std::vector<uint8_t> *out,
		   size_t maxPayload = kMaxDatagramPayload);

	/*
	 * For stream writers: the header (kWireHeaderSize bytes) and MAC (kWireMacSize) of a
	 * frame whose payload is the concatenation of parts, so that header, parts and MAC can
	 * be sent as they are, without copying the payload. Same errors as encode().
	 */
	int seal(const FrameHeader &header, std::span<const std::span<const uint8_t>> parts,
		 uint8_t *headerOut, uint8_t *macOut, size_t maxPayload = kMaxStreamPayload);

	/*
	 * Decodes exactly one frame occupying all of in (a datagram, or a stream frame cut
	 * with frameSize()). Checks, in order: length, magic, version, size limit, exact
	 * length, cluster id, HMAC (constant time), type, field ranges. On success fills
	 * *out and returns DropReason::None. Replay is the caller's ReplayGuard's job.
	 */
	DropReason decode(std::span<const uint8_t> in, DecodedFrame *out,
			  size_t maxPayload = kMaxDatagramPayload);

	/*
	 * For stream readers: given at least kWireHeaderSize bytes of a frame's start, the
	 * total frame size to read. Validates magic, version and the size limit only (the
	 * HMAC is checked by decode() once the whole frame is there).
	 */
	static DropReason frameSize(std::span<const uint8_t> prefix, size_t *size,
				    size_t maxPayload = kMaxStreamPayload);

	/*
	 * For one stream connection, once both hellos are in: frames with a sequence
	 * number other than 0 are from now on authenticated by AES-256-GMAC (about four
	 * times cheaper than HMAC-SHA256 per byte) with keys of this connection only:
	 * HMAC-SHA256(cluster key, label, sender's nonce, receiver's nonce), one per
	 * direction. The IV is the frame's sequence number, so encode()/seal() refuse a
	 * sequence not above the last one they sealed (an IV is never used twice with a
	 * key, and both nonces make the keys new on every connection even if a peer's
	 * hello is replayed). Frames with sequence 0 (hellos) are still sealed with the
	 * HMAC but no longer accepted. With `ways` Receive only (a codec that only reads:
	 * the sender's ack reader, a control channel's receiving side), no sending key
	 * exists and sealing a later frame fails (-EINVAL). -EINVAL: equal nonces or a
	 * session already started.
	 */
	enum class Ways { Both, Receive };
	int startSession(uint64_t localNonce, uint64_t peerNonce, Ways ways = Ways::Both);
	bool inSession() const { return openCtx_ != nullptr; }

private:
	WireCodec() = default;
	int mac(std::span<const uint8_t> head, std::span<const std::span<const uint8_t>> parts, uint8_t *out);
	void putHeader(const FrameHeader &header, size_t payloadLen, uint8_t *p) const;

	struct evp_cipher_ctx_st *sessionKey(uint64_t from, uint64_t to);
	int gmac(struct evp_cipher_ctx_st *ctx, uint64_t sequence, std::span<const uint8_t> head,
		 std::span<const std::span<const uint8_t>> parts, uint8_t *out);
	int macFor(bool sealing, uint64_t sequence, std::span<const uint8_t> head,
		   std::span<const std::span<const uint8_t>> parts, uint8_t *out);

	struct evp_mac_ctx_st *ctx_ = nullptr;
	struct evp_cipher_ctx_st *sealCtx_ = nullptr;	/* session: frames we send */
	struct evp_cipher_ctx_st *openCtx_ = nullptr;	/* session: frames we receive */
	uint64_t lastSealed_ = 0;
	uint64_t clusterId_ = 0;
};

/*
 * Replay protection for one (peer, module). Incarnation = the peer skd's start time
 * (CLOCK_REALTIME ns, or a persisted counter: see nextIncarnation()), so a restarted
 * peer has a larger one: a frame from a larger incarnation resets the window, a smaller
 * one is refused (an attacker cannot replay an old run's frames). Within an incarnation
 * a frame is accepted once: strictly newer than the highest seen, or - when window > 0 -
 * up to `window` behind it and not seen yet (heartbeats travel over several networks and
 * may overtake each other; window 0 gives strict ordering for TCP streams).
 */
class ReplayGuard
{
public:
	static constexpr unsigned kMaxWindow = 64;

	explicit ReplayGuard(unsigned window = 0) : window_(window > kMaxWindow ? kMaxWindow : window) {}

	/* Returns None (and records the frame) or Replayed / OldIncarnation. */
	DropReason check(uint64_t incarnation, uint64_t sequence);
	/* Like check() but records nothing: to test before spending work on a frame. */
	DropReason peek(uint64_t incarnation, uint64_t sequence) const;

	bool seenAny() const { return seen_; }
	uint64_t incarnation() const { return incarnation_; }
	uint64_t highest() const { return highest_; }

private:
	unsigned window_;
	bool seen_ = false;
	uint64_t incarnation_ = 0;
	uint64_t highest_ = 0;
	/* bit i set: sequence highest_ - i was accepted (bit 0 = highest_ itself). */
	uint64_t bitmap_ = 0;
};

/*
 * An incarnation for this skd run: CLOCK_REALTIME in ns, but never less than the last
 * one + 1 when statePath is given (read, then the new value written and fsynced), so a
 * wall clock stepped backwards cannot make a restarted node look older than its last
 * run. With an empty statePath the wall clock alone is used.
 */
Result<uint64_t> nextIncarnation(const std::string &statePath);

/* CLOCK_MONOTONIC in ns: heartbeat timestamps, only ever compared with the same clock. */
uint64_t monotonicNs();

/* ---- Payloads ---- */

struct MemberState {
	NodeId node = 0;
	uint8_t state = 0;

	bool operator==(const MemberState &) const = default;
};

/*
 * Heartbeat payload (little-endian):
 *    0 1 state    1 1 sub-state    2 2 flags (bit 0: in sync; others must be 0)
 *    4 16 data generation UUID
 *   20 8 view digest (farms)
 *   28 8 sender send time (sender's monotonic ns)
 *   36 8 echo time: the last send time received from the destination on this network
 *   44 8 echo delay: ns between receiving that and sending this (0 = no echo)
 *   52 1 member count (<= kMaxMembers)   53 1 reserved (0)   54 2 module data length (<= kMaxModuleData)
 *   56 5*n (node id u32, state u8)
 *   56+5n m module data: opaque to this layer, owned by the module type (mirror: PeerInfo)
 * Echo time/delay give the destination an RTT without synchronised clocks (RTCP style).
 */
struct HeartbeatPayload {
	static constexpr size_t kMaxMembers = 64;
	static constexpr size_t kFixedSize = 56;
	static constexpr size_t kMemberSize = 5;
	static constexpr size_t kMaxModuleData = 256;
	static constexpr size_t kMaxSize = kFixedSize + kMaxMembers * kMemberSize + kMaxModuleData;
	static constexpr uint16_t kFlagInSync = 1;

	uint8_t state = 0;
	uint8_t subState = 0;
	bool inSync = false;
	std::array<uint8_t, 16> generation{};
	uint64_t viewDigest = 0;
	uint64_t sendTimeNs = 0;
	uint64_t echoTimeNs = 0;
	uint64_t echoDelayNs = 0;
	std::vector<MemberState> members;
	std::vector<uint8_t> moduleData;

	bool operator==(const HeartbeatPayload &) const = default;

	/* -EMSGSIZE when members exceeds kMaxMembers. */
	int encode(std::vector<uint8_t> *out) const;
	/* None or Malformed (wrong length, too many members, reserved bits set). */
	static DropReason decode(std::span<const uint8_t> in, HeartbeatPayload *out);
};

/* Probe and probe reply payload: a nonce and the prober's send time (echoed back). */
struct ProbePayload {
	static constexpr size_t kSize = 16;

	uint64_t nonce = 0;
	uint64_t sendTimeNs = 0;

	bool operator==(const ProbePayload &) const = default;

	void encode(std::vector<uint8_t> *out) const;
	static DropReason decode(std::span<const uint8_t> in, ProbePayload *out);
};

} /* namespace sk */
