/* SPDX-License-Identifier: Apache-2.0 */
/*
 * skctl: SK's command line. It only translates: arguments become a control
 * request to skd (or libsk calls, for `config check` and `module ...`), replies become text.
 * Exit codes: 0 ok, 1 request refused or failed, 2 bad usage or invalid config,
 * 3 skd not reachable.
 */
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "api/control.h"
#include "core/config.h"
#include "core/module_package.h"

using nlohmann::json;

namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoDaemon = 3;

struct Globals {
	std::string socket = "/run/sk/skd.sock";
	int timeoutMs = 10000;
};

/* Sends one request; prints the error and sets *exitCode on failure. */
bool request(const Globals &g, const json &req, json *result, int *exitCode)
{
	auto r = sk::controlRequest(g.socket, req, g.timeoutMs);
	if (!r) {
		fprintf(stderr, "skctl: %s\n", r.error().message.c_str());
		bool unreachable = r.error().code == -ENOENT || r.error().code == -ECONNREFUSED ||
				   r.error().code == -EACCES || r.error().code == -ETIMEDOUT;
		*exitCode = unreachable ? kExitNoDaemon : kExitFailed;
		return false;
	}
	*result = std::move(r.value());
	return true;
}

std::string duration(int64_t s)
{
	if (s < 120)
		return fmt::format("{}s", s);
	if (s < 7200)
		return fmt::format("{}m{}s", s / 60, s % 60);
	if (s < 172800)
		return fmt::format("{}h{}m", s / 3600, (s % 3600) / 60);
	return fmt::format("{}d{}h", s / 86400, (s % 86400) / 3600);
}

std::string joined(const json &arr)
{
	std::string out;
	if (!arr.is_array())
		return out;
	for (const json &v : arr) {
		if (!out.empty())
			out += ",";
		out += v.is_string() ? v.get<std::string>() : v.dump();
	}
	return out;
}

void printStatus(const json &s)
{
	fmt::print("node {} (id {}) of cluster {}: skd {}, pid {}, up {}\n",
		   s["node"].value("name", "?"), s["node"].value("id", 0), s.value("cluster", "?"),
		   s.value("version", "?"), s.value("pid", 0), duration(s.value("uptime_s", 0)));
	const json &mods = s["modules"];
	if (!mods.is_array() || mods.empty()) {
		fmt::print("no modules configured\n");
		return;
	}
	fmt::print("{:<16} {:<7} {:<10} {:<12} {}\n", "MODULE", "TYPE", "STATE", "NODES", "VIPS");
	for (const json &m : mods)
		fmt::print("{:<16} {:<7} {:<10} {:<12} {}\n", m.value("name", "?"), m.value("type", "?"),
			   m.value("state", "?"), joined(m.value("nodes", json::array())),
			   joined(m.value("vips", json::array())));
}

/* Prints a log file; with follow, keeps printing what is appended (like tail -f). */
int printLog(const std::string &file, bool follow)
{
	FILE *f = fopen(file.c_str(), "r");
	if (!f && !follow) {
		fprintf(stderr, "skctl: cannot open %s: %s\n", file.c_str(), strerror(errno));
		return kExitFailed;
	}
	char buf[65536];
	for (;;) {
		if (f) {
			size_t n;
			while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
				fwrite(buf, 1, n, stdout);
			fflush(stdout);
			clearerr(f);
		}
		if (!follow)
			break;
		usleep(200000);
		if (!f)
			f = fopen(file.c_str(), "r");
	}
	if (f)
		fclose(f);
	return 0;
}

/* ---- skctl module ... ---- */

constexpr const char *kDefaultClusterFile = "/etc/sk/cluster.json";

void printConfigErrors(const std::vector<sk::ConfigError> &errors, const char *indent)
{
	for (const sk::ConfigError &e : errors)
		fmt::print(stderr, "{}{}\n", indent, sk::formatConfigError(e));
}

