// Session state that cannot be replayed on another server (advisory locks, temporary tables, WITH
// HOLD cursors, SQL-level prepared statements, LISTEN in a transaction) pins the server to the
// client under transaction pooling, or is refused with 0A000 when pool.pin_session_state is off.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

bool is_pin_check(std::string_view to_server) {
  const auto q = queries_in(to_server);
  return q.size() == 1 && q[0].starts_with("SELECT (SELECT count(*) FROM pg_catalog.pg_locks");
}

SessionOptions without_pinning() {
  SessionOptions o;
  o.pin_session_state = false;
  return o;
}

struct SessionPinningFlow : ::testing::Test {
  SessionHarness h;
  std::unique_ptr<ServerState> server = SessionHarness::fresh_server();

  // Runs `sql` to its ReadyForQuery 'I'; returns the step of that answer.
  Step run(std::string_view sql, std::string_view answer) {
    h.send(query(sql), *server);
    return h.server(answer);
  }

  // Runs `sql`, whose end starts the pin check, and answers the check.
  Step run_and_check(std::string_view sql, std::string_view answer, bool holds) {
    Step s = run(sql, answer);
    EXPECT_EQ(s.to_client, answer);
    EXPECT_TRUE(is_pin_check(s.to_server)) << sql;
    EXPECT_TRUE(s.ops.empty()) << sql;
    EXPECT_EQ(h.state(), SessionState::Active);
    return h.server(pin_check_result(holds));
  }
};

TEST_F(SessionPinningFlow, AdvisoryLockPinsTheServer) {
  Step s = run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  EXPECT_TRUE(s.to_client.empty());  // pgvalve's own answers
  EXPECT_EQ(s.pinned_change, 1);
  EXPECT_TRUE(s.ops.empty());
  EXPECT_TRUE(h.session().pinned());
  EXPECT_EQ(h.state(), SessionState::Holding);
  EXPECT_EQ(h.session().link_count(), 1u);
  // The next request goes to the same server, and it is kept after it.
  const std::string q = query("select 1");
  Step next = h.client(q);
  EXPECT_FALSE(next.check_out);
  EXPECT_EQ(next.to_server, q);
  next = h.server(row_result("1", "SELECT 1"));
  EXPECT_TRUE(next.ops.empty());
  EXPECT_TRUE(next.to_server.empty());  // nothing to check again
  EXPECT_EQ(next.pinned_change, 0);
  EXPECT_EQ(h.state(), SessionState::Holding);
}

TEST_F(SessionPinningFlow, NothingFoundReleasesTheServer) {
  Step s = run_and_check("select pg_try_advisory_lock(1)", row_result("f", "SELECT 1"), false);
  EXPECT_EQ(s.pinned_change, 0);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_FALSE(h.session().pinned());
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionPinning, EachKindOfSessionStateIsChecked) {
  for (const char* sql : {"create temp table t (a int)", "create temporary table t (a int)",
                          "select 1 into temp t", "PREPARE q AS select 1",
                          // plain_statement's scan of a select: any case, anywhere before a ';'
                          "SELECT 1 INTO TEMP t", "Select 1 Into Temporary t;",
                          "SELECT PG_ADVISORY_LOCK(1)", "select pg_try_Advisory_lock(1) ;  "}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query(sql), *server);
    Step s = h.server(command_result("OK"));
    EXPECT_TRUE(is_pin_check(s.to_server)) << sql;
    s = h.server(pin_check_result(true));
    EXPECT_EQ(s.pinned_change, 1) << sql;
  }
}

// With pg_temp first in search_path (SET, the login's options, ALTER ROLE … SET) a CREATE or
// SELECT … INTO without TEMP makes a temporary object, and EXPLAIN ANALYZE runs what it
// explains: the server is asked afterwards (found by a code review: such a table on a pooled
// server took the next client's INSERTs in place of the real table).
TEST(SessionPinning, WhatMayMakeATemporaryObjectUnnamedIsChecked) {
  for (const char* sql :
       {"create table telemetry (a int)", "CREATE VIEW v AS SELECT 1", "create table t as select 1",
        "select * into t from u", "with x as (select 1) select * into t from x",
        "explain analyze create temp table t as select 1",
        "with x as (select 1) select * into temp t from x"}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query(sql), *server);
    Step s = h.server(command_result("OK"));
    EXPECT_TRUE(is_pin_check(s.to_server)) << sql;
    s = h.server(pin_check_result(true));
    EXPECT_EQ(s.pinned_change, 1) << sql;
  }
  // Nothing to ask after a write of rows, or a table dropped at commit.
  for (const char* sql : {"with x as (select 1) insert into t select * from x",
                          "create temp table t (a int) on commit drop"}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query(sql), *server);
    const Step s = h.server(command_result("OK"));
    EXPECT_FALSE(is_pin_check(s.to_server)) << sql;
  }
}

