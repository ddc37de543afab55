// Server messages too large to hold pass through as they arrive; what follows them is still
// matched with the requests it answers, and pgvalve's own answers are dropped, large or not.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

// Messages above 8 KiB pass through in these tests (pgvalve holds up to 1 MiB by default).
SessionOptions small_holds() {
  SessionOptions o;
  o.stream_server_messages_above = 8 * 1024;
  return o;
}

std::string big_notice() {
  std::string out;
  protocol::ErrorFields e;
  e.severity = "NOTICE";
  e.sqlstate = "00000";
  const std::string text(12000, 'n');
  e.message = text;
  protocol::append_notice_response(out, e);
  return out;
}

TEST(SessionLargeMessages, LargeDataRowPassesThroughInPieces) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("select big from t"), *server);
  const std::string big = data_row({std::string(20000, 'x')});
  const std::string head = row_description() + big.substr(0, 100);
  Step s = h.server(head);
  EXPECT_EQ(s.consumed, head.size());
  EXPECT_EQ(s.to_client, head);
  EXPECT_TRUE(s.ops.empty());

  const std::string middle = big.substr(100, 10000);
  s = h.server(middle);
  EXPECT_EQ(s.consumed, middle.size());
  EXPECT_EQ(s.to_client, middle);

  // The rest of the row, then rows and the end of the answer, matched as usual.
  const std::string tail =
      big.substr(10100) + data_row({"small"}) + complete("SELECT 2") + ready('I');
  s = h.server(tail);
  EXPECT_EQ(s.consumed, tail.size());
  EXPECT_EQ(s.to_client, tail);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionLargeMessages, LargeRowEndingExactlyAtTheReadIsFollowedCorrectly) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("select big from t"), *server);
  const std::string big = data_row({std::string(9000, 'y')});
  h.server(row_description() + big.substr(0, 10));
  Step s = h.server(big.substr(10));
  EXPECT_EQ(s.to_client, big.substr(10));
  s = h.server(command_result("SELECT 1"));
  EXPECT_EQ(s.to_client, command_result("SELECT 1"));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST(SessionLargeMessages, MessagesUnderTheThresholdWaitToBeWhole) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("select v from t"), *server);
  const std::string row = data_row({std::string(4000, 'z')});
  Step s = h.server(row.substr(0, 100));
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_client.empty());
}

TEST(SessionLargeMessages, LargeNoticePassesThrough) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("do $$ begin raise notice '...'; end $$"), *server);
  std::string big;
  protocol::ErrorFields e;
  e.severity = "NOTICE";
  e.sqlstate = "00000";
  const std::string text(12000, 'n');
  e.message = text;
  protocol::append_notice_response(big, e);
  Step s = h.server(big.substr(0, 50));
  EXPECT_EQ(s.to_client, big.substr(0, 50));
  s = h.server(big.substr(50) + command_result("DO"));
  EXPECT_EQ(s.to_client, big.substr(50) + command_result("DO"));
}

TEST(SessionLargeMessages, LargeRowOfPgvalvesOwnQueryIsDropped) {
  SessionHarness h(small_holds());
  auto first = SessionHarness::fresh_server();
  const std::string path = "'" + std::string(10000, 'p') + "'";
  h.send(query("select set_config('search_path', " + path + ", false)"), *first);
  h.answer(row_result("p", "SELECT 1"));
  // On another server the sync sets it again with set_config, which returns the value.
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  Step s = h.linked(*other);
  ASSERT_FALSE(s.to_server.empty());
  const std::string big = data_row({std::string(10000, 'p')});
  const std::string head = row_description() + big.substr(0, 300);
  s = h.server(head);
  EXPECT_EQ(s.consumed, head.size());
  EXPECT_TRUE(s.to_client.empty());
  const std::string tail = big.substr(300) + complete("SELECT 1") + ready();
  s = h.server(tail);
  EXPECT_EQ(s.consumed, tail.size());
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.client(q).to_server, q);
}

