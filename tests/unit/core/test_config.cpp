/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Config model: good configs load with defaults, and every kind of bad input is reported
 * with its exact JSON pointer and an actionable message, all problems at once.
 */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"

#ifndef SK_SOURCE_DIR
#error "SK_SOURCE_DIR must point at the source tree (set in meson.build)"
#endif

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kTestData = std::string(SK_SOURCE_DIR) + "/tests/unit/core/testdata";
const std::string kModulesDir = std::string(SK_SOURCE_DIR) + "/modules";

std::string readText(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

void writeText(const std::string &path, const std::string &text, mode_t mode = 0644)
{
	std::ofstream(path) << text;
	chmod(path.c_str(), mode);
}

/* A private temp directory removed at the end of the test. */
class TempDir
{
public:
	TempDir()
	{
		char tmpl[] = "/tmp/sk-test-config-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		path_ = tmpl;
	}
	~TempDir() { fs::remove_all(path_); }
	std::string file(const std::string &name) const { return path_ + "/" + name; }
	const std::string &path() const { return path_; }

private:
	std::string path_;
};

/* The key file every good cluster points at: 0600, 32 bytes. Lives for the whole run. */
const std::string &keyFile()
{
	static TempDir dir;	/* removed at exit */
	static std::string path = [] {
		std::string p = dir.file("cluster.key");
		writeText(p, std::string(32, 'k'), 0600);
		return p;
	}();
	return path;
}

std::string substituteKey(std::string text)
{
	for (size_t at = text.find("@KEY_FILE@"); at != std::string::npos; at = text.find("@KEY_FILE@", at))
		text.replace(at, 10, keyFile());
	return text;
}

std::string dumpErrors(const std::vector<sk::ConfigError> &errors)
{
	std::string out;
	for (const auto &e : errors)
		out += "  " + sk::formatConfigError(e) + "\n";
	return out.empty() ? "  (no errors)\n" : out;
}

json baseCluster()
{
	return json{
		{ "cluster", "prod" },
		{ "key_file", keyFile() },
		{ "networks", { "lan", "hb2" } },
		{ "nodes",
		  { { { "name", "n1" }, { "id", 1 }, { "addresses", { { "lan", "198.18.0.1" }, { "hb2", "198.19.0.1" } } } },
		    { { "name", "n2" }, { "id", 2 }, { "addresses", { { "lan", "198.18.0.2" }, { "hb2", "198.19.0.2" } } } },
		    { { "name", "n3" }, { "id", 3 }, { "addresses", { { "lan", "198.18.0.3" }, { "hb2", "198.19.0.3" } } } } } },
	};
}

const sk::ClusterConfig &sampleCluster()
{
	static sk::ClusterConfig c = [] {
		std::vector<sk::ConfigError> errors;
		auto r = sk::parseClusterConfig(baseCluster().dump(), "cluster.json", &errors);
		INFO(dumpErrors(errors));
		REQUIRE(r.ok());
		return *r;
	}();
	return c;
}

json baseMirror()
{
	return json::parse(R"({
		"name": "web", "type": "mirror", "nodes": ["n1", "n2"],
		"heartbeat": { "interval_ms": 500, "timeout_ms": 3000 },
		"vips": [ { "address": "198.18.0.100/24", "interface": "eth0" } ],
		"replication": { "dirs": [ { "path": "/var/lib/web" }, { "path": "/srv/web" } ] },
		"checkers": [ { "name": "port", "type": "tcp", "address": "127.0.0.1", "port": 80 } ],
		"failover": { "defaultprim": "n1" },
		"witness": { "address": "198.18.0.254", "type": "tcp", "port": 22 }
	})");
}

json baseFarm()
{
	return json::parse(R"({
		"name": "lb", "type": "farm", "nodes": ["n1", "n2", "n3"],
		"vips": [ { "address": "198.18.0.200/24" } ],
		"farm": { "interface": "eth0", "ports": [80, 443], "weights": { "n3": 2 } }
	})");
}

/* A change to a good document: set (or, with erase, remove) the value at a JSON pointer. */
struct Edit {
	std::string pointer;
	json value;
	bool erase = false;
};

json applyEdit(json doc, const Edit &e)
{
	json::json_pointer ptr(e.pointer);
	if (e.erase)
		doc[ptr.parent_pointer()].erase(ptr.back());
	else
		doc[ptr] = e.value;
	return doc;
}

enum class Doc { Cluster, Mirror, Farm };

struct BadCase {
	const char *what;
	Doc doc;
	Edit edit;
	const char *path;	/* exact JSON pointer expected */
	const char *message;	/* substring expected in the message */
};

Edit kErase(const char *p)
{
	return Edit{ p, nullptr, true };
}

