// Unit tests for ServerPool: permits, waiters, checkin/checkout, expiry, settings and stats.
// No I/O and no sleeping: connections are fakes and every time point is explicit.
#include "pool/server_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pgvalve::pool {
namespace {

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

  int granted() const { return static_cast<int>(grants.size()); }

  std::vector<std::unique_ptr<Connection>> grants;  // null entries are permits
  int permits = 0;
  int connections = 0;

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

// Takes a Create permit and reports the connection opened.
std::unique_ptr<Connection> open_new(ServerPool& pool, std::uint64_t id, int worker = 0,
                                     Clock::time_point now = T0) {
  RecordingWaiter unused;
  auto result = pool.checkout(worker, &unused);
  EXPECT_EQ(result.kind, CheckoutKind::Create);
  EXPECT_EQ(result.conn, nullptr);
  pool.created();
  return make_conn(id, now, worker);
}

// Checks a connection in at `now` and expects the pool to keep it.
void park(ServerPool& pool, std::unique_ptr<Connection> conn, Clock::time_point now) {
  EXPECT_EQ(pool.checkin(std::move(conn), now), nullptr);
}

std::uint64_t checkout_idle_id(ServerPool& pool, int worker) {
  RecordingWaiter unused;
  auto result = pool.checkout(worker, &unused);
  EXPECT_EQ(result.kind, CheckoutKind::Idle);
  if (!result.conn) return 0;
  return result.conn->id;
}

TEST(ServerPoolTest, CreatePermitsUpToPoolSizePlusOverflowThenWait) {
  ServerPool pool(make_key(), make_settings(2, 1), 1);
  RecordingWaiter w;
  for (int i = 0; i < 3; ++i) {
    auto r = pool.checkout(0, &w);
    EXPECT_EQ(r.kind, CheckoutKind::Create) << "checkout " << i;
    EXPECT_EQ(r.conn, nullptr);
  }
  auto r = pool.checkout(0, &w);
  EXPECT_EQ(r.kind, CheckoutKind::Wait);
  EXPECT_EQ(r.conn, nullptr);
  EXPECT_EQ(w.granted(), 0);

  auto s = pool.stats();
  EXPECT_EQ(s.size, 3);
  EXPECT_EQ(s.opening, 3);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.overflow, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_waits, 1u);
}

TEST(ServerPoolTest, CreatedTurnsReservedSlotIntoCheckedOutConnection) {
  ServerPool pool(make_key(), make_settings(2, 0), 1);
  auto conn = open_new(pool, 1);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_created, 1u);
  EXPECT_EQ(s.total_checkouts, 1u);
}

TEST(ServerPoolTest, CheckedInConnectionIsLentAgainAsIdle) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 7);
  park(pool, std::move(conn), T0 + seconds(1));
  EXPECT_EQ(pool.stats().checked_in, 1);

  RecordingWaiter w;
  auto r = pool.checkout(0, &w);
  ASSERT_EQ(r.kind, CheckoutKind::Idle);
  ASSERT_NE(r.conn, nullptr);
  EXPECT_EQ(r.conn->id, 7u);
  EXPECT_EQ(r.conn->last_used_at, T0 + seconds(1));
  auto s = pool.stats();
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_checkouts, 2u);
}

TEST(ServerPoolTest, CheckinHandsConnectionStraightToWaiter) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  Connection* raw = conn.get();
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Wait);

  EXPECT_EQ(pool.checkin(std::move(conn), T0 + seconds(5)), nullptr);
  ASSERT_EQ(w.granted(), 1);
  EXPECT_EQ(w.grants[0].get(), raw);
  EXPECT_EQ(w.grants[0]->last_used_at, T0 + seconds(5));

  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_checkouts, 2u);
}

