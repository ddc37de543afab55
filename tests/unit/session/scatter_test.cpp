// A read over several shards, as the session carries it out: one server checked out per shard in
// shard order, the request sent to each as soon as it is linked, each server given back when its
// part is answered, and the client answered once, as one database would.
#include <gtest/gtest.h>

#include <limits>

#include "protocol/binary_values.h"
#include "protocol/messages.h"
#include "protocol/wire.h"
#include "tests/unit/session/session_test_util.h"

namespace pgvalve::session::testing {
namespace {

routing::ShardingPolicy two_shards() {
  routing::ShardingPolicy p;
  p.tables = {"telemetry", "archive"};
  p.reference_tables = {"device_types"};
  p.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, 2, {});
  p.shard_names = {"s0", "s1"};
  return p;
}

std::vector<std::string> values_in(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'D') continue;
    protocol::Cursor c(m.body);
    c.u16();
    const auto len = c.i32();
    out.emplace_back(*len < 0 ? "NULL" : std::string(*c.bytes(static_cast<std::size_t>(*len))));
  }
  return out;
}

// The CommandComplete tags of a stream, in order.
std::vector<std::string> tags_in(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (auto tag = protocol::read_command_complete(frame_of(m))) out.emplace_back(*tag);
  }
  return out;
}

// How many result formats the (parameterless) Bind of a stream sends; -1 without a Bind.
int result_formats_in(std::string_view stream) {
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'B') continue;
    protocol::Cursor c(m.body);
    c.cstr();  // portal
    c.cstr();  // statement
    c.i16();   // parameter formats (none)
    c.i16();   // parameters (none)
    return c.i16().value_or(-1);
  }
  return -1;
}

class Scatter : public ::testing::Test {
 protected:
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy};
  std::unique_ptr<ServerState> s0 = SessionHarness::fresh_server();
  std::unique_ptr<ServerState> s1 = SessionHarness::fresh_server();

  // Sends `input`; links s0 then s1 as the session asks. Returns what each server was sent.
  std::pair<std::string, std::string> start(std::string_view input) {
    Step s = h.client(input);
    EXPECT_TRUE(s.check_out);
    EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
    EXPECT_EQ(s.route.shard, 0);
    EXPECT_EQ(h.state(), SessionState::WaitingForServer);
    consumed = s.consumed;
    s = h.linked(*s0);
    EXPECT_EQ(s.server_link, 0);
    const std::string to_s0 = s.to_server;
    EXPECT_TRUE(s.check_out) << "the next shard is checked out while the first runs";
    EXPECT_EQ(s.route.shard, 1);
    s = h.linked(*s1);
    EXPECT_EQ(s.server_link, 1);
    EXPECT_FALSE(s.check_out);
    EXPECT_EQ(h.state(), SessionState::Scattering);
    EXPECT_TRUE(h.session().wants_server_input(0) && h.session().wants_server_input(1))
        << "every shard's server is read";
    return {to_s0, s.to_server};
  }

  // A session whose servers must answer within a second, running `sql` on both shards.
  std::unique_ptr<SessionHarness> timed(std::string_view sql) {
    SessionOptions options;
    options.query_timeout = 1s;
    auto t = std::make_unique<SessionHarness>(policy, options);
    t->client(query(sql));
    t->linked(*s0);
    t->linked(*s1);
    return t;
  }

  // Both shards run their part of a two-phase write, answering `part` (the statement's answers up
  // to PREPARE TRANSACTION's ReadyForQuery), and commit it; returns the client's answer.
  Step commit_both(std::string_view part) {
    const std::string begin = complete("BEGIN") + ready('T');
    h.server(begin + xid_result() + std::string(part), T0, 0);
    h.server(begin + std::string(part), T0, 1);
    h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
    return h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  }

  std::size_t consumed = 0;
};

TEST_F(Scatter, ASimpleQueryIsAnsweredOnceWithEveryShardsRows) {
  const std::string q = query("SELECT count(*) FROM telemetry");
  const auto [to_s0, to_s1] = start(q);
  EXPECT_EQ(consumed, q.size());
  EXPECT_EQ(queries_in(to_s0), std::vector<std::string>{"SELECT count(*) FROM telemetry"});
  EXPECT_EQ(to_s1, to_s0);

  Step s = h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  EXPECT_EQ(s.to_client, "") << "nothing reaches the client before every shard answered";
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(s.ops[0].link, 0);
  EXPECT_EQ(h.state(), SessionState::Scattering);

  s = h.server(int8_description() + data_row({"3"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"5"});
  EXPECT_EQ(statuses_in(s.to_client), "I");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].link, 1);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST_F(Scatter, AnExtendedRequestGetsTheAnswersItsMessagesAskFor) {
  // A bound LIMIT on an aggregate.
  std::string in;
  protocol::append_parse(in, "", "SELECT count(*) FROM telemetry LIMIT $1", {});
  std::string bind_rest;
  protocol::append_i16(bind_rest, 0);  // parameter formats: text
  protocol::append_i16(bind_rest, 1);
  protocol::append_i32(bind_rest, 1);
  bind_rest += "1";
  protocol::append_i16(bind_rest, 0);  // result formats: text
  protocol::append_bind(in, "", "", bind_rest);
  in += execute() + sync();  // no Describe: the client gets no RowDescription
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(tags_of(to_s0), "PBDES") << "the shards describe the portal for the gather";
  EXPECT_EQ(parsed_in(to_s0), std::vector<std::string>{"SELECT count(*) FROM telemetry LIMIT (0 * "
                                                       "$1::int8 + 9223372036854775807)"})
      << "rows combined after the merge are not limited on the shards";

  const std::string part = parse_complete() + bind_complete() + int8_description();
  h.server(part + data_row({"4"}) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = h.server(part + data_row({"7"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12DCZ");
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"11"});
}

TEST_F(Scatter, AFlightThatRedefinesTheStatementItBindsIsRoutedByTheOldTextSafely) {
  // Found by session_fuzz: the request was routed by the text of the statement its Bind names,
  // and its own Parse replaced that statement (freeing the text) before the routing was done.
  start(parse("s", "SELECT count(*) FROM telemetry") + bind_to("", "s") + execute() + sync());
  const std::string part = parse_complete() + bind_complete() + int8_description();
  h.server(part + data_row({"4"}) + complete("SELECT 1") + ready(), T0, 0);
  h.server(part + data_row({"7"}) + complete("SELECT 1") + ready(), T0, 1);
  ASSERT_EQ(h.state(), SessionState::Idle);

  const auto [to_s0, to_s1] = start(parse("s", "BEGIN") + bind_to("", "s") + execute() + sync());
  // (PostgreSQL would refuse to redefine "s"; pgvalve replaces it, and this request runs what
  // it was routed by. Under ASan the old text's reuse was a use after free.)
  EXPECT_EQ(parsed_in(to_s0), std::vector<std::string>{"SELECT count(*) FROM telemetry"});
  EXPECT_EQ(to_s1, to_s0);
}

// A RowDescription of columns named and typed as given (text format).
std::string described_as(const std::vector<std::pair<std::string, std::int32_t>>& columns,
                         std::int16_t format = 0) {
  std::string out;
  const std::size_t at = protocol::begin_message(out, 'T');
  protocol::append_i16(out, static_cast<std::int16_t>(columns.size()));
  for (const auto& [name, type] : columns) {
    protocol::append_cstr(out, name);
    protocol::append_i32(out, 0);
    protocol::append_i16(out, 0);
    protocol::append_i32(out, type);
    protocol::append_i16(out, -1);
    protocol::append_i32(out, -1);
    protocol::append_i16(out, format);
  }
  protocol::end_message(out, at);
  return out;
}

// The (name, type) of each column of every RowDescription in `stream`.
std::vector<std::vector<std::pair<std::string, std::int32_t>>> descriptions_in(
    std::string_view stream) {
  std::vector<std::vector<std::pair<std::string, std::int32_t>>> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'T') continue;
    protocol::Cursor c(m.body);
    const auto n = c.i16();
    auto& columns = out.emplace_back();
    for (std::int16_t i = 0; i < *n; ++i) {
      const std::string name(*c.cstr());
      c.i32();
      c.i16();
      const std::int32_t type = *c.i32();
      c.i16();
      c.i32();
      c.i16();
      columns.emplace_back(name, type);
    }
  }
  return out;
}

