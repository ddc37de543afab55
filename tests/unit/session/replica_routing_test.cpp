// What the core does when reads may go to replicas: the route of each request, one request at a
// time on a replica, the client's read-your-writes mark, and a read retried elsewhere when its
// replica dies before answering.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

using routing::Route;

SessionOptions with_read_your_writes(config::ReadYourWrites mode) {
  SessionOptions o;
  o.read_your_writes = mode;
  o.read_your_writes_window = 1000ms;
  return o;
}

SessionHarness replicated(config::ReadYourWrites mode = config::ReadYourWrites::Off) {
  return SessionHarness(with_read_your_writes(mode), {}, nullptr, true);
}

TEST(SessionReplicaRouting, ReadsAskForAReplicaAndWritesForThePrimary) {
  auto h = replicated();
  Step s = h.client(query("select avg(value) from readings where device_id = 1"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  h.checkout_failed("53300");
  h.client(query("select 1"));  // answers the failure
  s = h.client(query("insert into readings values (1)"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
  EXPECT_TRUE(s.route.write);
}

// A hot standby refuses every statement of a session whose transactions are serializable
// ("cannot use serializable mode in a hot standby"): such a client reads on the primary, as a
// read (no read-your-writes mark).
TEST(SessionReplicaRouting, AClientWhoseTransactionsAreSerializableReadsOnThePrimary) {
  auto h = replicated();
  auto server = SessionHarness::fresh_server();
  h.send(query("SET default_transaction_isolation = 'serializable'"), *server);
  h.answer(command_result("SET"));
  // The route of a read, run to its end on `server`.
  auto route_of_read = [&](SessionHarness& c) {
    const std::string read = query("select 1");
    Step s = c.client(read);
    EXPECT_TRUE(s.check_out);
    const Route route = s.route;
    c.linked(*server);
    c.client(read);
    c.answer(row_result("1", "SELECT 1"));
    return route;
  };
  Route route = route_of_read(h);
  EXPECT_EQ(route.kind, Route::Kind::Primary);
  EXPECT_FALSE(route.write);
  h.send(query("RESET default_transaction_isolation"), *server);
  h.answer(command_result("RESET"));
  EXPECT_EQ(route_of_read(h).kind, Route::Kind::Replica);
  // Given at login (options=-c default_transaction_isolation=serializable).
  SessionHarness login(with_read_your_writes(config::ReadYourWrites::Off),
                       {{"options", "-c default_transaction_isolation=serializable"}}, nullptr,
                       true);
  EXPECT_EQ(route_of_read(login).kind, Route::Kind::Primary);
}

TEST(SessionReplicaRouting, WithoutSplittingEveryRouteIsThePrimary) {
  SessionHarness h;
  Step s = h.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
}

TEST(SessionReplicaRouting, AReplicaTakesOneRequestAtATime) {
  auto h = replicated();
  auto replica = SessionHarness::fresh_server();
  const std::string read = query("select 1");
  const std::string write = query("insert into readings values (1)");
  const std::string input = read + write;
  Step s = h.client(input);
  ASSERT_EQ(s.route.kind, Route::Kind::Replica);
  h.linked(*replica);
  s = h.client(input);
  EXPECT_EQ(s.consumed, read.size());  // the write waits
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 1"});
  // More client bytes while the read runs change nothing.
  s = h.client(write);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_server.empty());
  s = h.server(row_result("1", "SELECT 1"));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_TRUE(s.resume_client);  // the write is routed now
  s = h.client(write);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
}

TEST(SessionReplicaRouting, AReadOnlyTransactionStaysOnItsReplica) {
  auto h = replicated();
  auto replica = SessionHarness::fresh_server();
  Step s = h.client(query("begin read only"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  h.linked(*replica);
  h.client(query("begin read only"));
  s = h.server(command_result("BEGIN", 'T'));
  EXPECT_FALSE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.state(), SessionState::Holding);
  s = h.client(query("select 1"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 1"});
}

// State that pins a server, left on a replica, would keep the client there: every later write
// would fail (25006). Such statements are refused in a transaction on a replica, by its text,
// as with pool.pin_session_state: false; the transaction fails as on any error.
TEST(SessionReplicaRouting, StateThatWouldPinAReplicaIsRefusedThere) {
  for (const char* sql : {"declare c cursor with hold for select 1", "select pg_advisory_lock(5)",
                          "prepare p as select 1", "select pg_try_advisory_lock(5)"}) {
    auto h = replicated();
    auto replica = SessionHarness::fresh_server();
    Step s = h.client(query("begin read only"));
    ASSERT_EQ(s.route.kind, Route::Kind::Replica);
    h.linked(*replica);
    h.client(query("begin read only"));
    h.server(command_result("BEGIN", 'T'));
    s = h.client(query(sql));
    const auto q = queries_in(s.to_server);
    ASSERT_EQ(q.size(), 1u) << sql;
    EXPECT_NE(q[0].find("ERRCODE = '0A000'"), std::string::npos) << sql << ": " << q[0];
    EXPECT_NE(q[0].find("BEGIN READ ONLY, or a read-write transaction"), std::string::npos);
    h.server(error_result("0A000", 'E'));
    s = h.client(query("rollback"));
    EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"rollback"});
    s = h.server(command_result("ROLLBACK"));
    EXPECT_TRUE(s.has_op(LinkOp::Kind::Release)) << sql;  // nothing pinned, no pin check
    EXPECT_EQ(s.pinned_change, 0);
    EXPECT_FALSE(h.session().pinned());
  }
}

// A named statement whose Parse was answered without a server is refused at its Bind on the
// replica (as a statement that needs the primary): it never runs there, nothing pins.
TEST(SessionReplicaRouting, ANamedStatementLeavingStateIsRefusedAtItsBindOnAReplica) {
  auto h = replicated();
  auto replica = SessionHarness::fresh_server();
  h.client(parse("lock", "select pg_advisory_lock(5)") + sync());
  Step s = h.client(query("begin read only"));
  ASSERT_EQ(s.route.kind, Route::Kind::Replica);
  h.linked(*replica);
  h.client(query("begin read only"));
  h.server(command_result("BEGIN", 'T'));
  s = h.client(bind_to("", "lock") + execute() + sync());
  const auto p = parses_in(s.to_server);
  ASSERT_FALSE(p.empty());
  EXPECT_NE(p.back().second.find("RAISE EXCEPTION"), std::string::npos) << p.back().second;
  EXPECT_EQ(s.to_server.find("pg_advisory_lock"), std::string::npos);
}

// On the primary the same transaction may hold them (the hint sends it there).
TEST(SessionReplicaRouting, AReadOnlyTransactionOnThePrimaryMayLeaveState) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  Step s = h.client(query("/* pgvalve: primary */ begin read only"));
  ASSERT_EQ(s.route.kind, Route::Kind::Primary);
  h.linked(*primary);
  h.client(query("/* pgvalve: primary */ begin read only"));
  h.server(command_result("BEGIN", 'T'));
  s = h.client(query("select pg_advisory_lock(5)"));
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select pg_advisory_lock(5)"});
}

TEST(SessionReplicaRouting, AWriteTransactionMovesTheReadYourWritesMark) {
  auto h = replicated(config::ReadYourWrites::Lsn);
  auto primary = SessionHarness::fresh_server();
  Step s = h.client(query("insert into readings values (1)"));
  ASSERT_EQ(s.route.kind, Route::Kind::Primary);
  h.linked(*primary);
  h.client(query("insert into readings values (1)"));
  // The client has its answer at once; pgvalve asks for the WAL position before release.
  s = h.server(command_result("INSERT 0 1"));
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_FALSE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SELECT pg_catalog.pg_current_wal_insert_lsn()"});
  s = h.server(row_result("16/B374D848", "SELECT 1"));
  EXPECT_TRUE(s.to_client.empty());  // pgvalve's own answer
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.session().read_your_writes_lsn(), 0x16B374D848u);
  s = h.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  EXPECT_EQ(s.route.after_lsn, 0x16B374D848u);
}

TEST(SessionReplicaRouting, ARequestBehindTheWalQueryWaitsAndIsRoutedAfresh) {
  auto h = replicated(config::ReadYourWrites::Lsn);
  auto primary = SessionHarness::fresh_server();
  h.client(query("insert into readings values (1)"));
  h.linked(*primary);
  h.client(query("insert into readings values (1)"));
  h.server(command_result("INSERT 0 1"));  // the WAL position query goes out
  // The client's next request arrives before that query is answered: it waits for it...
  const std::string read = query("select 1");
  Step s = h.client(read);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_server.empty());
  s = h.server(row_result("0/200", "SELECT 1"));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.session().read_your_writes_lsn(), 0x200u);
  // ... and is routed afresh: a read may go to a replica that has replayed the write.
  s = h.client(read);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  EXPECT_EQ(s.route.after_lsn, 0x200u);
}

