// YAML -> validated Config. Every problem becomes a ConfigError with its key path and the
// 1-based line/column of the offending node; loading goes on after an error so that one run of
// `--check` reports everything.
#include <sys/stat.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "config/config.h"
#include "protocol/auth.h"

namespace pgvalve::config {
namespace {

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();

// An IPv4 address written as four decimal numbers.
std::optional<std::array<int, 4>> ipv4_literal(std::string_view host) {
  std::array<int, 4> parts{};
  for (std::size_t i = 0; i < 4; ++i) {
    if (i > 0) {
      if (host.empty() || host.front() != '.') return std::nullopt;
      host.remove_prefix(1);
    }
    const auto [end, ec] = std::from_chars(host.data(), host.data() + host.size(), parts[i]);
    if (ec != std::errc() || end == host.data() || parts[i] < 0 || parts[i] > 255) {
      return std::nullopt;
    }
    host.remove_prefix(static_cast<std::size_t>(end - host.data()));
  }
  if (!host.empty()) return std::nullopt;
  return parts;
}

// Whether two listen hosts may name a common address: a wildcard takes every address, and a
// host name may resolve to the other's. (IPv6 literals are compared as written.)
bool may_overlap(const std::string& a, const std::string& b) {
  auto wildcard = [](const std::string& h) { return h == "0.0.0.0" || h == "::"; };
  if (a == b || wildcard(a) || wildcard(b)) return true;
  const auto x = ipv4_literal(a);
  const auto y = ipv4_literal(b);
  if (x && y) return *x == *y;
  auto ipv6 = [](const std::string& h) { return h.find(':') != std::string::npos; };
  if ((x && ipv6(b)) || (y && ipv6(a))) return false;
  if (ipv6(a) && ipv6(b)) return false;
  return true;
}

struct Pos {
  int line = 0;
  int column = 0;
};

Pos pos_of(const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return {};
  return {mark.line + 1, mark.column + 1};
}

Pos pos_of(const YAML::Node& node) {
  if (!node.IsDefined()) return {};
  return pos_of(node.Mark());
}

std::string child(const std::string& parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return parent + "." + std::string(key);
}

std::string indexed(const std::string& parent, std::size_t index) {
  return parent + "[" + std::to_string(index) + "]";
}

const char* kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a single value";
    default:
      return "nothing";
  }
}

std::string quoted(std::string_view text) {
  return "\"" + std::string(text) + "\"";
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Levenshtein distance, for "did you mean" hints on misspelt keys.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

bool is_hex(char c) {
  return std::isxdigit(static_cast<unsigned char>(c)) != 0;
}

bool looks_like_md5(std::string_view s) {
  return s.size() == 35 && s.starts_with("md5");
}

bool is_scram(std::string_view s) {
  return protocol::is_scram_verifier(s);
}

bool valid_hostname(std::string_view host) {
  return !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}

bool valid_ipv6(std::string_view host) {
  const std::size_t zone = host.find('%');
  const std::string_view address = host.substr(0, zone);
  if (address.find(':') == std::string_view::npos) return false;
  if (zone != std::string_view::npos && zone + 1 >= host.size()) return false;
  return std::all_of(address.begin(), address.end(),
                     [](char c) { return is_hex(c) || c == ':' || c == '.'; });
}

// A numeric IPv4 address as the resolver (inet_aton) reads it, which is where pgvalve connects:
// one to four parts, each decimal, octal (leading 0) or hex (0x), the last filling the bytes
// left (127.1 is 127.0.0.1, 127.0.0.010 is 127.0.0.8). In host order.
std::optional<std::uint32_t> ipv4_address(std::string_view host) {
  std::array<std::uint64_t, 4> parts{};
  std::size_t count = 0;
  while (true) {
    if (count == 4 || host.empty()) return std::nullopt;
    int base = 10;
    if (host.size() > 1 && host[0] == '0' && (host[1] == 'x' || host[1] == 'X')) {
      base = 16;
      host.remove_prefix(2);
    } else if (host.size() > 1 && host[0] == '0' && host[1] != '.') {
      base = 8;
      host.remove_prefix(1);
    }
    const auto [end, ec] =
        std::from_chars(host.data(), host.data() + host.size(), parts[count], base);
    if (ec == std::errc::result_out_of_range) return std::nullopt;
    // "0x" alone is 0 to inet_aton.
    if (end == host.data() && !(base == 16 && (host.empty() || host[0] == '.'))) {
      return std::nullopt;
    }
    ++count;
    host.remove_prefix(static_cast<std::size_t>(end - host.data()));
    if (host.empty()) break;
    if (host[0] != '.') return std::nullopt;
    host.remove_prefix(1);
  }
  std::uint64_t address = 0;
  for (std::size_t i = 0; i + 1 < count; ++i) {
    if (parts[i] > 255) return std::nullopt;
    address |= parts[i] << (8 * (3 - i));
  }
  const std::uint64_t last = parts[count - 1];
  if (last >= (std::uint64_t{1} << (8 * (5 - count)))) return std::nullopt;
  return static_cast<std::uint32_t>(address | last);
}

// An IPv6 address (without its zone) as its 16 bytes.
std::optional<std::array<std::uint8_t, 16>> ipv6_address(std::string_view text) {
  std::vector<std::uint16_t> head, tail;
  bool gap = false;
  std::optional<std::uint32_t> v4;  // a dotted IPv4 address as the last 32 bits
  std::vector<std::uint16_t>* side = &head;
  if (text.starts_with("::")) {
    gap = true;
    side = &tail;
    text.remove_prefix(2);
  }
  while (!text.empty()) {
    const std::size_t colon = text.find(':');
    const std::string_view group = text.substr(0, colon);
    if (group.find('.') != std::string_view::npos) {
      if (colon != std::string_view::npos) return std::nullopt;
      const auto [a, b, c, d] = ipv4_literal(group).value_or(std::array<int, 4>{-1, 0, 0, 0});
      if (a < 0) return std::nullopt;
      v4 = static_cast<std::uint32_t>(a) << 24 | static_cast<std::uint32_t>(b) << 16 |
           static_cast<std::uint32_t>(c) << 8 | static_cast<std::uint32_t>(d);
      break;
    }
    std::uint16_t value = 0;
    const auto [end, ec] = std::from_chars(group.data(), group.data() + group.size(), value, 16);
    if (group.empty() || group.size() > 4 || ec != std::errc() ||
        end != group.data() + group.size()) {
      return std::nullopt;
    }
    side->push_back(value);
    if (colon == std::string_view::npos) break;
    text.remove_prefix(colon + 1);
    if (text.starts_with(":")) {
      if (gap) return std::nullopt;
      gap = true;
      side = &tail;
      text.remove_prefix(1);
    } else if (text.empty()) {
      return std::nullopt;
    }
  }
  if (v4) {
    side->push_back(static_cast<std::uint16_t>(*v4 >> 16));
    side->push_back(static_cast<std::uint16_t>(*v4 & 0xffff));
  }
  const std::size_t groups = head.size() + tail.size();
  if (gap ? groups > 7 : groups != 8) return std::nullopt;
  std::array<std::uint8_t, 16> bytes{};
  const auto put = [&](std::size_t at, std::uint16_t value) {
    bytes[2 * at] = static_cast<std::uint8_t>(value >> 8);
    bytes[2 * at + 1] = static_cast<std::uint8_t>(value & 0xff);
  };
  for (std::size_t i = 0; i < head.size(); ++i)
    put(i, head[i]);
  for (std::size_t i = 0; i < tail.size(); ++i)
    put(8 - tail.size() + i, tail[i]);
  return bytes;
}

// The server an endpoint reaches, as far as its text tells without a DNS lookup: host names
// without case or a final dot, numeric IPv4 addresses as the resolver reads them, IPv6
// addresses in one spelling, and every loopback address (127.x.x.x, ::1, localhost) as this
// machine. Two names of one address are not found.
std::string server_identity(const Endpoint& ep) {
  const std::string port = ":" + std::to_string(ep.port);
  std::string host = ep.host;
  std::transform(host.begin(), host.end(), host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (host.size() > 1 && host.back() == '.') host.pop_back();
  if (host == "localhost") return "loopback" + port;
  const auto ipv4 = [&](std::uint32_t address) {
    if (address >> 24 == 127) return "loopback" + port;
    return std::to_string(address >> 24) + "." + std::to_string((address >> 16) & 255) + "." +
           std::to_string((address >> 8) & 255) + "." + std::to_string(address & 255) + port;
  };
  if (const auto v4 = ipv4_address(host)) return ipv4(*v4);
  const std::size_t zone = host.find('%');
  if (const auto v6 = ipv6_address(std::string_view(host).substr(0, zone))) {
    const std::array<std::uint8_t, 16>& b = *v6;
    const auto zeros = [&](std::size_t n) {
      return std::all_of(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n),
                         [](std::uint8_t x) { return x == 0; });
    };
    if (zeros(15) && b[15] == 1) return "loopback" + port;
    if (zeros(10) && b[10] == 0xff && b[11] == 0xff) {  // IPv4-mapped
      return ipv4(std::uint32_t{b[12]} << 24 | std::uint32_t{b[13]} << 16 |
                  std::uint32_t{b[14]} << 8 | b[15]);
    }
    std::string text = "[";
    for (std::size_t i = 0; i < 16; i += 2) {
      char group[8];
      const auto [end, ec] = std::to_chars(group, group + sizeof group, b[i] << 8 | b[i + 1], 16);
      text.append(group, end);
      text += i < 14 ? ":" : "";
    }
    return text + (zone == std::string::npos ? "" : host.substr(zone)) + "]" + port;
  }
  return host + port;
}

// "host:port", "[v6]:port". Returns the problem, or "" when `out` is set.
std::string parse_endpoint(std::string_view text, Endpoint& out) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with("[")) {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos) return "missing ']' after the IPv6 address";
    host = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (!rest.starts_with(":") || rest.size() == 1) {
      return "missing port: expected \"[address]:port\", e.g. \"[::1]:5432\"";
    }
    port = rest.substr(1);
    if (!valid_ipv6(host)) return "invalid IPv6 address " + quoted(host);
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || colon + 1 == text.size()) {
      return "missing port: expected \"host:port\", e.g. \"127.0.0.1:5432\"";
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.empty()) return "missing host: expected \"host:port\", e.g. \"127.0.0.1:5432\"";
    if (host.find(':') != std::string_view::npos) {
      return "an IPv6 address needs brackets: \"[" + std::string(host) + "]:port\"";
    }
    if (!valid_hostname(host)) return "invalid host name " + quoted(host);
  }
  int number = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
  if (ec != std::errc() || end != port.data() + port.size()) {
    if (ec == std::errc::result_out_of_range)
      return "port " + std::string(port) + " out of range 1-65535";
    return "invalid port " + quoted(port);
  }
  if (number < 1 || number > 65535) return "port " + std::string(port) + " out of range 1-65535";
  out.host = std::string(host);
  out.port = static_cast<std::uint16_t>(number);
  return "";
}

