/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wire format encode/decode. Every field is written and read byte by byte at a fixed
 * offset (never a struct memcpy), so the format does not depend on the compiler's
 * padding or the host's endianness. No logging here: callers count and log drops.
 */
#include "cluster/wire.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <fmt/format.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

namespace sk {

namespace {

void putU16(uint8_t *p, uint16_t v)
{
	p[0] = static_cast<uint8_t>(v);
	p[1] = static_cast<uint8_t>(v >> 8);
}

void putU32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void putU64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint16_t getU16(const uint8_t *p)
{
	return static_cast<uint16_t>(p[0] | p[1] << 8);
}

uint32_t getU32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint64_t getU64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Header field offsets (see the layout in wire.h). */
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 5;
constexpr size_t kOffModuleLen = 6;
constexpr size_t kOffReserved = 7;
constexpr size_t kOffCluster = 8;
constexpr size_t kOffSender = 16;
constexpr size_t kOffPayloadLen = 20;
constexpr size_t kOffIncarnation = 24;
constexpr size_t kOffSequence = 32;
constexpr size_t kOffModule = 40;
static_assert(kOffModule + kMaxModuleName == kWireHeaderSize);
static_assert(kMaxStreamPayload + kWireOverhead < UINT32_MAX);

} /* namespace */

bool isKnownFrameType(uint8_t type)
{
	switch (static_cast<FrameType>(type)) {
	case FrameType::Heartbeat:
	case FrameType::Probe:
	case FrameType::ProbeReply:
		return true;
	default:
		return type >= static_cast<uint8_t>(FrameType::ReplicationFirst) &&
		       type <= static_cast<uint8_t>(FrameType::ReplicationLast);
	}
}

const char *frameTypeName(uint8_t type)
{
	switch (static_cast<FrameType>(type)) {
	case FrameType::Heartbeat:
		return "heartbeat";
	case FrameType::Probe:
		return "probe";
	case FrameType::ProbeReply:
		return "probe-reply";
	default:
		return isKnownFrameType(type) ? "replication" : "unknown";
	}
}

const char *dropReasonName(DropReason reason)
{
	static const char *const kNames[] = {
		"none", "truncated", "oversized", "bad-magic", "bad-version", "wrong-cluster",
		"bad-hmac", "unknown-type", "malformed", "replayed", "old-incarnation",
		"unknown-peer", "unknown-module",
	};
	static_assert(std::size(kNames) == kDropReasonCount);
	size_t i = static_cast<size_t>(reason);
	return i < kDropReasonCount ? kNames[i] : "?";
}

uint64_t DropCounters::total() const
{
	uint64_t sum = 0;
	for (size_t i = 1; i < kDropReasonCount; i++)
		sum += byReason[i];
	return sum;
}

uint64_t clusterIdFromName(std::string_view name)
{
	std::string input = "sk-cluster:";
	input += name;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (EVP_Digest(input.data(), input.size(), digest, &len, EVP_sha256(), nullptr) != 1)
		return 0;
	return getU64(digest);
}

/* ---- WireCodec ---- */

Result<std::unique_ptr<WireCodec>> WireCodec::create(const ClusterKey &key, uint64_t clusterId)
{
	std::unique_ptr<WireCodec> codec(new WireCodec());
	codec->clusterId_ = clusterId;

	EVP_MAC *mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
	if (!mac)
		return makeError(-ENOSYS, "OpenSSL has no HMAC implementation");
	codec->ctx_ = EVP_MAC_CTX_new(mac);
	EVP_MAC_free(mac);	/* the context keeps its own reference */
	if (!codec->ctx_)
		return makeError(-ENOMEM, "cannot allocate an HMAC context");

	char digest[] = "SHA256";
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
		OSSL_PARAM_construct_end(),
	};
	auto bytes = key.bytes();
	if (EVP_MAC_init(codec->ctx_, bytes.data(), bytes.size(), params) != 1)
		return makeError(-EIO, "cannot initialise HMAC-SHA256 with the cluster key");
	return codec;
}

WireCodec::~WireCodec()
{
	EVP_MAC_CTX_free(ctx_);
	EVP_CIPHER_CTX_free(sealCtx_);
	EVP_CIPHER_CTX_free(openCtx_);
}

namespace {

constexpr std::string_view kSessionLabel = "sk stream session v1";
constexpr size_t kGmacTagSize = 16;

} /* namespace */

