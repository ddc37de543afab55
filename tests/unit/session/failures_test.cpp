// Failures and time: a server lost or silent, a client idle in a transaction, a sync that does
// not finish, shutdown, a client that leaves.
#include <gtest/gtest.h>

#include <functional>

#include "session/session.h"
#include "session/settings_sync.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

SessionOptions with_query_timeout(std::chrono::milliseconds timeout) {
  SessionOptions o;
  o.query_timeout = timeout;
  return o;
}

// ---- A server lost -------------------------------------------------------------------------

TEST(SessionFailures, ServerLostAnswersEveryRequestInFlight) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1") + query("select 2"), *server);
  Step s = h.lost();
  EXPECT_EQ(tags_of(s.to_client), "EZEZ");
  EXPECT_EQ(sqlstates_in(s.to_client), "08006,08006");
  EXPECT_EQ(statuses_in(s.to_client), "II");
  EXPECT_EQ(errors_in(s.to_client)[0].severity, "ERROR");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Close);
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
  // The client goes on with another server.
  EXPECT_TRUE(h.client(query("select 3")).check_out);
}

TEST(SessionFailures, ServerLostAfterPartOfTheAnswersAnswersTheRest) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1") + query("select 2"), *server);
  h.answer(row_result("1", "SELECT 1"));
  EXPECT_EQ(tags_of(h.lost().to_client), "EZ");
}

// The block the client is in is lost with its server: as after an error in a block on
// PostgreSQL, its statements fail (ReadyForQuery 'E') until it ends the block, so none of them
// runs on its own, outside the block the client believes it is in.
TEST(SessionFailures, ServerLostInATransactionFailsTheBlockUntilTheClientEndsIt) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.lost();
  EXPECT_TRUE(s.to_client.empty());  // nothing was asked
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  EXPECT_EQ(h.state(), SessionState::Idle);
  const std::string q = query("insert into t values (1)");
  s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, q.size());
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  EXPECT_NE(errors_in(s.to_client).at(0).message.find("end the block with ROLLBACK"),
            std::string::npos);
  s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P02");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  // Extended too, skipped to its Sync.
  s = h.client(parse("", "insert into t values (2)") + bind_to("", "") + execute() + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  // COMMIT ends it as PostgreSQL ends an aborted block: ROLLBACK.
  s = h.client(query("commit"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_NE(s.to_client.find("ROLLBACK"), std::string::npos);
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_TRUE(h.client(q).check_out);
}

// Told at once: a COMMIT (or ROLLBACK) as the next request gets the error and ends the block.
TEST(SessionFailures, ServerLostInATransactionThenCommitGetsTheErrorAndEndsTheBlock) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.lost();
  Step s = h.client(parse("", "COMMIT") + bind_to("", "") + execute() + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_TRUE(h.client(query("select 1")).check_out);
}

// Whether the request that was running ended the block (a COMMIT) or not is not known: no
// ReadyForQuery could tell the client truly whether its next statement is in a block, so the
// client is closed, as PostgreSQL closes it.
TEST(SessionFailures, ServerLostWithARequestOfATransactionBlockRunningClosesTheClient) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("insert into t values (1)"));
  Step s = h.lost();
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors.back().severity, "FATAL");
  EXPECT_EQ(errors.back().sqlstate, "08006");
  EXPECT_NE(errors.back().message.find("rolled back unless that request committed it"),
            std::string::npos);
}

// A COMMIT (or a statement outside a transaction block) cut by the loss may have committed: the
// client is not told that it was rolled back. A transaction lost between requests was.
TEST(SessionFailures, ServerLostWhileARequestRunsDoesNotClaimItWasRolledBack) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("insert into t values (1)"), *server);
  auto errors = errors_in(h.lost().to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("may have taken effect"), std::string::npos);
  EXPECT_EQ(errors[0].message.find("was rolled back, run it again"), std::string::npos);

  auto other = SessionHarness::fresh_server();
  h.send(query("begin"), *other);
  h.answer(command_result("BEGIN", 'T'));
  h.lost();
  errors = errors_in(h.client(query("commit")).to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("the transaction was rolled back, run it again"),
            std::string::npos);
}

TEST(SessionFailures, ServerLostInAnExtendedFlightSkipsToItsSync) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "select 1") + bind_to("", "") + execute() + flush(), *server);
  Step s = h.lost();
  EXPECT_EQ(tags_of(s.to_client), "E");
  // The rest of the flight gets no answer of its own; its Sync a ReadyForQuery.
  s = h.client(describe('P', "") + execute() + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_TRUE(h.client(query("select 1")).check_out);
}

