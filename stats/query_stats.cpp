#include "stats/query_stats.h"

#include <pg_query.h>

#include <algorithm>
#include <cctype>

#include "routing/fingerprint.h"

namespace pgvalve::stats {

void QueryFigures::merge(const QueryFigures& other) {
  if (calls == 0 || (other.calls > 0 && other.min_micros < min_micros)) {
    min_micros = other.min_micros;
  }
  if (text.empty()) text = other.text;
  calls += other.calls;
  rows += other.rows;
  errors += other.errors;
  total_micros += other.total_micros;
  max_micros = std::max(max_micros, other.max_micros);
  replica_calls += other.replica_calls;
  shards |= other.shards;
  durations.merge(other.durations);
}

QueryStats::QueryStats(Limits limits) : limits_(limits) {}

std::string QueryStats::normalized_text(std::string_view sql) {
  std::string text;
  const std::string input(sql);
  PgQueryNormalizeResult r = pg_query_normalize(input.c_str());
  if (!r.error && r.normalized_query) {
    text = r.normalized_query;
  } else {
    text = routing::normalize(sql);  // what the fingerprint hashes: literals already `$?`
  }
  pg_query_free_normalize_result(r);
  if (text.size() > kMaxTextBytes) {
    // Cut on a character boundary (UTF-8 continuation bytes are 10xxxxxx).
    std::size_t cut = kMaxTextBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
      --cut;
    text.resize(cut);
    text += "...";
  }
  return text;
}

void QueryStats::prepare(std::uint64_t fingerprint, std::string_view sql) {
  {
    std::lock_guard lock(mutex_);
    if (index_.contains(fingerprint) || limits_.max_fingerprints == 0) return;
  }
  // Normalising parses the statement: outside the lock, once per new shape.
  std::string text = normalized_text(sql);
  std::lock_guard lock(mutex_);
  if (index_.contains(fingerprint)) return;
  while (entries_.size() >= limits_.max_fingerprints)
    evict_one();
  QueryFigures& f = entries_.emplace_back();
  f.fingerprint = fingerprint;
  f.text = std::move(text);
  index_.emplace(fingerprint, static_cast<std::uint32_t>(entries_.size() - 1));
}

// The least called of a few entries drawn at random: no order to keep on the hot path, and a
// statement called often survives a flood of one-off shapes.
void QueryStats::evict_one() {
  if (entries_.empty()) return;
  std::size_t victim = 0;
  std::uint64_t fewest = UINT64_MAX;
  for (int draw = 0; draw < 8; ++draw) {
    random_ ^= random_ << 13;
    random_ ^= random_ >> 7;
    random_ ^= random_ << 17;
    const std::size_t i = random_ % entries_.size();
    if (entries_[i].calls < fewest) {
      fewest = entries_[i].calls;
      victim = i;
    }
  }
  index_.erase(entries_[victim].fingerprint);
  if (victim != entries_.size() - 1) {
    entries_[victim] = std::move(entries_.back());
    index_[entries_[victim].fingerprint] = static_cast<std::uint32_t>(victim);
  }
  entries_.pop_back();
  ++evictions_;
}

void QueryStats::record(const Execution& e, const ClientLabels& who) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(e.fingerprint);
  if (it == index_.end()) return;
  QueryFigures& f = entries_[it->second];
  if (f.calls == 0 || e.micros < f.min_micros) f.min_micros = e.micros;
  ++f.calls;
  f.rows += e.rows;
  if (e.error) ++f.errors;
  f.total_micros += e.micros;
  f.max_micros = std::max(f.max_micros, e.micros);
  if (e.replica) ++f.replica_calls;
  if (e.shard < 64) f.shards |= std::uint64_t{1} << e.shard;
  f.durations.record(e.micros);
  if (limits_.slow_query.count() <= 0 ||
      e.micros <= static_cast<std::uint64_t>(limits_.slow_query.count())) {
    return;
  }
  ++slow_total_;
  if (limits_.slow_samples == 0) return;
  SlowQuery s;
  s.at = std::chrono::system_clock::now();
  if (who.database) s.database = *who.database;
  if (who.user) s.user = *who.user;
  s.shard = e.shard;
  s.host = std::string(e.host);
  s.micros = e.micros;
  s.fingerprint = e.fingerprint;
  s.text = f.text;
  if (slow_.size() < limits_.slow_samples) {
    slow_.push_back(std::move(s));
  } else {
    slow_[slow_next_ % slow_.size()] = std::move(s);
  }
  slow_next_ = (slow_next_ + 1) % limits_.slow_samples;
}

void QueryStats::collect(std::unordered_map<std::uint64_t, QueryFigures>& into,
                         std::vector<SlowQuery>& slow, std::uint64_t& evictions,
                         std::uint64_t& slow_total) const {
  std::lock_guard lock(mutex_);
  for (const auto& f : entries_) {
    if (f.calls == 0) continue;
    into[f.fingerprint].merge(f);
    into[f.fingerprint].fingerprint = f.fingerprint;
  }
  slow.insert(slow.end(), slow_.begin(), slow_.end());
  evictions += evictions_;
  slow_total += slow_total_;
}

void QueryStats::reset() {
  std::lock_guard lock(mutex_);
  entries_.clear();
  index_.clear();
  slow_.clear();
  slow_next_ = 0;
  evictions_ = 0;
  slow_total_ = 0;
}

void QueryStats::set_limits(const Limits& limits) {
  std::lock_guard lock(mutex_);
  limits_ = limits;
  while (entries_.size() > limits_.max_fingerprints)
    evict_one();
  if (slow_.size() > limits_.slow_samples) {
    slow_.resize(limits_.slow_samples);
  }
  if (limits_.slow_samples > 0) slow_next_ %= limits_.slow_samples;
}

Snapshot QueryStats::snapshot(const std::vector<const QueryStats*>& workers,
                              std::size_t max_fingerprints) {
  Snapshot out;
  std::unordered_map<std::uint64_t, QueryFigures> all;
  for (const QueryStats* w : workers)
    w->collect(all, out.slow, out.evictions, out.slow_total);
  out.queries.reserve(all.size());
  for (auto& [fp, f] : all)
    out.queries.push_back(std::move(f));
  std::sort(out.queries.begin(), out.queries.end(), [](const auto& a, const auto& b) {
    return a.total_micros != b.total_micros ? a.total_micros > b.total_micros
                                            : a.fingerprint < b.fingerprint;
  });
  if (out.queries.size() > max_fingerprints) out.queries.resize(max_fingerprints);
  std::sort(out.slow.begin(), out.slow.end(),
            [](const SlowQuery& a, const SlowQuery& b) { return a.at > b.at; });
  return out;
}

std::uint64_t rows_of_tag(std::string_view tag) {
  const std::size_t space = tag.rfind(' ');
  if (space == std::string_view::npos) return 0;
  const std::string_view verb = tag.substr(0, tag.find(' '));
  static constexpr std::string_view kCounted[] = {"SELECT", "INSERT", "UPDATE", "DELETE",
                                                  "MERGE",  "COPY",   "FETCH",  "MOVE"};
  if (std::find(std::begin(kCounted), std::end(kCounted), verb) == std::end(kCounted)) return 0;
  std::uint64_t n = 0;
  for (char c : tag.substr(space + 1)) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

}  // namespace pgvalve::stats
