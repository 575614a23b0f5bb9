/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The cluster key: the shared secret every node uses to authenticate wire frames
 * (HMAC-SHA256). Loaded from a root-only key file; the bytes are wiped on destruction.
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/result.h"

namespace sk {

/*
 * Key file format: the file holds the key as hexadecimal text, 64 to 128 hex digits
 * (32 to 64 bytes; `skctl keygen` writes 64), optionally followed by a newline. Nothing
 * else is accepted: a text format survives copy/paste between nodes and an accidental
 * truncation is detectable. The file must be a regular file, mode 0600 or stricter (no
 * group/other bits), owned by root or by the user running skd.
 */
class ClusterKey
{
public:
	static constexpr size_t kMinBytes = 32;
	/* HMAC-SHA256 block size: longer keys would only be hashed down. */
	static constexpr size_t kMaxBytes = 64;
	/* Generous bound on the file size, so a wrong path cannot make us read a huge file. */
	static constexpr size_t kMaxFileBytes = 4096;

	/* Reads and checks the key file; the error says what to fix. */
	static Result<ClusterKey> load(const std::string &path);
	/* Parses key file content (hex text); exposed for tests and `skctl keygen --check`. */
	static Result<ClusterKey> parse(std::string_view text);
	static Result<ClusterKey> fromBytes(std::span<const uint8_t> bytes);

	/* 32 random bytes as 64 hex digits + newline: the content of a new key file. */
	static Result<std::string> generateHex();

	ClusterKey(const ClusterKey &) = delete;
	ClusterKey &operator=(const ClusterKey &) = delete;
	ClusterKey(ClusterKey &&other) noexcept;
	ClusterKey &operator=(ClusterKey &&other) noexcept;
	~ClusterKey();

	std::span<const uint8_t> bytes() const { return { bytes_.data(), size_ }; }
	/* First 8 bytes of SHA-256(key) in hex: lets an operator compare keys across nodes. */
	std::string fingerprint() const;

private:
	ClusterKey() = default;
	void wipe();

	std::array<uint8_t, kMaxBytes> bytes_{};
	size_t size_ = 0;
};

} /* namespace sk */
