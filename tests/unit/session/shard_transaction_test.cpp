// A client's transaction over several shards, as the session carries it out: a statement for a
// shard the transaction has not touched makes that shard join (its own server, the same BEGIN,
// max_prepared_transactions checked), each request goes to its shard's part, and COMMIT prepares
// every part before any commits (two-phase commit); anything else rolls every part back.
#include <gtest/gtest.h>

#include "protocol/messages.h"
#include "protocol/wire.h"
#include "session/two_phase.h"
#include "tests/unit/session/session_test_util.h"

namespace pgvalve::session::testing {
namespace {

// md5_mod over two shards: device 2 is on s0; devices 1 and 3 on s1.
routing::ShardingPolicy two_shards() {
  routing::ShardingPolicy p;
  p.tables = {"telemetry"};
  p.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  p.shard_names = {"s0", "s1"};
  return p;
}

std::string insert(int device) {
  return query("INSERT INTO telemetry (device_id, value) VALUES (" + std::to_string(device) +
               ", 1)");
}

std::string join_answer(std::string_view max_prepared = "10") {
  return complete("BEGIN") + row_description() + data_row({std::string(max_prepared)}) +
         complete("SELECT 1") + ready('T');
}

std::string message_of(std::string_view stream) {
  const auto errors = errors_in(stream);
  return errors.empty() ? std::string() : errors.front().message;
}

class ShardTransaction : public ::testing::Test {
 protected:
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy};
  std::unique_ptr<ServerState> s0 = SessionHarness::fresh_server();
  std::unique_ptr<ServerState> s1 = SessionHarness::fresh_server();

  // BEGIN, then an INSERT on s0 (link 0) that the server answers.
  void begin_on_s0(std::string_view begin = "BEGIN") {
    Step s = h.client(query(begin));
    EXPECT_EQ(statuses_in(s.to_client), "T") << "answered by pgvalve until a shard is known";
    const std::string first = insert(2);
    s = h.client(first);
    ASSERT_TRUE(s.check_out);
    EXPECT_EQ(s.route.shard, 0);
    s = h.linked(*s0);
    EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{std::string(begin)});
    h.server(command_result("BEGIN", 'T'), T0, 0);
    s = h.client(first);
    EXPECT_EQ(s.server_link, 0);
    EXPECT_EQ(s.consumed, first.size());
    s = h.server(command_result("INSERT 0 1", 'T'), T0, 0);
    EXPECT_EQ(statuses_in(s.to_client), "T");
  }

  // A statement for device 1 joins s1 (link 1); returns what s1 was asked while it joined.
  std::string join_s1(std::string_view max_prepared = "10") {
    const std::string second = insert(1);
    Step s = h.client(second);
    EXPECT_TRUE(s.check_out) << "s1 is checked out for the transaction";
    EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
    EXPECT_EQ(s.route.shard, 1);
    EXPECT_EQ(s.consumed, 0u) << "the statement waits for its shard";
    EXPECT_EQ(h.state(), SessionState::WaitingForServer);
    s = h.linked(*s1);
    EXPECT_EQ(s.server_link, 1);
    const std::string asked = s.to_server;
    EXPECT_EQ(h.state(), SessionState::Syncing);
    s = h.server(join_answer(max_prepared), T0, 1);
    EXPECT_TRUE(s.resume_client);
    EXPECT_EQ(s.to_client, "") << "the join is pgvalve's own";
    EXPECT_EQ(h.state(), SessionState::Holding);
    return asked;
  }

  // The statement for device 1 runs on s1, and s1 answers it.
  void insert_on_s1() {
    const std::string second = insert(1);
    Step s = h.client(second);
    EXPECT_FALSE(s.check_out);
    EXPECT_EQ(s.server_link, 1);
    EXPECT_EQ(queries_in(s.to_server),
              std::vector<std::string>{"INSERT INTO telemetry (device_id, value) VALUES (1, 1)"});
    s = h.server(command_result("INSERT 0 1", 'T'), T0, 1);
    EXPECT_EQ(tags_of(s.to_client), "CZ");
    EXPECT_EQ(statuses_in(s.to_client), "T");
  }

  // A transaction over both shards: BEGIN and an INSERT on s0, then s1 joins for another.
  void span_both_shards() {
    begin_on_s0();
    join_s1();
    insert_on_s1();
  }

  // A COMMIT `request` over both parts, which both prepare and commit; the step of the last
  // COMMIT PREPARED's answer.
  Step committed(const std::string& request) {
    Step s = h.client(request);
    EXPECT_EQ(h.state(), SessionState::Ending);
    EXPECT_EQ(s.to_links.size(), 1u) << "the decider's xid first";
    s = h.server(xid_result(), T0, 0);
    EXPECT_EQ(s.to_links.size(), 2u);
    h.server(command_result("PREPARE TRANSACTION"), T0, 0);
    h.server(command_result("PREPARE TRANSACTION"), T0, 1);
    h.server(command_result("COMMIT PREPARED"), T0, 0);
    return h.server(command_result("COMMIT PREPARED"), T0, 1);
  }

