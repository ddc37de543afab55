// Session settings followed through either protocol and transactions, and the sync that makes a
// lent server's settings the client's (and hides one client's settings from the next).
#include <gtest/gtest.h>

#include "session/limits.h"
#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

const Setting* mine(SessionHarness& h, std::string_view name) {
  return h.session().client_settings().find(name);
}

std::string value_of(SessionHarness& h, std::string_view name) {
  const Setting* s = mine(h, name);
  return s ? s->value : "<none>";
}

std::string server_value(const ServerState& server, std::string_view name) {
  const Setting* s = server.settings.find(name);
  return s ? s->value : "<none>";
}

// One simple query on `server`, answered with `answer`.
std::string run(SessionHarness& h, ServerState& server, std::string_view sql,
                std::string_view answer) {
  h.send(query(sql), server);
  return h.answer(answer);
}

// ---- Outside a transaction -----------------------------------------------------------------

TEST(SettingsCopy, SharesItsItemsUntilEitherChanges) {
  Settings original;
  original.set("application_name", "meter", true);
  original.set("datestyle", "ISO, DMY", true);
  Settings copy = original;
  EXPECT_EQ(&copy.all(), &original.all());
  // Setting a value it already has changes nothing and copies nothing.
  EXPECT_FALSE(copy.set("DateStyle", "ISO, DMY", true));
  EXPECT_EQ(&copy.all(), &original.all());
  EXPECT_TRUE(copy.set("datestyle", "SQL, MDY", true));
  EXPECT_NE(&copy.all(), &original.all());
  EXPECT_EQ(original.find("datestyle")->value, "ISO, DMY");
  EXPECT_EQ(copy.find("datestyle")->value, "SQL, MDY");
  Settings other = original;
  other.erase("application_name");
  other.keep_reported_only();
  EXPECT_EQ(original.size(), 2u);
  EXPECT_EQ(other.size(), 1u);
  Settings cleared = original;
  cleared.clear();
  EXPECT_EQ(original.size(), 2u);
  EXPECT_EQ(cleared.bytes(), 0u);
}

