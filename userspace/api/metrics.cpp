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

struct ReplicationField {
	const char *key;
	const char *metric;
	const char *type;
	const char *help;
	double scale;
};

/* Field names follow the replication sender/receiver counters, in snake_case. */
const ReplicationField kReplicationFields[] = {
	{ "ops", "sk_replication_ops_total", "counter", "Operations replicated.", 1 },
	{ "bytes", "sk_replication_bytes_total", "counter", "Encoded operation bytes replicated.", 1 },
	{ "frames", "sk_replication_frames_total", "counter", "Replication frames.", 1 },
	{ "acks", "sk_replication_acks_total", "counter", "Acknowledgements.", 1 },
	{ "barriers", "sk_replication_barriers_total", "counter", "Durability barriers.", 1 },
	{ "lag_ops", "sk_replication_lag_ops", "gauge", "Operations sent and not yet acknowledged.", 1 },
	{ "lag_bytes", "sk_replication_lag_bytes", "gauge", "Bytes sent and not yet acknowledged.", 1 },
	{ "lag_ms", "sk_replication_lag_seconds", "gauge", "Age of the oldest unacknowledged operation.", 1e-3 },
	{ "blocked_submits", "sk_replication_blocked_submits_total", "counter",
	  "Submissions that waited for queue space.", 1 },
	{ "rejected_frames", "sk_replication_rejected_frames_total", "counter",
	  "Connections closed for an invalid frame.", 1 },
	{ "apply_errors", "sk_replication_apply_errors_total", "counter", "Operations that failed to apply.", 1 },
	{ "connections", "sk_replication_connections_total", "counter", "Replication connections made.", 1 },
	{ "barrier_latency_ns_max", "sk_replication_barrier_latency_max_seconds", "gauge",
	  "Slowest barrier acknowledgement seen.", 1e-9 },
};

/*
 * "barrier_latency": {"buckets": [{"le": 0.001, "count": 3}, ...] (cumulative) or
 * {"0.001": 3, ...}, "sum_s": 0.12, "count": 9} -> a histogram; without it, the
 * sender's barrier_latency_ns_sum + barriers_acked -> a summary (sum and count).
 */
void barrierLatency(Writer &w, const json &r, const Labels &labels)
{
	const char *name = "sk_replication_barrier_latency_seconds";
	const char *help = "Time from a durability barrier to the peer's acknowledgement.";
	auto h = r.find("barrier_latency");
	if (h != r.end() && h->is_object() && h->contains("buckets")) {
		std::vector<std::pair<double, double>> buckets;
		const json &b = (*h)["buckets"];
		if (b.is_array()) {
			for (const json &e : b) {
				double le, count;
				if (number(e, "le", &le) && number(e, "count", &count))
					buckets.emplace_back(le, count);
			}
		} else if (b.is_object()) {
			for (auto it = b.begin(); it != b.end(); ++it) {
				char *end = nullptr;
				double le = std::strtod(it.key().c_str(), &end);
				if (end && *end == '\0' && it->is_number())
					buckets.emplace_back(le, it->get<double>());
			}
		}
		double sum = 0, count = 0;
		bool hasCount = number(*h, "count", &count);
		if (!number(*h, "sum_s", &sum))
			return;
		std::sort(buckets.begin(), buckets.end());
		if (!hasCount)
			count = buckets.empty() ? 0 : buckets.back().second;
		for (const auto &[le, c] : buckets) {
			if (std::isinf(le))
				continue;
			Labels l = labels;
			l.emplace_back("le", fmt::format("{}", le));
			w.add(name, "histogram", help, l, c, "_bucket");
		}
		Labels inf = labels;
		inf.emplace_back("le", "+Inf");
		w.add(name, "histogram", help, inf, count, "_bucket");
		w.add(name, "histogram", help, labels, sum, "_sum");
		w.add(name, "histogram", help, labels, count, "_count");
		return;
	}
	double ns, acked;
	if (number(r, "barrier_latency_ns_sum", &ns) && number(r, "barriers_acked", &acked)) {
		w.add(name, "summary", help, labels, ns * 1e-9, "_sum");
		w.add(name, "summary", help, labels, acked, "_count");
	}
}

void replicationCounters(Writer &w, const json &r, const std::string &module, const std::string &role)
{
	Labels labels{ { "module", module }, { "role", role } };
	for (const ReplicationField &f : kReplicationFields) {
		double v;
		if (number(r, f.key, &v))
			w.add(f.metric, f.type, f.help, labels, v * f.scale);
	}
	barrierLatency(w, r, labels);
}

void replication(Writer &w, const json &r, const std::string &module)
{
	if (!r.is_object())
		return;
	std::string role = text(r, "role");
	replicationCounters(w, r, module, role.empty() ? "local" : role);
	for (const char *sub : { "sender", "receiver" }) {
		auto it = r.find(sub);
		if (it != r.end() && it->is_object())
			replicationCounters(w, *it, module, sub);
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

	auto peer = m.find("peer");
	if (peer != m.end() && peer->is_object()) {
		Labels pl{ { "module", name }, { "peer", text(*peer, "name") } };
		double v;
		if (number(*peer, "up", &v))
			w.add("sk_peer_up", "gauge", "1 while the peer's heartbeats arrive.", pl, v);
		if (number(*peer, "rtt_us", &v))
			w.add("sk_heartbeat_rtt_seconds", "gauge", "Average heartbeat round-trip time to the peer.", pl,
			      v * 1e-6);
		if (number(*peer, "last_heard_ms_ago", &v))
			w.add("sk_peer_last_heard_seconds", "gauge", "Time since the peer's last heartbeat.", pl, v * 1e-3);
	}

	double v;
	if (number(m, "resync_percent", &v))
		w.add("sk_resync_progress_ratio", "gauge", "Resynchronisation progress of this node's copy (0 to 1).", ml,
		      v / 100.0);
	if (number(m, "script_failures", &v))
		w.add("sk_script_failures_total", "counter", "Hook scripts that failed or timed out.", ml, v);
	auto sb = m.find("split_brain");
	if (sb != m.end())
		w.add("sk_split_brain", "gauge", "1 while divergent data (split brain) is detected.", ml,
		      sb->is_null() || (sb->is_boolean() && !sb->get<bool>()) ? 0 : 1);

	auto checkers = m.find("checkers");
	if (checkers != m.end() && checkers->is_array()) {
		for (const json &c : *checkers) {
			double f;
			if (number(c, "failures", &f) || number(c, "failures_total", &f))
				w.add("sk_checker_failures_total", "counter", "Failed checks.",
				      { { "module", name }, { "checker", text(c, "name") } }, f);
		}
	}

	auto r = m.find("replication");
	if (r != m.end())
		replication(w, *r, name);

	/* Farm: "xdp": {"packets": {"pass": n, "drop": n, ...}} (or "verdicts"). */
	auto xdp = m.find("xdp");
	if (xdp != m.end() && xdp->is_object()) {
		for (const char *key : { "packets", "verdicts" }) {
			auto p = xdp->find(key);
			if (p == xdp->end() || !p->is_object())
				continue;
			for (auto it = p->begin(); it != p->end(); ++it)
				if (it->is_number())
					w.add("sk_farm_xdp_packets_total", "counter", "Packets seen by the farm XDP filter, by verdict.",
					      { { "module", name }, { "verdict", it.key() } }, it->get<double>());
			break;
		}
	}
	if (number(m, "buckets_owned", &v))
		w.add("sk_farm_buckets_owned", "gauge", "Hash buckets this node owns.", ml, v);
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
