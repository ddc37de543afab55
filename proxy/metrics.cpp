#include "proxy/metrics.h"

#include <algorithm>
#include <limits>
#include <tuple>

#include <prometheus/text_serializer.h>

#include "protocol/utf8.h"
#include "proxy/app.h"

namespace pgvalve::proxy {

Snapshot take_pool_snapshot(App& app) {
  Snapshot s;
  s.config = app.config();
  s.client_connections = app.open_sockets();
  s.draining = app.draining();
  const auto pools = app.pools();
  const auto clients = App::clients_by_pool(pools, app.hosts());
  for (std::size_t i = 0; i < pools.size(); ++i) {
    s.pools.push_back({pools[i]->key(), pools[i]->stats(), clients[i].clients, clients[i].active});
  }
  std::sort(s.pools.begin(), s.pools.end(), [](const PoolSample& a, const PoolSample& b) {
    return std::tie(a.key.database, a.key.user, a.key.host.host, a.key.host.port) <
           std::tie(b.key.database, b.key.user, b.key.host.host, b.key.host.port);
  });
  s.hosts = app.hosts();
  s.failovers = app.failovers();
  {
    const App::DoorRefusals door = app.door_refusals();
    using admission::Verdict;
    s.door_refused = {
        {"max_client_connections", door.by_verdict[static_cast<int>(Verdict::TooManyClients)]},
        {"connections_per_ip", door.by_verdict[static_cast<int>(Verdict::TooManyFromAddress)]},
        {"connect_rate_per_ip", door.by_verdict[static_cast<int>(Verdict::TooFastFromAddress)]}};
    s.door_dropped = door.dropped;
    using Outcome = App::CancelOutcome;
    s.cancel_requests = {{"matched", app.cancel_requests(Outcome::Matched)},
                         {"unknown_key", app.cancel_requests(Outcome::UnknownKey)},
                         {"connect_rate_per_ip", app.cancel_requests(Outcome::TooFast)}};
  }
  s.counters = app.counter_totals();
  s.active_workers = app.active_workers();
  s.paused = app.paused_databases();
  s.disabled = app.disabled_databases();
  if (s.config) {
    for (const auto& db : s.config->databases) {
      const auto slot = app.text_order(db.name);
      const routing::TextOrder* order = slot ? slot->get() : nullptr;
      if (order != nullptr && order->usable()) s.text_order_followed.push_back(db.name);
    }
  }
  for (int i = 0; i < app.worker_count(); ++i) {
    const Worker& w = app.worker(i);
    s.workers.push_back({w.published_clients.load(std::memory_order_relaxed),
                         w.published_busy.load(std::memory_order_relaxed)});
  }
  return s;
}

boost::asio::awaitable<Snapshot> take_snapshot(App& app, stats::Detail detail) {
  Snapshot s = take_pool_snapshot(app);
  s.statements = co_await app.query_stats(detail);
  co_return s;
}

HostPlace place_of(const config::Config& config, std::string_view database,
                   const config::Endpoint& host) {
  const auto* db = config.find_database(database);
  if (!db) return {};
  for (const auto& shard : db->shards) {
    if (shard.primary == host) return {shard.name, "primary"};
  }
  for (const auto& shard : db->shards) {
    if (std::find(shard.replicas.begin(), shard.replicas.end(), host) != shard.replicas.end()) {
      return {shard.name, "replica"};
    }
  }
  return {};
}

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

// Metric families built straight from a snapshot: no registry, nothing kept between scrapes.
// Samples with the same labels add up (pools of several users on one host).
class Families {
 public:
  std::size_t family(std::string name, std::string help, MetricType type) {
    out_.push_back({std::move(name), std::move(help), type, {}});
    return out_.size() - 1;
  }
  void add(std::size_t f, Labels labels, double value) {
    ClientMetric& m = sample(f, std::move(labels));
    if (out_[f].type == MetricType::Counter) {
      m.counter.value += value;
    } else {
      m.gauge.value += value;
    }
  }
  // `counts` per bucket, not cumulative; one more than `bounds` (+Inf).
  template <typename Bounds, typename Counts>
  void histogram(std::size_t f, Labels labels, const Bounds& bounds, const Counts& counts,
                 double sum) {
    ClientMetric& m = sample(f, std::move(labels));
    std::uint64_t cumulative = 0;
    std::size_t i = 0;
    for (double bound : bounds) {
      cumulative += counts[i++];
      m.histogram.bucket.push_back({cumulative, bound});
    }
    cumulative += counts[i];
    m.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = sum;
  }
  std::vector<MetricFamily> take() { return std::move(out_); }

