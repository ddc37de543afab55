// What the session core reports to the worker's statement statistics: one execution per Query
// and per Execute, with its time from sending to the last answer, its rows and errors.
#include <gtest/gtest.h>

#include "routing/fingerprint.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

class SessionStatistics : public ::testing::Test {
 protected:
  const std::string database_ = "telemetry";
  const std::string user_ = "app";
  stats::QueryStats stats_{stats::Limits{100, std::chrono::milliseconds(50), 10}};
  stats::Recorder recorder_{&stats_, {&database_, &user_}};

  const stats::QueryFigures* figures(std::string_view sql) {
    snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
    for (const auto& q : snapshot_.queries) {
      if (q.fingerprint == routing::fingerprint(sql)) return &q;
    }
    return nullptr;
  }
  stats::Snapshot snapshot_;
};

TEST_F(SessionStatistics, ASimpleQueryIsTimedFromSendingToReadyForQuery) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from readings where device_id = 7"), *server, nullptr, T0);
  h.answer(row_description() + data_row({"1"}) + data_row({"2"}) + complete("SELECT 2"), T0 + 3ms);
  EXPECT_EQ(figures("select 1"), nullptr);
  ASSERT_EQ(figures("select * from readings where device_id = 1"), nullptr)
      << "counted before its ReadyForQuery";
  h.answer(ready('I'), T0 + 4ms);
  const auto* f = figures("select * from readings where device_id = 1");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 1u);
  EXPECT_EQ(f->rows, 2u);
  EXPECT_EQ(f->errors, 0u);
  EXPECT_EQ(f->total_micros, 4000u);
  EXPECT_EQ(f->text, "select * from readings where device_id = $1");
}

TEST_F(SessionStatistics, AFailedQueryCountsAsAnError) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1/0"), *server);
  h.answer(error_result("22012"));
  const auto* f = figures("select 1/0");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 1u);
  EXPECT_EQ(f->errors, 1u);
}

TEST_F(SessionStatistics, EachExecuteIsCountedWithItsStatementsShape) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  const std::string flight =
      parse("", "insert into readings values ($1)") + bind_to("", "") + execute() + sync();
  h.send(flight, *server, nullptr, T0);
  h.answer(parse_complete() + bind_complete() + complete("INSERT 0 1") + ready('I'), T0 + 1ms);
  // A named statement, bound twice in one flight.
  const std::string named = parse("s1", "select value from readings where id = $1") +
                            bind_to("", "s1") + execute() + bind_to("", "s1") + execute() + sync();
  h.send(named, *server, nullptr, T0 + 2ms);
  h.answer(parse_complete() + bind_complete() + complete("SELECT 1") + bind_complete() +
               complete("SELECT 1") + ready('I'),
           T0 + 4ms);
  const auto* insert = figures("insert into readings values ($1)");
  ASSERT_NE(insert, nullptr);
  EXPECT_EQ(insert->calls, 1u);
  EXPECT_EQ(insert->rows, 1u);
  const auto* select = figures("select value from readings where id = $1");
  ASSERT_NE(select, nullptr);
  EXPECT_EQ(select->calls, 2u);
  EXPECT_EQ(select->rows, 2u);
}

// Session mode passes statement names through: their Executes are counted all the same (a
// driver names its statements after a few uses, and they used to vanish from SHOW QUERIES).
TEST_F(SessionStatistics, NamedStatementsAreCountedInSessionModeToo) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, own.get(), false, &recorder_);
  const std::string named = parse("s1", "select value from readings where id = $1") +
                            bind_to("", "s1") + execute() + sync();
  EXPECT_EQ(h.client(named).to_server, named) << "the name is passed as it is";
  h.server(parse_complete() + bind_complete() + complete("SELECT 1") + ready('I'));
  h.client(bind_to("", "s1") + execute() + sync());
  h.server(bind_complete() + complete("SELECT 1") + ready('I'));
  const auto* select = figures("select value from readings where id = $1");
  ASSERT_NE(select, nullptr);
  EXPECT_EQ(select->calls, 2u);
  // DISCARD ALL forgets the names.
  h.client(query("DISCARD ALL"));
  h.server(command_result("DISCARD ALL"));
  h.client(bind_to("", "s1") + execute() + sync());
  h.server(error_result("26000"));
  EXPECT_EQ(figures("select value from readings where id = $1")->calls, 2u);
}

