// A read buffer for one socket: bytes arrive at the end, whole messages are consumed from the
// front. It grows only as bytes actually arrive — doubling when full, never to a size a message
// header merely announces — and growth beyond its base size is charged to a MemoryBudget shared
// by the whole process, so many clients sending (or pretending to send) large messages cannot
// take more memory together than the budget allows. Storage of a base size comes from a
// per-thread free list, so an idle connection holds none and steady traffic allocates nothing.
// Client buffers start small (kClientBytes: most client messages are short); server buffers
// read results in larger pieces (kServerBytes). Pure: the I/O layer reads into prepare() and
// calls commit().
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace pgvalve::session {

// Bytes the process may hold in buffers beyond their base size. Thread-safe, lock-free.
class MemoryBudget {
 public:
  explicit MemoryBudget(std::int64_t limit) : limit_(limit) {}
  bool try_take(std::size_t bytes);
  void give_back(std::size_t bytes);
  void set_limit(std::int64_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  std::int64_t in_use() const { return used_.load(std::memory_order_relaxed); }
  std::int64_t limit() const { return limit_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> limit_;
  std::atomic<std::int64_t> used_{0};
};

class InputBuffer {
 public:
  static constexpr std::size_t kClientBytes = 4 * 1024;
  static constexpr std::size_t kServerBytes = 16 * 1024;

  explicit InputBuffer(std::size_t base_bytes = kServerBytes) : base_(base_bytes) {}
  // Growth beyond the base size is charged to `budget` (none: unlimited).
  InputBuffer(std::size_t base_bytes, MemoryBudget* budget) : base_(base_bytes), budget_(budget) {}
  InputBuffer(const InputBuffer&) = delete;
  InputBuffer& operator=(const InputBuffer&) = delete;
  ~InputBuffer() { release(); }

  void set_budget(MemoryBudget* budget) { budget_ = budget; }

  bool empty() const { return begin_ == end_; }
  std::size_t size() const { return end_ - begin_; }
  bool has_storage() const { return data_ != nullptr; }
  std::size_t capacity() const { return capacity_; }
  std::string_view readable() const {
    return data_ ? std::string_view{data_.get() + begin_, end_ - begin_} : std::string_view{};
  }

  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ >= end_) begin_ = end_ = 0;
  }

  // Free space to read into: at least one byte, or empty when growing is refused by the budget
  // (the caller then refuses the message that needs it). Moves a partial message to the front
  // when that makes room; doubles the storage only when it is full of unconsumed bytes.
  std::span<char> prepare();
  void commit(std::size_t n) {
    end_ += n;
    committed_ += n;
  }
  // Bytes committed since the buffer was made (statistics of a login's bytes).
  std::uint64_t committed_total() const { return committed_; }

  // Gives the storage back to the thread's free list (oversized storage is freed, its budget
  // returned). Only when empty.
  void release();
  // Drops storage that grew for one large message once it is no longer needed.
  void shrink_if_empty() {
    if (empty() && capacity_ > base_) release();
  }

 private:
  void acquire();

  std::unique_ptr<char[]> data_;
  std::size_t base_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::uint64_t committed_ = 0;
  MemoryBudget* budget_ = nullptr;
};

}  // namespace pgvalve::session
