#include "routing/replica_choice.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace pgvalve::routing {
namespace {

TEST(ReplicaChoice, NoCandidateNoChoice) {
  std::uint64_t turn = 0;
  EXPECT_FALSE(choose_replica({}, LoadBalance::RoundRobin, turn, 0));
}

TEST(ReplicaChoice, RoundRobinVisitsEachInTurn) {
  std::vector<ReplicaCandidate> c{{1, 0}, {2, 0}, {3, 0}};
  std::uint64_t turn = 0;
  std::vector<std::size_t> seen;
  for (int i = 0; i < 6; ++i)
    seen.push_back(*choose_replica(c, LoadBalance::RoundRobin, turn, 0));
  EXPECT_EQ(seen, (std::vector<std::size_t>{1, 2, 3, 1, 2, 3}));
}

TEST(ReplicaChoice, RandomUsesTheNumberDrawn) {
  std::vector<ReplicaCandidate> c{{4, 0}, {7, 0}};
  std::uint64_t turn = 0;
  EXPECT_EQ(choose_replica(c, LoadBalance::Random, turn, 10), 4u);
  EXPECT_EQ(choose_replica(c, LoadBalance::Random, turn, 11), 7u);
}

TEST(ReplicaChoice, LeastConnectionsTakesTheLeastBusy) {
  std::vector<ReplicaCandidate> c{{1, 5}, {2, 1}, {3, 3}};
  std::uint64_t turn = 0;
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(choose_replica(c, LoadBalance::LeastConnections, turn, 0), 2u);
}

TEST(ReplicaChoice, LeastConnectionsSharesTies) {
  std::vector<ReplicaCandidate> c{{1, 0}, {2, 0}};
  std::uint64_t turn = 0;
  std::map<std::size_t, int> count;
  for (int i = 0; i < 10; ++i)
    ++count[*choose_replica(c, LoadBalance::LeastConnections, turn, 0)];
  EXPECT_EQ(count[1], 5);
  EXPECT_EQ(count[2], 5);
}

}  // namespace
}  // namespace pgvalve::routing
