#include "health/shared_hosts.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pgvalve::health {
namespace {

using ::testing::ElementsAre;

config::Endpoint ep(std::uint16_t port) {
  return config::Endpoint{"127.0.0.1", port};
}

TEST(SharedHosts, ShardsOverTheSameHostsMoveTogetherWhateverTheOrder) {
  // telemetry/s0 and other/s0 over the same servers, the second listing a replica first.
  const std::vector<std::vector<config::Endpoint>> shards{
      {ep(5432), ep(5433), ep(5434)}, {ep(5433), ep(5432), ep(5434)}, {ep(6000), ep(6001)}};
  const HostSharing s = host_sharing(shards, 0);
  EXPECT_THAT(s.together, ElementsAre(0u, 1u));
  EXPECT_TRUE(s.entangled.empty());
  EXPECT_THAT(host_sharing(shards, 1).together, ElementsAre(0u, 1u));
  EXPECT_THAT(host_sharing(shards, 2).together, ElementsAre(2u));
}

TEST(SharedHosts, ShardsSharingSomeHostsAreEntangledBothWays) {
  // A database that lists the primary and one of its two replicas only.
  const std::vector<std::vector<config::Endpoint>> shards{{ep(5432), ep(5433), ep(5434)},
                                                          {ep(5432), ep(5433)}};
  const HostSharing first = host_sharing(shards, 0);
  EXPECT_THAT(first.together, ElementsAre(0u));
  EXPECT_THAT(first.entangled, ElementsAre(1u));
  const HostSharing second = host_sharing(shards, 1);
  EXPECT_THAT(second.together, ElementsAre(1u));
  EXPECT_THAT(second.entangled, ElementsAre(0u));
}

TEST(SharedHosts, SharingOnlyAReplicaIsEntangledToo) {
  // Promoting 5434 for the first would take the second's writable primary away from under it.
  const std::vector<std::vector<config::Endpoint>> shards{{ep(5432), ep(5434)},
                                                          {ep(5434), ep(5440)}};
  EXPECT_THAT(host_sharing(shards, 0).entangled, ElementsAre(1u));
}

TEST(SharedHosts, HostsAreComparedAsWritten) {
  // The health checker checks localhost:5432 and 127.0.0.1:5432 as two hosts; so does this.
  const std::vector<std::vector<config::Endpoint>> shards{
      {ep(5432), ep(5433)}, {config::Endpoint{"localhost", 5432}, ep(5433)}};
  EXPECT_THAT(host_sharing(shards, 0).entangled, ElementsAre(1u));
}

TEST(SharedHosts, IndexOfFindsAHostOrNothing) {
  const std::vector<config::Endpoint> hosts{ep(5432), ep(5433)};
  EXPECT_EQ(index_of(hosts, ep(5433)), 1u);
  EXPECT_EQ(index_of(hosts, ep(5499)), std::nullopt);
}

}  // namespace
}  // namespace pgvalve::health
