#include "routing/scatter_plan.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "protocol/binary_values.h"
#include "routing/normalized_walk.h"
#include "routing/parse_tree.h"
#include "routing/sql_lexer.h"

namespace pgvalve::routing {

namespace {

// One `avg(...)` call (or of another statistic) in a statement's text: the function name's token,
// the span of its arguments between the parentheses, and where the call ends (after a FILTER clause
// if any).
struct AvgCall {
  std::size_t name_begin = 0;
  std::size_t name_end = 0;
  std::size_t args_begin = 0;
  std::size_t args_end = 0;
  std::size_t end = 0;
};

// The aggregates a shard runs as sums with extra columns (ScatterPlan::Average).
constexpr std::string_view kStatistics[] = {"avg",      "stddev",   "stddev_samp", "stddev_pop",
                                            "variance", "var_samp", "var_pop"};

bool names_statistic(const Token& t) {
  for (std::string_view name : kStatistics) {
    if (t.is_word(name)) return true;
    if (t.kind == TokenKind::QuotedIdentifier && t.text.size() == name.size() + 2 &&
        t.text.substr(1, name.size()) == name) {
      return true;
    }
  }
  return false;
}

std::optional<ScatterPlan::Statistic> statistic_of(std::string_view name) {
  using S = ScatterPlan::Statistic;
  if (name == "avg") return S::Avg;
  if (name == "var_pop") return S::VarPop;
  if (name == "variance" || name == "var_samp") return S::VarSamp;
  if (name == "stddev_pop") return S::StddevPop;
  if (name == "stddev" || name == "stddev_samp") return S::StddevSamp;
  return std::nullopt;
}

// The index of the ')' that closes the '(' at `open`, or 0 when none does.
std::size_t closing(const std::vector<Token>& tokens, std::size_t open) {
  int depth = 0;
  for (std::size_t i = open; i < tokens.size(); ++i) {
    if (tokens[i].is_punct('(')) ++depth;
    if (tokens[i].is_punct(')') && --depth == 0) return i;
  }
  return 0;
}

// Every `avg (` (or of another statistic) of `sql`, in order. Literals never hold one (they are
// tokens of their own), so statements of one shape have the same calls in the same order. Empty
// when a parenthesis does not close (PostgreSQL refuses the statement anyway).
std::vector<AvgCall> avg_calls(std::string_view sql) {
  std::vector<Token> tokens;
  SqlLexer lexer(sql, 0, SqlLexer::Keywords::NotLookedUp);
  for (Token t; lexer.next(t);)
    tokens.push_back(t);
  std::vector<AvgCall> calls;
  for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
    if (!names_statistic(tokens[i]) || !tokens[i + 1].is_punct('(')) continue;
    const std::size_t close = closing(tokens, i + 1);
    if (close == 0) return {};
    AvgCall call{tokens[i].offset, tokens[i].end(), tokens[i + 1].end(), tokens[close].offset,
                 tokens[close].end()};
    if (close + 2 < tokens.size() && tokens[close + 1].is_word("filter") &&
        tokens[close + 2].is_punct('(')) {
      const std::size_t filter_close = closing(tokens, close + 2);
      if (filter_close == 0) return {};
      call.end = tokens[filter_close].end();
    }
    calls.push_back(call);
  }
  return calls;
}

// Where the statement's own SELECT starts: the first one outside parentheses, after the
// queries of a WITH clause (or the first at all, in a parenthesized statement).
std::size_t main_select(std::string_view sql) {
  SqlLexer lexer(sql, 0, SqlLexer::Keywords::NotLookedUp);
  Token t;
  int depth = 0;
  std::optional<std::size_t> first;
  while (lexer.next(t)) {
    if (t.is_punct('(') || t.is_punct('[')) {
      ++depth;
    } else if (t.is_punct(')') || t.is_punct(']')) {
      --depth;
    } else if (t.is_word("select")) {
      if (depth <= 0) return t.offset;
      if (!first) first = t.offset;
    }
  }
  return first.value_or(0);
}

// Where the output list of the statement's SELECT ends: right after its last token, before the
// reserved word (FROM, WHERE, GROUP, ...) or ';' that follows it. std::nullopt without a SELECT.
std::optional<std::size_t> target_list_end(std::string_view sql) {
  SqlLexer lexer(sql, main_select(sql), SqlLexer::Keywords::NotLookedUp);
  Token t;
  bool in_targets = false;
  int depth = 0;
  std::size_t end = 0;
  bool after_distinct = false;
  while (lexer.next(t)) {
    if (!in_targets) {
      if (t.is_word("select")) {
        in_targets = true;
        end = t.end();
      }
      continue;
    }
    if (t.is_punct('(') || t.is_punct('[')) {
      ++depth;
    } else if (t.is_punct(')') || t.is_punct(']')) {
      if (--depth < 0) return end;
    } else if (depth == 0) {
      if (t.is_punct(';')) return end;
      for (std::string_view word :
           {"from", "into", "where", "group", "having", "window", "union", "intersect", "except",
            "order", "limit", "offset", "fetch", "for"}) {
        // `a IS DISTINCT FROM b` is an expression, not the FROM clause.
        if (t.is_word(word) && !(word == "from" && after_distinct)) return end;
      }
    }
    after_distinct = t.is_word("distinct");
    end = t.end();
  }
  if (!in_targets) return std::nullopt;
  return end;
}

using SortKey = ScatterPlan::SortKey;
using Combine = ScatterPlan::Combine;

// PostgreSQL 15's built-in aggregates (pg_proc.prokind = 'a'); an integration test checks the
// list against a live server.
constexpr std::string_view kAggregates[] = {"array_agg",
                                            "avg",
                                            "bit_and",
                                            "bit_or",
                                            "bit_xor",
                                            "bool_and",
                                            "bool_or",
                                            "corr",
                                            "count",
                                            "covar_pop",
                                            "covar_samp",
                                            "cume_dist",
                                            "dense_rank",
                                            "every",
                                            "json_agg",
                                            "json_object_agg",
                                            "jsonb_agg",
                                            "jsonb_object_agg",
                                            "max",
                                            "min",
                                            "mode",
                                            "percent_rank",
                                            "percentile_cont",
                                            "percentile_disc",
                                            "range_agg",
                                            "range_intersect_agg",
                                            "rank",
                                            "regr_avgx",
                                            "regr_avgy",
                                            "regr_count",
                                            "regr_intercept",
                                            "regr_r2",
                                            "regr_slope",
                                            "regr_sxx",
                                            "regr_sxy",
                                            "regr_syy",
                                            "stddev",
                                            "stddev_pop",
                                            "stddev_samp",
                                            "string_agg",
                                            "sum",
                                            "var_pop",
                                            "var_samp",
                                            "variance",
                                            "xmlagg"};

// A copy without "location" keys, so that two spellings of one expression compare equal.
Json without_locations(const Json& node) {
  if (node.is_object()) {
    Json out = Json::object();
    for (const auto& [k, v] : node.items()) {
      if (k != "location") out[k] = without_locations(v);
    }
    return out;
  }
  if (node.is_array()) {
    Json out = Json::array();
    for (const Json& v : node)
      out.push_back(without_locations(v));
    return out;
  }
  return node;
}

template <class F>
bool any_node(const Json& node, const F& f) {
  if (f(node)) return true;
  if (node.is_object()) {
    for (const auto& [k, v] : node.items()) {
      if (any_node(v, f)) return true;
    }
  } else if (node.is_array()) {
    for (const Json& v : node) {
      if (any_node(v, f)) return true;
    }
  }
  return false;
}

// any_node at the statement's own level: not inside its subqueries (SubLink, RangeSubselect),
// which are judged on their own.
template <typename F>
bool any_own_node(const Json& node, const F& f) {
  if (f(node)) return true;
  if (node.is_object()) {
    for (const auto& [k, v] : node.items()) {
      if (k == "SubLink" || k == "RangeSubselect") continue;
      if (any_own_node(v, f)) return true;
    }
  } else if (node.is_array()) {
    for (const Json& v : node) {
      if (any_own_node(v, f)) return true;
    }
  }
  return false;
}

}  // namespace

