#include "protocol/frame.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "test_util.h"

namespace pgvalve::protocol {
namespace {

using namespace std::string_literals;
using testing::ExactBuffer;

constexpr std::size_t kMax = 1 << 20;

const std::string kQuery = "Q\0\0\0\x0dSELECT 1\0"s;

TEST(DecodeFrame, WholeFrame) {
  ExactBuffer buf(kQuery);
  FrameResult r = decode_frame(buf.view(), kMax);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(r.frame.tag, 'Q');
  EXPECT_EQ(r.frame.body, "SELECT 1\0"s);
  EXPECT_EQ(r.frame.whole, kQuery);
  // Views point into the caller's buffer: nothing is copied.
  EXPECT_EQ(r.frame.whole.data(), buf.view().data());
  EXPECT_EQ(r.frame.body.data(), buf.view().data() + kFrameHeaderSize);
  EXPECT_EQ(r.error, nullptr);
}

TEST(DecodeFrame, EmptyBodyFrame) {
  const std::string sync = "S\0\0\0\x04"s;
  FrameResult r = decode_frame(ExactBuffer(sync).view(), kMax);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(r.frame.tag, 'S');
  EXPECT_TRUE(r.frame.body.empty());
  EXPECT_EQ(r.frame.whole.size(), 5u);
}

TEST(DecodeFrame, EmptyInputNeedsMore) {
  FrameResult r = decode_frame({}, kMax);
  EXPECT_EQ(r.status, DecodeStatus::NeedMoreData);
  EXPECT_EQ(r.needed, 0u);
}

TEST(DecodeFrame, EveryTruncationNeedsMoreData) {
  for (std::size_t cut = 0; cut < kQuery.size(); ++cut) {
    ExactBuffer buf(std::string_view(kQuery).substr(0, cut));
    FrameResult r = decode_frame(buf.view(), kMax);
    ASSERT_EQ(r.status, DecodeStatus::NeedMoreData) << "cut at " << cut;
    // Once the header is complete the caller learns the full size of the frame.
    EXPECT_EQ(r.needed, cut < kFrameHeaderSize ? 0u : kQuery.size()) << "cut at " << cut;
    EXPECT_EQ(r.error, nullptr);
  }
}

TEST(DecodeFrame, TakesOnlyTheFirstOfSeveralFrames) {
  const std::string two = kQuery + "S\0\0\0\x04"s;
  FrameResult r = decode_frame(two, kMax);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(r.frame.whole.size(), kQuery.size());
  FrameResult r2 = decode_frame(std::string_view(two).substr(r.frame.whole.size()), kMax);
  ASSERT_EQ(r2.status, DecodeStatus::Ok);
  EXPECT_EQ(r2.frame.tag, 'S');
}

TEST(DecodeFrame, LengthBelowFourIsInvalid) {
  for (char len : {'\0', '\x01', '\x02', '\x03'}) {
    std::string bytes = "Q\0\0\0"s + len + "xxxx";
    FrameResult r = decode_frame(bytes, kMax);
    EXPECT_EQ(r.status, DecodeStatus::Invalid) << int(len);
    ASSERT_NE(r.error, nullptr);
    EXPECT_NE(std::string(r.error).find("invalid message length"), std::string::npos);
    EXPECT_EQ(r.needed, 0u);
  }
}

TEST(DecodeFrame, NegativeLengthIsInvalid) {
  // PostgreSQL reads the length as a signed int32.
  FrameResult r = decode_frame("Q\x80\0\0\0"s, SIZE_MAX);
  EXPECT_EQ(r.status, DecodeStatus::Invalid);
  EXPECT_NE(r.error, nullptr);
}

TEST(DecodeFrame, OversizedIsInvalidFromTheHeaderAlone) {
  // length 200 -> 201 bytes in all; only the header has arrived.
  FrameResult r = decode_frame("d\0\0\0\xc8"s, 100);
  ASSERT_EQ(r.status, DecodeStatus::Invalid);
  ASSERT_NE(r.error, nullptr);
  EXPECT_STREQ(r.error, "message of 201 bytes exceeds max_message_bytes 100");
  EXPECT_EQ(r.needed, 0u);
}

TEST(DecodeFrame, SizeLimitCountsTagAndLength) {
  // kQuery is 14 bytes in all.
  EXPECT_EQ(decode_frame(kQuery, 14).status, DecodeStatus::Ok);
  EXPECT_EQ(decode_frame(kQuery, 13).status, DecodeStatus::Invalid);
  // The limit applies before the body is complete, too.
  EXPECT_EQ(decode_frame(std::string_view(kQuery).substr(0, 6), 13).status, DecodeStatus::Invalid);
}

TEST(DecodeFrame, LargeLengthNeedsMoreWhenAllowed) {
  FrameResult r = decode_frame("d\x10\0\0\0"s, 1u << 30);
  EXPECT_EQ(r.status, DecodeStatus::NeedMoreData);
  EXPECT_EQ(r.needed, 0x10000001u);
}

TEST(DecodeFrame, RandomGarbageNeverOverreads) {
  std::mt19937 rng(12345);
  int ok = 0;
  for (int i = 0; i < 5000; ++i) {
    std::string bytes = testing::random_structured_bytes(rng, 64);
    ExactBuffer buf(bytes);
    FrameResult r = decode_frame(buf.view(), 48);
    switch (r.status) {
      case DecodeStatus::Ok:
        ++ok;
        ASSERT_LE(r.frame.whole.size(), bytes.size());
        ASSERT_EQ(r.frame.whole.size(), r.frame.body.size() + kFrameHeaderSize);
        ASSERT_LE(r.frame.whole.size(), 48u);
        break;
      case DecodeStatus::NeedMoreData:
        ASSERT_TRUE(r.needed == 0 || r.needed > bytes.size());
        break;
      case DecodeStatus::Invalid:
        ASSERT_NE(r.error, nullptr);
        break;
    }
  }
  EXPECT_GT(ok, 0);  // the generator does produce valid frames now and then
}

TEST(ReadInts, BigEndian) {
  const std::string b = "\x01\x02\x03\x04\xff\xfe"s;
  EXPECT_EQ(read_u32(b.data()), 0x01020304u);
  EXPECT_EQ(read_u16(b.data() + 4), 0xfffe);
}

TEST(FrameRun, CoversTheWholeFramesOfOneTag) {
  const std::string row = "D\0\0\0\x0a\0\x01\0\0\0\0"s;
  const std::string done = "C\0\0\0\x0dSELECT 3\0"s;
  EXPECT_EQ(frame_run(row + row + row + done, 'D', kMax), 3 * row.size());
  std::uint64_t frames = 1;
  EXPECT_EQ(frame_run(row + row + row + done, 'D', kMax, &frames), 3 * row.size());
  EXPECT_EQ(frames, 4u);
  EXPECT_EQ(frame_run(row + row, 'D', kMax), 2 * row.size());
  EXPECT_EQ(frame_run(done + row, 'D', kMax), 0u);
  EXPECT_EQ(frame_run("", 'D', kMax), 0u);
}

TEST(FrameRun, StopsAtAFrameTheBufferEndsInside) {
  const std::string row = "D\0\0\0\x0a\0\x01\0\0\0\0"s;
  for (std::size_t cut = 0; cut < row.size(); ++cut) {
    EXPECT_EQ(frame_run(row + row.substr(0, cut), 'D', kMax), row.size()) << cut;
  }
}

TEST(FrameRun, StopsWhereDecodeFrameWouldRefuse) {
  const std::string row = "D\0\0\0\x0a\0\x01\0\0\0\0"s;
  const std::string short_length = "D\0\0\0\x03"s;
  const std::string negative_length = "D\xff\xff\xff\xff"s;
  EXPECT_EQ(frame_run(row + short_length + row, 'D', kMax), row.size());
  EXPECT_EQ(frame_run(row + negative_length + row, 'D', kMax), row.size());
  // Over the size limit: the caller's decode_frame() refuses it.
  EXPECT_EQ(frame_run(row + row, 'D', row.size()), 2 * row.size());
  EXPECT_EQ(frame_run(row + row, 'D', row.size() - 1), 0u);
}

TEST(FrameReader, GivesEachWholeFrameInOrderAndWhereItEnds) {
  const std::string sync = "S\0\0\0\x04"s;
  const std::string in = kQuery + sync + kQuery;
  FrameReader frames(in, kMax);
  Frame f;
  ASSERT_TRUE(frames.next(f));
  EXPECT_EQ(f.tag, 'Q');
  EXPECT_EQ(f.whole, kQuery);
  EXPECT_EQ(frames.offset(), kQuery.size());
  ASSERT_TRUE(frames.next(f));
  EXPECT_EQ(f.tag, 'S');
  EXPECT_EQ(f.body, "");
  EXPECT_FALSE(frames.at_end());
  ASSERT_TRUE(frames.next(f));
  EXPECT_EQ(f.whole.data(), in.data() + kQuery.size() + sync.size());  // a view, not a copy
  EXPECT_TRUE(frames.at_end());
  EXPECT_FALSE(frames.next(f));
  EXPECT_EQ(frames.offset(), in.size());
  FrameReader none("", kMax);
  EXPECT_FALSE(none.next(f));
  EXPECT_TRUE(none.at_end());
}

TEST(FrameReader, EndsAtAFrameTheBufferEndsInsideOrDecodeFrameRefuses) {
  for (std::size_t cut = 0; cut < kQuery.size(); ++cut) {
    const std::string in = kQuery + kQuery.substr(0, cut);
    FrameReader frames(in, kMax);
    Frame f;
    EXPECT_TRUE(frames.next(f));
    EXPECT_FALSE(frames.next(f)) << cut;
    EXPECT_EQ(frames.offset(), kQuery.size()) << cut;
    EXPECT_EQ(frames.at_end(), cut == 0) << cut;
  }
  const std::string short_length = "Q\0\0\0\x03"s;
  const std::string in = kQuery + short_length + kQuery;
  FrameReader refused(in, kMax);
  Frame f;
  EXPECT_TRUE(refused.next(f));
  EXPECT_FALSE(refused.next(f));
  EXPECT_FALSE(refused.next(f));  // stays where it ended
  EXPECT_EQ(refused.offset(), kQuery.size());
  FrameReader oversized(kQuery, kQuery.size() - 1);
  EXPECT_FALSE(oversized.next(f));
  EXPECT_EQ(oversized.offset(), 0u);
}

}  // namespace
}  // namespace pgvalve::protocol
