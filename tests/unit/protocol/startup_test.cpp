#include "protocol/startup.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>

#include "protocol/messages.h"
#include "test_util.h"

namespace pgvalve::protocol {
namespace {

using namespace std::string_literals;
using testing::ExactBuffer;

// user=app database=db, as psql would send it (without its other parameters).
const std::string kStartup = "\0\0\0\x1e\0\x03\0\0user\0app\0database\0db\0\0"s;

std::string packet(std::uint32_t code, std::string_view rest) {
  std::string out;
  const auto len = static_cast<std::uint32_t>(8 + rest.size());
  for (int shift : {24, 16, 8, 0})
    out.push_back(static_cast<char>(len >> shift));
  for (int shift : {24, 16, 8, 0})
    out.push_back(static_cast<char>(code >> shift));
  out.append(rest);
  return out;
}

StartupResult decode(std::string_view bytes) {
  return decode_startup(ExactBuffer(bytes).view());
}

// Found by a code review: protocol 3.2 was taken as 3.0 without a word, and `_pq_.` options were
// sent to the server as settings. PostgreSQL answers both with NegotiateProtocolVersion.
TEST(NegotiateProtocol, ANewerMinorVersionOrProtocolOptionsGetThreeZero) {
  StartupMessage plain;
  plain.parameters = {{"user", "app"}};
  EXPECT_EQ(negotiate_protocol(plain), "");

  StartupMessage newer;
  newer.protocol_version = (3u << 16) | 2u;
  newer.parameters = {{"user", "app"}};
  EXPECT_EQ(negotiate_protocol(newer), "v\0\0\0\x0c\0\x03\0\0\0\0\0\0"s);
  EXPECT_EQ(newer.protocol_version, kProtocolVersion3);

  StartupMessage options;
  options.parameters = {
      {"user", "app"}, {"_pq_.foo", "bar"}, {"application_name", "x"}, {"_pq_.b", ""}};
  EXPECT_EQ(negotiate_protocol(options), "v\0\0\0\x1c\0\x03\0\0\0\0\0\x02_pq_.foo\0_pq_.b\0"s);
  EXPECT_EQ(options.parameters, (std::vector<std::pair<std::string, std::string>>{
                                    {"user", "app"}, {"application_name", "x"}}));
}

TEST(ReplicationOff, PostgresqlsBooleanFalse) {
  for (std::string_view off : {"false", "f", "FAL", "no", "N", "off", "OF", "0"}) {
    EXPECT_TRUE(replication_off(off)) << off;
  }
  for (std::string_view on :
       {"true", "on", "o", "1", "yes", "database", "", "falsehood", "nope", "offf", "00"}) {
    EXPECT_FALSE(replication_off(on)) << on;
  }
}

TEST(DecodeStartup, StartupMessage) {
  StartupResult r = decode(kStartup);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << r.error;
  EXPECT_EQ(r.consumed, kStartup.size());
  const auto* msg = std::get_if<StartupMessage>(&r.packet);
  ASSERT_NE(msg, nullptr);
  EXPECT_EQ(msg->protocol_version, kProtocolVersion3);
  ASSERT_EQ(msg->parameters.size(), 2u);
  EXPECT_EQ(msg->parameters[0], (std::pair<std::string, std::string>("user", "app")));
  EXPECT_EQ(msg->parameters[1], (std::pair<std::string, std::string>("database", "db")));
  EXPECT_EQ(msg->get("user"), "app");
  EXPECT_EQ(msg->get("database"), "db");
  EXPECT_EQ(msg->get("application_name"), "");
}

TEST(DecodeStartup, BuilderRoundTrip) {
  const std::pair<std::string_view, std::string_view> params[] = {{"user", "app"},
                                                                  {"database", "telemetry"},
                                                                  {"options", "-c search_path=x"},
                                                                  {"application_name", ""}};
  std::string out;
  append_startup_message(out, params);
  StartupResult r = decode(out);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << r.error;
  const auto& msg = std::get<StartupMessage>(r.packet);
  ASSERT_EQ(msg.parameters.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(msg.parameters[i].first, params[i].first);
    EXPECT_EQ(msg.parameters[i].second, params[i].second);
  }
}

TEST(DecodeStartup, ConsumesOnlyThePacket) {
  const std::string with_more = kStartup + "Q\0\0\0\x04"s;
  StartupResult r = decode(with_more);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(r.consumed, kStartup.size());
}

TEST(DecodeStartup, EveryTruncationNeedsMoreData) {
  for (std::size_t cut = 0; cut < kStartup.size(); ++cut) {
    StartupResult r = decode(std::string_view(kStartup).substr(0, cut));
    EXPECT_EQ(r.status, DecodeStatus::NeedMoreData) << "cut at " << cut;
  }
  const std::string cancel = packet(kCancelRequestCode, "\0\0\0\x01\0\0\0\x02"s);
  for (std::size_t cut = 0; cut < cancel.size(); ++cut) {
    EXPECT_EQ(decode(std::string_view(cancel).substr(0, cut)).status, DecodeStatus::NeedMoreData);
  }
}

TEST(DecodeStartup, RepeatedNameKeepsLastValueInFirstPosition) {
  StartupResult r = decode(packet(kProtocolVersion3, "user\0a\0database\0d\0user\0b\0\0"s));
  ASSERT_EQ(r.status, DecodeStatus::Ok) << r.error;
  const auto& msg = std::get<StartupMessage>(r.packet);
  ASSERT_EQ(msg.parameters.size(), 2u);
  EXPECT_EQ(msg.parameters[0].first, "user");
  EXPECT_EQ(msg.parameters[0].second, "b");
  EXPECT_EQ(msg.get("user"), "b");
}

// A packet of `count` distinct short names (user first), the first tenth of them sent again with
// the value "again".
std::string many_names(int count) {
  std::string names = "user\0app\0"s;
  for (int i = 0; i < count; ++i)
    names += std::to_string(i) + "\0v\0"s;
  for (int i = 0; i < count / 10; ++i)
    names += std::to_string(i) + "\0again\0"s;
  return packet(kProtocolVersion3, names + '\0');
}

// Found by a review: each name was looked for among those before it, so a 10,000-byte packet
// of ~2,500 short names cost 4.8 ms of CPU (0.03 ms as usual), also from clients that never
// log in. They are found by a keyed hash now; each name is kept once, with its last value.
TEST(DecodeStartup, ManyNamesEachKeptOnceWithItsLastValue) {
  const std::string many = many_names(1200);
  ASSERT_LE(many.size(), kMaxStartupPacketBytes);
  StartupResult r = decode(many);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << r.error;
  const auto& msg = std::get<StartupMessage>(r.packet);
  ASSERT_EQ(msg.parameters.size(), 1201u);  // user and 0..1199, each once, in first-sent order
  EXPECT_EQ(msg.parameters[1].first, "0");
  EXPECT_EQ(msg.get("user"), "app");
  EXPECT_EQ(msg.get("0"), "again");
  EXPECT_EQ(msg.get("119"), "again");
  EXPECT_EQ(msg.get("120"), "v");
}

TEST(DecodeStartup, MinorVersionAboveZeroIsAccepted) {
  // PostgreSQL accepts 3.x and negotiates the minor version down; the caller sees what was asked.
  StartupResult r = decode(packet(0x00030001, "user\0a\0\0"s));
  ASSERT_EQ(r.status, DecodeStatus::Ok) << r.error;
  EXPECT_EQ(std::get<StartupMessage>(r.packet).protocol_version, 0x00030001u);
}

TEST(DecodeStartup, MissingUser) {
  StartupResult r = decode(packet(kProtocolVersion3, "database\0db\0\0"s));
  EXPECT_EQ(r.status, DecodeStatus::Invalid);
  EXPECT_EQ(r.error, "no PostgreSQL user name specified in startup packet");
  EXPECT_EQ(decode(packet(kProtocolVersion3, "user\0\0\0"s)).status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kProtocolVersion3, "\0"s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, NoTerminator) {
  // The final empty name is missing.
  StartupResult r = decode(packet(kProtocolVersion3, "user\0app\0"s));
  EXPECT_EQ(r.status, DecodeStatus::Invalid);
  EXPECT_NE(r.error.find("expected terminator"), std::string::npos);
  // A value without its NUL, a name without its NUL, no parameters at all.
  EXPECT_EQ(decode(packet(kProtocolVersion3, "user\0app"s)).status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kProtocolVersion3, "user"s)).status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kProtocolVersion3, "user\0"s)).status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kProtocolVersion3, ""s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, BytesAfterTerminator) {
  StartupResult r = decode(packet(kProtocolVersion3, "user\0app\0\0x"s));
  EXPECT_EQ(r.status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kProtocolVersion3, "user\0app\0\0\0"s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, LengthLimits) {
  // Below 8: cannot even hold the code.
  for (char len : {'\0', '\x04', '\x07'}) {
    StartupResult r = decode("\0\0\0"s + len + "\0\x03\0\0"s);
    EXPECT_EQ(r.status, DecodeStatus::Invalid) << int(len);
    EXPECT_EQ(r.error, "invalid length of startup packet");
  }
  // Above 10000: refused as soon as the length is known, before the packet arrives.
  StartupResult big = decode("\0\0\x27\x11"s);  // 10001
  EXPECT_EQ(big.status, DecodeStatus::Invalid);
  EXPECT_EQ(decode("\xff\xff\xff\xff"s).status, DecodeStatus::Invalid);

  // Exactly 10000 bytes is still allowed.
  std::string params = "user\0app\0application_name\0"s;
  params.append(10000 - 8 - params.size() - 2, 'x');
  params += "\0\0"s;
  std::string max = packet(kProtocolVersion3, params);
  ASSERT_EQ(max.size(), kMaxStartupPacketBytes);
  EXPECT_EQ(decode(max).status, DecodeStatus::Ok);
}

TEST(DecodeStartup, SslRequest) {
  const std::string ssl = "\0\0\0\x08\x04\xd2\x16\x2f"s;
  StartupResult r = decode(ssl);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_TRUE(std::holds_alternative<SslRequest>(r.packet));
  EXPECT_EQ(r.consumed, 8u);
  // The TLS ClientHello that follows is not part of the packet.
  EXPECT_EQ(decode(ssl + "\x16\x03\x01"s).consumed, 8u);
  EXPECT_EQ(decode(packet(kSslRequestCode, "\0\0\0\0"s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, GssEncRequest) {
  StartupResult r = decode("\0\0\0\x08\x04\xd2\x16\x30"s);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_TRUE(std::holds_alternative<GssEncRequest>(r.packet));
  EXPECT_EQ(decode(packet(kGssEncRequestCode, "x"s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, CancelRequest) {
  StartupResult r = decode("\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xff\xff\xff\xfe"s);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  const auto* cancel = std::get_if<CancelRequest>(&r.packet);
  ASSERT_NE(cancel, nullptr);
  EXPECT_EQ(cancel->process_id, 12345);
  EXPECT_EQ(cancel->secret_key, -2);
  EXPECT_EQ(r.consumed, 16u);
  // Too short and too long.
  EXPECT_EQ(decode(packet(kCancelRequestCode, "\0\0\0\x01"s)).status, DecodeStatus::Invalid);
  EXPECT_EQ(decode(packet(kCancelRequestCode, std::string(12, '\0'))).status,
            DecodeStatus::Invalid);
}

TEST(DecodeStartup, BuiltRequestsDecode) {
  std::string out;
  append_ssl_request(out);
  EXPECT_TRUE(std::holds_alternative<SslRequest>(decode(out).packet));
  out.clear();
  append_cancel_request(out, 77, -5);
  StartupResult r = decode(out);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(std::get<CancelRequest>(r.packet).process_id, 77);
  EXPECT_EQ(std::get<CancelRequest>(r.packet).secret_key, -5);
}

TEST(DecodeStartup, Protocol2Refused) {
  StartupResult r = decode(packet(0x00020000, "user\0app\0\0"s));
  EXPECT_EQ(r.status, DecodeStatus::Invalid);
  EXPECT_EQ(r.error, "unsupported frontend protocol 2.0: server supports 3.0 to 3.0");
  EXPECT_EQ(decode(packet(0x00040000, "user\0app\0\0"s)).status, DecodeStatus::Invalid);
  // An unknown request code in the 1234.x range PostgreSQL uses for special requests.
  EXPECT_EQ(decode(packet(0x04d21631, ""s)).status, DecodeStatus::Invalid);
}

TEST(DecodeStartup, RandomGarbageNeverOverreads) {
  std::mt19937 rng(777);
  for (int i = 0; i < 5000; ++i) {
    std::string body = testing::random_structured_bytes(rng, 40);
    // Half the time give it a plausible header so the parameter parser gets exercised.
    std::string bytes = i % 2 == 0 ? packet(kProtocolVersion3, body) : body;
    StartupResult r = decode(bytes);
    if (r.status == DecodeStatus::Ok) {
      ASSERT_LE(r.consumed, bytes.size());
      ASSERT_GE(r.consumed, 8u);
    } else if (r.status == DecodeStatus::Invalid) {
      ASSERT_FALSE(r.error.empty());
    }
  }
}

}  // namespace
}  // namespace pgvalve::protocol
