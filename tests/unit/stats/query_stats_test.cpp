#include "stats/query_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <initializer_list>
#include <map>
#include <thread>

#include "routing/fingerprint.h"

namespace pgvalve::stats {
namespace {

Execution run(std::string_view sql, std::uint64_t micros, std::uint64_t rows = 1,
              bool error = false, bool replica = false) {
  Execution e;
  e.fingerprint = routing::fingerprint(sql);
  e.micros = micros;
  e.rows = rows;
  e.error = error;
  e.replica = replica;
  e.host = "127.0.0.1:5432";
  return e;
}

const std::string kDb = "telemetry";
const std::string kUser = "app";
const ClientLabels kWho{&kDb, &kUser};

TEST(QueryStats, OneShapeWithOtherConstantsIsOneEntry) {
  QueryStats s;
  for (int i = 0; i < 100; ++i) {
    const std::string sql = "SELECT value FROM readings WHERE device_id = " + std::to_string(i);
    s.prepare(routing::fingerprint(sql), sql, kWho);
    s.record(run(sql, 100 + i, 2, i == 7, i % 2 == 0), kWho);
  }
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  ASSERT_EQ(snap.queries.size(), 1u);
  const QueryFigures& q = snap.queries[0];
  EXPECT_EQ(q.calls, 100u);
  EXPECT_EQ(q.rows, 200u);
  EXPECT_EQ(q.errors, 1u);
  EXPECT_EQ(q.replica_calls, 50u);
  EXPECT_EQ(q.min_micros, 100u);
  EXPECT_EQ(q.max_micros, 199u);
  EXPECT_EQ(q.total_micros, 100u * 100 + 99 * 100 / 2);
  ASSERT_EQ(q.shards.size(), 1u);
  EXPECT_EQ(q.shards[0].database, "telemetry");
  EXPECT_EQ(q.shards[0].shards, 1u);
  // PostgreSQL's normalisation of the first sample: constants become $n.
  EXPECT_EQ(q.text, "SELECT value FROM readings WHERE device_id = $1");
}

// A shard index is a place in one database's shard list: the shards a shape ran on are kept per
// database, and summed per database over the workers.
TEST(QueryStats, TheShardsAShapeRanOnAreKeptPerDatabase) {
  QueryStats a, b;
  const std::string sql = "select 42";
  const std::string other = "fleet";
  const ClientLabels fleet{&other, &kUser};
  for (QueryStats* s : {&a, &b}) {
    s->prepare(routing::fingerprint(sql), sql, kWho);
  }
  Execution e = run(sql, 5);
  e.shard = 1;
  a.record(e, kWho);
  e.shard = 0;
  a.record(e, fleet);
  e.shard = 2;
  b.record(e, kWho);
  const Snapshot snap = QueryStats::snapshot({&a, &b}, 100);
  ASSERT_EQ(snap.queries.size(), 1u);
  const auto& shards = snap.queries[0].shards;
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].database, "telemetry");
  EXPECT_EQ(shards[0].shards, 0b110u);
  EXPECT_EQ(shards[1].database, "fleet");
  EXPECT_EQ(shards[1].shards, 0b001u);
}

// A reload that moves shards in a database's list: what is kept by shard index follows its
// shard; a shard gone takes its counters along; other databases are untouched.
TEST(QueryStats, AReloadMovingShardsRemapsWhatIsKeptByShardIndex) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  QueryStats s(limits);
  const std::string sql = "select pg_sleep(1)";
  const std::string other = "fleet";
  const ClientLabels fleet{&other, &kUser};
  s.prepare(routing::fingerprint(sql), sql, kWho);
  for (std::uint16_t shard : {0, 1, 1, 2}) {
    Execution e = run(sql, 200000);
    e.shard = shard;
    s.record(e, kWho);
  }
  Execution e = run(sql, 5);
  e.shard = 1;
  s.record(e, fleet);
  s.remap_shards("telemetry", {1, 0, QueryStats::kNoShard});  // s0 and s1 swapped, s2 gone
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  std::map<std::pair<std::string, std::uint16_t>, std::uint64_t> per_shard;
  for (const auto& t : snap.queries_by_label)
    per_shard[{t.database, t.shard}] += t.queries;
  EXPECT_EQ(per_shard, (std::map<std::pair<std::string, std::uint16_t>, std::uint64_t>{
                           {{"fleet", 1}, 1}, {{"telemetry", 0}, 2}, {{"telemetry", 1}, 1}}));
  ASSERT_EQ(snap.queries.size(), 1u);
  ASSERT_EQ(snap.queries[0].shards.size(), 2u);
  EXPECT_EQ(snap.queries[0].shards[0].shards, 0b011u);
  EXPECT_EQ(snap.queries[0].shards[1].shards, 0b010u) << "fleet's as it was";
  std::vector<std::uint16_t> slow;
  for (const auto& q : snap.slow)
    slow.push_back(q.shard);
  std::sort(slow.begin(), slow.end());
  EXPECT_EQ(slow, (std::vector<std::uint16_t>{0, 0, 1, QueryStats::kNoShard}));
}

