#include "routing/fingerprint.h"

#include <array>
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

// Buffers normalised bytes on the stack and hashes them in one shot; only statements whose
// normalised form outgrows the buffer pay for the streaming state. Both give the same value.
class HashSink {
 public:
  void slot(const LiteralSlot&) {}
  void put(std::string_view text, bool lower) {
    if (text.size() == 1 && len_ < buffer_.size()) {  // the separating spaces, punctuation
      buffer_[len_++] = lower ? ascii_lower(text[0]) : text[0];
      return;
    }
    if (text.size() > buffer_.size() - len_) {
      for (char c : text) {
        if (len_ == buffer_.size()) flush();
        buffer_[len_++] = lower ? ascii_lower(c) : c;
      }
      return;
    }
    char* out = buffer_.data() + len_;
    len_ += text.size();
    if (!lower) {
      std::memcpy(out, text.data(), text.size());
      return;
    }
    for (char c : text)
      *out++ = ascii_lower(c);
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

  std::array<char, 1024> buffer_;
  std::size_t len_ = 0;
  bool streaming_ = false;
  XXH3_state_t state_;
};

}  // namespace

std::uint64_t fingerprint(std::string_view sql) {
  HashSink sink;
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
