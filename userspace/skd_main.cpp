/* SPDX-License-Identifier: Apache-2.0 */
/*
 * skd: the SK daemon. main = parse flags, build the Daemon (which loads and
 * checks the configuration), run, tear down in reverse (RAII).
 */
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include "api/http.h"
#include "core/daemon.h"
#include "core/log.h"

namespace {

sk::LogCategory kLog("skd");

/* The HTTP front end: status, metrics, health, admin actions, console. */
std::unique_ptr<sk::HttpServer> startHttp(sk::Daemon &d, const std::string &consoleDir, bool *failed)
{
	const sk::ClusterConfig &c = d.cluster();
	sk::HttpBackend b;
	b.status = [&d] { return d.status(); };
	b.action = [&d](const std::string &action, const std::string &module, const std::string &origin,
			std::function<void(sk::Result<nlohmann::json>)> reply) {
		d.moduleCommand({ { "action", action }, { "module", module }, { "origin", "http " + origin } },
				std::move(reply));
	};
	b.serving = [&d](const std::string &module) { return d.moduleServing(module); };
	sk::EventLoop *loop = &d.loop();
	sk::HttpConfig http = c.http;
	if (http.listen == sk::kHttpListenSelf) {
		http.listen = d.selfAddress();
		if (http.listen.empty()) {
			fprintf(stderr, "skd: HTTP server: listen \"self\" but this node has no address on the first "
					"cluster network\n");
			*failed = true;
			return nullptr;
		}
	}
	auto server = sk::HttpServer::create(sk::httpOptionsFromConfig(http, c.ports.http, consoleDir), b,
					     [loop](std::function<void()> cb) { loop->post(std::move(cb)); });
	if (!server) {
		fprintf(stderr, "skd: HTTP server: %s\n", server.error().message.c_str());
		*failed = true;
		return nullptr;
	}
	sk::logInfo(kLog, "HTTP API on {}:{}{}", http.listen, server.value()->port(),
		    server.value()->tls() ? " (TLS)" : "");
	return std::move(server.value());
}

/*
 * Each file the kernel keeps cached under a replicated dir holds an O_PATH fd in the
 * capture (as in libfuse's passthrough_hp) up to half the soft limit (then it prunes
 * and falls back to file handles, slower), so the usual 1024 is far too low: raise
 * it to fs.nr_open where allowed (root), else to the hard limit.
 */
void raiseFileLimit()
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t nrOpen = 0;
	std::ifstream("/proc/sys/fs/nr_open") >> nrOpen;
	struct rlimit want = rl;
	if (nrOpen > rl.rlim_max) {
		want.rlim_cur = want.rlim_max = nrOpen;
		if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
			sk::logInfo(kLog, "open file limit {} (was {})", nrOpen, rl.rlim_cur);
			return;
		}
	}
	if (rl.rlim_cur >= rl.rlim_max)
		return;
	want.rlim_cur = want.rlim_max = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &want) == 0)
		sk::logInfo(kLog, "open file limit {} (was {})", rl.rlim_max, rl.rlim_cur);
	else
		sk::logWarn(kLog, "cannot raise the open file limit from {}: {}", rl.rlim_cur, strerror(errno));
}

} /* namespace */

int main(int argc, char **argv)
{
	sk::DaemonOptions opts;
	std::string level = "info";
	bool timestamps = false;
	bool noHttp = false;
	std::string consoleDir = sk::defaultConsoleDir();

	CLI::App app{ "skd: the SK high-availability daemon (mirror and farm modules)" };
	app.set_version_flag("--version", std::string("skd ") + SK_VERSION);
	app.add_option("-c,--config", opts.configFile, "Cluster configuration file")
		->capture_default_str();
	app.add_option("-n,--node", opts.nodeName, "This node's name in the cluster (default: host name)");
	app.add_option("--socket", opts.socketPath, "Control socket (default: <run_dir>/skd.sock)");
	app.add_option("--state-dir", opts.stateDir, "Override paths.state_dir");
	app.add_option("--run-dir", opts.runDir, "Override paths.run_dir");
	app.add_option("--bpf-pin-root", opts.bpfPinRoot, "Override paths.bpf_pin_root");
	app.add_option("--log-dir", opts.logDir, "Override paths.log_dir");
	app.add_option("--log-level", level, "debug, info, warn or error")->capture_default_str();
	app.add_flag("--log-timestamps", timestamps, "Prefix log lines with the time (foreground runs)");
	app.add_option("--console-dir", consoleDir, "Web console assets")->capture_default_str();
	app.add_flag("--no-http", noHttp, "Do not serve the HTTP API and console");

	try {
		app.parse(argc, argv);
	} catch (const CLI::ParseError &e) {
		return app.exit(e);
	}

	sk::LogLevel l;
	if (!sk::parseLogLevel(level, &l)) {
		fprintf(stderr, "skd: --log-level: unknown level '%s' (expected debug, info, warn or error)\n",
			level.c_str());
		return 2;
	}
	sk::setLogLevel(l);
	sk::setLogTimestamps(timestamps);
	raiseFileLimit();

	/*
	 * Block the signals the loop handles before any thread exists (HTTP workers,
	 * FUSE): threads inherit the mask, so they reach the loop's signalfd only.
	 */
	sigset_t handled;
	sigemptyset(&handled);
	for (int sig : { SIGTERM, SIGINT, SIGHUP })
		sigaddset(&handled, sig);
	sigprocmask(SIG_BLOCK, &handled, nullptr);

	std::vector<sk::ConfigError> errors;
	auto daemon = sk::Daemon::create(opts, &errors);
	if (!daemon) {
		for (const sk::ConfigError &e : errors)
			fprintf(stderr, "skd: %s\n", sk::formatConfigError(e).c_str());
		if (errors.empty())
			fprintf(stderr, "skd: %s\n", daemon.error().message.c_str());
		else
			fprintf(stderr, "skd: %zu configuration error(s); not starting\n", errors.size());
		return 2;
	}
	bool failed = false;
	std::unique_ptr<sk::HttpServer> http;
	if (!noHttp) {
		http = startHttp(*daemon.value(), consoleDir, &failed);
		if (failed)
			return 1;
	}
	int ret = daemon.value()->run();
	http.reset();	/* before the loop it posts to */
	return ret;
}