TEST(QueryStats, AStatementOverSeveralShardsIsOneCallWithAPartPerShard) {
  QueryStats s;
  const std::string sql = "SELECT count(*) FROM readings";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  for (std::uint16_t shard = 0; shard < 4; ++shard) {
    Execution part = run(sql, 100 + shard, 1);
    part.shard = shard;
    part.scope = Execution::Scope::ShardPart;
    s.record(part, kWho);
  }
  Execution whole = run(sql, 250, 1);
  whole.scope = Execution::Scope::Gathered;
  s.record(whole, kWho);
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  ASSERT_EQ(snap.queries.size(), 1u);
  EXPECT_EQ(snap.queries[0].calls, 1u);
  EXPECT_EQ(snap.queries[0].rows, 1u);
  EXPECT_EQ(snap.queries[0].total_micros, 250u);
  ASSERT_EQ(snap.queries[0].shards.size(), 1u);
  EXPECT_EQ(snap.queries[0].shards[0].shards, 0xfu);
  // Per shard (SHOW SHARDS): one statement on each.
  std::uint64_t per_shard[4] = {};
  for (const auto& q : snap.queries_by_label) {
    if (q.shard < 4) per_shard[q.shard] += q.queries;
  }
  EXPECT_EQ(per_shard[0] + per_shard[1] + per_shard[2] + per_shard[3], 4u);
  EXPECT_EQ(per_shard[3], 1u);
  // The duration histogram counts the client's statement once.
  ASSERT_EQ(snap.databases.size(), 1u);
  std::uint64_t statements = 0;
  for (std::uint64_t n : snap.databases[0].duration_counts)
    statements += n;
  EXPECT_EQ(statements, 1u);
}

TEST(QueryStats, DifferentStatementsAreDifferentEntriesByTotalTime) {
  QueryStats s;
  const std::string fast = "select 1";
  const std::string slow = "select pg_sleep(1)";
  s.prepare(routing::fingerprint(fast), fast, kWho);
  s.prepare(routing::fingerprint(slow), slow, kWho);
  s.record(run(fast, 10), kWho);
  s.record(run(slow, 1000000), kWho);
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  ASSERT_EQ(snap.queries.size(), 2u);
  EXPECT_EQ(snap.queries[0].fingerprint, routing::fingerprint(slow));
}

TEST(QueryStats, WorkersAreSummed) {
  QueryStats a, b;
  const std::string sql = "select * from readings where id = 5";
  for (QueryStats* s : {&a, &b}) {
    s->prepare(routing::fingerprint(sql), sql, kWho);
    s->record(run(sql, 50), kWho);
  }
  a.record(run(sql, 70), kWho);
  const Snapshot snap = QueryStats::snapshot({&a, &b}, 100);
  ASSERT_EQ(snap.queries.size(), 1u);
  EXPECT_EQ(snap.queries[0].calls, 3u);
  EXPECT_EQ(snap.queries[0].durations.count(), 3u);
  EXPECT_EQ(snap.queries[0].min_micros, 50u);
  EXPECT_EQ(snap.queries[0].max_micros, 70u);
}

TEST(QueryStats, TheCapEvictsAndCounts) {
  Limits limits;
  limits.max_fingerprints = 10;
  QueryStats s(limits);
  const std::string hot = "select hot from t";
  s.prepare(routing::fingerprint(hot), hot, kWho);
  for (int i = 0; i < 1000; ++i)
    s.record(run(hot, 5), kWho);
  for (int i = 0; i < 200; ++i) {
    const std::string sql = "select c" + std::to_string(i) + " from t";
    s.prepare(routing::fingerprint(sql), sql, kWho);
    s.record(run(sql, 5), kWho);
  }
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  EXPECT_LE(snap.queries.size(), 10u);
  EXPECT_GE(snap.evictions, 190u);
  // The statement called most is kept.
  bool kept = false;
  for (const auto& q : snap.queries)
    kept = kept || q.fingerprint == routing::fingerprint(hot);
  EXPECT_TRUE(kept);
}

