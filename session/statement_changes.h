// Shared server-side statements found stale anywhere in the process: a server refused to bind
// one because a table it reads changed its result type since it was prepared (0A000, "cached
// plan must not change result type"). Each worker keeps its own copy (WorkspacePool) and a Bind
// looks there; the copy is refreshed when the generation, read with one atomic load per lookup,
// has moved. So a client of any worker whose statement was prepared before the change gets
// PostgreSQL's error at every Bind of it, as on PostgreSQL, whichever worker saw it first, and
// no lock is shared by the workers per query.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace pgvalve::session {

using StatementChangeTimes = std::unordered_map<std::uint64_t, std::int64_t>;

// Statement hash -> when it was last found stale. At most kMaxEntries are kept, the oldest
// forgotten first.
void record_statement_change(StatementChangeTimes& changes, std::uint64_t hash, std::int64_t at);

class StatementChanges {
 public:
  static constexpr std::size_t kMaxEntries = 1024;

  void record(std::uint64_t hash, std::int64_t at);
  std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // Adds every change to `into`; returns the generation they are as of.
  std::uint64_t copy_to(StatementChangeTimes& into) const;

 private:
  mutable std::mutex mutex_;
  StatementChangeTimes changes_;  // under mutex_
  std::atomic<std::uint64_t> generation_{0};
};

}  // namespace pgvalve::session