// A range such as "0-511", or a single bucket "7".
bool parse_range(std::string_view text, BucketRange& out) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
      s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
      s.remove_suffix(1);
    return s;
  };
  auto number = [](std::string_view s, int& n) {
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size() && n >= 0;
  };
  text = trim(text);
  const std::size_t dash = text.find('-');
  if (dash == std::string_view::npos) {
    if (!number(text, out.first)) return false;
    out.last = out.first;
    return true;
  }
  return number(trim(text.substr(0, dash)), out.first) &&
         number(trim(text.substr(dash + 1)), out.last);
}

// The enum's words come from to_string(), so parsing and describe() cannot drift apart.
template <class E, std::size_t N>
std::string enum_words(const std::array<E, N>& values) {
  std::string out;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    out += to_string(values[i]);
  }
  return out;
}

constexpr std::array kLogLevels{LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error};
constexpr std::array kTlsModes{TlsMode::Disable, TlsMode::Prefer, TlsMode::Require};
constexpr std::array kServerTlsModes{ServerTlsMode::Disable, ServerTlsMode::Prefer,
                                     ServerTlsMode::Require, ServerTlsMode::VerifyCa,
                                     ServerTlsMode::VerifyFull};
constexpr std::array kPoolModes{PoolMode::Session, PoolMode::Transaction, PoolMode::Statement};
constexpr std::array kHashes{HashFunction::Xxh3, HashFunction::Md5Mod, HashFunction::PgPartition};
constexpr std::array kKeyTypes{ShardKeyType::Auto, ShardKeyType::Bigint, ShardKeyType::Text,
                               ShardKeyType::Uuid};
constexpr std::array kReadsTo{ReadsTo::Replicas, ReadsTo::Primary, ReadsTo::Any};
constexpr std::array kBalances{LoadBalance::LeastConnections, LoadBalance::RoundRobin,
                               LoadBalance::Random};
constexpr std::array kRyw{ReadYourWrites::Off, ReadYourWrites::Lsn, ReadYourWrites::Time};
constexpr std::array kFailovers{FailoverMode::Off, FailoverMode::Follow, FailoverMode::Promote};

// A bucket_map entry kept until the whole database is read (shards and buckets may come after).
struct PendingRange {
  std::string shard;
  BucketRange range;
  std::string path;
  Pos pos;
};

class Loader {
 public:
  Loader(std::vector<ConfigError>& errors, Keys keys) : errors_(errors), keys_(keys) {}

  void read_root(const YAML::Node& root, Config& c);
  void refuse_what_does_not_work_yet(const YAML::Node& root, const Config& c);
  void check_pool_connections(const YAML::Node& root, const PoolSettings& pool);

