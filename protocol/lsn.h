// WAL positions (pg_lsn) as PostgreSQL writes them in text: "16/B374D848" is 0x16'B374D848.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgvalve::protocol {

using Lsn = std::uint64_t;

// False (and `out` untouched) on anything but "<hex>/<hex>" with at most 8 digits each side.
bool parse_lsn(std::string_view text, Lsn& out);
std::string format_lsn(Lsn lsn);

}  // namespace pgvalve::protocol
