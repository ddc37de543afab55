#include "proxy/app.h"

#include <pthread.h>
#include <sys/resource.h>
#include <time.h>

#include <csignal>
#include <set>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "proxy/client_session.h"
#include "proxy/connection_steering.h"
#include "proxy/http_server.h"
#include "proxy/listen_hub.h"
#include "proxy/log.h"
#include "proxy/shared_port.h"
#include "proxy/socket_options.h"
#include "proxy/worker_balance.h"
#include "session/sharding_policy.h"

namespace pgvalve::proxy {

void Worker::add_session(ClientSession* s) {
  ++clients;
  s->next_on_worker = sessions;
  s->prev_on_worker = nullptr;
  if (sessions) sessions->prev_on_worker = s;
  sessions = s;
}

void Worker::remove_session(ClientSession* s) {
  if (s->prev_on_worker) {
    s->prev_on_worker->next_on_worker = s->next_on_worker;
  } else if (sessions == s) {
    sessions = s->next_on_worker;
  } else {
    return;  // on no worker's list: destroyed on its way from one worker to another (shutdown)
  }
  if (s->next_on_worker) s->next_on_worker->prev_on_worker = s->prev_on_worker;
  s->next_on_worker = s->prev_on_worker = nullptr;
  --clients;
}

void Worker::publish_load(std::chrono::steady_clock::time_point now) {
  timespec cpu{};
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) != 0) return;
  const std::int64_t cpu_ns = std::int64_t(cpu.tv_sec) * 1'000'000'000 + cpu.tv_nsec;
  if (cpu_ns_at_sweep >= 0 && now > sweep_at) {
    const double wall_ns = std::chrono::duration<double, std::nano>(now - sweep_at).count();
    published_busy.store(double(cpu_ns - cpu_ns_at_sweep) / wall_ns, std::memory_order_relaxed);
  }
  cpu_ns_at_sweep = cpu_ns;
  sweep_at = now;
  published_clients.store(clients, std::memory_order_relaxed);
  ++sweeps;
  if (shed_left > 0 && sweeps - shed_since_sweep >= 2) shed_left = 0;
}

namespace {

stats::Limits stats_limits(const config::Config& c) {
  stats::Limits l;
  l.max_fingerprints = static_cast<std::size_t>(c.stats.max_fingerprints);
  l.slow_query = std::chrono::milliseconds(c.stats.slow_query_ms);
  l.slow_samples = static_cast<std::size_t>(c.stats.slow_query_samples);
  l.explain_slow = c.stats.explain_slow;
  l.redact_literals = c.stats.redact_literals;
  return l;
}

}  // namespace

App::App(config::ConfigPtr config) {
  set_log_level(config->log_level);
  message_memory_.set_limit(config->limits.message_memory_bytes);
  users_.store(std::make_shared<const UserDirectory>(config, nullptr));
  config_.store(config);
  int workers = config->workers;
  if (workers <= 0) workers = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 0; i < workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->index = i;
    w->workspaces.share_statement_changes(&statement_changes_);
    w->query_stats.set_limits(stats_limits(*config));
    workers_.push_back(std::move(w));
  }
  active_workers_.store(workers, std::memory_order_relaxed);
}

App::~App() {
  stop_all();
}

std::shared_ptr<pool::ServerPool> App::pool_for(const config::Database& db, const std::string& user,
                                                const config::Endpoint& host) {
  // dbname too: after a reload changes it, new logins must not get connections to the old one.
  std::string key = db.name + '\0' + db.dbname + '\0' + user + '\0' + host.to_string();
  std::lock_guard lock(pools_mutex_);
  auto& pool = pools_[key];
  if (!pool) {
    pool = std::make_shared<pool::ServerPool>(pool::PoolKey{db.name, user, host, db.dbname},
                                              config()->pool, worker_count(), *this);
  }
  return pool;
}

std::shared_ptr<const App::Sharding> App::sharding(const config::ConfigPtr& config,
                                                   const config::Database& db) {
  if (!db.sharding || db.shards.size() < 2) return nullptr;
  std::shared_ptr<routing::TextOrderSlot> slot = text_order(db.name);
  std::lock_guard lock(sharding_mutex_);
  std::shared_ptr<const Sharding>& known = sharding_[db.name];
  if (known && known->config == config) return known;
  auto built = std::make_shared<Sharding>();
  built->config = config;
  built->policy = session::sharding_policy_of(db);
  built->policy.text_order = std::move(slot);
  built->id = ++sharding_ids_;
  known = built;
  return built;
}

std::shared_ptr<routing::TextOrderSlot> App::text_order(std::string_view database) {
  std::lock_guard lock(pools_mutex_);
  if (!topology_) return nullptr;
  auto it = topology_->text_orders.find(database);
  return it == topology_->text_orders.end() ? nullptr : it->second;
}

std::shared_ptr<const session::SessionOptions> App::session_options(
    const config::ConfigPtr& config) {
  std::lock_guard lock(sharding_mutex_);
  if (!session_options_ || session_options_->config != config) {
    session::SessionOptions options = session::SessionOptions::from(*config);
    options.instance = instance_;
    session_options_ = std::make_shared<const SharedSessionOptions>(
        SharedSessionOptions{config, std::move(options)});
  }
  return {session_options_, &session_options_->options};
}

std::shared_ptr<const ClientProfile> App::shared_profile(const ClientProfile& login,
                                                         const config::Database& db) {
  std::shared_ptr<const Sharding> sharding = this->sharding(login.config, db);
  std::shared_ptr<const session::SessionOptions> options = session_options(login.config);
  std::lock_guard lock(sharding_mutex_);
  // A live entry holds its configuration and users, so their addresses name them alone.
  std::weak_ptr<const ClientProfile>& slot = profiles_[ProfileKey{
      login.config.get(), login.users.get(), login.user_name, login.database_name}];
  if (auto known = slot.lock(); known && known->user == login.user && known->database == &db &&
                                known->sharding == sharding && known->options == options) {
    return known;
  }
  auto made = std::make_shared<ClientProfile>(login);
  made->database = &db;
  made->sharding = std::move(sharding);
  made->options = std::move(options);
  // Equal lists share cached decisions across reloads; a changed list gets an id of its own.
  const auto& list = login.config->routing.write_functions;
  made->write_functions_id =
      write_functions_ids_
          .try_emplace(list, static_cast<std::uint32_t>(write_functions_ids_.size() + 1))
          .first->second;
  slot = made;
  if (profiles_.size() >= profiles_next_sweep_) {
    // Profiles no client holds any more are forgotten once the table has doubled.
    std::erase_if(profiles_, [](const auto& entry) { return entry.second.expired(); });
    profiles_next_sweep_ = std::max<std::size_t>(64, 2 * profiles_.size());
  }
  return made;
}

