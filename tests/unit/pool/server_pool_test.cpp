// Unit tests for ServerPool: budget, per-worker idle lists and waiters, moves between workers,
// expiry, settings and stats. No I/O and no sleeping: connections are fakes, every time point
// is explicit, and cross-worker tasks wait in a queue per worker until the test runs them.
#include "pool/server_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pgvalve::pool {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

const Clock::time_point T0 = Clock::time_point{} + std::chrono::hours(24);

class FakeConnection : public Connection {
 public:
  FakeConnection(std::uint64_t conn_id, Clock::time_point created, int worker) {
    id = conn_id;
    created_at = created;
    last_used_at = created;
    home_worker = worker;
  }
};

std::unique_ptr<Connection> make_conn(std::uint64_t id, Clock::time_point created = T0,
                                      int worker = 0) {
  return std::make_unique<FakeConnection>(id, created, worker);
}

// One task queue per worker; the test decides when a worker's queue runs.
class FakeHandoff : public Handoff {
 public:
  void post(int worker, std::function<void()> task) override {
    ASSERT_GE(worker, 0);
    if (queues_.size() <= static_cast<std::size_t>(worker)) queues_.resize(worker + 1);
    queues_[worker].push_back(std::move(task));
  }
  // Runs the worker's queue until empty (tasks may post more); returns how many ran.
  int run(int worker) {
    int ran = 0;
    while (pending(worker) > 0) {
      auto task = std::move(queues_[worker].front());
      queues_[worker].pop_front();
      task();
      ++ran;
    }
    return ran;
  }
  int pending(int worker) const {
    if (queues_.size() <= static_cast<std::size_t>(worker)) return 0;
    return static_cast<int>(queues_[worker].size());
  }

 private:
  std::vector<std::deque<std::function<void()>>> queues_;
};

// Records every grant, in order; optionally appends its name to a shared log.
class RecordingWaiter : public Waiter {
 public:
  explicit RecordingWaiter(std::string name = "", std::vector<std::string>* log = nullptr)
      : name_(std::move(name)), log_(log) {}

  void grant(std::unique_ptr<Connection> conn) override {
    if (conn) {
      ++connections;
    } else {
      ++permits;
    }
    grants.push_back(std::move(conn));
    if (log_) log_->push_back(name_);
  }

  void pool_retired() override { ++released; }

  int granted() const { return static_cast<int>(grants.size()); }

  std::vector<std::unique_ptr<Connection>> grants;  // null entries are permits
  int permits = 0;
  int connections = 0;
  int released = 0;  // pool_retired() calls

 private:
  std::string name_;
  std::vector<std::string>* log_;
};

config::PoolSettings make_settings(int pool_size, int max_overflow) {
  config::PoolSettings s;
  s.pool_size = pool_size;
  s.max_overflow = max_overflow;
  s.overflow_idle_s = 10;
  s.idle_timeout_s = 600;
  s.recycle_s = 3600;
  s.pre_ping = false;
  s.pre_ping_idle_s = 30;
  return s;
}

PoolKey make_key() {
  return PoolKey{"app", "alice", config::Endpoint{"db1", 5432}};
}

// Takes a Create permit on `worker` and reports the connection opened.
std::unique_ptr<Connection> open_new(ServerPool& pool, std::uint64_t id, int worker = 0,
                                     Clock::time_point now = T0) {
  RecordingWaiter unused;
  auto result = pool.checkout(worker, &unused, now);
  EXPECT_EQ(result.kind, CheckoutKind::Create);
  EXPECT_EQ(result.conn, nullptr);
  pool.created(worker);
  return make_conn(id, now, worker);
}

// Checks a connection in at `now` and expects the pool to keep it.
void park(ServerPool& pool, int worker, std::unique_ptr<Connection> conn, Clock::time_point now) {
  EXPECT_EQ(pool.checkin(worker, std::move(conn), now), nullptr);
}

std::uint64_t checkout_idle_id(ServerPool& pool, int worker) {
  RecordingWaiter unused;
  auto result = pool.checkout(worker, &unused, T0);
  EXPECT_EQ(result.kind, CheckoutKind::Idle);
  if (!result.conn) return 0;
  return result.conn->id;
}

class ServerPoolTest : public ::testing::Test {
 protected:
  std::shared_ptr<ServerPool> make_pool(const config::PoolSettings& settings, int workers = 1) {
    return std::make_shared<ServerPool>(make_key(), settings, workers, handoff);
  }

  FakeHandoff handoff;  // declared first: outlives the pools (queued tasks hold them)
};

// --- one worker: Idle, Create, Wait ---

TEST_F(ServerPoolTest, CreatePermitsUpToPoolSizePlusOverflowThenWait) {
  auto pool = make_pool(make_settings(2, 1));
  RecordingWaiter w;
  for (int i = 0; i < 3; ++i) {
    auto r = pool->checkout(0, &w, T0);
    EXPECT_EQ(r.kind, CheckoutKind::Create) << "checkout " << i;
    EXPECT_EQ(r.conn, nullptr);
  }
  auto r = pool->checkout(0, &w, T0);
  EXPECT_EQ(r.kind, CheckoutKind::Wait);
  EXPECT_EQ(r.conn, nullptr);
  EXPECT_EQ(w.granted(), 0);

  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 3);
  EXPECT_EQ(s.opening, 3);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.overflow, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_waits, 1u);
}

TEST_F(ServerPoolTest, CreatedTurnsPermitIntoCheckedOutConnection) {
  auto pool = make_pool(make_settings(2, 0));
  auto conn = open_new(*pool, 1);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_created, 1u);
  EXPECT_EQ(s.total_checkouts, 1u);
}

TEST_F(ServerPoolTest, CheckedInConnectionIsLentAgainAsIdle) {
  auto pool = make_pool(make_settings(1, 0));
  park(*pool, 0, open_new(*pool, 7), T0 + seconds(1));
  EXPECT_EQ(pool->stats(T0).checked_in, 1);

  RecordingWaiter w;
  auto r = pool->checkout(0, &w, T0 + seconds(2));
  ASSERT_EQ(r.kind, CheckoutKind::Idle);
  ASSERT_NE(r.conn, nullptr);
  EXPECT_EQ(r.conn->id, 7u);
  EXPECT_EQ(r.conn->last_used_at, T0 + seconds(1));
  auto s = pool->stats(T0);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_checkouts, 2u);
}

TEST_F(ServerPoolTest, MostRecentlyUsedIdleConnectionIsLentFirst) {
  auto pool = make_pool(make_settings(3, 0));
  auto c1 = open_new(*pool, 1);
  auto c2 = open_new(*pool, 2);
  auto c3 = open_new(*pool, 3);
  park(*pool, 0, std::move(c2), T0 + seconds(1));
  park(*pool, 0, std::move(c1), T0 + seconds(2));
  park(*pool, 0, std::move(c3), T0 + seconds(3));

  EXPECT_EQ(checkout_idle_id(*pool, 0), 3u);
  EXPECT_EQ(checkout_idle_id(*pool, 0), 1u);
  EXPECT_EQ(checkout_idle_id(*pool, 0), 2u);
}