const std::vector<BadCase> kBadCases = {
	/* cluster.json */
	{ "cluster name with capitals", Doc::Cluster, { "/cluster", "Prod" }, "/cluster", "found \"Prod\", expected a name matching" },
	{ "cluster name too long", Doc::Cluster, { "/cluster", std::string(33, 'a') }, "/cluster", "expected a name matching [a-z0-9_-]{1,32}" },
	{ "cluster name missing", Doc::Cluster, kErase("/cluster"), "/cluster", "missing required key \"cluster\"" },
	{ "cluster name a number", Doc::Cluster, { "/cluster", 5 }, "/cluster", "found number 5, expected" },
	{ "key file relative", Doc::Cluster, { "/key_file", "cluster.key" }, "/key_file", "expected an absolute path" },
	{ "key file missing", Doc::Cluster, { "/key_file", "/nonexistent/sk.key" }, "/key_file", "No such file or directory" },
	{ "key file is a directory", Doc::Cluster, { "/key_file", "/tmp" }, "/key_file", "is a directory, expected a regular file" },
	{ "unknown top-level key with typo", Doc::Cluster, { "/netwroks", json::array() }, "/netwroks", "did you mean \"networks\"?" },
	{ "networks empty", Doc::Cluster, { "/networks", json::array() }, "/networks", "found 0 entries, expected 1..8" },
	{ "network duplicated", Doc::Cluster, { "/networks/1", "lan" }, "/networks/1", "found duplicate \"lan\"" },
	{ "nodes not an array", Doc::Cluster, { "/nodes", "n1" }, "/nodes", "found string \"n1\", expected an array" },
	{ "node name duplicated", Doc::Cluster, { "/nodes/1/name", "n1" }, "/nodes/1/name", "found duplicate node name \"n1\"" },
	{ "node id duplicated", Doc::Cluster, { "/nodes/2/id", 1 }, "/nodes/2/id", "found duplicate id 1 (also /nodes/0/id)" },
	{ "node id zero", Doc::Cluster, { "/nodes/0/id", 0 }, "/nodes/0/id", "found number 0, expected an integer 1..255" },
	{ "node id too big", Doc::Cluster, { "/nodes/0/id", 256 }, "/nodes/0/id", "found number 256, expected an integer 1..255" },
	{ "node id a string", Doc::Cluster, { "/nodes/0/id", "1" }, "/nodes/0/id", "found string \"1\", expected an integer 1..255" },
	{ "node address missing for a network", Doc::Cluster, kErase("/nodes/1/addresses/hb2"), "/nodes/1/addresses/hb2", "missing required key \"hb2\"" },
	{ "node address not an IP", Doc::Cluster, { "/nodes/0/addresses/lan", "198.18.0.256" }, "/nodes/0/addresses/lan", "found \"198.18.0.256\", expected an IPv4 or IPv6 address" },
	{ "node address duplicated", Doc::Cluster, { "/nodes/1/addresses/lan", "198.18.0.1" }, "/nodes/1/addresses/lan", "found duplicate address 198.18.0.1 (also /nodes/0/addresses/lan)" },
	{ "node address on unknown network", Doc::Cluster, { "/nodes/0/addresses/hb3", "198.20.0.1" }, "/nodes/0/addresses/hb3", "did you mean \"hb2\"?" },
	{ "unknown key in node", Doc::Cluster, { "/nodes/0/nmae", "x" }, "/nodes/0/nmae", "did you mean \"name\"?" },
	{ "port zero", Doc::Cluster, { "/ports/heartbeat", 0 }, "/ports/heartbeat", "found number 0, expected an integer 1..65535" },
	{ "port too big", Doc::Cluster, { "/ports/http", 70000 }, "/ports/http", "found number 70000, expected an integer 1..65535" },
	{ "ports not distinct", Doc::Cluster, { "/ports", { { "heartbeat", 7400 }, { "replication", 7400 } } }, "/ports/replication", "expected distinct ports" },
	{ "http listen not an IP", Doc::Cluster, { "/http", { { "listen", "localhost" } } }, "/http/listen", "found \"localhost\", expected an IPv4 or IPv6 address" },
	{ "http tls cert without key", Doc::Cluster, { "/http", { { "tls_cert", "/etc/sk/cert.pem" } } }, "/http/tls_key", "expected both or neither" },
	{ "paths relative", Doc::Cluster, { "/paths", { { "state_dir", "var/lib/sk" } } }, "/paths/state_dir", "found \"var/lib/sk\", expected an absolute path" },
	{ "paths not normalised", Doc::Cluster, { "/paths", { { "run_dir", "/run//sk/" } } }, "/paths/run_dir", "expected a normalised absolute path like \"/run/sk\"" },
	{ "document not an object", Doc::Cluster, { "", json::array() }, "", "found array, expected an object (cluster.json)" },

	/* module.json, mirror */
	{ "module name invalid", Doc::Mirror, { "/name", "Web App" }, "/name", "found \"Web App\", expected a name matching" },
	{ "module type unknown", Doc::Mirror, { "/type", "mirorr" }, "/type", "did you mean \"mirror\"?" },
	{ "mirror with three nodes", Doc::Mirror, { "/nodes", { "n1", "n2", "n3" } }, "/nodes", "found 3 nodes, expected exactly 2 for a mirror module" },
	{ "module node not in cluster", Doc::Mirror, { "/nodes/1", "n4" }, "/nodes/1", "found unknown node \"n4\" (did you mean \"n1\"?)" },
	{ "module node duplicated", Doc::Mirror, { "/nodes/1", "n1" }, "/nodes/1", "found duplicate \"n1\"" },
	{ "heartbeat network unknown", Doc::Mirror, { "/heartbeat/networks", { "lan", "hb" } }, "/heartbeat/networks/1", "found unknown network \"hb\" (did you mean \"hb2\"?)" },
	{ "heartbeat key typo", Doc::Mirror, { "/heartbeat/intervl_ms", 500 }, "/heartbeat/intervl_ms", "unknown key \"intervl_ms\" (did you mean \"interval_ms\"?)" },
	{ "heartbeat interval too small", Doc::Mirror, { "/heartbeat/interval_ms", 50 }, "/heartbeat/interval_ms", "found number 50, expected an integer 100..10000 ms" },
	{ "heartbeat interval a float", Doc::Mirror, { "/heartbeat/interval_ms", 500.5 }, "/heartbeat/interval_ms", "found number 500.5, expected an integer" },
	{ "heartbeat timeout below 3 intervals", Doc::Mirror, { "/heartbeat/timeout_ms", 1000 }, "/heartbeat/timeout_ms", "found 1000 ms, expected at least 3 x interval_ms = 1500 ms" },
	{ "heartbeat timeout negative", Doc::Mirror, { "/heartbeat/timeout_ms", -1 }, "/heartbeat/timeout_ms", "found number -1, expected an integer 300..60000 ms" },
	{ "vip without prefix", Doc::Mirror, { "/vips/0/address", "198.18.0.100" }, "/vips/0/address", "expected an IPv4 or IPv6 address with prefix length" },
	{ "vip bad address", Doc::Mirror, { "/vips/0/address", "198.18.0.300/24" }, "/vips/0/address", "found \"198.18.0.300/24\"" },
	{ "vip prefix too long", Doc::Mirror, { "/vips/0/address", "198.18.0.100/33" }, "/vips/0/address", "found prefix length \"33\" in \"198.18.0.100/33\", expected 1..32" },
	{ "vip v6 prefix too long", Doc::Mirror, { "/vips/0/address", "fd00:5c::100/129" }, "/vips/0/address", "expected 1..128" },
	{ "vip is a node address", Doc::Mirror, { "/vips/0/address", "198.18.0.2/24" }, "/vips/0/address", "which is node \"n2\"'s address on network \"lan\"" },
	{ "vip duplicated", Doc::Mirror, { "/vips/1", { { "address", "198.18.0.100/16" }, { "interface", "eth1" } } }, "/vips/1/address", "found duplicate VIP 198.18.0.100 (also /vips/0)" },
	{ "vip interface missing in mirror", Doc::Mirror, kErase("/vips/0/interface"), "/vips/0/interface", "missing required key \"interface\"" },
	{ "vip interface name too long", Doc::Mirror, { "/vips/0/interface", "averyveryverylongname0" }, "/vips/0/interface", "expected an interface name" },
	{ "replication mode unknown", Doc::Mirror, { "/replication/mode", "synchronous" }, "/replication/mode", "found string \"synchronous\", expected one of \"sync\", \"async\"" },
	{ "replication ack unknown", Doc::Mirror, { "/replication/ack", "durabel" }, "/replication/ack", "did you mean \"durable\"?" },
	{ "replication per_write not bool", Doc::Mirror, { "/replication/per_write", "yes" }, "/replication/per_write", "found string \"yes\", expected true or false" },
	{ "per_write with async", Doc::Mirror, { "/replication", { { "mode", "async" }, { "per_write", true }, { "dirs", { { { "path", "/a" } } } } } }, "/replication/per_write", "expected per_write only with mode \"sync\"" },
	{ "block size not a power of two", Doc::Mirror, { "/replication/block_size", 65535 }, "/replication/block_size", "found 65535, expected a power of two" },
	{ "block size too small", Doc::Mirror, { "/replication/block_size", 2048 }, "/replication/block_size", "found number 2048, expected an integer 4096..16777216" },
	{ "replication dirs empty", Doc::Mirror, { "/replication/dirs", json::array() }, "/replication/dirs", "found 0 entries, expected 1..64" },
	{ "replicated dir relative", Doc::Mirror, { "/replication/dirs/0/path", "var/lib/web" }, "/replication/dirs/0/path", "found \"var/lib/web\", expected an absolute path" },
	{ "replicated dir is root", Doc::Mirror, { "/replication/dirs/0/path", "/" }, "/replication/dirs/0/path", "expected a directory other than \"/\"" },
	{ "replicated dir not normalised", Doc::Mirror, { "/replication/dirs/0/path", "/var/lib/../lib/web/" }, "/replication/dirs/0/path", "expected a normalised path like \"/var/lib/web\"" },
	{ "replicated dirs nest", Doc::Mirror, { "/replication/dirs/1/path", "/var/lib/web/data" }, "/replication/dirs/1/path", "overlaps /replication/dirs/0/path \"/var/lib/web\"" },
	{ "replicated dir include not strings", Doc::Mirror, { "/replication/dirs/0/include", { 1 } }, "/replication/dirs/0/include/0", "found number 1, expected a non-empty string" },
	{ "mirror with farm section", Doc::Mirror, { "/farm", { { "interface", "eth0" } } }, "/farm", "found a farm section in a mirror module" },
	{ "checker type unknown", Doc::Mirror, { "/checkers/0/type", "tpc" }, "/checkers/0/type", "did you mean \"tcp\"?" },
	{ "checker key of another type", Doc::Mirror, { "/checkers/0/process", "app" }, "/checkers/0/process", "unknown key \"process\" for a tcp checker: it belongs to type \"process\"" },
	{ "checker key of two other types", Doc::Mirror, { "/checkers/0", { { "name", "p" }, { "type", "process" }, { "process", "app" }, { "address", "127.0.0.1" } } }, "/checkers/0/address", "for a process checker: it belongs to type \"tcp\" or \"ping\"" },
	{ "tcp checker without port", Doc::Mirror, kErase("/checkers/0/port"), "/checkers/0/port", "missing required key \"port\"" },
	{ "tcp checker bad address", Doc::Mirror, { "/checkers/0/address", "localhost" }, "/checkers/0/address", "found \"localhost\", expected an IPv4 or IPv6 address" },
	{ "checker when unknown", Doc::Mirror, { "/checkers/0/when", "primary" }, "/checkers/0/when", "expected one of \"prim\", \"both\", \"always\"" },
	{ "checker action unknown", Doc::Mirror, { "/checkers/0/action", "reboot" }, "/checkers/0/action", "expected one of \"restart\", \"stopstart\", \"wait\", \"none\"" },
	{ "checker interval too small", Doc::Mirror, { "/checkers/0/interval_ms", 10 }, "/checkers/0/interval_ms", "found number 10, expected an integer 100..3600000 ms" },
	{ "checker names duplicated", Doc::Mirror, { "/checkers/1", { { "name", "port" }, { "type", "ping" }, { "address", "198.18.0.254" } } }, "/checkers/1/name", "found duplicate checker name \"port\"" },
	{ "process checker without process", Doc::Mirror, { "/checkers/0", { { "name", "p" }, { "type", "process" } } }, "/checkers/0/process", "missing required key \"process\"" },
	{ "interface checker bad name", Doc::Mirror, { "/checkers/0", { { "name", "i" }, { "type", "interface" }, { "interface", "eth/0" } } }, "/checkers/0/interface", "found \"eth/0\", expected an interface name" },
	{ "custom checker script with directory", Doc::Mirror, { "/checkers/0", { { "name", "c" }, { "type", "custom" }, { "script", "bin/check" } } }, "/checkers/0/script", "expected a file name in the module's scripts/ directory or an absolute path" },
	{ "module checker on itself", Doc::Mirror, { "/checkers/0", { { "name", "m" }, { "type", "module" }, { "module", "web" }, { "states", { "PRIM" } } } }, "/checkers/0/module", "found \"web\" (this module), expected another module" },
	{ "module checker bad state", Doc::Mirror, { "/checkers/0", { { "name", "m" }, { "type", "module" }, { "module", "db" }, { "states", { "PRIM", "SECONDARY" } } } }, "/checkers/0/states/1", "found \"SECONDARY\", expected one of" },
	{ "script timeout for unknown script", Doc::Mirror, { "/scripts", { { "timeouts", { { "start_prm", 1000 } } } } }, "/scripts/timeouts/start_prm", "did you mean \"start_prim\"?" },
	{ "script timeout too small", Doc::Mirror, { "/scripts", { { "timeout_ms", 10 } } }, "/scripts/timeout_ms", "found number 10, expected an integer 1000..3600000 ms" },
	{ "defaultprim not a module node", Doc::Mirror, { "/failover/defaultprim", "n3" }, "/failover/defaultprim", "found \"n3\", expected one of the module's nodes: \"n1\", \"n2\"" },
	{ "auto_swap_back without defaultprim", Doc::Mirror, { "/failover", { { "auto_swap_back", true } } }, "/failover/auto_swap_back", "found true without /failover/defaultprim" },
	{ "splitbrain defaultprim without defaultprim", Doc::Mirror, { "/failover", { { "splitbrain", "defaultprim" } } }, "/failover/splitbrain", "found \"defaultprim\" without /failover/defaultprim" },
	{ "splitbrain unknown", Doc::Mirror, { "/failover/splitbrain", "keepprim" }, "/failover/splitbrain", "did you mean \"keep_prim\"?" },
	{ "maxloop zero", Doc::Mirror, { "/failover/maxloop", 0 }, "/failover/maxloop", "found number 0, expected an integer 1..1000" },
	{ "tcp witness without port", Doc::Mirror, kErase("/witness/port"), "/witness/port", "missing required key \"port\", expected an integer 1..65535 for a tcp witness" },
	{ "icmp witness with port", Doc::Mirror, { "/witness/type", "icmp" }, "/witness/port", "found a port for an icmp witness" },
	{ "witness without address", Doc::Mirror, kErase("/witness/address"), "/witness/address", "missing required key \"address\"" },
	{ "witness is a node", Doc::Mirror, { "/witness/address", "198.19.0.2" }, "/witness/address", "which is node \"n2\"'s address on network \"hb2\", expected a third machine's address" },
	{ "witness is a VIP", Doc::Mirror, { "/witness/address", "198.18.0.100" }, "/witness/address", "which is a VIP of this module" },
	{ "witness timeout too big", Doc::Mirror, { "/witness/timeout_ms", 20000 }, "/witness/timeout_ms", "found number 20000, expected an integer 100..10000 ms" },
	{ "module vips not an array", Doc::Mirror, { "/vips", { { "address", "198.18.0.100/24" } } }, "/vips", "found object, expected an array" },

	/* module.json, farm */
	{ "farm with one node", Doc::Farm, { "/nodes", { "n3" } }, "/nodes", "found 1 nodes, expected 2..32 for a farm module" },
	{ "farm with replication", Doc::Farm, { "/replication", { { "dirs", json::array() } } }, "/replication", "found a replication section in a farm module" },
	{ "farm without farm section", Doc::Farm, kErase("/farm"), "/farm", "missing required key \"farm\"" },
	{ "farm without interface", Doc::Farm, kErase("/farm/interface"), "/farm/interface", "missing required key \"interface\"" },
	{ "farm hash unknown", Doc::Farm, { "/farm/hash", "ip+port" }, "/farm/hash", "expected one of \"ip\", \"ip_port\"" },
	{ "farm buckets not a power of two", Doc::Farm, { "/farm/buckets", 1000 }, "/farm/buckets", "found 1000, expected a power of two 2..65536" },
	{ "farm buckets too many", Doc::Farm, { "/farm/buckets", 131072 }, "/farm/buckets", "found number 131072, expected an integer 2..65536" },
	{ "farm port duplicated", Doc::Farm, { "/farm/ports/1", 80 }, "/farm/ports/1", "found duplicate port 80" },
	{ "farm port out of range", Doc::Farm, { "/farm/ports/0", 0 }, "/farm/ports/0", "found number 0, expected an integer 1..65535" },
	{ "farm weight for a foreign node", Doc::Farm, { "/farm/weights/n4", 1 }, "/farm/weights/n4", "unknown key \"n4\"" },
	{ "farm weight zero", Doc::Farm, { "/farm/weights/n1", 0 }, "/farm/weights/n1", "found number 0, expected an integer 1..1000" },
	{ "farm virtual mac multicast", Doc::Farm, { "/farm/virtual_mac", "03:00:5e:00:00:01" }, "/farm/virtual_mac", "expected a unicast, locally administered MAC" },
	{ "farm virtual mac globally administered", Doc::Farm, { "/farm/virtual_mac", "00:16:3e:00:00:01" }, "/farm/virtual_mac", "expected a unicast, locally administered MAC" },
	{ "farm virtual mac malformed", Doc::Farm, { "/farm/virtual_mac", "02:00:5e:00:00" }, "/farm/virtual_mac", "found \"02:00:5e:00:00\", expected a MAC address" },
	{ "farm with defaultprim", Doc::Farm, { "/failover", { { "defaultprim", "n1" } } }, "/failover/defaultprim", "found a default primary in a farm module" },
	{ "farm seed negative", Doc::Farm, { "/farm/seed", -5 }, "/farm/seed", "found number -5, expected an integer" },
	{ "farm xdp mode unknown", Doc::Farm, { "/farm/xdp_mode", "driver" }, "/farm/xdp_mode", "expected one of \"auto\", \"native\", \"generic\"" },
	{ "farm drain too long", Doc::Farm, { "/farm/drain_ms", 600001 }, "/farm/drain_ms", "found number 600001, expected an integer 0..600000" },
	{ "farm drain not a number", Doc::Farm, { "/farm/drain_ms", "5s" }, "/farm/drain_ms", "expected an integer 0..600000" },
};

