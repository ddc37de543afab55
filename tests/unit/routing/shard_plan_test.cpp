#include "routing/shard_plan.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "routing/decision_cache.h"
#include "routing/fingerprint.h"
#include "routing/parse_tree.h"
#include "routing/router.h"
#include "routing/shard_map.h"

namespace pgvalve::routing {
namespace {

using Status = ShardKeys::Status;
using Key = ShardPlan::Key;
using Tables = ShardPlan::Tables;
using Kind = Route::Kind;

constexpr std::uint32_t kOidInt2 = 21;
constexpr std::uint32_t kOidInt4 = 23;
constexpr std::uint32_t kOidInt8 = 20;
constexpr std::uint32_t kOidNumeric = 1700;
constexpr std::uint32_t kOidText = 25;
constexpr std::uint32_t kOidVarchar = 1043;
constexpr std::uint32_t kOidUuid = 2950;

// ---- the policy under test ---------------------------------------------------------------------

ShardingPolicy make_policy(KeyType type = KeyType::Auto) {
  ShardingPolicy p;
  p.key = "device_id";
  p.tables = {"telemetry", "device_events"};
  p.reference_tables = {"device_types"};
  std::vector<std::uint16_t> owners(1024);
  for (std::size_t b = 0; b < owners.size(); ++b)
    owners[b] = static_cast<std::uint16_t>(b / 256);  // s0: 0-255, s1: 256-511, ...
  p.map = ShardMap(ShardHash::Xxh3, type, 4, owners);
  p.shard_names = {"s0", "s1", "s2", "s3"};
  return p;
}

int shard_of_value(std::string_view text, const ShardingPolicy& policy) {
  const std::optional<KeyValue> key = key_from_text(text, policy.map.key_type());
  return key ? policy.map.shard_of(*key) : -1;
}

std::uint64_t bit_of(std::string_view text, const ShardingPolicy& policy) {
  const int shard = shard_of_value(text, policy);
  return shard < 0 ? 0 : std::uint64_t{1} << shard;
}

// ---- printing ----------------------------------------------------------------------------------

std::string status_name(Status s) {
  switch (s) {
    case Status::Found:
      return "Found";
    case Status::NotBound:
      return "NotBound";
    case Status::NoKey:
      return "NoKey";
    case Status::Null:
      return "Null";
    case Status::Invalid:
      return "Invalid";
  }
  return "?";
}

std::string key_name(Key k) {
  switch (k) {
    case Key::None:
      return "None";
    case Key::Slots:
      return "Slots";
    case Key::Reparse:
      return "Reparse";
    case Key::InsertNoKey:
      return "InsertNoKey";
    case Key::InsertSelect:
      return "InsertSelect";
    case Key::UpdatesKey:
      return "UpdatesKey";
    case Key::Multiple:
      return "Multiple";
    case Key::CopyFrom:
      return "CopyFrom";
    case Key::Unparsed:
      return "Unparsed";
    case Key::TooLong:
      return "TooLong";
  }
  return "?";
}

std::string tables_name(Tables t) {
  switch (t) {
    case Tables::None:
      return "None";
    case Tables::ReferenceOnly:
      return "ReferenceOnly";
    case Tables::Sharded:
      return "Sharded";
    case Tables::Unlisted:
      return "Unlisted";
  }
  return "?";
}

// What a ShardKeys says, as compared: the shard set only when Found, the bad value only when
// Invalid.
std::string describe(const ShardKeys& k) {
  std::string s = status_name(k.status);
  if (k.status == Status::Found) s += " shards=" + std::to_string(k.shards);
  if (k.status == Status::Invalid) s += " bad=[" + std::string(k.bad_value) + "]";
  return s;
}

std::string describe(const ShardPlan& p) {
  return "key=" + key_name(p.key) + " tables=" + tables_name(p.tables) +
         " ddl=" + std::to_string(p.ddl) + " first=" + std::to_string(p.first_slot) +
         " stride=" + std::to_string(p.stride) + " count=" + std::to_string(p.count);
}

// ---- Bind parameters ---------------------------------------------------------------------------

std::string big_endian(std::uint64_t v, int bytes) {
  std::string s;
  for (int i = bytes - 1; i >= 0; --i)
    s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

std::string int2_bytes(std::int16_t v) {
  return big_endian(static_cast<std::uint16_t>(v), 2);
}
std::string int4_bytes(std::int32_t v) {
  return big_endian(static_cast<std::uint32_t>(v), 4);
}
std::string int8_bytes(std::int64_t v) {
  return big_endian(static_cast<std::uint64_t>(v), 8);
}

// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits with
// trailing zero digits left out.
std::string numeric_bytes(std::int64_t v) {
  std::uint64_t magnitude =
      v < 0 ? ~static_cast<std::uint64_t>(v) + 1 : static_cast<std::uint64_t>(v);
  std::vector<std::uint16_t> digits;
  while (magnitude != 0) {
    digits.insert(digits.begin(), static_cast<std::uint16_t>(magnitude % 10000));
    magnitude /= 10000;
  }
  const int weight = digits.empty() ? 0 : static_cast<int>(digits.size()) - 1;
  while (!digits.empty() && digits.back() == 0)
    digits.pop_back();
  std::string s = big_endian(digits.size(), 2) + big_endian(static_cast<std::uint16_t>(weight), 2) +
                  big_endian(v < 0 ? 0x4000 : 0, 2) + big_endian(0, 2);
  for (const std::uint16_t d : digits)
    s += big_endian(d, 2);
  return s;
}

std::string uuid_bytes(std::string_view text) {
  std::string out;
  int high = -1;
  for (const char c : text) {
    if (c == '-') continue;
    const int v = std::isdigit(static_cast<unsigned char>(c))
                      ? c - '0'
                      : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<char>(high << 4 | v));
      high = -1;
    }
  }
  return out;
}

// One key value of a generated statement: a constant written in the SQL, or a $n with its Bind
// value.
struct Val {
  enum class Kind : std::uint8_t { Const, TextParam, BinaryParam, NullParam };
  Kind kind = Kind::Const;
  std::string sql;   // Const: the literal as written
  std::string text;  // Const: the value PostgreSQL reads; params: the Bind bytes
  std::uint32_t oid = 0;
};

Val lit(std::string sql, std::string value) {
  return Val{Val::Kind::Const, std::move(sql), std::move(value), 0};
}
Val num(std::int64_t v) {
  return lit(std::to_string(v), std::to_string(v));
}
// A '...' literal with every ' doubled.
Val quoted(std::string value) {
  std::string sql = "'";
  for (const char c : value) {
    sql += c;
    if (c == '\'') sql += '\'';
  }
  sql += "'";
  return lit(std::move(sql), std::move(value));
}
Val text_param(std::string value, std::uint32_t oid = kOidText) {
  return Val{Val::Kind::TextParam, "", std::move(value), oid};
}
Val binary_param(std::string bytes, std::uint32_t oid) {
  return Val{Val::Kind::BinaryParam, "", std::move(bytes), oid};
}
Val null_param() {
  return Val{Val::Kind::NullParam, "", "", 0};
}

class TestParams final : public ParamSource {
 public:
  int add(const Val& v) {
    switch (v.kind) {
      case Val::Kind::TextParam:
        return add(BoundParam{store(v.text), false, v.oid});
      case Val::Kind::BinaryParam:
        return add(BoundParam{store(v.text), true, v.oid});
      case Val::Kind::NullParam:
      case Val::Kind::Const:
        break;
    }
    return add(BoundParam{std::nullopt, false, 0});
  }
  int add(BoundParam p) {
    params_.push_back(p);
    return static_cast<int>(params_.size());
  }
  int text(std::string value) { return add(BoundParam{store(std::move(value)), false, 0}); }
  int binary(std::string bytes, std::uint32_t oid) {
    return add(BoundParam{store(std::move(bytes)), true, oid});
  }
  int null() { return add(BoundParam{std::nullopt, false, 0}); }
  std::size_t size() const { return params_.size(); }

  std::optional<BoundParam> param(int number) const override {
    if (number < 1 || static_cast<std::size_t>(number) > params_.size()) return std::nullopt;
    return params_[static_cast<std::size_t>(number) - 1];
  }