TEST_F(ServerPoolTest, CheckinHandsConnectionStraightToWaiter) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  Connection* raw = conn.get();
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);

  EXPECT_EQ(pool->checkin(0, std::move(conn), T0 + seconds(5)), nullptr);
  ASSERT_EQ(w.granted(), 1);
  EXPECT_EQ(w.grants[0].get(), raw);
  EXPECT_EQ(w.grants[0]->last_used_at, T0 + seconds(5));

  auto s = pool->stats(T0 + seconds(5));
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_checkouts, 2u);
  EXPECT_EQ(s.total_handoffs, 0u);
}

TEST_F(ServerPoolTest, WaitersAreServedInFifoOrder) {
  auto pool = make_pool(make_settings(2, 0));
  auto c1 = open_new(*pool, 1);
  auto c2 = open_new(*pool, 2);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &b, T0 + seconds(1)).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &c, T0 + seconds(2)).kind, CheckoutKind::Wait);
  EXPECT_EQ(pool->stats(T0).waiting, 3);

  park(*pool, 0, std::move(c2), T0 + seconds(3));
  park(*pool, 0, std::move(c1), T0 + seconds(4));
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(a.connections, 1);
  EXPECT_EQ(a.grants[0]->id, 2u);
  ASSERT_EQ(b.connections, 1);
  EXPECT_EQ(b.grants[0]->id, 1u);

  park(*pool, 0, std::move(a.grants[0]), T0 + seconds(5));
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.connections, 1);
  EXPECT_EQ(pool->stats(T0).waiting, 0);
  EXPECT_EQ(pool->stats(T0).total_waits, 3u);
}

TEST_F(ServerPoolTest, QueuedWaitersGetFreeBudgetBeforeANewcomer) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  RecordingWaiter first, newcomer;
  ASSERT_EQ(pool->checkout(0, &first, T0).kind, CheckoutKind::Wait);
  pool->update_settings(make_settings(2, 0));  // its task for worker 0 has not run yet

  EXPECT_EQ(pool->checkout(0, &newcomer, T0 + seconds(1)).kind, CheckoutKind::Wait);
  EXPECT_EQ(first.permits, 1);
  EXPECT_EQ(newcomer.granted(), 0);
  handoff.run(0);
  EXPECT_EQ(newcomer.granted(), 0);
  EXPECT_EQ(pool->stats(T0).waiting, 1);
}

TEST_F(ServerPoolTest, CancelWaitRemovesQueuedWaiter) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);

  EXPECT_TRUE(pool->cancel_wait(0, &w));
  EXPECT_EQ(pool->stats(T0).waiting, 0);
  EXPECT_EQ(pool->stats(T0 + seconds(1)).max_wait_us, 0);
  EXPECT_FALSE(pool->cancel_wait(0, &w));

  park(*pool, 0, std::move(conn), T0 + seconds(1));
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool->stats(T0).checked_in, 1);
}

// A reload removed the pool's host: its waiters leave the queue, told to look elsewhere, and a
// connection checked in afterwards grants nobody a permit to open one to that host.
TEST_F(ServerPoolTest, ARetiredPoolReleasesItsWaiters) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  RecordingWaiter a, b;
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &b, T0).kind, CheckoutKind::Wait);
  pool->retire();
  pool->release_waiters(0);
  EXPECT_EQ(a.released, 1);
  EXPECT_EQ(b.released, 1);
  EXPECT_EQ(pool->stats(T0).waiting, 0);
  EXPECT_FALSE(pool->cancel_wait(0, &a));
  EXPECT_NE(pool->checkin(0, std::move(conn), T0 + seconds(1)), nullptr) << "closed, not kept";
  EXPECT_EQ(a.granted() + b.granted(), 0);
}

// A client waiting in the pool of a replica or of another shard is counted as waiting by the
// pool it logged in to (its `home`), so SHOW POOLS shows it once: waiting, not also active.
TEST_F(ServerPoolTest, AWaiterIsCountedAsWaitingByItsHomePoolWhileQueuedAnywhere) {
  auto home = make_pool(make_settings(1, 0));
  auto other = make_pool(make_settings(1, 0));
  auto conn = open_new(*other, 1);
  RecordingWaiter granted, cancelled, released;
  for (RecordingWaiter* w : {&granted, &cancelled, &released})
    w->home = home.get();
  ASSERT_EQ(other->checkout(0, &granted, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(other->checkout(0, &cancelled, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(other->checkout(0, &released, T0).kind, CheckoutKind::Wait);
  EXPECT_EQ(home->clients_waiting(), 3);
  EXPECT_EQ(other->clients_waiting(), 0);
  EXPECT_EQ(home->stats(T0).waiting, 0) << "it waits in the other pool";
  park(*other, 0, std::move(conn), T0 + seconds(1));
  ASSERT_EQ(granted.connections, 1);
  EXPECT_EQ(home->clients_waiting(), 2);
  EXPECT_TRUE(other->cancel_wait(0, &cancelled));
  EXPECT_EQ(home->clients_waiting(), 1);
  other->retire();
  other->release_waiters(0);
  EXPECT_EQ(home->clients_waiting(), 0);
}

TEST_F(ServerPoolTest, CancelWaitKeepsOthersInOrder) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &b, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &c, T0).kind, CheckoutKind::Wait);

  EXPECT_TRUE(pool->cancel_wait(0, &a));
  park(*pool, 0, std::move(conn), T0 + seconds(1));
  ASSERT_EQ(b.connections, 1);
  park(*pool, 0, std::move(b.grants[0]), T0 + seconds(2));
  EXPECT_EQ(log, (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(a.granted(), 0);
}

TEST_F(ServerPoolTest, CancelWaitReturnsFalseOnceGranted) {
  auto pool = make_pool(make_settings(1, 0));
  auto conn = open_new(*pool, 1);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);
  park(*pool, 0, std::move(conn), T0 + seconds(1));
  ASSERT_EQ(w.connections, 1);
  EXPECT_FALSE(pool->cancel_wait(0, &w));
}

TEST_F(ServerPoolTest, NoteTimeoutIsCountedPerWorkerAndSummed) {
  auto pool = make_pool(make_settings(1, 0), 2);
  pool->note_timeout(0);
  pool->note_timeout(1);
  pool->note_timeout(1);
  EXPECT_EQ(pool->stats(T0).total_timeouts, 3u);
}

// --- create_failed and discard return budget ---

TEST_F(ServerPoolTest, CreateFailedGivesNextWaiterOnSameWorkerAPermit) {
  auto pool = make_pool(make_settings(1, 0));
  RecordingWaiter opener, a, b;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &b, T0).kind, CheckoutKind::Wait);

  pool->create_failed(0);
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(b.granted(), 0);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_created, 0u);

  pool->create_failed(0);  // the permitted waiter failed too: on to the next one
  EXPECT_EQ(b.permits, 1);
  EXPECT_EQ(pool->stats(T0).opening, 1);
  EXPECT_EQ(pool->stats(T0).waiting, 0);
  EXPECT_EQ(handoff.pending(0), 0);
}