std::vector<sk::ConfigError> check(Doc doc, const json &j)
{
	std::vector<sk::ConfigError> errors;
	if (doc == Doc::Cluster) {
		auto r = sk::parseClusterConfig(j.dump(), "cluster.json", &errors);
		CHECK(r.ok() == errors.empty());
	} else {
		auto r = sk::parseModuleConfig(j.dump(), "module.json", &sampleCluster(), &errors);
		CHECK(r.ok() == errors.empty());
	}
	return errors;
}

} /* namespace */

TEST_CASE("the base documents of the bad-input table are valid")
{
	CHECK(dumpErrors(check(Doc::Cluster, baseCluster())) == "  (no errors)\n");
	CHECK(dumpErrors(check(Doc::Mirror, baseMirror())) == "  (no errors)\n");
	CHECK(dumpErrors(check(Doc::Farm, baseFarm())) == "  (no errors)\n");
}

TEST_CASE("each bad input is reported once, at its JSON pointer, with an actionable message")
{
	CHECK(kBadCases.size() >= 40);
	for (const auto &c : kBadCases) {
		json base = c.doc == Doc::Cluster ? baseCluster() : c.doc == Doc::Mirror ? baseMirror() : baseFarm();
		json bad = applyEdit(base, c.edit);
		auto errors = check(c.doc, bad);
		std::string what = c.what;
		CAPTURE(what);
		INFO("errors:\n" << dumpErrors(errors));
		CHECK(errors.size() == 1);	/* one problem, no follow-on noise */
		if (errors.empty())
			continue;
		CHECK(errors[0].path == c.path);
		CHECK_MESSAGE(errors[0].message.find(c.message) != std::string::npos,
			      "expected message containing: " << c.message << "\ngot: " << errors[0].message);
		CHECK(errors[0].file == (c.doc == Doc::Cluster ? "cluster.json" : "module.json"));
	}
}

