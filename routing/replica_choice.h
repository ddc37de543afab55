// Which replica takes a read (routing.load_balance). Pure: the candidates and a counter in, an
// index out; the session fills the candidates from the health checks' published status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace pgvalve::routing {

// routing.load_balance (config::LoadBalance, mapped by the session: routing/ does not read the
// configuration).
enum class LoadBalance : std::uint8_t { LeastConnections, RoundRobin, Random };

struct ReplicaCandidate {
  std::size_t host = 0;  // the caller's index
  int in_use = 0;        // server connections lent out now (least_connections)
};

// `turn` is the caller's round-robin counter (advanced here); `random` a random number the
// caller drew. Nullopt when there is no candidate.
std::optional<std::size_t> choose_replica(std::span<const ReplicaCandidate> candidates,
                                          LoadBalance policy, std::uint64_t& turn,
                                          std::uint64_t random);

}  // namespace pgvalve::routing