TEST_F(SessionPinningFlow, ADoBlockIsCheckedAndLeavesItsServersSettingsUnknown) {
  // Its body may EXECUTE a string it builds ('CREATE TE' || 'MP TABLE'), or SET ROLE: the
  // server is asked what it holds, and its next lender gets every setting reset.
  Step s = run_and_check("DO $$ BEGIN EXECUTE 'SELECT 1'; END $$", command_result("DO"), false);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_TRUE(server->settings_unknown);
  SessionHarness next;
  bool synced = false;
  next.send(query("select 1"), *server, &synced);
  EXPECT_TRUE(synced);
  EXPECT_NE(next.last_sync.find("RESET ALL"), std::string::npos) << next.last_sync;
}

TEST_F(SessionPinningFlow, WithHoldCursorInATransactionIsCheckedAtItsEnd) {
  run("begin", command_result("BEGIN", 'T'));
  Step s = run("declare c cursor with hold for select 1", command_result("DECLARE CURSOR", 'T'));
  EXPECT_TRUE(s.to_server.empty());  // not before the transaction ends
  s = run("commit", command_result("COMMIT"));
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(true));
  EXPECT_EQ(s.pinned_change, 1);
}

TEST_F(SessionPinningFlow, ListenInATransactionIsChecked) {
  run("begin", command_result("BEGIN", 'T'));
  run("listen jobs", command_result("LISTEN", 'T'));
  Step s = run("commit", command_result("COMMIT"));
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(true));
  EXPECT_EQ(s.pinned_change, 1);
}

TEST_F(SessionPinningFlow, TemporaryTableDroppedAtCommitDoesNotPin) {
  run("begin", command_result("BEGIN", 'T'));
  run("create temp table t (a int) on commit drop", command_result("CREATE TABLE", 'T'));
  Step s = run("commit", command_result("COMMIT"));
  EXPECT_FALSE(is_pin_check(s.to_server));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST_F(SessionPinningFlow, AdvisoryLockThroughTheExtendedProtocolIsChecked) {
  h.send(parse("", "select pg_advisory_lock($1)") + bind_to("", "") + execute() + sync(), *server);
  Step s = h.server(parse_complete() + bind_complete() + data_row({""}) + complete("SELECT 1") +
                    ready());
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(true));
  EXPECT_EQ(s.pinned_change, 1);
}

TEST_F(SessionPinningFlow, AdvisoryLockThroughANamedStatementIsChecked) {
  h.client(parse("lock", "select pg_advisory_lock(1)") + sync());
  h.send(bind_to("", "lock") + execute() + sync(), *server);
  Step s = h.server(parse_complete() + bind_complete() + data_row({""}) + complete("SELECT 1") +
                    ready());
  EXPECT_TRUE(is_pin_check(s.to_server));
}

TEST_F(SessionPinningFlow, UnlockRunsTheCheckAgainAndCanUnpin) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  ASSERT_TRUE(h.session().pinned());
  Step s = h.client(query("select pg_advisory_unlock(1)"));
  EXPECT_FALSE(s.check_out);
  s = h.server(row_result("t", "SELECT 1"));
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(false));
  EXPECT_EQ(s.pinned_change, -1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_FALSE(h.session().pinned());
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(SessionPinningFlow, StillHoldingAfterACheckStaysPinned) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  h.client(query("drop table x"));
  Step s = h.server(command_result("DROP TABLE"));
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(true));
  EXPECT_EQ(s.pinned_change, 0);
  EXPECT_TRUE(s.ops.empty());
  EXPECT_TRUE(h.session().pinned());
}

TEST_F(SessionPinningFlow, EveryStatementThatMayUnpinRunsTheCheck) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  for (const char* sql : {"drop table t", "close c", "deallocate q", "discard temp",
                          "select pg_advisory_unlock_all()", "unlisten *"}) {
    h.client(query(sql));
    Step s = h.server(command_result("OK"));
    EXPECT_TRUE(is_pin_check(s.to_server)) << sql;
    s = h.server(pin_check_result(true));
    EXPECT_EQ(s.pinned_change, 0) << sql;
  }
}

