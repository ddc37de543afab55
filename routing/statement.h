#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace pgvalve::routing {

// What a statement is, syntactically, as far as pooling needs to know. Not a read/write
// decision: `SELECT nextval(...)` and `WITH d AS (DELETE ...) SELECT ...` are Select here;
// routing decides reads and writes from libpg_query's parse tree.
enum class StatementKind : std::uint8_t {
  Empty,                // only whitespace, comments and ';' (PostgreSQL answers EmptyQueryResponse)
  Begin,                // BEGIN, START TRANSACTION
  Commit,               // COMMIT, END
  Rollback,             // ROLLBACK, ABORT
  RollbackToSavepoint,  // ROLLBACK TO [SAVEPOINT] name
  Savepoint,
  Release,             // RELEASE [SAVEPOINT] name
  PrepareTransaction,  // PREPARE TRANSACTION 'gid'
  CommitPrepared,      // COMMIT PREPARED 'gid'
  RollbackPrepared,    // ROLLBACK PREPARED 'gid'
  Set,                 // SET [SESSION] name {=|TO} value, SET TIME ZONE, SET NAMES, ...
  SetLocal,            // SET LOCAL ...
  SetTransaction,      // SET TRANSACTION ..., SET TRANSACTION SNAPSHOT ..., SET CONSTRAINTS ...
  Reset,               // RESET name
  ResetAll,            // RESET ALL
  Discard,             // DISCARD ALL | PLANS | SEQUENCES | TEMP
  Deallocate,          // DEALLOCATE [PREPARE] name | ALL
  Prepare,             // PREPARE name [(types)] AS statement
  Execute,             // EXECUTE name [(args)]
  Listen,
  Unlisten,  // UNLISTEN name | *
  Notify,
  Show,
  Select,  // also VALUES, TABLE, and a parenthesised or WITH-prefixed select
  Insert,
  Update,
  Delete,
  Copy,
  Declare,  // DECLARE name CURSOR
  Close,    // CLOSE name | ALL (cursors)
  Create,
  Alter,
  Drop,
  Explain,
  Other,
};

std::string_view statement_kind_name(StatementKind kind);

// An identifier normalised as PostgreSQL does (unquoted: ASCII lower-cased; quoted: quotes
// removed, "" unescaped; each part cut to 63 bytes), stored inline so classify() never allocates.
class NormalizedName {
 public:
  static constexpr std::size_t kCapacity = 255;

  std::string_view view() const { return {buffer_.data(), size_}; }
  bool empty() const { return size_ == 0; }
  friend bool operator==(const NormalizedName& a, std::string_view b) { return a.view() == b; }

  void clear() { size_ = 0; }
  // False (and nothing appended) when `text` does not fit.
  bool append(std::string_view text);
  bool push_back(char c);

 private:
  std::array<char, kCapacity> buffer_{};
  std::uint8_t size_ = 0;
};

struct StatementInfo {
  StatementKind kind = StatementKind::Empty;

  // Another non-empty statement follows the first one's top-level ';' (simple query protocol).
  bool multiple_statements = false;

  // Begin, SetTransaction, Set (SESSION CHARACTERISTICS): the last access mode given is READ ONLY.
  bool read_only = false;
  // ... the transaction modes given: how many, and the last of each kind.
  enum class Isolation : std::uint8_t {
    Unset,
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable
  };
  enum class Flag : std::uint8_t { Unset, Off, On };
  std::uint8_t transaction_modes = 0;
  Flag access_read_only = Flag::Unset;  // READ ONLY (On) or READ WRITE (Off)
  Isolation isolation = Isolation::Unset;
  Flag deferrable = Flag::Unset;
  // ... some mode is READ WRITE or ISOLATION LEVEL SERIALIZABLE. PostgreSQL applies the modes in
  // order, so a hot standby refuses the statement even when a later mode overrides that one.
  bool standby_refused_mode = false;
  // Commit, Rollback: AND CHAIN (a new transaction starts at once; the server stays lent).
  bool and_chain = false;
  // Create: the object is temporary (CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY ..., or in pg_temp);
  // Select: SELECT ... INTO TEMP (also after WITH) creates a temporary table; Other (DO): the body
  // runs CREATE TEMP (ON COMMIT DROP is not looked for there).
  bool temporary = false;
  // Create: ON COMMIT DROP (the temporary table does not outlive the transaction).
  bool on_commit_drop = false;
  // SELECT … INTO (also WITH … SELECT … INTO) makes a table.
  bool selects_into = false;
  // Declare: WITH HOLD (the cursor outlives the transaction).
  bool with_hold = false;
  // Discard: DISCARD ALL.
  bool discard_all = false;
  // Deallocate ALL, Unlisten *.
  bool all = false;
  // Listen, Unlisten: the statement is exactly the keyword and one channel name (or
  // UNLISTEN *), as PostgreSQL's grammar has it; `LISTEN a b` or `LISTEN a.b` is not.
  bool channel_only = false;
  // Set, SetLocal: the value is DEFAULT (or TIME ZONE LOCAL, or NAMES without an encoding), i.e.
  // the statement resets the parameter.
  bool value_is_default = false;
  // The first statement calls pg_advisory_lock[_shared] or pg_try_advisory_lock[_shared]
  // (session-level locks, which transaction pooling cannot honour). Also looks inside DO bodies.
  bool calls_advisory_session_lock = false;
  // The first statement calls pg_advisory_unlock[_shared] or pg_advisory_unlock_all (a
  // session-level lock may be released).
  bool calls_advisory_unlock = false;
  // The first statement calls set_config() (also inside a DO body). Session: exactly one call
  // with two plain string literals and `false`, so the setting can be followed (set_config_name
  // and set_config_value hold the literals, quotes included); Local: one call with `true`, the
  // setting ends with the transaction; SessionBound: as Session, with the name or the value (or
  // both) a parameter `$n` (drivers and ORMs set a tenant id so, for row-level security), known
  // at Bind; Unknown: any other form.
  enum class SetConfig : std::uint8_t { None, Session, SessionBound, Local, Unknown };
  SetConfig set_config = SetConfig::None;
  // Other (DO): the body runs SET or RESET (also in a string it may EXECUTE), so session
  // settings change in ways that cannot be followed; body_listens: it runs LISTEN. PL/pgSQL is
  // only scanned: a statement start is the body's start or what follows ';', BEGIN, THEN,
  // ELSE or LOOP.
  bool body_sets = false;
  bool body_listens = false;
  // What the statement runs cannot be read from its text: a DO block (it may EXECUTE a string
  // it builds, or call anything), or a call of a function named by a U&"" identifier. Its
  // settings are taken as unknown, and the server is asked afterwards what session state it
  // holds.
  bool opaque = false;
  std::string_view set_config_name;
  std::string_view set_config_value;
  // `name` could not be normalised inline (longer than NormalizedName::kCapacity, or a U&""
  // identifier); it is empty and raw_name holds the text.
  bool name_unsupported = false;

