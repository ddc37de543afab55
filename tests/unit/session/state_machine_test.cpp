// The session's state: one value that follows session/state.h's table, and what the I/O layer
// reads from it (whether to read the client).
#include <gtest/gtest.h>

#include <array>
#include <set>

#include "session/session.h"
#include "session/state.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

using S = SessionState;
constexpr std::array kAll = {S::LoggingIn, S::Idle,    S::WaitingForServer, S::Syncing,
                             S::Active,    S::Holding, S::Scattering,       S::PortalSuspended,
                             S::Copying,   S::Ending,  S::WaitingForHub,    S::Closing};

TEST(SessionStateMachine, TransitionTableIsTheDiagram) {
  const std::set<std::pair<S, S>> edges = {
      {S::LoggingIn, S::Syncing},
      {S::LoggingIn, S::Idle},
      {S::LoggingIn, S::Holding},
      {S::Idle, S::WaitingForServer},
      {S::Idle, S::WaitingForHub},
      {S::Idle, S::Active},
      {S::WaitingForServer, S::Syncing},
      {S::WaitingForServer, S::Holding},
      {S::WaitingForServer, S::Active},
      {S::WaitingForServer, S::Idle},
      {S::Syncing, S::Active},
      {S::Syncing, S::Idle},
      {S::Syncing, S::Holding},
      {S::Syncing, S::WaitingForServer},
      {S::Active, S::Idle},
      {S::Active, S::Holding},
      {S::Active, S::WaitingForServer},  // an autocommit read retried elsewhere
      {S::Active, S::Ending},            // a request over several shards, as one transaction
      {S::Holding, S::Active},
      {S::Holding, S::Idle},
      {S::Holding, S::Syncing},
      {S::Holding, S::WaitingForServer},
      {S::Holding, S::Ending},
      {S::Holding, S::Scattering},
      {S::WaitingForServer, S::Scattering},
      {S::Scattering, S::Idle},
      {S::Scattering, S::WaitingForServer},
      {S::Scattering, S::Copying},
      {S::Scattering, S::Holding},
      {S::Scattering, S::PortalSuspended},
      {S::PortalSuspended, S::Scattering},
      {S::PortalSuspended, S::Idle},
      {S::Copying, S::Scattering},
      {S::Ending, S::Idle},
      {S::WaitingForHub, S::Idle},
  };
  for (S from : kAll) {
    for (S to : kAll) {
      const bool expected = from == to || (to == S::Closing) || edges.count({from, to}) > 0;
      EXPECT_EQ(transition_allowed(from, to), expected)
          << state_name(from) << " -> " << state_name(to);
    }
  }
}

TEST(SessionStateMachine, ClosingIsFinal) {
  for (S to : kAll) {
    if (to != S::Closing) {
      EXPECT_FALSE(transition_allowed(S::Closing, to)) << state_name(to);
    }
  }
}

TEST(SessionStateMachine, EveryStateHasAName) {
  std::set<std::string_view> names;
  for (S s : kAll)
    names.insert(state_name(s));
  EXPECT_EQ(names.size(), kAll.size());
  EXPECT_EQ(state_name(S::WaitingForServer), "waiting_for_server");
}

TEST(SessionStateMachine, AQueryWalksThroughTheStates) {
  SessionHarness h;
  EXPECT_EQ(h.state(), S::Idle);
  EXPECT_TRUE(h.session().idle());
  auto server = SessionHarness::fresh_server();
  const std::string q = query("select 1");
  h.client(q);
  EXPECT_EQ(h.state(), S::WaitingForServer);
  h.linked(*server);
  EXPECT_EQ(h.state(), S::Holding);
  h.client(q);
  EXPECT_EQ(h.state(), S::Active);
  h.server(row_result("1", "SELECT 1"));
  EXPECT_EQ(h.state(), S::Idle);
  const std::vector<S> walked = {S::Idle, S::WaitingForServer, S::Holding, S::Active, S::Idle};
  EXPECT_EQ(h.states, walked);
}

TEST(SessionStateMachine, ASyncedCheckoutWalksThroughSyncing) {
  SessionHarness h;
  auto first = SessionHarness::fresh_server();
  h.send(query("SET statement_timeout = '5s'"), *first);
  h.answer(command_result("SET"));
  auto other = SessionHarness::fresh_server();
  h.states.clear();
  h.send(query("begin"), *other);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("commit"));
  h.server(command_result("COMMIT"));
  const std::vector<S> walked = {S::WaitingForServer, S::Syncing, S::Holding, S::Active,
                                 S::Holding,          S::Active,  S::Idle};
  EXPECT_EQ(h.states, walked);
}

TEST(SessionStateMachine, LoginWithASyncStartsInSyncing) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h({}, {{"DateStyle", "German"}}, server.get());
  EXPECT_EQ(h.state(), S::Syncing);
  EXPECT_FALSE(h.session().wants_client_input());
  h.server(command_result("SET"));
  EXPECT_EQ(h.state(), S::Idle);
}

TEST(SessionStateMachine, WantsClientInputOnlyWhenItCanTakeARequest) {
  SessionHarness h;
  EXPECT_TRUE(h.session().wants_client_input());  // Idle
  auto first = SessionHarness::fresh_server();
  h.send(query("SET statement_timeout = '5s'"), *first);
  EXPECT_TRUE(h.session().wants_client_input());  // Active: pipelining
  h.answer(command_result("SET"));
  h.client(query("begin"));
  EXPECT_EQ(h.state(), S::WaitingForServer);
  EXPECT_FALSE(h.session().wants_client_input());
  auto other = SessionHarness::fresh_server();
  h.linked(*other);
  EXPECT_EQ(h.state(), S::Syncing);
  EXPECT_FALSE(h.session().wants_client_input());
  EXPECT_TRUE(h.session().wants_server_input(0));
  h.server(command_result("SET"));
  h.client(query("begin"));
  h.server(command_result("BEGIN", 'T'));
  EXPECT_EQ(h.state(), S::Holding);
  EXPECT_TRUE(h.session().wants_client_input());
  h.client(query("commit"));
  h.server(command_result("COMMIT"));
  EXPECT_FALSE(h.session().wants_server_input(0));
  h.client(query("LISTEN x"));
  EXPECT_EQ(h.state(), S::WaitingForHub);
  EXPECT_FALSE(h.session().wants_client_input());
  h.hub_done();
  EXPECT_TRUE(h.session().wants_client_input());
  h.client(terminate());
  EXPECT_EQ(h.state(), S::Closing);
  EXPECT_FALSE(h.session().wants_client_input());
}

TEST(SessionStateMachine, EventsOutsideTheirStateChangeNothing) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  // No checkout was asked for, no hub request made.
  Step s = h.linked(*server);
  EXPECT_FALSE(s.resume_client);
  EXPECT_EQ(h.session().link_count(), 0u);
  s = h.checkout_failed("53300");
  EXPECT_FALSE(s.resume_client);
  s = h.hub_done();
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_EQ(h.state(), S::Idle);
}

}  // namespace
}  // namespace pgvalve::session::testing
