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
// (quoted identifiers, dollar quotes, bytes past ASCII, ...).
enum class Start : std::uint8_t {
  Other,
  Space,
  Word,
  Digit,
  Quote,
  Dollar,
  Punct,
  Semicolon,
  Dot,
  Colon,
  Op,
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
    } else if (c == '$') {
      k = Start::Dollar;
    } else if (c == '(' || c == ')' || c == ',' || c == '[' || c == ']') {
      k = Start::Punct;
    } else if (c == ';') {
      k = Start::Semicolon;
    } else if (c == '.') {
      k = Start::Dot;
    } else if (c == ':') {
      k = Start::Colon;
    } else if (std::string_view("~!@#^&|`?+-*/%<>=").find(static_cast<char>(c)) !=
               std::string_view::npos) {
      k = Start::Op;
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

Start start_of(char c) {
  return kStart[static_cast<unsigned char>(c)];
}

bool digit(char c) {
  return c >= '0' && c <= '9';
}

// The walk's sign_position() for a word before a '-'.
bool sign_word(std::string_view word) {
  for (std::string_view w : {"select", "where", "and",   "or",     "not",       "when",    "then",
                             "else",   "case",  "limit", "offset", "returning", "between", "having",
                             "on",     "by",    "to",    "like",   "ilike",     "default"}) {
    if (iequals(word, w)) return true;
  }
  return false;
}

// normalized_walk() with a HashSink for the statements it sees most, in one pass over the bytes
// instead of the lexer's tokens: words, numbers, $n, plain '' strings, punctuation, operators,
// signed numbers, ORDER BY lists without positions, IN and ARRAY lists. At anything else (a
// comment, a quoted identifier, a dollar quote, a prefixed string, a string continued on the
// next line, a byte past ASCII, ...) it gives up and the walk runs: every case it takes is one
// whose tokens it knows exactly as SqlLexer finds them.
class EverydayNormalizer {
 public:
  EverydayNormalizer(std::string_view sql, LiteralStarts* replaced)
      : sql_(sql), n_(sql.size()), replaced_(replaced) {}

  bool run(std::uint64_t& out) {
    while (true) {
      while (i_ < n_ && start_of(sql_[i_]) == Start::Space)
        ++i_;
      if (i_ == n_) break;
      if (!token()) return false;
    }
    out = XXH3_64bits(normalized_.data(), len_);
    return true;
  }

 private:
  // What the last token was, as far as a following '-' and "by" care.
  enum class Prev : std::uint8_t { None, SignBefore, Word, Value };

  bool token() {
    const char c = sql_[i_];
    const bool item_start = item_start_;
    item_start_ = false;
    switch (start_of(c)) {
      case Start::Space:  // skipped by run()
        return false;
      case Start::Word:
        return word();
      case Start::Digit:
        if (sorting_ && item_start) return false;  // ORDER BY 1 stays as written
        note_literal(i_);
        i_ = number_end(i_);
        return literal();
      case Start::Dot:
        if (i_ + 1 < n_ && digit(sql_[i_ + 1])) {
          if (sorting_ && item_start) return false;
          i_ = number_end(i_);
          return literal();
        }
        if (i_ + 1 < n_ && sql_[i_ + 1] == '.') return false;  // the ".." operator
        ++i_;
        prev_ = Prev::Value;
        return put('.');
      case Start::Quote: {
        const std::size_t end = string_end(i_);
        if (end == 0) return false;
        note_literal(i_);
        i_ = end;
        return literal();
      }
      case Start::Dollar: {
        const std::size_t end = param_end(i_);
        if (end == 0) return false;
        i_ = end;
        return literal();
      }
      case Start::Punct:
        // More ')' than '(' take the walk's depth to its "no sort list" mark, where a ','
        // starts a sort item: that statement is the walk's.
        if (c == '(') {
          ++depth_;
        } else if (c == ')' && --depth_ < 0) {
          return false;
        }
        if (c == ',' && sorting_) item_start_ = true;
        prev_ = (c == ')' || c == ']') ? Prev::Value : Prev::SignBefore;
        ++i_;
        return put(c);
      case Start::Semicolon:
        ++semicolons_;
        depth_ = 0;
        sorting_ = false;
        prev_ = Prev::SignBefore;
        ++i_;
        return true;
      case Start::Colon: {
        const std::size_t size =
            i_ + 1 < n_ && (sql_[i_ + 1] == ':' || sql_[i_ + 1] == '=') ? 2 : 1;
        i_ += size;
        prev_ = Prev::SignBefore;
        return put(sql_.substr(i_ - size, size));
      }
      case Start::Op:
        return op();
      case Start::Other:
        return false;
    }
    return false;
  }

  bool word() {
    const char next = i_ + 1 < n_ ? sql_[i_ + 1] : '\0';
    const char lower = static_cast<char>(sql_[i_] | 0x20);
    if (next == '\'' && (lower == 'e' || lower == 'n' || lower == 'b' || lower == 'x')) {
      return false;
    }
    if (next == '&' && lower == 'u') return false;
    std::size_t end = i_ + 1;
    while (end < n_ && kWordByte[static_cast<unsigned char>(sql_[end])])
      ++end;
    if (end < n_ && static_cast<unsigned char>(sql_[end]) >= 0x80) return false;
    const std::string_view word = sql_.substr(i_, end - i_);
    i_ = end;
    const bool in = iequals(word, "in");
    if (in || iequals(word, "array")) {
      // A list of literals only is one `$?`; a list of anything else is walked token by token.
      std::size_t after = 0;
      const std::size_t noted = replaced_ ? replaced_->count : 0;
      switch (literal_list(in ? '(' : '[', in ? ')' : ']', after)) {
        case List::Unsure:
          return false;
        case List::Literals:
          i_ = after;
          prev_ = Prev::Value;
          return put_lower(word) && put(in ? '(' : '[') && literal() && put(in ? ')' : ']');
        case List::Other:
          if (replaced_) replaced_->count = noted;  // its literals are noted token by token
          break;
      }
    }
    if (iequals(word, "by") && prev_ == Prev::Word &&
        (iequals(prev_word_, "order") || iequals(prev_word_, "group"))) {
      sorting_ = true;
      item_start_ = true;
    }
    prev_ = Prev::Word;
    prev_word_ = word;
    return put_lower(word);
  }

  bool op() {
    // A run of operator bytes is one operator when it holds no comment start and does not end
    // in '+' or '-' (SqlLexer::lex_operator cuts those); others are the walk's.
    std::size_t end = i_ + 1;
    while (end < n_ && start_of(sql_[end]) == Start::Op)
      ++end;
    for (std::size_t k = i_; k + 1 < end; ++k) {
      if ((sql_[k] == '-' && sql_[k + 1] == '-') || (sql_[k] == '/' && sql_[k + 1] == '*')) {
        return false;
      }
    }
    if (end - i_ > 1 && (sql_[end - 1] == '+' || sql_[end - 1] == '-')) return false;
    const std::string_view op = sql_.substr(i_, end - i_);
    const bool sign = op == "-" && (prev_ == Prev::None || prev_ == Prev::SignBefore ||
                                    (prev_ == Prev::Word && sign_word(prev_word_)));
    i_ = end;
    if (sign) {
      // A minus sign before a number folds into it.
      const std::size_t at = skip_spaces(i_);
      if (at == 0) return false;
      if (at < n_ && (digit(sql_[at]) || (sql_[at] == '.' && at + 1 < n_ && digit(sql_[at + 1])))) {
        if (digit(sql_[at])) note_literal(at);
        i_ = number_end(at);
        // The walk does not count a folded number that starts the statement as a token before
        // the next one: a '-' after it is a sign too.
        const Prev before = prev_;
        const bool ok = literal();
        if (before == Prev::None) prev_ = Prev::None;
        return ok;
      }
    }
    prev_ = Prev::SignBefore;
    return put(op);
  }

  enum class List : std::uint8_t { Literals, Other, Unsure };

  // consume_literal_list() of the walk, on bytes: after `in`/`array` at i_, `open` literal
  // {, literal} `close`. Unsure where the bytes hold anything the one pass does not lex.
  List literal_list(char open, char close, std::size_t& after) {
    std::size_t at = skip_spaces(i_);
    if (at == 0) return List::Unsure;
    if (at >= n_ || sql_[at] != open) return List::Other;
    ++at;
    while (true) {
      at = skip_spaces(at);
      if (at == 0) return List::Unsure;
      if (at >= n_) return List::Other;
      const char c = sql_[at];
      if (c == '-') {
        if (at + 1 < n_ && (start_of(sql_[at + 1]) == Start::Op)) return List::Unsure;
        at = skip_spaces(at + 1);
        if (at == 0) return List::Unsure;
        if (at < n_ &&
            (digit(sql_[at]) || (sql_[at] == '.' && at + 1 < n_ && digit(sql_[at + 1])))) {
          if (digit(sql_[at])) note_literal(at);
          at = number_end(at);
        } else {
          return List::Unsure;
        }
      } else if (digit(c) || (c == '.' && at + 1 < n_ && digit(sql_[at + 1]))) {
        if (digit(c)) note_literal(at);
        at = number_end(at);
      } else if (c == '\'') {
        note_literal(at);
        at = string_end(at);
        if (at == 0) return List::Unsure;
      } else if (c == '$') {
        at = param_end(at);
        if (at == 0) return List::Unsure;
      } else if (start_of(c) == Start::Word || start_of(c) == Start::Punct ||
                 start_of(c) == Start::Semicolon || start_of(c) == Start::Colon) {
        // Not a literal (a word, a bracket): unless it is a prefixed string, which is one.
        if (start_of(c) == Start::Word && at + 1 < n_ &&
            (sql_[at + 1] == '\'' || sql_[at + 1] == '&')) {
          return List::Unsure;
        }
        return List::Other;
      } else {
        return List::Unsure;
      }
      at = skip_spaces(at);
      if (at == 0) return List::Unsure;
      if (at >= n_) return List::Other;
      if (sql_[at] == close) {
        after = at + 1;
        return List::Literals;
      }
      if (sql_[at] == ',') {
        ++at;
        continue;
      }
      if (start_of(sql_[at]) == Start::Other || start_of(sql_[at]) == Start::Op) {
        return List::Unsure;
      }
      return List::Other;
    }
  }

  // Past the spaces from `at`; 0 where a comment starts (the walk's).
  std::size_t skip_spaces(std::size_t at) const {
    while (at < n_ && start_of(sql_[at]) == Start::Space)
      ++at;
    if (at + 1 < n_ &&
        ((sql_[at] == '-' && sql_[at + 1] == '-') || (sql_[at] == '/' && sql_[at + 1] == '*'))) {
      return 0;
    }
    return at;
  }

  std::size_t number_end(std::size_t at) const { return routing::number_end(sql_, at); }

  // End of the '' string at `at`; 0 when it is unterminated or may go on after a newline.
  std::size_t string_end(std::size_t at) const {
    std::size_t end = at + 1;
    while (true) {
      while (end < n_ && sql_[end] != '\'')
        ++end;
      if (end >= n_) return 0;
      ++end;
      if (end < n_ && sql_[end] == '\'') {
        ++end;
        continue;
      }
      break;
    }
    std::size_t next = end;
    while (next < n_ && start_of(sql_[next]) == Start::Space)
      ++next;
    if (next < n_ && (sql_[next] == '\'' || sql_[next] == '-')) return 0;
    return end;
  }

  // End of the $n parameter at `at`; 0 for any other '$' (dollar quotes are the walk's).
  std::size_t param_end(std::size_t at) const {
    std::size_t end = at + 1;
    if (end >= n_ || !digit(sql_[end])) return 0;
    while (end < n_ && digit(sql_[end]))
      ++end;
    return end;
  }

  // A number or string starting with a digit or quote at `at` becomes `$?` (FingerprintCache
  // compares these with literal_template()'s).
  void note_literal(std::size_t at) {
    if (replaced_) replaced_->add(at);
  }

  bool literal() {
    prev_ = Prev::Value;
    if (!open(kLiteral.size())) return false;
    normalized_[len_++] = kLiteral[0];
    normalized_[len_++] = kLiteral[1];
    return true;
  }

  bool put(char c) {
    if (!open(1)) return false;
    normalized_[len_++] = c;
    return true;
  }

  // Room for `size` bytes after the pending ';' and a space: false when there is none.
  bool open(std::size_t size) {
    if (len_ + 2 * semicolons_ + 1 + size > kCapacity) return false;
    for (; semicolons_ > 0; --semicolons_) {
      if (len_ > 0) normalized_[len_++] = ' ';
      normalized_[len_++] = ';';
    }
    if (len_ > 0) normalized_[len_++] = ' ';
    return true;
  }

  bool put(std::string_view text) {
    if (!open(text.size())) return false;
    for (const char c : text)
      normalized_[len_++] = c;
    return true;
  }

  // A word lower-cased eight bytes at a time while eight can be read from the statement; the
  // buffer has room for the last copy's overrun.
  bool put_lower(std::string_view word) {
    if (!open(word.size())) return false;
    const std::size_t readable = n_ - static_cast<std::size_t>(word.data() - sql_.data());
    std::size_t k = 0;
    for (; k < word.size() && readable - k >= 8; k += 8) {
      std::uint64_t octet;
      std::memcpy(&octet, word.data() + k, sizeof octet);
      octet = lower_octet(octet);
      std::memcpy(normalized_.data() + len_ + k, &octet, sizeof octet);
    }
    for (; k < word.size(); ++k)
      normalized_[len_ + k] = ascii_lower(word[k]);
    len_ += word.size();
    return true;
  }

  static constexpr std::size_t kCapacity = 1024;
  std::string_view sql_;
  std::size_t n_;
  LiteralStarts* replaced_;
  std::size_t i_ = 0;
  std::array<char, kCapacity + 8> normalized_;
  std::size_t len_ = 0;
  std::size_t semicolons_ = 0;  // not written until a token follows: trailing ones are dropped
  int depth_ = 0;
  bool sorting_ = false;  // since ORDER BY or GROUP BY (until ';': more than the walk's)
  bool item_start_ = false;
  Prev prev_ = Prev::None;
  std::string_view prev_word_;
};

}  // namespace

