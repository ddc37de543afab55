#include "routing/fingerprint.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace pgvalve::routing {
namespace {

void expect_same(std::string_view a, std::string_view b) {
  EXPECT_EQ(normalize(a), normalize(b)) << a << "\n" << b;
  EXPECT_EQ(fingerprint(a), fingerprint(b)) << a << "\n" << b;
}

void expect_different(std::string_view a, std::string_view b) {
  EXPECT_NE(normalize(a), normalize(b)) << a << "\n" << b;
  EXPECT_NE(fingerprint(a), fingerprint(b)) << a << "\n" << b;
}

TEST(Normalize, LiteralsAndParamsBecomePlaceholders) {
  EXPECT_EQ(normalize("SELECT * FROM telemetry WHERE device_id = 42 AND kind = 'temp' AND "
                      "ts > $1 AND body = $$x$$ AND r = 1.5e3"),
            "select * from telemetry where device_id = $? and kind = $? and ts > $? and body = $? "
            "and r = $?");
}

TEST(Normalize, PrefixedStringsAreLiterals) {
  EXPECT_EQ(normalize("select E'a\\'b', B'01', X'ff', U&'x', N'y'"),
            "select $? , $? , $? , $? , $?");
}

TEST(Normalize, KeywordsAndIdentifiersLowerCasedQuotedKept) {
  EXPECT_EQ(normalize("SELECT Device_ID FROM \"Telemetry\""),
            "select device_id from \"Telemetry\"");
}

TEST(Normalize, CommentsAndWhitespaceDropped) {
  EXPECT_EQ(normalize("/* pgvalve: primary */ select\n\t1 -- trailing\n"), "select $?");
}

TEST(Normalize, InListCollapses) {
  EXPECT_EQ(normalize("select 1 from t where id IN (1, 2, 3)"),
            "select $? from t where id in ( $? )");
  EXPECT_EQ(normalize("select 1 from t where id not in ($1,$2)"),
            "select $? from t where id not in ( $? )");
  EXPECT_EQ(normalize("select 1 from t where id in (-1, 'a', $3)"),
            "select $? from t where id in ( $? )");
}

TEST(Normalize, InWithNonLiteralsDoesNotCollapse) {
  EXPECT_EQ(normalize("select 1 from t where id in (select id from u)"),
            "select $? from t where id in ( select id from u )");
  EXPECT_EQ(normalize("select 1 from t where id in (a, 2)"),
            "select $? from t where id in ( a , $? )");
  EXPECT_EQ(normalize("select 1 from t where id in (1 + 2)"),
            "select $? from t where id in ( $? + $? )");
}

TEST(Normalize, ArrayLiteralCollapses) {
  EXPECT_EQ(normalize("select * from t where id = any(ARRAY[1,2,3])"),
            "select * from t where id = any ( array [ $? ] )");
}

TEST(Normalize, NegativeNumbersFoldInOperandPosition) {
  EXPECT_EQ(normalize("select -1, x - 1, f(-2.5), a=-3, b - -4 from t where c = - 5"),
            "select $? , x - $? , f ( $? ) , a = $? , b - $? from t where c = $?");
}

TEST(Normalize, MinusAfterValueKeywordStaysSubtraction) {
  EXPECT_EQ(normalize("select current_date - 1, date - 1"), "select current_date - $? , date - $?");
  expect_different("select date - 1 from t", "select date '2024-01-01' from t");
}

TEST(Normalize, OrderByAndGroupByPositionsStay) {
  EXPECT_EQ(normalize("select a, count(*) from t group by 1 order by 2 desc, 1 limit 10"),
            "select a , count ( * ) from t group by 1 order by 2 desc , 1 limit $?");
  EXPECT_EQ(normalize("select a from t order by a + 1, 2"), "select a from t order by a + $? , 2");
  EXPECT_EQ(normalize("select a from (select a from t order by 1) s where b = 2"),
            "select a from ( select a from t order by 1 ) s where b = $?");
  EXPECT_EQ(normalize("select a, b from t order by 1 union select 1, 2"),
            "select a , b from t order by 1 union select $? , $?");
}

TEST(Normalize, TrailingSemicolonsDropped) {
  EXPECT_EQ(normalize("select 1;"), "select $?");
  EXPECT_EQ(normalize("select 1 ; ; -- done"), "select $?");
  EXPECT_EQ(normalize("select 1; select 2;"), "select $? ; select $?");
}

TEST(Normalize, UnterminatedInput) {
  EXPECT_EQ(normalize("select 'abc"), "select $?");
  EXPECT_EQ(normalize("select 1 /* open"), "select $?");
  EXPECT_EQ(normalize(""), "");
}

TEST(Fingerprint, EqualsHashOfNormalizedText) {
  for (std::string_view sql : {"select 1", "", "SELECT * FROM t WHERE a IN (1,2) ORDER BY 1;",
                               "insert into telemetry (device_id, ts, v) values ($1, $2, $3)"}) {
    const std::string n = normalize(sql);
    EXPECT_EQ(fingerprint(sql), XXH3_64bits(n.data(), n.size())) << sql;
  }
}

TEST(Fingerprint, LongStatementsHashTheSameAsOneShot) {
  std::string sql = "insert into telemetry (device_id, v) values ";
  for (int i = 0; i < 2000; ++i) {
    sql += (i ? ", (" : "(") + std::to_string(i) + ", 'Value_" + std::to_string(i) + "')";
  }
  const std::string n = normalize(sql);
  ASSERT_GT(n.size(), 4096u);
  EXPECT_EQ(fingerprint(sql), XXH3_64bits(n.data(), n.size()));
}

// Words are lower-cased eight bytes at a time where the statement has eight more bytes to read:
// random statements of words in mixed case (with UTF-8 and the bytes next to 'A' and 'Z'),
// literals and punctuation hash as their normalised text, which is lower-cased byte by byte.
TEST(Fingerprint, EqualsHashOfNormalizedTextForRandomStatements) {
  std::mt19937 random(7);
  const std::string word_bytes = "aAzZmMqQ_09$\xc3\x84\xc3\xa9";
  const std::vector<std::string> between = {" ", ",", "(", ")", " = ",        "'Lit'", " 12 ", ";",
                                            "@", "[", "`", "{", "\"Quoted\"", " -3",   "\n"};
  for (int n = 0; n < 3000; ++n) {
    std::string sql;
    for (auto words = 1 + random() % (n % 100 == 0 ? 400 : 12); words > 0; --words) {
      const auto length = 1 + random() % 20;
      std::string word(1, "aAzZmMqQ_"[random() % 9]);
      while (word.size() < length)
        word += word_bytes[random() % word_bytes.size()];
      sql += word + between[random() % between.size()];
    }
    sql.resize(sql.size() - random() % std::min<std::size_t>(sql.size(), 4));
    const std::string normalized = normalize(sql);
    ASSERT_EQ(fingerprint(sql), XXH3_64bits(normalized.data(), normalized.size())) << sql;
  }
}

std::uint64_t walked(const std::string& sql) {
  const std::string normalized = normalize(sql);
  return XXH3_64bits(normalized.data(), normalized.size());
}

TEST(Fingerprint, EverydayStatementsTakeTheOnePassPath) {
  for (const char* sql : {
           "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
           "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
           "INSERT INTO readings (device_id, ts, temperature) VALUES (42, now(), 21.5);;",
           "update t set a = (a + 1), b = 'it''s' where x.id >= .5e3 and y <> 1e",
           "select a::int, b[1], c := 2 from t where d != 3 and e ~* 'x' limit 10",
           " ;select 1abc, x - 1, -2, (-.5), f(- 3), g / h, p->>'k', 1 - -1",
           "select avg(temperature) from readings where device_id in (1, -2, '3', $4) and "
           "ts > now() - interval '1 hour' group by device_id order by device_id desc, ts",
           "select array[1, 2] || array [x], a in (b), c in (select 1), d in ((1))",
       }) {
    std::uint64_t value = 0;
    EXPECT_TRUE(fingerprint_everyday(sql, value)) << sql;
    EXPECT_EQ(value, walked(sql)) << sql;
    EXPECT_EQ(fingerprint(sql), walked(sql)) << sql;
  }
}

TEST(Fingerprint, WhatNeedsTheWalkIsLeftToIt) {
  for (const char* sql : {"select 1 -- c",
                          "select /* c */ 1",
                          "select a -/**/ 1",
                          "select \"Q\"",
                          "select $$x$$",
                          "select E'x'",
                          "select U&'x'",
                          "select x'1f'",
                          "select 'a'\n 'b'",
                          "select 'x",
                          "select 1..2",
                          "select a++b",
                          "select a+-1",
                          "select 1 order by 1",
                          "select 1 order by a, 2",
                          "select * from t where a in (1 -- c\n)",
                          "select * from t where a in (x'1f')",
                          "select * from t where a in (1, $$x$$)",
                          "M mt),1,);",
                          "select caf\xc3\xa9",
                          "select {"}) {
    std::uint64_t value = 0;
    EXPECT_FALSE(fingerprint_everyday(sql, value)) << sql;
    EXPECT_EQ(fingerprint(sql), walked(sql)) << sql;
  }
}

// Random statements from the pieces the one-pass path takes and a few it leaves: whenever it
// answers, it answers what the walk does.
TEST(Fingerprint, OnePassPathAgreesWithTheWalk) {
  std::mt19937 random(11);
  const std::vector<std::string> pieces = {
      "select", "FROM",  "Tbl_1", "a$b",  " ",       "  ",       "\t",    "\n",  "(",     ")",
      ",",      "[",     "]",     ";",    ".",       ":",        "::",    ":=",  "=",     "<=",
      "<>",     "+",     "*",     "%",    "!=",      "+*",       "*+",    "~",   "-",     "/",
      "->>",    "-",     " - ",   "1",    "23",      "4.5",      ".6",    "7e8", "9E-",   "1e+2",
      "3.",     "..",    "'s'",   "''",   "'it''s'", "'u'\n'v'", "e",     "x",   "u",     "&",
      "--c\n",  "/*c*/", "\"q\"", "$1",   "$$",      "in",       " IN (", "By",  "order", "group",
      "ARRAY",  "and",   "limit", "desc", "then"};
  int everyday = 0;
  for (int n = 0; n < 40000; ++n) {
    std::string sql;
    for (auto k = 1 + random() % 16; k > 0; --k)
      sql += pieces[random() % pieces.size()];
    std::uint64_t value = 0;
    if (fingerprint_everyday(sql, value)) {
      ++everyday;
      ASSERT_EQ(value, walked(sql)) << sql;
    }
    ASSERT_EQ(fingerprint(sql), walked(sql)) << sql;
  }
  EXPECT_GT(everyday, 4000);
}

TEST(LiteralTemplate, CutsNumbersAndStringsThatStartATokenOnly) {
  char buffer[512];
  LiteralStarts starts;
  EXPECT_EQ(
      literal_template("SELECT abalance FROM pgbench_accounts WHERE aid = 81234;", buffer, starts),
      "SELECT abalance FROM pgbench_accounts WHERE aid = \x01;");
  ASSERT_EQ(starts.count, 1u);
  EXPECT_EQ(starts.at[0], 50u);

  EXPECT_EQ(
      literal_template("insert into t1 values ($1, -2.5e3, 'it''s', x.y, 'a'7)", buffer, starts),
      "insert into t1 values ($1, -\x01, \x02, x.y, \x02\x01)");
  EXPECT_EQ(starts.count, 4u);
  EXPECT_EQ(literal_template("1", buffer, starts), "\x01");

  // Digits inside words and after '.', and strings after a word byte (E'', x''), stay.
  EXPECT_EQ(literal_template("select t1.c2 from $3 where a = .5 and b = E'x'", buffer, starts), "");
  EXPECT_EQ(literal_template("select 1 from t where a = 'open", buffer, starts), "");
  EXPECT_EQ(literal_template(std::string("select 1, '\x01' from t\x02"), buffer, starts), "");
  EXPECT_EQ(literal_template(std::string("select 1, '\x01\x00' from t", 21), buffer, starts),
            "select \x01, \x02 from t");
  std::string many = "select 0";
  for (std::size_t i = 0; i < LiteralStarts::kMax; ++i)
    many += ", " + std::to_string(i);
  EXPECT_EQ(literal_template(many, buffer, starts), "");
}

// A client that writes its values into the text (pgbench -M simple) sends the same statement
// with other numbers: one entry answers them all.
TEST(FingerprintCache, TextsThatDifferInLiteralsOnlyShareAnEntry) {
  FingerprintCache cache;
  for (int aid = 1; aid < 200; aid += 7) {
    const std::string sql =
        "SELECT abalance FROM pgbench_accounts WHERE aid = " + std::to_string(aid) + ";";
    ASSERT_EQ(cache.fingerprint(sql), fingerprint(sql)) << sql;
    const std::string update = "UPDATE readings SET note = 'n" + std::to_string(aid) +
                               "' WHERE device_id IN (" + std::to_string(aid) + ", 2)";
    ASSERT_EQ(cache.fingerprint(update), fingerprint(update)) << update;
  }
  EXPECT_EQ(cache.template_hits(), 2u * 28u);
}

// ORDER BY 1 and ORDER BY 2 name different columns: their texts are kept as written and
// never answered for each other.
TEST(FingerprintCache, PositionsInOrderByAreNotLiterals) {
  FingerprintCache cache;
  const std::string one = "select a, b from t where c = 5 order by 1";
  const std::string two = "select a, b from t where c = 5 order by 2";
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(cache.fingerprint(one), fingerprint(one));
    EXPECT_EQ(cache.fingerprint(two), fingerprint(two));
  }
  EXPECT_NE(fingerprint(one), fingerprint(two));
  EXPECT_EQ(cache.template_hits(), 0u);
  EXPECT_EQ(cache.hits(), 2u);  // by their exact texts
}