TEST_F(ServerPoolTest, CreateFailedGivesWaiterOnOtherWorkerAPermit) {
  auto pool = make_pool(make_settings(1, 0), 2);
  RecordingWaiter opener, w;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  ASSERT_EQ(pool->checkout(1, &w, T0).kind, CheckoutKind::Wait);

  pool->create_failed(0);
  EXPECT_EQ(w.granted(), 0);  // granted on its own worker's thread only
  EXPECT_EQ(handoff.run(1), 1);
  EXPECT_EQ(w.permits, 1);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.waiting, 0);

  pool->created(1);
  EXPECT_EQ(pool->stats(T0).checked_out, 1);
}

// --- create_refused: no room for another connection (server full, out of descriptors) ---

TEST_F(ServerPoolTest, RefusedOpenQueuesClientsForTheConnectionsThatComeBack) {
  auto pool = make_pool(make_settings(5, 0));
  auto busy = open_new(*pool, 1);
  RecordingWaiter opener, a, b;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  pool->create_refused(0, OpenRefusal::ServerFull, T0);
  EXPECT_EQ(pool->open_refusal(), OpenRefusal::ServerFull);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 0);

  // Budget is left, but nothing is opened during the hold: clients queue.
  EXPECT_EQ(pool->checkout(0, &a, T0 + milliseconds(10)).kind, CheckoutKind::Wait);
  EXPECT_EQ(pool->checkout(0, &b, T0 + milliseconds(20)).kind, CheckoutKind::Wait);
  EXPECT_EQ(pool->collect_expired(0, T0 + milliseconds(500)).size(), 0u);
  EXPECT_EQ(a.granted() + b.granted(), 0);

  // The busy connection comes back: the first waiter gets it.
  EXPECT_EQ(pool->checkin(0, std::move(busy), T0 + milliseconds(600)), nullptr);
  EXPECT_EQ(a.connections, 1);
  EXPECT_EQ(b.granted(), 0);
  EXPECT_EQ(pool->stats(T0).waiting, 1);
}

TEST_F(ServerPoolTest, AfterARefusalOneClientAtATimeTriesAgain) {
  auto pool = make_pool(make_settings(5, 0));
  RecordingWaiter opener, a, b, c;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  pool->create_refused(0, OpenRefusal::OutOfFiles, T0);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &b, T0).kind, CheckoutKind::Wait);

  // The sweep after the hold gives one permit, not one per waiter.
  pool->collect_expired(0, T0 + kRetryOpenAfter);
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(b.granted(), 0);
  // A newcomer meanwhile does not try too.
  EXPECT_EQ(pool->checkout(0, &c, T0 + kRetryOpenAfter).kind, CheckoutKind::Wait);

  // Refused again: held again, from then.
  const auto again = T0 + kRetryOpenAfter + milliseconds(5);
  pool->create_refused(0, OpenRefusal::OutOfFiles, again);
  pool->collect_expired(0, again + milliseconds(500));
  EXPECT_EQ(b.granted(), 0);
  pool->collect_expired(0, again + kRetryOpenAfter);
  EXPECT_EQ(b.permits, 1);
  EXPECT_EQ(c.granted(), 0);

  // That one succeeds: the hold ends and the rest open theirs at once.
  pool->created(0);
  EXPECT_EQ(pool->open_refusal(), OpenRefusal::None);
  EXPECT_EQ(c.permits, 1);
}

TEST_F(ServerPoolTest, AClosedConnectionEndsTheHold) {
  auto pool = make_pool(make_settings(5, 0));
  auto broken = open_new(*pool, 1);
  RecordingWaiter opener, a;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  pool->create_refused(0, OpenRefusal::ServerFull, T0);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  // Its slot on the server is free again: the waiter may open one at once.
  pool->discard(0, std::move(broken));
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(pool->open_refusal(), OpenRefusal::None);
}

TEST_F(ServerPoolTest, ARefusedProbeThatGivesUpLetsTheNextTry) {
  auto pool = make_pool(make_settings(5, 0));
  RecordingWaiter opener, a;
  ASSERT_EQ(pool->checkout(0, &opener, T0).kind, CheckoutKind::Create);
  pool->create_refused(0, OpenRefusal::ServerFull, T0);
  ASSERT_EQ(pool->checkout(0, &opener, T0 + kRetryOpenAfter).kind, CheckoutKind::Create);
  ASSERT_EQ(pool->checkout(0, &a, T0 + kRetryOpenAfter).kind, CheckoutKind::Wait);
  pool->create_failed(0);  // the probing client left before trying
  EXPECT_EQ(a.permits, 1);
}

TEST_F(ServerPoolTest, LoginFailuresAreCountedBySqlstate) {
  auto pool = make_pool(make_settings(1, 0));
  pool->note_login_failure("53300");
  pool->note_login_failure("57P03");
  pool->note_login_failure("53300");
  const auto failures = pool->stats(T0).login_failures;
  ASSERT_EQ(failures.size(), 2u);
  EXPECT_EQ(failures[0], (std::pair<std::string, std::uint64_t>{"53300", 2}));
  EXPECT_EQ(failures[1], (std::pair<std::string, std::uint64_t>{"57P03", 1}));
}

TEST_F(ServerPoolTest, CreateFailedWithoutWaitersReturnsTheBudget) {
  auto pool = make_pool(make_settings(1, 0));
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Create);
  pool->create_failed(0);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Create);
}

TEST_F(ServerPoolTest, DiscardPermitsWaiterOnSameWorkerAtOnce) {
  auto pool = make_pool(make_settings(1, 0), 2);
  auto conn = open_new(*pool, 1);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);

  pool->discard(0, std::move(conn));
  EXPECT_EQ(w.permits, 1);
  EXPECT_EQ(handoff.pending(1), 0);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

TEST_F(ServerPoolTest, DiscardFreesBudgetForWaiterOnOtherWorker) {
  auto pool = make_pool(make_settings(1, 0), 2);
  auto conn = open_new(*pool, 1, 0);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0).kind, CheckoutKind::Wait);

  pool->discard(0, std::move(conn));
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(handoff.run(1), 1);
  EXPECT_EQ(w.permits, 1);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

// --- moves between workers ---

TEST_F(ServerPoolTest, WaiterStealsIdleConnectionFromOtherWorker) {
  auto pool = make_pool(make_settings(1, 0), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;

  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  EXPECT_EQ(handoff.pending(0), 1);  // worker 0 is asked to send one over
  EXPECT_EQ(handoff.run(0), 1);
  EXPECT_EQ(pool->stats(T0).checked_in, 0);
  EXPECT_EQ(pool->stats(T0).checked_out, 1);  // in transit
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(handoff.run(1), 1);

  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.grants[0]->id, 5u);
  EXPECT_EQ(w.grants[0]->home_worker, 1);
  auto s = pool->stats(T0 + seconds(2));
  EXPECT_EQ(s.total_handoffs, 1u);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_checkouts, 2u);
}

