// Named prepared statements under transaction pooling: the client's names are kept by pgvalve,
// the server gets shared pgv_<hash> names and each statement is prepared where it is used.
#include <gtest/gtest.h>

#include "session/limits.h"
#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

constexpr std::string_view kSql = "select * from t where id = $1";

// Defines s1 without a server, as pgbench -M prepared does at start.
void prepare_locally(SessionHarness& h, std::string_view name = "s1", std::string_view sql = kSql) {
  const std::string flight = parse(name, sql) + sync();
  Step s = h.client(flight);
  ASSERT_FALSE(s.check_out);
  ASSERT_EQ(s.consumed, flight.size());
  ASSERT_EQ(s.to_client, parse_complete() + ready('I'));
}

std::string run_flight(std::string_view statement) {
  return bind_to("", statement) + execute() + sync();
}

// A flight that fails at its first message (a Describe of a statement nobody prepared): the
// server skips the Parse behind it.
std::string failing_flight_parsing(std::string_view name, std::string_view sql) {
  return describe('S', "missing") + parse(name, sql) + sync();
}

std::string select_answer() {
  return bind_complete() + data_row({"1"}) + complete("SELECT 1") + ready('I');
}

TEST(SessionPreparedStatements, TheSameTextUnderAnotherSearchPathIsAnotherServerStatement) {
  // PostgreSQL resolves a statement's tables when it prepares it: under search_path s_b the
  // text means s_b.t, and reusing the one prepared under s_a would fail (0A000, cached plan must
  // not change result type) or read the wrong table.
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("SET search_path = s_a"), *server);
  h.answer(command_result("SET"));
  prepare_locally(h, "q1", "select * from t");
  h.send(query("SET search_path = s_b"), *server);
  h.answer(command_result("SET"));
  prepare_locally(h, "q2", "select * from t");
  const std::string sent = h.send(run_flight("q1") + run_flight("q2"), *server);
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 2u);
  EXPECT_NE(parses[0].first, parses[1].first);
  // A client that never set a search_path keeps the name every such client shares.
  SessionHarness plain;
  prepare_locally(plain, "q", "select * from t");
  auto other = SessionHarness::fresh_server();
  EXPECT_EQ(parses_in(plain.send(run_flight("q"), *other)).at(0).first,
            server_name_of("select * from t"));
}

TEST(SessionPreparedStatements, TheSameTextUnderOtherLiteralSettingsIsAnotherServerStatement) {
  // PostgreSQL reads a statement's literals when it prepares it, by the session's TimeZone,
  // DateStyle, standard_conforming_strings, ...: a client whose settings read them otherwise
  // must not run the copy another client prepared.
  // (What PostgreSQL reports of those it reports, with ParameterStatus.)
  const std::pair<std::string_view, std::string> sets[] = {
      {"SET TimeZone = 'Asia/Tokyo'", parameter_status("TimeZone", "Asia/Tokyo")},
      {"SET DateStyle = 'ISO, DMY'", parameter_status("DateStyle", "ISO, DMY")},
      {"SET standard_conforming_strings = off",
       parameter_status("standard_conforming_strings", "off")},
      {"SET IntervalStyle = 'sql_standard'", parameter_status("IntervalStyle", "sql_standard")},
      {"SET client_encoding = 'LATIN1'", parameter_status("client_encoding", "LATIN1")},
      {"SET transform_null_equals = on", ""},
      {"SET array_nulls = off", ""},
      {"SET xmloption = document", ""},
      {"SET backslash_quote = on", ""}};
  for (const auto& [set, reported] : sets) {
    SCOPED_TRACE(set);
    SessionHarness first;
    prepare_locally(first, "q", "select '01/02/2024'::date");
    auto one = SessionHarness::fresh_server();
    const auto plain = parses_in(first.send(run_flight("q"), *one));
    SessionHarness second;
    auto two = SessionHarness::fresh_server();
    second.send(query(set), *two);
    second.answer(reported + command_result("SET"));
    prepare_locally(second, "q", "select '01/02/2024'::date");
    const auto parses = parses_in(second.send(run_flight("q"), *two));
    ASSERT_EQ(plain.size(), 1u);
    ASSERT_EQ(parses.size(), 1u);
    EXPECT_NE(parses[0].first, plain[0].first);
  }
}

TEST(SettingsStatementContext, OnlySettingsThatChangeHowTextIsReadCount) {
  Settings s;
  EXPECT_EQ(s.statement_context(), 0u);
  s.set("application_name", "meter", true);
  EXPECT_EQ(s.statement_context(), 0u);  // shared with a client that set nothing
  s.set("TimeZone", "UTC", true);
  const std::uint64_t utc = s.statement_context();
  EXPECT_NE(utc, 0u);
  s.set("timezone", "Asia/Tokyo", true);
  EXPECT_NE(s.statement_context(), utc);
  s.set("timezone", "UTC", true);
  EXPECT_EQ(s.statement_context(), utc);
  Settings other;
  other.set("timezone", "UTC", true);
  EXPECT_EQ(other.statement_context(), utc);
}

// A statement is the client's once the server accepted its Parse: one whose Parse fails in the
// flight that binds it is gone, as on PostgreSQL (its name was refused 42P05 for ever).
TEST(SessionPreparedStatements, AStatementWhoseParseFailsInItsBindsFlightIsGone) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(parse("s7", "selec 7") + run_flight("s7"), *server);
  ASSERT_EQ(parses_in(sent).size(), 1u);
  EXPECT_EQ(sqlstates_in(h.answer(error_message("42601") + ready('I'))), "42601");
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  // Its Bind names a statement the server does not have: PostgreSQL's 26000.
  EXPECT_EQ(bound_statements_in(h.send(run_flight("s7"), *server)), std::vector<std::string>{"s7"});
  h.answer(error_message("26000") + ready('I'));
  // And the name is free.
  const std::string again = h.send(parse("s7", "select 77") + run_flight("s7"), *server);
  EXPECT_EQ(sqlstates_in(again), "");
  ASSERT_EQ(parses_in(again).size(), 1u);
  EXPECT_EQ(parses_in(again)[0].second, "select 77");
}

// PostgreSQL skips a Close after an error earlier in its request: the statement stays.
TEST(SessionPreparedStatements, AClosePostgresqlSkippedAfterAnErrorLeavesTheStatement) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  prepare_locally(h, "s1", "select 1/$1::int");
  prepare_locally(h, "s2", "select 2");
  h.send(bind_to("", "s1") + execute() + close_message('S', "s2") + sync(), *server);
  h.answer(parse_complete() + bind_complete() + error_message("22012") + ready('I'));
  EXPECT_EQ(h.session().prepared_statement_count(), 2u);
  const std::string sent = h.send(run_flight("s2"), *server);
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of("select 2")});
  h.answer(parse_complete() + select_answer());
  // Answered, a Close forgets it.
  h.send(close_message('S', "s2") + sync(), *server);
  h.answer(close_complete() + ready('I'));
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

// A Parse in a failed transaction is refused (25P02) and leaves the name as it was.
TEST(SessionPreparedStatements, AParseRefusedInAFailedTransactionKeepsTheStatement) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  prepare_locally(h, "s1", "select 2");
  h.send(query("BEGIN"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.send(query("select 1/0"), *server);
  h.answer(error_message("22012") + ready('E'));
  const std::string sent = h.send(parse("s1", "select $1::int + 1") + sync(), *server);
  h.answer(error_message("25P02") + ready('E'));
  h.send(query("ROLLBACK"), *server);
  h.answer(command_result("ROLLBACK", 'I'));
  const auto parses = parses_in(h.send(run_flight("s1"), *server));
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].second, "select 2");
  EXPECT_TRUE(parses_in(sent).empty() || parses_in(sent)[0].first == "s1");
}

