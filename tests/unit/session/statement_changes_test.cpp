// The process's record of shared statements found stale (a table they read changed its result
// type), which every worker's WorkspacePool reads.
#include "session/statement_changes.h"

#include <gtest/gtest.h>

#include "session/session.h"

namespace pgvalve::session {
namespace {

TEST(StatementChanges, AWorkerSeesWhatAnotherFound) {
  StatementChanges process;
  WorkspacePool first;
  WorkspacePool second;
  first.share_statement_changes(&process);
  second.share_statement_changes(&process);
  EXPECT_EQ(second.statement_changed_at(7), 0);
  first.statement_changed(7, 100);
  EXPECT_EQ(second.statement_changed_at(7), 100);
  second.statement_changed(7, 250);
  EXPECT_EQ(first.statement_changed_at(7), 250);
  // A later finding moves the time; an earlier one does not take it back.
  first.statement_changed(7, 200);
  EXPECT_EQ(second.statement_changed_at(7), 250);
  EXPECT_EQ(second.statement_changed_at(8), 0);
}

TEST(StatementChanges, TheOldestAreForgottenPastTheBound) {
  StatementChangeTimes times;
  for (std::uint64_t h = 1; h <= StatementChanges::kMaxEntries + 10; ++h)
    record_statement_change(times, h, static_cast<std::int64_t>(h));
  EXPECT_EQ(times.size(), StatementChanges::kMaxEntries);
  EXPECT_FALSE(times.contains(1));
  EXPECT_FALSE(times.contains(10));
  EXPECT_TRUE(times.contains(11));
  EXPECT_TRUE(times.contains(StatementChanges::kMaxEntries + 10));
}

}  // namespace
}  // namespace pgvalve::session
