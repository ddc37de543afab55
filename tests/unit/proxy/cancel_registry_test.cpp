// The process ids given to clients as their cancel key: after 2^31 - 1 logins they start at 1
// again, and never give a live client's id to another (found by a review: the counter
// overflowed, undefined behaviour, and a new client's key replaced a long-lived client's, whose
// cancels were then dropped).
#include "proxy/cancel_registry.h"

#include <cstdint>
#include <set>

#include <gtest/gtest.h>

namespace pgvalve::proxy {
namespace {

TEST(NextProcessId, CountsUpFromOne) {
  const std::set<std::int32_t> none;
  const auto taken = [&](std::int32_t id) { return none.contains(id); };
  EXPECT_EQ(next_process_id(0, taken), 1);
  EXPECT_EQ(next_process_id(1, taken), 2);
  EXPECT_EQ(next_process_id(41, taken), 42);
}

TEST(NextProcessId, WrapsToOneAfterTheLargest) {
  const std::set<std::int32_t> none;
  const auto taken = [&](std::int32_t id) { return none.contains(id); };
  EXPECT_EQ(next_process_id(INT32_MAX - 1, taken), INT32_MAX);
  EXPECT_EQ(next_process_id(INT32_MAX, taken), 1);
}

TEST(NextProcessId, SkipsIdsLiveClientsHold) {
  // Clients that logged in first and stayed hold 1, 2 and 4 when the ids come round again.
  const std::set<std::int32_t> live{1, 2, 4, INT32_MAX};
  const auto taken = [&](std::int32_t id) { return live.contains(id); };
  EXPECT_EQ(next_process_id(INT32_MAX - 1, taken), 3);
  EXPECT_EQ(next_process_id(3, taken), 5);
  EXPECT_EQ(next_process_id(0, taken), 3);
}

}  // namespace
}  // namespace pgvalve::proxy
