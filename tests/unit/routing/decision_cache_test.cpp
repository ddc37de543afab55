#include "routing/decision_cache.h"

#include <gtest/gtest.h>

#include <list>
#include <unordered_map>

#include "routing/fingerprint.h"

namespace pgvalve::routing {
namespace {

const std::vector<std::string> kWriteFunctions = {"nextval", "setval"};

StatementAccess access_with_detail(std::string_view detail) {
  StatementAccess a;
  a.parsed = true;
  a.reason = AccessReason::UnknownFunction;
  a.set_detail(detail);
  return a;
}

TEST(DecisionCache, HitAfterInsert) {
  DecisionCache cache(8);
  EXPECT_EQ(cache.lookup(42), nullptr);
  cache.insert(42, access_with_detail("f"));
  const StatementAccess* hit = cache.lookup(42);
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->detail(), "f");
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.stats().hits, 1u);
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().evictions, 0u);
}

TEST(DecisionCache, InsertReplacesWithoutGrowing) {
  DecisionCache cache(4);
  cache.insert(1, access_with_detail("a"));
  cache.insert(1, access_with_detail("b"));
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.lookup(1)->detail(), "b");
}

TEST(DecisionCache, EvictsLeastRecentlyUsed) {
  DecisionCache cache(3);
  cache.insert(1, access_with_detail("1"));
  cache.insert(2, access_with_detail("2"));
  cache.insert(3, access_with_detail("3"));
  ASSERT_NE(cache.lookup(1), nullptr);  // 2 is now the least recently used
  cache.insert(4, access_with_detail("4"));
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_EQ(cache.lookup(2), nullptr);
  EXPECT_NE(cache.lookup(1), nullptr);
  EXPECT_NE(cache.lookup(3), nullptr);
  EXPECT_NE(cache.lookup(4), nullptr);
  // Order now (most recent first): 4 3 1; a re-insert refreshes too.
  cache.insert(1, access_with_detail("1b"));
  cache.insert(5, access_with_detail("5"));
  EXPECT_EQ(cache.lookup(3), nullptr);
  EXPECT_EQ(cache.lookup(1)->detail(), "1b");
  EXPECT_EQ(cache.size(), 3u);
}

TEST(DecisionCache, CapacityBound) {
  DecisionCache cache(100);
  for (std::uint64_t fp = 0; fp < 10000; ++fp)
    cache.insert(fp, access_with_detail("x"));
  EXPECT_EQ(cache.size(), 100u);
  EXPECT_EQ(cache.capacity(), 100u);
  EXPECT_EQ(cache.stats().evictions, 9900u);
  for (std::uint64_t fp = 9900; fp < 10000; ++fp)
    EXPECT_NE(cache.lookup(fp), nullptr) << fp;
  for (std::uint64_t fp = 0; fp < 9900; fp += 97)
    EXPECT_EQ(cache.lookup(fp), nullptr) << fp;
}

TEST(DecisionCache, CapacityOne) {
  DecisionCache cache(0);  // taken as 1
  EXPECT_EQ(cache.capacity(), 1u);
  cache.insert(7, access_with_detail("7"));
  cache.insert(8, access_with_detail("8"));
  EXPECT_EQ(cache.lookup(7), nullptr);
  EXPECT_EQ(cache.lookup(8)->detail(), "8");
}

TEST(DecisionCache, Clear) {
  DecisionCache cache(4);
  cache.insert(1, access_with_detail("1"));
  cache.insert(2, access_with_detail("2"));
  cache.clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.lookup(1), nullptr);
  EXPECT_EQ(cache.lookup(2), nullptr);
  for (std::uint64_t fp = 10; fp < 20; ++fp)
    cache.insert(fp, access_with_detail("y"));
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_NE(cache.lookup(19), nullptr);
}

// Against a straightforward model, with a key space a few times the capacity so that probing,
// backward-shift deletion and eviction all get exercised (keys colliding in the table too).
TEST(DecisionCache, MatchesReferenceLru) {
  constexpr std::size_t kCapacity = 64;
  DecisionCache cache(kCapacity);
  std::list<std::uint64_t> order;  // most recent first
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where;
  std::uint64_t state = 12345;
  auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  for (int i = 0; i < 200000; ++i) {
    // Keys spread over the whole 64-bit range and clustered small ones.
    const std::uint64_t r = next() % 300;
    const std::uint64_t key = (r % 2 == 0) ? r : r * 0x9E3779B97F4A7C15ULL;
    if (next() % 2 == 0) {
      const StatementAccess* hit = cache.lookup(key);
      const auto it = where.find(key);
      ASSERT_EQ(hit != nullptr, it != where.end()) << i;
      if (hit != nullptr) {
        EXPECT_EQ(hit->detail(), std::to_string(key));
        order.splice(order.begin(), order, it->second);
      }
    } else {
      cache.insert(key, access_with_detail(std::to_string(key)));
      if (const auto it = where.find(key); it != where.end()) {
        order.splice(order.begin(), order, it->second);
      } else {
        if (order.size() == kCapacity) {
          where.erase(order.back());
          order.pop_back();
        }
        order.push_front(key);
        where[key] = order.begin();
      }
    }
    ASSERT_EQ(cache.size(), order.size());
  }
}

