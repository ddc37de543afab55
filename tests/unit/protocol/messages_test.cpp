#include "protocol/messages.h"

#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace pgvalve::protocol {
namespace {

using namespace std::string_literals;
using testing::ExactBuffer;

// Test bytes are often temporaries while the views a reader returns outlive the statement;
// keep a copy of every buffer for the life of the test binary (exact size, for ASan).
std::string_view keep(std::string_view bytes) {
  static std::deque<ExactBuffer> kept;
  return kept.emplace_back(bytes).view();
}

// Decodes `bytes` as exactly one frame.
Frame frame_of(std::string_view bytes) {
  const std::string_view copy = keep(bytes);
  FrameResult r = decode_frame(copy, 1 << 20);
  EXPECT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(r.frame.whole.size(), bytes.size());
  return r.frame;
}

// A frame with any tag and body, without a header.
Frame frame(char tag, std::string_view body) {
  return Frame{tag, keep(body), {}};
}

template <typename Fn>
std::string built(Fn fn) {
  std::string out;
  fn(out);
  return out;
}

// ---- Byte-exact builders ---------------------------------------------------------------------

TEST(Builders, Authentication) {
  EXPECT_EQ(built(append_authentication_ok), "R\0\0\0\x08\0\0\0\0"s);
  EXPECT_EQ(built(append_authentication_cleartext), "R\0\0\0\x08\0\0\0\x03"s);
  EXPECT_EQ(built([](auto& o) { append_authentication_md5(o, "\x01\x02\x03\x04"); }),
            "R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"s);
  const std::string_view mechs[] = {"SCRAM-SHA-256"};
  EXPECT_EQ(built([&](auto& o) { append_authentication_sasl(o, mechs); }),
            "R\0\0\0\x17\0\0\0\x0a"s
            "SCRAM-SHA-256\0\0"s);
  EXPECT_EQ(built([](auto& o) { append_authentication_sasl_continue(o, "r=abc"); }),
            "R\0\0\0\x0d\0\0\0\x0b"s
            "r=abc");
  EXPECT_EQ(built([](auto& o) { append_authentication_sasl_final(o, "v=xyz"); }),
            "R\0\0\0\x0d\0\0\0\x0c"s
            "v=xyz");
}

TEST(Builders, PasswordFamily) {
  EXPECT_EQ(built([](auto& o) { append_password(o, "secret"); }), "p\0\0\0\x0bsecret\0"s);
  EXPECT_EQ(built([](auto& o) { append_sasl_initial_response(o, "SCRAM-SHA-256", "n,,n=,r=abc"); }),
            "p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0b"s
            "n,,n=,r=abc");
  EXPECT_EQ(built([](auto& o) { append_sasl_response(o, "c=biws"); }),
            "p\0\0\0\x0a"s
            "c=biws");
}

TEST(Builders, StartupPackets) {
  const std::pair<std::string_view, std::string_view> params[] = {{"user", "app"},
                                                                  {"database", "db"}};
  EXPECT_EQ(built([&](auto& o) { append_startup_message(o, params); }),
            "\0\0\0\x1e\0\x03\0\0user\0app\0database\0db\0\0"s);
  EXPECT_EQ(built(append_ssl_request), "\0\0\0\x08\x04\xd2\x16\x2f"s);
  EXPECT_EQ(built([](auto& o) { append_cancel_request(o, 0x01020304, 0x0a0b0c0d); }),
            "\0\0\0\x10\x04\xd2\x16\x2e\x01\x02\x03\x04\x0a\x0b\x0c\x0d"s);
}

TEST(Builders, StatusMessages) {
  EXPECT_EQ(built([](auto& o) {
              append_backend_key_data(o, {0x01020304, -2});
            }),
            "K\0\0\0\x0c\x01\x02\x03\x04\xff\xff\xff\xfe"s);
  EXPECT_EQ(built([](auto& o) { append_parameter_status(o, "client_encoding", "UTF8"); }),
            "S\0\0\0\x19"s
            "client_encoding\0UTF8\0"s);
  EXPECT_EQ(built([](auto& o) { append_ready_for_query(o, 'I'); }), "Z\0\0\0\x05I"s);
  EXPECT_EQ(built([](auto& o) { append_command_complete(o, "SELECT 1"); }),
            "C\0\0\0\x0dSELECT 1\0"s);
  EXPECT_EQ(built(append_empty_query_response), "I\0\0\0\x04"s);
  EXPECT_EQ(built([](auto& o) {
              append_notification_response(o, {7, "ch", "hi"});
            }),
            "A\0\0\0\x0e\0\0\0\x07"s
            "ch\0hi\0"s);
}

TEST(Builders, ErrorAndNotice) {
  const ErrorFields fields{"ERROR", "28P01", "pgvalve: bad", "", ""};
  EXPECT_EQ(built([&](auto& o) { append_error_response(o, fields); }),
            "E\0\0\0\x28SERROR\0VERROR\0C28P01\0Mpgvalve: bad\0\0"s);
  EXPECT_EQ(built([&](auto& o) { append_notice_response(o, fields); }),
            "N\0\0\0\x28SERROR\0VERROR\0C28P01\0Mpgvalve: bad\0\0"s);
  const ErrorFields full{"FATAL", "53300", "m", "d", "h"};
  EXPECT_EQ(built([&](auto& o) { append_error_response(o, full); }),
            "E\0\0\0\x23SFATAL\0VFATAL\0C53300\0Mm\0Dd\0Hh\0\0"s);
}

TEST(Builders, ResultSet) {
  const std::string_view cols[] = {"a"};
  EXPECT_EQ(built([&](auto& o) { append_row_description(o, cols); }),
            "T\0\0\0\x1a\0\x01"
            "a\0"
            "\0\0\0\0"          // table OID
            "\0\0"              // attribute number
            "\0\0\0\x19"        // type OID 25 (text)
            "\xff\xff"          // typlen -1
            "\xff\xff\xff\xff"  // typmod -1
            "\0\0"s);           // text format
  const std::optional<std::string_view> values[] = {"x", std::nullopt, ""};
  EXPECT_EQ(built([&](auto& o) { append_data_row(o, values); }),
            "D\0\0\0\x13\0\x03"
            "\0\0\0\x01x"
            "\xff\xff\xff\xff"
            "\0\0\0\0"s);
  EXPECT_EQ(built([](auto& o) { append_row_description(o, {}); }), "T\0\0\0\x06\0\0"s);
}

TEST(RowFields, ReadWhatAServerDescribesAndWriteItBack) {
  // SELECT device_id, avg(value) FROM telemetry GROUP BY 1, as a server describes it.
  const std::string body =
      "\0\x02"
      "device_id\0\0\0\x40\x01\0\x01\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0"
      "avg\0\0\0\0\0\0\0\0\0\x06\xa4\xff\xff\xff\xff\xff\xff\0\x01"s;
  const auto fields = read_row_fields(body);
  ASSERT_TRUE(fields);
  ASSERT_EQ(fields->size(), 2u);
  EXPECT_EQ((*fields)[0].name, "device_id");
  EXPECT_EQ((*fields)[0].table, 16385);
  EXPECT_EQ((*fields)[0].column, 1);
  EXPECT_EQ((*fields)[0].type, 20);
  EXPECT_EQ((*fields)[0].size, 8);
  EXPECT_EQ((*fields)[1].name, "avg");
  EXPECT_EQ((*fields)[1].type, 1700);
  EXPECT_EQ((*fields)[1].size, -1);
  EXPECT_EQ((*fields)[1].format, 1);
  std::string again = "\0\x02"s;
  for (const RowField& f : *fields)
    append_row_field(again, f);
  EXPECT_EQ(again, body);
  // Cut short, with bytes left over, or announcing more columns than the body can hold.
  EXPECT_FALSE(read_row_fields(body.substr(0, body.size() - 1)));
  EXPECT_FALSE(read_row_fields(body + "x"));
  EXPECT_FALSE(read_row_fields("\x7f\xff"s + body.substr(2)));
  EXPECT_FALSE(read_row_fields("\xff\xff"s));
}

// A DataRow PostgreSQL 15 sent for SELECT 42, NULL::text (text format).
TEST(Builders, DataRowMatchesPostgres) {
  const std::optional<std::string_view> values[] = {"42", std::nullopt};
  EXPECT_EQ(built([&](auto& o) { append_data_row(o, values); }),
            "D\0\0\0\x10\0\x02\0\0\0\x02"
            "42\xff\xff\xff\xff"s);
}

TEST(Builders, Query) {
  EXPECT_EQ(built([](auto& o) { append_query(o, "SELECT 1"); }), "Q\0\0\0\x0dSELECT 1\0"s);
  EXPECT_EQ(built(append_terminate), "X\0\0\0\x04"s);
  EXPECT_EQ(built(append_sync), "S\0\0\0\x04"s);
  EXPECT_EQ(built(append_flush), "H\0\0\0\x04"s);
  EXPECT_EQ(built(append_parse_complete), "1\0\0\0\x04"s);
  EXPECT_EQ(built(append_bind_complete), "2\0\0\0\x04"s);
  EXPECT_EQ(built(append_close_complete), "3\0\0\0\x04"s);
  EXPECT_EQ(built(append_no_data), "n\0\0\0\x04"s);
}

TEST(Builders, ExtendedQuery) {
  const std::uint32_t types[] = {23};
  EXPECT_EQ(built([&](auto& o) { append_parse(o, "s1", "SELECT $1", types); }),
            "P\0\0\0\x17s1\0SELECT $1\0\0\x01\0\0\0\x17"s);
  EXPECT_EQ(built([](auto& o) { append_describe(o, 'S', "s1"); }), "D\0\0\0\x08Ss1\0"s);
  EXPECT_EQ(built([](auto& o) { append_close(o, 'P', ""); }), "C\0\0\0\x06P\0"s);
  EXPECT_EQ(built([](auto& o) { append_execute(o, "", 0); }), "E\0\0\0\x09\0\0\0\0\0"s);
  EXPECT_EQ(built([](auto& o) { append_execute(o, "p", -1); }), "E\0\0\0\x0ap\0\xff\xff\xff\xff"s);
}

TEST(Builders, AppendToExistingBuffer) {
  std::string out = "xyz";
  append_sync(out);
  append_query(out, "");
  EXPECT_EQ(out, "xyzS\0\0\0\x04Q\0\0\0\x05\0"s);
}

// ---- Bind: the one reader that builds a vector -------------------------------------------------

// portal "", statement "s1", one format code (binary) for all, params "42" and NULL, no result
// formats.
const std::string kBind =
    "B\0\0\0\x1a"
    "\0"
    "s1\0"
    "\0\x01\0\x01"
    "\0\x02"
    "\0\0\0\x02"
    "42"
    "\xff\xff\xff\xff"
    "\0\0"s;

TEST(Bind, Reads) {
  auto bind = read_bind(frame_of(kBind));
  ASSERT_TRUE(bind);
  EXPECT_EQ(bind->portal, "");
  EXPECT_EQ(bind->statement, "s1");
  ASSERT_EQ(bind->params.size(), 2u);
  EXPECT_EQ(bind->params[0], "42");
  EXPECT_EQ(bind->params[1], std::nullopt);
  EXPECT_EQ(bind->param_format(0), 1);
  EXPECT_EQ(bind->param_format(1), 1);  // one format applies to all
  EXPECT_TRUE(bind->result_formats.empty());
}

TEST(Bind, ASubsetOfParametersKeepsTheirFormats) {
  const auto head = read_bind_head(frame_of(kBind));
  ASSERT_TRUE(head);
  std::string out;
  const std::uint16_t second_then_first[] = {2, 1};
  ASSERT_TRUE(bind_rest_subset(head->rest, second_then_first, out));
  EXPECT_EQ(out,
            "\0\x01\0\x01"  // one format for all stays one
            "\0\x02"
            "\xff\xff\xff\xff"
            "\0\0\0\x02"
            "42"
            "\0\0"s);
  // A format per parameter: the chosen ones' formats, in the new order; result formats kept.
  const std::string rest =
      "\0\x03\0\0\0\x01\0\0"
      "\0\x03"
      "\0\0\0\x01"
      "a"
      "\0\0\0\x02"
      "bb"
      "\0\0\0\x01"
      "c"
      "\0\x01\0\x01"s;
  out.clear();
  const std::uint16_t second[] = {2};
  ASSERT_TRUE(bind_rest_subset(rest, second, out));
  EXPECT_EQ(out,
            "\0\x01\0\x01\0\x01\0\0\0\x02"
            "bb"
            "\0\x01\0\x01"s);
  const std::uint16_t missing[] = {4};
  EXPECT_FALSE(bind_rest_subset(rest, missing, out));
  EXPECT_FALSE(bind_rest_subset(rest.substr(0, 9), second, out));
}

TEST(Bind, ExtraColumnsGetTextResultFormatsOnlyWhenEachColumnHasOne) {
  const std::string params =
      "\0\x01\0\x01"  // one parameter format for all
      "\0\x01"
      "\0\0\0\x02"
      "42"s;
  std::string out;
  // A format per column: two more, text.
  ASSERT_TRUE(bind_rest_with_extra_columns(params + "\0\x02\0\x01\0\x00"s, 2, out));
  EXPECT_EQ(out, params + "\0\x04\0\x01\0\0\0\0\0\0"s);
  // One format for all, or none (text for all), covers the extra columns as they are.
  ASSERT_TRUE(bind_rest_with_extra_columns(params + "\0\x01\0\x01"s, 2, out));
  EXPECT_EQ(out, params + "\0\x01\0\x01"s);
  ASSERT_TRUE(bind_rest_with_extra_columns(params + "\0\0"s, 1, out));
  EXPECT_EQ(out, params + "\0\0"s);
  // Malformed: a value running past the end, bytes after the result formats.
  EXPECT_FALSE(bind_rest_with_extra_columns(params.substr(0, 9), 1, out));
  EXPECT_FALSE(bind_rest_with_extra_columns(params + "\0\0\0"s, 1, out));
}

TEST(Bind, RenamedIsByteExact) {
  auto bind = read_bind(frame_of(kBind));
  ASSERT_TRUE(bind);
  std::string out;
  append_bind_renamed(out, *bind, "pgv_7");
  EXPECT_EQ(out,
            "B\0\0\0\x1d"
            "\0"
            "pgv_7\0"
            "\0\x01\0\x01"
            "\0\x02"
            "\0\0\0\x02"
            "42"
            "\xff\xff\xff\xff"
            "\0\0"s);
  // Renaming back gives the original bytes.
  auto renamed = read_bind(frame_of(out));
  ASSERT_TRUE(renamed);
  std::string back;
  append_bind_renamed(back, *renamed, "s1");
  EXPECT_EQ(back, kBind);
}

TEST(Bind, FormatRule) {
  // No formats: all text. n formats: one each. Result formats kept raw.
  const std::string none = "B\0\0\0\x15p\0s\0\0\0\0\x01\0\0\0\x01x\0\x01\0\x01"s;
  auto b = read_bind(frame_of(none));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->portal, "p");
  EXPECT_EQ(b->param_format(0), 0);
  EXPECT_EQ(b->result_formats, "\0\x01"s);