 private:
  using Reader = std::function<void(const YAML::Node& value, const std::string& path)>;
  struct Field {
    std::string_view key;
    Reader read;
  };

  void error(const std::string& path, Pos pos, std::string message) {
    errors_.push_back(ConfigError{path, pos.line, pos.column, std::move(message)});
  }
  void error(const std::string& path, const YAML::Node& at, std::string message) {
    error(path, pos_of(at), std::move(message));
  }

  // Whether `path` already has an error, so that follow-on checks stay quiet.
  bool failed(const std::string& path) const {
    return std::any_of(errors_.begin(), errors_.end(),
                       [&](const ConfigError& e) { return e.path == path; });
  }

  std::optional<std::string> expand(std::string_view text, const std::string& path, Pos pos);
  std::optional<std::string> scalar(const YAML::Node& node, const std::string& path,
                                    std::string_view expected);
  bool expect_map(const YAML::Node& node, const std::string& path);
  bool expect_list(const YAML::Node& node, const std::string& path);
  std::set<std::string> read_map(const YAML::Node& node, const std::string& path,
                                 const std::vector<Field>& fields);

  void read_string(const YAML::Node& node, const std::string& path, std::string& out);
  void read_int(const YAML::Node& node, const std::string& path, std::int64_t min, std::int64_t max,
                std::int64_t& out);
  void read_bool(const YAML::Node& node, const std::string& path, bool& out);
  void read_endpoint(const YAML::Node& node, const std::string& path, Endpoint& out);
  void read_names(const YAML::Node& node, const std::string& path, std::vector<std::string>& out);
  template <class E, std::size_t N>
  void read_enum(const YAML::Node& node, const std::string& path, const std::array<E, N>& values,
                 E& out);

  // Readers for the typed fields of the structs.
  Reader int_field(int& out, std::int64_t min, std::int64_t max = kIntMax) {
    return [this, &out, min, max](const YAML::Node& n, const std::string& p) {
      std::int64_t v = out;
      read_int(n, p, min, max, v);
      out = static_cast<int>(v);
    };
  }
  Reader bool_field(bool& out) {
    return [this, &out](const YAML::Node& n, const std::string& p) { read_bool(n, p, out); };
  }
  Reader string_field(std::string& out) {
    return [this, &out](const YAML::Node& n, const std::string& p) { read_string(n, p, out); };
  }
  Reader endpoint_field(Endpoint& out) {
    return [this, &out](const YAML::Node& n, const std::string& p) { read_endpoint(n, p, out); };
  }
  template <class E, std::size_t N>
  Reader enum_field(E& out, const std::array<E, N>& values) {
    return [this, &out, &values](const YAML::Node& n, const std::string& p) {
      read_enum(n, p, values, out);
    };
  }

  void read_tls(const YAML::Node& node, const std::string& path, std::optional<TlsConfig>& out);
  void read_users(const YAML::Node& node, const std::string& path, std::vector<User>& out);
  void read_databases(const YAML::Node& node, const std::string& path, std::vector<Database>& out);
  void read_database(const YAML::Node& node, const std::string& path, Database& db);
  void read_shards(const YAML::Node& node, const std::string& path, std::vector<Shard>& out);
  void read_sharding(const YAML::Node& node, const std::string& path, Sharding& out,
                     std::vector<PendingRange>& ranges, bool& ranges_ok);
  void check_bucket_map(const std::string& path, Pos sharding_pos, Pos pos, const Database& db,
                        std::vector<PendingRange>& ranges, Sharding& sharding);

  std::vector<ConfigError>& errors_;
  const Keys keys_;
};

std::optional<std::string> Loader::expand(std::string_view text, const std::string& path, Pos pos) {
  std::string out;
  bool ok = true;
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '$' || i + 1 >= text.size() || text[i + 1] != '{') {
      out += text[i++];
      continue;
    }
    const std::size_t close = text.find('}', i + 2);
    if (close == std::string_view::npos) {
      error(path, pos, "unterminated \"${\" (expected ${NAME})");
      return std::nullopt;
    }
    const std::string name(text.substr(i + 2, close - i - 2));
    const bool valid_name = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                            std::all_of(name.begin(), name.end(), [](char c) {
                              return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                            });
    if (!valid_name) {
      error(path, pos, "invalid environment variable name " + quoted(name) + " in ${...}");
      ok = false;
    } else if (const char* value = std::getenv(name.c_str()); value == nullptr) {
      error(path, pos, "environment variable " + name + " is not set");
      ok = false;
    } else {
      out += value;
    }
    i = close + 1;
  }
  if (!ok) return std::nullopt;
  return out;
}

std::optional<std::string> Loader::scalar(const YAML::Node& node, const std::string& path,
                                          std::string_view expected) {
  if (!node.IsScalar()) {
    error(path, node, "expected " + std::string(expected) + ", got " + kind_of(node));
    return std::nullopt;
  }
  return expand(node.Scalar(), path, pos_of(node));
}

bool Loader::expect_map(const YAML::Node& node, const std::string& path) {
  if (node.IsMap()) return true;
  error(path, node, std::string("expected a map (key: value lines), got ") + kind_of(node));
  return false;
}

bool Loader::expect_list(const YAML::Node& node, const std::string& path) {
  if (node.IsSequence()) return true;
  error(path, node, std::string("expected a list, got ") + kind_of(node));
  return false;
}

// Unknown and repeated keys are errors; a key with an empty value (`key:` or `key: ~`) counts as
// absent. Returns the keys that were given a value.
std::set<std::string> Loader::read_map(const YAML::Node& node, const std::string& path,
                                       const std::vector<Field>& fields) {
  std::set<std::string> present;
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key_node = it->first;  // a copy: `it->` yields a temporary
    if (!key_node.IsScalar()) {
      error(path, key_node, "a key must be a plain word");
      continue;
    }
    const std::string& key = key_node.Scalar();
    const std::string key_path = child(path, key);
    if (!seen.insert(key).second) {
      error(key_path, key_node, "duplicate key " + quoted(key));
      continue;
    }
    const auto field =
        std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == key; });
    if (field == fields.end()) {
      std::string message = "unknown key " + quoted(key);
      std::string_view best;
      std::size_t best_distance = 3;  // only close misspellings get a hint
      for (const Field& f : fields) {
        const std::size_t d = edit_distance(lower(key), f.key);
        if (d < best_distance) {
          best_distance = d;
          best = f.key;
        }
      }
      if (!best.empty()) message += " (did you mean " + quoted(best) + "?)";
      error(key_path, key_node, std::move(message));
      continue;
    }
    const YAML::Node value = it->second;
    if (value.IsNull()) continue;
    present.insert(key);
    field->read(value, key_path);
  }
  return present;
}

void Loader::read_string(const YAML::Node& node, const std::string& path, std::string& out) {
  if (auto text = scalar(node, path, "a string")) out = std::move(*text);
}