TEST(SessionFailures, ServerLostWithASyncedFlightAndAnOpenOneAnswersBoth) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight = parse("", "select 1") + bind_to("", "") + execute();
  h.send(flight + sync() + flight, *server);
  Step s = h.lost();
  // The first flight's error and ReadyForQuery, then the open flight's error.
  EXPECT_EQ(tags_of(s.to_client), "EZE");
  s = h.client(sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "Z");
}

TEST(SessionFailures, ServerSendingAnInvalidMessageIsClosed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  Step s = h.server(std::string("D\0\0\0\1", 5));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionFailures, LostServerThatIsNotLinkedIsIgnored) {
  SessionHarness h;
  Step s = h.lost(T0, 3);
  EXPECT_TRUE(s.ops.empty());
  EXPECT_TRUE(s.to_client.empty());
}

// ---- A silent server -----------------------------------------------------------------------

TEST(SessionFailures, QueryTimeoutDeadlineFollowsTheServersLastActivity) {
  SessionHarness h(with_query_timeout(30s));
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1") + query("select 2"), *server, nullptr, T0);
  EXPECT_EQ(h.session().next_deadline(), T0 + 30s);
  h.answer(row_result("1", "SELECT 1"), T0 + 20s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 50s);
  EXPECT_TRUE(h.timer(T0 + 49s).ops.empty());
  Step s = h.timer(T0 + 50s);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionFailures, QueryTimeoutDoesNotCountTimeBeforeTheRequest) {
  SessionHarness h(with_query_timeout(30s));
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server, nullptr, T0);
  h.answer(command_result("BEGIN", 'T'), T0);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  // The client thinks for a minute, then sends its next statement.
  h.client(query("select 1"), T0 + 60s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 90s);
  EXPECT_TRUE(h.timer(T0 + 61s).ops.empty());
}

TEST(SessionFailures, QueryTimeoutWaitsForAFlushOrSync) {
  SessionHarness h(with_query_timeout(30s));
  auto server = SessionHarness::fresh_server();
  // Parse/Bind/Execute alone: PostgreSQL answers nothing before a Flush or Sync.
  h.send(parse("", "select 1") + bind_to("", "") + execute(), *server, nullptr, T0);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_TRUE(h.timer(T0 + 60s).ops.empty());
  h.client(flush(), T0 + 60s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 90s);
  h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1"), T0 + 61s);
  // Everything flushed was answered; the Sync is the client's to send.
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  h.client(sync(), T0 + 100s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 130s);
}

TEST(SessionFailures, QueryTimeoutFollowsCopyDataTheClientSends) {
  SessionHarness h(with_query_timeout(30s));
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server, nullptr, T0);
  std::string copy_in_response("G\0\0\0\x07\0\0\0", 8);
  h.answer(copy_in_response, T0 + 1s);
  // The server says nothing while the client streams its rows: that is not silence.
  for (int i = 1; i <= 5; ++i)
    h.client(message('d', "row\n"), T0 + std::chrono::seconds(20 * i));
  EXPECT_TRUE(h.timer(T0 + 110s).ops.empty());
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max())
      << "a server taking COPY data owes no answer until the data ends";
  h.client(message('c', ""), T0 + 200s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 230s);
}