TEST(ServerPoolTest, WaitersAreServedInFifoOrder) {
  ServerPool pool(make_key(), make_settings(2, 0), 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool.checkout(0, &a).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &b).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &c).kind, CheckoutKind::Wait);
  EXPECT_EQ(pool.stats().waiting, 3);

  park(pool, std::move(c2), T0 + seconds(1));
  park(pool, std::move(c1), T0 + seconds(2));
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(a.connections, 1);
  EXPECT_EQ(a.grants[0]->id, 2u);
  ASSERT_EQ(b.connections, 1);
  EXPECT_EQ(b.grants[0]->id, 1u);

  park(pool, std::move(a.grants[0]), T0 + seconds(3));
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.connections, 1);
  EXPECT_EQ(pool.stats().waiting, 0);
  EXPECT_EQ(pool.stats().total_waits, 3u);
}

TEST(ServerPoolTest, CancelWaitRemovesQueuedWaiter) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Wait);

  EXPECT_TRUE(pool.cancel_wait(&w));
  EXPECT_EQ(pool.stats().waiting, 0);
  EXPECT_FALSE(pool.cancel_wait(&w));

  park(pool, std::move(conn), T0 + seconds(1));
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool.stats().checked_in, 1);
}

TEST(ServerPoolTest, CancelWaitKeepsOthersInOrder) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool.checkout(0, &a).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &b).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &c).kind, CheckoutKind::Wait);

  EXPECT_TRUE(pool.cancel_wait(&a));
  park(pool, std::move(conn), T0 + seconds(1));
  ASSERT_EQ(b.connections, 1);
  park(pool, std::move(b.grants[0]), T0 + seconds(2));
  EXPECT_EQ(log, (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(a.granted(), 0);
}

TEST(ServerPoolTest, CancelWaitReturnsFalseOnceGranted) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Wait);
  park(pool, std::move(conn), T0 + seconds(1));
  ASSERT_EQ(w.connections, 1);

  EXPECT_FALSE(pool.cancel_wait(&w));
  auto s = pool.stats();
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.checked_out, 1);
}

TEST(ServerPoolTest, DiscardGivesFreedSlotToNextWaiterAsPermit) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  RecordingWaiter a, b;
  ASSERT_EQ(pool.checkout(0, &a).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &b).kind, CheckoutKind::Wait);

  pool.discard(std::move(conn));
  ASSERT_EQ(a.granted(), 1);
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(a.grants[0], nullptr);
  EXPECT_EQ(b.granted(), 0);

  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_closed, 1u);

  pool.created();  // the permitted waiter opened its connection
  s = pool.stats();
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.checked_out, 1);
}

TEST(ServerPoolTest, DiscardWithoutWaitersFreesTheSlot) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  pool.discard(std::move(conn));
  auto s = pool.stats();
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.total_closed, 1u);

  RecordingWaiter w;
  EXPECT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Create);
}

TEST(ServerPoolTest, CreateFailedGivesSlotToNextWaiterAsPermit) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  RecordingWaiter opener, a, b;
  ASSERT_EQ(pool.checkout(0, &opener).kind, CheckoutKind::Create);
  ASSERT_EQ(pool.checkout(0, &a).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &b).kind, CheckoutKind::Wait);

  pool.create_failed();
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(a.connections, 0);
  EXPECT_EQ(b.granted(), 0);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_created, 0u);
  EXPECT_EQ(s.total_closed, 0u);

  pool.create_failed();  // the permitted waiter failed too: on to the next one
  EXPECT_EQ(b.permits, 1);
  EXPECT_EQ(pool.stats().opening, 1);
  EXPECT_EQ(pool.stats().waiting, 0);
}

TEST(ServerPoolTest, CreateFailedWithoutWaitersFreesTheSlot) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Create);
  pool.create_failed();
  auto s = pool.stats();
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Create);
}

TEST(ServerPoolTest, CheckinPastRecycleReturnsConnectionToClose) {
  auto settings = make_settings(2, 0);
  settings.recycle_s = 100;
  ServerPool pool(make_key(), settings, 1);
  auto young = open_new(pool, 1, 0, T0);
  auto old = open_new(pool, 2, 0, T0);

  park(pool, std::move(young), T0 + seconds(99));
  auto back = pool.checkin(std::move(old), T0 + seconds(100));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 2u);

  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