  const std::string each = "B\0\0\0\x1b\0\0\0\x02\0\0\0\x01\0\x02\0\0\0\x01x\0\0\0\x02yz\0\0"s;
  b = read_bind(frame_of(each));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->param_format(0), 0);
  EXPECT_EQ(b->param_format(1), 1);
  EXPECT_EQ(b->params[1], "yz");
  EXPECT_EQ(b->param_format(5), 0);  // out of range stays in bounds
}

TEST(Bind, Malformed) {
  // Two formats for one parameter (neither 0, 1 nor n).
  EXPECT_FALSE(read_bind(frame('B', "\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0"s)));
  // Parameter length below -1.
  EXPECT_FALSE(read_bind(frame('B', "\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"s)));
  // A parameter count the body cannot possibly hold (must fail before reserving memory).
  EXPECT_FALSE(read_bind(frame('B', "\0\0\0\0\xff\xff\0\0\0\0"s)));
  // Parameter length past the end of the body.
  EXPECT_FALSE(read_bind(frame('B', "\0\0\0\0\0\x01\0\0\0\x10xy\0\0"s)));
}

// ---- Round trips and strictness for every reader -----------------------------------------------

struct Case {
  std::string name;
  std::string bytes;
  std::function<bool(const Frame&)> read;  // true when the reader accepts the frame
  bool prefixes_are_invalid = true;        // false where any body prefix is a valid message
};