  // COMMIT: the decider (s0's part, the lowest shard) is asked its xid, then both parts are
  // asked to prepare at once under the name it makes; returns the transaction's gid (quoted).
  std::string commit() {
    Step s = h.client(query("COMMIT"));
    EXPECT_EQ(h.state(), SessionState::Ending);
    EXPECT_EQ(s.to_client, "");
    EXPECT_EQ(s.to_links.size(), 1u);
    EXPECT_EQ(queries_in(s.to_links.count(0) ? s.to_links.at(0) : ""),
              std::vector<std::string>{"SELECT pg_catalog.pg_current_xact_id()"});
    s = h.server(xid_result("4242"), T0, 0);
    EXPECT_EQ(s.to_client, "");
    EXPECT_EQ(s.to_links.size(), 2u);
    const auto to0 = queries_in(s.to_links.count(0) ? s.to_links.at(0) : "");
    const auto to1 = queries_in(s.to_links.count(1) ? s.to_links.at(1) : "");
    EXPECT_EQ(to0.size(), 1u);
    EXPECT_EQ(to0, to1) << "every part prepares under one name";
    if (to0.empty()) return {};
    EXPECT_TRUE(to0[0].starts_with("PREPARE TRANSACTION 'pgvalve:")) << to0[0];
    return to0[0].substr(to0[0].find('\''));
  }
};

TEST_F(ShardTransaction, AStatementForAnotherShardJoinsItAndCommitIsTwoPhase) {
  begin_on_s0("BEGIN ISOLATION LEVEL REPEATABLE READ");
  const std::string asked = join_s1();
  EXPECT_EQ(queries_in(asked),
            std::vector<std::string>{"BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT "
                                     "pg_catalog.current_setting('max_prepared_transactions')"})
      << "the joining shard runs the transaction's own BEGIN";
  insert_on_s1();
  EXPECT_EQ(h.session().link_count(), 2u);

  // Back to s0's part, on the server it runs on: no checkout.
  Step s = h.client(query("SELECT value FROM telemetry WHERE device_id = 2"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
  h.server(row_result("1", "SELECT 1", 'T'), T0, 0);

  const std::string gid = commit();
  s = h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  EXPECT_TRUE(s.to_links.empty()) << "nothing commits before every part prepared";
  EXPECT_TRUE(s.ops.empty());
  s = h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  ASSERT_EQ(s.to_links.size(), 1u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"COMMIT PREPARED " + gid})
      << "shard order: s0 first";
  s = h.server(command_result("COMMIT PREPARED"), T0, 0);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  ASSERT_EQ(s.to_links.count(1), 1u);
  EXPECT_EQ(queries_in(s.to_links.at(1)), std::vector<std::string>{"COMMIT PREPARED " + gid});
  EXPECT_EQ(s.to_client, "");
  s = h.server(command_result("COMMIT PREPARED"), T0, 1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "COMMIT");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
  EXPECT_TRUE(s.resume_client);
}

TEST_F(ShardTransaction, SetTransactionAndSetLocalRunOnTheJoiningShardToo) {
  begin_on_s0();
  h.client(query("SET LOCAL statement_timeout = '5s'"));
  h.server(command_result("SET", 'T'), T0, 0);
  EXPECT_EQ(queries_in(join_s1()),
            std::vector<std::string>{"BEGIN; SET LOCAL statement_timeout = '5s'; SELECT "
                                     "pg_catalog.current_setting('max_prepared_transactions')"});
}

// A statement over several shards inside a transaction runs on the transaction's parts: each
// shard it needs joins first; the parts answer inside the transaction and stay linked.
TEST_F(ShardTransaction, AReadOverSeveralShardsRunsOnEveryPartOfTheTransaction) {
  begin_on_s0();
  const std::string read = query("SELECT count(*) FROM telemetry");
  Step s = h.client(read);
  ASSERT_TRUE(s.check_out) << "s1 joins first";
  EXPECT_EQ(s.route.shard, 1);
  h.linked(*s1);
  s = h.server(join_answer(), T0, 1);
  EXPECT_TRUE(s.resume_client);
  s = h.client(read);
  EXPECT_EQ(h.state(), SessionState::Scattering);
  EXPECT_EQ(s.consumed, read.size());
  ASSERT_EQ(s.to_links.size(), 2u);
  EXPECT_EQ(queries_in(s.to_links.at(0)),
            std::vector<std::string>{"SELECT count(*) FROM telemetry"})
      << "no BEGIN or PREPARE around it: it runs in the client's transaction";
  EXPECT_EQ(s.to_links.at(1), s.to_links.at(0));
  s = h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready('T'), T0, 0);
  EXPECT_EQ(s.to_client, "");
  EXPECT_TRUE(s.ops.empty()) << "the part stays the transaction's";
  s = h.server(notice(), T0, 0);
  EXPECT_EQ(s.to_client, "") << "nothing comes between the gathered answer's messages";
  s = h.server(int8_description() + data_row({"3"}) + complete("SELECT 1") + ready('T'), T0, 1);
  EXPECT_EQ(statuses_in(s.to_client), "T");
  EXPECT_EQ(h.state(), SessionState::Holding);
  EXPECT_EQ(h.session().link_count(), 2u);
  // The transaction goes on, and commits with both parts.
  commit();
}