// The primary dies while it answers pgvalve's WAL position query: the client already has its
// write's answer, and its next request, waiting behind that query, must still be planned.
TEST(SessionReplicaRouting, ARequestBehindACutWalQueryIsRoutedWhenTheServerIsLost) {
  auto h = replicated(config::ReadYourWrites::Lsn);
  auto primary = SessionHarness::fresh_server();
  h.client(query("insert into readings values (1)"));
  h.linked(*primary);
  h.client(query("insert into readings values (1)"));
  Step s = h.server(command_result("INSERT 0 1"));  // the WAL position query goes out
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  const std::string read = query("select 1");
  s = h.client(read);
  EXPECT_EQ(s.consumed, 0u);
  s = h.lost();
  EXPECT_TRUE(s.to_client.empty());  // nothing of the client's was outstanding
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  EXPECT_TRUE(s.resume_client);  // else nothing reads the waiting request again
  EXPECT_EQ(h.state(), SessionState::Idle);
  s = h.client(read);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
}

// The write's WAL position is never learnt: no replica is known to have it, so the client's
// reads go to the primary until its next write is marked.
TEST(SessionReplicaRouting, AWriteWhoseWalQueryWasCutKeepsReadsOffReplicasUntilTheNextMark) {
  auto h = replicated(config::ReadYourWrites::Lsn);
  auto primary = SessionHarness::fresh_server();
  h.send(query("insert into readings values (1)"), *primary);
  h.answer(command_result("INSERT 0 1"));
  h.answer(row_result("0/200", "SELECT 1"));
  ASSERT_EQ(h.session().read_your_writes_lsn(), 0x200u);
  auto next = SessionHarness::fresh_server();
  h.send(query("insert into readings values (2)"), *next);
  h.answer(command_result("INSERT 0 1"));
  h.lost();  // the WAL position query is cut
  const std::uint64_t unknown = std::numeric_limits<std::uint64_t>::max();
  EXPECT_EQ(h.session().read_your_writes_lsn(), unknown);
  Step s = h.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  EXPECT_EQ(s.route.after_lsn, unknown);  // no replica's replay position reaches it
  h.checkout_failed("53300");
  h.client(query("select 1"));  // answers the failure
  // The next write's mark replaces it (the new primary's position covers what it has).
  auto promoted = SessionHarness::fresh_server();
  h.send(query("insert into readings values (3)"), *promoted);
  h.answer(command_result("INSERT 0 1"));
  h.answer(row_result("0/100", "SELECT 1"));
  EXPECT_EQ(h.session().read_your_writes_lsn(), 0x100u);
}

