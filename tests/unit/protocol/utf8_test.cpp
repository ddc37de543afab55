#include "protocol/utf8.h"

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(Utf8, ValidTextIsKept) {
  for (const std::string text : {"", "plain ascii", "caf\xC3\xA9", "\xE2\x82\xAC 20",
                                 "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF", "\xED\x9F\xBF"}) {
    EXPECT_TRUE(is_valid_utf8(text)) << text;
    EXPECT_EQ(to_valid_utf8(text), text);
  }
}

TEST(Utf8, EachInvalidPartBecomesOneReplacementCharacter) {
  // A startup packet's user name and a statement's identifier as a client may send them.
  EXPECT_EQ(to_valid_utf8("app\xFF\xFE"), "app" + kReplacement + kReplacement);
  EXPECT_EQ(to_valid_utf8("tele\xFFmetry"), "tele" + kReplacement + "metry");
  EXPECT_EQ(to_valid_utf8("bad\xE9\xFF ident"), "bad" + kReplacement + kReplacement + " ident");
  // A truncated sequence is one part, whatever follows it.
  EXPECT_EQ(to_valid_utf8("\xE2\x82"
                          "A"),
            kReplacement + "A");
  EXPECT_EQ(to_valid_utf8("\xF0\x9F\x98"), kReplacement);
  // Overlong forms, surrogates, above U+10FFFF, a stray continuation byte.
  EXPECT_EQ(to_valid_utf8("\xC0\xAF"), kReplacement + kReplacement);
  EXPECT_EQ(to_valid_utf8("\xE0\x80\xAF"), kReplacement + kReplacement + kReplacement);
  EXPECT_EQ(to_valid_utf8("\xED\xA0\x80"), kReplacement + kReplacement + kReplacement);
  EXPECT_EQ(to_valid_utf8("\xF4\x90\x80\x80"),
            kReplacement + kReplacement + kReplacement + kReplacement);
  EXPECT_EQ(to_valid_utf8("\x80x"), kReplacement + "x");
  for (const std::string text : {"app\xFF", "\xC0\xAF", "\xED\xA0\x80", "\x80"}) {
    EXPECT_FALSE(is_valid_utf8(text)) << text;
    EXPECT_TRUE(is_valid_utf8(to_valid_utf8(text)));
  }
}

}  // namespace
}  // namespace pgvalve::protocol
