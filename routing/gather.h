// Gathers the answers of several shards to one read into the answer a single database would
// give, following a ScatterPlan (scatter_plan.h): the RowDescription once; rows concatenated, or
// merged in ORDER BY order (NULLS FIRST/LAST, DESC); count/sum/min/max combined per group;
// DISTINCT rows once; LIMIT/OFFSET applied after all that; one CommandComplete with the total.
// An error from any shard is the client's answer. Pure: backend messages in, client messages
// out; the session carries it out (session/scatter.h).
//
// Rows that need no combining stream: once every shard has described its rows, a read whose rows
// are only concatenated passes each row on as it comes, and one with an ORDER BY merges the
// shards' sorted rows as they come, holding only the rows that wait for another shard's next
// one. A shard whose waiting rows reach its share of the bound is not read until the merge takes
// them (waits()), so a streamed read of any size holds a bounded amount. Aggregates and DISTINCT
// hold every row until the last shard answered, up to the bound (then 54000).
//
// Values are compared in text format, typed by the RowDescription's OIDs: integers, floats and
// numeric by value; text, varchar and char in the database's collation (text_order.h; char
// without its trailing spaces, and by the bytes under COLLATE "C"); timestamptz by the instant
// its ISO text names; bool, name, uuid, date, time and timestamp by their bytes, which is
// PostgreSQL's order for them (ISO dates of years 1-9999). A merge checks that each shard's
// rows come in that order, and fails (0A000) on one that does not: a wrong comparison is an
// error, not a wrong order. Binary-format values (JDBC asks for them once a statement is
// prepared) compare by value too: integers, dates, times and timestamps as big-endian integers,
// floats as IEEE values, numeric through its digits, text-like types as their text, uuid by its
// bytes. A sort or min/max on any other type is refused (rows that are only concatenated pass
// whatever their type and format), and so is one on text when the database's collation is not
// known or cannot be reproduced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "routing/scatter_plan.h"
#include "routing/text_order.h"

namespace pgvalve::routing {

// The RowDescription (its body, without tag and length) the client gets for a shard's when `plan`
// has averages (ScatterPlan::Average): each average's sum described as avg() describes its
// result (numeric; double precision for a double precision argument) and named "avg" unless
// aliased, the count columns dropped. Without averages, `shard_body` as it is. A non-empty
// `refusal` says why the averages cannot be combined (an argument of another type).
struct ClientDescription {
  std::string body;
  std::string refusal;
};
ClientDescription client_description(const ScatterPlan& plan, std::string_view shard_body);

class Gather {
 public:
  // A variance's partial state: how many values, their sum, their population variance.
  struct Spread {
    double count = 0;
    double sum = 0;
    double var_pop = 0;
  };

  // `limit` < 0: none. The rows kept in memory may take `max_bytes`; beyond, the answer is an
  // error (54000). `stream`: rows that need no combining may stream (a read's; a write's answer
  // is held until every part is prepared). `text_order`: where the database's collation is
  // published (outlives the gather; null: none), for sorts and min/max of text; read when the
  // first shard describes its rows, so that a read started just before the health checks
  // learned it still finds it.
  Gather(const ScatterPlan& plan, int shards, std::int64_t limit, std::int64_t offset,
         std::size_t max_bytes, bool stream = false, const TextOrderSlot* text_order = nullptr);

  // A read's Execute row limit (asyncpg's fetchrow() sends 1): at most `rows` rows go to the
  // client, then PortalSuspended instead of the command tag when there were more, as a server
  // answers. The portal is not kept for another Execute (the request ends with its Sync).
  void set_fetch_limit(std::int64_t rows) { fetch_limit_ = rows; }

