/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Module packages: bounded readers (directory; tar/tar.gz through libarchive), the checks
 * skd applies plus the file checks, atomic install and remove in modules_dir, the archive
 * writer. Nothing is written into modules_dir before the whole module was read and checked.
 */
#include "core/module_package.h"

#include "core/log.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

namespace sk {

namespace {

const LogCategory kLog("module");

/* Symlinks followed while resolving one link inside a module. */
constexpr size_t kMaxSymlinkHops = 16;
/* Tar headers and padding allowed on top of maxTotalBytes of file data. */
constexpr uint64_t kHeaderSlackBytes = 8u << 20;
/* Waiting for another skctl that installs or removes: 100 x 100 ms. */
constexpr int kLockTries = 100;
/* Removing a tree: deeper than this is not something we installed. */
constexpr int kMaxRemoveDepth = 64;

/* Closes a file descriptor when it goes out of scope. */
class UniqueFd
{
public:
	explicit UniqueFd(int fd = -1) : fd_(fd) {}
	UniqueFd(UniqueFd &&o) noexcept : fd_(o.release()) {}
	UniqueFd &operator=(UniqueFd &&o) noexcept
	{
		reset(o.release());
		return *this;
	}
	UniqueFd(const UniqueFd &) = delete;
	UniqueFd &operator=(const UniqueFd &) = delete;
	~UniqueFd() { reset(); }

	int get() const { return fd_; }
	int release()
	{
		int fd = fd_;
		fd_ = -1;
		return fd;
	}
	void reset(int fd = -1)
	{
		if (fd_ >= 0)
			close(fd_);
		fd_ = fd;
	}

private:
	int fd_;
};

struct DirCloser {
	void operator()(DIR *d) const { closedir(d); }
};
using UniqueDir = std::unique_ptr<DIR, DirCloser>;

/* A name from outside, safe to print: control and non-ASCII bytes as \xNN, cut at 100. */
std::string printable(std::string_view s)
{
	std::string out = "\"";
	for (size_t i = 0; i < s.size() && i < 100; i++) {
		unsigned char c = static_cast<unsigned char>(s[i]);
		if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
			out += fmt::format("\\x{:02x}", c);
		else
			out += static_cast<char>(c);
	}
	if (s.size() > 100)
		out += "...";
	return out + "\"";
}

const char *kindName(ModuleEntryKind k)
{
	switch (k) {
	case ModuleEntryKind::File:
		return "file";
	case ModuleEntryKind::Directory:
		return "directory";
	case ModuleEntryKind::Symlink:
		return "symlink";
	}
	return "?";
}

/* Components of a relative path, "" and "." dropped (".." kept). */
std::vector<std::string> splitPath(std::string_view p)
{
	std::vector<std::string> out;
	size_t start = 0;
	while (start <= p.size()) {
		size_t end = p.find('/', start);
		if (end == std::string_view::npos)
			end = p.size();
		std::string_view c = p.substr(start, end - start);
		if (!c.empty() && c != ".")
			out.emplace_back(c);
		start = end + 1;
	}
	return out;
}

std::string joinPath(const std::vector<std::string> &parts)
{
	std::string out;
	for (const auto &c : parts) {
		if (!out.empty())
			out += '/';
		out += c;
	}
	return out;
}

/*
 * The normalised relative form of a name from a directory or an archive, or false with the
 * reason. "" (true) is the module's root ("." or "./").
 */
bool normaliseEntryPath(std::string_view raw, const ModuleLimits &limits, std::string *out, std::string *why)
{
	if (raw.empty()) {
		*why = "an entry without a name";
		return false;
	}
	if (raw.size() > 4 * limits.maxPathBytes + 16) {
		*why = fmt::format("path longer than {} bytes", limits.maxPathBytes);
		return false;
	}
	for (char ch : raw) {
		unsigned char c = static_cast<unsigned char>(ch);
		if (c < 0x20 || c == 0x7f) {
			*why = "control character in the name";
			return false;
		}
		/* Names travel through tar headers and terminals: keep them portable. */
		if (c >= 0x80) {
			*why = "non-ASCII character in the name (module file names are ASCII)";
			return false;
		}
	}
	if (raw[0] == '/') {
		*why = "absolute path, expected a path inside the module";
		return false;
	}
	std::vector<std::string> parts = splitPath(raw);
	for (const auto &c : parts) {
		if (c == "..") {
			*why = "\"..\" in the path, expected a path inside the module";
			return false;
		}
	}
	std::string res = joinPath(parts);
	if (res.size() > limits.maxPathBytes) {
		*why = fmt::format("path longer than {} bytes", limits.maxPathBytes);
		return false;
	}
	if (parts.size() > limits.maxDepth) {
		*why = fmt::format("more than {} directory levels", limits.maxDepth);
		return false;
	}
	*out = std::move(res);
	return true;
}

const ModuleEntry *findSorted(const std::vector<ModuleEntry> &entries, std::string_view path)
{
	auto it = std::lower_bound(entries.begin(), entries.end(), path,
				   [](const ModuleEntry &e, std::string_view p) { return e.path < p; });
	return it != entries.end() && it->path == path ? &*it : nullptr;
}

/*
 * Follows a symlink inside the bundle (sorted entries). On success *target is the entry it
 * finally names, or null for the module's root. On failure, the reason.
 */
bool resolveLink(const std::vector<ModuleEntry> &entries, const ModuleEntry &link, const ModuleEntry **target,
		 std::string *why)
{
	if (link.data.empty()) {
		*why = "symlink with an empty target";
		return false;
	}
	std::vector<std::string> stack = splitPath(link.path);
	stack.pop_back();
	if (link.data[0] == '/') {
		*why = fmt::format("symlink to {} points outside the module (absolute target)", printable(link.data));
		return false;
	}
	std::vector<std::string> first = splitPath(link.data);
	std::deque<std::string> pending(first.begin(), first.end());
	size_t hops = 0;
	while (!pending.empty()) {
		std::string c = std::move(pending.front());
		pending.pop_front();
		if (c == "..") {
			if (stack.empty()) {
				*why = fmt::format("symlink to {} points outside the module", printable(link.data));
				return false;
			}
			stack.pop_back();
			continue;
		}
		stack.push_back(std::move(c));
		const ModuleEntry *e = findSorted(entries, joinPath(stack));
		if (!e) {
			*why = fmt::format("symlink to {} points to nothing in the module", printable(link.data));
			return false;
		}
		if (e->kind == ModuleEntryKind::Symlink) {
			if (++hops > kMaxSymlinkHops) {
				*why = fmt::format("symlink to {}: more than {} levels of symlinks",
						   printable(link.data), kMaxSymlinkHops);
				return false;
			}
			stack.pop_back();
			if (e->data.empty() || e->data[0] == '/') {
				*why = fmt::format("symlink to {} points outside the module (through {})",
						   printable(link.data), printable(e->path));
				return false;
			}
			std::vector<std::string> more = splitPath(e->data);
			pending.insert(pending.begin(), more.begin(), more.end());
			continue;
		}
		if (e->kind == ModuleEntryKind::File && !pending.empty()) {
			*why = fmt::format("symlink to {} goes through the file {}", printable(link.data),
					   printable(e->path));
			return false;
		}
	}
	*target = stack.empty() ? nullptr : findSorted(entries, joinPath(stack));
	return true;
}

/*
 * Turns what a reader collected into a bundle: strips an archive's single top directory,
 * refuses duplicates and entries under a non-directory, adds missing parent directories,
 * refuses symlinks that do not resolve inside.
 */
Result<ModuleBundle> finishBundle(std::vector<ModuleEntry> entries, const std::string &source, bool fromArchive,
				  const ModuleLimits &limits)
{
	ModuleBundle b;
	b.source = source;
	b.fromArchive = fromArchive;
	auto fail = [&](std::string_view path, const std::string &why) {
		return makeError(-EINVAL, fmt::format("{}: {}", b.display(path), why));
	};

	if (fromArchive && !entries.empty() &&
	    std::none_of(entries.begin(), entries.end(), [](const ModuleEntry &e) { return e.path == "module.json"; })) {
		std::string top = entries[0].path.substr(0, entries[0].path.find('/'));
		bool common = std::all_of(entries.begin(), entries.end(), [&](const ModuleEntry &e) {
			return e.path == top
				       ? e.kind == ModuleEntryKind::Directory
				       : e.path.size() > top.size() && e.path.compare(0, top.size(), top) == 0 &&
						 e.path[top.size()] == '/';
		});
		if (common) {
			std::vector<ModuleEntry> inner;
			for (auto &e : entries) {
				if (e.path == top)
					continue;
				e.path.erase(0, top.size() + 1);
				inner.push_back(std::move(e));
			}
			entries = std::move(inner);
		}
	}

	std::sort(entries.begin(), entries.end(), [](const ModuleEntry &a, const ModuleEntry &c) { return a.path < c.path; });
	for (size_t i = 1; i < entries.size(); i++)
		if (entries[i].path == entries[i - 1].path)
			return fail(entries[i].path, "appears twice");

	std::set<std::string> implicit;
	for (const ModuleEntry &e : entries) {
		for (size_t slash = e.path.find('/'); slash != std::string::npos; slash = e.path.find('/', slash + 1)) {
			std::string parent = e.path.substr(0, slash);
			const ModuleEntry *p = findSorted(entries, parent);
			if (p && p->kind != ModuleEntryKind::Directory)
				return fail(e.path, fmt::format("its parent {} is a {}, not a directory", printable(parent),
								kindName(p->kind)));
			if (!p)
				implicit.insert(parent);
		}
	}
	for (const std::string &dir : implicit) {
		ModuleEntry d;
		d.path = dir;
		d.kind = ModuleEntryKind::Directory;
		d.mode = 0755;
		entries.push_back(std::move(d));
	}
	if (!implicit.empty())
		std::sort(entries.begin(), entries.end(),
			  [](const ModuleEntry &a, const ModuleEntry &c) { return a.path < c.path; });
	if (entries.size() > limits.maxEntries)
		return makeError(-EFBIG, fmt::format("{}: more than {} entries (with implied directories)", source,
						     limits.maxEntries));

	for (const ModuleEntry &e : entries) {
		if (e.kind != ModuleEntryKind::Symlink)
			continue;
		const ModuleEntry *target = nullptr;
		std::string why;
		if (!resolveLink(entries, e, &target, &why))
			return fail(e.path, why);
	}
	b.entries = std::move(entries);
	return b;
}

/* ---- directory reader ---- */

struct DirWalk {
	const ModuleLimits &limits;
	std::string root;
	std::vector<ModuleEntry> entries;
	uint64_t total = 0;
};

Result<std::string> readBounded(int fd, uint64_t max, const std::string &what)
{
	std::string data;
	char buf[65536];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return makeError(-errno, errnoMessage("cannot read " + what, errno));
		}
		if (n == 0)
			return data;
		if (data.size() + static_cast<size_t>(n) > max)
			return makeError(-EFBIG, fmt::format("{}: larger than {} bytes", what, max));
		data.append(buf, static_cast<size_t>(n));
	}
}