TEST_F(Scatter, AnAverageRunsAsASumAndACountAndIsDescribedAsAvg) {
  // JDBC-like: Describe statement and portal, a result format per column.
  std::string in =
      parse("", "SELECT note, avg(value) FROM telemetry GROUP BY note") + describe('S', "");
  std::string bind_rest;
  protocol::append_i16(bind_rest, 0);  // no parameters
  protocol::append_i16(bind_rest, 0);
  protocol::append_i16(bind_rest, 2);  // two result formats, both text
  protocol::append_i16(bind_rest, 0);
  protocol::append_i16(bind_rest, 0);
  protocol::append_bind(in, "", "", bind_rest);
  in += describe('P', "") + execute() + sync();
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(tags_of(to_s0), "PDBDES");
  EXPECT_EQ(parsed_in(to_s0), std::vector<std::string>{
                                  "SELECT note, sum(value), count(value) FROM telemetry GROUP BY "
                                  "note"});
  EXPECT_EQ(result_formats_in(to_s0), 3) << "the count column gets a result format too";

  std::string parameters;
  protocol::append_i16(parameters, 0);
  const std::string described = described_as({{"note", 25}, {"sum", 1700}, {"count", 20}});
  const std::string head =
      parse_complete() + message('t', parameters) + described + bind_complete() + described;
  h.server(head + data_row({"ok", "10", "4"}) + data_row({"warn", "1", "1"}) +
               complete("SELECT 2") + ready(),
           T0, 0);
  const Step s =
      h.server(head + data_row({"ok", "5", "2"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "1tT2TDDCZ");
  const std::vector<std::pair<std::string, std::int32_t>> client = {{"note", 25}, {"avg", 1700}};
  EXPECT_EQ(descriptions_in(s.to_client),
            (std::vector<std::vector<std::pair<std::string, std::int32_t>>>{client, client}));
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : messages_of(s.to_client)) {
    if (m.tag != 'D') continue;
    protocol::Cursor c(m.body);
    const auto n = c.i16();
    auto& row = rows.emplace_back();
    for (std::int16_t i = 0; i < *n; ++i) {
      const auto len = c.i32();
      row.emplace_back(*c.bytes(static_cast<std::size_t>(*len)));
    }
  }
  EXPECT_EQ(rows.size(), 2u);
  EXPECT_EQ(
      std::count(rows.begin(), rows.end(), std::vector<std::string>{"ok", "2.5000000000000000"}),
      1);
  EXPECT_EQ(std::count(rows.begin(), rows.end(),
                       std::vector<std::string>{"warn", "1.00000000000000000000"}),
            1);
}

// psycopg's executemany and JDBC's executeBatch send rows in one flight, which PostgreSQL runs as
// one implicit transaction: rows for two shards cannot be, and the refusal says why.
TEST_F(Scatter, AStandardDeviationRunsAsASumACountAndAVarianceAlsoInBinary) {
  std::string in = parse("", "SELECT stddev(value) FROM telemetry");
  std::string bind_rest;
  protocol::append_i16(bind_rest, 0);  // no parameters
  protocol::append_i16(bind_rest, 0);
  protocol::append_i16(bind_rest, 1);  // one result format, for every column: binary
  protocol::append_i16(bind_rest, 1);
  protocol::append_bind(in, "", "", bind_rest);
  in += describe('P', "") + execute() + sync();
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(
      parsed_in(to_s0),
      std::vector<std::string>{"SELECT sum(value), count(value), var_pop(value) FROM telemetry"});
  EXPECT_EQ(result_formats_in(to_s0), 1)
      << "one format still covers every column, the added ones too";
  auto binary_row = [](double sum, std::int64_t count, double var_pop) {
    std::string out;
    const std::size_t at = protocol::begin_message(out, 'D');
    protocol::append_i16(out, 3);
    for (const std::string& v : {protocol::binary_float_of(sum, 8),
                                 protocol::big_endian(static_cast<std::uint64_t>(count), 8),
                                 protocol::binary_float_of(var_pop, 8)}) {
      protocol::append_i32(out, static_cast<std::int32_t>(v.size()));
      out += v;
    }
    protocol::end_message(out, at);
    return out;
  };
  const std::string described = described_as({{"sum", 701}, {"count", 20}, {"var_pop", 701}}, 1);
  const std::string head = parse_complete() + bind_complete() + described;
  // {1, 2, 3} and {10, 20}: stddev 7.981227975693966.
  h.server(head + binary_row(6, 3, 2.0 / 3) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = h.server(head + binary_row(30, 2, 25) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12TDCZ");
  EXPECT_EQ(descriptions_in(s.to_client),
            (std::vector<std::vector<std::pair<std::string, std::int32_t>>>{{{"stddev", 701}}}));
  for (const auto& m : messages_of(s.to_client)) {
    if (m.tag != 'D') continue;
    protocol::Cursor c(m.body);
    EXPECT_EQ(c.i16(), 1);
    EXPECT_EQ(c.i32(), 8);
    EXPECT_NEAR(protocol::binary_float(*c.bytes(8)), 7.981227975693966, 1e-12);
  }
}

// Rows for two shards in one flight run as one transaction over both (ShardBatch tests), but
// only when what ran before the second shard's Bind behaves the same in a transaction block:
// after a statement pgvalve does not read as plain (here an advisory lock), they are refused.
TEST_F(Scatter, RowsForTwoShardsAfterAStatementNotReadAsPlainAreRefusedAsOneTransaction) {
  auto bind_value = [](std::string value) { return bind_values("", {std::move(value)}); };
  const std::string in =
      parse("", "SELECT pg_advisory_xact_lock(7) FROM telemetry WHERE device_id = $1") +
      bind_value("2") + execute() +
      parse("", "INSERT INTO telemetry (device_id, v) VALUES ($1, 'x')") + bind_value("1") +
      execute() + sync();
  Step s = h.client(in);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 0) << "routed by the flight's first row";
  h.linked(*s0);
  s = h.client(in);  // the request that waited for its server
  EXPECT_NE(s.to_server.find("sent together up to one Sync run as one transaction"),
            std::string::npos)
      << "the server raises pgvalve's refusal, so the whole flight rolls back";
}

TEST_F(Scatter, AnErrorOfAnyShardIsTheClientsOneError) {
  std::string in = parse("", "SELECT count(*) FROM telemetry") + bind_to("", "") +
                   describe('P', "") + execute() + sync();
  start(in);
  h.server(
      parse_complete() + bind_complete() + int8_description() + error_message("22012") + ready(),
      T0, 0);
  const Step s = h.server(parse_complete() + bind_complete() + int8_description() +
                              data_row({"1"}) + complete("SELECT 1") + ready(),
                          T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12TEZ");
  EXPECT_EQ(sqlstates_in(s.to_client), "22012");
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(Scatter, AShardWithoutAServerFailsTheReadAfterTheOthersAnswer) {
  const std::string q = query("SELECT count(*) FROM telemetry");
  h.client(q);
  Step s = h.linked(*s0);
  EXPECT_TRUE(s.check_out);
  s = h.checkout_failed("53300");
  EXPECT_EQ(s.to_client, "") << "shard 0 still runs the read";
  EXPECT_EQ(h.state(), SessionState::Scattering);
  s = h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "53300");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, ALostShardIsAnErrorAndTheOthersGoBackToThePool) {
  start(query("SELECT count(*) FROM telemetry"));
  Step s = h.lost(T0, 1);
  EXPECT_EQ(s.to_client, "");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  EXPECT_TRUE(s.prepared_parts.empty()) << "a read prepares nothing";
  s = h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// ---- A part cut on a replica ------------------------------------------------------------------

// Shards with replicas that take reads: each part of a read is routed to a replica of its shard.
class ReplicaScatter : public Scatter {
 protected:
  SessionHarness r{policy, {}, true};
  std::unique_ptr<ServerState> other = SessionHarness::fresh_server();
  const std::string count_read = query("SELECT count(*) FROM telemetry");

  void start_on_replicas() {
    Step s = r.client(count_read);
    ASSERT_TRUE(s.check_out);
    EXPECT_EQ(s.route.kind, routing::Route::Kind::Replica);
    r.linked(*s0);
    s = r.linked(*s1);
    EXPECT_EQ(r.state(), SessionState::Scattering);
  }
  static std::string answer(std::string_view count) {
    return int8_description() + data_row({std::string(count)}) + complete("SELECT 1") + ready();
  }
};

TEST_F(ReplicaScatter, APartCutBeforeItsShardAnsweredRunsOnceMoreOnThatShard) {
  start_on_replicas();
  Step s = r.lost(T0, 1);
  EXPECT_EQ(s.to_client, "") << "no error: the part runs again";
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Replica);
  EXPECT_EQ(s.route.shard, 1);
  EXPECT_EQ(r.state(), SessionState::WaitingForServer);
  s = r.linked(*other);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"SELECT count(*) FROM telemetry"});
  EXPECT_EQ(r.state(), SessionState::Scattering);
  s = r.server(answer("2"), T0, 0);
  EXPECT_EQ(s.to_client, "");
  s = r.server(answer("3"), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"5"});
  EXPECT_EQ(r.state(), SessionState::Idle);
}

