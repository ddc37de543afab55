#include "routing/insert_split.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <utility>

#include "routing/sql_lexer.h"

namespace pgvalve::routing {

namespace {

using Range = std::pair<std::size_t, std::size_t>;  // [begin, end) of the statement's bytes

// The rows of the top-level VALUES list: each `( ... )` with its parentheses. Empty when the
// statement is not INSERT ... VALUES (...), (...) as the lexer sees it.
std::vector<Range> value_rows(std::string_view sql) {
  std::vector<Range> rows;
  SqlLexer lexer(sql);
  Token t;
  int depth = 0;
  bool in_values = false;
  while (lexer.next(t)) {
    if (!in_values) {
      if (t.is_punct('(')) ++depth;
      if (t.is_punct(')')) --depth;
      if (depth == 0 && t.is_word("values")) in_values = true;
      continue;
    }
    // A row, then a comma and another row, or the end of the list.
    if (!t.is_punct('(')) return {};
    const std::size_t begin = t.offset;
    int inner = 1;
    while (inner > 0 && lexer.next(t)) {
      if (t.is_punct('(')) ++inner;
      if (t.is_punct(')')) --inner;
    }
    if (inner != 0) return {};
    rows.emplace_back(begin, t.end());
    SqlLexer ahead = lexer;
    Token comma;
    if (!ahead.next(comma) || !comma.is_punct(',')) break;
    lexer = ahead;
  }
  return rows;
}

// Appends sql[range] with each $n renumbered by `numbers` (the client's number -> the part's,
// assigned in order of first appearance); false when a $n is not a parameter number.
bool append_renumbered(std::string_view sql, Range range, std::map<int, int>& numbers,
                       InsertPart& part) {
  SqlLexer lexer(sql.substr(0, range.second), range.first);
  std::size_t copied = range.first;
  Token t;
  while (lexer.next(t)) {
    if (t.kind != TokenKind::Param) continue;
    int number = 0;
    const auto [p, ec] = std::from_chars(t.text.data() + 1, t.text.data() + t.text.size(), number);
    if (ec != std::errc() || p != t.text.data() + t.text.size() || number < 1 || number > 65535) {
      return false;
    }
    auto [it, fresh] = numbers.emplace(number, static_cast<int>(numbers.size()) + 1);
    if (fresh) part.params.push_back(static_cast<std::uint16_t>(number));
    part.sql.append(sql.substr(copied, t.offset - copied));
    part.sql += '$';
    part.sql += std::to_string(it->second);
    copied = t.end();
  }
  part.sql.append(sql.substr(copied, range.second - copied));
  return true;
}

}  // namespace

InsertSplit split_insert(std::string_view sql, const ShardPlan& plan, const ShardingPolicy& policy,
                         const ParamSource* params) {
  InsertSplit out;
  const std::vector<std::uint16_t> shards = insert_row_shards(sql, plan, policy, params);
  const std::vector<Range> rows = value_rows(sql);
  if (shards.empty() || rows.size() != shards.size()) {
    out.refusal = "pgvalve cannot tell this INSERT's rows apart to send each to its shard";
    return out;
  }
  std::vector<std::uint16_t> order(shards);
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  const Range prefix{0, rows.front().first};
  const Range suffix{rows.back().second, sql.size()};
  for (std::uint16_t shard : order) {
    InsertPart part;
    part.shard = shard;
    std::map<int, int> numbers;
    bool ok = append_renumbered(sql, prefix, numbers, part);
    bool first = true;
    for (std::size_t i = 0; i < rows.size() && ok; ++i) {
      if (shards[i] != shard) continue;
      if (!first) part.sql += ", ";
      first = false;
      ok = append_renumbered(sql, rows[i], numbers, part);
    }
    ok = ok && append_renumbered(sql, suffix, numbers, part);
    if (!ok) {
      out.refusal = "a parameter of this INSERT is not a $n pgvalve can renumber";
      return out;
    }
    out.parts.push_back(std::move(part));
  }
  out.ok = true;
  return out;
}

}  // namespace pgvalve::routing
