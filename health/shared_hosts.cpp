#include "health/shared_hosts.h"

#include <algorithm>

namespace pgvalve::health {

std::optional<std::size_t> index_of(const std::vector<config::Endpoint>& hosts,
                                    const config::Endpoint& host) {
  const auto it = std::find(hosts.begin(), hosts.end(), host);
  if (it == hosts.end()) return std::nullopt;
  return static_cast<std::size_t>(it - hosts.begin());
}

HostSharing host_sharing(const std::vector<std::vector<config::Endpoint>>& shards, std::size_t of) {
  HostSharing out;
  const auto& mine = shards[of];
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const auto& theirs = shards[s];
    std::size_t common = 0;
    for (const auto& h : theirs) {
      if (index_of(mine, h)) ++common;
    }
    if (common == 0) continue;
    // Within one shard a host appears once (config checks), so equal counts mean equal sets.
    if (common == mine.size() && common == theirs.size()) {
      out.together.push_back(s);
    } else {
      out.entangled.push_back(s);
    }
  }
  return out;
}

}  // namespace pgvalve::health
