// MD5_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, but EVP_Digest allocates a
// context per call (and OpenSSL 3's one-shot helpers go through EVP); these keep it on the stack.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "routing/shard_map.h"

#include <openssl/md5.h>
#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "protocol/binary_values.h"

namespace pgvalve::routing {
namespace {

constexpr std::uint32_t kOidInt8 = 20;
constexpr std::uint32_t kOidInt2 = 21;
constexpr std::uint32_t kOidInt4 = 23;
constexpr std::uint32_t kOidName = 19;
constexpr std::uint32_t kOidText = 25;
constexpr std::uint32_t kOidBpchar = 1042;
constexpr std::uint32_t kOidVarchar = 1043;
constexpr std::uint32_t kOidNumeric = 1700;
constexpr std::uint32_t kOidUuid = 2950;

std::uint8_t byte_at(std::string_view s, std::size_t i) {
  return static_cast<std::uint8_t>(s[i]);
}

// An optional sign and one or more ASCII digits, within int64.
std::optional<std::int64_t> parse_int64(std::string_view s) {
  std::size_t i = 0;
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    i = 1;
  }
  if (i == s.size()) return std::nullopt;
  const std::uint64_t limit = negative ? std::uint64_t{1} << 63 : (std::uint64_t{1} << 63) - 1;
  std::uint64_t magnitude = 0;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (magnitude > (limit - digit) / 10) return std::nullopt;
    magnitude = magnitude * 10 + digit;
  }
  // Negating in unsigned arithmetic reaches INT64_MIN, which has no positive counterpart.
  return static_cast<std::int64_t>(negative ? ~magnitude + 1 : magnitude);
}

// PostgreSQL's isspace() in int8in: the C locale's whitespace.
bool ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view trim_space(std::string_view s) {
  while (!s.empty() && ascii_space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && ascii_space(s.back()))
    s.remove_suffix(1);
  return s;
}