std::shared_ptr<const UserPools> App::user_pools(const config::Database& db,
                                                 const std::string& user) {
  // Shared by every session of (database, user) until the topology changes: a client holds a
  // reference, not a copy.
  const std::string key = db.name + '\0' + db.dbname + '\0' + user;
  std::shared_ptr<const Topology> topology;
  {
    std::lock_guard lock(pools_mutex_);
    topology = topology_;
    if (auto it = user_pools_.find(key);
        it != user_pools_.end() && topology && it->second->generation == topology->generation) {
      return it->second;
    }
  }
  auto out = std::make_shared<UserPools>();
  const std::vector<ShardTopology>* shards = topology ? topology->find(db.name) : nullptr;
  if (!shards) {
    // Not (or no longer) in the topology: the configuration's primaries, always writable.
    for (const auto& shard : db.shards) {
      UserPools::Shard s;
      s.status = std::make_shared<const health::ShardStatus>(1);
      s.hosts.push_back(pool_for(db, user, shard.primary));
      out->shards.push_back(std::move(s));
    }
    return out;
  }
  out->generation = topology->generation;
  for (const ShardTopology& shard : *shards) {
    UserPools::Shard s;
    s.status = shard.status;
    for (const auto& host : shard.hosts)
      s.hosts.push_back(pool_for(db, user, host));
    out->shards.push_back(std::move(s));
  }
  std::lock_guard lock(pools_mutex_);
  user_pools_[key] = out;
  return out;
}

void App::set_topology(std::shared_ptr<const Topology> topology) {
  const std::uint64_t generation = topology->generation;
  {
    std::lock_guard lock(pools_mutex_);
    topology_ = std::move(topology);
  }
  topology_generation_.store(generation, std::memory_order_release);
}

WorkerSilent::WorkerSilent(int worker)
    : std::runtime_error("pgvalve: worker " + std::to_string(worker) + " did not answer within " +
                         std::to_string(App::kWorkerAnswerMs) +
                         " ms (its thread is stalled or busy); retry"),
      worker_(worker) {}

asio::awaitable<stats::Snapshot> App::query_stats(stats::Detail detail) {
  const auto max_fingerprints = static_cast<std::size_t>(config()->stats.max_fingerprints);
  // Each worker writes only its own slot, so the workers never wait for each other. One that
  // answers after on_every_worker gave up on it writes a slot kept alive by `parts` and never
  // read: the question then has no answer (WorkerSilent), never the sum of the others.
  struct Part {
    stats::Snapshot snapshot;
    std::vector<stats::FingerprintTime> times;
  };
  auto parts = std::make_shared<std::vector<Part>>(workers_.size());
  const auto finished = [&parts] {
    std::vector<stats::Snapshot> out;
    for (auto& p : *parts)
      out.push_back(std::move(p.snapshot));
    return out;
  };
  const auto answered = [](int silent) {
    if (silent >= 0) throw WorkerSilent(silent);
  };
  if (detail != stats::Detail::Top) {
    const auto collect = [parts, detail](Worker& w) {
      Part& p = (*parts)[static_cast<std::size_t>(w.index)];
      if (detail == stats::Detail::All) {
        w.query_stats.collect_all(p.snapshot);
      } else {
        w.query_stats.collect_totals(p.snapshot);
      }
    };
    answered(co_await on_every_worker(collect));
    co_return stats::QueryStats::merge(finished(), max_fingerprints);
  }
  // Top: first each worker's total time per statement (no text or histogram), then, for the
  // statements with the most in sum, their figures from every worker.
  const auto times = [parts](Worker& w) {
    Part& p = (*parts)[static_cast<std::size_t>(w.index)];
    w.query_stats.collect_times(p.times);
  };
  answered(co_await on_every_worker(times));
  std::vector<std::vector<stats::FingerprintTime>> all_times;
  for (auto& p : *parts)
    all_times.push_back(std::move(p.times));
  auto top = std::make_shared<const std::vector<std::uint64_t>>(
      stats::QueryStats::top_by_time(all_times, std::min(stats::kTopShown, max_fingerprints)));
  // Fresh slots: one that was late for the first round may still be written to.
  parts = std::make_shared<std::vector<Part>>(workers_.size());
  const auto figures = [parts, top](Worker& w) {
    Part& p = (*parts)[static_cast<std::size_t>(w.index)];
    w.query_stats.collect_totals(p.snapshot);
    w.query_stats.collect_figures(*top, p.snapshot);
    w.query_stats.collect_latest_slow(stats::kTopShown, p.snapshot);
  };
  answered(co_await on_every_worker(figures));
  stats::Snapshot out = stats::QueryStats::merge(finished(), max_fingerprints);
  if (out.slow.size() > stats::kTopShown) out.slow.resize(stats::kTopShown);
  co_return out;
}

stats::CounterTotals App::counter_totals() const {
  stats::CounterTotals t;
  for (const auto& w : workers_)
    w->counters.add_to(t);
  return t;
}

std::vector<App::PoolClients> App::clients_by_pool(
    const std::vector<std::shared_ptr<pool::ServerPool>>& pools,
    const std::vector<HostRow>& hosts) {
  const auto row_of = [&](const pool::PoolKey& key) -> const HostRow* {
    for (const auto& h : hosts) {
      if (h.database == key.database && h.host == key.host) return &h;
    }
    return nullptr;
  };
  // Each count read once: a client logging in meanwhile must not make a row negative.
  std::vector<PoolClients> clients(pools.size());
  for (std::size_t i = 0; i < pools.size(); ++i) {
    clients[i].clients = pools[i]->clients();
    clients[i].active = std::max(0, clients[i].clients - pools[i]->clients_waiting());
  }
  for (std::size_t i = 0; i < pools.size(); ++i) {
    const pool::PoolKey& key = pools[i]->key();
    const HostRow* h = row_of(key);
    if (!h || h->role != health::Role::Retired || clients[i].clients == 0) continue;
    for (std::size_t j = 0; j < pools.size(); ++j) {
      const pool::PoolKey& other = pools[j]->key();
      const HostRow* o = row_of(other);
      if (o && o->role == health::Role::Primary && o->shard == h->shard &&
          other.database == key.database && other.user == key.user) {
        clients[j].clients += clients[i].clients;  // a retired host's pool only gives
        clients[j].active += clients[i].active;
        clients[i] = {};
        break;
      }
    }
  }
  return clients;
}