TEST(SessionSettings, SetOutsideATransactionIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
  EXPECT_EQ(mine(h, "statement_timeout")->form, SettingForm::Raw);
  EXPECT_EQ(server_value(*server, "statement_timeout"), "'5s'");
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

TEST(SessionSettings, FailedSetIsNotFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = 'soon'", error_result("22023"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(server->settings.find("statement_timeout"), nullptr);
}

TEST(SessionSettings, ResetForgetsTheSetting) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  run(h, *server, "RESET statement_timeout", command_result("RESET"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(server->settings.find("statement_timeout"), nullptr);
}

TEST(SessionSettings, SetToDefaultIsAReset) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  run(h, *server, "SET statement_timeout TO DEFAULT", command_result("SET"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
}

TEST(SessionSettings, ResetReturnsToTheStartupValue) {
  SessionHarness h({}, {{"options", "-c statement_timeout=7s"}});
  EXPECT_EQ(value_of(h, "statement_timeout"), "7s");
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
  run(h, *server, "RESET statement_timeout", command_result("RESET"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "7s");
}

// PostgreSQL reads a startup search_path as a list (libpq's options=-c search_path=foo,public,
// PgJDBC's currentSchema): replayed with set_config, not as one quoted schema name.
TEST(SessionSettings, AStartupSearchPathStaysAList) {
  SessionHarness h({}, {{"options", "-c search_path=foo,public"}});
  auto server = SessionHarness::fresh_server();
  bool synced = false;
  h.send(query("select 1"), *server, &synced);
  EXPECT_TRUE(synced);
  EXPECT_NE(h.last_sync.find("set_config('search_path', 'foo,public', false)"), std::string::npos)
      << h.last_sync;
  EXPECT_EQ(h.last_sync.find("SET search_path"), std::string::npos) << h.last_sync;
}

TEST(SessionSettings, ResetAllKeepsRoleAndSessionAuthorization) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  run(h, *server, "SET ROLE reader", command_result("SET"));
  run(h, *server, "RESET ALL", command_result("RESET"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(value_of(h, "role"), "reader");
  EXPECT_EQ(server->settings.find("statement_timeout"), nullptr);
  EXPECT_EQ(server_value(*server, "role"), "reader");
}

TEST(SessionSettings, DiscardAllForgetsEverySetting) {
  SessionHarness h({}, {{"options", "-c work_mem=8MB"}});
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET"));
  run(h, *server, "SET ROLE reader", command_result("SET"));
  run(h, *server, "DISCARD ALL", command_result("DISCARD ALL"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(mine(h, "role"), nullptr);
  EXPECT_EQ(value_of(h, "work_mem"), "8MB");  // back to the startup value
  EXPECT_EQ(server->settings.find("role"), nullptr);
}

TEST(SessionSettings, SetLocalIsNotFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SET LOCAL statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "commit", command_result("COMMIT"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
}

// ---- Inside transactions -------------------------------------------------------------------

// transaction_isolation, transaction_read_only and transaction_deferrable belong to the current
// transaction: set outside a block they are gone at the next statement. Replayed on another
// server they would do nothing, or be refused by a hot standby (serializable, read-write).
TEST(SessionSettings, ParametersOfTheCurrentTransactionAreNotFollowed) {
  for (const char* sql :
       {"SET transaction_isolation = 'serializable'", "set transaction_read_only = off",
        "SET SESSION transaction_deferrable TO on", "RESET transaction_isolation",
        "select set_config('transaction_isolation', 'serializable', false)"}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    run(h, *server, sql, command_result("SET"));
    EXPECT_EQ(h.session().client_settings().size(), 0u) << sql;
    auto other = SessionHarness::fresh_server();
    bool synced = false;
    h.send(query("select 1"), *other, &synced);
    EXPECT_FALSE(synced) << sql << ": " << h.last_sync;
  }
  // Bound through the extended protocol too.
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "select set_config($1, $2, false)") +
             bind_values("", {"transaction_read_only", "off"}) + execute() + sync(),
         *server);
  h.answer(parse_complete() + bind_complete() + command_result("SELECT 1"));
  EXPECT_EQ(h.session().client_settings().size(), 0u);
}

TEST(SessionSettings, SetInATransactionAppliesAtCommit) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  run(h, *server, "commit", command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
  EXPECT_EQ(server_value(*server, "statement_timeout"), "'5s'");
}

TEST(SessionSettings, SetInATransactionIsDroppedAtRollback) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "rollback", command_result("ROLLBACK"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(server->settings.find("statement_timeout"), nullptr);
}

TEST(SessionSettings, CommitOfAFailedTransactionAnsweringRollbackDropsTheSet) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "select 1/0", error_result("22012", 'E'));
  run(h, *server, "commit", command_result("ROLLBACK"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
}

TEST(SessionSettings, BeginSetCommitInOneQueryApplies) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "BEGIN; SET statement_timeout = '5s'; COMMIT",
      complete("BEGIN") + complete("SET") + complete("COMMIT") + ready());
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
}

TEST(SessionSettings, RollbackToSavepointDropsTheSetsAfterIt) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SET work_mem = '1MB'", command_result("SET", 'T'));
  run(h, *server, "SAVEPOINT a", command_result("SAVEPOINT", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "SAVEPOINT b", command_result("SAVEPOINT", 'T'));
  run(h, *server, "SET lock_timeout = '1s'", command_result("SET", 'T'));
  run(h, *server, "ROLLBACK TO SAVEPOINT a", command_result("ROLLBACK", 'T'));
  // a is still there: a second rollback to it drops what came after the first.
  run(h, *server, "SET search_path = x", command_result("SET", 'T'));
  run(h, *server, "ROLLBACK TO a", command_result("ROLLBACK", 'T'));
  run(h, *server, "SET idle_session_timeout = 0", command_result("SET", 'T'));
  run(h, *server, "commit", command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "work_mem"), "'1MB'");
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(mine(h, "lock_timeout"), nullptr);
  EXPECT_EQ(mine(h, "search_path"), nullptr);
  EXPECT_EQ(value_of(h, "idle_session_timeout"), "0");
}

TEST(SessionSettings, ReleaseSavepointKeepsItsSets) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SAVEPOINT a", command_result("SAVEPOINT", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "RELEASE SAVEPOINT a", command_result("RELEASE", 'T'));
  run(h, *server, "commit", command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
}

TEST(SessionSettings, RollbackToAReleasedOuterSavepointDropsTheInnerSets) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  run(h, *server, "SAVEPOINT a", command_result("SAVEPOINT", 'T'));
  run(h, *server, "SAVEPOINT b", command_result("SAVEPOINT", 'T'));
  run(h, *server, "SET statement_timeout = '5s'", command_result("SET", 'T'));
  run(h, *server, "RELEASE b", command_result("RELEASE", 'T'));
  run(h, *server, "ROLLBACK TO a", command_result("ROLLBACK", 'T'));
  run(h, *server, "commit", command_result("COMMIT"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
}

TEST(SessionSettings, SeveralSetsInOneQueryAllApplyWhenItSucceeds) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'; SET lock_timeout = '1s'",
      complete("SET") + complete("SET") + ready());
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
  EXPECT_EQ(value_of(h, "lock_timeout"), "'1s'");
}

TEST(SessionSettings, SeveralSetsInOneQueryNoneApplyWhenItFails) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout = '5s'; SET lock_timeout = 'soon'",
      complete("SET") + error_message("22023") + ready());
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(mine(h, "lock_timeout"), nullptr);
}

