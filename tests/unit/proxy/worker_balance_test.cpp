// How many workers serve clients and which clients move: a light load is packed onto the fewest
// workers that carry it easily, a busy worker spreads its clients again, and in between nothing
// moves.
#include "proxy/worker_balance.h"

#include <vector>

#include <gtest/gtest.h>

namespace pgvalve::proxy {
namespace {

WorkerPlan plan(std::vector<WorkerLoad> workers, int active) {
  return plan_workers(workers, active);
}

using Moves = std::vector<ClientMove>;
constexpr int kAll = ClientMove::kAll;

TEST(WorkerBalance, TwoLightlyLoadedWorkersBecomeOne) {
  const auto p = plan({{0.20, 32}, {0.22, 32}}, 2);
  EXPECT_EQ(p.active, 1);
  EXPECT_EQ(p.moves, (Moves{{1, 0, kAll}}));
}

TEST(WorkerBalance, AParkedWorkerKeepsGivingItsClientsAway) {
  // Clients that connected to worker 1 since it was parked follow the others.
  const auto p = plan({{0.40, 60}, {0.01, 4}}, 1);
  EXPECT_EQ(p.active, 1);
  EXPECT_EQ(p.moves, (Moves{{1, 0, kAll}}));
  // Also when it has none: the order hands over the clients that connect to it.
  EXPECT_EQ(plan({{0.40, 64}, {0.0, 0}}, 1).moves, (Moves{{1, 0, kAll}}));
}

TEST(WorkerBalance, OneWorkerAtATimeIsParkedWhileTheRestCarryTheLoadEasily) {
  // 0.9 of a core in all: three workers under half a core each would do, two would not.
  const auto p = plan({{0.25, 10}, {0.25, 10}, {0.2, 8}, {0.2, 8}}, 4);
  EXPECT_EQ(p.active, 3);
  EXPECT_EQ(p.moves, (Moves{{3, 2, kAll}}));  // to the least busy of the active ones
  EXPECT_EQ(plan({{0.35, 13}, {0.35, 13}, {0.35, 12}, {0.0, 0}}, 3).active, 3);
}

TEST(WorkerBalance, AnIdleProcessIsLeftAlone) {
  // Nothing to save below kPackFrom: tests and quiet fleets see no moves.
  const auto p = plan({{0.001, 3}, {0.002, 4}}, 2);
  EXPECT_EQ(p.active, 2);
  EXPECT_TRUE(p.moves.empty());
  EXPECT_EQ(plan({{0.0, 0}, {0.0, 0}}, 2).moves, Moves{});
}

TEST(WorkerBalance, WorkersThatTogetherWouldBeBusyStayApart) {
  const auto p = plan({{0.30, 20}, {0.30, 20}}, 2);
  EXPECT_EQ(p.active, 2);
  EXPECT_TRUE(p.moves.empty());
}

TEST(WorkerBalance, ABusyWorkerUnparksTheNextAndGivesItPartOfItsClients) {
  // 0.9 against 0: half of the difference, a bit under half of its clients.
  const auto p = plan({{0.90, 60}, {0.0, 0}}, 1);
  EXPECT_EQ(p.active, 2);
  EXPECT_EQ(p.moves, (Moves{{0, 1, 30}}));
  // With three workers, the second is unparked; the third stays parked.
  const auto three = plan({{0.95, 40}, {0.0, 0}, {0.0, 2}}, 1);
  EXPECT_EQ(three.active, 2);
  EXPECT_EQ(three.moves[0], (ClientMove{0, 1, 20}));
  EXPECT_EQ(three.moves[1], (ClientMove{2, 1, kAll}));
}

TEST(WorkerBalance, WithEveryWorkerActiveABusyOneGivesClientsToTheIdlest) {
  const auto p = plan({{0.90, 60}, {0.10, 4}}, 2);
  EXPECT_EQ(p.moves, (Moves{{0, 1, 26}}));
  EXPECT_EQ(plan({{0.95, 40}, {0.30, 10}, {0.05, 2}}, 3).moves[0].to, 2);
  // Nowhere less busy to go.
  EXPECT_TRUE(plan({{0.90, 60}, {0.50, 30}}, 2).moves.empty());
  // One client cannot be split.
  EXPECT_TRUE(plan({{0.95, 1}, {0.0, 0}}, 2).moves.empty());
}

TEST(WorkerBalance, OneWorkerHasNothingToDecide) {
  const auto p = plan({{0.99, 64}}, 1);
  EXPECT_EQ(p.active, 1);
  EXPECT_TRUE(p.moves.empty());
}

TEST(WorkerBalance, WhatOneStepDoesTheNextDoesNotUndo) {
  // Packed: one worker at about the sum, below the spread threshold, stays packed.
  EXPECT_EQ(plan({{0.45, 64}, {0.0, 0}}, 1).active, 1);
  // Spread: two workers near half the load each, above the pack threshold together.
  EXPECT_EQ(plan({{0.42, 32}, {0.40, 32}}, 2).active, 2);
}

}  // namespace
}  // namespace pgvalve::proxy