TEST_F(SessionPinningFlow, UnpinnedClientsDropNeedsNoCheck) {
  Step s = run("drop table t", command_result("DROP TABLE"));
  EXPECT_FALSE(is_pin_check(s.to_server));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST_F(SessionPinningFlow, RequestsPipelinedBehindTheCheckAreServed) {
  run("select pg_advisory_lock(1)", row_result("", "SELECT 1"));
  // The check is outstanding; the client already sends its next query.
  const std::string q = query("select 2");
  Step s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_server, q);
  s = h.server(pin_check_result(false) + row_result("2", "SELECT 1"));
  EXPECT_EQ(s.to_client, row_result("2", "SELECT 1"));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

TEST(SessionPinning, ARequestBehindTheCheckWaitsForItWhenTheSettingsChanged) {
  // asyncpg's Pool.release sends pg_advisory_unlock_all(), CLOSE ALL, UNLISTEN * and RESET ALL
  // in one query, and the pool's next user its query at once. RESET ALL put the server's
  // statement_timeout back to the server's default, not to the client's startup 7s.
  SessionHarness h({}, {{"options", "-c statement_timeout=7s"}});
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_advisory_lock(1)"), *server);
  Step s = h.server(row_result("", "SELECT 1"));
  ASSERT_TRUE(is_pin_check(s.to_server));
  h.server(pin_check_result(true));
  ASSERT_TRUE(h.session().pinned());
  h.client(query("set statement_timeout = '5s'"));
  h.server(command_result("SET"));
  h.client(query("select pg_advisory_unlock_all(); reset all"));
  s = h.server(row_description() + data_row({""}) + complete("SELECT 1") + complete("RESET") +
               ready('I'));
  ASSERT_TRUE(is_pin_check(s.to_server));
  // The next query arrives while the check runs: it waits for it.
  const std::string q = query("show statement_timeout");
  s = h.client(q);
  EXPECT_TRUE(s.to_server.empty());
  EXPECT_EQ(s.consumed, 0u);
  // Still holding a lock: the server stays, and gets the client's 7s before the query.
  s = h.server(pin_check_result(true));
  EXPECT_TRUE(s.resume_client);
  s = h.client(q);
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SET \"statement_timeout\" TO '7s';"});
  s = h.server(command_result("SET"));
  EXPECT_TRUE(s.resume_client);
  s = h.client(q);
  EXPECT_EQ(s.to_server, q);
}

TEST_F(SessionPinningFlow, PinnedClientsOwnUnfollowableSettingsStayOnItsServer) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  h.client(query("select set_config('app.user', current_user, false)"));
  h.server(row_result("u", "SELECT 1"));
  EXPECT_TRUE(server->settings_unknown);
  const std::string q = query("select current_setting('app.user')");
  EXPECT_EQ(h.client(q).to_server, q);
}

TEST_F(SessionPinningFlow, PinnedClientGoneIsCleanedWithDiscardAll) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "DISCARD ALL");
  EXPECT_EQ(s.pinned_change, -1);
  EXPECT_EQ(server->statements.size(), 0u);
}

TEST_F(SessionPinningFlow, PinnedClientGoneInATransactionRollsBackThenDiscards) {
  run_and_check("select pg_advisory_lock(1)", row_result("", "SELECT 1"), true);
  h.client(query("begin"));
  h.server(command_result("BEGIN", 'T'));
  Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(s.ops[0].sql2, "DISCARD ALL");
}

TEST(SessionPinning, SessionStateCreatedInADoBlockIsChecked) {
  for (const char* sql :
       {"DO $$BEGIN CREATE TEMP TABLE t (a int); END$$", "DO $$BEGIN LISTEN jobs; END$$",
        "DO $$BEGIN PERFORM pg_advisory_lock(1); END$$"}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query(sql), *server);
    Step s = h.server(command_result("DO"));
    EXPECT_TRUE(is_pin_check(s.to_server)) << sql;
  }
}

TEST(SessionPinning, ANamedPortalWithSessionStateIsChecked) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.client(parse("lock", "select pg_advisory_lock(1)") + sync());
  h.send(bind_to("p", "lock") + execute("p") + sync(), *server);
  Step s = h.server(parse_complete() + bind_complete() + data_row({""}) + complete("SELECT 1") +
                    ready());
  EXPECT_TRUE(is_pin_check(s.to_server));
  s = h.server(pin_check_result(true));
  EXPECT_EQ(s.pinned_change, 1);
}

