/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Module packages: every refusal of the readers (directory and archive) and of the checks,
 * with its message; atomic install/replace/remove leaving no temp directory; the archive
 * round trip; running state from a status document.
 */
#include <doctest/doctest.h>

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <clocale>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/module_package.h"

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

/* A private temp directory removed at the end of the test. */
class TempDir
{
public:
	TempDir()
	{
		char tmpl[] = "/tmp/sk-test-modpkg-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		path_ = tmpl;
	}
	~TempDir() { fs::remove_all(path_); }
	std::string file(const std::string &name) const { return path_ + "/" + name; }
	const std::string &path() const { return path_; }

private:
	std::string path_;
};

void writeText(const std::string &path, const std::string &text, mode_t mode = 0644)
{
	fs::create_directories(fs::path(path).parent_path());
	std::ofstream(path, std::ios::binary) << text;
	REQUIRE(chmod(path.c_str(), mode) == 0);
}

std::string readText(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

/* The error message of a failed Result/Status, "" on success (for INFO). */
template<typename R>
std::string messageOf(const R &r)
{
	return r.ok() ? std::string() : r.error().message;
}

std::string dumpErrors(const std::vector<sk::ConfigError> &errors)
{
	std::string out;
	for (const auto &e : errors)
		out += "  " + sk::formatConfigError(e) + "\n";
	return out.empty() ? "  (no errors)\n" : out;
}

/* Does any error's formatted text contain `part`? */
bool hasError(const std::vector<sk::ConfigError> &errors, const std::string &part)
{
	for (const auto &e : errors)
		if (sk::formatConfigError(e).find(part) != std::string::npos)
			return true;
	return false;
}

/* A cluster of two nodes on one network, built in memory (no key file needed). */
const sk::ClusterConfig &cluster()
{
	static sk::ClusterConfig c = [] {
		sk::ClusterConfig cc;
		cc.name = "lab";
		cc.networks = { "lan" };
		cc.nodes = { { "n1", 1, { { "lan", "198.18.0.11" } } }, { "n2", 2, { { "lan", "198.18.0.12" } } } };
		return cc;
	}();
	return c;
}

std::string moduleJson(const std::string &name = "web", const std::string &vip = "198.18.0.100/24",
		       const std::string &extra = "")
{
	return R"({ "name": ")" + name + R"(", "type": "mirror", "nodes": ["n1", "n2"],
		"vips": [ { "address": ")" + vip + R"(", "interface": "eth0" } ])" +
	       (extra.empty() ? "" : ",\n" + extra) + " }";
}

const std::string kScript = "#!/bin/sh\necho hello\n";

/* A good module directory: module.json, two hooks, a helper outside scripts/. */
void writeGoodModule(const std::string &dir, const std::string &name = "web")
{
	writeText(dir + "/module.json", moduleJson(name));
	writeText(dir + "/scripts/start_prim", kScript, 0755);
	writeText(dir + "/scripts/stop_prim", kScript, 0755);
	writeText(dir + "/lib/common.sh", "x=1\n", 0644);
}

/* ---- hand-made archives (what an attacker could send) ---- */

struct RawEntry {
	std::string path;
	unsigned type = AE_IFREG;
	unsigned perm = 0644;
	std::string data;
	std::string symlink;
	std::string hardlink;
};

RawEntry file(std::string path, std::string data, unsigned perm = 0644)
{
	return RawEntry{ std::move(path), AE_IFREG, perm, std::move(data), "", "" };
}
RawEntry dir(std::string path)
{
	return RawEntry{ std::move(path), AE_IFDIR, 0755, "", "", "" };
}
RawEntry slink(std::string path, std::string target)
{
	return RawEntry{ std::move(path), AE_IFLNK, 0777, "", std::move(target), "" };
}

la_ssize_t appendCb(struct archive *, void *client, const void *buf, size_t len)
{
	static_cast<std::string *>(client)->append(static_cast<const char *>(buf), len);
	return static_cast<la_ssize_t>(len);
}

