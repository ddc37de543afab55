#include "routing/shard_map.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgvalve::routing {
namespace {

using nlohmann::json;

// ---- helpers -----------------------------------------------------------------------------------

const json& vectors_file() {
  static const json doc = [] {
    std::ifstream in(PGVALVE_VECTORS_DIR "/shard_hash.json");
    if (!in) throw std::runtime_error("cannot open " PGVALVE_VECTORS_DIR "/shard_hash.json");
    return json::parse(in);
  }();
  return doc;
}

KeyType key_type_named(const std::string& name) {
  if (name == "auto") return KeyType::Auto;
  if (name == "bigint") return KeyType::Bigint;
  if (name == "text") return KeyType::Text;
  if (name == "uuid") return KeyType::Uuid;
  throw std::invalid_argument("unknown key_type " + name);
}

std::string kind_name(KeyValue::Kind k) {
  switch (k) {
    case KeyValue::Kind::Integer:
      return "integer";
    case KeyValue::Kind::Text:
      return "text";
    case KeyValue::Kind::Uuid:
      return "uuid";
  }
  return "?";
}

std::string uuid_string(const std::array<std::uint8_t, 16>& u) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += kHex[u[i] >> 4];
    s += kHex[u[i] & 0x0F];
  }
  return s;
}

std::string canonical(const KeyValue& k) {
  switch (k.kind) {
    case KeyValue::Kind::Integer:
      return std::to_string(k.integer);
    case KeyValue::Kind::Text:
      return std::string(k.text);
    case KeyValue::Kind::Uuid:
      return uuid_string(k.uuid);
  }
  return "?";
}

std::uint64_t hex_u64(const json& v) {
  return std::stoull(v.get<std::string>(), nullptr, 16);
}

// Each vector's key read as its key_type; the JSON document owns the text the key borrows.
template <typename Fn>
void for_each_vector(Fn fn) {
  const json& vectors = vectors_file().at("vectors");
  for (const json& v : vectors) {
    const std::string& text = v.at("key").get_ref<const std::string&>();
    const std::string& type = v.at("key_type").get_ref<const std::string&>();
    SCOPED_TRACE("key '" + text + "' as " + type);
    const auto key = key_from_text(text, key_type_named(type));
    ASSERT_TRUE(key.has_value());
    fn(v, *key);
  }
}

std::string be(std::uint64_t v, int bytes) {
  std::string s(static_cast<std::size_t>(bytes), '\0');
  for (int i = bytes - 1; i >= 0; --i, v >>= 8)
    s[static_cast<std::size_t>(i)] = static_cast<char>(v);
  return s;
}

// numeric_send's layout: ndigits, weight, sign, dscale, then the base-10000 digits.
std::string numeric(std::int16_t weight, std::uint16_t sign, std::uint16_t dscale,
                    std::initializer_list<std::uint16_t> digits) {
  std::string s = be(digits.size(), 2) + be(static_cast<std::uint16_t>(weight), 2) + be(sign, 2) +
                  be(dscale, 2);
  for (std::uint16_t d : digits)
    s += be(d, 2);
  return s;
}

constexpr std::uint16_t kPos = 0x0000;
constexpr std::uint16_t kNeg = 0x4000;

std::optional<std::int64_t> numeric_key(const std::string& bytes, KeyType type = KeyType::Bigint) {
  const auto k = key_from_binary(bytes, 1700, type);
  if (!k) return std::nullopt;
  EXPECT_EQ(k->kind, KeyValue::Kind::Integer);
  return k->integer;
}

std::array<std::uint8_t, 16> uuid_bytes(std::string_view text) {
  auto k = key_from_text(text, KeyType::Uuid);
  EXPECT_TRUE(k.has_value()) << text;
  return k ? k->uuid : std::array<std::uint8_t, 16>{};
}

constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();

// ---- the frozen mappings (tests/vectors/shard_hash.json) ---------------------------------------

