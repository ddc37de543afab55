#include "routing/shard_plan.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <map>
#include <set>

#include "routing/normalized_walk.h"
#include "routing/parse_tree.h"
#include "routing/sql_lexer.h"

namespace pgvalve::routing {

int ShardingPolicy::shard_named(std::string_view name) const {
  for (std::size_t i = 0; i < shard_names.size(); ++i) {
    if (shard_names[i] == name) return static_cast<int>(i);
  }
  return -1;
}

void ShardPlan::set_unlisted_table(std::string_view name) {
  unlisted_size_ = static_cast<std::uint8_t>(std::min(name.size(), unlisted_.size()));
  std::copy_n(name.data(), unlisted_size_, unlisted_.data());
}

namespace {

class Analyzer {
 public:
  explicit Analyzer(const ShardingPolicy& policy) : policy_(policy) {}

  ShardPlan plan;
  std::vector<int> key_locations;  // offsets of key values, in statement order

  void run(std::string_view sql) {
    if (sql.size() > kMaxParsedStatementBytes) {
      plan.key = ShardPlan::Key::TooLong;
      return;
    }
    const std::optional<Json> parsed = parse_tree(sql);
    if (!parsed) {
      plan.key = ShardPlan::Key::Unparsed;
      return;
    }
    const Json& tree = *parsed;
    const Json* stmts = field(tree, "stmts");
    if (stmts == nullptr || !stmts->is_array() || stmts->empty()) return;
    collect_tables(tree);
    if (stmts->size() > 1) {
      // Statements on no table that only read or reset the session (asyncpg's reset at pool
      // release: SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL) run on any
      // shard, as each alone would; anything else needs each statement sent to its shard.
      if (plan.tables != ShardPlan::Tables::None || !all_session_statements(*stmts)) {
        plan.key = ShardPlan::Key::Multiple;
      }
      return;
    }
    const Json* stmt = field(stmts->front(), "stmt");
    if (stmt != nullptr) statement(*stmt);
  }

 private:
  bool sharded_table(std::string_view name) const {
    return std::find(policy_.reference_tables.begin(), policy_.reference_tables.end(), name) ==
           policy_.reference_tables.end();
  }

  // Every table named anywhere (subqueries, joins, CTE bodies); CTE names are not tables.
  void collect_tables(const Json& tree) {
    std::set<std::string>& ctes = ctes_;
    find_ctes(tree, ctes);
    bool any = false;
    bool sharded = false;
    bool unlisted = false;
    visit_range_vars(tree, [&](const Json& rv) {
      const Json* rel = field(rv, "relname");
      if (rel == nullptr || !rel->is_string()) return;
      const std::string& name = rel->get_ref<const std::string&>();
      const Json* schema = field(rv, "schemaname");
      if (schema == nullptr && ctes.contains(name)) return;
      any = true;
      const std::string_view schema_name =
          schema != nullptr && schema->is_string()
              ? std::string_view(schema->get_ref<const std::string&>())
              : std::string_view{};
      if (catalog(schema_name, name)) return;
      if (listed(policy_.reference_tables, name)) {
        plan.reference_table = true;
        return;
      }
      if (listed(policy_.tables, name)) {
        sharded = true;
      } else if (!unlisted) {
        unlisted = true;
        plan.set_unlisted_table(name);
      }
    });
    plan.tables = !any       ? ShardPlan::Tables::None
                  : unlisted ? ShardPlan::Tables::Unlisted
                  : sharded  ? ShardPlan::Tables::Sharded
                             : ShardPlan::Tables::ReferenceOnly;
  }

  static bool listed(const std::vector<std::string>& names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  }

  // The same on every server: drivers' and tools' catalog queries run on any shard.
  static bool catalog(std::string_view schema, std::string_view name) {
    if (schema == "pg_catalog" || schema == "information_schema") return true;
    return schema.empty() && name.starts_with("pg_");
  }

  void find_ctes(const Json& node, std::set<std::string>& out) {
    if (node.is_object()) {
      if (const Json* cte = as(node, "CommonTableExpr")) {
        const Json* name = field(*cte, "ctename");
        if (name != nullptr && name->is_string()) {
          out.insert(name->get<std::string>());
          if (const Json* q = field(*cte, "ctequery"); q != nullptr && over_sharded_only(*q)) {
            sharded_ctes_.insert(name->get<std::string>());
          }
        }
      }
      for (const auto& [k, v] : node.items())
        find_ctes(v, out);
    } else if (node.is_array()) {
      for (const Json& v : node)
        find_ctes(v, out);
    }
  }

  template <class F>
  static void visit_range_vars(const Json& node, const F& f) {
    if (node.is_object()) {
      for (const auto& [k, v] : node.items()) {
        if (k == "RangeVar" && v.is_object()) f(v);
        // INSERT/UPDATE/DELETE name their target as a bare RangeVar body under "relation".
        if (k == "relation" && v.is_object() && field(v, "relname") != nullptr) f(v);
        visit_range_vars(v, f);
      }
    } else if (node.is_array()) {
      for (const Json& v : node)
        visit_range_vars(v, f);
    }
  }

