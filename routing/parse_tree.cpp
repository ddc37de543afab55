#include "routing/parse_tree.h"

#include <pg_query.h>

#include <string>

namespace pgvalve::routing {

std::optional<Json> parse_tree(std::string_view sql) {
  if (sql.size() > kMaxParsedStatementBytes) return std::nullopt;
  const std::string text(sql);
  PgQueryParseResult result = pg_query_parse(text.c_str());
  struct Free {
    PgQueryParseResult& r;
    ~Free() { pg_query_free_parse_result(r); }
  } free_result{result};
  if (result.error != nullptr) return std::nullopt;
  Json tree = Json::parse(result.parse_tree, nullptr, false);
  if (tree.is_discarded()) return std::nullopt;
  return tree;
}

const Json* field(const Json& node, const char* name) {
  if (!node.is_object()) return nullptr;
  auto it = node.find(name);
  return it == node.end() ? nullptr : &*it;
}

const Json* as(const Json& node, const char* kind) {
  const Json* inner = field(node, kind);
  return inner != nullptr && inner->is_object() ? inner : nullptr;
}

int location_of(const Json& node) {
  const Json* loc = field(node, "location");
  return loc != nullptr && loc->is_number_integer() ? loc->get<int>() : -1;
}

std::string_view sval(const Json& node) {
  const Json* s = as(node, "String");
  if (s == nullptr) return {};
  const Json* v = field(*s, "sval");
  return v != nullptr && v->is_string() ? std::string_view(v->get_ref<const std::string&>())
                                        : std::string_view{};
}

std::string_view operator_name(const Json& expr) {
  const Json* name = field(expr, "name");
  if (name == nullptr || !name->is_array() || name->size() != 1) return {};
  return sval(name->front());
}

std::string_view column_qualifier(const Json& node) {
  const Json* c = as(node, "ColumnRef");
  const Json* fields = c != nullptr ? field(*c, "fields") : nullptr;
  if (fields == nullptr || !fields->is_array() || fields->size() < 2) return {};
  return sval((*fields)[fields->size() - 2]);
}

std::string_view last_name(const Json* list) {
  if (list == nullptr || !list->is_array() || list->empty()) return {};
  return sval(list->back());
}

}  // namespace pgvalve::routing