TEST(SessionSettings, SetsPipelinedWithCommitApply) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  h.client(query("SET statement_timeout = '5s'") + query("commit"));
  h.answer(command_result("SET", 'T') + command_result("COMMIT"));
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

// ---- Through the extended protocol ---------------------------------------------------------

TEST(SessionSettings, SetThroughTheUnnamedStatementIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "SET statement_timeout = '5s'") + bind_to("", "") + execute() + sync(), *server);
  h.answer(parse_complete() + bind_complete() + complete("SET") + ready());
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
}

TEST(SessionSettings, SetThroughANamedStatementIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.client(parse("st", "SET statement_timeout = '5s'") + sync());
  h.send(bind_to("", "st") + execute() + sync(), *server);
  h.answer(parse_complete() + bind_complete() + complete("SET") + ready());
  EXPECT_EQ(value_of(h, "statement_timeout"), "'5s'");
}

TEST(SessionSettings, FailedExtendedSetIsNotFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "SET statement_timeout = 'x'") + bind_to("", "") + execute() + sync(), *server);
  h.answer(parse_complete() + bind_complete() + error_message("22023") + ready());
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
}

TEST(SessionSettings, SetConfigSessionIsFollowedOnTheServerAndTheClient) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select set_config('statement_timeout', '1234ms', false)"), *server);
  auto to_client = h.answer(row_result("1234ms", "SELECT 1"));
  EXPECT_EQ(tags_of(to_client), "TDCZ");
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(server_value(*server, "statement_timeout"), "'1234ms'");
  ASSERT_NE(mine(h, "statement_timeout"), nullptr);
  EXPECT_EQ(mine(h, "statement_timeout")->value, "'1234ms'");
  EXPECT_EQ(mine(h, "statement_timeout")->form, SettingForm::Function);
}

TEST(SessionSettings, SetConfigThroughTheExtendedProtocolIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "select set_config('search_path', 'a, b', false)") + bind_to("", "") +
             execute() + sync(),
         *server);
  h.answer(parse_complete() + bind_complete() + data_row({"a, b"}) + complete("SELECT 1") +
           ready());
  ASSERT_NE(mine(h, "search_path"), nullptr);
  EXPECT_EQ(mine(h, "search_path")->form, SettingForm::Function);
}

TEST(SessionSettings, SetConfigLocalIsIgnored) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "select set_config('statement_timeout', '1s', true)",
      row_result("1s", "SELECT 1"));
  EXPECT_EQ(mine(h, "statement_timeout"), nullptr);
  EXPECT_FALSE(server->settings_unknown);
}

TEST(SessionSettings, SetConfigWithComputedArgumentsMakesTheServerUnknown) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "select set_config('statement_timeout', (select '1s'), false)",
      row_result("1s", "SELECT 1"));
  EXPECT_TRUE(server->settings_unknown);
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

// Text parameters (NULL: nullopt), then text results: the rest of a Bind after its names.
std::string bind_rest_of(std::vector<std::optional<std::string>> values) {
  std::string rest;
  protocol::append_i16(rest, 0);  // parameter formats: all text
  protocol::append_i16(rest, static_cast<std::int16_t>(values.size()));
  for (const auto& v : values) {
    protocol::append_i32(rest, v ? static_cast<std::int32_t>(v->size()) : -1);
    if (v) rest += *v;
  }
  protocol::append_i16(rest, 0);
  return rest;
}

// Drivers and ORMs set a tenant id for row-level security so: the values come from the Bind.
TEST(SessionSettings, SetConfigWithBoundArgumentsIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  auto run_bound = [&](std::string_view sql, std::vector<std::optional<std::string>> values) {
    std::string in;
    protocol::append_parse(in, "", sql, {});
    protocol::append_bind(in, "", "", bind_rest_of(std::move(values)));
    in += execute() + sync();
    h.send(in, *server);
    h.answer(parse_complete() + bind_complete() + data_row({"x"}) + complete("SELECT 1") + ready());
  };
  run_bound("select set_config('app.tenant', $1, false)", {"it's 42"});
  EXPECT_FALSE(server->settings_unknown);
  EXPECT_EQ(value_of(h, "app.tenant"), "'it''s 42'");
  run_bound("select set_config($1, $2, false)", {"App.Region", "eu"});
  EXPECT_EQ(value_of(h, "app.region"), "'eu'");
  // Another server gets them before the client's next request.
  auto other = SessionHarness::fresh_server();
  bool synced = false;
  h.send(query("select 1"), *other, &synced);
  EXPECT_TRUE(synced);
  EXPECT_NE(h.last_sync.find("set_config('app.tenant', 'it''s 42', false)"), std::string::npos)
      << h.last_sync;
  h.answer(row_result("1", "SELECT 1"));
  // NULL (a reset to the default) is not followed: the server is reset before its next lender.
  run_bound("select set_config('app.tenant', $1, false)", {std::nullopt});
  EXPECT_TRUE(server->settings_unknown);
}

