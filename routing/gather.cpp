#include "routing/gather.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "protocol/binary_values.h"
#include "protocol/messages.h"
#include "protocol/wire.h"

namespace pgvalve::routing {

namespace {

namespace pr = protocol;
using pr::binary_float;
using pr::binary_float_of;
using pr::binary_integer;
using pr::binary_integer_of;

constexpr std::uint32_t kBool = 16, kBytea = 17, kName = 19, kInt8 = 20, kInt2 = 21, kInt4 = 23,
                        kText = 25, kOid = 26, kFloat4 = 700, kFloat8 = 701, kBpchar = 1042,
                        kVarchar = 1043, kDate = 1082, kTime = 1083, kTimestamp = 1114,
                        kTimestamptz = 1184, kNumeric = 1700, kUuid = 2950;

std::optional<std::int64_t> integer(std::string_view s) {
  std::int64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// A float's text as PostgreSQL writes it (NaN and infinities included), read in double or
// single precision.
template <class Float>
Float float_value(std::string_view s) {
  const std::string text(s);  // strtod needs a terminated string
  if (text == "NaN") return std::numeric_limits<Float>::quiet_NaN();
  if constexpr (std::is_same_v<Float, float>) {
    return std::strtof(text.c_str(), nullptr);
  } else {
    return std::strtod(text.c_str(), nullptr);
  }
}

double floating(std::string_view s) {
  return float_value<double>(s);
}

// A timestamptz's text in DateStyle ISO ("2026-10-25 02:30:00.5+02", "+05:30", " BC",
// "infinity") as seconds since 1970 UTC and microseconds: its text is in the session's time
// zone, so in the hour a zone repeats (autumn's change) the bytes' order is not the instants'.
// nullopt for another DateStyle.
using Instant = std::pair<std::int64_t, std::int64_t>;
std::optional<Instant> timestamptz_instant(std::string_view s) {
  if (s == "infinity") return Instant{std::numeric_limits<std::int64_t>::max(), 0};
  if (s == "-infinity") return Instant{std::numeric_limits<std::int64_t>::min(), 0};
  const bool bc = s.ends_with(" BC");
  if (bc) s.remove_suffix(3);
  std::size_t pos = 0;
  auto number = [&](std::size_t min_digits, std::size_t max_digits) -> std::optional<std::int64_t> {
    std::int64_t v = 0;
    std::size_t n = 0;
    while (pos < s.size() && n < max_digits && s[pos] >= '0' && s[pos] <= '9') {
      v = v * 10 + (s[pos++] - '0');
      ++n;
    }
    if (n < min_digits) return std::nullopt;
    return v;
  };
  auto expect = [&](char c) { return pos < s.size() && s[pos++] == c; };
  const auto year = number(4, 7);
  if (!year || !expect('-')) return std::nullopt;
  const auto month = number(2, 2);
  if (!month || !expect('-')) return std::nullopt;
  const auto day = number(2, 2);
  if (!day || !expect(' ')) return std::nullopt;
  const auto hour = number(2, 2);
  if (!hour || !expect(':')) return std::nullopt;
  const auto minute = number(2, 2);
  if (!minute || !expect(':')) return std::nullopt;
  const auto second = number(2, 2);
  if (!second) return std::nullopt;
  std::int64_t micros = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    std::int64_t scale = 100000;
    std::size_t n = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && n < 6) {
      micros += (s[pos++] - '0') * scale;
      scale /= 10;
      ++n;
    }
    if (n == 0) return std::nullopt;
  }
  if (pos >= s.size() || (s[pos] != '+' && s[pos] != '-')) return std::nullopt;
  const int sign = s[pos++] == '-' ? -1 : 1;
  const auto offset_hours = number(2, 2);
  if (!offset_hours) return std::nullopt;
  std::int64_t offset = *offset_hours * 3600;
  for (int part = 0; part < 2 && pos < s.size(); ++part) {
    const auto more = expect(':') ? number(2, 2) : std::nullopt;
    if (!more) return std::nullopt;
    offset += *more * (part == 0 ? 60 : 1);
  }
  if (pos != s.size() || *month < 1 || *month > 12 || *day < 1 || *day > 31) return std::nullopt;
  // Days since 1970-01-01 of the proleptic Gregorian date (Howard Hinnant's days_from_civil);
  // 1 BC is year 0.
  std::int64_t y = bc ? 1 - *year : *year;
  const std::int64_t m = *month;
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + *day - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const std::int64_t days = era * 146097 + doe - 719468;
  const std::int64_t seconds = days * 86400 + *hour * 3600 + *minute * 60 + *second - sign * offset;
  return Instant{seconds, micros};
}

// PostgreSQL orders NaN above every other value.
int compare_doubles(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) - std::isnan(b);
  return a < b ? -1 : a > b ? 1 : 0;
}

// A numeric's text: [-]digits[.digits], NaN, Infinity, -Infinity.
struct Decimal {
  bool negative = false;
  int special = 0;  // 0 finite, 1 +Infinity, 2 NaN, -1 -Infinity
  std::string_view whole;
  std::string_view fraction;
};

Decimal decimal(std::string_view s) {
  Decimal d;
  if (s == "NaN") {
    d.special = 2;
    return d;
  }
  if (s == "Infinity") {
    d.special = 1;
    return d;
  }
  if (s == "-Infinity") {
    d.special = -1;
    return d;
  }
  if (!s.empty() && s[0] == '-') {
    d.negative = true;
    s.remove_prefix(1);
  }
  const std::size_t dot = s.find('.');
  d.whole = s.substr(0, dot);
  d.fraction = dot == std::string_view::npos ? std::string_view{} : s.substr(dot + 1);
  while (d.whole.size() > 1 && d.whole[0] == '0')
    d.whole.remove_prefix(1);
  while (!d.fraction.empty() && d.fraction.back() == '0')
    d.fraction.remove_suffix(1);
  if (d.whole == "0" && d.fraction.empty()) d.negative = false;  // -0 is 0
  return d;
}

