// A pool of server connections for one (database, user, host): who may have one, who waits,
// which idle ones are past their lifetime. Knows connections only as handles: no sockets, no
// SQL. Thread-safe: workers on different threads check out and in under one short mutex hold.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
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
  int home_worker = 0;               // the worker whose event loop its socket is registered with
};

// Someone waiting for a connection. grant() is called without the pool's lock held, on the
// thread that freed the slot; the waiter must hand the result over to its own thread.
class Waiter {
 public:
  virtual ~Waiter() = default;
  // `conn` is an idle connection, or null: a permit to open a new one (the slot is reserved).
  virtual void grant(std::unique_ptr<Connection> conn) = 0;
};

enum class CheckoutKind {
  Idle,    // `conn` is ready to use
  Create,  // a slot is reserved: open a connection, then call created() or create_failed()
  Wait,    // the waiter was queued; grant() will be called, or cancel_wait() removes it
};

struct CheckoutResult {
  CheckoutKind kind = CheckoutKind::Wait;
  std::unique_ptr<Connection> conn;
};

// Figures for SHOW POOLS and metrics, read under the lock.
struct PoolStats {
  int size = 0;         // connections that exist or are being opened
  int checked_in = 0;   // idle
  int checked_out = 0;  // lent to clients
  int opening = 0;      // slots reserved for connections being opened
  int overflow = 0;     // size above pool_size
  int waiting = 0;      // clients queued for a connection
  std::uint64_t total_checkouts = 0;
  std::uint64_t total_waits = 0;
  std::uint64_t total_timeouts = 0;
  std::uint64_t total_created = 0;
  std::uint64_t total_closed = 0;
  std::int64_t max_wait_us = 0;  // longest current wait, filled in by the caller
  std::uint64_t total_statement_evictions = 0;
};

struct PoolKey {
  std::string database;  // the client-facing name
  std::string user;
  config::Endpoint host;
  bool operator==(const PoolKey&) const = default;
};

class ServerPool {
 public:
  ServerPool(PoolKey key, config::PoolSettings settings, int workers);
  ServerPool(const ServerPool&) = delete;
  ServerPool& operator=(const ServerPool&) = delete;

  const PoolKey& key() const { return key_; }

  // An idle connection (this worker's own first, the most recently used), a permit to create
  // one when the pool is below pool_size + max_overflow, or a place in the FIFO queue.
  CheckoutResult checkout(int worker, Waiter* waiter);
  // Removes a queued waiter; false when it was already granted (the grant is on its way).
  bool cancel_wait(Waiter* waiter);
  void note_timeout();

  // A connection opened after a Create permit is now lent out.
  void created();
  void create_failed();

  // Returns a clean connection. Past recycle_s it is handed back to be closed instead; the
  // same if the pool has shrunk. A waiting client gets it directly.
  std::unique_ptr<Connection> checkin(std::unique_ptr<Connection> conn, Clock::time_point now);
  // A lent connection that can no longer be used; the caller destroys it.
  void discard(std::unique_ptr<Connection> conn);

  // Idle connections past idle_timeout_s, overflow ones idle past overflow_idle_s, and ones past
  // recycle_s. The caller destroys them (outside any lock).
  std::vector<std::unique_ptr<Connection>> collect_expired(Clock::time_point now);
  // Idle connections idle for at least `idle_for` (for pre-ping); not removed.
  bool should_pre_ping(const Connection& conn, Clock::time_point now) const;

  // Every idle connection, for shutdown.
  std::vector<std::unique_ptr<Connection>> take_all_idle();

  // Clients logged in to this pool (cl_active + cl_waiting in SHOW POOLS).
  void client_joined() { clients_.fetch_add(1, std::memory_order_relaxed); }
  void client_left() { clients_.fetch_sub(1, std::memory_order_relaxed); }
  int clients() const { return clients_.load(std::memory_order_relaxed); }
  // A prepared statement was closed on a server to keep max_prepared_statements.
  void note_statement_eviction() { evictions_.fetch_add(1, std::memory_order_relaxed); }

  void update_settings(const config::PoolSettings& settings);
  config::PoolSettings settings() const;
  PoolStats stats() const;

  // Server parameters (ParameterStatus) seen on the first connection: what clients are told at
  // login, and the defaults their own settings differ from. Shared, never modified.
  using ServerParameters = std::vector<std::pair<std::string, std::string>>;
  void set_server_parameters(ServerParameters params);
  std::shared_ptr<const ServerParameters> server_parameters() const;
  bool has_server_parameters() const;

 private:
  int limit() const { return settings_.pool_size + settings_.max_overflow; }
  // Hands a free slot (and `conn`, if any) to the first waiter. Returns the waiter to call
  // after unlocking, or null.
  Waiter* pop_waiter();

  const PoolKey key_;
  mutable std::mutex mutex_;
  config::PoolSettings settings_;
  std::vector<std::vector<std::unique_ptr<Connection>>> idle_;  // per worker, LIFO
  std::deque<Waiter*> waiters_;
  int idle_count_ = 0;
  int checked_out_ = 0;
  int opening_ = 0;
  std::uint64_t total_checkouts_ = 0;
  std::uint64_t total_waits_ = 0;
  std::uint64_t total_timeouts_ = 0;
  std::uint64_t total_created_ = 0;
  std::uint64_t total_closed_ = 0;
  std::shared_ptr<const ServerParameters> server_parameters_ =
      std::make_shared<const ServerParameters>();
  bool has_server_parameters_ = false;
  std::atomic<int> clients_{0};
  std::atomic<std::uint64_t> evictions_{0};
};

}  // namespace pgvalve::pool