// The review saw only "$1": the caps are applied to the bound values.
TEST(SessionSettings, ABoundSettingPastTheCapsIsUnknownNotFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string in;
  protocol::append_parse(in, "", "select set_config('app.blob', $1, false)", {});
  protocol::append_bind(in, "", "", bind_rest_of({std::string(4096, 'x')}));
  in += execute() + sync();
  h.send(in, *server);
  h.answer(parse_complete() + bind_complete() + data_row({"x"}) + complete("SELECT 1") + ready());
  EXPECT_EQ(mine(h, "app.blob"), nullptr);
  EXPECT_TRUE(server->settings_unknown);
}

// Session mode passes statement names through: a named statement that changes a setting is
// not followed, and the client's reads stay on its own server, where the setting is.
TEST(SessionSettings, ANamedStatementThatSetsInSessionModeMakesTheOwnServerUnknown) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, own.get());
  std::string in = parse("s1", "select set_config('app.tenant', $1, false)");
  protocol::append_bind(in, "", "s1", bind_rest_of({"7"}));
  in += execute() + sync();
  EXPECT_EQ(h.client(in).to_server, in);
  h.server(parse_complete() + bind_complete() + data_row({"7"}) + complete("SELECT 1") + ready());
  EXPECT_TRUE(own->settings_unknown);
}

TEST(SessionSettings, SetInsideADoBlockMakesTheServerUnknown) {
  for (const char* sql : {"DO $$BEGIN SET ROLE admin; END$$",
                          "DO $$BEGIN EXECUTE 'SET search_path TO ' || quote_ident('x'); END$$"}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    run(h, *server, sql, command_result("DO"));
    EXPECT_TRUE(server->settings_unknown) << sql;
    // The next client of that server gets a reset first.
    SessionHarness next;
    bool synced = false;
    next.send(query("select 1"), *server, &synced);
    EXPECT_TRUE(synced) << sql;
  }
}

TEST(SessionSettings, RoleAndSessionAuthorizationAreFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET ROLE reader", command_result("SET"));
  EXPECT_EQ(value_of(h, "role"), "reader");
  run(h, *server, "RESET ROLE", command_result("RESET"));
  EXPECT_EQ(mine(h, "role"), nullptr);
  run(h, *server, "SET ROLE reader", command_result("SET"));
  run(h, *server, "SET ROLE NONE", command_result("SET"));
  EXPECT_EQ(mine(h, "role"), nullptr);
  EXPECT_EQ(server->settings.find("role"), nullptr);
  run(h, *server, "SET SESSION AUTHORIZATION alice", command_result("SET"));
  EXPECT_EQ(value_of(h, "session_authorization"), "alice");
  EXPECT_EQ(server_value(*server, "session_authorization"), "alice");
  run(h, *server, "SET SESSION AUTHORIZATION DEFAULT", command_result("SET"));
  EXPECT_EQ(mine(h, "session_authorization"), nullptr);
  run(h, *server, "RESET SESSION AUTHORIZATION", command_result("RESET"));
  EXPECT_EQ(mine(h, "session_authorization"), nullptr);
}

TEST(SessionSettings, SetFromCurrentMakesTheServerUnknown) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET statement_timeout FROM CURRENT", command_result("SET"));
  EXPECT_TRUE(server->settings_unknown);
}

// pgjdbc's setReadOnly (readOnlyMode=always) sends it: PostgreSQL reports the new
// default_transaction_read_only, which must stay the client's, not be reset as another client's.
TEST(SessionSettings, SetSessionCharacteristicsOfOneModeIsFollowed) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
      parameter_status("default_transaction_read_only", "on") + command_result("SET"));
  EXPECT_FALSE(server->settings_unknown);
  EXPECT_EQ(value_of(h, "default_transaction_read_only"), "on");
  bool synced = false;
  h.send(query("insert into t values (1)"), *server, &synced);
  EXPECT_FALSE(synced) << "the client's own setting is not undone: " << h.last_sync;
  h.answer(error_result("25006"));
  // Another server gets it before the client's next request.
  auto other = SessionHarness::fresh_server();
  h.send(query("select 1"), *other, &synced);
  EXPECT_TRUE(synced);
  EXPECT_NE(h.last_sync.find("SET \"default_transaction_read_only\" TO 'on'"), std::string::npos)
      << h.last_sync;
  h.answer(row_result("1", "SELECT 1"));
  run(h, *server, "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
      command_result("SET"));
  EXPECT_EQ(value_of(h, "default_transaction_isolation"), "repeatable read");
  run(h, *server, "SET SESSION CHARACTERISTICS AS TRANSACTION NOT DEFERRABLE",
      command_result("SET"));
  EXPECT_EQ(value_of(h, "default_transaction_deferrable"), "off");
  EXPECT_FALSE(server->settings_unknown);
}

