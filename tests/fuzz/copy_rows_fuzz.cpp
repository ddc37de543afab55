// libFuzzer target for COPY FROM STDIN routed row by row (routing/copy_rows.h): the client's COPY
// data cut into rows and each sent to its key's shard. Run by `tests/run` as fuzz.copy_rows_fuzz;
// by hand: tests/fuzz/run copy_rows_fuzz. Seeds: tests/fuzz/corpus/copy_rows_fuzz/.
//
// Input: byte 0 picks the COPY's form (text, csv or binary, header, delimiter, key column,
// reference table), byte 1 how the data is cut into CopyData messages, the rest is the data.
// Besides crashes it checks that where the data is cut changes nothing (every shard gets the same
// bytes, the same rows are counted, the same error).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "routing/copy_rows.h"

namespace {

using namespace pgvalve::routing;

void check(bool ok) {
  if (!ok) std::abort();
}

ShardingPolicy policy_of(KeyType type) {
  ShardingPolicy s;
  s.tables = {"telemetry"};
  s.reference_tables = {"device_types"};
  s.shard_names = {"s0", "s1", "s2"};
  s.map = ShardMap(ShardHash::Md5Mod, type, 3, {});
  return s;
}

// Text and csv under key_type auto; binary needs a typed key.
const ShardingPolicy& policy(bool binary) {
  static const ShardingPolicy automatic = policy_of(KeyType::Auto);
  static const ShardingPolicy bigint = policy_of(KeyType::Bigint);
  return binary ? bigint : automatic;
}

const char* const kStatements[] = {
    "COPY telemetry (device_id, v) FROM STDIN",
    "COPY telemetry (v, device_id) FROM STDIN",
    "COPY telemetry (device_id) FROM STDIN WITH (FORMAT csv)",
    "COPY telemetry (ts, device_id, note) FROM STDIN WITH (FORMAT csv, HEADER)",
    "COPY telemetry (note, device_id) FROM STDIN WITH (FORMAT csv, DELIMITER ';', QUOTE '''')",
    "COPY telemetry (device_id, note) FROM STDIN WITH (FORMAT csv, ESCAPE '\\', NULL 'x')",
    "COPY telemetry (note, device_id) FROM STDIN WITH (HEADER, NULL '', DELIMITER ',')",
    "COPY device_types (id, name) FROM STDIN",
    "COPY telemetry (device_id, v) FROM STDIN (FORMAT binary)",
    "COPY telemetry (v, device_id, note) FROM STDIN BINARY",
    "COPY device_types (id, name) FROM STDIN (FORMAT binary)",
};

struct Outcome {
  bool ok = true;
  std::string error;
  std::uint64_t rows = 0;
  std::vector<std::string> out;
};

Outcome run(const CopyPlan& plan, std::string_view data, std::uint8_t cut) {
  CopyRows rows(plan, policy(plan.format == CopyPlan::Format::Binary), 256);
  Outcome o;
  o.out.assign(3, {});
  std::size_t pos = 0;
  std::uint32_t state = cut;
  while (o.ok && pos < data.size()) {
    std::size_t n = data.size() - pos;
    if (cut != 0) {
      state = state * 1103515245u + 12345u;
      n = std::min<std::size_t>(n, 1 + (state >> 16) % 17);
    }
    o.ok = rows.add(data.substr(pos, n), o.out);
    pos += n;
  }
  if (o.ok) o.ok = rows.finish(o.out);
  o.error = rows.error();
  o.rows = rows.rows();
  check(o.ok == !rows.failed());
  check(o.ok || o.error.rfind("pgvalve: ", 0) == 0);
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const char* sql = kStatements[data[0] % (sizeof kStatements / sizeof kStatements[0])];
  const bool binary = std::string_view(sql).find("BINARY") != std::string_view::npos ||
                      std::string_view(sql).find("binary") != std::string_view::npos;
  const CopyPlan plan = plan_copy(sql, policy(binary));
  check(plan.ok);
  const std::string_view copy_data = bytes.substr(2);
  const Outcome whole = run(plan, copy_data, 0);
  const Outcome cut = run(plan, copy_data, static_cast<std::uint8_t>(data[1] | 1));
  check(whole.ok == cut.ok);
  check(whole.error == cut.error);
  if (!whole.ok) return 0;
  check(whole.rows == cut.rows);
  check(whole.out == cut.out);
  std::size_t routed = 0;
  for (const std::string& o : whole.out)
    routed += o.size();
  check(routed <= (copy_data.size() + 1) * 3);  // a header or reference row reaches each shard
  return 0;
}
