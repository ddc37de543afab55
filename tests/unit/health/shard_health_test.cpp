#include "health/shard_health.h"

#include <gtest/gtest.h>

#include "health/shard_status.h"

namespace pgvalve::health {
namespace {

using namespace std::chrono_literals;
using config::FailoverMode;

Clock::time_point at(int ms) {
  return Clock::time_point{} + std::chrono::milliseconds(ms);
}

Probe primary_probe(Lsn lsn, std::uint32_t timeline = 1) {
  return Probe{false, lsn, 0, timeline};
}
Probe standby_probe(Lsn lsn, std::uint32_t timeline = 1) {
  return Probe{true, lsn, lsn, timeline};
}

ShardRules rules(FailoverMode mode = FailoverMode::Follow) {
  ShardRules r;
  r.failover = mode;
  r.failures_before_down = 2;
  r.max_replica_lag_ms = 1000;
  r.promote_after_ms = 500;
  return r;
}

TEST(Lsn, ParsesAndFormatsPostgresNotation) {
  Lsn lsn = 0;
  ASSERT_TRUE(parse_lsn("16/B374D848", lsn));
  EXPECT_EQ(lsn, 0x16B374D848u);
  EXPECT_EQ(format_lsn(lsn), "16/B374D848");
  ASSERT_TRUE(parse_lsn("0/0", lsn));
  EXPECT_EQ(lsn, 0u);
  EXPECT_FALSE(parse_lsn("", lsn));
  EXPECT_FALSE(parse_lsn("16B374D848", lsn));
  EXPECT_FALSE(parse_lsn("/1", lsn));
  EXPECT_FALSE(parse_lsn("1/", lsn));
  EXPECT_FALSE(parse_lsn("1/xyz", lsn));
  EXPECT_FALSE(parse_lsn("123456789/0", lsn));
}

TEST(HostHealth, DownAfterFailuresInARowUpAfterOneSuccess) {
  HostHealth h;
  EXPECT_TRUE(h.succeeded(primary_probe(10), at(0)));
  EXPECT_FALSE(h.failed("timeout", at(1), 3));
  EXPECT_FALSE(h.failed("timeout", at(2), 3));
  EXPECT_TRUE(h.figures().up);
  EXPECT_TRUE(h.failed("timeout", at(3), 3));
  EXPECT_FALSE(h.figures().up);
  EXPECT_EQ(h.figures().failures, 3);
  EXPECT_EQ(h.figures().last_error, "timeout");
  EXPECT_EQ(h.figures().down_since, at(3));
  EXPECT_TRUE(h.succeeded(primary_probe(11), at(4)));
  EXPECT_EQ(h.figures().failures, 0);
  EXPECT_TRUE(h.figures().last_error.empty());
}

TEST(HostHealth, AHostNeverSeenUpIsDownAtItsFirstFailedCheck) {
  HostHealth h;
  EXPECT_FALSE(h.figures().checked);
  EXPECT_TRUE(h.failed("connection refused", at(0), 3));
  EXPECT_FALSE(h.figures().up);
}

TEST(HostHealth, ASuccessInBetweenResetsTheCount) {
  HostHealth h;
  h.succeeded(primary_probe(1), at(0));
  h.failed("x", at(1), 2);
  h.succeeded(primary_probe(1), at(2));
  EXPECT_FALSE(h.failed("x", at(3), 2));
  EXPECT_TRUE(h.figures().up);
}

TEST(ShardHealth, ThePrimaryOfTheConfigurationTakesWritesBeforeItsFirstCheck) {
  ShardHealth s(3, rules());
  s.assess(at(0));
  EXPECT_EQ(s.writable_primary(), 0u);
  EXPECT_FALSE(s.assessment(1).readable);  // replicas wait for their first healthy check
}

TEST(ShardHealth, ReplicasTakeReadsAfterAHealthyCheck) {
  ShardHealth s(3, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.failed(2, "connection refused", at(0));
  s.assess(at(0));
  EXPECT_EQ(s.writable_primary(), 0u);
  EXPECT_TRUE(s.assessment(1).readable);
  EXPECT_EQ(s.assessment(1).lag_bytes, 0);
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_FALSE(s.assessment(2).readable);
  EXPECT_EQ(s.assessment(0).role, Role::Primary);
  EXPECT_EQ(s.assessment(1).role, Role::Replica);
}

TEST(ShardHealth, LagInTimeCountsFromTheLastTimeThePrimaryWasSeenAtOrBelowTheReplica) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.assess(at(0));
  // Replay stops at 100 while the primary moves on: it has what the primary had at 0, and
  // perhaps nothing since.
  s.succeeded(0, primary_probe(200), at(1000));
  s.succeeded(0, primary_probe(300), at(2000));
  s.succeeded(1, standby_probe(100), at(2100));
  s.assess(at(2100));
  EXPECT_EQ(s.assessment(1).lag_bytes, 200);
  EXPECT_EQ(s.assessment(1).lag_ms, 2100);
  EXPECT_FALSE(s.assessment(1).readable);  // max_replica_lag_ms is 1000
  // It catches up: reads again.
  s.succeeded(1, standby_probe(300), at(2500));
  s.assess(at(2500));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_EQ(s.assessment(1).lag_bytes, 0);
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AReplicaOfAnIdlePrimaryDoesNotLag) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(0, primary_probe(100), at(600000));
  s.succeeded(1, standby_probe(100), at(600000));
  s.assess(at(600000));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AWriteBetweenChecksOnAnIdlePrimaryCountsFromItsLastCheckBeforeTheWrite) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.succeeded(0, primary_probe(100), at(299000));  // idle, checked every second
  s.succeeded(1, standby_probe(100), at(299005));
  s.assess(at(299005));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  s.succeeded(0, primary_probe(150), at(300000));
  s.assess(at(300000));
  EXPECT_EQ(s.assessment(1).lag_ms, 1000);  // the write came after 299000, perhaps just after
  EXPECT_TRUE(s.assessment(1).readable);
  s.succeeded(1, standby_probe(100), at(300200));
  s.assess(at(300200));
  EXPECT_EQ(s.assessment(1).lag_ms, 1200);
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(1, standby_probe(150), at(301005));
  s.assess(at(301005));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AStoppedReplicasLagGrowsAtEveryHostsCheckNotOnlyAtItsOwn) {
  // Its own next check may be an interval away: reads on it would go on meanwhile, older than
  // max_replica_lag_ms by up to that interval.
  ShardHealth s(3, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(5));
  s.succeeded(2, standby_probe(100), at(5));
  s.assess(at(5));
  s.succeeded(0, primary_probe(200), at(600));
  s.assess(at(600));
  EXPECT_EQ(s.assessment(1).lag_ms, 600);
  EXPECT_TRUE(s.assessment(1).readable);
  s.succeeded(2, standby_probe(200), at(1100));  // another host's check
  s.assess(at(1100));
  EXPECT_EQ(s.assessment(1).lag_ms, 1100);
  EXPECT_FALSE(s.assessment(1).readable);
  EXPECT_TRUE(s.assessment(2).readable);
}