TEST_F(ServerPoolTest, StealRequestFindingNothingIsServedByTheNextCheckin) {
  auto pool = make_pool(make_settings(1, 0), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  auto conn = pool->checkout(0, &w, T0 + seconds(3)).conn;  // worker 0 uses it first
  ASSERT_NE(conn, nullptr);

  EXPECT_EQ(handoff.run(0), 1);  // the steal request: nothing idle any more
  EXPECT_EQ(handoff.pending(1), 0);
  park(*pool, 0, std::move(conn), T0 + seconds(4));  // nobody waits on 0: goes to 1's waiter
  EXPECT_EQ(pool->stats(T0).checked_in, 0);
  EXPECT_EQ(handoff.run(1), 1);
  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.grants[0]->home_worker, 1);
  EXPECT_EQ(pool->stats(T0).total_handoffs, 1u);
}

TEST_F(ServerPoolTest, StealRequestIsDroppedWhenTheRequesterNoLongerWaits) {
  auto pool = make_pool(make_settings(1, 0), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  ASSERT_TRUE(pool->cancel_wait(1, &w));

  EXPECT_EQ(handoff.run(0), 1);
  EXPECT_EQ(handoff.pending(1), 0);
  EXPECT_EQ(checkout_idle_id(*pool, 0), 5u);  // stayed home
  EXPECT_EQ(pool->stats(T0).total_handoffs, 0u);
}

TEST_F(ServerPoolTest, MovedConnectionJoinsReceiversIdleListWhenItsWaiterLeft) {
  auto pool = make_pool(make_settings(1, 0), 2);
  auto conn = open_new(*pool, 5, 0);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0).kind, CheckoutKind::Wait);
  park(*pool, 0, std::move(conn), T0 + seconds(1));
  ASSERT_TRUE(pool->cancel_wait(1, &w));

  EXPECT_EQ(handoff.run(1), 1);
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool->stats(T0).checked_in, 1);
  RecordingWaiter other;
  auto r = pool->checkout(1, &other, T0 + seconds(2));
  ASSERT_EQ(r.kind, CheckoutKind::Idle);
  EXPECT_EQ(r.conn->id, 5u);
  EXPECT_EQ(r.conn->home_worker, 1);
}

// Worker 1's waiter queued at T0, worker 0's 10 ms later. A move needs worker 1's wait to exceed
// four times worker 0's plus 5 ms: at check-in time T0 + 10 ms + x that is
// 10 ms + x > 4x + 5 ms, so x < 5/3 ms.
TEST_F(ServerPoolTest, CheckinPrefersOwnWaiterUnderBalancedWaits) {
  auto pool = make_pool(make_settings(2, 0), 2);
  auto c0 = open_new(*pool, 1, 0);
  auto c1 = open_new(*pool, 2, 1);
  RecordingWaiter mine, theirs;
  ASSERT_EQ(pool->checkout(1, &theirs, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &mine, T0 + milliseconds(10)).kind, CheckoutKind::Wait);

  park(*pool, 0, std::move(c0), T0 + microseconds(11700));  // x = 1.7 ms: not clearly longer
  ASSERT_EQ(mine.connections, 1);
  EXPECT_EQ(mine.grants[0]->home_worker, 0);
  EXPECT_EQ(handoff.pending(1), 0);
  EXPECT_EQ(theirs.granted(), 0);
  EXPECT_EQ(pool->stats(T0).total_handoffs, 0u);
}

TEST_F(ServerPoolTest, CheckinHandsToOtherWorkerWhoseWaiterWaitedMuchLonger) {
  auto pool = make_pool(make_settings(2, 0), 2);
  auto c0 = open_new(*pool, 1, 0);
  auto c1 = open_new(*pool, 2, 1);
  RecordingWaiter mine, theirs;
  ASSERT_EQ(pool->checkout(1, &theirs, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(0, &mine, T0 + milliseconds(10)).kind, CheckoutKind::Wait);

  park(*pool, 0, std::move(c0), T0 + microseconds(11600));
  EXPECT_EQ(mine.granted(), 0);
  EXPECT_EQ(handoff.run(1), 1);
  ASSERT_EQ(theirs.connections, 1);
  EXPECT_EQ(theirs.grants[0]->id, 1u);
  EXPECT_EQ(theirs.grants[0]->home_worker, 1);
  auto s = pool->stats(T0 + milliseconds(12));
  EXPECT_EQ(s.total_handoffs, 1u);
  EXPECT_EQ(s.waiting, 1);  // `mine` waits for the next one
}

TEST_F(ServerPoolTest, PostedTaskKeepsThePoolAlive) {
  RecordingWaiter w;
  auto pool = make_pool(make_settings(1, 0), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0);
  ASSERT_EQ(pool->checkout(1, &w, T0).kind, CheckoutKind::Wait);
  std::weak_ptr<ServerPool> weak = pool;
  pool.reset();

  EXPECT_FALSE(weak.expired());
  handoff.run(0);
  handoff.run(1);
  EXPECT_EQ(w.connections, 1);
  EXPECT_TRUE(weak.expired());
}

// --- overflow only when no other worker has an idle connection ---

// pool_size 1 reached on worker 0 and idle there: a client on worker 1 gets that one, moved
// over, rather than an overflow connection (which the pool would keep overflow_idle_s).
TEST_F(ServerPoolTest, OverflowIsNotOpenedWhileAnotherWorkerHasAnIdleConnection) {
  auto pool = make_pool(make_settings(1, 5), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;

  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  EXPECT_EQ(handoff.run(0), 1);  // worker 0 sends its idle one over
  EXPECT_EQ(handoff.run(1), 1);
  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.permits, 0);
  EXPECT_EQ(w.grants[0]->id, 5u);
  auto s = pool->stats(T0 + seconds(2));
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.total_handoffs, 1u);
}

// Below pool_size each worker opens its own: connections stay on the worker that uses them.
TEST_F(ServerPoolTest, BelowPoolSizeAWorkerOpensItsOwnEvenWithIdleElsewhere) {
  auto pool = make_pool(make_settings(2, 5), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;
  EXPECT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Create);
  EXPECT_EQ(handoff.pending(0), 0);
}

// Every connection busy: overflow opens at once, whichever worker asks.
TEST_F(ServerPoolTest, OverflowOpensAtOnceWhenEveryConnectionIsBusy) {
  auto pool = make_pool(make_settings(1, 1), 2);
  auto busy = open_new(*pool, 5, 0);
  RecordingWaiter w;
  EXPECT_EQ(pool->checkout(1, &w, T0).kind, CheckoutKind::Create);
  EXPECT_EQ(pool->stats(T0).overflow, 1);
}