TEST(QueryStats, SlowExecutionsGoToABoundedRingWithoutConstants) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  limits.slow_samples = 3;
  QueryStats s(limits);
  const std::string sql = "select * from readings where secret = 'hunter2'";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  s.record(run(sql, 99000), kWho);  // under the threshold
  for (int i = 0; i < 5; ++i)
    s.record(run(sql, 200000 + i), kWho);
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  EXPECT_EQ(snap.slow_total, 5u);
  ASSERT_EQ(snap.slow.size(), 3u);
  for (const auto& q : snap.slow) {
    EXPECT_GE(q.micros, 200000u);
    EXPECT_EQ(q.database, "telemetry");
    EXPECT_EQ(q.user, "app");
    EXPECT_EQ(q.host, "127.0.0.1:5432");
    EXPECT_EQ(q.text.find("hunter2"), std::string::npos) << q.text;
  }
}

TEST(QueryStats, ASlotOfTheRingTakenAgainHoldsOnlyTheNewSample) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  limits.slow_samples = 1;
  limits.redact_literals = false;
  QueryStats s(limits);
  const std::string long_sql =
      "select * from readings where note = '" + std::string(500, 'x') + "'";
  const std::string short_sql = "select 1";
  s.prepare(routing::fingerprint(long_sql), long_sql, kWho);
  s.prepare(routing::fingerprint(short_sql), short_sql, kWho);
  s.record(run(long_sql, 300000), kWho, long_sql);
  const std::string other_db = "fleet";
  const std::string other_user = "ops";
  Execution e = run(short_sql, 200000);
  e.host = "10.0.0.9:5432";
  e.shard = 3;
  s.record(e, {&other_db, &other_user}, short_sql);
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  ASSERT_EQ(snap.slow.size(), 1u);
  EXPECT_EQ(snap.slow[0].text, short_sql);
  EXPECT_EQ(snap.slow[0].database, "fleet");
  EXPECT_EQ(snap.slow[0].user, "ops");
  EXPECT_EQ(snap.slow[0].host, "10.0.0.9:5432");
  EXPECT_EQ(snap.slow[0].shard, 3);
  EXPECT_EQ(snap.slow[0].micros, 200000u);
  EXPECT_EQ(snap.slow[0].fingerprint, routing::fingerprint(short_sql));
}

TEST(QueryStats, UnredactedSlowSamplesShowTheStatementAsSentAndOnlyWhenAsked) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  EXPECT_FALSE(QueryStats(limits).keeps_literals());
  limits.redact_literals = false;
  QueryStats s(limits);
  EXPECT_TRUE(s.keeps_literals());
  const std::string sql = "select * from readings where device_id = 42";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  s.record(run(sql, 200000), kWho, sql);
  const std::string long_text = "select '" + std::string(3000, 'x') + "'";
  s.prepare(routing::fingerprint(long_text), long_text, kWho);
  s.record(run(long_text, 300000), kWho, long_text);
  s.record(run(sql, 400000), kWho);  // no sample given: the normalised text
  Snapshot snap = QueryStats::snapshot({&s}, 100);
  ASSERT_EQ(snap.slow.size(), 3u);
  EXPECT_EQ(snap.slow[0].text, "select * from readings where device_id = $1");
  EXPECT_EQ(snap.slow[1].text.size(), QueryStats::kMaxTextBytes + 3);
  EXPECT_EQ(snap.slow[1].text.substr(QueryStats::kMaxTextBytes), "...");
  EXPECT_EQ(snap.slow[2].text, sql);

  // Redaction turned back on (a reload): the samples kept lose their constants.
  limits.redact_literals = true;
  s.set_limits(limits);
  EXPECT_FALSE(s.keeps_literals());
  snap = QueryStats::snapshot({&s}, 100);
  for (const auto& q : snap.slow) {
    EXPECT_EQ(q.text.find("42"), std::string::npos) << q.text;
    EXPECT_EQ(q.text.find("xxx"), std::string::npos) << q.text;
  }
  s.record(run(sql, 500000), kWho, sql);
  EXPECT_EQ(QueryStats::snapshot({&s}, 100).slow[0].text,
            "select * from readings where device_id = $1");
}

TEST(QueryStats, ResetForgetsEverything) {
  QueryStats s;
  const std::string sql = "select 1";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  s.record(run(sql, 5), kWho);
  s.reset();
  EXPECT_TRUE(QueryStats::snapshot({&s}, 100).queries.empty());
  // Recorded without a prepare (evicted or reset meanwhile): not counted.
  s.record(run(sql, 5), kWho);
  EXPECT_TRUE(QueryStats::snapshot({&s}, 100).queries.empty());
}