  void statement(const Json& stmt) {
    for (const char* kind : {"SelectStmt", "UpdateStmt", "DeleteStmt", "InsertStmt"}) {
      const Json* s = as(stmt, kind);
      // A data-modifying WITH writes rows the outer statement's key says nothing about.
      if (s != nullptr && writes_in_with(*s)) return;
    }
    if (const Json* s = as(stmt, "SelectStmt")) return select(*s);
    // A reference table has its rows on every shard: a write to it goes to all of them, whatever
    // its WHERE says.
    if (const Json* s = as(stmt, "UpdateStmt")) {
      if (!sharded_target(*s)) return;
      // A new key value would belong on another shard: the row cannot move by an UPDATE.
      if (sets_key(field(*s, "targetList"))) {
        plan.key = ShardPlan::Key::UpdatesKey;
        return;
      }
      add_scope(field(*s, "relation"));
      add_scope(field(*s, "fromClause"));
      where(field(*s, "whereClause"));
      return;
    }
    if (const Json* s = as(stmt, "DeleteStmt")) {
      if (!sharded_target(*s)) return;
      add_scope(field(*s, "relation"));
      add_scope(field(*s, "usingClause"));
      where(field(*s, "whereClause"));
      return;
    }
    if (const Json* s = as(stmt, "InsertStmt")) return insert(*s);
    if (const Json* s = as(stmt, "CopyStmt")) {
      if (const Json* from = field(*s, "is_from");
          from != nullptr && from->is_boolean() && from->get<bool>()) {
        plan.key = ShardPlan::Key::CopyFrom;
      }
      return;
    }
    if (const Json* s = as(stmt, "ExplainStmt")) {
      if (const Json* q = field(*s, "query")) statement(*q);
      return;
    }
    static constexpr const char* kDdl[] = {"CreateStmt",
                                           "AlterTableStmt",
                                           "IndexStmt",
                                           "DropStmt",
                                           "ViewStmt",
                                           "CreateSeqStmt",
                                           "AlterSeqStmt",
                                           "CreateFunctionStmt",
                                           "CommentStmt",
                                           "GrantStmt",
                                           "RenameStmt",
                                           "CreateSchemaStmt",
                                           "CreateExtensionStmt",
                                           "CreateEnumStmt",
                                           "CompositeTypeStmt",
                                           "CreateDomainStmt",
                                           "AlterEnumStmt",
                                           "CreateTrigStmt",
                                           "AlterDomainStmt",
                                           "AlterFunctionStmt",
                                           "CreateStatsStmt",
                                           "AlterObjectSchemaStmt",
                                           "AlterOwnerStmt"};
    for (const char* kind : kDdl) {
      if (as(stmt, kind) != nullptr) {
        plan.ddl = true;
        return;
      }
    }
  }

  static bool all_session_statements(const Json& stmts) {
    static constexpr const char* kSession[] = {"SelectStmt",       "VariableSetStmt",
                                               "VariableShowStmt", "ClosePortalStmt",
                                               "UnlistenStmt",     "DiscardStmt"};
    for (const Json& s : stmts) {
      const Json* stmt = field(s, "stmt");
      if (stmt == nullptr || !stmt->is_object() || stmt->size() != 1) return false;
      const std::string& kind = stmt->begin().key();
      if (std::none_of(std::begin(kSession), std::end(kSession),
                       [&](const char* k) { return kind == k; })) {
        return false;
      }
    }
    return true;
  }

  // The target of an INSERT/UPDATE/DELETE is a sharded table.
  bool sharded_target(const Json& s) const {
    const Json* rel = field(s, "relation");
    const Json* relname = rel != nullptr ? field(*rel, "relname") : nullptr;
    return relname != nullptr && relname->is_string() &&
           sharded_table(relname->get_ref<const std::string&>());
  }

  static bool writes_in_with(const Json& s) {
    const Json* with = field(s, "withClause");
    const Json* ctes = with != nullptr ? field(*with, "ctes") : nullptr;
    if (ctes == nullptr || !ctes->is_array()) return false;
    for (const Json& cte : *ctes) {
      const Json* c = as(cte, "CommonTableExpr");
      const Json* q = c != nullptr ? field(*c, "ctequery") : nullptr;
      if (q == nullptr) continue;
      for (const char* kind : {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}) {
        if (as(*q, kind) != nullptr) return true;
      }
    }
    return false;
  }

  void select(const Json& s) {
    const Json* op = field(s, "op");
    if (op != nullptr && op->is_string() && op->get_ref<const std::string&>() != "SETOP_NONE") {
      return;  // UNION/INTERSECT/EXCEPT: each side may need other shards
    }
    add_scope(field(s, "fromClause"));
    where(field(s, "whereClause"));
  }