asio::awaitable<std::vector<App::DatabaseStats>> App::database_stats() {
  std::vector<DatabaseStats> out;
  auto row = [&](const std::string& database) -> DatabaseStats& {
    for (auto& r : out) {
      if (r.database == database) return r;
    }
    out.push_back({database});
    return out.back();
  };
  // Every configured database has a row, with zeros before its first client (as PgBouncer).
  for (const auto& db : config()->databases)
    row(db.name);
  const stats::Snapshot snap = co_await query_stats(stats::Detail::Totals);
  for (const auto& d : snap.databases) {
    auto& r = row(d.database);
    r.transactions += d.transactions;
    r.transaction_micros += d.transaction_micros;
    r.query_micros += static_cast<std::uint64_t>(d.duration_sum_seconds * 1e6);
  }
  for (const auto& q : snap.queries_by_label)
    row(q.database).queries += q.queries;
  for (const auto& w : workers_) {
    w->database_counters.for_each([&](const stats::DatabaseCounters& d) {
      auto& r = row(d.database);
      r.bytes_received += d.bytes_received.load(std::memory_order_relaxed);
      r.bytes_sent += d.bytes_sent.load(std::memory_order_relaxed);
      r.wait_micros += d.checkout_wait_micros.load(std::memory_order_relaxed);
    });
  }
  std::sort(out.begin(), out.end(),
            [](const DatabaseStats& a, const DatabaseStats& b) { return a.database < b.database; });
  co_return out;
}

asio::awaitable<void> App::reset_query_stats() {
  const auto reset = [](Worker& w) { w.query_stats.reset(); };
  // A late worker still resets when it answers; RESET QUERIES says it was not done yet.
  if (const int silent = co_await on_every_worker(reset); silent >= 0) throw WorkerSilent(silent);
}

std::vector<HostRow> App::hosts() const {
  return health_ ? health_->hosts() : std::vector<HostRow>{};
}

// Pools of hosts (or databases, or users) a reload removed: clients in a transaction finish on
// them, then their connections close; each worker closes its own idle ones now.
void App::retire_pools_not_in(const config::Config& next) {
  std::set<std::string> live;
  for (const auto& db : next.databases) {
    for (const auto& user : next.users) {
      for (const auto& shard : db.shards) {
        live.insert(db.name + '\0' + db.dbname + '\0' + user.name + '\0' +
                    shard.primary.to_string());
        for (const auto& r : shard.replicas)
          live.insert(db.name + '\0' + db.dbname + '\0' + user.name + '\0' + r.to_string());
      }
    }
  }
  std::vector<std::shared_ptr<pool::ServerPool>> retired;
  {
    std::lock_guard lock(pools_mutex_);
    for (auto it = pools_.begin(); it != pools_.end();) {
      if (live.contains(it->first)) {
        ++it;
        continue;
      }
      it->second->retire();
      retired.push_back(std::move(it->second));
      it = pools_.erase(it);
    }
  }
  if (retired.empty()) return;
  for (const auto& p : retired) {
    PGV_LOG(Info, "pool_retired", {"database", p->key().database}, {"user", p->key().user},
            {"host", p->key().host.to_string()});
  }
  for (auto& w : workers_) {
    asio::post(w->context, [w = w.get(), retired] {
      for (const auto& p : retired) {
        p->collect_expired(w->index, pool::Clock::now());  // destroyed here: closed on this thread
        p->release_waiters(w->index);  // requests not started yet go to the hosts listed now
      }
    });
  }
}

void App::report_unreachable(const config::Endpoint& host) {
  asio::post(control_, [this, host] {
    if (health_) health_->suspect(host);
  });
}

void App::switchover(std::string database, std::string shard, std::optional<config::Endpoint> to,
                     HealthChecker::DrillDone done) {
  asio::post(control_, [this, database = std::move(database), shard = std::move(shard),
                        to = std::move(to), done = std::move(done)]() mutable {
    if (health_) health_->switchover(database, shard, std::move(to), std::move(done));
  });
}

void App::failover(std::string database, std::string shard, HealthChecker::DrillDone done) {
  asio::post(control_, [this, database = std::move(database), shard = std::move(shard),
                        done = std::move(done)]() mutable {
    if (health_) health_->failover(database, shard, std::move(done));
  });
}

int App::lent_on(const config::Endpoint& host) {
  int lent = 0;
  for (const auto& pool : pools()) {
    if (pool->key().host == host) {
      const auto s = pool->stats();
      lent += s.checked_out + s.opening;
    }
  }
  return lent;
}

int App::lent_in(const std::string& database) {
  int lent = 0;
  for (const auto& pool : pools()) {
    if (database.empty() || pool->key().database == database) {
      const auto s = pool->stats();
      lent += s.checked_out + s.opening;
    }
  }
  return lent;
}

void App::pause(const std::string& database) {
  std::lock_guard lock(pause_mutex_);
  if (std::find(paused_.begin(), paused_.end(), database) == paused_.end()) {
    paused_.push_back(database);
  }
  paused_count_.store(static_cast<int>(paused_.size()), std::memory_order_relaxed);
}

bool App::resume(const std::string& database) {
  std::lock_guard lock(pause_mutex_);
  if (database.empty()) {
    paused_.clear();
  } else if (std::find(paused_.begin(), paused_.end(), "") != paused_.end()) {
    return false;  // a PAUSE of all holds it whatever its own state
  } else {
    std::erase(paused_, database);
  }
  paused_count_.store(static_cast<int>(paused_.size()), std::memory_order_relaxed);
  return true;
}

bool App::paused_slow(const std::string& database) const {
  std::lock_guard lock(pause_mutex_);
  return std::any_of(paused_.begin(), paused_.end(),
                     [&](const std::string& p) { return p.empty() || p == database; });
}

std::vector<std::string> App::paused_databases() const {
  std::lock_guard lock(pause_mutex_);
  return paused_;
}

std::uint64_t App::reconnect(const std::string& database) {
  const std::uint64_t first_fresh = next_server_id_.load();
  {
    std::lock_guard lock(pause_mutex_);
    std::uint64_t& below = reconnect_below_[database];
    below = std::max(below, first_fresh);
  }
  std::vector<std::shared_ptr<pool::ServerPool>> affected;
  for (auto& pool : pools()) {
    if (database.empty() || pool->key().database == database) {
      pool->reconnect(first_fresh);
      affected.push_back(std::move(pool));
    }
  }
  // Idle connections belong to their worker: each closes its own.
  for (auto& w : workers_) {
    asio::post(w->context, [w = w.get(), affected] {
      for (const auto& p : affected)
        p->collect_expired(w->index, pool::Clock::now());  // destroyed here: closed
    });
  }
  return first_fresh;
}