// Random statements and copies of them with other literals in the same places: the cache always
// answers what fingerprint() does, and answers many of the copies by their template.
TEST(FingerprintCache, AnswersWhatFingerprintDoesForOtherLiterals) {
  std::mt19937 random(17);
  const std::vector<std::string> pieces = {
      "select", "FROM", "Tbl_1", "a$b", " ",     "  ",  "\t",    "\n",    "(",     ")",
      ",",      "[",    "]",     ";",   ".",     ":",   "::",    "=",     "<=",    "+",
      "*",      "-",    " - ",   "..",  "e",     "x",   "u",     "&",     "--c\n", "/*c*/",
      "\"q\"",  "$1",   "$$",    "in",  " IN (", "By",  "order", "group", "ARRAY", "and",
      "limit",  "desc", "then",  "NUM", "NUM",   "NUM", "STR",   "STR"};
  const std::vector<std::string> numbers = {"1", "23", "4.5", "7e8", "1e+2", "3.", ".6", "9E-"};
  const std::vector<std::string> strings = {"'s'", "''", "'it''s'", "'u'\n'v'", "'9'", "'--'"};
  FingerprintCache cache;
  for (int n = 0; n < 20000; ++n) {
    std::vector<std::string> chosen;
    for (auto k = 1 + random() % 16; k > 0; --k)
      chosen.push_back(pieces[random() % pieces.size()]);
    for (int copy = 0; copy < 3; ++copy) {
      std::string sql;
      for (const std::string& piece : chosen) {
        if (piece == "NUM") {
          sql += numbers[random() % numbers.size()];
        } else if (piece == "STR") {
          sql += strings[random() % strings.size()];
        } else {
          sql += piece;
        }
      }
      ASSERT_EQ(cache.fingerprint(sql), fingerprint(sql)) << sql;
    }
  }
  EXPECT_GT(cache.template_hits(), 2000u);
}