TEST_F(SessionStatistics, SlowExecutionsAreSampledWithTheClientsNames) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  server->name = "10.0.0.5:5432";
  h.send(query("select pg_sleep(0.1)"), *server, nullptr, T0);
  h.answer(row_result("", "SELECT 1"), T0 + 100ms);
  snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
  ASSERT_EQ(snapshot_.slow.size(), 1u);
  EXPECT_EQ(snapshot_.slow[0].database, "telemetry");
  EXPECT_EQ(snapshot_.slow[0].user, "app");
  EXPECT_EQ(snapshot_.slow[0].host, "10.0.0.5:5432");
  EXPECT_EQ(snapshot_.slow[0].micros, 100000u);
}

// Where a statement ran is the server it ran on, not the route it asked for: a read sent to the
// primary because no replica could take it (or `routing.reads: any` chose it) ran on the primary.
TEST_F(SessionStatistics, AReadCountsAsRunOnAReplicaOnlyWhenItsServerIsOne) {
  SessionHarness h({}, {}, nullptr, true, &recorder_);
  const std::string read = query("select value from readings where device_id = 7");
  auto primary = SessionHarness::fresh_server();
  primary->replica = false;
  Step s = h.client(read, T0);
  ASSERT_TRUE(s.check_out);
  ASSERT_EQ(s.route.kind, routing::Route::Kind::Replica);
  h.linked(*primary, T0);
  h.client(read, T0);
  h.answer(row_result("1", "SELECT 1"), T0 + 1ms);
  auto replica = SessionHarness::fresh_server();
  replica->replica = true;
  h.send(read, *replica, nullptr, T0 + 2ms);
  h.answer(row_result("1", "SELECT 1"), T0 + 3ms);
  const auto* f = figures("select value from readings where device_id = 1");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 2u);
  EXPECT_EQ(f->replica_calls, 1u);
  std::uint64_t on_primary = 0, on_replica = 0;
  for (const auto& t : snapshot_.queries_by_label)
    (t.replica ? on_replica : on_primary) += t.queries;
  EXPECT_EQ(on_primary, 1u);
  EXPECT_EQ(on_replica, 1u);
}

// Pipelined statements wait on the server for the ones ahead of them: each is timed from when
// the answer before it ended, so a slow statement's time is not charged to those behind it.
TEST_F(SessionStatistics, APipelinedStatementIsTimedFromTheEndOfTheAnswerBeforeIt) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  // Simple queries.
  h.send(query("select pg_sleep(0.3)") + query("select 1 as fast"), *server, nullptr, T0);
  h.answer(row_result("", "SELECT 1"), T0 + 300ms);
  h.answer(row_result("1", "SELECT 1"), T0 + 302ms);
  const auto* fast = figures("select 1 as fast");
  ASSERT_NE(fast, nullptr);
  EXPECT_EQ(fast->total_micros, 2000u);
  // The extended protocol: a flight per statement, sent together.
  const std::string slow = parse("", "select pg_sleep(0.2)") + bind_to("", "") + execute() + sync();
  const std::string quick = parse("", "select 2 as quick") + bind_to("", "") + execute() + sync();
  h.send(slow + quick + quick, *server, nullptr, T0 + 1s);
  h.answer(parse_complete() + bind_complete() + data_row({""}) + complete("SELECT 1") + ready(),
           T0 + 1s + 200ms);
  h.answer(parse_complete() + bind_complete() + data_row({"2"}) + complete("SELECT 1") + ready(),
           T0 + 1s + 203ms);
  h.answer(parse_complete() + bind_complete() + data_row({"2"}) + complete("SELECT 1") + ready(),
           T0 + 1s + 204ms);
  const auto* q = figures("select 2 as quick");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->calls, 2u);
  EXPECT_EQ(q->max_micros, 3000u);
  EXPECT_EQ(q->total_micros, 4000u);
  EXPECT_EQ(snapshot_.slow_total, 2u) << "the two pg_sleep only";
}