/* The cluster configuration module commands need (modules_dir, cross-references). */
bool loadCluster(const std::string &file, sk::ClusterConfig *out, int *exitCode)
{
	std::vector<sk::ConfigError> errors;
	auto c = sk::loadClusterConfig(file, &errors);
	if (c) {
		*out = std::move(c.value());
		return true;
	}
	fmt::print(stderr, "skctl: the cluster configuration {} is not usable (--config FILE):\n", file);
	printConfigErrors(errors, "  ");
	if (errors.empty())
		fmt::print(stderr, "  {}\n", c.error().message);
	*exitCode = kExitUsage;
	return false;
}

/* skd's status, when it answers. absent: no daemon listens (so nothing of ours runs). */
struct DaemonView {
	bool reachable = false;
	bool absent = false;
	json status;
	std::string error;
};

DaemonView askDaemon(const Globals &g)
{
	DaemonView v;
	auto r = sk::controlRequest(g.socket, { { "cmd", "status" } }, g.timeoutMs);
	if (r) {
		v.reachable = true;
		v.status = std::move(r.value());
	} else {
		v.absent = r.error().code == -ENOENT || r.error().code == -ECONNREFUSED;
		v.error = r.error().message;
	}
	return v;
}

/*
 * Refuses (prints why, returns false) when skd runs the module on this node, or when skd
 * exists but cannot say (timeout, permission): removing files under a running module is
 * what must never happen. No skd listening: allowed.
 */
bool checkNotRunning(const Globals &g, const std::string &name, const char *what, int *exitCode)
{
	DaemonView v = askDaemon(g);
	if (!v.reachable) {
		if (v.absent) {
			fmt::print("skd is not running here: {} without a running check\n", what);
			return true;
		}
		fmt::print(stderr, "skctl: {} refused: cannot ask skd whether module {} runs: {}\n", what, name, v.error);
		*exitCode = kExitFailed;
		return false;
	}
	sk::ModuleRunState rs = sk::moduleRunState(v.status, name);
	if (rs.running) {
		fmt::print(stderr, "skctl: {} refused: module {} is running on this node ({}); stop it first: "
				   "skctl stop -m {}\n",
			   what, name, rs.label, name);
		*exitCode = kExitFailed;
		return false;
	}
	return true;
}

/* After an install or a remove: makes skd re-read its configuration and says what it did. */
void reloadDaemon(const Globals &g, const std::string &name, bool installed, int *exitCode)
{
	auto r = sk::controlRequest(g.socket, { { "cmd", "reload" } }, g.timeoutMs);
	if (!r) {
		int c = r.error().code;
		if (c == -ENOENT || c == -ECONNREFUSED) {
			fmt::print("skd is not running: it {} module {} when it starts\n",
				   installed ? "loads" : "will not load", name);
			return;
		}
		fmt::print(stderr, "skctl: module {} is {}, but skd did not reload:\n{}\n", name,
			   installed ? "installed" : "removed", r.error().message);
		fmt::print(stderr, "skctl: fix that, then run 'skctl reload'\n");
		*exitCode = kExitFailed;
		return;
	}
	DaemonView v = askDaemon(g);
	sk::ModuleRunState rs = v.reachable ? sk::moduleRunState(v.status, name) : sk::ModuleRunState{};
	if (installed && rs.known)
		fmt::print("skd reloaded its configuration: module {} is loaded ({}); start it with 'skctl start -m {}'\n",
			   name, rs.label, name);
	else if (installed)
		fmt::print("skd reloaded its configuration, but does not list module {}\n", name);
	else
		fmt::print("skd reloaded its configuration: module {} is no longer loaded\n", name);
}

std::string moduleSummary(const sk::ModuleConfig &m)
{
	return fmt::format("{}, nodes {}", sk::configName(m.type), fmt::join(m.nodes, ","));
}