TEST(DecisionCache, KeyParamsAreKeptPerExactTextAndPolicy) {
  DecisionCache cache(8);
  const std::string sql = "INSERT INTO readings (device_id, v) VALUES ($1, $2)";
  EXPECT_EQ(cache.key_params(sql, 1), nullptr);
  cache.set_key_params(sql, 1, KeyParams{1, 0, 1});
  const KeyParams* known = cache.key_params(sql, 1);
  ASSERT_NE(known, nullptr);
  EXPECT_EQ(known->first, 1);
  EXPECT_EQ(known->count, 1);
  // Another text of the same shape, another database's policy: not this text's layout.
  EXPECT_EQ(cache.key_params("INSERT INTO readings (device_id, v) VALUES ($2, $1)", 1), nullptr);
  EXPECT_EQ(cache.key_params("insert into readings (device_id, v) values ($1, $2)", 1), nullptr);
  EXPECT_EQ(cache.key_params(sql, 2), nullptr);
  // Texts over the bound are not kept; nor is a layout with no key.
  const std::string long_sql = sql + " -- " + std::string(DecisionCache::kMaxKeyParamsText, 'x');
  cache.set_key_params(long_sql, 1, KeyParams{1, 0, 1});
  EXPECT_EQ(cache.key_params(long_sql, 1), nullptr);
  cache.set_key_params("SELECT 1", 1, KeyParams{});
  EXPECT_EQ(cache.key_params("SELECT 1", 1), nullptr);
  cache.clear();
  EXPECT_EQ(cache.key_params(sql, 1), nullptr);
}

TEST(DecisionCache, DecideCachesPerFingerprint) {
  DecisionCache cache;
  const StatementAccess& first = cache.decide("select * from t where id = 1", kWriteFunctions);
  EXPECT_TRUE(first.read);
  // Other constants, parameters, case and spacing: the same fingerprint, the same entry.
  for (const char* sql : {"select * from t where id = 2", "SELECT * FROM t WHERE id = $1",
                          "select *   from t\nwhere id = -5", "select * from t where id = 'x'"}) {
    const StatementAccess& again = cache.decide(sql, kWriteFunctions);
    EXPECT_EQ(&again, &first) << sql;
    EXPECT_TRUE(again.read);
  }
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().hits, 4u);
  EXPECT_EQ(cache.size(), 1u);

  const StatementAccess& write = cache.decide("select nextval('s')", kWriteFunctions);
  EXPECT_FALSE(write.read);
  EXPECT_EQ(write.reason, AccessReason::WriteFunction);
  EXPECT_EQ(cache.decide("select nextval('other')", kWriteFunctions).reason,
            AccessReason::WriteFunction);
  // Quoted names keep their case in the fingerprint, as in the grammar.
  EXPECT_TRUE(cache.decide("select \"now\"()", kWriteFunctions).read);
  EXPECT_FALSE(cache.decide("select \"NOW\"()", kWriteFunctions).read);
  EXPECT_EQ(cache.size(), 4u);
  // With the fingerprint passed in: the same entries.
  EXPECT_EQ(&cache.decide(fingerprint("select * from t where id = 9"),
                          "select * from t where id = 9", kWriteFunctions),
            &first);
}

TEST(DecisionCache, DecideDoesNotCacheSyntaxErrors) {
  DecisionCache cache;
  // An unterminated literal has the fingerprint of a terminated one.
  ASSERT_EQ(fingerprint("select 'abc"), fingerprint("select 'abc'"));
  const StatementAccess& broken = cache.decide("select 'abc", kWriteFunctions);
  EXPECT_FALSE(broken.parsed);
  EXPECT_FALSE(broken.read);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(cache.decide("select 'abc'", kWriteFunctions).read);
  EXPECT_EQ(cache.size(), 1u);
}

TEST(DecisionCache, DecisionsUnderTwoWriteFunctionsListsAreKeptApart) {
  // A reload added now(): sessions from before keep their list, sessions after have the new
  // one, and neither finds the other's decision, in either order.
  DecisionCache cache;
  const std::vector<std::string> reloaded = {"now"};
  EXPECT_TRUE(cache.decide("select now()", kWriteFunctions, 1).read);
  EXPECT_FALSE(cache.decide("select now()", reloaded, 2).read);
  EXPECT_TRUE(cache.decide("select now()", kWriteFunctions, 1).read);
  EXPECT_TRUE(cache.decide("select random()", reloaded, 2).read);
  EXPECT_EQ(cache.size(), 3u);
  const std::uint64_t fp = fingerprint("select now()");
  ASSERT_NE(cache.lookup({fp, 1}), nullptr);
  ASSERT_NE(cache.lookup({fp, 2}), nullptr);
  EXPECT_TRUE(cache.lookup({fp, 1})->read);
  EXPECT_FALSE(cache.lookup({fp, 2})->read);
  EXPECT_EQ(cache.lookup({fp, 3}), nullptr);
  // Evicting one leaves the other.
  DecisionCache small(2);
  small.insert({7, 1}, access_with_detail("one"));
  small.insert({7, 2}, access_with_detail("two"));
  small.insert({8, 1}, access_with_detail("eight"));
  EXPECT_EQ(small.lookup({7, 1}), nullptr);
  ASSERT_NE(small.lookup({7, 2}), nullptr);
  EXPECT_EQ(small.lookup({7, 2})->detail(), "two");
}

// Not a timed assertion: prints what a hit costs (fingerprint + lookup) for a short SELECT,
// next to a miss (libpg_query parse + tree walk).
TEST(DecisionCache, RepeatedDecisionsAreHitsWithTheSameAnswer) {
  DecisionCache cache;
  const std::string sql =
      "select avg(value) from readings where device_id = $1 and ts > now() - interval '1 hour'";
  EXPECT_TRUE(cache.decide(sql, kWriteFunctions).read);
  const auto misses = cache.stats().misses;
  const std::uint64_t fp = fingerprint(sql);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(cache.decide(sql, kWriteFunctions).read);
    EXPECT_TRUE(cache.decide(fp, sql, kWriteFunctions).read);
  }
  EXPECT_EQ(cache.stats().misses, misses);
  EXPECT_GE(cache.stats().hits, 2000u);
}

}  // namespace
}  // namespace pgvalve::routing