bool fingerprint_everyday(std::string_view sql, std::uint64_t& out, LiteralStarts* replaced) {
  return EverydayNormalizer(sql, replaced).run(out);
}

namespace {

std::uint64_t walked_fingerprint(std::string_view sql) {
  HashSink sink(sql);
  normalized_walk(sql, sink);
  return sink.digest();
}

}  // namespace

std::uint64_t fingerprint(std::string_view sql) {
  if (std::uint64_t everyday = 0; fingerprint_everyday(sql, everyday)) return everyday;
  return walked_fingerprint(sql);
}

namespace {

constexpr char kNumberMark = '\x01';
constexpr char kStringMark = '\x02';

// Sixteen bytes in a GCC/Clang vector (SSE2 on x86-64, NEON on ARM): compared all at once.
using Bytes16 = char __attribute__((vector_size(16)));

// The bytes literal_template() stops at, sixteen at a time: digits, quotes and the marks
// (0x00-0x02); one 0xff byte in the two halves per such byte.
void stops16(const char* p, std::uint64_t (&halves)[2]) {
  Bytes16 bytes;
  std::memcpy(&bytes, p, sizeof bytes);
  const auto stops =
      ((bytes >= '0') & (bytes <= '9')) | (bytes == '\'') | ((bytes >= 0) & (bytes <= kStringMark));
  std::memcpy(halves, &stops, sizeof halves);
}

}  // namespace