std::string makeTar(const std::vector<RawEntry> &entries, bool gzip = true)
{
	std::string out;
	struct archive *a = archive_write_new();
	REQUIRE(a != nullptr);
	if (gzip)
		REQUIRE(archive_write_add_filter_gzip(a) == ARCHIVE_OK);
	REQUIRE(archive_write_set_format_pax_restricted(a) == ARCHIVE_OK);
	REQUIRE(archive_write_open2(a, &out, nullptr, appendCb, nullptr, nullptr) == ARCHIVE_OK);
	for (const RawEntry &r : entries) {
		struct archive_entry *e = archive_entry_new();
		archive_entry_set_pathname(e, r.path.c_str());
		archive_entry_set_filetype(e, r.type);
		archive_entry_set_perm(e, r.perm);
		if (r.type == AE_IFCHR)
			archive_entry_set_rdev(e, makedev(1, 3));
		if (!r.symlink.empty())
			archive_entry_set_symlink(e, r.symlink.c_str());
		if (!r.hardlink.empty())
			archive_entry_set_hardlink(e, r.hardlink.c_str());
		if (r.type == AE_IFREG && r.hardlink.empty())
			archive_entry_set_size(e, static_cast<la_int64_t>(r.data.size()));
		REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
		if (!r.data.empty())
			REQUIRE(archive_write_data(a, r.data.data(), r.data.size()) ==
				static_cast<la_ssize_t>(r.data.size()));
		archive_entry_free(e);
	}
	REQUIRE(archive_write_close(a) == ARCHIVE_OK);
	archive_write_free(a);
	return out;
}

/* Reads a hand-made archive; returns the refusal message ("" when accepted). */
std::string refusal(const std::vector<RawEntry> &entries, const sk::ModuleLimits &limits = {})
{
	std::string tar = makeTar(entries);
	auto r = sk::readModuleArchiveMemory(tar.data(), tar.size(), "evil.tar.gz", limits);
	return r.ok() ? std::string() : r.error().message;
}

std::vector<RawEntry> goodEntries()
{
	return { file("module.json", moduleJson()), dir("scripts"), file("scripts/start_prim", kScript, 0755) };
}

std::vector<RawEntry> with(std::vector<RawEntry> v, RawEntry extra)
{
	v.push_back(std::move(extra));
	return v;
}

sk::ModuleCheck checkDir(const std::string &dirPath, const std::vector<sk::ModuleConfig> *installed = nullptr)
{
	auto b = sk::readModuleDir(dirPath);
	INFO(messageOf(b));
	REQUIRE(b.ok());
	return sk::checkModuleBundle(*b, &cluster(), installed);
}

size_t dotEntries(const std::string &dirPath)
{
	size_t n = 0;
	for (const auto &e : fs::directory_iterator(dirPath))
		if (e.path().filename().string()[0] == '.')
			n++;
	return n;
}

} /* namespace */

/* ---------------- archive reader ---------------- */

TEST_CASE("archive: a good module is read, with or without a top directory, gzip or plain tar")
{
	for (bool gzip : { true, false }) {
		std::string tar = makeTar(goodEntries(), gzip);
		auto r = sk::readModuleArchiveMemory(tar.data(), tar.size(), "web.tar", {});
		INFO(messageOf(r));
		REQUIRE(r.ok());
		CHECK(r->find("module.json") != nullptr);
		CHECK(r->find("scripts/start_prim")->mode == 0755);
		CHECK(r->find("scripts/start_prim")->data == kScript);
	}
	std::string tar = makeTar({ dir("web"), file("web/module.json", moduleJson()), dir("web/scripts"),
				    file("web/scripts/start_prim", kScript, 0755) });
	auto r = sk::readModuleArchiveMemory(tar.data(), tar.size(), "web.tar.gz", {});
	REQUIRE(r.ok());
	CHECK(r->find("module.json") != nullptr);
	CHECK(r->find("web") == nullptr);
	CHECK(r->display("scripts/start_prim") == "web.tar.gz:scripts/start_prim");
	/* Parent directories may be left out: they are implied. */
	CHECK(refusal({ file("module.json", moduleJson()), file("scripts/start_prim", kScript, 0755) }) == "");
	/* "./" prefixes (tar -C dir .) are fine. */
	CHECK(refusal({ dir("."), file("./module.json", moduleJson()), file("./scripts/stop_prim", kScript, 0755) }) ==
	      "");
}

