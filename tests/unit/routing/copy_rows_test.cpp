#include "routing/copy_rows.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "routing/shard_map.h"

namespace pgvalve::routing {
namespace {

using Format = CopyPlan::Format;

// ---- helpers -----------------------------------------------------------------------------------

// md5_mod over 2 shards, the app-side scheme: md5("1") % 2 == 1, md5("2") % 2 == 0,
// md5("3") % 2 == 1.
ShardingPolicy two_shards(KeyType type = KeyType::Bigint) {
  ShardingPolicy p;
  p.key = "device_id";
  p.tables = {"telemetry", "events"};
  p.reference_tables = {"device_types"};
  p.map = ShardMap(ShardHash::Md5Mod, type, 2, {});
  p.shard_names = {"s0", "s1"};
  return p;
}

CopyPlan planned(std::string_view sql, const ShardingPolicy& policy) {
  CopyPlan plan = plan_copy(sql, policy);
  EXPECT_TRUE(plan.ok) << sql << ": " << plan.refusal;
  return plan;
}

std::string refusal(std::string_view sql, const ShardingPolicy& policy = two_shards()) {
  const CopyPlan plan = plan_copy(sql, policy);
  EXPECT_FALSE(plan.ok) << sql;
  EXPECT_FALSE(plan.refusal.empty()) << sql;
  // The caller puts "pgvalve: " in front.
  EXPECT_FALSE(plan.refusal.starts_with("pgvalve:")) << plan.refusal;
  return plan.refusal;
}

struct Result {
  bool ok = true;  // every add() and finish() said true
  std::vector<std::string> out;
  std::uint64_t rows = 0;
  std::string sqlstate;
  std::string error;
};

Result feed(const CopyPlan& plan, const ShardingPolicy& policy,
            const std::vector<std::string_view>& pieces, bool finish = true,
            std::size_t max_row_bytes = 1 << 20) {
  CopyRows copy(plan, policy, max_row_bytes);
  Result r;
  r.out.assign(policy.shard_names.size(), "");
  for (std::string_view piece : pieces)
    r.ok = copy.add(piece, r.out) && r.ok;
  if (finish) r.ok = copy.finish(r.out) && r.ok;
  r.rows = copy.rows();
  r.sqlstate = std::string(copy.sqlstate());
  r.error = copy.error();
  EXPECT_EQ(copy.failed(), !r.error.empty());
  return r;
}

Result feed(std::string_view sql, std::string_view data,
            const ShardingPolicy& policy = two_shards(), std::size_t max_row_bytes = 1 << 20) {
  return feed(planned(sql, policy), policy, {data}, true, max_row_bytes);
}

std::vector<std::string_view> bytes_of(std::string_view data) {
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < data.size(); ++i)
    pieces.push_back(data.substr(i, 1));
  return pieces;
}

// A value of a text key that lands on `shard`.
std::string text_key_on(int shard, const ShardingPolicy& policy) {
  for (char c = 'a'; c <= 'z'; ++c) {
    const std::string key(1, c);
    if (shard_of_text(key, policy) == shard) return key;
  }
  ADD_FAILURE() << "no one-letter key on shard " << shard;
  return {};
}

constexpr std::string_view kText = "COPY telemetry (device_id, v) FROM STDIN";
constexpr std::string_view kTextKeySecond = "COPY telemetry (v, device_id) FROM STDIN";
constexpr std::string_view kCsv = "COPY telemetry (v, device_id) FROM STDIN WITH (FORMAT csv)";

// ---- plan_copy: what it reads ------------------------------------------------------------------

TEST(CopyPlan, TextFormatDefaults) {
  const CopyPlan p = planned(kText, two_shards());
  EXPECT_EQ(p.format, Format::Text);
  EXPECT_EQ(p.delimiter, '\t');
  EXPECT_EQ(p.null_text, "\\N");
  EXPECT_FALSE(p.header);
  EXPECT_EQ(p.key_column, 0);
}

TEST(CopyPlan, KeyColumnIsItsPlaceInTheColumnList) {
  EXPECT_EQ(planned("COPY telemetry (ts, v, device_id) FROM STDIN", two_shards()).key_column, 2);
  // Unquoted names are folded by PostgreSQL's parser, like the configured key.
  EXPECT_EQ(planned("COPY TELEMETRY (V, Device_ID) FROM STDIN", two_shards()).key_column, 1);
}

TEST(CopyPlan, CsvFormatDefaults) {
  const CopyPlan p = planned(kCsv, two_shards());
  EXPECT_EQ(p.format, Format::Csv);
  EXPECT_EQ(p.delimiter, ',');
  EXPECT_EQ(p.quote, '"');
  EXPECT_EQ(p.escape, '"');
  EXPECT_EQ(p.null_text, "");
  EXPECT_EQ(p.key_column, 1);
}

TEST(CopyPlan, ParenthesizedOptions) {
  const CopyPlan p = planned(
      "COPY telemetry (v, device_id) FROM STDIN WITH (FORMAT csv, HEADER match, DELIMITER ';', "
      "NULL 'x', QUOTE '''', ESCAPE '\\')",
      two_shards());
  EXPECT_EQ(p.format, Format::Csv);
  EXPECT_TRUE(p.header);
  EXPECT_EQ(p.delimiter, ';');
  EXPECT_EQ(p.null_text, "x");
  EXPECT_EQ(p.quote, '\'');
  EXPECT_EQ(p.escape, '\\');
}

TEST(CopyPlan, OldOptionSyntax) {
  const CopyPlan p = planned(
      "COPY telemetry (device_id, v) FROM STDIN DELIMITER ',' NULL 'n' CSV HEADER QUOTE '|' "
      "ESCAPE '!' FORCE NOT NULL v",
      two_shards());
  EXPECT_EQ(p.format, Format::Csv);
  EXPECT_TRUE(p.header);
  EXPECT_EQ(p.delimiter, ',');
  EXPECT_EQ(p.null_text, "n");
  EXPECT_EQ(p.quote, '|');
  EXPECT_EQ(p.escape, '!');
}

TEST(CopyPlan, TextOptions) {
  const CopyPlan p = planned(
      "COPY telemetry (device_id, v) FROM STDIN (DELIMITER '|', NULL '', HEADER)", two_shards());
  EXPECT_EQ(p.format, Format::Text);
  EXPECT_EQ(p.delimiter, '|');
  EXPECT_EQ(p.null_text, "");
  EXPECT_TRUE(p.header);
}

TEST(CopyPlan, EscapeDefaultsToTheQuote) {
  const CopyPlan p = planned(
      "COPY telemetry (device_id) FROM STDIN (FORMAT csv, QUOTE '|', DELIMITER ';')", two_shards());
  EXPECT_EQ(p.quote, '|');
  EXPECT_EQ(p.escape, '|');
  EXPECT_EQ(p.delimiter, ';');
}

TEST(CopyPlan, EveryFormOfHeader) {
  const ShardingPolicy policy = two_shards();
  for (std::string_view on : {"HEADER", "HEADER true", "HEADER on", "HEADER 1", "HEADER match",
                              "HEADER MATCH", "HEADER 'TRUE'"}) {
    const std::string sql = "COPY telemetry (device_id) FROM STDIN (" + std::string(on) + ")";
    EXPECT_TRUE(planned(sql, policy).header) << sql;
  }
  for (std::string_view off : {"HEADER false", "HEADER off", "HEADER 0", "HEADER 'OFF'"}) {
    const std::string sql = "COPY telemetry (device_id) FROM STDIN (" + std::string(off) + ")";
    EXPECT_FALSE(planned(sql, policy).header) << sql;
  }
  EXPECT_TRUE(planned("COPY telemetry (device_id) FROM STDIN CSV HEADER", policy).header);
  EXPECT_NE(refusal("COPY telemetry (device_id) FROM STDIN (HEADER 2)").find("HEADER"),
            std::string::npos);
  EXPECT_NE(refusal("COPY telemetry (device_id) FROM STDIN (HEADER maybe)").find("HEADER"),
            std::string::npos);
}

TEST(CopyPlan, OptionsThatDoNotChangeRowsAreAccepted) {
  const ShardingPolicy policy = two_shards();
  for (std::string_view options :
       {"FREEZE", "FREEZE false", "ENCODING 'UTF8'", "ENCODING 'latin1'", "ENCODING 'SQL_ASCII'",
        "FORMAT csv, FORCE_QUOTE (v)", "FORMAT csv, FORCE_NOT_NULL (v)",
        "FORMAT csv, FORCE_NULL (v)", "OIDS false"}) {
    const std::string sql =
        "COPY telemetry (device_id, v) FROM STDIN (" + std::string(options) + ")";
    EXPECT_TRUE(plan_copy(sql, policy).ok) << sql;
  }
}

TEST(CopyPlan, EncodingsWhoseCharactersHoldAsciiBytesAreRefused) {
  for (std::string_view encoding : {"SJIS", "Shift_JIS", "win932", "GB18030", "big5", "UHC"}) {
    const std::string sql =
        "COPY telemetry (device_id) FROM STDIN (ENCODING '" + std::string(encoding) + "')";
    EXPECT_NE(refusal(sql).find("UTF8"), std::string::npos) << sql;
  }
}

TEST(CopyPlan, SchemaQualifiedTable) {
  EXPECT_EQ(planned("COPY public.telemetry (v, device_id) FROM STDIN", two_shards()).key_column, 1);
  EXPECT_EQ(planned("COPY app.device_types FROM STDIN", two_shards()).key_column, -1);
}

TEST(CopyPlan, QuotedTableNamesKeepTheirCase) {
  EXPECT_NE(refusal("COPY \"Telemetry\" (device_id) FROM STDIN").find("\"Telemetry\""),
            std::string::npos);
}

TEST(CopyPlan, ReferenceTableNeedsNoKey) {
  EXPECT_EQ(planned("COPY device_types FROM STDIN", two_shards()).key_column, -1);
  EXPECT_EQ(planned("COPY device_types (id, device_id) FROM STDIN", two_shards()).key_column, -1);
  EXPECT_TRUE(
      plan_copy("COPY device_types FROM STDIN (FORMAT csv, FORCE_NULL *)", two_shards()).ok);
}

TEST(CopyPlan, ConfiguredKeyName) {
  ShardingPolicy policy = two_shards();
  policy.key = "tenant";
  EXPECT_EQ(planned("COPY telemetry (a, tenant) FROM STDIN", policy).key_column, 1);
  EXPECT_NE(refusal("COPY telemetry (a, device_id) FROM STDIN", policy).find("tenant"),
            std::string::npos);
}

// ---- plan_copy: what it refuses ----------------------------------------------------------------

TEST(CopyPlan, OnlyCopyFromStdinIsRouted) {
  for (std::string_view sql : {"COPY telemetry TO STDOUT", "COPY (SELECT 1) TO STDOUT",
                               "COPY telemetry (device_id) TO STDOUT (FORMAT csv)"}) {
    EXPECT_NE(refusal(sql).find("FROM STDIN"), std::string::npos) << sql;
  }
  for (std::string_view sql : {"COPY telemetry (device_id) FROM '/tmp/rows'",
                               "COPY telemetry (device_id) FROM PROGRAM 'cat rows'"}) {
    const std::string why = refusal(sql);
    EXPECT_NE(why.find("file or a program"), std::string::npos) << why;
    EXPECT_NE(why.find("FROM STDIN"), std::string::npos) << why;
  }
}

TEST(CopyPlan, BinaryFormatNeedsATypedKey) {
  for (std::string_view sql : {"COPY telemetry (device_id) FROM STDIN (FORMAT binary)",
                               "COPY telemetry (v, device_id) FROM STDIN BINARY"}) {
    const CopyPlan plan = planned(sql, two_shards(KeyType::Bigint));
    EXPECT_EQ(plan.format, Format::Binary) << sql;
    // A binary field does not say whether its 8 bytes are an int8 or 8 characters.
    const std::string why = refusal(sql, two_shards(KeyType::Auto));
    EXPECT_NE(why.find("set sharding.key_type to the type of device_id"), std::string::npos) << why;
    EXPECT_NE(why.find("shard=<name>"), std::string::npos) << why;
  }
  // A reference table's rows go everywhere, whatever their fields hold.
  const CopyPlan plan =
      planned("COPY device_types (id, name) FROM STDIN (FORMAT binary)", two_shards());
  EXPECT_EQ(plan.format, Format::Binary);
  EXPECT_EQ(plan.columns, 2);
}

TEST(CopyPlan, UnknownFormatIsRefused) {
  refusal("COPY telemetry (device_id) FROM STDIN (FORMAT 'CSV')");
}

TEST(CopyPlan, UnlistedTableIsRefused) {
  const std::string why = refusal("COPY audit_log (device_id) FROM STDIN");
  EXPECT_NE(why.find("\"audit_log\""), std::string::npos) << why;
  EXPECT_NE(why.find("sharding.tables"), std::string::npos) << why;
  EXPECT_NE(why.find("sharding.reference_tables"), std::string::npos) << why;
}

TEST(CopyPlan, ShardedTableWithoutColumnListIsRefused) {
  EXPECT_NE(refusal("COPY telemetry FROM STDIN")
                .find("list the columns, with device_id among them: COPY telemetry (..., "
                      "device_id, ...) FROM STDIN"),
            std::string::npos);
}

TEST(CopyPlan, ColumnListWithoutTheKeyIsRefused) {
  const std::string why = refusal("COPY telemetry (ts, v) FROM STDIN");
  EXPECT_NE(why.find("device_id"), std::string::npos) << why;
  EXPECT_NE(why.find("column list"), std::string::npos) << why;
}

TEST(CopyPlan, WhereClauseIsRefused) {
  EXPECT_NE(refusal("COPY telemetry (device_id, v) FROM STDIN WHERE v > 0").find("WHERE"),
            std::string::npos);
}

TEST(CopyPlan, SeveralStatementsAreRefused) {
  EXPECT_NE(refusal("COPY telemetry (device_id) FROM STDIN; SELECT 1").find("on its own"),
            std::string::npos);
}

TEST(CopyPlan, UnparsableOrOtherStatementsAreRefused) {
  refusal("COPY telemetry (device_id FROM STDIN");
  refusal("");
  refusal("SELECT 1");
}

TEST(CopyPlan, ForcedNullnessOfTheKeyIsRefused) {
  for (std::string_view options :
       {"FORCE_NULL (device_id)", "FORCE_NOT_NULL (v, device_id)", "FORCE_NULL *"}) {
    const std::string sql =
        "COPY telemetry (device_id, v) FROM STDIN (FORMAT csv, " + std::string(options) + ")";
    EXPECT_NE(refusal(sql).find("device_id"), std::string::npos) << sql;
  }
}

TEST(CopyPlan, DefaultOptionIsRefusedForShardedTables) {
  refusal("COPY telemetry (device_id, v) FROM STDIN (DEFAULT '\\D')");
  EXPECT_TRUE(plan_copy("COPY device_types FROM STDIN (DEFAULT '\\D')", two_shards()).ok);
}

TEST(CopyPlan, DelimiterQuoteAndEscapeAreSingleBytes) {
  refusal("COPY telemetry (device_id) FROM STDIN (DELIMITER '||')");
  refusal("COPY telemetry (device_id) FROM STDIN (FORMAT csv, QUOTE '')");
  refusal("COPY telemetry (device_id) FROM STDIN (FORMAT csv, ESCAPE 'ab')");
}

// ---- CopyRows: text format ---------------------------------------------------------------------

TEST(CopyRows, TextRowsGoToTheShardOfTheirKey) {
  const Result r = feed(kText, "1\ta\n2\tb\n3\tc\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "2\tb\n");
  EXPECT_EQ(r.out[1], "1\ta\n3\tc\n");
  EXPECT_EQ(r.rows, 3u);
}

TEST(CopyRows, KeyInALaterColumn) {
  const Result r = feed("COPY telemetry (ts, v, device_id) FROM STDIN", "t\tx\t2\nt\ty\t1\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "t\tx\t2\n");
  EXPECT_EQ(r.out[1], "t\ty\t1\n");
}

TEST(CopyRows, TextKeyPolicy) {
  const ShardingPolicy policy = two_shards(KeyType::Text);
  const std::string k0 = text_key_on(0, policy);
  const std::string k1 = text_key_on(1, policy);
  const std::string data = k1 + "\tx\n" + k0 + "\ty\n" + k1 + "\tz\n";
  const Result r = feed(kText, data, policy);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], k0 + "\ty\n");
  EXPECT_EQ(r.out[1], k1 + "\tx\n" + k1 + "\tz\n");
}

TEST(CopyRows, BackslashNewlineInTextIsData) {
  const Result r = feed(kTextKeySecond,
                        "line\\\nmore\t1\n"
                        "x\t2\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "line\\\nmore\t1\n");
  EXPECT_EQ(r.out[0], "x\t2\n");
  EXPECT_EQ(r.rows, 2u);
}

TEST(CopyRows, EscapedDelimiterIsData) {
  // With the tab escaped, the second field is the key: 2, not "b".
  const Result r = feed(kTextKeySecond, "a\\\tb\t2\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "a\\\tb\t2\n");
}

TEST(CopyRows, TextKeyIsDeEscaped) {
  // \x32 and \062 are "2", \063 is "3".
  const Result r = feed(kText, "\\x32\ta\n\\062\tb\n\\063\tc\n\\\\N\\x\td\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.out[0], "\\x32\ta\n\\062\tb\n");
  EXPECT_EQ(r.out[1], "\\063\tc\n");
  // "\\N" is a backslash and N, not NULL; "\x" without hex digits is "x".
  EXPECT_EQ(r.sqlstate, "22P02");
  EXPECT_NE(r.error.find("\"\\Nx\""), std::string::npos) << r.error;
}

TEST(CopyRows, TextKeyLettersEscaped) {
  const ShardingPolicy policy = two_shards(KeyType::Text);
  // \t inside the key field is a tab in the value, not a delimiter.
  const std::string value = "a\tb";
  const int shard = shard_of_text(value, policy);
  const Result r = feed(kText, "a\\tb\tv\n", policy);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[static_cast<std::size_t>(shard)], "a\\tb\tv\n");
}

TEST(CopyRows, CustomTextDelimiter) {
  const Result r =
      feed("COPY telemetry (v, device_id) FROM STDIN (DELIMITER '|')", "a\tb|2\nc\\|d|1\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "a\tb|2\n");
  EXPECT_EQ(r.out[1], "c\\|d|1\n");
}

TEST(CopyRows, CrLfLineEndings) {
  const Result r = feed(kTextKeySecond, "a\t1\r\nb\t2\r\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "a\t1\r\n");
  EXPECT_EQ(r.out[0], "b\t2\r\n");
}

TEST(CopyRows, EscapedCarriageReturnIsData) {
  const Result r = feed(kTextKeySecond, "a\\\r\t1\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "a\\\r\t1\n");
}

TEST(CopyRows, MixedLineEndingsAreAnError) {
  // PostgreSQL fails the COPY; shards that each saw one kind would not.
  const Result crlf = feed(kText, "1\ta\n2\tb\r\n");
  EXPECT_FALSE(crlf.ok);
  EXPECT_EQ(crlf.sqlstate, "22P04");
  EXPECT_EQ(crlf.error,
            "pgvalve: COPY row 2: line ending \\r\\n after lines ending \\n; end every line the "
            "same way");
  EXPECT_EQ(crlf.out[1], "1\ta\n");
  EXPECT_EQ(crlf.out[0], "");

  const Result lf = feed(kCsv, "a,1\r\nb,2\n");
  EXPECT_EQ(lf.sqlstate, "22P04");
  EXPECT_TRUE(lf.error.starts_with("pgvalve: COPY row 2: line ending \\n after")) << lf.error;

  // The header's line ending counts.
  const Result header =
      feed("COPY telemetry (device_id, v) FROM STDIN (HEADER)", "device_id\tv\r\n1\ta\n");
  EXPECT_EQ(header.sqlstate, "22P04");
}

TEST(CopyRows, BareCarriageReturnIsAnError) {
  // PostgreSQL reads it as a line ending only if the first line ends so; pgvalve does not guess.
  const Result r = feed(kText, "1\ta\rb\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P04");
  EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 1: carriage return")) << r.error;
}

// ---- CopyRows: csv format ----------------------------------------------------------------------

TEST(CopyRows, CsvRowsGoToTheShardOfTheirKey) {
  const Result r = feed(kCsv, "a,1\nb,2\nc,3\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "b,2\n");
  EXPECT_EQ(r.out[1], "a,1\nc,3\n");
  EXPECT_EQ(r.rows, 3u);
}

TEST(CopyRows, CsvQuotedNewlinesDelimitersAndQuotesAreData) {
  const std::string row = "\"a,\nb\"\"\r\nc\n\",2\n";
  const Result r = feed(kCsv, row + "\"x\",\"1\"\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], row);
  EXPECT_EQ(r.out[1], "\"x\",\"1\"\n");
  EXPECT_EQ(r.rows, 2u);
}

TEST(CopyRows, CsvQuoteInsideAnUnquotedField) {
  // As in PostgreSQL, a quote opens a quoted part anywhere in a field.
  const Result r = feed(kCsv, "a\"x,\ny\"b,2\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "a\"x,\ny\"b,2\n");
  EXPECT_EQ(r.rows, 1u);
}

TEST(CopyRows, CsvEscapeOtherThanTheQuote) {
  const std::string sql = "COPY telemetry (v, device_id) FROM STDIN (FORMAT csv, ESCAPE '\\')";
  // \" is a literal quote, so the field goes on past the newline; \\ is a backslash, so the
  // quote after it closes the field.
  const Result r = feed(sql, "\"x\\\"\n,y\",2\n\"z\\\\\",1\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "\"x\\\"\n,y\",2\n");
  EXPECT_EQ(r.out[1], "\"z\\\\\",1\n");
  // Outside quotes the escape character is data: the quote after it opens a quoted part.
  const Result outside = feed(sql, "a\\\"x,\ny\",2\n");
  ASSERT_TRUE(outside.ok) << outside.error;
  EXPECT_EQ(outside.out[0], "a\\\"x,\ny\",2\n");
  EXPECT_EQ(outside.rows, 1u);
}

TEST(CopyRows, CsvEscapedQuoteInTheKey) {
  const ShardingPolicy policy = two_shards(KeyType::Text);
  const int shard = shard_of_text("a\"b", policy);
  const Result r =
      feed("COPY telemetry (device_id) FROM STDIN (FORMAT csv)", "\"a\"\"b\"\n", policy);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[static_cast<std::size_t>(shard)], "\"a\"\"b\"\n");
}

TEST(CopyRows, CustomCsvDelimiterQuoteAndNull) {
  const std::string sql =
      "COPY telemetry (v, device_id) FROM STDIN (FORMAT csv, DELIMITER ';', QUOTE '|', NULL "
      "'NULL')";
  const Result ok = feed(sql, "|a;\n\"b|;2\n,c;|1|\n");
  ASSERT_TRUE(ok.ok) << ok.error;
  EXPECT_EQ(ok.out[0], "|a;\n\"b|;2\n");
  EXPECT_EQ(ok.out[1], ",c;|1|\n");

  const Result null = feed(sql, "x;NULL\n");
  EXPECT_EQ(null.sqlstate, "22004");
  // Quoted, NULL is a string.
  const Result quoted = feed(sql, "x;|NULL|\n");
  EXPECT_EQ(quoted.sqlstate, "22P02");
}

// PostgreSQL stores the CSV row `x, 5,y` with device_id 5 in a bigint column (int8in skips the
// space): under key_type bigint it goes where 5 goes; under auto, where " 5" (text) and 5
// (bigint) would go to different shards, it is refused rather than guessed; beyond bigint it is
// PostgreSQL's 22003.
TEST(CopyRows, AKeyWithWhitespaceAroundItIsReadAsPostgresReadsIt) {
  constexpr std::string_view sql = "COPY telemetry (v, device_id, w) FROM STDIN WITH (FORMAT csv)";
  const ShardingPolicy bigint = two_shards(KeyType::Bigint);
  const Result padded = feed(sql, "x, 2,y\nx,1 ,y\n", bigint);
  ASSERT_TRUE(padded.ok) << padded.error;
  EXPECT_EQ(padded.out[0], "x, 2,y\n") << "where 2 goes";
  EXPECT_EQ(padded.out[1], "x,1 ,y\n") << "where 1 goes";

  const Result range = feed(sql, "x, 99999999999999999999,y\n", bigint);
  EXPECT_EQ(range.sqlstate, "22003");
  EXPECT_NE(range.error.find("out of range for type bigint"), std::string::npos) << range.error;

  const Result ambiguous = feed(sql, "x,2,y\nx, 5,y\n", two_shards(KeyType::Auto));
  EXPECT_FALSE(ambiguous.ok);
  EXPECT_EQ(ambiguous.sqlstate, "22P02");
  EXPECT_NE(ambiguous.error.find("COPY row 2: device_id \" 5\" is an integer with whitespace"),
            std::string::npos)
      << ambiguous.error;
  EXPECT_NE(ambiguous.error.find("set sharding.key_type"), std::string::npos) << ambiguous.error;
}

TEST(CopyRows, CsvEmptyUnquotedKeyIsNullButQuotedIsNot) {
  const Result null = feed(kCsv, "a,\n");
  EXPECT_EQ(null.sqlstate, "22004");
  const Result empty = feed(kCsv, "a,\"\"\n");
  EXPECT_EQ(empty.sqlstate, "22P02");
  EXPECT_NE(empty.error.find("\"\" is not a valid device_id"), std::string::npos) << empty.error;

  const ShardingPolicy text = two_shards(KeyType::Text);
  const Result routed = feed(kCsv, "a,\"\"\n", text);
  ASSERT_TRUE(routed.ok) << routed.error;
  EXPECT_EQ(routed.out[static_cast<std::size_t>(shard_of_text("", text))], "a,\"\"\n");
}

TEST(CopyRows, CsvBackslashDotWithOtherFieldsIsData) {
  const Result r = feed(kCsv, "\\.,2\n\"\\.\",1\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "\\.,2\n");
  EXPECT_EQ(r.out[1], "\"\\.\",1\n");
}

// ---- CopyRows: header --------------------------------------------------------------------------

TEST(CopyRows, TextHeaderGoesToEveryShard) {
  const Result r =
      feed("COPY telemetry (device_id, v) FROM STDIN (HEADER)", "device_id\tv\n1\ta\n2\tb\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "device_id\tv\n2\tb\n");
  EXPECT_EQ(r.out[1], "device_id\tv\n1\ta\n");
  EXPECT_EQ(r.rows, 2u);
}

TEST(CopyRows, CsvHeaderSpanningLinesGoesToEveryShard) {
  const std::string header = "v,\"device\nid\"\r\n";
  const Result r = feed("COPY telemetry (v, device_id) FROM STDIN (FORMAT csv, HEADER match)",
                        header + "a,1\r\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], header);
  EXPECT_EQ(r.out[1], header + "a,1\r\n");
  EXPECT_EQ(r.rows, 1u);
}

TEST(CopyRows, HeaderSplitAcrossAdds) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned("COPY telemetry (device_id, v) FROM STDIN (HEADER)", policy);
  const Result r = feed(plan, policy, {"devi", "ce_i", "d\tv", "\n2", "\tb\n"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "device_id\tv\n2\tb\n");
  EXPECT_EQ(r.out[1], "device_id\tv\n");
  EXPECT_EQ(r.rows, 1u);
}

TEST(CopyRows, UnterminatedQuoteInTheHeaderIsTheShardsConcern) {
  // PostgreSQL skips the header unread (or, for MATCH, every shard reads it).
  const Result r =
      feed("COPY telemetry (device_id, v) FROM STDIN (FORMAT csv, HEADER)", "\"device_id,v\n1,a\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "\"device_id,v\n1,a\n");
  EXPECT_EQ(r.out[1], r.out[0]);
  EXPECT_EQ(r.rows, 0u);
}

TEST(CopyRows, HeaderAloneWithoutNewline) {
  const Result r =
      feed("COPY telemetry (device_id, v) FROM STDIN (FORMAT csv, HEADER)", "device_id,v");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "device_id,v");
  EXPECT_EQ(r.out[1], "device_id,v");
  EXPECT_EQ(r.rows, 0u);
}

TEST(CopyRows, WithoutHeaderTheFirstLineIsARow) {
  const Result r = feed(kText, "device_id\tv\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P02");
}

// ---- CopyRows: end of data ---------------------------------------------------------------------

TEST(CopyRows, EndMarkerEndsTheData) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kText, policy);
  CopyRows copy(plan, policy, 1 << 20);
  std::vector<std::string> out(2);
  EXPECT_TRUE(copy.add("1\ta\n\\.\n2\tb\n", out));
  EXPECT_TRUE(copy.add("not a row at all\r", out));
  EXPECT_TRUE(copy.finish(out));
  EXPECT_EQ(out[0], "");
  EXPECT_EQ(out[1], "1\ta\n");
  EXPECT_EQ(copy.rows(), 1u);
  EXPECT_FALSE(copy.failed());
}

TEST(CopyRows, EndMarkerWithCrLfAndInCsv) {
  const Result text = feed(kText, "2\ta\r\n\\.\r\n1\tb\r\n");
  ASSERT_TRUE(text.ok) << text.error;
  EXPECT_EQ(text.out[0], "2\ta\r\n");
  EXPECT_EQ(text.out[1], "");

  const Result csv = feed(kCsv, "a,1\n\\.\nb,2\n");
  ASSERT_TRUE(csv.ok) << csv.error;
  EXPECT_EQ(csv.out[0], "");
  EXPECT_EQ(csv.out[1], "a,1\n");
  EXPECT_EQ(csv.rows, 1u);
}

TEST(CopyRows, TextEndMarkerAfterFieldsEndsTheDataAfterThatRow) {
  // PostgreSQL 15 reads "1\ta" as the last row; the shard gets the line as it is.
  const Result r = feed(kText, "1\ta\\.\n2\tb\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "1\ta\\.\n");
  EXPECT_EQ(r.out[0], "");
  EXPECT_EQ(r.rows, 1u);
}

TEST(CopyRows, EscapedBackslashBeforeADotIsNoMarker) {
  const Result r = feed(kTextKeySecond, "a\\\\.\t2\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "a\\\\.\t2\n");
}

TEST(CopyRows, CorruptEndMarkerIsAnError) {
  const Result r = feed(kTextKeySecond, "a\t1\nb\\.c\t2\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P04");
  EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 2: end-of-copy marker")) << r.error;
  EXPECT_EQ(r.out[1], "a\t1\n");
}

TEST(CopyRows, EndMarkerSplitAcrossAdds) {
  const ShardingPolicy policy = two_shards();
  const Result r = feed(planned(kText, policy), policy, {"1\ta\r\n\\", ".", "\r", "\n2\tb\n"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "1\ta\r\n");
  EXPECT_EQ(r.out[0], "");
}

TEST(CopyRows, EndMarkerMustEndItsLineLikeTheOthers) {
  const Result r = feed(kText, "1\ta\n\\.\r\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P04");
  EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 2: line ending \\r\\n after lines ending \\n"))
      << r.error;
}

TEST(CopyRows, BackslashDotWithoutNewlineAtFinish) {
  // Text: a corrupt end marker, as PostgreSQL says.
  const Result text = feed(kText, "1\ta\n\\.");
  EXPECT_FALSE(text.ok);
  EXPECT_EQ(text.sqlstate, "22P04");
  EXPECT_TRUE(text.error.starts_with("pgvalve: COPY row 2: end-of-copy marker corrupt"))
      << text.error;
  EXPECT_EQ(text.out[1], "1\ta\n");
  // Csv: a value.
  const ShardingPolicy policy = two_shards(KeyType::Text);
  const Result csv = feed("COPY telemetry (device_id) FROM STDIN (FORMAT csv)", "a\n\\.", policy);
  ASSERT_TRUE(csv.ok) << csv.error;
  EXPECT_EQ(csv.rows, 2u);
  EXPECT_NE(csv.out[static_cast<std::size_t>(shard_of_text("\\.", policy))].find("\\."),
            std::string::npos);
}

// ---- CopyRows: finish --------------------------------------------------------------------------

TEST(CopyRows, FinishRoutesALastRowWithoutNewline) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kText, policy);
  CopyRows copy(plan, policy, 1 << 20);
  std::vector<std::string> out(2);
  ASSERT_TRUE(copy.add("1\ta\n2\tb", out));
  EXPECT_EQ(out[0], "");  // held until its end is known
  EXPECT_EQ(copy.rows(), 1u);
  ASSERT_TRUE(copy.finish(out));
  EXPECT_EQ(out[0], "2\tb");
  EXPECT_EQ(out[1], "1\ta\n");
  EXPECT_EQ(copy.rows(), 2u);
}

TEST(CopyRows, FinishAfterCompleteRowsAddsNothing) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kCsv, policy);
  CopyRows copy(plan, policy, 1 << 20);
  std::vector<std::string> out(2);
  ASSERT_TRUE(copy.add("a,1\n", out));
  ASSERT_TRUE(copy.finish(out));
  EXPECT_EQ(out[1], "a,1\n");
  EXPECT_EQ(out[0], "");
  EXPECT_EQ(copy.rows(), 1u);
}

TEST(CopyRows, FinishWithNoDataAtAll) {
  const Result r = feed(kText, "");
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.out, (std::vector<std::string>{"", ""}));
  EXPECT_EQ(r.rows, 0u);
}

TEST(CopyRows, LastRowEndingInCarriageReturn) {
  // Alone, the line ends with \r (PostgreSQL's old Mac line ending).
  const Result r = feed(kTextKeySecond, "a\t1\r");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], "a\t1\r");
  // After lines ending otherwise, it is a stray carriage return.
  const Result after = feed(kTextKeySecond, "a\t1\r\nb\t2\r");
  EXPECT_EQ(after.sqlstate, "22P04");
  EXPECT_TRUE(after.error.starts_with("pgvalve: COPY row 2: carriage return")) << after.error;
}

TEST(CopyRows, BackslashEndingTheDataIsDropped) {
  // PostgreSQL drops it, so "\\N\\" at the very end is NULL, and "1\\" is 1.
  const Result null = feed(kTextKeySecond, "a\t\\N\\");
  EXPECT_EQ(null.sqlstate, "22004");
  const Result one = feed(kTextKeySecond, "a\t1\\");
  ASSERT_TRUE(one.ok) << one.error;
  EXPECT_EQ(one.out[1], "a\t1\\");
}

TEST(CopyRows, UnterminatedQuotedFieldAtFinish) {
  const Result r = feed(kCsv, "a,1\n\"b,2\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P04");
  EXPECT_EQ(r.error, "pgvalve: COPY row 2: unterminated CSV quoted field");
  EXPECT_EQ(r.out[1], "a,1\n");
  EXPECT_EQ(r.out[0], "");
}

// ---- CopyRows: errors --------------------------------------------------------------------------

TEST(CopyRows, NullKey) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kTextKeySecond, policy);
  CopyRows copy(plan, policy, 1 << 20);
  std::vector<std::string> out(2);
  EXPECT_FALSE(copy.add("a\t1\nb\t\\N\nc\t2\n", out));
  EXPECT_TRUE(copy.failed());
  EXPECT_EQ(copy.sqlstate(), "22004");
  EXPECT_EQ(copy.error(),
            "pgvalve: COPY row 2: device_id is NULL, so no shard holds the row; give every row a "
            "device_id");
  EXPECT_EQ(out[1], "a\t1\n");  // rows before the bad one were routed
  EXPECT_EQ(out[0], "");
  // Later calls do nothing.
  EXPECT_FALSE(copy.add("d\t2\n", out));
  EXPECT_FALSE(copy.finish(out));
  EXPECT_EQ(out[0], "");
  EXPECT_EQ(copy.rows(), 1u);
}

TEST(CopyRows, CustomTextNull) {
  const Result r = feed("COPY telemetry (v, device_id) FROM STDIN (NULL 'none')",
                        "a\t\\N\n");  // \N is no longer NULL: it is "N", not a bigint
  EXPECT_EQ(r.sqlstate, "22P02");
  const Result n = feed("COPY telemetry (v, device_id) FROM STDIN (NULL 'none')", "a\tnone\n");
  EXPECT_EQ(n.sqlstate, "22004");
}

TEST(CopyRows, InvalidKey) {
  const Result r = feed(kTextKeySecond, "a\t1\nb\tabc\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P02");
  EXPECT_EQ(r.error,
            "pgvalve: COPY row 2: \"abc\" is not a valid device_id (sharding.key_type: bigint); "
            "give every row a device_id of that type");
}

TEST(CopyRows, InvalidKeyIsQuotedCutTo64Bytes) {
  const Result r = feed(kText, std::string(100, '7') + "x\tv\n");
  EXPECT_EQ(r.sqlstate, "22P02");
  EXPECT_NE(r.error.find("\"" + std::string(64, '7') + "...\""), std::string::npos) << r.error;
  EXPECT_EQ(r.error.find(std::string(65, '7')), std::string::npos) << r.error;
}

TEST(CopyRows, MissingKeyField) {
  const Result r = feed("COPY telemetry (ts, v, device_id) FROM STDIN", "t\tx\t1\nt\tx\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.sqlstate, "22P04");
  EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 2: missing data for device_id")) << r.error;
  EXPECT_EQ(r.out[1], "t\tx\t1\n");

  const Result csv = feed("COPY telemetry (ts, device_id) FROM STDIN (FORMAT csv)", "\"a,b\"\n");
  EXPECT_EQ(csv.sqlstate, "22P04");
}

TEST(CopyRows, TooLongRow) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kTextKeySecond, policy);
  const std::string data = "short\t1\n" + std::string(40, 'x') + "\t2\n";
  for (const std::vector<std::string_view>& pieces :
       {std::vector<std::string_view>{data}, bytes_of(data)}) {
    const Result r = feed(plan, policy, pieces, true, 16);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.sqlstate, "54000");
    EXPECT_EQ(r.error,
              "pgvalve: COPY row 2: the row is longer than 16 bytes; pgvalve holds one row at a "
              "time while routing COPY by device_id");
    EXPECT_EQ(r.out[1], "short\t1\n");
  }
}

