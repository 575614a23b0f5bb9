/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Two mirror state machines (n1, n2) wired together for tests: a tiny text
 * command language drives them, the "disk" keeps what they persisted, and every
 * step prints transitions and actions so transcripts can be compared.
 */
#pragma once

#include <cerrno>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mirror/state_machine.h"

namespace sk::test {

class MirrorSim
{
public:
	struct Node {
		std::string name;
		std::unique_ptr<MirrorStateMachine> sm;	/* null: down */
		Generation disk;
		uint64_t incarnation = 0;
		uint64_t uuidBase = 0;
		uint64_t uuidNext = 1;
		bool vip = false;
		std::string pendingScript;
		bool targetPending = false;
	};

	MirrorSim()
	{
		nodes_[0].name = "n1";
		nodes_[0].uuidBase = 0xa00;
		nodes_[1].name = "n2";
		nodes_[1].uuidBase = 0xb00;
		config_.startupWaitMs = 5000;
		config_.replRetryMs = 1000;
	}

	Node &node(int i) { return nodes_[i]; }
	MirrorStateMachine &sm(int i) { return *nodes_[i].sm; }
	uint64_t now() const { return now_; }

	/* Runs one command; returns its output lines (never empty lines). */
	std::vector<std::string> run(const std::string &command)
	{
		out_.clear();
		std::vector<std::string> w = split(command);
		if (w.empty())
			return out_;
		if (w[0] == "config")
			cmdConfig(w);
		else if (w[0] == "gen")
			cmdGen(w);
		else if (w[0] == "boot")
			for (size_t i = 1; i < w.size(); i++)
				boot(index(w[i]));
		else if (w[0] == "crash")
			for (size_t i = 1; i < w.size(); i++)
				crash(index(w[i]));
		else if (w[0] == "link" && w.size() == 2)
			cmdLink(w[1]);
		else if (w[0] == "tick" && w.size() == 2)
			cmdTick(std::stoull(w[1]));
		else if (w[0] == "settle")
			settle();
		else if (w[0] == "state")
			for (int i = 0; i < 2; i++)
				out_.push_back(describe(i));
		else if (w[0] == "n1" || w[0] == "n2")
			nodeCommand(index(w[0]), w);
		else
			out_.push_back("?? unknown command: " + command);
		return out_;
	}

	/* Last error code of an admin command (0 when it was accepted). */
	int lastError() const { return lastError_; }

private:
	static std::vector<std::string> split(const std::string &s)
	{
		std::istringstream in(s);
		std::vector<std::string> w;
		std::string t;
		while (in >> t)
			w.push_back(t);
		return w;
	}

	static int index(const std::string &n) { return n == "n2" ? 1 : 0; }

	static std::string errnoName(int code)
	{
		switch (-code) {
		case EBUSY: return "EBUSY";
		case EINVAL: return "EINVAL";
		case EACCES: return "EACCES";
		default: return std::to_string(code);
		}
	}

	MirrorConfig configFor(int i) const
	{
		MirrorConfig c = config_;
		c.node = nodes_[i].name;
		c.peer = nodes_[1 - i].name;
		return c;
	}

	void cmdConfig(const std::vector<std::string> &w)
	{
		for (size_t i = 1; i < w.size(); i++) {
			auto eq = w[i].find('=');
			std::string k = w[i].substr(0, eq), v = eq == std::string::npos ? "" : w[i].substr(eq + 1);
			if (k == "witness")
				config_.witness = v == "1";
			else if (k == "splitbrain")
				config_.splitBrain = v == "keep_prim" ? SplitBrainPolicy::KeepPrim :
					v == "defaultprim" ? SplitBrainPolicy::DefaultPrim : SplitBrainPolicy::Manual;
			else if (k == "defaultprim")
				config_.defaultPrim = v;
			else if (k == "autoswapback")
				config_.autoSwapBack = v == "1";
			else if (k == "retries")
				config_.startRetries = static_cast<uint32_t>(std::stoul(v));
			else if (k == "fence")
				config_.fenceMs = std::stoull(v);
			else if (k == "startupwait")
				config_.startupWaitMs = std::stoull(v);
			else
				out_.push_back("?? unknown config key " + k);
		}
		out_.push_back("ok");
	}

	static uint64_t hex(const std::string &s) { return std::stoull(s, nullptr, 16); }

	void cmdGen(const std::vector<std::string> &w)
	{
		Generation g;
		for (size_t i = 2; i < w.size(); i++) {
			auto eq = w[i].find('=');
			std::string k = w[i].substr(0, eq), v = w[i].substr(eq + 1);
			if (k == "cur")
				g.current = hex(v);
			else if (k == "hist") {
				std::stringstream ss(v);
				std::string h;
				while (std::getline(ss, h, ','))
					g.history.push_back(hex(h));
			} else if (k == "insync")
				g.inSync = v == "1";
			else if (k == "prim")
				g.wasPrimary = v == "1";
		}
		nodes_[index(w[1])].disk = g;
		out_.push_back(fmt::format("{}: disk {}", w[1], formatGeneration(g)));
	}

