/* SPDX-License-Identifier: Apache-2.0 */
/* Data generations: comparison rules, rotation, file format and the crash-safe store. */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "mirror/generation.h"

using sk::compareGenerations;
using sk::Generation;
using sk::GenerationRelation;
using sk::GenerationStore;

namespace {

Generation gen(uint64_t cur, std::vector<uint64_t> hist = {}, bool inSync = true, bool prim = false)
{
	Generation g;
	g.current = cur;
	g.history = std::move(hist);
	g.inSync = inSync;
	g.wasPrimary = prim;
	return g;
}

/* A private temporary directory removed at scope exit. */
struct TempDir {
	std::string path;
	TempDir()
	{
		char tmpl[] = "/tmp/sk-gen-test-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		path = tmpl;
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

std::string readFile(const std::string &p)
{
	std::ifstream in(p);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

void writeFile(const std::string &p, const std::string &text)
{
	std::ofstream(p, std::ios::trunc) << text;
}

} /* namespace */

TEST_CASE("compareGenerations covers every relation")
{
	CHECK(compareGenerations(gen(0), gen(0)) == GenerationRelation::BothEmpty);
	CHECK(compareGenerations(gen(0), gen(0xa1)) == GenerationRelation::LocalBehind);
	CHECK(compareGenerations(gen(0xa1), gen(0)) == GenerationRelation::PeerBehind);
	CHECK(compareGenerations(gen(0xa1), gen(0xa1)) == GenerationRelation::Same);
	CHECK(compareGenerations(gen(0xa1), gen(0xb1, { 0xa1 })) == GenerationRelation::LocalBehind);
	CHECK(compareGenerations(gen(0xa1), gen(0xb2, { 0xb1, 0xa1 })) == GenerationRelation::LocalBehind);
	CHECK(compareGenerations(gen(0xb1, { 0xa1 }), gen(0xa1)) == GenerationRelation::PeerBehind);
	/* Both moved on from a1 independently: split brain. */
	CHECK(compareGenerations(gen(0xa2, { 0xa1 }), gen(0xb1, { 0xa1 })) == GenerationRelation::Diverged);
	CHECK(std::string(sk::generationRelationName(GenerationRelation::Diverged)) == "diverged");
}

TEST_CASE("rotate keeps a bounded newest-first history; adopt keeps the old UUID")
{
	Generation g;
	g.rotate(1);
	CHECK(g.current == 1);
	CHECK(g.history.empty());	/* 0 (no data) never enters history */
	for (uint64_t u = 2; u <= 20; u++)
		g.rotate(u);
	CHECK(g.current == 20);
	REQUIRE(g.history.size() == Generation::kHistorySize);
	CHECK(g.history.front() == 19);
	CHECK(g.history.back() == 20 - Generation::kHistorySize);

	Generation s = gen(0xa1);
	s.adopt(0xb1);
	CHECK(s.current == 0xb1);
	CHECK(s.history == std::vector<uint64_t>{ 0xa1 });
	s.adopt(0xb1);
	CHECK(s.history == std::vector<uint64_t>{ 0xa1 });
	CHECK(sk::formatGeneration(s) == "cur=b1 hist=[a1] in_sync=1 was_prim=0");
}

TEST_CASE("serialize/parse round trip and checksum detection")
{
	Generation g = gen(0xdeadbeefcafe, { 0xa1, 0xa0 }, false, true);
	std::string text = sk::serializeGeneration(g);
	auto back = sk::parseGeneration(text);
	REQUIRE_MESSAGE(back.ok(), back.error().message);
	CHECK(*back == g);

	/* Any flipped byte in the covered part is caught. */
	std::string bad = text;
	bad[bad.find("in_sync 0") + 8] = '1';
	auto r = sk::parseGeneration(bad);
	CHECK(r.code() == -EBADMSG);
	CHECK(r.error().message.find("checksum mismatch") != std::string::npos);

	/* A torn write (prefix only) has no checksum line. */
	CHECK(sk::parseGeneration(text.substr(0, text.size() / 2)).code() == -EBADMSG);
	CHECK(sk::parseGeneration("").code() == -EBADMSG);
}

TEST_CASE("GenerationStore: missing file is a new node, save/load round trip")
{
	TempDir dir;
	GenerationStore store(dir.path);
	auto fresh = store.load();
	REQUIRE_MESSAGE(fresh.ok(), fresh.error().message);
	CHECK(fresh->empty());
	CHECK_FALSE(fresh->wasPrimary);

	Generation g = gen(0xa2, { 0xa1 }, true, true);
	auto st = store.save(g);
	REQUIRE_MESSAGE(st.ok(), st.error().message);
	auto loaded = store.load();
	REQUIRE_MESSAGE(loaded.ok(), loaded.error().message);
	CHECK(*loaded == g);

	/* Overwrite is atomic and leaves no temp file behind. */
	g.rotate(0xa3);
	REQUIRE(store.save(g).ok());
	CHECK(store.load()->current == 0xa3);
	CHECK_FALSE(std::filesystem::exists(store.path() + ".tmp"));
	struct stat sb;
	REQUIRE(stat(store.path().c_str(), &sb) == 0);
	CHECK((sb.st_mode & 0777) == 0600);
}

TEST_CASE("GenerationStore: a corrupt or torn file is an error, never an empty node")
{
	TempDir dir;
	GenerationStore store(dir.path);
	REQUIRE(store.save(gen(0xa2, { 0xa1 }, true, true)).ok());
	std::string text = readFile(store.path());

	writeFile(store.path(), text.substr(0, text.size() - 10));
	auto torn = store.load();
	CHECK(torn.code() == -EBADMSG);
	CHECK(torn.error().message.find(store.path()) != std::string::npos);

	std::string flipped = text;
	flipped[flipped.find("was_primary 1") + 12] = '0';
	writeFile(store.path(), flipped);
	CHECK(store.load().code() == -EBADMSG);

	writeFile(store.path(), "garbage\n");
	CHECK(store.load().code() == -EBADMSG);
}

TEST_CASE("GenerationStore: save reports an unwritable directory")
{
	GenerationStore store("/nonexistent-sk-dir/state");
	auto st = store.save(gen(1));
	CHECK_FALSE(st.ok());
	CHECK(st.code() == -ENOENT);
}
