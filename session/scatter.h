// One read that runs on several shards at once, from the client's request to its answer:
// the request every shard gets (the client's, with LIMIT/OFFSET rewritten by
// routing::shard_statement and its names made unnamed), the shards' answers gathered
// (routing::Gather), and the answer the client expects for the messages it sent. Pure: the
// session links one server per shard, sends request() to each, feeds their messages to add()
// and sends finish() to the client.
//
// A request is a simple Query, or Parse / Describe / Bind / Describe / Execute / Sync of one
// statement (each at most once; Parse may be absent when the statement was prepared before),
// after Closes of portals, which pgvalve answers itself.
// Each shard runs Parse, Bind, Describe portal, Execute and Sync (plus Describe statement when the
// client asked for it): the portal's RowDescription gives the gather the column types even when
// the client did not ask for it. The client's ParseComplete, BindComplete and descriptions are
// the first shard's; its rows and CommandComplete are the gather's; its ReadyForQuery says
// what the session tells it (a read over several shards runs outside the client's transaction,
// which has run nothing on any server yet: session/scatter_flight.cpp). A read whose rows
// stream (routing/gather.h) gets what comes before its rows once every shard described them,
// and its rows as they come; the rest at finish().
//
// A named portal whose Execute has a row limit (PgJDBC's fetch size, asyncpg's cursors) may be
// kept: each shard still runs the whole read, but the rows past the client's Execute wait for
// its next one (fetch()) instead of being dropped, and the shards are not read past what the
// gather may hold meanwhile: their servers wait, mid-answer, until the client asks for more.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "routing/gather.h"
#include "routing/scatter_plan.h"

namespace pgvalve::session {

class Scatter {
 public:
  // `frames`: the client's request up to and including its Query or Sync. `sql` and
  // `param_types`: the statement it runs (a prepared one resolved by the caller). `shards`:
  // how many take part. Empty when the request is carried out; else why it cannot be (for a
  // 0A000 refusal). The rows held while shards answer may take `max_bytes`.
  // `parts`, when given: each shard runs a statement of its own (an INSERT whose rows were
  // split between shards), one per shard in shard order. `two_phase`: a write each shard runs in a
  // transaction of its own, BEGIN first, to be prepared and committed by the session (the first
  // shard's part, which decides, also tells its xid: two_phase.h); the session sends the PREPARE
  // TRANSACTION once the name is known. `write` without `two_phase`: a write that runs inside the
  // client's transaction (its answers are counted as a write's, and nothing wraps it).
  struct Part {
    std::string sql;
    std::string param_types;  // raw, as in Parse
    std::string bind_rest;    // the Bind's body after its names, with this part's parameters
  };
  std::string start(std::string_view frames, std::string_view sql, std::string_view param_types,
                    const routing::ScatterPlan& plan, const routing::ShardStatement& statement,
                    int shards, std::size_t max_bytes, std::size_t max_message_bytes,
                    bool two_phase = false, const std::vector<Part>* parts = nullptr,
                    bool write = false, const routing::TextOrderSlot* text_order = nullptr,
                    bool may_keep_portal = false);
  // A write: two-phase, each shard runs it in a transaction of its own that the session
  // prepares and commits or rolls back; else it runs in the client's transaction.
  bool write() const { return write_; }

  // What shard `shard` (0 is the first taking part) is sent.
  std::string_view request(int shard) const {
    if (!requests_.empty()) return requests_.at(static_cast<std::size_t>(shard));
    return shard == 0 && !decider_request_.empty() ? std::string_view(decider_request_)
                                                   : std::string_view(request_);
  }
  int shards() const { return static_cast<int>(rows_.size()); }