TEST(SessionReplicaRouting, AReadOnTheReplicaDoesNotMoveTheMark) {
  auto h = replicated(config::ReadYourWrites::Lsn);
  auto replica = SessionHarness::fresh_server();
  h.send(query("select 1"), *replica);
  Step s = h.server(row_result("1", "SELECT 1"));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  EXPECT_EQ(h.session().read_your_writes_lsn(), 0u);
}

TEST(SessionReplicaRouting, TimeModeSendsReadsToThePrimaryWithinTheWindow) {
  auto h = replicated(config::ReadYourWrites::Time);
  auto primary = SessionHarness::fresh_server();
  h.send(query("insert into readings values (1)"), *primary);
  Step s = h.server(command_result("INSERT 0 1"));
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
  s = h.client(query("select 1"), T0 + 500ms);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
  EXPECT_FALSE(s.route.write);
  h.checkout_failed("53300", T0 + 500ms);
  h.client(query("select 1"), T0 + 500ms);
  s = h.client(query("select 1"), T0 + 1500ms);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
}

TEST(SessionReplicaRouting, SetPgvalveRouteIsKeptByPgvalve) {
  auto h = replicated();
  Step s = h.client(query("SET pgvalve.route = primary"));
  EXPECT_FALSE(s.check_out);  // never sent to PostgreSQL
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  s = h.client(query("select 1"));
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
  h.checkout_failed("53300");
  h.client(query("select 1"));
  // A hint on the statement wins over the setting.
  s = h.client(query("/* pgvalve: replica */ select 1"));
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  h.checkout_failed("53300");
  h.client(query("select 1"));
  // Through the extended protocol too (JDBC, postgres.js).
  s = h.client(parse("", "set pgvalve.route to 'replica'") + bind_to("", "") + describe('P', "") +
               execute() + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(tags_of(s.to_client), "12nCZ");
  s = h.client(query("insert into readings values (1)"));
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  h.checkout_failed("53300");
  h.client(query("select 1"));
  s = h.client(query("RESET pgvalve.route"));
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  s = h.client(query("insert into readings values (1)"));
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
}

// After spaces or a comment too; a statement that only mentions pgvalve.route goes on.
TEST(SessionReplicaRouting, SetPgvalveRouteAfterSpacesAndCommentsIsKeptByPgvalve) {
  auto h = replicated();
  for (const char* set : {"\n\t SET pgvalve.route = replica", "-- c\nset pgvalve.route = replica",
                          "/* c */ Set pgvalve.route = replica"}) {
    Step s = h.client(query(set));
    EXPECT_FALSE(s.check_out) << set;
    EXPECT_EQ(tags_of(s.to_client), "CZ") << set;
    s = h.client(query("  \rRESET pgvalve.route"));
    EXPECT_EQ(tags_of(s.to_client), "CZ") << set;
  }
  Step s = h.client(query("select current_setting('pgvalve.route', true)"));
  EXPECT_TRUE(s.check_out);
}

TEST(SessionReplicaRouting, HintCommentsAreNotSentToPostgres) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  const std::string sent =
      h.send(query("-- keep\n/* pgvalve: primary */ insert into readings values (1)"), *primary);
  EXPECT_EQ(queries_in(sent),
            std::vector<std::string>{"-- keep\n insert into readings values (1)"});
  h.answer(command_result("INSERT 0 1"));
  // Other comments stay.
  auto other = SessionHarness::fresh_server();
  SessionHarness plain;
  EXPECT_EQ(queries_in(plain.send(query("/* app: x */ select 1"), *other)),
            std::vector<std::string>{"/* app: x */ select 1"});
}

