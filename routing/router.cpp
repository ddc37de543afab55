#include "routing/router.h"

#include "routing/sql_lexer.h"
#include "routing/statement.h"

namespace pgvalve::routing {

std::string_view route_kind_name(Route::Kind kind) {
  switch (kind) {
    case Route::Kind::Primary:
      return "primary";
    case Route::Kind::Replica:
      return "replica";
    case Route::Kind::Shards:
      return "shards";
    case Route::Kind::Local:
      return "local";
    case Route::Kind::Refuse:
      return "refuse";
  }
  return "?";
}

namespace {

Route read_on_primary() {
  Route r = Route::primary(0);
  r.write = false;
  return r;
}

}  // namespace

Route Router::route(std::string_view sql, const RouteContext& context) const {
  if (!policy_.split) return Route::primary(0);
  // A hint on the statement, then the session's preference.
  if (const std::string_view hint = leading_hint(sql); !hint.empty()) {
    if (iequals(hint, "primary")) return Route::primary(0);
    if (iequals(hint, "replica")) return Route::replica(0);
  }
  if (context.preference == RouteContext::Preference::Primary) return Route::primary(0);
  if (context.preference == RouteContext::Preference::Replica) return Route::replica(0);
  if (sql.empty()) return Route::primary(0);

  const StatementInfo info = classify(sql);
  switch (info.kind) {
    case StatementKind::Begin:
      // The transaction can only read: a replica may hold it. Anything else may write.
      if (info.read_only && !info.multiple_statements) {
        return context.recent_write ? read_on_primary() : Route::replica(0);
      }
      return Route::primary(0);
    case StatementKind::Select:
    case StatementKind::Show:
    case StatementKind::Explain:
    case StatementKind::Copy:
      break;
    default:
      return Route::primary(0);
  }
  if (!cache_ || !policy_.write_functions) return Route::primary(0);
  if (!cache_->decide(sql, *policy_.write_functions).read) return Route::primary(0);
  return context.recent_write ? read_on_primary() : Route::replica(0);
}

}  // namespace pgvalve::routing
