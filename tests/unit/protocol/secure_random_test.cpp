#include "protocol/secure_random.h"

#include <array>
#include <set>
#include <string>

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

// Every byte of the thread's reserve goes out once: nonces and cancel keys drawn one after the
// other, across many refills, never repeat.
TEST(SecureRandom, NoBytesAreHandedOutTwice) {
  std::set<std::string> seen;
  for (int i = 0; i < 20000; ++i) {
    EXPECT_TRUE(seen.insert(random_bytes(16)).second) << "draw " << i << " repeated an earlier one";
  }
  // Sizes that do not divide the block, and the four bytes of a cancel key, mixed.
  std::set<std::string> mixed;
  for (int i = 0; i < 5000; ++i) {
    std::array<unsigned char, 4> key{};
    fill_random(key);
    EXPECT_TRUE(mixed.insert(random_bytes(18) + std::string(key.begin(), key.end())).second);
  }
}

TEST(SecureRandom, GivesTheSizeAskedForWithEveryByteValue) {
  EXPECT_EQ(random_bytes(0).size(), 0u);
  EXPECT_EQ(random_bytes(1).size(), 1u);
  // Larger than the reserve hands out at once: drawn directly.
  const std::string big = random_bytes(1000);
  EXPECT_EQ(big.size(), 1000u);
  EXPECT_NE(big, random_bytes(1000));
  std::array<bool, 256> values{};
  for (int i = 0; i < 400; ++i) {
    for (unsigned char c : random_bytes(18))
      values[c] = true;
  }
  for (unsigned v = 0; v < 256; ++v)
    EXPECT_TRUE(values[v]) << "byte value " << v << " never came in 7,200 bytes";
}

}  // namespace
}  // namespace pgvalve::protocol
