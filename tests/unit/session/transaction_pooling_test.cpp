// Transaction pooling of simple and extended queries: a server is asked for only when a request
// needs one, lent for one transaction and given back at ReadyForQuery 'I'.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

std::string copy_in_response() {
  return message('G', std::string("\0\0\0", 3));
}

TEST(SessionTransactionPooling, LoginWithoutServerAnswersAtOnce) {
  SessionHarness h;
  EXPECT_EQ(tags_of(h.login_reply), "RSSSSSKZ");
  EXPECT_EQ(statuses_in(h.login_reply), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionTransactionPooling, SimpleQueryChecksOutThePrimaryAndReleasesAtIdle) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  Step s = h.client(q);
  EXPECT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
  EXPECT_EQ(s.route.shard, 0);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_server.empty());
  EXPECT_EQ(h.state(), SessionState::WaitingForServer);
  EXPECT_FALSE(h.session().wants_client_input());

  s = h.linked(*server);
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(s.to_server.empty());  // same settings: no sync
  s = h.client(q);
  EXPECT_EQ(s.to_server, q);
  EXPECT_EQ(s.consumed, q.size());
  EXPECT_EQ(h.state(), SessionState::Active);
  EXPECT_TRUE(s.ops.empty());

  const std::string answer = row_result("1", "SELECT 1");
  s = h.server(answer);
  EXPECT_EQ(s.to_client, answer);  // forwarded unchanged
  EXPECT_EQ(s.consumed, answer.size());
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(s.ops[0].link, 0);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionTransactionPooling, AnswerInPiecesReleasesOnlyAtReadyForQuery) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  const std::string answer = row_result("1", "SELECT 1");
  const std::size_t cut = answer.size() - 3;  // inside ReadyForQuery
  Step s = h.server(answer.substr(0, cut));
  EXPECT_EQ(s.to_client, answer.substr(0, cut - 3));
  EXPECT_EQ(s.consumed, cut - 3);
  EXPECT_TRUE(s.ops.empty());
  EXPECT_EQ(h.state(), SessionState::Active);
  s = h.server(answer.substr(cut - 3));
  EXPECT_EQ(s.to_client, ready('I'));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, TransactionKeepsTheServerUntilCommit) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Holding);
  EXPECT_EQ(h.session().link_count(), 1u);
  EXPECT_TRUE(h.session().wants_client_input());

  // The next statement goes to the same server without a checkout.
  const std::string q = query("insert into t values (1)");
  Step s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_server, q);
  EXPECT_EQ(h.state(), SessionState::Active);
  h.answer(command_result("INSERT 0 1", 'T'));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Holding);

  // A failed transaction keeps it too.
  h.client(query("select 1/0"));
  h.answer(error_result("22012", 'E'));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Holding);

  h.client(query("rollback"));
  h.answer(command_result("ROLLBACK"));
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionTransactionPooling, PipelinedQueriesReleaseAfterTheLastAnswer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string q = query("select 1") + query("select 2");
  EXPECT_EQ(h.send(q, *server), q);
  // The first answer ends a transaction, but the second request is still outstanding.
  h.answer(row_result("1", "SELECT 1"));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Active);
  h.answer(row_result("2", "SELECT 1"));
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
}

TEST(SessionTransactionPooling, BothAnswersInOneReadReleaseOnce) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1") + query("select 2"), *server);
  const std::string answers = row_result("1", "SELECT 1") + row_result("2", "SELECT 1");
  EXPECT_EQ(h.answer(answers), answers);
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
}

