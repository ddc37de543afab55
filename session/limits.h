// Per-client bounds. Each is answered with a `pgvalve:` error that leaves other clients alone;
// documented in docs/configuration.md ("Per-client limits").
#pragma once

#include <cstddef>

namespace pgvalve::session {

inline constexpr std::size_t kMaxClientStatements = 5000;           // 53400
inline constexpr std::size_t kMaxClientStatementBytes = 32u << 20;  // 54000
// The unnamed statement kept for a later request (Session::Extras::unnamed_query): a longer one
// is not kept, and its later Bind is refused (26000) unless its server still holds it.
inline constexpr std::size_t kMaxKeptUnnamedBytes = 1u << 20;
inline constexpr std::size_t kMaxClientSettings = 256;            // 53400
inline constexpr std::size_t kMaxClientSettingBytes = 64u << 10;  // 54000
// set_config($1, $2, false): longer bound names and values are not followed (the setting is
// taken as unknown), which bounds what a pipeline of them holds before it settles.
inline constexpr std::size_t kMaxBoundSettingBytes = 1024;
inline constexpr std::size_t kMaxClientListenChannels = 1024;         // 53400
inline constexpr std::size_t kMaxQueuedNotificationBytes = 1u << 20;  // 53400, disconnected
inline constexpr std::size_t kMaxTransactionSavepoints = 4096;        // open at once; 53400
// Requests sent to a server and not yet answered. Past it pgvalve reads no more of the client
// until half are answered: backpressure, not an error.
inline constexpr std::size_t kMaxRequestsInFlight = 4096;
// Sharded databases: a longer BEGIN is sent at once (to any shard) rather than held back.
inline constexpr std::size_t kMaxDeferredBegin = 1024;
// SET pgvalve.device_id: a longer value is refused (22023).
inline constexpr std::size_t kMaxShardKeyBytes = 256;
// A read over several shards: the rows pgvalve holds while the shards answer (54000 beyond).
inline constexpr std::size_t kMaxGatheredBytes = 16u << 20;
// COPY FROM STDIN routed row by row: the longest row held while its end has not come (54000).
inline constexpr std::size_t kMaxCopyRowBytes = 16u << 20;
// A read sent to a replica up to this size is kept to run again elsewhere if the replica dies.
inline constexpr std::size_t kMaxRetriedRequestBytes = 16u << 10;
// stats.redact_literals: false: texts kept per server link for the slow-query samples of its
// outstanding requests; past it a request's sample shows the normalised text.
inline constexpr std::size_t kMaxSampleBytes = 64u << 10;

}  // namespace pgvalve::session
