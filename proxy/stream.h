// A peer's byte stream — a client's, or a server link's: its TCP socket, and TLS over it once
// negotiated (SSLRequest answered 'S'). Everything above reads and writes plaintext through
// this; with TLS the socket carries ciphertext made and read by TlsChannel (memory BIOs), so the
// session's non-blocking reads and SocketWriter's backlog work the same for both.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "proxy/io_util.h"
#include "proxy/tls.h"
#include "session/actions.h"

namespace pgvalve::proxy {

// `socket` leaves its event loop for `context`'s and stays non-blocking. Nothing may wait on it.
// On failure it is closed.
void move_socket(Socket& socket, asio::io_context& context, error_code& ec);

class Stream {
 public:
  explicit Stream(Socket socket) : socket_(std::move(socket)) {}
  explicit Stream(asio::io_context& context) : socket_(context) {}

  Socket& socket() { return socket_; }
  Socket::executor_type get_executor() { return socket_.get_executor(); }
  void cancel(error_code& ec) { socket_.cancel(ec); }  // for Deadline
  void close(error_code& ec) { socket_.close(ec); }
  // The socket leaves this event loop for `context`'s (a client or a server connection moved to
  // another worker), with its TLS state; it stays non-blocking. Nothing may wait on it. On
  // failure the stream is closed.
  void move_to(asio::io_context& context, error_code& ec) { move_socket(socket_, context, ec); }
  const TlsChannel* tls() const { return tls_.get(); }
  // Closed, and back to plaintext for a new connection on the same socket object.
  void reset(error_code& ec) {
    tls_.reset();
    socket_.close(ec);
  }

  // The handshake, after 'S' went out. False with `error` set when it fails (the client is
  // then sent whatever alert OpenSSL made, best effort).
  asio::awaitable<bool> start_tls(std::shared_ptr<const TlsServerContext> context,
                                  std::string& error);
  // The same as the connecting side, towards PostgreSQL at `host`.
  asio::awaitable<bool> start_tls_client(std::shared_ptr<const TlsClientContext> context,
                                         const std::string& host, std::string& error);

  // For the login and admin-console coroutines: wait for plaintext, write it all.
  asio::awaitable<std::size_t> async_read_some(
      asio::mutable_buffer into, decltype(await_ec(std::declval<error_code&>())) token);
  asio::awaitable<bool> write_all(std::string_view plaintext);

  // For the event handlers: plaintext that is ready now; would_block when there is none.
  std::size_t read_some(asio::mutable_buffer into, error_code& ec);
  // Plaintext may be ready without the socket becoming readable (TLS holds a record).
  bool buffered() const { return tls_ && tls_->buffered(); }
  // Between transactions: TLS buffers a large message grew are let go.
  void trim() {
    if (tls_) tls_->trim();
  }
  // With TLS: `chunks` then `tail` encrypted into `out`, a buffer of this thread that stays
  // valid until the next seal() or take_output(). False when TLS failed. Without TLS: not called.
  bool seal(std::span<const session::Chunk> chunks, std::string_view tail, std::string_view& out);
  // Ciphertext made while reading (alerts, TLS 1.3 key updates) that must go out.
  bool has_output() const { return tls_ && tls_->has_output(); }
  std::string_view take_output();

 private:
  asio::awaitable<bool> handshake(std::string& error);

  Socket socket_;
  std::unique_ptr<TlsChannel> tls_;
};

// The coroutines' write_all, for a client stream (plaintext in, TLS applied when on).
inline asio::awaitable<bool> write_all(Stream& stream, std::string_view bytes) {
  return stream.write_all(bytes);
}

}  // namespace pgvalve::proxy
