#include "routing/fingerprint.h"

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <vector>

#include "routing/normalized_walk.h"
#include "routing/sql_lexer.h"

// The streaming state lives on the stack (no XXH3_createState malloc); its layout is only
// visible with static linking semantics, which is safe because header and library ship together.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

namespace pgvalve::routing {

namespace {

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

class StringSink {
 public:
  explicit StringSink(std::string& out) : out_(out) {}
  void slot(const LiteralSlot&) {}
  void put(std::string_view text, bool lower) {
    if (!lower) {
      out_.append(text);
      return;
    }
    for (char c : text)
      out_.push_back(ascii_lower(c));
  }

 private:
  std::string& out_;
};

// ASCII letters of eight bytes lower-cased at once (other bytes, UTF-8 included, kept): a byte
// is upper case when its low seven bits reach 'A' but not past 'Z' and its top bit is clear.
std::uint64_t lower_octet(std::uint64_t octet) {
  constexpr std::uint64_t kOnes = 0x0101010101010101u;
  constexpr std::uint64_t kTops = kOnes << 7;
  const std::uint64_t low7 = octet & ~kTops;
  const std::uint64_t from_a = low7 + kOnes * (0x80 - 'A');  // top bit: >= 'A'
  const std::uint64_t past_z = low7 + kOnes * (0x7f - 'Z');  // top bit: > 'Z'
  const std::uint64_t upper = (from_a ^ past_z) & ~octet & kTops;
  return octet | (upper >> 2);  // 0x80 >> 2 is the case bit
}

// Buffers normalised bytes on the stack and hashes them in one shot; only statements whose
// normalised form outgrows the buffer pay for the streaming state. Both give the same value.
// Tokens of the statement (`sql`) are copied eight bytes at a time while eight can be read from
// it; the buffer has room for the last such copy to overrun. The walk's own texts ("$?") are not
// in `sql` and go byte by byte.
class HashSink {
 public:
  explicit HashSink(std::string_view sql)
      : sql_(reinterpret_cast<std::uintptr_t>(sql.data())), sql_size_(sql.size()) {}
  void slot(const LiteralSlot&) {}
  void put(std::string_view text, bool lower) {
    if (text.size() == 1 && len_ < kCapacity) {  // the separating spaces, punctuation
      buffer_[len_++] = lower ? ascii_lower(text[0]) : text[0];
      return;
    }
    if (text.size() > kCapacity - len_) {
      for (char c : text) {
        if (len_ == kCapacity) flush();
        buffer_[len_++] = lower ? ascii_lower(c) : c;
      }
      return;
    }
    char* out = buffer_.data() + len_;
    len_ += text.size();
    const char* in = text.data();
    const char* const in_end = in + text.size();
    if constexpr (std::endian::native == std::endian::little) {
      const std::size_t offset = reinterpret_cast<std::uintptr_t>(in) - sql_;  // huge: not in sql
      const char* const readable_end = offset < sql_size_ ? in + (sql_size_ - offset) : in;
      for (; in < in_end && readable_end - in >= 8; in += 8, out += 8) {
        std::uint64_t octet;
        std::memcpy(&octet, in, sizeof octet);
        if (lower) octet = lower_octet(octet);
        std::memcpy(out, &octet, sizeof octet);
      }
    }
    for (; in < in_end; ++in)
      *out++ = lower ? ascii_lower(*in) : *in;
  }

  std::uint64_t digest() {
    if (!streaming_) return XXH3_64bits(buffer_.data(), len_);
    flush();
    return XXH3_64bits_digest(&state_);
  }

 private:
  void flush() {
    if (!streaming_) {
      XXH3_INITSTATE(&state_);
      XXH3_64bits_reset(&state_);
      streaming_ = true;
    }
    XXH3_64bits_update(&state_, buffer_.data(), len_);
    len_ = 0;
  }

  static constexpr std::size_t kCapacity = 1024;
  std::uintptr_t sql_;
  std::size_t sql_size_;
  std::array<char, kCapacity + 8> buffer_;
  std::size_t len_ = 0;
  bool streaming_ = false;
  XXH3_state_t state_;
};

}  // namespace

std::uint64_t fingerprint(std::string_view sql) {
  HashSink sink(sql);
  normalized_walk(sql, sink);
  return sink.digest();
}

std::string normalize(std::string_view sql) {
  std::string out;
  out.reserve(sql.size());
  StringSink sink(out);
  normalized_walk(sql, sink);
  return out;
}

namespace {

// Literal slots, in order, with their ordinal.
class SlotRecorder {
 public:
  void put(std::string_view, bool) {}
  void slot(const LiteralSlot& s) { slots.push_back(s); }
  std::vector<LiteralSlot> slots;
};

}  // namespace

std::vector<std::uint32_t> slot_ordinals(std::string_view sql, const std::vector<int>& locations) {
  SlotRecorder recorder;
  normalized_walk(sql, recorder);
  std::vector<std::uint32_t> out;
  for (const int at : locations) {
    const auto pos = static_cast<std::size_t>(at);
    bool found = false;
    for (std::size_t i = 0; i < recorder.slots.size(); ++i) {
      const LiteralSlot& s = recorder.slots[i];
      if (s.unterminated) continue;
      if (s.begin == pos || (s.list && s.begin < pos && pos < s.end)) {
        if (out.empty() || out.back() != i) out.push_back(static_cast<std::uint32_t>(i));
        found = true;
        break;
      }
    }
    if (!found) return {};
  }
  return out;
}

}  // namespace pgvalve::routing