  // The first conjunct of the top-level AND chain that fixes the key.
  void where(const Json* clause) {
    if (clause == nullptr || !sharded_relations_meet(clause)) return;
    std::vector<int> found;
    if (conjunct(*clause, found)) {
      key_locations = std::move(found);
      plan.key = ShardPlan::Key::Slots;
    }
  }

  bool conjunct(const Json& node, std::vector<int>& found) {
    if (const Json* b = as(node, "BoolExpr")) {
      const Json* op = field(*b, "boolop");
      const Json* args = field(*b, "args");
      if (op == nullptr || !op->is_string() || op->get_ref<const std::string&>() != "AND_EXPR" ||
          args == nullptr || !args->is_array()) {
        return false;
      }
      for (const Json& arg : *args) {
        if (conjunct(arg, found)) return true;
      }
      return false;
    }
    const Json* e = as(node, "A_Expr");
    if (e == nullptr || operator_name(*e) != "=") return false;
    const Json* kind = field(*e, "kind");
    if (kind == nullptr || !kind->is_string()) return false;
    const Json* l = field(*e, "lexpr");
    const Json* r = field(*e, "rexpr");
    if (l == nullptr || r == nullptr) return false;
    const std::string& k = kind->get_ref<const std::string&>();
    if (k == "AEXPR_OP") {
      int at = -1;
      if (is_key_column(*l)) at = value_location(*r);
      if (at < 0 && is_key_column(*r)) at = value_location(*l);
      if (at < 0) return false;
      found.push_back(at);
      return true;
    }
    if (k == "AEXPR_IN" && is_key_column(*l)) {
      const Json* list = as(*r, "List");
      const Json* items = list != nullptr ? field(*list, "items") : nullptr;
      if (items == nullptr || !items->is_array() || items->empty()) return false;
      for (const Json& item : *items) {
        const int at = value_location(item);
        if (at < 0) return false;
        found.push_back(at);
      }
      return true;
    }
    return false;
  }

  // A column named after the key is the key only when it is a sharded table's: qualified by
  // the name or alias of a sharded table of the statement's FROM (or UPDATE/DELETE target), or
  // unqualified with a sharded table in scope: that table has the column, so PostgreSQL reads
  // the name as its (or as the column USING merged it into) or refuses it as ambiguous. A
  // reference table's or a subquery's device_id says nothing about where the sharded table's
  // rows are.
  bool is_key_column(const Json& node) const {
    const Json* c = as(node, "ColumnRef");
    const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
    if (fields == nullptr || !fields->is_array() || fields->empty()) return false;
    if (sval(fields->back()) != policy_.key) return false;
    if (fields->size() == 1) {
      return std::any_of(scope_.begin(), scope_.end(), [](const Relation& r) { return r.sharded; });
    }
    const std::string_view qualifier = sval((*fields)[fields->size() - 2]);
    return std::any_of(scope_.begin(), scope_.end(),
                       [&](const Relation& r) { return r.sharded && r.name == qualifier; }) &&
           std::none_of(scope_.begin(), scope_.end(),
                        [&](const Relation& r) { return !r.sharded && r.name == qualifier; });
  }

  // The relations a statement's WHERE sees by name: tables (by alias, else by name), and
  // subqueries, functions and CTEs, whose columns are never the key.
  struct Relation {
    std::string name;
    bool sharded = false;
  };

  // Several sharded relations in scope: one's key value fixes the shard of the others' rows
  // only when all are joined on the key (`a.key = b.key` in the WHERE's or a join's top-level
  // AND chain, or USING (key) between sharded relations). Otherwise their rows are on every
  // shard and the statement is not routed by a key.
  bool sharded_relations_meet(const Json* clause) const {
    std::map<std::string, std::string> parent;
    for (const Relation& r : scope_) {
      if (r.sharded) parent.emplace(r.name, r.name);
    }
    if (parent.size() <= 1) return true;
    const auto root = [&](std::string x) {
      while (parent.at(x) != x)
        x = parent.at(x);
      return x;
    };
    const auto join = [&](const std::string& a, const std::string& b) {
      if (parent.contains(a) && parent.contains(b)) parent[root(a)] = root(b);
    };
    const auto equalities = [&](const Json* c, const auto& self) -> void {
      if (c == nullptr) return;
      if (const Json* b = as(*c, "BoolExpr")) {
        const Json* op = field(*b, "boolop");
        const Json* args = field(*b, "args");
        if (op != nullptr && op->is_string() && op->get_ref<const std::string&>() == "AND_EXPR" &&
            args != nullptr && args->is_array()) {
          for (const Json& arg : *args)
            self(&arg, self);
        }
        return;
      }
      const Json* e = as(*c, "A_Expr");
      if (e == nullptr || operator_name(*e) != "=") return;
      const Json* l = field(*e, "lexpr");
      const Json* r = field(*e, "rexpr");
      if (l == nullptr || r == nullptr || !is_key_column(*l) || !is_key_column(*r)) return;
      join(std::string(column_qualifier(*l)), std::string(column_qualifier(*r)));
    };
    equalities(clause, equalities);
    for (const Json* j : joins_) {
      equalities(field(*j, "quals"), equalities);
      const Json* using_clause = field(*j, "usingClause");
      if (using_clause == nullptr || !using_clause->is_array()) continue;
      for (const Json& name : *using_clause) {
        if (sval(name) != policy_.key) continue;
        std::vector<std::string> left;
        std::vector<std::string> right;
        if (sharded_names(field(*j, "larg"), left) && sharded_names(field(*j, "rarg"), right)) {
          for (const std::string& a : left) {
            for (const std::string& b : right)
              join(a, b);
          }
        }
      }
    }
    const std::string first = root(parent.begin()->first);
    return std::all_of(parent.begin(), parent.end(),
                       [&](const auto& p) { return root(p.first) == first; });
  }