TEST_CASE("formatConfigError names file, pointer and message")
{
	CHECK(sk::formatConfigError({ "/etc/sk/modules/web/module.json", "/vips/0/address", "found x, expected y" }) ==
	      "/etc/sk/modules/web/module.json: /vips/0/address: found x, expected y");
	CHECK(sk::formatConfigError({ "m.json", "", "cannot read" }) == "m.json: cannot read");
	CHECK(sk::formatConfigError({ "m.json", "", "syntax", 4, 2 }) == "m.json:4:2: syntax");
}

TEST_CASE("a good cluster loads with defaults; comments are accepted")
{
	std::vector<sk::ConfigError> errors;
	auto r = sk::parseClusterConfig(substituteKey(readText(kTestData + "/cluster.json")), "cluster.json", &errors);
	INFO(dumpErrors(errors));
	REQUIRE(r.ok());
	const sk::ClusterConfig &c = *r;
	CHECK(c.name == "prod");
	CHECK(c.keyFile == keyFile());
	CHECK(c.networks == std::vector<std::string>{ "lan", "hb2" });
	REQUIRE(c.nodes.size() == 3);
	CHECK(c.nodes[2].name == "n3");
	CHECK(c.nodes[2].id == 3);
	CHECK(c.nodes[2].addresses.at("hb2") == "fd00:5c::3");
	CHECK(c.findNode("n2") == &c.nodes[1]);
	CHECK(c.findNode("n9") == nullptr);
	CHECK(c.http.enabled);
	CHECK(c.http.listen == "127.0.0.1");
	CHECK(c.paths.modulesDir == "/etc/sk/modules");

	errors.clear();
	auto m = sk::parseClusterConfig(substituteKey(readText(kTestData + "/minimal-cluster.json")), "min.json", &errors);
	INFO(dumpErrors(errors));
	REQUIRE(m.ok());
	CHECK(m->ports.heartbeat == 7400);
	CHECK(m->ports.replication == 7401);
	CHECK(m->ports.http == 7480);
	CHECK_FALSE(m->http.enabled);
	CHECK(m->paths.stateDir == "/var/lib/sk");
	CHECK(m->paths.runDir == "/run/sk");
	CHECK(m->paths.bpfPinRoot == "/sys/fs/bpf/sk");
	CHECK(m->paths.logDir == "/var/log/sk");
	CHECK(m->nodes[0].id == 7);
}

