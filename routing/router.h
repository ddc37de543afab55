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

#include "routing/client_text.h"
#include "routing/decision_cache.h"
#include "routing/insert_split.h"
#include "routing/route.h"
#include "routing/scatter_plan.h"
#include "routing/shard_plan.h"

namespace pgvalve::routing {

// How one database splits reads from writes (routing.*, mapped by the session's owner: routing/
// does not read the configuration).
struct RoutingPolicy {
  // Reads may go to replicas: routing.read_write_split on, reads not `primary`, and the
  // database has replicas. Off: every route is the primary and no statement is parsed.
  bool split = false;
  const std::vector<std::string>* write_functions = nullptr;  // routing.write_functions
  // sharding.* of a database with several shards; null: one shard, no key needed. `sharding_id`
  // tells its shard plans apart from other databases' in the shared DecisionCache (non-zero).
  const ShardingPolicy* sharding = nullptr;
  std::uint32_t sharding_id = 0;
  // The id of `write_functions`: the same for equal lists, different for different ones, so
  // that the decisions cached for one list are not found by the routers of another.
  std::uint32_t write_functions_id = 0;
};

// What the session tells the router besides the statement.
struct RouteContext {
  enum class Preference : std::uint8_t { Auto, Primary, Replica };
  // SET pgvalve.route = primary | replica | auto (a hint comment on the statement wins).
  Preference preference = Preference::Auto;
  // routing.read_your_writes = time: this client wrote within the window; its reads go to the
  // primary.
  bool recent_write = false;
  // The client's default_transaction_isolation is serializable, which a hot standby refuses
  // ("cannot use serializable mode in a hot standby"): its reads go to the primary.
  bool serializable = false;
  // routing::fingerprint() of the statement when the caller has it already; 0: computed here.
  std::uint64_t fingerprint = 0;
  // Sharded databases: SET pgvalve.device_id (a hint comment on the statement wins); empty:
  // none. `params`: the Bind values of the statement's $n, when it is bound.
  std::string_view device_id;
  const ParamSource* params = nullptr;
  // How the client's text reads (client_text.h). A statement that does not read as written goes
  // to the primary; over shards it is refused unless a hint or SET pgvalve.device_id places it,
  // for pgvalve would misread where its strings end, and its key.
  TextReading reading;
};

class Router {
 public:
  Router() = default;
  // `cache` is the calling worker's (not thread-safe) and must outlive the router.
  Router(int shard_count, RoutingPolicy policy, DecisionCache* cache)
      : shard_count_(shard_count), policy_(policy), cache_(cache) {}
  // The client moved to another worker, between statements: its cache from now on.
  void use_cache(DecisionCache* cache) { cache_ = cache; }

  // `sql` is the first statement text of the client's next request (a Query, or the text of
  // the statement a Parse/Bind names); empty when the request carries no SQL (a Sync alone).
  // Replica routes are for statements proven to read (and BEGIN READ ONLY, whose transaction
  // can only read); everything else goes to the primary. With several shards, the shard comes
  // from a hint, SET pgvalve.device_id or the statement's key (shard_plan.h); a statement that
  // needs no particular shard says so with Route::any_shard.
  Route route(std::string_view sql, const RouteContext& context) const;

  int shard_count() const { return shard_count_; }
  bool splits() const { return policy_.split; }
  bool sharded() const { return policy_.sharding != nullptr; }
  // The statement of `fingerprint`, routed before (a BEGIN: route() caches its verdict), is valid
  // SQL; false when it is not, or not known.
  bool valid_begin(std::uint64_t fingerprint) const;
  const ShardingPolicy* sharding() const { return policy_.sharding; }
  // fingerprint(sql) through the worker's FingerprintCache when the router has one: a text
  // seen before, or one that differs from it in its literals only, is not normalised again.
  std::uint64_t cached_fingerprint(std::string_view sql) const {
    return cache_ ? cache_->fingerprints().fingerprint(sql) : fingerprint(sql);
  }

  // A statement over several shards (Route::Kind::Shards): its part on `shard`, a read sent to
  // a replica or the primary by the same rules as a statement on one shard.
  Route on_shard(std::string_view sql, const RouteContext& context, std::uint16_t shard) const;
  // A Route with split_rows: the INSERT cut into one statement per shard.
  InsertSplit split_insert(std::string_view sql, const RouteContext& context) const;
  // How the shards' answers to `sql` combine (parsed once per statement shape); valid until the
  // next call of route() or scatter_plan().
  const ScatterPlan& scatter_plan(std::string_view sql, std::uint64_t fingerprint) const;

 private:
  // `why`, when given, is set to the reason of a statement that is not (AccessReason);
  // `own_backend` to StatementAccess::own_backend.
  bool replica_eligible(std::string_view sql, std::uint64_t fingerprint = 0,
                        AccessReason* why = nullptr, bool* own_backend = nullptr) const;
  // The read/write role within one shard, as for an unsharded database.
  Route role(std::string_view sql, std::string_view hint, const RouteContext& context,
             std::uint16_t shard) const;
  Route route_sharded(std::string_view sql, const RouteContext& context) const;
  const ShardPlan& shard_plan(std::string_view sql, std::uint64_t fingerprint) const;

  DecisionKey decision_key(std::uint64_t fingerprint) const {
    return {fingerprint, policy_.write_functions_id};
  }

  int shard_count_ = 1;
  RoutingPolicy policy_;
  DecisionCache* cache_ = nullptr;
};

}  // namespace pgvalve::routing