TEST(SessionSettings, SetSessionCharacteristicsOfSeveralModesMakesTheServerUnknown) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, DEFERRABLE",
      command_result("SET"));
  EXPECT_TRUE(server->settings_unknown);
}

// ---- The sync ------------------------------------------------------------------------------

TEST(SessionSettings, UnknownServerIsResetBeforeTheNextLendersRequest) {
  auto server = SessionHarness::fresh_server();
  {
    SessionHarness first;
    run(first, *server, "select set_config('work_mem', current_setting('work_mem'), false)",
        row_result("4MB", "SELECT 1"));
    ASSERT_TRUE(server->settings_unknown);
  }
  SessionHarness next;
  run(next, *server, "SET statement_timeout = '5s'", command_result("SET"));
  bool synced = false;
  const std::string q = query("select 1");
  EXPECT_EQ(next.send(q, *server, &synced), q);
  // The first request after SET ran on a server in sync (it set it itself); make it unknown.
  server->settings_unknown = true;
  synced = false;
  next.answer(row_result("1", "SELECT 1"));
  EXPECT_EQ(next.send(q, *server, &synced), q);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(next.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0],
            "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;"
            "SET \"datestyle\" TO 'ISO, MDY';SET \"timezone\" TO 'UTC';"
            "SET \"client_encoding\" TO 'UTF8';SET \"application_name\" TO '';"
            "SET \"statement_timeout\" TO '5s';");
  EXPECT_FALSE(server->settings_unknown);
}

TEST(SessionSettings, UnknownServerIsResetForAClientWithoutSettings) {
  auto server = SessionHarness::fresh_server();
  server->settings_unknown = true;
  SessionHarness h;
  bool synced = false;
  h.send(query("select 1"), *server, &synced);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(h.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_TRUE(sql[0].starts_with("RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;")) << sql[0];
}

TEST(SessionSettings, ClientSettingsAreSyncedBeforeItsRequestOnAnotherServer) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  run(h, *first, "SET SESSION AUTHORIZATION alice", command_result("SET"));
  run(h, *first, "SET ROLE reader", command_result("SET"));
  run(h, *first, "SET statement_timeout = '5s'", command_result("SET"));
  run(h, *first, "select set_config('search_path', 'app, public', false)",
      row_result("app, public", "SELECT 1"));
  run(h, *first, "SET TimeZone = 'Europe/Paris'",
      complete("SET") + parameter_status("TimeZone", "Europe/Paris") + ready());

  // Another server, which has a setting of its own the client does not have.
  auto other = SessionHarness::fresh_server();
  other->settings.set("lock_timeout", "'1s'", false);
  const std::string q = query("select 1");
  Step s = h.client(q);
  ASSERT_TRUE(s.check_out);
  s = h.linked(*other);
  EXPECT_EQ(h.state(), SessionState::Syncing);
  EXPECT_FALSE(h.session().wants_client_input());
  EXPECT_FALSE(s.resume_client);
  const auto sql = queries_in(s.to_server);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0],
            "SET \"session_authorization\" TO alice;SET \"role\" TO reader;"
            "SET \"statement_timeout\" TO '5s';"
            "SELECT pg_catalog.set_config('search_path', 'app, public', false);"
            "SET \"timezone\" TO 'Europe/Paris';RESET \"lock_timeout\";");
  // The request is not taken while the sync runs.
  s = h.client(q);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_server.empty());
  // The sync's answers are pgvalve's own, its ParameterStatus too: the client's TimeZone is
  // what it was told when it set it.
  s = h.server(complete("SET") + complete("SET") + complete("SET") + row_description() +
               data_row({"app, public"}) + complete("SELECT 1") +
               parameter_status("TimeZone", "Europe/Paris") + complete("SET") + complete("RESET") +
               ready());
  EXPECT_EQ(tags_of(s.to_client), "");
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(s.ops.empty());
  s = h.client(q);
  EXPECT_EQ(s.to_server, q);
  EXPECT_EQ(server_value(*other, "statement_timeout"), "'5s'");
  EXPECT_EQ(other->settings.find("lock_timeout"), nullptr);
  // In sync now: the next request on it needs none.
  h.answer(row_result("1", "SELECT 1"));
  bool synced = false;
  h.send(q, *other, &synced);
  EXPECT_FALSE(synced);
}

