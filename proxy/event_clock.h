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

  Clock::time_point now() const { return depth_ > 0 ? at_ : Clock::now(); }

  // Marks the span of one event on the worker's thread; nested marks keep the outer time.
  class Event {
   public:
    explicit Event(EventClock& clock) : clock_(clock) {
      if (clock_.depth_++ == 0) clock_.at_ = Clock::now();
    }
    ~Event() { --clock_.depth_; }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;

   private:
    EventClock& clock_;
  };

 private:
  Clock::time_point at_{};
  int depth_ = 0;
};

}  // namespace pgvalve::proxy