// What PostgreSQL still parses in a failed transaction (ROLLBACK TO, an empty query) is
// translated as always: sent under the client's own name it would stay on a shared server.
TEST(SessionPreparedStatements, AParseAFailedTransactionTakesIsNotSentUnderTheClientsName) {
  for (const char* sql : {"ROLLBACK TO SAVEPOINT a", ""}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    h.send(query("BEGIN"), *server);
    h.answer(command_result("BEGIN", 'T'));
    h.send(query("select 1/0"), *server);
    h.answer(error_message("22012") + ready('E'));
    const std::string sent = h.send(parse("s2", sql) + sync(), *server);
    for (const auto& [name, text] : parses_in(sent)) {
      EXPECT_NE(name, "s2") << '"' << sql << '"';
    }
  }
}

TEST(SessionPreparedStatements, ParseAndSyncBetweenTransactionsAreAnsweredLocally) {
  SessionHarness h;
  prepare_locally(h);
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().link_count(), 0u);
}

TEST(SessionPreparedStatements, SeveralParsesAndFlushAreAnsweredLocally) {
  SessionHarness h;
  const std::string flight = parse("a", "select 1") + parse("b", "select 2") + flush();
  Step s = h.client(flight);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.to_client, parse_complete() + parse_complete());
  EXPECT_EQ(h.session().prepared_statement_count(), 2u);
}

TEST(SessionPreparedStatements, BindOfAStatementTheServerLacksPreparesItFirst) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(run_flight("s1"), *server);
  const std::string name = server_name_of(kSql);
  EXPECT_EQ(tags_of(sent), "PBES");
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].first, name);
  EXPECT_EQ(parses[0].second, kSql);
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{name});
  // The ParseComplete of pgvalve's own Parse is not forwarded.
  EXPECT_EQ(h.answer(parse_complete() + select_answer()), select_answer());
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash(kSql, {})));
}

TEST(SessionPreparedStatements, NextBindOnTheSameServerIsNotPreparedAgain) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string sent = h.send(run_flight("s1"), *server);
  EXPECT_EQ(tags_of(sent), "BES");
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of(kSql)});
  EXPECT_EQ(h.answer(select_answer()), select_answer());
}

// A statement pgvalve prepared that is gone from the server all the same (a DEALLOCATE inside a
// longer query): its Bind fails as on PostgreSQL, and the next one prepares it again.
TEST(SessionPreparedStatements, AStatementGoneFromTheServerIsPreparedAgainAfterIts26000) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  EXPECT_EQ(tags_of(h.send(run_flight("s1"), *server)), "BES");
  h.answer(error_result("26000"));
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash(kSql, {})));
  EXPECT_EQ(tags_of(h.send(run_flight("s1"), *server)), "PBES");
}

// pgvalve's names for statements on servers are no client's: naming one is refused as
// PostgreSQL refuses a name the client never prepared, and a Close of one closes nothing.
TEST(SessionPreparedStatements, PgvalvesOwnStatementNamesAreNoClients) {
  const std::string shared(server_name_of(kSql));
  for (const std::string& request :
       {bind_to("", shared) + execute() + sync(), describe('S', shared) + sync(),
        close_message('S', shared) + sync(), query("DEALLOCATE \"" + shared + "\"")}) {
    SessionHarness h;
    auto server = SessionHarness::fresh_server();
    const std::string sent = h.send(request, *server);
    // Not passed on: refused with the server's help (a raise naming it), or, a Close, turned
    // into one of a name no statement has.
    EXPECT_EQ(sent.find(request.substr(0, request.size() - 5)), std::string::npos) << sent;
    EXPECT_TRUE(sent.find("does not exist") != std::string::npos ||
                sent.find("pgv_none") != std::string::npos)
        << sent;
  }
}

TEST(SessionPreparedStatements, AnotherClientsStatementOfTheSameTextIsShared) {
  auto server = SessionHarness::fresh_server();
  SessionHarness first;
  prepare_locally(first, "a");
  first.send(run_flight("a"), *server);
  first.answer(parse_complete() + select_answer());
  SessionHarness second;
  prepare_locally(second, "b");
  const std::string sent = second.send(run_flight("b"), *server);
  EXPECT_EQ(tags_of(sent), "BES");
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of(kSql)});
}

TEST(SessionPreparedStatements, ParseOfAStatementTheServerHasGetsASyntheticParseCompleteInOrder) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  // Parse (again) + Bind + Execute + Sync: only the Bind onwards reach the server.
  const std::string sent = h.send(parse("s1", kSql) + run_flight("s1"), *server);
  EXPECT_EQ(tags_of(sent), "BES");
  // Nothing is outstanding before it: due at once.
  EXPECT_EQ(h.to_client_local, parse_complete());
  EXPECT_EQ(h.answer(select_answer()), select_answer());
}

TEST(SessionPreparedStatements, SyntheticParseCompleteWaitsForTheAnswersBeforeIt) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(run_flight("s1"));
  h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1") +
           ready('T'));
  // A query is outstanding when the Parse of a statement the server has arrives.
  Step s = h.client(query("select 2") + parse("s2", kSql) + sync());
  EXPECT_EQ(s.to_server, query("select 2") + sync());
  EXPECT_TRUE(s.to_client.empty());
  const std::string select = row_result("2", "SELECT 1", 'T');
  EXPECT_EQ(h.answer(select + ready('T')), select + parse_complete() + ready('T'));
}

TEST(SessionPreparedStatements, SyntheticParseCompleteComesBeforeAnErrorOfTheBind) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  h.send(parse("s1", kSql) + run_flight("s1"), *server);
  EXPECT_EQ(tags_of(h.to_client_local + h.answer(error_message("22P02") + ready())), "1EZ");
}

TEST(SessionPreparedStatements, SyntheticParseCompleteBeforeAFlushIsSentAtOnce) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(run_flight("s1"));
  h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1") +
           ready('T'));
  // In the transaction: Parse of a statement the server has, then Flush (libpq pipeline mode).
  Step s = h.client(parse("s2", kSql) + flush());
  EXPECT_EQ(s.to_server, flush());
  EXPECT_EQ(s.to_client, parse_complete());
}

TEST(SessionPreparedStatements, ParseOnALinkedServerIsPreparedThereUnderItsSharedName) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(parse("s1", kSql) + sync());
  const auto parses = parses_in(s.to_server);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].first, server_name_of(kSql));
  // This ParseComplete answers the client's own Parse: forwarded.
  EXPECT_EQ(h.answer(parse_complete() + ready('T')), parse_complete() + ready('T'));
}

TEST(SessionPreparedStatements, DescribeOfANamedStatementIsRenamed) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(describe('S', "s1") + sync(), *server);
  const std::string name = server_name_of(kSql);
  EXPECT_EQ(tags_of(sent), "PDS");
  EXPECT_EQ(targets_in(sent, 'D'), std::vector<std::string>{"S:" + name});
  const std::string described = message('t', std::string("\0\1\0\0\0\x17", 6)) + row_description();
  EXPECT_EQ(h.answer(parse_complete() + described + ready()), described + ready());
}

TEST(SessionPreparedStatements, DescribeOfAPortalPassesUnchanged) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  const std::string sent =
      h.send(bind_to("p", "s1") + describe('P', "p") + execute("p") + sync(), *server);
  EXPECT_EQ(targets_in(sent, 'D'), std::vector<std::string>{"P:p"});
}