void Loader::read_int(const YAML::Node& node, const std::string& path, std::int64_t min,
                      std::int64_t max, std::int64_t& out) {
  const auto text = scalar(node, path, "an integer");
  if (!text) return;
  std::int64_t value = 0;
  const char* begin = text->data();
  const char* end = begin + text->size();
  if (begin != end && *begin == '+') ++begin;
  auto [stop, ec] = std::from_chars(begin, end, value);
  if (ec == std::errc::result_out_of_range) {
    error(path, node, "number " + *text + " is too large");
    return;
  }
  if (ec != std::errc() || stop != end || text->empty()) {
    error(path, node, "expected an integer, got " + quoted(*text));
    return;
  }
  if (value < min || value > max) {
    if (value < min && (max == kIntMax || max == kInt64Max)) {
      error(path, node, "must be at least " + std::to_string(min) + ", got " + *text);
    } else {
      error(path, node,
            "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
                *text);
    }
    return;
  }
  out = value;
}

void Loader::read_bool(const YAML::Node& node, const std::string& path, bool& out) {
  const auto text = scalar(node, path, "true or false");
  if (!text) return;
  const std::string word = lower(*text);
  if (word == "true" || word == "yes" || word == "on") {
    out = true;
  } else if (word == "false" || word == "no" || word == "off") {
    out = false;
  } else {
    error(path, node, "expected true or false, got " + quoted(*text));
  }
}

template <class E, std::size_t N>
void Loader::read_enum(const YAML::Node& node, const std::string& path,
                       const std::array<E, N>& values, E& out) {
  const auto text = scalar(node, path, "one of " + enum_words(values));
  if (!text) return;
  const std::string word = lower(*text);
  for (E value : values) {
    if (word == to_string(value)) {
      out = value;
      return;
    }
  }
  error(path, node, "unknown value " + quoted(*text) + ", expected " + enum_words(values));
}

void Loader::read_endpoint(const YAML::Node& node, const std::string& path, Endpoint& out) {
  if (node.IsSequence()) {
    // `listen: [::1]:6432` unquoted is YAML list syntax.
    error(path, node, "expected \"host:port\", got a list; quote IPv6 endpoints: \"[::1]:5432\"");
    return;
  }
  const auto text = scalar(node, path, "\"host:port\"");
  if (!text) return;
  if (std::string problem = parse_endpoint(*text, out); !problem.empty()) {
    error(path, node, quoted(*text) + ": " + problem);
  }
}

// A list of non-empty, distinct names (tables, functions).
void Loader::read_names(const YAML::Node& node, const std::string& path,
                        std::vector<std::string>& out) {
  if (!expect_list(node, path)) return;
  std::vector<std::string> names;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string item_path = indexed(path, i);
    const auto text = scalar(node[i], item_path, "a name");
    if (!text) continue;
    if (text->empty()) {
      error(item_path, node[i], "must not be empty");
    } else if (std::find(names.begin(), names.end(), *text) != names.end()) {
      error(item_path, node[i], quoted(*text) + " is listed twice");
    } else {
      names.push_back(*text);
    }
  }
  out = std::move(names);
}

void Loader::read_tls(const YAML::Node& node, const std::string& path,
                      std::optional<TlsConfig>& out) {
  if (!expect_map(node, path)) return;
  TlsConfig tls;
  const auto present = read_map(node, path,
                                {
                                    {"cert", string_field(tls.cert)},
                                    {"key", string_field(tls.key)},
                                    {"mode", enum_field(tls.mode, kTlsModes)},
                                    {"client_ca", string_field(tls.client_ca)},
                                });
  if (!tls.client_ca.empty() && tls.mode != TlsMode::Require) {
    // A client that does not ask for TLS would log in without a certificate, or (disable) the
    // file would never be read.
    error(child(path, "client_ca"), node["client_ca"],
          "needs mode: require; with mode " + std::string(to_string(tls.mode)) +
              " a client could log in without TLS, and so without a certificate");
  }
  if (tls.mode != TlsMode::Disable) {
    // Without both files the listener could not offer TLS at all.
    for (const auto& [key, value] : {std::pair{"cert", &tls.cert}, std::pair{"key", &tls.key}}) {
      if (!present.contains(key)) {
        error(child(path, key), node, "required unless mode is disable");
      } else if (value->empty() && !failed(child(path, key))) {
        error(child(path, key), node[key], "must not be empty");
      }
    }
  }
  out = std::move(tls);
}

void Loader::read_users(const YAML::Node& node, const std::string& path, std::vector<User>& out) {
  if (!expect_list(node, path)) return;
  if (node.size() == 0) {
    error(path, node, "at least one user is required");
    return;
  }
  std::map<std::string, std::string> first_path;  // user name -> path where it was first seen
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string user_path = indexed(path, i);
    const YAML::Node item = node[i];
    if (!expect_map(item, user_path)) continue;
    User user;
    bool password_ok = true;
    const auto present = read_map(item, user_path,
                                  {
                                      {"name", string_field(user.name)},
                                      {"password", string_field(user.password)},
                                      {"server_password", string_field(user.server_password)},
                                      {"admin", bool_field(user.admin)},
                                  });
    const std::string name_path = child(user_path, "name");
    if (!present.contains("name")) {
      error(name_path, item, "required");
    } else if (failed(name_path)) {
      // already reported, e.g. an unset ${VAR}
    } else if (user.name.empty()) {
      error(name_path, item["name"], "must not be empty");
    } else if (auto [it, inserted] = first_path.emplace(user.name, user_path); !inserted) {
      error(name_path, item["name"],
            "duplicate user name " + quoted(user.name) + " (also " + it->second + ")");
    }
    const std::string password_path = child(user_path, "password");
    if (!present.contains("password")) {
      error(password_path, item, "required (SCRAM verifier, md5 hash or plain text)");
      password_ok = false;
    } else if (failed(password_path)) {
      password_ok = false;
    } else if (user.password.empty()) {
      error(password_path, item["password"], "must not be empty");
      password_ok = false;
    } else if (is_scram(user.password) && !protocol::ScramVerifier::parse(user.password)) {
      // The check logins use: a verifier it cannot read would refuse every password (28P01).
      error(password_path, item["password"],
            "malformed SCRAM verifier: expected "
            "\"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>\" as in pg_authid "
            "(base64 with its = padding, keys of 32 bytes); copy it from pg_authid.rolpassword");
      password_ok = false;
    } else if (looks_like_md5(user.password) && !protocol::is_md5_hash(user.password)) {
      error(password_path, item["password"],
            "malformed md5 hash: expected \"md5\" followed by 32 lower-case hex digits, as in "
            "pg_authid.rolpassword");
      password_ok = false;
    }
    if (present.contains("server_password") && is_scram(user.server_password)) {
      error(child(user_path, "server_password"), item["server_password"],
            "a SCRAM verifier cannot be used to log in; give the plain password");
    } else if (!present.contains("server_password") && password_ok && !is_scram(user.password) &&
               !protocol::is_md5_hash(user.password)) {
      user.server_password = user.password;  // plain text: the same password logs in upstream
    }
    out.push_back(std::move(user));
  }
}

