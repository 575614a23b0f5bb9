/* SPDX-License-Identifier: Apache-2.0 */
/*
 * statusToMetrics(): exact series for known documents, only what the document
 * holds, one HELP/TYPE per contiguous family, escaped label values.
 */
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/metrics.h"

using nlohmann::json;

namespace {

json load(const std::string &name)
{
	std::ifstream in(std::string(SK_API_TESTDATA) + "/" + name);
	REQUIRE_MESSAGE(in.good(), "cannot open testdata ", name);
	return json::parse(in);
}

std::vector<std::string> lines(const std::string &text)
{
	std::vector<std::string> out;
	std::stringstream ss(text);
	std::string l;
	while (std::getline(ss, l))
		out.push_back(l);
	return out;
}

bool hasLine(const std::string &text, const std::string &line)
{
	for (const std::string &l : lines(text))
		if (l == line)
			return true;
	return false;
}

/* The sample line for series (name + labels as rendered), or "" when absent. */
std::string sample(const std::string &text, const std::string &series)
{
	for (const std::string &l : lines(text))
		if (l.rfind(series + " ", 0) == 0)
			return l;
	return "";
}

} /* namespace */

TEST_CASE("module state gauges: 1 for the current state, 0 for the others of its type")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_module_state{module=\"pgsql\",state=\"PRIM\"}") ==
	      "sk_module_state{module=\"pgsql\",state=\"PRIM\"} 1");
	CHECK(sample(m, "sk_module_state{module=\"pgsql\",state=\"SECOND\"}") ==
	      "sk_module_state{module=\"pgsql\",state=\"SECOND\"} 0");
	CHECK(sample(m, "sk_module_state{module=\"web\",state=\"UP\"}") ==
	      "sk_module_state{module=\"web\",state=\"UP\"} 1");
	/* A farm has no PRIM state. */
	CHECK(sample(m, "sk_module_state{module=\"web\",state=\"PRIM\"}") == "");
	CHECK(sample(m, "sk_module_serving{module=\"batch\"}") == "sk_module_serving{module=\"batch\"} 0");
	CHECK(sample(m, "sk_module_serving{module=\"pgsql\"}") == "sk_module_serving{module=\"pgsql\"} 1");
}

TEST_CASE("heartbeat, peer, resync, scripts, checkers, farm verdicts and build info")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_build_info{version=\"0.1.0\",cluster=\"demo\",node=\"node1\"}") ==
	      "sk_build_info{version=\"0.1.0\",cluster=\"demo\",node=\"node1\"} 1");
	CHECK(sample(m, "sk_heartbeat_received_total") == "sk_heartbeat_received_total 7190");
	CHECK(sample(m, "sk_heartbeat_dropped_total") == "sk_heartbeat_dropped_total 3");
	CHECK(sample(m, "sk_heartbeat_network_up{network=\"backup\"}") == "sk_heartbeat_network_up{network=\"backup\"} 0");
	CHECK(sample(m, "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node2\"}") ==
	      "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node2\"} 0.00025");
	CHECK(sample(m, "sk_resync_progress_ratio{module=\"pgsql\"}") == "sk_resync_progress_ratio{module=\"pgsql\"} 1");
	CHECK(sample(m, "sk_script_failures_total{module=\"pgsql\"}") == "sk_script_failures_total{module=\"pgsql\"} 1");
	CHECK(sample(m, "sk_checker_failures_total{module=\"pgsql\",checker=\"tcp \\\"5432\\\"\"}") ==
	      "sk_checker_failures_total{module=\"pgsql\",checker=\"tcp \\\"5432\\\"\"} 2");
	CHECK(sample(m, "sk_farm_xdp_packets_total{module=\"web\",verdict=\"drop\"}") ==
	      "sk_farm_xdp_packets_total{module=\"web\",verdict=\"drop\"} 990");
	CHECK(sample(m, "sk_config_reloads_total") == "sk_config_reloads_total 2");
}