TEST_F(ReplicaScatter, APartRunsAgainOnlyOnce) {
  start_on_replicas();
  Step s = r.lost(T0, 1);
  ASSERT_TRUE(s.check_out);
  r.linked(*other);
  s = r.lost(T0, 1);
  EXPECT_FALSE(s.check_out);
  s = r.server(answer("2"), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(r.state(), SessionState::Idle);
}

TEST_F(ReplicaScatter, APartWhoseShardAnsweredAlreadyDoesNotRunAgain) {
  start_on_replicas();
  r.server(int8_description(), T0, 1);  // its rows could be in the merge already
  Step s = r.lost(T0, 1);
  EXPECT_FALSE(s.check_out);
  s = r.server(answer("2"), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

TEST_F(ReplicaScatter, APartCutWhileAnotherShardIsCheckedOutRunsAfterIt) {
  Step s = r.client(count_read);
  r.linked(*s0);  // shard 1's checkout is under way
  s = r.lost(T0, 0);
  EXPECT_FALSE(s.check_out) << "one checkout at a time";
  EXPECT_EQ(r.state(), SessionState::WaitingForServer);
  s = r.linked(*s1);
  EXPECT_EQ(s.server_link, 1);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 0);
  s = r.linked(*other);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(r.state(), SessionState::Scattering);
  r.server(answer("2"), T0, 1);
  s = r.server(answer("3"), T0, 0);
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"5"});
}

TEST_F(ReplicaScatter, APartWithNoServerLeftAnswersTheCheckoutsError) {
  start_on_replicas();
  r.lost(T0, 1);
  Step s = r.checkout_failed("53300");
  s = r.server(answer("2"), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "53300");
  EXPECT_EQ(r.state(), SessionState::Idle);
}

TEST_F(Scatter, ASilentShardIsCancelledAfterTheQueryTimeout) {
  const auto session = timed("SELECT count(*) FROM telemetry");
  SessionHarness& t = *session;
  t.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = t.timer(T0 + 2s);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(t.state(), SessionState::Idle);
}

// ---- Streamed reads ---------------------------------------------------------------------------

// The (device_id int8, payload text) columns of a read of telemetry.
std::string telemetry_description() {
  return described_as({{"device_id", 20}, {"payload", 25}});
}

