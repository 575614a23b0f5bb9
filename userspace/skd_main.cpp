/* SPDX-License-Identifier: Apache-2.0 */
/*
 * skd: the SK daemon. main = parse flags, build the Daemon (which loads and
 * checks the configuration), run, tear down in reverse (RAII).
 */
#include <cstdio>

#include <CLI/CLI.hpp>

#include "core/daemon.h"
#include "core/log.h"

int main(int argc, char **argv)
{
	sk::DaemonOptions opts;
	std::string level = "info";
	bool timestamps = false;

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
	return daemon.value()->run();
}
