/* SPDX-License-Identifier: Apache-2.0 */
/*
 * statusToMetrics(): exact series for documents in the shape skd produces
 * (testdata/node1-status.json: a PRIM replicating two dirs as source, an UP farm,
 * a module not on this node; node2-status.json: the SECOND as target, a farm in
 * WAIT, an ALONE module without data), only what the document holds, one
 * HELP/TYPE per contiguous family, escaped label values.
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

/* The rendered line expected for series with value. */
std::string line(const std::string &series, const std::string &value)
{
	return series + " " + value;
}

/* The {module, dir, role} labels of a replicated dir's series, as rendered. */
std::string dirLabels(const std::string &module, const std::string &dir, const std::string &role,
		      const std::string &extra = "")
{
	return "{module=\"" + module + "\",dir=\"" + dir + "\",role=\"" + role + "\"" + extra + "}";
}

/* Every sample line of family name (name followed by '{' or ' '). */
std::vector<std::string> samplesOf(const std::string &text, const std::string &name)
{
	std::vector<std::string> out;
	for (const std::string &l : lines(text))
		if (l.rfind(name, 0) == 0 && l.size() > name.size() && (l[name.size()] == '{' || l[name.size()] == ' '))
			out.push_back(l);
	return out;
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
	/* A module that does not run on this node is reported as STOP by the daemon. */
	CHECK(sample(m, "sk_module_state{module=\"batch\",state=\"STOP\"}") ==
	      "sk_module_state{module=\"batch\",state=\"STOP\"} 1");
	CHECK(sample(m, "sk_module_serving{module=\"batch\"}") == "sk_module_serving{module=\"batch\"} 0");
	CHECK(sample(m, "sk_module_serving{module=\"pgsql\"}") == "sk_module_serving{module=\"pgsql\"} 1");
	CHECK(sample(m, "sk_module_serving{module=\"web\"}") == "sk_module_serving{module=\"web\"} 1");

	std::string m2 = sk::statusToMetrics(load("node2-status.json"));
	CHECK(sample(m2, "sk_module_state{module=\"pgsql\",state=\"SECOND\"}") ==
	      "sk_module_state{module=\"pgsql\",state=\"SECOND\"} 1");
	CHECK(sample(m2, "sk_module_serving{module=\"pgsql\"}") == "sk_module_serving{module=\"pgsql\"} 0");
	CHECK(sample(m2, "sk_module_serving{module=\"web\"}") == "sk_module_serving{module=\"web\"} 0");
	CHECK(sample(m2, "sk_module_serving{module=\"batch\"}") == "sk_module_serving{module=\"batch\"} 1");
}

TEST_CASE("build info, config reloads, heartbeat layer and peers")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_build_info{version=\"0.1.0\",cluster=\"demo\",node=\"node1\"}") ==
	      "sk_build_info{version=\"0.1.0\",cluster=\"demo\",node=\"node1\"} 1");
	CHECK(sample(m, "sk_start_time_seconds") == "sk_start_time_seconds 1764088800");
	CHECK(sample(m, "sk_config_reloads_total") == "sk_config_reloads_total 2");
	CHECK(sample(m, "sk_heartbeat_sent_total") == "sk_heartbeat_sent_total 7200");
	CHECK(sample(m, "sk_heartbeat_received_total") == "sk_heartbeat_received_total 7190");
	CHECK(sample(m, "sk_heartbeat_dropped_total") == "sk_heartbeat_dropped_total 3");
	CHECK(sample(m, "sk_heartbeat_network_up{network=\"lan\"}") == "sk_heartbeat_network_up{network=\"lan\"} 1");
	CHECK(sample(m, "sk_heartbeat_network_up{network=\"backup\"}") == "sk_heartbeat_network_up{network=\"backup\"} 0");
	CHECK(sample(m, "sk_peer_up{module=\"pgsql\",peer=\"node2\"}") == "sk_peer_up{module=\"pgsql\",peer=\"node2\"} 1");
	CHECK(sample(m, "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node2\"}") ==
	      "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node2\"} 0.00025");
	CHECK(sample(m, "sk_peer_last_heard_seconds{module=\"pgsql\",peer=\"node2\"}") ==
	      "sk_peer_last_heard_seconds{module=\"pgsql\",peer=\"node2\"} 0.12");

	/* A peer never heard: up is 0, its RTT (-1 until measured) and last-heard age are not exported. */
	std::string m2 = sk::statusToMetrics(load("node2-status.json"));
	CHECK(sample(m2, "sk_peer_up{module=\"batch\",peer=\"node3\"}") == "sk_peer_up{module=\"batch\",peer=\"node3\"} 0");
	CHECK(sample(m2, "sk_heartbeat_rtt_seconds{module=\"batch\",peer=\"node3\"}") == "");
	CHECK(sample(m2, "sk_peer_last_heard_seconds{module=\"batch\",peer=\"node3\"}") == "");
	CHECK(sample(m2, "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node1\"}") ==
	      "sk_heartbeat_rtt_seconds{module=\"pgsql\",peer=\"node1\"} 0.00026");
}

