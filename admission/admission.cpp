#include "admission/admission.h"

#include <algorithm>
#include <cstdio>

namespace pgvalve::admission {

Address Address::v4(std::uint32_t host_order) {
  Address a;
  a.bytes[10] = 0xff;
  a.bytes[11] = 0xff;
  for (int i = 0; i < 4; ++i)
    a.bytes[12 + i] = static_cast<std::uint8_t>(host_order >> (24 - 8 * i));
  return a;
}

Address Address::v6(const std::array<std::uint8_t, 16>& bytes) {
  Address a;
  a.bytes = bytes;
  return a;
}

std::string Address::to_string() const {
  char out[48];
  const bool mapped =
      std::all_of(bytes.begin(), bytes.begin() + 10, [](auto b) { return b == 0; }) &&
      bytes[10] == 0xff && bytes[11] == 0xff;
  if (mapped) {
    std::snprintf(out, sizeof out, "%u.%u.%u.%u", bytes[12], bytes[13], bytes[14], bytes[15]);
    return out;
  }
  std::string s;
  for (int i = 0; i < 16; i += 2) {
    if (i) s += ':';
    std::snprintf(out, sizeof out, "%x", (bytes[i] << 8) | bytes[i + 1]);
    s += out;
  }
  return s;
}

std::size_t AddressHash::operator()(const Address& a) const noexcept {
  // FNV-1a: the table is bounded, so a crafted collision costs a few comparisons at most.
  std::uint64_t h = 1469598103934665603ull;
  for (auto b : a.bytes) {
    h ^= b;
    h *= 1099511628211ull;
  }
  return static_cast<std::size_t>(h);
}

void Admission::refill(Entry& e, const Limits& limits, Clock::time_point now) const {
  if (limits.rate_per_s <= 0) return;
  const double seconds = std::chrono::duration<double>(now - e.refilled).count();
  if (seconds > 0) {
    e.tokens = std::min<double>(limits.burst, e.tokens + seconds * limits.rate_per_s);
    e.refilled = now;
  }
}

Verdict Admission::admit(const Address& from, const Limits& limits, Clock::time_point now) {
  if (open_ >= limits.max_clients) return Verdict::TooManyClients;
  auto it = addresses_.find(from);
  if (it == addresses_.end()) {
    // Tracked even with no per-address limit, so that limits a reload turns on count the
    // sockets already open.
    Entry fresh;
    fresh.tokens = limits.burst;
    fresh.refilled = now;
    it = addresses_.emplace(from, fresh).first;
    idle_.push_back(from);
    it->second.idle_position = std::prev(idle_.end());
  }
  Entry& e = it->second;
  refill(e, limits, now);
  Verdict verdict = Verdict::Admit;
  if (limits.per_address > 0 && e.open >= limits.per_address) {
    verdict = Verdict::TooManyFromAddress;
  } else if (limits.rate_per_s > 0 && e.tokens < 1.0) {
    verdict = Verdict::TooFastFromAddress;
  }
  if (verdict != Verdict::Admit) {
    if (e.open == 0) idle_.splice(idle_.end(), idle_, e.idle_position);  // seen just now
    return verdict;
  }
  if (limits.rate_per_s > 0) e.tokens -= 1.0;
  if (e.open == 0) idle_.erase(e.idle_position);
  ++e.open;
  ++open_;
  return Verdict::Admit;
}

void Admission::became_idle(const Address& from, Entry& e) {
  idle_.push_back(from);
  e.idle_position = std::prev(idle_.end());
  while (idle_.size() > max_idle_addresses_) {
    addresses_.erase(idle_.front());
    idle_.pop_front();
  }
}

void Admission::leave(const Address& from) {
  auto it = addresses_.find(from);
  if (it == addresses_.end() || it->second.open == 0) return;
  --open_;
  if (--it->second.open == 0) became_idle(from, it->second);
}

std::chrono::milliseconds Admission::login_failed(const Address& from, Clock::time_point now) {
  auto it = addresses_.find(from);
  if (it == addresses_.end()) return std::chrono::milliseconds(0);
  Entry& e = it->second;
  if (now - e.last_login_failure > std::chrono::minutes(1)) e.login_failures = 0;
  e.last_login_failure = now;
  if (++e.login_failures <= kFreeLoginFailures) return std::chrono::milliseconds(0);
  const int doublings = std::min(e.login_failures - kFreeLoginFailures - 1, 16);
  return std::min(std::chrono::milliseconds(100) * (1 << doublings), kMaxLoginDelay);
}

void Admission::login_succeeded(const Address& from) {
  auto it = addresses_.find(from);
  if (it != addresses_.end()) it->second.login_failures = 0;
}

int Admission::open_from(const Address& from) const {
  auto it = addresses_.find(from);
  return it == addresses_.end() ? 0 : it->second.open;
}

}  // namespace pgvalve::admission