TEST(SessionPreparedStatements, CloseOfANamedStatementLeavesTheSharedOneOnTheServer) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string sent = h.send(close_message('S', "s1") + sync(), *server);
  const auto closes = targets_in(sent, 'C');
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_NE(closes[0], "S:" + server_name_of(kSql));
  EXPECT_NE(closes[0], "S:s1");
  EXPECT_EQ(h.answer(close_complete() + ready()), close_complete() + ready());
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash(kSql, {})));
}

TEST(SessionPreparedStatements, CloseOfAPortalOrUnknownStatementPassesUnchanged) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight = close_message('P', "p") + close_message('S', "nope") + sync();
  EXPECT_EQ(h.send(flight, *server), flight);
  const std::string answer = close_complete() + close_complete() + ready();
  EXPECT_EQ(h.answer(answer), answer);
}

TEST(SessionPreparedStatements, DeallocateIsAnsweredWithoutTouchingTheSharedStatement) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string sent = h.send(query("DEALLOCATE s1"), *server);
  EXPECT_EQ(queries_in(sent), std::vector<std::string>{""});
  std::string empty;
  protocol::append_empty_query_response(empty);
  EXPECT_EQ(h.answer(empty + ready()), complete("DEALLOCATE") + ready());
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash(kSql, {})));
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
}

// psycopg 3 evicts statements from its cache with `DEALLOCATE name` through the extended
// protocol (Parse, Bind, Describe, Execute, Sync of the unnamed statement).
std::string extended_deallocate(std::string_view name) {
  return parse("", "DEALLOCATE " + std::string(name)) + bind_to("", "") + describe('P', "") +
         execute() + sync();
}

TEST(SessionPreparedStatements, DeallocateThroughTheExtendedProtocolIsAnsweredInOrder) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string sent = h.send(extended_deallocate("s1"), *server);
  // The server never hears the client's name: an empty query stands in.
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0], std::make_pair(std::string(), std::string()));
  EXPECT_EQ(tags_of(sent), "PBDES");
  std::string empty;
  protocol::append_empty_query_response(empty);
  EXPECT_EQ(h.answer(parse_complete() + bind_complete() + no_data() + empty + ready()),
            parse_complete() + bind_complete() + no_data() + complete("DEALLOCATE") + ready());
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash(kSql, {})));
  // The name is free again, as on PostgreSQL.
  prepare_locally(h, "s1", "select 2");
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

// psycopg sends its DEALLOCATEs inside pipelines: one the server skips after an earlier error
// of the flight runs nothing, and the client keeps its statement, as on PostgreSQL.
TEST(SessionPreparedStatements, ADeallocateTheServerSkipsForgetsNothing) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(describe('S', "missing") + extended_deallocate("s1"), *server);
  h.answer(error_message("26000") + ready('I'));
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

// A Parse pipelined behind DEALLOCATE may define the name again: the new statement stays.
TEST(SessionPreparedStatements, AStatementDefinedAgainBehindItsDeallocateStays) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string sent = h.send(
      query("DEALLOCATE s1") + parse("s1", "select 2") + bind_to("", "s1") + execute() + sync(),
      *server);
  EXPECT_EQ(queries_in(sent), std::vector<std::string>{""});
  std::string empty;
  protocol::append_empty_query_response(empty);
  const std::string to_client = h.answer(empty + ready() + parse_complete() + bind_complete() +
                                         data_row({"2"}) + complete("SELECT 1") + ready());
  EXPECT_EQ(tags_of(to_client), "CZ12DCZ");
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
  // It is the new one: a Bind prepares "select 2" where it is missing.
  auto other = SessionHarness::fresh_server();
  const auto parses = parses_in(h.send(run_flight("s1"), *other));
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].second, "select 2");
}

TEST(SessionPreparedStatements, ExtendedDeallocateOfANameTheClientClosedMeanwhileIs26000) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(
      parse("", "DEALLOCATE s1") + close_message('S', "s1") + bind_to("", "") + execute() + sync(),
      *server);
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 2u);
  EXPECT_EQ(parses[0].second, "");
  EXPECT_NE(parses[1].second.find("ERRCODE = '26000'"), std::string::npos) << parses[1].second;
  EXPECT_EQ(tags_of(sent), "PCBPBES");
  // Forgotten once the server answered the Close.
  h.answer(parse_complete() + close_complete() + bind_complete() + error_message("26000") +
           ready());
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
}

TEST(SessionPreparedStatements, ExtendedDeallocateOfAnSqlPreparedStatementGoesToTheServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string flight = extended_deallocate("q1");  // PREPARE q1 AS ...: the server's own
  EXPECT_EQ(h.send(flight, *server), flight);
}

TEST(SessionPreparedStatements, ExtendedDeallocateInAFailedTransactionGoesToTheServer) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("select 1/0"));
  h.answer(error_result("22012", 'E'));
  const std::string flight = extended_deallocate("s1");
  EXPECT_EQ(h.client(flight).to_server, flight);
  h.answer(error_message("25P02") + ready('E'));
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

TEST(SessionPreparedStatements, DeallocateInAFailedTransactionFailsOnTheServerAndForgetsNothing) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("select 1/0"));
  h.answer(error_result("22012", 'E'));
  // PostgreSQL refuses every statement of a failed transaction, DEALLOCATE too (25P02).
  const std::string q = query("DEALLOCATE s1");
  EXPECT_EQ(h.client(q).to_server, q);
  h.answer(error_result("25P02", 'E'));
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

TEST(SessionPreparedStatements, DeallocatePrepareOfAnSqlStatementGoesToTheServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string q = query("DEALLOCATE PREPARE q1");  // not a protocol-level statement
  EXPECT_EQ(h.send(q, *server), q);
}

TEST(SessionPreparedStatements, DeallocateAllForgetsEveryStatementOnBothSides) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());
  const std::string q = query("DEALLOCATE ALL");
  EXPECT_EQ(h.send(q, *server), q);
  h.answer(command_result("DEALLOCATE ALL"));
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  EXPECT_EQ(server->statements.size(), 0u);
}

// PostgreSQL runs a Parse sent behind DEALLOCATE ALL or DISCARD ALL after it: that statement
// exists afterwards, on the client's side and on the server (found by the session fuzz target).
TEST(SessionPreparedStatements, AStatementPreparedBehindDeallocateAllOutlivesIt) {
  for (const char* forget : {"DEALLOCATE ALL", "DISCARD ALL"}) {
    SessionHarness h;
    prepare_locally(h);
    auto server = SessionHarness::fresh_server();
    const std::string sent =
        h.send(query(forget) + parse("s2", "select 2") + run_flight("s2"), *server);
    EXPECT_EQ(tags_of(sent), "QPBES") << forget;
    h.answer(command_result(forget) + parse_complete() + select_answer());
    EXPECT_EQ(h.session().prepared_statement_count(), 1u) << forget << ": s1 went, s2 stays";
    EXPECT_EQ(server->statements.size(), 1u) << forget;
    EXPECT_EQ(tags_of(h.send(run_flight("s2"), *server)), "BES")
        << forget << ": the server has s2 already; preparing it again would fail (42P05)";
  }
}

