// Framing of PostgreSQL protocol 3.0 messages: a one-byte tag, an int32 length that counts
// itself, then the body. Pure: looks at bytes, never copies them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace pgvalve::protocol {

// Messages a client (frontend) sends, named as in the PostgreSQL docs.
enum class FrontendTag : char {
  Bind = 'B',
  Close = 'C',
  CopyData = 'd',
  CopyDone = 'c',
  CopyFail = 'f',
  Describe = 'D',
  Execute = 'E',
  Flush = 'H',
  FunctionCall = 'F',
  Parse = 'P',
  Password = 'p',  // also SASLInitialResponse, SASLResponse, GSSResponse
  Query = 'Q',
  Sync = 'S',
  Terminate = 'X',
};

// Messages a server (backend) sends.
enum class BackendTag : char {
  Authentication = 'R',
  BackendKeyData = 'K',
  BindComplete = '2',
  CloseComplete = '3',
  CommandComplete = 'C',
  CopyData = 'd',
  CopyDone = 'c',
  CopyInResponse = 'G',
  CopyOutResponse = 'H',
  CopyBothResponse = 'W',
  DataRow = 'D',
  EmptyQueryResponse = 'I',
  ErrorResponse = 'E',
  FunctionCallResponse = 'V',
  NegotiateProtocolVersion = 'v',
  NoData = 'n',
  NoticeResponse = 'N',
  NotificationResponse = 'A',
  ParameterDescription = 't',
  ParameterStatus = 'S',
  ParseComplete = '1',
  PortalSuspended = 's',
  ReadyForQuery = 'Z',
  RowDescription = 'T',
};

enum class DecodeStatus {
  Ok,            // a whole frame is available
  NeedMoreData,  // the buffer ends inside a frame; read more and call again
  Invalid,       // the bytes cannot be a frame (bad length, oversized); close the connection
};

// A view of one tagged message inside a caller-owned buffer.
struct Frame {
  char tag = 0;
  std::string_view body;   // bytes after the length field
  std::string_view whole;  // tag + length + body, for forwarding unchanged
};

struct FrameResult {
  DecodeStatus status = DecodeStatus::NeedMoreData;
  Frame frame;
  // For NeedMoreData: total bytes the frame needs once its header is known (0 if the header is
  // incomplete), so the caller can size its buffer. For Invalid: 0.
  std::size_t needed = 0;
  const char* error = nullptr;  // for Invalid: why, in words fit for a log line
                                // (thread-local text, valid until this thread's next call)
};

inline constexpr std::size_t kFrameHeaderSize = 5;

// Big-endian integer helpers shared by readers and builders.
inline std::uint32_t read_u32(const char* p) {
  auto b = reinterpret_cast<const unsigned char*>(p);
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) |
         std::uint32_t{b[3]};
}

// The Invalid result for a frame's header (length field and tag); out of line, as it is rare.
FrameResult invalid_frame(std::uint32_t length, char tag, std::size_t max_message_bytes);

// Decodes the first frame of `in`. A frame whose total size (tag + length + body) exceeds
// `max_message_bytes`, or whose length field is below 4, is Invalid. Inline: every message of
// every request and answer goes through it, several times.
inline FrameResult decode_frame(std::string_view in, std::size_t max_message_bytes) {
  FrameResult r;
  if (in.size() < kFrameHeaderSize) return r;
  const std::uint32_t length = read_u32(in.data() + 1);
  const std::size_t total = std::size_t{1} + length;
  // PostgreSQL reads the length as int32, so anything above INT32_MAX is negative to it. The
  // size is checked before the body arrives, so an oversized message is refused unbuffered.
  if (length < 4 || length > 0x7fffffffu || total > max_message_bytes) {
    return invalid_frame(length, in[0], max_message_bytes);
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

// The size of the whole frame at the start of `in` (of `size` bytes): 0 when the buffer ends
// inside it or decode_frame() would refuse it. Reads only its header.
inline std::size_t whole_frame_size(const char* in, std::size_t size,
                                    std::size_t max_message_bytes) {
  if (size < kFrameHeaderSize) return 0;
  const std::uint32_t length = read_u32(in + 1);
  const std::size_t total = std::size_t{1} + length;
  if (length < 4 || length > 0x7fffffffu || total > max_message_bytes || size < total) return 0;
  return total;
}

// The size of the whole frames tagged `tag` at the start of `in`: up to the first frame with
// another tag, one the buffer ends inside, or one decode_frame() would refuse (the caller's
// decode_frame() then finds it). Reads only headers: the rows of a result, or COPY data, that
// pass through unchanged need no more than that. `frames`, when given, is increased by their
// number.
inline std::size_t frame_run(std::string_view in, char tag, std::size_t max_message_bytes,
                             std::uint64_t* frames = nullptr) {
  std::size_t pos = 0;
  std::uint64_t count = 0;
  while (pos < in.size() && in[pos] == tag) {
    const std::size_t total = whole_frame_size(in.data() + pos, in.size() - pos, max_message_bytes);
    if (total == 0) break;
    pos += total;
    ++count;
  }
  if (frames) *frames += count;
  return pos;
}

// The whole frames at the start of a buffer, one at a time: the walk a request or an answer is
// read by. It ends at the first frame the buffer ends inside or decode_frame() refuses; what
// lies there is the caller's to judge (offset() says where).
//   FrameReader frames(in, max_message_bytes);
//   for (Frame f; frames.next(f);) { ... }
class FrameReader {
 public:
  FrameReader(std::string_view in, std::size_t max_message_bytes)
      : in_(in), max_message_bytes_(max_message_bytes) {}
  // The frames are views into the buffer: it must outlive the reader, so a temporary string
  // is refused.
  template <typename T, typename = std::enable_if_t<std::is_same_v<T, std::string>>>
  FrameReader(T&&, std::size_t) = delete;

  // The next whole frame into `f`; false, `f` untouched, where the walk ends.
  bool next(Frame& f) {
    const char* at = in_.data() + offset_;
    const std::size_t size = whole_frame_size(at, in_.size() - offset_, max_message_bytes_);
    if (size == 0) return false;
    f.tag = at[0];
    f.whole = std::string_view(at, size);
    f.body = std::string_view(at + kFrameHeaderSize, size - kFrameHeaderSize);
    offset_ += size;
    return true;
  }
  // Where the frames given so far end: the rest of the buffer starts here.
  std::size_t offset() const { return offset_; }
  // No byte of the buffer is left after the frames given so far.
  bool at_end() const { return offset_ == in_.size(); }

 private:
  std::string_view in_;
  std::size_t max_message_bytes_;
  std::size_t offset_ = 0;
};

inline std::uint16_t read_u16(const char* p) {
  auto b = reinterpret_cast<const unsigned char*>(p);
  return static_cast<std::uint16_t>((b[0] << 8) | b[1]);
}

}  // namespace pgvalve::protocol
