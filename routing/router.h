// Decides the Route of a statement. Pure: the statement text and what the session knows in,
// a Route out; no sockets, no clocks.
#pragma once

#include <cstdint>
#include <string_view>

#include "routing/route.h"

namespace pgvalve::routing {

// What the session tells the router besides the statement.
struct RouteContext {
  bool in_transaction = false;  // a transaction is open on the session's server
};

class Router {
 public:
  explicit Router(int shard_count) : shard_count_(shard_count) {}

  // `sql` is the first statement text of the client's next request (a Query, or the text of
  // the statement a Parse/Bind names); empty when the request carries no SQL (a Sync alone).
  // Every route is the first shard's primary until read/write splitting and sharding exist.
  Route route(std::string_view sql, const RouteContext& context) const;

  int shard_count() const { return shard_count_; }

 private:
  int shard_count_;
};

}  // namespace pgvalve::routing
