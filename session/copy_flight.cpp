// COPY ... FROM STDIN into a sharded database: every shard's server is checked out (as for a
// statement over several shards, scatter_flight.cpp) and runs BEGIN and the COPY; inside the
// client's transaction, every shard joins it instead and its part runs the COPY. Once all of them
// take data the client gets one CopyInResponse, and each row of its data goes to the shard of its
// key (routing::CopyRows), several shards written in one step. At the client's CopyDone each
// shard ends its COPY and prepares its part; the parts commit together (two-phase commit) and the
// client gets one COPY tag with every shard's rows added up (a reference table's, which every
// shard gets all of, once). (Inside a transaction the parts stay open and commit with it.) A bad
// row, a shard's error, a lost shard or the client's CopyFail ends the COPY on every shard and
// rolls it back, and the client gets the error at once, as PostgreSQL sends it mid-COPY;
// PostgreSQL ignores the COPY data a client sends after that, and so does pgvalve.
#include <bit>

#include "protocol/messages.h"
#include "protocol/wire.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

namespace pr = protocol;

Session::ScatterStart Session::start_copy(std::string_view frames, const RequestText& request,
                                          routing::Route& route, Actions& out,
                                          bool in_transaction) {
  const routing::ShardingPolicy& sharding = *router_.sharding();
  const std::string hint = "a hint /* pgvalve: " + sharding.key +
                           "=<value> */ or /* pgvalve: shard=<name> */ runs the COPY on one "
                           "shard as it is";
  auto refuse = [&](std::string why) {
    route = routing::Route::refuse("0A000", "pgvalve: " + std::move(why), hint);
    return ScatterStart::NotScattered;
  };
  const auto head = pr::decode_frame(frames, options_.max_message_bytes);
  if (head.status != pr::DecodeStatus::Ok || head.frame.tag != 'Q') {
    return refuse(
        "COPY FROM STDIN into a sharded database is routed row by row when it comes "
        "as a simple query; send it with the simple query protocol");
  }
  const routing::CopyPlan plan = routing::plan_copy(request.sql, sharding);
  if (!plan.ok) return refuse(plan.refusal);
  if (!plan.encoding_given && text_reading().encoding != routing::AsciiInCharacters::None) {
    // A byte that looks like a backslash, quote or newline may be half of a character there:
    // rows would be cut, and keys read, in the wrong places.
    return refuse("COPY data in client_encoding " + std::string(setting_value("client_encoding")) +
                  " is not cut into rows: its characters may hold bytes that look like "
                  "delimiters, quotes or backslashes; set client_encoding to UTF8 (or a "
                  "single-byte encoding), or give the COPY an ENCODING option naming the "
                  "data's encoding, UTF8 or single-byte");
  }
  const int shards = std::popcount(route.shards);
  if (shards != router_.shard_count()) return refuse("a COPY routed row by row needs every shard");
  if (!in_transaction && !extras().deferred_begin.empty()) {
    // The client's transaction (its BEGIN held back) starts on the first shard, and the COPY is
    // routed again there, to run on every shard's part of it (route_in_transaction).
    route = routing::Route::primary(static_cast<std::uint16_t>(std::countr_zero(route.shards)));
    work().change_tx().route_again = true;
    return ScatterStart::NotScattered;
  }

  const std::uint64_t fingerprint = fingerprint_of(request.sql);
  // Outside a transaction, the COPY is one of its own on every shard, committed with two-phase
  // commit; inside, each shard's part is the transaction's, committed with it.
  auto scatter = std::make_unique<Scatter>();
  // Every row of a reference table goes to every shard: each shard's COPY tag counts them all.
  const std::string why = scatter->start(
      head.frame.whole, request.sql, {},
      plan.key_column < 0 ? first_shards_answer() : concatenated(), routing::ShardStatement{},
      shards, kMaxGatheredBytes, options_.max_message_bytes, !in_transaction, nullptr, true);
  if (!why.empty()) return refuse("this COPY cannot be routed row by row: " + why);
  if (in_transaction) {
    open_scatter_run(std::move(scatter), {}, fingerprint, false);
    send_to_transaction_parts(route.shards, kActionScatterCopy, out);
    auto& run = work().change_scatter();
    run.copy = std::make_unique<routing::CopyRows>(plan, sharding, kMaxCopyRowBytes);
    run.copy_out.assign(static_cast<std::size_t>(shards), {});
    if (recorder_) recorder_->stats->prepare(fingerprint, request.sql, recorder_->labels);
    out.consumed = head.frame.whole.size();
    enter(SessionState::Scattering);
    return ScatterStart::Started;
  }

  std::vector<routing::Route> routes;
  for (std::uint64_t rest = route.shards; rest != 0; rest &= rest - 1) {
    routes.push_back(routing::Route::primary(static_cast<std::uint16_t>(std::countr_zero(rest))));
  }
  open_scatter_run(std::move(scatter), std::move(routes), fingerprint, true);
  auto& run = work().change_scatter();
  run.copy = std::make_unique<routing::CopyRows>(plan, sharding, kMaxCopyRowBytes);
  run.copy_out.assign(static_cast<std::size_t>(shards), {});
  if (recorder_) recorder_->stats->prepare(fingerprint, request.sql, recorder_->labels);
  out.consumed = head.frame.whole.size();
  check_out_next_shard(out);
  return ScatterStart::Started;
}