TEST(SessionReplicaRouting, AnInvalidPgvalveRouteIsAnError) {
  auto h = replicated();
  Step s = h.client(query("SET pgvalve.route = sideways"));
  EXPECT_EQ(sqlstates_in(s.to_client), "22023");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_NE(errors_in(s.to_client)[0].message.find("pgvalve:"), std::string::npos);
}

TEST(SessionReplicaRouting, SetPgvalveRouteInsideATransactionAnswersWithItsStatus) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  h.send(query("begin"), *primary);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(query("set pgvalve.route = replica"));
  EXPECT_TRUE(s.to_server.empty());
  EXPECT_EQ(tags_of(s.to_client), "CZ");
  EXPECT_EQ(statuses_in(s.to_client), "T");
}

TEST(SessionReplicaRouting, AReadCutBeforeAnyAnswerRunsOnceMoreElsewhere) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  auto other = SessionHarness::fresh_server();
  h.send(query("select 42"), *dead);
  Step s = h.lost();
  EXPECT_TRUE(s.to_client.empty());  // no error: it is retried
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Close));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  EXPECT_EQ(h.state(), SessionState::WaitingForServer);
  s = h.linked(*other);
  EXPECT_TRUE(s.resume_client);
  EXPECT_TRUE(h.session().has_own_input());
  s = h.client("");  // the client sent nothing new: the core plans its own copy
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 42"});
  EXPECT_EQ(s.consumed, 0u);
  s = h.server(row_result("42", "SELECT 1"));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionReplicaRouting, AReplicaShuttingDownWithAFatalErrorIsRetriedToo) {
  auto h = replicated();
  auto dying = SessionHarness::fresh_server();
  auto other = SessionHarness::fresh_server();
  h.send(query("select 42"), *dying);
  // "terminating connection due to unexpected postmaster exit", then the socket closes.
  Step s = h.server(error_message("57P01", "FATAL"));
  EXPECT_TRUE(s.to_client.empty());
  s = h.lost();
  ASSERT_TRUE(s.check_out);
  h.linked(*other);
  s = h.client("");
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 42"});
}

