// LISTEN through the shared listening connection (the listen hub) and the delivery of
// notifications: at once between requests, after the ReadyForQuery of a request in flight.
#include <gtest/gtest.h>

#include "session/limits.h"
#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

// LISTEN as JDBC sends it.
std::string extended_listen(std::string_view sql, bool with_describe) {
  return parse("", sql) + bind_to("", "") + (with_describe ? describe('P', "") : "") + execute() +
         sync();
}

// LISTEN `channel` answered by the hub.
void listen(SessionHarness& h, std::string_view channel) {
  const std::string q = query("LISTEN " + std::string(channel));
  Step s = h.client(q);
  ASSERT_EQ(s.hub.kind, HubRequest::Kind::Listen);
  ASSERT_EQ(s.consumed, q.size());
  h.hub_done();
}

TEST(SessionListen, LoneListenGoesToTheHub) {
  SessionHarness h;
  const std::string q = query("LISTEN jobs");
  Step s = h.client(q);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, q.size());
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::Listen);
  EXPECT_EQ(s.hub.channel, "jobs");
  EXPECT_TRUE(s.to_client.empty());
  EXPECT_EQ(h.state(), SessionState::WaitingForHub);
  EXPECT_FALSE(h.session().wants_client_input());
  s = h.hub_done();
  EXPECT_EQ(s.to_client, complete("LISTEN") + ready('I'));
  EXPECT_TRUE(s.resume_client);
  EXPECT_EQ(h.state(), SessionState::Idle);
  EXPECT_EQ(h.session().listen_channel_count(), 1u);
}

TEST(SessionListen, QuotedChannelKeepsItsCase) {
  SessionHarness h;
  Step s = h.client(query("listen \"Jobs\""));
  EXPECT_EQ(s.hub.channel, "Jobs");
}