TEST(SessionTransactionPooling, MoreRequestsWhileActiveGoToTheSameServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_sleep(1)"), *server);
  const std::string q = query("select 2");
  Step s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_server, q);
  h.answer(row_result("", "SELECT 1"));
  EXPECT_TRUE(h.last_ops.empty());
  h.answer(row_result("2", "SELECT 1"));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, ExtendedQueryIsForwardedAndReleasedAtSync) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight =
      parse("", "select $1") + bind_to("", "") + describe('P', "") + execute() + sync();
  EXPECT_EQ(h.send(flight, *server), flight);
  EXPECT_TRUE(h.checked_out);
  const std::string answer = parse_complete() + bind_complete() + row_description() +
                             data_row({"1"}) + complete("SELECT 1") + ready('I');
  EXPECT_EQ(h.answer(answer), answer);
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionTransactionPooling, ExtendedFlightWithoutSyncKeepsTheServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string part = parse("", "select 1") + bind_to("", "") + execute() + flush();
  h.send(part, *server);
  h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1"));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Active);
  Step s = h.client(sync());
  EXPECT_EQ(s.to_server, sync());
  h.answer(ready('I'));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, ExtendedErrorSkipsToSyncAndReleases) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "select 1/0") + bind_to("", "") + execute() + sync(), *server);
  const std::string answer = parse_complete() + bind_complete() + error_message("22012") + ready();
  EXPECT_EQ(h.answer(answer), answer);
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, SyncAloneBetweenTransactionsIsAnsweredWithoutAServer) {
  SessionHarness h;
  Step s = h.client(sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, sync().size());
  EXPECT_EQ(s.to_client, ready('I'));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionTransactionPooling, FlushAloneBetweenTransactionsNeedsNoServer) {
  SessionHarness h;
  Step s = h.client(flush());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, flush().size());
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionTransactionPooling, SyncInsideATransactionGoesToItsServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(sync());
  EXPECT_EQ(s.to_server, sync());
  h.answer(ready('T'));
  EXPECT_TRUE(h.last_ops.empty());
  EXPECT_EQ(h.state(), SessionState::Holding);
}

TEST(SessionTransactionPooling, ParameterStatusPassesThroughAndIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("set application_name = 'x'"), *server);
  const std::string answer = complete("SET") + parameter_status("application_name", "x") + ready();
  EXPECT_EQ(h.answer(answer), answer);
  const Setting* mine = h.session().client_settings().find("application_name");
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->value, "x");
  const Setting* theirs = server->settings.find("application_name");
  ASSERT_NE(theirs, nullptr);
  EXPECT_EQ(theirs->value, "x");
}

TEST(SessionTransactionPooling, NoticesAndNotificationsBetweenAnswersPassThrough) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  const std::string answer = notice() + row_description() + notice() + data_row({"1"}) +
                             complete("SELECT 1") + notification("c", "p") + ready();
  EXPECT_EQ(h.answer(answer), answer);
}

TEST(SessionTransactionPooling, FunctionCallIsAnsweredAtReadyForQuery) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string call = message('F', std::string("\0\0\0\x10\0\0\0\0\0\0", 10));
  EXPECT_EQ(h.send(call, *server), call);
  EXPECT_EQ(h.state(), SessionState::Active);
  h.answer(message('V', std::string("\xff\xff\xff\xff", 4)) + ready());
  // It may have left session state: pgvalve asks the server before giving it back.
  EXPECT_FALSE(h.last.has_op(LinkOp::Kind::Release));
  h.answer(pin_check_result(false));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, CopyInKeepsTheServerUntilItsReadyForQuery) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server);
  h.answer(copy_in_response());
  EXPECT_EQ(h.state(), SessionState::Active);
  const std::string data = message('d', "1\n") + message('c', "");
  Step s = h.client(data);
  EXPECT_EQ(s.to_server, data);
  h.answer(command_result("COPY 1"));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, CopyDataAfterAFailedCopyNeedsNoServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server);
  h.answer(copy_in_response());
  h.client(message('d', "1\n"));
  // The COPY fails; the server goes back while the client is still sending.
  h.answer(error_result("22P02"));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  const std::string rest = message('d', "2\n") + message('c', "");
  Step s = h.client(rest);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, rest.size());
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// libpq's PQputCopyEnd then PQfinish: the Terminate right behind the CopyDone waits for the
// COPY's answer (the server was cancelled and closed, and the COPY lost); the server then goes
// back clean and the client is closed.
TEST(SessionTransactionPooling, TerminateBehindCopyDoneWaitsForTheCopysAnswer) {
  for (bool same_read : {true, false}) {
    SCOPED_TRACE(same_read ? "CopyDone and Terminate in one read" : "in two reads");
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query("copy t from stdin"), *server);
    h.answer(copy_in_response());
    const std::string data = message('d', "1\n") + message('c', "");
    Step s = h.client(same_read ? data + terminate() : data);
    EXPECT_EQ(s.to_server, data);
    EXPECT_EQ(s.consumed, data.size());
    if (!same_read) s = h.client(terminate());
    EXPECT_FALSE(s.close_client);
    EXPECT_TRUE(s.ops.empty());
    EXPECT_TRUE(h.session().finishing_copy());
    EXPECT_FALSE(h.session().wants_client_input()) << "its hang-up is not read before the answer";
    h.answer(command_result("COPY 1"));
    EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
    EXPECT_TRUE(h.last.resume_client);
    EXPECT_TRUE(h.session().wants_client_input());
    s = h.client(terminate());
    EXPECT_TRUE(s.close_client);
  }
}