void App::close_connections_to(const std::string& database, const config::Endpoint& host) {
  const std::uint64_t first_fresh = next_server_id_.load();
  std::vector<std::shared_ptr<pool::ServerPool>> affected;
  for (auto& pool : pools()) {
    if (pool->key().database == database && pool->key().host == host) {
      pool->reconnect(first_fresh);
      affected.push_back(std::move(pool));
    }
  }
  if (affected.empty()) return;
  for (auto& w : workers_) {
    asio::post(w->context, [w = w.get(), affected, database, host] {
      for (const auto& p : affected)
        p->collect_expired(w->index, pool::Clock::now());  // destroyed here: closed
      // Lent ones too: a session-mode or pinned client, or a transaction, would otherwise go on
      // writing to a former primary that still runs, where nothing it commits survives.
      std::vector<std::shared_ptr<ClientSession>> holders;
      w->for_each_session([&](ClientSession& s) {
        if (s.serves_clients() && s.database() == database) holders.push_back(s.shared_from_this());
      });
      for (const auto& s : holders)
        s->on_host_retired(host);
    });
  }
}

std::uint64_t App::reconnect_below(const std::string& database) const {
  std::lock_guard lock(pause_mutex_);
  std::uint64_t below = 0;
  for (const auto& [name, id] : reconnect_below_) {
    if (name.empty() || name == database) below = std::max(below, id);
  }
  return below;
}

void App::remap_shard_statistics(const config::Config& current, const config::Config& next) {
  for (const config::Database& db : next.databases) {
    const config::Database* before = current.find_database(db.name);
    if (!before) continue;
    std::vector<std::uint16_t> to(before->shards.size(), stats::QueryStats::kNoShard);
    bool moved = false;
    for (std::size_t i = 0; i < before->shards.size(); ++i) {
      for (std::size_t j = 0; j < db.shards.size(); ++j) {
        if (db.shards[j].name == before->shards[i].name) to[i] = static_cast<std::uint16_t>(j);
      }
      moved = moved || to[i] != i;
    }
    if (!moved) continue;
    for (auto& w : workers_) {
      asio::post(w->context,
                 [w = w.get(), name = db.name, to] { w->query_stats.remap_shards(name, to); });
    }
  }
}

void App::leave_after_reload(const config::Config& current, const config::ConfigPtr& next) {
  bool any = false;
  const char* action =
      "clients logged in before leave at their next transaction boundary (57P01); requests not "
      "yet on a server are not run";
  for (const config::Database& before : current.databases) {
    const config::ReloadChange change =
        config::database_change(before, next->find_database(before.name));
    if (change == config::ReloadChange::None) continue;
    any = true;
    const char* event = change == config::ReloadChange::ShardMap ? "shard_map_changed"
                        : change == config::ReloadChange::Dbname ? "dbname_changed"
                                                                 : "database_removed";
    PGV_LOG(Warn, event, {"database", before.name}, {"action", action});
  }
  for (const config::User& before : current.users) {
    if (next->find_user(before.name)) continue;
    any = true;
    PGV_LOG(Warn, "user_removed", {"user", before.name}, {"action", action});
  }
  if (!any) return;
  // Each client compares the file with its own login (a reload may also undo an earlier one).
  for (auto& w : workers_) {
    asio::post(w->context, [w = w.get(), next] {
      std::vector<std::shared_ptr<ClientSession>> sessions;
      w->for_each_session([&](ClientSession& s) {
        if (s.serves_clients()) sessions.push_back(s.shared_from_this());
      });
      for (const auto& s : sessions)
        s->on_reload_change(next);
    });
  }
}

asio::awaitable<int> App::kill(const std::string& database) {
  pause(database);
  reconnect(database);
  auto killed = std::make_shared<std::atomic<int>>(0);
  const auto close_clients = [database, killed](Worker& w) {
    std::vector<std::shared_ptr<ClientSession>> victims;
    w.for_each_session([&](ClientSession& s) {
      if (s.serves_clients() && (database.empty() || s.database() == database)) {
        victims.push_back(s.shared_from_this());
      }
    });
    for (const auto& s : victims)
      s->on_kill("pgvalve: disconnected by an administrator (KILL" +
                 (database.empty() ? std::string() : " " + database) +
                 "); you may reconnect, but requests wait until the database is resumed");
    killed->fetch_add(static_cast<int>(victims.size()));
  };
  // A late worker still disconnects its clients when it answers; KILL says the count is short.
  if (const int silent = co_await on_every_worker(close_clients); silent >= 0) {
    throw WorkerSilent(silent);
  }
  co_return killed->load();
}

asio::awaitable<bool> App::kill_client(std::uint64_t id) {
  auto found = std::make_shared<std::atomic<bool>>(false);
  const auto close_client = [id, found](Worker& w) {
    std::shared_ptr<ClientSession> victim;
    w.for_each_session([&](ClientSession& s) {
      if (s.id() == id && s.serves_clients()) victim = s.shared_from_this();
    });
    if (!victim) return;
    victim->on_kill("pgvalve: disconnected by an administrator (KILL_CLIENT " + std::to_string(id) +
                    "); reconnect to continue");
    found->store(true);
  };
  const int silent = co_await on_every_worker(close_client);
  // Not found among those that answered: it may be the silent worker's.
  if (!found->load() && silent >= 0) throw WorkerSilent(silent);
  co_return found->load();
}

void App::disable(const std::string& database) {
  std::lock_guard lock(pause_mutex_);
  if (std::find(disabled_.begin(), disabled_.end(), database) == disabled_.end()) {
    disabled_.push_back(database);
  }
  disabled_count_.store(static_cast<int>(disabled_.size()), std::memory_order_relaxed);
}

void App::enable(const std::string& database) {
  std::lock_guard lock(pause_mutex_);
  std::erase(disabled_, database);
  disabled_count_.store(static_cast<int>(disabled_.size()), std::memory_order_relaxed);
}

bool App::disabled_slow(const std::string& database) const {
  std::lock_guard lock(pause_mutex_);
  return std::find(disabled_.begin(), disabled_.end(), database) != disabled_.end();
}

std::vector<std::string> App::disabled_databases() const {
  std::lock_guard lock(pause_mutex_);
  return disabled_;
}

std::vector<std::shared_ptr<pool::ServerPool>> App::pools() {
  std::lock_guard lock(pools_mutex_);
  std::vector<std::shared_ptr<pool::ServerPool>> out;
  for (auto& [_, p] : pools_)
    out.push_back(p);
  return out;
}

