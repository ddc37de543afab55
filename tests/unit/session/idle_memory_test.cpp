// An idle client holds no transient memory: its workspace goes back to the worker's pool between
// transactions and comes back for the next request.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session/session_internal.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

// A client that prepared s1 and set statement_timeout, then went idle and gave its workspace back.
void set_up_then_idle(SessionHarness& h, ServerState& server) {
  h.client(parse("s1", "select 1") + sync());
  h.send(query("SET statement_timeout = '5s'"), server);
  h.answer(command_result("SET"));
  h.session().trim();
}

TEST(SessionIdleMemory, AfterATransactionTheWorkspaceGoesBackToThePool) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  h.answer(row_result("1", "SELECT 1"));
  EXPECT_TRUE(h.session().idle());
  EXPECT_EQ(h.session().link_count(), 0u);
  const std::size_t spare = h.workspaces().spare();
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), spare + 1);
  EXPECT_EQ(h.session().next_deadline(), Clock::time_point::max());
}

TEST(SessionIdleMemory, TheNextRequestTakesAWorkspaceAgain) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select 1"), *server);
  h.answer(row_result("1", "SELECT 1"));
  h.session().trim();
  ASSERT_EQ(h.workspaces().spare(), 1u);
  h.send(query("select 2"), *server);
  EXPECT_EQ(h.workspaces().spare(), 0u);
  EXPECT_EQ(h.answer(row_result("2", "SELECT 1")), row_result("2", "SELECT 1"));
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), 1u);
}

TEST(SessionIdleMemory, DurableStateSurvivesTrim) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  set_up_then_idle(h, *server);
  EXPECT_EQ(h.session().prepared_statement_count(), 1u);
  ASSERT_NE(h.session().client_settings().find("statement_timeout"), nullptr);
  // s1 is still prepared where it is used.
  auto other = SessionHarness::fresh_server();
  const std::string sent = h.send(bind_to("", "s1") + execute() + sync(), *other);
  EXPECT_EQ(tags_of(sent), "PBES");
}

TEST(SessionIdleMemory, AnIdleSessionMovedToAnotherWorkerBorrowsFromItsPool) {
  WorkspacePool second;  // outlives the session, which gives its workspace back there
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  set_up_then_idle(h, *server);
  ASSERT_FALSE(h.session().holds_workspace());
  const std::size_t first_spares = h.workspaces().spare();
  h.session().move_to(second);
  // The next request takes its workspace from the new worker's pool and gives it back there;
  // what the client set up before the move is all still there.
  auto other = SessionHarness::fresh_server();
  const std::string sent = h.send(bind_to("", "s1") + execute() + sync(), *other);
  EXPECT_EQ(tags_of(sent), "PBES");
  EXPECT_TRUE(h.session().holds_workspace());
  h.answer(parse_complete() + bind_complete() + data_row({"1"}) + complete("SELECT 1") + ready());
  EXPECT_TRUE(h.session().idle());
  h.session().trim();
  EXPECT_FALSE(h.session().holds_workspace());
  EXPECT_EQ(second.spare(), 1u);
  EXPECT_EQ(h.workspaces().spare(), first_spares);
  ASSERT_NE(h.session().client_settings().find("statement_timeout"), nullptr);
}

TEST(SessionIdleMemory, TrimKeepsTheWorkspaceWhileAServerIsLinked) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("begin"), *server);
  h.answer(command_result("BEGIN", 'T'));
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), 0u);
  // And the transaction goes on.
  const std::string q = query("commit");
  EXPECT_EQ(h.client(q).to_server, q);
}

TEST(SessionIdleMemory, TrimKeepsTheWorkspaceWhileWaiting) {
  SessionHarness h;
  h.client(query("select 1"));
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), 0u);
}

TEST(SessionIdleMemory, ALocallyAnsweredRequestLeavesNothingHeld) {
  SessionHarness h;
  h.client(parse("s1", "select 1") + sync());
  h.session().trim();
  EXPECT_EQ(h.workspaces().spare(), 1u);
}

// 40 sessions at once on a worker (64 clients over two workers and a pool of 16: the waiting
// ones hold workspaces too): all 40 are kept for the next round, so no transaction builds and
// frees one; once the load is gone, two sweeps take the spares back to the minimum.
TEST(SessionIdleMemory, WorkspacesAreKeptForAsManySessionsAsWereBusyLately) {
  WorkspacePool pool;
  std::vector<std::unique_ptr<Workspace>> busy;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 40; ++i)
      busy.push_back(pool.take());
    for (auto& w : busy)
      pool.give_back(std::move(w));
    busy.clear();
    EXPECT_EQ(pool.spare(), 40u) << "one ready for each session of the next round";
  }
  pool.sweep();
  EXPECT_EQ(pool.spare(), 40u) << "the period that just ended was busy";
  pool.sweep();
  EXPECT_EQ(pool.spare(), 8u) << "a quiet period since";
}

