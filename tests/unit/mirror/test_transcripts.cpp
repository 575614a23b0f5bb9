/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Golden transcripts (etcd datadriven style) for the mirror state machine:
 * testdata/<name>.txt hold "command / ---- / expected output" blocks replayed on two
 * simulated nodes. REWRITE=1 regenerates the expected output (review the diff!).
 */
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "mirror_sim.h"

namespace {

struct Block {
	std::vector<std::string> before;	/* comments and blank lines, kept verbatim */
	std::string command;
	int line = 0;
	std::vector<std::string> expected;
};

std::vector<Block> parse(const std::string &file, std::vector<std::string> *trailer, std::string *error)
{
	std::ifstream in(file);
	std::vector<std::string> lines;
	for (std::string l; std::getline(in, l);)
		lines.push_back(l);
	std::vector<Block> blocks;
	Block cur;
	for (size_t i = 0; i < lines.size(); i++) {
		const std::string &l = lines[i];
		if (l.empty() || l[0] == '#') {
			cur.before.push_back(l);
			continue;
		}
		cur.command = l;
		cur.line = static_cast<int>(i + 1);
		if (i + 1 >= lines.size() || lines[i + 1] != "----") {
			*error = fmt::format("{}:{}: expected '----' after the command", file, i + 1);
			return {};
		}
		i += 2;
		for (; i < lines.size() && !lines[i].empty(); i++)
			cur.expected.push_back(lines[i]);
		blocks.push_back(std::move(cur));
		cur = Block{};
		if (i < lines.size())
			cur.before.push_back("");	/* the separating blank line */
	}
	*trailer = cur.before;
	return blocks;
}

std::string diff(const std::vector<std::string> &want, const std::vector<std::string> &got)
{
	std::string out;
	size_t n = std::max(want.size(), got.size());
	for (size_t i = 0; i < n; i++) {
		const std::string *w = i < want.size() ? &want[i] : nullptr;
		const std::string *g = i < got.size() ? &got[i] : nullptr;
		if (w && g && *w == *g) {
			out += "  " + *w + "\n";
			continue;
		}
		if (w)
			out += "- " + *w + "\n";
		if (g)
			out += "+ " + *g + "\n";
	}
	return out;
}

std::vector<std::string> transcriptFiles()
{
	std::vector<std::string> files;
	for (const auto &e : std::filesystem::directory_iterator(MIRROR_TESTDATA))
		if (e.path().extension() == ".txt")
			files.push_back(e.path().string());
	std::sort(files.begin(), files.end());
	return files;
}

} /* namespace */

TEST_CASE("mirror transcripts replay exactly")
{
	const char *rw = std::getenv("REWRITE");
	bool rewrite = rw && std::string(rw) == "1";
	auto files = transcriptFiles();
	REQUIRE_MESSAGE(!files.empty(), "no transcripts in " MIRROR_TESTDATA);
	for (const std::string &file : files) {
		CAPTURE(file);
		std::vector<std::string> trailer;
		std::string error;
		std::vector<Block> blocks = parse(file, &trailer, &error);
		REQUIRE_MESSAGE(error.empty(), error);
		sk::test::MirrorSim sim;
		std::ostringstream rewritten;
		for (Block &b : blocks) {
			std::vector<std::string> got = sim.run(b.command);
			for (const auto &l : got) {
				/* Invariant violations fail even when rewriting. */
				CHECK_MESSAGE(l.rfind("!!", 0) != 0, file << ":" << b.line << ": " << l);
				CHECK_MESSAGE(l.rfind("??", 0) != 0, file << ":" << b.line << ": " << l);
			}
			if (!rewrite && got != b.expected)
				FAIL_CHECK(file << ":" << b.line << ": " << b.command
					<< "\n--- expected / +++ got:\n" << diff(b.expected, got));
			for (const auto &l : b.before)
				rewritten << l << "\n";
			rewritten << b.command << "\n----\n";
			for (const auto &l : got)
				rewritten << l << "\n";
		}
		for (const auto &l : trailer)
			rewritten << l << "\n";
		if (rewrite) {
			std::ofstream(file) << rewritten.str();
			MESSAGE("rewrote " << file);
		}
	}
}
