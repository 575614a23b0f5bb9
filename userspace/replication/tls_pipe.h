/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TLS 1.3 for replication connections (`"tls": true`): the TCP socket is wrapped
 * in TLS with an external pre-shared key derived from the cluster key (no
 * certificates to manage: whoever holds the key file is a member), and the
 * caller gets the plaintext end of a socketpair. One pump thread per connection
 * owns the TLS session and moves bytes both ways, so the stream's separate
 * reader and writer threads keep working on a plain fd (an OpenSSL session must
 * not be read and written from two threads at once). Frames stay HMAC'd inside.
 */
#pragma once

#include <chrono>
#include <cstdint>

#include "cluster/key.h"
#include "core/result.h"

namespace sk::repl {

struct TlsCounters {
	uint64_t handshakes = 0;	/* completed */
	uint64_t failures = 0;		/* handshakes refused or timed out */
	uint64_t live = 0;		/* pumps running */
};

/*
 * Takes ownership of tcpFd (closed on failure too). Runs the handshake (server or
 * client side) within timeout; on success returns the plaintext fd (a unix
 * stream socket: shutdown() or close() on it ends the TLS connection, and the
 * peer closing ends it). A peer with another key fails the handshake.
 */
Result<int> tlsWrap(int tcpFd, const ClusterKey &key, bool server, std::chrono::milliseconds timeout);

TlsCounters tlsCounters();

} /* namespace sk::repl */