std::vector<std::shared_ptr<ListenHub>> App::listen_hubs_for(const config::Database& db,
                                                             const config::User& user) {
  std::lock_guard lock(pools_mutex_);
  std::vector<std::shared_ptr<ListenHub>> hubs;
  hubs.reserve(db.shards.size());
  for (const config::Shard& shard : db.shards) {
    // Keyed like the pools: a reload that moves the database gives new listeners a new hub. The
    // password is not part of it: each connection logs in with the one configured then.
    auto& hub = listen_hubs_[db.name + '\0' + shard.name + '\0' + db.dbname + '\0' + user.name +
                             '\0' + shard.primary.to_string()];
    if (!hub) {
      ServerLogin login;
      login.host = shard.primary;
      login.user = user.name;
      login.password = user.server_password;
      login.dbname = db.dbname;
      // A reconnect follows a reload, as the pools' new connections do.
      auto rules = [this](ServerLogin& l) {
        const config::ConfigPtr now = config();
        l.max_message_bytes = static_cast<std::size_t>(now->limits.max_message_bytes);
        l.allow_insecure_auth = now->server_allow_insecure_auth;
        l.tls = server_tls();
        // A password rotated by a reload, as the pools' new connections log in with.
        if (const config::User* u = now->find_user(l.user)) l.password = u->server_password;
      };
      rules(login);
      // Reconnects go to the primary the health checks see (after a failover, not the one in
      // the file).
      auto primary = [this, database = db.name,
                      name = shard.name]() -> std::optional<config::Endpoint> {
        std::shared_ptr<const Topology> topology;
        {
          std::lock_guard lock(pools_mutex_);
          topology = topology_;
        }
        const auto* shards = topology ? topology->find(database) : nullptr;
        if (!shards) return std::nullopt;
        for (const ShardTopology& s : *shards) {
          if (s.name != name) continue;
          const int p = s.status->primary();
          if (p < 0 || static_cast<std::size_t>(p) >= s.hosts.size()) return std::nullopt;
          return s.hosts[static_cast<std::size_t>(p)];
        }
        return std::nullopt;
      };
      hub = std::make_shared<ListenHub>(control_, db.name, shard.name, std::move(login),
                                        std::move(primary), std::move(rules));
    }
    hubs.push_back(hub);
  }
  return hubs;
}

void App::move_listeners(const std::string& database, const std::string& shard,
                         const std::optional<config::Endpoint>& primary,
                         std::function<void()> moved) {
  std::vector<std::shared_ptr<ListenHub>> hubs;
  {
    std::lock_guard lock(pools_mutex_);
    for (const auto& [_, hub] : listen_hubs_) {
      if (database.empty() || (hub->database() == database && hub->shard() == shard))
        hubs.push_back(hub);
    }
  }
  if (hubs.empty()) {
    if (moved) moved();
    return;
  }
  // Every hub answers on the control thread.
  auto left = std::make_shared<std::size_t>(hubs.size());
  for (auto& hub : hubs) {
    hub->move_to(primary, [left, moved] {
      if (--*left == 0 && moved) moved();
    });
  }
}

namespace {

admission::Limits door_limits(const config::Config& cfg) {
  return {.max_clients = cfg.pool.max_client_connections,
          .per_address = cfg.limits.connections_per_ip,
          .rate_per_s = cfg.limits.connect_rate_per_ip,
          .burst = cfg.limits.connect_burst_per_ip};
}

}  // namespace

admission::Verdict App::admit(const admission::Address& from) {
  const admission::Limits limits = door_limits(*config());
  std::lock_guard lock(door_mutex_);
  return door_.admit(from, limits, admission::Clock::now());
}

bool App::cancel_admitted(const admission::Address& from, admission::Verdict verdict) {
  if (verdict == admission::Verdict::Admit) return true;  // no lock: the usual cancel
  const admission::Limits limits = door_limits(*config());
  std::lock_guard lock(door_mutex_);
  return door_.cancel_admitted(from, verdict, limits, admission::Clock::now());
}

void App::leave(const admission::Address& from) {
  std::lock_guard lock(door_mutex_);
  door_.leave(from);
}

admission::Admission::LoginTurn App::login_begins(const admission::Address& from,
                                                  std::string_view user) {
  std::lock_guard lock(door_mutex_);
  return door_.login_begins(from, user, admission::Clock::now());
}

std::chrono::milliseconds App::login_failed(const admission::Address& from, std::string_view user) {
  std::lock_guard lock(door_mutex_);
  return door_.login_failed(from, user, admission::Clock::now());
}

void App::login_succeeded(const admission::Address& from, std::string_view user) {
  std::lock_guard lock(door_mutex_);
  door_.login_succeeded(from, user);
}

void App::login_ended(const admission::Address& from, std::string_view user,
                      const admission::Admission::LoginTurn& turn) {
  if (!turn.counted) return;  // the usual login: no lock
  std::lock_guard lock(door_mutex_);
  door_.login_ended(from, user, turn);
}

int App::open_sockets() const {
  std::lock_guard lock(door_mutex_);
  return door_.open();
}

void App::add_client() {
  clients_.fetch_add(1, std::memory_order_relaxed);
}

void App::remove_client() {
  clients_.fetch_sub(1, std::memory_order_relaxed);
}

asio::awaitable<bool> App::reload_on_control() {
  auto outcome = std::make_shared<std::atomic<int>>(-1);  // -1 running, 0 refused, 1 done
  asio::post(control_, [this, outcome] { outcome->store(reload() ? 1 : 0); });
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (outcome->load() < 0) {
    timer.expires_after(std::chrono::milliseconds(5));
    co_await timer.async_wait(asio::use_awaitable);
  }
  co_return outcome->load() == 1;
}

bool App::reload() {
  auto current = config();
  auto result = config::load_config_file(current->source_path);
  if (!result.errors.empty()) {
    for (const auto& e : result.errors) {
      PGV_LOG(Error, "reload_refused", {"error", e.to_string(current->source_path)});
    }
    PGV_LOG(Error, "reload_failed", {"file", current->source_path},
            {"errors", static_cast<int>(result.errors.size())},
            {"action", "kept the running configuration"});
    return false;
  }
  auto next = std::make_shared<config::Config>(*result.config);
  std::shared_ptr<const TlsServerContext> tls;
  if (next->tls && next->tls->mode != config::TlsMode::Disable) {
    std::string error;
    tls = TlsServerContext::make(*next->tls, error);
    if (!tls) {
      PGV_LOG(Error, "reload_failed", {"file", current->source_path}, {"error", error},
              {"action", "kept the running configuration and certificate"});
      return false;
    }
    PGV_LOG(Info, "tls_loaded", {"certificate", tls->description()},
            {"mode", config::to_string(tls->mode())});
  }
  std::shared_ptr<const TlsClientContext> server_tls;
  if (next->server_tls != config::ServerTlsMode::Disable) {
    std::string error;
    server_tls = TlsClientContext::make(next->server_tls, next->server_tls_ca, error);
    if (!server_tls) {
      PGV_LOG(Error, "reload_failed", {"file", current->source_path}, {"error", error},
              {"action", "kept the running configuration"});
      return false;
    }
  }
  for (const auto& change : config::diff(*current, *next)) {
    if (change.needs_restart) {
      PGV_LOG(Warn, "reload_needs_restart", {"key", change.key}, {"in_effect", change.old_value},
              {"in_file", change.new_value},
              {"action", "kept the value in effect until pgvalve restarts"});
    } else {
      PGV_LOG(Info, "reload_changed", {"key", change.key}, {"from", change.old_value},
              {"to", change.new_value});
    }
  }
  // The sockets and threads made at start stay as they are: SHOW CONFIG and /status say so.
  next->listen = current->listen;
  next->admin_listen = current->admin_listen;
  next->workers = current->workers;
  users_.store(std::make_shared<const UserDirectory>(next, users_.load().get()));
  tls_.store(tls);
  server_tls_.store(server_tls);
  config_.store(next);
  if (next->server_tls != current->server_tls || next->server_tls_ca != current->server_tls_ca) {
    // The server connections open now were made under the old rules (in plaintext, or trusting
    // a certificate that is no longer trusted): as RECONNECT, each closes when it comes back.
    reconnect("");
    PGV_LOG(Info, "server_tls_changed", {"server_tls", config::to_string(next->server_tls)},
            {"action", "server connections open now close as they come back to the pool"});
  }
  set_log_level(next->log_level);
  leave_after_reload(*current, next);
  remap_shard_statistics(*current, *next);
  message_memory_.set_limit(next->limits.message_memory_bytes);
  for (auto& pool : pools())
    pool->update_settings(next->pool);
  for (auto& w : workers_) {
    asio::post(w->context,
               [w = w.get(), limits = stats_limits(*next)] { w->query_stats.set_limits(limits); });
  }
  // The hosts to check and route to; the checker lives on the control thread.
  asio::post(control_, [this, next] {
    if (health_) set_topology(health_->configure(next));
    retire_pools_not_in(*next);
    move_listeners({}, {}, std::nullopt, {});  // to a primary the file moved
  });
  PGV_LOG(Info, "reload_ok", {"file", next->source_path});
  return true;
}