bool is_builtin_aggregate(std::string_view name) {
  return std::find(std::begin(kAggregates), std::end(kAggregates), name) != std::end(kAggregates);
}

namespace {

const Json* aggregate_call(const Json& node) {
  const Json* call = as(node, "FuncCall");
  if (call == nullptr || field(*call, "over") != nullptr) return nullptr;
  return is_builtin_aggregate(last_name(field(*call, "funcname"))) ? call : nullptr;
}

bool contains_aggregate(const Json& node) {
  return any_node(node, [](const Json& n) { return aggregate_call(n) != nullptr; });
}

class Planner {
 public:
  Planner(std::string_view sql, const ShardingPolicy& policy) : sql_(sql), policy_(policy) {}

  ScatterPlan run() {
    const std::optional<Json> tree = parse_tree(sql_);
    if (!tree) return refuse("it is not valid SQL");
    const Json* stmts = field(*tree, "stmts");
    if (stmts == nullptr || !stmts->is_array() || stmts->size() != 1) {
      return refuse("several statements in one query are not combined");
    }
    const Json* stmt = field(stmts->front(), "stmt");
    const Json* s = stmt != nullptr ? as(*stmt, "SelectStmt") : nullptr;
    if (s == nullptr) return refuse("only a SELECT is combined from several shards");
    read_scope(*stmt);
    return select(*s);
  }

 private:
  ScatterPlan refuse(std::string why) {
    ScatterPlan p;
    p.refusal = std::move(why);
    return p;
  }

  // A sharded table, or a query of the WITH clause read as one (local_ctes_).
  bool sharded(const Json& range_var) const {
    const Json* rel = field(range_var, "relname");
    if (rel == nullptr || !rel->is_string()) return false;
    const std::string& name = rel->get_ref<const std::string&>();
    if (field(range_var, "schemaname") == nullptr &&
        std::find(local_ctes_.begin(), local_ctes_.end(), name) != local_ctes_.end()) {
      return true;
    }
    return std::find(policy_.tables.begin(), policy_.tables.end(), name) != policy_.tables.end();
  }

  // A column named after the key is the key only when it is a sharded table's (or a WITH
  // query's or subquery's over sharded tables only): qualified by such a relation's name or
  // alias, or unqualified when the statement reads no other relation. A reference table's
  // device_id is on every shard and keeps no device's rows apart.
  bool is_key(const Json& node) const {
    const Json* c = as(node, "ColumnRef");
    const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
    if (fields == nullptr || last_name(fields) != policy_.key) return false;
    if (fields->size() == 1) return unqualified_keys_.contains(location_of(*c));
    const std::string qualifier(sval((*fields)[fields->size() - 2]));
    return sharded_names_.contains(qualifier) && !other_names_.contains(qualifier);
  }

  static std::string text(const Json* s) {
    return s != nullptr && s->is_string() ? s->get<std::string>() : std::string();
  }

  static std::string alias_of(const Json& body) {
    const Json* alias = field(body, "alias");
    return alias != nullptr ? text(field(*alias, "aliasname")) : std::string();
  }

  // Which names of the statement's relations are sharded ones (see is_key).
  void read_scope(const Json& tree) {
    std::set<std::string> ctes;
    any_node(tree, [&](const Json& n) {
      if (const Json* cte = as(n, "CommonTableExpr")) ctes.insert(text(field(*cte, "ctename")));
      return false;
    });
    const auto sharded_or_cte = [&](const Json& rv) {
      const std::string name = text(field(rv, "relname"));
      if (field(rv, "schemaname") == nullptr && ctes.contains(name)) return true;
      return std::find(policy_.tables.begin(), policy_.tables.end(), name) != policy_.tables.end();
    };
    any_node(tree, [&](const Json& n) {
      if (const Json* rv = as(n, "RangeVar")) {
        const std::string alias = alias_of(*rv);
        const std::string name = alias.empty() ? text(field(*rv, "relname")) : alias;
        if (sharded_or_cte(*rv)) {
          sharded_names_.insert(name);
        } else {
          other_names_.insert(name);
        }
      } else if (const Json* sub = as(n, "RangeSubselect")) {
        bool any = false;
        bool all = true;
        any_node(*sub, [&](const Json& m) {
          if (const Json* rv = as(m, "RangeVar")) {
            any = true;
            if (!sharded_or_cte(*rv)) all = false;
          } else if (as(m, "RangeFunction") != nullptr) {
            all = false;
          }
          return false;
        });
        (any && all ? sharded_names_ : other_names_).insert(alias_of(*sub));
      } else {
        for (const char* kind : {"RangeFunction", "RangeTableFunc"}) {
          if (const Json* body = as(n, kind)) other_names_.insert(alias_of(*body));
        }
      }
      return false;
    });
    // An unqualified key column is the key in a SELECT whose FROM reads sharded relations only
    // (subqueries and WITH queries are SELECTs of their own).
    any_node(tree, [&](const Json& n) {
      const Json* sel = as(n, "SelectStmt");
      const Json* from = sel != nullptr ? field(*sel, "fromClause") : nullptr;
      if (from == nullptr || !from->is_array() || from->empty() ||
          !std::all_of(from->begin(), from->end(),
                       [&](const Json& item) { return keyed_only(item); })) {
        return false;
      }
      for (const auto& [k, v] : sel->items()) {
        if (k != "withClause") own_key_columns(v);
      }
      return false;
    });
  }