TEST(ShardHealth, AReplicaTakesNoReadsBeforeThePrimaryIsFirstSeen) {
  ShardHealth s(2, rules());
  s.succeeded(1, standby_probe(100), at(0));
  s.assess(at(0));
  ASSERT_EQ(s.writable_primary(), 0u);  // trusted before its first check
  EXPECT_FALSE(s.assessment(1).readable);
  EXPECT_EQ(s.assessment(1).lag_ms, -1);
  s.succeeded(0, primary_probe(100), at(10));
  s.assess(at(10));
  EXPECT_TRUE(s.assessment(1).readable);
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
}

TEST(ShardHealth, AReplicaBehindTheOldestPrimarySampleHasAnUnknownLagAndTakesNoReads) {
  // Replay paused long before pgvalve started: the first primary sample is already past it.
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(10'000'000), at(0));
  s.succeeded(1, standby_probe(1000), at(3));
  s.assess(at(3));
  EXPECT_EQ(s.assessment(1).lag_ms, -1);
  EXPECT_EQ(s.assessment(1).lag_bytes, 9'999'000);
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(0, primary_probe(10'000'000), at(100'000));
  s.succeeded(1, standby_probe(1000), at(100'000));
  s.assess(at(100'000));
  EXPECT_FALSE(s.assessment(1).readable);
}

TEST(ShardHealth, AReplicaCaughtUpAtStartupTakesReadsAtOnceEvenWithNoLagAllowed) {
  ShardRules r = rules();
  r.max_replica_lag_ms = 0;
  ShardHealth s(3, r);
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(5));
  s.succeeded(2, standby_probe(90), at(5));
  s.assess(at(5));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_TRUE(s.assessment(1).readable);
  EXPECT_FALSE(s.assessment(2).readable);
}

TEST(ShardHealth, AReplicaFirstBehindEverySampleIsMeasuredOnceASampleIsAtOrBelowIt) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(50), at(10));
  s.assess(at(10));
  ASSERT_FALSE(s.assessment(1).readable);
  s.succeeded(0, primary_probe(200), at(1000));
  s.succeeded(1, standby_probe(150), at(1100));
  s.assess(at(1100));
  EXPECT_EQ(s.assessment(1).lag_ms, 1100);  // since the primary was last seen at or below 150
  EXPECT_EQ(s.assessment(1).lag_bytes, 50);
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(0, primary_probe(200), at(1500));
  s.succeeded(1, standby_probe(200), at(1600));
  s.assess(at(1600));
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AfterThePrimaryMovesAReplicaBehindItsFirstPositionTakesNoReads) {
  ShardHealth s(3, rules());
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.succeeded(2, standby_probe(100, 1), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(2, primary_probe(500, 2), at(300));
  s.succeeded(1, standby_probe(400, 2), at(400));
  s.assess(at(400));
  ASSERT_EQ(s.writable_primary(), 2u);
  EXPECT_EQ(s.assessment(1).lag_ms, -1);
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(1, standby_probe(500, 2), at(500));
  s.assess(at(500));
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AfterAReloadThePrimarysLastFiguresAreTheFirstSample) {
  ShardHealth before(3, rules());
  before.succeeded(0, primary_probe(100), at(0));
  before.succeeded(1, standby_probe(100), at(0));
  before.succeeded(2, standby_probe(40), at(0));
  // A replica is added: the shard starts afresh from what its hosts' checks found.
  ShardHealth s(4, rules());
  for (std::size_t i = 0; i < 3; ++i)
    s.seed(i, before.host(i));
  s.assess(at(50));
  EXPECT_TRUE(s.assessment(1).readable);
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_FALSE(s.assessment(2).readable);
  EXPECT_FALSE(s.assessment(3).readable);
}

TEST(ShardHealth, WhileThePrimaryIsDownReplicasReadWithTheirLagUnknown) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(90), at(0));
  s.assess(at(0));
  ASSERT_FALSE(s.assessment(1).readable);
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, standby_probe(90), at(200));
  s.assess(at(200));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.assessment(1).lag_ms, -1);
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, AReplicaOnAnotherTimelineTakesNoReads) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100, 2), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.assess(at(0));
  EXPECT_FALSE(s.assessment(1).readable);
}

