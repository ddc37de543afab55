// Advice from a statement's plan (EXPLAIN (FORMAT JSON), never ANALYZE) for SHOW SLOW_QUERIES:
// what an experienced DBA would look at first. Pure: plan text in, sentences out.
//  - a sequential scan with a filter on a large table (estimated cost past a threshold): an
//    index on the filtered columns;
//  - a sort or hash whose estimated size exceeds work_mem: it spills to disk.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgvalve::stats {

struct PlanSettings {
  std::uint64_t work_mem_bytes = 4u << 20;
  double hash_mem_multiplier = 2.0;
  double large_scan_cost = 1000;  // a Seq Scan costlier than this reads a large table
};

// Empty when the plan shows none of the problems above (or is not EXPLAIN JSON).
std::string plan_advice(std::string_view explain_json, const PlanSettings& settings = {});

// Why `step` ("EXPLAIN") failed, for the log, when the server refused it with `sqlstate` and
// its primary `message`. The message is left out under stats.redact_literals (`redact`): it
// may quote the statement's constants (invalid input syntax for type integer: "secret").
// Never PostgreSQL's excerpt of the statement (LINE 1: ...).
std::string refusal_reason(std::string_view step, std::string_view sqlstate,
                           std::string_view message, bool redact);

// "4MB", "64kB", "1GB" as SHOW work_mem prints them, in bytes; 0 when unreadable.
std::uint64_t parse_memory_setting(std::string_view text);

}  // namespace pgvalve::stats