 private:
  std::string_view store(std::string v) {
    storage_.push_back(std::move(v));
    return storage_.back();
  }
  std::deque<std::string> storage_;
  std::vector<BoundParam> params_;
};

// ---- generated statements ----------------------------------------------------------------------

struct Stmt {
  std::string sql;
  std::shared_ptr<TestParams> params;
  std::vector<Val> keys;  // in statement order
};

// `{}` takes the next value, `{*}` the remaining ones joined by ", ". Params are numbered in
// the order they appear.
Stmt render(std::string_view tmpl, const std::vector<Val>& vals) {
  Stmt s;
  s.params = std::make_shared<TestParams>();
  std::size_t next = 0;
  auto put = [&](const Val& v) {
    s.keys.push_back(v);
    if (v.kind == Val::Kind::Const) {
      s.sql += v.sql;
    } else {
      s.sql += "$" + std::to_string(s.params->add(v));
    }
  };
  for (std::size_t i = 0; i < tmpl.size();) {
    if (tmpl.substr(i, 2) == "{}") {
      put(vals.at(next++));
      i += 2;
    } else if (tmpl.substr(i, 3) == "{*}") {
      for (bool first = true; next < vals.size(); first = false) {
        if (!first) s.sql += ", ";
        put(vals[next++]);
      }
      i += 3;
    } else {
      s.sql += tmpl[i++];
    }
  }
  EXPECT_EQ(next, vals.size()) << tmpl;
  return s;
}

// The same statement shape in other clothes: upper case and other whitespace outside literals,
// quoted identifiers and comments (which a fingerprint ignores or folds).
std::string restyled(std::string_view tmpl) {
  std::string out;
  std::size_t i = 0;
  auto copy_through = [&](std::string_view close, std::size_t from) {
    std::size_t end = tmpl.find(close, from);
    end = end == std::string_view::npos ? tmpl.size() : end + close.size();
    out.append(tmpl.substr(i, end - i));
    i = end;
  };
  while (i < tmpl.size()) {
    const char c = tmpl[i];
    const char c1 = i + 1 < tmpl.size() ? tmpl[i + 1] : '\0';
    if (c == '\'') {
      copy_through("'", i + 1);
    } else if (c == '"') {
      copy_through("\"", i + 1);
    } else if (c == '$' && c1 == '$') {
      copy_through("$$", i + 2);
    } else if (c == '-' && c1 == '-') {
      copy_through("\n", i + 2);
    } else if (c == '/' && c1 == '*') {
      copy_through("*/", i + 2);
    } else if (c == '{') {
      copy_through("}", i + 1);
    } else if (c == ' ') {
      out += "  \n\t";
      ++i;
    } else {
      out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      ++i;
    }
  }
  return out;
}

// What shard_keys must say: every key value in statement order, up to the first that is not a
// value (or, unbound, the first $n).
ShardKeys expected_keys(const Stmt& s, const ShardingPolicy& policy, bool bound) {
  ShardKeys out;
  const KeyType type = policy.map.key_type();
  for (const Val& v : s.keys) {
    std::optional<KeyValue> key;
    std::string_view bad;
    switch (v.kind) {
      case Val::Kind::Const:
        key = key_from_text(v.text, type);
        bad = v.sql;
        break;
      case Val::Kind::TextParam:
        if (!bound) return ShardKeys{Status::NotBound, 0, {}};
        key = key_from_text(v.text, type);
        bad = v.text;
        break;
      case Val::Kind::BinaryParam:
        if (!bound) return ShardKeys{Status::NotBound, 0, {}};
        key = key_from_binary(v.text, v.oid, type);
        bad = v.oid ? kBinaryParameter : kUntypedBinaryParameter;
        break;
      case Val::Kind::NullParam:
        if (!bound) return ShardKeys{Status::NotBound, 0, {}};
        return ShardKeys{Status::Null, 0, {}};
    }
    if (!key) return ShardKeys{Status::Invalid, 0, bad};
    out.status = Status::Found;
    out.shards |= std::uint64_t{1} << policy.map.shard_of(*key);
  }
  return out;
}

bool has_params(const Stmt& s) {
  return s.params != nullptr && s.params->size() > 0;
}

// ---- the value pool ----------------------------------------------------------------------------

// Constants as a client writes them.
std::vector<Val> constant_values() {
  std::vector<Val> v;
  for (const std::int64_t n :
       {0LL, 1LL, 2LL, 3LL, 5LL, 7LL, 11LL, 42LL, 99LL, 256LL, 1000LL, 65535LL, 123456789LL,
        9223372036854775807LL, -1LL, -7LL, -42LL, -123456LL}) {
    v.push_back(num(n));
  }
  v.push_back(lit("- 7", "-7"));  // the sign apart from the digits
  v.push_back(lit("-\n  42", "-42"));
  v.push_back(quoted("42"));
  v.push_back(quoted("-7"));
  v.push_back(quoted("007"));  // an integer for Auto: 7
  v.push_back(quoted("abc"));
  v.push_back(quoted("device-17"));
  v.push_back(quoted("it's"));
  v.push_back(quoted("O'Brien ''x"));
  v.push_back(quoted(""));
  v.push_back(quoted(" spaced "));
  v.push_back(quoted("\u00fcnic\u00f8de"));
  v.push_back(quoted("6f1c2a1e-8b2d-4c1e-9f00-0123456789ab"));
  v.push_back(lit("$$x-1$$", "x-1"));
  v.push_back(lit("$tag$it's$tag$", "it's"));
  v.push_back(lit("$q$42$q$", "42"));
  v.push_back(lit("E'abc'", "abc"));
  v.push_back(lit("e'it''s'", "it's"));
  return v;
}

// $n values, text and binary.
std::vector<Val> param_values() {
  std::vector<Val> v;
  v.push_back(text_param("42"));
  v.push_back(text_param("-7", 0));
  v.push_back(text_param("abc", kOidVarchar));
  v.push_back(binary_param(int2_bytes(7), kOidInt2));
  v.push_back(binary_param(int2_bytes(-300), kOidInt2));
  v.push_back(binary_param(int4_bytes(42), kOidInt4));
  v.push_back(binary_param(int4_bytes(-3), kOidInt4));
  v.push_back(binary_param(int8_bytes(123456789012LL), kOidInt8));
  v.push_back(binary_param(int8_bytes(9223372036854775807LL), kOidInt8));
  v.push_back(binary_param(numeric_bytes(42), kOidNumeric));
  v.push_back(binary_param(numeric_bytes(-10000), kOidNumeric));
  v.push_back(binary_param(numeric_bytes(123456789), kOidNumeric));
  v.push_back(binary_param(numeric_bytes(0), kOidNumeric));
  v.push_back(binary_param("dev-9", kOidText));
  v.push_back(binary_param("6f1c2a1e-8b2d-4c1e-9f00-0123456789ab", kOidVarchar));
  v.push_back(binary_param(uuid_bytes("6F1C2A1E-8B2D-4C1E-9F00-0123456789AB"), kOidUuid));
  return v;
}

std::vector<Val> all_values() {
  std::vector<Val> v = constant_values();
  for (Val& p : param_values())
    v.push_back(std::move(p));
  return v;
}

// Values that stop the reading: a NULL and values that are not keys even for Auto.
std::vector<Val> stopping_values() {
  return {null_param(), binary_param("\x01\x02\x03", kOidInt2),  // an int2 of 3 bytes
          binary_param(int4_bytes(5), 0)};                       // no type
}

// ---- statement shapes --------------------------------------------------------------------------

// One key value: `{}`.
const std::vector<std::string>& single_shapes() {
  static const std::vector<std::string> shapes = {
      "SELECT * FROM telemetry WHERE device_id = {}",
      "SELECT * FROM telemetry WHERE device_id = {}::bigint",
      "SELECT * FROM telemetry WHERE device_id = {}::text::bigint",
      "SELECT * FROM telemetry WHERE device_id = CAST({} AS bigint)",
      "select v from telemetry t where t.device_id = {}",
      "SELECT * FROM telemetry WHERE {} = device_id",
      "SELECT * FROM telemetry WHERE a = 1 AND device_id = {} AND b > 2",
      "SELECT * FROM telemetry WHERE device_id = {} AND a = 'x' AND b IN (1, 2, 3)",
      "SELECT * FROM telemetry WHERE (a = 1 AND (device_id = {}))",
      "SELECT * FROM telemetry WHERE ((device_id = ({})) AND a = 'x') AND ts > now() - interval "
      "'1 day'",
      "SELECT * FROM telemetry WHERE device_id={}",
      "SELECT * FROM telemetry WHERE device_id IN ({})",
      "SELECT * FROM telemetry WHERE device_id = {} FOR UPDATE",
      "SELECT * FROM public.telemetry AS t WHERE t.\"device_id\" = {} ORDER BY 1 LIMIT 10 OFFSET 5",
      "SELECT e.kind, count(*) FROM device_events e JOIN device_types d ON d.id = e.type_id "
      "WHERE e.device_id = {} AND d.name <> 'x' GROUP BY 1",
      "WITH recent AS (SELECT * FROM telemetry WHERE ts > '2024-01-01') SELECT * FROM recent "
      "WHERE device_id = {}",
      "UPDATE telemetry SET v = 0, note = 'it''s' WHERE device_id = {}",
      "UPDATE telemetry t SET v = t.v + 1 FROM device_types d WHERE d.id = t.type_id AND "
      "t.device_id = {} RETURNING t.v",
      "DELETE FROM device_events WHERE ts < '2024-01-01' AND device_id = {}",
      "EXPLAIN SELECT * FROM telemetry WHERE device_id = {}",
      "EXPLAIN (ANALYZE, BUFFERS) UPDATE telemetry SET v = -1 WHERE device_id = {}",
      "/* pgvalve: primary */ SELECT * FROM telemetry WHERE device_id = {}",
      "/* app: dashboard, 'q' */ -- trace 7\n  SELECT * FROM telemetry WHERE device_id = {}",
      "SELECT /* c1 */ * FROM telemetry /* c2 */ WHERE device_id /* c3 */ = /* c4 */ {} -- tail",
      "SELECT * FROM telemetry WHERE device_id = {};",
  };
  return shapes;
}

// A list of key values: `{*}`.
const std::vector<std::string>& list_shapes() {
  static const std::vector<std::string> shapes = {
      "SELECT * FROM telemetry WHERE device_id IN ({*})",
      "SELECT * FROM telemetry WHERE a = 'x' AND device_id IN ({*}) AND b IN (1, 2)",
      "select * from telemetry t where t.device_id in ({*}) order by ts desc limit 5",
      "DELETE FROM telemetry WHERE device_id IN ({*}) AND ts < now()",
      "EXPLAIN SELECT count(*) FROM device_events WHERE (device_id IN ({*}))",
  };
  return shapes;
}

// An INSERT of `rows` rows, each with one key value.
struct InsertShape {
  std::string head;
  std::vector<std::string> rows;  // row templates, used in turn
  std::string tail;
  int max_rows;
};

const std::vector<InsertShape>& insert_shapes() {
  static const std::vector<InsertShape> shapes = {
      {"INSERT INTO telemetry (ts, device_id, v) VALUES ",
       {"('2024-05-01 00:00:00', {}, 1.5)"},
       "",
       50},
      {"INSERT INTO telemetry (device_id) VALUES ", {"({})"}, " RETURNING *", 50},
      {"insert into device_events (device_id, kind, note) values ",
       {"({}, 'it''s', $$dollar 'quoted'$$)"},
       "",
       12},
      {"INSERT INTO telemetry AS t (v, note, device_id) VALUES ",
       {"(-1, E'x\\ny', {})", "(ARRAY[1, 2, 3], 'a', {})"},
       " ON CONFLICT (device_id, ts) DO UPDATE SET v = excluded.v + 1",
       12},
      // Irregular slots (now() has none): a Reparse plan from 3 rows on.
      {"INSERT INTO telemetry (ts, device_id, v) VALUES ",
       {"(now(), {}, 1)", "('2024-01-01', {}, 2)", "(DEFAULT, {}, 3)"},
       "",
       20},
  };
  return shapes;
}

std::string insert_template(const InsertShape& shape, int rows) {
  std::string s = shape.head;
  for (int r = 0; r < rows; ++r) {
    if (r > 0) s += ", ";
    s += shape.rows[static_cast<std::size_t>(r) % shape.rows.size()];
  }
  return s + shape.tail;
}

// `count` values from `pool` starting at `from`, wrapping.
std::vector<Val> take(const std::vector<Val>& pool, std::size_t from, std::size_t count) {
  std::vector<Val> out;
  for (std::size_t i = 0; i < count; ++i)
    out.push_back(pool[(from + i) % pool.size()]);
  return out;
}

// Every generated statement: each single shape with each value, each list shape with lists of
// 1 to 9 values, each INSERT shape with 1 to max_rows rows; a few with values that stop the
// reading (NULL, not a key).
std::vector<Stmt> generated_statements() {
  const std::vector<Val> pool = all_values();
  const std::vector<Val> stops = stopping_values();
  std::vector<Stmt> out;
  for (const std::string& shape : single_shapes()) {
    for (const Val& v : pool)
      out.push_back(render(shape, {v}));
    for (const Val& v : stops)
      out.push_back(render(shape, {v}));
  }
  for (const std::string& shape : list_shapes()) {
    for (std::size_t n = 1; n <= 9; ++n) {
      out.push_back(render(shape, take(pool, n * 7, n)));
      out.push_back(render(shape, take(pool, n * 3 + 20, n)));
    }
    std::vector<Val> with_stop = take(pool, 0, 3);
    with_stop.push_back(stops[0]);
    with_stop.push_back(num(1));
    out.push_back(render(shape, with_stop));
  }
  std::size_t from = 0;
  for (const InsertShape& shape : insert_shapes()) {
    for (int rows = 1; rows <= shape.max_rows; ++rows) {
      const std::string tmpl = insert_template(shape, rows);
      out.push_back(render(tmpl, take(pool, from, static_cast<std::size_t>(rows))));
      from += 5;
    }
    // A NULL or a value that is not a key in the first row, and in the last.
    for (const Val& stop : stops) {
      std::vector<Val> first = take(pool, from++, 4);
      first[0] = stop;
      out.push_back(render(insert_template(shape, 4), first));
      std::vector<Val> last = take(pool, from++, 4);
      last[3] = stop;
      out.push_back(render(insert_template(shape, 4), last));
    }
    // Every row a $n: a Parse of a multi-row prepared INSERT.
    std::vector<Val> params;
    for (int r = 0; r < 6; ++r)
      params.push_back(text_param(std::to_string(r * 13)));
    out.push_back(render(insert_template(shape, 6), params));
  }
  return out;
}

ShardPlan check_statement(const Stmt& s, const ShardingPolicy& policy, int* layouts = nullptr) {
  const ShardPlan plan = plan_shards(s.sql, policy);
  EXPECT_TRUE(plan.key == Key::Slots || plan.key == Key::Reparse)
      << s.sql << "\n  plan: " << describe(plan);
  KeyParams layout;
  const ShardKeys walked = shard_keys(s.sql, plan, policy, s.params.get(), &layout);
  EXPECT_EQ(describe(walked), describe(expected_keys(s, policy, true)))
      << s.sql << "\n  plan: " << describe(plan);
  if (layout.count > 0) {
    // The layout the walk found reads the same keys from the Bind alone.
    if (layouts) ++*layouts;
    EXPECT_EQ(describe(shard_keys(layout, policy, *s.params)), describe(walked))
        << "by layout: " << s.sql;
  }
  if (has_params(s)) {
    // A Parse or Describe: no Bind at hand.
    EXPECT_EQ(describe(shard_keys(s.sql, plan, policy, nullptr)),
              describe(expected_keys(s, policy, false)))
        << "unbound: " << s.sql << "\n  plan: " << describe(plan);
  }
  return plan;
}

// ---- 1. the key values of every shape ----------------------------------------------------------

TEST(ShardPlanTest, FindsTheShardsOfEveryGeneratedStatement) {
  const ShardingPolicy policy = make_policy();
  const std::vector<Stmt> statements = generated_statements();
  std::uint64_t shards_seen = 0;
  int reparsed = 0;
  int layouts = 0;
  for (const Stmt& s : statements) {
    if (check_statement(s, policy, &layouts).key == Key::Reparse) ++reparsed;
    const ShardKeys want = expected_keys(s, policy, true);
    if (want.status == Status::Found) shards_seen |= want.shards;
  }
  EXPECT_GE(statements.size(), 300u);
  EXPECT_GT(reparsed, 10);       // the irregular INSERTs take the Reparse path
  EXPECT_GT(layouts, 20);        // statements whose keys are all $n
  EXPECT_EQ(shards_seen, 0xfu);  // the values reach every shard
  RecordProperty("statements", static_cast<int>(statements.size()));
}

TEST(ShardPlanTest, TheKeysOfABoundTextAreRememberedAsTheirParameters) {
  const ShardingPolicy policy = make_policy();
  auto layout_of = [&](std::string_view sql, const ParamSource* params) {
    KeyParams layout;
    shard_keys(sql, plan_shards(sql, policy), policy, params, &layout);
    return std::to_string(layout.first) + "+" + std::to_string(layout.stride) + "x" +
           std::to_string(layout.count);
  };
  TestParams six;
  for (int i = 1; i <= 6; ++i)
    six.text(std::to_string(i * 11));
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id = $1", &six), "1+0x1");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE v = $1 AND device_id = $2", &six), "2+0x1");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id IN ($1, $2, $3)", &six), "1+1x3");
  EXPECT_EQ(
      layout_of("INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4), ($5, $6)", &six),
      "1+2x3");
  EXPECT_EQ(layout_of("INSERT INTO telemetry (v, device_id) VALUES ($1, $2), ($3, $4)", &six),
            "2+2x2");
  // Not remembered: a constant key, $n out of order or at irregular places, a key not read.
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id = 42", &six), "0+0x0");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id IN ($1, 7)", &six), "0+0x0");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id IN ($2, $1)", &six), "0+0x0");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id IN ($1, $2, $4)", &six), "0+0x0");
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id = $1", nullptr), "0+0x0");
  TestParams null;
  null.null();
  EXPECT_EQ(layout_of("SELECT * FROM telemetry WHERE device_id = $1", &null), "0+0x0");

  // The next Binds of the text: their values, read by the layout, give the walk's shards.
  const std::string sql =
      "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4), ($5, $6)";
  const ShardPlan plan = plan_shards(sql, policy);
  KeyParams layout;
  shard_keys(sql, plan, policy, &six, &layout);
  ASSERT_EQ(layout.count, 3);
  for (int round = 0; round < 40; ++round) {
    TestParams next;
    for (int i = 1; i <= 6; ++i)
      next.text(std::to_string(round * 97 + i * 31));
    if (round == 7) {  // a NULL key in the second row
      next = TestParams();
      next.text("1");
      next.text("x");
      next.null();
    }
    EXPECT_EQ(describe(shard_keys(layout, policy, next)),
              describe(shard_keys(sql, plan, policy, &next)))
        << "round " << round;
  }
}