// A check sent at `asked_ms` (the figures held at some moment after it).
Probe asked(Probe probe, int asked_ms) {
  probe.asked = at(asked_ms);
  return probe;
}

TEST(ShardHealth, AReplicaThatReplayedPastWhereThePrimaryWasLaterIsNotOnItsHistory) {
  // Host 0 died; an external tool promoted host 1, which was behind host 2. pgvalve (started
  // afterwards) lists host 1 as the primary; host 2 still follows the dead host on the old
  // timeline, which its WAL receiver no longer shows (timeline 0: unknown).
  ShardHealth s(3, rules());
  s.succeeded(1, asked(primary_probe(100, 2), 0), at(5));
  s.succeeded(0, asked(standby_probe(100, 0), 0), at(6));
  s.succeeded(2, asked(standby_probe(500, 0), 0), at(7));
  s.assess(at(7));
  ASSERT_EQ(s.writable_primary(), 1u);
  // Past the primary's position, read after its check was sent: cannot tell yet, no reads.
  EXPECT_FALSE(s.assessment(2).readable);
  EXPECT_EQ(s.assessment(2).lag_ms, -1);
  // The next round: the primary's check was sent after host 2's first ended, and the primary
  // had written less than host 2 had replayed.
  s.succeeded(1, asked(primary_probe(120, 2), 1000), at(1005));
  s.succeeded(0, asked(standby_probe(120, 0), 1000), at(1006));
  s.succeeded(2, asked(standby_probe(500, 0), 1000), at(1007));
  s.assess(at(1007));
  EXPECT_FALSE(s.assessment(2).readable);
  EXPECT_EQ(s.assessment(2).lag_ms, -1);
  EXPECT_EQ(s.assessment(2).lag_bytes, -1);
  EXPECT_NE(s.not_promotable(2).find("not on the primary's history"), std::string_view::npos);
  EXPECT_EQ(s.most_advanced_replica(), 0u);
  EXPECT_TRUE(s.assessment(0).readable);
  // Checked before the primary in a round, host 2 is compared by that round's figures.
  s.succeeded(2, asked(standby_probe(500, 0), 2000), at(2001));
  s.succeeded(1, asked(primary_probe(130, 2), 2000), at(2005));
  s.assess(at(2005));
  EXPECT_FALSE(s.assessment(2).readable);
}

