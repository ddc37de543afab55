#include "routing/client_encoding.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace pgvalve::routing {

AsciiInCharacters ascii_in_characters(std::string_view name) {
  // As PostgreSQL's clean_encoding_name(): letters and digits only, lower case.
  std::array<char, 16> clean{};
  std::size_t n = 0;
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) == 0) continue;
    if (n == clean.size()) return AsciiInCharacters::None;  // longer than any name below
    clean[n++] = static_cast<char>(std::tolower(u));
  }
  const std::string_view cleaned(clean.data(), n);
  struct Name {
    std::string_view name;
    AsciiInCharacters kind;
  };
  // pg_encname_tbl's names of these encodings.
  static constexpr Name kNames[] = {
      {"big5", AsciiInCharacters::Big5},         {"gb18030", AsciiInCharacters::Gb18030},
      {"gbk", AsciiInCharacters::Big5},          {"johab", AsciiInCharacters::Johab},
      {"mskanji", AsciiInCharacters::Sjis},      {"shiftjis", AsciiInCharacters::Sjis},
      {"shiftjis2004", AsciiInCharacters::Sjis}, {"sjis", AsciiInCharacters::Sjis},
      {"uhc", AsciiInCharacters::Big5},          {"win932", AsciiInCharacters::Sjis},
      {"win936", AsciiInCharacters::Big5},       {"win949", AsciiInCharacters::Big5},
      {"win950", AsciiInCharacters::Big5},       {"windows932", AsciiInCharacters::Sjis},
      {"windows936", AsciiInCharacters::Big5},   {"windows949", AsciiInCharacters::Big5},
      {"windows950", AsciiInCharacters::Big5}};
  const auto* it = std::find_if(std::begin(kNames), std::end(kNames),
                                [&](const Name& e) { return e.name == cleaned; });
  return it == std::end(kNames) ? AsciiInCharacters::None : it->kind;
}

bool has_ascii_inside_characters(std::string_view text, AsciiInCharacters encoding) {
  if (encoding == AsciiInCharacters::None) return false;
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char lead = byte(i);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    // The character's length, as PostgreSQL's pg_*_mblen() gives it.
    std::size_t length = 2;
    switch (encoding) {
      case AsciiInCharacters::Sjis:
        if (lead >= 0xa1 && lead <= 0xdf) length = 1;  // half-width katakana
        break;
      case AsciiInCharacters::Johab:  // pg_euc_mblen
        if (lead == 0x8f) length = 3;
        break;
      case AsciiInCharacters::Gb18030:
        if (i + 1 < text.size() && byte(i + 1) >= 0x30 && byte(i + 1) <= 0x39) length = 4;
        break;
      case AsciiInCharacters::Big5:
      case AsciiInCharacters::None:
        break;
    }
    for (std::size_t k = 1; k < length && i + k < text.size(); ++k) {
      if (byte(i + k) < 0x80) return true;
    }
    i += length;
  }
  return false;
}

}  // namespace pgvalve::routing
