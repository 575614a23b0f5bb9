/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers shared by the applier and stream tests: temporary directories and a
 * tree comparison that names the first difference (type, size, mode, owner,
 * content, xattrs, symlink target).
 */
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace sk::test {

class TempDir
{
public:
	TempDir()
	{
		char tmpl[] = "/tmp/sk-repl-test-XXXXXX";
		const char *p = mkdtemp(tmpl);
		path_ = p ? p : "";
		fd_ = p ? open(p, O_DIRECTORY | O_RDONLY | O_CLOEXEC) : -1;
	}
	~TempDir()
	{
		if (fd_ >= 0)
			close(fd_);
		if (!path_.empty()) {
			std::string cmd = "rm -rf '" + path_ + "'";
			if (system(cmd.c_str()) != 0) {
				/* Nothing more to do: a leftover temp dir is harmless. */
			}
		}
	}
	TempDir(const TempDir &) = delete;
	TempDir &operator=(const TempDir &) = delete;

	const std::string &path() const { return path_; }
	int fd() const { return fd_; }
	std::string operator/(const std::string &rel) const { return path_ + "/" + rel; }

private:
	std::string path_;
	int fd_ = -1;
};

inline std::string readFile(const std::string &path)
{
	std::string out;
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return "<cannot open>";
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		out.append(buf, static_cast<size_t>(n));
	close(fd);
	return out;
}

inline void writeFile(const std::string &path, const std::string &data)
{
	int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, data.data(), data.size()) < 0) {
		/* The caller checks the content. */
	}
	close(fd);
}

inline std::map<std::string, std::string> listXattrs(const std::string &path)
{
	std::map<std::string, std::string> out;
	char names[65536];
	ssize_t n = llistxattr(path.c_str(), names, sizeof(names));
	for (ssize_t i = 0; n > 0 && i < n;) {
		std::string name(names + i);
		i += static_cast<ssize_t>(name.size()) + 1;
		/* security.* (SELinux labels...) is the local system's, not replicated state. */
		if (name.rfind("security.", 0) == 0)
			continue;
		std::vector<char> val(65536 + 1);
		ssize_t m = lgetxattr(path.c_str(), name.c_str(), val.data(), val.size());
		out[name] = m >= 0 ? std::string(val.data(), static_cast<size_t>(m)) : "<error>";
	}
	return out;
}

/*
 * Walks both trees; returns "" when identical, else a description of the first
 * difference ("a/b: size 10 vs 12"). mtimes are not compared: the target's
 * writes happen later than the source's.
 */
inline std::string compareTrees(const std::string &a, const std::string &b, const std::string &rel = "")
{
	auto names = [](const std::string &dir) {
		std::vector<std::string> out;
		DIR *d = opendir(dir.c_str());
		if (!d)
			return out;
		while (struct dirent *e = readdir(d)) {
			std::string n = e->d_name;
			if (n != "." && n != "..")
				out.push_back(n);
		}
		closedir(d);
		std::sort(out.begin(), out.end());
		return out;
	};
	std::string pa = rel.empty() ? a : a + "/" + rel;
	std::string pb = rel.empty() ? b : b + "/" + rel;
	std::string where = rel.empty() ? "." : rel;
	struct stat sa, sb;
	if (lstat(pa.c_str(), &sa) < 0)
		return where + ": missing in first tree";
	if (lstat(pb.c_str(), &sb) < 0)
		return where + ": missing in second tree";
	auto diff = [&](const char *what, auto x, auto y) {
		return where + ": " + what + " " + std::to_string(x) + " vs " + std::to_string(y);
	};
	if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT))
		return diff("type", sa.st_mode & S_IFMT, sb.st_mode & S_IFMT);
	if (!S_ISLNK(sa.st_mode) && sa.st_mode != sb.st_mode)
		return diff("mode", sa.st_mode, sb.st_mode);
	if (sa.st_uid != sb.st_uid || sa.st_gid != sb.st_gid)
		return diff("owner", sa.st_uid * 100000ull + sa.st_gid, sb.st_uid * 100000ull + sb.st_gid);
	if (!rel.empty() && !S_ISDIR(sa.st_mode) && sa.st_nlink != sb.st_nlink)
		return diff("nlink", sa.st_nlink, sb.st_nlink);
	if (listXattrs(pa) != listXattrs(pb))
		return where + ": xattrs differ";
	if (S_ISREG(sa.st_mode)) {
		if (sa.st_size != sb.st_size)
			return diff("size", sa.st_size, sb.st_size);
		if (readFile(pa) != readFile(pb))
			return where + ": content differs";
	} else if (S_ISLNK(sa.st_mode)) {
		char ta[4097] = {}, tb[4097] = {};
		if (readlink(pa.c_str(), ta, 4096) < 0 || readlink(pb.c_str(), tb, 4096) < 0 ||
		    std::string(ta) != std::string(tb))
			return where + ": symlink target " + ta + " vs " + tb;
	} else if (S_ISDIR(sa.st_mode)) {
		std::vector<std::string> na = names(pa), nb = names(pb);
		if (na != nb) {
			std::string la, lb;
			for (auto &n : na)
				la += n + " ";
			for (auto &n : nb)
				lb += n + " ";
			return where + ": entries [" + la + "] vs [" + lb + "]";
		}
		for (const std::string &n : na) {
			std::string r = compareTrees(a, b, rel.empty() ? n : rel + "/" + n);
			if (!r.empty())
				return r;
		}
	}
	return "";
}

} /* namespace sk::test */