TEST_CASE("archive: refusals name the entry and the reason")
{
	CHECK(refusal(with(goodEntries(), file("/etc/passwd", "x"))) ==
	      "evil.tar.gz: \"/etc/passwd\": absolute path, expected a path inside the module");
	CHECK(refusal(with(goodEntries(), file("scripts/../../escape", "x"))) ==
	      "evil.tar.gz: \"scripts/../../escape\": \"..\" in the path, expected a path inside the module");
	CHECK(refusal(with(goodEntries(), file("a\x1b[2Jb", "x"))) ==
	      "evil.tar.gz: \"a\\x1b[2Jb\": control character in the name");
	/* A UTF-8 locale, or libarchive itself refuses the name before we see it. */
	REQUIRE(setlocale(LC_CTYPE, "C.UTF-8") != nullptr);
	CHECK(refusal(with(goodEntries(), file("caf\xc3\xa9", "x"))) ==
	      "evil.tar.gz: \"caf\\xc3\\xa9\": non-ASCII character in the name (module file names are ASCII)");
	setlocale(LC_CTYPE, "C");
	CHECK(refusal(with(goodEntries(), RawEntry{ "null", AE_IFCHR, 0666, "", "", "" })) ==
	      "evil.tar.gz: \"null\": a character device, not allowed in a module (files, directories and "
	      "symlinks only)");
	CHECK(refusal(with(goodEntries(), RawEntry{ "disk", AE_IFBLK, 0666, "", "", "" })).find("a block device") !=
	      std::string::npos);
	CHECK(refusal(with(goodEntries(), RawEntry{ "pipe", AE_IFIFO, 0666, "", "", "" })) ==
	      "evil.tar.gz: \"pipe\": a FIFO, not allowed in a module (files, directories and symlinks only)");
	CHECK(refusal(with(goodEntries(), slink("etc", "/etc"))) ==
	      "evil.tar.gz:etc: symlink to \"/etc\" points outside the module (absolute target)");
	CHECK(refusal(with(goodEntries(), slink("scripts/up", "../../x"))) ==
	      "evil.tar.gz:scripts/up: symlink to \"../../x\" points outside the module");
	/* Lexically inside, but through a symlink that climbs out. */
	CHECK(refusal(with(with(goodEntries(), slink("d", "..")), slink("e", "d/etc"))) ==
	      "evil.tar.gz:d: symlink to \"..\" points outside the module");
	CHECK(refusal(with(with(goodEntries(), slink("scripts/d", "..")), slink("e", "scripts/d/../x"))) ==
	      "evil.tar.gz:e: symlink to \"scripts/d/../x\" points outside the module");
	CHECK(refusal(with(goodEntries(), slink("dangling", "nothing-here"))) ==
	      "evil.tar.gz:dangling: symlink to \"nothing-here\" points to nothing in the module");
	CHECK(refusal(with(with(goodEntries(), slink("a", "b")), slink("b", "a"))) ==
	      "evil.tar.gz:a: symlink to \"b\": more than 16 levels of symlinks");
	CHECK(refusal(with(goodEntries(), slink("through", "module.json/x"))) ==
	      "evil.tar.gz:through: symlink to \"module.json/x\" goes through the file \"module.json\"");
	CHECK(refusal(with(goodEntries(), RawEntry{ "hl", AE_IFREG, 0644, "", "", "/etc/shadow" })) ==
	      "evil.tar.gz: \"hl\": hard link to \"/etc/shadow\": absolute path, expected a path inside the module");
	CHECK(refusal(with(goodEntries(), RawEntry{ "hl", AE_IFREG, 0644, "", "", "later" })) ==
	      "evil.tar.gz: \"hl\": hard link to \"later\", which is not an earlier file of the archive");
	CHECK(refusal(with(goodEntries(), file("module.json", "{}"))) == "evil.tar.gz:module.json: appears twice");
	CHECK(refusal(with(goodEntries(), file("module.json/inner", "x"))) ==
	      "evil.tar.gz:module.json/inner: its parent \"module.json\" is a file, not a directory");
	CHECK(refusal(with(goodEntries(), file(".", "x"))) ==
	      "evil.tar.gz: \".\": names the module's top directory but is a file");
	CHECK(refusal(with(goodEntries(), slink("long", std::string(300, 'a')))) ==
	      "evil.tar.gz: \"long\": symlink target longer than 255 bytes");

	std::string garbage = "this is not an archive at all, just text that goes on and on and on";
	auto g = sk::readModuleArchiveMemory(garbage.data(), garbage.size(), "x.tar.gz", {});
	REQUIRE(!g.ok());
	CHECK(g.error().message.rfind("x.tar.gz: not a", 0) == 0);
	/* Cut inside a file's data, compressed or not. */
	std::string big(20000, 'x');
	for (bool gzip : { false, true }) {
		std::string tar = makeTar(with(goodEntries(), file("lib/big", big)), gzip);
		std::string cut = tar.substr(0, gzip ? 60 : 5000);
		auto t = sk::readModuleArchiveMemory(cut.data(), cut.size(), "cut.tar.gz", {});
		REQUIRE(!t.ok());
		CHECK(t.error().message.rfind("cut.tar.gz: ", 0) == 0);
		CHECK(t.error().message.find("runcated") != std::string::npos);
	}
}