TEST_F(Scatter, ConcatenatedRowsReachTheClientAsTheShardsSendThem) {
  start(query("SELECT device_id, payload FROM telemetry"));
  Step s = h.server(telemetry_description() + data_row({"1", "a"}), T0, 0);
  EXPECT_EQ(s.to_client, "") << "until every shard described the same columns";
  s = h.server(telemetry_description() + data_row({"2", "b"}), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "TDD");
  EXPECT_EQ(values_in(s.to_client), (std::vector<std::string>{"1", "2"}));
  s = h.server(data_row({"3", "c"}) + complete("SELECT 2") + ready(), T0, 0);
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"3"});
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << "shard 0's server goes back at once";
  EXPECT_EQ(h.state(), SessionState::Scattering);
  s = h.server(complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 3"});
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, AStreamedExtendedRequestGetsItsAnswersBeforeTheRows) {
  const std::string sql = "SELECT device_id, payload FROM telemetry";
  start(parse("", sql) + bind_to("", "") + describe('P', "") + execute() + sync());
  const std::string head = parse_complete() + bind_complete() + telemetry_description();
  Step s = h.server(head + data_row({"1", "a"}), T0, 0);
  EXPECT_EQ(s.to_client, "");
  s = h.server(head, T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12TD");
  s = h.server(complete("SELECT 1") + ready(), T0, 0);
  EXPECT_EQ(s.to_client, "");
  s = h.server(data_row({"2", "b"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "DCZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 2"});
}

TEST_F(Scatter, AMergedReadDoesNotReadAShardWhoseRowsWaitForTheOthers) {
  const auto session = timed("SELECT device_id, payload FROM telemetry ORDER BY device_id");
  SessionHarness& t = *session;
  t.server(telemetry_description(), T0, 1);
  // Shard 0 sends rows while shard 1 sends none: they wait for shard 1's first row.
  const std::string payload(1000, 'x');
  std::string rows;
  for (int i = 0; i < 2000; ++i)
    rows += data_row({std::to_string(2 * i), payload});
  Step s = t.server(telemetry_description() + rows, T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "T") << "every shard described its rows; none can go yet";
  EXPECT_FALSE(t.session().wants_server_input(0)) << "shard 0's rows wait: it is not read";
  EXPECT_TRUE(t.session().wants_server_input(1));
  s = t.server(data_row({"1", "y"}), T0 + 900ms, 1);
  EXPECT_EQ(values_in(s.to_client), (std::vector<std::string>{"0", "1"}));
  EXPECT_FALSE(t.session().wants_server_input(0)) << "still more than its share waits";
  // Shard 0's silence meanwhile is the merge's doing: only shard 1 owes an answer in time.
  EXPECT_EQ(t.session().next_deadline(), T0 + 1900ms);
  s = t.timer(T0 + 1500ms);
  EXPECT_TRUE(s.ops.empty());
  // Shard 1's end lets the merge take every waiting row: shard 0 is read again.
  s = t.server(complete("SELECT 1") + ready(), T0 + 1800ms, 1);
  EXPECT_EQ(values_in(s.to_client).size(), 1999u);
  ASSERT_TRUE(s.has_op(LinkOp::Kind::Read));
  EXPECT_TRUE(t.session().wants_server_input(0));
  EXPECT_EQ(t.session().next_deadline(), T0 + 2800ms) << "its silence counts from now";
  s = t.server(complete("SELECT 2000") + ready(), T0 + 1800ms, 0);
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 2001"});
  EXPECT_EQ(t.state(), SessionState::Idle);
}

TEST_F(Scatter, AShardLostWhileTheMergeWaitsForItLetsTheOthersBeReadToTheirEnd) {
  start(query("SELECT device_id, payload FROM telemetry ORDER BY device_id"));
  h.server(telemetry_description(), T0, 1);
  std::string rows;
  for (int i = 0; i < 2000; ++i)
    rows += data_row({std::to_string(i), std::string(1000, 'x')});
  h.server(telemetry_description() + rows, T0, 0);
  ASSERT_FALSE(h.session().wants_server_input(0));
  Step s = h.lost(T0, 1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Read)) << "the rest of shard 0's answer is read and dropped";
  EXPECT_TRUE(h.session().wants_server_input(0));
  s = h.server(data_row({"5000", "z"}) + complete("SELECT 2001") + ready(), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, AShardLostAfterRowsWentOutEndsTheAnswerWithAnError) {
  start(query("SELECT device_id, payload FROM telemetry"));
  h.server(telemetry_description() + data_row({"1", "a"}), T0, 0);
  Step s = h.server(telemetry_description(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "TD");
  s = h.lost(T0, 1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  s = h.server(data_row({"2", "b"}) + complete("SELECT 2") + ready(), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "EZ") << "no more rows, and no command tag";
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, TheClientsNextRequestWaitsForTheGatheredAnswer) {
  const std::string first = query("SELECT count(*) FROM telemetry");
  const std::string next = query("SELECT 1");
  start(first + next);
  EXPECT_EQ(consumed, first.size());
  EXPECT_FALSE(h.session().wants_client_input());
}

TEST_F(Scatter, WhatCannotRunAcrossShardsIsRefusedWithoutAServer) {
  for (std::string_view sql :
       {"SELECT avg(DISTINCT value) FROM telemetry", "DELETE FROM telemetry WHERE value < 0"}) {
    const Step s = h.client(query(sql));
    EXPECT_FALSE(s.check_out) << sql;
    EXPECT_EQ(sqlstates_in(s.to_client), "0A000") << sql;
    EXPECT_EQ(h.state(), SessionState::Idle);
  }
}

// A read's Execute row limit (asyncpg's fetchrow() sends 1): each shard runs the whole read;
// the client gets the first rows, then PortalSuspended as from a server with more rows.
TEST_F(Scatter, AReadsRowLimitGivesTheFirstRowsThenSuspends) {
  const auto [to_s0, to_s1] = start(parse("", "SELECT count(*) FROM telemetry GROUP BY device_id") +
                                    bind_to("", "") + execute("", 1) + sync());
  EXPECT_NE(to_s0.find(execute("", 0)), std::string::npos) << "each shard runs it whole";
  const std::string part = parse_complete() + bind_complete() + int8_description();
  h.server(part + data_row({"4"}) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = h.server(part + data_row({"7"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12DsZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// PgJDBC with a fetch size (autocommit off) binds a named portal and executes it a few rows at a
// time, one request each; asyncpg's cursors too. Inside a transaction whose BEGIN pgvalve holds
// back, such a portal over several shards is kept: each shard runs the whole read, and its rows
// wait, with its server, for the client's next Execute.
class KeptPortal : public Scatter {
 protected:
  static constexpr std::string_view kSql = "SELECT device_id, payload FROM telemetry";

  // BEGIN, then the portal's first request; both shards linked and described, `rows` each.
  Step open_portal(std::int32_t fetch, int rows = 3) {
    h.client(query("BEGIN"));
    start(parse("", kSql) + bind_to("p1", "") + describe('P', "p1") + execute("p1", fetch) +
          sync());
    const std::string head = parse_complete() + bind_complete() + telemetry_description();
    std::string rows0;
    std::string rows1;
    for (int i = 0; i < rows; ++i) {
      rows0 += data_row({std::to_string(2 * i), "a"});
      rows1 += data_row({std::to_string(2 * i + 1), "b"});
    }
    h.server(head + rows0, T0, 0);
    return h.server(head + rows1, T0, 1);
  }
};

TEST_F(KeptPortal, EachExecuteGetsItsRowsWhileTheShardsWait) {
  Step s = open_portal(2);
  EXPECT_EQ(tags_of(s.to_client), "12TDDsZ");
  EXPECT_EQ(statuses_in(s.to_client), "T") << "the client is still in its transaction";
  EXPECT_EQ(h.state(), SessionState::PortalSuspended);
  EXPECT_TRUE(h.session().wants_client_input());
  EXPECT_EQ(h.session().link_count(), 2u) << "the shards' servers are the portal's";

  s = h.client(execute("p1", 2) + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "DDsZ");
  EXPECT_EQ(values_in(s.to_client).size(), 2u);
  // The shards finish meanwhile: their servers go back, the rows wait.
  s = h.server(complete("SELECT 3") + ready(), T0, 0);
  EXPECT_EQ(s.to_client, "");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  s = h.server(complete("SELECT 3") + ready(), T0, 1);
  EXPECT_EQ(s.to_client, "");
  EXPECT_EQ(h.session().link_count(), 0u);
  EXPECT_EQ(h.state(), SessionState::PortalSuspended);

  s = h.client(execute("p1", 5) + sync());
  EXPECT_EQ(tags_of(s.to_client), "DDCZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 2"})
      << "the last Execute's own rows, as a server counts them";
  EXPECT_EQ(statuses_in(s.to_client), "T");
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(query("COMMIT"));
  EXPECT_FALSE(s.check_out) << "the transaction ran nothing on a server";
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(KeptPortal, AnExecuteThatNeedsMoreRowsReadsTheShardsAgain) {
  open_portal(2, 1);  // each shard sent one row: the first Execute got both
  Step s = h.client(execute("p1", 3) + sync());
  EXPECT_EQ(s.to_client, "") << "no rows wait yet";
  EXPECT_EQ(h.state(), SessionState::Scattering);
  s = h.server(data_row({"7", "c"}) + data_row({"9", "d"}), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "DD");
  s = h.server(data_row({"11", "e"}), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "DsZ") << "its third row ends it";
  EXPECT_EQ(h.state(), SessionState::PortalSuspended);
}

// PostgreSQL reads a row limit below zero as none: all the rows.
TEST_F(KeptPortal, ANegativeRowLimitAsksForEveryRow) {
  Step s = open_portal(-1, 1);
  EXPECT_EQ(tags_of(s.to_client), "12TDD") << "the rows go as they come, none kept";
  s = h.server(complete("SELECT 1") + ready(), T0, 0);
  EXPECT_EQ(s.to_client, "");
  s = h.server(complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 2"});
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(KeptPortal, ANegativeRowLimitOfALaterExecuteAsksForTheRest) {
  open_portal(1, 2);
  h.server(complete("SELECT 2") + ready(), T0, 0);
  h.server(complete("SELECT 2") + ready(), T0, 1);
  const Step s = h.client(execute("p1", -5) + sync());
  EXPECT_EQ(tags_of(s.to_client), "DDDCZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 3"});
}

// As a server's portal: an Execute that got exactly its rows is suspended; the next gets none.
TEST_F(KeptPortal, AnExecuteAfterTheLastRowsGetsNoneAndTheTag) {
  open_portal(2, 1);
  h.server(complete("SELECT 1") + ready(), T0, 0);
  h.server(complete("SELECT 1") + ready(), T0, 1);
  const Step s = h.client(execute("p1", 2) + sync());
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"SELECT 0"});
}

TEST_F(KeptPortal, ItsDescribeIsAnsweredAgain) {
  open_portal(2);
  const Step s = h.client(describe('P', "p1") + execute("p1", 1) + sync());
  EXPECT_EQ(tags_of(s.to_client), "TDsZ");
}

TEST_F(KeptPortal, ACloseEndsItAndCancelsTheShards) {
  open_portal(2);
  const Step s = h.client(close_message('P', "p1") + sync());
  EXPECT_EQ(tags_of(s.to_client), "3Z");
  EXPECT_EQ(statuses_in(s.to_client), "T");
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose) << "not read to its end";
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CancelAndClose);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// PostgreSQL keeps the portal while the transaction runs other statements; pgvalve's holds the
// shards' servers, so another request closes it, and a later Execute of it says why.
TEST_F(KeptPortal, AnotherRequestClosesItAndALaterExecuteIsRefused) {
  open_portal(2);
  const std::string other = query("SELECT 1");
  Step s = h.client(other);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.resume_client) << "planned again as any request";
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(other);
  EXPECT_TRUE(s.check_out);
  h.linked(*s0);
  h.server(complete("BEGIN") + ready('T'), T0, 0);  // the held-back BEGIN, then the query
  h.server(row_result("1", "SELECT 1", 'T'), T0, 0);
  // Inside the transaction that statement began, the server raises the error, as on one.
  s = h.client(execute("p1", 2) + sync());
  EXPECT_NE(s.to_server.find("ERRCODE = '34000'"), std::string::npos) << s.to_server;
  EXPECT_EQ(s.to_server.find(execute("p1", 2)), std::string::npos);
  h.server(parse_complete() + bind_complete() + error_message("34000") + ready('E'), T0, 0);
  h.client(query("ROLLBACK"));
  h.server(complete("ROLLBACK") + ready(), T0, 0);

  h.client(query("BEGIN"));
  s = h.client(execute("p1", 2) + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "34000");
  EXPECT_NE(s.to_client.find("pgvalve: portal \"p1\" read several shards"), std::string::npos);
}

// asyncpg's Cursor: the portal is bound in a request of its own, then fetched from.
TEST_F(KeptPortal, APortalBoundAloneIsKeptForItsExecutes) {
  h.client(query("BEGIN"));
  const std::string sql = "SELECT device_id, payload FROM telemetry ORDER BY device_id";
  h.client(parse("c1", sql) + sync());
  start(bind_to("p1", "c1") + sync());
  const std::string head = parse_complete() + bind_complete() + telemetry_description();
  h.server(head + data_row({"0", "a"}) + data_row({"2", "a"}), T0, 0);
  Step s = h.server(head + data_row({"1", "b"}), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "2Z") << "no rows before the first Execute";
  EXPECT_EQ(h.state(), SessionState::PortalSuspended);
  s = h.client(execute("p1", 2) + sync());
  EXPECT_EQ(values_in(s.to_client), (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(tags_of(s.to_client), "DDsZ");
}

// Where the portal cannot be kept (the transaction ran statements, or takes one snapshot for
// all), a Bind alone would leave it on one shard: refused.
TEST_F(KeptPortal, APortalBoundAloneThatCannotBeKeptIsRefused) {
  h.client(query("BEGIN ISOLATION LEVEL REPEATABLE READ"));
  h.client(parse("c1", "SELECT device_id FROM telemetry") + sync());
  const Step s = h.client(bind_to("p1", "c1") + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
}

TEST_F(KeptPortal, AClientGoneCancelsTheShards) {
  open_portal(2);
  const Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose);
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CancelAndClose);
}

TEST_F(KeptPortal, AClientIdleWithItPastTheIdleTransactionTimeoutIsClosed) {
  SessionOptions options;
  options.idle_transaction_timeout = 1s;
  SessionHarness t(policy, options);
  t.client(query("BEGIN"));
  t.client(parse("", kSql) + bind_to("p1", "") + execute("p1", 1) + sync());
  const std::string head = parse_complete() + bind_complete();
  t.linked(*s0);
  t.linked(*s1);
  t.server(head + telemetry_description() + data_row({"0", "a"}), T0, 0);
  t.server(head + telemetry_description() + data_row({"1", "a"}), T0, 1);
  ASSERT_EQ(t.state(), SessionState::PortalSuspended);
  EXPECT_EQ(t.session().next_deadline(), T0 + 1s);
  // An Execute answered from the rows that wait: idle again from then.
  Step s = t.client(execute("p1", 1) + sync(), T0 + 900ms);
  EXPECT_EQ(tags_of(s.to_client), "DsZ");
  EXPECT_EQ(t.session().next_deadline(), T0 + 1900ms);
  s = t.timer(T0 + 1900ms);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P03");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
}

// Outside a transaction the portal ends with the request's Sync, as on one server.
TEST_F(KeptPortal, OutsideATransactionTheRestIsDropped) {
  start(parse("", kSql) + bind_to("p1", "") + execute("p1", 1) + sync());
  const std::string head = parse_complete() + bind_complete() + telemetry_description();
  h.server(head + data_row({"0", "a"}) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = h.server(head + data_row({"1", "a"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12DsZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// psycopg and PgJDBC open a transaction before a connection's first statement unless it is in
// autocommit: a read over several shards as that transaction's first statements runs outside
// it (at READ COMMITTED it sees what it would inside), and the client stays in its transaction.
TEST_F(Scatter, AReadBeforeATransactionRanAnythingRunsOutsideIt) {
  Step s = h.client(query("BEGIN"));
  EXPECT_EQ(statuses_in(s.to_client), "T");
  const auto [to_s0, to_s1] = start(query("SELECT count(*) FROM telemetry"));
  EXPECT_EQ(queries_in(to_s0), std::vector<std::string>{"SELECT count(*) FROM telemetry"})
      << "no BEGIN: the read runs outside the transaction";
  h.server(int8_description() + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  s = h.server(int8_description() + data_row({"3"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"5"});
  EXPECT_EQ(statuses_in(s.to_client), "T") << "the client is still in its transaction";
  // Its COMMIT is answered by pgvalve: nothing ran inside the transaction.
  s = h.client(query("COMMIT"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

// Statement mode refuses transaction blocks on a sharded database too: BEGIN is not held back.
TEST_F(Scatter, StatementModeRefusesBeginOnShards) {
  SessionOptions o;
  o.mode = config::PoolMode::Statement;
  SessionHarness sh(policy, o);
  const auto q = queries_in(sh.send(query("BEGIN"), *s0));
  EXPECT_TRUE(sh.checked_out) << "refused through a server, as on one shard";
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos) << q[0];
}

// libpq's PQprepare (psycopg, pgbench -M prepared) sends Parse and Sync alone: answered by
// pgvalve while the BEGIN is held back, its ReadyForQuery still says the client is in its
// transaction (libpq's PQtransactionStatus, and the drivers that read it, follow it).
TEST_F(Scatter, AStatementPreparedInADeferredTransactionLeavesTheClientInIt) {
  h.client(query("BEGIN"));
  const Step s = h.client(parse("s1", "SELECT count(*) FROM telemetry") + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "1Z");
  EXPECT_EQ(statuses_in(s.to_client), "T");
}

TEST_F(Scatter, AFailedReadBeforeATransactionRanAnythingFailsTheBlock) {
  h.client(query("BEGIN"));
  start(query("SELECT count(*) FROM telemetry"));
  h.server(error_result("42P01"), T0, 0);
  Step s = h.server(int8_description() + data_row({"3"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "42P01");
  EXPECT_EQ(statuses_in(s.to_client), "E") << "as after an error in the block on PostgreSQL";
  s = h.client(query("INSERT INTO telemetry (device_id, v) VALUES (1, 1)"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P02");
  s = h.client(query("COMMIT"));
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST_F(Scatter, ADescribeAloneGoesToOneShard) {
  const Step s = h.client(parse("", "SELECT * FROM telemetry") + describe('S', "") + sync());
  EXPECT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
  EXPECT_TRUE(s.route.any_shard);
}

}  // namespace
}  // namespace pgvalve::session::testing

namespace pgvalve::session::testing {
namespace {

std::string write_part(std::string_view tag, std::string_view prepared = "PREPARE TRANSACTION") {
  return complete("BEGIN") + ready('T') + complete(tag) + ready('T') + complete(prepared) +
         ready('I');
}

// The first shard's part of a write, which decides it: BEGIN, its xid (two_phase.h), then as
// write_part().
std::string decider_part(std::string_view tag, std::string_view prepared = "PREPARE TRANSACTION") {
  return complete("BEGIN") + ready('T') + xid_result() + complete(tag) + ready('T') +
         complete(prepared) + ready('I');
}

// The gid (quoted) of the PREPARE TRANSACTION a step sends to its links.
std::string prepared_gid(const Step& s) {
  for (const auto& [link, bytes] : s.to_links) {
    for (const std::string& q : queries_in(bytes)) {
      if (q.starts_with("PREPARE TRANSACTION ")) return q.substr(q.find('\''));
    }
  }
  return {};
}

TEST_F(Scatter, AWriteToSeveralShardsCommitsOnlyOnceEveryShardPreparedIt) {
  const auto [to_s0, to_s1] = start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  EXPECT_EQ(queries_in(to_s0),
            (std::vector<std::string>{"BEGIN", "SELECT pg_catalog.pg_current_xact_id()",
                                      " DELETE FROM telemetry"}))
      << "the first shard's part decides: it names the commit with its xid; the hint is "
         "pgvalve's, not the shards'";
  EXPECT_EQ(queries_in(to_s1), (std::vector<std::string>{"BEGIN", " DELETE FROM telemetry"}));

  Step s = h.server(decider_part("DELETE 2"), T0, 0);
  // Every part is asked to prepare under the name the decider's xid makes.
  ASSERT_EQ(s.to_links.size(), 2u);
  const std::string gid = prepared_gid(s);
  EXPECT_TRUE(gid.starts_with("'pgvalve:") && gid.ends_with(":0:4242'")) << gid;
  EXPECT_EQ(queries_in(s.to_links.at(0)), queries_in(s.to_links.at(1)));
  EXPECT_EQ(s.to_server, "") << "nothing commits before every shard prepared";
  EXPECT_TRUE(s.ops.empty());
  s = h.server(write_part("DELETE 3"), T0, 1);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid});
  EXPECT_EQ(s.to_client, "");
  // Shard order: the first shard's COMMIT PREPARED decides, then the next.
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid});
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  const auto msgs = messages_of(s.to_client);
  EXPECT_EQ(protocol::read_command_complete(frame_of(msgs[0])).value_or(""), "DELETE 5");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, AFirstCommitThatFailsRollsTheWriteBackOnEveryShard) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  const std::string gid = prepared_gid(h.server(decider_part("DELETE 2"), T0, 0));
  h.server(write_part("DELETE 3"), T0, 1);
  // The first COMMIT PREPARED fails (the part is gone, or the server could not commit it):
  // nothing has committed anywhere, so nothing may.
  Step s = h.server(error_message("58030", "ERROR", "could not fsync") + ready(), T0, 0);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"ROLLBACK PREPARED " + gid});
  ASSERT_EQ(s.prepared_parts.size(), 1u) << "the failed part is rolled back once found prepared";
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_FALSE(s.prepared_parts[0].commit);
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "40000");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, ALaterCommitThatFailsIsFinishedByPgvalve) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 2"), T0, 0);
  h.server(write_part("DELETE 3"), T0, 1);
  h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  const Step s = h.server(error_message("58030") + ready(), T0, 1);
  ASSERT_EQ(s.prepared_parts.size(), 1u) << "shard 0 committed: so does shard 1, later";
  EXPECT_EQ(s.prepared_parts[0].shard, 1);
  EXPECT_TRUE(s.prepared_parts[0].commit);
  EXPECT_EQ(sqlstates_in(s.to_client), "XX000");
}

TEST_F(Scatter, AWriteThatFailsOnOneShardIsRolledBackOnTheOthers) {
  start(query("/* pgvalve: all_shards */ UPDATE telemetry SET value = 0"));
  h.server(decider_part("UPDATE 4"), T0, 0);
  Step s = h.server(complete("BEGIN") + ready('T') + error_message("23514") + ready('E') +
                        complete("ROLLBACK") + ready('I'),
                    T0, 1);
  // Shard 1's transaction is over; shard 0's prepared part is rolled back.
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(s.server_link, 0);
  ASSERT_EQ(queries_in(s.to_server).size(), 1u);
  EXPECT_TRUE(queries_in(s.to_server)[0].starts_with("ROLLBACK PREPARED 'pgvalve:"));
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "23514");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// A client that leaves during a write's two-phase commit leaves no part undecided where its
// server answered: before every part prepared, the prepared ones are rolled back; once the commit
// began, the rest are committed (found by the session fuzz target).
TEST_F(Scatter, AClientLeavingBeforeTheCommitDecisionRollsBackThePreparedParts) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 1"), T0, 0);
  const Step s = h.gone();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_TRUE(s.ops[0].sql1.starts_with("ROLLBACK PREPARED 'pgvalve:")) << s.ops[0].sql1;
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CancelAndClose) << "shard 1 is still running its part";
}

TEST_F(Scatter, AClientLeavingDuringTheCommitCommitsTheRemainingParts) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 1"), T0, 0);
  Step s = h.server(write_part("DELETE 2"), T0, 1);
  const std::string commit = queries_in(s.to_server).at(0);
  ASSERT_TRUE(commit.starts_with("COMMIT PREPARED"));
  s = h.gone();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::CancelAndClose) << "its COMMIT PREPARED is in flight";
  EXPECT_EQ(s.ops[1].kind, LinkOp::Kind::CleanAndRelease);
  EXPECT_EQ(s.ops[1].sql1, commit);
}

// A write over both shards whose parts both prepared: the step of the second one's answer.
Step prepared_on_both(SessionHarness& t, ServerState& s0, ServerState& s1) {
  t.client(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  t.linked(s0);
  t.linked(s1);
  t.server(decider_part("DELETE 1"), T0, 0);
  return t.server(write_part("DELETE 2"), T0, 1);
}

// read_your_writes = lsn: after a write over several shards, the client's reads of each shard go
// only to a replica that has replayed that shard's commit.
TEST_F(Scatter, ACommittedWriteMovesTheReadYourWritesMarkOfEachShard) {
  SessionHarness t(policy, {}, true);
  Step s = prepared_on_both(t, *s0, *s1);
  const auto sent = queries_in(s.to_server);
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_TRUE(sent[0].starts_with("COMMIT PREPARED"));
  EXPECT_EQ(sent[1], "SELECT pg_catalog.pg_current_wal_insert_lsn()")
      << "after the commit, not before";
  s = t.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  EXPECT_TRUE(s.ops.empty()) << "the server stays linked until its WAL position came";
  s = t.server(row_result("0/3000060", "SELECT 1"), T0, 0);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(queries_in(s.to_server).at(0), sent[0]) << "then the next shard commits";
  t.server(complete("COMMIT PREPARED") + ready() + row_result("0/5000000", "SELECT 1"), T0, 1);
  EXPECT_EQ(t.state(), SessionState::Idle);
  EXPECT_EQ(t.session().read_your_writes_lsn(0), 0x3000060u);
  EXPECT_EQ(t.session().read_your_writes_lsn(1), 0x5000000u);
}

// The shard's primary dies after COMMIT PREPARED, before its WAL position came: the write may
// have committed there at a position never learnt, so no replica of that shard takes the
// client's reads until its next write there is marked.
TEST_F(Scatter, AShardWhoseWalPositionWasCutKeepsTheClientsReadsOffItsReplicas) {
  SessionHarness t(policy, {}, true);
  prepared_on_both(t, *s0, *s1);
  t.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  t.lost(T0, 0);
  const std::uint64_t unknown = std::numeric_limits<std::uint64_t>::max();
  EXPECT_EQ(t.session().read_your_writes_lsn(0), unknown);
}

TEST_F(Scatter, WithoutPreparedTransactionsAWriteToSeveralShardsIsRefusedAndRolledBack) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 1"), T0, 0);
  Step s = h.server(complete("BEGIN") + ready('T') + complete("DELETE 1") + ready('T') +
                        error_message("55000") + ready('I'),
                    T0, 1);
  EXPECT_TRUE(queries_in(s.to_server)[0].starts_with("ROLLBACK PREPARED"));
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 0);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "55000");
  EXPECT_NE(errors[0].message.find("max_prepared_transactions"), std::string::npos);
}

TEST_F(Scatter, AShardLostBeforeItsPartAnsweredIsRolledBackThereOnceItIsBack) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  // Lost with BEGIN, the DELETE and PREPARE TRANSACTION sent: the PREPARE may have run.
  h.server(complete("BEGIN") + ready('T') + xid_result(), T0, 0);
  const Step s = h.lost(T0, 1);
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 1);
  EXPECT_FALSE(s.prepared_parts[0].commit);
}

TEST_F(Scatter, AShardLostBeforeItWasAskedToPrepareLeavesNothingPrepared) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  // The decider has not named the commit yet: no PREPARE TRANSACTION went to shard 1.
  Step s = h.lost(T0, 1);
  EXPECT_TRUE(s.prepared_parts.empty());
  // The decider's xid comes: it rolls back instead of preparing.
  s = h.server(complete("BEGIN") + ready('T') + xid_result(), T0, 0);
  EXPECT_EQ(queries_in(s.to_links.count(0) ? s.to_links.at(0) : ""),
            std::vector<std::string>{"ROLLBACK"});
  s = h.server(complete("DELETE 1") + ready('T') + complete("ROLLBACK") + ready('I'), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, ADeciderLostBeforeItsXidRollsTheOthersBack) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(complete("BEGIN") + ready('T') + complete("DELETE 2") + ready('T'), T0, 1);
  Step s = h.lost(T0, 0);
  EXPECT_TRUE(s.prepared_parts.empty()) << "no part was asked to prepare";
  EXPECT_EQ(queries_in(s.to_links.count(1) ? s.to_links.at(1) : ""),
            std::vector<std::string>{"ROLLBACK"})
      << "shard 1's part, waiting for the name, rolls back";
  s = h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, ADeciderLostDuringItsCommitLeavesEveryPartToFollowIt) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  const std::string gid = prepared_gid(h.server(decider_part("DELETE 1"), T0, 0));
  Step s = h.server(write_part("DELETE 2"), T0, 1);
  ASSERT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid});
  // Lost before it answered: whether the write committed is shard 0's to say.
  s = h.lost(T0, 0);
  ASSERT_EQ(s.prepared_parts.size(), 2u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_TRUE(s.prepared_parts[0].commit) << "the decision was to commit";
  EXPECT_FALSE(s.prepared_parts[0].follow);
  EXPECT_EQ(s.prepared_parts[1].shard, 1);
  EXPECT_TRUE(s.prepared_parts[1].follow) << "not committed before the decider is";
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << "shard 1's server goes back, its part prepared";
  EXPECT_EQ(sqlstates_in(s.to_client), "40003");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Scatter, AShardLostWhilePreparedMakesTheWriteRollBack) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 1"), T0, 0);
  Step s = h.lost(T0, 0);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  // Its part stays prepared on s0: pgvalve rolls it back there once s0 takes writes again.
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_TRUE(s.prepared_parts[0].gid().starts_with("pgvalve:")) << s.prepared_parts[0].gid();
  EXPECT_FALSE(s.prepared_parts[0].commit);
  s = h.server(write_part("DELETE 1"), T0, 1);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_TRUE(queries_in(s.to_server)[0].starts_with("ROLLBACK PREPARED"));
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_NE(errors_in(s.to_client)[0].message.find("SHOW SHARDS"), std::string::npos);
}

}  // namespace
}  // namespace pgvalve::session::testing

