#include "health/shard_health.h"

#include <algorithm>

namespace pgvalve::health {

namespace {
// Distinct primary WAL positions kept for lag in time: at one check a second of steady writes,
// over eight minutes, far beyond any useful max_replica_lag_ms.
constexpr std::size_t kMaxSamples = 512;
}  // namespace

ShardHealth::ShardHealth(std::size_t host_count, ShardRules rules)
    : rules_(rules),
      hosts_(host_count),
      assessed_(host_count),
      retired_(host_count, false),
      suspect_(host_count, false) {
  for (std::size_t i = 1; i < host_count; ++i)
    assessed_[i].role = Role::Replica;
  if (host_count > 0) assessed_[0].role = Role::Primary;
}

void ShardHealth::succeeded(std::size_t host, const Probe& probe, Clock::time_point now) {
  hosts_[host].succeeded(probe, now);
  suspect_[host] = false;
  if (host == primary_ && !probe.in_recovery) note_primary_sample(probe.lsn, now);
}

void ShardHealth::refused(std::size_t host, std::string_view error, Clock::time_point now) {
  hosts_[host].refused(error, now);
}

void ShardHealth::failed(std::size_t host, std::string_view error, Clock::time_point now) {
  hosts_[host].failed(error, now, rules_.failures_before_down);
}

void ShardHealth::note_primary_sample(Lsn lsn, Clock::time_point at) {
  // Only the last time the primary was seen at each position matters (an idle primary stays).
  if (!samples_.empty() && samples_.back().lsn >= lsn) {
    if (samples_.back().lsn == lsn) samples_.back().at = std::max(samples_.back().at, at);
    return;
  }
  samples_.push_back({at, lsn});
  if (samples_.size() > kMaxSamples) samples_.pop_front();
}

std::int64_t ShardHealth::lag_ms_of(const HostFigures& replica, Clock::time_point now) const {
  // Behind every sample, the replica may be any amount behind: only a sample at or below its
  // position says when the primary last had no more than it has.
  if (samples_.empty() || replica.lsn < samples_.front().lsn) return -1;
  auto past = std::upper_bound(samples_.begin(), samples_.end(), replica.lsn,
                               [](Lsn lsn, const Sample& s) { return lsn < s.lsn; });
  // It has all the primary had at the primary's last check.
  if (past == samples_.end()) return 0;
  // It has all the primary had the last time the primary was seen at or below its position,
  // and maybe no more: the primary passed it at some moment before the next sample. Counted to
  // now, not to the replica's check, so that its lag grows at every host's check: a read on it
  // is at most max_replica_lag_ms plus the time between two checks old.
  const auto behind = now - std::prev(past)->at;
  if (behind.count() <= 0) return 0;
  return std::chrono::duration_cast<std::chrono::milliseconds>(behind).count();
}

std::optional<bool> ShardHealth::ahead_of_primary(const HostFigures& replica) const {
  const HostFigures& p = hosts_[primary_].figures();
  if (p.in_recovery || p.last_asked == Clock::time_point{}) return std::nullopt;
  // Only a replica position read before the primary's check was sent can be compared: the
  // primary's WAL position only grows, and a standby of it never replays past it. The checks
  // of all hosts start together, so the replica's check before its last one is usually it.
  if (replica.last_success <= p.last_asked) return replica.lsn > p.lsn;
  if (replica.previous_success != Clock::time_point{} && replica.previous_success <= p.last_asked) {
    return replica.previous_lsn > p.lsn;
  }
  return std::nullopt;
}

void ShardHealth::assess(Clock::time_point now) {
  split_brain_ = false;
  if (rules_.failover != config::FailoverMode::Off) {
    std::vector<std::size_t> claimants;
    for (std::size_t i = 0; i < hosts_.size(); ++i) {
      const HostFigures& f = hosts_[i].figures();
      if (!f.up || f.in_recovery || retired_[i]) continue;
      // A former primary started again without a rewind, while the newer primary is out of
      // sight: its writes would land on a history the shard has left.
      if (f.timeline != 0 && f.timeline < history_timeline_) {
        retired_[i] = true;
        continue;
      }
      claimants.push_back(i);
    }
    if (!claimants.empty()) {
      std::uint32_t top = 0;
      for (std::size_t i : claimants)
        top = std::max(top, hosts_[i].figures().timeline);
      history_timeline_ = std::max(history_timeline_, top);
      std::vector<std::size_t> winners;
      for (std::size_t i : claimants) {
        if (hosts_[i].figures().timeline == top) winners.push_back(i);
      }
      if (winners.size() == 1) {
        if (winners[0] != primary_) {
          // Down now, the former primary would claim again when it restarts, and timelines
          // alone cannot refuse it while the new primary is unreachable or they are unknown.
          // Never checked (startup), it may yet turn out the rightful primary or a split brain.
          const HostFigures& former = hosts_[primary_].figures();
          if (former.checked && !former.up) retired_[primary_] = true;
          primary_ = winners[0];
          samples_.clear();
        }
        for (std::size_t i : claimants) {
          if (i != primary_) retired_[i] = true;
        }
      } else {
        split_brain_ = true;
      }
    }
  }
  const HostFigures& p = hosts_[primary_].figures();
  // A retired host that follows the primary's timeline as a standby was rejoined.
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    const HostFigures& f = hosts_[i].figures();
    if (retired_[i] && i != primary_ && f.up && f.in_recovery && f.timeline != 0 &&
        f.timeline == p.timeline) {
      retired_[i] = false;
    }
  }