// A slow statement whose entry went while it ran (evicted for new shapes, or RESET QUERIES) is
// still a slow statement: counted, and sampled without its shape's text.
TEST(QueryStats, ASlowStatementWhoseEntryWentWhileItRanIsStillCountedAndSampled) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  QueryStats s(limits);
  const std::string sql = "select pg_sleep(1)";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  s.reset();
  s.record(run(sql, 500000), kWho);
  const Snapshot snap = QueryStats::snapshot({&s}, 100);
  EXPECT_TRUE(snap.queries.empty());
  EXPECT_EQ(snap.slow_total, 1u);
  ASSERT_EQ(snap.slow.size(), 1u);
  EXPECT_EQ(snap.slow[0].fingerprint, routing::fingerprint(sql));
  EXPECT_EQ(snap.slow[0].micros, 500000u);
  EXPECT_EQ(snap.slow[0].text, "");
}

// New shapes evict the least called of a few entries drawn: one not called yet (its first
// execution is likely still running) is taken only when every one drawn is such.
TEST(QueryStats, AnEntryNotCalledYetOutlivesAFloodOfOneOffShapes) {
  Limits limits;
  limits.max_fingerprints = 4;
  QueryStats s(limits);
  const std::string running = "select pg_sleep(10) as running";
  s.prepare(routing::fingerprint(running), running, kWho);
  for (int i = 0; i < 100; ++i) {
    const std::string sql = "select c" + std::to_string(i) + " from t";
    s.prepare(routing::fingerprint(sql), sql, kWho);
    s.record(run(sql, 5), kWho);
  }
  s.record(run(running, 5), kWho);
  bool kept = false;
  for (const auto& q : QueryStats::snapshot({&s}, 100).queries)
    kept = kept || q.fingerprint == routing::fingerprint(running);
  EXPECT_TRUE(kept);
}

// A reload lowering stats.slow_query_samples keeps the newest samples, and the ring goes on
// replacing the oldest.
TEST(QueryStats, AReloadLoweringTheSampleCountKeepsTheNewest) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(100);
  limits.slow_samples = 5;
  QueryStats s(limits);
  const std::string sql = "select pg_sleep(1)";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  const auto micros = [&] {
    std::vector<std::uint64_t> out;
    for (const auto& q : QueryStats::snapshot({&s}, 100).slow)
      out.push_back(q.micros);
    return out;
  };
  for (std::uint64_t i = 1; i <= 5; ++i) {
    s.record(run(sql, 200000 + i), kWho);
    std::this_thread::sleep_for(std::chrono::microseconds(5));
  }
  limits.slow_samples = 4;
  s.set_limits(limits);
  EXPECT_EQ(micros(), (std::vector<std::uint64_t>{200005, 200004, 200003, 200002}));
  s.record(run(sql, 200006), kWho);  // the ring had wrapped: the oldest goes
  std::this_thread::sleep_for(std::chrono::microseconds(5));
  s.record(run(sql, 200007), kWho);
  limits.slow_samples = 2;
  s.set_limits(limits);
  EXPECT_EQ(micros(), (std::vector<std::uint64_t>{200007, 200006}));
  std::this_thread::sleep_for(std::chrono::microseconds(5));
  s.record(run(sql, 200008), kWho);
  EXPECT_EQ(micros(), (std::vector<std::uint64_t>{200008, 200007}));
  limits.slow_samples = 3;
  s.set_limits(limits);
  std::this_thread::sleep_for(std::chrono::microseconds(5));
  s.record(run(sql, 200009), kWho);
  std::this_thread::sleep_for(std::chrono::microseconds(5));
  s.record(run(sql, 200010), kWho);
  EXPECT_EQ(micros(), (std::vector<std::uint64_t>{200010, 200009, 200008}));
  limits.slow_samples = 0;
  s.set_limits(limits);
  EXPECT_TRUE(micros().empty());
}

TEST(QueryStats, TextOfAStatementThatDoesNotParseIsStillNormalised) {
  const std::string text = QueryStats::normalized_text("selec 'abc' from");
  EXPECT_EQ(text.find("abc"), std::string::npos) << text;
  EXPECT_LE(QueryStats::normalized_text(std::string(10000, 'x')).size(),
            QueryStats::kMaxTextBytes + 3);
}

TEST(QueryStats, TextShowsNoStringConstantPostgresNormaliserKeeps) {
  // pg_query_normalize leaves a NOTIFY payload as written.
  const std::string text = QueryStats::normalized_text("NOTIFY readings, 'device 42 secret'");
  EXPECT_EQ(text.find("secret"), std::string::npos) << text;
  EXPECT_NE(text.find("$?"), std::string::npos) << text;
  // What the normaliser replaces keeps its form.
  EXPECT_EQ(QueryStats::normalized_text("SELECT * FROM t WHERE a = 'x' ORDER BY 1"),
            "SELECT * FROM t WHERE a = $1 ORDER BY 1");
}

