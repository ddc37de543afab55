// The checkout deadlines of one worker's waiting clients, kept by one timer.
//
// A client that waits for a server must get 53300 at pool.checkout_timeout_ms. A timer per
// client would stay allocated (and armed) long after its checkout succeeded — a few hundred
// bytes for every idle client of a busy pool. Instead the worker keeps its waiting clients in
// one list ordered by deadline and one timer armed for the earliest; a client leaves the list
// when it is granted a server, gives up, or closes.
//
// A wait may also ask to be looked at once before its deadline, when it has lasted a while (the
// client's socket is then asked whether it hung up, a system call most waits end before).
#pragma once

#include <chrono>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

namespace pgvalve::proxy {

class CheckoutDeadlines {
 public:
  using Clock = std::chrono::steady_clock;

  // A place in the list; the waiting client derives from it.
  class Entry {
   public:
    virtual ~Entry() = default;
    // The deadline passed while still in the list (it has been taken out).
    virtual void on_checkout_deadline() = 0;
    // The look asked for at add() is due; the entry stays in the list for its deadline.
    virtual void on_long_wait() {}
    bool queued() const { return queued_; }

   private:
    friend class CheckoutDeadlines;
    Entry* prev_ = nullptr;
    Entry* next_ = nullptr;
    Clock::time_point due_{};  // the look's time, then the deadline; the list's order
    Clock::time_point deadline_{};
    bool queued_ = false;
  };

  explicit CheckoutDeadlines(boost::asio::io_context& context) : timer_(context) {}
  // Entries may outlive the list (a worker's sessions die with its loop, after this): they are
  // let go, so that their remove() does not reach back here.
  ~CheckoutDeadlines();
  CheckoutDeadlines(const CheckoutDeadlines&) = delete;
  CheckoutDeadlines& operator=(const CheckoutDeadlines&) = delete;

  // Inserted from the back: deadlines of one timeout arrive in order, so this is O(1) unless
  // the timeout was shortened by a reload. A look_at before the deadline calls on_long_wait()
  // then.
  void add(Entry& entry, Clock::time_point deadline,
           Clock::time_point look_at = Clock::time_point::max());
  void remove(Entry& entry);

 private:
  void insert(Entry& entry);
  void arm();
  void fire();

  boost::asio::steady_timer timer_;
  // When the timer is due; max when it is not armed. An entry that leaves does not disarm it:
  // the timer finds the list changed when it fires, so a granted checkout costs no timer call.
  Clock::time_point armed_at_ = Clock::time_point::max();
  Entry* head_ = nullptr;
  Entry* tail_ = nullptr;
};

}  // namespace pgvalve::proxy
