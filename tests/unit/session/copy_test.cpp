// COPY ... FROM STDIN into a sharded table, as the session carries it out: every shard's server
// runs the COPY in a transaction, each row of the client's data goes to its key's shard, and the
// parts commit together (two-phase commit) or roll back together.
#include <gtest/gtest.h>

#include "protocol/messages.h"
#include "protocol/wire.h"
#include "session/scatter.h"
#include "tests/unit/session/session_test_util.h"

namespace pgvalve::session::testing {
namespace {

using namespace std::chrono_literals;

routing::ShardingPolicy two_shards() {
  routing::ShardingPolicy p;
  p.tables = {"telemetry"};
  p.reference_tables = {"device_types"};
  p.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Bigint, 2, {});
  p.shard_names = {"s0", "s1"};
  return p;
}

std::string copy_in_response(int columns = 2) {
  std::string out;
  const std::size_t at = protocol::begin_message(out, 'G');
  protocol::append_u8(out, 0);
  protocol::append_i16(out, static_cast<std::int16_t>(columns));
  for (int i = 0; i < columns; ++i)
    protocol::append_i16(out, 0);
  protocol::end_message(out, at);
  return out;
}

std::string copy_data(std::string_view rows) {
  return message('d', rows);
}

std::string copy_done() {
  std::string out;
  protocol::append_copy_done(out);
  return out;
}

std::string copy_fail(std::string_view why) {
  std::string out;
  protocol::append_copy_fail(out, why);
  return out;
}

// The bodies of the CopyData messages in `stream`, joined; CopyDone as "<done>", CopyFail as
// "<fail>", other messages as "<X>".
std::string copy_stream(std::string_view stream) {
  std::string out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag == 'd') {
      out += m.body;
    } else if (m.tag == 'c') {
      out += "<done>";
    } else if (m.tag == 'f') {
      out += "<fail>";
    } else {
      out += "<" + std::string(1, m.tag) + ">";
    }
  }
  return out;
}

SessionOptions with_query_timeout() {
  SessionOptions o;
  o.query_timeout = 1s;
  return o;
}

class Copy : public ::testing::Test {
 protected:
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy, with_query_timeout()};
  std::unique_ptr<ServerState> s0 = SessionHarness::fresh_server();
  std::unique_ptr<ServerState> s1 = SessionHarness::fresh_server();
  std::string gid;

  // Sends the COPY and links both shards; each runs BEGIN and the COPY and is ready for data.
  Step start(std::string_view sql = "COPY telemetry (device_id, v) FROM STDIN") {
    const std::string q = query(sql);
    Step s = h.client(q);
    EXPECT_TRUE(s.check_out);
    EXPECT_EQ(s.consumed, q.size());
    s = h.linked(*s0);
    const auto sent = queries_in(s.to_server);
    EXPECT_EQ(sent, (std::vector<std::string>{"BEGIN", "SELECT pg_catalog.pg_current_xact_id()",
                                              std::string(sql)}))
        << "the first shard's part decides: it names the commit with its xid";
    EXPECT_TRUE(s.check_out);
    s = h.linked(*s1);
    EXPECT_EQ(queries_in(s.to_server), (std::vector<std::string>{"BEGIN", std::string(sql)}));
    EXPECT_EQ(h.state(), SessionState::Scattering);
    s = h.server(complete("BEGIN") + ready('T') + xid_result() + copy_in_response(), T0, 0);
    EXPECT_EQ(s.to_client, "") << "the client waits until every shard takes data";
    s = h.server(complete("BEGIN") + ready('T') + copy_in_response(), T0, 1);
    EXPECT_EQ(tags_of(s.to_client), "G");
    EXPECT_TRUE(s.resume_client);
    EXPECT_EQ(h.state(), SessionState::Copying);
    return s;
  }

  // Both shards answer their part and prepare it; returns the step of the second.
  Step prepare_both(std::string_view tag0, std::string_view tag1) {
    Step s = h.server(complete(tag0) + ready('T'), T0, 0);
    const auto prepare = queries_in(s.to_links[0]);
    EXPECT_EQ(prepare.size(), 1u);
    EXPECT_TRUE(prepare.at(0).starts_with("PREPARE TRANSACTION 'pgvalve:")) << prepare.at(0);
    gid = prepare.at(0).substr(prepare.at(0).find('\''));
    s = h.server(complete(tag1) + ready('T'), T0, 1);
    EXPECT_EQ(queries_in(s.to_links[1]).at(0), prepare.at(0));
    h.server(complete("PREPARE TRANSACTION") + ready('I'), T0, 0);
    return h.server(complete("PREPARE TRANSACTION") + ready('I'), T0, 1);
  }
};