// The idle connection asked for was lent on its own worker meanwhile: the waiter gets the
// overflow permit then, not only at the next check-in.
TEST_F(ServerPoolTest, StealFindingNothingGivesTheWaiterTheOverflowPermit) {
  auto pool = make_pool(make_settings(1, 1), 2);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  EXPECT_EQ(checkout_idle_id(*pool, 0), 5u);  // worker 0's own client takes it first

  EXPECT_EQ(handoff.run(0), 1);  // nothing to send: worker 1 is told
  EXPECT_EQ(handoff.run(1), 1);
  EXPECT_EQ(w.permits, 1);
  auto s = pool->stats(T0 + seconds(2));
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.overflow, 1);
  EXPECT_EQ(s.waiting, 0);
}

// ... and when a third worker has one idle, that one is asked for instead.
TEST_F(ServerPoolTest, StealFindingNothingAsksAnotherWorkerThatHasOne) {
  auto pool = make_pool(make_settings(2, 1), 3);
  park(*pool, 0, open_new(*pool, 5, 0), T0 + seconds(1));
  park(*pool, 2, open_new(*pool, 6, 2), T0 + seconds(1));
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(1, &w, T0 + seconds(2)).kind, CheckoutKind::Wait);
  EXPECT_EQ(checkout_idle_id(*pool, 0), 5u);

  EXPECT_EQ(handoff.run(0), 1);
  EXPECT_EQ(handoff.run(1), 1);  // refused for overflow again: worker 2 is asked
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(handoff.run(2), 1);
  EXPECT_EQ(handoff.run(1), 1);
  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.grants[0]->id, 6u);
  auto s = pool->stats(T0 + seconds(2));
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.overflow, 0);
}

// --- check-in closes ---

TEST_F(ServerPoolTest, CheckinPastRecycleReturnsConnectionToClose) {
  auto settings = make_settings(2, 0);
  settings.recycle_s = 100;
  auto pool = make_pool(settings);
  auto young = open_new(*pool, 1, 0, T0);
  auto old = open_new(*pool, 2, 0, T0);

  park(*pool, 0, std::move(young), T0 + seconds(99));
  auto back = pool->checkin(0, std::move(old), T0 + seconds(100));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 2u);

  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

TEST_F(ServerPoolTest, ARetiredPoolClosesWhatComesBackAndWhatIsIdle) {
  auto pool = make_pool(make_settings(4, 0));
  auto lent = open_new(*pool, 1, 0, T0);
  auto idle = open_new(*pool, 2, 0, T0);
  park(*pool, 0, std::move(idle), T0);
  pool->retire();
  EXPECT_TRUE(pool->retired());
  auto back = pool->checkin(0, std::move(lent), T0 + seconds(1));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 1u);
  auto expired = pool->collect_expired(0, T0 + seconds(1));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 2u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.checked_in, 0);
}

TEST_F(ServerPoolTest, ReconnectClosesOlderConnectionsAsTheyComeBackAndKeepsNewerOnes) {
  auto pool = make_pool(make_settings(4, 0));
  auto lent = open_new(*pool, 1, 0, T0);
  auto idle = open_new(*pool, 2, 0, T0);
  park(*pool, 0, std::move(idle), T0);
  pool->reconnect(3);
  pool->reconnect(2);  // an older RECONNECT arriving late changes nothing
  auto expired = pool->collect_expired(0, T0 + seconds(1));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 2u);

  auto fresh = open_new(*pool, 3, 0, T0);
  EXPECT_TRUE(pool->close_needed(*lent));
  EXPECT_FALSE(pool->close_needed(*fresh));
  auto back = pool->checkin(0, std::move(lent), T0 + seconds(1));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 1u);
  park(*pool, 0, std::move(fresh), T0 + seconds(1));
  EXPECT_TRUE(pool->collect_expired(0, T0 + seconds(2)).empty());
  EXPECT_EQ(checkout_idle_id(*pool, 0), 3u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);  // the closed ones gave their budget back
  EXPECT_EQ(s.total_closed, 2u);
  EXPECT_FALSE(pool->retired());
}

TEST_F(ServerPoolTest, CheckinPastRecyclePermitsWaiter) {
  auto settings = make_settings(1, 0);
  settings.recycle_s = 100;
  auto pool = make_pool(settings);
  auto conn = open_new(*pool, 1, 0, T0);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);

  auto back = pool->checkin(0, std::move(conn), T0 + seconds(150));
  ASSERT_NE(back, nullptr);  // the caller closes the old one...
  EXPECT_EQ(w.permits, 1);   // ...and the waiter opens a fresh one
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

TEST_F(ServerPoolTest, RecycleZeroNeverRecycles) {
  auto settings = make_settings(1, 0);
  settings.recycle_s = 0;
  settings.idle_timeout_s = 0;  // disabled too, so only recycling could close it
  auto pool = make_pool(settings);
  park(*pool, 0, open_new(*pool, 1, 0, T0), T0 + std::chrono::hours(1000));
  EXPECT_TRUE(pool->collect_expired(0, T0 + std::chrono::hours(2000)).empty());
  EXPECT_EQ(pool->stats(T0).checked_in, 1);
}

// --- settings ---

TEST_F(ServerPoolTest, UpdateSettingsBiggerGivesWaitersOnBothWorkersPermits) {
  auto pool = make_pool(make_settings(1, 0), 2);
  auto conn = open_new(*pool, 1, 0);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool->checkout(0, &a, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(1, &b, T0).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool->checkout(1, &c, T0).kind, CheckoutKind::Wait);

  pool->update_settings(make_settings(2, 1));  // two more
  EXPECT_EQ(pool->settings(), make_settings(2, 1));
  EXPECT_TRUE(log.empty());  // granted on the waiters' own workers
  handoff.run(0);
  handoff.run(1);
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(b.permits, 1);
  EXPECT_EQ(c.granted(), 0);

  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 3);
  EXPECT_EQ(s.opening, 2);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.overflow, 1);
}

TEST_F(ServerPoolTest, UpdateSettingsSmallerClosesSurplusAtCheckinOnAnyWorker) {
  auto pool = make_pool(make_settings(3, 0), 2);
  auto c1 = open_new(*pool, 1, 0);
  auto c2 = open_new(*pool, 2, 1);
  auto c3 = open_new(*pool, 3, 0);
  pool->update_settings(make_settings(1, 0));
  EXPECT_EQ(pool->stats(T0).size, 3);
  EXPECT_EQ(pool->stats(T0).overflow, 2);

  auto back = pool->checkin(0, std::move(c1), T0 + seconds(1));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 1u);
  back = pool->checkin(1, std::move(c2), T0 + seconds(2));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 2u);
  park(*pool, 0, std::move(c3), T0 + seconds(3));

  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.total_closed, 2u);
}

TEST_F(ServerPoolTest, SmallerPoolServesWaitersOnlyOnceBelowTheLimit) {
  auto pool = make_pool(make_settings(2, 0));
  auto c1 = open_new(*pool, 1);
  auto c2 = open_new(*pool, 2);
  RecordingWaiter w;
  ASSERT_EQ(pool->checkout(0, &w, T0).kind, CheckoutKind::Wait);
  pool->update_settings(make_settings(1, 0));
  EXPECT_EQ(w.granted(), 0);

  EXPECT_NE(pool->checkin(0, std::move(c1), T0 + seconds(1)), nullptr);  // closed, no grant
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool->checkin(0, std::move(c2), T0 + seconds(2)), nullptr);  // handed over
  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.grants[0]->id, 2u);
}

