// The running proxy: worker event loops (one thread each, sessions never change thread),
// the listeners, the shared pools, reload and shutdown. Sessions reach shared state only
// through here.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "admission/admission.h"
#include "config/config.h"
#include "pool/server_pool.h"
#include "proxy/arrival_wait.h"
#include "proxy/cancel_registry.h"
#include "proxy/checkout_deadlines.h"
#include "proxy/client_profile.h"
#include "proxy/client_session.h"
#include "proxy/event_clock.h"
#include "proxy/health_checker.h"
#include "proxy/prepared_part_resolver.h"
#include "proxy/slow_query_explainer.h"
#include "proxy/tls.h"
#include "proxy/users.h"
#include "routing/decision_cache.h"
#include "session/input_buffer.h"
#include "session/session.h"
#include "session/sharding_policy.h"
#include "stats/query_stats.h"
#include "stats/worker_counters.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
using error_code = boost::system::error_code;

class ListenHub;
class HttpServer;

// A worker that did not answer App::on_every_worker in time (its thread is stalled or busy):
// what it was asked for has no complete answer, and none is given.
class WorkerSilent : public std::runtime_error {
 public:
  explicit WorkerSilent(int worker);
  int worker() const { return worker_; }

 private:
  int worker_;
};

// A (database, user)'s pools for every host of every shard, aligned with the topology's host
// lists, and the shards' published health: what a session needs to pick a server without a
// lock. Rebuilt when the topology changes (reload); sessions notice the generation.
struct UserPools {
  std::uint64_t generation = 0;
  struct Shard {
    std::shared_ptr<const health::ShardStatus> status;
    std::vector<std::shared_ptr<pool::ServerPool>> hosts;  // [0]: configured primary
  };
  std::vector<Shard> shards;
};

struct Worker {
  int index = 0;
  // Declared before `context`, so destroyed after it: the context's destructor destroys queued
  // handlers, which own sessions that leave this list and give their workspace back.
  session::WorkspacePool workspaces;  // touched only on this worker's thread
  // The worker's client sessions (ClientSession::next_on_worker); touched only on its thread.
  ClientSession* sessions = nullptr;
  void add_session(ClientSession* s);
  void remove_session(ClientSession* s);
  template <typename F>
  void for_each_session(F&& f);
  asio::io_context context{1};
  // These use the context: declared after it, so destroyed before it.
  ArrivalReactor reactor{context};
  std::unique_ptr<tcp::acceptor> acceptor;
  // Whether accepted sockets come with the listener's options (socket_options.h); unknown
  // until the first one.
  std::optional<bool> client_options_inherited;
  std::unique_ptr<asio::steady_timer> sweep_timer;
  CheckoutDeadlines checkout_deadlines{context};
  // Checkouts of this worker's clients that are between transactions, for the next to ask.
  static constexpr std::size_t kSpareCheckouts = 64;
  std::vector<std::unique_ptr<ClientSession::Checkout>> spare_checkouts;
  // Read/write decisions per statement shape, for this worker's sessions (not thread-safe).
  routing::DecisionCache decisions;
  // Load balancing state of this worker's reads (round_robin turn, random draws).
  std::uint64_t replica_turn = 0;
  std::uint64_t random_state = 0x9e3779b97f4a7c15ull;
  // Statistics per statement shape of this worker's sessions (SHOW QUERIES sums the workers).
  stats::QueryStats query_stats;
  stats::WorkerCounters counters;  // bumped without a lock by this worker, summed by a scrape
  stats::DatabaseCounterSet database_counters;  // the same per database (SHOW STATS)
  EventClock clock;  // the time of the event being carried out (client sessions' steps)
  // Grants made during the current step (ClientSession::Step), carried out as it ends; empty
  // between steps. Its capacity stays, so a grant allocates nothing.
  std::vector<ClientSession::Grant> grants;
  int steps = 0;          // nested ClientSession::Step
  bool draining = false;  // its clients were told to leave at their next transaction boundary