void Loader::read_databases(const YAML::Node& node, const std::string& path,
                            std::vector<Database>& out) {
  if (!node.IsMap()) {
    error(path, node,
          std::string("expected a map of database name -> settings, got ") + kind_of(node));
    return;
  }
  if (node.size() == 0) {
    error(path, node, "at least one database is required");
    return;
  }
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    if (!key.IsScalar()) {
      error(path, key, "a database name must be a plain word");
      continue;
    }
    const std::string raw_path = child(path, key.Scalar());
    const auto name = expand(key.Scalar(), raw_path, pos_of(key));
    if (!name) continue;
    const std::string db_path = child(path, *name);
    if (name->empty()) {
      error(db_path, key, "a database name must not be empty");
      continue;
    }
    if (*name == "pgvalve") {
      error(db_path, key, "\"pgvalve\" is reserved for the admin console");
      continue;
    }
    if (!seen.insert(*name).second) {
      error(db_path, key, "duplicate database " + quoted(*name));
      continue;
    }
    Database db;
    db.name = *name;
    const YAML::Node value = it->second;
    if (value.IsNull()) {
      error(child(db_path, "shards"), key, "required: at least one shard");
      continue;
    }
    if (!expect_map(value, db_path)) continue;
    read_database(value, db_path, db);
    out.push_back(std::move(db));
  }
}

void Loader::read_database(const YAML::Node& node, const std::string& path, Database& db) {
  Sharding sharding;
  std::vector<PendingRange> ranges;
  bool ranges_ok = true;
  Pos sharding_pos;  // where a "too few buckets" error points
  Pos bucket_map_pos;
  bool buckets_given = false;
  const auto present = read_map(
      node, path,
      {
          {"dbname", string_field(db.dbname)},
          {"shards",
           [&](const YAML::Node& n, const std::string& p) { read_shards(n, p, db.shards); }},
          {"sharding",
           [&](const YAML::Node& n, const std::string& p) {
             if (!expect_map(n, p)) return;
             db.sharding.emplace();
             sharding_pos = pos_of(n["buckets"] ? n["buckets"] : n);
             buckets_given = static_cast<bool>(n["buckets"]);
             if (n["bucket_map"]) bucket_map_pos = pos_of(n["bucket_map"]);
             read_sharding(n, p, sharding, ranges, ranges_ok);
           }},
      });
  if (!present.contains("dbname")) {
    db.dbname = db.name;
  } else if (db.dbname.empty() && !failed(child(path, "dbname"))) {
    error(child(path, "dbname"), node["dbname"], "must not be empty");
  }
  if (!present.contains("shards")) {
    error(child(path, "shards"), node, "required: at least one shard");
    return;
  }
  if (db.shards.empty()) return;  // read_shards reported why
  if (!db.sharding) {
    if (db.shards.size() > 1) {
      error(child(path, "sharding"), node,
            "required: " + std::to_string(db.shards.size()) +
                " shards need a sharding section (key, hash, tables)");
    }
    return;
  }
  const std::string sharding_path = child(path, "sharding");
  if (buckets_given && sharding.hash != HashFunction::Xxh3) {
    // md5_mod and pg_partition place a key by its hash modulo the number of shards.
    error(child(sharding_path, "buckets"), sharding_pos,
          std::string("buckets only applies to hash: xxh3 (hash is ") + to_string(sharding.hash) +
              "); remove it");
  }
  if (ranges_ok) {
    check_bucket_map(sharding_path, sharding_pos, bucket_map_pos, db, ranges, sharding);
  }
  *db.sharding = std::move(sharding);
}

void Loader::read_shards(const YAML::Node& node, const std::string& path, std::vector<Shard>& out) {
  if (!expect_list(node, path)) return;
  if (node.size() == 0) {
    error(path, node, "at least one shard is required");
    return;
  }
  std::map<std::string, std::string> names;  // shard name -> its path
  struct Claimed {
    std::string path;
    Endpoint as;  // as written there
  };
  std::map<std::string, Claimed> servers;  // server_identity() -> where it was first used
  // One server cannot be two shards, nor a shard's primary and its replica: each would get its
  // own pool and health checks, and a read over every shard would count its rows twice.
  auto claim = [&](const Endpoint& ep, const std::string& ep_path, Pos at) {
    const auto [it, inserted] = servers.emplace(server_identity(ep), Claimed{ep_path, ep});
    if (inserted) return;
    const Claimed& first = it->second;
    if (first.as == ep) {
      error(ep_path, at, ep.to_string() + " is already used by " + first.path);
    } else {
      error(ep_path, at,
            ep.to_string() + " is the same server as " + first.as.to_string() +
                ", already used by " + first.path);
    }
  };
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string shard_path = indexed(path, i);
    const YAML::Node item = node[i];
    if (!expect_map(item, shard_path)) continue;
    Shard shard;
    bool primary_ok = false;
    std::vector<std::pair<std::string, Pos>> replica_at;  // path and position of each replica
    const auto present = read_map(item, shard_path,
                                  {
                                      {"name", string_field(shard.name)},
                                      {"primary",
                                       [&](const YAML::Node& n, const std::string& p) {
                                         const std::size_t before = errors_.size();
                                         read_endpoint(n, p, shard.primary);
                                         primary_ok = errors_.size() == before;
                                       }},
                                      {"replicas",
                                       [&](const YAML::Node& n, const std::string& p) {
                                         if (!expect_list(n, p)) return;
                                         for (std::size_t r = 0; r < n.size(); ++r) {
                                           Endpoint replica;
                                           const std::size_t before = errors_.size();
                                           read_endpoint(n[r], indexed(p, r), replica);
                                           if (errors_.size() != before) continue;
                                           shard.replicas.push_back(replica);
                                           replica_at.emplace_back(indexed(p, r), pos_of(n[r]));
                                         }
                                       }},
                                  });
    if (!present.contains("name")) {
      shard.name = "s" + std::to_string(i);
    } else if (shard.name.empty() && !failed(child(shard_path, "name"))) {
      error(child(shard_path, "name"), item["name"], "must not be empty");
    }
    if (!shard.name.empty()) {
      const auto [it, inserted] = names.emplace(shard.name, shard_path);
      if (!inserted) {
        error(child(shard_path, "name"), present.contains("name") ? item["name"] : item,
              "duplicate shard name " + quoted(shard.name) + " (also " + it->second + ")");
      }
    }
    if (!present.contains("primary")) {
      error(child(shard_path, "primary"), item, "required (\"host:port\")");
    } else if (primary_ok) {
      claim(shard.primary, child(shard_path, "primary"), pos_of(item["primary"]));
    }
    for (std::size_t r = 0; r < shard.replicas.size(); ++r) {
      claim(shard.replicas[r], replica_at[r].first, replica_at[r].second);
    }
    out.push_back(std::move(shard));
  }
}