TEST_F(SessionStatistics, PgvalvesOwnQueriesAreNotCounted) {
  SessionHarness h({}, {{"application_name", "meter"}}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  bool synced = false;
  h.send(query("select 1"), *server, &synced);
  EXPECT_TRUE(synced);  // pgvalve's settings query ran first
  h.answer(row_result("1", "SELECT 1"));
  snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
  ASSERT_EQ(snapshot_.queries.size(), 1u);
  EXPECT_EQ(snapshot_.queries[0].fingerprint, routing::fingerprint("select 1"));
}

// A step's statistics wait until its writes are done: the answer is on its way to the client
// before its execution and transaction are recorded, by account().
TEST_F(SessionStatistics, AnAnswerIsRecordedOnlyWhenTheStepIsAccounted) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from readings where device_id = 7"), *server, nullptr, T0);
  const std::string answer =
      row_description() + data_row({"1"}) + complete("SELECT 1") + ready('I');
  const Actions& a = h.session().on_server_data(0, answer, T0 + 2ms);
  EXPECT_FALSE(a.to_client.empty() && a.outbox.empty()) << "the answer goes to the client";
  EXPECT_EQ(figures("select * from readings where device_id = 1"), nullptr);
  ASSERT_TRUE(snapshot_.databases.empty() || snapshot_.databases[0].transactions == 0);
  h.session().account();
  const auto* f = figures("select * from readings where device_id = 1");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 1u);
  EXPECT_EQ(f->total_micros, 2000u);
  ASSERT_EQ(snapshot_.databases.size(), 1u);
  EXPECT_EQ(snapshot_.databases[0].transactions, 1u);
}

// A read over several shards is one transaction of the client's, however many shards ran it:
// alone (autocommit), or inside a transaction whose BEGIN and COMMIT pgvalve answers itself.
TEST_F(SessionStatistics, AReadOverSeveralShardsIsOneTransaction) {
  routing::ShardingPolicy policy;
  policy.tables = {"telemetry"};
  policy.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  policy.shard_names = {"s0", "s1"};
  SessionHarness h(policy, {}, false, &recorder_);
  auto s0 = SessionHarness::fresh_server();
  auto s1 = SessionHarness::fresh_server();
  const auto transactions = [&] {
    snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
    return snapshot_.databases.empty() ? 0u : snapshot_.databases[0].transactions;
  };
  const std::string count = query("select count(*) from telemetry");
  const std::string answer = int8_description() + data_row({"1"}) + complete("SELECT 1") + ready();
  auto scatter = [&](Clock::time_point at) {
    h.client(count, at);
    h.linked(*s0, at);
    h.linked(*s1, at);
    h.server(answer, at + 1ms, 0);
    const Step s = h.server(answer, at + 2ms, 1);
    EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  };
  scatter(T0);
  EXPECT_EQ(transactions(), 1u);
  Step s = h.client(query("begin"), T0 + 10ms);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  scatter(T0 + 11ms);
  scatter(T0 + 20ms);
  EXPECT_EQ(transactions(), 1u) << "counted when it ends";
  h.client(query("commit"), T0 + 30ms);
  EXPECT_EQ(transactions(), 2u);
  EXPECT_EQ(snapshot_.databases[0].transaction_micros, 2000u + 19000u);
}

// A read over several shards ran on replicas when every part did; its slow sample names the
// shards and hosts of its parts.
TEST_F(SessionStatistics, AReadOverSeveralShardsKeepsWhereItsPartsRan) {
  routing::ShardingPolicy policy;
  policy.tables = {"telemetry"};
  policy.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  policy.shard_names = {"s0", "s1"};
  SessionHarness h(policy, {}, true, &recorder_);
  auto s0 = SessionHarness::fresh_server();
  auto s1 = SessionHarness::fresh_server();
  s0->name = "10.0.0.1:5432";
  s1->name = "10.0.0.2:5432";
  const std::string count = query("select count(*) from telemetry");
  const std::string answer = int8_description() + data_row({"1"}) + complete("SELECT 1") + ready();
  auto scatter = [&](Clock::time_point at, bool s1_on_replica) {
    s0->replica = true;
    s1->replica = s1_on_replica;
    h.client(count, at);
    h.linked(*s0, at);
    h.linked(*s1, at);
    h.server(answer, at + 60ms, 0);
    h.server(answer, at + 70ms, 1);
  };
  scatter(T0, true);
  scatter(T0 + 1s, false);  // one part fell back to its primary
  const auto* f = figures("select count(*) from telemetry");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 2u);
  EXPECT_EQ(f->replica_calls, 1u);
  ASSERT_EQ(snapshot_.slow.size(), 2u);
  for (const auto& s : snapshot_.slow) {
    EXPECT_EQ(s.shards, 0b11u);
    EXPECT_EQ(s.host, "10.0.0.1:5432,10.0.0.2:5432");
  }
}

