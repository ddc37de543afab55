// Durations of one statement shape, in log-linear buckets: exact below 8 µs, then four buckets
// per power of two up to 2^34 µs (about 4.8 hours), so a percentile read from it is within 1/8
// of the true value. Fixed size (no allocation), mergeable across workers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace pgvalve::stats {

class LatencyHistogram {
 public:
  static constexpr std::size_t kExact = 8;
  static constexpr std::size_t kPerPowerOfTwo = 4;
  static constexpr std::size_t kBuckets = kExact + 31 * kPerPowerOfTwo;

  void record(std::uint64_t micros);
  void merge(const LatencyHistogram& other);
  std::uint64_t count() const;
  // The duration at quantile q (0 < q <= 1): the middle of the bucket holding it; 0 when empty.
  std::uint64_t quantile_micros(double q) const;

  static std::size_t bucket_of(std::uint64_t micros);
  static std::uint64_t bucket_low(std::size_t bucket);    // smallest duration in it
  static std::uint64_t bucket_width(std::size_t bucket);  // how many microseconds it covers

 private:
  // 32-bit counts keep an entry small; a bucket about to overflow halves them all, which keeps
  // the shape that percentiles read.
  std::array<std::uint32_t, kBuckets> counts_{};
};

}  // namespace pgvalve::stats
