// Per-client bounds. Each is answered with a `pgvalve:` error that leaves other clients alone;
// documented in docs/configuration.md ("Per-client limits").
#pragma once

#include <cstddef>

namespace pgvalve::session {

inline constexpr std::size_t kMaxClientStatements = 5000;             // 53400
inline constexpr std::size_t kMaxClientStatementBytes = 32u << 20;    // 54000
inline constexpr std::size_t kMaxClientSettings = 256;                // 53400
inline constexpr std::size_t kMaxClientSettingBytes = 64u << 10;      // 54000
inline constexpr std::size_t kMaxClientListenChannels = 1024;         // 53400
inline constexpr std::size_t kMaxQueuedNotificationBytes = 1u << 20;  // 53400, disconnected

}  // namespace pgvalve::session
