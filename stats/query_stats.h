// Statistics per statement shape (fingerprint), kept per worker thread: calls, rows, errors,
// durations (total, min, max and a histogram for percentiles), where they ran; and a ring of
// slow executions. Owned by one worker thread: every call, readers' collect_*() included, runs on
// that thread (the proxy posts them there), so the hot path takes no lock at all. Bounded: at most
// `max_fingerprints` shapes (the least called of a few sampled is evicted for a new one, and
// counted) and `slow_samples` slow executions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
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
  // stats.explain_slow: a slow SELECT's shape is sampled once for EXPLAIN (take_explain_requests).
  bool explain_slow = false;
  // stats.redact_literals: false: a slow sample shows the statement as the client sent it
  // (record()'s `sample`), constants and Bind parameters included.
  bool redact_literals = true;
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

// What a statement was, from its command tag (the Prometheus `kind` label).
enum class StatementKind : std::uint8_t { Select, Insert, Update, Delete, Copy, Other };
constexpr std::size_t kStatementKinds = 6;
std::string_view kind_name(StatementKind kind);

// What a CommandComplete tag says: the statement's kind, and the rows it returned or changed
// ("SELECT 5", "INSERT 0 5", "UPDATE 3", "COPY 5", "FETCH 5", "MOVE 5"; 0 for other tags).
struct CommandTag {
  StatementKind kind = StatementKind::Other;
  std::uint64_t rows = 0;
};
CommandTag read_command_tag(std::string_view tag);

// Upper bounds (seconds) of the query_duration_seconds histogram buckets; +Inf follows.
inline constexpr double kDurationBounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,     10};
constexpr std::size_t kDurationBuckets = std::size(kDurationBounds) + 1;

// Totals per (database, shard, role, kind) and per database, for /metrics.
struct QueryTotals {
  std::string database;
  std::uint16_t shard = 0;
  bool replica = false;
  StatementKind kind = StatementKind::Other;
  std::uint64_t queries = 0;
  std::uint64_t rows = 0;
};
struct DatabaseTotals {
  std::string database;
  std::uint64_t transactions = 0;
  std::uint64_t transaction_micros = 0;  // time from a transaction's first request to its end
  std::uint64_t duration_counts[kDurationBuckets] = {};  // not cumulative
  double duration_sum_seconds = 0;
};
struct ErrorTotals {
  char sqlstate_class[3] = {};  // two characters and NUL
  std::uint64_t errors = 0;
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
  StatementKind kind = StatementKind::Other;
  char sqlstate_class[2] = {};  // of its error, when `error`
  // A statement over several shards is one client statement with a part on each shard: each
  // part counts for its shard (SHOW SHARDS, statements per shard in /metrics), the statement
  // once for its fingerprint (SHOW QUERIES calls, rows, duration, errors, slow queries).
  enum class Scope : std::uint8_t {
    Whole,      // a statement on one server
    ShardPart,  // one shard's part of a statement over several
    Gathered,   // the client's statement over several shards, answered once
  };
  Scope scope = Scope::Whole;
  // Gathered: the shards that ran a part (bit i: shard i); `host` lists their hosts.
  std::uint64_t shards = 0;
};

// The shards a statement shape ran on in one database: bit i is shard i of that database's
// configuration (a shard index means nothing without its database).
struct DatabaseShards {
  std::string database;
  std::uint64_t shards = 0;
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
  std::vector<DatabaseShards> shards;  // per database it ran in (usually one)
  LatencyHistogram durations;
  std::string advice;  // from its plan (explain_slow); empty: none, or not EXPLAINed
  enum class Explain : std::uint8_t { No, Wanted, Requested, Done };
  Explain explain = Explain::No;

  void merge(const QueryFigures& other);
  // It ran on shard `shard` of `database`.
  void add_shard(const std::string& database, std::uint16_t shard);
  // The duration at quantile q from the histogram, kept within [min, max] (a bucket's middle
  // may lie outside the durations actually seen).
  std::uint64_t percentile_micros(double q) const;
};

struct SlowQuery {
  std::chrono::system_clock::time_point at;
  std::string database;
  std::string user;
  std::uint16_t shard = 0;
  std::uint64_t shards = 0;  // a statement over several shards: bit i, shard i ran a part
  std::string host;          // "host:port"; over several shards each of theirs, comma-separated
  std::uint64_t micros = 0;
  std::uint64_t fingerprint = 0;
  std::string text;  // normalised (no constant kept), or as sent with redact_literals: false
  std::string advice;
};

// A slow SELECT to EXPLAIN: the text of one execution (constants included, never shown), and
// the client's names, whose privileges the EXPLAIN needs.
struct ExplainRequest {
  std::uint64_t fingerprint = 0;
  std::string sql;
  std::string database;
  std::string user;
};

// How much of the statement figures a reader needs; a worker copies no more than that.
enum class Detail : std::uint8_t {
  Totals,  // the counters only (/metrics, SHOW STATS, SHOW SHARDS): no statement copied
  Top,     // and the kTopShown statements with the most total time and the kTopShown latest
           // slow samples (/status)
  All,     // and every statement and slow sample (SHOW QUERIES, SHOW SLOW_QUERIES)
};
inline constexpr std::size_t kTopShown = 20;

// A fingerprint's total time on one worker: what a Top reader ranks by before it copies the
// figures of the few it shows.
struct FingerprintTime {
  std::uint64_t fingerprint = 0;
  std::uint64_t total_micros = 0;
};

