#include "proxy/stream.h"

#include <unistd.h>

#include <array>

#include <boost/asio/async_result.hpp>

#include "proxy/arrival_wait.h"

namespace pgvalve::proxy {

namespace {

// Ciphertext read from a socket on its way into OpenSSL, and records on their way out. Per
// thread: used only between two suspension points (never across a co_await).
constexpr std::size_t kRecordBytes = 16 * 1024 + 512;

std::array<char, kRecordBytes>& raw_scratch() {
  thread_local std::array<char, kRecordBytes> buffer;
  return buffer;
}

std::string& plain_scratch() {
  thread_local std::string s;
  return s;
}

std::string& cipher_scratch() {
  thread_local std::string s;
  return s;
}

// One TLS read as a socket read would end: false when OpenSSL needs more ciphertext first.
bool settled(TlsChannel::Status status, error_code& ec) {
  switch (status) {
    case TlsChannel::Status::Ok:
      ec = {};
      return true;
    case TlsChannel::Status::Closed:
      ec = asio::error::eof;
      return true;
    case TlsChannel::Status::Failed:
      ec = asio::error::connection_aborted;
      return true;
    case TlsChannel::Status::WantInput:
      return false;
  }
  return false;
}

}  // namespace

void move_socket(Socket& socket, asio::io_context& context, error_code& ec) {
  error_code ignored;
  const auto protocol = socket.local_endpoint(ec).protocol();
  if (ec) {
    socket.close(ignored);
    return;
  }
  // Leaves this loop's epoll; the new socket joins the other loop's (no bytes are lost: they
  // wait in the kernel for the first read there).
  const auto fd = socket.release(ec);
  if (ec) {
    socket.close(ignored);
    return;
  }
  Socket moved(context);
  moved.assign(protocol, fd, ec);
  if (ec) {
    ::close(fd);
    return;
  }
  // Asio forgets with the release that the socket is non-blocking: reads and writes that find
  // nothing to do would otherwise wait in poll(), stopping the whole worker.
  moved.non_blocking(true, ec);
  if (ec) return;  // `moved` closes the descriptor
  socket = std::move(moved);
}

asio::awaitable<bool> Stream::start_tls(std::shared_ptr<const TlsServerContext> context,
                                        std::string& error) {
  tls_ = std::make_unique<TlsChannel>(std::move(context));
  co_return co_await handshake(error);
}

asio::awaitable<bool> Stream::start_tls_client(std::shared_ptr<const TlsClientContext> context,
                                               const std::string& host, std::string& error) {
  tls_ = std::make_unique<TlsChannel>(std::move(context), host);
  co_return co_await handshake(error);
}

asio::awaitable<bool> Stream::handshake(std::string& error) {
  std::string out;
  std::string in(kRecordBytes, '\0');
  for (;;) {
    const auto status = tls_->handshake();
    out.clear();
    tls_->take_output(out);
    if (!out.empty()) {
      error_code ec;
      co_await asio::async_write(socket_, asio::buffer(out), await_ec(ec));
      if (ec) {
        error = "writing the handshake: " + ec.message();
        co_return false;
      }
    }
    if (status == TlsChannel::Status::Ok) co_return true;
    if (status != TlsChannel::Status::WantInput) {
      error = status == TlsChannel::Status::Closed ? "closed during the handshake" : tls_->error();
      co_return false;
    }
    error_code ec;
    const std::size_t n = co_await socket_.async_read_some(asio::buffer(in), await_ec(ec));
    if (ec) {
      error = "reading the handshake: " + ec.message();
      co_return false;
    }
    tls_->feed({in.data(), n});
  }
}

// An Asio operation completes through a handler posted to the event loop, even when its
// speculative read or write succeeded at once, and the loop asks epoll (a system call) between
// posted handlers: a login's few reads and writes paid that each time. On a non-blocking
// plaintext socket the coroutines read and write directly and wait only when the kernel has
// nothing for them (an arrival wait: the socket is registered already, and a read just found it
// empty).
namespace {

auto wait_for_arrival(Socket& socket, decltype(await_ec(std::declval<error_code&>())) token) {
  return asio::async_initiate<decltype(token), void(error_code)>(
      [](auto handler, Socket* s) { async_wait_for_arrival(*s, std::move(handler)); }, token,
      &socket);
}

}  // namespace

asio::awaitable<std::size_t> Stream::async_read_some(
    asio::mutable_buffer into, decltype(await_ec(std::declval<error_code&>())) token) {
  error_code& ec = token.ec_;
  if (!tls_ && socket_.non_blocking()) {
    for (;;) {
      const std::size_t n = socket_.read_some(into, ec);
      if (ec != asio::error::would_block) co_return n;
      co_await wait_for_arrival(socket_, await_ec(ec));
      if (ec) co_return 0;
    }
  }
  if (!tls_) {
    const std::size_t n = co_await socket_.async_read_some(into, await_ec(ec));
    co_return n;
  }
  std::string raw;
  for (;;) {
    std::size_t n = 0;
    const auto status = tls_->read({static_cast<char*>(into.data()), into.size()}, n);
    if (tls_->has_output()) {
      std::string out;
      tls_->take_output(out);
      error_code wec;
      co_await asio::async_write(socket_, asio::buffer(out), await_ec(wec));
    }
    if (settled(status, ec)) co_return ec ? 0 : n;
    if (raw.empty()) raw.resize(kRecordBytes);
    const std::size_t got = co_await socket_.async_read_some(asio::buffer(raw), await_ec(ec));
    if (ec) co_return 0;
    tls_->feed({raw.data(), got});
  }
}

asio::awaitable<bool> Stream::write_all(std::string_view plaintext) {
  error_code ec;
  if (!tls_ && socket_.non_blocking()) {
    // A login's answers fit the socket's buffer: written at once; a rest waits for room.
    while (!plaintext.empty()) {
      const std::size_t n =
          socket_.write_some(asio::buffer(plaintext.data(), plaintext.size()), ec);
      if (ec == asio::error::would_block) break;
      if (ec) co_return false;
      plaintext.remove_prefix(n);
    }
    if (plaintext.empty()) co_return true;
  }
  if (!tls_) {
    co_await asio::async_write(socket_, asio::buffer(plaintext.data(), plaintext.size()),
                               await_ec(ec));
    co_return !ec;
  }
  std::string out;
  if (!tls_->write(plaintext)) co_return false;
  tls_->take_output(out);
  co_await asio::async_write(socket_, asio::buffer(out), await_ec(ec));
  co_return !ec;
}

std::size_t Stream::read_some(asio::mutable_buffer into, error_code& ec) {
  if (!tls_) return socket_.read_some(into, ec);
  for (;;) {
    std::size_t n = 0;
    if (settled(tls_->read({static_cast<char*>(into.data()), into.size()}, n), ec)) {
      return ec ? 0 : n;
    }
    // OpenSSL needs another record: read what the socket has (would_block when nothing).
    auto& raw = raw_scratch();
    const std::size_t got = socket_.read_some(asio::buffer(raw), ec);
    if (ec) return 0;
    tls_->feed({raw.data(), got});
  }
}

bool Stream::seal(std::span<const session::Chunk> chunks, std::string_view tail,
                  std::string_view& out) {
  auto& plain = plain_scratch();
  plain.clear();
  for (const auto& c : chunks)
    plain.append(c.data, c.size);
  plain.append(tail);
  auto& cipher = cipher_scratch();
  cipher.clear();
  // Whatever a read left to send goes first, in order.
  tls_->take_output(cipher);
  if (!tls_->write(plain)) return false;
  tls_->take_output(cipher);
  out = cipher;
  return true;
}

std::string_view Stream::take_output() {
  auto& cipher = cipher_scratch();
  cipher.clear();
  if (tls_) tls_->take_output(cipher);
  return cipher;
}

}  // namespace pgvalve::proxy