std::string_view literal_template(std::string_view sql, char* buffer, LiteralStarts& starts) {
  starts.count = 0;
  starts.overflow = false;
  char* out = buffer;
  std::size_t copied = 0;   // sql[copied, at) is not in the template yet
  std::size_t skip_to = 0;  // past the literal cut last
  // One stop byte at `at`: false ends the scan (no template).
  auto stop = [&](std::size_t at) __attribute__((always_inline)) {
    if (at < skip_to) return true;
    const char c = sql[at];
    if (c >= 0 && c <= kStringMark) return false;
    const char before = at > 0 ? sql[at - 1] : ' ';
    if (kWordByte[static_cast<unsigned char>(before)] || before == '.') return true;
    std::size_t end = at + 1;
    if (c == '\'') {
      while (true) {  // as EverydayNormalizer::string_end: '' is a quote inside
        while (end < sql.size() && sql[end] != '\'')
          ++end;
        if (end >= sql.size()) return false;
        ++end;
        if (end < sql.size() && sql[end] == '\'') {
          ++end;
          continue;
        }
        break;
      }
    } else {
      while (end < sql.size() && digit(sql[end]))
        ++end;
      if (end < sql.size() && (sql[end] == '.' || sql[end] == 'e' || sql[end] == 'E')) {
        end = number_end(sql, at);
      }
    }
    if (starts.count == LiteralStarts::kMax) return false;
    starts.add(at);
    std::memcpy(out, sql.data() + copied, at - copied);
    out += at - copied;
    *out++ = c == '\'' ? kStringMark : kNumberMark;
    copied = end;
    skip_to = end;
    return true;
  };
  bool ok = true;
  if (std::endian::native == std::endian::little && sql.size() >= 16) {
    // Blocks of sixteen; the last one ends with the text, its bytes seen before masked off.
    for (std::size_t p = 0; ok && p < sql.size(); p += 16) {
      const std::size_t from = std::min(p, sql.size() - 16);
      std::uint64_t halves[2];
      stops16(sql.data() + from, halves);
      if ((halves[0] | halves[1]) == 0) continue;  // most blocks: words, spaces, operators
      for (std::size_t h = 0; ok && h < 2; ++h) {
        const std::size_t base = from + 8 * h;
        for (std::uint64_t bits = halves[h]; ok && bits != 0;) {
          const std::size_t at = base + static_cast<unsigned>(std::countr_zero(bits)) / 8;
          if (at >= p) ok = stop(at);
          // The stops up to the end of what was cut (a literal's other digits) are passed.
          const std::size_t next = std::max(at + 1, skip_to);
          bits = next >= base + 8 ? 0 : bits & (~std::uint64_t{0} << (8 * (next - base)));
        }
      }
    }
  } else {
    for (std::size_t p = 0; ok && p < sql.size(); ++p) {
      const char c = sql[p];
      if (digit(c) || c == '\'' || (c >= 0 && c <= kStringMark)) ok = stop(p);
    }
  }
  if (!ok || starts.count == 0) return {};
  std::memcpy(out, sql.data() + copied, sql.size() - copied);
  out += sql.size() - copied;
  return {buffer, static_cast<std::size_t>(out - buffer)};
}