TEST(ShardHealth, AReplicaCheckedAfterThePrimaryAndAheadOfItsPositionTakesReadsFromTheNextRound) {
  // The primary writes between its check and the replica's: the replica is past the position
  // the primary reported, which the next round shows it was allowed to be.
  ShardHealth s(2, rules());
  s.succeeded(0, asked(primary_probe(100), 0), at(5));
  s.succeeded(1, asked(standby_probe(110), 0), at(6));
  s.assess(at(6));
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(0, asked(primary_probe(200), 1000), at(1005));
  s.succeeded(1, asked(standby_probe(210), 1000), at(1006));
  s.assess(at(1006));
  EXPECT_TRUE(s.assessment(1).readable);
  EXPECT_EQ(s.assessment(1).lag_ms, 0);
  EXPECT_EQ(s.not_promotable(1), "");
}

TEST(ShardHealth, AFormerPrimarysWalPositionIsNotComparedWithItsReplayAfterItRejoins) {
  ShardHealth s(2, rules(FailoverMode::Off));
  s.succeeded(0, asked(primary_probe(100), 0), at(5));
  s.succeeded(1, asked(primary_probe(900), 0), at(6));  // a former primary, not rewound yet
  s.assess(at(6));
  // Rewound and started as a standby of host 0: its WAL position as a primary is no replay.
  s.succeeded(1, asked(standby_probe(100), 1000), at(1001));
  s.succeeded(0, asked(primary_probe(100), 1000), at(1005));
  s.assess(at(1005));
  EXPECT_EQ(s.not_promotable(1).find("history"), std::string_view::npos);
}

TEST(ShardHealth, FailoverOffKeepsTheConfiguredPrimary) {
  ShardHealth s(2, rules(FailoverMode::Off));
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, primary_probe(100, 2), at(200));  // promoted by someone else
  s.assess(at(200));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.primary(), 0u);
  EXPECT_FALSE(s.assessment(1).readable);  // not in recovery: not a replica to read from
}