  void own_key_columns(const Json& node) {
    if (node.is_object()) {
      if (const Json* c = as(node, "ColumnRef")) {
        const Json* fields = field(*c, "fields");
        if (fields != nullptr && fields->is_array() && fields->size() == 1 &&
            last_name(fields) == policy_.key) {
          unqualified_keys_.insert(location_of(*c));
        }
      }
      for (const auto& [k, v] : node.items()) {
        if (k != "SelectStmt") own_key_columns(v);
      }
    } else if (node.is_array()) {
      for (const Json& v : node)
        own_key_columns(v);
    }
  }

  // Joins `a.key = b.key` of two relations not yet joined on the key (in `joined`), in the
  // top-level AND chain of `clause`: a repeated equality or a tautology joins nothing.
  int key_equalities(const Json* clause, std::map<std::string, std::string>& joined) const {
    if (clause == nullptr) return 0;
    if (const Json* b = as(*clause, "BoolExpr")) {
      const Json* op = field(*b, "boolop");
      const Json* args = field(*b, "args");
      if (op == nullptr || !op->is_string() || op->get_ref<const std::string&>() != "AND_EXPR" ||
          args == nullptr || !args->is_array()) {
        return 0;
      }
      int n = 0;
      for (const Json& arg : *args)
        n += key_equalities(&arg, joined);
      return n;
    }
    const Json* e = as(*clause, "A_Expr");
    if (e == nullptr || operator_name(*e) != "=") return 0;
    const Json* l = field(*e, "lexpr");
    const Json* r = field(*e, "rexpr");
    if (l == nullptr || r == nullptr || !is_key(*l) || !is_key(*r)) return 0;
    const std::string a(column_qualifier(*l));
    const std::string b(column_qualifier(*r));
    if (a.empty() || b.empty()) return 0;  // unqualified: the same column on both sides
    // Union-find over relation names: an equality counts when it joins two groups.
    const auto root = [&](std::string x) {
      for (auto it = joined.find(x); it != joined.end() && it->second != x; it = joined.find(x))
        x = it->second;
      return x;
    };
    const std::string ra = root(a);
    const std::string rb = root(b);
    if (ra == rb) return 0;
    joined[ra] = rb;
    joined.try_emplace(rb, rb);
    return 1;
  }

  // A FROM item whose every relation's key column is the key (is_key).
  bool keyed_only(const Json& item) const {
    std::string name;
    if (const Json* rv = as(item, "RangeVar")) {
      name = alias_of(*rv);
      if (name.empty()) name = text(field(*rv, "relname"));
    } else if (const Json* sub = as(item, "RangeSubselect")) {
      name = alias_of(*sub);
    } else if (const Json* join = as(item, "JoinExpr")) {
      const Json* l = field(*join, "larg");
      const Json* r = field(*join, "rarg");
      return l != nullptr && r != nullptr && keyed_only(*l) && keyed_only(*r);
    } else {
      return false;
    }
    return sharded_names_.contains(name) && !other_names_.contains(name);
  }

  // Rows of several sharded tables meet on one shard when the tables are joined on the key.
  bool colocated(const Json& s, int sharded_tables) const {
    std::map<std::string, std::string> joined;
    int equalities = key_equalities(field(s, "whereClause"), joined);
    any_node(s, [&](const Json& n) {
      const Json* join = as(n, "JoinExpr");
      if (join == nullptr) return false;
      // Rows with one key value live on one shard, so a join on the key (inner or outer) finds
      // every partner a single database would.
      if (const Json* using_clause = field(*join, "usingClause");
          using_clause != nullptr && using_clause->is_array()) {
        // Only between sharded relations: USING (key) with a reference table joins none.
        const Json* l = field(*join, "larg");
        const Json* r = field(*join, "rarg");
        for (const Json& name : *using_clause) {
          if (sval(name) == policy_.key && l != nullptr && r != nullptr && keyed_only(*l) &&
              keyed_only(*r)) {
            ++equalities;
          }
        }
      }
      equalities += key_equalities(field(*join, "quals"), joined);
      return false;
    });
    return equalities >= sharded_tables - 1;
  }

  // A CollateClause's collation: true for one that orders by the bytes, false for another,
  // none for the database's default (whose order pgvalve follows).
  static std::optional<bool> orders_by_bytes(const Json& collate) {
    const Json* names = field(collate, "collname");
    if (names == nullptr || !names->is_array() || names->empty()) return false;
    const std::string_view name = sval(names->back());
    if (name == "default") return std::nullopt;
    return name == "C" || name == "POSIX" || name == "ucs_basic";
  }

  // The output column an ORDER BY / GROUP BY item names: by position, by output name (ORDER BY
  // only, as PostgreSQL resolves it), or as the same expression. -1: none.
  int column_of(const Json& item, const Json& targets, bool by_name) const {
    if (const Json* c = as(item, "A_Const")) {
      const Json* ival = field(*c, "ival");
      if (ival != nullptr) {
        const Json* v = field(*ival, "ival");
        const int k = v != nullptr && v->is_number_integer() ? v->get<int>() : 0;
        return k >= 1 && static_cast<std::size_t>(k) <= targets.size() ? k - 1 : -1;
      }
      return -1;
    }
    if (by_name) {
      const Json* c = as(item, "ColumnRef");
      const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
      if (fields != nullptr && fields->is_array() && fields->size() == 1) {
        const std::string_view name = sval(fields->front());
        for (std::size_t i = 0; i < targets.size(); ++i) {
          const Json* t = as(targets[i], "ResTarget");
          const Json* alias = t != nullptr ? field(*t, "name") : nullptr;
          if (alias != nullptr && alias->is_string() &&
              alias->get_ref<const std::string&>() == name) {
            return static_cast<int>(i);
          }
        }
      }
    }
    const Json wanted = without_locations(item);
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const Json* t = as(targets[i], "ResTarget");
      const Json* val = t != nullptr ? field(*t, "val") : nullptr;
      if (val != nullptr && without_locations(*val) == wanted) return static_cast<int>(i);
    }
    return -1;
  }

  // Rows that one FROM item yields come from sharded tables only, met by inner joins.
  bool sharded_rows_only(const Json& item) const {
    if (const Json* rv = as(item, "RangeVar")) return sharded(*rv);
    if (const Json* sub = as(item, "RangeSubselect")) return shard_local(*sub);
    if (const Json* join = as(item, "JoinExpr")) {
      const Json* type = field(*join, "jointype");
      const Json* l = field(*join, "larg");
      const Json* r = field(*join, "rarg");
      return type != nullptr && type->is_string() &&
             type->get_ref<const std::string&>() == "JOIN_INNER" && l != nullptr && r != nullptr &&
             sharded_rows_only(*l) && sharded_rows_only(*r);
    }
    return false;
  }