  const bool writable = writable_primary().has_value();
  if (writable) {
    had_primary_ = true;
  } else if (had_primary_) {
    had_primary_ = false;
    no_primary_since_ = now;
  }

  const bool primary_known = p.checked && p.up && !p.in_recovery;
  // After a move or a reload, the primary's last figures start the samples.
  if (primary_known && samples_.empty()) note_primary_sample(p.lsn, p.last_success);
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    HostAssessment& a = assessed_[i];
    const HostFigures& f = hosts_[i].figures();
    a.role = retired_[i] ? Role::Retired : (i == primary_ ? Role::Primary : Role::Replica);
    a.lag_ms = -1;
    a.lag_bytes = -1;
    a.readable = false;
    if (a.role != Role::Replica) continue;
    const std::optional<bool> ahead = ahead_of_primary(f);
    if (f.checked && f.up && ahead.value_or(false)) continue;  // its lag means nothing
    if (primary_known && f.checked && f.up) {
      a.lag_bytes = p.lsn > f.lsn ? static_cast<std::int64_t>(p.lsn - f.lsn) : 0;
      a.lag_ms = lag_ms_of(f, now);
      // Past the primary's last position, and not comparable yet (its first check, or the first
      // since it came back): it may be on another history, so its lag is unknown for a check.
      if (!ahead && f.lsn > p.lsn) a.lag_ms = -1;
    }
    const bool same_timeline = f.timeline == 0 || p.timeline == 0 || f.timeline == p.timeline;
    // An unknown lag keeps reads on the primary while one takes writes (before its first check
    // too); without one, stale reads beat none.
    const bool lag_allowed = a.lag_ms < 0 ? !writable : a.lag_ms <= rules_.max_replica_lag_ms;
    a.readable = f.up && f.in_recovery && same_timeline && !suspect_[i] && lag_allowed;
  }
}

std::optional<std::size_t> ShardHealth::writable_primary() const {
  if (split_brain_ || retired_[primary_]) return std::nullopt;
  const HostFigures& p = hosts_[primary_].figures();
  // Before its first check the primary of the configuration is trusted: pgvalve serves at once.
  if (!p.checked) return primary_;
  if (p.up && !p.in_recovery) return primary_;
  return std::nullopt;
}

std::optional<std::size_t> ShardHealth::promotion_candidate(Clock::time_point now) const {
  promotion_blocked_ = {};
  if (rules_.failover != config::FailoverMode::Promote || writable_primary()) return std::nullopt;
  if (split_brain_) {
    promotion_blocked_ = "two hosts claim the primary role on the same timeline";
    return std::nullopt;
  }
  const HostFigures& p = hosts_[primary_].figures();
  if (!p.checked) return std::nullopt;
  if (p.up) {
    promotion_blocked_ = "the primary is up and reports it is in recovery";
    return std::nullopt;
  }
  if (now - no_primary_since_ < std::chrono::milliseconds(rules_.promote_after_ms)) {
    return std::nullopt;
  }
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    const HostFigures& f = hosts_[i].figures();
    if (i == primary_ || retired_[i] || !f.up || !f.in_recovery) continue;
    if (p.timeline != 0 && f.timeline > p.timeline) {
      promotion_blocked_ =
          "a replica follows a newer timeline than the primary's: another host "
          "was promoted";
      return std::nullopt;
    }
  }
  const auto best = most_advanced_replica();
  if (!best) {
    promotion_blocked_ = "no replica on the primary's timeline is up";
  }
  return best;
}

std::string_view ShardHealth::not_promotable(std::size_t host) const {
  const HostFigures& f = hosts_[host].figures();
  if (host == primary_) return "it is the primary";
  if (retired_[host]) return "it is retired";
  if (!f.up || !f.in_recovery) return "it is not an up replica";
  if (ahead_of_primary(f).value_or(false)) {
    return "it has replayed past the primary's current WAL position, so it is not on the "
           "primary's history (it followed a primary that is gone); rejoin it to the primary "
           "(pg_rewind or a new base backup)";
  }
  const std::uint32_t history = std::max(hosts_[primary_].figures().timeline, history_timeline_);
  if (history != 0 && f.timeline != 0 && f.timeline < history) {
    return "it is on an older timeline than the primary's and misses what the primary wrote "
           "since its promotion; rejoin it to the primary (pg_rewind or a new base backup)";
  }
  return {};
}

std::optional<std::size_t> ShardHealth::most_advanced_replica() const {
  std::optional<std::size_t> best;
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    if (!not_promotable(i).empty()) continue;
    if (!best || hosts_[i].figures().lsn > hosts_[*best].figures().lsn) best = i;
  }
  return best;
}

void ShardHealth::promoted(std::size_t host, Clock::time_point now) {
  const HostFigures& f = hosts_[host].figures();
  if (f.timeline != 0) {
    history_timeline_ = std::max(history_timeline_, f.in_recovery ? f.timeline + 1 : f.timeline);
  }
  if (host != primary_) retired_[primary_] = true;
  retired_[host] = false;
  primary_ = host;
  samples_.clear();
  assess(now);
}

void ShardHealth::retire(std::size_t host) {
  retired_[host] = true;
}

void ShardHealth::suspect(std::size_t host) {
  if (host == primary_) return;  // the checks decide about the primary: writes would stop
  suspect_[host] = true;
  assessed_[host].readable = false;
}

}  // namespace pgvalve::health