// The cache answers what fingerprint() does, for texts it holds, texts that pushed each other
// out of a slot and texts too long to keep; a text sent again is a hit.
TEST(FingerprintCache, AnswersWhatFingerprintDoes) {
  FingerprintCache cache;
  std::vector<std::string> texts;
  for (int i = 0; i < 3 * static_cast<int>(FingerprintCache::kSlots); ++i) {
    texts.push_back("select a" + std::to_string(i) + " from t where id = $1");
  }
  texts.push_back("select '" + std::string(FingerprintCache::kMaxText, 'x') + "' from t");
  for (int round = 0; round < 2; ++round) {
    for (const std::string& sql : texts)
      ASSERT_EQ(cache.fingerprint(sql), fingerprint(sql)) << sql;
  }
  const std::uint64_t hits = cache.hits();
  EXPECT_EQ(cache.fingerprint(texts.back()), fingerprint(texts.back()));
  EXPECT_EQ(cache.hits(), hits);  // too long to keep
  EXPECT_EQ(cache.fingerprint(texts.front()), fingerprint(texts.front()));
  EXPECT_EQ(cache.fingerprint(texts.front()), fingerprint(texts.front()));
  EXPECT_EQ(cache.hits(), hits + 1);
}

TEST(Fingerprint, IgnoresLiterals) {
  expect_same("select * from t where a = 1 and b = 'x'", "select * from t where a = 2 and b = 'y'");
  expect_same("select * from t where a = $1", "select * from t where a = 7");
  expect_same("select * from t where a = $$x$$", "select * from t where a = 'x'");
  expect_same("select * from t where a = -1", "select * from t where a = 1");
}