TEST(ShardPlanTest, TheExpectedShardsOfTheSpecAreTheMapsShards) {
  // The shapes of the brief, spelled out, against policy.map directly.
  const ShardingPolicy policy = make_policy();
  auto shards = [&](std::string_view sql) {
    return shard_keys(sql, plan_shards(sql, policy), policy, nullptr);
  };
  const std::uint64_t s42 = bit_of("42", policy);
  for (const char* sql : {"SELECT * FROM telemetry WHERE device_id = 42",
                          "SELECT * FROM telemetry WHERE device_id = '42'",
                          "SELECT * FROM telemetry WHERE device_id = 42::bigint",
                          "SELECT * FROM telemetry WHERE device_id = '42'::bigint",
                          "SELECT * FROM telemetry WHERE device_id = $$42$$",
                          "SELECT * FROM telemetry WHERE device_id = '042'",
                          "SELECT * FROM telemetry t WHERE t.device_id = 42",
                          "SELECT * FROM telemetry WHERE 42 = device_id"}) {
    const ShardKeys k = shards(sql);
    EXPECT_EQ(k.status, Status::Found) << sql;
    EXPECT_EQ(k.shards, s42) << sql;
  }
  EXPECT_EQ(shards("SELECT * FROM telemetry WHERE device_id = -7").shards, bit_of("-7", policy));
  EXPECT_EQ(shards("SELECT * FROM telemetry WHERE device_id IN ('a', 'b')").shards,
            bit_of("a", policy) | bit_of("b", policy));
  std::uint64_t in_bits = 0;
  std::string in_list;
  for (int i = 1; i <= 12; ++i) {
    in_bits |= bit_of(std::to_string(i), policy);
    in_list += (i > 1 ? "," : "") + std::to_string(i);
  }
  const ShardKeys many = shards("SELECT * FROM telemetry WHERE device_id IN (" + in_list + ")");
  EXPECT_EQ(many.shards, in_bits);
  EXPECT_GT(__builtin_popcountll(many.shards), 1);  // several shards, several bits
}

TEST(ShardPlanTest, BindParametersInTextAndBinary) {
  const ShardingPolicy policy = make_policy();
  const std::string sql = "SELECT * FROM telemetry WHERE device_id = $1";
  const ShardPlan plan = plan_shards(sql, policy);
  ASSERT_EQ(plan.key, Key::Slots);
  struct Case {
    std::optional<std::string> value;
    bool binary;
    std::uint32_t oid;
    std::string as_text;  // the same key as text ("" when there is none)
  };
  const std::vector<Case> cases = {
      {"42", false, 0, "42"},
      {"42", false, kOidInt8, "42"},
      {"-7", false, kOidText, "-7"},
      {"abc", false, kOidText, "abc"},
      {int2_bytes(42), true, kOidInt2, "42"},
      {int2_bytes(-32768), true, kOidInt2, "-32768"},
      {int4_bytes(42), true, kOidInt4, "42"},
      {int4_bytes(-2147483647 - 1), true, kOidInt4, "-2147483648"},
      {int8_bytes(42), true, kOidInt8, "42"},
      {int8_bytes(-9223372036854775807LL - 1), true, kOidInt8, "-9223372036854775808"},
      {numeric_bytes(42), true, kOidNumeric, "42"},
      {numeric_bytes(100000000), true, kOidNumeric, "100000000"},
      {numeric_bytes(-123456789012LL), true, kOidNumeric, "-123456789012"},
      {std::string("abc"), true, kOidText, "abc"},
      {std::string("42"), true, kOidVarchar, "42"},
      // A uuid is hashed as its lower-case text.
      {uuid_bytes("6f1c2a1e-8b2d-4c1e-9f00-0123456789ab"), true, kOidUuid,
       "6f1c2a1e-8b2d-4c1e-9f00-0123456789ab"},
  };
  for (const Case& c : cases) {
    TestParams params;
    params.add(BoundParam{c.value, c.binary, c.oid});
    const ShardKeys k = shard_keys(sql, plan, policy, &params);
    EXPECT_EQ(k.status, Status::Found) << c.as_text << " oid " << c.oid;
    EXPECT_EQ(k.shards, bit_of(c.as_text, policy)) << c.as_text << " oid " << c.oid;
  }
  // Not keys: a wrong size, a type without a key reading, a numeric fraction.
  for (const auto& [bytes, oid] : std::vector<std::pair<std::string, std::uint32_t>>{
           {int4_bytes(42), kOidInt2},
           {int4_bytes(42), 0},
           {int4_bytes(42), 16},                                                        // bool
           {std::string("\x00\x01\xff\xff\x40\x00\x00\x04\x00\x05", 10), kOidNumeric},  // -0.0005
           {std::string("\x00\x00\x00\x00\xc0\x00\x00\x00", 8), kOidNumeric},           // NaN
           {std::string(15, 'x'), kOidUuid}}) {
    TestParams params;
    params.binary(bytes, oid);
    const ShardKeys k = shard_keys(sql, plan, policy, &params);
    EXPECT_EQ(k.status, Status::Invalid) << "oid " << oid;
    EXPECT_EQ(k.bad_value, oid ? kBinaryParameter : kUntypedBinaryParameter);
  }
  TestParams null;
  null.null();
  EXPECT_EQ(shard_keys(sql, plan, policy, &null).status, Status::Null);
  TestParams none;  // bound, but without $1: treated as not bound
  EXPECT_EQ(shard_keys(sql, plan, policy, &none).status, Status::NotBound);
  EXPECT_EQ(shard_keys(sql, plan, policy, nullptr).status, Status::NotBound);

  // $n among constants, $n out of order, $n repeated.
  TestParams p;
  p.text("1");
  p.binary(int8_bytes(2), kOidInt8);
  p.text("3");
  const std::string in = "SELECT * FROM telemetry WHERE device_id IN ($3, 99, $1, $2, $1)";
  EXPECT_EQ(shard_keys(in, plan_shards(in, policy), policy, &p).shards,
            bit_of("1", policy) | bit_of("2", policy) | bit_of("3", policy) | bit_of("99", policy));
}