// What a snapshot gathers from every worker.
struct Snapshot {
  std::vector<QueryFigures> queries;  // one per fingerprint, by total time, largest first
  std::vector<SlowQuery> slow;        // newest first
  std::uint64_t evictions = 0;
  std::uint64_t slow_total = 0;
  std::vector<QueryTotals> queries_by_label;
  std::vector<DatabaseTotals> databases;
  std::vector<ErrorTotals> errors;
};

class QueryStats {
 public:
  explicit QueryStats(Limits limits = {});
  QueryStats(const QueryStats&) = delete;
  QueryStats& operator=(const QueryStats&) = delete;

  // A statement is about to run: its fingerprint has an entry, with its text normalised by
  // PostgreSQL's parser the first time it is seen.
  void prepare(std::uint64_t fingerprint, std::string_view sql, const ClientLabels& who);
  // It completed. An execution whose entry was evicted (or reset) meanwhile is not counted in
  // its shape's figures, but in the counters and, when slow, in the slow samples. `sample`: the
  // statement as sent, with its parameters, given only when keeps_literals(); empty: a slow
  // sample shows the fingerprint's normalised text.
  void record(const Execution& e, const ClientLabels& who, std::string_view sample = {});
  // A client's transaction (or autocommit statement) ended.
  void count_transaction(const ClientLabels& who, std::uint64_t micros);
  // An error pgvalve gave a client itself (a refusal, a lost server's 08006, a FATAL it closed
  // the client with): counted by SQLSTATE class with the errors of statements.
  void count_error(std::string_view sqlstate);

  // A worker's part of a snapshot is collected on its thread into a Snapshot of its own (no
  // lock shared between workers), and the parts are merged by merge() on the reader's thread.
  // The counters (queries by label, databases, errors, slow and eviction totals).
  void collect_totals(Snapshot& part) const;
  // Every fingerprint called so far and every slow sample (order left to merge()).
  void collect_all(Snapshot& part) const;
  // The `n` newest slow samples, newest first.
  void collect_latest_slow(std::size_t n, Snapshot& part) const;
  // The total time of every fingerprint called so far: no text or histogram copied.
  void collect_times(std::vector<FingerprintTime>& out) const;
  // The figures of those of `fingerprints` called here so far.
  void collect_figures(const std::vector<std::uint64_t>& fingerprints, Snapshot& part) const;
  // explain_slow: the statements sampled since the last call (the control thread EXPLAINs them).
  std::vector<ExplainRequest> take_explain_requests();
  // The advice for a fingerprint's plan ("" when none): shown with it from now on.
  void set_advice(std::uint64_t fingerprint, const std::string& advice);
  // RESET QUERIES: the figures per fingerprint and the slow samples (counters stay).
  void reset();
  void set_limits(const Limits& limits);
  // A reload moved `database`'s shards: shard i is now shard `to[i]`, kNoShard when it is gone.
  // Figures kept by index follow their shard (its counters per label go with a shard gone).
  void remap_shards(const std::string& database, const std::vector<std::uint16_t>& to);
  static constexpr std::uint16_t kNoShard = 0xffff;
  // Whether sessions should give each execution its sample (stats.redact_literals: false and
  // slow samples kept).
  bool keeps_literals() const {
    return !limits_.redact_literals && limits_.slow_query.count() > 0 && limits_.slow_samples > 0;
  }

  // Sums the workers' parts (counters by label, figures by fingerprint) and orders them:
  // queries by total time, largest first, at most `max_fingerprints`; slow samples newest first.
  static Snapshot merge(std::vector<Snapshot>&& parts, std::size_t max_fingerprints);
  // The `n` fingerprints with the most total time summed over the workers' collect_times()
  // (ties: the smaller fingerprint first), most first: the ones whose figures a Top reader then
  // collects from every worker, so that each figure shown is the sum of all of them (a
  // worker's own top n would miss a statement that is 21st on each worker but first in sum).
  static std::vector<std::uint64_t> top_by_time(
      const std::vector<std::vector<FingerprintTime>>& parts, std::size_t n);
  // A snapshot of `detail` of `workers`, all on this thread (tests, single-threaded use); the
  // proxy runs the same steps with each worker's collect_*() on its own thread.
  static Snapshot snapshot(const std::vector<const QueryStats*>& workers,
                           std::size_t max_fingerprints, Detail detail = Detail::All);

  // The text shown for a statement: libpg_query's normalisation, or pgvalve's own when the
  // statement does not parse or is longer than kMaxParsedTextBytes; at most kMaxTextBytes.
  static std::string normalized_text(std::string_view sql);
  static constexpr std::size_t kMaxTextBytes = 2048;
  static constexpr std::size_t kMaxParsedTextBytes = 8192;
  // Cuts `text` to at most kMaxTextBytes on a UTF-8 boundary, "..." marking the cut.
  static void cut_to_max(std::string& text);

 private:
  void evict_one();
  DatabaseTotals& database_totals(const std::string& database);
  void add_error(char c0, char c1);

  Limits limits_;
  std::vector<QueryFigures> entries_;
  std::unordered_map<std::uint64_t, std::uint32_t> index_;  // fingerprint -> entries_ position
  std::uint64_t evictions_ = 0;
  std::uint64_t random_ = 0x9e3779b97f4a7c15ull;
  std::vector<SlowQuery> slow_;  // ring of limits_.slow_samples
  std::size_t slow_next_ = 0;
  std::uint64_t slow_total_ = 0;
  // Few entries (databases x shards x roles x kinds): searched in order.
  std::vector<QueryTotals> queries_by_label_;
  std::vector<DatabaseTotals> databases_;
  std::vector<ErrorTotals> errors_;
  std::vector<ExplainRequest> explain_requests_;
};

}  // namespace pgvalve::stats
