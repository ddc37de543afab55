// Which server response belongs to which client request, in order. In transaction pooling
// pgvalve answers some requests itself (a Parse of a statement the server already has) and
// slips in requests of its own (re-preparing a statement before a Bind); matching each server
// message to the request it answers is what lets it add and drop responses in the right
// places. Pure: tags in, decisions out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pgvalve::protocol {

struct PendingResponse {
  enum class Kind : std::uint8_t {
    ParseComplete,  // Parse
    BindComplete,   // Bind
    CloseComplete,  // Close
    Describe,       // Describe: [ParameterDescription] then RowDescription or NoData
    Execute,        // Execute: rows, then CommandComplete, EmptyQueryResponse or PortalSuspended
    ReadyForQuery,  // Sync, Query, FunctionCall
    Synthetic,      // answered by pgvalve: no server message; emitted when it reaches the front
  };
  Kind kind = Kind::ReadyForQuery;
  bool swallow = false;            // the request was pgvalve's own: its completion is not forwarded
  bool failed = false;             // an ErrorResponse arrived for it
  bool internal = false;           // the request was pgvalve's own: none of its answer is forwarded
  bool sync = false;               // the request is a Sync (ignored by a server taking COPY data)
  bool after_copy_end = false;     // a CopyDone or CopyFail was sent between it and the one before
  bool fingerprint_later = false;  // session-defined: `fingerprint` is filled in after sending
  std::uint8_t action = 0;         // what the session does when it completes (session-defined)
  std::uint32_t note = 0;          // session-defined index (statement, setting, message)
  std::uint16_t note_count = 0;    // session-defined: notes from `note` on belong to this request
  std::uint16_t notes_done = 0;    // session-defined: how many of them have been settled
  std::uint64_t statement_hash = 0;
  // Statistics (session-defined): the shape of the statement this request runs (a Query or an
  // Execute; 0: not counted) and when it was sent.
  std::uint64_t fingerprint = 0;
  std::int64_t started = 0;
  // Session-defined: where its slow-query sample is kept (stats.redact_literals: false);
  // sample_size 0: none.
  std::uint32_t sample_at = 0;
  std::uint32_t sample_size = 0;
};

enum class ResponseMatch {
  Async,         // NoticeResponse, NotificationResponse, ParameterStatus: no request of its own
  Intermediate,  // part of the front request's answer; more follows
  Completes,     // ends the front request's answer
  Error,         // ErrorResponse: ends the front request's answer; in extended protocol the
                 // server then skips everything up to the next Sync
};

// What server message `tag` means for a request of kind `front`.
ResponseMatch match_response(PendingResponse::Kind front, char tag);

// A FIFO of pending responses on a ring buffer that only grows (no allocation in steady state).
class PendingResponses {
 public:
  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }
  PendingResponse& front() { return ring_[head_]; }
  const PendingResponse& front() const { return ring_[head_]; }
  // The `i`th from the front (i < size()).
  const PendingResponse& at(std::size_t i) const { return ring_[(head_ + i) % ring_.size()]; }
  PendingResponse& at(std::size_t i) { return ring_[(head_ + i) % ring_.size()]; }
  void push(const PendingResponse& r);
  void pop();
  // Removes the `count` entries right behind the front (count < size()).
  void drop_behind_front(std::size_t count);
  void clear() { head_ = size_ = parses_ = 0; }
  // ParseCompletes among them: lets a lookup for a Parse skip the scan when there is none.
  std::size_t parses() const { return parses_; }

 private:
  std::vector<PendingResponse> ring_;  // allocated on first use: idle clients hold none
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  std::size_t parses_ = 0;
};

}  // namespace pgvalve::protocol
