/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cluster key loading. Checks run on the opened descriptor (fstat), not the path, so
 * the file checked is the file read. Every buffer that held key material is wiped.
 */
#include "cluster/key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

namespace sk {

namespace {

int hexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Wipes a buffer when the scope ends, whatever the exit path. */
struct Wiper {
	void *data;
	size_t size;
	~Wiper() { OPENSSL_cleanse(data, size); }
};

} /* namespace */

ClusterKey::ClusterKey(ClusterKey &&other) noexcept
{
	*this = std::move(other);
}

ClusterKey &ClusterKey::operator=(ClusterKey &&other) noexcept
{
	if (this != &other) {
		bytes_ = other.bytes_;
		size_ = other.size_;
		other.wipe();
	}
	return *this;
}

ClusterKey::~ClusterKey()
{
	wipe();
}

void ClusterKey::wipe()
{
	OPENSSL_cleanse(bytes_.data(), bytes_.size());
	size_ = 0;
}

Result<ClusterKey> ClusterKey::fromBytes(std::span<const uint8_t> bytes)
{
	if (bytes.size() < kMinBytes)
		return makeError(-EINVAL, fmt::format("cluster key too short: {} bytes, need at least {}",
						      bytes.size(), kMinBytes));
	if (bytes.size() > kMaxBytes)
		return makeError(-EINVAL, fmt::format("cluster key too long: {} bytes, at most {}",
						      bytes.size(), kMaxBytes));
	ClusterKey key;
	memcpy(key.bytes_.data(), bytes.data(), bytes.size());
	key.size_ = bytes.size();
	return key;
}

Result<ClusterKey> ClusterKey::parse(std::string_view text)
{
	/* One trailing newline (and a CR from an editor) is allowed, nothing else. */
	while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
		text.remove_suffix(1);
	if (text.empty())
		return makeError(-EINVAL, "cluster key is empty: expected 64 hex digits (skctl keygen)");
	for (size_t i = 0; i < text.size(); i++)
		if (hexValue(text[i]) < 0)
			return makeError(-EINVAL, fmt::format("cluster key is not hex text (bad character at "
							      "offset {}): expected 64 hex digits",
							      i));
	if (text.size() % 2)
		return makeError(-EINVAL, fmt::format("cluster key has an odd number of hex digits ({})",
						      text.size()));
	size_t n = text.size() / 2;
	if (n < kMinBytes)
		return makeError(-EINVAL, fmt::format("cluster key too short: {} hex digits, need at least {}",
						      text.size(), 2 * kMinBytes));
	if (n > kMaxBytes)
		return makeError(-EINVAL, fmt::format("cluster key too long: {} hex digits, at most {}",
						      text.size(), 2 * kMaxBytes));

	std::array<uint8_t, kMaxBytes> raw;
	Wiper w{ raw.data(), raw.size() };
	for (size_t i = 0; i < n; i++) {
		int hi = hexValue(text[2 * i]);
		int lo = hexValue(text[2 * i + 1]);
		raw[i] = static_cast<uint8_t>(hi << 4 | lo);
	}
	return fromBytes({ raw.data(), n });
}

Result<ClusterKey> ClusterKey::load(const std::string &path)
{
	/* O_NONBLOCK: opening a FIFO by mistake must not hang skd; it fails S_ISREG below. */
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return makeError(-errno, errnoMessage("cannot open cluster key file " + path, errno));
	struct Closer {
		int fd;
		~Closer() { close(fd); }
	} closer{ fd };

	struct stat st;
	if (fstat(fd, &st) < 0)
		return makeError(-errno, errnoMessage("cannot stat cluster key file " + path, errno));
	if (!S_ISREG(st.st_mode))
		return makeError(-EINVAL, fmt::format("cluster key file {} is not a regular file", path));
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		return makeError(-EPERM, fmt::format("cluster key file {} has mode {:04o}: it must not be "
						     "accessible by group or others (chmod 600 {})",
						     path, st.st_mode & 07777, path));
	if (st.st_uid != 0 && st.st_uid != geteuid())
		return makeError(-EPERM, fmt::format("cluster key file {} is owned by uid {}: it must be "
						     "owned by root or uid {}",
						     path, st.st_uid, geteuid()));
	if (static_cast<size_t>(st.st_size) > kMaxFileBytes)
		return makeError(-EFBIG, fmt::format("cluster key file {} is {} bytes: too large for a key "
						     "(expected 64 hex digits)",
						     path, st.st_size));

	char buf[kMaxFileBytes + 1];
	Wiper w{ buf, sizeof(buf) };
	size_t len = 0;
	while (len < sizeof(buf)) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return makeError(-errno, errnoMessage("cannot read cluster key file " + path, errno));
		if (r == 0)
			break;
		len += static_cast<size_t>(r);
	}
	if (len > kMaxFileBytes)
		return makeError(-EFBIG, fmt::format("cluster key file {} grew while reading", path));

	auto key = parse({ buf, len });
	if (!key.ok())
		return makeError(key.error().code, "cluster key file " + path + ": " + key.error().message);
	return key;
}

Result<std::string> ClusterKey::generateHex()
{
	uint8_t raw[kMinBytes];
	Wiper w{ raw, sizeof(raw) };
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return makeError(-EIO, "cannot generate a cluster key: OpenSSL RAND_bytes failed");
	std::string out;
	out.reserve(2 * sizeof(raw) + 1);
	for (uint8_t b : raw)
		out += fmt::format("{:02x}", b);
	out += '\n';
	return out;
}

std::string ClusterKey::fingerprint() const
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (EVP_Digest(bytes_.data(), size_, digest, &len, EVP_sha256(), nullptr) != 1 || len < 8)
		return "?";
	std::string out;
	for (int i = 0; i < 8; i++)
		out += fmt::format("{:02x}", digest[i]);
	return out;
}

} /* namespace sk */