TEST_CASE("a minimal mirror module gets every default")
{
	std::vector<sk::ConfigError> errors;
	auto r = sk::parseModuleConfig(R"({
		// comments work in modules too
		"name": "db", "type": "mirror", "nodes": ["n1", "n2"],
		"vips": [ { "address": "FD00:5C::0100/64", "interface": "eth0" } ],
		"replication": { "dirs": [ { "path": "/var/lib/db" } ] } /* trailing comment */
	})",
				       "db.json", &sampleCluster(), &errors);
	INFO(dumpErrors(errors));
	REQUIRE(r.ok());
	const sk::ModuleConfig &m = *r;
	CHECK(m.type == sk::ModuleType::Mirror);
	CHECK(m.heartbeat.networks == std::vector<std::string>{ "lan", "hb2" });
	CHECK(m.heartbeat.intervalMs == 500);
	CHECK(m.heartbeat.timeoutMs == 3000);
	REQUIRE(m.vips.size() == 1);
	CHECK(m.vips[0].address == "fd00:5c::100");
	CHECK(m.vips[0].prefixLen == 64);
	CHECK(m.replication.mode == sk::ReplicationMode::Sync);
	CHECK(m.replication.ack == sk::AckLevel::Durable);
	CHECK_FALSE(m.replication.perWrite);
	CHECK(m.replication.blockSize == 65536);
	CHECK_FALSE(m.replication.tls);
	CHECK(m.scripts.timeoutFor("start_prim") == 30000);
	CHECK(m.failover.defaultPrim.empty());
	CHECK(m.failover.maxLoop == 3);
	CHECK(m.failover.loopIntervalS == 86400);
	CHECK(m.failover.splitBrain == sk::SplitBrainPolicy::Manual);
	CHECK_FALSE(m.witness.enabled);
}

