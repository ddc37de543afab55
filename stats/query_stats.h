// Statistics per statement shape (fingerprint), kept per worker thread: calls, rows, errors,
// durations (total, min, max and a histogram for percentiles), where they ran; and a ring of
// slow executions. The hot path takes only this worker's own lock, which nothing else holds
// except a snapshot (SHOW QUERIES, /metrics) summing the workers. Bounded: at most
// `max_fingerprints` shapes (the least called of a few sampled is evicted for a new one, and
// counted) and `slow_samples` slow executions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "stats/latency_histogram.h"

namespace pgvalve::stats {

struct Limits {
  std::size_t max_fingerprints = 5000;
  std::chrono::microseconds slow_query{100000};  // 0: no slow samples
  std::size_t slow_samples = 1000;
};

// Who ran a statement, for slow samples: the client's names live as long as its session.
class QueryStats;

struct ClientLabels {
  const std::string* database = nullptr;
  const std::string* user = nullptr;
};

// What a client session reports to: its worker's statistics, and who the client is.
struct Recorder {
  QueryStats* stats = nullptr;
  ClientLabels labels;
};

// One execution of a statement, as the session core saw it complete.
struct Execution {
  std::uint64_t fingerprint = 0;
  std::uint64_t micros = 0;
  std::uint64_t rows = 0;
  bool error = false;
  bool replica = false;
  std::uint16_t shard = 0;
  std::string_view host;
};

// A fingerprint's figures (one worker's, or the sum of all).
struct QueryFigures {
  std::uint64_t fingerprint = 0;
  std::string text;  // PostgreSQL's normalised text of its first sample ($1, $2 for constants)
  std::uint64_t calls = 0;
  std::uint64_t rows = 0;
  std::uint64_t errors = 0;
  std::uint64_t total_micros = 0;
  std::uint64_t min_micros = 0;
  std::uint64_t max_micros = 0;
  std::uint64_t replica_calls = 0;
  std::uint64_t shards = 0;  // bit i: ran on shard i
  LatencyHistogram durations;

  void merge(const QueryFigures& other);
};

struct SlowQuery {
  std::chrono::system_clock::time_point at;
  std::string database;
  std::string user;
  std::uint16_t shard = 0;
  std::string host;
  std::uint64_t micros = 0;
  std::uint64_t fingerprint = 0;
  std::string text;  // normalised: no constant of the sample is kept
  std::string advice;
};

// What a snapshot gathers from every worker.
struct Snapshot {
  std::vector<QueryFigures> queries;  // one per fingerprint, by total time, largest first
  std::vector<SlowQuery> slow;        // newest first
  std::uint64_t evictions = 0;
  std::uint64_t slow_total = 0;
};

class QueryStats {
 public:
  explicit QueryStats(Limits limits = {});
  QueryStats(const QueryStats&) = delete;
  QueryStats& operator=(const QueryStats&) = delete;

  // A statement is about to run: its fingerprint has an entry, with its text normalised by
  // PostgreSQL's parser the first time it is seen.
  void prepare(std::uint64_t fingerprint, std::string_view sql);
  // It completed. An execution whose entry was evicted meanwhile is not counted.
  void record(const Execution& e, const ClientLabels& who);

  // Adds this worker's figures to `into` (keyed by fingerprint) and its slow samples to `slow`.
  void collect(std::unordered_map<std::uint64_t, QueryFigures>& into, std::vector<SlowQuery>& slow,
               std::uint64_t& evictions, std::uint64_t& slow_total) const;
  void reset();
  void set_limits(const Limits& limits);

  // Sums `workers` into one snapshot (queries by total time, slow ones newest first), at most
  // `max_fingerprints` queries.
  static Snapshot snapshot(const std::vector<const QueryStats*>& workers,
                           std::size_t max_fingerprints);

  // The text shown for a statement: libpg_query's normalisation, or pgvalve's own when the
  // statement does not parse; at most kMaxTextBytes.
  static std::string normalized_text(std::string_view sql);
  static constexpr std::size_t kMaxTextBytes = 2048;

 private:
  void evict_one();

  mutable std::mutex mutex_;
  Limits limits_;
  std::vector<QueryFigures> entries_;
  std::unordered_map<std::uint64_t, std::uint32_t> index_;  // fingerprint -> entries_ position
  std::uint64_t evictions_ = 0;
  std::uint64_t random_ = 0x9e3779b97f4a7c15ull;
  std::vector<SlowQuery> slow_;  // ring of limits_.slow_samples
  std::size_t slow_next_ = 0;
  std::uint64_t slow_total_ = 0;
};

// The row count of a CommandComplete tag ("SELECT 5", "INSERT 0 5", "UPDATE 3"); 0 for others.
std::uint64_t rows_of_tag(std::string_view tag);

}  // namespace pgvalve::stats