TEST(ShardHealth, FollowMovesToTheHostThatReportsBeingThePrimary) {
  ShardHealth s(3, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.succeeded(2, standby_probe(100), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.assess(at(200));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.no_primary_since(), at(200));
  // An external tool promotes host 2.
  s.succeeded(2, primary_probe(110, 2), at(300));
  s.assess(at(300));
  EXPECT_EQ(s.writable_primary(), 2u);
  EXPECT_EQ(s.assessment(2).role, Role::Primary);
  EXPECT_EQ(s.assessment(0).role, Role::Retired);  // down: it would claim again on restart
  // Host 1 still follows timeline 1 until it is repointed: no reads from it.
  s.succeeded(1, standby_probe(100, 1), at(300));
  s.assess(at(300));
  EXPECT_FALSE(s.assessment(1).readable);
  s.succeeded(1, standby_probe(110, 2), at(400));
  s.assess(at(400));
  EXPECT_TRUE(s.assessment(1).readable);
}

TEST(ShardHealth, TheOldPrimaryComingBackIsRetiredUntilRejoinedAsAStandby) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, primary_probe(120, 2), at(300));
  s.assess(at(300));
  ASSERT_EQ(s.writable_primary(), 1u);
  // The old primary restarts as a primary on its old timeline: a lower timeline loses.
  s.succeeded(0, primary_probe(105, 1), at(400));
  s.assess(at(400));
  EXPECT_EQ(s.writable_primary(), 1u);
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
  EXPECT_FALSE(s.assessment(0).readable);
  // An operator rewinds it and makes it a standby of the new primary.
  s.succeeded(0, standby_probe(120, 2), at(500));
  s.assess(at(500));
  EXPECT_EQ(s.assessment(0).role, Role::Replica);
  EXPECT_TRUE(s.assessment(0).readable);
}

TEST(ShardHealth, AFormerPrimaryDownWhenTheNewOneWasChosenTakesNoWritesWhenItReturns) {
  // Seen as the primary left it: down, then a primary on timeline 1 while the new primary, on
  // timeline 2, is unreachable.
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, primary_probe(120, 2), at(300));
  s.assess(at(300));
  ASSERT_EQ(s.writable_primary(), 1u);
  s.failed(1, "timeout", at(400));
  s.failed(1, "timeout", at(500));
  s.succeeded(0, primary_probe(105, 1), at(600));
  s.assess(at(600));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
  s.succeeded(1, primary_probe(130, 2), at(700));
  s.assess(at(700));
  EXPECT_EQ(s.writable_primary(), 1u);
}

TEST(ShardHealth, AFormerPrimaryIsRetiredWhenThePrimaryMovesAlsoWithTimelinesUnknown) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100, 0), at(0));
  s.succeeded(1, standby_probe(100, 0), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, primary_probe(120, 0), at(300));
  s.assess(at(300));
  ASSERT_EQ(s.writable_primary(), 1u);
  s.failed(1, "timeout", at(400));
  s.failed(1, "timeout", at(500));
  s.succeeded(0, primary_probe(105, 0), at(600));
  s.assess(at(600));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
}

TEST(ShardHealth, AClaimantOnAnOlderTimelineThanAPrimaryWasSeenOnTakesNoWrites) {
  // pgvalve restarted with the file not yet fixed after a failover: the new primary (host 1)
  // answers before the dead former primary (host 0) is first checked, so host 0 is not retired
  // when the primary moves; only its timeline tells it apart when it returns.
  ShardHealth s(2, rules());
  s.succeeded(1, primary_probe(120, 2), at(0));
  s.assess(at(0));
  ASSERT_EQ(s.writable_primary(), 1u);
  s.failed(0, "connection refused", at(10));
  s.assess(at(10));
  s.failed(1, "timeout", at(100));
  s.failed(1, "timeout", at(200));
  s.succeeded(0, primary_probe(105, 1), at(300));
  s.assess(at(300));
  EXPECT_FALSE(s.writable_primary());
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
  // Rewound into a standby of host 1 it takes reads again.
  s.succeeded(1, primary_probe(130, 2), at(400));
  s.succeeded(0, standby_probe(130, 2), at(400));
  s.assess(at(400));
  EXPECT_EQ(s.writable_primary(), 1u);
  EXPECT_EQ(s.assessment(0).role, Role::Replica);
}

TEST(ShardHealth, AFormerPrimaryThatWasNeverCheckedIsNotRetiredWhenThePrimaryMoves) {
  // At startup a replica may answer first as a primary; the host in the file may still be one
  // on a higher timeline, or on the same one (a split brain to see, not to hide).
  ShardHealth s(2, rules());
  s.succeeded(1, primary_probe(120, 2), at(0));
  s.assess(at(0));
  ASSERT_EQ(s.writable_primary(), 1u);
  s.succeeded(0, primary_probe(120, 2), at(10));
  s.assess(at(10));
  EXPECT_TRUE(s.split_brain());
  EXPECT_NE(s.assessment(0).role, Role::Retired);
}