TEST(ServerPoolTest, RecycleZeroNeverRecycles) {
  auto settings = make_settings(1, 0);
  settings.recycle_s = 0;
  settings.idle_timeout_s = 0;  // disabled too, so only recycling could close it
  ServerPool pool(make_key(), settings, 1);
  auto conn = open_new(pool, 1, 0, T0);
  park(pool, std::move(conn), T0 + std::chrono::hours(1000));
  EXPECT_EQ(pool.stats().checked_in, 1);
  EXPECT_TRUE(pool.collect_expired(T0 + std::chrono::hours(2000)).empty());
  EXPECT_EQ(pool.stats().checked_in, 1);
}

TEST(ServerPoolTest, CheckinPastRecyclePermitsWaiter) {
  auto settings = make_settings(1, 0);
  settings.recycle_s = 100;
  ServerPool pool(make_key(), settings, 1);
  auto conn = open_new(pool, 1, 0, T0);
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Wait);

  auto back = pool.checkin(std::move(conn), T0 + seconds(150));
  ASSERT_NE(back, nullptr);  // the caller closes the old one...
  EXPECT_EQ(back->id, 1u);
  EXPECT_EQ(w.permits, 1);  // ...and the waiter opens a fresh one
  EXPECT_EQ(w.connections, 0);

  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.opening, 1);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_closed, 1u);
}

TEST(ServerPoolTest, CollectExpiredClosesConnectionsIdlePastIdleTimeout) {
  auto settings = make_settings(3, 0);
  settings.idle_timeout_s = 60;
  ServerPool pool(make_key(), settings, 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);  // stays checked out
  park(pool, std::move(c1), T0 + seconds(10));
  park(pool, std::move(c2), T0 + seconds(50));

  EXPECT_TRUE(pool.collect_expired(T0 + seconds(69)).empty());

  auto expired = pool.collect_expired(T0 + seconds(70));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.total_closed, 1u);

  // idle_timeout applies below pool_size too: no minimum is kept.
  expired = pool.collect_expired(T0 + seconds(110));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 2u);
  EXPECT_EQ(pool.stats().checked_in, 0);
}

TEST(ServerPoolTest, CollectExpiredClosesOverflowIdlePastOverflowIdleKeepingPoolSize) {
  auto settings = make_settings(2, 3);
  settings.overflow_idle_s = 10;
  settings.idle_timeout_s = 600;
  ServerPool pool(make_key(), settings, 1);
  std::vector<std::unique_ptr<Connection>> conns;
  for (std::uint64_t id = 1; id <= 5; ++id)
    conns.push_back(open_new(pool, id));
  EXPECT_EQ(pool.stats().overflow, 3);
  // Checked in oldest first: id 1 is the coldest, id 5 the warmest.
  for (int i = 0; i < 5; ++i)
    park(pool, std::move(conns[i]), T0 + seconds(i));

  EXPECT_TRUE(pool.collect_expired(T0 + seconds(9)).empty());  // not idle long enough yet

  auto expired = pool.collect_expired(T0 + seconds(14));  // all idle >= 10 s
  ASSERT_EQ(expired.size(), 3u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(expired[1]->id, 2u);
  EXPECT_EQ(expired[2]->id, 3u);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_in, 2);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.total_closed, 3u);

  EXPECT_TRUE(pool.collect_expired(T0 + seconds(100)).empty());  // pool_size is kept
}