TEST(ShardPlanTest, QuotedAndDollarQuotedValues) {
  const ShardingPolicy policy = make_policy();
  auto keys = [&](const std::string& sql) {
    return shard_keys(sql, plan_shards(sql, policy), policy, nullptr);
  };
  struct Case {
    std::string sql;
    std::vector<std::string> values;  // the key values PostgreSQL reads
  };
  const std::vector<Case> cases = {
      {"SELECT * FROM telemetry WHERE device_id = 'it''s'", {"it's"}},
      {"SELECT * FROM telemetry WHERE device_id = ''''", {"'"}},
      {"SELECT * FROM telemetry WHERE device_id = 'a''''b'", {"a''b"}},
      {"SELECT * FROM telemetry WHERE device_id = $$it's$$", {"it's"}},
      {"SELECT * FROM telemetry WHERE device_id = $x$a$$b$x$", {"a$$b"}},
      {"SELECT * FROM telemetry WHERE device_id = $$$$", {""}},
      {"SELECT * FROM telemetry WHERE device_id = E'it''s'", {"it's"}},
      {"SELECT * FROM telemetry WHERE device_id = '/* not a comment */'", {"/* not a comment */"}},
      {"SELECT * FROM telemetry WHERE device_id = '-- nor this'", {"-- nor this"}},
      {"SELECT * FROM telemetry WHERE device_id IN ('it''s', $a$b$a$)", {"it's", "b"}},
      {"INSERT INTO telemetry (note, device_id) VALUES ('x''y', 'O''Brien')", {"O'Brien"}},
      {"INSERT INTO telemetry (note, device_id) VALUES ($$'$$, $t$'$t$)", {"'"}},
      // SQL-standard continuation: 'a' <newline> 'b' is 'ab' (PostgreSQL 15 allows only
      // whitespace between the parts).
      {"SELECT * FROM telemetry WHERE device_id = '4'\n'2'", {"42"}},
      {"SELECT * FROM telemetry WHERE device_id = 'de'  \n\t 'v''1'\n''''", {"dev'1'"}},
      {"SELECT * FROM telemetry WHERE device_id IN ('4'\n'2', 'a')", {"42", "a"}},
      {"INSERT INTO telemetry (device_id) VALUES ('4'\n  '2'), (''\n'7')", {"42", "7"}},
      // A sign apart from its number, with comments between.
      {"SELECT * FROM telemetry WHERE device_id = - /* minus */ 7", {"-7"}},
      {"SELECT * FROM telemetry WHERE device_id = - -- minus\n 7", {"-7"}},
      {"SELECT * FROM telemetry WHERE device_id IN (- /* minus */ 7, -\n3)", {"-7", "-3"}},
  };
  for (const Case& c : cases) {
    const ShardKeys k = keys(c.sql);
    EXPECT_EQ(k.status, Status::Found) << c.sql;
    std::uint64_t want = 0;
    for (const std::string& v : c.values)
      want |= bit_of(v, policy);
    EXPECT_EQ(k.shards, want) << c.sql;
  }
  // Literals whose value is not read (escapes, other encodings) claim no key; never a wrong one.
  for (const char* sql : {"SELECT * FROM telemetry WHERE device_id = E'4\\062'",
                          "SELECT * FROM telemetry WHERE device_id = N'42'",
                          "SELECT * FROM telemetry WHERE device_id = U&'42'",
                          "SELECT * FROM telemetry WHERE device_id = X'2A'",
                          "SELECT * FROM telemetry WHERE device_id = B'101010'"}) {
    const ShardKeys k = keys(sql);
    EXPECT_NE(k.status, Status::Found) << sql;
    EXPECT_NE(k.status, Status::Invalid) << sql;
  }
}

// ---- negative cases ----------------------------------------------------------------------------

TEST(ShardPlanTest, NoKeyWhereTheStatementDoesNotFixOne) {
  const ShardingPolicy policy = make_policy();
  for (const char* sql : {
           "SELECT * FROM telemetry",
           "SELECT * FROM telemetry WHERE device_id = 1 OR x = 2",
           "SELECT * FROM telemetry WHERE (device_id = 1 OR device_id = 2)",
           "SELECT * FROM telemetry WHERE a = 1 AND (device_id = 1 OR b = 2)",
           "SELECT * FROM telemetry WHERE NOT device_id = 1",
           "SELECT * FROM telemetry WHERE device_id <> 1",
           "SELECT * FROM telemetry WHERE device_id != 1",
           "SELECT * FROM telemetry WHERE device_id > 1",
           "SELECT * FROM telemetry WHERE device_id >= 1 AND device_id <= 1",
           "SELECT * FROM telemetry WHERE device_id BETWEEN 1 AND 1",
           "SELECT * FROM telemetry WHERE device_id NOT IN (1, 2)",
           "SELECT * FROM telemetry WHERE device_id = other_col",
           "SELECT * FROM telemetry t WHERE t.device_id = t.other",
           "SELECT * FROM telemetry WHERE device_id = 1 + 1",
           "SELECT * FROM telemetry WHERE device_id = 5 - 1",
           "SELECT * FROM telemetry WHERE device_id = abs(-1)",
           "SELECT * FROM telemetry WHERE device_id = +5",
           "SELECT * FROM telemetry WHERE device_id = - - 5",
           "SELECT * FROM telemetry WHERE device_id = true",
           "SELECT * FROM telemetry WHERE device_id = (SELECT 1)",
           "SELECT * FROM telemetry WHERE device_id IN (SELECT device_id FROM device_events)",
           "SELECT * FROM telemetry WHERE device_id IN (1, 2 + 3)",
           "SELECT * FROM telemetry WHERE device_id = ANY('{1,2}')",
           "SELECT * FROM telemetry WHERE device_id = ANY(ARRAY[1, 2])",
           "SELECT * FROM telemetry WHERE device_id IS NULL",
           "SELECT * FROM telemetry WHERE device_id IS NOT DISTINCT FROM 1",
           "SELECT * FROM telemetry WHERE other_id = 1",
           "SELECT * FROM telemetry WHERE \"Device_Id\" = 1",
           "SELECT * FROM telemetry WHERE device_id = 1 UNION SELECT * FROM telemetry WHERE "
           "device_id = 1",
           "SELECT * FROM telemetry WHERE device_id = 1 UNION ALL SELECT * FROM telemetry",
           "(SELECT * FROM telemetry WHERE device_id = 1) INTERSECT (SELECT * FROM telemetry)",
           "SELECT * FROM telemetry EXCEPT SELECT * FROM telemetry WHERE device_id = 1",
           // Only inside a subquery.
           "SELECT * FROM (SELECT * FROM telemetry WHERE device_id = 1) s",
           "SELECT * FROM telemetry WHERE x IN (SELECT x FROM telemetry WHERE device_id = 1)",
           "SELECT * FROM telemetry WHERE EXISTS (SELECT 1 FROM device_events e WHERE "
           "e.device_id = 5)",
           "WITH c AS (SELECT * FROM telemetry WHERE device_id = 1) SELECT * FROM c",
           "SELECT * FROM telemetry t JOIN device_events e ON e.device_id = 5",
           "SELECT (SELECT max(v) FROM telemetry WHERE device_id = 1)",
           "UPDATE telemetry SET v = 1 WHERE device_id = 1 OR device_id = 2",
           "UPDATE telemetry SET v = 1 WHERE x IN (SELECT x FROM telemetry WHERE device_id = 1)",
           "DELETE FROM telemetry WHERE device_id <> 3",
           "DELETE FROM telemetry",
           "TRUNCATE telemetry",
       }) {
    const ShardPlan plan = plan_shards(sql, policy);
    const ShardKeys k = shard_keys(sql, plan, policy, nullptr);
    EXPECT_EQ(k.status, Status::NoKey) << sql << "\n  plan: " << describe(plan);
    EXPECT_EQ(k.shards, 0u) << sql;
    EXPECT_EQ(plan.key, Key::None) << sql << "\n  plan: " << describe(plan);
    EXPECT_EQ(plan.tables, Tables::Sharded) << sql;
  }
}

// A column named device_id fixes the shard only when it is a sharded table's, and only when
// every sharded table of the statement is joined on the key: otherwise the rows the statement
// reads or writes are on other shards too (found by a code review: an UPDATE ... FROM another
// sharded table ran on one shard and left half of the rows unchanged).
TEST(ShardPlanTest, AnotherTablesDeviceIdIsNoKey) {
  const ShardingPolicy policy = make_policy();
  for (const char* sql : {
           // A reference table's column.
           "SELECT count(*) FROM telemetry t JOIN device_types s ON s.threshold = t.ts WHERE "
           "s.device_id = 2",
           // The sharded table's key column renamed by its alias: a bare device_id is another's.
           "SELECT * FROM telemetry AS t(d) JOIN device_types s ON s.threshold = t.ts WHERE "
           "device_id = 2",
           "UPDATE telemetry SET note = 'u' FROM device_types d WHERE d.device_id = 3",
           "DELETE FROM telemetry USING device_types d WHERE d.device_id = 3",
           // A subquery's or a WITH query's column.
           "SELECT * FROM telemetry t, (SELECT 3 AS device_id) x WHERE x.device_id = 3",
           "WITH c AS (SELECT 3 AS device_id) SELECT * FROM telemetry t, c WHERE c.device_id = 3",
           // Another sharded table's key, the tables not joined on it.
           "UPDATE telemetry SET note = 'u' FROM device_events e WHERE e.device_id = 3 AND "
           "telemetry.ts = 0",
           "SELECT * FROM telemetry t JOIN device_events e ON e.ts = t.ts WHERE e.device_id = 3",
           "SELECT * FROM telemetry t JOIN device_events e ON t.device_id = t.device_id WHERE "
           "e.device_id = 3",
       }) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_EQ(plan.key, Key::None) << sql << "\n  plan: " << describe(plan);
  }
  // The sharded table's own key, or another's joined on it. A bare device_id next to a
  // reference table is the sharded table's: had the reference table one too, PostgreSQL would
  // refuse the name as ambiguous.
  for (const char* sql : {
           "SELECT * FROM telemetry t JOIN device_types s ON s.threshold = t.ts WHERE "
           "device_id = 2",
           "UPDATE telemetry SET note = 'u' FROM device_types d WHERE d.id = type_id AND "
           "device_id = 2",
           "SELECT * FROM telemetry t, (SELECT 1 AS one) x WHERE device_id = 2",
           "SELECT * FROM telemetry t JOIN device_types s ON s.threshold = t.ts WHERE "
           "t.device_id = 2",
           "UPDATE telemetry SET note = 'u' FROM device_types d WHERE telemetry.device_id = 3",
           "UPDATE telemetry t SET note = 'u' FROM device_events e WHERE e.device_id = 3 AND "
           "e.device_id = t.device_id",
           "SELECT * FROM telemetry t JOIN device_events e USING (device_id) WHERE "
           "device_id = 3",
           "SELECT * FROM telemetry t JOIN device_events e ON e.device_id = t.device_id WHERE "
           "e.device_id = 3",
           "DELETE FROM telemetry t WHERE t.device_id = 3",
       }) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_EQ(plan.key, Key::Slots) << sql << "\n  plan: " << describe(plan);
  }
}

// A WITH query over sharded tables passes its key column on only when it keeps every device's
// rows apart; one that mixes devices (LIMIT, a window or DISTINCT ON not by the key, a set
// operation, a subquery over sharded tables) computes on one shard what needs every shard's rows
// (found by a code review: the top ten readings of all devices, filtered by device outside the
// WITH, were the top ten of one shard).
TEST(ShardPlanTest, AWithQueryThatMixesDevicesPassesNoKey) {
  const ShardingPolicy policy = make_policy();
  for (const char* sql : {
           "WITH top AS (SELECT * FROM telemetry ORDER BY v DESC LIMIT 10) SELECT * FROM top "
           "WHERE device_id = 5",
           "WITH p AS (SELECT * FROM telemetry OFFSET 3) SELECT * FROM p WHERE device_id = 5",
           "WITH r AS (SELECT device_id, rank() OVER (ORDER BY v) FROM telemetry) SELECT * FROM "
           "r WHERE device_id = 5",
           "WITH r AS (SELECT device_id, rank() OVER w FROM telemetry WINDOW w AS (ORDER BY v)) "
           "SELECT * FROM r WHERE device_id = 5",
           "WITH d AS (SELECT DISTINCT ON (v) device_id, v FROM telemetry) SELECT * FROM d WHERE "
           "device_id = 5",
           "WITH u AS (SELECT device_id, v FROM telemetry UNION SELECT type_id, v FROM "
           "device_events) SELECT * FROM u WHERE device_id = 5",
           "WITH h AS (SELECT * FROM telemetry WHERE v > (SELECT avg(v) FROM telemetry)) SELECT "
           "* FROM h WHERE device_id = 5",
           "WITH n AS (SELECT * FROM (SELECT * FROM telemetry LIMIT 1) s) SELECT * FROM n WHERE "
           "device_id = 5",
           "WITH top AS (SELECT * FROM telemetry ORDER BY v LIMIT 10) UPDATE telemetry t SET "
           "v = 0 FROM top WHERE top.device_id = 5 AND top.device_id = t.device_id",
       }) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_EQ(plan.key, Key::None) << sql << "\n  plan: " << describe(plan);
  }
  // Grouping keeps a device's rows apart (the key is among the output columns), as do windows
  // and DISTINCT ON by the key.
  for (const char* sql : {
           "WITH recent AS (SELECT * FROM telemetry WHERE ts > current_date - 1 AND v < "
           "GREATEST(1, 2)) SELECT * FROM recent WHERE device_id = 5",
           "WITH g AS (SELECT device_id, avg(v) FROM telemetry GROUP BY device_id) SELECT * FROM "
           "g WHERE device_id = 5",
           "WITH d AS (SELECT DISTINCT device_id, v FROM telemetry) SELECT * FROM d WHERE "
           "device_id = 5",
           "WITH d AS (SELECT DISTINCT ON (device_id) device_id, v FROM telemetry ORDER BY "
           "device_id, ts DESC) SELECT * FROM d WHERE device_id = 5",
           "WITH r AS (SELECT device_id, rank() OVER (PARTITION BY device_id ORDER BY v) FROM "
           "telemetry) SELECT * FROM r WHERE device_id = 5",
           "WITH r AS (SELECT device_id, rank() OVER w FROM telemetry WINDOW w AS (PARTITION BY "
           "device_id ORDER BY v)) SELECT * FROM r WHERE device_id = 5",
       }) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_EQ(shard_keys(sql, plan, policy, nullptr).shards, bit_of("5", policy))
        << sql << "\n  plan: " << describe(plan);
  }
}