  // The names of a FROM item's relations, when all are sharded tables.
  bool sharded_names(const Json* item, std::vector<std::string>& out) const {
    if (item == nullptr) return false;
    if (const Json* join = as(*item, "JoinExpr")) {
      return sharded_names(field(*join, "larg"), out) && sharded_names(field(*join, "rarg"), out);
    }
    const Json* rv = as(*item, "RangeVar");
    if (rv == nullptr) return false;
    const Json* alias = field(*rv, "alias");
    const Json* aliasname = alias != nullptr ? field(*alias, "aliasname") : nullptr;
    const std::string name = aliasname != nullptr ? text(aliasname) : text(field(*rv, "relname"));
    const auto it = std::find_if(scope_.begin(), scope_.end(),
                                 [&](const Relation& r) { return r.name == name; });
    if (it == scope_.end() || !it->sharded) return false;
    out.push_back(name);
    return true;
  }

  static std::string text(const Json* s) {
    return s != nullptr && s->is_string() ? s->get<std::string>() : std::string();
  }

  // A WITH query reading sharded tables only, without naming another column after the key, and
  // keeping every device's rows apart: its key column is theirs, and the statement's key places
  // the rows it yields. LIMIT or OFFSET, a window or DISTINCT ON not by the key, a set operation
  // (whose sides need not line up on the key) or a subquery over sharded tables would compute on
  // one shard what needs every shard's rows. Grouping is no such mix: a group's key, once an
  // output column, is its rows' key.
  bool over_sharded_only(const Json& query) const {
    bool only = true;
    bool any = false;
    const auto walk = [&](const Json& n, const auto& self) -> void {
      if (!only) return;
      if (n.is_object()) {
        for (const auto& [k, v] : n.items()) {
          if (k == "RangeVar") {
            any = true;
            const Json* schema = field(v, "schemaname");
            const std::string name = text(field(v, "relname"));
            if (!sharded_table(name) || (schema == nullptr && ctes_.contains(name))) only = false;
          } else if (k == "RangeFunction" || k == "RangeTableFunc") {
            only = false;
          } else if (k == "ResTarget") {
            if (text(field(v, "name")) == policy_.key) only = false;
          } else if (k == "aliascolnames" || k == "limitCount" || k == "limitOffset" ||
                     k == "SubLink") {
            only = false;
          } else if (k == "SelectStmt" || k == "larg" || k == "rarg") {
            const Json* op = field(v, "op");
            if (op != nullptr && text(op) != "SETOP_NONE") only = false;
          } else if (k == "distinctClause") {
            // DISTINCT is `[{}]`; DISTINCT ON lists its expressions.
            const bool plain =
                v.is_array() && v.size() == 1 && v.front().is_object() && v.front().empty();
            if (!plain && !names_key(v)) only = false;
          } else if (k == "windowClause") {
            only = v.is_array() && std::all_of(v.begin(), v.end(), [&](const Json& w) {
                     const Json* def = as(w, "WindowDef");
                     return def != nullptr && names_key(field(*def, "partitionClause"));
                   });
          } else if (k == "over") {
            // OVER w or OVER (w ...) takes its partitions from w, which windowClause holds.
            if (field(v, "name") == nullptr && field(v, "refname") == nullptr &&
                !names_key(field(v, "partitionClause"))) {
              only = false;
            }
          }
          self(v, self);
        }
      } else if (n.is_array()) {
        for (const Json& v : n)
          self(v, self);
      }
    };
    walk(query, walk);
    return only && any;
  }

  // Whether a list of expressions holds a column named after the key.
  bool names_key(const Json* list) const {
    if (list == nullptr || !list->is_array()) return false;
    return std::any_of(list->begin(), list->end(), [&](const Json& e) {
      const Json* c = as(e, "ColumnRef");
      const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
      return fields != nullptr && fields->is_array() && !fields->empty() &&
             sval(fields->back()) == policy_.key;
    });
  }
  bool names_key(const Json& list) const { return names_key(&list); }