// An optional sign and one or more ASCII digits, of any size.
bool integer_digits(std::string_view s) {
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.remove_prefix(1);
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// string_to_uuid() of PostgreSQL's uuid.c: "{...}" optional, 32 hex digits, at most one hyphen
// after each group of four digits but the last.
std::optional<std::array<std::uint8_t, 16>> parse_uuid(std::string_view s) {
  std::size_t i = 0;
  const bool braces = !s.empty() && s[0] == '{';
  if (braces) i = 1;
  std::array<std::uint8_t, 16> out{};
  for (std::size_t b = 0; b < out.size(); ++b) {
    if (i + 2 > s.size()) return std::nullopt;
    const int hi = hex_value(s[i]);
    const int lo = hex_value(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[b] = static_cast<std::uint8_t>(hi << 4 | lo);
    i += 2;
    if (i < s.size() && s[i] == '-' && b % 2 == 1 && b < out.size() - 1) ++i;
  }
  if (braces) {
    if (i >= s.size() || s[i] != '}') return std::nullopt;
    ++i;
  }
  if (i != s.size()) return std::nullopt;
  return out;
}

using UuidText = std::array<char, 36>;

UuidText uuid_text(const std::array<std::uint8_t, 16>& u) {
  static constexpr char kHex[] = "0123456789abcdef";
  UuidText out{};
  std::size_t o = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = kHex[u[i] >> 4];
    out[o++] = kHex[u[i] & 0x0F];
  }
  return out;
}

// numeric_send's layout: ndigits, weight, sign, dscale (16 bits each, big-endian), then ndigits
// base-10000 digits, the first worth 10000^weight. Only integral values within int64 are keys.
std::optional<std::int64_t> numeric_to_int64(std::string_view bytes) {
  constexpr std::uint16_t kPositive = 0x0000;
  constexpr std::uint16_t kNegative = 0x4000;
  constexpr std::uint16_t kDscaleMask = 0x3FFF;
  if (bytes.size() < 8) return std::nullopt;
  const auto ndigits = static_cast<std::size_t>(protocol::read_big_endian(bytes.substr(0, 2)));
  const auto weight = static_cast<std::int16_t>(protocol::read_big_endian(bytes.substr(2, 2)));
  const auto sign = static_cast<std::uint16_t>(protocol::read_big_endian(bytes.substr(4, 2)));
  const auto dscale = static_cast<std::uint16_t>(protocol::read_big_endian(bytes.substr(6, 2)));
  if (bytes.size() != 8 + 2 * ndigits) return std::nullopt;
  if (sign != kPositive && sign != kNegative) return std::nullopt;  // NaN, infinities, garbage
  if ((dscale & ~kDscaleMask) != 0) return std::nullopt;

  const std::uint64_t limit =
      sign == kNegative ? std::uint64_t{1} << 63 : (std::uint64_t{1} << 63) - 1;
  std::uint64_t magnitude = 0;
  std::int32_t exponent = weight;  // of the digit about to be read
  for (std::size_t i = 0; i < ndigits; ++i, --exponent) {
    const auto digit =
        static_cast<std::uint64_t>(protocol::read_big_endian(bytes.substr(8 + 2 * i, 2)));
    if (digit > 9999) return std::nullopt;
    if (exponent < 0) {
      if (digit != 0) return std::nullopt;
      continue;
    }
    if (magnitude > (limit - digit) / 10000) return std::nullopt;
    magnitude = magnitude * 10000 + digit;
  }
  // Digits left out after the last one are zeros worth 10000^exponent .. 10000^0.
  for (; exponent >= 0 && magnitude != 0; --exponent) {
    if (magnitude > limit / 10000) return std::nullopt;
    magnitude *= 10000;
  }
  return static_cast<std::int64_t>(sign == kNegative ? ~magnitude + 1 : magnitude);
}

// ---- PostgreSQL 15 src/common/hashfn.c (Bob Jenkins' lookup3), little-endian byte order -----

constexpr std::uint32_t rot(std::uint32_t x, int k) {
  return x << k | x >> (32 - k);
}

void mix(std::uint32_t& a, std::uint32_t& b, std::uint32_t& c) {
  a -= c;
  a ^= rot(c, 4);
  c += b;
  b -= a;
  b ^= rot(a, 6);
  a += c;
  c -= b;
  c ^= rot(b, 8);
  b += a;
  a -= c;
  a ^= rot(c, 16);
  c += b;
  b -= a;
  b ^= rot(a, 19);
  a += c;
  c -= b;
  c ^= rot(b, 4);
  b += a;
}

void final_mix(std::uint32_t& a, std::uint32_t& b, std::uint32_t& c) {
  c ^= b;
  c -= rot(b, 14);
  a ^= c;
  a -= rot(c, 11);
  b ^= a;
  b -= rot(a, 25);
  c ^= b;
  c -= rot(b, 16);
  a ^= c;
  a -= rot(c, 4);
  b ^= a;
  b -= rot(a, 14);
  c ^= b;
  c -= rot(b, 24);
}

std::uint32_t le32(const std::uint8_t* k) {
  return std::uint32_t{k[0]} | std::uint32_t{k[1]} << 8 | std::uint32_t{k[2]} << 16 |
         std::uint32_t{k[3]} << 24;
}

// hash_bytes_extended (hash_any_extended). PostgreSQL's aligned and unaligned paths give the
// same result on a little-endian machine; this is the unaligned one.
std::uint64_t hash_bytes_extended(const std::uint8_t* k, std::uint32_t len, std::uint64_t seed) {
  std::uint32_t a = 0x9e3779b9 + len + 3923095;
  std::uint32_t b = a;
  std::uint32_t c = a;
  if (seed != 0) {
    a += static_cast<std::uint32_t>(seed >> 32);
    b += static_cast<std::uint32_t>(seed);
    mix(a, b, c);
  }
  while (len >= 12) {
    a += le32(k);
    b += le32(k + 4);
    c += le32(k + 8);
    mix(a, b, c);
    k += 12;
    len -= 12;
  }
  // The lowest byte of c is reserved for the length: the tail skips it.
  switch (len) {
    case 11:
      c += std::uint32_t{k[10]} << 24;
      [[fallthrough]];
    case 10:
      c += std::uint32_t{k[9]} << 16;
      [[fallthrough]];
    case 9:
      c += std::uint32_t{k[8]} << 8;
      [[fallthrough]];
    case 8:
      b += std::uint32_t{k[7]} << 24;
      [[fallthrough]];
    case 7:
      b += std::uint32_t{k[6]} << 16;
      [[fallthrough]];
    case 6:
      b += std::uint32_t{k[5]} << 8;
      [[fallthrough]];
    case 5:
      b += k[4];
      [[fallthrough]];
    case 4:
      a += std::uint32_t{k[3]} << 24;
      [[fallthrough]];
    case 3:
      a += std::uint32_t{k[2]} << 16;
      [[fallthrough]];
    case 2:
      a += std::uint32_t{k[1]} << 8;
      [[fallthrough]];
    case 1:
      a += k[0];
      break;
    default:
      break;
  }
  final_mix(a, b, c);
  return std::uint64_t{b} << 32 | c;
}

// hash_bytes_uint32_extended (hash_uint32_extended).
std::uint64_t hash_uint32_extended(std::uint32_t k, std::uint64_t seed) {
  std::uint32_t a = 0x9e3779b9 + 4 + 3923095;
  std::uint32_t b = a;
  std::uint32_t c = a;
  if (seed != 0) {
    a += static_cast<std::uint32_t>(seed >> 32);
    b += static_cast<std::uint32_t>(seed);
    mix(a, b, c);
  }
  a += k;
  final_mix(a, b, c);
  return std::uint64_t{b} << 32 | c;
}

// hashint8extended: folds the high half in so that int2/int4/int8 of one value hash alike.
std::uint64_t hashint8extended(std::int64_t val, std::uint64_t seed) {
  auto lohalf = static_cast<std::uint32_t>(val);
  const auto hihalf = static_cast<std::uint32_t>(static_cast<std::uint64_t>(val) >> 32);
  lohalf ^= val >= 0 ? hihalf : ~hihalf;
  return hash_uint32_extended(lohalf, seed);
}

constexpr std::uint64_t kHashPartitionSeed = 0x7A5B22367996DCFDULL;  // catalog/partition.h

// common/hashfn.h. With a = 0 (one key column) it adds the constant: the raw partition hash is
// the support function's value + 0x49a0f4dd15e5a8e3.
constexpr std::uint64_t hash_combine64(std::uint64_t a, std::uint64_t b) {
  a ^= b + 0x49a0f4dd15e5a8e3ULL + (a << 54) + (a >> 7);
  return a;
}

// Shared by the hashes whose canonical form of a key is bytes: the integer's little-endian
// bytes, the text, the uuid's text. Returns what `fn` returns on them.
template <typename Fn>
auto with_canonical_bytes(const KeyValue& key, bool integer_as_decimal, Fn fn) {
  switch (key.kind) {
    case KeyValue::Kind::Integer: {
      if (integer_as_decimal) {
        char buf[20];  // "-9223372036854775808"
        const auto end = std::to_chars(buf, buf + sizeof buf, key.integer).ptr;
        return fn(std::string_view(buf, static_cast<std::size_t>(end - buf)));
      }
      char le[8];
      const auto u = static_cast<std::uint64_t>(key.integer);
      for (int i = 0; i < 8; ++i)
        le[i] = static_cast<char>(u >> (8 * i));
      return fn(std::string_view(le, sizeof le));
    }
    case KeyValue::Kind::Text:
      return fn(key.text);
    case KeyValue::Kind::Uuid:
      break;
  }
  const UuidText t = uuid_text(key.uuid);
  return fn(std::string_view(t.data(), t.size()));
}

}  // namespace

