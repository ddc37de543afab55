// What the HTTP endpoint reports: a snapshot of the proxy's figures (pools, clients, config,
// statements, hosts), and its Prometheus text form (/metrics, built with prometheus-cpp). Only
// figures that have a real source are reported; nothing is faked.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <boost/asio/awaitable.hpp>

#include "config/config.h"
#include "pool/server_pool.h"
#include "proxy/health_checker.h"
#include "stats/query_stats.h"
#include "stats/worker_counters.h"

namespace pgvalve::proxy {

class App;

struct PoolSample {
  pool::PoolKey key;
  pool::PoolStats stats;
  int clients = 0;  // clients logged in to this pool
  int active = 0;   // ... not waiting for a server (cl_active; cl_waiting is stats.waiting)
};

struct Snapshot {
  config::ConfigPtr config;
  int client_connections = 0;  // every open client socket, logging in or not (App::open_sockets())
  bool draining = false;
  std::vector<PoolSample> pools;  // sorted by database, user, host
  stats::Snapshot statements;     // every worker's statement figures, summed (as detailed as asked)
  std::vector<HostRow> hosts;     // as SHOW HOSTS
  std::uint64_t failovers = 0;
  // Sockets refused at the door, by reason (config key), and those closed without an answer.
  std::vector<std::pair<std::string, std::uint64_t>> door_refused;
  std::uint64_t door_dropped = 0;
  std::vector<std::pair<std::string, std::uint64_t>> cancel_requests;  // by result
  stats::CounterTotals counters;  // bytes, checkout waits (every worker's, summed)
  // Per worker thread, as its last sweep (once a second) published them.
  struct WorkerSample {
    int clients = 0;
    double busy = 0;  // CPU time over the last second, in cores
  };
  std::vector<WorkerSample> workers;
  int active_workers = 0;  // the others are parked (worker_balance.h)
  // PAUSE ("" = every database) and DISABLE from the admin console.
  std::vector<std::string> paused;
  std::vector<std::string> disabled;
  // Sharded databases whose text order pgvalve follows (TextOrderSlot known and usable).
  std::vector<std::string> text_order_followed;
};

// Every figure but the statement statistics, at once (what /ready needs).
Snapshot take_pool_snapshot(App& app);
// Every figure; the statement statistics are gathered on the worker threads, in as much
// `detail` as the reader needs (/metrics: Totals, /status: Top).
boost::asio::awaitable<Snapshot> take_snapshot(App& app, stats::Detail detail);

// Where a host sits in a database's shards: the shard's name and "primary" or "replica".
// Empty strings when the host is not (or no longer) in the configuration.
struct HostPlace {
  std::string shard;
  std::string role;
};
HostPlace place_of(const config::Config& config, std::string_view database,
                   const config::Endpoint& host);

// The metric families of a snapshot, built directly (no registry kept or rebuilt per scrape).
std::vector<prometheus::MetricFamily> collect_metrics(const Snapshot& snapshot);

// pgvalve's metrics as a prometheus-cpp Collectable over one snapshot of the live figures
// (summed over the workers when it was taken).
class MetricsCollectable final : public prometheus::Collectable {
 public:
  explicit MetricsCollectable(Snapshot snapshot) : snapshot_(std::move(snapshot)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  Snapshot snapshot_;
};

// Prometheus text exposition format 0.0.4.
std::string render_metrics(const Snapshot& snapshot);

inline constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace pgvalve::proxy