TEST_CASE("archive: bounds on entries, sizes, path length and depth")
{
	sk::ModuleLimits small;
	small.maxEntries = 5;
	small.maxFileBytes = 1000;
	small.maxTotalBytes = 2500;
	small.maxArchiveBytes = 1 << 20;
	small.maxPathBytes = 40;
	small.maxDepth = 3;
	CHECK(refusal(goodEntries(), small) == "");

	std::vector<RawEntry> many = goodEntries();
	for (int i = 0; i < 3; i++)
		many.push_back(file("f" + std::to_string(i), "x"));
	CHECK(refusal(many, small) == "evil.tar.gz: more than 5 entries");
	CHECK(refusal(with(goodEntries(), file("big", std::string(1001, 'x'))), small) ==
	      "evil.tar.gz: \"big\": larger than 1000 bytes");
	CHECK(refusal({ file("module.json", moduleJson()), file("a", std::string(900, 'x')),
			file("b", std::string(900, 'x')), file("c", std::string(900, 'x')) },
		      small) == "evil.tar.gz: more than 2500 bytes of files");
	/* Hard links copy data: they count too. */
	CHECK(refusal({ file("a", std::string(900, 'x')), RawEntry{ "b", AE_IFREG, 0644, "", "", "a" },
			RawEntry{ "c", AE_IFREG, 0644, "", "", "a" } },
		      small) == "evil.tar.gz: more than 2500 bytes of files");
	CHECK(refusal(with(goodEntries(), file(std::string(41, 'p'), "x")), small) ==
	      "evil.tar.gz: \"" + std::string(41, 'p') + "\": path longer than 40 bytes");
	CHECK(refusal(with(goodEntries(), file("a/b/c/d", "x")), small) ==
	      "evil.tar.gz: \"a/b/c/d\": more than 3 directory levels");
	/* Implied parent directories count as entries. */
	CHECK(refusal({ file("module.json", "{}"), file("a/b/c", "x"), file("d/e", "y") }, small) ==
	      "evil.tar.gz: more than 5 entries (with implied directories)");

	std::string tar = makeTar(goodEntries());
	small.maxArchiveBytes = tar.size() - 1;
	auto r = sk::readModuleArchiveMemory(tar.data(), tar.size(), "big.tar.gz", small);
	REQUIRE(!r.ok());
	CHECK(r.error().message == fmt::format("big.tar.gz: larger than {} bytes", tar.size() - 1));
	CHECK(r.error().code == -EFBIG);
}

/* ---------------- directory reader ---------------- */

TEST_CASE("directory: symlinks kept, special files and escaping links refused")
{
	TempDir t;
	std::string d = t.file("web");
	writeGoodModule(d);
	REQUIRE(::symlink("start_prim", (d + "/scripts/start_both").c_str()) == 0);
	auto r = sk::readModuleDir(d);
	INFO(messageOf(r));
	REQUIRE(r.ok());
	const sk::ModuleEntry *link = r->find("scripts/start_both");
	REQUIRE(link != nullptr);
	CHECK(link->kind == sk::ModuleEntryKind::Symlink);
	CHECK(link->data == "start_prim");
	CHECK(r->display("lib/common.sh") == d + "/lib/common.sh");

	REQUIRE(::symlink("../../../etc/passwd", (d + "/lib/passwd").c_str()) == 0);
	r = sk::readModuleDir(d);
	REQUIRE(!r.ok());
	CHECK(r.error().message == d + "/lib/passwd: symlink to \"../../../etc/passwd\" points outside the module");
	fs::remove(d + "/lib/passwd");

	REQUIRE(mkfifo((d + "/lib/fifo").c_str(), 0644) == 0);
	r = sk::readModuleDir(d);
	REQUIRE(!r.ok());
	CHECK(r.error().message == d + "/lib/fifo: a FIFO, not allowed in a module (files, directories and symlinks only)");
	fs::remove(d + "/lib/fifo");

	writeText(d + "/lib/big", std::string(2000, 'x'));
	sk::ModuleLimits small;
	small.maxFileBytes = 1000;
	r = sk::readModuleDir(d, small);
	REQUIRE(!r.ok());
	CHECK(r.error().message == d + "/lib/big: larger than 1000 bytes");
	small = {};
	small.maxEntries = 3;
	r = sk::readModuleDir(d, small);
	REQUIRE(!r.ok());
	CHECK(r.error().message == d + ": more than 3 entries");
	fs::remove(d + "/lib/big");

	writeText(d + "/lib/bad\tname", "x");
	r = sk::readModuleDir(d);
	REQUIRE(!r.ok());
	CHECK(r.error().message == "\"" + d + "/lib/bad\\x09name\": control character in the name");

	auto missing = sk::readModule(t.file("nope"));
	REQUIRE(!missing.ok());
	CHECK(missing.error().message == t.file("nope") + ": No such file or directory");
}

