#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pgvalve::routing {

// Statement fingerprint: XXH3_64bits of normalize(sql)'s bytes, computed without allocating.
// Users see these values (SHOW QUERIES, slow-query samples), so the normalisation is frozen:
// a change to it changes every fingerprint and must be a deliberate, documented decision.
//
// Normalisation, token by token (comments and whitespace dropped, tokens joined by one space):
//  - string, dollar-quoted and numeric literals and $n parameters become `$?`; a minus sign
//    directly before a number in operand position folds into it (`= -1` is `= $?`), as
//    PostgreSQL's grammar folds it into the constant;
//  - `IN (<literal>, ...)` and `ARRAY[<literal>, ...]` become `in ( $? )` / `array [ $? ]`
//    whatever their length;
//  - an integer standing alone as an ORDER BY / GROUP BY item stays as written: it names an
//    output column, so `ORDER BY 1` and `ORDER BY 2` are different statements;
//  - keywords and unquoted identifiers are lower-cased (ASCII); quoted identifiers, operators
//    and punctuation stay as written;
//  - trailing `;` are dropped; an unterminated literal is `$?`, an unterminated comment nothing.
std::uint64_t fingerprint(std::string_view sql);

// Where the plain literals of a statement start: unsigned numbers and '' strings that begin a
// token (a byte offset each, in order), at most kMax of them.
struct LiteralStarts {
  static constexpr std::size_t kMax = 32;
  std::uint32_t at[kMax];
  std::size_t count = 0;
  bool overflow = false;  // more than kMax

  void add(std::size_t offset) {
    if (count == kMax) {
      overflow = true;
      return;
    }
    at[count++] = static_cast<std::uint32_t>(offset);
  }
  bool operator==(const LiteralStarts& o) const {
    if (overflow || o.overflow || count != o.count) return false;
    for (std::size_t i = 0; i < count; ++i) {
      if (at[i] != o.at[i]) return false;
    }
    return true;
  }
};

// fingerprint() of an everyday statement (words, numbers, $n, plain strings, punctuation,
// operators, signed numbers, ORDER BY lists without positions, IN/ARRAY lists) in one pass over
// its bytes: true and the value in `out`; false, `out` untouched, for anything that needs the
// token walk (comments, quoted identifiers, dollar quotes, prefixed strings, non-ASCII bytes, ...).
// fingerprint() tries it first. With `replaced`, it also notes where each number or '' string it
// turned into `$?` starts when that literal starts with a digit or a quote (FingerprintCache).
bool fingerprint_everyday(std::string_view sql, std::uint64_t& out,
                          LiteralStarts* replaced = nullptr);

// The statement with each plain literal cut out, written to `buffer` (room for sql.size()
// bytes): the bytes around them, a mark byte where each was; where they started in `starts`. A
// plain literal is a number that starts with a digit, or a '' string, after a byte that cannot
// end a word and is not '.'. Texts that differ only in those literals have the same template.
// Empty when there is none, more than LiteralStarts::kMax, an unterminated string, or a mark
// byte (0x00-0x02) outside them.
std::string_view literal_template(std::string_view sql, char* buffer, LiteralStarts& starts);

// fingerprint() of texts seen before. A driver sends the same parameterised statement with every
// Parse, found by its exact text; a client that writes its values into the text (psql scripts,
// psycopg2, pgbench -M simple) sends the same statement with other literals, found by its
// literal_template(). A template is kept only when the everyday pass turned exactly its literals
// into `$?`, so every text with that template has the same fingerprint (ORDER BY 1 keeps its 1:
// such texts are kept by their exact text only). Bounded: kSlots entries of at most kMaxText
// bytes, one per slot (the newest wins); longer texts are fingerprinted each time. The slots are
// made on first use. One per worker thread: NOT thread-safe.
class FingerprintCache {
 public:
  static constexpr std::size_t kSlots = 256;
  static constexpr std::size_t kMaxText = 1024;

  std::uint64_t fingerprint(std::string_view sql);
  std::uint64_t hits() const { return hits_; }
  std::uint64_t template_hits() const { return template_hits_; }

 private:
  struct Slot {
    std::uint64_t key_hash = 0;
    std::uint64_t fingerprint = 0;
    std::string key;
    bool is_template = false;
  };
  Slot* find(std::uint64_t hash, std::string_view key, bool is_template);
  void keep(std::uint64_t hash, std::string_view key, bool is_template, std::uint64_t value);

  std::vector<Slot> slots_;
  std::array<char, kMaxText> template_;  // literal_template()'s
  std::uint64_t hits_ = 0;
  std::uint64_t template_hits_ = 0;
};

// The normalised text that fingerprint() hashes (allocates; for display and tests).
std::string normalize(std::string_view sql);

}  // namespace pgvalve::routing
