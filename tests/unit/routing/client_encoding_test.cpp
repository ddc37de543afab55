#include "routing/client_encoding.h"

#include <gtest/gtest.h>

namespace pgvalve::routing {
namespace {

TEST(ClientEncoding, NamesAreReadAsPostgresReadsThem) {
  EXPECT_EQ(ascii_in_characters("SJIS"), AsciiInCharacters::Sjis);
  EXPECT_EQ(ascii_in_characters("Shift_JIS"), AsciiInCharacters::Sjis);
  EXPECT_EQ(ascii_in_characters("win932"), AsciiInCharacters::Sjis);
  EXPECT_EQ(ascii_in_characters("BIG5"), AsciiInCharacters::Big5);
  EXPECT_EQ(ascii_in_characters("gbk"), AsciiInCharacters::Big5);
  EXPECT_EQ(ascii_in_characters("UHC"), AsciiInCharacters::Big5);
  EXPECT_EQ(ascii_in_characters("JOHAB"), AsciiInCharacters::Johab);
  EXPECT_EQ(ascii_in_characters("GB18030"), AsciiInCharacters::Gb18030);
  for (const char* safe : {"UTF8", "utf-8", "LATIN1", "EUC_JP", "WIN1252", "SQL_ASCII", "",
                           "a name longer than any encoding's"}) {
    EXPECT_EQ(ascii_in_characters(safe), AsciiInCharacters::None) << safe;
  }
}

TEST(ClientEncoding, FindsCharactersWithAnAsciiByteInThem) {
  // SJIS: 表 is \x95\x5C (a backslash second); あ is \x82\xA0; \xB1 is a half-width katakana.
  EXPECT_TRUE(has_ascii_inside_characters("E'\x95\x5c'", AsciiInCharacters::Sjis));
  EXPECT_FALSE(has_ascii_inside_characters("'\x82\xa0', 2", AsciiInCharacters::Sjis));
  EXPECT_FALSE(has_ascii_inside_characters("\xb1\\", AsciiInCharacters::Sjis));
  EXPECT_FALSE(has_ascii_inside_characters("select 1", AsciiInCharacters::Sjis));
  // BIG5: 許 is \xB3\x5C.
  EXPECT_TRUE(has_ascii_inside_characters("\xb3\x5c", AsciiInCharacters::Big5));
  // GB18030: a four-byte character holds ASCII digits; a two-byte one may hold '@'.
  EXPECT_TRUE(has_ascii_inside_characters("\x81\x30\x81\x30", AsciiInCharacters::Gb18030));
  EXPECT_TRUE(has_ascii_inside_characters("\x81\x40", AsciiInCharacters::Gb18030));
  EXPECT_FALSE(has_ascii_inside_characters("\x81\x80", AsciiInCharacters::Gb18030));
  // Encodings whose ASCII bytes are always ASCII characters: nothing to find.
  EXPECT_FALSE(has_ascii_inside_characters("E'\x95\x5c'", AsciiInCharacters::None));
}

}  // namespace
}  // namespace pgvalve::routing