  // Packing and spreading clients over the workers (worker_balance.h). Each sweep publishes the
  // worker's CPU use over the last second and its clients; worker 0's sweep decides and sends an
  // order to each worker whose clients should go: up to `shed_left` of them move to `shed_to`,
  // each at its next moment between transactions (ClientSession::watch_client); a parked
  // worker's order is for all of them (ClientMove::kAll), and it hands the clients that connect
  // to it over at once (App::accept_loop). An order lapses at the worker's second sweep after
  // it came; standing orders are sent again every second. All but the published figures are
  // this worker's thread's.
  int clients = 0;
  Worker* shed_to = nullptr;
  int shed_left = 0;
  std::uint64_t sweeps = 0;
  std::uint64_t shed_since_sweep = 0;
  std::int64_t cpu_ns_at_sweep = -1;
  std::chrono::steady_clock::time_point sweep_at{};
  std::atomic<double> published_busy{0};
  std::atomic<int> published_clients{0};
  // Refused sockets this worker closed without an answer and has not logged yet, and when it
  // last logged some (client_refusals_dropped: at most once per 10 s, the rest by the sweep).
  std::uint64_t dropped_unlogged = 0;
  std::chrono::steady_clock::time_point dropped_logged_at{};
  // Measures and publishes; on this worker's thread.
  void publish_load(std::chrono::steady_clock::time_point now);

  std::thread thread;
};

template <typename F>
void Worker::for_each_session(F&& f) {
  for (ClientSession* s = sessions; s;) {
    ClientSession* next = s->next_on_worker;
    f(*s);
    s = next;
  }
}

class App : public pool::Handoff {
 public:
  explicit App(config::ConfigPtr config);
  ~App();

  // Binds the listeners and runs until shutdown. Returns the process exit code.
  int run();

