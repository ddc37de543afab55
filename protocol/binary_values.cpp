#include "protocol/binary_values.h"

#include <cstring>

namespace pgvalve::protocol {

std::uint64_t read_big_endian(std::string_view bytes) {
  std::uint64_t u = 0;
  for (char c : bytes)
    u = (u << 8) | static_cast<unsigned char>(c);
  return u;
}

std::string big_endian(std::uint64_t value, std::size_t width) {
  std::string out(width, '\0');
  for (std::size_t i = width; i > 0; --i) {
    out[i - 1] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return out;
}

std::optional<std::int64_t> binary_integer(std::string_view bytes) {
  if (bytes.size() != 2 && bytes.size() != 4 && bytes.size() != 8) return std::nullopt;
  const unsigned shift = 64 - 8 * static_cast<unsigned>(bytes.size());
  return static_cast<std::int64_t>(read_big_endian(bytes) << shift) >> shift;  // sign-extended
}

std::optional<std::string> binary_integer_of(std::int64_t value, std::size_t width) {
  if (width < 8) {
    const std::int64_t limit = std::int64_t{1} << (8 * width - 1);
    if (value < -limit || value >= limit) return std::nullopt;
  }
  return big_endian(static_cast<std::uint64_t>(value), width);
}

double binary_float(std::string_view bytes) {
  const std::uint64_t u = read_big_endian(bytes);
  if (bytes.size() == 4) {
    float f;
    const auto bits = static_cast<std::uint32_t>(u);
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  double d = 0;
  if (bytes.size() == 8) std::memcpy(&d, &u, sizeof d);
  return d;
}

std::string binary_float_of(double value, std::size_t width) {
  std::uint64_t u = 0;
  if (width == 4) {
    const auto f = static_cast<float>(value);
    std::uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    u = bits;
  } else {
    std::memcpy(&u, &value, sizeof u);
  }
  return big_endian(u, width);
}

}  // namespace pgvalve::protocol