TEST(SessionReplicaRouting, APrimaryShuttingDownCutsTheWriteWith08006NotAFatal) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  h.send(query("insert into readings values (1)"), *primary);
  Step s = h.server(error_message("57P01", "FATAL"));
  EXPECT_TRUE(s.to_client.empty());
  s = h.lost();
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(errors_in(s.to_client)[0].severity, "ERROR");
  EXPECT_FALSE(s.close_client);
}

TEST(SessionReplicaRouting, AnErrorOfTheReadItselfReachesTheClient) {
  auto h = replicated();
  auto replica = SessionHarness::fresh_server();
  h.send(query("select 1/0"), *replica);
  Step s = h.server(error_result("22012"));
  EXPECT_EQ(sqlstates_in(s.to_client), "22012");
}

TEST(SessionReplicaRouting, ARetriedReadIsNotRetriedTwice) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  auto also_dead = SessionHarness::fresh_server();
  h.send(query("select 42"), *dead);
  h.lost();
  h.linked(*also_dead);
  h.client("");
  Step s = h.lost();
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(statuses_in(s.to_client), "I");
}

TEST(SessionReplicaRouting, ARetryWithoutAServerAnswersTheRead) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  h.send(query("select 42"), *dead);
  h.lost();
  Step s = h.checkout_failed("57P03");
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionReplicaRouting, AReadCutAfterPartOfItsAnswerIsNotRetried) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  h.send(query("select 42"), *dead);
  h.answer(row_description());
  Step s = h.lost();
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

// A replica running "select 42" sends `goodbye` and closes: nothing reaches the client, and the
// read runs on the next server.
void expect_read_runs_again_after(const std::string& goodbye) {
  auto h = replicated();
  auto dying = SessionHarness::fresh_server();
  auto other = SessionHarness::fresh_server();
  h.send(query("select 42"), *dying);
  Step s = h.server(goodbye);
  EXPECT_TRUE(s.to_client.empty());
  s = h.lost();
  EXPECT_TRUE(s.to_client.empty());
  ASSERT_TRUE(s.check_out);
  h.linked(*other);
  s = h.client("");
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 42"});
  s = h.server(row_result("42", "SELECT 1"));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
}

// A replica stopped in a fast shutdown flushes the RowDescription it held with its FATAL, in one
// segment: nothing has reached the client, and the read runs elsewhere.
TEST(SessionReplicaRouting, AReadWhoseStartCameWithTheReplicasGoodbyeRunsAgain) {
  expect_read_runs_again_after(row_description() + error_message("57P01", "FATAL"));
}

// An immediate shutdown says goodbye with a WARNING: the same.
TEST(SessionReplicaRouting, AReadWhoseStartCameWithAnImmediateShutdownWarningRunsAgain) {
  expect_read_runs_again_after(
      row_description() +
      notice("WARNING", "57P01", "terminating connection due to immediate shutdown"));
}

// A backend between requests when the immediate shutdown came says goodbye before it has read
// the next request: nothing of the read reached the client, and it runs elsewhere. Found by the
// failover drill under load, where the WARNING went to the client as a notice and its read
// failed with 08006.
TEST(SessionReplicaRouting, AReadSentToAReplicaThatSaidGoodbyeFirstRunsAgain) {
  expect_read_runs_again_after(
      notice("WARNING", "57P01", "terminating connection due to immediate shutdown"));
}

// When the read cannot run again, its error says what the server said.
TEST(SessionReplicaRouting, AReadThatCannotRunAgainSaysWhatTheReplicaSaid) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  auto dying = SessionHarness::fresh_server();
  h.send(query("select 42"), *dead);
  h.lost();
  h.linked(*dying);
  h.client("");
  Step s = h.server(notice("WARNING", "57P01", "terminating connection due to immediate shutdown"));
  EXPECT_TRUE(s.to_client.empty());
  s = h.lost();
  EXPECT_FALSE(s.check_out);
  const auto errors = errors_in(s.to_client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].sqlstate, "08006");
  EXPECT_NE(errors[0].message.find("terminating connection due to immediate shutdown"),
            std::string::npos)
      << errors[0].message;
}

