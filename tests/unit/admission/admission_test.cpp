// The door: total and per-address socket counts, the per-address token bucket, and the bound on
// what is remembered about addresses.
#include "admission/admission.h"

#include <gtest/gtest.h>

namespace pgvalve::admission {
namespace {

using namespace std::chrono_literals;

const Address kA = Address::v4(0x0a000005);  // 10.0.0.5
const Address kB = Address::v4(0x0a000006);
const Clock::time_point t0{};

TEST(Address, PrintsBothFamilies) {
  EXPECT_EQ(kA.to_string(), "10.0.0.5");
  std::array<std::uint8_t, 16> v6{0x20, 0x01, 0x0d, 0xb8};
  v6[15] = 1;
  EXPECT_EQ(Address::v6(v6).to_string(), "2001:db8:0:0:0:0:0:1");
  EXPECT_FALSE(Address::v6(v6) == kA);
}

TEST(Admission, CountsEverySocketAgainstMaxClients) {
  Admission door;
  const Limits limits{.max_clients = 2};
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  EXPECT_EQ(door.admit(kB, limits, t0), Verdict::Admit);
  EXPECT_EQ(door.admit(kB, limits, t0), Verdict::TooManyClients);
  EXPECT_EQ(door.open(), 2);
  door.leave(kA);
  EXPECT_EQ(door.admit(kB, limits, t0), Verdict::Admit);
  EXPECT_EQ(door.open_from(kB), 2);
}

TEST(Admission, LimitsSocketsPerAddress) {
  Admission door;
  const Limits limits{.max_clients = 100, .per_address = 2};
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::TooManyFromAddress);
  EXPECT_EQ(door.admit(kB, limits, t0), Verdict::Admit);  // another address is not affected
  door.leave(kA);
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
}

TEST(Admission, RateAllowsABurstThenRefillsOverTime) {
  Admission door;
  const Limits limits{.max_clients = 100, .rate_per_s = 2, .burst = 3};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(door.admit(kA, limits, t0), Verdict::Admit) << i;
    door.leave(kA);  // closing does not give a token back
  }
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::TooFastFromAddress);
  EXPECT_EQ(door.admit(kA, limits, t0 + 400ms), Verdict::TooFastFromAddress);  // 0.8 token
  EXPECT_EQ(door.admit(kA, limits, t0 + 500ms), Verdict::Admit);               // 1 token
  EXPECT_EQ(door.admit(kA, limits, t0 + 500ms), Verdict::TooFastFromAddress);
  EXPECT_EQ(door.admit(kB, limits, t0 + 500ms), Verdict::Admit);
  // A long pause refills to the burst, not beyond.
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(door.admit(kA, limits, t0 + 60s), Verdict::Admit) << i;
  EXPECT_EQ(door.admit(kA, limits, t0 + 60s), Verdict::TooFastFromAddress);
}

TEST(Admission, RefusalsTakeNothing) {
  Admission door;
  const Limits full{.max_clients = 1, .rate_per_s = 1, .burst = 1};
  EXPECT_EQ(door.admit(kA, full, t0), Verdict::Admit);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(door.admit(kB, full, t0), Verdict::TooManyClients);
  door.leave(kA);
  EXPECT_EQ(door.admit(kB, full, t0), Verdict::Admit);  // kB's token was never spent
  EXPECT_EQ(door.open(), 1);
}

TEST(Admission, LeaveOfAnUnknownAddressIsHarmless) {
  Admission door;
  door.leave(kA);
  EXPECT_EQ(door.open(), 0);
  EXPECT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  door.leave(kA);
  door.leave(kA);
  EXPECT_EQ(door.open(), 0);
}

TEST(Admission, RemembersABoundedNumberOfIdleAddresses) {
  Admission door(/*max_idle_addresses=*/100);
  const Limits limits{.max_clients = 1000000, .rate_per_s = 1, .burst = 1};
  // A spray from many addresses, each connecting once and leaving.
  for (std::uint32_t i = 0; i < 10000; ++i) {
    const Address a = Address::v4(0x0b000000 + i);
    ASSERT_EQ(door.admit(a, limits, t0), Verdict::Admit);
    door.leave(a);
  }
  EXPECT_LE(door.tracked_addresses(), 100u);
  // Addresses with open sockets are never forgotten.
  ASSERT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  for (std::uint32_t i = 0; i < 1000; ++i) {
    const Address a = Address::v4(0x0c000000 + i);
    door.admit(a, limits, t0);
    door.leave(a);
  }
  EXPECT_EQ(door.open_from(kA), 1);
  door.leave(kA);
  EXPECT_EQ(door.open(), 0);
}

