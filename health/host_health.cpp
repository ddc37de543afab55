#include "health/host_health.h"

#include <charconv>
#include <cstdio>

namespace pgvalve::health {

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

std::string_view role_name(Role role) {
  switch (role) {
    case Role::Primary:
      return "primary";
    case Role::Replica:
      return "replica";
    case Role::Retired:
      return "retired";
  }
  return "?";
}

bool HostHealth::succeeded(const Probe& probe, Clock::time_point now) {
  const bool came_up = !figures_.up;
  figures_.checked = true;
  figures_.up = true;
  figures_.in_recovery = probe.in_recovery;
  figures_.lsn = probe.lsn;
  figures_.receive_lsn = probe.receive_lsn;
  if (probe.timeline != 0) figures_.timeline = probe.timeline;
  figures_.failures = 0;
  figures_.last_check = now;
  figures_.last_success = now;
  figures_.last_error.clear();
  return came_up;
}

bool HostHealth::failed(std::string_view error, Clock::time_point now, int failures_before_down) {
  const bool first_check = !figures_.checked;
  figures_.checked = true;
  ++figures_.failures;
  figures_.last_check = now;
  figures_.last_error = std::string(error);
  // A host never seen up is down from its first failed check: nothing says it works.
  if ((figures_.up && figures_.failures >= failures_before_down) || (first_check && !figures_.up)) {
    figures_.up = false;
    figures_.down_since = now;
    return true;
  }
  return false;
}

}  // namespace pgvalve::health