  // A GROUP BY or DISTINCT ON item that is the key: the key column, or the number of an output
  // column that is (GROUP BY 1).
  bool names_key(const Json& item, const Json* targets) const {
    if (is_key(item)) return true;
    if (targets == nullptr || !targets->is_array() || as(item, "A_Const") == nullptr) return false;
    const int column = column_of(item, *targets, false);
    const Json* t =
        column >= 0 ? as((*targets)[static_cast<std::size_t>(column)], "ResTarget") : nullptr;
    const Json* val = t != nullptr ? field(*t, "val") : nullptr;
    return val != nullptr && is_key(*val);
  }

  // FROM names sharded tables only, met by inner joins (on the key, checked by the caller): the
  // rows of one device are all on its shard.
  bool from_sharded_rows_only(const Json& s) const {
    const Json* from = field(s, "fromClause");
    return from != nullptr && from->is_array() && !from->empty() &&
           std::all_of(from->begin(), from->end(),
                       [&](const Json& item) { return sharded_rows_only(item); });
  }

  // GROUP BY the key over sharded tables only (joined on the key, checked by the caller): all
  // rows of a device are on its shard, so each group is whole there and every shard's groups
  // are final, whatever the aggregates, HAVING included.
  bool groups_by_key(const Json& s) const {
    const Json* groups = field(s, "groupClause");
    if (groups == nullptr || !groups->is_array()) return false;
    const Json* targets = field(s, "targetList");
    return std::any_of(groups->begin(), groups->end(),
                       [&](const Json& g) { return names_key(g, targets); }) &&
           from_sharded_rows_only(s);
  }

  // Whether `s` groups rows: GROUP BY, or an aggregate among its output columns.
  static bool has_aggregates(const Json& s) {
    const Json* groups = field(s, "groupClause");
    if (groups != nullptr && groups->is_array() && !groups->empty()) return true;
    const Json* targets = field(s, "targetList");
    return targets != nullptr && contains_aggregate(*targets);
  }

  // Every window (inline or named, and those that build on a named one) is PARTITION BY the key,
  // over sharded tables only (as groups_by_key): each partition is one device's rows, whole on
  // its shard, so every shard computes the window functions of its rows as one server would.
  bool windows_by_key(const Json& s) const {
    if (!from_sharded_rows_only(s)) return false;
    const Json* named = field(s, "windowClause");
    const auto named_window = [&](std::string_view name) -> const Json* {
      if (named == nullptr || !named->is_array()) return nullptr;
      for (const Json& w : *named) {
        const Json* def = as(w, "WindowDef");
        const Json* n = def != nullptr ? field(*def, "name") : nullptr;
        if (n != nullptr && n->is_string() && n->get_ref<const std::string&>() == name) return def;
      }
      return nullptr;
    };
    // `OVER w` names a window (WindowDef.name); `OVER (w ORDER BY ...)` and `WINDOW w2 AS (w ...)`
    // build on one (refname) and take its partitioning, PostgreSQL allowing no PARTITION BY of
    // their own then. A chain of names is followed as far as the WINDOW clause is long.
    const auto partitioned_by_key = [&](const Json* def, bool inline_over) {
      for (std::size_t hops = 0; def != nullptr; ++hops) {
        const Json* parts = field(*def, "partitionClause");
        if (parts != nullptr && parts->is_array() && !parts->empty()) {
          return std::any_of(parts->begin(), parts->end(),
                             [&](const Json& p) { return is_key(p); });
        }
        const Json* ref = field(*def, "refname");
        if (ref == nullptr && inline_over && hops == 0) ref = field(*def, "name");
        if (ref == nullptr || !ref->is_string() || named == nullptr || hops > named->size()) {
          return false;
        }
        def = named_window(ref->get_ref<const std::string&>());
      }
      return false;
    };
    bool all = true;
    any_own_node(s, [&](const Json& n) {
      const Json* call = as(n, "FuncCall");
      if (const Json* over = call != nullptr ? field(*call, "over") : nullptr) {
        const Json* def = as(*over, "WindowDef");
        if (!partitioned_by_key(def != nullptr ? def : over, true)) all = false;
      } else if (const Json* def = as(n, "WindowDef")) {
        if (!partitioned_by_key(def, false)) all = false;
      }
      return !all;
    });
    return all;
  }

  // DISTINCT ON (..., key, ...) over sharded tables only, as groups_by_key: the rows of one
  // device are on its shard, so every DISTINCT ON group is whole there, and each shard's first
  // row of a group is the answer's. A bare name in DISTINCT ON means an output column first (as
  // in ORDER BY), so an output column named after the key must be the key.
  bool distinct_on_key(const Json& s, const Json& distinct) const {
    const Json* targets = field(s, "targetList");
    if (!distinct.is_array() || targets == nullptr || !targets->is_array() ||
        !key_name_is_key(*targets)) {
      return false;
    }
    return std::any_of(distinct.begin(), distinct.end(),
                       [&](const Json& d) { return names_key(d, targets); }) &&
           from_sharded_rows_only(s);
  }

  // Whether no output column is named after the key but the key itself: then a name that is the
  // key's means the key wherever it is read (DISTINCT ON and ORDER BY read output names first,
  // and a query over a subquery reads its output columns).
  bool key_name_is_key(const Json& targets) const {
    return std::none_of(targets.begin(), targets.end(), [&](const Json& t) {
      const Json* rt = as(t, "ResTarget");
      const Json* alias = rt != nullptr ? field(*rt, "name") : nullptr;
      const Json* val = rt != nullptr ? field(*rt, "val") : nullptr;
      return alias != nullptr && alias->is_string() &&
             alias->get_ref<const std::string&>() == policy_.key &&
             (val == nullptr || !is_key(*val));
    });
  }

  // A subquery in FROM whose rows on each shard are exactly those one database would yield for
  // the shard's devices, so that the query around it can read them as a sharded table's: a
  // SELECT over sharded tables only (or such subqueries) that never puts rows of two devices
  // together: no LIMIT or OFFSET, set operation, WITH or subquery over sharded tables; grouping,
  // DISTINCT ON and windows only by the key, a plain DISTINCT only with the key among its
  // output columns; and no column renamed to the key's name (nor any renamed by the alias).
  bool shard_local(const Json& range) const {
    // Each level looks at the levels under it: a bound on the nesting keeps that (and the
    // recursion) small for any statement a client can send.
    if (local_depth_ >= kMaxLocalDepth) return false;
    ++local_depth_;
    const bool local = shard_local_select(range);
    --local_depth_;
    return local;
  }

