#include "routing/router.h"

#include "routing/fingerprint.h"
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

// Whether a statement may run on a replica: a read the parse tree proves, or BEGIN READ ONLY.
// Cached per fingerprint (which keeps every keyword, so BEGIN and BEGIN READ ONLY differ), so
// a statement seen before costs one lexer pass and a lookup.
bool Router::replica_eligible(std::string_view sql, std::uint64_t known) const {
  const std::uint64_t fp = known ? known : fingerprint(sql);
  if (const StatementAccess* known = cache_->lookup(fp)) return known->read;
  const StatementInfo info = classify(sql);
  StatementAccess verdict;
  switch (info.kind) {
    case StatementKind::Begin:
      verdict.parsed = true;
      verdict.read = info.read_only && !info.multiple_statements;
      verdict.reason = verdict.read ? AccessReason::Read : AccessReason::NotRead;
      break;
    case StatementKind::Select:
    case StatementKind::Show:
    case StatementKind::Explain:
    case StatementKind::Copy:
      verdict = decide_access(sql, *policy_.write_functions);
      // A statement that does not parse is not cached: its literal may be what broke it.
      if (!verdict.parsed) return false;
      break;
    default:
      verdict.parsed = true;
      verdict.reason = AccessReason::NotRead;
      break;
  }
  cache_->insert(fp, verdict);
  return verdict.read;
}

Route Router::route(std::string_view sql, const RouteContext& context) const {
  if (!policy_.split) return Route::primary(0);
  // A hint on the statement, then the session's preference.
  if (const std::string_view hint = leading_hint(sql); !hint.empty()) {
    if (iequals(hint, "primary")) return Route::primary(0);
    if (iequals(hint, "replica")) return Route::replica(0);
  }
  if (context.preference == RouteContext::Preference::Primary) return Route::primary(0);
  if (context.preference == RouteContext::Preference::Replica) return Route::replica(0);
  if (sql.empty() || !cache_ || !policy_.write_functions) return Route::primary(0);
  if (!replica_eligible(sql, context.fingerprint)) return Route::primary(0);
  return context.recent_write ? read_on_primary() : Route::replica(0);
}

}  // namespace pgvalve::routing
