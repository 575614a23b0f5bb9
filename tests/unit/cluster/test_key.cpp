/* SPDX-License-Identifier: Apache-2.0 */
/* Cluster key file checks: format, size, mode, owner, file type; generated keys load back. */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "cluster/key.h"

using sk::ClusterKey;

namespace {

const std::string kHex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/* A private temporary directory, removed with its files at scope end. */
struct TempDir {
	std::string path;
	TempDir()
	{
		char tmpl[] = "/tmp/sk-key-test-XXXXXX";
		char *p = mkdtemp(tmpl);
		REQUIRE(p != nullptr);
		path = p;
	}
	~TempDir()
	{
		std::string cmd = "rm -rf '" + path + "'";
		if (system(cmd.c_str()) != 0)
			MESSAGE("cannot remove " << path);
	}
	std::string write(const std::string &name, const std::string &content, mode_t mode)
	{
		std::string file = path + "/" + name;
		int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
		REQUIRE(fd >= 0);
		REQUIRE(::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
		close(fd);
		REQUIRE(chmod(file.c_str(), mode) == 0);
		return file;
	}
};

bool contains(const std::string &text, const std::string &part)
{
	return text.find(part) != std::string::npos;
}

} /* namespace */

TEST_CASE("a 0600 file with 64 hex digits loads, with or without a trailing newline")
{
	TempDir dir;
	for (const std::string &content : { kHex64, kHex64 + "\n", kHex64 + "\r\n" }) {
		auto key = ClusterKey::load(dir.write("k", content, 0600));
		REQUIRE_MESSAGE(key.ok(), (key.ok() ? "" : key.error().message));
		CHECK(key->bytes().size() == 32);
		CHECK(key->bytes()[0] == 0x00);
		CHECK(key->bytes()[1] == 0x11);
		CHECK(key->bytes()[31] == 0xff);
	}
	/* 0400 (read-only) is fine too. */
	auto ro = ClusterKey::load(dir.write("ro", kHex64, 0400));
	CHECK_MESSAGE(ro.ok(), (ro.ok() ? "" : ro.error().message));
}

TEST_CASE("group or other permission bits are refused with a chmod hint")
{
	TempDir dir;
	for (mode_t mode : { 0644, 0640, 0604, 0660, 0601 }) {
		CAPTURE(mode);
		auto key = ClusterKey::load(dir.write("k", kHex64, mode));
		REQUIRE_FALSE(key.ok());
		CHECK(key.error().code == -EPERM);
		CHECK_MESSAGE(contains(key.error().message, "chmod 600"), key.error().message);
	}
}

TEST_CASE("short, long, odd and non-hex keys are refused")
{
	TempDir dir;
	struct Case {
		std::string content;
		std::string expect;
	} cases[] = {
		{ kHex64.substr(0, 62), "too short" },
		{ "", "empty" },
		{ kHex64 + kHex64 + "00", "too long" },
		{ kHex64 + "0", "odd" },
		{ kHex64.substr(0, 60) + "zz00", "not hex" },
		{ kHex64 + "\n\nextra", "not hex" },
		{ " " + kHex64, "not hex" },
	};
	for (const Case &c : cases) {
		CAPTURE(c.content);
		auto key = ClusterKey::load(dir.write("k", c.content, 0600));
		REQUIRE_FALSE(key.ok());
		CHECK(key.error().code == -EINVAL);
		CHECK_MESSAGE(contains(key.error().message, c.expect), key.error().message);
	}
	/* The longest accepted key: 128 hex digits. */
	auto longest = ClusterKey::load(dir.write("k", kHex64 + kHex64, 0600));
	REQUIRE(longest.ok());
	CHECK(longest->bytes().size() == ClusterKey::kMaxBytes);
}

TEST_CASE("missing files, directories and FIFOs are refused")
{
	TempDir dir;
	auto missing = ClusterKey::load(dir.path + "/none");
	REQUIRE_FALSE(missing.ok());
	CHECK(missing.error().code == -ENOENT);
	CHECK(contains(missing.error().message, dir.path + "/none"));

	REQUIRE(chmod(dir.path.c_str(), 0700) == 0);
	auto isDir = ClusterKey::load(dir.path);
	REQUIRE_FALSE(isDir.ok());
	CHECK_MESSAGE(contains(isDir.error().message, "not a regular file"), isDir.error().message);

	std::string fifo = dir.path + "/fifo";
	REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
	auto isFifo = ClusterKey::load(fifo);	/* must not block */
	REQUIRE_FALSE(isFifo.ok());
	CHECK_MESSAGE(contains(isFifo.error().message, "not a regular file"), isFifo.error().message);
}

TEST_CASE("a key file owned by another user is refused")
{
	if (geteuid() != 0) {
		MESSAGE("skipped: needs root to chown");
		return;
	}
	TempDir dir;
	std::string file = dir.write("k", kHex64, 0600);
	REQUIRE(chown(file.c_str(), 4242, 4242) == 0);
	auto key = ClusterKey::load(file);
	REQUIRE_FALSE(key.ok());
	CHECK(key.error().code == -EPERM);
	CHECK_MESSAGE(contains(key.error().message, "owned by uid 4242"), key.error().message);
}

TEST_CASE("generated keys are 64 hex digits, differ, and load back")
{
	auto a = ClusterKey::generateHex();
	auto b = ClusterKey::generateHex();
	REQUIRE(a.ok());
	REQUIRE(b.ok());
	CHECK(a->size() == 65);
	CHECK(*a != *b);
	TempDir dir;
	auto key = ClusterKey::load(dir.write("k", *a, 0600));
	REQUIRE_MESSAGE(key.ok(), (key.ok() ? "" : key.error().message));
	CHECK(key->bytes().size() == 32);
	CHECK(key->fingerprint().size() == 16);
}

TEST_CASE("moving a key wipes the source")
{
	auto key = ClusterKey::parse(kHex64);
	REQUIRE(key.ok());
	ClusterKey moved = std::move(key.value());
	CHECK(moved.bytes().size() == 32);
	CHECK(key->bytes().size() == 0);
}
