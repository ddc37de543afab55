#include "stats/latency_histogram.h"

#include <gtest/gtest.h>

namespace pgvalve::stats {
namespace {

TEST(LatencyHistogram, SmallDurationsAreExact) {
  for (std::uint64_t us = 0; us < LatencyHistogram::kExact; ++us) {
    EXPECT_EQ(LatencyHistogram::bucket_of(us), us);
    EXPECT_EQ(LatencyHistogram::bucket_low(us), us);
  }
}

TEST(LatencyHistogram, EveryDurationFallsInsideItsBucket) {
  for (std::uint64_t us :
       {8ull, 9ull, 15ull, 16ull, 100ull, 1000ull, 123456ull, 999999ull, (1ull << 33) + 5}) {
    const auto b = LatencyHistogram::bucket_of(us);
    EXPECT_LE(LatencyHistogram::bucket_low(b), us) << us;
    EXPECT_LT(us, LatencyHistogram::bucket_low(b) + LatencyHistogram::bucket_width(b)) << us;
    // At most 1/4 of the bucket's low end wide: percentiles within 1/8 at its middle.
    EXPECT_LE(LatencyHistogram::bucket_width(b) * 4, LatencyHistogram::bucket_low(b)) << us;
  }
  // Past the range: the last bucket.
  EXPECT_EQ(LatencyHistogram::bucket_of(~0ull), LatencyHistogram::kBuckets - 1);
}

TEST(LatencyHistogram, QuantilesReadTheRightBucket) {
  LatencyHistogram h;
  EXPECT_EQ(h.quantile_micros(0.5), 0u);
  for (int i = 0; i < 90; ++i)
    h.record(1000);  // 1 ms
  for (int i = 0; i < 10; ++i)
    h.record(200000);  // 200 ms
  EXPECT_EQ(h.count(), 100u);
  const auto p50 = h.quantile_micros(0.50);
  const auto p95 = h.quantile_micros(0.95);
  EXPECT_NEAR(static_cast<double>(p50), 1000.0, 1000.0 / 8);
  EXPECT_NEAR(static_cast<double>(p95), 200000.0, 200000.0 / 8);
  EXPECT_EQ(h.quantile_micros(0.90), p50);  // the 90th value is still 1 ms
}

TEST(LatencyHistogram, MergeAddsCounts) {
  LatencyHistogram a, b;
  a.record(10);
  b.record(10);
  b.record(5000);
  a.merge(b);
  EXPECT_EQ(a.count(), 3u);
  EXPECT_NEAR(static_cast<double>(a.quantile_micros(1.0)), 5000.0, 5000.0 / 8);
}

}  // namespace
}  // namespace pgvalve::stats