TEST_F(ServerPoolTest, WorkerSeesChangedSettingsOnItsNextCall) {
  auto settings = make_settings(1, 0);
  settings.recycle_s = 0;
  auto pool = make_pool(settings);
  park(*pool, 0, open_new(*pool, 1, 0, T0), T0 + std::chrono::hours(2));

  settings.recycle_s = 3600;
  pool->update_settings(settings);
  RecordingWaiter w;
  auto r = pool->checkout(0, &w, T0 + std::chrono::hours(2));
  ASSERT_EQ(r.kind, CheckoutKind::Idle);
  EXPECT_NE(pool->checkin(0, std::move(r.conn), T0 + std::chrono::hours(2)), nullptr);
}

// --- collect_expired ---

TEST_F(ServerPoolTest, CollectExpiredClosesIdlePastIdleTimeoutOnThisWorkerOnly) {
  auto settings = make_settings(4, 0);
  settings.idle_timeout_s = 60;
  auto pool = make_pool(settings, 2);
  auto c1 = open_new(*pool, 1, 0);
  auto c2 = open_new(*pool, 2, 0);
  auto c3 = open_new(*pool, 3, 1);
  auto c4 = open_new(*pool, 4, 0);  // stays checked out
  park(*pool, 0, std::move(c1), T0 + seconds(10));
  park(*pool, 0, std::move(c2), T0 + seconds(50));
  park(*pool, 1, std::move(c3), T0 + seconds(10));

  EXPECT_TRUE(pool->collect_expired(0, T0 + seconds(69)).empty());
  auto expired = pool->collect_expired(0, T0 + seconds(70));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 3);
  EXPECT_EQ(s.checked_in, 2);  // worker 1's is its own business
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_closed, 1u);

  expired = pool->collect_expired(1, T0 + seconds(70));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 3u);

  // idle_timeout applies below pool_size too: no minimum is kept.
  expired = pool->collect_expired(0, T0 + seconds(110));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 2u);
  EXPECT_EQ(pool->stats(T0).checked_in, 0);
  EXPECT_EQ(pool->stats(T0).size, 1);
}

TEST_F(ServerPoolTest, CollectExpiredClosesOverflowColdestFirstKeepingPoolSize) {
  auto settings = make_settings(2, 3);
  settings.overflow_idle_s = 10;
  auto pool = make_pool(settings);
  std::vector<std::unique_ptr<Connection>> conns;
  for (std::uint64_t id = 1; id <= 5; ++id)
    conns.push_back(open_new(*pool, id));
  EXPECT_EQ(pool->stats(T0).overflow, 3);
  // Ids checked in out of order: 3 is the coldest, then 1, 2, 5, 4.
  const std::vector<std::pair<int, int>> order = {{2, 0}, {0, 1}, {1, 2}, {4, 3}, {3, 4}};
  for (auto [index, at] : order)
    park(*pool, 0, std::move(conns[index]), T0 + seconds(at));

  EXPECT_TRUE(pool->collect_expired(0, T0 + seconds(9)).empty());  // not idle long enough yet

  auto expired = pool->collect_expired(0, T0 + seconds(15));  // all idle >= 10 s
  ASSERT_EQ(expired.size(), 3u);
  EXPECT_EQ(expired[0]->id, 3u);
  EXPECT_EQ(expired[1]->id, 1u);
  EXPECT_EQ(expired[2]->id, 2u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_in, 2);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.total_closed, 3u);

  EXPECT_TRUE(pool->collect_expired(0, T0 + seconds(100)).empty());  // pool_size is kept
  EXPECT_EQ(checkout_idle_id(*pool, 0), 4u);  // the rest keep their LIFO order
  EXPECT_EQ(checkout_idle_id(*pool, 0), 5u);
}

TEST_F(ServerPoolTest, CollectExpiredOverflowCountsOtherWorkersConnections) {
  auto settings = make_settings(2, 2);
  settings.overflow_idle_s = 10;
  auto pool = make_pool(settings, 2);
  auto held1 = open_new(*pool, 1, 1);
  auto held2 = open_new(*pool, 2, 1);
  auto c3 = open_new(*pool, 3, 0);
  auto c4 = open_new(*pool, 4, 0);
  park(*pool, 0, std::move(c3), T0 + seconds(1));
  park(*pool, 0, std::move(c4), T0 + seconds(2));

  auto expired = pool->collect_expired(0, T0 + seconds(30));  // 4 exist, pool_size 2
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0]->id, 3u);
  EXPECT_EQ(expired[1]->id, 4u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_out, 2);
}

TEST_F(ServerPoolTest, CollectExpiredClosesOnlyOverflowIdleLongEnough) {
  auto settings = make_settings(1, 2);
  settings.overflow_idle_s = 10;
  auto pool = make_pool(settings);
  auto c1 = open_new(*pool, 1);
  auto c2 = open_new(*pool, 2);
  auto c3 = open_new(*pool, 3);
  park(*pool, 0, std::move(c1), T0);
  park(*pool, 0, std::move(c2), T0 + seconds(8));
  park(*pool, 0, std::move(c3), T0 + seconds(9));

  auto expired = pool->collect_expired(0, T0 + seconds(10));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(pool->stats(T0).size, 2);
}

TEST_F(ServerPoolTest, CollectExpiredClosesIdlePastRecycle) {
  auto settings = make_settings(2, 0);
  settings.recycle_s = 100;
  auto pool = make_pool(settings);
  auto old = open_new(*pool, 1, 0, T0);
  auto young = open_new(*pool, 2, 0, T0 + seconds(50));
  park(*pool, 0, std::move(old), T0 + seconds(90));
  park(*pool, 0, std::move(young), T0 + seconds(90));

  auto expired = pool->collect_expired(0, T0 + seconds(100));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(pool->stats(T0).checked_in, 1);
}

TEST_F(ServerPoolTest, CollectExpiredClosesIdleAboveShrunkLimitColdestFirst) {
  auto pool = make_pool(make_settings(4, 0), 2);
  auto c1 = open_new(*pool, 1, 0);
  auto c2 = open_new(*pool, 2, 0);
  auto c3 = open_new(*pool, 3, 0);
  auto held = open_new(*pool, 4, 1);
  park(*pool, 0, std::move(c2), T0);
  park(*pool, 0, std::move(c1), T0 + seconds(1));
  park(*pool, 0, std::move(c3), T0 + seconds(2));
  pool->update_settings(make_settings(2, 0));

  auto expired = pool->collect_expired(0, T0 + seconds(3));  // well inside overflow_idle_s
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0]->id, 2u);
  EXPECT_EQ(expired[1]->id, 1u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.checked_out, 1);
}

