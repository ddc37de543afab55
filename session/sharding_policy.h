// sharding.* of a database as the router needs it (routing/ reads no configuration).
#pragma once

#include "config/config.h"
#include "routing/shard_plan.h"

namespace pgvalve::session {

// The database's shard map, key and tables; `database.sharding` must be set. Names are folded
// to lower case, as PostgreSQL folds unquoted identifiers, since the router compares them with
// parse trees.
routing::ShardingPolicy sharding_policy_of(const config::Database& database);

// One sharded database's policy as its sessions share it, with an id that keeps its cached
// shard plans apart from other databases' (RoutingPolicy::sharding_id).
struct DatabaseSharding {
  config::ConfigPtr config;  // the configuration it was built from (kept alive)
  routing::ShardingPolicy policy;
  std::uint32_t id = 0;
};

}  // namespace pgvalve::session
