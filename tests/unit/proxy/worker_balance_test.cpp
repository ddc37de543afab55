// Which clients move between workers: packed onto the fewest workers that carry them easily,
// spread when a worker gets busy, left alone in between.
#include "proxy/worker_balance.h"

#include <vector>

#include <gtest/gtest.h>

namespace pgvalve::proxy {
namespace {

std::optional<ClientMove> plan(std::vector<WorkerLoad> workers) {
  return plan_client_move(workers);
}

TEST(WorkerBalance, TwoLightlyLoadedWorkersArePackedOntoTheFirst) {
  EXPECT_EQ(plan({{0.20, 32}, {0.22, 32}}), (ClientMove{1, 0, 32}));
}

TEST(WorkerBalance, PacksTheHighestWorkerWithClientsIntoTheLowestWithRoom) {
  // Worker 0 has no room for worker 3's load; worker 1 has.
  EXPECT_EQ(plan({{0.45, 10}, {0.10, 5}, {0.0, 0}, {0.08, 4}}), (ClientMove{3, 1, 4}));
}

TEST(WorkerBalance, AWorkerWhoseClientsRunNothingIsPassedOver) {
  // Worker 2's clients only sit there (they move only when they run something anyway): worker
  // 1's busy ones are packed instead.
  EXPECT_EQ(plan({{0.20, 10}, {0.15, 6}, {0.0, 3}}), (ClientMove{1, 0, 6}));
  EXPECT_EQ(plan({{0.30, 10}, {0.0, 3}}), std::nullopt);
}

TEST(WorkerBalance, AnIdleProcessIsLeftAlone) {
  // Nothing to save below kPackFrom: tests and quiet fleets see no moves.
  EXPECT_EQ(plan({{0.001, 3}, {0.002, 4}}), std::nullopt);
  EXPECT_EQ(plan({{0.0, 0}, {0.0, 0}}), std::nullopt);
}

TEST(WorkerBalance, WorkersThatTogetherWouldBeBusyStayApart) {
  EXPECT_EQ(plan({{0.30, 20}, {0.30, 20}}), std::nullopt);
  EXPECT_EQ(plan({{0.60, 40}, {0.0, 0}}), std::nullopt);
}

TEST(WorkerBalance, ABusyWorkerGivesClientsToTheIdlestUntilTheyAreEven) {
  // 0.9 against 0.1: a bit less than half of its clients.
  const auto move = plan({{0.90, 60}, {0.10, 4}});
  ASSERT_TRUE(move);
  EXPECT_EQ(move->from, 0);
  EXPECT_EQ(move->to, 1);
  EXPECT_EQ(move->clients, 26);
  // Among several, the least busy one takes them.
  const auto three = plan({{0.95, 40}, {0.30, 10}, {0.05, 2}});
  ASSERT_TRUE(three);
  EXPECT_EQ(three->to, 2);
}

TEST(WorkerBalance, NoSpreadWhenEveryOtherWorkerIsBusyToo) {
  EXPECT_EQ(plan({{0.90, 60}, {0.50, 30}}), std::nullopt);
  // One worker: nowhere to go.
  EXPECT_EQ(plan({{0.99, 64}}), std::nullopt);
}

TEST(WorkerBalance, ABusyWorkerWithOneClientKeepsIt) {
  EXPECT_EQ(plan({{0.95, 1}, {0.0, 0}}), std::nullopt);
}

TEST(WorkerBalance, WhatOneStepDoesTheNextDoesNotUndo) {
  // Packed: one worker at about the sum, below the spread threshold.
  EXPECT_EQ(plan({{0.45, 64}, {0.0, 0}}), std::nullopt);
  // Spread: two workers near half the load each, above the pack threshold together.
  EXPECT_EQ(plan({{0.42, 32}, {0.40, 32}}), std::nullopt);
}

}  // namespace
}  // namespace pgvalve::proxy
