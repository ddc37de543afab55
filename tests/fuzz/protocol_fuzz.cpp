// libFuzzer target for the protocol codec: frames, every message reader, startup packets and the
// server side of SCRAM (which parses client text). Built with clang + libFuzzer + ASan + UBSan by
// tests/fuzz/run (a separate -DPGVALVE_FUZZ=ON build in build-fuzz/) and run for 20 s by
// `tests/run` as ctest test fuzz.protocol_fuzz. By hand, from the repository root:
//
//   tests/fuzz/run protocol_fuzz                    # build, then fuzz for FUZZ_SECONDS (20)
//   FUZZ_SECONDS=600 tests/fuzz/run protocol_fuzz   # longer
//   build-fuzz/protocol_fuzz <crash-file>            # replay a reproducer it reported
//
// Seeds: tests/fuzz/corpus/protocol_fuzz/ (from tests/fuzz/make_corpus.py: real startup, query,
// SASL and server messages, and a valid SCRAM exchange); dictionary: tests/fuzz/protocol_fuzz.dict.
//
// The client side of SCRAM is left out on purpose: it runs PBKDF2 with a server-chosen
// iteration count, which only measures how slow a big count is.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/auth.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/startup.h"

namespace {

using namespace pgvalve::protocol;

void read_all(const Frame& f) {
  if (auto auth = read_authentication(f)) (void)sasl_mechanisms(auth->data);
  (void)sasl_mechanisms(f.body);
  (void)read_password(f);
  (void)read_sasl_initial_response(f);
  (void)read_sasl_response(f);
  (void)read_backend_key_data(f);
  (void)read_parameter_status(f);
  (void)read_ready_for_query(f);
  (void)read_error_response(f);
  (void)read_command_complete(f);
  (void)read_notification_response(f);
  (void)read_query(f);
  if (auto parse = read_parse(f)) {
    for (std::size_t i = 0; i < parse->param_count(); ++i)
      (void)parse->param_type(i);
  }
  if (auto bind = read_bind(f)) {
    for (std::size_t i = 0; i <= bind->params.size(); ++i)
      (void)bind->param_format(i);
    // Re-encoding what was read must give a Bind that reads back the same.
    std::string out;
    append_bind_renamed(out, *bind, bind->statement);
    FrameResult again = decode_frame(out, out.size());
    if (again.status != DecodeStatus::Ok || !read_bind(again.frame) ||
        (f.tag == 'B' && again.frame.body != f.body)) {
      __builtin_trap();
    }
  }
  (void)read_describe(f);
  (void)read_close(f);
  (void)read_execute(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  // A stream of frames, as a connection would see it.
  std::string_view rest = in;
  while (true) {
    FrameResult r = decode_frame(rest, 1 << 16);
    if (r.status != DecodeStatus::Ok) break;
    read_all(r.frame);
    // Every reader under every tag: tags decide which reader is picked, not what is safe.
    for (char tag : std::string_view("RpKSZENCAQPBDEX")) {
      read_all(Frame{tag, r.frame.body, r.frame.whole});
    }
    rest.remove_prefix(r.frame.whole.size());
  }

  StartupResult s = decode_startup(in);
  if (s.status == DecodeStatus::Ok && (s.consumed < 8 || s.consumed > in.size())) {
    __builtin_trap();
  }

  (void)base64_decode(in);
  (void)ScramVerifier::parse(in);

  // Server side of SCRAM: the input split at its first NUL into client-first and client-final.
  const std::size_t nul = in.find('\0');
  ScramVerifier verifier = ScramVerifier::from_password("pw", "salt", 1);
  ScramServer server = ScramServer::with_encoded_nonce(verifier, "srv");
  std::string error;
  if (server.handle_client_first(in.substr(0, nul), error) && nul != std::string_view::npos) {
    (void)server.handle_client_final(in.substr(nul + 1), error);
  }
  return 0;
}