TEST(ShardHashVectors, CoverEveryKeyTypeAndKind) {
  const json& doc = vectors_file();
  EXPECT_GE(doc.at("vectors").size(), 60u);
  std::set<std::string> types, kinds;
  for (const json& v : doc.at("vectors")) {
    types.insert(v.at("key_type").get<std::string>());
    kinds.insert(v.at("kind").get<std::string>());
  }
  EXPECT_EQ(types, (std::set<std::string>{"auto", "bigint", "text", "uuid"}));
  EXPECT_EQ(kinds, (std::set<std::string>{"integer", "text", "uuid"}));
  EXPECT_EQ(doc.at("moduli"), (json{2, 3, 4, 7, 16}));
}

TEST(ShardHashVectors, KeyFromTextGivesTheCanonicalValue) {
  for_each_vector([](const json& v, const KeyValue& key) {
    EXPECT_EQ(kind_name(key.kind), v.at("kind").get<std::string>());
    EXPECT_EQ(canonical(key), v.at("canonical").get<std::string>());
  });
}

TEST(ShardHashVectors, RejectedKeysAreNotValues) {
  for (const json& r : vectors_file().at("rejects")) {
    const auto& text = r.at("key").get_ref<const std::string&>();
    const auto& type = r.at("key_type").get_ref<const std::string&>();
    EXPECT_FALSE(key_from_text(text, key_type_named(type)).has_value())
        << "'" << text << "' as " << type;
  }
}

TEST(ShardHashVectors, Xxh3MatchesXxhash) {
  for_each_vector([](const json& v, const KeyValue& key) {
    EXPECT_EQ(xxh3_key_hash(key), hex_u64(v.at("xxh3")));
  });
}

TEST(ShardHashVectors, Md5ModMatchesHashlib) {
  for_each_vector([](const json& v, const KeyValue& key) {
    for (const auto& [modulus, expected] : v.at("md5_mod").items())
      EXPECT_EQ(md5_mod(key, std::stoul(modulus)), expected.get<std::uint32_t>())
          << "modulus " << modulus;
  });
}

TEST(ShardHashVectors, PgPartitionMatchesSatisfiesHashPartition) {
  for_each_vector([](const json& v, const KeyValue& key) {
    const std::uint64_t h = pg_partition_hash(key);
    EXPECT_EQ(h, hex_u64(v.at("pg_partition_hash")));
    for (const auto& [modulus, expected] : v.at("pg_partition").items())
      EXPECT_EQ(h % std::stoul(modulus), expected.get<std::uint64_t>()) << "modulus " << modulus;
  });
}

TEST(ShardHashVectors, ShardMapTakesTheRemainderAsTheShard) {
  for_each_vector([](const json& v, const KeyValue& key) {
    const KeyType type = key_type_named(v.at("key_type").get<std::string>());
    for (const auto& [modulus, expected] : v.at("md5_mod").items()) {
      const ShardMap map(ShardHash::Md5Mod, type, std::stoi(modulus), {});
      EXPECT_EQ(map.shard_of(key), expected.get<std::uint16_t>()) << "md5_mod " << modulus;
      EXPECT_EQ(map.bucket_of(key), expected.get<std::uint32_t>()) << "md5_mod " << modulus;
    }
    for (const auto& [modulus, expected] : v.at("pg_partition").items()) {
      const ShardMap map(ShardHash::PgPartition, type, std::stoi(modulus), {});
      EXPECT_EQ(map.shard_of(key), expected.get<std::uint16_t>()) << "pg_partition " << modulus;
      EXPECT_EQ(map.bucket_of(key), expected.get<std::uint32_t>()) << "pg_partition " << modulus;
    }
  });
}

// A Bind parameter sent in binary lands on the same shard as the same value written as text.
// asyncpg and pgx send values in binary with no type in the Parse: PostgreSQL types them by
// the key column, which sharding.key_type names.
TEST(ShardHashVectors, BinaryValuesOfNoGivenTypeAreReadAsTheKeyType) {
  const auto eight = key_from_binary(be(static_cast<std::uint64_t>(-17), 8), 0, KeyType::Bigint);
  ASSERT_TRUE(eight.has_value());
  EXPECT_EQ(eight->integer, -17);
  EXPECT_EQ(key_from_binary(be(42, 4), 0, KeyType::Bigint)->integer, 42);
  EXPECT_FALSE(key_from_binary(be(42, 3), 0, KeyType::Bigint).has_value());
  EXPECT_EQ(key_from_binary("dev-7", 0, KeyType::Text)->text, "dev-7");
  const std::string uuid(
      reinterpret_cast<const char*>(uuid_bytes("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").data()), 16);
  EXPECT_EQ(key_from_binary(uuid, 0, KeyType::Uuid)->kind, KeyValue::Kind::Uuid);
  // Eight bytes may be an int8 or eight characters of text: `auto` cannot tell.
  EXPECT_FALSE(key_from_binary(be(42, 8), 0, KeyType::Auto).has_value());
}