TEST(ServerPoolTest, CollectExpiredShrinksOverflowColdestFirstAcrossWorkers) {
  auto settings = make_settings(2, 2);
  settings.overflow_idle_s = 10;
  ServerPool pool(make_key(), settings, 2);
  auto warm0 = open_new(pool, 1, 0);
  auto warm1 = open_new(pool, 2, 1);
  auto cold1 = open_new(pool, 3, 1);
  auto cold0 = open_new(pool, 4, 0);
  park(pool, std::move(cold1), T0 + seconds(1));
  park(pool, std::move(cold0), T0 + seconds(2));
  park(pool, std::move(warm0), T0 + seconds(5));
  park(pool, std::move(warm1), T0 + seconds(6));

  auto expired = pool.collect_expired(T0 + seconds(30));  // all four idle >= 10 s
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0]->id, 3u);
  EXPECT_EQ(expired[1]->id, 4u);
  EXPECT_EQ(checkout_idle_id(pool, 0), 1u);
  EXPECT_EQ(checkout_idle_id(pool, 1), 2u);
}

TEST(ServerPoolTest, CollectExpiredClosesOnlyOverflowIdleLongEnough) {
  auto settings = make_settings(1, 2);
  settings.overflow_idle_s = 10;
  ServerPool pool(make_key(), settings, 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);
  park(pool, std::move(c1), T0);
  park(pool, std::move(c2), T0 + seconds(8));
  park(pool, std::move(c3), T0 + seconds(9));

  auto expired = pool.collect_expired(T0 + seconds(10));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(pool.stats().size, 2);
}

TEST(ServerPoolTest, CollectExpiredCountsCheckedOutTowardsOverflow) {
  auto settings = make_settings(2, 2);
  settings.overflow_idle_s = 10;
  ServerPool pool(make_key(), settings, 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);
  park(pool, std::move(c1), T0);

  auto expired = pool.collect_expired(T0 + seconds(20));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 2);
  EXPECT_EQ(s.checked_out, 2);
}

TEST(ServerPoolTest, CollectExpiredClosesIdlePastRecycle) {
  auto settings = make_settings(2, 0);
  settings.recycle_s = 100;
  settings.idle_timeout_s = 600;
  ServerPool pool(make_key(), settings, 1);
  auto old = open_new(pool, 1, 0, T0);
  auto young = open_new(pool, 2, 0, T0 + seconds(50));
  park(pool, std::move(old), T0 + seconds(90));
  park(pool, std::move(young), T0 + seconds(90));

  auto expired = pool.collect_expired(T0 + seconds(100));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(pool.stats().checked_in, 1);
}

TEST(ServerPoolTest, CheckoutPrefersOwnWorkersIdleList) {
  ServerPool pool(make_key(), make_settings(4, 0), 3);
  auto c0 = open_new(pool, 10, 0);
  auto c1 = open_new(pool, 11, 1);
  auto c2 = open_new(pool, 12, 2);
  park(pool, std::move(c0), T0 + seconds(3));
  park(pool, std::move(c1), T0 + seconds(1));
  park(pool, std::move(c2), T0 + seconds(2));

  EXPECT_EQ(checkout_idle_id(pool, 1), 11u);
  EXPECT_EQ(checkout_idle_id(pool, 2), 12u);
  EXPECT_EQ(checkout_idle_id(pool, 0), 10u);
}

TEST(ServerPoolTest, CheckoutUsesOtherWorkersIdleListWhenOwnIsEmpty) {
  ServerPool pool(make_key(), make_settings(4, 0), 3);
  auto c2 = open_new(pool, 12, 2);
  park(pool, std::move(c2), T0 + seconds(1));

  EXPECT_EQ(checkout_idle_id(pool, 0), 12u);
  auto s = pool.stats();
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 1);
}

TEST(ServerPoolTest, OutOfRangeWorkersUseTheFirstList) {
  ServerPool pool(make_key(), make_settings(4, 0), 2);
  auto c = open_new(pool, 5, 7);  // home_worker beyond the worker count
  auto d = open_new(pool, 6, 1);
  park(pool, std::move(c), T0 + seconds(1));
  park(pool, std::move(d), T0 + seconds(2));

  EXPECT_EQ(checkout_idle_id(pool, 9), 5u);   // worker 9 -> list 0
  EXPECT_EQ(checkout_idle_id(pool, -1), 6u);  // list 0 empty -> another worker's
}

