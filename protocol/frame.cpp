#include "protocol/frame.h"

#include <cstdint>
#include <cstdio>
#include <limits>

namespace pgvalve::protocol {

namespace {

// FrameResult::error is a plain pointer so decoding never allocates; the text with numbers in
// it lives here until the next Invalid result on this thread, long enough to log it.
thread_local char error_text[128];

const char* format_error(const char* fmt, unsigned long long a, unsigned long long b) {
  std::snprintf(error_text, sizeof error_text, fmt, a, b);
  return error_text;
}

}  // namespace

FrameResult invalid_frame(std::uint32_t length, char tag, std::size_t max_message_bytes) {
  FrameResult r;
  r.status = DecodeStatus::Invalid;
  if (length < 4 || length > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
    r.error = format_error("invalid message length %llu (tag 0x%02llx)", length,
                           static_cast<unsigned char>(tag));
  } else {
    r.error = format_error("message of %llu bytes exceeds max_message_bytes %llu",
                           std::size_t{1} + length, max_message_bytes);
  }
  return r;
}

}  // namespace pgvalve::protocol
