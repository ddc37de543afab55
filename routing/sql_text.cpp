#include "routing/sql_text.h"

namespace pgvalve::routing {

namespace {
void append_quoted(std::string& out, std::string_view text, char quote) {
  out += quote;
  for (char c : text) {
    if (c == quote) out += quote;
    out += c;
  }
  out += quote;
}
}  // namespace

void append_literal(std::string& out, std::string_view value) {
  if (value.find('\\') == std::string_view::npos) {
    append_quoted(out, value, '\'');
    return;
  }
  // E'...' with the backslashes doubled reads the same whatever standard_conforming_strings is
  // on the server; a plain literal would not with it off.
  out += "E'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += c;
    out += c;
  }
  out += '\'';
}

void append_identifier(std::string& out, std::string_view name) {
  append_quoted(out, name, '"');
}

std::string raise_error_statement(std::string_view sqlstate, std::string_view message) {
  std::string sql = "DO $pgvalve$BEGIN RAISE EXCEPTION USING ERRCODE = ";
  append_literal(sql, sqlstate);
  sql += ", MESSAGE = ";
  append_literal(sql, message);
  sql += "; END$pgvalve$";
  return sql;
}

}  // namespace pgvalve::routing