TEST_CASE("scripts, split brain, checkers and resync progress")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_script_failures_total{module=\"pgsql\"}") == "sk_script_failures_total{module=\"pgsql\"} 1");
	CHECK(sample(m, "sk_split_brain{module=\"pgsql\"}") == "sk_split_brain{module=\"pgsql\"} 0");
	/* checkers is {"checkers": [...], "policy": {...}}; the count is fail_count. */
	CHECK(sample(m, "sk_checker_failures_total{module=\"pgsql\",checker=\"pg_port\"}") ==
	      "sk_checker_failures_total{module=\"pgsql\",checker=\"pg_port\"} 2");
	CHECK(sample(m, "sk_checker_consecutive_failures{module=\"pgsql\",checker=\"pg_port\"}") ==
	      "sk_checker_consecutive_failures{module=\"pgsql\",checker=\"pg_port\"} 0");
	CHECK(sample(m, "sk_checker_failures_total{module=\"web\",checker=\"http\"}") ==
	      "sk_checker_failures_total{module=\"web\",checker=\"http\"} 0");
	/* resync_percent is stale outside SECOND/resyncing: not exported for the PRIM. */
	CHECK(m.find("sk_resync_progress_ratio") == std::string::npos);

	std::string m2 = sk::statusToMetrics(load("node2-status.json"));
	CHECK(sample(m2, "sk_checker_consecutive_failures{module=\"web\",checker=\"http\"}") ==
	      "sk_checker_consecutive_failures{module=\"web\",checker=\"http\"} 4");
	CHECK(sample(m2, "sk_resync_progress_ratio{module=\"pgsql\"}") == "sk_resync_progress_ratio{module=\"pgsql\"} 0.42");
	/* batch is ALONE (resync_percent 0): no progress series. */
	CHECK(sample(m2, "sk_resync_progress_ratio{module=\"batch\"}") == "");

	json s = load("node1-status.json");
	s["modules"][0]["split_brain"] = "both nodes served alone: generations 1f and 2e";
	CHECK(sample(sk::statusToMetrics(s), "sk_split_brain{module=\"pgsql\"}") == "sk_split_brain{module=\"pgsql\"} 1");
}

TEST_CASE("farm: XDP verdict counters and the buckets this node answers for")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	CHECK(sample(m, "sk_farm_xdp_packets_total{module=\"web\",verdict=\"drop_not_owned\"}") ==
	      "sk_farm_xdp_packets_total{module=\"web\",verdict=\"drop_not_owned\"} 990");
	CHECK(sample(m, "sk_farm_xdp_packets_total{module=\"web\",verdict=\"pass_owned\"}") ==
	      "sk_farm_xdp_packets_total{module=\"web\",verdict=\"pass_owned\"} 1000");
	CHECK(samplesOf(m, "sk_farm_xdp_packets_total").size() == 7);
	CHECK(sample(m, "sk_farm_buckets_owned{module=\"web\"}") == "sk_farm_buckets_owned{module=\"web\"} 512");
	CHECK(sample(m, "sk_farm_buckets_draining{module=\"web\"}") == "sk_farm_buckets_draining{module=\"web\"} 12");
	CHECK(sample(m, "sk_farm_xdp_packets_total{module=\"web\",verdict=\"pass_flow_here\"}") ==
	      "sk_farm_xdp_packets_total{module=\"web\",verdict=\"pass_flow_here\"} 3");

	std::string m2 = sk::statusToMetrics(load("node2-status.json"));
	CHECK(sample(m2, "sk_farm_buckets_owned{module=\"web\"}") == "sk_farm_buckets_owned{module=\"web\"} 0");

	/* No filter loaded: "xdp" is null, so no verdict series. */
	json s = load("node1-status.json");
	s["modules"][1]["xdp"] = nullptr;
	CHECK(samplesOf(sk::statusToMetrics(s), "sk_farm_xdp_packets_total").empty());
}