// SHOW SHARDS.rows_routed is the rows each shard's command tag reported: a part that failed
// after sending rows reported none, as a statement failing on one server does.
TEST_F(SessionStatistics, AShardsPartThatFailedAfterSomeRowsCountsNone) {
  routing::ShardingPolicy policy;
  policy.tables = {"telemetry"};
  policy.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  policy.shard_names = {"s0", "s1"};
  SessionHarness h(policy, {}, false, &recorder_);
  auto s0 = SessionHarness::fresh_server();
  auto s1 = SessionHarness::fresh_server();
  const auto rows_by_shard = [&] {
    snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
    std::uint64_t rows[2] = {0, 0};
    for (const auto& t : snapshot_.queries_by_label) {
      if (t.shard < 2) rows[t.shard] += t.rows;
    }
    return std::pair{rows[0], rows[1]};
  };
  const std::string sql = query("select 1 / (device_id - 3) from telemetry");
  const std::string ok = int8_description() + data_row({"1"}) + complete("SELECT 1") + ready();
  const std::string failed =
      int8_description() + data_row({"1"}) + data_row({"2"}) + error_message("22012") + ready();
  // The failing shard answers last (its rows go to the gather), then first (the first's rows
  // streamed to the client before the other's error).
  for (int failing : {1, 0}) {
    const auto before = rows_by_shard();
    h.client(sql, T0);
    h.linked(*s0, T0);
    h.linked(*s1, T0);
    h.server(failing == 0 ? failed : ok, T0 + 1ms, 0);
    const Step s = h.server(failing == 1 ? failed : ok, T0 + 2ms, 1);
    EXPECT_NE(tags_of(s.to_client).find('E'), std::string::npos) << "the client got the error";
    const auto after = rows_by_shard();
    EXPECT_EQ(failing == 0 ? after.first - before.first : after.second - before.second, 0u)
        << "shard " << failing << " failed: no rows";
    EXPECT_EQ(failing == 0 ? after.second - before.second : after.first - before.first, 1u)
        << "the other shard's SELECT 1";
  }
}

// A write to a reference table runs on every shard; its rows are the client's count, once.
TEST_F(SessionStatistics, AWriteToAReferenceTableCountsItsRowsOnce) {
  routing::ShardingPolicy policy;
  policy.tables = {"telemetry"};
  policy.reference_tables = {"device_types"};
  policy.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  policy.shard_names = {"s0", "s1"};
  SessionHarness h(policy, {}, false, &recorder_);
  auto s0 = SessionHarness::fresh_server();
  auto s1 = SessionHarness::fresh_server();
  const std::string sql = "update device_types set name = 'gauge'";
  h.client(query(sql), T0);
  h.linked(*s0, T0);
  h.linked(*s1, T0);
  const std::string part =
      complete("UPDATE 3") + ready('T') + complete("PREPARE TRANSACTION") + ready('I');
  h.server(complete("BEGIN") + ready('T') + xid_result() + part, T0 + 1ms, 0);
  h.server(complete("BEGIN") + ready('T') + part, T0 + 1ms, 1);
  h.server(complete("COMMIT PREPARED") + ready(), T0 + 2ms, 0);
  const Step s = h.server(complete("COMMIT PREPARED") + ready(), T0 + 2ms, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  const stats::QueryFigures* f = figures(sql);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->calls, 1u);
  EXPECT_EQ(f->rows, 3u) << "the rows the client was told of";
}

// Two Queries read in one step: the first is fingerprinted in account(), the second at once;
// each execution gets its own statement's shape.
TEST_F(SessionStatistics, QueriesReadTogetherKeepTheirOwnShapes) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select a from t where id = 1") + query("update t set a = 2 where id = 3"), *server,
         nullptr, T0);
  h.answer(row_description() + data_row({"1"}) + complete("SELECT 1") + ready('I') +
               complete("UPDATE 1") + ready('I'),
           T0 + 1ms);
  const auto* select = figures("select a from t where id = 5");
  ASSERT_NE(select, nullptr);
  EXPECT_EQ(select->calls, 1u);
  EXPECT_EQ(select->text, "select a from t where id = $1");
  const auto* update = figures("update t set a = 5 where id = 6");
  ASSERT_NE(update, nullptr);
  EXPECT_EQ(update->calls, 1u);
  EXPECT_EQ(update->rows, 1u);
}

