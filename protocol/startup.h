// The untagged packets a client may open a connection with: StartupMessage, SSLRequest,
// GSSENCRequest and CancelRequest.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "protocol/frame.h"

namespace pgvalve::protocol {

inline constexpr std::uint32_t kProtocolVersion3 = 196608;  // 3.0
inline constexpr std::uint32_t kSslRequestCode = 80877103;
inline constexpr std::uint32_t kGssEncRequestCode = 80877104;
inline constexpr std::uint32_t kCancelRequestCode = 80877102;
// PostgreSQL refuses startup packets above this size; so do we.
inline constexpr std::size_t kMaxStartupPacketBytes = 10000;

struct StartupMessage {
  std::uint32_t protocol_version = kProtocolVersion3;
  // In the order sent; names are unique (a repeated name keeps its last value).
  std::vector<std::pair<std::string, std::string>> parameters;

  // The value of `name`, or empty when absent.
  std::string_view get(std::string_view name) const;
};
struct SslRequest {};
struct GssEncRequest {};
struct CancelRequest {
  std::int32_t process_id = 0;
  std::int32_t secret_key = 0;
};

using StartupPacket = std::variant<StartupMessage, SslRequest, GssEncRequest, CancelRequest>;

struct StartupResult {
  DecodeStatus status = DecodeStatus::NeedMoreData;
  StartupPacket packet;
  std::size_t consumed = 0;  // bytes of `in` the packet used (Ok only)
  std::string error;  // for Invalid: a message for the client, e.g. "startup packet too large"
};

// Decodes the first untagged packet of `in`. Invalid for: length < 8 or above
// kMaxStartupPacketBytes, an unknown request code or protocol major version other than 3,
// parameters not NUL-terminated, a StartupMessage without "user", wrong length for
// SSL/GSS/Cancel requests.
StartupResult decode_startup(std::string_view in);

// What to answer a StartupMessage that asks for more than protocol 3.0, as PostgreSQL does: a
// minor version above 0 or `_pq_.` protocol options get a NegotiateProtocolVersion (3.0, and
// those options), and the connection goes on in 3.0. The options are removed from `msg`: they
// are requests about the protocol, not settings. Empty when 3.0 alone was asked for.
std::string negotiate_protocol(StartupMessage& msg);

// Whether a startup `replication` value is PostgreSQL's boolean false (false, no, off, 0, a
// unique prefix of them, any case): anything else asks for a replication connection.
bool replication_off(std::string_view value);

}  // namespace pgvalve::protocol
