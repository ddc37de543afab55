// Readers (Frame -> typed view) and builders (values -> bytes appended to a buffer) for the
// protocol 3.0 messages pgvalve inspects or produces. Readers return std::nullopt for a body
// that does not match the message's format; string_views point into the frame.
// Readers also check Frame::tag and return std::nullopt for a frame of another message type.
// Helpers for reading or writing other messages are in protocol/wire.h.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/frame.h"

namespace pgvalve::protocol {

// ---- Authentication ('R') ------------------------------------------------------------------

enum class AuthCode : std::int32_t {
  Ok = 0,
  CleartextPassword = 3,
  Md5Password = 5,
  Sasl = 10,
  SaslContinue = 11,
  SaslFinal = 12,
};

struct AuthenticationRequest {
  std::int32_t code = 0;  // AuthCode, or another value pgvalve does not support (e.g. GSS)
  std::string_view data;  // Md5Password: 4-byte salt; Sasl: NUL-separated mechanism list;
                          // SaslContinue / SaslFinal: the SCRAM message
};
std::optional<AuthenticationRequest> read_authentication(const Frame& f);
// Splits the Sasl mechanism list ("SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0").
std::vector<std::string_view> sasl_mechanisms(std::string_view data);

void append_authentication_ok(std::string& out);
void append_authentication_cleartext(std::string& out);
void append_authentication_md5(std::string& out, std::string_view salt4);
void append_authentication_sasl(std::string& out, std::span<const std::string_view> mechanisms);
void append_authentication_sasl_continue(std::string& out, std::string_view data);
void append_authentication_sasl_final(std::string& out, std::string_view data);

// ---- Password family ('p'), as sent by a client -------------------------------------------

// PasswordMessage (cleartext or md5): the NUL-terminated string.
std::optional<std::string_view> read_password(const Frame& f);
struct SaslInitialResponse {
  std::string_view mechanism;
  std::string_view data;  // empty when the client sent length -1
};
std::optional<SaslInitialResponse> read_sasl_initial_response(const Frame& f);
// SASLResponse: the whole body is the data.
std::string_view read_sasl_response(const Frame& f);

void append_password(std::string& out, std::string_view password);
void append_sasl_initial_response(std::string& out, std::string_view mechanism,
                                  std::string_view data);
void append_sasl_response(std::string& out, std::string_view data);

// ---- Session start-up, as a client sends it (pgvalve -> PostgreSQL) -------------------------

void append_startup_message(std::string& out,
                            std::span<const std::pair<std::string_view, std::string_view>> params);
void append_ssl_request(std::string& out);
void append_cancel_request(std::string& out, std::int32_t process_id, std::int32_t secret_key);

// ---- Backend status messages ---------------------------------------------------------------

struct BackendKeyData {
  std::int32_t process_id = 0;
  std::int32_t secret_key = 0;
};
std::optional<BackendKeyData> read_backend_key_data(const Frame& f);
void append_backend_key_data(std::string& out, BackendKeyData key);

struct ParameterStatus {
  std::string_view name;
  std::string_view value;
};
std::optional<ParameterStatus> read_parameter_status(const Frame& f);
void append_parameter_status(std::string& out, std::string_view name, std::string_view value);
// NegotiateProtocolVersion: the newest minor version of protocol 3 served, and the `_pq_.`
// protocol options of the StartupMessage that are not.
void append_negotiate_protocol_version(std::string& out, std::uint32_t newest_minor,
                                       std::span<const std::string> unsupported_options);

// ReadyForQuery status: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction.
std::optional<char> read_ready_for_query(const Frame& f);
void append_ready_for_query(std::string& out, char status);

// ErrorResponse / NoticeResponse fields pgvalve reads or writes.
struct ErrorFields {
  std::string_view severity;  // 'S' (localized) / 'V'; "ERROR", "FATAL", "NOTICE", ...
  std::string_view sqlstate;  // 'C'
  std::string_view message;   // 'M'
  std::string_view detail;    // 'D', optional
  std::string_view hint;      // 'H', optional
  // 'R', optional, written only: the server routine that raised it, which some drivers read.
  std::string_view routine;
};
std::optional<ErrorFields> read_error_response(const Frame& f);  // also reads NoticeResponse
void append_error_response(std::string& out, const ErrorFields& fields);
void append_notice_response(std::string& out, const ErrorFields& fields);

std::optional<std::string_view> read_command_complete(const Frame& f);
void append_command_complete(std::string& out, std::string_view tag);
void append_empty_query_response(std::string& out);
void append_portal_suspended(std::string& out);

struct NotificationResponse {
  std::int32_t process_id = 0;
  std::string_view channel;
  std::string_view payload;
};
std::optional<NotificationResponse> read_notification_response(const Frame& f);
void append_notification_response(std::string& out, const NotificationResponse& n);

// One column of a server's RowDescription.
struct RowField {
  std::string_view name;
  std::int32_t table = 0;   // the source table's OID, 0 for a computed column
  std::int16_t column = 0;  // its attribute number there
  std::int32_t type = 0;
  std::int16_t size = 0;  // typlen
  std::int32_t modifier = 0;
  std::int16_t format = 0;
};
// The columns of a RowDescription's body; nullopt when it is malformed.
std::optional<std::vector<RowField>> read_row_fields(std::string_view body);
// One column, as read_row_fields() reads it (after the column count).
void append_row_field(std::string& out, const RowField& field);

// Result sets built by pgvalve itself (admin console): every column is text (OID 25).
void append_row_description(std::string& out, std::span<const std::string_view> column_names);
// A NULL column is std::nullopt.
void append_data_row(std::string& out, std::span<const std::optional<std::string_view>> values);

// ---- Simple and extended query ---------------------------------------------------------------

std::optional<std::string_view> read_query(const Frame& f);  // text without the final NUL
void append_query(std::string& out, std::string_view sql);
// A Query message of its own (for messages pgvalve keeps and sends again and again).
inline std::string query_message(std::string_view sql) {
  std::string out;
  append_query(out, sql);
  return out;
}
void append_terminate(std::string& out);
void append_sync(std::string& out);
void append_flush(std::string& out);

// ---- COPY FROM STDIN (client to server) ------------------------------------------------------

void append_copy_done(std::string& out);
void append_copy_fail(std::string& out, std::string_view message);
std::optional<std::string_view> read_copy_fail(const Frame& f);  // the client's reason

struct ParseMessage {
  std::string_view statement;  // "" = unnamed
  std::string_view query;
  std::string_view param_types;  // raw: n * int32 OIDs, big-endian
  std::uint16_t param_count() const { return static_cast<std::uint16_t>(param_types.size() / 4); }
  std::uint32_t param_type(std::size_t i) const { return read_u32(param_types.data() + 4 * i); }
};
std::optional<ParseMessage> read_parse(const Frame& f);
void append_parse(std::string& out, std::string_view statement, std::string_view query,
                  std::span<const std::uint32_t> param_types);
// Parse with the parameter types as raw bytes (n * int32, as read_parse returns them).
void append_parse_raw(std::string& out, std::string_view statement, std::string_view query,
                      std::string_view raw_param_types);

// Bind: parameters stay in place; walk them with param(i). A NULL parameter has no value.
struct BindMessage {
  std::string_view portal;
  std::string_view statement;
  std::string_view param_formats;  // raw: n * int16
  std::vector<std::optional<std::string_view>> params;
  std::string_view result_formats;  // raw: n * int16
  // Format (0 text, 1 binary) of parameter i, applying the protocol's 0/1/n rule.
  std::int16_t param_format(std::size_t i) const;
};
std::optional<BindMessage> read_bind(const Frame& f);
// Re-encodes a Bind with another statement name (same portal, formats, parameters).
void append_bind_renamed(std::string& out, const BindMessage& bind, std::string_view statement);

// The names at the front of a Bind and the rest of its body (formats, parameters, result
// formats) unread: enough to route or rename it without walking the parameters.
struct BindHead {
  std::string_view portal;
  std::string_view statement;
  std::string_view rest;
};
std::optional<BindHead> read_bind_head(const Frame& f);
// Parameter `index` (from 0) of a Bind whose body after the names is `rest`, without reading the
// others into memory: its format (0 text, 1 binary) and value (nullopt: NULL). nullopt when the
// Bind has no such parameter or is malformed.
struct BindParameter {
  std::int16_t format = 0;
  std::optional<std::string_view> value;
};
std::optional<BindParameter> read_bind_parameter(std::string_view rest, std::size_t index);
// The body after the names of a Bind with only the parameters `numbers` (from 1, in that order)
// of `rest`, their format codes with them, and the same result formats; false when `rest` is
// malformed or has no such parameter.
bool bind_rest_subset(std::string_view rest, std::span<const std::uint16_t> numbers,
                      std::string& out);
// `rest` (a Bind's body after its names) for a statement with `extra` more output columns after
// the client's: when it names a format per column, the extra ones are text; one format, or none,
// already covers them. False when `rest` is malformed.
bool bind_rest_with_extra_columns(std::string_view rest, std::size_t extra, std::string& out);
// A Bind of `statement` into `portal` whose remaining body is `rest` as raw bytes.
void append_bind(std::string& out, std::string_view portal, std::string_view statement,
                 std::string_view rest);
// The body after the names of a Bind without parameters or result formats.
inline constexpr std::string_view kBindWithoutParameters{"\0\0\0\0\0\0", 6};

struct DescribeOrClose {
  char kind = 0;  // 'S' statement, 'P' portal
  std::string_view name;
};
std::optional<DescribeOrClose> read_describe(const Frame& f);
std::optional<DescribeOrClose> read_close(const Frame& f);
void append_describe(std::string& out, char kind, std::string_view name);
void append_close(std::string& out, char kind, std::string_view name);

struct ExecuteMessage {
  std::string_view portal;
  std::int32_t max_rows = 0;
};
std::optional<ExecuteMessage> read_execute(const Frame& f);
void append_execute(std::string& out, std::string_view portal, std::int32_t max_rows);

void append_parse_complete(std::string& out);
void append_bind_complete(std::string& out);
void append_close_complete(std::string& out);
void append_no_data(std::string& out);
// ParameterDescription of a statement without parameters.
void append_no_parameters(std::string& out);

}  // namespace pgvalve::protocol
