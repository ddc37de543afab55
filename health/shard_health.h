// The health of one shard's hosts taken together: which host is the primary now, how far each
// replica lags behind it, which replicas may take reads, and when pgvalve should promote one
// (DESIGN.md §4.3, §4.5). Pure and single-threaded: the health checker feeds it check results
// on its own thread and publishes the outcome (ShardStatus) for the sessions of every worker.
//
// Host 0 is the primary of the configuration, hosts 1.. its replicas, in configuration order.
//
// Who is the primary:
//  - failover off: host 0, always; writes fail while it is down or in recovery.
//  - follow / promote: the role a host reports is the truth. A host that is up and not in
//    recovery claims the primary role; among several claimants the one on the highest timeline
//    wins and the others are retired (no traffic); claimants tied on the highest timeline are a
//    split brain: no primary (writes fail with 57P03) until it is resolved. A claimant on a
//    lower timeline than a primary of the shard was ever seen on is retired, also while it is
//    the only one; so is the former primary, when the primary moves while it is down.
// A retired host stays retired until it reports being a standby on the primary's timeline
// again (an operator rejoined it) or the configuration is reloaded with another host list.
//
// A standby that had replayed further than the primary had written at a later moment is not on
// the primary's history (it was left following a primary that is gone, ahead of the replica
// promoted instead): it takes no reads and is not promoted, whatever its timeline shows.
//
// Replica lag in time: the primary's WAL positions are sampled with the last time a check saw
// each; a replica whose replay position is L lags by (now - the last time the primary was seen
// at or below L), 0 when the primary was never seen past L. An upper bound, leaning to the
// primary: the primary passed L at some moment before the next sample, up to one check
// interval later. Assessed at every host's check, so a read on a replica is at most
// max_replica_lag_ms plus the time between two checks old. This does not depend on
// pg_last_xact_replay_timestamp(), which makes a replica of an idle primary look minutes
// behind. A replica behind every sample has an unknown lag, and while a primary takes writes it
// takes no reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "health/host_health.h"

namespace pgvalve::health {

struct ShardRules {
  config::FailoverMode failover = config::FailoverMode::Follow;
  int failures_before_down = 3;
  int max_replica_lag_ms = 5000;
  int promote_after_ms = 5000;
};

// One host as routing and SHOW HOSTS see it after an assessment.
struct HostAssessment {
  Role role = Role::Replica;
  bool readable = false;        // a replica that may take reads now
  std::int64_t lag_ms = -1;     // -1: unknown (no primary figures, or behind every sample)
  std::int64_t lag_bytes = -1;  // -1: unknown
};

class ShardHealth {
 public:
  ShardHealth(std::size_t host_count, ShardRules rules);

  std::size_t size() const { return hosts_.size(); }
  const ShardRules& rules() const { return rules_; }
  void set_rules(const ShardRules& rules) { rules_ = rules; }

  // Check results; each is followed by assess().
  void succeeded(std::size_t host, const Probe& probe, Clock::time_point now);
  void failed(std::size_t host, std::string_view error, Clock::time_point now);
  void refused(std::size_t host, std::string_view error, Clock::time_point now);

  // Recomputes the primary, roles, lags and readable replicas from the latest figures.
  void assess(Clock::time_point now);

  // The host taking writes: up (or not checked yet) and not in recovery; nullopt when none is.
  std::optional<std::size_t> writable_primary() const;
  // The host that is, or last was, the primary (for SHOW HOSTS and the failover drills).
  std::size_t primary() const { return primary_; }
  bool split_brain() const { return split_brain_; }
  // Since when no host takes writes (meaningful while writable_primary() is empty).
  Clock::time_point no_primary_since() const { return no_primary_since_; }

  const HostFigures& figures(std::size_t host) const { return hosts_[host].figures(); }
  const HostHealth& host(std::size_t host) const { return hosts_[host]; }
  // A reload changed the shard's host list: a host it had before keeps what its checks found.
  void seed(std::size_t host, const HostHealth& known) { hosts_[host] = known; }
  const HostAssessment& assessment(std::size_t host) const { return assessed_[host]; }

  // Promote mode: the replica pgvalve should promote now, if any — when no host has taken writes
  // for promote_after_ms (and the primary was marked down after failures_before_down misses),
  // the healthy replica with the highest replay position. Nothing when a timeline shows that
  // another host was already promoted (a split brain in the making).
  std::optional<std::size_t> promotion_candidate(Clock::time_point now) const;
  // Why promotion_candidate() gave nothing while a primary is missing ("" when it did or when
  // nothing is missing), for the log.
  std::string_view promotion_blocked() const { return promotion_blocked_; }

  // What a promotion may choose (failover, switchover): an up replica, not retired, on the
  // timeline of the primary's history — when timelines are known, not one still on an older
  // timeline, which misses what the primary wrote since it was promoted. Why not, or "".
  std::string_view not_promotable(std::size_t host) const;
  // Of those, the one with the highest replay position; nullopt when none.
  std::optional<std::size_t> most_advanced_replica() const;

  // Switchover/failover drills: `host` becomes the primary now (it was promoted) and the former
  // primary is retired.
  void promoted(std::size_t host, Clock::time_point now);
  // An operator retired `host` (it takes no traffic).
  void retire(std::size_t host);
  // A session lost its connection to replica `host` or could not open one: it takes no reads
  // until its next successful check (which the checker runs at once).
  void suspect(std::size_t host);

 private:
  struct Sample {
    Clock::time_point at;  // the last time a check saw the primary at `lsn`
    Lsn lsn;
  };
  void note_primary_sample(Lsn lsn, Clock::time_point at);
  // Whether `replica` has replayed past where the primary was at a later moment; nullopt when
  // no check of the primary was sent after one of the replica's ended.
  std::optional<bool> ahead_of_primary(const HostFigures& replica) const;
  std::int64_t lag_ms_of(const HostFigures& replica, Clock::time_point now) const;

  ShardRules rules_;
  std::vector<HostHealth> hosts_;
  std::vector<HostAssessment> assessed_;
  std::vector<bool> retired_;
  // The lowest timeline the primary's history can be on: the highest a primary of the shard was
  // seen on, or past the one a promoted replica followed, even before a check has seen it
  // (0: unknown).
  std::uint32_t history_timeline_ = 0;
  std::vector<bool> suspect_;
  std::size_t primary_ = 0;
  bool split_brain_ = false;
  bool had_primary_ = true;
  Clock::time_point no_primary_since_{};
  std::deque<Sample> samples_;  // of the current primary, oldest first, bounded
  mutable std::string_view promotion_blocked_;
};

}  // namespace pgvalve::health