namespace pgvalve::session::testing {
namespace {

TEST_F(Scatter, DdlThroughTheSimpleProtocolReachesEveryShard) {
  const auto [to_s0, to_s1] = start(query("CREATE TABLE archive (device_id bigint)"));
  EXPECT_EQ(tags_of(to_s0), "QQQ");
}

TEST_F(Scatter, DdlThroughTheExtendedProtocolReachesEveryShard) {
  const std::string in = parse("", "CREATE TABLE archive (device_id bigint)") + bind_to("", "") +
                         describe('P', "") + execute() + sync();
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(tags_of(to_s0), "QQPBDES") << "BEGIN, the decider's xid, the statement";
  EXPECT_EQ(tags_of(to_s1), "QPBDES");
  const std::string statement = parse_complete() + bind_complete() + no_data() +
                                complete("CREATE TABLE") + ready('T') +
                                complete("PREPARE TRANSACTION") + ready('I');
  h.server(complete("BEGIN") + ready('T') + xid_result() + statement, T0, 0);
  Step s = h.server(complete("BEGIN") + ready('T') + statement, T0, 1);
  EXPECT_EQ(s.server_link, 0);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  EXPECT_EQ(s.server_link, 1);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "12nCZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

}  // namespace
}  // namespace pgvalve::session::testing

namespace pgvalve::session::testing {
namespace {

// A Bind of `statement` (unnamed by default) with text parameters.
std::string text_bind(const std::vector<std::string>& values, std::string_view statement = "") {
  return bind_values(statement, values);
}

std::vector<std::string> bound_values(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'B') continue;
    const auto b = protocol::read_bind(frame_of(m));
    for (const auto& p : b->params)
      out.emplace_back(p.value_or("NULL"));
  }
  return out;
}

TEST_F(Scatter, AnInsertWhoseRowsSpanShardsSendsEachShardItsOwnRows) {
  // md5("1") % 2 == 1, md5("2") % 2 == 0.
  const std::string in =
      parse("", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4)") +
      text_bind({"1", "a", "2", "b"}) + describe('P', "") + execute() + sync();
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(parsed_in(to_s0),
            std::vector<std::string>{"INSERT INTO telemetry (device_id, v) VALUES ($1, $2)"});
  EXPECT_EQ(bound_values(to_s0), (std::vector<std::string>{"2", "b"}));
  EXPECT_EQ(bound_values(to_s1), (std::vector<std::string>{"1", "a"}));
  const Step s =
      commit_both(parse_complete() + bind_complete() + no_data() + complete("INSERT 0 1") +
                  ready('T') + complete("PREPARE TRANSACTION") + ready('I'));
  EXPECT_EQ(tags_of(s.to_client), "12nCZ");
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[3])).value_or(""),
            "INSERT 0 2");
}

