#include "proxy/checkout_deadlines.h"

#include <algorithm>

namespace pgvalve::proxy {

CheckoutDeadlines::~CheckoutDeadlines() {
  while (head_)
    remove(*head_);
}

void CheckoutDeadlines::add(Entry& entry, Clock::time_point deadline, Clock::time_point look_at) {
  if (entry.queued_) remove(entry);
  entry.deadline_ = deadline;
  entry.due_ = std::min(look_at, deadline);
  insert(entry);
  arm();
}

void CheckoutDeadlines::insert(Entry& entry) {
  entry.queued_ = true;
  Entry* after = tail_;
  while (after && after->due_ > entry.due_)
    after = after->prev_;
  entry.prev_ = after;
  entry.next_ = after ? after->next_ : head_;
  (entry.next_ ? entry.next_->prev_ : tail_) = &entry;
  (after ? after->next_ : head_) = &entry;
}

void CheckoutDeadlines::remove(Entry& entry) {
  if (!entry.queued_) return;
  (entry.prev_ ? entry.prev_->next_ : head_) = entry.next_;
  (entry.next_ ? entry.next_->prev_ : tail_) = entry.prev_;
  entry.prev_ = entry.next_ = nullptr;
  entry.queued_ = false;
}

void CheckoutDeadlines::arm() {
  // Only an earlier head re-arms a timer that is already due: a later one is found at firing.
  if (!head_ || head_->due_ >= armed_at_) return;
  armed_at_ = head_->due_;
  timer_.expires_at(armed_at_);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // re-armed earlier, or the worker is stopping
    armed_at_ = Clock::time_point::max();
    fire();
  });
}

void CheckoutDeadlines::fire() {
  const auto now = Clock::now();
  while (head_ && head_->due_ <= now) {
    Entry& due = *head_;
    remove(due);
    if (due.due_ < due.deadline_) {
      // Back in the list first: on_long_wait() may end the wait (remove) or the waiter.
      due.due_ = due.deadline_;
      insert(due);
      due.on_long_wait();
      continue;
    }
    due.on_checkout_deadline();  // may add or remove entries
  }
  arm();
}

}  // namespace pgvalve::proxy
