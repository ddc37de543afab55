#include "stats/worker_counters.h"

#include <gtest/gtest.h>

namespace pgvalve::stats {
namespace {

TEST(WorkerCounters, WorkersAreSummedAndWaitsLandInTheirBuckets) {
  WorkerCounters a, b;
  a.add_received(100);
  b.add_received(20);
  a.add_sent(7);
  a.record_checkout_wait(50);       // 50 us: first bucket (<= 100 us)
  b.record_checkout_wait(2000);     // 2 ms: (1 ms, 5 ms]
  b.record_checkout_wait(9000000);  // 9 s: +Inf
  CounterTotals t;
  a.add_to(t);
  b.add_to(t);
  EXPECT_EQ(t.bytes_received, 120u);
  EXPECT_EQ(t.bytes_sent, 7u);
  EXPECT_EQ(t.checkout_waits[0], 1u);
  EXPECT_EQ(t.checkout_waits[3], 1u);
  EXPECT_EQ(t.checkout_waits[kCheckoutWaitBuckets - 1], 1u);
  EXPECT_EQ(t.checkout_wait_micros, 50u + 2000u + 9000000u);
}

}  // namespace
}  // namespace pgvalve::stats