TEST(CopyRows, RowOfExactlyTheLimitFits) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kTextKeySecond, policy);
  const std::string row = "abcdef\t2\n";  // 9 bytes with its newline
  for (const std::vector<std::string_view>& pieces :
       {std::vector<std::string_view>{row}, bytes_of(row)}) {
    EXPECT_TRUE(feed(plan, policy, pieces, true, row.size()).ok);
    EXPECT_EQ(feed(plan, policy, pieces, true, row.size() - 1).sqlstate, "54000");
  }
}

TEST(CopyRows, RowNumbersCountTheHeader) {
  const Result r = feed("COPY telemetry (device_id, v) FROM STDIN (FORMAT csv, HEADER)",
                        "device_id,v\n1,\"a\nb\"\n,c\n");
  EXPECT_EQ(r.sqlstate, "22004");
  EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 3: ")) << r.error;
}

// ---- CopyRows: reference tables ----------------------------------------------------------------

TEST(CopyRows, ReferenceTableRowsGoToEveryShard) {
  const Result r = feed("COPY device_types FROM STDIN", "1\tsensor\n\\N\tgauge\nx\ty\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "1\tsensor\n\\N\tgauge\nx\ty\n");
  EXPECT_EQ(r.out[1], r.out[0]);
  EXPECT_EQ(r.rows, 3u);
}

TEST(CopyRows, ReferenceTableRowsCutAnywhere) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned("COPY device_types FROM STDIN (FORMAT csv, HEADER)", policy);
  const Result r = feed(plan, policy, {"id,na", "me\n1,\"a\n", "b\"\n2,c"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], "id,name\n1,\"a\nb\"\n2,c");
  EXPECT_EQ(r.out[1], r.out[0]);
  EXPECT_EQ(r.rows, 2u);
}

