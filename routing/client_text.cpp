#include "routing/client_text.h"

#include <algorithm>
#include <array>
#include <string>

namespace pgvalve::routing {

TextReading text_reading(std::string_view client_encoding,
                         std::string_view standard_conforming_strings) {
  // As written in a SET: quoted, or not.
  const auto bare = [](std::string_view v) {
    std::string out;
    for (char c : v) {
      if (c == ' ' || c == '\'' || c == '"') continue;
      out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
    }
    return out;
  };
  TextReading reading;
  reading.encoding = ascii_in_characters(bare(client_encoding));
  const std::string value = bare(standard_conforming_strings);
  // on, true, yes, 1 and the unique prefixes of true and yes; off and whatever the server
  // refuses are not read as on.
  static constexpr std::array<std::string_view, 10> kTrue = {"",  "on",  "true", "tru", "tr",
                                                             "t", "yes", "ye",   "y",   "1"};
  reading.backslash_escapes = std::find(kTrue.begin(), kTrue.end(), value) == kTrue.end();
  return reading;
}

bool reads_as_written(std::string_view sql, const TextReading& reading) {
  if (reading.backslash_escapes && sql.find('\\') != std::string_view::npos) return false;
  return !has_ascii_inside_characters(sql, reading.encoding);
}

}  // namespace pgvalve::routing
