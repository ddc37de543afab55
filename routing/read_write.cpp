#include "routing/read_write.h"

#include <pg_query.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "routing/parse_tree.h"
#include "routing/read_only_functions.h"

namespace pgvalve::routing {

namespace {

using Json = nlohmann::json;

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// The statement verb of a data-modifying node, or empty.
std::string_view dml_verb(std::string_view node) {
  if (node == "InsertStmt") return "INSERT";
  if (node == "UpdateStmt") return "UPDATE";
  if (node == "DeleteStmt") return "DELETE";
  if (node == "MergeStmt") return "MERGE";
  return {};
}

std::string_view lock_strength(const Json& clauses) {
  static constexpr std::pair<std::string_view, std::string_view> kNames[] = {
      {"LCS_FORKEYSHARE", "FOR KEY SHARE"},
      {"LCS_FORSHARE", "FOR SHARE"},
      {"LCS_FORNOKEYUPDATE", "FOR NO KEY UPDATE"},
      {"LCS_FORUPDATE", "FOR UPDATE"},
  };
  const Json* strength = nullptr;
  if (clauses.is_array() && !clauses.empty()) {
    auto clause = clauses.front().find("LockingClause");
    if (clause != clauses.front().end() && clause->is_object()) {
      auto s = clause->find("strength");
      if (s != clause->end() && s->is_string()) strength = &*s;
    }
  }
  if (strength != nullptr) {
    for (auto [enum_name, text] : kNames) {
      if (strength->get_ref<const std::string&>() == enum_name) return text;
    }
  }
  return "FOR UPDATE/SHARE";
}

// A qualified name: a JSON list of {"String": {"sval": ...}} nodes, at most three parts.
struct Name {
  std::array<std::string_view, 3> parts{};
  std::size_t size = 0;

