// Framing of the client's bytes and hostile input: what a client may not send is refused as
// soon as it can be recognised, partial messages get a deadline, whole messages before a partial
// one are served.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

void expect_refused(const Step& s, std::string_view sqlstate) {
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u) << tags_of(s.to_client);
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(errors[0].sqlstate, sqlstate);
  EXPECT_TRUE(errors[0].message.starts_with("pgvalve:")) << errors[0].message;
}

TEST(SessionFraming, StartupMessageAfterLoginIsRefusedOnItsFirstByte) {
  SessionHarness h;
  Step s = h.client(std::string(1, '\0'));
  expect_refused(s, "08P01");
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(h.state(), SessionState::Closing);
  EXPECT_FALSE(h.session().wants_client_input());
}

TEST(SessionFraming, PasswordMessageAfterLoginIsRefusedOnItsFirstByte) {
  SessionHarness h;
  expect_refused(h.client("p"), "08P01");
}

TEST(SessionFraming, ServerMessageTypeFromClientIsRefused) {
  SessionHarness h;
  // 'Z' is ReadyForQuery, a backend message; 'T' RowDescription.
  expect_refused(h.client("Z"), "08P01");
  SessionHarness h2;
  expect_refused(h2.client(std::string("T\0\0\0\4", 5)), "08P01");
}

TEST(SessionFraming, EveryFrontendMessageTypeIsAccepted) {
  for (char tag : std::string("BCDEFHPQScdf")) {
    SessionHarness h;
    Step s = h.client(std::string(1, tag));
    EXPECT_FALSE(s.close_client) << tag;
    EXPECT_EQ(s.consumed, 0u) << tag;
  }
}

TEST(SessionFraming, ForbiddenTypeAfterWholeMessagesIsRefusedWithoutServingThem) {
  SessionHarness h;
  Step s = h.client(query("select 1") + std::string(1, '\0'));
  expect_refused(s, "08P01");
  EXPECT_FALSE(s.check_out);
  EXPECT_TRUE(s.to_server.empty());
}

TEST(SessionFraming, LengthBelowFourIsRefusedOnTheHeader) {
  SessionHarness h;
  expect_refused(h.client(std::string("Q\0\0\0\3", 5)), "08P01");
}

TEST(SessionFraming, LengthAboveMaxMessageBytesIsRefusedWithoutWaitingForTheBody) {
  SessionOptions o;
  o.max_message_bytes = 1024;
  SessionHarness h(o);
  // Announces 4096 bytes; only the header arrived.
  Step s = h.client(std::string("Q\0\0\x10\0", 5));
  expect_refused(s, "08P01");
  EXPECT_NE(errors_in(s.to_client)[0].message.find("max_message_bytes"), std::string::npos);
}

TEST(SessionFraming, MessageOfExactlyMaxMessageBytesIsAccepted) {
  SessionOptions o;
  o.max_message_bytes = 64;
  SessionHarness h(o);
  std::string sql(64 - 5 - 1, 'x');  // tag + length + text + NUL = 64
  sql.replace(0, 7, "select ");
  auto server = SessionHarness::fresh_server();
  const std::string q = query(sql);
  ASSERT_EQ(q.size(), 64u);
  EXPECT_EQ(h.send(q, *server), q);
}

TEST(SessionFraming, PartialHeaderWaitsAndSetsTheMessageDeadline) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  Step s = h.client(std::string("Q\0\0", 3), T0 + 1s);
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(h.session().next_deadline(), T0 + 11s);
}

TEST(SessionFraming, PartialMessageTimesOutWith08P01) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  const std::string q = query("select 1");
  h.client(q.substr(0, 7), T0);
  // More of the same message does not move the deadline.
  h.client(q.substr(0, 9), T0 + 5s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 10s);
  Step early = h.timer(T0 + 9s);
  EXPECT_FALSE(early.close_client);
  Step s = h.timer(T0 + 10s);
  expect_refused(s, "08P01");
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionFraming, CompletedMessageClearsTheDeadline) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  const std::string q = query("select 1");
  h.client(q.substr(0, 7), T0);
  auto server = SessionHarness::fresh_server();
  h.send(q, *server, nullptr, T0 + 1s);
  h.answer(row_result("1", "SELECT 1"), T0 + 2s);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_FALSE(h.timer(T0 + 20s).close_client);
}

TEST(SessionFraming, WholeMessagesBeforeAPartialOneAreServedAndOnlyTheyConsumed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string first = query("select 1");
  const std::string second = query("select 2");
  const std::string input = first + second + query("select 3").substr(0, 6);
  Step s = h.client(input);
  ASSERT_TRUE(s.check_out);
  h.linked(*server);
  s = h.client(input);
  EXPECT_EQ(s.consumed, first.size() + second.size());
  EXPECT_EQ(s.to_server, first + second);
}