// ---- CopyRows: data cut anywhere ---------------------------------------------------------------

struct Cuttable {
  std::string_view sql;
  std::string_view data;
};

const Cuttable kCuttable[] = {
    {"COPY telemetry (v, device_id) FROM STDIN (HEADER)",
     "v\tdevice_id\r\nx\\\ny\t1\r\nz\\\t\t2\r\n\t3\r\nw\t\\x32\r\nlast\t1"},
    {"COPY telemetry (v, device_id) FROM STDIN (FORMAT csv, HEADER)",
     "v,device_id\n\"a\r\nb\",1\n\"c\"\"d\",2\n\"e,f\",\"3\"\n,2\n\"g\",1"},
    {"COPY telemetry (v, device_id) FROM STDIN (FORMAT csv, ESCAPE '\\')",
     "\"a\\\"\n\",2\n\"b\\\\\",1\n\"\\x\",3\n"},
    {"COPY telemetry (device_id, v) FROM STDIN", "1\ta\n2\tb\n\\.\n3\tc\n"},
    {"COPY telemetry (device_id, v) FROM STDIN (FORMAT csv)", "1,a\r\n2,b\r\n\\.\r\nx\n"},
    {"COPY device_types FROM STDIN", "1\ta\\\nb\r\n2\tc\r\n"},
};