TEST(SessionFailures, QueryTimeoutDoesNotCountTimeTheClientTakesToRead) {
  SessionOptions o = with_query_timeout(30s);
  o.message_timeout = 0s;  // the client's own clock (below) is not what this is about
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from big"), *server, nullptr, T0);
  h.answer(row_description(), T0 + 1s);
  // The client has not read what it got: pgvalve stops reading the server for a while.
  h.session().set_server_paused(0, true, T0 + 2s);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_TRUE(h.timer(T0 + 100s).ops.empty());
  // It caught up: the server's silence counts again from now.
  h.session().set_server_paused(0, false, T0 + 120s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 150s);
  Step s = h.timer(T0 + 150s);
  EXPECT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

// A client that takes none of its results holds its server for as long as it likes (pgvalve
// stops reading the server, which then blocks): limits.message_timeout_ms bounds it.
TEST(SessionFailures, AClientThatTakesNoneOfItsResultsForTheMessageTimeoutIsCut) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from big"), *server, nullptr, T0);
  h.answer(row_description(), T0 + 1s);
  h.session().set_server_paused(0, true, T0 + 2s);
  h.session().client_progress(5000, T0 + 2s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 12s);
  // Looked at again: it took nothing more.
  h.session().client_progress(5000, T0 + 11s);
  EXPECT_FALSE(h.timer(T0 + 11s).close_client);
  Step s = h.timer(T0 + 12s);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08P01");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);  // the query still runs there
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionFailures, AClientThatTakesSomeOfItsResultsRestartsTheMessageTimeout) {
  SessionOptions o;
  o.message_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from big"), *server, nullptr, T0);
  h.answer(row_description(), T0 + 1s);
  h.session().set_server_paused(0, true, T0 + 2s);
  h.session().client_progress(5000, T0 + 2s);
  // Slowly, but it reads: every look finds more taken, for far longer than the timeout.
  for (int i = 1; i <= 10; ++i) {
    const auto t = T0 + 2s + std::chrono::seconds(10 * i);
    h.session().client_progress(5000 + i, t);
    ASSERT_FALSE(h.timer(t).close_client) << i;
    EXPECT_EQ(h.session().next_deadline(), t + 10s);
  }
  // It caught up: the server is read again and the clock is off.
  h.session().set_server_paused(0, false, T0 + 200s);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_FALSE(h.timer(T0 + 300s).close_client);
  // Behind again later: a new clock from then.
  h.session().set_server_paused(0, true, T0 + 400s);
  h.session().client_progress(5010, T0 + 400s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 410s);
}

TEST(SessionFailures, NoLimitOnAClientTakingItsResultsWhenTheMessageTimeoutIsOff) {
  SessionOptions o;
  o.message_timeout = 0s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from big"), *server, nullptr, T0);
  h.answer(row_description(), T0 + 1s);
  h.session().set_server_paused(0, true, T0 + 2s);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_FALSE(h.timer(T0 + 1000s).close_client);
}

TEST(SessionFailures, NoQueryTimeoutWhenOff) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_sleep(1000)"), *server);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_TRUE(h.timer(T0 + 1000s).ops.empty());
}

// ---- A client idle in a transaction --------------------------------------------------------

TEST(SessionFailures, IdleInTransactionTimeoutClosesTheClientAndRollsBack) {
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server, nullptr, T0);
  h.answer(command_result("BEGIN", 'T'), T0 + 1s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 11s);
  EXPECT_FALSE(h.timer(T0 + 10s).close_client);
  Step s = h.timer(T0 + 11s);
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(errors[0].sqlstate, "25P03");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionFailures, IdleInTransactionDeadlineMovesWithTheClientsRequests) {
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server, nullptr, T0);
  h.answer(command_result("BEGIN", 'T'), T0);
  h.client(query("select 1"), T0 + 8s);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());  // busy: not idle
  h.answer(row_result("1", "SELECT 1", 'T'), T0 + 9s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 19s);
  EXPECT_FALSE(h.timer(T0 + 15s).close_client);
}

TEST(SessionFailures, AClientSilentMidCopyIsCutByTheIdleTransactionTimeout) {
  // It holds its server, which waits for the rest of the data: as idle as a client in BEGIN.
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server, nullptr, T0);
  std::string copy_in = message('G', std::string("\0\0\1\0\0", 5));
  h.answer(copy_in, T0);
  h.client(message('d', "1\n"), T0 + 2s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 12s);
  EXPECT_FALSE(h.timer(T0 + 11s).close_client);
  Step s = h.timer(T0 + 12s);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P03");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
}

TEST(SessionFailures, AClientPgvalveStoppedReadingIsNotSilentMidCopy) {
  // Its server did not take the data sent (a lock wait): pgvalve stopped reading the client.
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server, nullptr, T0);
  h.answer(message('G', std::string("\0\0\1\0\0", 5)), T0);
  h.session().set_client_held(true, T0 + 1s);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_FALSE(h.timer(T0 + 60s).close_client);
  h.session().set_client_held(false, T0 + 60s);
  EXPECT_EQ(h.session().next_deadline(), T0 + 70s);
}

TEST(SessionFailures, AClientSilentInAFlightWithoutSyncIsCutByTheIdleTransactionTimeout) {
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  // Parse/Bind/Execute and no Sync: PostgreSQL holds the answers and the implicit transaction.
  h.send(parse("", "select 1") + bind_to("", "") + execute(), *server, nullptr, T0);
  EXPECT_EQ(h.session().next_deadline(), T0 + 10s);
  Step s = h.timer(T0 + 10s);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P03");
}

