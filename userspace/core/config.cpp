/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loads and validates cluster.json and module.json. One Validator per file collects every
 * problem with its JSON pointer; nlohmann exceptions are caught here and never leave libsk.
 */
#include "core/config.h"

#include "core/log.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <arpa/inet.h>
#include <dirent.h>
#include <sys/stat.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace sk {

namespace {

using json = nlohmann::json;

const LogCategory kLogConfig("config");

constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr size_t kMaxNodes = 32;
constexpr size_t kMaxNetworks = 8;
constexpr off_t kMinKeyBytes = 32;

template<typename E>
struct Choice {
	const char *name;
	E value;
};

const Choice<ModuleType> kModuleTypes[] = { { "mirror", ModuleType::Mirror }, { "farm", ModuleType::Farm } };
const Choice<ReplicationMode> kReplicationModes[] = { { "sync", ReplicationMode::Sync },
						      { "async", ReplicationMode::Async } };
const Choice<AckLevel> kAckLevels[] = { { "applied", AckLevel::Applied }, { "durable", AckLevel::Durable } };
const Choice<CheckerType> kCheckerTypes[] = {
	{ "process", CheckerType::Process }, { "tcp", CheckerType::Tcp },
	{ "ping", CheckerType::Ping },	     { "interface", CheckerType::Interface },
	{ "custom", CheckerType::Custom },   { "module", CheckerType::Module },
};
const Choice<CheckerWhen> kCheckerWhens[] = { { "prim", CheckerWhen::Prim },
					      { "both", CheckerWhen::Both },
					      { "always", CheckerWhen::Always } };
const Choice<CheckerAction> kCheckerActions[] = { { "restart", CheckerAction::Restart },
						  { "stopstart", CheckerAction::StopStart },
						  { "wait", CheckerAction::Wait },
						  { "none", CheckerAction::None } };
const Choice<SplitBrainPolicy> kSplitBrain[] = { { "manual", SplitBrainPolicy::Manual },
						 { "keep_prim", SplitBrainPolicy::KeepPrim },
						 { "defaultprim", SplitBrainPolicy::DefaultPrim } };
const Choice<WitnessType> kWitnessTypes[] = { { "icmp", WitnessType::Icmp }, { "tcp", WitnessType::Tcp } };
const Choice<FarmHash> kFarmHashes[] = { { "ip", FarmHash::Ip }, { "ip_port", FarmHash::IpPort } };
const Choice<FarmXdpMode> kFarmXdpModes[] = { { "auto", FarmXdpMode::Auto },
					      { "native", FarmXdpMode::Native },
					      { "generic", FarmXdpMode::Generic } };

const std::vector<std::string> kModuleStates = { "STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP" };

template<typename E, size_t N>
const char *choiceName(const Choice<E> (&table)[N], E v)
{
	for (const auto &c : table)
		if (c.value == v)
			return c.name;
	return "?";
}

size_t editDistance(std::string_view a, std::string_view b)
{
	/* Optimal string alignment distance: rows i-2, i-1 and i. */
	std::vector<size_t> prev2(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
	for (size_t j = 0; j <= b.size(); j++)
		prev[j] = j;
	for (size_t i = 1; i <= a.size(); i++) {
		cur[0] = i;
		for (size_t j = 1; j <= b.size(); j++) {
			size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
			cur[j] = std::min({ prev[j] + 1, cur[j - 1] + 1, sub });
			/* A swapped pair of letters is one typo, not two. */
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
				cur[j] = std::min(cur[j], prev2[j - 2] + 1);
		}
		prev2 = prev;
		std::swap(prev, cur);
	}
	return prev[b.size()];
}

/* Closest candidate when it is plausibly a typo, else "". */
std::string closest(std::string_view word, const std::vector<std::string> &candidates)
{
	std::string best;
	size_t bestDist = SIZE_MAX;
	for (const auto &c : candidates) {
		size_t d = editDistance(word, c);
		if (d < bestDist) {
			bestDist = d;
			best = c;
		}
	}
	size_t limit = std::max<size_t>(2, word.size() / 3);
	if (best.empty() || bestDist > limit || bestDist >= word.size())
		return {};
	return best;
}


std::string joinQuoted(const std::vector<std::string> &v, const char *sep = ", ")
{
	std::string out;
	for (const auto &s : v) {
		if (!out.empty())
			out += sep;
		out += "\"" + s + "\"";
	}
	return out;
}

/* "string \"abc\"", "number 1.5", "array", ...: what the user wrote, for messages. */
std::string describe(const json &j)
{
	switch (j.type()) {
	case json::value_t::string: {
		std::string s = j.get<std::string>();
		if (s.size() > 64)
			s = s.substr(0, 61) + "...";
		return "string " + json(s).dump();
	}
	case json::value_t::number_integer:
	case json::value_t::number_unsigned:
	case json::value_t::number_float:
		return "number " + j.dump();
	case json::value_t::boolean:
		return std::string("boolean ") + (j.get<bool>() ? "true" : "false");
	case json::value_t::null:
		return "null";
	case json::value_t::array:
		return "array";
	case json::value_t::object:
		return "object";
	default:
		return "invalid value";
	}
}

std::string escapePointer(const std::string &key)
{
	std::string out;
	for (char c : key) {
		if (c == '~')
			out += "~0";
		else if (c == '/')
			out += "~1";
		else
			out += c;
	}
	return out;
}

bool validName(const std::string &s)
{
	if (s.empty() || s.size() > 32)
		return false;
	return std::all_of(s.begin(), s.end(), [](char c) {
		return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
	});
}

bool validInterfaceName(const std::string &s)
{
	if (s.empty() || s.size() > 15 || s == "." || s == "..")
		return false;
	return std::none_of(s.begin(), s.end(), [](char c) {
		return c == '/' || c == ':' || c <= ' ' || c == 0x7f;
	});
}

/* Canonical text of an IPv4/IPv6 address, or "" when it does not parse. */
std::string canonicalIp(const std::string &s, int *family)
{
	unsigned char buf[16];
	char out[INET6_ADDRSTRLEN];
	for (int af : { AF_INET, AF_INET6 }) {
		if (inet_pton(af, s.c_str(), buf) == 1 && inet_ntop(af, buf, out, sizeof(out))) {
			if (family)
				*family = af;
			return out;
		}
	}
	return {};
}

/* Absolute, no empty/"."/".." components, no trailing slash. "/" itself counts as normalised. */
bool isNormalisedAbsolute(const std::string &p)
{
	if (p.empty() || p[0] != '/')
		return false;
	if (p == "/")
		return true;
	if (p.back() == '/')
		return false;
	size_t i = 1;
	while (i <= p.size()) {
		size_t j = p.find('/', i);
		if (j == std::string::npos)
			j = p.size();
		std::string_view comp(p.data() + i, j - i);
		if (comp.empty() || comp == "." || comp == "..")
			return false;
		i = j + 1;
	}
	return true;
}

std::string normalisePath(const std::string &p)
{
	std::vector<std::string> parts;
	std::stringstream ss(p);
	std::string comp;
	while (std::getline(ss, comp, '/')) {
		if (comp.empty() || comp == ".")
			continue;
		if (comp == "..") {
			if (!parts.empty())
				parts.pop_back();
			continue;
		}
		parts.push_back(comp);
	}
	std::string out;
	for (const auto &c : parts)
		out += "/" + c;
	return out.empty() ? "/" : out;
}

/* a == b, or one contains the other. */
bool pathsOverlap(const std::string &a, const std::string &b)
{
	auto within = [](const std::string &inner, const std::string &outer) {
		return inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
		       inner[outer.size()] == '/';
	};
	return a == b || within(a, b) || within(b, a);
}

bool isPowerOfTwo(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Collects the problems of one file. */
class Validator
{
public:
	Validator(std::string file, std::vector<ConfigError> *errors) : file_(std::move(file)), errors_(errors) {}

	void error(const std::string &path, std::string message)
	{
		errors_->push_back(ConfigError{ file_, path, std::move(message) });
		count_++;
	}
	size_t count() const { return count_; }
	const std::string &file() const { return file_; }

private:
	std::string file_;
	std::vector<ConfigError> *errors_;
	size_t count_ = 0;
};

/*
 * Reads the members of one JSON object. Unknown keys are reported at construction, so
 * later getters only see known ones; a non-object is reported once and reads as empty.
 */
class ObjectReader
{
public:
	/* hints: for keys that are known elsewhere, the explanation to give instead of a guess. */
	ObjectReader(Validator &v, const json &j, std::string path, std::vector<std::string> known,
		     const char *what, const std::map<std::string, std::string> &hints = {})
		: v_(v), path_(std::move(path)), known_(std::move(known))
	{
		if (!j.is_object()) {
			v_.error(path_.empty() ? "" : path_,
				 fmt::format("found {}, expected {}", describe(j), what));
			return;
		}
		obj_ = &j;
		for (const auto &[key, value] : j.items()) {
			(void)value;
			if (std::find(known_.begin(), known_.end(), key) != known_.end())
				continue;
			if (auto h = hints.find(key); h != hints.end())
				v_.error(at(key), fmt::format("unknown key \"{}\" {}", key, h->second));
			else
				v_.error(at(key), fmt::format("unknown key \"{}\"{}{}", key, didYouMean(key, known_),
							      known_.empty() ? std::string()
									     : "; known keys: " + joinQuoted(known_)));
		}
	}

	bool valid() const { return obj_ != nullptr; }
	std::string at(const std::string &key) const { return path_ + "/" + escapePointer(key); }
	const std::string &path() const { return path_; }
	Validator &validator() { return v_; }

	const json *get(const std::string &key, bool required = false, const char *expected = "")
	{
		if (!obj_)
			return nullptr;
		auto it = obj_->find(key);
		if (it == obj_->end()) {
			if (required)
				v_.error(at(key), fmt::format("missing required key \"{}\", expected {}", key,
							      expected));
			return nullptr;
		}
		return &*it;
	}

	/* Each getter leaves *out untouched (the default) when the key is absent or wrong. */
	bool str(const std::string &key, std::string *out, bool required = false,
		 const char *expected = "a string")
	{
		const json *j = get(key, required, expected);
		if (!j)
			return false;
		if (!j->is_string() || j->get_ref<const std::string &>().empty()) {
			v_.error(at(key), fmt::format("found {}, expected {}", describe(*j),
						      j->is_string() ? "a non-empty string" : expected));
			return false;
		}
		*out = j->get<std::string>();
		return true;
	}

	template<typename T>
	bool integer(const std::string &key, T *out, uint64_t min, uint64_t max, bool required = false,
		     const char *unit = "")
	{
		const json *j = get(key, required, rangeText(min, max, unit).c_str());
		if (!j)
			return false;
		/* Non-negative integers parse as number_unsigned; negatives and floats are out. */
		if (!j->is_number_unsigned()) {
			v_.error(at(key), fmt::format("found {}, expected {}", describe(*j),
						      rangeText(min, max, unit)));
			return false;
		}
		uint64_t value = j->get<uint64_t>();
		if (value < min || value > max) {
			v_.error(at(key), fmt::format("found {}, expected {}", describe(*j),
						      rangeText(min, max, unit)));
			return false;
		}
		*out = static_cast<T>(value);
		return true;
	}

	bool boolean(const std::string &key, bool *out)
	{
		const json *j = get(key);
		if (!j)
			return false;
		if (!j->is_boolean()) {
			v_.error(at(key), fmt::format("found {}, expected true or false", describe(*j)));
			return false;
		}
		*out = j->get<bool>();
		return true;
	}

	template<typename E, size_t N>
	bool choice(const std::string &key, E *out, const Choice<E> (&table)[N], bool required = false)
	{
		std::vector<std::string> names;
		for (const auto &c : table)
			names.push_back(c.name);
		std::string expected = "one of " + joinQuoted(names);
		const json *j = get(key, required, expected.c_str());
		if (!j)
			return false;
		if (j->is_string()) {
			const auto &s = j->get_ref<const std::string &>();
			for (const auto &c : table) {
				if (s == c.name) {
					*out = c.value;
					return true;
				}
			}
			v_.error(at(key), fmt::format("found {}, expected {}{}", describe(*j), expected,
						      didYouMean(s, names)));
			return false;
		}
		v_.error(at(key), fmt::format("found {}, expected {}", describe(*j), expected));
		return false;
	}

	/* Array of non-empty strings; reports duplicates. */
	bool strList(const std::string &key, std::vector<std::string> *out, bool required = false,
		     size_t minCount = 0, size_t maxCount = SIZE_MAX)
	{
		const json *j = get(key, required, "an array of strings");
		if (!j)
			return false;
		if (!j->is_array()) {
			v_.error(at(key), fmt::format("found {}, expected an array of strings", describe(*j)));
			return false;
		}
		if (j->size() < minCount || j->size() > maxCount) {
			v_.error(at(key), fmt::format("found {} entries, expected {}", j->size(),
						      countText(minCount, maxCount)));
			return false;
		}
		bool ok = true;
		std::vector<std::string> result;
		for (size_t i = 0; i < j->size(); i++) {
			const json &e = (*j)[i];
			std::string p = at(key) + "/" + std::to_string(i);
			if (!e.is_string() || e.get_ref<const std::string &>().empty()) {
				v_.error(p, fmt::format("found {}, expected a non-empty string", describe(e)));
				ok = false;
				continue;
			}
			std::string s = e.get<std::string>();
			if (std::find(result.begin(), result.end(), s) != result.end()) {
				v_.error(p, fmt::format("found duplicate \"{}\", expected each entry once", s));
				ok = false;
				continue;
			}
			result.push_back(s);
		}
		*out = std::move(result);
		return ok;
	}

	/* Array of anything: returns it (or null with an error when not an array). */
	const json *array(const std::string &key, bool required, const char *expected, size_t minCount = 0,
			  size_t maxCount = SIZE_MAX)
	{
		const json *j = get(key, required, expected);
		if (!j)
			return nullptr;
		if (!j->is_array()) {
			v_.error(at(key), fmt::format("found {}, expected {}", describe(*j), expected));
			return nullptr;
		}
		if (j->size() < minCount || j->size() > maxCount) {
			v_.error(at(key), fmt::format("found {} entries, expected {}", j->size(),
						      countText(minCount, maxCount)));
			return nullptr;
		}
		return j;
	}

	static std::string rangeText(uint64_t min, uint64_t max, const char *unit)
	{
		return fmt::format("an integer {}..{}{}", min, max, unit);
	}
	static std::string countText(size_t min, size_t max)
	{
		if (max == SIZE_MAX)
			return fmt::format("at least {}", min);
		if (min == max)
			return fmt::format("exactly {}", min);
		return fmt::format("{}..{}", min, max);
	}

private:
	Validator &v_;
	std::string path_;
	std::vector<std::string> known_;
	const json *obj_ = nullptr;
};

/* Parses text into *doc; reports syntax errors with line and column. */
bool parseJson(std::string_view text, Validator &v, json *doc, std::vector<ConfigError> *errors,
	       const std::string &file)
{
	try {
		*doc = json::parse(text.begin(), text.end(), nullptr, true, /*ignore_comments*/ true);
		return true;
	} catch (const json::parse_error &e) {
		/* e.byte is 1-based: the character at which parsing failed. */
		size_t upto = std::min<size_t>(e.byte ? e.byte - 1 : 0, text.size());
		int line = 1, col = 1;
		for (size_t i = 0; i < upto; i++) {
			if (text[i] == '\n') {
				line++;
				col = 1;
			} else {
				col++;
			}
		}
		std::string what = e.what();
		/* Drop nlohmann's "[json.exception.parse_error.101] parse error at line x, column y: ". */
		size_t colon = what.find(": ");
		if (colon != std::string::npos)
			what = what.substr(colon + 2);
		errors->push_back(ConfigError{ file, "",
					       fmt::format("JSON syntax error at line {}, column {}: {}", line,
							   col, what),
					       line, col });
		(void)v;
		return false;
	} catch (const json::exception &e) {
		errors->push_back(ConfigError{ file, "", std::string("cannot parse: ") + e.what() });
		return false;
	}
}

Result<std::string> readFile(const std::string &file)
{
	std::ifstream in(file, std::ios::binary);
	if (!in) {
		int err = errno ? errno : ENOENT;
		return makeError(-err, errnoMessage("cannot read " + file, -err));
	}
	std::string text;
	char buf[65536];
	while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
		text.append(buf, static_cast<size_t>(in.gcount()));
		if (text.size() > kMaxConfigBytes)
			return makeError(-EFBIG, fmt::format("{}: larger than {} bytes, not a config file",
							     file, kMaxConfigBytes));
	}
	if (in.bad())
		return makeError(-EIO, errnoMessage("cannot read " + file, -EIO));
	return text;
}

template<typename T>
Result<T> finish(T value, size_t before, std::vector<ConfigError> *errors, const std::string &file)
{
	size_t n = errors->size() - before;
	if (n == 0)
		return value;
	return makeError(-EINVAL, fmt::format("{} ({} problem{} in {})", formatConfigError((*errors)[before]),
					      n, n == 1 ? "" : "s", file));
}

void checkAbsolutePath(ObjectReader &r, const std::string &key, std::string *out)
{
	std::string s;
	if (!r.str(key, &s, false, "an absolute path"))
		return;
	if (!isNormalisedAbsolute(s) || s == "/") {
		std::string hint = s.empty() || s[0] != '/' ? "an absolute path"
				   : s == "/"			? "a directory other than \"/\""
								: "a normalised absolute path like " +
							  json(normalisePath(s)).dump();
		r.validator().error(r.at(key), fmt::format("found {}, expected {}", json(s).dump(), hint));
		return;
	}
	*out = s;
}

/* ---- cluster.json ---- */

void checkKeyFile(Validator &v, const std::string &path, const std::string &file)
{
	struct stat st;
	if (stat(file.c_str(), &st) < 0) {
		v.error(path, fmt::format("key file \"{}\": {}, expected an existing file of at least {} "
					  "random bytes with mode 0600",
					  file, strerror(errno), kMinKeyBytes));
		return;
	}
	if (S_ISDIR(st.st_mode)) {
		v.error(path, fmt::format("key file \"{}\" is a directory, expected a regular file", file));
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		v.error(path, fmt::format("key file \"{}\" is not a regular file, expected a regular file", file));
		return;
	}
	if (st.st_mode & 077)
		v.error(path, fmt::format("key file \"{}\" has mode {:04o}, expected 0600 (no group/other "
					  "bits): run chmod 600 {}",
					  file, st.st_mode & 07777, file));
	if (st.st_size < kMinKeyBytes)
		v.error(path, fmt::format("key file \"{}\" has {} bytes, expected at least {}", file,
					  st.st_size, kMinKeyBytes));
}

ClusterConfig buildCluster(const json &doc, Validator &v)
{
	ClusterConfig c;
	c.file = v.file();
	ObjectReader r(v, doc, "", { "$schema", "cluster", "key_file", "networks", "nodes", "ports", "http", "paths" },
		       "an object (cluster.json)");
	if (!r.valid())
		return c;

	if (r.str("cluster", &c.name, true, "a cluster name matching [a-z0-9_-]{1,32}") && !validName(c.name))
		v.error("/cluster", fmt::format("found {}, expected a name matching [a-z0-9_-]{{1,32}}",
						json(c.name).dump()));

	std::string keyFile;
	if (r.str("key_file", &keyFile, true, "an absolute path to the cluster key")) {
		if (keyFile[0] != '/')
			v.error("/key_file", fmt::format("found {}, expected an absolute path", json(keyFile).dump()));
		else
			checkKeyFile(v, "/key_file", keyFile);
		c.keyFile = keyFile;
	}

	bool networksOk = r.strList("networks", &c.networks, true, 1, kMaxNetworks);
	if (networksOk) {
		for (size_t i = 0; i < c.networks.size(); i++)
			if (!validName(c.networks[i]))
				v.error("/networks/" + std::to_string(i),
					fmt::format("found {}, expected a name matching [a-z0-9_-]{{1,32}}",
						    json(c.networks[i]).dump()));
	}

	std::map<std::string, std::string> addressOwner;	/* canonical address -> pointer of first use */
	if (const json *nodes = r.array("nodes", true, "an array of 1..32 node objects", 1, kMaxNodes)) {
		std::set<std::string> names;
		std::map<uint32_t, size_t> ids;
		for (size_t i = 0; i < nodes->size(); i++) {
			std::string p = "/nodes/" + std::to_string(i);
			ObjectReader nr(v, (*nodes)[i], p, { "name", "id", "addresses" }, "a node object");
			if (!nr.valid())
				continue;
			NodeConfig n;
			if (nr.str("name", &n.name, true, "a node name")) {
				if (!validName(n.name))
					v.error(p + "/name", fmt::format("found {}, expected a name matching "
									 "[a-z0-9_-]{{1,32}}",
									 json(n.name).dump()));
				else if (!names.insert(n.name).second)
					v.error(p + "/name", fmt::format("found duplicate node name \"{}\", expected "
									 "unique node names",
									 n.name));
			}
			if (nr.integer("id", &n.id, 1, 255, true)) {
				auto [it, fresh] = ids.emplace(n.id, i);
				if (!fresh)
					v.error(p + "/id", fmt::format("found duplicate id {} (also /nodes/{}/id), "
								       "expected unique ids",
								       n.id, it->second));
			}
			const json *addrs = nr.get("addresses", true, "an object {network: address}");
			/* Without a valid network list, every address key would look unknown. */
			if (addrs && !networksOk && !addrs->is_object())
				v.error(p + "/addresses", fmt::format("found {}, expected an object {{network: "
								      "address}}",
								      describe(*addrs)));
			if (addrs && networksOk) {
				ObjectReader ar(v, *addrs, p + "/addresses", c.networks,
						"an object {network: address}");
				for (const auto &net : c.networks) {
					std::string a;
					if (!ar.str(net, &a, ar.valid(), "an IPv4 or IPv6 address"))
						continue;
					int family = 0;
					std::string canon = canonicalIp(a, &family);
					if (canon.empty()) {
						v.error(ar.at(net), fmt::format("found {}, expected an IPv4 or IPv6 "
										"address",
										json(a).dump()));
						continue;
					}
					auto [it, fresh] = addressOwner.emplace(canon, ar.at(net));
					if (!fresh)
						v.error(ar.at(net), fmt::format("found duplicate address {} (also {}), "
										"expected unique addresses",
										canon, it->second));
					n.addresses[net] = canon;
				}
			}
			c.nodes.push_back(std::move(n));
		}
	}

	if (const json *ports = r.get("ports")) {
		ObjectReader pr(v, *ports, "/ports", { "heartbeat", "replication", "http" }, "an object of ports");
		pr.integer("heartbeat", &c.ports.heartbeat, 1, 65535);
		pr.integer("replication", &c.ports.replication, 1, 65535);
		pr.integer("http", &c.ports.http, 1, 65535);
		if (c.ports.heartbeat == c.ports.replication)
			v.error("/ports/replication", fmt::format("found {} (same as /ports/heartbeat), expected "
								  "distinct ports",
								  c.ports.replication));
		if (c.ports.http == c.ports.heartbeat || c.ports.http == c.ports.replication)
			v.error("/ports/http", fmt::format("found {} (already used by another SK port), expected "
							   "distinct ports",
							   c.ports.http));
	}

	if (const json *http = r.get("http")) {
		ObjectReader hr(v, *http, "/http", { "listen", "tls_cert", "tls_key", "token_file" },
				"an object (HTTP API settings)");
		c.http.enabled = hr.valid();
		std::string listen;
		if (hr.str("listen", &listen, false, "an IP address or \"self\"")) {
			std::string canon = listen == kHttpListenSelf ? listen : canonicalIp(listen, nullptr);
			if (canon.empty())
				v.error("/http/listen", fmt::format("found {}, expected an IPv4 or IPv6 address, or "
								    "\"self\" (each node's own cluster address)",
								    json(listen).dump()));
			else
				c.http.listen = canon;
		}
		checkAbsolutePath(hr, "tls_cert", &c.http.tlsCert);
		checkAbsolutePath(hr, "tls_key", &c.http.tlsKey);
		checkAbsolutePath(hr, "token_file", &c.http.tokenFile);
		bool cert = hr.get("tls_cert") != nullptr, key = hr.get("tls_key") != nullptr;
		if (cert != key)
			v.error(cert ? "/http/tls_key" : "/http/tls_cert",
				"missing: tls_cert and tls_key go together, expected both or neither");
	}

	if (const json *paths = r.get("paths")) {
		ObjectReader pr(v, *paths, "/paths",
				{ "modules_dir", "state_dir", "run_dir", "bpf_pin_root", "log_dir" },
				"an object of paths");
		checkAbsolutePath(pr, "modules_dir", &c.paths.modulesDir);
		checkAbsolutePath(pr, "state_dir", &c.paths.stateDir);
		checkAbsolutePath(pr, "run_dir", &c.paths.runDir);
		checkAbsolutePath(pr, "bpf_pin_root", &c.paths.bpfPinRoot);
		checkAbsolutePath(pr, "log_dir", &c.paths.logDir);
	}
	return c;
}

/* ---- module.json ---- */

void readHeartbeat(ObjectReader &r, ModuleConfig &m, const ClusterConfig *cluster)
{
	Validator &v = r.validator();
	if (const json *hb = r.get("heartbeat")) {
		ObjectReader hr(v, *hb, "/heartbeat", { "networks", "interval_ms", "timeout_ms" },
				"an object (heartbeat settings)");
		if (hr.strList("networks", &m.heartbeat.networks, false, 1) && cluster) {
			for (size_t i = 0; i < m.heartbeat.networks.size(); i++) {
				const auto &n = m.heartbeat.networks[i];
				if (!cluster->hasNetwork(n))
					v.error("/heartbeat/networks/" + std::to_string(i),
						fmt::format("found unknown network \"{}\"{}, expected one of the "
							    "cluster networks: {}",
							    n, didYouMean(n, cluster->networks),
							    joinQuoted(cluster->networks)));
			}
		}
		bool iv = hr.integer("interval_ms", &m.heartbeat.intervalMs, 100, 10000, false, " ms");
		bool to = hr.integer("timeout_ms", &m.heartbeat.timeoutMs, 300, 60000, false, " ms");
		if ((iv || to) && m.heartbeat.timeoutMs < 3 * m.heartbeat.intervalMs)
			v.error("/heartbeat/timeout_ms",
				fmt::format("found {} ms, expected at least 3 x interval_ms = {} ms (a peer is "
					    "lost only after several missed heartbeats)",
					    m.heartbeat.timeoutMs, 3 * m.heartbeat.intervalMs));
	}
	if (m.heartbeat.networks.empty() && cluster)
		m.heartbeat.networks = cluster->networks;
}

void readVips(ObjectReader &r, ModuleConfig &m, const ClusterConfig *cluster)
{
	Validator &v = r.validator();
	const json *vips = r.array("vips", false, "an array of {\"address\": \"IP/prefix\", \"interface\": ...}");
	if (!vips)
		return;
	std::map<std::string, size_t> seen;
	for (size_t i = 0; i < vips->size(); i++) {
		std::string p = "/vips/" + std::to_string(i);
		ObjectReader vr(v, (*vips)[i], p, { "address", "interface" }, "a VIP object");
		if (!vr.valid())
			continue;
		VipConfig vip;
		std::string text;
		if (vr.str("address", &text, true, "an address with prefix length like \"198.18.0.100/24\"")) {
			size_t slash = text.find('/');
			std::string ip = text.substr(0, slash);
			std::string canon = canonicalIp(ip, &vip.family);
			uint32_t maxPrefix = vip.family == AF_INET6 ? 128 : 32;
			char *end = nullptr;
			std::string prefix = slash == std::string::npos ? "" : text.substr(slash + 1);
			unsigned long pl = prefix.empty() ? 0 : strtoul(prefix.c_str(), &end, 10);
			if (canon.empty() || slash == std::string::npos) {
				v.error(p + "/address", fmt::format("found {}, expected an IPv4 or IPv6 address with "
								    "prefix length like \"198.18.0.100/24\"",
								    json(text).dump()));
			} else if (prefix.empty() || *end || pl < 1 || pl > maxPrefix) {
				v.error(p + "/address", fmt::format("found prefix length \"{}\" in {}, expected "
								    "1..{}",
								    prefix, json(text).dump(), maxPrefix));
			} else {
				vip.address = canon;
				vip.prefixLen = static_cast<uint32_t>(pl);
				auto [it, fresh] = seen.emplace(canon, i);
				if (!fresh)
					v.error(p + "/address", fmt::format("found duplicate VIP {} (also /vips/{}), "
									    "expected each VIP once",
									    canon, it->second));
				if (cluster) {
					for (const auto &n : cluster->nodes)
						for (const auto &[net, a] : n.addresses)
							if (a == canon)
								v.error(p + "/address",
									fmt::format("found {}, which is node \"{}\"'s "
										    "address on network \"{}\", "
										    "expected an address no node owns",
										    canon, n.name, net));
				}
			}
		}
		if (vr.str("interface", &vip.interface, m.type == ModuleType::Mirror, "a network interface name") &&
		    !validInterfaceName(vip.interface))
			v.error(p + "/interface", fmt::format("found {}, expected an interface name (1..15 "
							      "characters, no '/', ':' or spaces)",
							      json(vip.interface).dump()));
		m.vips.push_back(std::move(vip));
	}
}

void readReplication(ObjectReader &r, ModuleConfig &m)
{
	Validator &v = r.validator();
	/* Optional: a mirror module without it moves the VIP and the app but replicates no data. */
	const json *rep = r.get("replication", false,
				"an object {\"dirs\": [...]} (the directories to replicate)");
	if (!rep)
		return;
	if (m.type != ModuleType::Mirror) {
		v.error("/replication", "found a replication section in a farm module, expected it only in "
					"mirror modules (farm nodes do not replicate)");
		return;
	}
	ObjectReader rr(v, *rep, "/replication", { "mode", "ack", "per_write", "block_size", "tls", "dirs" },
			"an object (replication settings)");
	ReplicationConfig &c = m.replication;
	rr.choice("mode", &c.mode, kReplicationModes);
	rr.choice("ack", &c.ack, kAckLevels);
	rr.boolean("per_write", &c.perWrite);
	rr.boolean("tls", &c.tls);
	uint32_t bs = c.blockSize;
	if (rr.integer("block_size", &bs, 4096, 16u << 20, false, " bytes")) {
		if (!isPowerOfTwo(bs))
			v.error("/replication/block_size",
				fmt::format("found {}, expected a power of two 4096..16777216", bs));
		else
			c.blockSize = bs;
	}
	if (c.perWrite && c.mode == ReplicationMode::Async)
		v.error("/replication/per_write", "found true with mode \"async\", expected per_write only "
						  "with mode \"sync\" (async never waits for the peer)");
	const json *dirs = rr.array("dirs", true, "an array of {\"path\": \"/abs/dir\"} objects", 1, 64);
	if (!dirs)
		return;
	for (size_t i = 0; i < dirs->size(); i++) {
		std::string p = "/replication/dirs/" + std::to_string(i);
		ObjectReader dr(v, (*dirs)[i], p, { "path", "include", "exclude" }, "a directory object");
		if (!dr.valid())
			continue;
		ReplicatedDir d;
		std::string path;
		if (dr.str("path", &path, true, "an absolute directory path")) {
			if (path[0] != '/')
				v.error(p + "/path", fmt::format("found {}, expected an absolute path",
								 json(path).dump()));
			else if (normalisePath(path) == "/")
				v.error(p + "/path", fmt::format("found {}, expected a directory other than \"/\"",
								 json(path).dump()));
			else if (!isNormalisedAbsolute(path))
				v.error(p + "/path", fmt::format("found {}, expected a normalised path like {}",
								 json(path).dump(),
								 json(normalisePath(path)).dump()));
			else
				d.path = path;
		}
		dr.strList("include", &d.include);
		dr.strList("exclude", &d.exclude);
		if (!d.path.empty()) {
			for (size_t k = 0; k < c.dirs.size(); k++) {
				if (!c.dirs[k].path.empty() && pathsOverlap(d.path, c.dirs[k].path))
					v.error(p + "/path",
						fmt::format("found \"{}\", which overlaps /replication/dirs/{}/path "
							    "\"{}\", expected directories that do not nest",
							    d.path, k, c.dirs[k].path));
			}
		}
		c.dirs.push_back(std::move(d));
	}
}

void readChecker(Validator &v, const json &j, const std::string &p, CheckerConfig &c, const ModuleConfig &m)
{
	std::vector<std::string> common = { "name", "type", "when", "action", "interval_ms", "timeout_ms" };
	/* The type decides which keys are known, so read it before the object's key check. */
	bool typed = false;
	if (j.is_object()) {
		auto it = j.find("type");
		if (it != j.end() && it->is_string()) {
			for (const auto &t : kCheckerTypes)
				if (*it == t.name) {
					c.type = t.value;
					typed = true;
				}
		}
	}
	static const std::map<CheckerType, std::vector<std::string>> kTypeKeys = {
		{ CheckerType::Process, { "process", "min_count" } },
		{ CheckerType::Tcp, { "address", "port" } },
		{ CheckerType::Ping, { "address" } },
		{ CheckerType::Interface, { "interface" } },
		{ CheckerType::Custom, { "script" } },
		{ CheckerType::Module, { "module", "states" } },
	};
	std::vector<std::string> known = common;
	std::map<std::string, std::string> hints;
	for (const auto &[type, keys] : kTypeKeys) {
		/* Unknown type: accept every type-specific key so only the type is reported. */
		if (!typed || type == c.type) {
			known.insert(known.end(), keys.begin(), keys.end());
			continue;
		}
		for (const auto &k : keys) {
			std::string &h = hints[k];
			h += h.empty() ? fmt::format("for a {} checker: it belongs to type \"{}\"", configName(c.type),
						     configName(type))
				       : fmt::format(" or \"{}\"", configName(type));
		}
	}
	for (const auto &k : known)
		hints.erase(k);
	ObjectReader cr(v, j, p, known, "a checker object", hints);
	if (!cr.valid())
		return;
	if (cr.str("name", &c.name, true, "a checker name") && !validName(c.name))
		v.error(p + "/name", fmt::format("found {}, expected a name matching [a-z0-9_-]{{1,32}}",
						 json(c.name).dump()));
	cr.choice("type", &c.type, kCheckerTypes, true);
	cr.choice("when", &c.when, kCheckerWhens);
	cr.choice("action", &c.action, kCheckerActions);
	cr.integer("interval_ms", &c.intervalMs, 100, 3600000, false, " ms");
	cr.integer("timeout_ms", &c.timeoutMs, 10, 600000, false, " ms");
	if (!typed)
		return;
	auto address = [&] {
		std::string a;
		if (!cr.str("address", &a, true, "an IPv4 or IPv6 address"))
			return;
		c.address = canonicalIp(a, nullptr);
		if (c.address.empty())
			v.error(p + "/address", fmt::format("found {}, expected an IPv4 or IPv6 address",
							    json(a).dump()));
	};
	switch (c.type) {
	case CheckerType::Process:
		cr.str("process", &c.processName, true, "a process name (as in /proc/PID/comm)");
		cr.integer("min_count", &c.minCount, 1, 10000);
		break;
	case CheckerType::Tcp:
		address();
		cr.integer("port", &c.port, 1, 65535, true);
		break;
	case CheckerType::Ping:
		address();
		break;
	case CheckerType::Interface:
		if (cr.str("interface", &c.interface, true, "a network interface name") &&
		    !validInterfaceName(c.interface))
			v.error(p + "/interface", fmt::format("found {}, expected an interface name (1..15 "
							      "characters, no '/', ':' or spaces)",
							      json(c.interface).dump()));
		break;
	case CheckerType::Custom:
		if (cr.str("script", &c.script, true, "a script name in scripts/ or an absolute path") &&
		    c.script[0] != '/' && c.script.find('/') != std::string::npos)
			v.error(p + "/script", fmt::format("found {}, expected a file name in the module's "
							   "scripts/ directory or an absolute path",
							   json(c.script).dump()));
		break;
	case CheckerType::Module:
		if (cr.str("module", &c.module, true, "a module name")) {
			if (!validName(c.module))
				v.error(p + "/module", fmt::format("found {}, expected a module name matching "
								   "[a-z0-9_-]{{1,32}}",
								   json(c.module).dump()));
			else if (c.module == m.name)
				v.error(p + "/module", fmt::format("found \"{}\" (this module), expected another "
								   "module",
								   c.module));
		}
		if (cr.strList("states", &c.states, true, 1)) {
			for (size_t i = 0; i < c.states.size(); i++)
				if (std::find(kModuleStates.begin(), kModuleStates.end(), c.states[i]) ==
				    kModuleStates.end())
					v.error(p + "/states/" + std::to_string(i),
						fmt::format("found \"{}\", expected one of {}{}", c.states[i],
							    joinQuoted(kModuleStates),
							    didYouMean(c.states[i], kModuleStates)));
		}
		break;
	}
}

void readCheckers(ObjectReader &r, ModuleConfig &m)
{
	Validator &v = r.validator();
	const json *checkers = r.array("checkers", false, "an array of checker objects");
	if (!checkers)
		return;
	std::map<std::string, size_t> names;
	for (size_t i = 0; i < checkers->size(); i++) {
		std::string p = "/checkers/" + std::to_string(i);
		CheckerConfig c;
		readChecker(v, (*checkers)[i], p, c, m);
		if (!c.name.empty()) {
			auto [it, fresh] = names.emplace(c.name, i);
			if (!fresh)
				v.error(p + "/name", fmt::format("found duplicate checker name \"{}\" (also "
								 "/checkers/{}/name), expected unique names",
								 c.name, it->second));
		}
		m.checkers.push_back(std::move(c));
	}
}

void readScripts(ObjectReader &r, ModuleConfig &m)
{
	Validator &v = r.validator();
	const json *s = r.get("scripts");
	if (!s)
		return;
	ObjectReader sr(v, *s, "/scripts", { "timeout_ms", "timeouts" }, "an object (script settings)");
	sr.integer("timeout_ms", &m.scripts.timeoutMs, 1000, 3600000, false, " ms");
	if (const json *t = sr.get("timeouts")) {
		ObjectReader tr(v, *t, "/scripts/timeouts", kScriptNames, "an object {script name: timeout_ms}");
		for (const auto &name : kScriptNames) {
			uint32_t ms = 0;
			if (tr.integer(name, &ms, 1000, 3600000, false, " ms"))
				m.scripts.timeouts[name] = ms;
		}
	}
}

void readFailover(ObjectReader &r, ModuleConfig &m)
{
	Validator &v = r.validator();
	const json *f = r.get("failover");
	if (!f)
		return;
	ObjectReader fr(v, *f, "/failover", { "defaultprim", "auto_swap_back", "maxloop", "loop_interval_s", "splitbrain" },
			"an object (failover settings)");
	FailoverConfig &c = m.failover;
	if (fr.str("defaultprim", &c.defaultPrim, false, "a node name of this module")) {
		if (m.type != ModuleType::Mirror)
			v.error("/failover/defaultprim", "found a default primary in a farm module, expected it "
							 "only in mirror modules (every farm node serves)");
		else if (!m.nodes.empty() &&
			 std::find(m.nodes.begin(), m.nodes.end(), c.defaultPrim) == m.nodes.end())
			v.error("/failover/defaultprim", fmt::format("found \"{}\", expected one of the module's "
								     "nodes: {}{}",
								     c.defaultPrim, joinQuoted(m.nodes),
								     didYouMean(c.defaultPrim, m.nodes)));
	}
	fr.boolean("auto_swap_back", &c.autoSwapBack);
	fr.integer("maxloop", &c.maxLoop, 1, 1000);
	fr.integer("loop_interval_s", &c.loopIntervalS, 1, 30 * 86400, false, " s");
	fr.choice("splitbrain", &c.splitBrain, kSplitBrain);
	if (c.autoSwapBack && c.defaultPrim.empty())
		v.error("/failover/auto_swap_back", "found true without /failover/defaultprim, expected a "
						    "defaultprim to swap back to");
	if (c.splitBrain == SplitBrainPolicy::DefaultPrim && c.defaultPrim.empty())
		v.error("/failover/splitbrain", "found \"defaultprim\" without /failover/defaultprim, expected "
						"a defaultprim node to keep");
}

void readWitness(ObjectReader &r, ModuleConfig &m, const ClusterConfig *cluster)
{
	Validator &v = r.validator();
	const json *w = r.get("witness");
	if (!w)
		return;
	ObjectReader wr(v, *w, "/witness", { "address", "type", "port", "timeout_ms" }, "an object (witness settings)");
	WitnessConfig &c = m.witness;
	c.enabled = wr.valid();
	std::string a;
	if (wr.str("address", &a, wr.valid(), "an IPv4 or IPv6 address")) {
		c.address = canonicalIp(a, nullptr);
		if (c.address.empty())
			v.error("/witness/address", fmt::format("found {}, expected an IPv4 or IPv6 address",
								json(a).dump()));
		/* A witness on a node or a VIP moves with the nodes: it cannot break a tie. */
		for (const auto &vip : m.vips)
			if (!c.address.empty() && vip.address == c.address)
				v.error("/witness/address", fmt::format("found {}, which is a VIP of this module, "
									"expected a third machine's address",
									c.address));
		if (cluster && !c.address.empty())
			for (const auto &n : cluster->nodes)
				for (const auto &[net, addr] : n.addresses)
					if (addr == c.address)
						v.error("/witness/address",
							fmt::format("found {}, which is node \"{}\"'s address on "
								    "network \"{}\", expected a third machine's address",
								    c.address, n.name, net));
	}
	wr.choice("type", &c.type, kWitnessTypes);
	bool hasPort = wr.integer("port", &c.port, 1, 65535);
	if (c.type == WitnessType::Tcp && !hasPort && !wr.get("port") && wr.valid())
		v.error("/witness/port", "missing required key \"port\", expected an integer 1..65535 for a "
					 "tcp witness");
	if (c.type == WitnessType::Icmp && wr.get("port"))
		v.error("/witness/port", "found a port for an icmp witness, expected no port (or type \"tcp\")");
	wr.integer("timeout_ms", &c.timeoutMs, 100, 10000, false, " ms");
}

bool parseMac(const std::string &s, uint8_t mac[6])
{
	if (s.size() != 17)
		return false;
	for (int i = 0; i < 6; i++) {
		if (i > 0 && s[i * 3 - 1] != ':')
			return false;
		unsigned v = 0;
		for (int k = 0; k < 2; k++) {
			char ch = s[i * 3 + k];
			v <<= 4;
			if (ch >= '0' && ch <= '9')
				v |= ch - '0';
			else if (ch >= 'a' && ch <= 'f')
				v |= ch - 'a' + 10;
			else if (ch >= 'A' && ch <= 'F')
				v |= ch - 'A' + 10;
			else
				return false;
		}
		mac[i] = static_cast<uint8_t>(v);
	}
	return true;
}

void readFarm(ObjectReader &r, ModuleConfig &m)
{
	Validator &v = r.validator();
	const json *f = r.get("farm", m.type == ModuleType::Farm, "an object {\"interface\": ...} (farm settings)");
	if (!f)
		return;
	if (m.type != ModuleType::Farm) {
		v.error("/farm", "found a farm section in a mirror module, expected it only in farm modules");
		return;
	}
	ObjectReader fr(v, *f, "/farm", { "interface", "hash", "ports", "buckets", "weights", "virtual_mac", "seed",
					  "xdp_mode", "drain_ms" },
			"an object (farm settings)");
	FarmConfig &c = m.farm;
	if (fr.str("interface", &c.interface, true, "a network interface name") && !validInterfaceName(c.interface))
		v.error("/farm/interface", fmt::format("found {}, expected an interface name (1..15 characters, "
						       "no '/', ':' or spaces)",
						       json(c.interface).dump()));
	fr.choice("hash", &c.hash, kFarmHashes);
	fr.choice("xdp_mode", &c.xdpMode, kFarmXdpModes);
	if (const json *ports = fr.array("ports", false, "an array of ports 1..65535")) {
		for (size_t i = 0; i < ports->size(); i++) {
			const json &e = (*ports)[i];
			std::string p = "/farm/ports/" + std::to_string(i);
			if (!e.is_number_unsigned() || e.get<uint64_t>() < 1 || e.get<uint64_t>() > 65535) {
				v.error(p, fmt::format("found {}, expected an integer 1..65535", describe(e)));
				continue;
			}
			uint16_t port = e.get<uint16_t>();
			if (std::find(c.ports.begin(), c.ports.end(), port) != c.ports.end()) {
				v.error(p, fmt::format("found duplicate port {}, expected each port once", port));
				continue;
			}
			c.ports.push_back(port);
		}
	}
	uint32_t buckets = c.buckets;
	if (fr.integer("buckets", &buckets, 2, 65536)) {
		if (!isPowerOfTwo(buckets))
			v.error("/farm/buckets", fmt::format("found {}, expected a power of two 2..65536", buckets));
		else
			c.buckets = buckets;
	}
	if (const json *w = fr.get("weights")) {
		ObjectReader wr(v, *w, "/farm/weights", m.nodes, "an object {node: weight}");
		for (const auto &n : m.nodes) {
			uint32_t weight = 0;
			if (wr.integer(n, &weight, 1, 1000))
				c.weights[n] = weight;
		}
	}
	std::string mac;
	if (fr.str("virtual_mac", &mac, false, "a MAC address like \"02:00:5e:00:00:01\"")) {
		uint8_t b[6];
		if (!parseMac(mac, b))
			v.error("/farm/virtual_mac", fmt::format("found {}, expected a MAC address like "
								 "\"02:00:5e:00:00:01\"",
								 json(mac).dump()));
		else if ((b[0] & 1) || !(b[0] & 2))
			v.error("/farm/virtual_mac", fmt::format("found {}, expected a unicast, locally administered "
								 "MAC (first octet with bit 0 clear and bit 1 set, "
								 "e.g. 02)",
								 json(mac).dump()));
		else
			c.virtualMac = fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2],
						   b[3], b[4], b[5]);
	}
	if (fr.integer("seed", &c.seed, 0, UINT64_MAX))
		c.hasSeed = true;
	fr.integer("drain_ms", &c.drainMs, 0, 600000);
	for (auto &vip : m.vips)
		if (vip.interface.empty())
			vip.interface = c.interface;
}

