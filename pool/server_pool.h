// A pool of server connections for one (database, user, host), shared by the workers without a
// lock on the way of a transaction. Knows connections only as handles: no sockets, no SQL.
//
// Each worker (one event-loop thread) has its own idle list and its own queue of waiting
// clients, touched only on that worker's thread, so a checkout and a check-in in steady state
// take no lock and cross no thread: a connection stays on the worker that opened it. What the
// workers share is an atomic budget (how many more connections may be opened) and a few atomic
// figures each worker publishes for the others (idle count, waiters, how long its oldest waiter
// has waited), read to decide when a connection should move to another worker:
//  - a worker whose clients wait while another worker has idle connections asks that worker to
//    send one over (a steal); so does one that would open overflow (beyond pool_size), which is
//    opened only when no worker has an idle connection;
//  - a check-in gives the connection to another worker's waiter instead of a local one when that
//    waiter has waited clearly longer, so no worker's clients starve while another's are served.
// Moves go through the Handoff the proxy supplies (it posts a task to the target worker's loop);
// the receiving worker re-registers the socket with its own loop.
//
// Threading contract: every call that takes `worker` is made on that worker's thread. stats(),
// settings(), update_settings(), server parameters and the client counters may be called from
// any thread. take_all_idle() is for shutdown, after the workers have stopped.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"

namespace pgvalve::pool {

using Clock = std::chrono::steady_clock;

// The pool's view of a server connection; the proxy derives its real connection from it.
class Connection {
 public:
  virtual ~Connection() = default;

  std::uint64_t id = 0;
  Clock::time_point created_at{};
  Clock::time_point last_used_at{};  // when it last went back to the pool
  // The worker the pool last gave it to: bookkeeping the pool's tests check. The proxy does not
  // use it: it compares its socket's event loop with its own and moves it when they differ.
  int home_worker = 0;
};

// Someone waiting for a connection. grant() is called on the waiter's own worker thread, possibly
// from inside another session's checkin()/discard() call: the waiter must only record the result
// and resume itself later (e.g. post to its own loop), never run its I/O from inside grant().
class ServerPool;

class Waiter {
 public:
  virtual ~Waiter() = default;
  // The pool its client logged in to (it must outlive the wait), or null: while this waits in
  // any pool, that one counts its client as waiting (clients_waiting()), so that SHOW POOLS
  // counts each client once, as active or as waiting.
  ServerPool* home = nullptr;
  // `conn` is an idle connection, or null: a permit to open a new one (the budget is taken).
  virtual void grant(std::unique_ptr<Connection> conn) = 0;
  // The pool was retired (a reload removed its host) while this waited; it is no longer queued
  // and should look for a connection elsewhere.
  virtual void pool_retired() = 0;
};

// How the pool reaches another worker's thread. Implemented by the proxy (asio::post to the
// worker's io_context); tests implement it with a queue per worker that they run by hand.
class Handoff {
 public:
  virtual ~Handoff() = default;
  virtual void post(int worker, std::function<void()> task) = 0;
};

enum class CheckoutKind {
  Idle,    // `conn` is ready to use
  Create,  // budget taken: open a connection, then call created() or create_failed()
  Wait,    // the waiter was queued; grant() will be called, or cancel_wait() removes it
};

struct CheckoutResult {
  CheckoutKind kind = CheckoutKind::Wait;
  std::unique_ptr<Connection> conn;
};

// Why the pool opens no new connection for a while: the server, or pgvalve itself, has no room
// for one. Clients wait for a connection to come back instead (up to checkout_timeout_ms).
enum class OpenRefusal : int {
  None = 0,
  ServerFull,  // the server refused the login with 53300 (max_connections reached)
  OutOfFiles,  // pgvalve is out of file descriptors (EMFILE/ENFILE)
};

// Opening is tried again this long after a refusal, by one client at a time.
inline constexpr std::chrono::milliseconds kRetryOpenAfter{1000};

// Figures for SHOW POOLS and metrics. Summed over the workers' published counters without a
// lock: each figure is exact for its worker, the sum may mix moments a few microseconds apart.
struct PoolStats {
  int size = 0;         // connections that exist or are being opened
  int checked_in = 0;   // idle
  int checked_out = 0;  // lent to clients
  int opening = 0;      // being opened
  int overflow = 0;     // size above pool_size
  int waiting = 0;      // clients queued for a connection
  int pinned = 0;       // clients holding a connection for session state (transaction mode)
  std::uint64_t total_checkouts = 0;
  std::uint64_t total_waits = 0;
  std::uint64_t total_timeouts = 0;
  std::uint64_t total_created = 0;
  std::uint64_t total_closed = 0;
  std::uint64_t total_handoffs = 0;  // connections moved to another worker
  std::int64_t max_wait_us = 0;      // longest current wait
  // Server logins that failed, by SQLSTATE (the server's, or 08006 when it could not be
  // reached), in the order first seen.
  std::vector<std::pair<std::string, std::uint64_t>> login_failures;
  std::uint64_t total_statement_evictions = 0;
  int testing = 0;                  // idle connections being checked (pre_ping) before a lend
  std::uint64_t total_invalid = 0;  // connections found dead when about to be lent
};

struct PoolKey {
  std::string database;  // the client-facing name
  std::string user;
  config::Endpoint host;
  std::string dbname;  // the database on the server, which its connections log in to
  bool operator==(const PoolKey&) const = default;
};

class ServerPool : public std::enable_shared_from_this<ServerPool> {
 public:
  // `handoff` must outlive the pool's use by workers (the proxy's App owns both).
  ServerPool(PoolKey key, config::PoolSettings settings, int workers, Handoff& handoff);
  ServerPool(const ServerPool&) = delete;
  ServerPool& operator=(const ServerPool&) = delete;

