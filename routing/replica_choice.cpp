#include "routing/replica_choice.h"

namespace pgvalve::routing {

std::optional<std::size_t> choose_replica(std::span<const ReplicaCandidate> candidates,
                                          LoadBalance policy, std::uint64_t& turn,
                                          std::uint64_t random) {
  if (candidates.empty()) return std::nullopt;
  switch (policy) {
    case LoadBalance::RoundRobin:
      return candidates[turn++ % candidates.size()].host;
    case LoadBalance::Random:
      return candidates[random % candidates.size()].host;
    case LoadBalance::LeastConnections: {
      // Ties go round: equal replicas share the reads instead of the first taking them all.
      const std::size_t start = turn++ % candidates.size();
      std::size_t best = start;
      for (std::size_t k = 1; k < candidates.size(); ++k) {
        const std::size_t i = (start + k) % candidates.size();
        if (candidates[i].in_use < candidates[best].in_use) best = i;
      }
      return candidates[best].host;
    }
  }
  return candidates.front().host;
}

}  // namespace pgvalve::routing