TEST(SessionPreparedStatements, LeastRecentlyUsedStatementIsEvictedAtTheCap) {
  SessionOptions o;
  o.max_prepared_statements = 2;
  SessionHarness h(o);
  prepare_locally(h, "a", "select 1");
  prepare_locally(h, "b", "select 2");
  prepare_locally(h, "c", "select 3");
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("a"), *server);
  EXPECT_EQ(h.last.statement_evictions, 0);
  h.answer(parse_complete() + select_answer());
  h.send(run_flight("b"), *server);
  h.answer(parse_complete() + select_answer());
  h.send(run_flight("a"), *server);  // a is now more recently used than b
  h.answer(select_answer());
  const std::string sent = h.send(run_flight("c"), *server);
  EXPECT_EQ(h.last.statement_evictions, 1);
  EXPECT_EQ(tags_of(sent), "CPBES");
  EXPECT_EQ(targets_in(sent, 'C'), std::vector<std::string>{"S:" + server_name_of("select 2")});
  // Neither the CloseComplete nor the ParseComplete of pgvalve's own messages is forwarded.
  EXPECT_EQ(h.answer(close_complete() + parse_complete() + select_answer()), select_answer());
  EXPECT_EQ(server->statements.size(), 2u);
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash("select 2", {})));
  // b is prepared again when used.
  EXPECT_EQ(tags_of(h.send(run_flight("b"), *server)), "CPBES");
}

TEST(SessionPreparedStatements, EvictionSkippedAfterAnErrorKeepsTheStatementKnown) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  prepare_locally(h, "a", "select 1");
  prepare_locally(h, "b", "select 2");
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("a"), *server);
  h.answer(parse_complete() + select_answer());
  // a runs and fails; b would evict a, but the server skips everything up to the Sync.
  const std::string sent = h.send(bind_to("", "a") + execute() + run_flight("b"), *server);
  EXPECT_EQ(tags_of(sent), "BECPBES");
  h.answer(bind_complete() + error_message("22012") + ready());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})));
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash("select 2", {})));
  // a is still prepared there: not prepared again (the server would say it exists).
  EXPECT_EQ(tags_of(h.send(run_flight("a"), *server)), "BES");
}

// Found by the session fuzz target: a statement whose eviction Close was pipelined behind a
// request that then fails is still on the server; preparing it again in a later flight must
// not find it there (42P05).
TEST(SessionPreparedStatements, AStatementPreparedAgainAfterASkippedEvictionIsClosedFirst) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  prepare_locally(h, "a", "select 1");
  prepare_locally(h, "b", "select 2");
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("a"), *server);
  h.answer(parse_complete() + select_answer());
  // a fails; b evicts a (skipped by the server after the error); then a is used again.
  const std::string sent =
      h.send(bind_to("", "a") + execute() + run_flight("b") + run_flight("a"), *server);
  EXPECT_EQ(tags_of(sent), "BECPBESCCPBES");
  EXPECT_EQ(targets_in(sent, 'C'), (std::vector<std::string>{"S:" + server_name_of("select 1"),
                                                             "S:" + server_name_of("select 2"),
                                                             "S:" + server_name_of("select 1")}))
      << "a is closed again before its Parse: its first Close may have been skipped";
  h.answer(bind_complete() + error_message("22012") + ready());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})));
  h.answer(close_complete() + close_complete() + parse_complete() + select_answer());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})));
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash("select 2", {})));
}

// The same, within one flight that fails: the statement evicted and prepared again in it is
// still on the server after the error (its Close and its Parse were both skipped).
TEST(SessionPreparedStatements, AStatementEvictedAndPreparedAgainInAFailedFlightIsStillKnown) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  prepare_locally(h, "a", "select 1");
  prepare_locally(h, "b", "select 2");
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("a"), *server);
  h.answer(parse_complete() + select_answer());
  std::string flight = bind_to("", "a") + execute();
  flight += bind_to("", "b") + execute() + bind_to("", "a") + execute() + sync();
  h.send(flight, *server);
  h.answer(bind_complete() + error_message("22012") + ready());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})))
      << "its Close was skipped: a is still prepared there";
  EXPECT_EQ(tags_of(h.send(run_flight("a"), *server)), "BES");
}

// Found by the session fuzz target: DEALLOCATE ALL answered while a Parse pipelined after it and
// that statement's eviction Close are still to be answered. The server ends without it.
TEST(SessionPreparedStatements, AStatementEvictedRightAfterDeallocateAllIsPreparedAgain) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  const std::string sent =
      h.send(query("DEALLOCATE ALL") + parse("p", "select 1") + parse("q", "select 2"), *server);
  EXPECT_EQ(tags_of(sent), "QPCP");
  h.answer(command_result("DEALLOCATE ALL") + parse_complete() + close_complete() +
           parse_complete());
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash("select 1", {})));
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 2", {})));
  const Step s = h.client(run_flight("p"));
  EXPECT_EQ(tags_of(s.to_server), "CPBES");
  const auto parses = parses_in(s.to_server);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].first, server_name_of("select 1"));
}

// Found by the session fuzz target: a flight fails after pgvalve sent the next one, which evicts
// the statement the failed flight parsed and prepares it again. The error must not undo what the
// later flight does: the server ends with the statement.
TEST(SessionPreparedStatements, AFailedFlightDoesNotUndoAPreparationPipelinedBehindIt) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  EXPECT_EQ(tags_of(h.send(failing_flight_parsing("p", "select 1"), *server)), "DPS");
  const Step s = h.client(parse("q", "select 2") + parse("r", "select 1") + run_flight("r"));
  // Each Parse is preceded by a Close of the same statement: whether the server has it depends
  // on the flight still to be answered.
  EXPECT_EQ(tags_of(s.to_server), "CPCCPBES");
  h.answer(error_message("26000") + ready('I'));
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})));
  h.answer(close_complete() + parse_complete() + close_complete() + close_complete() +
           parse_complete() + select_answer());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash("select 1", {})));
  EXPECT_EQ(tags_of(h.send(run_flight("p"), *server)), "BES") << "prepared there: not again";
}

// A Bind pipelined behind a flight whose Parse of its statement is still unanswered: if that
// flight fails the server will not have the statement, so it is closed and prepared again in the
// Bind's own flight (which is right whether the first Parse happens or not).
TEST(SessionPreparedStatements, ABindBehindAnUnansweredParseOfAnEarlierFlightPreparesItAgain) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  EXPECT_EQ(tags_of(h.send(failing_flight_parsing("p", kSql), *server)), "DPS");
  const Step s = h.client(run_flight("p"));
  EXPECT_EQ(tags_of(s.to_server), "CPBES");
  EXPECT_EQ(bound_statements_in(s.to_server), std::vector<std::string>{server_name_of(kSql)});
  h.answer(error_message("26000") + ready('I'));
  EXPECT_EQ(h.answer(close_complete() + parse_complete() + select_answer()), select_answer());
  EXPECT_TRUE(server->statements.contains(protocol::statement_hash(kSql, {})));
}

// After a failed flight whose eviction Close was itself uncertain, the statement counts as absent
// and every later Parse on that server is preceded by a Close.
TEST(SessionPreparedStatements, AnUncertainStatementIsClosedBeforeItIsParsedAgain) {
  SessionOptions o;
  o.max_prepared_statements = 1;
  SessionHarness h(o);
  auto server = SessionHarness::fresh_server();
  // p's Parse is unanswered when q evicts it: that Close is uncertain. Both flights fail.
  EXPECT_EQ(tags_of(h.send(failing_flight_parsing("p", "select 1"), *server)), "DPS");
  EXPECT_EQ(tags_of(h.client(failing_flight_parsing("q", "select 2")).to_server), "DCPS");
  h.answer(error_message("26000") + ready('I'));
  h.answer(error_message("26000") + ready('I'));
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash("select 1", {})));
  EXPECT_TRUE(server->statements.close_before_parse());
  const std::string sent = h.send(run_flight("p"), *server);
  EXPECT_EQ(tags_of(sent), "CPBES");
  EXPECT_EQ(targets_in(sent, 'C'), std::vector<std::string>{"S:" + server_name_of("select 1")});
}

