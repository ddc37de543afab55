#include "session/settings.h"

#include <algorithm>
#include <array>

#include "protocol/keyed_hash.h"

namespace pgvalve::session {

namespace {

constexpr std::array<std::string_view, 6> kSyncedReported = {
    "client_encoding", "datestyle", "timezone", "intervalstyle", "standard_conforming_strings",
    "application_name"};

// What parse analysis reads (PostgreSQL 15): name lookup, the type input functions that read
// literals and fold constants, and the parser's own switches.
constexpr std::array<std::string_view, 16> kStatementContext = {"search_path",
                                                                "role",
                                                                "session_authorization",
                                                                "timezone",
                                                                "timezone_abbreviations",
                                                                "datestyle",
                                                                "intervalstyle",
                                                                "standard_conforming_strings",
                                                                "backslash_quote",
                                                                "transform_null_equals",
                                                                "client_encoding",
                                                                "array_nulls",
                                                                "xmloption",
                                                                "lc_monetary",
                                                                "default_text_search_config",
                                                                "extra_float_digits"};

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

bool is_statement_context_setting(std::string_view name) {
  return std::any_of(kStatementContext.begin(), kStatementContext.end(),
                     [&](std::string_view s) { return iequals(s, name); });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = ascii_lower(c);
  return out;
}

const std::vector<Setting>& Settings::all() const {
  static const std::vector<Setting> none;
  return items_ ? *items_ : none;
}

std::vector<Setting>& Settings::own() {
  if (!items_) {
    items_ = std::make_shared<std::vector<Setting>>();
  } else if (items_.use_count() > 1) {
    items_ = std::make_shared<std::vector<Setting>>(*items_);
  }
  return *items_;
}

const Setting* Settings::find(std::string_view name) const {
  return find_in(items_.get(), name);
}

const Setting* Settings::find_in(const std::vector<Setting>* items, std::string_view name) {
  if (!items) return nullptr;
  for (const auto& s : *items) {
    if (iequals(s.name, name)) return &s;
  }
  return nullptr;
}

bool Settings::set(std::string_view name, std::string_view value, bool reported, SettingForm form) {
  const auto& items = all();
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!iequals(items[i].name, name)) continue;
    const bool same = items[i].value == value && items[i].form == form;
    if (same && (items[i].reported || !reported)) return false;
    Setting& s = own()[i];
    s.reported = s.reported || reported;
    if (same) return false;
    bytes_ = bytes_ - s.value.size() + value.size();
    s.value.assign(value);
    s.form = form;
    ++version_;
    return true;
  }
  own().push_back({lower(name), std::string(value), reported, form});
  bytes_ += name.size() + value.size();
  ++version_;
  return true;
}

void Settings::erase(std::string_view name) {
  const auto& items = all();
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!iequals(items[i].name, name)) continue;
    bytes_ -= items[i].name.size() + items[i].value.size();
    auto& mine = own();
    mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(i));
    ++version_;
    return;
  }
}

void Settings::keep_reported_only() {
  const auto& items = all();
  if (std::all_of(items.begin(), items.end(), [](const Setting& s) { return s.reported; })) return;
  auto& mine = own();
  std::erase_if(mine, [](const Setting& s) { return !s.reported; });
  bytes_ = 0;
  for (const auto& s : mine)
    bytes_ += s.name.size() + s.value.size();
  ++version_;
}

void Settings::clear() {
  if (all().empty()) return;
  items_.reset();
  bytes_ = 0;
  ++version_;
}

std::uint64_t Settings::fingerprint() const {
  if (fingerprint_version_ == version_) return fingerprint_;
  // Keyed: a client must not be able to make its settings look like another client's.
  protocol::KeyedHash hash;
  for (const auto& s : all()) {
    const char form = static_cast<char>('0' + static_cast<int>(s.form));
    hash.add(s.name).add(s.value).add(std::string_view(&form, 1));
  }
  const std::uint64_t h = hash.finish();
  fingerprint_ = h;
  fingerprint_version_ = version_;
  return h;
}

std::uint64_t Settings::statement_context() const {
  if (context_version_ == version_) return context_;
  protocol::KeyedHash hash;
  bool any = false;
  for (const auto& s : all()) {
    if (!is_statement_context_setting(s.name)) continue;
    const char form = static_cast<char>('0' + static_cast<int>(s.form));
    hash.add(s.name).add(s.value).add(std::string_view(&form, 1));
    any = true;
  }
  const std::uint64_t h = any ? hash.finish() : 0;
  context_ = h == 0 && any ? 1 : h;
  context_version_ = version_;
  return context_;
}

}  // namespace pgvalve::session
