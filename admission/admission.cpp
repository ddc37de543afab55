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

Admission::Entry& Admission::entry(const Address& from, const Limits& limits,
                                   Clock::time_point now) {
  auto it = addresses_.find(from);
  if (it == addresses_.end()) {
    Entry fresh;
    fresh.tokens = limits.burst;
    fresh.refilled = now;
    it = addresses_.emplace(from, std::move(fresh)).first;
    idle_.push_back(from);
    it->second.idle_position = std::prev(idle_.end());
  }
  return it->second;
}

Verdict Admission::admit(const Address& from, const Limits& limits, Clock::time_point now) {
  if (open_ >= limits.max_clients) return Verdict::TooManyClients;
  // Tracked even with no per-address limit, so that limits a reload turns on count the sockets
  // already open.
  Entry& e = entry(from, limits, now);
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

bool Admission::cancel_admitted(const Address& from, Verdict verdict, const Limits& limits,
                                Clock::time_point now) {
  if (verdict == Verdict::Admit) return true;  // its token was taken at accept
  if (verdict == Verdict::TooFastFromAddress) return false;
  if (limits.rate_per_s <= 0) return true;
  Entry& e = entry(from, limits, now);
  refill(e, limits, now);
  if (e.tokens < 1.0) return false;
  e.tokens -= 1.0;
  if (e.open == 0) {
    idle_.splice(idle_.end(), idle_, e.idle_position);  // seen just now
    // An address that only ever sent cancels is bounded as any idle one (it is last: kept).
    while (idle_.size() > max_idle_addresses_ && !(idle_.front() == from)) {
      addresses_.erase(idle_.front());
      idle_.pop_front();
    }
  }
  return true;
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

namespace {

constexpr auto kLoginMemory = std::chrono::minutes(1);

std::uint64_t user_key(std::string_view name) {
  // FNV-1a, as above. Names are kept as hashes so that a long name costs no memory; the
  // configured names are not the client's to choose, so colliding with one gains nothing.
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

Admission::Logins* Admission::logins_of(Entry& e, std::uint64_t user, Clock::time_point now,
                                        bool& others) {
  others = false;
  for (auto& l : e.logins) {
    if (now - l.last_failure > kLoginMemory) l.failures = 0;
  }
  std::erase_if(e.logins, [](const Logins& l) { return l.failures == 0 && l.unanswered == 0; });
  if (now - e.other_logins.last_failure > kLoginMemory) e.other_logins.failures = 0;
  for (auto& l : e.logins) {
    if (l.user == user) return &l;
  }
  if (e.logins.size() < kTrackedUsersPerAddress) return nullptr;
  others = true;
  return &e.other_logins;
}

Admission::LoginTurn Admission::login_begins(const Address& from, std::string_view user,
                                             Clock::time_point now) {
  auto it = addresses_.find(from);
  if (it == addresses_.end()) return {};
  bool others = false;
  Logins* l = logins_of(it->second, user_key(user), now, others);
  if (!l || l->failures == 0) return {};  // no recent failure: not limited
  // Unanswered logins count as the failures they may be: past the free ones, one at a time.
  if (l->failures + l->unanswered >= kFreeLoginFailures && l->unanswered > 0) {
    return {.go = false};
  }
  ++l->unanswered;
  return {.go = true, .counted = true, .others = others};
}

std::chrono::milliseconds Admission::login_failed(const Address& from, std::string_view user,
                                                  Clock::time_point now) {
  auto it = addresses_.find(from);
  if (it == addresses_.end()) return std::chrono::milliseconds(0);
  Entry& e = it->second;
  const std::uint64_t key = user_key(user);
  bool others = false;
  Logins* l = logins_of(e, key, now, others);
  if (!l) {
    // A name may have counted in the shared bucket while the address tracked other names: it
    // takes that count along, or their going would clear its failures.
    e.logins.push_back({.user = key, .failures = e.other_logins.failures});
    l = &e.logins.back();
  }
  l->last_failure = now;
  if (++l->failures <= kFreeLoginFailures) return std::chrono::milliseconds(0);
  const int doublings = std::min(l->failures - kFreeLoginFailures - 1, 16);
  return std::min(std::chrono::milliseconds(100) * (1 << doublings), kMaxLoginDelay);
}

void Admission::login_succeeded(const Address& from, std::string_view user) {
  auto it = addresses_.find(from);
  if (it == addresses_.end()) return;
  const std::uint64_t key = user_key(user);
  // Only the user's own count: the shared bucket holds other names' failures.
  for (auto& l : it->second.logins) {
    if (l.user == key) l.failures = 0;
  }
}

void Admission::login_ended(const Address& from, std::string_view user, const LoginTurn& turn) {
  if (!turn.counted) return;
  auto it = addresses_.find(from);
  if (it == addresses_.end()) return;
  Entry& e = it->second;
  Logins* l = nullptr;
  if (turn.others) {
    l = &e.other_logins;
  } else {
    const std::uint64_t key = user_key(user);
    for (auto& own : e.logins) {
      if (own.user == key) l = &own;
    }
  }
  if (l && l->unanswered > 0) --l->unanswered;
}

int Admission::open_from(const Address& from) const {
  auto it = addresses_.find(from);
  return it == addresses_.end() ? 0 : it->second.open;
}

}  // namespace pgvalve::admission