// md5_mod over two shards: 2 is on s0; 1 and 3 on s1.
TEST_F(Copy, EachRowGoesToTheShardOfItsKeyAndThePartsCommitTogether) {
  start();
  Step s = h.client(copy_data("1\ta\n2\tb\n3\tc\n") + copy_done());
  EXPECT_EQ(copy_stream(s.to_links[0]), "2\tb\n<done>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "1\ta\n3\tc\n<done>");
  EXPECT_EQ(s.to_client, "");
  EXPECT_EQ(h.state(), SessionState::Scattering);

  s = prepare_both("COPY 1", "COPY 2");
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid})
      << "committed once both prepared, the first shard first";
  EXPECT_EQ(s.server_link, 0);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid});
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  const auto msgs = messages_of(s.to_client);
  EXPECT_EQ(protocol::read_command_complete(frame_of(msgs[0])).value_or(""), "COPY 3");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Copy, RowsCutAcrossCopyDataMessagesArriveWhole) {
  start();
  Step s = h.client(copy_data("1\tfir"));
  EXPECT_TRUE(s.to_links.empty()) << "half a row goes nowhere yet";
  s = h.client(copy_data("st\n2\tsecond\n3"));
  EXPECT_EQ(copy_stream(s.to_links[0]), "2\tsecond\n");
  EXPECT_EQ(copy_stream(s.to_links[1]), "1\tfirst\n");
  s = h.client(copy_data("\tthird") + copy_done());
  EXPECT_EQ(copy_stream(s.to_links[0]), "<done>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "3\tthird<done>")
      << "a last row without a newline is routed at CopyDone";
}

TEST_F(Copy, ClientDataSentWithTheCopyWaitsUntilEveryShardTakesData) {
  const std::string q = query("COPY telemetry (device_id, v) FROM STDIN");
  const std::string data = copy_data("2\tb\n") + copy_done();
  Step s = h.client(q + data);
  EXPECT_EQ(s.consumed, q.size()) << "only the COPY is taken before the shards are ready";
  h.linked(*s0);
  h.linked(*s1);
  h.server(complete("BEGIN") + ready('T') + xid_result() + copy_in_response(), T0, 0);
  s = h.server(complete("BEGIN") + ready('T') + copy_in_response(), T0, 1);
  EXPECT_TRUE(s.resume_client);
  s = h.client(data);
  EXPECT_EQ(copy_stream(s.to_links[0]), "2\tb\n<done>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "<done>");
}

// Found by session_fuzz: a server that (wrongly) sends CopyInResponse twice counted as two
// shards ready, and the client was let in while a shard was still being checked out.
TEST_F(Copy, AShardThatSaysReadyTwiceIsCountedOnce) {
  const std::string q = query("COPY telemetry (device_id, v) FROM STDIN");
  h.client(q);
  h.linked(*s0);
  Step s = h.server(complete("BEGIN") + ready('T') + xid_result() + copy_in_response() +
                    copy_in_response());
  EXPECT_EQ(s.to_client, "");
  EXPECT_EQ(h.state(), SessionState::WaitingForServer) << "the second shard is being checked out";
  h.linked(*s1);
  s = h.server(complete("BEGIN") + ready('T') + copy_in_response(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "G");
  EXPECT_EQ(h.state(), SessionState::Copying);
}

TEST_F(Copy, ARowWithoutAKeyFailsTheCopyOnEveryShardAndTheClientHearsAtOnce) {
  start();
  Step s = h.client(copy_data("1\ta\n\\N\tb\n3\tc\n"));
  EXPECT_EQ(copy_stream(s.to_links[0]), "<fail>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "<fail>") << "nothing of the failed step is sent";
  EXPECT_EQ(h.state(), SessionState::Scattering);
  // Each shard's COPY fails; PREPARE TRANSACTION in a failed transaction rolls it back.
  const std::string failed = error_message("57014") + ready('E');
  s = h.server(failed, T0, 0);
  EXPECT_TRUE(queries_in(s.to_links[0]).at(0).starts_with("PREPARE TRANSACTION"));
  s = h.server(failed, T0, 1);
  h.server(complete("ROLLBACK") + ready('I'), T0, 0);
  s = h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(sqlstates_in(s.to_client), "22004");
  EXPECT_NE(s.to_client.find("COPY row 2"), std::string::npos) << "the row is named";
  EXPECT_FALSE(s.has_op(LinkOp::Kind::Close));
  EXPECT_EQ(h.state(), SessionState::Idle);

  // The rest of the client's COPY data is dropped, as PostgreSQL drops it after an error.
  s = h.client(copy_data("4\td\n") + copy_done());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_client, "");
}

TEST_F(Copy, AShardsErrorMidCopyEndsTheCopyOnTheOthers) {
  start();
  h.client(copy_data("1\ta\n2\tb\n"));
  Step s = h.server(error_message("23505") + ready('E'), T0, 1);
  EXPECT_EQ(copy_stream(s.to_links[0]), "<fail>") << "the other shard leaves COPY";
  EXPECT_TRUE(queries_in(s.to_links[1]).at(0).starts_with("PREPARE TRANSACTION"));
  EXPECT_EQ(h.state(), SessionState::Scattering) << "client data waits for the answer";
  h.server(error_message("57014") + ready('E'), T0, 0);
  h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  s = h.server(complete("ROLLBACK") + ready('I'), T0, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "23505") << "the shard's error is the client's";
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

// A server that is not PostgreSQL (or a broken one) answers the PREPARE TRANSACTION in the step
// that sends it, with something else: the write fails and that server goes at once. It is sent
// nothing more in that step; the PREPARE lived in memory the step's end of the write freed, so
// its bytes would have gone out mangled.
TEST_F(Copy, AServerThatGoesInTheStepThatPreparesItsPartIsSentNothing) {
  start();
  h.client(copy_data("1\ta\n2\tb\n") + copy_done());
  h.lost(T0, 1);
  Step s = h.server(complete("COPY 1") + ready('T') + complete("SET") + ready('T'), T0, 0);
  EXPECT_EQ(s.to_links.count(0), 0u) << copy_stream(s.to_links[0]);
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close) || s.has_op(LinkOp::Kind::CancelAndClose));
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Copy, AShardLostBeforeItsPrepareLeavesNothingPrepared) {
  start();
  // Lost mid-COPY: its PREPARE TRANSACTION was not sent, so nothing of it can stay prepared.
  Step s = h.lost(T0, 1);
  EXPECT_TRUE(s.prepared_parts.empty());
  // Lost after its COPY answered and its PREPARE was sent: it may have prepared.
  h.client(copy_data("2\tb\n") + copy_done());
  s = h.server(complete("COPY 1") + ready('T'), T0, 0);
  s = h.lost(T0, 0);
  ASSERT_EQ(s.prepared_parts.size(), 1u);
  EXPECT_EQ(s.prepared_parts[0].shard, 0);
  EXPECT_FALSE(s.prepared_parts[0].commit);
}

TEST_F(Copy, TheClientsCopyFailRollsBackEveryShard) {
  start();
  Step s = h.client(copy_data("1\ta\n") + copy_fail("changed my mind"));
  EXPECT_EQ(copy_stream(s.to_links[0]), "<fail>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "<fail>");
  const std::string failed = error_message("57014") + ready('E');
  h.server(failed, T0, 0);
  h.server(failed, T0, 1);
  h.server(complete("ROLLBACK") + ready('I'), T0, 0);
  s = h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "57014");
  EXPECT_NE(s.to_client.find("changed my mind"), std::string::npos);
}

TEST_F(Copy, AShardTakingDataIsNotTimedAsSilent) {
  start();
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max())
      << "a server waiting for COPY data owes no answer";
  h.client(copy_data("1\ta\n") + copy_done());
  EXPECT_NE(h.session().next_deadline(), Clock::time_point::max());
}

// ... and are counted once, as one database counts them.
TEST_F(Copy, AReferenceTablesRowsGoToEveryShard) {
  start("COPY device_types (id, name) FROM STDIN WITH (FORMAT csv)");
  Step s = h.client(copy_data("1,sensor\n2,gateway\n"));
  EXPECT_EQ(copy_stream(s.to_links[0]), "1,sensor\n2,gateway\n");
  EXPECT_EQ(copy_stream(s.to_links[1]), "1,sensor\n2,gateway\n");
  h.client(copy_done());
  prepare_both("COPY 2", "COPY 2");
  h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "COPY 2");
}

