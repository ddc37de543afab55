// logfmt logging to stderr: one line per event, `ts=... level=... event=... key=value ...`.
// Values are quoted when they contain spaces, quotes or '='. Passwords are never passed here.
#pragma once

#include <atomic>
#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "config/config.h"

namespace pgvalve::proxy {

using config::LogLevel;

struct LogField {
  std::string_view key;
  std::string value;

  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v) : key(k), value(v) {}
  template <std::integral T>
  LogField(std::string_view k, T v) : key(k), value(std::to_string(v)) {}
  LogField(std::string_view k, double v);
};

extern std::atomic<int> g_log_level;

inline bool log_enabled(LogLevel level) {
  return static_cast<int>(level) >= g_log_level.load(std::memory_order_relaxed);
}
void set_log_level(LogLevel level);
void log_write(LogLevel level, std::string_view event, std::initializer_list<LogField> fields);

}  // namespace pgvalve::proxy

// Fields are only formatted when the level is enabled.
#define PGV_LOG(level, event, ...)                                                           \
  do {                                                                                       \
    if (::pgvalve::proxy::log_enabled(::pgvalve::config::LogLevel::level))                   \
      ::pgvalve::proxy::log_write(::pgvalve::config::LogLevel::level, event, {__VA_ARGS__}); \
  } while (0)