TEST(ServerPoolTest, MostRecentlyUsedIdleConnectionIsLentFirst) {
  ServerPool pool(make_key(), make_settings(3, 0), 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);
  park(pool, std::move(c2), T0 + seconds(1));
  park(pool, std::move(c1), T0 + seconds(2));
  park(pool, std::move(c3), T0 + seconds(3));

  EXPECT_EQ(checkout_idle_id(pool, 0), 3u);
  EXPECT_EQ(checkout_idle_id(pool, 0), 1u);
  EXPECT_EQ(checkout_idle_id(pool, 0), 2u);
}

TEST(ServerPoolTest, UpdateSettingsWithBiggerPoolPermitsWaiters) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  auto conn = open_new(pool, 1);
  std::vector<std::string> log;
  RecordingWaiter a("a", &log), b("b", &log), c("c", &log);
  ASSERT_EQ(pool.checkout(0, &a).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &b).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &c).kind, CheckoutKind::Wait);

  pool.update_settings(make_settings(2, 1));
  EXPECT_EQ(log, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(a.permits, 1);
  EXPECT_EQ(b.permits, 1);
  EXPECT_EQ(c.granted(), 0);
  EXPECT_EQ(pool.settings(), make_settings(2, 1));

  auto s = pool.stats();
  EXPECT_EQ(s.size, 3);
  EXPECT_EQ(s.opening, 2);
  EXPECT_EQ(s.checked_out, 1);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.overflow, 1);
}

TEST(ServerPoolTest, UpdateSettingsWithSmallerPoolClosesSurplusOnCheckin) {
  ServerPool pool(make_key(), make_settings(3, 0), 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);
  pool.update_settings(make_settings(1, 0));
  EXPECT_EQ(pool.stats().overflow, 2);

  auto back = pool.checkin(std::move(c1), T0 + seconds(1));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 1u);
  back = pool.checkin(std::move(c2), T0 + seconds(2));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->id, 2u);
  park(pool, std::move(c3), T0 + seconds(3));

  auto s = pool.stats();
  EXPECT_EQ(s.size, 1);
  EXPECT_EQ(s.checked_in, 1);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.total_closed, 2u);
}

TEST(ServerPoolTest, SmallerPoolServesWaitersOnlyOnceBelowTheLimit) {
  ServerPool pool(make_key(), make_settings(2, 0), 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  RecordingWaiter w;
  ASSERT_EQ(pool.checkout(0, &w).kind, CheckoutKind::Wait);
  pool.update_settings(make_settings(1, 0));
  EXPECT_EQ(w.granted(), 0);

  EXPECT_NE(pool.checkin(std::move(c1), T0 + seconds(1)), nullptr);  // closed, no grant
  EXPECT_EQ(w.granted(), 0);
  EXPECT_EQ(pool.checkin(std::move(c2), T0 + seconds(2)), nullptr);  // handed over
  ASSERT_EQ(w.connections, 1);
  EXPECT_EQ(w.grants[0]->id, 2u);
}

TEST(ServerPoolTest, CollectExpiredClosesIdleAboveShrunkLimit) {
  ServerPool pool(make_key(), make_settings(3, 0), 1);
  auto c1 = open_new(pool, 1);
  auto c2 = open_new(pool, 2);
  auto c3 = open_new(pool, 3);
  park(pool, std::move(c1), T0);
  park(pool, std::move(c2), T0 + seconds(1));
  park(pool, std::move(c3), T0 + seconds(2));
  pool.update_settings(make_settings(1, 0));

  auto expired = pool.collect_expired(T0 + seconds(3));  // well inside overflow_idle_s
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0]->id, 1u);
  EXPECT_EQ(expired[1]->id, 2u);
  EXPECT_EQ(pool.stats().size, 1);
}

