// TextOrder: text compared as PostgreSQL compares it in a database's collation.
#include "routing/text_order.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace pgvalve::routing {
namespace {

// tests/run builds en_US.UTF-8 on the test host; without it the tests that need it say so.
const TextOrder* english() {
  const TextOrder* order = TextOrder::of('c', "en_US.UTF-8");
  return order->usable() ? order : nullptr;
}

std::vector<std::string> sorted(std::vector<std::string> words, const TextOrder& order) {
  std::sort(words.begin(), words.end(),
            [&](const std::string& a, const std::string& b) { return order.compare(a, b) < 0; });
  return words;
}

TEST(TextOrder, CAndPosixAndTheBuiltinProviderCompareTheBytes) {
  for (const TextOrder* order : {TextOrder::of('c', "C"), TextOrder::of('c', "POSIX"),
                                 TextOrder::of('b', "C.UTF-8"), &TextOrder::bytes()}) {
    ASSERT_TRUE(order->usable()) << order->name();
    EXPECT_LT(order->compare("B", "a"), 0) << order->name();
    EXPECT_LT(order->compare("a", "ab"), 0);
    EXPECT_EQ(order->compare("x", "x"), 0);
    EXPECT_GT(order->compare("\xc3\xa9", "z"), 0) << "é after z by its UTF-8 bytes";
  }
}

TEST(TextOrder, ALibcLocaleOrdersAsItsStrcollWithTiesBrokenByTheBytes) {
  const TextOrder* order = english();
  if (order == nullptr) GTEST_SKIP() << "en_US.UTF-8 is not installed on this host";
  EXPECT_EQ(order->name(), "libc en_US.UTF-8");
  EXPECT_EQ(sorted({"Banana", "apple", "banana", "Apple", "ab", "a-b",
                    "\xc3\xa9"
                    "clair",
                    "eclair", "Zebra", "_x", "x"},
                   *order),
            (std::vector<std::string>{"a-b", "ab", "apple", "Apple", "banana", "Banana", "eclair",
                                      "\xc3\xa9"
                                      "clair",
                                      "_x", "x", "Zebra"}));
  EXPECT_EQ(order->compare("same", "same"), 0);
  // A value longer than any before grows the scratch; the answer does not change.
  const std::string long_a(100000, 'a');
  EXPECT_LT(order->compare(long_a, long_a + "b"), 0);
  EXPECT_GT(order->compare("b", long_a), 0);
}

TEST(TextOrder, AnIcuCollationOrdersAsIcuWithTiesBrokenByTheBytes) {
  const TextOrder* root = TextOrder::of('i', "und");
  ASSERT_TRUE(root->usable()) << root->problem();
  EXPECT_EQ(root->name(), "icu und");
  EXPECT_EQ(sorted({"b", "B", "A", "a", "_x", "10", "9", "\xc3\xa9", "e", "f"}, *root),
            (std::vector<std::string>{"_x", "10", "9", "a", "A", "b", "B", "e", "\xc3\xa9", "f"}));
  // Swedish puts ä after z; the root collation next to a.
  const TextOrder* swedish = TextOrder::of('i', "sv");
  ASSERT_TRUE(swedish->usable()) << swedish->problem();
  EXPECT_GT(swedish->compare("\xc3\xa4", "z"), 0);
  EXPECT_LT(root->compare("\xc3\xa4", "z"), 0);
  // Canonically equivalent (a precomposed é and e + U+0301) are equal to ICU: the bytes
  // decide, as in PostgreSQL.
  EXPECT_GT(root->compare("\xc3\xa9", "e\xcc\x81"), 0) << "0xc3 after 'e'";
  EXPECT_LT(root->compare("e\xcc\x81", "\xc3\xa9"), 0);
}

TEST(TextOrder, ThreadsCompareAtOnce) {
  std::vector<std::string> words;
  for (int i = 0; i < 2000; ++i)
    words.push_back((i % 3 ? "W" : "w") + std::to_string(i * 7919 % 2000) + "\xc3\xa4");
  for (const TextOrder* order : {TextOrder::of('i', "sv"), english()}) {
    if (order == nullptr) continue;
    const std::vector<std::string> once = sorted(words, *order);
    std::vector<std::vector<std::string>> results(4);
    std::vector<std::thread> threads;
    for (auto& r : results)
      threads.emplace_back([&] { r = sorted(words, *order); });
    for (auto& t : threads)
      t.join();
    for (const auto& r : results)
      EXPECT_EQ(r, once) << order->name();
  }
}

TEST(TextOrder, OneObjectPerCollation) {
  EXPECT_EQ(TextOrder::of('c', "C"), TextOrder::of('c', "C"));
  EXPECT_NE(TextOrder::of('c', "C"), TextOrder::of('c', "POSIX"));
}

TEST(TextOrder, OrdersPgvalveCannotReproduceSayWhy) {
  const TextOrder* missing = TextOrder::of('c', "xx_NOWHERE.UTF-8");
  EXPECT_FALSE(missing->usable());
  EXPECT_NE(missing->problem().find("\"xx_NOWHERE.UTF-8\" is not installed on pgvalve's host"),
            std::string::npos)
      << missing->problem();
  for (const char* name : {"../../tmp/x", "/usr/lib/locale/en_US.utf8", "", "en US"}) {
    EXPECT_FALSE(TextOrder::of('c', name)->usable()) << name;
  }
  const TextOrder* differ =
      TextOrder::differing(*TextOrder::of('c', "C"), *TextOrder::of('i', "und"));
  EXPECT_FALSE(differ->usable());
  EXPECT_NE(differ->problem().find("different collations (C on one, icu und on another)"),
            std::string::npos)
      << differ->problem();
}

TEST(TextOrder, TheHealthChecksListFindsTheDatabase) {
  const std::string catalog =
      "postgres\tc\tC\n"
      "telemetry\tc\tPOSIX\n"
      "broken line\n"
      "icu_db\ti\tund\n";
  EXPECT_EQ(TextOrder::from_catalog(catalog, "telemetry"), TextOrder::of('c', "POSIX"));
  EXPECT_EQ(TextOrder::from_catalog(catalog, "icu_db"), TextOrder::of('i', "und"));
  EXPECT_EQ(TextOrder::from_catalog(catalog, "tele"), nullptr);
  EXPECT_EQ(TextOrder::from_catalog(catalog, "missing"), nullptr);
  EXPECT_EQ(TextOrder::from_catalog("", "postgres"), nullptr);
}

TEST(TextOrderSlot, EmptyUntilTheChecksSet) {
  TextOrderSlot slot;
  EXPECT_EQ(slot.get(), nullptr);
  slot.set(&TextOrder::bytes());
  EXPECT_EQ(slot.get(), &TextOrder::bytes());
}

}  // namespace
}  // namespace pgvalve::routing