TEST(SessionPreparedStatements, ErrorOfTheRepreparationIsTheBindsError) {
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  // The table does not exist: the server fails pgvalve's Parse and skips to the Sync.
  const std::string failure = error_message("42P01") + ready();
  EXPECT_EQ(h.answer(failure), failure);
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  EXPECT_FALSE(server->statements.contains(protocol::statement_hash(kSql, {})));
  // As PostgreSQL, whose Parse would have failed: the client has no s1 (the server says 26000
  // to its next Bind), and may prepare another statement under the name.
  EXPECT_EQ(h.session().prepared_statement_count(), 0u);
  EXPECT_EQ(tags_of(h.send(run_flight("s1"), *server)), "BES");
  h.answer(error_message("26000") + ready());
  prepare_locally(h, "s1", "select 'fixed'");
}

TEST(SessionPreparedStatements, AFailureOfTheMomentLeavesAStatementNoServerAcceptedYet) {
  // Its first Parse lands in an aborted transaction (25P02): it is prepared again next time.
  SessionHarness h;
  prepare_locally(h);
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(error_message("25P02") + ready('E'));
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

TEST(SessionPreparedStatements, AStatementOnceAcceptedIsKeptWhenAnotherServerFailsItsParse) {
  // A lock timeout while another server prepares it again: the client's statement stands.
  SessionHarness h;
  prepare_locally(h);
  auto first = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *first);
  h.answer(parse_complete() + select_answer());
  auto second = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *second);
  h.answer(error_message("55P03") + ready());
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

TEST(SessionPreparedStatements, FailedParseOnTheServerIsForgottenThere) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(parse("s1", "selec oops") + sync());
  EXPECT_EQ(tags_of(h.answer(error_message("42601") + ready('E'))), "EZ");
  EXPECT_EQ(server->statements.size(), 0u);
}

TEST(SessionPreparedStatements, SessionModePassesNamesUnchanged) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, server.get());
  const std::string flight = parse("s1", kSql) + bind_to("", "s1") + execute() + sync();
  Step s = h.client(flight);
  EXPECT_EQ(s.to_server, flight);
}

TEST(SessionPreparedStatements, AStatementNoServerAcceptedYetIsReplacedByAnotherParse) {
  // Its Parse was answered by pgvalve (or skipped by the server after an earlier error):
  // PostgreSQL never had it, and the driver prepares another under the name.
  SessionHarness h;
  prepare_locally(h, "s1", "select 1");
  prepare_locally(h, "s1", "select 2");
  auto server = SessionHarness::fresh_server();
  const auto parses = parses_in(h.send(run_flight("s1"), *server));
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].second, "select 2");
}

TEST(SessionPreparedStatements, AnotherStatementUnderAKnownNameIs42P05AsOnPostgreSQL) {
  SessionHarness h;
  prepare_locally(h, "s1", "select 1");
  auto server = SessionHarness::fresh_server();
  h.send(run_flight("s1"), *server);
  h.answer(parse_complete() + select_answer());  // a server accepted it
  const std::string sent = h.send(parse("s1", "select 2") + run_flight("s1"), *server);
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_NE(parses[0].second.find("ERRCODE = '42P05'"), std::string::npos) << parses[0].second;
  // The server raises it; the client gets it without the PL/pgSQL context.
  std::string fields;
  for (const std::string f :
       {"SERROR", "VERROR", "C42P05", "Mpgvalve: prepared statement \"s1\" already exists",
        "WPL/pgSQL function inline_code_block line 1 at RAISE", "Rexec_stmt_raise"}) {
    fields += f;
    fields += '\0';
  }
  fields += '\0';
  const std::string error = message('E', fields);
  Step s = h.server(message('1', "") + message('2', "") + error + ready());
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(s.to_client.find("inline_code_block"), std::string::npos);
  EXPECT_EQ(errors_in(s.to_client)[0].sqlstate, "42P05");
  // The first definition stands.
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
}

TEST(SessionPreparedStatements, AParsePipelinedBehindDiscardAllMayReuseTheName) {
  // PostgreSQL runs the DISCARD ALL before the Parse: the name is free again by then.
  for (const char* forget : {"DISCARD ALL", "DEALLOCATE ALL"}) {
    SessionHarness h;
    prepare_locally(h, "s1", "select 1");
    auto server = SessionHarness::fresh_server();
    h.send(run_flight("s1"), *server);
    h.answer(parse_complete() + select_answer());  // a server accepted it
    const std::string sent =
        h.send(query(forget) + parse("s1", "select 2") + run_flight("s1"), *server);
    const auto parses = parses_in(sent);
    ASSERT_EQ(parses.size(), 1u) << forget;
    EXPECT_EQ(parses[0].second, "select 2") << forget;
    EXPECT_EQ(h.session().prepared_statement_count(), 1u) << forget;
  }
}

TEST(SessionPreparedStatements, TooManyStatementsAreRefusedWith53400OnTheServer) {
  SessionHarness h;
  std::string flight;
  for (std::size_t i = 0; i < kMaxClientStatements; ++i)
    flight += parse("s" + std::to_string(i), "select " + std::to_string(i));
  flight += sync();
  Step s = h.client(flight);
  ASSERT_FALSE(s.check_out);
  ASSERT_EQ(h.session().prepared_statement_count(), kMaxClientStatements);
  // Preparing a known name again with its text is fine; one more name is not.
  prepare_locally(h, "s0", "select 0");
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(parse("one_more", "select 1") + run_flight("one_more"), *server);
  EXPECT_TRUE(h.checked_out);
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_EQ(parses[0].first, "");
  EXPECT_NE(parses[0].second.find("ERRCODE = '53400'"), std::string::npos) << parses[0].second;
  // The rest of the flight is not sent, up to its Sync.
  EXPECT_EQ(tags_of(sent), "PBES");
  EXPECT_EQ(h.session().prepared_statement_count(), kMaxClientStatements);
  const std::string to_client =
      h.answer(parse_complete() + bind_complete() + error_message("53400") + ready());
  EXPECT_EQ(tags_of(to_client), "EZ");
  EXPECT_EQ(sqlstates_in(to_client), "53400");
}

TEST(SessionPreparedStatements, TooMuchStatementTextIsRefusedWith54000OnTheServer) {
  SessionHarness h;
  const std::size_t chunk = 8u << 20;
  for (int i = 0; i < 4; ++i) {
    std::string sql = "select '" + std::string(chunk - 10, 'x') + "'";
    sql.resize(chunk, ' ');
    prepare_locally(h, "big" + std::to_string(i), sql);
  }
  auto server = SessionHarness::fresh_server();
  const std::string sent = h.send(parse("one_more", "select 1") + sync(), *server);
  const auto parses = parses_in(sent);
  ASSERT_EQ(parses.size(), 1u);
  EXPECT_NE(parses[0].second.find("ERRCODE = '54000'"), std::string::npos);
  EXPECT_EQ(h.session().prepared_statement_count(), 4u);
  // Closing one makes room again.
  h.answer(parse_complete() + bind_complete() + error_message("54000") + ready());
  h.send(close_message('S', "big0") + sync(), *server);
  h.answer(close_complete() + ready());
  prepare_locally(h, "one_more", "select 1");
}

// ---- The unnamed statement between requests ----
// PostgreSQL keeps the unnamed statement until the next one (or a simple query); with
// transaction pooling the server of a later request may hold another client's.

std::string bind_execute_sync() {
  return bind_to("", "") + execute() + sync();
}
std::string no_parameters() {
  return std::string("t\0\0\0\6\0\0", 7);
}

