/* SPDX-License-Identifier: Apache-2.0 */
/*
 * statusToMetrics(): the status document as Prometheus text. Samples are grouped
 * per family first because the exposition format wants each family contiguous
 * with one HELP/TYPE header, while the document is walked module by module.
 */
#include "api/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace sk {

namespace {

using nlohmann::json;
using Labels = std::vector<std::pair<std::string, std::string>>;

/* As stateName() (mirror/state_machine.cpp) and farmStateName() (farm/farm_state.cpp)
 * spell them; libsk_http does not link libsk, so they are listed here. */
const char *const kMirrorStates[] = { "STOP", "WAIT", "ALONE", "PRIM", "SECOND" };
const char *const kFarmStates[] = { "STOP", "WAIT", "UP" };

struct Family {
	std::string help;
	std::string type;
	std::vector<std::string> samples;	/* rendered lines, without the trailing newline */
};

class Writer
{
public:
	void add(const std::string &name, const char *type, const char *help, const Labels &labels, double value,
		 const std::string &suffix = "")
	{
		Family &f = family(name, type, help);
		f.samples.push_back(name + suffix + renderLabels(labels) + " " + renderValue(value));
	}

	std::string render() const
	{
		std::string out;
		for (const std::string &name : order_) {
			const Family &f = families_.at(name);
			out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, f.help, name, f.type);
			for (const std::string &s : f.samples)
				out += s + "\n";
		}
		return out;
	}

private:
	Family &family(const std::string &name, const char *type, const char *help)
	{
		auto it = families_.find(name);
		if (it != families_.end())
			return it->second;
		order_.push_back(name);
		return families_.emplace(name, Family{ help, type, {} }).first->second;
	}

	static std::string renderLabels(const Labels &labels)
	{
		if (labels.empty())
			return "";
		std::string out = "{";
		for (size_t i = 0; i < labels.size(); i++)
			out += fmt::format("{}{}=\"{}\"", i ? "," : "", labels[i].first,
					   escapeLabelValue(labels[i].second));
		return out + "}";
	}

	static std::string renderValue(double v)
	{
		if (std::isnan(v))
			return "NaN";
		if (std::isinf(v))
			return v > 0 ? "+Inf" : "-Inf";
		/* Counters are integers in the document; keep them exact and free of exponents. */
		if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15)
			return fmt::format("{}", static_cast<int64_t>(v));
		return fmt::format("{}", v);
	}

	std::vector<std::string> order_;
	std::map<std::string, Family> families_;
};

/* The number at j[key], if there is one (booleans count as 0/1). */
bool number(const json &j, const char *key, double *out)
{
	if (!j.is_object())
		return false;
	auto it = j.find(key);
	if (it == j.end())
		return false;
	if (it->is_number()) {
		*out = it->get<double>();
		return true;
	}
	if (it->is_boolean()) {
		*out = it->get<bool>() ? 1 : 0;
		return true;
	}
	return false;
}

