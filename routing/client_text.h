#pragma once
// Whether pgvalve reads a client's statement as PostgreSQL does. pgvalve reads statements byte
// by byte; PostgreSQL reads characters of the client's encoding (client_encoding.h), and with
// standard_conforming_strings off a backslash in a '' string escapes the quote after it. Where
// the two readings differ, what pgvalve takes for the inside of a string may run as SQL: such a
// statement's shard, whether it only reads, and what session state it leaves cannot be told
// from its text. Pure.

#include <string_view>

#include "routing/client_encoding.h"

namespace pgvalve::routing {

// How a client's text reads, from its client_encoding and standard_conforming_strings.
struct TextReading {
  AsciiInCharacters encoding = AsciiInCharacters::None;
  bool backslash_escapes = false;  // standard_conforming_strings is not on
  // Every statement reads as written: the usual case, with nothing to look at.
  bool plain() const { return encoding == AsciiInCharacters::None && !backslash_escapes; }
};

// The reading of a session whose client_encoding is `client_encoding` and whose
// standard_conforming_strings is `standard_conforming_strings` (PostgreSQL's booleans: anything
// but a spelling of true is taken as off; empty: the server's default, on).
TextReading text_reading(std::string_view client_encoding,
                         std::string_view standard_conforming_strings);

// `sql` reads byte by byte as PostgreSQL reads it under `reading`: no backslash when backslashes
// escape, no character with an ASCII byte inside it.
bool reads_as_written(std::string_view sql, const TextReading& reading);

}  // namespace pgvalve::routing