void App::start_listeners() {
  const auto cfg = config();
  tcp::endpoint endpoint;
  error_code ec;
  auto address = asio::ip::make_address(cfg->listen.host, ec);
  if (ec) {
    tcp::resolver resolver(control_);
    auto results = resolver.resolve(cfg->listen.host, std::to_string(cfg->listen.port));
    endpoint = results.begin()->endpoint();
  } else {
    endpoint = tcp::endpoint(address, cfg->listen.port);
  }
  const bool shared = someone_listens_on(endpoint);
  // One acceptor per worker on the same port (SO_REUSEPORT): the kernel spreads clients over
  // workers and no connection is handed between threads. Another pgvalve may share the port too,
  // for a restart without refused connections (docs/operations.md).
  for (auto& w : workers_) {
    w->acceptor = std::make_unique<tcp::acceptor>(w->context);
    w->acceptor->open(endpoint.protocol());
    w->acceptor->set_option(tcp::acceptor::reuse_address(true));
    int one = 1;
    ::setsockopt(w->acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    set_client_options(w->acceptor->native_handle());
    w->acceptor->bind(endpoint);
    w->acceptor->listen(asio::socket_base::max_listen_connections);
  }
  PGV_LOG(Info, "listening", {"address", cfg->listen.to_string()}, {"workers", worker_count()},
          {"pool_mode", config::to_string(cfg->pool.mode)});
  if (shared) {
    PGV_LOG(Warn, "listen_port_shared", {"address", cfg->listen.to_string()},
            {"action",
             "another process listens on this port too and new clients are spread over both: "
             "end the old pgvalve with SIGTERM when this is a restart, else stop this one"});
  }
}

namespace {

admission::Address address_of(const tcp::endpoint& remote) {
  const auto address = remote.address();
  if (address.is_v4()) return admission::Address::v4(address.to_v4().to_uint());
  const auto v6 = address.to_v6();
  if (v6.is_v4_mapped()) {
    return admission::Address::v4(asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_uint());
  }
  return admission::Address::v6(v6.to_bytes());
}

// Sockets being told they were refused at the door (each reads one startup packet, for at most
// 2 s, then gets 53300).
constexpr int kMaxRefusing = 256;

}  // namespace

int App::begin_refusal() {
  return refusing_.fetch_add(1, std::memory_order_relaxed) + 1;
}

void App::end_refusal() {
  refusing_.fetch_sub(1, std::memory_order_relaxed);
}

App::DoorRefusals App::door_refusals() const {
  DoorRefusals r;
  for (std::size_t i = 0; i < refused_.size(); ++i)
    r.by_verdict[i] = refused_[i].load(std::memory_order_relaxed);
  r.dropped = refusals_dropped_.load(std::memory_order_relaxed);
  return r;
}

void App::log_dropped_refusals(Worker& worker, std::chrono::steady_clock::time_point now) {
  if (worker.dropped_unlogged == 0 || now - worker.dropped_logged_at < std::chrono::seconds(10)) {
    return;
  }
  PGV_LOG(Warn, "client_refusals_dropped", {"worker", worker.index},
          {"dropped", worker.dropped_unlogged},
          {"action",
           "more refused connections than 256 were being told why at once: these were closed "
           "without an answer (clients see the connection closed); look for a client that "
           "reconnects in a loop, or raise the limit that refused them "
           "(pgvalve_client_connections_refused_total)"});
  worker.dropped_unlogged = 0;
  worker.dropped_logged_at = now;
}

asio::awaitable<void> App::accept_loop(Worker& worker) {
  auto last_accept_warning = std::chrono::steady_clock::time_point{};
  for (;;) {
    error_code ec;
    Socket socket(worker.context);
    tcp::endpoint peer;  // filled by accept itself: no getpeername per connection
    co_await worker.acceptor->async_accept(socket, peer,
                                           asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !worker.acceptor->is_open()) co_return;
      // Out of file descriptors (or kernel memory): the pending connection stays queued and
      // accept would fail again at once. Pause instead of spinning; closing clients free some.
      // Said once per 10 s while it lasts, not at every pause.
      const auto now = std::chrono::steady_clock::now();
      if (now - last_accept_warning >= std::chrono::seconds(10)) {
        last_accept_warning = now;
        PGV_LOG(Warn, "accept_failed", {"error", ec.message()},
                {"action", "pausing accept 100 ms at a time; clients wait in the listen queue"});
      }
      asio::steady_timer pause(worker.context, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (!worker.client_options_inherited) {
      // The first client tells whether the kernel copied the listener's options.
      worker.client_options_inherited = has_client_options(socket.native_handle());
      if (!*worker.client_options_inherited) {
        PGV_LOG(Info, "client_socket_options_not_inherited",
                {"action", "set on each client connection instead (a few system calls each)"});
      }
    }
    if (!*worker.client_options_inherited) set_client_options(socket.native_handle());
    const admission::Address from = address_of(peer);
    const admission::Verdict verdict = admit(from);
    if (verdict != admission::Verdict::Admit) {
      refused_[static_cast<std::size_t>(verdict)].fetch_add(1, std::memory_order_relaxed);
      if (refusing_.load(std::memory_order_relaxed) >= kMaxRefusing) {
        // A flood: telling each one why would cost more than the flood. Closed unanswered,
        // and counted; said in the log at most once per 10 s.
        socket.close(ec);
        refusals_dropped_.fetch_add(1, std::memory_order_relaxed);
        ++worker.dropped_unlogged;
        log_dropped_refusals(worker, std::chrono::steady_clock::now());
        continue;
      }
    }
    if (worker.shed_left == ClientMove::kAll && worker.shed_to) {
      // A parked worker (worker_balance.h): an active one serves the client from the start.
      // Only connections queued before the steering program changed, or all where the kernel
      // refused it (connection_steering.h), come here.
      Worker& to = *worker.shed_to;
      move_socket(socket, to.context, ec);
      if (ec) {  // closed
        if (verdict == admission::Verdict::Admit) leave(from);
        continue;
      }
      PGV_LOG(Debug, "client_handed_over", {"from", worker.index}, {"to", to.index});
      asio::post(to.context, [this, &to, socket = std::move(socket), from, verdict]() mutable {
        start_client(to, std::move(socket), from, verdict);
      });
      continue;
    }
    start_client(worker, std::move(socket), from, verdict);
  }
}

void App::start_client(Worker& worker, Socket socket, const admission::Address& from,
                       admission::Verdict verdict) {
  static std::atomic<std::uint64_t> next_client_id{1};
  auto session = std::make_shared<ClientSession>(*this, worker, std::move(socket),
                                                 next_client_id.fetch_add(1), from, verdict);
  asio::co_spawn(worker.context, session->serve(), [session](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      PGV_LOG(Error, "session_failed", {"client", session->id()}, {"error", ex.what()});
    }
  });
}

asio::awaitable<bool> App::next_second(asio::steady_timer& timer) {
  timer.expires_after(std::chrono::seconds(1));
  error_code ec;
  co_await timer.async_wait(await_ec(ec));
  co_return !ec && !draining();
}

std::uint64_t App::next_server_id() {
  return next_server_id_.fetch_add(1);
}

void App::post(int worker, std::function<void()> task) {
  asio::post(workers_[static_cast<std::size_t>(worker)]->context, std::move(task));
}

// Each worker closes its own expired idle connections: its idle lists are its own.
void App::schedule_sweep(Worker& worker) {
  if (!worker.sweep_timer)
    worker.sweep_timer = std::make_unique<asio::steady_timer>(worker.context);
  worker.sweep_timer->expires_after(std::chrono::seconds(1));
  worker.sweep_timer->async_wait([this, &worker](const error_code& ec) {
    if (ec) return;
    const auto now = pool::Clock::now();
    for (auto& pool : pools()) {
      for (auto& conn : pool->collect_expired(worker.index, now)) {
        PGV_LOG(Debug, "server_expired", {"server", conn->id});
      }
    }
    worker.workspaces.sweep();
    log_dropped_refusals(worker, std::chrono::steady_clock::now());  // the end of a flood
    worker.publish_load(std::chrono::steady_clock::now());
    if (worker.index == 0) balance_workers();
    schedule_sweep(worker);
  });
}

void App::balance_workers() {
  if (workers_.size() < 2 || draining_.load(std::memory_order_relaxed)) return;
  std::vector<WorkerLoad> loads(workers_.size());
  double total = 0;
  for (std::size_t i = 0; i < loads.size(); ++i) {
    loads[i].busy = workers_[i]->published_busy.load(std::memory_order_relaxed);
    loads[i].clients = workers_[i]->published_clients.load(std::memory_order_relaxed);
    total += loads[i].busy;
  }
  const int active = active_workers();
  const WorkerPlan plan = plan_workers(loads, active);
  if (plan.active != active) {
    PGV_LOG(Info, "workers_active", {"active", plan.active}, {"before", active},
            {"cpu_permille", static_cast<int>(total * 1000)});
    active_workers_.store(plan.active, std::memory_order_relaxed);
    if (!steer_new_connections(workers_[0]->acceptor->native_handle(), plan.active) &&
        !steering_refused_) {
      steering_refused_ = true;
      PGV_LOG(Warn, "connection_steering_refused",
              {"action", "parked workers hand new clients over to active ones"});
    }
  }
  // An unparked worker's standing order must not send back what it is given now.
  for (int i = active; i < plan.active; ++i) {
    Worker* w = workers_[static_cast<std::size_t>(i)].get();
    asio::post(w->context, [w] { w->shed_left = 0; });
  }
  for (const ClientMove& move : plan.moves) {
    Worker* from = workers_[static_cast<std::size_t>(move.from)].get();
    Worker* to = workers_[static_cast<std::size_t>(move.to)].get();
    if (move.clients != ClientMove::kAll) {
      PGV_LOG(Info, "clients_spreading", {"from", move.from}, {"to", move.to},
              {"clients", move.clients},
              {"from_cpu_permille", static_cast<int>(loads[std::size_t(move.from)].busy * 1000)});
    }
    asio::post(from->context, [this, from, to, clients = move.clients] {
      if (draining_.load(std::memory_order_relaxed)) return;
      from->shed_to = to;
      from->shed_left = clients;
      from->shed_since_sweep = from->sweeps;
    });
  }
}

asio::awaitable<void> App::shutdown() {
  asio::post(control_, [this] {
    PGV_LOG(Info, "shutdown_requested", {"by", "admin console"});
    begin_drain();
  });
  // begin_drain() also drains each worker, later and from the control thread; whichever comes
  // first does it.
  co_await on_every_worker([this](Worker& w) { drain_worker(w); });
}

void App::begin_drain() {
  if (draining_.exchange(true)) return;
  const int timeout = config()->shutdown_timeout_s;
  PGV_LOG(Info, "shutdown_started", {"timeout_s", timeout}, {"clients", client_count()});
  // A new pgvalve shares the HTTP port (a restart): it answers from now on, so that /ready and
  // /metrics do not alternate between a draining process and the one taking over.
  if (http_ && listeners_on_port(config()->admin_listen.port) > 1) {
    http_->close();
    PGV_LOG(Info, "admin_listen_handed_over", {"address", config()->admin_listen.to_string()});
  }
  for (auto& w : workers_) {
    asio::post(w->context, [this, w = w.get()] { drain_worker(*w); });
  }
  poll_drain(std::chrono::steady_clock::now() + std::chrono::seconds(timeout));
}

void App::drain_worker(Worker& w) {
  if (w.draining) return;
  w.draining = true;
  error_code ignored;
  if (w.acceptor) w.acceptor->close(ignored);
  w.for_each_session([](ClientSession& s) { s.on_drain(); });
}

// Checks every 100 ms whether every client has left, until the deadline.
void App::poll_drain(std::chrono::steady_clock::time_point deadline) {
  if (client_count() == 0 || std::chrono::steady_clock::now() >= deadline) {
    if (client_count() > 0) PGV_LOG(Warn, "shutdown_timeout", {"clients", client_count()});
    control_.stop();
    return;
  }
  drain_timer_.expires_after(std::chrono::milliseconds(100));
  drain_timer_.async_wait([this, deadline](const error_code& ec) {
    if (!ec) poll_drain(deadline);
  });
}

void App::on_signal(const error_code& ec, int signal) {
  if (ec) return;
  if (signal == SIGHUP) {
    PGV_LOG(Info, "reload_requested", {"signal", "SIGHUP"});
    reload();
  } else if (signal == SIGTERM) {
    begin_drain();
  } else if (signal == SIGINT || signal == SIGQUIT) {
    PGV_LOG(Info, "shutdown_immediate", {"signal", signal == SIGINT ? "SIGINT" : "SIGQUIT"});
    control_.stop();
    return;
  } else if (signal == SIGUSR1) {
    // PgBouncer's meanings of SIGUSR1 and SIGUSR2: PAUSE and RESUME of every database (a
    // maintenance script written for it must not end the process, their default action).
    pause("");
    PGV_LOG(Warn, "paused", {"database", "*"}, {"signal", "SIGUSR1"});
  } else if (signal == SIGUSR2) {
    resume("");
    PGV_LOG(Warn, "resumed", {"database", "*"}, {"signal", "SIGUSR2"});
  }
  signals_.async_wait([this](const error_code& e, int s) { on_signal(e, s); });
}

void App::stop_all() {
  if (http_) http_->close();
  if (health_) health_->stop();
  for (auto& w : workers_)
    w->context.stop();
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  // Parts still waiting for their decision: the log says what finishes each (the next pgvalve
  // finishes them too, from their deciding shard: session/two_phase.h).
  if (prepared_parts_) prepared_parts_->leave_to_operator();
  // A session whose client has not read everything holds itself through its writer: let go, so
  // it is destroyed with its worker's loop.
  for (auto& w : workers_)
    w->for_each_session([](ClientSession& s) { s.on_stopped(); });
  // Idle server sockets belong to the workers' loops: close them while every loop exists.
  for (auto& pool : pools())
    pool->take_all_idle();
  // The listening connections belong to the control loop, destroyed before the hubs map.
  std::lock_guard lock(pools_mutex_);
  for (auto& [_, hub] : listen_hubs_)
    hub->close();
}

// Every client and every server connection is a descriptor: the soft limit (often 1024) would
// cap clients far below pool.max_client_connections. Raised to the hard limit, and said.
void App::raise_open_files_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) limit.rlim_cur = before;
  }
  const auto cfg = config();
  long long needed = cfg->pool.max_client_connections + 64;
  for (const auto& db : cfg->databases) {
    needed += static_cast<long long>(db.shards.size()) * cfg->users.size() *
              (cfg->pool.pool_size + cfg->pool.max_overflow);
  }
  const auto have = static_cast<long long>(limit.rlim_cur);
  if (have < needed) {
    PGV_LOG(Warn, "open_files_limit", {"limit", have}, {"needed", needed},
            {"action",
             "clients beyond the limit wait in the listen queue; raise LimitNOFILE / "
             "ulimit -n"});
  } else {
    PGV_LOG(Info, "open_files_limit", {"limit", have}, {"needed", needed});
  }
}