  config::ConfigPtr config() const { return config_.load(); }
  std::shared_ptr<const UserDirectory> users() const { return users_.load(); }
  // Client-facing TLS as configured (tls.*), or null when it is not offered. Loaded at start and
  // on every reload (certificate files are read again).
  std::shared_ptr<const TlsServerContext> tls() const { return tls_.load(); }
  // TLS to PostgreSQL (server_tls, server_tls_ca), or null for disable; made at start and reload.
  std::shared_ptr<const TlsClientContext> server_tls() const { return server_tls_.load(); }
  CancelRegistry& cancels() { return cancels_; }
  // Bytes held by all clients for messages still being received (limits.message_memory_bytes).
  session::MemoryBudget& message_memory() { return message_memory_; }
  // pool::Handoff: runs `task` on a worker's thread.
  void post(int worker, std::function<void()> task) override;
  std::shared_ptr<pool::ServerPool> pool_for(const config::Database& db, const std::string& user,
                                             const config::Endpoint& host);
  std::vector<std::shared_ptr<pool::ServerPool>> pools();
  // The clients logged in to each of `pools`, as SHOW POOLS, /status and /metrics show them: a
  // client joins the pool of its shard's primary when it logs in; after a switchover or a
  // failover retired that host, its clients are shown on the pool of the primary now, where
  // their writes go. `active`: those of them not queued for a server now (in this pool or in
  // the one of a replica or another shard they wait for, which shows them as cl_waiting): each
  // client is active once or waiting once.
  struct PoolClients {
    int clients = 0;
    int active = 0;
  };
  static std::vector<PoolClients> clients_by_pool(
      const std::vector<std::shared_ptr<pool::ServerPool>>& pools,
      const std::vector<HostRow>& hosts);
  // The pools of every host of `db` for `user` as of the current topology.
  std::shared_ptr<const UserPools> user_pools(const config::Database& db, const std::string& user);
  // The router's view of a sharded database's sharding.* (null for one shard): built once per
  // configuration and database, shared by its sessions, with an id that keeps its cached shard
  // plans apart from other databases'.
  using Sharding = session::DatabaseSharding;
  std::shared_ptr<const Sharding> sharding(const config::ConfigPtr& config,
                                           const config::Database& db);
  // The session core's options of `config`: one copy shared by its sessions, not one each.
  std::shared_ptr<const session::SessionOptions> session_options(const config::ConfigPtr& config);
  // The profile of a client that logged in as `login` says (names, configuration, users, user) to
  // `db`, completed with the database's sharding and the session core's options: one copy shared
  // by every client that logged in the same way.
  std::shared_ptr<const ClientProfile> shared_profile(const ClientProfile& login,
                                                      const config::Database& db);
  // Changes whenever the hosts sessions route to do (a reload); read per checkout, lock-free.
  std::uint64_t topology_generation() const {
    return topology_generation_.load(std::memory_order_acquire);
  }
  // SHOW HOSTS, /status.
  std::vector<HostRow> hosts() const;
  // The slot of the collation `database`'s text is ordered in (null when not configured): what
  // the health checks read from its shards (SHOW SHARDS; sharding policies).
  std::shared_ptr<routing::TextOrderSlot> text_order(std::string_view database);
  // Parts of two-phase commits left prepared on a lost server, decided once it is back.
  PreparedPartResolver& prepared_parts() { return *prepared_parts_; }
  std::uint32_t instance() const { return instance_; }
  std::uint64_t failovers() const { return health_ ? health_->failovers() : 0; }
  // Runs `f(worker)` on every worker's thread (what only that thread may touch: its sessions,
  // its statement statistics, its idle server connections) and waits for them here, at most
  // kWorkerAnswerMs (a worker that no longer runs answers nothing; `f` keeps what it uses alive
  // itself). Returns the index of the first worker that did not answer in time (its `f` runs
  // when it does), or -1 when all did. From a coroutine on any thread, a worker's included.
  // `f` is taken by reference and must be a named object of the caller's (GCC 12 destroys a
  // temporary passed by value to a coroutine twice).
  static constexpr int kWorkerAnswerMs = 2000;
  template <typename F>
  asio::awaitable<int> on_every_worker(const F& f);
  // Every worker's statement statistics, summed, in as much `detail` as the reader needs (each
  // worker copies only that: /metrics no statement at all). Throws WorkerSilent when a worker
  // did not answer: the sum of the others would pass for the whole (counters going backwards).
  asio::awaitable<stats::Snapshot> query_stats(stats::Detail detail);
  stats::CounterTotals counter_totals() const;
  // SHOW STATS: one row per database seen, every worker's figures summed.
  struct DatabaseStats {
    std::string database;
    std::uint64_t transactions = 0, transaction_micros = 0;
    std::uint64_t queries = 0, query_micros = 0;
    std::uint64_t bytes_received = 0, bytes_sent = 0, wait_micros = 0;
  };
  asio::awaitable<std::vector<DatabaseStats>> database_stats();
  asio::awaitable<void> reset_query_stats();
  // A session could not reach `host`: no reads there until a check finds it healthy.
  void report_unreachable(const config::Endpoint& host);
  // SWITCHOVER / FAILOVER from the admin console, run on the control thread; `done` is called
  // there.
  void switchover(std::string database, std::string shard, std::optional<config::Endpoint> to,
                  HealthChecker::DrillDone done);
  void failover(std::string database, std::string shard, HealthChecker::DrillDone done);
  // Server connections lent out now on `host` (every pool of it). Takes the pools lock.
  int lent_on(const config::Endpoint& host);
  // ... and to clients of `database` ("" = every database).
  int lent_in(const std::string& database);