  // One message of shard `shard`'s answer before its ReadyForQuery (0 is the first shard).
  // What the client may have already (a streamed read's first messages and rows) is appended to
  // `client`.
  void add(int shard, const protocol::Frame& f, std::string& client);
  // Shard `shard` has as many rows waiting for the others' as it may: not read for now.
  bool waits(int shard) const { return gather_ && gather_->waits(shard); }
  // The answer is this error (a shard lost, no server for a shard); the first error wins.
  void fail(std::string_view sqlstate, std::string_view message);
  bool failed() const { return gather_ && gather_->failed(); }
  // Rows shard `shard` answered, as its command tags reported them (SHOW SHARDS.rows_routed):
  // a read's rows once its CommandComplete came, none when it failed; a write's count.
  std::uint64_t rows(int shard) const { return rows_.at(static_cast<std::size_t>(shard)); }
  // ... and a read's rows that came before it was stopped (a kept portal closed early).
  std::uint64_t rows_read(int shard) const {
    const auto i = static_cast<std::size_t>(shard);
    return rows_.at(i) + unended_rows_.at(i);
  }
  // After finish(): the rows the client got (a write: its tag's count).
  std::uint64_t rows_answered() const { return gather_ ? gather_->rows_answered() : 0; }

  // A portal kept between the client's Executes (`may_keep_portal`): its name.
  bool keeps_portal() const { return gather_ && gather_->keeps_portal(); }
  const std::string& portal() const { return portal_; }
  // The client's current Execute got its streamed rows (so everything before them too):
  // suspend() ends its answer with PortalSuspended (only ReadyForQuery after a Bind alone).
  bool piece_full() const { return gather_ && gather_->streaming() && gather_->piece_full(); }
  void suspend(std::string& out);
  // After finish(): the answer ended with PortalSuspended, and the portal goes on.
  bool portal_goes_on() const { return keeps_portal() && !failed() && gather_->piece_full(); }
  // The client's next Execute of the kept portal, for `rows` rows (0: the rest), after its
  // Describe of the portal when `describe`: what may go now is appended to `out`; the rest of
  // the answer comes as for the first Execute (add(), suspend(), finish()).
  void fetch(std::int64_t rows, bool describe, std::string& out);
  // The portal's description (a Describe of it alone).
  void describe_portal(std::string& out) const;

  // Every shard has answered (or failed): the client's answer, up to its ReadyForQuery with
  // `tx_status`.
  void finish(std::string& out, char tx_status = 'I');

 private:
  // The client's request runs the statement (a Query, or an Execute after its Bind).
  bool executes() const { return steps_ == "Q" || steps_.find('E') != std::string::npos; }
  // A shard's description as the client gets it (routing::client_description), appended to
  // `out`; false when the answer is an error instead.
  bool as_client_gets(const protocol::Frame& f, std::string& out);
  // Until the client gets rows: the first shard's answers kept for the client's, the rest to the
  // gather.
  void add_held(int shard, const protocol::Frame& f);
  // Shard `shard`'s part ended with `f`: its rows count when it is a CommandComplete.
  void end_rows(int shard, const protocol::Frame& f);
  // The client's answers before its rows, and the rows ready to go (a streamed read).
  void start_rows(std::string& out);
  // The client's messages that get an answer, in its order: '3' Close of a portal, 'P' Parse,
  // 'S' Describe statement, 'B' Bind, 'D' Describe portal, 'E' Execute; 'Q' a simple Query.
  std::string steps_;
  std::string request_;                // the same for every shard
  std::string decider_request_;        // ... but the first, when it tells its xid
  std::vector<std::string> requests_;  // or one per shard
  bool write_ = false;
  std::optional<routing::Gather> gather_;
  std::vector<std::uint64_t> rows_;          // per shard
  std::vector<std::uint64_t> unended_rows_;  // per shard: a read's rows before its tag came
  std::vector<bool> bound_;                  // per shard: its BindComplete came
  // What the first shard answered, for the client's Parse, Describes and Bind.
  bool parsed_ = false;
  bool bound_first_ = false;
  std::optional<std::string>
      statement_description_;                      // ParameterDescription + RowDescription/NoData
  bool statement_described_ = false;               // ... both of them came
  std::optional<std::string> portal_description_;  // RowDescription or NoData
  std::string notices_;
  std::string portal_;  // kept: its name
};

}  // namespace pgvalve::session