TEST(SessionSettings, SettingsOfOneClientAreRemovedForTheNext) {
  auto server = SessionHarness::fresh_server();
  SessionHarness first;
  run(first, *server, "SET statement_timeout = '5s'", command_result("SET"));
  run(first, *server, "SET application_name = 'first'",
      complete("SET") + parameter_status("application_name", "first") + ready());
  SessionHarness second;
  bool synced = false;
  second.send(query("select 1"), *server, &synced);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(second.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0], "SET \"application_name\" TO '';RESET \"statement_timeout\";");
}

// A server as PostgreSQL 15 reports itself: also the parameters that are not the session's.
std::unique_ptr<ServerState> reporting_server() {
  auto s = SessionHarness::fresh_server();
  for (auto [name, value] : {std::pair<const char*, const char*>{"session_authorization", "pool"},
                             {"is_superuser", "on"},
                             {"default_transaction_read_only", "off"},
                             {"in_hot_standby", "off"},
                             {"server_version", "15.6"}}) {
    s->settings.set(name, value, true);
    s->startup_parameters.emplace_back(name, value);
  }
  return s;
}

TEST(SessionSettings, SessionAuthorizationIsResetForTheNextClient) {
  auto server = reporting_server();
  SessionHarness first;
  run(first, *server, "SET SESSION AUTHORIZATION alice",
      complete("SET") + parameter_status("is_superuser", "off") +
          parameter_status("session_authorization", "alice") + ready());
  SessionHarness next;
  bool synced = false;
  next.send(query("select current_user"), *server, &synced);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(next.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0], "RESET SESSION AUTHORIZATION;");
}

TEST(SessionSettings, SessionAuthorizationIsResetBeforeTheNextClientsRole) {
  auto server = reporting_server();
  SessionHarness first;
  run(first, *server, "SET SESSION AUTHORIZATION alice",
      complete("SET") + parameter_status("session_authorization", "alice") + ready());
  SessionHarness next;
  auto other = reporting_server();
  run(next, *other, "SET ROLE reader", command_result("SET"));
  bool synced = false;
  next.send(query("select current_user"), *server, &synced);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(next.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  // Setting the session authorization would undo the role: it goes first.
  EXPECT_EQ(sql[0], "RESET SESSION AUTHORIZATION;SET \"role\" TO reader;");
}

TEST(SessionSettings, ReportedSettingAClientChangedIsResetForTheNextClient) {
  auto server = reporting_server();
  SessionHarness first;
  run(first, *server, "SET default_transaction_read_only = on",
      complete("SET") + parameter_status("default_transaction_read_only", "on") + ready());
  SessionHarness next;
  bool synced = false;
  next.send(query("insert into t values (1)"), *server, &synced);
  ASSERT_TRUE(synced);
  const auto sql = queries_in(next.last_sync);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0], "RESET \"default_transaction_read_only\";");
}

TEST(SessionSettings, ServersOwnReportedParametersAreNeverReset) {
  auto server = reporting_server();
  server->settings.set("in_hot_standby", "on", true);  // promoted or demoted meanwhile
  server->settings.set("is_superuser", "off", true);
  SessionHarness first;
  run(first, *server, "SET statement_timeout = '1s'", command_result("SET"));
  SessionHarness next;
  bool synced = false;
  next.send(query("select 1"), *server, &synced);
  ASSERT_TRUE(synced);
  EXPECT_EQ(queries_in(next.last_sync), std::vector<std::string>{"RESET \"statement_timeout\";"});
}

TEST(SessionSettings, SettingsTheServerRefusesCloseTheClientAndGiveTheServerBack) {
  // Every server would refuse them (a startup `work_mem=abc`): an error per request, each costing
  // a new server connection, would only churn the pool. PostgreSQL refuses such a login.
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  run(h, *first, "SET statement_timeout = '5s'", command_result("SET"));
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  Step s = h.linked(*other);
  ASSERT_FALSE(s.to_server.empty());
  s = h.server(error_result("42704"));
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "42704");
  EXPECT_EQ(errors[0].severity, "FATAL");
  EXPECT_EQ(
      errors[0].message.rfind("pgvalve: the server refused this client's session settings", 0), 0u)
      << errors[0].message;
  EXPECT_TRUE(s.close_client);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);  // the sync left nothing on it
}

TEST(SessionSettings, ASyncCutByALostServerFailsTheWaitingRequestOnly) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  run(h, *first, "SET statement_timeout = '5s'", command_result("SET"));
  auto other = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  h.linked(*other);
  Step s = h.lost();
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_FALSE(s.close_client);
  s = h.client(q);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_FALSE(s.close_client);
}