TEST(SessionLargeMessages, SyntheticParseCompleteNeverLandsInsideAStreamedMessage) {
  SessionHarness h(small_holds());
  h.client(parse("s1", "select * from wide") + sync());
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(describe('S', "s1") + sync());
  h.answer(parse_complete() + message('t', std::string("\0\0", 2)) + no_data() + ready('T'));
  // Describe of s1 (a table with many columns), then a Parse of a statement the server has.
  Step s = h.client(describe('S', "s1") + parse("s2", "select * from wide") + sync());
  EXPECT_TRUE(s.to_client.empty());
  const std::string wide = row_description(1200);
  ASSERT_GT(wide.size(), 8192u);
  const std::string params = message('t', std::string("\0\0", 2));
  s = h.server(params + wide.substr(0, 1000));
  EXPECT_EQ(s.to_client, params + wide.substr(0, 1000));
  s = h.server(wide.substr(1000) + ready('T'));
  EXPECT_EQ(s.to_client, wide.substr(1000) + parse_complete() + ready('T'));
}

TEST(SessionLargeMessages, SyntheticParseCompleteDueBeforeAStreamedMessageGoesFirst) {
  SessionHarness h(small_holds());
  h.client(parse("s1", "select * from wide") + sync());
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(describe('S', "s1") + sync());
  h.answer(parse_complete() + message('t', std::string("\0\0", 2)) + no_data() + ready('T'));
  // A large notice passes through between requests.
  const std::string notice_bytes = big_notice();
  h.server(notice_bytes.substr(0, 100));
  // Meanwhile: a Parse of a statement the server has, then a query answered by a wide row
  // description that passes through too.
  Step s = h.client(parse("s2", "select * from wide") + flush() + query("select * from wide"));
  EXPECT_TRUE(s.to_client.empty());
  const std::string wide = row_description(1200);
  s = h.server(notice_bytes.substr(100) + wide.substr(0, 500));
  EXPECT_EQ(s.to_client, notice_bytes.substr(100) + parse_complete() + wide.substr(0, 500));
}

TEST(SessionLargeMessages, ServerLostInsideAStreamedRowClosesTheClientWithoutMoreBytes) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("select big from t"), *server);
  const std::string big = data_row({std::string(20000, 'x')});
  h.server(row_description() + big.substr(0, 100));
  Step s = h.lost();
  // Anything written now would be read as the rest of the row.
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_TRUE(s.close_client);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Close);
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionLargeMessages, QueryTimeoutInsideAStreamedRowClosesTheClient) {
  SessionOptions o = small_holds();
  o.query_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("select big from t"), *server);
  h.server(row_description() + data_row({std::string(20000, 'x')}).substr(0, 100), T0 + 1s);
  Step s = h.timer(T0 + 11s);
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_TRUE(s.close_client);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
}

TEST(SessionLargeMessages, NotificationArrivingInsideAStreamedNoticeFollowsIt) {
  SessionHarness h(small_holds());
  h.client(query("LISTEN jobs"));
  h.hub_done();
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  ASSERT_EQ(h.state(), SessionState::Holding);
  const std::string notice_bytes = big_notice();
  h.server(notice_bytes.substr(0, 100));
  const std::string n = notification("jobs", "x");
  EXPECT_TRUE(h.notify(n).to_client.empty());
  Step s = h.server(notice_bytes.substr(100));
  EXPECT_EQ(s.to_client, notice_bytes.substr(100) + n);
}

TEST(SessionLargeMessages, FatalErrorIsNotWrittenInsideAStreamedMessage) {
  SessionHarness h(small_holds());
  auto server = SessionHarness::fresh_server();
  h.send(query("select big from t"), *server);
  h.server(row_description() + data_row({std::string(20000, 'x')}).substr(0, 100));
  Step s = h.memory_refused();
  EXPECT_TRUE(s.close_client);
  EXPECT_TRUE(s.to_client.empty());
}

}  // namespace
}  // namespace pgvalve::session::testing
