// Which worker's clients should move to another worker: a pure decision, made once a second
// from each worker's CPU use over the last second and its number of clients.
//
// Two workers that each use a fifth of a core cost more CPU per transaction than one that uses
// two fifths: each sleeps and is woken for fewer events, so every event pays for a wake-up,
// and on a machine that PostgreSQL shares every wake-up competes with its backends (measured in
// docs/benchmarks.md). So clients are packed onto the fewest workers that carry them comfortably
// and spread again when a worker gets busy:
//  - pack: the highest-numbered worker with busy clients gives all of them to the lowest-numbered
//    worker whose load, added to its own, stays under kPackBelow — once the two together use at
//    least kPackFrom (below that there is nothing to save);
//  - spread: a worker above kSpreadAbove gives part of its clients to the least busy worker, so
//    that their loads come out about even.
// The gap between the two thresholds keeps a load from moving back and forth.
#pragma once

#include <optional>
#include <span>

namespace pgvalve::proxy {

struct WorkerLoad {
  double busy = 0;  // CPU time used over the last period, in cores (0.25: a quarter of one)
  int clients = 0;  // client sessions on the worker now
};

struct ClientMove {
  int from = 0;
  int to = 0;
  int clients = 0;  // at most this many, each at its next moment between transactions
  bool operator==(const ClientMove&) const = default;
};

inline constexpr double kPackFrom = 0.02;
inline constexpr double kPackBelow = 0.5;
inline constexpr double kSpreadAbove = 0.75;
inline constexpr double kWorthMoving = 0.005;

inline std::optional<ClientMove> plan_client_move(std::span<const WorkerLoad> workers) {
  const int n = static_cast<int>(workers.size());
  // Spread first: a worker near a full core is the one clients wait for.
  int busiest = -1;
  for (int i = 0; i < n; ++i) {
    if (workers[i].busy > kSpreadAbove && workers[i].clients >= 2 &&
        (busiest < 0 || workers[i].busy > workers[busiest].busy))
      busiest = i;
  }
  if (busiest >= 0) {
    int idlest = -1;
    for (int i = 0; i < n; ++i) {
      if (i != busiest && (idlest < 0 || workers[i].busy < workers[idlest].busy)) idlest = i;
    }
    if (idlest < 0 || workers[idlest].busy > kSpreadAbove / 2) return std::nullopt;
    const WorkerLoad& from = workers[busiest];
    const double share = (from.busy - workers[idlest].busy) / (2 * from.busy);
    const int clients = static_cast<int>(from.clients * share);
    return ClientMove{busiest, idlest, clients > 0 ? clients : 1};
  }
  // Clients that run nothing are not worth a move (and only move when they do run something).
  int last = -1;
  for (int i = n - 1; i > 0; --i) {
    if (workers[i].clients > 0 && workers[i].busy >= kWorthMoving) {
      last = i;
      break;
    }
  }
  if (last < 0) return std::nullopt;
  for (int i = 0; i < last; ++i) {
    const double together = workers[i].busy + workers[last].busy;
    if (together >= kPackFrom && together < kPackBelow)
      return ClientMove{last, i, workers[last].clients};
  }
  return std::nullopt;
}

}  // namespace pgvalve::proxy
