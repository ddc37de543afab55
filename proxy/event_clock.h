// The time of the event a worker is carrying out. A transaction's steps (its request read, the
// checkout, the link, the answer, the check-in) each wanted the time, eleven clock reads per
// transaction; inside an event they share one read, taken when the event began. Outside an event
// (coroutines, login, timers not marked) now() reads the clock itself, so a forgotten mark costs a
// clock read, never a stale time.
#pragma once

#include <chrono>

namespace pgvalve::proxy {

class EventClock {
 public:
  using Clock = std::chrono::steady_clock;  // session::Clock

  Clock::time_point now() const { return in_event_ ? at_ : Clock::now(); }

  // The span of one event on the worker's thread (ClientSession::Step, which handles nesting).
  void begin() {
    at_ = Clock::now();
    in_event_ = true;
  }
  void end() { in_event_ = false; }

 private:
  Clock::time_point at_{};
  bool in_event_ = false;
};

}  // namespace pgvalve::proxy