	void boot(int i)
	{
		Node &n = nodes_[i];
		n.incarnation++;
		n.vip = false;
		n.pendingScript.clear();
		n.targetPending = false;
		Node *np = &n;
		n.sm = std::make_unique<MirrorStateMachine>(configFor(i), n.disk, n.incarnation,
			[np] { return np->uuidBase + np->uuidNext++; });
		out_.push_back(fmt::format("{}: booted {}", n.name, formatGeneration(n.disk)));
	}

	void crash(int i)
	{
		Node &n = nodes_[i];
		n.sm.reset();
		n.vip = false;	/* power cut: the address goes with the machine */
		n.pendingScript.clear();
		n.targetPending = false;
		out_.push_back(n.name + ": crashed");
	}

	void cmdLink(const std::string &how)
	{
		linkUp_ = how == "up";
		out_.push_back(std::string("link ") + (linkUp_ ? "up" : "down"));
	}

	void cmdTick(uint64_t ms)
	{
		now_ += ms;
		for (int i = 0; i < 2; i++)
			if (nodes_[i].sm)
				deliver(i, MirrorEvent::simple(MirrorEventKind::Tick, now_), "");
	}

	/* Exchanges heartbeats, completes scripts and resyncs, until nothing moves. */
	void settle()
	{
		for (int round = 0; round < 30; round++) {
			bool progress = false;
			/* Heartbeats first: scripts and resyncs take longer than one interval. */
			for (int i = 0; i < 2; i++) {
				if (!nodes_[i].sm || !nodes_[1 - i].sm || !linkUp_)
					continue;
				if (heartbeat(i, fmt::format("[{} hb]", nodes_[i].name)))
					progress = true;
			}
			for (int i = 0; i < 2; i++) {
				Node &n = nodes_[i];
				if (n.sm && !n.pendingScript.empty()) {
					std::string s = n.pendingScript;
					deliver(i, MirrorEvent::scriptDone(s, true, now_),
						fmt::format("[{} script {} ok]", n.name, s));
					progress = true;
				}
			}
			for (int i = 0; i < 2; i++) {
				Node &n = nodes_[i];
				if (n.sm && n.targetPending && n.sm->phase() == MirrorPhase::Resyncing) {
					deliver(i, MirrorEvent::simple(MirrorEventKind::ResyncDone, now_),
						fmt::format("[{} resync-done]", n.name));
					progress = true;
				}
			}
			if (!progress)
				return;
		}
		out_.push_back("!! settle did not converge in 30 rounds");
	}

	/* Returns true when the heartbeat changed something. */
	bool heartbeat(int i, const std::string &header)
	{
		PeerInfo p = nodes_[1 - i].sm->localInfo(now_);
		return deliver(i, MirrorEvent::heartbeat(p, now_), header);
	}

	void nodeCommand(int i, const std::vector<std::string> &w)
	{
		Node &n = nodes_[i];
		if (!n.sm) {
			out_.push_back(n.name + ": is down");
			return;
		}
		const std::string &c = w.size() > 1 ? w[1] : "";
		auto admin = [&](MirrorEventKind k) { deliver(i, MirrorEvent::admin(k, now_), ""); };
		if (c == "start")
			admin(MirrorEventKind::AdminStart);
		else if (c == "stop")
			admin(MirrorEventKind::AdminStop);
		else if (c == "prim")
			admin(MirrorEventKind::AdminPrim);
		else if (c == "second")
			admin(MirrorEventKind::AdminSecond);
		else if (c == "swap")
			admin(MirrorEventKind::AdminSwap);
		else if (c == "primforce")
			admin(MirrorEventKind::AdminPrimforce);
		else if (c == "restart")
			admin(MirrorEventKind::AdminRestart);
		else if (c == "hb") {
			if (!nodes_[1 - i].sm)
				out_.push_back(nodes_[1 - i].name + ": is down, no heartbeat");
			else if (!linkUp_)
				out_.push_back("link is down, no heartbeat");
			else
				heartbeat(i, "");
		} else if (c == "lost")
			deliver(i, MirrorEvent::simple(MirrorEventKind::PeerLost, now_), "");
		else if (c == "script" && w.size() == 4)
			deliver(i, MirrorEvent::scriptDone(w[2], w[3] == "ok", now_), "");
		else if (c == "resync-done")
			deliver(i, MirrorEvent::simple(MirrorEventKind::ResyncDone, now_), "");
		else if (c == "resync-fail")
			deliver(i, MirrorEvent::simple(MirrorEventKind::ResyncFailed, now_, "disk full"), "");
		else if (c == "progress" && w.size() == 3) {
			MirrorEvent e = MirrorEvent::simple(MirrorEventKind::ResyncProgress, now_);
			e.percent = std::stoi(w[2]);
			deliver(i, e, "");
		} else if (c == "repl-lost")
			deliver(i, MirrorEvent::simple(MirrorEventKind::ReplicationLost, now_, "stream closed"), "");
		else if (c == "witness" && w.size() == 3)
			deliver(i, MirrorEvent::witness(w[2] == "up", now_), "");
		else if (c == "checker" && w.size() == 3) {
			MirrorEvent e = MirrorEvent::simple(MirrorEventKind::CheckerFailed, now_, "app");
			e.checker = w[2] == "restart" ? CheckerAction::Restart :
				w[2] == "stopstart" ? CheckerAction::StopStart :
				w[2] == "wait" ? CheckerAction::Wait : CheckerAction::None;
			deliver(i, e, "");
		} else if (c == "checker-clear")
			deliver(i, MirrorEvent::simple(MirrorEventKind::CheckerCleared, now_, "app"), "");
		else if (c == "tick")
			deliver(i, MirrorEvent::simple(MirrorEventKind::Tick, now_), "");
		else
			out_.push_back("?? unknown node command: " + c);
	}