TEST(ShardHashVectors, BinaryFormsHashLikeTheirText) {
  for_each_vector([](const json& v, const KeyValue& key) {
    std::optional<KeyValue> bin;
    std::string bytes;
    const KeyType type = key_type_named(v.at("key_type").get<std::string>());
    switch (key.kind) {
      case KeyValue::Kind::Integer:
        bytes = be(static_cast<std::uint64_t>(key.integer), 8);
        bin = key_from_binary(bytes, 20, type);
        break;
      case KeyValue::Kind::Text:
        bin = key_from_binary(key.text, 25, type);
        break;
      case KeyValue::Kind::Uuid:
        bytes.assign(reinterpret_cast<const char*>(key.uuid.data()), key.uuid.size());
        bin = key_from_binary(bytes, 2950, type);
        break;
    }
    ASSERT_TRUE(bin.has_value());
    EXPECT_EQ(bin->kind, key.kind);
    EXPECT_EQ(xxh3_key_hash(*bin), hex_u64(v.at("xxh3")));
    EXPECT_EQ(md5_mod(*bin, 7), v.at("md5_mod").at("7").get<std::uint32_t>());
    EXPECT_EQ(pg_partition_hash(*bin), hex_u64(v.at("pg_partition_hash")));
  });
}

// ---- key_from_text -----------------------------------------------------------------------------

TEST(ShardMapKeyFromText, AutoReadsSignedDecimalIntegers) {
  for (auto [text, value] : std::initializer_list<std::pair<std::string_view, std::int64_t>>{
           {"0", 0},
           {"-0", 0},
           {"+42", 42},
           {"007", 7},
           {"-17", -17},
           {"9223372036854775807", kMax},
           {"-9223372036854775808", kMin},
           {"000000000000000000000000000001", 1}}) {
    const auto k = key_from_text(text, KeyType::Auto);
    ASSERT_TRUE(k.has_value()) << text;
    EXPECT_EQ(k->kind, KeyValue::Kind::Integer) << text;
    EXPECT_EQ(k->integer, value) << text;
  }
}

TEST(ShardMapKeyFromText, AutoReadsAnythingElseAsText) {
  for (std::string_view text :
       {"9223372036854775808", "-9223372036854775809", "18446744073709551616", "", "+", "-",
        " 99999999999999999999", " x", "1 2", "1.0", "1e3", "0x10", "+-1", "1_000",
        "\xd9\xa1",  // ARABIC-INDIC DIGIT ONE
        "abc"}) {
    const auto k = key_from_text(text, KeyType::Auto);
    ASSERT_TRUE(k.has_value()) << text;
    EXPECT_EQ(k->kind, KeyValue::Kind::Text) << text;
    EXPECT_EQ(k->text.data(), text.data()) << "borrows, does not copy";
    EXPECT_EQ(k->text.size(), text.size());
  }
}