std::string_view key_type_name(KeyType type) {
  switch (type) {
    case KeyType::Auto:
      return "auto";
    case KeyType::Bigint:
      return "bigint";
    case KeyType::Text:
      return "text";
    case KeyType::Uuid:
      return "uuid";
  }
  return "?";
}

std::optional<KeyValue> key_from_text(std::string_view text, KeyType type) {
  switch (type) {
    case KeyType::Auto:
      if (auto v = parse_int64(text)) return KeyValue::of_integer(*v);
      if (!text.empty() && (ascii_space(text.front()) || ascii_space(text.back())) &&
          parse_int64(trim_space(text))) {
        return std::nullopt;  // " 5": 5 in a bigint column, " 5" in a text one
      }
      return KeyValue::of_text(text);
    case KeyType::Bigint:
      if (auto v = parse_int64(trim_space(text))) return KeyValue::of_integer(*v);
      return std::nullopt;
    case KeyType::Text:
      return KeyValue::of_text(text);
    case KeyType::Uuid:
      if (auto u = parse_uuid(text)) {
        KeyValue k;
        k.kind = KeyValue::Kind::Uuid;
        k.uuid = *u;
        return k;
      }
      return std::nullopt;
  }
  return std::nullopt;
}

KeyRefusal key_refusal(std::string_view text, KeyType type) {
  const std::string_view trimmed = trim_space(text);
  if (!integer_digits(trimmed)) return KeyRefusal::NotOfType;
  if (type == KeyType::Bigint) return KeyRefusal::OutOfRange;
  if (type == KeyType::Auto && trimmed.size() != text.size()) return KeyRefusal::PaddedInteger;
  return KeyRefusal::NotOfType;
}

