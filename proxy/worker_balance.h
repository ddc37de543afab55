// How many workers should serve clients now, and which clients should move: a pure decision,
// made once a second from each worker's CPU use over the last second and its number of clients.
//
// Two workers that each use a fifth of a core cost more CPU per transaction than one that uses
// two fifths: each sleeps and is woken for fewer events, so every event pays for a wake-up,
// and on a machine that PostgreSQL shares every wake-up competes with its backends (measured in
// docs/benchmarks.md). So the workers in use — the first `active` of them — are as few as carry
// the load comfortably; the others are parked: their clients move to an active worker, and
// clients that connect to them are handed over at once.
//  - park one: once the load (at least kPackFrom: below that there is nothing to save) would
//    keep one worker fewer under kPackBelow each;
//  - spread: an active worker above kSpreadAbove unparks the next worker and gives it part of
//    its clients, so that their loads come out about even; with every worker active, it gives
//    them to the least busy one.
// The gap between the two thresholds keeps a load from moving back and forth.
#pragma once

#include <climits>
#include <span>
#include <vector>

namespace pgvalve::proxy {

struct WorkerLoad {
  double busy = 0;  // CPU time used over the last period, in cores (0.25: a quarter of one)
  int clients = 0;  // client sessions on the worker now
};

struct ClientMove {
  static constexpr int kAll = INT_MAX;  // every client, and those that connect meanwhile
  int from = 0;
  int to = 0;
  int clients = 0;  // at most this many, each at its next moment between transactions
  bool operator==(const ClientMove&) const = default;
};

struct WorkerPlan {
  int active = 1;  // workers 0 .. active-1 serve clients
  std::vector<ClientMove> moves;
};

inline constexpr double kPackFrom = 0.02;
inline constexpr double kPackBelow = 0.5;
inline constexpr double kSpreadAbove = 0.75;

// `active`: the workers in use until now (all of them at start).
inline WorkerPlan plan_workers(std::span<const WorkerLoad> workers, int active) {
  const int n = static_cast<int>(workers.size());
  WorkerPlan plan;
  plan.active = active < 1 ? 1 : (active > n ? n : active);
  if (n <= 1) return plan;
  double total = 0;
  for (const WorkerLoad& w : workers)
    total += w.busy;
  // A worker near a full core is the one clients wait for.
  int busiest = -1;
  for (int i = 0; i < plan.active; ++i) {
    if (workers[i].busy > kSpreadAbove && workers[i].clients >= 2 &&
        (busiest < 0 || workers[i].busy > workers[busiest].busy))
      busiest = i;
  }
  int spread_to = -1;
  if (busiest >= 0) {
    if (plan.active < n) {
      spread_to = plan.active++;
    } else {
      for (int i = 0; i < n; ++i) {
        if (i != busiest && (spread_to < 0 || workers[i].busy < workers[spread_to].busy))
          spread_to = i;
      }
      if (workers[spread_to].busy > kSpreadAbove / 2) spread_to = -1;
    }
  } else if (plan.active > 1 && total >= kPackFrom && total < kPackBelow * (plan.active - 1)) {
    --plan.active;
  }
  if (spread_to >= 0) {
    const WorkerLoad& from = workers[busiest];
    const double share = (from.busy - workers[spread_to].busy) / (2 * from.busy);
    const int clients = static_cast<int>(from.clients * share);
    plan.moves.push_back({busiest, spread_to, clients > 0 ? clients : 1});
  }
  // Parked workers give every client to the least busy active worker (standing orders:
  // repeated every period, so clients that connect there later follow).
  int least = 0;
  for (int i = 1; i < plan.active; ++i) {
    if (workers[i].busy < workers[least].busy) least = i;
  }
  for (int i = plan.active; i < n; ++i)
    plan.moves.push_back({i, least, ClientMove::kAll});
  return plan;
}

}  // namespace pgvalve::proxy
