// Session pooling: one server for the client's whole session, RESET returning to the client's own
// startup values, and the server given back clean (or closed) when the client leaves.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

struct SessionMode : ::testing::Test {
  std::unique_ptr<ServerState> server = SessionHarness::fresh_server();

  std::unique_ptr<SessionHarness> start(
      std::vector<std::pair<std::string, std::string>> startup = {}) {
    auto h = std::make_unique<SessionHarness>(SessionHarness::session_mode(), std::move(startup),
                                              server.get());
    if (!h->login.to_server.empty()) h->server(command_result("SET"));
    return h;
  }

  // A request on the linked server; returns what the server got.
  std::string request(SessionHarness& h, std::string_view sql, std::string_view answer) {
    Step s = h.client(query(sql));
    EXPECT_FALSE(s.check_out);
    h.answer(answer);
    return s.to_server;
  }
};

TEST_F(SessionMode, ServerIsLinkedAtStartAndKept) {
  auto h = start();
  EXPECT_EQ(tags_of(h->login_reply), "RSSSSSKZ");
  EXPECT_EQ(h->state(), SessionState::Holding);
  EXPECT_EQ(h->session().link_count(), 1u);
  EXPECT_TRUE(h->login.ops.empty());
  const std::string q = query("select 1");
  Step s = h->client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_server, q);
  EXPECT_EQ(h->state(), SessionState::Active);
  h->answer(row_result("1", "SELECT 1"));
  EXPECT_TRUE(h->last_ops.empty());
  EXPECT_EQ(h->state(), SessionState::Holding);
  EXPECT_EQ(h->session().link_count(), 1u);
}

// The I/O layer reads a server again after a read that leaves an answer due (a hang-up that came
// with those bytes would announce nothing more); once the answer is complete it only waits.
TEST_F(SessionMode, TheServerOwesAnAnswerFromTheRequestToItsReadyForQuery) {
  auto h = start();
  EXPECT_FALSE(h->session().answer_due(0));
  h->client(query("select 1"));
  EXPECT_TRUE(h->session().answer_due(0));
  h->server(row_description() + data_row({"1"}) + complete("SELECT 1"));
  EXPECT_TRUE(h->session().answer_due(0)) << "ReadyForQuery is still to come";
  h->server(ready());
  EXPECT_FALSE(h->session().answer_due(0));
  EXPECT_EQ(h->session().link_count(), 1u);
  EXPECT_FALSE(h->session().answer_due(1)) << "no such link";
}

TEST_F(SessionMode, LoginWithStartupSettingsSyncsThemFirst) {
  auto h = std::make_unique<SessionHarness>(
      SessionHarness::session_mode(),
      std::vector<std::pair<std::string, std::string>>{{"options", "-c statement_timeout=7s"}},
      server.get());
  EXPECT_EQ(queries_in(h->login.to_server),
            std::vector<std::string>{"SET \"statement_timeout\" TO '7s';"});
  EXPECT_TRUE(h->login.to_client.empty());
  Step s = h->server(command_result("SET"));
  EXPECT_EQ(tags_of(s.to_client), "RSSSSSKZ");
  EXPECT_TRUE(s.ops.empty());
  EXPECT_EQ(h->state(), SessionState::Holding);
}

TEST_F(SessionMode, ResetReturnsToTheStartupValueOnTheServer) {
  auto h = start({{"options", "-c statement_timeout=7s"}});
  request(*h, "SET statement_timeout = '5s'", command_result("SET"));
  request(*h, "RESET statement_timeout", command_result("RESET"));
  // The server's RESET went to its own default: the next request first sets 7s again.
  const std::string q = query("select 1");
  Step s = h->client(q);
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SET \"statement_timeout\" TO '7s';"});
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_EQ(h->state(), SessionState::Syncing);
  s = h->server(command_result("SET"));
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(s.to_client.empty());
  s = h->client(q);
  EXPECT_EQ(s.to_server, q);
  EXPECT_EQ(s.consumed, q.size());
  h->answer(row_result("1", "SELECT 1"));
  EXPECT_EQ(h->state(), SessionState::Holding);
}

TEST_F(SessionMode, ResetAllReturnsToTheStartupValues) {
  auto h = start({{"options", "-c statement_timeout=7s -c lock_timeout=2s"}});
  request(*h, "SET statement_timeout = '5s'", command_result("SET"));
  request(*h, "SET work_mem = '64MB'", command_result("SET"));
  request(*h, "RESET ALL", command_result("RESET"));
  Step s = h->client(query("select 1"));
  const auto sql = queries_in(s.to_server);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_NE(sql[0].find("SET \"statement_timeout\" TO '7s';"), std::string::npos) << sql[0];
  EXPECT_NE(sql[0].find("SET \"lock_timeout\" TO '2s';"), std::string::npos) << sql[0];
  EXPECT_EQ(sql[0].find("work_mem"), std::string::npos) << sql[0];
}

TEST_F(SessionMode, DiscardAllReturnsToTheStartupValues) {
  auto h = start({{"options", "-c statement_timeout=7s"}});
  request(*h, "DISCARD ALL", command_result("DISCARD ALL"));
  Step s = h->client(query("select 1"));
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SET \"statement_timeout\" TO '7s';"});
}

