#include "session/two_phase.h"

#include <charconv>

#include "protocol/wire.h"

namespace pgvalve::session {

namespace {

template <class Int>
bool read_number(std::string_view& text, Int& out, bool last) {
  const std::size_t end = last ? text.size() : text.find(':');
  if (end == 0 || end == std::string_view::npos) return false;
  const std::string_view digits = text.substr(0, end);
  if (digits.find_first_not_of("0123456789") != std::string_view::npos) return false;
  const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
  if (ec != std::errc() || p != digits.data() + digits.size()) return false;
  text.remove_prefix(last ? end : end + 1);
  return true;
}

}  // namespace

std::string two_phase_gid(const TwoPhaseName& name) {
  return "pgvalve:" + std::to_string(name.instance) + ":" + std::to_string(name.client) + ":" +
         std::to_string(name.count) + ":" + std::to_string(name.decider) + ":" +
         std::to_string(name.xid);
}

std::optional<TwoPhaseName> read_two_phase_gid(std::string_view gid) {
  constexpr std::string_view kPrefix = "pgvalve:";
  if (!gid.starts_with(kPrefix)) return std::nullopt;
  gid.remove_prefix(kPrefix.size());
  TwoPhaseName n;
  if (!read_number(gid, n.instance, false) || !read_number(gid, n.client, false) ||
      !read_number(gid, n.count, false) || !read_number(gid, n.decider, false) ||
      !read_number(gid, n.xid, true) || !gid.empty()) {
    return std::nullopt;
  }
  return n;
}

std::optional<std::uint64_t> read_xid(std::string_view text) {
  std::uint64_t xid = 0;
  if (!read_number(text, xid, true) || !text.empty()) return std::nullopt;
  return xid;
}

std::optional<std::uint64_t> xid_in_row(const protocol::Frame& row) {
  if (row.tag != 'D') return std::nullopt;
  protocol::Cursor c(row.body);
  const auto count = c.i16();
  const auto size = c.i32();
  if (!count || *count != 1 || !size || *size <= 0) return std::nullopt;
  const auto text = c.bytes(static_cast<std::size_t>(*size));
  if (!text) return std::nullopt;
  return read_xid(*text);
}

DeciderState decider_state(std::optional<std::string_view> xact_status) {
  if (!xact_status) return DeciderState::Unknown;
  if (*xact_status == "committed") return DeciderState::Committed;
  if (*xact_status == "aborted") return DeciderState::Aborted;
  if (*xact_status == "in progress") return DeciderState::InProgress;
  return DeciderState::Unknown;
}

}  // namespace pgvalve::session
