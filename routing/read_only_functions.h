// The built-in functions and operators a hot standby can run without writing, generated from
// PostgreSQL 15's catalog into read_only_functions.cpp (see scripts/gen_read_only_functions.py).
#pragma once

#include <cstddef>
#include <string_view>

namespace pgvalve::routing {

// `name` as the parser gives it (unquoted names are lower-case, quoted ones as written, so
// "NOW" is not now). Binary search over a constexpr table; no allocation.
bool is_read_only_builtin(std::string_view name);

// An operator symbol as written (`->>`, `@>`; `!=` arrives from the parser as `<>`).
bool is_read_only_builtin_operator(std::string_view symbol);

// How many function names the table holds (for tests).
std::size_t read_only_builtin_count();

}  // namespace pgvalve::routing
