#include "proxy/metrics.h"

#include <algorithm>
#include <tuple>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "proxy/app.h"

namespace pgvalve::proxy {

Snapshot take_snapshot(App& app) {
  Snapshot s;
  s.config = app.config();
  s.client_connections = app.open_sockets();
  s.draining = app.draining();
  for (const auto& pool : app.pools()) {
    s.pools.push_back({pool->key(), pool->stats(), pool->clients()});
  }
  std::sort(s.pools.begin(), s.pools.end(), [](const PoolSample& a, const PoolSample& b) {
    return std::tie(a.key.database, a.key.user, a.key.host.host, a.key.host.port) <
           std::tie(b.key.database, b.key.user, b.key.host.host, b.key.host.port);
  });
  s.statements = app.query_stats();
  s.hosts = app.hosts();
  s.failovers = app.failovers();
  s.counters = app.counter_totals();
  return s;
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

std::string shard_name(const config::Config* config, const std::string& database,
                       std::uint16_t shard) {
  if (config) {
    if (const auto* db = config->find_database(database); db && shard < db->shards.size()) {
      return db->shards[shard].name;
    }
  }
  return "s" + std::to_string(shard);
}

void render_statement_metrics(const Snapshot& snapshot, prometheus::Registry& registry) {
  using prometheus::BuildCounter;
  const stats::Snapshot& st = snapshot.statements;
  auto& queries = BuildCounter()
                      .Name("pgvalve_queries_total")
                      .Help(
                          "Statements run for clients (a simple query string or an Execute), by "
                          "database, shard, role of the host and kind (from the command tag)")
                      .Register(registry);
  for (const auto& q : st.queries_by_label) {
    queries
        .Add({{"database", q.database},
              {"shard", shard_name(snapshot.config.get(), q.database, q.shard)},
              {"role", q.replica ? "replica" : "primary"},
              {"kind", std::string(stats::kind_name(q.kind))}})
        .Increment(static_cast<double>(q.queries));
  }
  auto& transactions = BuildCounter()
                           .Name("pgvalve_transactions_total")
                           .Help("Client transactions ended (an autocommit statement is one)")
                           .Register(registry);
  auto& durations =
      prometheus::BuildHistogram()
          .Name("pgvalve_query_duration_seconds")
          .Help("Time from sending a statement to the server until its last answer arrived")
          .Register(registry);
  const prometheus::Histogram::BucketBoundaries bounds(std::begin(stats::kDurationBounds),
                                                       std::end(stats::kDurationBounds));
  for (const auto& d : st.databases) {
    transactions.Add({{"database", d.database}}).Increment(static_cast<double>(d.transactions));
    std::vector<double> counts(std::begin(d.duration_counts), std::end(d.duration_counts));
    durations.Add({{"database", d.database}}, bounds)
        .ObserveMultiple(counts, d.duration_sum_seconds);
  }
  auto& errors = BuildCounter()
                     .Name("pgvalve_errors_total")
                     .Help(
                         "Statements that ended in an error, by SQLSTATE class (first two "
                         "characters: 23 integrity, 40 rollback, 57 operator intervention, ...)")
                     .Register(registry);
  for (const auto& e : st.errors) {
    errors.Add({{"sqlstate_class", std::string(e.sqlstate_class, 2)}})
        .Increment(static_cast<double>(e.errors));
  }
  BuildCounter()
      .Name("pgvalve_slow_queries_total")
      .Help("Statements slower than stats.slow_query_ms")
      .Register(registry)
      .Add({})
      .Increment(static_cast<double>(st.slow_total));
  BuildCounter()
      .Name("pgvalve_query_fingerprints_evicted_total")
      .Help("Statement shapes dropped from SHOW QUERIES to stay within stats.max_fingerprints")
      .Register(registry)
      .Add({})
      .Increment(static_cast<double>(st.evictions));
}

void render_counter_metrics(const Snapshot& snapshot, prometheus::Registry& registry) {
  const stats::CounterTotals& c = snapshot.counters;
  auto& bytes = prometheus::BuildCounter()
                    .Name("pgvalve_bytes_total")
                    .Help("PostgreSQL protocol bytes from and to clients (after TLS)")
                    .Register(registry);
  bytes.Add({{"direction", "received"}}).Increment(static_cast<double>(c.bytes_received));
  bytes.Add({{"direction", "sent"}}).Increment(static_cast<double>(c.bytes_sent));
  const prometheus::Histogram::BucketBoundaries bounds(std::begin(stats::kCheckoutWaitBounds),
                                                       std::end(stats::kCheckoutWaitBounds));
  std::vector<double> counts(c.checkout_waits.begin(), c.checkout_waits.end());
  prometheus::BuildHistogram()
      .Name("pgvalve_pool_checkout_wait_seconds")
      .Help(
          "How long a request waited for a server connection (checkout, pause, failover "
          "hold), counted when it got one or gave up")
      .Register(registry)
      .Add({}, bounds)
      .ObserveMultiple(counts, static_cast<double>(c.checkout_wait_micros) / 1e6);
}

void render_host_metrics(const Snapshot& snapshot, prometheus::Registry& registry) {
  using prometheus::BuildGauge;
  auto& up = BuildGauge()
                 .Name("pgvalve_host_up")
                 .Help("1 when the host's last health checks passed, else 0")
                 .Register(registry);
  auto& lag = BuildGauge()
                  .Name("pgvalve_replica_lag_seconds")
                  .Help("How far a replica's replay is behind the primary (only while known)")
                  .Register(registry);
  for (const HostRow& h : snapshot.hosts) {
    const std::string host = h.host.to_string();
    up.Add({{"database", h.database},
            {"shard", h.shard},
            {"host", host},
            {"role", std::string(health::role_name(h.role))}})
        .Set(h.checked && h.up ? 1 : 0);
    if (h.role == health::Role::Replica && h.lag_ms >= 0) {
      lag.Add({{"database", h.database}, {"shard", h.shard}, {"host", host}})
          .Set(static_cast<double>(h.lag_ms) / 1000.0);
    }
  }
  // A shard has a primary when one of its hosts takes writes now (what /ready checks).
  auto& primary_up = BuildGauge()
                         .Name("pgvalve_shard_primary_up")
                         .Help("1 when a host of the shard takes writes now, else 0")
                         .Register(registry);
  std::vector<std::pair<std::string, std::string>> shards;
  for (const HostRow& h : snapshot.hosts) {
    const auto key = std::make_pair(h.database, h.shard);
    if (std::find(shards.begin(), shards.end(), key) != shards.end()) continue;
    shards.push_back(key);
    const bool writable =
        std::any_of(snapshot.hosts.begin(), snapshot.hosts.end(), [&](const HostRow& o) {
          return o.database == h.database && o.shard == h.shard && o.writable;
        });
    primary_up.Add({{"database", h.database}, {"shard", h.shard}}).Set(writable ? 1 : 0);
  }
  prometheus::BuildCounter()
      .Name("pgvalve_failovers_total")
      .Help("Times a shard's writes moved to another host (followed, promoted, switched over)")
      .Register(registry)
      .Add({})
      .Increment(static_cast<double>(snapshot.failovers));
}

}  // namespace

std::string render_metrics(const Snapshot& snapshot) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  prometheus::Registry registry;

