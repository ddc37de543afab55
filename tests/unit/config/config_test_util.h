// Helpers shared by the config unit tests.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "config/config.h"

namespace pgvalve::config::test {

// A real verifier for password "app-secret" (salt "pgvalve-test-salt", 4096 iterations).
inline constexpr const char* kScramVerifier =
    "SCRAM-SHA-256$4096:cGd2YWx2ZS10ZXN0LXNhbHQ=$hpFcv32lX339DOxwZmZVNtHxH6tAyAjP3zhUug/llcE=:"
    "IpDSVpiL8exhO5SQJlacGHCdGHcPGiM8SmgeSOge3fo=";
// md5("pw" + "app").
inline constexpr const char* kMd5Hash = "md581ad3d00fcdf98fbc5f8f9a859590b46";

inline std::string dump(const LoadResult& result) {
  std::string out;
  for (const ConfigError& e : result.errors)
    out += "  " + e.to_string("cfg") + "\n";
  return out.empty() ? "  (no errors)\n" : out;
}

// Passes when some error has exactly this path and line (line 0: any line) and its message
// contains `fragment`.
inline ::testing::AssertionResult has_error(const LoadResult& result, std::string_view path,
                                            int line, std::string_view fragment = "") {
  for (const ConfigError& e : result.errors) {
    if (e.path == path && (line == 0 || e.line == line) &&
        e.message.find(fragment) != std::string::npos) {
      return ::testing::AssertionSuccess();
    }
  }
  return ::testing::AssertionFailure() << "no error at " << path << " line " << line
                                       << " containing \"" << fragment << "\"; errors:\n"
                                       << dump(result);
}

// Loads with every key of the design read and validated: these tests check the validators,
// including those of keys pgvalve refuses until they work (not_supported_test.cpp checks that).
inline LoadResult load_design(const std::string& yaml) {
  return load_config_string(yaml, "<string>", Keys::WholeDesign);
}

// A minimal valid file; tests append or prepend sections.
inline constexpr const char* kMinimal =
    "users:\n"
    "  - name: app\n"
    "    password: secret\n"
    "databases:\n"
    "  telemetry:\n"
    "    shards:\n"
    "      - primary: 127.0.0.1:5432\n";

inline LoadResult load_ok(const std::string& yaml) {
  LoadResult result = load_design(yaml);
  EXPECT_TRUE(result.errors.empty()) << dump(result);
  EXPECT_NE(result.config, nullptr);
  return result;
}

}  // namespace pgvalve::config::test
