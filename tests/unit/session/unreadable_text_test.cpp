// A client whose text pgvalve cannot read as the server does (standard_conforming_strings off, or
// a client_encoding such as SJIS whose characters hold ASCII bytes): what pgvalve reads of a
// statement may not be what runs, so each is taken as a DO block is (settings unknown, the server
// asked what state it holds), its reads stay on the primary, and what it pipelines behind a
// statement that may change how text reads waits for that statement's answer.
#include <gtest/gtest.h>

#include <tuple>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

using routing::Route;

bool is_pin_check(std::string_view to_server) {
  const auto q = queries_in(to_server);
  return q.size() == 1 && q[0].starts_with("SELECT (SELECT count(*) FROM pg_catalog.pg_locks");
}

// With standard_conforming_strings off the server reads a string and then a call; pgvalve,
// reading bytes, a string and a comment.
const char* const kHiddenCall =
    "SELECT 'a\\', ' , set_config($q$search_path$q$, $q$s2$q$, false), 1 --'";

TEST(SessionUnreadableText, ReadsThatDoNotReadAsWrittenGoToThePrimary) {
  for (const auto& [name, value, text] :
       {std::tuple{"standard_conforming_strings", "off", "select 'a\\'"},
        std::tuple{"client_encoding", "SJIS", "select E'\x83\x5c'"}}) {
    SessionHarness h({}, {{name, value}}, nullptr, true);
    Step s = h.client(query(text));
    ASSERT_TRUE(s.check_out) << name;
    EXPECT_EQ(s.route.kind, Route::Kind::Primary) << name;
    // What reads the same either way still may go to a replica.
    SessionHarness other({}, {{name, value}}, nullptr, true);
    EXPECT_EQ(other.client(query("select 'a'")).route.kind, Route::Kind::Replica) << name;
  }
}

TEST(SessionUnreadableText, EachStatementIsCheckedAndLeavesTheServerSettingsUnknown) {
  SessionHarness h({}, {{"standard_conforming_strings", "off"}});
  auto server = SessionHarness::fresh_server();
  h.send(query(kHiddenCall), *server);
  Step s = h.server(row_result("s2", "SELECT 1"));
  EXPECT_TRUE(is_pin_check(s.to_server)) << s.to_server;
  s = h.server(pin_check_result(false));
  EXPECT_TRUE(server->settings_unknown);  // the next lender's sync starts from RESET ALL
  ASSERT_EQ(s.ops.size(), 1u);
  EXPECT_EQ(s.ops[0].kind, LinkOp::Kind::Release);
  // The same text from a client whose text reads as pgvalve reads it is a plain read.
  SessionHarness plain;
  auto other = SessionHarness::fresh_server();
  plain.send(query(kHiddenCall), *other);
  s = plain.server(row_result("x", "SELECT 1"));
  EXPECT_FALSE(is_pin_check(s.to_server));
  EXPECT_FALSE(other->settings_unknown);
}

TEST(SessionUnreadableText, WhatFollowsASettingOfHowTextReadsWaitsForItsAnswer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  const std::string set = query("SET standard_conforming_strings = off");
  const std::string next = query(kHiddenCall);
  Step s = h.client(set + next);
  ASSERT_TRUE(s.check_out);
  h.linked(*server);
  s = h.client(set + next);
  EXPECT_EQ(s.to_server, set);  // the rest waits for the server to read it with the setting
  EXPECT_EQ(s.consumed, set.size());
  s = h.server(parameter_status("standard_conforming_strings", "off") + command_result("SET"));
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.send(next, *server), next);
  s = h.server(row_result("s2", "SELECT 1"));
  EXPECT_TRUE(is_pin_check(s.to_server)) << s.to_server;  // read as the server read it
}

TEST(SessionUnreadableText, WhatReadsTheSameEitherWayIsReadAsUsual) {
  SessionHarness h({}, {{"standard_conforming_strings", "off"}});
  auto server = SessionHarness::fresh_server();
  h.send(query("SET standard_conforming_strings = on"), *server);
  Step s = h.server(parameter_status("standard_conforming_strings", "on") + command_result("SET"));
  EXPECT_FALSE(is_pin_check(s.to_server));
  EXPECT_FALSE(server->settings_unknown);
}

}  // namespace
}  // namespace pgvalve::session::testing
