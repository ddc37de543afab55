// COPY ... FROM STDIN into a sharded database (DESIGN.md §4.4): each row goes to the shard of its
// key, read from the row itself. plan_copy() reads the statement once (PostgreSQL's parse tree:
// table, column list, format options); CopyRows cuts the client's COPY data into rows as it
// arrives (a row may span CopyData messages) and appends each to its shard's output. Pure.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "routing/shard_plan.h"

namespace pgvalve::routing {

struct CopyPlan {
  bool ok = false;
  std::string refusal;  // !ok: why (the client's 0A000)
  enum class Format : std::uint8_t { Text, Csv, Binary };
  Format format = Format::Text;
  char delimiter = '\t';          // Text: tab, Csv: comma, unless DELIMITER says
  char quote = '"';               // Csv only
  char escape = '"';              // Csv only; the quote unless ESCAPE says
  std::string null_text = "\\N";  // Text: \N, Csv: the empty unquoted field, unless NULL says
  bool header = false;            // HEADER true or MATCH: the first line is column names
  // Where the key is among a row's fields (from the column list); -1: a reference table, whose
  // rows go to every shard.
  int key_column = -1;
  // How many columns the column list names; 0 without one (a reference table's every column).
  int columns = 0;
  // The COPY's ENCODING option names the data's encoding (one whose characters never hold
  // ASCII bytes; others are refused): the session's client_encoding does not apply to the data.
  bool encoding_given = false;
};

// `sql`: COPY table [(columns)] FROM STDIN [[WITH] options]. Refused (ok false): another kind of
// COPY (TO, FROM a file or program, a query), a table in neither sharding.tables nor
// sharding.reference_tables, a sharded table without a column list or whose column list lacks
// the key, a WHERE clause, FORMAT binary into a sharded table under sharding.key_type auto (a
// binary field does not say its type). Parses (allocates): once per COPY statement.
CopyPlan plan_copy(std::string_view sql, const ShardingPolicy& policy);

class CopyRows {
 public:
  // `max_row_bytes`: the longest row held while waiting for its end (a longer one is an error).
  CopyRows(const CopyPlan& plan, const ShardingPolicy& policy, std::size_t max_row_bytes);

  // The next bytes of the client's COPY data (CopyData bodies in order, cut anywhere). Each
  // complete row, with its line ending, is appended to out[shard]; the header line and every
  // row of a reference table to every out[i]. `out` has one string per shard; its contents are
  // only ever appended to. Bytes of an incomplete row are kept until the rest comes. After the
  // end-of-data line (\. alone on a line) the rest is ignored, as PostgreSQL ignores it; that
  // line goes to no shard. In binary format the file header and the trailer go to every shard
  // and each tuple to its key's, and data after the trailer is an error, as in PostgreSQL.
  // False on the first error (error(), sqlstate()); later calls do nothing and return false.
  bool add(std::string_view data, std::vector<std::string>& out);
  // The client's CopyDone: a last row without a line ending is routed (appended as it is); in
  // binary format, data that ends inside the header or a tuple is an error.
  bool finish(std::vector<std::string>& out);

  std::uint64_t rows() const { return rows_; }  // data rows routed (not the header)
  bool failed() const { return !error_.empty(); }
  std::string_view sqlstate() const { return sqlstate_; }
  // Starts "pgvalve: " and names the row (its number from 1, counting the header line).
  const std::string& error() const { return error_; }

 private:
  // Where the search for the end of the row being read stands (PostgreSQL's CopyReadLineText),
  // kept across add() calls so that a row arriving in pieces is scanned once.
  struct Scan {
    bool backslash = false;     // text: the next byte is escaped
    bool dot = false;           // text: an unescaped \. was just read (the end-of-data marker)
    bool cr = false;            // an unescaped \r outside quotes: the line ending's \n must follow
    bool in_quote = false;      // csv
    bool last_was_esc = false;  // csv, in quotes: the escape character was just read
  };
  // Binary format (PostgreSQL's ReceiveCopyBinaryHeader and CopyReadBinaryTuple): the part of
  // the file header or of a tuple being read, kept across add() calls. A "row" is the header, a
  // tuple or the trailer.
  struct BinaryScan {
    enum class Part : std::uint8_t {
      Signature,        // 11 bytes: PGCOPY\n\377\r\n\0
      Flags,            // int32
      ExtensionLength,  // int32
      Extension,        // that many bytes
      FieldCount,       // int16; -1: the trailer
      FieldLength,      // int32; -1: NULL
      FieldValue,       // that many bytes
    };
    enum class Row : std::uint8_t { Header, Tuple, Trailer };
    Part part = Part::Signature;
    std::uint32_t need = 11;     // bytes of the part still to come
    std::array<char, 11> got{};  // a number's (or the signature's) bytes so far
    std::uint8_t have = 0;
    std::int16_t fields = 0;    // the tuple's field count
    std::int16_t field = 0;     // the field being read
    std::size_t row_bytes = 0;  // of the row being read, so far
    bool key_null = false;
    Row found = Row::Header;  // the row just found
  };
  enum class Found : std::uint8_t { More, Row, Error };

  Found scan(std::string_view data, std::size_t& pos, std::size_t limit);
  Found scan_binary(std::string_view data, std::size_t& pos, std::size_t limit);
  Found binary_part_read();
  Found binary_row_found(BinaryScan::Row row);
  int binary_destination();
  bool fail_header(std::string_view what);
  bool after_trailer();
  Found row_found(std::size_t trim, bool marker);
  // Where a complete row goes: a shard, kAll, kNowhere (the end-of-data line) or kFailed.
  int destination(std::string_view row);
  int key_shard(std::string_view fields);
  bool fail(std::string_view sqlstate, std::uint64_t row, std::string_view what);

  // Implementation-defined: a partial row's bytes, the scanning state of a CSV quoted field,
  // the line number, whether the header was passed, whether \. was seen.
  CopyPlan plan_;
  const ShardingPolicy* policy_;
  std::size_t max_row_bytes_;
  std::string partial_;
  std::uint64_t rows_ = 0;
  std::uint64_t line_ = 0;
  bool header_done_ = false;
  bool ended_ = false;
  Scan scan_;
  // The row just found: how many bytes at its end hold no field (line ending, \.), and whether
  // they are the end-of-data marker.
  std::size_t trim_ = 0;
  bool marker_ = false;
  std::size_t eol_ = 0;              // the first line's ending: 1 (\n) or 2 (\r\n); 0 before it
  std::string key_;                  // the key field, de-escaped; reused from row to row
  std::array<bool, 256> special_{};  // bytes the row-end scan stops at
  BinaryScan binary_;
  std::string_view sqlstate_;
  std::string error_;
};

}  // namespace pgvalve::routing
