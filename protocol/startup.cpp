#include "protocol/startup.h"

#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "protocol/keyed_hash.h"
#include "protocol/messages.h"
#include "protocol/wire.h"

namespace pgvalve::protocol {

std::string_view StartupMessage::get(std::string_view name) const {
  for (const auto& [key, value] : parameters) {
    if (key == name) return value;
  }
  return {};
}

namespace {

StartupResult invalid(std::string error) {
  StartupResult r;
  r.status = DecodeStatus::Invalid;
  r.error = std::move(error);
  return r;
}

// Mirrors ProcessStartupPacket in PostgreSQL's postmaster.c: name/value pairs of NUL-terminated
// strings, closed by an empty name, and the closing NUL must be the packet's last byte.
std::optional<std::string> parse_parameters(std::string_view params, StartupMessage& msg) {
  Cursor c(params);
  // A repeated name is looked for among the first few, and by a hash among the rest:
  // a search of all of them made a 10,000-byte packet of thousands of short names cost
  // milliseconds of CPU, also from a client that never logs in. Keyed, so that no client can
  // send names that all fall in one bucket; used only past them, so a usual login allocates none.
  constexpr std::size_t kSearched = 16;
  struct NameHash {
    std::size_t operator()(std::string_view name) const {
      return static_cast<std::size_t>(KeyedHash().add_bytes(name).finish());
    }
  };
  std::unordered_map<std::string_view, std::size_t, NameHash> seen;
  while (true) {
    auto name = c.cstr();
    if (!name) return "invalid startup packet layout: expected terminator as last byte";
    if (name->empty()) break;
    auto value = c.cstr();
    if (!value) return "invalid startup packet layout: expected terminator as last byte";
    auto& params = msg.parameters;
    std::size_t at = params.size();
    for (std::size_t i = 0; i < std::min(params.size(), kSearched); ++i) {
      if (params[i].first == *name) at = i;
    }
    // Names after the first few, by a view of the packet (the parameters' own strings move).
    if (at == params.size() && params.size() >= kSearched) {
      at = seen.try_emplace(*name, params.size()).first->second;
    }
    if (at == params.size()) {
      params.emplace_back(std::string(*name), std::string(*value));
    } else {
      params[at].second.assign(*value);
    }
  }
  if (!c.at_end()) return "invalid startup packet layout: expected terminator as last byte";
  if (msg.get("user").empty()) return "no PostgreSQL user name specified in startup packet";
  return std::nullopt;
}

}  // namespace

StartupResult decode_startup(std::string_view in) {
  if (in.size() < 4) return {};
  const std::uint32_t length = read_u32(in.data());
  if (length < 8 || length > kMaxStartupPacketBytes)
    return invalid("invalid length of startup packet");
  if (in.size() < length) return {};

  const std::uint32_t code = read_u32(in.data() + 4);
  StartupResult r;
  r.consumed = length;
  switch (code) {
    case kSslRequestCode:
    case kGssEncRequestCode:
      if (length != 8) return invalid("invalid length of startup packet");
      r.status = DecodeStatus::Ok;
      if (code == kSslRequestCode) {
        r.packet = SslRequest{};
      } else {
        r.packet = GssEncRequest{};
      }
      return r;
    case kCancelRequestCode: {
      if (length != 16) return invalid("invalid length of startup packet");
      CancelRequest cancel;
      cancel.process_id = static_cast<std::int32_t>(read_u32(in.data() + 8));
      cancel.secret_key = static_cast<std::int32_t>(read_u32(in.data() + 12));
      r.status = DecodeStatus::Ok;
      r.packet = cancel;
      return r;
    }
    default:
      break;
  }
  if ((code >> 16) != 3) {
    return invalid("unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                   std::to_string(code & 0xffff) + ": server supports 3.0 to 3.0");
  }
  StartupMessage msg;
  msg.protocol_version = code;
  if (auto error = parse_parameters(in.substr(8, length - 8), msg)) return invalid(*error);
  r.status = DecodeStatus::Ok;
  r.packet = std::move(msg);
  return r;
}

bool replication_off(std::string_view value) {
  std::string lowered(value.substr(0, 8));
  if (value.size() > lowered.size()) return false;
  for (char& c : lowered)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto prefix_of = [&](std::string_view word, std::size_t least) {
    return lowered.size() >= least && word.starts_with(lowered);
  };
  // As PostgreSQL's parse_bool: "o" alone could be on or off.
  return lowered == "0" || prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2);
}

std::string negotiate_protocol(StartupMessage& msg) {
  std::vector<std::string> options;
  std::erase_if(msg.parameters, [&](const auto& p) {
    if (!p.first.starts_with("_pq_.")) return false;
    options.push_back(p.first);
    return true;
  });
  std::string out;
  if ((msg.protocol_version & 0xffff) != 0 || !options.empty()) {
    append_negotiate_protocol_version(out, 0, options);
    msg.protocol_version = kProtocolVersion3;
  }
  return out;
}

}  // namespace pgvalve::protocol