/* ---------------- checks ---------------- */

TEST_CASE("check: a good module passes, custom checker scripts are allowed hooks")
{
	TempDir t;
	std::string d = t.file("web");
	writeText(d + "/module.json",
		  moduleJson("web", "198.18.0.100/24",
			     R"("checkers": [ { "name": "app", "type": "custom", "script": "check_app" } ])"));
	writeText(d + "/scripts/start_prim", kScript, 0755);
	writeText(d + "/scripts/check_app", kScript, 0755);
	REQUIRE(::symlink("start_prim", (d + "/scripts/start_both").c_str()) == 0);
	writeText(d + "/README", "docs\n");
	sk::ModuleCheck c = checkDir(d);
	INFO(dumpErrors(c.errors));
	CHECK(c.errors.empty());
	CHECK(c.config.name == "web");
	CHECK(c.config.checkers.size() == 1);
}

TEST_CASE("check: every refusal with its message")
{
	TempDir t;
	std::string d = t.file("m");

	SUBCASE("no module.json")
	{
		writeText(d + "/scripts/start_prim", kScript, 0755);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + ": no module.json at the top of the module"));
	}
	SUBCASE("module.json is a directory")
	{
		fs::create_directories(d + "/module.json");
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/module.json: a directory, expected a regular file"));
	}
	SUBCASE("invalid module.json: every problem, with JSON pointers, checked against the cluster")
	{
		writeText(d + "/module.json", R"({ "name": "web", "type": "mirror", "nodes": ["n1", "n9"],
			"vips": [ { "address": "198.18.0.300/24" } ], "colour": "red" })");
		sk::ModuleCheck c = checkDir(d);
		INFO(dumpErrors(c.errors));
		CHECK(hasError(c.errors, d + "/module.json: /nodes/1"));
		CHECK(hasError(c.errors, "n9"));
		CHECK(hasError(c.errors, d + "/module.json: /vips/0/address"));
		CHECK(hasError(c.errors, d + "/module.json: /colour"));
		CHECK(c.errors.size() >= 3);
	}
	SUBCASE("JSON syntax error")
	{
		writeText(d + "/module.json", "{ \"name\": \"web\",, }");
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/module.json:1:"));
	}
	SUBCASE("set-user-ID file")
	{
		writeGoodModule(d);
		REQUIRE(chmod((d + "/lib/common.sh").c_str(), 04755) == 0);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/lib/common.sh: has the set-user-ID or set-group-ID bit, refused"));
	}
	SUBCASE("scripts is a file")
	{
		writeText(d + "/module.json", moduleJson());
		writeText(d + "/scripts", kScript, 0755);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts: a file, expected the scripts/ directory of hook scripts"));
	}
	SUBCASE("a directory in scripts/")
	{
		writeGoodModule(d);
		fs::create_directories(d + "/scripts/helpers");
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/helpers: a directory; scripts/ holds only hook scripts"));
	}
	SUBCASE("unknown hook name, with a suggestion")
	{
		writeGoodModule(d);
		writeText(d + "/scripts/start_prmi", kScript, 0755);
		sk::ModuleCheck c = checkDir(d);
		INFO(dumpErrors(c.errors));
		CHECK(hasError(c.errors, d + "/scripts/start_prmi: unknown script name \"start_prmi\" (did you mean "
					      "\"start_prim\"?), expected a hook (prestart, start_prim,"));
		writeText(d + "/scripts/common.sh", kScript, 0755);
		c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/common.sh: unknown script name \"common.sh\", expected a hook"));
	}
	SUBCASE("not executable")
	{
		writeGoodModule(d);
		REQUIRE(chmod((d + "/scripts/stop_prim").c_str(), 0644) == 0);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/stop_prim: not executable (chmod 755 it)"));
	}
	SUBCASE("no #! line")
	{
		writeGoodModule(d);
		writeText(d + "/scripts/stop_prim", "echo no interpreter\n", 0755);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/stop_prim: starts with neither \"#!\" nor an ELF header"));
	}
	SUBCASE("a hook that is a symlink to a directory")
	{
		writeGoodModule(d);
		REQUIRE(::symlink("../lib", (d + "/scripts/poststop").c_str()) == 0);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/poststop: a symlink to a directory, expected an executable file"));
	}
	SUBCASE("a hook that is a symlink to a non-executable file")
	{
		writeGoodModule(d);
		REQUIRE(::symlink("../lib/common.sh", (d + "/scripts/poststop").c_str()) == 0);
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/scripts/poststop: not executable"));
	}
	SUBCASE("custom checker script missing from scripts/")
	{
		writeText(d + "/module.json",
			  moduleJson("web", "198.18.0.100/24",
				     R"("checkers": [ { "name": "app", "type": "custom", "script": "check_app" } ])"));
		sk::ModuleCheck c = checkDir(d);
		CHECK(hasError(c.errors, d + "/module.json: /checkers/0/script: found \"check_app\", which is not in "
					      "the module's scripts/ directory"));
	}
	SUBCASE("with module.json invalid, its checker scripts are still known hooks")
	{
		writeText(d + "/module.json",
			  moduleJson("web", "198.18.0.300/24",
				     R"("checkers": [ { "name": "app", "type": "custom", "script": "check_app" } ])"));
		writeText(d + "/scripts/check_app", kScript, 0755);
		sk::ModuleCheck c = checkDir(d);
		INFO(dumpErrors(c.errors));
		CHECK(hasError(c.errors, d + "/module.json: /vips/0/address"));
		CHECK_FALSE(hasError(c.errors, "check_app"));
	}
	SUBCASE("conflicts with installed modules are refused; their own problems are warnings")
	{
		writeGoodModule(d);
		std::vector<sk::ConfigError> errors;
		auto other = sk::parseModuleConfig(moduleJson("db", "198.18.0.100/24"), "/etc/sk/modules/db/module.json",
						   &cluster(), &errors);
		REQUIRE(other.ok());
		auto watcher = sk::parseModuleConfig(
			moduleJson("mon", "198.18.0.101/24",
				   R"("checkers": [ { "name": "x", "type": "module", "module": "gone", "states": ["PRIM"] } ])"),
			"/etc/sk/modules/mon/module.json", &cluster(), &errors);
		REQUIRE(watcher.ok());
		std::vector<sk::ModuleConfig> installed = { *other, *watcher };
		sk::ModuleCheck c = checkDir(d, &installed);
		INFO(dumpErrors(c.errors));
		CHECK(hasError(c.errors, d + "/module.json: /vips/0/address: found VIP 198.18.0.100, also used by "
					      "module \"db\""));
		CHECK(c.errors.size() == 1);
		CHECK(hasError(c.warnings, "/etc/sk/modules/mon/module.json: /checkers/0/module: found unknown module "
					    "\"gone\""));
		/* The installed module of the same name is the one being replaced: no conflict with it. */
		other->name = "web";
		installed = { *other };
		c = checkDir(d, &installed);
		INFO(dumpErrors(c.errors));
		CHECK(c.errors.empty());
	}
}