void Loader::read_sharding(const YAML::Node& node, const std::string& path, Sharding& out,
                           std::vector<PendingRange>& ranges, bool& ranges_ok) {
  read_map(node, path,
           {
               {"key",
                [&](const YAML::Node& n, const std::string& p) {
                  read_string(n, p, out.key);
                  if (out.key.empty() && !failed(p)) error(p, n, "must not be empty");
                }},
               {"hash", enum_field(out.hash, kHashes)},
               {"key_type", enum_field(out.key_type, kKeyTypes)},
               {"buckets", int_field(out.buckets, 1, 1 << 20)},
               {"bucket_map",
                [&](const YAML::Node& n, const std::string& p) {
                  if (!n.IsMap()) {
                    error(
                        p, n,
                        std::string("expected a map of shard name -> \"first-last\" ranges, got ") +
                            kind_of(n));
                    ranges_ok = false;
                    return;
                  }
                  std::set<std::string> seen;
                  for (auto it = n.begin(); it != n.end(); ++it) {
                    if (!it->first.IsScalar()) {
                      error(p, it->first, "a shard name must be a plain word");
                      ranges_ok = false;
                      continue;
                    }
                    const auto shard =
                        expand(it->first.Scalar(), child(p, it->first.Scalar()), pos_of(it->first));
                    if (!shard) {
                      ranges_ok = false;
                      continue;
                    }
                    const std::string shard_path = child(p, *shard);
                    if (!seen.insert(*shard).second) {
                      error(shard_path, it->first, "duplicate key " + quoted(*shard));
                      ranges_ok = false;
                      continue;
                    }
                    auto add_range = [&](const YAML::Node& value, const std::string& range_path) {
                      const auto text = scalar(value, range_path, "a \"first-last\" bucket range");
                      if (!text) {
                        ranges_ok = false;
                        return;
                      }
                      BucketRange range;
                      if (!parse_range(*text, range)) {
                        error(range_path, value,
                              "expected a bucket range \"first-last\" (e.g. \"0-511\"), got " +
                                  quoted(*text));
                        ranges_ok = false;
                      } else if (range.first > range.last) {
                        error(range_path, value,
                              "range " + *text + " is backwards: first must not exceed last");
                        ranges_ok = false;
                      } else {
                        ranges.push_back({*shard, range, range_path, pos_of(value)});
                      }
                    };
                    const YAML::Node value = it->second;
                    if (value.IsSequence()) {
                      for (std::size_t i = 0; i < value.size(); ++i) {
                        add_range(value[i], indexed(shard_path, i));
                      }
                    } else {
                      add_range(value, shard_path);
                    }
                  }
                }},
               {"tables",
                [&](const YAML::Node& n, const std::string& p) { read_names(n, p, out.tables); }},
               {"reference_tables",
                [&](const YAML::Node& n, const std::string& p) {
                  read_names(n, p, out.reference_tables);
                }},
           });
  // A table cannot be both split by key and copied to every shard.
  for (const std::string& table : out.reference_tables) {
    if (std::find(out.tables.begin(), out.tables.end(), table) != out.tables.end()) {
      const YAML::Node list = node["reference_tables"];
      Pos at = pos_of(list);
      std::string at_path = child(path, "reference_tables");
      for (std::size_t i = 0; i < list.size(); ++i) {
        if (list[i].IsScalar() && list[i].Scalar() == table) {
          at = pos_of(list[i]);
          at_path = indexed(at_path, i);
          break;
        }
      }
      error(at_path, at, quoted(table) + " is also listed in tables");
    }
  }
}

void Loader::check_bucket_map(const std::string& path, Pos sharding_pos, Pos pos,
                              const Database& db, std::vector<PendingRange>& ranges,
                              Sharding& sharding) {
  const std::string map_path = child(path, "bucket_map");
  const int buckets = sharding.buckets;
  if (ranges.empty()) {
    if (sharding.hash != HashFunction::Xxh3) return;  // md5_mod / pg_partition: hash % shards
    const int n = static_cast<int>(db.shards.size());
    if (buckets < n) {
      error(child(path, "buckets"), sharding_pos,
            "must be at least the number of shards (" + std::to_string(n) + ")");
      return;
    }
    // The default: an even contiguous split, made explicit so routing and SHOW see it.
    for (int i = 0; i < n; ++i) {
      const int first = static_cast<int>(static_cast<std::int64_t>(buckets) * i / n);
      const int last = static_cast<int>(static_cast<std::int64_t>(buckets) * (i + 1) / n) - 1;
      sharding.bucket_map[db.shards[i].name].push_back({first, last});
    }
    return;
  }
  if (sharding.hash != HashFunction::Xxh3) {
    error(map_path, pos,
          std::string("bucket_map only applies to hash: xxh3 (hash is ") +
              to_string(sharding.hash) + ")");
    return;
  }
  bool ok = true;
  std::vector<const PendingRange*> in_range;
  for (const PendingRange& r : ranges) {
    const bool known = std::any_of(db.shards.begin(), db.shards.end(),
                                   [&](const Shard& s) { return s.name == r.shard; });
    if (!known) {
      error(child(map_path, r.shard), r.pos, "no shard named " + quoted(r.shard));
      ok = false;
      continue;
    }
    if (r.range.last >= buckets) {
      error(r.path, r.pos,
            "range " + std::to_string(r.range.first) + "-" + std::to_string(r.range.last) +
                " exceeds buckets (" + std::to_string(buckets) + "): the last bucket is " +
                std::to_string(buckets - 1));
      ok = false;
      continue;
    }
    in_range.push_back(&r);
  }
  std::stable_sort(in_range.begin(), in_range.end(),
                   [](const auto* a, const auto* b) { return a->range.first < b->range.first; });
  const PendingRange* furthest = nullptr;  // the range reaching furthest so far
  int next = 0;                            // first bucket not yet covered
  std::vector<std::string> gaps;
  for (const PendingRange* r : in_range) {
    if (furthest != nullptr && r->range.first <= furthest->range.last) {
      error(r->path, r->pos,
            "range " + std::to_string(r->range.first) + "-" + std::to_string(r->range.last) +
                " overlaps " + std::to_string(furthest->range.first) + "-" +
                std::to_string(furthest->range.last) + " of shard " + furthest->shard);
      ok = false;
    } else if (r->range.first > next) {
      gaps.push_back(std::to_string(next) + "-" + std::to_string(r->range.first - 1));
    }
    if (furthest == nullptr || r->range.last > furthest->range.last) furthest = r;
    next = std::max(next, r->range.last + 1);
  }
  if (next < buckets) gaps.push_back(std::to_string(next) + "-" + std::to_string(buckets - 1));
  if (!gaps.empty()) {
    std::string list;
    for (const std::string& gap : gaps)
      list += (list.empty() ? "" : ", ") + gap;
    error(map_path, pos, "buckets " + list + " are not assigned to any shard");
    ok = false;
  }
  if (!ok) return;
  for (const PendingRange* r : in_range)
    sharding.bucket_map[r->shard].push_back(r->range);
}