std::string text(const json &j, const char *key)
{
	if (!j.is_object())
		return "";
	auto it = j.find(key);
	return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

/* One number of a replicated dir (SyncReplication::status(), "replication.dirs[]"). */
struct DirField {
	const char *key;
	const char *metric;
	const char *type;
	const char *help;
	double scale;
};

/*
 * A source dir (the serving node's sender) has ops..rejected_frames; a target dir
 * (the SECOND's receiver) has ops, bytes, durable_flushes, apply_errors and
 * applied_seq; both have in_sync, connected and write_behind_dropped_bytes. Each
 * family therefore carries the role(s) whose dirs report it, never a made-up zero.
 */
const DirField kDirFields[] = {
	{ "ops", "sk_replication_ops_total", "counter",
	  "Operations submitted to the peer (source, barriers included) or applied (target).", 1 },
	{ "bytes", "sk_replication_bytes_total", "counter", "Encoded operation bytes sent (source) or received (target).",
	  1 },
	{ "in_sync", "sk_replication_in_sync", "gauge", "1 while the dir's copies are known equal (resync done).", 1 },
	{ "connected", "sk_replication_connected", "gauge", "1 while the dir's replication stream is up.", 1 },
	{ "alone", "sk_replication_alone", "gauge", "1 while the source writes without waiting for the peer.", 1 },
	{ "lag_ops", "sk_replication_lag_ops", "gauge", "Operations sent and not yet acknowledged.", 1 },
	{ "lag_bytes", "sk_replication_lag_bytes", "gauge", "Bytes sent and not yet acknowledged.", 1 },
	{ "acked_seq", "sk_replication_acked_seq", "gauge", "Last operation the peer acknowledged as applied.", 1 },
	{ "durable_seq", "sk_replication_durable_seq", "gauge", "Last operation the peer acknowledged as durable.", 1 },
	{ "applied_seq", "sk_replication_applied_seq", "gauge", "Last operation applied on this target.", 1 },
	{ "ops_while_alone", "sk_replication_ops_while_alone_total", "counter",
	  "Operations the source submitted while serving alone (left to the dirty log).", 1 },
	{ "barriers", "sk_replication_barriers_total", "counter", "Durability barriers submitted.", 1 },
	{ "barriers_released_alone", "sk_replication_barriers_released_alone_total", "counter",
	  "Durability barriers whose wait ended when the source went ALONE, not by an ack.", 1 },
	{ "peer_wait_us_avg", "sk_replication_peer_wait_avg_seconds", "gauge",
	  "Average time a durability call waited for the peer after its own local flush.", 1e-6 },
	{ "barrier_latency_us_max", "sk_replication_barrier_latency_max_seconds", "gauge",
	  "Slowest barrier wait seen (acknowledged, or ended by going ALONE).", 1e-6 },
	{ "connections", "sk_replication_connections_total", "counter", "Replication connections made.", 1 },
	{ "rejected_frames", "sk_replication_rejected_frames_total", "counter",
	  "Connections closed for an invalid frame.", 1 },
	{ "refused_ops", "sk_replication_refused_ops_total", "counter",
	  "Local changes no operation could carry to the peer (it lacks them).", 1 },
	{ "durable_flushes", "sk_replication_durable_flushes_total", "counter",
	  "Durable barriers the target flushed to disk.", 1 },
	{ "apply_errors", "sk_replication_apply_errors_total", "counter", "Operations that failed to apply.", 1 },
	{ "write_behind_dropped_bytes", "sk_replication_write_behind_dropped_bytes_total", "counter",
	  "Bytes written back and dropped from the page cache early.", 1 },
};

/*
 * "barrier_latency": {"buckets": {"0.001": 3, ...} (upper bound in seconds ->
 * cumulative count), "sum_s": 0.12, "count": 9} -> a histogram. count covers the
 * barriers slower than the last bound too, so it is the +Inf bucket.
 */
void barrierLatency(Writer &w, const json &dir, const Labels &labels)
{
	const char *name = "sk_replication_barrier_latency_seconds";
	const char *help = "Time from a durability barrier to the peer's acknowledgement.";
	auto h = dir.find("barrier_latency");
	if (h == dir.end() || !h->is_object())
		return;
	auto b = h->find("buckets");
	double sum, count;
	if (b == h->end() || !b->is_object() || !number(*h, "sum_s", &sum) || !number(*h, "count", &count))
		return;
	std::vector<std::pair<double, double>> buckets;
	for (auto it = b->begin(); it != b->end(); ++it) {
		char *end = nullptr;
		double le = std::strtod(it.key().c_str(), &end);
		if (end != it.key().c_str() && *end == '\0' && std::isfinite(le) && it->is_number())
			buckets.emplace_back(le, it->get<double>());
	}
	/* The document's keys sort as strings ("0.0001" < "5e-05"); the exposition wants bounds ascending. */
	std::sort(buckets.begin(), buckets.end());
	for (const auto &[le, c] : buckets) {
		Labels l = labels;
		l.emplace_back("le", fmt::format("{}", le));
		w.add(name, "histogram", help, l, c, "_bucket");
	}
	Labels inf = labels;
	inf.emplace_back("le", "+Inf");
	w.add(name, "histogram", help, inf, count, "_bucket");
	w.add(name, "histogram", help, labels, sum, "_sum");
	w.add(name, "histogram", help, labels, count, "_count");
}

/*
 * "replication": {"mode": "source"|"target"|"stopped"|"none", ..., "dirs": [...]}:
 * one series per replicated dir, labelled with its path and this node's role.
 */
void replication(Writer &w, const json &r, const std::string &module)
{
	std::string role = text(r, "mode");
	if (role != "source" && role != "target")
		return;
	auto dirs = r.find("dirs");
	if (dirs == r.end() || !dirs->is_array())
		return;
	for (const json &d : *dirs) {
		std::string path = text(d, "path");
		if (path.empty())
			continue;
		Labels labels{ { "module", module }, { "dir", path }, { "role", role } };
		for (const DirField &f : kDirFields) {
			double v;
			if (number(d, f.key, &v))
				w.add(f.metric, f.type, f.help, labels, v * f.scale);
		}
		barrierLatency(w, d, labels);
	}
}

/* "checkers": {"checkers": [Checker::status()...], "policy": {...}}. */
void checkers(Writer &w, const json &c, const std::string &module)
{
	auto list = c.find("checkers");
	if (list == c.end() || !list->is_array())
		return;
	for (const json &k : *list) {
		std::string name = text(k, "name");
		if (name.empty())
			continue;
		Labels labels{ { "module", module }, { "checker", name } };
		double v;
		if (number(k, "fail_count", &v))
			w.add("sk_checker_failures_total", "counter", "Failed checks.", labels, v);
		if (number(k, "consecutive_failures", &v))
			w.add("sk_checker_consecutive_failures", "gauge",
			      "Failed checks in a row (the checker fails at failures_to_declare).", labels, v);
	}
}

void module(Writer &w, const json &m)
{
	std::string name = text(m, "name");
	if (name.empty())
		return;
	Labels ml{ { "module", name } };
	std::string type = text(m, "type");
	std::string state = text(m, "state");
	if (!state.empty()) {
		std::vector<std::string> states;
		if (type == "mirror")
			states.assign(std::begin(kMirrorStates), std::end(kMirrorStates));
		else if (type == "farm")
			states.assign(std::begin(kFarmStates), std::end(kFarmStates));
		else
			states = { "STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP" };
		if (std::find(states.begin(), states.end(), state) == states.end())
			states.push_back(state);
		for (const std::string &s : states)
			w.add("sk_module_state", "gauge", "Current state of the module on this node (1 for the current one).",
			      { { "module", name }, { "state", s } }, s == state ? 1 : 0);
		w.add("sk_module_serving", "gauge",
		      "1 when this node serves the module (PRIM, ALONE or UP): what GET /health/<module> reports.", ml,
		      state == "PRIM" || state == "ALONE" || state == "UP" ? 1 : 0);
	}

	/* Mirror: "peer": {"name", "up", "last_heard_ms_ago" (once heard), "rtt_us" (-1 until measured)}. */
	auto peer = m.find("peer");
	if (peer != m.end() && peer->is_object()) {
		Labels pl{ { "module", name }, { "peer", text(*peer, "name") } };
		double v;
		if (number(*peer, "up", &v))
			w.add("sk_peer_up", "gauge", "1 while the peer's heartbeats arrive.", pl, v);
		if (number(*peer, "rtt_us", &v) && v >= 0)
			w.add("sk_heartbeat_rtt_seconds", "gauge", "Average heartbeat round-trip time to the peer.", pl,
			      v * 1e-6);
		if (number(*peer, "last_heard_ms_ago", &v))
			w.add("sk_peer_last_heard_seconds", "gauge", "Time since the peer's last heartbeat.", pl, v * 1e-3);
	}

	double v;
	/* resync_percent means something only while resyncing (0 on an ALONE node, stale on a PRIM). */
	if (text(m, "phase") == "resyncing" && number(m, "resync_percent", &v))
		w.add("sk_resync_progress_ratio", "gauge", "Resynchronisation progress of this node's copy (0 to 1).", ml,
		      v / 100.0);
	if (number(m, "script_failures", &v))
		w.add("sk_script_failures_total", "counter", "Hook scripts that failed or timed out.", ml, v);
	/* null, or the reason (a string) while divergent data is detected. */
	auto sb = m.find("split_brain");
	if (sb != m.end())
		w.add("sk_split_brain", "gauge", "1 while divergent data (split brain) is detected.", ml,
		      sb->is_null() || (sb->is_boolean() && !sb->get<bool>()) ? 0 : 1);

	auto c = m.find("checkers");
	if (c != m.end() && c->is_object())
		checkers(w, *c, name);

	auto r = m.find("replication");
	if (r != m.end() && r->is_object())
		replication(w, *r, name);

	/* Farm: "xdp": {"pass_owned": n, "drop_not_owned": n, ...} (one counter per verdict), or null. */
	auto xdp = m.find("xdp");
	if (xdp != m.end() && xdp->is_object()) {
		for (auto it = xdp->begin(); it != xdp->end(); ++it)
			if (it->is_number())
				w.add("sk_farm_xdp_packets_total", "counter", "Packets seen by the farm XDP filter, by verdict.",
				      { { "module", name }, { "verdict", it.key() } }, it->get<double>());
	}
	if (number(m, "buckets_installed_here", &v))
		w.add("sk_farm_buckets_owned", "gauge", "Hash buckets this node's XDP filter currently answers for.", ml, v);
	if (number(m, "buckets_draining", &v))
		w.add("sk_farm_buckets_draining", "gauge",
		      "Hash buckets that moved between live nodes whose connections still go to their old node.", ml, v);
}

} /* namespace */