ModuleConfig buildModule(const json &doc, Validator &v, const ClusterConfig *cluster)
{
	ModuleConfig m;
	m.file = v.file();
	ObjectReader r(v, doc, "",
		       { "$schema", "name", "type", "nodes", "heartbeat", "vips", "replication", "checkers", "scripts",
			 "failover", "witness", "farm" },
		       "an object (module.json)");
	if (!r.valid())
		return m;
	if (r.str("name", &m.name, true, "a module name") && !validName(m.name))
		v.error("/name", fmt::format("found {}, expected a name matching [a-z0-9_-]{{1,32}}",
					     json(m.name).dump()));
	bool typed = r.choice("type", &m.type, kModuleTypes, true);

	bool mirror = m.type == ModuleType::Mirror;
	std::vector<std::string> nodes;
	if (r.strList("nodes", &nodes, true)) {
		if (typed && mirror && nodes.size() != 2)
			v.error("/nodes", fmt::format("found {} nodes, expected exactly 2 for a mirror module",
						      nodes.size()));
		else if (typed && !mirror && (nodes.size() < 2 || nodes.size() > kMaxNodes))
			v.error("/nodes", fmt::format("found {} nodes, expected 2..{} for a farm module",
						      nodes.size(), kMaxNodes));
		if (cluster) {
			std::vector<std::string> known;
			for (const auto &n : cluster->nodes)
				known.push_back(n.name);
			for (size_t i = 0; i < nodes.size(); i++)
				if (!cluster->findNode(nodes[i]))
					v.error("/nodes/" + std::to_string(i),
						fmt::format("found unknown node \"{}\"{}, expected a node of cluster "
							    "\"{}\": {}",
							    nodes[i], didYouMean(nodes[i], known), cluster->name,
							    joinQuoted(known)));
		}
	}
	m.nodes = nodes;

	readHeartbeat(r, m, cluster);
	readVips(r, m, cluster);
	if (typed) {
		readReplication(r, m);
		readFarm(r, m);	/* after vips: fills in their default interface */
	}
	readCheckers(r, m);
	readScripts(r, m);
	if (typed)
		readFailover(r, m);
	readWitness(r, m, cluster);
	return m;
}