// PgJDBC's executeUpdate() and executeBatch() send Execute with a row limit of 1: for a
// statement that returns no rows it changes nothing, and the write is split as any other.
TEST_F(Scatter, AnExecuteRowLimitOfAWriteWithoutRowsIsNoObstacle) {
  const std::string in =
      parse("", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4)") +
      text_bind({"1", "a", "2", "b"}) + describe('P', "") + execute("", 1) + sync();
  const auto [to_s0, to_s1] = start(in);
  EXPECT_EQ(bound_values(to_s0), (std::vector<std::string>{"2", "b"}));
  EXPECT_EQ(bound_values(to_s1), (std::vector<std::string>{"1", "a"}));
  const Step s =
      commit_both(parse_complete() + bind_complete() + no_data() + complete("INSERT 0 1") +
                  ready('T') + complete("PREPARE TRANSACTION") + ready('I'));
  EXPECT_EQ(tags_of(s.to_client), "12nCZ");
  // With RETURNING it returns rows, which the gather does not hand out in parts.
  const Step r = h.client(
      parse("", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4) RETURNING v") +
      text_bind({"1", "a", "2", "b"}) + describe('P', "") + execute("", 1) + sync());
  EXPECT_FALSE(r.check_out);
  EXPECT_EQ(sqlstates_in(r.to_client), "0A000");
}

