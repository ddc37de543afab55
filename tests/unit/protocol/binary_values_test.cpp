#include "protocol/binary_values.h"

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

using namespace std::string_literals;

TEST(BinaryValues, IntegersAreSignExtendedByTheirSize) {
  EXPECT_EQ(binary_integer("\xff\xfe"s), -2);
  EXPECT_EQ(binary_integer("\x00\x00\x01\x00"s), 256);
  EXPECT_EQ(binary_integer("\x80\x00\x00\x00\x00\x00\x00\x00"s), INT64_MIN);
  EXPECT_EQ(binary_integer("\x01\x02\x03"s), std::nullopt) << "no integer type is 3 bytes";
  EXPECT_EQ(binary_integer(""), std::nullopt);
}

TEST(BinaryValues, IntegersAreWrittenBackOnlyWhenTheyFit) {
  EXPECT_EQ(binary_integer_of(-2, 2), "\xff\xfe"s);
  EXPECT_EQ(binary_integer_of(32768, 2), std::nullopt);
  EXPECT_EQ(binary_integer_of(-32768, 2), "\x80\x00"s);
  EXPECT_EQ(binary_integer(*binary_integer_of(1234567890123, 8)), 1234567890123);
}

TEST(BinaryValues, FloatsRoundTripInBothWidths) {
  EXPECT_EQ(binary_float(binary_float_of(1.5, 4)), 1.5);
  EXPECT_EQ(binary_float(binary_float_of(-0.1, 8)), -0.1);
  EXPECT_EQ(binary_float_of(1.0, 8), "\x3f\xf0\x00\x00\x00\x00\x00\x00"s);
}

}  // namespace
}  // namespace pgvalve::protocol