  // Set, SetLocal, Reset, Show: the configuration parameter, lower-cased even when quoted
  // because parameter names are case-insensitive ("TimeZone" and timezone are one setting);
  // the special forms map to their parameter: TIME ZONE -> timezone, NAMES -> client_encoding,
  // SCHEMA -> search_path, ROLE -> role, SESSION AUTHORIZATION -> session_authorization,
  // XML OPTION -> xmloption, TRANSACTION ISOLATION LEVEL -> transaction_isolation;
  // SET SESSION CHARACTERISTICS AS TRANSACTION -> session_characteristics; SHOW ALL -> all.
  // Prepare, Execute, Deallocate: statement name. Savepoint, Release, RollbackToSavepoint:
  // savepoint. Listen, Unlisten, Notify: channel. Declare, Close: cursor (Close ALL sets `all`).
  // Discard: all, plans, sequences or temp. These follow identifier rules (quoted names keep their
  // case).
  NormalizedName name;
  // The name as written (e.g. `"TimeZone"`, `TIME ZONE`, `pgvalve.device_id`).
  std::string_view raw_name;
  // Set, SetLocal, SetTransaction: the value as written, trimmed, without the ';'
  // (`'UTC'`, `a, b`, `ISOLATION LEVEL SERIALIZABLE`). Notify: the payload literal.
  // PrepareTransaction, CommitPrepared, RollbackPrepared: the transaction id literal.
  std::string_view value;
  // The leading `/* pgvalve: ... */` hint, see leading_hint().
  std::string_view hint;
  // The first statement from its first token to its last, without the ';'.
  std::string_view text;
  // Where the rest of the input starts (after the first statement's ';'), to classify the next
  // statement with classify(sql.substr(next_offset)); sql.size() when there is no ';'.
  std::size_t next_offset = 0;
};

// Classifies the first non-empty statement of `sql`. One lexer pass over that statement, no
// allocation. `sql` must outlive the string_views in the result.
StatementInfo classify(std::string_view sql);

// The cursor (to PostgreSQL, a portal) SQL's FETCH or MOVE names, last, as PostgreSQL looks it
// up (unquoted: lower-cased); empty for any other statement, or one whose last token is no name.
NormalizedName fetched_cursor(std::string_view sql);

// True for the everyday statement that needs no closer look: it starts with SELECT, INSERT,
// UPDATE, DELETE, WITH or VALUES, is the only statement, and mentions nothing that changes
// session state (advisory locks, temporary objects: "temp" as a word of its own or pg_temp,
// set_config; in a SELECT or WITH also "into", which may make a table) anywhere, comments and
// literals included. False sends it through classify() and
// the session-state review. No lexer pass.
bool plain_statement(std::string_view sql);

// A statement that reads or writes data, which a replica may refuse; the others (transaction
// control, settings, cursors, LISTEN) change no data.
bool touches_data(StatementKind kind);

// Whether the statement in `sql` may start with one of `words` (lower case): after spaces, one of
// them in any ASCII case followed by a byte that cannot continue an identifier, or a comment
// (which may hide the word). A test on the first bytes that rules most statements out before a
// closer look.
bool may_start_with(std::string_view sql, std::initializer_list<std::string_view> words);

// `needle` (lower case, starting with a letter) anywhere in `sql` from `from`, in any ASCII case:
// a quick test, on raw bytes, of whether a statement can be one worth a closer look.
bool contains_ci(std::string_view sql, std::size_t from, std::string_view needle);

}  // namespace pgvalve::routing
