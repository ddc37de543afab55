// Writes gathered bytes to one socket in order: at once when the kernel takes them all (the usual
// case; one buffer goes out with send(), several with one sendmsg); otherwise what it did not
// take is copied into a backlog written in the background, so the caller may consume its input
// right away. Callers keep the backlog small by not reading more input while it exists (busy()):
// the session reads its client or server again only once the backlog drained (on_drained).
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
  enum class Result {
    Done,     // everything went out now
    Backlog,  // some waits in the backlog: read no more until on_drained
    Failed,   // the socket failed (its reader sees it closed and reports it)
  };
  // Writes `chunks` then `tail`.
  Result write(Socket& socket, std::span<const session::Chunk> chunks, std::string_view tail);
  // Bytes waiting for the kernel.
  std::size_t backlog() const {
    return state_ ? state_->sending.size() + state_->queued.size() : 0;
  }
  bool busy() const { return backlog() > 0; }
  // A write failed: what was not written is lost, later writes return Failed.
  bool failed() const { return state_ && state_->failed; }
  // Runs once the backlog has been written, or once writing it failed (the backlog is dropped
  // then and busy() is false); set after a write returned Backlog. The callback is dropped as it
  // runs, and by abandon(): it may hold its session alive meanwhile.
  void on_drained(std::function<void()> callback);
  // Forgets the backlog and the callback (the session is closing, or the server is given back);
  // a write in progress finishes on its own.
  void abandon();
  // Drops the bookkeeping of a drained backlog (an idle client keeps none).
  void trim() {
    if (state_ && !busy() && !state_->failed) state_.reset();
  }

 private:
  struct State {
    std::string sending;  // being written now; never touched until the write completes
    std::string queued;   // waiting behind it
    bool abandoned = false;
    bool failed = false;
    std::function<void()> drained;
  };
  static void write_backlog(std::shared_ptr<State> state, Socket& socket);

  std::shared_ptr<State> state_;  // made the first time a write has to wait, dropped when drained
};

}  // namespace pgvalve::proxy