/* ---------------- install, list, remove ---------------- */

TEST_CASE("install: atomic, refuses an existing module unless replacing, leaves no temp dir")
{
	TempDir t;
	std::string src = t.file("src/web");
	std::string modules = t.file("etc/modules");	/* created by the install */
	writeGoodModule(src);
	REQUIRE(::symlink("start_prim", (src + "/scripts/start_both").c_str()) == 0);
	REQUIRE(chmod((src + "/scripts/stop_prim").c_str(), 0777) == 0);	/* group/other write dropped */
	auto b = sk::readModuleDir(src);
	REQUIRE(b.ok());

	auto r = sk::installModule(*b, "web", modules, false);
	INFO(messageOf(r));
	REQUIRE(r.ok());
	CHECK(r->dir == modules + "/web");
	CHECK_FALSE(r->replaced);
	CHECK(r->files == 4);
	CHECK(readText(modules + "/web/module.json") == moduleJson());
	CHECK(readText(modules + "/web/scripts/start_prim") == kScript);
	struct stat st;
	REQUIRE(stat((modules + "/web/scripts/stop_prim").c_str(), &st) == 0);
	CHECK((st.st_mode & 07777) == 0755);
	REQUIRE(stat((modules + "/web/lib/common.sh").c_str(), &st) == 0);
	CHECK((st.st_mode & 07777) == 0644);
	CHECK(fs::read_symlink(modules + "/web/scripts/start_both") == "start_prim");
	CHECK(dotEntries(modules) == 0);

	auto again = sk::installModule(*b, "web", modules, false);
	REQUIRE(!again.ok());
	CHECK(again.code() == -EEXIST);
	CHECK(again.error().message == "module \"web\" is already installed in " + modules + " (--force replaces it)");
	CHECK(dotEntries(modules) == 0);

	writeText(src + "/scripts/start_prim", "#!/bin/sh\necho v2\n", 0755);
	fs::remove(src + "/lib/common.sh");
	b = sk::readModuleDir(src);
	REQUIRE(b.ok());
	r = sk::installModule(*b, "web", modules, true);
	REQUIRE(r.ok());
	CHECK(r->replaced);
	CHECK(readText(modules + "/web/scripts/start_prim") == "#!/bin/sh\necho v2\n");
	CHECK_FALSE(fs::exists(modules + "/web/lib/common.sh"));
	CHECK(dotEntries(modules) == 0);

	/* A bundle that breaks the invariants is refused before anything is written. */
	sk::ModuleBundle bad;
	bad.source = "hand-made";
	bad.entries.push_back(sk::ModuleEntry{ "../escape", sk::ModuleEntryKind::File, 0644, 0, "x" });
	auto e = sk::installModule(bad, "evil", modules, false);
	REQUIRE(!e.ok());
	CHECK(e.error().message == "\"../escape\": \"..\" in the path, expected a path inside the module");
	bad.entries = { sk::ModuleEntry{ "a/b", sk::ModuleEntryKind::File, 0644, 0, "x" } };
	e = sk::installModule(bad, "evil", modules, false);
	REQUIRE(!e.ok());
	CHECK(e.error().message == "\"a/b\": parent is not a directory entry");
	e = sk::installModule(*b, "../x", modules, false);
	REQUIRE(!e.ok());
	CHECK(e.error().message == "\"../x\" is not a module name");
	CHECK_FALSE(fs::exists(modules + "/evil"));
	CHECK(dotEntries(modules) == 0);
}