// asyncpg prepares each new statement (Parse, Describe, Flush) inside the transaction: the
// current shard describes it, and its Flush goes as a Sync, so that its Bind, here for a read
// over both shards, is a request of its own (it was refused as several shards in one request,
// after the description joined every shard).
TEST_F(ShardTransaction, AStatementDescribedAloneIsAnsweredByTheCurrentShard) {
  begin_on_s0();
  const std::string prepare = parse("s1", "SELECT count(*) FROM telemetry WHERE value > $1") +
                              describe('S', "s1") + flush();
  Step s = h.client(prepare);
  EXPECT_FALSE(s.check_out) << "no shard joins for a description";
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(tags_of(s.to_server), "PDS");
  std::string description;
  protocol::append_no_parameters(description);
  s = h.server(parse_complete() + description + int8_description() + ready('T'), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "1tT") << "no ReadyForQuery: the client sent a Flush";
  EXPECT_TRUE(s.ops.empty()) << "the server stays the transaction's";
  s = h.client(bind_values("s1", {"1"}) + execute() + sync());
  ASSERT_TRUE(s.check_out) << "s1 joins for the read over both shards";
  EXPECT_EQ(s.route.shard, 1);
}

TEST_F(ShardTransaction, AWriteOverSeveralShardsFirstInATransactionStartsItOnEveryShard) {
  Step s = h.client(query("BEGIN ISOLATION LEVEL REPEATABLE READ"));
  const std::string write = query("/* pgvalve: all_shards */ DELETE FROM telemetry");
  s = h.client(write);
  ASSERT_TRUE(s.check_out) << "the transaction starts on the first shard it needs";
  EXPECT_EQ(s.route.shard, 0);
  s = h.linked(*s0);
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"BEGIN ISOLATION LEVEL REPEATABLE READ"});
  s = h.server(command_result("BEGIN", 'T'), T0, 0);
  EXPECT_TRUE(s.resume_client);
  s = h.client(write);
  ASSERT_TRUE(s.check_out) << "then s1 joins";
  EXPECT_EQ(s.route.shard, 1);
  s = h.linked(*s1);
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT "
                                     "pg_catalog.current_setting('max_prepared_transactions')"});
  h.server(join_answer(), T0, 1);
  s = h.client(write);
  ASSERT_EQ(s.to_links.size(), 2u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{" DELETE FROM telemetry"});
  h.server(command_result("DELETE 2", 'T'), T0, 0);
  s = h.server(command_result("DELETE 3", 'T'), T0, 1);
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "DELETE 5");
  EXPECT_EQ(statuses_in(s.to_client), "T");
  commit();
}