// Binary COPY (pgx's CopyFrom, asyncpg's copy_records_to_table): the file header goes to both
// shards, each tuple to the shard of its int8 key, and the client gets the first shard's
// CopyInResponse, which says binary.
TEST_F(Copy, BinaryTuplesGoToTheirShardsWithTheHeaderOnEach) {
  const auto be = [](std::int64_t v, int bytes) {
    std::string out;
    for (int i = bytes - 1; i >= 0; --i)
      out.push_back(static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff));
    return out;
  };
  const std::string header = std::string("PGCOPY\n\377\r\n\0", 11) + be(0, 8);
  const auto tuple = [&](std::int64_t device) {
    return be(2, 2) + be(8, 4) + be(device, 8) + be(-1, 4);
  };
  start("COPY telemetry (device_id, v) FROM STDIN (FORMAT binary)");
  // md5_mod: device 1 on shard 1, device 2 on shard 0.
  Step s = h.client(copy_data(header + tuple(1) + tuple(2)) + copy_data(be(-1, 2)));
  EXPECT_EQ(copy_stream(s.to_links.at(0)), header + tuple(2) + be(-1, 2));
  EXPECT_EQ(copy_stream(s.to_links.at(1)), header + tuple(1) + be(-1, 2));
  s = h.client(copy_done());
  EXPECT_EQ(copy_stream(s.to_links.at(0)), "<done>");
  prepare_both("COPY 1", "COPY 1");
  h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "COPY 2");
}

