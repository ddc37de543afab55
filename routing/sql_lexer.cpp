#include "routing/sql_lexer.h"

#include <algorithm>
#include <array>

namespace pgvalve::routing {

namespace {

// PostgreSQL 15 keywords (all categories), sorted bytewise; taken from libpg_query 15-4.0.0's
// scanner so that Keyword means exactly what it means to the server.
constexpr std::array<std::string_view, 460> kKeywords = {
    "abort",
    "absolute",
    "access",
    "action",
    "add",
    "admin",
    "after",
    "aggregate",
    "all",
    "also",
    "alter",
    "always",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asensitive",
    "assertion",
    "assignment",
    "asymmetric",
    "at",
    "atomic",
    "attach",
    "attribute",
    "authorization",
    "backward",
    "before",
    "begin",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "breadth",
    "by",
    "cache",
    "call",
    "called",
    "cascade",
    "cascaded",
    "case",
    "cast",
    "catalog",
    "chain",
    "char",
    "character",
    "characteristics",
    "check",
    "checkpoint",
    "class",
    "close",
    "cluster",
    "coalesce",
    "collate",
    "collation",
    "column",
    "columns",
    "comment",
    "comments",
    "commit",
    "committed",
    "compression",
    "concurrently",
    "configuration",
    "conflict",
    "connection",
    "constraint",
    "constraints",
    "content",
    "continue",
    "conversion",
    "copy",
    "cost",
    "create",
    "cross",
    "csv",
    "cube",
    "current",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "cursor",
    "cycle",
    "data",
    "database",
    "day",
    "deallocate",
    "dec",
    "decimal",
    "declare",
    "default",
    "defaults",
    "deferrable",
    "deferred",
    "definer",
    "delete",
    "delimiter",
    "delimiters",
    "depends",
    "depth",
    "desc",
    "detach",
    "dictionary",
    "disable",
    "discard",
    "distinct",
    "do",
    "document",
    "domain",
    "double",
    "drop",
    "each",
    "else",
    "enable",
    "encoding",
    "encrypted",
    "end",
    "enum",
    "escape",
    "event",
    "except",
    "exclude",
    "excluding",
    "exclusive",
    "execute",
    "exists",
    "explain",
    "expression",
    "extension",
    "external",
    "extract",
    "false",
    "family",
    "fetch",
    "filter",
    "finalize",
    "first",
    "float",
    "following",
    "for",
    "force",
    "foreign",
    "forward",
    "freeze",
    "from",
    "full",
    "function",
    "functions",
    "generated",
    "global",
    "grant",
    "granted",
    "greatest",
    "group",
    "grouping",
    "groups",
    "handler",
    "having",
    "header",
    "hold",
    "hour",
    "identity",
    "if",
    "ilike",
    "immediate",
    "immutable",
    "implicit",
    "import",
    "in",
    "include",
    "including",
    "increment",
    "index",
    "indexes",
    "inherit",
    "inherits",
    "initially",
    "inline",
    "inner",
    "inout",
    "input",
    "insensitive",
    "insert",
    "instead",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "invoker",
    "is",
    "isnull",
    "isolation",
    "join",
    "key",
    "label",
    "language",
    "large",
    "last",
    "lateral",
    "leading",
    "leakproof",
    "least",
    "left",
    "level",
    "like",
    "limit",
    "listen",
    "load",
    "local",
    "localtime",
    "localtimestamp",
    "location",
    "lock",
    "locked",
    "logged",
    "mapping",
    "match",
    "matched",
    "materialized",
    "maxvalue",
    "merge",
    "method",
    "minute",
    "minvalue",
    "mode",
    "month",
    "move",
    "name",
    "names",
    "national",
    "natural",
    "nchar",
    "new",
    "next",
    "nfc",
    "nfd",
    "nfkc",
    "nfkd",
    "no",
    "none",
    "normalize",
    "normalized",
    "not",
    "nothing",
    "notify",
    "notnull",
    "nowait",
    "null",
    "nullif",
    "nulls",
    "numeric",
    "object",
    "of",
    "off",
    "offset",
    "oids",
    "old",
    "on",
    "only",
    "operator",
    "option",
    "options",
    "or",
    "order",
    "ordinality",
    "others",
    "out",
    "outer",
    "over",
    "overlaps",
    "overlay",
    "overriding",
    "owned",
    "owner",
    "parallel",
    "parameter",
    "parser",
    "partial",
    "partition",
    "passing",
    "password",
    "placing",
    "plans",
    "policy",
    "position",
    "preceding",
    "precision",
    "prepare",
    "prepared",
    "preserve",
    "primary",
    "prior",
    "privileges",
    "procedural",
    "procedure",
    "procedures",
    "program",
    "publication",
    "quote",
    "range",
    "read",
    "real",
    "reassign",
    "recheck",
    "recursive",
    "ref",
    "references",
    "referencing",
    "refresh",
    "reindex",
    "relative",
    "release",
    "rename",
    "repeatable",
    "replace",
    "replica",
    "reset",
    "restart",
    "restrict",
    "return",
    "returning",
    "returns",
    "revoke",
    "right",
    "role",
    "rollback",
    "rollup",
    "routine",
    "routines",
    "row",
    "rows",
    "rule",
    "savepoint",
    "schema",
    "schemas",
    "scroll",
    "search",
    "second",
    "security",
    "select",
    "sequence",
    "sequences",
    "serializable",
    "server",
    "session",
    "session_user",
    "set",
    "setof",
    "sets",
    "share",
    "show",
    "similar",
    "simple",
    "skip",
    "smallint",
    "snapshot",
    "some",
    "sql",
    "stable",
    "standalone",
    "start",
    "statement",
    "statistics",
    "stdin",
    "stdout",
    "storage",
    "stored",
    "strict",
    "strip",
    "subscription",
    "substring",
    "support",
    "symmetric",
    "sysid",
    "system",
    "table",
    "tables",
    "tablesample",
    "tablespace",
    "temp",
    "template",
    "temporary",
    "text",
    "then",
    "ties",
    "time",
    "timestamp",
    "to",
    "trailing",
    "transaction",
    "transform",
    "treat",
    "trigger",
    "trim",
    "true",
    "truncate",
    "trusted",
    "type",
    "types",
    "uescape",
    "unbounded",
    "uncommitted",
    "unencrypted",
    "union",
    "unique",
    "unknown",
    "unlisten",
    "unlogged",
    "until",
    "update",
    "user",
    "using",
    "vacuum",
    "valid",
    "validate",
    "validator",
    "value",
    "values",
    "varchar",
    "variadic",
    "varying",
    "verbose",
    "version",
    "view",
    "views",
    "volatile",
    "when",
    "where",
    "whitespace",
    "window",
    "with",
    "within",
    "without",
    "work",
    "wrapper",
    "write",
    "xml",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
    "year",
    "yes",
    "zone",
};

constexpr std::size_t kMaxKeywordLength = 17;

static_assert(std::is_sorted(kKeywords.begin(), kKeywords.end()));
static_assert(kKeywords.size() < 0xFFFF);
static_assert(std::all_of(kKeywords.begin(), kKeywords.end(), [](std::string_view k) {
  return !k.empty() && k.size() <= kMaxKeywordLength;
}));

bool is_horizontal_space(char c) {
  return c == ' ' || c == '\t' || c == '\f';
}
bool is_newline(char c) {
  return c == '\n' || c == '\r';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
constexpr bool ident_start_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
constexpr bool space_byte(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
constexpr bool op_byte(unsigned char c) {
  return std::string_view("~!@#^&|`?+-*/%<>=").find(static_cast<char>(c)) != std::string_view::npos;
}
// Words and spaces are most of every statement's bytes: one table lookup a byte instead of
// several compares.
constexpr std::uint8_t kIdentStart = 1;
constexpr std::uint8_t kIdentCont = 2;
constexpr std::uint8_t kSpace = 4;
constexpr std::uint8_t kOperator = 8;
constexpr auto kByteClass = [] {
  std::array<std::uint8_t, 256> table{};
  for (unsigned c = 0; c < table.size(); ++c) {
    const auto byte = static_cast<unsigned char>(c);
    const bool start = ident_start_byte(byte);
    const bool cont = start || (byte >= '0' && byte <= '9') || byte == '$';
    table[c] = static_cast<std::uint8_t>((start ? kIdentStart : 0) | (cont ? kIdentCont : 0) |
                                         (space_byte(byte) ? kSpace : 0) |
                                         (op_byte(byte) ? kOperator : 0));
  }
  return table;
}();
bool is_space(char c) {
  return (kByteClass[static_cast<unsigned char>(c)] & kSpace) != 0;
}
bool is_ident_start(char c) {
  return (kByteClass[static_cast<unsigned char>(c)] & kIdentStart) != 0;
}
bool is_ident_cont(char c) {
  return (kByteClass[static_cast<unsigned char>(c)] & kIdentCont) != 0;
}
bool is_dollar_tag_cont(char c) {
  return is_ident_start(c) || is_digit(c);
}
bool is_op_char(char c) {
  return (kByteClass[static_cast<unsigned char>(c)] & kOperator) != 0;
}
char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

// Every word the lexer sees is looked up (unless told not to), so the keyword set is an
// open-addressing hash table built at compile time: one hash of the lower-cased word and
// usually one comparison.
constexpr std::uint32_t kFnvOffset = 2166136261u;
constexpr std::uint32_t kFnvPrime = 16777619u;
constexpr std::size_t kKeywordSlots = 2048;  // power of two, load factor about 0.22

constexpr std::uint32_t fnv1a(std::string_view s) {
  std::uint32_t h = kFnvOffset;
  for (char c : s)
    h = (h ^ static_cast<unsigned char>(c)) * kFnvPrime;
  return h;
}

// Slot -> index into kKeywords + 1; 0 is an empty slot.
constexpr std::array<std::uint16_t, kKeywordSlots> kKeywordTable = [] {
  std::array<std::uint16_t, kKeywordSlots> table{};
  for (std::size_t i = 0; i < kKeywords.size(); ++i) {
    std::size_t slot = fnv1a(kKeywords[i]) & (kKeywordSlots - 1);
    while (table[slot] != 0)
      slot = (slot + 1) & (kKeywordSlots - 1);
    table[slot] = static_cast<std::uint16_t>(i + 1);
  }
  return table;
}();

}  // namespace

std::string_view token_kind_name(TokenKind kind) {
  switch (kind) {
    case TokenKind::Keyword:
      return "Keyword";
    case TokenKind::Identifier:
      return "Identifier";
    case TokenKind::QuotedIdentifier:
      return "QuotedIdentifier";
    case TokenKind::String:
      return "String";
    case TokenKind::DollarString:
      return "DollarString";
    case TokenKind::Number:
      return "Number";
    case TokenKind::Param:
      return "Param";
    case TokenKind::Operator:
      return "Operator";
    case TokenKind::Punct:
      return "Punct";
    case TokenKind::Unterminated:
      return "Unterminated";
    case TokenKind::Other:
      return "Other";
  }
  return "?";
}

bool is_keyword(std::string_view word) {
  if (word.empty() || word.size() > kMaxKeywordLength) return false;
  std::array<char, kMaxKeywordLength> lower;
  std::uint32_t h = kFnvOffset;
  for (std::size_t i = 0; i < word.size(); ++i) {
    lower[i] = ascii_lower(word[i]);
    h = (h ^ static_cast<unsigned char>(lower[i])) * kFnvPrime;
  }
  const std::string_view key(lower.data(), word.size());
  for (std::size_t slot = h & (kKeywordSlots - 1);; slot = (slot + 1) & (kKeywordSlots - 1)) {
    const std::uint16_t entry = kKeywordTable[slot];
    if (entry == 0) return false;
    if (kKeywords[entry - 1] == key) return true;
  }
}

bool SqlLexer::next(Token& token) {
  if (done_) return false;
  const std::size_t n = sql_.size();
  // Tokens are mostly one space apart: comments only need the full skip.
  while (pos_ < n && is_space(sql_[pos_]))
    ++pos_;
  if (pos_ < n && (sql_[pos_] == '-' || sql_[pos_] == '/')) {
    skip_space_and_comments();
    if (done_) return unterminated(token, pos_);
  }
  if (pos_ >= n) {
    done_ = true;
    return false;
  }
  const std::size_t start = pos_;
  const char c = sql_[start];
  const char c1 = start + 1 < n ? sql_[start + 1] : '\0';

  switch (c) {
    case '\'':
      return lex_quoted(token, start, start + 1, TokenKind::String, false, true);
    case '"':
      return lex_quoted(token, start, start + 1, TokenKind::QuotedIdentifier, false, true);
    case '$':
      return lex_dollar(token, start);
    case '(':
    case ')':
    case ',':
    case ';':
    case '[':
    case ']':
      pos_ = start + 1;
      token = {TokenKind::Punct, sql_.substr(start, 1), start};
      return true;
    case '.':
      if (is_digit(c1)) {
        lex_number(token, start);
        return true;
      }
      if (c1 == '.') {  // PL/pgSQL's range "..", one token as in scan.l
        pos_ = start + 2;
        token = {TokenKind::Operator, sql_.substr(start, 2), start};
        return true;
      }
      pos_ = start + 1;
      token = {TokenKind::Punct, sql_.substr(start, 1), start};
      return true;
    case ':':
      pos_ = start + ((c1 == ':' || c1 == '=') ? 2 : 1);
      token = {TokenKind::Operator, sql_.substr(start, pos_ - start), start};
      return true;
    default:
      break;
  }
  if (is_digit(c)) {
    lex_number(token, start);
    return true;
  }
  if (is_ident_start(c)) {
    const char lc = ascii_lower(c);
    if (c1 == '\'') {
      switch (lc) {
        case 'e':
          return lex_quoted(token, start, start + 2, TokenKind::String, true, true);
        case 'n':
          return lex_quoted(token, start, start + 2, TokenKind::String, false, true);
        case 'b':
        case 'x':
          return lex_quoted(token, start, start + 2, TokenKind::String, false, false);
        default:
          break;
      }
    }
    if (lc == 'u' && c1 == '&') {
      const char c2 = start + 2 < n ? sql_[start + 2] : '\0';
      if (c2 == '\'') return lex_quoted(token, start, start + 3, TokenKind::String, false, true);
      if (c2 == '"') {
        return lex_quoted(token, start, start + 3, TokenKind::QuotedIdentifier, false, true);
      }
    }
    std::size_t i = start + 1;
    while (i < n && is_ident_cont(sql_[i]))
      ++i;
    pos_ = i;
    const std::string_view word = sql_.substr(start, i - start);
    const bool keyword = keywords_ == Keywords::Found && is_keyword(word);
    token = {keyword ? TokenKind::Keyword : TokenKind::Identifier, word, start};
    return true;
  }
  if (is_op_char(c)) {
    lex_operator(token, start);
    return true;
  }
  pos_ = start + 1;
  token = {TokenKind::Other, sql_.substr(start, 1), start};
  return true;
}

void SqlLexer::skip_space_and_comments() {
  const std::size_t n = sql_.size();
  while (pos_ < n) {
    const char c = sql_[pos_];
    if (is_space(c)) {
      ++pos_;
    } else if (c == '-' && pos_ + 1 < n && sql_[pos_ + 1] == '-') {
      pos_ += 2;
      while (pos_ < n && !is_newline(sql_[pos_]))
        ++pos_;
    } else if (c == '/' && pos_ + 1 < n && sql_[pos_ + 1] == '*') {
      std::size_t depth = 1;
      std::size_t i = pos_ + 2;
      while (depth > 0 && i < n) {
        if (sql_[i] == '/' && i + 1 < n && sql_[i + 1] == '*') {
          ++depth;
          i += 2;
        } else if (sql_[i] == '*' && i + 1 < n && sql_[i + 1] == '/') {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      }
      if (depth > 0) {
        done_ = true;  // pos_ stays at the comment so the Unterminated token shows it
        return;
      }
      pos_ = i;
    } else {
      return;
    }
  }
}

bool SqlLexer::unterminated(Token& token, std::size_t start) {
  done_ = true;
  pos_ = sql_.size();
  token = {TokenKind::Unterminated, sql_.substr(start), start};
  return true;
}

// PostgreSQL joins 'a'<newline>'b' into one literal (SQL standard); returns the offset just past
// the continuing quote, or npos when the literal really ended.
std::size_t SqlLexer::quote_continuation(std::size_t i) const {
  const std::size_t n = sql_.size();
  auto skip_dash_comment = [&](std::size_t j) {
    while (j < n && !is_newline(sql_[j]))
      ++j;
    return j;
  };
  bool newline = false;
  while (i < n && !newline) {
    const char c = sql_[i];
    if (is_horizontal_space(c)) {
      ++i;
    } else if (c == '-' && i + 1 < n && sql_[i + 1] == '-') {
      i = skip_dash_comment(i + 2);
    } else if (is_newline(c)) {
      newline = true;
      ++i;
    } else {
      return std::string_view::npos;
    }
  }
  if (!newline) return std::string_view::npos;
  while (i < n) {
    const char c = sql_[i];
    if (is_space(c)) {
      ++i;
    } else if (c == '-' && i + 1 < n && sql_[i + 1] == '-') {
      i = skip_dash_comment(i + 2);
      if (i >= n) return std::string_view::npos;  // the comment must end in a newline
    } else if (c == '\'') {
      return i + 1;
    } else {
      return std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

bool SqlLexer::lex_quoted(Token& token, std::size_t start, std::size_t body, TokenKind kind,
                          bool backslash_escapes, bool doubled_quotes) {
  const std::size_t n = sql_.size();
  const char quote = sql_[body - 1];
  std::size_t i = body;
  while (true) {
    while (i < n && sql_[i] != quote) {
      if (backslash_escapes && sql_[i] == '\\') {
        if (i + 1 >= n) return unterminated(token, start);
        i += 2;
      } else {
        ++i;
      }
    }
    if (i >= n) return unterminated(token, start);
    ++i;  // the closing quote
    if (doubled_quotes && i < n && sql_[i] == quote) {
      ++i;
      continue;
    }
    if (kind == TokenKind::String) {
      const std::size_t resumed = quote_continuation(i);
      if (resumed != std::string_view::npos) {
        i = resumed;
        continue;
      }
    }
    break;
  }
  pos_ = i;
  token = {kind, sql_.substr(start, i - start), start};
  return true;
}

bool SqlLexer::lex_dollar(Token& token, std::size_t start) {
  const std::size_t n = sql_.size();
  std::size_t i = start + 1;
  if (i < n && is_digit(sql_[i])) {
    while (i < n && is_digit(sql_[i]))
      ++i;
    pos_ = i;
    token = {TokenKind::Param, sql_.substr(start, i - start), start};
    return true;
  }
  if (i < n && is_ident_start(sql_[i])) {
    while (i < n && is_dollar_tag_cont(sql_[i]))
      ++i;
  }
  if (i >= n || sql_[i] != '$') {
    // "$foo" without a closing '$' starts nothing; PostgreSQL returns the lone '$'.
    pos_ = start + 1;
    token = {TokenKind::Other, sql_.substr(start, 1), start};
    return true;
  }
  const std::string_view tag = sql_.substr(start, i + 1 - start);
  const std::size_t close = sql_.find(tag, i + 1);
  if (close == std::string_view::npos) return unterminated(token, start);
  pos_ = close + tag.size();
  token = {TokenKind::DollarString, sql_.substr(start, pos_ - start), start};
  return true;
}

void SqlLexer::lex_number(Token& token, std::size_t start) {
  pos_ = number_end(sql_, start);
  token = {TokenKind::Number, sql_.substr(start, pos_ - start), start};
}

void SqlLexer::lex_operator(Token& token, std::size_t start) {
  const std::size_t n = sql_.size();
  std::size_t end = start + 1;
  while (end < n && is_op_char(sql_[end]))
    ++end;
  // A comment start inside the run ends the operator (scan.l does the same).
  for (std::size_t i = start + 1; i + 1 < end; ++i) {
    if ((sql_[i] == '/' && sql_[i + 1] == '*') || (sql_[i] == '-' && sql_[i + 1] == '-')) {
      end = i;
      break;
    }
  }
  // Trailing + and - belong to the next token ("a=-1" is "a", "=", "-1") unless the operator
  // contains a character that only user-defined operators use; this is scan.l's rule.
  std::size_t len = end - start;
  if (len > 1 && (sql_[end - 1] == '+' || sql_[end - 1] == '-')) {
    bool keep = false;
    for (std::size_t i = start; i + 1 < end; ++i) {
      switch (sql_[i]) {
        case '~':
        case '!':
        case '@':
        case '#':
        case '^':
        case '&':
        case '|':
        case '`':
        case '?':
        case '%':
          keep = true;
          break;
        default:
          break;
      }
    }
    if (!keep) {
      do {
        --len;
      } while (len > 1 && (sql_[start + len - 1] == '+' || sql_[start + len - 1] == '-'));
    }
  }
  pos_ = start + len;
  token = {TokenKind::Operator, sql_.substr(start, len), start};
}

std::string_view leading_hint(std::string_view sql) {
  return find_leading_hint(sql).text;
}

HintComment find_leading_hint(std::string_view sql) {
  constexpr std::string_view kPrefix = "pgvalve:";
  auto trim = [](std::string_view s) {
    while (!s.empty() && is_space(s.front()))
      s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
      s.remove_suffix(1);
    return s;
  };
  const std::size_t n = sql.size();
  std::size_t i = 0;
  while (i < n) {
    if (is_space(sql[i])) {
      ++i;
    } else if (sql[i] == '-' && i + 1 < n && sql[i + 1] == '-') {
      while (i < n && !is_newline(sql[i]))
        ++i;
    } else if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
      const std::size_t start = i;
      const std::size_t body = i + 2;
      std::size_t depth = 1;
      i = body;
      while (depth > 0 && i < n) {
        if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
          ++depth;
          i += 2;
        } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      }
      if (depth > 0) return {};
      const std::string_view content = trim(sql.substr(body, i - 2 - body));
      if (content.size() >= kPrefix.size() && iequals(content.substr(0, kPrefix.size()), kPrefix)) {
        return {trim(content.substr(kPrefix.size())), start, i};
      }
    } else {
      return {};
    }
  }
  return {};
}

}  // namespace pgvalve::routing