bool looksLikeModule(const json &doc)
{
	return doc.is_object() && doc.contains("type");
}

} /* namespace */

std::string didYouMean(std::string_view word, const std::vector<std::string> &candidates)
{
	std::string c = closest(word, candidates);
	return c.empty() ? std::string() : fmt::format(" (did you mean \"{}\"?)", c);
}

const std::vector<std::string> kScriptNames = { "prestart",	"start_prim", "stop_prim", "start_second",
						"stop_second", "start_both", "stop_both", "poststop" };

const char *configName(ModuleType v) { return choiceName(kModuleTypes, v); }
const char *configName(ReplicationMode v) { return choiceName(kReplicationModes, v); }
const char *configName(AckLevel v) { return choiceName(kAckLevels, v); }
const char *configName(CheckerType v) { return choiceName(kCheckerTypes, v); }
const char *configName(CheckerWhen v) { return choiceName(kCheckerWhens, v); }
const char *configName(CheckerAction v) { return choiceName(kCheckerActions, v); }
const char *configName(SplitBrainPolicy v) { return choiceName(kSplitBrain, v); }
const char *configName(WitnessType v) { return choiceName(kWitnessTypes, v); }
const char *configName(FarmHash v) { return choiceName(kFarmHashes, v); }
const char *configName(FarmXdpMode v) { return choiceName(kFarmXdpModes, v); }