TEST(QueryStats, TextShowsNoComment) {
  // sqlcommenter and marginalia put each request's own ids in comments: not the shape's.
  EXPECT_EQ(QueryStats::normalized_text(
                "/* tenant='alice',traceparent='00-aaaa-01' */ select pg_sleep(0.2) -- bob"),
            "select pg_sleep($1)");
  EXPECT_EQ(QueryStats::normalized_text("select a /* x /* nested */ y */,b from t"),
            "select a ,b from t");
  EXPECT_EQ(QueryStats::normalized_text("select '/* not a comment */' --x\nfrom t"),
            "select $1 from t");
  // Not parsed: the lexer's form, which has no comments either.
  EXPECT_EQ(QueryStats::normalized_text("select 1 /* never closed"), "select $?");
}

TEST(QueryStats, TextShowsTrueFalseAndNullWhichTellShapesApart) {
  // They are part of the fingerprint: two shapes must not show the same text.
  EXPECT_EQ(QueryStats::normalized_text("SELECT id FROM dev WHERE active = true AND id > 3"),
            "select id from dev where active = true and id > $?");
  EXPECT_EQ(QueryStats::normalized_text("UPDATE dev SET note = NULL WHERE id = 4"),
            "update dev set note = null where id = $?");
  // Where PostgreSQL's normaliser keeps them as written, its text stays.
  EXPECT_EQ(QueryStats::normalized_text("SELECT id FROM dev WHERE note IS NOT NULL AND id = 4"),
            "SELECT id FROM dev WHERE note IS NOT NULL AND id = $1");
  EXPECT_EQ(QueryStats::normalized_text("CREATE TABLE t (a int NOT NULL)"),
            "CREATE TABLE t (a int NOT NULL)");
}

TEST(QueryStats, TextOfALongStatementIsTheLexersFormOfItsStart) {
  // 200,000 constants in 0.4 MiB: PostgreSQL's normaliser would take 1.6 GiB for it.
  std::string sql = "select 'secret'";
  while (sql.size() < 400000)
    sql += ",1";
  const std::string text = QueryStats::normalized_text(sql);
  EXPECT_LE(text.size(), QueryStats::kMaxTextBytes + 3);
  EXPECT_EQ(text.rfind("select $?", 0), 0u) << text.substr(0, 40);
  EXPECT_EQ(text.find("secret"), std::string::npos);
}

// The kind and the rows of each CommandComplete tag PostgreSQL sends, and of tags that only
// look like counts.
TEST(QueryStats, CommandTags) {
  struct Case {
    const char* tag;
    StatementKind kind;
    std::uint64_t rows;
  };
  using K = StatementKind;
  for (const Case& c : std::initializer_list<Case>{
           {"SELECT 5", K::Select, 5},
           {"FETCH 20", K::Select, 20},
           {"INSERT 0 12", K::Insert, 12},
           {"UPDATE 3", K::Update, 3},
           {"MERGE 7", K::Update, 7},
           {"DELETE 0", K::Delete, 0},
           {"COPY 100", K::Copy, 100},
           {"MOVE 4", K::Other, 4},
           {"SELECT 18446744073709551615", K::Select, 18446744073709551615u},
           {"CREATE TABLE", K::Other, 0},
           {"DROP 5", K::Other, 0},  // not a count
           {"SELECTED 1", K::Other, 0},
           {"SET", K::Other, 0},
           {"SELECT", K::Select, 0},
           {"SELECT ", K::Select, 0},
           {"SELECT 5x", K::Select, 0},
           {"INSERT 0 x5", K::Insert, 0},
           {"", K::Other, 0},
       }) {
    const CommandTag said = read_command_tag(c.tag);
    EXPECT_EQ(said.kind, c.kind) << c.tag;
    EXPECT_EQ(said.rows, c.rows) << c.tag;
  }
}

}  // namespace
}  // namespace pgvalve::stats

