// Messages PostgreSQL sends: readers for what pgvalve inspects on the server side, builders for
// what pgvalve answers clients itself (authentication, errors, the admin console's results).
#include "protocol/messages.h"
#include "protocol/wire.h"

namespace pgvalve::protocol {

namespace {

constexpr char tag_of(BackendTag t) {
  return static_cast<char>(t);
}

// A body that is exactly one NUL-terminated string.
std::optional<std::string_view> single_cstr(const Frame& f) {
  Cursor c(f.body);
  auto s = c.cstr();
  if (!s || !c.at_end()) return std::nullopt;
  return s;
}

void append_empty(std::string& out, BackendTag tag) {
  end_message(out, begin_message(out, tag_of(tag)));
}

void append_auth_code(std::string& out, AuthCode code, std::string_view data) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::Authentication));
  append_i32(out, static_cast<std::int32_t>(code));
  out.append(data);
  end_message(out, len_pos);
}

void append_fields(std::string& out, BackendTag tag, const ErrorFields& fields) {
  const std::size_t len_pos = begin_message(out, tag_of(tag));
  // PostgreSQL sends the severity twice: 'S' may be translated, 'V' never is. Clients from
  // 9.6 on read 'V'; older ones only know 'S'.
  append_u8(out, 'S');
  append_cstr(out, fields.severity);
  append_u8(out, 'V');
  append_cstr(out, fields.severity);
  append_u8(out, 'C');
  append_cstr(out, fields.sqlstate);
  append_u8(out, 'M');
  append_cstr(out, fields.message);
  if (!fields.detail.empty()) {
    append_u8(out, 'D');
    append_cstr(out, fields.detail);
  }
  if (!fields.hint.empty()) {
    append_u8(out, 'H');
    append_cstr(out, fields.hint);
  }
  if (!fields.routine.empty()) {
    append_u8(out, 'R');
    append_cstr(out, fields.routine);
  }
  append_u8(out, 0);
  end_message(out, len_pos);
}

}  // namespace

// ---- Authentication --------------------------------------------------------------------------

std::optional<AuthenticationRequest> read_authentication(const Frame& f) {
  if (f.tag != tag_of(BackendTag::Authentication)) return std::nullopt;
  Cursor c(f.body);
  auto code = c.i32();
  if (!code) return std::nullopt;
  AuthenticationRequest req{*code, c.rest()};
  switch (static_cast<AuthCode>(*code)) {
    case AuthCode::Ok:
    case AuthCode::CleartextPassword:
      if (!req.data.empty()) return std::nullopt;
      break;
    case AuthCode::Md5Password:
      if (req.data.size() != 4) return std::nullopt;
      break;
    case AuthCode::Sasl: {
      // NUL-terminated names closed by an empty one, and nothing after it.
      Cursor list(req.data);
      while (true) {
        auto name = list.cstr();
        if (!name) return std::nullopt;
        if (name->empty()) break;
      }
      if (!list.at_end()) return std::nullopt;
      break;
    }
    default:
      break;
  }
  return req;
}

std::vector<std::string_view> sasl_mechanisms(std::string_view data) {
  std::vector<std::string_view> names;
  Cursor c(data);
  while (!c.at_end()) {
    auto name = c.cstr();
    if (!name) {
      // Tolerate a list missing its final NUL: the last name runs to the end.
      names.push_back(c.rest());
      break;
    }
    if (name->empty()) break;
    names.push_back(*name);
  }
  return names;
}

void append_authentication_ok(std::string& out) {
  append_auth_code(out, AuthCode::Ok, {});
}
void append_authentication_cleartext(std::string& out) {
  append_auth_code(out, AuthCode::CleartextPassword, {});
}
void append_authentication_md5(std::string& out, std::string_view salt4) {
  // The salt is fixed-size on the wire; a short one is zero-padded rather than shifting bytes.
  char salt[4] = {0, 0, 0, 0};
  salt4.copy(salt, 4);
  append_auth_code(out, AuthCode::Md5Password, std::string_view(salt, 4));
}
void append_authentication_sasl(std::string& out, std::span<const std::string_view> mechanisms) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::Authentication));
  append_i32(out, static_cast<std::int32_t>(AuthCode::Sasl));
  for (std::string_view m : mechanisms)
    append_cstr(out, m);
  append_u8(out, 0);
  end_message(out, len_pos);
}
void append_authentication_sasl_continue(std::string& out, std::string_view data) {
  append_auth_code(out, AuthCode::SaslContinue, data);
}
void append_authentication_sasl_final(std::string& out, std::string_view data) {
  append_auth_code(out, AuthCode::SaslFinal, data);
}

