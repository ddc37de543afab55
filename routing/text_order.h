// How PostgreSQL orders text in a database (its default collation), reproduced the way
// PostgreSQL computes it, so that text the shards sorted merges, and min()/max() of text
// combine, in the order one database would give.
//
// PostgreSQL compares text in the "C" and "POSIX" collations by its bytes; in any other libc
// collation with the C library's strcoll_l() for the locale, and in an ICU collation with ICU's
// ucol_strcollUTF8() for the ICU locale, ties broken by the bytes (varstr_cmp); its builtin
// provider (PostgreSQL 17) orders by code point, which is the bytes' order in UTF-8. pgvalve
// does the same with its host's libraries: the order is exact when that host has the locale and
// the glibc or ICU version the servers have (another version may order some strings
// differently, as it may between a primary and a replica). A libc locale missing on pgvalve's
// host cannot be reproduced: such an order is not usable(), and a statement that needs it is
// refused with problem().
//
// Construction loads the locale; compare() is pure and safe from any thread (strcoll_l() with a
// locale_t is; ICU collators are cloned per thread).
#pragma once

#include <locale.h>
#include <atomic>
#include <memory>

#include <string>
#include <string_view>

struct UCollator;  // ICU's

namespace pgvalve::routing {

class TextOrder {
 public:
  // The order of a database whose pg_database row has `provider` ('c' libc, 'i' ICU, 'b'
  // builtin) and `locale` (datcollate for libc; the ICU or builtin locale otherwise). One object
  // per distinct collation, kept for the life of the process (at most kMaxKnown; beyond, an
  // unusable one).
  static const TextOrder* of(char provider, std::string_view locale);
  // The order of database `dbname` in `catalog`, the health check's list of a server's databases:
  // one line per database, "name<TAB>provider<TAB>locale". Null when it does not list `dbname`.
  static const TextOrder* from_catalog(std::string_view catalog, std::string_view dbname);
  // Shards of one database whose collations differ: their text cannot be merged.
  static const TextOrder* differing(const TextOrder& a, const TextOrder& b);
  // COLLATE "C": by the bytes, whatever the database's collation.
  static const TextOrder& bytes();
  static constexpr std::size_t kMaxKnown = 64;

  ~TextOrder();
  TextOrder(const TextOrder&) = delete;
  TextOrder& operator=(const TextOrder&) = delete;

  bool usable() const { return problem_.empty(); }
  // !usable(): why, as the end of a client's error ("the collation ... is not installed on
  // pgvalve's host").
  const std::string& problem() const { return problem_; }
  // As SHOW SHARDS shows it: "C", "libc en_US.UTF-8", "icu de-DE".
  const std::string& name() const { return name_; }

  // < 0, 0, > 0 as PostgreSQL's comparison of the two texts. `a` and `b` hold no NUL (text
  // cannot). Allocates only while a thread's scratch grows (to at most 64 KiB; a longer value
  // is copied for its comparison).
  int compare(std::string_view a, std::string_view b) const;

 private:
  TextOrder(std::string name, locale_t locale, std::string problem, UCollator* icu = nullptr);
  // A new order of `provider` and `name` (of() keeps it).
  static std::unique_ptr<TextOrder> load(char provider, const std::string& name);

  std::string name_;
  locale_t locale_ = nullptr;  // libc: strcoll_l()
  UCollator* icu_ = nullptr;   // ICU: ucol_strcollUTF8(); neither: by the bytes
  std::string problem_;
};

// A sharded database's text order as its sessions read it: empty until the health checks have
// read the collation of its shards' databases. Written by the checker, read by any worker
// without a lock.
class TextOrderSlot {
 public:
  const TextOrder* get() const { return order_.load(std::memory_order_acquire); }
  void set(const TextOrder* order) { order_.store(order, std::memory_order_release); }

 private:
  std::atomic<const TextOrder*> order_{nullptr};
};

}  // namespace pgvalve::routing