TEST(ShardPlanTest, AKeyEqualToNullIsNeverFound) {
  const ShardingPolicy policy = make_policy();
  for (const char* sql : {"SELECT * FROM telemetry WHERE device_id = NULL",
                          "SELECT * FROM telemetry WHERE device_id = NULL::bigint",
                          "SELECT * FROM telemetry WHERE device_id IN (1, NULL)",
                          "INSERT INTO telemetry (device_id) VALUES (NULL)"}) {
    const ShardKeys k = shard_keys(sql, plan_shards(sql, policy), policy, nullptr);
    EXPECT_TRUE(k.status == Status::NoKey || k.status == Status::Null)
        << sql << ": " << describe(k);
  }
  // NULL as a constant leaves no value to read: no key (a Bind NULL is Null, below).
  const std::string sql = "SELECT * FROM telemetry WHERE device_id = NULL";
  EXPECT_EQ(shard_keys(sql, plan_shards(sql, policy), policy, nullptr).status, Status::NoKey);
  EXPECT_EQ(plan_shards("INSERT INTO telemetry (device_id) VALUES (NULL)", policy).key,
            Key::InsertNoKey);
}

TEST(ShardPlanTest, InsertsThatGiveNoKeyValue) {
  const ShardingPolicy policy = make_policy();
  struct Case {
    const char* sql;
    Key key;
  };
  for (const Case& c : std::vector<Case>{
           {"INSERT INTO telemetry VALUES (1, 2, 3)", Key::InsertNoKey},
           {"INSERT INTO telemetry (ts, v) VALUES (now(), 1)", Key::InsertNoKey},
           {"INSERT INTO telemetry (ts, device_id) VALUES (now(), DEFAULT)", Key::InsertNoKey},
           {"INSERT INTO telemetry (ts, device_id) VALUES (now(), 1), (now(), DEFAULT)",
            Key::InsertNoKey},
           {"INSERT INTO telemetry (device_id) VALUES (1 + 1)", Key::InsertNoKey},
           {"INSERT INTO telemetry (device_id) VALUES (nextval('ids'))", Key::InsertNoKey},
           {"INSERT INTO telemetry (device_id) VALUES ((SELECT 1))", Key::InsertNoKey},
           {"INSERT INTO telemetry (device_id) SELECT 1", Key::InsertSelect},
           {"INSERT INTO telemetry (device_id, v) SELECT device_id, v FROM device_events",
            Key::InsertSelect},
           {"INSERT INTO telemetry SELECT * FROM telemetry WHERE device_id = 1", Key::InsertSelect},
           {"INSERT INTO telemetry DEFAULT VALUES", Key::InsertSelect},
           {"INSERT INTO telemetry (device_id) VALUES (1); INSERT INTO telemetry (device_id) "
            "VALUES (1)",
            Key::Multiple},
           {"SELECT * FROM telemetry WHERE device_id = 1; SELECT 2", Key::Multiple},
           {"SELEC * FROM telemetry WHERE device_id = 1", Key::Unparsed},
           {"SELECT * FROM telemetry WHERE device_id = 'unterminated", Key::Unparsed},
           {"INSERT INTO telemetry (device_id) VALUES (1", Key::Unparsed},
           // A reference table: no key, every shard.
           {"INSERT INTO device_types (device_id, name) VALUES (1, 'x')", Key::None},
       }) {
    const ShardPlan plan = plan_shards(c.sql, policy);
    EXPECT_EQ(key_name(plan.key), key_name(c.key)) << c.sql;
    EXPECT_EQ(shard_keys(c.sql, plan, policy, nullptr).status, Status::NoKey) << c.sql;
  }
  EXPECT_EQ(plan_shards("SELECT * FROM telemetry; SELECT 2", policy).tables, Tables::Sharded);
}

TEST(ShardPlanTest, ParamsNullAndUnbound) {
  const ShardingPolicy policy = make_policy();
  const std::string one = "UPDATE telemetry SET v = $1 WHERE device_id = $2";
  const ShardPlan plan = plan_shards(one, policy);
  EXPECT_EQ(shard_keys(one, plan, policy, nullptr).status, Status::NotBound);
  TestParams p;
  p.text("1.5");
  p.null();
  EXPECT_EQ(shard_keys(one, plan, policy, &p).status, Status::Null);
  TestParams q;
  q.text("1.5");
  q.text("42");
  EXPECT_EQ(shard_keys(one, plan, policy, &q).shards, bit_of("42", policy));

  // A NULL or an unbound $n anywhere among several key values stops the reading.
  const std::string insert =
      "INSERT INTO telemetry (device_id, v) VALUES ($1, 1), (2, $2), ($3, 3)";
  const ShardPlan ins = plan_shards(insert, policy);
  EXPECT_EQ(shard_keys(insert, ins, policy, nullptr).status, Status::NotBound);
  TestParams r;
  r.null();
  r.text("0");
  r.text("3");
  EXPECT_EQ(shard_keys(insert, ins, policy, &r).status, Status::Null);
  TestParams s;
  s.text("1");
  s.text("0");
  s.null();
  EXPECT_EQ(shard_keys(insert, ins, policy, &s).status, Status::Null);
  TestParams t;
  t.text("1");
  t.text("0");
  t.text("3");
  EXPECT_EQ(shard_keys(insert, ins, policy, &t).shards,
            bit_of("1", policy) | bit_of("2", policy) | bit_of("3", policy));
}

TEST(ShardPlanTest, ValuesThatAreNotKeysOfTheKeyType) {
  const ShardingPolicy policy = make_policy(KeyType::Bigint);
  auto keys = [&](const std::string& sql, const ParamSource* params = nullptr) {
    return shard_keys(sql, plan_shards(sql, policy), policy, params);
  };
  struct Case {
    std::string sql;
    std::string bad;
  };
  for (const Case& c : std::vector<Case>{
           {"SELECT * FROM telemetry WHERE device_id = 'abc'", "abc"},
           {"SELECT * FROM telemetry WHERE device_id = 1.5", "1.5"},
           {"SELECT * FROM telemetry WHERE device_id = 9223372036854775808", "9223372036854775808"},
           {"SELECT * FROM telemetry WHERE device_id = $$q$$", "q"},
           {"SELECT * FROM telemetry WHERE device_id = ''", ""},
           {"SELECT * FROM telemetry WHERE device_id IN (1, 'zz', 3)", "zz"},
           {"SELECT * FROM telemetry WHERE device_id = 'it''s'", "'it''s'"},
           {"INSERT INTO telemetry (device_id) VALUES (1), ('x'), (3)", "x"},
           {"INSERT INTO telemetry (device_id) VALUES ('x'), (2)", "x"},
       }) {
    const ShardKeys k = keys(c.sql);
    EXPECT_EQ(describe(k), "Invalid bad=[" + c.bad + "]") << c.sql;
  }
  TestParams text;
  text.text("x1");
  EXPECT_EQ(describe(keys("SELECT * FROM telemetry WHERE device_id = $1", &text)),
            "Invalid bad=[x1]");
  TestParams uuid;
  uuid.binary(uuid_bytes("6f1c2a1e-8b2d-4c1e-9f00-0123456789ab"), kOidUuid);
  EXPECT_EQ(describe(keys("SELECT * FROM telemetry WHERE device_id = $1", &uuid)),
            "Invalid bad=[(binary parameter)]");
  // Integers are fine.
  EXPECT_EQ(keys("SELECT * FROM telemetry WHERE device_id = '-42'").shards, bit_of("-42", policy));
}

// ---- 2. the cached plan reads every statement of its fingerprint -------------------------------

void check_same_shape(const Stmt& planned, const Stmt& other, const ShardingPolicy& policy) {
  ASSERT_EQ(fingerprint(planned.sql), fingerprint(other.sql))
      << planned.sql << "\n  vs\n"
      << other.sql << "\n  " << normalize(planned.sql) << "\n  " << normalize(other.sql);
  const ShardPlan cached = plan_shards(planned.sql, policy);
  const ShardPlan fresh = plan_shards(other.sql, policy);
  EXPECT_EQ(describe(cached), describe(fresh)) << planned.sql << "\n  vs\n" << other.sql;
  const std::string from_cached =
      describe(shard_keys(other.sql, cached, policy, other.params.get()));
  EXPECT_EQ(from_cached, describe(shard_keys(other.sql, fresh, policy, other.params.get())))
      << planned.sql << "\n  vs\n"
      << other.sql;
  EXPECT_EQ(from_cached, describe(expected_keys(other, policy, true))) << planned.sql << "\n  vs\n"
                                                                       << other.sql;
  EXPECT_EQ(describe(shard_keys(other.sql, cached, policy, nullptr)),
            describe(shard_keys(other.sql, fresh, policy, nullptr)))
      << "unbound: " << planned.sql << "\n  vs\n"
      << other.sql;
}

