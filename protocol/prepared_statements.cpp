#include "protocol/prepared_statements.h"

#include <cstring>

#include "protocol/keyed_hash.h"
#include "protocol/messages.h"

namespace pgvalve::protocol {

ServerStatementName::ServerStatementName(std::uint64_t hash) {
  static constexpr char kHex[] = "0123456789abcdef";
  static_assert(kServerStatementPrefix.size() == 4);
  std::memcpy(text_, kServerStatementPrefix.data(), kServerStatementPrefix.size());
  for (std::size_t i = 0; i < 16; ++i)
    text_[kLength - 1 - i] = kHex[(hash >> (4 * i)) & 0xf];
}

std::uint64_t statement_hash(std::string_view query, std::string_view param_types,
                             std::uint64_t context) {
  KeyedHash hash;
  hash.add(query).add(param_types);
  if (context != 0) hash.add({reinterpret_cast<const char*>(&context), sizeof context});
  const std::uint64_t h = hash.finish();
  return h == 0 ? 1 : h;  // 0 means "no statement"
}

const PreparedStatement* ClientStatements::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() || it->second.closing != 0 ? nullptr : &it->second;
}

const PreparedStatement* ClientStatements::find_any(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &it->second;
}

std::uint64_t ClientStatements::close(std::string_view name) {
  auto it = by_name_.find(name);
  if (it == by_name_.end() || it->second.closing != 0) return 0;
  it->second.closing = ++closes_;
  return closes_;
}

std::size_t ClientStatements::erase_closing(std::uint64_t close) {
  std::size_t bytes = 0;
  std::erase_if(by_name_, [&](const auto& entry) {
    const PreparedStatement& s = entry.second;
    if (close == 0 || s.closing != close) return false;
    bytes += s.query.size() + s.param_types.size();
    return true;
  });
  return bytes;
}

void ClientStatements::closed_skipped(std::uint64_t close) {
  for (auto& [_, s] : by_name_) {
    if (close != 0 && s.closing == close) s.closing = 0;
  }
}

const PreparedStatement& ClientStatements::define(std::string_view name, std::string_view query,
                                                  std::string_view param_types,
                                                  std::uint64_t fingerprint, std::uint64_t context,
                                                  std::int64_t at) {
  auto& s = by_name_[std::string(name)];
  s.query.assign(query);
  s.param_types.assign(param_types);
  const std::uint64_t hash = statement_hash(query, param_types, context);
  if (hash != s.hash) s.confirmed = false;
  s.hash = hash;
  s.shape = 0;  // not described since
  s.fingerprint = fingerprint;
  s.defined = ++defined_;
  s.defined_at = at;
  s.stale = false;
  s.closing = 0;
  return s;
}

std::size_t ClientStatements::erase_defined_up_to(std::uint64_t defined) {
  std::size_t bytes = 0;
  std::erase_if(by_name_, [&](const auto& entry) {
    const PreparedStatement& s = entry.second;
    if (s.defined > defined) return false;
    bytes += s.query.size() + s.param_types.size();
    return true;
  });
  return bytes;
}

void ClientStatements::described(std::uint64_t hash, std::uint64_t shape) {
  for (auto& [_, s] : by_name_) {
    if (s.hash == hash) s.shape = shape;
  }
}

void ClientStatements::stale(std::uint64_t hash) {
  for (auto& [_, s] : by_name_) {
    if (s.hash == hash) s.stale = true;
  }
}

void ClientStatements::confirm(std::uint64_t hash) {
  for (auto& [_, s] : by_name_) {
    if (s.hash == hash) s.confirmed = true;
  }
}

std::size_t ClientStatements::forget_unconfirmed(std::uint64_t hash) {
  std::size_t bytes = 0;
  std::erase_if(by_name_, [&](const auto& entry) {
    const PreparedStatement& s = entry.second;
    if (s.hash != hash || s.confirmed) return false;
    bytes += s.query.size() + s.param_types.size();
    return true;
  });
  return bytes;
}

bool ClientStatements::erase(std::string_view name) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return false;
  by_name_.erase(it);
  return true;
}

std::uint64_t ServerStatements::add(std::uint64_t hash, std::size_t capacity,
                                    std::int64_t prepared_at) {
  used_[hash] = {++clock_, prepared_at};
  if (used_.size() <= capacity || capacity == 0) return 0;
  auto oldest = used_.begin();
  for (auto it = used_.begin(); it != used_.end(); ++it) {
    if (it->second.last_use < oldest->second.last_use) oldest = it;
  }
  const auto evicted = oldest->first;
  used_.erase(oldest);
  return evicted;
}

std::uint64_t result_shape(const Frame& f) {
  if (f.tag != 'T') return 0;
  const auto fields = read_row_fields(f.body);
  if (!fields) return 0;
  // Not the source table and column: a table dropped and made again alike leaves the cached
  // plan's result as it was.
  KeyedHash h;
  for (const RowField& field : *fields) {
    const std::int32_t numbers[] = {field.type, field.size, field.modifier};
    h.add(field.name).add({reinterpret_cast<const char*>(numbers), sizeof numbers});
  }
  const std::uint64_t shape = h.finish();
  return shape > kDescribedPerPortal ? shape : kDescribedPerPortal + 1;
}

}  // namespace pgvalve::protocol