// A binary tuple whose key is NULL fails the COPY on every shard, as a text row's does.
TEST_F(Copy, ABinaryTupleWithoutAKeyFailsTheCopyEverywhere) {
  start("COPY telemetry (device_id, v) FROM STDIN (FORMAT binary)");
  std::string data = std::string("PGCOPY\n\377\r\n\0", 11) + std::string(8, '\0');
  data += std::string("\0\2", 2) + std::string("\377\377\377\377", 4) +
          std::string("\377\377\377\377", 4);
  Step s = h.client(copy_data(data));
  EXPECT_EQ(copy_stream(s.to_links.at(0)), "<fail>");
  EXPECT_EQ(copy_stream(s.to_links.at(1)), "<fail>") << "not even the header is sent";
  const std::string failed = error_message("57014") + ready('E');
  h.server(failed, T0, 0);
  h.server(failed, T0, 1);
  h.server(complete("ROLLBACK") + ready('I'), T0, 0);
  s = h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "22004");
  EXPECT_NE(s.to_client.find("COPY row 1: device_id is NULL"), std::string::npos);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST_F(Copy, ACopyPgvalveCannotRouteByRowIsRefusedBeforeAnyServerIsAsked) {
  for (const char* sql : {"COPY telemetry FROM STDIN", "COPY telemetry (v) FROM STDIN",
                          "COPY telemetry (device_id, v) FROM STDIN WITH (DELIMITER '||')"}) {
    const Step s = h.client(query(sql));
    EXPECT_FALSE(s.check_out) << sql;
    EXPECT_EQ(sqlstates_in(s.to_client), "0A000") << sql;
    EXPECT_EQ(statuses_in(s.to_client), "I") << sql;
  }
}

TEST_F(Copy, AHintedCopyRunsOnItsShardAsItIs) {
  const std::string q = query("/* pgvalve: device_id=2 */ COPY telemetry FROM STDIN");
  const Step s = h.client(q);
  EXPECT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, routing::Route::Kind::Primary);
  EXPECT_EQ(s.route.shard, 0);
  EXPECT_FALSE(s.route.copy_rows);
}

