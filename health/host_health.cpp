#include "health/host_health.h"

namespace pgvalve::health {

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
  // A position of the other role (a primary's WAL, a standby's replay) is not comparable.
  const bool same_role = !came_up && figures_.in_recovery == probe.in_recovery;
  figures_.previous_lsn = same_role ? figures_.lsn : 0;
  figures_.previous_success = same_role ? figures_.last_success : Clock::time_point{};
  figures_.in_recovery = probe.in_recovery;
  figures_.lsn = probe.lsn;
  figures_.receive_lsn = probe.receive_lsn;
  if (probe.timeline != 0) figures_.timeline = probe.timeline;
  figures_.prepared = probe.prepared;
  figures_.failures = 0;
  figures_.refused = false;
  figures_.last_check = now;
  figures_.last_success = now;
  figures_.last_asked = probe.asked;
  figures_.last_error.clear();
  return came_up;
}

void HostHealth::refused(std::string_view error, Clock::time_point now) {
  figures_.refused = true;
  figures_.last_check = now;
  figures_.last_error = std::string(error);
}

bool HostHealth::failed(std::string_view error, Clock::time_point now, int failures_before_down) {
  figures_.refused = false;
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