FingerprintCache::Slot* FingerprintCache::find(std::uint64_t hash, std::string_view key,
                                               bool is_template) {
  Slot& slot = slots_[hash & (kSlots - 1)];
  if (slot.key_hash == hash && slot.is_template == is_template && slot.key == key) return &slot;
  return nullptr;
}

void FingerprintCache::keep(std::uint64_t hash, std::string_view key, bool is_template,
                            std::uint64_t value) {
  Slot& slot = slots_[hash & (kSlots - 1)];
  slot.key_hash = hash;
  slot.fingerprint = value;
  slot.key.assign(key);
  slot.is_template = is_template;
}

std::uint64_t FingerprintCache::fingerprint(std::string_view sql) {
  if (sql.size() > kMaxText) return routing::fingerprint(sql);
  if (slots_.empty()) slots_.resize(kSlots);
  const std::uint64_t text_hash = XXH3_64bits(sql.data(), sql.size());
  if (const Slot* slot = find(text_hash, sql, false)) {
    ++hits_;
    return slot->fingerprint;
  }
  LiteralStarts cut;
  const std::string_view key = literal_template(sql, template_.data(), cut);
  const bool templated = !key.empty();
  const std::uint64_t template_hash = templated ? XXH3_64bits(key.data(), key.size()) : 0;
  if (templated) {
    if (const Slot* slot = find(template_hash, key, true)) {
      ++hits_;
      ++template_hits_;
      return slot->fingerprint;
    }
  }
  LiteralStarts replaced;
  std::uint64_t value = 0;
  if (!fingerprint_everyday(sql, value, &replaced)) {
    value = walked_fingerprint(sql);
  } else if (templated && replaced == cut) {
    keep(template_hash, key, true, value);
    return value;
  }
  keep(text_hash, sql, false, value);
  return value;
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