TEST(ShardMapKeyFromText, BigintTakesIntegersOnly) {
  EXPECT_EQ(key_from_text("-9223372036854775808", KeyType::Bigint).value().integer, kMin);
  EXPECT_EQ(key_from_text("+9223372036854775807", KeyType::Bigint).value().integer, kMax);
  for (std::string_view text : {"", "abc", " ", "1 2", "1.5", "9223372036854775808",
                                "-9223372036854775809", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"})
    EXPECT_FALSE(key_from_text(text, KeyType::Bigint).has_value()) << text;
}

// PostgreSQL's int8in skips whitespace around the integer: a CSV row `x, 5,y` stores 5.
TEST(ShardMapKeyFromText, BigintSkipsWhitespaceAroundTheIntegerAsPostgresDoes) {
  for (std::string_view text : {" 5", "5 ", "\t5\n", " \r\v\f+5  "}) {
    const auto k = key_from_text(text, KeyType::Bigint);
    ASSERT_TRUE(k.has_value()) << text;
    EXPECT_EQ(k->integer, 5) << text;
  }
  EXPECT_EQ(key_refusal(" 99999999999999999999", KeyType::Bigint), KeyRefusal::OutOfRange);
  EXPECT_EQ(key_refusal("-9223372036854775809", KeyType::Bigint), KeyRefusal::OutOfRange);
  EXPECT_EQ(key_refusal("5x", KeyType::Bigint), KeyRefusal::NotOfType);
}

// Under auto " 5" is 5 in a bigint column and " 5" in a text one: no key, rather than one
// of the two guesses (which would put the row where the other reads look for nothing).
TEST(ShardMapKeyFromText, AutoRefusesAnIntegerWithWhitespaceAroundIt) {
  for (std::string_view text : {" 5", "5 ", "\t-5", " +0 "}) {
    EXPECT_FALSE(key_from_text(text, KeyType::Auto).has_value()) << text;
    EXPECT_EQ(key_refusal(text, KeyType::Auto), KeyRefusal::PaddedInteger) << text;
  }
  EXPECT_EQ(key_from_text(" 5", KeyType::Text).value().text, " 5") << "text keeps it";
}

TEST(ShardMapKeyFromText, TextKeepsEveryValueAsWritten) {
  for (std::string_view text : {"042", "42", "", " x ", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}) {
    const auto k = key_from_text(text, KeyType::Text);
    ASSERT_TRUE(k.has_value()) << text;
    EXPECT_EQ(k->kind, KeyValue::Kind::Text);
    EXPECT_EQ(k->text, text);
  }
  const std::string with_nul("a\0b", 3);
  EXPECT_EQ(key_from_text(with_nul, KeyType::Text).value().text.size(), 3u);
}

TEST(ShardMapKeyFromText, UuidAcceptsPostgresInputForms) {
  const auto canonical_bytes = uuid_bytes("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  EXPECT_EQ(uuid_string(canonical_bytes), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  for (std::string_view text :
       {"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11"}) {
    const auto k = key_from_text(text, KeyType::Uuid);
    ASSERT_TRUE(k.has_value()) << text;
    EXPECT_EQ(k->kind, KeyValue::Kind::Uuid);
    EXPECT_EQ(k->uuid, canonical_bytes) << text;
  }
}

TEST(ShardMapKeyFromText, UuidRejectsWhatPostgresRejects) {
  for (std::string_view text : {
           "",
           "{}",
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",     // 31 digits
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",   // 33
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",    // not hex
           "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",    // hyphen inside a group of four
           "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",   // two hyphens
           "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",   // leading hyphen
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",   // trailing hyphen
           "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",   // unclosed brace
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",   // unopened brace
           "(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)",  // not braces
           " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",   // space
           "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
           "42",
       })
    EXPECT_FALSE(key_from_text(text, KeyType::Uuid).has_value()) << text;
}

// ---- key_from_binary ---------------------------------------------------------------------------

TEST(ShardMapKeyFromBinary, IntegersAreBigEndianOfTheirExactSize) {
  EXPECT_EQ(key_from_binary(be(0xFFFE, 2), 21, KeyType::Auto).value().integer, -2);
  EXPECT_EQ(key_from_binary(be(0x7FFF, 2), 21, KeyType::Auto).value().integer, 32767);
  EXPECT_EQ(key_from_binary(be(0x80000000, 4), 23, KeyType::Auto).value().integer, -2147483648);
  EXPECT_EQ(key_from_binary(be(0x01020304, 4), 23, KeyType::Bigint).value().integer, 0x01020304);
  EXPECT_EQ(key_from_binary(be(0x8000000000000000ULL, 8), 20, KeyType::Auto).value().integer, kMin);
  EXPECT_EQ(key_from_binary(be(0x0102030405060708ULL, 8), 20, KeyType::Bigint).value().integer,
            0x0102030405060708LL);
}

TEST(ShardMapKeyFromBinary, IntegersOfAnotherSizeAreMalformed) {
  for (std::uint32_t oid : {21u, 23u, 20u})
    for (int size : {0, 1, 2, 3, 4, 5, 8, 9}) {
      const bool right =
          (oid == 21 && size == 2) || (oid == 23 && size == 4) || (oid == 20 && size == 8);
      EXPECT_EQ(
          key_from_binary(std::string(static_cast<std::size_t>(size), '\1'), oid, KeyType::Auto)
              .has_value(),
          right)
          << "oid " << oid << " size " << size;
    }
}

TEST(ShardMapKeyFromBinary, IntegersAreNotTextOrUuidKeys) {
  EXPECT_FALSE(key_from_binary(be(42, 8), 20, KeyType::Text).has_value());
  EXPECT_FALSE(key_from_binary(be(42, 4), 23, KeyType::Uuid).has_value());
  EXPECT_FALSE(key_from_binary(numeric(0, kPos, 0, {42}), 1700, KeyType::Text).has_value());
}

TEST(ShardMapKeyFromBinary, NumericIntegralValues) {
  EXPECT_EQ(numeric_key(numeric(0, kPos, 0, {})), 0);
  EXPECT_EQ(numeric_key(numeric(0, kNeg, 0, {})), 0);
  EXPECT_EQ(numeric_key(numeric(0, kPos, 0, {42})), 42);
  EXPECT_EQ(numeric_key(numeric(1, kPos, 0, {1234, 5678})), 12345678);
  EXPECT_EQ(numeric_key(numeric(1, kNeg, 0, {1234, 5678})), -12345678);
  EXPECT_EQ(numeric_key(numeric(2, kPos, 0, {3})), 300000000);  // trailing zero digits left out
  EXPECT_EQ(numeric_key(numeric(0, kPos, 2, {5})), 5);          // 5.00
  EXPECT_EQ(numeric_key(numeric(0, kPos, 4, {5, 0})), 5);       // 5.0000, a zero digit kept
  EXPECT_EQ(numeric_key(numeric(4, kPos, 0, {922, 3372, 368, 5477, 5807})), kMax);
  EXPECT_EQ(numeric_key(numeric(4, kNeg, 0, {922, 3372, 368, 5477, 5808})), kMin);
  EXPECT_EQ(numeric_key(numeric(0, kPos, 0, {7}), KeyType::Auto), 7);
}

TEST(ShardMapKeyFromBinary, NumericNonIntegralOrSpecialIsNotAKey) {
  EXPECT_FALSE(numeric_key(numeric(0, kPos, 1, {1, 5000})));  // 1.5
  EXPECT_FALSE(numeric_key(numeric(-1, kPos, 4, {1})));       // 0.0001
  EXPECT_FALSE(numeric_key(numeric(0, 0xC000, 0, {})));       // NaN
  EXPECT_FALSE(numeric_key(numeric(0, 0xD000, 0, {})));       // Infinity
  EXPECT_FALSE(numeric_key(numeric(0, 0xF000, 0, {})));       // -Infinity
}

TEST(ShardMapKeyFromBinary, NumericOutsideInt64IsNotAKey) {
  EXPECT_FALSE(numeric_key(numeric(4, kPos, 0, {922, 3372, 368, 5477, 5808})));  // INT64_MAX + 1
  EXPECT_FALSE(numeric_key(numeric(4, kNeg, 0, {922, 3372, 368, 5477, 5809})));  // INT64_MIN - 1
  EXPECT_FALSE(numeric_key(numeric(5, kPos, 0, {1})));                           // 10^20
  EXPECT_FALSE(numeric_key(numeric(32767, kPos, 0, {1})));
}

TEST(ShardMapKeyFromBinary, NumericMalformedIsNotAKey) {
  std::string short_header = numeric(0, kPos, 0, {}).substr(0, 6);
  EXPECT_FALSE(numeric_key(short_header));
  std::string missing_digit = numeric(1, kPos, 0, {1, 2});
  missing_digit.pop_back();
  missing_digit.pop_back();
  EXPECT_FALSE(numeric_key(missing_digit));
  EXPECT_FALSE(numeric_key(numeric(0, kPos, 0, {1}) + "xx"));
  EXPECT_FALSE(numeric_key(numeric(0, kPos, 0, {10000})));   // digit out of base 10000
  EXPECT_FALSE(numeric_key(numeric(0, 0x1234, 0, {1})));     // no such sign
  EXPECT_FALSE(numeric_key(numeric(0, kPos, 0x4000, {1})));  // scale beyond NUMERIC_DSCALE_MASK
}

TEST(ShardMapKeyFromBinary, TextTypesReadAsText) {
  for (std::uint32_t oid : {25u, 1043u, 1042u, 19u}) {
    const auto auto_int = key_from_binary("42", oid, KeyType::Auto);
    ASSERT_TRUE(auto_int.has_value()) << oid;
    EXPECT_EQ(auto_int->kind, KeyValue::Kind::Integer);
    EXPECT_EQ(auto_int->integer, 42);
    EXPECT_EQ(key_from_binary("42", oid, KeyType::Text).value().text, "42");
    EXPECT_EQ(key_from_binary("dev-1", oid, KeyType::Auto).value().text, "dev-1");
    EXPECT_FALSE(key_from_binary("dev-1", oid, KeyType::Bigint).has_value());
    const auto u = key_from_binary("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", oid, KeyType::Uuid);
    ASSERT_TRUE(u.has_value());
    EXPECT_EQ(u->uuid, uuid_bytes("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
  }
}

TEST(ShardMapKeyFromBinary, UuidIsSixteenBytes) {
  const auto expected = uuid_bytes("00112233-4455-6677-8899-aabbccddeeff");
  const std::string bytes(reinterpret_cast<const char*>(expected.data()), expected.size());
  for (KeyType type : {KeyType::Uuid, KeyType::Auto}) {
    const auto k = key_from_binary(bytes, 2950, type);
    ASSERT_TRUE(k.has_value());
    EXPECT_EQ(k->kind, KeyValue::Kind::Uuid);
    EXPECT_EQ(k->uuid, expected);
  }
  EXPECT_FALSE(key_from_binary(bytes.substr(0, 15), 2950, KeyType::Uuid).has_value());
  EXPECT_FALSE(key_from_binary(bytes + "x", 2950, KeyType::Uuid).has_value());
  EXPECT_FALSE(key_from_binary(bytes, 2950, KeyType::Bigint).has_value());
  EXPECT_FALSE(key_from_binary(bytes, 2950, KeyType::Text).has_value());
}

TEST(ShardMapKeyFromBinary, OtherTypesAreNotKeys) {
  for (std::uint32_t oid : {0u, 16u, 700u, 701u, 17u, 1082u, 114u})
    EXPECT_FALSE(key_from_binary(be(42, 8), oid, KeyType::Auto).has_value()) << oid;
}

// ---- hashes, where the vectors do not reach ----------------------------------------------------

TEST(ShardMapHashes, IntegerHashesAreThoseOfItsDecimalOrBytes) {
  const auto as_int = KeyValue::of_integer(-42);
  EXPECT_EQ(md5_mod(as_int, 1000003), md5_mod(KeyValue::of_text("-42"), 1000003));
  EXPECT_EQ(md5_mod(KeyValue::of_integer(kMin), 999983),
            md5_mod(KeyValue::of_text("-9223372036854775808"), 999983));
  const std::string le("\xd6\xff\xff\xff\xff\xff\xff\xff", 8);  // -42, little-endian
  EXPECT_EQ(xxh3_key_hash(as_int), xxh3_key_hash(KeyValue::of_text(le)));
}

TEST(ShardMapHashes, UuidHashesItsLowerCaseText) {
  const auto u = key_from_text("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", KeyType::Uuid);
  ASSERT_TRUE(u.has_value());
  const auto text = KeyValue::of_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  EXPECT_EQ(xxh3_key_hash(*u), xxh3_key_hash(text));
  EXPECT_EQ(md5_mod(*u, 4294967295u), md5_mod(text, 4294967295u));
  EXPECT_NE(pg_partition_hash(*u), pg_partition_hash(text)) << "the uuid operator class";
}

TEST(ShardMapHashes, Md5ModOfOneIsZero) {
  EXPECT_EQ(md5_mod(KeyValue::of_text("x"), 1), 0u);
  EXPECT_EQ(md5_mod(KeyValue::of_text("x"), 0), 0u);
}

// ---- ShardMap ----------------------------------------------------------------------------------

TEST(ShardMap, DefaultIsOneShard) {
  const ShardMap map;
  EXPECT_EQ(map.shard_count(), 1);
  for (const auto& k :
       {KeyValue::of_integer(1), KeyValue::of_integer(kMin), KeyValue::of_text("")}) {
    EXPECT_EQ(map.shard_of(k), 0);
    EXPECT_EQ(map.bucket_of(k), 0u);
  }
  EXPECT_EQ(map.buckets_of(0), 1u);
  EXPECT_EQ(map.buckets_of(1), 0u);
}

TEST(ShardMap, Xxh3BucketOwnerDecidesTheShard) {
  const std::vector<std::uint16_t> owners{0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2};
  const ShardMap map(ShardHash::Xxh3, KeyType::Auto, 3, owners);
  EXPECT_EQ(map.hash(), ShardHash::Xxh3);
  EXPECT_EQ(map.key_type(), KeyType::Auto);
  EXPECT_EQ(map.shard_count(), 3);
  std::set<std::uint16_t> seen;
  for (std::int64_t i = -500; i < 500; ++i) {
    const auto k = KeyValue::of_integer(i);
    const std::uint32_t bucket = map.bucket_of(k);
    EXPECT_EQ(bucket, xxh3_key_hash(k) % owners.size());
    EXPECT_EQ(map.shard_of(k), owners[bucket]);
    seen.insert(map.shard_of(k));
  }
  EXPECT_EQ(seen, (std::set<std::uint16_t>{0, 1, 2}));
}

TEST(ShardMap, RemainderSchemesUseTheShardCountAsModulus) {
  const ShardMap md5(ShardHash::Md5Mod, KeyType::Text, 5, {});
  const ShardMap pg(ShardHash::PgPartition, KeyType::Text, 5, {});
  for (std::string_view t : {"a", "b", "device-1", "device-2", ""}) {
    const auto k = KeyValue::of_text(t);
    EXPECT_EQ(md5.shard_of(k), md5_mod(k, 5));
    EXPECT_EQ(pg.shard_of(k), pg_partition_hash(k) % 5);
    EXPECT_EQ(pg.bucket_of(k), pg.shard_of(k));
  }
}

TEST(ShardMap, InvalidConfigurationThrows) {
  EXPECT_THROW(ShardMap(ShardHash::Xxh3, KeyType::Auto, 2, {0, 1, 2}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::Xxh3, KeyType::Auto, 2, {}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::Xxh3, KeyType::Auto, 0, {0}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::Md5Mod, KeyType::Auto, 0, {}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::PgPartition, KeyType::Auto, -1, {}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::Md5Mod, KeyType::Auto, 2, {0, 1}), std::invalid_argument);
  EXPECT_THROW(ShardMap(ShardHash::PgPartition, KeyType::Auto, 65537, {}), std::invalid_argument);
  EXPECT_NO_THROW(ShardMap(ShardHash::Xxh3, KeyType::Auto, 2, {1, 1}));
}

TEST(ShardMap, BucketsOfCountsOwnedBuckets) {
  const ShardMap map(ShardHash::Xxh3, KeyType::Bigint, 4, {0, 3, 3, 1, 3, 0});
  EXPECT_EQ(map.buckets_of(0), 2u);
  EXPECT_EQ(map.buckets_of(1), 1u);
  EXPECT_EQ(map.buckets_of(2), 0u);
  EXPECT_EQ(map.buckets_of(3), 3u);
  EXPECT_EQ(map.buckets_of(4), 0u);
  const ShardMap md5(ShardHash::Md5Mod, KeyType::Bigint, 3, {});
  EXPECT_EQ(md5.buckets_of(0), 1u);
  EXPECT_EQ(md5.buckets_of(2), 1u);
  EXPECT_EQ(md5.buckets_of(3), 0u);
}

}  // namespace
}  // namespace pgvalve::routing
