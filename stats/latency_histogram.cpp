#include "stats/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace pgvalve::stats {

std::size_t LatencyHistogram::bucket_of(std::uint64_t micros) {
  if (micros < kExact) return static_cast<std::size_t>(micros);
  const int power = std::bit_width(micros) - 1;  // >= 3
  const auto sub = static_cast<std::size_t>((micros >> (power - 2)) & (kPerPowerOfTwo - 1));
  const std::size_t bucket = kExact + static_cast<std::size_t>(power - 3) * kPerPowerOfTwo + sub;
  return bucket < kBuckets ? bucket : kBuckets - 1;
}

std::uint64_t LatencyHistogram::bucket_low(std::size_t bucket) {
  if (bucket < kExact) return bucket;
  const std::size_t power = 3 + (bucket - kExact) / kPerPowerOfTwo;
  const std::size_t sub = (bucket - kExact) % kPerPowerOfTwo;
  return (std::uint64_t{1} << power) + sub * (std::uint64_t{1} << (power - 2));
}

std::uint64_t LatencyHistogram::bucket_width(std::size_t bucket) {
  if (bucket < kExact) return 1;
  const std::size_t power = 3 + (bucket - kExact) / kPerPowerOfTwo;
  return std::uint64_t{1} << (power - 2);
}

void LatencyHistogram::record(std::uint64_t micros) {
  std::uint32_t& slot = counts_[bucket_of(micros)];
  if (slot == std::numeric_limits<std::uint32_t>::max()) {
    for (auto& c : counts_)
      c = (c + 1) / 2;
  }
  ++slot;
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
  for (std::size_t i = 0; i < kBuckets; ++i) {
    const std::uint64_t sum = std::uint64_t{counts_[i]} + other.counts_[i];
    // A merged snapshot saturates rather than wraps.
    counts_[i] = static_cast<std::uint32_t>(
        std::min<std::uint64_t>(sum, std::numeric_limits<std::uint32_t>::max()));
  }
}

std::uint64_t LatencyHistogram::count() const {
  std::uint64_t n = 0;
  for (auto c : counts_)
    n += c;
  return n;
}

std::uint64_t LatencyHistogram::quantile_micros(double q) const {
  const std::uint64_t n = count();
  if (n == 0) return 0;
  if (q <= 0) q = 0;
  if (q > 1) q = 1;
  // The rank of the value at q, 1-based ("nearest rank").
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(n)));
  if (rank == 0) rank = 1;
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) return bucket_low(i) + bucket_width(i) / 2;
  }
  return bucket_low(kBuckets - 1);
}

}  // namespace pgvalve::stats