/* An AES-256-GCM context keyed for the frames `from` sends to `to` (by their nonces). */
EVP_CIPHER_CTX *WireCodec::sessionKey(uint64_t from, uint64_t to)
{
	uint8_t input[kSessionLabel.size() + 16];
	memcpy(input, kSessionLabel.data(), kSessionLabel.size());
	putU64(input + kSessionLabel.size(), from);
	putU64(input + kSessionLabel.size() + 8, to);
	uint8_t key[kWireMacSize];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (ctx && (mac({ input, sizeof(input) }, {}, key) < 0 ||
		    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key, nullptr) != 1)) {
		EVP_CIPHER_CTX_free(ctx);
		ctx = nullptr;
	}
	OPENSSL_cleanse(key, sizeof(key));
	return ctx;
}

int WireCodec::startSession(uint64_t localNonce, uint64_t peerNonce, Ways ways)
{
	if (openCtx_ || localNonce == peerNonce)
		return -EINVAL;
	EVP_CIPHER_CTX *open = sessionKey(peerNonce, localNonce);
	EVP_CIPHER_CTX *seal = ways == Ways::Both ? sessionKey(localNonce, peerNonce) : nullptr;
	if (!open || (ways == Ways::Both && !seal)) {
		EVP_CIPHER_CTX_free(open);
		EVP_CIPHER_CTX_free(seal);
		return -EIO;
	}
	openCtx_ = open;
	sealCtx_ = seal;
	return 0;
}

/* The GMAC tag of head followed by parts, in the first 16 bytes of out (the rest zero). */
int WireCodec::gmac(EVP_CIPHER_CTX *ctx, uint64_t sequence, std::span<const uint8_t> head,
		    std::span<const std::span<const uint8_t>> parts, uint8_t *out)
{
	uint8_t iv[12] = {};
	putU64(iv, sequence);
	int len = 0;
	if (EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, iv) != 1 ||
	    EVP_EncryptUpdate(ctx, nullptr, &len, head.data(), static_cast<int>(head.size())) != 1)
		return -EIO;
	for (std::span<const uint8_t> part : parts)
		if (!part.empty() &&
		    EVP_EncryptUpdate(ctx, nullptr, &len, part.data(), static_cast<int>(part.size())) != 1)
			return -EIO;
	memset(out, 0, kWireMacSize);
	if (EVP_EncryptFinal_ex(ctx, out, &len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kGmacTagSize, out) != 1)
		return -EIO;
	return 0;
}

/* The MAC field for a frame with this sequence number, sent (sealing) or received. */
int WireCodec::macFor(bool sealing, uint64_t sequence, std::span<const uint8_t> head,
		      std::span<const std::span<const uint8_t>> parts, uint8_t *out)
{
	if (!openCtx_ || (sequence == 0 && sealing))
		return mac(head, parts, out);
	/* A hello after the session started is never genuine: the peer sent its one before. */
	if (sequence == 0)
		return -EPROTO;
	if (!sealing)
		return gmac(openCtx_, sequence, head, parts, out);
	if (!sealCtx_ || sequence <= lastSealed_)
		return -EINVAL;
	lastSealed_ = sequence;
	return gmac(sealCtx_, sequence, head, parts, out);
}

/* The MAC of head followed by parts. */
int WireCodec::mac(std::span<const uint8_t> head, std::span<const std::span<const uint8_t>> parts, uint8_t *out)
{
	/* A NULL key re-initialises with the key set in create(): no per-frame key schedule. */
	size_t len = 0;
	if (EVP_MAC_init(ctx_, nullptr, 0, nullptr) != 1 || EVP_MAC_update(ctx_, head.data(), head.size()) != 1)
		return -EIO;
	for (std::span<const uint8_t> part : parts)
		if (!part.empty() && EVP_MAC_update(ctx_, part.data(), part.size()) != 1)
			return -EIO;
	if (EVP_MAC_final(ctx_, out, &len, kWireMacSize) != 1 || len != kWireMacSize)
		return -EIO;
	return 0;
}

void WireCodec::putHeader(const FrameHeader &header, size_t payloadLen, uint8_t *p) const
{
	memcpy(p + kOffMagic, kWireMagic.data(), kWireMagic.size());
	p[kOffVersion] = kWireVersion;
	p[kOffType] = header.type;
	p[kOffModuleLen] = static_cast<uint8_t>(header.module.size());
	p[kOffReserved] = 0;
	putU64(p + kOffCluster, clusterId_);
	putU32(p + kOffSender, header.sender);
	putU32(p + kOffPayloadLen, static_cast<uint32_t>(payloadLen));
	putU64(p + kOffIncarnation, header.incarnation);
	putU64(p + kOffSequence, header.sequence);
	memset(p + kOffModule, 0, kMaxModuleName);
	memcpy(p + kOffModule, header.module.data(), header.module.size());
}