  std::string_view last() const { return parts[size - 1]; }
  // Unqualified or in pg_catalog (quoted "PG_CATALOG" is another schema).
  bool builtin_schema() const { return size == 1 || (size == 2 && parts[0] == "pg_catalog"); }
  std::string joined() const {
    std::string out;
    for (std::size_t i = 0; i < size; ++i) {
      if (i > 0) out.push_back('.');
      out.append(parts[i]);
    }
    return out;
  }
};

bool read_name(const Json* list, Name& name) {
  if (list == nullptr || !list->is_array() || list->empty() || list->size() > name.parts.size())
    return false;
  for (const Json& item : *list) {
    auto str = item.find("String");
    if (str == item.end() || !str->is_object()) return false;
    auto sval = str->find("sval");
    if (sval == str->end() || !sval->is_string()) return false;
    name.parts[name.size++] = sval->get_ref<const std::string&>();
  }
  return true;
}

const Json* member(const Json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// The single {"NodeType": {...}} a node field holds.
bool unwrap(const Json* node, std::string_view& type, const Json*& body) {
  if (node == nullptr || !node->is_object() || node->size() != 1) return false;
  type = node->begin().key();
  body = &node->begin().value();
  return true;
}

bool is_operator_expr_kind(const Json& expr) {
  static constexpr std::string_view kKinds[] = {
      "AEXPR_OP",     "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT",
      "AEXPR_NULLIF", "AEXPR_IN",     "AEXPR_LIKE",   "AEXPR_ILIKE",    "AEXPR_SIMILAR"};
  const Json* kind = member(expr, "kind");
  if (kind == nullptr) return true;  // an omitted enum is its first value, AEXPR_OP
  if (!kind->is_string()) return false;
  for (std::string_view k : kKinds) {
    if (kind->get_ref<const std::string&>() == k) return true;
  }
  return false;  // BETWEEN and friends: their name is a keyword, the operators are < and >
}

class Checker {
 public:
  Checker(const std::vector<std::string>& write_functions, StatementAccess& out)
      : write_functions_(write_functions), out_(out) {}

  // Whether everything under `root` only reads; false sets the reason. Iterative, so any
  // depth libpg_query accepts (thousands of nested subqueries) is walked without recursion.
  bool reads(const Json& root) {
    std::vector<const Json*> pending{&root};
    while (!pending.empty()) {
      const Json& node = *pending.back();
      pending.pop_back();
      if (node.is_array()) {
        for (const Json& item : node)
          pending.push_back(&item);
        continue;
      }
      if (!node.is_object()) continue;
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (!node_reads(it.key(), it.value())) return false;
        pending.push_back(&it.value());
      }
    }
    return true;
  }

  // A pg_notify() call was passed over as a read.
  bool notifies() const { return notifies_; }
  // It reads the running backend's own state (StatementAccess::own_backend).
  bool own_backend() const { return own_backend_; }

  bool fail(AccessReason reason, std::string_view detail = {}) {
    out_.read = false;
    out_.reason = reason;
    out_.set_detail(detail);
    return false;
  }

 private:
  // The checks one object member needs, before its contents are walked.
  bool node_reads(const std::string& key, const Json& value) {
    if (std::string_view verb = dml_verb(key); !verb.empty())
      return fail(AccessReason::WritableCte, verb);
    if (key == "lockingClause") {
      if (value.is_array() && !value.empty())
        return fail(AccessReason::LockingClause, lock_strength(value));
      return true;
    }
    if (key == "intoClause") return fail(AccessReason::SelectInto);
    if (!value.is_object()) return true;
    if (key == "FuncCall") return function_reads(member(value, "funcname"));
    if (key == "RangeVar") {
      note_relation(value);
      return true;
    }
    if (key == "A_Expr")
      return !is_operator_expr_kind(value) || operator_reads(member(value, "name"));
    // `x op ANY (subquery)`; `x IN (subquery)` has no operName (it is =).
    if (key == "SubLink") {
      const Json* op = member(value, "operName");
      return op == nullptr || operator_reads(op);
    }
    if (key == "SortBy") {  // ORDER BY x USING op
      const Json* op = member(value, "useOp");
      return op == nullptr || operator_reads(op);
    }
    return true;
  }

  bool function_reads(const Json* funcname) {
    Name name;
    if (!read_name(funcname, name)) return fail(AccessReason::UnknownFunction, "?");
    // Whether or not write_functions names it: either way it stays off the replicas.
    if (name.builtin_schema() && name.last() == "pg_notify") {
      notifies_ = true;
      return true;
    }
    if (is_write_function(name)) return fail(AccessReason::WriteFunction, name.joined());
    if (name.builtin_schema() &&
        (name.last() == "pg_backend_pid" || name.last() == "pg_listening_channels" ||
         name.last() == "pg_my_temp_schema" || name.last() == "pg_is_other_temp_schema")) {
      own_backend_ = true;
    }
    if (name.builtin_schema() && is_read_only_builtin(name.last())) return true;
    return fail(AccessReason::UnknownFunction, name.joined());
  }

  // The catalog views that show the running backend's own cursors, prepared statements and
  // memory (a CTE of the same name counts too: it only keeps the read on the own server).
  void note_relation(const Json& range_var) {
    const Json* schema = member(range_var, "schemaname");
    if (schema != nullptr &&
        (!schema->is_string() || schema->get_ref<const std::string&>() != "pg_catalog")) {
      return;
    }
    const Json* name = member(range_var, "relname");
    if (name == nullptr || !name->is_string()) return;
    const std::string& relation = name->get_ref<const std::string&>();
    if (relation == "pg_cursors" || relation == "pg_prepared_statements" ||
        relation == "pg_backend_memory_contexts") {
      own_backend_ = true;
    }
  }

  bool operator_reads(const Json* list) {
    Name name;
    if (!read_name(list, name)) return fail(AccessReason::UnknownOperator, "?");
    if (name.builtin_schema() && is_read_only_builtin_operator(name.last())) return true;
    return fail(AccessReason::UnknownOperator, name.joined());
  }

  // Entries name built-ins ("nextval", "pg_catalog.nextval") or, qualified, other functions.
  bool is_write_function(const Name& name) const {
    constexpr std::string_view kCatalog = "pg_catalog.";
    for (std::string_view entry : write_functions_) {
      if (entry.size() > kCatalog.size() && iequals(entry.substr(0, kCatalog.size()), kCatalog))
        entry.remove_prefix(kCatalog.size());
      if (name.builtin_schema()) {
        if (iequals(entry, name.last())) return true;
      } else if (name.size == 2) {
        const std::string_view schema = name.parts[0];
        if (entry.size() == schema.size() + 1 + name.last().size() &&
            iequals(entry.substr(0, schema.size()), schema) && entry[schema.size()] == '.' &&
            iequals(entry.substr(schema.size() + 1), name.last()))
          return true;
      }
    }
    return false;
  }

  const std::vector<std::string>& write_functions_;
  bool notifies_ = false;
  bool own_backend_ = false;
  StatementAccess& out_;
};

// EXPLAIN without ANALYZE only plans, which a standby does for any of these (planning takes no
// lock stronger than RowExclusiveLock); with ANALYZE the statement runs.
void decide_explain(const Json& explain, Checker& checker, StatementAccess& out) {
  bool analyze = false;
  if (const Json* options = member(explain, "options"); options != nullptr && options->is_array()) {
    for (const Json& option : *options) {
      std::string_view type;
      const Json* def = nullptr;
      if (!unwrap(&option, type, def) || type != "DefElem" || !def->is_object()) continue;
      const Json* name = member(*def, "defname");
      // Whatever its argument: `ANALYZE false` and `ANALYZE 'false'` share a fingerprint with
      // `ANALYZE true`, and the decision is cached per fingerprint.
      if (name != nullptr && name->is_string() &&
          iequals(name->get_ref<const std::string&>(), "analyze"))
        analyze = true;
    }
  }
  std::string_view type;
  const Json* body = nullptr;
  if (!unwrap(member(explain, "query"), type, body)) {
    checker.fail(AccessReason::NotRead, "ExplainStmt");
    return;
  }
  if (type == "SelectStmt") {
    out.read = !analyze || checker.reads(*body);
  } else if (std::string_view verb = dml_verb(type); !verb.empty()) {
    if (analyze) {
      checker.fail(AccessReason::ExplainAnalyzeWrite, verb);
    } else {
      out.read = true;
    }
  } else {
    // EXECUTE (an SQL-level prepared statement lives on the primary), DECLARE, CREATE TABLE AS.
    checker.fail(AccessReason::NotRead, type);
  }
}

void decide_copy(const Json& copy, Checker& checker, StatementAccess& out) {
  auto flag = [&](const char* key) {
    const Json* v = member(copy, key);
    return v != nullptr && v->is_boolean() && v->get<bool>();
  };
  if (flag("is_from")) {
    checker.fail(AccessReason::CopyFrom);
    return;
  }
  if (flag("is_program") || member(copy, "filename") != nullptr) {
    checker.fail(AccessReason::CopyToFile);
    return;
  }
  const Json* query = member(copy, "query");
  if (query == nullptr) {  // COPY table TO STDOUT
    out.read = true;
    return;
  }
  std::string_view type;
  const Json* body = nullptr;
  if (!unwrap(query, type, body)) {
    checker.fail(AccessReason::NotRead, "CopyStmt");
  } else if (type == "SelectStmt") {
    out.read = checker.reads(*body);
  } else if (std::string_view verb = dml_verb(type); !verb.empty()) {
    checker.fail(AccessReason::DataModifying, verb);  // COPY (INSERT ... RETURNING) TO STDOUT
  } else {
    checker.fail(AccessReason::NotRead, type);
  }
}

void decide_tree(const Json& tree, Checker& checker, StatementAccess& out) {
  const Json* stmts = member(tree, "stmts");
  if (stmts == nullptr || !stmts->is_array() || stmts->empty()) {
    checker.fail(AccessReason::Empty);
    return;
  }
  if (stmts->size() > 1) {
    checker.fail(AccessReason::MultipleStatements);
    return;
  }
  std::string_view type;
  const Json* body = nullptr;
  const Json& raw = stmts->front();
  if (!raw.is_object() || !unwrap(member(raw, "stmt"), type, body)) {
    checker.fail(AccessReason::Empty);
    return;
  }
  if (type == "SelectStmt") {  // also VALUES, TABLE t, WITH ... SELECT
    out.read = checker.reads(*body);
  } else if (type == "VariableShowStmt") {
    const Json* name = member(*body, "name");
    const std::string_view parameter =
        name && name->is_string() ? name->get_ref<const std::string&>() : std::string_view{};
    if (iequals(parameter, "transaction_read_only") || iequals(parameter, "in_hot_standby")) {
      checker.fail(AccessReason::ServerRole, parameter);
    } else {
      out.read = true;
    }
  } else if (type == "ExplainStmt") {
    decide_explain(*body, checker, out);
  } else if (type == "CopyStmt") {
    decide_copy(*body, checker, out);
  } else if (std::string_view verb = dml_verb(type); !verb.empty()) {
    checker.fail(AccessReason::DataModifying, verb);
  } else if (type == "DoStmt") {
    checker.fail(AccessReason::DoBlock);
  } else if (type == "CallStmt") {
    checker.fail(AccessReason::Call);
  } else {
    checker.fail(AccessReason::NotRead, type);
  }
}

}  // namespace

std::string_view access_reason_name(AccessReason reason) {
  switch (reason) {
    case AccessReason::Read:
      return "read";
    case AccessReason::SyntaxError:
      return "syntax error";
    case AccessReason::Empty:
      return "empty statement";
    case AccessReason::MultipleStatements:
      return "multiple statements";
    case AccessReason::NotRead:
      return "not a read statement";
    case AccessReason::DataModifying:
      return "data-modifying statement";
    case AccessReason::WritableCte:
      return "writable CTE";
    case AccessReason::LockingClause:
      return "locking clause";
    case AccessReason::SelectInto:
      return "SELECT INTO";
    case AccessReason::WriteFunction:
      return "write function";
    case AccessReason::UnknownFunction:
      return "unknown function";
    case AccessReason::UnknownOperator:
      return "unknown operator";
    case AccessReason::DoBlock:
      return "DO block";
    case AccessReason::Call:
      return "CALL";
    case AccessReason::CopyFrom:
      return "COPY FROM";
    case AccessReason::CopyToFile:
      return "COPY TO a file or program";
    case AccessReason::ExplainAnalyzeWrite:
      return "EXPLAIN ANALYZE of a write";
    case AccessReason::ServerRole:
      return "asks the server's role";
    case AccessReason::Notify:
      return "sends a notification";
  }
  return "?";
}

void StatementAccess::set_detail(std::string_view text) {
  std::size_t n = std::min(text.size(), kDetailCapacity);
  // Cut at a UTF-8 character boundary so that logs stay valid text.
  if (n < text.size()) {
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80)
      --n;
  }
  text.copy(detail_.data(), n);
  detail_size_ = static_cast<std::uint8_t>(n);
}