/* Prints a refused module's problems; exit code 2 (invalid configuration). */
void printRefusal(const char *what, const sk::ModuleCheck &check, int *exitCode)
{
	fmt::print(stderr, "skctl: {} refused, nothing was written:\n", what);
	printConfigErrors(check.errors, "  ");
	fmt::print(stderr, "{} error(s)\n", check.errors.size());
	*exitCode = kExitUsage;
}

void printWarnings(const sk::ModuleCheck &check)
{
	for (const sk::ConfigError &e : check.warnings)
		fmt::print(stderr, "warning: {} (skd rejects the configuration until this is fixed)\n",
			   sk::formatConfigError(e));
}

int moduleInstall(const Globals &g, const std::string &clusterFile, const std::string &source, bool force)
{
	int exitCode = 0;
	sk::ClusterConfig cluster;
	if (!loadCluster(clusterFile, &cluster, &exitCode))
		return exitCode;
	const std::string &modulesDir = cluster.paths.modulesDir;
	auto bundle = sk::readModule(source);
	if (!bundle) {
		fmt::print(stderr, "skctl: module install refused, nothing was written:\n  {}\n", bundle.error().message);
		return kExitUsage;
	}
	auto installed = sk::listInstalledModules(modulesDir, &cluster);
	if (!installed) {
		fmt::print(stderr, "skctl: {}\n", installed.error().message);
		return kExitFailed;
	}
	std::vector<sk::ModuleConfig> others;
	for (const sk::InstalledModule &im : *installed)
		if (im.valid)
			others.push_back(im.config);
	sk::ModuleCheck check = sk::checkModuleBundle(*bundle, &cluster, &others);
	if (!check.errors.empty()) {
		printRefusal("module install", check, &exitCode);
		return exitCode;
	}
	const std::string &name = check.config.name;
	fmt::print("module {}: valid ({}; {} entries, {} bytes)\n", name, moduleSummary(check.config),
		   bundle->entries.size(), bundle->totalBytes());
	printWarnings(check);

	bool exists = std::any_of(installed->begin(), installed->end(),
				  [&](const sk::InstalledModule &im) { return im.name == name; });
	if (exists && !force) {
		fmt::print(stderr, "skctl: module install refused: module {} is already installed in {} "
				   "(--force replaces it)\n",
			   name, modulesDir);
		return kExitFailed;
	}
	if (exists && !checkNotRunning(g, name, "module install --force", &exitCode))
		return exitCode;
	auto res = sk::installModule(*bundle, name, modulesDir, force);
	if (!res) {
		fmt::print(stderr, "skctl: module install failed, {} is unchanged: {}\n", modulesDir,
			   res.error().message);
		return kExitFailed;
	}
	fmt::print("installed module {} into {}: {} files, {} bytes{}\n", name, res->dir, res->files, res->bytes,
		   res->replaced ? " (replaced the previous version)" : "");
	reloadDaemon(g, name, true, &exitCode);
	return exitCode;
}