int WireCodec::encode(const FrameHeader &header, std::span<const uint8_t> payload,
		      std::vector<uint8_t> *out, size_t maxPayload)
{
	uint8_t head[kWireHeaderSize], mac[kWireMacSize];
	if (int ret = seal(header, { &payload, 1 }, head, mac, maxPayload); ret < 0)
		return ret;
	out->reserve(out->size() + kWireOverhead + payload.size());
	out->insert(out->end(), head, head + kWireHeaderSize);
	out->insert(out->end(), payload.begin(), payload.end());
	out->insert(out->end(), mac, mac + kWireMacSize);
	return 0;
}

int WireCodec::seal(const FrameHeader &header, std::span<const std::span<const uint8_t>> parts,
		    uint8_t *headerOut, uint8_t *macOut, size_t maxPayload)
{
	if (header.module.size() > kMaxModuleName)
		return -EINVAL;
	size_t payloadLen = 0;
	for (std::span<const uint8_t> part : parts)
		payloadLen += part.size();
	if (payloadLen > maxPayload || payloadLen > kMaxStreamPayload)
		return -EMSGSIZE;
	putHeader(header, payloadLen, headerOut);
	return macFor(true, header.sequence, { headerOut, kWireHeaderSize }, parts, macOut);
}

DropReason WireCodec::frameSize(std::span<const uint8_t> prefix, size_t *size, size_t maxPayload)
{
	if (prefix.size() < kWireHeaderSize)
		return DropReason::Truncated;
	const uint8_t *p = prefix.data();
	if (memcmp(p + kOffMagic, kWireMagic.data(), kWireMagic.size()) != 0)
		return DropReason::BadMagic;
	if (p[kOffVersion] != kWireVersion)
		return DropReason::BadVersion;
	uint32_t payloadLen = getU32(p + kOffPayloadLen);
	if (payloadLen > maxPayload || payloadLen > kMaxStreamPayload)
		return DropReason::Oversized;
	*size = kWireOverhead + payloadLen;
	return DropReason::None;
}

DropReason WireCodec::decode(std::span<const uint8_t> in, DecodedFrame *out, size_t maxPayload)
{
	size_t total = 0;
	DropReason r = frameSize(in, &total, maxPayload);
	if (r != DropReason::None)
		return r;
	if (in.size() < total)
		return DropReason::Truncated;
	if (in.size() > total)
		return DropReason::Oversized;

	const uint8_t *p = in.data();
	/*
	 * The cluster id is checked before the HMAC: a frame from another cluster (other key)
	 * is then reported as what it is, a neighbour's traffic, not as an attack.
	 */
	if (getU64(p + kOffCluster) != clusterId_)
		return DropReason::WrongCluster;

	uint8_t expected[kWireMacSize];
	size_t macOffset = total - kWireMacSize;
	if (macFor(false, getU64(p + kOffSequence), { p, macOffset }, {}, expected) < 0)
		return DropReason::BadHmac;
	if (CRYPTO_memcmp(expected, p + macOffset, kWireMacSize) != 0)
		return DropReason::BadHmac;

	/* Authentic from here: anything odd is a peer bug or a newer version, not noise. */
	if (!isKnownFrameType(p[kOffType]))
		return DropReason::UnknownType;
	size_t moduleLen = p[kOffModuleLen];
	if (moduleLen > kMaxModuleName || p[kOffReserved] != 0)
		return DropReason::Malformed;
	for (size_t i = moduleLen; i < kMaxModuleName; i++)
		if (p[kOffModule + i] != 0)
			return DropReason::Malformed;

	out->header.type = p[kOffType];
	out->header.sender = getU32(p + kOffSender);
	out->header.incarnation = getU64(p + kOffIncarnation);
	out->header.sequence = getU64(p + kOffSequence);
	out->header.module.assign(reinterpret_cast<const char *>(p + kOffModule), moduleLen);
	out->payload = { p + kWireHeaderSize, total - kWireOverhead };
	return DropReason::None;
}

/* ---- ReplayGuard ---- */

DropReason ReplayGuard::peek(uint64_t incarnation, uint64_t sequence) const
{
	if (!seen_ || incarnation > incarnation_)
		return DropReason::None;
	if (incarnation < incarnation_)
		return DropReason::OldIncarnation;
	if (sequence > highest_)
		return DropReason::None;
	uint64_t behind = highest_ - sequence;
	if (behind == 0 || behind > window_ || behind >= 64)
		return DropReason::Replayed;
	if (bitmap_ & (uint64_t{ 1 } << behind))
		return DropReason::Replayed;
	return DropReason::None;
}

