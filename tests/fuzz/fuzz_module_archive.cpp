/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the module archive reader (core/module_package.h): the code that
 * reads an archive from outside in `skctl module install`. Inputs whose first byte is odd
 * are raw bytes (tar or tar.gz); even ones describe entries (type, mode, name, data, link
 * target) that are written with libarchive first, so the fuzzer reaches the path, link and
 * type rules without fighting tar checksums. Whatever the reader accepts must keep the
 * bundle invariants and the limits, survive the checks, and read back the same once packed.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <archive.h>
#include <archive_entry.h>

#include "core/module_package.h"

namespace {

void check(bool cond)
{
	if (!cond)
		abort();
}

sk::ModuleLimits fuzzLimits()
{
	sk::ModuleLimits l;
	l.maxEntries = 32;
	l.maxFileBytes = 4096;
	l.maxTotalBytes = 16384;
	l.maxArchiveBytes = 1 << 20;
	l.maxPathBytes = 64;
	l.maxDepth = 6;
	return l;
}

class Cursor
{
public:
	Cursor(const uint8_t *data, size_t size) : p_(data), left_(size) {}
	bool empty() const { return left_ == 0; }
	uint8_t byte()
	{
		if (!left_)
			return 0;
		left_--;
		return *p_++;
	}
	std::string bytes(size_t n)
	{
		n = n < left_ ? n : left_;
		std::string s(reinterpret_cast<const char *>(p_), n);
		p_ += n;
		left_ -= n;
		return s;
	}

private:
	const uint8_t *p_;
	size_t left_;
};

la_ssize_t append(struct archive *, void *client, const void *buf, size_t len)
{
	static_cast<std::string *>(client)->append(static_cast<const char *>(buf), len);
	return static_cast<la_ssize_t>(len);
}

/* Entries described by the input, written as a plain tar. */
std::string buildTar(Cursor &c)
{
	static const unsigned kTypes[] = { AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFREG /* hard link */, AE_IFCHR, AE_IFIFO };
	std::string out;
	struct archive *a = archive_write_new();
	archive_write_set_format_pax_restricted(a);
	archive_write_open2(a, &out, nullptr, append, nullptr, nullptr);
	for (int n = 0; n < 40 && !c.empty(); n++) {
		uint8_t t = c.byte() % 6;
		unsigned perm = (static_cast<unsigned>(c.byte()) << 8 | c.byte()) & 07777;
		std::string path = c.bytes(c.byte() % 80);
		std::string extra = c.bytes(c.byte());
		if (path.find('\0') != std::string::npos || extra.find('\0') != std::string::npos)
			continue;
		struct archive_entry *e = archive_entry_new();
		archive_entry_set_pathname(e, path.c_str());
		archive_entry_set_filetype(e, kTypes[t]);
		archive_entry_set_perm(e, perm);
		if (t == 2)
			archive_entry_set_symlink(e, extra.c_str());
		if (t == 3)
			archive_entry_set_hardlink(e, extra.c_str());
		if (t == 0)
			archive_entry_set_size(e, static_cast<la_int64_t>(extra.size()));
		int r = archive_write_header(a, e);
		if (r == ARCHIVE_OK && t == 0 && !extra.empty())
			archive_write_data(a, extra.data(), extra.size());
		archive_entry_free(e);
		if (r == ARCHIVE_FATAL)
			break;
	}
	archive_write_close(a);
	archive_write_free(a);
	return out;
}

} /* namespace */

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	const sk::ModuleLimits limits = fuzzLimits();
	std::string input;
	if (data[0] & 1) {
		input.assign(reinterpret_cast<const char *>(data + 1), size - 1);
	} else {
		Cursor c(data + 1, size - 1);
		input = buildTar(c);
	}
	auto r = sk::readModuleArchiveMemory(input.data(), input.size(), "fuzz.tar", limits);
	if (!r.ok()) {
		check(r.code() < 0 && !r.error().message.empty());
		return 0;
	}
	const sk::ModuleBundle &b = r.value();
	check(sk::checkModuleShape(b, limits).ok());
	check(b.entries.size() <= limits.maxEntries);
	check(b.totalBytes() <= limits.maxTotalBytes);
	for (const sk::ModuleEntry &e : b.entries) {
		check(!e.path.empty() && e.path.size() <= limits.maxPathBytes && e.path[0] != '/');
		if (e.kind == sk::ModuleEntryKind::File)
			check(e.data.size() <= limits.maxFileBytes);
	}
	sk::ModuleCheck mc = sk::checkModuleBundle(b, nullptr, nullptr);
	(void)mc;

	/* Packed again (under a top directory "m/"), it reads back as the same module. */
	auto packed = sk::packModuleArchive(b, "m");
	check(packed.ok());
	sk::ModuleLimits again = limits;
	again.maxEntries += 1;
	again.maxPathBytes += 2;
	again.maxDepth += 1;
	auto back = sk::readModuleArchiveMemory(packed->data(), packed->size(), "again.tar.gz", again);
	check(back.ok());
	check(back->entries.size() == b.entries.size());
	for (size_t i = 0; i < b.entries.size(); i++) {
		const sk::ModuleEntry &x = b.entries[i], &y = back->entries[i];
		check(x.path == y.path && x.kind == y.kind && x.data == y.data);
		if (x.kind == sk::ModuleEntryKind::File)
			check(y.mode == (x.mode & 0755));
	}
	return 0;
}
