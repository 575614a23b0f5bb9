/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the daemon needs of a running module (mirror or farm): admin commands,
 * its part of the status document, and an orderly shutdown.
 */
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "api/control.h"
#include "cluster/heartbeat.h"

namespace sk {

class ModuleRuntime
{
public:
	virtual ~ModuleRuntime() = default;

	virtual const std::string &name() const = 0;

	/*
	 * An admin command ("start", "stop", "restart", "prim", "second", "swap",
	 * "primforce", "state"); reply gets the result or a refusal with its reason.
	 */
	virtual void command(const std::string &cmd, const nlohmann::json &request, ControlResponder reply) = 0;

	/* This module's entry in the status document. */
	virtual nlohmann::json status() const = 0;

	/* skd is stopping: stop the application (scripts, VIP) and call done once. */
	virtual void shutdown(std::function<void()> done) = 0;

	/* An authenticated heartbeat for this module from a peer, on a heartbeat network. */
	virtual void onHeartbeat(NodeId peer, const PeerHeartbeat &hb, size_t network) = 0;

	/* The peer's skd is confirmed dead (peer link broken + heartbeat port unreachable). */
	virtual void onPeerDead(NodeId peer, const std::string &why) = 0;

	/* Serving state for GET /health/<module>: PRIM, ALONE or UP. */
	virtual bool serving() const = 0;

	/* Anything but STOP: its configuration must not change under it. */
	virtual bool running() const = 0;
};

} /* namespace sk */