	std::string describe(int i) const
	{
		const Node &n = nodes_[i];
		if (!n.sm)
			return fmt::format("{}: down, disk {}", n.name, formatGeneration(n.disk));
		return fmt::format("{}: {} {}{}", n.name, stateLabel(n.sm->state(), n.sm->phase()),
			formatGeneration(n.sm->generation()), n.vip ? " vip" : "");
	}

	/* Feeds one event; prints what happened under `header` (if any). */
	bool deliver(int i, const MirrorEvent &event, const std::string &header)
	{
		Node &n = nodes_[i];
		std::vector<std::string> lines;
		if (event.kind == MirrorEventKind::ScriptDone && event.script == n.pendingScript)
			n.pendingScript.clear();
		if (event.kind == MirrorEventKind::ResyncDone)
			n.targetPending = false;
		auto r = n.sm->handle(event);
		lastError_ = r.code();
		if (!r.ok()) {
			lines.push_back(fmt::format("{}: error {}: {}", n.name, errnoName(r.code()),
				r.error().message));
		} else {
			for (const auto &t : r->transitions)
				lines.push_back(fmt::format("{}: {} -> {}{}: {}", n.name,
					stateLabel(t.fromState, t.fromPhase), stateLabel(t.toState, t.toPhase),
					t.loud ? " [loud]" : "", t.cause));
			for (const auto &a : r->actions) {
				apply(n, a);
				if (a.kind != MirrorActionKind::SendHeartbeat)
					lines.push_back(fmt::format("{}: {}", n.name, describeAction(a)));
			}
		}
		checkInvariants(lines);
		if (lines.empty())
			return false;
		if (!header.empty())
			out_.push_back(header);
		out_.insert(out_.end(), lines.begin(), lines.end());
		bool moved = r.ok() && (!r->transitions.empty() ||
			std::any_of(r->actions.begin(), r->actions.end(), [](const MirrorAction &a) {
				return a.kind != MirrorActionKind::SendHeartbeat;
			}));
		return moved;
	}

	static void apply(Node &n, const MirrorAction &a)
	{
		switch (a.kind) {
		case MirrorActionKind::PersistGeneration: n.disk = a.generation; break;
		case MirrorActionKind::AddVip: n.vip = true; break;
		case MirrorActionKind::RemoveVip: n.vip = false; break;
		case MirrorActionKind::RunScript: n.pendingScript = a.script; break;
		case MirrorActionKind::StartReplicationTarget: n.targetPending = true; break;
		case MirrorActionKind::StopReplication: n.targetPending = false; break;
		default: break;
		}
	}

	/* Printed into the output, so a transcript can never bless a violation silently. */
	void checkInvariants(std::vector<std::string> &lines) const
	{
		for (const Node &n : nodes_) {
			if (!n.sm)
				continue;
			bool serving = n.sm->serving();
			if (n.vip && !serving)
				lines.push_back(fmt::format("!! {} holds the VIP in {}", n.name,
					stateLabel(n.sm->state(), n.sm->phase())));
			/* An isolated primary drops the VIP first, then stops its app. */
			if (!n.vip && serving && n.sm->phase() != MirrorPhase::Stopping)
				lines.push_back(fmt::format("!! {} is {} without the VIP", n.name,
					stateLabel(n.sm->state(), n.sm->phase())));
		}
		if (config_.witness && nodes_[0].vip && nodes_[1].vip)
			lines.push_back("!! both nodes hold the VIP although a witness is configured");
	}

	MirrorConfig config_;
	Node nodes_[2];
	uint64_t now_ = 0;
	bool linkUp_ = true;
	int lastError_ = 0;
	std::vector<std::string> out_;
};

} /* namespace sk::test */
