#include "routing/copy_rows.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <utility>

#include "protocol/binary_values.h"
#include "routing/client_encoding.h"
#include "routing/parse_tree.h"
#include "routing/shard_map.h"

namespace pgvalve::routing {

namespace {

constexpr int kAll = -1;      // every shard: the header, a reference table's rows
constexpr int kNowhere = -2;  // the end-of-data line
constexpr int kFailed = -3;

constexpr std::string_view kNameShard = "name the shard with /* pgvalve: shard=<name> */";
constexpr std::string_view kBareCr =
    "carriage return without a newline after it; pgvalve reads rows ended by \\n or \\r\\n "
    "(write a carriage return in a value as \\r in text format, or quoted in csv)";

// ---- plan_copy ---------------------------------------------------------------------------------

std::string_view string_field(const Json& node, const char* name) {
  const Json* f = field(node, name);
  return f != nullptr && f->is_string() ? std::string_view(f->get_ref<const std::string&>())
                                        : std::string_view{};
}

bool flag(const Json& node, const char* name) {
  const Json* f = field(node, name);
  return f != nullptr && f->is_boolean() && f->get<bool>();
}

// An option's argument as PostgreSQL's defGetString() reads it; nullopt without one. The JSON
// leaves out zero and false values ({"Integer":{}} is 0).
std::optional<std::string> option_text(const Json& def) {
  const Json* arg = field(def, "arg");
  if (arg == nullptr) return std::nullopt;
  if (as(*arg, "String") != nullptr) return std::string(sval(*arg));
  if (const Json* i = as(*arg, "Integer")) {
    const Json* v = field(*i, "ival");
    return std::to_string(v != nullptr && v->is_number_integer() ? v->get<long long>() : 0);
  }
  if (const Json* f = as(*arg, "Float")) return std::string(string_field(*f, "fval"));
  if (const Json* b = as(*arg, "Boolean")) return flag(*b, "boolval") ? "true" : "false";
  return std::string();
}

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

enum class Header : std::uint8_t { False, True, Match, Invalid };

// PostgreSQL 15's defGetCopyHeaderChoice().
Header header_choice(const Json& def) {
  const Json* arg = field(def, "arg");
  if (arg == nullptr) return Header::True;
  if (const Json* i = as(*arg, "Integer")) {
    const Json* v = field(*i, "ival");
    const long long n = v != nullptr && v->is_number_integer() ? v->get<long long>() : 0;
    return n == 0 ? Header::False : n == 1 ? Header::True : Header::Invalid;
  }
  const std::string text = option_text(def).value_or("");
  if (iequals(text, "true") || iequals(text, "on")) return Header::True;
  if (iequals(text, "false") || iequals(text, "off")) return Header::False;
  if (iequals(text, "match")) return Header::Match;
  return Header::Invalid;
}

// FORCE_NULL / FORCE_NOT_NULL: whether their column list (or *) takes in `key`.
bool names_column(const Json& def, std::string_view key) {
  const Json* arg = field(def, "arg");
  if (arg == nullptr) return false;
  if (as(*arg, "A_Star") != nullptr) return true;
  const Json* list = as(*arg, "List");
  const Json* items = list != nullptr ? field(*list, "items") : nullptr;
  if (items == nullptr || !items->is_array()) return false;
  return std::any_of(items->begin(), items->end(), [&](const Json& i) { return sval(i) == key; });
}

bool listed(const std::vector<std::string>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// As routing/shard_plan.cpp sorts tables: system catalogs are the same on every shard.
bool catalog(std::string_view schema, std::string_view name) {
  if (schema == "pg_catalog" || schema == "information_schema") return true;
  return schema.empty() && name.starts_with("pg_");
}

// ---- CopyRows ----------------------------------------------------------------------------------

// The end of the text-format field starting at `i` (its delimiter, or the end of `s`), as
// PostgreSQL's CopyReadAttributesText reads it; the field's value, de-escaped, into `out`.
// `raw_end`: where the bytes compared with the NULL text end.
std::size_t text_field(std::string_view s, std::size_t i, char delimiter, std::string* out,
                       std::size_t* raw_end = nullptr) {
  const auto octal = [](char c) { return c >= '0' && c <= '7'; };
  const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  const auto hex_value = [](char c) {
    return c <= '9' ? c - '0' : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
  };
  while (i < s.size()) {
    char c = s[i];
    if (c == delimiter) break;
    ++i;
    if (c == '\\') {
      if (i == s.size()) {  // a backslash ending the data stands for nothing
        if (raw_end != nullptr) *raw_end = i - 1;
        return i;
      }
      c = s[i++];
      if (octal(c)) {
        int v = c - '0';
        for (int n = 0; n < 2 && i < s.size() && octal(s[i]); ++n)
          v = v * 8 + (s[i++] - '0');
        c = static_cast<char>(v & 0xff);
      } else if (c == 'x' && i < s.size() && hex(s[i])) {
        int v = hex_value(s[i++]);
        if (i < s.size() && hex(s[i])) v = v * 16 + hex_value(s[i++]);
        c = static_cast<char>(v);
      } else if (const std::size_t k = std::string_view("bfnrtv").find(c);
                 k != std::string_view::npos) {
        c = "\b\f\n\r\t\v"[k];
      }
    }
    if (out != nullptr) out->push_back(c);
  }
  if (raw_end != nullptr) *raw_end = i;
  return i;
}

struct CsvField {
  std::size_t end = 0;  // the delimiter after the field, or the end of the row
  bool quoted = false;  // a quoted field (or part) is never NULL
  bool terminated = true;
};

// A CSV field as PostgreSQL's CopyReadAttributesCSV reads it: a quote anywhere opens a quoted
// part; inside, the escape character before a quote or itself makes that a literal.
CsvField csv_field(std::string_view s, std::size_t i, const CopyPlan& plan, std::string* out) {
  CsvField f;
  for (;;) {
    for (;;) {
      if (i == s.size() || s[i] == plan.delimiter) {
        f.end = i;
        return f;
      }
      const char c = s[i++];
      if (c == plan.quote) {
        f.quoted = true;
        break;
      }
      if (out != nullptr) out->push_back(c);
    }
    for (;;) {
      if (i == s.size()) {
        f.end = i;
        f.terminated = false;
        return f;
      }
      const char c = s[i++];
      if (c == plan.escape && i < s.size() && (s[i] == plan.escape || s[i] == plan.quote)) {
        if (out != nullptr) out->push_back(s[i]);
        ++i;
        continue;
      }
      if (c == plan.quote) break;
      if (out != nullptr) out->push_back(c);
    }
  }
}

// The value as the error quotes it: at most 64 bytes, not cutting a UTF-8 character.
std::string shown(std::string_view value) {
  constexpr std::size_t kMax = 64;
  if (value.size() <= kMax) return std::string(value);
  std::size_t n = kMax;
  while (n > 0 && (static_cast<unsigned char>(value[n]) & 0xC0) == 0x80)
    --n;
  return std::string(value.substr(0, n)) + "...";
}

void append_to(std::vector<std::string>& out, int to, std::string_view bytes) {
  if (to == kAll) {
    for (std::string& o : out)
      o.append(bytes);
  } else if (to >= 0) {
    out[static_cast<std::size_t>(to)].append(bytes);
  }
}

}  // namespace

CopyPlan plan_copy(std::string_view sql, const ShardingPolicy& policy) {
  CopyPlan plan;
  const auto refused = [&plan](std::string why) {
    plan.refusal = std::move(why);
    return plan;
  };
  const std::optional<Json> tree = parse_tree(sql);
  const Json* stmts = tree ? field(*tree, "stmts") : nullptr;
  if (stmts == nullptr || !stmts->is_array() || stmts->empty()) {
    return refused("this COPY statement does not parse, so the table it fills is unknown");
  }
  if (stmts->size() > 1) {
    return refused("a COPY among several statements in one query; send the COPY on its own");
  }
  const Json* stmt = field(stmts->front(), "stmt");
  const Json* copy = stmt != nullptr ? as(*stmt, "CopyStmt") : nullptr;
  if (copy == nullptr) return refused("this statement is not a COPY");
  const Json* relation = field(*copy, "relation");
  if (!flag(*copy, "is_from") || relation == nullptr) {
    return refused("only COPY ... FROM STDIN is routed row by row across shards; " +
                   std::string(kNameShard));
  }

  const std::string_view key = policy.key;
  const std::string_view schema = string_field(*relation, "schemaname");
  const std::string table(string_field(*relation, "relname"));
  const bool reference = catalog(schema, table) || listed(policy.reference_tables, table);
  if (!reference && !listed(policy.tables, table)) {
    return refused("table \"" + table +
                   "\" is in neither sharding.tables nor sharding.reference_tables, so pgvalve "
                   "cannot tell which shards its rows belong on; list it in one of them");
  }
  // One shard is no answer for a reference table, whose rows every shard holds.
  const std::string or_name_shard = reference ? "" : ", or " + std::string(kNameShard);
  if (field(*copy, "filename") != nullptr || flag(*copy, "is_program")) {
    return refused(
        "COPY ... FROM a file or a program is read by the server itself, so pgvalve cannot route "
        "its rows; send them with COPY ... FROM STDIN" +
        or_name_shard);
  }
  const Json* columns = field(*copy, "attlist");
  if (columns != nullptr && columns->is_array()) plan.columns = static_cast<int>(columns->size());
  if (!reference) {
    if (columns == nullptr || !columns->is_array() || columns->empty()) {
      return refused("each row of a COPY into sharded table \"" + table +
                     "\" goes to the shard of its " + std::string(key) +
                     ", so pgvalve must know which field that is; list the columns, with " +
                     std::string(key) + " among them: COPY " + table + " (..., " +
                     std::string(key) + ", ...) FROM STDIN");
    }
    for (std::size_t i = 0; i < columns->size(); ++i) {
      if (sval((*columns)[i]) == key) {
        plan.key_column = static_cast<int>(i);
        break;
      }
    }
    if (plan.key_column < 0) {
      return refused("the rows of this COPY into sharded table \"" + table + "\" have no " +
                     std::string(key) + ", so no shard holds them; add " + std::string(key) +
                     " to the column list");
    }
  }
  if (field(*copy, "whereClause") != nullptr) {
    // A row the WHERE clause would drop may have no valid key: PostgreSQL skips it, pgvalve
    // could not route it.
    return refused(
        "COPY ... FROM STDIN WHERE is not routed row by row; filter the rows before "
        "sending them" +
        or_name_shard);
  }

  std::optional<std::string> format, delimiter, null_text, quote, escape;
  const Json* options = field(*copy, "options");
  if (options != nullptr && options->is_array()) {
    for (const Json& option : *options) {
      const Json* def = as(option, "DefElem");
      if (def == nullptr) continue;
      const std::string_view name = string_field(*def, "defname");
      if (name == "format") {
        format = option_text(*def);
      } else if (name == "delimiter") {
        delimiter = option_text(*def);
      } else if (name == "null") {
        null_text = option_text(*def);
      } else if (name == "quote") {
        quote = option_text(*def);
      } else if (name == "escape") {
        escape = option_text(*def);
      } else if (name == "header") {
        const Header h = header_choice(*def);
        if (h == Header::Invalid) {
          return refused("COPY's HEADER takes true, false or match");
        }
        plan.header = h != Header::False;
      } else if (name == "encoding") {
        // Where a character may hold ASCII bytes (SJIS, BIG5, ...), a byte that looks like a
        // backslash, quote or newline can be half of one, and pgvalve reads bytes. Every other
        // encoding keeps ASCII bytes for ASCII, which is all the row cutting relies on; only a
        // text key with non-ASCII characters is hashed as bytes of that encoding.
        if (ascii_in_characters(option_text(*def).value_or("")) != AsciiInCharacters::None) {
          return refused("COPY data in encoding \"" + option_text(*def).value_or("") +
                         "\" is not cut into rows: its characters may hold bytes that look like "
                         "delimiters; send the data as UTF8" +
                         or_name_shard);
        }
        plan.encoding_given = true;
      } else if (!reference && (name == "force_null" || name == "force_not_null") &&
                 names_column(*def, key)) {
        // They change which key fields are NULL, and CopyPlan cannot say so.
        const std::string option = name == "force_null" ? "FORCE_NULL" : "FORCE_NOT_NULL";
        return refused("each row is routed by its " + std::string(key) + ", which " + option +
                       " on " + std::string(key) + " would change; leave " + std::string(key) +
                       " out of " + option);
      } else if (!reference && name == "default") {
        // A field matching DEFAULT takes the column default, which pgvalve cannot see.
        return refused("the rows of a COPY with the DEFAULT option cannot be routed: their " +
                       std::string(key) +
                       " may be the column default; give every row its value, or " +
                       std::string(kNameShard));
      }
      // Others (FREEZE, FORCE_QUOTE, ON_ERROR, ...) do not change where a row ends or what its
      // key is; PostgreSQL judges them.
    }
  }
  const std::string format_name = format.value_or("text");
  if (format_name == "binary") {
    if (!reference && policy.map.key_type() == KeyType::Auto) {
      return refused("a binary " + std::string(key) +
                     " field does not say its type, so under sharding.key_type: auto pgvalve "
                     "cannot hash it as the column's type; set sharding.key_type to the type of " +
                     std::string(key) + " (bigint, text or uuid), or send the COPY in text or csv" +
                     or_name_shard);
    }
    // DELIMITER, NULL, HEADER and the like are PostgreSQL's to refuse in binary mode.
    plan.format = CopyPlan::Format::Binary;
    plan.ok = true;
    return plan;
  }
  if (format_name != "text" && format_name != "csv") {
    return refused("COPY format \"" + format_name + "\" is not text, csv or binary");
  }
  const bool csv = format_name == "csv";
  plan.format = csv ? CopyPlan::Format::Csv : CopyPlan::Format::Text;
  const auto one_byte = [](const std::optional<std::string>& v) { return !v || v->size() == 1; };
  if (!one_byte(delimiter) || (csv && (!one_byte(quote) || !one_byte(escape)))) {
    return refused("COPY's DELIMITER, QUOTE and ESCAPE must each be a single one-byte character");
  }
  plan.delimiter = delimiter ? (*delimiter)[0] : csv ? ',' : '\t';
  plan.null_text = null_text ? *null_text : csv ? "" : "\\N";
  if (csv) {
    plan.quote = quote ? (*quote)[0] : '"';
    plan.escape = escape ? (*escape)[0] : plan.quote;
  }
  plan.ok = true;
  return plan;
}

CopyRows::CopyRows(const CopyPlan& plan, const ShardingPolicy& policy, std::size_t max_row_bytes)
    : plan_(plan), policy_(&policy), max_row_bytes_(max_row_bytes) {
  const auto stop_at = [this](char c) { special_[static_cast<unsigned char>(c)] = true; };
  if (plan_.format == CopyPlan::Format::Binary) return;
  stop_at('\n');
  stop_at('\r');
  if (plan_.format == CopyPlan::Format::Text) {
    stop_at('\\');
  } else {
    stop_at(plan_.quote);
    stop_at(plan_.escape);
  }
}

bool CopyRows::fail(std::string_view sqlstate, std::uint64_t row, std::string_view what) {
  sqlstate_ = sqlstate;
  error_ = "pgvalve: COPY row " + std::to_string(row) + ": " + std::string(what);
  return false;
}

CopyRows::Found CopyRows::row_found(std::size_t trim, bool marker) {
  trim_ = trim;
  marker_ = marker;
  scan_ = Scan{};
  // PostgreSQL takes the first line's ending for every line and fails the COPY on another; each
  // shard sees only some of the lines, so pgvalve checks.
  const std::size_t ending = marker ? trim - 2 : trim;
  if (eol_ == 0) eol_ = ending;
  if (ending != eol_) {
    fail("22P04", line_ + 1,
         ending == 1 ? "line ending \\n after lines ending \\r\\n; end every line the same way"
                     : "line ending \\r\\n after lines ending \\n; end every line the same way");
    return Found::Error;
  }
  return Found::Row;
}

// PostgreSQL's CopyReadLineText, with line endings \n or \r\n: a bare \r would end the line only
// when the first line ends that way, and is an error otherwise; pgvalve refuses it rather than
// send the whole input to one shard as a single row.
CopyRows::Found CopyRows::scan(std::string_view data, std::size_t& pos, std::size_t limit) {
  Scan& s = scan_;
  const auto bare_cr = [this] {
    fail("22P04", line_ + 1, kBareCr);
    return Found::Error;
  };
  if (plan_.format == CopyPlan::Format::Text) {
    while (pos < limit) {
      if (!s.backslash && !s.dot && !s.cr) {
        while (pos < limit && !special_[static_cast<unsigned char>(data[pos])])
          ++pos;
        if (pos == limit) break;
      }
      const char c = data[pos++];
      if (s.cr) {
        if (c != '\n') return bare_cr();
        return row_found(s.dot ? 4 : 2, s.dot);
      }
      if (s.backslash) {
        s.backslash = false;
        s.dot = c == '.';
      } else if (s.dot) {
        if (c == '\n') return row_found(3, true);
        if (c != '\r') {
          fail("22P04", line_ + 1, "end-of-copy marker corrupt: \\. must end its line");
          return Found::Error;
        }
        s.cr = true;
      } else if (c == '\\') {
        s.backslash = true;
      } else if (c == '\n') {
        return row_found(1, false);
      } else if (c == '\r') {
        s.cr = true;
      }
    }
    return Found::More;
  }
  // When the escape is the quote, a doubled quote toggles twice: only the toggling matters.
  const bool escapes = plan_.escape != plan_.quote;
  while (pos < limit) {
    if (!s.cr && !s.last_was_esc) {
      while (pos < limit && !special_[static_cast<unsigned char>(data[pos])])
        ++pos;
      if (pos == limit) break;
    }
    const char c = data[pos++];
    if (s.cr) {
      if (c != '\n') return bare_cr();
      return row_found(2, false);
    }
    const bool escape = escapes && c == plan_.escape;
    if (s.in_quote && escape) s.last_was_esc = !s.last_was_esc;
    if (c == plan_.quote && !s.last_was_esc) s.in_quote = !s.in_quote;
    if (!escape) s.last_was_esc = false;
    if (!s.in_quote) {
      if (c == '\n') return row_found(1, false);
      if (c == '\r') s.cr = true;
    }
  }
  return Found::More;
}

int CopyRows::destination(std::string_view row) {
  if (plan_.format == CopyPlan::Format::Binary) return binary_destination();
  ++line_;
  const std::string_view fields = row.substr(0, row.size() - trim_);
  if (marker_ || (plan_.format == CopyPlan::Format::Csv && trim_ > 0 && fields == "\\.")) {
    ended_ = true;
    // Text format ends the data at \. after a row's fields too; that row is the last one.
    if (!marker_ || fields.empty()) return kNowhere;
  }
  if (plan_.header && !header_done_) {
    header_done_ = true;
    return kAll;
  }
  const int shard = plan_.key_column < 0 ? kAll : key_shard(fields);
  if (shard != kFailed) ++rows_;
  return shard;
}

int CopyRows::key_shard(std::string_view fields) {
  const std::string& key = policy_->key;
  const auto column = static_cast<std::size_t>(plan_.key_column);
  const auto missing = [&](std::size_t count) {
    fail("22P04", line_,
         "missing data for " + key + ": the row has " + std::to_string(count) + " field" +
             (count == 1 ? "" : "s") + ", and " + key + " is column " + std::to_string(column + 1) +
             " of the COPY's column list");
    return kFailed;
  };
  key_.clear();
  bool null = false;
  std::size_t i = 0;
  if (plan_.format == CopyPlan::Format::Text) {
    for (std::size_t f = 0; f < column; ++f, ++i) {
      i = text_field(fields, i, plan_.delimiter, nullptr);
      if (i == fields.size()) return missing(f + 1);
    }
    std::size_t end = 0;
    text_field(fields, i, plan_.delimiter, &key_, &end);
    null = fields.substr(i, end - i) == plan_.null_text;
  } else {
    for (std::size_t f = 0; f < column; ++f, ++i) {
      const CsvField skipped = csv_field(fields, i, plan_, nullptr);
      if (!skipped.terminated) {
        fail("22P04", line_, "unterminated CSV quoted field");
        return kFailed;
      }
      i = skipped.end;
      if (i == fields.size()) return missing(f + 1);
    }
    const CsvField value = csv_field(fields, i, plan_, &key_);
    if (!value.terminated) {
      fail("22P04", line_, "unterminated CSV quoted field");
      return kFailed;
    }
    null = !value.quoted && fields.substr(i, value.end - i) == plan_.null_text;
  }
  if (null) {
    fail("22004", line_, key + " is NULL, so no shard holds the row; give every row a " + key);
    return kFailed;
  }
  const int shard = shard_of_text(key_, *policy_);
  if (shard < 0) {
    if (auto error = integer_key_error(key_, *policy_)) {
      fail(error->sqlstate, line_, error->message);
      return kFailed;
    }
    fail("22P02", line_,
         "\"" + shown(key_) + "\" is not a valid " + key +
             " (sharding.key_type: " + std::string(key_type_name(policy_->map.key_type())) +
             "); give every row a " + key + " of that type");
    return kFailed;
  }
  return shard;
}

// ---- binary format -----------------------------------------------------------------------------

bool CopyRows::fail_header(std::string_view what) {
  sqlstate_ = "22P04";
  error_ = "pgvalve: COPY file header: " + std::string(what);
  return false;
}

bool CopyRows::after_trailer() {
  return fail("22P04", line_ + 1, "received copy data after EOF marker (the binary trailer)");
}

// Each part is a fixed-size number, kept in `got` until whole, or a value whose bytes are passed
// over (the key field's kept in key_). Nothing is set aside for an announced length: a value is
// read as its bytes arrive, and one that would make its tuple longer than max_row_bytes fails at
// once.
CopyRows::Found CopyRows::scan_binary(std::string_view data, std::size_t& pos, std::size_t limit) {
  using Part = BinaryScan::Part;
  BinaryScan& b = binary_;
  while (pos < limit) {
    if (b.part == Part::Extension || b.part == Part::FieldValue) {
      const std::size_t n = std::min<std::size_t>(b.need, limit - pos);
      if (b.part == Part::FieldValue && b.field == plan_.key_column) {
        key_.append(data.substr(pos, n));
      }
      pos += n;
      b.row_bytes += n;
      b.need -= static_cast<std::uint32_t>(n);
      if (b.need > 0) return Found::More;
    } else {
      b.got[b.have++] = data[pos++];
      ++b.row_bytes;
      if (b.have < b.need) continue;
    }
    const Found found = binary_part_read();
    if (found != Found::More) return found;
  }
  return Found::More;
}

// A part was read whole: what comes next.
CopyRows::Found CopyRows::binary_part_read() {
  using Part = BinaryScan::Part;
  using Row = BinaryScan::Row;
  BinaryScan& b = binary_;
  const std::string_view got(b.got.data(), b.have);
  const auto next = [&b](Part part, std::uint32_t need) {
    b.part = part;
    b.need = need;
    b.have = 0;
  };
  const auto too_long = [this](std::size_t bytes) {
    fail("54000", line_ + 1,
         "the tuple is longer than " + std::to_string(max_row_bytes_) + " bytes (at least " +
             std::to_string(bytes) + "); pgvalve holds one tuple at a time while routing COPY by " +
             policy_->key);
    return Found::Error;
  };
  const auto field_read = [&] {
    if (++b.field == b.fields) {
      next(Part::FieldCount, 2);
      return binary_row_found(Row::Tuple);
    }
    next(Part::FieldLength, 4);
    return Found::More;
  };
  switch (b.part) {
    case Part::Signature: {
      static constexpr char kSignature[] = "PGCOPY\n\377\r\n";  // and its '\0'
      if (got != std::string_view(kSignature, sizeof kSignature)) {
        fail_header("COPY file signature not recognized");
        return Found::Error;
      }
      next(Part::Flags, 4);
      return Found::More;
    }
    case Part::Flags: {
      const auto flags = static_cast<std::uint32_t>(protocol::binary_integer(got).value_or(0));
      if ((flags & (1U << 16)) != 0) {
        fail_header("invalid COPY file header (WITH OIDS)");
        return Found::Error;
      }
      if ((flags & 0xFFFE0000U) != 0) {
        fail_header("unrecognized critical flags in COPY file header");
        return Found::Error;
      }
      next(Part::ExtensionLength, 4);
      return Found::More;
    }
    case Part::ExtensionLength: {
      const std::int64_t length = protocol::binary_integer(got).value_or(-1);
      if (length < 0) {
        fail_header("invalid COPY file header (missing length)");
        return Found::Error;
      }
      if (length > 0) {
        if (b.row_bytes + static_cast<std::size_t>(length) > max_row_bytes_) {
          fail_header("the header extension is longer than " + std::to_string(max_row_bytes_) +
                      " bytes");
          return Found::Error;
        }
        next(Part::Extension, static_cast<std::uint32_t>(length));
        return Found::More;
      }
      next(Part::FieldCount, 2);
      return binary_row_found(Row::Header);
    }
    case Part::Extension:
      next(Part::FieldCount, 2);
      return binary_row_found(Row::Header);
    case Part::FieldCount: {
      const auto count = static_cast<std::int16_t>(protocol::binary_integer(got).value_or(0));
      key_.clear();
      b.key_null = false;
      b.field = 0;
      b.fields = count;
      if (count == -1) {
        next(Part::FieldCount, 2);
        return binary_row_found(Row::Trailer);
      }
      // PostgreSQL checks the count against the column list; each shard sees only some tuples.
      if (count < 0 || (plan_.columns > 0 && count != plan_.columns) || count <= plan_.key_column) {
        fail("22P04", line_ + 1,
             "row field count is " + std::to_string(count) +
                 (plan_.columns > 0 ? ", expected " + std::to_string(plan_.columns) : ""));
        return Found::Error;
      }
      if (count == 0) {
        next(Part::FieldCount, 2);
        return binary_row_found(Row::Tuple);
      }
      next(Part::FieldLength, 4);
      return Found::More;
    }
    case Part::FieldLength: {
      const std::int64_t length = protocol::binary_integer(got).value_or(-2);
      if (length < -1) {
        fail("22P04", line_ + 1, "invalid field size " + std::to_string(length));
        return Found::Error;
      }
      if (length <= 0) {
        if (length == -1 && b.field == plan_.key_column) b.key_null = true;
        return field_read();
      }
      if (b.row_bytes + static_cast<std::size_t>(length) > max_row_bytes_) {
        return too_long(b.row_bytes + static_cast<std::size_t>(length));
      }
      next(Part::FieldValue, static_cast<std::uint32_t>(length));
      return Found::More;
    }
    case Part::FieldValue:
      return field_read();
  }
  return Found::Error;
}

CopyRows::Found CopyRows::binary_row_found(BinaryScan::Row row) {
  binary_.found = row;
  binary_.row_bytes = 0;
  return Found::Row;
}

// The header and the trailer go to every shard (a shard's COPY needs the header even when it
// gets no tuple), a tuple to its key's shard.
int CopyRows::binary_destination() {
  using Row = BinaryScan::Row;
  if (binary_.found == Row::Header) return kAll;
  if (binary_.found == Row::Trailer) {
    ended_ = true;
    return kAll;
  }
  ++line_;
  if (plan_.key_column < 0) {
    ++rows_;
    return kAll;
  }
  const std::string& key = policy_->key;
  if (binary_.key_null) {
    fail("22004", line_, key + " is NULL, so no shard holds the row; give every row a " + key);
    return kFailed;
  }
  const KeyType type = policy_->map.key_type();
  const std::optional<KeyValue> value = key_from_binary(key_, 0, type);
  if (!value) {
    fail("22P02", line_,
         "a binary " + key + " of " + std::to_string(key_.size()) +
             " bytes is not a value of sharding.key_type: " + std::string(key_type_name(type)) +
             (type == KeyType::Bigint ? " (an int2, int4 or int8: 2, 4 or 8 bytes)"
              : type == KeyType::Uuid ? " (16 bytes)"
                                      : "") +
             "; set key_type to the column's type");
    return kFailed;
  }
  ++rows_;
  return policy_->map.shard_of(*value);
}

bool CopyRows::add(std::string_view data, std::vector<std::string>& out) {
  if (failed()) return false;
  const bool binary = plan_.format == CopyPlan::Format::Binary;
  if (ended_) return !binary || data.empty() || after_trailer();
  // Rows that follow one another in `data` and go to the same place are appended at once.
  std::size_t run_begin = 0;
  std::size_t run_end = 0;
  int run_to = kNowhere;
  const auto flush = [&] {
    append_to(out, run_to, data.substr(run_begin, run_end - run_begin));
    run_begin = run_end;
  };
  const auto routable = [&](int to) {
    if (to == kFailed) return false;
    if (to >= 0 && static_cast<std::size_t>(to) >= out.size()) {
      return fail("XX000", line_, "shard " + std::to_string(to) + " has no COPY output");
    }
    return true;
  };

  std::size_t begin = 0;  // the row being read starts here, or in partial_ when that holds bytes
  std::size_t pos = 0;
  while (pos < data.size() && !ended_) {
    const std::size_t held = partial_.size();
    const std::size_t room = max_row_bytes_ - held;
    const std::size_t limit = data.size() - begin > room ? begin + room : data.size();
    const Found found = binary ? scan_binary(data, pos, limit) : scan(data, pos, limit);
    if (found == Found::Error) break;
    if (found == Found::More) {
      if (pos < data.size()) {
        fail("54000", line_ + 1,
             "the row is longer than " + std::to_string(max_row_bytes_) +
                 " bytes; pgvalve holds one row at a time while routing COPY by " + policy_->key);
        break;
      }
      partial_.append(data.substr(begin));
      break;
    }
    if (held > 0) {
      partial_.append(data.substr(0, pos));
      const int to = destination(partial_);
      if (!routable(to)) break;
      append_to(out, to, partial_);
      partial_.clear();
      run_begin = run_end = pos;
    } else {
      const int to = destination(data.substr(begin, pos - begin));
      if (!routable(to)) break;
      if (to != run_to) {
        flush();
        run_begin = begin;
        run_to = to;
      }
      run_end = pos;
    }
    begin = pos;
  }
  flush();
  if (binary && ended_ && pos < data.size() && !failed()) after_trailer();
  return !failed();
}

bool CopyRows::finish(std::vector<std::string>& out) {
  if (failed()) return false;
  if (plan_.format == CopyPlan::Format::Binary) {
    using Part = BinaryScan::Part;
    const BinaryScan& b = binary_;
    if (ended_ || (b.part == Part::FieldCount && b.have == 0)) {
      ended_ = true;  // PostgreSQL takes the end of the data for the trailer
      return true;
    }
    if (b.part == Part::Signature) return fail_header("COPY file signature not recognized");
    if (b.part < Part::FieldCount) return fail_header("the data ends inside the file header");
    return fail("22P04", line_ + 1, "unexpected EOF in COPY data: the data ends inside a tuple");
  }
  if (ended_ || partial_.empty()) {
    ended_ = true;
    return true;
  }
  // A header is not read as fields (HEADER MATCH is, by every shard).
  const bool header = plan_.header && !header_done_;
  if (scan_.in_quote && !header) {
    return fail("22P04", line_ + 1, "unterminated CSV quoted field");
  }
  if (scan_.dot) {
    return fail("22P04", line_ + 1, "end-of-copy marker corrupt: \\. must end its line");
  }
  // A \r ending the data ends a line only when it is the first (PostgreSQL's \r line endings).
  if (scan_.cr && eol_ != 0) {
    return fail("22P04", line_ + 1, kBareCr);
  }
  // The last row, without a line ending; a \r it ends with holds no field.
  trim_ = scan_.cr ? 1 : 0;
  marker_ = false;
  scan_ = Scan{};
  const int to = destination(partial_);
  if (to == kFailed) return false;
  if (to >= 0 && static_cast<std::size_t>(to) >= out.size()) {
    return fail("XX000", line_, "shard " + std::to_string(to) + " has no COPY output");
  }
  append_to(out, to, partial_);
  partial_.clear();
  ended_ = true;
  return true;
}

}  // namespace pgvalve::routing
