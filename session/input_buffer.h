// A read buffer for one socket: bytes arrive at the end, whole messages are consumed from the
// front. It grows only as bytes actually arrive — doubling when full, never to a size a message
// header merely announces, and never past the size of the message it receives when the caller
// knows it — and growth beyond its base size is charged to a MemoryBudget shared by the whole
// process, so many clients sending (or pretending to send) large messages cannot take more
// memory together than the budget allows. Storage of a base size comes from a per-thread free
// list, so an idle connection holds none and steady traffic allocates nothing.
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

// Bytes the process may hold in buffers beyond their base size (limits.message_memory_bytes).
// Thread-safe, lock-free: one atomic add per growth.
// A quarter of it is kept for messages up to kSmallMessageBytes: larger messages together may
// hold at most the rest, so that clients sending large messages (or announcing them) can never
// take the memory an ordinary client needs for an ordinary statement.
class MemoryBudget {
 public:
  static constexpr std::size_t kSmallMessageBytes = 1u << 20;
  enum class Take : std::uint8_t {
    Taken,
    Wait,   // not now: it would fit once other buffers give memory back
    Never,  // the message needs more than its kind may ever hold, even alone
  };

  explicit MemoryBudget(std::int64_t limit) : limit_(limit) {}
  // `bytes` more for a buffer that needs `needed` beyond its base size in all for the message
  // it receives (as far as it is known: at least its size after this growth).
  Take try_take(std::size_t bytes, std::size_t needed);
  void give_back(std::size_t bytes);
  void set_limit(std::int64_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  std::int64_t in_use() const { return used_.load(std::memory_order_relaxed); }
  std::int64_t limit() const { return limit_.load(std::memory_order_relaxed); }
  // What buffers for messages as large as `needed` may hold together: the whole limit for
  // small messages, the limit less the reserve for larger ones.
  static std::int64_t cap(std::int64_t limit, std::size_t needed) {
    return needed <= kSmallMessageBytes ? limit : limit - limit / 4;
  }

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
  // (refusal() says whether waiting may help). Moves a partial message to the front when that
  // makes room; grows the storage only when it is full of unconsumed bytes: doubles it, or
  // less when `message_bytes` (the whole size of the message at the front, 0: not known) needs
  // less.
  std::span<char> prepare(std::size_t message_bytes = 0);
  // Why the last prepare() returned no space (Taken when it did not refuse).
  MemoryBudget::Take refusal() const { return refusal_; }
  // prepare() would have to grow the storage: it is full of one unfinished message.
  bool full() const { return data_ && begin_ == 0 && end_ == capacity_; }
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
  MemoryBudget::Take refusal_ = MemoryBudget::Take::Taken;
};

}  // namespace pgvalve::session
