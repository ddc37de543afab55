// SQL text pgvalve writes itself (replaying settings, LISTEN on behalf of clients, raising an
// error on the server): quoting done in one place.
#pragma once

#include <string>
#include <string_view>

namespace pgvalve::routing {

// 'value' with quotes doubled; E'value' with backslashes doubled too when it holds one, so that
// it reads the same whatever standard_conforming_strings is.
void append_literal(std::string& out, std::string_view value);
// "name" with quotes doubled; keeps case.
void append_identifier(std::string& out, std::string_view name);
// A statement that makes the server raise `message` with `sqlstate`, failing the transaction in
// progress as any error would.
std::string raise_error_statement(std::string_view sqlstate, std::string_view message);

}  // namespace pgvalve::routing
