// A drill claims its shard's hosts when it is asked for, not when its coroutine first runs: two
// SWITCHOVER or FAILOVER commands queued together never both run (found by a code review: the
// second passed the check before the first had marked anything, and its end resumed writes on
// the old primary while the first still waited for the replica to replay).
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "proxy/health_checker.h"

namespace pgvalve::proxy {
namespace {

using namespace std::chrono_literals;

// Hosts nothing listens on: the drills are refused for want of a replica, after their claim.
constexpr const char* kConfig = R"(
listen: 127.0.0.1:6432
users:
  - name: app
    password: app-secret
health:
  interval_ms: 60000
databases:
  telemetry:
    shards:
      - name: s0
        primary: 127.0.0.1:1
        replicas: [127.0.0.1:2]
)";

TEST(DrillClaim, ASecondDrillAskedBeforeTheFirstRunsIsRefused) {
  auto loaded = config::load_config_string(kConfig);
  ASSERT_TRUE(loaded.errors.empty());
  boost::asio::io_context control;
  HealthChecker health(control, [](const config::Endpoint&) { return 0; });
  health.configure(loaded.config);
  std::vector<DrillResult> results;
  const auto record = [&](DrillResult r) { results.push_back(std::move(r)); };
  health.switchover("telemetry", "", std::nullopt, record);
  health.failover("telemetry", "", record);
  ASSERT_EQ(results.size(), 1u);  // refused at once, before the first drill ran
  EXPECT_EQ(results[0].message, "pgvalve: a promotion of shard s0 is already under way");
  control.run_for(200ms);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_FALSE(results[1].ok);
  EXPECT_TRUE(results[1].message.starts_with("pgvalve: shard s0 has no replica to switch to"))
      << results[1].message;
  // The refused switchover freed the hosts: the next drill runs (and finds nothing to promote).
  health.failover("telemetry", "", record);
  control.restart();
  control.run_for(200ms);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[2].message.find("already under way"), std::string::npos) << results[2].message;
  health.stop();
  control.restart();
  control.run_for(100ms);
}

}  // namespace
}  // namespace pgvalve::proxy
