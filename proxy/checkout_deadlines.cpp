#include "proxy/checkout_deadlines.h"

namespace pgvalve::proxy {

CheckoutDeadlines::~CheckoutDeadlines() {
  while (head_)
    remove(*head_);
}

void CheckoutDeadlines::add(Entry& entry, Clock::time_point deadline) {
  if (entry.queued_) remove(entry);
  entry.deadline_ = deadline;
  entry.queued_ = true;
  Entry* after = tail_;
  while (after && after->deadline_ > deadline)
    after = after->prev_;
  entry.prev_ = after;
  entry.next_ = after ? after->next_ : head_;
  (entry.next_ ? entry.next_->prev_ : tail_) = &entry;
  (after ? after->next_ : head_) = &entry;
  arm();
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
  if (!head_ || head_->deadline_ >= armed_at_) return;
  armed_at_ = head_->deadline_;
  timer_.expires_at(armed_at_);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // re-armed earlier, or the worker is stopping
    armed_at_ = Clock::time_point::max();
    fire();
  });
}

void CheckoutDeadlines::fire() {
  const auto now = Clock::now();
  while (head_ && head_->deadline_ <= now) {
    Entry& due = *head_;
    remove(due);
    due.on_checkout_deadline();  // may add or remove entries
  }
  arm();
}

}  // namespace pgvalve::proxy