TEST_CASE("replication on the source: one series set per dir, and the barrier latency histogram")
{
	std::string m = sk::statusToMetrics(load("node1-status.json"));
	const std::string data = dirLabels("pgsql", "/srv/pgsql/data", "source");
	const std::string wal = dirLabels("pgsql", "/srv/pgsql/wal", "source");
	CHECK(sample(m, "sk_replication_ops_total" + data) == line("sk_replication_ops_total" + data, "1500"));
	CHECK(sample(m, "sk_replication_ops_total" + wal) == line("sk_replication_ops_total" + wal, "12"));
	CHECK(sample(m, "sk_replication_bytes_total" + data) == line("sk_replication_bytes_total" + data, "1048576"));
	CHECK(sample(m, "sk_replication_lag_ops" + data) == line("sk_replication_lag_ops" + data, "3"));
	CHECK(sample(m, "sk_replication_lag_bytes" + data) == line("sk_replication_lag_bytes" + data, "4096"));
	CHECK(sample(m, "sk_replication_in_sync" + data) == line("sk_replication_in_sync" + data, "1"));
	CHECK(sample(m, "sk_replication_in_sync" + wal) == line("sk_replication_in_sync" + wal, "0"));
	CHECK(sample(m, "sk_replication_connected" + data) == line("sk_replication_connected" + data, "1"));
	CHECK(sample(m, "sk_replication_alone" + data) == line("sk_replication_alone" + data, "0"));
	CHECK(sample(m, "sk_replication_acked_seq" + data) == line("sk_replication_acked_seq" + data, "1497"));
	CHECK(sample(m, "sk_replication_durable_seq" + data) == line("sk_replication_durable_seq" + data, "1490"));
	CHECK(sample(m, "sk_replication_barriers_total" + data) == line("sk_replication_barriers_total" + data, "41"));
	CHECK(sample(m, "sk_replication_ops_while_alone_total" + data) ==
	      line("sk_replication_ops_while_alone_total" + data, "0"));
	CHECK(sample(m, "sk_replication_connections_total" + wal) == line("sk_replication_connections_total" + wal, "2"));
	CHECK(sample(m, "sk_replication_rejected_frames_total" + wal) ==
	      line("sk_replication_rejected_frames_total" + wal, "1"));
	CHECK(sample(m, "sk_replication_refused_ops_total" + wal) == line("sk_replication_refused_ops_total" + wal, "2"));
	CHECK(sample(m, "sk_replication_write_behind_dropped_bytes_total" + data) ==
	      line("sk_replication_write_behind_dropped_bytes_total" + data, "524288"));
	CHECK(sample(m, "sk_replication_barrier_latency_max_seconds" + data) ==
	      line("sk_replication_barrier_latency_max_seconds" + data, "0.00195"));
	/* Target-only fields are absent on a source, not reported as 0. */
	CHECK(sample(m, "sk_replication_apply_errors_total" + data) == "");
	CHECK(sample(m, "sk_replication_applied_seq" + data) == "");
	CHECK(sample(m, "sk_replication_durable_flushes_total" + data) == "");

	CHECK(hasLine(m, "# TYPE sk_replication_barrier_latency_seconds histogram"));
	const std::string h = "sk_replication_barrier_latency_seconds";
	/* The value of one bucket, or "absent". */
	auto bucket = [&](const std::string &labels, const std::string &le) -> std::string {
		std::string series = h + "_bucket" + labels.substr(0, labels.size() - 1) + ",le=\"" + le + "\"}";
		std::string l = sample(m, series);
		return l.empty() ? "absent" : l.substr(series.size() + 1);
	};
	CHECK(bucket(data, "5e-05") == "0");
	CHECK(bucket(data, "0.0003") == "25");
	CHECK(bucket(data, "0.001") == "39");
	CHECK(bucket(data, "0.002") == "40");
	CHECK(bucket(data, "10") == "40");
	CHECK(bucket(data, "+Inf") == "40");
	CHECK(sample(m, h + "_sum" + data) == line(h + "_sum" + data, "0.012345"));
	CHECK(sample(m, h + "_count" + data) == line(h + "_count" + data, "40"));
	/* No barrier acked yet: every bucket 0, still a complete histogram. */
	CHECK(bucket(wal, "+Inf") == "0");
	CHECK(sample(m, h + "_count" + wal) == line(h + "_count" + wal, "0"));

	/* The document's bucket keys sort as strings ("5e-05" last); the exposition's le ascend. */
	std::vector<std::string> les;
	for (const std::string &l : samplesOf(m, h + "_bucket")) {
		if (l.find("dir=\"/srv/pgsql/data\"") == std::string::npos)
			continue;
		size_t at = l.find(",le=\"") + 5;
		les.push_back(l.substr(at, l.find('"', at) - at));
	}
	REQUIRE(les.size() == 25);
	CHECK(les.front() == "5e-05");
	CHECK(les[1] == "0.0001");
	CHECK(les[23] == "10");
	CHECK(les.back() == "+Inf");
}

