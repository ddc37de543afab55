// Which shard owns a shard-key value (sharding.hash, DESIGN.md §4.4). Pure: no configuration
// reading (the session's owner maps sharding.* to a ShardMap), no allocation per lookup.
//
// The mappings are frozen: rows placed by them stay where they are only while they do not
// change. Test vectors (tests/vectors/shard_hash.json) pin every one, and are checked against
// the outside schemes they promise to match: Python's hashlib (md5_mod), python3-xxhash (xxh3)
// and PostgreSQL's satisfies_hash_partition() (pg_partition).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace pgvalve::routing {

// sharding.key_type: how a key value is read.
//  - Auto: text that is an integer (an optional sign and ASCII digits, within int64) is an
//    integer, anything else is text. The DESIGN.md rule; right for bigint and text ids alike,
//    except text ids that look like integers under pg_partition (use Text). An integer with
//    whitespace around it (" 5") is no key value: a bigint column reads it as 5, a text column
//    as written, and Auto cannot tell which.
//  - Bigint: integers only, with whitespace around them skipped as PostgreSQL's int8in skips
//    it; anything else is not a key value.
//  - Text: every value is text, as written ('042' and 42 are "042" and "42").
//  - Uuid: what PostgreSQL's uuid_in accepts: 32 hex digits in either case, at most one hyphen
//    after each group of four, optionally in braces; anything else is not a key value.
enum class KeyType : std::uint8_t { Auto, Bigint, Text, Uuid };
// As sharding.key_type spells it, for messages.
std::string_view key_type_name(KeyType type);

// One shard-key value. Borrows its text: valid while the bytes it was read from are.
struct KeyValue {
  enum class Kind : std::uint8_t { Integer, Text, Uuid };
  Kind kind = Kind::Integer;
  std::int64_t integer = 0;             // Integer
  std::string_view text;                // Text
  std::array<std::uint8_t, 16> uuid{};  // Uuid

  static KeyValue of_integer(std::int64_t v) {
    KeyValue k;
    k.integer = v;
    return k;
  }
  static KeyValue of_text(std::string_view t) {
    KeyValue k;
    k.kind = Kind::Text;
    k.text = t;
    return k;
  }
};

// A key from its text form: the value of a SQL literal (quotes removed, '' undone), a hint, a
// SET pgvalve.device_id value, a text-format Bind parameter, a COPY field. nullopt: not a value
// of `type`.
std::optional<KeyValue> key_from_text(std::string_view text, KeyType type);

// Why key_from_text(text, type) found no key, for the client's error (not on the hot path).
//  - OutOfRange: an integer beyond int64 (Bigint; PostgreSQL's 22003);
//  - PaddedInteger: an integer with whitespace around it (Auto);
//  - NotOfType: anything else.
enum class KeyRefusal : std::uint8_t { NotOfType, OutOfRange, PaddedInteger };
KeyRefusal key_refusal(std::string_view text, KeyType type);

// A key from a binary-format Bind parameter whose type is `type_oid` (int2 21, int4 23, int8 20,
// numeric 1700 with an integral value, text 25, varchar 1043, bpchar 1042, name 19, uuid 2950).
// The text types are read as key_from_text(bytes, type). An integer is a key for Auto and Bigint
// only (a Text key would need its decimal text, which there is none to borrow), a uuid for Auto
// and Uuid only. Type 0 (unspecified: the server took it from the key column) is read as `type`
// says (int2/int4/int8 by size for Bigint), and is no key for Auto. nullopt: another type, a
// malformed value (a size other than the type's, numeric NaN/infinity/fraction/beyond int64),
// or not a value of `type`.
std::optional<KeyValue> key_from_binary(std::string_view bytes, std::uint32_t type_oid,
                                        KeyType type);

// sharding.hash = xxh3: XXH3_64bits of the canonical key bytes: an integer as signed 64-bit
// little-endian, text as its bytes, a uuid as its 36-character lower-case hyphenated text.
std::uint64_t xxh3_key_hash(const KeyValue& key);

// sharding.hash = md5_mod, the app-side scheme: int(md5(str(key)).hexdigest(), 16) % modulus,
// where str() of an integer is its decimal form and of a uuid its lower-case hyphenated text.
// A modulus of 0 gives 0.
std::uint32_t md5_mod(const KeyValue& key, std::uint32_t modulus);

// sharding.hash = pg_partition: the row hash PostgreSQL computes for a one-column
// PARTITION BY HASH key (compute_partition_hash_value with HASH_PARTITION_SEED): an integer
// with the int8 (= int2/int4 for their values) operator class, text with the text one
// (deterministic collation), a uuid with the uuid one. The row goes to the partition with
// remainder hash % modulus.
std::uint64_t pg_partition_hash(const KeyValue& key);

enum class ShardHash : std::uint8_t { Xxh3, Md5Mod, PgPartition };

class ShardMap {
 public:
  ShardMap() = default;  // one shard: every key is shard 0
  // Xxh3: `bucket_owner[b]` is the shard owning bucket b (its size is sharding.buckets, each
  // entry < shard_count). Md5Mod / PgPartition: `bucket_owner` is empty; the shard is the
  // hash modulo shard_count (shard i = remainder i). Throws std::invalid_argument otherwise, or
  // when shard_count is not within 1..65536.
  ShardMap(ShardHash hash, KeyType type, int shard_count, std::vector<std::uint16_t> bucket_owner);

  std::uint16_t shard_of(const KeyValue& key) const;
  // The bucket of `key` (xxh3), or the remainder (md5_mod, pg_partition); for SHOW SHARDS
  // and tests.
  std::uint32_t bucket_of(const KeyValue& key) const;

  ShardHash hash() const { return hash_; }
  KeyType key_type() const { return type_; }
  int shard_count() const { return shard_count_; }
  // Buckets a shard owns (xxh3), 1 per shard otherwise.
  std::uint32_t buckets_of(std::uint16_t shard) const;

 private:
  ShardHash hash_ = ShardHash::Xxh3;
  KeyType type_ = KeyType::Auto;
  int shard_count_ = 1;
  std::vector<std::uint16_t> bucket_owner_;
};

}  // namespace pgvalve::routing
