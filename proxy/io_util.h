// Small I/O helpers shared by the coroutines of the proxy (login, server login, the admin
// console, pgvalve's own short queries): the socket type, reading one whole frame, writing bytes,
// a deadline that cancels a socket's pending operations, and TCP keepalive.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string_view>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "protocol/frame.h"
#include "session/input_buffer.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
using error_code = boost::system::error_code;

// Client and server sockets: bound to one worker's io_context, so completions dispatch without
// the type-erased executor's indirection.
using Socket = asio::basic_stream_socket<tcp, asio::io_context::executor_type>;

inline auto await_ec(error_code& ec) {
  return asio::redirect_error(asio::use_awaitable, ec);
}

// Cancels the socket's pending operations if not disarmed before `timeout`, and again every
// 20 ms until disarmed: a read that completed just before the first cancel is not cancelled,
// and the coroutine that reads on would otherwise wait past the deadline.
class Deadline {
 public:
  template <typename Stream>
  Deadline(Stream& socket, std::chrono::milliseconds timeout)
      : state_(std::make_shared<State>(socket.get_executor())) {
    state_->timer.expires_after(timeout);
    arm(state_, socket);
  }
  ~Deadline() { disarm(); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  void disarm() {
    if (state_->disarmed) return;
    state_->disarmed = true;
    state_->timer.cancel();
  }
  bool expired() const { return state_->expired; }

 private:
  struct State {
    template <typename Executor>
    explicit State(const Executor& ex) : timer(ex) {}
    asio::steady_timer timer;
    bool disarmed = false;
    bool expired = false;
  };

  template <typename Stream>
  static void arm(const std::shared_ptr<State>& state, Stream& socket) {
    state->timer.async_wait([s = state, &socket](const error_code& ec) {
      if (ec || s->disarmed) return;
      s->expired = true;
      error_code ignored;
      socket.cancel(ignored);
      s->timer.expires_after(std::chrono::milliseconds(20));
      arm(s, socket);
    });
  }

  std::shared_ptr<State> state_;
};

enum class ReadStatus { Ok, Closed, Invalid, NoMemory, TimedOut };

// Reads until `in` holds a whole frame at its front and returns it in `frame` (valid until `in`
// is consumed). Invalid when the bytes are not a frame or exceed `max_bytes`; the buffer grows
// only as bytes arrive. With `partial_limit`, a message begun must be whole within it
// (TimedOut); waiting for the next message has no limit.
template <typename Stream>
asio::awaitable<ReadStatus> read_frame(Stream& socket, session::InputBuffer& in,
                                       std::size_t max_bytes, protocol::Frame& frame,
                                       const char** why = nullptr,
                                       std::chrono::milliseconds partial_limit = {}) {
  std::optional<Deadline> deadline;
  for (;;) {
    auto r = protocol::decode_frame(in.readable(), max_bytes);
    if (r.status == protocol::DecodeStatus::Ok) {
      frame = r.frame;
      co_return ReadStatus::Ok;
    }
    if (r.status == protocol::DecodeStatus::Invalid) {
      if (why) *why = r.error;
      co_return ReadStatus::Invalid;
    }
    if (partial_limit.count() > 0 && !in.empty() && !deadline)
      deadline.emplace(socket, partial_limit);
    auto space = in.prepare();
    if (space.empty()) co_return ReadStatus::NoMemory;
    error_code ec;
    std::size_t n =
        co_await socket.async_read_some(asio::buffer(space.data(), space.size()), await_ec(ec));
    if (ec) co_return deadline && deadline->expired() ? ReadStatus::TimedOut : ReadStatus::Closed;
    in.commit(n);
  }
}

template <typename Stream>
asio::awaitable<bool> write_all(Stream& socket, std::string_view bytes) {
  error_code ec;
  co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()), await_ec(ec));
  co_return !ec;
}

}  // namespace pgvalve::proxy