TEST_CASE("a mirror module without a replication section replicates no data")
{
	std::vector<sk::ConfigError> errors;
	auto r = sk::parseModuleConfig(R"({
		"name": "vip-only", "type": "mirror", "nodes": ["n1", "n2"],
		"vips": [ { "address": "198.18.0.100/24", "interface": "eth0" } ]
	})",
				       "vip-only.json", &sampleCluster(), &errors);
	INFO(dumpErrors(errors));
	REQUIRE(r.ok());
	CHECK(r->replication.dirs.empty());
}

TEST_CASE("a farm module gets farm defaults and VIPs inherit the farm interface")
{
	std::vector<sk::ConfigError> errors;
	auto r = sk::parseModuleConfig(baseFarm().dump(), "lb.json", &sampleCluster(), &errors);
	INFO(dumpErrors(errors));
	REQUIRE(r.ok());
	CHECK(r->farm.hash == sk::FarmHash::Ip);
	CHECK(r->farm.buckets == 1024);
	CHECK(r->farm.ports == std::vector<uint16_t>{ 80, 443 });
	CHECK(r->farm.weightOf("n3") == 2);
	CHECK(r->farm.weightOf("n1") == 1);
	CHECK_FALSE(r->farm.hasSeed);
	CHECK(r->farm.xdpMode == sk::FarmXdpMode::Auto);
	CHECK(r->farm.drainMs == 5000);
	CHECK(r->vips[0].interface == "eth0");
	{
		json m = baseFarm();
		m["farm"]["drain_ms"] = 0;
		errors.clear();
		auto off = sk::parseModuleConfig(m.dump(), "lb.json", &sampleCluster(), &errors);
		INFO(dumpErrors(errors));
		REQUIRE(off.ok());
		CHECK(off->farm.drainMs == 0);
	}

	for (auto [name, mode] : { std::pair{ "native", sk::FarmXdpMode::Native },
				   std::pair{ "generic", sk::FarmXdpMode::Generic },
				   std::pair{ "auto", sk::FarmXdpMode::Auto } }) {
		CAPTURE(name);
		json m = baseFarm();
		m["farm"]["xdp_mode"] = name;
		errors.clear();
		auto forced = sk::parseModuleConfig(m.dump(), "lb.json", &sampleCluster(), &errors);
		INFO(dumpErrors(errors));
		REQUIRE(forced.ok());
		CHECK(forced->farm.xdpMode == mode);
	}
}

TEST_CASE("without a cluster, node and network references are not checked")
{
	json m = baseMirror();
	m["nodes"] = { "x1", "x2" };
	m["heartbeat"]["networks"] = { "other" };
	m["failover"]["defaultprim"] = "x2";
	std::vector<sk::ConfigError> errors;
	auto r = sk::parseModuleConfig(m.dump(), "m.json", nullptr, &errors);
	INFO(dumpErrors(errors));
	CHECK(r.ok());
	CHECK(errors.empty());
}

TEST_CASE("the shipped templates load without errors against the sample cluster")
{
	std::vector<sk::ConfigError> errors;
	auto cluster = sk::parseClusterConfig(substituteKey(readText(kTestData + "/cluster.json")), "cluster.json", &errors);
	REQUIRE(cluster.ok());
	for (const char *t : { "/mirror/module.json", "/farm/module.json" }) {
		CAPTURE(t);
		errors.clear();
		auto m = sk::loadModuleConfig(kModulesDir + t, &*cluster, &errors);
		INFO(dumpErrors(errors));
		CHECK(m.ok());
		CHECK(errors.empty());
	}
}

TEST_CASE("a JSON syntax error reports line and column")
{
	std::vector<sk::ConfigError> errors;
	std::string file = kTestData + "/syntax-error.json";
	auto r = sk::loadModuleConfig(file, nullptr, &errors);
	CHECK_FALSE(r.ok());
	CHECK(r.code() == -EINVAL);
	REQUIRE(errors.size() == 1);
	CHECK(errors[0].line == 4);
	CHECK(errors[0].column == 8);	/* end of the "nodes" token after the missing comma */
	CHECK(errors[0].message.find("JSON syntax error at line 4, column 8") != std::string::npos);
	CHECK(sk::formatConfigError(errors[0]).rfind(file + ":4:8: ", 0) == 0);

	errors.clear();
	auto t = sk::parseClusterConfig("{\n  \"cluster\": \"a\",\n}", "c.json", &errors);
	CHECK_FALSE(t.ok());
	REQUIRE(errors.size() == 1);
	CHECK(errors[0].line == 3);
	CHECK(errors[0].column == 1);
}