  BuildGauge()
      .Name("pgvalve_build_info")
      .Help("Always 1; the labels say which pgvalve is running")
      .Register(registry)
      .Add({{"version", PGVALVE_VERSION}})
      .Set(1);

  BuildGauge()
      .Name("pgvalve_client_connections_open")
      .Help(
          "Client connections open, including ones still logging in and admin console "
          "sessions (what max_client_connections limits)")
      .Register(registry)
      .Add({})
      .Set(snapshot.client_connections);

  auto& clients = BuildGauge()
                      .Name("pgvalve_client_connections")
                      .Help(
                          "Clients logged in to a pool: active (served or idle) or waiting "
                          "for a server connection")
                      .Register(registry);
  auto& clients_active = clients.Add({{"state", "active"}});
  auto& clients_waiting = clients.Add({{"state", "waiting"}});

  auto& servers = BuildGauge()
                      .Name("pgvalve_server_connections")
                      .Help(
                          "Server connections by state: idle (in the pool), active (lent to a "
                          "client), login (being opened)")
                      .Register(registry);
  auto& pool_size = BuildGauge()
                        .Name("pgvalve_pool_size")
                        .Help("Server connections that exist or are being opened, per pool")
                        .Register(registry);
  auto& checkouts = BuildCounter()
                        .Name("pgvalve_pool_checkouts_total")
                        .Help("Server connections handed to clients")
                        .Register(registry);
  auto& waits = BuildCounter()
                    .Name("pgvalve_pool_checkout_waits_total")
                    .Help("Checkouts that had to queue for a server connection")
                    .Register(registry);
  auto& timeouts = BuildCounter()
                       .Name("pgvalve_pool_checkout_timeouts_total")
                       .Help("Checkouts that gave up after checkout_timeout_ms")
                       .Register(registry);
  auto& opened = BuildCounter()
                     .Name("pgvalve_server_connections_opened_total")
                     .Help("Server connections opened successfully")
                     .Register(registry);
  auto& closed = BuildCounter()
                     .Name("pgvalve_server_connections_closed_total")
                     .Help("Server connections closed (expired, recycled, broken or surplus)")
                     .Register(registry);