  const PoolKey& key() const { return key_; }
  int workers() const { return static_cast<int>(workers_.size()); }

  // This worker's most recently used idle connection; else, when the budget allows, a permit to
  // open one; else the waiter is queued (FIFO per worker) and, when another worker has idle
  // connections, that worker is asked to send one over. Overflow (a connection beyond
  // pool_size) is opened only when no other worker has an idle one: the waiter is queued and
  // one is asked for instead; should that worker have lent it meanwhile, the waiter gets the
  // permit then.
  CheckoutResult checkout(int worker, Waiter* waiter, Clock::time_point now = Clock::now());
  // Removes a queued waiter; false when it is not queued (already granted).
  bool cancel_wait(int worker, Waiter* waiter);
  // A retired pool's queue on this worker: each waiter is removed and told (pool_retired()).
  void release_waiters(int worker);
  void note_timeout(int worker);

  // A connection opened after a Create permit is now lent out.
  void created(int worker);
  // Opening failed: the budget comes back and the next waiter (here or on another worker) gets
  // a permit to try.
  void create_failed(int worker);
  // Opening failed because there is no room for another connection (`why`): the budget comes
  // back, but no connection is opened until kRetryOpenAfter has passed (then by one client at a
  // time, until one succeeds) or one of the pool's connections is closed. Waiters stay queued
  // for a connection to come back.
  void create_refused(int worker, OpenRefusal why, Clock::time_point now);
  // Why new connections are not being opened now (None: they are). Any thread.
  OpenRefusal open_refusal() const {
    return static_cast<OpenRefusal>(refusal_.load(std::memory_order_relaxed));
  }
  // A server login failed with `sqlstate` (counted per SQLSTATE for /metrics). Any thread.
  void note_login_failure(std::string_view sqlstate);

  // Returns a clean connection. One past recycle_s, or beyond the limit after the pool shrank,
  // is handed back to be closed (its budget is returned). Otherwise it goes to the waiter that
  // has waited longest: this worker's first waiter, or another worker's when that one has waited
  // clearly longer (moved through the Handoff); with no waiter it joins this worker's idle list.
  std::unique_ptr<Connection> checkin(int worker, std::unique_ptr<Connection> conn,
                                      Clock::time_point now);
  // A lent connection that can no longer be used; the caller destroys it after this returns.
  void discard(int worker, std::unique_ptr<Connection> conn);