TEST(CopyRows, TheReferenceInputsRouteAsExpected) {
  const Result text = feed(kCuttable[0].sql, kCuttable[0].data);
  ASSERT_TRUE(text.ok) << text.error;
  EXPECT_EQ(text.out[0], "v\tdevice_id\r\nz\\\t\t2\r\nw\t\\x32\r\n");
  EXPECT_EQ(text.out[1], "v\tdevice_id\r\nx\\\ny\t1\r\n\t3\r\nlast\t1");
  EXPECT_EQ(text.rows, 5u);

  const Result csv = feed(kCuttable[1].sql, kCuttable[1].data);
  ASSERT_TRUE(csv.ok) << csv.error;
  EXPECT_EQ(csv.out[0], "v,device_id\n\"c\"\"d\",2\n,2\n");
  EXPECT_EQ(csv.out[1], "v,device_id\n\"a\r\nb\",1\n\"e,f\",\"3\"\n\"g\",1");
  EXPECT_EQ(csv.rows, 5u);

  const Result escape = feed(kCuttable[2].sql, kCuttable[2].data);
  ASSERT_TRUE(escape.ok) << escape.error;
  EXPECT_EQ(escape.out[0], "\"a\\\"\n\",2\n");
  EXPECT_EQ(escape.out[1], "\"b\\\\\",1\n\"\\x\",3\n");
}