int moduleList(const Globals &g, const std::string &clusterFile, bool asJson)
{
	int exitCode = 0;
	sk::ClusterConfig cluster;
	if (!loadCluster(clusterFile, &cluster, &exitCode))
		return exitCode;
	auto installed = sk::listInstalledModules(cluster.paths.modulesDir, &cluster);
	if (!installed) {
		fmt::print(stderr, "skctl: {}\n", installed.error().message);
		return kExitFailed;
	}
	DaemonView v = askDaemon(g);
	json mods = json::array();
	for (const sk::InstalledModule &im : *installed) {
		sk::ModuleRunState rs = v.reachable ? sk::moduleRunState(v.status, im.name) : sk::ModuleRunState{};
		json errors = json::array();
		for (const sk::ConfigError &e : im.errors)
			errors.push_back(sk::formatConfigError(e));
		json m = { { "name", im.name },
			   { "dir", im.dir },
			   { "valid", im.valid },
			   { "type", im.valid ? json(sk::configName(im.config.type)) : json(nullptr) },
			   { "nodes", im.valid ? json(im.config.nodes) : json::array() },
			   { "errors", errors },
			   { "loaded", rs.known },
			   { "running", rs.running },
			   { "state", rs.known ? json(rs.state) : json(nullptr) },
			   { "label", rs.known ? json(rs.label) : json(nullptr) } };
		mods.push_back(std::move(m));
	}
	if (asJson) {
		json doc = { { "modules_dir", cluster.paths.modulesDir },
			     { "skd", { { "reachable", v.reachable }, { "error", v.error } } },
			     { "modules", mods } };
		fmt::print("{}\n", doc.dump(2));
		return 0;
	}
	if (mods.empty()) {
		fmt::print("no modules installed in {}\n", cluster.paths.modulesDir);
	} else {
		fmt::print("{:<16} {:<7} {:<16} {}\n", "MODULE", "TYPE", "NODES", "STATE (this node)");
		for (const json &m : mods) {
			std::string state;
			if (!m["valid"].get<bool>())
				state = fmt::format("INVALID: {}", m["errors"].empty() ? "?" : m["errors"][0].get<std::string>());
			else if (!v.reachable)
				state = "-";
			else if (!m["loaded"].get<bool>())
				state = "not loaded by skd (skctl reload)";
			else
				state = m["label"].get<std::string>();
			fmt::print("{:<16} {:<7} {:<16} {}\n", m["name"].get<std::string>(),
				   m["valid"].get<bool>() ? m["type"].get<std::string>() : "-",
				   m["valid"].get<bool>() ? joined(m["nodes"]) : "-", state);
		}
	}
	if (!v.reachable)
		fmt::print("(skd not reachable: {})\n", v.error);
	return 0;
}

int moduleRemove(const Globals &g, const std::string &clusterFile, const std::string &name)
{
	int exitCode = 0;
	sk::ClusterConfig cluster;
	if (!loadCluster(clusterFile, &cluster, &exitCode))
		return exitCode;
	const std::string &modulesDir = cluster.paths.modulesDir;
	auto installed = sk::listInstalledModules(modulesDir, &cluster);
	if (!installed) {
		fmt::print(stderr, "skctl: {}\n", installed.error().message);
		return kExitFailed;
	}
	std::vector<std::string> names;
	for (const sk::InstalledModule &im : *installed)
		names.push_back(im.name);
	if (std::find(names.begin(), names.end(), name) == names.end()) {
		fmt::print(stderr, "skctl: module remove refused: no module \"{}\" in {}{}\n", name, modulesDir,
			   names.empty() ? "" : fmt::format(" (installed: {})", fmt::join(names, ", ")));
		return kExitFailed;
	}
	std::vector<std::string> watchers = sk::modulesWatching(*installed, name);
	if (!watchers.empty()) {
		fmt::print(stderr, "skctl: module remove refused: module {} is watched by {}; change or remove "
				   "those first\n",
			   name, fmt::join(watchers, ", "));
		return kExitFailed;
	}
	if (!checkNotRunning(g, name, "module remove", &exitCode))
		return exitCode;
	sk::Status s = sk::removeModule(modulesDir, name);
	if (!s) {
		fmt::print(stderr, "skctl: module remove failed: {}\n", s.error().message);
		return kExitFailed;
	}
	fmt::print("removed module {} from {}\n", name, modulesDir);
	reloadDaemon(g, name, false, &exitCode);
	return exitCode;
}

