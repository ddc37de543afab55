#include "session/settings.h"

#include <algorithm>
#include <array>

#include "protocol/keyed_hash.h"

namespace pgvalve::session {

namespace {

constexpr std::array<std::string_view, 6> kSyncedReported = {
    "client_encoding", "datestyle", "timezone", "intervalstyle", "standard_conforming_strings",
    "application_name"};

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

}  // namespace

bool is_synced_setting(std::string_view name) {
  return std::any_of(kSyncedReported.begin(), kSyncedReported.end(),
                     [&](std::string_view s) { return iequals(s, name); });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = ascii_lower(c);
  return out;
}

const Setting* Settings::find(std::string_view name) const {
  for (const auto& s : items_) {
    if (iequals(s.name, name)) return &s;
  }
  return nullptr;
}

bool Settings::set(std::string_view name, std::string_view value, bool reported, SettingForm form) {
  for (auto& s : items_) {
    if (iequals(s.name, name)) {
      s.reported = s.reported || reported;
      if (s.value == value && s.form == form) return false;
      bytes_ = bytes_ - s.value.size() + value.size();
      s.value.assign(value);
      s.form = form;
      ++version_;
      return true;
    }
  }
  items_.push_back({lower(name), std::string(value), reported, form});
  bytes_ += name.size() + value.size();
  ++version_;
  return true;
}

void Settings::erase(std::string_view name) {
  for (auto it = items_.begin(); it != items_.end(); ++it) {
    if (iequals(it->name, name)) {
      bytes_ -= it->name.size() + it->value.size();
      items_.erase(it);
      ++version_;
      return;
    }
  }
}

void Settings::keep_reported_only() {
  const auto removed = std::erase_if(items_, [](const Setting& s) { return !s.reported; });
  if (removed == 0) return;
  bytes_ = 0;
  for (const auto& s : items_)
    bytes_ += s.name.size() + s.value.size();
  ++version_;
}

void Settings::clear() {
  if (items_.empty()) return;
  items_.clear();
  bytes_ = 0;
  ++version_;
}

std::uint64_t Settings::fingerprint() const {
  if (fingerprint_version_ == version_) return fingerprint_;
  // Keyed: a client must not be able to make its settings look like another client's.
  protocol::KeyedHash hash;
  for (const auto& s : items_) {
    const char form = static_cast<char>('0' + static_cast<int>(s.form));
    hash.add(s.name).add(s.value).add(std::string_view(&form, 1));
  }
  const std::uint64_t h = hash.finish();
  fingerprint_ = h;
  fingerprint_version_ = version_;
  return h;
}

}  // namespace pgvalve::session