// What went to the server in place of a Bind of an unnamed statement it does not hold: the
// error pgvalve raises there (26000).
bool raises_26000(const std::string& sent) {
  const auto parses = parses_in(sent);
  return !parses.empty() && parses[0].second.find("'26000'") != std::string::npos;
}

// pgx's describe step: Parse and Describe of the unnamed statement, answered, with a Sync.
void describe_unnamed(SessionHarness& h, ServerState& server, std::string_view sql) {
  h.send(parse("", sql) + describe('S', "") + sync(), server);
  h.answer(parse_complete() + no_parameters() + row_description() + ready());
}

TEST(SessionUnnamedStatement, AnotherClientsUnnamedStatementIsNeverBound) {
  auto server = SessionHarness::fresh_server();
  SessionHarness a;
  a.send(parse("", "select 'secret of a'") + sync(), *server);
  a.answer(parse_complete() + ready());
  SessionHarness b;  // never parsed one
  const std::string sent = b.send(bind_execute_sync(), *server);
  EXPECT_EQ(tags_of(sent), "PBES");  // the Bind runs an error in its place
  EXPECT_TRUE(raises_26000(sent));
  EXPECT_TRUE(parses_in(sent)[0].second.find("pgvalve: unnamed prepared statement does not "
                                             "exist") != std::string::npos);
}

// pgx's describe-then-execute: Parse and Describe with a Sync, the Bind in the next request.
TEST(SessionUnnamedStatement, AStatementDescribedAndBoundLaterIsPreparedAgainElsewhere) {
  auto first = SessionHarness::fresh_server();
  auto second = SessionHarness::fresh_server();
  SessionHarness h;
  describe_unnamed(h, *first, "select $1::int");
  // On the server that still holds it: sent as it is.
  EXPECT_EQ(tags_of(h.send(bind_execute_sync(), *first)), "BES");
  h.answer(bind_complete() + data_row({"1"}) + complete("SELECT 1") + ready());
  // On another: its Parse first, whose answer the client does not get.
  const std::string sent = h.send(bind_execute_sync(), *second);
  EXPECT_EQ(tags_of(sent), "PBES");
  EXPECT_EQ(parses_in(sent)[0], std::make_pair(std::string(), std::string("select $1::int")));
  EXPECT_EQ(h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1") +
                     ready()),
            bind_complete() + data_row({"1"}) + complete("SELECT 1") + ready());
  EXPECT_EQ(second->unnamed_statement_of, h.session().identity());
}

// A server that holds an older unnamed statement of the same client gets the newer one.
TEST(SessionUnnamedStatement, AServerHoldingTheClientsOlderOneGetsTheNewer) {
  auto first = SessionHarness::fresh_server();
  auto second = SessionHarness::fresh_server();
  SessionHarness h;
  describe_unnamed(h, *first, "select 1");
  describe_unnamed(h, *second, "select 2");
  const std::string sent = h.send(bind_execute_sync(), *first);
  EXPECT_EQ(tags_of(sent), "PBES");
  EXPECT_EQ(parses_in(sent)[0], std::make_pair(std::string(), std::string("select 2")));
}

// node-postgres, libpq's PQexecParams: the Bind follows its Parse, nothing is kept; a later
// Bind alone reaches only the server that still has the client's statement.
TEST(SessionUnnamedStatement, AStatementBoundInItsRequestIsNotKept) {
  auto first = SessionHarness::fresh_server();
  auto second = SessionHarness::fresh_server();
  SessionHarness h;
  h.send(parse("", "select 1") + bind_execute_sync(), *first);
  h.answer(parse_complete() + select_answer());
  EXPECT_EQ(tags_of(h.send(bind_execute_sync(), *first)), "BES");
  h.answer(select_answer());
  const std::string sent = h.send(bind_execute_sync(), *second);
  EXPECT_TRUE(raises_26000(sent));
}

// A simple query ends the unnamed statement, on PostgreSQL as here; so does pgvalve's own.
TEST(SessionUnnamedStatement, ASimpleQueryEndsIt) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h;
  describe_unnamed(h, *server, "select 1");
  h.send(query("select 2"), *server);
  h.answer(row_result("2", "SELECT 1"));
  EXPECT_EQ(server->unnamed_statement_of, 0u);
  const std::string sent = h.send(bind_execute_sync(), *server);
  EXPECT_TRUE(raises_26000(sent));
}

// A Parse the server skipped after an error earlier in its flight made nothing: the server
// may still hold another client's unnamed statement, which a later Bind must not reach.
TEST(SessionUnnamedStatement, AParseSkippedAfterAnErrorMarksNothing) {
  auto server = SessionHarness::fresh_server();
  SessionHarness a;
  describe_unnamed(a, *server, "select 'of a'");
  SessionHarness b;
  b.send(describe('S', "missing") + parse("", "select 'of b'") + describe('S', "") + sync(),
         *server);
  b.answer(error_message("26000") + ready());
  const std::string sent = b.send(bind_execute_sync(), *server);
  EXPECT_EQ(tags_of(sent), "PBES");
  EXPECT_EQ(parses_in(sent)[0], std::make_pair(std::string(), std::string("select 'of b'")));
}

// Closing the unnamed statement of another client would take it from that client.
TEST(SessionUnnamedStatement, ClosingItLeavesAnotherClientsAlone) {
  auto server = SessionHarness::fresh_server();
  SessionHarness a;
  describe_unnamed(a, *server, "select 1");
  SessionHarness b;
  const std::string sent = b.send(close_message('S', "") + sync(), *server);
  EXPECT_EQ(sent.find(std::string("C\0\0\0\6S\0", 7)), std::string::npos);
  EXPECT_EQ(server->unnamed_statement_of, a.session().identity());
}

// After ALTER TABLE changes what a statement returns, PostgreSQL fails each Bind of a statement
// prepared before (0A000, "cached plan must not change result type") until the client prepares
// it again; drivers (pgx, pgjdbc) take those words as their cue to. A client whose statement
// pgvalve prepared again silently would get rows of the new shape under the old description.
TEST(SessionPreparedStatements, AStatementWhoseResultTypeChangedFailsUntilPreparedAgain) {
  using namespace std::chrono_literals;
  constexpr std::string_view kChanged = "cached plan must not change result type";
  StatementChanges process;  // every worker's record
  auto server = SessionHarness::fresh_server();
  SessionHarness a;
  a.workspaces().share_statement_changes(&process);
  SessionHarness b;  // a client of another worker, its statement prepared before the change
  b.workspaces().share_statement_changes(&process);
  prepare_locally(a, "s1");
  prepare_locally(b, "s1");
  a.send(run_flight("s1"), *server);
  a.answer(parse_complete() + select_answer());

  // The table changes; the server says so at a's next Bind.
  a.send(run_flight("s1"), *server, nullptr, T0 + 1s);
  const std::string failed = error_message("0A000", "ERROR", kChanged) + ready('I');
  EXPECT_EQ(sqlstates_in(a.answer(failed, T0 + 1s)), "0A000");
  // Every later Bind of s1 fails the same way, without running it.
  for (SessionHarness* h : {&a, &b}) {
    const std::string sent = h->send(run_flight("s1"), *server, nullptr, T0 + 2s);
    EXPECT_TRUE(bound_statements_in(sent).empty() ||
                bound_statements_in(sent) == std::vector<std::string>{""});
    EXPECT_NE(sent.find(kChanged), std::string::npos) << "raised by the server for the client";
    EXPECT_TRUE(parses_in(sent).size() == 1 && parses_in(sent)[0].first.empty());
    h->answer(
        parse_complete() + bind_complete() + error_message("0A000", "ERROR", kChanged) + ready('I'),
        T0 + 2s);
  }
  // Prepared again (pgx: another name; lib/pq: the same after a Close), it runs on a statement
  // the server prepares afresh.
  EXPECT_EQ(a.client(parse("s2", kSql) + sync(), T0 + 3s).to_client, parse_complete() + ready('I'));
  const std::string sent = a.send(run_flight("s2"), *server, nullptr, T0 + 3s);
  EXPECT_EQ(tags_of(sent), "CPBES") << "the stale one closed, the statement prepared again";
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of(kSql)});
}