  // This worker's idle connections past idle_timeout_s, overflow ones idle past overflow_idle_s,
  // ones past recycle_s, and ones beyond a shrunk limit. The caller destroys them.
  std::vector<std::unique_ptr<Connection>> collect_expired(int worker, Clock::time_point now);

  // Every idle connection of every worker, for shutdown (workers stopped).
  std::vector<std::unique_ptr<Connection>> take_all_idle();

  // Clients logged in to this pool (cl_active + cl_waiting in SHOW POOLS).
  void client_joined() { clients_.fetch_add(1, std::memory_order_relaxed); }
  void client_left() { clients_.fetch_sub(1, std::memory_order_relaxed); }
  int clients() const { return clients_.load(std::memory_order_relaxed); }
  // Of those, the ones queued for a server now, here or in another pool (Waiter::home).
  int clients_waiting() const { return clients_waiting_.load(std::memory_order_relaxed); }
  // Clients whose session state pins a server to them (transaction mode).
  void client_pinned() { pinned_.fetch_add(1, std::memory_order_relaxed); }
  void client_unpinned() { pinned_.fetch_sub(1, std::memory_order_relaxed); }
  // A prepared statement was closed on a server to keep max_prepared_statements.
  void note_statement_eviction() { evictions_.fetch_add(1, std::memory_order_relaxed); }
  // pre_ping checks and connections found dead when about to be lent (SHOW POOLS sv_tested,
  // invalid).
  void testing_started() { testing_.fetch_add(1, std::memory_order_relaxed); }
  void testing_ended() { testing_.fetch_sub(1, std::memory_order_relaxed); }
  void note_invalid() { invalid_.fetch_add(1, std::memory_order_relaxed); }

  // The host left the configuration (a reload): connections coming back are closed, idle ones
  // at the next collect_expired(); nothing new is lent. Thread-safe.
  void retire() { retired_.store(true, std::memory_order_relaxed); }
  bool retired() const { return retired_.load(std::memory_order_relaxed); }
  // RECONNECT and KILL: connections with an id below `first_fresh_id` (ids only grow) are closed
  // as they come back, idle ones at the next collect_expired(); new ones open as usual.
  // Thread-safe.
  void reconnect(std::uint64_t first_fresh_id);
  bool close_needed(const Connection& conn) const {
    return conn.id < reconnect_below_.load(std::memory_order_relaxed);
  }

  // Thread-safe. A bigger limit lets queued clients open connections at once; a smaller one
  // closes the surplus as connections come back.
  void update_settings(const config::PoolSettings& settings);
  // Any thread; takes the settings lock (reload, admin, HTTP).
  config::PoolSettings settings() const;
  // The settings as `worker` sees them: its own copy, refreshed after a reload without a lock.
  // On that worker's thread only; valid until its next call into the pool.
  const config::PoolSettings& settings(int worker) { return local_settings(state(worker)); }
  PoolStats stats(Clock::time_point now = Clock::now()) const;
  // The idle connections parked on `worker`; only on that worker's thread (SHOW SERVERS).
  template <typename F>
  void for_each_idle(int worker, F&& f) {
    for (const auto& conn : state(worker).idle)
      f(*conn);
  }
  // Connections lent out or being opened now, from the lock-free figures (least_connections
  // load balancing reads it per read). On `worker`'s thread.
  int in_use(int worker);

  // Server parameters (ParameterStatus) seen on the first connection: what clients are told at
  // login, and the defaults their own settings differ from. Set once, never modified after.
  using ServerParameters = std::vector<std::pair<std::string, std::string>>;
  void set_server_parameters(ServerParameters params);
  // Null until set; lock-free.
  std::shared_ptr<const ServerParameters> server_parameters() const;
  bool has_server_parameters() const;