// PgJDBC outside autocommit sends BEGIN in the flight of the transaction's first statement: for
// a statement over several shards the BEGIN is held back, answered by pgvalve, and the statement
// runs in the client's transaction, which the shards join.
TEST_F(Scatter, ABeginInTheFlightOfAWriteOverShardsOpensTheClientsTransaction) {
  const std::string begin = parse("", "BEGIN") + bind_to("", "") + execute("", 0);
  const std::string insert =
      parse("", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4)") +
      text_bind({"1", "a", "2", "b"}) + describe('P', "") + execute("", 1) + sync();
  Step s = h.client(begin + insert);
  EXPECT_FALSE(s.check_out);
  EXPECT_TRUE(s.resume_client) << "the rest of the flight is read on";
  EXPECT_EQ(s.consumed, begin.size());
  EXPECT_EQ(tags_of(s.to_client), "12C");
  s = h.client(insert);
  ASSERT_TRUE(s.check_out) << "the transaction starts on the first shard the write needs";
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
  EXPECT_EQ(s.route.shard, 0);
  s = h.linked(*s0);
  const auto sent = queries_in(s.to_server);
  ASSERT_FALSE(sent.empty());
  EXPECT_EQ(sent[0], "BEGIN");
  s = h.server(complete("BEGIN") + ready('T'), T0, 0);
  EXPECT_TRUE(s.resume_client);
  s = h.client(insert);
  ASSERT_TRUE(s.check_out) << "the other shard joins the transaction";
  EXPECT_EQ(s.route.shard, 1);
  s = h.linked(*s1);
  s = h.server(
      complete("BEGIN") + row_description() + data_row({"10"}) + complete("SELECT 1") + ready('T'),
      T0, 1);
  s = h.client(insert);
  EXPECT_EQ(s.consumed, insert.size());
  ASSERT_EQ(s.to_links.size(), 2u) << "each shard's part of the transaction gets its rows";
  EXPECT_EQ(bound_values(s.to_links.at(0)), (std::vector<std::string>{"2", "b"}));
  EXPECT_EQ(bound_values(s.to_links.at(1)), (std::vector<std::string>{"1", "a"}));
}

// PgJDBC runs its BEGIN as a named statement once it used it prepareThreshold times (5), in the
// flight of the transaction's first statement, and Binds it without a Parse from then on: held
// back as the unnamed one is (a read over several shards after it was refused, 'a Parse after
// other messages'), and the statement is the client's for its later Binds.
TEST_F(Scatter, ANamedBeginInTheFlightOfAReadIsHeldBackToo) {
  const std::string read =
      parse("", "SELECT count(*) FROM telemetry") + bind_to("", "") + execute() + sync();
  const std::string named_begin = parse("S_6", "BEGIN") + bind_to("", "S_6") + execute();
  Step s = h.client(named_begin + read);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, named_begin.size());
  EXPECT_EQ(tags_of(s.to_client), "12C");
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
  const auto [to_s0, to_s1] = start(read);
  EXPECT_EQ(queries_in(to_s0), std::vector<std::string>{}) << "no BEGIN: it runs outside";
  h.server(parse_complete() + bind_complete() + int8_description() + data_row({"2"}) +
               complete("SELECT 1") + ready(),
           T0, 0);
  s = h.server(parse_complete() + bind_complete() + int8_description() + data_row({"3"}) +
                   complete("SELECT 1") + ready(),
               T0, 1);
  EXPECT_EQ(statuses_in(s.to_client), "T");
  h.client(query("COMMIT"));
  // The next transaction binds it alone.
  const std::string bound_begin = bind_to("", "S_6") + execute();
  s = h.client(bound_begin + read);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, bound_begin.size());
  EXPECT_EQ(tags_of(s.to_client), "2C");
}