TEST(SessionFailures, IdleTransactionTimeoutDoesNotApplyOutsideATransaction) {
  SessionOptions o;
  o.idle_transaction_timeout = 10s;
  auto server = SessionHarness::fresh_server();
  o.mode = config::PoolMode::Session;
  SessionHarness h(o, {}, server.get());
  EXPECT_EQ(h.state(), SessionState::Holding);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
  EXPECT_FALSE(h.timer(T0 + 100s).close_client);
}

// Session mode keeps a client whose own server was lost (its settings go to the next one),
// unless it prepared statements there: a new server would answer each use with 26000.
TEST(SessionFailures, SessionModeClosesAClientWhosePreparedStatementsWentWithItsServer) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, server.get());
  h.client(parse("s1", "select 1") + sync());
  h.answer(parse_complete() + ready());
  Step s = h.lost();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

// Nothing prepared, the session may still hold an advisory lock or LISTEN that a new server
// would silently lack (another client then takes the lock too): closed, as on PostgreSQL.
TEST(SessionFailures, SessionModeClosesAClientWithNothingPreparedAtAServerLoss) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, server.get());
  h.client(query("select 1"));
  h.answer(command_result("SELECT 1"));
  const Step s = h.lost();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

// Transaction mode: a client pinned to its server (an advisory lock) loses the lock with it;
// closed, with the server's goodbye, rather than run on without it.
TEST(SessionFailures, APinnedClientIsClosedWhenItsServerIsLost) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h;
  h.send(query("select pg_advisory_lock(81)"), *server);
  h.server(row_result("", "SELECT 1"));
  h.server(pin_check_result(true));
  ASSERT_TRUE(h.session().pinned());
  EXPECT_TRUE(h.server(error_message("57P01", "FATAL",
                                     "terminating connection due to "
                                     "administrator command"))
                  .to_client.empty());
  const Step s = h.lost();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  EXPECT_EQ(s.pinned_change, -1);
}

// ---- A sync that does not finish -----------------------------------------------------------

TEST(SessionFailures, SyncTimeoutFailsTheWaitingRequest) {
  SessionOptions o;
  o.sync_timeout = 5s;
  SessionHarness h(o);
  auto first = SessionHarness::fresh_server();
  h.send(query("SET statement_timeout = '5s'"), *first);
  h.answer(command_result("SET"));
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q, T0);
  ASSERT_FALSE(h.linked(*other, T0).to_server.empty());
  EXPECT_EQ(h.session().next_deadline(), T0 + 5s);
  Step s = h.timer(T0 + 5s);
  EXPECT_TRUE(s.resume_client);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(q);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_FALSE(s.close_client);
}

TEST(SessionFailures, LoginSyncTimeoutClosesTheClient) {
  SessionOptions o;
  o.sync_timeout = 5s;
  auto server = SessionHarness::fresh_server();
  SessionHarness h(o, {{"DateStyle", "German"}}, server.get());
  ASSERT_EQ(h.state(), SessionState::Syncing);
  Step s = h.timer(T0 + 5s);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
}

// A sync the server refuses ends the client, and the server's record is no longer trusted: the
// next client's sync starts from RESET ALL. Trusted, the record's leftover (here a setting the
// server no longer takes) would fail every later client's sync on that server.
TEST(SessionFailures, ARefusedSyncLeavesTheServerToBeResetWhole) {
  auto server = SessionHarness::fresh_server();
  {
    SessionHarness first;
    first.send(query("SET statement_timeout = '5s'"), *server);
    first.answer(command_result("SET"));
  }
  SessionHarness h;
  Step s = h.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  s = h.linked(*server);
  ASSERT_NE(s.to_server.find("RESET \"statement_timeout\""), std::string::npos) << s.to_server;
  s = h.server(error_result("42704"));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "42704");
  EXPECT_TRUE(server->settings_unknown);

  SessionHarness next;
  s = next.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  s = next.linked(*server);
  EXPECT_NE(s.to_server.find(kResetEverySetting), std::string::npos) << s.to_server;
  s = next.server(command_result("RESET"));
  EXPECT_FALSE(s.close_client);
  EXPECT_FALSE(server->settings_unknown);
}

