#include "protocol/prepared_statements.h"

#include <cstdio>

namespace pgvalve::protocol {

std::string server_statement_name(std::uint64_t hash) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "pgv_%016llx", static_cast<unsigned long long>(hash));
  return buf;
}

std::uint64_t statement_hash(std::string_view query, std::string_view param_types) {
  // FNV-1a over both parts with a separator; 64 bits keep collisions out of reach for the
  // few thousand statements a pool sees, and the hash never leaves this process.
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(query);
  h ^= 0xff;
  h *= 1099511628211ull;
  mix(param_types);
  return h == 0 ? 1 : h;
}

const PreparedStatement* ClientStatements::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &it->second;
}

const PreparedStatement& ClientStatements::define(std::string_view name, std::string_view query,
                                                  std::string_view param_types) {
  auto& s = by_name_[std::string(name)];
  s.query.assign(query);
  s.param_types.assign(param_types);
  s.hash = statement_hash(query, param_types);
  return s;
}

bool ClientStatements::erase(std::string_view name) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return false;
  by_name_.erase(it);
  return true;
}

std::uint64_t ServerStatements::add(std::uint64_t hash, std::size_t capacity) {
  used_[hash] = ++clock_;
  if (used_.size() <= capacity || capacity == 0) return 0;
  auto oldest = used_.begin();
  for (auto it = used_.begin(); it != used_.end(); ++it) {
    if (it->second < oldest->second) oldest = it;
  }
  const auto evicted = oldest->first;
  used_.erase(oldest);
  return evicted;
}

}  // namespace pgvalve::protocol
