#include "session/input_buffer.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace pgvalve::session {

namespace {

// Spare storage of the two base sizes per thread: enough for the clients of a busy worker that go
// idle and come back between transactions without holding memory for clients that are gone.
struct FreeList {
  std::size_t bytes;
  std::size_t spares;
  std::vector<std::unique_ptr<char[]>> storage;
};

FreeList* free_list(std::size_t bytes) {
  thread_local FreeList lists[] = {{InputBuffer::kClientBytes, 64, {}},
                                   {InputBuffer::kServerBytes, 8, {}}};
  for (auto& l : lists) {
    if (l.bytes == bytes) return &l;
  }
  return nullptr;
}

}  // namespace

MemoryBudget::Take MemoryBudget::try_take(std::size_t bytes, std::size_t needed) {
  const std::int64_t most = cap(limit_.load(std::memory_order_relaxed), needed);
  if (static_cast<std::int64_t>(needed) > most) return Take::Never;
  const auto n = static_cast<std::int64_t>(bytes);
  const std::int64_t after = used_.fetch_add(n, std::memory_order_relaxed) + n;
  if (after > most) {
    used_.fetch_sub(n, std::memory_order_relaxed);
    return Take::Wait;
  }
  return Take::Taken;
}

void MemoryBudget::give_back(std::size_t bytes) {
  used_.fetch_sub(static_cast<std::int64_t>(bytes), std::memory_order_relaxed);
}

void InputBuffer::acquire() {
  FreeList* list = free_list(base_);
  if (list && !list->storage.empty()) {
    data_ = std::move(list->storage.back());
    list->storage.pop_back();
  } else {
    data_ = std::make_unique_for_overwrite<char[]>(base_);
  }
  capacity_ = base_;
  begin_ = end_ = 0;
}

std::span<char> InputBuffer::prepare(std::size_t message_bytes) {
  refusal_ = MemoryBudget::Take::Taken;
  if (!data_) acquire();
  if (end_ < capacity_) return {data_.get() + end_, capacity_ - end_};
  const std::size_t pending = end_ - begin_;
  if (begin_ > 0) {
    std::memmove(data_.get(), data_.get() + begin_, pending);
    begin_ = 0;
    end_ = pending;
    return {data_.get() + end_, capacity_ - end_};
  }
  // Full of one unfinished message: double, or grow to its size when that is less; paid from
  // the budget. A buffer sized to the message leaves the rest of the budget to others (doubling
  // would take up to twice what the message needs).
  std::size_t bigger = capacity_ * 2;
  if (message_bytes > capacity_ && message_bytes < bigger) bigger = message_bytes;
  const std::size_t extra = bigger - capacity_;
  if (budget_) {
    // What the whole message will need beyond the base size, as far as it is known.
    const std::size_t needed = std::max(bigger, message_bytes) - base_;
    refusal_ = budget_->try_take(extra, needed);
    if (refusal_ != MemoryBudget::Take::Taken) return {};
  }
  auto storage = std::make_unique_for_overwrite<char[]>(bigger);
  std::memcpy(storage.get(), data_.get(), pending);
  data_ = std::move(storage);
  capacity_ = bigger;
  return {data_.get() + end_, capacity_ - end_};
}

void InputBuffer::release() {
  if (!data_) return;
  if (capacity_ == base_) {
    FreeList* list = free_list(base_);
    if (list && list->storage.size() < list->spares) list->storage.push_back(std::move(data_));
  } else if (budget_) {
    budget_->give_back(capacity_ - base_);
  }
  data_.reset();
  capacity_ = 0;
  begin_ = end_ = 0;
}

}  // namespace pgvalve::session
