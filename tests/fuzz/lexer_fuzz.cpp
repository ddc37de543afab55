// libFuzzer target for routing/: SQL lexer, leading_hint, fingerprint/normalize and its cache,
// classify and plain_statement.
// Built with clang + libFuzzer + ASan + UBSan by tests/fuzz/run (a separate -DPGVALVE_FUZZ=ON
// build in build-fuzz/) and run for 20 s by `tests/run` as ctest test fuzz.lexer_fuzz. By hand,
// from the repository root:
//
//   tests/fuzz/run lexer_fuzz                    # build, then fuzz for FUZZ_SECONDS (20)
//   FUZZ_SECONDS=600 tests/fuzz/run lexer_fuzz   # longer
//   build-fuzz/lexer_fuzz <crash-file>            # replay a reproducer it reported
//
// Seeds: tests/fuzz/corpus/lexer_fuzz/ (from tests/fuzz/make_corpus.py); dictionary:
// tests/fuzz/lexer_fuzz.dict.
//
// Besides crashes and out-of-bounds reads it checks the invariants callers rely on.
#include <xxhash.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "routing/fingerprint.h"
#include "routing/sql_lexer.h"
#include "routing/statement.h"

namespace {

using pgvalve::routing::classify;
using pgvalve::routing::fingerprint;
using pgvalve::routing::leading_hint;
using pgvalve::routing::normalize;
using pgvalve::routing::SqlLexer;
using pgvalve::routing::StatementInfo;
using pgvalve::routing::Token;
using pgvalve::routing::TokenKind;

void check(bool ok) {
  if (!ok) std::abort();
}

bool inside(std::string_view outer, std::string_view inner) {
  if (inner.empty()) return true;
  return inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size();
}

void check_tokens(std::string_view sql) {
  SqlLexer lexer(sql);
  Token t;
  std::size_t last_end = 0;
  bool ended = false;
  while (lexer.next(t)) {
    check(!ended);  // nothing after an Unterminated token
    check(!t.text.empty());
    check(t.offset >= last_end);
    check(t.end() <= sql.size());
    check(t.text.data() == sql.data() + t.offset);
    last_end = t.end();
    ended = t.kind == TokenKind::Unterminated;
    if (ended) check(t.end() == sql.size());
  }
  check(!lexer.next(t));
}

void check_statements(std::string_view sql) {
  std::size_t offset = 0;
  for (int guard = 0; guard < 1000; ++guard) {
    const std::string_view rest = sql.substr(offset);
    const StatementInfo info = classify(rest);
    check(info.next_offset <= rest.size());
    check(inside(rest, info.text) && inside(rest, info.value) && inside(rest, info.raw_name) &&
          inside(rest, info.hint));
    check(info.name.view().size() <= pgvalve::routing::NormalizedName::kCapacity);
    if (!info.multiple_statements) return;
    check(info.next_offset > 0);
    offset += info.next_offset;
  }
  check(false);  // each statement consumes at least its ';'
}

// A statement plain_statement() lets skip the closer look has nothing that look would act on.
void check_plain(std::string_view sql) {
  if (!pgvalve::routing::plain_statement(sql)) return;
  const StatementInfo info = classify(sql);
  check(!info.multiple_statements && !info.temporary && !info.calls_advisory_session_lock &&
        !info.calls_advisory_unlock && info.set_config == StatementInfo::SetConfig::None &&
        !info.body_sets && !info.body_listens && info.hint.empty());
}

// The worker's cache answers what fingerprint() does, for the text and for copies of it with
// other digits and other letters inside quotes (a client writing other values into the same
// statement), whichever of them it keeps and answers by their literal template.
void check_cache(std::string_view sql) {
  static pgvalve::routing::FingerprintCache cache;
  check(cache.fingerprint(sql) == fingerprint(sql));
  std::string other(sql);
  for (int round = 0; round < 2; ++round) {
    bool quoted = false;
    for (char& c : other) {
      if (c == '\'') {
        quoted = !quoted;
      } else if (c >= '0' && c <= '9') {
        c = static_cast<char>('0' + (c - '0' + 3) % 10);
      } else if (quoted && c >= 'a' && c <= 'z') {
        c = static_cast<char>('a' + (c - 'a' + 1) % 26);
      }
    }
    check(cache.fingerprint(other) == fingerprint(other));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view sql(reinterpret_cast<const char*>(data), size);
  check_tokens(sql);
  check(inside(sql, leading_hint(sql)));
  const std::string normalized = normalize(sql);
  check(fingerprint(sql) == XXH3_64bits(normalized.data(), normalized.size()));
  check_statements(sql);
  check_plain(sql);
  check_cache(sql);
  return 0;
}