  void add_scope(const Json* item) {
    if (item == nullptr) return;
    if (item->is_array()) {
      for (const Json& i : *item)
        add_scope(&i);
      return;
    }
    const Json* rv = as(*item, "RangeVar");
    if (rv == nullptr && item->is_object() && field(*item, "relname") != nullptr) rv = item;
    if (rv != nullptr) {
      const Json* alias = field(*rv, "alias");
      const Json* aliasname = alias != nullptr ? field(*alias, "aliasname") : nullptr;
      const std::string name = text(field(*rv, "relname"));
      const bool cte = field(*rv, "schemaname") == nullptr && ctes_.contains(name);
      // `telemetry AS t(a, b)` may have renamed the key column.
      const bool renamed = alias != nullptr && field(*alias, "colnames") != nullptr;
      scope_.push_back({aliasname != nullptr ? text(aliasname) : name,
                        !renamed && (cte ? sharded_ctes_.contains(name) : sharded_table(name))});
      return;
    }
    if (const Json* join = as(*item, "JoinExpr")) {
      joins_.push_back(join);
      add_scope(field(*join, "larg"));
      add_scope(field(*join, "rarg"));
      return;
    }
    // A subquery, function or anything else: its columns are not a table's.
    std::string name;
    for (const auto& [kind, body] : item->items()) {
      const Json* alias = body.is_object() ? field(body, "alias") : nullptr;
      const Json* aliasname = alias != nullptr ? field(*alias, "aliasname") : nullptr;
      if (aliasname != nullptr) name = text(aliasname);
    }
    scope_.push_back({name, false});
  }

  // Where a constant or $n (under casts and a minus sign) starts; -1 for anything else.
  static int value_location(const Json& node) {
    if (const Json* c = as(node, "A_Const")) {
      return field(*c, "isnull") != nullptr ? -1 : location_of(*c);
    }
    if (const Json* p = as(node, "ParamRef")) return location_of(*p);
    if (const Json* t = as(node, "TypeCast")) {
      const Json* arg = field(*t, "arg");
      return arg != nullptr ? value_location(*arg) : -1;
    }
    if (const Json* e = as(node, "A_Expr")) {
      // A minus sign the lexer folds into the number after it.
      const Json* r = field(*e, "rexpr");
      if (field(*e, "lexpr") == nullptr && operator_name(*e) == "-" && r != nullptr) {
        const Json* inner = r;
        while (inner != nullptr) {
          const Json* t = as(*inner, "TypeCast");
          if (t == nullptr) break;
          inner = field(*t, "arg");
        }
        if (inner != nullptr && as(*inner, "A_Const") != nullptr) return location_of(*e);
      }
    }
    return -1;
  }

  // Whether an UPDATE's SET list (`targets`) assigns the key.
  bool sets_key(const Json* targets) const {
    if (targets == nullptr || !targets->is_array()) return false;
    for (const Json& t : *targets) {
      const Json* target = as(t, "ResTarget");
      const Json* name = target != nullptr ? field(*target, "name") : nullptr;
      if (name != nullptr && name->is_string() &&
          name->get_ref<const std::string&>() == policy_.key) {
        return true;
      }
    }
    return false;
  }

  void insert(const Json& s) {
    if (!sharded_target(s)) return;  // a reference table: every shard
    // ON CONFLICT DO UPDATE SET device_id = ...: the row would stay where it is under a key
    // that belongs on another shard, as with an UPDATE of the key.
    if (const Json* conflict = field(s, "onConflictClause");
        conflict != nullptr && sets_key(field(*conflict, "targetList"))) {
      plan.key = ShardPlan::Key::UpdatesKey;
      return;
    }
    const Json* cols = field(s, "cols");
    int key_index = -1;
    if (cols != nullptr && cols->is_array()) {
      for (std::size_t i = 0; i < cols->size(); ++i) {
        const Json* target = as((*cols)[i], "ResTarget");
        const Json* name = target != nullptr ? field(*target, "name") : nullptr;
        if (name != nullptr && name->is_string() &&
            name->get_ref<const std::string&>() == policy_.key) {
          key_index = static_cast<int>(i);
        }
      }
    }
    const Json* select = field(s, "selectStmt");
    const Json* values = nullptr;
    if (select != nullptr) {
      if (const Json* sel = as(*select, "SelectStmt")) values = field(*sel, "valuesLists");
    }
    if (values == nullptr || !values->is_array() || values->empty()) {
      plan.key = ShardPlan::Key::InsertSelect;
      return;
    }
    if (key_index < 0) {
      plan.key = ShardPlan::Key::InsertNoKey;
      return;
    }
    std::vector<int> found;
    for (const Json& row : *values) {
      const Json* list = as(row, "List");
      const Json* items = list != nullptr ? field(*list, "items") : nullptr;
      if (items == nullptr || !items->is_array() ||
          static_cast<std::size_t>(key_index) >= items->size()) {
        plan.key = ShardPlan::Key::InsertNoKey;
        return;
      }
      const int at = value_location((*items)[static_cast<std::size_t>(key_index)]);
      if (at < 0) {
        plan.key = ShardPlan::Key::InsertNoKey;  // DEFAULT or an expression: no value to route by
        return;
      }
      found.push_back(at);
    }
    key_locations = std::move(found);
    plan.key = ShardPlan::Key::Slots;
  }