// What reached the client in an earlier step stays: the read cannot run again.
TEST(SessionReplicaRouting, AReadWhoseStartWentOutBeforeTheGoodbyeIsNotRetried) {
  auto h = replicated();
  auto dying = SessionHarness::fresh_server();
  h.send(query("select 42"), *dying);
  h.answer(row_description());
  h.server(error_message("57P01", "FATAL"));
  const Step s = h.lost();
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

// A replica takes one request at a time: the request behind a read cut after part of its
// answer is routed once the read has its error, not left unread.
TEST(SessionReplicaRouting, TheRequestBehindACutReadIsRoutedAfterItsError) {
  auto h = replicated();
  auto dead = SessionHarness::fresh_server();
  const std::string read = query("select 42");
  const std::string write = query("insert into readings values (1)");
  h.client(read + write);
  h.linked(*dead);
  Step s = h.client(read + write);
  EXPECT_EQ(s.consumed, read.size());
  h.answer(row_description());
  s = h.lost();
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_TRUE(s.resume_client);
  s = h.client(write);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
}

TEST(SessionReplicaRouting, AWriteCutOnThePrimaryIsNotRetried) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  h.send(query("insert into readings values (1)"), *primary);
  Step s = h.lost();
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
}

TEST(SessionReplicaRouting, HintCommentsNeverReachTheServer) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  // Simple protocol.
  std::string sent = h.send(query("/* pgvalve: primary */ select 1"), *primary);
  EXPECT_EQ(h.last.route.kind, Route::Kind::Primary);
  EXPECT_EQ(queries_in(sent), std::vector<std::string>{" select 1"});
  h.answer(row_result("1", "SELECT 1"));
  // Extended protocol, unnamed statement.
  sent = h.send(parse("", "/* pgvalve: primary */ select 2") + bind_to("", "") + execute() + sync(),
                *primary);
  EXPECT_EQ(parsed_in(sent), std::vector<std::string>{" select 2"});
  h.answer(parse_complete() + bind_complete() + command_result("SELECT 1"));
  // A named statement: prepared on the server without the hint, routed with it at every Bind.
  sent = h.send(
      parse("s1", "/* pgvalve: primary */ select 3") + bind_to("", "s1") + execute() + sync(),
      *primary);
  EXPECT_EQ(h.last.route.kind, Route::Kind::Primary);
  ASSERT_EQ(parsed_in(sent).size(), 1u);
  EXPECT_EQ(parsed_in(sent)[0], " select 3");
  h.answer(parse_complete() + bind_complete() + command_result("SELECT 1"));
  Step s = h.client(bind_to("", "s1") + execute() + sync());
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Primary);
}

// A replica may refuse settings its primary took (SET ROLE of a role not replayed there yet):
// the read runs on the primary, the replica goes back with its settings unknown, and the
// client stays connected. The log hears of it once per client.
TEST(SessionReplicaRouting, SettingsAReplicaRefusesSendTheReadToThePrimary) {
  auto h = replicated();
  auto primary = SessionHarness::fresh_server();
  h.send(query("SET ROLE analyst"), *primary);
  h.answer(command_result("SET"));
  const std::string read = query("select current_user");
  for (int round = 0; round < 2; ++round) {
    auto replica = SessionHarness::fresh_server();
    Step s = h.client(read);
    ASSERT_TRUE(s.check_out);
    ASSERT_EQ(s.route.kind, Route::Kind::Replica);
    s = h.linked(*replica);
    ASSERT_NE(s.to_server.find("analyst"), std::string::npos);  // the settings sync
    s = h.server(error_result("22023"));
    EXPECT_FALSE(s.close_client);
    EXPECT_TRUE(errors_in(s.to_client).empty());
    ASSERT_EQ(s.ops.size(), 1u);
    EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
    EXPECT_TRUE(replica->settings_unknown);  // its next lender's sync resets it first
    ASSERT_TRUE(s.check_out);
    EXPECT_EQ(s.route.kind, Route::Kind::Primary);
    EXPECT_FALSE(s.route.write);  // a read: it moves no read-your-writes mark
    EXPECT_EQ(s.replica_refused_settings.empty(), round > 0) << s.replica_refused_settings;
    s = h.linked(*primary);  // it has the client's settings: no sync
    EXPECT_TRUE(s.to_server.empty());
    EXPECT_TRUE(s.resume_client);
    s = h.client(read);
    EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select current_user"});
    EXPECT_EQ(h.answer(row_result("analyst", "SELECT 1")), row_result("analyst", "SELECT 1"));
    EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  }
}