void Loader::read_root(const YAML::Node& root, Config& c) {
  if (!root.IsMap()) {
    error("", root,
          std::string("expected a map of settings at the top level, got ") + kind_of(root));
    return;
  }
  auto section = [this](auto read) {
    return [this, read](const YAML::Node& n, const std::string& p) {
      if (expect_map(n, p)) read(n, p);
    };
  };
  PoolSettings& pool = c.pool;
  Limits& limits = c.limits;
  Routing& routing = c.routing;
  const auto present = read_map(
      root, "",
      {
          {"listen", endpoint_field(c.listen)},
          {"admin_listen", endpoint_field(c.admin_listen)},
          {"workers", int_field(c.workers, 0, 1024)},
          {"log_level", enum_field(c.log_level, kLogLevels)},
          {"shutdown_timeout_s", int_field(c.shutdown_timeout_s, 0)},
          {"tls", [&](const YAML::Node& n, const std::string& p) { read_tls(n, p, c.tls); }},
          {"server_tls", enum_field(c.server_tls, kServerTlsModes)},
          {"server_tls_ca", string_field(c.server_tls_ca)},
          {"server_allow_insecure_auth", bool_field(c.server_allow_insecure_auth)},
          {"users", [&](const YAML::Node& n, const std::string& p) { read_users(n, p, c.users); }},
          {"pool", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"mode", enum_field(pool.mode, kPoolModes)},
                          {"pool_size", int_field(pool.pool_size, 1)},
                          {"max_overflow", int_field(pool.max_overflow, 0)},
                          {"overflow_idle_s", int_field(pool.overflow_idle_s, 0)},
                          {"checkout_timeout_ms", int_field(pool.checkout_timeout_ms, 1)},
                          {"idle_timeout_s", int_field(pool.idle_timeout_s, 1)},
                          {"recycle_s", int_field(pool.recycle_s, 1)},
                          {"pre_ping", bool_field(pool.pre_ping)},
                          {"pre_ping_idle_s", int_field(pool.pre_ping_idle_s, 0)},
                          {"max_client_connections", int_field(pool.max_client_connections, 1)},
                          {"max_prepared_statements", int_field(pool.max_prepared_statements, 1)},
                          {"pin_session_state", bool_field(pool.pin_session_state)},
                          {"query_timeout_ms", int_field(pool.query_timeout_ms, 0)},
                          {"idle_transaction_timeout_ms",
                           int_field(pool.idle_transaction_timeout_ms, 0)},
                      });
           })},
          {"limits", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"connections_per_ip", int_field(limits.connections_per_ip, 0)},
                          {"connect_rate_per_ip", int_field(limits.connect_rate_per_ip, 0)},
                          {"connect_burst_per_ip", int_field(limits.connect_burst_per_ip, 1)},
                          {"auth_timeout_ms", int_field(limits.auth_timeout_ms, 1)},
                          {"max_message_bytes",
                           [&](const YAML::Node& v, const std::string& vp) {
                             // The wire format's length field is a signed 32-bit integer.
                             read_int(v, vp, 1024, kIntMax, limits.max_message_bytes);
                           }},
                          {"message_timeout_ms", int_field(limits.message_timeout_ms, 0)},
                          {"message_memory_bytes",
                           [&](const YAML::Node& v, const std::string& vp) {
                             // A budget, not an allocation: no upper bound beyond int64.
                             read_int(v, vp, 65536, kInt64Max, limits.message_memory_bytes);
                           }},
                      });
           })},
          {"databases",
           [&](const YAML::Node& n, const std::string& p) { read_databases(n, p, c.databases); }},
          {"routing", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"read_write_split", bool_field(routing.read_write_split)},
                          {"reads", enum_field(routing.reads, kReadsTo)},
                          {"load_balance", enum_field(routing.load_balance, kBalances)},
                          {"max_replica_lag_ms", int_field(routing.max_replica_lag_ms, 0)},
                          {"read_your_writes", enum_field(routing.read_your_writes, kRyw)},
                          {"read_your_writes_window_ms",
                           int_field(routing.read_your_writes_window_ms, 0)},
                          {"write_functions",
                           [&](const YAML::Node& v, const std::string& vp) {
                             read_names(v, vp, routing.write_functions);
                           }},
                      });
           })},
          {"health", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"interval_ms", int_field(c.health.interval_ms, 1)},
                          {"timeout_ms", int_field(c.health.timeout_ms, 1)},
                          {"failures_before_down", int_field(c.health.failures_before_down, 1)},
                          {"user", string_field(c.health.user)},
                          {"password", string_field(c.health.password)},
                          {"dbname", string_field(c.health.dbname)},
                      });
           })},
          {"failover", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"mode", enum_field(c.failover.mode, kFailovers)},
                          {"promote_after_ms", int_field(c.failover.promote_after_ms, 0)},
                          {"hold_writes_ms", int_field(c.failover.hold_writes_ms, 0)},
                      });
           })},
          {"stats", section([&](const YAML::Node& n, const std::string& p) {
             read_map(n, p,
                      {
                          {"slow_query_ms", int_field(c.stats.slow_query_ms, 0)},
                          {"slow_query_samples", int_field(c.stats.slow_query_samples, 1)},
                          {"max_fingerprints", int_field(c.stats.max_fingerprints, 1)},
                          {"explain_slow", bool_field(c.stats.explain_slow)},
                          {"redact_literals", bool_field(c.stats.redact_literals)},
                      });
           })},
      });
  check_pool_connections(root, c.pool);
  if (!present.contains("users")) {
    error("users", root, "required: at least one user");
  }
  if (!present.contains("databases")) {
    error("databases", root, "required: at least one database");
  }
  // The health checks log in as the first user unless told otherwise.
  if (const YAML::Node health = root["health"]; health && health.IsMap() && health["user"] &&
                                                c.health.user.empty() && !failed("health.user")) {
    error("health.user", health["user"], "must not be empty (leave it out to use the first user)");
  }
  if (c.health.user.empty() && !c.users.empty()) {
    c.health.user = c.users.front().name;
    if (c.health.password.empty()) c.health.password = c.users.front().server_password;
  }
  if (keys_ == Keys::Working) refuse_what_does_not_work_yet(root, c);
  if (!c.server_tls_ca.empty() && c.server_tls != ServerTlsMode::VerifyCa &&
      c.server_tls != ServerTlsMode::VerifyFull) {
    error("server_tls_ca", root["server_tls_ca"] ? pos_of(root["server_tls_ca"]) : pos_of(root),
          "is read only with server_tls verify-ca or verify-full (server_tls " +
              std::string(to_string(c.server_tls)) + " checks no certificate)");
  }
  // Both are bound at start (SO_REUSEPORT, so the kernel would not refuse the second): the same
  // port on an overlapping address would split connections between the two doors. A host name
  // may resolve to either address.
  if (c.listen.port == c.admin_listen.port && may_overlap(c.listen.host, c.admin_listen.host)) {
    error("admin_listen", root["admin_listen"] ? pos_of(root["admin_listen"]) : pos_of(root),
          "conflicts with listen (" + c.listen.to_string() + "): use another port");
  }
}