/* Reads the directory open on fd (taken over) whose path in the module is prefix. */
Status walkDir(DirWalk &w, int fd, const std::string &prefix)
{
	DIR *raw = fdopendir(fd);
	if (!raw) {
		int err = errno;
		close(fd);
		return makeError(-err, errnoMessage("cannot read " + w.root + "/" + prefix, err));
	}
	UniqueDir d(raw);
	std::vector<std::string> names;
	errno = 0;
	while (struct dirent *de = readdir(d.get())) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		names.emplace_back(de->d_name);
		if (w.entries.size() + names.size() > w.limits.maxEntries)
			return makeError(-EFBIG, fmt::format("{}: more than {} entries", w.root, w.limits.maxEntries));
	}
	std::sort(names.begin(), names.end());
	int dfd = dirfd(d.get());
	for (const std::string &name : names) {
		if (w.entries.size() >= w.limits.maxEntries)
			return makeError(-EFBIG, fmt::format("{}: more than {} entries", w.root, w.limits.maxEntries));
		std::string rel = prefix.empty() ? name : prefix + "/" + name;
		std::string shown = w.root + "/" + rel;
		std::string path, why;
		if (!normaliseEntryPath(rel, w.limits, &path, &why))
			return makeError(-EINVAL, fmt::format("{}: {}", printable(shown), why));
		struct stat st;
		if (fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
			return makeError(-errno, errnoMessage("cannot stat " + shown, errno));
		ModuleEntry e;
		e.path = path;
		e.mode = st.st_mode & 07777;
		e.mtime = st.st_mtim.tv_sec;
		if (S_ISREG(st.st_mode)) {
			if (static_cast<uint64_t>(st.st_size) > w.limits.maxFileBytes)
				return makeError(-EFBIG, fmt::format("{}: larger than {} bytes", shown, w.limits.maxFileBytes));
			UniqueFd f(openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
			if (f.get() < 0)
				return makeError(-errno, errnoMessage("cannot open " + shown, errno));
			auto data = readBounded(f.get(), w.limits.maxFileBytes, shown);
			if (!data)
				return data.error();
			w.total += data->size();
			if (w.total > w.limits.maxTotalBytes)
				return makeError(-EFBIG, fmt::format("{}: more than {} bytes of files", w.root,
								     w.limits.maxTotalBytes));
			e.kind = ModuleEntryKind::File;
			e.data = std::move(data.value());
			w.entries.push_back(std::move(e));
		} else if (S_ISDIR(st.st_mode)) {
			e.kind = ModuleEntryKind::Directory;
			w.entries.push_back(std::move(e));
			int sub = openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				return makeError(-errno, errnoMessage("cannot open " + shown, errno));
			Status s = walkDir(w, sub, path);
			if (!s)
				return s;
		} else if (S_ISLNK(st.st_mode)) {
			std::string target(w.limits.maxPathBytes + 1, '\0');
			ssize_t n = readlinkat(dfd, name.c_str(), target.data(), target.size());
			if (n < 0)
				return makeError(-errno, errnoMessage("cannot read the symlink " + shown, errno));
			if (static_cast<size_t>(n) > w.limits.maxPathBytes)
				return makeError(-EINVAL, fmt::format("{}: symlink target longer than {} bytes", shown,
								      w.limits.maxPathBytes));
			target.resize(static_cast<size_t>(n));
			e.kind = ModuleEntryKind::Symlink;
			e.data = std::move(target);
			w.entries.push_back(std::move(e));
		} else {
			const char *what = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device file"
					   : S_ISFIFO(st.st_mode)			 ? "a FIFO"
											 : "a socket";
			return makeError(-EINVAL, fmt::format("{}: {}, not allowed in a module (files, directories "
							      "and symlinks only)",
							      shown, what));
		}
	}
	return {};
}

/* ---- archive reader ---- */

struct ArchiveReadFree {
	void operator()(struct archive *a) const { archive_read_free(a); }
};
struct ArchiveWriteFree {
	void operator()(struct archive *a) const { archive_write_free(a); }
};
struct ArchiveEntryFree {
	void operator()(struct archive_entry *e) const { archive_entry_free(e); }
};

std::string archiveError(struct archive *a)
{
	const char *s = archive_error_string(a);
	return s ? printable(s) : "unknown error";
}

const char *archiveTypeName(unsigned type)
{
	switch (type) {
	case AE_IFCHR:
		return "a character device";
	case AE_IFBLK:
		return "a block device";
	case AE_IFIFO:
		return "a FIFO";
	case AE_IFSOCK:
		return "a socket";
	default:
		return "an entry of unknown type";
	}
}

/* ---- writing ---- */

Status writeAll(int fd, const std::string &data, const std::string &what)
{
	size_t off = 0;
	while (off < data.size()) {
		ssize_t n = write(fd, data.data() + off, data.size() - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return makeError(-errno, errnoMessage("cannot write " + what, errno));
		}
		off += static_cast<size_t>(n);
	}
	return {};
}

Status fsyncAt(int dirfd, const std::string &path, const std::string &what)
{
	UniqueFd fd(path.empty() ? dup(dirfd)
				 : openat(dirfd, path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
	if (fd.get() < 0 || fsync(fd.get()) < 0)
		return makeError(-errno, errnoMessage("cannot fsync " + what, errno));
	return {};
}

/* Deletes parentFd/name and everything below it without following symlinks. */
Status removeTree(int parentFd, const std::string &name, const std::string &shown, int depth = 0)
{
	if (depth > kMaxRemoveDepth)
		return makeError(-ELOOP, fmt::format("{}: more than {} directory levels, not removed", shown,
						     kMaxRemoveDepth));
	int fd = openat(parentFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return {};
		if (errno == ENOTDIR || errno == ELOOP) {
			if (unlinkat(parentFd, name.c_str(), 0) < 0 && errno != ENOENT)
				return makeError(-errno, errnoMessage("cannot remove " + shown, errno));
			return {};
		}
		return makeError(-errno, errnoMessage("cannot open " + shown, errno));
	}
	DIR *raw = fdopendir(fd);
	if (!raw) {
		int err = errno;
		close(fd);
		return makeError(-err, errnoMessage("cannot read " + shown, err));
	}
	UniqueDir d(raw);
	std::vector<std::string> names;
	while (struct dirent *de = readdir(d.get()))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			names.emplace_back(de->d_name);
	for (const std::string &n : names) {
		struct stat st;
		if (fstatat(dirfd(d.get()), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue;
			return makeError(-errno, errnoMessage("cannot stat " + shown + "/" + n, errno));
		}
		if (S_ISDIR(st.st_mode)) {
			Status s = removeTree(dirfd(d.get()), n, shown + "/" + n, depth + 1);
			if (!s)
				return s;
		} else if (unlinkat(dirfd(d.get()), n.c_str(), 0) < 0 && errno != ENOENT) {
			return makeError(-errno, errnoMessage("cannot remove " + shown + "/" + n, errno));
		}
	}
	d.reset();
	if (unlinkat(parentFd, name.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
		return makeError(-errno, errnoMessage("cannot remove " + shown, errno));
	return {};
}

/* mkdir -p, new levels 0755. */
Status makeDirs(const std::string &path)
{
	if (path.empty())
		return makeError(-EINVAL, "empty modules directory");
	for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
		std::string part = path.substr(0, slash);
		if (mkdir(part.c_str(), 0755) < 0 && errno != EEXIST)
			return makeError(-errno, errnoMessage("cannot create " + part, errno));
		if (slash == std::string::npos)
			break;
	}
	return {};
}

/* Opens (creating it if needed) and locks modulesDir; bounded wait for another skctl. */
Result<UniqueFd> lockModulesDir(const std::string &modulesDir)
{
	Status s = makeDirs(modulesDir);
	if (!s)
		return s.error();
	UniqueFd fd(open(modulesDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (fd.get() < 0)
		return makeError(-errno, errnoMessage("cannot open the modules directory " + modulesDir, errno));
	for (int i = 0; i < kLockTries; i++) {
		if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0)
			return fd;
		if (errno != EWOULDBLOCK && errno != EINTR)
			return makeError(-errno, errnoMessage("cannot lock " + modulesDir, errno));
		usleep(100000);
	}
	return makeError(-EBUSY, fmt::format("{} stays locked by another skctl installing or removing a module; "
					     "try again when it is done",
					     modulesDir));
}

bool safeModuleDirName(const std::string &name)
{
	return !name.empty() && name.size() <= 64 && name[0] != '.' && name.find('/') == std::string::npos &&
	       std::none_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
}

std::string randomSuffix()
{
	unsigned char r[4] = {};
	if (getrandom(r, sizeof(r), 0) != sizeof(r)) {
		uint32_t v = static_cast<uint32_t>(getpid()) ^ static_cast<uint32_t>(time(nullptr));
		memcpy(r, &v, sizeof(r));
	}
	return fmt::format("{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3]);
}

std::string stringField(const nlohmann::json &o, const char *key)
{
	auto it = o.find(key);
	return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
}

/*
 * The custom checkers' script names in scripts/. From the loaded config, or, when
 * module.json has problems (its own errors are reported), read leniently from its text so
 * that those scripts are not also reported as unknown.
 */
std::vector<std::string> checkerScripts(const ModuleEntry *moduleJson, const ModuleConfig &config)
{
	std::vector<std::string> out;
	auto add = [&](const std::string &s) {
		if (!s.empty() && s.find('/') == std::string::npos)
			out.push_back(s);
	};
	if (!moduleJson) {
		for (const CheckerConfig &c : config.checkers)
			if (c.type == CheckerType::Custom)
				add(c.script);
		return out;
	}
	nlohmann::json doc = nlohmann::json::parse(moduleJson->data, nullptr, false, true);
	if (!doc.is_object())
		return out;
	auto checkers = doc.find("checkers");
	if (checkers == doc.end() || !checkers->is_array())
		return out;
	for (const nlohmann::json &c : *checkers)
		if (c.is_object())
			add(stringField(c, "script"));
	return out;
}

/* libarchive write callback: appends to a std::string. */
la_ssize_t appendToString(struct archive *, void *client, const void *buf, size_t len)
{
	static_cast<std::string *>(client)->append(static_cast<const char *>(buf), len);
	return static_cast<la_ssize_t>(len);
}

} /* namespace */

/* ---- ModuleBundle ---- */

const ModuleEntry *ModuleBundle::find(std::string_view path) const
{
	return findSorted(entries, path);
}

std::string ModuleBundle::display(std::string_view path) const
{
	if (path.empty())
		return source;
	return fmt::format("{}{}{}", source, fromArchive ? ":" : "/", path);
}

uint64_t ModuleBundle::totalBytes() const
{
	uint64_t n = 0;
	for (const auto &e : entries)
		if (e.kind == ModuleEntryKind::File)
			n += e.data.size();
	return n;
}

/* ---- readers ---- */

Result<ModuleBundle> readModuleDir(const std::string &dir, const ModuleLimits &limits)
{
	int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return makeError(-errno, errnoMessage("cannot open the module directory " + dir, errno));
	DirWalk w{ limits, dir, {}, 0 };
	Status s = walkDir(w, fd, "");
	if (!s)
		return s.error();
	return finishBundle(std::move(w.entries), dir, false, limits);
}

Result<ModuleBundle> readModuleArchiveMemory(const void *data, size_t size, const std::string &source,
					     const ModuleLimits &limits)
{
	auto fail = [&](const std::string &why) { return makeError(-EINVAL, fmt::format("{}: {}", source, why)); };
	if (size > limits.maxArchiveBytes)
		return makeError(-EFBIG, fmt::format("{}: larger than {} bytes", source, limits.maxArchiveBytes));
	std::unique_ptr<struct archive, ArchiveReadFree> a(archive_read_new());
	if (!a)
		return makeError(-ENOMEM, "cannot allocate an archive reader");
	/* Only what `module package` writes (tar, gzip or none): less parser exposed. */
	if (archive_read_support_filter_gzip(a.get()) != ARCHIVE_OK ||
	    archive_read_support_filter_none(a.get()) != ARCHIVE_OK ||
	    archive_read_support_format_tar(a.get()) != ARCHIVE_OK)
		return makeError(-ENOTSUP, "libarchive here cannot read tar.gz: " + archiveError(a.get()));
	if (archive_read_open_memory(a.get(), data, size) != ARCHIVE_OK)
		return fail("not a tar or tar.gz archive: " + archiveError(a.get()));

	const uint64_t streamLimit = limits.maxTotalBytes + kHeaderSlackBytes;
	std::vector<ModuleEntry> entries;
	std::map<std::string, size_t> files;	/* path -> index in entries, for hard links */
	uint64_t total = 0;
	size_t count = 0;
	std::vector<char> buf(65536);
	for (;;) {
		struct archive_entry *ae = nullptr;
		int r = archive_read_next_header(a.get(), &ae);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK)
			return fail("not a valid tar or tar.gz archive: " + archiveError(a.get()));
		if (++count > limits.maxEntries)
			return makeError(-EFBIG, fmt::format("{}: more than {} entries", source, limits.maxEntries));
		if (static_cast<uint64_t>(archive_filter_bytes(a.get(), 0)) > streamLimit)
			return makeError(-EFBIG, fmt::format("{}: more than {} bytes once uncompressed", source,
							     streamLimit));
		const char *rawName = archive_entry_pathname(ae);
		if (!rawName)
			return fail("an entry without a readable name");
		std::string path, why;
		if (!normaliseEntryPath(rawName, limits, &path, &why))
			return fail(fmt::format("{}: {}", printable(rawName), why));
		std::string shown = printable(rawName);

		ModuleEntry e;
		e.path = path;
		e.mode = archive_entry_perm(ae) & 07777;
		e.mtime = archive_entry_mtime(ae);
		unsigned type = archive_entry_filetype(ae);
		if (const char *hard = archive_entry_hardlink(ae)) {
			std::string target;
			if (!normaliseEntryPath(hard, limits, &target, &why))
				return fail(fmt::format("{}: hard link to {}: {}", shown, printable(hard), why));
			auto it = files.find(target);
			if (it == files.end())
				return fail(fmt::format("{}: hard link to {}, which is not an earlier file of the archive",
							shown, printable(hard)));
			e.kind = ModuleEntryKind::File;
			e.data = entries[it->second].data;
			total += e.data.size();
		} else if (type == AE_IFREG) {
			if (archive_entry_sparse_count(ae) > 0)
				return fail(shown + ": a sparse file, not supported in a module");
			if (archive_entry_size_is_set(ae) && archive_entry_size(ae) > 0 &&
			    static_cast<uint64_t>(archive_entry_size(ae)) > limits.maxFileBytes)
				return makeError(-EFBIG, fmt::format("{}: {}: larger than {} bytes", source, shown,
								     limits.maxFileBytes));
			e.kind = ModuleEntryKind::File;
			for (;;) {
				la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
				if (n < 0)
					return fail(fmt::format("{}: cannot read its data: {}", shown, archiveError(a.get())));
				if (n == 0)
					break;
				if (e.data.size() + static_cast<size_t>(n) > limits.maxFileBytes)
					return makeError(-EFBIG, fmt::format("{}: {}: larger than {} bytes", source, shown,
									     limits.maxFileBytes));
				e.data.append(buf.data(), static_cast<size_t>(n));
				total += static_cast<uint64_t>(n);
				if (total > limits.maxTotalBytes)
					break;
			}
		} else if (type == AE_IFDIR) {
			if (archive_entry_size_is_set(ae) && archive_entry_size(ae) > 0)
				return fail(shown + ": a directory entry carrying data");
			e.kind = ModuleEntryKind::Directory;
		} else if (type == AE_IFLNK) {
			const char *target = archive_entry_symlink(ae);
			if (!target || !*target)
				return fail(shown + ": a symlink without a target");
			if (strlen(target) > limits.maxPathBytes)
				return fail(fmt::format("{}: symlink target longer than {} bytes", shown,
							limits.maxPathBytes));
			e.kind = ModuleEntryKind::Symlink;
			e.data = target;
		} else {
			return fail(fmt::format("{}: {}, not allowed in a module (files, directories and symlinks "
						"only)",
						shown, archiveTypeName(type)));
		}
		if (total > limits.maxTotalBytes)
			return makeError(-EFBIG, fmt::format("{}: more than {} bytes of files", source,
							     limits.maxTotalBytes));
		if (path.empty()) {
			if (e.kind != ModuleEntryKind::Directory)
				return fail(shown + ": names the module's top directory but is a " + kindName(e.kind));
			continue;
		}
		if (e.kind == ModuleEntryKind::File)
			files[path] = entries.size();
		entries.push_back(std::move(e));
	}
	return finishBundle(std::move(entries), source, true, limits);
}

Result<ModuleBundle> readModuleArchive(const std::string &file, const ModuleLimits &limits)
{
	UniqueFd fd(open(file.c_str(), O_RDONLY | O_NOCTTY | O_CLOEXEC));
	if (fd.get() < 0)
		return makeError(-errno, errnoMessage("cannot open " + file, errno));
	struct stat st;
	if (fstat(fd.get(), &st) < 0)
		return makeError(-errno, errnoMessage("cannot stat " + file, errno));
	if (!S_ISREG(st.st_mode))
		return makeError(-EINVAL, file + ": neither a module directory nor an archive file");
	if (static_cast<uint64_t>(st.st_size) > limits.maxArchiveBytes)
		return makeError(-EFBIG, fmt::format("{}: larger than {} bytes", file, limits.maxArchiveBytes));
	auto data = readBounded(fd.get(), limits.maxArchiveBytes, file);
	if (!data)
		return data.error();
	return readModuleArchiveMemory(data->data(), data->size(), file, limits);
}

Result<ModuleBundle> readModule(const std::string &dirOrArchive, const ModuleLimits &limits)
{
	struct stat st;
	if (stat(dirOrArchive.c_str(), &st) < 0)
		return makeError(-errno, errnoMessage(dirOrArchive, errno));
	if (S_ISDIR(st.st_mode))
		return readModuleDir(dirOrArchive, limits);
	return readModuleArchive(dirOrArchive, limits);
}

Status checkModuleShape(const ModuleBundle &b, const ModuleLimits &limits)
{
	if (b.entries.size() > limits.maxEntries)
		return makeError(-EFBIG, fmt::format("{}: more than {} entries", b.source, limits.maxEntries));
	for (size_t i = 0; i < b.entries.size(); i++) {
		const ModuleEntry &e = b.entries[i];
		std::string norm, why;
		if (!normaliseEntryPath(e.path, limits, &norm, &why) || norm != e.path || norm.empty())
			return makeError(-EINVAL, fmt::format("{}: {}", printable(e.path),
							      why.empty() ? "not a normalised path" : why));
		if (i > 0 && !(b.entries[i - 1].path < e.path))
			return makeError(-EINVAL, fmt::format("{}: entries not sorted or not unique", printable(e.path)));
		size_t slash = e.path.rfind('/');
		if (slash != std::string::npos) {
			const ModuleEntry *p = b.find(e.path.substr(0, slash));
			if (!p || p->kind != ModuleEntryKind::Directory)
				return makeError(-EINVAL, fmt::format("{}: parent is not a directory entry",
								      printable(e.path)));
		}
		if (e.kind == ModuleEntryKind::Symlink) {
			const ModuleEntry *target = nullptr;
			if (!resolveLink(b.entries, e, &target, &why))
				return makeError(-EINVAL, fmt::format("{}: {}", b.display(e.path), why));
		}
	}
	return {};
}

/* ---- checks ---- */

ModuleCheck checkModuleBundle(const ModuleBundle &b, const ClusterConfig *cluster,
			      const std::vector<ModuleConfig> *installed)
{
	ModuleCheck out;
	auto refuse = [&](std::string_view path, std::string message) {
		out.errors.push_back(ConfigError{ b.display(path), "", std::move(message) });
	};
	const std::string jsonFile = b.display("module.json");
	bool configOk = false;
	const ModuleEntry *mj = b.find("module.json");
	if (!mj) {
		refuse("", "no module.json at the top of the module, expected module.json, scripts/<hook>, ...");
	} else if (mj->kind != ModuleEntryKind::File) {
		refuse("module.json", fmt::format("a {}, expected a regular file", kindName(mj->kind)));
	} else {
		auto m = parseModuleConfig(mj->data, jsonFile, cluster, &out.errors);
		if (m.ok()) {
			out.config = std::move(m.value());
			configOk = true;
		}
	}

	for (const ModuleEntry &e : b.entries)
		if (e.kind == ModuleEntryKind::File && (e.mode & (S_ISUID | S_ISGID)))
			refuse(e.path, "has the set-user-ID or set-group-ID bit, refused (chmod ug-s it)");

	const ModuleEntry *sd = b.find("scripts");
	if (sd && sd->kind != ModuleEntryKind::Directory)
		refuse("scripts", fmt::format("a {}, expected the scripts/ directory of hook scripts", kindName(sd->kind)));

	std::vector<std::string> known = kScriptNames;
	for (const std::string &script : checkerScripts(configOk ? nullptr : mj, out.config))
		if (std::find(known.begin(), known.end(), script) == known.end())
			known.push_back(script);
	std::string hooks;
	for (const auto &h : kScriptNames)
		hooks += (hooks.empty() ? "" : ", ") + h;

	for (const ModuleEntry &e : b.entries) {
		if (e.path.compare(0, 8, "scripts/") != 0 || e.path.find('/', 8) != std::string::npos)
			continue;
		std::string name = e.path.substr(8);
		if (e.kind == ModuleEntryKind::Directory) {
			refuse(e.path, "a directory; scripts/ holds only hook scripts (put helpers elsewhere in the "
				       "module)");
			continue;
		}
		if (std::find(known.begin(), known.end(), name) == known.end()) {
			refuse(e.path, fmt::format("unknown script name {}{}, expected a hook ({}) or a custom "
						   "checker's script",
						   printable(name), didYouMean(name, known), hooks));
			continue;
		}
		const ModuleEntry *file = &e;
		if (e.kind == ModuleEntryKind::Symlink) {
			std::string why;
			if (!resolveLink(b.entries, e, &file, &why)) {
				refuse(e.path, why);
				continue;
			}
		}
		if (!file || file->kind != ModuleEntryKind::File) {
			refuse(e.path, "a symlink to a directory, expected an executable file");
			continue;
		}
		if (!(file->mode & S_IXUSR))
			refuse(e.path, "not executable (chmod 755 it)");
		if (file->data.compare(0, 2, "#!") != 0 && file->data.compare(0, 4, "\x7f" "ELF") != 0)
			refuse(e.path, "starts with neither \"#!\" nor an ELF header: the kernel cannot run it "
				       "(add a #! line)");
	}

	for (size_t i = 0; i < out.config.checkers.size(); i++) {
		const CheckerConfig &c = out.config.checkers[i];
		if (c.type != CheckerType::Custom || c.script.empty() || c.script[0] == '/')
			continue;
		if (!b.find("scripts/" + c.script))
			out.errors.push_back(ConfigError{ jsonFile, fmt::format("/checkers/{}/script", i),
							  fmt::format("found \"{}\", which is not in the module's "
								      "scripts/ directory",
								      c.script) });
	}

	if (configOk && installed) {
		std::vector<ModuleConfig> set;
		for (const ModuleConfig &m : *installed)
			if (m.name != out.config.name)
				set.push_back(m);
		set.push_back(out.config);	/* last: conflicts are reported on the new module */
		std::vector<ConfigError> setErrors;
		checkModuleSet(set, &setErrors, true);
		for (ConfigError &e : setErrors)
			(e.file == jsonFile ? out.errors : out.warnings).push_back(std::move(e));
	}
	return out;
}

Result<std::vector<InstalledModule>> listInstalledModules(const std::string &modulesDir, const ClusterConfig *cluster)
{
	std::vector<InstalledModule> out;
	DIR *raw = opendir(modulesDir.c_str());
	if (!raw) {
		if (errno == ENOENT)
			return out;
		return makeError(-errno, errnoMessage("cannot open the modules directory " + modulesDir, errno));
	}
	UniqueDir d(raw);
	std::vector<std::string> names;
	while (struct dirent *de = readdir(d.get())) {
		if (de->d_name[0] == '.')
			continue;
		/* As skd: stat() follows a symlinked module directory. */
		struct stat st;
		std::string sub = modulesDir + "/" + de->d_name;
		if (stat(sub.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
			names.emplace_back(de->d_name);
	}
	d.reset();
	std::sort(names.begin(), names.end());
	for (const std::string &name : names) {
		InstalledModule im;
		im.name = name;
		im.dir = modulesDir + "/" + name;
		std::string file = im.dir + "/module.json";
		auto m = loadModuleConfig(file, cluster, &im.errors);
		if (m.ok() && m->name != name)
			im.errors.push_back(ConfigError{ file, "/name",
							 fmt::format("found \"{}\", expected \"{}\" (the module "
								     "directory's name)",
								     m->name, name) });
		if (m.ok() && im.errors.empty()) {
			im.valid = true;
			im.config = std::move(m.value());
		}
		out.push_back(std::move(im));
	}
	std::vector<ModuleConfig> set;
	for (const InstalledModule &im : out)
		if (im.valid)
			set.push_back(im.config);
	std::vector<ConfigError> setErrors;
	checkModuleSet(set, &setErrors, true);
	for (ConfigError &e : setErrors) {
		for (InstalledModule &im : out) {
			if (im.valid && im.config.file == e.file) {
				im.errors.push_back(e);
				break;
			}
		}
	}
	for (InstalledModule &im : out)
		if (!im.errors.empty())
			im.valid = false;
	return out;
}

std::vector<std::string> modulesWatching(const std::vector<InstalledModule> &modules, const std::string &name)
{
	std::vector<std::string> out;
	for (const InstalledModule &im : modules) {
		if (im.name == name)
			continue;
		for (const CheckerConfig &c : im.config.checkers)
			if (c.type == CheckerType::Module && c.module == name)
				out.push_back(fmt::format("{} (checker \"{}\")", im.name, c.name));
	}
	return out;
}

/* ---- install / remove ---- */

Result<InstallResult> installModule(const ModuleBundle &b, const std::string &name, const std::string &modulesDir,
				    bool replace)
{
	if (!safeModuleDirName(name))
		return makeError(-EINVAL, fmt::format("{} is not a module name", printable(name)));
	Status shape = checkModuleShape(b);
	if (!shape)
		return shape.error();
	auto lock = lockModulesDir(modulesDir);
	if (!lock)
		return lock.error();
	int mfd = lock->get();

	std::string tmpPath = modulesDir + "/.install-" + name + "-XXXXXX";
	if (!mkdtemp(tmpPath.data()))
		return makeError(-errno, errnoMessage("cannot create a temporary directory in " + modulesDir, errno));
	std::string tmpName = tmpPath.substr(modulesDir.size() + 1);
	InstallResult res;
	res.dir = modulesDir + "/" + name;

	auto writeTree = [&]() -> Status {
		UniqueFd tfd(openat(mfd, tmpName.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
		if (tfd.get() < 0 || fchmod(tfd.get(), 0755) < 0)
			return makeError(-errno, errnoMessage("cannot open " + tmpPath, errno));
		for (const ModuleEntry &e : b.entries) {
			std::string shown = tmpPath + "/" + e.path;
			switch (e.kind) {
			case ModuleEntryKind::Directory:
				if (mkdirat(tfd.get(), e.path.c_str(), 0755) < 0 ||
				    fchmodat(tfd.get(), e.path.c_str(), 0755, 0) < 0)
					return makeError(-errno, errnoMessage("cannot create " + shown, errno));
				break;
			case ModuleEntryKind::Symlink:
				if (symlinkat(e.data.c_str(), tfd.get(), e.path.c_str()) < 0)
					return makeError(-errno, errnoMessage("cannot create " + shown, errno));
				break;
			case ModuleEntryKind::File: {
				mode_t mode = e.mode & 0755;
				UniqueFd f(openat(tfd.get(), e.path.c_str(),
						  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
				if (f.get() < 0 || fchmod(f.get(), mode) < 0)
					return makeError(-errno, errnoMessage("cannot create " + shown, errno));
				Status s = writeAll(f.get(), e.data, shown);
				if (!s)
					return s;
				struct timespec times[2] = { { e.mtime, 0 }, { e.mtime, 0 } };
				futimens(f.get(), times);	/* cosmetic: keeps the source's mtimes */
				if (fsync(f.get()) < 0)
					return makeError(-errno, errnoMessage("cannot fsync " + shown, errno));
				res.files++;
				res.bytes += e.data.size();
				break;
			}
			}
		}
		/* Children's directory entries first, then their parents, then the top. */
		for (auto it = b.entries.rbegin(); it != b.entries.rend(); ++it) {
			if (it->kind != ModuleEntryKind::Directory)
				continue;
			Status s = fsyncAt(tfd.get(), it->path, tmpPath + "/" + it->path);
			if (!s)
				return s;
		}
		return fsyncAt(tfd.get(), "", tmpPath);
	};
	Status s = writeTree();
	if (s) {
		if (replace) {
			if (renameat2(mfd, tmpName.c_str(), mfd, name.c_str(), RENAME_EXCHANGE) == 0) {
				res.replaced = true;
			} else if (errno == EINVAL) {
				/* No RENAME_EXCHANGE on this file system: move the old one away first. */
				std::string old = ".removed-" + name + "-" + randomSuffix();
				if (renameat2(mfd, name.c_str(), mfd, old.c_str(), RENAME_NOREPLACE) == 0) {
					if (renameat2(mfd, tmpName.c_str(), mfd, name.c_str(), RENAME_NOREPLACE) < 0) {
						s = makeError(-errno, errnoMessage("cannot rename " + tmpPath + " to " +
											   res.dir, errno));
						renameat2(mfd, old.c_str(), mfd, name.c_str(), RENAME_NOREPLACE);
					} else {
						res.replaced = true;
						tmpName = old;
						tmpPath = modulesDir + "/" + old;
					}
				} else if (errno != ENOENT) {
					s = makeError(-errno, errnoMessage("cannot rename " + res.dir, errno));
				}
			} else if (errno != ENOENT) {
				s = makeError(-errno, errnoMessage("cannot swap " + tmpPath + " with " + res.dir, errno));
			}
		}
		if (s && !res.replaced && renameat2(mfd, tmpName.c_str(), mfd, name.c_str(), RENAME_NOREPLACE) < 0) {
			s = errno == EEXIST ? makeError(-EEXIST, fmt::format("module \"{}\" is already installed in {} "
									      "(--force replaces it)",
									      name, modulesDir))
					    : makeError(-errno, errnoMessage("cannot rename " + tmpPath + " to " + res.dir,
									    errno));
		}
	}
	if (s) {
		Status synced = fsyncAt(mfd, "", modulesDir);
		if (!synced)
			s = synced;
	}
	/* On failure tmpName holds the partial copy; after a swap it holds the old version. */
	if (!s || res.replaced) {
		Status rm = removeTree(mfd, tmpName, tmpPath);
		if (!rm)
			logWarn(kLog, "{} left behind (skd ignores dot directories): {}", tmpPath, rm.error().message);
	}
	if (!s)
		return s.error();
	logDebug(kLog, "installed module {} in {} ({} files, {} bytes{})", name, res.dir, res.files, res.bytes,
		res.replaced ? ", replacing the previous version" : "");
	return res;
}

Status removeModule(const std::string &modulesDir, const std::string &name)
{
	if (!safeModuleDirName(name))
		return makeError(-EINVAL, fmt::format("{} is not a module name", printable(name)));
	struct stat st;
	if (stat(modulesDir.c_str(), &st) < 0 && errno == ENOENT)
		return makeError(-ENOENT, fmt::format("no module \"{}\" in {} (the directory does not exist)", name,
						      modulesDir));
	auto lock = lockModulesDir(modulesDir);
	if (!lock)
		return lock.error();
	int mfd = lock->get();
	if (fstatat(mfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return makeError(-ENOENT, fmt::format("no module \"{}\" in {}", name, modulesDir));
		return makeError(-errno, errnoMessage("cannot stat " + modulesDir + "/" + name, errno));
	}
	if (!S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode))
		return makeError(-ENOTDIR, fmt::format("{}/{} is not a module directory", modulesDir, name));
	std::string gone;
	for (int i = 0;; i++) {
		gone = ".removed-" + name + "-" + randomSuffix();
		if (renameat2(mfd, name.c_str(), mfd, gone.c_str(), RENAME_NOREPLACE) == 0)
			break;
		if (errno != EEXIST || i >= 4)
			return makeError(-errno, errnoMessage("cannot rename " + modulesDir + "/" + name, errno));
	}
	Status s = fsyncAt(mfd, "", modulesDir);
	if (!s)
		return s;
	s = removeTree(mfd, gone, modulesDir + "/" + gone);
	if (!s)
		return makeError(s.code(), fmt::format("module \"{}\" is removed (skd no longer sees it), but its "
						       "files are left in {}/{}: {}",
						       name, modulesDir, gone, s.error().message));
	logDebug(kLog, "removed module {} from {}", name, modulesDir);
	return {};
}

/* ---- archive writer ---- */

Result<std::string> packModuleArchive(const ModuleBundle &b, const std::string &name)
{
	if (!safeModuleDirName(name))
		return makeError(-EINVAL, fmt::format("{} is not a module name", printable(name)));
	Status shape = checkModuleShape(b);
	if (!shape)
		return shape.error();
	std::string out;
	std::unique_ptr<struct archive, ArchiveWriteFree> a(archive_write_new());
	if (!a)
		return makeError(-ENOMEM, "cannot allocate an archive writer");
	auto fail = [&](const std::string &what) {
		return makeError(-EIO, fmt::format("cannot write the archive ({}): {}", what, archiveError(a.get())));
	};
	if (archive_write_add_filter_gzip(a.get()) != ARCHIVE_OK ||
	    archive_write_set_format_pax_restricted(a.get()) != ARCHIVE_OK)
		return fail("tar.gz");
	/* Same module, same bytes: no time stamp in the gzip header. */
	archive_write_set_filter_option(a.get(), "gzip", "timestamp", nullptr);
	/* No padding of the compressed output to tar's 10240-byte blocks. */
	archive_write_set_bytes_in_last_block(a.get(), 1);
	if (archive_write_open2(a.get(), &out, nullptr, appendToString, nullptr, nullptr) != ARCHIVE_OK)
		return fail("open");
	int64_t newest = 0;
	for (const ModuleEntry &e : b.entries)
		newest = std::max(newest, e.mtime);
	auto put = [&](const std::string &path, const ModuleEntry *e) -> Status {
		std::unique_ptr<struct archive_entry, ArchiveEntryFree> ae(archive_entry_new());
		archive_entry_set_pathname(ae.get(), path.c_str());
		archive_entry_set_uid(ae.get(), 0);
		archive_entry_set_gid(ae.get(), 0);
		archive_entry_set_uname(ae.get(), "root");
		archive_entry_set_gname(ae.get(), "root");
		archive_entry_set_mtime(ae.get(), e ? e->mtime : newest, 0);
		ModuleEntryKind kind = e ? e->kind : ModuleEntryKind::Directory;
		switch (kind) {
		case ModuleEntryKind::Directory:
			archive_entry_set_filetype(ae.get(), AE_IFDIR);
			archive_entry_set_perm(ae.get(), 0755);
			break;
		case ModuleEntryKind::Symlink:
			archive_entry_set_filetype(ae.get(), AE_IFLNK);
			archive_entry_set_perm(ae.get(), 0777);
			archive_entry_set_symlink(ae.get(), e->data.c_str());
			break;
		case ModuleEntryKind::File:
			archive_entry_set_filetype(ae.get(), AE_IFREG);
			archive_entry_set_perm(ae.get(), e->mode & 0755);
			archive_entry_set_size(ae.get(), static_cast<la_int64_t>(e->data.size()));
			break;
		}
		if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK)
			return fail(path);
		if (kind == ModuleEntryKind::File && !e->data.empty() &&
		    archive_write_data(a.get(), e->data.data(), e->data.size()) != static_cast<la_ssize_t>(e->data.size()))
			return fail(path);
		return {};
	};
	Status s = put(name, nullptr);
	for (size_t i = 0; s && i < b.entries.size(); i++)
		s = put(name + "/" + b.entries[i].path, &b.entries[i]);
	if (!s)
		return s.error();
	if (archive_write_close(a.get()) != ARCHIVE_OK)
		return fail("close");
	return out;
}

Status writeModuleArchive(const ModuleBundle &b, const std::string &name, const std::string &file)
{
	auto bytes = packModuleArchive(b, name);
	if (!bytes)
		return bytes.error();
	std::string tmp = file + ".XXXXXX";
	UniqueFd fd(mkostemp(tmp.data(), O_CLOEXEC));
	if (fd.get() < 0)
		return makeError(-errno, errnoMessage("cannot create a temporary file next to " + file, errno));
	Status s = writeAll(fd.get(), *bytes, tmp);
	if (s && (fchmod(fd.get(), 0644) < 0 || fsync(fd.get()) < 0))
		s = makeError(-errno, errnoMessage("cannot write " + tmp, errno));
	if (s && rename(tmp.c_str(), file.c_str()) < 0)
		s = makeError(-errno, errnoMessage("cannot rename " + tmp + " to " + file, errno));
	if (!s) {
		unlink(tmp.c_str());
		return s;
	}
	size_t slash = file.rfind('/');
	std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : file.substr(0, slash);
	UniqueFd dfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (dfd.get() < 0 || fsync(dfd.get()) < 0)
		return makeError(-errno, errnoMessage("cannot fsync " + dir, errno));
	return {};
}

ModuleRunState moduleRunState(const nlohmann::json &status, const std::string &name)
{
	ModuleRunState rs;
	if (!status.is_object())
		return rs;
	auto mods = status.find("modules");
	if (mods == status.end() || !mods->is_array())
		return rs;
	for (const nlohmann::json &m : *mods) {
		if (!m.is_object() || stringField(m, "name") != name)
			continue;
		rs.known = true;
		rs.state = stringField(m, "state");
		rs.label = stringField(m, "label");
		if (rs.label.empty())
			rs.label = rs.state;
		/* A state we cannot read counts as running: refusing is the safe side. */
		rs.running = rs.state != "STOP" || !stringField(m, "script_running").empty();
		break;
	}
	return rs;
}

} /* namespace sk */