TEST(SessionListen, UnlistenGoesToTheHub) {
  SessionHarness h;
  listen(h, "jobs");
  Step s = h.client(query("UNLISTEN jobs"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::Unlisten);
  EXPECT_EQ(s.hub.channel, "jobs");
  s = h.hub_done();
  EXPECT_EQ(s.to_client, complete("UNLISTEN") + ready('I'));
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
}

TEST(SessionListen, UnlistenStarGoesToTheHubAsUnlistenAll) {
  SessionHarness h;
  listen(h, "a");
  listen(h, "b");
  Step s = h.client(query("UNLISTEN *"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::UnlistenAll);
  h.hub_done();
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
}

TEST(SessionListen, ExtendedListenAsJdbcSendsItGoesToTheHub) {
  for (bool with_describe : {true, false}) {
    SessionHarness h;
    const std::string flight = extended_listen("LISTEN jobs", with_describe);
    Step s = h.client(flight);
    EXPECT_FALSE(s.check_out);
    EXPECT_EQ(s.consumed, flight.size());
    EXPECT_EQ(s.hub.kind, HubRequest::Kind::Listen);
    EXPECT_EQ(h.state(), SessionState::WaitingForHub);
    s = h.hub_done();
    const std::string expected = parse_complete() + bind_complete() +
                                 (with_describe ? no_data() : "") + complete("LISTEN") + ready();
    EXPECT_EQ(s.to_client, expected) << with_describe;
  }
}

// asyncpg prepares every statement under a name and runs it later with Bind/Execute/Sync.
TEST(SessionListen, ListenOfANamedStatementPreparedEarlierGoesToTheHub) {
  SessionHarness h;
  h.client(parse("__asyncpg_stmt_1__", "LISTEN \"jobs\"") + sync());  // answered by pgvalve
  const std::string flight = bind_to("", "__asyncpg_stmt_1__") + execute() + sync();
  Step s = h.client(flight);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(s.consumed, flight.size());
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::Listen);
  EXPECT_EQ(s.hub.channel, "jobs");
  EXPECT_EQ(h.hub_done().to_client, bind_complete() + complete("LISTEN") + ready());
  // Any other prepared statement runs on a server.
  h.client(parse("s2", "select 1") + sync());
  EXPECT_TRUE(h.client(bind_to("", "s2") + execute() + sync()).check_out);
}

TEST(SessionListen, ExtendedListenWithDescribeOfTheStatementGoesToAServer) {
  SessionHarness h;
  Step s =
      h.client(parse("", "LISTEN jobs") + bind_to("", "") + describe('S', "") + execute() + sync());
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
  EXPECT_TRUE(s.check_out);
}

TEST(SessionListen, HubErrorIsTheClientsError) {
  SessionHarness h;
  h.client(query("LISTEN jobs"));
  Step s = h.hub_done("pgvalve: the listening connection is down");
  EXPECT_EQ(tags_of(s.to_client), "EZ");
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
  EXPECT_EQ(h.state(), SessionState::Idle);
}

TEST(SessionListen, ListenWithOtherStatementsGoesToAServer) {
  SessionHarness h;
  Step s = h.client(query("LISTEN a; select 1"));
  EXPECT_TRUE(s.check_out);
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
}

TEST(SessionListen, ListenInsideATransactionGoesToItsServer) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  Step s = h.client(query("LISTEN jobs"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
  EXPECT_EQ(s.to_server, query("LISTEN jobs"));
}

TEST(SessionListen, ChannelCapIsRefusedWith53400) {
  SessionHarness h;
  for (std::size_t i = 0; i < kMaxClientListenChannels; ++i)
    listen(h, "c" + std::to_string(i));
  ASSERT_EQ(h.session().listen_channel_count(), kMaxClientListenChannels);
  // A channel it already listens on is fine (answered at once: the hub listens on it).
  Step again = h.client(query("LISTEN c0"));
  EXPECT_EQ(again.hub.kind, HubRequest::Kind::None);
  EXPECT_EQ(again.to_client, complete("LISTEN") + ready());
  Step s = h.client(query("LISTEN one_more"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "53400");
  EXPECT_EQ(statuses_in(s.to_client), "I");
  EXPECT_EQ(h.state(), SessionState::Idle);
  // Through the extended protocol, in the shape the client expects.
  s = h.client(extended_listen("LISTEN one_more", true));
  EXPECT_EQ(tags_of(s.to_client), "12nEZ");
}

TEST(SessionListen, ChannelCapCountsListensOnItsOwnServer) {
  // Pipelined LISTENs are not answered through the hub; they run on the client's server (which
  // they pin) and count against the same cap.
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  std::string flight;
  for (std::size_t i = 0; i <= kMaxClientListenChannels; ++i)
    flight += query("LISTEN p" + std::to_string(i));
  const auto q = queries_in(h.send(flight, *server));
  ASSERT_EQ(q.size(), kMaxClientListenChannels + 1);
  EXPECT_EQ(q[kMaxClientListenChannels - 1],
            "LISTEN p" + std::to_string(kMaxClientListenChannels - 1));
  EXPECT_NE(q[kMaxClientListenChannels].find("ERRCODE = '53400'"), std::string::npos);
}

TEST(SessionListen, NotificationBetweenRequestsIsDeliveredAtOnce) {
  SessionHarness h;
  listen(h, "jobs");
  const std::string n = notification("jobs", "hello");
  Step s = h.notify(n);
  EXPECT_EQ(s.to_client, n);
  EXPECT_FALSE(s.close_client);
}

TEST(SessionListen, NotificationWhileHoldingIsDeliveredAtOnce) {
  SessionHarness h;
  listen(h, "jobs");
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  const std::string n = notification("jobs", "hello");
  EXPECT_EQ(h.notify(n).to_client, n);
}

TEST(SessionListen, NotificationDuringARequestFollowsItsReadyForQuery) {
  SessionHarness h;
  listen(h, "jobs");
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  const std::string n = notification("jobs", "hello");
  EXPECT_TRUE(h.notify(n).to_client.empty());
  const std::string answer = row_result("1", "SELECT 1");
  EXPECT_EQ(h.answer(answer), answer + n);
}

TEST(SessionListen, NotificationDuringPipelinedRequestsFollowsTheLastReadyForQuery) {
  SessionHarness h;
  listen(h, "jobs");
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1") + query("select 2"), *server);
  const std::string n = notification("jobs", "hello");
  h.notify(n);
  EXPECT_EQ(h.answer(row_result("1", "SELECT 1")), row_result("1", "SELECT 1"));
  EXPECT_EQ(h.answer(row_result("2", "SELECT 1")), row_result("2", "SELECT 1") + n);
}

TEST(SessionListen, NotificationWhileWaitingForTheHubFollowsItsAnswer) {
  SessionHarness h;
  listen(h, "a");
  h.client(query("LISTEN b"));
  const std::string n = notification("a", "hello");
  EXPECT_TRUE(h.notify(n).to_client.empty());
  Step s = h.hub_done();
  EXPECT_EQ(s.to_client, complete("LISTEN") + ready() + n);
  // Nothing is held for the client any more.
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), 1u);
}

TEST(SessionListen, NotificationWhileWaitingForAServerThatFailsFollowsTheError) {
  SessionHarness h;
  listen(h, "a");
  const std::string q = query("select 1");
  h.client(q);
  const std::string n = notification("a", "hello");
  EXPECT_TRUE(h.notify(n).to_client.empty());
  h.checkout_failed("53300");
  Step s = h.client(q);
  EXPECT_EQ(tags_of(s.to_client), "EZA");
}

TEST(SessionListen, TooManyQueuedNotificationsCloseWith53400) {
  SessionHarness h;
  listen(h, "jobs");
  auto server = SessionHarness::fresh_server();
  h.send(query("select pg_sleep(10)"), *server);
  const std::string n = notification("jobs", std::string(100 << 10, 'x'));
  for (int i = 0; i < 10; ++i)
    ASSERT_FALSE(h.notify(n).close_client) << i;
  Step s = h.notify(n);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "53400");
  EXPECT_EQ(errors_in(s.to_client).at(0).severity, "FATAL");
  EXPECT_TRUE(s.has_op(LinkOp::Kind::CancelAndClose));
}