TEST_CASE("list and remove")
{
	TempDir t;
	std::string modules = t.file("modules");
	writeGoodModule(modules + "/web");
	writeText(modules + "/mon/module.json",
		  moduleJson("mon", "198.18.0.101/24",
			     R"("checkers": [ { "name": "w", "type": "module", "module": "web", "states": ["PRIM"] } ])"));
	writeText(modules + "/wrong/module.json", moduleJson("other", "198.18.0.102/24"));
	writeText(modules + "/zdup/module.json", moduleJson("zdup", "198.18.0.100/24"));
	fs::create_directories(modules + "/.install-x-abcdef");	/* a crashed install: ignored */

	auto l = sk::listInstalledModules(modules, &cluster());
	REQUIRE(l.ok());
	REQUIRE(l->size() == 4);
	CHECK((*l)[0].name == "mon");
	CHECK((*l)[0].valid);
	CHECK((*l)[1].name == "web");
	CHECK((*l)[1].valid);
	CHECK((*l)[2].name == "wrong");
	CHECK_FALSE((*l)[2].valid);
	CHECK(hasError((*l)[2].errors, "/name: found \"other\", expected \"wrong\" (the module directory's name)"));
	/* As skd reports it: on the later module of the two. */
	CHECK((*l)[3].name == "zdup");
	CHECK_FALSE((*l)[3].valid);
	CHECK(hasError((*l)[3].errors, "found VIP 198.18.0.100, also used by module \"web\""));
	CHECK(sk::modulesWatching(*l, "web") == std::vector<std::string>{ "mon (checker \"w\")" });
	CHECK(sk::modulesWatching(*l, "mon").empty());

	auto none = sk::listInstalledModules(t.file("missing"), &cluster());
	REQUIRE(none.ok());
	CHECK(none->empty());

	REQUIRE(sk::removeModule(modules, "web").ok());
	CHECK_FALSE(fs::exists(modules + "/web"));
	CHECK(dotEntries(modules) == 1);	/* only the crashed install's */
	sk::Status s = sk::removeModule(modules, "web");
	REQUIRE(!s.ok());
	CHECK(s.code() == -ENOENT);
	CHECK(s.error().message == "no module \"web\" in " + modules);
	s = sk::removeModule(modules, "..");
	REQUIRE(!s.ok());
	CHECK(s.error().message == "\"..\" is not a module name");
	s = sk::removeModule(t.file("missing"), "web");
	REQUIRE(!s.ok());
	CHECK(s.error().message == "no module \"web\" in " + t.file("missing") + " (the directory does not exist)");

	/* A symlinked module directory: the link goes, its target stays. */
	writeGoodModule(t.file("elsewhere"));
	REQUIRE(::symlink(t.file("elsewhere").c_str(), (modules + "/linked").c_str()) == 0);
	REQUIRE(sk::removeModule(modules, "linked").ok());
	CHECK_FALSE(fs::exists(modules + "/linked"));
	CHECK(fs::exists(t.file("elsewhere/module.json")));
}