 private:
  ClientMetric& sample(std::size_t f, Labels labels) {
    // The text format is UTF-8 (a scraper refuses the whole page on one bad byte); names come
    // from the config file and servers unchecked. Values made equal by it add up.
    for (auto& l : labels) {
      if (!protocol::is_valid_utf8(l.value)) l.value = protocol::to_valid_utf8(l.value);
    }
    for (auto& m : out_[f].metric) {
      if (m.label == labels) return m;
    }
    ClientMetric& m = out_[f].metric.emplace_back();
    m.label = std::move(labels);
    return m;
  }

  std::vector<MetricFamily> out_;
};

std::string shard_name(const config::Config* config, const std::string& database,
                       std::uint16_t shard) {
  if (config) {
    if (const auto* db = config->find_database(database); db && shard < db->shards.size()) {
      return db->shards[shard].name;
    }
  }
  return "s" + std::to_string(shard);
}

void pool_metrics(const Snapshot& snapshot, Families& f) {
  const auto clients = f.family(
      "pgvalve_client_connections",
      "Clients logged in to a pool: active (served or idle) or waiting for a server connection",
      MetricType::Gauge);
  const auto servers = f.family("pgvalve_server_connections",
                                "Server connections by state: idle (in the pool), active (lent "
                                "to a client), login (being opened)",
                                MetricType::Gauge);
  const auto size =
      f.family("pgvalve_pool_size", "Server connections that exist or are being opened, per pool",
               MetricType::Gauge);
  const auto checkouts = f.family("pgvalve_pool_checkouts_total",
                                  "Server connections handed to clients", MetricType::Counter);
  const auto waits =
      f.family("pgvalve_pool_checkout_waits_total",
               "Checkouts that had to queue for a server connection", MetricType::Counter);
  const auto timeouts =
      f.family("pgvalve_pool_checkout_timeouts_total",
               "Checkouts that gave up after checkout_timeout_ms", MetricType::Counter);
  const auto opened = f.family("pgvalve_server_connections_opened_total",
                               "Server connections opened successfully", MetricType::Counter);
  const auto login_failures =
      f.family("pgvalve_server_login_failures_total",
               "Server connections that could not be opened, by SQLSTATE: the server's (53300 "
               "max_connections reached, 57P03 starting up or shutting down, 28P01 password, "
               "...), or 08006 when it could not be reached",
               MetricType::Counter);
  const auto closed = f.family("pgvalve_server_connections_closed_total",
                               "Server connections closed (expired, recycled, broken or surplus)",
                               MetricType::Counter);
  const auto pinned = f.family("pgvalve_pinned_clients",
                               "Clients whose session state (advisory lock, temporary table, "
                               "WITH HOLD cursor, SQL PREPARE, LISTEN in a transaction) pins a "
                               "server to them",
                               MetricType::Gauge);
  const auto max_wait = f.family("pgvalve_pool_max_wait_seconds",
                                 "How long the oldest client still waiting for a server "
                                 "connection has waited (0 when none waits)",
                                 MetricType::Gauge);
  const auto handoffs = f.family("pgvalve_pool_handoffs_total",
                                 "Server connections moved to another worker for waiting clients",
                                 MetricType::Counter);
  const auto evictions =
      f.family("pgvalve_prepared_statement_evictions_total",
               "Prepared statements closed on a server to stay within pool.max_prepared_statements",
               MetricType::Counter);
  f.add(clients, {{"state", "active"}}, 0);
  f.add(clients, {{"state", "waiting"}}, 0);
  for (const auto& p : snapshot.pools) {
    const auto& s = p.stats;
    // A waiting client is counted by the pool it waits for, which may not be the one it logged
    // in to (a replica's, another shard's): `active` leaves it out there.
    f.add(clients, {{"state", "active"}}, p.active);
    f.add(clients, {{"state", "waiting"}}, s.waiting);
    const std::string host = p.key.host.to_string();
    HostPlace place;
    if (snapshot.config) place = place_of(*snapshot.config, p.key.database, p.key.host);
    if (place.role.empty()) place.role = "unknown";
    // No user label (DESIGN.md §6): pools of different users on one host add up.
    auto server_labels = [&](const char* state) -> Labels {
      return {{"database", p.key.database},
              {"host", host},
              {"role", place.role},
              {"shard", place.shard},
              {"state", state}};
    };
    f.add(servers, server_labels("idle"), s.checked_in);
    f.add(servers, server_labels("active"), s.checked_out);
    f.add(servers, server_labels("login"), s.opening);
    const Labels pool{{"database", p.key.database}, {"host", host}, {"user", p.key.user}};
    f.add(size, pool, s.size);
    f.add(checkouts, pool, static_cast<double>(s.total_checkouts));
    f.add(waits, pool, static_cast<double>(s.total_waits));
    f.add(timeouts, pool, static_cast<double>(s.total_timeouts));
    f.add(opened, pool, static_cast<double>(s.total_created));
    for (const auto& [sqlstate, count] : s.login_failures) {
      f.add(login_failures,
            {{"database", p.key.database},
             {"host", host},
             {"sqlstate", sqlstate},
             {"user", p.key.user}},
            static_cast<double>(count));
    }
    f.add(closed, pool, static_cast<double>(s.total_closed));
    f.add(evictions, pool, static_cast<double>(s.total_statement_evictions));
    f.add(pinned, pool, s.pinned);
    f.add(max_wait, pool, static_cast<double>(s.max_wait_us) / 1e6);
    f.add(handoffs, pool, static_cast<double>(s.total_handoffs));
  }
}

void statement_metrics(const Snapshot& snapshot, Families& f) {
  const stats::Snapshot& st = snapshot.statements;
  const auto queries = f.family("pgvalve_queries_total",
                                "Statements run for clients (a simple query string or an "
                                "Execute), by database, shard, role of the host and kind (from "
                                "the command tag)",
                                MetricType::Counter);
  for (const auto& q : st.queries_by_label) {
    f.add(queries,
          {{"database", q.database},
           {"kind", std::string(stats::kind_name(q.kind))},
           {"role", q.replica ? "replica" : "primary"},
           {"shard", shard_name(snapshot.config.get(), q.database, q.shard)}},
          static_cast<double>(q.queries));
  }
  const auto transactions =
      f.family("pgvalve_transactions_total",
               "Client transactions ended (an autocommit statement is one)", MetricType::Counter);
  const auto durations =
      f.family("pgvalve_query_duration_seconds",
               "Time from sending a statement to the server until its last answer arrived",
               MetricType::Histogram);
  for (const auto& d : st.databases) {
    f.add(transactions, {{"database", d.database}}, static_cast<double>(d.transactions));
    f.histogram(durations, {{"database", d.database}}, stats::kDurationBounds, d.duration_counts,
                d.duration_sum_seconds);
  }
  const auto errors = f.family("pgvalve_errors_total",
                               "Statements that ended in an error, by SQLSTATE class (first two "
                               "characters: 23 integrity, 40 rollback, 57 operator "
                               "intervention, ...)",
                               MetricType::Counter);
  for (const auto& e : st.errors) {
    f.add(errors, {{"sqlstate_class", std::string(e.sqlstate_class, 2)}},
          static_cast<double>(e.errors));
  }
  f.add(f.family("pgvalve_slow_queries_total", "Statements slower than stats.slow_query_ms",
                 MetricType::Counter),
        {}, static_cast<double>(st.slow_total));
  f.add(f.family("pgvalve_query_fingerprints_evicted_total",
                 "Statement shapes dropped from SHOW QUERIES to stay within "
                 "stats.max_fingerprints",
                 MetricType::Counter),
        {}, static_cast<double>(st.evictions));
}

void counter_metrics(const Snapshot& snapshot, Families& f) {
  const stats::CounterTotals& c = snapshot.counters;
  const auto bytes =
      f.family("pgvalve_bytes_total", "PostgreSQL protocol bytes from and to clients (after TLS)",
               MetricType::Counter);
  f.add(bytes, {{"direction", "received"}}, static_cast<double>(c.bytes_received));
  f.add(bytes, {{"direction", "sent"}}, static_cast<double>(c.bytes_sent));
  f.histogram(f.family("pgvalve_pool_checkout_wait_seconds",
                       "How long a request waited for a server connection (checkout, pause, "
                       "failover hold), counted when it got one or gave up",
                       MetricType::Histogram),
              {}, stats::kCheckoutWaitBounds, c.checkout_waits,
              static_cast<double>(c.checkout_wait_micros) / 1e6);
  f.add(f.family("pgvalve_client_moves_total",
                 "Clients moved to another worker thread between transactions, to pack a light "
                 "load onto fewer workers or spread a heavy one",
                 MetricType::Counter),
        {}, static_cast<double>(c.client_moves));
  const auto clients =
      f.family("pgvalve_worker_clients",
               "Client sessions on each worker thread (updated every second)", MetricType::Gauge);
  const auto busy =
      f.family("pgvalve_worker_cpu_ratio",
               "CPU time of each worker thread over the last second, in cores", MetricType::Gauge);
  f.add(f.family("pgvalve_workers_active",
                 "Worker threads serving clients; the others are parked while a light load "
                 "is packed onto fewer",
                 MetricType::Gauge),
        {}, snapshot.active_workers);
  for (std::size_t i = 0; i < snapshot.workers.size(); ++i) {
    const std::string worker = std::to_string(i);
    f.add(clients, {{"worker", worker}}, snapshot.workers[i].clients);
    f.add(busy, {{"worker", worker}}, snapshot.workers[i].busy);
  }
}

void host_metrics(const Snapshot& snapshot, Families& f) {
  const auto up = f.family("pgvalve_host_up", "1 when the host's last health checks passed, else 0",
                           MetricType::Gauge);
  const auto lag = f.family("pgvalve_replica_lag_seconds",
                            "How far a replica's replay is behind the primary (only while known)",
                            MetricType::Gauge);
  // A shard has a primary when one of its hosts takes writes now (what /ready checks).
  const auto primary_up =
      f.family("pgvalve_shard_primary_up", "1 when a host of the shard takes writes now, else 0",
               MetricType::Gauge);
  for (const HostRow& h : snapshot.hosts) {
    const std::string host = h.host.to_string();
    f.add(up,
          {{"database", h.database},
           {"host", host},
           {"role", std::string(health::role_name(h.role))},
           {"shard", h.shard}},
          h.checked && h.up ? 1 : 0);
    if (h.role == health::Role::Replica && h.lag_ms >= 0) {
      f.add(lag, {{"database", h.database}, {"host", host}, {"shard", h.shard}},
            static_cast<double>(h.lag_ms) / 1000.0);
    }
    // Summing 0s and 1s per shard: any writable host makes it 1 (set to at most 1 below).
    f.add(primary_up, {{"database", h.database}, {"shard", h.shard}}, h.writable ? 1 : 0);
  }
  f.add(f.family("pgvalve_failovers_total",
                 "Times a shard's writes moved to another host (followed, promoted, switched "
                 "over)",
                 MetricType::Counter),
        {}, static_cast<double>(snapshot.failovers));
}

// PAUSE and DISABLE left on after a drill stop a database's traffic: a gauge per database that
// alerts can watch.
void admin_metrics(const Snapshot& snapshot, Families& f) {
  if (!snapshot.config) return;
  const auto paused = f.family("pgvalve_database_paused",
                               "1 while the database is paused (PAUSE or KILL on the admin "
                               "console) and its new transactions wait for RESUME, else 0",
                               MetricType::Gauge);
  const auto disabled = f.family(
      "pgvalve_database_disabled",
      "1 while new logins to the database are refused (DISABLE on the admin console), else 0",
      MetricType::Gauge);
  const auto listed = [](const std::vector<std::string>& names, const std::string& name) {
    return std::any_of(names.begin(), names.end(),
                       [&](const std::string& n) { return n.empty() || n == name; });
  };
  const auto followed = f.family(
      "pgvalve_text_order_followed",
      "Sharded databases: 1 when pgvalve orders text as the shards' collation does (read by the "
      "health checks), else 0 and text sorts over several shards are refused",
      MetricType::Gauge);
  for (const auto& db : snapshot.config->databases) {
    f.add(paused, {{"database", db.name}}, listed(snapshot.paused, db.name) ? 1 : 0);
    f.add(disabled, {{"database", db.name}}, listed(snapshot.disabled, db.name) ? 1 : 0);
    if (db.sharding && db.shards.size() > 1) {
      const auto& names = snapshot.text_order_followed;
      f.add(followed, {{"database", db.name}},
            std::find(names.begin(), names.end(), db.name) != names.end() ? 1 : 0);
    }
  }
}

}  // namespace

