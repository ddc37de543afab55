// Client encodings whose multibyte characters may hold ASCII bytes (PostgreSQL's client-only
// encodings SJIS, BIG5, GBK, UHC, JOHAB, GB18030 and SHIFT_JIS_2004). pgvalve reads statements
// and COPY data as bytes: in these encodings the second byte of a character can look like a
// backslash (SJIS 表 is \x95\x5C) and change where a string or a COPY field ends. PostgreSQL
// converts them to the server encoding before it parses anything, so it reads them right and
// pgvalve would not. Every other encoding keeps ASCII bytes for ASCII characters. Pure.
#pragma once

#include <cstdint>
#include <string_view>

namespace pgvalve::routing {

// How characters are cut in such an encoding (PostgreSQL's pg_*_mblen); None: ASCII bytes are
// always ASCII characters.
enum class AsciiInCharacters : std::uint8_t { None, Sjis, Big5, Johab, Gb18030 };

// The encoding `name` names, spelled any way PostgreSQL accepts (case, '-' and '_' ignored:
// "SJIS", "Shift_JIS", "win932"). Allocates nothing.
AsciiInCharacters ascii_in_characters(std::string_view name);

// `text`, in `encoding`, has a character with an ASCII byte after its first; false for None.
bool has_ascii_inside_characters(std::string_view text, AsciiInCharacters encoding);

}  // namespace pgvalve::routing