int modulePackage(const std::string &clusterFile, const std::string &dir, std::string output)
{
	int exitCode = 0;
	sk::ClusterConfig cluster;
	bool withCluster = !clusterFile.empty();
	if (withCluster && !loadCluster(clusterFile, &cluster, &exitCode))
		return exitCode;
	struct stat st;
	if (stat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) {
		fmt::print(stderr, "skctl: module package: {} is not a directory\n", dir);
		return kExitUsage;
	}
	auto bundle = sk::readModuleDir(dir);
	if (!bundle) {
		fmt::print(stderr, "skctl: module package refused, nothing was written:\n  {}\n", bundle.error().message);
		return kExitUsage;
	}
	sk::ModuleCheck check = sk::checkModuleBundle(*bundle, withCluster ? &cluster : nullptr, nullptr);
	if (!check.errors.empty()) {
		printRefusal("module package", check, &exitCode);
		return exitCode;
	}
	const std::string &name = check.config.name;
	fmt::print("module {}: valid ({}){}\n", name, moduleSummary(check.config),
		   withCluster ? "" : "; nodes and networks are checked at install (or give --config)");
	if (output.empty())
		output = name + ".tar.gz";
	sk::Status s = sk::writeModuleArchive(*bundle, name, output);
	if (!s) {
		fmt::print(stderr, "skctl: module package failed: {}\n", s.error().message);
		return kExitFailed;
	}
	struct stat out;
	off_t size = stat(output.c_str(), &out) == 0 ? out.st_size : 0;
	fmt::print("wrote {}: module {}, {} entries, {} bytes of files, {} bytes compressed\n", output, name,
		   bundle->entries.size(), bundle->totalBytes(), static_cast<long long>(size));
	return 0;
}

/* "share N/B buckets" of one entry of a farm module's status "nodes". */
std::string farmShare(const json &m, const json &node)
{
	return fmt::format("share {}/{} buckets", node.value("buckets", 0), m.value("buckets", 0));
}

/* skctl state's details of this node in a farm module: its share, what its filter
 * installed and counted, and any drain under way. */
std::string farmSelfDetails(const json &m)
{
	std::string d;
	for (const json &n : m["nodes"])
		if (n.value("self", false))
			d = farmShare(m, n) + ", ";
	d += fmt::format("{} installed here", m.value("buckets_installed_here", 0));
	if (m.contains("xdp") && m["xdp"].is_object())
		d += fmt::format(", packets kept {} dropped {}", m["xdp"].value("pass_owned", 0),
				 m["xdp"].value("drop_not_owned", 0));
	if (m.value("buckets_draining", 0) > 0)
		d += fmt::format(", {} draining", m.value("buckets_draining", 0));
	if (m.contains("connections_to_drain") && m["connections_to_drain"].is_number())
		d += fmt::format(", waiting for {} connection(s) to close", m["connections_to_drain"].get<int64_t>());
	if (!m.value("views_agree", true))
		d += ", VIEWS DISAGREE";
	return d;
}

} /* namespace */

