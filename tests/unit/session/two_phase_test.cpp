// The names of two-phase commits over several shards, and what a part left prepared is told
// from its decider's transaction.
#include "session/two_phase.h"

#include <gtest/gtest.h>

#include "protocol/messages.h"
#include "tests/unit/session/session_test_util.h"

namespace pgvalve::session {
namespace {

TEST(TwoPhase, ANameReadsBackAsWritten) {
  const TwoPhaseName biggest{4294967295u, 2147483647u, 18446744073709551615ull, 65535,
                             18446744073709551615ull};
  const std::string gid = two_phase_gid(biggest);
  EXPECT_EQ(gid, "pgvalve:4294967295:2147483647:18446744073709551615:65535:18446744073709551615");
  EXPECT_LE(gid.size(), 80u) << "PreparedPart keeps it inline";
  EXPECT_EQ(read_two_phase_gid(gid), biggest);
  const TwoPhaseName small{7, 3, 1, 0, 4242};
  EXPECT_EQ(read_two_phase_gid(two_phase_gid(small)), small);
}

TEST(TwoPhase, OtherNamesAreNotRead) {
  for (const char* gid :
       {"pgvalve:1:2:3",  // an older pgvalve's: no decider
        "pgvalve:1:2:3:4:", "pgvalve:1:2:3:4:x", "pgvalve:1:2:3:4:5:6", "pgvalve:-1:2:3:4:5",
        "pgvalve:1:2:3:65536:5", "citus_1_2_3", "pgvalve::2:3:4:5", ""}) {
    EXPECT_FALSE(read_two_phase_gid(gid)) << gid;
  }
}

TEST(TwoPhase, TheXidComesFromPgCurrentXactIdsRow) {
  using Values = std::vector<std::optional<std::string_view>>;
  auto xid_of = [](const Values& values) {
    std::string row;
    protocol::append_data_row(row, values);
    return xid_in_row(testing::frame_of(testing::messages_of(row).front()));
  };
  EXPECT_EQ(xid_of(Values{"123456789012"}), 123456789012u);
  EXPECT_FALSE(xid_of(Values{"12a"}));
  EXPECT_FALSE(xid_of(Values{std::nullopt}));
  EXPECT_FALSE(xid_of(Values{"1", "2"}));
}

TEST(TwoPhase, TheDecidersStateIsWhatPgXactStatusSays) {
  EXPECT_EQ(decider_state("committed"), DeciderState::Committed);
  EXPECT_EQ(decider_state("aborted"), DeciderState::Aborted);
  EXPECT_EQ(decider_state("in progress"), DeciderState::InProgress);
  EXPECT_EQ(decider_state(std::nullopt), DeciderState::Unknown) << "too old: PostgreSQL forgot";
  EXPECT_EQ(decider_state("COMMITTED"), DeciderState::Unknown);
}

}  // namespace
}  // namespace pgvalve::session