TEST(CopyRows, EveryCutGivesTheSameRows) {
  const ShardingPolicy policy = two_shards();
  for (const Cuttable& c : kCuttable) {
    const CopyPlan plan = planned(c.sql, policy);
    const Result whole = feed(plan, policy, {c.data});
    ASSERT_TRUE(whole.ok) << c.sql << ": " << whole.error;
    for (std::size_t i = 0; i <= c.data.size(); ++i) {
      for (std::size_t j = i; j <= c.data.size(); ++j) {
        const Result cut =
            feed(plan, policy, {c.data.substr(0, i), c.data.substr(i, j - i), c.data.substr(j)});
        ASSERT_TRUE(cut.ok) << c.sql << " cut at " << i << ", " << j << ": " << cut.error;
        ASSERT_EQ(cut.out, whole.out) << c.sql << " cut at " << i << ", " << j;
        ASSERT_EQ(cut.rows, whole.rows) << c.sql << " cut at " << i << ", " << j;
      }
    }
    const Result bytes = feed(plan, policy, bytes_of(c.data));
    EXPECT_EQ(bytes.out, whole.out) << c.sql;
    EXPECT_EQ(bytes.rows, whole.rows) << c.sql;
  }
}

TEST(CopyRows, ErrorsDoNotDependOnTheCuts) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kCsv, policy);
  const std::string_view data = "a,1\n\"b\nc\",2\nd,x\ne,3\n";
  const Result whole = feed(plan, policy, {data});
  ASSERT_EQ(whole.sqlstate, "22P02");
  for (std::size_t i = 0; i <= data.size(); ++i) {
    const Result cut = feed(plan, policy, {data.substr(0, i), data.substr(i)});
    EXPECT_EQ(cut.error, whole.error) << "cut at " << i;
    EXPECT_EQ(cut.out, whole.out) << "cut at " << i;
  }
}

