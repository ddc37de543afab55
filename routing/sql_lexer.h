#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace pgvalve::routing {

// Token classes of PostgreSQL 15's scanner (src/backend/parser/scan.l), as far as routing,
// pooling and fingerprints need them.
enum class TokenKind : std::uint8_t {
  Keyword,           // unquoted word in PostgreSQL's keyword list (any category)
  Identifier,        // any other unquoted word
  QuotedIdentifier,  // "a""b", U&"..."
  String,            // '..', E'..', N'..', U&'..', B'..', X'..' (text includes prefix and quotes)
  DollarString,      // $$..$$, $tag$..$tag$
  Number,            // 42, 4.2, .5, 1e-3
  Param,             // $1
  Operator,          // + - <= :: ->> || := => .. etc., and a lone ':'
  Punct,             // ( ) , ; [ ] .
  Unterminated,      // string, quoted identifier or comment running to the end of input; last token
  Other,             // a byte no SQL token starts with (e.g. '\', '{', a '$' that starts nothing)
};

std::string_view token_kind_name(TokenKind kind);

struct Token {
  TokenKind kind = TokenKind::Other;
  std::string_view text;  // points into the lexed input
  std::size_t offset = 0;

  // True for an unquoted word (keyword or identifier) equal to `word`, ignoring ASCII case.
  bool is_word(std::string_view word) const;  // defined below iequals
  bool is_punct(char c) const {
    return kind == TokenKind::Punct && text.size() == 1 && text[0] == c;
  }
  bool is_operator(std::string_view op) const { return kind == TokenKind::Operator && text == op; }
  std::size_t end() const { return offset + text.size(); }
};

// ASCII-only case-insensitive equality, matching how PostgreSQL folds unquoted identifiers in
// UTF-8 databases. Inline: the statement walks call it for nearly every word.
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + ('a' - 'A')) : a[i];
    const char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + ('a' - 'A')) : b[i];
    if (x != y) return false;
  }
  return true;
}

inline bool Token::is_word(std::string_view word) const {
  return (kind == TokenKind::Keyword || kind == TokenKind::Identifier) && iequals(text, word);
}

// Where the numeric literal starting at `at` (a digit, or a '.' before one) ends, as PostgreSQL's
// scanner reads it: digits, a fraction unless ".." follows ("1..5" is 1 and ".."), an exponent
// when digits follow it. Inline: both fingerprint paths read every number with it.
inline std::size_t number_end(std::string_view sql, std::size_t at) {
  auto digit = [&](std::size_t i) { return i < sql.size() && sql[i] >= '0' && sql[i] <= '9'; };
  while (digit(at))
    ++at;
  if (at < sql.size() && sql[at] == '.' && !(at + 1 < sql.size() && sql[at + 1] == '.')) {
    ++at;
    while (digit(at))
      ++at;
  }
  if (at < sql.size() && (sql[at] == 'e' || sql[at] == 'E')) {
    std::size_t j = at + 1;
    if (j < sql.size() && (sql[j] == '+' || sql[j] == '-')) ++j;
    if (digit(j)) {
      while (digit(j))
        ++j;
      at = j;
    }
  }
  return at;
}

// True when `word` (any ASCII case) is a PostgreSQL 15 keyword.
bool is_keyword(std::string_view word);

// Single-pass tokenizer over a borrowed string. Never allocates, never reads outside `sql`.
// Assumes standard_conforming_strings = on (backslashes are literal in plain '' strings).
// Whitespace, -- comments and nested /* */ comments are skipped.
class SqlLexer {
 public:
  // Off: every unquoted word is an Identifier, for walks that treat keywords and identifiers
  // alike (fingerprints) and need not pay for the keyword lookup on each word.
  enum class Keywords : bool { Found, NotLookedUp };

  explicit SqlLexer(std::string_view sql, std::size_t start = 0,
                    Keywords keywords = Keywords::Found)
      : sql_(sql), pos_(start), keywords_(keywords) {}

  // Reads the next token; false at the end of input and after an Unterminated token.
  bool next(Token& token);

  // Offset of the next unread byte (comments and whitespace not yet skipped).
  std::size_t position() const { return pos_; }

 private:
  void skip_space_and_comments();
  bool lex_quoted(Token& token, std::size_t start, std::size_t body, TokenKind kind,
                  bool backslash_escapes, bool doubled_quotes);
  bool lex_dollar(Token& token, std::size_t start);
  void lex_number(Token& token, std::size_t start);
  void lex_operator(Token& token, std::size_t start);
  bool unterminated(Token& token, std::size_t start);
  std::size_t quote_continuation(std::size_t after_quote) const;

  std::string_view sql_;
  std::size_t pos_;
  Keywords keywords_;
  bool done_ = false;
};

// Text of a leading `/* pgvalve: ... */` hint comment (after "pgvalve:", trimmed), or empty.
// Only comments before the first token count; the first pgvalve hint among them wins.
std::string_view leading_hint(std::string_view sql);

// Where that hint comment stands in `sql`: [begin, end) covers `/* ... */`; both 0 when there
// is none. pgvalve removes it before the statement reaches PostgreSQL.
struct HintComment {
  std::string_view text;  // as leading_hint()
  std::size_t begin = 0;
  std::size_t end = 0;
};
HintComment find_leading_hint(std::string_view sql);

}  // namespace pgvalve::routing
