// Messages a client sends: readers for what pgvalve inspects from clients, builders for what
// pgvalve sends to PostgreSQL when it is the client (login, cancel, renamed statements).

#include "protocol/messages.h"
#include "protocol/startup.h"
#include "protocol/wire.h"

namespace pgvalve::protocol {

namespace {

constexpr char tag_of(FrontendTag t) {
  return static_cast<char>(t);
}

void append_empty(std::string& out, FrontendTag tag) {
  end_message(out, begin_message(out, tag_of(tag)));
}

std::optional<DescribeOrClose> read_describe_or_close(const Frame& f, FrontendTag tag) {
  if (f.tag != tag_of(tag)) return std::nullopt;
  Cursor c(f.body);
  auto kind = c.u8();
  if (!kind || (*kind != 'S' && *kind != 'P')) return std::nullopt;
  auto name = c.cstr();
  if (!name || !c.at_end()) return std::nullopt;
  return DescribeOrClose{static_cast<char>(*kind), *name};
}

void append_describe_or_close(std::string& out, FrontendTag tag, char kind, std::string_view name) {
  const std::size_t len_pos = begin_message(out, tag_of(tag));
  out.push_back(kind);
  append_cstr(out, name);
  end_message(out, len_pos);
}

}  // namespace

// ---- Password family -------------------------------------------------------------------------

std::optional<std::string_view> read_password(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Password)) return std::nullopt;
  Cursor c(f.body);
  auto password = c.cstr();
  if (!password || !c.at_end()) return std::nullopt;
  return password;
}

std::optional<SaslInitialResponse> read_sasl_initial_response(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Password)) return std::nullopt;
  Cursor c(f.body);
  auto mechanism = c.cstr();
  if (!mechanism) return std::nullopt;
  auto len = c.i32();
  if (!len) return std::nullopt;
  SaslInitialResponse r{*mechanism, {}};
  if (*len == -1) {
    if (!c.at_end()) return std::nullopt;
    return r;
  }
  if (*len < 0) return std::nullopt;
  auto data = c.bytes(static_cast<std::size_t>(*len));
  if (!data || !c.at_end()) return std::nullopt;
  r.data = *data;
  return r;
}

std::string_view read_sasl_response(const Frame& f) {
  return f.body;
}

void append_password(std::string& out, std::string_view password) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Password));
  append_cstr(out, password);
  end_message(out, len_pos);
}
void append_sasl_initial_response(std::string& out, std::string_view mechanism,
                                  std::string_view data) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Password));
  append_cstr(out, mechanism);
  append_i32(out, static_cast<std::int32_t>(data.size()));
  out.append(data);
  end_message(out, len_pos);
}
void append_sasl_response(std::string& out, std::string_view data) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Password));
  out.append(data);
  end_message(out, len_pos);
}

// ---- Session start-up ------------------------------------------------------------------------

void append_startup_message(std::string& out,
                            std::span<const std::pair<std::string_view, std::string_view>> params) {
  const std::size_t len_pos = begin_untagged_message(out);
  append_u32(out, kProtocolVersion3);
  for (const auto& [name, value] : params) {
    append_cstr(out, name);
    append_cstr(out, value);
  }
  append_u8(out, 0);
  end_message(out, len_pos);
}
void append_ssl_request(std::string& out) {
  const std::size_t len_pos = begin_untagged_message(out);
  append_u32(out, kSslRequestCode);
  end_message(out, len_pos);
}
void append_cancel_request(std::string& out, std::int32_t process_id, std::int32_t secret_key) {
  const std::size_t len_pos = begin_untagged_message(out);
  append_u32(out, kCancelRequestCode);
  append_i32(out, process_id);
  append_i32(out, secret_key);
  end_message(out, len_pos);
}

// ---- Simple query ----------------------------------------------------------------------------

std::optional<std::string_view> read_query(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Query)) return std::nullopt;
  Cursor c(f.body);
  auto sql = c.cstr();
  // PostgreSQL rejects a Query with bytes after the first NUL; so do we, so that what we route
  // on is exactly what the server runs.
  if (!sql || !c.at_end()) return std::nullopt;
  return sql;
}
void append_query(std::string& out, std::string_view sql) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Query));
  append_cstr(out, sql);
  end_message(out, len_pos);
}
void append_terminate(std::string& out) {
  append_empty(out, FrontendTag::Terminate);
}
void append_sync(std::string& out) {
  append_empty(out, FrontendTag::Sync);
}
void append_flush(std::string& out) {
  append_empty(out, FrontendTag::Flush);
}

void append_copy_done(std::string& out) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::CopyDone));
  end_message(out, len_pos);
}
void append_copy_fail(std::string& out, std::string_view message) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::CopyFail));
  append_cstr(out, message);
  end_message(out, len_pos);
}
std::optional<std::string_view> read_copy_fail(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::CopyFail)) return std::nullopt;
  Cursor c(f.body);
  return c.cstr();
}

