// Figures a worker thread bumps on its hot path without a lock (relaxed atomics on its own
// cache lines) and a scrape sums: bytes to and from clients, and how long requests waited for
// a server connection (the pgvalve_pool_checkout_wait_seconds histogram).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <mutex>
#include <string>

namespace pgvalve::stats {

// Upper bounds (seconds) of the checkout-wait histogram buckets; +Inf follows.
inline constexpr double kCheckoutWaitBounds[] = {0.0001, 0.0005, 0.001, 0.005, 0.01,
                                                 0.05,   0.1,    0.5,   1,     5};
constexpr std::size_t kCheckoutWaitBuckets = std::size(kCheckoutWaitBounds) + 1;

struct CounterTotals {
  std::uint64_t bytes_received = 0;  // protocol bytes from clients (after TLS)
  std::uint64_t bytes_sent = 0;      // ... to clients
  std::array<std::uint64_t, kCheckoutWaitBuckets> checkout_waits{};  // not cumulative
  std::uint64_t checkout_wait_micros = 0;
  std::uint64_t client_moves = 0;  // clients this worker gave to another (worker_balance.h)
};

class alignas(64) WorkerCounters {
 public:
  void add_received(std::size_t n) { bytes_received_.fetch_add(n, std::memory_order_relaxed); }
  void add_sent(std::size_t n) { bytes_sent_.fetch_add(n, std::memory_order_relaxed); }
  void record_checkout_wait(std::uint64_t micros) {
    const double seconds = static_cast<double>(micros) / 1e6;
    std::size_t b = 0;
    while (b < std::size(kCheckoutWaitBounds) && seconds > kCheckoutWaitBounds[b])
      ++b;
    waits_[b].fetch_add(1, std::memory_order_relaxed);
    wait_micros_.fetch_add(micros, std::memory_order_relaxed);
  }
  void add_client_move() { client_moves_.fetch_add(1, std::memory_order_relaxed); }
  // Adds this worker's figures to `into`.
  void add_to(CounterTotals& into) const {
    into.bytes_received += bytes_received_.load(std::memory_order_relaxed);
    into.bytes_sent += bytes_sent_.load(std::memory_order_relaxed);
    for (std::size_t b = 0; b < kCheckoutWaitBuckets; ++b)
      into.checkout_waits[b] += waits_[b].load(std::memory_order_relaxed);
    into.checkout_wait_micros += wait_micros_.load(std::memory_order_relaxed);
    into.client_moves += client_moves_.load(std::memory_order_relaxed);
  }

 private:
  std::atomic<std::uint64_t> bytes_received_{0};
  std::atomic<std::uint64_t> bytes_sent_{0};
  std::array<std::atomic<std::uint64_t>, kCheckoutWaitBuckets> waits_{};
  std::atomic<std::uint64_t> wait_micros_{0};
  std::atomic<std::uint64_t> client_moves_{0};
};

// The same figures per database (SHOW STATS), for one worker. A client finds its database's
// entry once, at login, and bumps it without a lock; the list only grows, under a lock that
// only a new database and a reader take.
struct alignas(64) DatabaseCounters {
  explicit DatabaseCounters(std::string name) : database(std::move(name)) {}
  const std::string database;
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> bytes_sent{0};
  std::atomic<std::uint64_t> checkout_wait_micros{0};
};

class DatabaseCounterSet {
 public:
  // The entry of `database`; its address stays valid as long as the set.
  DatabaseCounters& of(const std::string& database) {
    std::lock_guard lock(mutex_);
    for (auto& d : all_) {
      if (d.database == database) return d;
    }
    return all_.emplace_back(database);
  }
  template <typename F>
  void for_each(F&& f) const {
    std::lock_guard lock(mutex_);
    for (const auto& d : all_)
      f(d);
  }

 private:
  mutable std::mutex mutex_;
  std::deque<DatabaseCounters> all_;
};

}  // namespace pgvalve::stats