  // PAUSE / RESUME from the admin console: checkouts for a paused database ("" = all) wait
  // (up to pool.checkout_timeout_ms) until it is resumed.
  void pause(const std::string& database);
  // False, and nothing changed: `database` is named while every database is paused, which only
  // a RESUME of all ends.
  bool resume(const std::string& database);
  bool paused(const std::string& database) const {
    return paused_count_.load(std::memory_order_relaxed) > 0 && paused_slow(database);
  }
  std::vector<std::string> paused_databases() const;
  // RECONNECT [database] ("" = every database): the server connections open now are closed as
  // they come back to the pool, idle ones at once; new ones open as needed. Returns the first
  // server id that is not affected.
  std::uint64_t reconnect(const std::string& database);
  // WAIT_CLOSE: server connections of `database` with an id below this are still to be closed
  // (after RECONNECT or KILL of it or of every database).
  std::uint64_t reconnect_below(const std::string& database) const;
  // A host the health checks retired (a former primary): its server connections close, idle
  // ones at once, and those lent to clients are cut (ClientSession::on_host_retired).
  void close_connections_to(const std::string& database, const config::Endpoint& host);
  // KILL [database]: paused (new requests wait for RESUME), its clients disconnected with 57P01
  // and its server connections closed. Returns how many clients were disconnected.
  asio::awaitable<int> kill(const std::string& database);
  // KILL_CLIENT <id>: that client (an application client, as SHOW CLIENTS lists it) is
  // disconnected with 57P01; false when there is none.
  asio::awaitable<bool> kill_client(std::uint64_t id);
  // DISABLE / ENABLE <database>: new logins to a disabled database are refused (55000);
  // connected clients go on.
  void disable(const std::string& database);
  void enable(const std::string& database);
  bool disabled(const std::string& database) const {
    return disabled_count_.load(std::memory_order_relaxed) > 0 && disabled_slow(database);
  }
  std::vector<std::string> disabled_databases() const;
  // After a reload: the clients of each database whose shard map or dbname `next` changed, or
  // that `next` removed, and of each user it removed, leave at their next transaction boundary
  // (config::reload_change), so none keeps routing by the old rules, stays on pools nobody else
  // uses, or keeps the access an operator took away.
  void leave_after_reload(const config::Config& current, const config::ConfigPtr& next);
  // A reload moved shards in a database's list: the statistics kept by shard index follow them.
  void remap_shard_statistics(const config::Config& current, const config::Config& next);
  // The LISTEN/NOTIFY hubs of (database, user), one per shard (a notification may come from
  // any), on the control thread.
  std::vector<std::shared_ptr<ListenHub>> listen_hubs_for(const config::Database& db,
                                                          const config::User& user);
  // Moves the listening connections of a shard (database empty: of every database) to its
  // primary (nullopt: the one the health checks see); `moved` runs on the control thread once
  // every one listens there.
  void move_listeners(const std::string& database, const std::string& shard,
                      const std::optional<config::Endpoint>& primary, std::function<void()> moved);

