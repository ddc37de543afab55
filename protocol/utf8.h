// Text pgvalve shows that others sent (names in a startup packet, statement text): it is kept as
// the bytes that came, and made valid UTF-8 where it is shown to a reader that requires it.
#pragma once

#include <string>
#include <string_view>

namespace pgvalve::protocol {

bool is_valid_utf8(std::string_view text);
// `text` with each invalid sequence (a stray byte, a truncated, overlong or surrogate sequence,
// one above U+10FFFF) replaced with U+FFFD, one per maximal invalid part, as Python's
// errors="replace" and WHATWG decoders do. Valid text comes back unchanged.
std::string to_valid_utf8(std::string_view text);

}  // namespace pgvalve::protocol
