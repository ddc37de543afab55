// A read buffer for one socket: bytes arrive at the end, whole frames are consumed from the
// front, a trailing partial frame is moved to the front when space runs out. Storage comes
// from a per-thread free list so that an idle client holds no buffer and steady-state traffic
// allocates nothing.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

#include <boost/asio/buffer.hpp>

namespace pgvalve::proxy {

inline constexpr std::size_t kDefaultBufferBytes = 16 * 1024;

class ByteBuffer {
 public:
  ByteBuffer() = default;
  ByteBuffer(const ByteBuffer&) = delete;
  ByteBuffer& operator=(const ByteBuffer&) = delete;
  ~ByteBuffer() { release(); }

  bool empty() const { return begin_ == end_; }
  bool has_storage() const { return data_ != nullptr; }
  std::string_view readable() const { return {data_.get() + begin_, end_ - begin_}; }

  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }

  // Space for at least `min_free` more bytes (and for a whole frame of `frame_total` bytes
  // starting at the read position, when known), moving or growing the storage as needed.
  boost::asio::mutable_buffer prepare(std::size_t frame_total = 0) {
    if (!data_) acquire();
    const std::size_t pending = end_ - begin_;
    const std::size_t want = std::max(frame_total, pending + 1);
    if (want > capacity_) {
      std::size_t cap = capacity_;
      while (cap < want)
        cap *= 2;
      auto bigger = std::make_unique<char[]>(cap);
      std::memcpy(bigger.get(), data_.get() + begin_, pending);
      data_ = std::move(bigger);
      capacity_ = cap;
      begin_ = 0;
      end_ = pending;
    } else if (capacity_ - end_ < std::max<std::size_t>(want - pending, 1) ||
               (begin_ > 0 && capacity_ - end_ < capacity_ / 4)) {
      std::memmove(data_.get(), data_.get() + begin_, pending);
      begin_ = 0;
      end_ = pending;
    }
    return boost::asio::buffer(data_.get() + end_, capacity_ - end_);
  }
  void commit(std::size_t n) { end_ += n; }

  // Gives the storage back to the thread's free list (oversized storage is freed).
  void release() {
    if (!data_) return;
    // A few spares cover a worker's bursts; more would only hold memory.
    if (capacity_ == kDefaultBufferBytes && free_list().size() < 16) {
      free_list().push_back(std::move(data_));
    }
    data_.reset();
    capacity_ = 0;
    begin_ = end_ = 0;
  }
  // Drops storage that grew for one large message once it is no longer needed.
  void shrink_if_empty() {
    if (empty() && capacity_ > kDefaultBufferBytes) release();
  }

 private:
  void acquire() {
    auto& list = free_list();
    if (!list.empty()) {
      data_ = std::move(list.back());
      list.pop_back();
    } else {
      data_ = std::make_unique<char[]>(kDefaultBufferBytes);
    }
    capacity_ = kDefaultBufferBytes;
    begin_ = end_ = 0;
  }
  static std::vector<std::unique_ptr<char[]>>& free_list() {
    thread_local std::vector<std::unique_ptr<char[]>> list;
    return list;
  }

  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace pgvalve::proxy