template <typename T>
std::function<bool(const Frame&)> accepts(std::optional<T> (*reader)(const Frame&)) {
  return [reader](const Frame& f) { return reader(f).has_value(); };
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  auto add = [&](std::string name, auto build, std::function<bool(const Frame&)> read,
                 bool prefixes_are_invalid = true) {
    std::string out;
    build(out);
    cases.push_back({std::move(name), std::move(out), std::move(read), prefixes_are_invalid});
  };
  const std::string_view mechs[] = {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"};
  const std::uint32_t types[] = {23, 25};
  add("auth_ok", append_authentication_ok, accepts(read_authentication));
  add("auth_cleartext", append_authentication_cleartext, accepts(read_authentication));
  add(
      "auth_md5", [](auto& o) { append_authentication_md5(o, "abcd"); },
      accepts(read_authentication));
  add(
      "auth_sasl", [&](auto& o) { append_authentication_sasl(o, mechs); },
      accepts(read_authentication));
  add(
      "auth_sasl_continue", [](auto& o) { append_authentication_sasl_continue(o, "r=x"); },
      accepts(read_authentication), false);
  add(
      "password", [](auto& o) { append_password(o, "pw"); }, accepts(read_password));
  add(
      "sasl_initial", [](auto& o) { append_sasl_initial_response(o, "SCRAM-SHA-256", "n,,"); },
      accepts(read_sasl_initial_response));
  add(
      "backend_key_data",
      [](auto& o) {
        append_backend_key_data(o, {1, 2});
      },
      accepts(read_backend_key_data));
  add(
      "parameter_status", [](auto& o) { append_parameter_status(o, "a", "b"); },
      accepts(read_parameter_status));
  add(
      "ready_for_query", [](auto& o) { append_ready_for_query(o, 'T'); },
      accepts(read_ready_for_query));
  add(
      "error",
      [](auto& o) {
        append_error_response(o, {"ERROR", "42P01", "m", "d", "h"});
      },
      accepts(read_error_response));
  add(
      "notice",
      [](auto& o) {
        append_notice_response(o, {"NOTICE", "00000", "m", "", ""});
      },
      accepts(read_error_response));
  add(
      "command_complete", [](auto& o) { append_command_complete(o, "INSERT 0 1"); },
      accepts(read_command_complete));
  add(
      "notification",
      [](auto& o) {
        append_notification_response(o, {9, "c", "p"});
      },
      accepts(read_notification_response));
  add(
      "query", [](auto& o) { append_query(o, "SELECT 1; SELECT 2"); }, accepts(read_query));
  add(
      "parse", [&](auto& o) { append_parse(o, "s", "SELECT $1, $2", types); }, accepts(read_parse));
  add(
      "bind", [](auto& o) { o += kBind; }, accepts(read_bind));
  add(
      "describe", [](auto& o) { append_describe(o, 'P', "portal"); }, accepts(read_describe));
  add(
      "close", [](auto& o) { append_close(o, 'S', "stmt"); }, accepts(read_close));
  add(
      "execute", [](auto& o) { append_execute(o, "portal", 100); }, accepts(read_execute));
  return cases;
}

TEST(Readers, AcceptWhatBuildersWrite) {
  for (const Case& c : all_cases()) {
    ExactBuffer buf(c.bytes);
    EXPECT_TRUE(c.read(frame_of(buf.view()))) << c.name;
  }
}

TEST(Readers, RejectEveryTruncatedBody) {
  for (const Case& c : all_cases()) {
    if (!c.prefixes_are_invalid) continue;
    const std::string_view body = std::string_view(c.bytes).substr(kFrameHeaderSize);
    for (std::size_t cut = 0; cut < body.size(); ++cut) {
      ExactBuffer buf(body.substr(0, cut));
      EXPECT_FALSE(c.read(frame(c.bytes[0], buf.view()))) << c.name << " cut at " << cut;
    }
  }
}

TEST(Readers, RejectTrailingBytes) {
  for (const Case& c : all_cases()) {
    if (!c.prefixes_are_invalid) continue;
    const std::string body = c.bytes.substr(kFrameHeaderSize) + "\0"s;
    EXPECT_FALSE(c.read(frame(c.bytes[0], ExactBuffer(body).view()))) << c.name;
  }
}

TEST(Readers, RejectOtherTags) {
  for (const Case& c : all_cases()) {
    const std::string_view body = std::string_view(c.bytes).substr(kFrameHeaderSize);
    EXPECT_FALSE(c.read(frame('?', body))) << c.name;
  }
}

// Every reader over a few thousand random bodies, under every tag: no crash, no overread.
TEST(Readers, RandomGarbageNeverOverreads) {
  std::mt19937 rng(4242);
  const auto cases = all_cases();
  const std::string tags = "RpKSZENCAQPBDCEdX?";
  for (int i = 0; i < 4000; ++i) {
    const std::string body =
        i % 2 == 0 ? testing::random_bytes(rng, 48) : testing::random_structured_bytes(rng, 48);
    ExactBuffer buf(body);
    for (char tag : tags) {
      const Frame f = frame(tag, buf.view());
      for (const Case& c : cases)
        (void)c.read(f);
      (void)read_sasl_response(f);
      if (auto auth = read_authentication(f)) (void)sasl_mechanisms(auth->data);
      if (auto bind = read_bind(f)) {
        for (std::size_t p = 0; p < bind->params.size(); ++p)
          (void)bind->param_format(p);
        std::string out;
        append_bind_renamed(out, *bind, "x");
        ASSERT_TRUE(read_bind(frame_of(out)));
      }
      if (auto parse = read_parse(f)) {
        for (std::size_t p = 0; p < parse->param_count(); ++p)
          (void)parse->param_type(p);
      }
    }
  }
}

// ---- Field-level reads -------------------------------------------------------------------------

TEST(Readers, Authentication) {
  auto md5 = read_authentication(frame_of("R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"s));
  ASSERT_TRUE(md5);
  EXPECT_EQ(md5->code, static_cast<std::int32_t>(AuthCode::Md5Password));
  EXPECT_EQ(md5->data, "\x01\x02\x03\x04"s);
  // Wrong salt size, data after AuthenticationOk, SASL list without its terminator.
  EXPECT_FALSE(read_authentication(frame('R', "\0\0\0\x05\x01\x02\x03"s)));
  EXPECT_FALSE(read_authentication(frame('R', "\0\0\0\0x"s)));
  EXPECT_FALSE(read_authentication(frame('R', "\0\0\0\x0aSCRAM-SHA-256"s)));
  // Codes pgvalve does not support are reported, not rejected: the caller names them.
  auto gss = read_authentication(frame('R', "\0\0\0\x07"s));
  ASSERT_TRUE(gss);
  EXPECT_EQ(gss->code, 7);
  auto cont = read_authentication(frame('R', "\0\0\0\x0br=abc,s=xyz,i=4096"s));
  ASSERT_TRUE(cont);
  EXPECT_EQ(cont->data, "r=abc,s=xyz,i=4096");
}

TEST(Readers, SaslMechanisms) {
  const auto two = sasl_mechanisms(keep("SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0"s));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0], "SCRAM-SHA-256");
  EXPECT_EQ(two[1], "SCRAM-SHA-256-PLUS");
  EXPECT_EQ(sasl_mechanisms("\0"s).size(), 0u);
  EXPECT_EQ(sasl_mechanisms("").size(), 0u);
  // Missing terminators are tolerated: the last name runs to the end.
  const auto loose = sasl_mechanisms(keep("A\0B"s));
  ASSERT_EQ(loose.size(), 2u);
  EXPECT_EQ(loose[1], "B");
  // The list read from a real message.
  std::string out;
  const std::string_view mechs[] = {"SCRAM-SHA-256"};
  append_authentication_sasl(out, mechs);
  auto auth = read_authentication(frame_of(out));
  ASSERT_TRUE(auth);
  EXPECT_EQ(sasl_mechanisms(auth->data), std::vector<std::string_view>{"SCRAM-SHA-256"});
}