// ---- Extended query --------------------------------------------------------------------------

std::optional<ParseMessage> read_parse(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Parse)) return std::nullopt;
  Cursor c(f.body);
  auto statement = c.cstr();
  if (!statement) return std::nullopt;
  auto query = c.cstr();
  if (!query) return std::nullopt;
  auto count = c.u16();
  if (!count) return std::nullopt;
  auto types = c.bytes(std::size_t{*count} * 4);
  if (!types || !c.at_end()) return std::nullopt;
  return ParseMessage{*statement, *query, *types};
}
void append_parse(std::string& out, std::string_view statement, std::string_view query,
                  std::span<const std::uint32_t> param_types) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Parse));
  append_cstr(out, statement);
  append_cstr(out, query);
  append_u16(out, static_cast<std::uint16_t>(param_types.size()));
  for (std::uint32_t oid : param_types)
    append_u32(out, oid);
  end_message(out, len_pos);
}

void append_parse_raw(std::string& out, std::string_view statement, std::string_view query,
                      std::string_view raw_param_types) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Parse));
  append_cstr(out, statement);
  append_cstr(out, query);
  append_u16(out, static_cast<std::uint16_t>(raw_param_types.size() / 4));
  out.append(raw_param_types.substr(0, raw_param_types.size() / 4 * 4));
  end_message(out, len_pos);
}

std::int16_t BindMessage::param_format(std::size_t i) const {
  const std::size_t n = param_formats.size() / 2;
  if (n == 0) return 0;
  if (n == 1) return static_cast<std::int16_t>(read_u16(param_formats.data()));
  if (i >= n) return 0;  // read_bind rejects this shape; stay in bounds for hand-made values
  return static_cast<std::int16_t>(read_u16(param_formats.data() + 2 * i));
}

std::optional<BindMessage> read_bind(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Bind)) return std::nullopt;
  Cursor c(f.body);
  auto portal = c.cstr();
  if (!portal) return std::nullopt;
  auto statement = c.cstr();
  if (!statement) return std::nullopt;
  auto format_count = c.u16();
  if (!format_count) return std::nullopt;
  auto formats = c.bytes(std::size_t{*format_count} * 2);
  if (!formats) return std::nullopt;
  auto param_count = c.u16();
  if (!param_count) return std::nullopt;
  // The 0/1/n rule: any other number of formats is a protocol violation for PostgreSQL too,
  // and would make param_format() ambiguous.
  if (*format_count > 1 && *format_count != *param_count) return std::nullopt;
  // Every parameter takes at least its 4-byte length, so a count the body cannot hold is
  // refused before reserving memory for it.
  if (std::size_t{*param_count} * 4 > c.remaining()) return std::nullopt;

  BindMessage bind;
  bind.portal = *portal;
  bind.statement = *statement;
  bind.param_formats = *formats;
  bind.params.reserve(*param_count);
  for (std::uint16_t i = 0; i < *param_count; ++i) {
    auto len = c.i32();
    if (!len) return std::nullopt;
    if (*len == -1) {
      bind.params.emplace_back(std::nullopt);
      continue;
    }
    if (*len < 0) return std::nullopt;
    auto value = c.bytes(static_cast<std::size_t>(*len));
    if (!value) return std::nullopt;
    bind.params.emplace_back(*value);
  }
  auto result_count = c.u16();
  if (!result_count) return std::nullopt;
  auto result_formats = c.bytes(std::size_t{*result_count} * 2);
  if (!result_formats || !c.at_end()) return std::nullopt;
  bind.result_formats = *result_formats;
  return bind;
}

void append_bind_renamed(std::string& out, const BindMessage& bind, std::string_view statement) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Bind));
  append_cstr(out, bind.portal);
  append_cstr(out, statement);
  append_u16(out, static_cast<std::uint16_t>(bind.param_formats.size() / 2));
  out.append(bind.param_formats);
  append_u16(out, static_cast<std::uint16_t>(bind.params.size()));
  for (const auto& p : bind.params) {
    if (!p) {
      append_i32(out, -1);
      continue;
    }
    append_i32(out, static_cast<std::int32_t>(p->size()));
    out.append(*p);
  }
  append_u16(out, static_cast<std::uint16_t>(bind.result_formats.size() / 2));
  out.append(bind.result_formats);
  end_message(out, len_pos);
}

std::optional<BindHead> read_bind_head(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Bind)) return std::nullopt;
  Cursor c(f.body);
  auto portal = c.cstr();
  if (!portal) return std::nullopt;
  auto statement = c.cstr();
  if (!statement) return std::nullopt;
  return BindHead{*portal, *statement, c.rest()};
}

