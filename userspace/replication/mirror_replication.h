/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SyncReplication: the mirror module's replication in sync mode. Source: FUSE capture
 * over each replicated dir feeding an acked TCP stream, with a hash-based resync of
 * the target first. Target: read-only over-mount, manifest, receiver + applier.
 */
#pragma once

#include <memory>
#include <string>

#include "core/config.h"
#include "core/event_loop.h"
#include "core/result.h"
#include "mirror/mirror_module.h"

namespace sk {

/* Everything SyncReplication borrows from the daemon; all must outlive it. */
struct SyncReplicationContext {
	EventLoop *loop = nullptr;
	const ClusterConfig *cluster = nullptr;
	const NodeConfig *self = nullptr;
	const NodeConfig *peer = nullptr;
	const ModuleConfig *module = nullptr;
	std::string stateDir;		/* <state_dir>/<module>: quarantine/ lives here */
};

/*
 * Wire layout: replicated dir i uses TCP port ports.replication + i on self's address
 * of the first cluster network (the source listens, the target dials). Each port
 * carries, per target session, one resync control connection (resync.h) and one
 * stream connection (stream.h), told apart by their first frame.
 * Callbacks run on ctx.loop's thread. Needs root (FUSE mounts).
 */
Result<std::unique_ptr<MirrorReplication>> makeSyncReplication(const SyncReplicationContext &ctx);

} /* namespace sk */
