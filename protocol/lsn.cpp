#include "protocol/lsn.h"

#include <charconv>
#include <cstdio>

namespace pgvalve::protocol {

bool parse_lsn(std::string_view text, Lsn& out) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == text.size()) return false;
  const std::string_view high = text.substr(0, slash);
  const std::string_view low = text.substr(slash + 1);
  if (high.size() > 8 || low.size() > 8) return false;
  std::uint32_t h = 0;
  std::uint32_t l = 0;
  auto r1 = std::from_chars(high.data(), high.data() + high.size(), h, 16);
  auto r2 = std::from_chars(low.data(), low.data() + low.size(), l, 16);
  if (r1.ec != std::errc() || r1.ptr != high.data() + high.size()) return false;
  if (r2.ec != std::errc() || r2.ptr != low.data() + low.size()) return false;
  out = (static_cast<Lsn>(h) << 32) | l;
  return true;
}

std::string format_lsn(Lsn lsn) {
  char buffer[24];
  std::snprintf(buffer, sizeof buffer, "%X/%X", static_cast<unsigned>(lsn >> 32),
                static_cast<unsigned>(lsn & 0xffffffffu));
  return buffer;
}

}  // namespace pgvalve::protocol