TEST(ShardHealth, TwoPrimariesOnTheSameTimelineAreASplitBrain) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100, 3), at(0));
  s.succeeded(1, primary_probe(100, 3), at(0));
  s.assess(at(0));
  EXPECT_TRUE(s.split_brain());
  EXPECT_FALSE(s.writable_primary());
  // Resolved when one of them steps down.
  s.succeeded(1, standby_probe(100, 3), at(100));
  s.assess(at(100));
  EXPECT_FALSE(s.split_brain());
  EXPECT_EQ(s.writable_primary(), 0u);
}

TEST(ShardHealth, PromoteChoosesTheMostAdvancedReplicaAfterTheWait) {
  ShardHealth s(3, rules(FailoverMode::Promote));
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(90), at(0));
  s.succeeded(2, standby_probe(95), at(0));
  s.assess(at(0));
  EXPECT_FALSE(s.promotion_candidate(at(0)));
  s.failed(0, "refused", at(100));
  s.assess(at(100));
  EXPECT_FALSE(s.promotion_candidate(at(5000)));  // one miss is not down
  s.failed(0, "refused", at(200));
  s.assess(at(200));
  EXPECT_FALSE(s.promotion_candidate(at(600)));  // promote_after_ms not over
  EXPECT_EQ(s.promotion_candidate(at(700)), 2u);
  s.promoted(2, at(700));
  EXPECT_EQ(s.primary(), 2u);
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
  // Until the promoted host reports it, writes wait.
  EXPECT_FALSE(s.writable_primary());
  s.succeeded(2, primary_probe(96, 2), at(800));
  s.assess(at(800));
  EXPECT_EQ(s.writable_primary(), 2u);
}

TEST(ShardHealth, PromoteRefusesWhenATimelineShowsAnotherPromotion) {
  ShardHealth s(3, rules(FailoverMode::Promote));
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.succeeded(2, standby_probe(100, 1), at(0));
  s.assess(at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.succeeded(1, standby_probe(100, 2), at(200));  // follows a primary pgvalve does not see
  s.assess(at(200));
  EXPECT_FALSE(s.promotion_candidate(at(5000)));
  EXPECT_NE(s.promotion_blocked().find("newer timeline"), std::string_view::npos);
}

TEST(ShardHealth, AReplicaLeftOnTheOldTimelineIsNeverPromoted) {
  // Host 1 was promoted (timeline 2); host 2 still follows the retired host 0 on timeline 1,
  // replayed far, but without anything host 1 wrote since.
  ShardHealth s(3, rules(FailoverMode::Promote));
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(100, 1), at(0));
  s.succeeded(2, standby_probe(100, 1), at(0));
  s.assess(at(0));
  s.promoted(1, at(10));
  EXPECT_EQ(s.assessment(0).role, Role::Retired);
  // Before a check has seen host 1 on timeline 2, its promotion already rules timeline 1 out.
  EXPECT_NE(s.not_promotable(2).find("older timeline"), std::string_view::npos);
  s.succeeded(1, primary_probe(120, 2), at(100));
  s.succeeded(2, standby_probe(500, 1), at(100));
  s.assess(at(100));
  EXPECT_FALSE(s.most_advanced_replica());
  s.failed(1, "refused", at(200));
  s.failed(1, "refused", at(300));
  s.assess(at(300));
  EXPECT_FALSE(s.promotion_candidate(at(5000)));
  EXPECT_NE(s.promotion_blocked().find("timeline"), std::string_view::npos);
  // Once rejoined to host 1's timeline it may be promoted again.
  s.succeeded(2, standby_probe(110, 2), at(5100));
  s.assess(at(5100));
  EXPECT_EQ(s.promotion_candidate(at(5100)), 2u);
}