std::optional<KeyValue> key_from_binary(std::string_view bytes, std::uint32_t type_oid,
                                        KeyType type) {
  std::optional<std::int64_t> integer;
  switch (type_oid) {
    case kOidInt2:
    case kOidInt4:
    case kOidInt8: {
      const std::size_t size = type_oid == kOidInt2 ? 2 : type_oid == kOidInt4 ? 4 : 8;
      if (bytes.size() != size) return std::nullopt;
      integer = protocol::binary_integer(bytes);
      break;
    }
    case kOidNumeric:
      integer = numeric_to_int64(bytes);
      if (!integer) return std::nullopt;
      break;
    case kOidText:
    case kOidVarchar:
    case kOidBpchar:
    case kOidName:
      return key_from_text(bytes, type);
    case 0:
      // The client left the type to the server (asyncpg, pgx), which took it from the key
      // column: of sharding.key_type. Under `auto` the bytes alone do not say which type.
      if (type == KeyType::Text) return key_from_text(bytes, type);
      if (type == KeyType::Uuid) return key_from_binary(bytes, kOidUuid, type);
      if (type != KeyType::Bigint) return std::nullopt;
      integer = protocol::binary_integer(bytes);
      if (!integer) return std::nullopt;
      break;
    case kOidUuid: {
      if (bytes.size() != 16 || (type != KeyType::Auto && type != KeyType::Uuid))
        return std::nullopt;
      KeyValue k;
      k.kind = KeyValue::Kind::Uuid;
      for (std::size_t i = 0; i < 16; ++i)
        k.uuid[i] = byte_at(bytes, i);
      return k;
    }
    default:
      return std::nullopt;
  }
  // A binary integer has no text of its own for a Text key to borrow, and is never a uuid.
  if (type != KeyType::Auto && type != KeyType::Bigint) return std::nullopt;
  return KeyValue::of_integer(*integer);
}

std::uint64_t xxh3_key_hash(const KeyValue& key) {
  return with_canonical_bytes(key, false, [](std::string_view b) -> std::uint64_t {
    return XXH3_64bits(b.data(), b.size());
  });
}

