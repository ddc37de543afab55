// Session settings (GUCs) as pgvalve follows them: what a client has set, what a server is known
// to have, and the SQL that makes a server's settings equal to a client's. Pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgvalve::session {

// How a value was written, which decides how it is replayed on another server.
enum class SettingForm : std::uint8_t {
  Literal,  // the value itself: replayed as SET name TO 'value'
  Raw,      // SQL as the client wrote it after SET name TO (`a, "B"`, `DEFAULT`): replayed verbatim
  Function,  // a string literal given to set_config(): replayed with set_config (list settings
             // such as search_path read it differently from SET)
};

struct Setting {
  std::string name;  // lower case
  std::string value;
  bool reported = false;  // PostgreSQL announces it with ParameterStatus
  SettingForm form = SettingForm::Literal;
  bool operator==(const Setting&) const = default;
};

// The session settings PostgreSQL reports with ParameterStatus that pgvalve keeps equal between
// a client and whichever server it is lent (case-insensitive). Other reported values
// (server_version, is_superuser, ...) are the server's, not the session's.
bool is_synced_setting(std::string_view name);

// A setting PostgreSQL's parse analysis reads: names resolve by search_path (and the role, for
// "$user"); literals are read, and constants folded, by the type input functions under
// TimeZone, DateStyle, IntervalStyle, standard_conforming_strings, ... A statement prepared under
// one value is not the same statement under another (case-insensitive).
bool is_statement_context_setting(std::string_view name);

// ASCII lower case, as PostgreSQL folds parameter names.
std::string lower(std::string_view s);

// A copy shares its items with the original until either changes (copy on write): every client
// of an application that logs in with the same settings and never changes them shares one list.
// Not thread-safe: copies are shared within one worker thread.
class Settings {
 public:
  const Setting* find(std::string_view name) const;
  // The items as they are now (null: none), shared: nothing is copied until this list changes.
  std::shared_ptr<const std::vector<Setting>> share() const { return items_; }
  // The items' address: equal to a share()'s while neither changed (no reference count touched).
  const std::vector<Setting>* items() const { return items_.get(); }
  static const Setting* find_in(const std::vector<Setting>* items, std::string_view name);
  // Sets `value`; returns true when it changed.
  bool set(std::string_view name, std::string_view value, bool reported,
           SettingForm form = SettingForm::Literal);
  void erase(std::string_view name);
  // Keeps only the settings PostgreSQL reports (after DISCARD ALL / RESET ALL).
  void keep_reported_only();
  void clear();
  const std::vector<Setting>& all() const;
  std::size_t size() const { return all().size(); }
  // Bytes of names and values held, for the per-client cap.
  std::size_t bytes() const { return bytes_; }
  // Changes whenever the settings do.
  std::uint64_t version() const { return version_; }
  // A hash of the content, recomputed only after a change.
  std::uint64_t fingerprint() const;
  // A hash of the settings PostgreSQL reads a statement's text by when it prepares it
  // (is_statement_context_setting), 0 when none is set; recomputed only after a change. Prepared
  // statements of the same text are shared only between clients with the same.
  std::uint64_t statement_context() const;

 private:
  // The items, copied first when shared with another Settings.
  std::vector<Setting>& own();

  std::shared_ptr<std::vector<Setting>> items_;  // null: none
  std::size_t bytes_ = 0;
  std::uint64_t version_ = 1;
  mutable std::uint64_t fingerprint_ = 0;
  mutable std::uint64_t fingerprint_version_ = 0;
  mutable std::uint64_t context_ = 0;
  mutable std::uint64_t context_version_ = 0;
};

// Parameter values a server reported at login, in order: what clients are told at login and the
// defaults their own settings differ from. Shared per pool, never modified.
using ServerParameters = std::vector<std::pair<std::string, std::string>>;

}  // namespace pgvalve::session