TEST(Readers, PasswordFamily) {
  EXPECT_EQ(read_password(frame_of("p\0\0\0\x0bsecret\0"s)), "secret");
  EXPECT_EQ(read_password(frame('p', "\0"s)), "");
  EXPECT_FALSE(read_password(frame('p', "")));

  auto initial =
      read_sasl_initial_response(frame_of("p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0b"s
                                          "n,,n=,r=abc"));
  ASSERT_TRUE(initial);
  EXPECT_EQ(initial->mechanism, "SCRAM-SHA-256");
  EXPECT_EQ(initial->data, "n,,n=,r=abc");
  // Length -1: no initial response.
  auto none = read_sasl_initial_response(frame('p', "M\0\xff\xff\xff\xff"s));
  ASSERT_TRUE(none);
  EXPECT_EQ(none->mechanism, "M");
  EXPECT_TRUE(none->data.empty());
  EXPECT_FALSE(read_sasl_initial_response(frame('p', "M\0\xff\xff\xff\xfe"s)));
  EXPECT_FALSE(read_sasl_initial_response(frame('p', "M\0\xff\xff\xff\xffx"s)));
  EXPECT_FALSE(read_sasl_initial_response(frame('p', "M\0\0\0\0\x02x"s)));

  EXPECT_EQ(read_sasl_response(frame_of("p\0\0\0\x0a"s
                                        "c=biws")),
            "c=biws");
}