  const ShardingPolicy& policy_;
  std::set<std::string> ctes_;          // names of the statement's WITH queries
  std::set<std::string> sharded_ctes_;  // those over sharded tables only (over_sharded_only)
  std::vector<Relation> scope_;         // what the WHERE being read sees
  std::vector<const Json*> joins_;      // and the joins of its FROM
};

struct Analysis {
  ShardPlan plan;
  std::vector<std::uint32_t> ordinals;
};

Analysis analyze(std::string_view sql, const ShardingPolicy& policy) {
  Analyzer a(policy);
  a.run(sql);
  Analysis out{a.plan, {}};
  if (out.plan.key != ShardPlan::Key::Slots) return out;
  out.ordinals = slot_ordinals(sql, a.key_locations);
  if (out.ordinals.empty()) {
    // Values the lexer cannot point at: treated as no key (writes are then refused, reads
    // scattered), never guessed.
    out.plan.key = ShardPlan::Key::None;
    return out;
  }
  const std::size_t n = out.ordinals.size();
  const std::uint32_t first = out.ordinals[0];
  const std::uint32_t stride = n > 1 ? out.ordinals[1] - first : 1;
  bool regular = n <= UINT16_MAX && first <= UINT16_MAX && stride <= UINT16_MAX && stride > 0;
  for (std::size_t i = 1; regular && i < n; ++i) {
    regular = out.ordinals[i] == first + i * stride;
  }
  if (regular) {
    out.plan.first_slot = static_cast<std::uint16_t>(first);
    out.plan.stride = static_cast<std::uint16_t>(stride);
    out.plan.count = static_cast<std::uint16_t>(n);
  } else {
    out.plan.key = ShardPlan::Key::Reparse;
  }
  return out;
}

// Reads key values out of literal slots and adds their shards to a ShardKeys.
class KeyReader {
 public:
  KeyReader(std::string_view sql, const ShardingPolicy& policy, const ParamSource* params)
      : sql_(sql), policy_(policy), params_(params) {}

  ShardKeys keys;
  bool any = false;
  // The $n of the values read, while each was a $n a regular step after the one before.
  KeyParams layout;
  bool layout_regular = true;

  void add(const LiteralSlot& s) {
    if (done()) return;
    if (!s.list) return add_token(sql_.substr(s.begin, s.end - s.begin));
    SqlLexer lexer(sql_.substr(0, s.end), s.begin);
    Token t;
    lexer.next(t);  // the opening bracket
    while (!done() && lexer.next(t)) {
      if (t.is_punct(',') || t.is_punct(')') || t.is_punct(']')) continue;
      if (t.is_operator("-")) {
        Token number;
        if (!lexer.next(number)) break;
        add_token(sql_.substr(t.offset, number.end() - t.offset));
        continue;
      }
      add_token(t.text);
    }
  }

 private:
  bool done() const { return stop_; }
  void finish(ShardKeys::Status status) {
    keys.status = status;
    if (status != ShardKeys::Status::Found) keys.shards = 0;
    stop_ = true;
  }

  void add_value(std::optional<KeyValue> value, std::string_view text) {
    if (!value) {
      keys.bad_value = text;
      return finish(ShardKeys::Status::Invalid);
    }
    keys.shards |= std::uint64_t{1} << policy_.map.shard_of(*value);
    keys.status = ShardKeys::Status::Found;
    any = true;
  }

