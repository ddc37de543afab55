// Writes gathered bytes to one socket in order: at once, with one sendmsg, when the kernel takes
// them all (the usual case); otherwise what it did not take is copied into a backlog written in
// the background, so the caller may consume its input right away. Callers keep the backlog small
// by not reading more input while it exists (busy()): the session reads its client or server
// again only once the backlog drained (on_drained).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "proxy/io_util.h"
#include "session/actions.h"

namespace pgvalve::proxy {

class SocketWriter {
 public:
  // Writes `chunks` then `tail`. False when the socket failed (the reader of the socket sees it
  // closed and reports it).
  bool write(Socket& socket, std::span<const session::Chunk> chunks, std::string_view tail);
  // Bytes waiting for the kernel.
  std::size_t backlog() const {
    return state_ ? state_->sending.size() + state_->queued.size() : 0;
  }
  bool busy() const { return backlog() > 0; }
  // Runs when the backlog has been written (not called for writes that went out at once).
  void on_drained(std::function<void()> callback);
  // Forgets the backlog (the session is closing); a write in progress finishes on its own.
  void abandon();

 private:
  struct State {
    std::string sending;  // being written now; never touched until the write completes
    std::string queued;   // waiting behind it
    bool abandoned = false;
    bool failed = false;
    std::function<void()> drained;
  };
  static void write_backlog(std::shared_ptr<State> state, Socket& socket);

  std::shared_ptr<State> state_;  // made the first time a write has to wait
};

}  // namespace pgvalve::proxy
