// Values in PostgreSQL's binary format (the `send` functions: big-endian integers and IEEE
// floats), as Bind parameters and DataRow columns carry them. Pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgvalve::protocol {

// The bytes as one big-endian unsigned number (at most 8 of them).
std::uint64_t read_big_endian(std::string_view bytes);
// `value`'s low `width` bytes, big-endian.
std::string big_endian(std::uint64_t value, std::size_t width);

// An int2, int4 or int8 by its size (date, time and timestamps are int32/int64 too); nullopt for
// another size.
std::optional<std::int64_t> binary_integer(std::string_view bytes);
// `value` as a binary integer `width` bytes wide; nullopt when it does not fit.
std::optional<std::string> binary_integer_of(std::int64_t value, std::size_t width);

// A float4 or float8 by its size (0 for another size).
double binary_float(std::string_view bytes);
// `value` as a float4 (`width` 4) or float8.
std::string binary_float_of(double value, std::size_t width);

}  // namespace pgvalve::protocol