constexpr std::string_view kChangedResultType = "cached plan must not change result type";

// `h` runs s1 on `server` a second after T0 and the server finds a table it reads changed
// (0A000): the SQLSTATEs the client got.
std::string run_found_changed(SessionHarness& h, ServerState& server) {
  const auto at = T0 + std::chrono::seconds(1);
  h.send(run_flight("s1"), server, nullptr, at);
  return sqlstates_in(
      h.answer(error_message("0A000", "ERROR", kChangedResultType) + ready('I'), at));
}

// Whether pgvalve answers `h`'s next run of s1 (on `server`, two seconds after T0) with
// PostgreSQL's 0A000 itself.
bool refused_as_changed(SessionHarness& h, ServerState& server) {
  const std::string sent = h.send(run_flight("s1"), server, nullptr, T0 + std::chrono::seconds(2));
  return sent.find(kChangedResultType) != std::string::npos;
}

// A table changed in one database (or for one user) says nothing of the same text in another:
// the record of stale statements is kept per database and user.
TEST(SessionPreparedStatements, AStatementChangedInOneDatabaseStillRunsInAnother) {
  StatementChanges process;
  auto server = SessionHarness::fresh_server();
  auto elsewhere = SessionHarness::fresh_server();
  SessionHarness a({}, {{"user", "app"}, {"database", "other"}});
  a.workspaces().share_statement_changes(&process);
  SessionHarness b({}, {{"user", "app"}, {"database", "telemetry"}});
  b.workspaces().share_statement_changes(&process);
  SessionHarness c({}, {{"user", "app"}, {"database", "other"}});
  c.workspaces().share_statement_changes(&process);
  prepare_locally(a, "s1");
  prepare_locally(b, "s1");
  prepare_locally(c, "s1");
  a.send(run_flight("s1"), *server);
  a.answer(parse_complete() + select_answer());
  EXPECT_EQ(run_found_changed(a, *server), "0A000");
  // telemetry's client runs its statement.
  const std::string sent =
      b.send(run_flight("s1"), *elsewhere, nullptr, T0 + std::chrono::seconds(2));
  EXPECT_EQ(sent.find(kChangedResultType), std::string::npos);
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of(kSql)});
  // Another client of the changed database gets PostgreSQL's error.
  EXPECT_TRUE(refused_as_changed(c, *elsewhere));
}

// Drivers send the startup parameters in any order (pgx from a Go map), and a client that names
// no database gets its user's: every client of one database and user finds the same record (a
// client that logged in with the other order got 08P01 from a statement prepared afresh).
TEST(SessionPreparedStatements, AStatementChangedIsStaleForEveryClientOfItsDatabaseAndUser) {
  StatementChanges process;
  auto server = SessionHarness::fresh_server();
  auto elsewhere = SessionHarness::fresh_server();
  SessionHarness a({}, {{"user", "app"}, {"database", "app"}});
  a.workspaces().share_statement_changes(&process);
  SessionHarness reversed({}, {{"database", "app"}, {"user", "app"}});
  reversed.workspaces().share_statement_changes(&process);
  SessionHarness unnamed({}, {{"user", "app"}});
  unnamed.workspaces().share_statement_changes(&process);
  prepare_locally(a, "s1");
  prepare_locally(reversed, "s1");
  prepare_locally(unnamed, "s1");
  a.send(run_flight("s1"), *server);
  a.answer(parse_complete() + select_answer());
  EXPECT_EQ(run_found_changed(a, *server), "0A000");
  EXPECT_TRUE(refused_as_changed(reversed, *elsewhere));
  EXPECT_TRUE(refused_as_changed(unnamed, *elsewhere));
}

// A client pinned to its server (a temporary table of the name its statement reads) finds its
// statement changed for itself alone: other clients' statements of the text still run.
TEST(SessionPreparedStatements, APinnedClientsOwnChangeIsNoOneElses) {
  StatementChanges process;
  auto server = SessionHarness::fresh_server();
  auto elsewhere = SessionHarness::fresh_server();
  SessionHarness a;
  a.workspaces().share_statement_changes(&process);
  SessionHarness b;
  b.workspaces().share_statement_changes(&process);
  prepare_locally(a, "s1");
  prepare_locally(b, "s1");
  a.send(run_flight("s1"), *server);
  a.answer(parse_complete() + select_answer());
  a.send(query("create temp table t (a int, b int)"), *server);
  a.server(command_result("CREATE TABLE"));
  a.server(pin_check_result(true));
  ASSERT_TRUE(a.session().pinned());
  EXPECT_EQ(run_found_changed(a, *server), "0A000");
  // The pinned client's statement stays stale for it, as on PostgreSQL.
  EXPECT_TRUE(refused_as_changed(a, *server));
  const std::string sent =
      b.send(run_flight("s1"), *elsewhere, nullptr, T0 + std::chrono::seconds(2));
  EXPECT_EQ(sent.find(kChangedResultType), std::string::npos);
  EXPECT_EQ(bound_statements_in(sent), std::vector<std::string>{server_name_of(kSql)});
}

// ---- The shape of a statement's rows, as the client was told it -------------------------------

// Prepares and describes s1 on `server` (asyncpg's prepare(), pgx): the client decodes its rows
// by `description` from then on.
void prepare_described(SessionHarness& h, ServerState& server, const std::string& description) {
  const std::string flight = parse("s1", kSql) + describe('S', "s1") + sync();
  h.send(flight, server);
  const std::string answer = parse_complete() + no_parameters() + description + ready('I');
  EXPECT_EQ(h.answer(answer), answer);
}

// The client's request once `server` is linked for it: what pgvalve sent.
Step linked_for(SessionHarness& h, std::string_view input, ServerState& server) {
  Step s = h.client(input);
  EXPECT_TRUE(s.check_out);
  s = h.linked(server);
  if (!s.to_server.empty()) s = h.server(h.sync_answer);
  return h.client(input);
}

// After ALTER TABLE adds a column, a server that prepares the statement afresh would send rows
// of two columns to a client that decodes one: PostgreSQL would refuse the client's cached plan
// instead. pgvalve asks the server for the statement's shape before the Bind and refuses alike.
TEST(SessionStatementShapes, AStatementPreparedAfreshWithAnotherShapeFailsAsOnPostgreSQL) {
  constexpr std::string_view kChanged = "cached plan must not change result type";
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, row_description(1));
  auto second = SessionHarness::fresh_server();
  const std::string run = run_flight("s1");
  Step s = linked_for(h, run, *second);
  EXPECT_EQ(tags_of(s.to_server), "PDS") << "pgvalve's Parse, Describe and Sync, no Bind yet";
  EXPECT_EQ(s.consumed, 0u);
  // Client bytes meanwhile wait for the answer.
  s = h.client(run);
  EXPECT_EQ(s.consumed, 0u);
  EXPECT_TRUE(s.to_server.empty());
  s = h.server(parse_complete() + no_parameters() + row_description(2) + ready('I'));
  EXPECT_TRUE(s.to_client.empty()) << "pgvalve's own answers";
  EXPECT_TRUE(s.resume_client);
  EXPECT_FALSE(s.has_op(LinkOp::Kind::Release)) << "kept for the Bind";
  s = h.client(run);
  EXPECT_EQ(s.consumed, run.size());
  EXPECT_TRUE(bound_statements_in(s.to_server) == std::vector<std::string>{""});
  EXPECT_NE(s.to_server.find(kChanged), std::string::npos) << "raised by the server";
  s = h.server(parse_complete() + bind_complete() + error_message("0A000", "ERROR", kChanged) +
               ready('I'));
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_NE(s.to_client.find(std::string("RRevalidateCachedQuery\0", 23)), std::string::npos)
      << "the routine asyncpg and PgJDBC know the error by";
  // Prepared and described again, the statement runs with its new shape there.
  const std::string again = parse("s1", kSql) + describe('S', "s1") + sync();
  s = h.client(again);
  if (s.check_out) {
    h.linked(*second);
    s = h.client(again);
  }
  EXPECT_EQ(tags_of(s.to_server), "DS") << "the server has the statement";
  h.server(no_parameters() + row_description(2) + ready('I'));
  s = h.client(run);
  if (s.check_out) {
    h.linked(*second);
    s = h.client(run);
  }
  EXPECT_EQ(tags_of(s.to_server), "BES");
}