TEST(Admission, TheMostRecentlyRefusedAddressIsForgottenLast) {
  Admission door(/*max_idle_addresses=*/2);
  const Limits limits{.max_clients = 100, .rate_per_s = 1, .burst = 1};
  ASSERT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  door.leave(kA);
  ASSERT_EQ(door.admit(kB, limits, t0), Verdict::Admit);
  door.leave(kB);
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::TooFastFromAddress);  // kA now most recent
  const Address c = Address::v4(0x0a000007);
  ASSERT_EQ(door.admit(c, limits, t0), Verdict::Admit);
  door.leave(c);  // a third idle address: kB, the least recently seen, goes
  EXPECT_EQ(door.admit(kA, limits, t0), Verdict::TooFastFromAddress);  // still remembered
  EXPECT_EQ(door.admit(kB, limits, t0), Verdict::Admit);               // forgotten: fresh burst
}

}  // namespace
}  // namespace pgvalve::admission

namespace pgvalve::admission {
namespace {

using namespace std::chrono_literals;

TEST(CancelRequests, CountAgainstTheConnectRateAlsoThroughARefusingDoor) {
  Admission door;
  const Limits limits{.max_clients = 100, .per_address = 1, .rate_per_s = 1, .burst = 2};
  // Admitted: its token was taken at accept.
  ASSERT_EQ(door.admit(kA, limits, t0), Verdict::Admit);
  EXPECT_TRUE(door.cancel_admitted(kA, Verdict::Admit, limits, t0));
  // Refused for the per-address count: a cancel still passes, taking the token left...
  ASSERT_EQ(door.admit(kA, limits, t0), Verdict::TooManyFromAddress);
  EXPECT_TRUE(door.cancel_admitted(kA, Verdict::TooManyFromAddress, limits, t0));
  // ... and then no more, until the bucket refills.
  EXPECT_FALSE(door.cancel_admitted(kA, Verdict::TooManyFromAddress, limits, t0 + 500ms));
  EXPECT_TRUE(door.cancel_admitted(kA, Verdict::TooManyFromAddress, limits, t0 + 1s));
  // Refused for the rate: dropped.
  EXPECT_FALSE(door.cancel_admitted(kA, Verdict::TooFastFromAddress, limits, t0 + 10s));
  // Without a rate, a full door lets cancels through as before, from an address never seen too.
  const Limits no_rate{.max_clients = 1};
  EXPECT_TRUE(door.cancel_admitted(kB, Verdict::TooManyClients, no_rate, t0));
  const Limits rate{.max_clients = 1, .rate_per_s = 1, .burst = 1};
  const Address kC = Address::v4(0x0a000007);
  EXPECT_TRUE(door.cancel_admitted(kC, Verdict::TooManyClients, rate, t0));
  EXPECT_FALSE(door.cancel_admitted(kC, Verdict::TooManyClients, rate, t0));
}

TEST(CancelRequests, AddressesThatOnlySendCancelsAreBounded) {
  Admission door(/*max_idle_addresses=*/3);
  const Limits limits{.max_clients = 0, .rate_per_s = 1, .burst = 1};
  for (std::uint32_t i = 0; i < 100; ++i)
    EXPECT_TRUE(
        door.cancel_admitted(Address::v4(0x0b000000 + i), Verdict::TooManyClients, limits, t0));
  EXPECT_LE(door.tracked_addresses(), 3u);
}

std::chrono::milliseconds fail(Admission& door, std::string_view user, Clock::time_point at = t0,
                               const Address& from = kA) {
  return door.login_failed(from, user, at);
}

TEST(LoginFailures, TheFirstFewAreFreeThenEachWaitsTwiceAsLongUpToACap) {
  Admission door;
  ASSERT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  for (int i = 0; i < Admission::kFreeLoginFailures; ++i)
    EXPECT_EQ(fail(door, "ops").count(), 0) << i;
  EXPECT_EQ(fail(door, "ops").count(), 100);
  EXPECT_EQ(fail(door, "ops").count(), 200);
  EXPECT_EQ(fail(door, "ops").count(), 400);
  for (int i = 0; i < 20; ++i)
    fail(door, "ops");
  EXPECT_EQ(fail(door, "ops"), Admission::kMaxLoginDelay);
  // Another user, or another address, is not slowed.
  EXPECT_EQ(fail(door, "app").count(), 0);
  ASSERT_EQ(door.admit(kB, Limits{}, t0), Verdict::Admit);
  EXPECT_EQ(fail(door, "ops", t0, kB).count(), 0);
}

TEST(LoginFailures, OnlyTheUsersOwnSuccessOrAQuietMinuteForgetsThem) {
  Admission door;
  ASSERT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  for (int i = 0; i < 6; ++i)
    fail(door, "ops");
  // Another user's login from the address (an application's) does not reset them.
  door.login_succeeded(kA, "app");
  EXPECT_EQ(fail(door, "ops").count(), 800);
  door.login_succeeded(kA, "ops");
  EXPECT_EQ(fail(door, "ops").count(), 0);
  for (int i = 0; i < 6; ++i)
    fail(door, "ops");
  EXPECT_EQ(fail(door, "ops", t0 + 61s).count(), 0);
}

TEST(LoginFailures, ParallelLoginsOfAFailingUserAreCheckedOneAtATime) {
  Admission door;
  ASSERT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  // A user with no failure is not limited: a pool opening many connections at once.
  for (int i = 0; i < 100; ++i) {
    const auto turn = door.login_begins(kA, "app", t0);
    EXPECT_TRUE(turn.go);
    EXPECT_FALSE(turn.counted);
  }
  // After one failure, unanswered logins count as failures to come: two more at once.
  fail(door, "ops");
  const auto a = door.login_begins(kA, "ops", t0);
  const auto b = door.login_begins(kA, "ops", t0);
  EXPECT_TRUE(a.go && b.go);
  EXPECT_FALSE(door.login_begins(kA, "ops", t0).go);
  EXPECT_EQ(fail(door, "ops").count(), 0);
  door.login_ended(kA, "ops", a);
  EXPECT_EQ(fail(door, "ops").count(), 0);
  // Three failures: one at a time, and it holds its turn through its late answer (also when
  // the client hung up), so guesses cannot run in parallel.
  EXPECT_FALSE(door.login_begins(kA, "ops", t0).go);
  door.login_ended(kA, "ops", b);
  const auto c = door.login_begins(kA, "ops", t0);
  ASSERT_TRUE(c.go);
  EXPECT_EQ(fail(door, "ops").count(), 100);
  EXPECT_FALSE(door.login_begins(kA, "ops", t0 + 5s).go);
  door.login_ended(kA, "ops", c);
  EXPECT_TRUE(door.login_begins(kA, "ops", t0 + 5s).go);
  // Other users are not held back.
  EXPECT_TRUE(door.login_begins(kA, "app", t0).go);
}

TEST(LoginFailures, ATurnHeldAcrossTheUsersSuccessIsStillGivenBack) {
  Admission door;
  ASSERT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  for (int i = 0; i < 4; ++i)
    fail(door, "ops");
  const auto a = door.login_begins(kA, "ops", t0);
  ASSERT_TRUE(a.go && a.counted);
  door.login_succeeded(kA, "ops");
  // Forgotten: the next logins are not limited, and ending the turn breaks nothing.
  EXPECT_TRUE(door.login_begins(kA, "ops", t0).go);
  door.login_ended(kA, "ops", a);
  for (int i = 0; i < 10; ++i)
    EXPECT_TRUE(door.login_begins(kA, "ops", t0).go);
}

TEST(LoginFailures, AFloodOfUserNamesDoesNotClearANamesFailures) {
  Admission door;
  ASSERT_EQ(door.admit(kA, Limits{}, t0), Verdict::Admit);
  for (int i = 0; i < 6; ++i)
    fail(door, "ops");
  // Names beyond those the address tracks share one count: the flood slows itself down too.
  for (int i = 0; i < 1000; ++i)
    fail(door, "name" + std::to_string(i));
  EXPECT_EQ(fail(door, "ops").count(), 800);
  EXPECT_EQ(fail(door, "yet-another"), Admission::kMaxLoginDelay);
  const auto turn = door.login_begins(kA, "and-another", t0);
  EXPECT_TRUE(turn.go && turn.others);
  EXPECT_FALSE(door.login_begins(kA, "and-one-more", t0).go);
  door.login_ended(kA, "and-another", turn);
  // A name that failed in the shared count keeps it when it gets its own (here a tracked
  // name's success made room): making room does not clear it.
  door.login_succeeded(kA, "name0");
  EXPECT_EQ(fail(door, "name7"), Admission::kMaxLoginDelay);
  // A quiet minute forgets all of them.
  EXPECT_EQ(fail(door, "name7", t0 + 61s).count(), 0);
  EXPECT_EQ(fail(door, "name8", t0 + 61s).count(), 0);
}

}  // namespace
}  // namespace pgvalve::admission