TEST(SessionIdleMemory, AWorkspaceComesBackWithNothingItsLastRequestChanged) {
  WorkspacePool pool;
  auto w = pool.take();
  Workspace* const first = w.get();
  w->pending_link = 2;
  w->client_scratch = "Q";
  w->retry_request = "Q";
  w->change_rare().failure = "pgvalve: no server";
  w->change_rare().tx_notes.emplace_back();
  w->change_rare().savepoints.emplace_back("s1", 0);
  w->change_rare().notifications = "A";
  w->unnamed_statement_text = "select $1";
  w->unnamed_statement_types = std::string(4, '\0');
  w->change_scatter().gid = "pgvalve_1";
  w->change_tx().begin = "BEGIN";
  w->change_tx().spans = true;
  pool.give_back(std::move(w));
  auto again = pool.take();
  ASSERT_EQ(again.get(), first) << "the spare just given back is taken first";
  EXPECT_EQ(again->pending_link, 0);
  EXPECT_TRUE(again->client_scratch.empty());
  EXPECT_TRUE(again->retry_request.empty());
  // Read as they are, and as the next change starts from them.
  const Workspace::Rare* read = &again->rare();
  const Workspace::Rare* changed = &again->change_rare();
  for (const Workspace::Rare* rare : {read, changed}) {
    EXPECT_TRUE(rare->failure.empty());
    EXPECT_TRUE(rare->tx_notes.empty());
    EXPECT_TRUE(rare->savepoints.empty());
    EXPECT_TRUE(rare->notifications.empty());
  }
  EXPECT_TRUE(again->unnamed_statement_text.empty());
  EXPECT_TRUE(again->unnamed_statement_types.empty());
  EXPECT_TRUE(again->scatter().gid.empty());
  EXPECT_TRUE(again->change_scatter().gid.empty());
  EXPECT_TRUE(again->tx().begin.empty());
  EXPECT_TRUE(again->change_tx().begin.empty());
  EXPECT_FALSE(again->change_tx().spans);
  // Changed again after a clear: reset again.
  again->change_tx().joining = true;
  again->change_rare().hub_channel = "readings";
  pool.give_back(std::move(again));
  auto third = pool.take();
  EXPECT_FALSE(third->change_tx().joining);
  EXPECT_TRUE(third->change_rare().hub_channel.empty());
}

TEST(SessionIdleMemory, AnUntouchedPartReadsAsTheDefaultAndChangesAsItsOwn) {
  Workspace w;
  const Workspace::Rare* shared = &w.rare();
  w.change_rare().failure = "pgvalve: no server";
  EXPECT_NE(&w.rare(), shared);
  EXPECT_EQ(w.rare().failure, "pgvalve: no server");
  EXPECT_TRUE(shared->failure.empty()) << "the shared default never changes";
  w.clear();
  EXPECT_TRUE(w.rare().failure.empty());
}

TEST(SessionIdleMemory, SparesStayBoundedWhateverTheConcurrency) {
  WorkspacePool pool;
  std::vector<std::unique_ptr<Workspace>> busy;
  for (int i = 0; i < 1000; ++i)
    busy.push_back(pool.take());
  for (auto& w : busy)
    pool.give_back(std::move(w));
  EXPECT_EQ(pool.spare(), 256u);
}

TEST(SessionIdleMemory, ClientsWithTheSameStartupSettingsShareOneCopy) {
  WorkspacePool pool;
  auto settings = [](std::string_view app) {
    Settings s;
    s.set("application_name", app, true);
    s.set("datestyle", "ISO, DMY", true);
    return s;
  };
  const auto first = pool.share(settings("telemetry-writer"));
  const auto second = pool.share(settings("telemetry-writer"));
  const auto other = pool.share(settings("dashboard"));
  EXPECT_EQ(first.get(), second.get());
  EXPECT_NE(first.get(), other.get());
  EXPECT_EQ(other->find("application_name")->value, "dashboard");
  EXPECT_EQ(first->find("application_name")->value, "telemetry-writer");
}

TEST(SessionIdleMemory, SharedSettingsNoClientHoldsAreForgotten) {
  WorkspacePool pool;
  auto device = [](int i) {
    Settings s;
    s.set("application_name", "device-" + std::to_string(i), true);
    return s;
  };
  std::vector<std::shared_ptr<const Settings>> held;
  for (int i = 0; i < 1000; ++i)
    held.push_back(pool.share(device(i)));
  EXPECT_GE(pool.shared_settings_known(), 1000u);
  held.clear();  // those clients left
  for (int i = 1000; i < 5000; ++i)
    pool.share(device(i));  // each dropped at once
  EXPECT_LE(pool.shared_settings_known(), 2048u);
}

TEST(SessionIdleMemory, DestroyedSessionGivesItsWorkspaceBack) {
  WorkspacePool pool;
  routing::Router router;
  {
    const SessionOptions options;
    Session session(options, router, pool);
    session.start({}, std::make_shared<const ServerParameters>(default_parameters()), {1, 2},
                  nullptr, T0);
    EXPECT_EQ(pool.spare(), 0u);
  }
  EXPECT_EQ(pool.spare(), 1u);
}

}  // namespace
}  // namespace pgvalve::session::testing
