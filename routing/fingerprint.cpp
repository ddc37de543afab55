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

// What a byte can start in the one-pass path; Other: anything it leaves to the token walk
// (comments, '-', quoted identifiers, $, prefixed strings' quotes are found by the word, bytes
// past ASCII).
enum class Start : std::uint8_t {
  Other,
  Space,
  Word,
  Digit,
  Quote,
  Punct,
  Semicolon,
  Dot,
  Colon,
  Op
};

constexpr std::array<Start, 256> kStart = [] {
  std::array<Start, 256> table{};
  for (unsigned c = 0; c < 256; ++c) {
    Start k = Start::Other;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      k = Start::Space;
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
      k = Start::Word;
    } else if (c >= '0' && c <= '9') {
      k = Start::Digit;
    } else if (c == '\'') {
      k = Start::Quote;
    } else if (c == '(' || c == ')' || c == ',' || c == '[' || c == ']') {
      k = Start::Punct;
    } else if (c == ';') {
      k = Start::Semicolon;
    } else if (c == '.') {
      k = Start::Dot;
    } else if (c == ':') {
      k = Start::Colon;
    } else if (std::string_view("~!@#^&|`?+*%<>=").find(static_cast<char>(c)) !=
               std::string_view::npos) {
      k = Start::Op;  // '-' and '/' (comments, signs) are left to the walk
    }
    table[c] = k;
  }
  return table;
}();

// Bytes that continue a word: letters, digits, '_' and '$' (past ASCII: the walk's).
constexpr std::array<bool, 256> kWordByte = [] {
  std::array<bool, 256> table{};
  for (unsigned c = 0; c < 256; ++c) {
    table[c] = kStart[c] == Start::Word || kStart[c] == Start::Digit || c == '$';
  }
  return table;
}();

bool word_byte(char c) {
  return kWordByte[static_cast<unsigned char>(c)];
}

bool digit(char c) {
  return c >= '0' && c <= '9';
}

bool op_byte(char c) {
  return kStart[static_cast<unsigned char>(c)] == Start::Op || c == '-' || c == '/';
}

// End of the number at `i` (a digit, or a '.' before one), as SqlLexer::lex_number finds it.
std::size_t number_end(std::string_view sql, std::size_t i) {
  const std::size_t n = sql.size();
  while (i < n && digit(sql[i]))
    ++i;
  if (i < n && sql[i] == '.' && !(i + 1 < n && sql[i + 1] == '.')) {
    ++i;
    while (i < n && digit(sql[i]))
      ++i;
  }
  if (i < n && (sql[i] == 'e' || sql[i] == 'E')) {
    std::size_t j = i + 1;
    if (j < n && (sql[j] == '+' || sql[j] == '-')) ++j;
    if (j < n && digit(sql[j])) {
      while (j < n && digit(sql[j]))
        ++j;
      i = j;
    }
  }
  return i;
}

}  // namespace