TEST(SessionPinning, ANamedPortalSetIsFollowedAtItsExecute) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.client(parse("st", "SET statement_timeout = '5s'") + sync());
  h.send(bind_to("c1", "st") + execute("c1") + sync(), *server);
  h.answer(parse_complete() + bind_complete() + complete("SET") + ready());
  const Setting* set = h.session().client_settings().find("statement_timeout");
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(set->value, "'5s'");
}

std::string function_call() {
  // FunctionCall of OID 1: no argument formats, no arguments, text result.
  return message('F', std::string("\0\0\0\x01\0\0\0\0\0\0", 10));
}

TEST(SessionPinning, AFunctionCallIsCheckedEvenWithPinningOff) {
  for (bool pin : {true, false}) {
    SessionOptions o;
    o.pin_session_state = pin;
    SessionHarness h(o);
    auto server = SessionHarness::fresh_server();
    h.send(function_call(), *server);
    Step s = h.server(message('V', std::string("\xff\xff\xff\xff", 4)) + ready());
    EXPECT_TRUE(is_pin_check(s.to_server)) << pin;
    // What it did to settings cannot be known: the next client's sync starts from scratch.
    EXPECT_TRUE(server->settings_unknown) << pin;
    s = h.server(pin_check_result(false));
    EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << pin;
  }
}

TEST(SessionPinningOff, SessionStateIsRefusedWith0A000OnTheServer) {
  for (const char* sql : {"select pg_advisory_lock(1)", "create temp table t (a int)",
                          "declare c cursor with hold for select 1", "select 1 into temp t",
                          "DO $$BEGIN CREATE TEMP TABLE t (a int); END$$",
                          "DO $$BEGIN LISTEN jobs; END$$", "prepare p as select 1"}) {
    SessionHarness h(without_pinning());
    auto server = SessionHarness::fresh_server();
    const std::string sent = h.send(query(sql), *server);
    const auto q = queries_in(sent);
    ASSERT_EQ(q.size(), 1u) << sql;
    EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos) << sql << ": " << q[0];
    EXPECT_EQ(h.answer(error_result("0A000")), error_result("0A000"));
    EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release)) << sql;
  }
}

TEST(SessionPinningOff, ListenInATransactionIsRefused) {
  SessionHarness h(without_pinning());
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(query("listen jobs"));
  const auto q = queries_in(s.to_server);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos);
  // The server raises it, so the transaction fails as on any error.
  h.answer(error_result("0A000", 'E'));
  EXPECT_EQ(h.state(), SessionState::Holding);
}

TEST(SessionPinningOff, SessionStateIsRefusedThroughTheExtendedProtocol) {
  SessionHarness h(without_pinning());
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(
      parse("", "select pg_advisory_lock(1)") + bind_to("", "") + execute() + sync(), *server);
  // pgvalve's own Parse/Bind/Execute raising the error stands in; the rest waits for the Sync.
  EXPECT_EQ(tags_of(sent), "PBES");
  const auto p = parses_in(sent);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].second.find("ERRCODE = '0A000'"), std::string::npos);
  const std::string to_client =
      h.answer(parse_complete() + bind_complete() + error_message("0A000") + ready());
  EXPECT_EQ(tags_of(to_client), "EZ");
}

TEST(SessionPinningOff, NamedStatementWithSessionStateIsRefusedAtItsParse) {
  SessionHarness h(without_pinning());
  auto server = SessionHarness::fresh_server();
  // Not answered locally: the refusal comes where the client expects the ParseComplete.
  const std::string sent = h.send(parse("lock", "select pg_advisory_lock(1)") + sync(), *server);
  EXPECT_TRUE(h.checked_out);
  EXPECT_NE(parses_in(sent).at(0).second.find("ERRCODE = '0A000'"), std::string::npos);
}

TEST(SessionPinningOff, PrepareTransactionIsRefusedEitherWay) {
  for (bool pin : {true, false}) {
    SessionOptions o;
    o.pin_session_state = pin;
    SessionHarness h(o);
    auto server = SessionHarness::fresh_server();
    h.send(query("begin"), *server);
    h.answer(command_result("BEGIN", 'T'));
    Step s = h.client(query("PREPARE TRANSACTION 'x'"));
    const auto q = queries_in(s.to_server);
    ASSERT_EQ(q.size(), 1u);
    EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos) << pin;
  }
}

TEST(SessionPinningOff, OrdinaryStatementsAreNotRefused) {
  SessionHarness h(without_pinning());
  auto server = SessionHarness::fresh_server();
  const std::string q = query("select pg_advisory_xact_lock(1)");
  EXPECT_EQ(h.send(q, *server), q);
}

}  // namespace
}  // namespace pgvalve::session::testing