  auto& pinned = BuildGauge()
                     .Name("pgvalve_pinned_clients")
                     .Help(
                         "Clients whose session state (advisory lock, temporary table, WITH HOLD "
                         "cursor, SQL PREPARE, LISTEN in a transaction) pins a server to them")
                     .Register(registry);
  auto& max_wait = BuildGauge()
                       .Name("pgvalve_pool_max_wait_seconds")
                       .Help(
                           "How long the oldest client still waiting for a server connection "
                           "has waited (0 when none waits)")
                       .Register(registry);
  auto& handoffs = BuildCounter()
                       .Name("pgvalve_pool_handoffs_total")
                       .Help("Server connections moved to another worker for waiting clients")
                       .Register(registry);

  auto& evictions = BuildCounter()
                        .Name("pgvalve_prepared_statement_evictions_total")
                        .Help(
                            "Prepared statements closed on a server to stay within "
                            "pool.max_prepared_statements")
                        .Register(registry);

  for (const auto& p : snapshot.pools) {
    const auto& s = p.stats;
    clients_active.Increment(std::max(0, p.clients - s.waiting));
    clients_waiting.Increment(s.waiting);

    const std::string host = p.key.host.to_string();
    HostPlace place;
    if (snapshot.config) place = place_of(*snapshot.config, p.key.database, p.key.host);
    if (place.role.empty()) place.role = "unknown";
    // No user label (DESIGN.md §6): pools of different users on one host add up.
    auto server_labels = [&](const char* state) -> prometheus::Labels {
      return {{"database", p.key.database},
              {"shard", place.shard},
              {"host", host},
              {"role", place.role},
              {"state", state}};
    };
    servers.Add(server_labels("idle")).Increment(s.checked_in);
    servers.Add(server_labels("active")).Increment(s.checked_out);
    servers.Add(server_labels("login")).Increment(s.opening);

    const prometheus::Labels pool_labels{
        {"database", p.key.database}, {"user", p.key.user}, {"host", host}};
    pool_size.Add(pool_labels).Set(s.size);
    // Counters start at 0 in this per-scrape registry: incrementing sets the pool's total.
    checkouts.Add(pool_labels).Increment(static_cast<double>(s.total_checkouts));
    waits.Add(pool_labels).Increment(static_cast<double>(s.total_waits));
    timeouts.Add(pool_labels).Increment(static_cast<double>(s.total_timeouts));
    opened.Add(pool_labels).Increment(static_cast<double>(s.total_created));
    closed.Add(pool_labels).Increment(static_cast<double>(s.total_closed));
    evictions.Add(pool_labels).Increment(static_cast<double>(s.total_statement_evictions));
    pinned.Add(pool_labels).Set(s.pinned);
    max_wait.Add(pool_labels).Set(static_cast<double>(s.max_wait_us) / 1e6);
    handoffs.Add(pool_labels).Increment(static_cast<double>(s.total_handoffs));
  }

  render_statement_metrics(snapshot, registry);
  render_counter_metrics(snapshot, registry);
  render_host_metrics(snapshot, registry);
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace pgvalve::proxy