int compare_magnitudes(const Decimal& a, const Decimal& b) {
  if (a.whole.size() != b.whole.size()) return a.whole.size() < b.whole.size() ? -1 : 1;
  if (const int c = a.whole.compare(b.whole); c != 0) return c < 0 ? -1 : 1;
  const std::size_t n = std::max(a.fraction.size(), b.fraction.size());
  for (std::size_t i = 0; i < n; ++i) {
    const char x = i < a.fraction.size() ? a.fraction[i] : '0';
    const char y = i < b.fraction.size() ? b.fraction[i] : '0';
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

int compare_decimals(std::string_view x, std::string_view y) {
  const Decimal a = decimal(x);
  const Decimal b = decimal(y);
  auto rank = [](const Decimal& d) {
    return d.special == 2 ? 3 : d.special == 1 ? 2 : d.special == -1 ? 0 : 1;
  };
  if (rank(a) != rank(b) || rank(a) != 1) return rank(a) < rank(b) ? -1 : rank(a) > rank(b) ? 1 : 0;
  if (a.negative != b.negative) return a.negative ? -1 : 1;
  const int m = compare_magnitudes(a, b);
  return a.negative ? -m : m;
}

// A date's text in DateStyle ISO ("2024-01-05", "0044-03-15 BC"), or +-infinity: one text per
// date. Its bytes order as the dates do for years 1-9999 AD (ten characters, orderable()); in
// other DateStyles ("05/01/2024") and BC they do not.
bool iso_date(std::string_view s) {
  if (s == "infinity" || s == "-infinity") return true;
  auto digits = [&](std::size_t at, std::size_t n) {
    for (std::size_t i = at; i < at + n; ++i)
      if (i >= s.size() || s[i] < '0' || s[i] > '9') return false;
    return true;
  };
  return s.size() >= 10 && digits(0, 4) && s[4] == '-' && digits(5, 2) && s[7] == '-' &&
         digits(8, 2) && (s.size() == 10 || s[10] == ' ');
}

// A timestamp's text in DateStyle ISO ("2024-01-05 10:00:00[.fraction]", years 1-9999 AD).
bool iso_timestamp(std::string_view s) {
  if (s == "infinity" || s == "-infinity") return true;
  if (!iso_date(s) || s.size() < 19) return false;
  auto digit = [&](std::size_t i) { return s[i] >= '0' && s[i] <= '9'; };
  if (!(digit(11) && digit(12) && s[13] == ':' && digit(14) && digit(15) && s[16] == ':' &&
        digit(17) && digit(18))) {
    return false;
  }
  if (s.size() == 19) return true;
  if (s[19] != '.' || s.size() == 20) return false;
  for (std::size_t i = 20; i < s.size(); ++i)
    if (!digit(i)) return false;
  return true;
}

// A numeric's text with the scale it was written with dropped (1.50 -> 1.5, -0.0 -> 0): one
// text per value, as numeric's equality sees them.
std::string canonical_decimal(std::string_view s) {
  const Decimal d = decimal(s);
  if (d.special != 0) return std::string(s);
  std::string out = d.negative ? "-" : "";
  out.append(d.whole.empty() ? "0" : d.whole);
  if (!d.fraction.empty()) out.append(".").append(d.fraction);
  return out;
}

// Digits of |a| + |b| or |a| - |b| (|a| >= |b|), aligned on the decimal point.
std::string add_magnitudes(const Decimal& a, const Decimal& b, bool subtract) {
  const std::size_t frac = std::max(a.fraction.size(), b.fraction.size());
  const std::size_t whole = std::max(a.whole.size(), b.whole.size());
  auto digit = [&](const Decimal& d, std::size_t pos) {  // pos from the right, over whole+frac
    if (pos < frac) {
      const std::size_t i = frac - 1 - pos;
      return i < d.fraction.size() ? d.fraction[i] - '0' : 0;
    }
    const std::size_t w = pos - frac;
    return w < d.whole.size() ? d.whole[d.whole.size() - 1 - w] - '0' : 0;
  };
  std::string out;
  int carry = 0;
  for (std::size_t pos = 0; pos < frac + whole; ++pos) {
    int v =
        subtract ? digit(a, pos) - digit(b, pos) - carry : digit(a, pos) + digit(b, pos) + carry;
    carry = 0;
    if (v < 0) {
      v += 10;
      carry = 1;
    } else if (v > 9) {
      v -= 10;
      carry = 1;
    }
    out.push_back(static_cast<char>('0' + v));
    if (pos + 1 == frac) out.push_back('.');
  }
  if (carry) out.push_back('1');
  std::reverse(out.begin(), out.end());
  // Leading zeros of the whole part go; the fraction keeps its scale, as numeric's sum does.
  std::size_t start = 0;
  while (start + 1 < out.size() && out[start] == '0' && out[start + 1] != '.')
    ++start;
  return out.substr(start);
}

// The numeric sum of two numeric texts; nullopt for NaN or infinities (left to PostgreSQL).
std::optional<std::string> add_decimals(std::string_view x, std::string_view y) {
  const Decimal a = decimal(x);
  const Decimal b = decimal(y);
  if (a.special != 0 || b.special != 0) return std::nullopt;
  // The scale of a sum is the larger scale of its terms, as PostgreSQL's numeric addition keeps.
  auto scale = [](std::string_view s) {
    const std::size_t dot = s.find('.');
    return dot == std::string_view::npos ? 0 : s.size() - dot - 1;
  };
  const std::size_t want = std::max(scale(x), scale(y));
  std::string out;
  if (a.negative == b.negative) {
    out = add_magnitudes(a, b, false);
    if (a.negative && out.find_first_not_of("0.") != std::string::npos) out.insert(0, "-");
  } else {
    const bool a_bigger = compare_magnitudes(a, b) >= 0;
    out = add_magnitudes(a_bigger ? a : b, a_bigger ? b : a, true);
    const bool negative = a_bigger ? a.negative : b.negative;
    if (negative && out.find_first_not_of("0.") != std::string::npos) out.insert(0, "-");
  }
  const std::size_t dot = out.find('.');
  std::size_t have = dot == std::string::npos ? 0 : out.size() - dot - 1;
  if (have == 0 && want > 0) out.push_back('.');
  for (; have < want; ++have)
    out.push_back('0');
  return out;
}

// A binary-format numeric (int16 ndigits, int16 weight, uint16 sign, int16 dscale, then base-10000
// digits) as its text; nullopt for NaN, infinities, or bytes that are not one.
std::optional<std::string> numeric_text(std::string_view b) {
  if (b.size() < 8) return std::nullopt;
  auto u16 = [&](std::size_t at) {
    return static_cast<std::uint16_t>((static_cast<unsigned char>(b[at]) << 8) |
                                      static_cast<unsigned char>(b[at + 1]));
  };
  const int ndigits = static_cast<std::int16_t>(u16(0));
  const int weight = static_cast<std::int16_t>(u16(2));
  const std::uint16_t sign = u16(4);
  const int dscale = static_cast<std::int16_t>(u16(6));
  if (ndigits < 0 || dscale < 0 || (sign != 0 && sign != 0x4000) ||
      b.size() != 8 + 2 * static_cast<std::size_t>(ndigits)) {
    return std::nullopt;
  }
  std::string integer_part;
  std::string fraction;
  for (int i = 0; i < ndigits; ++i) {
    const int group = u16(8 + 2 * static_cast<std::size_t>(i));
    if (group > 9999) return std::nullopt;
    char digits[5];
    std::snprintf(digits, sizeof digits, "%04d", group);
    const int position = weight - i;  // this group counts 10000^position
    if (position >= 0) {
      integer_part += digits;
    } else {
      if (fraction.empty()) fraction.assign(static_cast<std::size_t>(4 * (-position - 1)), '0');
      fraction += digits;
    }
  }
  for (int position = weight - ndigits; position >= 0; --position)
    integer_part += "0000";  // trailing zero groups of the integer part are not stored
  const std::size_t first = integer_part.find_first_not_of('0');
  integer_part = first == std::string::npos ? "0" : integer_part.substr(first);
  fraction.resize(static_cast<std::size_t>(dscale), '0');
  std::string out = sign == 0x4000 ? "-" : "";
  out += integer_part;
  if (dscale > 0) out += "." + fraction;
  return out;
}

// The text of a numeric ([-]digits[.digits]) in binary format.
std::optional<std::string> numeric_binary(std::string_view text) {
  bool negative = false;
  if (!text.empty() && text[0] == '-') {
    negative = true;
    text.remove_prefix(1);
  }
  const std::size_t dot = text.find('.');
  std::string integer_part(text.substr(0, dot));
  std::string fraction(dot == std::string_view::npos ? "" : text.substr(dot + 1));
  if (integer_part.empty() || integer_part.find_first_not_of("0123456789") != std::string::npos ||
      fraction.find_first_not_of("0123456789") != std::string::npos || fraction.size() > 16383) {
    return std::nullopt;
  }
  const auto dscale = static_cast<std::int16_t>(fraction.size());
  integer_part.insert(0, (4 - integer_part.size() % 4) % 4, '0');
  fraction.append((4 - fraction.size() % 4) % 4, '0');
  std::vector<std::uint16_t> groups;
  for (std::size_t i = 0; i < integer_part.size(); i += 4)
    groups.push_back(static_cast<std::uint16_t>(std::stoi(integer_part.substr(i, 4))));
  int weight = static_cast<int>(groups.size()) - 1;
  for (std::size_t i = 0; i < fraction.size(); i += 4)
    groups.push_back(static_cast<std::uint16_t>(std::stoi(fraction.substr(i, 4))));
  std::size_t lead = 0;
  while (lead < groups.size() && groups[lead] == 0) {
    ++lead;
    --weight;
  }
  std::size_t end = groups.size();
  while (end > lead && groups[end - 1] == 0)
    --end;
  if (lead == end) weight = 0;  // zero: no digits
  std::string out;
  pr::append_i16(out, static_cast<std::int16_t>(end - lead));
  pr::append_i16(out, static_cast<std::int16_t>(weight));
  pr::append_u16(out, negative && lead != end ? 0x4000 : 0);
  pr::append_i16(out, dscale);
  for (std::size_t i = lead; i < end; ++i)
    pr::append_u16(out, groups[i]);
  return out;
}

// PostgreSQL's float4 and float8 output with its default extra_float_digits (1): the shortest
// text that reads back as the same value; positional for decimal exponents from -4 up to 5
// (real) or 14 (double precision), else d.ddde+XX.
template <class Float>
std::string float_text(Float v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  constexpr int kMaxPositional = std::is_same_v<Float, float> ? 5 : 14;
  char buffer[64];
  const auto r = std::to_chars(buffer, buffer + sizeof buffer, v, std::chars_format::scientific);
  const std::string_view scientific(buffer, static_cast<std::size_t>(r.ptr - buffer));
  const std::size_t e = scientific.find('e');
  int exponent = 0;
  std::from_chars(scientific.data() + e + (scientific[e + 1] == '+' ? 2 : 1),
                  scientific.data() + scientific.size(), exponent);
  if (exponent < -4 || exponent > kMaxPositional) return std::string(scientific);
  std::string_view mantissa = scientific.substr(0, e);
  std::string out;
  if (mantissa.front() == '-') {
    out.push_back('-');
    mantissa.remove_prefix(1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  if (exponent < 0) {
    out.append("0.").append(static_cast<std::size_t>(-exponent - 1), '0').append(digits);
  } else if (const auto whole = static_cast<std::size_t>(exponent) + 1; digits.size() <= whole) {
    out.append(digits).append(whole - digits.size(), '0');
  } else {
    out.append(digits, 0, whole).append(".").append(digits, whole);
  }
  return out;
}

// The weight (power of 10000) and value of the first non-zero base-10000 digit of a decimal
// [-]whole[.fraction], as PostgreSQL's numeric stores it; 0 and 0 for zero.
struct LeadingDigit {
  int weight = 0;
  int value = 0;
};

LeadingDigit leading_digit(std::string_view whole, std::string_view fraction) {
  const std::size_t nonzero = whole.find_first_not_of('0');
  if (nonzero != std::string_view::npos) {
    whole.remove_prefix(nonzero);
    const std::size_t head = (whole.size() - 1) % 4 + 1;
    int value = 0;
    std::from_chars(whole.data(), whole.data() + head, value);
    return {static_cast<int>((whole.size() - 1) / 4), value};
  }
  const std::size_t first = fraction.find_first_not_of('0');
  if (first == std::string_view::npos) return {};
  const std::size_t group = first / 4;
  std::string digits(fraction.substr(4 * group, 4));
  digits.resize(4, '0');
  return {-static_cast<int>(group) - 1, std::stoi(digits)};
}

// avg() of numeric and integer arguments: the exact sum over the count as PostgreSQL's
// numeric_div gives it: select_div_scale's result scale (at least 16 significant digits, at
// least the sum's scale), rounded half away from zero. nullopt for NaN or infinite sums.
std::optional<std::string> numeric_average(std::string_view sum, std::int64_t count) {
  if (count <= 0) return std::nullopt;
  if (sum == "NaN" || sum == "Infinity" || sum == "-Infinity") return std::nullopt;
  const bool negative = !sum.empty() && sum[0] == '-';
  if (negative) sum.remove_prefix(1);
  const std::size_t dot = sum.find('.');
  const std::string_view whole = sum.substr(0, dot);
  const std::string_view fraction =
      dot == std::string_view::npos ? std::string_view{} : sum.substr(dot + 1);
  if (whole.empty() || whole.find_first_not_of("0123456789") != std::string_view::npos ||
      fraction.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  const std::string count_text = std::to_string(count);
  const LeadingDigit a = leading_digit(whole, fraction);
  const LeadingDigit b = leading_digit(count_text, {});
  int quotient_weight = a.weight - b.weight;
  if (a.value <= b.value) --quotient_weight;
  const int sum_scale = static_cast<int>(fraction.size());
  const int scale = std::min(std::max({16 - 4 * quotient_weight, sum_scale, 0}), 1000);
  // Long division of the sum's digits, followed by zeros up to one digit past `scale`, by the
  // count; that last digit rounds.
  std::string digits;
  digits.reserve(whole.size() + static_cast<std::size_t>(scale) + 1);
  unsigned __int128 remainder = 0;
  const auto divisor = static_cast<unsigned __int128>(count);
  auto divide = [&](char c) {
    remainder = remainder * 10 + static_cast<unsigned>(c - '0');
    digits.push_back(static_cast<char>('0' + static_cast<int>(remainder / divisor)));
    remainder %= divisor;
  };
  for (char c : whole)
    divide(c);
  for (int i = 0; i < scale + 1; ++i)
    divide(i < sum_scale ? fraction[static_cast<std::size_t>(i)] : '0');
  const bool round_up = digits.back() >= '5';
  digits.pop_back();
  if (round_up) {
    std::size_t i = digits.size();
    while (i > 0 && digits[i - 1] == '9')
      digits[--i] = '0';
    if (i == 0) {
      digits.insert(digits.begin(), '1');
    } else {
      ++digits[i - 1];
    }
  }
  const std::size_t whole_digits = digits.size() - static_cast<std::size_t>(scale);
  std::string_view integer_part(digits.data(), whole_digits);
  while (integer_part.size() > 1 && integer_part[0] == '0')
    integer_part.remove_prefix(1);
  const bool zero = digits.find_first_not_of('0') == std::string::npos;
  std::string out = negative && !zero ? "-" : "";
  out.append(integer_part);
  if (scale > 0) out.append(".").append(digits, whole_digits);
  return out;
}

// A variance or standard deviation of double precision values from their count and population
// variance, as PostgreSQL's float8_var_pop, float8_var_samp, float8_stddev_pop and
// float8_stddev_samp answer (NULL for no value, and a sample of one).
std::optional<double> statistic_value(ScatterPlan::Statistic statistic, const Gather::Spread& s) {
  using S = ScatterPlan::Statistic;
  const bool sample = statistic == S::VarSamp || statistic == S::StddevSamp;
  if (s.count == 0 || (sample && s.count <= 1)) return std::nullopt;
  const double sxx = s.var_pop * s.count;
  const double variance = sample ? sxx / (s.count - 1) : sxx / s.count;
  return statistic == S::StddevPop || statistic == S::StddevSamp ? std::sqrt(variance) : variance;
}

}  // namespace

ClientDescription client_description(const ScatterPlan& plan, std::string_view shard_body) {
  ClientDescription out;
  if (plan.averages.empty()) {
    out.body.assign(shard_body);
    return out;
  }
  const auto fields = pr::read_row_fields(shard_body);
  const std::size_t columns = plan.combine.size();
  if (!fields) {
    out.refusal = "a shard sent a malformed RowDescription";
    return out;
  }
  if (fields->size() != columns + plan.extra_columns) {
    out.refusal = "the shards' columns do not match the statement";
    return out;
  }
  pr::append_i16(out.body, static_cast<std::int16_t>(columns));
  for (std::size_t i = 0; i < columns; ++i) {
    const pr::RowField& field = (*fields)[i];
    if (plan.combine[i] != ScatterPlan::Combine::Avg) {
      pr::append_row_field(out.body, field);
      continue;
    }
    const ScatterPlan::Average& a =
        *std::find_if(plan.averages.begin(), plan.averages.end(),
                      [&](const ScatterPlan::Average& x) { return x.column == i; });
    // The sum's type says the argument's: bigint for smallint and integer, numeric for bigint
    // and numeric, double precision for itself; avg() answers numeric for all but the last.
    const auto sum_type = static_cast<std::uint32_t>(field.type);
    if (a.statistic != ScatterPlan::Statistic::Avg) {
      // Of integers and numeric, PostgreSQL computes these in numeric, digit for digit; of
      // real, it adds in double precision where a shard's sum() adds in single.
      if (sum_type != kFloat8) {
        out.refusal = a.function +
                      "() across shards is combined for double precision only; cast the "
                      "argument to double precision";
        return out;
      }
      pr::RowField statistic;
      statistic.name = a.named ? field.name : std::string_view(a.function);
      statistic.type = static_cast<std::int32_t>(kFloat8);
      statistic.size = 8;
      statistic.modifier = -1;
      statistic.format = field.format;
      pr::append_row_field(out.body, statistic);
      continue;
    }
    if (sum_type == kFloat4) {
      out.refusal =
          "avg() of real across shards would add up in single precision; cast the argument to "
          "double precision";
      return out;
    }
    if (sum_type != kInt8 && sum_type != kNumeric && sum_type != kFloat8) {
      out.refusal = "avg() of this type does not combine across shards; average numbers";
      return out;
    }
    const bool floating_point = sum_type == kFloat8;
    pr::RowField average;
    average.name = a.named ? field.name : std::string_view("avg");
    average.type = static_cast<std::int32_t>(floating_point ? kFloat8 : kNumeric);
    average.size = static_cast<std::int16_t>(floating_point ? 8 : -1);
    average.modifier = -1;
    average.format = field.format;
    pr::append_row_field(out.body, average);
  }
  return out;
}

std::optional<std::string_view> Gather::Row::value(std::size_t i) const {
  const Field& f = fields[i];
  if (f.size < 0) return std::nullopt;
  return std::string_view(body).substr(static_cast<std::size_t>(f.offset),
                                       static_cast<std::size_t>(f.size));
}

Gather::Gather(const ScatterPlan& plan, int shards, std::int64_t limit, std::int64_t offset,
               std::size_t max_bytes, bool stream, const TextOrderSlot* text_order)
    : plan_(plan),
      shards_(shards),
      limit_(limit),
      offset_(offset),
      max_bytes_(max_bytes),
      text_order_slot_(text_order),
      may_stream_(stream) {
  const auto n = static_cast<std::size_t>(std::max(shards, 1));
  // A shard's share: the merge needs one row of each, more only smooths the flow.
  shard_bound_ = std::clamp<std::size_t>(max_bytes / (2 * n), 1, 1u << 20);
  queues_.resize(n);
  last_rows_.resize(n);
  has_last_.assign(n, 0);
  queued_bytes_.assign(n, 0);
  progress_.assign(n, Progress::Waiting);
}

bool Gather::fail(std::string_view sqlstate, std::string message) {
  if (failed_) return false;
  failed_ = true;
  std::string body;
  pr::ErrorFields e;
  e.severity = "ERROR";
  e.sqlstate = sqlstate;
  e.message = message;
  pr::append_error_response(body, e);
  error_ = body.substr(5);  // without the tag and length
  rows_.clear();
  queues_.clear();
  return false;
}

bool Gather::add(int shard, const pr::Frame& f, std::string* out) {
  if (failed_ || shard < 0 || shard >= shards_) return false;
  switch (f.tag) {
    case 'T':
      return read_description(shard, f);
    case 'D':
      if (plan_.same_on_every_shard && shard != 0) return true;  // the first shard's are the rows
      return mode_ == Mode::Hold ? read_row(f) : stream_row(shard, f, out);
    case 'C': {
      if (mode_ != Mode::Hold) {
        // The shard's rows are all in: the merge no longer waits for it.
        progress_[static_cast<std::size_t>(shard)] = Progress::Done;
        if (out != nullptr) drain(*out);
      }
      if (plan_.same_on_every_shard && shard != 0) return true;  // ... and its tag the tag
      const std::string_view tag = pr::read_command_complete(f).value_or("");
      // A read's rows are counted as they are kept; CREATE TABLE AS and SELECT INTO, which
      // describe no rows, count theirs in the tag.
      if (tag.starts_with("SELECT") && described_ != 0) return true;
      // A write's row count (INSERT 0 n, UPDATE n, DELETE n, ...) is the sum of the shards';
      // a tag without one (CREATE TABLE) is the same on every shard.
      const std::size_t space = tag.rfind(' ');
      std::uint64_t n = 0;
      const char* end = tag.data() + tag.size();
      if (space != std::string_view::npos &&
          std::from_chars(tag.data() + space + 1, end, n).ptr == end && space + 1 < tag.size()) {
        if (other_tag_.empty()) other_tag_ = tag.substr(0, space);
        other_rows_ += n;
        counted_tag_ = true;
      } else if (other_tag_.empty()) {
        other_tag_ = tag;
      }
      return true;
    }
    case 'I':
      empty_query_ = true;
      return true;
    case 'E':
      failed_ = true;
      error_.assign(f.body);
      rows_.clear();
      queues_.clear();
      return false;
    default:
      return true;  // notices, parameter reports: not part of the answer
  }
}

bool Gather::read_description(int shard, const pr::Frame& f) {
  const auto fields = pr::read_row_fields(f.body);
  if (!fields) return fail("08P01", "pgvalve: a shard sent a malformed RowDescription");
  std::vector<Column> columns;
  for (const pr::RowField& field : *fields) {
    columns.push_back(
        {std::string(field.name), field.type, field.size, field.modifier, field.format});
  }
  Progress& progress = progress_[static_cast<std::size_t>(shard)];
  if (progress == Progress::Waiting) {
    progress = Progress::Described;
    ++described_;
  }
  if (!description_.empty()) {
    if (columns != columns_) {
      return fail("0A000",
                  "pgvalve: the shards answered with different columns; check that "
                  "every shard has the same schema");
    }
    return true;
  }
  if (text_order_slot_ != nullptr) text_order_ = text_order_slot_->get();
  for (const Column& column : columns) {
    columns_.push_back(column);
    const bool binary = column.format != 0;
    switch (static_cast<std::uint32_t>(column.type)) {
      case kInt2:
      case kInt4:
      case kInt8:
        kinds_.push_back(binary ? Kind::BinaryInteger : Kind::Integer);
        break;
      case kOid:
        kinds_.push_back(binary ? Kind::Other : Kind::Integer);  // unsigned
        break;
      case kFloat4:
      case kFloat8:
        kinds_.push_back(binary ? Kind::BinaryFloat : Kind::Float);
        break;
      case kNumeric:
        kinds_.push_back(binary ? Kind::BinaryNumeric : Kind::Numeric);
        break;
      case kDate:
      case kTime:
      case kTimestamp:
        kinds_.push_back(binary ? Kind::BinaryInteger : Kind::Bytes);
        break;
      case kTimestamptz:
        kinds_.push_back(binary ? Kind::BinaryInteger : Kind::TimestampTz);
        break;
      case kText:
      case kVarchar:
        kinds_.push_back(Kind::Text);
        break;
      case kBpchar:
        kinds_.push_back(Kind::PaddedText);
        break;
      case kBool:
      case kName:  // PostgreSQL orders name in the C collation
      case kUuid:
        kinds_.push_back(Kind::Bytes);
        break;
      default:
        kinds_.push_back(Kind::Other);
        break;
    }
  }
  // Columns of `SELECT *` the ORDER BY names.
  for (ScatterPlan::SortKey& k : plan_.order) {
    if (k.name.empty()) continue;
    int found = -1;
    for (std::size_t i = 0; i < columns.size(); ++i) {
      if (columns[i].name != k.name) continue;
      if (found >= 0) {
        return fail("0A000", "pgvalve: ORDER BY \"" + k.name +
                                 "\" across shards names more than one output column");
      }
      found = static_cast<int>(i);
    }
    if (found < 0) {
      return fail("0A000", "pgvalve: ORDER BY \"" + k.name +
                               "\" across shards names no output column; select it");
    }
    k.column = static_cast<std::uint16_t>(found);
  }
  for (const ScatterPlan::SortKey& k : plan_.order) {
    if (k.column >= kinds_.size() || kinds_[k.column] == Kind::Other) {
      return fail("0A000",
                  "pgvalve: ORDER BY across shards on a column of this type is not "
                  "supported; order by a number, text or time column");
    }
    if (is_text(kinds_[k.column]) && !k.bytes && !text_order_known("ORDER BY")) return false;
  }
  for (std::size_t i = 0; i < plan_.combine.size() && i < kinds_.size(); ++i) {
    const ScatterPlan::Combine op = plan_.combine[i];
    const Kind k = kinds_[i];
    const bool sums = k == Kind::Integer || k == Kind::Numeric || k == Kind::Float ||
                      k == Kind::BinaryFloat || k == Kind::BinaryNumeric ||
                      (k == Kind::BinaryInteger && kinds_.size() > i &&
                       (columns_[i].type == static_cast<std::int32_t>(kInt2) ||
                        columns_[i].type == static_cast<std::int32_t>(kInt4) ||
                        columns_[i].type == static_cast<std::int32_t>(kInt8)));
    const bool bitwise = op == ScatterPlan::Combine::BitAnd || op == ScatterPlan::Combine::BitOr ||
                         op == ScatterPlan::Combine::BitXor;
    const bool integers = k == Kind::Integer || (k == Kind::BinaryInteger && sums);
    if (bitwise && !integers) {
      return fail("0A000",
                  "pgvalve: bit_and, bit_or and bit_xor combine across shards for "
                  "integers only, not bit strings");
    }
    if (((op == ScatterPlan::Combine::Sum || op == ScatterPlan::Combine::Avg) && !sums) ||
        ((op == ScatterPlan::Combine::Min || op == ScatterPlan::Combine::Max) &&
         k == Kind::Other)) {
      return fail("0A000", "pgvalve: this aggregate's type does not combine across shards");
    }
    if ((op == ScatterPlan::Combine::Min || op == ScatterPlan::Combine::Max) && is_text(k) &&
        !by_bytes(i) && !text_order_known("min() and max()")) {
      return false;
    }
  }
  if (!plan_.combine.empty() && plan_.combine.size() + plan_.extra_columns != kinds_.size()) {
    return fail("0A000", "pgvalve: the shards' columns do not match the statement");
  }
  ClientDescription client = client_description(plan_, f.body);
  if (!client.refusal.empty()) return fail("0A000", "pgvalve: " + client.refusal);
  description_ = std::move(client.body);
  if (may_stream_ && plan_.combine.empty() && plan_.averages.empty() && !plan_.distinct) {
    // The shards sort their rows as pgvalve compares them (text in the database's collation),
    // so their sorted rows merge as they come.
    mode_ = plan_.order.empty() ? Mode::Stream : Mode::Merge;
  }
  return true;
}

bool Gather::text_order_known(std::string_view what) {
  if (text_order_ == nullptr) {
    return fail("0A000", "pgvalve: " + std::string(what) +
                             " of text across shards needs the database's collation, which "
                             "pgvalve has not read yet (the health checks read it); retry in a "
                             "moment, or add COLLATE \"C\" (byte order)");
  }
  if (!text_order_->usable()) {
    return fail("0A000", "pgvalve: " + std::string(what) +
                             " of text across shards cannot follow PostgreSQL's order: " +
                             text_order_->problem() +
                             "; add COLLATE \"C\" (byte order), or name one device_id");
  }
  return true;
}

bool Gather::by_bytes(std::size_t column) const {
  return std::find(plan_.bytes_combined.begin(), plan_.bytes_combined.end(), column) !=
         plan_.bytes_combined.end();
}

const TextOrder* Gather::min_max_order(std::size_t column) const {
  return by_bytes(column) ? &TextOrder::bytes() : text_order_;
}

bool Gather::read_row(const pr::Frame& f) {
  if (description_.empty())
    return fail("08P01", "pgvalve: a shard sent rows before their description");
  bytes_ += f.body.size() + sizeof(Row);
  if (bytes_ > max_bytes_) {
    // A LIMIT reaches the shards only for DISTINCT (sharding.md): no use to advise it here.
    return fail("54000",
                "pgvalve: the rows pgvalve combines for this statement across shards "
                "exceed " +
                    std::to_string(max_bytes_ >> 20) +
                    " MiB; name one device_id, or narrow the rows each shard "
                    "returns with WHERE");
  }
  Row row;
  if (!parse_row(f, row)) return false;
  rows_.push_back(std::move(row));
  return true;
}

// A row of a streamed read: passed on at once when rows are only concatenated and streaming
// started; else kept in its shard's queue until the merge (or the start) takes it.
bool Gather::stream_row(int shard, const pr::Frame& f, std::string* out) {
  if (description_.empty())
    return fail("08P01", "pgvalve: a shard sent rows before their description");
  const auto i = static_cast<std::size_t>(shard);
  if (started_ && mode_ == Mode::Stream && out != nullptr && !piece_full() && queues_[i].empty()) {
    emit(f.body, *out);
    return true;
  }
  const std::size_t size = f.body.size() + sizeof(Row);
  // The shards' shares (waits()) keep the queues under the bound while the reads honour them.
  if (bytes_ + size > max_bytes_) {
    const std::string bound = std::to_string(max_bytes_ >> 20);
    return fail("54000",
                "pgvalve: the rows of this statement across shards waiting to be "
                "merged exceed " +
                    bound + " MiB; add a LIMIT, or name one device_id");
  }
  Row row;
  if (mode_ == Mode::Merge) {
    if (!parse_row(f, row) || !in_shard_order(i, row)) return false;
  } else {
    row.body.assign(f.body);  // only passed on: its fields are not read
  }
  bytes_ += size;
  queued_bytes_[i] += size;
  queues_[i].push_back(std::move(row));
  if (out != nullptr) drain(*out);
  return true;
}

// A merge is right only if pgvalve compares as the shards sorted. A row that comes before its
// shard's previous one by pgvalve's comparison says it does not (a column declared with a
// collation of its own, a DateStyle other than ISO, dates BC): an error, not a wrong order.
bool Gather::in_shard_order(std::size_t shard, const Row& row) {
  Row& last = last_rows_[shard];
  if (has_last_[shard] && less(row, last)) {
    return fail("0A000",
                "pgvalve: a shard sorted this ORDER BY in an order pgvalve does not reproduce "
                "(a column declared with a collation of its own, a DateStyle other than ISO, "
                "dates BC); add the column's COLLATE to the ORDER BY, or name one device_id");
  }
  last.body.assign(row.body);  // capacity kept: no allocation per row once grown
  last.fields.assign(row.fields.begin(), row.fields.end());
  has_last_[shard] = 1;
  return true;
}

void Gather::start_stream(std::string& out, bool describe) {
  started_ = true;
  if (describe) {
    const std::size_t at = pr::begin_message(out, 'T');
    out.append(description_);
    pr::end_message(out, at);
  }
  drain(out);
}

// Sends the rows that may go: every waiting row when they are only concatenated; when merged,
// the least head row as long as each shard still answering has one.
void Gather::drain(std::string& out) {
  if (!started_ || failed_) return;
  auto pop = [&](std::size_t s) {
    Row& row = queues_[s].front();
    emit(row.body, out);
    const std::size_t size = row.body.size() + sizeof(Row);
    bytes_ -= size;
    queued_bytes_[s] -= size;
    queues_[s].pop_front();
  };
  const std::size_t shards = queues_.size();
  if (mode_ == Mode::Stream) {
    for (std::size_t s = 0; s < shards; ++s) {
      while (!queues_[s].empty() && !piece_full())
        pop(s);
    }
    return;
  }
  while (!piece_full()) {
    std::size_t best = shards;
    for (std::size_t s = 0; s < shards; ++s) {
      if (queues_[s].empty()) {
        if (progress_[s] != Progress::Done) return;  // its next row may come first
        continue;
      }
      // Equal rows go in shard order, as the held sort leaves them.
      if (best == shards || less(queues_[s].front(), queues_[best].front())) best = s;
    }
    if (best == shards) return;
    pop(best);
  }
}

// One row in the client's order: OFFSET skips, LIMIT ends.
void Gather::emit(std::string_view body, std::string& out) {
  if (skipped_ < offset_) {
    ++skipped_;
    return;
  }
  if (limit_ >= 0 && sent_ >= limit_) return;
  if (fetch_limit_ > 0 && piece_sent_ >= fetch_limit_) {
    suspended_ = true;
    return;
  }
  put_row(body, out);
}

void Gather::put_row(std::string_view body, std::string& out) {
  const std::size_t at = pr::begin_message(out, 'D');
  out.append(body);
  pr::end_message(out, at);
  ++sent_;
  ++piece_sent_;
}

void Gather::fetch(std::int64_t rows, std::string& out) {
  fetch_limit_ = rows;
  piece_sent_ = 0;
  drain(out);  // held rows go at finish(): every shard has answered by then
}

bool Gather::parse_row(const pr::Frame& f, Row& row) {
  row.body.assign(f.body);
  pr::Cursor c(row.body);
  const auto count = c.i16();
  if (!count || static_cast<std::size_t>(*count) != kinds_.size()) {
    return fail("08P01", "pgvalve: a shard sent a row that does not match its description");
  }
  for (std::int16_t i = 0; i < *count; ++i) {
    const auto size = c.i32();
    if (!size) return fail("08P01", "pgvalve: a shard sent a malformed row");
    Field field;
    field.offset = static_cast<std::int32_t>(row.body.size() - c.remaining());
    field.size = *size < 0 ? -1 : *size;
    if (*size > 0 && !c.bytes(static_cast<std::size_t>(*size))) {
      return fail("08P01", "pgvalve: a shard sent a malformed row");
    }
    row.fields.push_back(field);
  }
  return true;
}

int Gather::compare(Kind kind, std::string_view a, std::string_view b,
                    const TextOrder* order) const {
  switch (kind) {
    case Kind::PaddedText:
      // char(n) compares without its trailing spaces (PostgreSQL's bpcharcmp).
      while (!a.empty() && a.back() == ' ')
        a.remove_suffix(1);
      while (!b.empty() && b.back() == ' ')
        b.remove_suffix(1);
      [[fallthrough]];
    case Kind::Text:
      if (order != nullptr) return order->compare(a, b);
      break;
    case Kind::Integer: {
      const auto x = integer(a);
      const auto y = integer(b);
      if (x && y) return *x < *y ? -1 : *x > *y ? 1 : 0;
      break;
    }
    case Kind::Float:
      return compare_doubles(floating(a), floating(b));
    case Kind::Numeric:
      return compare_decimals(a, b);
    case Kind::BinaryInteger: {
      const auto x = binary_integer(a);
      const auto y = binary_integer(b);
      if (x && y) return *x < *y ? -1 : *x > *y ? 1 : 0;
      break;
    }
    case Kind::BinaryFloat:
      return compare_doubles(binary_float(a), binary_float(b));
    case Kind::TimestampTz: {
      const auto x = timestamptz_instant(a);
      const auto y = timestamptz_instant(b);
      if (x && y) return *x < *y ? -1 : *x > *y ? 1 : 0;
      break;
    }
    case Kind::BinaryNumeric: {
      const auto x = numeric_text(a);
      const auto y = numeric_text(b);
      if (x && y) return compare_decimals(*x, *y);
      break;
    }
    default:
      break;
  }
  const int c = a.compare(b);
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

bool Gather::less(const Row& a, const Row& b) const {
  for (const ScatterPlan::SortKey& k : plan_.order) {
    const auto x = a.value(k.column);
    const auto y = b.value(k.column);
    if (!x || !y) {
      if (!x && !y) continue;
      return !x == k.nulls_first;  // a NULL comes first exactly when NULLS FIRST
    }
    const int c = compare(kinds_[k.column], *x, *y, k.bytes ? &TextOrder::bytes() : text_order_);
    if (c != 0) return k.descending ? c > 0 : c < 0;
  }
  return false;
}

std::optional<std::string> Gather::equality_key(std::size_t i, std::string_view v) const {
  if (i >= columns_.size() || i >= kinds_.size()) return std::nullopt;
  const auto type = static_cast<std::uint32_t>(columns_[i].type);
  const bool binary = columns_[i].format != 0;
  auto without_padding = [](std::string_view s) {
    while (!s.empty() && s.back() == ' ')
      s.remove_suffix(1);
    return std::string(s);
  };
  switch (type) {
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid:
    case kBool:
    case kName:
    case kUuid:
    case kText:
    case kVarchar:
    case kBytea:
    case kTime:
      // One text (or binary form) per value; text in a deterministic collation is equal only
      // when its bytes are.
      return std::string(v);
    case kBpchar:
      return without_padding(v);  // char(n) is equal without its trailing spaces
    case kFloat4:
    case kFloat8: {
      double d = binary ? binary_float(v) : float_value<double>(v);
      if (std::isnan(d)) return std::string("NaN");  // PostgreSQL's NaN equals NaN
      if (d == 0) d = 0;                             // -0 equals 0
      return std::string(reinterpret_cast<const char*>(&d), sizeof d);
    }
    case kNumeric: {
      if (!binary) return canonical_decimal(v);
      const auto text = numeric_text(v);
      if (!text) return std::string(v);  // NaN or infinities: one form each
      return canonical_decimal(*text);
    }
    case kDate:
      if (binary || iso_date(v)) return std::string(v);
      return std::nullopt;
    case kTimestamp:
      if (binary || iso_timestamp(v)) return std::string(v);
      return std::nullopt;
    case kTimestamptz: {
      if (binary) return std::string(v);
      const auto instant = timestamptz_instant(v);
      if (!instant) return std::nullopt;
      return std::to_string(instant->first) + "." + std::to_string(instant->second);
    }
    default:
      return std::nullopt;
  }
}

bool Gather::orderable(std::size_t i, std::string_view v) const {
  if (i >= columns_.size() || columns_[i].format != 0) return true;
  switch (static_cast<std::uint32_t>(columns_[i].type)) {
    case kDate:
      return iso_date(v) && v.size() == 10;
    case kTimestamp:
      return iso_timestamp(v);
    case kTimestamptz:
      return timestamptz_instant(v).has_value();
    default:
      return true;
  }
}

bool Gather::collapse(const std::vector<char>& group, bool combine) {
  // Over one shard (or rows the same on every shard) the rows are already one per value.
  const bool exact = shards_ > 1 && !plan_.same_on_every_shard;
  std::vector<Row> kept;
  std::unordered_map<std::string, std::size_t> index;
  for (Row& row : rows_) {
    std::string key;
    for (std::size_t i = 0; i < group.size() && i < row.fields.size(); ++i) {
      if (!group[i]) continue;
      const auto v = row.value(i);
      key.push_back(v ? 'v' : 'n');
      if (!v) continue;
      std::optional<std::string> k = exact ? equality_key(i, *v) : std::string(*v);
      if (!k) {
        return fail("0A000", "pgvalve: " + std::string(combine ? "GROUP BY" : "DISTINCT") +
                                 " across shards cannot tell which values of column \"" +
                                 columns_[i].name +
                                 "\" are equal from their text (interval, arrays, records, "
                                 "timestamptz or dates in a DateStyle other than ISO); "
                                 "name one device_id, or " +
                                 (combine ? "group by" : "select") +
                                 " columns of types pgvalve compares (integers, numeric, "
                                 "text, uuid, bool, dates and times in DateStyle ISO)");
      }
      key.append(std::to_string(k->size())).append(":").append(*k);
    }
    const auto [it, fresh] = index.emplace(std::move(key), kept.size());
    if (fresh) {
      kept.push_back(std::move(row));
    } else if (combine && !combine_into(kept[it->second], row)) {
      return false;
    }
  }
  rows_ = std::move(kept);
  return true;
}

void Gather::rebuild(Row& row, const std::vector<std::optional<std::string>>& values) {
  row.body.clear();
  row.fields.clear();
  pr::append_i16(row.body, static_cast<std::int16_t>(values.size()));
  for (const auto& v : values) {
    Field f;
    if (v) {
      pr::append_i32(row.body, static_cast<std::int32_t>(v->size()));
      f.offset = static_cast<std::int32_t>(row.body.size());
      f.size = static_cast<std::int32_t>(v->size());
      row.body.append(*v);
    } else {
      pr::append_i32(row.body, -1);
    }
    row.fields.push_back(f);
  }
}

bool Gather::combine_into(Row& into, const Row& from) {
  std::vector<std::optional<std::string>> values;
  // A variance's var_pop column combines with both rows' counts and sums (below).
  std::vector<std::pair<std::size_t, std::optional<std::string>>> spreads;
  for (const ScatterPlan::Average& a : plan_.averages) {
    if (a.statistic == ScatterPlan::Statistic::Avg) continue;
    const std::size_t counted = plan_.combine.size() + a.extra;
    const std::optional<Spread> x = spread_of(into, a.column, counted);
    const std::optional<Spread> y = spread_of(from, a.column, counted);
    if (!x || !y) return fail("08P01", "pgvalve: a shard sent a count that is not a number");
    spreads.emplace_back(counted + 1, value_of_var_pop(combine_spreads(*x, *y), counted + 1));
  }
  for (std::size_t i = 0; i < kinds_.size(); ++i) {
    const auto a = into.value(i);
    const auto b = from.value(i);
    std::optional<std::string> v = a ? std::optional<std::string>(std::string(*a)) : std::nullopt;
    // An average's sum adds up, and so do the counts after the statement's columns.
    const ScatterPlan::Combine op =
        i < plan_.combine.size() ? plan_.combine[i] : ScatterPlan::Combine::Sum;
    if (b) {
      switch (op) {
        case ScatterPlan::Combine::Group:
          break;
        case ScatterPlan::Combine::Sum:
        case ScatterPlan::Combine::Avg:
          if (!a) {
            v = std::string(*b);
          } else if (kinds_[i] == Kind::Integer) {
            const auto x = integer(*a);
            const auto y = integer(*b);
            std::int64_t s = 0;
            if (!x || !y || __builtin_add_overflow(*x, *y, &s)) {
              return fail("22003", "pgvalve: the sum across shards is out of range for bigint");
            }
            v = std::to_string(s);
          } else if (kinds_[i] == Kind::BinaryInteger) {
            const auto x = binary_integer(*a);
            const auto y = binary_integer(*b);
            std::int64_t s = 0;
            std::optional<std::string> sum;
            if (x && y && !__builtin_add_overflow(*x, *y, &s))
              sum = binary_integer_of(s, a->size());
            if (!sum) {
              return fail("22003", "pgvalve: the sum across shards is out of range for its type");
            }
            v = std::move(sum);
          } else if (kinds_[i] == Kind::BinaryNumeric) {
            const auto x = numeric_text(*a);
            const auto y = numeric_text(*b);
            const auto s = x && y ? add_decimals(*x, *y) : std::nullopt;
            const auto bytes = s ? numeric_binary(*s) : std::nullopt;
            if (!bytes) {
              return fail("0A000", "pgvalve: a NaN or infinite sum does not combine across shards");
            }
            v = *bytes;
          } else if (kinds_[i] == Kind::BinaryFloat) {
            v = binary_float_of(binary_float(*a) + binary_float(*b), a->size());
          } else if (kinds_[i] == Kind::Numeric) {
            const auto s = add_decimals(*a, *b);
            if (!s)
              return fail("0A000", "pgvalve: a NaN or infinite sum does not combine across shards");
            v = *s;
          } else if (columns_[i].type == static_cast<std::int32_t>(kFloat4)) {
            // sum(real) adds in single precision on each shard, and so here.
            v = float_text(float_value<float>(*a) + float_value<float>(*b));
          } else {
            v = float_text(floating(*a) + floating(*b));
          }
          break;
        case ScatterPlan::Combine::Min:
        case ScatterPlan::Combine::Max:
          if (a && (!orderable(i, *a) || !orderable(i, *b))) {
            return fail("0A000", "pgvalve: min() and max() across shards (column \"" +
                                     columns_[i].name +
                                     "\") cannot be compared as PostgreSQL "
                                     "orders them (a DateStyle other than ISO, dates BC or "
                                     "after 9999); SET DateStyle = ISO, or name one device_id");
          }
          if (op == ScatterPlan::Combine::Min) {
            if (!a || compare(kinds_[i], *b, *a, min_max_order(i)) < 0) v = std::string(*b);
          } else if (!a || compare(kinds_[i], *b, *a, min_max_order(i)) > 0) {
            v = std::string(*b);
          }
          break;
        case ScatterPlan::Combine::BitAnd:
        case ScatterPlan::Combine::BitOr:
        case ScatterPlan::Combine::BitXor: {
          if (!a) {
            v = std::string(*b);
            break;
          }
          const bool binary = kinds_[i] == Kind::BinaryInteger;
          const auto x = binary ? binary_integer(*a) : integer(*a);
          const auto y = binary ? binary_integer(*b) : integer(*b);
          if (!x || !y)
            return fail("08P01", "pgvalve: a shard sent an integer pgvalve cannot read");
          const std::int64_t r = op == ScatterPlan::Combine::BitAnd  ? (*x & *y)
                                 : op == ScatterPlan::Combine::BitOr ? (*x | *y)
                                                                     : (*x ^ *y);
          v = binary ? binary_integer_of(r, a->size())
                     : std::optional<std::string>(std::to_string(r));
          break;
        }
      }
    }
    values.push_back(std::move(v));
  }
  for (auto& [column, value] : spreads)
    values[column] = std::move(value);
  rebuild(into, values);
  return true;
}

// The count, sum and population variance of a variance's column in `row` (a shard's, or
// already combined); nullopt when the count is not a number.
std::optional<Gather::Spread> Gather::spread_of(const Row& row, std::size_t sum_column,
                                                std::size_t counted) const {
  Spread out;
  if (const auto n = row.value(counted)) {
    const auto count = kinds_[counted] == Kind::BinaryInteger ? binary_integer(*n) : integer(*n);
    if (!count || *count < 0) return std::nullopt;
    out.count = static_cast<double>(*count);
  }
  if (out.count == 0) return out;
  auto read = [&](std::size_t column) {
    const auto v = row.value(column);
    if (!v) return 0.0;
    return kinds_[column] == Kind::BinaryFloat ? binary_float(*v) : floating(*v);
  };
  out.sum = read(sum_column);
  out.var_pop = read(counted + 1);
  return out;
}

// As PostgreSQL's float8_combine merges two partial states of a parallel aggregate: N = Na + Nb,
// Sx = Sxa + Sxb, Sxx = Sxxa + Sxxb + Na * Nb * (Sxa / Na - Sxb / Nb)^2 / N.
Gather::Spread Gather::combine_spreads(const Spread& a, const Spread& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  Spread out;
  out.count = a.count + b.count;
  out.sum = a.sum + b.sum;
  const double gap = a.sum / a.count - b.sum / b.count;
  const double sxx =
      a.var_pop * a.count + b.var_pop * b.count + a.count * b.count * gap * gap / out.count;
  out.var_pop = sxx / out.count;
  return out;
}

std::optional<std::string> Gather::value_of_var_pop(const Spread& s, std::size_t column) const {
  if (s.count == 0) return std::nullopt;
  return kinds_[column] == Kind::BinaryFloat ? binary_float_of(s.var_pop, 8)
                                             : std::optional<std::string>(float_text(s.var_pop));
}

// Each average's sum over its count, as avg() answers; the count columns go.
bool Gather::finish_averages() {
  const std::size_t columns = plan_.combine.size();
  std::vector<std::optional<std::string>> values;
  for (Row& row : rows_) {
    values.clear();
    for (std::size_t i = 0; i < columns; ++i) {
      const auto v = row.value(i);
      values.push_back(v ? std::optional<std::string>(std::string(*v)) : std::nullopt);
    }
    for (const ScatterPlan::Average& a : plan_.averages) {
      const std::size_t column = a.column;
      const std::size_t counted = columns + a.extra;
      if (a.statistic != ScatterPlan::Statistic::Avg) {
        const std::optional<Spread> spread = spread_of(row, column, counted);
        if (!spread) return fail("08P01", "pgvalve: a shard sent a count that is not a number");
        const std::optional<double> value = statistic_value(a.statistic, *spread);
        if (!value) {
          values[column].reset();  // too few values: NULL, as PostgreSQL answers
        } else {
          values[column] = columns_[column].format != 0 ? binary_float_of(*value, 8)
                                                        : std::optional(float_text(*value));
        }
        continue;
      }
      const auto sum = row.value(column);
      const auto counted_value = row.value(counted);
      std::optional<std::int64_t> count = 0;
      if (counted_value) {
        count = kinds_[counted] == Kind::BinaryInteger ? binary_integer(*counted_value)
                                                       : integer(*counted_value);
      }
      if (!count || *count < 0) {
        return fail("08P01", "pgvalve: a shard sent a count that is not a number");
      }
      if (*count == 0 || !sum) {
        values[column].reset();  // no value to average: NULL, as avg() answers
        continue;
      }
      const bool binary = columns_[column].format != 0;
      if (columns_[column].type == static_cast<std::int32_t>(kFloat8)) {
        const double average =
            (binary ? binary_float(*sum) : floating(*sum)) / static_cast<double>(*count);
        values[column] = binary ? binary_float_of(average, 8) : float_text(average);
        continue;
      }
      std::optional<std::string> text;
      if (kinds_[column] == Kind::Integer || kinds_[column] == Kind::Numeric) {
        text = std::string(*sum);
      } else if (kinds_[column] == Kind::BinaryInteger) {
        if (const auto x = binary_integer(*sum)) text = std::to_string(*x);
      } else if (kinds_[column] == Kind::BinaryNumeric) {
        text = numeric_text(*sum);
      }
      const auto average = text ? numeric_average(*text, *count) : std::nullopt;
      const auto value = average && binary ? numeric_binary(*average) : average;
      if (!value) {
        return fail("0A000", "pgvalve: a NaN or infinite sum does not combine across shards");
      }
      values[column] = *value;
    }
    rebuild(row, values);
  }
  // From here on the averages sort as what they now are.
  kinds_.resize(columns);
  for (const ScatterPlan::Average& a : plan_.averages) {
    const bool binary = columns_[a.column].format != 0;
    if (columns_[a.column].type == static_cast<std::int32_t>(kFloat8)) {
      kinds_[a.column] = binary ? Kind::BinaryFloat : Kind::Float;
    } else {
      kinds_[a.column] = binary ? Kind::BinaryNumeric : Kind::Numeric;
    }
  }
  return true;
}

void Gather::finish(std::string& out, bool describe) {
  if (!failed_ && mode_ != Mode::Hold && !started_) {
    if (described_ == shards_) {
      start_stream(out, describe);
    } else {
      // Some shards described rows and others did not.
      fail("0A000",
           "pgvalve: the shards answered with different columns; check that every shard has "
           "the same schema");
    }
  }
  if (failed_) {
    const std::size_t at = pr::begin_message(out, 'E');
    out.append(error_);
    pr::end_message(out, at);
    return;
  }
  if (started_) {
    for (Progress& p : progress_)
      p = Progress::Done;
    drain(out);
    rows_answered_ = static_cast<std::uint64_t>(sent_);
    if (suspended_ || piece_full()) {
      pr::append_portal_suspended(out);
    } else {
      // A kept portal's last Execute counts its own rows, as a server's does.
      pr::append_command_complete(out, "SELECT " + std::to_string(piece_sent_));
    }
    return;
  }
  if (held_ready_) {
    send_held(out);
    return;
  }
  if (description_.empty()) {
    // No rows were described: an empty query, or a statement without a result (SHOW answers
    // with one).
    if (empty_query_) {
      pr::append_empty_query_response(out);
    } else {
      pr::append_command_complete(out, write_tag());
      rows_answered_ = other_rows_;
    }
    return;
  }
  if (!plan_.combine.empty()) {
    // Rows with equal group values become one; a query without GROUP BY is one group.
    std::vector<char> group(kinds_.size(), 0);
    for (std::size_t i = 0; i < plan_.combine.size() && i < group.size(); ++i)
      group[i] = plan_.combine[i] == ScatterPlan::Combine::Group;
    if (!collapse(group, true)) return finish(out, describe);
    if (!plan_.averages.empty() && !finish_averages()) return finish(out, describe);
  }
  if (plan_.distinct) {
    if (!collapse(std::vector<char>(kinds_.size(), 1), false)) return finish(out, describe);
  }
  if (!plan_.order.empty() && mode_ == Mode::Hold) {
    // Held rows are not checked as a merge checks each shard's order: their values are.
    for (const Row& row : rows_) {
      for (const ScatterPlan::SortKey& k : plan_.order) {
        const auto v = row.value(k.column);
        if (v && !orderable(k.column, *v)) {
          fail("0A000", "pgvalve: ORDER BY \"" + columns_[k.column].name +
                            "\" across shards cannot be ordered as PostgreSQL orders it (a "
                            "DateStyle other than ISO, dates BC or after 9999); SET DateStyle "
                            "= ISO, or name one device_id");
          return finish(out, describe);
        }
      }
    }
  }
  if (!plan_.order.empty()) {
    std::stable_sort(rows_.begin(), rows_.end(),
                     [this](const Row& a, const Row& b) { return less(a, b); });
  }
  const std::size_t from = std::min<std::size_t>(
      rows_.size(), static_cast<std::size_t>(std::max<std::int64_t>(offset_, 0)));
  std::size_t to = rows_.size();
  if (limit_ >= 0) to = std::min(to, from + static_cast<std::size_t>(limit_));
  if (describe) {
    const std::size_t at = pr::begin_message(out, 'T');
    out.append(description_);
    pr::end_message(out, at);
  }
  if (keep_portal_ && other_tag_.empty()) {
    held_ready_ = true;
    held_next_ = from;
    held_end_ = to;
    send_held(out);
    return;
  }
  const bool suspended =
      fetch_limit_ > 0 && other_tag_.empty() && to - from > static_cast<std::size_t>(fetch_limit_);
  if (suspended) to = from + static_cast<std::size_t>(fetch_limit_);
  for (std::size_t i = from; i < to; ++i)
    put_row(rows_[i].body, out);
  rows_answered_ = other_tag_.empty() ? to - from : other_rows_;
  if (suspended) {
    pr::append_portal_suspended(out);
    return;
  }
  // Rows a write RETURNING keeps its own tag.
  pr::append_command_complete(
      out, other_tag_.empty() ? "SELECT " + std::to_string(to - from) : write_tag());
}

void Gather::send_held(std::string& out) {
  while (held_next_ < held_end_ && !piece_full())
    put_row(rows_[held_next_++].body, out);
  rows_answered_ = static_cast<std::uint64_t>(sent_);
  if (piece_full()) {
    pr::append_portal_suspended(out);
  } else {
    pr::append_command_complete(out, "SELECT " + std::to_string(piece_sent_));
  }
}

std::string Gather::write_tag() const {
  return counted_tag_ ? other_tag_ + " " + std::to_string(other_rows_) : other_tag_;
}

}  // namespace pgvalve::routing