// A client streaming one message after another (COPY) whose reads always end inside a message
// is making progress: each new partial message gets its own deadline.
TEST(SessionFraming, EachNewPartialMessageGetsItsOwnDeadline) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server);
  h.answer(message('G', std::string("\0\0\0", 3)));  // CopyInResponse, text, no columns
  ASSERT_EQ(h.state(), SessionState::Active);
  const std::string row = message('d', "1\t2\n");
  // t=0: half a row; t=8: its rest and half the next; t=16: the rest and half the next.
  Step s = h.client(row.substr(0, 4), T0);
  EXPECT_EQ(s.consumed, 0u);
  s = h.client(row + row.substr(0, 4), T0 + 8s);
  EXPECT_EQ(s.consumed, row.size());
  EXPECT_EQ(h.session().next_deadline(), T0 + 18s);
  s = h.client(row + row.substr(0, 4), T0 + 16s);
  EXPECT_EQ(s.consumed, row.size());
  EXPECT_FALSE(h.timer(T0 + 17s).close_client);
  EXPECT_EQ(h.session().next_deadline(), T0 + 26s);
}

TEST(SessionFraming, TerminateClosesTheClient) {
  SessionHarness h;
  Step s = h.client(terminate());
  EXPECT_TRUE(s.close_client);
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionFraming, TerminateWhileHoldingATransactionRollsTheServerBack) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(terminate());
  EXPECT_TRUE(s.close_client);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionFraming, RequestsBeforeTerminateAreServedFirst) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  Step s = h.client(q + terminate());
  ASSERT_TRUE(s.check_out);
  h.linked(*server);
  s = h.client(q + terminate());
  EXPECT_EQ(s.to_server, q);
  EXPECT_TRUE(s.close_client);
  // The query is in flight: its server cannot be reused.
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
}

TEST(SessionFraming, AMessageThatCanNeverFitTheMemoryBudgetIsRefusedAtOnceWith53400) {
  SessionHarness h;
  Step s = h.memory_refused(false);
  expect_refused(s, "53400");
  EXPECT_EQ(h.state(), SessionState::Closing);
}

// Memory held by other clients' messages is not this client's doing: it is not read until
// some is given back (tried again every kMemoryRetry), and its message's clock stops meanwhile.
TEST(SessionFraming, AClientRefusedMemoryWaitsForItInsteadOfBeingRefused) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  const std::string q = query("select '" + std::string(9000, 'x') + "'");
  h.client(q.substr(0, 4096), T0);
  ASSERT_EQ(h.session().next_deadline(), T0 + 10s);
  Step s = h.memory_refused(true, T0 + 1s);
  EXPECT_FALSE(s.close_client);
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_TRUE(h.session().waits_for_memory());
  EXPECT_FALSE(h.session().wants_client_input());
  EXPECT_EQ(h.session().next_deadline(), T0 + 1s + Session::kMemoryRetry);
  // The retry is due: the client is read again (and refused again: the wait goes on).
  EXPECT_FALSE(h.timer(T0 + 1s + Session::kMemoryRetry).close_client);
  EXPECT_TRUE(h.session().wants_client_input());
  h.memory_refused(true, T0 + 9s);
  EXPECT_FALSE(h.session().wants_client_input());
  // Past the partial message's own deadline: waiting is not stalling, so no 08P01.
  EXPECT_FALSE(h.timer(T0 + 10s).close_client);
  // Memory came at T0 + 10.5 s: the 9.5 s waited do not count against the message.
  h.session().on_client_memory_granted(T0 + 10500ms);
  EXPECT_FALSE(h.session().waits_for_memory());
  EXPECT_TRUE(h.session().wants_client_input());
  EXPECT_EQ(h.session().next_deadline(), T0 + 19500ms);
  auto server = SessionHarness::fresh_server();
  EXPECT_EQ(h.send(q, *server, nullptr, T0 + 11s), q);
}

TEST(SessionFraming, AClientWaitingForMemoryLongerThanTheMessageTimeoutGets53400) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  h.client(query("select 1").substr(0, 7), T0);
  h.memory_refused(true, T0 + 2s);
  for (auto t = T0 + 2s; t < T0 + 12s; t += 1s) {
    ASSERT_FALSE(h.timer(t).close_client);
    h.memory_refused(true, t);
  }
  EXPECT_FALSE(h.timer(T0 + 12s - 1ms).close_client);
  Step s = h.timer(T0 + 12s);
  expect_refused(s, "53400");
  EXPECT_NE(errors_in(s.to_client)[0].message.find("limits.message_timeout_ms"), std::string::npos);
}

TEST(SessionFraming, WithoutAMessageTimeoutAClientWaitsForMemoryAsLongAsItTakes) {
  SessionOptions o;
  o.message_timeout = 0s;
  SessionHarness h(o);
  h.client(query("select 1").substr(0, 7), T0);
  h.memory_refused(true, T0);
  EXPECT_EQ(h.session().next_deadline(), T0 + Session::kMemoryRetry);
  EXPECT_FALSE(h.timer(T0 + 1h).close_client);
  EXPECT_TRUE(h.session().waits_for_memory());
}

TEST(SessionFraming, NothingIsReadAfterClosing) {
  SessionHarness h;
  h.client(terminate());
  Step s = h.client(query("select 1"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_client.empty());
}

}  // namespace
}  // namespace pgvalve::session::testing