// libpq runs a COPY given to PQexecParams or PQexecPrepared as Parse, Bind, Describe, Execute,
// Sync, and sends another Sync after its CopyDone: the server ignores the first, which it reads
// while taking COPY data, and answers the second.
TEST(SessionTransactionPooling, ExtendedProtocolCopyIsAnsweredAtTheSyncAfterItsData) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight =
      parse("", "copy t from stdin") + bind_to("", "") + describe('P', "") + execute() + sync();
  h.send(flight, *server);
  EXPECT_EQ(tags_of(h.answer(parse_complete() + bind_complete() + no_data() + copy_in_response())),
            "12nG");
  const std::string data = message('d', "1\n") + message('c', "") + sync();
  EXPECT_EQ(h.client(data).to_server, data);
  EXPECT_FALSE(h.last.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(tags_of(h.answer(complete("COPY 1") + ready())), "CZ");
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// The Parse of a statement the server will have by then is answered by pgvalve: its
// ParseComplete goes to the client before the COPY's CopyInResponse.
TEST(SessionTransactionPooling, ACopyBehindAParseAnsweredByPgvalve) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(parse("s1", "copy t from stdin") + bind_to("", "s1") + flush());
  // Sent before those are answered: s1 will be prepared there by then.
  Step s = h.client(parse("s1", "copy t from stdin") + execute() + sync());
  EXPECT_EQ(tags_of(s.to_server), "ES");
  s = h.server(parse_complete() + bind_complete() + copy_in_response());
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(tags_of(s.to_client), "121G");
  h.client(message('d', "1\n") + message('c', "") + sync());
  EXPECT_EQ(tags_of(h.answer(complete("COPY 1") + ready('T'))), "CZ");
  EXPECT_EQ(h.state(), SessionState::Holding);
}

TEST(SessionTransactionPooling, SyncSentBehindASimpleCopyGetsNoAnswer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin") + sync(), *server);
  h.answer(copy_in_response());
  h.client(message('d', "1\n") + message('c', ""));
  EXPECT_EQ(tags_of(h.answer(command_result("COPY 1"))), "CZ");
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionTransactionPooling, ACopyWithItsDataSentAheadIsFollowedByTheNextRequest) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight = query("copy t from stdin") + message('d', "1\n") + message('c', "") +
                             sync() + query("select 1");
  EXPECT_EQ(h.send(flight, *server), flight);
  h.answer(copy_in_response() + command_result("COPY 1"));
  EXPECT_FALSE(h.last.has_op(LinkOp::Kind::Release));
  // The Sync after the CopyDone is answered as any Sync, then the query.
  h.answer(ready() + row_description() + data_row({"1"}) + command_result("SELECT 1"));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