  bool shard_local_select(const Json& range) const {
    const Json* query = field(range, "subquery");
    const Json* s = query != nullptr ? as(*query, "SelectStmt") : nullptr;
    const Json* alias = field(range, "alias");
    if (s == nullptr || (alias != nullptr && field(*alias, "colnames") != nullptr)) return false;
    return shard_local_query(*s);
  }

  // The SELECT of such a subquery, or of a WITH query.
  bool shard_local_query(const Json& query) const {
    const Json* s = &query;
    const Json* op = field(*s, "op");
    if ((op != nullptr && op->is_string() && op->get_ref<const std::string&>() != "SETOP_NONE") ||
        field(*s, "withClause") != nullptr || field(*s, "limitCount") != nullptr ||
        field(*s, "limitOffset") != nullptr || !from_sharded_rows_only(*s)) {
      return false;
    }
    const Json* targets = field(*s, "targetList");
    if (targets == nullptr || !targets->is_array() || !key_name_is_key(*targets)) return false;
    // Subqueries in its WHERE or output columns see one shard's rows.
    if (any_node(*s, [&](const Json& n) {
          const Json* sub = as(n, "SubLink");
          return sub != nullptr && any_node(*sub, [&](const Json& m) {
                   const Json* rv = as(m, "RangeVar");
                   return rv != nullptr && sharded(*rv);
                 });
        })) {
      return false;
    }
    if ((has_aggregates(*s) || field(*s, "havingClause") != nullptr) && !groups_by_key(*s)) {
      return false;
    }
    if (field(*s, "windowClause") != nullptr || any_own_node(*s, [](const Json& n) {
          const Json* call = as(n, "FuncCall");
          return call != nullptr && field(*call, "over") != nullptr;
        })) {
      if (!windows_by_key(*s)) return false;
    }
    if (const Json* distinct = field(*s, "distinctClause"); distinct != nullptr) {
      const bool plain = distinct->is_array() && distinct->size() == 1 &&
                         distinct->front().is_object() && distinct->front().empty();
      if (plain) {
        return std::any_of(targets->begin(), targets->end(), [&](const Json& t) {
          const Json* rt = as(t, "ResTarget");
          const Json* val = rt != nullptr ? field(*rt, "val") : nullptr;
          return val != nullptr && is_key(*val);
        });
      }
      return distinct_on_key(*s, *distinct);
    }
    return true;
  }

  // WITH queries that keep each device's rows apart (as shard_local subqueries) are read as
  // sharded tables by the statement, which is then planned without them; any other is refused.
  ScatterPlan select(const Json& s) {
    const Json* with = field(s, "withClause");
    if (with == nullptr) return select_body(s);
    const Json* ctes = field(*with, "ctes");
    const Json* recursive = field(*with, "recursive");
    if ((recursive != nullptr && recursive->is_boolean() && recursive->get<bool>()) ||
        ctes == nullptr || !ctes->is_array()) {
      return refuse("WITH RECURSIVE is not combined across shards");
    }
    for (const Json& item : *ctes) {
      const Json* cte = as(item, "CommonTableExpr");
      const Json* query = cte != nullptr ? field(*cte, "ctequery") : nullptr;
      const Json* select = query != nullptr ? as(*query, "SelectStmt") : nullptr;
      const Json* name = cte != nullptr ? field(*cte, "ctename") : nullptr;
      if (select == nullptr || name == nullptr || !name->is_string() ||
          field(*cte, "aliascolnames") != nullptr || !shard_local_query(*select)) {
        return refuse(
            "WITH is combined across shards only when each of its queries keeps every "
            "device's rows apart, as a subquery in FROM may (grouping, windows and "
            "DISTINCT ON by " +
            policy_.key + ", no LIMIT)");
      }
      local_ctes_.push_back(name->get<std::string>());
    }
    Json body = s;
    body.erase("withClause");
    return select_body(body);
  }