// ---- Session mode: the client keeps its own server; reads borrow a replica ------------------

inline SessionOptions session_mode(config::ReadYourWrites mode = config::ReadYourWrites::Off) {
  SessionOptions o = with_read_your_writes(mode);
  o.mode = config::PoolMode::Session;
  return o;
}

TEST(SessionModeRouting, AnAutocommitReadBorrowsAReplicaAndGivesItBack) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  ASSERT_EQ(h.state(), SessionState::Holding);
  const std::string read = query("select avg(value) from readings");
  Step s = h.client(read);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
  EXPECT_EQ(h.session().pending_link(), 1);
  auto replica = SessionHarness::fresh_server();
  h.linked(*replica);
  EXPECT_TRUE(h.session().linked(0));
  EXPECT_TRUE(h.session().linked(1));
  // The own server is not read while the replica answers.
  EXPECT_FALSE(h.session().wants_server_input(0));
  s = h.client(read);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select avg(value) from readings"});
  s = h.server(row_result("1", "SELECT 1"), T0, 1);
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(s.ops[0].link, 1);
  EXPECT_EQ(h.state(), SessionState::Holding);
  EXPECT_TRUE(h.session().linked(0));
  EXPECT_TRUE(h.session().wants_server_input(0));
  // A write runs on the own server, no checkout.
  s = h.client(query("insert into readings values (1)"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
}

// Session mode: the read a replica cannot take with the client's settings runs on the
// client's own server.
TEST(SessionModeRouting, SettingsABorrowedReplicaRefusesKeepTheReadOnTheOwnServer) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  h.client(query("SET ROLE analyst"));
  h.server(command_result("SET"));
  const std::string read = query("select current_user");
  Step s = h.client(read);
  ASSERT_TRUE(s.check_out);
  auto replica = SessionHarness::fresh_server();
  s = h.linked(*replica);
  ASSERT_FALSE(s.to_server.empty());
  s = h.server(error_result("22023"), T0, 1);
  EXPECT_FALSE(s.close_client);
  EXPECT_TRUE(errors_in(s.to_client).empty());
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  EXPECT_EQ(s.ops[0].link, 1);
  EXPECT_FALSE(s.check_out);
  EXPECT_TRUE(s.resume_client);
  EXPECT_FALSE(s.replica_refused_settings.empty());
  s = h.client(read);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select current_user"});
}

// What a read tells about the backend that runs it (pg_backend_pid(), pg_listening_channels(),
// pg_cursors, pg_prepared_statements, ...) is the session's only on its own server.
TEST(SessionModeRouting, ReadsAboutTheSessionsOwnBackendStayOnTheOwnServer) {
  for (const char* sql :
       {"select pg_backend_pid()", "select pg_listening_channels()", "select name from pg_cursors",
        "select name from pg_prepared_statements"}) {
    auto own = SessionHarness::fresh_server();
    SessionHarness h(session_mode(), {}, own.get(), true);
    Step s = h.client(query(sql));
    EXPECT_FALSE(s.check_out) << sql;
    EXPECT_EQ(s.server_link, 0) << sql;
    EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{sql});
  }
  // Transaction mode lends any server: such a read may go to a replica there.
  auto h = replicated();
  Step s = h.client(query("select pg_backend_pid()"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.kind, Route::Kind::Replica);
}