TEST(Readers, StatusMessages) {
  auto key = read_backend_key_data(frame_of("K\0\0\0\x0c\x01\x02\x03\x04\xff\xff\xff\xfe"s));
  ASSERT_TRUE(key);
  EXPECT_EQ(key->process_id, 0x01020304);
  EXPECT_EQ(key->secret_key, -2);

  auto ps =
      read_parameter_status(frame_of("S\0\0\0\x19"
                                     "client_encoding\0UTF8\0"s));
  ASSERT_TRUE(ps);
  EXPECT_EQ(ps->name, "client_encoding");
  EXPECT_EQ(ps->value, "UTF8");

  for (char status : {'I', 'T', 'E'}) {
    std::string out;
    append_ready_for_query(out, status);
    EXPECT_EQ(read_ready_for_query(frame_of(out)), status);
  }
  EXPECT_FALSE(read_ready_for_query(frame('Z', "X")));
  EXPECT_FALSE(read_ready_for_query(frame('Z', "II")));

  EXPECT_EQ(read_command_complete(frame_of("C\0\0\0\x0dSELECT 1\0"s)), "SELECT 1");

  auto n =
      read_notification_response(frame_of("A\0\0\0\x0e\0\0\0\x07"s
                                          "ch\0hi\0"s));
  ASSERT_TRUE(n);
  EXPECT_EQ(n->process_id, 7);
  EXPECT_EQ(n->channel, "ch");
  EXPECT_EQ(n->payload, "hi");
}

