// Helpers shared by the protocol unit tests.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>

#include "protocol/frame.h"

namespace pgvalve::protocol::testing {

// A heap copy of exactly `data.size()` bytes, so AddressSanitizer flags any read past the end
// (a std::string may have spare capacity or SSO storage behind its last byte).
class ExactBuffer {
 public:
  explicit ExactBuffer(std::string_view data)
      : size_(data.size()), bytes_(new char[data.size() == 0 ? 1 : data.size()]) {
    if (size_ > 0) std::memcpy(bytes_.get(), data.data(), size_);
  }
  std::string_view view() const { return {bytes_.get(), size_}; }

 private:
  std::size_t size_;
  std::unique_ptr<char[]> bytes_;
};

inline std::string random_bytes(std::mt19937& rng, std::size_t max_len) {
  std::uniform_int_distribution<std::size_t> len_dist(0, max_len);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  std::string s(len_dist(rng), '\0');
  for (char& ch : s)
    ch = static_cast<char>(byte_dist(rng));
  return s;
}

// Random bytes biased towards what readers care about: NULs, small lengths, -1, 0xff.
inline std::string random_structured_bytes(std::mt19937& rng, std::size_t max_len) {
  static constexpr char kInteresting[] = {'\0', '\0', '\0', '\x01', '\x02', '\xff', 'a', 'S', 'P'};
  std::uniform_int_distribution<std::size_t> len_dist(0, max_len);
  std::uniform_int_distribution<int> pick(0, 2);
  std::uniform_int_distribution<std::size_t> interesting(0, sizeof kInteresting - 1);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  std::string s(len_dist(rng), '\0');
  for (char& ch : s) {
    ch = pick(rng) == 0 ? static_cast<char>(byte_dist(rng)) : kInteresting[interesting(rng)];
  }
  return s;
}

}  // namespace pgvalve::protocol::testing