int App::run() {
  raise_open_files_limit();
  if (const auto& cfg = config(); cfg->tls && cfg->tls->mode != config::TlsMode::Disable) {
    std::string error;
    auto tls = TlsServerContext::make(*cfg->tls, error);
    if (!tls) {
      PGV_LOG(Error, "tls_failed", {"error", error},
              {"action", "not started: fix tls.cert / tls.key / tls.client_ca"});
      return 1;
    }
    PGV_LOG(Info, "tls_loaded", {"certificate", tls->description()},
            {"mode", config::to_string(tls->mode())});
    tls_.store(std::move(tls));
  }
  if (const auto& cfg = config(); cfg->server_tls != config::ServerTlsMode::Disable) {
    std::string error;
    auto server_tls = TlsClientContext::make(cfg->server_tls, cfg->server_tls_ca, error);
    if (!server_tls) {
      PGV_LOG(Error, "server_tls_failed", {"error", error},
              {"action", "not started: fix server_tls_ca"});
      return 1;
    }
    server_tls_.store(std::move(server_tls));
  }
  try {
    start_listeners();
  } catch (const std::exception& e) {
    PGV_LOG(Error, "listen_failed", {"address", config()->listen.to_string()}, {"error", e.what()});
    return 1;
  }
  http_ = std::make_unique<HttpServer>(*this, control_);
  try {
    http_->start(config()->admin_listen);
  } catch (const std::exception& e) {
    PGV_LOG(Error, "admin_listen_failed", {"address", config()->admin_listen.to_string()},
            {"error", e.what()});
    return 1;
  }
  health_ = std::make_unique<HealthChecker>(
      control_, [this](const config::Endpoint& host) { return lent_on(host); },
      [this](const std::string& database, const std::string& shard, const config::Endpoint& primary,
             std::function<void()> moved) { move_listeners(database, shard, primary, moved); },
      [this](const std::string& database, const config::Endpoint& host) {
        close_connections_to(database, host);
      });
  set_topology(health_->configure(config()));
  explainer_ = std::make_unique<SlowQueryExplainer>(*this, control_);
  asio::co_spawn(control_, explainer_->run(), asio::detached);
  prepared_parts_ = std::make_unique<PreparedPartResolver>(*this, control_);
  asio::co_spawn(control_, prepared_parts_->run(), asio::detached);
  signals_.add(SIGHUP);
  signals_.add(SIGTERM);
  signals_.add(SIGINT);
  signals_.add(SIGQUIT);
  signals_.add(SIGUSR1);
  signals_.add(SIGUSR2);
  signals_.async_wait([this](const error_code& e, int s) { on_signal(e, s); });
  for (auto& w : workers_) {
    asio::co_spawn(w->context, accept_loop(*w), asio::detached);
    schedule_sweep(*w);
    w->thread = std::thread([w = w.get()] {
      // "pgvalve-w0", ...: which thread is which worker in top -H, perf and gdb.
      const std::string name = "pgvalve-w" + std::to_string(w->index);
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      // Keeps the loop alive when no client is connected.
      auto guard = asio::make_work_guard(w->context);
      w->context.run();
    });
  }
  control_.run();
  stop_all();
  PGV_LOG(Info, "stopped");
  return exit_code_;
}

}  // namespace pgvalve::proxy
