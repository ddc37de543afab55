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

FrameResult decode_frame(std::string_view in, std::size_t max_message_bytes) {
  FrameResult r;
  if (in.size() < kFrameHeaderSize) return r;

  const std::uint32_t length = read_u32(in.data() + 1);
  // PostgreSQL reads the length as int32, so anything above INT32_MAX is negative to it.
  if (length < 4 || length > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
    r.status = DecodeStatus::Invalid;
    r.error = format_error("invalid message length %llu (tag 0x%02llx)", length,
                           static_cast<unsigned char>(in[0]));
    return r;
  }
  const std::size_t total = std::size_t{1} + length;
  // Checked before the body arrives so an oversized message is refused without buffering it.
  if (total > max_message_bytes) {
    r.status = DecodeStatus::Invalid;
    r.error = format_error("message of %llu bytes exceeds max_message_bytes %llu", total,
                           max_message_bytes);
    return r;
  }
  if (in.size() < total) {
    r.needed = total;
    return r;
  }
  r.status = DecodeStatus::Ok;
  r.frame.tag = in[0];
  r.frame.whole = in.substr(0, total);
  r.frame.body = in.substr(kFrameHeaderSize, total - kFrameHeaderSize);
  return r;
}

}  // namespace pgvalve::protocol