std::optional<BindParameter> read_bind_parameter(std::string_view rest, std::size_t index) {
  Cursor c(rest);
  auto formats = c.i16();
  if (!formats || *formats < 0) return std::nullopt;
  std::int16_t format = 0;
  for (std::int16_t i = 0; i < *formats; ++i) {
    auto f = c.i16();
    if (!f) return std::nullopt;
    if (*formats == 1 || static_cast<std::size_t>(i) == index) format = *f;
  }
  auto count = c.i16();
  if (!count || *count < 0 || index >= static_cast<std::size_t>(*count)) return std::nullopt;
  if (*formats > 1 && static_cast<std::size_t>(*formats) != static_cast<std::size_t>(*count)) {
    return std::nullopt;
  }
  for (std::size_t i = 0;; ++i) {
    auto len = c.i32();
    if (!len) return std::nullopt;
    std::optional<std::string_view> value;
    if (*len >= 0) {
      value = c.bytes(static_cast<std::size_t>(*len));
      if (!value) return std::nullopt;
    } else if (*len != -1) {
      return std::nullopt;
    }
    if (i == index) return BindParameter{format, value};
  }
}

bool bind_rest_with_extra_columns(std::string_view rest, std::size_t extra, std::string& out) {
  Cursor c(rest);
  const auto formats = c.u16();
  if (!formats || !c.bytes(std::size_t{*formats} * 2)) return false;
  const auto params = c.u16();
  if (!params) return false;
  for (std::uint16_t i = 0; i < *params; ++i) {
    const auto len = c.i32();
    if (!len || *len < -1 || (*len > 0 && !c.bytes(static_cast<std::size_t>(*len)))) return false;
  }
  const std::size_t results_at = rest.size() - c.remaining();
  const auto results = c.u16();
  if (!results || !c.bytes(std::size_t{*results} * 2) || !c.at_end()) return false;
  out.assign(rest);
  if (*results <= 1) return true;
  if (*results + extra > 0xffff) return false;
  out.resize(results_at);
  append_u16(out, static_cast<std::uint16_t>(*results + extra));
  out.append(rest.substr(results_at + 2));
  out.append(2 * extra, '\0');
  return true;
}

bool bind_rest_subset(std::string_view rest, std::span<const std::uint16_t> numbers,
                      std::string& out) {
  Cursor c(rest);
  auto formats = c.i16();
  if (!formats || *formats < 0) return false;
  std::vector<std::int16_t> codes;
  for (std::int16_t i = 0; i < *formats; ++i) {
    auto f = c.i16();
    if (!f) return false;
    codes.push_back(*f);
  }
  auto count = c.i16();
  if (!count || *count < 0 || (*formats > 1 && *formats != *count)) return false;
  std::vector<std::string_view> values;  // each with its length prefix
  for (std::int16_t i = 0; i < *count; ++i) {
    const std::size_t at = rest.size() - c.remaining();
    auto len = c.i32();
    if (!len || *len < -1 || (*len > 0 && !c.bytes(static_cast<std::size_t>(*len)))) return false;
    values.push_back(rest.substr(at, rest.size() - c.remaining() - at));
  }
  for (std::uint16_t n : numbers) {
    if (n < 1 || n > values.size()) return false;
  }
  if (*formats > 1) {
    append_i16(out, static_cast<std::int16_t>(numbers.size()));
    for (std::uint16_t n : numbers)
      append_i16(out, codes[n - 1u]);
  } else {
    append_i16(out, *formats);
    if (*formats == 1) append_i16(out, codes[0]);
  }
  append_i16(out, static_cast<std::int16_t>(numbers.size()));
  for (std::uint16_t n : numbers)
    out.append(values[n - 1u]);
  out.append(rest.substr(rest.size() - c.remaining()));  // the result formats
  return true;
}

void append_bind(std::string& out, std::string_view portal, std::string_view statement,
                 std::string_view rest) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Bind));
  append_cstr(out, portal);
  append_cstr(out, statement);
  out.append(rest);
  end_message(out, len_pos);
}

std::optional<DescribeOrClose> read_describe(const Frame& f) {
  return read_describe_or_close(f, FrontendTag::Describe);
}
std::optional<DescribeOrClose> read_close(const Frame& f) {
  return read_describe_or_close(f, FrontendTag::Close);
}
void append_describe(std::string& out, char kind, std::string_view name) {
  append_describe_or_close(out, FrontendTag::Describe, kind, name);
}
void append_close(std::string& out, char kind, std::string_view name) {
  append_describe_or_close(out, FrontendTag::Close, kind, name);
}

std::optional<ExecuteMessage> read_execute(const Frame& f) {
  if (f.tag != tag_of(FrontendTag::Execute)) return std::nullopt;
  Cursor c(f.body);
  auto portal = c.cstr();
  if (!portal) return std::nullopt;
  auto max_rows = c.i32();
  if (!max_rows || !c.at_end()) return std::nullopt;
  return ExecuteMessage{*portal, *max_rows};
}
void append_execute(std::string& out, std::string_view portal, std::int32_t max_rows) {
  const std::size_t len_pos = begin_message(out, tag_of(FrontendTag::Execute));
  append_cstr(out, portal);
  append_i32(out, max_rows);
  end_message(out, len_pos);
}

}  // namespace pgvalve::protocol
