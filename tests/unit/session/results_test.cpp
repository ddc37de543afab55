// The rows of a result (and COPY data) pass through unchanged however the server's bytes are cut
// into reads; what follows them is still matched with the request it answers.
#include <gtest/gtest.h>

#include <string>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

std::string rows(int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += data_row({std::to_string(i), "device-" + std::to_string(i % 7)});
  return out;
}

TEST(SessionResults, ManyRowsPassThroughUnchanged) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from readings"), *server);
  const std::string answer = row_description(2) + rows(500) + complete("SELECT 500") + ready('I');
  Step s = h.server(answer);
  EXPECT_EQ(s.consumed, answer.size());
  EXPECT_EQ(s.to_client, answer);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionResults, RowsCutAtEveryPointArriveWholeAndInOrder) {
  const std::string answer = row_description(2) + rows(40) + complete("SELECT 40") + ready('I');
  for (std::size_t cut = 1; cut < answer.size(); cut += 7) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query("select * from readings"), *server);
    // A read ends at `cut`; the unconsumed bytes come again with the next read, as the I/O
    // layer keeps them.
    Step first = h.server(answer.substr(0, cut));
    ASSERT_LE(first.consumed, cut);
    Step second = h.server(answer.substr(first.consumed));
    EXPECT_EQ(first.to_client + second.to_client, answer) << "cut at " << cut;
    EXPECT_EQ(second.consumed, answer.size() - first.consumed);
    EXPECT_TRUE(second.has_op(LinkOp::Kind::Release)) << "cut at " << cut;
  }
}

TEST(SessionResults, AnErrorAfterRowsEndsTheRequest) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1 / (100 - g) from generate_series(1, 200) g"), *server);
  const std::string answer = row_description() + rows(99) + error_message("22012") + ready('I');
  Step s = h.server(answer);
  EXPECT_EQ(s.to_client, answer);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionResults, RowsOfSeveralStatementsInOneQueryEachEndTheirOwn) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1; select 2"), *server);
  const std::string answer = row_description() + rows(3) + complete("SELECT 3") +
                             row_description() + rows(4) + complete("SELECT 4") + ready('I');
  Step s = h.server(answer);
  EXPECT_EQ(s.to_client, answer);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST(SessionResults, RowsOfAnExtendedFlightPassThrough) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight = parse("", "select * from readings") + bind_to("", "") +
                             describe('P', "") + execute("") + sync();
  h.send(flight, *server);
  const std::string answer = parse_complete() + bind_complete() + row_description(2) + rows(300) +
                             complete("SELECT 300") + ready('I');
  Step s = h.server(answer);
  EXPECT_EQ(s.to_client, answer);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

}  // namespace
}  // namespace pgvalve::session::testing
