// What a client can make pgvalve hold is bounded: requests in flight (backpressure), savepoints,
// statements in one query that changes settings, and what a transaction's settings take (one note
// per name, however often it is set).
#include <gtest/gtest.h>

#include "session/limits.h"
#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

std::string value_of(SessionHarness& h, std::string_view name) {
  const Setting* s = h.session().client_settings().find(name);
  return s ? s->value : "<none>";
}

TEST(SessionBounds, PipelinedRequestsStopAtTheCapAndResumeAsAnswersCome) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  // Simple queries: each is one request waiting for its ReadyForQuery.
  std::string queries;
  for (std::size_t i = 0; i < kMaxRequestsInFlight + 100; ++i)
    queries += query("select 1");
  Step s = h.client(queries);
  ASSERT_TRUE(s.check_out);
  h.linked(*server);
  s = h.client(queries);
  // Only the cap's worth is planned; the rest stays with the client. A Flush follows, so that
  // the server sends what it holds even if the client's own Sync is in what was not read.
  EXPECT_EQ(s.consumed, kMaxRequestsInFlight * query("select 1").size());
  EXPECT_EQ(s.to_server, queries.substr(0, s.consumed) + flush());
  EXPECT_FALSE(h.session().wants_client_input());
  // A quarter answered: still full.
  std::string answers;
  for (std::size_t i = 0; i < kMaxRequestsInFlight / 4; ++i)
    answers += ready();
  s = h.server(answers);
  EXPECT_FALSE(s.resume_client);
  EXPECT_FALSE(h.session().wants_client_input());
  // Half answered: the client is read again.
  s = h.server(answers);
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(h.session().wants_client_input());
  s = h.client(queries.substr(kMaxRequestsInFlight * query("select 1").size()));
  EXPECT_EQ(s.consumed, 100 * query("select 1").size());
}

// Bind/Execute pairs without a Sync: the server would hold its answers until one comes, and the
// Sync is in the part pgvalve stopped reading. The Flush pgvalve adds makes them come.
TEST(SessionBounds, AnExtendedPipelineWithoutSyncIsFlushedAtTheCap) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  server->unnamed_statement_of = h.session().identity();  // parsed by an earlier request
  const std::string pair = bind_to("", "") + execute();   // two answers each
  std::string batch;
  for (std::size_t i = 0; i < kMaxRequestsInFlight; ++i)
    batch += pair;
  batch += sync();
  Step s = h.client(batch);
  ASSERT_TRUE(s.check_out);
  h.linked(*server);
  s = h.client(batch);
  EXPECT_EQ(s.consumed, kMaxRequestsInFlight / 2 * pair.size());
  EXPECT_EQ(s.to_server, batch.substr(0, s.consumed) + flush());
  EXPECT_FALSE(h.session().wants_client_input());
  // The answers the Flush brought free the pipeline.
  std::string answers;
  for (std::size_t i = 0; i < kMaxRequestsInFlight / 4; ++i)
    answers += bind_complete() + complete("SELECT 1");
  s = h.server(answers);
  EXPECT_EQ(s.consumed, answers.size());
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(h.session().wants_client_input());
}

TEST(SessionBounds, ALostServerFreesAPipelineThatWasFull) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string queries;
  for (std::size_t i = 0; i < kMaxRequestsInFlight + 1; ++i)
    queries += query("select 1");
  h.client(queries);
  h.linked(*server);
  h.client(queries);
  EXPECT_FALSE(h.session().wants_client_input());
  Step s = h.lost();
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(h.session().wants_client_input());
}

TEST(SessionBounds, SavepointsOpenAtOnceAreCapped) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  std::string sql;
  std::string answer;
  for (std::size_t i = 0; i < kMaxTransactionSavepoints; ++i) {
    sql += "SAVEPOINT s" + std::to_string(i) + ";";
    answer += complete("SAVEPOINT");
  }
  h.client(query(sql));
  h.answer(answer + ready('T'));
  Step s = h.client(query("SAVEPOINT one_more"));
  const auto q = queries_in(s.to_server);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '53400'"), std::string::npos);
  h.answer(error_result("53400", 'E'));
  // Released ones make room again.
  h.client(query("ROLLBACK"));
  h.answer(command_result("ROLLBACK"));
  h.send(query("begin; SAVEPOINT a; RELEASE a; SAVEPOINT b"), *server);
  EXPECT_TRUE(queries_in(h.last.to_server).at(0).find("ERRCODE") == std::string::npos);
}