// Summed in 64 bits: each may be up to INT_MAX.
void Loader::check_pool_connections(const YAML::Node& root, const PoolSettings& pool) {
  const std::int64_t most = std::int64_t{pool.pool_size} + pool.max_overflow;
  if (most <= kMaxPoolConnections || failed("pool.pool_size") || failed("pool.max_overflow")) {
    return;
  }
  // At the larger of the two, as written in the file.
  const YAML::Node section = root["pool"];
  const bool size_larger = pool.pool_size >= pool.max_overflow;
  const char* key = size_larger ? "pool_size" : "max_overflow";
  const YAML::Node at = section && section.IsMap() && section[key] ? section[key] : root;
  error(std::string("pool.") + key, at,
        "pool_size (" + std::to_string(pool.pool_size) + ") + max_overflow (" +
            std::to_string(pool.max_overflow) + ") is " + std::to_string(most) +
            ", more than the " + std::to_string(kMaxPoolConnections) +
            " server connections a pool may have; lower pool.pool_size or pool.max_overflow");
}

// Keys of DESIGN.md §3 that pgvalve reads and validates but does not carry out yet. Each is
// refused where it appears, so that a file never promises more than pgvalve does; the
// capability's issue removes its line here when the key starts to work. docs/configuration.md
// lists the same keys.
void Loader::refuse_what_does_not_work_yet(const YAML::Node& root, const Config& c) {
  // Per-shard session servers are not built: a session-mode client of a sharded database would
  // need a server on every shard it touches. Decided on the values as read (`Session`,
  // `${POOL_MODE}`), the error placed at the key.
  if (c.pool.mode != PoolMode::Session) return;
  const YAML::Node pool = root["pool"];
  const YAML::Node mode = pool && pool.IsMap() ? pool["mode"] : YAML::Node();
  for (const auto& db : c.databases) {
    if (db.shards.size() < 2) continue;
    error("pool.mode", mode ? mode : root,
          "not supported yet: session mode with a sharded database (" +
              child("databases", db.name) + " has " + std::to_string(db.shards.size()) +
              " shards); use transaction mode");
  }
}

// Where the parser starts each document; nothing else is kept.
class DocumentStarts final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The one document of the file. Not YAML::LoadAll: in yaml-cpp 0.7 (Debian 12) it loops for
// ever, allocating, on a document that starts with a token no node can start with (a lone ",":
// yaml-cpp issue #1040, fixed upstream in 0.8 by PR #1319), which would take a reload down with
// it. Here the parser is asked for at most two documents, and a second one that starts where
// the first did is that bug: a syntax error at that place.
std::optional<YAML::Node> one_document(const std::string& yaml, LoadResult& result) {
  DocumentStarts events;
  {
    std::istringstream in(yaml);
    YAML::Parser parser(in);
    if (parser.HandleNextDocument(events)) parser.HandleNextDocument(events);
  }
  if (events.starts.size() == 2) {
    const Pos pos = pos_of(events.starts[1]);
    const bool stuck = events.starts[1].pos == events.starts[0].pos;
    result.errors.push_back({"", pos.line, pos.column,
                             stuck ? "YAML syntax error: no value can start here"
                                   : "only one YAML document is allowed (found a second \"---\")"});
    return std::nullopt;
  }
  return YAML::Load(yaml);
}

LoadResult load(const std::string& yaml, const std::string& source_path,
                Keys keys = Keys::Working) {
  LoadResult result;
  try {
    std::optional<YAML::Node> document;
    try {
      document = one_document(yaml, result);
    } catch (const YAML::ParserException& e) {
      const Pos pos = pos_of(e.mark);
      result.errors.push_back({"", pos.line, pos.column, "YAML syntax error: " + e.msg});
      return result;
    }
    if (!document) return result;
    const std::vector<YAML::Node> documents{*document};
    if (documents[0].IsNull()) {
      result.errors.push_back(
          {"", 1, 1, "the configuration is empty: users and databases are required"});
      return result;
    }
    auto config = std::make_shared<Config>();
    config->source_path = source_path;
    Loader loader(result.errors, keys);
    loader.read_root(documents[0], *config);
    if (result.errors.empty()) {
      result.config = std::move(config);
    } else {
      // File order reads best; errors without a position go last.
      std::stable_sort(result.errors.begin(), result.errors.end(),
                       [](const ConfigError& a, const ConfigError& b) {
                         const auto key = [](const ConfigError& e) {
                           return std::pair(e.line == 0 ? std::numeric_limits<int>::max() : e.line,
                                            e.column);
                         };
                         return key(a) < key(b);
                       });
    }
  } catch (const std::exception& e) {
    result.config.reset();
    result.errors.push_back({"", 0, 0, std::string("cannot load the configuration: ") + e.what()});
  } catch (...) {
    result.config.reset();
    result.errors.push_back({"", 0, 0, "cannot load the configuration: unknown error"});
  }
  return result;
}

}  // namespace

LoadResult load_config_file(const std::string& path) {
  const auto refused = [](std::string why) {
    LoadResult result;
    result.errors.push_back({"", 0, 0, std::move(why)});
    return result;
  };
  try {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      return refused("is a directory, not a configuration file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) return refused("cannot open the file: " + std::string(std::strerror(errno)));
    // Read whole before it is parsed: a file much larger than any configuration would hold the
    // thread that reloads it, and the parser's memory, for as long as it is (one byte past the
    // limit is enough to refuse it).
    std::string text(kMaxConfigFileBytes + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (in.bad()) return refused("cannot read the file");
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxConfigFileBytes) {
      return refused("the file is larger than " + std::to_string(kMaxConfigFileBytes >> 20) +
                     " MiB; a configuration is far smaller (is this the right file?)");
    }
    return load(text, path);
  } catch (...) {
    LoadResult result;
    result.errors.push_back({"", 0, 0, "cannot read the file"});
    return result;
  }
}

LoadResult load_config_string(const std::string& yaml, const std::string& source_name, Keys keys) {
  (void)source_name;  // errors carry no file name; the caller passes it to ConfigError::to_string
  return load(yaml, "", keys);
}

}  // namespace pgvalve::config