TEST(SessionStatementShapes, TheSameShapeRunsAndIsNotAskedAgain) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, row_description(1));
  auto second = SessionHarness::fresh_server();
  const std::string run = run_flight("s1");
  Step s = linked_for(h, run, *second);
  EXPECT_EQ(tags_of(s.to_server), "PDS");
  s = h.server(parse_complete() + no_parameters() + row_description(1) + ready('I'));
  EXPECT_TRUE(s.resume_client);
  s = h.client(run);
  EXPECT_EQ(s.consumed, run.size());
  EXPECT_EQ(tags_of(s.to_server), "BES");
  EXPECT_EQ(bound_statements_in(s.to_server), std::vector<std::string>{server_name_of(kSql)});
  EXPECT_EQ(h.answer(select_answer()), select_answer());
  EXPECT_TRUE(h.last.has_op(LinkOp::Kind::Release));
  // Known on that server now: the next Bind there goes at once.
  EXPECT_EQ(tags_of(h.send(run, *second)), "BES");
}

// A statement without rows (an INSERT, NoData) has no shape to keep, and a client that never
// described its statement (libpq, psycopg: they describe each portal) decodes by the portal's.
TEST(SessionStatementShapes, StatementsWithoutAKnownShapeAreNotAsked) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, no_data());
  auto second = SessionHarness::fresh_server();
  EXPECT_EQ(tags_of(h.send(run_flight("s1"), *second)), "PBES");

  SessionHarness undescribed;
  prepare_locally(undescribed);
  auto third = SessionHarness::fresh_server();
  EXPECT_EQ(tags_of(undescribed.send(run_flight("s1"), *third)), "PBES");
}

// An error of the check is the Bind's, as when the Bind prepares the statement itself: the client
// gets it once, and the rest of its request up to its Sync is skipped, as PostgreSQL skips it.
TEST(SessionStatementShapes, AnErrorOfTheCheckIsTheBinds) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, row_description(1));
  auto second = SessionHarness::fresh_server();
  const std::string run = run_flight("s1");
  Step s = linked_for(h, run, *second);
  EXPECT_EQ(tags_of(s.to_server), "PDS");
  s = h.server(error_message("42P01") + ready('I'));
  EXPECT_EQ(sqlstates_in(s.to_client), "42P01");
  EXPECT_EQ(tags_of(s.to_client), "E") << "the ReadyForQuery is the client's Sync's";
  EXPECT_TRUE(s.resume_client);
  s = h.client(run);
  EXPECT_EQ(s.consumed, run.size());
  EXPECT_EQ(tags_of(s.to_server), "S") << "the Bind and Execute skipped";
  s = h.server(ready('I'));
  EXPECT_EQ(tags_of(s.to_client), "Z");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::Release));
}

// PgJDBC outside autocommit sends a transaction's BEGIN in the flight of its first statement:
// after the BEGIN the server is in a transaction block, which pgvalve's Sync does not end.
TEST(SessionStatementShapes, ABindBehindItsTransactionsBeginIsChecked) {
  constexpr std::string_view kChanged = "cached plan must not change result type";
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, row_description(1));
  auto second = SessionHarness::fresh_server();
  const std::string begin = parse("", "BEGIN") + bind_to("", "") + execute();
  const std::string run = run_flight("s1");
  Step s = linked_for(h, begin + run, *second);
  EXPECT_EQ(tags_of(s.to_server), "PBEPDS");
  EXPECT_EQ(s.consumed, begin.size());
  s = h.server(parse_complete() + bind_complete() + complete("BEGIN") + parse_complete() +
               no_parameters() + row_description(2) + ready('T'));
  EXPECT_EQ(tags_of(s.to_client), "12C") << "the BEGIN's answers; pgvalve's own are not passed";
  EXPECT_TRUE(s.resume_client);
  s = h.client(run);
  EXPECT_EQ(s.consumed, run.size());
  EXPECT_NE(s.to_server.find(kChanged), std::string::npos);
  s = h.server(parse_complete() + bind_complete() + error_message("0A000", "ERROR", kChanged) +
               ready('E'));
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  EXPECT_EQ(statuses_in(s.to_client), "E");
}

// PgJDBC learns a statement's columns from a Describe of the portal at its first execution, and
// binds it without one from then on.
TEST(SessionStatementShapes, ColumnsLearnedFromAPortalAreCheckedLater) {
  SessionHarness h;
  prepare_locally(h);
  auto first = SessionHarness::fresh_server();
  const std::string described = bind_to("", "s1") + describe('P', "") + execute() + sync();
  EXPECT_EQ(tags_of(h.send(described, *first)), "PBDES");
  h.answer(parse_complete() + bind_complete() + row_description(1) + data_row({"1"}) +
           complete("SELECT 1") + ready('I'));
  auto second = SessionHarness::fresh_server();
  const Step s = linked_for(h, run_flight("s1"), *second);
  EXPECT_EQ(tags_of(s.to_server), "PDS");
}

// libpq (PQexecPrepared), psycopg and node-postgres describe every portal they bind and decode
// its rows by that: nothing to check, then or later.
TEST(SessionStatementShapes, AClientThatDescribesEveryPortalIsNotChecked) {
  SessionHarness h;
  prepare_locally(h);
  const std::string described = bind_to("", "s1") + describe('P', "") + execute() + sync();
  for (int i = 0; i < 3; ++i) {
    auto server = SessionHarness::fresh_server();
    EXPECT_EQ(tags_of(h.send(described, *server)), "PBDES") << "execution " << i;
    // The table gained a column after the first execution.
    const bool altered = i > 0;
    h.answer(
        parse_complete() + bind_complete() + row_description(altered ? 2 : 1) +
        data_row(altered ? std::vector<std::string>{"1", "5"} : std::vector<std::string>{"1"}) +
        complete("SELECT 1") + ready('I'));
  }
}

// A Bind behind other messages of its request is not checked: pgvalve's Sync there would end
// what the client began (a transaction of its own, for PostgreSQL).
TEST(SessionStatementShapes, ABindAfterOtherMessagesOfItsRequestIsNotChecked) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  prepare_described(h, *first, row_description(1));
  auto second = SessionHarness::fresh_server();
  const std::string flight = parse("", "select 1") + bind_to("", "") + execute() + run_flight("s1");
  EXPECT_EQ(tags_of(h.send(flight, *second)), "PBEPBES");
}

}  // namespace
}  // namespace pgvalve::session::testing