TEST_CASE("all problems are reported at once")
{
	std::vector<sk::ConfigError> errors;
	auto r = sk::loadModuleConfig(kTestData + "/three-errors.json", &sampleCluster(), &errors);
	CHECK_FALSE(r.ok());
	INFO(dumpErrors(errors));
	REQUIRE(errors.size() == 3);
	std::vector<std::string> paths;
	for (const auto &e : errors)
		paths.push_back(e.path);
	std::sort(paths.begin(), paths.end());
	CHECK(paths == std::vector<std::string>{ "/heartbeat/intervl_ms", "/heartbeat/timeout_ms", "/vips/0/address" });
	/* The Result's message names the first problem and the count. */
	CHECK(r.error().message.find("(3 problems in ") != std::string::npos);
}

TEST_CASE("key file permissions: 0600 is accepted, group/other bits, short keys and directories are not")
{
	TempDir dir;
	json c = baseCluster();
	auto errorsFor = [&](const std::string &key) {
		c["key_file"] = key;
		std::vector<sk::ConfigError> errors;
		(void)sk::parseClusterConfig(c.dump(), "cluster.json", &errors);
		return errors;
	};

	std::string good = dir.file("good.key");
	writeText(good, std::string(64, 'x'), 0600);
	CHECK(errorsFor(good).empty());

	std::string open = dir.file("open.key");
	writeText(open, std::string(64, 'x'), 0644);
	auto e = errorsFor(open);
	INFO(dumpErrors(e));
	REQUIRE(e.size() == 1);
	CHECK(e[0].path == "/key_file");
	CHECK(e[0].message.find("has mode 0644, expected 0600") != std::string::npos);
	CHECK(e[0].message.find("chmod 600") != std::string::npos);

	std::string group = dir.file("group.key");
	writeText(group, std::string(64, 'x'), 0640);
	e = errorsFor(group);
	REQUIRE(e.size() == 1);
	CHECK(e[0].message.find("has mode 0640") != std::string::npos);

	std::string shortKey = dir.file("short.key");
	writeText(shortKey, "tooshort", 0600);
	e = errorsFor(shortKey);
	REQUIRE(e.size() == 1);
	CHECK(e[0].message.find("has 8 bytes, expected at least 32") != std::string::npos);

	std::string sub = dir.file("keydir");
	REQUIRE(mkdir(sub.c_str(), 0700) == 0);
	e = errorsFor(sub);
	REQUIRE(e.size() == 1);
	CHECK(e[0].message.find("is a directory") != std::string::npos);
}

TEST_CASE("a whole node configuration: cross-module checks")
{
	TempDir dir;
	std::string modules = dir.file("modules");
	json c = baseCluster();
	c["paths"] = { { "modules_dir", modules } };
	writeText(dir.file("cluster.json"), c.dump());

	auto addModule = [&](const std::string &name, json m) {
		fs::create_directories(modules + "/" + name);
		writeText(modules + "/" + name + "/module.json", m.dump());
	};
	json web = baseMirror();
	addModule("web", web);
	json db = baseMirror();
	db["name"] = "db";
	db["vips"][0]["address"] = "198.18.0.101/24";
	db["replication"]["dirs"] = { { { "path", "/var/lib/db" } } };
	db["checkers"] = { { { "name", "web-up" }, { "type", "module" }, { "module", "web" }, { "states", { "PRIM", "ALONE" } } } };
	addModule("db", db);

	std::vector<sk::ConfigError> errors;
	auto r = sk::loadNodeConfiguration(dir.file("cluster.json"), &errors);
	INFO(dumpErrors(errors));
	REQUIRE(r.ok());
	CHECK(r->cluster.name == "prod");
	REQUIRE(r->modules.size() == 2);
	CHECK(r->modules[0].name == "db");	/* sorted by directory name */
	CHECK(r->modules[1].name == "web");

	/* Now break it: same VIP, nested replicated dir, checker on a missing module, wrong dir name. */
	db["vips"][0]["address"] = "198.18.0.100/24";
	db["replication"]["dirs"] = { { { "path", "/var/lib/web/db" } } };
	db["checkers"][0]["module"] = "wbe";
	addModule("db", db);
	json other = baseFarm();
	addModule("lb2", other);	/* name "lb" in directory "lb2" */

	errors.clear();
	r = sk::loadNodeConfiguration(dir.file("cluster.json"), &errors);
	CHECK_FALSE(r.ok());
	INFO(dumpErrors(errors));
	REQUIRE(errors.size() == 4);
	std::string dbFile = modules + "/db/module.json";
	std::string webFile = modules + "/web/module.json";
	auto has = [&](const std::string &file, const std::string &path, const std::string &text) {
		for (const auto &e : errors)
			if (e.file == file && e.path == path && e.message.find(text) != std::string::npos)
				return true;
		return false;
	};
	CHECK(has(modules + "/lb2/module.json", "/name", "found \"lb\", expected \"lb2\""));
	CHECK(has(webFile, "/vips/0/address", "also used by module \"db\""));
	CHECK(has(webFile, "/replication/dirs/0/path", "overlaps \"/var/lib/web/db\" replicated by module \"db\""));
	CHECK(has(dbFile, "/checkers/0/module", "found unknown module \"wbe\" (did you mean \"web\"?)"));
}

TEST_CASE("duplicate module names in one set are reported")
{
	json a = baseMirror();
	json b = baseMirror();
	b["vips"][0]["address"] = "198.18.0.102/24";
	b["replication"]["dirs"] = { { { "path", "/opt/b" } } };
	auto ma = sk::parseModuleConfig(a.dump(), "a.json", &sampleCluster(), nullptr);
	auto mb = sk::parseModuleConfig(b.dump(), "b.json", &sampleCluster(), nullptr);
	REQUIRE(ma.ok());
	REQUIRE(mb.ok());
	std::vector<sk::ConfigError> errors;
	CHECK(sk::checkModuleSet({ *ma, *mb }, &errors) == 1);
	REQUIRE(errors.size() == 1);
	CHECK(errors[0].file == "b.json");
	CHECK(errors[0].path == "/name");
	CHECK(errors[0].message.find("also used by a.json") != std::string::npos);
}