TEST(CopyRows, LongRowInSmallPieces) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kCsv, policy);
  std::string data = "\"";
  for (int i = 0; i < 100000; ++i)
    data += "ab,\n\"\"c";
  data += "\",2\n";
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < data.size(); i += 7)
    pieces.push_back(std::string_view(data).substr(i, 7));
  const Result r = feed(plan, policy, pieces, true, 1 << 20);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], data);
  EXPECT_EQ(r.rows, 1u);
}

// ---- CopyRows: binary format -------------------------------------------------------------------

constexpr std::string_view kBinary = "COPY telemetry (device_id, v) FROM STDIN (FORMAT binary)";

std::string be(std::int64_t value, int bytes) {
  std::string out;
  for (int i = bytes - 1; i >= 0; --i)
    out.push_back(static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xff));
  return out;
}

std::string binary_header(std::string_view extension = "") {
  return std::string("PGCOPY\n\377\r\n\0", 11) + be(0, 4) +
         be(static_cast<std::int64_t>(extension.size()), 4) + std::string(extension);
}

// A tuple of the given fields; nullopt is NULL.
std::string binary_tuple(const std::vector<std::optional<std::string>>& fields) {
  std::string out = be(static_cast<std::int64_t>(fields.size()), 2);
  for (const auto& f : fields) {
    out += f ? be(static_cast<std::int64_t>(f->size()), 4) + *f : be(-1, 4);
  }
  return out;
}