TEST(SessionListen, TooManyUnsentNotificationsCloseWith53400) {
  SessionHarness h;
  listen(h, "jobs");
  const std::string n = notification("jobs", "x");
  EXPECT_FALSE(h.notify(n, (1u << 20) - n.size()).close_client);
  Step s = h.notify(n, (1u << 20) - n.size() + 1);
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "53400");
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::UnlistenAll);  // the hub forgets the client
}

TEST(SessionListen, DiscardAllAsksTheHubToUnlistenAll) {
  SessionHarness h;
  listen(h, "jobs");
  auto server = SessionHarness::fresh_server();
  h.send(query("DISCARD ALL"), *server);
  h.answer(command_result("DISCARD ALL"));
  EXPECT_EQ(h.last.hub.kind, HubRequest::Kind::UnlistenAll);
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
}

TEST(SessionListen, ClientGoneAsksTheHubToUnlistenAll) {
  SessionHarness h;
  listen(h, "jobs");
  EXPECT_EQ(h.gone().hub.kind, HubRequest::Kind::UnlistenAll);
}

// A LISTEN or UNLISTEN that commits on a server changes what the hub delivers to the client:
// after UNLISTEN nothing, after LISTEN the server delivers it (not both).
TEST(SessionListen, UnlistenCommittedOnAServerStopsTheHubsDelivery) {
  SessionHarness h;
  listen(h, "a");
  listen(h, "b");
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("UNLISTEN a"));
  h.answer(command_result("UNLISTEN", 'T'));
  EXPECT_TRUE(h.last.hub.dropped.empty());  // not before the commit
  EXPECT_EQ(h.notify(notification("a", "x")).to_client, notification("a", "x"));
  h.client(query("commit"));
  h.answer(command_result("COMMIT"));
  EXPECT_EQ(h.last.hub.dropped, std::vector<std::string>{"a"});
  EXPECT_EQ(h.session().listen_channel_count(), 1u);
  // What the hub still sends before it hears of it is not the client's.
  EXPECT_TRUE(h.notify(notification("a", "x")).to_client.empty());
  EXPECT_EQ(h.notify(notification("b", "y")).to_client, notification("b", "y"));
}

TEST(SessionListen, UnlistenRolledBackKeepsTheHubsDelivery) {
  SessionHarness h;
  listen(h, "a");
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("UNLISTEN a"));
  h.answer(command_result("UNLISTEN", 'T'));
  h.client(query("rollback"));
  h.answer(command_result("ROLLBACK"));
  EXPECT_TRUE(h.last.hub.dropped.empty());
  EXPECT_EQ(h.session().listen_channel_count(), 1u);
  EXPECT_EQ(h.notify(notification("a", "x")).to_client, notification("a", "x"));
}