const NodeConfig *ClusterConfig::findNode(std::string_view nodeName) const
{
	for (const auto &n : nodes)
		if (n.name == nodeName)
			return &n;
	return nullptr;
}

bool ClusterConfig::hasNetwork(std::string_view network) const
{
	return std::find(networks.begin(), networks.end(), network) != networks.end();
}

uint32_t ScriptsConfig::timeoutFor(const std::string &script) const
{
	auto it = timeouts.find(script);
	return it == timeouts.end() ? timeoutMs : it->second;
}

uint32_t FarmConfig::weightOf(const std::string &node) const
{
	auto it = weights.find(node);
	return it == weights.end() ? 1 : it->second;
}

std::string formatConfigError(const ConfigError &e)
{
	if (e.line > 0)
		return fmt::format("{}:{}:{}: {}", e.file, e.line, e.column, e.message);
	if (e.path.empty())
		return fmt::format("{}: {}", e.file, e.message);
	return fmt::format("{}: {}: {}", e.file, e.path, e.message);
}

Result<ClusterConfig> parseClusterConfig(std::string_view text, const std::string &file,
					 std::vector<ConfigError> *errors)
{
	std::vector<ConfigError> local;
	if (!errors)
		errors = &local;
	size_t before = errors->size();
	Validator v(file, errors);
	json doc;
	if (!parseJson(text, v, &doc, errors, file))
		return finish(ClusterConfig{}, before, errors, file);
	return finish(buildCluster(doc, v), before, errors, file);
}