TEST(Readers, ErrorResponse) {
  // Recorded from PostgreSQL 15 for SELECT * FROM nope: S, V, C, M and fields pgvalve skips.
  const std::string pg_error =
      "E\0\0\0gSERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"
      "Fparse_relation.c\0L1392\0RparserOpenTable\0\0"s;
  auto e = read_error_response(frame_of(pg_error));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->severity, "ERROR");
  EXPECT_EQ(e->sqlstate, "42P01");
  EXPECT_EQ(e->message, "relation \"nope\" does not exist");
  EXPECT_TRUE(e->detail.empty());
  // ... and for a wrong password.
  auto fatal = read_error_response(
      frame_of("E\0\0\0aSFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "
               "\"x\"\0Fauth.c\0L334\0Rauth_failed\0\0"s));
  ASSERT_TRUE(fatal);
  EXPECT_EQ(fatal->severity, "FATAL");
  EXPECT_EQ(fatal->sqlstate, "28P01");
  // A localized S before V: V wins. D and H are read.
  const std::string body = "SFEHLER\0VERROR\0C42P01\0Mm\0Ddet\0Hhint\0P15\0\0"s;
  auto localized = read_error_response(frame('E', body));
  ASSERT_TRUE(localized);
  EXPECT_EQ(localized->severity, "ERROR");
  EXPECT_EQ(localized->detail, "det");
  EXPECT_EQ(localized->hint, "hint");
  // Old servers send only S.
  auto old = read_error_response(frame('N', "SWARNING\0C01000\0Mm\0\0"s));
  ASSERT_TRUE(old);
  EXPECT_EQ(old->severity, "WARNING");
  EXPECT_TRUE(old->detail.empty());
  // Round trip.
  std::string out;
  append_error_response(out, {"FATAL", "53300", "pgvalve: too many clients", "d", "h"});
  auto rt = read_error_response(frame_of(out));
  ASSERT_TRUE(rt);
  EXPECT_EQ(rt->severity, "FATAL");
  EXPECT_EQ(rt->sqlstate, "53300");
  EXPECT_EQ(rt->message, "pgvalve: too many clients");
  EXPECT_EQ(rt->detail, "d");
  EXPECT_EQ(rt->hint, "h");
  // Empty body, field without a value terminator, no final terminator.
  EXPECT_FALSE(read_error_response(frame('E', "")));
  EXPECT_FALSE(read_error_response(frame('E', "Mabc"s)));
  EXPECT_FALSE(read_error_response(frame('E', "Mabc\0"s)));
}