TEST(ShardPlanTest, ACachedPlanReadsEveryStatementOfItsShape) {
  const ShardingPolicy policy = make_policy();
  const std::vector<Val> pool = all_values();
  int pairs = 0;
  for (const std::string& shape : single_shapes()) {
    const std::string other = restyled(shape);
    for (std::size_t i = 0; i < pool.size(); ++i) {
      const std::size_t j = (i * 7 + 3) % pool.size();
      check_same_shape(render(shape, {pool[i]}), render(other, {pool[j]}), policy);
      ++pairs;
    }
  }
  for (const std::string& shape : list_shapes()) {
    const std::string other = restyled(shape);
    for (std::size_t n = 1; n <= 9; ++n) {
      // Another length, other values.
      check_same_shape(render(shape, take(pool, n, n)), render(other, take(pool, 3 * n, 10 - n)),
                       policy);
      check_same_shape(render(other, take(pool, 5 * n, 1)), render(shape, take(pool, n, 2 * n)),
                       policy);
      pairs += 2;
    }
  }
  for (const InsertShape& shape : insert_shapes()) {
    for (int rows = 1; rows <= shape.max_rows; rows += 3) {
      const std::string tmpl = insert_template(shape, rows);
      const auto n = static_cast<std::size_t>(rows);
      check_same_shape(render(tmpl, take(pool, n, n)), render(restyled(tmpl), take(pool, 2 * n, n)),
                       policy);
      ++pairs;
    }
  }
  // Hand-written pairs: keyless shapes stay keyless, values that look alike.
  const std::vector<std::pair<std::string, std::string>> hand = {
      {"SELECT * FROM telemetry WHERE device_id = 1 OR x = 2",
       "select * from telemetry where device_id = 5 or x = 9"},
      {"SELECT * FROM telemetry WHERE device_id = -1",
       "SELECT * FROM telemetry WHERE device_id = - 5"},
      {"SELECT * FROM telemetry WHERE device_id = 1",
       "SELECT * FROM telemetry WHERE device_id = '4'\n'2'"},
      {"SELECT * FROM telemetry WHERE device_id = 1",
       "SELECT * FROM telemetry WHERE device_id = - /**/ 3"},
      {"SELECT * FROM telemetry WHERE device_id IN (1)",
       "select * from TELEMETRY where DEVICE_ID in ( 9 , -3 , 'x' , $$y$$, - 4 )"},
      {"SELECT * FROM telemetry WHERE device_id = 5 ORDER BY 1 LIMIT 3",
       "SELECT * FROM telemetry WHERE device_id = 6 order by 1 limit 300"},
      {"SELECT * FROM telemetry WHERE a IN (1, 2) AND device_id = 5",
       "SELECT * FROM telemetry WHERE a IN (1) AND device_id = 9"},
      {"SELECT * FROM telemetry WHERE device_id = E'x'",
       "SELECT * FROM telemetry WHERE device_id = E'\\x41'"},
      {"INSERT INTO telemetry (device_id, v) VALUES (1, ARRAY[1]), (2, ARRAY[1, 2, 3])",
       "INSERT INTO telemetry (device_id, v) VALUES (7, ARRAY[4, 5, 6, 7]), (8, ARRAY[8])"},
      {"INSERT INTO telemetry (device_id) VALUES (1), (2), (3)",
       "insert into telemetry (device_id) values ('a'), ($$b$$), (-3)"},
      {"UPDATE telemetry SET v = -1 WHERE device_id = 1",
       "UPDATE telemetry SET v = 7 WHERE device_id = -1"},
  };
  for (const auto& [a, b] : hand) {
    ASSERT_EQ(fingerprint(a), fingerprint(b)) << a << "\n  vs\n" << b;
    const ShardPlan cached = plan_shards(a, policy);
    const ShardPlan fresh = plan_shards(b, policy);
    EXPECT_EQ(describe(shard_keys(b, cached, policy, nullptr)),
              describe(shard_keys(b, fresh, policy, nullptr)))
        << a << "\n  vs\n"
        << b << "\n  " << describe(cached) << "\n  " << describe(fresh);
    ++pairs;
  }
  EXPECT_GE(pairs, 300);
  RecordProperty("pairs", pairs);
}

TEST(ShardPlanTest, AStatementOfAnotherShapeReadsNoKey) {
  // A fingerprint collision would hand a plan to a statement it was not made for: fewer slots
  // than the plan names read no key rather than a wrong one.
  const ShardingPolicy policy = make_policy();
  const ShardPlan plan =
      plan_shards("INSERT INTO telemetry (device_id) VALUES (1), (2), (3)", policy);
  ASSERT_EQ(plan.key, Key::Slots);
  EXPECT_EQ(plan.count, 3);
  const std::string two = "INSERT INTO telemetry (device_id) VALUES (1), (2)";
  EXPECT_EQ(shard_keys(two, plan, policy, nullptr).status, Status::NoKey);
  EXPECT_EQ(shard_keys("SELECT 1", plan, policy, nullptr).status, Status::NoKey);
}

// ---- tables and DDL ----------------------------------------------------------------------------

TEST(ShardPlanTest, TheTablesAStatementTouches) {
  const ShardingPolicy policy = make_policy();
  struct Case {
    const char* sql;
    Tables tables;
  };
  for (const Case& c : std::vector<Case>{
           {"SELECT 1", Tables::None},
           {"select now(), 'x' || 'y'", Tables::None},
           {"SELECT * FROM generate_series(1, 3)", Tables::None},
           {"SHOW work_mem", Tables::None},
           {"SET work_mem = '1MB'", Tables::None},
           {"BEGIN", Tables::None},
           {"COMMIT", Tables::None},
           {"WITH x AS (SELECT 1 AS device_id) SELECT * FROM x WHERE device_id = 1", Tables::None},
           {"WITH telemetry AS (SELECT 1 AS v) SELECT * FROM telemetry", Tables::None},
           {"SELECT * FROM device_types", Tables::ReferenceOnly},
           {"SELECT * FROM device_types a JOIN device_types b ON a.id = b.parent",
            Tables::ReferenceOnly},
           {"WITH recent AS (SELECT * FROM device_types) SELECT * FROM recent",
            Tables::ReferenceOnly},
           {"INSERT INTO device_types (id, name) VALUES (1, 'x')", Tables::ReferenceOnly},
           {"UPDATE device_types SET name = 'y' WHERE id = 1", Tables::ReferenceOnly},
           {"DELETE FROM device_types", Tables::ReferenceOnly},
           {"SELECT * FROM telemetry", Tables::Sharded},
           {"SELECT * FROM device_events", Tables::Sharded},
           {"SELECT * FROM some_unlisted_table", Tables::Unlisted},
           {"SELECT * FROM telemetry t JOIN some_unlisted_table u USING (device_id)",
            Tables::Unlisted},
           {"SELECT * FROM pg_catalog.pg_type", Tables::ReferenceOnly},
           {"SELECT * FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace",
            Tables::ReferenceOnly},
           {"SELECT * FROM information_schema.columns", Tables::ReferenceOnly},
           {"SELECT * FROM public.telemetry", Tables::Sharded},
           {"SELECT * FROM device_types d JOIN telemetry t ON t.type_id = d.id", Tables::Sharded},
           {"SELECT * FROM device_types WHERE id IN (SELECT type_id FROM device_events)",
            Tables::Sharded},
           {"WITH c AS (SELECT * FROM telemetry) SELECT * FROM c", Tables::Sharded},
           {"WITH x AS (SELECT 1) SELECT * FROM public.x", Tables::Unlisted},
           {"INSERT INTO telemetry (device_id) VALUES (1)", Tables::Sharded},
           {"UPDATE device_types SET n = t.v FROM telemetry t", Tables::Sharded},
           {"SELECT 1; SELECT * FROM telemetry", Tables::Sharded},
       }) {
    EXPECT_EQ(tables_name(plan_shards(c.sql, policy).tables), tables_name(c.tables)) << c.sql;
  }
}

TEST(ShardPlanTest, SchemaChangesAreDdl) {
  const ShardingPolicy policy = make_policy();
  for (const char* sql :
       {"CREATE TABLE telemetry (ts timestamptz, device_id bigint, v float8)",
        "CREATE TABLE IF NOT EXISTS x (a int)", "ALTER TABLE telemetry ADD COLUMN note text",
        "ALTER TABLE device_types RENAME COLUMN a TO b",
        "CREATE INDEX ON telemetry (device_id, ts)",
        "CREATE UNIQUE INDEX ix ON device_types (name)", "DROP TABLE telemetry",
        "DROP TABLE IF EXISTS a, b CASCADE", "DROP INDEX ix",
        "CREATE VIEW v AS SELECT * FROM telemetry WHERE device_id = 1", "CREATE SEQUENCE s",
        "COMMENT ON TABLE telemetry IS 'x'", "GRANT SELECT ON telemetry TO reader",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto"}) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_TRUE(plan.ddl) << sql;
    EXPECT_EQ(plan.key, Key::None) << sql;
  }
  EXPECT_EQ(plan_shards("CREATE TABLE device_types (id int)", policy).tables,
            Tables::ReferenceOnly);
  EXPECT_EQ(plan_shards("ALTER TABLE telemetry ADD COLUMN x int", policy).tables, Tables::Sharded);
  for (const char* sql :
       {"SELECT 1", "SELECT * FROM telemetry WHERE device_id = 1",
        "INSERT INTO telemetry (device_id) VALUES (1)", "UPDATE telemetry SET v = 1",
        "SET search_path = x", "ANALYZE telemetry", "EXPLAIN SELECT 1"}) {
    EXPECT_FALSE(plan_shards(sql, policy).ddl) << sql;
  }
}

TEST(ShardPlanTest, WritesToReferenceTablesNeverNarrowToOneShard) {
  // A reference table has the same rows on every shard; a write to it, even one that names a
  // device_id, must reach all of them.
  const ShardingPolicy policy = make_policy();
  for (const char* sql : {"UPDATE device_types SET name = 'x' WHERE device_id = 5",
                          "DELETE FROM device_types WHERE device_id = 5",
                          "DELETE FROM device_types WHERE device_id IN (1, 2)"}) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_EQ(plan.tables, Tables::ReferenceOnly) << sql;
    EXPECT_NE(shard_keys(sql, plan, policy, nullptr).status, Status::Found)
        << sql << "\n  plan: " << describe(plan);
  }
}

TEST(ShardPlanTest, AWriteInAWithClauseIsNotNarrowedByTheOuterKey) {
  // The outer WHERE says nothing about the rows a data-modifying CTE writes.
  const ShardingPolicy policy = make_policy();
  for (const char* sql :
       {"WITH d AS (DELETE FROM telemetry WHERE device_id = 1 RETURNING *) SELECT * FROM "
        "telemetry WHERE device_id = 2",
        "WITH i AS (INSERT INTO telemetry (device_id) VALUES (1) RETURNING *) SELECT * FROM "
        "telemetry WHERE device_id = 2",
        "WITH u AS (UPDATE device_types SET n = 1 RETURNING *) UPDATE telemetry SET v = 1 WHERE "
        "device_id = 2",
        "WITH u AS (UPDATE telemetry SET v = 0 RETURNING *) INSERT INTO telemetry (device_id) "
        "VALUES (2)"}) {
    const ShardPlan plan = plan_shards(sql, policy);
    EXPECT_NE(shard_keys(sql, plan, policy, nullptr).status, Status::Found)
        << sql << "\n  plan: " << describe(plan);
  }
  // A read-only WITH clause keeps the outer key.
  const std::string read =
      "WITH r AS (SELECT * FROM device_types) SELECT * FROM telemetry WHERE device_id = 2";
  EXPECT_EQ(shard_keys(read, plan_shards(read, policy), policy, nullptr).shards,
            bit_of("2", policy));
}

TEST(ShardPlanTest, ShardOfTextAndShardNames) {
  const ShardingPolicy policy = make_policy();
  EXPECT_EQ(shard_of_text("42", policy), shard_of_value("42", policy));
  EXPECT_EQ(shard_of_text("abc", policy), shard_of_value("abc", policy));
  EXPECT_EQ(shard_of_text("x", make_policy(KeyType::Bigint)), -1);
  EXPECT_EQ(policy.shard_named("s2"), 2);
  EXPECT_EQ(policy.shard_named("s9"), -1);
  EXPECT_EQ(policy.shard_named(""), -1);
}

// ---- 3. the router -----------------------------------------------------------------------------

class ShardRouterTest : public ::testing::Test {
 protected:
  std::vector<std::string> write_functions{"nextval", "setval", "pg_notify"};
  ShardingPolicy policy = make_policy();
  ShardingPolicy bigint_policy = make_policy(KeyType::Bigint);
  DecisionCache cache{64};
  Router router{4, RoutingPolicy{false, &write_functions, &policy, 1}, &cache};
  Router bigint_router{4, RoutingPolicy{false, &write_functions, &bigint_policy, 2}, &cache};