// psycopg sends BEGIN before a COPY unless the connection is in autocommit: the transaction
// starts on the first shard, every other shard joins it, each part runs the COPY, and the parts
// commit with the transaction (two-phase commit at COMMIT).
TEST_F(Copy, ACopyInsideATransactionRunsOnEveryShardsPartOfIt) {
  Step s = h.client(query("BEGIN"));
  EXPECT_EQ(statuses_in(s.to_client), "T");
  const std::string copy = query("COPY telemetry (device_id, v) FROM STDIN");
  s = h.client(copy);
  ASSERT_TRUE(s.check_out) << "the transaction starts on the first shard";
  EXPECT_EQ(s.route.shard, 0);
  s = h.linked(*s0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"BEGIN"});
  h.server(command_result("BEGIN", 'T'), T0, 0);
  s = h.client(copy);
  ASSERT_TRUE(s.check_out) << "then s1 joins";
  EXPECT_EQ(s.route.shard, 1);
  h.linked(*s1);
  h.server(
      complete("BEGIN") + row_description() + data_row({"10"}) + complete("SELECT 1") + ready('T'),
      T0, 1);
  s = h.client(copy);
  EXPECT_EQ(s.consumed, copy.size());
  ASSERT_EQ(s.to_links.size(), 2u);
  for (int link : {0, 1}) {
    EXPECT_EQ(queries_in(s.to_links.at(link)),
              std::vector<std::string>{"COPY telemetry (device_id, v) FROM STDIN"})
        << "no BEGIN and no PREPARE of its own";
  }
  s = h.server(copy_in_response(), T0, 0);
  EXPECT_EQ(s.to_client, "");
  s = h.server(copy_in_response(), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "G");
  EXPECT_EQ(h.state(), SessionState::Copying);

  s = h.client(copy_data("1\ta\n2\tb\n3\tc\n") + copy_done());
  EXPECT_EQ(copy_stream(s.to_links[0]), "2\tb\n<done>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "1\ta\n3\tc\n<done>");
  s = h.server(complete("COPY 1") + ready('T'), T0, 0);
  EXPECT_TRUE(s.to_links.empty()) << "nothing is prepared before the client's COMMIT";
  s = h.server(complete("COPY 2") + ready('T'), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(protocol::read_command_complete(frame_of(messages_of(s.to_client)[0])).value_or(""),
            "COPY 3");
  EXPECT_EQ(statuses_in(s.to_client), "T") << "the client is still in its transaction";

  s = h.client(query("COMMIT"));
  ASSERT_EQ(s.to_links.size(), 1u) << "the decider's xid first";
  s = h.server(xid_result(), T0, 0);
  ASSERT_EQ(s.to_links.size(), 2u);
  EXPECT_TRUE(queries_in(s.to_links.at(0)).at(0).starts_with("PREPARE TRANSACTION 'pgvalve:"));
  EXPECT_EQ(queries_in(s.to_links.at(1)), queries_in(s.to_links.at(0)));
}

TEST_F(Copy, ABadRowInsideATransactionFailsItOnEveryShard) {
  h.client(query("BEGIN"));
  const std::string copy = query("COPY telemetry (device_id, v) FROM STDIN");
  h.client(copy);
  h.linked(*s0);
  h.server(command_result("BEGIN", 'T'), T0, 0);
  h.client(copy);
  h.linked(*s1);
  h.server(
      complete("BEGIN") + row_description() + data_row({"10"}) + complete("SELECT 1") + ready('T'),
      T0, 1);
  h.client(copy);
  h.server(copy_in_response(), T0, 0);
  h.server(copy_in_response(), T0, 1);
  Step s = h.client(copy_data("2\tb\n\\N\tx\n"));
  EXPECT_EQ(copy_stream(s.to_links[0]), "<fail>");
  EXPECT_EQ(copy_stream(s.to_links[1]), "<fail>");
  h.server(error_result("57014", 'E'), T0, 0);
  s = h.server(error_result("57014", 'E'), T0, 1);
  EXPECT_EQ(statuses_in(s.to_client), "E") << "the transaction failed, as on one server";
  EXPECT_FALSE(sqlstates_in(s.to_client).empty());
  s = h.client(query("ROLLBACK"));
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK"});
  EXPECT_EQ(queries_in(s.to_links.at(1)), std::vector<std::string>{"ROLLBACK"});
}

// After a COPY error PostgreSQL ignores the COPY data still on its way. psql sends it all, then
// its next statement: glued to that statement in one read, the leftover data is dropped and the
// statement is routed as usual (it was refused as a request with messages pgvalve does not route).
TEST_F(Copy, DataLeftOverFromAFailedCopyIsDroppedBeforeTheNextStatement) {
  start();
  h.client(copy_data("\\N\ta\n"));
  const std::string failed = error_message("57014") + ready('E');
  h.server(failed, T0, 0);
  h.server(failed, T0, 1);
  h.server(complete("ROLLBACK") + ready('I'), T0, 0);
  Step s = h.server(complete("ROLLBACK") + ready('I'), T0, 1);
  EXPECT_EQ(sqlstates_in(s.to_client), "22004");
  ASSERT_EQ(h.state(), SessionState::Idle);

  const std::string leftover = copy_data("2\tb\n") + copy_data("3\tc\n") + copy_done();
  const std::string next = query("SELECT count(*) FROM telemetry WHERE device_id = 2");
  s = h.client(leftover + next);
  EXPECT_EQ(s.consumed, leftover.size());
  EXPECT_TRUE(s.resume_client) << "the statement is read again on its own";
  EXPECT_EQ(s.to_client, "");
  s = h.client(next);
  EXPECT_TRUE(s.check_out) << s.to_client;
  EXPECT_EQ(s.route.shard, 0);
}

// Inside a transaction over both shards, the leftover data and the ROLLBACK behind it: the
// ROLLBACK ends the transaction on every shard (it got 25P02 and the client stayed in it).
TEST_F(Copy, TheRollbackBehindLeftOverCopyDataEndsTheTransaction) {
  h.client(query("BEGIN"));
  const std::string copy = query("COPY telemetry (device_id, v) FROM STDIN");
  h.client(copy);
  h.linked(*s0);
  h.server(command_result("BEGIN", 'T'), T0, 0);
  h.client(copy);
  h.linked(*s1);
  h.server(
      complete("BEGIN") + row_description() + data_row({"10"}) + complete("SELECT 1") + ready('T'),
      T0, 1);
  h.client(copy);
  h.server(copy_in_response(), T0, 0);
  h.server(copy_in_response(), T0, 1);
  h.client(copy_data("\\N\tx\n"));
  h.server(error_result("57014", 'E'), T0, 0);
  Step s = h.server(error_result("57014", 'E'), T0, 1);
  EXPECT_EQ(statuses_in(s.to_client), "E");

  const std::string leftover = copy_data("2\tb\n") + copy_done();
  const std::string rollback = query("ROLLBACK");
  s = h.client(leftover + rollback);
  EXPECT_EQ(s.consumed, leftover.size());
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(s.to_client, "");
  s = h.client(rollback);
  EXPECT_EQ(sqlstates_in(s.to_client), "") << "not 25P02";
  ASSERT_EQ(s.to_links.size(), 2u);
  EXPECT_EQ(queries_in(s.to_links.at(0)), std::vector<std::string>{"ROLLBACK"});
  EXPECT_EQ(queries_in(s.to_links.at(1)), std::vector<std::string>{"ROLLBACK"});
}

// One refused request does not take the requests pipelined behind it in the same read with it:
// each is routed on its own (docs/sharding.md), as PostgreSQL runs each after an error.
TEST_F(Copy, OnlyTheRefusedRequestOfAReadFails) {
  const std::string refused = query("COPY telemetry FROM STDIN");
  const std::string insert = query("INSERT INTO telemetry (device_id, v) VALUES (1, 1)");
  Step s = h.client(refused + insert);
  EXPECT_EQ(s.consumed, refused.size());
  EXPECT_EQ(tags_of(s.to_client), "EZ") << "one error, for the COPY";
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_TRUE(s.resume_client);
  s = h.client(insert);
  EXPECT_TRUE(s.check_out) << s.to_client;
  EXPECT_EQ(s.route.shard, 1);

  // Extended: the refused statement's messages up to its Sync fail, the next flight is routed.
  SessionHarness e{policy, with_query_timeout()};
  const std::string bad =
      parse("", "UPDATE telemetry SET v = 2") + bind_to("", "") + execute() + sync();
  const std::string good = parse("", "SELECT v FROM telemetry WHERE device_id = 2") +
                           bind_to("", "") + execute() + sync();
  s = e.client(bad + good);
  EXPECT_EQ(s.consumed, bad.size());
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_TRUE(s.resume_client);
  s = e.client(good);
  EXPECT_TRUE(s.check_out) << s.to_client;
  EXPECT_EQ(s.route.shard, 0);
}

// A refusal that ends a transaction pgvalve held back (its BEGIN answered, nothing run yet)
// takes what was pipelined behind it: those statements belong to that transaction, which
// PostgreSQL would have failed (25P02); routed on their own they would autocommit.
// The refusal fails the block pgvalve holds the BEGIN of, as an error does on PostgreSQL: what
// the client pipelined behind it gets 25P02 (none of it runs on its own), and its COMMIT is
// answered ROLLBACK.
TEST_F(Copy, ARefusalInAHeldBackTransactionFailsTheBlock) {
  Step s = h.client(query("BEGIN"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(statuses_in(s.to_client), "T");
  const std::string refused = query("UPDATE telemetry SET v = 1");
  const std::string insert = query("INSERT INTO telemetry (device_id, v) VALUES (1, 1)");
  s = h.client(refused + insert + query("COMMIT"));
  EXPECT_EQ(s.consumed, refused.size());
  EXPECT_FALSE(s.check_out);
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_EQ(statuses_in(s.to_client), "E");
  s = h.client(insert + query("COMMIT"));
  EXPECT_EQ(s.consumed, insert.size());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "25P02");
  s = h.client(query("COMMIT"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

// libpq's PQputCopyEnd then PQfinish, without waiting for the COPY's answer: the COPY runs to
// its end and commits on every shard, as PostgreSQL finishes a COPY before it reads Terminate;
// the client is closed after that (its servers went back clean, none cancelled).
TEST_F(Copy, TerminateRightAfterCopyDoneLetsTheCopyCommit) {
  start();
  const std::string data = copy_data("1\ta\n2\tb\n") + copy_done();
  Step s = h.client(data + terminate());
  EXPECT_FALSE(s.close_client);
  EXPECT_EQ(s.consumed, data.size()) << "the Terminate is read again once the COPY is answered";
  EXPECT_TRUE(h.session().finishing_copy());
  EXPECT_FALSE(h.session().wants_client_input());
  s = prepare_both("COPY 1", "COPY 1");
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"COMMIT PREPARED " + gid});
  h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  s = h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_TRUE(h.session().wants_client_input());
  s = h.client(terminate());
  EXPECT_TRUE(s.close_client);
  EXPECT_FALSE(s.has_op(LinkOp::Kind::CancelAndClose));
}

// The Terminate in a read of its own comes after the COPY's parts answered; meanwhile the client's
// hang-up (it closes its socket after Terminate) is not taken for a client gone mid-request.
TEST_F(Copy, AnEndedCopyBeingCommittedIsNotCutByTheClientsHangUp) {
  start();
  EXPECT_FALSE(h.session().finishing_copy()) << "taking data: a client gone now fails the COPY";
  h.client(copy_data("1\ta\n") + copy_done());
  EXPECT_TRUE(h.session().finishing_copy());
  prepare_both("COPY 0", "COPY 1");
  EXPECT_TRUE(h.session().finishing_copy()) << "still committing";
  h.server(complete("COMMIT PREPARED") + ready(), T0, 0);
  h.server(complete("COMMIT PREPARED") + ready(), T0, 1);
  EXPECT_FALSE(h.session().finishing_copy());
  const Step s = h.client(terminate());
  EXPECT_TRUE(s.close_client);
}

// A request among the COPY data closes the client (08P01), as on one server and as
// docs/errors.md says; every shard's server goes with it, which rolls the COPY back. (It was
// answered with an error and ReadyForQuery 'I', and the request silently dropped.)
TEST_F(Copy, ARequestAmongTheCopyDataClosesTheClient) {
  start();
  const Step s = h.client(copy_data("1\ta\n") + query("INSERT INTO telemetry VALUES (2)"));
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08P01");
  EXPECT_EQ(statuses_in(s.to_client), "") << "no ReadyForQuery";
  EXPECT_TRUE(s.to_links.empty()) << "no row of the failed step is sent";
  ASSERT_EQ(s.ops.size(), 2u);
  for (const Op& op : s.ops)
    EXPECT_EQ(op.kind, LinkOp::Kind::CancelAndClose);
  EXPECT_EQ(h.state(), SessionState::Closing);
}

// client_encoding SJIS (BIG5, GBK, ...): the second byte of 表 (\x95\x5C) looks like a backslash,
// so pgvalve would cut rows and read keys in the wrong places. A COPY routed row by row is
// refused, as with COPY's own ENCODING 'SJIS'; a statement with such a character too, unless a
// hint places it. Set at login or by SET.
TEST(CopyEncoding, ClientEncodingsWhoseCharactersHoldAsciiBytesAreNotReadForKeys) {
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy, {}, false, nullptr, {{"client_encoding", "SJIS"}}};
  Step s = h.client(query("COPY telemetry (v, device_id) FROM STDIN"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_NE(s.to_client.find("pgvalve: COPY data in client_encoding SJIS"), std::string::npos);
  EXPECT_NE(s.to_client.find("UTF8"), std::string::npos);
  // The data's own ENCODING, when it is a safe one, is what the rows are read in.
  s = h.client(query("COPY telemetry (v, device_id) FROM STDIN (ENCODING 'UTF8')"));
  EXPECT_TRUE(s.check_out);

  SessionHarness q{policy, {}, false, nullptr, {{"client_encoding", "sjis"}}};
  // PostgreSQL reads E'表', then 5; bytewise, E'\x95\' runs on and the key would be 6.
  const std::string sql = "INSERT INTO telemetry (v, device_id) VALUES (E'\x95\x5c', 5) --', 6)";
  s = q.client(query(sql));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_NE(s.to_client.find("client_encoding"), std::string::npos);
  // Characters without ASCII bytes (\x82\xa0, あ) are read as before, and so is a hinted one.
  s = q.client(query("INSERT INTO telemetry (v, device_id) VALUES ('\x82\xa0', 2)"));
  EXPECT_TRUE(s.check_out);
  EXPECT_EQ(s.route.shard, 0);
}

TEST(CopyEncoding, ASetClientEncodingIsFollowed) {
  routing::ShardingPolicy policy = two_shards();
  SessionHarness h{policy};
  auto server = SessionHarness::fresh_server();
  h.send(query("SET client_encoding = 'SJIS'"), *server);
  h.answer(complete("SET") + parameter_status("client_encoding", "SJIS") + ready());
  const Step s = h.client(query("COPY telemetry (v, device_id) FROM STDIN"));
  EXPECT_FALSE(s.check_out);
  EXPECT_NE(s.to_client.find("client_encoding SJIS"), std::string::npos);
}

// SHOW SHARDS counts each shard's part of a write by the rows its tag reports.
TEST(ScatterParts, AWritesPartCountsTheRowsOfItsCommandTag) {
  session::Scatter scatter;
  routing::ScatterPlan plan;
  plan.ok = true;
  const std::string q = query("COPY telemetry (device_id) FROM STDIN");
  ASSERT_EQ(scatter.start(q, "COPY telemetry (device_id) FROM STDIN", {}, plan, {}, 2, 1u << 20,
                          1u << 20, true, nullptr, true),
            "");
  std::string client;
  for (const auto& m : messages_of(complete("COPY 7")))
    scatter.add(0, frame_of(m), client);
  for (const auto& m : messages_of(complete("COPY 2")))
    scatter.add(1, frame_of(m), client);
  EXPECT_EQ(client, "");  // a write's answer waits for its parts
  EXPECT_EQ(scatter.rows(0), 7u);
  EXPECT_EQ(scatter.rows(1), 2u);
  std::string answer;
  scatter.finish(answer);
  EXPECT_EQ(scatter.rows_answered(), 9u);
}

}  // namespace
}  // namespace pgvalve::session::testing