TEST(Readers, Query) {
  EXPECT_EQ(read_query(frame_of("Q\0\0\0\x0dSELECT 1\0"s)), "SELECT 1");
  EXPECT_EQ(read_query(frame('Q', "\0"s)), "");
  EXPECT_FALSE(read_query(frame('Q', "SELECT 1"s)));
  // PostgreSQL refuses bytes after the NUL; routing must not look at a different text.
  EXPECT_FALSE(read_query(frame('Q', "SELECT 1\0DROP TABLE x\0"s)));
}

TEST(Readers, Parse) {
  auto p = read_parse(frame_of("P\0\0\0\x17s1\0SELECT $1\0\0\x01\0\0\0\x17"s));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->statement, "s1");
  EXPECT_EQ(p->query, "SELECT $1");
  ASSERT_EQ(p->param_count(), 1);
  EXPECT_EQ(p->param_type(0), 23u);
  auto none = read_parse(frame('P', "\0SELECT 1\0\0\0"s));
  ASSERT_TRUE(none);
  EXPECT_EQ(none->statement, "");
  EXPECT_EQ(none->param_count(), 0);
  // Count says two types, only one present.
  EXPECT_FALSE(read_parse(frame('P', "\0q\0\0\x02\0\0\0\x17"s)));
}

TEST(Readers, DescribeCloseExecute) {
  auto d = read_describe(frame_of("D\0\0\0\x08Ss1\0"s));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->kind, 'S');
  EXPECT_EQ(d->name, "s1");
  auto c = read_close(frame_of("C\0\0\0\x06P\0"s));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->kind, 'P');
  EXPECT_EQ(c->name, "");
  EXPECT_FALSE(read_describe(frame('D', "Xs1\0"s)));  // neither statement nor portal
  auto e = read_execute(frame_of("E\0\0\0\x0ap\0\xff\xff\xff\xff"s));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->portal, "p");
  EXPECT_EQ(e->max_rows, -1);
}

}  // namespace
}  // namespace pgvalve::protocol