std::string StatementAccess::describe() const {
  const std::string_view name = access_reason_name(read ? AccessReason::Read : reason);
  if (read || detail_size_ == 0) return std::string(name);
  // libpg_query's messages often start with the reason already ("syntax error at or near").
  if (detail().starts_with(name)) return std::string(detail());
  std::string out(name);
  out.push_back(' ');
  out.append(detail());
  return out;
}

StatementAccess decide_access(std::string_view sql,
                              const std::vector<std::string>& write_functions) {
  StatementAccess out;
  // libpg_query reads a C string: text after a NUL would go unseen (the protocol forbids NUL).
  if (sql.find('\0') != std::string_view::npos) {
    out.set_detail("NUL byte in the statement");
    return out;
  }
  if (sql.size() > kMaxParsedStatementBytes) {
    out.set_detail("longer than " + std::to_string(kMaxParsedStatementBytes / 1024) +
                   " KiB, not parsed");
    return out;
  }
  const std::string text(sql);
  PgQueryParseResult result = pg_query_parse(text.c_str());
  struct Release {
    PgQueryParseResult& r;
    ~Release() { pg_query_free_parse_result(r); }
  } release{result};
  if (result.error != nullptr) {
    out.set_detail(result.error->message != nullptr ? result.error->message : "");
    return out;
  }
  const Json tree = Json::parse(result.parse_tree, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded() || !tree.is_object()) {
    out.set_detail("unreadable parse tree");
    return out;
  }
  out.parsed = true;
  out.reason = AccessReason::Read;
  Checker checker(write_functions, out);
  decide_tree(tree, checker, out);
  if (out.read && checker.notifies()) {
    out.read = false;
    out.reason = AccessReason::Notify;
    out.set_detail("pg_notify");
    return out;
  }
  if (out.read) {
    out.reason = AccessReason::Read;
    out.set_detail({});
    out.own_backend = checker.own_backend();
  }
  return out;
}

bool is_valid_sql(std::string_view sql) {
  const std::string text(sql);
  PgQueryParseResult result = pg_query_parse(text.c_str());
  const bool ok = result.error == nullptr;
  pg_query_free_parse_result(result);
  return ok;
}

}  // namespace pgvalve::routing
