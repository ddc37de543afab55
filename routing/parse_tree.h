// PostgreSQL 15 parse trees (libpg_query's JSON) and the small readers routing/ walks them with.
// Internal to routing/: the planners parse a statement shape once and keep what they found.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

namespace pgvalve::routing {

using Json = nlohmann::json;

// Statements longer than this are not parsed: libpg_query and its JSON tree take about a
// hundred times a statement's size (a 14 MiB IN list took 1.3 GiB).
constexpr std::size_t kMaxParsedStatementBytes = 256 * 1024;

// The parse tree of `sql` ({"version":..., "stmts":[...]}); nullopt when PostgreSQL's grammar
// refuses it or it is longer than kMaxParsedStatementBytes. Allocates.
std::optional<Json> parse_tree(std::string_view sql);

// `node[name]`, or nullptr.
const Json* field(const Json& node, const char* name);
// {"Kind": {...}} -> the inner object when the node is of that kind, else nullptr.
const Json* as(const Json& node, const char* kind);
// The node's "location" (a byte offset into the statement), or -1.
int location_of(const Json& node);
// The text of a {"String": {"sval": ...}} node, or empty.
std::string_view sval(const Json& node);
// The single-name operator of an A_Expr ("=", "-"), or empty.
std::string_view operator_name(const Json& expr);
// The name a String-list names by its last part ("pg_catalog.count" -> "count"); empty when
// `list` is not such a list.
std::string_view last_name(const Json* list);
// The relation (alias or table name) a qualified ColumnRef names; empty for an unqualified one
// or another node.
std::string_view column_qualifier(const Json& node);

}  // namespace pgvalve::routing