// stats.redact_literals: false.
class UnredactedSamples : public SessionStatistics {
 protected:
  UnredactedSamples() {
    stats::Limits limits{100, std::chrono::milliseconds(50), 10};
    limits.redact_literals = false;
    stats_.set_limits(limits);
  }
  std::vector<std::string> slow_texts() {
    snapshot_ = stats::QueryStats::snapshot({&stats_}, 100);
    std::vector<std::string> out;
    for (const auto& s : snapshot_.slow)
      out.push_back(s.text);
    return out;
  }
};

TEST_F(UnredactedSamples, AQuerysSampleIsItsTextAndFastOnesKeepNone) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select * from readings where device_id = 7"), *server, nullptr, T0);
  h.answer(row_result("1", "SELECT 1"), T0 + 60ms);
  h.send(query("select * from readings where device_id = 8"), *server, nullptr, T0);
  h.answer(row_result("1", "SELECT 1"), T0 + 1ms);
  EXPECT_EQ(slow_texts(), std::vector<std::string>{"select * from readings where device_id = 7"});
}

TEST_F(UnredactedSamples, PipelinedQueriesEachKeepTheirOwn) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(query("select 'first'") + query("select 'second'"), *server, nullptr, T0);
  h.answer(row_result("first", "SELECT 1"), T0 + 60ms);
  h.answer(row_result("second", "SELECT 1"), T0 + 120ms);  // 60 ms after the first
  EXPECT_EQ(slow_texts(), (std::vector<std::string>{"select 'second'", "select 'first'"}));
}

TEST_F(UnredactedSamples, AnExecuteShowsItsStatementAndBindParameters) {
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  // $1 bigint in binary, $2 text, $3 NULL, $4 text with a quote.
  std::string types;
  for (std::uint32_t oid : {20u, 25u, 25u, 25u})
    protocol::append_i32(types, static_cast<std::int32_t>(oid));
  std::string in;
  protocol::append_parse_raw(in, "", "select $1, $2, $3, $4", types);
  std::string rest;
  protocol::append_i16(rest, 4);
  for (std::int16_t f : {1, 0, 0, 0})
    protocol::append_i16(rest, f);
  protocol::append_i16(rest, 4);
  protocol::append_i32(rest, 8);
  for (int i = 0; i < 7; ++i)
    rest += '\xff';
  rest += '\xfe';  // -2
  protocol::append_i32(rest, 9);
  rest += "device-42";
  protocol::append_i32(rest, -1);
  protocol::append_i32(rest, 4);
  rest += "it's";
  protocol::append_i16(rest, 0);
  protocol::append_bind(in, "", "", rest);
  in += execute() + sync();
  h.send(in, *server, nullptr, T0);
  h.answer(parse_complete() + bind_complete() + data_row({"x"}) + complete("SELECT 1") + ready(),
           T0 + 80ms);
  EXPECT_EQ(slow_texts(),
            std::vector<std::string>{"select $1, $2, $3, $4 [parameters: $1 = -2, $2 = "
                                     "'device-42', $3 = NULL, $4 = 'it''s']"});
  // A named statement's Execute, and a sample cut at the bound.
  h.send(parse("s1", "select '" + std::string(3000, 'x') + "' where $1::int > 0") +
             bind_to("", "s1") + execute() + sync(),
         *server, nullptr, T0);
  h.answer(parse_complete() + bind_complete() + complete("SELECT 0") + ready(), T0 + 90ms);
  const auto texts = slow_texts();
  ASSERT_EQ(texts.size(), 2u);
  EXPECT_EQ(texts[0].size(), stats::QueryStats::kMaxTextBytes + 3);
  EXPECT_EQ(texts[0].substr(0, 10), "select 'xx");
}

TEST_F(UnredactedSamples, WithRedactionEveryConstantIsGone) {
  stats_.set_limits(stats::Limits{100, std::chrono::milliseconds(50), 10});
  SessionHarness h({}, {}, nullptr, false, &recorder_);
  auto server = SessionHarness::fresh_server();
  h.send(parse("", "select $1 from readings where device_id = 7") + bind_to("", "") + execute() +
             sync(),
         *server, nullptr, T0);
  h.answer(parse_complete() + bind_complete() + complete("SELECT 0") + ready(), T0 + 80ms);
  EXPECT_EQ(slow_texts(), std::vector<std::string>{"select $1 from readings where device_id = $2"});
}

}  // namespace
}  // namespace pgvalve::session::testing