TEST(SessionSettings, LoginSyncSendsTheReplyAfterItWithTheServersValue) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"DateStyle", "ISO"}}, server.get());
  EXPECT_EQ(h.login.to_client, "");  // the reply waits for the sync
  const auto sql = queries_in(h.login.to_server);
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_EQ(sql[0], "SET \"datestyle\" TO 'ISO';");
  EXPECT_EQ(h.state(), SessionState::Syncing);
  // PostgreSQL holds "ISO, MDY" for it and reports nothing, as nothing changed.
  Step s = h.server(command_result("SET"));
  EXPECT_EQ(tags_of(s.to_client), "RSSSSSKZ");
  bool found = false;
  for (const auto& m : messages_of(s.to_client)) {
    if (auto ps = protocol::read_parameter_status(frame_of(m)); ps && ps->name == "DateStyle") {
      EXPECT_EQ(ps->value, "ISO, MDY");
      found = true;
    }
  }
  EXPECT_TRUE(found);
  // Transaction mode: the server goes back at once.
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionSettings, LoginSyncReportsWhatTheServerSays) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"TimeZone", "europe/paris"}}, server.get());
  Step s = h.server(complete("SET") + parameter_status("TimeZone", "Europe/Paris") + ready());
  for (const auto& m : messages_of(s.to_client)) {
    if (auto ps = protocol::read_parameter_status(frame_of(m)); ps && ps->name == "TimeZone") {
      EXPECT_EQ(ps->value, "Europe/Paris");
    }
  }
  EXPECT_EQ(value_of(h, "timezone"), "Europe/Paris");
}

TEST(SessionSettings, LoginWithSettingsTheServerHasNeedsNoSync) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"application_name", ""}}, server.get());
  EXPECT_TRUE(h.login.to_server.empty());
  EXPECT_EQ(tags_of(h.login.to_client), "RSSSSSKZ");
  EXPECT_TRUE(h.login.has_op(LinkOp::Kind::Release));
}

TEST(SessionSettings, FailedLoginSyncClosesTheClient) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"DateStyle", "nonsense"}}, server.get());
  Step s = h.server(error_result("22023"));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "22023");  // the server's reason, as PostgreSQL's login
  EXPECT_EQ(tags_of(s.to_client), "E");           // no login reply
  // The failed sync ran as one implicit transaction and changed nothing: the server may go back.
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(h.session().link_count(), 0u);
}

// ---- Caps ----------------------------------------------------------------------------------

TEST(SessionSettings, TooManySettingsAreRefusedWith53400) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string sql;
  std::string answer;
  for (std::size_t i = 0; i < kMaxClientSettings; ++i) {
    sql += "SET app.s" + std::to_string(i) + " = 1;";
    answer += complete("SET");
  }
  run(h, *server, sql, answer + ready());
  ASSERT_EQ(h.session().client_settings().size(), kMaxClientSettings);
  const std::string sent = h.send(query("SET app.one_more = 1"), *server);
  const auto q = queries_in(sent);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '53400'"), std::string::npos) << q[0];
  h.answer(error_result("53400"));
  EXPECT_EQ(mine(h, "app.one_more"), nullptr);
  // Changing one it has is fine.
  EXPECT_EQ(h.send(query("SET app.s0 = 2"), *server), query("SET app.s0 = 2"));
}

// Found by a review: a login with 1,100 startup settings was accepted, and then every SET of a
// new one got 53400. The login is refused with the limit a SET meets, counting options -c too.
TEST(SessionSettings, LoginWithMoreSettingsThanTheLimitIsRefusedWith53400) {
  std::vector<std::pair<std::string, std::string>> startup = {{"user", "app"}, {"database", "db"}};
  for (std::size_t i = 0; i < kMaxClientSettings; ++i)
    startup.emplace_back("app.s" + std::to_string(i), "1");
  {
    SessionHarness h({}, startup);  // exactly the limit: served
    EXPECT_EQ(tags_of(h.login.to_client).front(), 'R');
    EXPECT_FALSE(h.login.close_client);
    EXPECT_EQ(h.session().client_settings().size(), kMaxClientSettings);
  }
  {
    auto with_options = startup;
    with_options.emplace_back("options", "-c app.one=1 -c app.two=2");
    auto server = SessionHarness::fresh_server();
    SessionHarness h(SessionHarness::session_mode(), with_options, server.get());
    EXPECT_TRUE(h.login.close_client);
    EXPECT_EQ(tags_of(h.login.to_client), "E");  // no AuthenticationOk
    EXPECT_EQ(sqlstates_in(h.login.to_client), "53400");
    EXPECT_NE(h.login.to_client.find("pgvalve: a client may set at most 256 session settings"),
              std::string::npos);
    EXPECT_TRUE(h.login.to_server.empty());
    EXPECT_EQ(h.session().link_count(), 0u);  // session mode's server went back
  }
  startup.emplace_back("app.one_more", "1");
  SessionHarness h({}, startup);
  EXPECT_TRUE(h.login.close_client);
  EXPECT_EQ(sqlstates_in(h.login.to_client), "53400");
}