Result<ClusterConfig> loadClusterConfig(const std::string &file, std::vector<ConfigError> *errors)
{
	auto text = readFile(file);
	if (!text.ok()) {
		if (errors)
			errors->push_back(ConfigError{ file, "", text.error().message });
		return text.error();
	}
	return parseClusterConfig(*text, file, errors);
}

Result<ModuleConfig> parseModuleConfig(std::string_view text, const std::string &file,
				       const ClusterConfig *cluster, std::vector<ConfigError> *errors)
{
	std::vector<ConfigError> local;
	if (!errors)
		errors = &local;
	size_t before = errors->size();
	Validator v(file, errors);
	json doc;
	if (!parseJson(text, v, &doc, errors, file))
		return finish(ModuleConfig{}, before, errors, file);
	return finish(buildModule(doc, v, cluster), before, errors, file);
}

Result<ModuleConfig> loadModuleConfig(const std::string &file, const ClusterConfig *cluster,
				      std::vector<ConfigError> *errors)
{
	auto text = readFile(file);
	if (!text.ok()) {
		if (errors)
			errors->push_back(ConfigError{ file, "", text.error().message });
		return text.error();
	}
	return parseModuleConfig(*text, file, cluster, errors);
}

size_t checkModuleSet(const std::vector<ModuleConfig> &modules, std::vector<ConfigError> *errors,
		      bool completeSet)
{
	std::vector<ConfigError> local;
	if (!errors)
		errors = &local;
	size_t before = errors->size();
	for (size_t i = 0; i < modules.size(); i++) {
		const ModuleConfig &m = modules[i];
		Validator v(m.file, errors);
		for (size_t k = 0; k < i; k++) {
			const ModuleConfig &o = modules[k];
			if (!m.name.empty() && m.name == o.name)
				v.error("/name", fmt::format("found module name \"{}\", also used by {}, expected "
							     "unique module names",
							     m.name, o.file));
			for (size_t a = 0; a < m.vips.size(); a++)
				for (const auto &ov : o.vips)
					if (!m.vips[a].address.empty() && m.vips[a].address == ov.address)
						v.error(fmt::format("/vips/{}/address", a),
							fmt::format("found VIP {}, also used by module \"{}\" ({}), "
								    "expected a VIP in one module only",
								    ov.address, o.name, o.file));
			for (size_t d = 0; d < m.replication.dirs.size(); d++)
				for (const auto &od : o.replication.dirs)
					if (!m.replication.dirs[d].path.empty() && !od.path.empty() &&
					    pathsOverlap(m.replication.dirs[d].path, od.path))
						v.error(fmt::format("/replication/dirs/{}/path", d),
							fmt::format("found \"{}\", which overlaps \"{}\" replicated by "
								    "module \"{}\" ({}), expected a directory in "
								    "one module only",
								    m.replication.dirs[d].path, od.path, o.name,
								    o.file));
		}
		if (!completeSet)
			continue;
		std::vector<std::string> names;
		for (const auto &o : modules)
			names.push_back(o.name);
		for (size_t c = 0; c < m.checkers.size(); c++) {
			const CheckerConfig &ch = m.checkers[c];
			if (ch.type == CheckerType::Module && !ch.module.empty() &&
			    std::find(names.begin(), names.end(), ch.module) == names.end())
				v.error(fmt::format("/checkers/{}/module", c),
					fmt::format("found unknown module \"{}\"{}, expected one of {}", ch.module,
						    didYouMean(ch.module, names), joinQuoted(names)));
		}
	}
	return errors->size() - before;
}

