#include "routing/client_text.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "routing/router.h"

namespace pgvalve::routing {
namespace {

TEST(ClientText, BackslashesEscapeUnlessConformingStringsAreOn) {
  EXPECT_TRUE(text_reading("UTF8", "on").plain());
  EXPECT_TRUE(text_reading("", "").plain());  // the server's defaults
  for (const char* on : {"on", "ON", "true", "t", "yes", "y", "1", "'on'"}) {
    EXPECT_FALSE(text_reading("UTF8", on).backslash_escapes) << on;
  }
  for (const char* off : {"off", "OFF", "false", "f", "no", "0", "of", "'off'"}) {
    EXPECT_TRUE(text_reading("UTF8", off).backslash_escapes) << off;
  }
  EXPECT_EQ(text_reading("SJIS", "on").encoding, AsciiInCharacters::Sjis);
  EXPECT_EQ(text_reading("'SJIS'", "on").encoding, AsciiInCharacters::Sjis);  // as SET writes it
  EXPECT_FALSE(text_reading("SJIS", "on").plain());
  EXPECT_TRUE(text_reading("EUC_JP", "on").plain());
}

TEST(ClientText, OnlyWhatPostgreSQLWouldReadOtherwiseIsNotAsWritten) {
  const TextReading off = text_reading("UTF8", "off");
  EXPECT_TRUE(reads_as_written("select 'a', 'b' -- c", off));  // no backslash: the same
  EXPECT_FALSE(reads_as_written("select 'a\\', 'b'", off));
  const TextReading sjis = text_reading("SJIS", "on");
  EXPECT_TRUE(reads_as_written("select '\x82\xa0'", sjis));    // あ: no ASCII byte inside
  EXPECT_FALSE(reads_as_written("select E'\x83\x5c'", sjis));  // ソ: 0x5C inside
  EXPECT_TRUE(reads_as_written("select '\\'", text_reading("UTF8", "on")));
}

// With standard_conforming_strings off, PostgreSQL reads 'a\' , set_config(...) --' as a string
// followed by a call; pgvalve, reading \ as a character, would see one string and a comment.
TEST(ClientText, AStatementThatDoesNotReadAsWrittenGoesToThePrimary) {
  const std::vector<std::string> write_functions{"nextval"};
  DecisionCache cache{16};
  const Router router{1, RoutingPolicy{true, &write_functions}, &cache};
  const std::string sql = "SELECT 'a\\', ' , set_config($q$search_path$q$, $q$s2$q$, false), 1 --'";
  RouteContext context;
  EXPECT_EQ(router.route(sql, context).kind, Route::Kind::Replica);  // as pgvalve reads it
  context.reading = text_reading("UTF8", "off");
  EXPECT_EQ(router.route(sql, context).kind, Route::Kind::Primary);
  EXPECT_EQ(router.route("/* pgvalve: replica */ SELECT 'a\\'", context).kind,
            Route::Kind::Primary);
  EXPECT_EQ(router.route("SELECT 'a'", context).kind, Route::Kind::Replica);
}

TEST(ClientText, OverShardsItIsRefusedUnlessAHintPlacesIt) {
  ShardingPolicy sharding;
  sharding.key = "device_id";
  sharding.tables = {"telemetry"};
  sharding.shard_names = {"s0", "s1"};
  sharding.map = ShardMap(ShardHash::Md5Mod, KeyType::Bigint, 2, {});
  const std::vector<std::string> write_functions;
  DecisionCache cache{16};
  RoutingPolicy policy;
  policy.write_functions = &write_functions;
  policy.sharding = &sharding;
  policy.sharding_id = 1;
  const Router router(2, policy, &cache);
  RouteContext context;
  context.reading = text_reading("UTF8", "off");
  // PostgreSQL reads device_id = 6 here; pgvalve would read 5.
  const Route refused = router.route(
      "INSERT INTO telemetry (device_id, note) VALUES (5, 'a\\'), (6, ' --')", context);
  ASSERT_EQ(refused.kind, Route::Kind::Refuse);
  EXPECT_EQ(refused.refusal->sqlstate, "0A000");
  EXPECT_TRUE(refused.refusal->message.starts_with("pgvalve: ")) << refused.refusal->message;
  EXPECT_NE(refused.refusal->message.find("standard_conforming_strings"), std::string::npos);
  EXPECT_EQ(router.route("SELECT * FROM telemetry WHERE device_id = 5", context).kind,
            Route::Kind::Primary);
  EXPECT_EQ(router.route("/* pgvalve: shard=s1 */ SELECT 'a\\'", context).shard, 1);
}

}  // namespace
}  // namespace pgvalve::routing
