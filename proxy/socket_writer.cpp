#include "proxy/socket_writer.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include <boost/asio/write.hpp>

namespace pgvalve::proxy {

namespace {

// Buffers of the write being attempted, reused per thread so the usual write allocates nothing.
std::vector<asio::const_buffer>& scratch_buffers() {
  thread_local std::vector<asio::const_buffer> buffers;
  return buffers;
}

// One buffer, the usual forwarded answer or request, with one send() and without glibc's wrapper:
// that one is a cancellation point, which turns the thread's cancellation on and off around the
// call (two atomic operations), and pgvalve never cancels a thread.
std::size_t send_one(Socket& socket, asio::const_buffer buffer, error_code& ec) {
  long n;
  do {
    n = ::syscall(SYS_sendto, socket.native_handle(), buffer.data(), buffer.size(),
                  MSG_NOSIGNAL | MSG_DONTWAIT, nullptr, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    ec = error_code(errno, asio::error::get_system_category());
    return 0;
  }
  ec = {};
  return static_cast<std::size_t>(n);
}

}  // namespace

SocketWriter::Result SocketWriter::write(Socket& socket, std::span<const session::Chunk> chunks,
                                         std::string_view tail) {
  if (state_ && (state_->failed || state_->abandoned)) return Result::Failed;
  auto& buffers = scratch_buffers();
  buffers.clear();
  std::size_t total = 0;
  for (const auto& c : chunks) {
    if (c.size == 0) continue;
    buffers.emplace_back(c.data, c.size);
    total += c.size;
  }
  if (!tail.empty()) {
    buffers.emplace_back(tail.data(), tail.size());
    total += tail.size();
  }
  if (total == 0) return Result::Done;
  std::size_t written = 0;
  if (!busy()) {
    error_code ec;
    written = buffers.size() == 1 ? send_one(socket, buffers.front(), ec)
                                  : socket.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      written = 0;
    } else if (ec) {
      if (!state_) state_ = std::make_shared<State>();
      state_->failed = true;
      return Result::Failed;
    }
    if (written == total) return Result::Done;
  }
  if (!state_) state_ = std::make_shared<State>();
  const bool idle = state_->sending.empty();
  // Copy what the kernel did not take, in order.
  std::size_t skip = written;
  for (const auto& b : buffers) {
    const auto* data = static_cast<const char*>(b.data());
    if (skip >= b.size()) {
      skip -= b.size();
      continue;
    }
    state_->queued.append(data + skip, b.size() - skip);
    skip = 0;
  }
  if (idle) write_backlog(state_, socket);
  return Result::Backlog;
}

void SocketWriter::write_backlog(std::shared_ptr<State> state, Socket& socket) {
  state->sending.swap(state->queued);
  asio::async_write(socket, asio::buffer(state->sending),
                    [state, &socket](const error_code& ec, std::size_t) {
                      if (state->abandoned) return;
                      if (ec) {
                        // Nothing more goes out; the session still hears of it, so that it reads
                        // again and finds the socket dead.
                        state->failed = true;
                      } else {
                        state->sending.clear();
                        if (!state->queued.empty()) {
                          write_backlog(state, socket);
                          return;
                        }
                      }
                      // A backlog is the exception (a slow reader): an idle client keeps none of
                      // its memory.
                      std::string().swap(state->sending);
                      std::string().swap(state->queued);
                      auto drained = std::move(state->drained);
                      state->drained = nullptr;
                      if (drained) drained();
                    });
}

void SocketWriter::on_drained(std::function<void()> callback) {
  if (!state_) state_ = std::make_shared<State>();
  state_->drained = std::move(callback);
}

void SocketWriter::abandon() {
  if (!state_) return;
  state_->abandoned = true;
  state_->drained = nullptr;
  state_.reset();
}

}  // namespace pgvalve::proxy