const std::string kTrailer = be(-1, 2);

// device_id as an int8 and v as a float8's 8 bytes.
std::string reading(std::int64_t device, char v = 'v') {
  return binary_tuple({be(device, 8), std::string(8, v)});
}

TEST(CopyRows, BinaryTuplesGoToTheShardOfTheirKey) {
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  const std::string data =
      binary_header() + reading(1, 'a') + reading(2, 'b') + reading(3, 'c') + kTrailer;
  // The header and the trailer reach every shard: each shard's COPY reads a whole file.
  const std::string on0 = binary_header() + reading(2, 'b') + kTrailer;
  const std::string on1 = binary_header() + reading(1, 'a') + reading(3, 'c') + kTrailer;
  const Result whole = feed(kBinary, data, policy);
  ASSERT_TRUE(whole.ok) << whole.error;
  EXPECT_EQ(whole.out[0], on0);
  EXPECT_EQ(whole.out[1], on1);
  EXPECT_EQ(whole.rows, 3u);
  const Result bytes = feed(planned(kBinary, policy), policy, bytes_of(data));
  ASSERT_TRUE(bytes.ok) << bytes.error;
  EXPECT_EQ(bytes.out, whole.out);
  EXPECT_EQ(bytes.rows, 3u);
}

TEST(CopyRows, BinaryIntegerKeysOfEveryWidthHashAlike) {
  // An int2 or int4 column sends 2 or 4 bytes; the value decides the shard, as in text.
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  for (int width : {2, 4, 8}) {
    const std::string data = binary_header() + binary_tuple({be(2, width), "x"}) +
                             binary_tuple({be(3, width), "y"}) + kTrailer;
    const Result r = feed(kBinary, data, policy);
    ASSERT_TRUE(r.ok) << width << ": " << r.error;
    EXPECT_EQ(r.out[0], binary_header() + binary_tuple({be(2, width), "x"}) + kTrailer) << width;
    EXPECT_EQ(r.out[1], binary_header() + binary_tuple({be(3, width), "y"}) + kTrailer) << width;
  }
}

