// Shards of different databases may list the same servers (docs/configuration.md). A promotion
// changes a server, not a database: every shard over that server must pause and move its writes
// with it, and only one promotion may be decided for one set of servers (two monitors deciding
// apart could promote two replicas). Pure: the health checker asks, per shard, which shards
// move together with it.
//
// Hosts are compared as written (host:port), as the health checker keys its checks.
//  - Shards listing the same set of hosts, in any order, move together.
//  - Shards sharing some hosts but not all are entangled: a promotion chosen for one may pick a
//    host the other does not list, or leave it without its primary; pgvalve takes none for
//    either (drills are refused, failover.mode: promote does not promote) until their host
//    lists agree.
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "config/config.h"

namespace pgvalve::health {

struct HostSharing {
  std::vector<std::size_t> together;   // shards with the same hosts, `of` included, in order
  std::vector<std::size_t> entangled;  // shards sharing some of its hosts but not all, in order
};

// How shard `of` of `shards` (each a host list) shares its hosts with the others.
HostSharing host_sharing(const std::vector<std::vector<config::Endpoint>>& shards, std::size_t of);

// Where `host` is in `hosts`; nullopt when it is not there.
std::optional<std::size_t> index_of(const std::vector<config::Endpoint>& hosts,
                                    const config::Endpoint& host);

}  // namespace pgvalve::health