TEST_CASE("replication counters and the barrier latency histogram")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_replication_bytes_total{module=\"pgsql\",role=\"sender\"}") ==
	      "sk_replication_bytes_total{module=\"pgsql\",role=\"sender\"} 1048576");
	CHECK(sample(m, "sk_replication_lag_ops{module=\"pgsql\",role=\"sender\"}") ==
	      "sk_replication_lag_ops{module=\"pgsql\",role=\"sender\"} 3");
	CHECK(hasLine(m, "# TYPE sk_replication_barrier_latency_seconds histogram"));
	CHECK(sample(m, "sk_replication_barrier_latency_seconds_bucket{module=\"pgsql\",role=\"sender\",le=\"0.001\"}") ==
	      "sk_replication_barrier_latency_seconds_bucket{module=\"pgsql\",role=\"sender\",le=\"0.001\"} 35");
	CHECK(sample(m, "sk_replication_barrier_latency_seconds_bucket{module=\"pgsql\",role=\"sender\",le=\"+Inf\"}") ==
	      "sk_replication_barrier_latency_seconds_bucket{module=\"pgsql\",role=\"sender\",le=\"+Inf\"} 40");
	CHECK(sample(m, "sk_replication_barrier_latency_seconds_count{module=\"pgsql\",role=\"sender\"}") ==
	      "sk_replication_barrier_latency_seconds_count{module=\"pgsql\",role=\"sender\"} 40");

	/* Without buckets, the sender's sum and count make a summary. */
	json s = load("node1-status.json");
	s["modules"][0]["replication"].erase("barrier_latency");
	std::string m2 = sk::statusToMetrics(s);
	CHECK(hasLine(m2, "# TYPE sk_replication_barrier_latency_seconds summary"));
	CHECK(sample(m2, "sk_replication_barrier_latency_seconds_sum{module=\"pgsql\",role=\"sender\"}") ==
	      "sk_replication_barrier_latency_seconds_sum{module=\"pgsql\",role=\"sender\"} 0.008");
}

TEST_CASE("only what the status has: a stopped module and no heartbeat layer")
{
	json s = { { "schema", "sk.status/1" },
		   { "version", "0.1.0" },
		   { "cluster", "c" },
		   { "node", { { "name", "n1" }, { "id", 1 } } },
		   { "heartbeat", nullptr },
		   { "modules", json::array({ { { "name", "m" }, { "type", "mirror" }, { "state", "STOP" } } }) } };
	std::string m = sk::statusToMetrics(s);
	CHECK(m.find("sk_heartbeat_") == std::string::npos);
	CHECK(m.find("sk_replication_") == std::string::npos);
	CHECK(m.find("sk_resync_progress_ratio") == std::string::npos);
	CHECK(m.find("sk_farm_") == std::string::npos);
	CHECK(sample(m, "sk_module_state{module=\"m\",state=\"STOP\"}") == "sk_module_state{module=\"m\",state=\"STOP\"} 1");
	CHECK(sk::statusToMetrics(json::array()) == "");
	CHECK(sk::statusToMetrics(json::object()) == "");
}

TEST_CASE("every family has one HELP and one TYPE line, then its samples, contiguous")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	std::set<std::string> seen;
	std::string current;
	int helps = 0, types = 0;
	for (const std::string &l : lines(m)) {
		REQUIRE_MESSAGE(!l.empty(), "empty line in the exposition");
		if (l.rfind("# HELP ", 0) == 0) {
			std::string name = l.substr(7, l.find(' ', 7) - 7);
			CHECK_MESSAGE(seen.insert(name).second, "family ", name, " appears twice");
			current = name;
			helps++;
			continue;
		}
		if (l.rfind("# TYPE ", 0) == 0) {
			CHECK(l.substr(7, l.find(' ', 7) - 7) == current);
			types++;
			continue;
		}
		std::string series = l.substr(0, l.find_first_of("{ "));
		CHECK_MESSAGE(series.rfind(current, 0) == 0, "sample ", l, " outside its family ", current);
	}
	CHECK(helps == types);
	CHECK(helps > 15);
}

TEST_CASE("label values are escaped")
{
	CHECK(sk::escapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
	json s = { { "modules", json::array({ { { "name", "we\"ird\\name\n" }, { "type", "farm" }, { "state", "UP" } } }) } };
	std::string m = sk::statusToMetrics(s);
	CHECK(sample(m, "sk_module_state{module=\"we\\\"ird\\\\name\\n\",state=\"UP\"}") ==
	      "sk_module_state{module=\"we\\\"ird\\\\name\\n\",state=\"UP\"} 1");
}
