// TLS to clients with OpenSSL, through memory BIOs: pgvalve's own code keeps reading and writing
// the TCP socket (non-blocking reads, SocketWriter's backlog), and the TLS layer only turns
// ciphertext into plaintext and back. So a TLS client takes the same paths as a plain one, and
// what TLS holds per client is bounded by one record: ciphertext is read from the socket only
// when OpenSSL needs more to produce plaintext.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "config/config.h"

namespace pgvalve::proxy {

// The server side's certificate, key and settings (tls.*): TLS 1.2 and later only, no
// renegotiation, no compression; with tls.client_ca, a client certificate signed by that CA is
// required. Made at start and again on reload; a client keeps the one it was accepted with.
class TlsServerContext {
 public:
  // Null and `error` set when a file cannot be read or the key does not match the certificate.
  static std::shared_ptr<const TlsServerContext> make(const config::TlsConfig& tls,
                                                      std::string& error);
  ~TlsServerContext();
  TlsServerContext(const TlsServerContext&) = delete;
  TlsServerContext& operator=(const TlsServerContext&) = delete;

  SSL_CTX* native() const { return ctx_; }
  config::TlsMode mode() const { return mode_; }
  // "CN=..., expires ..." for the log.
  const std::string& description() const { return description_; }

 private:
  TlsServerContext() = default;
  SSL_CTX* ctx_ = nullptr;
  config::TlsMode mode_ = config::TlsMode::Disable;
  std::string description_;
};

// pgvalve's side of TLS to PostgreSQL (server_tls, server_tls_ca), with libpq's sslmode
// meanings: prefer and require encrypt without checking the certificate, verify-ca checks it
// against server_tls_ca (or the system's CAs), verify-full also checks that it names the host.
class TlsClientContext {
 public:
  static std::shared_ptr<const TlsClientContext> make(config::ServerTlsMode mode,
                                                      const std::string& ca_file,
                                                      std::string& error);
  ~TlsClientContext();
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;

  SSL_CTX* native() const { return ctx_; }
  config::ServerTlsMode mode() const { return mode_; }

 private:
  TlsClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
  config::ServerTlsMode mode_ = config::ServerTlsMode::Disable;
};

// One TLS session: a client's (pgvalve accepts) or a server link's (pgvalve connects).
class TlsChannel {
 public:
  explicit TlsChannel(std::shared_ptr<const TlsServerContext> context);
  // Connecting to `host`: sent as SNI, and with verify-full the certificate must name it.
  TlsChannel(std::shared_ptr<const TlsClientContext> context, const std::string& host);
  ~TlsChannel();
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  enum class Status {
    Ok,         // progress (handshake done, or plaintext produced)
    WantInput,  // feed more ciphertext from the socket first
    Closed,     // the peer sent close_notify
    Failed,     // a TLS error; error() says which
  };

  // Ciphertext read from the socket.
  void feed(std::span<const char> ciphertext);
  // Whether OpenSSL holds ciphertext it has not turned into plaintext yet, or plaintext not
  // read yet: the next read may succeed without the socket.
  bool buffered() const;

  Status handshake();
  // Plaintext into `into`; `n` is set on Ok.
  Status read(std::span<char> into, std::size_t& n);
  // Encrypts `plaintext`; the records are appended to `out` by take_output().
  bool write(std::string_view plaintext);
  // Ciphertext to send (handshake messages, records, alerts), appended to `out`.
  void take_output(std::string& out);
  bool has_output() const;

  // For a client between transactions: ciphertext buffers that a large message grew past
  // kKeptBioBytes are let go (an idle client would otherwise keep up to 1 MiB each).
  void trim();
  static constexpr std::size_t kKeptBioBytes = 4096;

  const std::string& error() const { return error_; }
  std::string version() const;  // "TLSv1.3"
  std::string cipher() const;
  std::string describe() const { return version() + "/" + cipher(); }  // SHOW CLIENTS, SERVERS

 private:
  Status fail(int ret);
  void open(SSL_CTX* ctx);  // the SSL object and its two memory BIOs

  std::shared_ptr<const void> context_;  // keeps the SSL_CTX alive
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;   // ciphertext from the client (owned by ssl_)
  BIO* out_ = nullptr;  // ciphertext to the client (owned by ssl_)
  std::string error_;
};

}  // namespace pgvalve::proxy