std::string escapeLabelValue(std::string_view value)
{
	std::string out;
	out.reserve(value.size());
	for (char c : value) {
		if (c == '\\')
			out += "\\\\";
		else if (c == '"')
			out += "\\\"";
		else if (c == '\n')
			out += "\\n";
		else
			out += c;
	}
	return out;
}

std::string statusToMetrics(const nlohmann::json &status)
{
	Writer w;
	if (!status.is_object())
		return "";
	std::string version = text(status, "version");
	if (!version.empty()) {
		auto node = status.find("node");
		w.add("sk_build_info", "gauge", "SK version, cluster and node; always 1.",
		      { { "version", version },
			{ "cluster", text(status, "cluster") },
			{ "node", node != status.end() ? text(*node, "name") : "" } },
		      1);
	}
	double v;
	if (number(status, "started_at", &v))
		w.add("sk_start_time_seconds", "gauge", "When skd started, in seconds since the epoch.", {}, v);
	auto config = status.find("config");
	if (config != status.end() && number(*config, "reloads", &v))
		w.add("sk_config_reloads_total", "counter", "Successful configuration reloads.", {}, v);

	auto hb = status.find("heartbeat");
	if (hb != status.end() && hb->is_object()) {
		if (number(*hb, "sent", &v))
			w.add("sk_heartbeat_sent_total", "counter", "Heartbeats sent.", {}, v);
		if (number(*hb, "received", &v))
			w.add("sk_heartbeat_received_total", "counter", "Authenticated heartbeats received.", {}, v);
		if (number(*hb, "dropped", &v))
			w.add("sk_heartbeat_dropped_total", "counter",
			      "Heartbeats dropped (unauthenticated, replayed or malformed).", {}, v);
		auto nets = hb->find("networks");
		if (nets != hb->end() && nets->is_array())
			for (const json &n : *nets)
				if (number(n, "up", &v))
					w.add("sk_heartbeat_network_up", "gauge", "1 while the heartbeat network is up.",
					      { { "network", text(n, "name") } }, v);
	}

	auto modules = status.find("modules");
	if (modules != status.end() && modules->is_array())
		for (const json &m : *modules)
			module(w, m);
	return w.render();
}

} /* namespace sk */
