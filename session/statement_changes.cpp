#include "session/statement_changes.h"

#include <algorithm>

namespace pgvalve::session {

void record_statement_change(StatementChangeTimes& changes, std::uint64_t hash, std::int64_t at) {
  if (changes.size() >= StatementChanges::kMaxEntries && !changes.contains(hash)) {
    changes.erase(
        std::min_element(changes.begin(), changes.end(),
                         [](const auto& a, const auto& b) { return a.second < b.second; }));
  }
  std::int64_t& known = changes[hash];
  known = std::max(known, at);
}

void StatementChanges::record(std::uint64_t hash, std::int64_t at) {
  std::lock_guard lock(mutex_);
  record_statement_change(changes_, hash, at);
  generation_.fetch_add(1, std::memory_order_release);
}

std::uint64_t StatementChanges::copy_to(StatementChangeTimes& into) const {
  std::lock_guard lock(mutex_);
  for (const auto& [hash, at] : changes_)
    record_statement_change(into, hash, at);
  return generation_.load(std::memory_order_acquire);
}

}  // namespace pgvalve::session