// PgJDBC closes a finished cursor's portal with its next query: no shard holds it, and the
// client gets CloseComplete first (the read was refused: 'messages other than ...').
TEST_F(Scatter, AClosedPortalBeforeAReadOverShardsIsAnsweredByPgvalve) {
  const auto [to_s0, to_s1] =
      start(close_message('P', "C_1") + parse("", "SELECT count(*) FROM telemetry") +
            bind_to("", "") + execute() + sync());
  EXPECT_EQ(to_s0.find(close_message('P', "C_1")), std::string::npos);
  const std::string part = parse_complete() + bind_complete() + int8_description();
  h.server(part + data_row({"2"}) + complete("SELECT 1") + ready(), T0, 0);
  const Step s = h.server(part + data_row({"3"}) + complete("SELECT 1") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "312DCZ");
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"5"});
}

// postgres.js prepares a statement with Parse, Describe of the statement and Flush, and binds it
// once it knows the parameter types: any shard describes it, and its server goes back to the
// pool, so that the Bind is routed by its values (to another shard, or to all of them).
TEST_F(Scatter, AStatementDescribedBeforeItsBindIsRoutedByTheBind) {
  const std::string prepare = parse("s1", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2)") +
                              describe('S', "s1") + flush();
  Step s = h.client(prepare);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.consumed, 0u);
  h.linked(*s0);
  s = h.client(prepare);
  EXPECT_EQ(tags_of(s.to_server), "PDS") << "the Flush goes as a Sync";
  EXPECT_EQ(s.consumed, prepare.size());
  std::string description;
  protocol::append_no_parameters(description);
  s = h.server(parse_complete() + description + no_data() + ready(), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "1tn") << "no ReadyForQuery: the client sent a Flush";
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Idle);
  // md5("1") % 2 == 1: the Bind goes to s1, which gets the statement prepared first.
  s = h.client(std::string(text_bind({"1", "a"}, "s1")) + execute() + sync());
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 1);
  h.linked(*s1);
  s = h.client(std::string(text_bind({"1", "a"}, "s1")) + execute() + sync());
  EXPECT_EQ(tags_of(s.to_server), "PBES");
  EXPECT_EQ(parsed_in(s.to_server),
            std::vector<std::string>{"INSERT INTO telemetry (device_id, v) VALUES ($1, $2)"});
}

// asyncpg prepares each new statement (Parse, Describe, Flush) where it first runs it, also
// inside a transaction: the description runs nothing, so the BEGIN pgvalve holds back stays
// held, and the transaction starts where the statement's Bind goes (the description took a
// server and began the transaction on it, and that first shard's server answered a Bind for
// the other shard with 0A000, or the Flush was refused over several shards).
TEST_F(Scatter, AStatementDescribedInsideAHeldBackTransactionLeavesItsBeginHeld) {
  h.client(query("BEGIN"));
  const std::string prepare = parse("s1", "INSERT INTO telemetry (device_id, v) VALUES ($1, $2)") +
                              describe('S', "s1") + flush();
  Step s = h.client(prepare);
  ASSERT_TRUE(s.check_out);
  h.linked(*s0);
  s = h.client(prepare);
  EXPECT_EQ(tags_of(s.to_server), "PDS") << "no BEGIN before it";
  std::string description;
  protocol::append_no_parameters(description);
  s = h.server(parse_complete() + description + no_data() + ready(), T0, 0);
  EXPECT_EQ(tags_of(s.to_client), "1tn");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  s = h.client(std::string(text_bind({"1", "a"}, "s1")) + execute() + sync());
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 1);
  s = h.linked(*s1);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"BEGIN"})
      << "the transaction begins on the Bind's shard";
}

TEST_F(Scatter, ADescribingRequestWhoseCheckoutFailedLeavesTheNextFlushAlone) {
  const std::string describing =
      parse("s1", "SELECT v FROM telemetry WHERE device_id = $1") + describe('S', "s1") + flush();
  h.client(describing);
  h.checkout_failed("53300");
  const Step failed = h.client(describing);  // answered with the failure
  EXPECT_EQ(sqlstates_in(failed.to_client), "53300");
  h.client(sync());  // what the driver sends after an error, which skips up to it
  const std::string next = parse("", "SELECT 1") + bind_to("", "") + execute() + flush();
  Step s = h.client(next);
  ASSERT_TRUE(s.check_out);
  h.linked(*s0);
  s = h.client(next);
  EXPECT_EQ(tags_of(s.to_server), "PBEH") << "the client's Flush, as it sent it";
}

// A reference table has the same rows on every shard, so each shard answers its write alike:
// the client gets the first shard's tag and RETURNING rows, as one database would answer.
TEST_F(Scatter, AWriteToAReferenceTableAnswersAsOneDatabase) {
  start(query("INSERT INTO device_types VALUES (1, 'sensor') RETURNING id"));
  const Step s = commit_both(int8_description("id") + data_row({"1"}) + complete("INSERT 0 1") +
                             ready('T') + complete("PREPARE TRANSACTION") + ready('I'));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  EXPECT_EQ(values_in(s.to_client), std::vector<std::string>{"1"}) << "the row once";
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"INSERT 0 1"});
}

TEST_F(Scatter, AnUpdateOfAReferenceTableThroughTheExtendedProtocolAnswersOneShardsCount) {
  const std::string in = parse("", "UPDATE device_types SET name = $1 WHERE id = 1") +
                         text_bind({"gauge"}) + describe('P', "") + execute() + sync();
  start(in);
  const Step s = commit_both(parse_complete() + bind_complete() + no_data() + complete("UPDATE 1") +
                             ready('T') + complete("PREPARE TRANSACTION") + ready('I'));
  EXPECT_EQ(tags_of(s.to_client), "12nCZ");
  EXPECT_EQ(tags_in(s.to_client), std::vector<std::string>{"UPDATE 1"});
}

}  // namespace
}  // namespace pgvalve::session::testing

namespace pgvalve::session::testing {
namespace {

// Found by the session fuzz target: a shard whose part failed to prepare and whose server was
// then lost was counted as answered twice, settling the write while another shard still ran.
TEST_F(Scatter, AShardLostAfterItsPartFailedIsCountedOnce) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  Step s = h.server(complete("BEGIN") + ready('T') + xid_result() + complete("DELETE 1") +
                        ready('T') + error_message("40001") + ready('I'),
                    T0, 0);
  EXPECT_EQ(s.to_server, "");
  s = h.lost(T0, 0);
  EXPECT_EQ(s.to_client, "") << "shard 1 has not answered its part";
  EXPECT_EQ(h.state(), SessionState::Scattering);
  s = h.server(write_part("DELETE 2"), T0, 1);
  EXPECT_TRUE(queries_in(s.to_server)[0].starts_with("ROLLBACK PREPARED"));
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "40001");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

// Found by the session fuzz target: a part whose BEGIN failed ran outside a transaction, and the
// write was committed on the other shards.
TEST_F(Scatter, APartThatDidNotPrepareRollsTheWriteBack) {
  start(query("/* pgvalve: all_shards */ DELETE FROM telemetry"));
  h.server(decider_part("DELETE 1"), T0, 0);
  Step s = h.server(error_message("XX000") + ready('I') + complete("DELETE 1") + ready('I') +
                        notice() + complete("ROLLBACK") + ready('I'),
                    T0, 1);
  ASSERT_FALSE(queries_in(s.to_server).empty());
  EXPECT_TRUE(queries_in(s.to_server)[0].starts_with("ROLLBACK PREPARED"));
  s = h.server(complete("ROLLBACK PREPARED") + ready(), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "XX000");
}

}  // namespace
}  // namespace pgvalve::session::testing
