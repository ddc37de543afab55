// libFuzzer target for config/: the YAML loader, in both key modes, and what is done with a
// loaded config (describe for --check and SHOW CONFIG, diff for reload). Built and run like the
// other targets by tests/fuzz/run (ctest test fuzz.config_fuzz in `tests/run`):
//
//   tests/fuzz/run config_fuzz
//   build-fuzz/config_fuzz <crash-file>
//
// Seeds: tests/fuzz/corpus/config_fuzz/ (tests/fuzz/make_corpus.py).
//
// A configuration file comes from an operator, but a wrong one must still end in a list of
// errors, never a crash: the reload path runs it inside a serving process.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/config.h"

namespace {

using namespace pgvalve::config;

void check(const LoadResult& r) {
  // Exactly one of: a config, or at least one error, each saying something.
  if (r.config == nullptr && r.errors.empty()) std::abort();
  if (r.config != nullptr && !r.errors.empty()) std::abort();
  for (const ConfigError& e : r.errors) {
    if (e.message.empty() || e.line < 0 || e.column < 0) std::abort();
    (void)e.to_string("fuzz.yaml");
  }
  if (!r.config) return;
  if (r.config->users.empty() || r.config->databases.empty()) std::abort();
  for (const auto& [key, value] : describe(*r.config)) {
    if (key.empty()) std::abort();
    // Passwords never leave describe() in clear.
    if (key.starts_with("users.") && key.ends_with(".password") && !value.empty() &&
        value != "<hidden>" && value != "\"\"") {
      std::abort();
    }
  }
  if (!diff(*r.config, *r.config).empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The seeds use ${HOST} and ${PW}; other names stay unset and are errors.
  setenv("HOST", "127.0.0.1", 1);
  setenv("PW", "secret", 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  const LoadResult working = load_config_string(yaml);
  check(working);
  const LoadResult design = load_config_string(yaml, "<fuzz>", Keys::WholeDesign);
  check(design);
  // Refusing keys only ever removes configs: whatever loads as pgvalve runs also loads whole.
  if (working.config && !design.config) std::abort();
  return 0;
}
