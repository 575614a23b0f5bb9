/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Data generations: comparison rules and the crash-safe generation file
 * (text, one field per line, ended by an XXH64 checksum of the lines above).
 */
#include "mirror/generation.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

#include <fmt/format.h>
#include <xxhash.h>

namespace sk {

namespace {

constexpr std::string_view kMagic = "sk-generation 1";

int writeAll(int fd, std::string_view data)
{
	while (!data.empty()) {
		ssize_t n = ::write(fd, data.data(), data.size());
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data.remove_prefix(static_cast<size_t>(n));
	}
	return 0;
}

bool parseHex(std::string_view text, uint64_t *out)
{
	if (text.empty() || text.size() > 16)
		return false;
	uint64_t v = 0;
	for (char c : text) {
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			return false;
		v = (v << 4) | static_cast<uint64_t>(d);
	}
	*out = v;
	return true;
}

std::vector<std::string_view> splitWords(std::string_view line)
{
	std::vector<std::string_view> words;
	size_t pos = 0;
	while (pos < line.size()) {
		size_t end = line.find(' ', pos);
		if (end == std::string_view::npos)
			end = line.size();
		if (end > pos)
			words.push_back(line.substr(pos, end - pos));
		pos = end + 1;
	}
	return words;
}

std::string body(const Generation &g)
{
	std::string out{ kMagic };
	out += fmt::format("\ncurrent {:x}\nhistory", g.current);
	for (uint64_t h : g.history)
		out += fmt::format(" {:x}", h);
	out += fmt::format("\nin_sync {}\nwas_primary {}\n", g.inSync ? 1 : 0, g.wasPrimary ? 1 : 0);
	return out;
}

} /* namespace */

bool Generation::inHistory(uint64_t uuid) const
{
	return uuid != 0 && std::find(history.begin(), history.end(), uuid) != history.end();
}

void Generation::rotate(uint64_t newUuid)
{
	if (current != 0)
		history.insert(history.begin(), current);
	if (history.size() > kHistorySize)
		history.resize(kHistorySize);
	current = newUuid;
}

void Generation::adopt(uint64_t peerUuid)
{
	if (current == peerUuid)
		return;
	/* Our old UUID stays in history so a later meeting still recognises it. */
	rotate(peerUuid);
}

GenerationRelation compareGenerations(const Generation &local, const Generation &peer)
{
	if (local.empty() && peer.empty())
		return GenerationRelation::BothEmpty;
	if (local.empty())
		return GenerationRelation::LocalBehind;
	if (peer.empty())
		return GenerationRelation::PeerBehind;
	if (local.current == peer.current)
		return GenerationRelation::Same;
	if (peer.inHistory(local.current))
		return GenerationRelation::LocalBehind;
	if (local.inHistory(peer.current))
		return GenerationRelation::PeerBehind;
	return GenerationRelation::Diverged;
}

const char *generationRelationName(GenerationRelation relation)
{
	switch (relation) {
	case GenerationRelation::BothEmpty: return "both-empty";
	case GenerationRelation::Same: return "same";
	case GenerationRelation::LocalBehind: return "local-behind";
	case GenerationRelation::PeerBehind: return "peer-behind";
	case GenerationRelation::Diverged: return "diverged";
	}
	return "?";
}

std::string formatGeneration(const Generation &g)
{
	std::string hist;
	for (uint64_t h : g.history)
		hist += fmt::format("{}{:x}", hist.empty() ? "" : ",", h);
	return fmt::format("cur={:x} hist=[{}] in_sync={} was_prim={}", g.current, hist,
		g.inSync ? 1 : 0, g.wasPrimary ? 1 : 0);
}

std::string serializeGeneration(const Generation &g)
{
	std::string text = body(g);
	text += fmt::format("checksum {:016x}\n", XXH64(text.data(), text.size(), 0));
	return text;
}

Result<Generation> parseGeneration(std::string_view text)
{
	size_t sumPos = text.rfind("checksum ");
	if (sumPos == std::string_view::npos || (sumPos != 0 && text[sumPos - 1] != '\n'))
		return makeError(-EBADMSG, "generation file has no checksum line (torn write?)");
	std::string_view sumLine = text.substr(sumPos + 9);
	if (!sumLine.empty() && sumLine.back() == '\n')
		sumLine.remove_suffix(1);
	uint64_t expected;
	if (sumLine.size() != 16 || !parseHex(sumLine, &expected))
		return makeError(-EBADMSG, "generation file has a malformed checksum line");
	std::string_view covered = text.substr(0, sumPos);
	uint64_t got = XXH64(covered.data(), covered.size(), 0);
	if (got != expected)
		return makeError(-EBADMSG, fmt::format("generation file checksum mismatch "
			"(stored {:016x}, computed {:016x}): file is torn or corrupt", expected, got));

	Generation g;
	bool seen[5] = {};
	size_t pos = 0;
	int lineNo = 0;
	while (pos < covered.size()) {
		size_t end = covered.find('\n', pos);
		if (end == std::string_view::npos)
			end = covered.size();
		std::string_view line = covered.substr(pos, end - pos);
		pos = end + 1;
		if (lineNo++ == 0) {
			if (line != kMagic)
				return makeError(-EBADMSG, fmt::format("generation file: unknown header '{}'", line));
			seen[0] = true;
			continue;
		}
		auto words = splitWords(line);
		if (words.empty())
			continue;
		std::string_view key = words[0];
		bool okLine = true;
		if (key == "current") {
			okLine = words.size() == 2 && parseHex(words[1], &g.current);
			seen[1] = true;
		} else if (key == "history") {
			okLine = words.size() - 1 <= Generation::kHistorySize;
			for (size_t i = 1; okLine && i < words.size(); i++) {
				uint64_t h;
				okLine = parseHex(words[i], &h);
				g.history.push_back(h);
			}
			seen[2] = true;
		} else if (key == "in_sync" || key == "was_primary") {
			okLine = words.size() == 2 && (words[1] == "0" || words[1] == "1");
			bool v = okLine && words[1] == "1";
			if (key == "in_sync") {
				g.inSync = v;
				seen[3] = true;
			} else {
				g.wasPrimary = v;
				seen[4] = true;
			}
		}
		/* Unknown keys are skipped: a newer skd may add fields. */
		if (!okLine)
			return makeError(-EBADMSG, fmt::format("generation file: bad line '{}'", line));
	}
	for (bool s : seen)
		if (!s)
			return makeError(-EBADMSG, "generation file is missing a field");
	return g;
}

Result<Generation> GenerationStore::load() const
{
	std::string file = path();
	int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return Generation{};	/* new node: no data generation yet */
		return makeError(-errno, errnoMessage("open " + file, -errno));
	}
	std::string text;
	char buf[4096];
	for (;;) {
		ssize_t n = ::read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int err = -errno;
			::close(fd);
			return makeError(err, errnoMessage("read " + file, err));
		}
		if (n == 0)
			break;
		text.append(buf, static_cast<size_t>(n));
		if (text.size() > 64 * 1024) {
			::close(fd);
			return makeError(-EBADMSG, file + ": too large for a generation file");
		}
	}
	::close(fd);
	auto parsed = parseGeneration(text);
	if (!parsed)
		return makeError(parsed.code(), file + ": " + parsed.error().message);
	return parsed;
}

Status GenerationStore::save(const Generation &generation) const
{
	std::string file = path();
	std::string tmp = file + ".tmp";
	std::string text = serializeGeneration(generation);

	int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return makeError(-errno, errnoMessage("create " + tmp, -errno));
	int err = writeAll(fd, text);
	if (err == 0 && ::fsync(fd) < 0)
		err = -errno;
	if (::close(fd) < 0 && err == 0)
		err = -errno;
	if (err < 0) {
		::unlink(tmp.c_str());
		return makeError(err, errnoMessage("write " + tmp, err));
	}
	if (::rename(tmp.c_str(), file.c_str()) < 0) {
		err = -errno;
		::unlink(tmp.c_str());
		return makeError(err, errnoMessage("rename " + tmp, err));
	}
	/* The rename is durable only once the directory entry is. */
	int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return makeError(-errno, errnoMessage("open " + dir_, -errno));
	err = ::fsync(dfd) < 0 ? -errno : 0;
	::close(dfd);
	if (err < 0)
		return makeError(err, errnoMessage("fsync " + dir_, err));
	return Status::success();
}

} /* namespace sk */