TEST(SessionModeRouting, StateOnlyTheOwnServerHasKeepsReadsThere) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  // A named prepared statement lives on the own server under the client's name.
  const std::string parse_named = parse("s1", "select 1") + sync();
  Step s = h.client(parse_named);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
  h.server(parse_complete() + ready('I'));
  // An unnamed one is self-contained: it may go.
  const std::string unnamed = parse("", "select 1") + bind_to("", "") + execute() + sync();
  s = h.client(unnamed);
  EXPECT_TRUE(s.check_out);
  h.checkout_failed("53300");  // no replica: the own server answers instead
  EXPECT_EQ(h.state(), SessionState::Holding);
  s = h.client(unnamed);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(sqlstates_in(s.to_client), "");
  h.server(parse_complete() + bind_complete() + command_result("SELECT 1"));
  // Temporary tables exist only there.
  h.client(query("create temp table t (x int)"));
  h.server(command_result("CREATE TABLE"));
  s = h.client(query("select * from t"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
}

TEST(SessionModeRouting, InATransactionEverythingStaysOnTheOwnServer) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  h.client(query("begin"));
  h.server(command_result("BEGIN", 'T'));
  Step s = h.client(query("select 1"));
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
}

// A statement pgjdbc names in a read-only transaction (its COMMIT, after one use) would be left
// on the replica connection, for another client to run under the same name.
TEST(SessionModeRouting, AReadOnlyTransactionStaysOnTheOwnServer) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  for (const char* begin : {"begin read only", "START TRANSACTION READ ONLY"}) {
    Step s = h.client(query(begin));
    EXPECT_FALSE(s.check_out) << begin;
    EXPECT_EQ(s.server_link, 0);
    h.server(command_result("BEGIN", 'T'));
    s = h.client(query("select 1"));
    EXPECT_EQ(s.server_link, 0);
    h.server(row_result("1", "SELECT 1", 'T'));
    h.client(query("commit"));
    h.server(command_result("COMMIT"));
  }
  // Through the extended protocol too.
  Step s = h.client(parse("", "BEGIN READ ONLY") + bind_to("", "") + execute() + sync());
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.server_link, 0);
}

TEST(SessionModeRouting, SettingsFollowTheClientToTheReplica) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  h.client(query("set statement_timeout = '5s'"));
  h.server(command_result("SET"));
  h.client(query("select 1"));
  auto replica = SessionHarness::fresh_server();
  Step s = h.linked(*replica);
  EXPECT_EQ(s.server_link, 1);
  EXPECT_NE(s.to_server.find("statement_timeout"), std::string::npos);
}

TEST(SessionModeRouting, AWriteMovesTheReadYourWritesMark) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(config::ReadYourWrites::Lsn), {}, own.get(), true);
  h.client(query("insert into readings values (1)"));
  Step s = h.server(command_result("INSERT 0 1"));
  EXPECT_EQ(queries_in(s.to_server),
            std::vector<std::string>{"SELECT pg_catalog.pg_current_wal_insert_lsn()"});
  h.server(row_result("0/300", "SELECT 1"));
  EXPECT_EQ(h.state(), SessionState::Holding);
  s = h.client(query("select 1"));
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(s.route.after_lsn, 0x300u);
  // A read on the own server asks nothing afterwards.
  h.checkout_failed("53300");
  s = h.client(query("select 1"));
  EXPECT_EQ(s.server_link, 0);
  s = h.server(row_result("1", "SELECT 1"));
  EXPECT_TRUE(s.to_server.empty());
}

TEST(SessionModeRouting, AReadCutOnTheReplicaRunsAgain) {
  auto own = SessionHarness::fresh_server();
  SessionHarness h(session_mode(), {}, own.get(), true);
  h.client(query("select 1"));
  auto replica = SessionHarness::fresh_server();
  h.linked(*replica);
  h.client(query("select 1"));
  Step s = h.lost(T0, 1);
  ASSERT_TRUE(s.check_out);
  EXPECT_EQ(h.session().pending_link(), 1);
  // No other replica: the own server runs it.
  s = h.checkout_failed("53300");
  EXPECT_TRUE(s.resume_client);
  ASSERT_TRUE(h.session().has_own_input());
  s = h.client("");
  EXPECT_EQ(s.server_link, 0);
  EXPECT_EQ(queries_in(s.to_server), std::vector<std::string>{"select 1"});
  s = h.server(row_result("1", "SELECT 1"));
  EXPECT_EQ(tags_of(s.to_client), "TDCZ");
}

}  // namespace
}  // namespace pgvalve::session::testing
