/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A stand-in skd for HTTP and console tests: serves a fixed status document
 * (from a JSON file) through HttpServer on a real EventLoop, records admin
 * actions in a JSON-lines file. `--metrics FILE` only prints statusToMetrics.
 */
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "api/http.h"
#include "api/metrics.h"
#include "core/event_loop.h"

namespace {

int usage()
{
	std::fprintf(stderr,
		     "usage: http_fake_node --metrics STATUS.json\n"
		     "       http_fake_node --status STATUS.json [--listen ADDR] [--port N] [--port-file F]\n"
		     "                      [--token-file F] [--console DIR] [--actions-log F]\n"
		     "                      [--cluster-nodes name=url,name=url]\n");
	return 2;
}

bool readJson(const std::string &path, nlohmann::json *out)
{
	std::ifstream in(path);
	if (!in)
		return false;
	*out = nlohmann::json::parse(in, nullptr, false);
	return !out->is_discarded();
}

} /* namespace */

int main(int argc, char **argv)
{
	std::string statusFile, metricsFile, portFile, actionsLog, clusterNodes;
	sk::HttpServerOptions options;
	options.port = 0;
	for (int i = 1; i < argc; i++) {
		std::string a = argv[i];
		if (i + 1 >= argc)
			return usage();
		std::string v = argv[++i];
		if (a == "--status")
			statusFile = v;
		else if (a == "--metrics")
			metricsFile = v;
		else if (a == "--listen")
			options.listen = v;
		else if (a == "--port")
			options.port = static_cast<uint16_t>(std::stoi(v));
		else if (a == "--port-file")
			portFile = v;
		else if (a == "--token-file")
			options.tokenFile = v;
		else if (a == "--console")
			options.consoleDir = v;
		else if (a == "--actions-log")
			actionsLog = v;
		else if (a == "--cluster-nodes")
			clusterNodes = v;
		else
			return usage();
	}

	nlohmann::json status;
	if (!metricsFile.empty()) {
		if (!readJson(metricsFile, &status)) {
			std::fprintf(stderr, "cannot read JSON from %s\n", metricsFile.c_str());
			return 1;
		}
		std::cout << sk::statusToMetrics(status);
		return 0;
	}
	if (statusFile.empty() || !readJson(statusFile, &status))
		return usage();
	if (!clusterNodes.empty()) {
		/* The field the console reads (to be added to skd's status document). */
		nlohmann::json nodes = nlohmann::json::array();
		std::stringstream ss(clusterNodes);
		std::string item;
		while (std::getline(ss, item, ',')) {
			auto eq = item.find('=');
			if (eq == std::string::npos)
				return usage();
			nodes.push_back({ { "name", item.substr(0, eq) },
					  { "id", nodes.size() + 1 },
					  { "http_url", item.substr(eq + 1) } });
		}
		status["cluster_nodes"] = nodes;
	}

	auto loop = sk::EventLoop::create();
	if (!loop) {
		std::fprintf(stderr, "event loop: %s\n", loop.error().message.c_str());
		return 1;
	}
	sk::EventLoop *l = loop.value().get();

	sk::HttpBackend backend;
	backend.status = [&status] { return status; };
	backend.serving = [&status](const std::string &module) -> std::optional<bool> {
		for (const auto &m : status["modules"])
			if (m.value("name", "") == module) {
				std::string s = m.value("state", "");
				return s == "PRIM" || s == "ALONE" || s == "UP";
			}
		return std::nullopt;
	};
	backend.action = [&](const std::string &action, const std::string &module, const std::string &origin,
			     std::function<void(sk::Result<nlohmann::json>)> reply) {
		if (!actionsLog.empty()) {
			std::ofstream out(actionsLog, std::ios::app);
			out << nlohmann::json{ { "action", action }, { "module", module }, { "origin", origin } }.dump()
			    << "\n";
		}
		for (const auto &m : status["modules"])
			if (m.value("name", "") == module) {
				reply(nlohmann::json{ { "module", module }, { "command", action },
						      { "before", m.value("label", "") }, { "after", m.value("label", "") } });
				return;
			}
		reply(sk::makeError(-ENOENT, "no module named '" + module + "'"));
	};

	auto server = sk::HttpServer::create(options, backend, [l](std::function<void()> cb) { l->post(std::move(cb)); });
	if (!server) {
		std::fprintf(stderr, "http: %s\n", server.error().message.c_str());
		return 1;
	}
	if (!portFile.empty()) {
		std::ofstream out(portFile + ".tmp");
		out << server.value()->port() << "\n";
		out.close();
		std::rename((portFile + ".tmp").c_str(), portFile.c_str());
	}
	std::printf("listening on port %u\n", server.value()->port());
	std::fflush(stdout);
	l->watchSignal(SIGTERM, [l] { l->stop(); });
	l->watchSignal(SIGINT, [l] { l->stop(); });
	int rc = l->run();
	server.value().reset();
	return rc < 0 ? 1 : 0;
}