TEST_CASE("replication on the target: its own counters, no sender series")
{
	std::string m = sk::statusToMetrics(load("node2-status.json"));
	const std::string data = dirLabels("pgsql", "/srv/pgsql/data", "target");
	const std::string wal = dirLabels("pgsql", "/srv/pgsql/wal", "target");
	CHECK(sample(m, "sk_replication_ops_total" + data) == line("sk_replication_ops_total" + data, "1497"));
	CHECK(sample(m, "sk_replication_bytes_total" + data) == line("sk_replication_bytes_total" + data, "1046000"));
	CHECK(sample(m, "sk_replication_applied_seq" + data) == line("sk_replication_applied_seq" + data, "1497"));
	CHECK(sample(m, "sk_replication_durable_flushes_total" + data) ==
	      line("sk_replication_durable_flushes_total" + data, "40"));
	CHECK(sample(m, "sk_replication_apply_errors_total" + wal) == line("sk_replication_apply_errors_total" + wal, "1"));
	CHECK(sample(m, "sk_replication_write_behind_dropped_bytes_total" + wal) ==
	      line("sk_replication_write_behind_dropped_bytes_total" + wal, "65536"));
	CHECK(sample(m, "sk_replication_in_sync" + wal) == line("sk_replication_in_sync" + wal, "0"));
	CHECK(sample(m, "sk_replication_connected" + data) == line("sk_replication_connected" + data, "1"));
	CHECK(sample(m, "sk_replication_lag_ops" + data) == "");
	CHECK(m.find("sk_replication_barrier_latency_seconds") == std::string::npos);
	CHECK(m.find("role=\"source\"") == std::string::npos);
	/* batch replicates nothing ("mode": "none", no dirs). */
	CHECK(m.find("sk_replication_ops_total{module=\"batch\"") == std::string::npos);
}

TEST_CASE("replication: only dirs of a running source or target, only the fields each dir has")
{
	json s = load("node1-status.json");
	json &r = s["modules"][0]["replication"];
	/* A source dir whose sender could not start has only path, in_sync, resync and dirty_log. */
	json bare = { { "path", "/srv/pgsql/\"odd\"" },
		      { "in_sync", false },
		      { "resync", r["dirs"][0]["resync"] },
		      { "dirty_log", r["dirs"][0]["dirty_log"] } };
	r["dirs"].push_back(bare);
	r["dirs"].push_back({ { "in_sync", true } }); /* no path: skipped */
	std::string m = sk::statusToMetrics(s);
	std::string odd = dirLabels("pgsql", "/srv/pgsql/\\\"odd\\\"", "source");
	CHECK(sample(m, "sk_replication_in_sync" + odd) == line("sk_replication_in_sync" + odd, "0"));
	CHECK(sample(m, "sk_replication_ops_total" + odd) == "");
	CHECK(m.find("sk_replication_barrier_latency_seconds_count" + odd) == std::string::npos);
	CHECK(samplesOf(m, "sk_replication_in_sync").size() == 3);

	/* Stopped (no dirs) or an unknown mode: no replication series at all. */
	for (const char *mode : { "stopped", "none", "mirror" }) {
		json t = load("node1-status.json");
		t["modules"][0]["replication"]["mode"] = mode;
		if (std::string(mode) == "stopped")
			t["modules"][0]["replication"]["dirs"] = json::array();
		CHECK_MESSAGE(sk::statusToMetrics(t).find("sk_replication_") == std::string::npos, "mode ", mode);
	}

	/* A histogram without its sum or count is skipped, the dir's other series stay. */
	json u = load("node1-status.json");
	u["modules"][0]["replication"]["dirs"][0]["barrier_latency"].erase("sum_s");
	std::string mu = sk::statusToMetrics(u);
	CHECK(mu.find("sk_replication_barrier_latency_seconds_bucket{module=\"pgsql\",dir=\"/srv/pgsql/data\"") ==
	      std::string::npos);
	CHECK(!sample(mu, "sk_replication_ops_total" + dirLabels("pgsql", "/srv/pgsql/data", "source")).empty());
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
	CHECK(m.find("sk_checker_") == std::string::npos);
	CHECK(sample(m, "sk_module_state{module=\"m\",state=\"STOP\"}") == "sk_module_state{module=\"m\",state=\"STOP\"} 1");
	CHECK(sk::statusToMetrics(json::array()) == "");
	CHECK(sk::statusToMetrics(json::object()) == "");
}

TEST_CASE("every family has one HELP and one TYPE line, then its samples, contiguous")
{
	for (const char *file : { "node1-status.json", "node2-status.json" }) {
		CAPTURE(file);
		std::string m = sk::statusToMetrics(load(file));
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
		CHECK(helps > 20);
	}
}

TEST_CASE("label values are escaped")
{
	CHECK(sk::escapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
	json s = { { "modules", json::array({ { { "name", "we\"ird\\name\n" }, { "type", "farm" }, { "state", "UP" } } }) } };
	std::string m = sk::statusToMetrics(s);
	CHECK(sample(m, "sk_module_state{module=\"we\\\"ird\\\\name\\n\",state=\"UP\"}") ==
	      "sk_module_state{module=\"we\\\"ird\\\\name\\n\",state=\"UP\"} 1");
}
