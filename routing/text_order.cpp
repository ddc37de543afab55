#include "routing/text_order.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <unicode/ucol.h>
#include <unicode/uversion.h>

namespace pgvalve::routing {

namespace {

int by_bytes(std::string_view a, std::string_view b) {
  const int c = a.compare(b);
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

}  // namespace

TextOrder::TextOrder(std::string name, locale_t locale, std::string problem, UCollator* icu)
    : name_(std::move(name)), locale_(locale), icu_(icu), problem_(std::move(problem)) {}

TextOrder::~TextOrder() {
  if (locale_ != nullptr) freelocale(locale_);
  if (icu_ != nullptr) ucol_close(icu_);
}

const TextOrder& TextOrder::bytes() {
  static const TextOrder order("C", nullptr, "");
  return order;
}

namespace {

// Kept for the life of the process: sessions hold plain pointers. Only the health checker adds,
// when a database's collation is first seen.
struct Known {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<TextOrder>, std::less<>> orders;
};

Known& known() {
  static Known k;
  return k;
}

// The kept order of `key`, made by `make()` the first time; null once kMaxKnown are kept.
template <typename Make>
const TextOrder* intern(const std::string& key, Make make) {
  Known& k = known();
  std::lock_guard lock(k.mutex);
  if (auto it = k.orders.find(key); it != k.orders.end()) return it->second.get();
  if (k.orders.size() >= TextOrder::kMaxKnown) return nullptr;
  std::unique_ptr<TextOrder> order = make();
  const TextOrder* result = order.get();
  k.orders.emplace(key, std::move(order));
  return result;
}

}  // namespace

const TextOrder* TextOrder::of(char provider, std::string_view locale) {
  static const TextOrder too_many("(too many)", nullptr,
                                  "pgvalve has seen more than 64 collations and keeps no more");
  const std::string name(locale);
  const TextOrder* order =
      intern(std::string(1, provider) + ":" + name, [&] { return load(provider, name); });
  return order != nullptr ? order : &too_many;
}

std::unique_ptr<TextOrder> TextOrder::load(char provider, const std::string& name) {
  std::unique_ptr<TextOrder> order;
  // A locale name with a slash is a path to glibc: only names as PostgreSQL's catalogs hold.
  const bool plain =
      !name.empty() && name.size() <= 128 && std::all_of(name.begin(), name.end(), [](char c) {
        return c > ' ' && c < 0x7f && c != '/' && c != '\\';
      });
  if (!plain) {
    order.reset(new TextOrder("(unreadable)", nullptr,
                              "the database's collation has a name pgvalve does not load"));
  } else if (provider == 'c' && (name == "C" || name == "POSIX")) {
    order.reset(new TextOrder(name, nullptr, ""));
  } else if (provider == 'c') {
    locale_t loaded = newlocale(LC_COLLATE_MASK, name.c_str(), static_cast<locale_t>(nullptr));
    if (loaded != nullptr) {
      order.reset(new TextOrder("libc " + name, loaded, ""));
    } else {
      order.reset(
          new TextOrder("libc " + name, nullptr,
                        "the database's collation \"" + name +
                            "\" is not installed on pgvalve's host (add it there, for example with "
                            "`localedef -i en_US -f UTF-8 en_US.UTF-8` for en_US.UTF-8)"));
    }
  } else if (provider == 'b') {
    // C, C.UTF-8 and PG_UNICODE_FAST order by code point: UTF-8's bytes.
    order.reset(new TextOrder("builtin " + name, nullptr, ""));
  } else if (provider == 'i') {
    // As PostgreSQL opens it; an unknown locale falls back to ICU's root collation there and
    // here alike (a warning, not a failure).
    UErrorCode status = U_ZERO_ERROR;
    UCollator* collator = ucol_open(name.c_str(), &status);
    if (U_SUCCESS(status) && collator != nullptr) {
      order.reset(new TextOrder("icu " + name, nullptr, "", collator));
    } else {
      if (collator != nullptr) ucol_close(collator);
      order.reset(new TextOrder("icu " + name, nullptr,
                                "ICU cannot open the database's collation \"" + name +
                                    "\" on pgvalve's host (" + u_errorName(status) + ")"));
    }
  } else {
    order.reset(new TextOrder(name, nullptr,
                              "the database's collation provider '" + std::string(1, provider) +
                                  "' is unknown to pgvalve"));
  }
  return order;
}

const TextOrder* TextOrder::from_catalog(std::string_view catalog, std::string_view dbname) {
  while (!catalog.empty()) {
    const std::size_t end = std::min(catalog.find('\n'), catalog.size());
    const std::string_view line = catalog.substr(0, end);
    catalog.remove_prefix(std::min(end + 1, catalog.size()));
    const std::size_t tab = line.find('\t');
    if (tab == std::string_view::npos || line.substr(0, tab) != dbname) continue;
    const std::string_view rest = line.substr(tab + 1);
    if (rest.size() < 2 || rest[1] != '\t') continue;
    return of(rest[0], rest.substr(2));
  }
  return nullptr;
}

const TextOrder* TextOrder::differing(const TextOrder& a, const TextOrder& b) {
  static const TextOrder too_many("(too many)", nullptr,
                                  "the shards' databases have different collations");
  const TextOrder* order = intern("differ:" + a.name() + "|" + b.name(), [&] {
    return std::unique_ptr<TextOrder>(
        new TextOrder(a.name() + " / " + b.name(), nullptr,
                      "the shards' databases have different collations (" + a.name() + " on one, " +
                          b.name() + " on another)"));
  });
  return order != nullptr ? order : &too_many;
}

namespace {

// ICU's guide says a collator is not to be shared between threads: each thread compares with
// its own clone of each, made on its first comparison and closed when the thread ends.
class ThreadCollators {
 public:
  ~ThreadCollators() {
    for (auto& [original, clone] : clones_)
      ucol_close(clone);
  }
  UCollator* of(const UCollator* original) {
    for (auto& [known, clone] : clones_) {
      if (known == original) return clone;
    }
    UErrorCode status = U_ZERO_ERROR;
#if U_ICU_VERSION_MAJOR_NUM >= 71
    UCollator* clone = ucol_clone(original, &status);
#else
    UCollator* clone = ucol_safeClone(original, nullptr, nullptr, &status);
#endif
    if (U_FAILURE(status) || clone == nullptr) return nullptr;
    clones_.emplace_back(original, clone);
    return clone;
  }