TEST(Fingerprint, IgnoresWhitespaceCommentsAndCase) {
  expect_same("SELECT  *\nFROM T\twhere A=1", "select * from t where a = 1");
  expect_same("/* pgvalve: primary */ select 1 -- x", "select 1");
  expect_same("select 1;", "select 1");
}

TEST(Fingerprint, IgnoresInListLength) {
  expect_same("select * from t where id in (1)", "select * from t where id in (1, 2, 3, 4, 5)");
  expect_same("select * from t where id in ($1, $2)", "select * from t where id in ('a','b','c')");
}

TEST(Fingerprint, DiffersForDifferentStructure) {
  expect_different("select * from t where a = 1", "select * from t where b = 1");
  expect_different("select * from t where a = 1", "select * from u where a = 1");
  expect_different("select * from t where a = 1", "select * from t where a > 1");
  expect_different("select * from t where a in (1, 2)", "select * from t where a in (1, b)");
  expect_different("select a from t", "select \"A\" from t");
  expect_different("select a from t order by 1", "select a from t order by 2");
  expect_different("select 1; select 2", "select 1");
  expect_different("select x - 1 from t", "select x + 1 from t");
}

TEST(Fingerprint, PinnedValue) {
  // Frozen on purpose: fingerprints are user-visible (SHOW QUERIES, slow-query samples,
  // metrics). If this changes, every user's fingerprints change; do it only deliberately,
  // with a release note.
  EXPECT_EQ(normalize("SELECT * FROM telemetry WHERE device_id IN (1, 2, 3) AND ts > '2024-01-01'"),
            "select * from telemetry where device_id in ( $? ) and ts > $?");
  EXPECT_EQ(
      fingerprint("SELECT * FROM telemetry WHERE device_id IN (1, 2, 3) AND ts > '2024-01-01'"),
      0xa01ab24a466da67aULL);
}

}  // namespace
}  // namespace pgvalve::routing