TEST_F(ServerPoolTest, TakeAllIdleEmptiesEveryWorkerAndReturnsTheBudget) {
  auto pool = make_pool(make_settings(4, 0), 2);
  auto held = open_new(*pool, 1, 0);
  auto c2 = open_new(*pool, 2, 0);
  auto c3 = open_new(*pool, 3, 1);
  auto c4 = open_new(*pool, 4, 1);
  park(*pool, 0, std::move(c2), T0);
  park(*pool, 1, std::move(c3), T0);
  park(*pool, 1, std::move(c4), T0);

  auto all = pool->take_all_idle();
  EXPECT_EQ(all.size(), 3u);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_closed, 3u);
}

// --- stats and server parameters ---

TEST_F(ServerPoolTest, StatsSumOverWorkers) {
  auto pool = make_pool(make_settings(2, 2), 2);
  auto s = pool->stats(T0);
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.pinned, 0);
  EXPECT_EQ(s.total_checkouts, 0u);
  EXPECT_EQ(s.max_wait_us, 0);

  auto c1 = open_new(*pool, 1, 0);
  auto c2 = open_new(*pool, 2, 1);
  auto c3 = open_new(*pool, 3, 0);
  RecordingWaiter opener, w1;
  ASSERT_EQ(pool->checkout(1, &opener, T0).kind, CheckoutKind::Create);  // still opening
  park(*pool, 0, std::move(c1), T0 + seconds(1));
  ASSERT_EQ(pool->checkout(1, &w1, T0 + seconds(2)).kind, CheckoutKind::Wait);
  pool->client_pinned();
  pool->client_pinned();
  pool->client_unpinned();
  pool->note_statement_eviction();

  s = pool->stats(T0 + seconds(5));
  EXPECT_EQ(s.size, 4);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.checked_out, 2);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.overflow, 2);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.pinned, 1);
  EXPECT_EQ(s.max_wait_us, 3'000'000);
  EXPECT_EQ(s.total_checkouts, 3u);
  EXPECT_EQ(s.total_waits, 1u);
  EXPECT_EQ(s.total_created, 3u);
  EXPECT_EQ(s.total_handoffs, 0u);
  EXPECT_EQ(s.total_statement_evictions, 1u);

  handoff.run(0);  // worker 0 sends c1 over to worker 1's waiter
  handoff.run(1);
  pool->discard(0, std::move(c3));
  pool->create_failed(1);
  s = pool->stats(T0 + seconds(5));
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 2);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.max_wait_us, 0);
  EXPECT_EQ(s.total_checkouts, 4u);
  EXPECT_EQ(s.total_closed, 1u);
  EXPECT_EQ(s.total_handoffs, 1u);
  EXPECT_EQ(s.size, s.checked_in + s.checked_out + s.opening);
}

TEST_F(ServerPoolTest, ServerParametersAreSetOnce) {
  auto pool = make_pool(make_settings(1, 0));
  EXPECT_EQ(pool->key(), make_key());
  EXPECT_EQ(pool->workers(), 1);
  EXPECT_FALSE(pool->has_server_parameters());
  EXPECT_EQ(pool->server_parameters(), nullptr);

  pool->set_server_parameters({{"server_version", "15.4"}, {"TimeZone", "UTC"}});
  EXPECT_TRUE(pool->has_server_parameters());
  auto first = pool->server_parameters();
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(first->size(), 2u);
  EXPECT_EQ((*first)[0], (std::pair<std::string, std::string>{"server_version", "15.4"}));
  EXPECT_EQ((*first)[1], (std::pair<std::string, std::string>{"TimeZone", "UTC"}));

  pool->set_server_parameters({{"server_version", "16.0"}});  // ignored
  EXPECT_EQ(pool->server_parameters(), first);
}

// --- many threads ---

// A worker's task queue, posted to from any thread, drained by its own thread.
class ThreadedHandoff : public Handoff {
 public:
  explicit ThreadedHandoff(int workers) : queues_(static_cast<std::size_t>(workers)) {}
  void post(int worker, std::function<void()> task) override {
    auto& q = queues_[static_cast<std::size_t>(worker)];
    std::lock_guard lock(q.mutex);
    q.tasks.push_back(std::move(task));
  }
  int drain(int worker) {
    auto& q = queues_[static_cast<std::size_t>(worker)];
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(q.mutex);
      batch.swap(q.tasks);
    }
    for (auto& task : batch)
      task();
    return static_cast<int>(batch.size());
  }

 private:
  struct Queue {
    std::mutex mutex;
    std::deque<std::function<void()>> tasks;
  };
  std::vector<Queue> queues_;
};

// Budget the test has been given (Create and permits) minus connections it has closed, and
// closes in progress, in one word: a close returns budget before the test counts it, so a
// reader allows one extra connection per close in progress, and needs both at one moment.
class Census {
 public:
  // Budget granted; fails when more exist than the limit allows.
  void reserve(int limit) {
    const std::int64_t v = value_.fetch_add(1) + 1;
    EXPECT_LE(held(v) - closing(v), limit);
  }
  void close_begins() { value_.fetch_add(kClosing); }
  void close_ends(int closed) { value_.fetch_sub(kClosing + closed); }
  int held() const { return held(value_.load()); }

 private:
  static constexpr std::int64_t kClosing = std::int64_t{1} << 32;
  static int held(std::int64_t v) { return static_cast<int>(v & 0xffffffff); }
  static int closing(std::int64_t v) { return static_cast<int>(v >> 32); }
  std::atomic<std::int64_t> value_{0};
};

struct StressOptions {
  config::PoolSettings settings;
  config::PoolSettings other_settings;  // alternated with `settings` while the threads run
  bool flip_settings = false;
};