std::vector<prometheus::MetricFamily> collect_metrics(const Snapshot& snapshot) {
  Families f;
  f.add(f.family("pgvalve_build_info", "Always 1; the labels say which pgvalve is running",
                 MetricType::Gauge),
        {{"version", PGVALVE_VERSION}}, 1);
  f.add(f.family("pgvalve_client_connections_open",
                 "Client connections open, including ones still logging in and admin console "
                 "sessions (what max_client_connections limits)",
                 MetricType::Gauge),
        {}, snapshot.client_connections);
  const auto refused =
      f.family("pgvalve_client_connections_refused_total",
               "Client connections refused at the door (53300), by the limit that refused them",
               MetricType::Counter);
  for (const auto& [reason, count] : snapshot.door_refused) {
    f.add(refused, {{"reason", reason}}, static_cast<double>(count));
  }
  f.add(f.family("pgvalve_client_refusals_dropped_total",
                 "Client connections refused at the door and closed without an answer, because "
                 "256 refusals were being answered already (a flood)",
                 MetricType::Counter),
        {}, static_cast<double>(snapshot.door_dropped));
  const auto cancels = f.family(
      "pgvalve_cancel_requests_total",
      "Cancel requests received, by result: matched a client's key, matched none (a stale key "
      "or a guess), or dropped unanswered by limits.connect_rate_per_ip",
      MetricType::Counter);
  for (const auto& [result, count] : snapshot.cancel_requests) {
    f.add(cancels, {{"result", result}}, static_cast<double>(count));
  }
  pool_metrics(snapshot, f);
  statement_metrics(snapshot, f);
  counter_metrics(snapshot, f);
  host_metrics(snapshot, f);
  admin_metrics(snapshot, f);
  auto families = f.take();
  for (auto& family : families) {
    if (family.name != "pgvalve_shard_primary_up") continue;
    for (auto& m : family.metric)
      m.gauge.value = m.gauge.value > 0 ? 1 : 0;
  }
  return families;
}

std::vector<prometheus::MetricFamily> MetricsCollectable::Collect() const {
  return collect_metrics(snapshot_);
}

std::string render_metrics(const Snapshot& snapshot) {
  return prometheus::TextSerializer().Serialize(collect_metrics(snapshot));
}

}  // namespace pgvalve::proxy