// ---- Status messages -------------------------------------------------------------------------

std::optional<BackendKeyData> read_backend_key_data(const Frame& f) {
  if (f.tag != tag_of(BackendTag::BackendKeyData) || f.body.size() != 8) return std::nullopt;
  return BackendKeyData{static_cast<std::int32_t>(read_u32(f.body.data())),
                        static_cast<std::int32_t>(read_u32(f.body.data() + 4))};
}
void append_backend_key_data(std::string& out, BackendKeyData key) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::BackendKeyData));
  append_i32(out, key.process_id);
  append_i32(out, key.secret_key);
  end_message(out, len_pos);
}

std::optional<ParameterStatus> read_parameter_status(const Frame& f) {
  if (f.tag != tag_of(BackendTag::ParameterStatus)) return std::nullopt;
  Cursor c(f.body);
  auto name = c.cstr();
  if (!name) return std::nullopt;
  auto value = c.cstr();
  if (!value || !c.at_end()) return std::nullopt;
  return ParameterStatus{*name, *value};
}
void append_parameter_status(std::string& out, std::string_view name, std::string_view value) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::ParameterStatus));
  append_cstr(out, name);
  append_cstr(out, value);
  end_message(out, len_pos);
}

void append_negotiate_protocol_version(std::string& out, std::uint32_t newest_minor,
                                       std::span<const std::string> unsupported_options) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::NegotiateProtocolVersion));
  append_u32(out, (3u << 16) | newest_minor);
  append_u32(out, static_cast<std::uint32_t>(unsupported_options.size()));
  for (const std::string& option : unsupported_options)
    append_cstr(out, option);
  end_message(out, len_pos);
}

std::optional<char> read_ready_for_query(const Frame& f) {
  if (f.tag != tag_of(BackendTag::ReadyForQuery) || f.body.size() != 1) return std::nullopt;
  const char status = f.body[0];
  // Pool release hangs on this byte, so anything but the three documented values is an error.
  if (status != 'I' && status != 'T' && status != 'E') return std::nullopt;
  return status;
}
void append_ready_for_query(std::string& out, char status) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::ReadyForQuery));
  out.push_back(status);
  end_message(out, len_pos);
}

std::optional<ErrorFields> read_error_response(const Frame& f) {
  if (f.tag != tag_of(BackendTag::ErrorResponse) && f.tag != tag_of(BackendTag::NoticeResponse)) {
    return std::nullopt;
  }
  ErrorFields fields;
  bool have_v = false;
  Cursor c(f.body);
  while (true) {
    auto type = c.u8();
    if (!type) return std::nullopt;
    if (*type == 0) break;
    auto value = c.cstr();
    if (!value) return std::nullopt;
    switch (*type) {
      case 'S':
        if (!have_v) fields.severity = *value;
        break;
      case 'V':
        fields.severity = *value;
        have_v = true;
        break;
      case 'C':
        fields.sqlstate = *value;
        break;
      case 'M':
        fields.message = *value;
        break;
      case 'D':
        fields.detail = *value;
        break;
      case 'H':
        fields.hint = *value;
        break;
      default:  // position, context, schema, ...: valid, not needed
        break;
    }
  }
  if (!c.at_end()) return std::nullopt;
  return fields;
}
void append_error_response(std::string& out, const ErrorFields& fields) {
  append_fields(out, BackendTag::ErrorResponse, fields);
}
void append_notice_response(std::string& out, const ErrorFields& fields) {
  append_fields(out, BackendTag::NoticeResponse, fields);
}

