/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tls_pipe: TLS 1.3 with an external PSK (RFC 8446 section 2.2, psk_dhe_ke: the
 * key exchange still runs ECDHE, so a later leak of the cluster key does not
 * decrypt recorded traffic), bridged to a socketpair by a pump thread.
 *
 * The PSK is HMAC-SHA256(cluster key, kPskLabel); its identity names the scheme
 * only. Both sides use TLS_AES_128_GCM_SHA256, the suite the PSK is bound to.
 */
#include "replication/tls_pipe.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <system_error>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "replication/stream.h"

namespace sk::repl {

namespace {

LogCategory kLog("tls");

constexpr char kPskLabel[] = "sk replication tls13 psk v1";
constexpr char kPskIdentity[] = "sk-psk-1";
/* TLS_AES_128_GCM_SHA256 */
constexpr unsigned char kCipherId[] = { 0x13, 0x01 };
constexpr size_t kPumpBuffer = 64 * 1024;

std::atomic<uint64_t> gHandshakes{ 0 }, gFailures{ 0 }, gLive{ 0 };

struct Psk {
	unsigned char bytes[32];
	size_t size = 0;
};

Psk derivePsk(const ClusterKey &key)
{
	Psk psk;
	if (!EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.bytes().data(), key.bytes().size(),
		       reinterpret_cast<const unsigned char *>(kPskLabel), sizeof(kPskLabel) - 1, psk.bytes,
		       sizeof(psk.bytes), &psk.size))
		psk.size = 0;
	return psk;
}

/* The PSK of this connection, stored in the SSL object's ex data. */
int pskIndex()
{
	static int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
	return index;
}

SSL_SESSION *pskSession(SSL *ssl)
{
	const auto *psk = static_cast<const Psk *>(SSL_get_ex_data(ssl, pskIndex()));
	const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, kCipherId);
	if (!psk || !psk->size || !cipher)
		return nullptr;
	SSL_SESSION *s = SSL_SESSION_new();
	if (!s)
		return nullptr;
	if (!SSL_SESSION_set1_master_key(s, psk->bytes, psk->size) || !SSL_SESSION_set_cipher(s, cipher) ||
	    !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return nullptr;
	}
	return s;
}

int useSession(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idLen, SSL_SESSION **sess)
{
	SSL_SESSION *s = pskSession(ssl);
	if (!s)
		return 0;
	if (md && !EVP_MD_is_a(md, "SHA256")) {
		SSL_SESSION_free(s);
		*sess = nullptr;
		return 1;
	}
	*id = reinterpret_cast<const unsigned char *>(kPskIdentity);
	*idLen = sizeof(kPskIdentity) - 1;
	*sess = s;
	return 1;
}

int findSession(SSL *ssl, const unsigned char *id, size_t idLen, SSL_SESSION **sess)
{
	if (idLen != sizeof(kPskIdentity) - 1 || memcmp(id, kPskIdentity, idLen) != 0) {
		*sess = nullptr;	/* unknown identity: the handshake fails */
		return 1;
	}
	*sess = pskSession(ssl);
	return *sess ? 1 : 0;
}

SSL_CTX *context(bool server)
{
	static SSL_CTX *contexts[2] = {};
	static std::once_flag once[2];
	std::call_once(once[server], [server] {
		SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
		if (!ctx)
			return;
		SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
		SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
		if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")) {
			SSL_CTX_free(ctx);
			return;
		}
		SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
		/* No resumption tickets: every connection proves the key afresh. */
		SSL_CTX_set_num_tickets(ctx, 0);
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		if (server)
			SSL_CTX_set_psk_find_session_callback(ctx, findSession);
		else
			SSL_CTX_set_psk_use_session_callback(ctx, useSession);
		contexts[server] = ctx;
	});
	return contexts[server];
}