TEST(SessionListen, UnlistenAllWithAnotherStatementStopsEveryHubChannel) {
  // asyncpg's reset query on a pool's release.
  SessionHarness h;
  listen(h, "a");
  listen(h, "b");
  auto server = SessionHarness::fresh_server();
  h.send(query("UNLISTEN *; SELECT 1"), *server);
  h.answer(complete("UNLISTEN") + row_result("1", "SELECT 1"));
  EXPECT_EQ(h.last.hub.dropped, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
  EXPECT_TRUE(h.notify(notification("a", "x")).to_client.empty());
}

TEST(SessionListen, ListenCommittedOnItsServerTakesTheChannelFromTheHub) {
  SessionHarness h;
  listen(h, "a");
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.client(query("LISTEN a"));
  h.answer(command_result("LISTEN", 'T'));
  h.client(query("commit"));
  h.answer(command_result("COMMIT"));
  EXPECT_EQ(h.last.hub.dropped, std::vector<std::string>{"a"});
  EXPECT_TRUE(h.notify(notification("a", "x")).to_client.empty());  // its server delivers it
}

TEST(SessionListen, ServerErrorOfTheHubKeepsItsSqlstate) {
  SessionHarness h;
  h.client(query("LISTEN jobs"));
  Step s = h.hub_done("pgvalve: the server refused: too many connections", "53300");
  EXPECT_EQ(sqlstates_in(s.to_client), "53300");
  EXPECT_EQ(h.session().listen_channel_count(), 0u);
}

TEST(SessionListen, LostHubClosesAListeningClientWith08006) {
  SessionHarness h;
  listen(h, "jobs");
  Step s = h.hub_lost();
  EXPECT_TRUE(s.close_client);
  EXPECT_EQ(sqlstates_in(s.to_client), "08006");
  EXPECT_EQ(errors_in(s.to_client).at(0).severity, "FATAL");
}

TEST(SessionListen, LostHubLeavesAClientThatNoLongerListens) {
  SessionHarness h;
  listen(h, "jobs");
  h.client(query("UNLISTEN jobs"));
  h.hub_done();
  EXPECT_FALSE(h.hub_lost().close_client);
}

TEST(SessionListen, ListenOfMoreThanOneNameGoesToTheServer) {
  for (const char* sql : {"LISTEN ext1 junk", "LISTEN a.b", "LISTEN a, b"}) {
    SessionHarness h;
    Step s = h.client(query(sql));
    EXPECT_EQ(s.hub.kind, HubRequest::Kind::None) << sql;
    EXPECT_EQ(h.state(), SessionState::WaitingForServer) << sql;
  }
}

TEST(SessionListen, UnlistenOfAQuotedStarIsOneChannel) {
  SessionHarness h;
  listen(h, "\"*\"");
  Step s = h.client(query("UNLISTEN \"*\""));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::Unlisten);
  EXPECT_EQ(s.hub.channel, "*");
  h.hub_done();
  EXPECT_EQ(h.client(query("UNLISTEN *")).hub.kind, HubRequest::Kind::UnlistenAll);
}

// The hub passes notifications on in UTF8: a client in another encoding is refused, not sent
// bytes in the wrong encoding.
TEST(SessionListen, ListenOfAClientInAnotherEncodingIsRefusedWith0A000) {
  SessionHarness latin1({}, {{"client_encoding", "LATIN1"}});
  Step s = latin1.client(query("LISTEN jobs"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
  EXPECT_FALSE(s.check_out);
  EXPECT_EQ(sqlstates_in(s.to_client), "0A000");
  SessionHarness utf8({}, {{"client_encoding", "UTF8"}});
  EXPECT_EQ(utf8.client(query("LISTEN jobs")).hub.kind, HubRequest::Kind::Listen);
}

TEST(SessionListen, SessionModeListensOnItsOwnServer) {
  auto server = SessionHarness::fresh_server();
  SessionHarness h(SessionHarness::session_mode(), {}, server.get());
  Step s = h.client(query("LISTEN jobs"));
  EXPECT_EQ(s.hub.kind, HubRequest::Kind::None);
  EXPECT_EQ(s.to_server, query("LISTEN jobs"));
}

}  // namespace
}  // namespace pgvalve::session::testing
