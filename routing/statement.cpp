#include "routing/statement.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "routing/sql_lexer.h"

namespace pgvalve::routing {

namespace {

// `needle` (lower case) at `pos` of `sql`, in any ASCII case.
bool contains_at(std::string_view sql, std::size_t pos, std::string_view needle) {
  return sql.size() - pos >= needle.size() && iequals(sql.substr(pos, needle.size()), needle);
}

// The four bytes at `p`, with ASCII letters lower-cased (and other bytes changed too: callers
// compare with words of letters, for which this is exact, or verify).
std::uint32_t lowered_quad(const char* p) {
  std::uint32_t quad;
  std::memcpy(&quad, p, sizeof quad);
  return quad | 0x20202020u;
}

// Sixteen bytes in a GCC/Clang vector (SSE2 on x86-64, NEON on ARM): compared all at once.
using Bytes16 = char __attribute__((vector_size(16)));

Bytes16 lowered_bytes16(const char* p) {
  Bytes16 bytes;
  std::memcpy(&bytes, p, sizeof bytes);
  return bytes | static_cast<char>(0x20);
}

bool ascii_letter(char c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

// "temp" at `p` that can be the TEMP or TEMPORARY keyword or the end of pg_temp: no letter right
// before it, and none right after it or after "temporary". Telemetry columns are often called
// "temperature": as a substring it sent every statement naming one through the closer look.
bool temp_word_at(std::string_view sql, std::size_t p) {
  if (p > 0 && ascii_letter(sql[p - 1])) return false;
  std::size_t end = p + 4;
  if (contains_at(sql, end, "orary")) end += 5;
  return end == sql.size() || !ascii_letter(sql[end]);
}

// "into" as a word of its own at `p`.
bool into_word_at(std::string_view sql, std::size_t p) {
  if (p > 0 && (ascii_letter(sql[p - 1]) || sql[p - 1] == '_')) return false;
  const std::size_t end = p + 4;
  return end == sql.size() || !(ascii_letter(sql[end]) || sql[end] == '_');
}

// A word that means session state starts at `p` (at least four bytes remain): "temp" (TEMP,
// TEMPORARY, pg_temp), "advisory" (the advisory lock functions) or "set_config"; in a SELECT
// also "into", since SELECT … INTO makes a table, a temporary one when pg_temp is first in
// search_path.
bool session_state_word_at(std::string_view sql, std::size_t p, bool selects) {
  const std::uint32_t temp = lowered_quad("temp");
  const std::uint32_t advi = lowered_quad("advi");
  const std::uint32_t set_ = lowered_quad("set_");  // '_' | 0x20 is DEL: verified below
  const std::uint32_t into = lowered_quad("into");
  const std::uint32_t quad = lowered_quad(sql.data() + p);
  return (quad == temp && temp_word_at(sql, p)) ||
         (quad == advi && contains_at(sql, p, "advisory")) ||
         (quad == set_ && contains_at(sql, p, "set_config")) ||
         (selects && quad == into && into_word_at(sql, p));
}

bool sql_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

// PostgreSQL's NAMEDATALEN - 1: longer identifiers are cut (at a character boundary).
constexpr std::size_t kMaxIdentifierBytes = 63;

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

bool is_word(const Token& t) {
  return t.kind == TokenKind::Keyword || t.kind == TokenKind::Identifier;
}

bool is_name_token(const Token& t) {
  return is_word(t) || t.kind == TokenKind::QuotedIdentifier;
}

bool is_any_word(const Token& t, std::initializer_list<std::string_view> words) {
  for (std::string_view w : words) {
    if (t.is_word(w)) return true;
  }
  return false;
}

bool is_advisory_session_lock_name(const Token& t) {
  static constexpr std::string_view kNames[] = {"pg_advisory_lock", "pg_advisory_lock_shared",
                                                "pg_try_advisory_lock",
                                                "pg_try_advisory_lock_shared"};
  for (std::string_view name : kNames) {
    if (t.is_word(name)) return true;
    if (t.kind == TokenKind::QuotedIdentifier && t.text.size() == name.size() + 2 &&
        t.text.substr(1, name.size()) == name) {
      return true;
    }
  }
  return false;
}

bool is_function_name(const Token& t, std::initializer_list<std::string_view> names) {
  for (std::string_view name : names) {
    if (t.is_word(name)) return true;
    if (t.kind == TokenKind::QuotedIdentifier && t.text.size() == name.size() + 2 &&
        t.text.substr(1, name.size()) == name) {
      return true;
    }
  }
  return false;
}

bool is_advisory_unlock_name(const Token& t) {
  return is_function_name(
      t, {"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all"});
}

bool is_set_config_name(const Token& t) {
  return is_function_name(t, {"set_config"});
}

// Function calls and statements found in a DO body (PL/pgSQL is not parsed, only scanned).
struct CallsInBody {
  bool advisory_lock = false;
  bool advisory_unlock = false;
  bool set_config = false;
  bool sets = false;       // SET / RESET
  bool listens = false;    // LISTEN
  bool temporary = false;  // CREATE [LOCAL|GLOBAL] TEMP|TEMPORARY

  void add(const CallsInBody& other) {
    advisory_lock = advisory_lock || other.advisory_lock;
    advisory_unlock = advisory_unlock || other.advisory_unlock;
    set_config = set_config || other.set_config;
    sets = sets || other.sets;
    listens = listens || other.listens;
    temporary = temporary || other.temporary;
  }
};

std::string_view literal_body(const Token& t);

// `sql`: a DO body, or (nested) a string inside one, which the body may EXECUTE.
CallsInBody calls_in_body(std::string_view sql, bool nested = false) {
  CallsInBody found;
  SqlLexer lexer(sql);
  Token t;
  Token prev;
  Token prev2;
  bool has_prev = false;
  bool has_prev2 = false;
  while (lexer.next(t)) {
    if (has_prev && t.is_punct('(')) {
      if (is_advisory_session_lock_name(prev)) found.advisory_lock = true;
      if (is_advisory_unlock_name(prev)) found.advisory_unlock = true;
      if (is_set_config_name(prev)) found.set_config = true;
    }
    const bool statement_start =
        !has_prev || prev.is_punct(';') || is_any_word(prev, {"begin", "then", "else", "loop"});
    if (statement_start && is_any_word(t, {"set", "reset"})) found.sets = true;
    if (statement_start && t.is_word("listen")) found.listens = true;
    if (has_prev && is_any_word(t, {"temp", "temporary"}) &&
        (prev.is_word("create") ||
         (has_prev2 && is_any_word(prev, {"local", "global"}) && prev2.is_word("create")))) {
      found.temporary = true;
    }
    if (!nested && (t.kind == TokenKind::String || t.kind == TokenKind::DollarString)) {
      found.add(calls_in_body(literal_body(t), true));
    }
    prev2 = prev;
    has_prev2 = has_prev;
    prev = t;
    has_prev = true;
  }
  return found;
}

bool is_plain_string(const Token& t) {
  return t.kind == TokenKind::String && t.text.size() >= 2 && t.text.front() == '\'' &&
         t.text.back() == '\'';
}

// Follows the arguments of one set_config( call token by token:
// '(' 'name' ',' 'value' ',' true|false ')'.
class SetConfigReader {
 public:
  bool active() const { return step_ > 0; }
  void start() {
    step_ = 1;
    bound_ = false;
  }
  // Returns false when the call does not have the followable shape.
  bool feed(const Token& t, StatementInfo& info) {
    switch (step_++) {
      case 1:
        if (t.kind == TokenKind::Param) {
          bound_ = true;
        } else if (!is_plain_string(t)) {
          return fail();
        }
        info.set_config_name = t.text;
        return true;
      case 2:
      case 4:
        return t.is_punct(',') || fail();
      case 3:
        if (t.kind == TokenKind::Param) {
          bound_ = true;
        } else if (!is_plain_string(t)) {
          return fail();
        }
        info.set_config_value = t.text;
        return true;
      case 5:
        if (t.is_word("false")) {
          local_ = false;
        } else if (t.is_word("true")) {
          local_ = true;
        } else {
          return fail();
        }
        return true;
      case 6:
        if (!t.is_punct(')')) return fail();
        if (bound_ && local_) return fail();  // a SET LOCAL to replay on other shards needs text
        info.set_config = bound_   ? StatementInfo::SetConfig::SessionBound
                          : local_ ? StatementInfo::SetConfig::Local
                                   : StatementInfo::SetConfig::Session;
        step_ = 0;
        return true;
      default:
        return fail();
    }
  }

 private:
  bool fail() {
    step_ = 0;
    return false;
  }
  int step_ = 0;
  bool local_ = false;
  bool bound_ = false;  // the name or the value is a parameter ($n)
};

// The code of a DO block: the inside of its string or dollar-quoted literal.
std::string_view literal_body(const Token& t) {
  std::string_view s = t.text;
  if (t.kind == TokenKind::DollarString) {
    const std::size_t tag = s.find('$', 1) + 1;
    if (s.size() < 2 * tag) return {};
    return s.substr(tag, s.size() - 2 * tag);
  }
  const std::size_t open = s.find('\'');
  if (open == std::string_view::npos || s.size() < open + 2) return {};
  return s.substr(open + 1, s.size() - open - 2);
}

// Appends one identifier part the way PostgreSQL's scanner stores it.
bool append_identifier(NormalizedName& out, const Token& t, bool fold_quoted) {
  std::array<char, kMaxIdentifierBytes + 1> part;
  std::size_t len = 0;
  auto add = [&](char c) {
    if (len < part.size()) part[len++] = c;
  };
  if (is_word(t)) {
    for (char c : t.text)
      add(ascii_lower(c));
  } else if (t.kind == TokenKind::QuotedIdentifier && t.text.size() >= 2 && t.text[0] == '"') {
    const std::string_view body = t.text.substr(1, t.text.size() - 2);
    for (std::size_t i = 0; i < body.size(); ++i) {
      add(fold_quoted ? ascii_lower(body[i]) : body[i]);
      if (body[i] == '"') ++i;  // "" stands for one "
    }
  } else {
    return false;  // U&"..." would need its escapes decoded
  }
  if (len > kMaxIdentifierBytes) {
    len = kMaxIdentifierBytes;
    while (len > 0 && (static_cast<unsigned char>(part[len]) & 0xC0) == 0x80)
      --len;
  }
  return out.append(std::string_view(part.data(), len));
}

// Token reader over the first statement only.
class Cursor {
 public:
  Cursor(std::string_view statement, std::size_t start) : lexer_(statement, start) { advance(); }

  bool at_end() const { return !has_; }
  const Token& peek() const { return token_; }
  bool peek_word(std::string_view word) const { return has_ && token_.is_word(word); }
  bool peek_punct(char c) const { return has_ && token_.is_punct(c); }
  // The token after the next one.
  bool peek2_word(std::string_view word) const {
    SqlLexer ahead = lexer_;
    Token t;
    return has_ && ahead.next(t) && t.is_word(word);
  }
  bool peek2_name() const {
    SqlLexer ahead = lexer_;
    Token t;
    return has_ && ahead.next(t) && is_name_token(t);
  }
  bool peek2_kind(TokenKind kind) const {
    SqlLexer ahead = lexer_;
    Token t;
    return has_ && ahead.next(t) && t.kind == kind;
  }
  bool take(Token& t) {
    if (!has_) return false;
    t = token_;
    advance();
    return true;
  }
  void skip() { advance(); }
  bool accept(std::string_view word) {
    if (!peek_word(word)) return false;
    advance();
    return true;
  }
  bool accept_any(std::initializer_list<std::string_view> words) {
    for (std::string_view w : words) {
      if (accept(w)) return true;
    }
    return false;
  }

 private:
  void advance() { has_ = lexer_.next(token_); }

  SqlLexer lexer_;
  Token token_;
  bool has_ = false;
};

class Classifier {
 public:
  Classifier(std::string_view sql, StatementInfo& info) : sql_(sql), info_(info) {}

  void run() {
    info_.hint = leading_hint(sql_);
    SqlLexer lexer(sql_);
    Token t;
    bool have = lexer.next(t);
    while (have && t.is_punct(';'))
      have = lexer.next(t);
    if (!have) {
      info_.kind = StatementKind::Empty;
      info_.next_offset = sql_.size();
      return;
    }
    const Token first = t;
    scan_statement(lexer, t);
    info_.text = sql_.substr(first.offset, end_ - first.offset);
    if (first.kind == TokenKind::Unterminated) {
      info_.kind = StatementKind::Other;
      return;
    }
    Cursor c(sql_.substr(0, end_), first.offset);
    classify_head(c);
  }

 private:
  // The single pass: finds the end of the first statement and the facts that can be anywhere
  // in it, then peeks past it for another statement.
  void scan_statement(SqlLexer& lexer, Token t) {
    const bool is_do = t.is_word("do");
    if (is_do) info_.opaque = true;
    const bool is_create = t.is_word("create");
    const bool is_select = t.is_word("select");
    const bool is_with = t.is_word("with");
    // psql's heuristic for SQL-standard function bodies: in CREATE [OR REPLACE]
    // FUNCTION|PROCEDURE, ';' between BEGIN (ATOMIC) and its END does not end the statement.
    char head[4] = {0, 0, 0, 0};
    std::size_t words = 0;
    int begin_depth = 0;
    int depth = 0;
    Token prev;
    Token prev2;
    bool has_prev = false;
    bool has_prev2 = false;
    bool ended = false;
    bool into = false;            // INTO at the top level of a SELECT or WITH
    bool into_temporary = false;  // INTO [LOCAL|GLOBAL] TEMP|TEMPORARY there
    do {
      if (t.is_punct(';') && depth == 0 && begin_depth == 0) {
        ended = true;
        info_.next_offset = t.end();
        break;
      }
      end_ = t.end();
      if (is_word(t)) {
        if (words < 4 && is_any_word(t, {"create", "or", "replace", "function", "procedure"})) {
          head[words] = ascii_lower(t.text[0]);
        }
        ++words;
        const bool function_body =
            head[0] == 'c' &&
            (head[1] == 'f' || head[1] == 'p' ||
             (head[1] == 'o' && head[2] == 'r' && (head[3] == 'f' || head[3] == 'p')));
        if (function_body && depth == 0) {
          if (t.is_word("begin")) {
            ++begin_depth;
          } else if (t.is_word("case")) {
            if (begin_depth >= 1) ++begin_depth;  // CASE also ends with END
          } else if (t.is_word("end")) {
            if (begin_depth > 0) --begin_depth;
          }
        }
        if (is_with && depth == 0 && !main_verb_found_ && words > 1 &&
            is_any_word(t, {"select", "insert", "update", "delete", "values", "table", "merge"})) {
          main_verb_found_ = true;
          main_verb_ = t;
        }
      }
      if (t.kind == TokenKind::QuotedIdentifier && t.text.size() > 2 && (t.text[0] | 0x20) == 'u' &&
          t.text[1] == '&') {
        // U&"\0073et_config"(...), also with UESCAPE: what such a name calls is not worth
        // decoding here.
        info_.opaque = true;
        info_.set_config = StatementInfo::SetConfig::Unknown;
      }
      if (set_config_.active()) {
        if (!set_config_.feed(t, info_)) info_.set_config = StatementInfo::SetConfig::Unknown;
      }
      if (t.is_punct('(')) {
        ++depth;

        if (has_prev && is_advisory_session_lock_name(prev)) {
          info_.calls_advisory_session_lock = true;
        }
        if (has_prev && is_advisory_unlock_name(prev)) info_.calls_advisory_unlock = true;
        if (has_prev && is_set_config_name(prev)) {
          // A second call, or one whose arguments are not literals, cannot be followed.
          if (info_.set_config == StatementInfo::SetConfig::None) {
            set_config_.start();
          } else {
            info_.set_config = StatementInfo::SetConfig::Unknown;
          }
        }
      } else if (t.is_punct(')')) {
        if (depth > 0) --depth;
      } else if (is_do && (t.kind == TokenKind::String || t.kind == TokenKind::DollarString)) {
        const CallsInBody calls = calls_in_body(literal_body(t));
        if (calls.advisory_lock) info_.calls_advisory_session_lock = true;
        if (calls.advisory_unlock) info_.calls_advisory_unlock = true;
        if (calls.set_config) info_.set_config = StatementInfo::SetConfig::Unknown;
        if (calls.sets) info_.body_sets = true;
        if (calls.listens) info_.body_listens = true;
        if (calls.temporary) info_.temporary = true;
      }
      if (is_create && has_prev) {
        if (t.is_punct('.') &&
            (prev.is_word("pg_temp") ||
             (prev.kind == TokenKind::QuotedIdentifier && prev.text == "\"pg_temp\""))) {
          info_.temporary = true;
        }
        if (depth == 0 && has_prev2 && t.is_word("drop") && prev.is_word("commit") &&
            prev2.is_word("on")) {
          info_.on_commit_drop = true;
        }
      }
      if ((is_select || is_with) && depth == 0) {
        if (t.is_word("into")) into = true;
        if (has_prev && is_any_word(t, {"temp", "temporary"}) &&
            (prev.is_word("into") ||
             (has_prev2 && is_any_word(prev, {"local", "global"}) && prev2.is_word("into")))) {
          into_temporary = true;
        }
      }
      prev2 = prev;
      has_prev2 = has_prev;
      prev = t;
      has_prev = true;
    } while (lexer.next(t));
    // SELECT … INTO, also after WITH (whose INSERT INTO makes no table).
    if (into && (is_select || (main_verb_found_ && main_verb_.is_word("select")))) {
      info_.selects_into = true;
      if (into_temporary) info_.temporary = true;
    }
    // A call cut off by the end of the statement is not one pgvalve can follow.
    if (set_config_.active()) info_.set_config = StatementInfo::SetConfig::Unknown;
    if (!ended) {
      info_.next_offset = sql_.size();
      return;
    }
    while (lexer.next(t)) {
      if (!t.is_punct(';')) {
        info_.multiple_statements = true;
        break;
      }
    }
  }

  void classify_head(Cursor& c) {
    Token first;
    c.take(first);
    if (first.is_punct('(')) {
      Token t = first;
      while (t.is_punct('(') && c.take(t)) {
      }
      info_.kind = is_any_word(t, {"select", "values", "table", "with"}) ? StatementKind::Select
                                                                         : StatementKind::Other;
      return;
    }
    if (!is_word(first)) {
      info_.kind = StatementKind::Other;
      return;
    }
    if (first.is_word("begin")) {
      info_.kind = StatementKind::Begin;
      c.accept_any({"work", "transaction"});
      read_transaction_modes(c);
    } else if (first.is_word("start")) {
      if (c.accept("transaction")) {
        info_.kind = StatementKind::Begin;
        read_transaction_modes(c);
      } else {
        info_.kind = StatementKind::Other;
      }
    } else if (first.is_word("commit") || first.is_word("end")) {
      if (first.is_word("commit") && c.accept("prepared")) {
        info_.kind = StatementKind::CommitPrepared;
        info_.value = rest(c);
        return;
      }
      info_.kind = StatementKind::Commit;
      c.accept_any({"work", "transaction"});
      read_chain(c);
    } else if (first.is_word("rollback") || first.is_word("abort")) {
      if (first.is_word("rollback") && c.accept("prepared")) {
        info_.kind = StatementKind::RollbackPrepared;
        info_.value = rest(c);
        return;
      }
      c.accept_any({"work", "transaction"});
      if (c.accept("to")) {
        info_.kind = StatementKind::RollbackToSavepoint;
        // "savepoint" alone is a valid savepoint name: ROLLBACK TO savepoint
        if (c.peek_word("savepoint") && c.peek2_name()) c.skip();
        read_identifier(c);
        return;
      }
      info_.kind = StatementKind::Rollback;
      read_chain(c);
    } else if (first.is_word("savepoint")) {
      info_.kind = StatementKind::Savepoint;
      read_identifier(c);
    } else if (first.is_word("release")) {
      info_.kind = StatementKind::Release;
      if (c.peek_word("savepoint") && c.peek2_name()) c.skip();
      read_identifier(c);
    } else if (first.is_word("prepare")) {
      if (c.peek_word("transaction") && c.peek2_kind(TokenKind::String)) {
        c.skip();
        info_.kind = StatementKind::PrepareTransaction;
        info_.value = rest(c);
        return;
      }
      info_.kind = StatementKind::Prepare;
      read_identifier(c);
    } else if (first.is_word("execute")) {
      info_.kind = StatementKind::Execute;
      read_identifier(c);
    } else if (first.is_word("deallocate")) {
      info_.kind = StatementKind::Deallocate;
      if (c.peek_word("prepare")) {
        Cursor ahead = c;
        ahead.skip();
        if (!ahead.at_end()) c.skip();  // otherwise "prepare" is the statement's name
      }
      if (c.accept("all")) {
        info_.all = true;
        return;
      }
      read_identifier(c);
    } else if (first.is_word("set")) {
      read_set(c);
    } else if (first.is_word("reset")) {
      read_reset(c);
    } else if (first.is_word("show")) {
      read_show(c);
    } else if (first.is_word("discard")) {
      info_.kind = StatementKind::Discard;
      Token t;
      if (c.take(t) && is_any_word(t, {"all", "plans", "sequences", "temp", "temporary"})) {
        info_.raw_name = t.text;
        info_.discard_all = t.is_word("all");
        info_.name.append(t.is_word("all")         ? "all"
                          : t.is_word("plans")     ? "plans"
                          : t.is_word("sequences") ? "sequences"
                                                   : "temp");
      }
    } else if (first.is_word("listen") || first.is_word("notify")) {
      info_.kind = first.is_word("listen") ? StatementKind::Listen : StatementKind::Notify;
      read_identifier(c);
      info_.channel_only =
          info_.kind == StatementKind::Listen && !info_.raw_name.empty() && c.at_end();
      if (info_.kind == StatementKind::Notify && c.peek_punct(',')) {
        c.skip();
        info_.value = rest(c);
      }
    } else if (first.is_word("unlisten")) {
      info_.kind = StatementKind::Unlisten;
      if (!c.at_end() && c.peek().is_operator("*")) {
        info_.all = true;
        c.skip();
        info_.channel_only = c.at_end();
        return;
      }
      read_identifier(c);
      info_.channel_only = !info_.raw_name.empty() && c.at_end();
    } else if (is_any_word(first, {"select", "values", "table"})) {
      info_.kind = StatementKind::Select;
    } else if (first.is_word("with")) {
      info_.kind = main_verb_found_ ? verb_kind(main_verb_) : StatementKind::Other;
    } else if (first.is_word("insert") || first.is_word("update") || first.is_word("delete")) {
      info_.kind = verb_kind(first);
    } else if (first.is_word("copy")) {
      info_.kind = StatementKind::Copy;
    } else if (first.is_word("close")) {
      info_.kind = StatementKind::Close;
      if (c.accept("all")) {
        info_.all = true;
        return;
      }
      read_identifier(c);
    } else if (first.is_word("declare")) {
      info_.kind = StatementKind::Declare;
      read_identifier(c);
      read_cursor_options(c);
    } else if (first.is_word("create")) {
      info_.kind = StatementKind::Create;
      if (c.accept("or")) c.accept("replace");
      c.accept_any({"global", "local"});
      if (c.accept_any({"temp", "temporary"})) info_.temporary = true;
    } else if (first.is_word("alter")) {
      info_.kind = StatementKind::Alter;
    } else if (first.is_word("drop")) {
      info_.kind = StatementKind::Drop;
    } else if (first.is_word("explain")) {
      info_.kind = StatementKind::Explain;
    } else {
      info_.kind = StatementKind::Other;
    }
  }

  static StatementKind verb_kind(const Token& verb) {
    if (verb.is_word("insert")) return StatementKind::Insert;
    if (verb.is_word("update")) return StatementKind::Update;
    if (verb.is_word("delete")) return StatementKind::Delete;
    if (verb.is_word("merge")) return StatementKind::Other;
    return StatementKind::Select;
  }

  // The rest of the statement from the next token, as written.
  std::string_view rest(const Cursor& c) const {
    if (c.at_end()) return {};
    return sql_.substr(c.peek().offset, end_ - c.peek().offset);
  }

  void set_name(std::string_view constant, std::size_t raw_start, std::size_t raw_end) {
    info_.name.clear();
    info_.name.append(constant);
    info_.raw_name = sql_.substr(raw_start, raw_end - raw_start);
  }

  // ColId: one identifier, quoted names keep their case.
  void read_identifier(Cursor& c) {
    Token t;
    if (c.at_end() || !is_name_token(c.peek())) return;
    c.take(t);
    info_.raw_name = t.text;
    if (!append_identifier(info_.name, t, false)) {
      info_.name.clear();
      info_.name_unsupported = true;
    }
  }

  // var_name: ColId ('.' ColId)*, always lower-cased (parameter names are case-insensitive).
  bool read_parameter_name(Cursor& c) {
    Token t;
    if (c.at_end() || !is_name_token(c.peek())) return false;
    c.take(t);
    const std::size_t start = t.offset;
    std::size_t end = t.end();
    bool ok = append_identifier(info_.name, t, true);
    while (c.peek_punct('.') && c.peek2_name()) {
      c.skip();
      c.take(t);
      end = t.end();
      ok = ok && info_.name.push_back('.') && append_identifier(info_.name, t, true);
    }
    info_.raw_name = sql_.substr(start, end - start);
    if (!ok) {
      info_.name.clear();
      info_.name_unsupported = true;
    }
    return true;
  }

  // transaction_mode [[,] transaction_mode ...]: ISOLATION LEVEL ..., READ ONLY | WRITE,
  // [NOT] DEFERRABLE.
  void read_transaction_modes(Cursor& c) {
    using Flag = StatementInfo::Flag;
    using Isolation = StatementInfo::Isolation;
    auto count = [&] {
      if (info_.transaction_modes < 255) ++info_.transaction_modes;
    };
    Token t;
    while (c.take(t)) {
      if (t.is_word("isolation") && c.accept("level")) {
        count();
        if (c.accept("serializable")) {
          info_.isolation = Isolation::Serializable;
          info_.standby_refused_mode = true;
        } else if (c.accept("repeatable")) {
          c.accept("read");
          info_.isolation = Isolation::RepeatableRead;
        } else if (c.accept("read")) {
          if (c.accept("committed")) {
            info_.isolation = Isolation::ReadCommitted;
          } else if (c.accept("uncommitted")) {
            info_.isolation = Isolation::ReadUncommitted;
          }
        }
      } else if (t.is_word("read")) {
        if (c.accept("only")) {
          count();
          info_.read_only = true;
          info_.access_read_only = Flag::On;
        } else if (c.accept("write")) {
          count();
          info_.read_only = false;
          info_.access_read_only = Flag::Off;
          info_.standby_refused_mode = true;
        }
      } else if (t.is_word("not") && c.accept("deferrable")) {
        count();
        info_.deferrable = Flag::Off;
      } else if (t.is_word("deferrable")) {
        count();
        info_.deferrable = Flag::On;
      }
    }
  }

  void read_chain(Cursor& c) {
    if (!c.accept("and")) return;
    if (c.accept("no")) return;
    if (c.accept("chain")) info_.and_chain = true;
  }

  void read_cursor_options(Cursor& c) {
    Token t;
    while (c.take(t) && !t.is_word("for")) {
      if (t.is_word("with") && c.peek_word("hold")) info_.with_hold = true;
    }
  }

  void set_value(Cursor& c) {
    info_.value = rest(c);
    if (c.peek_word("default")) {
      Cursor ahead = c;
      ahead.skip();
      info_.value_is_default = ahead.at_end();
    }
  }

  void read_set(Cursor& c) {
    info_.kind = StatementKind::Set;
    if (c.accept("local")) {
      info_.kind = StatementKind::SetLocal;
    } else if (c.peek_word("session") && !c.peek2_word("authorization") &&
               !c.peek2_word("characteristics")) {
      c.skip();
    }
    if (c.at_end()) return;
    const Token head = c.peek();
    if (head.is_word("transaction")) {
      c.skip();
      info_.kind = StatementKind::SetTransaction;
      info_.value = rest(c);
      read_transaction_modes(c);
      return;
    }
    // The generic form wins whenever the name is followed by '=' or TO, as in the grammar.
    {
      Cursor ahead = c;
      if (read_parameter_name(ahead) && !ahead.at_end() &&
          (ahead.peek().is_operator("=") || ahead.peek_word("to"))) {
        c = ahead;
        c.skip();
        set_value(c);
        return;
      }
      info_.name.clear();
      info_.raw_name = {};
      info_.name_unsupported = false;
    }
    Token t;
    if (head.is_word("constraints")) {
      // SET CONSTRAINTS ... DEFERRED | IMMEDIATE lasts as long as the transaction, as SET
      // TRANSACTION does; no setting of that name exists, and a RESET of one fails.
      c.skip();
      info_.kind = StatementKind::SetTransaction;
      info_.value = rest(c);
    } else if (head.is_word("time") && c.peek2_word("zone")) {
      c.skip();
      c.take(t);
      set_name("timezone", head.offset, t.end());
      set_value(c);
      info_.value_is_default = info_.value_is_default || (c.peek_word("local") && rest_is_one(c));
    } else if (head.is_word("names")) {
      c.take(t);
      set_name("client_encoding", head.offset, t.end());
      set_value(c);
      info_.value_is_default = info_.value_is_default || c.at_end();
    } else if (head.is_word("schema") && c.peek2_kind(TokenKind::String)) {
      c.take(t);
      set_name("search_path", head.offset, t.end());
      set_value(c);
    } else if (head.is_word("role")) {
      c.take(t);
      set_name("role", head.offset, t.end());
      set_value(c);
    } else if (head.is_word("session") && c.peek2_word("authorization")) {
      c.skip();
      c.take(t);
      set_name("session_authorization", head.offset, t.end());
      set_value(c);
    } else if (head.is_word("session") && c.peek2_word("characteristics")) {
      c.skip();
      c.take(t);
      set_name("session_characteristics", head.offset, t.end());
      if (c.accept("as")) c.accept("transaction");
      info_.value = rest(c);
      read_transaction_modes(c);
    } else if (head.is_word("xml") && c.peek2_word("option")) {
      c.skip();
      c.take(t);
      set_name("xmloption", head.offset, t.end());
      set_value(c);
    } else if (read_parameter_name(c)) {
      set_value(c);  // SET name FROM CURRENT, or something the server will reject
    }
  }

  static bool rest_is_one(const Cursor& c) {
    Cursor ahead = c;
    ahead.skip();
    return ahead.at_end();
  }

  // RESET and SHOW share the special names.
  bool read_special_parameter(Cursor& c) {
    if (c.at_end()) return false;
    const Token head = c.peek();
    Token t;
    if (head.is_word("time") && c.peek2_word("zone")) {
      c.skip();
      c.take(t);
      set_name("timezone", head.offset, t.end());
      return true;
    }
    if (head.is_word("session") && c.peek2_word("authorization")) {
      c.skip();
      c.take(t);
      set_name("session_authorization", head.offset, t.end());
      return true;
    }
    if (head.is_word("transaction") && c.peek2_word("isolation")) {
      c.skip();
      c.take(t);
      t = c.peek();
      if (c.accept("level")) {
        set_name("transaction_isolation", head.offset, t.end());
        return true;
      }
    }
    return false;
  }

  void read_reset(Cursor& c) {
    info_.kind = StatementKind::Reset;
    if (c.peek_word("all")) {
      info_.kind = StatementKind::ResetAll;
      info_.raw_name = c.peek().text;
      info_.name.append("all");
      return;
    }
    if (!read_special_parameter(c)) read_parameter_name(c);
  }

  void read_show(Cursor& c) {
    info_.kind = StatementKind::Show;
    if (c.peek_word("all")) {
      info_.raw_name = c.peek().text;
      info_.name.append("all");
      return;
    }
    if (!read_special_parameter(c)) read_parameter_name(c);
  }

  std::string_view sql_;
  StatementInfo& info_;
  std::size_t end_ = 0;  // end of the first statement's last token
  bool main_verb_found_ = false;
  Token main_verb_;
  SetConfigReader set_config_;
};

}  // namespace

bool NormalizedName::append(std::string_view text) {
  if (text.size() > kCapacity - size_) return false;
  for (char c : text)
    buffer_[size_++] = c;
  return true;
}

bool NormalizedName::push_back(char c) {
  return append(std::string_view(&c, 1));
}

std::string_view statement_kind_name(StatementKind kind) {
  switch (kind) {
    case StatementKind::Empty:
      return "Empty";
    case StatementKind::Begin:
      return "Begin";
    case StatementKind::Commit:
      return "Commit";
    case StatementKind::Rollback:
      return "Rollback";
    case StatementKind::RollbackToSavepoint:
      return "RollbackToSavepoint";
    case StatementKind::Savepoint:
      return "Savepoint";
    case StatementKind::Release:
      return "Release";
    case StatementKind::PrepareTransaction:
      return "PrepareTransaction";
    case StatementKind::CommitPrepared:
      return "CommitPrepared";
    case StatementKind::RollbackPrepared:
      return "RollbackPrepared";
    case StatementKind::Set:
      return "Set";
    case StatementKind::SetLocal:
      return "SetLocal";
    case StatementKind::SetTransaction:
      return "SetTransaction";
    case StatementKind::Reset:
      return "Reset";
    case StatementKind::ResetAll:
      return "ResetAll";
    case StatementKind::Discard:
      return "Discard";
    case StatementKind::Deallocate:
      return "Deallocate";
    case StatementKind::Prepare:
      return "Prepare";
    case StatementKind::Execute:
      return "Execute";
    case StatementKind::Listen:
      return "Listen";
    case StatementKind::Unlisten:
      return "Unlisten";
    case StatementKind::Notify:
      return "Notify";
    case StatementKind::Show:
      return "Show";
    case StatementKind::Select:
      return "Select";
    case StatementKind::Insert:
      return "Insert";
    case StatementKind::Update:
      return "Update";
    case StatementKind::Delete:
      return "Delete";
    case StatementKind::Copy:
      return "Copy";
    case StatementKind::Declare:
      return "Declare";
    case StatementKind::Close:
      return "Close";
    case StatementKind::Create:
      return "Create";
    case StatementKind::Alter:
      return "Alter";
    case StatementKind::Drop:
      return "Drop";
    case StatementKind::Explain:
      return "Explain";
    case StatementKind::Other:
      return "Other";
  }
  return "?";
}

NormalizedName fetched_cursor(std::string_view sql) {
  NormalizedName name;
  SqlLexer lexer(sql, 0, SqlLexer::Keywords::NotLookedUp);
  Token t;
  if (!lexer.next(t) || !is_any_word(t, {"fetch", "move"})) return name;
  Token last;
  while (lexer.next(t) && !t.is_punct(';'))
    last = t;
  if (is_name_token(last) && !append_identifier(name, last, false)) name.clear();
  return name;
}

namespace {

// BEGIN, COMMIT, END, ROLLBACK or ABORT alone, as drivers send them around every transaction
// (psycopg2, JDBC without autocommit): what the lexer pass would find, read off the bytes. False
// for anything else (more words, a comment, other spaces), which the lexer pass takes.
bool classify_bare_transaction_word(std::string_view sql, StatementInfo& info) {
  std::size_t i = 0;
  while (i < sql.size() && sql_space(sql[i]))
    ++i;
  std::size_t end = i;
  while (end < sql.size() && ascii_letter(sql[end]))
    ++end;
  const std::string_view word = sql.substr(i, end - i);
  StatementKind kind;
  if (iequals(word, "begin")) {
    kind = StatementKind::Begin;
  } else if (iequals(word, "commit") || iequals(word, "end")) {
    kind = StatementKind::Commit;
  } else if (iequals(word, "rollback") || iequals(word, "abort")) {
    kind = StatementKind::Rollback;
  } else {
    return false;
  }
  std::size_t next = end;
  while (next < sql.size() && sql_space(sql[next]))
    ++next;
  if (next < sql.size()) {
    if (sql[next] != ';') return false;
    ++next;
    for (std::size_t k = next; k < sql.size(); ++k) {
      if (sql[k] != ';' && !sql_space(sql[k])) return false;  // another statement follows
    }
  }
  info.kind = kind;
  info.text = word;
  info.next_offset = next;
  return true;
}

}  // namespace

StatementInfo classify(std::string_view sql) {
  StatementInfo info;
  if (classify_bare_transaction_word(sql, info)) return info;
  Classifier(sql, info).run();
  return info;
}

// Runs for every statement, so memchr finds the candidates: the positions of the needle's
// last byte when that is not a letter ('.' in "pgvalve." is rare in SQL), else of its first
// letter in either case; only those are compared.
bool contains_ci(std::string_view sql, std::size_t from, std::string_view needle) {
  if (needle.empty() || sql.size() < needle.size() || from > sql.size() - needle.size()) {
    return false;
  }
  const char last = needle.back();
  const bool anchor_last = (last | 0x20) < 'a' || (last | 0x20) > 'z';
  const std::size_t shift = anchor_last ? needle.size() - 1 : 0;
  const char* const begin = sql.data() + from + shift;
  const char* const end = sql.data() + (sql.size() - needle.size()) + 1 + shift;
  const char lower = anchor_last ? last : needle[0];
  const char upper = static_cast<char>(lower - ('a' - 'A'));
  for (const char anchor : {lower, upper}) {
    for (const char* p = begin; p < end; ++p) {
      p = static_cast<const char*>(std::memchr(p, anchor, static_cast<std::size_t>(end - p)));
      if (p == nullptr) break;
      if (contains_at(sql, static_cast<std::size_t>(p - sql.data()) - shift, needle)) return true;
    }
    if (anchor_last) break;
  }
  return false;
}

bool may_start_with(std::string_view sql, std::initializer_list<std::string_view> words) {
  std::size_t i = 0;
  while (i < sql.size() && (sql_space(sql[i]) || sql[i] == '\f' || sql[i] == '\v'))
    ++i;
  if (i >= sql.size()) return false;
  if (sql[i] == '/' || sql[i] == '-') return true;
  const char first = static_cast<char>(sql[i] | 0x20);
  for (const std::string_view word : words) {
    if (first != word[0] || !contains_at(sql, i, word)) continue;
    const std::size_t end = i + word.size();
    // The word ends where an identifier would: "settings" is not SET.
    if (end == sql.size()) return true;
    const auto next = static_cast<unsigned char>(sql[end]);
    if (next < 0x80 && !std::isalnum(next) && next != '_' && next != '$') return true;
  }
  return false;
}

// A statement that reads or writes data, which a replica may refuse; the others (transaction
// control, settings, cursors, LISTEN) run where the request's reads do.
bool touches_data(StatementKind kind) {
  switch (kind) {
    case StatementKind::Select:
    case StatementKind::Insert:
    case StatementKind::Update:
    case StatementKind::Delete:
    case StatementKind::Copy:
    case StatementKind::Create:
    case StatementKind::Alter:
    case StatementKind::Drop:
    case StatementKind::Explain:
    case StatementKind::Execute:
    case StatementKind::Notify:
    case StatementKind::Other:
      return true;
    case StatementKind::Empty:
    case StatementKind::Begin:
    case StatementKind::Commit:
    case StatementKind::Rollback:
    case StatementKind::RollbackToSavepoint:
    case StatementKind::Savepoint:
    case StatementKind::Release:
    case StatementKind::PrepareTransaction:
    case StatementKind::CommitPrepared:
    case StatementKind::RollbackPrepared:
    case StatementKind::Set:
    case StatementKind::SetLocal:
    case StatementKind::SetTransaction:
    case StatementKind::Reset:
    case StatementKind::ResetAll:
    case StatementKind::Discard:
    case StatementKind::Deallocate:
    case StatementKind::Prepare:
    case StatementKind::Listen:
    case StatementKind::Unlisten:
    case StatementKind::Show:
    case StatementKind::Declare:
    case StatementKind::Close:
      return false;
  }
  return true;
}

bool plain_statement(std::string_view sql) {
  std::size_t i = 0;
  while (i < sql.size() && sql_space(sql[i]))
    ++i;
  std::size_t j = i;
  while (j < sql.size() && ((sql[j] | 0x20) >= 'a' && (sql[j] | 0x20) <= 'z'))
    ++j;
  // The word is ASCII letters only, so setting the case bit lower-cases it.
  if (j - i != 4 && j - i != 6) return false;
  char lowered[6];
  for (std::size_t k = i; k < j; ++k)
    lowered[k - i] = static_cast<char>(sql[k] | 0x20);
  const std::string_view word(lowered, j - i);
  if (word != "select" && word != "insert" && word != "update" && word != "delete" &&
      word != "values" && word != "with") {
    return false;
  }
  // Another statement may follow a ';' (only trailing ones are harmless). No word that means
  // session state holds a ';', so the search stops at the first.
  std::size_t end = sql.find(';', j);
  if (end != std::string_view::npos) {
    for (std::size_t p = end + 1; p < sql.size(); ++p) {
      if (sql[p] != ';' && !sql_space(sql[p])) return false;
    }
  } else {
    end = sql.size();
  }
  // A U&"" identifier may spell any function's name (U&"\0073et_config").
  for (std::size_t amp = sql.find('&', j); amp < end; amp = sql.find('&', amp + 1)) {
    if ((sql[amp - 1] | 0x20) == 'u' && amp + 1 < end && sql[amp + 1] == '"') return false;
  }
  // Windows of four bytes that start like one of the words, found sixteen positions at a time
  // (first and fourth letter compared together), then checked one by one. The last block is
  // moved back to end with the statement, overlapping the one before.
  const std::string_view statement = sql.substr(0, end);
  // WITH … INSERT INTO is looked at closer too: the lexer tells it from WITH … SELECT … INTO.
  const bool selects = word == "select" || word == "with";
  const char into_first = selects ? 'i' : 0;  // no lowered byte is 0
  std::size_t p = j;
  constexpr std::size_t kBlock = 16 + 3;  // bytes read for sixteen windows
  if (statement.size() - p >= kBlock) {
    for (;; p += 16) {
      p = std::min(p, statement.size() - kBlock);
      const Bytes16 first = lowered_bytes16(statement.data() + p);
      const Bytes16 fourth = lowered_bytes16(statement.data() + p + 3);
      const auto candidates =
          ((first == 't') & (fourth == 'p')) | ((first == 'a') & (fourth == 'i')) |
          ((first == 's') & (fourth == ('_' | 0x20))) | ((first == into_first) & (fourth == 'o'));
      std::uint64_t halves[2];
      std::memcpy(halves, &candidates, sizeof halves);
      if ((halves[0] | halves[1]) != 0) {
        for (std::size_t k = 0; k < 16; ++k) {
          if (candidates[k] != 0 && session_state_word_at(statement, p + k, selects)) {
            return false;
          }
        }
      }
      if (p + kBlock == statement.size()) return true;
    }
  }
  for (; p + 4 <= statement.size(); ++p) {
    if (session_state_word_at(statement, p, selects)) return false;
  }
  return true;
}

}  // namespace pgvalve::routing
