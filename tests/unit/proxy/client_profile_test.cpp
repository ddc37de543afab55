// Clients that logged in as the same user to the same database under the same configuration
// share one profile (what an idle client keeps of its login); anything that differs gets its own.
#include "proxy/client_profile.h"

#include <gtest/gtest.h>

#include "proxy/app.h"

namespace pgvalve::proxy {
namespace {

constexpr const char* kConfig = R"(
listen: 127.0.0.1:6432
workers: 1
users:
  - name: app
    password: app-secret
  - name: dashboard
    password: dash-secret
databases:
  telemetry:
    shards:
      - name: s0
        primary: 127.0.0.1:5432
  archive:
    shards:
      - name: s0
        primary: 127.0.0.1:5433
)";

config::ConfigPtr load() {
  auto result = config::load_config_string(kConfig);
  EXPECT_TRUE(result.errors.empty());
  return result.config;
}

ClientProfile login(const App& app, const config::ConfigPtr& config, const std::string& user,
                    const std::string& database) {
  ClientProfile p;
  p.user_name = user;
  p.database_name = database;
  p.config = config;
  p.users = app.users();
  p.user = p.users->find(user)->user;
  return p;
}

TEST(ClientProfile, ClientsThatLoggedInAlikeShareOne) {
  const auto config = load();
  App app(config);
  const config::Database& telemetry = *config->find_database("telemetry");
  const auto first = app.shared_profile(login(app, config, "app", "telemetry"), telemetry);
  const auto second = app.shared_profile(login(app, config, "app", "telemetry"), telemetry);
  EXPECT_EQ(first, second);
  EXPECT_EQ(first->database, &telemetry);
  EXPECT_EQ(first->user_name, "app");
  EXPECT_EQ(first->database_name, "telemetry");
  ASSERT_NE(first->options, nullptr);
  EXPECT_EQ(first->sharding, nullptr);  // one shard
}

TEST(ClientProfile, AnotherUserDatabaseOrConfigurationGetsItsOwn) {
  const auto config = load();
  App app(config);
  const auto mine = app.shared_profile(login(app, config, "app", "telemetry"),
                                       *config->find_database("telemetry"));
  const auto other_user = app.shared_profile(login(app, config, "dashboard", "telemetry"),
                                             *config->find_database("telemetry"));
  const auto other_database =
      app.shared_profile(login(app, config, "app", "archive"), *config->find_database("archive"));
  // A login under a reloaded configuration keeps to that configuration.
  const auto reloaded = load();
  const auto after_reload = app.shared_profile(login(app, reloaded, "app", "telemetry"),
                                               *reloaded->find_database("telemetry"));
  EXPECT_NE(mine, other_user);
  EXPECT_NE(mine, other_database);
  EXPECT_NE(mine, after_reload);
  EXPECT_EQ(after_reload->config, reloaded);
  EXPECT_EQ(after_reload->database, reloaded->find_database("telemetry"));
}

TEST(ClientProfile, AProfileNoClientHoldsIsLetGo) {
  const auto config = load();
  App app(config);
  std::weak_ptr<const ClientProfile> gone = app.shared_profile(
      login(app, config, "app", "telemetry"), *config->find_database("telemetry"));
  EXPECT_TRUE(gone.expired());
}

}  // namespace
}  // namespace pgvalve::proxy
