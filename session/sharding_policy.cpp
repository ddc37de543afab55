#include "session/sharding_policy.h"

#include <cctype>

namespace pgvalve::session {

namespace {

std::string folded(std::string name) {
  for (char& c : name)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

routing::KeyType key_type_of(config::ShardKeyType type) {
  switch (type) {
    case config::ShardKeyType::Auto:
      return routing::KeyType::Auto;
    case config::ShardKeyType::Bigint:
      return routing::KeyType::Bigint;
    case config::ShardKeyType::Text:
      return routing::KeyType::Text;
    case config::ShardKeyType::Uuid:
      return routing::KeyType::Uuid;
  }
  return routing::KeyType::Auto;
}

}  // namespace

routing::ShardingPolicy sharding_policy_of(const config::Database& database) {
  const config::Sharding& s = *database.sharding;
  routing::ShardingPolicy policy;
  policy.key = folded(s.key);
  for (const std::string& t : s.tables)
    policy.tables.push_back(folded(t));
  for (const std::string& t : s.reference_tables)
    policy.reference_tables.push_back(folded(t));
  const int shards = static_cast<int>(database.shards.size());
  for (const config::Shard& shard : database.shards)
    policy.shard_names.push_back(shard.name);
  std::vector<std::uint16_t> owner;
  routing::ShardHash hash = routing::ShardHash::Xxh3;
  switch (s.hash) {
    case config::HashFunction::Xxh3:
      hash = routing::ShardHash::Xxh3;
      owner.assign(static_cast<std::size_t>(s.buckets), 0);
      for (int i = 0; i < shards; ++i) {
        const auto it = s.bucket_map.find(database.shards[static_cast<std::size_t>(i)].name);
        if (it == s.bucket_map.end()) continue;
        for (const config::BucketRange& r : it->second) {
          for (int b = r.first; b <= r.last && b < s.buckets; ++b) {
            owner[static_cast<std::size_t>(b)] = static_cast<std::uint16_t>(i);
          }
        }
      }
      break;
    case config::HashFunction::Md5Mod:
      hash = routing::ShardHash::Md5Mod;
      break;
    case config::HashFunction::PgPartition:
      hash = routing::ShardHash::PgPartition;
      break;
  }
  policy.map = routing::ShardMap(hash, key_type_of(s.key_type), shards, std::move(owner));
  return policy;
}

}  // namespace pgvalve::session