int main(int argc, char **argv)
{
	Globals g;
	int exitCode = 0;

	CLI::App app{ "skctl: control and inspect SK (high availability without shared storage).\n"
		      "Talks to the local skd through its control socket." };
	app.require_subcommand(1);
	app.add_option("-s,--socket", g.socket, "skd control socket")->capture_default_str()->envname("SK_SOCKET");
	app.add_option("--timeout-ms", g.timeoutMs, "How long to wait for skd")->capture_default_str();

	/* status */
	bool asJson = false;
	CLI::App *status = app.add_subcommand("status", "Show this node and its modules (--json: the status document)");
	status->add_flag("--json", asJson, "Print the JSON status document (same as GET /api/v1/status)");
	status->callback([&] {
		json result;
		if (!request(g, { { "cmd", "status" } }, &result, &exitCode))
			return;
		if (asJson)
			fmt::print("{}\n", result.dump(2));
		else
			printStatus(result);
	});

	/* version */
	CLI::App *version = app.add_subcommand("version", "Show skctl's version and, if running, skd's");
	version->callback([&] {
		fmt::print("skctl {}\n", SK_VERSION);
		auto r = sk::controlRequest(g.socket, { { "cmd", "version" } }, g.timeoutMs);
		if (r)
			fmt::print("skd {}\n", r.value().value("version", "?"));
		else
			fmt::print("skd: not reachable ({})\n", r.error().message);
	});

	/* reload */
	CLI::App *reload = app.add_subcommand("reload", "Make skd re-read its configuration (like SIGHUP); "
							 "an invalid new configuration is rejected and the running one stays");
	reload->callback([&] {
		json result;
		if (request(g, { { "cmd", "reload" } }, &result, &exitCode))
			fmt::print("configuration reloaded\n");
	});

	/* Module commands: one request, one line per module in the reply. */
	std::string moduleName;
	struct Verb {
		const char *name;
		const char *help;
	};
	static const Verb verbs[] = {
		{ "start", "Start a module (both nodes: the one with current data serves)" },
		{ "stop", "Stop a module on this node (mirror: the peer takes over if it is in sync; farm: the others take its buckets, then it waits up to drain_ms for its open connections to close)" },
		{ "restart", "Restart the application locally (stop scripts, then start scripts)" },
		{ "prim", "Start a module here as primary (first start: this node's data is the reference)" },
		{ "second", "Start a module here as secondary only (never serves on its own)" },
		{ "swap", "Move the application to the other node (planned: stop here, then start there)" },
		{ "primforce", "Make this node primary even though its data may not be current (DANGEROUS)" },
	};
	for (const Verb &v : verbs) {
		CLI::App *sub = app.add_subcommand(v.name, v.help);
		sub->add_option("-m,--module", moduleName, "Module name (default: every module on this node)");
		std::string verb = v.name;
		sub->callback([&, verb] {
			json req = { { "cmd", "module" }, { "action", verb } };
			if (!moduleName.empty())
				req["module"] = moduleName;
			json result;
			if (!request(g, req, &result, &exitCode))
				return;
			for (const json &r : result)
				fmt::print("{}: {}: {} -> {}\n", r.value("module", "?"), verb, r.value("before", "?"),
					   r.value("after", "?"));
		});
	}

	/* verify */
	bool verifyJson = false;
	CLI::App *verifyCmd = app.add_subcommand(
		"verify", "Compare both copies of a mirror module's directories by block hashes while the application "
			  "runs (on the primary or the secondary); lists differing files and byte ranges. Exit 1 "
			  "when they differ");
	verifyCmd->add_option("-m,--module", moduleName, "Module name")->required();
	verifyCmd->add_flag("--json", verifyJson, "Print the report as JSON");
	verifyCmd->callback([&] {
		Globals slow = g;
		/* Hashing both trees takes as long as reading them: hours for large ones. */
		slow.timeoutMs = std::max(g.timeoutMs, 6 * 3600 * 1000);
		json result;
		if (!request(slow, { { "cmd", "module" }, { "action", "verify" }, { "module", moduleName } }, &result,
			     &exitCode))
			return;
		bool identical = true;
		for (const json &m : result) {
			identical = identical && m.value("identical", false);
			if (verifyJson)
				continue;
			for (const json &d : m.value("dirs", json::array())) {
				const json diffs = d.value("differences", json::array());
				size_t total = d.value("differences_total", diffs.size());
				fmt::print("{}: {}: {} ({} entries on the secondary, {} on the primary, {:.1f} s)\n",
					   m.value("module", "?"),
					   d.value("dir", "?"),
					   total == 0 ? std::string("identical") : fmt::format("{} difference(s)", total),
					   d.value("target_entries", 0), d.value("source_entries", 0), d.value("seconds", 0.0));
				for (const json &x : diffs) {
					std::string ranges;
					for (const json &r : x.value("ranges", json::array()))
						ranges += fmt::format(" [{}, +{})", r.value("offset", 0), r.value("length", 0));
					fmt::print("  {}: {}{}\n", x.value("path", "?"), x.value("what", "?"), ranges);
				}
				for (const json &c : d.value("changing", json::array()))
					fmt::print("  {}: written during the verify, not judged\n", c.get<std::string>());
				if (d.value("truncated", false))
					fmt::print("  (list cut to fit the report sent to the primary: run verify on the "
						   "secondary for all of it)\n");
			}
		}
		if (verifyJson)
			fmt::print("{}\n", result.dump(2));
		if (!identical)
			exitCode = kExitFailed;
	});

	/* state */
	CLI::App *state = app.add_subcommand("state", "One line per module and node: states as this node sees them (farm: each node's share of the buckets; this node's packet counts and drain)");
	state->add_option("-m,--module", moduleName, "Only this module");
	state->callback([&] {
		json s;
		if (!request(g, { { "cmd", "status" } }, &s, &exitCode))
			return;
		std::string self = s["node"].value("name", "?");
		fmt::print("{:<16} {:<8} {:<22} {}\n", "MODULE", "NODE", "STATE", "DETAILS");
		bool any = false;
		for (const json &m : s["modules"]) {
			if (!moduleName.empty() && m.value("name", "") != moduleName)
				continue;
			any = true;
			std::string details;
			if (m.contains("resync_percent") && m.value("phase", "") == "resyncing")
				details += fmt::format("resync {}% ", m.value("resync_percent", 0));
			if (m.value("vips_held", false))
				details += "holds VIP " + joined(m.value("vips", json::array())) + " ";
			if (m.contains("split_brain") && m["split_brain"].is_string())
				details += "SPLIT BRAIN ";
			if (m.contains("note"))
				details += m.value("note", "");
			const bool farm = m.value("type", "") == "farm" && m.contains("nodes") && m["nodes"].is_array();
			if (farm)
				details += farmSelfDetails(m);
			fmt::print("{:<16} {:<8} {:<22} {}\n", m.value("name", "?"), self, m.value("label", m.value("state", "?")),
				   details);
			if (farm) {
				for (const json &n : m["nodes"]) {
					if (n.value("self", false))
						continue;
					const bool alive = n.value("alive", false);
					std::string pd = farmShare(m, n);
					if (alive && n.contains("last_heard_ms_ago"))
						pd += fmt::format(", heard {} ms ago", n.value("last_heard_ms_ago", 0));
					fmt::print("{:<16} {:<8} {:<22} {}\n", m.value("name", "?"), n.value("name", "?"),
						   alive ? n.value("label", "?") : "unreachable", pd);
				}
			}
			if (m.contains("peer") && m["peer"].is_object()) {
				const json &p = m["peer"];
				std::string label = p.value("up", false) ? p.value("label", "?") : "unreachable";
				std::string pd = p.contains("last_heard_ms_ago") && p.value("up", false)
							 ? fmt::format("heard {} ms ago", p.value("last_heard_ms_ago", 0))
							 : "";
				fmt::print("{:<16} {:<8} {:<22} {}\n", m.value("name", "?"), p.value("name", "?"), label, pd);
			}
		}
		if (!any && !moduleName.empty()) {
			fmt::print(stderr, "skctl: no module named '{}'\n", moduleName);
			exitCode = kExitFailed;
		}
	});

	/* log */
	bool follow = false;
	CLI::App *logCmd = app.add_subcommand("log", "Show a module's log (transitions, script output); -f follows it");
	logCmd->add_option("-m,--module", moduleName, "Module name")->required();
	logCmd->add_flag("-f,--follow", follow, "Keep printing new lines (Ctrl-C to stop)");
	logCmd->callback([&] {
		json s;
		if (!request(g, { { "cmd", "status" } }, &s, &exitCode))
			return;
		std::string file;
		for (const json &m : s["modules"])
			if (m.value("name", "") == moduleName)
				file = m.value("log_file", "");
		if (file.empty()) {
			fmt::print(stderr, "skctl: no log for module '{}' on this node\n", moduleName);
			exitCode = kExitFailed;
			return;
		}
		exitCode = printLog(file, follow);
	});

	/* config check */
	CLI::App *config = app.add_subcommand("config", "Configuration tools");
	config->require_subcommand(1);
	std::vector<std::string> files;
	CLI::App *check = config->add_subcommand(
		"check", "Check cluster.json and module.json files; prints OK or every error, exits 2 on error.\n"
			 "Give the cluster file with the modules to check cross-references (nodes, networks).");
	check->add_option("FILE", files, "cluster.json and/or module.json files")->required();
	check->callback([&] {
		std::vector<sk::ConfigError> errors;
		sk::Status s = sk::checkConfigFiles(files, &errors);
		if (s && errors.empty()) {
			for (const std::string &f : files)
				fmt::print("{}: OK\n", f);
			return;
		}
		for (const sk::ConfigError &e : errors)
			fmt::print(stderr, "{}\n", sk::formatConfigError(e));
		if (errors.empty())
			fmt::print(stderr, "{}\n", s.error().message);
		fmt::print(stderr, "{} error(s)\n", errors.empty() ? 1 : errors.size());
		exitCode = kExitUsage;
	});

	/* module install|list|remove|package */
	std::string clusterFile = kDefaultClusterFile;
	CLI::App *module = app.add_subcommand(
		"module", "Install, list, remove and package modules (module.json + scripts/ in the cluster's "
			  "paths.modules_dir)");
	module->require_subcommand(1);
	auto addConfig = [](CLI::App *sub, std::string *file) {
		return sub->add_option("-c,--config", *file,
				       "Cluster configuration: where modules go (paths.modules_dir) and what "
				       "they are checked against")
			->envname("SK_CONFIG");
	};
	std::string moduleSource;
	bool force = false;
	CLI::App *install = module->add_subcommand(
		"install", "Check a module (directory or archive from 'module package') as skd would, then install\n"
			   "it atomically as <modules_dir>/<name> and make skd reload. Refused, with every error\n"
			   "and nothing written: invalid module.json (also against the cluster and the installed\n"
			   "modules), unknown or non-executable files in scripts/, set-id files, symlinks leaving\n"
			   "the module, special files, too many or too large files. Exit 2 when invalid, 1 when\n"
			   "refused (already installed, running) or when skd rejects the reload.");
	install->add_option("SOURCE", moduleSource, "Module directory, or a .tar.gz made by 'skctl module package'")
		->required();
	addConfig(install, &clusterFile)->capture_default_str();
	install->add_flag("-f,--force", force,
			  "Replace an installed module of the same name (refused while it runs on this node)");
	install->callback([&] { exitCode = moduleInstall(g, clusterFile, moduleSource, force); });

	bool listJson = false;
	CLI::App *list = module->add_subcommand(
		"list", "Installed modules: type, nodes, and their state on this node when skd answers\n"
			"(invalid ones with their first error)");
	addConfig(list, &clusterFile)->capture_default_str();
	list->add_flag("--json", listJson, "Print a JSON document (modules_dir, skd reachability, one object per module)");
	list->callback([&] { exitCode = moduleList(g, clusterFile, listJson); });

	std::string removeName;
	CLI::App *remove = module->add_subcommand(
		"remove", "Remove an installed module atomically and make skd reload. Refused while the module\n"
			  "runs on this node (stop it first) or while another module's checker watches it;\n"
			  "allowed when skd is not running.");
	remove->add_option("NAME", removeName, "Module name")->required();
	addConfig(remove, &clusterFile)->capture_default_str();
	remove->callback([&] { exitCode = moduleRemove(g, clusterFile, removeName); });

	std::string packageDir, packageOut;
	std::string packageCluster;
	CLI::App *package = module->add_subcommand(
		"package", "Check a module directory, then write it as one tar.gz (module.json, scripts with\n"
			   "their modes, other files) for 'skctl module install' on each node. Without --config\n"
			   "nodes and networks are not checked (install does).");
	package->add_option("DIR", packageDir, "Module directory")->required();
	package->add_option("-o,--output", packageOut, "Archive to write (default: ./<name>.tar.gz)");
	addConfig(package, &packageCluster);
	package->callback([&] { exitCode = modulePackage(packageCluster, packageDir, packageOut); });

	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError &e) {
		return app.exit(e);
	}
	return exitCode;
}
