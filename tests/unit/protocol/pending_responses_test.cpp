#include "protocol/pending_responses.h"

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

using Kind = PendingResponse::Kind;

TEST(PendingResponses, MatchesEachRequestWithItsCompletion) {
  EXPECT_EQ(match_response(Kind::ParseComplete, '1'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::BindComplete, '2'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::CloseComplete, '3'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::ReadyForQuery, 'Z'), ResponseMatch::Completes);
}

TEST(PendingResponses, DescribeEndsWithRowDescriptionOrNoData) {
  EXPECT_EQ(match_response(Kind::Describe, 't'), ResponseMatch::Intermediate);
  EXPECT_EQ(match_response(Kind::Describe, 'T'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::Describe, 'n'), ResponseMatch::Completes);
}

TEST(PendingResponses, ExecuteEndsWithCompleteEmptyOrSuspended) {
  EXPECT_EQ(match_response(Kind::Execute, 'D'), ResponseMatch::Intermediate);
  EXPECT_EQ(match_response(Kind::Execute, 'G'), ResponseMatch::Intermediate);
  EXPECT_EQ(match_response(Kind::Execute, 'C'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::Execute, 'I'), ResponseMatch::Completes);
  EXPECT_EQ(match_response(Kind::Execute, 's'), ResponseMatch::Completes);
}

TEST(PendingResponses, AsyncMessagesBelongToNoRequest) {
  for (char tag : {'N', 'A', 'S'}) {
    EXPECT_EQ(match_response(Kind::Execute, tag), ResponseMatch::Async) << tag;
    EXPECT_EQ(match_response(Kind::ReadyForQuery, tag), ResponseMatch::Async) << tag;
  }
}

TEST(PendingResponses, ErrorEndsExtendedRequestButNotSimpleQuery) {
  EXPECT_EQ(match_response(Kind::BindComplete, 'E'), ResponseMatch::Error);
  EXPECT_EQ(match_response(Kind::Execute, 'E'), ResponseMatch::Error);
  // A simple query (or Sync) still ends with ReadyForQuery after its errors.
  EXPECT_EQ(match_response(Kind::ReadyForQuery, 'E'), ResponseMatch::Intermediate);
}

TEST(PendingResponses, FifoOrderSurvivesGrowthAndWrapAround) {
  PendingResponses q;
  std::uint32_t next_in = 0;
  std::uint32_t next_out = 0;
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < round % 37; ++i) {
      PendingResponse r;
      r.note = next_in++;
      q.push(r);
    }
    while (q.size() > 3) {
      EXPECT_EQ(q.front().note, next_out++);
      q.pop();
    }
  }
  while (!q.empty()) {
    EXPECT_EQ(q.front().note, next_out++);
    q.pop();
  }
  EXPECT_EQ(next_in, next_out);
}

TEST(PendingResponses, DropBehindFrontKeepsTheFrontAndTheRestInOrder) {
  PendingResponses q;
  // Wrapped around: the front sits at the end of the ring.
  for (std::uint32_t i = 0; i < 7; ++i) {
    PendingResponse r;
    r.note = i;
    q.push(r);
  }
  for (int i = 0; i < 6; ++i)
    q.pop();
  for (std::uint32_t i = 7; i < 12; ++i) {
    PendingResponse r;
    r.note = i;
    q.push(r);
  }
  q.drop_behind_front(2);  // 6 [7 8] 9 10 11
  ASSERT_EQ(q.size(), 4u);
  EXPECT_EQ(q.at(0).note, 6u);
  EXPECT_EQ(q.at(1).note, 9u);
  EXPECT_EQ(q.at(3).note, 11u);
  q.drop_behind_front(4);  // more than stand behind the front: nothing
  EXPECT_EQ(q.size(), 4u);
  q.drop_behind_front(3);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q.front().note, 6u);
}

TEST(PendingResponses, ClearEmpties) {
  PendingResponses q;
  q.push({});
  q.push({});
  q.clear();
  EXPECT_TRUE(q.empty());
  q.pop();  // harmless when empty
  EXPECT_EQ(q.size(), 0u);
}

}  // namespace
}  // namespace pgvalve::protocol