TEST(ServerPoolTest, StatsReportFigures) {
  ServerPool pool(make_key(), make_settings(2, 2), 2);
  auto s = pool.stats();
  EXPECT_EQ(s.size, 0);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.overflow, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.total_checkouts, 0u);
  EXPECT_EQ(s.max_wait_us, 0);

  auto c1 = open_new(pool, 1, 0);
  auto c2 = open_new(pool, 2, 1);
  auto c3 = open_new(pool, 3, 0);
  RecordingWaiter opener;
  ASSERT_EQ(pool.checkout(1, &opener).kind, CheckoutKind::Create);  // 4th slot, still opening
  park(pool, std::move(c1), T0 + seconds(1));
  EXPECT_EQ(checkout_idle_id(pool, 1), 1u);
  park(pool, std::move(c2), T0 + seconds(2));
  pool.discard(std::move(c3));
  RecordingWaiter w1, w2;
  ASSERT_EQ(pool.checkout(0, &w1).kind, CheckoutKind::Idle);  // takes c2, from worker 1's list
  ASSERT_EQ(pool.checkout(0, &w1).kind, CheckoutKind::Create);
  pool.create_failed();
  ASSERT_EQ(pool.checkout(0, &w1).kind, CheckoutKind::Create);
  ASSERT_EQ(pool.checkout(0, &w2).kind, CheckoutKind::Wait);
  ASSERT_EQ(pool.checkout(0, &w1).kind, CheckoutKind::Wait);
  ASSERT_TRUE(pool.cancel_wait(&w1));
  pool.note_timeout();

  s = pool.stats();
  EXPECT_EQ(s.size, 4);
  EXPECT_EQ(s.checked_in, 0);
  EXPECT_EQ(s.checked_out, 2);  // c1 (again) and c2 (again)
  EXPECT_EQ(s.opening, 2);
  EXPECT_EQ(s.overflow, 2);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.total_checkouts, 5u);  // 3 created + 2 idle
  EXPECT_EQ(s.total_waits, 2u);
  EXPECT_EQ(s.total_timeouts, 1u);
  EXPECT_EQ(s.total_created, 3u);
  EXPECT_EQ(s.total_closed, 1u);
  EXPECT_EQ(s.size, s.checked_in + s.checked_out + s.opening);
}

TEST(ServerPoolTest, ShouldPrePingAfterIdleForPrePingIdle) {
  auto settings = make_settings(1, 0);
  settings.pre_ping = true;
  settings.pre_ping_idle_s = 30;
  ServerPool pool(make_key(), settings, 1);
  FakeConnection conn(1, T0, 0);
  conn.last_used_at = T0 + seconds(100);

  EXPECT_FALSE(pool.should_pre_ping(conn, T0 + seconds(129)));
  EXPECT_TRUE(pool.should_pre_ping(conn, T0 + seconds(130)));
  EXPECT_TRUE(pool.should_pre_ping(conn, T0 + seconds(1000)));

  settings.pre_ping = false;
  pool.update_settings(settings);
  EXPECT_FALSE(pool.should_pre_ping(conn, T0 + seconds(1000)));
}

TEST(ServerPoolTest, ShouldPrePingUsesLastCheckinTime) {
  auto settings = make_settings(1, 0);
  settings.pre_ping = true;
  settings.pre_ping_idle_s = 30;
  ServerPool pool(make_key(), settings, 1);
  auto conn = open_new(pool, 1, 0, T0);
  park(pool, std::move(conn), T0 + seconds(100));
  RecordingWaiter w;
  auto r = pool.checkout(0, &w);
  ASSERT_EQ(r.kind, CheckoutKind::Idle);
  EXPECT_FALSE(pool.should_pre_ping(*r.conn, T0 + seconds(110)));
  EXPECT_TRUE(pool.should_pre_ping(*r.conn, T0 + seconds(130)));
}

TEST(ServerPoolTest, KeyAndServerParameters) {
  ServerPool pool(make_key(), make_settings(1, 0), 1);
  EXPECT_EQ(pool.key(), make_key());
  EXPECT_FALSE(pool.has_server_parameters());
  EXPECT_TRUE(pool.server_parameters()->empty());

  pool.set_server_parameters({{"server_version", "15.4"}, {"TimeZone", "UTC"}});
  EXPECT_TRUE(pool.has_server_parameters());
  const auto& params = *pool.server_parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0], (std::pair<std::string, std::string>{"server_version", "15.4"}));
  EXPECT_EQ(params[1], (std::pair<std::string, std::string>{"TimeZone", "UTC"}));
}