TEST(SessionFailures, ServerLostDuringTheSyncFailsTheWaitingRequest) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  h.send(query("SET statement_timeout = '5s'"), *first);
  h.answer(command_result("SET"));
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  h.linked(*other);
  Step s = h.lost();
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(s.to_client.empty());
  s = h.client(q);
  EXPECT_EQ(tags_of(s.to_client), "EZ");
}

// ---- Shutdown ------------------------------------------------------------------------------

TEST(SessionFailures, DrainWhenIdleClosesAtOnce) {
  SessionHarness h;
  Step s = h.drain();
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "57P01");
  EXPECT_EQ(errors[0].severity, "FATAL");
}

// A drain (of either kind) inside a transaction: nothing until its end, then 57P01 and closed.
// Returns the step of the COMMIT's answer.
// `drain`: a member of SessionHarness, or a callable taking one.
template <typename Drain>
Step drained_in_a_transaction(SessionHarness& h, Drain drain) {
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = std::invoke(drain, h);
  EXPECT_FALSE(s.close_client);
  EXPECT_TRUE(s.to_client.empty());
  h.client(query("commit"));
  s = h.server(command_result("COMMIT"));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(tags_of(s.to_client), "CZE");
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  return s;
}

TEST(SessionFailures, DrainWhenBusyClosesAtTheNextRelease) {
  SessionHarness h;
  Step s = drained_in_a_transaction(h, &SessionHarness::drain);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
}

TEST(SessionFailures, DrainOfAPinnedClientBetweenRequestsClosesAtOnce) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_advisory_lock(1)"), *server);
  h.answer(row_result("", "SELECT 1"));
  h.server(pin_check_result(true));
  ASSERT_TRUE(h.session().pinned());
  Step s = h.drain();
  EXPECT_TRUE(s.close_client);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
  EXPECT_EQ(s.pinned_change, -1);
}

TEST(SessionFailures, DrainWhileWaitingForTheHubClosesAfterItsAnswer) {
  SessionHarness h;
  h.client(query("LISTEN jobs"));
  EXPECT_FALSE(h.drain().close_client);
  Step s = h.hub_done();
  EXPECT_EQ(tags_of(s.to_client), "CZE");
  EXPECT_TRUE(s.close_client);
}

TEST(SessionFailures, DrainWhileWaitingForAServerClosesWhenItFails) {
  SessionHarness h;
  const std::string q = query("select 1");
  h.client(q);
  EXPECT_FALSE(h.drain().close_client);
  Step s = h.checkout_failed("53300");
  EXPECT_TRUE(s.close_client);
}

TEST(SessionFailures, DrainWhileASyncIsCutClosesTheClientWithoutRunningItsRequest) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  h.send(query("SET statement_timeout = '5s'"), *first);
  h.answer(command_result("SET"));
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  h.linked(*other);
  EXPECT_FALSE(h.drain().close_client);
  Step s = h.lost();
  std::string to_client = s.to_client;
  if (!s.close_client) {
    s = h.client(q);
    to_client += s.to_client;
  }
  EXPECT_EQ(sqlstates_in(to_client), "57P01");
  EXPECT_TRUE(s.close_client);
}

TEST(SessionFailures, DrainWithAPartialMessageWaitsForIt) {
  SessionHarness h;
  const std::string q = query("select 1");
  h.client(q.substr(0, 4));
  EXPECT_FALSE(h.drain().close_client);
  auto server = SessionHarness::fresh_server();
  h.send(q, *server);
  Step s = h.server(row_result("1", "SELECT 1"));
  EXPECT_TRUE(s.close_client);
}

// ---- A reload changed the shard map -------------------------------------------------------

TEST(SessionFailures, ShardMapChangeWhenIdleClosesAtOnce) {
  SessionHarness h;
  Step s = h.shard_map_changed();
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "57P01");
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_NE(errors[0].message.find("a reload changed this database's shards"), std::string::npos);
}

TEST(SessionFailures, ShardMapChangeDropsARequestStillWaitingForItsServer) {
  SessionHarness h;
  h.client(query("insert into t values (1)"));
  ASSERT_EQ(h.session().state(), SessionState::WaitingForServer);
  // Unlike a shutdown's drain, which serves it: it was routed by the old map.
  Step s = h.shard_map_changed();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  EXPECT_TRUE(s.ops.empty());
}

TEST(SessionFailures, ShardMapChangeInATransactionClosesAtItsEnd) {
  SessionHarness h;
  drained_in_a_transaction(h, &SessionHarness::shard_map_changed);
}