  int shard(std::string_view value) const { return shard_of_value(value, policy); }

  // Two integers on different shards.
  std::pair<int, int> two_shards() const {
    const int a = 1;
    for (int b = 2;; ++b) {
      if (shard(std::to_string(b)) != shard(std::to_string(a))) return {a, b};
    }
  }

  Route route(std::string_view sql, const RouteContext& context = {}) {
    return router.route(sql, context);
  }

  static void expect_refused(const Route& r, std::string_view sqlstate, std::string_view sql) {
    ASSERT_EQ(r.kind, Kind::Refuse) << sql;
    ASSERT_NE(r.refusal, nullptr);
    EXPECT_EQ(r.refusal->sqlstate, sqlstate) << sql << ": " << r.refusal->message;
    EXPECT_FALSE(r.refusal->message.empty());
  }
};

// A quoted key with whitespace around it is what PostgreSQL's bigint input reads as the integer:
// under key_type bigint the statement goes where the integer goes, as a COPY row does; under auto
// (bigint or text column?) it is refused, not guessed; beyond bigint it is 22003.
TEST_F(ShardRouterTest, AKeyWithWhitespaceAroundItIsReadAsPostgresReadsIt) {
  const Route padded = bigint_router.route("SELECT * FROM telemetry WHERE device_id = ' 5 '", {});
  ASSERT_EQ(padded.kind, Kind::Primary);
  EXPECT_EQ(padded.shard, shard_of_value("5", bigint_policy));
  const Route range =
      bigint_router.route("INSERT INTO telemetry (device_id) VALUES (99999999999999999999)", {});
  expect_refused(range, "22003", "out of range");
  EXPECT_NE(range.refusal->message.find("out of range for type bigint"), std::string::npos);

  const char* sql = "INSERT INTO telemetry (device_id) VALUES (' 5')";
  const Route ambiguous = route(sql);
  expect_refused(ambiguous, "22P02", sql);
  EXPECT_NE(ambiguous.refusal->message.find("whitespace"), std::string::npos)
      << ambiguous.refusal->message;
}

TEST_F(ShardRouterTest, AStatementTooLongToParseIsRefusedUnlessAHintPlacesIt) {
  // Parsing it would take about a hundred times its size; guessing a shard would misplace rows.
  std::string sql = "INSERT INTO telemetry (device_id, v) VALUES (1, 1)";
  while (sql.size() <= kMaxParsedStatementBytes)
    sql += ", (1, 1)";
  expect_refused(route(sql), "54000", "long insert");
  EXPECT_NE(route(sql).refusal->hint.find("device_id=<value>"), std::string::npos);
  const Route hinted = route("/* pgvalve: device_id=1 */ " + sql);
  EXPECT_EQ(hinted.kind, Kind::Primary);
  EXPECT_EQ(hinted.shard, shard("1"));
  // The refusal is not kept for the shape: a short statement of it runs.
  const Route small = route("INSERT INTO telemetry (device_id, v) VALUES (1, 1)");
  EXPECT_EQ(small.kind, Kind::Primary);
  std::string long_select = "SELECT * FROM telemetry WHERE device_id IN (1";
  while (long_select.size() <= kMaxParsedStatementBytes)
    long_select += ", 1";
  expect_refused(route(long_select + ")"), "54000", "long select");
  const Route short_select = route("SELECT * FROM telemetry WHERE device_id IN (1, 2)");
  EXPECT_NE(short_select.kind, Kind::Refuse);
}

TEST_F(ShardRouterTest, AStatementWithAKeyGoesToItsShard) {
  for (const char* v : {"42", "7", "-3", "abc"}) {
    const std::string sql = std::string("SELECT * FROM telemetry WHERE device_id = '") + v + "'";
    const Route r = route(sql);
    EXPECT_EQ(r.kind, Kind::Primary) << sql;
    EXPECT_EQ(r.shard, shard(v)) << sql;
    EXPECT_FALSE(r.any_shard) << sql;
  }
  const Route w = route("UPDATE telemetry SET v = 1 WHERE device_id = 42");
  EXPECT_EQ(w.kind, Kind::Primary);
  EXPECT_EQ(w.shard, shard("42"));
  EXPECT_TRUE(w.write);
}

TEST_F(ShardRouterTest, HintsNameTheKeyOrTheShard) {
  const Route key = route("/* pgvalve: device_id=42 */ SELECT * FROM telemetry");
  EXPECT_EQ(key.kind, Kind::Primary);
  EXPECT_EQ(key.shard, shard("42"));
  // The hint wins over the statement's own key.
  const std::pair<int, int> ab = two_shards();
  const Route over =
      route("/* pgvalve: device_id=" + std::to_string(ab.first) +
            " */ SELECT * FROM telemetry WHERE device_id = " + std::to_string(ab.second));
  EXPECT_EQ(over.shard, shard(std::to_string(ab.first)));
  EXPECT_EQ(route("/* pgvalve: device_id='abc' */ DELETE FROM telemetry").shard, shard("abc"));

  const Route s2 = route("/* pgvalve: shard=s2 */ SELECT * FROM telemetry");
  EXPECT_EQ(s2.kind, Kind::Primary);
  EXPECT_EQ(s2.shard, 2);
  EXPECT_EQ(route("/* pgvalve: shard=s3 */ DELETE FROM telemetry").shard, 3);
  expect_refused(route("/* pgvalve: shard=s9 */ SELECT 1"), "0A000", "shard=s9");

  const Route all = route("/* pgvalve: all_shards */ SELECT * FROM telemetry WHERE device_id = 1");
  EXPECT_EQ(all.kind, Kind::Shards);
  EXPECT_EQ(all.shards, 0xfu);
  EXPECT_FALSE(all.write);
  const Route all_write = route("/* pgvalve: all_shards */ DELETE FROM telemetry");
  EXPECT_EQ(all_write.kind, Kind::Shards);
  EXPECT_EQ(all_write.shards, 0xfu);
  EXPECT_TRUE(all_write.write);

  expect_refused(bigint_router.route("/* pgvalve: device_id=abc */ SELECT 1", {}), "22P02",
                 "device_id=abc");
}

TEST_F(ShardRouterTest, TheSessionsDeviceId) {
  RouteContext c;
  c.device_id = "42";
  const Route r = route("SELECT * FROM telemetry", c);
  EXPECT_EQ(r.kind, Kind::Primary);
  EXPECT_EQ(r.shard, shard("42"));
  EXPECT_EQ(route("DELETE FROM telemetry", c).shard, shard("42"));
  // A hint comment wins.
  const std::pair<int, int> ab = two_shards();
  c.device_id = std::to_string(ab.first);
  const std::string hinted = "/* pgvalve: device_id=" + std::to_string(ab.second) + " */ SELECT 1";
  EXPECT_EQ(route(hinted, c).shard, shard(std::to_string(ab.second)));
  RouteContext bad;
  bad.device_id = "not-a-number";
  expect_refused(bigint_router.route("SELECT * FROM telemetry", bad), "22P02", "device_id");
}

TEST_F(ShardRouterTest, CopyFromStdinRoutesEachRowAndCopyToStdoutReadsEveryShard) {
  // COPY FROM: every shard runs it; the session sends each row to its key's shard.
  for (const char* sql : {"COPY telemetry FROM STDIN", "COPY telemetry (device_id, v) FROM STDIN",
                          "/* pgvalve: all_shards */ COPY telemetry (device_id) FROM STDIN",
                          "COPY device_types FROM STDIN"}) {
    const Route r = route(sql);
    EXPECT_EQ(r.kind, Kind::Shards) << sql;
    EXPECT_EQ(r.shards, 0xfu) << sql;
    EXPECT_TRUE(r.write && r.copy_rows) << sql;
    EXPECT_EQ(plan_shards(sql, policy).key, Key::CopyFrom) << sql;
  }
  // COPY TO STDOUT is a read of every shard (refused by the gather: only a SELECT combines).
  const Route out = route("COPY telemetry TO STDOUT");
  EXPECT_EQ(out.kind, Kind::Shards);
  EXPECT_FALSE(out.write || out.copy_rows);
  // A hint runs any COPY on its one shard, as it is.
  const Route hinted = route("/* pgvalve: device_id=1 */ COPY telemetry FROM STDIN");
  EXPECT_EQ(hinted.kind, Kind::Primary);
  EXPECT_FALSE(hinted.copy_rows);
}

TEST_F(ShardRouterTest, KeylessStatements) {
  const Route read = route("SELECT * FROM telemetry WHERE ts > now() - interval '1 hour'");
  EXPECT_EQ(read.kind, Kind::Shards);
  EXPECT_EQ(read.shards, 0xfu);
  EXPECT_FALSE(read.write);
  EXPECT_EQ(route("SELECT * FROM telemetry WHERE device_id = 1 OR device_id = 2").shards, 0xfu);

  for (const char* sql :
       {"DELETE FROM telemetry WHERE ts < now()", "UPDATE telemetry SET v = 1",
        "INSERT INTO telemetry VALUES (1, 2)", "INSERT INTO telemetry (device_id) SELECT 1",
        "INSERT INTO telemetry (device_id) VALUES (DEFAULT)",
        "SELECT * FROM telemetry WHERE device_id = 1; DELETE FROM telemetry"}) {
    const Route r = route(sql);
    expect_refused(r, "0A000", sql);
    if (r.refusal) {
      EXPECT_FALSE(r.refusal->hint.empty()) << sql;
    }
  }

  const Route ddl = route("CREATE INDEX ON telemetry (ts)");
  EXPECT_EQ(ddl.kind, Kind::Shards);
  EXPECT_EQ(ddl.shards, 0xfu);
  EXPECT_TRUE(ddl.write);
  EXPECT_EQ(route("ALTER TABLE device_types ADD COLUMN x int").shards, 0xfu);

  const Route one = route("SELECT 1");
  EXPECT_TRUE(one.any_shard);
  EXPECT_NE(one.kind, Kind::Refuse);
  const Route ref = route("SELECT * FROM device_types WHERE id = 3");
  EXPECT_TRUE(ref.any_shard);
  EXPECT_NE(ref.kind, Kind::Shards);
  EXPECT_TRUE(route("select from where").any_shard);  // PostgreSQL says what is wrong
  // asyncpg's reset at pool release: several statements, none on a table, none a change.
  const Route reset =
      route("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;");
  EXPECT_TRUE(reset.any_shard);
  EXPECT_NE(reset.kind, Kind::Refuse);
  for (const char* sql : {"SELECT 1; CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
                          "RESET ALL; SELECT * FROM device_types", "SELECT 1; BEGIN"}) {
    expect_refused(route(sql), "0A000", sql);
  }

  for (const char* sql :
       {"INSERT INTO device_types (id, name) VALUES (1, 'x')", "UPDATE device_types SET name = 'y'",
        "UPDATE device_types SET name = 'y' WHERE device_id = 4"}) {
    const Route w = route(sql);
    EXPECT_EQ(w.kind, Kind::Shards) << sql;
    EXPECT_EQ(w.shards, 0xfu) << sql;
    EXPECT_TRUE(w.write) << sql;
  }
}