std::uint32_t md5_mod(const KeyValue& key, std::uint32_t modulus) {
  if (modulus == 0) return 0;
  return with_canonical_bytes(key, true, [modulus](std::string_view s) -> std::uint32_t {
    MD5_CTX ctx;
    MD5_Init(&ctx);
    MD5_Update(&ctx, s.data(), s.size());
    unsigned char digest[MD5_DIGEST_LENGTH];
    MD5_Final(digest, &ctx);
    std::uint64_t r = 0;
    for (unsigned char d : digest)
      r = (r << 8 | d) % modulus;
    return static_cast<std::uint32_t>(r);
  });
}

std::uint64_t pg_partition_hash(const KeyValue& key) {
  std::uint64_t h = 0;
  switch (key.kind) {
    case KeyValue::Kind::Integer:
      h = hashint8extended(key.integer, kHashPartitionSeed);
      break;
    case KeyValue::Kind::Text:
      h = hash_bytes_extended(reinterpret_cast<const std::uint8_t*>(key.text.data()),
                              static_cast<std::uint32_t>(key.text.size()), kHashPartitionSeed);
      break;
    case KeyValue::Kind::Uuid:
      h = hash_bytes_extended(key.uuid.data(), key.uuid.size(), kHashPartitionSeed);
      break;
  }
  return hash_combine64(0, h);
}

ShardMap::ShardMap(ShardHash hash, KeyType type, int shard_count,
                   std::vector<std::uint16_t> bucket_owner)
    : hash_(hash), type_(type), shard_count_(shard_count), bucket_owner_(std::move(bucket_owner)) {
  constexpr int kMaxShards = std::numeric_limits<std::uint16_t>::max() + 1;
  if (shard_count_ < 1 || shard_count_ > kMaxShards)
    throw std::invalid_argument("shard count " + std::to_string(shard_count_) +
                                " is not within 1.." + std::to_string(kMaxShards));
  if (hash_ == ShardHash::Xxh3) {
    if (bucket_owner_.empty()) throw std::invalid_argument("xxh3 needs at least one bucket");
    for (std::size_t b = 0; b < bucket_owner_.size(); ++b) {
      if (bucket_owner_[b] >= shard_count_)
        throw std::invalid_argument("bucket " + std::to_string(b) + " is owned by shard " +
                                    std::to_string(bucket_owner_[b]) + " of " +
                                    std::to_string(shard_count_));
    }
  } else if (!bucket_owner_.empty()) {
    throw std::invalid_argument("only xxh3 has buckets");
  }
}

std::uint32_t ShardMap::bucket_of(const KeyValue& key) const {
  const auto shards = static_cast<std::uint32_t>(shard_count_);
  switch (hash_) {
    case ShardHash::Xxh3:
      if (bucket_owner_.empty()) return 0;  // the default map: one bucket
      return static_cast<std::uint32_t>(xxh3_key_hash(key) % bucket_owner_.size());
    case ShardHash::Md5Mod:
      return md5_mod(key, shards);
    case ShardHash::PgPartition:
      return static_cast<std::uint32_t>(pg_partition_hash(key) % shards);
  }
  return 0;
}

std::uint16_t ShardMap::shard_of(const KeyValue& key) const {
  if (shard_count_ == 1) return 0;
  const std::uint32_t bucket = bucket_of(key);
  if (hash_ == ShardHash::Xxh3) return bucket_owner_[bucket];
  return static_cast<std::uint16_t>(bucket);
}

std::uint32_t ShardMap::buckets_of(std::uint16_t shard) const {
  if (shard >= shard_count_) return 0;
  if (hash_ != ShardHash::Xxh3 || bucket_owner_.empty()) return 1;
  std::uint32_t n = 0;
  for (std::uint16_t owner : bucket_owner_)
    n += owner == shard ? 1 : 0;
  return n;
}

}  // namespace pgvalve::routing