// kThreads real threads, each its own worker with a few sessions, run checkout / check-in /
// discard / failed opens / cancelled waits; each drains its task queue between steps. Then
// everything must be back: nothing lent, opening or waiting, and the counts must agree.
void run_stress(const StressOptions& options) {
  constexpr int kThreads = 4;
  constexpr int kSessions = 3;
  constexpr int kCycles = 4000;  // checkouts per thread
  const int max_limit =
      std::max(options.settings.pool_size + options.settings.max_overflow,
               options.other_settings.pool_size + options.other_settings.max_overflow);

  ThreadedHandoff handoff(kThreads);
  auto pool = std::make_shared<ServerPool>(make_key(), options.settings, kThreads, handoff);
  Census census;
  std::atomic<std::uint64_t> next_id{1};
  std::atomic<std::uint64_t> lent{0};
  std::atomic<std::uint64_t> closed{0};
  std::atomic<int> threads_done{0};
  std::atomic<bool> stuck{false};
  const auto deadline = Clock::now() + seconds(120);  // a hang fails instead of blocking

  struct Session : Waiter {
    enum class State { Free, Waiting, Opening, Holding };
    void grant(std::unique_ptr<Connection> conn) override {
      EXPECT_EQ(state, State::Waiting);
      EXPECT_FALSE(granted);
      granted = true;
      granted_conn = std::move(conn);
    }
    void pool_retired() override { ADD_FAILURE() << "the stress never retires its pool"; }
    State state = State::Free;
    bool granted = false;
    std::unique_ptr<Connection> granted_conn;
    std::unique_ptr<Connection> conn;
    int steps = 0;
  };

  auto worker = [&](int me) {
    std::mt19937 rng(static_cast<unsigned>(me) * 7919u + 1u);
    auto chance = [&rng](int one_in) { return rng() % static_cast<unsigned>(one_in) == 0; };
    std::vector<Session> sessions(kSessions);
    int started = 0;
    bool done = false;
    auto hold = [&](Session& s, std::unique_ptr<Connection> conn) {
      lent.fetch_add(1);
      s.conn = std::move(conn);
      s.state = Session::State::Holding;
      s.steps = static_cast<int>(rng() % 3);
    };
    for (;;) {
      bool progress = handoff.drain(me) > 0;
      if (Clock::now() > deadline) {
        stuck = true;
        break;
      }
      if (stuck) break;
      bool all_free = true;
      for (auto& s : sessions) {
        const auto now = Clock::now();
        const auto before = s.state;
        switch (s.state) {
          case Session::State::Free: {
            if (started >= kCycles) break;
            ++started;
            auto r = pool->checkout(me, &s, now);
            if (r.kind == CheckoutKind::Idle) {
              hold(s, std::move(r.conn));
            } else if (r.kind == CheckoutKind::Create) {
              census.reserve(max_limit);
              s.state = Session::State::Opening;
            } else {
              s.state = Session::State::Waiting;
            }
            break;
          }
          case Session::State::Waiting:
            if (s.granted) {
              s.granted = false;
              if (s.granted_conn) {
                hold(s, std::move(s.granted_conn));
              } else {
                census.reserve(max_limit);
                s.state = Session::State::Opening;
              }
            } else if (started < kCycles && chance(64)) {
              // Gives up, as a checkout timeout would; never in the final phase, where every
              // waiter must be served for the test to end.
              EXPECT_TRUE(pool->cancel_wait(me, &s));
              pool->note_timeout(me);
              s.state = Session::State::Free;
            }
            break;
          case Session::State::Opening:
            if (chance(10)) {
              census.close_begins();
              pool->create_failed(me);
              census.close_ends(1);
              s.state = Session::State::Free;
            } else {
              pool->created(me);
              // Some are born old, so that check-in recycles them.
              const auto created_at = chance(20) ? now - std::chrono::hours(2) : now;
              hold(s, make_conn(next_id.fetch_add(1), created_at, me));
            }
            break;
          case Session::State::Holding:
            if (s.steps-- > 0) break;
            EXPECT_EQ(s.conn->home_worker, me);
            census.close_begins();
            if (chance(50)) {
              pool->discard(me, std::move(s.conn));
              closed.fetch_add(1);
              census.close_ends(1);
            } else {
              auto back = pool->checkin(me, std::move(s.conn), now);
              const int n = back ? 1 : 0;
              closed.fetch_add(static_cast<std::uint64_t>(n));
              census.close_ends(n);
            }
            s.state = Session::State::Free;
            break;
        }
        if (s.state != Session::State::Free) all_free = false;
        if (s.state != before) progress = true;
      }
      if (me == 0 && started % 64 == 0) {
        census.close_begins();
        auto expired = pool->collect_expired(me, Clock::now());
        closed.fetch_add(expired.size());
        census.close_ends(static_cast<int>(expired.size()));
      }
      if (!done && all_free && started >= kCycles) {
        done = true;
        threads_done.fetch_add(1);
      }
      // Finished threads keep serving their queue: others may still ask them for connections.
      if (done && threads_done.load() == kThreads) break;
      if (!progress) std::this_thread::yield();  // fewer cores than threads: let others run
    }
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(worker, t);
  bool flipped = false;
  while (threads_done.load() < kThreads && !stuck) {
    auto s = pool->stats();
    EXPECT_LE(s.size, max_limit);
    EXPECT_GE(s.checked_in, 0);
    EXPECT_GE(s.checked_out, 0);
    EXPECT_GE(s.opening, 0);
    EXPECT_GE(s.waiting, 0);
    if (options.flip_settings) {
      flipped = !flipped;
      pool->update_settings(flipped ? options.other_settings : options.settings);
    }
    std::this_thread::yield();
  }
  for (auto& t : threads)
    t.join();
  ASSERT_FALSE(stuck) << "a waiter was never served";
  if (options.flip_settings) pool->update_settings(options.settings);
  // The workers have stopped: run what they left queued, then close what is over the limit.
  for (int ran = 1; ran > 0;) {
    ran = 0;
    for (int t = 0; t < kThreads; ++t)
      ran += handoff.drain(t);
  }
  for (int t = 0; t < kThreads; ++t) {
    census.close_begins();
    auto expired = pool->collect_expired(t, Clock::now());
    closed.fetch_add(expired.size());
    census.close_ends(static_cast<int>(expired.size()));
  }

  const int limit = options.settings.pool_size + options.settings.max_overflow;
  auto s = pool->stats();
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.max_wait_us, 0);
  EXPECT_LE(s.size, limit);
  EXPECT_EQ(s.size, s.checked_in);
  EXPECT_EQ(census.held(), s.size);
  EXPECT_EQ(s.total_checkouts, lent.load());
  EXPECT_EQ(s.total_closed, closed.load());
  EXPECT_EQ(s.total_created, s.total_closed + static_cast<std::uint64_t>(s.size));
  std::printf(
      "[ stress   ] %llu checkouts, %llu waits, %llu timeouts, %llu handoffs, %llu created\n",
      static_cast<unsigned long long>(s.total_checkouts),
      static_cast<unsigned long long>(s.total_waits),
      static_cast<unsigned long long>(s.total_timeouts),
      static_cast<unsigned long long>(s.total_handoffs),
      static_cast<unsigned long long>(s.total_created));

  auto idle = pool->take_all_idle();
  EXPECT_EQ(static_cast<int>(idle.size()), s.size);
  s = pool->stats();
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.total_created, s.total_closed);
  // All the budget is back: exactly `limit` connections may be opened again.
  RecordingWaiter w;
  for (int i = 0; i < limit; ++i)
    EXPECT_EQ(pool->checkout(i % kThreads, &w, Clock::now()).kind, CheckoutKind::Create);
  EXPECT_EQ(pool->checkout(0, &w, Clock::now()).kind, CheckoutKind::Wait);
  EXPECT_TRUE(pool->cancel_wait(0, &w));
}

TEST(ServerPoolStressTest, ManyThreadsKeepBudgetAndCountsConsistent) {
  StressOptions options;
  options.settings = make_settings(2, 1);
  options.settings.overflow_idle_s = 0;  // collect_expired shrinks overflow while others work
  options.other_settings = options.settings;
  run_stress(options);
}

TEST(ServerPoolStressTest, ManyThreadsWithTheLimitChangingUnderThem) {
  StressOptions options;
  options.settings = make_settings(2, 1);
  options.other_settings = make_settings(4, 2);
  options.flip_settings = true;
  run_stress(options);
}

}  // namespace
}  // namespace pgvalve::pool