TEST(CopyRows, BinaryTextAndUuidKeys) {
  const ShardingPolicy text = two_shards(KeyType::Text);
  const std::string k0 = text_key_on(0, text);
  const std::string k1 = text_key_on(1, text);
  Result r =
      feed(kBinary, binary_header() + binary_tuple({k1, "x"}) + binary_tuple({k0, "y"}), text);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], binary_header() + binary_tuple({k0, "y"}));
  EXPECT_EQ(r.out[1], binary_header() + binary_tuple({k1, "x"}));

  // A uuid's 16 bytes go where its text form goes.
  const ShardingPolicy uuid = two_shards(KeyType::Uuid);
  const std::string u = "00112233-4455-6677-8899-aabbccddeeff";
  std::string bytes;
  for (std::size_t i = 0; i < u.size(); ++i) {
    if (u[i] == '-') continue;
    bytes.push_back(static_cast<char>(std::stoi(u.substr(i, 2), nullptr, 16)));
    ++i;
  }
  const int shard = shard_of_text(u, uuid);
  ASSERT_GE(shard, 0);
  r = feed(kBinary, binary_header() + binary_tuple({bytes, "x"}) + kTrailer, uuid);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[static_cast<std::size_t>(shard)],
            binary_header() + binary_tuple({bytes, "x"}) + kTrailer);
  EXPECT_EQ(r.out[static_cast<std::size_t>(1 - shard)], binary_header() + kTrailer);
}

TEST(CopyRows, BinaryHeaderExtensionAndNullFieldsPassUnchanged) {
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  const std::string tuple = binary_tuple({std::nullopt, be(2, 8), ""});
  const std::string data = binary_header("ext!") + tuple;
  const Result r = feed(planned("COPY telemetry (v, device_id, note) FROM STDIN BINARY", policy),
                        policy, bytes_of(data));
  ASSERT_TRUE(r.ok) << r.error;
  // No trailer: PostgreSQL takes the end of the data for one, and so does each shard.
  EXPECT_EQ(r.out[0], binary_header("ext!") + tuple);
  EXPECT_EQ(r.out[1], binary_header("ext!"));
  EXPECT_EQ(r.rows, 1u);
}

TEST(CopyRows, BinaryReferenceTableTuplesGoToEveryShard) {
  const ShardingPolicy policy = two_shards(KeyType::Auto);
  const std::string data = binary_header() + binary_tuple({be(7, 4), "seven"}) +
                           binary_tuple({be(8, 4), std::nullopt}) + kTrailer;
  const Result r = feed("COPY device_types (id, name) FROM STDIN (FORMAT binary)", data, policy);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], data);
  EXPECT_EQ(r.out[1], data);
  EXPECT_EQ(r.rows, 2u);
}

TEST(CopyRows, BinaryErrorsNameTheTuple) {
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  struct Case {
    std::string data;
    std::string_view sqlstate;
    std::string_view message;
  };
  const std::string ok = binary_header() + reading(1);
  const Case cases[] = {
      {std::string("PGCOPY\n\377\r\n\1", 11) + be(0, 8), "22P04",
       "pgvalve: COPY file header: COPY file signature not recognized"},
      {std::string("PGCOPY\n\377\r\n\0", 11) + be(1 << 16, 4) + be(0, 4), "22P04",
       "pgvalve: COPY file header: invalid COPY file header (WITH OIDS)"},
      {std::string("PGCOPY\n\377\r\n\0", 11) + be(0, 4) + be(-1, 4), "22P04",
       "pgvalve: COPY file header: invalid COPY file header (missing length)"},
      {ok + binary_tuple({std::nullopt, "x"}), "22004",
       "pgvalve: COPY row 2: device_id is NULL, so no shard holds the row"},
      {ok + binary_tuple({be(1, 8)}), "22P04",
       "pgvalve: COPY row 2: row field count is 1, expected 2"},
      {ok + binary_tuple({"abc", "x"}), "22P02",
       "pgvalve: COPY row 2: a binary device_id of 3 bytes is not a value of sharding.key_type: "
       "bigint (an int2, int4 or int8: 2, 4 or 8 bytes)"},
      {ok + be(2, 2) + be(-2, 4), "22P04", "pgvalve: COPY row 2: invalid field size -2"},
      {ok + kTrailer + "x", "22P04", "pgvalve: COPY row 2: received copy data after EOF marker"},
  };
  for (const Case& c : cases) {
    const Result whole = feed(kBinary, c.data, policy);
    EXPECT_FALSE(whole.ok);
    EXPECT_EQ(whole.sqlstate, c.sqlstate) << whole.error;
    EXPECT_TRUE(whole.error.starts_with(c.message)) << whole.error;
    // The same error wherever the data is cut.
    const Result bytes = feed(planned(kBinary, policy), policy, bytes_of(c.data));
    EXPECT_EQ(bytes.error, whole.error);
  }
}

TEST(CopyRows, BinaryDataEndingInsideAPartIsAnError) {
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  const std::string tuple = reading(1);
  for (std::size_t cut = 1; cut < tuple.size(); ++cut) {
    const Result r = feed(kBinary, binary_header() + tuple.substr(0, cut), policy);
    EXPECT_FALSE(r.ok) << cut;
    EXPECT_EQ(r.sqlstate, "22P04") << cut;
    EXPECT_TRUE(r.error.starts_with("pgvalve: COPY row 1: unexpected EOF in COPY data")) << r.error;
  }
  const std::string header = binary_header();
  for (std::size_t cut = 0; cut < header.size(); ++cut) {
    const Result r = feed(kBinary, header.substr(0, cut), policy);
    EXPECT_FALSE(r.ok) << cut;
    EXPECT_TRUE(r.error.starts_with("pgvalve: COPY file header:")) << r.error;
  }
}

TEST(CopyRows, BinaryFieldLongerThanTheLimitFailsAtItsLength) {
  // A tuple announcing a 1 GB value fails as soon as its length is read: nothing waits for (or
  // sets room aside for) bytes that were only announced.
  const ShardingPolicy policy = two_shards(KeyType::Bigint);
  const CopyPlan plan = planned(kBinary, policy);
  CopyRows copy(plan, policy, 4096);
  std::vector<std::string> out(2);
  EXPECT_FALSE(copy.add(binary_header() + be(2, 2) + be(8, 4) + be(1, 8) + be(1 << 30, 4), out));
  EXPECT_EQ(copy.sqlstate(), "54000");
  EXPECT_TRUE(copy.error().starts_with("pgvalve: COPY row 1: the tuple is longer than 4096 bytes"))
      << copy.error();
  // A tuple of exactly the limit fits.
  const std::size_t fixed = 2 + 4 + 8 + 4;
  const std::string fits = binary_tuple({be(1, 8), std::string(4096 - fixed, 'v')});
  ASSERT_EQ(fits.size(), 4096u);
  const Result r = feed(plan, policy, {binary_header(), fits}, true, 4096);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[1], binary_header() + fits);
}

TEST(CopyRows, OutputIsOnlyAppendedTo) {
  const ShardingPolicy policy = two_shards();
  const CopyPlan plan = planned(kText, policy);
  CopyRows copy(plan, policy, 1 << 20);
  std::vector<std::string> out = {"before0|", "before1|"};
  ASSERT_TRUE(copy.add("1\ta\n2\tb\n", out));
  EXPECT_EQ(out[0], "before0|2\tb\n");
  EXPECT_EQ(out[1], "before1|1\ta\n");
}

}  // namespace
}  // namespace pgvalve::routing