// A write that names only reference tables changes the same rows on every shard, which then
// answer alike: the client gets one shard's answer. Writes over sharded tables add theirs up.
// pg_notify() in a read of reference tables writes no table: one shard's primary sends the one
// notification (every shard would send it, and could not prepare its part for two-phase commit).
TEST_F(ShardRouterTest, ANotificationFromAReadOfReferenceTablesGoesToOneShardsPrimary) {
  for (const char* sql : {"SELECT pg_notify('ingest', name) FROM device_types WHERE id = 1",
                          "SELECT pg_notify('ingest', 'x')"}) {
    const Route r = route(sql);
    EXPECT_EQ(r.kind, Kind::Primary) << sql;
    EXPECT_TRUE(r.any_shard) << sql;
  }
  // Anything else that writes still goes to every shard.
  const Route r = route("SELECT pg_notify('ingest', name), nextval('s') FROM device_types");
  EXPECT_EQ(r.kind, Kind::Shards);
  EXPECT_TRUE(r.write && r.same_on_every_shard);
  // One device's rows: that device's shard; rows of every shard: refused, as a write without a
  // key is (each shard would notify).
  const Route one = route("SELECT pg_notify('ingest', v::text) FROM telemetry WHERE device_id = 1");
  EXPECT_EQ(one.kind, Kind::Primary);
  EXPECT_EQ(one.shard, shard("1"));
  expect_refused(route("SELECT pg_notify('ingest', v::text) FROM telemetry"), "0A000", "scatter");
}

TEST_F(ShardRouterTest, AWriteToReferenceTablesIsTheSameOnEveryShard) {
  for (const char* sql :
       {"INSERT INTO device_types (id, name) VALUES (1, 'x') RETURNING id",
        "UPDATE device_types SET name = 'y' WHERE id = 1", "DELETE FROM device_types RETURNING *",
        "/* pgvalve: all_shards */ DELETE FROM device_types",
        "SELECT * FROM device_types WHERE id = 1 FOR UPDATE",
        "ALTER TABLE device_types ADD COLUMN x int",
        "CREATE TABLE t AS SELECT * FROM device_types"}) {
    const Route r = route(sql);
    EXPECT_EQ(r.kind, Kind::Shards) << sql;
    EXPECT_EQ(r.shards, 0xfu) << sql;
    EXPECT_TRUE(r.write && r.same_on_every_shard) << sql;
  }
  // Rows that differ between shards: every shard's answer counts.
  for (const char* sql :
       {"/* pgvalve: all_shards */ DELETE FROM telemetry",
        "/* pgvalve: all_shards */ SELECT * FROM device_types", "CREATE INDEX ON telemetry (ts)",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
        "/* pgvalve: all_shards */ UPDATE device_types SET name = t.name FROM "
        "telemetry t"}) {
    const Route r = route(sql);
    EXPECT_EQ(r.kind, Kind::Shards) << sql;
    EXPECT_FALSE(r.same_on_every_shard) << sql;
  }
  const std::pair<int, int> ab = two_shards();
  const Route split = route("INSERT INTO telemetry (device_id) VALUES (" +
                            std::to_string(ab.first) + "), (" + std::to_string(ab.second) + ")");
  EXPECT_TRUE(split.split_rows);
  EXPECT_FALSE(split.same_on_every_shard);
}

TEST_F(ShardRouterTest, SeveralShards) {
  const std::pair<int, int> ab = two_shards();
  const std::string a = std::to_string(ab.first);
  const std::string b = std::to_string(ab.second);
  const std::string insert = "INSERT INTO telemetry (ts, device_id, v) VALUES (now(), " + a +
                             ", 1), (now(), " + b + ", 2), (now(), " + a + ", 3)";
  // An INSERT whose rows belong to several shards is split between them; hinted all_shards, it
  // is refused (its rows belong to their keys' shards, not to every shard).
  const std::uint64_t both = (std::uint64_t{1} << shard(a)) | (std::uint64_t{1} << shard(b));
  const Route split = route(insert);
  EXPECT_EQ(split.kind, Kind::Shards);
  EXPECT_EQ(split.shards, both);
  EXPECT_TRUE(split.write);
  EXPECT_TRUE(split.split_rows);
  expect_refused(route("/* pgvalve: all_shards */ " + insert), "0A000", "all_shards insert");
  const Route r = route("DELETE FROM telemetry WHERE device_id IN (" + a + ", " + b + ")");
  EXPECT_EQ(r.kind, Kind::Shards);
  EXPECT_EQ(r.shards, both);
  EXPECT_TRUE(r.write);
  const Route read = route("SELECT * FROM telemetry WHERE device_id IN (" + a + ", " + b + ")");
  EXPECT_EQ(read.kind, Kind::Shards);
  EXPECT_EQ(read.shards, both);
  EXPECT_FALSE(read.write);
  // Many values, one shard: that shard's primary.
  const Route same = route("SELECT * FROM telemetry WHERE device_id IN (" + a + ", " + a + ")");
  EXPECT_EQ(same.kind, Kind::Primary);
  EXPECT_EQ(same.shard, shard(a));
}

// Under key_type auto an unquoted number that is not an integer is refused: a bigint column
// stores 7.0 as 7, a text column as '7.0', and hashing either way misplaces some rows.
TEST_F(ShardRouterTest, AutoRefusesANumberThatIsNotAnInteger) {
  for (const char* sql : {"INSERT INTO telemetry (device_id, value) VALUES (7.0, 1)",
                          "SELECT * FROM telemetry WHERE device_id = 7e0",
                          "DELETE FROM telemetry WHERE device_id = -1.5"}) {
    expect_refused(route(sql), "22P02", "not an integer");
  }
  EXPECT_EQ(route("SELECT * FROM telemetry WHERE device_id = 7").shard, shard("7"));
  EXPECT_EQ(route("SELECT * FROM telemetry WHERE device_id = '7.0'").shard, shard("7.0"));
}

TEST_F(ShardRouterTest, BadAndMissingKeyValues) {
  expect_refused(bigint_router.route("SELECT * FROM telemetry WHERE device_id = 'abc'", {}),
                 "22P02", "'abc'");
  const Route r = bigint_router.route("SELECT * FROM telemetry WHERE device_id = 'abc'", {});
  ASSERT_NE(r.refusal, nullptr);
  EXPECT_NE(r.refusal->message.find("\"abc\""), std::string::npos) << r.refusal->message;

  const std::string prepared = "SELECT * FROM telemetry WHERE device_id = $1";
  EXPECT_TRUE(route(prepared).any_shard);  // a Parse: no Bind yet
  TestParams p;
  p.text("42");
  RouteContext bound;
  bound.params = &p;
  EXPECT_EQ(route(prepared, bound).shard, shard("42"));
  TestParams n;
  n.null();
  bound.params = &n;
  expect_refused(route(prepared, bound), "22004", "NULL");
  // A Parse of a multi-row prepared INSERT is not refused: its Bind will tell.
  const Route parse = route("INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4)");
  EXPECT_NE(parse.kind, Kind::Refuse);
  EXPECT_TRUE(parse.any_shard);
}

TEST_F(ShardRouterTest, ASecondStatementOfAShapeHitsTheCache) {
  const std::string first = "SELECT * FROM telemetry WHERE device_id = 42";
  const Route r1 = route(first);
  const auto hits = cache.stats().hits;
  const auto misses = cache.stats().misses;
  const Route r2 = route(first);
  EXPECT_GT(cache.stats().hits, hits);
  EXPECT_EQ(cache.stats().misses, misses);
  EXPECT_TRUE(r1.same_target(r2));
  EXPECT_EQ(r2.shard, shard("42"));
  // Another value of the same shape: from the cached plan, its own shard.
  const std::pair<int, int> ab = two_shards();
  for (const int v : {ab.first, ab.second}) {
    const auto before = cache.stats().hits;
    const Route r =
        route("select *   from telemetry where device_id = '" + std::to_string(v) + "'");
    EXPECT_GT(cache.stats().hits, before);
    EXPECT_EQ(r.shard, shard(std::to_string(v)));
  }
  EXPECT_EQ(cache.stats().misses, misses);

  // Keyless and refused shapes answer the same the second time.
  for (const char* sql : {"SELECT * FROM telemetry", "DELETE FROM telemetry", "SELECT 1",
                          "INSERT INTO telemetry (device_id) VALUES (1), (2), (3), (4), (5)"}) {
    const Route a = route(sql);
    const auto before = cache.stats().hits;
    const Route b = route(sql);
    EXPECT_GT(cache.stats().hits, before) << sql;
    EXPECT_EQ(a.kind, b.kind) << sql;
    EXPECT_TRUE(a.same_target(b)) << sql;
    EXPECT_EQ(a.any_shard, b.any_shard) << sql;
  }

  // Two sharded databases share the cache: each reads with its own policy.
  const std::string sql = "SELECT * FROM telemetry WHERE device_id = 'abc'";
  EXPECT_EQ(route(sql).shard, shard("abc"));
  expect_refused(bigint_router.route(sql, {}), "22P02", sql);
  EXPECT_EQ(route(sql).shard, shard("abc"));
}

}  // namespace
}  // namespace pgvalve::routing

TEST(ShardPlan, UpdateThatSetsTheKeyIsPlannedAsUpdatesKey) {
  pgvalve::routing::ShardingPolicy p;
  p.tables = {"telemetry"};
  p.reference_tables = {"device_types"};
  EXPECT_EQ(
      pgvalve::routing::plan_shards("UPDATE telemetry SET device_id = 7 WHERE device_id = 5", p)
          .key,
      pgvalve::routing::ShardPlan::Key::UpdatesKey);
  EXPECT_EQ(
      pgvalve::routing::plan_shards("UPDATE telemetry SET value = 7 WHERE device_id = 5", p).key,
      pgvalve::routing::ShardPlan::Key::Slots);
  // The row would stay on its shard under a key that belongs on another.
  EXPECT_EQ(pgvalve::routing::plan_shards(
                "INSERT INTO telemetry (device_id, value) VALUES (1, 0) ON CONFLICT (device_id) "
                "DO UPDATE SET device_id = 2",
                p)
                .key,
            pgvalve::routing::ShardPlan::Key::UpdatesKey);
  EXPECT_EQ(pgvalve::routing::plan_shards(
                "INSERT INTO telemetry (device_id, value) VALUES (1, 0) ON CONFLICT (device_id) "
                "DO UPDATE SET value = excluded.value",
                p)
                .key,
            pgvalve::routing::ShardPlan::Key::Slots);
}

TEST(ShardRouting, UnlistedTablesAreRefusedAndCatalogsGoToAnyShard) {
  pgvalve::routing::ShardingPolicy p;
  p.tables = {"telemetry"};
  p.reference_tables = {"device_types"};
  p.shard_names = {"s0", "s1"};
  p.map = pgvalve::routing::ShardMap(pgvalve::routing::ShardHash::Md5Mod,
                                     pgvalve::routing::KeyType::Auto, 2, {});
  const std::vector<std::string> write_functions;
  pgvalve::routing::DecisionCache cache{16};
  pgvalve::routing::RoutingPolicy policy;
  policy.write_functions = &write_functions;
  policy.sharding = &p;
  policy.sharding_id = 1;
  const pgvalve::routing::Router router(2, policy, &cache);
  const pgvalve::routing::RouteContext context;

  const auto unlisted = router.route("SELECT * FROM readings WHERE device_id = 5", context);
  ASSERT_EQ(unlisted.kind, pgvalve::routing::Route::Kind::Refuse);
  EXPECT_EQ(unlisted.refusal->sqlstate, "0A000");
  EXPECT_NE(unlisted.refusal->message.find("\"readings\""), std::string::npos);
  // A hint takes the responsibility.
  EXPECT_EQ(router.route("/* pgvalve: shard=s1 */ SELECT * FROM readings", context).shard, 1);

  const auto catalog = router.route("SELECT typname FROM pg_type WHERE oid = 23", context);
  EXPECT_EQ(catalog.kind, pgvalve::routing::Route::Kind::Primary);
  EXPECT_TRUE(catalog.any_shard);
}