  // A portal the client fetches in parts (PgJDBC's fetch size, asyncpg's cursors): each of its
  // Executes gets at most `rows` rows and, once it got that many, PortalSuspended, as a server's
  // portal answers (also when no row is left: the next Execute then gets none and the tag).
  // The rows after them wait, in their queues or held, for the next fetch() instead of being
  // dropped; a streamed read's shards are not read past their share meanwhile (waits()).
  void keep_portal(std::int64_t rows) {
    keep_portal_ = true;
    fetch_limit_ = rows;
  }
  bool keeps_portal() const { return keep_portal_; }
  // The current Execute of a kept portal got its rows: its answer ends with PortalSuspended.
  // `rows` < 0: the portal is bound and not executed yet; no row goes until fetch().
  bool piece_full() const {
    return keep_portal_ && (fetch_limit_ < 0 || (fetch_limit_ > 0 && piece_sent_ >= fetch_limit_));
  }
  // The next Execute of a kept portal, for at most `rows` rows (0: all the rest): the streamed
  // rows that may go now are appended to `out`. Its answer then ends with finish() once every
  // shard has answered (which may be called again for each Execute; held rows go there), or,
  // when piece_full() before that, with PortalSuspended.
  void fetch(std::int64_t rows, std::string& out);

  // One message of shard `shard`'s answer before its ReadyForQuery. False once the answer is
  // decided to be an error: the rest of every shard's answer can be dropped. Rows this message
  // releases to the client, once streaming started, are appended to `out`.
  bool add(int shard, const protocol::Frame& f, std::string* out = nullptr);

  // Streaming: every shard described its rows, which need no combining. The caller writes what
  // comes before the rows (for an extended-protocol request, ParseComplete and the like), then
  // start_stream(), which appends the RowDescription when `describe` and the rows ready to go.
  bool ready_to_stream() const {
    return mode_ != Mode::Hold && !started_ && !failed_ && described_ == shards_;
  }
  void start_stream(std::string& out, bool describe);
  bool streaming() const { return started_; }
  // Shard `shard` has as many rows waiting for the merge as it may: do not read it for now.
  bool waits(int shard) const {
    return mode_ != Mode::Hold && !failed_ &&
           queued_bytes_[static_cast<std::size_t>(shard)] >= shard_bound_;
  }

  // Every shard has answered: the client's messages (the RowDescription first when
  // `describe`; an Execute's answer has none). Once streaming, only what is left: the rows still
  // waiting and the command tag, or the error.
  void finish(std::string& out, bool describe = true);
  bool failed() const { return failed_; }
  const ScatterPlan& plan() const { return plan_; }
  // After finish(): the rows the client got (or, for a write, the row count of its tag).
  std::uint64_t rows_answered() const { return rows_answered_; }

 private:
  struct Field {
    std::int32_t offset = 0;  // into Row::body
    std::int32_t size = -1;   // -1: NULL
  };
  struct Row {
    std::string body;  // DataRow body
    std::vector<Field> fields;
    std::optional<std::string_view> value(std::size_t i) const;
  };
  // How a column's values compare. Binary-format results (JDBC asks for them once a statement
  // is prepared) of integers, dates and times compare as big-endian signed integers, of floats
  // as IEEE values, of text-like types as their text, of uuid byte by byte.
  enum class Kind : std::uint8_t {
    Integer,
    Float,
    Numeric,
    Text,         // text, varchar: in the database's collation
    PaddedText,   // char(n): the same, without trailing spaces
    TimestampTz,  // timestamptz as text: by the instant, whatever its offset
    Bytes,
    BinaryInteger,
    BinaryFloat,
    BinaryNumeric,
    Other,
  };
  // What a column is, without the table OID and column number of its source, which differ
  // between shards whose tables were created apart.
  struct Column {
    std::string name;
    std::int32_t type = 0;
    std::int16_t size = 0;
    std::int32_t modifier = 0;
    std::int16_t format = 0;
    bool operator==(const Column&) const = default;
  };

  // Hold: every row until the end. Stream: rows in the order they come. Merge: the shards'
  // sorted rows merged as they come. Decided by the first RowDescription.
  enum class Mode : std::uint8_t { Hold, Stream, Merge };
  enum class Progress : std::uint8_t { Waiting, Described, Done };

