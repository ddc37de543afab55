#include "stats/plan_advice.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>

namespace pgvalve::stats {

namespace {

using nlohmann::json;

std::string megabytes(double bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.0f MB", bytes / (1024.0 * 1024.0));
  return buffer;
}

// One name of a column as EXPLAIN prints it (`note`, `"Note"`), from `text[at]`; its end, or
// npos when none starts there.
std::size_t identifier_end(std::string_view text, std::size_t at) {
  const auto letter = [](char c) {
    return std::isalpha(static_cast<unsigned char>(c)) || c == '_' ||
           static_cast<unsigned char>(c) >= 0x80;
  };
  if (at >= text.size()) return std::string_view::npos;
  if (text[at] == '"') {
    for (std::size_t i = at + 1; i < text.size(); ++i) {
      if (text[i] != '"') continue;
      if (i + 1 < text.size() && text[i + 1] == '"') {
        ++i;  // "" inside a quoted name
        continue;
      }
      return i + 1;
    }
    return std::string_view::npos;
  }
  if (!letter(text[at])) return std::string_view::npos;
  std::size_t i = at + 1;
  while (i < text.size() &&
         (letter(text[i]) || text[i] == '$' || std::isdigit(static_cast<unsigned char>(text[i])))) {
    ++i;
  }
  return i;
}

// The end of a type's name begun before `at` (after "::"): the words PostgreSQL prints for
// "character varying", "double precision", "timestamp with time zone", ... and a "[]".
std::size_t type_end(std::string_view text, std::size_t at) {
  static constexpr std::string_view kWords[] = {" varying", " precision", " with", " without",
                                                " time",    " zone",      "[]"};
  for (bool more = true; more;) {
    more = false;
    for (std::string_view word : kWords) {
      const std::size_t end = at + word.size();
      if (text.substr(at, word.size()) == word &&
          (word == "[]" || identifier_end(text, end) == std::string_view::npos)) {
        at = end;
        more = true;
        break;
      }
    }
  }
  return at;
}

// Column names a filter compares: names directly before a comparison operator
// ("(device_id = 7)", "((ts > '...') AND (value < 3))", "(name ~~ 'a%'::text)"), in the order
// an index on them serves the filter: the columns compared for equality (`=`, `= ANY`,
// `IS NULL`) first, then the ranges and patterns. PostgreSQL prints the filter in its own
// order, and an index led by a range column would not be used for the equality after it.
// String constants ('...', '' inside) and numbers are skipped whole: their words are a client's
// values ('hello LEAKWORD = 1'), not columns.
std::vector<std::string> filtered_columns(std::string_view filter) {
  std::vector<std::string> equal;
  std::vector<std::string> other;
  static constexpr std::string_view kOps[] = {"=", "<", ">", "~~", "<>", "!=", " IS ", " IN "};
  for (std::size_t i = 0; i < filter.size();) {
    const char c = filter[i];
    if (c == '\'') {
      // To the closing quote; PostgreSQL doubles a quote inside (also in E'...').
      for (++i; i < filter.size(); ++i) {
        if (filter[i] != '\'') continue;
        if (i + 1 < filter.size() && filter[i + 1] == '\'') {
          ++i;
          continue;
        }
        break;
      }
      ++i;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      while (i < filter.size() && (std::isalnum(static_cast<unsigned char>(filter[i])) ||
                                   filter[i] == '.' || filter[i] == '_')) {
        ++i;
      }
      continue;
    }
    // A name, maybe qualified: its last part is the column's.
    std::size_t last = i;
    std::size_t j = identifier_end(filter, i);
    while (j != std::string_view::npos && j < filter.size() && filter[j] == '.') {
      last = j + 1;
      j = identifier_end(filter, last);
    }
    if (j == std::string_view::npos) {
      ++i;
      continue;
    }
    if (i >= 2 && filter.substr(i - 2, 2) == "::") {
      i = type_end(filter, j);  // a cast's type ("'x'::text = note"), not a column
      continue;
    }
    std::string name(filter.substr(last, j - last));
    std::size_t k = j;
    // A column cast to the type compared: "((name)::text = 'x'::text)" for a varchar.
    if (filter.substr(k, 3) == ")::" && identifier_end(filter, k + 3) != std::string_view::npos) {
      k = type_end(filter, identifier_end(filter, k + 3));
    }
    while (k < filter.size() && filter[k] == ' ')
      ++k;
    std::string_view compared;
    for (std::string_view op : kOps) {
      const std::string_view at = filter.substr(k > 0 && op.front() == ' ' ? k - 1 : k);
      if (at.substr(0, op.size()) == op) compared = op;
    }
    if (!compared.empty() && !name.empty()) {
      const bool equality = compared == "=" || compared == " IS " || compared == " IN ";
      const bool known_equal = std::find(equal.begin(), equal.end(), name) != equal.end();
      const auto in_other = std::find(other.begin(), other.end(), name);
      if (equality && !known_equal) {
        if (in_other != other.end()) other.erase(in_other);
        equal.push_back(name);
      } else if (!equality && !known_equal && in_other == other.end()) {
        other.push_back(name);
      }
    }
    i = j;
  }
  equal.insert(equal.end(), other.begin(), other.end());
  return equal;
}

// A sort key that is a column, maybe qualified, with the order EXPLAIN adds after it
// ("readings.value DESC", "t.a NULLS FIRST"), not an expression ("(note || 'x'::text)").
bool is_sort_column(std::string_view key) {
  std::size_t i = 0;
  for (;;) {
    i = identifier_end(key, i);
    if (i == std::string_view::npos) return false;
    if (i >= key.size() || key[i] != '.') break;
    ++i;
  }
  std::string_view rest = key.substr(i);
  for (std::string_view suffix : {" DESC", " NULLS FIRST", " NULLS LAST"}) {
    if (rest.substr(0, suffix.size()) == suffix) rest.remove_prefix(suffix.size());
  }
  return rest.empty();
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// Nodes that pass a Limit's row count on to the sort below them (PostgreSQL's
// ExecSetTupleBound): such a sort keeps only that many rows (a top-N heapsort).
bool passes_bound(std::string_view type) {
  return type == "Gather" || type == "Gather Merge" || type == "Append" || type == "Merge Append" ||
         type == "Result" || type == "Subquery Scan";
}

// `bound`: the rows a Limit above wants of this node, when it tells it (negative: none); the
// plan has no OFFSET, so a bound under a large one is too low.
void walk(const json& node, const PlanSettings& settings, double bound,
          std::vector<std::string>& advice) {
  if (!node.is_object()) return;
  const std::string type = node.value("Node Type", "");
  const double rows = node.value("Plan Rows", 0.0);
  const double width = node.value("Plan Width", 0.0);
  const double cost = node.value("Total Cost", 0.0);
  if (type == "Seq Scan" && node.contains("Filter") && cost >= settings.large_scan_cost) {
    const std::string table = node.value("Relation Name", "?");
    const auto columns = filtered_columns(node.value("Filter", ""));
    std::string a = "sequential scan of " + table + " with a filter (estimated cost " +
                    std::to_string(static_cast<long long>(cost)) + ", " +
                    std::to_string(static_cast<long long>(rows)) + " rows kept)";
    if (!columns.empty()) {
      a += ": an index on " + table + " (" + joined(columns) +
           ") would let PostgreSQL read only the matching rows";
    } else {
      a += ": an index on the filtered columns would avoid reading the whole table";
    }
    advice.push_back(std::move(a));
  }
  const double bytes = rows * width;
  const double sorted_bytes = (bound >= 0 ? std::min(rows, bound) : rows) * width;
  if (type == "Sort" && sorted_bytes > static_cast<double>(settings.work_mem_bytes)) {
    // The keys are named only when each is a column: an expression may hold the client's
    // constants (ORDER BY note || 'secret'), which the advice, kept for the shape and shown
    // beside every later sample of it, must not.
    std::string index;
    if (const auto keys = node.find("Sort Key");
        keys != node.end() && keys->is_array() && !keys->empty()) {
      std::string named;
      for (const auto& k : *keys) {
        if (!k.is_string() || !is_sort_column(k.get_ref<const std::string&>())) {
          named.clear();
          break;
        }
        if (!named.empty()) named += ", ";
        named += k.get_ref<const std::string&>();
      }
      index = named.empty() ? " or add an index on what it sorts by"
                            : " or add an index on (" + named + ")";
    }
    advice.push_back("sort of about " + megabytes(sorted_bytes) + ", more than work_mem (" +
                     megabytes(static_cast<double>(settings.work_mem_bytes)) +
                     "): it spills to disk; raise work_mem for this statement" + index);
  }
  if (type == "Hash" &&
      bytes > static_cast<double>(settings.work_mem_bytes) * settings.hash_mem_multiplier) {
    advice.push_back("hash table of about " + megabytes(bytes) +
                     ", more than work_mem x hash_mem_multiplier: the join spills to disk; "
                     "raise work_mem or filter the hashed side first");
  }
  const double child_bound = type == "Limit" ? rows : passes_bound(type) ? bound : -1;
  if (node.contains("Plans") && node["Plans"].is_array()) {
    for (const auto& child : node["Plans"])
      walk(child, settings, child_bound, advice);
  }
}

}  // namespace

std::string plan_advice(std::string_view explain_json, const PlanSettings& settings) {
  const json doc = json::parse(explain_json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_array() || doc.empty() || !doc[0].is_object() ||
      !doc[0].contains("Plan")) {
    return "";
  }
  std::vector<std::string> advice;
  walk(doc[0]["Plan"], settings, -1, advice);
  std::string out;
  for (const auto& a : advice) {
    if (!out.empty()) out += "; ";
    out += a;
  }
  return out;
}

std::string refusal_reason(std::string_view step, std::string_view sqlstate,
                           std::string_view message, bool redact) {
  std::string out = "the server refused ";
  out += step;
  out += " with SQLSTATE ";
  out += sqlstate;
  if (redact) {
    out +=
        " (its message may quote the statement's constants: logged only with "
        "stats.redact_literals: false)";
    return out;
  }
  // One line: what follows would be the statement again.
  out += ": ";
  out += message.substr(0, message.find('\n'));
  return out;
}

std::uint64_t parse_memory_setting(std::string_view text) {
  std::uint64_t n = 0;
  std::size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9')
    n = n * 10 + static_cast<std::uint64_t>(text[i++] - '0');
  if (i == 0) return 0;
  const std::string_view unit = text.substr(i);
  if (unit == "kB") return n << 10;
  if (unit == "MB") return n << 20;
  if (unit == "GB") return n << 30;
  if (unit == "TB") return n << 40;
  if (unit.empty() || unit == "B") return n;
  return 0;
}

}  // namespace pgvalve::stats