TEST(SessionBounds, SettingsChangedInATransactionHoldAt64KiBWhateverTheirNames) {
  // Each savepoint keeps its level's changes: the same name set again at every level would
  // otherwise hold 64 KiB per savepoint, with no cap on names passed.
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("BEGIN"), *server);
  h.answer(command_result("BEGIN", 'T'));
  const std::string value(20000, 'v');
  for (int level = 0; level < 3; ++level) {
    h.client(query("SAVEPOINT s" + std::to_string(level)));
    h.answer(command_result("SAVEPOINT", 'T'));
    Step s = h.client(query("SET application_name = '" + value + "'"));
    EXPECT_EQ(queries_in(s.to_server).at(0).find("ERRCODE"), std::string::npos) << level;
    h.answer(complete("SET") + parameter_status("application_name", "vvv") + ready('T'));
  }
  h.client(query("SAVEPOINT s3"));
  h.answer(command_result("SAVEPOINT", 'T'));
  Step s = h.client(query("SET application_name = '" + value + "'"));
  const auto q = queries_in(s.to_server);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '54000'"), std::string::npos);
}

TEST(SessionBounds, AHugeQueryThatChangesSettingsIsRefused) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string sql;
  for (int i = 0; i < 65536; ++i)
    sql += "select 1;";
  sql += "set search_path = evil";
  const auto q = queries_in(h.send(query(sql), *server));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '54000'"), std::string::npos);
  h.answer(error_result("54000"));
  EXPECT_EQ(value_of(h, "search_path"), "<none>");
}

TEST(SessionBounds, OneQuerySettingTheSameNameOftenCountsItOnce) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string sql;
  std::string answer;
  for (std::size_t i = 0; i <= kMaxClientSettings; ++i) {
    sql += "SET app.same = " + std::to_string(i) + ";";
    answer += complete("SET");
  }
  const auto q = queries_in(h.send(query(sql), *server));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].find("ERRCODE"), std::string::npos);
  h.answer(answer + ready());
  EXPECT_EQ(value_of(h, "app.same"), std::to_string(kMaxClientSettings));
}

TEST(SessionBounds, ATransactionSettingOneNameManyTimesEndsWithTheLastValue) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  for (int i = 0; i < 1000; ++i) {
    h.client(query("SET work_mem = '" + std::to_string(i + 64) + "kB'"));
    h.answer(command_result("SET", 'T'));
  }
  h.client(query("SAVEPOINT a"));
  h.answer(command_result("SAVEPOINT", 'T'));
  h.client(query("SET work_mem = '1MB'"));
  h.answer(command_result("SET", 'T'));
  h.client(query("RESET work_mem"));
  h.answer(command_result("RESET", 'T'));
  h.client(query("ROLLBACK TO a"));
  h.answer(command_result("ROLLBACK", 'T'));
  h.client(query("RESET lock_timeout"));  // never set: changes nothing
  h.answer(command_result("RESET", 'T'));
  h.client(query("commit"));
  h.answer(command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "work_mem"), "'1063kB'");
  EXPECT_EQ(value_of(h, "lock_timeout"), "<none>");
}

TEST(SessionBounds, ResetAllInATransactionReplacesWhatCameBefore) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("SET lock_timeout = '1s'"), *server);
  h.answer(command_result("SET"));
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("SET work_mem = '1MB'; RESET ALL; SET statement_timeout = '5s'"));
  h.answer(complete("SET") + complete("RESET") + complete("SET") + ready('T'));
  h.client(query("commit"));
  h.answer(command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "lock_timeout"), "<none>");
  EXPECT_EQ(value_of(h, "work_mem"), "<none>");
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
}

}  // namespace
}  // namespace pgvalve::session::testing
