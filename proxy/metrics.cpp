#include "proxy/metrics.h"

#include <algorithm>
#include <tuple>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
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
    handoffs.Add(pool_labels).Increment(static_cast<double>(s.total_handoffs));
  }

  return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace pgvalve::proxy