  ScatterPlan select_body(const Json& s) {
    const Json* op = field(s, "op");
    if (op != nullptr && op->is_string() && op->get_ref<const std::string&>() != "SETOP_NONE") {
      return refuse("UNION, INTERSECT and EXCEPT are not combined across shards yet");
    }
    const bool local_groups = groups_by_key(s);
    if (field(s, "havingClause") != nullptr && !local_groups) {
      return refuse("HAVING filters groups that only exist once the shards' rows are combined");
    }
    if (field(s, "windowClause") != nullptr || any_own_node(s, [](const Json& n) {
          const Json* call = as(n, "FuncCall");
          return call != nullptr && field(*call, "over") != nullptr;
        })) {
      // Windows over groups combined across shards would see one shard's part of each group.
      if (!windows_by_key(s) || (has_aggregates(s) && !local_groups)) {
        return refuse(
            "window functions need every shard's rows at once, unless each window is "
            "PARTITION BY " +
            policy_.key + " over sharded tables only");
      }
    }
    if (any_node(s, [](const Json& n) { return as(n, "GroupingSet") != nullptr; })) {
      return refuse("GROUPING SETS, ROLLUP and CUBE are not combined across shards");
    }
    // Subqueries over sharded tables would see one shard's rows each, unless they keep every
    // device's rows apart (shard_local: a subquery in FROM read as a sharded table).
    bool nested = false;
    any_node(s, [&](const Json& n) {
      const Json* sub = as(n, "SubLink");
      if (sub == nullptr) {
        sub = as(n, "RangeSubselect");
        if (sub != nullptr && shard_local(*sub)) return false;
      }
      if (sub != nullptr && any_node(*sub, [&](const Json& m) {
            const Json* rv = as(m, "RangeVar");
            return rv != nullptr && sharded(*rv);
          })) {
        nested = true;
      }
      return nested;
    });
    if (nested) return refuse("a subquery over a sharded table would see one shard's rows");
    int sharded_tables = 0;
    any_node(s, [&](const Json& n) {
      const Json* rv = as(n, "RangeVar");
      if (rv != nullptr && sharded(*rv)) ++sharded_tables;
      return false;
    });
    if (sharded_tables > 1 && !colocated(s, sharded_tables)) {
      return refuse("sharded tables joined other than by inner joins on " + policy_.key +
                    " meet rows of other shards");
    }

    ScatterPlan plan;
    const Json* targets = field(s, "targetList");
    if (targets == nullptr || !targets->is_array() || targets->empty()) {
      return refuse("a SELECT without output columns");
    }
    bool star = false;
    bool aggregates = false;
    for (const Json& t : *targets) {
      const Json* rt = as(t, "ResTarget");
      const Json* val = rt != nullptr ? field(*rt, "val") : nullptr;
      if (val == nullptr) return refuse("an output column pgvalve cannot read");
      if (any_node(*val, [](const Json& n) { return as(n, "A_Star") != nullptr; })) star = true;
      if (aggregate_call(*val) != nullptr) {
        aggregates = true;
      } else if (contains_aggregate(*val) && !local_groups) {
        return refuse(
            "an expression over an aggregate is computed per shard; select the "
            "aggregates themselves");
      }
    }
    const Json* groups = field(s, "groupClause");
    const bool grouped =
        aggregates || (groups != nullptr && groups->is_array() && !groups->empty());
    // Groups whole on their shard are rows like any other: concatenated or merged, not combined.
    if (grouped && !local_groups) {
      if (star) return refuse("* in a grouped query across shards");
      std::vector<bool> grouping(targets->size(), false);
      if (groups != nullptr && groups->is_array()) {
        for (const Json& g : *groups) {
          const int column = column_of(g, *targets, false);
          if (column < 0) {
            return refuse("GROUP BY on an expression that is not an output column; select it");
          }
          grouping[static_cast<std::size_t>(column)] = true;
        }
      }
      for (std::size_t i = 0; i < targets->size(); ++i) {
        const Json& val = *field(*as((*targets)[i], "ResTarget"), "val");
        const Json* call = aggregate_call(val);
        if (call == nullptr) {
          if (!grouping[i])
            return refuse("an output column that is neither grouped nor an aggregate");
          plan.combine.push_back(Combine::Group);
          continue;
        }
        const std::string_view name = last_name(field(*call, "funcname"));
        const bool distinct = field(*call, "agg_distinct") != nullptr;
        if (name == "count" || name == "sum") {
          if (distinct) {
            // Distinct values of the key never repeat across shards: their counts add up.
            const Json* args = field(*call, "args");
            if (name == "sum" || args == nullptr || !args->is_array() || args->size() != 1 ||
                !is_key(args->front())) {
              return refuse(std::string(name) +
                            "(DISTINCT ...) across shards counts a value once per "
                            "shard");
            }
          }
          plan.combine.push_back(Combine::Sum);
        } else if (name == "min" || name == "max" || name == "bool_and" || name == "every" ||
                   name == "bool_or") {
          const bool least = name == "min" || name == "bool_and" || name == "every";
          plan.combine.push_back(least ? Combine::Min : Combine::Max);  // bool: false < true
          // min(name COLLATE "C"): each shard's is the least by the bytes, and so is theirs.
          const Json* args = field(*call, "args");
          const Json* collate = args != nullptr && args->is_array() && args->size() == 1
                                    ? as(args->front(), "CollateClause")
                                    : nullptr;
          const std::optional<bool> bytes =
              collate != nullptr ? orders_by_bytes(*collate) : std::nullopt;
          if (bytes && !*bytes) {
            return refuse(
                "min() and max() in a collation other than the database's or \"C\" are not "
                "combined across shards");
          }
          if (bytes) plan.bytes_combined.push_back(static_cast<std::uint16_t>(i));
        } else if (name == "bit_and" || name == "bit_or" || name == "bit_xor") {
          if (distinct && name == "bit_xor") {
            return refuse("bit_xor(DISTINCT ...) across shards counts a value once per shard");
          }
          plan.combine.push_back(name == "bit_and"  ? Combine::BitAnd
                                 : name == "bit_or" ? Combine::BitOr
                                                    : Combine::BitXor);
        } else if (const std::optional<ScatterPlan::Statistic> statistic = statistic_of(name)) {
          const Json* args = field(*call, "args");
          if (distinct || field(*call, "agg_order") != nullptr ||
              field(*call, "agg_within_group") != nullptr || args == nullptr || !args->is_array() ||
              args->size() != 1) {
            return refuse(std::string(name) +
                          "() across shards takes one argument without DISTINCT or ORDER BY");
          }
          // Which call of the text this is: the first at or after the call's start (a
          // schema-qualified name starts before its function's name).
          const int location = location_of(*call);
          const std::vector<AvgCall> calls = avg_calls(sql_);
          const std::optional<std::size_t> targets_end = target_list_end(sql_);
          std::size_t k = 0;
          while (k < calls.size() && location >= 0 &&
                 calls[k].name_begin < static_cast<std::size_t>(location)) {
            ++k;
          }
          if (location < 0 || k == calls.size() || !targets_end || calls[k].end > *targets_end) {
            return refuse("an " + std::string(name) +
                          "() pgvalve cannot find in the statement's text");
          }
          const Json* alias = field(*as((*targets)[i], "ResTarget"), "name");
          ScatterPlan::Average a;
          a.column = static_cast<std::uint16_t>(i);
          a.call = static_cast<std::uint32_t>(k);
          a.named = alias != nullptr && alias->is_string();
          a.statistic = *statistic;
          a.function = name;
          a.extra = plan.extra_columns;
          plan.extra_columns += *statistic == ScatterPlan::Statistic::Avg ? 1 : 2;
          plan.averages.push_back(std::move(a));
          plan.combine.push_back(Combine::Avg);
        } else {
          return refuse(std::string(name) +
                        "() does not combine across shards; count, sum, min, max, avg, "
                        "bool_and, bool_or, every, bit_and/or/xor, and stddev and variance of "
                        "double precision do");
        }
      }
    }
    if (const Json* distinct = field(s, "distinctClause"); distinct != nullptr) {
      const bool plain = distinct->is_array() && distinct->size() == 1 &&
                         distinct->front().is_object() && distinct->front().empty();
      if (plain) {
        plan.distinct = true;
      } else if (!distinct_on_key(s, *distinct) || (grouped && !local_groups)) {
        return refuse("DISTINCT ON is combined across shards only over sharded tables and with " +
                      policy_.key + " among its expressions (each device's rows are on one shard)");
      }
      // Otherwise each shard's rows are final: concatenated, or merged by the ORDER BY.
    }
    if (const Json* sorts = field(s, "sortClause"); sorts != nullptr && sorts->is_array()) {
      for (const Json& item : *sorts) {
        const Json* by = as(item, "SortBy");
        const Json* node = by != nullptr ? field(*by, "node") : nullptr;
        if (node == nullptr) return refuse("an ORDER BY item pgvalve cannot read");
        // true: by the bytes; false: another collation; none: the database's.
        std::optional<bool> bytes;
        if (const Json* collate = as(*node, "CollateClause")) {
          bytes = orders_by_bytes(*collate);
          node = field(*collate, "arg");
          if (node == nullptr) return refuse("an ORDER BY item pgvalve cannot read");
        }
        int column = column_of(*node, *targets, true);
        if (!bytes && column >= 0) {
          // `SELECT name COLLATE "C" AS n ... ORDER BY n` sorts in the column's collation.
          const Json* t = as((*targets)[static_cast<std::size_t>(column)], "ResTarget");
          const Json* val = t != nullptr ? field(*t, "val") : nullptr;
          const Json* collate = val != nullptr ? as(*val, "CollateClause") : nullptr;
          if (collate != nullptr) bytes = orders_by_bytes(*collate);
        }
        if (bytes && !*bytes) {
          return refuse(
              "ORDER BY in a collation other than the database's or \"C\" is not merged across "
              "shards");
        }
        std::string_view by_name;
        if (column < 0 && star) {
          // A column of `*`: found by name in the shards' RowDescription.
          const Json* c = as(*node, "ColumnRef");
          const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
          if (fields != nullptr && fields->is_array() && !fields->empty() &&
              as(fields->back(), "String") != nullptr) {
            by_name = sval(fields->back());
          }
        }
        if (column < 0 && by_name.empty()) {
          return refuse(
              "ORDER BY on something that is not an output column; select it (and order "
              "by it)");
        }
        const Json* dir = field(*by, "sortby_dir");
        const Json* nulls = field(*by, "sortby_nulls");
        const std::string d = dir != nullptr && dir->is_string() ? dir->get<std::string>() : "";
        const std::string n =
            nulls != nullptr && nulls->is_string() ? nulls->get<std::string>() : "";
        if (d == "SORTBY_USING") return refuse("ORDER BY ... USING is not combined across shards");
        SortKey key;
        key.column = column < 0 ? 0 : static_cast<std::uint16_t>(column);
        key.name = std::string(by_name);
        key.descending = d == "SORTBY_DESC";
        key.bytes = bytes.value_or(false);
        key.nulls_first = n == "SORTBY_NULLS_FIRST" || (n != "SORTBY_NULLS_LAST" && key.descending);
        plan.order.push_back(key);
      }
    }
    if (const Json* option = field(s, "limitOption");
        option != nullptr && option->is_string() &&
        option->get_ref<const std::string&>() == "LIMIT_OPTION_WITH_TIES") {
      return refuse("FETCH ... WITH TIES is not combined across shards");
    }
    std::vector<int> at;
    for (const char* clause : {"limitCount", "limitOffset"}) {
      const Json* value = field(s, clause);
      if (value == nullptr) {
        at.push_back(-1);
        continue;
      }
      const Json* c = as(*value, "A_Const");
      const Json* p = as(*value, "ParamRef");
      if (c != nullptr && field(*c, "isnull") != nullptr) {
        at.push_back(-1);  // LIMIT ALL, LIMIT NULL: none
        continue;
      }
      if (c == nullptr && p == nullptr) {
        return refuse("LIMIT and OFFSET across shards take a number or $n");
      }
      const int location = location_of(c != nullptr ? *c : *p);
      if (location < 0) {
        // FETCH FIRST ROW ONLY: a count of 1 that is nowhere in the text, so nothing to rewrite
        // for the shards or to read for the merge.
        return refuse(
            "FETCH FIRST ROW ONLY without a number is not combined across shards; "
            "write FETCH FIRST 1 ROW ONLY, or LIMIT 1");
      }
      at.push_back(location);
    }
    for (std::size_t i = 0; i < at.size(); ++i) {
      if (at[i] < 0) continue;
      const std::vector<std::uint32_t> slot = slot_ordinals(sql_, {at[i]});
      if (slot.size() != 1) return refuse("a LIMIT or OFFSET pgvalve cannot read");
      (i == 0 ? plan.limit_slot : plan.offset_slot) = static_cast<std::int32_t>(slot[0]);
    }
    plan.ok = true;
    return plan;
  }