std::optional<std::string_view> read_command_complete(const Frame& f) {
  if (f.tag != tag_of(BackendTag::CommandComplete)) return std::nullopt;
  return single_cstr(f);
}
void append_command_complete(std::string& out, std::string_view tag) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::CommandComplete));
  append_cstr(out, tag);
  end_message(out, len_pos);
}
void append_empty_query_response(std::string& out) {
  append_empty(out, BackendTag::EmptyQueryResponse);
}
void append_portal_suspended(std::string& out) {
  append_empty(out, BackendTag::PortalSuspended);
}

std::optional<NotificationResponse> read_notification_response(const Frame& f) {
  if (f.tag != tag_of(BackendTag::NotificationResponse)) return std::nullopt;
  Cursor c(f.body);
  auto pid = c.i32();
  if (!pid) return std::nullopt;
  auto channel = c.cstr();
  if (!channel) return std::nullopt;
  auto payload = c.cstr();
  if (!payload || !c.at_end()) return std::nullopt;
  return NotificationResponse{*pid, *channel, *payload};
}
void append_notification_response(std::string& out, const NotificationResponse& n) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::NotificationResponse));
  append_i32(out, n.process_id);
  append_cstr(out, n.channel);
  append_cstr(out, n.payload);
  end_message(out, len_pos);
}

// ---- Result sets -----------------------------------------------------------------------------

void append_row_description(std::string& out, std::span<const std::string_view> column_names) {
  constexpr std::uint32_t kTextOid = 25;
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::RowDescription));
  append_i16(out, static_cast<std::int16_t>(column_names.size()));
  for (std::string_view name : column_names) {
    append_cstr(out, name);
    append_u32(out, 0);  // not a table column
    append_i16(out, 0);  // attribute number
    append_u32(out, kTextOid);
    append_i16(out, -1);  // typlen: varlena
    append_i32(out, -1);  // typmod: none
    append_i16(out, 0);   // format: text
  }
  end_message(out, len_pos);
}

std::optional<std::vector<RowField>> read_row_fields(std::string_view body) {
  Cursor c(body);
  const auto count = c.i16();
  // Each column takes at least 19 bytes: a count the body cannot hold reserves nothing.
  if (!count || *count < 0 ||
      std::size_t{static_cast<std::uint16_t>(*count)} * 19 > c.remaining()) {
    return std::nullopt;
  }
  std::vector<RowField> fields;
  fields.reserve(static_cast<std::size_t>(*count));
  for (std::int16_t i = 0; i < *count; ++i) {
    const auto name = c.cstr();
    const auto table = c.i32();
    const auto column = c.i16();
    const auto type = c.i32();
    const auto size = c.i16();
    const auto modifier = c.i32();
    const auto format = c.i16();
    if (!name || !table || !column || !type || !size || !modifier || !format) return std::nullopt;
    fields.push_back({*name, *table, *column, *type, *size, *modifier, *format});
  }
  if (!c.at_end()) return std::nullopt;
  return fields;
}

void append_row_field(std::string& out, const RowField& field) {
  append_cstr(out, field.name);
  append_i32(out, field.table);
  append_i16(out, field.column);
  append_i32(out, field.type);
  append_i16(out, field.size);
  append_i32(out, field.modifier);
  append_i16(out, field.format);
}

void append_data_row(std::string& out, std::span<const std::optional<std::string_view>> values) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::DataRow));
  append_i16(out, static_cast<std::int16_t>(values.size()));
  for (const auto& v : values) {
    if (!v) {
      append_i32(out, -1);
      continue;
    }
    append_i32(out, static_cast<std::int32_t>(v->size()));
    out.append(*v);
  }
  end_message(out, len_pos);
}

// ---- Extended query responses ----------------------------------------------------------------

void append_parse_complete(std::string& out) {
  append_empty(out, BackendTag::ParseComplete);
}
void append_bind_complete(std::string& out) {
  append_empty(out, BackendTag::BindComplete);
}
void append_close_complete(std::string& out) {
  append_empty(out, BackendTag::CloseComplete);
}
void append_no_data(std::string& out) {
  append_empty(out, BackendTag::NoData);
}
void append_no_parameters(std::string& out) {
  const std::size_t len_pos = begin_message(out, tag_of(BackendTag::ParameterDescription));
  append_i16(out, 0);
  end_message(out, len_pos);
}

}  // namespace pgvalve::protocol