TEST(SessionFailures, ShardMapChangeRefusesARequestWhoseLastBytesCameAfterIt) {
  SessionHarness h;
  const std::string q = query("insert into t values (1)");
  h.client(q.substr(0, 6));
  EXPECT_FALSE(h.shard_map_changed().close_client);
  Step s = h.client(q);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  EXPECT_FALSE(s.check_out);
}

// ---- A reload changed the database's dbname, or removed it or the user --------------------

TEST(SessionFailures, DbnameChangeOrRemovalSendsTheClientAwayAsAShardMapChangeDoes) {
  for (const auto& [change, words] :
       {std::pair{config::ReloadChange::Dbname, "changed the database on the servers (dbname)"},
        std::pair{config::ReloadChange::DatabaseRemoved,
                  "removed this database from the configuration"},
        std::pair{config::ReloadChange::UserRemoved, "removed this user from the configuration"}}) {
    SessionHarness idle;
    Step s = idle.reload_changed(change);
    EXPECT_TRUE(s.close_client);
    const auto errors = errors_in(s.to_client);
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].sqlstate, "57P01");
    EXPECT_EQ(errors[0].severity, "FATAL");
    EXPECT_TRUE(errors[0].message.starts_with("pgvalve: a reload ")) << errors[0].message;
    EXPECT_NE(errors[0].message.find(words), std::string::npos) << errors[0].message;
    // Not run on a server of the new rules, nor of the old ones.
    SessionHarness waiting;
    waiting.client(query("insert into t values (1)"));
    ASSERT_EQ(waiting.session().state(), SessionState::WaitingForServer);
    s = waiting.reload_changed(change);
    EXPECT_TRUE(s.close_client);
    EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
    EXPECT_TRUE(s.ops.empty());
    SessionHarness in_transaction;
    drained_in_a_transaction(in_transaction,
                             [change](SessionHarness& h) { return h.reload_changed(change); });
  }
  SessionHarness unchanged;
  EXPECT_FALSE(unchanged.reload_changed(config::ReloadChange::None).close_client);
}

// ---- An operator's KILL --------------------------------------------------------------------

TEST(SessionFailures, KillWhenIdleClosesAtOnceWithTheMessage) {
  SessionHarness h;
  Step s = h.kill("pgvalve: disconnected by an administrator (KILL telemetry)");
  EXPECT_TRUE(s.close_client);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "57P01");
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(errors[0].message, "pgvalve: disconnected by an administrator (KILL telemetry)");
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionFailures, KillInsideATransactionDoesNotWaitAndRollsItBack) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.kill();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  // As when the client leaves: the open transaction is not handed to the next client.
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
}

TEST(SessionFailures, KillWhileWaitingForAServerClosesAtOnce) {
  SessionHarness h;
  h.client(query("select 1"));
  ASSERT_EQ(h.state(), SessionState::WaitingForServer);
  Step s = h.kill();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
}

// ---- The client leaving --------------------------------------------------------------------

TEST(SessionFailures, ClientGoneWithAQueryInFlightCancelsIt) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_sleep(10)"), *server);
  Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(h.session().link_count(), 0u);
  EXPECT_EQ(h.state(), SessionState::Closing);
}

TEST(SessionFailures, ClientGoneInATransactionRollsItBack) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(s.ops[0].sql2, "");
}

TEST(SessionFailures, ClientGoneInATransactionWithSessionStateResetsTheServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  // A session advisory lock outlives ROLLBACK: the server is reset before it goes back.
  h.client(query("select pg_advisory_lock(1)"));
  h.answer(row_result("", "SELECT 1", 'T'));
  Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(s.ops[0].sql2, "DISCARD ALL");
}

TEST(SessionFailures, ClientGoneWhileWaitingIgnoresTheLateServer) {
  SessionHarness h;
  h.client(query("select 1"));
  h.gone();
  auto server = SessionHarness::fresh_server();
  Step s = h.linked(*server);
  EXPECT_FALSE(s.resume_client);
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionFailures, ServerBytesAfterClosingAreConsumedAndDropped) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  h.gone();
  const std::string answer = row_result("1", "SELECT 1");
  Step s = h.server(answer);
  EXPECT_EQ(s.consumed, answer.size());
  EXPECT_TRUE(s.to_client.empty());
}

}  // namespace
}  // namespace pgvalve::session::testing
