// The token walk behind fingerprint() and normalize(), shared with shard-key extraction, which
// needs to know where each `$?` of the normalised text stands in the statement: two statements
// with one fingerprint have the same literal slots in the same order, so a slot's ordinal found
// once in the parse tree finds the key in every later statement of that shape. Internal to
// routing/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <vector>

#include "routing/sql_lexer.h"

namespace pgvalve::routing {

inline constexpr std::string_view kLiteral = "$?";

// One `$?` of the normalised text: [begin, end) of the statement bytes it stands for: a literal
// or $n (with a folded minus sign), or a whole `( lit, ... )` / `[ lit, ... ]` list.
struct LiteralSlot {
  std::size_t begin = 0;
  std::size_t end = 0;
  bool list = false;
  bool unterminated = false;
};

// Slot ordinals of parse-tree `locations` (byte offsets): a location starts a slot, or lies
// inside a list slot (one ordinal for the whole list). Empty when one is not found: the lexer
// and the grammar disagree about where a value is, so nothing is claimed. Allocates.
std::vector<std::uint32_t> slot_ordinals(std::string_view sql, const std::vector<int>& locations);

// A Sink has put(text, lower) for the normalised bytes and slot(const LiteralSlot&), called just
// before the `$?` it stands for is put.
namespace walk_detail {

inline bool is_literal(const Token& t) {
  return t.kind == TokenKind::String || t.kind == TokenKind::DollarString ||
         t.kind == TokenKind::Number || t.kind == TokenKind::Param;
}

inline bool is_any_word(const Token& t, std::initializer_list<std::string_view> words) {
  for (std::string_view w : words) {
    if (t.is_word(w)) return true;
  }
  return false;
}

// Where a '-' can only be a sign: at the start, after an operator or an opening bracket or
// comma, or after a keyword that must be followed by an operand. Identifiers and value keywords
// (current_date, a column called "date") are excluded on purpose: there '-' is subtraction and
// folding it would make `date - 1` look like the typed literal `date '...'`. Every word listed is
// a keyword, which no unquoted identifier spells, so the walk's lexer need not tell them apart.
inline bool sign_position(const Token* prev) {
  if (prev == nullptr) return true;
  switch (prev->kind) {
    case TokenKind::Operator:
      return true;
    case TokenKind::Punct:
      return prev->is_punct('(') || prev->is_punct(',') || prev->is_punct('[') ||
             prev->is_punct(';');
    case TokenKind::Keyword:
    case TokenKind::Identifier:
      return is_any_word(*prev,
                         {"select", "where", "and",   "or",     "not",       "when",    "then",
                          "else",   "case",  "limit", "offset", "returning", "between", "having",
                          "on",     "by",    "to",    "like",   "ilike",     "default"});
    default:
      return false;
  }
}

// After `in` / `array`: consumes `( lit, lit, ... )` (or brackets) when every item is a literal.
inline bool consume_literal_list(SqlLexer& ahead, char open, char close, Token& t) {
  if (!ahead.next(t) || !t.is_punct(open)) return false;
  while (true) {
    if (!ahead.next(t)) return false;
    if (t.is_operator("-")) {
      if (!ahead.next(t) || t.kind != TokenKind::Number) return false;
    } else if (!is_literal(t)) {
      return false;
    }
    if (!ahead.next(t)) return false;
    if (t.is_punct(close)) return true;
    if (!t.is_punct(',')) return false;
  }
}

inline bool all_digits(std::string_view s) {
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return !s.empty();
}

// Whether the token after an integer makes it a whole ORDER BY / GROUP BY item.
inline bool ends_sort_item(SqlLexer ahead) {
  Token t;
  if (!ahead.next(t)) return true;
  if (t.is_punct(',') || t.is_punct(')') || t.is_punct(';')) return true;
  return is_any_word(
      t, {"asc", "desc", "nulls", "using", "limit", "offset", "fetch", "for", "having", "window",
          "order", "union", "intersect", "except", "rows", "range", "groups"});
}

inline bool ends_sort_list(const Token& t) {
  return is_any_word(
      t, {"limit", "offset", "fetch", "for", "having", "window", "order", "union", "intersect",
          "except", "select", "values", "returning", "where", "from", "into", "on"});
}

}  // namespace walk_detail

// Drives a sink with the normalised token stream; shared by normalize() and fingerprint() so
// that the displayed text is byte for byte what gets hashed.
template <typename Sink>
void normalized_walk(std::string_view sql, Sink& sink) {
  using namespace walk_detail;
  // Keywords and identifiers are alike here (both are lower-cased, sign_position lists only
  // keywords): the keyword lookup of every word is skipped.
  SqlLexer lexer(sql, 0, SqlLexer::Keywords::NotLookedUp);
  Token tok;
  Token prev;
  bool has_prev = false;
  bool first = true;
  std::size_t pending_semicolons = 0;
  int depth = 0;
  int sort_depth = -1;  // paren depth of the ORDER BY / GROUP BY list we are in, or -1
  bool sort_item_start = false;

  // The rare tokens that add several pieces (a folded list, a signed number) emit each.
  auto put = [&](std::string_view text, bool lower) {
    if (!first) sink.put(" ", false);
    sink.put(text, lower);
    first = false;
  };
  auto emit = [&](std::string_view text, bool lower) {
    for (; pending_semicolons > 0; --pending_semicolons)
      put(";", false);
    put(text, lower);
  };

  while (lexer.next(tok)) {
    const bool item_start = sort_item_start;
    sort_item_start = false;
    // What the token adds to the normalised text; put once below the switch, so that the
    // everyday token takes one inlined path.
    std::string_view text = tok.text;
    bool lower = false;
    switch (tok.kind) {
      case TokenKind::Keyword:
      case TokenKind::Identifier: {
        const bool in = tok.is_word("in");
        if (in || tok.is_word("array")) {
          SqlLexer ahead = lexer;
          Token closing;
          if (consume_literal_list(ahead, in ? '(' : '[', in ? ')' : ']', closing)) {
            SqlLexer open_at = lexer;
            Token open;
            open_at.next(open);
            sink.slot(LiteralSlot{open.offset, closing.end(), true});
            emit(tok.text, true);
            emit(in ? "(" : "[", false);
            emit(kLiteral, false);
            emit(in ? ")" : "]", false);
            lexer = ahead;
            prev = closing;
            has_prev = true;
            continue;
          }
        }
        lower = true;
        if (tok.is_word("by") && has_prev && (prev.is_word("order") || prev.is_word("group"))) {
          sort_depth = depth;
          sort_item_start = true;
        } else if (sort_depth == depth && ends_sort_list(tok)) {
          sort_depth = -1;
        }
        break;
      }
      case TokenKind::Number:
        if (!(item_start && sort_depth == depth && all_digits(tok.text) && ends_sort_item(lexer))) {
          sink.slot(LiteralSlot{tok.offset, tok.end(), false});
          text = kLiteral;
        }
        break;
      case TokenKind::String:
      case TokenKind::DollarString:
      case TokenKind::Param:
        sink.slot(LiteralSlot{tok.offset, tok.end(), false});
        text = kLiteral;
        break;
      case TokenKind::Operator:
        if (tok.text == "-" && sign_position(has_prev ? &prev : nullptr)) {
          SqlLexer ahead = lexer;
          Token number;
          if (ahead.next(number) && number.kind == TokenKind::Number) {
            sink.slot(LiteralSlot{tok.offset, number.end(), false});
            emit(kLiteral, false);
            lexer = ahead;
            prev = number;
            continue;
          }
        }
        break;
      case TokenKind::Punct:
        if (tok.is_punct(';')) {
          ++pending_semicolons;
          sort_depth = -1;
          depth = 0;
          prev = tok;
          has_prev = true;
          continue;
        }
        if (tok.is_punct('(')) {
          ++depth;
        } else if (tok.is_punct(')')) {
          --depth;
          if (depth < sort_depth) sort_depth = -1;
        } else if (tok.is_punct(',') && sort_depth == depth) {
          sort_item_start = true;
        }
        break;
      case TokenKind::Unterminated:
        if (tok.text.starts_with("/*")) {
          prev = tok;
          has_prev = true;
          continue;
        }
        sink.slot(LiteralSlot{tok.offset, tok.end(), false, true});
        text = kLiteral;
        break;
      case TokenKind::QuotedIdentifier:
      case TokenKind::Other:
        break;
    }
    if (pending_semicolons > 0) {
      emit(text, lower);
    } else {
      if (!first) sink.put(" ", false);
      sink.put(text, lower);
      first = false;
    }
    prev = tok;
    has_prev = true;
  }
}

}  // namespace pgvalve::routing