 private:
  std::vector<std::pair<const UCollator*, UCollator*>> clones_;  // at most one per TextOrder
};

}  // namespace

int TextOrder::compare(std::string_view a, std::string_view b) const {
  if (locale_ == nullptr && icu_ == nullptr) return by_bytes(a, b);
  if (a == b) return 0;
  if (icu_ != nullptr) {
    thread_local ThreadCollators collators;
    UCollator* collator = collators.of(icu_);
    if (collator == nullptr) collator = icu_;  // no memory for a clone: the shared one
    UErrorCode status = U_ZERO_ERROR;
    const UCollationResult c =
        ucol_strcollUTF8(collator, a.data(), static_cast<std::int32_t>(a.size()), b.data(),
                         static_cast<std::int32_t>(b.size()), &status);
    if (U_FAILURE(status) || c == UCOL_EQUAL) return by_bytes(a, b);
    return c == UCOL_LESS ? -1 : 1;
  }
  // strcoll_l() reads NUL-terminated strings: copies into scratch each thread keeps (up to
  // kKeptScratch; a longer value's copy goes with the comparison).
  thread_local std::string x;
  thread_local std::string y;
  x.assign(a);
  y.assign(b);
  const int c = strcoll_l(x.c_str(), y.c_str(), locale_);
  constexpr std::size_t kKeptScratch = 64 << 10;
  if (x.capacity() > kKeptScratch) std::string().swap(x);
  if (y.capacity() > kKeptScratch) std::string().swap(y);
  // Equal in the collation but not in bytes: PostgreSQL breaks the tie by the bytes.
  if (c == 0) return by_bytes(a, b);
  return c < 0 ? -1 : 1;
}

}  // namespace pgvalve::routing
