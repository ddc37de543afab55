// Small coroutine helpers shared by the sessions: read one whole frame, write bytes, and a
// deadline that cancels a socket's pending operations when it expires.
#pragma once

#include <chrono>
#include <memory>
#include <string_view>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "protocol/frame.h"
#include "proxy/byte_buffer.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
using error_code = boost::system::error_code;

inline auto await_ec(error_code& ec) {
  return asio::redirect_error(asio::use_awaitable, ec);
}

enum class ReadStatus { Ok, Closed, Invalid };

// Reads until `in` holds a whole frame at its front and returns it in `frame` (valid until
// `in` is consumed). Invalid when the bytes are not a frame or exceed `max_bytes`.
inline asio::awaitable<ReadStatus> read_frame(tcp::socket& socket, ByteBuffer& in,
                                              std::size_t max_bytes, protocol::Frame& frame,
                                              const char** why = nullptr) {
  for (;;) {
    if (in.has_storage()) {
      auto r = protocol::decode_frame(in.readable(), max_bytes);
      if (r.status == protocol::DecodeStatus::Ok) {
        frame = r.frame;
        co_return ReadStatus::Ok;
      }
      if (r.status == protocol::DecodeStatus::Invalid) {
        if (why) *why = r.error;
        co_return ReadStatus::Invalid;
      }
      error_code ec;
      std::size_t n = co_await socket.async_read_some(in.prepare(r.needed), await_ec(ec));
      if (ec) co_return ReadStatus::Closed;
      in.commit(n);
    } else {
      error_code ec;
      std::size_t n = co_await socket.async_read_some(in.prepare(), await_ec(ec));
      if (ec) co_return ReadStatus::Closed;
      in.commit(n);
    }
  }
}

inline asio::awaitable<bool> write_all(tcp::socket& socket, std::string_view bytes) {
  error_code ec;
  co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()), await_ec(ec));
  co_return !ec;
}

// Cancels the socket's pending operations if not disarmed before `timeout`.
class Deadline {
 public:
  Deadline(tcp::socket& socket, std::chrono::milliseconds timeout)
      : state_(std::make_shared<State>(socket.get_executor())) {
    state_->timer.expires_after(timeout);
    state_->timer.async_wait([s = state_, &socket](const error_code& ec) {
      if (!ec && !s->disarmed) {
        s->expired = true;
        error_code ignored;
        socket.cancel(ignored);
      }
    });
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
    explicit State(const asio::any_io_executor& ex) : timer(ex) {}
    asio::steady_timer timer;
    bool disarmed = false;
    bool expired = false;
  };
  std::shared_ptr<State> state_;
};

}  // namespace pgvalve::proxy
