#include "protocol/utf8.h"

#include <cstddef>
#include <cstdint>

namespace pgvalve::protocol {

namespace {

// The length of the valid sequence at `i`, or 0 with `bad` set to how many bytes of it form
// the maximal invalid part to replace (at least 1). Unicode's table 3-7 of well-formed UTF-8.
std::size_t sequence_at(std::string_view s, std::size_t i, std::size_t& bad) {
  const auto c = static_cast<std::uint8_t>(s[i]);
  if (c < 0x80) return 1;
  std::size_t length = 0;
  std::uint8_t low = 0x80;
  std::uint8_t high = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    length = 2;
  } else if (c == 0xE0) {
    length = 3;
    low = 0xA0;  // no overlong form
  } else if (c == 0xED) {
    length = 3;
    high = 0x9F;  // no surrogate
  } else if (c >= 0xE1 && c <= 0xEF) {
    length = 3;
  } else if (c == 0xF0) {
    length = 4;
    low = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    length = 4;
  } else if (c == 0xF4) {
    length = 4;
    high = 0x8F;  // nothing above U+10FFFF
  } else {
    bad = 1;
    return 0;
  }
  std::size_t j = 1;
  for (; j < length && i + j < s.size(); ++j) {
    const auto b = static_cast<std::uint8_t>(s[i + j]);
    if (j == 1 ? (b < low || b > high) : (b < 0x80 || b > 0xBF)) break;
  }
  if (j == length) return length;
  bad = j;
  return 0;
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    std::size_t bad = 0;
    const std::size_t n = sequence_at(text, i, bad);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string to_valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::size_t bad = 0;
    const std::size_t n = sequence_at(text, i, bad);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += bad;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace pgvalve::protocol
