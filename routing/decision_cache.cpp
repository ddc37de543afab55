#include "routing/decision_cache.h"

#include <algorithm>
#include <bit>

#include <xxhash.h>

#include "routing/fingerprint.h"

namespace pgvalve::routing {

DecisionCache::DecisionCache(std::size_t capacity) {
  capacity = std::clamp<std::size_t>(capacity, 1, kNone - 1);
  entries_.resize(capacity);
  // At most half full, so probe sequences stay short.
  slots_.assign(std::bit_ceil(capacity * 2), kNone);
  mask_ = slots_.size() - 1;
}

std::size_t DecisionCache::home_slot(DecisionKey key) const {
  // Fingerprints are XXH3 values already; the multiply spreads tests' small keys too.
  const std::uint64_t mixed = key.fingerprint ^ (std::uint64_t{key.write_functions} << 32);
  return static_cast<std::size_t>((mixed * 0x9E3779B97F4A7C15ULL) >> 17) & mask_;
}

std::size_t DecisionCache::find_slot(DecisionKey key) const {
  for (std::size_t i = home_slot(key);; i = (i + 1) & mask_) {
    const std::uint32_t index = slots_[i];
    if (index == kNone) return slots_.size();
    if (entries_[index].key == key) return i;
  }
}

// Backward-shift deletion: later members of the probe run move up, so no tombstones pile up.
void DecisionCache::erase_slot(std::size_t slot) {
  std::size_t hole = slot;
  std::size_t j = slot;
  while (true) {
    j = (j + 1) & mask_;
    const std::uint32_t index = slots_[j];
    if (index == kNone) break;
    const std::size_t home = home_slot(entries_[index].key);
    // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    slots_[hole] = index;
    hole = j;
  }
  slots_[hole] = kNone;
}

void DecisionCache::unlink(std::uint32_t index) {
  Entry& e = entries_[index];
  if (e.prev != kNone) {
    entries_[e.prev].next = e.next;
  } else {
    head_ = e.next;
  }
  if (e.next != kNone) {
    entries_[e.next].prev = e.prev;
  } else {
    tail_ = e.prev;
  }
  e.prev = e.next = kNone;
}

void DecisionCache::push_front(std::uint32_t index) {
  Entry& e = entries_[index];
  e.prev = kNone;
  e.next = head_;
  if (head_ != kNone) entries_[head_].prev = index;
  head_ = index;
  if (tail_ == kNone) tail_ = index;
}

const StatementAccess* DecisionCache::lookup(DecisionKey key) {
  const std::size_t slot = find_slot(key);
  if (slot == slots_.size()) {
    ++stats_.misses;
    return nullptr;
  }
  ++stats_.hits;
  const std::uint32_t index = slots_[slot];
  if (index != head_) {
    unlink(index);
    push_front(index);
  }
  return &entries_[index].value;
}

void DecisionCache::insert(DecisionKey key, const StatementAccess& value) {
  if (const std::size_t slot = find_slot(key); slot != slots_.size()) {
    const std::uint32_t index = slots_[slot];
    entries_[index].value = value;
    entries_[index].shard_plan_for = 0;
    entries_[index].scatter_plan.reset();
    unlink(index);
    push_front(index);
    return;
  }
  std::uint32_t index;
  if (size_ < entries_.size()) {
    index = static_cast<std::uint32_t>(size_++);
  } else {
    index = tail_;
    erase_slot(find_slot(entries_[index].key));
    unlink(index);
    ++stats_.evictions;
  }
  entries_[index].key = key;
  entries_[index].value = value;
  entries_[index].shard_plan_for = 0;
  entries_[index].scatter_plan.reset();
  push_front(index);
  std::size_t i = home_slot(key);
  while (slots_[i] != kNone)
    i = (i + 1) & mask_;
  slots_[i] = index;
}

const StatementAccess& DecisionCache::decide(std::string_view sql,
                                             const std::vector<std::string>& write_functions,
                                             std::uint32_t list) {
  return decide({fingerprint(sql), list}, sql, write_functions);
}

const StatementAccess& DecisionCache::decide(DecisionKey key, std::string_view sql,
                                             const std::vector<std::string>& write_functions) {
  if (const StatementAccess* cached = lookup(key)) return *cached;
  const StatementAccess decided = decide_access(sql, write_functions);
  if (!decided.parsed) {
    uncached_ = decided;
    return uncached_;
  }
  insert(key, decided);
  return entries_[head_].value;
}

const ShardPlan* DecisionCache::shard_plan(DecisionKey key, std::uint32_t policy) const {
  const std::size_t slot = find_slot(key);
  if (slot == slots_.size()) return nullptr;
  const Entry& e = entries_[slots_[slot]];
  return e.shard_plan_for == policy ? &e.shard_plan : nullptr;
}

void DecisionCache::set_shard_plan(DecisionKey key, std::uint32_t policy, const ShardPlan& plan) {
  const std::size_t slot = find_slot(key);
  if (slot == slots_.size()) return;
  Entry& e = entries_[slots_[slot]];
  e.shard_plan = plan;
  e.shard_plan_for = policy;
  e.scatter_plan.reset();
}

const ScatterPlan* DecisionCache::scatter_plan(DecisionKey key, std::uint32_t policy) const {
  const std::size_t slot = find_slot(key);
  if (slot == slots_.size()) return nullptr;
  const Entry& e = entries_[slots_[slot]];
  return e.shard_plan_for == policy ? e.scatter_plan.get() : nullptr;
}

void DecisionCache::set_scatter_plan(DecisionKey key, std::uint32_t policy, ScatterPlan plan) {
  const std::size_t slot = find_slot(key);
  if (slot == slots_.size()) return;
  Entry& e = entries_[slots_[slot]];
  if (e.shard_plan_for != policy) return;
  e.scatter_plan = std::make_unique<ScatterPlan>(std::move(plan));
}

const KeyParams* DecisionCache::key_params(std::string_view sql, std::uint32_t policy) const {
  if (key_params_.empty() || sql.size() > kMaxKeyParamsText) return nullptr;
  const std::uint64_t hash = XXH3_64bits(sql.data(), sql.size());
  const KeyParamsSlot& slot = key_params_[hash & (kKeyParamsSlots - 1)];
  if (slot.policy != policy || slot.text_hash != hash || slot.text != sql) return nullptr;
  return &slot.layout;
}

void DecisionCache::set_key_params(std::string_view sql, std::uint32_t policy,
                                   const KeyParams& layout) {
  if (policy == 0 || layout.count == 0 || sql.size() > kMaxKeyParamsText) return;
  if (key_params_.empty()) key_params_.resize(kKeyParamsSlots);
  const std::uint64_t hash = XXH3_64bits(sql.data(), sql.size());
  KeyParamsSlot& slot = key_params_[hash & (kKeyParamsSlots - 1)];
  slot.text_hash = hash;
  slot.policy = policy;
  slot.layout = layout;
  slot.text.assign(sql);
}

void DecisionCache::clear() {
  for (KeyParamsSlot& slot : key_params_)
    slot.policy = 0;
  std::fill(slots_.begin(), slots_.end(), kNone);
  for (std::size_t i = 0; i < size_; ++i)
    entries_[i].prev = entries_[i].next = kNone;
  size_ = 0;
  head_ = tail_ = kNone;
}

}  // namespace pgvalve::routing