namespace pgvalve::stats {
namespace {

TEST(QueryStatsTotals, CountedPerLabelDatabaseAndErrorClassEvenWhenNotTracked) {
  QueryStats a, b;
  Execution select = run("select 1", 700);
  select.kind = StatementKind::Select;
  Execution failed = run("insert into t values (1)", 20000, 0, true);
  failed.kind = StatementKind::Insert;
  failed.sqlstate_class[0] = '2';
  failed.sqlstate_class[1] = '3';
  // No prepare(): the fingerprint is not tracked, the totals still count.
  a.record(select, kWho);
  b.record(select, kWho);
  Execution on_replica = select;
  on_replica.replica = true;
  b.record(on_replica, kWho);
  a.record(failed, kWho);
  a.count_transaction(kWho, 100);
  b.count_transaction(kWho, 200);
  const Snapshot s = QueryStats::snapshot({&a, &b}, 10);
  EXPECT_TRUE(s.queries.empty());
  std::uint64_t primary_selects = 0, replica_selects = 0, inserts = 0;
  for (const auto& q : s.queries_by_label) {
    EXPECT_EQ(q.database, "telemetry");
    if (q.kind == StatementKind::Select)
      (q.replica ? replica_selects : primary_selects) += q.queries;
    if (q.kind == StatementKind::Insert) inserts += q.queries;
  }
  EXPECT_EQ(primary_selects, 2u);
  EXPECT_EQ(replica_selects, 1u);
  EXPECT_EQ(inserts, 1u);
  ASSERT_EQ(s.databases.size(), 1u);
  EXPECT_EQ(s.databases[0].transactions, 2u);
  EXPECT_EQ(s.databases[0].transaction_micros, 300u);
  std::uint64_t observed = 0;
  for (auto c : s.databases[0].duration_counts)
    observed += c;
  EXPECT_EQ(observed, 4u);
  EXPECT_EQ(s.databases[0].duration_counts[1], 3u);  // 0.7 ms: in (0.5 ms, 1 ms]
  EXPECT_NEAR(s.databases[0].duration_sum_seconds, 3 * 0.0007 + 0.02, 1e-9);
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(std::string(s.errors[0].sqlstate_class, 2), "23");
  EXPECT_EQ(s.errors[0].errors, 1u);
  // RESET QUERIES leaves the counters alone.
  a.reset();
  EXPECT_EQ(QueryStats::snapshot({&a}, 10).databases[0].transactions, 1u);
}

TEST(QueryStatsTotals, KindNames) {
  EXPECT_EQ(kind_name(StatementKind::Update), "update");
}

}  // namespace
}  // namespace pgvalve::stats

namespace pgvalve::stats {
namespace {

TEST(QueryStats, PercentilesStayWithinWhatWasSeen) {
  QueryStats s;
  const std::string sql = "select 1";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  for (int i = 0; i < 10; ++i)
    s.record(run(sql, 109), kWho);  // the bucket [96, 112) has its middle at 104
  const Snapshot snap = QueryStats::snapshot({&s}, 10);
  ASSERT_EQ(snap.queries.size(), 1u);
  EXPECT_EQ(snap.queries[0].percentile_micros(0.5), 109u);
  EXPECT_EQ(snap.queries[0].percentile_micros(0.99), 109u);
}

}  // namespace
}  // namespace pgvalve::stats

namespace pgvalve::stats {
namespace {

TEST(QueryStatsExplain, ASlowSelectIsSampledOnceTheNextTimeItRuns) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(10);
  limits.explain_slow = true;
  QueryStats s(limits);
  const std::string first = "select * from readings where device_id = 7";
  const std::string next = "select * from readings where device_id = 8";
  const auto fp = routing::fingerprint(first);
  s.prepare(fp, first, kWho);
  Execution e = run(first, 50000);
  e.kind = StatementKind::Select;
  s.record(e, kWho);
  EXPECT_TRUE(s.take_explain_requests().empty());  // its text is gone: the next run's is taken
  s.prepare(fp, next, kWho);
  auto requests = s.take_explain_requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].sql, next);
  EXPECT_EQ(requests[0].database, "telemetry");
  EXPECT_EQ(requests[0].user, "app");
  s.record(e, kWho);
  s.prepare(fp, next, kWho);
  EXPECT_TRUE(s.take_explain_requests().empty());  // once per shape
  s.set_advice(fp, "an index on readings (device_id)");
  const Snapshot snap = QueryStats::snapshot({&s}, 10);
  EXPECT_EQ(snap.queries[0].advice, "an index on readings (device_id)");
  ASSERT_FALSE(snap.slow.empty());
  EXPECT_EQ(snap.slow[0].advice, "an index on readings (device_id)");
}

TEST(QueryStatsExplain, WritesFastStatementsAndParametersAreNotExplained) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(10);
  limits.explain_slow = true;
  QueryStats s(limits);
  const std::string insert = "insert into t values (1)";
  s.prepare(routing::fingerprint(insert), insert, kWho);
  Execution w = run(insert, 50000);
  w.kind = StatementKind::Insert;
  s.record(w, kWho);
  s.prepare(routing::fingerprint(insert), insert, kWho);
  const std::string fast = "select 1";
  s.prepare(routing::fingerprint(fast), fast, kWho);
  Execution f = run(fast, 5);
  f.kind = StatementKind::Select;
  s.record(f, kWho);
  s.prepare(routing::fingerprint(fast), fast, kWho);
  const std::string param = "select * from t where a = $1";
  s.prepare(routing::fingerprint(param), param, kWho);
  Execution p = run(param, 50000);
  p.kind = StatementKind::Select;
  s.record(p, kWho);
  s.prepare(routing::fingerprint(param), param, kWho);
  EXPECT_TRUE(s.take_explain_requests().empty());
}

}  // namespace
}  // namespace pgvalve::stats