 private:
  // One worker's share of the pool. Only the owner thread touches the containers and writes the
  // atomics; other threads read the atomics (stats, and the figures that decide moves).
  struct alignas(64) WorkerState {
    struct Queued {
      Waiter* waiter;
      std::int64_t since_ns;  // when it was queued
      ServerPool* home;       // the waiter's when queued
    };
    std::vector<std::unique_ptr<Connection>> idle;  // LIFO: back() is the most recently used
    std::deque<Queued> waiters;                     // FIFO
    config::PoolSettings settings;                  // copy of settings_ as of settings_version
    std::uint64_t settings_version = 0;
    std::atomic<int> idle_count{0};
    std::atomic<int> opening{0};
    std::atomic<std::uint64_t> checkouts{0};
    std::atomic<std::uint64_t> waits{0};
    std::atomic<std::uint64_t> timeouts{0};
    std::atomic<std::uint64_t> created{0};
    std::atomic<std::uint64_t> closed{0};
    std::atomic<std::uint64_t> handoffs{0};
    // Other workers read these on every check-in: a line of their own, written only when the
    // queue changes, so the owner's per-transaction writes above do not invalidate it.
    alignas(64) std::atomic<int> waiting{0};
    std::atomic<std::int64_t> oldest_wait_since_ns{0};  // 0: nobody waits
  };

  WorkerState& state(int worker);
  // Runs on `worker`: a connection moved here from another worker.
  void receive(int worker, std::unique_ptr<Connection> conn);
  // Runs on `worker`: another worker's clients wait; send one idle connection to `to`.
  void donate(int worker, int to);
  // A unit of budget came back: give a permit to a waiter here, or ask another worker to.
  void offer_permit(int worker, Clock::time_point now = {});
  void try_permits(int worker, Clock::time_point now = {});
  const config::PoolSettings& local_settings(WorkerState& w);

  // One unit of budget, unless it would open overflow while another worker has an idle
  // connection (see checkout()).
  bool take_budget(int worker);
  bool idle_elsewhere(int worker) const;
  // take_budget(), unless opening is held after a refusal (see create_refused()). `now` before
  // the hold's end (or unknown: a default time point) opens nothing.
  bool take_open_budget(int worker, Clock::time_point now);
  // One of the pool's connections was closed: a refusal's hold ends (its slot is free).
  void end_open_hold();
  bool release_budget_below(int ceiling);
  // Into this worker's idle list, or on to another worker whose clients wait.
  void park(int worker, std::unique_ptr<Connection> conn);
  void send(int to, std::unique_ptr<Connection> conn);
  void grant_first(WorkerState& w, std::unique_ptr<Connection> conn);
  Waiter* pop_waiter(WorkerState& w);
  static void count_home_waiting(ServerPool* home, int change);
  void publish_waiters(WorkerState& w);
  // False: no other worker has an idle connection (nothing was asked).
  bool request_steal(int worker);
  // The other worker whose oldest waiter has waited longest (-1: none) and when it was queued.
  std::pair<int, std::int64_t> longest_waiting_other(int worker) const;
  void rebalance(int worker, Clock::time_point now);

  const PoolKey key_;
  Handoff& handoff_;
  std::vector<std::unique_ptr<WorkerState>> workers_;

  mutable std::mutex settings_mutex_;  // guards settings_ (slow path: reload, stats)
  config::PoolSettings settings_;

  // Read on every check-in, written only when connections are opened or closed or settings
  // change: kept apart from the counters written at every client login.
  // Connections that may still be opened (negative: over the limit).
  alignas(64) std::atomic<int> budget_;
  std::atomic<std::uint64_t> settings_version_{1};

  alignas(64) std::atomic<std::shared_ptr<const ServerParameters>> server_parameters_;
  std::atomic<int> clients_{0};
  std::atomic<int> clients_waiting_{0};
  std::atomic<int> pinned_{0};
  std::atomic<std::uint64_t> evictions_{0};
  std::atomic<int> testing_{0};
  std::atomic<std::uint64_t> invalid_{0};
  std::atomic<bool> retired_{false};
  // After a refusal (create_refused): nothing is opened before this (ns of Clock; 0: no hold),
  // then one client at a time tries (probing_) until one succeeds.
  std::atomic<std::int64_t> open_held_until_ns_{0};
  std::atomic<bool> probing_{false};
  std::atomic<int> refusal_{0};        // OpenRefusal while held
  mutable std::mutex failures_mutex_;  // rare: failed logins only
  std::vector<std::pair<std::string, std::uint64_t>> login_failures_;
  std::atomic<std::uint64_t> reconnect_below_{0};
};

}  // namespace pgvalve::pool