TEST_CASE("checkConfigFiles tells clusters from modules by content")
{
	TempDir dir;
	writeText(dir.file("c.json"), baseCluster().dump());
	writeText(dir.file("web.json"), baseMirror().dump());
	json bad = baseFarm();
	bad["nodes"] = { "n1", "n9", "n3" };
	writeText(dir.file("lb.json"), bad.dump());

	std::vector<sk::ConfigError> errors;
	CHECK(sk::checkConfigFiles({ dir.file("web.json"), dir.file("c.json") }, &errors).ok());
	CHECK(errors.empty());

	/* With the cluster given, the unknown node is found; a missing file is reported too. */
	auto s = sk::checkConfigFiles({ dir.file("c.json"), dir.file("lb.json"), dir.file("none.json") }, &errors);
	CHECK_FALSE(s.ok());
	INFO(dumpErrors(errors));
	REQUIRE(errors.size() == 2);
	CHECK(errors[0].file == dir.file("none.json"));
	CHECK(errors[0].message.find("No such file") != std::string::npos);
	CHECK(errors[1].file == dir.file("lb.json"));
	CHECK(errors[1].path == "/nodes/1");

	/* Without it, cross-references are skipped. */
	errors.clear();
	CHECK(sk::checkConfigFiles({ dir.file("lb.json") }, &errors).ok());
}

TEST_CASE("enum names round-trip to their JSON spelling")
{
	CHECK(std::string(sk::configName(sk::ModuleType::Farm)) == "farm");
	CHECK(std::string(sk::configName(sk::CheckerAction::StopStart)) == "stopstart");
	CHECK(std::string(sk::configName(sk::SplitBrainPolicy::KeepPrim)) == "keep_prim");
	CHECK(std::string(sk::configName(sk::FarmHash::IpPort)) == "ip_port");
	CHECK(std::string(sk::configName(sk::FarmXdpMode::Generic)) == "generic");
	CHECK(sk::kScriptNames.size() == 8);
}

namespace {

/* The keys the loader accepts at ptr, read back from its "known keys: ..." message. */
std::set<std::string> loaderKeys(Doc doc, json base, const std::string &ptr)
{
	base[json::json_pointer(ptr + "/zzzz")] = 1;
	std::set<std::string> keys;
	for (const auto &e : check(doc, base)) {
		if (e.path != ptr + "/zzzz")
			continue;
		size_t at = e.message.find("known keys: ");
		REQUIRE(at != std::string::npos);
		std::string list = e.message.substr(at + 12);
		for (size_t q = list.find('"'); q != std::string::npos; q = list.find('"', list.find('"', q + 1) + 1))
			keys.insert(list.substr(q + 1, list.find('"', q + 1) - q - 1));
	}
	return keys;
}

std::set<std::string> schemaKeys(const json &schema, const std::string &ptr)
{
	std::set<std::string> keys;
	for (const auto &[k, v] : schema.at(json::json_pointer(ptr)).at("properties").items()) {
		(void)v;
		keys.insert(k);
	}
	return keys;
}

std::string joined(const std::set<std::string> &s)
{
	std::string out;
	for (const auto &k : s)
		out += k + " ";
	return out;
}

} /* namespace */

TEST_CASE("the JSON schemas list exactly the keys the loader accepts")
{
	json cluster = json::parse(readText(kModulesDir + "/sk-cluster.schema.json"));
	json module = json::parse(readText(kModulesDir + "/sk-module.schema.json"));
	CHECK(cluster.at("$schema") == "https://json-schema.org/draft/2020-12/schema");
	CHECK(module.at("$schema") == "https://json-schema.org/draft/2020-12/schema");

	struct Section {
		Doc doc;
		const char *docPtr;
		const char *schemaPtr;
	};
	const Section sections[] = {
		{ Doc::Cluster, "", "" },
		{ Doc::Cluster, "/nodes/0", "/properties/nodes/items" },
		{ Doc::Cluster, "/ports", "/properties/ports" },
		{ Doc::Cluster, "/http", "/properties/http" },
		{ Doc::Cluster, "/paths", "/properties/paths" },
		{ Doc::Mirror, "", "" },
		{ Doc::Mirror, "/heartbeat", "/properties/heartbeat" },
		{ Doc::Mirror, "/vips/0", "/properties/vips/items" },
		{ Doc::Mirror, "/replication", "/properties/replication" },
		{ Doc::Mirror, "/replication/dirs/0", "/properties/replication/properties/dirs/items" },
		{ Doc::Mirror, "/scripts", "/properties/scripts" },
		{ Doc::Mirror, "/scripts/timeouts", "/properties/scripts/properties/timeouts" },
		{ Doc::Mirror, "/failover", "/properties/failover" },
		{ Doc::Mirror, "/witness", "/properties/witness" },
		{ Doc::Farm, "/farm", "/properties/farm" },
	};
	for (const auto &s : sections) {
		json base = s.doc == Doc::Cluster ? baseCluster() : s.doc == Doc::Mirror ? baseMirror() : baseFarm();
		const json &schema = s.doc == Doc::Cluster ? cluster : module;
		std::string ptr = s.docPtr;
		CAPTURE(ptr);
		std::set<std::string> loader = loaderKeys(s.doc, base, ptr);
		CHECK(joined(loader) == joined(schemaKeys(schema, s.schemaPtr)));
	}

	/* Checkers: with an unknown type the loader lists every checker key. */
	json m = baseMirror();
	m["checkers"][0]["type"] = "zzz";
	CHECK(joined(loaderKeys(Doc::Mirror, m, "/checkers/0")) ==
	      joined(schemaKeys(module, "/properties/checkers/items")));
}