TEST(ShardHealth, UnknownTimelinesDoNotBlockAPromotion) {
  // Without pg_monitor a standby's timeline reads as 0: the replay position decides.
  ShardHealth s(3, rules(FailoverMode::Promote));
  s.succeeded(0, primary_probe(100, 1), at(0));
  s.succeeded(1, standby_probe(90, 0), at(0));
  s.succeeded(2, standby_probe(95, 0), at(0));
  s.assess(at(0));
  EXPECT_EQ(s.most_advanced_replica(), 2u);
  EXPECT_EQ(s.not_promotable(0), "it is the primary");
}

TEST(ShardHealth, FollowModeNeverPromotes) {
  ShardHealth s(2, rules(FailoverMode::Follow));
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.failed(0, "refused", at(100));
  s.failed(0, "refused", at(200));
  s.assess(at(200));
  EXPECT_FALSE(s.promotion_candidate(at(100000)));
}

TEST(ShardHealth, ASuspectReplicaTakesNoReadsUntilItsNextGoodCheck) {
  ShardHealth s(2, rules());
  s.succeeded(0, primary_probe(100), at(0));
  s.succeeded(1, standby_probe(100), at(0));
  s.assess(at(0));
  ASSERT_TRUE(s.assessment(1).readable);
  s.suspect(1);
  EXPECT_FALSE(s.assessment(1).readable);
  s.assess(at(10));
  EXPECT_FALSE(s.assessment(1).readable);  // still up by the checks' count, but suspect
  s.succeeded(1, standby_probe(100), at(20));
  s.assess(at(20));
  EXPECT_TRUE(s.assessment(1).readable);
  s.suspect(0);  // the primary is the checks' business
  EXPECT_EQ(s.writable_primary(), 0u);
}

TEST(ShardHealth, ARefusedCheckTakesNoWorkingPrimaryOutOfService) {
  ShardHealth s(2, rules());
  for (int i = 0; i < 5; ++i) {
    s.refused(0, "password authentication failed", at(i * 100));
    s.refused(1, "password authentication failed", at(i * 100));
  }
  s.assess(at(500));
  EXPECT_EQ(s.writable_primary(), 0u);     // trusted as configured
  EXPECT_FALSE(s.assessment(1).readable);  // never seen healthy: no reads
  EXPECT_TRUE(s.figures(0).refused);
  EXPECT_EQ(s.figures(0).failures, 0);
  // An up host stays up; a real failure still counts.
  s.succeeded(0, primary_probe(10), at(600));
  s.refused(0, "permission denied", at(700));
  s.assess(at(700));
  EXPECT_EQ(s.writable_primary(), 0u);
  s.failed(0, "refused", at(800));
  s.failed(0, "refused", at(900));
  s.assess(at(900));
  EXPECT_FALSE(s.writable_primary());
}

TEST(ShardStatus, PausedWritesPublishNoPrimary) {
  ShardHealth s(2, rules());
  ShardStatus status(2);
  s.succeeded(0, primary_probe(100), at(0));
  s.assess(at(0));
  status.publish(s, true);
  EXPECT_EQ(status.primary(), -1);
  // Where a statement ran is still the primary's (found by a code review: a session that
  // logged in during a switchover counted every statement on the primary as a replica's).
  EXPECT_EQ(status.checked_primary(), 0);
  status.publish(s, false);
  EXPECT_EQ(status.primary(), 0);
  EXPECT_EQ(status.checked_primary(), 0);
}

TEST(ShardStatus, PublishesWhatSessionsRead) {
  ShardHealth s(2, rules());
  ShardStatus status(2);
  EXPECT_EQ(status.primary(), 0);
  EXPECT_FALSE(status.host(1).readable.load());
  s.succeeded(0, primary_probe(80), at(0));
  s.succeeded(1, standby_probe(80), at(0));
  s.assess(at(0));
  status.publish(s);
  EXPECT_EQ(status.primary(), 0);
  EXPECT_TRUE(status.host(1).readable.load());
  EXPECT_EQ(status.host(1).lsn.load(), 80u);
  s.failed(0, "x", at(1));
  s.failed(0, "x", at(2));
  s.assess(at(2));
  status.publish(s);
  EXPECT_EQ(status.primary(), -1);
}

}  // namespace
}  // namespace pgvalve::health
