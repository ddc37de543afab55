// Decides the Route of a statement. Pure: the statement text and what the session knows in,
// a Route out; no sockets, no clocks. Reads and writes are told apart by PostgreSQL's own
// grammar (read_write.h), parsed once per statement shape; the verdict (may it run on a
// replica) is cached per fingerprint per worker thread (decision_cache.h), so a statement seen
// before costs one lexer pass (its fingerprint) and a hash lookup.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "routing/decision_cache.h"
#include "routing/route.h"

namespace pgvalve::routing {

// How one database splits reads from writes (routing.*, mapped by the session's owner: routing/
// does not read the configuration).
struct RoutingPolicy {
  // Reads may go to replicas: routing.read_write_split on, reads not `primary`, and the
  // database has replicas. Off: every route is the primary and no statement is parsed.
  bool split = false;
  const std::vector<std::string>* write_functions = nullptr;  // routing.write_functions
};

// What the session tells the router besides the statement.
struct RouteContext {
  enum class Preference : std::uint8_t { Auto, Primary, Replica };
  // SET pgvalve.route = primary | replica | auto (a hint comment on the statement wins).
  Preference preference = Preference::Auto;
  // routing.read_your_writes = time: this client wrote within the window; its reads go to the
  // primary.
  bool recent_write = false;
  // routing::fingerprint() of the statement when the caller has it already; 0: computed here.
  std::uint64_t fingerprint = 0;
};

class Router {
 public:
  Router() = default;
  // `cache` is the calling worker's (not thread-safe) and must outlive the router.
  Router(int shard_count, RoutingPolicy policy, DecisionCache* cache)
      : shard_count_(shard_count), policy_(policy), cache_(cache) {}

  // `sql` is the first statement text of the client's next request (a Query, or the text of
  // the statement a Parse/Bind names); empty when the request carries no SQL (a Sync alone).
  // Replica routes are for statements proven to read (and BEGIN READ ONLY, whose transaction
  // can only read); everything else goes to the primary of the first shard until sharding.
  Route route(std::string_view sql, const RouteContext& context) const;

  int shard_count() const { return shard_count_; }
  bool splits() const { return policy_.split; }

 private:
  bool replica_eligible(std::string_view sql, std::uint64_t fingerprint = 0) const;

  int shard_count_ = 1;
  RoutingPolicy policy_;
  DecisionCache* cache_ = nullptr;
};

}  // namespace pgvalve::routing