  std::string_view sql_;
  const ShardingPolicy& policy_;
  static constexpr int kMaxLocalDepth = 8;
  mutable int local_depth_ = 0;
  std::vector<std::string> local_ctes_;  // names of WITH queries read as sharded tables
  std::set<std::string> sharded_names_;  // names and aliases of sharded relations (is_key)
  std::set<std::string> other_names_;    // and of any other relation
  std::set<int> unqualified_keys_;       // where unqualified key columns are the key
};

}  // namespace

ScatterPlan plan_scatter(std::string_view sql, const ShardingPolicy& policy) {
  return Planner(sql, policy).run();
}

}  // namespace pgvalve::routing

namespace pgvalve::routing {

namespace {

// The LIMIT and OFFSET slots of one statement, found in one lexer pass.
class LimitSlots {
 public:
  LimitSlots(std::int32_t limit, std::int32_t offset) : want_{limit, offset} {}
  void put(std::string_view, bool) {}
  void slot(const LiteralSlot& s) {
    for (int i = 0; i < 2; ++i) {
      if (want_[i] >= 0 && static_cast<std::uint32_t>(want_[i]) == ordinal_) {
        found_[i] = s;
        seen_[i] = true;
      }
    }
    ++ordinal_;
  }
  bool seen(int i) const { return want_[i] < 0 || seen_[i]; }
  const LiteralSlot& at(int i) const { return found_[i]; }