namespace pgvalve::stats {
namespace {

TEST(QueryStatsExplain, WaitingRequestsAreBoundedAndTheRestComeLater) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(10);
  limits.explain_slow = true;
  QueryStats s(limits);
  std::vector<std::string> shapes;
  for (int i = 0; i < 40; ++i)
    shapes.push_back("select c" + std::to_string(i) + " from t where a = 1");
  for (int round = 0; round < 2; ++round) {
    for (const auto& sql : shapes) {
      s.prepare(routing::fingerprint(sql), sql, kWho);
      Execution e = run(sql, 50000);
      e.kind = StatementKind::Select;
      s.record(e, kWho);
    }
  }
  const auto first = s.take_explain_requests();
  EXPECT_EQ(first.size(), 32u);
  for (const auto& sql : shapes)
    s.prepare(routing::fingerprint(sql), sql, kWho);
  EXPECT_EQ(s.take_explain_requests().size(), 8u);  // still wanted: sampled now
}

// Statement i on a worker: its own shape, `calls` executions of `micros` each.
void run_shape(QueryStats& s, int i, int calls, std::uint64_t micros) {
  const std::string sql = "select c" + std::to_string(i) + " from t";
  s.prepare(routing::fingerprint(sql), sql, kWho);
  for (int c = 0; c < calls; ++c)
    s.record(run(sql, micros), kWho);
}

TEST(QueryStatsDetail, TopIsTheFirstOfAllWithEveryWorkersShareSummed) {
  QueryStats a, b;
  // 25 shapes of 1 ms on each worker, and a few on both with less.
  for (int i = 0; i < 25; ++i) {
    run_shape(a, i, 1, 1000);
    run_shape(b, i + 25, 1, 1000);
  }
  for (int i = 50; i < 60; ++i) {
    run_shape(a, i, 2, 100 + static_cast<std::uint64_t>(i));
    run_shape(b, i, 1, 200 + static_cast<std::uint64_t>(i));
  }
  // 26th on each worker, second in sum: a worker's own top 20 would miss it.
  run_shape(a, 100, 1, 600);
  run_shape(b, 100, 1, 600);
  // First on one worker: its small share on the other must be added too.
  run_shape(a, 101, 10, 2000);
  run_shape(b, 101, 1, 7);
  const Snapshot all = QueryStats::snapshot({&a, &b}, 100, Detail::All);
  const Snapshot top = QueryStats::snapshot({&a, &b}, 100, Detail::Top);
  ASSERT_EQ(top.queries.size(), kTopShown);
  ASSERT_GT(all.queries.size(), kTopShown);
  for (std::size_t i = 0; i < kTopShown; ++i) {
    const QueryFigures& want = all.queries[i];
    const QueryFigures& got = top.queries[i];
    EXPECT_EQ(got.fingerprint, want.fingerprint) << i;
    EXPECT_EQ(got.text, want.text) << i;
    EXPECT_EQ(got.calls, want.calls) << i;
    EXPECT_EQ(got.rows, want.rows) << i;
    EXPECT_EQ(got.total_micros, want.total_micros) << i;
    EXPECT_EQ(got.min_micros, want.min_micros) << i;
    EXPECT_EQ(got.max_micros, want.max_micros) << i;
    EXPECT_EQ(got.durations.count(), want.durations.count()) << i;
  }
  const auto fingerprint = [](int i) {
    return routing::fingerprint("select c" + std::to_string(i) + " from t");
  };
  EXPECT_EQ(top.queries[0].fingerprint, fingerprint(101));
  EXPECT_EQ(top.queries[0].calls, 11u);
  EXPECT_EQ(top.queries[0].min_micros, 7u);
  EXPECT_EQ(top.queries[1].fingerprint, fingerprint(100));
  EXPECT_EQ(top.queries[1].calls, 2u);
}

TEST(QueryStatsDetail, TopHasTheLatestSlowSamplesOfAllWorkers) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(1);
  QueryStats a(limits), b(limits);
  const std::string sql = "select pg_sleep(0.1)";
  for (QueryStats* s : {&a, &b})
    s->prepare(routing::fingerprint(sql), sql, kWho);
  // Newest on either worker in turns; b also has older ones first.
  for (int i = 0; i < 30; ++i) {
    b.record(run(sql, 5000 + static_cast<std::uint64_t>(i)), kWho);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  for (int i = 0; i < 30; ++i) {
    (i % 3 == 0 ? b : a).record(run(sql, 10000 + static_cast<std::uint64_t>(i)), kWho);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  const Snapshot all = QueryStats::snapshot({&a, &b}, 100, Detail::All);
  const Snapshot top = QueryStats::snapshot({&a, &b}, 100, Detail::Top);
  ASSERT_EQ(all.slow.size(), 60u);
  ASSERT_EQ(top.slow.size(), kTopShown);
  for (std::size_t i = 0; i < kTopShown; ++i) {
    EXPECT_EQ(top.slow[i].micros, all.slow[i].micros) << i;
    EXPECT_EQ(top.slow[i].micros, 10029u - i) << i;
  }
  EXPECT_EQ(top.slow_total, 60u);
}

TEST(QueryStatsDetail, TotalsCopyNoStatementAndTheSameCounters) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(1);
  QueryStats a(limits), b(limits);
  for (int i = 0; i < 30; ++i) {
    run_shape(a, i, 2, 5000);
    run_shape(b, i, 1, 50);
  }
  a.count_transaction(kWho, 10);
  b.count_error("57014");
  const Snapshot all = QueryStats::snapshot({&a, &b}, 100, Detail::All);
  const Snapshot totals = QueryStats::snapshot({&a, &b}, 100, Detail::Totals);
  EXPECT_TRUE(totals.queries.empty());
  EXPECT_TRUE(totals.slow.empty());
  EXPECT_EQ(totals.slow_total, 60u);
  EXPECT_EQ(totals.slow_total, all.slow_total);
  EXPECT_EQ(totals.evictions, all.evictions);
  ASSERT_EQ(totals.queries_by_label.size(), 1u);
  EXPECT_EQ(totals.queries_by_label[0].queries, 90u);
  ASSERT_EQ(totals.databases.size(), 1u);
  EXPECT_EQ(totals.databases[0].transactions, 1u);
  EXPECT_EQ(totals.databases[0].duration_counts[0], all.databases[0].duration_counts[0]);
  ASSERT_EQ(totals.errors.size(), 1u);
  EXPECT_EQ(totals.errors[0].errors, 1u);
}

TEST(QueryStatsDetail, TopShowsNoMoreThanTheCap) {
  QueryStats a;
  for (int i = 0; i < 30; ++i)
    run_shape(a, i, 1, 100 + static_cast<std::uint64_t>(i));
  const Snapshot top = QueryStats::snapshot({&a}, 5, Detail::Top);
  const Snapshot all = QueryStats::snapshot({&a}, 5, Detail::All);
  ASSERT_EQ(top.queries.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i)
    EXPECT_EQ(top.queries[i].fingerprint, all.queries[i].fingerprint);
}

TEST(QueryStatsDetail, TopByTimeSumsThePartsAndBreaksTiesByFingerprint) {
  const std::vector<std::vector<FingerprintTime>> parts = {
      {{1, 10}, {2, 30}, {3, 5}, {7, 20}},
      {{3, 30}, {4, 20}, {5, 1}},
  };
  // Sums: 3 -> 35, 2 -> 30, 4 -> 20, 7 -> 20, 1 -> 10, 5 -> 1.
  EXPECT_EQ(QueryStats::top_by_time(parts, 4), (std::vector<std::uint64_t>{3, 2, 4, 7}));
  EXPECT_EQ(QueryStats::top_by_time(parts, 100), (std::vector<std::uint64_t>{3, 2, 4, 7, 1, 5}));
  EXPECT_TRUE(QueryStats::top_by_time(parts, 0).empty());
  EXPECT_TRUE(QueryStats::top_by_time({}, 20).empty());
}

TEST(QueryStatsDetail, AWorkerGivesOnlyWhatIsAsked) {
  Limits limits;
  limits.slow_query = std::chrono::milliseconds(1);
  QueryStats s(limits);
  for (int i = 0; i < 50; ++i)
    run_shape(s, i, 1, 2000 + static_cast<std::uint64_t>(i));
  std::vector<FingerprintTime> times;
  s.collect_times(times);
  EXPECT_EQ(times.size(), 50u);
  Snapshot part;
  const std::vector<std::uint64_t> wanted = {routing::fingerprint("select c3 from t"),
                                             routing::fingerprint("select c99 from t")};
  s.collect_figures(wanted, part);
  ASSERT_EQ(part.queries.size(), 1u);  // c99 never ran here
  EXPECT_EQ(part.queries[0].total_micros, 2003u);
  s.collect_latest_slow(3, part);
  ASSERT_EQ(part.slow.size(), 3u);
  EXPECT_GE(part.slow[0].at, part.slow[1].at);
  EXPECT_GE(part.slow[1].at, part.slow[2].at);
  EXPECT_EQ(part.slow[0].micros, 2049u);
}

}  // namespace
}  // namespace pgvalve::stats
