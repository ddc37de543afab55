// One shard's health as the sessions of every worker read it: written by the health checker's
// thread after each assessment, read on the query path with relaxed atomic loads (no lock; a
// reader may see a figure one check old, which routing tolerates by design — a replica's replay
// position only grows, so an old one errs on the side of the primary).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "health/shard_health.h"

namespace pgvalve::health {

struct HostStatus {
  std::atomic<bool> readable{false};  // a replica that may take reads
  std::atomic<bool> retired{false};
  std::atomic<Lsn> lsn{0};  // replay position (replica) or WAL position (primary)
};

class ShardStatus {
 public:
  explicit ShardStatus(std::size_t host_count)
      : count_(host_count), hosts_(std::make_unique<HostStatus[]>(host_count)) {}

  std::size_t size() const { return count_; }
  // The host taking writes, -1 when none does now.
  int primary() const { return primary_.load(std::memory_order_relaxed); }
  // The primary as the checks see it, also while a switchover or promotion pauses its writes
  // (where a statement ran, for statistics); -1 when none is up.
  int checked_primary() const { return checked_primary_.load(std::memory_order_relaxed); }
  const HostStatus& host(std::size_t i) const { return hosts_[i]; }
  // A session found replica `i` unreachable: no reads until the checker says otherwise (it
  // publishes again after checking it at once). Any thread.
  void distrust(std::size_t i) const { hosts_[i].readable.store(false, std::memory_order_relaxed); }

  // `writes_paused`: a switchover or promotion is under way; writes wait as if there were no
  // primary.
  void publish(const ShardHealth& shard, bool writes_paused = false) {
    for (std::size_t i = 0; i < count_ && i < shard.size(); ++i) {
      hosts_[i].lsn.store(shard.figures(i).lsn, std::memory_order_relaxed);
      hosts_[i].readable.store(shard.assessment(i).readable, std::memory_order_relaxed);
      hosts_[i].retired.store(shard.assessment(i).role == Role::Retired, std::memory_order_relaxed);
    }
    const auto p = shard.writable_primary();
    primary_.store(p && !writes_paused ? static_cast<int>(*p) : -1, std::memory_order_relaxed);
    checked_primary_.store(p ? static_cast<int>(*p) : -1, std::memory_order_relaxed);
  }

 private:
  std::size_t count_;
  std::unique_ptr<HostStatus[]> hosts_;
  std::atomic<int> primary_{0};
  std::atomic<int> checked_primary_{0};
};

}  // namespace pgvalve::health