// The server would take the query as the end of the COPY, fail the COPY and never answer it.
TEST(SessionTransactionPooling, AQuerySentBehindACopyBeforeTheServerAsksForDataIsRefused) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin") + query("select 1"), *server);
  Step s = h.server(copy_in_response());
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08P01");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
}

TEST(SessionTransactionPooling, ARequestAmongCopyDataIsRefused) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("copy t from stdin"), *server);
  h.answer(copy_in_response());
  Step s = h.client(message('d', "1\n") + parse("s1", "select 1"));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08P01");
  EXPECT_NE(errors_in(s.to_client).at(0).message.find("CopyDone"), std::string::npos);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
  EXPECT_EQ(h.state(), SessionState::Closing);
}

// libpq's pipeline mode and drivers that pipeline with Flush: a request fails with no Sync
// behind it, and what the client sends next up to its Sync is discarded by the server. pgvalve
// does not expect answers to it, nor take its Parse as done (found by session_fuzz: the statement
// was believed prepared, and parsed again later on top of itself).
TEST(SessionTransactionPooling, WhatFollowsAFailedExtendedRequestUpToSyncGetsNoAnswer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("s1", "select 1/0") + bind_to("", "s1") + execute() + flush(), *server);
  h.answer(parse_complete() + bind_complete() + error_message("22012"));
  Step s = h.client(parse("s2", "select 2") + bind_to("", "s2") + execute() + sync());
  EXPECT_EQ(tags_of(s.to_server), "S") << "the server would discard the rest";
  EXPECT_EQ(tags_of(h.answer(ready())), "Z");
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  // s2 was never prepared: its next use is parsed on the server.
  const std::string again = parse("s2", "select 2") + bind_to("", "s2") + execute() + sync();
  EXPECT_EQ(tags_of(h.send(again, *server)), "PBES");
}

// Found by the session fuzz target: PostgreSQL ignores a simple Query sent after a failed
// extended-protocol message and before its Sync; only the Sync is answered. The Query must not
// be waited for (the server would stay linked, and every later answer be taken for the one
// before it).
TEST(SessionTransactionPooling, AQueryBetweenAFailedExtendedRequestAndItsSyncGetsNoAnswer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(execute("missing") + query("select 1") + sync(), *server);
  EXPECT_EQ(tags_of(sent), "EQS");
  const std::string answer = error_message("34000") + ready();
  EXPECT_EQ(h.answer(answer), answer);
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(tags_of(h.send(query("select 2"), *server)), "Q");
  EXPECT_EQ(h.answer(row_result("2", "SELECT 1")), row_result("2", "SELECT 1"));
}

TEST(SessionTransactionPooling, CheckoutFailureAnswersTheWaitingRequestAndKeepsTheClient) {
  SessionHarness h;
  const std::string q = query("select 1");
  ASSERT_TRUE(h.client(q).check_out);
  Step s = h.checkout_failed("53300");
  EXPECT_TRUE(s.resume_client);
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(q);
  EXPECT_EQ(s.consumed, q.size());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "53300");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  // The next request asks for a server again.
  EXPECT_TRUE(h.client(q).check_out);
}

TEST(SessionTransactionPooling, CheckoutFailureAnswersEachRequestOfAnExtendedFlightOnce) {
  SessionHarness h;
  const std::string flight =
      parse("", "select 1") + bind_to("", "") + execute() + sync() + query("select 2");
  ASSERT_TRUE(h.client(flight).check_out);
  h.checkout_failed("53300");
  Step s = h.client(flight);
  // One error for the extended flight, one for the query, and a ReadyForQuery for each.
  EXPECT_EQ(tags_of(s.to_client), "EZEZ");
  EXPECT_EQ(s.consumed, flight.size());
}

TEST(SessionTransactionPooling, StatementModeRefusesTransactionBlocks) {
  SessionOptions o;
  o.mode = config::PoolMode::Statement;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(query("begin"), *server);
  const auto q = queries_in(sent);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos) << q[0];
  EXPECT_EQ(h.answer(error_result("0A000")), error_result("0A000"));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

}  // namespace
}  // namespace pgvalve::session::testing