// One pass over the bytes, writing what normalized_walk() would and hashing it the same way.
// Everything it does not take on (see kStart, and the words "in", "array" and "by", which start
// folded lists and sort items) sends the statement back to the walk: false.
bool fingerprint_everyday(std::string_view sql, std::uint64_t& out) {
  constexpr std::size_t kCapacity = 1024;
  std::array<char, kCapacity + 8> normalized;
  std::size_t len = 0;
  std::size_t semicolons = 0;  // not written until a token follows: trailing ones are dropped
  int depth = 0;
  const std::size_t n = sql.size();
  std::size_t i = 0;
  // Room for the token's `size` bytes and what comes before it; false when there is none.
  auto open = [&](std::size_t size) {
    if (len + 2 * semicolons + 1 + size > kCapacity) return false;
    for (; semicolons > 0; --semicolons) {
      if (len > 0) normalized[len++] = ' ';
      normalized[len++] = ';';
    }
    if (len > 0) normalized[len++] = ' ';
    return true;
  };
  auto literal = [&] {
    if (!open(2)) return false;
    normalized[len++] = '$';
    normalized[len++] = '?';
    return true;
  };
  while (i < n) {
    const char c = sql[i];
    switch (kStart[static_cast<unsigned char>(c)]) {
      case Start::Space:
        ++i;
        break;
      case Start::Word: {
        const char next = i + 1 < n ? sql[i + 1] : '\0';
        const char lower = static_cast<char>(c | 0x20);
        if (next == '\'' && (lower == 'e' || lower == 'n' || lower == 'b' || lower == 'x')) {
          return false;
        }
        if (next == '&' && lower == 'u') return false;
        std::size_t end = i + 1;
        while (end < n && word_byte(sql[end]))
          ++end;
        if (end < n && static_cast<unsigned char>(sql[end]) >= 0x80) return false;
        const std::string_view word = sql.substr(i, end - i);
        if (iequals(word, "in") || iequals(word, "by") || iequals(word, "array")) return false;
        if (!open(word.size())) return false;
        // Eight bytes at a time while eight can be read; the buffer has room for the overrun.
        std::size_t k = 0;
        for (; k < word.size() && n - (i + k) >= 8; k += 8) {
          std::uint64_t octet;
          std::memcpy(&octet, word.data() + k, sizeof octet);
          octet = lower_octet(octet);
          std::memcpy(normalized.data() + len + k, &octet, sizeof octet);
        }
        for (; k < word.size(); ++k)
          normalized[len + k] = ascii_lower(word[k]);
        len += word.size();
        i = end;
        break;
      }
      case Start::Digit:
        i = number_end(sql, i);
        if (!literal()) return false;
        break;
      case Start::Quote: {
        std::size_t end = i + 1;
        while (true) {
          while (end < n && sql[end] != '\'')
            ++end;
          if (end >= n) return false;  // unterminated
          ++end;
          if (end < n && sql[end] == '\'') {
            ++end;
            continue;
          }
          break;
        }
        // A quote after only spaces may continue the literal on the next line; a '-' may start
        // a comment before such a quote: both are the walk's.
        std::size_t after = end;
        while (after < n && kStart[static_cast<unsigned char>(sql[after])] == Start::Space)
          ++after;
        if (after < n && (sql[after] == '\'' || sql[after] == '-')) return false;
        i = end;
        if (!literal()) return false;
        break;
      }
      case Start::Punct:
        // More ')' than '(' take the walk's depth to its "no sort list" mark, where a ','
        // starts a sort item: that statement is the walk's.
        if (c == '(') {
          ++depth;
        } else if (c == ')' && --depth < 0) {
          return false;
        }
        if (!open(1)) return false;
        normalized[len++] = c;
        ++i;
        break;
      case Start::Semicolon:
        ++semicolons;
        depth = 0;
        ++i;
        break;
      case Start::Dot:
        if (i + 1 < n && digit(sql[i + 1])) {
          i = number_end(sql, i);
          if (!literal()) return false;
        } else if (i + 1 < n && sql[i + 1] == '.') {
          return false;  // the ".." operator
        } else {
          if (!open(1)) return false;
          normalized[len++] = '.';
          ++i;
        }
        break;
      case Start::Colon: {
        const std::size_t size = i + 1 < n && (sql[i + 1] == ':' || sql[i + 1] == '=') ? 2 : 1;
        if (!open(size)) return false;
        for (std::size_t k = 0; k < size; ++k)
          normalized[len++] = sql[i + k];
        i += size;
        break;
      }
      case Start::Op: {
        // A run of operator bytes is one operator when it holds no comment start and does not
        // end in '+' or '-' (SqlLexer::lex_operator); others are the walk's.
        std::size_t end = i + 1;
        while (end < n && op_byte(sql[end]))
          ++end;
        for (std::size_t k = i; k < end; ++k) {
          if (sql[k] == '-' || sql[k] == '/') return false;
        }
        if (end - i > 1 && sql[end - 1] == '+') return false;
        if (!open(end - i)) return false;
        for (std::size_t k = i; k < end; ++k)
          normalized[len++] = sql[k];
        i = end;
        break;
      }
      case Start::Other:
        return false;
    }
  }
  out = XXH3_64bits(normalized.data(), len);
  return true;
}

std::uint64_t fingerprint(std::string_view sql) {
  if (std::uint64_t everyday = 0; fingerprint_everyday(sql, everyday)) return everyday;
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