  void add_token(std::string_view text) {
    if (text.empty()) return;
    const KeyType type = policy_.map.key_type();
    if (text[0] == '$' && text.size() > 1 && text[1] >= '0' && text[1] <= '9') {
      int number = 0;
      const auto [p, ec] = std::from_chars(text.data() + 1, text.data() + text.size(), number);
      if (ec != std::errc()) return finish(ShardKeys::Status::NotBound);
      note_param(number);
      return add_param(number);
    }
    layout_regular = false;
    if (text[0] == '$') {  // $tag$...$tag$
      const std::size_t open = text.find('$', 1);
      if (open == std::string_view::npos || text.size() < 2 * (open + 1)) return unreadable();
      const std::string_view body = text.substr(open + 1, text.size() - 2 * (open + 1));
      return add_value(key_from_text(body, type), body);
    }
    std::string_view quoted = text;
    if (quoted[0] == 'E' || quoted[0] == 'e') {
      quoted.remove_prefix(1);
      if (quoted.find('\\') != std::string_view::npos) return unreadable();
    }
    if (quoted[0] == '\'') {
      if (quoted.size() < 2 || quoted.back() != '\'') return unreadable();
      const std::string_view body = quoted.substr(1, quoted.size() - 2);
      if (body.find('\'') == std::string_view::npos)
        return add_value(key_from_text(body, type), body);
      // '' inside, or 'a' <newline> 'b' (one literal, 'ab'): undone into scratch (a key value
      // longer than it is not read).
      if (body.size() > scratch_.size()) return unreadable();
      std::size_t n = 0;
      for (std::size_t i = 0; i < body.size(); ++i) {
        if (body[i] != '\'') {
          scratch_[n++] = body[i];
        } else if (i + 1 < body.size() && body[i + 1] == '\'') {
          scratch_[n++] = '\'';
          ++i;
        } else {
          // The end of one part: only whitespace and -- comments (which may hold quotes) stand
          // before the quote that opens the next.
          for (++i; i < body.size() && body[i] != '\''; ++i) {
            if (body[i] == '-' && i + 1 < body.size() && body[i + 1] == '-') {
              while (i + 1 < body.size() && body[i + 1] != '\n' && body[i + 1] != '\r')
                ++i;
            }
          }
        }
      }
      const std::string_view value(scratch_.data(), n);
      return add_value(key_from_text(value, type), text);
    }
    if ((text[0] >= '0' && text[0] <= '9') || text[0] == '-' || text[0] == '.') {
      std::string_view number = text;
      if (number[0] == '-' && number.size() > 1 && !(number[1] >= '0' && number[1] <= '9') &&
          number[1] != '.') {
        // `- 42`, `- /* c */ 42`: whitespace and comments may stand between sign and digits.
        SqlLexer lexer(number, 1);
        Token digits;
        if (!lexer.next(digits) || digits.kind != TokenKind::Number) return unreadable();
        if (digits.text.size() + 1 > scratch_.size()) return unreadable();
        scratch_[0] = '-';
        std::copy(digits.text.begin(), digits.text.end(), scratch_.begin() + 1);
        number = std::string_view(scratch_.data(), digits.text.size() + 1);
      }
      if (type == KeyType::Auto && !key_from_text(number, KeyType::Bigint)) {
        // An unquoted number that is not an integer (7.0, 7e0, 1.5): a bigint column stores it
        // rounded (7), a text column as written ('7.0'). Which one pgvalve cannot tell, and
        // either guess puts some rows where their key does not hash.
        return add_value(std::nullopt, text);
      }
      return add_value(key_from_text(number, type), text);
    }
    unreadable();  // N'', U&'', B'', X'', or something the grammar took for a value
  }

  void unreadable() {
    keys.shards = 0;
    finish(ShardKeys::Status::NoKey);
  }

  void note_param(int number) {
    if (!layout_regular) return;
    if (number <= 0 || number > UINT16_MAX || layout.count == UINT16_MAX) {
      layout_regular = false;
      return;
    }
    const auto n = static_cast<std::uint16_t>(number);
    if (layout.count == 0) {
      layout.first = n;
    } else if (layout.count == 1 && n > layout.first) {
      layout.stride = static_cast<std::uint16_t>(n - layout.first);
    } else if (layout.count == 1 || n != layout.first + layout.count * layout.stride) {
      layout_regular = false;
      return;
    }
    ++layout.count;
  }

 public:
  bool stopped() const { return stop_; }

  void add_param(int number) {
    if (params_ == nullptr) return finish(ShardKeys::Status::NotBound);
    const std::optional<BoundParam> param = params_->param(number);
    if (!param) return finish(ShardKeys::Status::NotBound);
    if (!param->value) return finish(ShardKeys::Status::Null);
    const std::string_view shown = !param->binary    ? *param->value
                                   : param->type_oid ? kBinaryParameter
                                                     : kUntypedBinaryParameter;
    const KeyType type = policy_.map.key_type();
    add_value(param->binary ? key_from_binary(*param->value, param->type_oid, type)
                            : key_from_text(*param->value, type),
              shown);
  }

 private:
  std::string_view sql_;
  const ShardingPolicy& policy_;
  const ParamSource* params_;
  std::array<char, 256> scratch_{};
  bool stop_ = false;
};

// Feeds the slots a plan names to a KeyReader, in one lexer pass.
class PlannedSlots {
 public:
  PlannedSlots(const ShardPlan& plan, KeyReader& reader) : plan_(plan), reader_(reader) {}
  void put(std::string_view, bool) {}
  void slot(const LiteralSlot& s) {
    const std::uint32_t i = ordinal_++;
    if (i < plan_.first_slot) return;
    const std::uint32_t from_first = i - plan_.first_slot;
    if (from_first % plan_.stride != 0 || from_first / plan_.stride >= plan_.count) return;
    // Counted even once the reader has stopped (a NULL, an unbound $n, a bad value): the count
    // tells a statement of the plan's shape from another, not how far the reading went.
    ++seen_;
    if (!reader_.stopped()) reader_.add(s);
  }
  std::uint32_t seen() const { return seen_; }

 private:
  const ShardPlan& plan_;
  KeyReader& reader_;
  std::uint32_t ordinal_ = 0;
  std::uint32_t seen_ = 0;
};

class ListedSlots {
 public:
  ListedSlots(const std::vector<std::uint32_t>& ordinals, KeyReader& reader)
      : ordinals_(ordinals), reader_(reader) {}
  void put(std::string_view, bool) {}
  void slot(const LiteralSlot& s) {
    const std::uint32_t i = ordinal_++;
    if (!reader_.stopped() && std::binary_search(ordinals_.begin(), ordinals_.end(), i)) {
      reader_.add(s);
    }
  }

