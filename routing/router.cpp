#include "routing/router.h"

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

Route Router::route(std::string_view /*sql*/, const RouteContext& /*context*/) const {
  return Route::primary(0);
}

}  // namespace pgvalve::routing