TEST_F(ShardTransaction, AFailedPartOfAStatementOverSeveralShardsAbortsTheTransaction) {
  span_both_shards();
  Step s = h.client(query("SELECT count(*) FROM telemetry"));
  h.server(error_result("42P01", 'E'), T0, 0);
  s = h.server(int8_description() + data_row({"3"}) + complete("SELECT 1") + ready('T'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "42P01");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  s = h.client(query("COMMIT"));
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK"});
}

// Every part is rolled back, and the client's block has failed as after an error in it ('E',
// then 25P02 until it ends the block), so that its next statement never runs on its own.
TEST_F(ShardTransaction, APartLostDuringAStatementOverSeveralShardsFailsTheBlock) {
  begin_on_s0();
  join_s1();
  h.client(query("SELECT count(*) FROM telemetry"));
  Step s = h.lost(T0, 1);
  EXPECT_EQ(s.to_client, "") << "the other part still answers";
  s = h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready('T'), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  ASSERT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
  s = h.client(insert(1));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P02");
  s = h.client(query("ROLLBACK"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(ShardTransaction, WhatAJoiningShardWouldRunIsBoundedAndPastItNoShardJoins) {
  begin_on_s0();
  const std::string set = "SET LOCAL application_name = '" + std::string(200, 'a') + "'";
  for (int i = 0; i < 10; ++i) {
    h.client(query(set));
    h.server(command_result("SET", 'T'), T0, 0);
  }
  const Step s = h.client(insert(1));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_NE(queries_in(s.to_server).at(0).find("longer than pgvalve keeps"), std::string::npos);
}

TEST_F(ShardTransaction, WithoutPreparedTransactionsTheSecondShardIsRefusedAndTheTransactionFails) {
  begin_on_s0();
  const std::string second = insert(1);
  Step s = h.client(second);
  ASSERT_TRUE(s.check_out);
  h.linked(*s1);
  s = h.server(join_answer("0"), T0, 1);
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease) << "s1's BEGIN is rolled back";
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK");
  EXPECT_TRUE(s.resume_client);
  // The statement fails on s0, as PostgreSQL fails a statement: the transaction is aborted.
  s = h.client(second);
  EXPECT_EQ(s.server_link, 0);
  ASSERT_EQ(queries_in(s.to_server).size(), 1u);
  const std::string raised = queries_in(s.to_server)[0];
  EXPECT_NE(raised.find("max_prepared_transactions = 0"), std::string::npos) << raised;
  EXPECT_NE(raised.find("shard s1"), std::string::npos) << raised;
  EXPECT_EQ(h.session().link_count(), 1u);
}

TEST_F(ShardTransaction, AFailedCheckoutOfTheJoiningShardFailsTheStatementInTheTransaction) {
  begin_on_s0();
  const std::string second = insert(1);
  h.client(second);
  Step s = h.checkout_failed("53300");
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.state(), SessionState::Holding);
  s = h.client(second);
  EXPECT_EQ(s.server_link, 0);
  const std::string raised = queries_in(s.to_server).at(0);
  EXPECT_NE(raised.find("53300"), std::string::npos) << raised;
  EXPECT_NE(raised.find("no server"), std::string::npos) << raised;
}

TEST_F(ShardTransaction, ASavepointOrASettingKeepsTheTransactionOnItsShard) {
  begin_on_s0();
  h.client(query("SAVEPOINT a"));
  h.server(command_result("SAVEPOINT", 'T'), T0, 0);
  Step s = h.client(insert(1));
  EXPECT_FALSE(s.check_out) << "a savepoint cannot span shards";
  EXPECT_EQ(s.server_link, 0);
  EXPECT_NE(queries_in(s.to_server).at(0).find("savepoint"), std::string::npos);
}

TEST_F(ShardTransaction, WhatWouldApplyToOnePartOnlyIsRefusedOnceItSpansShards) {
  span_both_shards();
  for (const std::string sql :
       {"SET work_mem = '64MB'", "SAVEPOINT a", "SELECT set_config('a.b', 'c', false)",
        "CREATE TEMP TABLE t (a int)",
        "INSERT INTO telemetry (device_id, value) VALUES (1, 1); "
        "INSERT INTO telemetry (device_id, value) VALUES (1, 2)",
        "COMMIT AND CHAIN"}) {
    const Step s = h.client(query(sql));
    EXPECT_FALSE(s.check_out) << sql;
    const auto sent = queries_in(s.to_server);
    ASSERT_EQ(sent.size(), 1u) << sql;
    EXPECT_TRUE(sent[0].starts_with("DO $pgvalve$")) << sql << ": " << sent[0];
    EXPECT_NE(sent[0].find("0A000"), std::string::npos) << sql;
    h.server(error_result("0A000", 'E'), T0, s.server_link);
    // The transaction is aborted: ROLLBACK it, and start again.
    const Step r = h.client(query("ROLLBACK"));
    EXPECT_EQ(r.to_links.size(), 2u);
    h.server(command_result("ROLLBACK"), T0, 0);
    h.server(command_result("ROLLBACK"), T0, 1);
    EXPECT_EQ(h.state(), SessionState::Idle);
    begin_on_s0();
    join_s1();
    insert_on_s1();
  }
}

TEST_F(ShardTransaction, AfterAnErrorEveryRequestGoesToTheFailedPartAndCommitRollsBack) {
  begin_on_s0();
  join_s1();
  Step s = h.client(insert(1));
  s = h.server(error_result("23505", 'E'), T0, 1);
  EXPECT_EQ(statuses_in(s.to_client), "E");
  // A statement for s0 would succeed there: it goes to s1, which answers 25P02.
  s = h.client(query("SELECT value FROM telemetry WHERE device_id = 2"));
  EXPECT_EQ(s.server_link, 1);
  h.server(error_result("25P02", 'E'), T0, 1);
  s = h.client(query("COMMIT"));
  EXPECT_EQ(h.state(), SessionState::Ending);
  ASSERT_EQ(s.to_links.size(), 2u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK"});
  EXPECT_EQ(queries_in(s.to_links.at(1)), std::vector<std::string>{"ROLLBACK"});
  s = h.server(command_result("ROLLBACK"), T0, 1);
  EXPECT_EQ(s.to_client, "");
  s = h.server(command_result("ROLLBACK"), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "ROLLBACK")
      << "as PostgreSQL answers COMMIT of a failed transaction";
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, APartThatFailsToPrepareRollsBackTheOthers) {
  span_both_shards();
  const std::string gid = commit();
  Step s = h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  // A deferred constraint fails at PREPARE on s1: its part is rolled back by it.
  s = h.server(error_result("23503", 'I'), T0, 1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  ASSERT_EQ(s.to_links.count(0), 1u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK PREPARED " + gid});
  s = h.server(command_result("ROLLBACK PREPARED"), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "23503") << "the server's own error";
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, AFirstShardWithoutPreparedTransactionsIsExplainedAtCommit) {
  span_both_shards();
  commit();
  h.server(error_message("55000", "ERROR", "prepared transactions are disabled") + ready('I'), T0,
           0);
  Step s = h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  s = h.server(command_result("ROLLBACK PREPARED"), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "55000");
  EXPECT_NE(message_of(s.to_client).find("max_prepared_transactions"), std::string::npos);
}

TEST_F(ShardTransaction, RollbackEndsEveryPartAtOnce) {
  span_both_shards();
  Step s = h.client(parse("", "ROLLBACK") + bind_to("", "") + execute() + sync());
  ASSERT_EQ(s.to_links.size(), 2u);
  h.server(command_result("ROLLBACK"), T0, 0);
  s = h.server(command_result("ROLLBACK"), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12CZ") << "the extended messages are answered";
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// PgJDBC prepares its COMMIT as a named statement once it has sent it a few times.
TEST_F(ShardTransaction, ANamedPreparedCommitEndsEveryPart) {
  span_both_shards();
  Step s = committed(parse("S_1", "COMMIT") + bind_to("", "S_1") + execute() + sync());
  EXPECT_EQ(tags_of(s.to_client), "12CZ");
  EXPECT_EQ(h.session().prepared_statement_count(), 1u) << "S_1 is the client's from now on";

  // The next transaction commits with a Bind of S_1 alone.
  begin_on_s0();
  join_s1();
  s = h.client(bind_to("", "S_1") + execute() + sync());
  EXPECT_EQ(h.state(), SessionState::Ending);
  EXPECT_EQ(s.to_links.size(), 1u);
}

// postgres.js describes each statement between its Parse and Bind, COMMIT too.
TEST_F(ShardTransaction, ACommitWhoseStatementIsDescribedEndsEveryPart) {
  span_both_shards();
  const Step s =
      committed(parse("", "COMMIT") + describe('S', "") + bind_to("", "") + execute() + sync());
  EXPECT_EQ(tags_of(s.to_client), "1tn2CZ");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, APartLostWhileAShardIsCheckedOutEndsTheTransaction) {
  begin_on_s0();
  const std::string second = insert(1);
  Step s = h.client(second);
  ASSERT_TRUE(s.check_out);
  s = h.lost(T0, 0);
  EXPECT_EQ(h.state(), SessionState::WaitingForServer);
  s = h.linked(*s1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << "the joining server goes straight back";
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_TRUE(s.resume_client);
  s = h.client(second);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  // The client's block failed (as after an error in it): nothing runs until it ends it.
  EXPECT_EQ(statuses_in(s.to_client), "E");
  s = h.client(query("ROLLBACK"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(ShardTransaction, ExtendedRequestsMoveBetweenShardsByTheirBoundKey) {
  begin_on_s0();
  join_s1();
  std::string bind_rest;
  protocol::append_i16(bind_rest, 0);
  protocol::append_i16(bind_rest, 1);
  protocol::append_i32(bind_rest, 1);
  bind_rest += "2";
  protocol::append_i16(bind_rest, 0);
  std::string in;
  protocol::append_parse(in, "", "SELECT value FROM telemetry WHERE device_id = $1", {});
  protocol::append_bind(in, "", "", bind_rest);
  in += execute() + sync();
  Step s = h.client(in);
  EXPECT_EQ(s.server_link, 0) << "device 2 lives on s0";
  EXPECT_EQ(s.consumed, in.size());
}

TEST_F(ShardTransaction, ALostPartRollsBackTheOthersAndTheClientLearnsItsTransactionIsOver) {
  span_both_shards();
  Step s = h.lost(T0, 1);
  ASSERT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
  for (const auto& op : s.ops) {
    if (op.kind == LinkOp::Kind::CleanAndRelease) {
      EXPECT_EQ(op.link, 0);
      EXPECT_EQ(op.sql1, "ROLLBACK");
    }
  }
  EXPECT_EQ(h.session().link_count(), 0u);
  s = h.client(query("SELECT value FROM telemetry WHERE device_id = 2"));
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  s = h.client(query("SELECT value FROM telemetry WHERE device_id = 2"));
  EXPECT_EQ(sqlstates_in(s.to_client), "25P02");
  s = h.client(query("COMMIT"));
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(ShardTransaction, APartLostBeforeItPreparedRollsBackThePreparedOnes) {
  span_both_shards();
  const std::string gid = commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  Step s = h.lost(T0, 1);
  // Its PREPARE may have run: pgvalve rolls the part back on s1 once s1 is back.
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 1);
  EXPECT_EQ("'" + std::string(s.prepared_parts[0].gid()) + "'", gid);
  EXPECT_FALSE(s.prepared_parts[0].commit);
  ASSERT_EQ(s.to_links.count(0), 1u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK PREPARED " + gid});
  s = h.server(command_result("ROLLBACK PREPARED"), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_NE(message_of(s.to_client).find(gid), std::string::npos)
      << "its part may stay prepared: the error names it";
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, AClientLeavingDuringTheCommitCommitsTheRemainingParts) {
  span_both_shards();
  const std::string gid = commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  const Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose) << "its COMMIT PREPARED is in flight";
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[1].sql1, "COMMIT PREPARED " + gid);
  // The cancelled COMMIT PREPARED may not have run: the commit follows the part on s0.
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_TRUE(s.prepared_parts[0].commit);
}

TEST_F(ShardTransaction, APartLostWhileCommittingIsCommittedOnceItsShardIsBack) {
  span_both_shards();
  const std::string gid = commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  Step s = h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  EXPECT_EQ(queries_in(s.to_links.count(0) ? s.to_links.at(0) : s.to_server),
            std::vector<std::string>{"COMMIT PREPARED " + gid});
  s = h.server(command_result("COMMIT PREPARED"), T0, 0);
  EXPECT_EQ(queries_in(s.to_links.count(1) ? s.to_links.at(1) : s.to_server),
            std::vector<std::string>{"COMMIT PREPARED " + gid});
  s = h.lost(T0, 1);
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 1);
  EXPECT_EQ("'" + std::string(s.prepared_parts[0].gid()) + "'", gid);
  EXPECT_TRUE(s.prepared_parts[0].commit) << "s0 committed: so does s1's part";
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_NE(message_of(s.to_client).find("pgvalve commits it there"), std::string::npos)
      << message_of(s.to_client);
}

TEST_F(ShardTransaction, AFirstCommitThatFailsRollsBackEveryPart) {
  span_both_shards();
  const std::string gid = commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  // s0's COMMIT PREPARED fails: no part committed, so the transaction is rolled back.
  Step s = h.server(error_message("58030") + ready(), T0, 0);
  ASSERT_EQ(s.to_links.count(1), 1u);
  EXPECT_EQ(queries_in(s.to_links.at(1)), std::vector<std::string>{"ROLLBACK PREPARED " + gid});
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_FALSE(s.prepared_parts[0].commit) << "rolled back too, if it is still prepared";
  s = h.server(command_result("ROLLBACK PREPARED"), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "40000");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, EveryPartIsPreparedUnderTheNameOfTheDecidersTransaction) {
  span_both_shards();
  const std::string gid = commit();
  const auto name = read_two_phase_gid(gid.substr(1, gid.size() - 2));
  ASSERT_TRUE(name) << gid;
  EXPECT_EQ(name->decider, 0) << "s0's part decides: it commits first";
  EXPECT_EQ(name->xid, 4242u);
}

TEST_F(ShardTransaction, ADeciderLostBeforeItsXidRollsBackEveryPart) {
  span_both_shards();
  h.client(query("COMMIT"));
  Step s = h.lost(T0, 0);
  EXPECT_TRUE(s.prepared_parts.empty()) << "nothing was asked to prepare";
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[1].sql1, "ROLLBACK") << "s1's part rolls back";
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, ADeciderThatCannotTellItsXidRollsBackEveryPart) {
  span_both_shards();
  h.client(query("COMMIT"));
  const Step s = h.server(error_message("53200") + ready('E'), T0, 0);
  EXPECT_TRUE(s.to_links.empty()) << "no PREPARE without a name";
  EXPECT_EQ(s.ops.size(), 2u);
  for (const auto& op : s.ops) {
    EXPECT_EQ(op.kind, LinkOp::Kind::CleanAndRelease);
    EXPECT_EQ(op.sql1, "ROLLBACK");
  }
  EXPECT_EQ(sqlstates_in(s.to_client), "XX000");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, ADeciderLostDuringItsCommitLeavesEveryPartToFollowIt) {
  span_both_shards();
  commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  const Step s = h.lost(T0, 0);  // its COMMIT PREPARED unanswered
  ASSERT_EQ(s.prepared_parts.size(), 2u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_FALSE(s.prepared_parts[0].follow);
  EXPECT_EQ(s.prepared_parts[1].shard, 1);
  EXPECT_TRUE(s.prepared_parts[1].follow);
  EXPECT_TRUE(s.to_links.empty()) << "s1 is not committed before s0 is known to be";
  EXPECT_EQ(sqlstates_in(s.to_client), "40003");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardTransaction, AClientLeavingBeforeTheDecisionRollsBackThePreparedParts) {
  span_both_shards();
  const std::string gid = commit();
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  const Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[0].sql1, "ROLLBACK PREPARED " + gid);
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CancelAndClose);
}

TEST_F(ShardTransaction, ACommitAnsweredOnOneShardEndsWithoutTwoPhase) {
  // A transaction that never left its shard commits there as usual.
  begin_on_s0();
  Step s = h.client(query("COMMIT"));
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT"});
  s = h.server(command_result("COMMIT"), T0, 0);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// ---- A request whose statements name several shards (psycopg's executemany(), PgJDBC's
// executeBatch(), pgx's SendBatch) ----

// A Bind of the unnamed statement with `device` as its one text parameter, and its Execute.
std::string bind_device(int device) {
  return bind_values("", {std::to_string(device)}) + execute();
}

const std::string kInsertParsed =
    parse("", "INSERT INTO telemetry (device_id, value) VALUES ($1, 1)");

std::string inserted() {
  return bind_complete() + complete("INSERT 0 1");
}

class ShardBatch : public ShardTransaction {
 protected:
  std::string part_sent;  // what run_part_on_s0 sent to s0
  // The batch's rows for devices 2 (s0) then 1 (s1): the part on s0 runs up to the Bind for s1
  // and ends with pgvalve's Sync, after `before_sync` (a BEGIN outside a transaction). Returns
  // the rest of the request, which waits for that part's answer.
  std::string run_part_on_s0(const std::string& batch, std::string_view before_sync,
                             bool linked_first = true) {
    Step s = h.client(batch);
    if (linked_first) {
      EXPECT_TRUE(s.check_out);
      EXPECT_EQ(s.route.shard, 0) << "routed by its first row";
      h.linked(*s0);
      s = h.client(batch);
    }
    EXPECT_EQ(s.server_link, 0);
    EXPECT_FALSE(s.check_out);
    const std::size_t first_part = kInsertParsed.size() + bind_device(2).size();
    EXPECT_EQ(s.consumed, first_part) << "the Bind for s1 waits";
    EXPECT_EQ(s.to_server.substr(0, first_part), batch.substr(0, first_part));
    EXPECT_EQ(tags_of(s.to_server.substr(first_part)), std::string(before_sync) + "S");
    part_sent = s.to_server;
    return batch.substr(s.consumed);
  }

  // s0 answers its part (one row) and pgvalve's BEGIN and Sync; then s1 is checked out for
  // `rest` and joins the transaction, answering `max_prepared`.
  Step s1_joins(const std::string& rest, std::string_view max_prepared = "10") {
    Step s = h.server(parse_complete() + inserted() + parse_complete() + bind_complete() +
                          complete("BEGIN") + ready('T'),
                      T0, 0);
    EXPECT_EQ(tags_of(s.to_client), "12C") << "the client gets its own answers only";
    EXPECT_TRUE(s.resume_client);
    s = h.client(rest);
    EXPECT_TRUE(s.check_out);
    EXPECT_EQ(s.route.shard, 1);
    s = h.linked(*s1);
    EXPECT_EQ(queries_in(s.to_server).front(),
              "BEGIN; SELECT pg_catalog.current_setting('max_prepared_transactions')");
    return h.server(join_answer(max_prepared), T0, 1);
  }
};

TEST_F(ShardBatch, RowsForTwoShardsUpToOneSyncCommitOnBothAsOneImplicitTransaction) {
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "PBE");
  EXPECT_EQ(parsed_in(part_sent).back(), "BEGIN") << "what ran so far becomes a transaction block";
  // s1 joins the transaction, then takes the rest: the unnamed statement is prepared there.
  s1_joins(rest);
  Step s = h.client(rest);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(s.consumed, rest.size());
  EXPECT_EQ(tags_of(s.to_server), "PBES");
  EXPECT_EQ(parsed_in(s.to_server),
            std::vector<std::string>{"INSERT INTO telemetry (device_id, value) VALUES ($1, 1)"});
  // The client's Sync ends the transaction on both shards, with two-phase commit; the client
  // gets the ReadyForQuery of an implicit transaction, without a COMMIT tag.
  s = h.server(parse_complete() + inserted() + ready('T'), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "2C");
  EXPECT_EQ(h.state(), SessionState::Ending);
  EXPECT_EQ(queries_in(s.to_links[0]),
            std::vector<std::string>{"SELECT pg_catalog.pg_current_xact_id()"});
  s = h.server(xid_result(), T0, 0);
  EXPECT_EQ(s.to_links.size(), 2u);
  h.server(command_result("PREPARE TRANSACTION"), T0, 0);
  h.server(command_result("PREPARE TRANSACTION"), T0, 1);
  h.server(command_result("COMMIT PREPARED"), T0, 0);
  s = h.server(command_result("COMMIT PREPARED"), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardBatch, ARowThatFailsOnTheSecondShardRollsBackBoth) {
  const std::string rest = run_part_on_s0(
      kInsertParsed + bind_device(2) + bind_device(1) + bind_device(2) + sync(), "PBE");
  s1_joins(rest);
  Step s = h.client(rest);
  EXPECT_EQ(s.server_link, 1);
  const std::string after = rest.substr(s.consumed);
  EXPECT_EQ(after, bind_device(2) + sync()) << "the third row goes back to s0";
  s = h.server(parse_complete() + bind_complete() + error_message("23514") + ready('E'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "23514");
  EXPECT_EQ(statuses_in(s.to_client), "") << "the request is not over";
  // The rest up to the client's Sync is not run, as PostgreSQL skips it; then every part rolls
  // back and the client's implicit transaction ends.
  s = h.client(after);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(tags_of(s.to_server), "S");
  s = h.server(ready('E'), T0, 1);
  EXPECT_EQ(s.to_client, "");
  EXPECT_EQ(queries_in(s.to_links[0]), std::vector<std::string>{"ROLLBACK"});
  EXPECT_EQ(queries_in(s.to_links[1]), std::vector<std::string>{"ROLLBACK"});
  h.server(command_result("ROLLBACK"), T0, 0);
  s = h.server(command_result("ROLLBACK"), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardBatch, ARowThatFailsBeforeTheSecondShardEndsTheRequestOnTheFirst) {
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "PBE");
  // The server skipped pgvalve's BEGIN: its implicit transaction is over.
  Step s =
      h.server(parse_complete() + bind_complete() + error_message("23514") + ready('I'), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "12E");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  // The next request, pipelined behind the Sync, runs as usual.
  const std::string next = insert(1);
  s = h.client(rest + next);
  EXPECT_FALSE(s.check_out) << "nothing more of the request runs";
  EXPECT_EQ(s.to_server, "");
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(s.consumed, rest.size());
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(next);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 1);
}

TEST_F(ShardBatch, TheFirstShardLostBeforeItsPartIsAnsweredFailsTheWholeRequest) {
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "PBE");
  Step s = h.lost(T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "") << "the request is not over yet";
  // Its rest is not run anywhere (s0's part was rolled back with its server): the client's
  // Sync gets its ReadyForQuery, and the next request runs as usual.
  const std::string next = insert(1);
  s = h.client(rest + next);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_server, "");
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  s = h.client(next);
  ASSERT_TRUE(s.check_out);
  h.linked(*s1);
  s = h.client(next);
  EXPECT_EQ(s.server_link, 0);
  s = h.server(command_result("INSERT 0 1"), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "CZ") << "an ordinary request, not one pgvalve ends";
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardBatch, TheSecondShardLostFailsTheRequestAndRollsBackTheFirst) {
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "PBE");
  s1_joins(rest);
  h.client(rest);
  Step s = h.lost(T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "I") << "the client's Sync was sent: it is answered";
  ASSERT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
  for (const auto& op : s.ops) {
    if (op.kind == LinkOp::Kind::CleanAndRelease) {
      EXPECT_EQ(op.sql1, "ROLLBACK");
    }
  }
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST_F(ShardBatch, InTheClientsTransactionTheRequestGoesOnOnTheNextShard) {
  begin_on_s0();
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "", false);
  Step s = h.server(parse_complete() + inserted() + ready('T'), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "12C");
  h.client(rest);
  h.linked(*s1);
  h.server(join_answer(), T0, 1);
  s = h.client(rest);
  EXPECT_EQ(s.server_link, 1);
  s = h.server(parse_complete() + inserted() + ready('T'), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "2CZ") << "the client's own Sync, in its transaction";
  EXPECT_EQ(statuses_in(s.to_client), "T");
  const std::string gid = commit();
  EXPECT_FALSE(gid.empty());
}

TEST_F(ShardBatch, WithoutPreparedTransactionsTheSecondShardIsRefusedAndNothingIsWritten) {
  const std::string rest =
      run_part_on_s0(kInsertParsed + bind_device(2) + bind_device(1) + sync(), "PBE");
  Step s = s1_joins(rest, "0");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CleanAndRelease));
  // The row for s1 is refused on s0, which fails the transaction there; the Sync rolls it back.
  s = h.client(rest);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(s.consumed, rest.size());
  // (The unnamed statement, replaced by pgvalve's BEGIN there, is prepared again first.)
  ASSERT_EQ(parsed_in(s.to_server).size(), 2u);
  EXPECT_NE(parsed_in(s.to_server)[1].find("max_prepared_transactions = 0"), std::string::npos);
  s = h.server(
      parse_complete() + parse_complete() + bind_complete() + error_message("0A000") + ready('E'),
      T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_EQ(statuses_in(s.to_client), "");
  EXPECT_EQ(queries_in(s.to_links[0]), std::vector<std::string>{"ROLLBACK"});
  s = h.server(command_result("ROLLBACK"), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// Reads for two shards up to one Sync, where replicas take reads (a dashboard's batch): each
// shard's part runs on its own, a replica's part needing no transaction; an error ends the batch.
class ShardReadBatch : public ::testing::Test {
 protected:
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy, {}, true};
  std::unique_ptr<ServerState> r0 = SessionHarness::fresh_server();
  std::unique_ptr<ServerState> r1 = SessionHarness::fresh_server();
  const std::string read_parsed = parse("", "SELECT value FROM telemetry WHERE device_id = $1");

  std::string read_of(int device) { return bind_values("", {std::to_string(device)}) + execute(); }

  // The read of device 2 runs on s0's replica up to the read for s1, then ends with pgvalve's
  // Sync alone; returns the rest of the request.
  std::string run_part_on_r0(const std::string& batch) {
    Step s = h.client(batch);
    EXPECT_TRUE(s.check_out);
    EXPECT_EQ(s.route.kind, routing::Route::Kind::Replica);
    EXPECT_EQ(s.route.shard, 0);
    h.linked(*r0);
    s = h.client(batch);
    const std::size_t first_part = read_parsed.size() + read_of(2).size();
    EXPECT_EQ(s.consumed, first_part);
    EXPECT_EQ(tags_of(s.to_server), "PBES") << "no BEGIN: a replica's part only reads";
    return batch.substr(s.consumed);
  }
};

TEST_F(ShardReadBatch, EachShardsReadsRunOnItsReplicaInTurn) {
  const std::string rest = run_part_on_r0(read_parsed + read_of(2) + read_of(1) + sync());
  Step s = h.server(
      parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1") + ready('I'), T0,
      0);
  EXPECT_EQ(tags_of(s.to_client), "12DC");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << "s0's replica goes back";
  EXPECT_TRUE(s.resume_client);
  s = h.client(rest);
  ASSERT_TRUE(s.check_out) << "the rest is routed afresh";
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Replica);
  EXPECT_EQ(s.route.shard, 1);
  h.linked(*r1);
  s = h.client(rest);
  EXPECT_EQ(tags_of(s.to_server), "PBES") << "the unnamed statement prepared there";
  EXPECT_EQ(s.consumed, rest.size());
  s = h.server(
      parse_complete() + bind_complete() + data_row({"2"}) + complete("SELECT 1") + ready('I'), T0,
      0);
  EXPECT_EQ(tags_of(s.to_client), "2DCZ");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(ShardReadBatch, AFailedReadEndsTheBatchWithoutTheOtherShard) {
  const std::string rest = run_part_on_r0(read_parsed + read_of(2) + read_of(1) + sync());
  Step s =
      h.server(parse_complete() + bind_complete() + error_message("57014") + ready('I'), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "12E");
  s = h.client(rest);
  EXPECT_FALSE(s.check_out) << "the rest is not run, as PostgreSQL skips it";
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

}  // namespace
}  // namespace pgvalve::session::testing
