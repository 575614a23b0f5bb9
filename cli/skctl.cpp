/* SPDX-License-Identifier: Apache-2.0 */
/*
 * skctl: SK's command line. It only translates: arguments become a control
 * request to skd (or a libsk call, for `config check`), replies become text.
 * Exit codes: 0 ok, 1 request refused or failed, 2 bad usage or invalid config,
 * 3 skd not reachable.
 */
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "api/control.h"
#include "core/config.h"

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
		{ "stop", "Stop a module on this node (the peer takes over if it is in sync)" },
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

	/* state */
	CLI::App *state = app.add_subcommand("state", "One line per module and node: states as this node sees them");
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
			fmt::print("{:<16} {:<8} {:<22} {}\n", m.value("name", "?"), self, m.value("label", m.value("state", "?")),
				   details);
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

	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError &e) {
		return app.exit(e);
	}
	return exitCode;
}
