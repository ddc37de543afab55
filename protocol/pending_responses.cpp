#include "protocol/pending_responses.h"

#include <algorithm>

namespace pgvalve::protocol {

ResponseMatch match_response(PendingResponse::Kind front, char tag) {
  using Kind = PendingResponse::Kind;
  switch (tag) {
    case 'N':
    case 'A':
    case 'S':
      return ResponseMatch::Async;
    case 'E':
      return front == Kind::ReadyForQuery ? ResponseMatch::Intermediate : ResponseMatch::Error;
    default:
      break;
  }
  switch (front) {
    case Kind::ParseComplete:
      return tag == '1' ? ResponseMatch::Completes : ResponseMatch::Intermediate;
    case Kind::BindComplete:
      return tag == '2' ? ResponseMatch::Completes : ResponseMatch::Intermediate;
    case Kind::CloseComplete:
      return tag == '3' ? ResponseMatch::Completes : ResponseMatch::Intermediate;
    case Kind::Describe:
      return tag == 'T' || tag == 'n' ? ResponseMatch::Completes : ResponseMatch::Intermediate;
    case Kind::Execute:
      return tag == 'C' || tag == 'I' || tag == 's' ? ResponseMatch::Completes
                                                    : ResponseMatch::Intermediate;
    case Kind::ReadyForQuery:
      return tag == 'Z' ? ResponseMatch::Completes : ResponseMatch::Intermediate;
    case Kind::Synthetic:
      return ResponseMatch::Intermediate;
  }
  return ResponseMatch::Intermediate;
}

void PendingResponses::push(const PendingResponse& r) {
  if (size_ == ring_.size()) {
    std::vector<PendingResponse> bigger(std::max<std::size_t>(8, ring_.size() * 2));
    for (std::size_t i = 0; i < size_; ++i)
      bigger[i] = ring_[(head_ + i) % ring_.size()];
    ring_ = std::move(bigger);
    head_ = 0;
  }
  ring_[(head_ + size_) % ring_.size()] = r;
  ++size_;
  if (r.kind == PendingResponse::Kind::ParseComplete) ++parses_;
}

void PendingResponses::pop() {
  if (size_ == 0) return;
  if (ring_[head_].kind == PendingResponse::Kind::ParseComplete) --parses_;
  head_ = (head_ + 1) % ring_.size();
  --size_;
}

void PendingResponses::drop_behind_front(std::size_t count) {
  if (count == 0 || count >= size_) return;
  const PendingResponse front = ring_[head_];
  for (std::size_t i = 1; i <= count; ++i) {
    if (ring_[(head_ + i) % ring_.size()].kind == PendingResponse::Kind::ParseComplete) --parses_;
  }
  head_ = (head_ + count) % ring_.size();
  ring_[head_] = front;
  size_ -= count;
}

}  // namespace pgvalve::protocol