TEST(SessionSettings, SettingsCapCountsPipelinedRequestsNotAnsweredYet) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  // One flight of separate queries: none is answered when the next is planned.
  std::string flight;
  for (std::size_t i = 0; i <= kMaxClientSettings; ++i)
    flight += query("SET app.p" + std::to_string(i) + " = 1");
  const auto q = queries_in(h.send(flight, *server));
  ASSERT_EQ(q.size(), kMaxClientSettings + 1);
  EXPECT_EQ(q[kMaxClientSettings - 1].find("ERRCODE"), std::string::npos);
  EXPECT_NE(q[kMaxClientSettings].find("ERRCODE = '53400'"), std::string::npos);
  // The same setting many times counts once.
  SessionHarness again;
  auto other = SessionHarness::fresh_server();
  std::string same;
  for (std::size_t i = 0; i <= kMaxClientSettings; ++i)
    same += query("SET app.same = " + std::to_string(i));
  for (const auto& sql : queries_in(again.send(same, *other)))
    EXPECT_EQ(sql.find("ERRCODE"), std::string::npos) << sql;
}

TEST(SessionSettings, TooMuchSettingTextIsRefusedWith54000) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET app.big = '" + std::string(60 << 10, 'x') + "'", command_result("SET"));
  const std::string sent =
      h.send(query("SET app.more = '" + std::string(5 << 10, 'y') + "'"), *server);
  const auto q = queries_in(sent);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '54000'"), std::string::npos);
}

TEST(SessionSettings, CapRefusalInsideATransactionFailsItOnTheServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  run(h, *server, "SET app.big = '" + std::string(60 << 10, 'x') + "'", command_result("SET"));
  run(h, *server, "begin", command_result("BEGIN", 'T'));
  const std::string sent = h.send(parse("", "SET app.more = '" + std::string(5 << 10, 'y') + "'") +
                                      bind_to("", "") + execute() + sync(),
                                  *server);
  const auto p = parses_in(sent);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].second.find("ERRCODE = '54000'"), std::string::npos);
  EXPECT_EQ(tags_of(sent), "PBES");
}

// ---- What the client is told (ParameterStatus) ----------------------------------------------

// psycopg encodes the next statement in the client_encoding it was last told: a RESET that
// reported the pool's UTF8 to a LATIN1 client made it send UTF-8 to a server it then set to
// LATIN1 again, storing 'cafÃ©'.
TEST(SessionSettings, ResetAllTellsTheClientNothingWhenItsSessionIsBackAtItsStartupValues) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"client_encoding", "LATIN1"}});
  h.sync_answer = complete("SET") + parameter_status("client_encoding", "LATIN1") + ready();
  h.send(query("RESET ALL"), *server);
  Step s = h.server(complete("RESET") + parameter_status("client_encoding", "UTF8") + ready());
  EXPECT_EQ(tags_of(s.to_client), "CZ");
}

TEST(SessionSettings, ResetTellsTheClientItsStartupValueBeforeReadyForQuery) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"client_encoding", "LATIN1"}});
  h.sync_answer = complete("SET") + parameter_status("client_encoding", "LATIN1") + ready();
  h.send(query("SET client_encoding = 'WIN1252'"), *server);
  Step s = h.server(complete("SET") + parameter_status("client_encoding", "WIN1252") + ready());
  EXPECT_EQ(tags_of(s.to_client), "CSZ");
  h.send(query("RESET client_encoding"), *server);
  s = h.server(complete("RESET") + parameter_status("client_encoding", "UTF8") + ready());
  EXPECT_EQ(tags_of(s.to_client), "CSZ");
  EXPECT_NE(messages_of(s.to_client)[1].body.find("LATIN1"), std::string::npos);
}

TEST(SessionSettings, InsideATransactionTheClientIsToldWhatTheServerUses) {
  // The server's session runs the rest of the transaction with the pool's value; the client
  // encodes for it until the transaction ends and its own value is back.
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"client_encoding", "LATIN1"}});
  h.sync_answer = complete("SET") + parameter_status("client_encoding", "LATIN1") + ready();
  h.send(query("BEGIN"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("RESET ALL"));
  Step s = h.server(complete("RESET") + parameter_status("client_encoding", "UTF8") + ready('T'));
  EXPECT_EQ(tags_of(s.to_client), "CSZ");
  EXPECT_NE(messages_of(s.to_client)[1].body.find("UTF8"), std::string::npos);
  h.client(query("COMMIT"));
  s = h.server(command_result("COMMIT"));
  EXPECT_EQ(tags_of(s.to_client), "CSZ");
  EXPECT_NE(messages_of(s.to_client)[1].body.find("LATIN1"), std::string::npos);
}

}  // namespace
}  // namespace pgvalve::session::testing