// A waiter that a thread blocks on until another thread grants it.
class BlockingWaiter : public Waiter {
 public:
  void grant(std::unique_ptr<Connection> conn) override {
    std::lock_guard lock(mutex_);
    conn_ = std::move(conn);
    granted_ = true;
    cv_.notify_one();
  }
  // The granted connection, or null for a permit.
  std::unique_ptr<Connection> wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return granted_; });
    granted_ = false;
    return std::move(conn_);
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool granted_ = false;
  std::unique_ptr<Connection> conn_;
};

TEST(ServerPoolTest, ConcurrentCheckoutCheckinKeepsStatsConsistent) {
  constexpr int kThreads = 4;
  constexpr int kCycles = 10000;
  auto settings = make_settings(3, 0);
  settings.recycle_s = 0;
  ServerPool pool(make_key(), settings, kThreads);
  std::atomic<std::uint64_t> next_id{100};
  std::atomic<int> in_use{0};
  std::atomic<int> max_in_use{0};
  std::atomic<int> create_attempts{0};

  // The test holds every slot until all threads have queued, so the cross-thread hand-off to
  // waiters is exercised however the threads get scheduled.
  std::vector<std::unique_ptr<Connection>> held;
  for (std::uint64_t id = 1; id <= 3; ++id)
    held.push_back(open_new(pool, id));

  auto worker = [&](int index) {
    BlockingWaiter waiter;
    for (int i = 0; i < kCycles; ++i) {
      auto r = pool.checkout(index, &waiter);
      std::unique_ptr<Connection> conn;
      if (r.kind == CheckoutKind::Idle) {
        conn = std::move(r.conn);
      } else {
        if (r.kind == CheckoutKind::Wait) conn = waiter.wait();
        if (!conn) {  // a Create permit, from checkout or granted
          // Every tenth attempt fails to connect, exercising create_failed hand-offs.
          if (create_attempts.fetch_add(1) % 10 == 9) {
            pool.create_failed();
            --i;
            continue;
          }
          pool.created();
          conn = make_conn(next_id++, T0, index);
        }
      }
      int now_in_use = ++in_use;
      int seen = max_in_use.load();
      while (now_in_use > seen && !max_in_use.compare_exchange_weak(seen, now_in_use)) {
      }
      if (i % 4 == 0) std::this_thread::yield();  // hold it now and then so others queue
      --in_use;
      if (i % 997 == 0) {
        pool.discard(std::move(conn));
      } else {
        auto back = pool.checkin(std::move(conn), T0 + seconds(1));
        EXPECT_EQ(back, nullptr);
      }
    }
  };

  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back(worker, t);
  while (pool.stats().waiting < kThreads)
    std::this_thread::yield();
  for (auto& conn : held)
    park(pool, std::move(conn), T0 + seconds(1));
  for (auto& t : threads)
    t.join();
  auto elapsed = std::chrono::steady_clock::now() - start;

  auto s = pool.stats();
  EXPECT_EQ(s.checked_out, 0);
  EXPECT_EQ(s.opening, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_LE(s.size, 3);
  EXPECT_EQ(s.size, s.checked_in);
  EXPECT_LE(max_in_use.load(), 3);
  EXPECT_EQ(s.total_checkouts, static_cast<std::uint64_t>(kThreads) * kCycles + 3);
  EXPECT_EQ(s.total_created, s.total_closed + static_cast<std::uint64_t>(s.size));
  EXPECT_GE(s.total_waits, static_cast<std::uint64_t>(kThreads));
  EXPECT_LT(elapsed, std::chrono::seconds(10));  // typically well under a second
}

}  // namespace
}  // namespace pgvalve::pool