 private:
  const std::vector<std::uint32_t>& ordinals_;
  KeyReader& reader_;
  std::uint32_t ordinal_ = 0;
};

}  // namespace

ShardPlan plan_shards(std::string_view sql, const ShardingPolicy& policy) {
  return analyze(sql, policy).plan;
}

ShardKeys shard_keys(std::string_view sql, const ShardPlan& plan, const ShardingPolicy& policy,
                     const ParamSource* params, KeyParams* layout) {
  if (layout) *layout = {};
  KeyReader reader(sql, policy, params);
  if (plan.key == ShardPlan::Key::Slots) {
    PlannedSlots slots(plan, reader);
    normalized_walk(sql, slots);
    // A statement of another shape than the plan's (a fingerprint collision) reads no key.
    if (slots.seen() != plan.count) return ShardKeys{};
    // Every key slot read, each a $n: the same text puts its keys in the same $n next time.
    if (layout && !reader.stopped() && reader.layout_regular && reader.any) {
      *layout = reader.layout;
    }
  } else if (plan.key == ShardPlan::Key::Reparse) {
    const Analysis fresh = analyze(sql, policy);
    if (fresh.plan.key != ShardPlan::Key::Slots && fresh.plan.key != ShardPlan::Key::Reparse) {
      return ShardKeys{};
    }
    ListedSlots slots(fresh.ordinals, reader);
    normalized_walk(sql, slots);
  } else {
    return ShardKeys{};
  }
  if (reader.keys.status == ShardKeys::Status::Found && !reader.any) return ShardKeys{};
  return reader.keys;
}

ShardKeys shard_keys(const KeyParams& layout, const ShardingPolicy& policy,
                     const ParamSource& params) {
  KeyReader reader({}, policy, &params);
  for (std::uint32_t i = 0; i < layout.count && !reader.stopped(); ++i)
    reader.add_param(static_cast<int>(layout.first + i * layout.stride));
  if (reader.keys.status == ShardKeys::Status::Found && !reader.any) return ShardKeys{};
  return reader.keys;
}

std::vector<std::uint16_t> insert_row_shards(std::string_view sql, const ShardPlan& plan,
                                             const ShardingPolicy& policy,
                                             const ParamSource* params) {
  if (plan.key != ShardPlan::Key::Slots || plan.stride == 0) return {};
  // Each key slot is read on its own, so each row gets its own shard.
  struct RowSlots {
    const ShardPlan& plan;
    std::string_view sql;
    const ShardingPolicy& policy;
    const ParamSource* params;
    std::vector<std::uint16_t> shards;
    bool ok = true;
    std::uint32_t ordinal = 0;
    void put(std::string_view, bool) {}
    void slot(const LiteralSlot& s) {
      const std::uint32_t i = ordinal++;
      if (i < plan.first_slot) return;
      const std::uint32_t from_first = i - plan.first_slot;
      if (from_first % plan.stride != 0 || from_first / plan.stride >= plan.count) return;
      KeyReader reader(sql, policy, params);
      reader.add(s);
      if (reader.keys.status != ShardKeys::Status::Found || !reader.any ||
          (reader.keys.shards & (reader.keys.shards - 1)) != 0) {
        ok = false;
        return;
      }
      shards.push_back(static_cast<std::uint16_t>(__builtin_ctzll(reader.keys.shards)));
    }
  } rows{plan, sql, policy, params, {}};
  normalized_walk(sql, rows);
  if (!rows.ok || rows.shards.size() != plan.count) return {};
  return std::move(rows.shards);
}

int shard_of_text(std::string_view value, const ShardingPolicy& policy) {
  const std::optional<KeyValue> key = key_from_text(value, policy.map.key_type());
  return key ? policy.map.shard_of(*key) : -1;
}

std::optional<KeyError> integer_key_error(std::string_view value, const ShardingPolicy& policy) {
  const std::string quoted =
      "\"" + std::string(value.substr(0, 64)) + (value.size() > 64 ? "...\"" : "\"");
  switch (key_refusal(value, policy.map.key_type())) {
    case KeyRefusal::OutOfRange:
      return KeyError{"22003", policy.key + " " + quoted +
                                   " is out of range for type bigint (sharding.key_type: "
                                   "bigint); give a " +
                                   policy.key + " within bigint"};
    case KeyRefusal::PaddedInteger:
      return KeyError{"22P02",
                      policy.key + " " + quoted +
                          " is an integer with whitespace around it: a bigint column stores it "
                          "without the whitespace, a text column as written, and "
                          "sharding.key_type: auto cannot tell which; write it without the "
                          "whitespace, or set sharding.key_type to the column's type"};
    case KeyRefusal::NotOfType:
      break;
  }
  return std::nullopt;
}

}  // namespace pgvalve::routing