std::string sslError()
{
	unsigned long e = ERR_get_error();
	if (!e)
		return errno ? strerror(errno) : "connection closed";
	char buf[256];
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

/* Waits for what SSL asked (want read / want write) on fd, until deadline. */
bool waitFor(int fd, int sslErr, std::chrono::steady_clock::time_point deadline)
{
	for (;;) {
		auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
										  std::chrono::steady_clock::now());
		if (left.count() <= 0)
			return false;
		pollfd p{ fd, static_cast<short>(sslErr == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0 };
		int r = poll(&p, 1, static_cast<int>(left.count()));
		if (r > 0)
			return true;
		if (r == 0 || errno != EINTR)
			return false;
	}
}

/*
 * Moves bytes until either side ends: plaintext from the app is written to TLS,
 * records read from TLS go to the app. Both fds are non-blocking; it sleeps in
 * poll() on what each direction waits for.
 */
void pump(SSL *ssl, int tcp, int plain)
{
	std::vector<uint8_t> toNet, toApp;
	size_t netOff = 0, appOff = 0;
	std::vector<uint8_t> buf(kPumpBuffer);
	bool netWantsWrite = false, netWantsRead = false, done = false, appGone = false;
	/* An SSL call made no progress: wait for the socket, or the connection is over
	 * (close_notify, EOF, reset or a bad record). */
	auto stalled = [&](int r) {
		int e = SSL_get_error(ssl, r);
		if (e == SSL_ERROR_WANT_WRITE)
			netWantsWrite = true;
		else if (e == SSL_ERROR_WANT_READ)
			netWantsRead = true;
		else
			done = true;
	};
	while (!done) {
		bool progress = true;
		while (progress && !done) {
			progress = false;
			if (netOff == toNet.size()) {
				ssize_t n = read(plain, buf.data(), buf.size());
				if (n > 0) {
					toNet.assign(buf.begin(), buf.begin() + n);
					netOff = 0;
					progress = true;
				} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
					done = true;	/* the app closed or shut its end */
					break;
				}
			}
			netWantsWrite = netWantsRead = false;
			if (netOff < toNet.size()) {
				int r = SSL_write(ssl, toNet.data() + netOff, static_cast<int>(toNet.size() - netOff));
				if (r > 0) {
					netOff += static_cast<size_t>(r);
					progress = true;
				} else {
					stalled(r);
				}
			}
			if (appOff == toApp.size()) {
				int r = SSL_read(ssl, buf.data(), static_cast<int>(buf.size()));
				if (r > 0) {
					toApp.assign(buf.begin(), buf.begin() + r);
					appOff = 0;
					progress = true;
				} else {
					stalled(r);
				}
			}
			if (appOff < toApp.size()) {
				ssize_t n = write(plain, toApp.data() + appOff, toApp.size() - appOff);
				if (n > 0) {
					appOff += static_cast<size_t>(n);
					progress = true;
				} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
					done = true;
				}
			}
		}
		if (done)
			break;
		/*
		 * The app side: always watched for its shutdown or close (ends the
		 * connection at once, even with records still to write); readable when
		 * there is room for more plaintext, writable when records wait for it.
		 * The TLS side: readable when decrypted data has somewhere to go (or a
		 * write needs a read), writable when a write waits; not watched at all
		 * otherwise (a hang-up there must not spin this loop while the app is full).
		 */
		pollfd fds[2] = { { plain, POLLRDHUP, 0 }, { tcp, 0, 0 } };
		if (netOff == toNet.size())
			fds[0].events |= POLLIN;
		if (appOff < toApp.size())
			fds[0].events |= POLLOUT;
		if (appOff == toApp.size() || netWantsRead)
			fds[1].events |= POLLIN;
		if (netWantsWrite)
			fds[1].events |= POLLOUT;
		if (!fds[1].events)
			fds[1].fd = -1;
		if (poll(fds, 2, -1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents & (POLLERR | POLLNVAL))
			break;
		/* The app shut its end: one more pass sends what it wrote last (a Fail
		 * frame before a close), then the connection ends, sent or not. */
		if (fds[0].revents & (POLLHUP | POLLRDHUP)) {
			if (appGone)
				break;
			appGone = true;
		}
		if (fds[1].revents & (POLLERR | POLLNVAL))
			break;
	}
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(tcp);
	close(plain);
	gLive--;
}

} /* namespace */

Result<int> tlsWrap(int tcpFd, const ClusterKey &key, bool server, std::chrono::milliseconds timeout)
{
	auto fail = [&](const std::string &why) -> Result<int> {
		gFailures++;
		close(tcpFd);
		return makeError(-ECONNREFUSED, "TLS " + std::string(server ? "accept" : "connect") + ": " + why);
	};
	SSL_CTX *ctx = context(server);
	if (!ctx)
		return fail("no TLS context: " + sslError());
	auto psk = std::make_unique<Psk>(derivePsk(key));
	if (!psk->size)
		return fail("cannot derive the pre-shared key");
	tuneSocket(tcpFd);
	int fl = fcntl(tcpFd, F_GETFL);
	if (fl < 0 || fcntl(tcpFd, F_SETFL, fl | O_NONBLOCK) < 0)
		return fail(strerror(errno));
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return fail(sslError());
	SSL_set_ex_data(ssl, pskIndex(), psk.get());
	if (!SSL_set_fd(ssl, tcpFd)) {
		SSL_free(ssl);
		return fail(sslError());
	}
	auto deadline = std::chrono::steady_clock::now() + timeout;
	for (;;) {
		ERR_clear_error();
		errno = 0;
		int r = server ? SSL_accept(ssl) : SSL_connect(ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(ssl, r);
		if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) || !waitFor(tcpFd, e, deadline)) {
			std::string why = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? "handshake timed out"
												   : sslError();
			SSL_free(ssl);
			return fail(why + " (same cluster key on both nodes?)");
		}
	}
	/* The session keys are derived: the PSK is no longer needed. */
	SSL_set_ex_data(ssl, pskIndex(), nullptr);
	OPENSSL_cleanse(psk->bytes, sizeof(psk->bytes));
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		SSL_free(ssl);
		return fail(strerror(errno));
	}
	fl = fcntl(sv[1], F_GETFL);
	fcntl(sv[1], F_SETFL, fl | O_NONBLOCK);
	logDebug(kLog, "TLS 1.3 {} established ({})", server ? "accept" : "connect", SSL_get_cipher_name(ssl));
	gLive++;
	try {
		std::thread(pump, ssl, tcpFd, sv[1]).detach();
	} catch (const std::system_error &e) {
		gLive--;
		SSL_free(ssl);
		close(sv[0]);
		close(sv[1]);
		return fail(std::string("no pump thread: ") + e.what());
	}
	gHandshakes++;
	return sv[0];
}

TlsCounters tlsCounters()
{
	return { gHandshakes.load(), gFailures.load(), gLive.load() };
}

} /* namespace sk::repl */
