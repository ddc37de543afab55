#pragma once

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

// fingerprint() of an everyday statement (words, numbers, $n, plain strings, punctuation,
// operators, signed numbers, ORDER BY lists without positions, IN/ARRAY lists) in one pass over
// its bytes: true and the value in `out`; false, `out` untouched, for anything that needs the
// token walk (comments, quoted identifiers, dollar quotes, prefixed strings, non-ASCII bytes, ...).
// fingerprint() tries it first; declared for tests.
bool fingerprint_everyday(std::string_view sql, std::uint64_t& out);

// fingerprint() of texts seen before, found by the exact text: a driver sends the same
// parameterised statement with every Parse, so each worker normalises it once. Bounded: kSlots
// texts of at most kMaxText bytes, one per slot (the newest wins); longer texts are fingerprinted
// each time. The slots are made on first use. One per worker thread: NOT thread-safe.
class FingerprintCache {
 public:
  static constexpr std::size_t kSlots = 256;
  static constexpr std::size_t kMaxText = 1024;

  std::uint64_t fingerprint(std::string_view sql);
  std::uint64_t hits() const { return hits_; }

 private:
  struct Slot {
    std::uint64_t text_hash = 0;
    std::uint64_t fingerprint = 0;
    std::string text;
  };
  std::vector<Slot> slots_;
  std::uint64_t hits_ = 0;
};

// The normalised text that fingerprint() hashes (allocates; for display and tests).
std::string normalize(std::string_view sql);

}  // namespace pgvalve::routing