TEST_F(SessionMode, ResetOfAReportedSettingComesBackToTheStartupValue) {
  auto h = std::make_unique<SessionHarness>(
      SessionHarness::session_mode(),
      std::vector<std::pair<std::string, std::string>>{{"DateStyle", "German"}}, server.get());
  // The login's sync, answered as PostgreSQL does: with the value in its normal form.
  Step login = h->server(complete("SET") + parameter_status("DateStyle", "German, DMY") + ready());
  EXPECT_NE(login.to_client.find(std::string("DateStyle") + '\0' + "German, DMY"),
            std::string::npos);
  h->client(query("RESET DateStyle"));
  // The server went back to the pool's value; the client's session to its own, which it has.
  Step s = h->server(complete("RESET") + parameter_status("DateStyle", "ISO, MDY") + ready());
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  s = h->client(query("select now()"));
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SET \"datestyle\" TO 'German, DMY';"});
  s = h->server(complete("SET") + parameter_status("DateStyle", "German, DMY") + ready());
  EXPECT_EQ(tags_of(s.to_client), "");
  s = h->server(row_result("x", "SELECT 1"));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
}

TEST_F(SessionMode, ResetWithoutStartupValueNeedsNoSync) {
  auto h = start();
  request(*h, "SET statement_timeout = '5s'", command_result("SET"));
  request(*h, "RESET statement_timeout", command_result("RESET"));
  const std::string q = query("select 1");
  EXPECT_EQ(h->client(q).to_server, q);
}

TEST_F(SessionMode, SettingsPgvalveCannotFollowAreTheClientsOwnAndStay) {
  auto h = start();
  for (const char* sql :
       {"select set_config('search_path', current_setting('search_path') || ', ext', false)",
        "SET search_path FROM CURRENT", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"}) {
    request(*h, sql, row_result("x", "SELECT 1"));
    // The next request is not preceded by a reset of what the client just set.
    const std::string q = query("select current_setting('search_path')");
    Step s = h->client(q);
    EXPECT_EQ(s.to_server, q) << sql;
    h->answer(row_result("x", "SELECT 1"));
  }
}

TEST_F(SessionMode, KnownChangesAreSyncedWithoutResettingTheUnknownOnes) {
  auto h = start({{"options", "-c statement_timeout=7s"}});
  request(*h, "select set_config('search_path', current_setting('search_path'), false)",
          row_result("x", "SELECT 1"));
  request(*h, "RESET statement_timeout", command_result("RESET"));
  Step s = h->client(query("select 1"));
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SET \"statement_timeout\" TO '7s';"});
}

TEST_F(SessionMode, ClientGoneReleasesWithDiscardAll) {
  auto h = start();
  request(*h, "select 1", row_result("1", "SELECT 1"));
  Step s = h->gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "DISCARD ALL");
  EXPECT_EQ(s.ops[0].sql2, "");
  EXPECT_EQ(h->state(), SessionState::Closing);
  EXPECT_EQ(h->session().link_count(), 0u);
}

TEST_F(SessionMode, ClientGoneInATransactionRollsBackFirst) {
  auto h = start();
  request(*h, "begin", command_result("BEGIN", 'T'));
  Step s = h->gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_EQ(s.ops[0].sql2, "DISCARD ALL");
}

TEST_F(SessionMode, ClientGoneAfterATemporaryTableClosesTheServer) {
  auto h = start();
  request(*h, "create temp table t (a int)", command_result("CREATE TABLE"));
  Step s = h->gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Close);
}

TEST_F(SessionMode, TemporaryTableThroughTheExtendedProtocolClosesTheServerToo) {
  auto h = start();
  h->client(parse("", "select 1 into temporary t") + bind_to("", "") + execute() + sync());
  h->answer(parse_complete() + bind_complete() + complete("SELECT 1") + ready());
  Step s = h->gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Close);
}

TEST_F(SessionMode, ClientGoneWithAQueryInFlightCancels) {
  auto h = start();
  h->client(query("select pg_sleep(10)"));
  Step s = h->gone();
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
}

TEST_F(SessionMode, ListenAndSessionStateGoToTheServer) {
  auto h = start();
  for (const char* sql : {"LISTEN jobs", "select pg_advisory_lock(1)", "PREPARE q AS select 1",
                          "declare c cursor with hold for select 1"}) {
    const std::string sent = request(*h, sql, command_result("OK"));
    EXPECT_EQ(sent, query(sql)) << sql;
    EXPECT_EQ(h->state(), SessionState::Holding) << sql;
  }
  EXPECT_EQ(h->session().listen_channel_count(), 0u);
}

TEST_F(SessionMode, DrainBetweenRequestsClosesAtOnce) {
  auto h = start();
  Step s = h->drain();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
}

TEST_F(SessionMode, DrainInATransactionWaitsForItsEnd) {
  auto h = start();
  request(*h, "begin", command_result("BEGIN", 'T'));
  EXPECT_FALSE(h->drain().close_client);
  h->client(query("commit"));
  h->answer(command_result("COMMIT"));
  EXPECT_TRUE(h->last.close_client);
  EXPECT_EQ(sqlstates_in(h->last.to_client), "57P01");
}

// The client's own server held its session (advisory locks, LISTEN, prepared statements,
// settings): lost, the client is closed, as PostgreSQL closes it, not served on by a new server
// that lacks it all.
TEST_F(SessionMode, ServerLostClosesTheClient) {
  auto h = start();
  Step s = h->lost();
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_NE(s.to_client.find("pgvalve: the server connection holding this session was lost"),
            std::string::npos);
}

// The server's FATAL goodbye (pg_terminate_backend, idle_session_timeout) is not passed on while
// the client is idle, where its driver would read it as the answer to its next request: the
// client is closed with it when the connection ends.
TEST_F(SessionMode, AServersFatalGoodbyeClosesTheClientWithItsSqlstate) {
  auto h = start();
  Step s = h->server(error_message("57P01", "FATAL",
                                   "terminating connection due to "
                                   "administrator command"));
  EXPECT_TRUE(s.to_client.empty());
  s = h->lost();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "57P01");
  EXPECT_NE(s.to_client.find("administrator command"), std::string::npos);
}

}  // namespace
}  // namespace pgvalve::session::testing