TEST_CASE("package: the archive reads back as the same module")
{
	TempDir t;
	std::string src = t.file("web");
	writeGoodModule(src);
	REQUIRE(::symlink("start_prim", (src + "/scripts/start_both").c_str()) == 0);
	auto b = sk::readModuleDir(src);
	REQUIRE(b.ok());
	std::string out = t.file("web.tar.gz");
	sk::Status s = sk::writeModuleArchive(*b, "web", out);
	INFO(messageOf(s));
	REQUIRE(s.ok());
	struct stat st;
	REQUIRE(stat(out.c_str(), &st) == 0);
	CHECK((st.st_mode & 0777) == 0644);
	auto back = sk::readModuleArchive(out);
	INFO(messageOf(back));
	REQUIRE(back.ok());
	REQUIRE(back->entries.size() == b->entries.size());
	for (size_t i = 0; i < b->entries.size(); i++) {
		CHECK(back->entries[i].path == b->entries[i].path);
		CHECK(back->entries[i].kind == b->entries[i].kind);
		CHECK(back->entries[i].data == b->entries[i].data);
		if (b->entries[i].kind == sk::ModuleEntryKind::File)
			CHECK(back->entries[i].mode == (b->entries[i].mode & 0755));
	}
	/* Same module, same bytes. */
	std::string first = readText(out);
	REQUIRE(sk::writeModuleArchive(*b, "web", out).ok());
	CHECK(readText(out) == first);
	/* tar sees one top directory, "web/". */
	std::string listing = t.file("listing");
	REQUIRE(system(("tar tzf " + out + " > " + listing).c_str()) == 0);
	CHECK(readText(listing).rfind("web/\n", 0) == 0);
	CHECK(readText(listing).find("web/scripts/start_prim\n") != std::string::npos);
	CHECK(dotEntries(t.path()) == 0);
}

TEST_CASE("running state from skd's status document")
{
	json status = json::parse(R"({ "modules": [
		{ "name": "a", "state": "PRIM", "label": "PRIM/running" },
		{ "name": "b", "state": "STOP", "label": "STOP" },
		{ "name": "c", "state": "STOP", "label": "STOP/stopping", "script_running": "poststop" },
		{ "name": "d", "state": "WAIT" },
		{ "name": 5, "state": ["odd"] },
		{ "name": "e", "state": 7, "script_running": null }
	] })");
	sk::ModuleRunState a = sk::moduleRunState(status, "a");
	CHECK(a.known);
	CHECK(a.running);
	CHECK(a.label == "PRIM/running");
	CHECK_FALSE(sk::moduleRunState(status, "b").running);
	CHECK(sk::moduleRunState(status, "b").known);
	CHECK(sk::moduleRunState(status, "c").running);
	CHECK(sk::moduleRunState(status, "d").running);
	CHECK(sk::moduleRunState(status, "d").label == "WAIT");
	CHECK_FALSE(sk::moduleRunState(status, "zzz").known);
	CHECK(sk::moduleRunState(status, "e").running);	/* unreadable state: assume it runs */
	CHECK_FALSE(sk::moduleRunState(json::parse("[1,2]"), "a").known);
	CHECK_FALSE(sk::moduleRunState(json::parse(R"({"modules": 3})"), "a").known);
}
