// The receive buffers' memory budget (limits.message_memory_bytes): large messages cannot take
// the reserve ordinary messages need, a buffer grows to its message's size at most, and a
// refusal says whether waiting can help.
#include "session/input_buffer.h"

#include <gtest/gtest.h>

#include <cstring>

#include "config/config.h"

namespace pgvalve::session {
namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;
using Take = MemoryBudget::Take;

TEST(MemoryBudget, LargeMessagesTogetherLeaveAQuarterForSmallOnes) {
  MemoryBudget budget(8 * MiB);
  // A large message takes up to three quarters...
  EXPECT_EQ(budget.try_take(5 * MiB, 6 * MiB), Take::Taken);
  EXPECT_EQ(budget.try_take(MiB, 6 * MiB), Take::Taken);
  // ...and not a byte more, nor does another large one: they wait.
  EXPECT_EQ(budget.try_take(1, 6 * MiB), Take::Wait);
  EXPECT_EQ(budget.try_take(4 * KiB, 2 * MiB), Take::Wait);
  EXPECT_EQ(budget.in_use(), static_cast<std::int64_t>(6 * MiB));
  // Messages up to 1 MiB still have the last quarter.
  EXPECT_EQ(budget.try_take(MiB, MiB), Take::Taken);
  EXPECT_EQ(budget.try_take(MiB, MiB), Take::Taken);
  EXPECT_EQ(budget.try_take(1, MiB), Take::Wait);
  budget.give_back(2 * MiB);
  EXPECT_EQ(budget.try_take(28 * KiB, 28 * KiB), Take::Taken);
}

TEST(MemoryBudget, AMessageLargerThanItsKindMayEverHoldIsNeverTaken) {
  MemoryBudget budget(8 * MiB);
  EXPECT_EQ(budget.try_take(4 * KiB, 6 * MiB + 1), Take::Never);
  EXPECT_EQ(budget.in_use(), 0);
  MemoryBudget tiny(64 * KiB);
  EXPECT_EQ(tiny.try_take(4 * KiB, 60 * KiB), Take::Taken);
  EXPECT_EQ(tiny.try_take(8 * KiB, 68 * KiB), Take::Never);
}

// With the defaults, a message as large as limits.max_message_bytes fits in what large
// messages may hold (found by a code review: with both at 256 MiB, messages above 192 MiB were
// refused on an idle proxy).
TEST(MemoryBudget, TheDefaultsReceiveAMessageOfTheLargestSize) {
  const config::Limits limits;
  MemoryBudget budget(limits.message_memory_bytes);
  const auto largest = static_cast<std::size_t>(limits.max_message_bytes);
  EXPECT_EQ(budget.try_take(largest - InputBuffer::kClientBytes, largest), Take::Taken);
}

TEST(MemoryBudget, ALowerLimitAppliesToTheNextTake) {
  MemoryBudget budget(8 * MiB);
  EXPECT_EQ(budget.try_take(MiB, MiB), Take::Taken);
  budget.set_limit(MiB);
  EXPECT_EQ(budget.try_take(1, MiB), Take::Wait);
  budget.give_back(MiB);
  EXPECT_EQ(budget.try_take(1, MiB), Take::Taken);
}

// Fills all the space prepare() offers; returns how much that was.
std::size_t fill(InputBuffer& in, std::size_t message_bytes) {
  auto space = in.prepare(message_bytes);
  std::memset(space.data(), 'x', space.size());
  in.commit(space.size());
  return space.size();
}

TEST(InputBuffer, GrowsByDoublingButNeverPastTheMessagesSize) {
  MemoryBudget budget(256 * MiB);
  InputBuffer in(4 * KiB, &budget);
  const std::size_t message = 5 * MiB + 123;
  std::size_t got = 0;
  while (got < message) {
    ASSERT_TRUE(in.size() < message);
    got += fill(in, message);
  }
  EXPECT_EQ(in.size(), message);
  EXPECT_EQ(in.capacity(), message);  // 4 KiB doubled to 4 MiB, then the message's size
  EXPECT_EQ(budget.in_use(), static_cast<std::int64_t>(message - 4 * KiB));
  in.consume(message);
  in.shrink_if_empty();
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(InputBuffer, WithoutTheMessagesSizeItDoubles) {
  MemoryBudget budget(256 * MiB);
  InputBuffer in(4 * KiB, &budget);
  fill(in, 0);
  EXPECT_TRUE(in.full());
  fill(in, 0);
  EXPECT_EQ(in.capacity(), 8 * KiB);
  EXPECT_EQ(budget.in_use(), static_cast<std::int64_t>(4 * KiB));
  in.consume(in.size());
  in.release();
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(InputBuffer, ARefusalSaysWhetherWaitingCanHelp) {
  MemoryBudget budget(8 * MiB);
  InputBuffer hog(4 * KiB, &budget);
  const std::size_t large = 6 * MiB + 4 * KiB;  // beyond its base: all the large messages' share
  while (hog.size() < large)
    fill(hog, large);
  // Another large message: it would fit once the first is done.
  InputBuffer second(4 * KiB, &budget);
  fill(second, 2 * MiB);
  EXPECT_TRUE(second.prepare(2 * MiB).empty());
  EXPECT_EQ(second.refusal(), Take::Wait);
  EXPECT_EQ(second.capacity(), 4 * KiB);
  // An ordinary one goes on from the reserve.
  InputBuffer ordinary(4 * KiB, &budget);
  fill(ordinary, 20 * KiB);
  EXPECT_FALSE(ordinary.prepare(20 * KiB).empty());
  EXPECT_EQ(ordinary.refusal(), Take::Taken);
  // One larger than the large messages' share can never be received.
  InputBuffer too_large(4 * KiB, &budget);
  fill(too_large, 7 * MiB);
  EXPECT_TRUE(too_large.prepare(7 * MiB).empty());
  EXPECT_EQ(too_large.refusal(), Take::Never);
  // The first is done: the second grows now.
  hog.consume(hog.size());
  hog.release();
  EXPECT_FALSE(second.prepare(2 * MiB).empty());
  EXPECT_EQ(second.refusal(), Take::Taken);
}

}  // namespace
}  // namespace pgvalve::session