  bool fail(std::string_view sqlstate, std::string message);
  bool read_description(int shard, const protocol::Frame& f);
  bool parse_row(const protocol::Frame& f, Row& row);
  bool read_row(const protocol::Frame& f);
  bool stream_row(int shard, const protocol::Frame& f, std::string* out);
  bool in_shard_order(std::size_t shard, const Row& row);
  static bool is_text(Kind k) { return k == Kind::Text || k == Kind::PaddedText; }
  // False (the answer is then an error) when text cannot be compared as PostgreSQL does.
  bool text_order_known(std::string_view what);
  // A min()/max() output column whose argument has COLLATE "C", and how its text compares.
  bool by_bytes(std::size_t column) const;
  const TextOrder* min_max_order(std::size_t column) const;
  void drain(std::string& out);
  void emit(std::string_view body, std::string& out);
  void put_row(std::string_view body, std::string& out);
  // Held rows, combined, up to the current Execute's limit; then its end.
  void send_held(std::string& out);
  // `order`: for text kinds (null: by the bytes).
  int compare(Kind kind, std::string_view a, std::string_view b, const TextOrder* order) const;
  bool less(const Row& a, const Row& b) const;
  // The text under which equal values of column `i` are one (GROUP BY, DISTINCT) as the type's
  // equality sees them (numeric 1.5 and 1.50, float 0 and -0, a timestamptz's instant);
  // nullopt when pgvalve cannot tell equality from the text (interval, arrays, records,
  // timestamptz or dates outside DateStyle ISO, types it does not know).
  std::optional<std::string> equality_key(std::size_t i, std::string_view v) const;
  // Whether compare() orders column `i`'s value `v` as PostgreSQL does (dates and timestamps
  // in DateStyle ISO, years 1-9999).
  bool orderable(std::size_t i, std::string_view v) const;
  // Rows with equal values in the columns `group` marks become one row (combine_into), or, with
  // `combine` false, the first of them stays (DISTINCT). False when refused.
  bool collapse(const std::vector<char>& group, bool combine);
  bool combine_into(Row& into, const Row& from);
  bool finish_averages();
  std::optional<Spread> spread_of(const Row& row, std::size_t sum_column,
                                  std::size_t counted) const;
  static Spread combine_spreads(const Spread& a, const Spread& b);
  std::optional<std::string> value_of_var_pop(const Spread& s, std::size_t column) const;
  static void rebuild(Row& row, const std::vector<std::optional<std::string>>& values);

  ScatterPlan plan_;  // a copy: the cached plan may be evicted while shards answer
  int shards_;
  std::int64_t limit_;
  std::int64_t fetch_limit_ = 0;  // 0: none
  bool suspended_ = false;        // a row beyond fetch_limit_ was dropped
  bool keep_portal_ = false;
  std::int64_t piece_sent_ = 0;  // rows the current Execute got
  // Held rows (aggregates, DISTINCT) once combined: the next to send, and the end.
  bool held_ready_ = false;
  std::size_t held_next_ = 0;
  std::size_t held_end_ = 0;
  std::int64_t offset_;
  std::size_t max_bytes_;
  const TextOrderSlot* text_order_slot_;
  const TextOrder* text_order_ = nullptr;  // the slot's, as the first description found it
  std::size_t bytes_ = 0;
  std::string description_;      // the client's RowDescription body (client_description)
  std::vector<Column> columns_;  // the shards' (with averages' counts)
  std::vector<Kind> kinds_;      // per column of the shards' rows; the client's once averaged
  std::vector<Row> rows_;
  // Streaming: each shard's rows not sent yet, their bytes, how far each shard's answer is; the
  // rows skipped for OFFSET and sent so far.
  Mode mode_ = Mode::Hold;
  bool may_stream_ = false;
  bool started_ = false;
  int described_ = 0;
  std::size_t shard_bound_ = 0;
  std::vector<std::deque<Row>> queues_;
  // Merging: each shard's latest row, which its next may not precede (in_shard_order()).
  std::vector<Row> last_rows_;
  std::vector<char> has_last_;
  std::vector<std::size_t> queued_bytes_;
  std::vector<Progress> progress_;
  std::int64_t skipped_ = 0;
  std::int64_t sent_ = 0;
  std::string error_;  // an ErrorResponse body (a shard's, or pgvalve's)
  bool failed_ = false;
  bool empty_query_ = false;
  // A CommandComplete that is not SELECT (a write's, DDL's): its words, and the rows of every
  // shard's when it counts them.
  std::string other_tag_;
  std::uint64_t other_rows_ = 0;
  bool counted_tag_ = false;
  std::string write_tag() const;
  std::uint64_t rows_answered_ = 0;
};

}  // namespace pgvalve::routing