Result<NodeConfiguration> loadNodeConfiguration(const std::string &clusterFile,
						std::vector<ConfigError> *errors)
{
	std::vector<ConfigError> local;
	if (!errors)
		errors = &local;
	size_t before = errors->size();
	NodeConfiguration node;
	auto cluster = loadClusterConfig(clusterFile, errors);
	if (!cluster.ok())
		return cluster.error();
	node.cluster = std::move(*cluster);

	const std::string &dir = node.cluster.paths.modulesDir;
	DIR *d = opendir(dir.c_str());
	if (!d) {
		int err = errno;
		if (err != ENOENT) {
			errors->push_back(ConfigError{ clusterFile, "/paths/modules_dir",
						       errnoMessage("cannot open modules directory " + dir, err) });
			return makeError(-err, formatConfigError(errors->back()));
		}
		logWarn(kLogConfig, "modules directory {} does not exist: no modules", dir);
	} else {
		std::vector<std::string> names;
		while (struct dirent *e = readdir(d)) {
			if (e->d_name[0] == '.')
				continue;
			std::string sub = dir + "/" + e->d_name;
			struct stat st;
			if (stat(sub.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
				names.push_back(e->d_name);
		}
		closedir(d);
		std::sort(names.begin(), names.end());	/* deterministic order for messages */
		for (const auto &name : names) {
			std::string file = dir + "/" + name + "/module.json";
			auto m = loadModuleConfig(file, &node.cluster, errors);
			if (!m.ok())
				continue;
			if (m->name != name) {
				errors->push_back(ConfigError{ file, "/name",
							       fmt::format("found \"{}\", expected \"{}\" (the module "
									   "directory's name)",
									   m->name, name) });
				continue;
			}
			node.modules.push_back(std::move(*m));
		}
	}
	checkModuleSet(node.modules, errors);
	size_t n = errors->size() - before;
	if (n) {
		logError(kLogConfig, "{} configuration problem{}; first: {}", n, n == 1 ? "" : "s",
			 formatConfigError((*errors)[before]));
		return finish(std::move(node), before, errors, clusterFile);
	}
	logInfo(kLogConfig, "cluster \"{}\": {} node(s), {} module(s) from {}", node.cluster.name,
		node.cluster.nodes.size(), node.modules.size(), dir);
	return node;
}

Status checkConfigFiles(const std::vector<std::string> &files, std::vector<ConfigError> *errors)
{
	std::vector<ConfigError> local;
	if (!errors)
		errors = &local;
	size_t before = errors->size();
	std::vector<std::string> moduleFiles, clusterFiles;
	for (const auto &f : files) {
		auto text = readFile(f);
		if (!text.ok()) {
			errors->push_back(ConfigError{ f, "", text.error().message });
			continue;
		}
		json doc;
		try {
			doc = json::parse(text->begin(), text->end(), nullptr, true, true);
		} catch (const json::exception &) {
			/* Reported with line/column by the loader below; assume a module when it says so. */
		}
		bool module = looksLikeModule(doc) || (!doc.is_object() && text->find("\"type\"") != std::string::npos);
		(module ? moduleFiles : clusterFiles).push_back(f);
	}
	std::vector<ClusterConfig> clusters;
	for (const auto &f : clusterFiles) {
		auto c = loadClusterConfig(f, errors);
		if (c.ok())
			clusters.push_back(std::move(*c));
	}
	const ClusterConfig *cluster = clusters.size() == 1 && clusterFiles.size() == 1 ? &clusters[0] : nullptr;
	std::vector<ModuleConfig> modules;
	for (const auto &f : moduleFiles) {
		auto m = loadModuleConfig(f, cluster, errors);
		if (m.ok())
			modules.push_back(std::move(*m));
	}
	/* The files given need not be every module of a node: skip checker references. */
	checkModuleSet(modules, errors, false);
	size_t n = errors->size() - before;
	if (n)
		return makeError(-EINVAL, fmt::format("{} problem{} in {} file{}", n, n == 1 ? "" : "s", files.size(),
						      files.size() == 1 ? "" : "s"));
	return Status::success();
}

} /* namespace sk */