 private:
  std::int32_t want_[2];
  LiteralSlot found_[2]{};
  bool seen_[2] = {false, false};
  std::uint32_t ordinal_ = 0;
};

std::optional<std::int64_t> parse_integer(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t'))
    text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
    text.remove_suffix(1);
  bool negative = false;
  if (!text.empty() && (text.front() == '-' || text.front() == '+')) {
    negative = text.front() == '-';
    text.remove_prefix(1);
    while (!text.empty() && text.front() == ' ')
      text.remove_prefix(1);
  }
  if (text.empty()) return std::nullopt;
  std::int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9' || v > (INT64_MAX - (c - '0')) / 10) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return negative ? -v : v;
}

// What one LIMIT or OFFSET slot holds.
struct SlotValue {
  enum class Kind : std::uint8_t { Number, Null, Param, Unreadable };
  Kind kind = Kind::Unreadable;
  std::int64_t value = 0;
  int param = 0;  // Param: its number
};

SlotValue read_slot(std::string_view text, const ParamSource* params) {
  SlotValue out;
  if (text.starts_with('$')) {
    const auto number = parse_integer(text.substr(1));
    if (!number || *number < 1 || *number > 65535) return out;
    out.param = static_cast<int>(*number);
    const std::optional<BoundParam> p = params ? params->param(out.param) : std::nullopt;
    if (!p) return out;  // not bound: the shards say what is wrong
    if (!p->value) {
      out.kind = SlotValue::Kind::Null;
      return out;
    }
    std::optional<std::int64_t> v;
    if (p->binary) {
      v = protocol::binary_integer(*p->value);
    } else {
      v = parse_integer(*p->value);
    }
    if (!v) return out;
    out.kind = SlotValue::Kind::Param;
    out.value = *v;
    return out;
  }
  if (text.size() >= 2 && text.front() == '\'' && text.back() == '\'') {
    text = text.substr(1, text.size() - 2);
  }
  const auto v = parse_integer(text);
  if (!v) return out;
  out.kind = SlotValue::Kind::Number;
  out.value = *v;
  return out;
}

}  // namespace

namespace {

// A piece of the statement's text replaced by another ([begin, end) of the original; an insertion
// when begin == end).
struct Edit {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::string text;
};

// The rewrites of LIMIT and OFFSET (ShardStatement). False with `out.refusal` set when a value
// cannot be read.
bool limit_edits(std::string_view sql, const ScatterPlan& plan, const ParamSource* params,
                 ShardStatement& out, std::vector<Edit>& edits) {
  if (plan.limit_slot < 0 && plan.offset_slot < 0) return true;
  LimitSlots slots(plan.limit_slot, plan.offset_slot);
  normalized_walk(sql, slots);
  if (!slots.seen(0) || !slots.seen(1)) {
    out.refusal = "a LIMIT or OFFSET pgvalve cannot read";
    return false;
  }
  SlotValue v[2];
  std::string_view text[2];
  for (int i = 0; i < 2; ++i) {
    if ((i == 0 ? plan.limit_slot : plan.offset_slot) < 0) {
      v[i].kind = SlotValue::Kind::Null;
      continue;
    }
    const LiteralSlot& s = slots.at(i);
    text[i] = sql.substr(s.begin, s.end - s.begin);
    v[i] = read_slot(text[i], params);
    if (v[i].kind == SlotValue::Kind::Unreadable) {
      out.refusal = "LIMIT and OFFSET across shards take a whole number; " + std::string(text[i]) +
                    " is not one pgvalve reads";
      return false;
    }
    // A negative value: each shard runs the statement as written and PostgreSQL refuses it.
    if (v[i].kind != SlotValue::Kind::Null && v[i].value < 0) return true;
  }
  const bool has_limit = v[0].kind != SlotValue::Kind::Null;
  const std::int64_t offset = v[1].kind == SlotValue::Kind::Null ? 0 : v[1].value;
  out.limit = has_limit ? v[0].value : -1;
  out.offset = offset;
  const bool combined = !plan.combine.empty();
  const bool rewrite_offset = plan.offset_slot >= 0 && offset > 0;
  const bool rewrite_limit = has_limit && (combined || rewrite_offset);
  constexpr std::string_view kNoLimit = "9223372036854775807";
  auto as_int8 = [&](int i) { return "$" + std::to_string(v[i].param) + "::int8"; };
  if (rewrite_limit) {
    std::string limit;
    if (combined) {
      limit = v[0].kind == SlotValue::Kind::Param
                  ? "(0 * " + as_int8(0) + " + " + std::string(kNoLimit) + ")"
                  : std::string(kNoLimit);
    } else if (v[0].kind == SlotValue::Kind::Param || v[1].kind == SlotValue::Kind::Param) {
      const std::string a =
          v[0].kind == SlotValue::Kind::Param ? as_int8(0) : std::to_string(v[0].value);
      const std::string b =
          v[1].kind == SlotValue::Kind::Param ? as_int8(1) : std::to_string(v[1].value);
      limit = "(" + a + " + " + b + ")";
    } else {
      const std::int64_t max = INT64_MAX;
      limit = std::to_string(v[0].value > max - offset ? max : v[0].value + offset);
    }
    edits.push_back({slots.at(0).begin, slots.at(0).end, std::move(limit)});
  }
  if (rewrite_offset) {
    edits.push_back({slots.at(1).begin, slots.at(1).end,
                     v[1].kind == SlotValue::Kind::Param ? "(0 * " + as_int8(1) + ")" : "0"});
  }
  return true;
}

// avg(x) runs as sum(x), and count(x) joins the end of the output list; a variance or standard
// deviation of x runs as sum(x), and count(x) and var_pop(x) join the end (ScatterPlan::Average).
bool average_edits(std::string_view sql, const ScatterPlan& plan, ShardStatement& out,
                   std::vector<Edit>& edits) {
  if (plan.averages.empty()) return true;
  const std::vector<AvgCall> calls = avg_calls(sql);
  const std::optional<std::size_t> targets_end = target_list_end(sql);
  std::string counts;
  for (const ScatterPlan::Average& a : plan.averages) {
    if (a.call >= calls.size() || !targets_end || calls[a.call].end > *targets_end) {
      out.refusal = "an " + a.function + "() pgvalve cannot find in the statement's text";
      return false;
    }
    const AvgCall& call = calls[a.call];
    // `SELECT"variance"(x)`: a quoted name may touch the word before it, an unquoted one not.
    const auto c = static_cast<unsigned char>(call.name_begin > 0 ? sql[call.name_begin - 1] : ' ');
    const bool touches = std::isalnum(c) || c == '_' || c == '$' || c >= 0x80;
    edits.push_back({call.name_begin, call.name_end, touches ? " sum" : "sum"});
    // Over the rows the call sees: its FILTER clause goes with them.
    const std::string_view args = sql.substr(call.args_begin, call.args_end - call.args_begin);
    const std::string_view rest = sql.substr(call.args_end, call.end - call.args_end);
    counts.append(", count(").append(args).append(rest);
    if (a.statistic != ScatterPlan::Statistic::Avg) {
      counts.append(", var_pop(").append(args).append(rest);
    }
  }
  edits.push_back({*targets_end, *targets_end, std::move(counts)});
  return true;
}

}  // namespace

ShardStatement shard_statement(std::string_view sql, const ScatterPlan& plan,
                               const ParamSource* params) {
  ShardStatement out;
  std::vector<Edit> edits;
  if (!limit_edits(sql, plan, params, out, edits) || !average_edits(sql, plan, out, edits)) {
    out.ok = false;
    return out;
  }
  if (edits.empty()) return out;
  // Applied from the back, so the offsets of those before stay valid (edits never overlap).
  std::stable_sort(edits.begin(), edits.end(),
                   [](const Edit& a, const Edit& b) { return a.begin > b.begin; });
  out.sql.assign(sql);
  for (const Edit& e : edits)
    out.sql.replace(e.begin, e.end - e.begin, e.text);
  return out;
}

}  // namespace pgvalve::routing
