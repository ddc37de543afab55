#include "protocol/keyed_hash.h"

#include <string>

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

std::string bytes_0_to(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i)
    s.push_back(static_cast<char>(i));
  return s;
}

// The reference vectors of SipHash-2-4 (key 00 01 .. 0f, message 00 01 .. n-1).
TEST(KeyedHash, IsSipHash24) {
  const std::uint64_t k0 = 0x0706050403020100ull;
  const std::uint64_t k1 = 0x0f0e0d0c0b0a0908ull;
  EXPECT_EQ(KeyedHash(k0, k1).finish(), 0x726fdb47dd0e0e31ull);
  EXPECT_EQ(KeyedHash(k0, k1).add_bytes(bytes_0_to(1)).finish(), 0x74f839c593dc67fdull);
  EXPECT_EQ(KeyedHash(k0, k1).add_bytes(bytes_0_to(15)).finish(), 0xa129ca6149be45e5ull);
  // Fed in pieces, the same.
  EXPECT_EQ(KeyedHash(k0, k1)
                .add_bytes(bytes_0_to(15).substr(0, 9))
                .add_bytes(bytes_0_to(15).substr(9))
                .finish(),
            0xa129ca6149be45e5ull);
}

TEST(KeyedHash, PartsAreKeptApart) {
  EXPECT_NE(KeyedHash().add("ab").add("c").finish(), KeyedHash().add("a").add("bc").finish());
  EXPECT_NE(KeyedHash().add("").add("x").finish(), KeyedHash().add("x").add("").finish());
  EXPECT_EQ(KeyedHash().add("ab").add("c").finish(), KeyedHash().add("ab").add("c").finish());
}

TEST(KeyedHash, DependsOnTheKey) {
  EXPECT_NE(KeyedHash(1, 2).add("select 1").finish(), KeyedHash(1, 3).add("select 1").finish());
  EXPECT_NE(KeyedHash(1, 2).add("select 1").finish(), KeyedHash().add("select 1").finish());
}

}  // namespace
}  // namespace pgvalve::protocol