  // The door (admission/): every accepted socket counts against pool.max_client_connections
  // and the per-address limits until its session ends (leave()).
  admission::Verdict admit(const admission::Address& from);
  void leave(const admission::Address& from);
  int open_sockets() const;
  // Failed logins by address and user name (admission::Admission::login_begins()).
  admission::Admission::LoginTurn login_begins(const admission::Address& from,
                                               std::string_view user);
  std::chrono::milliseconds login_failed(const admission::Address& from, std::string_view user);
  void login_succeeded(const admission::Address& from, std::string_view user);
  void login_ended(const admission::Address& from, std::string_view user,
                   const admission::Admission::LoginTurn& turn);
  // A cancel request on a socket the door answered `verdict`; false: dropped unanswered
  // (admission::Admission::cancel_admitted).
  bool cancel_admitted(const admission::Address& from, admission::Verdict verdict);
  // What became of cancel requests since start (pgvalve_cancel_requests_total). Any thread.
  enum class CancelOutcome { Matched, UnknownKey, TooFast };
  void count_cancel(CancelOutcome outcome) {
    cancel_requests_[static_cast<std::size_t>(outcome)].fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t cancel_requests(CancelOutcome outcome) const {
    return cancel_requests_[static_cast<std::size_t>(outcome)].load(std::memory_order_relaxed);
  }
  // A refused socket being told why (bounded: beyond the bound they are closed at accept).
  int begin_refusal();
  void end_refusal();
  // Sockets refused at the door since start, by Verdict (index 0, Admit, stays 0), and those of
  // them closed without an answer (a flood past the bound above). Any thread.
  struct DoorRefusals {
    std::array<std::uint64_t, 4> by_verdict{};
    std::uint64_t dropped = 0;
  };
  DoorRefusals door_refusals() const;

  // Logged-in client sessions (what a drain waits for).
  void add_client();
  void remove_client();
  int client_count() const { return clients_.load(std::memory_order_relaxed); }

  std::uint64_t next_server_id();
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  // The control thread's background loops (EXPLAIN of slow statements, prepared parts) run once
  // a second with `timer`: false once pgvalve drains or the timer is cancelled.
  asio::awaitable<bool> next_second(asio::steady_timer& timer);
  Worker& worker(int index) { return *workers_[static_cast<std::size_t>(index)]; }
  int worker_count() const { return static_cast<int>(workers_.size()); }
  int active_workers() const { return active_workers_.load(std::memory_order_relaxed); }

  // Re-reads the config file; on success new users and pool settings apply to new logins and
  // checkouts. Returns false (old config kept, problems logged) when the file is refused.
  bool reload();
  // reload() on the control thread, where SIGHUP reloads too: one reload at a time, and none
  // holds a worker that serves clients.
  asio::awaitable<bool> reload_on_control();
  // SHUTDOWN from the admin console: the drain SIGTERM starts. Returns once every worker has
  // begun it, so that no client starts a transaction after SHUTDOWN is answered.
  asio::awaitable<void> shutdown();

 private:
  void raise_open_files_limit();
  void drain_worker(Worker& worker);  // on the worker's thread; once
  void start_listeners();
  asio::awaitable<void> accept_loop(Worker& worker);
  // Worker 0's sweep: how many workers serve clients and whose clients move where
  // (worker_balance.h), sent as orders.
  void balance_workers();
  void start_client(Worker& worker, Socket socket, const admission::Address& from,
                    admission::Verdict verdict);
  void on_signal(const boost::system::error_code& ec, int signal);
  void begin_drain();
  void poll_drain(std::chrono::steady_clock::time_point deadline);
  void schedule_sweep(Worker& worker);
  // client_refusals_dropped: what `worker` closed unanswered since its last line, at most once
  // per 10 s (the sweep calls it too, for what the end of a flood left unsaid).
  void log_dropped_refusals(Worker& worker, std::chrono::steady_clock::time_point now);
  void stop_all();

  std::atomic<config::ConfigPtr> config_;
  std::atomic<std::shared_ptr<const UserDirectory>> users_;
  std::atomic<std::shared_ptr<const TlsServerContext>> tls_;
  std::atomic<std::shared_ptr<const TlsClientContext>> server_tls_;
  CancelRegistry cancels_;
  session::MemoryBudget message_memory_{0};
  std::mutex pools_mutex_;
  std::unordered_map<std::string, std::shared_ptr<pool::ServerPool>> pools_;
  std::unordered_map<std::string, std::shared_ptr<ListenHub>> listen_hubs_;  // under pools_mutex_
  std::shared_ptr<const Topology> topology_;                                 // under pools_mutex_
  // Shared by the sessions of one (database, user) for one topology generation; pools_mutex_.
  std::unordered_map<std::string, std::shared_ptr<const UserPools>> user_pools_;
  std::atomic<std::uint64_t> topology_generation_{0};
  std::mutex sharding_mutex_;  // taken at login only (sharding_ and session_options_)
  std::unordered_map<std::string, std::shared_ptr<const Sharding>> sharding_;
  std::uint32_t sharding_ids_ = 0;  // under sharding_mutex_
  struct SharedSessionOptions {
    config::ConfigPtr config;
    session::SessionOptions options;
  };
  std::shared_ptr<const SharedSessionOptions> session_options_;  // under sharding_mutex_
  // shared_profile()'s, by configuration, users, user and database; under sharding_mutex_.
  using ProfileKey = std::tuple<const void*, const void*, std::string, std::string>;
  std::map<ProfileKey, std::weak_ptr<const ClientProfile>> profiles_;
  // One id per routing.write_functions list ever configured (a handful); under sharding_mutex_.
  std::map<std::vector<std::string>, std::uint32_t> write_functions_ids_;
  std::size_t profiles_next_sweep_ = 64;
  std::atomic<int> clients_{0};
  mutable std::mutex door_mutex_;  // taken once per accept and once per close
  admission::Admission door_;
  // Sockets refused at the door that are still being told why; beyond a bound, closed at once.
  std::atomic<int> refusing_{0};
  std::array<std::atomic<std::uint64_t>, 4> refused_{};  // by admission::Verdict
  std::atomic<std::uint64_t> refusals_dropped_{0};
  std::array<std::atomic<std::uint64_t>, 3> cancel_requests_{};  // by CancelOutcome
  std::atomic<bool> draining_{false};
  // Workers 0 .. n-1 serve clients, the others are parked (worker_balance.h). Written by worker
  // 0's sweep; read by /metrics.
  std::atomic<int> active_workers_{0};
  // Set once the kernel refused to steer new connections to the active workers
  // (connection_steering.h); only worker 0's sweep reads and writes it.
  bool steering_refused_ = false;
  // Paused databases ("" = all); the count lets a checkout skip the lock when none is.
  bool paused_slow(const std::string& database) const;
  mutable std::mutex pause_mutex_;
  std::vector<std::string> paused_;
  std::atomic<int> paused_count_{0};
  std::vector<std::string> disabled_;  // under pause_mutex_
  std::atomic<int> disabled_count_{0};
  bool disabled_slow(const std::string& database) const;
  // RECONNECT / KILL: per database ("" = every one), the first server id not to close.
  std::unordered_map<std::string, std::uint64_t> reconnect_below_;  // under pause_mutex_
  std::atomic<std::uint64_t> next_server_id_{1};
  // Shared statements found stale by any worker (declared before the workers, which use it).
  session::StatementChanges statement_changes_;
  std::vector<std::unique_ptr<Worker>> workers_;

  // The main thread's loop: signals, the drain timer, the listen hubs, HTTP.
  asio::io_context control_{1};
  asio::signal_set signals_{control_};
  asio::steady_timer drain_timer_{control_};
  int exit_code_ = 0;

  // HTTP on admin_listen (/health /ready /status /metrics), on control_. Declared after
  // control_ so it is destroyed first.
  std::unique_ptr<HttpServer> http_;
  // The health checks, on control_.
  std::unique_ptr<HealthChecker> health_;
  std::unique_ptr<SlowQueryExplainer> explainer_;
  std::unique_ptr<PreparedPartResolver> prepared_parts_;
  // This process, in the names of its two-phase commits (session/two_phase.h): drawn at start,
  // so that the resolver tells its own parts from those of a pgvalve that is gone.
  const std::uint32_t instance_ = std::random_device{}();
  void set_topology(std::shared_ptr<const Topology> topology);
  void retire_pools_not_in(const config::Config& next);
};

template <typename F>
asio::awaitable<int> App::on_every_worker(const F& f) {
  // One flag per worker, so that the one that did not answer can be named.
  auto answered = std::make_shared<std::vector<std::atomic<bool>>>(workers_.size());
  for (auto& w : workers_) {
    asio::post(w->context, [f, answered, worker = w.get()]() mutable {
      f(*worker);
      (*answered)[static_cast<std::size_t>(worker->index)].store(true, std::memory_order_release);
    });
  }
  const auto silent = [&answered] {
    for (std::size_t i = 0; i < answered->size(); ++i) {
      if (!(*answered)[i].load(std::memory_order_acquire)) return static_cast<int>(i);
    }
    return -1;
  };
  const auto executor = co_await asio::this_coro::executor;
  asio::steady_timer timer(executor);
  for (int waited = 0; waited < kWorkerAnswerMs / 2 && silent() >= 0; ++waited) {
    timer.expires_after(std::chrono::milliseconds(2));
    co_await timer.async_wait(asio::use_awaitable);
  }
  co_return silent();
}

}  // namespace pgvalve::proxy