DropReason ReplayGuard::check(uint64_t incarnation, uint64_t sequence)
{
	DropReason r = peek(incarnation, sequence);
	if (r != DropReason::None)
		return r;
	if (!seen_ || incarnation > incarnation_) {
		seen_ = true;
		incarnation_ = incarnation;
		highest_ = sequence;
		bitmap_ = 1;
	} else if (sequence > highest_) {
		uint64_t shift = sequence - highest_;
		bitmap_ = shift >= 64 ? 0 : bitmap_ << shift;
		bitmap_ |= 1;
		highest_ = sequence;
	} else {
		bitmap_ |= uint64_t{ 1 } << (highest_ - sequence);
	}
	return DropReason::None;
}

/* ---- Clocks and incarnations ---- */

uint64_t monotonicNs()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

Result<uint64_t> nextIncarnation(const std::string &statePath)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t value = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
	if (statePath.empty())
		return value;

	int fd = open(statePath.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		char buf[32] = {};
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			char *end = nullptr;
			errno = 0;
			unsigned long long prev = strtoull(buf, &end, 10);
			if (errno == 0 && end != buf && prev + 1 > value)
				value = prev + 1;
		}
	} else if (errno != ENOENT) {
		return makeError(-errno, errnoMessage("cannot read incarnation file " + statePath, errno));
	}

	/* Written to a temporary file, fsynced, then renamed: a crash leaves old or new, never half. */
	std::string tmp = statePath + ".tmp";
	fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return makeError(-errno, errnoMessage("cannot write incarnation file " + tmp, errno));
	std::string text = fmt::format("{}\n", value);
	bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
	int err = errno;
	close(fd);
	if (!ok || rename(tmp.c_str(), statePath.c_str()) < 0) {
		if (ok)
			err = errno;
		unlink(tmp.c_str());
		return makeError(-err, errnoMessage("cannot write incarnation file " + statePath, err));
	}
	std::string dir = statePath.substr(0, statePath.find_last_of('/') + 1);
	int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return value;
}

/* ---- Payloads ---- */

int HeartbeatPayload::encode(std::vector<uint8_t> *out) const
{
	if (members.size() > kMaxMembers || moduleData.size() > kMaxModuleData)
		return -EMSGSIZE;
	size_t start = out->size();
	out->resize(start + kFixedSize + members.size() * kMemberSize + moduleData.size(), 0);
	uint8_t *p = out->data() + start;
	p[0] = state;
	p[1] = subState;
	putU16(p + 2, inSync ? kFlagInSync : 0);
	memcpy(p + 4, generation.data(), generation.size());
	putU64(p + 20, viewDigest);
	putU64(p + 28, sendTimeNs);
	putU64(p + 36, echoTimeNs);
	putU64(p + 44, echoDelayNs);
	p[52] = static_cast<uint8_t>(members.size());
	putU16(p + 54, static_cast<uint16_t>(moduleData.size()));
	uint8_t *m = p + kFixedSize;
	for (const MemberState &ms : members) {
		putU32(m, ms.node);
		m[4] = ms.state;
		m += kMemberSize;
	}
	if (!moduleData.empty())
		memcpy(m, moduleData.data(), moduleData.size());
	return 0;
}

DropReason HeartbeatPayload::decode(std::span<const uint8_t> in, HeartbeatPayload *out)
{
	if (in.size() < kFixedSize)
		return DropReason::Malformed;
	const uint8_t *p = in.data();
	size_t count = p[52];
	size_t dataLen = getU16(p + 54);
	if (count > kMaxMembers || dataLen > kMaxModuleData ||
	    in.size() != kFixedSize + count * kMemberSize + dataLen)
		return DropReason::Malformed;
	uint16_t flags = getU16(p + 2);
	if ((flags & ~kFlagInSync) || p[53])
		return DropReason::Malformed;

	out->state = p[0];
	out->subState = p[1];
	out->inSync = flags & kFlagInSync;
	memcpy(out->generation.data(), p + 4, out->generation.size());
	out->viewDigest = getU64(p + 20);
	out->sendTimeNs = getU64(p + 28);
	out->echoTimeNs = getU64(p + 36);
	out->echoDelayNs = getU64(p + 44);
	out->members.clear();
	out->members.reserve(count);
	const uint8_t *m = p + kFixedSize;
	for (size_t i = 0; i < count; i++, m += kMemberSize)
		out->members.push_back({ getU32(m), m[4] });
	out->moduleData.assign(m, m + dataLen);
	return DropReason::None;
}

void ProbePayload::encode(std::vector<uint8_t> *out) const
{
	size_t start = out->size();
	out->resize(start + kSize);
	putU64(out->data() + start, nonce);
	putU64(out->data() + start + 8, sendTimeNs);
}

DropReason ProbePayload::decode(std::span<const uint8_t> in, ProbePayload *out)
{
	if (in.size() != kSize)
		return DropReason::Malformed;
	out->nonce = getU64(in.data());
	out->sendTimeNs = getU64(in.data() + 8);
	return DropReason::None;
}

} /* namespace sk */