// A shard's server answered the COPY with CopyInResponse. Once every shard did, the client gets
// the first shard's and its data is read; if the COPY failed meanwhile, it ends on every shard.
void Session::copy_shard_ready(Link& l, const pr::Frame& f, Actions& out) {
  auto& run = work().change_scatter();
  if (l.copy_in) return;  // said twice: still one shard
  l.copy_in = true;
  if (l.scatter_shard == 0) run.copy_in_response.assign(f.whole);
  ++run.copy_ready;
  if (run.scatter->failed()) {
    end_copy(out);
    return;
  }
  if (run.copy_ready < run.scatter->shards()) return;
  out.outbox.append(run.copy_in_response);
  enter(SessionState::Copying);
  out.resume_client = true;  // COPY data may have come with the COPY
}

// Client messages while Copying: CopyData is cut into rows and sent on to their shards; CopyDone
// and CopyFail end the COPY on every shard; Flush and Sync are ignored, as PostgreSQL ignores
// them during COPY; any other message closes the client (refuse_request_during_copy).
void Session::copy_client_data(std::string_view frames, Actions& out) {
  auto& run = work().change_scatter();
  for (std::string& o : run.copy_out) {
    o.clear();
    pr::begin_message(o, 'd');
  }
  bool ended = false;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; !ended && reader.next(f);) {
    switch (f.tag) {
      case 'd':
        if (!run.copy->add(f.body, run.copy_out)) {
          run.scatter->fail(run.copy->sqlstate(), run.copy->error());
          ended = true;
        }
        break;
      case 'c':
        if (!run.copy->finish(run.copy_out)) {
          run.scatter->fail(run.copy->sqlstate(), run.copy->error());
        }
        ended = true;
        break;
      case 'f': {
        const std::string_view why = pr::read_copy_fail(f).value_or("");
        run.scatter->fail("57014", "COPY from stdin failed: " + std::string(why));
        ended = true;
        break;
      }
      case 'H':
      case 'S':
        break;
      default:
        // A request among the COPY data: as on one server (plan_on_link), the client is closed
        // (08P01) and every shard's server with it, which rolls the COPY back; answered with an
        // error and ReadyForQuery, the request would have been silently dropped.
        refuse_request_during_copy(out);
        return;
    }
  }
  out.consumed = reader.offset();
  if (!run.scatter->failed()) {
    // The rows of this step, one CopyData per shard.
    for (std::size_t i = 0; i < run.copy_out.size(); ++i) {
      std::string& o = run.copy_out[i];
      if (o.size() <= 5) continue;
      pr::end_message(o, 1);
      Link& l = link(static_cast<LinkId>(i));
      if (!l.server || !l.copy_in) continue;
      out.to_links.push_back({l.id, {o.data(), o.size()}});
      l.last_activity = now_;
    }
  }
  if (ended) end_copy(out);
}

// Every shard still taking data gets CopyDone (the COPY succeeded so far) or CopyFail; each then
// answers its part and prepares it or rolls it back (scatter_answered).
void Session::end_copy(Actions& out) {
  // Constant messages: a write of an earlier step may still be backed by either.
  static const std::string done = [] {
    std::string m;
    pr::append_copy_done(m);
    return m;
  }();
  static const std::string fail = [] {
    std::string m;
    pr::append_copy_fail(m, "pgvalve: the COPY failed; see the client's error");
    return m;
  }();
  auto& run = work().change_scatter();
  if (state_ == SessionState::Copying) enter(SessionState::Scattering);
  const std::string& end = run.scatter->failed() ? fail : done;
  for (Link& l : work().links) {
    if (!l.server || !l.copy_in) continue;
    l.copy_in = false;
    l.last_activity = now_;
    out.to_links.push_back({l.id, {end.data(), end.size()}});
  }
}

// A shard answered its COPY (its rows counted, or an error): its part is prepared, or rolled
// back when its transaction failed (PREPARE TRANSACTION then answers ROLLBACK).
void Session::copy_part_answered(Link& l, Actions& out) {
  auto& run = work().change_scatter();
  l.copy_in = false;
  prepare_part(l, out);
  if (run.scatter->failed()) end_copy(out);
}

}  // namespace pgvalve::session
